//! Storing what a run decided: the membership (`segments.membership`),
//! the segment's status, the run record (`segments.refresh_run`), who
//! entered and exited (`segments.membership_change`), the NOTIFY, and then
//! `after_change`, the one step every consumer of membership changes plugs
//! into. Refresh and live apply both store through here, so a membership
//! is always written the same way.
//!
//! Also the related values live apply keeps between runs
//! (`segments.related_state`), which a full refresh forgets.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::spi::Spi;
use pgrx::JsonB;

use segments_core::bitmap::{deserialize, serialize, Members, RuleCount};

use crate::engine::evaluate::{keys_at, RelatedValue};
use crate::engine::run::{Outcome, RunCause, RunStatus, Target};
use crate::pg::catalog::{legacy_schema, schema_version};
use crate::pg::error::Failure;
use crate::pg::spi::{optional_value, spi};
use crate::pg::subtransaction::in_subtransaction;

/// What an evaluation decided about one segment's membership.
pub enum Evaluated<'a> {
    /// Every row was evaluated (a refresh): these are the members, the rule
    /// counts are known, and the segment is no longer due for computation.
    Whole {
        members: Members,
        counts: &'a [RuleCount],
    },
    /// Only the `changed` positions were evaluated (a live application):
    /// `subset` are those of them that belong. Rule counts describe a whole
    /// evaluation, so they are cleared until the next one, and a segment
    /// due for computation stays due.
    Part {
        changed: &'a Members,
        subset: Members,
    },
}

/// One run being recorded: what started it, when, and (live apply) how
/// many keys it examined.
pub struct Run {
    pub cause: RunCause,
    pub started_at: TimestampWithTimeZone,
    pub keys_examined: Option<i64>,
}

impl Run {
    /// A run of `cause` starting now (`clock_timestamp()`).
    pub fn starting(cause: RunCause, keys_examined: Option<i64>) -> Run {
        let started_at = spi(Spi::get_one::<TimestampWithTimeZone>(
            "SELECT pg_catalog.clock_timestamp()",
        ))
        .expect("clock_timestamp() is never NULL");
        Run {
            cause,
            started_at,
            keys_examined,
        }
    }
}

/// The membership changes of one refresh or live application, gathered
/// for `after_change`.
#[derive(Default)]
pub struct Changes {
    /// Every segment that succeeded (or those `Keep` names), with its
    /// members now. Later segments of the same run that reference one read
    /// it from here.
    pub members: HashMap<i64, Members>,
    /// Who entered each segment that succeeded (or those `Keep` names).
    pub entered: HashMap<i64, Members>,
    /// Who exited each segment that succeeded (or those `Keep` names).
    pub exited: HashMap<i64, Members>,
    /// The segments whose membership row was written.
    pub written: Vec<i64>,
    /// What a refresh keeps in memory; None keeps everything (live apply,
    /// whose changes are small).
    pub keep: Option<Keep>,
}

/// The segments whose bitmaps a refresh keeps until it ends: a first
/// refresh of 10,000 segments would otherwise hold every membership twice
/// (as members and as entered).
#[derive(Default)]
pub struct Keep {
    /// Segments that later segments of the run reference.
    pub members: HashSet<i64>,
    /// Segments with a consumer of their entered and exited records
    /// (`consumers`); None: every segment.
    pub changes: Option<HashSet<i64>>,
}

impl Changes {
    /// Gathers what `after_change` and the run's later segments need, and
    /// nothing more.
    pub fn keeping(keep: Keep) -> Changes {
        Changes {
            keep: Some(keep),
            ..Changes::default()
        }
    }

    /// Records one segment's success.
    fn add(&mut self, segment: i64, members: Members, entered: Members, exited: Members) {
        let (keep_members, keep_changes) = match &self.keep {
            None => (true, true),
            Some(keep) => (
                keep.members.contains(&segment),
                keep.changes.as_ref().is_none_or(|c| c.contains(&segment)),
            ),
        };
        if keep_changes {
            self.entered.insert(segment, entered);
            self.exited.insert(segment, exited);
        }
        if keep_members {
            self.members.insert(segment, members);
        }
    }
}

/// The segments whose entered and exited records `after_change` uses:
/// those connected to a sequence and those in a feed. Both connecting a
/// segment and starting a feed wait for the transactions refreshing it (a
/// share lock on its row), so a consumer added while a refresh runs sees
/// that refresh's memberships as its start. None where they cannot be
/// read: a library newer than the installed schema (before `ALTER
/// EXTENSION segments UPDATE`) may not find the columns it reads, and
/// then every segment's changes are kept, as `after_change` expects.
pub fn consumers() -> Option<HashSet<i64>> {
    in_subtransaction(AssertUnwindSafe(|| {
        crate::sequence::connected_segment_ids()
            .into_iter()
            .chain(crate::activation::feed::fed_segments())
            .collect()
    }))
    .ok()
}

