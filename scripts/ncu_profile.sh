#!/usr/bin/env bash
# Hardware-counter profiles (Nsight Compute) of ioattn's kernels on benchmark shapes, for the
# performance notes (bench/notes-sm90.md): per kernel the speed-of-light, pipe utilisation, warp
# stall reasons (details page) and the per-SASS-instruction stall samples (source page, CSV).
#
# Run on the GPU machine from the repository root after scripts/gpu_check.sh has built the CLI
# (build-gpu/tools/ioattn; CLI=... to use another), e.g.
#   scripts/ncu_profile.sh OUT_DIR                       # the default cases below
#   scripts/ncu_profile.sh OUT_DIR 'name|kernel regex|ioattn run arguments' ...
#   scripts/ncu_profile.sh OUT_DIR 'name|kernel regex|python3 bench/gpu/sdpa_once.py ...'  (a peer's kernel)
# bench/gpu/ncu_compare.py puts several profiles side by side (metrics, SASS opcode mix, stall reasons).
# Writes OUT_DIR/<name>.txt (details) and OUT_DIR/<name>-sass.csv.gz (source page).
# Clocks are left alone (--clock-control none: /work/.library/device/METHOD.md); the first call of
# the kernel is skipped (the CLI warms up before timing).
set -u
cd "$(dirname "$0")/.."
OUT_DIR=${1:?usage: $0 OUT_DIR [name|kernel regex|cli args ...]}
shift
CLI=${CLI:-build-gpu/tools/ioattn}
mkdir -p "$OUT_DIR"
if [ $# -eq 0 ]; then
  # bf16, B*S = 16k tokens, H*D = 2048 (BENCHMARKS.md's shapes).
  set -- \
    "bwd_d128_16k|^bwd_kernel$|--batch 1 --heads 16 --seqlen 16384 --head-dim 128 --backward" \
    "bwd_d64_16k|^bwd_kernel$|--batch 1 --heads 32 --seqlen 16384 --head-dim 64 --backward" \
    "fwd_d64_16k|^fwd_kernel$|--batch 1 --heads 32 --seqlen 16384 --head-dim 64" \
    "fwd_d128_2k_causal|^fwd_kernel$|--batch 8 --heads 16 --seqlen 2048 --head-dim 128 --causal"
fi
status=0
for c in "$@"; do
  IFS='|' read -r name regex args <<<"$c"
  rep="$OUT_DIR/$name"
  # shellcheck disable=SC2086,SC2206
  if [[ $args == python3* ]]; then cmd=($args); else cmd=("$CLI" run --device cuda --dtype bf16 --repeat 2 $args); fi
  if ncu --clock-control none --kernel-name-base function --kernel-name "regex:$regex" --launch-skip 1 \
      --launch-count 1 --set full --import-source no -f -o "$rep" "${cmd[@]}" >"$rep.log" 2>&1; then
    ncu -i "$rep.ncu-rep" --page details >"$rep.txt" 2>&1
    ncu -i "$rep.ncu-rep" --page source --print-source sass --csv 2>&1 | gzip >"$rep-sass.csv.gz"
    echo "$name: $(grep -m1 -E 'Duration' "$rep.txt" | tr -s ' ')"
  else
    echo "$name: ncu failed (exit $?), see $rep.log"; tail -5 "$rep.log"; status=1
  fi
  rm -f "$rep.ncu-rep"
done
exit $status
