//! Segments in the catalog: the checks the lifecycle trigger runs on every
//! INSERT and UPDATE of `segments.segment` (whichever way the row is
//! written), owners and the active-segment limit. Creating, editing and
//! deleting segments is SQL (sql/manage.sql); when a segment is next due is
//! `schedule::next`.

use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::Value;

use segments_core::catalog::Catalog;
use segments_core::compile::{columns_read, compile_definition};
use segments_core::definition::SegmentRef;
use segments_core::schedule;

use crate::engine::evaluate::reference_time_sql;
use crate::pg::catalog::SpiCatalog;
use crate::pg::error::{OrRaise, Raise, Reported, SegmentsError};

/// Validates a definition against the catalog and returns it with segment
/// references stored by id, so that renaming a segment never breaks the
/// segments that read it.
pub fn check_definition(definition: &Value, segment_id: Option<i64>) -> Result<Value, Reported> {
    let (parsed, plan, _) = compile_definition(
        &SpiCatalog,
        definition,
        segment_id,
        &reference_time_sql(),
        crate::pg::gucs::max_conditions(),
    )?;
    crate::pg::authorization::check_can_read(&columns_read(&parsed, &plan.entity))?;
    let mut normalized = definition.clone();
    references_by_id(&mut normalized, &SpiCatalog);
    Ok(normalized)
}

/// Replaces `{"segment": "Name"}` with `{"segment": id}` throughout.
pub fn references_by_id(value: &mut Value, catalog: &dyn Catalog) {
    match value {
        Value::Object(object) => {
            if let Some(Value::String(name)) = object.get("segment") {
                if let Some(segment) = catalog.segment(&SegmentRef::Name(name.clone())) {
                    object.insert("segment".into(), Value::from(segment.id));
                }
            }
            for item in object.values_mut() {
                references_by_id(item, catalog);
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| references_by_id(item, catalog)),
        _ => {}
    }
}

#[pg_extern(schema = "segments")]
fn _check_definition(definition: &str, segment_id: Option<i64>) -> JsonB {
    // Text, not jsonb: a definition too deep for a recursive parser is
    // refused with its path before one sees it.
    let definition = segments_core::definition::parse_json_text(definition).or_raise();
    JsonB(check_definition(&definition, segment_id).or_raise())
}

#[pg_extern(schema = "segments", stable)]
fn _check_schedule(name: &str, schedule: Option<&str>, dynamic: bool) {
    schedule::check(schedule, dynamic)
        .map_err(|e| SegmentsError::InvalidParameter(format!("segment \"{name}\": {e}")))
        .or_raise()
}

#[cfg(test)]
mod tests {
    use super::*;
    use segments_core::catalog::fixture::customers;
    use serde_json::json;

    #[test]
    fn references_are_stored_by_id() {
        let mut definition = json!({"entity": "customer", "rules": [
            {"where": {"any": [{"segment": "VIP"}, {"segment": 7, "member": false}]}}]});
        references_by_id(&mut definition, &customers());
        assert_eq!(
            definition["rules"][0]["where"]["any"][0],
            json!({"segment": 7})
        );
        assert_eq!(
            definition["rules"][0]["where"]["any"][1],
            json!({"segment": 7, "member": false})
        );
    }
}

/// Sets the active-segment limit persistently (admins only); NULL goes
/// back to the setting `segments.max_active_segments`.
#[pg_extern(schema = "segments")]
fn set_limit(max_active: Option<i32>) {
    crate::pg::authorization::require_admin("change the active-segment limit");
    if let Some(limit) = max_active {
        if limit < 1 {
            crate::pg::error::SegmentsError::InvalidParameter(format!(
                "max_active must be 1 or more, not {limit}"
            ))
            .raise();
        }
    }
    crate::pg::sandbox::run_internal(
        "INSERT INTO segments.limits (singleton, max_active_segments) VALUES (true, $1) \
         ON CONFLICT (singleton) DO UPDATE SET max_active_segments = EXCLUDED.max_active_segments",
        vec![max_active.into()],
    );
}

/// Gives segments to another role, as `ALTER ... OWNER TO` does: the
/// caller must be allowed to change each segment and be a member of the
/// new owner. Returns how many segments changed owner.
#[pg_extern(schema = "segments", sql = false)]
fn set_owner(segments: Option<Vec<Option<i64>>>, owner: Option<pg_sys::Oid>) -> i32 {
    let Some(ids) = segments.map(|ids| ids.into_iter().flatten().collect::<Vec<i64>>()) else {
        return 0;
    };
    let Some(owner) = owner else {
        crate::pg::error::SegmentsError::InvalidParameter("the new owner must not be NULL".into())
            .raise()
    };
    if ids.is_empty() {
        return 0;
    }
    crate::pg::authorization::require_editor("change segment owners");
    // The checks run as the caller, so that they see the caller's role.
    for sql in [
        "SELECT segments._require_segments($1)",
        "SELECT segments._require_may_change('segment', s.name, s.owner) FROM segments.segment s
          WHERE s.id OPERATOR(pg_catalog.=) ANY ($1) ORDER BY s.id",
    ] {
        crate::pg::spi::spi(pgrx::spi::Spi::run_with_args(sql, &[ids.clone().into()]));
    }
    // SAFETY: is_member_of_role reads the role graph; both oids are roles.
    if !unsafe { pg_sys::is_member_of_role(crate::pg::authorization::current_role(), owner) } {
        let name =
            crate::pg::spi::optional_value::<String>("SELECT $1::regrole::text", &[owner.into()])
                .unwrap_or_default();
        crate::pg::error::SegmentsError::InsufficientPrivilege(format!(
            "permission denied to give segments to role {name}: you must be a member of it"
        ))
        .raise();
    }
    crate::pg::sandbox::call_internal::<i32>(
        "WITH changed AS (UPDATE segments.segment s SET owner = $2::regrole
            WHERE s.id OPERATOR(pg_catalog.=) ANY ($1) AND s.owner OPERATOR(pg_catalog.<>) $2::regrole RETURNING 1)
         SELECT pg_catalog.count(*)::integer FROM changed",
        vec![ids.into(), owner.into()],
    )
    .unwrap_or(0)
}
