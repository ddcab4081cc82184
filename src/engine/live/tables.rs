//! What capture watches: the tables the active live segments read, each
//! with its key column and the columns they read there (through paths and
//! traits too). Triggers (`install`) and the publication (`publication`)
//! are made from it, and WAL capture (`wal`) maps decoded rows with it.

use std::collections::{BTreeSet, HashMap};

use pgrx::prelude::*;
use pgrx::spi::Spi;
use pgrx::JsonB;
use serde_json::Value;

use segments_core::catalog::Catalog;

use crate::pg::catalog::SpiCatalog;
use crate::pg::spi::{optional_value, required, spi};

/// A table live segments read, as capture sees it.
pub struct CapturedTable {
    pub relation: pg_sys::Oid,
    pub entity: String,
    /// The column holding the entity key (a related table's foreign key).
    pub key_column: String,
    /// Schema-qualified, quoted.
    pub relation_sql: String,
    /// '' for the entity's own table, else the related table's name.
    pub source: String,
    /// The columns live segments read that the table has, and the key.
    pub columns: BTreeSet<String>,
}

/// The tables the active live segments read, each with the columns they
/// read there.
pub fn captured_tables() -> Vec<CapturedTable> {
    // (relation, entity, key column, relation SQL, source: '' for the entity
    // table, else the related table's name).
    // A related table a live segment reads through a trait it uses (a
    // schema older than the library has no traits).
    let through_traits = if optional_value::<bool>(
        "SELECT pg_catalog.to_regclass('segments.trait') IS NOT NULL",
        &[],
    ) == Some(true)
    {
        "OR EXISTS (SELECT FROM segments.trait t
                     WHERE t.entity OPERATOR(pg_catalog.=) r.entity
                       AND t.definition OPERATOR(pg_catalog.->>) 'related' OPERATOR(pg_catalog.=) r.name
                       AND pg_catalog.jsonb_path_exists(l.definition, '$.** ? (@.trait == $t)',
                                                        pg_catalog.jsonb_build_object('t', t.name)))"
    } else {
        ""
    };
    let needed: Vec<(pg_sys::Oid, String, String, String, String)> = Spi::connect(|client| {
        spi(client.select(
            &format!("WITH RECURSIVE live AS (
                 SELECT s.entity, s.definition FROM segments.segment s
                  WHERE s.schedule OPERATOR(pg_catalog.=) 'live' AND s.state OPERATOR(pg_catalog.=) 'active'),
             -- The related tables live segments name, and every table on
             -- their paths (UNION: a cycle cannot loop).
             read AS (
                 -- via through to_jsonb: a schema older than the library has none.
                 SELECT r.entity, r.name, pg_catalog.to_jsonb(r) OPERATOR(pg_catalog.->>) 'via' AS via
                   FROM segments.related r
                  WHERE EXISTS (SELECT FROM live l WHERE l.entity OPERATOR(pg_catalog.=) r.entity
                                  AND (pg_catalog.jsonb_path_exists(l.definition, '$.** ? (@.related == $n)',
                                                                    pg_catalog.jsonb_build_object('n', r.name))
                                       {through_traits}))
                 UNION
                 SELECT v.entity, v.name, pg_catalog.to_jsonb(v) OPERATOR(pg_catalog.->>) 'via'
                   FROM segments.related v
                   JOIN read ON v.entity OPERATOR(pg_catalog.=) read.entity AND v.name OPERATOR(pg_catalog.=) read.via)
             SELECT e.relation::pg_catalog.oid, e.name, e.key_column::pg_catalog.text,
                    pg_catalog.format('%I.%I', n.nspname, c.relname), ''
               FROM segments.entity e
               JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) e.relation::pg_catalog.oid
               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
              WHERE e.name IN (SELECT entity FROM live)
             UNION
             SELECT r.relation::pg_catalog.oid, r.entity, r.foreign_key::pg_catalog.text,
                    pg_catalog.format('%I.%I', n.nspname, c.relname), r.name
               FROM segments.related r
               JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.relation::pg_catalog.oid
               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
              WHERE EXISTS (SELECT FROM read WHERE read.entity OPERATOR(pg_catalog.=) r.entity
                              AND read.name OPERATOR(pg_catalog.=) r.name)"),
            None,
            &[],
        ))
        .map(|row| {
            (
                required(&row, 1),
                required(&row, 2),
                required(&row, 3),
                required(&row, 4),
                required(&row, 5),
            )
        })
        .collect()
    });
    let read = columns_read_by_live_segments();
    needed
        .into_iter()
        .map(|(relation, entity, key_column, relation_sql, source)| {
            // An UPDATE matters only when it sets a column a live segment
            // reads (or the key).
            let mut columns: BTreeSet<String> = read
                .get(&entity)
                .map(|cols| {
                    cols.iter()
                        .filter(|(r, _)| *r == relation_sql)
                        .map(|(_, c)| c.clone())
                        .collect()
                })
                .unwrap_or_default();
            columns.insert(key_column.clone());
            // Only columns the table has: a column a segment reads may have
            // been dropped or renamed (that segment fails at its next run,
            // naming it); capture of the others, and everyone's DDL, carry
            // on.
            let present = existing_columns(relation);
            columns.retain(|c| present.contains(c));
            CapturedTable {
                relation,
                entity,
                key_column,
                relation_sql,
                source,
                columns,
            }
        })
        .collect()
}

/// The names of a relation's columns now.
fn existing_columns(relation: pg_sys::Oid) -> BTreeSet<String> {
    Spi::connect(|client| {
        spi(client.select(
            "SELECT attname::pg_catalog.text FROM pg_catalog.pg_attribute \
              WHERE attrelid OPERATOR(pg_catalog.=) $1 AND attnum OPERATOR(pg_catalog.>) 0 AND NOT attisdropped",
            None,
            &[relation.into()],
        ))
        .map(|row| required::<String>(&row, 1))
        .collect()
    })
}

/// By entity: the (relation, column) pairs its active live segments read,
/// and its eligibility condition reads.
fn columns_read_by_live_segments() -> HashMap<String, Vec<(String, String)>> {
    let live: Vec<(String, Value)> = Spi::connect(|client| {
        spi(client.select(
            "SELECT entity, definition FROM segments.segment \
              WHERE schedule OPERATOR(pg_catalog.=) 'live' AND state OPERATOR(pg_catalog.=) 'active'",
            None,
            &[],
        ))
        .map(|row| (spi(row.get::<String>(1)).unwrap_or_default(), spi(row.get::<JsonB>(2)).map(|j| j.0).unwrap_or(Value::Null)))
        .collect()
    });
    let mut out: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for (entity_name, definition) in live {
        let Some(entity) = SpiCatalog.entity(&entity_name) else {
            continue;
        };
        out.entry(entity_name.clone())
            .or_default()
            .extend(columns_read_by(&entity, std::slice::from_ref(&definition)));
    }
    out
}

/// The (relation, column) pairs `definitions` and the entity's eligibility
/// condition read; definitions that no longer parse read nothing.
pub fn columns_read_by(
    entity: &segments_core::catalog::Entity,
    definitions: &[Value],
) -> Vec<(String, String)> {
    let eligible = entity
        .eligible
        .as_ref()
        .map(|e| serde_json::json!({"entity": entity.name, "rules": [{"where": e}]}));
    definitions
        .iter()
        .chain(eligible.as_ref())
        .filter_map(|d| segments_core::definition::Definition::parse(d).ok())
        .flat_map(|parsed| segments_core::compile::columns_read(&parsed, entity))
        .collect()
}
