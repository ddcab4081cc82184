//! Subtransactions: running a piece of work so that its failure rolls
//! back only its own writes (one failing segment never takes the others of
//! a refresh down with it), while a cancel, a shutdown or running out of
//! memory still stops the whole statement.

use pgrx::pg_sys;
use pgrx::pg_sys::panic::{CaughtError, ErrorReportWithLevel};
use pgrx::PgTryBuilder;

use crate::pg::error::Failure;

/// The error report a caught error carries, whatever raised it.
fn report_of(error: &CaughtError) -> &ErrorReportWithLevel {
    match error {
        CaughtError::PostgresError(e) | CaughtError::ErrorReport(e) => e,
        CaughtError::RustPanic { ereport, .. } => ereport,
    }
}

/// The text of a caught error, for `last_error` and refresh results.
pub fn error_text(error: &CaughtError) -> String {
    let report = report_of(error);
    match report.detail() {
        Some(detail) if !detail.is_empty() => format!("{} ({detail})", report.message()),
        _ => report.message().to_string(),
    }
}

/// A caught error as a segment's failure: its SQLSTATE and its text.
fn failure(error: &CaughtError) -> Failure {
    let report = report_of(error);
    Failure {
        sqlstate: crate::pg::error::unpacked_sqlstate(report.sql_error_code() as i32),
        message: error_text(error),
    }
}

/// Errors a subtransaction must not swallow: cancels and timeouts (57014),
/// shutdowns and terminations (class 57), and out-of-memory (53200).
fn must_propagate(error: &CaughtError) -> bool {
    let code = report_of(error).sql_error_code() as i32;
    let class = code & 0xfff; // the first two characters of the SQLSTATE
    let class_57 = pg_sys::errcodes::PgSqlErrorCode::ERRCODE_OPERATOR_INTERVENTION as i32 & 0xfff;
    class == class_57
        || code == pg_sys::errcodes::PgSqlErrorCode::ERRCODE_OUT_OF_MEMORY as i32
        // SAFETY: reads two flags the signal handlers set.
        || unsafe { pg_sys::QueryCancelPending != 0 || pg_sys::ProcDiePending != 0 }
}

/// Whether this server is a hot standby (recovery in progress): nothing
/// may be written, and no transaction id assigned.
pub fn in_recovery() -> bool {
    // SAFETY: reads shared state; callable in any backend.
    unsafe { pg_sys::RecoveryInProgress() }
}

/// Makes SPI statements of this transaction read-write, so each sees the
/// effects of the ones before it (pgrx runs them read-only until the
/// transaction has an xid). On a hot standby it refuses with 25006, as
/// PostgreSQL refuses a write there, instead of failing to assign a
/// transaction id.
pub fn writing_transaction() {
    refuse_in_recovery();
    // SAFETY: inside a transaction (every caller is SQL-callable or runs
    // in the worker's transaction); assigns an xid if there is none.
    unsafe {
        pg_sys::GetCurrentTransactionId();
    }
}

/// Refuses with 25006 on a hot standby, as `writing_transaction` does, for
/// work that may find nothing to write (and then assigns no transaction
/// id) but is refused on a standby all the same.
pub fn refuse_in_recovery() {
    if in_recovery() {
        use crate::pg::error::Raise;
        crate::pg::error::SegmentsError::ReadOnly(
            "segments cannot refresh, apply changes or schedule on a hot standby (recovery is in progress); \
             run it on the primary"
                .into(),
        )
        .raise();
    }
}

/// Runs `f` in a subtransaction. On an error, everything `f` wrote is rolled
/// back and the error (SQLSTATE and message) is returned; the outer
/// transaction goes on.
pub fn in_subtransaction<R>(f: impl FnOnce() -> R + std::panic::UnwindSafe) -> Result<R, Failure> {
    // SAFETY: the subtransaction begun here is released or rolled back on
    // every path before returning, and the memory context and resource
    // owner are restored to the outer ones, as PL/pgSQL's exception blocks
    // do; errors other than the caught ERROR are rethrown.
    unsafe {
        let outer_context = pg_sys::CurrentMemoryContext;
        let outer_owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        // pgrx runs SPI read-only (no new snapshot per statement) while the
        // current (sub)transaction has no xid; work here may write and must
        // see its own writes. (Not on a standby, where nothing is written
        // and no xid can be assigned.)
        if !in_recovery() {
            pg_sys::GetCurrentTransactionId();
        }
        // Results must outlive the subtransaction's memory context.
        pg_sys::MemoryContextSwitchTo(outer_context);
        // The caught error is boxed: it is large, and this is the hot path
        // of every segment's evaluation.
        let result: Result<R, Box<CaughtError>> = PgTryBuilder::new(|| Ok(f()))
            .catch_others(|e| Err(Box::new(e)))
            .execute();
        match result {
            Ok(value) => {
                pg_sys::ReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(outer_context);
                pg_sys::CurrentResourceOwner = outer_owner;
                Ok(value)
            }
            Err(error) => {
                pg_sys::MemoryContextSwitchTo(outer_context);
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(outer_context);
                pg_sys::CurrentResourceOwner = outer_owner;
                // A cancel, a timeout or a shutdown is never one segment's
                // failure: it stops the whole statement.
                if must_propagate(&error) {
                    error.rethrow();
                }
                Err(failure(&error))
            }
        }
    }
}
