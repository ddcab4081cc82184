//! Segment references: refusing a definition whose references lead back to
//! itself, and ordering segments so that each is evaluated after the
//! segments it reads.

use std::collections::HashMap;

use serde_json::Value;

use crate::catalog::Catalog;
use crate::definition::{Definition, SegmentRef};
use crate::error::{invalid, Reported};

/// Refuses a definition whose segment references lead back to `self_id`.
pub fn check_cycles(
    catalog: &dyn Catalog,
    self_id: Option<i64>,
    references: &[i64],
) -> Result<(), Reported> {
    let Some(self_id) = self_id else {
        return Ok(());
    };
    let mut stack: Vec<(i64, Vec<String>)> = references.iter().map(|&id| (id, vec![])).collect();
    let mut seen = std::collections::HashSet::new();
    while let Some((id, mut trail)) = stack.pop() {
        let Some(segment) = catalog.segment(&SegmentRef::Id(id)) else {
            continue;
        };
        trail.push(segment.name.clone());
        if id == self_id {
            return Err(invalid(
                "rules",
                format!(
                    "segment references form a cycle: this segment -> {}",
                    trail.join(" -> ")
                ),
            )
            .into());
        }
        if !seen.insert(id) {
            continue;
        }
        if let Ok(definition) = Definition::parse(&segment.definition) {
            for (_, reference) in definition.segment_refs() {
                if let Some(target) = catalog.segment(reference) {
                    stack.push((target.id, trail.clone()));
                }
            }
        }
    }
    Ok(())
}

/// The order to evaluate `segments` (id, name, definition) in, as indexes:
/// a segment comes after the segments of the set it reads. References to
/// segments outside the set, definitions that no longer parse, and cycles
/// (refused when saved, evaluated as stored) do not constrain the order.
pub fn dependency_order(segments: &[(i64, &str, &Value)]) -> Vec<usize> {
    let ids: HashMap<i64, usize> = segments.iter().enumerate().map(|(i, s)| (s.0, i)).collect();
    let names: HashMap<&str, usize> = segments.iter().enumerate().map(|(i, s)| (s.1, i)).collect();
    let reads: Vec<Vec<usize>> = segments
        .iter()
        .map(|(_, _, definition)| match Definition::parse(definition) {
            Ok(d) => d
                .segment_refs()
                .into_iter()
                .filter_map(|(_, r)| match r {
                    SegmentRef::Id(id) => ids.get(id).copied(),
                    SegmentRef::Name(n) => names.get(n.as_str()).copied(),
                })
                .collect(),
            Err(_) => vec![],
        })
        .collect();
    let mut order = Vec::with_capacity(segments.len());
    let mut state = vec![Visit::New; segments.len()];
    fn visit(i: usize, reads: &[Vec<usize>], state: &mut [Visit], order: &mut Vec<usize>) {
        if state[i] != Visit::New {
            return; // done, or a cycle
        }
        state[i] = Visit::Visiting;
        for &j in &reads[i] {
            visit(j, reads, state, order);
        }
        state[i] = Visit::Done;
        order.push(i);
    }
    for i in 0..segments.len() {
        visit(i, &reads, &mut state, &mut order);
    }
    order
}

#[derive(Clone, Copy, PartialEq)]
enum Visit {
    New,
    Visiting,
    Done,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reading(references: &[Value]) -> Value {
        let rules: Vec<Value> = references
            .iter()
            .map(|r| json!({"where": {"segment": r}}))
            .collect();
        json!({"entity": "customer", "rules": rules})
    }

    #[test]
    fn segments_come_after_the_segments_they_read() {
        let base = json!({"entity": "customer", "rules": [{"where": {"attribute": "age", "op": "gt", "value": 1}}]});
        let (a, b, c) = (
            reading(&[json!(2)]),
            reading(&[json!("base")]),
            reading(&[json!(1), json!(99)]),
        );
        // 1 reads 2 by id, 2 reads "base" by name, 4 reads 1 and a segment outside the set.
        let segments = [(1, "a", &a), (2, "b", &b), (3, "base", &base), (4, "c", &c)];
        let order = dependency_order(&segments);
        let at = |id: i64| order.iter().position(|&i| segments[i].0 == id).unwrap();
        assert_eq!(order.len(), 4);
        assert!(at(3) < at(2) && at(2) < at(1) && at(1) < at(4), "{order:?}");
    }

    #[test]
    fn cycles_and_unparsable_definitions_still_give_every_segment_once() {
        let (a, b, broken) = (
            reading(&[json!(2)]),
            reading(&[json!(1)]),
            json!({"rules": "nope"}),
        );
        let segments = [(1, "a", &a), (2, "b", &b), (3, "broken", &broken)];
        let mut order = dependency_order(&segments);
        order.sort();
        assert_eq!(order, vec![0, 1, 2]);
    }
}
