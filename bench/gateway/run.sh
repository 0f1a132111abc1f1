#!/usr/bin/env bash
# bench/gateway/run.sh - aperture serve against the Portkey gateway, both proxying to the same
# fake upstream, and that fake called directly, under the same wrk load in one run.
#
# Usage: bench/gateway/run.sh [APERTURE_BINARY]        (default build/aperture)
#        BUILD_REV=HEAD bench/gateway/run.sh             (build that commit first, see below)
#
# Four targets, one fake upstream (tests/fakes/fake_upstream.mjs, node) shared by all:
#   direct            wrk -> fake                           the baseline
#   aperture          wrk -> aperture serve -> fake         provider openai, base_url = the fake;
#                                                           defaults otherwise (answer cache on)
#   aperture-nocache  the same with APERTURE_CACHE=off      (a second process, its own port)
#   portkey           wrk -> @portkey-ai/gateway (node) -> fake   x-portkey-provider: openai,
#                                                           x-portkey-custom-host: the fake
# Scenarios:
#   text   text.lua: a small non-streamed Chat Completions request (fixed ~630-byte answer); every
#          request unique (a number in the prompt) so no answer cache can serve it
#   image  image.lua: the same with one 12 MP JPEG (4032x3024, 4.2 MB) as a base64 data URL;
#          aperture decodes, resizes to 1024x768 (gpt-4o, target openai-high) and re-encodes
#          it; the fake and Portkey receive the 5.6 MB body as it is
#   hold   hold.mjs keeps HOLD_N (5000) requests in flight for HOLD_SECONDS while the fake
#          delays every answer by HOLD_DELAY_MS (2000, via its /__faults endpoint); counts
#          every failure; samples the gateway's RSS and its upstream connections
# Each text/image measurement is `wrk -tC -cC` (one connection per thread, so the Lua scripts
# can time every request exactly, see common.lua) for DURATION s after a WARMUP s run, for
# each load in TEXT_CONNS / IMAGE_CONNS, REPS times. A load is C (C connections flat out) or
# C@D (C connections, each waiting D ms after an answer before its next request: a paced,
# moderate load whose latency is not all queueing), the targets interleaved within a
# repetition so that drift in the machine's load hits all of them alike. The report uses the
# median over repetitions; "added" latency is the median of the per-repetition differences
# gateway - direct at the same load.
#
# Every process is started fresh for each scenario (and for each target of `hold`), so each
# process's VmHWM (/proc/PID/status) is that scenario's peak RSS. aperture runs as a copy of
# the binary (bench/gateway/out/bin/apgw): a rebuild of build/ during the run changes nothing.
# Its request log goes to /dev/null (APERTURE_LOG_FILE) except in `image`, where it goes to a
# file to read preprocessing_ms / upstream_ms / total_latency_ms from (one line per request at
# well under 100 requests/s). The fake records every request it serves; a background loop
# clears those records every second (POST /__reset) during text and image, so its memory stays
# flat. CPU per request (utime+stime from /proc/PID/stat over the measured run, divided by the
# requests) is recorded for the gateway and for the fake.
#
# BUILD_REV=REV exports that commit (git archive, so uncommitted work in the tree is left out)
# into bench/gateway/out/src and builds its `aperture` there (cmake -G Ninja, the project's
# default RelWithDebInfo); the report then names exactly what was measured. Each aperture runs
# in its own directory under bench/gateway/out (run-<target>/), so nothing it may write (its
# cache file) lands in the repository.
#
# Knobs (environment): DURATION=10 WARMUP=2 REPS=3 TEXT_CONNS="1 16@4 16" IMAGE_CONNS="1 4"
#   HOLD_N=5000 HOLD_SECONDS=20 HOLD_DELAY_MS=2000
#   TARGETS="direct aperture aperture-nocache portkey" (direct is needed for "added")
#   HOLD_TARGETS=$TARGETS
#   SCENARIOS="text image hold" PORT_BASE=19300 BENCH_IMAGE=../shared/corpus/photos/...jpg
#   BENCH_OUT=bench/gateway/out  where raw/, results.md, the binary and the export go
#   AP_ENV=     extra VAR=value settings for aperture, space-separated (e.g. APERTURE_CACHE=off)
#   QUIET_CPU=  (if set, e.g. 30: before each scenario and repetition wait, up to LOAD_WAIT=900 s,
#               until other work on the machine uses less than that % of one core; the CPU
#               used outside the benchmark's processes is recorded for every run either way)
# Writes raw data to bench/gateway/out/raw/, the report to bench/gateway/out/results.md (also
# printed). Needs: wrk, node + npm, curl, ss (iproute2), /usr/bin/time. Portkey (pinned by
# package.json + package-lock.json) is installed into bench/gateway/node_modules on first use.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"

