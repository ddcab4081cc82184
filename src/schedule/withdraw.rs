//! Never in a DBA's way: statements that need a database to themselves
//! (`DROP DATABASE`, `ALTER DATABASE ... RENAME TO` and `SET TABLESPACE`,
//! `CREATE DATABASE ... TEMPLATE`) and statements on the extension itself
//! (`ALTER EXTENSION segments UPDATE`, `DROP EXTENSION segments`) first
//! withdraw that database's scheduler: a ProcessUtility hook marks it
//! withdrawn in the registry (so the launcher starts no other), stops it
//! (SIGTERM: its transaction rolls back) and waits for it to exit. When
//! the statement's transaction ends, the withdrawal ends and the launcher
//! is woken. `CREATE EXTENSION segments` wakes the launcher too, so the
//! database gets its scheduler at once.
//!
//! TimescaleDB's loader does the same for its schedulers.

use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::schedule::registry::{self, State};

/// The longest a withdrawal holds, whatever happens to its statement.
const WITHDRAWAL_US: i64 = 10 * 60 * 1_000_000;

/// How long a withdrawing statement waits for the scheduler to exit.
const EXIT_WAIT_MS: i64 = 10_000;

static mut PREVIOUS_HOOK: pg_sys::ProcessUtility_hook_type = None;
static CALLBACK_REGISTERED: AtomicBool = AtomicBool::new(false);
/// Set by `CREATE EXTENSION segments`: at commit, this database wants a
/// scheduler (not before: one started earlier would not see the
/// extension yet).
static WANT_AT_COMMIT: AtomicBool = AtomicBool::new(false);

/// Registers `end_of_transaction` once per backend.
fn register_callback() {
    if !CALLBACK_REGISTERED.swap(true, Ordering::Relaxed) {
        // SAFETY: a plain C callback, registered once per backend.
        unsafe { pg_sys::RegisterXactCallback(Some(end_of_transaction), std::ptr::null_mut()) };
    }
}

unsafe extern "C-unwind" {
    /// The C library's kill(2): SIGTERM to a scheduler, as the postmaster
    /// does to a background worker it terminates.
    fn kill(pid: i32, signal: i32) -> i32;
}

