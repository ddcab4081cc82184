//! Many comparisons of one column against different constants, computed
//! from one grouped pass instead of one `FILTER` clause each.
//!
//! Real segment lists compare the same few columns against thresholds of
//! their own (spent over 480, over 500, between 25 and 34, signed up in
//! the last 17 days...). As `FILTER` clauses, a scan evaluates every one of
//! them on every row: its cost grows with segments × rows. A *column group*
//! reads the column once instead: the distinct constants, sorted by
//! PostgreSQL, are the lower bounds of buckets; one scan puts every row in
//! its bucket (`width_bucket`, a binary search) and says whether it equals
//! the bucket's bound; `GROUP BY` gathers each bucket's positions into a
//! bitmap. Every comparison is then a union of buckets, made in Rust
//! (`buckets::ColumnBuckets`): `gt 500` is every bucket above 500's, less the rows
//! equal to 500. The cost grows with rows × log(constants) plus the
//! bitmaps written, not with the number of comparisons.
//!
//! Only ordered built-in types without a collation are bucketed
//! (integers, numeric, floats, dates, timestamps): their order and
//! equality are the btree's, the same the comparison operators use, so a
//! group's answer is the `FILTER` clause's exactly (NULLs in no bucket,
//! NaN above every number). Equality tests (`eq`, `in`) of text, varchar,
//! char and uuid form *equality groups* instead: one hash join of the rows
//! with the constants (`=` under the column's own collation, as the
//! `FILTER` clause compares) gives each constant's rows. Other text tests
//! keep their `FILTER` clauses.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::bitmap::Members;
use crate::catalog::{Column, ColumnKind};
use crate::definition::{AttributeTest, Op, Operand};
use crate::sql::{ident, op};

use super::buckets::ColumnBuckets;
use super::emit::{reference_as, typed, window_edges};

/// The base types a column group handles (see the module's comment).
const ORDERED_TYPES: &[&str] = &[
    "smallint",
    "integer",
    "bigint",
    "numeric",
    "pg_catalog.numeric",
    "real",
    "double precision",
    "date",
    "timestamp without time zone",
    "timestamp with time zone",
];

/// The types whose `eq` and `in` tests form equality groups (the
/// constants' type as `emit::literal_type` spells it).
const EQUALITY_TYPES: &[&str] = &["text", "pg_catalog.varchar", "pg_catalog.bpchar", "uuid"];

/// The comparisons a column group answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnOp {
    Eq,
    Ne,
    Lt,
    Lte,
    Gt,
    Gte,
    /// Both ends included; values are (low, high).
    Between,
    /// Any of the values.
    In,
    /// Below the first value or above the second (`not_in_last`).
    Outside,
}

/// One attribute condition as a comparison of an operand with constants:
/// the form a column group can answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ColumnTest {
    /// The column as the entity row `e` has it.
    pub operand: String,
    /// The type the comparison is made in (the constants' type).
    pub sql_type: String,
    pub op: ColumnOp,
    /// SQL expressions of `sql_type`: literals, or edges of a window
    /// measured back from the reference time.
    pub values: Vec<String>,
    /// Bucketed by order (true) or matched by equality only.
    pub ordered: bool,
    /// Where the operand is read: None for the entity's rows, else a
    /// query of one row per record (`key`, and the operand as `g`'s
    /// column), e.g. a trait's grouped values.
    pub rows: Option<String>,
}

