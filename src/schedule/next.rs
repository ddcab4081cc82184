//! When a segment is next due: the scheduler's view (`schedule/pass.rs`)
//! and `segment_list.next_refresh_at` (sql/manage.sql) share it. The rule is
//! segments-core's `schedule::next_refresh`.

use chrono::{DateTime, Utc};

use segments_core::schedule::{next_refresh, parse_cron, Due};

use crate::pg::error::{Raise, SegmentsError};
use crate::pg::gucs;

/// The system refresh's cron, from `segments.system_schedule`.
pub fn system_cron() -> croner::Cron {
    parse_cron(&gucs::system_schedule()).unwrap_or_else(|e| {
        SegmentsError::InvalidParameter(format!("segments.system_schedule: {e}")).raise()
    })
}

fn epoch(at: DateTime<Utc>) -> f64 {
    at.timestamp_micros() as f64 / 1e6
}

/// When a segment is next refreshed by the scheduler, as Unix epoch
/// seconds (None: never); `segments._next_refresh_epoch`.
pub fn next_refresh_epoch(
    r#type: &str,
    state: &str,
    schedule: Option<&str>,
    last_refreshed: Option<f64>,
    created: f64,
    needs_refresh: bool,
) -> Option<f64> {
    let since = DateTime::from_timestamp_micros((last_refreshed.unwrap_or(created) * 1e6) as i64)?;
    let due = Due {
        dynamic: r#type == "dynamic",
        active: state == "active",
        schedule,
        since,
        needs_refresh,
    };
    next_refresh(&due, Utc::now(), &system_cron(), &gucs::timezone()).map(epoch)
}
