//! The SQL side of live segments: keeping capture installed, and applying
//! queued changes (`segments.apply_changes()` in sql/wrappers.sql).

use pgrx::prelude::*;

use crate::pg::authorization::require_editor;
use crate::pg::sandbox::privileged;

/// Installs or removes capture triggers to match the live segments; the
/// lifecycle trigger calls it when schedules, states or definitions change.
#[pg_extern(schema = "segments")]
fn _sync_capture() {
    privileged(crate::engine::live::install::sync_capture);
}

/// One application of queued changes, for `segments.apply_changes()`.
#[pg_extern(schema = "segments")]
fn _apply_changes() -> Vec<i64> {
    require_editor("apply changes to live segments");
    privileged(crate::engine::live::apply::apply_changes)
}
