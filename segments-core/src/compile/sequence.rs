//! `sequence` and `every` over a related table, compiled to set-based SQL:
//! a sequence is one scan of the first step's rows with a nested,
//! correlated `EXISTS` (or, for an absent last step, `NOT EXISTS`) per
//! further step, each matching the previous step's row by foreign key and
//! time, so an index on the related table's `(foreign key, time column)`
//! answers every step after the first; `every` is one `GROUP BY` of the
//! foreign key with `bool_and`.

use super::emit::{in_last_sql, interval, join_sql, reference_as, related_condition, RowScope};
use super::{path_sql, time_column, Leaf, Planner};
use crate::catalog::{ColumnKind, Related};
use crate::definition::{Condition, RelatedTest, Step};
use crate::error::Reported;
use crate::sql::{ident, op};

impl Planner<'_> {
    /// `{"related": R, "every": C}`: the records with at least one row of R
    /// in scope (`where_sql`: the condition's window and a live
    /// restriction), every one of which matches C (NULL counts as no).
    pub(super) fn every_leaf(
        &self,
        related: &Related,
        condition: &Condition,
        fk: &str,
        from: &str,
        where_sql: &str,
    ) -> Result<Leaf, Reported> {
        let what = format!("related table \"{}\"", related.name);
        let test = related_condition(
            condition,
            RowScope::RELATED,
            &related.table,
            &what,
            &self.reference_time,
        )?;
        let (position, join) = self.position("g.key");
        Ok(Leaf::KeySet(format!(
            "SELECT segments.rb_agg({position}) FROM (SELECT {fk} AS key FROM {from}{where_sql} \
             GROUP BY {fk} HAVING pg_catalog.bool_and(({test}) IS TRUE)) g{join}"
        )))
    }

    /// `{"related": R, "sequence": [...], "within"?: W}`: the records with
    /// rows s1, s2, ... matching the steps in strictly increasing time, each
    /// within its step's `within` after the previous one and all inside W;
    /// an absent last step: no matching row within its `within` after the
    /// previous step's row, and that period over by the reference time.
    pub(super) fn sequence_leaf(
        &self,
        path: &str,
        related: &Related,
        test: &RelatedTest,
        steps: &[Step],
    ) -> Result<Leaf, Reported> {
        let what = format!("related table \"{}\"", related.name);
        let time = time_column(&format!("{path}.related"), related, "a sequence")?;
        let aliases: Vec<String> = (1..=steps.len()).map(|i| format!("s{i}")).collect();
        let t = |alias: &str| format!("{alias}.{}", ident(&time.name));
        let reference = &self.reference_time;
        // The first step: the condition's scope (window, live restriction).
        let (mut filters, fk, first_from) = self.related_filters(path, "s1", related, test)?;
        // Each step's rows, joined along the path, and their entity key.
        let paths = aliases
            .iter()
            .map(|alias| path_sql(&self.entity, related, alias))
            .collect::<Result<Vec<_>, _>>()?;
        filters.push(related_condition(
            &steps[0].filter,
            RowScope {
                alias: "s1",
                steps: &[],
            },
            &related.table,
            &what,
            reference,
        )?);
        // Every further step, innermost first.
        let mut inner: Option<String> = None;
        for i in (1..steps.len()).rev() {
            let step = &steps[i];
            let (alias, previous) = (&aliases[i], &aliases[i - 1]);
            let mut conditions = vec![
                format!("{} {} {}", paths[i].1, op("="), paths[i - 1].1),
                format!("{} {} {}", t(alias), op(">"), t(previous)),
            ];
            if let Some(within) = &step.within {
                conditions.push(format!(
                    "{} {} ({} {} {})",
                    t(alias),
                    op("<="),
                    t(previous),
                    op("+"),
                    interval(within)
                ));
            }
            conditions.push(related_condition(
                &step.filter,
                RowScope {
                    alias,
                    steps: &aliases[..i],
                },
                &related.table,
                &what,
                reference,
            )?);
            if let (false, Some(window)) = (step.absent, &test.within) {
                conditions.push(in_last_sql(&t(alias), time.kind, window, reference));
            }
            if let Some(deeper) = inner.take() {
                conditions.push(deeper);
            }
            let exists = format!(
                "EXISTS (SELECT 1 FROM {} WHERE {})",
                paths[i].0,
                conditions.join(" AND ")
            );
            inner = Some(match (&step.absent, &step.within) {
                (true, Some(within)) => {
                    // date + interval is a timestamp: compare it as one.
                    let kind = match time.kind {
                        ColumnKind::Date => ColumnKind::Timestamp,
                        kind => kind,
                    };
                    format!(
                        "(({} {} {}) {} {} AND NOT {exists})",
                        t(previous),
                        op("+"),
                        interval(within),
                        op("<="),
                        reference_as(kind, reference)
                    )
                }
                _ => exists,
            });
        }
        filters.extend(inner);
        let (position, join) = self.position("g.key");
        Ok(Leaf::KeySet(format!(
            "SELECT segments.rb_agg({position}) FROM (SELECT DISTINCT {fk} AS key FROM {first_from} WHERE {}) g{join}",
            join_sql(&filters, "AND")
        )))
    }
}

