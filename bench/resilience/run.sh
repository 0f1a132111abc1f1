#!/usr/bin/env bash
# bench/resilience/run.sh - what clients see while the upstream fails (issue 5, target (a)):
# aperture serve with retries, a breaker and a two-step fallback chain, in front of the fake
# upstream with injected faults, under a closed-loop load; every request's status and latency
# recorded.
#
# Usage: bench/resilience/run.sh [APERTURE_BINARY]     (default build/aperture)
#        QUICK=1 bench/resilience/run.sh                (8 s per scenario, 1 repetition)
#
# The gateway (a fresh process per scenario and repetition, so each starts with closed
# breakers; APERTURE_CACHE=off, its log to /dev/null):
#   providers  openai    -> the fake, /v1/chat/completions
#              anthropic -> the fake, /v1/messages
#   models     primary (openai, upstream gpt-4o, fallbacks [backup])
#              backup  (anthropic, upstream claude-sonnet-4-5)
#   retry      {max_attempts: 3, base_ms: 50, cap_ms: 500, attempt_timeout_ms: 2000}
#   breaker    {consecutive_failures: 5, cooldown_ms: 30000} (the rest: defaults, i.e.
#              error_rate 0.5 over 60 s once 20 results are in, 1 half-open probe)
# The load (loadgen.mjs): CLIENTS (16) clients, each sending a small Chat Completions request
# for model "primary", waiting for the answer, sending the next, for DURATION s, after WARMUP s
# without faults (not measured; connections are open and the breaker has seen successes).
# The fake answers every call after UPSTREAM_MS (20 ms: a fast model; the faults below keep
# that delay too, so a failed call costs as much time as a good one, except the timeouts).
# Scenarios, in this order in every repetition (faults on the primary's path only, since the
# primary and the backup speak different wire formats, their paths tell them apart):
#   nofault  no faults
#   fail30   30% of the primary's calls answer 500
#   mixed30  30% of the primary's calls fail, 6% each: 429 with Retry-After: 1, 429 without,
#            503, a timeout (answer after TIMEOUT_DELAY_MS 2500 > attempt_timeout_ms 2000),
#            the connection dropped without an answer
#   down     every primary call answers 503: its breaker opens; the latency and errors are
#            taken over requests started after SKIP_S (5) s
#   fail30-nocf, mixed30-nocf   the same faults as fail30 / mixed30 with the breaker's
#            consecutive-failures rule off (breaker.consecutive_failures: 0; the error-rate rule,
#            50% over 60 s, stays on and 30% does not reach it): at a few hundred calls a
#            second, 30% failing attempts make 5 failures in a row within about a second, so
#            with the rule on the primary's breaker is open most of the time and fail30/mixed30
#            mostly measure the backup; these two measure retries and fallbacks on errors
# Per scenario the report gives requests, client errors (any status but 200, transport errors,
# a 200 that is not a chat completion), p50/p90/p99/max latency, upstream calls per client
# request (from the gateway's /metrics: aperture_upstream_duration_seconds_count, one per
# attempt, and aperture_retries_total / aperture_fallbacks_total), how long the primary's
# breaker was open (aperture_breaker_state polled every 250 ms), and p99 / p99(nofault): the
# median over REPS repetitions of each.
#
# Knobs (environment): DURATION=20 WARMUP=3 REPS=3 CLIENTS=16 UPSTREAM_MS=20 SKIP_S=5
#   TIMEOUT_DELAY_MS=2500 SCENARIOS="nofault fail30 mixed30 down fail30-nocf mixed30-nocf"
#   PORT_BASE=19400 QUICK=
#   BENCH_OUT=bench/resilience/out
# Writes raw data (one JSON per run, the gateway config, meta.txt) to $BENCH_OUT/raw/ and the
# report to $BENCH_OUT/results.md (also printed). Needs node, curl.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"

AP_SRC=$(realpath -m "${1:-build/aperture}")
QUICK=${QUICK:-}
if [ -n "$QUICK" ]; then
  DURATION=${DURATION:-8}
  REPS=${REPS:-1}
  SKIP_S=${SKIP_S:-3}
  WARMUP=${WARMUP:-1}
fi
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
REPS=${REPS:-3}
CLIENTS=${CLIENTS:-16}
UPSTREAM_MS=${UPSTREAM_MS:-20}
SKIP_S=${SKIP_S:-5}
TIMEOUT_DELAY_MS=${TIMEOUT_DELAY_MS:-2500}
SCENARIOS=${SCENARIOS:-"nofault fail30 mixed30 down fail30-nocf mixed30-nocf"}
PORT_BASE=${PORT_BASE:-19400}
FAKE_PORT=$PORT_BASE
AP_PORT=$((PORT_BASE + 1))
OUT=$(realpath -m "${BENCH_OUT:-$HERE/out}")
RAW=$OUT/raw
FAKE_URL=http://127.0.0.1:$FAKE_PORT

