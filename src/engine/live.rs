//! Live segments (`schedule = 'live'`): memberships follow inserts,
//! updates and deletes within seconds, at a cost proportional to what
//! changed.
//!
//! - Capture: statement-level AFTER triggers with transition tables on the
//!   entity table and the related tables live segments read write the
//!   changed keys to `segments.change_queue` (a TRUNCATE writes a NULL
//!   key: everything changed). `sync_capture` installs them when the first
//!   live segment needs a table and removes them with the last.
//! - Apply: `apply_changes` takes each entity's queued keys once (deleting
//!   them in its own transaction, so a killed apply redoes its batch),
//!   evaluates every live segment of the entity on just those keys with
//!   the same compiled plan as a refresh (every query restricted to
//!   `key = ANY (...)`), and patches the bitmaps; entered and exited rows,
//!   NOTIFY, sequences and exports follow as for a refresh.

use std::collections::{BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use pgrx::prelude::*;
use pgrx::spi::Spi;
use pgrx::JsonB;
use serde_json::Value;

use segments_core::bitmap::{position_of, serialize, Members};
use segments_core::catalog::{Catalog, KeyKind};
use segments_core::compile::Planner;
use segments_core::sql::{ident, literal};

use crate::engine::evaluate::{
    evaluate_segment, fill_segment_leaves, reference_time_sql, stored_members, RelatedValue,
};
use crate::engine::refresh::{
    compile_one, compute_as_knowing, dependency_order, record_changes, record_run_of, store_status,
    Outcome, RunStatus, Target, Trigger,
};
use crate::pg::catalog::SpiCatalog;
use crate::pg::error::{Failure, OrRaise};
use crate::pg::spi::{optional_value, required, spi};
use crate::pg::txn::{in_subtransaction, writing_transaction};

/// Trigger names: one per operation, relation, entity and key column.
fn trigger_name(operation: &str, entity: &str, column: &str) -> String {
    let mut hash: u32 = 2166136261;
    for b in format!("{entity}\u{0}{column}").bytes() {
        hash = (hash ^ u32::from(b)).wrapping_mul(16777619);
    }
    format!("segments_live_{operation}_{hash:08x}")
}

/// Installs the capture triggers live segments need and removes the rest.
/// Runs as the extension (it creates triggers on users' tables).
pub fn sync_capture() {
    // (relation, entity, key column, relation SQL, source: '' for the entity
    // table, else the related table's name).
    let needed: Vec<(pg_sys::Oid, String, String, String, String)> = Spi::connect(|client| {
        spi(client.select(
            "WITH live AS (
                 SELECT s.entity, s.definition FROM segments.segment s
                  WHERE s.schedule OPERATOR(pg_catalog.=) 'live' AND s.state OPERATOR(pg_catalog.=) 'active')
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
              WHERE EXISTS (SELECT FROM live l WHERE l.entity OPERATOR(pg_catalog.=) r.entity
                              AND pg_catalog.jsonb_path_exists(l.definition, '$.** ? (@.related == $n)',
                                                               pg_catalog.jsonb_build_object('n', r.name)))",
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
    let read = columns_read_by_live_segments();
    let mut wanted = BTreeSet::new();
    for (relation, entity, column, relation_sql, source) in &needed {
        crate::engine::citus::refuse_capture(*relation, relation_sql).or_raise();
        // An UPDATE matters only when it sets a column a live segment reads
        // (or the key): other updates do not even fire the trigger.
        let mut columns: BTreeSet<String> = read
            .get(entity)
            .map(|cols| {
                cols.iter()
                    .filter(|(r, _)| r == relation_sql)
                    .map(|(_, c)| c.clone())
                    .collect()
            })
            .unwrap_or_default();
        columns.insert(column.clone());
        // Only columns the table has: a column a segment reads may have been
        // dropped or renamed (that segment fails at its next run, naming
        // it); capture of the others, and everyone's DDL, carry on.
        let present = existing_columns(*relation);
        columns.retain(|c| present.contains(c));
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
    // Related values kept for entities without live segments any more.
    spi(Spi::run(
        "DELETE FROM segments.related_state WHERE entity OPERATOR(pg_catalog.<>) ALL (SELECT s.entity FROM segments.segment s \
          WHERE s.schedule OPERATOR(pg_catalog.=) 'live' AND s.state OPERATOR(pg_catalog.=) 'active')",
    ));
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
fn columns_read_by(
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
fn positions_of(entity: &segments_core::catalog::Entity, keys: &[String]) -> (Members, String) {
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
            let key_type = optional_value::<String>(
                "SELECT pg_catalog.format_type(key_type, NULL) FROM segments.entity WHERE name OPERATOR(pg_catalog.=) $1",
                &[entity.name.as_str().into()],
            )
            .unwrap_or_else(|| "text".into());
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

/// A plan compiled three ways for one owner's live segments of an entity:
/// restricted to the changed keys (what apply evaluates), unrestricted
/// (to compute a related value from scratch), and unrestricted at a fixed
/// reference time (whose leaf SQL names a related value independently of
/// when it is computed). The three are compiled from the same definitions
/// in the same order, so their leaves line up.
struct OwnerPlan {
    restricted: segments_core::compile::Plan,
    compiled: HashMap<i64, Result<segments_core::compile::CompiledSegment, Failure>>,
    full: segments_core::compile::Plan,
    identity: segments_core::compile::Plan,
}

type Compiled = HashMap<i64, Result<segments_core::compile::CompiledSegment, Failure>>;

/// Compiles `targets` (sorted by id, so that leaves are numbered alike
/// across plans) into one plan; `restrict` sets the planner's restrictions.
fn plan_for(
    entity: &str,
    targets: &[&Target],
    reference: &str,
    restrict: impl FnOnce(&mut Planner),
) -> Option<(segments_core::compile::Plan, Compiled)> {
    let mut planner = Planner::new(&SpiCatalog, entity, "entity", reference).ok()?;
    restrict(&mut planner);
    let mut compiled: Vec<(
        i64,
        Result<segments_core::compile::CompiledSegment, Failure>,
    )> = targets
        .iter()
        .map(|t| (t.id, compile_one(&mut planner, t).map_err(Failure::from)))
        .collect();
    let mut refs: Vec<&mut segments_core::compile::CompiledSegment> = compiled
        .iter_mut()
        .filter_map(|(_, c)| c.as_mut().ok())
        .collect();
    let plan = planner.finish(&mut refs);
    Some((plan, compiled.into_iter().collect()))
}

/// The reference time of identity plans: any fixed instant.
const IDENTITY_REFERENCE: &str = "'2000-01-01 00:00:00+00'::pg_catalog.timestamptz";

/// The related values of an owner's restricted plan, limited to the
/// changed keys: kept ones (`segments.related_state`) patched with the keys
/// whose related rows changed, so that a change of the entity's own rows
/// does not read related tables. Runs the queries as the owner.
fn related_values(
    owner: pg_sys::Oid,
    entity: &str,
    plans: &OwnerPlan,
    changed: &Members,
    changed_related: &HashMap<String, Members>,
) -> Result<HashMap<usize, RelatedValue>, Failure> {
    let mut known = HashMap::new();
    let mut identities = Vec::new();
    let leaves = plans.restricted.leaves.len();
    if plans.full.leaves.len() != leaves || plans.identity.leaves.len() != leaves {
        return Err(Failure::internal("the plans of a live application differ"));
    }
    for i in 0..leaves {
        let Some(related) = &plans.restricted.related_of[i] else {
            continue;
        };
        let identity = plans.identity.leaves[i].sql().to_string();
        identities.push(identity.clone());
        let kept = kept_related_value(owner, entity, &identity);
        let value = match (kept, changed_related.get(related)) {
            (Some(kept), None) => kept,
            (Some(kept), Some(keys)) => {
                let fresh = related_as(owner, &plans.restricted.leaves[i])?;
                let value = kept.patched(keys, &fresh);
                keep_related_value(owner, entity, &identity, &value);
                value
            }
            (None, _) => {
                let value = related_as(owner, &plans.full.leaves[i])?;
                keep_related_value(owner, entity, &identity, &value);
                value
            }
        };
        known.insert(i, value.within(changed));
    }
    // Values no live segment of this owner uses any more.
    spi(Spi::run_with_args(
        "DELETE FROM segments.related_state WHERE owner OPERATOR(pg_catalog.=) $1 AND entity OPERATOR(pg_catalog.=) $2 \
           AND leaf OPERATOR(pg_catalog.<>) ALL (SELECT pg_catalog.md5(l) FROM pg_catalog.unnest($3::pg_catalog.text[]) l)",
        &[owner.into(), entity.into(), identities.into()],
    ));
    Ok(known)
}

/// One related leaf's query, run as `owner` in the sandbox.
fn related_as(
    owner: pg_sys::Oid,
    leaf: &segments_core::compile::Leaf,
) -> Result<RelatedValue, Failure> {
    let leaf = AssertUnwindSafe(leaf);
    in_subtransaction(AssertUnwindSafe(|| {
        crate::pg::txn::as_role(
            owner,
            AssertUnwindSafe(|| crate::engine::evaluate::related_value(&leaf).unwrap_or_default()),
        )
    }))
}

/// A related value kept by an earlier application, if any.
fn kept_related_value(owner: pg_sys::Oid, entity: &str, identity: &str) -> Option<RelatedValue> {
    Spi::connect(|client| {
        let table = spi(client.select(
            "SELECT matching, with_rows FROM segments.related_state WHERE owner OPERATOR(pg_catalog.=) $1 \
               AND entity OPERATOR(pg_catalog.=) $2 AND leaf OPERATOR(pg_catalog.=) pg_catalog.md5($3)",
            None,
            &[owner.into(), entity.into(), identity.into()],
        ));
        let row = table.into_iter().next()?;
        let matching = spi(row.get::<Vec<u8>>(1))?;
        let with_rows = spi(row.get::<Vec<u8>>(2));
        let read = |bytes: &[u8]| {
            segments_core::bitmap::deserialize(bytes)
                .unwrap_or_else(|e| crate::pg::error::corrupt(e))
        };
        Some(RelatedValue {
            matching: read(&matching),
            with_rows: with_rows.as_deref().map(read),
        })
    })
}

fn keep_related_value(owner: pg_sys::Oid, entity: &str, identity: &str, value: &RelatedValue) {
    spi(Spi::run_with_args(
        "INSERT INTO segments.related_state (owner, entity, leaf, matching, with_rows) \
         VALUES ($1, $2, pg_catalog.md5($3), $4, $5) ON CONFLICT (owner, entity, leaf) DO UPDATE \
         SET matching = EXCLUDED.matching, with_rows = EXCLUDED.with_rows, computed_at = pg_catalog.now()",
        &[owner.into(), entity.into(), identity.into(), serialize(&value.matching).into(), value.with_rows.as_ref().map(serialize).into()],
    ));
}

/// Forgets the related values kept for the live segments of these
/// entities: a full refresh evaluates them anew (relative windows slide).
pub fn forget_related_values(entities: &[String]) {
    spi(Spi::run_with_args(
        "DELETE FROM segments.related_state WHERE entity OPERATOR(pg_catalog.=) ANY ($1)",
        &[entities.to_vec().into()],
    ));
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
    let started_at = spi(Spi::get_one::<pgrx::datum::TimestampWithTimeZone>(
        "SELECT pg_catalog.clock_timestamp()",
    ))
    .expect("clock_timestamp() is never NULL");
    let Some(entity) = SpiCatalog.entity(entity_name) else {
        return Vec::new();
    };
    let keys: Vec<String> = changes
        .iter()
        .map(|(k, _)| k.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
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
        let restricted = plan_for(entity_name, owned, &reference, |planner| {
            planner.restrict_to(keys_sql.clone());
            if let Some(rows) = rows {
                planner.read_rows_from(rows);
            }
            for (name, sql) in &related_sql {
                planner.restrict_related_to(name, sql.clone());
            }
        });
        let full = plan_for(entity_name, owned, &reference, |_| {});
        let identity = plan_for(entity_name, owned, IDENTITY_REFERENCE, |_| {});
        if let (Some((restricted, compiled)), Some((full, _)), Some((identity, _))) =
            (restricted, full, identity)
        {
            plans.insert(
                *owner,
                OwnerPlan {
                    restricted,
                    compiled,
                    full,
                    identity,
                },
            );
        }
    }
    let mut values: HashMap<pg_sys::Oid, Result<crate::engine::evaluate::LeafValues, Failure>> =
        HashMap::new();
    let mut fresh: HashMap<i64, Members> = HashMap::new();
    let mut entered_by_segment: HashMap<i64, Members> = HashMap::new();
    let mut runs = Vec::new();
    let mut changed_segments = Vec::new();
    for i in dependency_order(targets) {
        let target = &targets[i];
        let Some(OwnerPlan {
            restricted: plan,
            compiled,
            ..
        }) = plans.get(&target.owner)
        else {
            continue;
        };
        let leaf_values = values.entry(target.owner).or_insert_with(|| {
            let known = related_values(
                target.owner,
                entity_name,
                &plans[&target.owner],
                &changed,
                &changed_related,
            )?;
            compute_as_knowing(target.owner, plan, &known)
        });
        let result = match (compiled.get(&target.id), leaf_values) {
            (Some(Ok(compiled)), Ok(leaf_values)) => {
                fill_segment_leaves(plan, leaf_values, &fresh);
                Ok(evaluate_segment(compiled, leaf_values).0)
            }
            (Some(Err(e)), _) => Err(e.clone()),
            (_, Err(e)) => Err(e.clone()),
            (None, _) => continue,
        };
        match result {
            Ok(subset) => {
                let old = stored_members(target.id);
                let new = (&old - &changed) | (subset & &changed);
                let entered = &new - &old;
                let exited = &old - &new;
                let count = new.len() as i64;
                if !entered.is_empty() || !exited.is_empty() {
                    spi(Spi::run_with_args(
                        "INSERT INTO segments.membership (segment_id, members, member_count, refreshed_at) VALUES ($1, $2, $3, pg_catalog.now()) \
                         ON CONFLICT (segment_id) DO UPDATE SET members = EXCLUDED.members, member_count = EXCLUDED.member_count, \
                         refreshed_at = EXCLUDED.refreshed_at",
                        &[target.id.into(), serialize(&new).into(), count.into()],
                    ));
                    // Rule counts describe a full evaluation: cleared until the next one.
                    spi(Spi::run_with_args(
                        "UPDATE segments.segment SET status = 'succeeded', member_count = $2, last_refreshed_at = pg_catalog.now(), \
                         last_error = NULL, rule_counts = NULL, consecutive_failures = 0 WHERE id OPERATOR(pg_catalog.=) $1",
                        &[target.id.into(), count.into()],
                    ));
                    changed_segments.push(target.id);
                }
                let mut outcome = Outcome::succeeded(
                    target.id,
                    count,
                    entered.len(),
                    exited.len(),
                    started.elapsed(),
                );
                outcome.run_id = record_run_of(
                    target.id,
                    Trigger::Live,
                    started_at,
                    &outcome,
                    Some(keys.len() as i64),
                );
                record_changes(target, outcome.run_id, &entered, &exited, false);
                runs.push(outcome.run_id);
                entered_by_segment.insert(target.id, entered);
                fresh.insert(target.id, new);
            }
            Err(failure) => {
                store_status(target.id, RunStatus::Failed, Some(&failure.message));
                let mut outcome = Outcome::failed(target.id, failure, started.elapsed());
                outcome.run_id = record_run_of(
                    target.id,
                    Trigger::Live,
                    started_at,
                    &outcome,
                    Some(keys.len() as i64),
                );
                runs.push(outcome.run_id);
            }
        }
    }
    if let Err(message) = in_subtransaction(AssertUnwindSafe(|| {
        crate::sequence::assign(&entered_by_segment, &fresh)
    })) {
        warning!("segments: connecting entered records to sequences failed: {message}");
    }
    for export in crate::export::exports_of(&changed_segments) {
        crate::export::rewrite_recorded(export);
    }
    runs
}

/// Applies every queued change; returns the runs recorded.
pub fn apply_changes() -> Vec<i64> {
    writing_transaction();
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
        // Taken once: a killed apply rolls back and leaves them queued.
        // An image is kept only when it is newer than every target's last
        // full evaluation and last change of definition: an update of a
        // column no live segment read then was not captured, so an older
        // image may show a value the table no longer has.
        let taken: Vec<(Option<String>, Option<String>, Option<Vec<u8>>)> = Spi::connect_mut(
            |client| {
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
            },
        );
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
            let outcomes =
                crate::engine::refresh::refresh_segments(Some(&ids), Trigger::Live, false)
                    .unwrap_or_default();
            runs.extend(outcomes.iter().map(|o| o.run_id));
            continue;
        }
        let changes: Vec<(String, Option<String>)> = changes
            .into_iter()
            .filter_map(|(key, source)| Some((key?, source)))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        runs.extend(apply_entity(&entity, &targets, &changes, images));
    }
    runs
}

/// The row images of a batch that show a key's current row: those of keys
/// whose own row was queued exactly once (for a key changed twice, which
/// image is newer is unknown; those keys read the heap).
fn latest_images(
    taken: &[(Option<String>, Option<String>, Option<Vec<u8>>)],
) -> Vec<(String, Vec<u8>)> {
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
    entity: &segments_core::catalog::Entity,
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
        .into_iter()
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
    let (source, unusable) = crate::engine::capture::rows_of_images(relation?, &columns, images);
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

/// Installs or removes capture triggers to match the live segments; the
/// lifecycle trigger calls it when schedules, states or definitions change.
#[pg_extern(schema = "segments")]
fn _sync_capture() {
    crate::pg::txn::privileged(sync_capture);
}

/// One application of queued changes, for `segments.apply_changes()`.
#[pg_extern(schema = "segments")]
fn _apply_changes() -> Vec<i64> {
    crate::pg::txn::require_editor("apply changes to live segments");
    crate::pg::txn::privileged(apply_changes)
}
