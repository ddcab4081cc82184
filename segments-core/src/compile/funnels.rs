//! Many funnels (`sequence` conditions) over one related table, computed
//! from one pass of its rows sorted by record and time instead of one
//! query of nested `EXISTS` each.
//!
//! Real lists hold funnels of their own: viewed then added within 3 days
//! and not bought within 2, over the last 40 days; the same over 25 days
//! and 5... Each as a query reads the table and probes it again for every
//! step. A *funnel scan* reads the rows from the earliest window's start to
//! now once, ordered by (record, time), each row with:
//!
//! - its bucket among the distinct window starts (as in `windows`);
//! - its time and, for each distinct step gap (`"within"` of a step), its
//!   time plus that gap, both as microseconds computed by PostgreSQL (so
//!   interval arithmetic, time zones included, is PostgreSQL's);
//! - a bit per distinct step condition (`CASE` per condition);
//! - the integer columns steps compare with the previous step's row.
//!
//! The pass in Rust (`FunnelPass`) holds one record's rows and decides
//! each funnel by the rows' order, as the `EXISTS` chain does: a step's
//! row strictly later than the previous one, within its gap, inside the
//! window (an absent last step: its gap over by now and no such row in
//! it). A funnel takes part only where this is exactly its SQL: a window
//! ending now, steps whose conditions are plain row conditions plus
//! equalities of integer columns with the previous step's row, no `where`
//! on the sequence itself. Deciding a record is quadratic in its rows at
//! worst (a bot's thousands of events): the pass calls its interrupt check
//! as it goes (`checking_interrupts`), so a cancel stays prompt; only a
//! record with more than `MAX_ROWS_PER_RECORD` rows, which the pass would
//! hold in memory, makes it give up (its funnels then run their own
//! queries).

use crate::bitmap::{position_of, Members};

use super::gather::Gather;
use super::windows::{mask_sql, ScanSource};

/// The most distinct step conditions one pass tells apart.
const MAX_CONDITIONS_PER_SCAN: usize = 62;

/// The most rows of one record a pass holds (a few MB) to decide funnels
/// over. A record with more makes the pass give up, and its funnels run
/// their own queries. (The sample data's busiest customer has 1,521
/// product events in 60 days: a cap of 1,000 sent every funnel of the
/// bench's list to its own query, 10x slower.)
pub const MAX_ROWS_PER_RECORD: usize = 100_000;

/// Steps of deciding between two interrupt checks.
const STEPS_PER_CHECK: u64 = 4096;

/// One step of a funnel as the planner found it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CandidateStep {
    /// The row condition (SQL on `r`), without its step references.
    pub condition: String,
    /// Its `within` after the previous step, as an interval SQL.
    pub gap: Option<String>,
    pub absent: bool,
    /// (column of this row, column of the previous step's row), both
    /// integer, as SQL on `r`: they must be equal.
    pub same: Vec<(String, String)>,
}

/// A funnel a funnel scan can compute.
#[derive(Debug, Clone)]
pub struct FunnelCandidate {
    pub source: ScanSource,
    /// The window's start, as SQL of the time column's type.
    pub start: String,
    pub steps: Vec<CandidateStep>,
}

/// One step of a planned funnel: indexes into the scan's lists.
#[derive(Debug, Clone, PartialEq)]
struct PlannedStep {
    condition: usize,
    gap: Option<usize>,
    absent: bool,
    same: Vec<(usize, usize)>,
}

/// One funnel of a funnel scan.
#[derive(Debug, Clone, PartialEq)]
pub struct Funnel {
    /// The plan's leaf it computes.
    pub leaf: usize,
    start: usize,
    steps: Vec<PlannedStep>,
}

/// Funnels over one related table computed by one sorted pass.
#[derive(Debug, Clone, PartialEq)]
pub struct FunnelScan {
    pub source: ScanSource,
    pub starts: Vec<String>,
    pub conditions: Vec<String>,
    pub gaps: Vec<String>,
    pub columns: Vec<String>,
    pub funnels: Vec<Funnel>,
}

/// `value`'s index in `list`, added at the end when new.
fn index_of(list: &mut Vec<String>, value: &str) -> usize {
    match list.iter().position(|v| v == value) {
        Some(i) => i,
        None => {
            list.push(value.to_string());
            list.len() - 1
        }
    }
}

