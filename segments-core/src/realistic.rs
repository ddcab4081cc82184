//! A realistic segment list for benchmarks: what a marketing team's
//! thousands of segments look like, not a few dozen conditions repeated.
//!
//! Every campaign has thresholds of its own, drawn from the columns' real
//! distributions (the `Profile` the benchmark reads from the data), so
//! nearly every segment's numbers are distinct; `in` lists of 1 to 20
//! values; `in_last` windows from 1 to 365 days; related aggregates with
//! their own windows and thresholds; some segments built on earlier ones,
//! some funnels, some conditions on traits; 1 to 6 rules combined by
//! union, intersect and except. Seeded: one seed, one list.

use crate::generate::Rng;

/// A JSON string of `text`.
fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// What the generator knows about the data: the entity's columns and
/// their values, the related tables, traits and funnels it may use.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub entity: String,
    /// Number columns: name, whether integer, quantiles ascending.
    pub numbers: Vec<(String, bool, Vec<f64>)>,
    /// Text columns: name, values (most frequent first).
    pub categories: Vec<(String, Vec<String>)>,
    /// Date and timestamp columns, for windows.
    pub times: Vec<String>,
    /// Boolean columns.
    pub flags: Vec<String>,
    pub related: Vec<RelatedProfile>,
    /// Number traits: name, quantiles ascending.
    pub traits: Vec<(String, Vec<f64>)>,
    /// A related table of events for funnels: name, its event column and
    /// the funnel's event values in order, the column steps share.
    pub funnel: Option<(String, String, Vec<String>, Option<String>)>,
}

/// A related table with a time column.
#[derive(Debug, Clone, Default)]
pub struct RelatedProfile {
    pub name: String,
    /// A number column to sum, with quantiles of one row's value.
    pub amount: Option<(String, Vec<f64>)>,
    /// A text column to filter rows by, with its values.
    pub kind: Option<(String, Vec<String>)>,
}

