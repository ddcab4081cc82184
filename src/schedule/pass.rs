//! One scheduler pass: what the background worker runs every naptime, and
//! what `segments.run_due()` runs from any other scheduler.
//!
//! - the system refresh, on `segments.system_schedule`: every dynamic
//!   segment on the `system` schedule;
//! - dynamic segments whose own schedule (daily, weekly, monthly, cron) is
//!   due since their last refresh or scheduled attempt;
//! - dynamic segments just created, changed or activated (`needs_refresh`);
//! - the unused-segment cleanup, on `segments.cleanup_schedule`;
//! - removal of history older than `segments.history_retention`.
//!
//! Inactive segments that come due are recorded as `skipped`.

use chrono::{DateTime, Utc};
use pgrx::prelude::*;
use pgrx::spi::Spi;

use segments_core::schedule::{parse_cron, Schedule};

use crate::engine::refresh::refresh_segments;
use crate::engine::run::{RunCause, RunStatus};
use crate::pg::error::{OrRaise, Raise, SegmentsError};
use crate::pg::gucs;
use crate::pg::spi::{required, spi};
use crate::pg::subtransaction::{refuse_in_recovery, writing_transaction};
use crate::schedule::next::system_cron;

fn from_epoch(seconds: f64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros((seconds * 1e6) as i64).unwrap_or_default()
}

/// Reads when a cluster-wide job last ran; locks its row when `lock`.
fn job_last_run(job: &str, lock: bool) -> DateTime<Utc> {
    let sql = if lock {
        "SELECT extract(epoch FROM last_run)::float8 FROM segments.scheduler_state WHERE job = $1 FOR UPDATE"
    } else {
        "SELECT extract(epoch FROM last_run)::float8 FROM segments.scheduler_state WHERE job = $1"
    };
    // Read-only SPI (pgrx's get_one would assign a transaction id).
    let epoch = crate::pg::spi::optional_value::<f64>(sql, &[job.into()]);
    from_epoch(epoch.unwrap_or_default())
}

fn set_job_last_run(job: &str) {
    spi(Spi::run_with_args(
        "UPDATE segments.scheduler_state SET last_run = clock_timestamp() WHERE job = $1",
        &[job.into()],
    ));
}

struct Candidate {
    id: i64,
    schedule: Option<String>,
    needs_refresh: bool,
    active: bool,
    dynamic: bool,
    consecutive_failures: i32,
    /// The latest of: created, last refreshed, last scheduled attempt.
    last: f64,
    /// The segment's status: an inactive segment already recorded as
    /// skipped is not recorded again.
    skipped: bool,
}

fn candidates() -> Vec<Candidate> {
    Spi::connect(|client| {
        spi(client.select(
            "SELECT s.id, s.schedule, s.needs_refresh, s.state = 'active',
                    extract(epoch FROM greatest(s.created_at, s.last_refreshed_at,
                        (SELECT max(r.started_at) FROM segments.refresh_run r WHERE r.segment_id = s.id)))::float8,
                    s.type = 'dynamic', s.consecutive_failures, s.status = 'skipped'
               FROM segments.segment s
              WHERE s.type = 'dynamic' OR (s.needs_refresh AND s.state = 'active')
              ORDER BY s.id",
            None,
            &[],
        ))
        .map(|row| Candidate {
            id: required(&row, 1),
            schedule: spi(row.get(2)),
            needs_refresh: required(&row, 3),
            active: required(&row, 4),
            last: spi(row.get(5)).unwrap_or_default(),
            dynamic: spi(row.get(6)).unwrap_or(true),
            consecutive_failures: spi(row.get(7)).unwrap_or(0),
            skipped: spi(row.get(8)).unwrap_or(false),
        })
        .collect()
    })
}

/// Seconds to wait before retrying a segment after `failures` failed
/// refreshes in a row: naptime, doubling, at most an hour.
pub fn retry_wait(naptime: f64, failures: i32) -> f64 {
    let doublings = (failures.max(1) - 1).min(20);
    (naptime * f64::from(1u32 << doublings)).min(3600.0)
}

