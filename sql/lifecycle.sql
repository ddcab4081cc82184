-- Lifecycle of a segment row. Apps may INSERT, UPDATE and DELETE
-- segments.segment directly; these triggers make that path obey the same
-- rules as the functions in manage.sql.

-- Members of segments_admin, and superusers, may change never_expire.
CREATE FUNCTION segments._is_admin() RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.pg_has_role(current_user, 'segments_admin', 'MEMBER')
        OR coalesce((SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user), false)
$$;

-- Ownership works like PostgreSQL objects: the owner, a member of the
-- owning role, segments_admin or a superuser may change an object.
CREATE FUNCTION segments._may_change(owner regrole) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.pg_has_role(current_user, owner::oid, 'MEMBER') OR segments._is_admin()
$$;

-- Refuses (42501) a change to an object the current role may not change.
CREATE FUNCTION segments._require_may_change(what text, name text, owner regrole) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT segments._may_change(owner) THEN
        RAISE EXCEPTION 'permission denied for % "%": it is owned by %, and only its owner, a member of that role, segments_admin or a superuser may change it',
            what, name, owner
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;

-- The ids of the segments a (stored, normalized) definition refers to.
CREATE FUNCTION segments._referenced_segments(definition jsonb) RETURNS SETOF bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT DISTINCT (v #>> '{}')::bigint
      FROM jsonb_path_query(definition, '$.**.segment') AS v
     WHERE jsonb_typeof(v) = 'number'
$$;

CREATE FUNCTION segments._segment_before_write() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- The extension's own writes (refresh results, set_owner) may set the
    -- columns it maintains; a user's DML never does.
    internal boolean := segments._internal_write();
    restoring boolean := TG_OP = 'INSERT' AND NOT internal
        AND coalesce((SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user), false);
BEGIN
    -- pg_restore (a superuser's COPY segments.segment FROM): the row is
    -- taken as it was saved; the tables its definition reads may come later.
    IF TG_OP = 'INSERT' AND segments._restoring() THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE' AND NOT internal THEN
        PERFORM segments._require_may_change('segment', OLD.name, OLD.owner);
        IF NEW.owner IS DISTINCT FROM OLD.owner THEN
            RAISE EXCEPTION 'column owner of segment "%" is maintained by segments; use segments.set_owner()', OLD.name
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF (NEW.status, NEW.member_count, NEW.last_refreshed_at, NEW.last_error, NEW.rule_counts,
            NEW.needs_refresh, NEW.created_at, NEW.updated_at, NEW.updated_by, NEW.id, NEW.consecutive_failures)
           IS DISTINCT FROM
           (OLD.status, OLD.member_count, OLD.last_refreshed_at, OLD.last_error, OLD.rule_counts,
            OLD.needs_refresh, OLD.created_at, OLD.updated_at, OLD.updated_by, OLD.id, OLD.consecutive_failures) THEN
            RAISE EXCEPTION 'segment "%": id, status, member_count, last_refreshed_at, last_error, rule_counts, needs_refresh, created_at, updated_at, updated_by and consecutive_failures are maintained by segments and cannot be set',
                OLD.name
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    END IF;
    IF TG_OP = 'INSERT' AND NOT internal AND NOT restoring THEN
        -- A new segment belongs to its creator and starts unrefreshed,
        -- whatever the row names. (A superuser's INSERT is a restore, e.g.
        -- pg_restore, and keeps the values it brings.)
        NEW.owner := quote_ident(current_user)::regrole;
        NEW.status := 'not_refreshed';
        NEW.member_count := NULL;
        NEW.last_refreshed_at := NULL;
        NEW.last_error := NULL;
        NEW.rule_counts := NULL;
        NEW.needs_refresh := true;
        NEW.created_at := now();
        NEW.updated_at := now();
        NEW.updated_by := quote_ident(current_user)::regrole;
        NEW.consecutive_failures := 0;
    END IF;

    IF NEW.type IS NULL OR NEW.type NOT IN ('static', 'dynamic') THEN
        RAISE EXCEPTION 'segment "%": type "%" is not static or dynamic', NEW.name, NEW.type
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NEW.state IS NULL OR NEW.state NOT IN ('active', 'inactive') THEN
        RAISE EXCEPTION 'segment "%": state "%" is not active or inactive', NEW.name, NEW.state
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (TG_OP = 'INSERT' OR NEW.name IS DISTINCT FROM OLD.name)
       AND EXISTS (SELECT FROM segments.segment s WHERE s.name = NEW.name AND s.id <> NEW.id) THEN
        RAISE EXCEPTION 'a segment named "%" already exists', NEW.name
            USING ERRCODE = 'duplicate_object';
    END IF;

    IF TG_OP = 'INSERT' THEN
        NEW.owner := coalesce(NEW.owner, quote_ident(current_user)::regrole);
        NEW.created_at := coalesce(NEW.created_at, now());
    ELSIF NEW.type IS DISTINCT FROM OLD.type THEN
        -- Static segments refresh only when asked; dynamic ones follow a schedule.
        IF NEW.type = 'static' THEN
            NEW.schedule := 'manual';
        ELSIF NEW.schedule = 'manual' THEN
            NEW.schedule := 'system';
        END IF;
    END IF;
    IF TG_OP = 'INSERT' OR NEW.schedule IS DISTINCT FROM OLD.schedule OR NEW.type IS DISTINCT FROM OLD.type THEN
        PERFORM segments._check_schedule(NEW.name, NEW.schedule, NEW.type = 'dynamic');
    END IF;

    IF NOT internal AND ((TG_OP = 'INSERT' AND NEW.never_expire)
       OR (TG_OP = 'UPDATE' AND NEW.never_expire IS DISTINCT FROM OLD.never_expire)) THEN
        IF NOT segments._is_admin() THEN
            RAISE EXCEPTION 'only members of segments_admin may change never_expire (segment "%")', NEW.name
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    END IF;

    IF TG_OP = 'UPDATE' AND OLD.state = 'inactive' AND NEW.state = 'active' THEN
        -- Resuming: no longer auto-deactivated, and due for computation.
        NEW.tags := array_remove(NEW.tags, 'AutoDeactivated');
        NEW.needs_refresh := true;
    END IF;

    IF TG_OP = 'INSERT' OR NEW.definition IS DISTINCT FROM OLD.definition THEN
        -- Refuses a bad definition (22023, 42703, 42P01) naming its JSON path,
        -- and stores segment references by id so that renames never break them.
        NEW.definition := segments._check_definition(NEW.definition::text, NEW.id);
        IF NEW.entity IS NOT NULL AND NEW.entity IS DISTINCT FROM NEW.definition ->> 'entity' THEN
            RAISE EXCEPTION 'segment "%": column entity is "%" but the definition is of entity "%"',
                NEW.name, NEW.entity, NEW.definition ->> 'entity'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        NEW.entity := NEW.definition ->> 'entity';
        NEW.needs_refresh := true;
    END IF;

    IF TG_OP = 'INSERT' THEN
        -- A restore brings its own timestamps and counts; a new row has the defaults.
        NEW.updated_by := coalesce(NEW.updated_by, quote_ident(current_user)::regrole);
    ELSIF NEW.definition IS DISTINCT FROM OLD.definition THEN
        -- Counts describe the old rules until the next refresh.
        NEW.rule_counts := NULL;
    END IF;

    -- updated_at tracks what people change, not what refreshes write.
    IF TG_OP = 'UPDATE'
       AND (NEW.name, NEW.description, NEW.definition, NEW.type, NEW.state, NEW.schedule,
            NEW.tags, NEW.never_expire, NEW.priority, NEW.move_existing)
           IS DISTINCT FROM
           (OLD.name, OLD.description, OLD.definition, OLD.type, OLD.state, OLD.schedule,
            OLD.tags, OLD.never_expire, OLD.priority, OLD.move_existing) THEN
        NEW.updated_at := now();
        NEW.updated_by := quote_ident(current_user)::regrole;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER segment_before_write
    BEFORE INSERT OR UPDATE ON segments.segment
    FOR EACH ROW EXECUTE FUNCTION segments._segment_before_write();

-- Segment references are usages of kind 'segment': they keep the
-- referenced segment in use and block its deletion.
-- SECURITY DEFINER: usages are internal state, written only by the
-- extension (its owner), whoever edits the segment.
CREATE FUNCTION segments._segment_track_references() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM segments.usage_registry WHERE kind = 'segment' AND consumer = OLD.id::text AND TG_OP <> 'INSERT';
    IF TG_OP <> 'DELETE' THEN
        DELETE FROM segments.usage_registry WHERE kind = 'segment' AND consumer = NEW.id::text;
        INSERT INTO segments.usage_registry (segment_id, kind, consumer)
        SELECT r, 'segment', NEW.id::text FROM segments._referenced_segments(NEW.definition) AS r;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER segment_track_references
    AFTER INSERT OR UPDATE OF definition OR DELETE ON segments.segment
    FOR EACH ROW EXECUTE FUNCTION segments._segment_track_references();

-- A restore brings the usages back as they were: a usage the trigger above
-- derived from a restored definition gives way to the dumped row. (A dump
-- made by 0.2.0 holds no usages of kind 'segment'; those keep the derived
-- one.)
CREATE FUNCTION segments._usage_restored() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF segments._restoring() THEN
        DELETE FROM segments.usage_registry u
         WHERE u.segment_id = NEW.segment_id AND u.kind = NEW.kind AND u.consumer = NEW.consumer;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER usage_restored
    BEFORE INSERT ON segments.usage_registry
    FOR EACH ROW EXECUTE FUNCTION segments._usage_restored();

-- What keeps a segment from being deleted: other segments, exports and
-- live usages other than sequences (sequence connections stay behind).
CREATE FUNCTION segments._dependents(segment_id bigint) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT string_agg(
               CASE u.kind WHEN 'segment' THEN format('segment "%s"', c.name)
                           ELSE format('%s "%s"', u.kind, u.consumer) END,
               ', ' ORDER BY u.kind, u.consumer)
      FROM segments.usage_registry u
      LEFT JOIN segments.segment c ON u.kind = 'segment' AND c.id::text = u.consumer
     WHERE u.segment_id = _dependents.segment_id
       AND u.live AND u.kind <> 'sequence'
       AND (u.kind <> 'segment' OR c.id IS NOT NULL)
$$;

CREATE FUNCTION segments._segment_before_delete() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    dependents text := segments._dependents(OLD.id);
BEGIN
    IF NOT segments._internal_write() THEN
        PERFORM segments._require_may_change('segment', OLD.name, OLD.owner);
    END IF;
    IF dependents IS NOT NULL THEN
        RAISE EXCEPTION 'segment "%" cannot be deleted: it is used by %', OLD.name, dependents
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = 'Change or delete the dependents first.';
    END IF;
    RETURN OLD;
END
$$;

CREATE TRIGGER segment_before_delete
    BEFORE DELETE ON segments.segment
    FOR EACH ROW EXECUTE FUNCTION segments._segment_before_delete();

-- The cap on active segments: segments.max_active_segments when a session
-- or the configuration sets it, else the limit stored by set_limit(), else
-- the setting's default.
CREATE FUNCTION segments._active_limit() RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN coalesce((SELECT s.source FROM pg_catalog.pg_settings s
                                WHERE s.name = 'segments.max_active_segments'), 'default') <> 'default'
                THEN current_setting('segments.max_active_segments')::bigint
                ELSE coalesce((SELECT l.max_active_segments FROM segments.limits l),
                              segments._setting('segments.max_active_segments')::bigint) END
$$;

-- The cap on active segments: a WARNING from 90% of it, an error past it.
CREATE FUNCTION segments._check_active_limit(activated bigint) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cap bigint := segments._active_limit();
    active bigint;
BEGIN
    IF activated = 0 THEN
        RETURN;
    END IF;
    SELECT count(*) INTO active FROM segments.segment WHERE state = 'active';
    IF active > cap THEN
        RAISE EXCEPTION 'this would make % segments active, more than segments.max_active_segments (%)', active, cap
            USING ERRCODE = 'program_limit_exceeded',
                  HINT = 'Deactivate or delete segments that are no longer needed.';
    ELSIF active >= ceil(cap * 0.9) THEN
        RAISE WARNING '% segments are active, % of segments.max_active_segments (%)',
            active, round(100.0 * active / cap) || '%', cap;
    END IF;
END
$$;

CREATE FUNCTION segments._segment_after_insert() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- A restore brings back what was there.
    IF segments._restoring() THEN
        RETURN NULL;
    END IF;
    PERFORM segments._check_active_limit((SELECT count(*) FROM new_rows WHERE state = 'active'));
    RETURN NULL;
END
$$;

CREATE FUNCTION segments._segment_after_update() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM segments._check_active_limit((
        SELECT count(*) FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.state = 'active' AND o.state = 'inactive'));
    RETURN NULL;
END
$$;

CREATE TRIGGER segment_active_limit_insert
    AFTER INSERT ON segments.segment REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION segments._segment_after_insert();

CREATE TRIGGER segment_active_limit_update
    AFTER UPDATE ON segments.segment REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION segments._segment_after_update();
