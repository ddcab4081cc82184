//! Entities (the tables segments group) and their related tables, and the
//! typed `segments.<entity>_members` view that BI tools read.

use std::panic::AssertUnwindSafe;

use pgrx::prelude::*;
use pgrx::spi::Spi;
use pgrx::{JsonB, PgRelation};

use segments_core::bitmap::key_of;
use segments_core::catalog::{Catalog, KeyKind, Table};
use segments_core::compile::Planner;
use segments_core::sql::{ident, literal};

use crate::engine::evaluate::{reference_time_sql, stored_members};
use crate::pg::catalog::SpiCatalog;
use crate::pg::error::{OrRaise, Reported, SegmentsError};
use crate::pg::spi::spi;

fn check_name(what: &str, name: &str, max: usize) -> Result<(), SegmentsError> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(SegmentsError::InvalidParameter(format!(
            "{what} name \"{name}\" must be 1 to {max} lowercase letters, digits or underscores, starting with a letter"
        )))
    }
}

fn column_error(table: &Table, column: &str, owner: &str) -> Reported {
    SegmentsError::UndefinedColumn(format!("column \"{column}\" does not exist on {owner}"))
        .with_hint(segments_core::spelling::perhaps(
            column,
            table.column_names(),
        ))
}

fn key_type_oid(relation: pg_sys::Oid, column: &str) -> (pg_sys::Oid, String) {
    let row = Spi::get_two_with_args::<pg_sys::Oid, String>(
        "SELECT atttypid, format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute \
         WHERE attrelid = $1 AND attname = $2 AND attnum > 0 AND NOT attisdropped",
        &[relation.into(), column.into()],
    );
    let (oid, type_sql) = spi(row);
    (
        oid.unwrap_or(pg_sys::InvalidOid),
        type_sql.unwrap_or_default(),
    )
}

pub fn members_view_name(entity: &str) -> String {
    format!("{entity}_members")
}

/// `segments.<entity>_members`: segment_id, segment_name, then every column
/// of the entity table. `security_invoker` makes the reader's own
/// privileges on the entity table apply.
pub(crate) fn members_view_sql(
    entity: &str,
    table: &Table,
    key_column: &str,
    key_kind: KeyKind,
    key_type_sql: &str,
) -> String {
    let join = match key_kind {
        KeyKind::Integer => format!(
            "JOIN {} e ON e.{} = m.position",
            table.relation_sql,
            ident(key_column)
        ),
        KeyKind::Dictionary => format!(
            "JOIN segments.entity_key k ON k.entity = {} AND k.position = m.position\n  \
             JOIN {} e ON e.{} = k.key::{key_type_sql}",
            literal(entity),
            table.relation_sql,
            ident(key_column)
        ),
    };
    format!(
        "CREATE VIEW segments.{} WITH (security_invoker = true) AS\n\
         SELECT s.id AS segment_id, s.name AS segment_name, e.*\n  \
         FROM segments.segment s\n  \
         JOIN segments.membership b ON b.segment_id = s.id\n  \
         CROSS JOIN LATERAL segments.bitmap_positions(b.members) AS m(position)\n  \
         {join}\n WHERE s.entity = {}",
        ident(&members_view_name(entity)),
        literal(entity)
    )
}

/// Comments on a members view and every column of it.
pub(crate) fn comment_members_view(entity: &str, table: &Table) {
    let view = format!("segments.{}", ident(&members_view_name(entity)));
    let mut sql = format!(
        "COMMENT ON VIEW {view} IS {};\n\
         COMMENT ON COLUMN {view}.segment_id IS 'The segment.';\n\
         COMMENT ON COLUMN {view}.segment_name IS 'The segment''s name.';\n",
        literal(&format!(
            "Members of the segments of entity {entity}: segment_id, segment_name, then every column of {} \
             (security_invoker: you see the rows you may SELECT).",
            table.relation_sql
        ))
    );
    for column in &table.columns {
        sql.push_str(&format!(
            "COMMENT ON COLUMN {view}.{} IS {};\n",
            ident(&column.name),
            literal(&format!(
                "Column {} of {}.",
                column.name, table.relation_sql
            ))
        ));
    }
    spi(Spi::run(&sql));
}

