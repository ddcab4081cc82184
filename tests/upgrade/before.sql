-- Data made with an older version (psql variable old) that ALTER
-- EXTENSION segments UPDATE must keep:
-- entities, segments (one reading another), memberships, refresh history,
-- membership changes, usages, an export and a sequence with records.
CREATE EXTENSION segments VERSION :'old';
SET segments.reference_time = '2026-11-01';
SELECT segments.register_entity('customer', 'customers', 'id');
SELECT segments.register_related('customer', 'orders', 'orders', 'customer_id', 'ordered_at');
SELECT segments.create_segment('Germany', '{"entity":"customer","rules":[{"where":{"attribute":"country","op":"eq","value":"DE"}}]}');
SELECT segments.create_segment('Buyers', '{"entity":"customer","rules":[{"where":{"related":"orders","within":"90 days"}}]}');
SELECT segments.create_segment('German buyers', '{"entity":"customer","rules":[{"where":{"segment":"Germany"}},{"combine":"intersect","where":{"segment":"Buyers"}}]}');
SELECT count(*) FROM segments.refresh();
UPDATE segments.segment SET definition = '{"entity":"customer","rules":[{"where":{"attribute":"country","op":"in","value":["DE","AT"]}}]}' WHERE name = 'Germany';
SELECT count(*) FROM segments.refresh();
SELECT segments.add_usage(2, 'journey', 'Welcome journey');
SELECT segments.create_export('buyers_export', ARRAY[2::bigint], 'public.buyers_out');
SELECT segments.create_sequence('Welcome', 'customer');
SELECT segments.connect_sequence(1, ARRAY[3::bigint]);
