//! Rewriting export tables after refreshes. The rewrite runs as the
//! export's owner and in the refresh's transaction: readers of the target
//! table see its old rows or its new ones.

use pgrx::prelude::*;
use pgrx::spi::Spi;

use crate::catalog::spi;
use crate::error::SegmentsError;
use crate::txn::{as_role, call_internal, current_role, require_editor, run_internal};

/// Rewrites one export's target table from its segments' memberships.
pub fn rewrite(export: i64) {
    let row = Spi::connect(|client| {
        let table = spi(client.select(
            "SELECT target::text, owner::oid, segments, entity FROM segments.export WHERE id = $1",
            Some(1),
            &[export.into()],
        ));
        if table.is_empty() {
            return None;
        }
        let row = table.first();
        Some((
            spi(row.get::<String>(1)).unwrap(),
            spi(row.get::<pg_sys::Oid>(2)).unwrap(),
            spi(row.get::<Vec<i64>>(3)).unwrap(),
            spi(row.get::<String>(4)).unwrap(),
        ))
    });
    let Some((target, owner, segments, entity)) = row else { return };
    let view = crate::sql::ident(&crate::entity::members_view_name(&entity));
    as_role(owner, move || {
        spi(Spi::run(&format!("DELETE FROM {target}")));
        spi(Spi::run_with_args(
            &format!("INSERT INTO {target} SELECT * FROM segments.{view} WHERE segment_id = ANY ($1)"),
            &[segments.into()],
        ));
    });
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
/// the members of `segments`.
#[pg_extern(schema = "segments")]
fn create_export(name: &str, segments: Option<Vec<i64>>, target: &str) -> i64 {
    require_editor("create exports");
    let target = qualified_target(target);
    call_internal::<i64>(
        "SELECT segments._create_export($1::regrole, $2, $3, $4)",
        vec![current_role().into(), name.to_string().into(), segments.into(), target.into()],
    )
    .expect("_create_export returns an id")
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
