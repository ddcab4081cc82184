-- Exports: table `target` holds the members of the export's segments (their
-- entity's columns plus segment_name), rewritten after each refresh of one
-- of them in the refresh's own transaction, so readers see the old rows or
-- the new ones. An export is a live usage of each of its segments.

-- create_export and drop_export (src/export.rs) resolve the target as the
-- caller, then run these as the extension with the caller's role: exports
-- are internal state, their target tables belong to their owners.
CREATE FUNCTION segments._create_export(caller regrole, name text, segments bigint[], target text,
                                         traits text[] DEFAULT '{}') RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    entities text[];
    new_id bigint;
    target_name text[];
    missing text;
    key_column text;
BEGIN
    PERFORM segments._require_segments(_create_export.segments);
    IF cardinality(_create_export.segments) = 0 THEN
        RAISE EXCEPTION 'export "%" needs at least one segment', _create_export.name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT FROM segments.export e WHERE e.name = _create_export.name) THEN
        RAISE EXCEPTION 'an export named "%" already exists', _create_export.name USING ERRCODE = 'duplicate_object';
    END IF;
    entities := ARRAY(SELECT DISTINCT s.entity FROM segments.segment s WHERE s.id = ANY (_create_export.segments));
    IF cardinality(entities) > 1 THEN
        RAISE EXCEPTION 'the segments of export "%" group different entities: %', _create_export.name,
            array_to_string(entities, ', ') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    target_name := parse_ident(_create_export.target);
    IF NOT has_schema_privilege(caller::oid, target_name[1], 'CREATE') THEN
        RAISE EXCEPTION 'permission denied for schema %: an export creates its target table as %, who needs CREATE there',
            quote_ident(target_name[1]), caller
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF to_regclass(_create_export.target) IS NOT NULL THEN
        RAISE EXCEPTION 'table % already exists; an export creates its own target table', _create_export.target
            USING ERRCODE = 'duplicate_table';
    END IF;
    _create_export.traits := coalesce(_create_export.traits, '{}');
    SELECT string_agg(t, ', ') INTO missing FROM unnest(_create_export.traits) t
     WHERE NOT EXISTS (SELECT FROM segments.trait r WHERE r.name = t AND r.entity = entities[1]);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'export "%": no trait % of entity %', _create_export.name, missing, entities[1]
            USING ERRCODE = 'undefined_object';
    END IF;
    SELECT string_agg(t, ', ') INTO missing FROM unnest(_create_export.traits) t
     WHERE EXISTS (SELECT FROM pg_attribute a
                    WHERE a.attrelid = format('segments.%I', entities[1] || '_members')::regclass
                      AND a.attname = t AND a.attnum > 0 AND NOT a.attisdropped);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'export "%": trait % is named as a column of the members of entity %', _create_export.name, missing, entities[1]
            USING ERRCODE = 'duplicate_column';
    END IF;
    -- The target has the members view's columns: segment_id, segment_name,
    -- then the entity's; then the traits it carries.
    SELECT e.key_column INTO key_column FROM segments.entity e WHERE e.name = entities[1];
    EXECUTE format('CREATE TABLE %s AS SELECT m.*%s FROM segments.%I m%s WITH NO DATA',
                   array_to_string(ARRAY(SELECT quote_ident(p) FROM unnest(target_name) p), '.'),
                   (SELECT string_agg(', t.' || quote_ident(t), '') FROM unnest(_create_export.traits) t),
                   entities[1] || '_members',
                   CASE WHEN cardinality(_create_export.traits) > 0
                        THEN format(' JOIN segments.%I t ON t.%I = m.%I', entities[1] || '_traits', key_column, key_column)
                        ELSE '' END);
    -- Owned by its creator, with no privileges for anyone else until the
    -- owner grants them.
    EXECUTE format('ALTER TABLE %s OWNER TO %s', _create_export.target, caller);
    INSERT INTO segments.export (name, entity, segments, target, owner, traits)
    VALUES (_create_export.name, entities[1], ARRAY(SELECT DISTINCT unnest(_create_export.segments) ORDER BY 1),
            _create_export.target::regclass, caller, _create_export.traits)
    RETURNING id INTO new_id;
    INSERT INTO segments.usage_registry (segment_id, kind, consumer)
    SELECT DISTINCT s, 'export', _create_export.name FROM unnest(_create_export.segments) s;
    PERFORM segments._rewrite_export(new_id);
    RETURN new_id;
END
$$;

