//! Running a piece of work as another role, or inside a subtransaction so
//! that its failure rolls back only its own writes (one failing segment
//! never takes the others of a refresh down with it).

use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::PgTryBuilder;

use crate::pg::error::Raise;

/// The search path every statement the extension runs on someone's behalf
/// runs under: nothing a role can create is ever found by name.
pub const SAFE_SEARCH_PATH: &std::ffi::CStr = c"pg_catalog, pg_temp";

thread_local! {
    /// Depth of `privileged` sections: the lifecycle trigger lets the
    /// extension (and only it) write the columns it maintains. A Rust
    /// static, so no SQL can set it.
    static INTERNAL_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    static EXTENSION_OWNER: std::cell::Cell<Option<pg_sys::Oid>> = const { std::cell::Cell::new(None) };
}

/// Whether the current statement comes from the extension's own code
/// (a `privileged` section) rather than from a user's DML.
pub fn internal_write() -> bool {
    INTERNAL_DEPTH.with(|d| d.get() > 0)
}

/// The role that owns the extension's objects (it ran CREATE EXTENSION).
pub fn extension_owner() -> pg_sys::Oid {
    if let Some(owner) = EXTENSION_OWNER.with(|o| o.get()) {
        return owner;
    }
    let owner = pgrx::spi::Spi::get_one::<pg_sys::Oid>(
        "SELECT nspowner FROM pg_catalog.pg_namespace WHERE nspname OPERATOR(pg_catalog.=) 'segments'",
    )
    .ok()
    .flatten()
    .unwrap_or(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID));
    EXTENSION_OWNER.with(|o| o.set(Some(owner)));
    owner
}

/// The role the caller acts as (`current_user`).
pub fn current_role() -> pg_sys::Oid {
    // SAFETY: reads a backend global; always valid inside a transaction.
    unsafe { pg_sys::GetUserId() }
}

/// Runs `f` as `role` inside the sandbox: a security-restricted operation
/// (no SET ROLE, no temporary objects, no deferred work that would later
/// run as someone else) with `search_path = pg_catalog, pg_temp`, so that
/// no function, operator or table a role put in its own schema, in
/// `public` or in `pg_temp` is ever found by name. Everything run as a
/// segment's owner, an export's owner or by the worker runs this way.
pub fn sandboxed<R>(role: pg_sys::Oid, f: impl FnOnce() -> R + std::panic::UnwindSafe) -> R {
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_context = 0;
    // SAFETY: plain backend calls; the previous user and context are
    // restored in `finally`, on success and on error alike. The GUC nest
    // level is popped here on success; on error the (sub)transaction abort
    // that catches it pops it, as for SECURITY DEFINER functions.
    let nest_level = unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(
            role,
            saved_context
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
        let nest_level = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            SAFE_SEARCH_PATH.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        // Calendar days (on, is_today, is_anniversary, date windows) follow
        // segments.timezone, never the zone of the session that refreshes.
        let zone = std::ffi::CString::new(crate::pg::gucs::timezone_name()).unwrap_or_default();
        pg_sys::set_config_option(
            c"TimeZone".as_ptr(),
            zone.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        nest_level
    };
    let result = PgTryBuilder::new(f)
        // SAFETY: restores the user and context saved above.
        .finally(|| unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) })
        .execute();
    // SAFETY: pops the nest level pushed above (restoring search_path).
    unsafe { pg_sys::AtEOXact_GUC(true, nest_level) };
    result
}

