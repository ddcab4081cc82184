//! Live segments over paths (`register_related(…, via => …)`): capture on
//! a table reached through others queues its own foreign key (a key of
//! the next table on the path, not of the entity), so apply maps those
//! keys along the path to the entity keys they belong to, and a change of
//! any table on a path re-evaluates the conditions of every related table
//! whose path goes through it (a contact moving to another account moves
//! its events with it).

use std::collections::{BTreeSet, HashMap};

use pgrx::prelude::*;
use pgrx::spi::Spi;

use segments_core::catalog::Entity;
use segments_core::compile::{path_sql, path_tables};
use segments_core::sql::{ident, op};

use crate::engine::run::Target;
use crate::pg::spi::spi;

/// `changes` with every key queued by a path table replaced by the entity
/// keys it belongs to (mapped as each owner of `targets`, in the sandbox,
/// so row-level security and privileges apply), then each change also
/// counted for every related table whose path goes through its table.
pub fn resolve(
    entity: &Entity,
    targets: &[Target],
    changes: Vec<(String, Option<String>)>,
) -> Vec<(String, Option<String>)> {
    if entity.related.iter().all(|r| r.via.is_none()) {
        return changes;
    }
    // Keys queued by path tables, by table.
    let mut foreign: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut out: BTreeSet<(String, Option<String>)> = BTreeSet::new();
    for (key, source) in changes {
        match source.as_deref().and_then(|s| entity.related(s)) {
            Some(related) if related.via.is_some() => {
                foreign.entry(related.name.clone()).or_default().insert(key);
            }
            _ => {
                out.insert((key, source));
            }
        }
    }
    let owners: BTreeSet<u32> = targets.iter().map(|t| t.owner.to_u32()).collect();
    for (name, keys) in foreign {
        let Some(related) = entity.related(&name) else {
            continue;
        };
        let keys: Vec<String> = keys.into_iter().collect();
        for owner in &owners {
            let mapped = crate::pg::sandbox::as_role(
                pg_sys::Oid::from(*owner),
                std::panic::AssertUnwindSafe(|| entity_keys(entity, related, &keys)),
            );
            for key in mapped {
                out.insert((key, Some(name.clone())));
            }
        }
    }
    // A change of a table on a path is a change of every related table
    // whose path goes through it.
    let mut spread = Vec::new();
    for related in entity.related.iter().filter(|r| r.via.is_some()) {
        for on_path in path_tables(entity, related) {
            for (key, source) in &out {
                if source.as_deref() == Some(on_path.name.as_str()) {
                    spread.push((key.clone(), Some(related.name.clone())));
                }
            }
        }
    }
    out.extend(spread);
    out.into_iter().collect()
}

/// The entity keys of the rows of the next table on `related`'s path whose
/// primary key is one of `keys`; none when the path no longer resolves (the
/// segments then fail their next run, naming it).
fn entity_keys(
    entity: &Entity,
    related: &segments_core::catalog::Related,
    keys: &[String],
) -> Vec<String> {
    let Some(via) = related.via.as_deref().and_then(|v| entity.related(v)) else {
        return Vec::new();
    };
    let (Some(primary_key), Ok((from, key))) = (&via.primary_key, path_sql(entity, via, "p"))
    else {
        return Vec::new();
    };
    // Compared as text: the keys were queued as text, and no cast of the
    // user's type runs on the extension's behalf.
    let sql = format!(
        "SELECT DISTINCT ({key})::pg_catalog.text FROM {from} \
          WHERE (p.{})::pg_catalog.text {} ANY ($1::pg_catalog.text[]) AND ({key}) IS NOT NULL",
        ident(primary_key),
        op("=")
    );
    Spi::connect(|client| {
        spi(client.select(&sql, None, &[keys.to_vec().into()]))
            .filter_map(|row| spi(row.get::<String>(1)))
            .collect()
    })
}
