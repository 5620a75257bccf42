#!/usr/bin/env bash
# Runs a GoogleTest binary as N shards at once (GTEST_TOTAL_SHARDS / GTEST_SHARD_INDEX, which pass
# through wrappers such as timeout and compute-sanitizer), each shard's output in LOG_PREFIX.<i>.log,
# and prints one gtest-style summary: the passed count summed over the shards, every failed test,
# the shards' exit codes. Exits with the first nonzero shard exit code (0 if all passed).
# The GPU tests spend most of their wall time in the float64 CPU reference, one core per process,
# so on the 16-core GPU machine 8 shards take the suite from ~200 s in one process to ~100 s (sm90
# path; ~55 s with IOATTN_SM90=0: H200, session 10), and the sanitizers gain likewise (racecheck on
# the 7 d = 256 backward cases: ~30 s). "{shard}" in an argument becomes the shard's index, e.g. for
# --gtest_output=json:DIR/tests.{shard}.json.
#   scripts/run_sharded.sh 8 build-gpu/gpu_check/tests timeout 300 build-gpu/tests/gpu/ioattn_gpu_tests
set -u
[ $# -ge 3 ] || { echo "usage: $0 N LOG_PREFIX COMMAND [ARGS...]" >&2; exit 2; }
n=$1 prefix=$2
shift 2
[ "$n" -ge 1 ] 2>/dev/null || { echo "$0: N must be a positive integer, got '$n'" >&2; exit 2; }
pids=()
for ((i = 0; i < n; ++i)); do
  args=()
  for a in "$@"; do args+=("${a//\{shard\}/$i}"); done
  GTEST_TOTAL_SHARDS=$n GTEST_SHARD_INDEX=$i "${args[@]}" >"$prefix.$i.log" 2>&1 &
  pids+=($!)
done
rc=0 codes=()
for ((i = 0; i < n; ++i)); do
  wait "${pids[$i]}"
  c=$?
  codes+=("$c")
  [ $rc -eq 0 ] && [ $c -ne 0 ] && rc=$c
done
passed=0
for ((i = 0; i < n; ++i)); do
  p=$(grep -hE '^\[  PASSED  \] [0-9]+ test' "$prefix.$i.log" | awk '{print $4}' | tail -1)
  passed=$((passed + ${p:-0}))
done
# A failed test is listed twice in its shard's log (as it fails and in the summary): once here.
failed=$(grep -hE '^\[  FAILED  \] [A-Za-z0-9_/.]+' "$prefix".*.log | grep -v ' tests\?, listed below' | awk '{print $4}' | sed 's/,$//' | sort -u)
echo "shards: $n, exit codes: ${codes[*]}, logs: $prefix.<0..$((n - 1))>.log"
echo "[  PASSED  ] $passed tests."
if [ -n "$failed" ]; then
  while read -r t; do echo "[  FAILED  ] $t"; done <<<"$failed"
  echo " $(wc -l <<<"$failed") FAILED TESTS"
fi
exit $rc
