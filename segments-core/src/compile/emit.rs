//! The SQL text of conditions: comparisons with typed literals, windows
//! relative to the reference time, and conditions on related tables. Every
//! operator and function is named by schema.

use serde_json::Value;

use crate::catalog::{Column, ColumnKind, Table};
use crate::definition::{
    AttributeTest, Condition, ConditionKind, Op, Operand, RelativeDuration, Window,
};
use crate::error::{invalid, Reported, SegmentsError};
use crate::spelling::perhaps;
use crate::sql::{ident, literal, op};
use crate::validate::{check_op, literal_text};

pub(super) fn join_sql(parts: &[String], operator: &str) -> String {
    if parts.len() == 1 {
        return parts[0].clone();
    }
    format!("({})", parts.join(&format!(" {operator} ")))
}

/// Where a row condition is evaluated: the table's alias, and inside a
/// sequence step the aliases of the earlier steps' rows (`steps[0]` is
/// step 1), which `{"step": K, "attribute": C}` values read.
#[derive(Clone, Copy)]
pub(super) struct RowScope<'s> {
    pub alias: &'s str,
    pub steps: &'s [String],
}

impl RowScope<'static> {
    /// A related table's row `r`, outside any sequence.
    pub(super) const RELATED: RowScope<'static> = RowScope {
        alias: "r",
        steps: &[],
    };
}

/// A condition on one row of `table` (a related table's, or the entity's
/// in a rank's eligible condition): only that table's columns.
pub(super) fn related_condition(
    condition: &Condition,
    scope: RowScope,
    table: &Table,
    what: &str,
    reference: &str,
) -> Result<String, Reported> {
    Ok(match &condition.kind {
        ConditionKind::All(items) | ConditionKind::Any(items) => {
            let sqls = items
                .iter()
                .map(|c| related_condition(c, scope, table, what, reference))
                .collect::<Result<Vec<_>, _>>()?;
            join_sql(
                &sqls,
                if matches!(condition.kind, ConditionKind::All(_)) {
                    "AND"
                } else {
                    "OR"
                },
            )
        }
        ConditionKind::Not(inner) => format!(
            "({}) IS NOT TRUE",
            related_condition(inner, scope, table, what, reference)?
        ),
        ConditionKind::Attribute(test) if test.op.is_rank() => {
            return Err(invalid(
                &format!("{}.op", condition.path),
                format!(
                    "{} ranks the entity's records: it applies to the entity's attributes and traits, not to the rows of {what}",
                    test.op.name()
                ),
            )
            .into())
        }
        ConditionKind::Attribute(test) => match &test.value {
            Operand::StepRef { step, column } => {
                step_ref_sql(&condition.path, scope, table, what, test, *step, column)?
            }
            _ => attribute_sql(&condition.path, scope.alias, table, what, test, reference)?,
        },
        ConditionKind::Related(_) | ConditionKind::Segment(_) | ConditionKind::Trait(_) => {
            return Err(invalid(
                &condition.path,
                format!("inside \"related\", conditions test columns of {what} only"),
            )
            .into())
        }
    })
}

/// The literal for `column`, typed so that Postgres compares it the right
/// way and cheaply: the column's own type, except a fraction against an
/// integer column, which is numeric (so `4.5` works on an age).
pub(super) fn typed(path: &str, column: &Column, value: &Value) -> Result<String, SegmentsError> {
    let text = literal_text(path, column, value)?;
    Ok(format!(
        "{}::{}",
        literal(&text),
        literal_type(column, &text)
    ))
}

