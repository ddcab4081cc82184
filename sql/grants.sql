-- Privileges, granted once every object exists (see README, "Security
-- model"). Readers read; editors write segments.segment, the only table
-- writable by DML; everything else is internal state that only the
-- extension's functions change, as the extension's owner, after checking
-- what the caller may do.
GRANT USAGE ON SCHEMA segments TO segments_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA segments TO segments_reader;
GRANT INSERT, UPDATE, DELETE ON segments.segment TO segments_editor;
GRANT USAGE ON SEQUENCE segments.segment_id_seq TO segments_editor;

-- Keys stay private: a role reads the keys of an entity only if it may
-- SELECT the entity's table.
ALTER TABLE segments.entity_key ENABLE ROW LEVEL SECURITY;
CREATE POLICY entity_key_readable ON segments.entity_key FOR SELECT
    USING (segments._can_read_entity(entity));

-- Internal functions (named _...) are not for PUBLIC. The roles get the
-- ones that public functions, views, policies and triggers call as the
-- caller; each of those checks the caller itself or only reads.
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
                                  '_sync_capture', '_apply_changes') LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO segments_reader', f);
    END LOOP;
END
$$;
