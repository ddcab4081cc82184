//! Memberships as Roaring bitmaps of key positions (`aggregate` builds them
//! inside a scan), and the algebra that turns leaf bitmaps
//! into rule and segment memberships with their counts.
//!
//! A position is a 64-bit number: an integer key is its own position (a
//! negative key maps to the upper half of the range), any other key gets one
//! from `segments.entity_key`.

use roaring::RoaringTreemap;

use crate::compile::{CompiledBody, CompiledRule, Expr};
use crate::definition::Combine;

pub type Members = RoaringTreemap;

pub fn position_of(key: i64) -> u64 {
    key as u64
}

pub fn key_of(position: u64) -> i64 {
    position as i64
}

pub fn serialize(members: &Members) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(members.serialized_size());
    members
        .serialize_into(&mut bytes)
        .expect("writing to a Vec cannot fail");
    bytes
}

/// Reads a serialized bitmap (as `rb_agg` and the membership table hold).
/// Malformed input is an error, never a crash: the reader checks every
/// length against the bytes it has, and allocates per container at most
/// what one container can hold.
pub fn deserialize(bytes: &[u8]) -> std::io::Result<Members> {
    RoaringTreemap::deserialize_from(bytes)
}

/// The first `n` positions of a bitmap in key order (negative integer keys
/// sit in the upper half of the position range and sort first), reading
/// no more than it returns.
pub fn first_in_key_order(members: &Members, n: usize) -> Vec<u64> {
    const NEGATIVE: u64 = 1 << 63;
    let mut out: Vec<u64> = members
        .iter()
        .skip(members.rank(NEGATIVE - 1) as usize)
        .take(n)
        .collect();
    if out.len() < n {
        out.extend(
            members
                .iter()
                .take_while(|p| *p < NEGATIVE)
                .take(n - out.len()),
        );
    }
    out
}

// ---- algebra --------------------------------------------------------------

