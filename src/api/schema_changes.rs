//! The event trigger functions of sql/ddl_events.sql, which let users'
//! `ALTER TABLE` of registered tables run and bring the members views,
//! capture and registrations along (`tables::ddl`), and the members views'
//! remake for `ALTER EXTENSION UPDATE`.

use std::panic::AssertUnwindSafe;

use pgrx::prelude::*;

/// ddl_command_start (`segments_members_view_release`).
#[pg_extern(schema = "segments", sql = false)]
fn _members_view_release(fcinfo: pg_sys::FunctionCallInfo) {
    // SAFETY: called only as the event trigger function declared in
    // sql/ddl_events.sql.
    unsafe { crate::tables::ddl::before_command(fcinfo) }
}

/// ddl_command_end (`segments_members_view_restore`).
#[pg_extern(schema = "segments", sql = false)]
fn _members_view_restore(fcinfo: pg_sys::FunctionCallInfo) {
    // SAFETY: called only as the event trigger function declared in
    // sql/ddl_events.sql.
    unsafe { crate::tables::ddl::after_command(fcinfo) }
}

/// Makes every members view again from its table's current columns, with
/// its grants and comments (used by ALTER EXTENSION UPDATE: views made by
/// an older version get this version's shape). Admins only.
#[pg_extern(schema = "segments")]
fn _remake_members_views() {
    crate::pg::authorization::require_admin("remake members views");
    crate::pg::sandbox::privileged(AssertUnwindSafe(
        crate::tables::members_view::remake_members_views,
    ));
}
