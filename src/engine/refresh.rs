//! The refresh engine. Segments of one entity and one owner share a plan,
//! so one scan of the entity table decides all their attribute conditions.
//! Segments that read other segments run after them. Each segment's
//! outcome is its own: a failing one keeps its old membership and is
//! marked failed, the others go on.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use pgrx::prelude::*;
use pgrx::spi::Spi;
use pgrx::JsonB;
use serde_json::Value;

use segments_core::bitmap::{serialize, Members, RuleCount};
use segments_core::compile::{check_cycles, CompiledSegment, Planner};
use segments_core::definition::Definition;

use crate::engine::evaluate::{
    compute_leaves, evaluate_segment, fill_segment_leaves, reference_time_sql, LeafValues,
};
use crate::pg::catalog::SpiCatalog;
use crate::pg::error::{Failure, OrRaise, Reported, SegmentsError};
use crate::pg::spi::{required, spi};
use crate::pg::txn::{as_role, in_subtransaction, writing_transaction};

#[derive(Debug, Clone)]
pub struct Target {
    pub id: i64,
    pub entity: String,
    pub owner: pg_sys::Oid,
    pub active: bool,
    pub definition: Value,
}

/// How a refresh of one segment ended; `as_str` is its spelling in
/// `segments.segment.status`, `segments.refresh_run.status` and refresh()'s
/// result (`sql/schema.sql` checks the same words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Succeeded,
    Failed,
    /// An inactive segment: nothing was evaluated.
    Skipped,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub segment_id: i64,
    /// The `segments.refresh_run` row of this refresh.
    pub run_id: i64,
    pub status: RunStatus,
    pub member_count: Option<i64>,
    pub entered: Option<i64>,
    pub exited: Option<i64>,
    pub duration: Duration,
    pub error: Option<Failure>,
}

impl Outcome {
    /// A segment that was not evaluated (inactive).
    pub fn skipped(segment_id: i64, duration: Duration) -> Outcome {
        Outcome {
            segment_id,
            run_id: 0,
            status: RunStatus::Skipped,
            member_count: None,
            entered: None,
            exited: None,
            duration,
            error: None,
        }
    }

    /// A segment whose members are now `member_count`, of which `entered`
    /// are new and `exited` left.
    pub fn succeeded(
        segment_id: i64,
        member_count: i64,
        entered: u64,
        exited: u64,
        duration: Duration,
    ) -> Outcome {
        Outcome {
            status: RunStatus::Succeeded,
            member_count: Some(member_count),
            entered: Some(entered as i64),
            exited: Some(exited as i64),
            ..Outcome::skipped(segment_id, duration)
        }
    }

    /// A segment whose evaluation failed.
    pub fn failed(segment_id: i64, failure: Failure, duration: Duration) -> Outcome {
        Outcome {
            status: RunStatus::Failed,
            error: Some(failure),
            ..Outcome::skipped(segment_id, duration)
        }
    }
}

