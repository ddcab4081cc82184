//! The SQL compiler. A definition becomes bitmap algebra over *leaves*:
//!
//! - a `Filter` is a boolean SQL expression over the entity row; all filters
//!   of a plan are computed in one scan of the entity table, each as an
//!   `rb_agg(position) FILTER (WHERE ...)` column;
//! - a `KeySet` or `Aggregate` is a query over a related table that returns
//!   the positions of the entity rows it selects;
//! - a `Segment` is the stored membership of another segment.
//!
//! Because every leaf condition is two-valued (NULL makes it false), `all`,
//! `any` and `not` are exactly intersection, union and complement of the
//! leaves' bitmaps, and the counts of every rule come from the bitmaps too.
//! Every attribute condition is a leaf of its own, so that segments built
//! from the same conditions (country, age band, tier...) share them: a
//! thousand segments may need only a few dozen filters in one scan.
//!
//! Identifiers come from the catalog and pass through `sql::ident`; values
//! pass through `sql::literal` with a cast: the SQL is safe by construction.
//!
//! This file plans (the leaf types, `Planner`, `Plan`); the rooms beside it:
//! - `emit`: the SQL text of conditions (comparisons, windows, literals)
//! - `fold`: the plan's optimisation (private filters folded into one)
//! - `access`: which columns a definition reads, for the privilege check
//! - `references`: refusing segment references that lead back to a
//!   segment, and the order to evaluate segments that read each other in
//! - `sequence`: `sequence` and `every` over a related table
//! - `path`: related tables reached through others (`via`)
//! - `traits`: conditions and ranks on traits, and the query that computes
//!   a related table's traits in one scan
//! - `rank`: `top_percent`, `bottom_percent`, `top`, `bottom`
//! - `membership`: conditions on segments: plain, a split group, a
//!   priority list's assignment

mod access;
mod buckets;
mod columns;
mod emit;
mod fold;
mod funnels;
mod gather;
mod membership;
mod path;
mod rank;
mod references;
mod sequence;
mod traits;
mod windows;

use std::collections::HashMap;

use crate::catalog::{Catalog, ColumnKind, Entity, Related};
use crate::definition::{
    parse_condition, AggregateFunction, Combine, Condition, ConditionKind, Definition,
    RelatedMeasure, RelatedTest, Rule, RuleBody, SegmentRef,
};
use crate::error::{invalid, Reported, SegmentsError};
use crate::spelling::perhaps;
use crate::sql::{ident, op};
use serde_json::Value;

pub use access::columns_read;
pub use buckets::{ColumnBuckets, CHECKPOINTS};
pub use columns::{column_leaves, equality_leaves, Bucket, ColumnGroup, ColumnOp};
pub use emit::attribute_sql;
use emit::{
    compares_true, comparison_sql, in_last_sql, in_window_once_sql, join_sql, related_condition,
    window_edges, RowScope,
};
use fold::{collect_segment_leaves, count_uses, fold, mark_used, remap, rule_exprs};
use funnels::{CandidateStep, FunnelCandidate};
pub use funnels::{
    FunnelPass, FunnelRow, FunnelScan, MAX_ROWS_PER_RECORD as MAX_FUNNEL_ROWS_PER_RECORD,
};
pub use membership::split_group_filter;
pub use path::{path_sql, path_tables};
pub use rank::eligible_sql;
pub use references::{check_cycles, dependency_order};
pub use traits::{traits_query, SharedCondition, TraitMeasure, TraitSource};
use windows::{scaled_column, ScanSource, WindowCandidate, WindowTest};
pub use windows::{WindowPass, WindowScan};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Leaf {
    /// A boolean expression over the entity row `e`.
    Filter(String),
    /// A query returning one bitmap: the positions it selects.
    KeySet(String),
    /// A query returning the positions whose aggregate matches (in column
    /// `column`, from 1) and, in its last column, the positions with any
    /// related row. Members with no related row match too when
    /// `empty_matches` (e.g. `count lt 3`). Conditions on the traits of one
    /// related table share one query, each reading its own column.
    Aggregate {
        sql: String,
        empty_matches: bool,
        column: usize,
    },
    /// The last refreshed membership of another segment.
    Segment(i64),
}

impl Leaf {
    /// The leaf's SQL (a filter expression or a query); empty for a segment.
    /// Leaves sharing one query have the same SQL.
    pub fn sql(&self) -> &str {
        match self {
            Leaf::Filter(sql) | Leaf::KeySet(sql) | Leaf::Aggregate { sql, .. } => sql,
            Leaf::Segment(_) => "",
        }
    }

