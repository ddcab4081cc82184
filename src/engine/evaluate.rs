//! Runs a plan's queries and evaluates segments over the resulting bitmaps.
//! One scan of the entity table computes every attribute filter of every
//! segment in the plan; each related-table leaf is one query; segment
//! references read stored (or just computed) memberships.

use std::collections::HashMap;
use std::rc::Rc;

use pgrx::prelude::*;
use pgrx::spi::Spi;

use segments_core::bitmap::{deserialize, evaluate, evaluate_rules, Members, RuleCount};
use segments_core::catalog::KeyKind;
use segments_core::compile::{
    column_leaves, equality_leaves, Bucket, ColumnBuckets, ColumnGroup, CompiledSegment,
    FunnelPass, FunnelRow, FunnelScan, Leaf, Plan, TraitSource, WindowPass, WindowScan,
};
use segments_core::sql::{ident, literal};

use crate::engine::late::LateLeaves;
use crate::pg::spi::{for_each_row, optional_value, required, spi};

/// Plans whose conditions add up to more SQL than this (about 60
/// conditions) run without JIT (`txn::without_jit`): LLVM compiles that
/// much in well under a second, and a cancel during compilation waits for
/// it to end. Smaller plans use JIT as the session has it.
const JIT_MAX_SQL: usize = 5_000;

/// Postgres allows 1664 target columns; stay well below.
const FILTERS_PER_SCAN: usize = 500;

/// Rows a window scan's cursor fetches at a time: the pass holds one
/// batch, freed before the next.
const WINDOW_ROWS_PER_FETCH: i64 = 10_000;

/// The bitmaps of a plan's leaves. Late leaves (segment references, whose
/// value depends on the order in which a refresh computes segments, and
/// comparisons of column groups, kept as buckets) are filled per segment
/// (`fill_late_leaf`).
pub struct LeafValues {
    /// Every row (empty when the plan does not need it).
    pub all_rows: Members,
    /// What members are limited to: every (eligible) row, or None when every
    /// leaf already holds existing rows only.
    pub universe: Option<Members>,
    pub leaves: Vec<Members>,
    /// The buckets late comparisons are made from.
    pub late: LateLeaves,
}

/// The reference time of this evaluation, as a timestamptz SQL literal:
/// `segments.reference_time` when set, else the transaction's `now()`.
pub fn reference_time_sql() -> String {
    let text = optional_value::<String>(
        "SELECT coalesce(nullif(current_setting('segments.reference_time', true), '')::timestamptz, now())::text",
        &[],
    )
    .unwrap_or_else(|| error!("segments: could not read the reference time"));
    format!("{}::timestamptz", literal(&text))
}

fn bitmap_of(value: Option<Vec<u8>>) -> Members {
    match value {
        None => Members::new(),
        Some(bytes) => deserialize(&bytes).unwrap_or_else(|e| crate::pg::error::corrupt(e)),
    }
}

/// The longest key (as text, in bytes) the key dictionary holds: its
/// unique index refuses entries over about 2,700 bytes, and one such row
/// must not fail every refresh of its entity. Rows with longer keys are
/// left out of every segment, with a warning naming them.
pub const MAX_KEY_BYTES: i32 = 2000;

