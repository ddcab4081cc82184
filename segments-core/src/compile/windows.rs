//! Many related conditions of one table that differ in their window, their
//! `where` and their threshold, computed from one sorted pass instead of
//! one `FILTER` clause each.
//!
//! A real segment list asks the same related table the same few questions
//! with windows and thresholds of its own: ordered in the last 12 days,
//! spent over 480 in the last 90, opened 3 emails of kind "promo" in the
//! last 200... As `FILTER` clauses of a shared scan, every row evaluates
//! every condition's window and `where`: the cost grows with conditions
//! × rows. A *window scan* reads the table once instead:
//!
//! - every row gets its *bucket*: how many of the distinct window starts
//!   (sorted by PostgreSQL) are at or before its time (`width_bucket`, a
//!   binary search), so a row is inside the window starting at the k-th
//!   of them exactly when its bucket is at least k;
//! - its *mask*: which of the distinct `where` conditions it meets (one bit
//!   each, a `CASE` per condition, NULL meeting none as in a `FILTER`);
//! - the values it adds to sums, as exact integers (the column scaled by
//!   10^scale of its declared `numeric(p,s)`, or an integer column);
//! - the rows come ordered by the record's position, so the pass in Rust
//!   (`WindowPass`) holds one record's rows at a time: per (where, measure)
//!   it sums the rows by descending bucket and tests each condition, window
//!   by window, as its running value reaches the window's start.
//!
//! The pass costs rows × (log windows + `where`s) in SQL, a sort, and per
//! record the conditions tested; it holds one record's rows plus the
//! bitmaps it writes. Counts and existence are exact integers; sums are
//! exact fixed-point (a column whose scale is not declared, a float, or a
//! threshold with more decimals than `MAX_SCALE` keeps its `FILTER`).
//! Only windows ending now (`"within": "30 days"`) share a pass: its rows
//! are those from the earliest start to now.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde_json::Value;

use super::gather::Gather;
use crate::bitmap::{position_of, Members};
use crate::catalog::Column;
use crate::definition::{Op, Operand};
use crate::sql::{ident, literal, op};

/// The most decimals of a summed column or of a threshold: a scaled row
/// value then fits an i64, and a sum of up to 2^31 of them times 10^9
/// fits an i128.
const MAX_SCALE: u32 = 9;

/// The most `where` conditions one pass tells apart (bits of its mask).
const MAX_FAMILIES_PER_SCAN: usize = 62;

/// A decimal number, exactly: `mantissa` × 10^-`scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decimal {
    mantissa: i128,
    scale: u32,
}

impl Decimal {
    /// Parses `[-]digits[.digits]` (a JSON number without exponent), at
    /// most 18 digits before the point and `MAX_SCALE` after it.
    pub fn parse(text: &str) -> Option<Decimal> {
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty()
            || whole.len() > 18
            || fraction.len() > MAX_SCALE as usize
            || !all_digits(whole)
            || !all_digits(fraction)
        {
            return None;
        }
        let mantissa: i128 = format!("{whole}{fraction}").parse().ok()?;
        Some(Decimal {
            mantissa: if negative { -mantissa } else { mantissa },
            scale: fraction.len() as u32,
        })
    }

    /// How `value` × 10^-`scale` compares with this number.
    #[cfg(test)]
    fn compared_with(&self, value: i128, scale: u32) -> Ordering {
        let common = scale.max(self.scale);
        let left = value * 10i128.pow(common - scale);
        let right = self.mantissa * 10i128.pow(common - self.scale);
        left.cmp(&right)
    }
}

/// What a window condition tests of its count or sum.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WindowTest {
    /// At least one row (`exists`; its negation is the plan's `not`).
    Exists,
    /// `op value`, one of eq ne lt lte gt gte.
    Compare(Op, Decimal),
    /// Both ends included.
    Between(Decimal, Decimal),
}

