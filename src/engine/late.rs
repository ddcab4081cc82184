//! Leaves computed when a segment reads them, not with the plan: the
//! comparisons of column groups over the entity's rows, from the buckets
//! the plan's scan kept (`segments_core::compile::ColumnBuckets` says why).
//!
//! A leaf is filled before the first segment reading it is evaluated and
//! released after its last reader (`engine::refresh`), or sooner when
//! more than `MAX_FILLED` are held: it is made again if another segment
//! reads it. Memory then follows the buckets (every record once per
//! column) and a bounded number of comparisons, not the number of
//! comparisons a segment list makes.

use std::collections::{HashMap, HashSet};

use segments_core::bitmap::Members;
use segments_core::compile::ColumnBuckets;

/// The most late leaves held at once; over it, those the segment being
/// evaluated does not read are released. Counted in a batch's estimate
/// (`engine::refresh`).
pub const MAX_FILLED: usize = 64;

/// The buckets of a plan's late column groups and which leaves are
/// filled.
#[derive(Default)]
pub struct LateLeaves {
    groups: Vec<ColumnBuckets>,
    /// By leaf: its group (in `groups`) and its comparison in the group.
    of_leaf: HashMap<usize, (usize, usize)>,
    filled: HashSet<usize>,
}

impl LateLeaves {
    /// Keeps a group's buckets; `leaves` are its comparisons' leaves, in
    /// the group's order.
    pub fn keep(&mut self, buckets: ColumnBuckets, leaves: impl Iterator<Item = usize>) {
        let group = self.groups.len();
        for (test, leaf) in leaves.enumerate() {
            self.of_leaf.insert(leaf, (group, test));
        }
        self.groups.push(buckets);
    }

    /// Fills `leaves[leaf]` if it is late and not filled. With `reading`
    /// (the leaves of the segment about to be evaluated, ascending), first
    /// releases the filled leaves it does not read when `MAX_FILLED` are
    /// held; without, keeps every leaf filled (one evaluation of a whole
    /// plan: `explain`, live apply).
    pub fn fill(&mut self, leaf: usize, reading: Option<&[usize]>, leaves: &mut [Members]) {
        let Some(&(group, test)) = self.of_leaf.get(&leaf) else {
            return;
        };
        if self.filled.contains(&leaf) {
            return;
        }
        if let Some(reading) = reading.filter(|_| self.filled.len() >= MAX_FILLED) {
            let spare: Vec<usize> = self
                .filled
                .iter()
                .copied()
                .filter(|l| reading.binary_search(l).is_err())
                .collect();
            for l in spare {
                self.release(l, leaves);
            }
        }
        leaves[leaf] = self.groups[group].members(test);
        self.filled.insert(leaf);
    }

    /// Frees a filled late leaf's bitmap.
    pub fn release(&mut self, leaf: usize, leaves: &mut [Members]) {
        if self.filled.remove(&leaf) {
            leaves[leaf] = Members::new();
        }
    }
}
