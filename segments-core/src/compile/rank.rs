//! Ranks: `top_percent`, `bottom_percent`, `top` and `bottom` on an
//! attribute of the entity. A rank is a filter on the entity row against
//! a threshold that an uncorrelated subquery computes once (an InitPlan):
//! the k-th best value among the eligible records with a non-NULL value,
//! so that records tied with the last one in are all in.

use super::emit::{related_condition, RowScope};
use super::Planner;
use crate::definition::{parse_condition, AttributeTest, ConditionKind, Op, Operand};
use crate::error::{Reported, SegmentsError};
use crate::spelling::perhaps;
use crate::sql::{ident, literal, op};
use crate::validate::check_op;

impl Planner<'_> {
    /// The filter `e.column >= threshold` (`<=` for bottom), where the
    /// threshold is the k-th best (worst) non-NULL value among the eligible
    /// records: k = ceil(n × share / 100) of n such records, or the count.
    pub(super) fn rank_filter(&self, path: &str, test: &AttributeTest) -> Result<String, Reported> {
        let table = &self.entity.table;
        let what = format!("entity \"{}\"", self.entity.name);
        let column = table.column(&test.column).ok_or_else(|| {
            SegmentsError::UndefinedColumn(format!(
                "{path}: column \"{}\" does not exist on {what}",
                test.column
            ))
            .with_hint(perhaps(&test.column, table.column_names()))
        })?;
        column.check_usable(path, &what)?;
        check_op(path, column, test.op, test.ignore_case)?;
        let Operand::Scalar(value) = &test.value else {
            unreachable!("the parser gives ranks a number")
        };
        let x = format!("x.{}", ident(&column.name));
        let mut scope = vec![format!("{x} IS NOT NULL")];
        // A rank counts among the eligible records.
        if let Some(eligible) =
            eligible_sql(&self.entity, "x", &self.reference_time).map_err(|mut reported| {
                reported.error = reported.error.at(path);
                reported
            })?
        {
            scope.push(eligible);
        }
        let scope = scope.join(" AND ");
        let relation = &table.relation_sql;
        let number = literal(&value.to_string());
        let limit = match test.op {
            Op::TopPercent | Op::BottomPercent => format!(
                "(SELECT pg_catalog.ceil((pg_catalog.count(*) {} {number}::pg_catalog.numeric) {} 100::pg_catalog.numeric)::pg_catalog.int8 \
                 FROM {relation} x WHERE {scope})",
                op("*"),
                op("/")
            ),
            _ => format!("{number}::pg_catalog.int8"),
        };
        let (order, pick, compare) = match test.op {
            Op::TopPercent | Op::Top => ("DESC", "min", ">="),
            _ => ("ASC", "max", "<="),
        };
        Ok(format!(
            "e.{} {} (SELECT pg_catalog.{pick}(t.v) FROM (SELECT {x} AS v FROM {relation} x WHERE {scope} \
             ORDER BY {x} {order} LIMIT {limit}) t)",
            ident(&column.name),
            op(compare)
        ))
    }
}

/// The entity's `eligible` condition as SQL on its row `alias`, if it has
/// one. Only conditions on the entity's own columns can be SQL on one row:
/// others are refused (0A000).
pub fn eligible_sql(
    entity: &crate::catalog::Entity,
    alias: &str,
    reference_time: &str,
) -> Result<Option<String>, Reported> {
    let Some(eligible) = &entity.eligible else {
        return Ok(None);
    };
    let condition = parse_condition("eligible", eligible)?;
    let mut nodes = Vec::new();
    crate::definition::walk_condition(&condition, &mut nodes);
    if nodes.iter().any(|n| {
        matches!(
            n.kind,
            ConditionKind::Related(_) | ConditionKind::Segment(_) | ConditionKind::Trait(_)
        )
    }) {
        return Err(SegmentsError::FeatureNotSupported(format!(
            "the eligible condition of entity \"{}\" reads related tables, traits or segments; this needs one on the entity's own columns",
            entity.name
        ))
        .into());
    }
    let what = format!("entity \"{}\"", entity.name);
    Ok(Some(related_condition(
        &condition,
        RowScope { alias, steps: &[] },
        &entity.table,
        &what,
        reference_time,
    )?))
}

