-- Privileges, granted once every object exists. Readers read; editors
-- write segments and what refreshing them writes; admins also register
-- entities. never_expire is guarded by the lifecycle trigger.
GRANT USAGE ON SCHEMA segments TO segments_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA segments TO segments_reader;
GRANT INSERT, UPDATE, DELETE ON
    segments.segment, segments.membership, segments.entity_key, segments.refresh_run,
    segments.membership_change, segments.usage_registry, segments.sequence, segments.sequence_segment,
    segments.export, segments.scheduler_state, segments.sequence_record, segments.similarity_score
    TO segments_editor;
GRANT INSERT, UPDATE, DELETE ON segments.entity, segments.related TO segments_admin;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA segments TO segments_editor;
