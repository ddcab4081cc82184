//! Applying queued changes: `apply_changes` takes each entity's queued
//! keys once (deleting them in its own transaction, so a killed apply
//! redoes its batch), evaluates every live segment of the entity on just
//! those keys with the same compiled plan as a refresh (every query
//! restricted to `key = ANY (...)`, the entity's rows read from the
//! captured row images where they can be), and patches the bitmaps
//! through `store`, which records the runs and runs `after_change`.

use std::collections::{BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use pgrx::prelude::*;
use pgrx::spi::Spi;
use pgrx::JsonB;
use serde_json::Value;

use segments_core::bitmap::{position_of, Members};
use segments_core::catalog::{Catalog, Entity, KeyKind};
use segments_core::definition::Definition;
use segments_core::sql::{ident, literal};

use crate::engine::evaluate::{evaluate_segment, fill_late_leaves, reference_time_sql, LeafValues};
use crate::engine::live::related::{plan_owner, related_values, OwnerPlan};
use crate::engine::live::tables::columns_read_by;
use crate::engine::plan::compute_as;
use crate::engine::progress::{self, Kind, Progress};
use crate::engine::refresh::{dependency_order, refresh_segments};
use crate::engine::run::{RunCause, Target};
use crate::engine::store::{self, Changes, Evaluated, Run};
use crate::pg::catalog::{registered_key_type, SpiCatalog};
use crate::pg::error::Failure;
use crate::pg::spi::{optional_value, required, spi};
use crate::pg::subtransaction::writing_transaction;

/// The most queued rows of one entity applied key by key; beyond it the
/// entity's live segments are refreshed whole (as capture does for one
/// statement changing more rows).
const MAX_BATCH_KEYS: i64 = 100_000;

/// How many changes of `entity` are queued.
fn queued(entity: &str) -> i64 {
    spi(Spi::get_one_with_args::<i64>(
        "SELECT pg_catalog.count(*) FROM segments.change_queue WHERE entity OPERATOR(pg_catalog.=) $1",
        &[entity.into()],
    ))
    .unwrap_or(0)
}

/// A queued change as apply takes it: the key (None: everything changed),
/// the related table whose rows changed (None: the entity's own row), and
/// the row image when it is usable.
type Queued = (Option<String>, Option<String>, Option<Vec<u8>>);

/// Applies every queued change; returns the runs recorded.
pub fn apply_changes() -> Vec<i64> {
    // WAL capture (a schema older than the library has none): the slot is
    // kept before anything is written (it may be made), and its changes
    // join the queue.
    let wal = !crate::pg::subtransaction::in_recovery()
        && optional_value::<bool>(
            "SELECT pg_catalog.to_regclass('segments.capture_slot') IS NOT NULL",
            &[],
        ) == Some(true);
    let after_decoding = if wal {
        crate::engine::live::wal::maintain()
    } else {
        crate::engine::live::wal::AfterDecoding::Nothing
    };
    if wal {
        crate::engine::live::wal::write_restart_point();
    }
    // Nothing queued and no slot to decode: nothing is written (no
    // transaction id, no WAL), so that an idle database stays idle.
    crate::pg::subtransaction::refuse_in_recovery();
    if after_decoding == crate::engine::live::wal::AfterDecoding::Nothing
        && !(wal && crate::engine::live::wal::in_use())
        && optional_value::<bool>("SELECT EXISTS (SELECT FROM segments.change_queue)", &[])
            == Some(false)
    {
        return Vec::new();
    }
    writing_transaction();
    // What this application writes to the extension's tables is skipped by
    // WAL capture's decoding.
    let _own = crate::engine::live::own_writes::mark();
    crate::engine::memory::start_peak();
    if wal {
        crate::engine::live::wal::decode_into_queue();
        if after_decoding == crate::engine::live::wal::AfterDecoding::Retire {
            crate::engine::live::wal::retire();
        }
    }
    let entities: Vec<String> = Spi::connect(|client| {
        spi(client.select(
            "SELECT DISTINCT entity FROM segments.change_queue ORDER BY 1",
            None,
            &[],
        ))
        .filter_map(|row| spi(row.get::<String>(1)))
        .collect()
    });
    let mut runs = Vec::new();
    for entity in entities {
        let targets = live_targets(&entity);
        let ids: Vec<i64> = targets.iter().map(|t| t.id).collect();
        // A backlog larger than a batch (many statements, or no scheduler
        // for a while) is applied as "everything changed": one refresh of
        // the entity's live segments, in memory bounded by the plan, not
        // by the queue.
        if queued(&entity) > MAX_BATCH_KEYS {
            spi(Spi::run_with_args(
                "DELETE FROM segments.change_queue WHERE entity OPERATOR(pg_catalog.=) $1",
                &[entity.as_str().into()],
            ));
            if !ids.is_empty() {
                let outcomes =
                    refresh_segments(Some(&ids), RunCause::Live, false).unwrap_or_default();
                runs.extend(outcomes.iter().map(|o| o.run_id));
                follow_traits(&entity, &targets, None);
            }
            continue;
        }
        // Taken once: a killed apply rolls back and leaves them queued.
        // An image is kept only when it is newer than every target's last
        // full evaluation and last change of definition: an update of a
        // column no live segment read then was not captured, so an older
        // image may show a value the table no longer has.
        let taken: Vec<Queued> = Spi::connect_mut(|client| {
            spi(client.update(
                "WITH newest AS (
                     SELECT GREATEST(
                                (SELECT pg_catalog.max(r.started_at) FROM segments.refresh_run r
                                  WHERE r.segment_id OPERATOR(pg_catalog.=) ANY ($2) AND r.keys_examined IS NULL),
                                (SELECT pg_catalog.max(s.updated_at) FROM segments.segment s
                                  WHERE s.id OPERATOR(pg_catalog.=) ANY ($2))) AS at)
                 DELETE FROM segments.change_queue q USING newest n WHERE q.entity OPERATOR(pg_catalog.=) $1
                 RETURNING q.key, q.source,
                           CASE WHEN q.queued_at OPERATOR(pg_catalog.>) COALESCE(n.at, '-infinity'::pg_catalog.timestamptz) THEN q.image END",
                None,
                &[entity.as_str().into(), ids.into()],
            ))
            .map(|row| (spi(row.get::<String>(1)), spi(row.get::<String>(2)), spi(row.get::<Vec<u8>>(3))))
            .collect()
        });
        let images = latest_images(&taken);
        let changes: Vec<(Option<String>, Option<String>)> = taken
            .into_iter()
            .map(|(key, source, _)| (key, source))
            .collect();
        if targets.is_empty() || changes.is_empty() {
            continue;
        }
        if changes.iter().any(|(key, _)| key.is_none()) {
            // A TRUNCATE: everything changed.
            let ids: Vec<i64> = targets.iter().map(|t| t.id).collect();
            let outcomes = refresh_segments(Some(&ids), RunCause::Live, false).unwrap_or_default();
            runs.extend(outcomes.iter().map(|o| o.run_id));
            follow_traits(&entity, &targets, None);
            continue;
        }
        let changes: Vec<(String, Option<String>)> = changes
            .into_iter()
            .filter_map(|(key, source)| Some((key?, source)))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let changes = match SpiCatalog.entity(&entity) {
            Some(registered) => crate::engine::live::paths::resolve(&registered, &targets, changes),
            None => changes,
        };
        runs.extend(apply_entity(&entity, &targets, &changes, images));
    }
    runs
}

