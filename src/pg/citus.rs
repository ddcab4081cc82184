//! What Citus's catalog says, read without Citus as a dependency: whether
//! it is installed, whether this node is a worker, how a table is placed,
//! and the name of an entity's key-dictionary replica. What the extension
//! does about it lives in `engine::citus`.

use pgrx::pg_sys;

use segments_core::sql::ident;

use crate::pg::spi::optional_value;

/// How Citus places a table: `method` is pg_dist_partition's partmethod
/// (`h` hash-distributed, `n` reference or Citus-local), `column` the
/// distribution column of a hash-distributed table.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub method: String,
    pub column: Option<String>,
    pub colocation: i32,
}

impl Placement {
    pub fn is_distributed(&self) -> bool {
        self.method == "h"
    }
}

/// Whether Citus is installed in this database.
pub fn citus_installed() -> bool {
    optional_value::<bool>(
        "SELECT true FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'citus'",
        &[],
    )
    .unwrap_or(false)
}

/// Whether this node is a Citus worker (Citus installed, and this node is
/// not the coordinator).
pub fn on_worker() -> bool {
    citus_installed()
        && optional_value::<bool>("SELECT NOT pg_catalog.citus_is_coordinator()", &[])
            .unwrap_or(false)
}

/// The table's Citus placement; None for a plain PostgreSQL table or
/// without Citus.
pub fn placement(relation: pg_sys::Oid) -> Option<Placement> {
    if !citus_installed() {
        return None;
    }
    pgrx::spi::Spi::connect(|client| {
        let table = crate::pg::spi::spi(client.select(
            "SELECT p.partmethod::pg_catalog.text, \
                    CASE WHEN p.partmethod OPERATOR(pg_catalog.=) 'h' \
                         THEN pg_catalog.column_to_column_name(p.logicalrelid, p.partkey) END, \
                    p.colocationid \
               FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass",
            Some(1),
            &[relation.into()],
        ));
        if table.is_empty() {
            return None;
        }
        let row = table.first();
        Some(Placement {
            method: crate::pg::spi::spi(row.get::<String>(1)).unwrap_or_default(),
            column: crate::pg::spi::spi(row.get::<String>(2)),
            colocation: crate::pg::spi::spi(row.get::<i32>(3)).unwrap_or(0),
        })
    })
}

/// The quoted name of an entity's colocated key dictionary copy.
pub fn key_replica_name(entity: &str) -> String {
    format!("segments.{}", ident(&format!("{entity}_keys")))
}