/// Gives every key of a dictionary-keyed entity a bitmap position.
pub fn sync_dictionary(plan: &Plan) {
    // A restricted (live) plan's keys were given positions by the caller.
    if plan.entity.key_kind != KeyKind::Dictionary || plan.restriction.is_some() {
        return;
    }
    // A hot standby reads the dictionary as replayed from the primary:
    // keys the primary has not seen yet are in no stored membership, and
    // left out of what is computed here.
    if crate::pg::subtransaction::in_recovery() {
        return;
    }
    if plan.entity.key_replica.is_some() {
        return crate::engine::citus::sync_key_replica(&plan.entity);
    }
    // The anti-join finds the new keys in one pass over both (a merge or
    // hash join); ON CONFLICT alone would probe the index for every key of
    // the table on every refresh, five times slower at 1M keys.
    let sql = format!(
        "WITH fresh AS (SELECT e.{key}::pg_catalog.text AS k FROM {table} e \
                         WHERE e.{key} IS NOT NULL AND NOT EXISTS (SELECT FROM segments.entity_key k \
                               WHERE k.entity OPERATOR(pg_catalog.=) {name} AND k.key OPERATOR(pg_catalog.=) e.{key}::pg_catalog.text)), \
              added AS (INSERT INTO segments.entity_key (entity, key) SELECT {name}, f.k FROM fresh f \
                         WHERE pg_catalog.octet_length(f.k) OPERATOR(pg_catalog.<=) {MAX_KEY_BYTES} \
                        ON CONFLICT (entity, key) DO NOTHING) \
         SELECT pg_catalog.count(*), pg_catalog.min(pg_catalog.left(f.k, 40)) FROM fresh f \
          WHERE pg_catalog.octet_length(f.k) OPERATOR(pg_catalog.>) {MAX_KEY_BYTES}",
        name = literal(&plan.entity.name),
        key = ident(&plan.entity.key_column),
        table = plan.entity.table.relation_sql,
    );
    // The dictionary is internal state: written as the extension, read
    // only by roles that may read the entity table (its RLS policy). The
    // table is locked and its key column checked first: the extension
    // never runs a function, cast or operator of the table's owner.
    let (too_long, example) = crate::pg::sandbox::privileged(std::panic::AssertUnwindSafe(|| {
        crate::pg::catalog::lock_verified(&plan.entity);
        let row = Spi::get_two::<i64, String>(&sql);
        spi(row)
    }));
    if let Some(count) = too_long.filter(|c| *c > 0) {
        warning!(
            "segments: {count} row(s) of entity \"{}\" have a key longer than {MAX_KEY_BYTES} bytes (the first begins \"{}\"); they are left out of every segment",
            plan.entity.name,
            example.unwrap_or_default()
        );
    }
}

/// Every query the plan runs, in order, for `explain`.
pub fn plan_queries(plan: &Plan) -> Vec<String> {
    let filters = plan.filter_leaves();
    let mut queries: Vec<String> = if filters.is_empty() {
        vec![plan.entity_scan_sql(&[])]
    } else {
        filters
            .chunks(FILTERS_PER_SCAN)
            .map(|chunk| plan.entity_scan_sql(chunk))
            .collect()
    };
    let mut in_sources = std::collections::HashSet::new();
    for source in &plan.trait_sources {
        in_sources.extend(source.groups.iter().copied());
        let mut ranks = Vec::new();
        for &g in &source.groups {
            queries.push(plan.column_groups[g].ranks_sql());
            ranks.push(column_ranks(&plan.column_groups[g]));
        }
        queries.push(plan.trait_source_sql(source, &ranks));
    }
    for (g, group) in plan.column_groups.iter().enumerate() {
        if in_sources.contains(&g) {
            continue;
        }
        if group.ordered {
            queries.push(group.ranks_sql());
            queries.push(plan.column_group_sql(group, &column_ranks(group)));
        } else {
            queries.push(plan.column_group_sql(group, &[]));
        }
    }
    let mut scanned: std::collections::HashSet<usize> = plan
        .column_groups
        .iter()
        .filter(|g| g.rows.is_some())
        .flat_map(|g| g.tests.iter().map(|(leaf, _, _)| *leaf))
        .collect();
    for scan in &plan.window_scans {
        let (position, join) = plan.entity.position_sql("g.key");
        queries.push(scan.ranks_sql());
        queries.push(scan.scan_sql(&position, &join));
        scanned.extend(scan.leaves());
    }
    for scan in &plan.funnel_scans {
        let (position, join) = plan.entity.position_sql("g.key");
        queries.push(scan.ranks_sql());
        queries.push(scan.scan_sql(&position, &join));
        scanned.extend(scan.leaves());
    }
    for (i, leaf) in plan.leaves.iter().enumerate() {
        if scanned.contains(&i) {
            continue;
        }
        match leaf {
            Leaf::Filter(_) => {}
            Leaf::KeySet(sql) => queries.push(sql.clone()),
            // Conditions on traits of one table share one query.
            Leaf::Aggregate { sql, .. } if queries.contains(sql) => {}
            Leaf::Aggregate { sql, .. } => queries.push(sql.clone()),
            Leaf::Segment(id) => queries.push(format!(
                "SELECT members FROM segments.membership WHERE segment_id = {id}"
            )),
        }
    }
    queries
}