/// The row images of a batch that show a key's current row: those of keys
/// whose own row was queued exactly once (for a key changed twice, which
/// image is newer is unknown; those keys read the heap).
fn latest_images(taken: &[Queued]) -> Vec<(String, Vec<u8>)> {
    let mut own: HashMap<&str, (usize, Option<&Vec<u8>>)> = HashMap::new();
    for (key, source, image) in taken {
        if let (Some(key), None) = (key, source) {
            let entry = own.entry(key.as_str()).or_insert((0, None));
            entry.0 += 1;
            entry.1 = image.as_ref();
        }
    }
    own.into_iter()
        .filter_map(|(key, (count, image))| {
            (count == 1)
                .then_some(image)
                .flatten()
                .map(|image| (key.to_string(), image.clone()))
        })
        .collect()
}

/// The entity's rows for a restricted evaluation: the changed keys with a
/// usable image from their images, the others from the heap. None when
/// nothing can come from an image: the table has row-level security (an
/// image would bypass its policies), or no image is usable. The heap half
/// is always queried, even for no keys, so that the executor checks the
/// owner's privileges on every column read.
fn entity_rows(
    entity: &Entity,
    targets: &[&Target],
    keys: &[String],
    images: &[(String, Vec<u8>)],
) -> Option<String> {
    if images.is_empty() {
        return None;
    }
    let (relation, secured) = Spi::connect(|client| {
        let row = spi(client.select(
            "SELECT c.oid, c.relrowsecurity FROM segments.entity e JOIN pg_catalog.pg_class c \
                 ON c.oid OPERATOR(pg_catalog.=) e.relation::pg_catalog.oid WHERE e.name OPERATOR(pg_catalog.=) $1",
            None,
            &[entity.name.as_str().into()],
        ))
        .next()
        .map(|row| (required::<pg_sys::Oid>(&row, 1), required::<bool>(&row, 2)));
        row.unzip()
    });
    if secured? {
        return None;
    }
    // The key, then every column the targets and eligibility read.
    let mut names: Vec<String> = vec![entity.key_column.clone()];
    let definitions: Vec<Value> = targets.iter().map(|t| t.definition.clone()).collect();
    for (table, column) in columns_read_by(entity, &definitions) {
        if table == entity.table.relation_sql && !names.contains(&column) {
            names.push(column);
        }
    }
    // Decoding prints values with their types' output functions, as the
    // extension: only for columns whose types segments evaluates (the plan
    // refuses the others, naming them). Decoded values are cast to the
    // base type: a cast to a domain would run its CHECK constraints.
    let columns: Vec<(String, String)> = names
        .iter()
        .map(|name| {
            entity
                .table
                .column(name)
                .filter(|c| c.refused.is_none())
                .map(|c| (name.clone(), c.base_type_sql.clone()))
        })
        .collect::<Option<_>>()?;
    let (source, unusable) =
        crate::engine::live::capture::rows_of_images(relation?, &columns, images);
    let source = source?;
    let from_images: BTreeSet<&str> = images
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !unusable.iter().any(|u| u == k))
        .collect();
    let heap_keys: Vec<String> = keys
        .iter()
        .filter(|k| !from_images.contains(k.as_str()))
        .cloned()
        .collect();
    let (_, heap_keys_sql) = positions_of(entity, &heap_keys);
    let heap_columns = names
        .iter()
        .map(|n| format!("h.{}", ident(n)))
        .collect::<Vec<_>>()
        .join(", ");
    Some(format!(
        "SELECT {heap_columns} FROM {} h WHERE h.{} OPERATOR(pg_catalog.=) ANY ({heap_keys_sql}) UNION ALL {source}",
        entity.table.relation_sql,
        ident(&entity.key_column)
    ))
}

