//! A database's scheduler: a background worker the launcher starts in
//! each database it serves. It wakes every `segments.naptime` and runs one
//! scheduler pass (`pass::plan_pass`), each group of segments in a
//! transaction of its own under `segments.refresh_timeout`, then live
//! changes and the history trim. It exits when the extension is not (or no
//! longer) installed; the launcher starts it again when it is.
//!
//! SIGTERM uses Postgres' own `die` handler, so a pass stops at the next
//! interrupt check and its transaction rolls back: a shutdown, or a session
//! withdrawing the scheduler (DROP DATABASE, ALTER EXTENSION ...), in the
//! middle of a refresh loses nothing.

use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::pg::gucs;
use crate::schedule::registry::{self, State};

/// Runs `work` in a transaction of its own; an error is logged and the
/// transaction rolled back (pgrx's `BackgroundWorker::transaction` would
/// commit it).
fn in_transaction<R>(what: &str, work: impl FnOnce() -> R + std::panic::UnwindSafe) -> Option<R> {
    // SAFETY: the worker is between transactions here (each pass step runs
    // in one of its own), as StartTransactionCommand requires.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let result = PgTryBuilder::new(|| Some(work()))
        .catch_others(|error| {
            let text = crate::pg::subtransaction::error_text(&error);
            log!("segments scheduler: {what} failed: {text}");
            // SAFETY: reads this process's database.
            let database = unsafe { pg_sys::MyDatabaseId.to_u32() };
            registry::update(database, |e| e.set_last_error(&format!("{what}: {text}")));
            None
        })
        .execute();
    // SAFETY: ends the transaction started above: commits after success
    // (popping its snapshot), aborts after a caught error (which releases
    // the snapshot with everything else).
    unsafe {
        if result.is_some() {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        } else {
            pg_sys::AbortCurrentTransaction();
        }
    }
    result
}

/// Whether the extension is installed at this library's version. A newer
/// library installed under an older schema (before `ALTER EXTENSION
/// segments UPDATE`) waits rather than run against tables it does not know.
fn extension_installed() -> Option<String> {
    in_transaction("checking for the extension", || {
        // Read-only SPI: a pass that finds nothing to do assigns no
        // transaction id (pgrx's get_one would).
        crate::pg::spi::optional_value::<String>(
            "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'segments'",
            &[],
        )
    })
    .flatten()
}

/// What pg_stat_activity shows for the worker: `active` during a pass.
fn report_activity(state: pg_sys::BackendState::Type, query: &std::ffi::CStr) {
    // SAFETY: a static C string and a valid state; the worker is a backend
    // with a PgBackendStatus entry once connected.
    unsafe { pg_sys::pgstat_report_activity(state, query.as_ptr()) };
}

/// Refreshes a group in a transaction of its own under
/// `segments.refresh_timeout`; false when it ran out of time (its segments
/// are then recorded as failed with 57014 if they are alone in the group).
fn refresh_within_timeout(ids: &[i64], cause: crate::engine::run::RunCause) -> bool {
    let timeout = gucs::REFRESH_TIMEOUT.get();
    let started = std::time::Instant::now();
    let group = ids.to_vec();
    // pg_stat_activity (and segments.schedulers) show which segments.
    let shown: Vec<String> = ids.iter().take(20).map(i64::to_string).collect();
    let more = if ids.len() > 20 { ", ..." } else { "" };
    let doing = std::ffi::CString::new(format!(
        "segments scheduler: {} refresh of segments {}{more}",
        cause.as_str(),
        shown.join(", ")
    ))
    .unwrap_or_default();
    report_activity(pg_sys::BackendState::STATE_RUNNING, &doing);
    arm_refresh_timeout(timeout);
    let done = in_transaction("a scheduler group", move || {
        crate::pg::sandbox::privileged(move || crate::schedule::pass::refresh_group(&group, cause));
    });
    arm_refresh_timeout(0);
    let elapsed = started.elapsed();
    let timed_out =
        done.is_none() && timeout > 0 && elapsed >= Duration::from_millis(timeout as u64);
    if timed_out && ids.len() == 1 {
        let ids = ids.to_vec();
        in_transaction("recording a refresh timeout", move || {
            crate::pg::sandbox::privileged(move || {
                crate::schedule::pass::record_timeout(&ids, cause, timeout, elapsed)
            });
        });
    }
    !timed_out
}

/// Arms (or, for 0, disarms) the statement timeout for the worker's next
/// group: PostgreSQL arms `statement_timeout` only for statements a
/// client sends, and the worker runs its own. When it fires, the next
/// interrupt check raises 57014 and the group's transaction rolls back.
fn arm_refresh_timeout(milliseconds: i32) {
    // SAFETY: the timeout module is set up for every backend, background
    // workers included (InitPostgres registers STATEMENT_TIMEOUT).
    unsafe {
        if milliseconds > 0 {
            enable_timeout_after(STATEMENT_TIMEOUT, milliseconds);
        } else {
            disable_timeout(STATEMENT_TIMEOUT, false);
        }
    }
}

/// `TimeoutId::STATEMENT_TIMEOUT` of utils/timeout.h (the fourth, in every
/// supported major), which pgrx does not bind.
const STATEMENT_TIMEOUT: std::ffi::c_int = 3;

unsafe extern "C-unwind" {
    /// utils/timeout.h: arms a registered timeout.
    fn enable_timeout_after(id: std::ffi::c_int, delay_ms: std::ffi::c_int);
    /// utils/timeout.h: disarms it.
    fn disable_timeout(id: std::ffi::c_int, keep_indicator: bool);
    /// Postgres' SIGTERM handler for backends: sets ProcDiePending, so the
    /// next interrupt check ends the process cleanly.
    #[link_name = "die"]
    fn postgres_die(signal: std::ffi::c_int);
}

