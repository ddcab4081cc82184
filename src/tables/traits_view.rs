//! The typed traits view of an entity, `segments.<entity>_traits`: the
//! entity's key column (under its own name, as in the members view), then
//! one column per trait, named as the trait and of its type, read from the
//! values `refresh_traits` stored (0 for a count of a record without
//! related rows, NULL otherwise). It follows the creation and deletion of
//! traits as the members view follows DDL: made again, grants kept.

use pgrx::spi::Spi;

use segments_core::catalog::Catalog;
use segments_core::compile::Planner;
use segments_core::sql::{ident, literal, op};

use crate::pg::catalog::SpiCatalog;
use crate::pg::error::Reported;
use crate::pg::spi::{optional_value, spi};
use crate::tables::grants::{grant, grants_of};

/// The view's name (in schema `segments`).
pub fn traits_view_name(entity: &str) -> String {
    format!("{entity}_traits")
}

/// Makes the entity's traits view again from its traits now, keeping the
/// grants the old one had; drops it when the entity has none. A trait
/// whose definition no longer fits the catalog (its table was dropped)
/// shows as a NULL text column until it is dropped.
pub fn sync_traits_view(entity: &str) -> Result<(), Reported> {
    let view = format!("segments.{}", ident(&traits_view_name(entity)));
    let exists = optional_value::<bool>(
        "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
        &[view.as_str().into()],
    ) == Some(true);
    let grants = exists.then(|| grants_of(&view));
    spi(Spi::run(&format!("DROP VIEW IF EXISTS {view}")));
    let Some(found) = SpiCatalog.entity(entity) else {
        return Ok(());
    };
    if found.traits.is_empty() || found.table.dropped {
        return Ok(());
    }
    let planner = Planner::new(&SpiCatalog, entity, "entity", "pg_catalog.now()")?;
    let key = format!("e.{}", ident(&found.key_column));
    // On Citus the entity table's rows are on the workers and the stored
    // values on the coordinator: Citus cannot run a subquery per row into
    // a local table, so the values are pivoted in one subquery that it
    // plans first and sends to the workers. Elsewhere each value is an
    // index lookup, so that reading one record reads one row per trait.
    let distributed = crate::pg::catalog::entity_relation(entity)
        .and_then(crate::pg::citus::placement)
        .is_some();
    let mut columns = vec![key.clone()];
    let mut pivoted = Vec::new();
    let mut comments = Vec::new();
    for t in &found.traits {
        let value = match planner.trait_measure("trait", &t.name) {
            Ok(measure) => {
                let empty = if measure.is_count {
                    "'0'::pg_catalog.jsonb"
                } else {
                    "NULL"
                };
                let stored = if distributed {
                    pivoted.push(format!(
                        "(pg_catalog.array_agg(v.value) FILTER (WHERE v.trait_id {eq} {id}))[1] AS t{id}",
                        eq = op("="),
                        id = t.id
                    ));
                    format!("tv.t{}", t.id)
                } else {
                    format!(
                        "(SELECT v.value FROM segments.trait_value v \
                           WHERE v.trait_id {eq} {id} AND v.key {eq} ({key})::pg_catalog.text)",
                        eq = op("="),
                        id = t.id
                    )
                };
                format!(
                    "(coalesce({stored}, {empty}) {extract} '{{}}'::pg_catalog.text[])::{ty}",
                    extract = op("#>>"),
                    ty = measure.column.base_type_sql
                )
            }
            Err(_) => "NULL::pg_catalog.text".to_string(),
        };
        columns.push(format!("{value} AS {}", ident(&t.name)));
        comments.push(format!(
            "COMMENT ON COLUMN {view}.{} IS {};",
            ident(&t.name),
            literal(&format!("Trait {} (segments.trait {}).", t.name, t.id))
        ));
    }
    let pivot = if pivoted.is_empty() {
        String::new()
    } else {
        format!(
            " LEFT JOIN (SELECT v.key, {} FROM segments.trait_value v GROUP BY v.key) tv \
               ON tv.key {} ({key})::pg_catalog.text",
            pivoted.join(", "),
            op("=")
        )
    };
    spi(Spi::run(&format!(
        "CREATE VIEW {view} WITH (security_invoker = true) AS SELECT {} FROM {} e{pivot}",
        columns.join(",\n       "),
        found.table.relation_sql
    )));
    spi(Spi::run(&format!(
        "COMMENT ON VIEW {view} IS {}; {}",
        literal(&format!(
            "Traits of entity {entity}: its key, then one column per trait, as refresh_traits stored them \
             (security_invoker: you see the rows of {} you may SELECT).",
            found.table.relation_sql
        )),
        comments.join(" ")
    )));
    grant(&view, grants);
    Ok(())
}
