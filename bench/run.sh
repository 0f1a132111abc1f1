#!/usr/bin/env bash
# bench/run.sh - aperture prep against the codec floor and its peers, in one run.
#
# Usage: bench/run.sh [APERTURE_BINARY]      (default build/aperture; `make bench` passes it)
#
# Measures, for the corpus's real photos (../shared/corpus/photos/*.jpg, 8-22 MP; the Samsung
# 4032x3024 one is the 12 MP phone photo) and a drawn 6000x4000 photographic PNG, the median
# ms/image and the output bytes of, all at long edge 1568 / JPEG q78:
#   aperture   in-process (`prep --json --jobs 1`, the "ms.total" of each image) and whole
#              process (`prep --jobs 1 IN -o OUT` under hyperfine)
#   floor      libjpeg-turbo's djpeg at the same DCT scale + cjpeg of the output size, as
#              ../shared/bench/codec_floor.sh defines it (also run as-is), each a process
#   vips       vipsthumbnail (Debian libvips), VIPS_CONCURRENCY=1, a process
#   sharp      ../shared/bench/sharp_prep.js (sharp@0.34.5, concurrency 1), in-process
#   Pillow     ../shared/bench/seed_pillow_prep.py with and without --fast, in-process
# then throughput (images/s) over COPIES copies of the photos on 1 and 2 cores, and peak RSS
# (/usr/bin/time %M) for one 12 MP JPEG and a 100 MP PNG (exactly the default pixel limit,
# must be processed) plus a 100,000,001 px one (must be refused).
#
# In-process repetitions: each image is given REPS+1 times to one process; the first (warm-up:
# library init, page faults) is dropped and the median of the rest reported. Processes:
# hyperfine -N (no shell), 2 warm-ups, RUNS runs, median.
#
# Knobs (environment): REPS=7 PIL_REPS=5 RUNS=10 TP_RUNS=3 COPIES=4
#   SHARED=../shared/bench PHOTOS=../shared/corpus/photos SKIP_THROUGHPUT=1 SKIP_MEMORY=1
#   QUICK=1 (only the 12 MP photo's latency row, and throughput)
# Writes raw data to bench/out/raw/ and the report to bench/out/results.md (also printed).
# Needs: scripts/deps.sh bench (hyperfine, time, libjpeg-turbo-progs, imagemagick, libvips-tools,
# python3-pil, python3-numpy, node + npm). sharp is installed into bench/node_modules here.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

AP=$(realpath -m "${1:-build/aperture}")
REPS=${REPS:-7}
PIL_REPS=${PIL_REPS:-5}
RUNS=${RUNS:-10}
TP_RUNS=${TP_RUNS:-3}
COPIES=${COPIES:-4}
SHARED=$(realpath "${SHARED:-../shared/bench}")
PHOTOS=$(realpath "${PHOTOS:-../shared/corpus/photos}")
EDGE=1568
Q=78
PY=/usr/bin/python3 # Debian's: has PIL (the pyenv python3 on PATH does not)
OUT=$ROOT/bench/out
RAW=$OUT/raw
IMG=$OUT/img
# The drawn 6000x4000 photographic PNG is ~38 MB: over aperture's default 20 MiB input cap,
# which refuses it. Its timing row raises the byte cap (only); the memory rows use defaults.
BIG_BYTES=134217728

