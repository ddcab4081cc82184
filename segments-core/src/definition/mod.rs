//! The definition model: what a segment's jsonb says, parsed strictly into
//! types. Parsing checks the shape only (keys, operators, value shapes);
//! `validate` checks it against the catalog. Every node keeps its JSON path
//! so that errors can say exactly where a definition went wrong.

use serde_json::{Map, Value};

use crate::error::{invalid, SegmentsError};

mod sequence;
mod traits;
mod window;

pub use sequence::Step;
pub use traits::{TraitDefinition, TraitFunction};
pub use window::{DurationUnit, RelativeDuration, Window, DURATION_SHAPE};

#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    pub entity: String,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// JSON path, e.g. `rules[1]`.
    pub path: String,
    /// Position label used by rule counts: `1`, `2`, `2.1`, ...
    pub label: String,
    pub name: Option<String>,
    pub combine: Option<Combine>,
    pub body: RuleBody,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RuleBody {
    Where(Condition),
    Rules(Vec<Rule>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    Union,
    Intersect,
    Except,
}

impl Combine {
    pub fn as_str(self) -> &'static str {
        match self {
            Combine::Union => "union",
            Combine::Intersect => "intersect",
            Combine::Except => "except",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// JSON path, e.g. `rules[0].where.all[1]`.
    pub path: String,
    pub kind: ConditionKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ConditionKind {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    Attribute(AttributeTest),
    Related(RelatedTest),
    Segment(SegmentTest),
    /// `{"trait": NAME, "op": OP, "value"?: JSON}`: a trait's value, tested
    /// like an attribute.
    Trait(TraitTest),
}

#[derive(Debug, Clone, PartialEq)]
pub struct TraitTest {
    pub name: String,
    pub op: Op,
    pub value: Operand,
    pub ignore_case: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AttributeTest {
    pub column: String,
    pub op: Op,
    pub value: Operand,
    pub ignore_case: bool,
}

/// The value an operator is applied to, already checked for its shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    None,
    Scalar(Value),
    Range(Value, Value),
    List(Vec<Value>),
    Duration(RelativeDuration),
    /// `in_last` / `not_in_last`: a duration or a window in the past.
    Window(Window),
    /// Inside a sequence step: a column of an earlier step's row
    /// (`{"step": K, "attribute": COLUMN}`, steps counted from 1).
    StepRef {
        step: usize,
        column: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct RelatedTest {
    pub related: String,
    pub filter: Option<Box<Condition>>,
    pub within: Option<Window>,
    pub measure: RelatedMeasure,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RelatedMeasure {
    /// `exists`: true means "has a matching row", false "has none".
    Exists(bool),
    Aggregate {
        function: AggregateFunction,
        attribute: Option<String>,
        op: Op,
        value: Operand,
    },
    /// `every`: at least one row, and all of them match the condition.
    Every(Box<Condition>),
    /// `sequence`: rows matching the steps in increasing time order.
    Sequence(Vec<Step>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateFunction {
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

impl AggregateFunction {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "count" => Self::Count,
            "sum" => Self::Sum,
            "avg" => Self::Avg,
            "min" => Self::Min,
            "max" => Self::Max,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Sum => "sum",
            Self::Avg => "avg",
            Self::Min => "min",
            Self::Max => "max",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SegmentTest {
    pub segment: SegmentRef,
    pub member: bool,
    /// `"group"`: only the members in this group of a split segment.
    pub group: Option<String>,
    /// `"priority_list"`: only the members this priority list assigns to
    /// the segment (members of no segment listed before it).
    pub priority_list: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SegmentRef {
    Id(i64),
    Name(String),
}

impl std::fmt::Display for SegmentRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SegmentRef::Id(id) => write!(f, "{id}"),
            SegmentRef::Name(name) => write!(f, "\"{name}\""),
        }
    }
}

/// The operators of definitions (the README's "Definitions" section).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Lte,
    Gt,
    Gte,
    Between,
    In,
    NotIn,
    Contains,
    NotContains,
    StartsWith,
    EndsWith,
    IsNull,
    IsNotNull,
    IsTrue,
    IsFalse,
    InLast,
    NotInLast,
    InNext,
    Before,
    After,
    On,
    IsAnniversary,
    IsToday,
    TopPercent,
    BottomPercent,
    Top,
    Bottom,
}

/// The shape of value an operator takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperandShape {
    None,
    Scalar,
    Range,
    List,
    Text,
    Duration,
    Window,
    /// A share (0 < value <= 100) or a count of records, for ranks.
    Rank,
}

pub const ALL_OPS: &[Op] = &[
    Op::Eq,
    Op::Ne,
    Op::Lt,
    Op::Lte,
    Op::Gt,
    Op::Gte,
    Op::Between,
    Op::In,
    Op::NotIn,
    Op::Contains,
    Op::NotContains,
    Op::StartsWith,
    Op::EndsWith,
    Op::IsNull,
    Op::IsNotNull,
    Op::IsTrue,
    Op::IsFalse,
    Op::InLast,
    Op::NotInLast,
    Op::InNext,
    Op::Before,
    Op::After,
    Op::On,
    Op::IsAnniversary,
    Op::IsToday,
    Op::TopPercent,
    Op::BottomPercent,
    Op::Top,
    Op::Bottom,
];

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Ne => "ne",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::Between => "between",
            Op::In => "in",
            Op::NotIn => "not_in",
            Op::Contains => "contains",
            Op::NotContains => "not_contains",
            Op::StartsWith => "starts_with",
            Op::EndsWith => "ends_with",
            Op::IsNull => "is_null",
            Op::IsNotNull => "is_not_null",
            Op::IsTrue => "is_true",
            Op::IsFalse => "is_false",
            Op::InLast => "in_last",
            Op::NotInLast => "not_in_last",
            Op::InNext => "in_next",
            Op::Before => "before",
            Op::After => "after",
            Op::On => "on",
            Op::IsAnniversary => "is_anniversary",
            Op::IsToday => "is_today",
            Op::TopPercent => "top_percent",
            Op::BottomPercent => "bottom_percent",
            Op::Top => "top",
            Op::Bottom => "bottom",
        }
    }

    pub fn parse(name: &str) -> Option<Op> {
        ALL_OPS.iter().copied().find(|op| op.name() == name)
    }

    pub fn shape(self) -> OperandShape {
        match self {
            Op::Eq | Op::Ne | Op::Lt | Op::Lte | Op::Gt | Op::Gte => OperandShape::Scalar,
            Op::Before | Op::After | Op::On => OperandShape::Scalar,
            Op::Between => OperandShape::Range,
            Op::In | Op::NotIn => OperandShape::List,
            Op::Contains | Op::NotContains | Op::StartsWith | Op::EndsWith => OperandShape::Text,
            Op::IsNull | Op::IsNotNull | Op::IsTrue | Op::IsFalse => OperandShape::None,
            Op::IsAnniversary | Op::IsToday => OperandShape::None,
            Op::InLast | Op::NotInLast => OperandShape::Window,
            Op::InNext => OperandShape::Duration,
            Op::TopPercent | Op::BottomPercent | Op::Top | Op::Bottom => OperandShape::Rank,
        }
    }

    /// Ranks compare a record with all the others, not with a value.
    pub fn is_rank(self) -> bool {
        self.shape() == OperandShape::Rank
    }

    /// Operators that compare an aggregate with a number.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            Op::Eq | Op::Ne | Op::Lt | Op::Lte | Op::Gt | Op::Gte | Op::Between
        )
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Refuses keys that the node does not know, so that a typo such as
/// `"atribute"` is an error rather than a silently ignored key.
fn check_keys(
    path: &str,
    object: &Map<String, Value>,
    allowed: &[&str],
) -> Result<(), SegmentsError> {
    for key in object.keys() {
        if !allowed.contains(&key.as_str()) {
            let suggestion = crate::spelling::closest(key, allowed.iter().copied())
                .map(|s| format!(" (did you mean \"{s}\"?)"))
                .unwrap_or_default();
            return Err(invalid(path, format!("unknown key \"{key}\"{suggestion}")));
        }
    }
    Ok(())
}

fn as_object<'a>(
    path: &str,
    value: &'a Value,
    what: &str,
) -> Result<&'a Map<String, Value>, SegmentsError> {
    value.as_object().ok_or_else(|| {
        invalid(
            path,
            format!("{what} must be an object, not {}", json_type(value)),
        )
    })
}

fn string_field<'a>(
    path: &str,
    object: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a str>, SegmentsError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(invalid(
            &format!("{path}.{key}"),
            format!("must be a string, not {}", json_type(other)),
        )),
    }
}

