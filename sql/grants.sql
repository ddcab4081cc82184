-- Privileges, granted once every object exists.
GRANT USAGE ON SCHEMA segments TO segments_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA segments TO segments_reader;
GRANT INSERT, UPDATE, DELETE ON segments.segment, segments.membership, segments.entity_key
    TO segments_editor;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA segments TO segments_editor;
