-- Managing segments: each function, its bulk form and its refusals.
\set SHOW_CONTEXT never
CREATE EXTENSION segments;
CREATE TABLE people (id bigint PRIMARY KEY, country text, age integer);
INSERT INTO people SELECT i, (ARRAY['DE','FR','ES'])[1 + i % 3], 18 + i % 50 FROM generate_series(1, 300) i;
SELECT segments.register_entity('person', 'people', 'id');

SELECT segments.quick_segment('Germans', 'person', 'country', 'eq', '"DE"') AS germans \gset
SELECT segments.create_segment('Young Germans', '{"entity": "person", "rules": [
  {"where": {"segment": "Germans"}},
  {"combine": "intersect", "where": {"attribute": "age", "op": "lt", "value": 30}}]}',
  description => 'for the spring campaign', tags => '{spring-2026}') AS young \gset
SELECT segments.create_segment('Seniors', '{"entity": "person", "rules": [
  {"where": {"attribute": "age", "op": "gte", "value": 60}}]}', type => 'static') AS seniors \gset
-- References are stored by id, so renaming never breaks them.
SELECT definition -> 'rules' -> 0 FROM segments.segment WHERE name = 'Young Germans';
SELECT s.name, u.kind, u.consumer, u.live FROM segments.usage u JOIN segments.segment s ON s.id = u.segment_id;

-- Refusals: SQLSTATE first, then the message that names the culprit.
\set VERBOSITY sqlstate
SELECT segments.create_segment('Germans', '{"entity": "person", "rules": [{"where": {"attribute": "age", "op": "is_null"}}]}');
SELECT segments.create_segment('X', '{"entity": "person", "rules": [{"where": {"attribute": "age", "op": "is_null"}}]}', type => 'sometimes');
SELECT segments.create_segment('X', '{"entity": "person", "rules": [{"where": {"attribute": "age", "op": "is_null"}}]}', schedule => 'hourly');
SELECT segments.set_schedule(ARRAY[:seniors]::bigint[], 'daily');
SELECT segments.rename(:young, 'Germans');
SELECT segments.activate(ARRAY[:germans, 424242, NULL]);
SELECT * FROM segments.delete(ARRAY[:germans]::bigint[]);
\set VERBOSITY default
SELECT segments.create_segment('X', '{"entity": "person", "rules": [{"where": {"attribute": "age", "op": "is_null"}}]}', schedule => 'hourly');
SELECT segments.set_schedule(ARRAY[:seniors]::bigint[], 'daily');
SELECT segments.activate(ARRAY[:germans, 424242, NULL]);
SELECT * FROM segments.delete(ARRAY[:germans]::bigint[]);
SELECT count(*) AS segments_still_there FROM segments.segment;

-- Schedules and types.
SELECT segments.set_schedule(ARRAY[:germans, :young]::bigint[], '0 6 * * 1');
SELECT segments.set_type(ARRAY[:seniors]::bigint[], 'dynamic');
SELECT segments.set_type(ARRAY[:young]::bigint[], 'static');
SELECT name, type, schedule FROM segments.segment ORDER BY id;

-- Renaming and duplicating.
SELECT segments.rename(:germans, 'Deutsche');
SELECT segments.duplicate(:young) IS NOT NULL, segments.duplicate(:young) IS NOT NULL, segments.duplicate(:young, 'Young copy') IS NOT NULL;
SELECT name, type, tags, description FROM segments.segment ORDER BY id;

-- Tags in bulk: each tag once, in order; untag keeps the rest in order.
SELECT segments.tag(array_agg(id), '{q3, spring-2026, q3}') FROM segments.segment;
SELECT segments.untag(ARRAY[:germans, :young]::bigint[], '{spring-2026}');
SELECT name, tags FROM segments.segment ORDER BY id;

-- Deactivating keeps definition and membership; activating removes AutoDeactivated.
SELECT count(*) FROM segments.refresh();
SELECT id AS copy1 FROM segments.segment WHERE name = 'Young Germans (copy)' \gset
SELECT id AS copy2 FROM segments.segment WHERE name = 'Young Germans (copy 2)' \gset
SELECT name, connected_sequences FROM segments.deactivate(ARRAY[:copy1, :copy2]::bigint[]);
UPDATE segments.segment SET tags = array_append(tags, 'AutoDeactivated') WHERE id = :copy1;
-- Inactive segments are skipped, their membership kept.
SELECT status FROM segments.refresh(ARRAY[:copy1]::bigint[]);
SELECT name, state, status, member_count FROM segments.segment WHERE id IN (:copy1, :copy2) ORDER BY id;
SELECT segments.activate(ARRAY[:copy1, :copy2, :germans]::bigint[]);
SELECT name, state, tags, needs_refresh FROM segments.segment WHERE id IN (:copy1, :copy2) ORDER BY id;

-- The active-segment limit: a warning from 90%, an error past it.
SET segments.max_active_segments = 7;
SELECT segments.quick_segment('Seventh', 'person', 'age', 'eq', '20') IS NOT NULL AS created;
SELECT segments.quick_segment('Eighth', 'person', 'age', 'eq', '21');
SELECT count(*) FILTER (WHERE state = 'active') AS active FROM segments.segment;
RESET segments.max_active_segments;

-- never_expire is for admins; the superuser running this is one.
SELECT segments.disable_auto_cleanup(ARRAY[:germans, :young]::bigint[]), segments.enable_auto_cleanup(ARRAY[:young]::bigint[]);
SELECT name, never_expire FROM segments.segment WHERE id IN (:germans, :young) ORDER BY id;

-- The list people see.
SELECT name, state, type, schedule, usage_count, next_refresh_at IS NOT NULL AS scheduled
  FROM segments.segment_list ORDER BY id;

-- Deleting a segment together with its dependents works; history and usages go too.
SELECT name FROM segments.delete((SELECT array_agg(id) FROM segments.segment WHERE name LIKE 'Young%' OR id = :germans)) ORDER BY name;
SELECT count(*) AS runs_left FROM segments.refresh_run r WHERE NOT EXISTS (SELECT FROM segments.segment s WHERE s.id = r.segment_id);
SELECT count(*) AS usages_left FROM segments.usage_registry;
SELECT name FROM segments.segment ORDER BY id;
DROP EXTENSION segments CASCADE;