/// What a related leaf's query returns: the positions where it holds and,
/// for an aggregate, the positions with any related row. It depends on the
/// related table only, which is why live apply can keep it.
#[derive(Clone, Debug, Default)]
pub struct RelatedValue {
    pub matching: Members,
    /// (Shared: the conditions of one scan have the same.)
    pub with_rows: Option<Rc<Members>>,
}

impl RelatedValue {
    /// This value with the positions in `keys` replaced by `fresh`'s.
    pub fn patched(&self, keys: &Members, fresh: &RelatedValue) -> RelatedValue {
        let patch = |old: &Members, new: &Members| (old - keys) | (new & keys);
        RelatedValue {
            matching: patch(&self.matching, &fresh.matching),
            with_rows: match (&self.with_rows, &fresh.with_rows) {
                (Some(old), Some(new)) => Some(Rc::new(patch(old, new))),
                _ => None,
            },
        }
    }

    /// This value limited to `keys`.
    pub fn within(&self, keys: &Members) -> RelatedValue {
        RelatedValue {
            matching: &self.matching & keys,
            with_rows: self.with_rows.as_ref().map(|w| Rc::new(&**w & keys)),
        }
    }
}

/// The queries of related leaves (`KeySet`, `Aggregate`), each distinct
/// one run once: the aggregates of one related table share one grouped
/// query (ten traits of orders are ten columns of it). A refresh and a
/// live application each keep one for their leaves.
#[derive(Default)]
pub struct RelatedQueries {
    ran: HashMap<String, Vec<Members>>,
}

impl RelatedQueries {
    /// The value of a related leaf; None for other leaves. An aggregate's
    /// query groups by sorting when `sorted` (`sorts_groups`), as its
    /// first run decides for every leaf sharing it.
    pub fn value(&mut self, leaf: &Leaf, sorted: bool) -> Option<RelatedValue> {
        let sql = related_sql(leaf)?;
        if !self.ran.contains_key(sql) {
            let bitmaps = match leaf {
                Leaf::Aggregate { .. } if sorted => {
                    crate::pg::sandbox::grouping_by_sort(|| query_bitmaps(sql))
                }
                _ => query_bitmaps(sql),
            };
            self.ran.insert(sql.to_string(), bitmaps);
        }
        Some(value_of(leaf, &self.ran[sql]))
    }
}

/// A related leaf's query; None for the other leaves.
fn related_sql(leaf: &Leaf) -> Option<&str> {
    match leaf {
        Leaf::KeySet(sql) | Leaf::Aggregate { sql, .. } => Some(sql),
        Leaf::Filter(_) | Leaf::Segment(_) => None,
    }
}

/// Every bitmap column of a related leaf's one-row query.
fn query_bitmaps(sql: &str) -> Vec<Members> {
    Spi::connect(|client| {
        let table = spi(client.select(sql, None, &[])).first();
        let columns = spi(table.columns());
        (1..=columns)
            .map(|c| bitmap_of(spi(table.get::<Vec<u8>>(c))))
            .collect()
    })
}

/// A related leaf's value among its query's bitmaps: a key set's one, an
/// aggregate's own column and the last (the keys with rows).
fn value_of(leaf: &Leaf, bitmaps: &[Members]) -> RelatedValue {
    let column = |c: usize| bitmaps.get(c).cloned().unwrap_or_default();
    match leaf {
        Leaf::Aggregate { column: own, .. } => RelatedValue {
            matching: column(own.saturating_sub(1)),
            with_rows: Some(Rc::new(column(bitmaps.len().saturating_sub(1)))),
        },
        _ => RelatedValue {
            matching: column(0),
            with_rows: None,
        },
    }
}

