#!/usr/bin/env bash
# Upgrade test: databases made with each released version (0.1.0 from
# commit b2c9f01, 0.2.0 from commit 48c0bb5) are updated in place to the
# current version, on a real cluster with the preload. Run by
# scripts/test.sh after the current build is installed. For each:
#   1. build and install the old version from its commit (a git worktree
#      sharing target/); a clone without that history installs the stored
#      sql/segments--OLD.sql beside the current library instead;
#   2. make segments, memberships, history, usages, an export, a sequence;
#   3. install the current build again, restart: the old schema keeps
#      working with the new library until the update (every C symbol the
#      0.1.0 script names is still exported), and the worker waits;
#   4. ALTER EXTENSION segments UPDATE: every row survives, everything
#      refreshes, and the schema equals a fresh install's.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
RELEASES=("0.1.0 b2c9f01" "0.2.0 48c0bb5")
NEW=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
# The major under test: $PG_CONFIG (Debian's 15 by default). Its client
# programs come first on PATH, and scripts/cluster.sh follows PG_CONFIG.
pg_config="${PG_CONFIG:-/usr/bin/pg_config}"
export PG_CONFIG="$pg_config"
export PATH="$("$pg_config" --bindir):$PATH"
major=$("$pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
libdir=$("$pg_config" --pkglibdir)
extdir=$("$pg_config" --sharedir)/extension
install_flags=()
[ "$(id -u)" -eq 0 ] || install_flags=(--sudo)
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
work="${TMPDIR:-/tmp}/segments-upgrade-$$"
cluster="$work/cluster"
port=55470
url="host=$cluster port=$port user=postgres"
mkdir -p "$work/new"
summary=()
chmod 755 "$work"

fail() { echo "upgrade test: FAILED: $*" >&2; exit 1; }
restore_new() { $SUDO cp "$work/new/segments.so" "$libdir/"; $SUDO cp "$work/new/"segments*.sql "$work/new/segments.control" "$extdir/"; }
cleanup() {
  bash scripts/cluster.sh destroy "$cluster" >/dev/null 2>&1 || true
  [ -d "$work/old" ] && git worktree remove --force "$work/old" >/dev/null 2>&1 || true
  [ -f "$work/new/segments.so" ] && restore_new
  rm -rf "$work"
}
trap cleanup EXIT

[ -f "$extdir/segments--$NEW.sql" ] || fail "install the current build first (cargo pgrx install)"
cp "$libdir/segments.so" "$extdir/segments.control" "$extdir"/segments--*.sql "$work/new/"

upgrade_from() {
OLD=$1
OLD_COMMIT=$2
echo "== upgrade: $OLD -> $NEW"
echo "-- the current library exports every C symbol the $OLD script names"
missing=""
nm -D --defined-only "$work/new/segments.so" > "$work/new-symbols"
for symbol in $(grep -oE "'MODULE_PATHNAME', '[A-Za-z_0-9]+'" sql/segments--$OLD.sql | sed "s/.*, '//; s/'$//" | sort -u); do
  grep -qw "$symbol" "$work/new-symbols" || missing="$missing $symbol"
done
[ -z "$missing" ] || fail "symbols of $OLD missing from the new library:$missing"

echo "-- installing $OLD"
# Released versions build only against PostgreSQL 15 (18 changed APIs they
# use): on another major, their stored install scripts run beside the
# current library, which still exports every C symbol they name.
if [ "$major" = 15 ] && git cat-file -e "$OLD_COMMIT^{commit}" 2>/dev/null; then
  git worktree add --force --detach "$work/old" "$OLD_COMMIT" >/dev/null 2>&1
  (cd "$work/old" && CARGO_TARGET_DIR="$repo/target" cargo pgrx install --pg-config "$pg_config" "${install_flags[@]}" >/dev/null)
  diff -q "$extdir/segments--$OLD.sql" sql/segments--$OLD.sql >/dev/null \
    || echo "   note: the $OLD script built from $OLD_COMMIT is not byte-identical to sql/segments--$OLD.sql (pgrx orders entities freely)"
else
  echo "   notice: PostgreSQL $major, or commit $OLD_COMMIT not in this clone's history: using sql/segments--$OLD.sql with the current library"
  $SUDO cp sql/segments--$OLD.sql "$extdir/"
fi

bash scripts/cluster.sh start "$cluster" "$port" shared_preload_libraries=segments segments.naptime=1
psql "$url" -X -q -v ON_ERROR_STOP=1 -f scripts/sample_data.sql -v scale=3000 -v anchor=2026-11-01 >/dev/null
psql "$url" -X -q -v ON_ERROR_STOP=1 -v old="$OLD" -f tests/upgrade/before.sql >/dev/null
psql "$url" -X -qAt -v ON_ERROR_STOP=1 -f tests/upgrade/counts.sql > "$work/counts-before"
[ "$(psql "$url" -XAtc "SELECT extversion FROM pg_extension WHERE extname = 'segments'")" = "$OLD" ] || fail "not at $OLD"

echo "-- installing $NEW under the running $OLD database"
bash scripts/cluster.sh stop "$cluster"
restore_new
# The upgrade scripts as they are in this tree.
$SUDO cp sql/segments--*--*.sql "$extdir/"
[ -f "$extdir/segments--$OLD.sql" ] || $SUDO cp sql/segments--$OLD.sql "$extdir/"
bash scripts/cluster.sh start "$cluster" "$port"
sleep 2
psql "$url" -X -qAt -v ON_ERROR_STOP=1 -c "SET segments.reference_time = '2026-11-01'" \
  -c "SELECT count(*) FROM segments.refresh(ARRAY[1::bigint]) WHERE status = 'succeeded'" \
  -c "SELECT segments.is_member(1, 1)" >/dev/null || fail "$OLD schema broke under the $NEW library"
grep -q "this library is $NEW; waiting" "$cluster/server.log" || fail "the worker did not wait for the update"

echo "-- ALTER EXTENSION segments UPDATE"
psql "$url" -X -qAt -v ON_ERROR_STOP=1 -f tests/upgrade/counts.sql > "$work/counts-mid"
psql "$url" -X -q -v ON_ERROR_STOP=1 -c "ALTER EXTENSION segments UPDATE"
[ "$(psql "$url" -XAtc "SELECT extversion FROM pg_extension WHERE extname = 'segments'")" = "$NEW" ] || fail "not at $NEW"
psql "$url" -X -qAt -v ON_ERROR_STOP=1 -f tests/upgrade/counts.sql > "$work/counts-after"
diff "$work/counts-mid" "$work/counts-after" || fail "rows changed in the update"
# The refresh before the update added history only.
diff <(grep -v '^refresh_run' "$work/counts-before") <(grep -v '^refresh_run' "$work/counts-mid") \
  || fail "the refresh under the new library changed rows it should not"
refreshed=$(psql "$url" -X -qAt -v ON_ERROR_STOP=1 -c "SET segments.reference_time = '2026-11-01'" \
  -c "SELECT count(*) FILTER (WHERE status = 'succeeded') || '/' || count(*) FROM segments.refresh()")
[ "$refreshed" = "3/3" ] || fail "refresh after the update: $refreshed succeeded"

echo "-- the updated schema equals a fresh $NEW install"
psql "$url" -X -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE fresh"
psql "$url dbname=fresh" -X -q -v ON_ERROR_STOP=1 -f scripts/sample_data.sql -v scale=10 -v anchor=2026-11-01 >/dev/null
psql "$url dbname=fresh" -X -q -v ON_ERROR_STOP=1 -c "CREATE EXTENSION segments" \
  -c "SELECT segments.register_entity('customer', 'customers', 'id')" \
  -c "SELECT segments.register_related('customer', 'orders', 'orders', 'customer_id', 'ordered_at')" >/dev/null
bash scripts/schema_of.sh "$url dbname=postgres" > "$work/schema-updated.sql"
bash scripts/schema_of.sh "$url dbname=fresh" > "$work/schema-fresh.sql"
if ! diff -u -B "$work/schema-fresh.sql" "$work/schema-updated.sql" > "$work/schema.diff"; then
  head -n 150 "$work/schema.diff"
  fail "the updated schema differs from a fresh install (diff above: - fresh, + updated)"
fi
summary+=("$OLD -> $NEW passed ($(wc -l < "$work/schema-fresh.sql") schema lines compared)")
bash scripts/cluster.sh destroy "$cluster" >/dev/null 2>&1 || true
[ -d "$work/old" ] && git worktree remove --force "$work/old" >/dev/null 2>&1 || true
restore_new
}

for release in "${RELEASES[@]}"; do
  if [ "$major" != 15 ] && [ "${release%% *}" = 0.1.0 ]; then
    # 0.1.0's data can only be made by 0.1.0's own library (the current
    # one writes 0.2.0's schema), which builds for PostgreSQL 15 only.
    summary+=("0.1.0 -> $NEW: SKIPPED on PostgreSQL $major (0.1.0 builds only for 15; tested there)")
    continue
  fi
  # shellcheck disable=SC2086
  upgrade_from $release
done
for line in "${summary[@]}"; do echo "upgrade test: $line"; done
