//! Segments in the catalog: creating them, and the definition check that
//! the lifecycle trigger runs on every INSERT and UPDATE of
//! `segments.segment`, whichever way the row is written.

use pgrx::prelude::*;
use pgrx::spi::Spi;
use pgrx::JsonB;
use serde_json::{json, Value};

use crate::catalog::{optional_value, spi, SpiCatalog};
use crate::compile::compile_definition;
use crate::error::{OrRaise, Reported, SegmentsError};
use crate::evaluate::reference_time_sql;

/// Validates a definition against the catalog and returns its entity.
/// Called by the lifecycle trigger: a refused definition aborts the write.
pub fn check_definition(definition: &Value, segment_id: Option<i64>) -> Result<String, Reported> {
    let (parsed, _, _) = compile_definition(&SpiCatalog, definition, segment_id, &reference_time_sql())?;
    Ok(parsed.entity)
}

#[pg_extern]
fn _check_definition(definition: JsonB, segment_id: Option<i64>) -> String {
    check_definition(&definition.0, segment_id).or_raise()
}

pub fn check_type(kind: &str) -> Result<(), SegmentsError> {
    match kind {
        "static" | "dynamic" => Ok(()),
        other => Err(SegmentsError::InvalidParameter(format!("type \"{other}\" is not static or dynamic"))),
    }
}

#[allow(clippy::too_many_arguments)]
pub fn create_segment_impl(
    name: &str,
    definition: Value,
    kind: &str,
    schedule: Option<&str>,
    description: Option<&str>,
    tags: Vec<String>,
    priority: Option<i32>,
    active: bool,
) -> Result<i64, Reported> {
    check_type(kind)?;
    let taken = optional_value::<i64>("SELECT id FROM segments.segment WHERE name = $1", &[name.into()]);
    if let Some(id) = taken {
        return Err(SegmentsError::DuplicateObject(format!("a segment named \"{name}\" already exists (id {id})")).into());
    }
    let id = spi(Spi::get_one_with_args::<i64>(
        "INSERT INTO segments.segment (name, definition, type, schedule, description, tags, priority, state) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $8 THEN 'active' ELSE 'inactive' END) RETURNING id",
        &[
            name.into(),
            JsonB(definition).into(),
            kind.into(),
            schedule.into(),
            description.into(),
            tags.into(),
            priority.into(),
            active.into(),
        ],
    ));
    Ok(id.expect("INSERT ... RETURNING returns a row"))
}

/// Creates a segment from a definition; returns its id.
#[pg_extern]
#[allow(clippy::too_many_arguments)]
fn create_segment(
    name: &str,
    definition: JsonB,
    r#type: default!(&str, "'dynamic'"),
    schedule: default!(Option<&str>, "NULL"),
    description: default!(Option<&str>, "NULL"),
    tags: default!(Vec<String>, "'{}'"),
    priority: default!(Option<i32>, "NULL"),
    active: default!(bool, "true"),
) -> i64 {
    create_segment_impl(name, definition.0, r#type, schedule, description, tags, priority, active).or_raise()
}

/// The definition of a quick segment: one condition on one attribute.
pub fn quick_definition(entity: &str, attribute: &str, op: &str, value: Option<Value>) -> Value {
    let mut condition = json!({"attribute": attribute, "op": op});
    if let Some(value) = value.filter(|v| !v.is_null()) {
        condition["value"] = value;
    }
    json!({"entity": entity, "rules": [{"where": condition}]})
}

/// Creates a segment of one condition, e.g.
/// `segments.quick_segment('Germans', 'customer', 'country', 'eq', '"DE"')`.
#[pg_extern]
fn quick_segment(name: &str, entity: &str, attribute: &str, op: &str, value: default!(Option<JsonB>, "NULL")) -> i64 {
    let definition = quick_definition(entity, attribute, op, value.map(|j| j.0));
    create_segment_impl(name, definition, "dynamic", None, None, vec![], None, true).or_raise()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_definitions_hold_one_condition() {
        assert_eq!(
            quick_definition("customer", "country", "eq", Some(json!("DE"))),
            json!({"entity": "customer", "rules": [{"where": {"attribute": "country", "op": "eq", "value": "DE"}}]})
        );
        assert_eq!(
            quick_definition("customer", "email", "is_null", None),
            json!({"entity": "customer", "rules": [{"where": {"attribute": "email", "op": "is_null"}}]})
        );
    }
}