    /// What names the leaf's value among those of a plan: its SQL, and the
    /// column it reads of a shared query.
    pub fn identity(&self) -> String {
        match self {
            Leaf::Aggregate { sql, column, .. } if *column > 1 => {
                format!("{sql} -- column {column}")
            }
            leaf => leaf.sql().to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Leaf(usize),
    All(Vec<Expr>),
    Any(Vec<Expr>),
    Not(Box<Expr>),
}

impl Expr {
    /// The leaves this expression reads, ascending, each once.
    pub fn leaves(&self) -> Vec<usize> {
        let mut out = Vec::new();
        self.walk_leaves(&mut out);
        out.sort_unstable();
        out.dedup();
        out
    }

    fn walk_leaves(&self, out: &mut Vec<usize>) {
        match self {
            Expr::Leaf(i) => out.push(*i),
            Expr::All(items) | Expr::Any(items) => items.iter().for_each(|e| e.walk_leaves(out)),
            Expr::Not(inner) => inner.walk_leaves(out),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CompiledRule {
    pub label: String,
    pub name: Option<String>,
    pub combine: Option<Combine>,
    pub body: CompiledBody,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CompiledBody {
    Expr(Expr),
    Rules(Vec<CompiledRule>),
}

/// The compiled form of one definition; its leaves live in the `Plan`.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledSegment {
    pub rules: Vec<CompiledRule>,
    /// Segment ids this definition reads.
    pub references: Vec<i64>,
}

impl CompiledSegment {
    /// The plan leaves this segment reads, ascending, each once: what a
    /// refresh must hold to evaluate it (`engine::refresh` frees a leaf
    /// after its last reader and batches segments by them).
    pub fn leaves(&self) -> Vec<usize> {
        fn each_rule(list: &[CompiledRule], out: &mut Vec<usize>) {
            for rule in list {
                match &rule.body {
                    CompiledBody::Expr(expr) => expr.walk_leaves(out),
                    CompiledBody::Rules(sub) => each_rule(sub, out),
                }
            }
        }
        let mut out = Vec::new();
        each_rule(&self.rules, &mut out);
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Everything needed to evaluate one or more definitions of one entity.
#[derive(Debug, Clone)]
pub struct Plan {
    pub entity: Entity,
    pub leaves: Vec<Leaf>,
    /// The entity's `eligible` condition, if any.
    pub eligible: Option<Expr>,
    pub reference_time: String,
    /// Whether evaluation needs the bitmap of every row: for `not`, for
    /// members without related rows, and to drop related or stored
    /// positions of rows that no longer exist.
    pub needs_all_rows: bool,
    /// Live segments: an SQL array of the keys to evaluate (every query
    /// reads just those rows); None for a full evaluation.
    pub restriction: Option<String>,
    /// Live segments: a `SELECT` of the entity's rows to evaluate (the
    /// changed ones, some from the heap and some from captured row images)
    /// that the entity scan reads instead of the table.
    pub entity_source: Option<String>,
    /// By leaf: the name of the related table a related leaf reads (live
    /// apply keeps their values between applications).
    pub related_of: Vec<Option<String>>,
    /// Filter leaves computed by a pass per column instead of a `FILTER`
    /// clause each (`columns`): many comparisons of one column.
    pub column_groups: Vec<ColumnGroup>,
    /// Column groups over traits of one related table that one grouped
    /// scan of it computes (`traits::TraitSource`).
    pub trait_sources: Vec<TraitSource>,
    /// Related leaves computed by one sorted pass per related table
    /// instead of their queries (`windows`): many windows and thresholds.
    pub window_scans: Vec<WindowScan>,
    /// Funnel leaves computed by one sorted pass per related table instead
    /// of their queries (`funnels`).
    pub funnel_scans: Vec<FunnelScan>,
}

/// Compiles definitions of one entity into a shared plan: a leaf that
/// several definitions use is computed once.
pub struct Planner<'a> {
    catalog: &'a dyn Catalog,
    entity: Entity,
    reference_time: String,
    leaves: Vec<Leaf>,
    index: HashMap<Leaf, usize>,
    eligible: Option<Expr>,
    restriction: Option<String>,
    /// Per related table, a narrower restriction than `restriction`.
    related_restriction: HashMap<String, String>,
    entity_source: Option<String>,
    related_of: HashMap<Leaf, String>,
    /// Conditions on traits, by their (single-trait) leaf: the trait and
    /// the comparison, to share one query per related table at `finish`.
    trait_conditions: HashMap<Leaf, (TraitMeasure, String)>,
    /// Filter leaves that compare one column with constants, by leaf.
    column_tests: Vec<(usize, columns::ColumnTest)>,
    /// The trait each trait column test reads, by its grouped values' SQL
    /// (`ColumnTest::rows`): groups over traits of one table share a scan.
    trait_rows: HashMap<String, TraitMeasure>,
    /// How many such comparisons of one column make a column group.
    column_group_min_tests: usize,
    /// Whether related windows' edges are scalar subqueries, computed once
    /// per query (see `edges_per_row`).
    edges_once: bool,
    /// Related conditions a window scan could compute, by leaf.
    window_candidates: HashMap<Leaf, WindowCandidate>,
    /// Funnels a funnel scan could compute, by leaf.
    funnel_candidates: HashMap<Leaf, FunnelCandidate>,
    /// How many such conditions of one related table make a window scan.
    window_scan_min_conditions: usize,
}

impl<'a> Planner<'a> {
    /// `reference_time` is a SQL expression of type timestamptz (normally a
    /// literal) that relative conditions are measured from.
    pub fn new(
        catalog: &'a dyn Catalog,
        entity: &str,
        path: &str,
        reference_time: &str,
    ) -> Result<Self, Reported> {
        let entity = catalog.entity(entity).ok_or_else(|| {
            let names = catalog.entity_names();
            SegmentsError::UndefinedTable(format!("{path}: entity \"{entity}\" is not registered"))
                .with_hint(perhaps(entity, names.iter().map(String::as_str)))
        })?;
        if entity.table.dropped {
            return Err(SegmentsError::UndefinedTable(format!(
                "{path}: the table of entity \"{}\" ({}) no longer exists",
                entity.name, entity.table.relation_sql
            ))
            .with_hint(Some(format!(
                "Unregister it with segments.unregister_entity('{}').",
                entity.name
            ))));
        }
        entity
            .key()?
            .check_usable(path, &format!("entity \"{}\"", entity.name))?;
        let mut planner = Planner {
            catalog,
            entity,
            reference_time: reference_time.to_string(),
            leaves: Vec::new(),
            index: HashMap::new(),
            eligible: None,
            restriction: None,
            related_restriction: HashMap::new(),
            entity_source: None,
            related_of: HashMap::new(),
            trait_conditions: HashMap::new(),
            column_tests: Vec::new(),
            trait_rows: HashMap::new(),
            column_group_min_tests: usize::MAX,
            edges_once: true,
            window_candidates: HashMap::new(),
            funnel_candidates: HashMap::new(),
            window_scan_min_conditions: usize::MAX,
        };
        if let Some(eligible) = planner.entity.eligible.clone() {
            let condition = parse_condition("eligible", &eligible)?;
            planner.eligible = Some(planner.entity_condition(&condition)?);
        }
        Ok(planner)
    }

    /// Compiles a parsed definition. `self_id` is the segment being saved,
    /// which may not refer to itself.
    pub fn add(
        &mut self,
        definition: &Definition,
        self_id: Option<i64>,
    ) -> Result<CompiledSegment, Reported> {
        if definition.entity != self.entity.name {
            return Err(invalid(
                "entity",
                format!(
                    "this plan is for entity \"{}\", not \"{}\"",
                    self.entity.name, definition.entity
                ),
            )
            .into());
        }
        let rules = self.rules(&definition.rules, self_id)?;
        let mut references = Vec::new();
        collect_segment_leaves(&rules, &self.leaves, &mut references);
        references.sort_unstable();
        references.dedup();
        Ok(CompiledSegment { rules, references })
    }

    /// Evaluates only the rows whose key is in `keys_sql`, an SQL array of
    /// the key type (live segments apply changes this way). Set it before
    /// adding definitions.
    pub fn restrict_to(&mut self, keys_sql: String) {
        self.restriction = Some(keys_sql);
    }

    /// Restricts the queries of one related table to `keys_sql` instead
    /// (live apply: only the keys whose rows of that table changed).
    pub fn restrict_related_to(&mut self, related: &str, keys_sql: String) {
        self.related_restriction
            .insert(related.to_string(), keys_sql);
    }

    /// Computes the comparisons of one column with constants in a pass of
    /// their own (`columns`) where the plan has at least `min_tests` of
    /// them on that column; without this call every one is a `FILTER`
    /// clause of the entity scan.
    pub fn group_columns_from(&mut self, min_tests: usize) {
        self.column_group_min_tests = min_tests;
    }

    /// Computes the related conditions of one table that a window scan
    /// answers (`windows`) in one sorted pass where the plan has at least
    /// `min_conditions` of them; without this call each keeps its query
    /// (or its `FILTER` in a shared scan). Unrestricted plans only.
    pub fn scan_windows_from(&mut self, min_conditions: usize) {
        self.window_scan_min_conditions = min_conditions;
    }

    /// Writes related windows' edges as plain expressions, evaluated per
    /// row, instead of scalar subqueries: Citus would plan each subquery
    /// on the coordinator and ship its one value to every shard query.
    pub fn edges_per_row(&mut self) {
        self.edges_once = false;
    }

    /// Makes the entity scan read the rows `source_sql` selects (with the
    /// columns the definitions read, and the key) instead of the table.
    pub fn read_rows_from(&mut self, source_sql: String) {
        self.entity_source = Some(source_sql);
    }

    /// The plan for the compiled segments, which are rewritten in place:
    /// inside an `all`, `any` or `not`, filters that no other part of the
    /// plan uses are folded into one SQL filter, so that a lone segment gets
    /// one short-circuiting expression while conditions shared by several
    /// segments stay shared leaves. Leaves no longer used are dropped.
    pub fn finish(mut self, segments: &mut [&mut CompiledSegment]) -> Plan {
        let mut uses = vec![0usize; self.leaves.len()];
        let mut exprs: Vec<&mut Expr> = Vec::new();
        for segment in segments.iter_mut() {
            rule_exprs(&mut segment.rules, &mut exprs);
        }
        if let Some(eligible) = self.eligible.as_mut() {
            exprs.push(eligible);
        }
        for expr in exprs.iter() {
            count_uses(expr, &mut uses);
        }
        // A comparison a column group computes stays a leaf of its own.
        let mut groups = columns::group_tests(&self.column_tests, self.column_group_min_tests);
        for group in &groups {
            for (leaf, _, _) in &group.tests {
                uses[*leaf] = uses[*leaf].max(2);
            }
        }
        for expr in exprs.iter_mut() {
            fold(expr, &mut self.leaves, &mut self.index, &uses);
        }
        // Keep only the leaves still used, renumbered.
        let mut used = vec![false; self.leaves.len()];
        for expr in exprs.iter() {
            mark_used(expr, &mut used);
        }
        let mut renumber = vec![usize::MAX; self.leaves.len()];
        let mut leaves = Vec::new();
        let mut related_of = Vec::new();
        for (i, leaf) in self.leaves.iter().enumerate() {
            if used[i] {
                renumber[i] = leaves.len();
                leaves.push(leaf.clone());
                related_of.push(self.related_of.get(leaf).cloned());
            }
        }
        let mut has_not = false;
        for expr in exprs.iter_mut() {
            remap(expr, &renumber, &mut has_not);
        }
        for group in groups.iter_mut() {
            group.tests.retain(|(leaf, _, _)| used[*leaf]);
            for (leaf, _, _) in group.tests.iter_mut() {
                *leaf = renumber[*leaf];
            }
        }
        groups.retain(|group| !group.tests.is_empty());
        let candidates: Vec<(usize, &WindowCandidate)> = leaves
            .iter()
            .enumerate()
            .filter_map(|(i, leaf)| self.window_candidates.get(leaf).map(|c| (i, c)))
            .collect();
        let window_scans = windows::plan_scans(&candidates, self.window_scan_min_conditions);
        let funnel_candidates: Vec<(usize, &FunnelCandidate)> = leaves
            .iter()
            .enumerate()
            .filter_map(|(i, leaf)| self.funnel_candidates.get(leaf).map(|c| (i, c)))
            .collect();
        let funnel_scans = funnels::plan_scans(&funnel_candidates, self.window_scan_min_conditions);
        // Leaves a window scan or a group of trait conditions computes keep
        // their own queries instead of sharing a scan.
        let scanned: std::collections::HashSet<usize> = window_scans
            .iter()
            .flat_map(|s| s.leaves())
            .chain(funnel_scans.iter().flat_map(|s| s.leaves()))
            .chain(
                groups
                    .iter()
                    .filter(|g| g.rows.is_some())
                    .flat_map(|g| g.tests.iter().map(|(leaf, _, _)| *leaf)),
            )
            .collect();
        self.share_trait_scans(&mut leaves, &scanned);
        let trait_sources = self.trait_sources(&groups);
        let needs_all_rows = self.eligible.is_some()
            || has_not
            || leaves.iter().any(|l| !matches!(l, Leaf::Filter(_)));
        Plan {
            entity: self.entity,
            leaves,
            eligible: self.eligible,
            reference_time: self.reference_time,
            needs_all_rows,
            restriction: self.restriction,
            entity_source: self.entity_source,
            related_of,
            column_groups: groups,
            trait_sources,
            window_scans,
            funnel_scans,
        }
    }

    fn intern(&mut self, leaf: Leaf) -> usize {
        if let Some(&i) = self.index.get(&leaf) {
            return i;
        }
        self.leaves.push(leaf.clone());
        self.index.insert(leaf, self.leaves.len() - 1);
        self.leaves.len() - 1
    }

    fn rules(
        &mut self,
        rules: &[Rule],
        self_id: Option<i64>,
    ) -> Result<Vec<CompiledRule>, Reported> {
        rules
            .iter()
            .map(|rule| {
                let body = match &rule.body {
                    RuleBody::Where(condition) => {
                        self.check_segment_refs(condition, self_id)?;
                        CompiledBody::Expr(self.entity_condition(condition)?)
                    }
                    RuleBody::Rules(sub) => CompiledBody::Rules(self.rules(sub, self_id)?),
                };
                Ok(CompiledRule {
                    label: rule.label.clone(),
                    name: rule.name.clone(),
                    combine: rule.combine,
                    body,
                })
            })
            .collect()
    }

    fn check_segment_refs(
        &self,
        condition: &Condition,
        self_id: Option<i64>,
    ) -> Result<(), Reported> {
        let mut nodes = Vec::new();
        crate::definition::walk_condition(condition, &mut nodes);
        for node in nodes {
            if let ConditionKind::Segment(test) = &node.kind {
                let target = self.resolve_segment(&node.path, &test.segment)?;
                if Some(target) == self_id {
                    return Err(invalid(&node.path, "a segment cannot refer to itself").into());
                }
            }
        }
        Ok(())
    }

    fn resolve_segment(&self, path: &str, reference: &SegmentRef) -> Result<i64, Reported> {
        let segment = self.catalog.segment(reference).ok_or_else(|| {
            let names = self.catalog.segment_names();
            let hint = match reference {
                SegmentRef::Name(name) => perhaps(name, names.iter().map(String::as_str)),
                SegmentRef::Id(_) => None,
            };
            SegmentsError::missing_segment_reference(path, reference).with_hint(hint)
        })?;
        if segment.entity != self.entity.name {
            return Err(invalid(
                &format!("{path}.segment"),
                format!(
                    "segment \"{}\" is a segment of entity \"{}\", not \"{}\"",
                    segment.name, segment.entity, self.entity.name
                ),
            )
            .into());
        }
        Ok(segment.id)
    }

    fn entity_condition(&mut self, condition: &Condition) -> Result<Expr, Reported> {
        let path = condition.path.as_str();
        Ok(match &condition.kind {
            ConditionKind::All(items) => Expr::All(
                items
                    .iter()
                    .map(|c| self.entity_condition(c))
                    .collect::<Result<_, _>>()?,
            ),
            ConditionKind::Any(items) => Expr::Any(
                items
                    .iter()
                    .map(|c| self.entity_condition(c))
                    .collect::<Result<_, _>>()?,
            ),
            ConditionKind::Not(inner) => Expr::Not(Box::new(self.entity_condition(inner)?)),
            ConditionKind::Attribute(test) if test.op.is_rank() => {
                let sql = self.rank_filter(path, test)?;
                Expr::Leaf(self.intern(Leaf::Filter(sql)))
            }
            ConditionKind::Attribute(test) => {
                let table = self.entity.table.clone();
                let what = format!("entity \"{}\"", self.entity.name);
                let sql = attribute_sql(path, "e", &table, &what, test, &self.reference_time)?;
                let leaf = self.intern(Leaf::Filter(sql));
                let column = table
                    .column(&test.column)
                    .expect("attribute_sql checked it");
                if let Some(compared) =
                    columns::column_test(path, "e", column, test, &self.reference_time)
                {
                    if !self.column_tests.iter().any(|(known, _)| *known == leaf) {
                        self.column_tests.push((leaf, compared));
                    }
                }
                Expr::Leaf(leaf)
            }
            ConditionKind::Related(test) => {
                let related = self.entity.related(&test.related).cloned().ok_or_else(|| {
                    let names: Vec<&str> = self
                        .entity
                        .related
                        .iter()
                        .map(|r| r.name.as_str())
                        .collect();
                    SegmentsError::UndefinedTable(format!(
                        "{path}.related: related table \"{}\" is not registered for entity \"{}\"",
                        test.related, self.entity.name
                    ))
                    .with_hint(perhaps(&test.related, names))
                })?;
                let (leaf, negate, shared) = self.related_leaf(path, &related, test)?;
                self.related_of.insert(leaf.clone(), related.name.clone());
                if let Some(candidate) = self.window_candidate(&related, test) {
                    self.window_candidates.insert(leaf.clone(), candidate);
                }
                if let Some(candidate) = self.funnel_candidate(&related, test) {
                    self.funnel_candidates.insert(leaf.clone(), candidate);
                }
                if let Some(condition) = shared {
                    self.trait_conditions.insert(leaf.clone(), condition);
                }
                let expr = Expr::Leaf(self.intern(leaf));
                if negate {
                    Expr::Not(Box::new(expr))
                } else {
                    expr
                }
            }
            ConditionKind::Trait(test) => {
                let (leaf, condition) = self.trait_leaf(path, test)?;
                let mut grouped = None;
                if let Some((measure, comparison)) = condition {
                    self.related_of
                        .insert(leaf.clone(), measure.related.clone());
                    grouped = self.trait_column_test(path, test, &measure);
                    if let Some(rows) = grouped.as_ref().and_then(|g| g.rows.clone()) {
                        self.trait_rows.insert(rows, measure.clone());
                    }
                    self.trait_conditions
                        .insert(leaf.clone(), (measure, comparison));
                }
                let leaf = self.intern(leaf);
                if let Some(compared) = grouped {
                    if !self.column_tests.iter().any(|(known, _)| *known == leaf) {
                        self.column_tests.push((leaf, compared));
                    }
                }
                Expr::Leaf(leaf)
            }
            ConditionKind::Segment(test) => {
                let expr = self.membership_condition(path, test)?;
                if test.member {
                    expr
                } else {
                    Expr::Not(Box::new(expr))
                }
            }
        })
    }

    /// A comparison of a trait's value with constants as a column group
    /// over the trait's grouped values (one row per record with rows)
    /// would make it; None where it cannot: restricted plans (a live
    /// apply keeps related values), and tests a bucketed group does not
    /// answer (a group of trait conditions needs every record with rows,
    /// which only buckets give).
    fn trait_column_test(
        &self,
        path: &str,
        test: &crate::definition::TraitTest,
        measure: &TraitMeasure,
    ) -> Option<columns::ColumnTest> {
        if self.restriction.is_some() || self.related_restriction.contains_key(&measure.related) {
            return None;
        }
        let attribute = crate::definition::AttributeTest {
            column: test.name.clone(),
            op: test.op,
            value: test.value.clone(),
            ignore_case: test.ignore_case,
        };
        let mut compared =
            columns::column_test(path, "g", &measure.column, &attribute, &self.reference_time)?;
        if !compared.ordered {
            return None;
        }
        compared.rows = Some(measure.grouped_sql());
        Some(compared)
    }

    /// The SQL that maps a key expression to a bitmap position, and the join
    /// it needs for dictionary keys.
    fn position(&self, key_sql: &str) -> (String, String) {
        self.entity.position_sql(key_sql)
    }

    /// The filters of a related condition (its `where`, its window, and a
    /// live restriction) on the related row `alias`, the expression of the
    /// entity key the row belongs to, and the FROM clause that reads the
    /// rows (joined along their path, for a related table with a `via`).
    fn related_filters(
        &self,
        path: &str,
        alias: &str,
        related: &Related,
        test: &RelatedTest,
    ) -> Result<(Vec<String>, String, String), Reported> {
        let what = format!("related table \"{}\"", related.name);
        if related.table.dropped {
            return Err(SegmentsError::UndefinedTable(format!(
                "{path}.related: the table of related table \"{}\" of entity \"{}\" ({}) no longer exists",
                related.name, self.entity.name, related.table.relation_sql
            ))
            .with_hint(Some(format!(
                "Unregister it with segments.unregister_related('{}', '{}').",
                self.entity.name, related.name
            ))));
        }
        let mut filters = Vec::new();
        if let Some(filter) = &test.filter {
            filters.push(related_condition(
                filter,
                RowScope { alias, steps: &[] },
                &related.table,
                &what,
                &self.reference_time,
            )?);
        }
        if let Some(within) = &test.within {
            let column = time_column(&format!("{path}.within"), related, "\"within\"")?;
            let window = if self.edges_once {
                in_window_once_sql
            } else {
                in_last_sql
            };
            filters.push(window(
                &format!("{alias}.{}", ident(&column.name)),
                column.kind,
                within,
                &self.reference_time,
            ));
        }
        let fk_column = related.table.column(&related.foreign_key).ok_or_else(|| {
            SegmentsError::UndefinedColumn(format!(
                "{path}.related: foreign key column \"{}\" of {what} no longer exists",
                related.foreign_key
            ))
        })?;
        fk_column.check_usable(&format!("{path}.related"), &what)?;
        let (from, fk) =
            path_sql(&self.entity, related, alias).map_err(|e| e.at(&format!("{path}.related")))?;
        if let Some(keys) = self
            .related_restriction
            .get(&related.name)
            .or(self.restriction.as_ref())
        {
            filters.push(format!("{fk} {} ANY ({keys})", op("=")));
        }
        Ok((filters, fk, from))
    }

    /// For `explain_member`: the value a related condition compares for the
    /// restricted keys, as text (how many related rows match, or the
    /// aggregate), NULL when there is none.
    pub fn related_value_sql(&self, path: &str, test: &RelatedTest) -> Result<String, Reported> {
        let related = self.entity.related(&test.related).ok_or_else(|| {
            SegmentsError::UndefinedTable(format!(
                "{path}.related: related table \"{}\" is not registered",
                test.related
            ))
        })?;
        let (filters, _, from) = self.related_filters(path, "r", related, test)?;
        let where_sql = if filters.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", join_sql(&filters, "AND"))
        };
        let measure = match &test.measure {
            RelatedMeasure::Aggregate {
                function,
                attribute: Some(attribute),
                ..
            } if *function != AggregateFunction::Count => {
                format!("pg_catalog.{}(r.{})", function.as_str(), ident(attribute))
            }
            _ => "pg_catalog.count(*)".to_string(),
        };
        Ok(format!(
            "SELECT ({measure})::pg_catalog.text FROM {from}{where_sql}"
        ))
    }

    /// A related condition's leaf, whether the condition is its negation,
    /// and for a count, sum... or existence, the measure and comparison
    /// through which it shares one scan of the related table with the
    /// plan's other such conditions (`share_trait_scans`).
    fn related_leaf(
        &self,
        path: &str,
        related: &Related,
        test: &RelatedTest,
    ) -> Result<(Leaf, bool, Option<SharedCondition>), Reported> {
        let what = format!("related table \"{}\"", related.name);
        if let RelatedMeasure::Sequence(steps) = &test.measure {
            return Ok((self.sequence_leaf(path, related, test, steps)?, false, None));
        }
        let (filters, fk, from) = self.related_filters(path, "r", related, test)?;
        let where_sql = if filters.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", join_sql(&filters, "AND"))
        };
        Ok(match &test.measure {
            RelatedMeasure::Exists(exists) => {
                let (position, join) = self.position(&fk);
                let measure =
                    shared_measure(related, &from, &fk, &filters, "pg_catalog.count(*)", true);
                let comparison = format!("g.{} {} 0", ident(&measure.column.name), op(">"));
                (
                    Leaf::KeySet(format!(
                        "SELECT segments.rb_agg({position}) FROM {from}{join}{where_sql}"
                    )),
                    !exists,
                    Some((measure, comparison)),
                )
            }
            RelatedMeasure::Aggregate {
                function,
                attribute,
                op,
                value,
            } => {
                let measure = match (function, attribute) {
                    (AggregateFunction::Count, None) => "pg_catalog.count(*)".to_string(),
                    (function, Some(attribute)) => {
                        let column = related.table.column(attribute).ok_or_else(|| {
                            SegmentsError::UndefinedColumn(format!(
                                "{path}.attribute: column \"{attribute}\" does not exist on {what}"
                            ))
                            .with_hint(perhaps(attribute, related.table.column_names()))
                        })?;
                        column.check_usable(&format!("{path}.attribute"), &what)?;
                        if *function != AggregateFunction::Count
                            && column.kind != ColumnKind::Numeric
                        {
                            return Err(invalid(
                                &format!("{path}.attribute"),
                                format!(
                                    "{} needs a numeric column, and \"{}\" is {}",
                                    function.as_str(),
                                    column.name,
                                    column.type_sql
                                ),
                            )
                            .into());
                        }
                        format!(
                            "pg_catalog.{}(r.{})",
                            function.as_str(),
                            ident(&column.name)
                        )
                    }
                    (_, None) => unreachable!("parser requires an attribute"),
                };
                let comparison = comparison_sql("g.value", *op, value);
                let is_count = *function == AggregateFunction::Count;
                let empty_matches = is_count && compares_true(0.0, *op, value);
                let (position, join) = self.position("g.key");
                let sql = format!(
                    "SELECT segments.rb_agg({position}) FILTER (WHERE {comparison}), segments.rb_agg({position}) \
                     FROM (SELECT {fk} AS key, {measure} AS value FROM {from}{where_sql} GROUP BY {fk}) g{join}"
                );
                let shared = shared_measure(related, &from, &fk, &filters, &measure, is_count);
                let shared_comparison =
                    comparison_sql(&format!("g.{}", ident(&shared.column.name)), *op, value);
                (
                    Leaf::Aggregate {
                        sql,
                        empty_matches,
                        column: 1,
                    },
                    false,
                    Some((shared, shared_comparison)),
                )
            }
            RelatedMeasure::Every(condition) => (
                self.every_leaf(related, condition, &fk, &from, &where_sql)?,
                false,
                None,
            ),
            RelatedMeasure::Sequence(_) => unreachable!("sequences return above"),
        })
    }
}

impl Planner<'_> {
    /// Whether window and funnel scans may read `related`: they are on,
    /// and the plan is a whole one (a live apply keeps related values per
    /// leaf; Citus pushes each leaf's own query down to the shards).
    fn scans_allowed(&self, related: &Related) -> bool {
        self.window_scan_min_conditions != usize::MAX
            && self.edges_once
            && self.restriction.is_none()
            && !self.related_restriction.contains_key(&related.name)
    }

    /// How a window scan would compute a related condition; None when it
    /// cannot (see `windows`): window scans are off or the plan is
    /// restricted, the condition has no window ending now, or measures
    /// something other than existence, a count of rows or an exact sum.
    fn window_candidate(&self, related: &Related, test: &RelatedTest) -> Option<WindowCandidate> {
        if !self.scans_allowed(related) {
            return None;
        }
        let within = test.within.as_ref().filter(|w| w.to.is_none())?;
        let (sum, window_test) = match &test.measure {
            RelatedMeasure::Exists(_) => (None, WindowTest::Exists),
            RelatedMeasure::Aggregate {
                function: AggregateFunction::Count,
                attribute: None,
                op,
                value,
            } => (None, WindowTest::of(*op, value)?),
            RelatedMeasure::Aggregate {
                function: AggregateFunction::Sum,
                attribute: Some(attribute),
                op,
                value,
            } => {
                let column = related.table.column(attribute)?;
                let sum = scaled_column(&format!("r.{}", ident(&column.name)), column)?;
                (Some(sum), WindowTest::of(*op, value)?)
            }
            _ => return None,
        };
        let time = related
            .time_column
            .as_ref()
            .and_then(|name| related.table.column(name))?;
        if !matches!(
            time.kind,
            ColumnKind::Date | ColumnKind::Timestamp | ColumnKind::TimestampTz
        ) {
            return None;
        }
        let (from, key) = path_sql(&self.entity, related, "r").ok()?;
        let family = match &test.filter {
            None => None,
            Some(filter) => Some(
                related_condition(
                    filter,
                    RowScope {
                        alias: "r",
                        steps: &[],
                    },
                    &related.table,
                    &format!("related table \"{}\"", related.name),
                    &self.reference_time,
                )
                .ok()?,
            ),
        };
        let (start, _) = window_edges(time.kind, within, &self.reference_time);
        Some(WindowCandidate {
            source: ScanSource::new(from, key, time, &self.reference_time),
            family,
            sum,
            start,
            test: window_test,
        })
    }
}

impl Planner<'_> {
    /// How a funnel scan would compute a sequence condition; None when it
    /// cannot (see `funnels`): scans are off or the plan restricted, the
    /// window does not end now, the time column is a date, the sequence
    /// has a `where`, or a step compares with an earlier row other than by
    /// equality of integer columns with the previous step's row.
    fn funnel_candidate(&self, related: &Related, test: &RelatedTest) -> Option<FunnelCandidate> {
        let RelatedMeasure::Sequence(steps) = &test.measure else {
            return None;
        };
        if !self.scans_allowed(related) || test.filter.is_some() {
            return None;
        }
        let within = test.within.as_ref().filter(|w| w.to.is_none())?;
        let time = related
            .time_column
            .as_ref()
            .and_then(|name| related.table.column(name))?;
        if !matches!(time.kind, ColumnKind::Timestamp | ColumnKind::TimestampTz) {
            return None;
        }
        let (from, key) = path_sql(&self.entity, related, "r").ok()?;
        let what = format!("related table \"{}\"", related.name);
        let integer = |name: &str| {
            related
                .table
                .column(name)
                .filter(|c| matches!(c.type_sql.as_str(), "smallint" | "integer" | "bigint"))
                .map(|c| format!("r.{}", ident(&c.name)))
        };
        let mut planned = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            let mut nodes = Vec::new();
            crate::definition::walk_condition(&step.filter, &mut nodes);
            let refers = |c: &Condition| matches!(&c.kind, ConditionKind::Attribute(a) if matches!(a.value, crate::definition::Operand::StepRef { .. }));
            let mut plain = Vec::new();
            let mut same = Vec::new();
            if nodes.iter().any(|n| refers(n)) {
                let ConditionKind::All(items) = &step.filter.kind else {
                    return None;
                };
                for item in items {
                    match &item.kind {
                        ConditionKind::Attribute(a) if refers(item) => {
                            let crate::definition::Operand::StepRef {
                                step: earlier,
                                column,
                            } = &a.value
                            else {
                                return None;
                            };
                            if *earlier != i || a.op != crate::definition::Op::Eq || a.ignore_case {
                                return None;
                            }
                            same.push((integer(&a.column)?, integer(column)?));
                        }
                        _ => {
                            let mut inner = Vec::new();
                            crate::definition::walk_condition(item, &mut inner);
                            if inner.iter().any(|n| refers(n)) {
                                return None;
                            }
                            plain.push(item.clone());
                        }
                    }
                }
            } else {
                plain.push(step.filter.clone());
            }
            let condition = if plain.is_empty() {
                "true".to_string()
            } else {
                related_condition(
                    &Condition {
                        path: step.filter.path.clone(),
                        kind: ConditionKind::All(plain),
                    },
                    RowScope {
                        alias: "r",
                        steps: &[],
                    },
                    &related.table,
                    &what,
                    &self.reference_time,
                )
                .ok()?
            };
            planned.push(CandidateStep {
                condition,
                gap: step.within.as_ref().map(emit::interval),
                absent: step.absent,
                same,
            });
        }
        let (start, _) = window_edges(time.kind, within, &self.reference_time);
        Some(FunnelCandidate {
            source: ScanSource::new(from, key, time, &self.reference_time),
            start,
            steps: planned,
        })
    }
}

/// A related condition's measure as a trait would have it, so that it can
/// share a scan of its table with traits and other related conditions.
/// Its value is named by a hash of what it computes: two conditions that
/// compute the same (a window, a `where`, the aggregate) share it.
fn shared_measure(
    related: &Related,
    from: &str,
    key: &str,
    filters: &[String],
    aggregate: &str,
    is_count: bool,
) -> TraitMeasure {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (from, key, filters, aggregate).hash(&mut hasher);
    let hash = hasher.finish();
    let (type_sql, kind) = if is_count {
        ("bigint", ColumnKind::Numeric)
    } else {
        ("numeric", ColumnKind::Numeric)
    };
    TraitMeasure {
        // Negative: never a trait's id.
        id: -1 - (hash >> 1) as i64,
        from: from.to_string(),
        key: key.to_string(),
        filters: filters.to_vec(),
        aggregate: aggregate.to_string(),
        wrap: ("", ""),
        column: crate::catalog::Column {
            name: format!("related {hash:016x}"),
            type_sql: type_sql.into(),
            kind,
            base_type_sql: type_sql.into(),
            refused: None,
        },
        is_count,
        related: related.name.clone(),
    }
}

/// The related table's time column, checked to exist and be readable;
/// `what` names the construct that needs it, for the error.
fn time_column<'r>(
    path: &str,
    related: &'r Related,
    what: &str,
) -> Result<&'r crate::catalog::Column, Reported> {
    let table_what = format!("related table \"{}\"", related.name);
    let name = related.time_column.as_ref().ok_or_else(|| {
        invalid(
            path,
            format!("{table_what} has no time_column: register it with one to use {what}"),
        )
    })?;
    let column = related.table.column(name).ok_or_else(|| {
        SegmentsError::UndefinedColumn(format!(
            "{path}: time column \"{name}\" of {table_what} no longer exists"
        ))
    })?;
    column.check_usable(path, &table_what)?;
    Ok(column)
}