AP_SRC=$(realpath -m "${1:-build/aperture}")
BUILD_REV=${BUILD_REV:-}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
REPS=${REPS:-3}
TEXT_CONNS=${TEXT_CONNS:-"1 16@4 16"}
IMAGE_CONNS=${IMAGE_CONNS:-"1 4"}
HOLD_N=${HOLD_N:-5000}
HOLD_SECONDS=${HOLD_SECONDS:-20}
HOLD_DELAY_MS=${HOLD_DELAY_MS:-2000}
TARGETS=${TARGETS:-"direct aperture aperture-nocache portkey"}
HOLD_TARGETS=${HOLD_TARGETS:-$TARGETS}
SCENARIOS=${SCENARIOS:-"text image hold"}
PORT_BASE=${PORT_BASE:-19300}
QUIET_CPU=${QUIET_CPU:-}
AP_ENV=${AP_ENV:-}
LOAD_WAIT=${LOAD_WAIT:-900}
BENCH_IMAGE=$(realpath "${BENCH_IMAGE:-$ROOT/../shared/corpus/photos/Samsung_Galaxy_S7_Edge.jpg}")
export BENCH_IMAGE

FAKE_PORT=$PORT_BASE
AP_PORT=$((PORT_BASE + 1))
PK_PORT=$((PORT_BASE + 2))
AP2_PORT=$((PORT_BASE + 3))
DUMMY_KEY=sk-bench-dummy-not-a-real-key
OUT=$(realpath -m "${BENCH_OUT:-$HERE/out}")
RAW=$OUT/raw
PK_DIR=$HERE/node_modules/@portkey-ai/gateway

die() { echo "bench/gateway/run.sh: $*" >&2; exit 1; }
load1() { cut -d' ' -f1 /proc/loadavg; }
log() { echo "bench/gateway: $* (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2; }

for t in wrk node npm curl ss awk /usr/bin/time; do command -v "$t" >/dev/null || die "missing $t"; done
AP_DESC=""
if [ -n "$BUILD_REV" ]; then
  rev=$(git -C "$ROOT" rev-parse --verify "$BUILD_REV^{commit}") || die "no commit $BUILD_REV"
  log "building aperture at ${rev:0:10} in $OUT/src"
  rm -rf "$OUT/src"
  mkdir -p "$OUT/src"
  git -C "$ROOT" archive "$rev" | tar -x -C "$OUT/src"
  cmake -S "$OUT/src" -B "$OUT/src/build" -G Ninja >/dev/null
  ninja -C "$OUT/src/build" aperture >/dev/null
  AP_SRC=$OUT/src/build/aperture
  AP_DESC="${rev:0:10} ($(git -C "$ROOT" log -1 --format=%s "$rev"); clean export, RelWithDebInfo)"
fi
for _ in $(seq 60); do [ -x "$AP_SRC" ] && break; sleep 2; done # a rebuild may be in progress
[ -x "$AP_SRC" ] || die "no aperture binary at $AP_SRC (build first)"
[ -f "$BENCH_IMAGE" ] || die "no image at $BENCH_IMAGE (set BENCH_IMAGE)"
if [ ! -f "$PK_DIR/package.json" ]; then
  log "installing @portkey-ai/gateway into bench/gateway/node_modules"
  (cd "$HERE" && { npm ci --no-audit --no-fund || npm install --no-audit --no-fund; } >&2)
fi
# 5000 client connections + 5000 upstream ones, plus the fake's: raise the descriptor limit.
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -ge 16384 ] || log "warning: ulimit -n is $(ulimit -n); the hold scenario needs ~11000"

mkdir -p "$OUT"
rm -rf "$RAW" "$OUT/bin"
mkdir -p "$RAW" "$OUT/bin"
cp "$AP_SRC" "$OUT/bin/apgw"

# ---- processes ---------------------------------------------------------------------------------