/// The first step of a pass: runs the cleanup when due and decides what to
/// refresh. A pass that finds nothing due writes nothing (no transaction
/// id, no WAL): an idle database stays idle for archiving, standbys and
/// vacuum. Otherwise it decides again with the jobs' rows locked, so that
/// passes never overlap.
pub fn plan_pass() -> Due {
    refuse_in_recovery();
    if decide(false).is_none() {
        return Due::default();
    }
    writing_transaction();
    decide(true).unwrap_or_default()
}

/// What a pass does, None if nothing. Only with `locked` (a writing
/// transaction) are the jobs' rows locked, the cleanup run and the jobs'
/// last runs recorded.
fn decide(locked: bool) -> Option<Due> {
    let now = crate::pg::spi::optional_value::<f64>(
        "SELECT extract(epoch FROM clock_timestamp())::float8",
        &[],
    )
    .expect("clock_timestamp() is never NULL");
    let now = from_epoch(now);
    let system = system_cron();

    // The system refresh: locked, so that passes never overlap.
    let zone = crate::pg::gucs::timezone();
    let system_due =
        segments_core::schedule::next_in_zone(&system, job_last_run("system", locked), &zone)
            .is_some_and(|t| t <= now);
    let cleanup_cron = gucs::cleanup_schedule();
    let cleanup_cron = parse_cron(&cleanup_cron).unwrap_or_else(|e| {
        SegmentsError::InvalidParameter(format!("segments.cleanup_schedule: {e}")).raise()
    });
    let cleanup_due = segments_core::schedule::next_in_zone(
        &cleanup_cron,
        job_last_run("cleanup", locked),
        &zone,
    )
    .is_some_and(|t| t <= now);

    if cleanup_due && !locked {
        return Some(Due::default());
    }
    if cleanup_due {
        let _shown =
            crate::engine::progress::Progress::start(crate::engine::progress::Kind::Cleanup, &[]);
        crate::engine::progress::phase("deactivating unused segments");
        let deactivated = spi(Spi::get_one::<i64>(
            "SELECT count(*) FROM segments.deactivate_unused()",
        ))
        .unwrap_or(0);
        if deactivated > 0 {
            log!("segments: cleanup deactivated {deactivated} unused segment(s)");
        }
        set_job_last_run("cleanup");
    }

    let mut by_system = Vec::new();
    let mut by_schedule = Vec::new();
    let naptime = gucs::NAPTIME.get().max(1) as f64;
    for candidate in candidates() {
        // An inactive segment is recorded as skipped once when it comes
        // due, not on every pass after: thousands of inactive segments
        // cost a pass nothing (the active-segment limit does not bound
        // them).
        if !candidate.active && candidate.skipped {
            continue;
        }
        // A segment that keeps failing waits naptime, then twice that, ...
        // up to an hour after its last attempt.
        if candidate.consecutive_failures > 0 {
            let wait = retry_wait(naptime, candidate.consecutive_failures);
            if from_epoch(candidate.last + wait) > now {
                continue;
            }
        }
        if !candidate.dynamic {
            // A static segment is computed once when created, changed or
            // resumed ("resume computation"); otherwise only when asked.
            if candidate.needs_refresh && candidate.active {
                by_schedule.push(candidate.id);
            }
            continue;
        }
        let Ok(schedule) = Schedule::parse(candidate.schedule.as_deref(), true) else {
            continue; // refused at save time; an old row is left alone
        };
        let own_due = match &schedule {
            Schedule::Cron(_) => schedule
                .next_after(from_epoch(candidate.last), &system, &zone)
                .is_some_and(|t| t <= now),
            _ => false,
        };
        if matches!(schedule, Schedule::System | Schedule::Live) && system_due {
            by_system.push(candidate.id);
        } else if own_due
            || (candidate.active
                && candidate.needs_refresh
                && !matches!(schedule, Schedule::Manual))
        {
            by_schedule.push(candidate.id);
        }
    }
    if system_due && locked {
        set_job_last_run("system");
    }
    let nothing = by_system.is_empty() && by_schedule.is_empty() && !system_due && !cleanup_due;
    (!nothing).then_some(Due {
        by_system,
        by_schedule,
        traits: system_due,
    })
}

