//! The scheduler's SQL side: one pass on demand (`segments.run_due()` in
//! sql/wrappers.sql) and when a segment is next due
//! (`segment_list.next_refresh_at`, sql/manage.sql).

use pgrx::prelude::*;

use crate::pg::authorization::require_editor;
use crate::pg::sandbox::privileged;

/// One pass for `segments.run_due()`: editors may run it; it runs as the
/// extension, each segment evaluated as its owner.
#[pg_extern(schema = "segments")]
fn _run_due() -> Vec<i64> {
    require_editor("run the scheduler");
    privileged(crate::schedule::pass::run_pass)
}

/// When a segment is next refreshed by the scheduler, as Unix epoch
/// seconds (NULL: never).
#[pg_extern(schema = "segments", stable)]
fn _next_refresh_epoch(
    r#type: &str,
    state: &str,
    schedule: Option<&str>,
    last_refreshed: Option<f64>,
    created: f64,
    needs_refresh: bool,
) -> Option<f64> {
    crate::schedule::next::next_refresh_epoch(
        r#type,
        state,
        schedule,
        last_refreshed,
        created,
        needs_refresh,
    )
}