impl WindowTest {
    /// The test of an aggregate condition's `op` and operand; None when a
    /// window scan cannot answer it exactly.
    pub fn of(op: Op, value: &Operand) -> Option<WindowTest> {
        let decimal = |v: &Value| match v {
            Value::Number(n) => Decimal::parse(&n.to_string()),
            _ => None,
        };
        match (op, value) {
            (Op::Eq | Op::Ne | Op::Lt | Op::Lte | Op::Gt | Op::Gte, Operand::Scalar(v)) => {
                Some(WindowTest::Compare(op, decimal(v)?))
            }
            (Op::Between, Operand::Range(low, high)) => {
                Some(WindowTest::Between(decimal(low)?, decimal(high)?))
            }
            _ => None,
        }
    }

    /// This test for values at `scale` (a count's 0, a sum's column's),
    /// with the threshold scaled once instead of per record.
    fn at_scale(&self, scale: u32) -> ScaledTest {
        // value × 10^-scale against the threshold: both at the larger scale.
        let scaled = |t: &Decimal| {
            let common = scale.max(t.scale);
            (
                10i128.pow(common - scale),
                t.mantissa * 10i128.pow(common - t.scale),
            )
        };
        match self {
            WindowTest::Exists => ScaledTest::Exists,
            WindowTest::Compare(op, t) => ScaledTest::Compare(*op, scaled(t)),
            WindowTest::Between(low, high) => ScaledTest::Between(scaled(low), scaled(high)),
        }
    }
}

/// A `WindowTest` for values of one scale: each threshold as (factor,
/// right side), the value passing `value × factor op right side`.
#[derive(Debug, Clone, Copy)]
enum ScaledTest {
    Exists,
    Compare(Op, (i128, i128)),
    Between((i128, i128), (i128, i128)),
}

impl ScaledTest {
    /// Whether a record's value (a count, or a sum at the test's scale,
    /// None for a sum over no rows) passes.
    fn holds(&self, value: Option<i128>) -> bool {
        let Some(value) = value else {
            // A sum over no rows is NULL: no comparison holds.
            return false;
        };
        let order = |(factor, right): (i128, i128)| (value * factor).cmp(&right);
        match *self {
            ScaledTest::Exists => value > 0,
            ScaledTest::Compare(op, threshold) => {
                let order = order(threshold);
                match op {
                    Op::Eq => order == Ordering::Equal,
                    Op::Ne => order != Ordering::Equal,
                    Op::Lt => order == Ordering::Less,
                    Op::Lte => order != Ordering::Greater,
                    Op::Gt => order == Ordering::Greater,
                    _ => order != Ordering::Less,
                }
            }
            ScaledTest::Between(low, high) => {
                order(low) != Ordering::Less && order(high) != Ordering::Greater
            }
        }
    }
}

/// A `ScaledTest` as the whole values that pass, `lo ≤ value ≤ hi`
/// (negated for `ne`): one comparison pair per record and condition
/// instead of a multiplication and a match on the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Interval {
    lo: i128,
    hi: i128,
    negate: bool,
}

impl ScaledTest {
    /// The test as an interval of values (`value × factor op right` with
    /// factor > 0 is `value op' right / factor`, rounded the safe way).
    fn interval(&self) -> Interval {
        let floor = |(factor, right): (i128, i128)| right.div_euclid(factor);
        let ceil = |(factor, right): (i128, i128)| -(-right).div_euclid(factor);
        let range = |lo, hi| Interval {
            lo,
            hi,
            negate: false,
        };
        match *self {
            ScaledTest::Exists => range(1, i128::MAX),
            ScaledTest::Compare(op, t) => match op {
                Op::Lt => range(i128::MIN, ceil(t) - 1),
                Op::Lte => range(i128::MIN, floor(t)),
                Op::Gt => range(floor(t) + 1, i128::MAX),
                Op::Eq | Op::Ne => {
                    // Only a whole quotient can be equal.
                    let (lo, hi) = if t.1.rem_euclid(t.0) == 0 {
                        (t.1 / t.0, t.1 / t.0)
                    } else {
                        (1, 0)
                    };
                    Interval {
                        lo,
                        hi,
                        negate: op == Op::Ne,
                    }
                }
                _ => range(ceil(t), i128::MAX),
            },
            ScaledTest::Between(low, high) => range(ceil(low), floor(high)),
        }
    }
}