/// Each constant's rank among a column group's distinct constants.
fn column_ranks(group: &ColumnGroup) -> Vec<i64> {
    optional_value::<Vec<i64>>(&group.ranks_sql(), &[])
        .unwrap_or_else(|| error!("segments: a column group ranked no constants"))
}

/// An equality group's one scan: each constant's place (from 1) and the
/// rows equal to it.
fn equality_matches(plan: &Plan, group: &ColumnGroup) -> Vec<(i64, Members)> {
    let sql = plan.column_group_sql(group, &[]);
    Spi::connect(|client| {
        spi(client.select(&sql, None, &[]))
            .map(|row| {
                (
                    spi(row.get::<i64>(1)).unwrap_or_default(),
                    bitmap_of(spi(row.get::<Vec<u8>>(2))),
                )
            })
            .collect()
    })
}

/// An ordered group's one scan: its constants' ranks and the rows by
/// bucket.
fn ordered_buckets(plan: &Plan, group: &ColumnGroup) -> (Vec<i64>, Vec<Bucket>) {
    let ranks = column_ranks(group);
    let sql = plan.column_group_sql(group, &ranks);
    let buckets = Spi::connect(|client| {
        spi(client.select(&sql, None, &[]))
            .map(|row| Bucket {
                number: spi(row.get::<i32>(1)).map(i64::from),
                exact: spi(row.get::<bool>(2)),
                members: bitmap_of(spi(row.get::<Vec<u8>>(3))),
            })
            .collect()
    });
    (ranks, buckets)
}

/// A column group over the entity's rows, kept as buckets for its
/// comparisons to be made when read (`engine::late`).
fn column_group_buckets(plan: &Plan, group: &ColumnGroup) -> ColumnBuckets {
    if group.ordered {
        let (ranks, buckets) = ordered_buckets(plan, group);
        ColumnBuckets::ordered(group, &ranks, buckets)
    } else {
        ColumnBuckets::equality(group, equality_matches(plan, group))
    }
}

/// The members of each comparison of a column group (by leaf), from one
/// scan of a trait's values in buckets (`compile::columns`), and the
/// records with rows (every bucket's, NULL values included).
fn column_group_leaves(
    plan: &Plan,
    group: &ColumnGroup,
) -> (Vec<(usize, Members)>, Option<Members>) {
    if !group.ordered {
        return (equality_leaves(group, equality_matches(plan, group)), None);
    }
    let (ranks, buckets) = ordered_buckets(plan, group);
    let with_rows = group.rows.as_ref().map(|_| {
        buckets
            .iter()
            .fold(Members::new(), |all, bucket| all | &bucket.members)
    });
    (column_leaves(group, &ranks, buckets), with_rows)
}

/// The values of every trait condition of a trait source (by leaf), from
/// its one query: each group's buckets, and the records with rows (every
/// bucket of the group's, NULL values included). A record with rows of
/// another trait of the source only has its trait's empty value (0 or
/// NULL, from the `FILTER`), as a record without rows would.
fn trait_source_values(plan: &Plan, source: &TraitSource) -> Vec<(usize, RelatedValue)> {
    let ranks: Vec<Vec<i64>> = source
        .groups
        .iter()
        .map(|&g| column_ranks(&plan.column_groups[g]))
        .collect();
    let sql = plan.trait_source_sql(source, &ranks);
    let mut buckets: Vec<Vec<Bucket>> = (0..source.groups.len()).map(|_| Vec::new()).collect();
    Spi::connect(|client| {
        for row in spi(client.select(&sql, None, &[])) {
            let place = spi(row.get::<i32>(1)).unwrap_or(0) as usize;
            buckets[place].push(Bucket {
                number: spi(row.get::<i32>(2)).map(i64::from),
                exact: spi(row.get::<bool>(3)),
                members: bitmap_of(spi(row.get::<Vec<u8>>(4))),
            });
        }
    });
    let mut values = Vec::new();
    for ((&g, ranks), buckets) in source.groups.iter().zip(&ranks).zip(buckets) {
        let group = &plan.column_groups[g];
        let with_rows = Rc::new(
            buckets
                .iter()
                .fold(Members::new(), |all, bucket| all | &bucket.members),
        );
        for (leaf, matching) in column_leaves(group, ranks, buckets) {
            values.push((
                leaf,
                RelatedValue {
                    matching,
                    with_rows: Some(with_rows.clone()),
                },
            ));
        }
    }
    values
}