/// The funnel scans of a plan: per source with at least `min_funnels`
/// candidates; a funnel whose step conditions would pass the scan's
/// `MAX_CONDITIONS_PER_SCAN` keeps its query.
pub fn plan_scans(candidates: &[(usize, &FunnelCandidate)], min_funnels: usize) -> Vec<FunnelScan> {
    let mut scans = Vec::new();
    for (source, group) in ScanSource::group(candidates, |c| &c.source) {
        if group.len() < min_funnels.max(1) {
            continue;
        }
        let mut scan = FunnelScan {
            source: source.clone(),
            starts: Vec::new(),
            conditions: Vec::new(),
            gaps: Vec::new(),
            columns: Vec::new(),
            funnels: Vec::new(),
        };
        for (leaf, candidate) in group {
            let mut conditions = scan.conditions.clone();
            for step in &candidate.steps {
                index_of(&mut conditions, &step.condition);
            }
            if conditions.len() > MAX_CONDITIONS_PER_SCAN {
                continue;
            }
            scan.conditions = conditions;
            let steps = candidate
                .steps
                .iter()
                .map(|step| PlannedStep {
                    condition: index_of(&mut scan.conditions, &step.condition),
                    gap: step.gap.as_deref().map(|g| index_of(&mut scan.gaps, g)),
                    absent: step.absent,
                    same: step
                        .same
                        .iter()
                        .map(|(mine, previous)| {
                            (
                                index_of(&mut scan.columns, mine),
                                index_of(&mut scan.columns, previous),
                            )
                        })
                        .collect(),
                })
                .collect();
            let start = index_of(&mut scan.starts, &candidate.start);
            scan.funnels.push(Funnel { leaf, start, steps });
        }
        if scan.funnels.len() >= min_funnels.max(1) {
            scans.push(scan);
        }
    }
    scans
}

/// A time as microseconds, computed by PostgreSQL.
fn micros(time: &str) -> String {
    format!("(pg_catalog.extract('epoch', {time}) OPERATOR(pg_catalog.*) 1000000)::pg_catalog.int8")
}

impl FunnelScan {
    /// Each start's rank (`ScanSource::ranks_sql`) and now (the windows'
    /// end) in microseconds.
    pub fn ranks_sql(&self) -> String {
        ScanSource::ranks_sql(
            &self.starts,
            &format!(", {}", micros(&format!("({})", self.source.end))),
        )
    }

    /// The pass: (position, bucket, time, mask, time + each gap, each
    /// column) of every row inside some window, by position and time.
    pub fn scan_sql(&self, position: &str, join: &str) -> String {
        let time = &self.source.time;
        let mut columns = vec![
            micros(time),
            mask_sql(self.conditions.iter().map(|c| Some(c.as_str()))),
        ];
        for gap in &self.gaps {
            columns.push(micros(&format!("({time} OPERATOR(pg_catalog.+) {gap})")));
        }
        for column in &self.columns {
            columns.push(format!("({column})::pg_catalog.int8"));
        }
        self.source
            .pass_sql(&self.starts, &columns, (position, join), "1, 3")
    }

    /// The leaves this scan computes.
    pub fn leaves(&self) -> impl Iterator<Item = usize> + '_ {
        self.funnels.iter().map(|f| f.leaf)
    }
}

/// One row of a funnel scan, as `FunnelPass::push` takes it.
pub struct FunnelRow<'a> {
    pub bucket: i32,
    pub time: i64,
    pub mask: i64,
    /// Time plus each gap.
    pub gaps: &'a [Option<i64>],
    pub columns: &'a [Option<i64>],
}

/// The pass over a funnel scan's rows, fed in (position, time) order.
pub struct FunnelPass<'s> {
    scan: &'s FunnelScan,
    ranks: Vec<u32>,
    now: i64,
    current: Option<u64>,
    buckets: Vec<u32>,
    times: Vec<i64>,
    masks: Vec<u64>,
    gaps: Vec<Option<i64>>,
    columns: Vec<Option<i64>>,
    /// Per step, whether the funnel goes on from each row (None: unknown).
    memo: Vec<Option<bool>>,
    /// Each funnel's members (`gather`).
    members: Gather,
    /// Called every `STEPS_PER_CHECK` steps of deciding (a cancel check).
    interrupt: Box<dyn FnMut() + 's>,
    steps: u64,
}

