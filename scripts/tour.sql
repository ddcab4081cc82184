-- A five-minute tour of segments on the sample data (run by scripts/demo.sh).
\set QUIET on
\pset footer off
\set QUIET off
\echo '== 1. Install the extension and tell it about your tables'
CREATE EXTENSION IF NOT EXISTS segments;
SET segments.reference_time = :'anchor';
SELECT segments.register_entity('customer', 'customers', 'id');
SELECT segments.register_related('customer', 'orders', 'orders', 'customer_id', 'ordered_at');
SELECT segments.register_related('customer', 'email_events', 'email_events', 'customer_id', 'occurred_at');

\echo '== 2. Segments: rules with conditions, combined left to right'
SELECT segments.create_segment('Big spenders in Germany', '{
  "entity": "customer",
  "rules": [
    {"name": "Germany", "where": {"attribute": "country", "op": "eq", "value": "DE"}},
    {"name": "Spent over 500 in 30 days", "combine": "intersect",
     "where": {"related": "orders", "aggregate": "sum", "attribute": "amount",
               "within": "30 days", "op": "gt", "value": 500}},
    {"name": "Unsubscribed", "combine": "except",
     "where": {"attribute": "unsubscribed", "op": "is_true"}}
  ]}', description => 'Campaign audience', tags => '{spring-2026}') AS big_spenders;
SELECT segments.quick_segment('Platinum', 'customer', 'loyalty_tier', 'eq', '"platinum"') AS platinum;
SELECT segments.create_segment('Engaged platinum', '{
  "entity": "customer",
  "rules": [
    {"where": {"segment": "Platinum"}},
    {"combine": "intersect",
     "where": {"related": "email_events", "aggregate": "count", "within": "90 days",
               "where": {"attribute": "event_type", "op": "in", "value": ["open", "click"]},
               "op": "gte", "value": 3}}
  ]}') AS engaged_platinum;

\echo '== 3. Refresh: one scan per entity serves every segment'
SELECT s.name, r.status, r.member_count, r.entered, r.exited, r.duration
  FROM segments.refresh() r JOIN segments.segment s ON s.id = r.segment_id ORDER BY s.id;

\echo '== 4. Rule by rule: members of each rule, and cumulative'
SELECT * FROM segments.rule_counts((SELECT id FROM segments.segment WHERE name = 'Big spenders in Germany'));

\echo '== 5. Simulate a definition before saving it'
SELECT * FROM segments.estimate('{"entity": "customer", "rules": [
  {"where": {"attribute": "age", "op": "between", "value": [25, 34]}},
  {"combine": "intersect", "where": {"related": "orders", "exists": false, "within": "90 days"}}]}');

\echo '== 6. Members, with every customer column (BI tools and CSV read this view)'
SELECT segment_name, id, first_name, last_name, country, lifetime_value
  FROM segments.customer_members WHERE segment_name = 'Big spenders in Germany'
 ORDER BY lifetime_value DESC LIMIT 5;

\echo '== 7. The SQL behind a segment'
\set QUIET on
\pset format unaligned
\pset tuples_only on
SELECT segments.explain((SELECT id FROM segments.segment WHERE name = 'Big spenders in Germany'));
