//! Refresh: evaluating segments over every row. Segments of one entity
//! and one owner share a plan, so one scan of the entity table decides all
//! their attribute conditions; where their conditions' bitmaps would take
//! more than `segments.refresh_work_mem`, they share it in batches that
//! fit (`plan_batches`), and a bitmap is freed after its last reader. Segments that read other segments run after
//! them. Each segment's outcome is its own: a failing one keeps its old
//! membership and is marked failed, the others go on.
//!
//! This module only orchestrates: `plan` compiles, `evaluate` computes,
//! `store` writes and runs `after_change`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgrx::prelude::*;
use pgrx::spi::Spi;
use pgrx::JsonB;
use serde_json::Value;

use segments_core::bitmap::{Members, RuleCount};
use segments_core::compile::Plan;

use crate::engine::evaluate::LeafValues;
use crate::engine::evaluate::{
    evaluate_segment, fill_late_leaf, fill_late_leaves, reference_time_sql,
};
use crate::engine::plan::{compute_as, plan_targets, Planned};
use crate::engine::progress::{self, Kind, Progress};
use crate::engine::run::{Outcome, RunCause, Target};
use crate::engine::store::{self, Changes, Evaluated, Keep, Run};
use crate::pg::error::{Failure, Reported, SegmentsError};
use crate::pg::spi::{required, spi};
use crate::pg::subtransaction::writing_transaction;

/// Loads and locks the segments to refresh: the given ids, or every active
/// segment. Row locks make a second refresh of the same segment wait for
/// the first, and an edit wait for a running refresh.
fn load_targets(ids: Option<&[i64]>, skip_locked: bool) -> Result<Vec<Target>, Reported> {
    if let Some(ids) = ids {
        let missing = spi(Spi::get_one_with_args::<String>(
            "SELECT pg_catalog.string_agg(i::pg_catalog.text, ', ') FROM pg_catalog.unnest($1::pg_catalog.int8[]) AS i \
             WHERE NOT EXISTS (SELECT FROM segments.segment s WHERE s.id OPERATOR(pg_catalog.=) i)",
            &[ids.to_vec().into()],
        ));
        if let Some(missing) = missing {
            return Err(SegmentsError::no_such_segment(missing).into());
        }
    }
    let sql = format!(
        "SELECT id, entity, owner::pg_catalog.oid, state OPERATOR(pg_catalog.=) 'active', definition FROM segments.segment \
         WHERE CASE WHEN $1::pg_catalog.int8[] IS NULL THEN state OPERATOR(pg_catalog.=) 'active' \
                    ELSE id OPERATOR(pg_catalog.=) ANY ($1) END \
         ORDER BY id FOR NO KEY UPDATE{}",
        if skip_locked { " SKIP LOCKED" } else { "" }
    );
    let sql = sql.as_str();
    Ok(Spi::connect_mut(|client| {
        spi(client.update(sql, None, &[ids.map(|i| i.to_vec()).into()]))
            .map(|row| Target {
                id: required(&row, 1),
                entity: required(&row, 2),
                owner: required(&row, 3),
                active: required(&row, 4),
                definition: spi(row.get::<JsonB>(5)).map(|j| j.0).unwrap_or(Value::Null),
            })
            .collect()
    }))
}

/// Orders targets so that a segment comes after the segments it reads.
pub fn dependency_order(targets: &[Target]) -> Vec<usize> {
    let names = names_of(targets);
    let segments: Vec<(i64, &str, &Value)> = targets
        .iter()
        .map(|t| {
            (
                t.id,
                names.get(&t.id).map_or("", String::as_str),
                &t.definition,
            )
        })
        .collect();
    segments_core::compile::dependency_order(&segments)
}

/// The targets' names, by id.
fn names_of(targets: &[Target]) -> HashMap<i64, String> {
    if targets.is_empty() {
        return HashMap::new();
    }
    let ids: Vec<i64> = targets.iter().map(|t| t.id).collect();
    Spi::connect(|client| {
        spi(client.select(
            "SELECT name, id FROM segments.segment WHERE id OPERATOR(pg_catalog.=) ANY ($1)",
            None,
            &[ids.into()],
        ))
        .filter_map(|row| Some((spi(row.get::<i64>(2))?, spi(row.get::<String>(1))?)))
        .collect()
    })
}

