//! Durations and windows measured back from the reference time: `"30
//! days"`, and `{"from": "90 days", "to": "30 days"}` for a window that
//! ends in the past (SPEC 16).

use serde_json::Value;

use crate::error::{invalid, SegmentsError};

/// A duration such as `30 days`, measured back or forward from the
/// reference time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelativeDuration {
    pub amount: i64,
    pub unit: DurationUnit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurationUnit {
    Hours,
    Days,
    Weeks,
    Months,
    Years,
}

impl RelativeDuration {
    pub fn parse(text: &str) -> Option<Self> {
        let mut words = text.split_whitespace();
        let amount: i64 = words.next()?.parse().ok()?;
        let unit = match words.next()?.to_ascii_lowercase().as_str() {
            "hour" | "hours" => DurationUnit::Hours,
            "day" | "days" => DurationUnit::Days,
            "week" | "weeks" => DurationUnit::Weeks,
            "month" | "months" => DurationUnit::Months,
            "year" | "years" => DurationUnit::Years,
            _ => return None,
        };
        // At most 1000 years, so that the window's edge is always a valid
        // timestamp, whatever the reference time.
        let hours_per_unit: i64 = match unit {
            DurationUnit::Hours => 1,
            DurationUnit::Days => 24,
            DurationUnit::Weeks => 24 * 7,
            DurationUnit::Months => 24 * 31,
            DurationUnit::Years => 24 * 366,
        };
        if words.next().is_some()
            || amount < 0
            || amount.saturating_mul(hours_per_unit) > 1000 * 24 * 366
        {
            return None;
        }
        Some(RelativeDuration { amount, unit })
    }

    /// The duration as a PostgreSQL interval literal body, e.g. `30 days`.
    pub fn interval_text(&self) -> String {
        let unit = match self.unit {
            DurationUnit::Hours => "hours",
            DurationUnit::Days => "days",
            DurationUnit::Weeks => "weeks",
            DurationUnit::Months => "months",
            DurationUnit::Years => "years",
        };
        format!("{} {unit}", self.amount)
    }
}

impl RelativeDuration {
    /// The duration in hours, months as 30 days and years as 365: only to
    /// check that a window's `from` reaches further back than its `to`.
    fn approximate_hours(&self) -> i64 {
        let per_unit = match self.unit {
            DurationUnit::Hours => 1,
            DurationUnit::Days => 24,
            DurationUnit::Weeks => 24 * 7,
            DurationUnit::Months => 24 * 30,
            DurationUnit::Years => 24 * 365,
        };
        self.amount * per_unit
    }
}

/// What a duration's error says it should look like.
pub const DURATION_SHAPE: &str =
    "a duration such as \"30 days\" (hours, days, weeks, months, years; at most 1000 years)";

/// A span of time that ends at the reference time (`to` is None) or
/// `to` before it, and starts `from` before it. Both ends are included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: RelativeDuration,
    pub to: Option<RelativeDuration>,
}

impl Window {
    /// Parses `"30 days"` or `{"from": "90 days", "to": "30 days"}`;
    /// refuses (22023, naming `path`) anything else, and a window whose
    /// `from` does not reach further back than its `to`.
    pub fn parse(path: &str, value: &Value) -> Result<Window, SegmentsError> {
        let duration = |path: &str, value: Option<&Value>| match value {
            Some(Value::String(text)) => RelativeDuration::parse(text)
                .ok_or_else(|| invalid(path, format!("must be {DURATION_SHAPE}"))),
            _ => Err(invalid(path, format!("must be {DURATION_SHAPE}"))),
        };
        match value {
            Value::String(_) => Ok(Window {
                from: duration(path, Some(value))?,
                to: None,
            }),
            Value::Object(object) => {
                if let Some(key) = object.keys().find(|k| *k != "from" && *k != "to") {
                    return Err(invalid(
                        path,
                        format!("unknown key \"{key}\": a window has \"from\" and \"to\""),
                    ));
                }
                let from = duration(&format!("{path}.from"), object.get("from"))?;
                let to = duration(&format!("{path}.to"), object.get("to"))?;
                if from.approximate_hours() <= to.approximate_hours() {
                    return Err(invalid(
                        path,
                        format!(
                            "\"from\" ({}) must reach further back than \"to\" ({})",
                            from.interval_text(),
                            to.interval_text()
                        ),
                    ));
                }
                Ok(Window { from, to: Some(to) })
            }
            _ => Err(invalid(
                path,
                format!(
                    "must be {DURATION_SHAPE}, or {{\"from\": \"90 days\", \"to\": \"30 days\"}}"
                ),
            )),
        }
    }

    /// The window as JSON text, as a definition would write it.
    pub fn describe(&self) -> String {
        match &self.to {
            None => self.from.interval_text(),
            Some(to) => format!(
                "from {} to {} ago",
                self.from.interval_text(),
                to.interval_text()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_window_is_a_duration_or_from_and_to() {
        let plain = Window::parse("w", &json!("30 days")).unwrap();
        assert_eq!(plain.from.interval_text(), "30 days");
        assert_eq!(plain.to, None);
        let past = Window::parse("w", &json!({"from": "90 days", "to": "30 days"})).unwrap();
        assert_eq!(past.to.unwrap().interval_text(), "30 days");
        assert_eq!(past.describe(), "from 90 days to 30 days ago");
        let months = Window::parse("w", &json!({"from": "3 months", "to": "2 weeks"})).unwrap();
        assert_eq!(months.from.interval_text(), "3 months");
    }

    #[test]
    fn a_window_must_reach_back_further_than_it_ends() {
        let e = Window::parse(
            "rules[0].where.value",
            &json!({"from": "30 days", "to": "90 days"}),
        )
        .unwrap_err();
        assert_eq!(e.code(), "22023");
        assert_eq!(
            e.to_string(),
            "rules[0].where.value: \"from\" (30 days) must reach further back than \"to\" (90 days)"
        );
        let same = Window::parse("w", &json!({"from": "1 months", "to": "30 days"})).unwrap_err();
        assert!(same.to_string().contains("further back"), "{same}");
        let missing = Window::parse("w", &json!({"from": "30 days"})).unwrap_err();
        assert!(
            missing.to_string().starts_with("w.to: must be a duration"),
            "{missing}"
        );
        let extra =
            Window::parse("w", &json!({"from": "3 days", "to": "1 days", "til": 1})).unwrap_err();
        assert!(extra.to_string().contains("unknown key \"til\""), "{extra}");
        let number = Window::parse("w", &json!(30)).unwrap_err();
        assert!(
            number.to_string().starts_with("w: must be a duration"),
            "{number}"
        );
    }
}
