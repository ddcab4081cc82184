-- What runs, who runs it, and how much the extension keeps (README,
-- Running in production). The functions read shared memory
-- (src/api/operations.rs): every backend and scheduler of the cluster.

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
    SELECT 'capture_slot' AS name, (SELECT pg_catalog.count(*) FROM segments.capture_slot) AS row_count,
           (SELECT pg_catalog.min(created_at) FROM segments.capture_slot) AS oldest,
           'one row while segments.capture = wal and live segments are active (the slot''s decoded position), dropped with the slot' AS retention
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
    UNION ALL
    SELECT 'trait_value' AS name, (SELECT pg_catalog.count(*) FROM segments.trait_value) AS row_count,
           NULL::pg_catalog.timestamptz AS oldest,
           'one row per trait and record with related rows, replaced by each refresh_traits' AS retention
    UNION ALL
    SELECT 'feed_batch' AS name, (SELECT pg_catalog.count(*) FROM segments.feed_batch) AS row_count,
           (SELECT pg_catalog.min(at) FROM segments.feed_batch) AS oldest,
           'one row per fed segment and transaction, until every feed of it acknowledged it, at most segments.feed_retention (' OPERATOR(pg_catalog.||) segments._setting('segments.feed_retention') OPERATOR(pg_catalog.||) ')' AS retention
  ) t
UNION ALL
-- WAL capture: the WAL its slot keeps (bytes) and how far behind its last
-- decoding is (oldest: when the position the slot restarts from was written
-- is not known; NULL).
SELECT 'slot ' OPERATOR(pg_catalog.||) s.slot_name AS table_name, NULL AS rows,
       CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL
            ELSE pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.restart_lsn)::pg_catalog.int8 END AS bytes,
       NULL AS oldest,
       'WAL kept for segments.capture = wal: ' OPERATOR(pg_catalog.||)
       CASE WHEN s.wal_status OPERATOR(pg_catalog.=) 'lost' THEN 'invalidated (the scheduler makes it again and refreshes the live segments)'
            ELSE pg_catalog.pg_size_pretty(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), c.decoded_upto)) OPERATOR(pg_catalog.||)
                 ' not yet applied; at most max_slot_wal_keep_size (' OPERATOR(pg_catalog.||) pg_catalog.current_setting('max_slot_wal_keep_size') OPERATOR(pg_catalog.||) ')' END AS retention
  FROM pg_catalog.pg_replication_slots s
  JOIN segments.capture_slot c ON c.slot_name OPERATOR(pg_catalog.=) s.slot_name
 WHERE s.datoid OPERATOR(pg_catalog.=) (SELECT oid FROM pg_catalog.pg_database WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database());