/// The value of each condition of a window scan (by leaf), from one
/// sorted pass over its related rows (`compile::windows`): the records
/// where it holds, and those with rows in some window of the scan.
fn window_scan_values(plan: &Plan, scan: &WindowScan) -> Vec<(usize, RelatedValue)> {
    let ranks = optional_value::<Vec<i64>>(&scan.ranks_sql(), &[])
        .unwrap_or_else(|| error!("segments: a window scan ranked no windows"));
    let (position, join) = plan.entity.position_sql("g.key");
    let sql = scan.scan_sql(&position, &join);
    let sums = scan.sums.len();
    let mut pass = WindowPass::new(scan, &ranks);
    let mut values = vec![None; sums];
    for_each_row(&sql, WINDOW_ROWS_PER_FETCH, |row| {
        // A row without a key belongs to no record.
        let Some(position) = spi(row.get::<i64>(1)) else {
            return true;
        };
        let bucket = spi(row.get::<i32>(2)).unwrap_or(0);
        let mask = spi(row.get::<i64>(3)).unwrap_or(0);
        for (i, value) in values.iter_mut().enumerate() {
            *value = spi(row.get::<i64>(4 + i));
        }
        pass.push(position, bucket, mask, &values);
        true
    });
    let (leaves, with_rows) = pass.finish();
    let with_rows = Rc::new(with_rows);
    leaves
        .into_iter()
        .map(|(leaf, matching)| {
            (
                leaf,
                RelatedValue {
                    matching,
                    with_rows: Some(with_rows.clone()),
                },
            )
        })
        .collect()
}

/// The members of each funnel of a funnel scan (by leaf), from one pass
/// over its related rows sorted by record and time (`compile::funnels`).
fn funnel_scan_values(plan: &Plan, scan: &FunnelScan) -> Vec<(usize, RelatedValue)> {
    let (ranks, now) = Spi::connect(|client| {
        let row = spi(client.select(&scan.ranks_sql(), None, &[])).first();
        (
            spi(row.get::<Vec<i64>>(1)).unwrap_or_default(),
            spi(row.get::<i64>(2)).unwrap_or(i64::MAX),
        )
    });
    let (position, join) = plan.entity.position_sql("g.key");
    let sql = scan.scan_sql(&position, &join);
    let (gaps, columns) = (scan.gaps.len(), scan.columns.len());
    // Deciding a bot's record (thousands of rows) takes a while between
    // two fetches: a cancel is seen there too.
    let mut pass = FunnelPass::new(scan, &ranks, now).checking_interrupts(|| {
        pgrx::check_for_interrupts!();
    });
    let mut gap_values = vec![None; gaps];
    let mut column_values = vec![None; columns];
    let mut complete = true;
    for_each_row(&sql, WINDOW_ROWS_PER_FETCH, |row| {
        let (Some(position), Some(time)) = (spi(row.get::<i64>(1)), spi(row.get::<i64>(3))) else {
            return true;
        };
        for (i, value) in gap_values.iter_mut().enumerate() {
            *value = spi(row.get::<i64>(5 + i));
        }
        for (i, value) in column_values.iter_mut().enumerate() {
            *value = spi(row.get::<i64>(5 + gaps + i));
        }
        complete = pass.push(
            position,
            FunnelRow {
                bucket: spi(row.get::<i32>(2)).unwrap_or(0),
                time,
                mask: spi(row.get::<i64>(4)).unwrap_or(0),
                gaps: &gap_values,
                columns: &column_values,
            },
        );
        complete
    });
    if !complete {
        // A record with too many rows: each funnel runs its own query.
        return Vec::new();
    }
    pass.finish()
        .into_iter()
        .map(|(leaf, matching)| {
            (
                leaf,
                RelatedValue {
                    matching,
                    with_rows: None,
                },
            )
        })
        .collect()
}

