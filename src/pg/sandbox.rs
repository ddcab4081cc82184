//! The sandbox: running a piece of work as another role (a segment's
//! owner, an export's owner) or as the extension itself, in a
//! security-restricted operation with a search path nothing a role creates
//! is on. The extension's own writes to its internal tables happen only
//! inside `privileged`, which the lifecycle trigger checks.

use pgrx::pg_sys;
use pgrx::PgTryBuilder;

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
    // Read-only SPI (pgrx's get_one would assign a transaction id, which
    // a hot standby refuses).
    let owner = crate::pg::spi::optional_value::<pg_sys::Oid>(
        "SELECT nspowner FROM pg_catalog.pg_namespace WHERE nspname OPERATOR(pg_catalog.=) 'segments'",
        &[],
    )
    .unwrap_or(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID));
    EXTENSION_OWNER.with(|o| o.set(Some(owner)));
    owner
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
    // Restored when the enclosing `sandboxed` pops its nest level, on
    // success and error alike.
    save_setting(c"jit", c"off");
}

/// Sets a user setting at the current GUC nest level, saving the old
/// value for whoever pops that level.
fn save_setting(name: &std::ffi::CStr, value: &std::ffi::CStr) {
    // SAFETY: a plain GUC assignment of a user setting, saved at the
    // current nest level.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
    }
}

/// Runs `f` with hash aggregation off, so that the `GROUP BY` of its
/// queries sorts its input and aggregates one group at a time. For the
/// related aggregates and traits of an entity with many records: a hash
/// table of hundreds of thousands of groups, each holding several
/// aggregate states (numeric sums allocate theirs), misses the CPU caches
/// on every row and spills past `work_mem`, where a sort of the same rows
/// costs half as much (bench case 9: ten traits of 5M orders over 1M
/// customers, 11 s hashed against 5.6 s sorted). The setting is restored
/// when `f` returns; an error pops it with the (sub)transaction.
pub fn grouping_by_sort<R>(f: impl FnOnce() -> R) -> R {
    sorting_in_memory(|| {
        with_setting(
            c"enable_hashagg",
            c"off",
            pg_sys::GucContext::PGC_USERSET,
            f,
        )
    })
}

/// Runs `f` with `work_mem` raised to `segments.scan_work_mem` (never
/// lowered), for the queries of a refresh that sort a whole related table
/// by record: at 1M customers a window scan sorts 5M orders, about 200 MB
/// on disk past a `work_mem` of 256MB, and the spill and merge cost more
/// than the sort (bench/NOTES.md). One such sort runs at a time.
pub fn sorting_in_memory<R>(f: impl FnOnce() -> R) -> R {
    let wanted = crate::pg::gucs::SCAN_WORK_MEM.get();
    // SAFETY: PostgreSQL's current value of work_mem, read in a backend.
    if wanted <= unsafe { pg_sys::work_mem } {
        return f();
    }
    let value = std::ffi::CString::new(format!("{wanted}kB")).expect("no NUL in a number");
    with_setting(c"work_mem", &value, pg_sys::GucContext::PGC_USERSET, f)
}

/// Runs `f` with the setting `name` set to `value` at a GUC nest level of
/// its own, popped when `f` returns (or by the abort of the enclosing
/// (sub)transaction on error), as a function's `SET` clause does.
/// `context` is the one the assignment is made in: `PGC_SUSET` for a
/// setting only a superuser may change, which the extension changes for
/// itself (`engine::live::output_plugin::allowed`).
pub fn with_setting<R>(
    name: &std::ffi::CStr,
    value: &std::ffi::CStr,
    context: pg_sys::GucContext::Type,
    f: impl FnOnce() -> R,
) -> R {
    // SAFETY: a GUC nest level of its own, popped below (or by the abort
    // of the enclosing transaction on error); the assignment is saved at
    // it, and errors are raised by PostgreSQL.
    let nest_level = unsafe { pg_sys::NewGUCNestLevel() };
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            context,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
    }
    let result = f();
    // SAFETY: pops the nest level pushed above.
    unsafe { pg_sys::AtEOXact_GUC(true, nest_level) };
    result
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