/// Evaluates an expression over the leaves' bitmaps. `all_rows` is what
/// `not` complements against.
pub fn evaluate(expr: &Expr, leaves: &[Members], all_rows: &Members) -> Members {
    match expr {
        Expr::Leaf(i) => leaves[*i].clone(),
        Expr::All(items) => {
            let mut iter = items.iter();
            let mut acc = iter
                .next()
                .map(|e| evaluate(e, leaves, all_rows))
                .unwrap_or_else(|| all_rows.clone());
            for item in iter {
                if acc.is_empty() {
                    break;
                }
                acc &= evaluate(item, leaves, all_rows);
            }
            acc
        }
        Expr::Any(items) => {
            let mut acc = Members::new();
            for item in items {
                acc |= evaluate(item, leaves, all_rows);
            }
            acc
        }
        Expr::Not(inner) => all_rows - &evaluate(inner, leaves, all_rows),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleCount {
    pub path: String,
    pub name: Option<String>,
    pub combine: Option<String>,
    /// Members of this rule alone.
    pub members: u64,
    /// Members of this rule combined with every rule before it at its level.
    pub cumulative: u64,
}

/// Evaluates a list of rules, combining left to right, and records the
/// counts of every rule and subrule (parents before their children).
/// Every rule's members are limited to `universe` (the existing, eligible
/// rows) when there is one.
pub fn evaluate_rules(
    rules: &[CompiledRule],
    leaves: &[Members],
    all_rows: &Members,
    universe: Option<&Members>,
    counts: &mut Vec<RuleCount>,
) -> Members {
    let mut combined: Option<Members> = None;
    for rule in rules {
        let slot = counts.len();
        counts.push(RuleCount {
            path: rule.label.clone(),
            name: rule.name.clone(),
            combine: rule.combine.map(|c| c.as_str().to_string()),
            members: 0,
            cumulative: 0,
        });
        let own = match &rule.body {
            CompiledBody::Expr(expr) => match universe {
                Some(universe) => evaluate(expr, leaves, all_rows) & universe,
                None => evaluate(expr, leaves, all_rows),
            },
            CompiledBody::Rules(sub) => evaluate_rules(sub, leaves, all_rows, universe, counts),
        };
        let next = match (combined, rule.combine) {
            (None, _) => own.clone(),
            (Some(acc), Some(Combine::Intersect)) => acc & &own,
            (Some(acc), Some(Combine::Except)) => acc - &own,
            (Some(acc), _) => acc | &own,
        };
        counts[slot].members = own.len();
        counts[slot].cumulative = next.len();
        combined = Some(next);
    }
    combined.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(values: &[u64]) -> Members {
        values.iter().copied().collect()
    }

    fn rule(label: &str, combine: Option<Combine>, body: CompiledBody) -> CompiledRule {
        CompiledRule {
            label: label.into(),
            name: None,
            combine,
            body,
        }
    }

    /// 10,000+ random and adversarial byte strings: reading them gives a
    /// bitmap or an error, never a panic or an abort, and a bounded read of
    /// what it claims allocates only what it returns.
    #[test]
    fn bitmap_reader_survives_random_and_adversarial_bytes() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let valid = serialize(&[1u64, 2, 70_000, 1 << 40, u64::MAX].into_iter().collect());
        let full: Members = (0u64..200_000).collect();
        let full = serialize(&full);
        let (mut errors, mut read) = (0, 0);
        for case in 0..12_000 {
            let bytes: Vec<u8> = match case % 4 {
                // pure noise
                0 => (0..next() % 512).map(|_| next() as u8).collect(),
                // a valid bitmap with bytes flipped
                1 => {
                    let mut b = if case % 8 == 1 {
                        valid.clone()
                    } else {
                        full.clone()
                    };
                    for _ in 0..1 + next() % 8 {
                        let i = (next() as usize) % b.len();
                        b[i] = next() as u8;
                    }
                    b
                }
                // truncated
                2 => full[..(next() as usize) % full.len()].to_vec(),
                // a header claiming huge counts: many bitmaps, 65536 run containers
                _ => {
                    let mut b = Vec::new();
                    b.extend_from_slice(&(next() % u64::MAX).to_le_bytes());
                    b.extend_from_slice(&(next() as u32).to_le_bytes());
                    b.extend_from_slice(&12347u32.to_le_bytes()); // run-container cookie
                    b.extend((0..next() % 4096).map(|_| next() as u8));
                    b
                }
            };
            match deserialize(&bytes) {
                Ok(members) => {
                    read += 1;
                    assert!(first_in_key_order(&members, 10).len() <= 10);
                }
                Err(_) => errors += 1,
            }
        }
        assert_eq!(errors + read, 12_000);
        assert!(
            errors > 1_000,
            "adversarial input should mostly be refused ({errors} refused)"
        );
    }

    #[test]
    fn first_members_in_key_order_take_negative_keys_first() {
        let members: Members = [5i64, -3, 0, 9, -10].into_iter().map(position_of).collect();
        let keys: Vec<i64> = first_in_key_order(&members, 4)
            .into_iter()
            .map(key_of)
            .collect();
        assert_eq!(keys, vec![-10, -3, 0, 5]);
        assert_eq!(first_in_key_order(&members, 0), Vec::<u64>::new());
    }

    #[test]
    fn positions_round_trip_every_integer_key() {
        for key in [0i64, 1, 42, i64::MAX, -1, i64::MIN] {
            assert_eq!(key_of(position_of(key)), key);
        }
        let members: Members = [1u64, 5, 1 << 40].into_iter().collect();
        assert_eq!(deserialize(&serialize(&members)).unwrap(), members);
    }

    #[test]
    fn not_complements_against_all_rows() {
        let all = set(&[1, 2, 3, 4, 5]);
        let leaves = vec![set(&[1, 2]), set(&[2, 3])];
        let not_first = Expr::Not(Box::new(Expr::Leaf(0)));
        assert_eq!(evaluate(&not_first, &leaves, &all), set(&[3, 4, 5]));
        let both = Expr::All(vec![Expr::Leaf(0), Expr::Leaf(1)]);
        assert_eq!(evaluate(&both, &leaves, &all), set(&[2]));
        let either = Expr::Any(vec![Expr::Leaf(0), Expr::Leaf(1)]);
        assert_eq!(evaluate(&either, &leaves, &all), set(&[1, 2, 3]));
    }

    #[test]
    fn rules_combine_left_to_right_with_counts() {
        // ((r1 union r2) intersect r3) except r4, r2 made of two subrules.
        let all = set(&(1..=10).collect::<Vec<_>>());
        let leaves = vec![
            set(&[1, 2, 3]),
            set(&[4, 5]),
            set(&[5, 6]),
            set(&[1, 2, 4, 5, 9]),
            set(&[2]),
        ];
        let rules = vec![
            rule("1", None, CompiledBody::Expr(Expr::Leaf(0))),
            rule(
                "2",
                Some(Combine::Union),
                CompiledBody::Rules(vec![
                    rule("2.1", None, CompiledBody::Expr(Expr::Leaf(1))),
                    rule(
                        "2.2",
                        Some(Combine::Union),
                        CompiledBody::Expr(Expr::Leaf(2)),
                    ),
                ]),
            ),
            rule(
                "3",
                Some(Combine::Intersect),
                CompiledBody::Expr(Expr::Leaf(3)),
            ),
            rule(
                "4",
                Some(Combine::Except),
                CompiledBody::Expr(Expr::Leaf(4)),
            ),
        ];
        let mut counts = Vec::new();
        let members = evaluate_rules(&rules, &leaves, &all, Some(&all), &mut counts);
        assert_eq!(members, set(&[1, 4, 5]));
        let summary: Vec<(&str, u64, u64)> = counts
            .iter()
            .map(|c| (c.path.as_str(), c.members, c.cumulative))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("1", 3, 3),
                ("2", 3, 6),
                ("2.1", 2, 2),
                ("2.2", 2, 3),
                ("3", 5, 4),
                ("4", 1, 3)
            ]
        );
        assert_eq!(counts[3].combine.as_deref(), Some("union"));
    }

    #[test]
    fn rules_are_limited_to_the_universe() {
        let all = set(&[1, 2, 3, 4]);
        let eligible = set(&[1, 2]);
        let leaves = vec![set(&[2, 3])];
        let rules = vec![rule(
            "1",
            None,
            CompiledBody::Expr(Expr::Not(Box::new(Expr::Leaf(0)))),
        )];
        let mut counts = Vec::new();
        assert_eq!(
            evaluate_rules(&rules, &leaves, &all, Some(&eligible), &mut counts),
            set(&[1])
        );
        assert_eq!(counts[0].members, 1);
    }
}
