-- Roles: readers read views and memberships; editors create, edit, refresh
-- and delete segments; admins also change never_expire and the limits.
-- Each role includes the one below it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'segments_reader') THEN
        CREATE ROLE segments_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'segments_editor') THEN
        CREATE ROLE segments_editor NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'segments_admin') THEN
        CREATE ROLE segments_admin NOLOGIN;
    END IF;
    -- Sales: only sequence managers (and admins) create, activate,
    -- connect, disconnect and drop sequences.
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'segments_sequence_manager') THEN
        CREATE ROLE segments_sequence_manager NOLOGIN;
    END IF;
END
$$;
GRANT segments_reader TO segments_editor;
GRANT segments_editor TO segments_admin;
GRANT segments_reader TO segments_sequence_manager;
GRANT segments_sequence_manager TO segments_admin;