fn bool_field(
    path: &str,
    object: &Map<String, Value>,
    key: &str,
) -> Result<Option<bool>, SegmentsError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(invalid(
            &format!("{path}.{key}"),
            format!("must be true or false, not {}", json_type(other)),
        )),
    }
}

fn required_name<'a>(
    path: &str,
    object: &'a Map<String, Value>,
    key: &str,
) -> Result<&'a str, SegmentsError> {
    match string_field(path, object, key)? {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(invalid(path, format!("\"{key}\" must name something"))),
    }
}

impl Definition {
    pub fn parse(value: &Value) -> Result<Definition, SegmentsError> {
        let object = as_object("definition", value, "a definition")?;
        check_keys("definition", object, &["entity", "rules"])?;
        let entity = required_name("definition", object, "entity")?.to_string();
        let rules = parse_rules("rules", "", object.get("rules"))?;
        Ok(Definition { entity, rules })
    }

    /// Every condition of every rule, depth first.
    pub fn conditions(&self) -> Vec<&Condition> {
        fn walk_rules<'a>(rules: &'a [Rule], out: &mut Vec<&'a Condition>) {
            for rule in rules {
                match &rule.body {
                    RuleBody::Where(c) => walk_condition(c, out),
                    RuleBody::Rules(sub) => walk_rules(sub, out),
                }
            }
        }
        let mut out = Vec::new();
        walk_rules(&self.rules, &mut out);
        out
    }

    /// The traits this definition's conditions test.
    pub fn trait_names(&self) -> Vec<&str> {
        self.conditions()
            .into_iter()
            .filter_map(|c| match &c.kind {
                ConditionKind::Trait(test) => Some(test.name.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The segments this definition refers to.
    pub fn segment_refs(&self) -> Vec<(&str, &SegmentRef)> {
        self.conditions()
            .into_iter()
            .filter_map(|c| match &c.kind {
                ConditionKind::Segment(test) => Some((c.path.as_str(), &test.segment)),
                _ => None,
            })
            .collect()
    }
}

/// Every node of a condition tree, depth first (the root included).
impl Definition {
    /// How many conditions the definition holds: attribute, related and
    /// segment tests, and the combinators around them, in every rule.
    pub fn condition_count(&self) -> usize {
        fn count(rules: &[Rule]) -> usize {
            rules
                .iter()
                .map(|rule| match &rule.body {
                    RuleBody::Where(condition) => {
                        let mut nodes = Vec::new();
                        walk_condition(condition, &mut nodes);
                        nodes.len()
                    }
                    RuleBody::Rules(sub) => count(sub),
                })
                .sum()
        }
        count(&self.rules)
    }

    /// Refuses (22023) a definition of more than `max` conditions, naming
    /// the limit (`segments.max_conditions`).
    pub fn check_size(&self, max: usize) -> Result<(), crate::error::SegmentsError> {
        let count = self.condition_count();
        if count > max {
            return Err(crate::error::SegmentsError::InvalidParameter(format!(
                "the definition has {count} conditions, more than segments.max_conditions ({max})"
            )));
        }
        Ok(())
    }
}

pub fn walk_condition<'a>(condition: &'a Condition, out: &mut Vec<&'a Condition>) {
    out.push(condition);
    match &condition.kind {
        ConditionKind::All(items) | ConditionKind::Any(items) => {
            for item in items {
                walk_condition(item, out);
            }
        }
        ConditionKind::Not(inner) => walk_condition(inner, out),
        ConditionKind::Related(test) => {
            if let Some(filter) = &test.filter {
                walk_condition(filter, out);
            }
            match &test.measure {
                RelatedMeasure::Every(condition) => walk_condition(condition, out),
                RelatedMeasure::Sequence(steps) => {
                    for step in steps {
                        walk_condition(&step.filter, out);
                    }
                }
                RelatedMeasure::Exists(_) | RelatedMeasure::Aggregate { .. } => {}
            }
        }
        ConditionKind::Attribute(_) | ConditionKind::Segment(_) | ConditionKind::Trait(_) => {}
    }
}

fn parse_rules(
    path: &str,
    label_prefix: &str,
    value: Option<&Value>,
) -> Result<Vec<Rule>, SegmentsError> {
    let items = match value {
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(invalid(
                path,
                format!("must be an array of rules, not {}", json_type(other)),
            ))
        }
        None => {
            return Err(invalid(
                path,
                "is missing: a definition needs at least one rule",
            ))
        }
    };
    if items.is_empty() {
        return Err(invalid(path, "needs at least one rule"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let label = format!("{label_prefix}{}", i + 1);
            parse_rule(&format!("{path}[{i}]"), label, i == 0, item)
        })
        .collect()
}

fn parse_rule(
    path: &str,
    label: String,
    first: bool,
    value: &Value,
) -> Result<Rule, SegmentsError> {
    let object = as_object(path, value, "a rule")?;
    check_keys(path, object, &["name", "combine", "where", "rules"])?;
    let name = string_field(path, object, "name")?.map(str::to_string);
    let combine = match string_field(path, object, "combine")? {
        None => None,
        Some("union") => Some(Combine::Union),
        Some("intersect") => Some(Combine::Intersect),
        Some("except") => Some(Combine::Except),
        Some(other) => {
            return Err(invalid(
                &format!("{path}.combine"),
                format!("\"{other}\" is not one of union, intersect, except"),
            ))
        }
    };
    match (first, combine) {
        (true, Some(_)) => {
            return Err(invalid(
                path,
                "the first rule of a list takes no \"combine\"",
            ))
        }
        (false, None) => {
            return Err(invalid(
                path,
                "every rule after the first needs \"combine\": union, intersect or except",
            ))
        }
        _ => {}
    }
    let body = match (object.get("where"), object.get("rules")) {
        (Some(condition), None) => {
            RuleBody::Where(parse_condition(&format!("{path}.where"), condition)?)
        }
        (None, Some(rules)) => RuleBody::Rules(parse_rules(
            &format!("{path}.rules"),
            &format!("{label}."),
            Some(rules),
        )?),
        (Some(_), Some(_)) => {
            return Err(invalid(
                path,
                "a rule holds either \"where\" or \"rules\", not both",
            ))
        }
        (None, None) => {
            return Err(invalid(
                path,
                "a rule needs \"where\" (conditions) or \"rules\" (subrules)",
            ))
        }
    };
    Ok(Rule {
        path: path.to_string(),
        label,
        name,
        combine,
        body,
    })
}

pub fn parse_condition(path: &str, value: &Value) -> Result<Condition, SegmentsError> {
    let object = as_object(path, value, "a condition")?;
    let kind = if let Some(items) = object.get("all") {
        check_keys(path, object, &["all"])?;
        ConditionKind::All(parse_condition_list(&format!("{path}.all"), items)?)
    } else if let Some(items) = object.get("any") {
        check_keys(path, object, &["any"])?;
        ConditionKind::Any(parse_condition_list(&format!("{path}.any"), items)?)
    } else if let Some(inner) = object.get("not") {
        check_keys(path, object, &["not"])?;
        ConditionKind::Not(Box::new(parse_condition(&format!("{path}.not"), inner)?))
    } else if object.contains_key("related") {
        ConditionKind::Related(parse_related(path, object)?)
    } else if object.contains_key("attribute") {
        check_keys(path, object, &["attribute", "op", "value", "ignore_case"])?;
        let column = required_name(path, object, "attribute")?.to_string();
        let op = parse_op(path, object)?;
        let value = parse_operand(path, op, object.get("value"))?;
        let ignore_case = bool_field(path, object, "ignore_case")?.unwrap_or(false);
        ConditionKind::Attribute(AttributeTest {
            column,
            op,
            value,
            ignore_case,
        })
    } else if object.contains_key("trait") {
        check_keys(path, object, &["trait", "op", "value", "ignore_case"])?;
        let name = required_name(path, object, "trait")?.to_string();
        let op = parse_op(path, object)?;
        let value = parse_operand(path, op, object.get("value"))?;
        let ignore_case = bool_field(path, object, "ignore_case")?.unwrap_or(false);
        ConditionKind::Trait(TraitTest {
            name,
            op,
            value,
            ignore_case,
        })
    } else if object.contains_key("segment") {
        check_keys(
            path,
            object,
            &["segment", "member", "group", "priority_list"],
        )?;
        let segment = match &object["segment"] {
            Value::String(name) if !name.trim().is_empty() => SegmentRef::Name(name.clone()),
            Value::Number(n) if n.as_i64().is_some_and(|id| id > 0) => {
                SegmentRef::Id(n.as_i64().unwrap())
            }
            other => {
                return Err(invalid(
                    &format!("{path}.segment"),
                    format!("must be a segment name or a positive id, not {other}"),
                ))
            }
        };
        let member = bool_field(path, object, "member")?.unwrap_or(true);
        let group = optional_text(path, object, "group")?;
        let priority_list = optional_text(path, object, "priority_list")?;
        if group.is_some() && priority_list.is_some() {
            return Err(invalid(
                path,
                "a segment condition takes \"group\" or \"priority_list\", not both",
            ));
        }
        ConditionKind::Segment(SegmentTest {
            segment,
            member,
            group,
            priority_list,
        })
    } else {
        return Err(invalid(
            path,
            "a condition needs one of \"all\", \"any\", \"not\", \"attribute\", \"related\", \"trait\" or \"segment\"",
        ));
    };
    Ok(Condition {
        path: path.to_string(),
        kind,
    })
}

fn parse_condition_list(path: &str, value: &Value) -> Result<Vec<Condition>, SegmentsError> {
    match value {
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, item)| parse_condition(&format!("{path}[{i}]"), item))
            .collect(),
        Value::Array(_) => Err(invalid(path, "needs at least one condition")),
        other => Err(invalid(
            path,
            format!("must be an array of conditions, not {}", json_type(other)),
        )),
    }
}

