//! Traits (SPEC 16; the seeds' "measures"): named values computed per
//! record (lifetime value, last channel bought from, orders in 90 days),
//! defined once and used by many segments, BI and exports.
//!
//! - this file: `create_trait`, `drop_trait` and `refresh_traits`;
//! - `store`: computing every trait of a related table in one scan, as the
//!   trait's owner, and storing the values (`segments.trait_value`);
//! - `difference`: a full computation written as its difference from the
//!   stored values (only what changed is written);
//! - conditions and ranks on traits are compiled in segments-core
//!   (`compile/traits.rs`), in the plan of the segments that use them;
//! - the typed view `segments.<entity>_traits` is `tables::traits_view`.

pub mod difference;
pub mod store;

use std::panic::AssertUnwindSafe;

use pgrx::prelude::*;
use pgrx::JsonB;

use segments_core::catalog::Catalog;
use segments_core::definition::{
    Condition, ConditionKind, Definition, Rule, RuleBody, TraitDefinition,
};

use crate::engine::evaluate::reference_time_sql;
use crate::pg::authorization::{current_role, has_role, require_editor};
use crate::pg::catalog::SpiCatalog;
use crate::pg::error::{OrRaise, Raise, Reported, SegmentsError};
use crate::pg::spi::{optional_value, spi};

/// Checks a trait's definition against the catalog as `create_trait` does:
/// parses, compiles its measure, and refuses a column the caller may not
/// SELECT.
fn check_trait(name: &str, entity: &str, definition: &serde_json::Value) -> Result<(), Reported> {
    segments_core::names::RELATED
        .check(name)
        .map_err(|e| e.at("name"))?;
    let found = crate::pg::catalog::registered_entity(entity)?;
    if found.key_column == name {
        return Err(SegmentsError::DuplicateObject(format!(
            "name: trait \"{name}\" would be named as the key column of entity \"{entity}\" in its traits view"
        ))
        .into());
    }
    let exists = optional_value::<String>(
        "SELECT entity FROM segments.trait WHERE name OPERATOR(pg_catalog.=) $1",
        &[name.into()],
    );
    if let Some(owner_entity) = exists {
        return Err(SegmentsError::DuplicateObject(format!(
            "trait \"{name}\" already exists (of entity \"{owner_entity}\")"
        ))
        .into());
    }
    let parsed = TraitDefinition::parse(definition)?;
    let planner = crate::engine::plan::planner(entity, &reference_time_sql())?;
    planner.measure_of("definition", 0, name, &parsed)?;
    // What it reads: the rows of a related condition, and its attribute.
    let scope = Definition {
        entity: entity.to_string(),
        rules: vec![Rule {
            path: "definition".into(),
            label: "1".into(),
            name: None,
            combine: None,
            body: RuleBody::Where(Condition {
                path: "definition".into(),
                kind: ConditionKind::Related(parsed.scope()),
            }),
        }],
    };
    let mut columns = segments_core::compile::columns_read(&scope, &found);
    if let (Some(attribute), Some(related)) = (&parsed.attribute, found.related(&parsed.related)) {
        columns.push((related.table.relation_sql.clone(), attribute.clone()));
        if let Some(time) = &related.time_column {
            columns.push((related.table.relation_sql.clone(), time.clone()));
        }
    }
    crate::pg::authorization::check_can_read(&columns)
}