impl Interval {
    /// As `ScaledTest::holds`.
    #[inline]
    fn holds(&self, value: Option<i128>) -> bool {
        match value {
            None => false,
            Some(v) => (self.lo <= v && v <= self.hi) != self.negate,
        }
    }
}

/// One condition as a window pass tests it: its window's start rank, its
/// test, whether it gathers failures (`WindowPass::complemented`), and its
/// index.
#[derive(Debug, Clone, Copy)]
struct Step {
    rank: u32,
    test: Interval,
    complemented: bool,
    condition: usize,
}

/// A column summed exactly: SQL of its value as a scaled bigint, and the
/// scale. None for a column whose values are not exact fixed-point
/// (floats, `numeric` without a declared scale, domains).
pub fn scaled_column(column_sql: &str, column: &Column) -> Option<(String, u32)> {
    let int8 = |sql: String| format!("({sql})::pg_catalog.int8");
    match column.type_sql.as_str() {
        "smallint" | "integer" | "bigint" => Some((int8(column_sql.to_string()), 0)),
        declared => {
            let inside = declared.strip_prefix("numeric(")?.strip_suffix(')')?;
            let (precision, scale) = inside.split_once(',')?;
            let precision: u32 = precision.trim().parse().ok()?;
            let scale: u32 = scale.trim().parse().ok()?;
            if precision > 18 || scale > MAX_SCALE {
                return None;
            }
            // numeric(p,s) holds at most s decimals: the product is whole.
            Some((
                int8(format!(
                    "{column_sql} {} {}::pg_catalog.numeric",
                    op("*"),
                    literal(&10u64.pow(scale).to_string())
                )),
                scale,
            ))
        }
    }
}

/// What one pass reads: the rows of a related table (along its path) and
/// the time its windows are measured on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScanSource {
    /// The FROM clause of the rows as `r`.
    pub from: String,
    /// The entity key a row belongs to.
    pub key: String,
    /// The time column, as SQL on `r`.
    pub time: String,
    /// The windows' common end, the reference time as the column's type.
    pub end: String,
}

/// A related condition a window scan can compute, as the planner found it.
#[derive(Debug, Clone)]
pub struct WindowCandidate {
    pub source: ScanSource,
    /// Its `where` on the row `r`, if any.
    pub family: Option<String>,
    /// For a sum, the column as a scaled bigint and its scale; None for a
    /// count or existence.
    pub sum: Option<(String, u32)>,
    /// The window's start, as SQL of the time column's type.
    pub start: String,
    pub test: WindowTest,
}

/// One condition of a window scan.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowCondition {
    /// The plan's leaf it computes.
    pub leaf: usize,
    /// Its `where` (index into `families`).
    family: usize,
    /// Its summed column (index into `sums`), None for a count.
    sum: Option<usize>,
    /// Its window's start (index into `starts`).
    start: usize,
    test: WindowTest,
}

/// Related conditions of one table computed by one sorted pass (see the
/// module's comment).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowScan {
    pub source: ScanSource,
    /// The distinct window starts, as SQL.
    pub starts: Vec<String>,
    /// The distinct `where`s (None: every row).
    pub families: Vec<Option<String>>,
    /// The distinct summed columns (scaled bigint SQL, scale).
    pub sums: Vec<(String, u32)>,
    pub conditions: Vec<WindowCondition>,
}

