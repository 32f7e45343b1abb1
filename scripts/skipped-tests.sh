#!/usr/bin/env bash
# make test's closing line: how many tests skipped their checks, and why.
# A skipped test counts as passed in cargo's summary; this line says it was not.
# Usage: scripts/skipped-tests.sh DIR   (DIR: the tests' GRULM_SKIP_LOG)
set -euo pipefail
dir="$1"
n=0
[ -d "$dir" ] && n=$(find "$dir" -type f | wc -l)
if [ "$n" -eq 0 ]; then
  echo "make test: every test ran; none skipped"
  exit 0
fi
reasons=$(cat "$dir"/* | sort | uniq -c | sed -E 's/^ *([0-9]+) /\1 × /' | paste -sd ';' - | sed 's/;/; /g')
echo "make test: $n test(s) SKIPPED (counted as passed by cargo, but their checks did not run): $reasons"
