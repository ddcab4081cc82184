#!/usr/bin/env bash
# The differential test of random definitions against an independent SQL
# oracle (tests/differential.rs), with as many cases as asked:
#   bash scripts/differential.sh --cases 100000 [--seed N] [--from N]
# (--from N starts at definition N of that run: a late failure, fast.)
# scripts/test.sh runs it with 1000 cases. Needs the extension installed.
set -euo pipefail
cd "$(dirname "$0")/.."
cases=1000
seed=""
from=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cases) cases="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --from) from="$2"; shift 2 ;;
    *) echo "usage: $0 [--cases N] [--seed N] [--from N]" >&2; exit 2 ;;
  esac
done
export SEGMENTS_DIFFERENTIAL_CASES="$cases"
[ -n "$seed" ] && export SEGMENTS_DIFFERENTIAL_SEED="$seed"
[ -n "$from" ] && export SEGMENTS_DIFFERENTIAL_FROM="$from"
exec cargo test --features integration --test differential -- --nocapture