impl Plan {
    /// The single scan of the entity table that computes every filter leaf:
    /// one column per filter in `filters`, after a first column of every row
    /// when the plan needs it.
    pub fn entity_scan_sql(&self, filters: &[usize]) -> String {
        let (rows, position) = self.entity_rows_sql();
        let mut columns = Vec::new();
        if self.needs_all_rows {
            columns.push(format!("segments.rb_agg({position})"));
        }
        for &i in filters {
            if let Leaf::Filter(sql) = &self.leaves[i] {
                columns.push(format!("segments.rb_agg({position}) FILTER (WHERE {sql})"));
            }
        }
        format!("SELECT {} {rows}", columns.join(",\n       "))
    }

    /// The column groups over the entity's own rows: their comparisons
    /// are computed when a segment reads them (`ColumnBuckets`), from
    /// buckets a refresh keeps. (Groups over traits feed related values,
    /// which are computed with the plan.)
    pub fn late_groups(&self) -> impl Iterator<Item = &ColumnGroup> {
        self.column_groups.iter().filter(|g| g.rows.is_none())
    }

    /// The leaves of `late_groups`.
    pub fn late_leaves(&self) -> std::collections::HashSet<usize> {
        self.late_groups()
            .flat_map(|g| g.tests.iter().map(|(leaf, _, _)| *leaf))
            .collect()
    }

