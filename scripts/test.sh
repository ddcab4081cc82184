#!/usr/bin/env bash
# The whole test suite, in three layers:
#   1. unit tests of the plain Rust: segments-core and the extension's
#      pure parts (cargo test --workspace --lib)
#   2. #[pg_test] tests inside Postgres (cargo pgrx test) and pg_regress
#      tests (tests/pg_regress) against a cluster started with the preload
#   3. integration tests (tests/cluster.rs) that start their own clusters
# Run it from anywhere: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

bash scripts/setup.sh

pg_config=/usr/bin/pg_config
runas=(); install_flags=()
if [ "$(id -u)" -eq 0 ]; then runas=(--runas postgres); else install_flags=(--sudo); fi
work="${TMPDIR:-/tmp}/segments-test-$$"
mkdir -p "$work"
regress_cluster="$work/regress"
# cargo pgrx test creates this as the postgres user, so its parent is /tmp.
pgrx_data="${TMPDIR:-/tmp}/segments-pgrx-$$"
cleanup() {
  bash scripts/cluster.sh destroy "$regress_cluster" >/dev/null 2>&1 || true
  rm -rf "$work" "$pgrx_data"
}
trap cleanup EXIT

echo "== layer 1: unit tests"
cargo test --workspace --lib

echo "== layer 2: #[pg_test] tests"
rm -rf "$pgrx_data"
cargo pgrx test pg15 "${runas[@]}" --pgdata "$pgrx_data"

echo "== installing the extension"
cargo pgrx install --pg-config "$pg_config" "${install_flags[@]}" >/dev/null

echo "== layer 2: pg_regress tests"
bash scripts/cluster.sh start "$regress_cluster" 55433 shared_preload_libraries=segments
tests=$(cd tests/pg_regress/sql && ls *.sql | sed 's/\.sql$//' | sort | tr '\n' ' ')
mkdir -p "$work/regress-out"
psql "host=$regress_cluster port=55433 user=postgres dbname=postgres" -qX \
  -c "DROP DATABASE IF EXISTS segments_regress" -c "CREATE DATABASE segments_regress"
if ! "$("$pg_config" --pkglibdir)/pgxs/src/test/regress/pg_regress" \
      --use-existing --host="$regress_cluster" --port=55433 --user=postgres \
      --bindir="$("$pg_config" --bindir)" \
      --inputdir="$repo/tests/pg_regress" --outputdir="$work/regress-out" \
      --dbname=segments_regress $tests; then
  cat "$work/regress-out/regression.diffs" 2>/dev/null || true
  exit 1
fi

echo "== layer 3: integration tests on real clusters"
cargo test --features integration --test cluster --test analyst --test security --test robustness --test live --test trust --test backup --test differential

echo "== layer 3: Citus (a coordinator and two workers; skipped where Citus is not installed)"
cargo test --features integration --test citus -- --nocapture

echo "== upgrade: 0.1.0 -> current, in place"
bash scripts/upgrade_test.sh

echo "== all three layers passed"