CREATE FUNCTION segments._drop_export(caller regrole, name text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found segments.export;
    target_sql text;
BEGIN
    SELECT * INTO found FROM segments.export e WHERE e.name = _drop_export.name FOR UPDATE;
    IF found.id IS NULL THEN
        RAISE EXCEPTION 'export "%" does not exist', _drop_export.name USING ERRCODE = 'undefined_object';
    END IF;
    IF NOT pg_has_role(caller::oid, found.owner::oid, 'MEMBER') AND NOT pg_has_role(caller::oid, 'segments_admin', 'MEMBER') THEN
        RAISE EXCEPTION 'permission denied for export "%": it is owned by %', found.name, found.owner
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    DELETE FROM segments.export e WHERE e.id = found.id;
    DELETE FROM segments.usage_registry u WHERE u.kind = 'export' AND u.consumer = found.name;
    -- The target may be gone already (dropped by its owner).
    SELECT format('%I.%I', n.nspname, c.relname) INTO target_sql
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = found.target::oid;
    IF target_sql IS NOT NULL THEN
        EXECUTE format('DROP TABLE IF EXISTS %s', target_sql);
    END IF;
END
$$;

-- Adds segments to an export (same entity), recording their usages, and
-- rewrites it; returns how many were added. Owner of the export or admin.
CREATE FUNCTION segments._add_to_export(caller regrole, export text, segments bigint[]) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found segments.export;
    added bigint[];
    wrong text;
BEGIN
    SELECT * INTO found FROM segments.export e WHERE e.name = _add_to_export.export FOR UPDATE;
    IF found.id IS NULL THEN
        RAISE EXCEPTION 'export "%" does not exist', _add_to_export.export USING ERRCODE = 'undefined_object';
    END IF;
    IF NOT pg_has_role(caller::oid, found.owner::oid, 'MEMBER') AND NOT pg_has_role(caller::oid, 'segments_admin', 'MEMBER') THEN
        RAISE EXCEPTION 'permission denied for export "%": it is owned by %', found.name, found.owner
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF found.priority_list IS NOT NULL THEN
        RAISE EXCEPTION 'export "%" holds priority list "%": its segments are the list''s', found.name, found.priority_list
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Drop the export and create it again.';
    END IF;
    PERFORM segments._require_segments(_add_to_export.segments);
    SELECT string_agg(format('segment "%s" is of entity "%s"', s.name, s.entity), ', ') INTO wrong
      FROM segments.segment s WHERE s.id = ANY (_add_to_export.segments) AND s.entity <> found.entity;
    IF wrong IS NOT NULL THEN
        RAISE EXCEPTION 'export "%" is of entity "%": %', found.name, found.entity, wrong USING ERRCODE = 'invalid_parameter_value';
    END IF;
    added := ARRAY(SELECT DISTINCT s FROM unnest(coalesce(_add_to_export.segments, '{}')) s
                    WHERE s IS NOT NULL AND NOT s = ANY (found.segments) ORDER BY 1);
    IF cardinality(added) = 0 THEN
        RETURN 0;
    END IF;
    UPDATE segments.export e SET segments = ARRAY(SELECT DISTINCT x FROM unnest(e.segments || added) x ORDER BY 1)
     WHERE e.id = found.id;
    INSERT INTO segments.usage_registry (segment_id, kind, consumer)
    SELECT s, 'export', found.name FROM unnest(added) s ON CONFLICT ON CONSTRAINT usage_registry_pkey DO NOTHING;
    PERFORM segments._rewrite_export(found.id);
    RETURN cardinality(added);
END
$$;

-- Removes segments from an export, with their usages, and rewrites it;
-- returns how many were removed. The last segment cannot go (drop the
-- export instead).
CREATE FUNCTION segments._remove_from_export(caller regrole, export text, segments bigint[]) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found segments.export;
    removed bigint[];
BEGIN
    SELECT * INTO found FROM segments.export e WHERE e.name = _remove_from_export.export FOR UPDATE;
    IF found.id IS NULL THEN
        RAISE EXCEPTION 'export "%" does not exist', _remove_from_export.export USING ERRCODE = 'undefined_object';
    END IF;
    IF NOT pg_has_role(caller::oid, found.owner::oid, 'MEMBER') AND NOT pg_has_role(caller::oid, 'segments_admin', 'MEMBER') THEN
        RAISE EXCEPTION 'permission denied for export "%": it is owned by %', found.name, found.owner
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF found.priority_list IS NOT NULL THEN
        RAISE EXCEPTION 'export "%" holds priority list "%": its segments are the list''s', found.name, found.priority_list
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Drop the export and create it again.';
    END IF;
    removed := ARRAY(SELECT s FROM unnest(found.segments) s WHERE s = ANY (coalesce(_remove_from_export.segments, '{}')));
    IF cardinality(removed) = 0 THEN
        RETURN 0;
    END IF;
    IF cardinality(removed) = cardinality(found.segments) THEN
        RAISE EXCEPTION 'export "%" would have no segment left', found.name
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Drop the export with segments.drop_export() instead.';
    END IF;
    UPDATE segments.export e SET segments = ARRAY(SELECT x FROM unnest(e.segments) x WHERE NOT x = ANY (removed) ORDER BY 1)
     WHERE e.id = found.id;
    DELETE FROM segments.usage_registry u WHERE u.kind = 'export' AND u.consumer = found.name AND u.segment_id = ANY (removed);
    PERFORM segments._rewrite_export(found.id);
    RETURN cardinality(removed);
END
$$;
