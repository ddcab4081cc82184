//! Rewriting export tables after refreshes. The rewrite runs as the
//! export's owner and in the refresh's transaction: readers of the target
//! table see its old rows or its new ones.

use pgrx::prelude::*;
use pgrx::spi::Spi;

use crate::catalog::spi;
use crate::txn::as_role;

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

#[pg_extern(schema = "segments")]
fn _rewrite_export(export: i64) {
    rewrite(export);
}