/// The window scans of a plan: per source with at least `min_conditions`
/// candidate leaves, one scan per up to `MAX_FAMILIES_PER_SCAN` `where`s.
/// `candidates` are (leaf, candidate), in leaf order.
pub fn plan_scans(
    candidates: &[(usize, &WindowCandidate)],
    min_conditions: usize,
) -> Vec<WindowScan> {
    let mut scans = Vec::new();
    for (source, group) in ScanSource::group(candidates, |c| &c.source) {
        if group.len() < min_conditions.max(1) {
            continue;
        }
        let mut families: Vec<Option<String>> = Vec::new();
        for (_, candidate) in &group {
            if !families.contains(&candidate.family) {
                families.push(candidate.family.clone());
            }
        }
        for chunk in families.chunks(MAX_FAMILIES_PER_SCAN) {
            let mut scan = WindowScan {
                source: source.clone(),
                starts: Vec::new(),
                families: chunk.to_vec(),
                sums: Vec::new(),
                conditions: Vec::new(),
            };
            for &(leaf, candidate) in &group {
                let Some(family) = chunk.iter().position(|f| *f == candidate.family) else {
                    continue;
                };
                let sum = candidate
                    .sum
                    .as_ref()
                    .map(|sum| index_of(&mut scan.sums, sum));
                let start = index_of(&mut scan.starts, &candidate.start);
                scan.conditions.push(WindowCondition {
                    leaf,
                    family,
                    sum,
                    start,
                    test: candidate.test.clone(),
                });
            }
            scans.push(scan);
        }
    }
    scans
}

/// `value`'s index in `list`, added at the end when new.
fn index_of<T: PartialEq + Clone>(list: &mut Vec<T>, value: &T) -> usize {
    match list.iter().position(|v| v == value) {
        Some(i) => i,
        None => {
            list.push(value.clone());
            list.len() - 1
        }
    }
}

impl ScanSource {
    /// The rows `from` (as `r`) of entity key `key`, their windows on the
    /// time column `time` ending at the reference time.
    pub(super) fn new(from: String, key: String, time: &Column, reference_time: &str) -> Self {
        ScanSource {
            from,
            key,
            time: format!("r.{}", ident(&time.name)),
            end: super::emit::reference_as(time.kind, reference_time),
        }
    }

    /// `candidates` (leaf, candidate) grouped by the source each reads, in
    /// a stable order.
    pub(super) fn group<'c, C>(
        candidates: &[(usize, &'c C)],
        source: impl Fn(&C) -> &ScanSource,
    ) -> BTreeMap<&'c ScanSource, Vec<(usize, &'c C)>> {
        let mut by_source: BTreeMap<&ScanSource, Vec<(usize, &C)>> = BTreeMap::new();
        for &(leaf, candidate) in candidates {
            by_source
                .entry(source(candidate))
                .or_default()
                .push((leaf, candidate));
        }
        by_source
    }

    /// A query of one row: each of `starts`' rank among the distinct
    /// starts (from 1), in their order, then the columns `more` adds. A
    /// row in the window of the start ranked k has a bucket of at least k.
    pub(super) fn ranks_sql(starts: &[String], more: &str) -> String {
        let rows: Vec<String> = starts
            .iter()
            .enumerate()
            .map(|(i, s)| format!("({i}, {s})"))
            .collect();
        format!(
            "SELECT pg_catalog.array_agg(x.r ORDER BY x.i){more} FROM \
             (SELECT v.i, pg_catalog.dense_rank() OVER (ORDER BY v.e) AS r FROM (VALUES {}) v(i, e)) x",
            rows.join(", ")
        )
    }

    /// A pass over the rows inside some window (from the earliest of
    /// `starts` to the end): the row's position, its bucket among the
    /// distinct starts, then each of `columns` (SQL on `r`, in that order),
    /// sorted by `order`. `position` and `join` map the key `g.key` to its
    /// position (`Entity::position_sql`).
    pub(super) fn pass_sql(
        &self,
        starts: &[String],
        columns: &[String],
        (position, join): (&str, &str),
        order: &str,
    ) -> String {
        let time = &self.time;
        let rows: Vec<String> = starts.iter().map(|s| format!("({s})")).collect();
        let starts = format!("(VALUES {}) v(e)", rows.join(", "));
        let mut inner = vec![
            format!("{} AS key", self.key),
            format!(
                "pg_catalog.width_bucket({time}, (SELECT pg_catalog.array_agg(DISTINCT v.e ORDER BY v.e) FROM {starts})) AS b"
            ),
        ];
        let mut outer = vec![position.to_string(), "g.b".to_string()];
        for (i, column) in columns.iter().enumerate() {
            inner.push(format!("{column} AS c{i}"));
            outer.push(format!("g.c{i}"));
        }
        format!(
            "SELECT {} FROM (SELECT {} FROM {} WHERE {time} {} (SELECT pg_catalog.min(v.e) FROM {starts}) \
             AND {time} {} (SELECT {})) g{join} ORDER BY {order}",
            outer.join(", "),
            inner.join(", "),
            self.from,
            op(">="),
            op("<="),
            self.end
        )
    }
}