/// Segments sharing one plan (same entity, same owner, and as many as
/// `segments.refresh_work_mem` allows), and the plan's leaf values once
/// computed, freed leaf by leaf as their last reader is evaluated.
struct Batch {
    owner: pg_sys::Oid,
    planned: Result<Planned, Failure>,
    size: usize,
    values: Option<Result<LeafValues, Failure>>,
    compute_time: Duration,
    /// By leaf, how many segments of the batch still to evaluate read it.
    readers: Vec<usize>,
    /// Segments still to evaluate: the values are dropped at 0.
    remaining: usize,
}

impl Batch {
    /// A batch of `targets`, planned.
    fn planned(entity: &str, targets: &[&Target], reference: &str) -> Batch {
        let planned = plan_targets(entity, targets, reference, |_| {});
        let mut readers = Vec::new();
        if let Ok(planned) = &planned {
            readers = vec![0; planned.plan.leaves.len()];
            for leaf in planned.compiled.values().flatten().flat_map(|c| c.leaves()) {
                readers[leaf] += 1;
            }
        }
        Batch {
            owner: targets[0].owner,
            planned,
            size: targets.len(),
            values: None,
            compute_time: Duration::ZERO,
            readers,
            remaining: targets.len(),
        }
    }

    /// Frees what no segment of the batch still to evaluate needs, once a
    /// segment reading `leaves` has been evaluated.
    fn evaluated(&mut self, leaves: &[usize]) {
        self.remaining = self.remaining.saturating_sub(1);
        if self.remaining == 0 {
            self.values = None;
            return;
        }
        let Some(Ok(values)) = self.values.as_mut() else {
            return;
        };
        for &leaf in leaves {
            self.readers[leaf] = self.readers[leaf].saturating_sub(1);
            if self.readers[leaf] == 0 {
                values.late.release(leaf, &mut values.leaves);
                values.leaves[leaf] = Members::new();
            }
        }
    }
}

/// The most bytes one condition's bitmap over `plan`'s entity takes when
/// its keys are dense (dictionary keys always are; integer keys when they
/// spread over less than 16 times the row count): a bit per record, plus a
/// container's worth.
fn leaf_bytes(plan: &Plan) -> f64 {
    crate::pg::catalog::estimated_rows(&plan.entity.table.relation_sql) / 8.0 + 8192.0
}

/// The active targets in batches: by (entity, owner), each group in
/// dependency order cut where its leaves would take more than
/// `segments.refresh_work_mem` by estimate (`leaf_bytes`); each batch
/// planned. Returns the batches and each target's batch.
fn plan_batches(
    targets: &[Target],
    order: &[usize],
    reference: &str,
) -> (Vec<Batch>, HashMap<i64, usize>) {
    let mut groups: Vec<((&str, pg_sys::Oid), Vec<&Target>)> = Vec::new();
    for target in order.iter().map(|&i| &targets[i]).filter(|t| t.active) {
        let key = (target.entity.as_str(), target.owner);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, group)) => group.push(target),
            None => groups.push((key, vec![target])),
        }
    }
    let limit = f64::from(crate::pg::gucs::REFRESH_WORK_MEM.get()) * 1024.0;
    let mut batches = Vec::new();
    let mut batch_of = HashMap::new();
    for ((entity, _), group) in groups {
        // The group is planned in id order, as before batches existed, so
        // that a refresh numbers leaves as live apply does.
        let mut by_id = group.clone();
        by_id.sort_by_key(|t| t.id);
        let whole = Batch::planned(entity, &by_id, reference);
        let parts = match &whole.planned {
            Ok(planned) => {
                let per_leaf = leaf_bytes(&planned.plan);
                let parts = cut(
                    &group,
                    planned,
                    limit / per_leaf - late_reserve(&planned.plan),
                );
                debug1!(
                    "segments: {} segment(s) of entity \"{entity}\" with {} condition(s) of at most {:.0} kB each: {} batch(es)",
                    group.len(),
                    planned.plan.leaves.len(),
                    per_leaf / 1024.0,
                    parts.len()
                );
                parts
            }
            Err(_) => vec![group.clone()],
        };
        if parts.len() == 1 {
            group.iter().for_each(|t| {
                batch_of.insert(t.id, batches.len());
            });
            batches.push(whole);
            continue;
        }
        drop(whole);
        for mut part in parts {
            part.sort_by_key(|t| t.id);
            part.iter().for_each(|t| {
                batch_of.insert(t.id, batches.len());
            });
            batches.push(Batch::planned(entity, &part, reference));
        }
    }
    (batches, batch_of)
}

