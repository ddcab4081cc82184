//! Sequences ("viewed, then added to cart within a day, then no purchase
//! within a week"): the steps of a `{"related": R, "sequence": [...]}`
//! condition, and a step's reference to an earlier step's row (SPEC 16).

use serde_json::{Map, Value};

use super::{
    as_object, bool_field, check_keys, json_type, parse_condition, Condition, Operand,
    RelativeDuration, DURATION_SHAPE,
};
use crate::error::{invalid, SegmentsError};

/// How many steps a sequence may have: each step is one more nested
/// `EXISTS` over the related table.
pub const MAX_STEPS: usize = 10;

/// One step of a sequence: a related row matching `filter`, later than the
/// previous step's row and, with `within`, at most that long after it. An
/// `absent` step (the last one only) holds when no such row exists and its
/// period has ended by the reference time.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// JSON path, e.g. `rules[0].where.sequence[1]`.
    pub path: String,
    pub filter: Condition,
    pub within: Option<RelativeDuration>,
    pub absent: bool,
}

/// Parses the steps, refusing (22023, naming the step) an empty list, a
/// first step with `within` or `absent`, an absent step that is not last
/// or has no `within`, and a reference to a step that is not earlier.
pub(super) fn parse_steps(path: &str, value: &Value) -> Result<Vec<Step>, SegmentsError> {
    let items = match value {
        Value::Array(items) if !items.is_empty() => items,
        Value::Array(_) => return Err(invalid(path, "needs at least one step")),
        other => {
            return Err(invalid(
                path,
                format!("must be an array of steps, not {}", json_type(other)),
            ))
        }
    };
    if items.len() > MAX_STEPS {
        return Err(invalid(
            path,
            format!(
                "has {} steps; a sequence has at most {MAX_STEPS}",
                items.len()
            ),
        ));
    }
    let mut steps = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let step_path = format!("{path}[{i}]");
        let object = as_object(&step_path, item, "a step")?;
        check_keys(&step_path, object, &["where", "within", "absent"])?;
        let filter = match object.get("where") {
            Some(condition) => parse_condition(&format!("{step_path}.where"), condition)?,
            None => {
                return Err(invalid(
                    &step_path,
                    "a step needs \"where\": the rows it matches",
                ))
            }
        };
        let within = match object.get("within") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(RelativeDuration::parse(text).ok_or_else(|| {
                invalid(
                    &format!("{step_path}.within"),
                    format!("must be {DURATION_SHAPE}"),
                )
            })?),
            Some(other) => {
                return Err(invalid(
                    &format!("{step_path}.within"),
                    format!("must be {DURATION_SHAPE}, not {}", json_type(other)),
                ))
            }
        };
        let absent = bool_field(&step_path, object, "absent")?.unwrap_or(false);
        if i == 0 && within.is_some() {
            return Err(invalid(
                &format!("{step_path}.within"),
                "the first step follows no other step: put the sequence's window in the condition's \"within\"",
            ));
        }
        if absent && i == 0 {
            return Err(invalid(
                &format!("{step_path}.absent"),
                "the first step cannot be absent: an absent step follows another step",
            ));
        }
        if absent && i + 1 != items.len() {
            return Err(invalid(
                &format!("{step_path}.absent"),
                "only the last step may be absent",
            ));
        }
        if absent && within.is_none() {
            return Err(invalid(
                &step_path,
                "an absent step needs \"within\": how long after the previous step nothing may happen",
            ));
        }
        let mut nodes = Vec::new();
        super::walk_condition(&filter, &mut nodes);
        for node in nodes {
            if let super::ConditionKind::Attribute(test) = &node.kind {
                if let Operand::StepRef { step, .. } = &test.value {
                    if *step > i {
                        return Err(invalid(
                            &format!("{}.value.step", node.path),
                            format!(
                                "step {} can refer to the rows of steps 1 to {i} only, not step {step}",
                                i + 1
                            ),
                        ));
                    }
                }
            }
        }
        steps.push(Step {
            path: step_path,
            filter,
            within,
            absent,
        });
    }
    Ok(steps)
}

/// `{"step": K, "attribute": COLUMN}` as an operator's value.
pub(super) fn parse_step_ref(
    path: &str,
    object: &Map<String, Value>,
) -> Result<Operand, SegmentsError> {
    check_keys(path, object, &["step", "attribute"])?;
    let step = object
        .get("step")
        .and_then(Value::as_u64)
        .filter(|&k| k >= 1)
        .ok_or_else(|| {
            invalid(
                &format!("{path}.step"),
                "must be a step number, counted from 1",
            )
        })?;
    let column = match object.get("attribute") {
        Some(Value::String(name)) if !name.trim().is_empty() => name.clone(),
        _ => {
            return Err(invalid(
                path,
                "\"attribute\" must name a column of the earlier step's row",
            ))
        }
    };
    Ok(Operand::StepRef {
        step: step as usize,
        column,
    })
}
