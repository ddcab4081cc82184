//! Refresh: evaluating segments over every row. Segments of one entity
//! and one owner share a plan, so one scan of the entity table decides all
//! their attribute conditions. Segments that read other segments run after
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

use crate::engine::evaluate::LeafValues;
use crate::engine::evaluate::{evaluate_segment, fill_segment_leaves, reference_time_sql};
use crate::engine::plan::{compute_as, plan_targets, Planned};
use crate::engine::progress::{self, Kind, Progress};
use crate::engine::run::{Outcome, RunCause, Target};
use crate::engine::store::{self, Changes, Evaluated, Run};
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

/// Segments sharing one plan (same entity, same owner), and the plan's
/// leaf values once computed.
struct Group {
    owner: pg_sys::Oid,
    planned: Result<Planned, Failure>,
    size: usize,
    values: Option<Result<LeafValues, Failure>>,
    compute_time: Duration,
}

/// The active targets grouped by (entity, owner), each group planned.
fn plan_groups(targets: &[Target], reference: &str) -> HashMap<(String, pg_sys::Oid), Group> {
    let mut members: HashMap<(String, pg_sys::Oid), Vec<&Target>> = HashMap::new();
    for target in targets.iter().filter(|t| t.active) {
        members
            .entry((target.entity.clone(), target.owner))
            .or_default()
            .push(target);
    }
    members
        .into_iter()
        .map(|((entity, owner), group)| {
            let planned = plan_targets(&entity, &group, reference, |_| {});
            let group = Group {
                owner,
                planned,
                size: group.len(),
                values: None,
                compute_time: Duration::ZERO,
            };
            ((entity, owner), group)
        })
        .collect()
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
    fill_segment_leaves(&plan, &mut values, fresh);
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
    crate::engine::memory::start_peak();
    let progress = Progress::start(Kind::Refresh, ids.unwrap_or(&[]));
    let targets = load_targets(ids, skip_locked)?;
    progress.segments(&targets.iter().map(|t| t.id).collect::<Vec<_>>());
    forget_live_windows(&targets);
    let reference = reference_time_sql();
    progress::phase("planning");
    let mut groups = plan_groups(&targets, &reference);
    let mut changes = Changes::default();
    let mut outcomes = Vec::with_capacity(targets.len());

    for i in dependency_order(&targets) {
        let target = &targets[i];
        let started = Instant::now();
        let run = Run::starting(cause, None);
        if !target.active {
            outcomes.push(store::store_skipped(target.id, &run, started.elapsed()));
            progress.advance();
            continue;
        }
        let group = groups
            .get_mut(&(target.entity.clone(), target.owner))
            .expect("every active target has a group");
        // Work shared by a group is divided among its segments.
        let mut computed_here = Duration::ZERO;
        if group.values.is_none() {
            progress::phase(&format!("scanning {}", scanned_table(&target.entity)));
            let compute_started = Instant::now();
            group.values = Some(match &group.planned {
                Ok(planned) => compute_as(group.owner, &planned.plan, &HashMap::new()),
                Err(e) => Err(e.clone()),
            });
            group.compute_time = compute_started.elapsed();
            computed_here = group.compute_time;
        }
        progress::phase("storing");
        let shared_time = group.compute_time / group.size.max(1) as u32;
        let duration = || started.elapsed().saturating_sub(computed_here) + shared_time;
        let result = match (&group.planned, group.values.as_mut()) {
            (Err(e), _) => Err(e.clone()),
            (Ok(planned), Some(Ok(values))) => match planned.compiled.get(&target.id) {
                Some(Ok(compiled)) => {
                    fill_segment_leaves(&planned.plan, values, &changes.members);
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