/// The comparison `test` makes on the entity's `column` (as `alias`), if a
/// column group can answer it; None for every other condition.
pub(super) fn column_test(
    path: &str,
    alias: &str,
    column: &Column,
    test: &AttributeTest,
    reference: &str,
) -> Option<ColumnTest> {
    let operand = format!("{alias}.{}", ident(&column.name));
    let lit = |value: &Value| typed(path, column, value).ok();
    // A literal is `'text'::type`: its type is what follows the last `::`.
    let type_of = |sql: &str| sql.rsplit_once("::").map(|(_, t)| t.to_string());
    if !ORDERED_TYPES.contains(&column.base_type_sql.as_str()) {
        return equality_test(operand, test, lit, type_of);
    }
    if test.ignore_case {
        return None;
    }
    let window = |op: ColumnOp, (from, to): (String, String)| {
        Some(ColumnTest {
            operand: operand.clone(),
            sql_type: column.base_type_sql.clone(),
            op,
            values: vec![from, to],
            ordered: true,
            rows: None,
        })
    };
    let (op, values) = match (test.op, &test.value) {
        (Op::Eq, Operand::Scalar(v)) => (ColumnOp::Eq, vec![lit(v)?]),
        (Op::Ne, Operand::Scalar(v)) => (ColumnOp::Ne, vec![lit(v)?]),
        (Op::Lt | Op::Before, Operand::Scalar(v)) => (ColumnOp::Lt, vec![lit(v)?]),
        (Op::Lte, Operand::Scalar(v)) => (ColumnOp::Lte, vec![lit(v)?]),
        (Op::Gt | Op::After, Operand::Scalar(v)) => (ColumnOp::Gt, vec![lit(v)?]),
        (Op::Gte, Operand::Scalar(v)) => (ColumnOp::Gte, vec![lit(v)?]),
        (Op::Between, Operand::Range(low, high)) => {
            (ColumnOp::Between, vec![lit(low)?, lit(high)?])
        }
        (Op::In, Operand::List(items)) if !items.is_empty() => (
            ColumnOp::In,
            items.iter().map(lit).collect::<Option<Vec<_>>>()?,
        ),
        (Op::InLast, Operand::Window(w)) if is_time(column.kind) => {
            return window(ColumnOp::Between, window_edges(column.kind, w, reference));
        }
        (Op::NotInLast, Operand::Window(w)) if is_time(column.kind) => {
            return window(ColumnOp::Outside, window_edges(column.kind, w, reference));
        }
        (Op::InNext, Operand::Duration(duration)) if is_time(column.kind) => {
            let to = reference_as(
                column.kind,
                &format!(
                    "({reference} {} {})",
                    op("+"),
                    super::emit::interval(duration)
                ),
            );
            return window(
                ColumnOp::Between,
                (reference_as(column.kind, reference), to),
            );
        }
        _ => return None,
    };
    same_type(operand, op, values, true, type_of)
}

/// A test of constants all of one type (an integer column's list mixing
/// 7 and 3000000000 has two: it keeps its `FILTER` clause).
fn same_type(
    operand: String,
    op: ColumnOp,
    values: Vec<String>,
    ordered: bool,
    type_of: impl Fn(&str) -> Option<String>,
) -> Option<ColumnTest> {
    let sql_type = type_of(&values[0])?;
    if values
        .iter()
        .any(|v| type_of(v).as_ref() != Some(&sql_type))
    {
        return None;
    }
    Some(ColumnTest {
        operand,
        sql_type,
        op,
        values,
        ordered,
        rows: None,
    })
}

/// `eq` and `in` on a text, char or uuid column, as an equality group's
/// test (`ignore_case` compares lower-cased text, as the filter does).
fn equality_test(
    operand: String,
    test: &AttributeTest,
    lit: impl Fn(&Value) -> Option<String>,
    type_of: impl Fn(&str) -> Option<String>,
) -> Option<ColumnTest> {
    let (op, values) = match (test.op, &test.value) {
        (Op::Eq, Operand::Scalar(v)) => (ColumnOp::Eq, vec![lit(v)?]),
        (Op::In, Operand::List(items)) if !items.is_empty() => (
            ColumnOp::In,
            items.iter().map(&lit).collect::<Option<Vec<_>>>()?,
        ),
        _ => return None,
    };
    let mut test_of = same_type(operand, op, values, false, type_of)?;
    if !EQUALITY_TYPES.contains(&test_of.sql_type.as_str()) {
        return None;
    }
    if test.ignore_case {
        if test_of.sql_type == "uuid" {
            return None;
        }
        let lower = |sql: &str| format!("pg_catalog.lower({sql})");
        test_of.operand = lower(&test_of.operand);
        test_of.values = test_of.values.iter().map(|v| lower(v)).collect();
        test_of.sql_type = "text".into();
    }
    Some(test_of)
}

fn is_time(kind: ColumnKind) -> bool {
    matches!(
        kind,
        ColumnKind::Date | ColumnKind::Timestamp | ColumnKind::TimestampTz
    )
}

/// The comparisons of a plan on one operand in one type, computed
/// together.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnGroup {
    pub operand: String,
    pub sql_type: String,
    /// The distinct constant expressions the tests compare with.
    pub values: Vec<String>,
    /// By test: its leaf, its comparison, and its constants (indexes into
    /// `values`).
    pub tests: Vec<(usize, ColumnOp, Vec<usize>)>,
    /// Bucketed (`buckets_sql`, `column_leaves`) or an equality group
    /// (`matches_sql`, `equality_leaves`).
    pub ordered: bool,
    /// Where the operand is read (`ColumnTest::rows`): a group of trait
    /// conditions reads the trait's grouped values.
    pub rows: Option<String>,
}

