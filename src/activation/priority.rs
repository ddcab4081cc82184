//! Priority lists (SPEC 17): segments of one entity, highest priority
//! first; every member of any of them is assigned to the first listed
//! segment it is a member of, so that each record gets one audience.
//!
//! Assignments are computed from the stored memberships as they are read
//! (`segments.priority_assignment`, `_priority_members`): every refresh and
//! live apply of a listed segment stores its membership, and the next read
//! sees it, in the same transaction too. Conditions
//! (`{"priority_list": L, "segment": S}`) compile to S minus the segments
//! listed before it (segments-core `compile/membership.rs`), and an export
//! of a list is rewritten after any of its segments changes.

use std::panic::AssertUnwindSafe;

use pgrx::prelude::*;

use segments_core::bitmap::Members;
use segments_core::catalog::PriorityListSummary;

use crate::engine::evaluate::{keys_at, stored_members};
use crate::pg::authorization::{current_role, may_read_entity, require_editor};
use crate::pg::catalog::{priority_list_by_id, priority_list_named};
use crate::pg::error::{Raise, SegmentsError};
use crate::pg::sandbox::privileged;
use crate::pg::spi::{optional_value, spi};

/// Each listed segment with the members assigned to it: its members that
/// are members of no segment listed before it.
pub fn assignments(list: &PriorityListSummary) -> Vec<(i64, Members)> {
    let mut taken = Members::new();
    list.segments
        .iter()
        .map(|&segment| {
            let members = stored_members(segment);
            let assigned = &members - &taken;
            taken |= &members;
            (segment, assigned)
        })
        .collect()
}

/// Creates a priority list of segments of one entity, highest priority
/// first; returns its id. A listed segment cannot be deleted while the
/// list exists.
#[pg_extern(schema = "segments")]
fn create_priority_list(name: &str, segments: Option<Vec<i64>>) -> i64 {
    require_editor("create priority lists");
    let segments = segments.unwrap_or_default();
    if name.trim().is_empty() {
        SegmentsError::InvalidParameter("a priority list needs a name".into()).raise();
    }
    if segments.is_empty() {
        SegmentsError::InvalidParameter(format!(
            "priority list \"{name}\" needs at least one segment"
        ))
        .raise();
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = segments.iter().find(|s| !seen.insert(**s)) {
        SegmentsError::InvalidParameter(format!(
            "priority list \"{name}\" names segment {twice} twice"
        ))
        .raise();
    }
    let entity = super::entity_of(&format!("priority list \"{name}\""), &segments);
    if priority_list_named(name).is_some() {
        SegmentsError::DuplicateObject(format!("a priority list named \"{name}\" already exists"))
            .raise();
    }
    let owner = current_role();
    privileged(AssertUnwindSafe(|| {
        let id = spi(Spi::get_one_with_args::<i64>(
            "INSERT INTO segments.priority_list (name, entity, segments, owner) \
             VALUES ($1, $2, $3, $4::pg_catalog.oid::pg_catalog.regrole) RETURNING id",
            &[
                name.into(),
                entity.clone().into(),
                segments.clone().into(),
                owner.into(),
            ],
        ))
        .expect("INSERT ... RETURNING returns a row");
        spi(Spi::run_with_args(
            "INSERT INTO segments.usage_registry (segment_id, kind, consumer) \
             SELECT s, 'campaign', $2 FROM pg_catalog.unnest($1::pg_catalog.int8[]) s \
             ON CONFLICT DO NOTHING",
            &[segments.clone().into(), usage_consumer(name).into()],
        ));
        id
    }))
}

/// The consumer a priority list's usages are recorded under (kind
/// `campaign`).
fn usage_consumer(name: &str) -> String {
    format!("priority list {name}")
}

/// Drops a priority list (its owner, or an admin). Refused (2BP01) while a
/// segment's definition or an export uses it.
#[pg_extern(schema = "segments")]
fn drop_priority_list(name: &str) {
    require_editor("drop priority lists");
    let allowed = optional_value::<bool>(
        "SELECT segments._may_change(owner) FROM segments.priority_list WHERE name OPERATOR(pg_catalog.=) $1",
        &[name.into()],
    )
    .unwrap_or_else(|| {
        SegmentsError::UndefinedObject(format!("priority list \"{name}\" does not exist")).raise()
    });
    if !allowed {
        SegmentsError::InsufficientPrivilege(format!(
            "permission denied for priority list \"{name}\": only its owner, a member of that role, segments_admin or a superuser may drop it"
        ))
        .raise();
    }
    let users = optional_value::<String>(
        "SELECT pg_catalog.string_agg(u, ', ' ORDER BY u) FROM ( \
           SELECT pg_catalog.format('segment \"%s\"', s.name) AS u FROM segments.segment s \
            WHERE pg_catalog.jsonb_path_exists(s.definition, '$.** ? (@.priority_list == $l)', \
                                               pg_catalog.jsonb_build_object('l', $1)) \
           UNION ALL \
           SELECT pg_catalog.format('export \"%s\"', x.name) FROM segments.export x \
            WHERE pg_catalog.to_jsonb(x) OPERATOR(pg_catalog.->>) 'priority_list' OPERATOR(pg_catalog.=) $1) d",
        &[name.into()],
    );
    if let Some(users) = users {
        SegmentsError::DependentObjects(format!(
            "priority list \"{name}\" cannot be dropped: {users} uses it"
        ))
        .raise();
    }
    privileged(AssertUnwindSafe(|| {
        spi(Spi::run_with_args(
            "DELETE FROM segments.usage_registry WHERE kind OPERATOR(pg_catalog.=) 'campaign' \
               AND consumer OPERATOR(pg_catalog.=) $2 \
               AND segment_id OPERATOR(pg_catalog.=) ANY (SELECT pg_catalog.unnest(segments) FROM segments.priority_list \
                                                          WHERE name OPERATOR(pg_catalog.=) $1)",
            &[name.into(), usage_consumer(name).into()],
        ));
        spi(Spi::run_with_args(
            "DELETE FROM segments.priority_list WHERE name OPERATOR(pg_catalog.=) $1",
            &[name.into()],
        ));
    }));
}

/// The records a priority list assigns, with the segment each goes to
/// (`segments.priority_assignment` reads it), as the caller: nothing for
/// a caller who may not read the entity's table.
#[pg_extern(schema = "segments", stable)]
fn _priority_members(
    list: i64,
) -> TableIterator<'static, (name!(segment_id, i64), name!(key, String))> {
    let Some(found) = priority_list_by_id(list) else {
        return TableIterator::new(Vec::new());
    };
    if !may_read_entity(&found.entity) {
        return TableIterator::new(Vec::new());
    }
    let mut rows = Vec::new();
    for (segment, assigned) in assignments(&found) {
        rows.extend(
            keys_at(&found.entity, &assigned)
                .into_iter()
                .map(|(_, key)| (segment, key)),
        );
    }
    TableIterator::new(rows)
}
