//! Installing capture: the triggers live segments need on the entity
//! tables and the related tables they read, and nothing more. The
//! lifecycle trigger (`sql/live.sql`) calls `sync_capture` whenever
//! schedules, states or definitions change, and the event triggers after a
//! user's DDL on a captured table.

use std::collections::BTreeSet;

use pgrx::prelude::*;
use pgrx::spi::Spi;

use segments_core::sql::{ident, literal};

use crate::engine::live::publication;
use crate::engine::live::tables::{captured_tables, CapturedTable};
use crate::pg::error::OrRaise;
use crate::pg::spi::{optional_value, required, spi};

/// Trigger names: one per operation, relation, entity and key column.
fn trigger_name(operation: &str, entity: &str, column: &str) -> String {
    let mut hash: u32 = 2166136261;
    for b in format!("{entity}\u{0}{column}").bytes() {
        hash = (hash ^ u32::from(b)).wrapping_mul(16777619);
    }
    format!("segments_live_{operation}_{hash:08x}")
}

/// Installs what capture needs for the live segments and removes the rest:
/// with `segments.capture = 'trigger'`, the capture triggers (and no table
/// in the publication); with `'wal'`, the publication's tables (and no
/// trigger), after checking the server and the tables can be decoded.
/// Runs as the extension (it creates triggers on users' tables).
pub fn sync_capture() {
    let tables = captured_tables();
    let wal = publication::wanted();
    for table in &tables {
        crate::engine::citus::refuse_capture(table.relation, &table.relation_sql).or_raise();
    }
    if wal {
        publication::check_requirements(&tables);
    }
    let existing: BTreeSet<(u32, String)> = Spi::connect(|client| {
        spi(client.select(
            "SELECT tgrelid, tgname::pg_catalog.text FROM pg_catalog.pg_trigger \
              WHERE tgname::pg_catalog.text LIKE 'segments\\_live\\_%' AND NOT tgisinternal",
            None,
            &[],
        ))
        .map(|row| {
            (
                required::<pg_sys::Oid>(&row, 1).to_u32(),
                required::<String>(&row, 2),
            )
        })
        .collect()
    });
    let mut wanted = BTreeSet::new();
    for table in tables.iter().filter(|_| !wal) {
        let CapturedTable {
            relation,
            entity,
            key_column: column,
            relation_sql,
            source,
            columns,
        } = table;
        let columns_sql = columns
            .iter()
            .map(|c| ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        // Updates: a row trigger on just those columns (a column list
        // excludes transition tables), queuing only when one of them really
        // changed: `_capture_row` compares them itself (see capture.rs).
        let compared = columns
            .iter()
            .map(|c| format!(", {}", literal(c)))
            .collect::<String>();
        let update_event = if columns.is_empty() {
            "UPDATE".to_string()
        } else {
            format!("UPDATE OF {columns_sql}")
        };
        for (operation, event, referencing, function, extra) in [
            (
                "ins",
                "INSERT",
                " REFERENCING NEW TABLE AS segments_new FOR EACH STATEMENT",
                "_capture",
                "",
            ),
            (
                "upd",
                update_event.as_str(),
                " FOR EACH ROW",
                "_capture_row",
                compared.as_str(),
            ),
            (
                "del",
                "DELETE",
                " REFERENCING OLD TABLE AS segments_old FOR EACH STATEMENT",
                "_capture",
                "",
            ),
            ("trn", "TRUNCATE", " FOR EACH STATEMENT", "_capture", ""),
        ] {
            let identity = if operation == "upd" {
                format!("{column}\u{0}{source}\u{0}{columns_sql}")
            } else {
                format!("{column}\u{0}{source}")
            };
            let name = trigger_name(operation, entity, &identity);
            wanted.insert((relation.to_u32(), name.clone()));
            if !existing.contains(&(relation.to_u32(), name.clone())) {
                spi(Spi::run(&format!(
                    "CREATE TRIGGER {} AFTER {event} ON {relation_sql}{referencing} \
                     EXECUTE FUNCTION segments.{function}({}, {}, {}{extra})",
                    ident(&name),
                    literal(entity),
                    literal(column),
                    literal(source)
                )));
            }
        }
    }
    publication::sync_publication(if wal { &tables } else { &[] });
    // Related values kept for entities without live segments any more.
    crate::engine::store::forget_unused_related_values();
    for (relation, name) in existing.difference(&wanted) {
        let relation_sql = optional_value::<String>(
            "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c \
               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace WHERE c.oid OPERATOR(pg_catalog.=) $1",
            &[pg_sys::Oid::from(*relation).into()],
        );
        if let Some(relation_sql) = relation_sql {
            spi(Spi::run(&format!(
                "DROP TRIGGER IF EXISTS {} ON {relation_sql}",
                ident(name)
            )));
        }
    }
}
