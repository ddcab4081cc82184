-- Managing segments: everything the Segments page of a CDP does, as SQL.
-- Every function takes arrays so that bulk actions are plain SQL:
--   SELECT segments.deactivate(array_agg(id)) FROM segments.segment WHERE 'spring-2026' = ANY (tags);
-- The lifecycle triggers (lifecycle.sql) validate every write.

-- Refuses ids that are not segments (42704), naming them. A NULL or empty
-- list is no segment: management functions then change nothing.
CREATE FUNCTION segments._require_segments(ids bigint[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    missing text;
BEGIN
    IF ids IS NULL THEN
        RETURN;
    END IF;
    SELECT string_agg(coalesce(i::text, 'NULL'), ', ' ORDER BY i) INTO missing
      FROM unnest(ids) AS i
     WHERE i IS NULL OR NOT EXISTS (SELECT FROM segments.segment s WHERE s.id = i);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'segment % does not exist', missing USING ERRCODE = 'undefined_object';
    END IF;
END
$$;

-- The names of the sequences a segment is connected to.
CREATE FUNCTION segments._connected_sequences(segment_id bigint) RETURNS text[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(array_agg(q.name ORDER BY q.name), '{}')
      FROM segments.sequence_segment c JOIN segments.sequence q ON q.id = c.sequence_id
     WHERE c.segment_id = _connected_sequences.segment_id
$$;

CREATE FUNCTION segments.create_segment(
    name text,
    definition jsonb,
    type text DEFAULT 'dynamic',
    schedule text DEFAULT NULL,
    description text DEFAULT NULL,
    tags text[] DEFAULT '{}',
    priority integer DEFAULT NULL,
    active boolean DEFAULT true
) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id bigint;
BEGIN
    INSERT INTO segments.segment (name, definition, type, schedule, description, tags, priority, state)
    VALUES (create_segment.name, create_segment.definition, create_segment.type, create_segment.schedule,
            create_segment.description, coalesce(create_segment.tags, '{}'), create_segment.priority,
            CASE WHEN create_segment.active THEN 'active' ELSE 'inactive' END)
    RETURNING id INTO new_id;
    RETURN new_id;
END
$$;

-- A segment of one condition.
CREATE FUNCTION segments.quick_segment(name text, entity text, attribute text, op text, value jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp AS $$
    SELECT segments.create_segment(
        quick_segment.name,
        jsonb_build_object('entity', quick_segment.entity, 'rules', jsonb_build_array(jsonb_build_object(
            'where', jsonb_build_object('attribute', quick_segment.attribute, 'op', quick_segment.op)
                     || CASE WHEN quick_segment.value IS NULL OR quick_segment.value = 'null'
                             THEN '{}'::jsonb ELSE jsonb_build_object('value', quick_segment.value) END))))
$$;

-- A copy with everything a person set, named "<name> (copy)" unless named.
CREATE FUNCTION segments.duplicate(segment bigint, name text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    source segments.segment;
    copy_name text := duplicate.name;
    n integer := 1;
    new_id bigint;
BEGIN
    PERFORM segments._require_segments(ARRAY[duplicate.segment]);
    SELECT * INTO source FROM segments.segment s WHERE s.id = duplicate.segment;
    IF copy_name IS NULL THEN
        copy_name := source.name || ' (copy)';
        WHILE EXISTS (SELECT FROM segments.segment s WHERE s.name = copy_name) LOOP
            n := n + 1;
            copy_name := format('%s (copy %s)', source.name, n);
        END LOOP;
    END IF;
    INSERT INTO segments.segment (name, description, entity, definition, type, schedule, tags, priority, move_existing)
    VALUES (copy_name, source.description, source.entity, source.definition, source.type, source.schedule,
            array_remove(source.tags, 'AutoDeactivated'), source.priority, source.move_existing)
    RETURNING id INTO new_id;
    RETURN new_id;
END
$$;

CREATE FUNCTION segments.rename(segment bigint, name text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM segments._require_segments(ARRAY[rename.segment]);
    UPDATE segments.segment s SET name = rename.name WHERE s.id = rename.segment;
END
$$;

-- Activates ("resumes computation of") inactive segments; returns how many.
CREATE FUNCTION segments.activate(segments bigint[]) RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp AS $$
    SELECT segments._require_segments(activate.segments);
    WITH changed AS (
        UPDATE segments.segment s SET state = 'active'
         WHERE s.id = ANY (activate.segments) AND s.state = 'inactive' RETURNING 1)
    SELECT count(*)::integer FROM changed;
$$;

-- What reads a segment and would break or go stale without it: segments
-- (active ones, with only_active), exports and live usages other than
-- sequences, named as in messages: segment "X", export "Y", journey "Z".
CREATE FUNCTION segments._dependent_list(segment_id bigint, only_active boolean DEFAULT false) RETURNS text[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(array_agg(d ORDER BY d), '{}')
      FROM (SELECT CASE u.kind WHEN 'segment' THEN format('segment "%s"', c.name)
                               ELSE format('%s "%s"', u.kind, u.consumer) END AS d
              FROM segments.usage_registry u
              LEFT JOIN segments.segment c ON u.kind = 'segment' AND c.id::text = u.consumer
             WHERE u.segment_id = _dependent_list.segment_id
               AND u.live AND u.kind <> 'sequence'
               AND (u.kind <> 'segment' OR (c.id IS NOT NULL AND (NOT only_active OR c.state = 'active')))) x
$$;

-- Deactivates segments, keeping definition and membership. Returns each
-- with its connected sequences and what reads it (named in a NOTICE and a
-- WARNING too); dry_run changes nothing and says what would happen.
CREATE FUNCTION segments.deactivate(segments bigint[], dry_run boolean DEFAULT false)
RETURNS TABLE (segment_id bigint, name text, connected_sequences text[], dependents text[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    PERFORM segments._require_segments(deactivate.segments);
    IF NOT dry_run THEN
        UPDATE segments.segment s SET state = 'inactive' WHERE s.id = ANY (deactivate.segments) AND s.state = 'active';
    END IF;
    FOR r IN SELECT s.id, s.name, segments._connected_sequences(s.id) AS sequences,
                    segments._dependent_list(s.id, true) AS readers
               FROM segments.segment s WHERE s.id = ANY (deactivate.segments) ORDER BY s.id LOOP
        IF cardinality(r.sequences) > 0 THEN
            RAISE NOTICE 'segment "%" is connected to sequences: %; it will connect no new records',
                r.name, array_to_string(r.sequences, ', ');
        END IF;
        IF cardinality(r.readers) > 0 THEN
            RAISE WARNING 'segment "%" is read by %; they will use its last membership until it is active again',
                r.name, array_to_string(r.readers, ', ');
        END IF;
        segment_id := r.id; name := r.name; connected_sequences := r.sequences; dependents := r.readers;
        RETURN NEXT;
    END LOOP;
END
$$;

CREATE FUNCTION segments.set_type(segments bigint[], type text) RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp AS $$
    SELECT segments._require_segments(set_type.segments);
    WITH changed AS (
        UPDATE segments.segment s SET type = set_type.type
         WHERE s.id = ANY (set_type.segments) AND s.type IS DISTINCT FROM set_type.type RETURNING 1)
    SELECT count(*)::integer FROM changed;
$$;

CREATE FUNCTION segments.set_schedule(segments bigint[], schedule text) RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp AS $$
    SELECT segments._require_segments(set_schedule.segments);
    WITH changed AS (
        UPDATE segments.segment s SET schedule = set_schedule.schedule
         WHERE s.id = ANY (set_schedule.segments) AND s.schedule IS DISTINCT FROM set_schedule.schedule RETURNING 1)
    SELECT count(*)::integer FROM changed;
$$;

-- Adds tags (each once, after the existing ones); returns how many segments changed.
CREATE FUNCTION segments.tag(segments bigint[], tags text[]) RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp AS $$
    SELECT segments._require_segments(tag.segments);
    WITH changed AS (
        UPDATE segments.segment s
           SET tags = s.tags || ARRAY(SELECT DISTINCT t FROM unnest(tag.tags) AS t
                                       WHERE t IS NOT NULL AND NOT t = ANY (s.tags) ORDER BY t)
         WHERE s.id = ANY (tag.segments)
           AND EXISTS (SELECT FROM unnest(tag.tags) AS t WHERE t IS NOT NULL AND NOT t = ANY (s.tags))
        RETURNING 1)
    SELECT count(*)::integer FROM changed;
$$;

CREATE FUNCTION segments.untag(segments bigint[], tags text[]) RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp AS $$
    SELECT segments._require_segments(untag.segments);
    WITH changed AS (
        UPDATE segments.segment s
           SET tags = ARRAY(SELECT t FROM unnest(s.tags) WITH ORDINALITY AS x(t, i)
                             WHERE NOT t = ANY (untag.tags) ORDER BY i)
         WHERE s.id = ANY (untag.segments) AND s.tags && untag.tags
        RETURNING 1)
    SELECT count(*)::integer FROM changed;
$$;

-- Deletes segments with their membership, history and usages. Refused
-- (2BP01) while anything outside the list depends on one of them;
-- segments of the list that depend on each other go together. Returns
-- each with its connected sequences (connections made stay) and what
-- depends on it; dry_run changes nothing and says what would happen.
CREATE FUNCTION segments.delete(segments bigint[], dry_run boolean DEFAULT false)
RETURNS TABLE (segment_id bigint, name text, connected_sequences text[], dependents text[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    remaining bigint[];
    deletable bigint[];

BEGIN
    PERFORM segments._require_segments(delete.segments);
    IF dry_run THEN
        RETURN QUERY
            SELECT s.id, s.name, segments._connected_sequences(s.id),
                   ARRAY(SELECT d FROM unnest(segments._dependent_list(s.id)) d
                          WHERE d NOT IN (SELECT format('segment "%s"', o.name) FROM segments.segment o
                                           WHERE o.id = ANY (delete.segments)))
              FROM segments.segment s WHERE s.id = ANY (delete.segments) ORDER BY s.id;
        RETURN;
    END IF;
    FOR r IN SELECT s.id, s.name, segments._connected_sequences(s.id) AS sequences
               FROM segments.segment s WHERE s.id = ANY (delete.segments) ORDER BY s.id LOOP
        IF cardinality(r.sequences) > 0 THEN
            RAISE NOTICE 'segment "%" is connected to sequences: %; records already connected stay connected',
                r.name, array_to_string(r.sequences, ', ');
        END IF;
        segment_id := r.id; name := r.name; connected_sequences := r.sequences; dependents := '{}';
        RETURN NEXT;
    END LOOP;
    remaining := ARRAY(SELECT DISTINCT unnest(delete.segments));
    -- Dependents first: a segment goes once nothing left in the list reads it.
    LOOP
        EXIT WHEN cardinality(remaining) = 0;
        deletable := ARRAY(
            SELECT s.id FROM segments.segment s
             WHERE s.id = ANY (remaining)
               AND NOT EXISTS (SELECT FROM segments.usage_registry u
                                WHERE u.segment_id = s.id AND u.kind = 'segment'
                                  AND u.consumer = ANY (remaining::text[]) AND u.consumer <> s.id::text));
        IF cardinality(deletable) = 0 THEN
            deletable := remaining;  -- a cycle cannot be saved; let the trigger report what is left
        END IF;
        DELETE FROM segments.segment s WHERE s.id = ANY (deletable);
        remaining := ARRAY(SELECT unnest(remaining) EXCEPT SELECT unnest(deletable));
    END LOOP;
END
$$;

-- never_expire: admins exclude segments from the unused-segment cleanup.
CREATE FUNCTION segments.disable_auto_cleanup(segments bigint[]) RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp AS $$
    SELECT segments._require_segments(disable_auto_cleanup.segments);
    WITH changed AS (
        UPDATE segments.segment s SET never_expire = true
         WHERE s.id = ANY (disable_auto_cleanup.segments) AND NOT s.never_expire RETURNING 1)
    SELECT count(*)::integer FROM changed;
$$;

CREATE FUNCTION segments.enable_auto_cleanup(segments bigint[]) RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp AS $$
    SELECT segments._require_segments(enable_auto_cleanup.segments);
    WITH changed AS (
        UPDATE segments.segment s SET never_expire = false
         WHERE s.id = ANY (enable_auto_cleanup.segments) AND s.never_expire RETURNING 1)
    SELECT count(*)::integer FROM changed;
$$;

-- Member counts over time, from the refresh history: one point per
-- successful refresh between since and until (NULL: no upper bound, so the
-- refreshes of the current transaction, which finish after its now(), are
-- included), or with bucket (hour, day, week, month) one point per bucket:
-- its last count and the entered and exited totals.
CREATE FUNCTION segments.trend(segment bigint, since timestamptz DEFAULT now() - interval '30 days',
                               until timestamptz DEFAULT NULL, bucket text DEFAULT NULL)
RETURNS TABLE (at timestamptz, member_count bigint, entered bigint, exited bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM segments._require_segments(ARRAY[trend.segment]);
    IF bucket IS NOT NULL AND bucket NOT IN ('hour', 'day', 'week', 'month') THEN
        RAISE EXCEPTION 'bucket "%" is not hour, day, week or month', bucket USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF bucket IS NULL THEN
        RETURN QUERY
            SELECT r.finished_at, r.member_count, r.entered, r.exited FROM segments.refresh_run r
             WHERE r.segment_id = trend.segment AND r.status = 'succeeded'
               AND r.finished_at >= trend.since AND (trend.until IS NULL OR r.finished_at <= trend.until)
             ORDER BY r.finished_at;
    ELSE
        RETURN QUERY
            SELECT date_trunc(bucket, r.finished_at) AS b,
                   (array_agg(r.member_count ORDER BY r.finished_at DESC))[1],
                   sum(r.entered)::bigint, sum(r.exited)::bigint
              FROM segments.refresh_run r
             WHERE r.segment_id = trend.segment AND r.status = 'succeeded'
               AND r.finished_at >= trend.since AND (trend.until IS NULL OR r.finished_at <= trend.until)
             GROUP BY 1 ORDER BY 1;
    END IF;
END
$$;

-- Everything a person sees on the segment list, one row per segment.
CREATE VIEW segments.segment_list AS
SELECT s.id, s.name, s.description, s.entity, s.type, s.state, s.status, s.member_count,
       s.last_refreshed_at, s.last_error, s.schedule, s.tags, s.never_expire, s.priority, s.owner,
       s.created_at, s.updated_at,
       to_timestamp(segments._next_refresh_epoch(
           s.type, s.state, s.schedule, extract(epoch FROM s.last_refreshed_at)::float8,
           extract(epoch FROM s.created_at)::float8, s.needs_refresh)) AS next_refresh_at,
       (SELECT count(*) FROM segments.usage_registry u WHERE u.segment_id = s.id AND u.live) AS usage_count,
       s.consecutive_failures,
       (SELECT count(*) FROM segments.segment a WHERE a.state = 'active') AS active_segments,
       segments._active_limit() AS max_active_segments
  FROM segments.segment s;

-- Every usage of every segment; a segment reading another shows by name.
CREATE VIEW segments.usage AS
SELECT u.segment_id, u.kind,
       CASE WHEN u.kind = 'segment' THEN coalesce(c.name, u.consumer) ELSE u.consumer END AS consumer,
       u.live, u.since
  FROM segments.usage_registry u
  LEFT JOIN segments.segment c ON u.kind = 'segment' AND c.id::text = u.consumer;
