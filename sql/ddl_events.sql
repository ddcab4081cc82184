-- Members views follow their tables: released before an ALTER TABLE of a
-- registered table, made again from its new columns when it ends.
CREATE FUNCTION segments._members_view_release() RETURNS event_trigger
LANGUAGE c AS 'MODULE_PATHNAME', '_members_view_release_wrapper';
CREATE FUNCTION segments._members_view_restore() RETURNS event_trigger
LANGUAGE c AS 'MODULE_PATHNAME', '_members_view_restore_wrapper';
CREATE EVENT TRIGGER segments_members_view_release ON ddl_command_start
    WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION segments._members_view_release();
CREATE EVENT TRIGGER segments_members_view_restore ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION segments._members_view_restore();
