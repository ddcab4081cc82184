-- Registering entities and related tables, and the errors users meet.
CREATE EXTENSION segments;
CREATE TABLE shop_customers (id integer PRIMARY KEY, country text, age integer, vip boolean, joined date);
INSERT INTO shop_customers VALUES
  (1, 'DE', 34, true, '2020-05-01'), (2, 'FR', 19, false, '2021-11-01'),
  (3, NULL, NULL, NULL, NULL), (4, 'DE', 70, false, '1999-11-01');
CREATE TABLE shop_orders (id serial PRIMARY KEY, customer_id integer, amount numeric, at timestamptz);
INSERT INTO shop_orders (customer_id, amount, at) VALUES
  (1, 100, '2026-10-30'), (1, 450, '2026-10-15'), (2, 20, '2026-01-01'), (4, 999, '2026-10-31');

SELECT segments.register_entity('customer', 'shop_customers', 'id');
SELECT segments.register_related('customer', 'orders', 'shop_orders', 'customer_id', 'at');

-- Refusals, each with its SQLSTATE and the culprit named.
\set VERBOSITY sqlstate
SELECT segments.register_entity('customer', 'shop_customers', 'id');
SELECT segments.register_entity('Bad Name', 'shop_customers', 'id');
SELECT segments.register_entity('buyer', 'shop_customers', 'idd');
SELECT segments.register_entity('buyer', 'shop_customers', 'country', '{"attribute": "agee", "op": "is_null"}');
SELECT segments.register_related('nobody', 'orders', 'shop_orders', 'customer_id');
SELECT segments.register_related('customer', 'orders2', 'shop_orders', 'customer_id', 'amount');
\set VERBOSITY default
SELECT segments.register_entity('buyer', 'shop_customers', 'idd');
SELECT segments.register_related('customer', 'orders2', 'shop_orders', 'customer_id', 'amount');
SELECT name, key_column, key_kind, key_type FROM segments.entity ORDER BY name;

-- The typed members view: segment columns, then the entity's.
SELECT column_name, data_type FROM information_schema.columns
 WHERE table_schema = 'segments' AND table_name = 'customer_members' ORDER BY ordinal_position;

SET segments.reference_time = '2026-11-01';
SELECT segments.create_segment('Recent buyers', '{"entity": "customer", "rules": [
  {"where": {"related": "orders", "within": "30 days"}}]}');
SELECT segment_id, status, member_count FROM segments.refresh();
SELECT segment_name, id, country FROM segments.customer_members ORDER BY id;

-- An entity in use cannot be unregistered.
SELECT segments.unregister_entity('customer');
DELETE FROM segments.segment;
SELECT segments.unregister_entity('customer');
SELECT count(*) FROM segments.entity;
SELECT to_regclass('segments.customer_members');
DROP EXTENSION segments;