die() { echo "bench/run.sh: $*" >&2; exit 1; }
log() { echo "bench: $* (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2; }

# The build tree is shared: a rebuild in progress briefly removes the binary. Wait for it.
for _ in $(seq 60); do [ -x "$AP" ] && break; sleep 2; done
[ -x "$AP" ] || die "no aperture binary at $AP (build first: make build)"
for t in hyperfine djpeg cjpeg identify convert vipsthumbnail vips node npm /usr/bin/time; do
  command -v "$t" >/dev/null || die "missing $t: run scripts/deps.sh bench"
done
"$PY" -c 'import PIL, numpy' 2>/dev/null || die "$PY lacks PIL/numpy: scripts/deps.sh bench"
for f in codec_floor.sh sharp_prep.js seed_pillow_prep.py; do
  [ -f "$SHARED/$f" ] || die "missing $SHARED/$f"
done

# sharp, pinned by bench/package.json + package-lock.json, into bench/node_modules (gitignored).
if [ ! -f bench/node_modules/sharp/package.json ]; then
  log "installing sharp into bench/node_modules"
  (cd bench && { npm ci --no-audit --no-fund || npm install --no-audit --no-fund; } >&2)
fi
export NODE_PATH=$ROOT/bench/node_modules

rm -rf "$RAW" "$IMG" "$OUT/tp"
mkdir -p "$RAW" "$IMG" "$OUT/inputs" "$OUT/bin"
# Measure a snapshot: others may rebuild build/ while this runs.
cp "$AP" "$OUT/bin/aperture"
AP_SRC=$AP
AP=$OUT/bin/aperture

# Inputs: photos with the 12 MP phone photo first, then the drawn PNG.
mapfile -t photos < <(ls "$PHOTOS"/*.jpg | sort)
p12=$(ls "$PHOTOS"/Samsung*.jpg | head -1)
[ -n "$p12" ] || die "no Samsung (12 MP) photo in $PHOTOS"
canon=$(ls "$PHOTOS"/Canon*.jpg | head -1)
log "drawing PNG inputs (once)"
"$PY" bench/make_inputs.py "${canon:-${photos[0]}}" "$OUT/inputs"
large=$OUT/inputs/large.png
mp100=$OUT/inputs/mp100.png
mp100p1=$OUT/inputs/mp100p1.png
images=("$p12")
for p in "${photos[@]}"; do [ "$p" = "$p12" ] || images+=("$p"); done
images+=("$large")
# QUICK=1: latency of the 12 MP phone photo only, then throughput; no memory section. For
# re-checking in a short quiet window on a shared machine.
if [ -n "${QUICK:-}" ]; then
  images=("$p12")
  SKIP_MEMORY=1
fi

key() { local b; b=$(basename "$1"); echo "${b%.*}"; }
rep() { local n=$1 f=$2 i; for ((i = 0; i < n; i++)); do printf '%s\n' "$f"; done; }
hf() { hyperfine -N --style none --warmup 2 --runs "$RUNS" "$@" >/dev/null; }

# ---------------------------------------------------------------- machine and versions
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
  echo "nproc: $(nproc) ($(lscpu | sed -n 's/^Hypervisor vendor: *//p') guest; L2 $(lscpu | sed -n 's/^L2 cache: *//p'))"
  echo "memory: $(free -m | awk '/^Mem:/ {print $2 " MiB"}')"
  echo "kernel: $(uname -r)"
  echo "load_start: $(cat /proc/loadavg)"
  echo "aperture: $AP_SRC, tree $(git describe --always --dirty 2>/dev/null || echo ?), binary of $(date -u -r "$AP_SRC" '+%Y-%m-%d %H:%M UTC')"
  echo "aperture_build: CMAKE_BUILD_TYPE='$(sed -n 's/^CMAKE_BUILD_TYPE:STRING=//p' "$(dirname "$AP_SRC")/CMakeCache.txt" 2>/dev/null || true)' (empty = the CMakeLists default RelWithDebInfo: -O2 -g, resample.c -O3)"
  echo "gcc: $(gcc --version | head -1)"
  echo "libjpeg-turbo: $(dpkg-query -W -f='${Package} ${Version}' libjpeg62-turbo 2>/dev/null)"
  echo "libjpeg-turbo-progs: $(dpkg-query -W -f='${Version}' libjpeg-turbo-progs 2>/dev/null)"
  echo "libspng: $(dpkg-query -W -f='${Version}' libspng0 2>/dev/null)"
  echo "libpng: $(dpkg-query -W -f='${Version}' libpng16-16 2>/dev/null)"
  echo "vips: $(vips --version) (Debian libvips42 $(dpkg-query -W -f='${Version}' libvips42 2>/dev/null))"
  echo "node: $(node --version)"
  echo "sharp: $(node -p "const s=require('sharp'); s.versions.sharp + ' (bundled libvips ' + s.versions.vips + ', jpeg: mozjpeg ' + s.versions.mozjpeg + ', spng ' + s.versions.spng + ')'")"
  echo "pillow: $("$PY" -c 'import PIL, sys; print(PIL.__version__, "on Python", sys.version.split()[0])')"
  echo "imagemagick: $(convert -version | head -1)"
  echo "hyperfine: $(hyperfine --version)"
} >"$RAW/env.txt"
cat "$RAW/env.txt" >&2

# ---------------------------------------------------------------- latency, one thread each
export VIPS_CONCURRENCY=1
"$SHARED/codec_floor.sh" "$EDGE" "${photos[@]}" >"$RAW/codec_floor_sh.txt" 2>/dev/null || true
for img in "${images[@]}"; do
  k=$(key "$img")
  apx=()
  case $img in *.png) apx=(--max-bytes "$BIG_BYTES") ;; esac
  log "latency: $k"

  # aperture, in-process: REPS+1 copies of the same path, one thread; first dropped.
  mapfile -t args < <(rep $((REPS + 1)) "$img")
  "$AP" prep --json --jobs 1 "${apx[@]}" "${args[@]}" >"$RAW/ap_inproc_$k.jsonl" 2>/dev/null
  # aperture, whole process (read, prep, write the file).
  hf --export-json "$RAW/ap_proc_$k.json" \
    "$AP prep --jobs 1 ${apx[*]} $img -o $IMG/ap_$k.jpg"
  # vipsthumbnail, whole process, one thread.
  hf --export-json "$RAW/vips_proc_$k.json" \
    "vipsthumbnail $img -s $EDGE -o $IMG/vips_$k.jpg[Q=$Q,optimize_coding,strip]"
  stat -c %s "$IMG/vips_$k.jpg" >"$RAW/vips_bytes_$k.txt"

  # The codec floor (JPEG only): djpeg at the DCT scale codec_floor.sh picks, and cjpeg of the
  # 1568-px image (resized outside the timing by ImageMagick, as codec_floor.sh does). djpeg
  # writes to /dev/null here (codec_floor.sh writes a PPM file): a slightly lower floor.
  case $img in
  *.jpg | *.jpeg)
    read -r w h < <(identify -format '%w %h\n' "$img[0]" 2>/dev/null)
    big=$((w > h ? w : h))
    n=8
    while [ $n -gt 1 ] && [ $((big * (n - 1) / 8)) -ge "$EDGE" ]; do n=$((n - 1)); done
    djpeg -scale "$n/8" -outfile "$IMG/floor_$k.ppm" "$img"
    convert "$IMG/floor_$k.ppm" -resize "${EDGE}x${EDGE}>" "$IMG/floor_r_$k.ppm"
    hf --export-json "$RAW/floor_$k.json" \
      "djpeg -scale $n/8 -outfile /dev/null $img" \
      "cjpeg -quality $Q -optimize -outfile $IMG/floor_$k.jpg $IMG/floor_r_$k.ppm"
    echo "$n $(stat -c %s "$IMG/floor_$k.jpg")" >"$RAW/floor_meta_$k.txt"
    rm -f "$IMG/floor_$k.ppm"
    ;;
  esac

  # sharp and Pillow, in-process, REPS+1 / PIL_REPS+1 images per process, first dropped.
  node "$SHARED/sharp_prep.js" "${args[@]}" >"$RAW/sharp_$k.txt"
  "$PY" "$SHARED/seed_pillow_prep.py" --fast "${args[@]}" >"$RAW/pillow_fast_$k.txt" 2>/dev/null
  mapfile -t pargs < <(rep $((PIL_REPS + 1)) "$img")
  "$PY" "$SHARED/seed_pillow_prep.py" "${pargs[@]}" >"$RAW/pillow_$k.txt" 2>/dev/null
