#!/usr/bin/env bash
# Citus benchmark: the same segments refreshed on 1M customers / 5M orders
# distributed over two workers (32 shards, colocated) and on the same
# tables local to the coordinator, on one machine; with the bytes the
# workers ship to the coordinator per leaf query, against the bytes the
# matching rows would take. Then the same with text keys (accounts keyed
# by code), whose positions come from the key dictionary.
#
#   bash bench/citus.sh [--scale N] [--runs N] [--out FILE]
#
# Needs Citus (bash scripts/citus.sh build) and segments installed (bench/run.sh
# installs the release build and then calls this). Writes a "Citus" section
# into FILE (default BENCHMARKS.md), replacing the previous one.
set -euo pipefail
cd "$(dirname "$0")/.."
scale=1000000; runs=5; out=BENCHMARKS.md
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: bench/citus.sh [--scale N] [--runs N] [--out FILE]" >&2; exit 2 ;;
  esac
done
if ! bash scripts/citus.sh installed; then
  echo "bench/citus.sh: Citus is not installed (bash scripts/citus.sh build); skipped"
  exit 0
fi
dir="${SEGMENTS_CITUS_BENCH_DIR:-/tmp/segments-bench-citus}"
port=55600
url="host=$dir/node0 port=$port user=postgres dbname=postgres"
bash scripts/citus.sh destroy "$dir"
bash scripts/citus.sh start "$dir" "$port" >/dev/null
# SEGMENTS_CITUS_BENCH_KEEP=1 leaves the cluster running, to look into it.
[ -n "${SEGMENTS_CITUS_BENCH_KEEP:-}" ] || trap 'bash scripts/citus.sh destroy "$dir"' EXIT
q() { psql "$url" -qX -v ON_ERROR_STOP=1 "$@"; }

echo "== loading $scale customers and $((5 * scale)) orders twice: local, and distributed"
for schema in local dist; do
  q -v scale="$scale" -v anchor=2026-11-01 -v schema="$schema" -f scripts/sample_data.sql 2>/dev/null
done
q <<'EOF'
SET client_min_messages = warning;
ALTER TABLE dist.orders DROP CONSTRAINT orders_customer_id_fkey, DROP CONSTRAINT orders_pkey;
ALTER TABLE dist.email_events DROP CONSTRAINT email_events_customer_id_fkey, DROP CONSTRAINT email_events_pkey;
ALTER TABLE dist.customers DROP CONSTRAINT customers_code_key;
SELECT create_distributed_table('dist.customers', 'id');
SELECT create_distributed_table('dist.orders', 'customer_id', colocate_with => 'dist.customers');
SELECT truncate_local_data_after_distributing_table('dist.orders');
SELECT truncate_local_data_after_distributing_table('dist.customers');
DROP TABLE dist.email_events;
-- Text keys: the customers as accounts keyed by their code.
CREATE TABLE local.accounts AS SELECT code, country, unsubscribed, loyalty_tier FROM local.customers;
ALTER TABLE local.accounts ADD PRIMARY KEY (code);
CREATE TABLE local.account_orders AS
  SELECT c.code AS account_code, o.amount, o.ordered_at FROM local.orders o JOIN local.customers c ON c.id = o.customer_id;
CREATE INDEX ON local.account_orders (account_code);
CREATE TABLE dist.accounts (LIKE local.accounts INCLUDING ALL);
CREATE TABLE dist.account_orders (LIKE local.account_orders);
SELECT create_distributed_table('dist.accounts', 'code');
SELECT create_distributed_table('dist.account_orders', 'account_code', colocate_with => 'dist.accounts');
INSERT INTO dist.accounts SELECT * FROM local.accounts;
INSERT INTO dist.account_orders SELECT * FROM local.account_orders;
VACUUM ANALYZE;
CREATE EXTENSION segments;
SELECT segments.register_entity('local_customer', 'local.customers', 'id');
SELECT segments.register_related('local_customer', 'orders', 'local.orders', 'customer_id', 'ordered_at');
SELECT segments.register_entity('customer', 'dist.customers', 'id');
SELECT segments.register_related('customer', 'orders', 'dist.orders', 'customer_id', 'ordered_at');
SELECT segments.register_entity('local_account', 'local.accounts', 'code');
SELECT segments.register_related('local_account', 'orders', 'local.account_orders', 'account_code', 'ordered_at');
SELECT segments.register_entity('account', 'dist.accounts', 'code');
SELECT segments.register_related('account', 'orders', 'dist.account_orders', 'account_code', 'ordered_at');
SET segments.reference_time = '2026-11-01';
SELECT segments.create_segment(e || ' ' || n, replace(d, '@', e)::jsonb)
  FROM (VALUES ('local_customer'), ('customer'), ('local_account'), ('account')) AS es(e),
       (VALUES (1, 'Germany', '{"entity":"@","rules":[{"where":{"attribute":"country","op":"eq","value":"DE"}},
                 {"combine":"except","where":{"attribute":"unsubscribed","op":"is_true"}}]}'),
               (2, 'Spent 500 in 30 days', '{"entity":"@","rules":[{"where":{"related":"orders","aggregate":"sum",
                 "attribute":"amount","within":"30 days","op":"gt","value":500}}]}'),
               (3, 'Frequent or platinum', '{"entity":"@","rules":[{"where":{"related":"orders","aggregate":"count",
                 "op":"gte","value":8}},{"combine":"union","where":{"attribute":"loyalty_tier","op":"eq","value":"platinum"}}]}')
       ) AS ds(i, n, d)
 ORDER BY e, i;