/// The segments that segments of `batches` reference: a refresh keeps
/// their fresh members for them.
fn referenced(batches: &[Batch]) -> std::collections::HashSet<i64> {
    batches
        .iter()
        .filter_map(|b| b.planned.as_ref().ok())
        .flat_map(|p| p.compiled.values().flatten())
        .flat_map(|c| c.references.iter().copied())
        .collect()
}

/// What a batch holds for its late comparisons (`engine::late`), in
/// conditions' bitmaps: each group's buckets hold every record once in
/// small bitmaps of up to 16 bits a record, and those equal to a constant
/// again, plus its checkpoints (`LATE_GROUP_LEAVES` in all); and the
/// comparisons filled at once.
fn late_reserve(plan: &Plan) -> f64 {
    match plan.late_groups().count() {
        0 => 0.0,
        groups => (groups * LATE_GROUP_LEAVES + crate::engine::late::MAX_FILLED) as f64,
    }
}

/// A late group's buckets, in conditions' bitmaps (`late_reserve`).
const LATE_GROUP_LEAVES: usize = 18 + segments_core::compile::CHECKPOINTS + 1;

/// `group` (in dependency order) cut into runs whose distinct leaves in
/// `planned` (but late comparisons, reserved for apart), with the bitmap
/// of every row and the universe, are at most `max_leaves`; every run
/// holds at least one segment.
fn cut<'t>(group: &[&'t Target], planned: &Planned, max_leaves: f64) -> Vec<Vec<&'t Target>> {
    let mut parts: Vec<Vec<&Target>> = vec![Vec::new()];
    let mut held: std::collections::HashSet<usize> = Default::default();
    let late = planned.plan.late_leaves();
    for target in group {
        let mut leaves = match planned.compiled.get(&target.id) {
            Some(Ok(compiled)) => compiled.leaves(),
            _ => Vec::new(),
        };
        leaves.retain(|leaf| !late.contains(leaf));
        let new = leaves.iter().filter(|l| !held.contains(l)).count();
        let part = parts.last_mut().expect("never empty");
        if !part.is_empty() && (held.len() + new + 2) as f64 > max_leaves {
            held.clear();
            parts.push(Vec::new());
        }
        held.extend(leaves);
        parts.last_mut().expect("never empty").push(target);
    }
    parts
}

/// Evaluates one target on its own plan: used when the shared plan of its
/// group failed, to find out which segment is at fault.
fn evaluate_alone(
    target: &Target,
    reference: &str,
    fresh: &HashMap<i64, Members>,
) -> Result<(Members, Vec<RuleCount>), Failure> {
    let Planned { plan, mut compiled } =
        plan_targets(&target.entity, &[target], reference, |_| {})?;
    let compiled = compiled
        .remove(&target.id)
        .unwrap_or_else(|| Err(Failure::internal("not compiled")))?;
    let mut values = compute_as(target.owner, &plan, &HashMap::new())?;
    fill_late_leaves(&plan, &mut values, fresh);
    Ok(evaluate_segment(&compiled, &values))
}