/// Creates a trait of `entity`, computed as its creator; stores its values
/// and adds its column to `segments.<entity>_traits`. Editors only.
#[pg_extern(schema = "segments")]
fn create_trait(
    name: &str,
    entity: &str,
    definition: JsonB,
    description: default!(Option<&str>, "NULL"),
) -> i64 {
    require_editor("create traits");
    crate::engine::citus::sequential_transaction();
    let caller = current_role();
    let definition = definition.0;
    crate::pg::sandbox::as_role(
        caller,
        AssertUnwindSafe(|| check_trait(name, entity, &definition)),
    )
    .or_raise();
    let id = crate::pg::sandbox::privileged(AssertUnwindSafe(|| {
        let id = spi(pgrx::spi::Spi::get_one_with_args::<i64>(
            "INSERT INTO segments.trait (name, entity, definition, description, owner) \
             VALUES ($1, $2, $3, $4, $5::pg_catalog.oid::pg_catalog.regrole) RETURNING id",
            &[
                name.into(),
                entity.into(),
                JsonB(definition.clone()).into(),
                description.into(),
                caller.into(),
            ],
        ))
        .unwrap_or_default();
        crate::tables::traits_view::sync_traits_view(entity).map(|_| id)
    }))
    .or_raise();
    store::refresh(entity, Some(&[id])).or_raise();
    id
}

/// Drops a trait and its column of the traits view; refused (2BP01) while
/// a segment or an export uses it. Its owner or an admin only.
#[pg_extern(schema = "segments")]
fn drop_trait(name: &str) {
    let found = optional_value::<String>(
        "SELECT entity || ',' || owner::pg_catalog.oid::pg_catalog.text FROM segments.trait WHERE name OPERATOR(pg_catalog.=) $1",
        &[name.into()],
    );
    let Some(found) = found else {
        SegmentsError::UndefinedObject(format!("trait \"{name}\" does not exist")).raise();
    };
    let (entity, owner) = found.rsplit_once(',').unwrap_or_default();
    let owner = pg_sys::Oid::from(owner.parse::<u32>().unwrap_or_default());
    let caller = current_role();
    // SAFETY: has_privs_of_role is a plain catalog lookup.
    let owns = unsafe { pg_sys::has_privs_of_role(caller, owner) };
    if !owns && !has_role(caller, c"segments_admin") {
        SegmentsError::InsufficientPrivilege(format!(
            "permission denied to drop trait \"{name}\": only its owner or a segments_admin may"
        ))
        .raise();
    }
    let entity = entity.to_string();
    crate::engine::citus::sequential_transaction();
    crate::pg::sandbox::privileged(AssertUnwindSafe(|| {
        let users = optional_value::<String>(
            "SELECT pg_catalog.string_agg(pg_catalog.format('%s (%s)', name, id), ', ' ORDER BY name) FROM segments.segment \
              WHERE pg_catalog.jsonb_path_exists(definition, '$.** ? (@.trait == $n)', pg_catalog.jsonb_build_object('n', $1::text))",
            &[name.into()],
        );
        if let Some(users) = users {
            return Err(SegmentsError::DependentObjects(format!(
                "trait \"{name}\" is used by segments: {users}"
            ))
            .with_hint(Some("Change or delete those segments first.".into())));
        }
        let exports = crate::export::exports_carrying_trait(name);
        if let Some(exports) = exports {
            return Err(SegmentsError::DependentObjects(format!(
                "trait \"{name}\" is carried by exports: {exports}"
            ))
            .with_hint(Some("Drop those exports first.".into())));
        }
        spi(pgrx::spi::Spi::run_with_args(
            "DELETE FROM segments.trait WHERE name OPERATOR(pg_catalog.=) $1",
            &[name.into()],
        ));
        crate::tables::traits_view::sync_traits_view(&entity)
    }))
    .or_raise()
}

/// Computes and stores the values of every trait of `entity` (of every
/// entity when NULL), each as its owner; returns how many values it
/// stored. Editors only.
#[pg_extern(schema = "segments")]
fn refresh_traits(entity: default!(Option<&str>, "NULL")) -> i64 {
    require_editor("refresh traits");
    let entities: Vec<String> = match entity {
        Some(entity) => {
            crate::pg::catalog::registered_entity(entity).or_raise();
            vec![entity.to_string()]
        }
        None => SpiCatalog.entity_names(),
    };
    entities
        .iter()
        .map(|e| store::refresh(e, None).or_raise())
        .sum()
}
