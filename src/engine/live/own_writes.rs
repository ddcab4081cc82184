//! The extension's own writes, marked in the WAL for WAL capture.
//!
//! Logical decoding reads every change of the database into its reorder
//! buffer before the output plugin can skip the tables it does not
//! publish. A refresh writes memberships, history and trait values, often
//! far more WAL than the changes live segments follow (the system refresh
//! of ten traits over a million customers writes gigabytes), and every
//! decoding from the slot's restart position read all of it again. The
//! one filter PostgreSQL applies before queuing a change is its
//! replication origin: with `segments.capture = 'wal'`, what the extension
//! writes to its own tables carries the origin `DoNotReplicateId` (no
//! named origin, which one backend at a time could hold), and the slot's
//! output plugin (`output_plugin`) skips that origin.
//!
//! Only writes to the extension's tables are marked: an export rewrites a
//! user's table (`unmarked`), which a live segment might read; and the
//! mark never reaches a commit record (a marked commit would make the
//! decoder skip the whole transaction, a user's changes in it included):
//! it is taken off when the marked call returns or fails, and at the end
//! of every transaction.

use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::pg_sys;

use crate::pg::gucs::{Capture, CAPTURE};

/// The origin our writes carry: PostgreSQL's "not to be replicated" mark.
const OWN: pg_sys::RepOriginId = pg_sys::DoNotReplicateId as pg_sys::RepOriginId;

/// Puts back the session's origin as it was when dropped.
pub struct Mark {
    previous: pg_sys::RepOriginId,
}

impl Drop for Mark {
    fn drop(&mut self) {
        // SAFETY: a backend-local variable, set back to what it was.
        unsafe { pg_sys::replorigin_session_origin = self.previous };
    }
}

/// Marks what this backend writes from now until the returned guard is
/// dropped as the extension's own, when WAL capture is on (otherwise the
/// guard changes nothing). An origin set by someone else (a replication
/// apply worker, Citus) is left alone.
pub fn mark() -> Mark {
    // SAFETY: backend-local variables.
    let previous = unsafe { pg_sys::replorigin_session_origin };
    if CAPTURE.get() == Capture::Wal
        && previous == pg_sys::InvalidRepOriginId as pg_sys::RepOriginId
    {
        watch_transaction_end();
        unsafe { pg_sys::replorigin_session_origin = OWN };
    }
    Mark { previous }
}

/// Takes our mark off until the returned guard is dropped: for writes to
/// users' tables made inside a marked call.
pub fn unmarked() -> Mark {
    // SAFETY: backend-local variables.
    let previous = unsafe { pg_sys::replorigin_session_origin };
    if previous == OWN {
        unsafe {
            pg_sys::replorigin_session_origin = pg_sys::InvalidRepOriginId as pg_sys::RepOriginId
        };
    }
    Mark { previous }
}

/// Whether the transaction callback is registered in this backend.
static WATCHING: AtomicBool = AtomicBool::new(false);

/// Registers, once per backend, the callback that takes our mark off
/// before any commit or abort record is written.
fn watch_transaction_end() {
    if !WATCHING.swap(true, Ordering::Relaxed) {
        // SAFETY: registers a callback for the life of the backend.
        unsafe { pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut()) };
    }
}

/// Takes our mark off at the end of a transaction (a guard not dropped,
/// e.g. an error that skipped it): the commit or abort record, and the
/// session's next transaction, are never marked.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    if matches!(
        event,
        XACT_EVENT_PRE_COMMIT
            | XACT_EVENT_PARALLEL_PRE_COMMIT
            | XACT_EVENT_PRE_PREPARE
            | XACT_EVENT_ABORT
            | XACT_EVENT_PARALLEL_ABORT
    ) && unsafe { pg_sys::replorigin_session_origin } == OWN
    {
        unsafe {
            pg_sys::replorigin_session_origin = pg_sys::InvalidRepOriginId as pg_sys::RepOriginId
        };
    }
}
