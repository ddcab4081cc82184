-- Live segments, the SQL side: capture follows the live segments.
-- Inserts, deletes and TRUNCATE are captured by segments._capture(),
-- updates of the columns live segments read row by row by
-- segments._capture_row(): C trigger functions, neither SECURITY DEFINER
-- (src/engine/live/capture.rs). segments._sync_capture() (src/engine/live/
-- install.rs) installs them on a table when the first live segment needs
-- it and removes them with the last.
CREATE FUNCTION segments._segment_sync_capture() RETURNS trigger
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

CREATE TRIGGER segment_sync_capture
    AFTER INSERT OR UPDATE OF schedule, state, definition OR DELETE ON segments.segment
    FOR EACH STATEMENT EXECUTE FUNCTION segments._segment_sync_capture();
