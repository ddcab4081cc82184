//! Validation of a condition against the column it tests: does the operator
//! make sense for the column's type, and is the value a valid literal of it.
//! A value that passes here can be cast by Postgres without an error, so a
//! saved definition does not fail at refresh time because of its values.

use serde_json::Value;

use crate::catalog::{Column, ColumnKind};
use crate::definition::Op;
use crate::error::{invalid, SegmentsError};

/// Refuses an operator that does not apply to the column's type.
pub fn check_op(
    path: &str,
    column: &Column,
    op: Op,
    ignore_case: bool,
) -> Result<(), SegmentsError> {
    use ColumnKind::*;
    let kind = column.kind;
    let fits = match op {
        Op::IsNull | Op::IsNotNull => true,
        Op::Eq | Op::Ne | Op::In | Op::NotIn => true,
        Op::Lt | Op::Lte | Op::Gt | Op::Gte | Op::Between => {
            matches!(kind, Numeric | Text | Date | Timestamp | TimestampTz)
        }
        Op::Contains | Op::NotContains | Op::StartsWith | Op::EndsWith => kind == Text,
        Op::IsTrue | Op::IsFalse => kind == Boolean,
        Op::InLast
        | Op::NotInLast
        | Op::InNext
        | Op::Before
        | Op::After
        | Op::On
        | Op::IsAnniversary
        | Op::IsToday => kind.is_temporal(),
        // Ranks order the records: numbers and times, not text (whose
        // order depends on a collation) or booleans.
        Op::TopPercent | Op::BottomPercent | Op::Top | Op::Bottom => {
            matches!(kind, Numeric | Date | Timestamp | TimestampTz)
        }
    };
    if !fits {
        return Err(invalid(
            &format!("{path}.op"),
            format!(
                "operator {} does not apply to column \"{}\" of type {}",
                op.name(),
                column.name,
                column.type_sql
            ),
        ));
    }
    if ignore_case && kind != Text {
        return Err(invalid(
            &format!("{path}.ignore_case"),
            format!(
                "ignore_case applies to text columns, and \"{}\" is {}",
                column.name, column.type_sql
            ),
        ));
    }
    Ok(())
}

/// The text of a literal for `column`, checked against its type.
pub fn literal_text(path: &str, column: &Column, value: &Value) -> Result<String, SegmentsError> {
    let wrong = |expected: &str| {
        invalid(
            path,
            format!(
                "{value} is not {expected} (column \"{}\" is {})",
                column.name, column.type_sql
            ),
        )
    };
    match column.kind {
        // A JSON number keeps its text exactly (serde_json's
        // arbitrary_precision): 123456789012345678901234567890 and
        // 0.30000000000000001 reach the SQL literal digit for digit.
        ColumnKind::Numeric => match value {
            Value::Number(n) if n.as_f64().is_some_and(f64::is_finite) => Ok(n.to_string()),
            Value::String(s) if is_number(s) => Ok(s.trim().to_string()),
            _ => Err(wrong("a number")),
        },
        ColumnKind::Boolean => match value {
            Value::Bool(b) => Ok(b.to_string()),
            Value::String(s) if s == "true" || s == "false" => Ok(s.clone()),
            _ => Err(wrong("true or false")),
        },
        ColumnKind::Date => match value {
            Value::String(s) if is_date(s) => Ok(s.clone()),
            _ => Err(wrong("a date (YYYY-MM-DD)")),
        },
        ColumnKind::Timestamp | ColumnKind::TimestampTz => match value {
            Value::String(s) if is_date(s) || is_timestamp(s) => Ok(s.clone()),
            _ => Err(wrong("a date or timestamp (YYYY-MM-DD[ HH:MM[:SS]][+TZ])")),
        },
        ColumnKind::Uuid => match value {
            Value::String(s) if is_uuid(s) => Ok(s.clone()),
            _ => Err(wrong("a uuid")),
        },
        ColumnKind::Text | ColumnKind::Other => match value {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => Err(wrong("a string")),
        },
    }
}

fn is_number(s: &str) -> bool {
    let s = s.trim();
    !s.is_empty() && s.parse::<f64>().is_ok_and(f64::is_finite)
}

