#!/usr/bin/env bash
# Run a libFuzzer binary for a while over the seed corpus and the shared corpus.
# Usage: scripts/fuzz.sh FUZZER [SECONDS] [extra libFuzzer flags...]   (default 60 seconds)
#
# New inputs go to a scratch copy of tests/fuzz/corpus (fuzz-artifacts/corpus-<target>), never
# into the repository: minimise what is worth keeping by hand (-merge=1) before committing it.
# The shared corpus directories are read-only seeds. Crashes, leaks and timeouts are written to
# fuzz-artifacts/ as crash-*, leak-*, timeout-*, oom-*; the exit status is libFuzzer's (0 when
# nothing was found). Runs one process: the machine is shared with builds and other tests.
set -eu
[ $# -ge 1 ] || { echo "usage: $0 FUZZER [SECONDS] [libFuzzer flags...]" >&2; exit 2; }
fuzzer=$1
seconds=${2:-60}
shift $(( $# >= 2 ? 2 : 1 ))
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${APERTURE_CORPUS:-$root/../shared/corpus}
target=$(basename "$fuzzer")
[ -x "$fuzzer" ] || { echo "fuzz.sh: $fuzzer is not an executable" >&2; exit 2; }

artifacts=$root/fuzz-artifacts
scratch=$artifacts/corpus-$target
mkdir -p "$artifacts" "$scratch"
cp -n "$root"/tests/fuzz/corpus/* "$scratch"/ 2>/dev/null || true

seeds=()
for d in formats bad orientation metadata-strip; do
  if [ -d "$shared/$d" ]; then seeds+=("$shared/$d"); fi
done

echo "fuzz.sh: $target for ${seconds}s over $scratch + ${#seeds[@]} shared dirs;" \
     "artifacts in $artifacts/" >&2
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# One process, one thread (no -jobs: libFuzzer would fork workers and log to fuzz-N.log).
# libFuzzer reads seed directories recursively and writes new inputs to the first one only.
exec "$fuzzer" -max_total_time="$seconds" -max_len=2097152 -rss_limit_mb=2048 -timeout=10 \
  -print_final_stats=1 -artifact_prefix="$artifacts/" "$@" "$scratch" "${seeds[@]}"