/// Loads and locks the segments to refresh: the given ids, or every active
/// segment. Row locks make a second refresh of the same segment wait for
/// the first, and an edit wait for a running refresh.
fn load_targets(ids: Option<&[i64]>, skip_locked: bool) -> Result<Vec<Target>, Reported> {
    if let Some(ids) = ids {
        let missing = spi(Spi::get_one_with_args::<String>(
            "SELECT string_agg(i::text, ', ') FROM unnest($1::bigint[]) AS i \
             WHERE NOT EXISTS (SELECT FROM segments.segment s WHERE s.id = i)",
            &[ids.to_vec().into()],
        ));
        if let Some(missing) = missing {
            return Err(SegmentsError::no_such_segment(missing).into());
        }
    }
    let sql = format!(
        "SELECT id, entity, owner::oid, state = 'active', definition FROM segments.segment \
         WHERE CASE WHEN $1::bigint[] IS NULL THEN state = 'active' ELSE id = ANY ($1) END \
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
    let names = spi_names(targets);
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
fn spi_names(targets: &[Target]) -> HashMap<i64, String> {
    if targets.is_empty() {
        return HashMap::new();
    }
    let ids: Vec<i64> = targets.iter().map(|t| t.id).collect();
    Spi::connect(|client| {
        spi(client.select(
            "SELECT name, id FROM segments.segment WHERE id = ANY ($1)",
            None,
            &[ids.into()],
        ))
        .filter_map(|row| Some((spi(row.get::<i64>(2))?, spi(row.get::<String>(1))?)))
        .collect()
    })
}

/// A set of segments sharing one plan (same entity, same owner).
struct Group {
    owner: pg_sys::Oid,
    plan: Option<segments_core::compile::Plan>,
    compiled: HashMap<i64, Result<CompiledSegment, Failure>>,
    values: Option<Result<LeafValues, Failure>>,
    compute_time: Duration,
}

pub fn compile_one(planner: &mut Planner, target: &Target) -> Result<CompiledSegment, Reported> {
    let definition = Definition::parse(&target.definition)?;
    let compiled = planner.add(&definition, Some(target.id))?;
    check_cycles(&SpiCatalog, Some(target.id), &compiled.references)?;
    Ok(compiled)
}

fn build_groups(targets: &[Target], reference: &str) -> HashMap<(String, pg_sys::Oid), Group> {
    let mut groups: HashMap<(String, pg_sys::Oid), Group> = HashMap::new();
    let mut planners: HashMap<(String, pg_sys::Oid), Result<Planner, Failure>> = HashMap::new();
    for target in targets.iter().filter(|t| t.active) {
        let key = (target.entity.clone(), target.owner);
        let planner = planners.entry(key.clone()).or_insert_with(|| {
            Planner::new(&SpiCatalog, &target.entity, "entity", reference).map_err(Failure::from)
        });
        let group = groups.entry(key).or_insert_with(|| Group {
            owner: target.owner,
            plan: None,
            compiled: HashMap::new(),
            values: None,
            compute_time: Duration::ZERO,
        });
        let compiled = match planner {
            Ok(planner) => compile_one(planner, target).map_err(Failure::from),
            Err(e) => Err(e.clone()),
        };
        group.compiled.insert(target.id, compiled);
    }
    for (key, planner) in planners {
        if let (Ok(planner), Some(group)) = (planner, groups.get_mut(&key)) {
            let mut compiled: Vec<&mut CompiledSegment> = group
                .compiled
                .values_mut()
                .filter_map(|c| c.as_mut().ok())
                .collect();
            group.plan = Some(planner.finish(&mut compiled));
        }
    }
    groups
}

/// Computes a plan's leaves as `owner`, in a subtransaction.
pub fn compute_as(
    owner: pg_sys::Oid,
    plan: &segments_core::compile::Plan,
) -> Result<LeafValues, Failure> {
    let plan = AssertUnwindSafe(plan);
    in_subtransaction(AssertUnwindSafe(|| {
        as_role(owner, AssertUnwindSafe(|| compute_leaves(&plan)))
    }))
}

/// `compute_as`, with some related values known (live apply).
pub fn compute_as_knowing(
    owner: pg_sys::Oid,
    plan: &segments_core::compile::Plan,
    known: &HashMap<usize, crate::engine::evaluate::RelatedValue>,
) -> Result<LeafValues, Failure> {
    let (plan, known) = (AssertUnwindSafe(plan), AssertUnwindSafe(known));
    in_subtransaction(AssertUnwindSafe(|| {
        as_role(
            owner,
            AssertUnwindSafe(|| crate::engine::evaluate::compute_leaves_knowing(&plan, &known)),
        )
    }))
}

/// Evaluates one target on its own plan: used when the shared plan of its
/// group failed, to find out which segment is at fault.
fn evaluate_alone(
    target: &Target,
    reference: &str,
    fresh: &HashMap<i64, Members>,
) -> Result<(Members, Vec<RuleCount>), Failure> {
    let mut planner =
        Planner::new(&SpiCatalog, &target.entity, "entity", reference).map_err(Failure::from)?;
    let mut compiled = compile_one(&mut planner, target).map_err(Failure::from)?;
    let plan = planner.finish(&mut [&mut compiled]);
    let mut values = compute_as(target.owner, &plan)?;
    fill_segment_leaves(&plan, &mut values, fresh);
    Ok(evaluate_segment(&compiled, &values))
}

/// What started a refresh, as `segments.refresh_run.trigger` records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Manual,
    Schedule,
    System,
    /// Changes applied to a live segment.
    Live,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Schedule => "schedule",
            Trigger::System => "system",
            Trigger::Live => "live",
        }
    }
}