/// Turns JIT off until the sandbox this runs in ends: for the queries of
/// a wide plan, whose expressions take LLVM longer to compile than to
/// evaluate, and whose compilation does not stop at a cancel (a
/// 20,000-condition refresh spent minutes there, deaf to pg_cancel_backend).
pub fn without_jit() {
    // SAFETY: sets a user setting at the current GUC nest level, which the
    // enclosing `sandboxed` pops (restoring it) on success and error alike.
    unsafe {
        pg_sys::set_config_option(
            c"jit".as_ptr(),
            c"off".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
    }
}

/// Runs `f` as a segment's (or export's) owner in the sandbox. The
/// extension's own write permission does not carry into it.
pub fn as_role<R>(role: pg_sys::Oid, f: impl FnOnce() -> R + std::panic::UnwindSafe) -> R {
    let depth = INTERNAL_DEPTH.with(|d| d.replace(0));
    PgTryBuilder::new(|| sandboxed(role, f))
        .finally(|| INTERNAL_DEPTH.with(|d| d.set(depth)))
        .execute()
}

/// Runs `f` as the extension's owner, in the sandbox, marked as the
/// extension's own work: the only way internal tables are written. Callers
/// check what the calling role may do before they get here.
pub fn privileged<R>(f: impl FnOnce() -> R + std::panic::UnwindSafe) -> R {
    let owner = extension_owner();
    INTERNAL_DEPTH.with(|d| d.set(d.get() + 1));
    PgTryBuilder::new(|| sandboxed(owner, f))
        .finally(|| INTERNAL_DEPTH.with(|d| d.set(d.get().saturating_sub(1))))
        .execute()
}

thread_local! {
    static SCHEMA_VERSION: std::cell::RefCell<Option<(u32, String)>> = const { std::cell::RefCell::new(None) };
}

/// Whether the database's schema is older than this library (a new build
/// installed before `ALTER EXTENSION segments UPDATE`): the library then
/// leaves the columns the update adds alone, so the old schema keeps
/// working until the update.
pub fn legacy_schema() -> bool {
    let transaction = crate::pg::versions::local_transaction_id();
    let cached = SCHEMA_VERSION.with(|v| {
        v.borrow()
            .as_ref()
            .filter(|(t, _)| *t == transaction)
            .map(|(_, v)| v.clone())
    });
    let version = cached.unwrap_or_else(|| {
        let version = crate::pg::spi::optional_value::<String>(
            "SELECT extversion FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'segments'",
            &[],
        )
        .unwrap_or_default();
        SCHEMA_VERSION.with(|v| *v.borrow_mut() = Some((transaction, version.clone())));
        version
    });
    version == "0.1.0"
}

/// Whether `role` has the privileges of the named role (superusers do).
pub fn has_role(role: pg_sys::Oid, name: &std::ffi::CStr) -> bool {
    // SAFETY: get_role_oid with missing_ok returns InvalidOid when absent.
    unsafe {
        let target = pg_sys::get_role_oid(name.as_ptr(), true);
        pg_sys::superuser_arg(role)
            || (target != pg_sys::InvalidOid && pg_sys::has_privs_of_role(role, target))
    }
}

/// Refuses (42501) a caller that is not a `segments_editor` (or above).
pub fn require_editor(what: &str) {
    if !has_role(current_role(), c"segments_editor") {
        crate::pg::error::SegmentsError::InsufficientPrivilege(format!(
            "permission denied to {what}: only members of segments_editor may"
        ))
        .raise();
    }
}

/// Refuses (42501) a caller that is not a `segments_sequence_manager` (or
/// admin, or superuser).
pub fn require_sequence_manager(what: &str) {
    if !has_role(current_role(), c"segments_sequence_manager") {
        crate::pg::error::SegmentsError::InsufficientPrivilege(format!(
            "permission denied to {what}: only members of segments_sequence_manager or segments_admin may"
        ))
        .raise();
    }
}

/// Refuses (42501) a caller that is not a `segments_admin` (or superuser).
pub fn require_admin(what: &str) {
    if !has_role(current_role(), c"segments_admin") {
        crate::pg::error::SegmentsError::InsufficientPrivilege(format!(
            "permission denied to {what}: only members of segments_admin may"
        ))
        .raise();
    }
}

/// Refuses (42501) a caller without SELECT on a relation.
pub fn require_select(relation: pg_sys::Oid, what: &str) {
    // SAFETY: an ACL check of an existing relation; a dropped one errors.
    let ok = unsafe {
        pg_sys::pg_class_aclcheck(
            relation,
            current_role(),
            pg_sys::ACL_SELECT as pg_sys::AclMode,
        )
    } == pg_sys::AclResult::ACLCHECK_OK;
    if !ok {
        crate::pg::error::SegmentsError::InsufficientPrivilege(format!(
            "permission denied for {what}"
        ))
        .raise();
    }
}

#[pg_extern(schema = "segments", stable, parallel_safe)]
/// True inside the extension's own writes; the lifecycle trigger uses it
/// to tell them from a user's DML.
fn _internal_write() -> bool {
    internal_write()
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

/// A caught error as a segment's failure: its SQLSTATE and its text.
fn failure(error: &CaughtError) -> crate::pg::error::Failure {
    let report = match error {
        CaughtError::PostgresError(e) | CaughtError::ErrorReport(e) => e,
        CaughtError::RustPanic { ereport, .. } => ereport,
    };
    crate::pg::error::Failure {
        sqlstate: crate::pg::error::unpacked_sqlstate(report.sql_error_code() as i32),
        message: error_text(error),
    }
}

/// Errors a subtransaction must not swallow: cancels and timeouts (57014),
/// shutdowns and terminations (class 57), and out-of-memory (53200).
fn must_propagate(error: &CaughtError) -> bool {
    let report = match error {
        CaughtError::PostgresError(e) | CaughtError::ErrorReport(e) => e,
        CaughtError::RustPanic { ereport, .. } => ereport,
    };
    let code = report.sql_error_code() as i32;
    let class = code & 0xfff; // the first two characters of the SQLSTATE
    let class_57 = pg_sys::errcodes::PgSqlErrorCode::ERRCODE_OPERATOR_INTERVENTION as i32 & 0xfff;
    class == class_57
        || code == pg_sys::errcodes::PgSqlErrorCode::ERRCODE_OUT_OF_MEMORY as i32
        // SAFETY: reads two flags the signal handlers set.
        || unsafe { pg_sys::QueryCancelPending != 0 || pg_sys::ProcDiePending != 0 }
}

/// Makes SPI statements of this transaction read-write, so each sees the
/// effects of the ones before it (pgrx runs them read-only until the
/// transaction has an xid).
pub fn writing_transaction() {
    // SAFETY: inside a transaction (every caller is SQL-callable or runs
    // in the worker's transaction); assigns an xid if there is none.
    unsafe {
        pg_sys::GetCurrentTransactionId();
    }
}

/// Runs `f` in a subtransaction. On an error, everything `f` wrote is rolled
/// back and the error (SQLSTATE and message) is returned; the outer
/// transaction goes on.
pub fn in_subtransaction<R>(
    f: impl FnOnce() -> R + std::panic::UnwindSafe,
) -> Result<R, crate::pg::error::Failure> {
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
        // see its own writes.
        pg_sys::GetCurrentTransactionId();
        // Results must outlive the subtransaction's memory context.
        pg_sys::MemoryContextSwitchTo(outer_context);
        let result = PgTryBuilder::new(|| Ok(f()))
            .catch_others(|e| Err(e))
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

/// Runs one internal SQL function as the extension, for a caller whose
/// rights were checked (or are checked inside, from the caller's role
/// passed as an argument). Returns its single value.
pub fn call_internal<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(
    sql: &str,
    args: Vec<pgrx::datum::DatumWithOid<'static>>,
) -> Option<T> {
    privileged(std::panic::AssertUnwindSafe(|| {
        crate::pg::spi::spi(pgrx::spi::Spi::get_one_with_args::<T>(sql, &args))
    }))
}

/// `call_internal` for functions returning void.
pub fn run_internal(sql: &str, args: Vec<pgrx::datum::DatumWithOid<'static>>) {
    privileged(std::panic::AssertUnwindSafe(|| {
        crate::pg::spi::spi(pgrx::spi::Spi::run_with_args(sql, &args))
    }))
}