/// The live segments of an entity, locked as a refresh locks them, so that
/// applying changes and a full refresh of a segment serialize.
fn live_targets(entity: &str) -> Vec<Target> {
    Spi::connect_mut(|client| {
        spi(client.update(
            "SELECT id, entity, owner::pg_catalog.oid, definition FROM segments.segment \
              WHERE entity OPERATOR(pg_catalog.=) $1 AND schedule OPERATOR(pg_catalog.=) 'live' \
                AND state OPERATOR(pg_catalog.=) 'active' ORDER BY id FOR NO KEY UPDATE",
            None,
            &[entity.into()],
        ))
        .map(|row| Target {
            id: required(&row, 1),
            entity: required(&row, 2),
            owner: required(&row, 3),
            active: true,
            definition: spi(row.get::<JsonB>(4)).map(|j| j.0).unwrap_or(Value::Null),
        })
        .collect()
    })
}

/// Bitmap positions of the changed keys, and the SQL array of the keys in
/// the key's own type for the restricted queries.
fn positions_of(entity: &Entity, keys: &[String]) -> (Members, String) {
    match entity.key_kind {
        KeyKind::Integer => {
            let ints: Vec<i64> = keys
                .iter()
                .filter_map(|k| k.trim().parse::<i64>().ok())
                .collect();
            let members: Members = ints.iter().map(|k| position_of(*k)).collect();
            let list = ints
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            (members, format!("'{{{list}}}'::pg_catalog.int8[]"))
        }
        KeyKind::Dictionary => {
            spi(Spi::run_with_args(
                "INSERT INTO segments.entity_key (entity, key) SELECT $1, k FROM pg_catalog.unnest($2::pg_catalog.text[]) k \
                  WHERE pg_catalog.octet_length(k) OPERATOR(pg_catalog.<=) $3 \
                 ON CONFLICT (entity, key) DO NOTHING",
                &[entity.name.as_str().into(), keys.to_vec().into(), crate::engine::evaluate::MAX_KEY_BYTES.into()],
            ));
            let positions: Vec<i64> = Spi::connect(|client| {
                spi(client.select(
                    "SELECT position FROM segments.entity_key WHERE entity OPERATOR(pg_catalog.=) $1 \
                       AND key OPERATOR(pg_catalog.=) ANY ($2)",
                    None,
                    &[entity.name.as_str().into(), keys.to_vec().into()],
                ))
                .filter_map(|row| spi(row.get::<i64>(1)))
                .collect()
            });
            let key_type = registered_key_type(&entity.name).sql;
            let items = keys
                .iter()
                .map(|k| literal(k))
                .collect::<Vec<_>>()
                .join(",");
            (
                positions.into_iter().map(|p| p as u64).collect(),
                format!("ARRAY[{items}]::pg_catalog.text[]::{key_type}[]"),
            )
        }
    }
}

