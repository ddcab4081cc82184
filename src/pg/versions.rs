//! The few places where PostgreSQL's C API differs between the majors
//! segments supports (15 to 18), each behind one function here so that the
//! rest of the code reads the same on every major. Everything else (SQL,
//! catalogs, event triggers, background workers) is the same on all four.

use pgrx::pg_sys;

/// The relation's file number (16 renamed `RelFileNode.relNode` to
/// `RelFileLocator.relNumber`): row images of live capture are stamped
/// with it, so that an image of a rewritten table is never decoded.
///
/// # Safety
/// `relation` must be an open relation.
pub unsafe fn relation_file_number(relation: pg_sys::Relation) -> u32 {
    // SAFETY: guaranteed by the caller.
    unsafe {
        #[cfg(feature = "pg15")]
        let number = (*relation).rd_node.relNode;
        #[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
        let number = (*relation).rd_locator.relNumber;
        number.to_u32()
    }
}

/// Attribute `index` (0-based) of a tuple descriptor (18 put the
/// attributes after an array of compact ones, `TupleDescAttr`).
///
/// # Safety
/// `desc` must be a valid tuple descriptor and `index < natts`.
pub unsafe fn attribute<'a>(
    desc: pg_sys::TupleDesc,
    index: usize,
) -> &'a pg_sys::FormData_pg_attribute {
    // SAFETY: guaranteed by the caller; both layouts are PostgreSQL's own.
    unsafe {
        #[cfg(any(feature = "pg15", feature = "pg16", feature = "pg17"))]
        let attributes = (*desc).attrs.as_ptr();
        #[cfg(feature = "pg18")]
        let attributes = (*desc)
            .compact_attrs
            .as_ptr()
            .add((*desc).natts as usize)
            .cast::<pg_sys::FormData_pg_attribute>();
        &*attributes.add(index)
    }
}

/// This backend's local transaction id (17 moved it into `PGPROC.vxid`).
pub fn local_transaction_id() -> u32 {
    // SAFETY: MyProc is this backend's PGPROC, valid once it is connected.
    unsafe {
        #[cfg(any(feature = "pg15", feature = "pg16"))]
        let lxid = (*pg_sys::MyProc).lxid;
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        let lxid = (*pg_sys::MyProc).vxid.lxid;
        lxid
    }
}

/// Installs a backend signal handler (18 renamed `pqsignal` for the backend
/// to `pqsignal_be`).
///
/// # Safety
/// `handler` must be async-signal-safe, as PostgreSQL's own handlers are.
pub unsafe fn set_signal_handler(
    signal: i32,
    handler: unsafe extern "C-unwind" fn(std::ffi::c_int),
) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        #[cfg(any(feature = "pg15", feature = "pg16", feature = "pg17"))]
        pg_sys::pqsignal(signal, Some(handler));
        #[cfg(feature = "pg18")]
        pg_sys::pqsignal_be(signal, Some(handler));
    }
}

/// Acquires a replication slot by name for this backend, failing at once
/// when another process holds it (18 added whether an invalidated slot is
/// an error: it is here, as on the majors before).
///
/// # Safety
/// No slot is held by this backend; release it with
/// `pg_sys::ReplicationSlotRelease`.
pub unsafe fn acquire_slot(name: &std::ffi::CStr) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        #[cfg(any(feature = "pg15", feature = "pg16", feature = "pg17"))]
        pg_sys::ReplicationSlotAcquire(name.as_ptr(), true);
        #[cfg(feature = "pg18")]
        pg_sys::ReplicationSlotAcquire(name.as_ptr(), true, true);
    }
}