/// Groups `tests` (by leaf) by operand and type; a group of at least
/// `min_tests` comparisons is worth a pass of its own. Groups come in a
/// stable order (by operand, then type).
pub(super) fn group_tests(tests: &[(usize, ColumnTest)], min_tests: usize) -> Vec<ColumnGroup> {
    // (rows, operand, type, ordered) -> its tests
    type Key<'t> = (Option<&'t str>, &'t str, &'t str, bool);
    let mut by_operand: BTreeMap<Key, Vec<&(usize, ColumnTest)>> = BTreeMap::new();
    for entry in tests {
        by_operand
            .entry((
                entry.1.rows.as_deref(),
                &entry.1.operand,
                &entry.1.sql_type,
                entry.1.ordered,
            ))
            .or_default()
            .push(entry);
    }
    by_operand
        .into_iter()
        .filter(|(_, members)| members.len() >= min_tests.max(1))
        .map(|((rows, operand, sql_type, ordered), members)| {
            let mut values: Vec<String> = Vec::new();
            let mut tests = Vec::new();
            for (leaf, test) in members {
                let indexes = test
                    .values
                    .iter()
                    .map(|v| match values.iter().position(|known| known == v) {
                        Some(i) => i,
                        None => {
                            values.push(v.clone());
                            values.len() - 1
                        }
                    })
                    .collect();
                tests.push((*leaf, test.op, indexes));
            }
            ColumnGroup {
                operand: operand.to_string(),
                sql_type: sql_type.to_string(),
                values,
                tests,
                ordered,
                rows: rows.map(str::to_string),
            }
        })
        .collect()
}

impl ColumnGroup {
    fn values_array(&self) -> String {
        format!("ARRAY[{}]::{}[]", self.values.join(", "), self.sql_type)
    }

    /// The query of each constant's rank among the distinct constants
    /// (1 = smallest), in the order of `values`: PostgreSQL orders them,
    /// with the type's own comparison.
    pub fn ranks_sql(&self) -> String {
        format!(
            "SELECT pg_catalog.array_agg(s.r ORDER BY s.o) FROM \
             (SELECT u.o, pg_catalog.dense_rank() OVER (ORDER BY u.c) AS r \
                FROM pg_catalog.unnest({}) WITH ORDINALITY u(c, o)) s",
            self.values_array()
        )
    }

    /// The equality group's one scan: for each constant (by its place in
    /// `values`, from 1), the positions of the rows equal to it.
    pub fn matches_sql(&self, rows: &str, position: &str) -> String {
        format!(
            "SELECT u.o, segments.rb_agg(s.p) FROM \
             (SELECT {} AS x, {position} AS p {rows}) s \
             JOIN pg_catalog.unnest({}) WITH ORDINALITY u(c, o) ON s.x {} u.c \
             GROUP BY u.o",
            self.operand,
            self.values_array(),
            op("=")
        )
    }

    /// Whether the group compares numerics, whose `width_bucket` walks
    /// the constants one by one (they are of variable length).
    fn is_numeric(&self) -> bool {
        matches!(self.sql_type.as_str(), "numeric" | "pg_catalog.numeric")
    }

    /// A numeric row value's bucket (of `v.x`) by a binary search over
    /// the constants as float8, exact: float8 conversion (clamped to
    /// ±1e300, never an error) never reverses an order, so a value whose
    /// float differs from the float of its float bucket's constant is
    /// strictly between the constants around it, and its float bucket is
    /// its bucket; a value whose float equals that constant's (the same
    /// number, or too close for float8) takes the exact, walking
    /// `width_bucket`.
    fn numeric_bucket_sql(&self, ranks: &[i64]) -> String {
        let float = |x: &str| {
            format!(
                "CASE WHEN {x} {gt} 1e300 THEN 'Infinity'::pg_catalog.float8 \
                 WHEN {x} {lt} -1e300 THEN '-Infinity'::pg_catalog.float8 \
                 ELSE ({x})::pg_catalog.float8 END",
                gt = op(">"),
                lt = op("<")
            )
        };
        let sorted = self.sorted_values(ranks);
        let floats: Vec<String> = sorted.iter().map(|c| float(c)).collect();
        let ft = format!("(SELECT ARRAY[{}]::pg_catalog.float8[])", floats.join(", "));
        let th = format!("(SELECT ARRAY[{}]::{}[])", sorted.join(", "), self.sql_type);
        let f = float("v.x");
        format!(
            "CASE WHEN ({f}) IS DISTINCT FROM ({ft})[pg_catalog.width_bucket({f}, {ft})] \
             THEN pg_catalog.width_bucket({f}, {ft}) ELSE pg_catalog.width_bucket(v.x, {th}) END"
        )
    }

