-- segments 0.2.0 -> 0.3.0 (ALTER EXTENSION segments UPDATE TO '0.3.0').
-- Keeps every segment, membership and history row; leaves a schema equal
-- to a fresh 0.3.0 install (checked by scripts/upgrade_test.sh). Only what
-- this release changes is here: the functions section holds the functions
-- that are new or changed since 0.2.0 (scripts/upgrade_functions.py with
-- both install scripts); the rest is written by hand.
\echo Use "ALTER EXTENSION segments UPDATE TO '0.3.0'" to load this file. \quit

-- ---- prologue: what CREATE OR REPLACE cannot do -----------------------------

-- _missing_keys reads the entity table as the caller (row-level security).
DROP FUNCTION segments._missing_keys(text, text[]);

-- Changes captured but not applied are kept by pg_dump.
SELECT pg_catalog.pg_extension_config_dump('segments.change_queue', '');

-- Usages of kind 'segment' too, as they were (a restore derives them from
-- the definitions, then the dumped rows replace them, timestamps and all).
SELECT pg_catalog.pg_extension_config_dump('segments.usage_registry', '');

-- Entity names are 1 to 40 characters, the rule register_entity has
-- always applied (the CHECK allowed 41); no registered name is longer.
ALTER TABLE segments.entity DROP CONSTRAINT entity_name_check,
    ADD CONSTRAINT entity_name_check CHECK (name ~ '^[a-z_][a-z0-9_]{0,39}$');

