-- Sales sequences: records that enter a connected segment start its
-- sequence (see src/sequence.rs for who goes where).

-- The sequence, which `caller` must be allowed to change (42501 otherwise).
CREATE FUNCTION segments._require_sequence(sequence bigint, caller regrole) RETURNS segments.sequence
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found segments.sequence;
BEGIN
    SELECT * INTO found FROM segments.sequence q WHERE q.id = _require_sequence.sequence;
    IF found.id IS NULL THEN
        RAISE EXCEPTION 'sequence % does not exist', coalesce(sequence::text, 'NULL') USING ERRCODE = 'undefined_object';
    END IF;
    IF NOT pg_has_role(caller::oid, found.owner::oid, 'MEMBER') AND NOT pg_has_role(caller::oid, 'segments_admin', 'MEMBER') THEN
        RAISE EXCEPTION 'permission denied for sequence "%": it is owned by %', found.name, found.owner
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN found;
END
$$;

-- Refuses (42501) segments `caller` may not change, naming them and their owners.
CREATE FUNCTION segments._require_segments_changeable(ids bigint[], caller regrole) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    refused text;
BEGIN
    SELECT string_agg(format('segment "%s" (owned by %s)', s.name, s.owner), ', ' ORDER BY s.id) INTO refused
      FROM segments.segment s
     WHERE s.id = ANY (ids)
       AND NOT pg_has_role(caller::oid, s.owner::oid, 'MEMBER')
       AND NOT pg_has_role(caller::oid, 'segments_admin', 'MEMBER');
    IF refused IS NOT NULL THEN
        RAISE EXCEPTION 'permission denied for %', refused USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;

-- create_sequence, connect_sequence, disconnect_sequence and
-- connect_records (src/sequence.rs) run these as the extension with the
-- caller's role: sequences and their records are internal state.
CREATE FUNCTION segments._create_sequence(caller regrole, name text, entity text) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id bigint;
BEGIN
    IF NOT EXISTS (SELECT FROM segments.entity e WHERE e.name = _create_sequence.entity) THEN
        RAISE EXCEPTION 'entity "%" is not registered', _create_sequence.entity USING ERRCODE = 'undefined_table';
    END IF;
    IF _create_sequence.name IS NULL OR btrim(_create_sequence.name) = '' THEN
        RAISE EXCEPTION 'a sequence needs a name' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT FROM segments.sequence q WHERE q.name = _create_sequence.name) THEN
        RAISE EXCEPTION 'a sequence named "%" already exists', _create_sequence.name USING ERRCODE = 'duplicate_object';
    END IF;
    INSERT INTO segments.sequence (name, entity, owner) VALUES (_create_sequence.name, _create_sequence.entity, caller)
    RETURNING id INTO new_id;
    RETURN new_id;
END
$$;

-- Connects segments to a sequence; their current members are connected
-- right away, as if they had just entered. Returns how many segments were
-- newly connected.
CREATE FUNCTION segments._connect_sequence(caller regrole, sequence bigint, segments bigint[]) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target segments.sequence := segments._require_sequence(_connect_sequence.sequence, caller);
    conflict text;
    connected bigint[];
BEGIN
    PERFORM segments._require_segments(_connect_sequence.segments);
    PERFORM segments._require_segments_changeable(_connect_sequence.segments, caller);
    -- Wait for the transactions refreshing these segments: the members
    -- connected below are then theirs, and a refresh running now, which
    -- decided at its start which segments' entered records to keep, has
    -- committed them (engine::store::consumers).
    PERFORM FROM segments.segment s WHERE s.id = ANY (_connect_sequence.segments) ORDER BY s.id FOR SHARE;
    SELECT string_agg(format('segment "%s" is of entity "%s"', s.name, s.entity), ', ') INTO conflict
      FROM segments.segment s WHERE s.id = ANY (_connect_sequence.segments) AND s.entity <> target.entity;
    IF conflict IS NOT NULL THEN
        RAISE EXCEPTION 'sequence "%" is for entity "%": %', target.name, target.entity, conflict
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT string_agg(format('segment "%s" is already connected to sequence "%s"', s.name, q.name), ', ') INTO conflict
      FROM segments.sequence_segment c
      JOIN segments.segment s ON s.id = c.segment_id
      JOIN segments.sequence q ON q.id = c.sequence_id
     WHERE c.segment_id = ANY (_connect_sequence.segments) AND c.sequence_id <> target.id;
    IF conflict IS NOT NULL THEN
        RAISE EXCEPTION 'a segment connects to at most one sequence: %', conflict
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Disconnect it from its sequence first.';
    END IF;
    WITH added AS (
        INSERT INTO segments.sequence_segment (segment_id, sequence_id)
        SELECT DISTINCT s, target.id FROM unnest(_connect_sequence.segments) AS s
        ON CONFLICT ON CONSTRAINT sequence_segment_pkey DO NOTHING
        RETURNING segment_id)
    SELECT coalesce(array_agg(segment_id), '{}') INTO connected FROM added;
    INSERT INTO segments.usage_registry (segment_id, kind, consumer)
    SELECT s, 'sequence', target.name FROM unnest(connected) AS s
    ON CONFLICT ON CONSTRAINT usage_registry_pkey DO NOTHING;
    PERFORM segments._connect_members(connected);
    RETURN cardinality(connected);
