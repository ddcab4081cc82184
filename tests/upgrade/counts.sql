-- Rows of every table that holds user data, and what memberships hold.
SELECT 'segment', count(*), string_agg(format('%s:%s:%s:%s', id, name, member_count, status), ',' ORDER BY id) FROM segments.segment
UNION ALL SELECT 'membership', count(*), string_agg(format('%s:%s:%s', segment_id, member_count, md5(members)), ',' ORDER BY segment_id) FROM segments.membership
UNION ALL SELECT 'refresh_run', count(*), string_agg(format('%s:%s:%s', id, segment_id, member_count), ',' ORDER BY id) FROM segments.refresh_run
UNION ALL SELECT 'membership_change', count(*), md5(string_agg(format('%s:%s:%s', segment_id, key, change), ',' ORDER BY segment_id, key, change)) FROM segments.membership_change
UNION ALL SELECT 'usage_registry', count(*), string_agg(format('%s:%s:%s', segment_id, kind, consumer), ',' ORDER BY segment_id, kind, consumer) FROM segments.usage_registry
UNION ALL SELECT 'export', count(*), string_agg(name, ',') FROM segments.export
UNION ALL SELECT 'export rows', count(*), NULL FROM public.buyers_out
UNION ALL SELECT 'sequence', count(*), string_agg(name, ',') FROM segments.sequence
UNION ALL SELECT 'sequence_record', count(*), md5(string_agg(key, ',' ORDER BY key)) FROM segments.sequence_record
UNION ALL SELECT 'entity', count(*), string_agg(name, ',') FROM segments.entity
UNION ALL SELECT 'related', count(*), string_agg(name, ',') FROM segments.related;