impl<'s> FunnelPass<'s> {
    /// A pass given the starts' ranks and now, in microseconds
    /// (`ranks_sql`).
    pub fn new(scan: &'s FunnelScan, ranks: &[i64], now: i64) -> FunnelPass<'s> {
        FunnelPass {
            scan,
            ranks: ranks.iter().map(|&r| r.max(0) as u32).collect(),
            now,
            current: None,
            buckets: Vec::new(),
            times: Vec::new(),
            masks: Vec::new(),
            gaps: Vec::new(),
            columns: Vec::new(),
            memo: Vec::new(),
            members: Gather::new(scan.funnels.len()),
            interrupt: Box::new(|| {}),
            steps: 0,
        }
    }

    /// This pass, calling `check` as it decides (PostgreSQL's interrupt
    /// check: deciding a bot's record can take a while, between fetches).
    pub fn checking_interrupts(mut self, check: impl FnMut() + 's) -> FunnelPass<'s> {
        self.interrupt = Box::new(check);
        self
    }

    /// Counts a step of deciding; checks for interrupts every so often.
    fn step(&mut self) {
        self.steps += 1;
        if self.steps.is_multiple_of(STEPS_PER_CHECK) {
            (self.interrupt)();
        }
    }

    /// One row of `scan_sql`; false when its record has more than
    /// `MAX_ROWS_PER_RECORD` rows (the pass is then abandoned).
    #[must_use]
    pub fn push(&mut self, position: i64, row: FunnelRow) -> bool {
        let position = position_of(position);
        if self.current != Some(position) {
            self.finish_record();
            self.current = Some(position);
        }
        if self.times.len() >= MAX_ROWS_PER_RECORD {
            return false;
        }
        self.buckets.push(row.bucket.max(0) as u32);
        self.times.push(row.time);
        self.masks.push(row.mask as u64);
        self.gaps.extend_from_slice(row.gaps);
        self.columns.extend_from_slice(row.columns);
        true
    }

    /// The last row a step with a gap may take after row `p` (rows are
    /// in time order, so no later one is within the gap); the last row
    /// when the step has no gap.
    fn last_within(&self, planned: &PlannedStep, p: usize) -> usize {
        let n = self.times.len();
        let Some(g) = planned.gap else {
            return n;
        };
        let Some(end) = self.gaps[p * self.scan.gaps.len() + g] else {
            return p + 1;
        };
        p + 1 + self.times[p + 1..].partition_point(|&t| t <= end)
    }

    /// Whether row `q` meets step `step` of `funnel` after row `p`.
    fn step_row(&self, funnel: &Funnel, step: usize, p: usize, q: usize) -> bool {
        let planned = &funnel.steps[step];
        let (gaps, columns) = (self.scan.gaps.len(), self.scan.columns.len());
        if self.times[q] <= self.times[p] || self.masks[q] & (1 << planned.condition) == 0 {
            return false;
        }
        if let Some(g) = planned.gap {
            match self.gaps[p * gaps + g] {
                Some(end) if self.times[q] <= end => {}
                _ => return false,
            }
        }
        planned.same.iter().all(|&(mine, previous)| {
            match (
                self.columns[q * columns + mine],
                self.columns[p * columns + previous],
            ) {
                (Some(a), Some(b)) => a == b,
                _ => false,
            }
        })
    }

    /// Whether `funnel` goes on from row `p` matching step `step - 1`:
    /// steps `step..` follow it.
    fn goes_on(&mut self, funnel: &Funnel, step: usize, p: usize) -> bool {
        if step == funnel.steps.len() {
            return true;
        }
        let n = self.times.len();
        if let Some(known) = self.memo[step * n + p] {
            return known;
        }
        let planned = &funnel.steps[step];
        let result = if planned.absent {
            // The step's period is over by now, with no such row in it.
            let gap = planned.gap.expect("an absent step has a within");
            let over = self.gaps[p * self.scan.gaps.len() + gap].is_some_and(|end| end <= self.now);
            let mut seen = false;
            if over {
                for q in p + 1..self.last_within(planned, p) {
                    self.step();
                    if self.step_row(funnel, step, p, q) {
                        seen = true;
                        break;
                    }
                }
            }
            over && !seen
        } else {
            let rank = self.ranks.get(funnel.start).copied().unwrap_or(u32::MAX);
            let mut found = false;
            for q in p + 1..self.last_within(planned, p) {
                self.step();
                if self.buckets[q] >= rank
                    && self.step_row(funnel, step, p, q)
                    && self.goes_on(funnel, step + 1, q)
                {
                    found = true;
                    break;
                }
            }
            found
        };
        self.memo[step * n + p] = Some(result);
        result
    }

    /// Decides every funnel for the current record.
    fn finish_record(&mut self) {
        let Some(position) = self.current.take() else {
            return;
        };
        self.members.at(position);
        let n = self.times.len();
        let scan = self.scan;
        for (f, funnel) in scan.funnels.iter().enumerate() {
            let rank = self.ranks.get(funnel.start).copied().unwrap_or(u32::MAX);
            let first = 1u64 << funnel.steps[0].condition;
            self.memo.clear();
            self.memo.resize(funnel.steps.len() * n, None);
            let mut holds = false;
            for p in 0..n {
                self.step();
                if self.buckets[p] >= rank
                    && self.masks[p] & first != 0
                    && self.goes_on(funnel, 1, p)
                {
                    holds = true;
                    break;
                }
            }
            if holds {
                self.members.add(f);
            }
        }
        self.buckets.clear();
        self.times.clear();
        self.masks.clear();
        self.gaps.clear();
        self.columns.clear();
    }

    /// Each funnel's members, by leaf.
    pub fn finish(mut self) -> Vec<(usize, Members)> {
        self.finish_record();
        self.scan
            .funnels
            .iter()
            .map(|f| f.leaf)
            .zip(self.members.finish())
            .collect()
    }
}
