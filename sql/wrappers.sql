-- The SQL-language faces of functions written in Rust: overloads that take
-- a key of any type (or an untyped literal) as text, and set-returning
-- wrappers whose rows another statement must read after the Rust function
-- wrote them. Each calls one internal `_` function (revoked from PUBLIC in
-- grants.sql); every name is schema-qualified.

-- Keys in their own type or as text. The text overloads take untyped
-- literals, so segments.is_member(7, 'C00042') needs no cast.
CREATE FUNCTION segments.is_member(segment bigint, key anyelement) RETURNS boolean
LANGUAGE sql STABLE AS $$ SELECT segments._is_member(segment, key::text) $$;
CREATE FUNCTION segments.is_member(segment bigint, key text) RETURNS boolean
LANGUAGE sql STABLE AS $$ SELECT segments._is_member(segment, key) $$;
-- segments_of adds the record's group in each split segment.
CREATE FUNCTION segments.segments_of(entity text, key anyelement)
RETURNS TABLE (segment_id bigint, name text, split_group text)
LANGUAGE sql STABLE AS $$
    SELECT o.segment_id, o.name, segments.split_group(o.segment_id, key::pg_catalog.text)
      FROM segments._segments_of(entity, key::pg_catalog.text) o $$;
CREATE FUNCTION segments.segments_of(entity text, key text)
RETURNS TABLE (segment_id bigint, name text, split_group text)
LANGUAGE sql STABLE AS $$
    SELECT o.segment_id, o.name, segments.split_group(o.segment_id, key)
      FROM segments._segments_of(entity, key) o $$;

-- Why a record is or is not a member, condition by condition.
CREATE FUNCTION segments.explain_member(segment bigint, key anyelement)
RETURNS TABLE (path text, name text, condition jsonb, matches boolean, value text)
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM segments._explain_member(segment, key::text) $$;
CREATE FUNCTION segments.explain_member(segment bigint, key text)
RETURNS TABLE (path text, name text, condition jsonb, matches boolean, value text)
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM segments._explain_member(segment, key) $$;

-- "Simulate": counts what an unsaved definition would select, rule by rule.
CREATE FUNCTION segments.estimate(definition jsonb)
RETURNS TABLE (path text, name text, combine text, members bigint, cumulative bigint)
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM segments._estimate(definition::text) $$;

-- One scheduler pass; returns the refresh runs it recorded. (Two
-- statements: the second must see the rows the first wrote.)
CREATE FUNCTION segments.run_due() RETURNS SETOF segments.refresh_run
LANGUAGE plpgsql AS $$
DECLARE
    runs bigint[] := segments._run_due();
BEGIN
    RETURN QUERY SELECT r.* FROM segments.refresh_run r WHERE r.id = ANY (runs) ORDER BY r.id;
END
$$;

-- Applies the changes captured for live segments now (the worker does it
-- every segments.naptime); returns the runs recorded (trigger 'live').
CREATE FUNCTION segments.apply_changes() RETURNS SETOF segments.refresh_run
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    runs bigint[] := segments._apply_changes();
BEGIN
    RETURN QUERY SELECT r.* FROM segments.refresh_run r WHERE r.id = ANY (runs) ORDER BY r.id;
END
$$;

-- set_owner takes a regrole, which pgrx cannot spell: declared by hand.
CREATE FUNCTION segments.set_owner(segments bigint[], owner regrole) RETURNS integer
LANGUAGE c AS 'MODULE_PATHNAME', 'set_owner_wrapper';
