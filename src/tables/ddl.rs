//! Schema changes of registered tables: what the event triggers do to let
//! users' `ALTER TABLE` run and bring what segments keeps on those tables
//! along, in the same transaction.
//!
//! - Members views: dropped (grants saved) at `ddl_command_start`, made again
//!   from the table's new columns at `ddl_command_end`.
//! - Live capture: the row triggers on watched columns (which would block
//!   `DROP COLUMN` and `ALTER COLUMN TYPE`, and be dropped by `CASCADE`) are
//!   dropped at `ddl_command_start` and made again, on the columns the
//!   table still has, at `ddl_command_end`.
//! - Registrations follow column renames: a renamed key, foreign-key or
//!   time column is recorded under its new name, as the members view and
//!   capture follow it. (Definitions name attributes as users wrote them: a
//!   segment reading a renamed attribute fails its next refresh, naming it.)

use std::panic::AssertUnwindSafe;

use pgrx::prelude::*;
use pgrx::spi::Spi;

use crate::pg::spi::{required, spi};
use crate::tables::members_view::{release_members_view, restore_members_views};

thread_local! {
    /// Whether a ddl_command_start dropped capture triggers that its
    /// ddl_command_end must make again.
    static CAPTURE_RELEASED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The relation an ALTER TABLE or a column rename is about, if any.
///
/// # Safety
/// `fcinfo` must be the call info of an event trigger function.
unsafe fn altered_relation(fcinfo: pg_sys::FunctionCallInfo) -> Option<pg_sys::Oid> {
    // SAFETY: Postgres passes EventTriggerData as the context of event
    // trigger functions; the node tags are checked before each cast.
    unsafe {
        let context = (*fcinfo).context;
        if context.is_null() || (*context).type_ != pg_sys::NodeTag::T_EventTriggerData {
            return None;
        }
        let tree = (*(context as *mut pg_sys::EventTriggerData)).parsetree;
        if tree.is_null() {
            return None;
        }
        let relation = match (*tree).type_ {
            pg_sys::NodeTag::T_AlterTableStmt => (*(tree as *mut pg_sys::AlterTableStmt)).relation,
            pg_sys::NodeTag::T_RenameStmt => {
                let rename = tree as *mut pg_sys::RenameStmt;
                if (*rename).renameType != pg_sys::ObjectType::OBJECT_COLUMN {
                    return None;
                }
                (*rename).relation
            }
            _ => return None,
        };
        if relation.is_null() {
            return None;
        }
        let oid = pg_sys::RangeVarGetRelidExtended(
            relation,
            pg_sys::NoLock as i32,
            pg_sys::RVROption::RVR_MISSING_OK,
            None,
            std::ptr::null_mut(),
        );
        (oid != pg_sys::InvalidOid).then_some(oid)
    }
}

/// A column rename's relation, old name and new name, if the statement is
/// one.
///
/// # Safety
/// `fcinfo` must be the call info of an event trigger function.
unsafe fn renamed_column(
    fcinfo: pg_sys::FunctionCallInfo,
) -> Option<(pg_sys::Oid, String, String)> {
    // SAFETY: as in `altered_relation`; the names are C strings of the
    // parse tree.
    unsafe {
        let relation = altered_relation(fcinfo)?;
        let context = (*fcinfo).context as *mut pg_sys::EventTriggerData;
        let tree = (*context).parsetree;
        if (*tree).type_ != pg_sys::NodeTag::T_RenameStmt {
            return None;
        }
        let rename = tree as *mut pg_sys::RenameStmt;
        if (*rename).subname.is_null() || (*rename).newname.is_null() {
            return None;
        }
        let old = std::ffi::CStr::from_ptr((*rename).subname)
            .to_string_lossy()
            .into_owned();
        let new = std::ffi::CStr::from_ptr((*rename).newname)
            .to_string_lossy()
            .into_owned();
        Some((relation, old, new))
    }
}

/// Records a renamed key, foreign-key or time column under its new name;
/// true when a registration changed.
fn follow_rename(relation: pg_sys::Oid, old: &str, new: &str) -> bool {
    let mut changed = 0;
    for sql in [
        "UPDATE segments.entity SET key_column = $3 WHERE relation::pg_catalog.oid OPERATOR(pg_catalog.=) $1 AND key_column OPERATOR(pg_catalog.=) $2",
        "UPDATE segments.related SET foreign_key = $3 WHERE relation::pg_catalog.oid OPERATOR(pg_catalog.=) $1 AND foreign_key OPERATOR(pg_catalog.=) $2",
        "UPDATE segments.related SET time_column = $3 WHERE relation::pg_catalog.oid OPERATOR(pg_catalog.=) $1 AND time_column OPERATOR(pg_catalog.=) $2",
    ] {
        changed += Spi::connect_mut(|client| {
            spi(client.update(sql, None, &[relation.into(), old.into(), new.into()])).len()
        });
    }
    changed > 0
}

/// Drops the capture row triggers of a relation (they depend on the columns
/// they watch); true when there were any.
fn release_capture(relation: pg_sys::Oid) -> bool {
    let triggers: Vec<String> = Spi::connect(|client| {
        spi(client.select(
            "SELECT pg_catalog.format('%I ON %I.%I', t.tgname, n.nspname, c.relname) FROM pg_catalog.pg_trigger t \
               JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.tgrelid \
               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
              WHERE t.tgrelid OPERATOR(pg_catalog.=) $1 AND NOT t.tgisinternal \
                AND t.tgname::pg_catalog.text LIKE 'segments\\_live\\_upd\\_%'",
            None,
            &[relation.into()],
        ))
        .map(|row| required::<String>(&row, 1))
        .collect()
    });
    for trigger in &triggers {
        spi(Spi::run(&format!("DROP TRIGGER {trigger}")));
    }
    !triggers.is_empty()
}

/// ddl_command_start: before an ALTER TABLE (or a column rename) of a
/// registered entity table, its members view is dropped, grants saved, so
/// that DROP COLUMN and ALTER COLUMN TYPE just work, and the capture row
/// triggers on its columns are dropped; `after_command` makes them again.
///
/// # Safety
/// `fcinfo` must be the call info of an event trigger function.
pub unsafe fn before_command(fcinfo: pg_sys::FunctionCallInfo) {
    // SAFETY: guaranteed by the caller.
    let Some(relation) = (unsafe { altered_relation(fcinfo) }) else {
        return;
    };
    // Only for a role that may alter the table: anyone else's ALTER TABLE
    // fails its own privilege check, and must not get the extension to
    // lock the table (dropping a trigger) first.
    let may_alter = crate::pg::spi::optional_value::<bool>(
        "SELECT pg_catalog.pg_has_role(relowner, 'USAGE') FROM pg_catalog.pg_class WHERE oid OPERATOR(pg_catalog.=) $1",
        &[relation.into()],
    );
    if may_alter != Some(true) {
        return;
    }
    crate::pg::sandbox::privileged(AssertUnwindSafe(|| {
        let entities: Vec<String> = Spi::connect(|client| {
            spi(client.select(
                "SELECT name FROM segments.entity WHERE relation::pg_catalog.oid OPERATOR(pg_catalog.=) $1",
                None,
                &[relation.into()],
            ))
            .filter_map(|row| spi(row.get::<String>(1)))
            .collect()
        });
        for entity in entities {
            release_members_view(&entity);
        }
        if release_capture(relation) {
            CAPTURE_RELEASED.with(|r| r.set(true));
        }
    }));
}

/// ddl_command_end: every registered entity whose table exists and whose
/// members view is missing gets it back, with the grants it had. Also
/// follows a column rename in the registrations and makes capture triggers
/// again where `before_command` dropped them or a registered column was
/// renamed.
///
/// # Safety
/// `fcinfo` must be the call info of an event trigger function.
pub unsafe fn after_command(fcinfo: pg_sys::FunctionCallInfo) {
    // SAFETY: guaranteed by the caller.
    let renamed = unsafe { renamed_column(fcinfo) };
    crate::pg::sandbox::privileged(AssertUnwindSafe(|| {
        let followed =
            renamed.is_some_and(|(relation, old, new)| follow_rename(relation, &old, &new));
        restore_members_views();
        if CAPTURE_RELEASED.with(|r| r.replace(false)) || followed {
            crate::engine::live::install::sync_capture();
        }
    }));
}
