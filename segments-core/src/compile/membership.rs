//! Conditions on other segments' memberships: a plain reference
//! (`{"segment": S}`), one group of a split segment (`"group"`), and what a
//! priority list assigns to a segment (`"priority_list"`).

use crate::catalog::SplitGroup;
use crate::definition::{SegmentRef, SegmentTest};
use crate::error::{invalid, Reported, SegmentsError};
use crate::spelling::perhaps;
use crate::sql::{ident, literal};

use super::{Expr, Leaf, Planner};

/// The filter that keeps the records of one split group: their bucket,
/// `segments.split_bucket(segment, key as text)`, is in the group's range.
/// A pure function of the segment and the key, so a filter on the entity
/// row like any other (and live like any other).
pub fn split_group_filter(segment: i64, key_column: &str, group: &SplitGroup) -> String {
    format!(
        "segments.split_bucket({segment}::pg_catalog.int8, e.{}::pg_catalog.text) \
         OPERATOR(pg_catalog.>=) {} AND segments.split_bucket({segment}::pg_catalog.int8, e.{}::pg_catalog.text) \
         OPERATOR(pg_catalog.<=) {}",
        ident(key_column),
        group.low,
        ident(key_column),
        group.high
    )
}

impl Planner<'_> {
    /// A segment condition as bitmap algebra (before `member: false`).
    pub(super) fn membership_condition(
        &mut self,
        path: &str,
        test: &SegmentTest,
    ) -> Result<Expr, Reported> {
        let id = self.resolve_segment(path, &test.segment)?;
        let member = Expr::Leaf(self.intern(Leaf::Segment(id)));
        if let Some(group) = &test.group {
            let summary = self
                .catalog
                .segment(&SegmentRef::Id(id))
                .expect("resolve_segment found it");
            if summary.split.is_empty() {
                return Err(invalid(
                    &format!("{path}.group"),
                    format!("segment \"{}\" is not split", summary.name),
                )
                .into());
            }
            let Some(found) = summary.split.iter().find(|g| &g.name == group) else {
                let names: Vec<&str> = summary.split.iter().map(|g| g.name.as_str()).collect();
                return Err(SegmentsError::InvalidParameter(format!(
                    "{path}.group: segment \"{}\" has no group {} (its groups: {})",
                    summary.name,
                    literal(group),
                    names.join(", ")
                ))
                .with_hint(perhaps(group, names)));
            };
            let filter = split_group_filter(id, &self.entity.key_column, found);
            let in_group = Expr::Leaf(self.intern(Leaf::Filter(filter)));
            return Ok(Expr::All(vec![member, in_group]));
        }
        if let Some(list_name) = &test.priority_list {
            let list = self.catalog.priority_list(list_name).ok_or_else(|| {
                SegmentsError::UndefinedObject(format!(
                    "{path}.priority_list: priority list {} does not exist",
                    literal(list_name)
                ))
            })?;
            let Some(rank) = list.segments.iter().position(|s| *s == id) else {
                return Err(invalid(
                    &format!("{path}.segment"),
                    format!(
                        "segment {id} is not in priority list {}",
                        literal(list_name)
                    ),
                )
                .into());
            };
            let before: Vec<Expr> = list.segments[..rank]
                .iter()
                .map(|s| Expr::Leaf(self.intern(Leaf::Segment(*s))))
                .collect();
            return Ok(if before.is_empty() {
                member
            } else {
                Expr::All(vec![member, Expr::Not(Box::new(Expr::Any(before)))])
            });
        }
        Ok(member)
    }
}

#[cfg(test)]
mod tests {
    use crate::catalog::fixture::customers;
    use crate::catalog::{PriorityListSummary, SegmentSummary, SplitGroup};
    use crate::compile::compile_definition;
    use serde_json::json;

    const NOW: &str = "'2026-11-01 00:00:00+00'::timestamptz";

    fn catalog() -> crate::catalog::fixture::FixedCatalog {
        let mut catalog = customers();
        catalog.segments.push(SegmentSummary {
            id: 8,
            name: "Newsletter".into(),
            entity: "customer".into(),
            definition: json!({"entity": "customer", "rules": [{"where": {"attribute": "age", "op": "gt", "value": 1}}]}),
            split: vec![
                SplitGroup { name: "control".into(), low: 0, high: 9 },
                SplitGroup { name: "email".into(), low: 10, high: 99 },
            ],
        });
        catalog.priority_lists.push(PriorityListSummary {
            name: "offers".into(),
            entity: "customer".into(),
            segments: vec![7, 8],
        });
        catalog
    }

    #[test]
    fn a_group_is_the_segment_and_its_bucket_range() {
        let d =
            json!({"entity": "customer", "rules": [{"where": {"segment": 8, "group": "control"}}]});
        let (_, plan, _) = compile_definition(&catalog(), &d, None, NOW, usize::MAX).unwrap();
        let sql: Vec<&str> = plan.leaves.iter().map(|l| l.sql()).collect();
        assert!(sql.iter().any(|s| s.contains("segments.split_bucket(8::pg_catalog.int8, e.\"id\"::pg_catalog.text) OPERATOR(pg_catalog.>=) 0")
            && s.contains("OPERATOR(pg_catalog.<=) 9")), "{sql:?}");
    }

    #[test]
    fn groups_and_lists_are_checked_with_their_paths() {
        let bad = |d: serde_json::Value| {
            compile_definition(&catalog(), &d, None, NOW, usize::MAX)
                .unwrap_err()
                .error
                .to_string()
        };
        assert_eq!(
            bad(
                json!({"entity": "customer", "rules": [{"where": {"segment": 7, "group": "control"}}]})
            ),
            "rules[0].where.group: segment \"VIP\" is not split"
        );
        assert!(bad(json!({"entity": "customer", "rules": [{"where": {"segment": 8, "group": "contrl"}}]}))
            .starts_with("rules[0].where.group: segment \"Newsletter\" has no group 'contrl' (its groups: control, email)"));
        assert_eq!(
            bad(
                json!({"entity": "customer", "rules": [{"where": {"segment": 8, "priority_list": "nope"}}]})
            ),
            "rules[0].where.priority_list: priority list 'nope' does not exist"
        );
        let mut no_seven = catalog();
        no_seven.priority_lists[0].segments = vec![8];
        let e = compile_definition(&no_seven, &json!({"entity": "customer", "rules": [{"where": {"segment": 7, "priority_list": "offers"}}]}), None, NOW, usize::MAX).unwrap_err();
        assert_eq!(
            e.error.to_string(),
            "rules[0].where.segment: segment 7 is not in priority list 'offers'"
        );
        assert_eq!(
            bad(
                json!({"entity": "customer", "rules": [{"where": {"segment": 8, "group": "a", "priority_list": "offers"}}]})
            ),
            "rules[0].where: a segment condition takes \"group\" or \"priority_list\", not both"
        );
    }

    #[test]
    fn a_priority_list_condition_excludes_the_segments_listed_before() {
        let d = json!({"entity": "customer", "rules": [{"where": {"segment": 8, "priority_list": "offers"}}]});
        let (_, plan, compiled) =
            compile_definition(&catalog(), &d, None, NOW, usize::MAX).unwrap();
        let segments: Vec<&crate::compile::Leaf> = plan
            .leaves
            .iter()
            .filter(|l| matches!(l, crate::compile::Leaf::Segment(_)))
            .collect();
        assert_eq!(segments.len(), 2, "{:?}", plan.leaves);
        let text = format!("{:?}", compiled.rules);
        assert!(text.contains("All([Leaf(0), Not(Leaf(1))])"), "{text}");
    }
}