-- Paths: a related table reached through another (register_related's via).
ALTER TABLE segments.related ADD COLUMN via text;
DROP FUNCTION segments.register_related(text, text, regclass, text, text);

-- A version whose definition did not change stores none (NULL: as the
-- version before); the history view and restore_definition resolve it.
ALTER TABLE segments.definition_version ALTER COLUMN definition DROP NOT NULL;
CREATE OR REPLACE VIEW segments.definition_history AS
SELECT f.segment_id, f.version, f.changed_at, f.changed_by,
       lag(f.name) OVER w AS old_name, f.name AS new_name,
       lag(f.definition) OVER w AS old_definition, f.definition AS new_definition,
       lag(f.type) OVER w AS old_type, f.type AS new_type,
       lag(f.schedule) OVER w AS old_schedule, f.schedule AS new_schedule
  FROM (SELECT v.segment_id, v.version, v.changed_at, v.changed_by, v.name, v.type, v.schedule,
               coalesce(v.definition, (SELECT p.definition FROM segments.definition_version p
                                 WHERE p.segment_id OPERATOR(pg_catalog.=) v.segment_id
                                   AND p.version OPERATOR(pg_catalog.<) v.version AND p.definition IS NOT NULL
                                 ORDER BY p.version DESC LIMIT 1)) AS definition
          FROM segments.definition_version v) f
WINDOW w AS (PARTITION BY f.segment_id ORDER BY f.version);
COMMENT ON COLUMN segments.definition_version.definition IS 'Definition at this version; NULL: unchanged since the version before (see view definition_history, which shows it whole).';

-- BEGIN GENERATED FUNCTIONS (scripts/upgrade_functions.py)
CREATE OR REPLACE FUNCTION segments."_activity"() RETURNS TABLE (
	"pid" INT,  /* i32 */
	"database" oid,  /* pg_sys :: Oid */
	"kind" TEXT,  /* String */
	"segments" bigint[],  /* Vec < i64 > */
	"phase" TEXT,  /* String */
	"segments_done" bigint,  /* i64 */
	"segments_total" bigint,  /* i64 */
	"started_at" timestamp with time zone  /* Option < TimestampWithTimeZone > */
)
STRICT VOLATILE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_activity_wrapper';

CREATE OR REPLACE FUNCTION segments._capture() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', '_capture_wrapper';

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
    missing := segments._missing_keys(target.entity, keys, caller::oid);
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

CREATE OR REPLACE FUNCTION segments."_missing_keys"(
	"entity" TEXT, /* & str */
	"keys" TEXT[], /* Vec < String > */
	"caller" oid /* pg_sys :: Oid */
) RETURNS TEXT /* Option < String > */
STRICT  
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_missing_keys_seen_by_wrapper';

CREATE OR REPLACE FUNCTION segments._referenced_segments(definition jsonb) RETURNS SETOF bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT DISTINCT (v #>> '{}')::bigint
      FROM jsonb_path_query(definition, '$.**.segment') AS v
     WHERE jsonb_typeof(v) = 'number'
$$;

CREATE OR REPLACE FUNCTION segments."_restoring"() RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_restoring_wrapper';

CREATE OR REPLACE FUNCTION segments."_schedulers"() RETURNS TABLE (
	"database" oid,  /* pg_sys :: Oid */
	"pid" INT,  /* Option < i32 > */
	"state" TEXT,  /* String */
	"started_at" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"last_pass_started_at" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"last_pass_finished_at" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"last_error" TEXT,  /* Option < String > */
	"last_error_at" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"launcher_pid" INT  /* Option < i32 > */
)
STRICT VOLATILE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_schedulers_wrapper';

CREATE OR REPLACE FUNCTION segments._segment_after_insert() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- A restore brings back what was there.
    IF segments._restoring() THEN
        RETURN NULL;
    END IF;
    PERFORM segments._check_active_limit((SELECT count(*) FROM new_rows WHERE state = 'active'));
    RETURN NULL;
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
    -- pg_restore (a superuser's COPY segments.segment FROM): the row is
    -- taken as it was saved; the tables its definition reads may come later.
    IF TG_OP = 'INSERT' AND segments._restoring() THEN
        RETURN NEW;
    END IF;
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
    -- the history along; any other write is recorded, whatever the statement.
    IF TG_OP = 'INSERT' AND segments._restoring() THEN
        RETURN NULL;
    END IF;
    INSERT INTO segments.definition_version (segment_id, version, name, definition, type, schedule, changed_by, changed_at)
    SELECT NEW.id, coalesce(max(v.version), 0) + 1, NEW.name,
           CASE WHEN TG_OP = 'UPDATE' AND NEW.definition IS NOT DISTINCT FROM OLD.definition THEN NULL
                ELSE NEW.definition END,
           NEW.type, NEW.schedule,
           NEW.updated_by, clock_timestamp()
      FROM segments.definition_version v WHERE v.segment_id = NEW.id;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION segments._segment_sync_capture() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- A restore's dump creates the capture triggers itself.
    IF segments._restoring() THEN
        RETURN NULL;
    END IF;
    PERFORM segments._sync_capture();
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION segments._usage_restored() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF segments._restoring() THEN
        DELETE FROM segments.usage_registry u
         WHERE u.segment_id = NEW.segment_id AND u.kind = NEW.kind AND u.consumer = NEW.consumer;
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION segments."register_related"(
	"entity" TEXT, /* & str */
	"name" TEXT, /* & str */
	"relation" regclass, /* PgRelation */
	"foreign_key" TEXT, /* & str */
	"time_column" TEXT DEFAULT NULL, /* Option < & str > */
	"via" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS void

LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'register_related_wrapper';

CREATE OR REPLACE FUNCTION segments.restore_definition(segment bigint, version integer) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    old jsonb;
BEGIN
    SELECT coalesce(v.definition, (SELECT p.definition FROM segments.definition_version p
                                 WHERE p.segment_id OPERATOR(pg_catalog.=) v.segment_id
                                   AND p.version OPERATOR(pg_catalog.<) v.version AND p.definition IS NOT NULL
                                 ORDER BY p.version DESC LIMIT 1)) INTO old
      FROM segments.definition_version v
     WHERE v.segment_id = restore_definition.segment AND v.version = restore_definition.version;
    IF old IS NULL THEN
        RAISE EXCEPTION 'segment % has no definition version %', segment, version USING ERRCODE = 'undefined_object';
    END IF;
    UPDATE segments.segment s SET definition = old WHERE s.id = restore_definition.segment;
END
$$;

CREATE OR REPLACE FUNCTION segments.trend(segment bigint, since timestamptz DEFAULT now() - interval '30 days',
                               until timestamptz DEFAULT NULL, bucket text DEFAULT NULL)
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
               AND r.finished_at >= trend.since AND (trend.until IS NULL OR r.finished_at <= trend.until)
             ORDER BY r.finished_at;
    ELSE
        RETURN QUERY
            SELECT date_trunc(bucket, r.finished_at) AS b,
                   (array_agg(r.member_count ORDER BY r.finished_at DESC))[1],
                   sum(r.entered)::bigint, sum(r.exited)::bigint
              FROM segments.refresh_run r
             WHERE r.segment_id = trend.segment AND r.status = 'succeeded'
               AND r.finished_at >= trend.since AND (trend.until IS NULL OR r.finished_at <= trend.until)
             GROUP BY 1 ORDER BY 1;
    END IF;
END
$$;

-- END GENERATED FUNCTIONS

-- A restore's usages replace the ones derived from restored definitions.
CREATE TRIGGER usage_restored
    BEFORE INSERT ON segments.usage_registry
    FOR EACH ROW EXECUTE FUNCTION segments._usage_restored();

-- ---- privileges ----------------------------------------------------------------

REVOKE EXECUTE ON FUNCTION segments._restoring() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION segments._usage_restored() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION segments._missing_keys(text, text[], oid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION segments._restoring() TO segments_reader;

-- ---- running in production: what runs, who runs it, what is kept -------------
-- (sql/operations.sql; the functions are in the generated section)

-- Every running refresh, live application and cleanup, manual or
-- scheduled.
CREATE VIEW segments.activity AS
SELECT a.pid, d.datname AS database, a.kind, a.segments, a.phase,
       a.segments_done, a.segments_total, a.started_at,
       s.backend_type, s.usename AS role
  FROM segments._activity() a
  LEFT JOIN pg_catalog.pg_database d ON d.oid OPERATOR(pg_catalog.=) a.database
  LEFT JOIN pg_catalog.pg_stat_activity s ON s.pid OPERATOR(pg_catalog.=) a.pid;

-- The launcher and a scheduler per database.
CREATE VIEW segments.schedulers AS
SELECT d.datname AS database, x.pid, x.state, x.started_at,
       x.last_pass_started_at, x.last_pass_finished_at, x.last_error, x.last_error_at,
       s.query AS doing, x.launcher_pid
  FROM segments._schedulers() x
  LEFT JOIN pg_catalog.pg_database d ON d.oid OPERATOR(pg_catalog.=) x.database
  LEFT JOIN pg_catalog.pg_stat_activity s ON s.pid OPERATOR(pg_catalog.=) x.pid;

-- Every table the extension fills: rows, bytes, its oldest row where rows
-- age, and what bounds it.
CREATE VIEW segments.storage AS
SELECT t.name AS table_name, t.row_count AS rows,
       pg_catalog.pg_total_relation_size(('segments.' OPERATOR(pg_catalog.||) t.name)::pg_catalog.regclass) AS bytes,
       t.oldest, t.retention
  FROM (
    SELECT 'refresh_run' AS name, (SELECT pg_catalog.count(*) FROM segments.refresh_run) AS row_count,
           (SELECT pg_catalog.min(started_at) FROM segments.refresh_run) AS oldest,
           'segments.history_retention (' OPERATOR(pg_catalog.||) segments._setting('segments.history_retention') OPERATOR(pg_catalog.||) ')' AS retention
    UNION ALL
    SELECT 'membership_change' AS name, (SELECT pg_catalog.count(*) FROM segments.membership_change) AS row_count,
           (SELECT pg_catalog.min(at) FROM segments.membership_change) AS oldest,
           'with its refresh run (segments.history_retention)' AS retention
    UNION ALL
    SELECT 'definition_version' AS name, (SELECT pg_catalog.count(*) FROM segments.definition_version) AS row_count,
           (SELECT pg_catalog.min(changed_at) FROM segments.definition_version) AS oldest,
           'the latest version of each segment, and older ones for segments.history_retention' AS retention
    UNION ALL
    SELECT 'change_queue' AS name, (SELECT pg_catalog.count(*) FROM segments.change_queue) AS row_count,
           (SELECT pg_catalog.min(queued_at) FROM segments.change_queue) AS oldest,
           'applied every segments.naptime by the scheduler (or apply_changes()); over 100000 keys of an entity, as one refresh' AS retention
    UNION ALL
    SELECT 'membership' AS name, (SELECT pg_catalog.count(*) FROM segments.membership) AS row_count,
           (SELECT pg_catalog.min(refreshed_at) FROM segments.membership) AS oldest,
           'one row per segment' AS retention
    UNION ALL
    SELECT 'entity_key' AS name, (SELECT pg_catalog.count(*) FROM segments.entity_key) AS row_count,
           NULL::pg_catalog.timestamptz AS oldest,
           'one row per text or uuid key ever seen, until its entity is unregistered' AS retention
    UNION ALL
    SELECT 'related_state' AS name, (SELECT pg_catalog.count(*) FROM segments.related_state) AS row_count,
           (SELECT pg_catalog.min(computed_at) FROM segments.related_state) AS oldest,
           'one row per related condition of active live segments' AS retention
    UNION ALL
    SELECT 'sequence_record' AS name, (SELECT pg_catalog.count(*) FROM segments.sequence_record) AS row_count,
           (SELECT pg_catalog.min(connected_at) FROM segments.sequence_record) AS oldest,
           'one row per connected record, until disconnected' AS retention
    UNION ALL
    SELECT 'similarity_score' AS name, (SELECT pg_catalog.count(*) FROM segments.similarity_score) AS row_count,
           NULL::pg_catalog.timestamptz AS oldest,
           'one row per member of a find_similar segment, until it is deleted' AS retention
    UNION ALL
    SELECT 'usage_registry' AS name, (SELECT pg_catalog.count(*) FROM segments.usage_registry) AS row_count,
           (SELECT pg_catalog.min(since) FROM segments.usage_registry) AS oldest,
           'one row per usage, until removed' AS retention
  ) t;

GRANT SELECT ON segments.activity, segments.schedulers, segments.storage TO segments_reader;
REVOKE EXECUTE ON FUNCTION segments._activity() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION segments._schedulers() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION segments._activity() TO segments_reader;
GRANT EXECUTE ON FUNCTION segments._schedulers() TO segments_reader;

COMMENT ON VIEW segments.activity IS 'Every running refresh, live application and cleanup, manual or scheduled, of any backend or scheduler of the cluster (with the preload).';
COMMENT ON COLUMN segments.activity.pid IS 'The backend or scheduler doing it.';
COMMENT ON COLUMN segments.activity.database IS 'Its database.';
COMMENT ON COLUMN segments.activity.backend_type IS 'client backend, or segments scheduler.';
COMMENT ON COLUMN segments.activity.role IS 'The role it runs as.';
COMMENT ON COLUMN segments.activity.kind IS 'refresh, live or cleanup.';
COMMENT ON COLUMN segments.activity.phase IS 'What it does now: loading, planning, scanning <table>, storing, sequences, exports.';
COMMENT ON COLUMN segments.activity.segments IS 'Its segments (the first 32).';
COMMENT ON COLUMN segments.activity.segments_done IS 'Segments done.';
COMMENT ON COLUMN segments.activity.segments_total IS 'Segments in this run.';
COMMENT ON COLUMN segments.activity.started_at IS 'When it started.';
COMMENT ON VIEW segments.schedulers IS 'The launcher''s view of every database it serves: its scheduler and what it does (with the preload).';
COMMENT ON COLUMN segments.schedulers.database IS 'The database.';
COMMENT ON COLUMN segments.schedulers.pid IS 'Its scheduler (NULL: none running).';
COMMENT ON COLUMN segments.schedulers.state IS 'waiting, starting, idle, running, no extension, extension outdated, withdrawn, or over max_schedulers.';
COMMENT ON COLUMN segments.schedulers.started_at IS 'When the scheduler started.';
COMMENT ON COLUMN segments.schedulers.last_pass_started_at IS 'When it last started a pass.';
COMMENT ON COLUMN segments.schedulers.last_pass_finished_at IS 'When it last finished a pass.';
COMMENT ON COLUMN segments.schedulers.last_error IS 'The last error a step of its passes logged.';
COMMENT ON COLUMN segments.schedulers.last_error_at IS 'When.';
COMMENT ON COLUMN segments.schedulers.doing IS 'What pg_stat_activity shows it running (for roles that may see it).';
COMMENT ON COLUMN segments.schedulers.launcher_pid IS 'The launcher.';
COMMENT ON VIEW segments.storage IS 'Every table the extension fills: rows, bytes, oldest row, and what bounds it.';
COMMENT ON COLUMN segments.storage.table_name IS 'The table, in schema segments.';
COMMENT ON COLUMN segments.storage.rows IS 'Its rows.';
COMMENT ON COLUMN segments.storage.bytes IS 'Its size with indexes and TOAST.';
COMMENT ON COLUMN segments.storage.oldest IS 'Its oldest row, where rows age (NULL otherwise or when empty).';
COMMENT ON COLUMN segments.storage.retention IS 'What bounds it.';
COMMENT ON FUNCTION segments._activity() IS 'Running refreshes, live applications and cleanups from shared memory (internal; see view activity).';
COMMENT ON FUNCTION segments._schedulers() IS 'The launcher''s registry (internal; see view schedulers).';
COMMENT ON FUNCTION segments.register_related(text,text,regclass,text,text,text) IS 'Registers a one-to-many table of an entity (orders, events) with its foreign key, optional time column, and optional via: the related table whose primary key the foreign key references (a path, e.g. accounts, contacts, events). Admins only.';
COMMENT ON COLUMN segments.related.foreign_key IS 'Column holding the entity key (with via: the via table''s primary key).';
COMMENT ON COLUMN segments.related.via IS 'A path: the related table whose primary key foreign_key references (NULL: foreign_key holds the entity key).';