FAKE_PID="" AP_PID="" AP2_PID="" PK_PID="" RESET_PID="" SAMPLER_PID=""
stop_pid() { # PID: SIGTERM, wait up to 5 s, then SIGKILL
  local p=$1
  [ -n "$p" ] || return 0
  kill "$p" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$p" 2>/dev/null || true
}
stop_all() {
  stop_pid "$SAMPLER_PID"; SAMPLER_PID=""
  stop_pid "$RESET_PID"; RESET_PID=""
  stop_pid "$AP_PID"; AP_PID=""
  stop_pid "$AP2_PID"; AP2_PID=""
  stop_pid "$PK_PID"; PK_PID=""
  stop_pid "$FAKE_PID"; FAKE_PID=""
}
trap stop_all EXIT

wait_port() { # PORT PID NAME
  for _ in $(seq 100); do
    kill -0 "$2" 2>/dev/null || die "$3 exited at start (see $RAW)"
    curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/" && return 0
    sleep 0.1
  done
  die "$3 does not answer on port $1"
}

start_fake() {
  node "$ROOT/tests/fakes/fake_upstream.mjs" --port "$FAKE_PORT" >>"$RAW/fake.log" 2>&1 &
  FAKE_PID=$!
  wait_port "$FAKE_PORT" "$FAKE_PID" "fake upstream"
}

start_aperture() { # LOGFILE [nocache]
  local port=$AP_PORT name=aperture extra=""
  if [ "${2:-}" = nocache ]; then port=$AP2_PORT name=aperture-nocache extra=APERTURE_CACHE=off; fi
  cat >"$OUT/gw.yaml" <<EOF
# written by bench/gateway/run.sh (--listen gives each instance its port)
listen: "127.0.0.1:$AP_PORT"
max_body_bytes: 67108864
providers:
  - name: openai
    type: openai
    base_url: "http://127.0.0.1:$FAKE_PORT/v1"
    api_key_env: BENCH_DUMMY_OPENAI_KEY
EOF
  # A clean environment: no real keys or base URLs from the caller's shell reach it; AP_ENV
  # adds settings to both instances. Each instance runs in its own directory under $OUT, and
  # its answer cache (an SQLite file in the working directory) starts empty every time.
  rm -rf "$OUT/run-$name"
  mkdir -p "$OUT/run-$name"
  # shellcheck disable=SC2086
  (cd "$OUT/run-$name" && exec env -i PATH="$PATH" HOME="$HOME" BENCH_DUMMY_OPENAI_KEY="$DUMMY_KEY" \
    APERTURE_LOG_FILE="$1" $AP_ENV $extra "$OUT/bin/apgw" serve --config "$OUT/gw.yaml" \
    --listen "127.0.0.1:$port" --drain-seconds 1) >>"$RAW/$name.stderr" 2>&1 &
  if [ "$name" = aperture ]; then AP_PID=$!; else AP2_PID=$!; fi
  wait_port "$port" "$!" "$name"
}

start_portkey() {
  # What `npx @portkey-ai/gateway --port=N` runs, without npx's wrapper process (so PK_PID is
  # the server's own). NODE_ENV=production and --headless: no console UI, no log streaming.
  (cd "$HERE" && exec env NODE_ENV=production node "$PK_DIR/build/start-server.js" \
    --port="$PK_PORT" --headless) >>"$RAW/portkey.log" 2>&1 &
  PK_PID=$!
  wait_port "$PK_PORT" "$PK_PID" "portkey"
}

start_resetter() {
  (while sleep 1; do
    curl -s -o /dev/null -X POST -H 'content-type: application/json' -d '{}' \
      "http://127.0.0.1:$FAKE_PORT/__reset" || true
  done) &
  RESET_PID=$!
}

target_url() {
  case $1 in
  direct) echo "http://127.0.0.1:$FAKE_PORT/v1/chat/completions" ;;
  aperture) echo "http://127.0.0.1:$AP_PORT/v1/chat/completions" ;;
  aperture-nocache) echo "http://127.0.0.1:$AP2_PORT/v1/chat/completions" ;;
  portkey) echo "http://127.0.0.1:$PK_PORT/v1/chat/completions" ;;
  esac
}
# The headers each target needs, one per line ("Name: value"). aperture adds the provider key
# itself; the fake does not check keys, but gets one as a real provider would.
target_headers() {
  case $1 in
  direct) echo "Authorization: Bearer $DUMMY_KEY" ;;
  aperture | aperture-nocache) ;;
  portkey)
    echo "Authorization: Bearer $DUMMY_KEY"
    echo "x-portkey-provider: openai"
    echo "x-portkey-custom-host: http://127.0.0.1:$FAKE_PORT/v1"
    ;;
  esac
}
target_pid() {
  case $1 in
  direct) echo "" ;;
  aperture) echo "$AP_PID" ;;
  aperture-nocache) echo "$AP2_PID" ;;
  portkey) echo "$PK_PID" ;;
  esac
}
cpu_ticks() { # PID -> utime+stime in clock ticks (0 without a PID)
  [ -n "$1" ] || { echo 0; return; }
  sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}