fn parse_op(path: &str, object: &Map<String, Value>) -> Result<Op, SegmentsError> {
    let name = match object.get("op") {
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(invalid(
                &format!("{path}.op"),
                format!("must be a string, not {}", json_type(other)),
            ))
        }
        None => return Err(invalid(path, "\"op\" is missing")),
    };
    Op::parse(name).ok_or_else(|| {
        let suggestion = crate::spelling::closest(name, ALL_OPS.iter().map(|op| op.name()))
            .map(|s| format!(" (did you mean \"{s}\"?)"))
            .unwrap_or_default();
        invalid(
            &format!("{path}.op"),
            format!("unknown operator \"{name}\"{suggestion}"),
        )
    })
}

fn is_scalar(value: &Value) -> bool {
    matches!(value, Value::Bool(_) | Value::Number(_) | Value::String(_))
}

pub fn parse_operand(path: &str, op: Op, value: Option<&Value>) -> Result<Operand, SegmentsError> {
    let vpath = format!("{path}.value");
    let value = value.filter(|v| !v.is_null());
    let needs = |what: &str| invalid(&vpath, format!("operator {} takes {what}", op.name()));
    Ok(match op.shape() {
        OperandShape::None => match value {
            None => Operand::None,
            Some(_) => return Err(needs("no value")),
        },
        OperandShape::Scalar => match value {
            Some(v) if is_scalar(v) => Operand::Scalar(v.clone()),
            Some(Value::Object(object)) if object.contains_key("step") => {
                sequence::parse_step_ref(&vpath, object)?
            }
            _ => return Err(needs("one value (a string, number or boolean)")),
        },
        OperandShape::Text => match value {
            Some(Value::String(s)) => Operand::Scalar(Value::String(s.clone())),
            _ => return Err(needs("a string")),
        },
        OperandShape::Range => match value {
            Some(Value::Array(pair)) if pair.len() == 2 && pair.iter().all(is_scalar) => {
                Operand::Range(pair[0].clone(), pair[1].clone())
            }
            _ => return Err(needs("[low, high]")),
        },
        OperandShape::List => match value {
            Some(Value::Array(items)) if !items.is_empty() && items.iter().all(is_scalar) => {
                Operand::List(items.clone())
            }
            _ => return Err(needs("a non-empty array of values")),
        },
        OperandShape::Duration => match value {
            Some(Value::String(text)) => Operand::Duration(
                RelativeDuration::parse(text).ok_or_else(|| needs(DURATION_SHAPE))?,
            ),
            _ => return Err(needs(DURATION_SHAPE)),
        },
        OperandShape::Window => match value {
            Some(Value::String(text)) => Operand::Window(Window {
                from: RelativeDuration::parse(text).ok_or_else(|| needs(DURATION_SHAPE))?,
                to: None,
            }),
            Some(v @ Value::Object(_)) => Operand::Window(Window::parse(&vpath, v)?),
            _ => return Err(needs(DURATION_SHAPE)),
        },
        OperandShape::Rank => {
            let number = value.and_then(Value::as_f64).filter(|n| n.is_finite());
            let fits = match (op, number) {
                (Op::TopPercent | Op::BottomPercent, Some(n)) => n > 0.0 && n <= 100.0,
                (_, Some(_)) => value.and_then(Value::as_u64).is_some_and(|n| n >= 1),
                (_, None) => false,
            };
            if !fits {
                return Err(needs(if matches!(op, Op::TopPercent | Op::BottomPercent) {
                    "a share: a number above 0 and at most 100"
                } else {
                    "a count: a whole number of at least 1"
                }));
            }
            Operand::Scalar(value.cloned().unwrap_or_default())
        }
    })
}

