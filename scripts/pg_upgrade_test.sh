#!/usr/bin/env bash
# Major upgrade with pg_upgrade, 15 -> 18, on real clusters with the preload:
#   1. a PostgreSQL 15 cluster gets sample data, entities with integer and
#      text keys, static, dynamic and live segments, history, definition
#      history, an export, a sequence with records, a members view with a
#      grant and a change queue that is not empty;
#   2. pg_upgrade moves it to a new PostgreSQL 18 cluster (segments installed
#      in both majors, as a DBA would);
#   3. every row of every table segments keeps, the capture triggers and the
#      members views are identical after the upgrade;
#   4. on 18: the queued changes apply, live capture, refresh and the worker
#      work, and pg_dump of the extension's schema equals a fresh 18
#      install's (scripts/schema_of.sh, as scripts/upgrade_test.sh filters).
# Run by scripts/test.sh after the extension is installed in both majors:
#   pg_upgrade_test.sh OLD_PG_CONFIG NEW_PG_CONFIG
#   pg_upgrade_test.sh --wal OLD_PG_CONFIG NEW_PG_CONFIG
#   pg_upgrade_test.sh --probe OLD_PG_CONFIG NEW_PG_CONFIG
# --wal runs both clusters with WAL capture (README, "Upgrading"): the live
# segment's last change is in the slot, not the queue; from 17 on the old
# cluster is first switched to trigger capture (which decodes what the slot
# holds into the queue and drops it), before 17 the slot is left for
# pg_upgrade not to carry; either way the new cluster makes its own slot,
# applies every change and follows new ones, and no other slot is left.
# --probe only checks that PostgreSQL's own pg_upgrade works between the two
# installations, on a database with one plain table and no segments (exit
# 0), and prints why not otherwise (exit 3).
set -euo pipefail
cd "$(dirname "$0")/.."
probe=false
wal=false
if [ "${1:-}" = --probe ]; then probe=true; shift; fi
if [ "${1:-}" = --wal ]; then wal=true; shift; fi
old_config=${1:?old pg_config}
new_config=${2:?new pg_config}
old_bin=$("$old_config" --bindir)
new_bin=$("$new_config" --bindir)
work="${TMPDIR:-/tmp}/segments-pg-upgrade-$$"
old="$work/old"
new="$work/new"
port=55480
mkdir -p "$work"
chmod 777 "$work"
fail() { echo "pg_upgrade test: FAILED: $*" >&2; exit 1; }
as_owner() { if [ "$(id -u)" -eq 0 ]; then sudo -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  PG_CONFIG="$old_config" bash scripts/cluster.sh destroy "$old" >/dev/null 2>&1 || true
  PG_CONFIG="$new_config" bash scripts/cluster.sh destroy "$new" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

url() { echo "host=$1 port=$port user=postgres dbname=${2:-postgres}"; }
psql_old() { "$old_bin/psql" "$(url "$old")" -X -q -v ON_ERROR_STOP=1 "$@"; }
psql_new() { "$new_bin/psql" "$(url "$new" "${DB:-postgres}")" -X -q -v ON_ERROR_STOP=1 "$@"; }

if $probe; then
  PG_CONFIG="$old_config" bash scripts/cluster.sh start "$old" "$port"
  psql_old -c "CREATE TABLE probe (a int)" >/dev/null
else
echo "-- PostgreSQL $("$old_config" --version | awk '{print $2}'): data and segments$($wal && echo ", WAL capture")"
capture=()
$wal && capture=(wal_level=logical segments.capture=wal)
PG_CONFIG="$old_config" bash scripts/cluster.sh start "$old" "$port" shared_preload_libraries=segments segments.naptime=3600 "${capture[@]}"
psql_old -f scripts/sample_data.sql -v scale=3000 -v anchor=2026-11-01 >/dev/null
psql_old -v old=0.3.0 -f tests/upgrade/before.sql >/dev/null
psql_old -f tests/upgrade/more.sql >/dev/null
if $wal; then
  # The publication, then the slot (a full refresh of the live segment);
  # then a change only the slot holds.
  psql_old -c "SELECT segments.apply_changes()" -c "SELECT segments.apply_changes()" >/dev/null
  [ "$(psql_old -Atc "SELECT count(*) FROM pg_replication_slots WHERE plugin = 'segments'")" = 1 ] || fail "no WAL capture slot before the upgrade"
  psql_old -c "UPDATE customers SET city = 'Berlin' WHERE id BETWEEN 5 AND 8" >/dev/null
  if [ "$(psql_old -Atc "SELECT current_setting('server_version_num')::int >= 170000")" = t ]; then
    # pg_upgrade from 17 on refuses a slot that has not consumed all WAL:
    # README's procedure, back to trigger capture first.
    psql_old -c "ALTER SYSTEM SET segments.capture = 'trigger'" -c "SELECT pg_reload_conf()" >/dev/null
    # The scheduler, woken by the reload, may be the one retiring the slot
    # (an application that finds it busy leaves it to that one): wait.
    for _ in $(seq 1 60); do
      psql_old -c "SELECT segments.apply_changes()" >/dev/null
      [ "$(psql_old -Atc "SELECT count(*) FROM pg_replication_slots")" = 0 ] && break
      sleep 0.5
    done
    [ "$(psql_old -Atc "SELECT count(*) FROM pg_replication_slots")" = 0 ] || fail "switching to trigger capture left a slot"
  fi
else
  queued=$(psql_old -Atc "SELECT count(*) FROM segments.change_queue")
  [ "$queued" -gt 0 ] || fail "nothing queued before the upgrade"
fi
psql_old -At -f tests/upgrade/state.sql > "$work/state-before"
fi
PG_CONFIG="$old_config" bash scripts/cluster.sh stop "$old"

$probe || echo "-- pg_upgrade to PostgreSQL $("$new_config" --version | awk '{print $2}')"
mkdir -p "$new"
[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$new" "$work"
chmod 700 "$new"
# The new cluster must match the old one: 18's initdb turns data checksums
# on by default, and cluster.sh's 15 cluster has none (its 18 cluster has).
checksums=()
if as_owner "$old_bin/pg_controldata" -D "$old" | grep -Eq "Data page checksum version: +0"; then
  case "$("$new_bin/initdb" --help)" in *--no-data-checksums*) checksums=(--no-data-checksums) ;; esac
else
  checksums=(--data-checksums)
fi
as_owner "$new_bin/initdb" -D "$new" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 "${checksums[@]}" >"$work/initdb.log" 2>&1 \
  || { cat "$work/initdb.log"; fail "initdb"; }
# Both servers with the preload, as a DBA's configuration has it: the
# worker must stay out of pg_upgrade's way (it does not start under -b).
preload="-c shared_preload_libraries=segments"
$probe && preload=""
if ! (cd "$work" && as_owner "$new_bin/pg_upgrade" -b "$old_bin" -B "$new_bin" -d "$old" -D "$new" -U postgres \
        -o "$preload -c unix_socket_directories=$work" \
        -O "$preload -c unix_socket_directories=$work" >"$work/pg_upgrade.log" 2>&1); then
  if $probe; then
    reason=$(find "$new" -path "*pg_upgrade_output.d*" -name "*.log" -exec grep -h -m1 "ERROR" {} + 2>/dev/null | head -n 1)
    echo "PostgreSQL's own pg_upgrade from $("$old_config" --version | awk '{print $2}') to $("$new_config" --version | awk '{print $2}') fails on a database with one plain table and no segments: ${reason:-$(tail -n 3 "$work/pg_upgrade.log" | tr '\n' ' ')}"
    exit 3
  fi
  cat "$work/pg_upgrade.log"
  find "$new" -path "*pg_upgrade_output.d*" -name "pg_upgrade_dump_*.log" -exec grep -B2 -A6 -E "error|ERROR" {} + 2>/dev/null || true
  fail "pg_upgrade"
fi
if $probe; then
  echo "pg_upgrade probe: $("$old_config" --version | awk '{print $2}') -> $("$new_config" --version | awk '{print $2}') works"
  exit 0
fi
{
  echo "port = $port"
  echo "listen_addresses = ''"
  echo "unix_socket_directories = '$new'"
  echo "fsync = off"
  echo "shared_preload_libraries = 'segments'"
  # Long enough that no scheduler pass runs before the comparison below.
  echo "segments.naptime = 3600"
  if $wal; then echo "wal_level = logical"; echo "segments.capture = 'wal'"; fi
} | as_owner tee -a "$new/postgresql.conf" >/dev/null
as_owner "$new_bin/pg_ctl" -D "$new" -l "$new/server.log" -w -t 60 start >/dev/null || { tail -n 30 "$new/server.log"; fail "start"; }

echo "-- every row, trigger and view is as it was"
psql_new -At -f tests/upgrade/state.sql > "$work/state-after"
diff "$work/state-before" "$work/state-after" || fail "rows changed in the upgrade (diff above: < before, > after)"

echo "-- segments work on the new major"
# Schedulers wake on the reload and pass every second from now on.
psql_new -c "ALTER SYSTEM SET segments.naptime = 1" -c "SELECT pg_reload_conf()" >/dev/null
version=$(psql_new -Atc "SELECT current_setting('server_version_num')::int / 10000")
[ "$version" = "$("$new_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')" ] || fail "not on the new major"
psql_new -c "SELECT segments.apply_changes()" >/dev/null
check() { [ "$(psql_new -Atc "$1")" = t ] || fail "$2"; }
# With WAL capture the scheduler (a pass a second from now on) and these
# applications share the making of the new slot: one makes it, the other
# finds it being made and goes on; the result is checked once both have.
settled() {
  if $wal; then
    for _ in $(seq 1 60); do
      psql_new -c "SELECT segments.apply_changes()" >/dev/null
      [ "$(psql_new -Atc "$1")" = t ] && break
      sleep 0.5
    done
  fi
  check "$1" "$2"
}
settled "SELECT member_count = (SELECT count(*) FROM customers WHERE city = 'Berlin') FROM segments.segment WHERE name = 'Berlin live'" \
  "the changes queued on the old major were not applied"
psql_new -c "UPDATE customers SET city = 'Berlin' WHERE id BETWEEN 10 AND 14" -c "SELECT segments.apply_changes()" >/dev/null
settled "SELECT member_count = (SELECT count(*) FROM customers WHERE city = 'Berlin') FROM segments.segment WHERE name = 'Berlin live'" \
  "live capture does not work after the upgrade"
if $wal; then
  # The new cluster's own slot (made by the applications above), and WAL
  # capture following a change through it.
  settled "SELECT count(*) = 1 FROM pg_replication_slots s JOIN segments.capture_slot c USING (slot_name) WHERE s.plugin = 'segments'" \
    "the new cluster did not make its WAL capture slot"
  [ "$(psql_new -Atc "SELECT count(*) FROM pg_replication_slots")" = 1 ] || fail "not exactly one slot after the upgrade"
  psql_new -c "UPDATE customers SET city = 'Hamburg' WHERE id BETWEEN 1 AND 3" -c "SELECT segments.apply_changes()" >/dev/null
  check "SELECT count(*) = 0 FROM pg_trigger WHERE tgname LIKE 'segments\_live\_%'" "capture triggers are left with WAL capture"
  settled "SELECT member_count = (SELECT count(*) FROM customers WHERE city = 'Berlin') FROM segments.segment WHERE name = 'Berlin live'" \
    "WAL capture does not follow changes after the upgrade"
fi
refreshed=$(psql_new -Atc "SET segments.reference_time = '2026-11-01'" -c "SELECT count(*) FILTER (WHERE status = 'succeeded') || '/' || count(*) FROM segments.refresh()")
[ "${refreshed%%/*}" = "${refreshed##*/}" ] || fail "refresh after the upgrade: $refreshed succeeded"
new_id=$(psql_new -Atc "SELECT segments.quick_segment('After the upgrade', 'customer', 'country', 'eq', '\"FR\"')")
for _ in $(seq 1 60); do
  [ "$(psql_new -Atc "SELECT status FROM segments.segment WHERE id = $new_id")" = succeeded ] && break
  sleep 0.5
done
check "SELECT status = 'succeeded' FROM segments.segment WHERE id = $new_id" "the worker did not refresh a new segment on the new major"

echo "-- the extension's schema equals a fresh install on the new major"
psql_new -c "CREATE DATABASE fresh" >/dev/null
DB=fresh psql_new -f scripts/sample_data.sql -v scale=10 -v anchor=2026-11-01 >/dev/null
DB=fresh psql_new -c "CREATE EXTENSION segments" \
  -c "SELECT segments.register_entity('customer', 'customers', 'id')" \
  -c "SELECT segments.register_related('customer', 'orders', 'orders', 'customer_id', 'ordered_at')" \
  -c "SELECT segments.register_entity('by_code', 'customers', 'code')" \
  -c "GRANT SELECT ON segments.customer_members TO bi_reader" >/dev/null
PATH="$new_bin:$PATH" bash scripts/schema_of.sh "$(url "$new")" > "$work/schema-upgraded.sql"
PATH="$new_bin:$PATH" bash scripts/schema_of.sh "$(url "$new" fresh)" > "$work/schema-fresh.sql"
if ! diff -u -B "$work/schema-fresh.sql" "$work/schema-upgraded.sql" > "$work/schema.diff"; then
  head -n 150 "$work/schema.diff"
  fail "the upgraded schema differs from a fresh install (diff above: - fresh, + upgraded)"
fi
as_owner "$new_bin/pg_ctl" -D "$new" -m fast -w stop >/dev/null
echo "pg_upgrade test: $("$old_config" --version | awk '{print $2}') -> $("$new_config" --version | awk '{print $2}') passed ($(wc -l < "$work/state-before") tables and views compared, $(wc -l < "$work/schema-fresh.sql") schema lines)"