status_kb() { # PID FIELD -> kB
  [ -n "$1" ] || { echo 0; return; }
  awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"
}
alive() {
  for p in "$FAKE_PID" "$@"; do
    [ -z "$p" ] || kill -0 "$p" 2>/dev/null || die "process $p died during the run (see $RAW/*.log, *.stderr)"
  done
}

busy_ticks() { # all CPUs' non-idle ticks since boot (user nice system irq softirq steal)
  awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat
}

# Before each scenario and each repetition, while none of the benchmark's processes is busy:
# if QUIET_CPU is set, wait (up to LOAD_WAIT s) until the rest of the machine uses less than
# QUIET_CPU percent of one core over 3 s. (The load average is no use here: the benchmark's own
# processes keep it at 2-3 for a minute after each run.)
wait_for_quiet() {
  [ -n "$QUIET_CPU" ] || return 0
  local waited=0 b0 b1 pct
  while :; do
    b0=$(busy_ticks); sleep 3; b1=$(busy_ticks)
    pct=$(((b1 - b0) * 100 / CLK_TCK / 3))
    [ "$pct" -lt "$QUIET_CPU" ] && return 0
    [ "$waited" -ge "$LOAD_WAIT" ] && { log "other work still uses ${pct}% of a core after ${LOAD_WAIT}s; measuring anyway"; return 0; }
    [ $((waited % 60)) -eq 0 ] && log "waiting for other work to use < ${QUIET_CPU}% of a core (now ${pct}%)"
    waited=$((waited + 3))
  done
}

CLK_TCK=$(getconf CLK_TCK)

# ---- text and image: wrk -------------------------------------------------------------------

