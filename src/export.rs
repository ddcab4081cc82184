//! Rewriting export tables after refreshes. The rewrite runs as the
//! export's owner and in the refresh's transaction: readers of the target
//! table see its old rows or its new ones.

use pgrx::prelude::*;
use pgrx::spi::Spi;

use crate::pg::authorization::{current_role, require_editor};
use crate::pg::error::{Raise, SegmentsError};
use crate::pg::sandbox::{as_role, call_internal, run_internal};
use crate::pg::spi::{required, spi};

/// Rewrites one export's target table from its segments' memberships, as
/// the export's owner. The export row is locked first, so that two
/// refreshes feeding one export rewrite it one after the other, never
/// interleaved (which would duplicate rows). Columns are matched by name:
/// a table the owner changed, or a members view that gained columns,
/// still gets the columns both have.
pub fn rewrite(export: i64) {
    // A user's table, which a live segment may read: WAL capture must
    // decode these writes.
    let _users = crate::engine::live::own_writes::unmarked();
    let row = Spi::connect_mut(|client| {
        let table = spi(client.update(
            "SELECT target::oid, owner::oid, segments, entity, \
                    pg_catalog.to_jsonb(x) OPERATOR(pg_catalog.->) 'traits', \
                    pg_catalog.to_jsonb(x) OPERATOR(pg_catalog.->>) 'priority_list' \
               FROM segments.export x WHERE id = $1 FOR UPDATE",
            Some(1),
            &[export.into()],
        ));
        if table.is_empty() {
            return None;
        }
        let row = table.first();
        Some((
            required::<pg_sys::Oid>(&row, 1),
            required::<pg_sys::Oid>(&row, 2),
            required::<Vec<i64>>(&row, 3),
            required::<String>(&row, 4),
            // An older schema's export has no traits column.
            spi(row.get::<pgrx::JsonB>(5))
                .and_then(|j| serde_json::from_value::<Vec<String>>(j.0).ok())
                .unwrap_or_default(),
            spi(row.get::<String>(6)),
        ))
    });
    let Some((target, owner, segments, entity, traits, priority_list)) = row else {
        return;
    };
    let target_sql = crate::pg::spi::optional_value::<String>(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c \
          JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace WHERE c.oid OPERATOR(pg_catalog.=) $1",
        &[target.into()],
    )
    .unwrap_or_else(|| {
        SegmentsError::UndefinedTable(format!("the target table of export {export} (relation {}) no longer exists", target.to_u32()))
            .raise()
    });
    let view = segments_core::sql::ident(&crate::tables::members_view::members_view_name(&entity));
    // The target's columns the members view has, then the traits it
    // carries (from the traits view), matched by name.
    let columns = spi(Spi::get_one_with_args::<String>(
        "SELECT pg_catalog.string_agg(pg_catalog.quote_ident(t.attname), ', ' ORDER BY t.attnum) \
           FROM pg_catalog.pg_attribute t JOIN pg_catalog.pg_attribute v ON v.attname OPERATOR(pg_catalog.=) t.attname \
          WHERE t.attrelid OPERATOR(pg_catalog.=) $1 AND t.attnum OPERATOR(pg_catalog.>) 0 AND NOT t.attisdropped \
            AND v.attrelid OPERATOR(pg_catalog.=) ('segments.' OPERATOR(pg_catalog.||) $2)::pg_catalog.regclass \
            AND v.attnum OPERATOR(pg_catalog.>) 0 AND NOT v.attisdropped \
            AND NOT t.attname::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($3)",
        &[target.into(), view.clone().into(), traits.clone().into()],
    ))
    .unwrap_or_else(|| SegmentsError::InvalidState(format!("export target {target_sql} has no column of the members view")).raise());
    let (source, mut insert_columns, mut select_columns) = (
        format!("segments.{view} m"),
        columns.clone(),
        columns
            .split(", ")
            .map(|c| format!("m.{c}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let source = if traits.is_empty() {
        source
    } else {
        let key = crate::pg::spi::optional_value::<String>(
            "SELECT key_column::pg_catalog.text FROM segments.entity WHERE name OPERATOR(pg_catalog.=) $1",
            &[entity.as_str().into()],
        )
        .unwrap_or_default();
        let key = segments_core::sql::ident(&key);
        for t in &traits {
            let t = segments_core::sql::ident(t);
            insert_columns.push_str(&format!(", {t}"));
            select_columns.push_str(&format!(", t.{t}"));
        }
        let traits_view =
            segments_core::sql::ident(&crate::tables::traits_view::traits_view_name(&entity));
        format!(
            "{source} LEFT JOIN segments.{traits_view} t ON t.{key} OPERATOR(pg_catalog.=) m.{key}"
        )
    };
    // An export of a priority list: each record under its assigned segment.
    let assigned = match priority_list
        .as_deref()
        .and_then(crate::pg::catalog::priority_list_id)
    {
        Some(list) => {
            let key = crate::pg::spi::optional_value::<String>(
                "SELECT key_column::pg_catalog.text FROM segments.entity WHERE name OPERATOR(pg_catalog.=) $1",
                &[entity.as_str().into()],
            )
            .unwrap_or_default();
            format!(
                " AND (m.segment_id, m.{}::pg_catalog.text) IN (SELECT a.segment_id, a.key FROM segments._priority_members({list}) a)",
                segments_core::sql::ident(&key)
            )
        }
        None => String::new(),
    };
    as_role(owner, move || {
        spi(Spi::run(&format!("DELETE FROM {target_sql}")));
        spi(Spi::run_with_args(
            &format!(
                "INSERT INTO {target_sql} ({insert_columns}) SELECT {select_columns} FROM {source} \
                 WHERE m.segment_id OPERATOR(pg_catalog.=) ANY ($1){assigned}"
            ),
            &[segments.into()],
        ));
    });
}

/// Rewrites an export in a subtransaction and records the outcome on the
/// export (`status`, `last_error`, `last_written_at`): a failing export
/// fails alone.
pub fn rewrite_recorded(export: i64) {
    if crate::pg::catalog::legacy_schema() {
        rewrite(export);
        return;
    }
    let result = crate::pg::subtransaction::in_subtransaction(std::panic::AssertUnwindSafe(|| {
        rewrite(export)
    }));
    let (status, error) = match &result {
        Ok(()) => ("succeeded", None),
        Err(failure) => ("failed", Some(failure.message.clone())),
    };
    if let Some(message) = &error {
        warning!("segments: export {export} failed: {message}");
    }
    spi(Spi::run_with_args(
        "UPDATE segments.export SET status = $2, last_error = $3, \
                last_written_at = CASE WHEN $2 OPERATOR(pg_catalog.=) 'succeeded' THEN pg_catalog.now() ELSE last_written_at END \
          WHERE id OPERATOR(pg_catalog.=) $1",
        &[export.into(), status.into(), error.into()],
    ));
}

/// The exports that carry trait `name` (`create_export(..., traits =>)`),
/// as "name (id), ..."; None when there are none.
pub fn exports_carrying_trait(name: &str) -> Option<String> {
    crate::pg::spi::optional_value::<String>(
        "SELECT pg_catalog.string_agg(pg_catalog.format('%s (%s)', name, id), ', ' ORDER BY name) \
           FROM segments.export WHERE $1 OPERATOR(pg_catalog.=) ANY (traits)",
        &[name.into()],
    )
}

/// The exports that contain any of the given segments.
pub fn exports_of(segments: &[i64]) -> Vec<i64> {
    if segments.is_empty() {
        return Vec::new();
    }
    Spi::connect(|client| {
        spi(client.select(
            "SELECT id FROM segments.export WHERE segments && $1 ORDER BY id",
            None,
            &[segments.to_vec().into()],
        ))
        .filter_map(|row| spi(row.get::<i64>(1)))
        .collect()
    })
}

/// Rewrites an export now (called by `_create_export`, as the extension).
#[pg_extern(schema = "segments")]
fn _rewrite_export(export: i64) {
    rewrite(export);
    if crate::pg::catalog::legacy_schema() {
        return;
    }
    spi(Spi::run_with_args(
        "UPDATE segments.export SET status = 'succeeded', last_error = NULL, last_written_at = pg_catalog.now() WHERE id OPERATOR(pg_catalog.=) $1",
        &[export.into()],
    ));
}

/// The target named as the caller would name it in CREATE TABLE: an
/// unqualified name goes to the first schema of the caller's search_path.
fn qualified_target(target: &str) -> String {
    let qualified = spi(Spi::get_one_with_args::<String>(
        "SELECT CASE WHEN pg_catalog.cardinality(p) OPERATOR(pg_catalog.=) 1
                     THEN pg_catalog.format('%I.%I', pg_catalog.current_schema(), p[1])
                     WHEN pg_catalog.cardinality(p) OPERATOR(pg_catalog.=) 2
                     THEN pg_catalog.format('%I.%I', p[1], p[2]) END
           FROM pg_catalog.parse_ident($1) AS p",
        &[target.into()],
    ));
    qualified.unwrap_or_else(|| {
        SegmentsError::InvalidParameter(format!(
            "export target \"{target}\" must be a table name, optionally schema-qualified, in a schema of the search_path"
        ))
        .raise()
    })
}

/// Creates an export: a table `target`, owned by the caller, kept holding
/// the members of `segments`, with the values of `traits` as columns.
/// (Its C symbol is new in 0.3.0: 0.2.0's three-argument one is in
/// `api/compat.rs`.)
///
/// With `priority_list`, the export holds the records that list assigns
/// (each once, under its segment) and `segments` must be NULL: the list's
/// segments are the export's.
#[pg_extern(schema = "segments", name = "create_export")]
fn create_export_with_traits(
    name: &str,
    segments: Option<Vec<i64>>,
    target: &str,
    traits: default!(Option<Vec<String>>, "NULL"),
    priority_list: default!(Option<&str>, "NULL"),
) -> i64 {
    let Some(list) = priority_list else {
        return create_export_checked(name, segments, target, traits);
    };
    let found = crate::pg::catalog::priority_list_named(list).unwrap_or_else(|| {
        SegmentsError::UndefinedObject(format!("priority list \"{list}\" does not exist")).raise()
    });
    if segments.as_ref().is_some_and(|s| !s.is_empty()) {
        SegmentsError::InvalidParameter(format!(
            "export \"{name}\" names priority list \"{list}\" and segments: name one or the other (segments => NULL)"
        ))
        .raise();
    }
    let id = create_export_checked(name, Some(found.segments), target, traits);
    crate::pg::sandbox::privileged(std::panic::AssertUnwindSafe(|| {
        spi(Spi::run_with_args(
            "UPDATE segments.export SET priority_list = $2 WHERE id OPERATOR(pg_catalog.=) $1",
            &[id.into(), list.into()],
        ));
        rewrite(id);
    }));
    id
}

/// `create_export` after the caller's check (an editor).
pub fn create_export_checked(
    name: &str,
    segments: Option<Vec<i64>>,
    target: &str,
    traits: Option<Vec<String>>,
) -> i64 {
    require_editor("create exports");
    let target = qualified_target(target);
    let mut args = vec![
        current_role().into(),
        name.to_string().into(),
        segments.into(),
        target.into(),
    ];
    // Without traits, the four arguments every schema's _create_export
    // takes (a 0.2.0 schema under this library has no traits).
    let sql = match traits {
        Some(traits) if !traits.is_empty() => {
            args.push(traits.into());
            "SELECT segments._create_export($1::regrole, $2, $3, $4, $5)"
        }
        _ => "SELECT segments._create_export($1::regrole, $2, $3, $4)",
    };
    call_internal::<i64>(sql, args).expect("_create_export returns an id")
}

/// Drops an export and its target table (its owner, or an admin).
#[pg_extern(schema = "segments")]
fn drop_export(name: &str) {
    require_editor("drop exports");
    run_internal(
        "SELECT segments._drop_export($1::regrole, $2)",
        vec![current_role().into(), name.to_string().into()],
    );
}

/// Adds segments to an export; returns how many were added.
#[pg_extern(schema = "segments")]
fn add_to_export(export: &str, segments: Option<Vec<i64>>) -> i32 {
    require_editor("change exports");
    call_internal::<i32>(
        "SELECT segments._add_to_export($1::regrole, $2, $3)",
        vec![
            current_role().into(),
            export.to_string().into(),
            segments.into(),
        ],
    )
    .unwrap_or(0)
}

/// Removes segments from an export; returns how many were removed.
#[pg_extern(schema = "segments")]
fn remove_from_export(export: &str, segments: Option<Vec<i64>>) -> i32 {
    require_editor("change exports");
    call_internal::<i32>(
        "SELECT segments._remove_from_export($1::regrole, $2, $3)",
        vec![
            current_role().into(),
            export.to_string().into(),
            segments.into(),
        ],
    )
    .unwrap_or(0)
}