fn parse_related(path: &str, object: &Map<String, Value>) -> Result<RelatedTest, SegmentsError> {
    let related = required_name(path, object, "related")?.to_string();
    let filter = match object.get("where") {
        None | Some(Value::Null) => None,
        Some(v) => Some(Box::new(parse_condition(&format!("{path}.where"), v)?)),
    };
    let within = match object.get("within") {
        None | Some(Value::Null) => None,
        Some(value) => Some(Window::parse(&format!("{path}.within"), value)?),
    };
    let measure = if let Some(condition) = object.get("every") {
        check_keys(path, object, &["related", "every", "where", "within"])?;
        RelatedMeasure::Every(Box::new(parse_condition(
            &format!("{path}.every"),
            condition,
        )?))
    } else if let Some(steps) = object.get("sequence") {
        check_keys(path, object, &["related", "sequence", "within"])?;
        RelatedMeasure::Sequence(sequence::parse_steps(&format!("{path}.sequence"), steps)?)
    } else if let Some(function) = object.get("aggregate") {
        check_keys(
            path,
            object,
            &[
                "related",
                "aggregate",
                "attribute",
                "where",
                "within",
                "op",
                "value",
            ],
        )?;
        let function = match function {
            Value::String(name) => AggregateFunction::parse(name),
            _ => None,
        }
        .ok_or_else(|| {
            invalid(
                &format!("{path}.aggregate"),
                "must be one of count, sum, avg, min, max",
            )
        })?;
        let attribute = string_field(path, object, "attribute")?.map(str::to_string);
        if function != AggregateFunction::Count && attribute.is_none() {
            return Err(invalid(
                path,
                format!(
                    "aggregate {} needs an \"attribute\" to aggregate",
                    function.as_str()
                ),
            ));
        }
        let op = parse_op(path, object)?;
        if !op.is_comparison() {
            return Err(invalid(
                &format!("{path}.op"),
                format!(
                    "an aggregate is compared with eq, ne, lt, lte, gt, gte or between, not {}",
                    op.name()
                ),
            ));
        }
        let value = parse_operand(path, op, object.get("value"))?;
        let numbers_only = match &value {
            Operand::Scalar(v) => v.is_number(),
            Operand::Range(a, b) => a.is_number() && b.is_number(),
            _ => false,
        };
        if !numbers_only {
            return Err(invalid(
                &format!("{path}.value"),
                "an aggregate is compared with a number",
            ));
        }
        RelatedMeasure::Aggregate {
            function,
            attribute,
            op,
            value,
        }
    } else {
        check_keys(path, object, &["related", "exists", "where", "within"])?;
        RelatedMeasure::Exists(bool_field(path, object, "exists")?.unwrap_or(true))
    };
    Ok(RelatedTest {
        related,
        filter,
        within,
        measure,
    })
}

