//! C symbols that the SQL of older versions names and this version no
//! longer declares: a database still at 0.1.0 keeps working with this
//! library until `ALTER EXTENSION segments UPDATE` (scripts/upgrade_test.sh
//! checks that every symbol of every older script is exported).
//!
//! 0.1.0's `rb_agg` had an `internal` state; these are its support
//! functions, over the same accumulator as today's aggregate. 0.2.0's
//! `_missing_keys(entity, keys)` had no caller argument, its
//! `register_related` no `via` and its `create_export` no `traits`.

use pgrx::prelude::*;
use pgrx::Internal;

use segments_core::bitmap::{deserialize, position_of, serialize, Members};

use crate::engine::aggregate::Accumulator;
use crate::pg::error::corrupt;

/// The accumulator of an `internal` state, made in the aggregate's memory
/// context so that it lives as long as the aggregate.
///
/// # Safety
/// `fcinfo` must be the aggregate support call's own.
unsafe fn accumulator(state: &mut Internal, fcinfo: pg_sys::FunctionCallInfo) -> &mut Accumulator {
    // SAFETY: AggCheckCallContext only reads fcinfo; the state is created
    // in the aggregate context it returns, and only ever holds an Accumulator.
    unsafe {
        if !state.initialized() {
            let mut aggregate_context = std::ptr::null_mut();
            if pg_sys::AggCheckCallContext(fcinfo, &mut aggregate_context) == 0 {
                error!("rb_agg called outside of an aggregate");
            }
            let previous = pg_sys::MemoryContextSwitchTo(aggregate_context);
            *state = Internal::new(Accumulator::default());
            pg_sys::MemoryContextSwitchTo(previous);
        }
        state.get_mut::<Accumulator>().expect("initialized above")
    }
}

/// 0.1.0: transition function of `rb_agg` (internal state).
#[pg_extern(schema = "segments", sql = false)]
fn rb_agg_step(
    state: Internal,
    position: Option<i64>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Internal {
    let mut state = state;
    if let Some(position) = position {
        // SAFETY: called by PostgreSQL as an aggregate support function.
        unsafe { accumulator(&mut state, fcinfo) }.add(position_of(position));
    }
    state
}

/// 0.1.0: combine function of `rb_agg` (internal state).
#[pg_extern(schema = "segments", sql = false)]
fn rb_agg_combine(state: Internal, other: Internal, fcinfo: pg_sys::FunctionCallInfo) -> Internal {
    let mut state = state;
    let mut other = other;
    // SAFETY: both states were made by `accumulator` (or are empty).
    if let Some(partial) = unsafe { other.get_mut::<Accumulator>() } {
        let partial = partial.finish().clone();
        unsafe { accumulator(&mut state, fcinfo) }.merge_members(&partial);
    }
    state
}

/// 0.1.0: serial function of `rb_agg`.
#[pg_extern(schema = "segments", sql = false)]
fn rb_agg_serialize(state: Internal) -> Vec<u8> {
    let mut state = state;
    // SAFETY: the state was made by `accumulator` (or is empty).
    match unsafe { state.get_mut::<Accumulator>() } {
        Some(accumulator) => serialize(accumulator.finish()),
        None => serialize(&Members::new()),
    }
}

/// 0.1.0: deserial function of `rb_agg`.
#[pg_extern(schema = "segments", sql = false)]
fn rb_agg_deserialize(
    bytes: &[u8],
    _unused: Internal,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Internal {
    let mut state = Internal::default();
    let members = deserialize(bytes).unwrap_or_else(|e| corrupt(e));
    // SAFETY: called by PostgreSQL as an aggregate support function.
    unsafe { accumulator(&mut state, fcinfo) }.merge_members(&members);
    state
}

/// 0.1.0: final function of `rb_agg`.
#[pg_extern(schema = "segments", sql = false)]
fn rb_agg_final(state: Internal) -> Vec<u8> {
    rb_agg_serialize(state)
}

/// 0.2.0: `_missing_keys(entity, keys)`, called by 0.2.0's
/// `_connect_records` as the extension: the caller is the role the session
/// acts as outside it (`SET ROLE`, not the extension's switch).
#[pg_extern(schema = "segments", sql = false)]
fn _missing_keys(entity: &str, keys: Vec<String>) -> Option<String> {
    // SAFETY: reads a backend global.
    let caller = unsafe { pg_sys::GetOuterUserId() };
    crate::sequence::missing_keys(entity, keys, caller)
}

/// 0.2.0: `register_related(entity, name, relation, foreign_key,
/// time_column)`, without `via`.
#[pg_extern(schema = "segments", sql = false)]
fn register_related(
    entity: &str,
    name: &str,
    relation: pgrx::PgRelation,
    foreign_key: &str,
    time_column: Option<&str>,
) {
    crate::api::entity::register_related_checked(
        entity,
        name,
        relation,
        foreign_key,
        time_column,
        None,
    )
}

/// 0.2.0: `create_export(name, segments, target)`, without `traits`.
#[pg_extern(schema = "segments", sql = false)]
fn create_export(name: &str, segments: Option<Vec<i64>>, target: &str) -> i64 {
    crate::export::create_export_checked(name, segments, target, None)
}
