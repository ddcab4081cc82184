//! The members of many conditions, gathered record by record as a pass
//! over sorted rows decides them (window and funnel scans).
//!
//! A pass decides every condition for every record: at 1M records and a
//! few hundred conditions, that is hundreds of millions of "this record
//! holds" facts. Inserting each into its condition's bitmap costs a
//! search; queueing positions and appending them costs a write of 8 bytes
//! and a push into a container. Here a fact is one OR into a word: each
//! condition has the bits of the current chunk of 2^16 positions (8 kB),
//! and when the pass moves to another chunk the touched conditions' bits
//! become one Roaring container each (`from_lsb0_bytes`, which picks an
//! array or a bitmap container).
//!
//! Memory: 8 kB per condition, plus the bitmaps gathered. Rows usually
//! come in position order, so each chunk is visited once; a chunk seen
//! again (a negative integer key sorts first but is a high position) is
//! merged into what was gathered before.

use roaring::{RoaringBitmap, RoaringTreemap};

use crate::bitmap::Members;

/// Words of one chunk of 2^16 positions.
const WORDS: usize = 1 << 10;

/// Gathered members of `n` conditions (see the module comment).
pub(super) struct Gather {
    /// The chunk (position >> 16) whose bits `words` hold.
    chunk: Option<u64>,
    /// The current record's word in the chunk (times `conditions`: the
    /// first of its words) and its bit.
    word: usize,
    bit: u64,
    /// The chunk's words, word by word, each with one per condition: the
    /// conditions a record meets are set in one stretch of memory (a
    /// condition's own 8 kB each would be 8 kB apart, the same cache sets).
    words: Vec<u64>,
    conditions: usize,
    /// Whether a condition has a bit in the current chunk, and which do.
    touched: Vec<bool>,
    touched_list: Vec<usize>,
    members: Vec<Members>,
    /// Scratch: one chunk's words as bytes.
    bytes: Vec<u8>,
}

impl Gather {
    /// Nothing gathered yet for `conditions` conditions.
    pub(super) fn new(conditions: usize) -> Gather {
        Gather {
            chunk: None,
            word: 0,
            bit: 0,
            words: vec![0; conditions * WORDS],
            conditions,
            touched: vec![false; conditions],
            touched_list: Vec::new(),
            members: vec![Members::new(); conditions],
            bytes: Vec::with_capacity(WORDS * 8),
        }
    }

    /// The record that the next `add`s are about.
    #[inline]
    pub(super) fn at(&mut self, position: u64) {
        let chunk = position >> 16;
        if self.chunk != Some(chunk) {
            self.flush();
            self.chunk = Some(chunk);
        }
        self.word = (((position >> 6) as usize) & (WORDS - 1)) * self.conditions;
        self.bit = 1 << (position & 63);
    }

    /// The current record is a member of `condition`.
    #[inline]
    pub(super) fn add(&mut self, condition: usize) {
        if !self.touched[condition] {
            self.touched[condition] = true;
            self.touched_list.push(condition);
        }
        self.words[self.word + condition] |= self.bit;
    }

    /// Turns the current chunk's bits into containers of the touched
    /// conditions' bitmaps, and clears them.
    fn flush(&mut self) {
        let Some(chunk) = self.chunk else {
            return;
        };
        let high = (chunk >> 16) as u32;
        let offset = ((chunk & 0xFFFF) as u32) << 16;
        for &condition in &self.touched_list {
            self.bytes.clear();
            for w in 0..WORDS {
                let word = &mut self.words[w * self.conditions + condition];
                self.bytes.extend_from_slice(&word.to_le_bytes());
                *word = 0;
            }
            let container = RoaringBitmap::from_lsb0_bytes(offset, &self.bytes);
            self.members[condition] |= RoaringTreemap::from_bitmaps([(high, container)]);
            self.touched[condition] = false;
        }
        self.touched_list.clear();
    }

    /// Each condition's members, in condition order.
    pub(super) fn finish(mut self) -> Vec<Members> {
        self.flush();
        self.members
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::Rng;

    /// Whatever the order of records (ascending runs, chunks seen again,
    /// the top of the range), each condition gets exactly what was added.
    #[test]
    fn gathers_what_inserting_one_by_one_gives() {
        let mut rng = Rng(0x6A7E);
        for round in 0..50 {
            let conditions = 1 + rng.below(5);
            let mut gather = Gather::new(conditions);
            let mut expected = vec![Members::new(); conditions];
            let bases = [
                0u64,
                65_530,
                1 << 32,
                (1 << 32) - 3,
                u64::MAX - 70_000,
                5 << 40,
            ];
            let mut position = *rng.pick(&bases);
            for _ in 0..rng.below(3000) {
                // Mostly ascending, sometimes a jump anywhere (back too).
                position = if rng.chance(2) {
                    let base = *rng.pick(&bases);
                    base.wrapping_add(rng.below(200_000) as u64)
                } else {
                    let most = if rng.chance(50) { 3 } else { 70_000 };
                    position.wrapping_add(1 + rng.below(most) as u64)
                };
                gather.at(position);
                for (c, want) in expected.iter_mut().enumerate() {
                    if rng.chance(40) {
                        gather.add(c);
                        gather.add(c);
                        want.insert(position);
                    }
                }
            }
            assert_eq!(gather.finish(), expected, "round {round}");
        }
    }
}