/// How deep a definition may nest (objects and arrays).
pub const MAX_NESTING: usize = 100;

/// Parses a definition's JSON text, refusing (22023, naming the JSON path)
/// one nested deeper than `MAX_NESTING` before a recursive parser sees it.
pub fn parse_json_text(text: &str) -> Result<Value, SegmentsError> {
    if let Some(path) = too_deep(text, MAX_NESTING) {
        return Err(SegmentsError::InvalidParameter(format!(
            "{path}: the definition nests deeper than {MAX_NESTING} levels"
        )));
    }
    serde_json::from_str(text)
        .map_err(|e| SegmentsError::InvalidParameter(format!("definition: not valid JSON: {e}")))
}

/// The JSON path (as `rules[0].where.not`) where `text` first nests deeper
/// than `max`, scanning without recursion.
fn too_deep(text: &str, max: usize) -> Option<String> {
    // Each open container: its path segment so far, and for arrays the index.
    enum Frame {
        Object(Option<String>),
        Array(usize),
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut chars = text.chars().peekable();
    let mut last_string: Option<String> = None;
    let path = |stack: &[Frame]| {
        let mut out = String::new();
        for frame in stack {
            match frame {
                Frame::Object(Some(key)) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(key);
                }
                Frame::Object(None) => {}
                Frame::Array(i) => out.push_str(&format!("[{i}]")),
            }
        }
        if out.is_empty() {
            "definition".to_string()
        } else {
            out
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let mut s = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                s.push(escaped);
                            }
                        }
                        '"' => break,
                        c => s.push(c),
                    }
                }
                last_string = Some(s);
            }
            ':' => {
                if let Some(Frame::Object(key)) = stack.last_mut() {
                    *key = last_string.take();
                }
            }
            ',' => {
                if let Some(Frame::Array(i)) = stack.last_mut() {
                    *i += 1;
                }
            }
            '{' | '[' => {
                if stack.len() >= max {
                    return Some(path(&stack));
                }
                stack.push(if c == '{' {
                    Frame::Object(None)
                } else {
                    Frame::Array(0)
                });
            }
            '}' | ']' => {
                stack.pop();
            }
            _ => {}
        }
    }
    None
}

