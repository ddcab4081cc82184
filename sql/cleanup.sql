-- Usage tracking and the unused-segment cleanup. A segment is unused when
-- it is active, not never_expire, has no live usage, and was created or
-- last updated longer ago than `older_than` (default segments.unused_after).

-- Refuses a kind that is not in segments.usage_kind, or that only the
-- extension records.
CREATE FUNCTION segments._check_usage_kind(kind text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    internal boolean := (SELECT k.recorded_by_segments FROM segments.usage_kind k WHERE k.kind = _check_usage_kind.kind);
BEGIN
    IF internal IS NULL THEN
        RAISE EXCEPTION 'usage kind "%" is not one of %', kind,
                        (SELECT string_agg(k.kind, ', ' ORDER BY k.kind) FROM segments.usage_kind k)
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF internal THEN
        RAISE EXCEPTION 'usages of kind "%" are recorded by segments itself; change the segment, export or sequence instead', kind
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- add_usage and remove_usage (src/api/usage.rs) check the caller, then run
-- these as the extension: usages are internal state.
CREATE FUNCTION segments._add_usage(segment bigint, kind text, consumer text, live boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM segments._require_segments(ARRAY[_add_usage.segment]);
    PERFORM segments._check_usage_kind(_add_usage.kind);
    IF consumer IS NULL OR btrim(consumer) = '' THEN
        RAISE EXCEPTION 'a usage needs a consumer' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO segments.usage_registry (segment_id, kind, consumer, live)
    VALUES (_add_usage.segment, _add_usage.kind, _add_usage.consumer, coalesce(_add_usage.live, true))
    ON CONFLICT ON CONSTRAINT usage_registry_pkey DO UPDATE SET live = EXCLUDED.live;
END
$$;

CREATE FUNCTION segments._remove_usage(segment bigint, kind text, consumer text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM segments._require_segments(ARRAY[_remove_usage.segment]);
    PERFORM segments._check_usage_kind(_remove_usage.kind);
    -- A priority list's usages go with the list.
    IF _remove_usage.kind = 'campaign' AND EXISTS (
           SELECT FROM segments.priority_list l
            WHERE 'priority list ' || l.name = _remove_usage.consumer AND _remove_usage.segment = ANY (l.segments)) THEN
        RAISE EXCEPTION 'the usage of segment % by "%" is its priority list''s: drop the list with segments.drop_priority_list()',
            segment, consumer USING ERRCODE = 'dependent_objects_still_exist';
    END IF;
    DELETE FROM segments.usage_registry u
     WHERE u.segment_id = _remove_usage.segment AND u.kind = _remove_usage.kind AND u.consumer = _remove_usage.consumer;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'segment % has no usage of kind "%" by "%"', segment, kind, consumer
            USING ERRCODE = 'undefined_object';
    END IF;
END
$$;

CREATE FUNCTION segments.deactivate_unused(older_than interval DEFAULT NULL, dry_run boolean DEFAULT false)
RETURNS TABLE (segment_id bigint, name text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cutoff timestamptz := now() - coalesce(older_than, segments._setting('segments.unused_after')::interval);
BEGIN
    IF dry_run THEN
        RETURN QUERY
            SELECT s.id, s.name FROM segments.segment s
             WHERE s.state = 'active' AND NOT s.never_expire AND s.updated_at < cutoff
               AND segments._may_change(s.owner)
               AND NOT EXISTS (SELECT FROM segments.usage_registry u WHERE u.segment_id = s.id AND u.live)
             ORDER BY s.id;
    ELSE
        RETURN QUERY
            WITH deactivated AS (
                UPDATE segments.segment s
                   SET state = 'inactive',
                       tags = CASE WHEN 'AutoDeactivated' = ANY (s.tags) THEN s.tags
                                   ELSE s.tags || 'AutoDeactivated'::text END
                 WHERE s.state = 'active' AND NOT s.never_expire AND s.updated_at < cutoff
               AND segments._may_change(s.owner)
                   AND NOT EXISTS (SELECT FROM segments.usage_registry u WHERE u.segment_id = s.id AND u.live)
                RETURNING s.id, s.name)
            SELECT d.id, d.name FROM deactivated d ORDER BY d.id;
    END IF;
END
$$;