/// Stores a successful evaluation of `target`: membership, status, run
/// record, entered and exited rows and NOTIFY; adds it to `changes`.
/// `elapsed` gives the run's duration once the membership is written.
pub fn store_success(
    target: &Target,
    evaluated: Evaluated,
    run: &Run,
    elapsed: impl FnOnce() -> Duration,
    changes: &mut Changes,
) -> Outcome {
    let previous = optional_value::<Vec<u8>>(
        "SELECT members FROM segments.membership WHERE segment_id OPERATOR(pg_catalog.=) $1",
        &[target.id.into()],
    );
    let (new, old, counts) = match evaluated {
        // A whole evaluation replaces even an unreadable membership.
        Evaluated::Whole { members, counts } => (
            members,
            previous
                .as_deref()
                .map(|b| deserialize(b).unwrap_or_default())
                .unwrap_or_default(),
            Some(counts),
        ),
        // A part is patched into the old membership, which must be sound.
        Evaluated::Part { changed, subset } => {
            let old = match previous.as_deref() {
                Some(bytes) => deserialize(bytes).unwrap_or_else(|e| crate::pg::error::corrupt(e)),
                None => {
                    crate::engine::citus::refuse_on_worker("member_positions");
                    Members::new()
                }
            };
            ((&old - changed) | (subset & changed), old, None)
        }
    };
    let whole = counts.is_some();
    let first = whole && previous.is_none();
    let entered = &new - &old;
    let exited = &old - &new;
    let count = new.len() as i64;
    if whole || !entered.is_empty() || !exited.is_empty() {
        write_membership(target.id, &new, counts);
        changes.written.push(target.id);
    }
    let mut outcome = Outcome::succeeded(target.id, count, entered.len(), exited.len(), elapsed());
    outcome.run_id = record_run(target.id, run, &outcome);
    record_changes(target, outcome.run_id, &entered, &exited, first);
    changes.add(target.id, new, entered, exited);
    outcome
}

/// Writes a segment's membership and its status after a success. Rule
/// counts are given for a whole evaluation only (a whole evaluation also
/// clears `needs_refresh`).
fn write_membership(segment: i64, members: &Members, counts: Option<&[RuleCount]>) {
    let count = members.len() as i64;
    spi(Spi::run_with_args(
        "INSERT INTO segments.membership (segment_id, members, member_count, refreshed_at) \
         VALUES ($1, $2, $3, pg_catalog.now()) \
         ON CONFLICT (segment_id) DO UPDATE SET members = EXCLUDED.members, \
         member_count = EXCLUDED.member_count, refreshed_at = EXCLUDED.refreshed_at",
        &[segment.into(), serialize(members).into(), count.into()],
    ));
    let counts = counts.map(|c| JsonB(serde_json::to_value(c).expect("rule counts serialize")));
    let whole = counts.is_some();
    // A 0.1.0 schema (before ALTER EXTENSION UPDATE) has no such column.
    let failures = if legacy_schema() {
        ""
    } else {
        ", consecutive_failures = 0"
    };
    spi(Spi::run_with_args(
        &format!(
            "UPDATE segments.segment SET status = $4, member_count = $2, \
             last_refreshed_at = pg_catalog.now(), last_error = NULL, rule_counts = $3, \
             needs_refresh = needs_refresh AND NOT $5{failures} WHERE id OPERATOR(pg_catalog.=) $1"
        ),
        &[
            segment.into(),
            count.into(),
            counts.into(),
            RunStatus::Succeeded.as_str().into(),
            whole.into(),
        ],
    ));
}

/// Gives a new segment (`copy`) the membership `source` has now (`count`
/// members), as `freeze` does.
pub fn copy_membership(source: i64, copy: i64, count: i64) {
    spi(Spi::run_with_args(
        "INSERT INTO segments.membership (segment_id, members, member_count, refreshed_at) \
         SELECT $1, members, member_count, pg_catalog.now() FROM segments.membership \
          WHERE segment_id OPERATOR(pg_catalog.=) $2",
        &[copy.into(), source.into()],
    ));
    spi(Spi::run_with_args(
        "UPDATE segments.segment SET status = $3, member_count = $2, \
         last_refreshed_at = pg_catalog.now(), needs_refresh = false WHERE id OPERATOR(pg_catalog.=) $1",
        &[
            copy.into(),
            count.into(),
            RunStatus::Succeeded.as_str().into(),
        ],
    ));
}

