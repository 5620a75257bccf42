#!/usr/bin/env bash
# The one GPU check, run on an H100/H200 machine from the repository root:
#   1. configure + build the library, the `ioattn` CLI and ioattn_gpu_tests (CUDA on)
#   2. run ioattn_gpu_tests (every feature against the float64 reference, graph capture, errors)
#   3. compute-sanitizer memcheck and racecheck on the small shapes (Gpu/Small.*); on Hopper once
#      more on the sm80 kernels (IOATTN_SM90=0)
#   4. the Python package built with CUDA and its whole pytest suite (tests/python, test_cuda.py too)
#   5. the side-by-side benchmark (bench/gpu/bench_attn.py: ioattn vs PyTorch SDPA backends), and
#      bench/gpu/bench_decode.py --quick (decoding, through the Python package of step 4)
#   6. a short summary table
# Every step runs even if an earlier one failed (a build failure stops the rest); the exit status is
# nonzero if any step failed. Logs go to $LOG_DIR.
#
# Environment (all optional):
#   BUILD_DIR    build directory                     (default build-gpu)
#   ARCH         CMAKE_CUDA_ARCHITECTURES            (default 90a; 80 for Ampere)
#   HEAD_DIMS    IOATTN_CUDA_HEAD_DIMS               (default "32;64;96;128;192;256": every sm90 kernel, as CI builds)
#   LOG_DIR      where logs and results are written  (default $BUILD_DIR/gpu_check)
#   BENCH_ARGS   extra arguments for bench_attn.py   (e.g. "--seqlens 1024,4096,16384 --head-dims 128";
#                "--shape-checks" adds the GQA / varlen per-FLOP table, about a minute more)
#   SKIP_BENCH=1 / SKIP_SANITIZER=1 / SKIP_PYTHON=1 / SKIP_DECODE=1  skip those steps
#   EXAMPLES=1   also train examples/vit and examples/gpt with --control (results in $LOG_DIR/examples)
#   PY_TARGET    where the Python package is installed (default $BUILD_DIR/py-site; prepended to PYTHONPATH).
#                Wheels in .whl/ are installed first (see /work/.library/device/README.md): the GPU
#                image has nanobind, scikit-build-core and pytest but not ultralytics, which
#                tests/python/test_ultralytics.py requires here (IOATTN_REQUIRE_ULTRALYTICS=1);
#                `scripts/gpu_check.sh --fetch-wheels` downloads it (the pin of scripts/ci-python.sh).
#   IOATTN_DEPS_PREFIX  a /usr-like prefix holding what the build needs that the GPU image may lack
#                (GoogleTest, CLI11, nlohmann-json, OpenBLAS + cblas.h and its runtime libraries):
#                added to CMAKE_PREFIX_PATH, CPATH and LD_LIBRARY_PATH
#   TIMEOUT_TESTS / TIMEOUT_SANITIZER / TIMEOUT_BENCH  seconds per step (default 300 / 240 / 600)
#   SHARDS       processes the GPU tests and each sanitizer run are split into (scripts/run_sharded.sh;
#                default: half the cores, at most 8): the float64 reference runs on one core each
#   RESULTS_COPY_DIR  also copy the benchmark JSON files this run writes (bench/results/) there, e.g.
#                $OUT on a lent GPU machine, whose working tree does not come back
#
# The GPU image has CUDA, CMake, ninja and PyTorch but not the C++ dev packages. On the development
# machine (Debian, packages installed), `scripts/gpu_check.sh --make-deps-prefix DIR` copies them
# into DIR/usr (about 42 MB; use a path that .gitignore covers, e.g. build-gpu-deps), to be carried
# to the GPU machine and named by IOATTN_DEPS_PREFIX=DIR/usr. `scripts/gpu_check.sh --fetch-wheels`
# (on the development machine, which has network) puts the ultralytics wheels into .whl/ (ignored by
# git; carry it too).
set -u
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch-wheels" ]; then
  pin=$(sed -n 's/^ULTRALYTICS_PIN=//p' scripts/ci-python.sh)
  thop=$(sed -n 's/^THOP_PIN=\([0-9.]*\).*/\1/p' scripts/ci-python.sh)
  set -e
  python3 -m pip download -q --no-deps --only-binary=:all: -d .whl "ultralytics==$pin" "ultralytics-thop==$thop"
  ls .whl
  exit 0