    /// The filter leaves the entity scan computes: all but those of
    /// column groups.
    pub fn filter_leaves(&self) -> Vec<usize> {
        let grouped: std::collections::HashSet<usize> = self
            .column_groups
            .iter()
            .flat_map(|g| g.tests.iter().map(|(leaf, _, _)| *leaf))
            .collect();
        (0..self.leaves.len())
            .filter(|&i| matches!(self.leaves[i], Leaf::Filter(_)) && !grouped.contains(&i))
            .collect()
    }

    /// `FROM` (and `WHERE`) of the entity rows a scan reads, with the
    /// position expression of row `e`.
    fn entity_rows_sql(&self) -> (String, String) {
        let (position, join) = self
            .entity
            .position_sql(&format!("e.{}", ident(&self.entity.key_column)));
        let (from, restriction) = match (&self.entity_source, &self.restriction) {
            (Some(source), _) => (format!("({source})"), String::new()),
            (None, Some(keys)) => (
                self.entity.table.relation_sql.clone(),
                format!(
                    " WHERE e.{} {} ANY ({keys})",
                    ident(&self.entity.key_column),
                    op("=")
                ),
            ),
            (None, None) => (self.entity.table.relation_sql.clone(), String::new()),
        };
        (format!("FROM {from} e{join}{restriction}"), position)
    }

