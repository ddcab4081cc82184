-- Definition history: every definition, name, type and schedule a segment
-- has had, with who and when (written by a trigger, read through the view
-- segments.definition_history), and restore_definition to go back.

CREATE TABLE segments.definition_version (
    segment_id bigint NOT NULL REFERENCES segments.segment (id) ON DELETE CASCADE,
    version    integer NOT NULL,
    name       text NOT NULL,
    -- NULL: the same as the version before (a rename or a schedule change
    -- stores no second copy of a definition that may be megabytes).
    definition jsonb,
    type       text NOT NULL,
    schedule   text,
    changed_by regrole,
    changed_at timestamptz NOT NULL,
    PRIMARY KEY (segment_id, version)
);
SELECT pg_catalog.pg_extension_config_dump('segments.definition_version', '');

-- SECURITY DEFINER: the history is internal state, whoever edits.
CREATE FUNCTION segments._segment_record_version() RETURNS trigger
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

CREATE TRIGGER segment_record_version
    AFTER INSERT OR UPDATE OF name, definition, type, schedule ON segments.segment
    FOR EACH ROW EXECUTE FUNCTION segments._segment_record_version();

CREATE VIEW segments.definition_history AS
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

-- Puts back the definition a segment had at a version (a new version, so
-- the history only grows). The usual checks apply: ownership, validation.
CREATE FUNCTION segments.restore_definition(segment bigint, version integer) RETURNS void
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