/// The type a literal for `column` takes: the column's type without its
/// modifier, so that `varchar(5) eq "abcdefgh"` or `numeric(5,2) gt 4.555`
/// compare the value as written, never cut or rounded; and numeric where
/// an integer literal is a fraction or out of the column type's range, so
/// that `int lt 3000000000` is a comparison, never a failed refresh.
pub(super) fn literal_type<'c>(column: &'c Column, text: &str) -> &'c str {
    let fits = match column.base_type_sql.as_str() {
        "smallint" => Some(text.parse::<i16>().is_ok()),
        "integer" => Some(text.parse::<i32>().is_ok()),
        "bigint" => Some(text.parse::<i64>().is_ok()),
        _ => None,
    };
    match (fits, column.base_type_sql.as_str()) {
        (Some(false), _) => "pg_catalog.numeric",
        // Without a length these would mean char(1) and cut the value.
        (_, "character") => "pg_catalog.bpchar",
        (_, "character varying") => "pg_catalog.varchar",
        (_, "bit") => "pg_catalog.varbit",
        (_, base) => base,
    }
}

/// `low <= column <= high` with both operators named by schema. (Every
/// `OPERATOR(...)` has the same precedence, so operands are atoms or
/// parenthesized.)
pub(super) fn between(column: &str, low: &str, high: &str) -> String {
    format!(
        "({column} {} {low} AND {column} {} {high})",
        op(">="),
        op("<=")
    )
}

/// The reference time converted to the column's kind.
pub(super) fn reference_as(kind: ColumnKind, timestamptz_sql: &str) -> String {
    match kind {
        ColumnKind::Date => format!("({timestamptz_sql})::pg_catalog.date"),
        ColumnKind::Timestamp => format!("({timestamptz_sql})::pg_catalog.timestamp"),
        _ => timestamptz_sql.to_string(),
    }
}

pub(super) fn interval(duration: &RelativeDuration) -> String {
    format!(
        "{}::pg_catalog.interval",
        literal(&duration.interval_text())
    )
}

/// The window's two edges in the column's kind: (earliest, latest).
pub(super) fn window_edges(kind: ColumnKind, window: &Window, reference: &str) -> (String, String) {
    let back = |d: &RelativeDuration| {
        reference_as(kind, &format!("({reference} {} {})", op("-"), interval(d)))
    };
    let to = match &window.to {
        None => reference_as(kind, reference),
        Some(to) => back(to),
    };
    (back(&window.from), to)
}

/// The column's value falls inside the window, both ends included.
pub(super) fn in_last_sql(
    column_sql: &str,
    kind: ColumnKind,
    window: &Window,
    reference: &str,
) -> String {
    let (from, to) = window_edges(kind, window, reference);
    between(column_sql, &from, &to)
}

/// `in_last_sql` with each edge computed once per query (an InitPlan), not
/// per row: the edges are reference-time arithmetic, which PostgreSQL does
/// not fold (it is only stable), and a scan sharing hundreds of windows
/// would compute them for every row.
pub(super) fn in_window_once_sql(
    column_sql: &str,
    kind: ColumnKind,
    window: &Window,
    reference: &str,
) -> String {
    let (from, to) = window_edges(kind, window, reference);
    between(
        column_sql,
        &format!("(SELECT {from})"),
        &format!("(SELECT {to})"),
    )
}

