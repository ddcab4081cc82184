-- What a pg_upgrade must carry beyond tests/upgrade/before.sql: a text-keyed
-- entity, static and live segments, a members view with a grant, connected
-- records, definition history, and changes captured but not yet applied.
SET segments.reference_time = '2026-11-01';
SELECT segments.register_entity('by_code', 'customers', 'code');
SELECT segments.create_segment('Coded Germans', '{"entity":"by_code","rules":[{"where":{"attribute":"country","op":"eq","value":"DE"}}]}');
SELECT segments.create_segment('Picked', '{"entity":"customer","rules":[{"where":{"attribute":"age","op":"lt","value":25}}]}', type => 'static');
SELECT segments.create_segment('Berlin live', '{"entity":"customer","rules":[{"where":{"attribute":"city","op":"eq","value":"Berlin"}}]}', schedule => 'live');
SELECT count(*) FROM segments.refresh();
SELECT segments.connect_records(1, ARRAY['5', '6']);
DO $$ BEGIN CREATE ROLE bi_reader LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
GRANT SELECT ON segments.customer_members TO bi_reader;
UPDATE customers SET city = 'Berlin' WHERE id BETWEEN 1 AND 4;
