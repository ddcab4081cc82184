//! The publication `segments_capture`: the tables live segments read, as
//! WAL capture decodes them (`wal`), and what WAL capture needs of the
//! server and of those tables.

use std::collections::BTreeSet;

use pgrx::prelude::*;
use pgrx::spi::Spi;

use crate::engine::live::tables::CapturedTable;
use crate::pg::error::{Raise, SegmentsError};
use crate::pg::gucs;
use crate::pg::spi::{optional_value, required, spi};

/// The publication of the tables live segments read.
pub const PUBLICATION: &str = "segments_capture";

/// Whether `segments.capture` is `wal`.
pub fn wanted() -> bool {
    gucs::CAPTURE.get() == gucs::Capture::Wal
}

/// Refuses WAL capture where it cannot see every change: a server without
/// `wal_level = logical`, or a table whose replica identity does not carry
/// its key column (an UPDATE or DELETE would not say whose row it was).
pub fn check_requirements(tables: &[CapturedTable]) {
    let level = optional_value::<String>("SELECT pg_catalog.current_setting('wal_level')", &[])
        .unwrap_or_default();
    if level != "logical" {
        SegmentsError::InvalidState(format!(
            "segments.capture = 'wal' needs wal_level = logical (it is {level})"
        ))
        .with_hint(Some(
            "ALTER SYSTEM SET wal_level = logical and restart the server, or set segments.capture = 'trigger'.".into(),
        ))
        .raise();
    }
    for table in tables {
        let carries_key = optional_value::<bool>(
            "SELECT c.relreplident OPERATOR(pg_catalog.=) 'f' OR EXISTS (
                 SELECT FROM pg_catalog.pg_index i
                   JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid
                                                 AND a.attnum OPERATOR(pg_catalog.=) ANY (i.indkey)
                  WHERE i.indrelid OPERATOR(pg_catalog.=) c.oid AND a.attname OPERATOR(pg_catalog.=) $2
                    AND CASE WHEN c.relreplident OPERATOR(pg_catalog.=) 'd' THEN i.indisprimary
                             WHEN c.relreplident OPERATOR(pg_catalog.=) 'i' THEN i.indisreplident ELSE false END)
               FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) $1",
            &[table.relation.into(), table.key_column.as_str().into()],
        )
        .unwrap_or(false);
        if !carries_key {
            SegmentsError::InvalidState(format!(
                "segments.capture = 'wal' cannot map changes of {} to records: its replica identity does not include column {}",
                table.relation_sql,
                segments_core::sql::ident(&table.key_column)
            ))
            .with_hint(Some(format!(
                "ALTER TABLE {} REPLICA IDENTITY FULL (or USING INDEX a unique index on that column), or set segments.capture = 'trigger'.",
                table.relation_sql
            )))
            .raise();
        }
    }
}

/// Whether the publication exists.
pub fn publication_exists() -> bool {
    optional_value::<bool>(
        "SELECT true FROM pg_catalog.pg_publication WHERE pubname OPERATOR(pg_catalog.=) $1",
        &[PUBLICATION.into()],
    )
    .unwrap_or(false)
}

/// Creates the publication, without tables, when it is missing. Partitions
/// publish as their root, the table segments registered.
pub fn ensure_publication() {
    if !publication_exists() {
        spi(Spi::run(&format!(
            "CREATE PUBLICATION {PUBLICATION} WITH (publish_via_partition_root = true)"
        )));
    }
}

/// Makes the publication name exactly `tables` (none in trigger mode; the
/// publication itself stays until the slot is dropped, since decoding what
/// the slot holds needs it).
pub fn sync_publication(tables: &[CapturedTable]) {
    if tables.is_empty() && !publication_exists() {
        return;
    }
    ensure_publication();
    // (relation, its name now).
    let published: Vec<(u32, String)> = Spi::connect(|client| {
        spi(client.select(
            "SELECT r.prrelid, pg_catalog.format('%I.%I', n.nspname, c.relname)
               FROM pg_catalog.pg_publication_rel r
               JOIN pg_catalog.pg_publication p ON p.oid OPERATOR(pg_catalog.=) r.prpubid
               JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.prrelid
               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
              WHERE p.pubname OPERATOR(pg_catalog.=) $1",
            None,
            &[PUBLICATION.into()],
        ))
        .map(|row| {
            (
                required::<pg_sys::Oid>(&row, 1).to_u32(),
                required::<String>(&row, 2),
            )
        })
        .collect()
    });
    let mut present: BTreeSet<u32> = published.iter().map(|(r, _)| *r).collect();
    let wanted: BTreeSet<u32> = tables.iter().map(|t| t.relation.to_u32()).collect();
    for table in tables {
        // A table several entities read is added once.
        if present.insert(table.relation.to_u32()) {
            spi(Spi::run(&format!(
                "ALTER PUBLICATION {PUBLICATION} ADD TABLE {}",
                table.relation_sql
            )));
        }
    }
    for (relation, relation_sql) in &published {
        if !wanted.contains(relation) {
            spi(Spi::run(&format!(
                "ALTER PUBLICATION {PUBLICATION} DROP TABLE {relation_sql}"
            )));
        }
    }
}

/// Drops the publication with the extension (`DROP EXTENSION segments`):
/// a publication cannot be a member of an extension.
pub fn drop_publication() {
    if publication_exists() {
        spi(Spi::run(&format!("DROP PUBLICATION {PUBLICATION}")));
    }
}