/// A row's bits: bit i set where the i-th condition holds (None: no bit;
/// a NULL condition sets none, as in a `FILTER`).
pub(super) fn mask_sql<'c>(conditions: impl Iterator<Item = Option<&'c str>>) -> String {
    let bits: Vec<String> = conditions
        .enumerate()
        .filter_map(|(i, condition)| {
            condition.map(|c| {
                format!(
                    "CASE WHEN {c} THEN {}::pg_catalog.int8 ELSE 0::pg_catalog.int8 END",
                    1u64 << i
                )
            })
        })
        .collect();
    if bits.is_empty() {
        "0::pg_catalog.int8".to_string()
    } else {
        bits.join(&format!(" {} ", op("+")))
    }
}

impl WindowScan {
    /// Each start's rank (`ScanSource::ranks_sql`).
    pub fn ranks_sql(&self) -> String {
        ScanSource::ranks_sql(&self.starts, "")
    }

    /// The pass: (position, bucket, mask, scaled values...) of every row
    /// inside some window, ordered by position.
    pub fn scan_sql(&self, position: &str, join: &str) -> String {
        let mut columns = vec![mask_sql(self.families.iter().map(Option::as_deref))];
        columns.extend(self.sums.iter().map(|(sql, _)| sql.clone()));
        self.source
            .pass_sql(&self.starts, &columns, (position, join), "1")
    }

    /// The leaves this scan computes.
    pub fn leaves(&self) -> impl Iterator<Item = usize> + '_ {
        self.conditions.iter().map(|c| c.leaf)
    }
}

/// What a condition aggregates: its `where` (family) and its summed
/// column (None: it counts rows).
type Measure = (usize, Option<usize>);

/// The pass over a window scan's rows in Rust: fed the rows in position
/// order, it gives each condition's members and the positions with rows.
pub struct WindowPass<'s> {
    scan: &'s WindowScan,
    /// Per measure (family, sum), its conditions by descending start rank.
    measures: Vec<(Measure, Vec<Step>)>,
    /// By condition: whether a record without rows in its window passes
    /// (`count lt 3`). Such a condition gathers the records it fails, and
    /// its members are the records with rows less those: a record none of
    /// whose rows reach its window is then never visited for it.
    complemented: Vec<bool>,
    /// The current record's position and rows: (bucket, mask, values).
    current: Option<u64>,
    buckets: Vec<u32>,
    masks: Vec<u64>,
    values: Vec<Option<i64>>,
    order: Vec<usize>,
    /// Each condition's members (a complemented one's failures), then
    /// the records with rows (`gather` says why not one insert each).
    members: Gather,
}