fn digits(s: &str, n: usize) -> Option<u32> {
    (s.len() == n && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// `YYYY-MM-DD` with a real day of a real month.
pub fn is_date(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let [y, m, d] = parts[..] else { return false };
    let (Some(year), Some(month), Some(day)) = (digits(y, 4), digits(m, 2), digits(d, 2)) else {
        return false;
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days_in_month).contains(&day)
}

/// `YYYY-MM-DD[T ]HH:MM[:SS[.ffffff]]` with an optional `Z` or `±HH[:MM]`.
pub fn is_timestamp(s: &str) -> bool {
    if s.len() < 16 || !s.is_char_boundary(10) {
        return false;
    }
    let (date, rest) = s.split_at(10);
    if !is_date(date) || !rest.starts_with(['T', ' ']) {
        return false;
    }
    let rest = &rest[1..];
    let (time, zone) = match rest.find(['Z', '+', '-']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let time_ok = {
        let (hms, fraction) = match time.split_once('.') {
            Some((hms, f)) => (hms, Some(f)),
            None => (time, None),
        };
        let fields: Vec<&str> = hms.split(':').collect();
        let ranges = [24, 60, 60];
        (fields.len() == 2 || fields.len() == 3)
            && fields
                .iter()
                .zip(ranges)
                .all(|(f, max)| digits(f, 2).is_some_and(|v| v < max))
            && fraction.is_none_or(|f| {
                !f.is_empty() && f.len() <= 6 && f.bytes().all(|b| b.is_ascii_digit())
            })
    };
    let zone_ok = match zone {
        "" | "Z" => true,
        z => {
            let offset = &z[1..];
            let (h, m) = offset.split_once(':').unwrap_or((offset, "00"));
            digits(h, 2).is_some_and(|v| v <= 15) && digits(m, 2).is_some_and(|v| v < 60)
        }
    };
    time_ok && zone_ok
}

pub fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn col(kind: ColumnKind, type_sql: &str) -> Column {
        Column {
            name: "c".into(),
            type_sql: type_sql.into(),
            kind,
            base_type_sql: type_sql.split('(').next().unwrap_or(type_sql).into(),
            refused: None,
        }
    }

    #[test]
    fn dates_and_timestamps() {
        assert!(is_date("2024-02-29"));
        assert!(!is_date("2023-02-29"));
        assert!(!is_date("2024-13-01"));
        assert!(!is_date("24-01-01"));
        assert!(!is_date("2024-01-01'; DROP"));
        assert!(is_timestamp("2026-11-01 12:30"));
        assert!(is_timestamp("2026-11-01T12:30:59.123456Z"));
        assert!(is_timestamp("2026-11-01 12:30:00+02:00"));
        assert!(is_timestamp("2026-11-01 12:30:00-05"));
        assert!(!is_timestamp("2026-11-01 25:00"));
        assert!(!is_timestamp("2026-11-01 12:30:00 bogus"));
        assert!(!is_timestamp("2026-11-01ü12:30"));
    }

    #[test]
    fn literals_follow_the_column_type() {
        let num = col(ColumnKind::Numeric, "integer");
        assert_eq!(literal_text("p", &num, &json!(42)).unwrap(), "42");
        assert_eq!(literal_text("p", &num, &json!(" 4.5 ")).unwrap(), "4.5");
        let e = literal_text("rules[0].where.value", &num, &json!("abc")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "rules[0].where.value: \"abc\" is not a number (column \"c\" is integer)"
        );
        assert!(literal_text("p", &col(ColumnKind::Boolean, "boolean"), &json!(1)).is_err());
        assert!(literal_text("p", &col(ColumnKind::Date, "date"), &json!("2026-02-30")).is_err());
        assert!(literal_text("p", &col(ColumnKind::Uuid, "uuid"), &json!("not-a-uuid")).is_err());
        assert_eq!(
            literal_text("p", &col(ColumnKind::Text, "text"), &json!(7)).unwrap(),
            "7"
        );
    }

    #[test]
    fn operators_must_fit_the_type() {
        let boolean = col(ColumnKind::Boolean, "boolean");
        assert!(check_op("p", &boolean, Op::IsTrue, false).is_ok());
        let e = check_op("p", &boolean, Op::Contains, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "p.op: operator contains does not apply to column \"c\" of type boolean"
        );
        let number = col(ColumnKind::Numeric, "integer");
        assert!(check_op("p", &number, Op::InLast, false).is_err());
        assert!(check_op("p", &number, Op::Eq, true).is_err());
        assert!(check_op(
            "p",
            &col(ColumnKind::Date, "date"),
            Op::IsAnniversary,
            false
        )
        .is_ok());
    }
}