fi

if [ "${1:-}" = "--make-deps-prefix" ]; then
  D="${2:?usage: $0 --make-deps-prefix DIR}/usr"
  L=/usr/lib/x86_64-linux-gnu
  set -e
  mkdir -p "$D/include" "$D/lib/x86_64-linux-gnu/cmake" "$D/share/cmake"
  cp -r /usr/include/gtest /usr/include/gmock /usr/include/CLI /usr/include/nlohmann "$D/include/"
  for h in cblas.h openblas_config.h f77blas.h cblas_mangling.h; do
    cp -L "/usr/include/x86_64-linux-gnu/$h" "$D/include/"  # resolves Debian's alternatives links
  done
  cp -r $L/cmake/GTest "$D/lib/x86_64-linux-gnu/cmake/"
  cp $L/libgtest*.a $L/libgmock*.a "$D/lib/x86_64-linux-gnu/"
  cp -r /usr/share/cmake/CLI11 /usr/share/cmake/nlohmann_json "$D/share/cmake/"
  cp -L $L/openblas-openmp/libopenblas.so.0 "$D/lib/x86_64-linux-gnu/libopenblas.so.0"
  ln -sf libopenblas.so.0 "$D/lib/x86_64-linux-gnu/libopenblas.so"
  cp -L /lib/x86_64-linux-gnu/libgfortran.so.5 /lib/x86_64-linux-gnu/libquadmath.so.0 "$D/lib/x86_64-linux-gnu/"
  du -sh "$D"
  exit 0
fi
BUILD_DIR=${BUILD_DIR:-build-gpu}
ARCH=${ARCH:-90a}
HEAD_DIMS=${HEAD_DIMS:-32;64;96;128;192;256}
LOG_DIR=${LOG_DIR:-$BUILD_DIR/gpu_check}
BENCH_ARGS=${BENCH_ARGS:-}
mkdir -p "$LOG_DIR"
RUN_MARKER="$LOG_DIR/.started"
touch "$RUN_MARKER"
if [ -n "${IOATTN_DEPS_PREFIX:-}" ]; then
  export CMAKE_PREFIX_PATH="$IOATTN_DEPS_PREFIX${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export CPATH="$IOATTN_DEPS_PREFIX/include${CPATH:+:$CPATH}"
  export LD_LIBRARY_PATH="$IOATTN_DEPS_PREFIX/lib/x86_64-linux-gnu:$IOATTN_DEPS_PREFIX/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

declare -a STEP_NAMES STEP_RESULTS STEP_SECONDS
record() {  # name, exit status, seconds, detail
  STEP_NAMES+=("$1")
  if [ "$2" -eq 0 ]; then STEP_RESULTS+=("PASS ${4:-}"); else STEP_RESULTS+=("FAIL (exit $2) ${4:-}"); fi
  STEP_SECONDS+=("$3")
}
run_step() {  # name, log file, command...
  local name=$1 log=$2; shift 2
  local t0=$SECONDS
  echo "== $name: $*" | tee "$log"
  "$@" >>"$log" 2>&1
  local rc=$?
  tail -n 25 "$log"
  record "$name" $rc $((SECONDS - t0))
  return $rc
}

nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>/dev/null | tee "$LOG_DIR/gpu.txt"
HOPPER=0
grep -q ", 9.0$" "$LOG_DIR/gpu.txt" && HOPPER=1
# The sanitizers and the benchmark run the sm90 kernels where they exist (the sm80 ones are
# covered by the Small tests of step 2b too).
[ "$HOPPER" = 1 ] && export IOATTN_SM90=${IOATTN_SM90:-1}

# 1. Build.
run_step configure "$LOG_DIR/configure.log" cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DIOATTN_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DIOATTN_CUDA_HEAD_DIMS="$HEAD_DIMS" \
  -DIOATTN_BUILD_TESTS=ON -DIOATTN_BUILD_TOOLS=ON -DIOATTN_BUILD_BENCH=OFF -DIOATTN_CUDA_WARN_SPILLS=ON
if [ $? -eq 0 ]; then
  run_step build "$LOG_DIR/build.log" cmake --build "$BUILD_DIR" --target ioattn_gpu_tests ioattn_cli -j "$(nproc)"
