//! Related values across live applications. A live segment's related
//! conditions ("bought in the last 30 days") are computed once for every
//! key and kept (`segments.related_state`, written by `store`); each
//! application patches them with the keys whose related rows changed, so
//! a change of a customer's own row reads no related table at all.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;

use pgrx::pg_sys;
use segments_core::bitmap::Members;
use segments_core::compile::{Leaf, Plan, Planner};

use crate::engine::evaluate::{sorts_groups, RelatedQueries, RelatedValue};
use crate::engine::plan::{plan_targets, Compiled, Planned};
use crate::engine::run::Target;
use crate::engine::store::{forget_related_values_except, keep_related_value, kept_related_value};
use crate::pg::error::Failure;
use crate::pg::sandbox::as_role;
use crate::pg::subtransaction::in_subtransaction;

/// A plan compiled three ways for one owner's live segments of an entity:
/// restricted to the changed keys (what apply evaluates), unrestricted
/// (to compute a related value from scratch), and unrestricted at a fixed
/// reference time (whose leaf SQL names a related value independently of
/// when it is computed). The three are compiled from the same definitions
/// in the same order, so their leaves line up.
pub struct OwnerPlan {
    pub restricted: Plan,
    pub compiled: Compiled,
    full: Plan,
    identity: Plan,
}

/// The reference time of identity plans: any fixed instant.
const IDENTITY_REFERENCE: &str = "'2000-01-01 00:00:00+00'::pg_catalog.timestamptz";

/// Plans an owner's live segments of `entity` (`targets`, sorted by id)
/// three ways; `restrict` sets the restricted plan's restrictions. None
/// when the entity cannot be planned (it is no longer registered as read).
pub fn plan_owner(
    entity: &str,
    targets: &[&Target],
    reference: &str,
    restrict: impl FnOnce(&mut Planner),
) -> Option<OwnerPlan> {
    let Planned {
        plan: restricted,
        compiled,
    } = plan_targets(entity, targets, reference, restrict).ok()?;
    let full = plan_targets(entity, targets, reference, |_| {}).ok()?.plan;
    let identity = plan_targets(entity, targets, IDENTITY_REFERENCE, |_| {})
        .ok()?
        .plan;
    Some(OwnerPlan {
        restricted,
        compiled,
        full,
        identity,
    })
}

/// The related values of an owner's restricted plan, limited to the
/// changed keys: kept ones patched with the keys whose related rows
/// changed. Runs the queries as the owner.
pub fn related_values(
    owner: pg_sys::Oid,
    entity: &str,
    plans: &OwnerPlan,
    changed: &Members,
    changed_related: &HashMap<String, Members>,
) -> Result<HashMap<usize, RelatedValue>, Failure> {
    let mut known = HashMap::new();
    let mut identities = Vec::new();
    // Each distinct query run once (shared by the leaves of one grouped
    // scan), restricted and unrestricted alike.
    let mut queries = RelatedQueries::default();
    // Computed from scratch over an entity with many records, aggregates
    // group by sorting, as a whole refresh's do.
    let sorted = sorts_groups(&plans.full);
    let leaves = plans.restricted.leaves.len();
    if plans.full.leaves.len() != leaves || plans.identity.leaves.len() != leaves {
        return Err(Failure::internal("the plans of a live application differ"));
    }
    for i in 0..leaves {
        let Some(related) = &plans.restricted.related_of[i] else {
            continue;
        };
        let identity = plans.identity.leaves[i].identity();
        identities.push(identity.clone());
        let kept = kept_related_value(owner, entity, &identity);
        let value = match (kept, changed_related.get(related)) {
            (Some(kept), None) => kept,
            (Some(kept), Some(keys)) => {
                let fresh = related_as(owner, &plans.restricted.leaves[i], false, &mut queries)?;
                let value = kept.patched(keys, &fresh);
                keep_related_value(owner, entity, &identity, &value);
                value
            }
            (None, _) => {
                let value = related_as(owner, &plans.full.leaves[i], sorted, &mut queries)?;
                keep_related_value(owner, entity, &identity, &value);
                value
            }
        };
        known.insert(i, value.within(changed));
    }
    // Values no live segment of this owner uses any more.
    forget_related_values_except(owner, entity, identities);
    Ok(known)
}

/// One related leaf's query, run as `owner` in the sandbox (once per
/// distinct query: `queries`); an aggregate grouped by sorting when
/// `sorted`.
fn related_as(
    owner: pg_sys::Oid,
    leaf: &Leaf,
    sorted: bool,
    queries: &mut RelatedQueries,
) -> Result<RelatedValue, Failure> {
    let leaf = AssertUnwindSafe(leaf);
    let mut queries = AssertUnwindSafe(queries);
    in_subtransaction(AssertUnwindSafe(|| {
        as_role(
            owner,
            AssertUnwindSafe(|| queries.value(&leaf, sorted).unwrap_or_default()),
        )
    }))
}
