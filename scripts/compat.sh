#!/bin/sh
# compat.sh - the SDK compatibility suite: aperture serve driven by the official openai and
# @anthropic-ai/sdk packages (tests/compat, node's built-in test runner) against the fake upstream
# in tests/fakes. Installs the pinned SDKs with `npm ci` when tests/compat/node_modules is missing
# or older than the lock file. Exit status: node's (non-zero when any test fails).
#
#   APERTURE_BIN     the aperture binary to test (default: build/aperture)
#   APERTURE_CORPUS  the shared test corpus (default: ../shared/corpus)
#   extra arguments  are passed to node --test (e.g. --test-name-pattern=ssrf)
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
: "${APERTURE_BIN:=$root/build/aperture}"
export APERTURE_BIN

command -v node >/dev/null 2>&1 || { echo "compat: node is not installed" >&2; exit 1; }
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
    echo "compat: node >= 20 required (found $(node --version))" >&2
    exit 1
fi
if [ ! -x "$APERTURE_BIN" ]; then
    echo "compat: no aperture binary at $APERTURE_BIN" >&2
    exit 1
fi

mods=tests/compat/node_modules
if [ ! -f "$mods/.package-lock.json" ] || [ tests/compat/package-lock.json -nt "$mods/.package-lock.json" ] ||
    [ tests/compat/package.json -nt "$mods/.package-lock.json" ]; then
    echo "compat: npm ci --prefix tests/compat" >&2
    npm ci --prefix tests/compat --no-audit --no-fund --loglevel=error >&2
fi

exec node --test --test-reporter=spec "$@" tests/compat/
