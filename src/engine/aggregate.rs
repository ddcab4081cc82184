//! `segments.rb_agg(bigint)`: the aggregate that turns the positions of a
//! scan's rows into a serialized Roaring bitmap.
//!
//! Its state type is `bytea`, not `internal`, because Citus splits a custom
//! aggregate between workers and coordinator only when it can ship the
//! state (`worker_partial_agg` on the shards, `coord_combine_agg` on the
//! coordinator). A `bytea` state that is rewritten per row would cost a
//! copy of the whole bitmap per row, so the state is a PostgreSQL
//! *expanded object*: a read-write pointer to an `Accumulator` that lives in
//! its own memory context under the aggregate's. nodeAgg (and Citus's
//! partial aggregation, which follows the same rule) keeps a read-write
//! expanded object the transition function returns without copying it, so
//! every row is an in-place update. Whenever PostgreSQL needs the plain
//! bytes (a parallel worker's partial state, a Citus worker's result, the
//! final value) it asks the object for its flat form, which is the same
//! serialized bitmap `membership.members` holds.

use std::ffi::c_void;

use pgrx::pg_sys;
use pgrx::prelude::*;

use segments_core::bitmap::{deserialize, position_of, serialize, Members};

use crate::pg::error::corrupt;

// ---- the accumulator ------------------------------------------------------

/// Positions arrive mostly in ascending order (a sequential scan of a table
/// keyed by a sequence), so they are buffered and appended in runs, which
/// is far cheaper than inserting them one by one.
#[derive(Default)]
pub struct Accumulator {
    members: Members,
    buffer: Vec<u64>,
}

const BUFFER: usize = 4096;

impl Accumulator {
    pub fn from_members(members: Members) -> Accumulator {
        Accumulator {
            members,
            buffer: Vec::new(),
        }
    }

    pub fn add(&mut self, position: u64) {
        self.buffer.push(position);
        if self.buffer.len() >= BUFFER {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        if !self.buffer.is_sorted() {
            self.buffer.sort_unstable();
        }
        self.buffer.dedup();
        let after_max = self.members.max().is_none_or(|max| self.buffer[0] > max);
        if after_max {
            self.members
                .append(self.buffer.drain(..))
                .expect("sorted, deduplicated and above the maximum");
        } else {
            self.members.extend(self.buffer.drain(..));
        }
    }

    pub fn merge_members(&mut self, other: &Members) {
        self.flush();
        self.members |= other;
    }

    pub fn finish(&mut self) -> &Members {
        self.flush();
        &self.members
    }
}

// ---- the expanded object --------------------------------------------------

/// The accumulator and its cached flat form (computed when PostgreSQL asks
/// for the flat size, used by the flatten that follows; any change drops it).
struct State {
    accumulator: Accumulator,
    flat: Option<Vec<u8>>,
}

/// An expanded `bytea`: the header PostgreSQL knows (first, as it requires),
/// then the Rust state, which a reset callback of the object's memory
/// context frees when PostgreSQL deletes the object or its aggregate ends.
#[repr(C)]
struct ExpandedBitmap {
    header: pg_sys::ExpandedObjectHeader,
    state: *mut State,
    free_state: pg_sys::MemoryContextCallback,
}

static METHODS: pg_sys::ExpandedObjectMethods = pg_sys::ExpandedObjectMethods {
    get_flat_size: Some(flat_size),
    flatten_into: Some(flatten_into),
};

/// The serialized bitmap, computed once per change of the state.
///
/// # Safety
/// `object` must be a live `ExpandedBitmap` made by `new_expanded`.
unsafe fn flat_bytes<'a>(object: *mut ExpandedBitmap) -> &'a [u8] {
    // SAFETY: the caller guarantees `object` is ours and alive, and its
    // state pointer is set at creation and only freed with its context.
    let state = unsafe { &mut *(*object).state };
    if state.flat.is_none() {
        state.flat = Some(serialize(state.accumulator.finish()));
    }
    state.flat.as_deref().expect("set above")
}

unsafe extern "C-unwind" fn flat_size(header: *mut pg_sys::ExpandedObjectHeader) -> pg_sys::Size {
    // SAFETY: PostgreSQL calls our methods only on objects made with them.
    let bytes = unsafe { flat_bytes(header.cast::<ExpandedBitmap>()) };
    pg_sys::VARHDRSZ + bytes.len()
}

unsafe extern "C-unwind" fn flatten_into(
    header: *mut pg_sys::ExpandedObjectHeader,
    result: *mut c_void,
    size: pg_sys::Size,
) {
    // SAFETY: PostgreSQL calls our methods only on objects made with them,
    // and `result` has the `size` bytes flat_size asked for just before.
    unsafe {
        let bytes = flat_bytes(header.cast::<ExpandedBitmap>());
        assert_eq!(
            size,
            pg_sys::VARHDRSZ + bytes.len(),
            "rb_agg: flat size changed between size and flatten"
        );
        pgrx::set_varsize_4b(result.cast(), size as i32);
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            result.cast::<u8>().add(pg_sys::VARHDRSZ),
            bytes.len(),
        );
    }
}