END
$$;

-- Disconnects segments; records already connected stay connected.
CREATE FUNCTION segments._disconnect_sequence(caller regrole, sequence bigint, segments bigint[]) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target segments.sequence := segments._require_sequence(_disconnect_sequence.sequence, caller);
    removed integer;
BEGIN
    PERFORM segments._require_segments(_disconnect_sequence.segments);
    DELETE FROM segments.sequence_segment c
     WHERE c.sequence_id = target.id AND c.segment_id = ANY (_disconnect_sequence.segments);
    GET DIAGNOSTICS removed = ROW_COUNT;
    DELETE FROM segments.usage_registry u
     WHERE u.kind = 'sequence' AND u.consumer = target.name AND u.segment_id = ANY (_disconnect_sequence.segments);
    RETURN removed;
END
$$;

-- Connects records by hand, whether or not a segment holds them. Keys must
-- exist in the entity table; a record connected to another sequence is
-- refused. Returns how many records were newly connected.
CREATE FUNCTION segments._connect_records(caller regrole, sequence bigint, keys text[]) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target segments.sequence := segments._require_sequence(_connect_records.sequence, caller);
    missing text;
    taken text;
    added integer;
BEGIN
    IF keys IS NULL THEN
        RAISE EXCEPTION 'the list of keys must not be NULL' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    missing := segments._missing_keys(target.entity, keys, caller::oid);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'no record of entity "%" has key %', target.entity, missing
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT string_agg(format('%s (sequence "%s")', r.key, q.name), ', ' ORDER BY r.key) INTO taken
      FROM segments.sequence_record r JOIN segments.sequence q ON q.id = r.sequence_id
     WHERE r.entity = target.entity AND r.key = ANY (segments._canonical_keys(target.entity, keys))
       AND r.sequence_id <> target.id;
    IF taken IS NOT NULL THEN
        RAISE EXCEPTION 'a record is connected to one sequence at a time: % already connected', taken
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    INSERT INTO segments.sequence_record (entity, key, sequence_id)
    SELECT DISTINCT target.entity, k, target.id FROM unnest(segments._canonical_keys(target.entity, keys)) AS k
    ON CONFLICT ON CONSTRAINT sequence_record_pkey DO NOTHING;
    GET DIAGNOSTICS added = ROW_COUNT;
    RETURN added;
END
$$;

CREATE FUNCTION segments._set_sequence_state(caller regrole, sequence bigint, state text) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target segments.sequence := segments._require_sequence(_set_sequence_state.sequence, caller);
BEGIN
    UPDATE segments.sequence q SET state = _set_sequence_state.state
     WHERE q.id = target.id AND q.state <> _set_sequence_state.state;
    RETURN FOUND;
END
$$;

CREATE FUNCTION segments._drop_sequence(caller regrole, sequence bigint) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target segments.sequence := segments._require_sequence(_drop_sequence.sequence, caller);
BEGIN
    DELETE FROM segments.usage_registry u WHERE u.kind = 'sequence' AND u.consumer = target.name;
    DELETE FROM segments.sequence q WHERE q.id = target.id;  -- connections and records cascade
END
$$;

CREATE FUNCTION segments._disconnect_records(caller regrole, sequence bigint, keys text[]) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target segments.sequence := segments._require_sequence(_disconnect_records.sequence, caller);
    removed integer;
BEGIN
    DELETE FROM segments.sequence_record r
     WHERE r.sequence_id = target.id AND r.key = ANY (segments._canonical_keys(target.entity, coalesce(keys, '{}')));
    GET DIAGNOSTICS removed = ROW_COUNT;
    RETURN removed;
END
$$;

CREATE FUNCTION segments.set_priority(segment bigint, priority integer) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM segments._require_segments(ARRAY[set_priority.segment]);
    UPDATE segments.segment s SET priority = set_priority.priority WHERE s.id = set_priority.segment;
END
$$;

CREATE VIEW segments.sequence_records AS
SELECT q.name AS sequence, r.key, r.segment_id, r.segment_name, r.connected_at
  FROM segments.sequence_record r JOIN segments.sequence q ON q.id = r.sequence_id;