fi
BUILD_RC=$?
grep -h "spill" "$LOG_DIR/build.log" 2>/dev/null | sort | uniq -c | head -20 > "$LOG_DIR/spills.txt"
TESTS="$BUILD_DIR/tests/gpu/ioattn_gpu_tests"
CLI="$BUILD_DIR/tools/ioattn"
SHARDS=${SHARDS:-$(( $(nproc) / 2 < 8 ? ($(nproc) + 1) / 2 : 8 ))}
SHARDED="scripts/run_sharded.sh $SHARDS"  # + log prefix + command: the shards' logs next to the step's

if [ $BUILD_RC -eq 0 ]; then
  # 2. Tests.
  run_step gpu_tests "$LOG_DIR/gpu_tests.log" $SHARDED "$LOG_DIR/gpu_tests" timeout "${TIMEOUT_TESTS:-300}" "$TESTS" \
    --gtest_output=json:"$LOG_DIR/gpu_tests.{shard}.json"
  detail=$(grep -E "^\[  PASSED  \] [0-9]+ test|^\[  SKIPPED \] [0-9]+ test|^ *[0-9]+ FAILED TEST" "$LOG_DIR/gpu_tests.log" | tr '\n' ' ')
  STEP_RESULTS[-1]="${STEP_RESULTS[-1]} $detail"

  # 2b. On Hopper, step 2 ran the sm90 TMA/wgmma forward and backward (src/cuda/backend.cu); the
  # same tests once more on the sm80 kernels (IOATTN_SM90=0), and the sm90 SASS must hold HGMMA.
  if [ "$HOPPER" = 1 ]; then
    run_step tests_sm80 "$LOG_DIR/gpu_tests_sm80.log" $SHARDED "$LOG_DIR/gpu_tests_sm80" env IOATTN_SM90=0 \
      timeout "${TIMEOUT_TESTS:-300}" "$TESTS"
    STEP_RESULTS[-1]="${STEP_RESULTS[-1]} $(grep -E "^\[  PASSED  \] [0-9]+ test| FAILED TEST" "$LOG_DIR/gpu_tests_sm80.log" | tr '\n' ' ')"
    if command -v cuobjdump >/dev/null; then
      LIB=$(ls "$BUILD_DIR"/libioattn.so* 2>/dev/null | head -1)
      cuobjdump --dump-sass "$LIB" > "$LOG_DIR/sass.txt" 2>&1
      record sass 0 0 "HGMMA instructions in libioattn: $(grep -c HGMMA "$LOG_DIR/sass.txt"), HMMA: $(grep -c HMMA "$LOG_DIR/sass.txt")"
    fi
  fi

  # 3. Sanitizers on the small shapes (10-100x slower than a plain run).
  # (VARLEN_COUNTER: the sm90 forward's tile hand-over of varlen calls, at d = 128, 64 with 3
  # consumer warpgroups, and 256 with O staged in the K / V slots.)
  VARLEN_COUNTER='GpuContract.VarlenForwardWorkspace:Gpu/Features.*many_tiles_varlen_causal_d64_*:Gpu/Features.*many_tiles_varlen_d256_fp16'
  if [ "${SKIP_SANITIZER:-0}" != 1 ] && command -v compute-sanitizer >/dev/null; then
    run_step memcheck "$LOG_DIR/memcheck.log" $SHARDED "$LOG_DIR/memcheck" timeout "${TIMEOUT_SANITIZER:-240}" compute-sanitizer --tool memcheck --error-exitcode 1 \
      --leak-check full "$TESTS" --gtest_filter='Gpu/Small.*:Gpu/Bwd.*d192*:GpuContract.BadInputs*:GpuContract.BadDevice*:GpuContract.VarlenForwardWorkspace:Gpu/KVCache.*PagedCausalRotary*:Gpu/PagedPrefill.*:KVCacheGpu.BadIndicesRejected'
    STEP_RESULTS[-1]="${STEP_RESULTS[-1]} $(cat "$LOG_DIR"/memcheck.*.log | grep -E 'ERROR SUMMARY' | sort | uniq -c | tr -s ' ' | tr '\n' ';')"
    run_step racecheck "$LOG_DIR/racecheck.log" $SHARDED "$LOG_DIR/racecheck" timeout "${TIMEOUT_SANITIZER:-240}" compute-sanitizer --tool racecheck --error-exitcode 1 \
      "$TESTS" --gtest_filter='Gpu/Small.*:Gpu/Bwd.*d192*:Gpu/Bwd.*d256*:Gpu/Bwd.*softcap*:Gpu/Bwd.*alibi*:Gpu/KVCache.*PagedCausalRotary*:Gpu/PagedPrefill.*:'"$VARLEN_COUNTER"
    STEP_RESULTS[-1]="${STEP_RESULTS[-1]} $(cat "$LOG_DIR"/racecheck.*.log | grep -E 'RACECHECK SUMMARY' | sort | uniq -c | tr -s ' ' | tr '\n' ';')"
    # (d = 192 and 256: the backward's two consumer warpgroups reach shared barriers from different
    # instantiations; d = 256 exchanges P^T / dS^T between them; softcap / ALiBi: the kMods kernels.)
    run_step synccheck "$LOG_DIR/synccheck.log" $SHARDED "$LOG_DIR/synccheck" timeout "${TIMEOUT_SANITIZER:-240}" compute-sanitizer --tool synccheck --error-exitcode 1 \
      "$TESTS" --gtest_filter='Gpu/Small.*:Gpu/Bwd.*d192*:Gpu/Bwd.*d256*:Gpu/Bwd.*softcap*:'"$VARLEN_COUNTER"
    STEP_RESULTS[-1]="${STEP_RESULTS[-1]} $(cat "$LOG_DIR"/synccheck.*.log | grep -E 'ERROR SUMMARY' | sort | uniq -c | tr -s ' ' | tr '\n' ';')"
    # 3b. On Hopper the shapes above ran the sm90 kernels; memcheck and racecheck the sm80 kernels
    # (what an Ampere GPU runs: their tile loads and swizzled shared tiles) on the small shapes too.
    if [ "$HOPPER" = 1 ]; then
      for tool in memcheck racecheck; do
        run_step "${tool}_sm80" "$LOG_DIR/${tool}_sm80.log" $SHARDED "$LOG_DIR/${tool}_sm80" env IOATTN_SM90=0 \
          timeout "${TIMEOUT_SANITIZER:-240}" compute-sanitizer --tool "$tool" --error-exitcode 1 "$TESTS" \
          --gtest_filter='Gpu/Small.*:Gpu/Bwd.*d256*'
        STEP_RESULTS[-1]="${STEP_RESULTS[-1]} $(cat "$LOG_DIR/${tool}_sm80".*.log | grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' | sort | uniq -c | tr -s ' ' | tr '\n' ';')"
      done
    fi
  fi

  # 4. The Python package with CUDA, and its whole test suite.
  if [ "${SKIP_PYTHON:-0}" != 1 ]; then
    PY_TARGET=${PY_TARGET:-$BUILD_DIR/py-site}
    if ls .whl/*.whl >/dev/null 2>&1; then
      python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$BUILD_DIR/py-deps" .whl/*.whl
      export PYTHONPATH="$BUILD_DIR/py-deps${PYTHONPATH:+:$PYTHONPATH}"
    fi
    run_step py_build "$LOG_DIR/py_build.log" env CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
      CMAKE_ARGS="-DIOATTN_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=$ARCH -DIOATTN_CUDA_HEAD_DIMS=$HEAD_DIMS" \
      python3 -m pip install --no-build-isolation --no-deps --upgrade --target "$PY_TARGET" . -C build-dir="$BUILD_DIR/py-build"
    if [ $? -eq 0 ]; then
      PY_BUILT=1
      run_step pytest "$LOG_DIR/pytest.log" timeout "${TIMEOUT_TESTS:-300}" env IOATTN_REQUIRE_ULTRALYTICS=1 PYTHONPATH="$PWD/$PY_TARGET:${PYTHONPATH:-}" \
        python3 -m pytest tests/python -q -p no:cacheprovider --durations=15
      STEP_RESULTS[-1]="${STEP_RESULTS[-1]} $(grep -E '(passed|failed)' "$LOG_DIR/pytest.log" | tail -1)"
      # Host time per call of the Python API against SDPA (what bounds small models' steps).
      run_step py_overhead "$LOG_DIR/py_overhead.log" timeout 120 env PYTHONPATH="$PWD/$PY_TARGET:${PYTHONPATH:-}" \
        python3 bench/gpu/bench_overhead.py --calls 300
      STEP_RESULTS[-1]="${STEP_RESULTS[-1]} $(grep -E '^(ioattn|sdpa) ' "$LOG_DIR/py_overhead.log" | tr -s ' ' | tr '\n' ';')"
      # EXAMPLES=1: the two training examples with the SDPA-math control (about 2 minutes on an H200).
      if [ "${EXAMPLES:-0}" = 1 ]; then
        for m in vit gpt; do
          run_step "ex_$m" "$LOG_DIR/ex_$m.log" timeout 300 env PYTHONPATH="$PWD/$PY_TARGET:${PYTHONPATH:-}" \
            python3 "examples/$m/train_$m.py" --control --out "$LOG_DIR/examples/$m-loss-cuda.png" \
            --json "$LOG_DIR/examples/$m-results-cuda.json"
          STEP_RESULTS[-1]="${STEP_RESULTS[-1]} $(grep -E '^control:' "$LOG_DIR/ex_$m.log")"
        done
      fi
    fi
  fi

  # 5. Benchmark.
  if [ "${SKIP_BENCH:-0}" != 1 ]; then
    # shellcheck disable=SC2086
    run_step bench "$LOG_DIR/bench.log" timeout "${TIMEOUT_BENCH:-600}" env PYTHONUNBUFFERED=1 python3 bench/gpu/bench_attn.py --cli "$CLI" --out-dir bench/results $([ "$HOPPER" = 1 ] && echo --sm80-column) $BENCH_ARGS
    # Decoding (contiguous and paged KV cache vs SDPA) through the Python package built in step 4.
    if [ "${PY_BUILT:-0}" = 1 ] && [ "${SKIP_DECODE:-0}" != 1 ]; then
      run_step bench_decode "$LOG_DIR/bench_decode.log" timeout "${TIMEOUT_BENCH:-600}" env PYTHONUNBUFFERED=1 \
        PYTHONPATH="$PWD/$PY_TARGET:${PYTHONPATH:-}" python3 bench/gpu/bench_decode.py --quick --out-dir bench/results
    fi
  fi
fi

# 6. Summary.
echo
echo "==================== gpu_check summary ===================="
printf "%-11s %6s  %s\n" step seconds result
failed=0
for i in "${!STEP_NAMES[@]}"; do
  printf "%-11s %6s  %s\n" "${STEP_NAMES[$i]}" "${STEP_SECONDS[$i]}" "${STEP_RESULTS[$i]}"
  case "${STEP_RESULTS[$i]}" in FAIL*) failed=1 ;; esac
done
[ -s "$LOG_DIR/spills.txt" ] && { echo "register spills reported by ptxas:"; cat "$LOG_DIR/spills.txt"; }
if [ -f "$LOG_DIR/bench.log" ]; then
  echo "benchmark (TFLOP/s fwd / bwd; ratios ioattn / best peer and / flash):"
  sed -n '/^BENCH TABLE/,/^END TABLE/p' "$LOG_DIR/bench.log" | sed '1d;$d'
  sed -n '/^SHAPE TABLE/,/^END SHAPE TABLE/p' "$LOG_DIR/bench.log" | sed '1d;$d'
fi
if [ -f "$LOG_DIR/bench_decode.log" ]; then
  echo "decode benchmark (bench/gpu/bench_decode.py --quick):"
  sed -n '/^BENCH TABLE/,/^END TABLE/p' "$LOG_DIR/bench_decode.log" | sed '1d;$d'
fi
echo "logs: $LOG_DIR"
if [ -n "${RESULTS_COPY_DIR:-}" ]; then
  mkdir -p "$RESULTS_COPY_DIR"
  find bench/results -maxdepth 1 -name '*.json' -newer "$RUN_MARKER" -exec cp {} "$RESULTS_COPY_DIR"/ \;
  [ -d "$LOG_DIR/examples" ] && cp -r "$LOG_DIR/examples" "$RESULTS_COPY_DIR"/
  echo "benchmark JSON copied to $RESULTS_COPY_DIR: $(find bench/results -maxdepth 1 -name '*.json' -newer "$RUN_MARKER" | tr '\n' ' ')"
fi
exit $failed