#[cfg(test)]
mod tests {
    use crate::catalog::fixture::customers;
    use crate::compile::{compile_definition, Leaf};
    use serde_json::{json, Value};

    const NOW: &str = "'2026-11-01 00:00:00+00'::timestamptz";

    fn compiled(condition: Value) -> Result<String, (String, String)> {
        let mut catalog = customers();
        catalog.entities[0].eligible = Some(json!({"attribute": "unsubscribed", "op": "is_false"}));
        let definition = json!({"entity": "customer", "rules": [{"where": condition}]});
        compile_definition(&catalog, &definition, None, NOW, usize::MAX)
            .map(|(_, plan, _)| {
                plan.leaves
                    .iter()
                    .find_map(|l| match l {
                        Leaf::Filter(sql) if sql.contains("LIMIT") => Some(sql.clone()),
                        _ => None,
                    })
                    .expect("a rank filter")
            })
            .map_err(|e| (e.error.code().to_string(), e.error.to_string()))
    }

    #[test]
    fn a_share_ranks_among_eligible_non_null_values() {
        let sql = compiled(json!({"attribute": "age", "op": "top_percent", "value": 10})).unwrap();
        assert_eq!(
            sql,
            "e.\"age\" OPERATOR(pg_catalog.>=) (SELECT pg_catalog.min(t.v) FROM (SELECT x.\"age\" AS v FROM \"public\".\"customers\" x \
             WHERE x.\"age\" IS NOT NULL AND x.\"unsubscribed\" IS FALSE ORDER BY x.\"age\" DESC LIMIT \
             (SELECT pg_catalog.ceil((pg_catalog.count(*) OPERATOR(pg_catalog.*) '10'::pg_catalog.numeric) OPERATOR(pg_catalog./) 100::pg_catalog.numeric)::pg_catalog.int8 \
             FROM \"public\".\"customers\" x WHERE x.\"age\" IS NOT NULL AND x.\"unsubscribed\" IS FALSE)) t)"
        );
        let bottom =
            compiled(json!({"attribute": "birth_date", "op": "bottom", "value": 3})).unwrap();
        assert!(
            bottom.starts_with(
                "e.\"birth_date\" OPERATOR(pg_catalog.<=) (SELECT pg_catalog.max(t.v)"
            ),
            "{bottom}"
        );
        assert!(
            bottom.contains("ORDER BY x.\"birth_date\" ASC LIMIT '3'::pg_catalog.int8"),
            "{bottom}"
        );
    }

    #[test]
    fn rank_mistakes_are_refused() {
        let cases = [
            (json!({"attribute": "age", "op": "top_percent", "value": 0}), "22023", "rules[0].where.value: operator top_percent takes a share: a number above 0 and at most 100"),
            (json!({"attribute": "age", "op": "top_percent", "value": 100.5}), "22023", "rules[0].where.value: operator top_percent takes a share"),
            (json!({"attribute": "age", "op": "top", "value": 2.5}), "22023", "rules[0].where.value: operator top takes a count: a whole number of at least 1"),
            (json!({"attribute": "country", "op": "top", "value": 2}), "22023", "rules[0].where.op: operator top does not apply to column \"country\" of type text"),
            (json!({"attribute": "agee", "op": "top", "value": 2}), "42703", "rules[0].where: column \"agee\" does not exist on entity \"customer\""),
            (json!({"related": "orders", "where": {"attribute": "amount", "op": "top", "value": 2}}), "22023", "rules[0].where.where.op: top ranks the entity's records"),
        ];
        for (condition, code, message) in cases {
            let (got_code, got) = compiled(condition).unwrap_err();
            assert!(got.starts_with(message), "{got}\n  expected {message}");
            assert_eq!(got_code, code, "{got}");
        }
    }
}
