//! Computing and storing trait values. The traits of one entity are
//! computed per owner (each as its owner, in the sandbox, so privileges
//! and row-level security apply) and per related table and path: every
//! trait of one table in one scan (`traits_query`), read through a cursor
//! in chunks and written to `segments.trait_value` by the extension (the
//! only writer of its tables).

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;

use pgrx::prelude::*;
use pgrx::spi::Spi;

use segments_core::catalog::Catalog;
use segments_core::compile::{traits_query, TraitMeasure};
use segments_core::sql::ident;

use crate::engine::evaluate::reference_time_sql;
use crate::pg::catalog::SpiCatalog;
use crate::pg::error::{Reported, SegmentsError};
use crate::pg::spi::{required, spi};
use crate::traits::difference::{Difference, Row};

/// Rows read and written at a time.
const CHUNK: i64 = 10_000;

/// Computes and stores the values of the traits of `entity` (those of
/// `only` when given); returns how many values it stored. A trait that no
/// longer compiles (its table or column is gone) fails the call naming it,
/// and nothing is stored.
pub fn refresh(entity: &str, only: Option<&[i64]>) -> Result<i64, Reported> {
    let stored = compute(entity, only, None)?;
    if let Some(ids) = only {
        crate::pg::sandbox::privileged(AssertUnwindSafe(|| {
            spi(Spi::run_with_args(
                "UPDATE segments.trait SET refreshed_at = pg_catalog.now() WHERE id OPERATOR(pg_catalog.=) ANY ($1)",
                &[ids.to_vec().into()],
            ))
        }));
    } else {
        crate::pg::sandbox::privileged(AssertUnwindSafe(|| {
            spi(Spi::run_with_args(
                "UPDATE segments.trait SET refreshed_at = pg_catalog.now() WHERE entity OPERATOR(pg_catalog.=) $1",
                &[entity.into()],
            ))
        }));
    }
    Ok(stored)
}

/// The traits `names` of `entity` computed again in full (live apply after
/// a whole refresh of the live segments that use them).
pub fn refresh_named(entity: &str, names: &BTreeSet<String>) -> Result<i64, Reported> {
    let ids = trait_ids(entity, names);
    if ids.is_empty() {
        return Ok(0);
    }
    refresh(entity, Some(&ids))
}

/// The ids of the traits `names` of `entity`.
fn trait_ids(entity: &str, names: &BTreeSet<String>) -> Vec<i64> {
    SpiCatalog
        .entity(entity)
        .map(|found| {
            found
                .traits
                .iter()
                .filter(|t| names.contains(&t.name))
                .map(|t| t.id)
                .collect()
        })
        .unwrap_or_default()
}

/// Live apply's part: the stored values of the traits `names` (those the
/// live segments of `entity` use) computed again for just the changed
/// `keys` (`keys_sql`: the same keys as an SQL array of the key's type),
/// so that `segments.<entity>_traits` follows the live segments.
pub fn refresh_keys(
    entity: &str,
    names: &BTreeSet<String>,
    keys: &[String],
    keys_sql: &str,
) -> Result<i64, Reported> {
    let ids = trait_ids(entity, names);
    if ids.is_empty() || keys.is_empty() {
        return Ok(0);
    }
    compute(entity, Some(&ids), Some((keys, keys_sql)))
}

