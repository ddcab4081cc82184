//! Entities (the tables segments group) and their related tables, and the
//! typed `segments.<entity>_members` view that BI tools read.

use std::panic::AssertUnwindSafe;

use pgrx::prelude::*;
use pgrx::spi::Spi;
use pgrx::{JsonB, PgRelation};

use segments_core::catalog::{Catalog, KeyKind, Table};

use crate::engine::evaluate::reference_time_sql;
use crate::pg::catalog::SpiCatalog;
use crate::pg::error::{OrRaise, Reported, SegmentsError};
use crate::pg::spi::spi;

fn column_error(table: &Table, column: &str, owner: &str) -> Reported {
    SegmentsError::UndefinedColumn(format!("column \"{column}\" does not exist on {owner}"))
        .with_hint(segments_core::spelling::perhaps(
            column,
            table.column_names(),
        ))
}

fn register_entity_impl(
    entity: &str,
    relation: pg_sys::Oid,
    key_column: &str,
    eligible: Option<serde_json::Value>,
) -> Result<(), Reported> {
    segments_core::names::ENTITY.check(entity)?;
    if SpiCatalog.entity(entity).is_some() {
        return Err(SegmentsError::DuplicateObject(format!(
            "entity \"{entity}\" is already registered"
        ))
        .into());
    }
    let table = SpiCatalog::table(relation);
    if table.column(key_column).is_none() {
        return Err(column_error(
            &table,
            key_column,
            &format!("relation {}", table.relation_sql),
        ));
    }
    if table
        .columns
        .iter()
        .any(|c| c.name == "segment_id" || c.name == "segment_name")
    {
        return Err(SegmentsError::InvalidParameter(format!(
            "relation {} has a column named segment_id or segment_name, which the members view needs for itself",
            table.relation_sql
        ))
        .into());
    }
    let key_type = crate::pg::catalog::column_type(relation, key_column)
        .expect("the key column was found above");
    let (type_oid, key_type_sql) = (key_type.oid, key_type.sql);
    let key_kind = KeyKind::for_type(type_oid.to_u32()).ok_or_else(|| {
        SegmentsError::InvalidParameter(format!(
            "key column \"{key_column}\" is of type {key_type_sql}; keys must be integer, bigint, smallint, uuid or text"
        ))
    })?;
    spi(Spi::run_with_args(
        "INSERT INTO segments.entity (name, relation, key_column, key_kind, key_type, eligible) \
         VALUES ($1, $2::oid::regclass, $3, $4, $5::oid::regtype, $6)",
        &[
            entity.into(),
            relation.into(),
            key_column.into(),
            key_kind.as_str().into(),
            type_oid.into(),
            eligible.map(JsonB).into(),
        ],
    ));
    // Compiling the eligible condition checks it against the columns.
    crate::engine::plan::planner(entity, &reference_time_sql())?;
    crate::tables::members_view::create_members_view(entity, &table, key_column, key_kind);
    if let Some(warning) = crate::engine::citus::entity_warning(
        &table.relation_sql,
        key_column,
        crate::pg::citus::placement(relation).as_ref(),
    ) {
        pgrx::warning!("segments: {warning}");
    }
    if let Some(registered) = SpiCatalog.entity(entity) {
        crate::engine::citus::prepare_key_replica(&registered);
    }
    Ok(())
}

/// Registers a table whose rows segments group.
#[pg_extern(schema = "segments")]
fn register_entity(
    entity: &str,
    relation: PgRelation,
    key_column: &str,
    eligible: default!(Option<JsonB>, "NULL"),
) {
    crate::pg::authorization::require_admin("register entities");
    crate::pg::authorization::require_select(relation.oid(), &format!("table {}", relation.name()));
    let relation = relation.oid();
    crate::pg::sandbox::privileged(AssertUnwindSafe(|| {
        register_entity_impl(entity, relation, key_column, eligible.map(|j| j.0))
    }))
    .or_raise()
}