impl<'s> WindowPass<'s> {
    /// A pass for `scan`, given its starts' ranks (`ranks_sql`).
    pub fn new(scan: &'s WindowScan, ranks: &[i64]) -> WindowPass<'s> {
        let ranks: Vec<u32> = ranks.iter().map(|&r| r.max(0) as u32).collect();
        let tests: Vec<ScaledTest> = scan
            .conditions
            .iter()
            .map(|c| c.test.at_scale(c.sum.map_or(0, |s| scan.sums[s].1)))
            .collect();
        let complemented: Vec<bool> = scan
            .conditions
            .iter()
            .zip(&tests)
            .map(|(c, test)| test.holds(if c.sum.is_some() { None } else { Some(0) }))
            .collect();
        let mut measures: BTreeMap<Measure, Vec<Step>> = BTreeMap::new();
        for (i, c) in scan.conditions.iter().enumerate() {
            measures.entry((c.family, c.sum)).or_default().push(Step {
                rank: ranks.get(c.start).copied().unwrap_or(u32::MAX),
                test: tests[i].interval(),
                complemented: complemented[i],
                condition: i,
            });
        }
        let measures = measures
            .into_iter()
            .map(|(measure, mut steps)| {
                steps.sort_by_key(|step| std::cmp::Reverse(step.rank));
                (measure, steps)
            })
            .collect();
        WindowPass {
            scan,
            measures,
            current: None,
            buckets: Vec::new(),
            masks: Vec::new(),
            values: Vec::new(),
            order: Vec::new(),
            complemented,
            members: Gather::new(scan.conditions.len() + 1),
        }
    }

    /// One row of `scan_sql`: its record's position, bucket, mask and
    /// scaled values (one per summed column, NULL as None).
    pub fn push(&mut self, position: i64, bucket: i32, mask: i64, values: &[Option<i64>]) {
        let position = position_of(position);
        if self.current != Some(position) {
            self.finish_record();
            self.current = Some(position);
        }
        self.buckets.push(bucket.max(0) as u32);
        self.masks.push(mask as u64);
        self.values.extend_from_slice(values);
    }

    /// Tests every condition on the current record's rows.
    fn finish_record(&mut self) {
        let Some(position) = self.current.take() else {
            return;
        };
        self.members.at(position);
        self.members.add(self.scan.conditions.len());
        let sums = self.scan.sums.len();
        self.order.clear();
        self.order.extend(0..self.buckets.len());
        let buckets = &self.buckets;
        self.order
            .sort_unstable_by_key(|&i| std::cmp::Reverse(buckets[i]));
        for ((family, sum), conditions) in &self.measures {
            let bit = if self.scan.families[*family].is_some() {
                1u64 << family
            } else {
                0
            };
            let (mut next, mut count, mut total, mut summed) = (0, 0i128, 0i128, false);
            // Windows starting after the record's latest row of this
            // `where` hold none of its rows: only complemented conditions
            // pass there, and they gather failures.
            let latest = self
                .order
                .iter()
                .find(|&&row| self.masks[row] & bit == bit)
                .map_or(0, |&row| self.buckets[row]);
            let reached = conditions.partition_point(|step| step.rank > latest);
            for step in &conditions[reached..] {
                while next < self.order.len() && self.buckets[self.order[next]] >= step.rank {
                    let row = self.order[next];
                    next += 1;
                    if self.masks[row] & bit != bit {
                        continue;
                    }
                    count += 1;
                    if let Some(s) = sum {
                        if let Some(v) = self.values[row * sums + s] {
                            total += i128::from(v);
                            summed = true;
                        }
                    }
                }
                let value = match sum {
                    None => Some(count),
                    Some(_) => summed.then_some(total),
                };
                if step.test.holds(value) != step.complemented {
                    self.members.add(step.condition);
                }
            }
        }
        self.buckets.clear();
        self.masks.clear();
        self.values.clear();
    }

    /// Each condition's members, by leaf, and the positions with rows in
    /// some window.
    pub fn finish(mut self) -> (Vec<(usize, Members)>, Members) {
        self.finish_record();
        let mut members = self.members.finish();
        let with_rows = members.pop().unwrap_or_default();
        for (members, complemented) in members.iter_mut().zip(&self.complemented) {
            if *complemented {
                *members = &with_rows - &*members;
            }
        }
        let leaves = self
            .scan
            .conditions
            .iter()
            .map(|c| c.leaf)
            .zip(members)
            .collect();
        (leaves, with_rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::ColumnKind;
    use crate::generate::Rng;

    #[test]
    fn intervals_pass_the_values_scaled_tests_pass() {
        let mut rng = Rng(0x1A7E_2026);
        let ops = [Op::Eq, Op::Ne, Op::Lt, Op::Lte, Op::Gt, Op::Gte];
        for _ in 0..20_000 {
            let mantissa = rng.below(4001) as i128 - 2000;
            let scale = rng.below(4) as u32;
            let threshold = Decimal { mantissa, scale };
            let test = match rng.below(8) {
                0 => WindowTest::Exists,
                1 => {
                    let other = Decimal {
                        mantissa: mantissa + rng.below(300) as i128,
                        scale,
                    };
                    WindowTest::Between(threshold, other)
                }
                _ => WindowTest::Compare(*rng.pick(&ops), threshold),
            };
            let scaled = test.at_scale(rng.below(3) as u32);
            let interval = scaled.interval();
            for value in (-30..30)
                .map(|v| Some(v * 7 + rng.below(7) as i128))
                .chain([None])
            {
                assert_eq!(
                    interval.holds(value),
                    scaled.holds(value),
                    "{test:?} {scaled:?} {interval:?} of {value:?}"
                );
            }
        }
    }

    #[test]
    fn decimals_parse_and_compare_exactly() {
        let d = |s| Decimal::parse(s).unwrap();
        assert_eq!(d("12.50").compared_with(1250, 2), Ordering::Equal);
        assert_eq!(d("12.5").compared_with(1251, 2), Ordering::Greater);
        assert_eq!(d("-3").compared_with(-2, 0), Ordering::Greater);
        assert_eq!(d("0.000000001").compared_with(0, 2), Ordering::Less);
        for refused in [
            "1e5",
            "",
            "-",
            "1.",
            "1.0000000001",
            "abc",
            "1234567890123456789",
        ] {
            // "1." has an empty fraction, which JSON never writes: refused or
            // read as 1, either is exact; the others must be refused.
            if refused != "1." {
                assert_eq!(Decimal::parse(refused), None, "{refused}");
            }
        }
    }

    #[test]
    fn scaled_columns_are_exact_types_only() {
        let column = |t: &str| Column {
            name: "amount".into(),
            type_sql: t.into(),
            kind: ColumnKind::Numeric,
            base_type_sql: t.into(),
            refused: None,
        };
        assert_eq!(scaled_column("r.a", &column("integer")).unwrap().1, 0);
        let (sql, scale) = scaled_column("r.a", &column("numeric(12,2)")).unwrap();
        assert_eq!(scale, 2);
        assert!(sql.contains("'100'"), "{sql}");
        for refused in [
            "numeric",
            "double precision",
            "numeric(30,2)",
            "numeric(12,10)",
            "money",
        ] {
            assert!(
                scaled_column("r.a", &column(refused)).is_none(),
                "{refused}"
            );
        }
    }

    /// `test` of `value` / `unit`, in floating point (exact for these
    /// small numbers), written apart from `WindowTest::holds`.
    fn naive(test: &WindowTest, value: Option<i128>, unit: f64) -> bool {
        let Some(value) = value else { return false };
        let x = value as f64 / unit;
        let f = |d: &Decimal| d.mantissa as f64 / 10f64.powi(d.scale as i32);
        match test {
            WindowTest::Exists => x > 0.0,
            WindowTest::Between(low, high) => f(low) <= x && x <= f(high),
            WindowTest::Compare(op, t) => match op {
                Op::Eq => x == f(t),
                Op::Ne => x != f(t),
                Op::Lt => x < f(t),
                Op::Lte => x <= f(t),
                Op::Gt => x > f(t),
                _ => x >= f(t),
            },
        }
    }

    /// A row of a generated table: record, time (day), kind, amount (cents).
    type Row = (i64, i32, u8, Option<i64>);

    /// The pass against a row-by-row evaluation of every condition, over
    /// random rows, windows, kinds and thresholds (ties included).
    #[test]
    fn the_pass_matches_row_by_row_evaluation() {
        let mut rng = Rng(7);
        for round in 0..1000 {
            let source = ScanSource {
                from: "t r".into(),
                key: "r.k".into(),
                time: "r.t".into(),
                end: "now()".into(),
            };
            // Windows: start day s (a row at day t is inside when t >= s).
            let starts: Vec<i32> = (0..1 + rng.below(6))
                .map(|_| rng.below(20) as i32)
                .collect();
            let mut candidates = Vec::new();
            let mut truth: Vec<(i32, Option<u8>, bool, WindowTest)> = Vec::new();
            for _ in 0..1 + rng.below(12) {
                let start = *rng.pick(&starts);
                let kind = rng.chance(50).then(|| rng.below(3) as u8);
                let sum = rng.chance(50);
                let value = format!("{}", rng.below(6) as i64 * if sum { 100 } else { 1 } - 1);
                let op = *rng.pick(&[Op::Eq, Op::Ne, Op::Lt, Op::Lte, Op::Gt, Op::Gte]);
                let test = if rng.chance(15) {
                    WindowTest::Exists
                } else if rng.chance(15) {
                    WindowTest::Between(
                        Decimal::parse("1.5").unwrap(),
                        Decimal::parse(&value).unwrap(),
                    )
                } else {
                    WindowTest::Compare(op, Decimal::parse(&value).unwrap())
                };
                truth.push((start, kind, sum, test.clone()));
                candidates.push(WindowCandidate {
                    source: source.clone(),
                    family: kind.map(|k| format!("r.kind = {k}")),
                    sum: sum.then(|| ("r.amount".to_string(), 2)),
                    start: format!("day {start}"),
                    test,
                });
            }
            let listed: Vec<(usize, &WindowCandidate)> = candidates.iter().enumerate().collect();
            let scans = plan_scans(&listed, 1);
            assert_eq!(scans.len(), 1, "round {round}");
            let scan = &scans[0];
            // Ranks of the starts among the distinct ones, as PostgreSQL gives them.
            let mut distinct: Vec<i32> = scan
                .starts
                .iter()
                .map(|s| s.trim_start_matches("day ").parse().unwrap())
                .collect();
            let days = distinct.clone();
            distinct.sort_unstable();
            distinct.dedup();
            let ranks: Vec<i64> = days
                .iter()
                .map(|d| distinct.iter().position(|x| x == d).unwrap() as i64 + 1)
                .collect();
            let rows: Vec<Row> = (0..rng.below(60))
                .map(|_| {
                    (
                        rng.below(8) as i64,
                        rng.below(25) as i32,
                        rng.below(3) as u8,
                        (!rng.chance(10)).then(|| rng.below(300) as i64),
                    )
                })
                .collect();
            let mut sorted: Vec<&Row> = rows.iter().filter(|r| r.1 >= distinct[0]).collect();
            sorted.sort_by_key(|r| r.0);
            let mut pass = WindowPass::new(scan, &ranks);
            for (key, day, kind, amount) in sorted {
                let bucket = distinct.iter().filter(|s| **s <= *day).count() as i32;
                let mask: i64 = scan
                    .families
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.as_deref() == Some(&format!("r.kind = {kind}")))
                    .map(|(i, _)| 1i64 << i)
                    .sum();
                let values = if scan.sums.is_empty() {
                    vec![]
                } else {
                    vec![*amount]
                };
                pass.push(*key, bucket, mask, &values);
            }
            let (leaves, with_rows) = pass.finish();
            for (leaf, members) in leaves {
                let (start, kind, sum, test) = &truth[leaf];
                for key in 0..8i64 {
                    let inside: Vec<&Row> = rows
                        .iter()
                        .filter(|r| r.0 == key && r.1 >= *start && kind.is_none_or(|k| r.2 == k))
                        .collect();
                    if !with_rows.contains(key as u64) {
                        // No row in any window: the engine's empty value.
                        assert!(!members.contains(key as u64));
                        continue;
                    }
                    let value = if *sum {
                        let known: Vec<i64> = inside.iter().filter_map(|r| r.3).collect();
                        (!known.is_empty()).then(|| known.iter().map(|v| i128::from(*v)).sum())
                    } else {
                        Some(inside.len() as i128)
                    };
                    let expected = naive(test, value, if *sum { 100.0 } else { 1.0 });
                    let scaled = test.at_scale(if *sum { 2 } else { 0 }).holds(value);
                    assert_eq!(scaled, expected, "{test:?} of {value:?}");
                    assert_eq!(
                        members.contains(key as u64),
                        expected,
                        "round {round} leaf {leaf} key {key}: {test:?} of {value:?}"
                    );
                }
            }
        }
    }
}
