//! What one run of a segment is: the segment it runs (`Target`), what
//! started it (`RunCause`), how it ended (`RunStatus`, `Outcome`). Refresh,
//! live apply and the scheduler speak these types; `store` records them.

use std::time::Duration;

use pgrx::pg_sys;
use serde_json::Value;

use crate::pg::error::Failure;

/// A segment to evaluate, as loaded (and row-locked) by refresh or live
/// apply.
#[derive(Debug, Clone)]
pub struct Target {
    pub id: i64,
    pub entity: String,
    pub owner: pg_sys::Oid,
    pub active: bool,
    pub definition: Value,
}

/// How a run of one segment ended; `as_str` is its spelling in
/// `segments.segment.status`, `segments.refresh_run.status` and refresh()'s
/// result (`sql/schema.sql` checks the same words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Succeeded,
    Failed,
    /// An inactive segment: nothing was evaluated.
    Skipped,
}

impl RunStatus {
    /// The status as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Skipped => "skipped",
        }
    }
}

/// What started a run, as `segments.refresh_run.trigger` records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunCause {
    /// `segments.refresh()` (or a function that refreshes, like lookalikes).
    Manual,
    /// The segment's own schedule came due.
    Schedule,
    /// The system schedule (`segments.system_schedule`).
    System,
    /// Changes applied to a live segment.
    Live,
}

impl RunCause {
    /// The cause as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            RunCause::Manual => "manual",
            RunCause::Schedule => "schedule",
            RunCause::System => "system",
            RunCause::Live => "live",
        }
    }
}

/// How one segment's run ended, as refresh() reports it.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub segment_id: i64,
    /// The `segments.refresh_run` row of this run.
    pub run_id: i64,
    pub status: RunStatus,
    pub member_count: Option<i64>,
    pub entered: Option<i64>,
    pub exited: Option<i64>,
    pub duration: Duration,
    pub error: Option<Failure>,
}

impl Outcome {
    /// A segment that was not evaluated (inactive).
    pub fn skipped(segment_id: i64, duration: Duration) -> Outcome {
        Outcome {
            segment_id,
            run_id: 0,
            status: RunStatus::Skipped,
            member_count: None,
            entered: None,
            exited: None,
            duration,
            error: None,
        }
    }

    /// A segment whose members are now `member_count`, of which `entered`
    /// are new and `exited` left.
    pub fn succeeded(
        segment_id: i64,
        member_count: i64,
        entered: u64,
        exited: u64,
        duration: Duration,
    ) -> Outcome {
        Outcome {
            status: RunStatus::Succeeded,
            member_count: Some(member_count),
            entered: Some(entered as i64),
            exited: Some(exited as i64),
            ..Outcome::skipped(segment_id, duration)
        }
    }

    /// A segment whose evaluation failed.
    pub fn failed(segment_id: i64, failure: Failure, duration: Duration) -> Outcome {
        Outcome {
            status: RunStatus::Failed,
            error: Some(failure),
            ..Outcome::skipped(segment_id, duration)
        }
    }
}