EOF

echo "== refreshing ($runs runs after a warm-up)"
timing() {  # entity -> "median min max first" in ms of refresh() of its segments (first: the warm-up)
  q -tA -c "SET segments.reference_time = '2026-11-01'" -c "
    CREATE OR REPLACE FUNCTION pg_temp.time_refresh(e text, n int) RETURNS SETOF float8 LANGUAGE plpgsql AS \$\$
    DECLARE ids bigint[] := ARRAY(SELECT id FROM segments.segment WHERE entity = e ORDER BY id); t timestamptz;
    BEGIN
      t := clock_timestamp();
      PERFORM segments.refresh(ids);
      RETURN NEXT -extract(epoch FROM clock_timestamp() - t) * 1000;
      FOR i IN 1..n LOOP
        t := clock_timestamp();
        PERFORM segments.refresh(ids);
        RETURN NEXT extract(epoch FROM clock_timestamp() - t) * 1000;
      END LOOP;
    END \$\$;
    SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) FILTER (WHERE ms > 0)::numeric) || ' ' ||
           round(min(ms) FILTER (WHERE ms > 0)::numeric) || ' ' || round(max(ms)::numeric) || ' ' || round(-min(ms)::numeric)
      FROM pg_temp.time_refresh('$1', $runs) ms"
}
read -r local_median local_min local_max _ < <(timing local_customer)
read -r dist_median dist_min dist_max _ < <(timing customer)
read -r local_text_median local_text_min local_text_max local_text_first < <(timing local_account)
read -r dist_text_median dist_text_min dist_text_max dist_text_first < <(timing account)

