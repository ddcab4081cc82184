//! A column group's rows kept in their buckets, so that each comparison
//! is computed when a segment reads it, not all of them up front.
//!
//! Made all at once (`columns::column_leaves`, for groups over traits),
//! a group's comparisons are one bitmap each. With thousands of segments, each with
//! thresholds of its own, that is thousands of bitmaps of up to a bit per
//! record held together: at ten million records and 10,000 segments, tens
//! of gigabytes. The buckets themselves hold every record once (the rows
//! equal to a constant a second time), whatever the number of
//! comparisons: a refresh keeps them and makes a comparison's bitmap from
//! them for the segments that read it (`ColumnBuckets::members`), freeing
//! it after its last reader.
//!
//! A comparison is a union of consecutive buckets (`lt 500`: every bucket
//! below 500's). Uniting hundreds of small bitmaps for each of thousands
//! of comparisons would cost more than the sweep it replaces, so the
//! union of the buckets below every `stride`-th constant is kept too
//! (`CHECKPOINTS` of them, a bit per record each at most): the rows below
//! any constant are the nearest checkpoint plus or minus at most half a
//! stride of buckets.

use roaring::MultiOps;

use crate::bitmap::Members;

use super::columns::{Bucket, ColumnGroup, ColumnOp};

/// How many unions of the buckets below a constant an ordered group
/// keeps (with more than twice as many buckets; fewer are united
/// directly).
pub const CHECKPOINTS: usize = 16;

/// One group's rows by bucket and its comparisons, each computed on
/// demand.
#[derive(Debug, Default)]
pub struct ColumnBuckets {
    /// By comparison (the group's order): its operator and constants as
    /// ranks among the sorted distinct constants (1 = the smallest) in an
    /// ordered group, or as places in `ColumnGroup::values` in an equality
    /// group.
    tests: Vec<(ColumnOp, Vec<usize>)>,
    /// below[b]: the rows at or above constant b and under constant b + 1
    /// (below[0]: under the first constant). Empty in an equality group.
    below: Vec<Members>,
    /// equal[b]: the rows equal to constant b (by rank, or by place).
    equal: Vec<Members>,
    /// Every row with a value (not NULL).
    not_null: Members,
    /// checkpoints[k]: the union of below[..k * stride] (the last: of
    /// every bucket). Empty when the buckets are few.
    checkpoints: Vec<Members>,
    stride: usize,
}

impl ColumnBuckets {
    /// An ordered group's buckets (`ColumnGroup::buckets_sql`'s rows),
    /// given its constants' ranks.
    pub fn ordered(group: &ColumnGroup, ranks: &[i64], buckets: Vec<Bucket>) -> ColumnBuckets {
        Self::ordered_with(group, ranks, buckets, CHECKPOINTS)
    }

    /// `ordered`, keeping at most `checkpoints` unions.
    fn ordered_with(
        group: &ColumnGroup,
        ranks: &[i64],
        buckets: Vec<Bucket>,
        checkpoints: usize,
    ) -> ColumnBuckets {
        let distinct = ranks.iter().copied().max().unwrap_or(0).max(0) as usize;
        let mut below = vec![Members::new(); distinct + 1];
        let mut equal = vec![Members::new(); distinct + 1];
        for bucket in buckets {
            let Some(b) = bucket.number else { continue };
            let b = (b.max(0) as usize).min(distinct);
            if bucket.exact == Some(true) {
                equal[b] |= &bucket.members;
            }
            below[b] |= bucket.members;
        }
        let not_null = below.iter().union();
        let (stride, checkpoints) = if below.len() > checkpoints.max(1).saturating_mul(2) {
            let stride = below.len().div_ceil(checkpoints);
            let mut under = Members::new();
            let mut kept = vec![Members::new()];
            for chunk in below.chunks(stride) {
                chunk.iter().for_each(|b| under |= b);
                kept.push(under.clone());
            }
            (stride, kept)
        } else {
            (below.len().max(1), Vec::new())
        };
        let rank = |value: &usize| (ranks[*value].max(1) as usize).min(distinct);
        ColumnBuckets {
            checkpoints,
            stride,
            tests: group
                .tests
                .iter()
                .map(|(_, op, values)| (*op, values.iter().map(rank).collect()))
                .collect(),
            below,
            equal,
            not_null,
        }
    }

    /// An equality group's matches (`ColumnGroup::matches_sql`'s rows:
    /// place in `values` from 1, rows equal to that constant).
    pub fn equality(group: &ColumnGroup, matches: Vec<(i64, Members)>) -> ColumnBuckets {
        let mut equal = vec![Members::new(); group.values.len()];
        for (place, members) in matches {
            if let Some(slot) = usize::try_from(place - 1)
                .ok()
                .and_then(|i| equal.get_mut(i))
            {
                *slot |= members;
            }
        }
        ColumnBuckets {
            tests: group
                .tests
                .iter()
                .map(|(_, _, values)| (ColumnOp::In, values.clone()))
                .collect(),
            below: Vec::new(),
            not_null: Members::new(),
            equal,
            checkpoints: Vec::new(),
            stride: 1,
        }
    }

