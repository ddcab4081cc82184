//! Traits (SPEC 16; the seeds' "measures"): a named value computed per
//! record from a related table, defined once and used by many segments,
//! read by BI and exports. This file parses a trait's definition and a
//! condition on a trait.

use serde_json::Value;

use super::{
    as_object, check_keys, parse_condition, required_name, string_field, Condition, RelatedMeasure,
    RelatedTest, Window,
};
use crate::error::{invalid, SegmentsError};

/// How a trait aggregates the related rows of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TraitFunction {
    Count,
    CountDistinct,
    Sum,
    Avg,
    Min,
    Max,
    /// The attribute of the earliest related row by time (ties: smallest).
    First,
    /// The attribute of the latest related row by time (ties: smallest).
    Last,
    /// The most frequent value of the attribute (ties: smallest).
    MostFrequent,
}

pub const TRAIT_FUNCTIONS: &[TraitFunction] = &[
    TraitFunction::Count,
    TraitFunction::CountDistinct,
    TraitFunction::Sum,
    TraitFunction::Avg,
    TraitFunction::Min,
    TraitFunction::Max,
    TraitFunction::First,
    TraitFunction::Last,
    TraitFunction::MostFrequent,
];

impl TraitFunction {
    pub fn name(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::CountDistinct => "count_distinct",
            Self::Sum => "sum",
            Self::Avg => "avg",
            Self::Min => "min",
            Self::Max => "max",
            Self::First => "first",
            Self::Last => "last",
            Self::MostFrequent => "most_frequent",
        }
    }

    /// Counts are 0, not NULL, for a record without related rows.
    pub fn is_count(self) -> bool {
        matches!(self, Self::Count | Self::CountDistinct)
    }
}

/// A trait's definition: `{"related": R, "aggregate": A, "attribute"?: C,
/// "where"?: condition, "within"?: WINDOW}`.
#[derive(Debug, Clone, PartialEq)]
pub struct TraitDefinition {
    pub related: String,
    pub function: TraitFunction,
    pub attribute: Option<String>,
    pub filter: Option<Condition>,
    pub within: Option<Window>,
}

impl TraitDefinition {
    /// Parses a trait's definition, refusing (22023, naming the path
    /// under `definition`) unknown keys and aggregates, and an aggregate
    /// other than count without an attribute.
    pub fn parse(value: &Value) -> Result<TraitDefinition, SegmentsError> {
        let path = "definition";
        let object = as_object(path, value, "a trait definition")?;
        check_keys(
            path,
            object,
            &["related", "aggregate", "attribute", "where", "within"],
        )?;
        let related = required_name(path, object, "related")?.to_string();
        let function = match object.get("aggregate") {
            Some(Value::String(name)) => TRAIT_FUNCTIONS.iter().copied().find(|f| f.name() == name),
            _ => None,
        }
        .ok_or_else(|| {
            invalid(
                &format!("{path}.aggregate"),
                "must be one of count, count_distinct, sum, avg, min, max, first, last, most_frequent",
            )
        })?;
        let attribute = string_field(path, object, "attribute")?.map(str::to_string);
        if function != TraitFunction::Count && attribute.is_none() {
            return Err(invalid(
                path,
                format!("aggregate {} needs an \"attribute\"", function.name()),
            ));
        }
        let filter = match object.get("where") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_condition(&format!("{path}.where"), v)?),
        };
        let within = match object.get("within") {
            None | Some(Value::Null) => None,
            Some(v) => Some(Window::parse(&format!("{path}.within"), v)?),
        };
        Ok(TraitDefinition {
            related,
            function,
            attribute,
            filter,
            within,
        })
    }

    /// The rows the trait aggregates, as a related condition: its table,
    /// `where` and `within`.
    pub fn scope(&self) -> RelatedTest {
        RelatedTest {
            related: self.related.clone(),
            filter: self.filter.clone().map(Box::new),
            within: self.within,
            measure: RelatedMeasure::Exists(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_trait_definition_parses() {
        let t = TraitDefinition::parse(&json!({"related": "orders", "aggregate": "last",
            "attribute": "channel", "within": {"from": "1 year", "to": "30 days"}}))
        .unwrap();
        assert_eq!(t.function, TraitFunction::Last);
        assert_eq!(t.attribute.as_deref(), Some("channel"));
        assert!(t.within.unwrap().to.is_some());
        let count =
            TraitDefinition::parse(&json!({"related": "orders", "aggregate": "count"})).unwrap();
        assert!(count.function.is_count());
    }

    #[test]
    fn trait_definition_mistakes_name_their_path() {
        let cases = [
            (
                json!({"related": "orders", "aggregate": "median", "attribute": "amount"}),
                "definition.aggregate: must be one of count, count_distinct",
            ),
            (
                json!({"related": "orders", "aggregate": "sum"}),
                "definition: aggregate sum needs an \"attribute\"",
            ),
            (
                json!({"related": "orders", "aggregate": "count", "op": "gt"}),
                "definition: unknown key \"op\"",
            ),
            (
                json!({"aggregate": "count"}),
                "definition: \"related\" must name something",
            ),
            (
                json!({"related": "orders", "aggregate": "count", "within": {"from": "1 days", "to": "2 days"}}),
                "definition.within: \"from\" (1 days) must reach further back",
            ),
        ];
        for (value, message) in cases {
            let e = TraitDefinition::parse(&value).unwrap_err();
            assert_eq!(e.code(), "22023");
            assert!(e.to_string().starts_with(message), "{e}");
        }
    }
}