/// `{"step": K, "attribute": C}`: the step row's column compared with
/// column C of step K's row, both of the same related table.
fn step_ref_sql(
    path: &str,
    scope: RowScope,
    table: &Table,
    what: &str,
    test: &AttributeTest,
    step: usize,
    other: &str,
) -> Result<String, Reported> {
    let vpath = format!("{path}.value");
    let Some(step_alias) = scope.steps.get(step.wrapping_sub(1)) else {
        return Err(invalid(
            &vpath,
            if scope.steps.is_empty() {
                "a step reference ({\"step\": K, ...}) is only allowed in the steps of a sequence"
                    .to_string()
            } else {
                format!("step {step} is not an earlier step of this sequence")
            },
        )
        .into());
    };
    let find = |name: &str, at: &str| {
        table.column(name).ok_or_else(|| {
            SegmentsError::UndefinedColumn(format!(
                "{at}: column \"{name}\" does not exist on {what}"
            ))
            .with_hint(perhaps(name, table.column_names()))
        })
    };
    let column = find(&test.column, path)?;
    column.check_usable(path, what)?;
    let earlier = find(other, &format!("{vpath}.attribute"))?;
    earlier.check_usable(&format!("{vpath}.attribute"), what)?;
    check_op(path, column, test.op, test.ignore_case)?;
    if column.kind != earlier.kind {
        return Err(invalid(
            &vpath,
            format!(
                "column \"{}\" ({}) cannot be compared with column \"{}\" ({})",
                column.name, column.type_sql, earlier.name, earlier.type_sql
            ),
        )
        .into());
    }
    let symbol = match test.op {
        Op::Eq => "=",
        Op::Ne => "<>",
        Op::Lt | Op::Before => "<",
        Op::Lte => "<=",
        Op::Gt | Op::After => ">",
        Op::Gte => ">=",
        other => {
            return Err(invalid(
                &format!("{path}.op"),
                format!(
                    "a step reference is compared with eq, ne, lt, lte, gt, gte, before or after, not {}",
                    other.name()
                ),
            )
            .into())
        }
    };
    let fold = |sql: String| {
        if test.ignore_case {
            format!("pg_catalog.lower({sql})")
        } else {
            sql
        }
    };
    Ok(format!(
        "{} {} {}",
        fold(format!("{}.{}", scope.alias, ident(&column.name))),
        op(symbol),
        fold(format!("{step_alias}.{}", ident(&earlier.name)))
    ))
}

pub fn attribute_sql(
    path: &str,
    alias: &str,
    table: &Table,
    what: &str,
    test: &AttributeTest,
    reference: &str,
) -> Result<String, Reported> {
    let column = table.column(&test.column).ok_or_else(|| {
        SegmentsError::UndefinedColumn(format!(
            "{path}: column \"{}\" does not exist on {what}",
            test.column
        ))
        .with_hint(perhaps(&test.column, table.column_names()))
    })?;
    column.check_usable(path, what)?;
    check_op(path, column, test.op, test.ignore_case)?;
    let vpath = format!("{path}.value");
    let raw = format!("{alias}.{}", ident(&column.name));
    let fold = |sql: String| {
        if test.ignore_case {
            format!("pg_catalog.lower({sql})")
        } else {
            sql
        }
    };
    let col = fold(raw.clone());
    let lit = |value: &Value| typed(&vpath, column, value).map(fold);
    let kind = column.kind;
    let sql =
        match (test.op, &test.value) {
            (Op::Eq, Operand::Scalar(v)) => format!("{col} {} {}", op("="), lit(v)?),
            (Op::Ne, Operand::Scalar(v)) => format!("{col} {} {}", op("<>"), lit(v)?),
            (Op::Lt, Operand::Scalar(v)) => format!("{col} {} {}", op("<"), lit(v)?),
            (Op::Lte, Operand::Scalar(v)) => format!("{col} {} {}", op("<="), lit(v)?),
            (Op::Gt, Operand::Scalar(v)) => format!("{col} {} {}", op(">"), lit(v)?),
            (Op::Gte, Operand::Scalar(v)) => format!("{col} {} {}", op(">="), lit(v)?),
            (Op::Between, Operand::Range(low, high)) => between(&col, &lit(low)?, &lit(high)?),
            (Op::In | Op::NotIn, Operand::List(values)) => {
                let items = values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| typed(&format!("{vpath}[{i}]"), column, v).map(fold))
                    .collect::<Result<Vec<_>, _>>()?;
                let test_sql = if test.op == Op::In {
                    format!("{} ANY", op("="))
                } else {
                    format!("{} ALL", op("<>"))
                };
                format!("{col} {test_sql} (ARRAY[{}])", items.join(", "))
            }
            (Op::Contains, Operand::Scalar(v)) => {
                format!("pg_catalog.strpos({col}, {}) {} 0", lit(v)?, op(">"))
            }
            (Op::NotContains, Operand::Scalar(v)) => {
                format!("pg_catalog.strpos({col}, {}) {} 0", lit(v)?, op("="))
            }
            (Op::StartsWith, Operand::Scalar(v)) => {
                format!("pg_catalog.starts_with({col}, {})", lit(v)?)
            }
            (Op::EndsWith, Operand::Scalar(v)) => {
                let l = lit(v)?;
                format!(
                    "pg_catalog.\"right\"({col}, pg_catalog.length({l})) {} {l}",
                    op("=")
                )
            }
            (Op::IsNull, _) => format!("{raw} IS NULL"),
            (Op::IsNotNull, _) => format!("{raw} IS NOT NULL"),
            (Op::IsTrue, _) => format!("{raw} IS TRUE"),
            (Op::IsFalse, _) => format!("{raw} IS FALSE"),
            (Op::InLast, Operand::Window(w)) => in_last_sql(&raw, kind, w, reference),
            (Op::NotInLast, Operand::Window(w)) => {
                let (from, to) = window_edges(kind, w, reference);
                format!("({raw} {} {from} OR {raw} {} {to})", op("<"), op(">"))
            }
            (Op::InNext, Operand::Duration(d)) => {
                let to = reference_as(kind, &format!("({reference} {} {})", op("+"), interval(d)));
                between(&raw, &reference_as(kind, reference), &to)
            }
            (Op::Before, Operand::Scalar(v)) => format!("{raw} {} {}", op("<"), lit(v)?),
            (Op::After, Operand::Scalar(v)) => format!("{raw} {} {}", op(">"), lit(v)?),
            (Op::On, Operand::Scalar(v)) => {
                let day = literal_text(&vpath, column, v)?;
                format!(
                    "({raw})::pg_catalog.date {} ({})::pg_catalog.date",
                    op("="),
                    literal(&day)
                )
            }
            (Op::IsToday, _) => format!(
                "({raw})::pg_catalog.date {} ({reference})::pg_catalog.date",
                op("=")
            ),
            (Op::IsAnniversary, _) => {
                format!(
                "pg_catalog.to_char({raw}, 'MM-DD') {} pg_catalog.to_char({reference}, 'MM-DD')",
                op("=")
            )
            }
            (_, Operand::StepRef { .. }) => return Err(invalid(
                &vpath,
                "a step reference ({\"step\": K, ...}) is only allowed in the steps of a sequence",
            )
            .into()),
            (op, _) => {
                return Err(invalid(
                    path,
                    format!("operator {} got a value of the wrong shape", op.name()),
                )
                .into())
            }
        };
    Ok(sql)
}

