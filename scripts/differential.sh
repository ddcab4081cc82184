#!/usr/bin/env bash
# The differential test of random definitions against an independent SQL
# oracle (tests/differential.rs), with as many cases as asked:
#   bash scripts/differential.sh --cases 100000 [--seed N]
# scripts/test.sh runs it with 1000 cases. Needs the extension installed.
set -euo pipefail
cd "$(dirname "$0")/.."
cases=1000
seed=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cases) cases="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    *) echo "usage: $0 [--cases N] [--seed N]" >&2; exit 2 ;;
  esac
done
export SEGMENTS_DIFFERENTIAL_CASES="$cases"
[ -n "$seed" ] && export SEGMENTS_DIFFERENTIAL_SEED="$seed"
exec cargo test --features integration --test differential -- --nocapture
