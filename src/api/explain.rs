//! `segments.explain_member(segment, key)`: why a record is or is not a
//! member, rule by rule and condition by condition, with the value each
//! condition compared. Every part is evaluated with the refresh's own
//! compiled plan, restricted to the one key, so the answer agrees with
//! what a refresh computes; the last row says whether the record is a
//! member of the stored membership now.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;

use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};

use segments_core::bitmap::position_of;
use segments_core::catalog::{Catalog, Entity, KeyKind};
use segments_core::definition::{
    Condition, ConditionKind, Definition, RelatedMeasure, Rule, RuleBody, Step,
};
use segments_core::sql::{ident, literal, op};

use crate::engine::evaluate::{
    compute_leaves, evaluate_segment, fill_late_leaves, reference_time_sql, stored_members,
};
use crate::pg::catalog::SpiCatalog;
use crate::pg::error::{OrRaise, Reported, SegmentsError};
use crate::pg::spi::optional_value;

type Row = (String, Option<String>, Option<JsonB>, bool, Option<String>);

/// The JSON at a definition path such as `rules[1].where.all[0]`.
fn json_at<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = root;
    for part in path.split('.') {
        let (name, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            current = current.get(name)?;
        }
        for index in indexes.split('[').filter(|s| !s.is_empty()) {
            current = current.get(index.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
    }
    Some(current)
}

struct Probe<'a> {
    segment: i64,
    entity: &'a Entity,
    raw: &'a Value,
    keys_sql: String,
    /// The key as the caller gave it (text).
    key: &'a str,
    position: Option<u64>,
    reference: String,
}