fn record_run(
    target: &Target,
    trigger: Trigger,
    started: pgrx::datum::TimestampWithTimeZone,
    outcome: &Outcome,
) -> i64 {
    record_run_of(target.id, trigger, started, outcome, None)
}

/// Records one refresh (or live application) of a segment in the history.
pub fn record_run_of(
    segment: i64,
    trigger: Trigger,
    started: pgrx::datum::TimestampWithTimeZone,
    outcome: &Outcome,
    keys_examined: Option<i64>,
) -> i64 {
    // A 0.1.0 schema (before ALTER EXTENSION UPDATE) has neither column.
    let added_columns = if crate::pg::txn::legacy_schema() {
        ""
    } else {
        ", keys_examined, error_code"
    };
    let added_values = if crate::pg::txn::legacy_schema() {
        ""
    } else {
        ", $9, $10"
    };
    let mut args: Vec<pgrx::datum::DatumWithOid> = vec![
        segment.into(),
        trigger.as_str().into(),
        started.into(),
        outcome.status.as_str().into(),
        outcome.member_count.into(),
        outcome.entered.into(),
        outcome.exited.into(),
        outcome.error.as_ref().map(|f| f.message.clone()).into(),
    ];
    if !crate::pg::txn::legacy_schema() {
        args.push(keys_examined.into());
        args.push(outcome.error.as_ref().map(|f| f.sqlstate.clone()).into());
    }
    let run = Spi::get_one_with_args::<i64>(
        &format!("INSERT INTO segments.refresh_run (segment_id, trigger, started_at, finished_at, status, member_count, entered, exited, error{added_columns}) \
         VALUES ($1, $2, $3, clock_timestamp(), $4, $5, $6, $7, $8{added_values}) RETURNING id"),
        &args,
    );
    spi(run).expect("INSERT ... RETURNING returns a row")
}

/// Stores a new membership and returns (entered, exited) positions.
fn store_success(id: i64, members: &Members, counts: &[RuleCount]) -> (Members, Members, bool) {
    let previous = crate::pg::spi::optional_value::<Vec<u8>>(
        "SELECT members FROM segments.membership WHERE segment_id = $1",
        &[id.into()],
    );
    let first = previous.is_none();
    let old = previous
        .map(|b| segments_core::bitmap::deserialize(&b).unwrap_or_default())
        .unwrap_or_default();
    let entered = members - &old;
    let exited = &old - members;
    let count = members.len() as i64;
    spi(Spi::run_with_args(
        "INSERT INTO segments.membership (segment_id, members, member_count, refreshed_at) VALUES ($1, $2, $3, now()) \
         ON CONFLICT (segment_id) DO UPDATE SET members = EXCLUDED.members, member_count = EXCLUDED.member_count, \
         refreshed_at = EXCLUDED.refreshed_at",
        &[id.into(), serialize(members).into(), count.into()],
    ));
    let counts = serde_json::to_value(counts).expect("rule counts serialize");
    let failures = if crate::pg::txn::legacy_schema() {
        ""
    } else {
        ", consecutive_failures = 0"
    };
    spi(Spi::run_with_args(
        &format!("UPDATE segments.segment SET status = 'succeeded', member_count = $2, last_refreshed_at = now(), \
         last_error = NULL, rule_counts = $3, needs_refresh = false{failures} WHERE id = $1"),
        &[id.into(), count.into(), JsonB(counts).into()],
    ));
    (entered, exited, first)
}