    /// The scan of a column group: a bucketed group's once its constants'
    /// ranks are known (`ColumnGroup::ranks_sql`), an equality group's
    /// (`ranks` unused).
    /// The one query of a trait source: the traits' values grouped once
    /// (materialized), then each group's buckets (`ranks` by group, in
    /// the source's order), as rows (group's place in the source, bucket,
    /// exact, positions).
    pub fn trait_source_sql(&self, source: &TraitSource, ranks: &[Vec<i64>]) -> String {
        let (position, join) = self.entity.position_sql("g.key");
        let rows = format!("FROM trait_values g{join}");
        let parts: Vec<String> = source
            .groups
            .iter()
            .zip(ranks)
            .enumerate()
            .map(|(j, (&group, ranks))| {
                format!(
                    "SELECT {j} AS i, s.* FROM ({}) s",
                    self.column_groups[group].buckets_sql(ranks, &rows, &position)
                )
            })
            .collect();
        format!(
            "WITH trait_values AS MATERIALIZED ({}) {}",
            source.values_sql,
            parts.join(" UNION ALL ")
        )
    }

    pub fn column_group_sql(&self, group: &ColumnGroup, ranks: &[i64]) -> String {
        let (rows, position) = match &group.rows {
            None => self.entity_rows_sql(),
            Some(values) => {
                let (position, join) = self.entity.position_sql("g.key");
                (format!("FROM ({values}) g{join}"), position)
            }
        };
        if group.ordered {
            group.buckets_sql(ranks, &rows, &position)
        } else {
            group.matches_sql(&rows, &position)
        }
    }
}

/// Parses and compiles one definition on its own, as saving it does.
pub fn compile_definition(
    catalog: &dyn Catalog,
    value: &Value,
    self_id: Option<i64>,
    reference_time: &str,
    max_conditions: usize,
) -> Result<(Definition, Plan, CompiledSegment), Reported> {
    let definition = Definition::parse(value)?;
    definition.check_size(max_conditions)?;
    let mut planner = Planner::new(catalog, &definition.entity, "entity", reference_time)?;
    let mut compiled = planner.add(&definition, self_id)?;
    check_cycles(catalog, self_id, &compiled.references)?;
    let plan = planner.finish(&mut [&mut compiled]);
    Ok((definition, plan, compiled))
}

#[cfg(test)]
mod tests {
    use super::emit::literal_type;
    use super::*;
    use crate::catalog::fixture::customers;
    use crate::catalog::Column;
    use serde_json::json;

    const NOW: &str = "'2026-11-01 00:00:00+00'::timestamptz";

    fn compile(definition: Value) -> Result<(Plan, CompiledSegment), Reported> {
        let catalog = customers();
        compile_definition(&catalog, &definition, None, NOW, usize::MAX).map(|(_, p, c)| (p, c))
    }

    fn where_sql(condition: Value) -> String {
        let (plan, compiled) =
            compile(json!({"entity": "customer", "rules": [{"where": condition}]})).unwrap();
        let CompiledBody::Expr(Expr::Leaf(i)) = &compiled.rules[0].body else {
            panic!("one leaf expected")
        };
        match &plan.leaves[*i] {
            Leaf::Filter(_) | Leaf::KeySet(_) | Leaf::Aggregate { .. } => {
                plan.leaves[*i].sql().to_string()
            }
            Leaf::Segment(id) => format!("segment {id}"),
        }
    }

    fn error(definition: Value) -> (String, String, Option<String>) {
        let e = compile(definition).unwrap_err();
        (e.error.code().to_string(), e.error.to_string(), e.hint)
    }