#[cfg(test)]
mod tests {
    use crate::catalog::fixture::customers;
    use crate::compile::{compile_definition, Leaf};
    use serde_json::{json, Value};

    const NOW: &str = "'2026-11-01 00:00:00+00'::timestamptz";

    fn leaf_sql(condition: Value) -> String {
        let catalog = customers();
        let definition = json!({"entity": "customer", "rules": [{"where": condition}]});
        let (_, plan, _) = compile_definition(&catalog, &definition, None, NOW, usize::MAX)
            .unwrap_or_else(|e| panic!("{e}"));
        let [Leaf::KeySet(sql)] = &plan.leaves[..] else {
            panic!("one key set expected: {:?}", plan.leaves)
        };
        sql.clone()
    }

    fn refused(condition: Value) -> (String, String) {
        let catalog = customers();
        let definition = json!({"entity": "customer", "rules": [{"where": condition}]});
        let e = compile_definition(&catalog, &definition, None, NOW, usize::MAX).unwrap_err();
        (e.error.code().to_string(), e.error.to_string())
    }

    #[test]
    fn a_funnel_with_an_absent_last_step_nests_exists_by_key_and_time() {
        let sql = leaf_sql(
            json!({"related": "orders", "within": {"from": "90 days", "to": "1 days"}, "sequence": [
                {"where": {"attribute": "status", "op": "eq", "value": "cart"}},
                {"where": {"attribute": "status", "op": "eq", "value": "paid"}, "within": "2 days", "absent": true}
            ]}),
        );
        assert!(sql.starts_with("SELECT segments.rb_agg("), "{sql}");
        assert!(
            sql.contains(
                "SELECT DISTINCT s1.\"customer_id\" AS key FROM \"public\".\"orders\" s1 WHERE"
            ),
            "{sql}"
        );
        // the window on step 1's row, from 90 to 1 days back (each edge
        // computed once)
        assert!(sql.contains(r#"s1."ordered_at" OPERATOR(pg_catalog.>=) (SELECT ('2026-11-01 00:00:00+00'::timestamptz OPERATOR(pg_catalog.-) '90 days'::pg_catalog.interval))"#), "{sql}");
        assert!(sql.contains(r#"s1."ordered_at" OPERATOR(pg_catalog.<=) (SELECT ('2026-11-01 00:00:00+00'::timestamptz OPERATOR(pg_catalog.-) '1 days'::pg_catalog.interval))"#), "{sql}");
        // the absent step: its period over, and no such row in it
        assert!(sql.contains(r#"((s1."ordered_at" OPERATOR(pg_catalog.+) '2 days'::pg_catalog.interval) OPERATOR(pg_catalog.<=) '2026-11-01 00:00:00+00'::timestamptz AND NOT EXISTS (SELECT 1 FROM "public"."orders" s2 WHERE s2."customer_id" OPERATOR(pg_catalog.=) s1."customer_id" AND s2."ordered_at" OPERATOR(pg_catalog.>) s1."ordered_at" AND s2."ordered_at" OPERATOR(pg_catalog.<=) (s1."ordered_at" OPERATOR(pg_catalog.+) '2 days'::pg_catalog.interval) AND s2."status" OPERATOR(pg_catalog.=) 'paid'::text))"#), "{sql}");
    }

    #[test]
    fn a_step_can_compare_with_an_earlier_steps_row() {
        let sql = leaf_sql(json!({"related": "orders", "sequence": [
            {"where": {"attribute": "status", "op": "eq", "value": "cart"}},
            {"where": {"attribute": "status", "op": "eq", "value": "viewed"}},
            {"where": {"all": [
                {"attribute": "status", "op": "eq", "value": "paid"},
                {"attribute": "amount", "op": "gte", "value": {"step": 1, "attribute": "amount"}}
            ]}, "within": "1 days"}
        ]}));
        assert!(
            sql.contains(r#"s3."amount" OPERATOR(pg_catalog.>=) s1."amount""#),
            "{sql}"
        );
        // step 3 nests inside step 2
        let two = sql.find("s2 WHERE").unwrap();
        let three = sql.find("s3 WHERE").unwrap();
        assert!(two < three, "{sql}");
        // no window on the condition: step 2 has no time bound beyond order
        assert!(
            !sql.contains("s2.\"ordered_at\" OPERATOR(pg_catalog.<=)"),
            "{sql}"
        );
    }

    #[test]
    fn sequence_mistakes_are_refused_with_their_path() {
        let cart = json!({"where": {"attribute": "status", "op": "eq", "value": "cart"}});
        let cases = [
            (
                json!({"related": "orders", "sequence": [cart, {"where": {"attribute": "amount", "op": "eq", "value": {"step": 2, "attribute": "amount"}}}]}),
                "22023",
                "rules[0].where.sequence[1].where.value.step: step 2 can refer to the rows of steps 1 to 1 only, not step 2",
            ),
            (
                json!({"related": "orders", "sequence": [cart, {"where": {"attribute": "amount", "op": "eq", "value": {"step": 1, "attribute": "stauts"}}}]}),
                "42703",
                "rules[0].where.sequence[1].where.value.attribute: column \"stauts\" does not exist on related table \"orders\"",
            ),
            (
                json!({"related": "orders", "sequence": [cart, {"where": {"attribute": "amount", "op": "eq", "value": {"step": 1, "attribute": "status"}}}]}),
                "22023",
                "rules[0].where.sequence[1].where.value: column \"amount\" (numeric(10,2)) cannot be compared with column \"status\" (text)",
            ),
            (
                json!({"related": "orders", "sequence": [cart, {"where": {"attribute": "status", "op": "eq", "value": "paid"}, "absent": true}]}),
                "22023",
                "rules[0].where.sequence[1]: an absent step needs \"within\": how long after the previous step nothing may happen",
            ),
            (
                json!({"related": "orders", "sequence": [cart, {"where": {"attribute": "status", "op": "eq", "value": "paid"}, "absent": true, "within": "1 days"}, cart]}),
                "22023",
                "rules[0].where.sequence[1].absent: only the last step may be absent",
            ),
            (
                json!({"related": "orders", "sequence": [{"where": {"attribute": "status", "op": "eq", "value": "cart"}, "within": "1 days"}]}),
                "22023",
                "rules[0].where.sequence[0].within: the first step follows no other step: put the sequence's window in the condition's \"within\"",
            ),
            (
                json!({"related": "orders", "sequence": []}),
                "22023",
                "rules[0].where.sequence: needs at least one step",
            ),
            (
                json!({"related": "orders", "sequence": [cart], "where": {"attribute": "status", "op": "is_null"}}),
                "22023",
                "rules[0].where: unknown key \"where\"",
            ),
            (
                json!({"related": "orders", "within": {"from": "1 days", "to": "3 days"}, "sequence": [cart]}),
                "22023",
                "rules[0].where.within: \"from\" (1 days) must reach further back than \"to\" (3 days)",
            ),
            (
                json!({"related": "orderz", "sequence": [cart]}),
                "42P01",
                "rules[0].where.related: related table \"orderz\" is not registered for entity \"customer\"",
            ),
            (
                json!({"attribute": "age", "op": "eq", "value": {"step": 1, "attribute": "age"}}),
                "22023",
                "rules[0].where.value: a step reference ({\"step\": K, ...}) is only allowed in the steps of a sequence",
            ),
        ];
        for (condition, code, message) in cases {
            let (got_code, got) = refused(condition);
            assert!(got.starts_with(message), "{got}\n  expected {message}");
            assert_eq!(got_code, code, "{got}");
        }
    }

    #[test]
    fn every_groups_the_rows_of_each_record() {
        let sql = leaf_sql(json!({"related": "orders", "within": "1 years",
            "every": {"attribute": "status", "op": "eq", "value": "paid"}}));
        assert!(sql.contains("GROUP BY r.\"customer_id\" HAVING pg_catalog.bool_and((r.\"status\" OPERATOR(pg_catalog.=) 'paid'::text) IS TRUE)"), "{sql}");
        assert!(
            sql.contains("WHERE (r.\"ordered_at\" OPERATOR(pg_catalog.>=)"),
            "{sql}"
        );
        let (code, message) = refused(json!({"related": "orders", "every": {"segment": "VIP"}}));
        assert_eq!(code, "22023");
        assert!(
            message.starts_with("rules[0].where.every: inside \"related\""),
            "{message}"
        );
    }
}