fn register_related_impl(
    entity: &str,
    name: &str,
    relation: pg_sys::Oid,
    foreign_key: &str,
    time_column: Option<&str>,
    via: Option<&str>,
) -> Result<(), Reported> {
    segments_core::names::RELATED.check(name)?;
    let owner = crate::pg::catalog::registered_entity(entity)?;
    if owner.related(name).is_some() {
        return Err(SegmentsError::DuplicateObject(format!(
            "related table \"{name}\" is already registered for entity \"{entity}\""
        ))
        .into());
    }
    let table = SpiCatalog::table(relation);
    let what = format!("relation {}", table.relation_sql);
    let fk_column = table
        .column(foreign_key)
        .ok_or_else(|| column_error(&table, foreign_key, &what))?;
    fk_column.check_usable("foreign_key", &what)?;
    if let Some(time_column) = time_column {
        let column = table
            .column(time_column)
            .ok_or_else(|| column_error(&table, time_column, &what))?;
        column.check_usable("time_column", &what)?;
        if !column.kind.is_temporal() {
            return Err(SegmentsError::InvalidParameter(format!(
                "time column \"{time_column}\" is {}; it must be a date, timestamp or timestamptz",
                column.type_sql
            ))
            .into());
        }
    }
    if let Some(via) = via {
        check_via(&owner, name, via, fk_column)?;
    }
    // Without a via, the columns every schema version has (a library
    // loaded before ALTER EXTENSION UPDATE still registers tables).
    let insert = match via {
        Some(_) => "INSERT INTO segments.related (entity, name, relation, foreign_key, time_column, via) VALUES ($1, $2, $3::oid::regclass, $4, $5, $6)",
        None => "INSERT INTO segments.related (entity, name, relation, foreign_key, time_column) VALUES ($1, $2, $3::oid::regclass, $4, $5)",
    };
    let mut args: Vec<pgrx::datum::DatumWithOid> = vec![
        entity.into(),
        name.into(),
        relation.into(),
        foreign_key.into(),
        time_column.into(),
    ];
    if let Some(via) = via {
        args.push(via.into());
    }
    spi(Spi::run_with_args(insert, &args));
    let entity_relation = crate::pg::catalog::entity_relation(entity);
    if let Some(entity_relation) = entity_relation {
        let warning = crate::engine::citus::related_warning(
            &table.relation_sql,
            foreign_key,
            crate::pg::citus::placement(relation).as_ref(),
            &owner.table.relation_sql,
            crate::pg::citus::placement(entity_relation).as_ref(),
        );
        if let Some(warning) = warning {
            pgrx::warning!("segments: {warning}");
        }
    }
    Ok(())
}

/// A path's `via`: a related table of the same entity, with a
/// single-column primary key of the foreign key's kind, that is not the
/// table being registered (so that no path leads back to itself).
fn check_via(
    owner: &segments_core::catalog::Entity,
    name: &str,
    via: &str,
    fk_column: &segments_core::catalog::Column,
) -> Result<(), Reported> {
    if via == name {
        return Err(SegmentsError::InvalidParameter(format!(
            "via: related table \"{name}\" cannot be reached through itself"
        ))
        .into());
    }
    let target = owner.related(via).ok_or_else(|| {
        SegmentsError::UndefinedTable(format!(
            "via: related table \"{via}\" is not registered for entity \"{}\"",
            owner.name
        ))
        .with_hint(segments_core::spelling::perhaps(
            via,
            owner.related.iter().map(|r| r.name.as_str()),
        ))
    })?;
    let key = target
        .primary_key
        .as_ref()
        .and_then(|k| target.table.column(k))
        .ok_or_else(|| {
            SegmentsError::InvalidParameter(format!(
                "via: related table \"{via}\" ({}) has no single-column primary key for foreign key \"{}\" to reference",
                target.table.relation_sql, fk_column.name
            ))
        })?;
    if key.kind != fk_column.kind {
        return Err(SegmentsError::DatatypeMismatch(format!(
            "via: foreign key \"{}\" is {}, and the primary key \"{}\" of related table \"{via}\" is {}",
            fk_column.name, fk_column.type_sql, key.name, key.type_sql
        ))
        .into());
    }
    // The path must reach the entity: every table on it resolves.
    segments_core::compile::path_sql(owner, target, "r")?;
    Ok(())
}

/// Registers a one-to-many table of an entity (orders, email events...);
/// with `via`, a table whose foreign key references the primary key of
/// another related table (accounts → contacts → events). (Its C symbol is
/// new in 0.3.0: 0.2.0's five-argument one is in `api/compat.rs`.)
#[pg_extern(schema = "segments", name = "register_related")]
fn register_related_via(
    entity: &str,
    name: &str,
    relation: PgRelation,
    foreign_key: &str,
    time_column: default!(Option<&str>, "NULL"),
    via: default!(Option<&str>, "NULL"),
) {
    register_related_checked(entity, name, relation, foreign_key, time_column, via)
}