/// Applies one entity's changed keys to its live segments; returns the
/// runs. `changes` pairs each key with the related table whose rows
/// changed (None: the entity's own row).
fn apply_entity(
    entity_name: &str,
    targets: &[Target],
    changes: &[(String, Option<String>)],
    images: Vec<(String, Vec<u8>)>,
) -> Vec<i64> {
    let started = Instant::now();
    let keys: Vec<String> = changes
        .iter()
        .map(|(k, _)| k.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let run = Run::starting(RunCause::Live, Some(keys.len() as i64));
    let Some(entity) = SpiCatalog.entity(entity_name) else {
        return Vec::new();
    };
    let (changed, keys_sql) = positions_of(&entity, &keys);
    // Per related table: the keys whose rows of it changed.
    let mut by_related: HashMap<&str, BTreeSet<String>> = HashMap::new();
    for (key, source) in changes {
        if let Some(source) = source {
            by_related
                .entry(source.as_str())
                .or_default()
                .insert(key.clone());
        }
    }
    let mut changed_related: HashMap<String, Members> = HashMap::new();
    let mut related_sql: Vec<(String, String)> = Vec::new();
    for related in &entity.related {
        let keys: Vec<String> = by_related
            .get(related.name.as_str())
            .map(|k| k.iter().cloned().collect())
            .unwrap_or_default();
        let (positions, sql) = positions_of(&entity, &keys);
        if !keys.is_empty() {
            changed_related.insert(related.name.clone(), positions);
        }
        related_sql.push((related.name.clone(), sql));
    }
    let reference = reference_time_sql();
    let mut by_owner: HashMap<pg_sys::Oid, Vec<&Target>> = HashMap::new();
    for target in targets {
        by_owner.entry(target.owner).or_default().push(target);
    }
    let mut plans: HashMap<pg_sys::Oid, OwnerPlan> = HashMap::new();
    for (owner, owned) in &mut by_owner {
        owned.sort_by_key(|t| t.id);
        let rows = entity_rows(&entity, owned, &keys, &images);
        let planned = plan_owner(entity_name, owned, &reference, |planner| {
            planner.restrict_to(keys_sql.clone());
            if let Some(rows) = rows {
                planner.read_rows_from(rows);
            }
            for (name, sql) in &related_sql {
                planner.restrict_related_to(name, sql.clone());
            }
        });
        if let Some(planned) = planned {
            plans.insert(*owner, planned);
        }
    }
    let mut values: HashMap<pg_sys::Oid, Result<LeafValues, Failure>> = HashMap::new();
    let mut changes = Changes::default();
    let mut runs = Vec::new();
    let progress = Progress::start(
        Kind::Live,
        &targets.iter().map(|t| t.id).collect::<Vec<_>>(),
    );
    for i in dependency_order(targets) {
        let target = &targets[i];
        let Some(owner_plan) = plans.get(&target.owner) else {
            continue;
        };
        let plan = &owner_plan.restricted;
        let leaf_values = values.entry(target.owner).or_insert_with(|| {
            progress::phase(&format!("scanning {}", entity.table.relation_sql));
            let known = related_values(
                target.owner,
                entity_name,
                owner_plan,
                &changed,
                &changed_related,
            )?;
            compute_as(target.owner, plan, &known)
        });
        progress::phase("storing");
        let result = match (owner_plan.compiled.get(&target.id), leaf_values) {
            (Some(Ok(compiled)), Ok(leaf_values)) => {
                fill_late_leaves(plan, leaf_values, &changes.members);
                Ok(evaluate_segment(compiled, leaf_values).0)
            }
            (Some(Err(e)), _) => Err(e.clone()),
            (_, Err(e)) => Err(e.clone()),
            (None, _) => continue,
        };
        let outcome = match result {
            Ok(subset) => store::store_success(
                target,
                Evaluated::Part {
                    changed: &changed,
                    subset,
                },
                &run,
                || started.elapsed(),
                &mut changes,
            ),
            Err(failure) => store::store_failure(target.id, failure, &run, started.elapsed()),
        };
        runs.push(outcome.run_id);
        progress.advance();
    }
    // Trait values change only with related rows: the keys whose rows of
    // some related table (or path) changed.
    let related_keys: Vec<String> = by_related
        .values()
        .flatten()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !related_keys.is_empty() {
        progress::phase("storing traits");
        let (_, related_keys_sql) = positions_of(&entity, &related_keys);
        follow_traits(
            entity_name,
            targets,
            Some((&related_keys, &related_keys_sql)),
        );
    }
    store::after_change(&changes);
    runs
}

/// Keeps the stored values of the traits the live segments use (SPEC 16:
/// a trait is live when a live segment uses it) in step with them: those
/// of the changed keys (`keys`: the keys, and as an SQL array), or all of
/// them after a whole refresh. A trait that cannot be computed (its table
/// gone, its owner's privileges revoked) keeps its values with a warning
/// naming it; the segments that use it record their own failure.
fn follow_traits(entity: &str, targets: &[Target], keys: Option<(&[String], &str)>) {
    let used: BTreeSet<String> = targets
        .iter()
        .filter_map(|t| Definition::parse(&t.definition).ok())
        .flat_map(|d| {
            d.trait_names()
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    if used.is_empty() {
        return;
    }
    let result = crate::pg::subtransaction::in_subtransaction(AssertUnwindSafe(|| {
        let stored = match keys {
            Some((keys, keys_sql)) => {
                crate::traits::store::refresh_keys(entity, &used, keys, keys_sql)
            }
            None => crate::traits::store::refresh_named(entity, &used),
        };
        if let Err(e) = stored {
            crate::pg::error::Raise::raise(e);
        }
    }));
    if let Err(failure) = result {
        pgrx::warning!(
            "segments: the traits of entity \"{entity}\" that live segments use were not stored: {}",
            failure.message
        );
    }
}
