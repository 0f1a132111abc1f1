#!/usr/bin/env bash
# Install the Debian packages aperture needs to build, test and benchmark, only those missing.
# Usage: scripts/deps.sh [build|test|bench]   (default: test, which includes build)
# Runs apt-get through sudo when not root. Safe to run repeatedly: a no-op when all is present.
set -eu
what=${1:-test}
build_pkgs="build-essential cmake ninja-build pkg-config
  libjpeg62-turbo-dev libspng-dev libpng-dev libwebp-dev libgif-dev libtiff-dev libheif-dev
  liblcms2-dev libexif-dev libssl-dev
  libmicrohttpd-dev libcurl4-openssl-dev libjansson-dev libcyaml-dev
  libtesseract-dev libleptonica-dev tesseract-ocr-eng libsqlite3-dev libhiredis-dev"
# Tests compare against independent tools (libvips, Pillow) and fuzz with clang's libFuzzer.
test_pkgs="libcmocka-dev clang libclang-rt-14-dev libvips-tools python3 python3-pil python3-numpy
  redis-server nodejs npm fonts-dejavu-core"
bench_pkgs="libjpeg-turbo-progs imagemagick hyperfine time wrk"
case $what in
  build) pkgs=$build_pkgs ;;
  test) pkgs="$build_pkgs $test_pkgs" ;;
  bench) pkgs="$build_pkgs $test_pkgs $bench_pkgs" ;;
  *) echo "usage: $0 [build|test|bench]" >&2; exit 2 ;;
esac
missing=""
for p in $pkgs; do
  # Accept a package that is installed under any architecture qualifier.
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done
# npm on the machine may be installed outside Debian; accept any working node + npm.
case $missing in *nodejs*|*npm*) if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=$(echo "$missing" | sed -e 's/ nodejs//' -e 's/ npm//'); fi ;; esac
[ -z "${missing// /}" ] && exit 0
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "deps.sh: installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# shellcheck disable=SC2086
$sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
