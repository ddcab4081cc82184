-- segments 0.1.0 -> 0.2.0 (ALTER EXTENSION segments UPDATE TO '0.2.0').
-- Keeps every segment, membership and history row; leaves a schema equal
-- to a fresh 0.2.0 install (checked by scripts/upgrade_test.sh). How a
-- version adds its script: README, "Upgrading".
\echo Use "ALTER EXTENSION segments UPDATE TO '0.2.0'" to load this file. \quit

-- ---- prologue: what CREATE OR REPLACE cannot do -----------------------------

-- Functions whose arguments or language changed.
DROP FUNCTION segments._require_sequence(bigint);
DROP FUNCTION segments._check_definition(jsonb, bigint);
DROP FUNCTION segments.estimate(jsonb);
DROP FUNCTION segments.deactivate(bigint[]);
DROP FUNCTION segments.delete(bigint[]);
DROP FUNCTION segments.trend(bigint, timestamptz);
DROP FUNCTION segments.similarity(bigint);
DROP FUNCTION segments.find_similar(bigint, text, bigint, integer, boolean);

-- rb_agg's state is a bytea (an expanded object changed in place) instead
-- of internal, so that Citus splits it between shards and coordinator.
DROP AGGREGATE segments.rb_agg(bigint);
DROP FUNCTION segments.rb_agg_step(internal, bigint);
DROP FUNCTION segments.rb_agg_combine(internal, internal);
DROP FUNCTION segments.rb_agg_serialize(internal);
DROP FUNCTION segments.rb_agg_deserialize(bytea, internal);
DROP FUNCTION segments.rb_agg_final(internal);

-- Sequences belong to the role that created them; those made by 0.1.0
-- go to the extension's owner (admins manage them).
ALTER TABLE segments.sequence ADD COLUMN owner regrole;
UPDATE segments.sequence
   SET owner = (SELECT n.nspowner::regrole FROM pg_catalog.pg_namespace n WHERE n.nspname = 'segments');
ALTER TABLE segments.sequence ADD COLUMN state text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'inactive'));
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'segments_sequence_manager') THEN
        CREATE ROLE segments_sequence_manager NOLOGIN;
    END IF;
END
$$;
GRANT segments_reader TO segments_sequence_manager;
GRANT segments_sequence_manager TO segments_admin;

-- Failure counts (worker backoff) and export outcomes.
ALTER TABLE segments.segment ADD COLUMN consecutive_failures integer NOT NULL DEFAULT 0;
ALTER TABLE segments.export
    ADD COLUMN status text NOT NULL DEFAULT 'not_written' CHECK (status IN ('not_written', 'succeeded', 'failed')),
    ADD COLUMN last_error text,
    ADD COLUMN last_written_at timestamptz;

-- Live segments: the 'live' trigger of runs, keys examined, the queue.
ALTER TABLE segments.refresh_run DROP CONSTRAINT refresh_run_trigger_check;
ALTER TABLE segments.refresh_run ADD CONSTRAINT refresh_run_trigger_check
    CHECK (trigger IN ('manual', 'schedule', 'system', 'live'));
ALTER TABLE segments.refresh_run ADD COLUMN keys_examined bigint;
ALTER TABLE segments.refresh_run ADD COLUMN error_code text;
-- A change row's segment is its run's: the run's foreign key cascades, so
-- the second check per row (a tenth of a live apply) goes.
ALTER TABLE segments.membership_change DROP CONSTRAINT membership_change_segment_id_fkey;
-- Usage kinds: a table instead of a CHECK list repeated in _check_usage_kind.
CREATE TABLE segments.usage_kind (
    kind                 text PRIMARY KEY,
    recorded_by_segments boolean NOT NULL
);
INSERT INTO segments.usage_kind (kind, recorded_by_segments) VALUES
    ('segment', true), ('export', true), ('sequence', true),
    ('measure', false), ('journey', false), ('campaign', false),
    ('test_list', false), ('message', false), ('analytics', false);
ALTER TABLE segments.usage_registry DROP CONSTRAINT usage_registry_kind_check,
    ADD CONSTRAINT usage_registry_kind_fkey FOREIGN KEY (kind) REFERENCES segments.usage_kind (kind);
CREATE TABLE segments.change_queue (
    entity    text NOT NULL,
    key       text,
    queued_at timestamptz NOT NULL DEFAULT now(),
    source    text,
    image     bytea
);
CREATE TABLE segments.related_state (
    owner       oid NOT NULL,
    entity      text NOT NULL,
    leaf        text NOT NULL,
    matching    bytea NOT NULL,
    with_rows   bytea,
    computed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, entity, leaf)
);

-- Definition history and persistent limits.
CREATE TABLE segments.definition_version (
    segment_id bigint NOT NULL REFERENCES segments.segment (id) ON DELETE CASCADE,
    version    integer NOT NULL,
    name       text NOT NULL,
    definition jsonb NOT NULL,
    type       text NOT NULL,
    schedule   text,
    changed_by regrole,
    changed_at timestamptz NOT NULL,
    PRIMARY KEY (segment_id, version)
);
SELECT pg_catalog.pg_extension_config_dump('segments.definition_version', '');
-- Each segment's history starts with what it is now.
INSERT INTO segments.definition_version (segment_id, version, name, definition, type, schedule, changed_by, changed_at)
SELECT s.id, 1, s.name, s.definition, s.type, s.schedule, s.updated_by, s.updated_at FROM segments.segment s;
CREATE TABLE segments.limits (
    singleton           boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    max_active_segments integer CHECK (max_active_segments > 0)
);
SELECT pg_catalog.pg_extension_config_dump('segments.limits', '');

-- BEGIN GENERATED FUNCTIONS (scripts/upgrade_functions.py)
CREATE OR REPLACE FUNCTION segments._active_limit() RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN coalesce((SELECT s.source FROM pg_catalog.pg_settings s
                                WHERE s.name = 'segments.max_active_segments'), 'default') <> 'default'
                THEN current_setting('segments.max_active_segments')::bigint
                ELSE coalesce((SELECT l.max_active_segments FROM segments.limits l),
                              segments._setting('segments.max_active_segments')::bigint) END
$$;

CREATE OR REPLACE FUNCTION segments._add_to_export(caller regrole, export text, segments bigint[]) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found segments.export;
    added bigint[];
    wrong text;
BEGIN
    SELECT * INTO found FROM segments.export e WHERE e.name = _add_to_export.export FOR UPDATE;
    IF found.id IS NULL THEN
        RAISE EXCEPTION 'export "%" does not exist', _add_to_export.export USING ERRCODE = 'undefined_object';
    END IF;
    IF NOT pg_has_role(caller::oid, found.owner::oid, 'MEMBER') AND NOT pg_has_role(caller::oid, 'segments_admin', 'MEMBER') THEN
        RAISE EXCEPTION 'permission denied for export "%": it is owned by %', found.name, found.owner
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM segments._require_segments(_add_to_export.segments);
    SELECT string_agg(format('segment "%s" is of entity "%s"', s.name, s.entity), ', ') INTO wrong
      FROM segments.segment s WHERE s.id = ANY (_add_to_export.segments) AND s.entity <> found.entity;
    IF wrong IS NOT NULL THEN
        RAISE EXCEPTION 'export "%" is of entity "%": %', found.name, found.entity, wrong USING ERRCODE = 'invalid_parameter_value';
    END IF;
    added := ARRAY(SELECT DISTINCT s FROM unnest(coalesce(_add_to_export.segments, '{}')) s
                    WHERE s IS NOT NULL AND NOT s = ANY (found.segments) ORDER BY 1);
    IF cardinality(added) = 0 THEN
        RETURN 0;
    END IF;
    UPDATE segments.export e SET segments = ARRAY(SELECT DISTINCT x FROM unnest(e.segments || added) x ORDER BY 1)
     WHERE e.id = found.id;
    INSERT INTO segments.usage_registry (segment_id, kind, consumer)
    SELECT s, 'export', found.name FROM unnest(added) s ON CONFLICT ON CONSTRAINT usage_registry_pkey DO NOTHING;
    PERFORM segments._rewrite_export(found.id);
    RETURN cardinality(added);
END
$$;