/// What a pass refreshes, by what started it.
#[derive(Default)]
pub struct Due {
    pub by_system: Vec<i64>,
    pub by_schedule: Vec<i64>,
    /// The system refresh also computes every trait (`refresh_traits`).
    pub traits: bool,
}

impl Due {
    /// Groups of segments that share a plan (entity and owner), each with
    /// its cause: the worker commits after each group.
    pub fn groups(&self) -> Vec<(Vec<i64>, RunCause)> {
        let mut out = Vec::new();
        for (ids, cause) in [
            (&self.by_system, RunCause::System),
            (&self.by_schedule, RunCause::Schedule),
        ] {
            if ids.is_empty() {
                continue;
            }
            let groups: Vec<Vec<i64>> = Spi::connect(|client| {
                spi(client.select(
                    "SELECT pg_catalog.array_agg(id ORDER BY id) FROM segments.segment \
                      WHERE id OPERATOR(pg_catalog.=) ANY ($1) GROUP BY entity, owner ORDER BY pg_catalog.min(id)",
                    None,
                    &[ids.clone().into()],
                ))
                .filter_map(|row| spi(row.get::<Vec<i64>>(1)))
                .collect()
            });
            out.extend(groups.into_iter().map(|g| (g, cause)));
        }
        out
    }
}

/// Refreshes one group and logs the outcome; returns the runs recorded.
pub fn refresh_group(ids: &[i64], cause: RunCause) -> Vec<i64> {
    let mut runs = Vec::new();
    {
        let outcomes = refresh_segments(Some(ids), cause, true).or_raise();
        let failed = outcomes
            .iter()
            .filter(|o| o.status == RunStatus::Failed)
            .count();
        for outcome in outcomes.iter().filter(|o| o.status == RunStatus::Failed) {
            log!(
                "segments: refresh of segment {} failed: {}",
                outcome.segment_id,
                outcome.error.as_ref().map_or("", |f| f.message.as_str())
            );
        }
        log!(
            "segments: {} refresh of {} segment(s): {} failed",
            cause.as_str(),
            outcomes.len(),
            failed
        );
        runs.extend(outcomes.iter().map(|o| o.run_id));
    }
    runs
}

/// Records that the worker's refresh of a group was cancelled by
/// `segments.refresh_timeout` (its own transaction rolled back): each
/// segment fails with 57014, keeping its membership, and is retried with
/// backoff like any failure.
pub fn record_timeout(ids: &[i64], cause: RunCause, timeout_ms: i32, elapsed: std::time::Duration) {
    writing_transaction();
    let started = crate::pg::spi::optional_value::<pgrx::datum::TimestampWithTimeZone>(
        "SELECT pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $1)",
        &[elapsed.as_secs_f64().into()],
    )
    .expect("clock_timestamp() is never NULL");
    for id in ids {
        let failure = crate::pg::error::Failure {
            sqlstate: "57014".into(),
            message: format!(
                "canceled: the refresh took longer than segments.refresh_timeout ({timeout_ms} ms)"
            ),
        };
        let run = crate::engine::store::Run {
            cause,
            started_at: started,
            keys_examined: None,
        };
        crate::engine::store::store_failure(*id, failure, &run, elapsed);
    }
    log!("segments: {} refresh of {} segment(s) canceled after {timeout_ms} ms (segments.refresh_timeout)", cause.as_str(), ids.len());
}

