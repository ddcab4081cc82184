//! `segments.refresh()`: evaluating segments now, by hand.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use pgrx::prelude::*;

use crate::engine::refresh::refresh_segments;
use crate::engine::run::RunCause;
use crate::pg::authorization::require_editor;
use crate::pg::error::OrRaise;
use crate::pg::sandbox::privileged;

/// A duration as an SQL interval.
fn interval_of(duration: Duration) -> pgrx::datum::Interval {
    pgrx::datum::Interval::new(0, 0, duration.as_micros() as i64)
        .unwrap_or_else(|_| error!("duration out of range"))
}

/// Refreshes segments now: the given ids, or every active segment (NULL).
#[pg_extern(schema = "segments")]
fn refresh(
    segments: default!(Option<Vec<i64>>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(segment_id, i64),
        name!(status, String),
        name!(member_count, Option<i64>),
        name!(entered, Option<i64>),
        name!(exited, Option<i64>),
        name!(duration, pgrx::datum::Interval),
        name!(error, Option<String>),
    ),
> {
    // Editors may refresh any segment: a refresh computes as the segment's
    // owner and changes no definition.
    require_editor("refresh segments");
    let outcomes = privileged(AssertUnwindSafe(|| {
        refresh_segments(segments.as_deref(), RunCause::Manual, false)
    }))
    .or_raise();
    TableIterator::new(outcomes.into_iter().map(|o| {
        (
            o.segment_id,
            o.status.as_str().to_string(),
            o.member_count,
            o.entered,
            o.exited,
            interval_of(o.duration),
            o.error.map(|f| f.message),
        )
    }))
}
