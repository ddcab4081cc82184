//! Living with Citus: what this node is, how a table is distributed, and
//! the checks that keep segments exact on distributed tables.
//!
//! Segment state (catalog, memberships, dictionary) lives on the
//! coordinator only. Refreshes run there and send per-shard aggregation to
//! the workers (`rb_agg` is split by Citus); the members views ship the
//! bitmap to the shards, not the other way round. A function that reads
//! segment state must never run on a worker, where those tables are empty:
//! when it finds nothing there, it says so instead of answering wrongly.

use pgrx::pg_sys;

use crate::catalog::optional_value;
use crate::error::{Reported, SegmentsError};

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

fn citus_installed() -> bool {
    optional_value::<bool>("SELECT true FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'citus'", &[])
        .unwrap_or(false)
}

/// Whether this node is a Citus worker (Citus installed, and this node is
/// not the coordinator).
pub fn on_worker() -> bool {
    citus_installed() && optional_value::<bool>("SELECT NOT pg_catalog.citus_is_coordinator()", &[]).unwrap_or(false)
}

/// The table's Citus placement; None for a plain PostgreSQL table or
/// without Citus.
pub fn placement(relation: pg_sys::Oid) -> Option<Placement> {
    if !citus_installed() {
        return None;
    }
    pgrx::spi::Spi::connect(|client| {
        let table = crate::catalog::spi(client.select(
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
            method: crate::catalog::spi(row.get::<String>(1)).unwrap_or_default(),
            column: crate::catalog::spi(row.get::<String>(2)),
            colocation: crate::catalog::spi(row.get::<i32>(3)).unwrap_or(0),
        })
    })
}

/// Raised where a function reading segment state found nothing: on a
/// Citus worker that is because the state lives on the coordinator (Citus
/// sent the call to the shards), so the caller gets an error, not a wrong
/// empty answer.
pub fn refuse_on_worker(function: &str) {
    if on_worker() {
        SegmentsError::FeatureNotSupported(format!(
            "segments.{function} reads segment state, which lives on the Citus coordinator; it cannot run on a worker"
        ))
        .with_hint(Some(
            "Citus sends per-row calls in a query over a distributed table to the shards. \
             Join segments.<entity>_members (or select its keys in a subquery) instead."
                .into(),
        ))
        .raise();
    }
}

/// What is wrong with how an entity's table is distributed, if anything.
pub fn entity_warning(relation_sql: &str, key_column: &str, placement: Option<&Placement>) -> Option<String> {
    let placement = placement.filter(|p| p.is_distributed())?;
    match placement.column.as_deref() {
        Some(column) if column == key_column => None,
        column => Some(format!(
            "entity table {relation_sql} is distributed by column \"{}\", not by its key \"{key_column}\": \
             related tables cannot be colocated with it, and every lookup of a record by key goes to all shards",
            column.unwrap_or("?")
        )),
    }
}

/// What is wrong with how a related table sits next to its entity's, if
/// anything: it must be distributed by its foreign key and colocated with
/// the entity table, or each related condition ships rows.
pub fn related_warning(
    related_sql: &str,
    foreign_key: &str,
    related: Option<&Placement>,
    entity_sql: &str,
    entity: Option<&Placement>,
) -> Option<String> {
    let entity_distributed = entity.is_some_and(Placement::is_distributed);
    let related_distributed = related.is_some_and(Placement::is_distributed);
    if !entity_distributed && !related_distributed {
        return None;
    }
    let (Some(entity), Some(related)) = (entity.filter(|p| p.is_distributed()), related.filter(|p| p.is_distributed())) else {
        return Some(format!(
            "related table {related_sql} and entity table {entity_sql} are not both distributed: \
             related conditions join them on the coordinator"
        ));
    };
    if related.column.as_deref() != Some(foreign_key) {
        return Some(format!(
            "related table {related_sql} is distributed by column \"{}\", not by its foreign key \"{foreign_key}\": \
             its conditions ship rows to the coordinator",
            related.column.as_deref().unwrap_or("?")
        ));
    }
    if related.colocation != entity.colocation {
        return Some(format!(
            "related table {related_sql} is not colocated with entity table {entity_sql}: \
             its conditions ship rows to the coordinator (create_distributed_table(..., colocate_with => '{entity_sql}'))"
        ));
    }
    None
}

/// Live capture needs triggers on the table, which Citus runs on the
/// shards, far from the coordinator's change queue.
pub fn refuse_capture(relation: pg_sys::Oid, relation_sql: &str) -> Result<(), Reported> {
    match placement(relation) {
        Some(p) if p.is_distributed() || p.method == "n" => Err(SegmentsError::FeatureNotSupported(format!(
            "live segments cannot capture changes of {relation_sql}: it is a Citus distributed or reference table, \
             whose triggers would run on the workers"
        ))
        .with_hint(Some("Give the segment a schedule (e.g. '*/5 * * * *') instead of 'live'.".into()))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(column: &str, colocation: i32) -> Placement {
        Placement { method: "h".into(), column: Some(column.into()), colocation }
    }

    #[test]
    fn an_entity_distributed_by_its_key_is_fine() {
        assert_eq!(entity_warning("public.customers", "id", Some(&hash("id", 1))), None);
        assert_eq!(entity_warning("public.customers", "id", None), None);
        let warning = entity_warning("public.customers", "id", Some(&hash("country", 1))).unwrap();
        assert!(warning.contains("\"country\"") && warning.contains("\"id\""), "{warning}");
    }

    #[test]
    fn related_tables_must_be_colocated_by_their_foreign_key() {
        let entity = hash("id", 1);
        assert_eq!(related_warning("public.orders", "customer_id", Some(&hash("customer_id", 1)), "public.customers", Some(&entity)), None);
        assert!(related_warning("public.orders", "customer_id", Some(&hash("customer_id", 2)), "public.customers", Some(&entity))
            .unwrap()
            .contains("not colocated"));
        assert!(related_warning("public.orders", "customer_id", Some(&hash("id", 1)), "public.customers", Some(&entity))
            .unwrap()
            .contains("\"id\""));
        assert!(related_warning("public.orders", "customer_id", None, "public.customers", Some(&entity))
            .unwrap()
            .contains("not both distributed"));
        assert_eq!(related_warning("public.orders", "customer_id", None, "public.customers", None), None);
    }
}