/// Drops history older than `segments.history_retention`: refresh runs
/// with their membership changes, and definition versions but the latest;
/// and feed changes no feed needs (`segments.feed_retention`).
pub fn trim_history() {
    refuse_in_recovery();
    let retention = gucs::history_retention();
    // Nothing past its retention: nothing is written (see `plan_pass`).
    if !history_to_trim(&retention) && !crate::activation::feed::anything_to_expire() {
        return;
    }
    writing_transaction();
    spi(Spi::run_with_args(
        "DELETE FROM segments.refresh_run WHERE started_at < clock_timestamp() - $1::interval",
        &[retention.as_str().into()],
    ));
    // Definition versions too, but never a segment's latest: it is what
    // the segment is now, and what definition_history shows last. The
    // oldest version kept gets its definition written out first if it
    // stored none (NULL: as the version before, which is going).
    for sql in [
        "WITH keep AS (SELECT segment_id, LEAST(pg_catalog.max(version), \
                           pg_catalog.min(version) FILTER (WHERE changed_at OPERATOR(pg_catalog.>=) \
                               (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) $1::pg_catalog.interval))) AS first \
                         FROM segments.definition_version GROUP BY segment_id) \
         UPDATE segments.definition_version v SET definition = \
                (SELECT p.definition FROM segments.definition_version p \
                  WHERE p.segment_id OPERATOR(pg_catalog.=) v.segment_id AND p.version OPERATOR(pg_catalog.<) v.version \
                    AND p.definition IS NOT NULL ORDER BY p.version DESC LIMIT 1) \
           FROM keep k WHERE v.segment_id OPERATOR(pg_catalog.=) k.segment_id \
            AND v.version OPERATOR(pg_catalog.=) k.first AND v.definition IS NULL",
        "WITH keep AS (SELECT segment_id, LEAST(pg_catalog.max(version), \
                           pg_catalog.min(version) FILTER (WHERE changed_at OPERATOR(pg_catalog.>=) \
                               (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) $1::pg_catalog.interval))) AS first \
                         FROM segments.definition_version GROUP BY segment_id) \
         DELETE FROM segments.definition_version v USING keep k \
          WHERE v.segment_id OPERATOR(pg_catalog.=) k.segment_id AND v.version OPERATOR(pg_catalog.<) k.first",
    ] {
        spi(Spi::run_with_args(sql, &[retention.as_str().into()]));
    }
    crate::activation::feed::expire();
}

/// Whether a refresh run, or a definition version other than a segment's
/// latest, is older than `retention` (what `trim_history` removes; a
/// version found here may still be kept if an older one outlived a clock
/// change: then the trim writes for nothing, never the other way).
fn history_to_trim(retention: &str) -> bool {
    crate::pg::spi::optional_value::<bool>(
        "SELECT EXISTS (SELECT FROM segments.refresh_run r \
                         WHERE r.started_at OPERATOR(pg_catalog.<) (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) $1::pg_catalog.interval)) \
             OR EXISTS (SELECT FROM segments.definition_version v \
                         WHERE v.changed_at OPERATOR(pg_catalog.<) (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) $1::pg_catalog.interval) \
                           AND v.version OPERATOR(pg_catalog.<) (SELECT pg_catalog.max(p.version) FROM segments.definition_version p \
                                                                  WHERE p.segment_id OPERATOR(pg_catalog.=) v.segment_id))",
        &[retention.into()],
    ) != Some(false)
}

/// One whole pass in the current transaction (`segments.run_due()`).
pub fn run_pass() -> Vec<i64> {
    let due = plan_pass();
    let mut runs = Vec::new();
    for (ids, trigger) in due.groups() {
        runs.extend(refresh_group(&ids, trigger));
    }
    if due.traits {
        crate::traits::store::refresh_all();
    }
    trim_history();
    runs
}

#[cfg(test)]
mod tests {
    use super::retry_wait;

    #[test]
    fn retries_double_from_naptime_up_to_an_hour() {
        let waits: Vec<f64> = (1..=4).map(|f| retry_wait(10.0, f)).collect();
        assert_eq!(waits, vec![10.0, 20.0, 40.0, 80.0]);
        assert_eq!(retry_wait(10.0, 12), 3600.0);
        assert_eq!(retry_wait(10.0, i32::MAX), 3600.0);
    }
}
