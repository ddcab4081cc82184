//! Running a piece of work as another role, or inside a subtransaction so
//! that its failure rolls back only its own writes (one failing segment
//! never takes the others of a refresh down with it).

use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::PgTryBuilder;

/// Runs `f` with `role`'s privileges, as SECURITY DEFINER functions do: a
/// segment is evaluated as its owner, whoever triggers the refresh.
pub fn as_role<R>(role: pg_sys::Oid, f: impl FnOnce() -> R + std::panic::UnwindSafe) -> R {
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_context = 0;
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        if saved_user == role {
            return f();
        }
        pg_sys::SetUserIdAndSecContext(role, saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
    }
    PgTryBuilder::new(f)
        .finally(|| unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) })
        .execute()
}

/// The text of a caught error, for `last_error` and refresh results.
pub fn error_text(error: &CaughtError) -> String {
    let report = match error {
        CaughtError::PostgresError(e) | CaughtError::ErrorReport(e) => e,
        CaughtError::RustPanic { ereport, .. } => ereport,
    };
    match report.detail() {
        Some(detail) if !detail.is_empty() => format!("{} ({detail})", report.message()),
        _ => report.message().to_string(),
    }
}

/// Makes SPI statements of this transaction read-write, so each sees the
/// effects of the ones before it (pgrx runs them read-only until the
/// transaction has an xid).
pub fn writing_transaction() {
    unsafe {
        pg_sys::GetCurrentTransactionId();
    }
}

/// Runs `f` in a subtransaction. On an error, everything `f` wrote is rolled
/// back and the error's message is returned; the outer transaction goes on.
pub fn in_subtransaction<R>(f: impl FnOnce() -> R + std::panic::UnwindSafe) -> Result<R, String> {
    unsafe {
        let outer_context = pg_sys::CurrentMemoryContext;
        let outer_owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        // pgrx runs SPI read-only (no new snapshot per statement) while the
        // current (sub)transaction has no xid; work here may write and must
        // see its own writes.
        pg_sys::GetCurrentTransactionId();
        // Results must outlive the subtransaction's memory context.
        pg_sys::MemoryContextSwitchTo(outer_context);
        let result = PgTryBuilder::new(|| Ok(f())).catch_others(|e| Err(error_text(&e))).execute();
        match result {
            Ok(value) => {
                pg_sys::ReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(outer_context);
                pg_sys::CurrentResourceOwner = outer_owner;
                Ok(value)
            }
            Err(message) => {
                pg_sys::MemoryContextSwitchTo(outer_context);
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(outer_context);
                pg_sys::CurrentResourceOwner = outer_owner;
                Err(message)
            }
        }
    }
}
