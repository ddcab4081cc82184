//! The typed members view of an entity, `segments.<entity>_members`:
//! segment_id, segment_name, split_group, then every column of the entity table, for
//! BI tools. Made at registration, dropped before a user's DDL of the table
//! and made again after it from the table's new columns, grants kept.

use pgrx::spi::Spi;

use segments_core::catalog::{Catalog, KeyKind, Table};
use segments_core::sql::{ident, literal};

use crate::pg::catalog::{registered_key_type, SpiCatalog};
use crate::pg::spi::{required, spi};
use crate::tables::grants::{grant, grants_of, Grant};

thread_local! {
    /// Grants of members views dropped at ddl_command_start, by entity, to
    /// put back when the view is made again at ddl_command_end.
    static SAVED_GRANTS: std::cell::RefCell<std::collections::HashMap<String, Vec<Grant>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// The view's name (in schema `segments`).
pub fn members_view_name(entity: &str) -> String {
    format!("{entity}_members")
}

/// `segments.<entity>_members`: segment_id, segment_name, split_group (the
/// member's group in a split segment), then every column
/// of the entity table. `security_invoker` makes the reader's own
/// privileges on the entity table apply.
fn members_view_sql(
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
    // A schema older than 0.3.0 (before ALTER EXTENSION UPDATE) has no
    // splits.
    let (split_group, split_join) = if crate::pg::catalog::has_splits() {
        (
            format!(
                "CASE WHEN sp.segment_id IS NOT NULL THEN \
                 sp.groups[pg_catalog.width_bucket(segments.split_bucket(s.id, e.{}::pg_catalog.text), sp.lows)] END",
                ident(key_column)
            ),
            "\n  LEFT JOIN segments.segment_split sp ON sp.segment_id = s.id",
        )
    } else {
        ("NULL::pg_catalog.text".to_string(), "")
    };
    format!(
        "CREATE VIEW segments.{} WITH (security_invoker = true) AS\n\
         SELECT s.id AS segment_id, s.name AS segment_name, {split_group} AS split_group, e.*\n  \
         FROM segments.segment s\n  \
         JOIN segments.membership b ON b.segment_id = s.id{split_join}\n  \
         CROSS JOIN LATERAL segments.bitmap_positions(b.members) AS m(position)\n  \
         {join}\n WHERE s.entity = {}",
        ident(&members_view_name(entity)),
        literal(entity)
    )
}

/// Comments on a members view and every column of it.
fn comment_members_view(entity: &str, table: &Table) {
    let view = format!("segments.{}", ident(&members_view_name(entity)));
    let mut sql = format!(
        "COMMENT ON VIEW {view} IS {};\n\
         COMMENT ON COLUMN {view}.segment_id IS 'The segment.';\n\
         COMMENT ON COLUMN {view}.segment_name IS 'The segment''s name.';\n\
         COMMENT ON COLUMN {view}.split_group IS 'The member''s group when the segment is split (segments.split()), else NULL.';\n",
        literal(&format!(
            "Members of the segments of entity {entity}: segment_id, segment_name, split_group, then every column of {} \
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

/// Makes an entity's members view, with its comments and the grants of
/// the extension's roles (at registration).
pub fn create_members_view(entity: &str, table: &Table, key_column: &str, key_kind: KeyKind) {
    make_members_view(entity, table, key_column, key_kind, None);
}

/// Makes an entity's members view with its comments and `grants`, or the
/// grants of the extension's roles when None.
fn make_members_view(
    entity: &str,
    table: &Table,
    key_column: &str,
    key_kind: KeyKind,
    grants: Option<Vec<Grant>>,
) {
    let key_type = registered_key_type(entity);
    spi(Spi::run(&members_view_sql(
        entity,
        table,
        key_column,
        key_kind,
        &key_type.sql,
    )));
    comment_members_view(entity, table);
    let view = format!("segments.{}", ident(&members_view_name(entity)));
    grant(&view, grants);
}

/// Drops an entity's members view (unregistering the entity).
pub fn drop_members_view(entity: &str) {
    spi(Spi::run(&format!(
        "DROP VIEW IF EXISTS segments.{}",
        ident(&members_view_name(entity))
    )));
}

/// Drops an entity's members view, keeping its grants to put back when
/// `restore_members_views` makes it again.
pub fn release_members_view(entity: &str) {
    let view = format!("segments.{}", ident(&members_view_name(entity)));
    // A view of the user's built on the members view keeps it: dropping it
    // would take theirs along. The ALTER TABLE then meets PostgreSQL's own
    // dependency checks, which name that view.
    let has_dependents = crate::pg::spi::optional_value::<bool>(
        "SELECT true FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_rewrite r ON r.oid OPERATOR(pg_catalog.=) d.objid \
          WHERE d.refobjid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1) \
            AND r.ev_class OPERATOR(pg_catalog.<>) pg_catalog.to_regclass($1) LIMIT 1",
        &[view.clone().into()],
    )
    .unwrap_or(false);
    if has_dependents {
        return;
    }
    let grants = grants_of(&view);
    SAVED_GRANTS.with(|saved| saved.borrow_mut().insert(entity.to_string(), grants));
    spi(Spi::run(&format!("DROP VIEW IF EXISTS {view}")));
}

/// Makes the members view of every registered entity whose table exists
/// and whose view is missing, with the grants it had.
pub fn restore_members_views() {
    let missing: Vec<String> = Spi::connect(|client| {
        spi(client.select(
            "SELECT e.name FROM segments.entity e \
              WHERE EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) e.relation::pg_catalog.oid) \
                AND pg_catalog.to_regclass('segments.' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(e.name OPERATOR(pg_catalog.||) '_members')) IS NULL",
            None,
            &[],
        ))
        .filter_map(|row| spi(row.get::<String>(1)))
        .collect()
    });
    for entity in missing {
        let Some(found) = SpiCatalog.entity(&entity) else {
            continue;
        };
        let grants = SAVED_GRANTS.with(|saved| saved.borrow_mut().remove(&entity));
        make_members_view(
            &entity,
            &found.table,
            &found.key_column,
            found.key_kind,
            grants,
        );
    }
}

/// Makes every members view again from its table's current columns, with
/// its grants and comments.
pub fn remake_members_views() {
    let entities: Vec<String> = Spi::connect(|client| {
        spi(client.select("SELECT name FROM segments.entity ORDER BY name", None, &[]))
            .map(|row| required(&row, 1))
            .collect()
    });
    for entity in entities {
        release_members_view(&entity);
    }
    restore_members_views();
}