pub(super) fn number(value: &Value) -> f64 {
    value.as_f64().unwrap_or(f64::NAN)
}

pub(super) fn comparison_sql(column: &str, op: Op, value: &Operand) -> String {
    let lit = |v: &Value| format!("{}::pg_catalog.numeric", literal(&v.to_string()));
    match (op, value) {
        (Op::Between, Operand::Range(low, high)) => between(column, &lit(low), &lit(high)),
        (op, Operand::Scalar(v)) => {
            let symbol = match op {
                Op::Eq => "=",
                Op::Ne => "<>",
                Op::Lt => "<",
                Op::Lte => "<=",
                Op::Gt => ">",
                _ => ">=",
            };
            format!("{column} {} {}", self::op(symbol), lit(v))
        }
        _ => unreachable!("parser checks aggregate operands"),
    }
}

/// Whether `x op value` holds, for the aggregate of a member with no rows.
pub(super) fn compares_true(x: f64, op: Op, value: &Operand) -> bool {
    match (op, value) {
        (Op::Between, Operand::Range(low, high)) => number(low) <= x && x <= number(high),
        (Op::Eq, Operand::Scalar(v)) => x == number(v),
        (Op::Ne, Operand::Scalar(v)) => x != number(v),
        (Op::Lt, Operand::Scalar(v)) => x < number(v),
        (Op::Lte, Operand::Scalar(v)) => x <= number(v),
        (Op::Gt, Operand::Scalar(v)) => x > number(v),
        (Op::Gte, Operand::Scalar(v)) => x >= number(v),
        _ => false,
    }
}
