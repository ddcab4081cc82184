//! Splits of a segment into groups (SPEC 17): the groups a user asks for,
//! as ranges of the 100 buckets of `segments.split_bucket`.

use serde_json::Value;

use crate::catalog::SplitGroup;
use crate::error::SegmentsError;

/// The groups asked for (`{"control": 10, "email": 90}`) in bucket order:
/// by name, each covering as many of the 100 buckets as its percentage.
pub fn parse_groups(groups: &Value) -> Result<Vec<SplitGroup>, SegmentsError> {
    let Value::Object(map) = groups else {
        return Err(SegmentsError::InvalidParameter(format!(
            "groups must be a JSON object of group names and whole percentages, like {{\"control\": 10, \"treatment\": 90}}, not {groups}"
        )));
    };
    if map.len() < 2 {
        return Err(SegmentsError::InvalidParameter(
            "groups: a split needs at least two groups".into(),
        ));
    }
    let mut named: Vec<(&String, i64)> = Vec::with_capacity(map.len());
    for (name, percent) in map {
        if name.trim().is_empty() || name.len() > 63 {
            return Err(SegmentsError::InvalidParameter(format!(
                "groups: group name \"{name}\" must be 1 to 63 characters, not blank"
            )));
        }
        match percent.as_i64() {
            Some(p) if (1..=99).contains(&p) && percent.is_i64() => named.push((name, p)),
            _ => {
                return Err(SegmentsError::InvalidParameter(format!(
                    "groups.{name}: must be a whole percentage from 1 to 99, not {percent}"
                )))
            }
        }
    }
    let total: i64 = named.iter().map(|(_, p)| p).sum();
    if total != 100 {
        return Err(SegmentsError::InvalidParameter(format!(
            "groups: the percentages sum to {total}, not 100"
        )));
    }
    named.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut low = 0;
    Ok(named
        .into_iter()
        .map(|(name, percent)| {
            let group = SplitGroup {
                name: name.clone(),
                low: low as i32,
                high: (low + percent - 1) as i32,
            };
            low += percent;
            group
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn groups_cover_the_hundred_buckets_in_name_order() {
        let groups = parse_groups(&json!({"sms": 45, "control": 10, "email": 45})).unwrap();
        let ranges: Vec<(&str, i32, i32)> = groups
            .iter()
            .map(|g| (g.name.as_str(), g.low, g.high))
            .collect();
        assert_eq!(
            ranges,
            vec![("control", 0, 9), ("email", 10, 54), ("sms", 55, 99)]
        );
    }

    #[test]
    fn bad_groups_are_refused() {
        for (groups, message) in [
            (json!([10, 90]), "groups must be a JSON object"),
            (json!({"all": 100}), "at least two groups"),
            (json!({"a": 10, "b": 80}), "sum to 90, not 100"),
            (
                json!({"a": 10.5, "b": 89.5}),
                "groups.a: must be a whole percentage",
            ),
            (
                json!({"a": 0, "b": 100}),
                "groups.a: must be a whole percentage",
            ),
            (json!({" ": 50, "b": 50}), "must be 1 to 63 characters"),
        ] {
            let e = parse_groups(&groups).unwrap_err().to_string();
            assert!(e.contains(message), "{groups}: {e}");
        }
    }
}
