#!/usr/bin/env bash
# Source trees of other git refs for an A/B run on a GPU machine that has no .git (the lent machines
# get the working tree only): for each NAME=REF, `git archive REF` into build-src-NAME (a path
# .gitignore covers, so it travels only when named in `carry`). Prints what the run needs:
#   scripts/ab_prepare.sh main=main early=wip/some-branch
#   -> carry: ["build-src-main", "build-src-early"]
#   -> on the machine: python3 bench/gpu/bench_variants.py --cli build-gpu/tools/ioattn \
#        --ref main=build-src-main --ref early=build-src-early ...
# bench_variants.py builds each tree's CLI there (only the head dims it times, or --build-head-dims).
set -eu
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: $0 NAME=REF [NAME=REF ...]" >&2; exit 2; }
carry=() refs=()
for spec in "$@"; do
  name=${spec%%=*} ref=${spec#*=}
  [ -n "$name" ] && [ "$name" != "$spec" ] || { echo "bad spec '$spec' (want NAME=REF)" >&2; exit 2; }
  dir=build-src-$name
  rm -rf "$dir" && mkdir -p "$dir"
  git archive "$ref" | tar -x -C "$dir" --exclude=bench/results  # results are not needed to build
  echo "$dir: $(git rev-parse --short "$ref") ($ref), $(du -sh "$dir" | cut -f1)"
  carry+=("\"$dir\"") refs+=("--ref $name=$dir")
done
echo "carry: [$(IFS=,; echo "${carry[*]}" | sed 's/,/, /g')]"
echo "bench_variants.py arguments: ${refs[*]}"