/// An entity with at least this many rows (the planner's estimate) has
/// its related aggregates and traits grouped by sorting, not hashing.
const SORTED_GROUPING_MIN_ROWS: f64 = 100_000.0;

/// Whether the plan's aggregate leaves group by sorting: a whole refresh
/// (not one restricted to a few changed keys) of an entity with many
/// records, whose `GROUP BY` has as many groups
/// (`pg::sandbox::grouping_by_sort` says why).
pub fn sorts_groups(plan: &Plan) -> bool {
    plan.restriction.is_none() && has_many_records(&plan.entity)
}

/// Whether `entity` has at least `SORTED_GROUPING_MIN_ROWS` records by the
/// planner's estimate.
pub fn has_many_records(entity: &segments_core::catalog::Entity) -> bool {
    crate::pg::catalog::estimated_rows(&entity.table.relation_sql) >= SORTED_GROUPING_MIN_ROWS
}

/// Runs every query of the plan except segment references. (No row limit
/// is given to SPI: Postgres runs a query with a limit without parallel
/// workers, and these scans are the bulk of a refresh.)
pub fn compute_leaves(plan: &Plan) -> LeafValues {
    compute_leaves_knowing(plan, &HashMap::new())
}

/// `compute_leaves`, with the values of some related leaves given by the
/// caller instead of queried (live apply keeps them between applications).
pub fn compute_leaves_knowing(plan: &Plan, known: &HashMap<usize, RelatedValue>) -> LeafValues {
    sync_dictionary(plan);
    if plan
        .leaves
        .iter()
        .map(|leaf| leaf.sql().len())
        .sum::<usize>()
        > JIT_MAX_SQL
    {
        crate::pg::sandbox::without_jit();
    }
    let mut leaves = vec![Members::new(); plan.leaves.len()];
    let filters = plan.filter_leaves();
    let mut all_rows = None;
    let chunks: Vec<&[usize]> = match (filters.is_empty(), plan.needs_all_rows) {
        (true, false) => vec![],
        (true, true) => vec![&[]],
        (false, _) => filters.chunks(FILTERS_PER_SCAN).collect(),
    };
    Spi::connect(|client| {
        for chunk in chunks {
            let sql = plan.entity_scan_sql(chunk);
            let table = spi(client.select(&sql, None, &[]));
            let row = table.first();
            let mut first_filter = 1;
            if plan.needs_all_rows {
                if all_rows.is_none() {
                    all_rows = Some(bitmap_of(spi(row.get::<Vec<u8>>(1))));
                }
                first_filter = 2;
            }
            for (column, &leaf) in chunk.iter().enumerate() {
                leaves[leaf] = bitmap_of(spi(row.get::<Vec<u8>>(column + first_filter)));
            }
        }
    });
    let mut scanned: HashMap<usize, RelatedValue> = HashMap::new();
    let mut in_sources = std::collections::HashSet::new();
    for source in &plan.trait_sources {
        in_sources.extend(source.groups.iter().copied());
        let groups = || source.groups.iter().map(|&g| &plan.column_groups[g]);
        if groups().all(|g| g.tests.iter().all(|(leaf, _, _)| known.contains_key(leaf))) {
            continue;
        }
        // Grouped by sorting, as the traits' own queries are.
        let values = if sorts_groups(plan) {
            crate::pg::sandbox::grouping_by_sort(|| trait_source_values(plan, source))
        } else {
            trait_source_values(plan, source)
        };
        scanned.extend(values);
    }
    let mut late = LateLeaves::default();
    for (g, group) in plan.column_groups.iter().enumerate() {
        if in_sources.contains(&g) {
            continue;
        }
        if group.rows.is_none() {
            let buckets = column_group_buckets(plan, group);
            late.keep(buckets, group.tests.iter().map(|(leaf, _, _)| *leaf));
            continue;
        }
        if group
            .tests
            .iter()
            .all(|(leaf, _, _)| known.contains_key(leaf))
        {
            continue;
        }
        // A group of trait conditions groups the related rows by record
        // first: sorted, as for the traits' own queries.
        let (values, with_rows) = if sorts_groups(plan) {
            crate::pg::sandbox::grouping_by_sort(|| column_group_leaves(plan, group))
        } else {
            column_group_leaves(plan, group)
        };
        let with_rows = with_rows.map(Rc::new);
        for (leaf, members) in values {
            match &with_rows {
                // Trait conditions: records without rows are added as for
                // any related value.
                Some(with_rows) => {
                    scanned.insert(
                        leaf,
                        RelatedValue {
                            matching: members,
                            with_rows: Some(with_rows.clone()),
                        },
                    );
                }
                None => leaves[leaf] = members,
            }
        }
    }
    for scan in &plan.window_scans {
        if scan.leaves().all(|leaf| known.contains_key(&leaf)) {
            continue;
        }
        scanned.extend(crate::pg::sandbox::sorting_in_memory(|| {
            window_scan_values(plan, scan)
        }));
    }
    for scan in &plan.funnel_scans {
        if scan.leaves().all(|leaf| known.contains_key(&leaf)) {
            continue;
        }
        scanned.extend(crate::pg::sandbox::sorting_in_memory(|| {
            funnel_scan_values(plan, scan)
        }));
    }
    let all_rows = all_rows.unwrap_or_default();
    let sorted = sorts_groups(plan);
    // Leaves sharing one query (conditions on traits of one table) run it once.
    let mut queries = RelatedQueries::default();
    for (i, leaf) in plan.leaves.iter().enumerate() {
        // A scanned value moves into its leaf: a copy would hold every
        // scanned condition twice at the refresh's peak.
        let value = known
            .get(&i)
            .cloned()
            .or_else(|| scanned.remove(&i))
            .or_else(|| queries.value(leaf, sorted));
        let Some(RelatedValue {
            mut matching,
            with_rows,
        }) = value
        else {
            continue;
        };
        if let (
            Leaf::Aggregate {
                empty_matches: true,
                ..
            },
            Some(with_rows),
        ) = (leaf, with_rows)
        {
            matching |= &all_rows - &*with_rows;
        }
        leaves[i] = matching;
    }
    let universe = plan.needs_all_rows.then(|| all_rows.clone());
    let mut values = LeafValues {
        all_rows,
        universe,
        leaves,
        late,
    };
    if let Some(eligible) = &plan.eligible {
        let reading = eligible.leaves();
        for &leaf in &reading {
            fill_late_leaf(plan, &mut values, &HashMap::new(), leaf, Some(&reading));
        }
        values.universe =
            Some(evaluate(eligible, &values.leaves, &values.all_rows) & &values.all_rows);
        for leaf in reading {
            values.late.release(leaf, &mut values.leaves);
        }
    }
    values
}