/// An optional non-empty string field of a condition.
fn optional_text(
    path: &str,
    object: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<String>, SegmentsError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if !text.trim().is_empty() => Ok(Some(text.clone())),
        Some(other) => Err(invalid(
            &format!("{path}.{field}"),
            format!("must be a non-empty string, not {other}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_deeper_than_the_limit_is_refused_with_its_path() {
        let mut deep = String::from("{\"attribute\":\"age\",\"op\":\"is_null\"}");
        for _ in 0..150 {
            deep = format!("{{\"not\":{deep}}}");
        }
        let text = format!("{{\"entity\":\"customer\",\"rules\":[{{\"where\":{deep}}}]}}");
        let error = parse_json_text(&text).unwrap_err().to_string();
        assert!(error.starts_with("rules[0].where.not.not."), "{error}");
        assert!(error.ends_with("nests deeper than 100 levels"), "{error}");
        let shallow =
            "{\"entity\":\"c\",\"rules\":[{\"where\":{\"all\":[{\"a\":1},{\"b\":[1,2]}]}}]}";
        assert!(parse_json_text(shallow).is_ok());
        assert_eq!(too_deep("[[1],[[2]]]", 2), Some("[1][0]".into()));
    }
    use serde_json::json;

    fn parse(v: Value) -> Result<Definition, SegmentsError> {
        Definition::parse(&v)
    }

    fn err(v: Value) -> String {
        parse(v).unwrap_err().to_string()
    }

    #[test]
    fn parses_rules_subrules_and_labels() {
        let d = parse(json!({
            "entity": "customer",
            "rules": [
                {"name": "Germans", "where": {"attribute": "country", "op": "eq", "value": "DE"}},
                {"combine": "union", "rules": [
                    {"where": {"attribute": "age", "op": "gt", "value": 30}},
                    {"combine": "except", "where": {"segment": "VIP"}}
                ]}
            ]
        }))
        .unwrap();
        assert_eq!(d.entity, "customer");
        assert_eq!(d.rules[0].label, "1");
        assert_eq!(d.rules[0].name.as_deref(), Some("Germans"));
        assert_eq!(d.rules[1].combine, Some(Combine::Union));
        let RuleBody::Rules(sub) = &d.rules[1].body else {
            panic!("subrules expected")
        };
        assert_eq!(sub[1].label, "2.2");
        assert_eq!(sub[1].path, "rules[1].rules[1]");
        assert_eq!(d.segment_refs().len(), 1);
    }

    #[test]
    fn combine_rules_are_enforced() {
        let first = err(
            json!({"entity": "c", "rules": [{"combine": "union", "where": {"attribute": "a", "op": "is_null"}}]}),
        );
        assert_eq!(
            first,
            "rules[0]: the first rule of a list takes no \"combine\""
        );
        let second = err(json!({"entity": "c", "rules": [
            {"where": {"attribute": "a", "op": "is_null"}},
            {"where": {"attribute": "a", "op": "is_null"}}]}));
        assert!(
            second.starts_with("rules[1]: every rule after the first needs \"combine\""),
            "{second}"
        );
        let bad = err(json!({"entity": "c", "rules": [
            {"where": {"attribute": "a", "op": "is_null"}},
            {"combine": "plus", "where": {"attribute": "a", "op": "is_null"}}]}));
        assert_eq!(
            bad,
            "rules[1].combine: \"plus\" is not one of union, intersect, except"
        );
    }

    #[test]
    fn errors_name_the_json_path() {
        let e = err(json!({"entity": "c", "rules": [{"where": {"all": [
            {"attribute": "a", "op": "eq", "value": 1},
            {"attribute": "b", "op": "betwen", "value": 1}]}}]}));
        assert_eq!(
            e,
            "rules[0].where.all[1].op: unknown operator \"betwen\" (did you mean \"between\"?)"
        );
        let e = err(json!({"entity": "c", "rules": [{"where": {"atribute": "a", "op": "eq"}}]}));
        assert!(
            e.starts_with("rules[0].where: a condition needs one of"),
            "{e}"
        );
        let e = err(
            json!({"entity": "c", "rules": [{"where": {"attribute": "a", "op": "eq", "valeu": 1}}]}),
        );
        assert_eq!(
            e,
            "rules[0].where: unknown key \"valeu\" (did you mean \"value\"?)"
        );
    }

    #[test]
    fn operand_shapes_are_checked() {
        let cases = [
            (
                json!({"attribute": "a", "op": "eq"}),
                "operator eq takes one value",
            ),
            (
                json!({"attribute": "a", "op": "between", "value": [1]}),
                "operator between takes [low, high]",
            ),
            (
                json!({"attribute": "a", "op": "in", "value": []}),
                "operator in takes a non-empty array",
            ),
            (
                json!({"attribute": "a", "op": "is_null", "value": 3}),
                "operator is_null takes no value",
            ),
            (
                json!({"attribute": "a", "op": "in_last", "value": "30 fortnights"}),
                "operator in_last takes a duration",
            ),
            (
                json!({"attribute": "a", "op": "contains", "value": 3}),
                "operator contains takes a string",
            ),
        ];
        for (condition, expected) in cases {
            let e = err(json!({"entity": "c", "rules": [{"where": condition}]}));
            assert!(e.starts_with("rules[0].where.value: "), "{e}");
            assert!(e.contains(expected), "{e} should contain {expected}");
        }
    }

    #[test]
    fn durations_parse_every_unit() {
        assert_eq!(
            RelativeDuration::parse("30 days").unwrap().interval_text(),
            "30 days"
        );
        assert_eq!(
            RelativeDuration::parse("1 week").unwrap().interval_text(),
            "1 weeks"
        );
        assert_eq!(
            RelativeDuration::parse("12 Hours").unwrap().unit,
            DurationUnit::Hours
        );
        assert_eq!(
            RelativeDuration::parse("2 months").unwrap().unit,
            DurationUnit::Months
        );
        assert_eq!(
            RelativeDuration::parse("1 year").unwrap().unit,
            DurationUnit::Years
        );
        for bad in [
            "",
            "days",
            "30",
            "-1 days",
            "1.5 days",
            "30 days ago",
            "3 fortnights",
        ] {
            assert!(RelativeDuration::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn related_conditions_parse() {
        let d = parse(json!({"entity": "c", "rules": [{"where": {"all": [
            {"related": "orders", "aggregate": "sum", "attribute": "amount", "within": "30 days", "op": "gt", "value": 500},
            {"related": "orders", "exists": false, "where": {"attribute": "status", "op": "eq", "value": "refunded"}}
        ]}}]}))
        .unwrap();
        let conditions = d.conditions();
        let ConditionKind::Related(sum) = &conditions[1].kind else {
            panic!()
        };
        assert!(matches!(
            sum.measure,
            RelatedMeasure::Aggregate {
                function: AggregateFunction::Sum,
                ..
            }
        ));
        assert_eq!(sum.within.unwrap().from.interval_text(), "30 days");
        let ConditionKind::Related(none) = &conditions[2].kind else {
            panic!()
        };
        assert_eq!(none.measure, RelatedMeasure::Exists(false));
        assert!(none.filter.is_some());

        let e = err(json!({"entity": "c", "rules": [{"where":
            {"related": "orders", "aggregate": "sum", "op": "gt", "value": 1}}]}));
        assert_eq!(
            e,
            "rules[0].where: aggregate sum needs an \"attribute\" to aggregate"
        );
        let e = err(json!({"entity": "c", "rules": [{"where":
            {"related": "orders", "aggregate": "count", "op": "gt", "value": "many"}}]}));
        assert_eq!(
            e,
            "rules[0].where.value: an aggregate is compared with a number"
        );
    }

    #[test]
    fn segment_references_take_names_or_ids() {
        let d = parse(json!({"entity": "c", "rules": [{"where": {"any": [
            {"segment": "VIP"}, {"segment": 7, "member": false}]}}]}))
        .unwrap();
        let refs: Vec<_> = d
            .segment_refs()
            .into_iter()
            .map(|(_, r)| r.clone())
            .collect();
        assert_eq!(
            refs,
            vec![SegmentRef::Name("VIP".into()), SegmentRef::Id(7)]
        );
        let e = err(json!({"entity": "c", "rules": [{"where": {"segment": -1}}]}));
        assert!(
            e.starts_with("rules[0].where.segment: must be a segment name or a positive id"),
            "{e}"
        );
    }

    #[test]
    fn top_level_shape_is_checked() {
        assert_eq!(
            err(json!([])),
            "definition: a definition must be an object, not array"
        );
        assert_eq!(
            err(json!({"rules": []})),
            "definition: \"entity\" must name something"
        );
        assert_eq!(
            err(json!({"entity": "c", "rules": []})),
            "rules: needs at least one rule"
        );
        assert_eq!(
            err(json!({"entity": "c", "rules": [{}]})),
            "rules[0]: a rule needs \"where\" (conditions) or \"rules\" (subrules)"
        );
    }
}