/// `register_related` after its checks (admin, SELECT on the table).
pub fn register_related_checked(
    entity: &str,
    name: &str,
    relation: PgRelation,
    foreign_key: &str,
    time_column: Option<&str>,
    via: Option<&str>,
) {
    crate::pg::authorization::require_admin("register related tables");
    crate::pg::authorization::require_select(relation.oid(), &format!("table {}", relation.name()));
    let relation = relation.oid();
    crate::pg::sandbox::privileged(AssertUnwindSafe(|| {
        register_related_impl(entity, name, relation, foreign_key, time_column, via)
    }))
    .or_raise()
}

fn unregister_entity_impl(entity: &str) -> Result<(), Reported> {
    crate::pg::catalog::registered_entity(entity)?;
    let users = spi(Spi::get_one_with_args::<String>(
        "SELECT string_agg(format('%s (%s)', name, id), ', ' ORDER BY name) FROM segments.segment WHERE entity = $1",
        &[entity.into()],
    ));
    if let Some(users) = users {
        return Err(SegmentsError::DependentObjects(format!(
            "entity \"{entity}\" is used by segments: {users}"
        ))
        .with_hint(Some(
            "Delete those segments first with segments.delete().".into(),
        )));
    }
    crate::tables::members_view::drop_members_view(entity);
    crate::engine::citus::drop_key_replica(entity);
    spi(Spi::run_with_args(
        "DELETE FROM segments.entity WHERE name = $1",
        &[entity.into()],
    ));
    Ok(())
}

/// Removes an entity registration; refused while segments use it.
#[pg_extern(schema = "segments")]
fn unregister_entity(entity: &str) {
    crate::pg::authorization::require_admin("unregister entities");
    crate::pg::sandbox::privileged(AssertUnwindSafe(|| unregister_entity_impl(entity))).or_raise()
}

fn unregister_related_impl(entity: &str, name: &str) -> Result<(), Reported> {
    let exists = crate::pg::spi::optional_value::<bool>(
        "SELECT true FROM segments.related WHERE entity OPERATOR(pg_catalog.=) $1 AND name OPERATOR(pg_catalog.=) $2",
        &[entity.into(), name.into()],
    );
    if exists.is_none() {
        return Err(SegmentsError::UndefinedTable(format!(
            "related table \"{name}\" is not registered for entity \"{entity}\""
        ))
        .into());
    }
    let users = spi(Spi::get_one_with_args::<String>(
        "SELECT pg_catalog.string_agg(pg_catalog.format('%s (%s)', name, id), ', ' ORDER BY name) FROM segments.segment \
          WHERE entity OPERATOR(pg_catalog.=) $1 \
            AND pg_catalog.jsonb_path_exists(definition, '$.** ? (@.related == $name)', pg_catalog.jsonb_build_object('name', $2::text))",
        &[entity.into(), name.into()],
    ));
    if let Some(users) = users {
        return Err(SegmentsError::DependentObjects(format!(
            "related table \"{name}\" of entity \"{entity}\" is used by segments: {users}"
        ))
        .with_hint(Some("Change or delete those segments first.".into())));
    }
    let reached_through = crate::pg::spi::optional_value::<String>(
        "SELECT pg_catalog.string_agg(name, ', ' ORDER BY name) FROM segments.related \
          WHERE entity OPERATOR(pg_catalog.=) $1 AND pg_catalog.to_jsonb(related) OPERATOR(pg_catalog.->>) 'via' OPERATOR(pg_catalog.=) $2",
        &[entity.into(), name.into()],
    );
    if let Some(paths) = reached_through {
        return Err(SegmentsError::DependentObjects(format!(
            "related table \"{name}\" of entity \"{entity}\" is the via of related tables: {paths}"
        ))
        .with_hint(Some("Unregister those related tables first.".into())));
    }
    spi(Spi::run_with_args(
        "DELETE FROM segments.related WHERE entity OPERATOR(pg_catalog.=) $1 AND name OPERATOR(pg_catalog.=) $2",
        &[entity.into(), name.into()],
    ));
    Ok(())
}

/// Removes a related table's registration (also when its table was
/// dropped); refused while segments read it.
#[pg_extern(schema = "segments")]
fn unregister_related(entity: &str, name: &str) {
    crate::pg::authorization::require_admin("unregister related tables");
    crate::pg::sandbox::privileged(AssertUnwindSafe(|| unregister_related_impl(entity, name)))
        .or_raise()
}