/// Computes the traits of `entity` (those of `only`), replacing their
/// stored values: all of them, or those of the keys of `restriction`
/// (the keys, and the same as an SQL array of the key's type).
fn compute(
    entity: &str,
    only: Option<&[i64]>,
    restriction: Option<(&[String], &str)>,
) -> Result<i64, Reported> {
    let Some(found) = SpiCatalog.entity(entity) else {
        return Ok(0);
    };
    // Trait values: skipped by WAL capture's decoding.
    let _own = crate::engine::live::own_writes::mark();
    // One computation of an entity's traits at a time (waiting, as a row
    // lock would, and a cancel ends the wait): the next reads what the
    // first stored, where two at once would both write a changed key's
    // value and the second fail on the first's.
    spi(Spi::run_with_args(
        "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('segments.traits'), pg_catalog.hashtext($1))",
        &[entity.into()],
    ));
    let traits: Vec<_> = found
        .traits
        .iter()
        .filter(|t| only.is_none_or(|ids| ids.contains(&t.id)))
        .cloned()
        .collect();
    if traits.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = traits.iter().map(|t| t.id).collect();
    let owners: BTreeMap<i64, u32> = Spi::connect(|client| {
        spi(client.select(
            "SELECT id, owner::pg_catalog.oid FROM segments.trait WHERE id OPERATOR(pg_catalog.=) ANY ($1)",
            None,
            &[ids.clone().into()],
        ))
        .map(|row| (required::<i64>(&row, 1), required::<pg_sys::Oid>(&row, 2).to_u32()))
        .collect()
    });
    // Changed keys: their values go and come again. A full computation
    // writes only its difference from the stored values (`difference`).
    if let Some((keys, _)) = restriction {
        crate::pg::sandbox::privileged(AssertUnwindSafe(|| {
            spi(Spi::run_with_args(
                "DELETE FROM segments.trait_value WHERE trait_id OPERATOR(pg_catalog.=) ANY ($1) \
                   AND key OPERATOR(pg_catalog.=) ANY ($2)",
                &[ids.clone().into(), keys.to_vec().into()],
            ))
        }));
    }
    // By owner, then by the rows they read (related table and path).
    let mut by_owner: BTreeMap<u32, Vec<&segments_core::catalog::TraitDef>> = BTreeMap::new();
    for t in &traits {
        by_owner
            .entry(owners.get(&t.id).copied().unwrap_or_default())
            .or_default()
            .push(t);
    }
    let reference = reference_time_sql();
    let mut stored = 0i64;
    for (owner, owned) in by_owner {
        stored += crate::pg::sandbox::as_role(
            pg_sys::Oid::from(owner),
            AssertUnwindSafe(|| -> Result<i64, Reported> {
                crate::pg::sandbox::without_jit();
                let mut planner = crate::engine::plan::planner(entity, &reference)?;
                if let Some((_, keys_sql)) = restriction {
                    planner.restrict_to(keys_sql.to_string());
                }
                let mut groups: BTreeMap<(String, String), Vec<TraitMeasure>> = BTreeMap::new();
                for t in &owned {
                    let measure = planner.trait_measure("trait", &t.name).map_err(|e| {
                        Reported::from(SegmentsError::InvalidState(format!(
                            "trait \"{}\" cannot be computed: {}",
                            t.name, e.error
                        )))
                    })?;
                    groups
                        .entry((measure.from.clone(), measure.key.clone()))
                        .or_default()
                        .push(measure);
                }
                let sorted =
                    restriction.is_none() && crate::engine::evaluate::has_many_records(&found);
                let mut stored = 0;
                let full = restriction.is_none();
                for measures in groups.values() {
                    stored += if sorted {
                        crate::pg::sandbox::grouping_by_sort(|| store_group(measures, full))
                    } else {
                        store_group(measures, full)
                    };
                }
                Ok(stored)
            }),
        )?;
    }
    Ok(stored)
}

/// The system refresh's part: every trait of every entity, an entity whose
/// traits fail (a table dropped) failing alone with a warning naming it.
pub fn refresh_all() {
    for entity in SpiCatalog.entity_names() {
        let result = crate::pg::subtransaction::in_subtransaction(AssertUnwindSafe(|| {
            if let Err(e) = refresh(&entity, None) {
                crate::pg::error::Raise::raise(e);
            }
        }));
        if let Err(failure) = result {
            pgrx::warning!(
                "segments: the traits of entity \"{entity}\" were not computed: {}",
                failure.message
            );
        }
    }
}

/// Computes one scan's traits (as the current role) and stores them
/// chunk by chunk: all of them (`full`: as the difference from the stored
/// values) or those of the changed keys (whose stored values were
/// deleted). Returns how many values the traits have.
fn store_group(measures: &[TraitMeasure], full: bool) -> i64 {
    let values: Vec<String> = measures
        .iter()
        .map(|m| {
            format!(
                "pg_catalog.to_jsonb(q.{})::pg_catalog.text",
                ident(&m.column.name)
            )
        })
        .collect();
    let query = traits_query(measures);
    let sql = format!(
        "SELECT (q.key)::pg_catalog.text, {} FROM ({query}) q",
        values.join(", "),
    );
    let ids: Vec<i64> = measures.iter().map(|m| m.id).collect();
    let mut difference = Difference::new(ids.clone());
    let mut stored = 0;
    Spi::connect(|client| {
        let mut cursor = client.open_cursor(sql.as_str(), &[]);
        loop {
            let table = spi(cursor.fetch(CHUNK));
            if table.is_empty() {
                break;
            }
            let mut rows: Vec<Row> = Vec::new();
            for row in table {
                let Some(key) = spi(row.get::<String>(1)) else {
                    continue;
                };
                // A JSON null is no value, as SQL's NULL.
                let values = (0..ids.len())
                    .map(|i| spi(row.get::<String>(i + 2)).filter(|v| v != "null"))
                    .collect();
                rows.push((key, values));
            }
            if full {
                difference.chunk(&rows);
            } else {
                stored += insert(&ids, rows);
            }
        }
    });
    if !full {
        return stored;
    }
    let stored = difference.values();
    // The keys a trait has a value for, under the condition above.
    difference.finish(|i| {
        format!(
            "SELECT (q.key)::pg_catalog.text FROM ({query}) q WHERE {} OPERATOR(pg_catalog.<>) 'null'",
            values[i]
        )
    });
    stored
}

/// Inserts the values of `rows` (their keys' stored values were deleted);
/// returns how many.
fn insert(ids: &[i64], rows: Vec<Row>) -> i64 {
    let (mut trait_ids, mut keys, mut jsons) = (Vec::new(), Vec::new(), Vec::new());
    for (key, values) in rows {
        for (id, value) in ids.iter().zip(values) {
            if let Some(value) = value {
                trait_ids.push(*id);
                keys.push(key.clone());
                jsons.push(value);
            }
        }
    }
    let stored = keys.len() as i64;
    crate::traits::difference::insert(trait_ids, keys, jsons);
    stored
}
