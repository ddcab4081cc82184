//! The launcher: one background worker per cluster (with the preload),
//! connected to no database, that keeps a scheduler running in every
//! database that has the extension (`segments.database` names one to serve
//! it alone), up to `segments.max_schedulers`.
//!
//! Every `segments.naptime`, or at once when a session wakes it (`CREATE
//! EXTENSION segments`, the end of a statement that withdrew a scheduler),
//! it lists the databases from `pg_database` and starts a scheduler
//! (`scheduler.rs`) where none runs. A scheduler that finds no extension
//! exits; its database is tried again when the extension is created, or
//! after ten minutes. A database that is dropped or renamed away from
//! `segments.database` loses its scheduler; a withdrawn one gets none until
//! the withdrawing statement ends.
//!
//! It starts once recovery has finished (never on a standby, until it is
//! promoted) and never under `pg_upgrade` (`_PG_init` does not register it).

use std::collections::HashMap;
use std::time::Duration;

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime,
    DynamicBackgroundWorker, SignalWakeFlags,
};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::pg::gucs;
use crate::schedule::registry::{self, State};

/// How long a database whose scheduler found no extension waits before it
/// is tried again without being asked (`CREATE EXTENSION` asks at once).
const RECHECK_AFTER_US: i64 = 10 * 60 * 1_000_000;