die() { echo "bench/resilience/run.sh: $*" >&2; exit 1; }
log() { echo "bench/resilience: $* (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2; }
load1() { cut -d' ' -f1 /proc/loadavg; }

for t in node curl awk; do command -v "$t" >/dev/null || die "missing $t"; done
[ -x "$AP_SRC" ] || die "no aperture binary at $AP_SRC (build first)"
for p in "$FAKE_PORT" "$AP_PORT"; do
  if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$p/"; then die "port $p is in use (set PORT_BASE)"; fi
done

mkdir -p "$OUT"
rm -rf "$RAW" "$OUT/bin"
mkdir -p "$RAW" "$OUT/bin" "$OUT/run"
# A copy: a rebuild of build/ during the run changes nothing.
cp "$AP_SRC" "$OUT/bin/apgw"

FAKE_PID="" AP_PID=""
stop_pid() { # PID: SIGTERM, wait up to 5 s, then SIGKILL
  local p=$1
  [ -n "$p" ] || return 0
  kill "$p" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$p" 2>/dev/null || true
}
stop_all() {
  stop_pid "$AP_PID"; AP_PID=""
  stop_pid "$FAKE_PID"; FAKE_PID=""
}
trap stop_all EXIT

wait_port() { # PORT PID NAME
  for _ in $(seq 100); do
    kill -0 "$2" 2>/dev/null || die "$3 exited at start (see $RAW)"
    curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/healthz" && return 0
    sleep 0.1
  done
  die "$3 does not answer on port $1"
}

fake_post() { # PATH JSON
  curl -sf -o /dev/null -X POST -H 'content-type: application/json' -d "$2" "$FAKE_URL$1" ||
    die "the fake refused POST $1 $2"
}

cat >"$RAW/gw.yaml" <<EOF
# written by bench/resilience/run.sh
listen: "127.0.0.1:$AP_PORT"
providers:
  - name: openai
    type: openai
    base_url: "$FAKE_URL/v1"
    api_key_env: BENCH_DUMMY_OPENAI_KEY
  - name: anthropic
    type: anthropic
    base_url: "$FAKE_URL"
    api_key_env: BENCH_DUMMY_ANTHROPIC_KEY
models:
  - name: primary
    provider: openai
    upstream: gpt-4o
    fallbacks: [backup]
  - name: backup
    provider: anthropic
    upstream: claude-sonnet-4-5
retry:
  max_attempts: 3
  base_ms: 50
  cap_ms: 500
  attempt_timeout_ms: 2000
breaker:
  consecutive_failures: 5
  cooldown_ms: 30000
EOF

# The -nocf scenarios' config: the same without the consecutive-failures rule.
sed 's/^  consecutive_failures: 5$/  consecutive_failures: 0/' "$RAW/gw.yaml" >"$RAW/gw-nocf.yaml"
grep -q '^  consecutive_failures: 0$' "$RAW/gw-nocf.yaml" || die "could not write gw-nocf.yaml"

start_gateway() { # CONFIG
  # A clean environment: no real keys or base URLs from the caller's shell reach it.
  (cd "$OUT/run" && exec env -i PATH="$PATH" HOME="$HOME" \
    BENCH_DUMMY_OPENAI_KEY=sk-bench-dummy BENCH_DUMMY_ANTHROPIC_KEY=sk-ant-bench-dummy \
    APERTURE_CACHE=off APERTURE_LOG_FILE=/dev/null "$OUT/bin/apgw" serve --config "$1" \
    --listen "127.0.0.1:$AP_PORT" --drain-seconds 1) >>"$RAW/aperture.stderr" 2>&1 &
  AP_PID=$!
  wait_port "$AP_PORT" "$AP_PID" "aperture"
}

# The faults of a scenario, as the JSON list POST /__faults takes. The fake applies the first
# fault in the list that matches a request (its path and its `rate` draw), so the rates of a
# mix are conditional: the k-th of m kinds at overall share s has rate s / (1 - (k-1) s). The
# last entry (any path, every request) is the upstream's normal latency.
faults_for() {
  local base="{\"delay_ms\":$UPSTREAM_MS,\"count\":-1}"
  local P='"path":"/v1/chat/completions","count":-1'
  case ${1%-nocf} in
  nofault) echo "[$base]" ;;
  fail30) echo "[{$P,\"rate\":0.3,\"status\":500,\"delay_ms\":$UPSTREAM_MS},$base]" ;;
  mixed30)
    local r1 r2 r3 r4 r5
    read -r r1 r2 r3 r4 r5 < <(awk 'BEGIN{s=0.06; for(k=0;k<5;k++) printf "%.6f ", s/(1-k*s); print ""}')
    echo "[{$P,\"rate\":$r1,\"status\":429,\"retry_after\":1,\"delay_ms\":$UPSTREAM_MS}," \
      "{$P,\"rate\":$r2,\"status\":429,\"delay_ms\":$UPSTREAM_MS}," \
      "{$P,\"rate\":$r3,\"status\":503,\"delay_ms\":$UPSTREAM_MS}," \
      "{$P,\"rate\":$r4,\"delay_ms\":$TIMEOUT_DELAY_MS}," \
      "{$P,\"rate\":$r5,\"drop\":true,\"delay_ms\":$UPSTREAM_MS},$base]"
    ;;
  down) echo "[{$P,\"status\":503,\"delay_ms\":$UPSTREAM_MS},$base]" ;;
  *) die "unknown scenario $1" ;;
  esac
}

cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
CLK_TCK=$(getconf CLK_TCK)

run_one() { # SCENARIO REP
  local sc=$1 rep=$2 name="$1-r$2"
  fake_post /__reset '{}'
  fake_post /__faults "[{\"delay_ms\":$UPSTREAM_MS,\"count\":-1}]"
  local cfg=$RAW/gw.yaml
  [ "${sc%-nocf}" = "$sc" ] || cfg=$RAW/gw-nocf.yaml
  start_gateway "$cfg"
  node "$HERE/loadgen.mjs" --url "http://127.0.0.1:$AP_PORT" --clients "$CLIENTS" --seconds "$WARMUP" \
    --poll-ms 1000 >/dev/null
  fake_post /__reset '{}'
  fake_post /__faults "$(faults_for "$sc")"
  local l0 g0 f0 l1 g1 f1
  l0=$(load1); g0=$(cpu_ticks "$AP_PID"); f0=$(cpu_ticks "$FAKE_PID")
  node "$HERE/loadgen.mjs" --url "http://127.0.0.1:$AP_PORT" --clients "$CLIENTS" \
    --seconds "$DURATION" --timeout-ms 30000 --poll-ms 250 --deployment openai/gpt-4o \
    >"$RAW/$name.load.json"
  g1=$(cpu_ticks "$AP_PID"); f1=$(cpu_ticks "$FAKE_PID"); l1=$(load1)
  kill -0 "$AP_PID" 2>/dev/null || die "aperture died during $name (see $RAW/aperture.stderr)"
  printf '{"scenario":"%s","rep":%d,"duration_s":%s,"skip_s":%s,"clients":%d,"upstream_ms":%d,"load1_before":%s,"load1_after":%s,"gw_cpu_ms":%d,"fake_cpu_ms":%d,"faults":%s}\n' \
    "$sc" "$rep" "$DURATION" "$([ "$sc" = down ] && echo "$SKIP_S" || echo 0)" "$CLIENTS" "$UPSTREAM_MS" \
    "$l0" "$l1" $(((g1 - g0) * 1000 / CLK_TCK)) $(((f1 - f0) * 1000 / CLK_TCK)) "$(faults_for "$sc")" \
    >"$RAW/$name.meta.json"
  stop_pid "$AP_PID"; AP_PID=""
  log "$name: $(node "$HERE/report.mjs" --one "$RAW/$name")"
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
  echo "nproc: $(nproc)"
  echo "kernel: $(uname -r)"
  echo "node: $(node -v)"
  echo "aperture: $AP_SRC, tree at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD -- src include CMakeLists.txt 2>/dev/null || echo ' + uncommitted changes in src/')"
  echo "knobs: DURATION=$DURATION WARMUP=$WARMUP REPS=$REPS CLIENTS=$CLIENTS UPSTREAM_MS=$UPSTREAM_MS SKIP_S=$SKIP_S TIMEOUT_DELAY_MS=$TIMEOUT_DELAY_MS SCENARIOS='$SCENARIOS'"
  echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$RAW/meta.txt"

node "$ROOT/tests/fakes/fake_upstream.mjs" --port "$FAKE_PORT" >>"$RAW/fake.log" 2>&1 &
FAKE_PID=$!
wait_port "$FAKE_PORT" "$FAKE_PID" "fake upstream"

for rep in $(seq "$REPS"); do
  for sc in $SCENARIOS; do run_one "$sc" "$rep"; done
done
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RAW/meta.txt"
stop_all

node "$HERE/report.mjs" "$RAW" >"$OUT/results.md"
cat "$OUT/results.md"