run_wrk() { # SCENARIO TARGET LOAD REP       LOAD = CONNS or CONNS@THINK_MS
  local sc=$1 tg=$2 spec=$3 rep=$4
  local c=${spec%@*} d=0
  [ "$spec" = "$c" ] || d=${spec#*@}
  local name="$sc-$tg-c$c-d$d-r$rep" url pid hdr=() h
  url=$(target_url "$tg")
  pid=$(target_pid "$tg")
  while IFS= read -r h; do [ -n "$h" ] && hdr+=(-H "$h"); done < <(target_headers "$tg")
  BENCH_RUN_ID="$name-w-$$" BENCH_DELAY_MS=$d wrk -t"$c" -c"$c" -d"${WARMUP}s" --timeout 10s -s "$HERE/$sc.lua" "${hdr[@]}" "$url" >/dev/null
  local aplog=""
  if [ "${tg%-nocache}" = aperture ] && [ -n "${AP_LOG:-}" ]; then aplog=$RAW/$tg-$sc.log; : >"$aplog"; fi
  local l0 g0 f0 b0 l1 g1 f1 b1
  l0=$(load1); g0=$(cpu_ticks "$pid"); f0=$(cpu_ticks "$FAKE_PID"); b0=$(busy_ticks)
  BENCH_RUN_ID="$name-$$" BENCH_DELAY_MS=$d /usr/bin/time -f '%e %U %S' -o "$RAW/$name.time" \
    wrk -t"$c" -c"$c" -d"${DURATION}s" --timeout 10s -s "$HERE/$sc.lua" "${hdr[@]}" "$url" >"$RAW/$name.wrk"
  g1=$(cpu_ticks "$pid"); f1=$(cpu_ticks "$FAKE_PID"); b1=$(busy_ticks); l1=$(load1)
  alive "$pid"
  local line
  line=$(sed -n 's/^BENCHJSON //p' "$RAW/$name.wrk")
  [ -n "$line" ] || die "no BENCHJSON line from wrk in $RAW/$name.wrk"
  local logstats=null
  if [ -n "$aplog" ]; then
    cp "$aplog" "$RAW/$name.aplog.jsonl"
    logstats=$(node "$HERE/report.mjs" --aplog "$RAW/$name.aplog.jsonl")
  fi
  # CPU in ms: the gateway's, the fake's, wrk's, and everything else on the machine (other
  # people's work, plus kernel time not charged to any process).
  local wall wrk_ms gw_ms fake_ms busy_ms other_ms
  read -r wall wu ws <"$RAW/$name.time"
  wrk_ms=$(awk -v u="$wu" -v s="$ws" 'BEGIN{printf "%d", (u + s) * 1000}')
  gw_ms=$(((g1 - g0) * 1000 / CLK_TCK))
  fake_ms=$(((f1 - f0) * 1000 / CLK_TCK))
  busy_ms=$(((b1 - b0) * 1000 / CLK_TCK))
  other_ms=$((busy_ms - gw_ms - fake_ms - wrk_ms))
  printf '{"scenario":"%s","target":"%s","conns":%d,"delay_ms":%d,"rep":%d,"load1_before":%s,"load1_after":%s,"wall_s":%s,"gw_cpu_ms":%d,"fake_cpu_ms":%d,"wrk_cpu_ms":%d,"busy_cpu_ms":%d,"other_cpu_ms":%d,"wrk":%s,"aperture_log":%s}\n' \
    "$sc" "$tg" "$c" "$d" "$rep" "$l0" "$l1" "$wall" "$gw_ms" "$fake_ms" "$wrk_ms" "$busy_ms" "$other_ms" \
    "$line" "$logstats" >"$RAW/$name.json"
  log "$name: $(node -e 'const j=JSON.parse(process.argv[1]);const w=j.wrk;console.log(`${w.rps.toFixed(0)} req/s, p50 ${(w.lat_us.p50/1000).toFixed(3)} ms, p99 ${(w.lat_us.p99/1000).toFixed(3)} ms, non-2xx ${w.non2xx}, socket errors ${w.errors.connect+w.errors.read+w.errors.write+w.errors.timeout}, other CPU ${(j.other_cpu_ms/10/j.wall_s).toFixed(0)}% of a core`)' "$(cat "$RAW/$name.json")")"
}

scenario_wrk() { # SCENARIO CONNS-LIST
  local sc=$1 conns=$2
  wait_for_quiet
  log "scenario $sc: starting the fake, aperture and portkey"
  start_fake
  # aperture's request log goes to /dev/null, except for image: $RAW/<target>-image.log.
  AP_LOG=""
  [ "$sc" = image ] && AP_LOG=1
  case " $TARGETS " in *" aperture "*) start_aperture "$([ -n "$AP_LOG" ] && echo "$RAW/aperture-$sc.log" || echo /dev/null)" ;; esac
  case " $TARGETS " in *" aperture-nocache "*) start_aperture "$([ -n "$AP_LOG" ] && echo "$RAW/aperture-nocache-$sc.log" || echo /dev/null)" nocache ;; esac
  case " $TARGETS " in *" portkey "*) start_portkey ;; esac
  start_resetter
  for rep in $(seq "$REPS"); do
    [ "$rep" = 1 ] || wait_for_quiet
    for spec in $conns; do
      for tg in $TARGETS; do run_wrk "$sc" "$tg" "$spec" "$rep"; done
    done
  done
  printf '{"scenario":"%s","aperture_vmhwm_kb":%s,"aperture-nocache_vmhwm_kb":%s,"portkey_vmhwm_kb":%s,"fake_vmhwm_kb":%s}\n' "$sc" \
    "$(status_kb "$AP_PID" VmHWM)" "$(status_kb "$AP2_PID" VmHWM)" "$(status_kb "$PK_PID" VmHWM)" "$(status_kb "$FAKE_PID" VmHWM)" \
    >"$RAW/$sc-memory.json"
  stop_all
}

# ---- hold: 5000 concurrent slow upstream calls ------------------------------------------------