# The same memberships either way (integer keys: the same bitmaps; text
# keys: the same keys, as the two entities' dictionaries differ).
same=$(q -tA -c "SELECT bool_and(l.members = d.members) FROM segments.segment ls JOIN segments.membership l ON l.segment_id = ls.id
                   JOIN segments.segment ds ON ds.entity = 'customer' AND substr(ds.name, 10) = substr(ls.name, 16)
                   JOIN segments.membership d ON d.segment_id = ds.id WHERE ls.entity = 'local_customer'")
if [ "$same" = t ]; then same=yes; else same="**no**"; fi
same_text=t
while read -r local_id dist_id; do
  # One constant segment id a query: Citus plans the members view over a
  # distributed table per segment.
  [ "$(q -tA -c "SELECT (SELECT array_agg(code ORDER BY code) FROM segments.local_account_members WHERE segment_id = $local_id)
                   IS NOT DISTINCT FROM (SELECT array_agg(code ORDER BY code) FROM segments.account_members WHERE segment_id = $dist_id)")" = t ] \
    || same_text=f
done < <(q -tA -F ' ' -c "SELECT ls.id, ds.id FROM segments.segment ls JOIN segments.segment ds
                            ON ds.entity = 'account' AND substr(ds.name, 9) = substr(ls.name, 15) WHERE ls.entity = 'local_account'")
if [ "$same_text" = t ]; then same_text=yes; else same_text="**no**"; fi
counts=$(q -tA -c "SELECT string_agg(m.member_count::text, ' / ' ORDER BY s.id) FROM segments.segment s JOIN segments.membership m ON m.segment_id = s.id WHERE s.entity = 'customer'")

# Bytes the workers ship per leaf query. The partial states: each shard's
# rb_agg states as the text Citus sends (run_command_on_shards runs the
# leaf on every shard; Citus's EXPLAIN ANALYZE cannot save cstring partial
# aggregates). The rows: "Tuple data received from nodes" of the same query
# returning the aggregated key instead, as it would without pushdown.
states_shipped() {  # leaf SQL -> bytes
  local table body
  table=$(grep -oE 'dist\.(customers|orders)' <<< "$1" | head -1)
  body=${1//$table/%s}
  q -tA -c "SELECT pg_size_pretty(sum(result::bigint)) FROM run_command_on_shards('$table',
              \$q\$SELECT octet_length(x::text) FROM ($body) x\$q\$)"
}
rows_shipped() {  # SQL -> bytes received from the workers
  q -tA -c "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) $1" \
    | grep -oE 'Tuple data received from nodes: [0-9.]+ [kMG]?B' | head -1 | awk '{print $6 " " $7}'
}
leaves=$(q -tA -c "SET segments.reference_time = '2026-11-01'" -c "SELECT segments.explain(id) FROM segments.segment WHERE entity = 'customer' ORDER BY id" \
  | python3 -c 'import sys,re; t=sys.stdin.read(); [print(" ".join(q.split())) for q in dict.fromkeys(re.findall(r"^(SELECT .*?;)$", t, re.S|re.M))]')
ship_rows=""
n=0
while IFS= read -r leaf; do
  [ -n "$leaf" ] || continue
  n=$((n + 1))
  bitmaps=$(states_shipped "${leaf%;}")
  # The rows the leaf aggregates, shipped as they would be without pushdown.
  rows_sql=$(python3 - "$leaf" <<'EOF'
import re, sys
leaf = sys.argv[1].rstrip(';')
# SELECT <aggregates> FROM ... -> SELECT <the aggregated key> FROM ...
key = re.search(r"segments\.rb_agg\(([^)]*?)\)", leaf).group(1)
print("SELECT " + key + leaf[leaf.index(" FROM "):])
EOF
)
  rows=$(rows_shipped "$rows_sql")
  ship_rows="$ship_rows| leaf query $n | ${bitmaps:-?} | ${rows:-?} |
"
done <<< "$leaves"

machine="$(lscpu | sed -n 's/^Model name: *//p' | head -1 | awk '{print $1, $2}'), $(nproc) cores"
section=$(cat <<EOF
## Citus: distributed vs local (\`bash bench/citus.sh\`)

$scale customers and $((5 * scale)) orders, once as local tables on the coordinator and once distributed over two workers (32 shards, \`orders\` colocated with \`customers\` by \`customer_id\`), all three nodes on this machine ($machine; Citus 13.2.2). Three segments (an attribute segment, a 30-day spend, frequent-or-platinum) refreshed together; $runs runs after a warm-up, median (range).

| | refresh of 3 segments |
|---|---|
| local tables | $local_median ms ($local_min–$local_max ms) |
| distributed, aggregated on the workers | $dist_median ms ($dist_min–$dist_max ms) |

Memberships identical to the local ones: **$same** (members: $counts).

Text keys: the same customers as \`accounts\` keyed by their \`code\` (text), with their orders as \`account_orders\` distributed by \`account_code\`; the same three segments. Positions come from the key dictionary; on Citus the leaves join its colocated copy on the shards (\`segments.account_keys\`), so the dictionary is not shipped. The first refresh gives every key a position (and fills the copy).

| | first refresh | refresh of 3 segments |
|---|---|---|
| local tables, text keys | $local_text_first ms | $local_text_median ms ($local_text_min–$local_text_max ms) |
| distributed, text keys | $dist_text_first ms | $dist_text_median ms ($dist_text_min–$dist_text_max ms) |

Members identical to the local ones: **$same_text**.

What the workers ship to the coordinator per leaf query: partial \`rb_agg\` states, one row per shard (their size as the text Citus sends, measured with \`run_command_on_shards\`), against the rows the same query would ship without pushdown (the key it aggregates; Citus \`EXPLAIN ANALYZE\`, "Tuple data received from nodes"):

| query | shipped: bitmaps | shipped: the rows |
|---|---|---|
$ship_rows
Per-shard bitmaps are sparser than one bitmap of the whole table: hash distribution scatters each shard's keys over the whole key range, so their containers are arrays (2 bytes a member) rather than runs, and Citus sends partial aggregate states as text (hex: 2 characters a byte). So the states are about half the bytes of the rows' keys here, and the gap grows with the number of columns a scan would otherwise ship; a state type with a binary or base64 text form would halve them again.

On one machine the three nodes share 2 cores, so distribution buys no extra CPU here; the figures show what the split costs and that the traffic is bitmaps. With text keys, the distributed refresh finds new keys by an anti-join on each shard (32 small ones, in parallel over the nodes), where the local one makes one pass over the whole table and the dictionary, which is why it can come out ahead here. Live segments are refused on distributed tables (their capture triggers would run on the workers).
EOF
)
python3 - "$out" "$section" <<'EOF'
import re, sys
path, section = sys.argv[1], sys.argv[2].rstrip() + "\n"
try:
    text = open(path).read()
except FileNotFoundError:
    text = ""
begin, end = "<!-- citus: bench/citus.sh -->\n", "<!-- /citus -->\n"
block = begin + section + end
if begin in text and end in text:
    text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
else:
    text = text.rstrip() + "\n\n" + block
open(path, "w").write(text)
EOF
echo "$section"
