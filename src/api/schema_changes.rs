//! Schema changes of registered tables (SPEC 10): event triggers that let
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

use segments_core::catalog::Catalog;
use segments_core::sql::ident;

use crate::api::entity::{comment_members_view, members_view_name, members_view_sql};
use crate::pg::catalog::SpiCatalog;
use crate::pg::spi::{required, spi};

thread_local! {
    /// Grants of members views dropped at ddl_command_start, by entity, to
    /// put back when the view is made again at ddl_command_end.
    static SAVED_GRANTS: std::cell::RefCell<std::collections::HashMap<String, Vec<(pg_sys::Oid, String, bool)>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
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

/// Drops an entity's members view, keeping its grants to put back when
/// `restore_members_views` makes it again.
fn release_members_view(entity: &str) {
    let view = format!("segments.{}", ident(&members_view_name(entity)));
    // A view of the user's built on the members view keeps it: dropping it
    // would take theirs along. The ALTER TABLE then meets PostgreSQL's own
    // dependency checks, which name that view.
    let has_dependents = crate::pg::spi::optional_value::<bool>(
        "SELECT true FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_rewrite r ON r.oid OPERATOR(pg_catalog.=) d.objid \
          WHERE d.refobjid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1) \
            AND r.ev_class OPERATOR(pg_catalog.<>) pg_catalog.to_regclass($1) LIMIT 1",
        &[view.clone().into()],
    )
    .unwrap_or(false);
    if has_dependents {
        return;
    }
    let grants: Vec<(pg_sys::Oid, String, bool)> = Spi::connect(|client| {
        spi(client.select(
            "SELECT a.grantee, a.privilege_type, a.is_grantable \
               FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a \
              WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1) \
                AND a.grantee OPERATOR(pg_catalog.<>) c.relowner",
            None,
            &[view.clone().into()],
        ))
        .map(|row| (required(&row, 1), required(&row, 2), required(&row, 3)))
        .collect()
    });
    SAVED_GRANTS.with(|saved| saved.borrow_mut().insert(entity.to_string(), grants));
    spi(Spi::run(&format!("DROP VIEW IF EXISTS {view}")));
}

/// ddl_command_start: before an ALTER TABLE (or a column rename) of a
/// registered entity table, its members view is dropped, grants saved, so
/// that DROP COLUMN and ALTER COLUMN TYPE just work; ddl_command_end makes
/// it again from the table's new columns, in the same transaction.
#[pg_extern(schema = "segments", sql = false)]
fn _members_view_release(fcinfo: pg_sys::FunctionCallInfo) {
    // SAFETY: called only as the event trigger function declared below.
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
    crate::pg::txn::privileged(AssertUnwindSafe(|| {
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
/// members view is missing gets it back, with the grants it had.
/// Also follows a column rename in the registrations and makes capture
/// triggers again where ddl_command_start dropped them or a registered
/// column was renamed.
#[pg_extern(schema = "segments", sql = false)]
fn _members_view_restore(fcinfo: pg_sys::FunctionCallInfo) {
    // SAFETY: called only as the event trigger function declared in
    // sql/ddl_events.sql.
    let renamed = unsafe { renamed_column(fcinfo) };
    crate::pg::txn::privileged(AssertUnwindSafe(|| {
        let followed =
            renamed.is_some_and(|(relation, old, new)| follow_rename(relation, &old, &new));
        restore_members_views();
        if CAPTURE_RELEASED.with(|r| r.replace(false)) || followed {
            crate::engine::live::sync_capture();
        }
    }));
}

pub fn restore_members_views() {
    let missing: Vec<String> = Spi::connect(|client| {
        spi(client.select(
            "SELECT e.name FROM segments.entity e \
              WHERE EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) e.relation::pg_catalog.oid) \
                AND pg_catalog.to_regclass('segments.' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(e.name OPERATOR(pg_catalog.||) '_members')) IS NULL",
            None,
            &[],
        ))
        .filter_map(|row| spi(row.get::<String>(1)))
        .collect()
    });
    for entity in missing {
        let Some(found) = SpiCatalog.entity(&entity) else {
            continue;
        };
        let (type_oid, key_type_sql) = key_type_oid_of(&entity);
        let _ = type_oid;
        spi(Spi::run(&members_view_sql(
            &entity,
            &found.table,
            &found.key_column,
            found.key_kind,
            &key_type_sql,
        )));
        comment_members_view(&entity, &found.table);
        let view = format!("segments.{}", ident(&members_view_name(&entity)));
        let grants = SAVED_GRANTS.with(|saved| saved.borrow_mut().remove(&entity));
        match grants {
            Some(grants) => {
                for (grantee, privilege, grantable) in grants {
                    let to = if grantee == pg_sys::InvalidOid {
                        "PUBLIC".to_string()
                    } else {
                        crate::pg::spi::optional_value::<String>(
                            "SELECT $1::pg_catalog.regrole::pg_catalog.text",
                            &[grantee.into()],
                        )
                        .unwrap_or_else(|| "PUBLIC".into())
                    };
                    let option = if grantable { " WITH GRANT OPTION" } else { "" };
                    spi(Spi::run(&format!(
                        "GRANT {privilege} ON {view} TO {to}{option}"
                    )));
                }
            }
            None => spi(Spi::run(&format!(
                "GRANT SELECT ON {view} TO segments_reader, segments_editor, segments_admin"
            ))),
        }
    }
}

fn key_type_oid_of(entity: &str) -> (pg_sys::Oid, String) {
    let row = Spi::get_two_with_args::<pg_sys::Oid, String>(
        "SELECT key_type::pg_catalog.oid, pg_catalog.format_type(key_type, NULL) FROM segments.entity WHERE name OPERATOR(pg_catalog.=) $1",
        &[entity.into()],
    );
    let (oid, type_sql) = spi(row);
    (
        oid.unwrap_or(pg_sys::InvalidOid),
        type_sql.unwrap_or_else(|| "text".into()),
    )
}

/// Makes every members view again from its table's current columns, with
/// its grants and comments (used by ALTER EXTENSION UPDATE: views made by
/// an older version get this version's shape). Admins only.
#[pg_extern(schema = "segments")]
fn _remake_members_views() {
    crate::pg::txn::require_admin("remake members views");
    crate::pg::txn::privileged(AssertUnwindSafe(|| {
        let entities: Vec<(String, pg_sys::Oid)> = Spi::connect(|client| {
            spi(client.select(
                "SELECT name, relation::pg_catalog.oid FROM segments.entity ORDER BY name",
                None,
                &[],
            ))
            .map(|row| (required(&row, 1), required(&row, 2)))
            .collect()
        });
        for (entity, _) in entities {
            release_members_view(&entity);
        }
        restore_members_views();
    }));
}
