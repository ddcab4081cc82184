//! The background worker: with `shared_preload_libraries = 'segments'`, it
//! wakes every `segments.naptime` in database `segments.database` and runs
//! one scheduler pass (`pass::plan_pass`), each group of segments in a
//! transaction of its own under `segments.refresh_timeout`, then live
//! changes and the history trim.
//!
//! SIGTERM uses Postgres' own `die` handler, so a pass stops at the next
//! interrupt check and its transaction rolls back: a shutdown in the middle
//! of a refresh loses nothing. The postmaster restarts the worker if it
//! dies for any other reason.

use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::pg::gucs;

const RESTART_AFTER: Duration = Duration::from_secs(5);

pub fn register() {
    BackgroundWorkerBuilder::new("segments scheduler")
        .set_type("segments scheduler")
        .set_function("segments_scheduler_main")
        .set_library("segments")
        .enable_spi_access()
        .set_restart_time(Some(RESTART_AFTER))
        .load();
}

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
            log!(
                "segments scheduler: {what} failed: {}",
                crate::pg::subtransaction::error_text(&error)
            );
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
        pgrx::spi::Spi::get_one::<String>(
            "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'segments'",
        )
        .ok()
        .flatten()
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

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn segments_scheduler_main(_argument: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    // SAFETY: installs Postgres' own SIGTERM handler for backends, as
    // bgworkers that use the standard interrupt checks do.
    unsafe {
        crate::pg::versions::set_signal_handler(pg_sys::SIGTERM as i32, postgres_die);
    }
    let database = gucs::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    log!("segments scheduler started in database \"{database}\"");
    let mut warned_missing = false;
    loop {
        let naptime = Duration::from_secs(gucs::NAPTIME.get().max(1) as u64);
        if !BackgroundWorker::wait_latch(Some(naptime)) {
            break; // the postmaster died
        }
        pgrx::check_for_interrupts!();
        if BackgroundWorker::sighup_received() {
            // SAFETY: between transactions, as the postmaster's children
            // reload the configuration on SIGHUP.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        match extension_installed() {
            Some(version) if version == env!("CARGO_PKG_VERSION") => {}
            installed => {
                if !warned_missing {
                    match installed {
                        None => log!("segments scheduler: extension segments is not installed in \"{database}\"; waiting"),
                        Some(version) => log!(
                            "segments scheduler: extension segments is at version {version} in \"{database}\" but this library is {}; waiting for ALTER EXTENSION segments UPDATE",
                            env!("CARGO_PKG_VERSION")
                        ),
                    }
                    warned_missing = true;
                }
                continue;
            }
        }
        warned_missing = false;
        report_activity(
            pg_sys::BackendState::STATE_RUNNING,
            c"segments scheduler pass",
        );
        // One transaction to decide, then one per group of segments: a
        // failure (or a shutdown) loses one group's work at most, and what
        // succeeded is committed.
        let groups = in_transaction("planning a scheduler pass", || {
            crate::pg::sandbox::privileged(|| crate::schedule::pass::plan_pass().groups())
        });
        for (ids, cause) in groups.unwrap_or_default() {
            // A group that runs out of time is tried again one segment at a
            // time: only the segments that are too slow alone fail.
            if !refresh_within_timeout(&ids, cause) && ids.len() > 1 {
                for id in ids {
                    refresh_within_timeout(&[id], cause);
                }
            }
        }
        in_transaction("trimming history", || {
            crate::pg::sandbox::privileged(crate::schedule::pass::trim_history)
        });
        // Live segments: the changes captured since the last pass.
        in_transaction("applying live changes", || {
            crate::pg::sandbox::privileged(crate::engine::live::apply::apply_changes);
        });
        report_activity(pg_sys::BackendState::STATE_IDLE, c"");
    }
}