/// Records who entered and who exited, and tells listeners. The first
/// refresh of a segment records its count only: everyone entered.
pub fn record_changes(target: &Target, run: i64, entered: &Members, exited: &Members, first: bool) {
    if entered.is_empty() && exited.is_empty() {
        return;
    }
    if !first {
        for (change, positions) in [("entered", entered), ("exited", exited)] {
            if positions.is_empty() {
                continue;
            }
            let keys: Vec<String> = crate::engine::evaluate::keys_at(&target.entity, positions)
                .into_iter()
                .map(|(_, k)| k)
                .collect();
            spi(Spi::run_with_args(
                "INSERT INTO segments.membership_change (segment_id, run_id, key, change, at) \
                 SELECT $1, $2, k, $3, now() FROM unnest($4::text[]) AS k",
                &[target.id.into(), run.into(), change.into(), keys.into()],
            ));
        }
    }
    let payload = serde_json::json!({
        "segment": target.id, "run": run, "entered": entered.len(), "exited": exited.len()
    });
    spi(Spi::run_with_args(
        "SELECT pg_notify('segments', $1)",
        &[payload.to_string().into()],
    ));
}

/// Stores a segment's status after a refresh (or live application), and
/// the error of a failed one.
pub fn store_status(id: i64, status: RunStatus, error: Option<&str>) {
    let failures = if crate::pg::txn::legacy_schema() {
        ""
    } else {
        ", consecutive_failures = consecutive_failures + CASE WHEN $2 = 'failed' THEN 1 ELSE 0 END"
    };
    spi(Spi::run_with_args(
        &format!(
            "UPDATE segments.segment SET status = $2, last_error = coalesce($3, last_error), \
         needs_refresh = needs_refresh AND $2 <> 'failed'{failures} WHERE id = $1"
        ),
        &[id.into(), status.as_str().into(), error.into()],
    ));
}