CREATE OR REPLACE FUNCTION segments._add_usage(segment bigint, kind text, consumer text, live boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM segments._require_segments(ARRAY[_add_usage.segment]);
    PERFORM segments._check_usage_kind(_add_usage.kind);
    IF consumer IS NULL OR btrim(consumer) = '' THEN
        RAISE EXCEPTION 'a usage needs a consumer' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO segments.usage_registry (segment_id, kind, consumer, live)
    VALUES (_add_usage.segment, _add_usage.kind, _add_usage.consumer, coalesce(_add_usage.live, true))
    ON CONFLICT ON CONSTRAINT usage_registry_pkey DO UPDATE SET live = EXCLUDED.live;
END
$$;

CREATE OR REPLACE FUNCTION segments."_apply_changes"() RETURNS bigint[] /* Vec < i64 > */
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_apply_changes_wrapper';

CREATE OR REPLACE FUNCTION segments."_can_read_entity"(
	"entity" TEXT /* & str */
) RETURNS bool /* bool */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_can_read_entity_wrapper';

CREATE OR REPLACE FUNCTION segments."_canonical_keys"(
	"entity" TEXT, /* & str */
	"keys" TEXT[] /* Vec < String > */
) RETURNS TEXT[] /* Vec < String > */
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_canonical_keys_wrapper';

CREATE OR REPLACE FUNCTION segments._capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        INSERT INTO segments.change_queue (entity, key, source) VALUES (TG_ARGV[0], NULL, nullif(TG_ARGV[2], ''));
    ELSIF TG_OP = 'INSERT' THEN
        EXECUTE format('INSERT INTO segments.change_queue (entity, key, source)
                        SELECT DISTINCT %L, n.%I::text, %L FROM segments_new n WHERE n.%I IS NOT NULL',
                       TG_ARGV[0], TG_ARGV[1], nullif(TG_ARGV[2], ''), TG_ARGV[1]);
    ELSIF TG_OP = 'DELETE' THEN
        EXECUTE format('INSERT INTO segments.change_queue (entity, key, source)
                        SELECT DISTINCT %L, o.%I::text, %L FROM segments_old o WHERE o.%I IS NOT NULL',
                       TG_ARGV[0], TG_ARGV[1], nullif(TG_ARGV[2], ''), TG_ARGV[1]);
    ELSE
        EXECUTE format('INSERT INTO segments.change_queue (entity, key, source)
                        SELECT %L, k, %L FROM (SELECT n.%I::text AS k FROM segments_new n
                                               UNION SELECT o.%I::text FROM segments_old o) c WHERE k IS NOT NULL',
                       TG_ARGV[0], nullif(TG_ARGV[2], ''), TG_ARGV[1], TG_ARGV[1]);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION segments._capture_row() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', '_capture_row_wrapper';

CREATE OR REPLACE FUNCTION segments._check_active_limit(activated bigint) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cap bigint := segments._active_limit();
    active bigint;
BEGIN
    IF activated = 0 THEN
        RETURN;
    END IF;
    SELECT count(*) INTO active FROM segments.segment WHERE state = 'active';
    IF active > cap THEN
        RAISE EXCEPTION 'this would make % segments active, more than segments.max_active_segments (%)', active, cap
            USING ERRCODE = 'program_limit_exceeded',
                  HINT = 'Deactivate or delete segments that are no longer needed.';
    ELSIF active >= ceil(cap * 0.9) THEN
        RAISE WARNING '% segments are active, % of segments.max_active_segments (%)',
            active, round(100.0 * active / cap) || '%', cap;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION segments."_check_definition"(
	"definition" TEXT, /* & str */
	"segment_id" bigint /* Option < i64 > */
) RETURNS jsonb /* JsonB */

LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_check_definition_wrapper';

CREATE OR REPLACE FUNCTION segments."_check_schedule"(
	"name" TEXT, /* & str */
	"schedule" TEXT, /* Option < & str > */
	"dynamic" bool /* bool */
) RETURNS void
STABLE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_check_schedule_wrapper';

CREATE OR REPLACE FUNCTION segments._check_usage_kind(kind text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    internal boolean := (SELECT k.recorded_by_segments FROM segments.usage_kind k WHERE k.kind = _check_usage_kind.kind);
BEGIN
    IF internal IS NULL THEN
        RAISE EXCEPTION 'usage kind "%" is not one of %', kind,
                        (SELECT string_agg(k.kind, ', ' ORDER BY k.kind) FROM segments.usage_kind k)
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF internal THEN
        RAISE EXCEPTION 'usages of kind "%" are recorded by segments itself; change the segment, export or sequence instead', kind
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION segments."_connect_members"(
	"segments" bigint[] /* Vec < i64 > */
) RETURNS void
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_connect_members_wrapper';

CREATE OR REPLACE FUNCTION segments._connect_records(caller regrole, sequence bigint, keys text[]) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target segments.sequence := segments._require_sequence(_connect_records.sequence, caller);
    missing text;
    taken text;
    added integer;
BEGIN
    IF keys IS NULL THEN
        RAISE EXCEPTION 'the list of keys must not be NULL' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    missing := segments._missing_keys(target.entity, keys);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'no record of entity "%" has key %', target.entity, missing
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT string_agg(format('%s (sequence "%s")', r.key, q.name), ', ' ORDER BY r.key) INTO taken
      FROM segments.sequence_record r JOIN segments.sequence q ON q.id = r.sequence_id
     WHERE r.entity = target.entity AND r.key = ANY (segments._canonical_keys(target.entity, keys))
       AND r.sequence_id <> target.id;
    IF taken IS NOT NULL THEN
        RAISE EXCEPTION 'a record is connected to one sequence at a time: % already connected', taken
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    INSERT INTO segments.sequence_record (entity, key, sequence_id)
    SELECT DISTINCT target.entity, k, target.id FROM unnest(segments._canonical_keys(target.entity, keys)) AS k
    ON CONFLICT ON CONSTRAINT sequence_record_pkey DO NOTHING;
    GET DIAGNOSTICS added = ROW_COUNT;
    RETURN added;
END
$$;

CREATE OR REPLACE FUNCTION segments._connect_sequence(caller regrole, sequence bigint, segments bigint[]) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target segments.sequence := segments._require_sequence(_connect_sequence.sequence, caller);
    conflict text;
    connected bigint[];
BEGIN
    PERFORM segments._require_segments(_connect_sequence.segments);
    PERFORM segments._require_segments_changeable(_connect_sequence.segments, caller);
    SELECT string_agg(format('segment "%s" is of entity "%s"', s.name, s.entity), ', ') INTO conflict
      FROM segments.segment s WHERE s.id = ANY (_connect_sequence.segments) AND s.entity <> target.entity;
    IF conflict IS NOT NULL THEN
        RAISE EXCEPTION 'sequence "%" is for entity "%": %', target.name, target.entity, conflict
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT string_agg(format('segment "%s" is already connected to sequence "%s"', s.name, q.name), ', ') INTO conflict
      FROM segments.sequence_segment c
      JOIN segments.segment s ON s.id = c.segment_id
      JOIN segments.sequence q ON q.id = c.sequence_id
     WHERE c.segment_id = ANY (_connect_sequence.segments) AND c.sequence_id <> target.id;
    IF conflict IS NOT NULL THEN
        RAISE EXCEPTION 'a segment connects to at most one sequence: %', conflict
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Disconnect it from its sequence first.';
    END IF;
    WITH added AS (
        INSERT INTO segments.sequence_segment (segment_id, sequence_id)
        SELECT DISTINCT s, target.id FROM unnest(_connect_sequence.segments) AS s
        ON CONFLICT ON CONSTRAINT sequence_segment_pkey DO NOTHING
        RETURNING segment_id)
    SELECT coalesce(array_agg(segment_id), '{}') INTO connected FROM added;
    INSERT INTO segments.usage_registry (segment_id, kind, consumer)
    SELECT s, 'sequence', target.name FROM unnest(connected) AS s
    ON CONFLICT ON CONSTRAINT usage_registry_pkey DO NOTHING;
    PERFORM segments._connect_members(connected);
    RETURN cardinality(connected);
END
$$;

CREATE OR REPLACE FUNCTION segments._connected_sequences(segment_id bigint) RETURNS text[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(array_agg(q.name ORDER BY q.name), '{}')
      FROM segments.sequence_segment c JOIN segments.sequence q ON q.id = c.sequence_id
     WHERE c.segment_id = _connected_sequences.segment_id
$$;

CREATE OR REPLACE FUNCTION segments._create_export(caller regrole, name text, segments bigint[], target text) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    entities text[];
    new_id bigint;
    target_name text[];
BEGIN
    PERFORM segments._require_segments(_create_export.segments);
    IF cardinality(_create_export.segments) = 0 THEN
        RAISE EXCEPTION 'export "%" needs at least one segment', _create_export.name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT FROM segments.export e WHERE e.name = _create_export.name) THEN
        RAISE EXCEPTION 'an export named "%" already exists', _create_export.name USING ERRCODE = 'duplicate_object';
    END IF;
    entities := ARRAY(SELECT DISTINCT s.entity FROM segments.segment s WHERE s.id = ANY (_create_export.segments));
    IF cardinality(entities) > 1 THEN
        RAISE EXCEPTION 'the segments of export "%" group different entities: %', _create_export.name,
            array_to_string(entities, ', ') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    target_name := parse_ident(_create_export.target);
    IF NOT has_schema_privilege(caller::oid, target_name[1], 'CREATE') THEN
        RAISE EXCEPTION 'permission denied for schema %: an export creates its target table as %, who needs CREATE there',
            quote_ident(target_name[1]), caller
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF to_regclass(_create_export.target) IS NOT NULL THEN
        RAISE EXCEPTION 'table % already exists; an export creates its own target table', _create_export.target
            USING ERRCODE = 'duplicate_table';
    END IF;
    -- The target has the members view's columns: segment_id, segment_name, then the entity's.
    EXECUTE format('CREATE TABLE %s AS SELECT * FROM segments.%I WITH NO DATA',
                   array_to_string(ARRAY(SELECT quote_ident(p) FROM unnest(target_name) p), '.'),
                   entities[1] || '_members');
    -- Owned by its creator, with no privileges for anyone else until the
    -- owner grants them.
    EXECUTE format('ALTER TABLE %s OWNER TO %s', _create_export.target, caller);
    INSERT INTO segments.export (name, entity, segments, target, owner)
    VALUES (_create_export.name, entities[1], ARRAY(SELECT DISTINCT unnest(_create_export.segments) ORDER BY 1),
            _create_export.target::regclass, caller)
    RETURNING id INTO new_id;
    INSERT INTO segments.usage_registry (segment_id, kind, consumer)
    SELECT DISTINCT s, 'export', _create_export.name FROM unnest(_create_export.segments) s;
    PERFORM segments._rewrite_export(new_id);
    RETURN new_id;
END
$$;

CREATE OR REPLACE FUNCTION segments._create_sequence(caller regrole, name text, entity text) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id bigint;
BEGIN
    IF NOT EXISTS (SELECT FROM segments.entity e WHERE e.name = _create_sequence.entity) THEN
        RAISE EXCEPTION 'entity "%" is not registered', _create_sequence.entity USING ERRCODE = 'undefined_table';
    END IF;
    IF _create_sequence.name IS NULL OR btrim(_create_sequence.name) = '' THEN
        RAISE EXCEPTION 'a sequence needs a name' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT FROM segments.sequence q WHERE q.name = _create_sequence.name) THEN
        RAISE EXCEPTION 'a sequence named "%" already exists', _create_sequence.name USING ERRCODE = 'duplicate_object';
    END IF;
    INSERT INTO segments.sequence (name, entity, owner) VALUES (_create_sequence.name, _create_sequence.entity, caller)
    RETURNING id INTO new_id;
    RETURN new_id;
END
$$;

CREATE OR REPLACE FUNCTION segments._dependent_list(segment_id bigint, only_active boolean DEFAULT false) RETURNS text[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(array_agg(d ORDER BY d), '{}')
      FROM (SELECT CASE u.kind WHEN 'segment' THEN format('segment "%s"', c.name)
                               ELSE format('%s "%s"', u.kind, u.consumer) END AS d
              FROM segments.usage_registry u
              LEFT JOIN segments.segment c ON u.kind = 'segment' AND c.id::text = u.consumer
             WHERE u.segment_id = _dependent_list.segment_id
               AND u.live AND u.kind <> 'sequence'
               AND (u.kind <> 'segment' OR (c.id IS NOT NULL AND (NOT only_active OR c.state = 'active')))) x
$$;

CREATE OR REPLACE FUNCTION segments._dependents(segment_id bigint) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT string_agg(
               CASE u.kind WHEN 'segment' THEN format('segment "%s"', c.name)
                           ELSE format('%s "%s"', u.kind, u.consumer) END,
               ', ' ORDER BY u.kind, u.consumer)
      FROM segments.usage_registry u
      LEFT JOIN segments.segment c ON u.kind = 'segment' AND c.id::text = u.consumer
     WHERE u.segment_id = _dependents.segment_id
       AND u.live AND u.kind <> 'sequence'
       AND (u.kind <> 'segment' OR c.id IS NOT NULL)
$$;

CREATE OR REPLACE FUNCTION segments._disconnect_records(caller regrole, sequence bigint, keys text[]) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target segments.sequence := segments._require_sequence(_disconnect_records.sequence, caller);
    removed integer;
BEGIN
    DELETE FROM segments.sequence_record r
     WHERE r.sequence_id = target.id AND r.key = ANY (segments._canonical_keys(target.entity, coalesce(keys, '{}')));
    GET DIAGNOSTICS removed = ROW_COUNT;
    RETURN removed;
END
$$;

CREATE OR REPLACE FUNCTION segments._disconnect_sequence(caller regrole, sequence bigint, segments bigint[]) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target segments.sequence := segments._require_sequence(_disconnect_sequence.sequence, caller);
    removed integer;
BEGIN
    PERFORM segments._require_segments(_disconnect_sequence.segments);
    DELETE FROM segments.sequence_segment c
     WHERE c.sequence_id = target.id AND c.segment_id = ANY (_disconnect_sequence.segments);
    GET DIAGNOSTICS removed = ROW_COUNT;
    DELETE FROM segments.usage_registry u
     WHERE u.kind = 'sequence' AND u.consumer = target.name AND u.segment_id = ANY (_disconnect_sequence.segments);
    RETURN removed;
END
$$;

CREATE OR REPLACE FUNCTION segments._drop_export(caller regrole, name text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found segments.export;
    target_sql text;
BEGIN
    SELECT * INTO found FROM segments.export e WHERE e.name = _drop_export.name FOR UPDATE;
    IF found.id IS NULL THEN
        RAISE EXCEPTION 'export "%" does not exist', _drop_export.name USING ERRCODE = 'undefined_object';
    END IF;
    IF NOT pg_has_role(caller::oid, found.owner::oid, 'MEMBER') AND NOT pg_has_role(caller::oid, 'segments_admin', 'MEMBER') THEN
        RAISE EXCEPTION 'permission denied for export "%": it is owned by %', found.name, found.owner
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    DELETE FROM segments.export e WHERE e.id = found.id;
    DELETE FROM segments.usage_registry u WHERE u.kind = 'export' AND u.consumer = found.name;
    -- The target may be gone already (dropped by its owner).
    SELECT format('%I.%I', n.nspname, c.relname) INTO target_sql
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = found.target::oid;
    IF target_sql IS NOT NULL THEN
        EXECUTE format('DROP TABLE IF EXISTS %s', target_sql);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION segments._drop_sequence(caller regrole, sequence bigint) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target segments.sequence := segments._require_sequence(_drop_sequence.sequence, caller);
BEGIN
    DELETE FROM segments.usage_registry u WHERE u.kind = 'sequence' AND u.consumer = target.name;
    DELETE FROM segments.sequence q WHERE q.id = target.id;  -- connections and records cascade
END
$$;

CREATE OR REPLACE FUNCTION segments."_estimate"(
	"definition" TEXT /* & str */
) RETURNS TABLE (
	"path" TEXT,  /* String */
	"name" TEXT,  /* Option < String > */
	"combine" TEXT,  /* Option < String > */
	"members" bigint,  /* Option < i64 > */
	"cumulative" bigint  /* Option < i64 > */
)
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_estimate_wrapper';

CREATE OR REPLACE FUNCTION segments."_explain_member"(
	"segment" bigint, /* i64 */
	"key" TEXT /* & str */
) RETURNS TABLE (
	"path" TEXT,  /* String */
	"name" TEXT,  /* Option < String > */
	"condition" jsonb,  /* Option < JsonB > */
	"matches" bool,  /* bool */
	"value" TEXT  /* Option < String > */
)
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_explain_member_wrapper';

CREATE OR REPLACE FUNCTION segments."_internal_write"() RETURNS bool /* bool */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_internal_write_wrapper';

CREATE OR REPLACE FUNCTION segments._is_admin() RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.pg_has_role(current_user, 'segments_admin', 'MEMBER')
        OR coalesce((SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user), false)
$$;

CREATE OR REPLACE FUNCTION segments."_is_member"(
	"segment" bigint, /* i64 */
	"key" TEXT /* & str */
) RETURNS bool /* bool */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_is_member_wrapper';

CREATE OR REPLACE FUNCTION segments._may_change(owner regrole) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.pg_has_role(current_user, owner::oid, 'MEMBER') OR segments._is_admin()
$$;

CREATE OR REPLACE FUNCTION segments._members_view_release() RETURNS event_trigger
LANGUAGE c AS 'MODULE_PATHNAME', '_members_view_release_wrapper';

CREATE OR REPLACE FUNCTION segments._members_view_restore() RETURNS event_trigger
LANGUAGE c AS 'MODULE_PATHNAME', '_members_view_restore_wrapper';

CREATE OR REPLACE FUNCTION segments."_missing_keys"(
	"entity" TEXT, /* & str */
	"keys" TEXT[] /* Vec < String > */
) RETURNS TEXT /* Option < String > */
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_missing_keys_wrapper';

CREATE OR REPLACE FUNCTION segments."_next_refresh_epoch"(
	"r#type" TEXT, /* & str */
	"state" TEXT, /* & str */
	"schedule" TEXT, /* Option < & str > */
	"last_refreshed" double precision, /* Option < f64 > */
	"created" double precision, /* f64 */
	"needs_refresh" bool /* bool */
) RETURNS double precision /* Option < f64 > */
STABLE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_next_refresh_epoch_wrapper';

CREATE OR REPLACE FUNCTION segments._referenced_segments(definition jsonb) RETURNS SETOF bigint
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT DISTINCT (v #>> '{}')::bigint
      FROM jsonb_path_query(definition, '$.**.segment') AS v
     WHERE jsonb_typeof(v) = 'number'
$$;

CREATE OR REPLACE FUNCTION segments."_remake_members_views"() RETURNS void
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_remake_members_views_wrapper';

CREATE OR REPLACE FUNCTION segments._remove_from_export(caller regrole, export text, segments bigint[]) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found segments.export;
    removed bigint[];
BEGIN
    SELECT * INTO found FROM segments.export e WHERE e.name = _remove_from_export.export FOR UPDATE;
    IF found.id IS NULL THEN
        RAISE EXCEPTION 'export "%" does not exist', _remove_from_export.export USING ERRCODE = 'undefined_object';
    END IF;
    IF NOT pg_has_role(caller::oid, found.owner::oid, 'MEMBER') AND NOT pg_has_role(caller::oid, 'segments_admin', 'MEMBER') THEN
        RAISE EXCEPTION 'permission denied for export "%": it is owned by %', found.name, found.owner
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    removed := ARRAY(SELECT s FROM unnest(found.segments) s WHERE s = ANY (coalesce(_remove_from_export.segments, '{}')));
    IF cardinality(removed) = 0 THEN
        RETURN 0;
    END IF;
    IF cardinality(removed) = cardinality(found.segments) THEN
        RAISE EXCEPTION 'export "%" would have no segment left', found.name
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Drop the export with segments.drop_export() instead.';
    END IF;
    UPDATE segments.export e SET segments = ARRAY(SELECT x FROM unnest(e.segments) x WHERE NOT x = ANY (removed) ORDER BY 1)
     WHERE e.id = found.id;
    DELETE FROM segments.usage_registry u WHERE u.kind = 'export' AND u.consumer = found.name AND u.segment_id = ANY (removed);
    PERFORM segments._rewrite_export(found.id);
    RETURN cardinality(removed);
END
$$;

CREATE OR REPLACE FUNCTION segments._remove_usage(segment bigint, kind text, consumer text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM segments._require_segments(ARRAY[_remove_usage.segment]);
    PERFORM segments._check_usage_kind(_remove_usage.kind);
    DELETE FROM segments.usage_registry u
     WHERE u.segment_id = _remove_usage.segment AND u.kind = _remove_usage.kind AND u.consumer = _remove_usage.consumer;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'segment % has no usage of kind "%" by "%"', segment, kind, consumer
            USING ERRCODE = 'undefined_object';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION segments._require_may_change(what text, name text, owner regrole) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT segments._may_change(owner) THEN
        RAISE EXCEPTION 'permission denied for % "%": it is owned by %, and only its owner, a member of that role, segments_admin or a superuser may change it',
            what, name, owner
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION segments._require_segments(ids bigint[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    missing text;
BEGIN
    IF ids IS NULL THEN
        RETURN;
    END IF;
    SELECT string_agg(coalesce(i::text, 'NULL'), ', ' ORDER BY i) INTO missing
      FROM unnest(ids) AS i
     WHERE i IS NULL OR NOT EXISTS (SELECT FROM segments.segment s WHERE s.id = i);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'segment % does not exist', missing USING ERRCODE = 'undefined_object';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION segments._require_segments_changeable(ids bigint[], caller regrole) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    refused text;
BEGIN
    SELECT string_agg(format('segment "%s" (owned by %s)', s.name, s.owner), ', ' ORDER BY s.id) INTO refused
      FROM segments.segment s
     WHERE s.id = ANY (ids)
       AND NOT pg_has_role(caller::oid, s.owner::oid, 'MEMBER')
       AND NOT pg_has_role(caller::oid, 'segments_admin', 'MEMBER');
    IF refused IS NOT NULL THEN
        RAISE EXCEPTION 'permission denied for %', refused USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION segments._require_sequence(sequence bigint, caller regrole) RETURNS segments.sequence
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found segments.sequence;
BEGIN
    SELECT * INTO found FROM segments.sequence q WHERE q.id = _require_sequence.sequence;
    IF found.id IS NULL THEN
        RAISE EXCEPTION 'sequence % does not exist', coalesce(sequence::text, 'NULL') USING ERRCODE = 'undefined_object';
    END IF;
    IF NOT pg_has_role(caller::oid, found.owner::oid, 'MEMBER') AND NOT pg_has_role(caller::oid, 'segments_admin', 'MEMBER') THEN
        RAISE EXCEPTION 'permission denied for sequence "%": it is owned by %', found.name, found.owner
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN found;
END
$$;

CREATE OR REPLACE FUNCTION segments."_rewrite_export"(
	"export" bigint /* i64 */
) RETURNS void
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_rewrite_export_wrapper';

CREATE OR REPLACE FUNCTION segments."_run_due"() RETURNS bigint[] /* Vec < i64 > */
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_run_due_wrapper';

CREATE OR REPLACE FUNCTION segments._segment_after_insert() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM segments._check_active_limit((SELECT count(*) FROM new_rows WHERE state = 'active'));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION segments._segment_after_update() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM segments._check_active_limit((
        SELECT count(*) FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.state = 'active' AND o.state = 'inactive'));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION segments._segment_before_delete() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    dependents text := segments._dependents(OLD.id);
BEGIN
    IF NOT segments._internal_write() THEN
        PERFORM segments._require_may_change('segment', OLD.name, OLD.owner);
    END IF;
    IF dependents IS NOT NULL THEN
        RAISE EXCEPTION 'segment "%" cannot be deleted: it is used by %', OLD.name, dependents
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = 'Change or delete the dependents first.';
    END IF;
    RETURN OLD;
END
$$;

CREATE OR REPLACE FUNCTION segments._segment_before_write() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- The extension's own writes (refresh results, set_owner) may set the
    -- columns it maintains; a user's DML never does.
    internal boolean := segments._internal_write();
    restoring boolean := TG_OP = 'INSERT' AND NOT internal
        AND coalesce((SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user), false);
BEGIN
    IF TG_OP = 'UPDATE' AND NOT internal THEN
        PERFORM segments._require_may_change('segment', OLD.name, OLD.owner);
        IF NEW.owner IS DISTINCT FROM OLD.owner THEN
            RAISE EXCEPTION 'column owner of segment "%" is maintained by segments; use segments.set_owner()', OLD.name
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF (NEW.status, NEW.member_count, NEW.last_refreshed_at, NEW.last_error, NEW.rule_counts,
            NEW.needs_refresh, NEW.created_at, NEW.updated_at, NEW.updated_by, NEW.id, NEW.consecutive_failures)
           IS DISTINCT FROM
           (OLD.status, OLD.member_count, OLD.last_refreshed_at, OLD.last_error, OLD.rule_counts,
            OLD.needs_refresh, OLD.created_at, OLD.updated_at, OLD.updated_by, OLD.id, OLD.consecutive_failures) THEN
            RAISE EXCEPTION 'segment "%": id, status, member_count, last_refreshed_at, last_error, rule_counts, needs_refresh, created_at, updated_at, updated_by and consecutive_failures are maintained by segments and cannot be set',
                OLD.name
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    END IF;
    IF TG_OP = 'INSERT' AND NOT internal AND NOT restoring THEN
        -- A new segment belongs to its creator and starts unrefreshed,
        -- whatever the row names. (A superuser's INSERT is a restore, e.g.
        -- pg_restore, and keeps the values it brings.)
        NEW.owner := quote_ident(current_user)::regrole;
        NEW.status := 'not_refreshed';
        NEW.member_count := NULL;
        NEW.last_refreshed_at := NULL;
        NEW.last_error := NULL;
        NEW.rule_counts := NULL;
        NEW.needs_refresh := true;
        NEW.created_at := now();
        NEW.updated_at := now();
        NEW.updated_by := quote_ident(current_user)::regrole;
        NEW.consecutive_failures := 0;
    END IF;

    IF NEW.type IS NULL OR NEW.type NOT IN ('static', 'dynamic') THEN
        RAISE EXCEPTION 'segment "%": type "%" is not static or dynamic', NEW.name, NEW.type
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NEW.state IS NULL OR NEW.state NOT IN ('active', 'inactive') THEN
        RAISE EXCEPTION 'segment "%": state "%" is not active or inactive', NEW.name, NEW.state
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (TG_OP = 'INSERT' OR NEW.name IS DISTINCT FROM OLD.name)
       AND EXISTS (SELECT FROM segments.segment s WHERE s.name = NEW.name AND s.id <> NEW.id) THEN
        RAISE EXCEPTION 'a segment named "%" already exists', NEW.name
            USING ERRCODE = 'duplicate_object';
    END IF;

    IF TG_OP = 'INSERT' THEN
        NEW.owner := coalesce(NEW.owner, quote_ident(current_user)::regrole);
        NEW.created_at := coalesce(NEW.created_at, now());
    ELSIF NEW.type IS DISTINCT FROM OLD.type THEN
        -- Static segments refresh only when asked; dynamic ones follow a schedule.
        IF NEW.type = 'static' THEN
            NEW.schedule := 'manual';
        ELSIF NEW.schedule = 'manual' THEN
            NEW.schedule := 'system';
        END IF;
    END IF;
    IF TG_OP = 'INSERT' OR NEW.schedule IS DISTINCT FROM OLD.schedule OR NEW.type IS DISTINCT FROM OLD.type THEN
        PERFORM segments._check_schedule(NEW.name, NEW.schedule, NEW.type = 'dynamic');
    END IF;

    IF NOT internal AND ((TG_OP = 'INSERT' AND NEW.never_expire)
       OR (TG_OP = 'UPDATE' AND NEW.never_expire IS DISTINCT FROM OLD.never_expire)) THEN
        IF NOT segments._is_admin() THEN
            RAISE EXCEPTION 'only members of segments_admin may change never_expire (segment "%")', NEW.name
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    END IF;

    IF TG_OP = 'UPDATE' AND OLD.state = 'inactive' AND NEW.state = 'active' THEN
        -- Resuming: no longer auto-deactivated, and due for computation.
        NEW.tags := array_remove(NEW.tags, 'AutoDeactivated');
        NEW.needs_refresh := true;
    END IF;

    IF TG_OP = 'INSERT' OR NEW.definition IS DISTINCT FROM OLD.definition THEN
        -- Refuses a bad definition (22023, 42703, 42P01) naming its JSON path,
        -- and stores segment references by id so that renames never break them.
        NEW.definition := segments._check_definition(NEW.definition::text, NEW.id);
        IF NEW.entity IS NOT NULL AND NEW.entity IS DISTINCT FROM NEW.definition ->> 'entity' THEN
            RAISE EXCEPTION 'segment "%": column entity is "%" but the definition is of entity "%"',
                NEW.name, NEW.entity, NEW.definition ->> 'entity'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        NEW.entity := NEW.definition ->> 'entity';
        NEW.needs_refresh := true;
    END IF;

    IF TG_OP = 'INSERT' THEN
        -- A restore brings its own timestamps and counts; a new row has the defaults.
        NEW.updated_by := coalesce(NEW.updated_by, quote_ident(current_user)::regrole);
    ELSIF NEW.definition IS DISTINCT FROM OLD.definition THEN
        -- Counts describe the old rules until the next refresh.
        NEW.rule_counts := NULL;
    END IF;

    -- updated_at tracks what people change, not what refreshes write.
    IF TG_OP = 'UPDATE'
       AND (NEW.name, NEW.description, NEW.definition, NEW.type, NEW.state, NEW.schedule,
            NEW.tags, NEW.never_expire, NEW.priority, NEW.move_existing)
           IS DISTINCT FROM
           (OLD.name, OLD.description, OLD.definition, OLD.type, OLD.state, OLD.schedule,
            OLD.tags, OLD.never_expire, OLD.priority, OLD.move_existing) THEN
        NEW.updated_at := now();
        NEW.updated_by := quote_ident(current_user)::regrole;
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION segments._segment_record_version() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND (NEW.name, NEW.definition, NEW.type, NEW.schedule)
                            IS NOT DISTINCT FROM (OLD.name, OLD.definition, OLD.type, OLD.schedule) THEN
        RETURN NULL;
    END IF;
    -- A restore (pg_restore copies segments, then their versions) brings
    -- the history along.
    IF TG_OP = 'INSERT' AND current_query() ~* '^\s*COPY\s' THEN
        RETURN NULL;
    END IF;
    INSERT INTO segments.definition_version (segment_id, version, name, definition, type, schedule, changed_by, changed_at)
    SELECT NEW.id, coalesce(max(v.version), 0) + 1, NEW.name, NEW.definition, NEW.type, NEW.schedule,
           NEW.updated_by, clock_timestamp()
      FROM segments.definition_version v WHERE v.segment_id = NEW.id;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION segments._segment_sync_capture() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM segments._sync_capture();
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION segments._segment_track_references() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM segments.usage_registry WHERE kind = 'segment' AND consumer = OLD.id::text AND TG_OP <> 'INSERT';
    IF TG_OP <> 'DELETE' THEN
        DELETE FROM segments.usage_registry WHERE kind = 'segment' AND consumer = NEW.id::text;
        INSERT INTO segments.usage_registry (segment_id, kind, consumer)
        SELECT r, 'segment', NEW.id::text FROM segments._referenced_segments(NEW.definition) AS r;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION segments."_segments_of"(
	"entity" TEXT, /* & str */
	"key" TEXT /* & str */
) RETURNS TABLE (
	"segment_id" bigint,  /* i64 */
	"name" TEXT  /* String */
)
STRICT STABLE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_segments_of_wrapper';

CREATE OR REPLACE FUNCTION segments._set_sequence_state(caller regrole, sequence bigint, state text) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target segments.sequence := segments._require_sequence(_set_sequence_state.sequence, caller);
BEGIN
    UPDATE segments.sequence q SET state = _set_sequence_state.state
     WHERE q.id = target.id AND q.state <> _set_sequence_state.state;
    RETURN FOUND;
END
$$;

CREATE OR REPLACE FUNCTION segments."_setting"(
	"name" TEXT /* & str */
) RETURNS TEXT /* String */
STRICT STABLE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_setting_wrapper';

CREATE OR REPLACE FUNCTION segments."_sync_capture"() RETURNS void
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_sync_capture_wrapper';

CREATE OR REPLACE FUNCTION segments.activate(segments bigint[]) RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp AS $$
    SELECT segments._require_segments(activate.segments);
    WITH changed AS (
        UPDATE segments.segment s SET state = 'active'
         WHERE s.id = ANY (activate.segments) AND s.state = 'inactive' RETURNING 1)
    SELECT count(*)::integer FROM changed;
$$;

CREATE OR REPLACE FUNCTION segments."activate_sequence"(
	"sequence" bigint /* i64 */
) RETURNS bool /* bool */
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'activate_sequence_wrapper';

CREATE OR REPLACE FUNCTION segments."add_to_export"(
	"export" TEXT, /* & str */
	"segments" bigint[] /* :: std :: option :: Option < Vec < i64 > > */
) RETURNS INT /* i32 */

LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'add_to_export_wrapper';

CREATE OR REPLACE FUNCTION segments."add_usage"(
	"segment" bigint, /* i64 */
	"kind" TEXT, /* & str */
	"consumer" TEXT, /* & str */
	"live" bool DEFAULT true /* bool */
) RETURNS void
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'add_usage_wrapper';

CREATE OR REPLACE FUNCTION segments.apply_changes() RETURNS SETOF segments.refresh_run
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    runs bigint[] := segments._apply_changes();
BEGIN
    RETURN QUERY SELECT r.* FROM segments.refresh_run r WHERE r.id = ANY (runs) ORDER BY r.id;
END
$$;

CREATE OR REPLACE FUNCTION segments."attribute_values"(
	"entity" TEXT, /* & str */
	"attribute" TEXT, /* & str */
	"search" TEXT DEFAULT NULL, /* Option < & str > */
	"n" INT DEFAULT 50 /* i32 */
) RETURNS TABLE (
	"value" TEXT,  /* String */
	"rows" bigint  /* i64 */
)
STABLE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'attribute_values_wrapper';

CREATE OR REPLACE FUNCTION segments."bitmap"(
	"segment" bigint /* i64 */
) RETURNS bytea /* Vec < u8 > */
STRICT STABLE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'bitmap_wrapper';

CREATE OR REPLACE FUNCTION segments."bitmap_positions"(
	"bitmap" bytea /* & [u8] */
) RETURNS SETOF bigint /* i64 */
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'bitmap_positions_wrapper';

CREATE OR REPLACE FUNCTION segments."connect_records"(
	"sequence" bigint, /* i64 */
	"keys" TEXT[] /* :: std :: option :: Option < Vec < String > > */
) RETURNS INT /* i32 */

LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'connect_records_wrapper';

CREATE OR REPLACE FUNCTION segments."connect_sequence"(
	"sequence" bigint, /* i64 */
	"segments" bigint[] /* :: std :: option :: Option < Vec < i64 > > */
) RETURNS INT /* i32 */

LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'connect_sequence_wrapper';

CREATE OR REPLACE FUNCTION segments."create_export"(
	"name" TEXT, /* & str */
	"segments" bigint[], /* :: std :: option :: Option < Vec < i64 > > */
	"target" TEXT /* & str */
) RETURNS bigint /* i64 */

LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'create_export_wrapper';

CREATE OR REPLACE FUNCTION segments.create_segment(
    name text,
    definition jsonb,
    type text DEFAULT 'dynamic',
    schedule text DEFAULT NULL,
    description text DEFAULT NULL,
    tags text[] DEFAULT '{}',
    priority integer DEFAULT NULL,
    active boolean DEFAULT true
) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id bigint;
BEGIN
    INSERT INTO segments.segment (name, definition, type, schedule, description, tags, priority, state)
    VALUES (create_segment.name, create_segment.definition, create_segment.type, create_segment.schedule,
            create_segment.description, coalesce(create_segment.tags, '{}'), create_segment.priority,
            CASE WHEN create_segment.active THEN 'active' ELSE 'inactive' END)
    RETURNING id INTO new_id;
    RETURN new_id;
END
$$;

CREATE OR REPLACE FUNCTION segments."create_sequence"(
	"name" TEXT, /* Option < & str > */
	"entity" TEXT /* & str */
) RETURNS bigint /* i64 */

LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'create_sequence_wrapper';

CREATE OR REPLACE FUNCTION segments.deactivate(segments bigint[], dry_run boolean DEFAULT false)
RETURNS TABLE (segment_id bigint, name text, connected_sequences text[], dependents text[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    PERFORM segments._require_segments(deactivate.segments);
    IF NOT dry_run THEN
        UPDATE segments.segment s SET state = 'inactive' WHERE s.id = ANY (deactivate.segments) AND s.state = 'active';
    END IF;
    FOR r IN SELECT s.id, s.name, segments._connected_sequences(s.id) AS sequences,
                    segments._dependent_list(s.id, true) AS readers
               FROM segments.segment s WHERE s.id = ANY (deactivate.segments) ORDER BY s.id LOOP
        IF cardinality(r.sequences) > 0 THEN
            RAISE NOTICE 'segment "%" is connected to sequences: %; it will connect no new records',
                r.name, array_to_string(r.sequences, ', ');
        END IF;
        IF cardinality(r.readers) > 0 THEN
            RAISE WARNING 'segment "%" is read by %; they will use its last membership until it is active again',
                r.name, array_to_string(r.readers, ', ');
        END IF;
        segment_id := r.id; name := r.name; connected_sequences := r.sequences; dependents := r.readers;
        RETURN NEXT;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION segments."deactivate_sequence"(
	"sequence" bigint /* i64 */
) RETURNS bool /* bool */
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'deactivate_sequence_wrapper';

CREATE OR REPLACE FUNCTION segments.deactivate_unused(older_than interval DEFAULT NULL, dry_run boolean DEFAULT false)
RETURNS TABLE (segment_id bigint, name text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cutoff timestamptz := now() - coalesce(older_than, segments._setting('segments.unused_after')::interval);
BEGIN
    IF dry_run THEN
        RETURN QUERY
            SELECT s.id, s.name FROM segments.segment s
             WHERE s.state = 'active' AND NOT s.never_expire AND s.updated_at < cutoff
               AND segments._may_change(s.owner)
               AND NOT EXISTS (SELECT FROM segments.usage_registry u WHERE u.segment_id = s.id AND u.live)
             ORDER BY s.id;
    ELSE
        RETURN QUERY
            WITH deactivated AS (
                UPDATE segments.segment s
                   SET state = 'inactive',
                       tags = CASE WHEN 'AutoDeactivated' = ANY (s.tags) THEN s.tags
                                   ELSE s.tags || 'AutoDeactivated'::text END
                 WHERE s.state = 'active' AND NOT s.never_expire AND s.updated_at < cutoff
               AND segments._may_change(s.owner)
                   AND NOT EXISTS (SELECT FROM segments.usage_registry u WHERE u.segment_id = s.id AND u.live)
                RETURNING s.id, s.name)
            SELECT d.id, d.name FROM deactivated d ORDER BY d.id;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION segments.delete(segments bigint[], dry_run boolean DEFAULT false)
RETURNS TABLE (segment_id bigint, name text, connected_sequences text[], dependents text[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    remaining bigint[];
    deletable bigint[];

BEGIN
    PERFORM segments._require_segments(delete.segments);
    IF dry_run THEN
        RETURN QUERY
            SELECT s.id, s.name, segments._connected_sequences(s.id),
                   ARRAY(SELECT d FROM unnest(segments._dependent_list(s.id)) d
                          WHERE d NOT IN (SELECT format('segment "%s"', o.name) FROM segments.segment o
                                           WHERE o.id = ANY (delete.segments)))
              FROM segments.segment s WHERE s.id = ANY (delete.segments) ORDER BY s.id;
        RETURN;
    END IF;
    FOR r IN SELECT s.id, s.name, segments._connected_sequences(s.id) AS sequences
               FROM segments.segment s WHERE s.id = ANY (delete.segments) ORDER BY s.id LOOP
        IF cardinality(r.sequences) > 0 THEN
            RAISE NOTICE 'segment "%" is connected to sequences: %; records already connected stay connected',
                r.name, array_to_string(r.sequences, ', ');
        END IF;
        segment_id := r.id; name := r.name; connected_sequences := r.sequences; dependents := '{}';
        RETURN NEXT;
    END LOOP;
    remaining := ARRAY(SELECT DISTINCT unnest(delete.segments));
    -- Dependents first: a segment goes once nothing left in the list reads it.
    LOOP
        EXIT WHEN cardinality(remaining) = 0;
        deletable := ARRAY(
            SELECT s.id FROM segments.segment s
             WHERE s.id = ANY (remaining)
               AND NOT EXISTS (SELECT FROM segments.usage_registry u
                                WHERE u.segment_id = s.id AND u.kind = 'segment'
                                  AND u.consumer = ANY (remaining::text[]) AND u.consumer <> s.id::text));
        IF cardinality(deletable) = 0 THEN
            deletable := remaining;  -- a cycle cannot be saved; let the trigger report what is left
        END IF;
        DELETE FROM segments.segment s WHERE s.id = ANY (deletable);
        remaining := ARRAY(SELECT unnest(remaining) EXCEPT SELECT unnest(deletable));
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION segments.disable_auto_cleanup(segments bigint[]) RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp AS $$
    SELECT segments._require_segments(disable_auto_cleanup.segments);
    WITH changed AS (
        UPDATE segments.segment s SET never_expire = true
         WHERE s.id = ANY (disable_auto_cleanup.segments) AND NOT s.never_expire RETURNING 1)
    SELECT count(*)::integer FROM changed;
$$;

CREATE OR REPLACE FUNCTION segments."disconnect_records"(
	"sequence" bigint, /* i64 */
	"keys" TEXT[] /* :: std :: option :: Option < Vec < String > > */
) RETURNS INT /* i32 */

LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'disconnect_records_wrapper';

CREATE OR REPLACE FUNCTION segments."disconnect_sequence"(
	"sequence" bigint, /* i64 */
	"segments" bigint[] /* :: std :: option :: Option < Vec < i64 > > */
) RETURNS INT /* i32 */

LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'disconnect_sequence_wrapper';

CREATE OR REPLACE FUNCTION segments."drop_export"(
	"name" TEXT /* & str */
) RETURNS void
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'drop_export_wrapper';

CREATE OR REPLACE FUNCTION segments."drop_sequence"(
	"sequence" bigint /* i64 */
) RETURNS void
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'drop_sequence_wrapper';

CREATE OR REPLACE FUNCTION segments.duplicate(segment bigint, name text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    source segments.segment;
    copy_name text := duplicate.name;
    n integer := 1;
    new_id bigint;
BEGIN
    PERFORM segments._require_segments(ARRAY[duplicate.segment]);
    SELECT * INTO source FROM segments.segment s WHERE s.id = duplicate.segment;
    IF copy_name IS NULL THEN
        copy_name := source.name || ' (copy)';
        WHILE EXISTS (SELECT FROM segments.segment s WHERE s.name = copy_name) LOOP
            n := n + 1;
            copy_name := format('%s (copy %s)', source.name, n);
        END LOOP;
    END IF;
    INSERT INTO segments.segment (name, description, entity, definition, type, schedule, tags, priority, move_existing)
    VALUES (copy_name, source.description, source.entity, source.definition, source.type, source.schedule,
            array_remove(source.tags, 'AutoDeactivated'), source.priority, source.move_existing)
    RETURNING id INTO new_id;
    RETURN new_id;
END
$$;

CREATE OR REPLACE FUNCTION segments.enable_auto_cleanup(segments bigint[]) RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp AS $$
    SELECT segments._require_segments(enable_auto_cleanup.segments);
    WITH changed AS (
        UPDATE segments.segment s SET never_expire = false
         WHERE s.id = ANY (enable_auto_cleanup.segments) AND s.never_expire RETURNING 1)
    SELECT count(*)::integer FROM changed;
$$;

CREATE OR REPLACE FUNCTION segments.estimate(definition jsonb)
RETURNS TABLE (path text, name text, combine text, members bigint, cumulative bigint)
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM segments._estimate(definition::text) $$;

CREATE OR REPLACE FUNCTION segments."explain"(
	"segment" bigint /* i64 */
) RETURNS TEXT /* String */
STRICT STABLE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'explain_wrapper';

CREATE OR REPLACE FUNCTION segments.explain_member(segment bigint, key anyelement)
RETURNS TABLE (path text, name text, condition jsonb, matches boolean, value text)
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM segments._explain_member(segment, key::text) $$;

CREATE OR REPLACE FUNCTION segments.explain_member(segment bigint, key text)
RETURNS TABLE (path text, name text, condition jsonb, matches boolean, value text)
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM segments._explain_member(segment, key) $$;

CREATE OR REPLACE FUNCTION segments."find_similar"(
	"source" bigint, /* i64 */
	"name" TEXT, /* & str */
	"target" bigint DEFAULT NULL, /* Option < i64 > */
	"size_percent" INT DEFAULT 20, /* i32 */
	"include_source" bool DEFAULT false, /* bool */
	"min_band" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS bigint /* i64 */
 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'find_similar_banded_wrapper';

CREATE OR REPLACE FUNCTION segments."freeze"(
	"segment" bigint, /* i64 */
	"name" TEXT /* & str */
) RETURNS bigint /* i64 */
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'freeze_wrapper';

CREATE OR REPLACE FUNCTION segments.is_member(segment bigint, key anyelement) RETURNS boolean
LANGUAGE sql STABLE AS $$ SELECT segments._is_member(segment, key::text) $$;

CREATE OR REPLACE FUNCTION segments.is_member(segment bigint, key text) RETURNS boolean
LANGUAGE sql STABLE AS $$ SELECT segments._is_member(segment, key) $$;

CREATE OR REPLACE FUNCTION segments."member_positions"(
	"segment" bigint /* i64 */
) RETURNS SETOF bigint /* i64 */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'member_positions_wrapper';

CREATE OR REPLACE FUNCTION segments."members_at"(
	"segment" bigint, /* i64 */
	"at" timestamp with time zone /* pgrx :: datum :: TimestampWithTimeZone */
) RETURNS SETOF TEXT /* String */
STRICT STABLE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'members_at_wrapper';

CREATE OR REPLACE FUNCTION segments."overlap"(
	"a" bigint, /* i64 */
	"b" bigint /* i64 */
) RETURNS TABLE (
	"only_a" bigint,  /* i64 */
	"both" bigint,  /* i64 */
	"only_b" bigint  /* i64 */
)
STRICT STABLE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'overlap_wrapper';

CREATE OR REPLACE FUNCTION segments."preview"(
	"segment" bigint, /* i64 */
	"n" INT DEFAULT 100 /* i32 */
) RETURNS SETOF jsonb /* JsonB */
STRICT STABLE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'preview_wrapper';

CREATE OR REPLACE FUNCTION segments.quick_segment(name text, entity text, attribute text, op text, value jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp AS $$
    SELECT segments.create_segment(
        quick_segment.name,
        jsonb_build_object('entity', quick_segment.entity, 'rules', jsonb_build_array(jsonb_build_object(
            'where', jsonb_build_object('attribute', quick_segment.attribute, 'op', quick_segment.op)
                     || CASE WHEN quick_segment.value IS NULL OR quick_segment.value = 'null'
                             THEN '{}'::jsonb ELSE jsonb_build_object('value', quick_segment.value) END))))
$$;

CREATE OR REPLACE FUNCTION segments.rb_agg_combine(bytea, bytea) RETURNS bytea
    LANGUAGE c IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'rb_agg_combine';

CREATE OR REPLACE FUNCTION segments.rb_agg_final(bytea) RETURNS bytea
    LANGUAGE c IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'rb_agg_final';

CREATE OR REPLACE FUNCTION segments.rb_agg_step(bytea, bigint) RETURNS bytea
    LANGUAGE c IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'rb_agg_step';

CREATE OR REPLACE FUNCTION segments."refresh"(
	"segments" bigint[] DEFAULT NULL /* :: std :: option :: Option < Vec < i64 > > */
) RETURNS TABLE (
	"segment_id" bigint,  /* i64 */
	"status" TEXT,  /* String */
	"member_count" bigint,  /* Option < i64 > */
	"entered" bigint,  /* Option < i64 > */
	"exited" bigint,  /* Option < i64 > */
	"duration" interval,  /* pgrx :: datum :: Interval */
	"error" TEXT  /* Option < String > */
)

LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'refresh_wrapper';

CREATE OR REPLACE FUNCTION segments."register_entity"(
	"entity" TEXT, /* & str */
	"relation" regclass, /* PgRelation */
	"key_column" TEXT, /* & str */
	"eligible" jsonb DEFAULT NULL /* Option < JsonB > */
) RETURNS void

LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'register_entity_wrapper';

CREATE OR REPLACE FUNCTION segments."register_related"(
	"entity" TEXT, /* & str */
	"name" TEXT, /* & str */
	"relation" regclass, /* PgRelation */
	"foreign_key" TEXT, /* & str */
	"time_column" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS void

LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'register_related_wrapper';

CREATE OR REPLACE FUNCTION segments."remove_from_export"(
	"export" TEXT, /* & str */
	"segments" bigint[] /* :: std :: option :: Option < Vec < i64 > > */
) RETURNS INT /* i32 */

LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'remove_from_export_wrapper';

CREATE OR REPLACE FUNCTION segments."remove_usage"(
	"segment" bigint, /* i64 */
	"kind" TEXT, /* & str */
	"consumer" TEXT /* & str */
) RETURNS void
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'remove_usage_wrapper';

CREATE OR REPLACE FUNCTION segments.rename(segment bigint, name text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM segments._require_segments(ARRAY[rename.segment]);
    UPDATE segments.segment s SET name = rename.name WHERE s.id = rename.segment;
END
$$;

CREATE OR REPLACE FUNCTION segments.restore_definition(segment bigint, version integer) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    old jsonb;
BEGIN
    SELECT v.definition INTO old FROM segments.definition_version v
     WHERE v.segment_id = restore_definition.segment AND v.version = restore_definition.version;
    IF old IS NULL THEN
        RAISE EXCEPTION 'segment % has no definition version %', segment, version USING ERRCODE = 'undefined_object';
    END IF;
    UPDATE segments.segment s SET definition = old WHERE s.id = restore_definition.segment;
END
$$;

CREATE OR REPLACE FUNCTION segments."rule_counts"(
	"segment" bigint /* i64 */
) RETURNS TABLE (
	"path" TEXT,  /* String */
	"name" TEXT,  /* Option < String > */
	"combine" TEXT,  /* Option < String > */
	"members" bigint,  /* Option < i64 > */
	"cumulative" bigint  /* Option < i64 > */
)
STRICT STABLE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rule_counts_wrapper';

CREATE OR REPLACE FUNCTION segments.run_due() RETURNS SETOF segments.refresh_run
LANGUAGE plpgsql AS $$
DECLARE
    runs bigint[] := segments._run_due();
BEGIN
    RETURN QUERY SELECT r.* FROM segments.refresh_run r WHERE r.id = ANY (runs) ORDER BY r.id;
END
$$;

CREATE OR REPLACE FUNCTION segments.segments_of(entity text, key anyelement)
RETURNS TABLE (segment_id bigint, name text)
LANGUAGE sql STABLE AS $$ SELECT * FROM segments._segments_of(entity, key::text) $$;

CREATE OR REPLACE FUNCTION segments.segments_of(entity text, key text)
RETURNS TABLE (segment_id bigint, name text)
LANGUAGE sql STABLE AS $$ SELECT * FROM segments._segments_of(entity, key) $$;

CREATE OR REPLACE FUNCTION segments."set_limit"(
	"max_active" INT /* Option < i32 > */
) RETURNS void

LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'set_limit_wrapper';

CREATE OR REPLACE FUNCTION segments.set_owner(segments bigint[], owner regrole) RETURNS integer
LANGUAGE c AS 'MODULE_PATHNAME', 'set_owner_wrapper';

CREATE OR REPLACE FUNCTION segments.set_priority(segment bigint, priority integer) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM segments._require_segments(ARRAY[set_priority.segment]);
    UPDATE segments.segment s SET priority = set_priority.priority WHERE s.id = set_priority.segment;
END
$$;

CREATE OR REPLACE FUNCTION segments.set_schedule(segments bigint[], schedule text) RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp AS $$
    SELECT segments._require_segments(set_schedule.segments);
    WITH changed AS (
        UPDATE segments.segment s SET schedule = set_schedule.schedule
         WHERE s.id = ANY (set_schedule.segments) AND s.schedule IS DISTINCT FROM set_schedule.schedule RETURNING 1)
    SELECT count(*)::integer FROM changed;
$$;

CREATE OR REPLACE FUNCTION segments.set_type(segments bigint[], type text) RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp AS $$
    SELECT segments._require_segments(set_type.segments);
    WITH changed AS (
        UPDATE segments.segment s SET type = set_type.type
         WHERE s.id = ANY (set_type.segments) AND s.type IS DISTINCT FROM set_type.type RETURNING 1)
    SELECT count(*)::integer FROM changed;
$$;

CREATE OR REPLACE FUNCTION segments."similarity"(
	"segment" bigint /* i64 */
) RETURNS TABLE (
	"key" TEXT,  /* String */
	"score" real,  /* f32 */
	"band" TEXT  /* Option < String > */
)
STRICT STABLE  
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'similarity_banded_wrapper';

CREATE OR REPLACE FUNCTION segments."suggest"(
	"entity" TEXT, /* & str */
	"measure" TEXT, /* & str */
	"influencing" TEXT[] DEFAULT NULL, /* :: std :: option :: Option < Vec < String > > */
	"max_segments" INT DEFAULT 5 /* i32 */
) RETURNS TABLE (
	"definition" jsonb,  /* JsonB */
	"members" bigint,  /* i64 */
	"measure_avg" double precision,  /* f64 */
	"lift" double precision  /* f64 */
)
STABLE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'suggest_wrapper';

CREATE OR REPLACE FUNCTION segments.tag(segments bigint[], tags text[]) RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp AS $$
    SELECT segments._require_segments(tag.segments);
    WITH changed AS (
        UPDATE segments.segment s
           SET tags = s.tags || ARRAY(SELECT DISTINCT t FROM unnest(tag.tags) AS t
                                       WHERE t IS NOT NULL AND NOT t = ANY (s.tags) ORDER BY t)
         WHERE s.id = ANY (tag.segments)
           AND EXISTS (SELECT FROM unnest(tag.tags) AS t WHERE t IS NOT NULL AND NOT t = ANY (s.tags))
        RETURNING 1)
    SELECT count(*)::integer FROM changed;
$$;

CREATE OR REPLACE FUNCTION segments.trend(segment bigint, since timestamptz DEFAULT now() - interval '30 days',
                               until timestamptz DEFAULT now(), bucket text DEFAULT NULL)
RETURNS TABLE (at timestamptz, member_count bigint, entered bigint, exited bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM segments._require_segments(ARRAY[trend.segment]);
    IF bucket IS NOT NULL AND bucket NOT IN ('hour', 'day', 'week', 'month') THEN
        RAISE EXCEPTION 'bucket "%" is not hour, day, week or month', bucket USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF bucket IS NULL THEN
        RETURN QUERY
            SELECT r.finished_at, r.member_count, r.entered, r.exited FROM segments.refresh_run r
             WHERE r.segment_id = trend.segment AND r.status = 'succeeded'
               AND r.finished_at >= trend.since AND r.finished_at <= trend.until
             ORDER BY r.finished_at;
    ELSE
        RETURN QUERY
            SELECT date_trunc(bucket, r.finished_at) AS b,
                   (array_agg(r.member_count ORDER BY r.finished_at DESC))[1],
                   sum(r.entered)::bigint, sum(r.exited)::bigint
              FROM segments.refresh_run r
             WHERE r.segment_id = trend.segment AND r.status = 'succeeded'
               AND r.finished_at >= trend.since AND r.finished_at <= trend.until
             GROUP BY 1 ORDER BY 1;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION segments."unregister_entity"(
	"entity" TEXT /* & str */
) RETURNS void
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'unregister_entity_wrapper';

CREATE OR REPLACE FUNCTION segments."unregister_related"(
	"entity" TEXT, /* & str */
	"name" TEXT /* & str */
) RETURNS void
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'unregister_related_wrapper';

CREATE OR REPLACE FUNCTION segments.untag(segments bigint[], tags text[]) RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp AS $$
    SELECT segments._require_segments(untag.segments);
    WITH changed AS (
        UPDATE segments.segment s
           SET tags = ARRAY(SELECT t FROM unnest(s.tags) WITH ORDINALITY AS x(t, i)
                             WHERE NOT t = ANY (untag.tags) ORDER BY i)
         WHERE s.id = ANY (untag.segments) AND s.tags && untag.tags
        RETURNING 1)
    SELECT count(*)::integer FROM changed;
$$;

-- END GENERATED FUNCTIONS

-- ---- epilogue: event triggers, views, privileges -----------------------------

CREATE AGGREGATE segments.rb_agg(bigint) (
    SFUNC = segments.rb_agg_step,
    STYPE = bytea,
    FINALFUNC = segments.rb_agg_final,
    COMBINEFUNC = segments.rb_agg_combine,
    PARALLEL = SAFE
);

-- Members views follow their tables (see src/api/entity.rs).
CREATE EVENT TRIGGER segments_members_view_release ON ddl_command_start
    WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION segments._members_view_release();
CREATE EVENT TRIGGER segments_members_view_restore ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION segments._members_view_restore();

-- Definition history.
CREATE TRIGGER segment_record_version
    AFTER INSERT OR UPDATE OF name, definition, type, schedule ON segments.segment
    FOR EACH ROW EXECUTE FUNCTION segments._segment_record_version();
CREATE VIEW segments.definition_history AS
SELECT v.segment_id, v.version, v.changed_at, v.changed_by,
       lag(v.name) OVER w AS old_name, v.name AS new_name,
       lag(v.definition) OVER w AS old_definition, v.definition AS new_definition,
       lag(v.type) OVER w AS old_type, v.type AS new_type,
       lag(v.schedule) OVER w AS old_schedule, v.schedule AS new_schedule
  FROM segments.definition_version v
WINDOW w AS (PARTITION BY v.segment_id ORDER BY v.version);

-- Capture follows the live segments.
CREATE TRIGGER segment_sync_capture
    AFTER INSERT OR UPDATE OF schedule, state, definition OR DELETE ON segments.segment
    FOR EACH STATEMENT EXECUTE FUNCTION segments._segment_sync_capture();

-- segment_list gains consecutive failures and the active count against the
-- limit (at the end).
CREATE OR REPLACE VIEW segments.segment_list AS
SELECT s.id, s.name, s.description, s.entity, s.type, s.state, s.status, s.member_count,
       s.last_refreshed_at, s.last_error, s.schedule, s.tags, s.never_expire, s.priority, s.owner,
       s.created_at, s.updated_at,
       to_timestamp(segments._next_refresh_epoch(
           s.type, s.state, s.schedule, extract(epoch FROM s.last_refreshed_at)::float8,
           extract(epoch FROM s.created_at)::float8, s.needs_refresh)) AS next_refresh_at,
       (SELECT count(*) FROM segments.usage_registry u WHERE u.segment_id = s.id AND u.live) AS usage_count,
       s.consecutive_failures,
       (SELECT count(*) FROM segments.segment a WHERE a.state = 'active') AS active_segments,
       segments._active_limit() AS max_active_segments
  FROM segments.segment s;

-- Every management function taking `segments bigint[]` also takes one id
-- (`segments.activate(2)`) and an untyped literal (`segments.refresh(NULL)`,
-- `segments.activate('{1,2}')`): overloads on bigint and on text, made
-- here from the array forms so that they never drift. The text form keeps
-- untyped calls unambiguous: an unknown literal prefers the string type.
DO $$
DECLARE
    f record;
    args text;
    call_args text;
    body text;
BEGIN
    FOR f IN
        SELECT p.oid, p.proname, p.proretset, pg_catalog.pg_get_function_result(p.oid) AS result,
               p.proargnames, p.proargtypes::oid[] AS types, p.pronargs
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'segments'::regnamespace
           AND p.proname NOT LIKE '\_%'
           AND 'segments' = ANY (p.proargnames)
           AND p.proargtypes[pg_catalog.array_position(p.proargnames, 'segments') - 1] = 'bigint[]'::regtype
         ORDER BY p.proname
    LOOP
        FOR single IN 1..2 LOOP
            -- The array form's arguments, defaults included, with segments
            -- retyped (and without a default of its own).
            args := regexp_replace(pg_catalog.pg_get_function_arguments(f.oid),
                                   'segments bigint\[\]( DEFAULT [^,]*)?',
                                   'segments ' || CASE single WHEN 1 THEN 'bigint' ELSE 'text' END);
            call_args := '';
            FOR i IN 1..f.pronargs LOOP
                IF i > 1 THEN
                    call_args := call_args || ', ';
                END IF;
                IF f.proargnames[i] = 'segments' THEN
                    call_args := call_args || CASE single
                        WHEN 1 THEN 'CASE WHEN $' || i || ' IS NULL THEN NULL ELSE ARRAY[$' || i || '] END'
                        ELSE 'CASE WHEN $' || i || ' IS NULL THEN NULL WHEN pg_catalog.btrim($' || i || ') LIKE ''{%'' THEN $' || i || '::bigint[] ELSE ARRAY[$' || i || '::bigint] END'
                    END;
                ELSE
                    call_args := call_args || '$' || i;
                END IF;
            END LOOP;
            body := CASE WHEN f.proretset OR f.result LIKE 'TABLE(%'
                         THEN 'SELECT * FROM segments.' || pg_catalog.quote_ident(f.proname) || '(' || call_args || ')'
                         ELSE 'SELECT segments.' || pg_catalog.quote_ident(f.proname) || '(' || call_args || ')' END;
            EXECUTE pg_catalog.format(
                'CREATE FUNCTION segments.%I(%s) RETURNS %s LANGUAGE sql SET search_path = pg_catalog, pg_temp AS %L',
                f.proname, args, f.result, body);
            EXECUTE pg_catalog.format(
                'COMMENT ON FUNCTION segments.%I(%s) IS %L',
                f.proname, regexp_replace(args, ' DEFAULT [^,]*', '', 'g'),
                'Same as ' || f.proname || '(segments bigint[]), for ' ||
                CASE single WHEN 1 THEN 'one segment id.' ELSE 'an untyped literal: NULL, one id or an array literal.' END);
        END LOOP;
    END LOOP;
END
$$;

-- ---- privileges ----------------------------------------------------------------

-- Only segments.segment is writable by DML; internal state is written by
-- the extension's functions alone.
REVOKE INSERT, UPDATE, DELETE ON
    segments.membership, segments.entity_key, segments.refresh_run,
    segments.membership_change, segments.usage_registry, segments.sequence, segments.sequence_segment,
    segments.export, segments.scheduler_state, segments.sequence_record, segments.similarity_score
    FROM segments_editor;
REVOKE INSERT, UPDATE, DELETE ON segments.entity, segments.related FROM segments_admin;
REVOKE USAGE ON ALL SEQUENCES IN SCHEMA segments FROM segments_editor;
GRANT SELECT ON ALL TABLES IN SCHEMA segments TO segments_reader;
GRANT USAGE ON SEQUENCE segments.segment_id_seq TO segments_editor;
-- The live queue and kept related values hold keys and conditions' answers
-- computed with their owners' privileges: not for readers.
REVOKE SELECT ON segments.change_queue, segments.related_state FROM segments_reader;

ALTER TABLE segments.entity_key ENABLE ROW LEVEL SECURITY;
CREATE POLICY entity_key_readable ON segments.entity_key FOR SELECT
    USING (segments._can_read_entity(entity));

DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'segments'::regnamespace AND p.proname LIKE '\_%' LOOP
        EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
    FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'segments'::regnamespace
                AND p.proname IN ('_internal_write', '_require_may_change', '_may_change', '_is_admin',
                                  '_check_schedule', '_check_definition', '_check_active_limit',
                                  '_dependents', '_referenced_segments', '_require_segments',
                                  '_connected_sequences', '_next_refresh_epoch', '_can_read_entity',
                                  '_is_member', '_segments_of', '_run_due', '_estimate',
                                  '_sync_capture', '_apply_changes', '_explain_member', '_active_limit', '_dependent_list', '_setting') LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO segments_reader', f);
    END LOOP;
END
$$;

-- Export tables made by 0.1.0 were readable by segments_reader; exports
-- now give no privileges to anyone until their owner grants them.
DO $$
DECLARE
    t regclass;
BEGIN
    FOR t IN SELECT e.target FROM segments.export e
              WHERE EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = e.target::oid) LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON %s FROM segments_reader', t);
    END LOOP;
END
$$;

-- Comments on every public object: a \d+ or \df+ reader understands each
-- without the README.
COMMENT ON TABLE segments.change_queue IS 'Keys changed in tables live segments read, waiting for apply_changes() (internal).';
COMMENT ON COLUMN segments.change_queue.entity IS 'The entity whose key changed.';
COMMENT ON COLUMN segments.change_queue.key IS 'The key as text; NULL: the whole table changed (TRUNCATE).';
COMMENT ON COLUMN segments.change_queue.queued_at IS 'When the change was captured.';
COMMENT ON COLUMN segments.change_queue.source IS 'The related table whose rows changed; NULL: the entity''s own row.';
COMMENT ON COLUMN segments.change_queue.image IS 'The entity''s new row as the capture trigger saw it (internal format), so that apply_changes need not read it again; NULL: read the table.';
COMMENT ON TABLE segments.related_state IS 'Live segments: the last value of each related condition, kept between applications (internal).';
COMMENT ON COLUMN segments.related_state.owner IS 'The role whose privileges computed the value.';
COMMENT ON COLUMN segments.related_state.entity IS 'The entity.';
COMMENT ON COLUMN segments.related_state.leaf IS 'md5 of the condition''s query at a fixed reference time.';
COMMENT ON COLUMN segments.related_state.matching IS 'Bitmap: positions where the condition holds.';
COMMENT ON COLUMN segments.related_state.with_rows IS 'Bitmap, aggregates only: positions with any related row.';
COMMENT ON COLUMN segments.related_state.computed_at IS 'When the value was last computed or patched.';
COMMENT ON TABLE segments.entity IS 'Registered entities: tables whose rows segments group.';
COMMENT ON COLUMN segments.entity.name IS 'Entity name.';
COMMENT ON COLUMN segments.entity.relation IS 'The entity table.';
COMMENT ON COLUMN segments.entity.key_column IS 'Its key column.';
COMMENT ON COLUMN segments.entity.key_kind IS 'integer (keys are positions) or dictionary (positions from entity_key).';
COMMENT ON COLUMN segments.entity.key_type IS 'Type of the key column.';
COMMENT ON COLUMN segments.entity.eligible IS 'Condition every member of every segment of the entity meets.';
COMMENT ON COLUMN segments.entity.created_at IS 'When it was registered.';
COMMENT ON TABLE segments.entity_key IS 'Bitmap positions of text and uuid keys; rows are visible only to roles that may read the entity table.';
COMMENT ON COLUMN segments.entity_key.entity IS 'The entity.';
COMMENT ON COLUMN segments.entity_key.position IS 'The key''s bitmap position.';
COMMENT ON COLUMN segments.entity_key.key IS 'The key as text.';
COMMENT ON TABLE segments.export IS 'Exports: tables kept holding the members of some segments.';
COMMENT ON COLUMN segments.export.id IS 'Export id.';
COMMENT ON COLUMN segments.export.name IS 'Export name.';
COMMENT ON COLUMN segments.export.entity IS 'Entity of its segments.';
COMMENT ON COLUMN segments.export.segments IS 'The segments exported.';
COMMENT ON COLUMN segments.export.target IS 'The table written.';
COMMENT ON COLUMN segments.export.owner IS 'The role that created it; rewrites run as this role.';
COMMENT ON COLUMN segments.export.created_at IS 'When it was created.';
COMMENT ON COLUMN segments.export.status IS 'Outcome of the last rewrite: not_written, succeeded or failed.';
COMMENT ON COLUMN segments.export.last_error IS 'Error of the last failed rewrite.';
COMMENT ON COLUMN segments.export.last_written_at IS 'When it was last rewritten.';
COMMENT ON TABLE segments.membership IS 'The members of each segment as a Roaring bitmap of key positions (one row per segment).';
COMMENT ON COLUMN segments.membership.segment_id IS 'The segment.';
COMMENT ON COLUMN segments.membership.members IS 'Serialized Roaring treemap of member positions.';
COMMENT ON COLUMN segments.membership.member_count IS 'Number of members.';
COMMENT ON COLUMN segments.membership.refreshed_at IS 'When it was computed.';
COMMENT ON TABLE segments.membership_change IS 'Who entered and who exited a segment, per refresh run.';
COMMENT ON COLUMN segments.membership_change.segment_id IS 'The segment.';
COMMENT ON COLUMN segments.membership_change.run_id IS 'The refresh run.';
COMMENT ON COLUMN segments.membership_change.key IS 'The record''s key as text.';
COMMENT ON COLUMN segments.membership_change.change IS 'entered or exited.';
COMMENT ON COLUMN segments.membership_change.at IS 'When.';
COMMENT ON TABLE segments.refresh_run IS 'History: one row per refresh (or live application) of a segment.';
COMMENT ON COLUMN segments.refresh_run.id IS 'Run id.';
COMMENT ON COLUMN segments.refresh_run.segment_id IS 'The segment.';
COMMENT ON COLUMN segments.refresh_run.trigger IS 'manual, schedule, system or live.';
COMMENT ON COLUMN segments.refresh_run.started_at IS 'Start.';
COMMENT ON COLUMN segments.refresh_run.finished_at IS 'End.';
COMMENT ON COLUMN segments.refresh_run.status IS 'succeeded, failed, skipped or running.';
COMMENT ON COLUMN segments.refresh_run.member_count IS 'Members after the run.';
COMMENT ON COLUMN segments.refresh_run.entered IS 'Records that entered.';
COMMENT ON COLUMN segments.refresh_run.exited IS 'Records that exited.';
COMMENT ON COLUMN segments.refresh_run.error IS 'Error of a failed run.';
COMMENT ON COLUMN segments.refresh_run.keys_examined IS 'Keys a live application evaluated.';
COMMENT ON COLUMN segments.refresh_run.error_code IS 'The SQLSTATE of a failed run''s error, e.g. 42703 for a column that no longer exists.';
COMMENT ON TABLE segments.related IS 'Registered related (one-to-many) tables of entities.';
COMMENT ON COLUMN segments.related.entity IS 'The entity.';
COMMENT ON COLUMN segments.related.name IS 'Name used in definitions.';
COMMENT ON COLUMN segments.related.relation IS 'The table.';
COMMENT ON COLUMN segments.related.foreign_key IS 'Column holding the entity key.';
COMMENT ON COLUMN segments.related.time_column IS 'Column within windows measure against.';
COMMENT ON TABLE segments.scheduler_state IS 'When the scheduler last ran its cluster-wide jobs (internal).';
COMMENT ON COLUMN segments.scheduler_state.job IS 'system or cleanup.';
COMMENT ON COLUMN segments.scheduler_state.last_run IS 'When it last ran.';
COMMENT ON TABLE segments.segment IS 'The segments; writable by DML on segments the caller may change, guarded by lifecycle triggers.';
COMMENT ON COLUMN segments.segment.id IS 'Segment id.';
COMMENT ON COLUMN segments.segment.name IS 'Unique name.';
COMMENT ON COLUMN segments.segment.description IS 'Free text.';
COMMENT ON COLUMN segments.segment.entity IS 'The entity it groups.';
COMMENT ON COLUMN segments.segment.definition IS 'The rules (jsonb), segment references stored by id.';
COMMENT ON COLUMN segments.segment.type IS 'static or dynamic.';
COMMENT ON COLUMN segments.segment.state IS 'active or inactive.';
COMMENT ON COLUMN segments.segment.status IS 'Outcome of the last refresh: not_refreshed, running, succeeded, failed or skipped.';
COMMENT ON COLUMN segments.segment.member_count IS 'Members at the last refresh.';
COMMENT ON COLUMN segments.segment.last_refreshed_at IS 'When it was last refreshed.';
COMMENT ON COLUMN segments.segment.last_error IS 'Error of the last failed refresh.';
COMMENT ON COLUMN segments.segment.schedule IS 'system, live, daily, weekly, monthly, manual or a cron expression.';
COMMENT ON COLUMN segments.segment.tags IS 'Tags.';
COMMENT ON COLUMN segments.segment.never_expire IS 'Left alone by the unused-segment cleanup (admins only).';
COMMENT ON COLUMN segments.segment.priority IS 'Sequence priority (lower first).';
COMMENT ON COLUMN segments.segment.move_existing IS 'May take records connected to other sequences when of higher priority.';
COMMENT ON COLUMN segments.segment.owner IS 'The role it belongs to; it is evaluated with its privileges.';
COMMENT ON COLUMN segments.segment.created_at IS 'When it was created.';
COMMENT ON COLUMN segments.segment.updated_at IS 'When a person last changed it.';
COMMENT ON COLUMN segments.segment.updated_by IS 'Who last changed it.';
COMMENT ON COLUMN segments.segment.rule_counts IS 'Per-rule counts of the last refresh; NULL after a definition change.';
COMMENT ON COLUMN segments.segment.needs_refresh IS 'Due for computation (created, changed or resumed).';
COMMENT ON COLUMN segments.segment.consecutive_failures IS 'Failed refreshes in a row (0 after a success).';
COMMENT ON VIEW segments.segment_list IS 'One row per segment, as the segment list shows it.';
COMMENT ON COLUMN segments.segment_list.id IS 'Segment id.';
COMMENT ON COLUMN segments.segment_list.name IS 'Name.';
COMMENT ON COLUMN segments.segment_list.description IS 'Description.';
COMMENT ON COLUMN segments.segment_list.entity IS 'Entity.';
COMMENT ON COLUMN segments.segment_list.type IS 'static or dynamic.';
COMMENT ON COLUMN segments.segment_list.state IS 'active or inactive.';
COMMENT ON COLUMN segments.segment_list.status IS 'Outcome of the last refresh.';
COMMENT ON COLUMN segments.segment_list.member_count IS 'Members.';
COMMENT ON COLUMN segments.segment_list.last_refreshed_at IS 'Last refresh.';
COMMENT ON COLUMN segments.segment_list.last_error IS 'Last error.';
COMMENT ON COLUMN segments.segment_list.schedule IS 'Schedule.';
COMMENT ON COLUMN segments.segment_list.tags IS 'Tags.';
COMMENT ON COLUMN segments.segment_list.never_expire IS 'Excluded from cleanup.';
COMMENT ON COLUMN segments.segment_list.priority IS 'Sequence priority.';
COMMENT ON COLUMN segments.segment_list.owner IS 'Owner.';
COMMENT ON COLUMN segments.segment_list.created_at IS 'Created.';
COMMENT ON COLUMN segments.segment_list.updated_at IS 'Last changed by a person.';
COMMENT ON COLUMN segments.segment_list.next_refresh_at IS 'When it will next be computed (NULL: only when asked).';
COMMENT ON COLUMN segments.segment_list.usage_count IS 'Live usages.';
COMMENT ON COLUMN segments.segment_list.consecutive_failures IS 'Failed refreshes in a row.';
COMMENT ON TABLE segments.sequence IS 'Sales sequences.';
COMMENT ON COLUMN segments.sequence.id IS 'Sequence id.';
COMMENT ON COLUMN segments.sequence.name IS 'Name.';
COMMENT ON COLUMN segments.sequence.entity IS 'Entity of its records.';
COMMENT ON COLUMN segments.sequence.created_at IS 'Created.';
COMMENT ON COLUMN segments.sequence.owner IS 'The role that created it.';
COMMENT ON TABLE segments.sequence_record IS 'Records connected to sequences (one sequence per record of an entity).';
COMMENT ON COLUMN segments.sequence_record.entity IS 'Entity.';
COMMENT ON COLUMN segments.sequence_record.key IS 'Record key as text.';
COMMENT ON COLUMN segments.sequence_record.sequence_id IS 'The sequence.';
COMMENT ON COLUMN segments.sequence_record.segment_id IS 'The segment that connected it (NULL once deleted, or by hand).';
COMMENT ON COLUMN segments.sequence_record.segment_name IS 'That segment''s name at the time.';
COMMENT ON COLUMN segments.sequence_record.connected_at IS 'When.';
COMMENT ON VIEW segments.sequence_records IS 'Records connected to sequences, by sequence name.';
COMMENT ON COLUMN segments.sequence_records.sequence IS 'Sequence name.';
COMMENT ON COLUMN segments.sequence_records.key IS 'Record key.';
COMMENT ON COLUMN segments.sequence_records.segment_id IS 'Segment that connected it.';
COMMENT ON COLUMN segments.sequence_records.segment_name IS 'Its name at the time.';
COMMENT ON COLUMN segments.sequence_records.connected_at IS 'When.';
COMMENT ON TABLE segments.sequence_segment IS 'Segments connected to sequences (at most one sequence per segment).';
COMMENT ON COLUMN segments.sequence_segment.segment_id IS 'The segment.';
COMMENT ON COLUMN segments.sequence_segment.sequence_id IS 'The sequence.';
COMMENT ON COLUMN segments.sequence_segment.connected_at IS 'When.';
COMMENT ON TABLE segments.similarity_score IS 'Scores of the members of segments made by find_similar.';
COMMENT ON COLUMN segments.similarity_score.segment_id IS 'The segment.';
COMMENT ON COLUMN segments.similarity_score.key IS 'Record key.';
COMMENT ON COLUMN segments.similarity_score.score IS 'Score 0 to 1.';
COMMENT ON VIEW segments.usage IS 'Every usage of every segment.';
COMMENT ON COLUMN segments.usage.segment_id IS 'The segment.';
COMMENT ON COLUMN segments.usage.kind IS 'export, measure, segment, journey, campaign, test_list, message, sequence or analytics.';
COMMENT ON COLUMN segments.usage.consumer IS 'Who uses it (a segment by name).';
COMMENT ON COLUMN segments.usage.live IS 'Whether it keeps the segment in use.';
COMMENT ON COLUMN segments.usage.since IS 'Since when.';
COMMENT ON TABLE segments.usage_kind IS 'The kinds of usage add_usage accepts; recorded_by_segments kinds are written by the extension itself.';
COMMENT ON COLUMN segments.usage_kind.kind IS 'Usage kind, e.g. journey.';
COMMENT ON COLUMN segments.usage_kind.recorded_by_segments IS 'Whether only the extension records usages of this kind (segment, export, sequence).';
COMMENT ON TABLE segments.usage_registry IS 'What uses each segment (internal; see view usage).';
COMMENT ON COLUMN segments.usage_registry.segment_id IS 'The segment.';
COMMENT ON COLUMN segments.usage_registry.kind IS 'Usage kind.';
COMMENT ON COLUMN segments.usage_registry.consumer IS 'Who uses it.';
COMMENT ON COLUMN segments.usage_registry.live IS 'Whether it keeps the segment in use.';
COMMENT ON COLUMN segments.usage_registry.since IS 'Since when.';
COMMENT ON FUNCTION segments.find_similar(bigint,text,bigint,integer,boolean,text) IS 'Creates a static segment of the customers most like the members of source (logistic regression on the entity''s numeric and categorical columns), the best size_percent of target (or everyone) scoring 0.4 or more (or min_band: high, medium, low); returns its id.';
COMMENT ON FUNCTION segments.create_sequence(text,text) IS 'Creates a sales sequence for an entity, owned by the caller; returns its id.';
COMMENT ON FUNCTION segments.remove_usage(bigint,text,text) IS 'Removes a usage recorded with add_usage (kinds segment, export and sequence are the extension''s own).';
COMMENT ON FUNCTION segments.connect_records(bigint,text[]) IS 'Connects records (entity keys as text) to a sequence by hand; returns how many were newly connected.';
COMMENT ON FUNCTION segments.overlap(bigint,bigint) IS 'Members only in a, in both, and only in b.';
COMMENT ON FUNCTION segments.drop_export(text) IS 'Drops an export and its target table (its owner, or an admin).';
COMMENT ON FUNCTION segments.unregister_entity(text) IS 'Removes an entity registration and its members view; refused while segments use it; works when the table is gone. Admins only.';
COMMENT ON FUNCTION segments.is_member(bigint,anyelement) IS 'Whether the record with this key (in its own type) is a member of the segment at its last refresh.';
COMMENT ON FUNCTION segments.is_member(bigint,text) IS 'Whether the record with this key (as text) is a member of the segment at its last refresh.';
COMMENT ON FUNCTION segments.segments_of(text,anyelement) IS 'The segments of an entity the record with this key (in its own type) is a member of.';
COMMENT ON FUNCTION segments.segments_of(text,text) IS 'The segments of an entity the record with this key (as text) is a member of.';
COMMENT ON FUNCTION segments.similarity(bigint) IS 'The score (0 to 1) and band (high from 0.85, medium from 0.7, low from 0.55) of each member of a segment made by find_similar.';
COMMENT ON FUNCTION segments.add_usage(bigint,text,text,boolean) IS 'Records that consumer (a journey, campaign, measure...) uses the segment; live false does not keep it in use.';
COMMENT ON FUNCTION segments.create_export(text,bigint[],text) IS 'Creates table target, owned by the caller, holding the members of the segments (entity columns plus segment_name), rewritten after each of their refreshes; returns the export id.';
COMMENT ON FUNCTION segments.attribute_values(text,text,text,integer) IS 'The most frequent values of an entity column (optionally containing search), with their row counts: a value picker.';
COMMENT ON FUNCTION segments.connect_sequence(bigint,bigint[]) IS 'Connects segments to a sequence: records entering them start it; returns how many segments were newly connected.';
COMMENT ON FUNCTION segments.preview(bigint,integer) IS 'The first n members of a segment as JSON rows of the entity table, read with the caller''s privileges.';
COMMENT ON FUNCTION segments.refresh(bigint[]) IS 'Recomputes the given segments (NULL: every active segment) now, each as its owner; one row per segment with its outcome.';
COMMENT ON FUNCTION segments.bitmap(bigint) IS 'The segment''s members as a portable Roaring bitmap of key positions (32-bit format when positions fit).';
COMMENT ON FUNCTION segments.explain(bigint) IS 'The SQL a refresh of the segment runs, one statement per leaf query.';
COMMENT ON FUNCTION segments.register_entity(text,regclass,text,jsonb) IS 'Registers a table whose rows segments group, its key column and an optional eligibility condition; creates view segments.<entity>_members. Admins only.';
COMMENT ON FUNCTION segments.rule_counts(bigint) IS 'Members per rule and subrule at the last refresh: the rule alone and cumulative with the rules before it.';
COMMENT ON FUNCTION segments.suggest(text,text,text[],integer) IS 'Suggested segments: splits of the population whose average measure differs most from everyone''s, as ready definitions.';
COMMENT ON FUNCTION segments.unregister_related(text,text) IS 'Removes a related table registration; refused while segments read it; works when the table is gone. Admins only.';
COMMENT ON FUNCTION segments.member_positions(bigint) IS 'The bitmap positions of a segment''s members.';
COMMENT ON FUNCTION segments.bitmap_positions(bytea) IS 'The positions in a serialized bitmap (the members views join them to the entity table; pure, so it may run on Citus workers).';
COMMENT ON FUNCTION segments.disconnect_sequence(bigint,bigint[]) IS 'Disconnects segments from a sequence; records already connected stay; returns how many were disconnected.';
COMMENT ON FUNCTION segments.create_segment(text,jsonb,text,text,text,text[],integer,boolean) IS 'Creates a segment from a definition, owned by the caller; returns its id.';
COMMENT ON FUNCTION segments.quick_segment(text,text,text,text,jsonb) IS 'Creates a segment of one attribute condition; returns its id.';
COMMENT ON FUNCTION segments.duplicate(bigint,text) IS 'Copies a segment (definition, type, schedule, tags, priority) as ''<name> (copy)'' or the given name; returns the new id.';
COMMENT ON FUNCTION segments.rename(bigint,text) IS 'Renames a segment; segments that read it keep working.';
COMMENT ON FUNCTION segments.activate(bigint[]) IS 'Activates (resumes computation of) segments; returns how many changed.';
COMMENT ON FUNCTION segments.deactivate(bigint[], boolean) IS 'Deactivates segments, keeping definition and membership; returns them with their connected sequences and what reads them (also as NOTICE and WARNING); dry_run changes nothing.';
COMMENT ON FUNCTION segments.set_type(bigint[],text) IS 'Makes segments static or dynamic; returns how many changed.';
COMMENT ON FUNCTION segments.set_schedule(bigint[],text) IS 'Sets the schedule (system, live, daily, weekly, monthly, manual or cron) of segments; returns how many changed.';
COMMENT ON FUNCTION segments.tag(bigint[],text[]) IS 'Adds tags to segments; returns how many changed.';
COMMENT ON FUNCTION segments.untag(bigint[],text[]) IS 'Removes tags from segments; returns how many changed.';
COMMENT ON FUNCTION segments.delete(bigint[], boolean) IS 'Deletes segments with their membership and history, refused while something else depends on one of them; returns them with their connected sequences and, with dry_run (which changes nothing), what depends on them.';
COMMENT ON FUNCTION segments.activate_sequence(bigint) IS 'Activates a sequence: records entering its segments start it. Sequence managers and admins.';
COMMENT ON FUNCTION segments.deactivate_sequence(bigint) IS 'Deactivates a sequence: it connects nobody new and keeps its records. Sequence managers and admins.';
COMMENT ON FUNCTION segments.drop_sequence(bigint) IS 'Drops a sequence with its connections and connected records. Sequence managers and admins.';
COMMENT ON FUNCTION segments.disconnect_records(bigint, text[]) IS 'Disconnects records (keys as text) from a sequence; returns how many. Sequence managers and admins.';
COMMENT ON COLUMN segments.sequence.state IS 'active or inactive: an inactive sequence connects nobody new.';
COMMENT ON FUNCTION segments.disable_auto_cleanup(bigint[]) IS 'Sets never_expire: the unused-segment cleanup leaves these segments alone. Admins only.';
COMMENT ON FUNCTION segments.enable_auto_cleanup(bigint[]) IS 'Clears never_expire. Admins only.';
COMMENT ON FUNCTION segments.trend(bigint,timestamp with time zone,timestamp with time zone,text) IS 'Member counts of a segment between since and until: after each successful refresh, or per bucket (hour, day, week, month) the last count and the entered and exited totals.';
COMMENT ON FUNCTION segments.deactivate_unused(interval,boolean) IS 'Deactivates (and tags AutoDeactivated) active segments without live usage created or updated longer ago than older_than; dry_run only lists them.';
COMMENT ON FUNCTION segments.run_due() IS 'One scheduler pass: the cleanup and the refreshes that are due; returns the runs recorded.';
COMMENT ON FUNCTION segments.apply_changes() IS 'Applies the row changes captured for live segments; returns the runs recorded (trigger live).';
COMMENT ON FUNCTION segments.set_priority(bigint,integer) IS 'Sets a segment''s sequence priority (lower first).';
COMMENT ON FUNCTION segments.set_owner(bigint[],regrole) IS 'Gives segments to another role, like ALTER ... OWNER TO: you must be allowed to change them and be a member of the new owner.';
COMMENT ON FUNCTION segments.register_related(text,text,regclass,text,text) IS 'Registers a one-to-many table of an entity (orders, events) with its foreign key and optional time column. Admins only.';
COMMENT ON FUNCTION segments.estimate(jsonb) IS 'Simulates a definition: members per rule, nothing saved.';
COMMENT ON AGGREGATE segments.rb_agg(bigint) IS
    'The positions of the aggregated rows as a serialized Roaring bitmap (64-bit portable format).';
COMMENT ON FUNCTION segments.rb_agg_step(bytea,bigint) IS 'Transition function of rb_agg (its bytea state is an expanded object, changed in place).';
COMMENT ON FUNCTION segments.rb_agg_combine(bytea,bytea) IS 'Combine function of rb_agg (parallel workers, Citus shards).';
COMMENT ON FUNCTION segments.rb_agg_final(bytea) IS 'Final function of rb_agg: the serialized bitmap.';
COMMENT ON TABLE segments.definition_version IS 'Every definition, name, type and schedule each segment has had (see view definition_history).';
COMMENT ON COLUMN segments.definition_version.segment_id IS 'The segment.';
COMMENT ON COLUMN segments.definition_version.version IS 'Version number, from 1.';
COMMENT ON COLUMN segments.definition_version.name IS 'Name at this version.';
COMMENT ON COLUMN segments.definition_version.definition IS 'Definition at this version.';
COMMENT ON COLUMN segments.definition_version.type IS 'Type at this version.';
COMMENT ON COLUMN segments.definition_version.schedule IS 'Schedule at this version.';
COMMENT ON COLUMN segments.definition_version.changed_by IS 'Who made the change.';
COMMENT ON COLUMN segments.definition_version.changed_at IS 'When.';
COMMENT ON VIEW segments.definition_history IS 'Every definition, name, type and schedule change of every segment: who, when, old and new.';
COMMENT ON COLUMN segments.definition_history.segment_id IS 'The segment.';
COMMENT ON COLUMN segments.definition_history.version IS 'Version number (restore_definition takes it).';
COMMENT ON COLUMN segments.definition_history.changed_at IS 'When.';
COMMENT ON COLUMN segments.definition_history.changed_by IS 'Who.';
COMMENT ON COLUMN segments.definition_history.old_name IS 'Name before (NULL for the first version).';
COMMENT ON COLUMN segments.definition_history.new_name IS 'Name after.';
COMMENT ON COLUMN segments.definition_history.old_definition IS 'Definition before.';
COMMENT ON COLUMN segments.definition_history.new_definition IS 'Definition after.';
COMMENT ON COLUMN segments.definition_history.old_type IS 'Type before.';
COMMENT ON COLUMN segments.definition_history.new_type IS 'Type after.';
COMMENT ON COLUMN segments.definition_history.old_schedule IS 'Schedule before.';
COMMENT ON COLUMN segments.definition_history.new_schedule IS 'Schedule after.';
COMMENT ON TABLE segments.limits IS 'Limits set with set_limit(), lasting across sessions (one row).';
COMMENT ON COLUMN segments.limits.singleton IS 'Always true: the table has one row.';
COMMENT ON COLUMN segments.limits.max_active_segments IS 'The active-segment limit (NULL: the setting segments.max_active_segments).';
COMMENT ON COLUMN segments.segment_list.active_segments IS 'Active segments in the database.';
COMMENT ON COLUMN segments.segment_list.max_active_segments IS 'The active-segment limit in force.';
COMMENT ON FUNCTION segments.restore_definition(bigint, integer) IS 'Puts back the definition a segment had at a version of definition_history (recorded as a new version).';
COMMENT ON FUNCTION segments.members_at(bigint, timestamp with time zone) IS 'The keys of a segment''s members as they were after its last refresh at or before a time, within the history retention.';
COMMENT ON FUNCTION segments.freeze(bigint, text) IS 'Creates a static segment holding the current membership of another; returns its id.';
COMMENT ON FUNCTION segments.set_limit(integer) IS 'Sets the active-segment limit persistently (admins only); NULL goes back to the setting.';
COMMENT ON FUNCTION segments.explain_member(bigint, anyelement) IS 'Why a record (key in its own type) is or is not a member: rule by rule and condition by condition, with the value compared; the last row (path member) is the result and whether it is a member now.';
COMMENT ON FUNCTION segments.explain_member(bigint, text) IS 'Why a record (key as text) is or is not a member: rule by rule and condition by condition, with the value compared; the last row (path member) is the result and whether it is a member now.';
COMMENT ON FUNCTION segments.add_to_export(text, bigint[]) IS 'Adds segments (of the export''s entity) to an export, recording their usage, and rewrites it; returns how many were added.';
COMMENT ON FUNCTION segments.remove_from_export(text, bigint[]) IS 'Removes segments from an export with their usage, and rewrites it; returns how many were removed.';
COMMENT ON SCHEMA segments IS 'segments: rule-defined customer segments evaluated into Roaring bitmaps.';

-- Members views made by 0.1.0 get this version's shape, comments included.
SELECT segments._remake_members_views();
-- (Made inside this script, they would become members of the extension;
-- members views belong to the database, as at registration.)
DO $$
DECLARE
    v regclass;
BEGIN
    FOR v IN SELECT pg_catalog.to_regclass('segments.' || pg_catalog.quote_ident(e.name || '_members'))
               FROM segments.entity e LOOP
        IF v IS NOT NULL THEN
            EXECUTE pg_catalog.format('ALTER EXTENSION segments DROP VIEW %s', v);
        END IF;
    END LOOP;
END
$$;