unsafe extern "C-unwind" fn free_state(arg: *mut c_void) {
    // SAFETY: registered with the object as its argument, called once when
    // the object's context is reset or deleted; the Box was leaked at
    // creation and is reclaimed here only.
    unsafe {
        let object = arg.cast::<ExpandedBitmap>();
        drop(Box::from_raw((*object).state));
        (*object).state = std::ptr::null_mut();
    }
}

/// A new expanded state holding `accumulator`, in a memory context of its
/// own under `parent`; returns its read-write datum.
///
/// # Safety
/// `parent` must be a valid memory context that outlives the aggregate.
unsafe fn new_expanded(parent: pg_sys::MemoryContext, accumulator: Accumulator) -> pg_sys::Datum {
    // SAFETY: plain PostgreSQL allocation under a valid parent; the header is
    // initialised by EOH_init_header before anything reads it, and the
    // callback lives in the object itself, so as long as its context.
    unsafe {
        let context = pg_sys::AllocSetContextCreateInternal(
            parent,
            c"segments rb_agg state".as_ptr(),
            0,
            1024,
            8 * 1024,
        );
        let object = pg_sys::MemoryContextAllocZero(context, std::mem::size_of::<ExpandedBitmap>())
            .cast::<ExpandedBitmap>();
        pg_sys::EOH_init_header(&mut (*object).header, &METHODS, context);
        (*object).state = Box::into_raw(Box::new(State {
            accumulator,
            flat: None,
        }));
        (*object).free_state.func = Some(free_state);
        (*object).free_state.arg = object.cast();
        pg_sys::MemoryContextRegisterResetCallback(context, &mut (*object).free_state);
        pg_sys::Datum::from((*object).header.eoh_rw_ptr.as_mut_ptr())
    }
}

/// Our expanded object behind `datum`, and whether the pointer is the
/// read-write one (ours to change); None for any other `bytea`.
///
/// # Safety
/// `datum` must be a non-null `bytea` datum.
unsafe fn as_expanded(datum: pg_sys::Datum) -> Option<(*mut ExpandedBitmap, bool)> {
    // SAFETY: every varlena has at least its first header byte; a 1-byte
    // external header (0x01 on little-endian) is followed by its tag byte.
    unsafe {
        let bytes = datum.cast_mut_ptr::<u8>();
        let external = *bytes == 0x01;
        if !external {
            return None;
        }
        let tag = u32::from(*bytes.add(1));
        let read_write = tag == pg_sys::vartag_external::VARTAG_EXPANDED_RW;
        if !read_write && tag != pg_sys::vartag_external::VARTAG_EXPANDED_RO {
            return None;
        }
        let header = pg_sys::DatumGetEOHP(datum);
        if !std::ptr::eq((*header).eoh_methods, &METHODS) {
            return None;
        }
        Some((header.cast::<ExpandedBitmap>(), read_write))
    }
}

/// The bitmap in any `bytea` state datum: ours (expanded) or flat bytes (a
/// partial state from a parallel worker or a Citus shard).
///
/// # Safety
/// `datum` must be a non-null `bytea` datum.
unsafe fn members_of(datum: pg_sys::Datum) -> Members {
    // SAFETY: as_expanded checks the object is ours; otherwise the datum is
    // a (possibly toasted or short-header) bytea, which detoasting handles.
    unsafe {
        if let Some((object, _)) = as_expanded(datum) {
            return (*(*object).state).accumulator.finish().clone();
        }
        let flat = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
        deserialize(pgrx::varlena_to_byte_slice(flat)).unwrap_or_else(|e| corrupt(e))
    }
}