scenario_hold() {
  for tg in $HOLD_TARGETS; do
    wait_for_quiet
    log "scenario hold: $tg, $HOLD_N requests in flight for ${HOLD_SECONDS}s, upstream delay ${HOLD_DELAY_MS} ms"
    start_fake
    case $tg in
    aperture) start_aperture /dev/null ;;
    aperture-nocache) start_aperture /dev/null nocache ;;
    portkey) start_portkey ;;
    esac
    local pid port url hargs=() h
    pid=$(target_pid "$tg")
    url=$(target_url "$tg")
    port=$(echo "$url" | sed 's|^http://127.0.0.1:\([0-9]*\)/.*|\1|')
    while IFS= read -r h; do [ -n "$h" ] && hargs+=(--header "$h"); done < <(target_headers "$tg")
    curl -s -o /dev/null -X POST -H 'content-type: application/json' \
      -d "{\"path\":\"/v1/chat/completions\",\"delay_ms\":$HOLD_DELAY_MS,\"count\":-1}" \
      "http://127.0.0.1:$FAKE_PORT/__faults"
    # Sample every 0.25 s: gateway RSS, established connections to the fake (upstream) and
    # from clients to the target (downstream).
    (while :; do
      printf '%s %s %s %s\n' "$(date +%s.%N | cut -c1-14)" "$(status_kb "$pid" VmRSS)" \
        "$(ss -Htn state established "( dport = :$FAKE_PORT )" | wc -l)" \
        "$(ss -Htn state established "( sport = :$port )" | wc -l)"
      sleep 0.25
    done) >"$RAW/hold-$tg.samples" 2>/dev/null &
    SAMPLER_PID=$!
    local l0 g0 f0 b0
    l0=$(load1); g0=$(cpu_ticks "$pid"); f0=$(cpu_ticks "$FAKE_PID"); b0=$(busy_ticks)
    node "$HERE/hold.mjs" --url "$url" --n "$HOLD_N" --seconds "$HOLD_SECONDS" --timeout-ms 60000 \
      "${hargs[@]}" >"$RAW/hold-$tg.client.json"
    local g1 f1 l1 b1
    g1=$(cpu_ticks "$pid"); f1=$(cpu_ticks "$FAKE_PID"); b1=$(busy_ticks); l1=$(load1)
    sleep 0.5
    stop_pid "$SAMPLER_PID"; SAMPLER_PID=""
    alive "$pid"
    printf '{"scenario":"hold","target":"%s","n":%d,"seconds":%d,"delay_ms":%d,"load1_before":%s,"load1_after":%s,"gw_cpu_ms":%d,"fake_cpu_ms":%d,"busy_cpu_ms":%d,"vmhwm_kb":%s,"client":%s}\n' \
      "$tg" "$HOLD_N" "$HOLD_SECONDS" "$HOLD_DELAY_MS" "$l0" "$l1" $(((g1 - g0) * 1000 / CLK_TCK)) \
      $(((f1 - f0) * 1000 / CLK_TCK)) $(((b1 - b0) * 1000 / CLK_TCK)) "$(status_kb "$pid" VmHWM)" "$(cat "$RAW/hold-$tg.client.json")" \
      >"$RAW/hold-$tg.json"
    log "hold $tg: $(node -e 'const j=JSON.parse(process.argv[1]);const c=j.client;console.log(`${c.ok} ok, ${c.failed} failed ${JSON.stringify(c.fails)}, max in flight ${c.max_inflight}, p50 ${c.lat_ms.p50} ms, p99 ${c.lat_ms.p99} ms, VmHWM ${(j.vmhwm_kb/1024).toFixed(0)} MiB`)' "$(cat "$RAW/hold-$tg.json")")"
    stop_all
  done
}

# ---- the run ---------------------------------------------------------------------------------

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
  echo "nproc: $(nproc)"
  echo "mem: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "kernel: $(uname -r)"
  echo "wrk: $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')"
  echo "node: $(node -v)"
  echo "portkey: $(node -p "require('$PK_DIR/package.json').version")"
  if [ -n "$AP_DESC" ]; then
    echo "aperture: $AP_DESC"
  else
    echo "aperture: $AP_SRC, tree at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD -- src include CMakeLists.txt 2>/dev/null || echo ' + uncommitted changes in src/ (use BUILD_REV for an exact commit)')"
  fi
  echo "aperture settings: the bench config (one openai provider at the fake) + defaults${AP_ENV:+ + $AP_ENV}; aperture-nocache: the same + APERTURE_CACHE=off"
  echo "targets: $TARGETS"
  echo "image: $BENCH_IMAGE ($(stat -c %s "$BENCH_IMAGE") bytes)"
  echo "knobs: DURATION=$DURATION WARMUP=$WARMUP REPS=$REPS TEXT_CONNS='$TEXT_CONNS' IMAGE_CONNS='$IMAGE_CONNS' HOLD_N=$HOLD_N HOLD_SECONDS=$HOLD_SECONDS HOLD_DELAY_MS=$HOLD_DELAY_MS"
  echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$RAW/meta.txt"

for sc in $SCENARIOS; do
  case $sc in
  text) scenario_wrk text "$TEXT_CONNS" ;;
  image) scenario_wrk image "$IMAGE_CONNS" ;;
  hold) scenario_hold ;;
  *) die "unknown scenario $sc" ;;
  esac
done
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RAW/meta.txt"

node "$HERE/report.mjs" "$RAW" >"$OUT/results.md"
cat "$OUT/results.md"