/// The stored membership of a segment (empty before its first refresh).
pub fn stored_members(segment_id: i64) -> Members {
    let bytes = optional_value::<Vec<u8>>(
        "SELECT members FROM segments.membership WHERE segment_id = $1",
        &[segment_id.into()],
    );
    if bytes.is_none() {
        crate::engine::citus::refuse_on_worker("member_positions");
    }
    bitmap_of(bytes)
}

thread_local! {
    /// Deserialized memberships by segment, with the version (the
    /// membership row's xmin and ctid) they were read at: a refresh writes a
    /// new row version, so a stale entry is never used, in any snapshot.
    static MEMBERS_CACHE: std::cell::RefCell<HashMap<i64, (String, std::rc::Rc<Members>)>> =
        std::cell::RefCell::new(HashMap::new());
}

const MEMBERS_CACHE_SIZE: usize = 64;

/// The stored membership of a segment as of the current snapshot, from a
/// per-backend cache when its row version has not changed. `version` is
/// the row's `xmin::text || ctid::text`, None when there is no row.
pub fn cached_members(segment_id: i64, version: Option<String>) -> std::rc::Rc<Members> {
    let Some(version) = version else {
        return std::rc::Rc::new(Members::new());
    };
    let hit = MEMBERS_CACHE.with(|cache| {
        cache
            .borrow()
            .get(&segment_id)
            .filter(|(v, _)| *v == version)
            .map(|(_, m)| m.clone())
    });
    if let Some(members) = hit {
        return members;
    }
    let members = std::rc::Rc::new(stored_members(segment_id));
    MEMBERS_CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.len() >= MEMBERS_CACHE_SIZE {
            cache.clear();
        }
        cache.insert(segment_id, (version, members.clone()));
    });
    members
}