/// Registers the launcher (`_PG_init`, while preloading).
pub fn register() {
    BackgroundWorkerBuilder::new("segments launcher")
        .set_type("segments launcher")
        .set_function("segments_launcher_main")
        .set_library("segments")
        .enable_shmem_access(None)
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// A database the launcher may serve.
struct Database {
    oid: u32,
    name: String,
}

/// The databases that accept connections and are not templates, read from
/// the shared catalog `pg_database` (the launcher has no database).
fn databases() -> Vec<Database> {
    let mut out = Vec::new();
    // SAFETY: a transaction of the launcher's own around a catalog scan of
    // a shared catalog, ended on every path (an error here is FATAL for
    // the launcher, which the postmaster restarts).
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        let relation = pg_sys::table_open(
            pg_sys::DatabaseRelationId,
            pg_sys::AccessShareLock as pg_sys::LOCKMODE,
        );
        let scan = pg_sys::table_beginscan_catalog(relation, 0, std::ptr::null_mut());
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
            if !(*form).datallowconn || (*form).datistemplate {
                continue;
            }
            let name = std::ffi::CStr::from_ptr((*form).datname.data.as_ptr())
                .to_string_lossy()
                .into_owned();
            out.push(Database {
                oid: (*form).oid.to_u32(),
                name,
            });
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(relation, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
    }
    out
}

/// Whether `pid` is a live backend (its withdrawal still holds).
fn backend_alive(pid: i32) -> bool {
    // SAFETY: looks a pid up in the proc array under its own lock.
    pid != 0 && unsafe { !pg_sys::BackendPidGetProc(pid).is_null() }
}

/// Starts a scheduler for one database.
fn start_scheduler(database: &Database) -> Option<DynamicBackgroundWorker> {
    // SAFETY: reads this process's pid.
    let me = unsafe { pg_sys::MyProcPid };
    let name = format!("segments scheduler {}", database.name);
    let name: String = name.chars().take(90).collect();
    BackgroundWorkerBuilder::new(&name)
        .set_type("segments scheduler")
        .set_function("segments_scheduler_main")
        .set_library("segments")
        .set_argument(Some(pg_sys::Datum::from(database.oid)))
        .enable_shmem_access(None)
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .set_notify_pid(me)
        .load_dynamic()
        .ok()
}

/// One look at the databases: schedulers started where they should run,
/// stopped where they should not.
fn reconcile(
    running: &mut HashMap<u32, DynamicBackgroundWorker>,
    last_start: &mut HashMap<u32, i64>,
    warned: &mut bool,
) {
    let only = gucs::database();
    let served: Vec<Database> = databases()
        .into_iter()
        .filter(|d| only.is_empty() || d.name == only)
        .collect();
    let now = registry::now();
    // Schedulers that exited (their entries say so, whatever ended
    // them), or whose database is no longer served.
    let mut exited = Vec::new();
    let mut unserved = Vec::new();
    for (oid, worker) in running.iter() {
        let alive = matches!(
            worker.pid(),
            Ok(_) | Err(BackgroundWorkerStatus::NotYetStarted)
        );
        if !alive {
            exited.push(*oid);
        } else if !served.iter().any(|d| d.oid == *oid) {
            unserved.push(*oid);
        }
    }
    for oid in &exited {
        running.remove(oid);
    }
    for oid in unserved {
        if let Some(worker) = running.remove(&oid) {
            worker.terminate();
        }
    }
    for oid in exited {
        registry::update(oid, |e| {
            e.pid = 0;
            if !matches!(e.state, State::NoExtension | State::Withdrawn) {
                e.state = State::Waiting;
            }
        });
    }
    let Some(snapshot) = registry::snapshot() else {
        return;
    };
    registry::update_all(|r| {
        for entry in r.entries.iter_mut() {
            if entry.database != 0 && !served.iter().any(|d| d.oid == entry.database) {
                *entry = registry::Entry::default();
            }
        }
    });
    let limit = gucs::MAX_SCHEDULERS.get().max(1) as usize;
    for database in &served {
        let entry = snapshot
            .entries
            .iter()
            .find(|e| e.database == database.oid)
            .copied()
            .unwrap_or_default();
        if running.contains_key(&database.oid) {
            continue;
        }
        let withdrawn = entry.withdrawn_by != 0
            && now < entry.withdrawn_until
            && backend_alive(entry.withdrawn_by);
        if withdrawn {
            registry::update(database.oid, |e| e.state = State::Withdrawn);
            continue;
        }
        let recheck_later = entry.state == State::NoExtension
            && !entry.wanted
            && now - entry.probed_at < RECHECK_AFTER_US;
        // A scheduler that exited on its own is started again after a
        // naptime at the earliest (never in a tight loop).
        let naptime_us = i64::from(gucs::NAPTIME.get().max(1)) * 1_000_000;
        let too_soon = last_start
            .get(&database.oid)
            .is_some_and(|at| now - at < naptime_us);
        if recheck_later || (too_soon && !entry.wanted) {
            continue;
        }
        if running.len() >= limit {
            registry::update(database.oid, |e| e.state = State::OverLimit);
            if !*warned {
                log!(
                    "segments launcher: segments.max_schedulers ({limit}) reached; database \"{}\" has no scheduler",
                    database.name
                );
                *warned = true;
            }
            continue;
        }
        match start_scheduler(database) {
            Some(worker) => {
                registry::update(database.oid, |e| {
                    e.state = State::Starting;
                    e.wanted = false;
                    e.withdrawn_by = 0;
                });
                running.insert(database.oid, worker);
                last_start.insert(database.oid, now);
            }
            None => {
                if !*warned {
                    log!(
                        "segments launcher: no background worker slot for database \"{}\" (raise max_worker_processes)",
                        database.name
                    );
                    *warned = true;
                }
            }
        }
    }
}

/// The launcher's main loop.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn segments_launcher_main(_argument: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(None, None);
    // SAFETY: this process's pid and latch, recorded so that sessions can
    // wake it.
    unsafe { registry::set_launcher(pg_sys::MyProcPid, pg_sys::MyLatch) };
    let mut running: HashMap<u32, DynamicBackgroundWorker> = HashMap::new();
    let mut last_start: HashMap<u32, i64> = HashMap::new();
    let mut warned = false;
    loop {
        reconcile(&mut running, &mut last_start, &mut warned);
        let naptime = Duration::from_secs(gucs::NAPTIME.get().max(1) as u64);
        if !BackgroundWorker::wait_latch(Some(naptime)) || BackgroundWorker::sigterm_received() {
            break;
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: between transactions.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            warned = false;
        }
    }
    registry::set_launcher(0, std::ptr::null_mut());
}