/// `count` segment definitions `(name, definition JSON)` for `profile`,
/// the same for the same seed. A segment refers only to segments before
/// it in the list (create them in order).
pub fn segment_list(profile: &Profile, count: usize, seed: u64) -> Vec<(String, String)> {
    let mut rng = Rng(seed.max(1));
    (0..count)
        .map(|i| {
            let name = format!("generated {i}");
            let rules = 1 + rng.below(6);
            let rules: Vec<String> = (0..rules)
                .map(|r| {
                    let condition = conditions(&mut rng, profile, i);
                    if r == 0 {
                        format!(r#"{{"where":{condition}}}"#)
                    } else {
                        let combine = rng.pick(&["union", "intersect", "intersect", "except"]);
                        format!(r#"{{"combine":"{combine}","where":{condition}}}"#)
                    }
                })
                .collect();
            let definition = format!(
                r#"{{"entity":{},"rules":[{}]}}"#,
                json_string(&profile.entity),
                rules.join(",")
            );
            (name, definition)
        })
        .collect()
}

/// One rule's condition: one to three conditions, all of which hold.
fn conditions(rng: &mut Rng, profile: &Profile, index: usize) -> String {
    let parts: Vec<String> = (0..1 + rng.below(3))
        .map(|_| condition(rng, profile, index))
        .collect();
    if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!(r#"{{"all":[{}]}}"#, parts.join(","))
    }
}

/// A value between two neighbouring quantiles: nearly always a number no
/// other segment uses, distributed as the data is.
fn draw(rng: &mut Rng, quantiles: &[f64], integer: bool) -> String {
    if quantiles.is_empty() {
        return "0".into();
    }
    let at = rng.below(quantiles.len());
    let low = quantiles[at];
    let high = quantiles.get(at + 1).copied().unwrap_or(low);
    let value = low + (high - low) * (rng.below(1000) as f64 / 1000.0);
    if integer {
        format!("{}", value.round() as i64)
    } else {
        format!("{:.2}", value)
    }
}

/// One condition, in the proportions of real segment lists: mostly
/// attributes, then behaviour, a few references, traits and funnels.
fn condition(rng: &mut Rng, profile: &Profile, index: usize) -> String {
    let roll = rng.below(100);
    match roll {
        0..=34 if !profile.numbers.is_empty() => {
            let (column, integer, quantiles) = rng.pick(&profile.numbers);
            let column = json_string(column);
            match rng.below(5) {
                0 => {
                    let (a, b) = (
                        draw(rng, quantiles, *integer),
                        draw(rng, quantiles, *integer),
                    );
                    let (low, high) =
                        if a.parse::<f64>().unwrap_or(0.0) <= b.parse::<f64>().unwrap_or(0.0) {
                            (a, b)
                        } else {
                            (b, a)
                        };
                    format!(r#"{{"attribute":{column},"op":"between","value":[{low},{high}]}}"#)
                }
                k => {
                    let op = ["gt", "gte", "lt", "lte"][k - 1];
                    let value = draw(rng, quantiles, *integer);
                    format!(r#"{{"attribute":{column},"op":"{op}","value":{value}}}"#)
                }
            }
        }
        35..=59 if !profile.categories.is_empty() => {
            let (column, values) = rng.pick(&profile.categories);
            let column = json_string(column);
            let count = (1 + rng.below(20)).min(values.len().max(1));
            let mut chosen: Vec<&String> = Vec::new();
            while chosen.len() < count && !values.is_empty() {
                let value = rng.pick(values);
                if !chosen.contains(&value) {
                    chosen.push(value);
                }
            }
            if chosen.len() == 1 {
                format!(
                    r#"{{"attribute":{column},"op":"eq","value":{}}}"#,
                    json_string(chosen[0])
                )
            } else {
                let list: Vec<String> = chosen.iter().map(|v| json_string(v)).collect();
                format!(
                    r#"{{"attribute":{column},"op":"in","value":[{}]}}"#,
                    list.join(",")
                )
            }
        }
        60..=74 if !profile.times.is_empty() => {
            let column: &String = rng.pick(&profile.times);
            let column = json_string(column);
            let days = 1 + rng.below(365);
            let op = if rng.chance(80) {
                "in_last"
            } else {
                "not_in_last"
            };
            format!(r#"{{"attribute":{column},"op":"{op}","value":"{days} days"}}"#)
        }
        75..=78 if !profile.flags.is_empty() => {
            let column: &String = rng.pick(&profile.flags);
            let column = json_string(column);
            let op = if rng.chance(50) {
                "is_true"
            } else {
                "is_false"
            };
            format!(r#"{{"attribute":{column},"op":"{op}"}}"#)
        }
        79..=90 if !profile.related.is_empty() => {
            let table = rng.pick(&profile.related);
            related(rng, table)
        }
        91..=93 if index > 0 => {
            let other = rng.below(index);
            let member = if rng.chance(70) {
                ""
            } else {
                r#","member":false"#
            };
            format!(r#"{{"segment":"generated {other}"{member}}}"#)
        }
        94..=96 if !profile.traits.is_empty() => {
            let (name, quantiles) = rng.pick(&profile.traits);
            let op = rng.pick(&["gt", "gte", "lt", "lte"]);
            format!(
                r#"{{"trait":{},"op":"{op}","value":{}}}"#,
                json_string(name),
                draw(rng, quantiles, false)
            )
        }
        97..=99 if profile.funnel.is_some() => funnel(rng, profile.funnel.as_ref().unwrap()),
        _ => match profile.numbers.first() {
            Some((column, integer, quantiles)) => format!(
                r#"{{"attribute":{},"op":"gte","value":{}}}"#,
                json_string(column),
                draw(rng, quantiles, *integer)
            ),
            None => r#"{"all":[]}"#.into(),
        },
    }
}

/// A related condition: recent activity, a count or a sum over a window
/// of its own, sometimes only rows of one kind.
fn related(rng: &mut Rng, table: &RelatedProfile) -> String {
    let name = json_string(&table.name);
    let days = 1 + rng.below(365);
    let filter = match &table.kind {
        Some((column, values)) if rng.chance(30) => format!(
            r#","where":{{"attribute":{},"op":"eq","value":{}}}"#,
            json_string(column),
            json_string(rng.pick::<String>(values))
        ),
        _ => String::new(),
    };
    match (rng.below(3), &table.amount) {
        (0, _) => format!(r#"{{"related":{name},"within":"{days} days"{filter}}}"#),
        (1, Some((column, quantiles))) => {
            // A sum over several rows: a row's value times a few.
            let times = 1 + rng.below(5);
            let value: f64 = draw(rng, quantiles, false).parse().unwrap_or(0.0) * times as f64;
            format!(
                r#"{{"related":{name},"aggregate":"sum","attribute":{},"within":"{days} days"{filter},"op":"gt","value":{value:.2}}}"#,
                json_string(column)
            )
        }
        _ => {
            let at_least = 1 + rng.below(10);
            format!(
                r#"{{"related":{name},"aggregate":"count","within":"{days} days"{filter},"op":"gte","value":{at_least}}}"#
            )
        }
    }
}

/// A funnel: the first steps of the event path, the last perhaps absent,
/// each within hours or days of the one before, the same product.
fn funnel(
    rng: &mut Rng,
    (table, column, steps, same): &(String, String, Vec<String>, Option<String>),
) -> String {
    let count = (2 + rng.below(2)).min(steps.len());
    let absent = rng.chance(40);
    let parts: Vec<String> = (0..count)
        .map(|i| {
            let mut tests = vec![format!(
                r#"{{"attribute":{},"op":"eq","value":{}}}"#,
                json_string(column),
                json_string(&steps[i])
            )];
            if let (Some(same), true) = (same, i > 0) {
                tests.push(format!(
                    r#"{{"attribute":{0},"op":"eq","value":{{"step":{i},"attribute":{0}}}}}"#,
                    json_string(same)
                ));
            }
            let mut step = format!(r#"{{"where":{{"all":[{}]}}"#, tests.join(","));
            if i > 0 {
                step.push_str(&format!(r#","within":"{} days""#, 1 + rng.below(7)));
            }
            if i > 0 && i == count - 1 && absent {
                step.push_str(r#","absent":true"#);
            }
            step.push('}');
            step
        })
        .collect();
    format!(
        r#"{{"related":{},"within":"{} days","sequence":[{}]}}"#,
        json_string(table),
        7 + rng.below(60),
        parts.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::Definition;

    fn profile() -> Profile {
        Profile {
            entity: "customer".into(),
            numbers: vec![
                ("age".into(), true, vec![18.0, 25.0, 33.0, 41.0, 52.0, 80.0]),
                (
                    "lifetime_value".into(),
                    false,
                    vec![0.0, 120.5, 480.0, 2300.0, 9999.0],
                ),
            ],
            categories: vec![(
                "country".into(),
                ["DE", "FR", "US", "GB", "ES", "IT", "NL", "SE", "PL", "BR"]
                    .map(String::from)
                    .to_vec(),
            )],
            times: vec!["signed_up_at".into()],
            flags: vec!["unsubscribed".into()],
            related: vec![RelatedProfile {
                name: "orders".into(),
                amount: Some(("amount".into(), vec![5.0, 40.0, 200.0, 500.0])),
                kind: Some(("channel".into(), vec!["web".into(), "store".into()])),
            }],
            traits: vec![("lifetime_orders".into(), vec![0.0, 1.0, 3.0, 12.0])],
            funnel: Some((
                "product_events".into(),
                "event_type".into(),
                vec!["viewed".into(), "added_to_cart".into(), "purchased".into()],
                Some("product_id".into()),
            )),
        }
    }

    #[test]
    fn the_list_parses_is_seeded_and_mostly_distinct() {
        let list = segment_list(&profile(), 2000, 7);
        assert_eq!(list, segment_list(&profile(), 2000, 7));
        assert_ne!(list, segment_list(&profile(), 2000, 8));
        for (_, definition) in &list {
            Definition::parse(&serde_json::from_str(definition).unwrap())
                .unwrap_or_else(|e| panic!("{definition}: {e:?}"));
        }
        let mut distinct: Vec<&String> = list.iter().map(|(_, d)| d).collect();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > 1990, "{} distinct", distinct.len());
        let all = list.iter().map(|(_, d)| d.as_str()).collect::<String>();
        for construct in [
            "\"between\"",
            "\"in\"",
            "\"in_last\"",
            "\"sum\"",
            "\"count\"",
            "\"segment\"",
            "\"trait\"",
            "\"sequence\"",
            "\"absent\"",
            "\"except\"",
            "\"union\"",
        ] {
            assert!(all.contains(construct), "no {construct}");
        }
    }
}