/// Records a failed run of `segment`: it keeps its membership, its status
/// and error say why, and the failure counts toward its backoff.
pub fn store_failure(segment: i64, failure: Failure, run: &Run, duration: Duration) -> Outcome {
    store_status(segment, RunStatus::Failed, Some(&failure.message));
    let mut outcome = Outcome::failed(segment, failure, duration);
    outcome.run_id = record_run(segment, run, &outcome);
    outcome
}

/// Records that an inactive segment came due and was not evaluated.
pub fn store_skipped(segment: i64, run: &Run, duration: Duration) -> Outcome {
    store_status(segment, RunStatus::Skipped, None);
    let mut outcome = Outcome::skipped(segment, duration);
    outcome.run_id = record_run(segment, run, &outcome);
    outcome
}

/// Stores a segment's status after a run that wrote no membership, and
/// the error of a failed one.
fn store_status(segment: i64, status: RunStatus, error: Option<&str>) {
    let failures = if legacy_schema() {
        ""
    } else {
        ", consecutive_failures = consecutive_failures + CASE WHEN $2 OPERATOR(pg_catalog.=) $4 THEN 1 ELSE 0 END"
    };
    spi(Spi::run_with_args(
        &format!(
            "UPDATE segments.segment SET status = $2, last_error = coalesce($3, last_error), \
             needs_refresh = needs_refresh AND $2 OPERATOR(pg_catalog.<>) $4{failures} \
             WHERE id OPERATOR(pg_catalog.=) $1"
        ),
        &[
            segment.into(),
            status.as_str().into(),
            error.into(),
            RunStatus::Failed.as_str().into(),
        ],
    ));
}

/// Records one run of a segment in the history; returns its id.
fn record_run(segment: i64, run: &Run, outcome: &Outcome) -> i64 {
    // A 0.1.0 schema (before ALTER EXTENSION UPDATE) has neither column.
    let legacy = legacy_schema();
    // peak_memory came with 0.3.0.
    let with_peak = !legacy && schema_version() != "0.2.0";
    let (added_columns, added_values) = match (legacy, with_peak) {
        (true, _) => ("", ""),
        (false, false) => (", keys_examined, error_code", ", $9, $10"),
        (false, true) => (", keys_examined, error_code, peak_memory", ", $9, $10, $11"),
    };
    let mut args: Vec<pgrx::datum::DatumWithOid> = vec![
        segment.into(),
        run.cause.as_str().into(),
        run.started_at.into(),
        outcome.status.as_str().into(),
        outcome.member_count.into(),
        outcome.entered.into(),
        outcome.exited.into(),
        outcome.error.as_ref().map(|f| f.message.clone()).into(),
    ];
    if !legacy {
        args.push(run.keys_examined.into());
        args.push(outcome.error.as_ref().map(|f| f.sqlstate.clone()).into());
    }
    if with_peak {
        args.push((crate::engine::memory::peak() as i64).into());
    }
    let id = Spi::get_one_with_args::<i64>(
        &format!(
            "INSERT INTO segments.refresh_run (segment_id, trigger, started_at, finished_at, status, \
             member_count, entered, exited, error{added_columns}) \
             VALUES ($1, $2, $3, pg_catalog.clock_timestamp(), $4, $5, $6, $7, $8{added_values}) RETURNING id"
        ),
        &args,
    );
    spi(id).expect("INSERT ... RETURNING returns a row")
}

/// Records who entered and who exited, and tells listeners. The first
/// refresh of a segment records its count only: everyone entered.
fn record_changes(target: &Target, run: i64, entered: &Members, exited: &Members, first: bool) {
    if entered.is_empty() && exited.is_empty() {
        return;
    }
    if !first {
        for (change, positions) in [("entered", entered), ("exited", exited)] {
            if positions.is_empty() {
                continue;
            }
            let keys: Vec<String> = keys_at(&target.entity, positions)
                .into_iter()
                .map(|(_, k)| k)
                .collect();
            spi(Spi::run_with_args(
                "INSERT INTO segments.membership_change (segment_id, run_id, key, change, at) \
                 SELECT $1, $2, k, $3, pg_catalog.now() FROM pg_catalog.unnest($4::pg_catalog.text[]) AS k",
                &[target.id.into(), run.into(), change.into(), keys.into()],
            ));
        }
    }
    let payload = serde_json::json!({
        "segment": target.id, "run": run, "entered": entered.len(), "exited": exited.len()
    });
    spi(Spi::run_with_args(
        "SELECT pg_catalog.pg_notify('segments', $1)",
        &[payload.to_string().into()],
    ));
}