impl Probe<'_> {
    /// Whether the record matches `rules` (a definition's or a rule's
    /// subrules), evaluated with the refresh's plan on this one key.
    fn matches(&self, rules: Value) -> Result<bool, Reported> {
        let Some(position) = self.position else {
            return Ok(false);
        };
        let definition = Definition::parse(&json!({"entity": self.entity.name, "rules": rules}))?;
        let mut planner = crate::engine::plan::planner(&self.entity.name, &self.reference)?;
        planner.restrict_to(self.keys_sql.clone());
        let mut compiled = planner.add(&definition, Some(self.segment))?;
        let plan = planner.finish(&mut [&mut compiled]);
        let mut values = compute_leaves(&plan);
        fill_late_leaves(&plan, &mut values, &HashMap::new());
        Ok(evaluate_segment(&compiled, &values).0.contains(position))
    }

    fn condition_matches(&self, path: &str) -> Result<bool, Reported> {
        let condition = json_at(self.raw, path).cloned().unwrap_or(Value::Null);
        self.matches(json!([{ "where": condition }]))
    }

    /// The value a leaf condition compares, as text.
    fn value(&self, condition: &Condition) -> Result<Option<String>, Reported> {
        let key = ident(&self.entity.key_column);
        Ok(match &condition.kind {
            ConditionKind::Attribute(test) => optional_value::<String>(
                &format!(
                    "SELECT e.{}::pg_catalog.text FROM {} e WHERE e.{key} {} ANY ({})",
                    ident(&test.column),
                    self.entity.table.relation_sql,
                    op("="),
                    self.keys_sql
                ),
                &[],
            ),
            ConditionKind::Related(test) => {
                let mut planner = crate::engine::plan::planner(&self.entity.name, &self.reference)?;
                planner.restrict_to(self.keys_sql.clone());
                optional_value::<String>(&planner.related_value_sql(&condition.path, test)?, &[])
            }
            ConditionKind::Trait(test) => {
                let mut planner = crate::engine::plan::planner(&self.entity.name, &self.reference)?;
                planner.restrict_to(self.keys_sql.clone());
                optional_value::<String>(
                    &planner.trait_value_sql(&condition.path, &test.name)?,
                    &[],
                )
            }
            ConditionKind::Segment(test) => {
                let id = SpiCatalog
                    .segment(&test.segment)
                    .map(|s| s.id)
                    .ok_or_else(|| {
                        SegmentsError::missing_segment_reference(&condition.path, &test.segment)
                    })?;
                let member = self
                    .position
                    .is_some_and(|p| stored_members(id).contains(p));
                let mut value = if member { "member" } else { "not a member" }.to_string();
                if test.group.is_some() {
                    let group = split_group(id, self.key);
                    value.push_str(&format!(
                        ", group {}",
                        group.as_deref().unwrap_or("(none: not split)")
                    ));
                }
                if let Some(list) = &test.priority_list {
                    let before = crate::pg::catalog::priority_list_named(list)
                        .map(|l| {
                            l.segments
                                .into_iter()
                                .take_while(|s| *s != id)
                                .collect::<Vec<_>>()
                        })
                        .unwrap_or_default();
                    let earlier: Vec<String> = before
                        .iter()
                        .filter(|s| {
                            self.position
                                .is_some_and(|p| stored_members(**s).contains(p))
                        })
                        .map(|s| s.to_string())
                        .collect();
                    if !earlier.is_empty() {
                        value.push_str(&format!(
                            ", but a member of segment {} listed before it",
                            earlier.join(", ")
                        ));
                    }
                }
                Some(value)
            }
            _ => None,
        })
    }

    /// A sequence step by step: one row per step, true when the record
    /// has the sequence up to and including that step, so the first false
    /// row is where the record's funnel stopped.
    fn walk_steps(
        &self,
        condition: &Condition,
        steps: &[Step],
        name: &Option<String>,
        rows: &mut Vec<Row>,
    ) -> Result<(), Reported> {
        let Some(Value::Object(raw)) = json_at(self.raw, &condition.path).cloned() else {
            return Ok(());
        };
        let all_steps = raw.get("sequence").cloned().unwrap_or(Value::Null);
        for (i, step) in steps.iter().enumerate() {
            let mut prefix = raw.clone();
            let upto: Vec<Value> = (0..=i).filter_map(|k| all_steps.get(k).cloned()).collect();
            prefix.insert("sequence".into(), Value::Array(upto));
            let matches = self.matches(json!([{ "where": Value::Object(prefix) }]))?;
            rows.push((
                step.path.clone(),
                name.clone(),
                json_at(self.raw, &step.path).cloned().map(JsonB),
                matches,
                None,
            ));
        }
        Ok(())
    }

    fn walk_condition(
        &self,
        condition: &Condition,
        name: &Option<String>,
        rows: &mut Vec<Row>,
    ) -> Result<(), Reported> {
        let matches = self.condition_matches(&condition.path)?;
        let raw = json_at(self.raw, &condition.path).cloned();
        rows.push((
            condition.path.clone(),
            name.clone(),
            raw.map(JsonB),
            matches,
            self.value(condition)?,
        ));
        match &condition.kind {
            ConditionKind::All(items) | ConditionKind::Any(items) => {
                for item in items {
                    self.walk_condition(item, name, rows)?;
                }
            }
            ConditionKind::Not(inner) => self.walk_condition(inner, name, rows)?,
            ConditionKind::Related(test) => {
                if let RelatedMeasure::Sequence(steps) = &test.measure {
                    self.walk_steps(condition, steps, name, rows)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn walk_rules(&self, rules: &[Rule], rows: &mut Vec<Row>) -> Result<(), Reported> {
        for rule in rules {
            let raw = json_at(self.raw, &rule.path)
                .cloned()
                .unwrap_or(Value::Null);
            // The rule alone (its combine shown in `condition`).
            let alone = match &rule.body {
                RuleBody::Where(_) => {
                    json!([{ "where": raw.get("where").cloned().unwrap_or(Value::Null) }])
                }
                RuleBody::Rules(_) => raw.get("rules").cloned().unwrap_or(Value::Null),
            };
            rows.push((
                rule.path.clone(),
                rule.name.clone(),
                Some(JsonB(raw)),
                self.matches(alone)?,
                None,
            ));
            match &rule.body {
                RuleBody::Where(condition) => self.walk_condition(condition, &rule.name, rows)?,
                RuleBody::Rules(subrules) => self.walk_rules(subrules, rows)?,
            }
        }
        Ok(())
    }
}

/// The key's bitmap position (None: never seen) and the restriction SQL.
fn locate(entity: &Entity, key: &str) -> Result<(Option<u64>, String), Reported> {
    let type_sql = crate::pg::catalog::registered_key_type(&entity.name).sql;
    let keys_sql = format!("ARRAY[{}::{type_sql}]", literal(key));
    let position = match entity.key_kind {
        KeyKind::Integer => Some(position_of(key.trim().parse::<i64>().map_err(|_| {
            SegmentsError::InvalidParameter(format!(
                "\"{key}\" is not a key of entity \"{}\", whose keys are integers",
                entity.name
            ))
        })?)),
        KeyKind::Dictionary => optional_value::<i64>(
            &format!(
                "SELECT position FROM segments.entity_key WHERE entity OPERATOR(pg_catalog.=) $1 \
                   AND key OPERATOR(pg_catalog.=) ($2::{type_sql})::pg_catalog.text"
            ),
            &[entity.name.as_str().into(), key.into()],
        )
        .map(|p| p as u64),
    };
    Ok((position, keys_sql))
}

fn explain_member_rows(segment: i64, key: &str) -> Result<Vec<Row>, Reported> {
    let (raw, entity_name) = crate::pg::spi::optional_value::<JsonB>(
        "SELECT definition FROM segments.segment WHERE id OPERATOR(pg_catalog.=) $1",
        &[segment.into()],
    )
    .map(|d| d.0)
    .zip(optional_value::<String>(
        "SELECT entity FROM segments.segment WHERE id OPERATOR(pg_catalog.=) $1",
        &[segment.into()],
    ))
    .ok_or_else(|| SegmentsError::no_such_segment(segment))?;
    let entity = crate::pg::catalog::registered_entity(&entity_name)?;
    let definition = Definition::parse(&raw)?;
    let (position, keys_sql) = locate(&entity, key)?;
    let probe = Probe {
        segment,
        entity: &entity,
        raw: &raw,
        keys_sql,
        key,
        position,
        reference: reference_time_sql(),
    };
    let mut rows = Vec::new();
    let exists = optional_value::<bool>(
        &format!(
            "SELECT true FROM {} e WHERE e.{} {} ANY ({})",
            entity.table.relation_sql,
            ident(&entity.key_column),
            op("="),
            probe.keys_sql
        ),
        &[],
    )
    .is_some();
    rows.push((
        "record".into(),
        None,
        None,
        exists,
        Some(if exists {
            "exists".into()
        } else {
            "no such row (or not visible to you)".into()
        }),
    ));
    if let Some(eligible) = &entity.eligible {
        let matches = probe.matches(json!([{ "where": eligible }]))?;
        rows.push((
            "eligible".into(),
            None,
            Some(JsonB(eligible.clone())),
            matches,
            None,
        ));
    }
    probe.walk_rules(&definition.rules, &mut rows)?;
    let computed = probe.matches(raw.get("rules").cloned().unwrap_or(Value::Null))?;
    let stored = position.is_some_and(|p| stored_members(segment).contains(p));
    // A split segment: the record's group (whether or not it is a member).
    if let Some(group) = split_group(segment, key) {
        rows.push(("split_group".into(), None, None, stored, Some(group)));
    }
    rows.push((
        "member".into(),
        None,
        None,
        computed,
        Some(format!("is_member now: {stored}")),
    ));
    Ok(rows)
}

/// Why a record is or is not a member of a segment (`explain_member`).
#[pg_extern(schema = "segments")]
fn _explain_member(
    segment: i64,
    key: &str,
) -> TableIterator<
    'static,
    (
        name!(path, String),
        name!(name, Option<String>),
        name!(condition, Option<JsonB>),
        name!(matches, bool),
        name!(value, Option<String>),
    ),
> {
    // As the caller, in the sandbox: values are read with the caller's
    // privileges (row-level security included).
    let rows = crate::pg::sandbox::as_role(
        crate::pg::authorization::current_role(),
        AssertUnwindSafe(|| explain_member_rows(segment, key)),
    )
    .or_raise();
    TableIterator::new(rows)
}

/// The record's group in a split segment (`segments.split_group`), None
/// when the segment is not split.
fn split_group(segment: i64, key: &str) -> Option<String> {
    if !crate::pg::catalog::has_splits() {
        return None;
    }
    optional_value::<String>(
        "SELECT segments.split_group($1, $2)",
        &[segment.into(), key.into()],
    )
}

#[cfg(test)]
mod tests {
    use super::json_at;
    use serde_json::json;

    #[test]
    fn paths_find_their_json() {
        let d = json!({"rules": [{"where": {"all": [{"a": 1}, {"not": {"b": 2}}]}}, {"rules": [{"where": {"c": 3}}]}]});
        assert_eq!(
            json_at(&d, "rules[0].where.all[1].not"),
            Some(&json!({"b": 2}))
        );
        assert_eq!(
            json_at(&d, "rules[1].rules[0].where"),
            Some(&json!({"c": 3}))
        );
        assert_eq!(json_at(&d, "rules[2]"), None);
    }
}
