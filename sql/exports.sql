-- Exports: table `target` holds the members of the export's segments (their
-- entity's columns plus segment_name), rewritten after each refresh of one
-- of them in the refresh's own transaction, so readers see the old rows or
-- the new ones. An export is a live usage of each of its segments.

CREATE FUNCTION segments.create_export(name text, segments bigint[], target text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    entities text[];
    new_id bigint;
    target_name text[];
BEGIN
    PERFORM segments._require_segments(create_export.segments);
    IF cardinality(create_export.segments) = 0 THEN
        RAISE EXCEPTION 'export "%" needs at least one segment', create_export.name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT FROM segments.export e WHERE e.name = create_export.name) THEN
        RAISE EXCEPTION 'an export named "%" already exists', create_export.name USING ERRCODE = 'duplicate_object';
    END IF;
    entities := ARRAY(SELECT DISTINCT s.entity FROM segments.segment s WHERE s.id = ANY (create_export.segments));
    IF cardinality(entities) > 1 THEN
        RAISE EXCEPTION 'the segments of export "%" group different entities: %', create_export.name,
            array_to_string(entities, ', ') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    target_name := parse_ident(create_export.target);
    IF to_regclass(create_export.target) IS NOT NULL THEN
        RAISE EXCEPTION 'table % already exists; an export creates its own target table', create_export.target
            USING ERRCODE = 'duplicate_table';
    END IF;
    -- The target has the members view's columns: segment_id, segment_name, then the entity's.
    EXECUTE format('CREATE TABLE %s AS SELECT * FROM segments.%I WITH NO DATA',
                   array_to_string(ARRAY(SELECT quote_ident(p) FROM unnest(target_name) p), '.'),
                   entities[1] || '_members');
    EXECUTE format('GRANT SELECT ON %s TO segments_reader', create_export.target);
    INSERT INTO segments.export (name, entity, segments, target, owner)
    VALUES (create_export.name, entities[1], ARRAY(SELECT DISTINCT unnest(create_export.segments) ORDER BY 1),
            create_export.target::regclass, quote_ident(current_user)::regrole)
    RETURNING id INTO new_id;
    INSERT INTO segments.usage_registry (segment_id, kind, consumer)
    SELECT DISTINCT s, 'export', create_export.name FROM unnest(create_export.segments) s;
    PERFORM segments._rewrite_export(new_id);
    RETURN new_id;
END
$$;

CREATE FUNCTION segments.drop_export(name text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    gone segments.export;
BEGIN
    DELETE FROM segments.export e WHERE e.name = drop_export.name RETURNING * INTO gone;
    IF gone.id IS NULL THEN
        RAISE EXCEPTION 'export "%" does not exist', drop_export.name USING ERRCODE = 'undefined_object';
    END IF;
    DELETE FROM segments.usage_registry u WHERE u.kind = 'export' AND u.consumer = gone.name;
    EXECUTE format('DROP TABLE IF EXISTS %s', gone.target);
END
$$;
