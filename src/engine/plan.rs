//! Turning segments into one plan: the single place a `Planner` is made
//! and segments are compiled into it. Refresh plans a group (one entity,
//! one owner) at a time, a failing group's segments again one by one; live
//! apply plans an owner's live segments three ways (restricted to the
//! changed keys, whole, and at a fixed reference time).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;

use pgrx::pg_sys;
use segments_core::compile::{check_cycles, CompiledSegment, Plan, Planner};
use segments_core::definition::Definition;

use crate::engine::evaluate::{compute_leaves_knowing, LeafValues, RelatedValue};
use crate::engine::run::Target;
use crate::pg::catalog::SpiCatalog;
use crate::pg::error::{Failure, Reported};
use crate::pg::sandbox::as_role;
use crate::pg::subtransaction::in_subtransaction;

/// The alias generated SQL gives the entity table.
const ENTITY_ALIAS: &str = "entity";

/// A planner for segments of `entity`, relative conditions measured from
/// `reference` (SQL of type timestamptz).
pub fn planner<'a>(entity: &str, reference: &str) -> Result<Planner<'a>, Reported> {
    let mut planner = Planner::new(&SpiCatalog, entity, ENTITY_ALIAS, reference)?;
    // With Citus, every query keeps the form Citus pushes down whole to
    // the shards: column groups, window scans and once-computed window
    // edges would be subplans run on the coordinator and shipped to each
    // shard query.
    if crate::pg::citus::citus_installed() {
        planner.edges_per_row();
        return Ok(planner);
    }
    match crate::pg::gucs::COLUMN_GROUP_MIN_TESTS.get() {
        0 => {}
        n => planner.group_columns_from(n as usize),
    }
    match crate::pg::gucs::WINDOW_SCAN_MIN_CONDITIONS.get() {
        0 => {}
        n => planner.scan_windows_from(n as usize),
    }
    Ok(planner)
}

/// One segment's compilation, or why it failed, by segment id.
pub type Compiled = HashMap<i64, Result<CompiledSegment, Failure>>;

/// A plan for some segments of one entity, and each one's compilation.
pub struct Planned {
    pub plan: Plan,
    pub compiled: Compiled,
}

/// Compiles `targets` (all of one entity) into one plan, in the order
/// given, so that two plans of the same targets number their leaves alike.
/// `configure` sets the planner's restrictions before anything is added.
/// A target that fails to compile is left out of the plan, its failure
/// kept; a planner that cannot be made fails them all.
pub fn plan_targets(
    entity: &str,
    targets: &[&Target],
    reference: &str,
    configure: impl FnOnce(&mut Planner),
) -> Result<Planned, Failure> {
    let mut planner = planner(entity, reference).map_err(Failure::from)?;
    configure(&mut planner);
    let mut compiled: Vec<(i64, Result<CompiledSegment, Failure>)> = targets
        .iter()
        .map(|t| (t.id, compile(&mut planner, t).map_err(Failure::from)))
        .collect();
    let mut refs: Vec<&mut CompiledSegment> = compiled
        .iter_mut()
        .filter_map(|(_, c)| c.as_mut().ok())
        .collect();
    let plan = planner.finish(&mut refs);
    Ok(Planned {
        plan,
        compiled: compiled.into_iter().collect(),
    })
}

/// Compiles one target into `planner`, refusing a reference cycle.
fn compile(planner: &mut Planner, target: &Target) -> Result<CompiledSegment, Reported> {
    let definition = Definition::parse(&target.definition)?;
    let compiled = planner.add(&definition, Some(target.id))?;
    check_cycles(&SpiCatalog, Some(target.id), &compiled.references)?;
    Ok(compiled)
}

/// Computes a plan's leaves as `owner`, sandboxed, in a subtransaction, so
/// that a failure rolls back only this plan's work. `known` are related
/// values already at hand (live apply keeps them between runs).
pub fn compute_as(
    owner: pg_sys::Oid,
    plan: &Plan,
    known: &HashMap<usize, RelatedValue>,
) -> Result<LeafValues, Failure> {
    let (plan, known) = (AssertUnwindSafe(plan), AssertUnwindSafe(known));
    in_subtransaction(AssertUnwindSafe(|| {
        as_role(
            owner,
            AssertUnwindSafe(|| compute_leaves_knowing(&plan, &known)),
        )
    }))
}