/// Refreshes the given segments (or every active one) and reports each.
/// `skip_locked` leaves out segments another session is refreshing or
/// editing right now (the scheduler does, and gets them on a later pass);
/// otherwise a refresh waits for them.
pub fn refresh_segments(
    ids: Option<&[i64]>,
    trigger: Trigger,
    skip_locked: bool,
) -> Result<Vec<Outcome>, Reported> {
    writing_transaction();
    let targets = load_targets(ids, skip_locked)?;
    // Related values kept for live segments are as of their windows: a
    // full evaluation of one starts its entity's anew.
    let ids: Vec<i64> = targets.iter().map(|t| t.id).collect();
    let live_entities: Vec<String> = Spi::connect(|client| {
        spi(client.select(
            "SELECT DISTINCT entity FROM segments.segment WHERE id = ANY ($1) AND schedule = 'live'",
            None,
            &[ids.into()],
        ))
        .filter_map(|row| spi(row.get::<String>(1)))
        .collect()
    });
    if !live_entities.is_empty() {
        crate::engine::live::forget_related_values(&live_entities);
    }
    let reference = reference_time_sql();
    let mut groups = build_groups(&targets, &reference);
    let mut fresh: HashMap<i64, Members> = HashMap::new();
    let mut entered_by_segment: HashMap<i64, Members> = HashMap::new();
    let mut outcomes = Vec::with_capacity(targets.len());

    for i in dependency_order(&targets) {
        let target = &targets[i];
        let started = Instant::now();
        let started_at = spi(Spi::get_one::<pgrx::datum::TimestampWithTimeZone>(
            "SELECT clock_timestamp()",
        ))
        .expect("clock_timestamp() is never NULL");
        if !target.active {
            store_status(target.id, RunStatus::Skipped, None);
            let mut outcome = Outcome::skipped(target.id, started.elapsed());
            outcome.run_id = record_run(target, trigger, started_at, &outcome);
            outcomes.push(outcome);
            continue;
        }
        let group = groups
            .get_mut(&(target.entity.clone(), target.owner))
            .expect("every active target has a group");
        // Work shared by a group is divided among its segments.
        let mut computed_here = Duration::ZERO;
        if group.values.is_none() {
            let compute_started = Instant::now();
            group.values = Some(match &group.plan {
                Some(plan) => compute_as(group.owner, plan),
                None => Err(Failure::internal("no plan")),
            });
            group.compute_time = compute_started.elapsed();
            computed_here = group.compute_time;
        }
        let shared_time = group.compute_time / group.compiled.len().max(1) as u32;
        let result = match (
            group.compiled.get(&target.id),
            group.values.as_mut(),
            group.plan.as_ref(),
        ) {
            (Some(Err(e)), _, _) => Err(e.clone()),
            (Some(Ok(compiled)), Some(Ok(values)), Some(plan)) => {
                fill_segment_leaves(plan, values, &fresh);
                Ok(evaluate_segment(compiled, values))
            }
            _ => evaluate_alone(target, &reference, &fresh),
        };
        let outcome = match result {
            Ok((members, counts)) => {
                let (entered, exited, first) = store_success(target.id, &members, &counts);
                let count = members.len() as i64;
                fresh.insert(target.id, members);
                let duration = started.elapsed().saturating_sub(computed_here) + shared_time;
                let mut outcome =
                    Outcome::succeeded(target.id, count, entered.len(), exited.len(), duration);
                outcome.run_id = record_run(target, trigger, started_at, &outcome);
                record_changes(target, outcome.run_id, &entered, &exited, first);
                entered_by_segment.insert(target.id, entered);
                outcome
            }
            Err(failure) => {
                store_status(target.id, RunStatus::Failed, Some(&failure.message));
                let duration = started.elapsed().saturating_sub(computed_here) + shared_time;
                let mut outcome = Outcome::failed(target.id, failure, duration);
                outcome.run_id = record_run(target, trigger, started_at, &outcome);
                outcome
            }
        };
        outcomes.push(outcome);
    }
    // Sequences and exports come after the memberships and fail alone:
    // their failure never undoes a refresh.
    if let Err(message) = in_subtransaction(AssertUnwindSafe(|| {
        crate::sequence::assign(&entered_by_segment, &fresh)
    })) {
        warning!("segments: connecting entered records to sequences failed: {message}");
    }
    let changed: Vec<i64> = outcomes
        .iter()
        .filter(|o| o.status == RunStatus::Succeeded)
        .map(|o| o.segment_id)
        .collect();
    for export in crate::export::exports_of(&changed) {
        crate::export::rewrite_recorded(export);
    }
    outcomes.sort_by_key(|o| o.segment_id);
    Ok(outcomes)
}

fn interval_of(duration: Duration) -> pgrx::datum::Interval {
    pgrx::datum::Interval::new(0, 0, duration.as_micros() as i64)
        .unwrap_or_else(|_| error!("duration out of range"))
}

/// Refreshes segments now: the given ids, or every active segment (NULL).
#[pg_extern(schema = "segments")]
fn refresh(
    segments: default!(Option<Vec<i64>>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(segment_id, i64),
        name!(status, String),
        name!(member_count, Option<i64>),
        name!(entered, Option<i64>),
        name!(exited, Option<i64>),
        name!(duration, pgrx::datum::Interval),
        name!(error, Option<String>),
    ),
> {
    // Editors may refresh any segment: a refresh computes as the segment's
    // owner and changes no definition.
    crate::pg::txn::require_editor("refresh segments");
    let outcomes = crate::pg::txn::privileged(AssertUnwindSafe(|| {
        refresh_segments(segments.as_deref(), Trigger::Manual, false)
    }))
    .or_raise();
    TableIterator::new(outcomes.into_iter().map(|o| {
        (
            o.segment_id,
            o.status.as_str().to_string(),
            o.member_count,
            o.entered,
            o.exited,
            interval_of(o.duration),
            o.error.map(|f| f.message),
        )
    }))
}