    #[test]
    fn a_segment_lists_the_leaves_it_reads_once_each() {
        let (plan, compiled) = compile(json!({"entity": "customer", "rules": [
            {"where": {"any": [
                {"attribute": "country", "op": "eq", "value": "DE"},
                {"not": {"attribute": "country", "op": "eq", "value": "DE"}}]}},
            {"combine": "except", "where": {"attribute": "country", "op": "eq", "value": "FR"}}
        ]}))
        .unwrap();
        let leaves = compiled.leaves();
        assert!(leaves.windows(2).all(|w| w[0] < w[1]), "{leaves:?}");
        assert!(leaves.iter().all(|&i| i < plan.leaves.len()));
        let sqls: Vec<&str> = leaves.iter().map(|&i| plan.leaves[i].sql()).collect();
        assert!(sqls.iter().any(|s| s.contains("'DE'")), "{sqls:?}");
        assert!(sqls.iter().any(|s| s.contains("'FR'")), "{sqls:?}");
    }

    #[test]
    fn attribute_operators_compile_to_sql() {
        let cases = [
            (
                json!({"attribute": "country", "op": "eq", "value": "DE"}),
                r#"e."country" OPERATOR(pg_catalog.=) 'DE'::text"#,
            ),
            (
                json!({"attribute": "country", "op": "ne", "value": "DE", "ignore_case": true}),
                r#"pg_catalog.lower(e."country") OPERATOR(pg_catalog.<>) pg_catalog.lower('DE'::text)"#,
            ),
            (
                json!({"attribute": "age", "op": "between", "value": [18, 30]}),
                r#"(e."age" OPERATOR(pg_catalog.>=) '18'::integer AND e."age" OPERATOR(pg_catalog.<=) '30'::integer)"#,
            ),
            (
                json!({"attribute": "age", "op": "gt", "value": 17.5}),
                r#"e."age" OPERATOR(pg_catalog.>) '17.5'::pg_catalog.numeric"#,
            ),
            (
                json!({"attribute": "country", "op": "in", "value": ["DE", "FR"]}),
                r#"e."country" OPERATOR(pg_catalog.=) ANY (ARRAY['DE'::text, 'FR'::text])"#,
            ),
            (
                json!({"attribute": "country", "op": "not_in", "value": ["DE"]}),
                r#"e."country" OPERATOR(pg_catalog.<>) ALL (ARRAY['DE'::text])"#,
            ),
            (
                json!({"attribute": "country", "op": "contains", "value": "E"}),
                r#"pg_catalog.strpos(e."country", 'E'::text) OPERATOR(pg_catalog.>) 0"#,
            ),
            (
                json!({"attribute": "country", "op": "starts_with", "value": "D"}),
                r#"pg_catalog.starts_with(e."country", 'D'::text)"#,
            ),
            (
                json!({"attribute": "country", "op": "is_null"}),
                r#"e."country" IS NULL"#,
            ),
            (
                json!({"attribute": "unsubscribed", "op": "is_false"}),
                r#"e."unsubscribed" IS FALSE"#,
            ),
            (
                json!({"attribute": "birth_date", "op": "is_anniversary"}),
                r#"pg_catalog.to_char(e."birth_date", 'MM-DD') OPERATOR(pg_catalog.=) pg_catalog.to_char('2026-11-01 00:00:00+00'::timestamptz, 'MM-DD')"#,
            ),
            (
                json!({"attribute": "signed_up_at", "op": "in_last", "value": "30 days"}),
                r#"(e."signed_up_at" OPERATOR(pg_catalog.>=) ('2026-11-01 00:00:00+00'::timestamptz OPERATOR(pg_catalog.-) '30 days'::pg_catalog.interval) AND e."signed_up_at" OPERATOR(pg_catalog.<=) '2026-11-01 00:00:00+00'::timestamptz)"#,
            ),
            (
                json!({"attribute": "birth_date", "op": "before", "value": "2000-01-01"}),
                r#"e."birth_date" OPERATOR(pg_catalog.<) '2000-01-01'::date"#,
            ),
        ];
        for (condition, expected) in cases {
            assert_eq!(where_sql(condition), expected);
        }
    }