/// (position, key as text) of the given positions of an entity: integer
/// keys are their positions; dictionary keys come from segments.entity_key.
pub fn keys_at(entity: &str, positions: &Members) -> Vec<(u64, String)> {
    let dictionary = optional_value::<String>(
        "SELECT key_kind FROM segments.entity WHERE name = $1",
        &[entity.into()],
    )
    .as_deref()
        == Some("dictionary");
    if !dictionary {
        return positions
            .iter()
            .map(|p| (p, segments_core::bitmap::key_of(p).to_string()))
            .collect();
    }
    let wanted: Vec<i64> = positions.iter().map(|p| p as i64).collect();
    Spi::connect(|client| {
        spi(client.select(
            "SELECT position, key FROM segments.entity_key WHERE entity = $1 AND position = ANY ($2) ORDER BY position",
            None,
            &[entity.into(), wanted.into()],
        ))
        .map(|row| (required::<i64>(&row, 1) as u64, required::<String>(&row, 2)))
        .collect()
    })
}

/// The current row version of a segment's membership.
pub fn membership_version(segment_id: i64) -> Option<String> {
    optional_value::<String>(
        "SELECT xmin::text || ctid::text FROM segments.membership WHERE segment_id = $1",
        &[segment_id.into()],
    )
}

/// Fills every late leaf, keeping them all: for one evaluation of the
/// whole plan.
pub fn fill_late_leaves(plan: &Plan, values: &mut LeafValues, fresh: &HashMap<i64, Members>) {
    for i in 0..plan.leaves.len() {
        fill_late_leaf(plan, values, fresh, i, None);
    }
}

/// Fills leaf `i` if it is late: a segment leaf from `fresh` when that
/// segment was just computed in the same refresh, else from its stored
/// membership; a column comparison from its group's buckets
/// (`LateLeaves::fill`, which may release others that `reading` does not
/// read).
pub fn fill_late_leaf(
    plan: &Plan,
    values: &mut LeafValues,
    fresh: &HashMap<i64, Members>,
    i: usize,
    reading: Option<&[usize]>,
) {
    if let Leaf::Segment(id) = &plan.leaves[i] {
        values.leaves[i] = match fresh.get(id) {
            Some(members) => members.clone(),
            None => stored_members(*id),
        };
    } else {
        values.late.fill(i, reading, &mut values.leaves);
    }
}

/// The members of one compiled segment and the counts of its rules.
pub fn evaluate_segment(
    segment: &CompiledSegment,
    values: &LeafValues,
) -> (Members, Vec<RuleCount>) {
    let mut counts = Vec::new();
    let members = evaluate_rules(
        &segment.rules,
        &values.leaves,
        &values.all_rows,
        values.universe.as_ref(),
        &mut counts,
    );
    (members, counts)
}
