-- segments.rb_agg(bigint): the positions of the aggregated rows as a
-- serialized Roaring bitmap. The state is a bytea (kept as an expanded
-- object, changed in place) so that Citus can split the aggregate between
-- shards and coordinator; see src/engine/aggregate.rs.
CREATE FUNCTION segments.rb_agg_step(bytea, bigint) RETURNS bytea
    LANGUAGE c IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'rb_agg_step';
CREATE FUNCTION segments.rb_agg_combine(bytea, bytea) RETURNS bytea
    LANGUAGE c IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'rb_agg_combine';
CREATE FUNCTION segments.rb_agg_final(bytea) RETURNS bytea
    LANGUAGE c IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'rb_agg_final';

CREATE AGGREGATE segments.rb_agg(bigint) (
    SFUNC = segments.rb_agg_step,
    STYPE = bytea,
    FINALFUNC = segments.rb_agg_final,
    COMBINEFUNC = segments.rb_agg_combine,
    PARALLEL = SAFE
);