/// The aggregate's memory context; ERROR outside an aggregate.
///
/// # Safety
/// `fcinfo` must be the call's own.
unsafe fn aggregate_context(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::MemoryContext {
    let mut context = std::ptr::null_mut();
    // SAFETY: AggCheckCallContext only reads fcinfo's context.
    if unsafe { pg_sys::AggCheckCallContext(fcinfo, &mut context) } == 0 {
        error!("segments.rb_agg's support functions may only be called by the aggregate");
    }
    context
}

/// The state to change in place: the incoming one when it is our read-write
/// object, otherwise a new one holding whatever the incoming state held.
///
/// # Safety
/// `fcinfo` must be an aggregate support call whose argument 0 is the state.
unsafe fn writable_state(fcinfo: pg_sys::FunctionCallInfo) -> (pg_sys::Datum, *mut State) {
    // SAFETY: argument 0 exists in every support call; its datum is a bytea
    // when not null.
    unsafe {
        if !pgrx::pg_arg_is_null(fcinfo, 0) {
            let datum = pgrx::pg_getarg_datum_raw(fcinfo, 0);
            if let Some((object, true)) = as_expanded(datum) {
                return (datum, (*object).state);
            }
            let members = members_of(datum);
            let fresh = new_expanded(
                aggregate_context(fcinfo),
                Accumulator::from_members(members),
            );
            let (object, _) = as_expanded(fresh).expect("just made");
            return (fresh, (*object).state);
        }
        let fresh = new_expanded(aggregate_context(fcinfo), Accumulator::default());
        let (object, _) = as_expanded(fresh).expect("just made");
        (fresh, (*object).state)
    }
}

// ---- support functions ----------------------------------------------------
//
// Declared by hand (sql/aggregate.sql): pgrx would detoast a `bytea`
// argument, which flattens the expanded state on every row.

macro_rules! v1_function_info {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub extern "C" fn $name() -> &'static pg_sys::Pg_finfo_record {
            const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }
    };
}

v1_function_info!(pg_finfo_rb_agg_step);
v1_function_info!(pg_finfo_rb_agg_combine);
v1_function_info!(pg_finfo_rb_agg_final);

/// Transition function of `segments.rb_agg(bigint)`: adds a position.
///
/// # Safety
/// Called by PostgreSQL as `rb_agg_step(bytea, bigint)`.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn rb_agg_step(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: PostgreSQL passes (state bytea, position bigint).
    unsafe {
        let (datum, state) = writable_state(fcinfo);
        if !pgrx::pg_arg_is_null(fcinfo, 1) {
            let position = pgrx::pg_getarg_datum_raw(fcinfo, 1).value() as i64;
            (*state).accumulator.add(position_of(position));
            (*state).flat = None;
        }
        datum
    }
}

/// Combine function (parallel workers, Citus shards): ORs a partial state
/// into the state.
///
/// # Safety
/// Called by PostgreSQL as `rb_agg_combine(bytea, bytea)`.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn rb_agg_combine(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: PostgreSQL passes (state bytea, partial bytea).
    unsafe {
        if pgrx::pg_arg_is_null(fcinfo, 1) {
            if pgrx::pg_arg_is_null(fcinfo, 0) {
                return pgrx::pg_return_null(fcinfo);
            }
            return writable_state(fcinfo).0;
        }
        let (datum, state) = writable_state(fcinfo);
        let partial = members_of(pgrx::pg_getarg_datum_raw(fcinfo, 1));
        (*state).accumulator.merge_members(&partial);
        (*state).flat = None;
        datum
    }
}

/// Final function of `segments.rb_agg(bigint)`: the serialized bitmap (an
/// empty one when no row was aggregated).
///
/// # Safety
/// Called by PostgreSQL as `rb_agg_final(bytea)`.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn rb_agg_final(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: PostgreSQL passes the state, null when no row was aggregated.
    unsafe {
        let bytes = if pgrx::pg_arg_is_null(fcinfo, 0) {
            serialize(&Members::new())
        } else {
            let datum = pgrx::pg_getarg_datum_raw(fcinfo, 0);
            match as_expanded(datum) {
                Some((object, _)) => flat_bytes(object).to_vec(),
                None => serialize(&members_of(datum)),
            }
        };
        pg_sys::Datum::from(pgrx::rust_byte_slice_to_bytea(&bytes).into_pg())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accumulator_takes_positions_in_any_order() {
        let mut ascending = Accumulator::default();
        let mut shuffled = Accumulator::default();
        let positions: Vec<u64> = (0..20_000u64).map(|i| i * 3).collect();
        for &p in &positions {
            ascending.add(p);
        }
        for &p in positions.iter().rev().chain(positions.iter().step_by(7)) {
            shuffled.add(p);
        }
        let expected: Members = positions.iter().copied().collect();
        assert_eq!(ascending.finish(), &expected);
        assert_eq!(shuffled.finish(), &expected);
        let mut left = Accumulator::default();
        let mut right = Accumulator::default();
        (0..10u64).for_each(|p| left.add(p));
        (5..15u64).for_each(|p| right.add(p));
        left.merge_members(right.finish());
        assert_eq!(left.finish(), &(0..15u64).collect::<Members>());
    }
}