    /// The distinct constants in ascending order, given their ranks.
    fn sorted_values(&self, ranks: &[i64]) -> Vec<&str> {
        let mut sorted: BTreeMap<i64, &str> = BTreeMap::new();
        for (value, rank) in self.values.iter().zip(ranks) {
            sorted.entry(*rank).or_insert(value);
        }
        sorted.into_values().collect()
    }

    /// The one scan of the group: for each bucket `b` (the number of
    /// sorted distinct constants at or below the row's value) and whether
    /// the value equals one of the constants (then the bucket's own), the
    /// bitmap of positions.
    /// `rows` is `FROM ... e ... [WHERE ...]` of the entity's rows and
    /// `position` their position expression. Rows whose value is NULL
    /// come in a NULL bucket.
    pub fn buckets_sql(&self, ranks: &[i64], rows: &str, position: &str) -> String {
        let thresholds = format!(
            "ARRAY[{}]::{}[]",
            self.sorted_values(ranks).join(", "),
            self.sql_type
        );
        let value = format!("CAST({} AS {})", self.operand, self.sql_type);
        // A scalar subquery is an InitPlan: the constants (which may be
        // reference-time arithmetic) are computed once, not per row.
        let th = format!("(SELECT {thresholds})");
        let bucket = if self.is_numeric() {
            self.numeric_bucket_sql(ranks)
        } else {
            format!("pg_catalog.width_bucket(v.x, {th})")
        };
        // Whether a row equals its bucket's constant: a hash probe of the
        // constants (subscripting the array would walk it for every row
        // where its elements are of variable length, as numeric's are).
        format!(
            "SELECT s.b, u.c IS NOT NULL, segments.rb_agg(s.p) FROM \
             (SELECT v.x, {bucket} AS b, v.p FROM (SELECT {value} AS x, {position} AS p \
                {rows}) v) s \
             LEFT JOIN pg_catalog.unnest({th}) u(c) ON s.x {eq} u.c \
             GROUP BY 1, 2",
            eq = op("="),
        )
    }
}

/// One bucket of a group's scan: its number, whether its rows equal its
/// constant (None for bucket 0 and NULL values), and their positions.
pub struct Bucket {
    pub number: Option<i64>,
    pub exact: Option<bool>,
    pub members: Members,
}

/// Each test's members (by leaf) from the group's buckets, all at once
/// (`ColumnBuckets` makes them one at a time).
pub fn column_leaves(
    group: &ColumnGroup,
    ranks: &[i64],
    buckets: Vec<Bucket>,
) -> Vec<(usize, Members)> {
    all_members(group, ColumnBuckets::ordered(group, ranks, buckets))
}

/// Each test's members (by leaf) of an equality group, from the rows
/// equal to each constant (`matches`: place in `values` from 1, rows).
pub fn equality_leaves(group: &ColumnGroup, matches: Vec<(i64, Members)>) -> Vec<(usize, Members)> {
    all_members(group, ColumnBuckets::equality(group, matches))
}