/// Refreshes the given segments (or every active one) and reports each.
/// `skip_locked` leaves out segments another session is refreshing or
/// editing right now (the scheduler does, and gets them on a later pass);
/// otherwise a refresh waits for them.
pub fn refresh_segments(
    ids: Option<&[i64]>,
    cause: RunCause,
    skip_locked: bool,
) -> Result<Vec<Outcome>, Reported> {
    writing_transaction();
    // Memberships, runs and history: skipped by WAL capture's decoding.
    let _own = crate::engine::live::own_writes::mark();
    crate::engine::memory::start_peak();
    let progress = Progress::start(Kind::Refresh, ids.unwrap_or(&[]));
    let targets = load_targets(ids, skip_locked)?;
    progress.segments(&targets.iter().map(|t| t.id).collect::<Vec<_>>());
    forget_live_windows(&targets);
    let reference = reference_time_sql();
    progress::phase("planning");
    let order = dependency_order(&targets);
    let (mut batches, batch_of) = plan_batches(&targets, &order, &reference);
    let mut changes = Changes::keeping(Keep {
        members: referenced(&batches),
        changes: store::consumers(),
    });
    let mut outcomes = Vec::with_capacity(targets.len());

    for i in order {
        let target = &targets[i];
        let started = Instant::now();
        let run = Run::starting(cause, None);
        if !target.active {
            outcomes.push(store::store_skipped(target.id, &run, started.elapsed()));
            progress.advance();
            continue;
        }
        let batch = &mut batches[batch_of[&target.id]];
        // Work shared by a batch is divided among its segments.
        let mut computed_here = Duration::ZERO;
        if batch.values.is_none() {
            progress::phase(&format!("scanning {}", scanned_table(&target.entity)));
            let compute_started = Instant::now();
            batch.values = Some(match &batch.planned {
                Ok(planned) => compute_as(batch.owner, &planned.plan, &HashMap::new()),
                Err(e) => Err(e.clone()),
            });
            batch.compute_time = compute_started.elapsed();
            computed_here = batch.compute_time;
        }
        progress::phase("storing");
        let shared_time = batch.compute_time / batch.size.max(1) as u32;
        let duration = || started.elapsed().saturating_sub(computed_here) + shared_time;
        let leaves = match &batch.planned {
            Ok(planned) => match planned.compiled.get(&target.id) {
                Some(Ok(compiled)) => compiled.leaves(),
                _ => Vec::new(),
            },
            Err(_) => Vec::new(),
        };
        let result = match (&batch.planned, batch.values.as_mut()) {
            (Err(e), _) => Err(e.clone()),
            (Ok(planned), Some(Ok(values))) => match planned.compiled.get(&target.id) {
                Some(Ok(compiled)) => {
                    for &leaf in &leaves {
                        fill_late_leaf(
                            &planned.plan,
                            values,
                            &changes.members,
                            leaf,
                            Some(&leaves),
                        );
                    }
                    Ok(evaluate_segment(compiled, values))
                }
                Some(Err(e)) => Err(e.clone()),
                None => Err(Failure::internal("not compiled")),
            },
            (Ok(planned), _) => match planned.compiled.get(&target.id) {
                Some(Err(e)) => Err(e.clone()),
                _ => evaluate_alone(target, &reference, &changes.members),
            },
        };
        batch.evaluated(&leaves);
        outcomes.push(match result {
            Ok((members, counts)) => store::store_success(
                target,
                Evaluated::Whole {
                    members,
                    counts: &counts,
                },
                &run,
                duration,
                &mut changes,
            ),
            Err(failure) => store::store_failure(target.id, failure, &run, duration()),
        });
        progress.advance();
    }
    store::after_change(&changes);
    outcomes.sort_by_key(|o| o.segment_id);
    Ok(outcomes)
}

/// The entity table a group's scan reads, as `segments.activity` names it.
fn scanned_table(entity: &str) -> String {
    crate::pg::spi::optional_value::<String>(
        "SELECT relation::pg_catalog.text FROM segments.entity WHERE name OPERATOR(pg_catalog.=) $1",
        &[entity.into()],
    )
    .unwrap_or_else(|| entity.to_string())
}

/// Related values kept for live segments are as of their windows: a full
/// evaluation of one starts its entity's anew.
fn forget_live_windows(targets: &[Target]) {
    let ids: Vec<i64> = targets.iter().map(|t| t.id).collect();
    let live_entities: Vec<String> = Spi::connect(|client| {
        spi(client.select(
            "SELECT DISTINCT entity FROM segments.segment \
              WHERE id OPERATOR(pg_catalog.=) ANY ($1) AND schedule OPERATOR(pg_catalog.=) 'live'",
            None,
            &[ids.into()],
        ))
        .filter_map(|row| spi(row.get::<String>(1)))
        .collect()
    });
    if !live_entities.is_empty() {
        store::forget_related_values(&live_entities);
    }
}