    #[test]
    fn numbers_reach_the_sql_digit_for_digit() {
        let text = r#"{"attribute": "id", "op": "eq", "value": 123456789012345678901234567890}"#;
        let condition: Value = serde_json::from_str(text).unwrap();
        let sql = where_sql(condition);
        assert!(sql.contains("'123456789012345678901234567890'::"), "{sql}");
        let condition: Value = serde_json::from_str(
            r#"{"attribute": "age", "op": "eq", "value": 0.30000000000000001}"#,
        )
        .unwrap();
        let sql = where_sql(condition);
        assert!(sql.contains("'0.30000000000000001'::"), "{sql}");
        // And a stored definition keeps them.
        let definition: Value = serde_json::from_str(r#"{"value": 0.30000000000000001}"#).unwrap();
        assert_eq!(definition.to_string(), r#"{"value":0.30000000000000001}"#);
    }

    #[test]
    fn a_lone_segment_folds_its_filters_and_not_is_a_complement() {
        let (plan, compiled) = compile(json!({"entity": "customer", "rules": [{"where": {"all": [
            {"attribute": "country", "op": "eq", "value": "DE"},
            {"not": {"attribute": "age", "op": "lt", "value": 18}},
            {"related": "orders"}]}}]}))
        .unwrap();
        assert_eq!(plan.leaves.len(), 2, "{:?}", plan.leaves);
        assert!(plan.leaves.contains(&Leaf::Filter(
            r#"(e."country" OPERATOR(pg_catalog.=) 'DE'::text AND (e."age" OPERATOR(pg_catalog.<) '18'::integer) IS NOT TRUE)"#.into()
        )));
        assert!(
            matches!(&compiled.rules[0].body, CompiledBody::Expr(Expr::All(items)) if items.len() == 2)
        );
        assert!(
            plan.needs_all_rows,
            "the related leaf may hold rows that no longer exist"
        );
        let (plan, _) = compile(json!({"entity": "customer", "rules": [{"where": {"all": [
            {"attribute": "country", "op": "eq", "value": "DE"},
            {"attribute": "age", "op": "between", "value": [25, 34]}]}}]}))
        .unwrap();
        assert_eq!(plan.leaves, vec![Leaf::Filter(r#"(e."country" OPERATOR(pg_catalog.=) 'DE'::text AND (e."age" OPERATOR(pg_catalog.>=) '25'::integer AND e."age" OPERATOR(pg_catalog.<=) '34'::integer))"#.into())]);
        assert!(!plan.needs_all_rows, "filters alone never need every row");
    }

    #[test]
    fn a_live_plan_scans_its_rows_or_the_changed_keys() {
        let catalog = customers();
        let definition = Definition::parse(&json!({"entity": "customer", "rules": [{"where":
            {"attribute": "country", "op": "eq", "value": "DE"}}]}))
        .unwrap();
        let plan_with = |source: Option<&str>| {
            let mut planner = Planner::new(&catalog, "customer", "entity", NOW).unwrap();
            planner.restrict_to("'{1,2}'::pg_catalog.int8[]".into());
            if let Some(source) = source {
                planner.read_rows_from(source.into());
            }
            let mut compiled = planner.add(&definition, None).unwrap();
            planner.finish(&mut [&mut compiled])
        };
        let filters = |plan: &Plan| plan.entity_scan_sql(&plan.filter_leaves());
        let keys = filters(&plan_with(None));
        assert!(keys.contains(r#"FROM "public"."customers" e WHERE e."id" OPERATOR(pg_catalog.=) ANY ('{1,2}'::pg_catalog.int8[])"#), "{keys}");
        let rows = filters(&plan_with(Some("SELECT 1 AS id, 'DE' AS country")));
        assert!(
            rows.contains("FROM (SELECT 1 AS id, 'DE' AS country) e"),
            "{rows}"
        );
        assert!(
            !rows.contains("ANY ("),
            "the source is the restriction: {rows}"
        );
    }

    #[test]
    fn dictionary_keys_join_the_dictionary_or_its_citus_copy() {
        let mut catalog = customers();
        catalog.entities[0].key_kind = crate::catalog::KeyKind::Dictionary;
        let definition = json!({"entity": "customer", "rules": [{"where": {"related": "orders"}}]});
        let plan = |catalog: &crate::catalog::fixture::FixedCatalog| {
            compile_definition(catalog, &definition, None, NOW, usize::MAX)
                .unwrap()
                .1
        };
        assert_eq!(
            plan(&catalog).leaves[0].sql(),
            r#"SELECT segments.rb_agg(k.position) FROM "public"."orders" r JOIN segments.entity_key k ON k.entity OPERATOR(pg_catalog.=) 'customer' AND k.key OPERATOR(pg_catalog.=) r."customer_id"::pg_catalog.text"#
        );
        // On Citus the copy is joined on the key itself, typed as the
        // entity's key, so that the join is colocated and runs on the shards.
        catalog.entities[0].key_replica = Some(r#"segments."customer_keys""#.into());
        assert_eq!(
            plan(&catalog).leaves[0].sql(),
            r#"SELECT segments.rb_agg(k.position) FROM "public"."orders" r JOIN segments."customer_keys" k ON k.key OPERATOR(pg_catalog.=) r."customer_id"::bigint"#
        );
        let scan = plan(&catalog).entity_scan_sql(&[]);
        assert!(
            scan.contains(
                r#" JOIN segments."customer_keys" k ON k.key OPERATOR(pg_catalog.=) e."id"::bigint"#
            ),
            "{scan}"
        );
    }

    #[test]
    fn related_conditions_become_key_set_queries() {
        let sql = where_sql(
            json!({"related": "orders", "within": "30 days", "where": {"attribute": "status", "op": "eq", "value": "paid"}}),
        );
        assert_eq!(
            sql,
            r#"SELECT segments.rb_agg(r."customer_id"::pg_catalog.int8) FROM "public"."orders" r WHERE (r."status" OPERATOR(pg_catalog.=) 'paid'::text AND (r."ordered_at" OPERATOR(pg_catalog.>=) (SELECT ('2026-11-01 00:00:00+00'::timestamptz OPERATOR(pg_catalog.-) '30 days'::pg_catalog.interval)) AND r."ordered_at" OPERATOR(pg_catalog.<=) (SELECT '2026-11-01 00:00:00+00'::timestamptz)))"#
        );
        let (plan, compiled) = compile(json!({"entity": "customer", "rules": [{"where":
            {"related": "orders", "aggregate": "count", "op": "lt", "value": 3}}]}))
        .unwrap();
        let CompiledBody::Expr(Expr::Leaf(i)) = &compiled.rules[0].body else {
            panic!()
        };
        let Leaf::Aggregate {
            sql, empty_matches, ..
        } = &plan.leaves[*i]
        else {
            panic!()
        };
        assert!(empty_matches, "count < 3 holds for members without orders");
        assert!(sql.contains("count(*) AS value"), "{sql}");
        let (plan, compiled) = compile(json!({"entity": "customer", "rules": [{"where":
            {"related": "orders", "aggregate": "sum", "attribute": "amount", "op": "gt", "value": 500}}]})).unwrap();
        let CompiledBody::Expr(Expr::Leaf(i)) = &compiled.rules[0].body else {
            panic!()
        };
        assert!(matches!(
            &plan.leaves[*i],
            Leaf::Aggregate {
                empty_matches: false,
                ..
            }
        ));
        let none = compile(json!({"entity": "customer", "rules": [{"where": {"related": "orders", "exists": false}}]})).unwrap().1;
        assert!(matches!(
            &none.rules[0].body,
            CompiledBody::Expr(Expr::Not(_))
        ));
    }

    #[test]
    fn related_conditions_with_windows_form_a_window_scan() {
        let catalog = customers();
        let plan = |min: Option<usize>, conditions: &[Value]| {
            let mut planner = Planner::new(&catalog, "customer", "entity", NOW).unwrap();
            if let Some(min) = min {
                planner.scan_windows_from(min);
            }
            let mut compiled: Vec<CompiledSegment> = conditions
                .iter()
                .map(|condition| {
                    let definition = json!({"entity": "customer", "rules": [{"where": condition}]});
                    planner
                        .add(&Definition::parse(&definition).unwrap(), None)
                        .unwrap()
                })
                .collect();
            let mut refs: Vec<&mut CompiledSegment> = compiled.iter_mut().collect();
            planner.finish(&mut refs)
        };
        let conditions = [
            json!({"related": "orders", "within": "30 days"}),
            json!({"related": "orders", "within": "7 days", "where": {"attribute": "status", "op": "eq", "value": "paid"}}),
            json!({"related": "orders", "aggregate": "count", "within": "30 days", "op": "gte", "value": 3}),
            json!({"related": "orders", "aggregate": "sum", "attribute": "amount", "within": "90 days", "op": "gt", "value": 500.5}),
            // Not for a window scan: no window, a past window, an average.
            json!({"related": "orders", "aggregate": "count", "op": "gte", "value": 2}),
            json!({"related": "orders", "within": {"from": "60 days", "to": "30 days"}}),
            json!({"related": "orders", "aggregate": "avg", "attribute": "amount", "within": "30 days", "op": "gt", "value": 5}),
        ];
        let scanned = plan(Some(4), &conditions);
        assert_eq!(scanned.window_scans.len(), 1);
        let scan = &scanned.window_scans[0];
        assert_eq!(scan.leaves().count(), 4);
        assert_eq!(scan.starts.len(), 3, "{:?}", scan.starts);
        assert_eq!(scan.families.len(), 2);
        assert_eq!(scan.sums.len(), 1);
        let sql = scan.scan_sql("g.key::pg_catalog.int8", "");
        assert!(
            sql.contains("pg_catalog.width_bucket(r.\"ordered_at\""),
            "{sql}"
        );
        assert!(sql.ends_with("ORDER BY 1"), "{sql}");
        // The scanned leaves keep their own queries; the others share one.
        for leaf in scan.leaves() {
            assert!(
                !scanned.leaves[leaf].sql().contains("related "),
                "{}",
                scanned.leaves[leaf].sql()
            );
        }
        // Fewer candidates than the minimum, or scans off: no scan.
        assert!(plan(Some(5), &conditions).window_scans.is_empty());
        assert!(plan(None, &conditions).window_scans.is_empty());
    }

    #[test]
    fn funnels_with_windows_form_a_funnel_scan() {
        let catalog = customers();
        let mut planner = Planner::new(&catalog, "customer", "entity", NOW).unwrap();
        planner.scan_windows_from(2);
        let funnel = |days: u32| {
            json!({"related": "orders", "within": format!("{days} days"), "sequence": [
                {"where": {"attribute": "status", "op": "eq", "value": "cart"}},
                {"where": {"all": [{"attribute": "status", "op": "eq", "value": "paid"},
                                   {"attribute": "customer_id", "op": "eq", "value": {"step": 1, "attribute": "customer_id"}}]},
                 "within": "2 days", "absent": true}]})
        };
        let mut compiled: Vec<CompiledSegment> = [funnel(10), funnel(20), funnel(30)]
            .into_iter()
            .map(|condition| {
                let definition = json!({"entity": "customer", "rules": [{"where": condition}]});
                planner
                    .add(&Definition::parse(&definition).unwrap(), None)
                    .unwrap()
            })
            .collect();
        let mut refs: Vec<&mut CompiledSegment> = compiled.iter_mut().collect();
        let plan = planner.finish(&mut refs);
        assert_eq!(plan.funnel_scans.len(), 1, "{:?}", plan.leaves);
        let scan = &plan.funnel_scans[0];
        assert_eq!(scan.leaves().count(), 3);
        assert_eq!(scan.conditions.len(), 2);
        assert_eq!(scan.gaps.len(), 1);
        assert_eq!(scan.columns.len(), 1);
        let sql = scan.scan_sql("g.key::pg_catalog.int8", "");
        assert!(sql.ends_with("ORDER BY 1, 3"), "{sql}");

        // A bot's record (5,000 carts, never paid): decided, with the
        // interrupt check called as the pass goes; a record with more rows
        // than a pass holds makes it give up.
        let checks = std::cell::Cell::new(0);
        let ranks = vec![1i64; scan.starts.len()];
        let gaps = vec![Some(i64::MAX); scan.gaps.len()];
        let columns = vec![Some(1i64); scan.columns.len()];
        let row = |time| FunnelRow {
            bucket: 1,
            time,
            mask: 1,
            gaps: &gaps,
            columns: &columns,
        };
        let mut pass = FunnelPass::new(scan, &ranks, i64::MAX)
            .checking_interrupts(|| checks.set(checks.get() + 1));
        for time in 0..5_000 {
            assert!(pass.push(7, row(time)));
        }
        assert_eq!(pass.finish().len(), 3);
        assert!(checks.get() > 0, "no interrupt check while deciding a bot");
        let mut pass = FunnelPass::new(scan, &ranks, i64::MAX);
        let held = (0..=MAX_FUNNEL_ROWS_PER_RECORD as i64)
            .take_while(|&time| pass.push(7, row(time)))
            .count();
        assert_eq!(held, MAX_FUNNEL_ROWS_PER_RECORD);
    }

    #[test]
    fn comparisons_of_one_column_form_groups_that_are_not_folded() {
        let catalog = customers();
        let mut planner = Planner::new(&catalog, "customer", "entity", NOW).unwrap();
        planner.group_columns_from(2);
        let mut compiled: Vec<CompiledSegment> = [
            json!({"all": [{"attribute": "age", "op": "gt", "value": 30}, {"attribute": "country", "op": "eq", "value": "DE"}]}),
            json!({"all": [{"attribute": "age", "op": "between", "value": [20, 29]}, {"attribute": "country", "op": "in", "value": ["FR", "DE"]}]}),
            json!({"attribute": "country", "op": "contains", "value": "E"}),
        ]
        .into_iter()
        .map(|condition| {
            let definition = json!({"entity": "customer", "rules": [{"where": condition}]});
            planner.add(&Definition::parse(&definition).unwrap(), None).unwrap()
        })
        .collect();
        let mut refs: Vec<&mut CompiledSegment> = compiled.iter_mut().collect();
        let plan = planner.finish(&mut refs);
        // age (bucketed) and country (equality) are groups; the lone
        // `contains` stays a FILTER clause.
        assert_eq!(plan.column_groups.len(), 2, "{:?}", plan.column_groups);
        let age = plan.column_groups.iter().find(|g| g.ordered).unwrap();
        assert_eq!(age.operand, "e.\"age\"");
        assert_eq!(
            age.values,
            vec!["'30'::integer", "'20'::integer", "'29'::integer"]
        );
        let country = plan.column_groups.iter().find(|g| !g.ordered).unwrap();
        assert_eq!(country.values, vec!["'DE'::text", "'FR'::text"]);
        assert_eq!(country.tests[1].2, vec![1, 0]);
        let filters = plan.filter_leaves();
        assert_eq!(filters.len(), 1);
        assert!(plan.leaves[filters[0]].sql().contains("strpos"));
        let buckets = plan.column_group_sql(age, &[3, 1, 2]);
        assert!(buckets.contains("pg_catalog.width_bucket(v.x, (SELECT ARRAY['20'::integer, '29'::integer, '30'::integer]::integer[]))"), "{buckets}");
        assert!(
            buckets.contains("SELECT CAST(e.\"age\" AS integer) AS x"),
            "{buckets}"
        );
        let matches = plan.column_group_sql(country, &[]);
        assert!(matches.contains("JOIN pg_catalog.unnest(ARRAY['DE'::text, 'FR'::text]::text[]) WITH ORDINALITY u(c, o) ON s.x OPERATOR(pg_catalog.=) u.c"), "{matches}");
    }

    #[test]
    fn shared_leaves_are_computed_once() {
        let catalog = customers();
        let mut planner = Planner::new(&catalog, "customer", "entity", NOW).unwrap();
        let de = json!({"entity": "customer", "rules": [{"where": {"attribute": "country", "op": "eq", "value": "DE"}}]});
        let mixed = json!({"entity": "customer", "rules": [
            {"where": {"attribute": "country", "op": "eq", "value": "DE"}},
            {"combine": "intersect", "where": {"segment": "VIP"}}]});
        let mut first = planner.add(&Definition::parse(&de).unwrap(), None).unwrap();
        let mut second = planner
            .add(&Definition::parse(&mixed).unwrap(), None)
            .unwrap();
        let plan = planner.finish(&mut [&mut first, &mut second]);
        assert_eq!(
            plan.leaves.len(),
            2,
            "country = DE is computed once for both segments"
        );
        assert_eq!(second.references, vec![7]);
        assert_eq!(plan.filter_leaves(), vec![0]);
        let scan = plan.entity_scan_sql(&plan.filter_leaves());
        assert!(
            plan.needs_all_rows,
            "a segment leaf may hold rows deleted since"
        );
        assert!(
            scan.starts_with("SELECT segments.rb_agg(e.\"id\"::pg_catalog.int8),"),
            "{scan}"
        );
        assert!(
            scan.contains("FILTER (WHERE e.\"country\" OPERATOR(pg_catalog.=) 'DE'::text)"),
            "{scan}"
        );
    }

    #[test]
    fn catalog_errors_have_sqlstates_paths_and_hints() {
        let (code, message, hint) = error(json!({"entity": "customer", "rules": [
            {"where": {"attribute": "age", "op": "gt", "value": 1}},
            {"combine": "union", "where": {"all": [{"attribute": "contry", "op": "eq", "value": "DE"}]}}]}));
        assert_eq!(code, "42703");
        assert_eq!(
            message,
            "rules[1].where.all[0]: column \"contry\" does not exist on entity \"customer\""
        );
        assert_eq!(hint.as_deref(), Some("Perhaps you meant \"country\"."));

        let (code, message, hint) = error(
            json!({"entity": "custome", "rules": [{"where": {"attribute": "age", "op": "is_null"}}]}),
        );
        assert_eq!(
            (code.as_str(), message.as_str()),
            ("42P01", "entity: entity \"custome\" is not registered")
        );
        assert_eq!(hint.as_deref(), Some("Perhaps you meant \"customer\"."));

        let (code, message, _) = error(
            json!({"entity": "customer", "rules": [{"where": {"related": "order", "exists": true}}]}),
        );
        assert_eq!(code, "42P01");
        assert!(
            message
                .starts_with("rules[0].where.related: related table \"order\" is not registered"),
            "{message}"
        );

        let (code, message, _) =
            error(json!({"entity": "customer", "rules": [{"where": {"segment": "VIPs"}}]}));
        assert_eq!(
            (code.as_str(), message.as_str()),
            (
                "42P01",
                "rules[0].where.segment: segment \"VIPs\" does not exist"
            )
        );

        let (code, message, _) = error(
            json!({"entity": "customer", "rules": [{"where": {"attribute": "age", "op": "eq", "value": "old"}}]}),
        );
        assert_eq!(code, "22023");
        assert_eq!(
            message,
            "rules[0].where.value: \"old\" is not a number (column \"age\" is integer)"
        );

        let (code, message, _) = error(json!({"entity": "customer", "rules": [{"where":
            {"related": "orders", "where": {"segment": "VIP"}}}]}));
        assert_eq!(code, "22023");
        assert!(
            message.starts_with("rules[0].where.where: inside \"related\""),
            "{message}"
        );
    }

    #[test]
    fn self_references_and_cycles_are_refused() {
        let catalog = customers();
        let own = json!({"entity": "customer", "rules": [{"where": {"segment": 7}}]});
        let e = compile_definition(&catalog, &own, Some(7), NOW, usize::MAX).unwrap_err();
        assert_eq!(
            e.error.to_string(),
            "rules[0].where: a segment cannot refer to itself"
        );

        let mut catalog = customers();
        catalog.segments.push(crate::catalog::SegmentSummary {
            id: 8,
            name: "Loyal".into(),
            entity: "customer".into(),
            definition: json!({"entity": "customer", "rules": [{"where": {"segment": 9}}]}),
            split: vec![],
        });
        catalog.segments.push(crate::catalog::SegmentSummary {
            id: 9,
            name: "Big".into(),
            entity: "customer".into(),
            definition: json!({"entity": "customer", "rules": [{"where": {"attribute": "age", "op": "gt", "value": 1}}]}),
            split: vec![],
        });
        // Saving segment 9 so that it refers to 8 closes 9 -> 8 -> 9.
        let closing = json!({"entity": "customer", "rules": [{"where": {"segment": "Loyal"}}]});
        let e = compile_definition(&catalog, &closing, Some(9), NOW, usize::MAX).unwrap_err();
        assert_eq!(e.error.code(), "22023");
        assert!(
            e.error
                .to_string()
                .contains("cycle: this segment -> Loyal -> Big"),
            "{}",
            e.error
        );
    }

    #[test]
    fn columns_read_cover_attributes_keys_and_related_tables() {
        let catalog = customers();
        let definition = Definition::parse(&json!({"entity": "customer", "rules": [
            {"where": {"attribute": "country", "op": "eq", "value": "DE"}},
            {"combine": "intersect", "rules": [{"where": {"related": "orders", "aggregate": "sum",
                "attribute": "amount", "within": "30 days", "op": "gt", "value": 1,
                "where": {"attribute": "status", "op": "eq", "value": "paid"}}}]}]}))
        .unwrap();
        let reads = columns_read(&definition, &catalog.entity("customer").unwrap());
        let reads: Vec<String> = reads.into_iter().map(|(r, c)| format!("{r}.{c}")).collect();
        assert_eq!(
            reads,
            vec![
                "\"public\".\"customers\".country",
                "\"public\".\"customers\".id",
                "\"public\".\"orders\".amount",
                "\"public\".\"orders\".customer_id",
                "\"public\".\"orders\".ordered_at",
                "\"public\".\"orders\".status",
            ]
        );
    }

    #[test]
    fn literals_are_never_cut_or_rounded_to_the_column_size() {
        let column = |type_sql: &str, base: &str| Column {
            name: "c".into(),
            type_sql: type_sql.into(),
            kind: if base == "character varying" || base == "character" {
                ColumnKind::Text
            } else {
                ColumnKind::Numeric
            },
            base_type_sql: base.into(),
            refused: None,
        };
        assert_eq!(
            literal_type(
                &column("character varying(5)", "character varying"),
                "abcdefgh"
            ),
            "pg_catalog.varchar"
        );
        assert_eq!(
            literal_type(&column("character(3)", "character"), "abcz"),
            "pg_catalog.bpchar"
        );
        assert_eq!(
            literal_type(&column("numeric(5,2)", "numeric"), "4.555"),
            "numeric"
        );
        assert_eq!(
            literal_type(&column("integer", "integer"), "3000000000"),
            "pg_catalog.numeric"
        );
        assert_eq!(literal_type(&column("integer", "integer"), "30"), "integer");
        assert_eq!(
            literal_type(&column("smallint", "smallint"), "40000"),
            "pg_catalog.numeric"
        );
        assert_eq!(
            literal_type(&column("bigint", "bigint"), "1.5"),
            "pg_catalog.numeric"
        );
    }

    #[test]
    fn injection_attempts_stay_inside_literals_and_identifiers() {
        let sql = where_sql(
            json!({"attribute": "country", "op": "eq", "value": "x'); DROP TABLE customers; --"}),
        );
        assert_eq!(
            sql,
            r#"e."country" OPERATOR(pg_catalog.=) 'x''); DROP TABLE customers; --'::text"#
        );
        let sql = where_sql(json!({"attribute": "country", "op": "contains", "value": "\\'; --"}));
        assert_eq!(
            sql,
            r#"pg_catalog.strpos(e."country", E'\\''; --'::text) OPERATOR(pg_catalog.>) 0"#
        );
        let (code, _, _) = error(json!({"entity": "customer", "rules": [{"where":
            {"attribute": "country\"; DROP TABLE customers; --", "op": "is_null"}}]}));
        assert_eq!(code, "42703");
    }
}