/// What follows a run's memberships, in order: sales sequences connect the
/// records that entered, exports of written segments are rewritten, and
/// change feeds record who entered and exited, last, because that takes
/// the feeds' clock until the transaction commits (`activation::feed`).
/// Sequences and exports fail alone: a warning, or recorded on the export,
/// never undoing the memberships; a feed that cannot record its changes
/// fails the run, since a feed never skips a committed change. (Splits
/// and priority lists need no step: they are read from the memberships.)
pub fn after_change(changes: &Changes) {
    crate::engine::progress::phase("sequences");
    if let Err(failure) = in_subtransaction(AssertUnwindSafe(|| {
        crate::sequence::assign(&changes.entered, &changes.members)
    })) {
        warning!(
            "segments: connecting entered records to sequences failed: {}",
            failure.message
        );
    }
    crate::engine::progress::phase("exports");
    for export in crate::export::exports_of(&changes.written) {
        crate::export::rewrite_recorded(export);
    }
    crate::engine::progress::phase("feeds");
    crate::activation::feed::record(&changes.entered, &changes.exited);
}

/// A related value kept by an earlier live application, if any.
pub fn kept_related_value(
    owner: pg_sys::Oid,
    entity: &str,
    identity: &str,
) -> Option<RelatedValue> {
    Spi::connect(|client| {
        let table = spi(client.select(
            "SELECT matching, with_rows FROM segments.related_state WHERE owner OPERATOR(pg_catalog.=) $1 \
               AND entity OPERATOR(pg_catalog.=) $2 AND leaf OPERATOR(pg_catalog.=) pg_catalog.md5($3)",
            None,
            &[owner.into(), entity.into(), identity.into()],
        ));
        let row = table.into_iter().next()?;
        let matching = spi(row.get::<Vec<u8>>(1))?;
        let with_rows = spi(row.get::<Vec<u8>>(2));
        let read =
            |bytes: &[u8]| deserialize(bytes).unwrap_or_else(|e| crate::pg::error::corrupt(e));
        Some(RelatedValue {
            matching: read(&matching),
            with_rows: with_rows.as_deref().map(|b| std::rc::Rc::new(read(b))),
        })
    })
}

/// Keeps a related value for later live applications.
pub fn keep_related_value(owner: pg_sys::Oid, entity: &str, identity: &str, value: &RelatedValue) {
    spi(Spi::run_with_args(
        "INSERT INTO segments.related_state (owner, entity, leaf, matching, with_rows) \
         VALUES ($1, $2, pg_catalog.md5($3), $4, $5) ON CONFLICT (owner, entity, leaf) DO UPDATE \
         SET matching = EXCLUDED.matching, with_rows = EXCLUDED.with_rows, computed_at = pg_catalog.now()",
        &[
            owner.into(),
            entity.into(),
            identity.into(),
            serialize(&value.matching).into(),
            value.with_rows.as_deref().map(serialize).into(),
        ],
    ));
}

/// Forgets the related values of an owner's live segments of `entity`
/// other than `identities` (those its live segments still use).
pub fn forget_related_values_except(owner: pg_sys::Oid, entity: &str, identities: Vec<String>) {
    spi(Spi::run_with_args(
        "DELETE FROM segments.related_state WHERE owner OPERATOR(pg_catalog.=) $1 AND entity OPERATOR(pg_catalog.=) $2 \
           AND leaf OPERATOR(pg_catalog.<>) ALL (SELECT pg_catalog.md5(l) FROM pg_catalog.unnest($3::pg_catalog.text[]) l)",
        &[owner.into(), entity.into(), identities.into()],
    ));
}

/// Forgets the related values kept for the live segments of these
/// entities: a full refresh evaluates them anew (relative windows slide).
pub fn forget_related_values(entities: &[String]) {
    spi(Spi::run_with_args(
        "DELETE FROM segments.related_state WHERE entity OPERATOR(pg_catalog.=) ANY ($1)",
        &[entities.to_vec().into()],
    ));
}

/// Forgets the related values of entities without active live segments.
pub fn forget_unused_related_values() {
    spi(Spi::run(
        "DELETE FROM segments.related_state WHERE entity OPERATOR(pg_catalog.<>) ALL (SELECT s.entity FROM segments.segment s \
          WHERE s.schedule OPERATOR(pg_catalog.=) 'live' AND s.state OPERATOR(pg_catalog.=) 'active')",
    ));
}