/// Records this scheduler's state in the launcher's registry.
fn set_state(database: u32, state: State) {
    // SAFETY: reads this process's pid.
    let pid = unsafe { pg_sys::MyProcPid };
    registry::update(database, |e| {
        e.state = state;
        e.pid = pid;
        if state == State::Idle {
            e.last_pass_at = registry::now();
        }
    });
}

/// A scheduler's main loop, in the database the launcher gave it.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn segments_scheduler_main(argument: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    // SAFETY: installs Postgres' own SIGTERM handler for backends, as
    // bgworkers that use the standard interrupt checks do.
    unsafe {
        crate::pg::versions::set_signal_handler(pg_sys::SIGTERM as i32, postgres_die);
    }
    let database = argument.value() as u32;
    // By oid: a database renamed since the launcher listed it is still
    // this one; a dropped one ends this worker (once: it is not restarted).
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(database)), None);
    registry::update(database, |e| {
        // SAFETY: reads this process's pid.
        e.pid = unsafe { pg_sys::MyProcPid };
        e.state = State::Starting;
        e.started_at = registry::now();
    });
    let name = database_name();
    let mut warned_outdated = false;
    let mut announced = false;
    loop {
        match extension_installed() {
            Some(version) if version == env!("CARGO_PKG_VERSION") => {}
            Some(version) => {
                set_state(database, State::OutdatedExtension);
                if !warned_outdated {
                    log!(
                        "segments scheduler: extension segments is at version {version} in \"{name}\" but this library is {}; waiting for ALTER EXTENSION segments UPDATE",
                        env!("CARGO_PKG_VERSION")
                    );
                    warned_outdated = true;
                }
                if !nap() {
                    break;
                }
                continue;
            }
            None => {
                // Not installed (or dropped): nothing to do here until
                // CREATE EXTENSION, which wakes the launcher.
                registry::update(database, |e| {
                    e.state = State::NoExtension;
                    e.pid = 0;
                    e.probed_at = registry::now();
                });
                return;
            }
        }
        warned_outdated = false;
        if !announced {
            log!("segments scheduler started in database \"{name}\"");
            announced = true;
        }
        set_state(database, State::Idle);
        if !nap() {
            break;
        }
        if extension_installed().is_none() {
            continue;
        }
        set_state(database, State::Running);
        registry::update(database, |e| e.last_pass_started_at = registry::now());
        run_pass();
        set_state(database, State::Idle);
    }
    registry::update(database, |e| {
        e.pid = 0;
        e.state = State::Waiting;
    });
}

/// Sleeps a naptime; false when the postmaster died. A configuration
/// reload (SIGHUP) is applied and ends the nap early (a new naptime or
/// schedule takes effect at once); other wake-ups (a latch set while the
/// worker started) sleep on to the end of the naptime.
fn nap() -> bool {
    let naptime = Duration::from_secs(gucs::NAPTIME.get().max(1) as u64);
    let deadline = std::time::Instant::now() + naptime;
    loop {
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        if remaining.is_zero() {
            return true;
        }
        if !BackgroundWorker::wait_latch(Some(remaining)) {
            return false;
        }
        pgrx::check_for_interrupts!();
        if BackgroundWorker::sighup_received() {
            // SAFETY: between transactions, as the postmaster's children
            // reload the configuration on SIGHUP.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            return true;
        }
    }
}

/// This database's name, for log lines.
fn database_name() -> String {
    in_transaction("reading the database name", || {
        pgrx::spi::Spi::get_one::<String>("SELECT pg_catalog.current_database()::pg_catalog.text")
            .ok()
            .flatten()
    })
    .flatten()
    .unwrap_or_default()
}

/// One pass: the due groups, the history trim, then live changes.
fn run_pass() {
    report_activity(
        pg_sys::BackendState::STATE_RUNNING,
        c"segments scheduler: planning a pass",
    );
    // One transaction to decide, then one per group of segments: a
    // failure (or a shutdown) loses one group's work at most, and what
    // succeeded is committed.
    let planned = in_transaction("planning a scheduler pass", || {
        crate::pg::sandbox::privileged(|| {
            let due = crate::schedule::pass::plan_pass();
            (due.groups(), due.traits)
        })
    });
    let (groups, traits) = planned.unwrap_or_default();
    for (ids, cause) in groups {
        // A group that runs out of time is tried again one segment at a
        // time: only the segments that are too slow alone fail.
        if !refresh_within_timeout(&ids, cause) && ids.len() > 1 {
            for id in ids {
                refresh_within_timeout(&[id], cause);
            }
        }
    }
    if traits {
        report_activity(
            pg_sys::BackendState::STATE_RUNNING,
            c"segments scheduler: computing traits",
        );
        in_transaction("computing traits", || {
            crate::pg::sandbox::privileged(crate::traits::store::refresh_all)
        });
    }
    in_transaction("trimming history", || {
        crate::pg::sandbox::privileged(crate::schedule::pass::trim_history)
    });
    // Live segments: the changes captured since the last pass.
    report_activity(
        pg_sys::BackendState::STATE_RUNNING,
        c"segments scheduler: applying live changes",
    );
    let applied = in_transaction("applying live changes", || {
        crate::pg::sandbox::privileged(crate::engine::live::apply::apply_changes);
    });
    // WAL capture: once the application committed, its slot moves on.
    if applied.is_some() && crate::engine::live::publication::wanted() {
        in_transaction("advancing the WAL capture slot", || {
            crate::pg::sandbox::privileged(crate::engine::live::wal::advance_to_recorded)
        });
    }
    report_activity(pg_sys::BackendState::STATE_IDLE, c"");
}
