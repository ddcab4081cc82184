-- Definition history: every definition, name, type and schedule a segment
-- has had, with who and when (written by a trigger, read through the view
-- segments.definition_history), and restore_definition to go back.

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
    SELECT NEW.id, coalesce(max(v.version), 0) + 1, NEW.name, NEW.definition, NEW.type, NEW.schedule,
           NEW.updated_by, clock_timestamp()
      FROM segments.definition_version v WHERE v.segment_id = NEW.id;
    RETURN NULL;
END
$$;

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

-- Puts back the definition a segment had at a version (a new version, so
-- the history only grows). The usual checks apply: ownership, validation.
CREATE FUNCTION segments.restore_definition(segment bigint, version integer) RETURNS void
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
