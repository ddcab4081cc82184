//! What runs and who runs it, for DBAs: the SQL functions behind the views
//! `segments.activity` and `segments.schedulers` (sql/operations.sql).
//! Both read shared memory, so they show every backend and scheduler of
//! the cluster; without the preload they return no rows.

use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;

/// A TimestampTz of shared memory as SQL (NULL for 0: never).
fn timestamp(at: i64) -> Option<TimestampWithTimeZone> {
    if at == 0 {
        return None;
    }
    TimestampWithTimeZone::try_from(at).ok()
}

/// Every running refresh, live application and cleanup, from any backend
/// or scheduler: pid, database, kind, its segments (the first 32), phase,
/// segments done and in all, and when it started.
#[pg_extern(schema = "segments", volatile, parallel_safe)]
fn _activity() -> TableIterator<
    'static,
    (
        name!(pid, i32),
        name!(database, pg_sys::Oid),
        name!(kind, String),
        name!(segments, Vec<i64>),
        name!(phase, String),
        name!(segments_done, i64),
        name!(segments_total, i64),
        name!(started_at, Option<TimestampWithTimeZone>),
    ),
> {
    let rows: Vec<_> = crate::engine::progress::running()
        .into_iter()
        .map(|s| {
            (
                s.pid,
                pg_sys::Oid::from(s.database),
                s.kind.as_str().to_string(),
                s.segments(),
                s.phase(),
                i64::from(s.done),
                i64::from(s.total),
                timestamp(s.started_at),
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// The launcher's view of every database it serves: its scheduler's pid
/// and state, when it started and last finished a pass, and whether a
/// statement has withdrawn it.
#[pg_extern(schema = "segments", volatile, parallel_safe)]
fn _schedulers() -> TableIterator<
    'static,
    (
        name!(database, pg_sys::Oid),
        name!(pid, Option<i32>),
        name!(state, String),
        name!(started_at, Option<TimestampWithTimeZone>),
        name!(last_pass_started_at, Option<TimestampWithTimeZone>),
        name!(last_pass_finished_at, Option<TimestampWithTimeZone>),
        name!(last_error, Option<String>),
        name!(last_error_at, Option<TimestampWithTimeZone>),
        name!(launcher_pid, Option<i32>),
    ),
> {
    let Some(registry) = crate::schedule::registry::snapshot() else {
        return TableIterator::new(Vec::new());
    };
    let launcher = (registry.launcher_pid != 0).then_some(registry.launcher_pid);
    let rows: Vec<_> = registry
        .entries
        .iter()
        .filter(|e| e.database != 0)
        .map(|e| {
            (
                pg_sys::Oid::from(e.database),
                (e.pid != 0).then_some(e.pid),
                e.state.as_str().to_string(),
                timestamp(e.started_at),
                timestamp(e.last_pass_started_at),
                timestamp(e.last_pass_at),
                e.last_error(),
                timestamp(e.last_error_at),
                launcher,
            )
        })
        .collect();
    TableIterator::new(rows)
}
