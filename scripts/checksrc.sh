#!/usr/bin/env bash
# A small source checker: functions we never call in this codebase (unbounded copies, racy or
# error-swallowing parsers). Exit 1 with the offending lines.
set -u
cd "$(dirname "$0")/.."
banned='\b(sprintf|vsprintf|strcpy|strcat|strncpy|strtok|atoi|atol|gets)\s*\('
if git ls-files 'src/*.c' 'src/*.h' 'include/*.h' 'tests/*.c' | xargs grep -nE "$banned"; then
  echo "checksrc: banned function(s) above" >&2
  exit 1
fi
echo "checksrc: ok"