done
unset VIPS_CONCURRENCY

# ---------------------------------------------------------------- throughput, 1 vs 2 cores
if [ -z "${SKIP_THROUGHPUT:-}" ]; then
  mkdir -p "$OUT/tp/in" "$OUT/tp/ap" "$OUT/tp/vips"
  for ((c = 0; c < COPIES; c++)); do
    for p in "${photos[@]}"; do ln -sf "$p" "$OUT/tp/in/c${c}_$(basename "$p")"; done
  done
  ls "$OUT"/tp/in/*.jpg >"$OUT/tp/list"
  ntp=$(wc -l <"$OUT/tp/list")
  half=$(((ntp + 1) / 2))
  files=$(tr '\n' ' ' <"$OUT/tp/list")
  vo="$OUT/tp/vips/%s.jpg[Q=$Q,optimize_coding,strip]"
  echo "$ntp" >"$RAW/tp_n.txt"
  log "throughput: $ntp images"
  hyperfine -N --style none --warmup 1 --runs "$TP_RUNS" --export-json "$RAW/tp.json" \
    -n "aperture --jobs 1" "$AP prep --jobs 1 --out-dir $OUT/tp/ap $files" \
    -n "aperture --jobs 2" "$AP prep --jobs 2 --out-dir $OUT/tp/ap $files" \
    -n "vips 1 process, VIPS_CONCURRENCY=1" "env VIPS_CONCURRENCY=1 vipsthumbnail -s $EDGE -o $vo $files" \
    -n "vips 1 process, VIPS_CONCURRENCY=2" "env VIPS_CONCURRENCY=2 vipsthumbnail -s $EDGE -o $vo $files" \
    -n "vips 2 processes, VIPS_CONCURRENCY=1" "env VIPS_CONCURRENCY=1 xargs -a $OUT/tp/list -P 2 -n $half vipsthumbnail -s $EDGE -o $vo" \
    -n "sharp 1 process" "node $SHARED/sharp_prep.js $files" \
    -n "sharp 2 processes" "xargs -a $OUT/tp/list -P 2 -n $half node $SHARED/sharp_prep.js" \
    -n "Pillow --fast 1 process" "$PY $SHARED/seed_pillow_prep.py --fast $files" \
    -n "Pillow --fast 2 processes" "xargs -a $OUT/tp/list -P 2 -n $half $PY $SHARED/seed_pillow_prep.py --fast" \
    >/dev/null
fi

# ---------------------------------------------------------------- peak RSS
if [ -z "${SKIP_MEMORY:-}" ]; then
  log "memory"
  # rss NAME CMD...: peak RSS in KB (max of 3 runs), exit status and wall seconds of the last.
  rss() {
    local name=$1 i m best=0 rc
    shift
    for i in 1 2 3; do
      rc=0
      /usr/bin/time -f '%M %e' -o "$RAW/time.tmp" "$@" >"$RAW/rss_out.tmp" 2>"$RAW/rss_err.tmp" || rc=$?
      m=$(tail -1 "$RAW/time.tmp" | cut -d' ' -f1)
      [ "$m" -gt "$best" ] && best=$m
    done
    echo "$name|$best|$rc|$(tail -1 "$RAW/time.tmp" | cut -d' ' -f2)|$(head -c 300 "$RAW/rss_err.tmp" | tr '\n|' '  ')" >>"$RAW/rss.txt"
  }
  : >"$RAW/rss.txt"
  k12=$(key "$p12")
  rss "aperture --help (process baseline: shared libraries)" "$AP" --help
  rss "aperture --jobs 1, 12 MP JPEG" "$AP" prep --jobs 1 "$p12" -o "$IMG/rss_ap.jpg"
  rss "aperture (default jobs), 12 MP JPEG" "$AP" prep "$p12" -o "$IMG/rss_ap.jpg"
  rss "codec floor djpeg -scale, 12 MP JPEG" djpeg -scale "$(cut -d' ' -f1 "$RAW/floor_meta_$k12.txt")/8" -outfile /dev/null "$p12"
  rss "vipsthumbnail (VIPS_CONCURRENCY=1), 12 MP JPEG" env VIPS_CONCURRENCY=1 vipsthumbnail "$p12" -s $EDGE -o "$IMG/rss_vips.jpg[Q=$Q,optimize_coding,strip]"
  rss "node + require('sharp') alone (baseline)" node -e "require('sharp')"
  rss "sharp, 12 MP JPEG" node "$SHARED/sharp_prep.js" "$p12"
  rss "Python + PIL alone (baseline)" "$PY" -c "from PIL import Image"
  rss "Pillow --fast, 12 MP JPEG" "$PY" "$SHARED/seed_pillow_prep.py" --fast "$p12"
  rss "Pillow, 12 MP JPEG" "$PY" "$SHARED/seed_pillow_prep.py" "$p12"
  rss "aperture --jobs 1, 24 MP PNG (--max-bytes raised)" "$AP" prep --jobs 1 --max-bytes "$BIG_BYTES" "$large" -o "$IMG/rss_ap.jpg"
  rss "aperture (default limits), 100 MP PNG" "$AP" prep "$mp100" -o "$IMG/rss_ap100.jpg"
  rss "aperture (default limits), 100,000,001 px PNG" "$AP" prep "$mp100p1" -o "$IMG/rss_ap101.jpg"
  rss "vipsthumbnail (VIPS_CONCURRENCY=1), 100 MP PNG" env VIPS_CONCURRENCY=1 vipsthumbnail "$mp100" -s $EDGE -o "$IMG/rss_vips100.jpg[Q=$Q,optimize_coding,strip]"
  rss "sharp, 100 MP PNG" node "$SHARED/sharp_prep.js" "$mp100"
  rss "Pillow --fast, 100 MP PNG" "$PY" "$SHARED/seed_pillow_prep.py" --fast "$mp100"
  "$AP" prep --json --jobs 1 "$mp100" >"$RAW/ap_mp100.jsonl" 2>/dev/null || true
  rm -f "$RAW/time.tmp" "$RAW/rss_out.tmp" "$RAW/rss_err.tmp"
fi

echo "load_end: $(cat /proc/loadavg)" >>"$RAW/env.txt"
"$PY" bench/report.py "$RAW" | tee "$OUT/results.md"