/// Installs the hook (`_PG_init`, while preloading).
pub fn install() {
    // SAFETY: chains the previous hook, as every ProcessUtility hook does;
    // runs once, in the postmaster, before any backend starts.
    unsafe {
        PREVIOUS_HOOK = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

/// What a utility statement means for the schedulers.
enum Effect {
    /// Withdraw the scheduler of this database first.
    Withdraw(pg_sys::Oid),
    /// Withdraw it, then drop the database's WAL capture slot
    /// (`DROP DATABASE`, `DROP EXTENSION segments`).
    WithdrawAndDropSlot(pg_sys::Oid),
    /// Wake the launcher after the statement (CREATE EXTENSION segments).
    WantScheduler,
    None,
}

/// The oid of a database named in a statement (InvalidOid: none).
unsafe fn database_oid(name: *const std::ffi::c_char) -> pg_sys::Oid {
    // SAFETY: a C string of the parse tree, or NULL.
    unsafe {
        if name.is_null() {
            return pg_sys::InvalidOid;
        }
        pg_sys::get_database_oid(name, true)
    }
}

/// Whether a C string of the parse tree is "segments".
unsafe fn is_segments(name: *const std::ffi::c_char) -> bool {
    // SAFETY: a C string of the parse tree, or NULL.
    !name.is_null() && unsafe { CStr::from_ptr(name) }.to_bytes() == b"segments"
}

/// The value of an option of a statement's option list, as text.
unsafe fn option(options: *mut pg_sys::List, name: &str) -> Option<String> {
    // SAFETY: a list of DefElem nodes, as the grammar builds it.
    unsafe {
        let options = pgrx::PgList::<pg_sys::DefElem>::from_pg(options);
        for element in options.iter_ptr() {
            if (*element).defname.is_null() || (*element).arg.is_null() {
                continue;
            }
            if CStr::from_ptr((*element).defname).to_bytes() == name.as_bytes() {
                let value = pg_sys::defGetString(element);
                return Some(CStr::from_ptr(value).to_string_lossy().into_owned());
            }
        }
        None
    }
}

/// Reads what a statement means for the schedulers.
unsafe fn effect_of(statement: *mut pg_sys::Node) -> Effect {
    // SAFETY: node tags are checked before each cast.
    unsafe {
        if statement.is_null() {
            return Effect::None;
        }
        let mut drops_slot = false;
        let oid = match (*statement).type_ {
            pg_sys::NodeTag::T_DropdbStmt => {
                drops_slot = true;
                database_oid((*(statement as *mut pg_sys::DropdbStmt)).dbname)
            }
            pg_sys::NodeTag::T_RenameStmt => {
                let rename = statement as *mut pg_sys::RenameStmt;
                if (*rename).renameType != pg_sys::ObjectType::OBJECT_DATABASE {
                    return Effect::None;
                }
                database_oid((*rename).subname)
            }
            pg_sys::NodeTag::T_CreatedbStmt => {
                let create = statement as *mut pg_sys::CreatedbStmt;
                match option((*create).options, "template") {
                    Some(template) => {
                        let template = std::ffi::CString::new(template).unwrap_or_default();
                        database_oid(template.as_ptr())
                    }
                    None => pg_sys::InvalidOid,
                }
            }
            pg_sys::NodeTag::T_AlterDatabaseStmt => {
                let alter = statement as *mut pg_sys::AlterDatabaseStmt;
                if option((*alter).options, "tablespace").is_none() {
                    return Effect::None;
                }
                database_oid((*alter).dbname)
            }
            pg_sys::NodeTag::T_AlterExtensionStmt => {
                if !is_segments((*(statement as *mut pg_sys::AlterExtensionStmt)).extname) {
                    return Effect::None;
                }
                pg_sys::MyDatabaseId
            }
            pg_sys::NodeTag::T_DropStmt => {
                let drop = statement as *mut pg_sys::DropStmt;
                if (*drop).removeType != pg_sys::ObjectType::OBJECT_EXTENSION {
                    return Effect::None;
                }
                let objects = pgrx::PgList::<pg_sys::Node>::from_pg((*drop).objects);
                let names_segments = objects.iter_ptr().any(|object| {
                    !object.is_null()
                        && (*object).type_ == pg_sys::NodeTag::T_String
                        && is_segments((*(object as *mut pg_sys::String)).sval)
                });
                if !names_segments {
                    return Effect::None;
                }
                drops_slot = true;
                pg_sys::MyDatabaseId
            }
            pg_sys::NodeTag::T_CreateExtensionStmt => {
                if is_segments((*(statement as *mut pg_sys::CreateExtensionStmt)).extname) {
                    return Effect::WantScheduler;
                }
                return Effect::None;
            }
            _ => return Effect::None,
        };
        if oid == pg_sys::InvalidOid {
            Effect::None
        } else if drops_slot {
            Effect::WithdrawAndDropSlot(oid)
        } else {
            Effect::Withdraw(oid)
        }
    }
}

/// Whether the caller owns `database` (or is a member of its owner, or
/// a superuser): only such a caller's statement may withdraw its
/// scheduler. Anyone else's fails PostgreSQL's own privilege check, and
/// must not stop a scheduler on the way (read-only SPI: it runs on a
/// standby too).
fn may_withdraw(database: pg_sys::Oid) -> bool {
    crate::pg::spi::optional_value::<bool>(
        "SELECT pg_catalog.pg_has_role(datdba, 'USAGE') FROM pg_catalog.pg_database \
          WHERE oid OPERATOR(pg_catalog.=) $1",
        &[database.into()],
    )
    .unwrap_or(false)
}

/// Withdraws a database's scheduler until this transaction ends: marks it
/// (the launcher starts none), stops the running one and waits for it to
/// exit. False when the caller may not (see `may_withdraw`).
fn withdraw(database: pg_sys::Oid) -> bool {
    if !may_withdraw(database) {
        return false;
    }
    // SAFETY: reads this process's pid.
    let me = unsafe { pg_sys::MyProcPid };
    let mut pid = 0;
    let known = registry::update(database.to_u32(), |e| {
        e.withdrawn_by = me;
        e.withdrawn_until = registry::now() + WITHDRAWAL_US;
        pid = e.pid;
        if e.pid != 0 {
            e.state = State::Withdrawn;
        }
    });
    if !known {
        return true;
    }
    register_callback();
    if pid == 0 || pid == me {
        return true;
    }
    // SAFETY: signals a process of the cluster (a scheduler exits at its
    // next interrupt check), then polls the proc array with interrupts
    // checked, so a cancel of this statement still wins.
    unsafe {
        kill(pid, pg_sys::SIGTERM as i32);
        let deadline = registry::now() + EXIT_WAIT_MS * 1000;
        while !pg_sys::BackendPidGetProc(pid).is_null() && registry::now() < deadline {
            pgrx::check_for_interrupts!();
            pg_sys::pg_usleep(10_000);
        }
    }
    true
}

/// At the end of a transaction: schedulers it withdrew may run again, and
/// a database that got the extension wants one; the launcher is woken to
/// start them.
#[pg_guard]
unsafe extern "C-unwind" fn end_of_transaction(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    let committed = event == pg_sys::XactEvent::XACT_EVENT_COMMIT;
    if !committed && event != pg_sys::XactEvent::XACT_EVENT_ABORT {
        return;
    }
    // SAFETY: reads this process's pid and database.
    let (me, database) = unsafe { (pg_sys::MyProcPid, pg_sys::MyDatabaseId) };
    let mut any = WANT_AT_COMMIT.swap(false, Ordering::Relaxed) && committed;
    if any {
        registry::update(database.to_u32(), |e| e.wanted = true);
    }
    registry::update_all(|r| {
        for entry in r.entries.iter_mut() {
            if entry.withdrawn_by == me {
                entry.withdrawn_by = 0;
                entry.withdrawn_until = 0;
                if entry.state == State::Withdrawn {
                    entry.state = State::Waiting;
                }
                any = true;
            }
        }
    });
    if any {
        registry::wake_launcher();
    }
}

unsafe extern "C-unwind" {
    /// PostgreSQL's standard ProcessUtility, declared here without pgrx's
    /// error guard: a statement's error must pass through this hook as
    /// PostgreSQL raised it (with its position and context), not be caught
    /// and raised again.
    #[link_name = "standard_ProcessUtility"]
    fn standard_process_utility(
        pstmt: *mut pg_sys::PlannedStmt,
        query_string: *const std::ffi::c_char,
        read_only_tree: bool,
        context: pg_sys::ProcessUtilityContext::Type,
        params: pg_sys::ParamListInfo,
        query_env: *mut pg_sys::QueryEnvironment,
        dest: *mut pg_sys::DestReceiver,
        qc: *mut pg_sys::QueryCompletion,
    );
}

/// Before a statement: what it means for the schedulers, and the
/// withdrawal it needs (errors here are the hook's own, raised by pgrx).
#[pg_guard]
unsafe extern "C-unwind" fn before(statement: *mut pg_sys::Node) -> bool {
    // SAFETY: the planned statement's utility node, as PostgreSQL gave it.
    unsafe {
        if !registry::ready() || pg_sys::IsBinaryUpgrade {
            return false;
        }
        match effect_of(statement) {
            Effect::Withdraw(database) => {
                withdraw(database);
                false
            }
            // The slot is dropped by its database's owner only (anyone
            // else's statement fails PostgreSQL's own check).
            Effect::WithdrawAndDropSlot(database) => {
                if withdraw(database) {
                    crate::engine::live::wal::drop_slot_of(database);
                    if database == pg_sys::MyDatabaseId {
                        crate::engine::live::publication::drop_publication();
                    }
                }
                false
            }
            Effect::WantScheduler => true,
            Effect::None => false,
        }
    }
}

/// After `CREATE EXTENSION segments`: ask for a scheduler at commit.
#[pg_guard]
unsafe extern "C-unwind" fn after_create_extension() {
    WANT_AT_COMMIT.store(true, Ordering::Relaxed);
    register_callback();
}

/// The hook: withdraw first, run the statement; after `CREATE EXTENSION
/// segments`, ask for a scheduler at commit. Not guarded by pgrx, and no
/// value with a destructor lives across the statement: its errors unwind
/// (longjmp) straight through, exactly as without the hook.
#[allow(clippy::too_many_arguments)] // PostgreSQL's hook signature
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: PostgreSQL hands the hook a planned utility statement; it is
    // passed on unchanged to the previous hook or the standard function.
    unsafe {
        let created = before((*pstmt).utilityStmt);
        match PREVIOUS_HOOK {
            Some(previous) => previous(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
            None => standard_process_utility(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
        }
        if created {
            after_create_extension();
        }
    }
}