/// Every test's members, by leaf.
fn all_members(group: &ColumnGroup, kept: ColumnBuckets) -> Vec<(usize, Members)> {
    group
        .tests
        .iter()
        .enumerate()
        .map(|(t, (leaf, _, _))| (*leaf, kept.members(t)))
        .collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::generate::Rng;

    /// What PostgreSQL's scan returns for `values` (by position) and the
    /// group's constants (integers here): bucket = constants at or below.
    pub(in crate::compile) fn buckets_of(values: &[Option<i64>], sorted: &[i64]) -> Vec<Bucket> {
        let mut by: BTreeMap<(Option<i64>, Option<bool>), Members> = BTreeMap::new();
        for (position, value) in values.iter().enumerate() {
            let key = match value {
                None => (None, None),
                Some(v) => {
                    let b = sorted.iter().filter(|c| *c <= v).count();
                    let exact = (b > 0).then(|| sorted[b - 1] == *v);
                    (Some(b as i64), exact)
                }
            };
            by.entry(key).or_default().insert(position as u64);
        }
        by.into_iter()
            .map(|((number, exact), members)| Bucket {
                number,
                exact,
                members,
            })
            .collect()
    }

    fn holds(op: ColumnOp, v: i64, constants: &[i64]) -> bool {
        match op {
            ColumnOp::Eq => v == constants[0],
            ColumnOp::Ne => v != constants[0],
            ColumnOp::Lt => v < constants[0],
            ColumnOp::Lte => v <= constants[0],
            ColumnOp::Gt => v > constants[0],
            ColumnOp::Gte => v >= constants[0],
            ColumnOp::Between => constants[0] <= v && v <= constants[1],
            ColumnOp::In => constants.contains(&v),
            ColumnOp::Outside => v < constants[0] || v > constants[1],
        }
    }

    /// An ordered group of integer `constants` (in any order, repeated or
    /// not) making `tests`; its sorted distinct constants and their ranks.
    pub(in crate::compile) fn integer_group(
        constants: &[i64],
        tests: Vec<(usize, ColumnOp, Vec<usize>)>,
    ) -> (ColumnGroup, Vec<i64>, Vec<i64>) {
        let mut sorted = constants.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let ranks = constants
            .iter()
            .map(|c| 1 + sorted.iter().position(|s| s == c).unwrap() as i64)
            .collect();
        let group = ColumnGroup {
            operand: "e.v".into(),
            sql_type: "integer".into(),
            values: constants.iter().map(|c| c.to_string()).collect(),
            tests,
            ordered: true,
            rows: None,
        };
        (group, sorted, ranks)
    }

    /// Every comparison a group answers.
    pub(in crate::compile) const OPS: [ColumnOp; 9] = [
        ColumnOp::Eq,
        ColumnOp::Ne,
        ColumnOp::Lt,
        ColumnOp::Lte,
        ColumnOp::Gt,
        ColumnOp::Gte,
        ColumnOp::Between,
        ColumnOp::In,
        ColumnOp::Outside,
    ];

    #[test]
    fn every_comparison_equals_evaluating_it_row_by_row() {
        let ops = OPS;
        let mut rng = Rng(42);
        for _ in 0..300 {
            let rows: Vec<Option<i64>> = (0..1 + rng.below(60))
                .map(|_| (!rng.chance(15)).then(|| rng.below(20) as i64 - 5))
                .collect();
            let mut constants: Vec<i64> = Vec::new();
            let mut tests = Vec::new();
            for leaf in 0..1 + rng.below(12) {
                let op = *rng.pick(&ops);
                let count = match op {
                    ColumnOp::Between | ColumnOp::Outside => 2,
                    ColumnOp::In => 1 + rng.below(4),
                    _ => 1,
                };
                let mine: Vec<usize> = (0..count)
                    .map(|_| {
                        let c = rng.below(24) as i64 - 7;
                        match constants.iter().position(|k| *k == c) {
                            Some(i) => i,
                            None => {
                                constants.push(c);
                                constants.len() - 1
                            }
                        }
                    })
                    .collect();
                tests.push((leaf, op, mine));
            }
            let (group, sorted, ranks) = integer_group(&constants, tests.clone());
            let got = column_leaves(&group, &ranks, buckets_of(&rows, &sorted));
            for ((leaf, op, mine), (got_leaf, members)) in tests.iter().zip(got) {
                assert_eq!(*leaf, got_leaf);
                let constants: Vec<i64> = mine.iter().map(|i| constants[*i]).collect();
                let want: Members = rows
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.is_some_and(|v| holds(*op, v, &constants)))
                    .map(|(p, _)| p as u64)
                    .collect();
                assert_eq!(members, want, "{op:?} {constants:?} over {rows:?}");
            }
        }
    }

    #[test]
    fn groups_need_enough_comparisons_of_one_column_in_one_type() {
        let test = |operand: &str, sql_type: &str, value: &str| ColumnTest {
            operand: operand.into(),
            sql_type: sql_type.into(),
            op: ColumnOp::Gt,
            values: vec![value.into()],
            ordered: true,
            rows: None,
        };
        let tests = vec![
            (0, test("e.a", "integer", "'1'::integer")),
            (1, test("e.a", "integer", "'2'::integer")),
            (2, test("e.a", "integer", "'1'::integer")),
            (
                3,
                test("e.a", "pg_catalog.numeric", "'1.5'::pg_catalog.numeric"),
            ),
            (4, test("e.b", "integer", "'1'::integer")),
        ];
        let groups = group_tests(&tests, 3);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].values, vec!["'1'::integer", "'2'::integer"]);
        assert_eq!(
            groups[0].tests.iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert!(group_tests(&tests, usize::MAX).is_empty());
    }
}
