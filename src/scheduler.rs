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

use crate::catalog::spi;
use crate::error::OrRaise;
use crate::refresh::{refresh_segments, Trigger};
use crate::schedule::{parse_cron, Schedule};
use crate::segment::system_cron;
use crate::settings;
use crate::txn::writing_transaction;

fn from_epoch(seconds: f64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros((seconds * 1e6) as i64).unwrap_or_default()
}

/// Locks and reads when a cluster-wide job last ran.
fn job_last_run(job: &str) -> DateTime<Utc> {
    let epoch = spi(Spi::get_one_with_args::<f64>(
        "SELECT extract(epoch FROM last_run)::float8 FROM segments.scheduler_state WHERE job = $1 FOR UPDATE",
        &[job.into()],
    ));
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
    /// The latest of: created, last refreshed, last scheduled attempt.
    last: f64,
}

fn candidates() -> Vec<Candidate> {
    Spi::connect(|client| {
        spi(client.select(
            "SELECT s.id, s.schedule, s.needs_refresh, s.state = 'active',
                    extract(epoch FROM greatest(s.created_at, s.last_refreshed_at,
                        (SELECT max(r.started_at) FROM segments.refresh_run r WHERE r.segment_id = s.id)))::float8
               FROM segments.segment s
              WHERE s.type = 'dynamic'
              ORDER BY s.id",
            None,
            &[],
        ))
        .map(|row| Candidate {
            id: spi(row.get(1)).unwrap(),
            schedule: spi(row.get(2)),
            needs_refresh: spi(row.get(3)).unwrap(),
            active: spi(row.get(4)).unwrap(),
            last: spi(row.get(5)).unwrap_or_default(),
        })
        .collect()
    })
}

/// Runs one pass and returns the ids of the refresh runs it recorded.
pub fn run_pass() -> Vec<i64> {
    writing_transaction();
    let now = spi(Spi::get_one::<f64>("SELECT extract(epoch FROM clock_timestamp())::float8")).unwrap();
    let now = from_epoch(now);
    let system = system_cron();

    // The system refresh: locked, so that passes never overlap.
    let system_due = system.find_next_occurrence(&job_last_run("system"), false).is_ok_and(|t| t <= now);
    let cleanup_cron = settings::text(&settings::CLEANUP_SCHEDULE).unwrap_or_else(|| "30 1 * * *".into());
    let cleanup_cron = parse_cron(&cleanup_cron).unwrap_or_else(|e| error!("segments.cleanup_schedule: {e}"));
    let cleanup_due = cleanup_cron.find_next_occurrence(&job_last_run("cleanup"), false).is_ok_and(|t| t <= now);

    if cleanup_due {
        let deactivated = spi(Spi::get_one::<i64>("SELECT count(*) FROM segments.deactivate_unused()")).unwrap_or(0);
        if deactivated > 0 {
            log!("segments: cleanup deactivated {deactivated} unused segment(s)");
        }
        set_job_last_run("cleanup");
    }

    let mut by_system = Vec::new();
    let mut by_schedule = Vec::new();
    for candidate in candidates() {
        let Ok(schedule) = Schedule::parse(candidate.schedule.as_deref(), true) else {
            continue; // refused at save time; an old row is left alone
        };
        let own_due = match &schedule {
            Schedule::Cron(_) => schedule.next_after(from_epoch(candidate.last), &system).is_some_and(|t| t <= now),
            _ => false,
        };
        if matches!(schedule, Schedule::System) && system_due {
            by_system.push(candidate.id);
        } else if own_due || (candidate.active && candidate.needs_refresh && !matches!(schedule, Schedule::Manual)) {
            by_schedule.push(candidate.id);
        }
    }
    if system_due {
        set_job_last_run("system");
    }

    let mut runs = Vec::new();
    for (ids, trigger) in [(by_system, Trigger::System), (by_schedule, Trigger::Schedule)] {
        if ids.is_empty() {
            continue;
        }
        let outcomes = refresh_segments(Some(&ids), trigger, true).or_raise();
        let failed = outcomes.iter().filter(|o| o.status == "failed").count();
        for outcome in outcomes.iter().filter(|o| o.status == "failed") {
            log!(
                "segments: refresh of segment {} failed: {}",
                outcome.segment_id,
                outcome.error.as_deref().unwrap_or("")
            );
        }
        log!(
            "segments: {} refresh of {} segment(s): {} failed",
            trigger.as_str(),
            outcomes.len(),
            failed
        );
        runs.extend(outcomes.iter().map(|o| o.run_id));
    }

    let retention = settings::text(&settings::HISTORY_RETENTION).unwrap_or_else(|| "90 days".into());
    spi(Spi::run_with_args(
        "DELETE FROM segments.refresh_run WHERE started_at < clock_timestamp() - $1::interval",
        &[retention.as_str().into()],
    ));
    runs
}

/// One pass for `segments.run_due()`: editors may run it; it runs as the
/// extension, each segment evaluated as its owner.
#[pg_extern(schema = "segments")]
fn _run_due() -> Vec<i64> {
    crate::txn::require_editor("run the scheduler");
    crate::txn::privileged(run_pass)
}

pgrx::extension_sql!(
    r#"
-- One scheduler pass; returns the refresh runs it recorded. (Two
-- statements: the second must see the rows the first wrote.)
CREATE FUNCTION segments.run_due() RETURNS SETOF segments.refresh_run
LANGUAGE plpgsql AS $$
DECLARE
    runs bigint[] := segments._run_due();
BEGIN
    RETURN QUERY SELECT r.* FROM segments.refresh_run r WHERE r.id = ANY (runs) ORDER BY r.id;
END
$$;
"#,
    name = "run_due",
    requires = ["cleanup", _run_due]
);