fn register_entity_impl(
    entity: &str,
    relation: pg_sys::Oid,
    key_column: &str,
    eligible: Option<serde_json::Value>,
) -> Result<(), Reported> {
    check_name("entity", entity, 40)?;
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
    let (type_oid, key_type_sql) = key_type_oid(relation, key_column);
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
    Planner::new(&SpiCatalog, entity, "entity", &reference_time_sql())?;
    spi(Spi::run(&members_view_sql(
        entity,
        &table,
        key_column,
        key_kind,
        &key_type_sql,
    )));
    comment_members_view(entity, &table);
    spi(Spi::run(&format!(
        "GRANT SELECT ON segments.{} TO segments_reader, segments_editor, segments_admin",
        ident(&members_view_name(entity))
    )));
    if let Some(warning) = crate::engine::citus::entity_warning(
        &table.relation_sql,
        key_column,
        crate::engine::citus::placement(relation).as_ref(),
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
    crate::pg::txn::require_admin("register entities");
    crate::pg::txn::require_select(relation.oid(), &format!("table {}", relation.name()));
    let relation = relation.oid();
    crate::pg::txn::privileged(AssertUnwindSafe(|| {
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
) -> Result<(), Reported> {
    check_name("related table", name, 63)?;
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
    spi(Spi::run_with_args(
        "INSERT INTO segments.related (entity, name, relation, foreign_key, time_column) VALUES ($1, $2, $3::oid::regclass, $4, $5)",
        &[entity.into(), name.into(), relation.into(), foreign_key.into(), time_column.into()],
    ));
    let entity_relation = crate::pg::spi::optional_value::<pg_sys::Oid>(
        "SELECT relation::pg_catalog.oid FROM segments.entity WHERE name OPERATOR(pg_catalog.=) $1",
        &[entity.into()],
    );
    if let Some(entity_relation) = entity_relation {
        let warning = crate::engine::citus::related_warning(
            &table.relation_sql,
            foreign_key,
            crate::engine::citus::placement(relation).as_ref(),
            &owner.table.relation_sql,
            crate::engine::citus::placement(entity_relation).as_ref(),
        );
        if let Some(warning) = warning {
            pgrx::warning!("segments: {warning}");
        }
    }
    Ok(())
}

/// Registers a one-to-many table of an entity (orders, email events...).
#[pg_extern(schema = "segments")]
fn register_related(
    entity: &str,
    name: &str,
    relation: PgRelation,
    foreign_key: &str,
    time_column: default!(Option<&str>, "NULL"),
) {
    crate::pg::txn::require_admin("register related tables");
    crate::pg::txn::require_select(relation.oid(), &format!("table {}", relation.name()));
    let relation = relation.oid();
    crate::pg::txn::privileged(AssertUnwindSafe(|| {
        register_related_impl(entity, name, relation, foreign_key, time_column)
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
    spi(Spi::run(&format!(
        "DROP VIEW IF EXISTS segments.{}",
        ident(&members_view_name(entity))
    )));
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
    crate::pg::txn::require_admin("unregister entities");
    crate::pg::txn::privileged(AssertUnwindSafe(|| unregister_entity_impl(entity))).or_raise()
}

/// The bitmap positions of a segment's members (integer keys are their own
/// positions).
#[pg_extern(schema = "segments", stable, parallel_safe)]
fn member_positions(segment: i64) -> SetOfIterator<'static, i64> {
    let members = stored_members(segment);
    SetOfIterator::new(members.into_iter().map(key_of))
}

/// The positions in a serialized bitmap. The members views join these to
/// the entity table: a pure function of its argument, it gives the same
/// answer wherever it runs, which on Citus is on the workers, next to the
/// shards, with the bitmap shipped to them.
#[pg_extern(schema = "segments", immutable, parallel_safe, strict)]
fn bitmap_positions(bitmap: &[u8]) -> SetOfIterator<'static, i64> {
    let members =
        segments_core::bitmap::deserialize(bitmap).unwrap_or_else(|e| crate::pg::error::corrupt(e));
    SetOfIterator::new(members.into_iter().map(key_of))
}

thread_local! {
    /// (entity, role, local transaction) -> may read: the key dictionary's
    /// row-level policy asks once per row.
    static READABLE: std::cell::RefCell<Option<(String, pg_sys::Oid, u32, bool)>> = const { std::cell::RefCell::new(None) };
}

/// Whether the current role may SELECT an entity's table: the row-level
/// policy of `segments.entity_key`, so that keys are readable only by
/// roles that could read them from the table itself.
#[pg_extern(schema = "segments", stable, parallel_safe)]
fn _can_read_entity(entity: &str) -> bool {
    let role = crate::pg::txn::current_role();
    let transaction = crate::pg::versions::local_transaction_id();
    let cached = READABLE.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|(e, r, t, _)| e == entity && *r == role && *t == transaction)
            .map(|(_, _, _, ok)| *ok)
    });
    if let Some(ok) = cached {
        return ok;
    }
    let ok = crate::pg::spi::optional_value::<bool>(
        "SELECT pg_catalog.has_table_privilege(relation::oid, 'SELECT') FROM segments.entity \
          WHERE name OPERATOR(pg_catalog.=) $1",
        &[entity.into()],
    )
    .unwrap_or(false);
    READABLE.with(|c| *c.borrow_mut() = Some((entity.to_string(), role, transaction, ok)));
    ok
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
    crate::pg::txn::require_admin("unregister related tables");
    crate::pg::txn::privileged(AssertUnwindSafe(|| unregister_related_impl(entity, name)))
        .or_raise()
}
