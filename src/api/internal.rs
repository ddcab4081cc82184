//! Internal SQL functions the extension's own SQL calls (triggers,
//! wrappers): named with a leading underscore, granted to nobody but the
//! roles the SQL that calls them runs as.

use pgrx::prelude::*;

/// True inside the extension's own writes; the lifecycle trigger uses it
/// to tell them from a user's DML.
#[pg_extern(schema = "segments", stable, parallel_safe)]
fn _internal_write() -> bool {
    crate::pg::sandbox::internal_write()
}

/// The effective value of a setting SQL functions read: calling it loads
/// the library, so the setting exists and its default comes from here, not
/// from a copy in SQL. Only settings SQL needs are readable this way.
#[pg_extern(schema = "segments", stable)]
fn _setting(name: &str) -> String {
    crate::pg::gucs::sql_visible(name)
}

/// Whether the current statement is a restore's COPY into the extension's
/// tables, for the lifecycle triggers (sql/lifecycle.sql, sql/history.sql).
#[pg_extern(schema = "segments", volatile, parallel_unsafe)]
fn _restoring() -> bool {
    crate::pg::restore::restoring()
}

/// Whether the current role may SELECT an entity's table: the row-level
/// policy of `segments.entity_key`, so that keys are readable only by
/// roles that could read them from the table itself.
#[pg_extern(schema = "segments", stable, parallel_safe)]
fn _can_read_entity(entity: &str) -> bool {
    crate::pg::authorization::may_read_entity(entity)
}