    /// The members of the group's comparison number `test`.
    pub fn members(&self, test: usize) -> Members {
        let (op, constants) = &self.tests[test];
        let at = |i: usize| constants[i];
        match op {
            ColumnOp::Eq => self.equal[at(0)].clone(),
            ColumnOp::Ne => &self.not_null - &self.equal[at(0)],
            ColumnOp::In => constants.iter().map(|&c| &self.equal[c]).union(),
            ColumnOp::Lt => self.under(at(0)),
            ColumnOp::Lte => self.under(at(0)) | &self.equal[at(0)],
            ColumnOp::Gte => &self.not_null - &self.under(at(0)),
            ColumnOp::Gt => &self.not_null - &(self.under(at(0)) | &self.equal[at(0)]),
            ColumnOp::Between => self.between(at(0), at(1)),
            ColumnOp::Outside => &self.not_null - &self.between(at(0), at(1)),
        }
    }

    /// The rows from constant `low` to constant `high`, both included.
    fn between(&self, low: usize, high: usize) -> Members {
        match low.cmp(&high) {
            std::cmp::Ordering::Greater => Members::new(),
            std::cmp::Ordering::Equal => self.equal[low].clone(),
            std::cmp::Ordering::Less => self.range(low, high) | &self.equal[high],
        }
    }

    /// The union of buckets `from..to`.
    fn range(&self, from: usize, to: usize) -> Members {
        let to = to.min(self.below.len());
        if from >= to {
            return Members::new();
        }
        if to - from <= self.stride {
            return self.below[from..to].iter().union();
        }
        self.under(to) - self.under(from)
    }

    /// The rows below constant `j` (the union of buckets `..j`): from the
    /// nearest checkpoint, or directly from whichever side unites fewer.
    fn under(&self, j: usize) -> Members {
        let j = j.min(self.below.len());
        if self.checkpoints.is_empty() {
            if j <= self.below.len() / 2 {
                return self.below[..j].iter().union();
            }
            return &self.not_null - &self.below[j..].iter().union();
        }
        let (k, r) = (j / self.stride, j % self.stride);
        let next = ((k + 1) * self.stride).min(self.below.len());
        if r <= self.stride / 2 || k + 1 >= self.checkpoints.len() {
            let mut rows = self.checkpoints[k].clone();
            self.below[k * self.stride..j]
                .iter()
                .for_each(|b| rows |= b);
            rows
        } else {
            let mut rows = self.checkpoints[k + 1].clone();
            self.below[j..next].iter().for_each(|b| rows -= b);
            rows
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::columns::column_leaves;
    use super::super::columns::tests::{buckets_of, integer_group, OPS};
    use super::*;
    use crate::generate::Rng;

    /// Every comparison made from checkpoints equals the one made by
    /// uniting buckets directly (`column_leaves` with few constants, which
    /// its own test checks row by row), with constants in any order,
    /// equal to row values or not.
    #[test]
    fn each_comparison_on_demand_equals_the_sweep() {
        let ops = OPS;
        let mut rng = Rng(7);
        for _ in 0..500 {
            let rows: Vec<Option<i64>> = (0..1 + rng.below(200))
                .map(|_| (!rng.chance(10)).then(|| rng.below(40) as i64 - 10))
                .collect();
            let constants: Vec<i64> = (0..1 + rng.below(30))
                .map(|_| rng.below(50) as i64 - 15)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .rev()
                .collect();
            let tests: Vec<(usize, ColumnOp, Vec<usize>)> = (0..1 + rng.below(20))
                .map(|leaf| {
                    let op = *rng.pick(&ops);
                    let count = match op {
                        ColumnOp::Between | ColumnOp::Outside => 2,
                        ColumnOp::In => 1 + rng.below(4),
                        _ => 1,
                    };
                    let mine = (0..count).map(|_| rng.below(constants.len())).collect();
                    (leaf, op, mine)
                })
                .collect();
            let (group, sorted, ranks) = integer_group(&constants, tests);
            let swept = column_leaves(&group, &ranks, buckets_of(&rows, &sorted));
            // Without checkpoints, and with as many as the test's few
            // constants allow (strides of 1 to 10 buckets).
            for checkpoints in [usize::MAX, 1 + rng.below(10)] {
                let kept = ColumnBuckets::ordered_with(
                    &group,
                    &ranks,
                    buckets_of(&rows, &sorted),
                    checkpoints,
                );
                for (t, (_, want)) in swept.iter().enumerate() {
                    assert_eq!(
                        &kept.members(t),
                        want,
                        "{:?} over {rows:?}, {checkpoints} checkpoints",
                        group.tests[t]
                    );
                }
            }
        }
    }

    #[test]
    fn an_equality_group_unites_its_constants_rows() {
        let group = ColumnGroup {
            operand: "e.country".into(),
            sql_type: "text".into(),
            values: vec!["'DE'".into(), "'FR'".into(), "'IT'".into()],
            tests: vec![(4, ColumnOp::Eq, vec![1]), (9, ColumnOp::In, vec![0, 2])],
            ordered: false,
            rows: None,
        };
        let rows = |r: &[u64]| r.iter().copied().collect::<Members>();
        let kept = ColumnBuckets::equality(
            &group,
            vec![
                (1, rows(&[1, 5])),
                (2, rows(&[2])),
                (3, rows(&[7])),
                (9, rows(&[8])),
            ],
        );
        assert_eq!(kept.members(0), rows(&[2]));
        assert_eq!(kept.members(1), rows(&[1, 5, 7]));
    }
}
