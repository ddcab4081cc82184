//! Change feeds (SPEC 17): who entered and who exited a set of segments,
//! numbered by position, for a connector that sends destinations only what
//! changed and resumes where it stopped.
//!
//! Storage: `segments.feed_batch` keeps one row per fed segment and
//! transaction, with the entered and exited positions as bitmaps; its
//! positions are a range handed out by the one clock `segments.feed_clock`.
//! A row per change would double what a refresh writes; a batch costs one
//! small row however many records changed.
//!
//! Ordering: a writer takes the clock as the last step of its transaction
//! (`record`, from `after_change`) and keeps its row lock until it commits,
//! so positions are handed out in commit order: a reader that sees a
//! position has seen every smaller one, and acknowledging a position never
//! skips a change still to commit. A feed's start (`create_feed`,
//! `reset_feed`) first waits for the transactions changing its segments
//! (a share lock on their rows, which every membership write updates),
//! then takes the clock, so that its snapshot and the changes after it
//! neither overlap nor leave a gap. ARCHITECTURE.md tells the whole story.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;

use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;

use segments_core::bitmap::{deserialize, serialize, Members};

use crate::engine::evaluate::{keys_at, stored_members};
use crate::pg::authorization::{may_read_entity, require_editor};
use crate::pg::error::{Raise, SegmentsError};
use crate::pg::sandbox::privileged;
use crate::pg::spi::{optional_value, required, spi};

/// Whether the schema has feeds (0.3.0 and later).
fn has_feeds() -> bool {
    optional_value::<bool>(
        "SELECT pg_catalog.to_regclass('segments.feed_clock') IS NOT NULL",
        &[],
    )
    .unwrap_or(false)
}

/// Takes the clock (its row lock, kept until commit) and reserves `count`
/// positions; returns the first. `count` 0 only takes it. An UPDATE, not
/// only a lock: a REPEATABLE READ transaction that started before another
/// took the clock fails to serialize instead of missing that one's feed.
fn take_clock(count: i64) -> i64 {
    let last = spi(Spi::get_one_with_args::<i64>(
        "INSERT INTO segments.feed_clock AS c (singleton, last_position) VALUES (true, $1) \
         ON CONFLICT (singleton) DO UPDATE SET last_position = c.last_position OPERATOR(pg_catalog.+) $1 \
         RETURNING last_position",
        &[count.into()],
    ))
    .expect("INSERT ... RETURNING returns a row");
    last - count + 1
}

/// Every segment some feed follows (none before 0.3.0's schema).
pub fn fed_segments() -> Vec<i64> {
    if !has_feeds() {
        return Vec::new();
    }
    optional_value::<Vec<i64>>(
        "SELECT pg_catalog.array_agg(DISTINCT s) FROM segments.feed f, pg_catalog.unnest(f.segments) s",
        &[],
    )
    .unwrap_or_default()
}

/// Records the entered and exited of every fed segment of a run, under
/// the clock (see the module's comment). Runs as the extension.
pub fn record(entered: &HashMap<i64, Members>, exited: &HashMap<i64, Members>) {
    let changed: Vec<i64> = entered
        .iter()
        .filter(|(id, members)| {
            !members.is_empty() || exited.get(id).is_some_and(|e| !e.is_empty())
        })
        .map(|(id, _)| *id)
        .collect();
    if changed.is_empty() || !has_feeds() {
        return;
    }
    // Under READ COMMITTED, a feed created after this check waited for this
    // transaction (it updated these segments' rows) and snapshots its
    // changes: no need for the clock when no feed is seen. Other isolation
    // levels see an older snapshot, so they always take the clock.
    let read_committed = optional_value::<bool>(
        "SELECT pg_catalog.current_setting('transaction_isolation') OPERATOR(pg_catalog.=) 'read committed'",
        &[],
    )
    .unwrap_or(false);
    let fed_sql = "SELECT pg_catalog.array_agg(DISTINCT s ORDER BY s) FROM segments.feed f, pg_catalog.unnest(f.segments) s \
                   WHERE s OPERATOR(pg_catalog.=) ANY ($1)";
    if read_committed && optional_value::<Vec<i64>>(fed_sql, &[changed.clone().into()]).is_none() {
        return;
    }
    take_clock(0);
    let Some(fed) = optional_value::<Vec<i64>>(fed_sql, &[changed.into()]) else {
        return;
    };
    let empty = Members::new();
    let batches: Vec<(i64, &Members, &Members)> = fed
        .iter()
        .map(|id| {
            (
                *id,
                entered.get(id).unwrap_or(&empty),
                exited.get(id).unwrap_or(&empty),
            )
        })
        .filter(|(_, entered, exited)| !entered.is_empty() || !exited.is_empty())
        .collect();
    let total: u64 = batches.iter().map(|(_, e, x)| e.len() + x.len()).sum();
    let mut first = take_clock(total as i64);
    for (segment, entered, exited) in batches {
        let count = (entered.len() + exited.len()) as i64;
        insert_batch(first, count, segment, None, entered, exited);
        first += count;
    }
}

fn insert_batch(
    first: i64,
    count: i64,
    segment: i64,
    feed: Option<i64>,
    entered: &Members,
    exited: &Members,
) {
    spi(Spi::run_with_args(
        "INSERT INTO segments.feed_batch (first_position, count, segment_id, feed_id, entered, exited, at) \
         VALUES ($1, $2, $3, $4, $5, $6, pg_catalog.now())",
        &[
            first.into(),
            count.into(),
            segment.into(),
            feed.into(),
            serialize(entered).into(),
            serialize(exited).into(),
        ],
    ));
}

/// A feed as its functions need it.
struct Feed {
    id: i64,
    name: String,
    entity: String,
    segments: Vec<i64>,
    start: i64,
    acked: i64,
    lost: bool,
}

/// The feed named `name`, after checking that the caller is its owner (a
/// member of the owning role) or an admin.
fn owned_feed(name: &str, what: &str) -> Feed {
    if !has_feeds() {
        SegmentsError::InvalidState(
            "change feeds need the 0.3.0 schema: run ALTER EXTENSION segments UPDATE".into(),
        )
        .raise();
    }
    let found = Spi::connect(|client| {
        let table = spi(client.select(
            "SELECT id, entity, segments, start_position, acked_position, lost_at IS NOT NULL, segments._may_change(owner), owner::pg_catalog.text \
               FROM segments.feed WHERE name OPERATOR(pg_catalog.=) $1",
            None,
            &[name.into()],
        ));
        table.into_iter().next().map(|row| {
            (
                Feed {
                    id: required(&row, 1),
                    name: name.to_string(),
                    entity: required(&row, 2),
                    segments: required(&row, 3),
                    start: required(&row, 4),
                    acked: required(&row, 5),
                    lost: required(&row, 6),
                },
                required::<bool>(&row, 7),
                required::<String>(&row, 8),
            )
        })
    });
    let Some((feed, allowed, owner)) = found else {
        SegmentsError::UndefinedObject(format!("feed \"{name}\" does not exist")).raise()
    };
    if !allowed {
        SegmentsError::InsufficientPrivilege(format!(
            "permission denied to {what} feed \"{name}\": it is owned by {owner}, and only its owner, a member of that role, segments_admin or a superuser may"
        ))
        .raise();
    }
    feed
}

/// Starts a feed from a snapshot: waits for the transactions changing its
/// segments, takes the clock, and writes everyone who is a member now as
/// `entered`, in positions of its own; changes after those are the feed's.
fn start_from_snapshot(feed: i64, segments: &[i64]) {
    spi(Spi::run_with_args(
        "SELECT FROM segments.segment WHERE id OPERATOR(pg_catalog.=) ANY ($1) ORDER BY id FOR SHARE",
        &[segments.to_vec().into()],
    ));
    take_clock(0);
    let snapshot: Vec<(i64, Members)> = segments
        .iter()
        .map(|s| (*s, stored_members(*s)))
        .filter(|(_, m)| !m.is_empty())
        .collect();
    let total: u64 = snapshot.iter().map(|(_, m)| m.len()).sum();
    let first = take_clock(total as i64);
    let empty = Members::new();
    let mut next = first;
    for (segment, members) in &snapshot {
        let count = members.len() as i64;
        insert_batch(next, count, *segment, Some(feed), members, &empty);
        next += count;
    }
    spi(Spi::run_with_args(
        "UPDATE segments.feed SET start_position = $2, acked_position = $3, acked_at = NULL, lost_at = NULL \
          WHERE id OPERATOR(pg_catalog.=) $1",
        &[feed.into(), (next - 1).into(), (first - 1).into()],
    ));
}

/// The usage a feed records on each of its segments (kind `export`).
fn usage_consumer(name: &str) -> String {
    format!("feed:{name}")
}

/// Creates a change feed of segments of one entity, owned by the caller;
/// returns its id. Its first reads are everyone who is a member now.
#[pg_extern(schema = "segments")]
fn create_feed(name: &str, segments: Option<Vec<i64>>) -> i64 {
    require_editor("create feeds");
    if !has_feeds() {
        SegmentsError::InvalidState(
            "change feeds need the 0.3.0 schema: run ALTER EXTENSION segments UPDATE".into(),
        )
        .raise();
    }
    let segments = segments.unwrap_or_default();
    if name.trim().is_empty() {
        SegmentsError::InvalidParameter("a feed needs a name".into()).raise();
    }
    if segments.is_empty() {
        SegmentsError::InvalidParameter(format!("feed \"{name}\" needs at least one segment"))
            .raise();
    }
    let mut segments = segments;
    segments.sort_unstable();
    segments.dedup();
    let entity = super::entity_of(&format!("feed \"{name}\""), &segments);
    if !may_read_entity(&entity) {
        SegmentsError::InsufficientPrivilege(format!(
            "permission denied to create feed \"{name}\": a feed gives the keys of entity \"{entity}\", whose table you may not SELECT"
        ))
        .raise();
    }
    if optional_value::<i64>(
        "SELECT id FROM segments.feed WHERE name OPERATOR(pg_catalog.=) $1",
        &[name.into()],
    )
    .is_some()
    {
        SegmentsError::DuplicateObject(format!("a feed named \"{name}\" already exists")).raise();
    }
    let owner = crate::pg::authorization::current_role();
    privileged(AssertUnwindSafe(|| {
        let id = spi(Spi::get_one_with_args::<i64>(
            "INSERT INTO segments.feed (name, entity, segments, owner, start_position, acked_position) \
             VALUES ($1, $2, $3, $4::pg_catalog.oid::pg_catalog.regrole, 0, 0) RETURNING id",
            &[
                name.into(),
                entity.clone().into(),
                segments.clone().into(),
                owner.into(),
            ],
        ))
        .expect("INSERT ... RETURNING returns a row");
        spi(Spi::run_with_args(
            "INSERT INTO segments.usage_registry (segment_id, kind, consumer) \
             SELECT s, 'export', $2 FROM pg_catalog.unnest($1::pg_catalog.int8[]) s ON CONFLICT DO NOTHING",
            &[segments.clone().into(), usage_consumer(name).into()],
        ));
        start_from_snapshot(id, &segments);
        id
    }))
}

/// Changes after the last acknowledged position, at most `max_rows`, in
/// increasing position. Reading acknowledges nothing: a reader that fails
/// before `ack_feed` reads the same rows again.
#[pg_extern(schema = "segments")]
fn read_feed(
    name: &str,
    max_rows: default!(i32, 10000),
) -> TableIterator<
    'static,
    (
        name!(position, i64),
        name!(segment_id, i64),
        name!(key, String),
        name!(change, String),
        name!(at, TimestampWithTimeZone),
    ),
> {
    let feed = owned_feed(name, "read");
    if max_rows < 1 {
        SegmentsError::InvalidParameter(format!("max_rows must be 1 or more, not {max_rows}"))
            .raise();
    }
    if feed.lost {
        SegmentsError::InvalidState(format!(
            "feed \"{}\" fell behind segments.feed_retention ({}): changes it had not acknowledged were removed; reset_feed('{}') starts it again from a snapshot",
            feed.name,
            crate::pg::gucs::feed_retention(),
            feed.name
        ))
        .raise();
    }
    if !may_read_entity(&feed.entity) {
        SegmentsError::InsufficientPrivilege(format!(
            "permission denied to read feed \"{}\": you may not SELECT the table of entity \"{}\"",
            feed.name, feed.entity
        ))
        .raise();
    }
    TableIterator::new(read_rows(&feed, max_rows as usize))
}

type FeedRow = (i64, i64, String, String, TimestampWithTimeZone);

/// The feed's next rows: its batches from the one holding the position
/// after the acknowledged one, expanded until `max_rows`.
fn read_rows(feed: &Feed, max_rows: usize) -> Vec<FeedRow> {
    // The feed's batches: its own snapshot, and its segments' changes after
    // its start. Those that end after `acked`: the one straddling it (the
    // last that begins at or before it), then those beginning after it.
    let mine = "(feed_id OPERATOR(pg_catalog.=) $1 OR (feed_id IS NULL AND segment_id OPERATOR(pg_catalog.=) ANY ($2) \
                 AND first_position OPERATOR(pg_catalog.>) $3))";
    let sql = format!(
        "(SELECT first_position, count, segment_id, entered, exited, at FROM segments.feed_batch \
           WHERE {mine} AND first_position OPERATOR(pg_catalog.<=) $4 ORDER BY first_position DESC LIMIT 1) \
         UNION ALL \
         (SELECT first_position, count, segment_id, entered, exited, at FROM segments.feed_batch \
           WHERE {mine} AND first_position OPERATOR(pg_catalog.>) $4 ORDER BY first_position LIMIT $5) \
         ORDER BY 1"
    );
    // The batches are internal (not readable by segments_reader); the keys
    // are then read as the caller.
    let batches: Vec<(i64, i64, i64, Vec<u8>, Vec<u8>, TimestampWithTimeZone)> =
        privileged(AssertUnwindSafe(|| {
            Spi::connect(|client| {
                spi(client.select(
                    &sql,
                    None,
                    &[
                        feed.id.into(),
                        feed.segments.clone().into(),
                        feed.start.into(),
                        feed.acked.into(),
                        (max_rows as i64).into(),
                    ],
                ))
                .map(|row| {
                    (
                        required(&row, 1),
                        required(&row, 2),
                        required(&row, 3),
                        required(&row, 4),
                        required(&row, 5),
                        required(&row, 6),
                    )
                })
                .collect()
            })
        }));
    let mut rows: Vec<FeedRow> = Vec::with_capacity(max_rows.min(100_000));
    for (first, count, segment, entered, exited, at) in batches {
        if rows.len() >= max_rows {
            break;
        }
        if first + count - 1 <= feed.acked {
            continue;
        }
        let read =
            |bytes: &[u8]| deserialize(bytes).unwrap_or_else(|e| crate::pg::error::corrupt(e));
        let (entered, exited) = (read(&entered), read(&exited));
        // Skip what was acknowledged, take what fits.
        let skip = (feed.acked + 1 - first).max(0) as u64;
        let wanted = (max_rows - rows.len()) as u64;
        let chain = entered
            .iter()
            .map(|p| (p, "entered"))
            .chain(exited.iter().map(|p| (p, "exited")));
        let picked: Vec<(i64, u64, &str)> = (first + skip as i64..)
            .zip(chain.skip(skip as usize).take(wanted as usize))
            .map(|(position, (bit, change))| (position, bit, change))
            .collect();
        let positions: Members = picked.iter().map(|(_, bit, _)| *bit).collect();
        let keys: HashMap<u64, String> = keys_at(&feed.entity, &positions).into_iter().collect();
        for (position, bit, change) in picked {
            // A key the caller may not read (row-level security on the key
            // dictionary) is not shown; the feed's entity was checked.
            if let Some(key) = keys.get(&bit) {
                rows.push((position, segment, key.clone(), change.to_string(), at));
            }
        }
    }
    rows
}

/// Acknowledges every change up to `position`: they are never returned
/// again. Acknowledging less than before does nothing.
#[pg_extern(schema = "segments")]
fn ack_feed(name: &str, position: i64) {
    let feed = owned_feed(name, "acknowledge");
    let last =
        privileged(|| optional_value::<i64>("SELECT last_position FROM segments.feed_clock", &[]))
            .unwrap_or(0);
    if position > last {
        SegmentsError::InvalidParameter(format!(
            "feed \"{}\": position {position} has not been handed out (the last is {last})",
            feed.name
        ))
        .raise();
    }
    privileged(AssertUnwindSafe(|| {
        spi(Spi::run_with_args(
            "UPDATE segments.feed SET acked_position = $2, acked_at = pg_catalog.now() \
              WHERE id OPERATOR(pg_catalog.=) $1 AND acked_position OPERATOR(pg_catalog.<) $2",
            &[feed.id.into(), position.into()],
        ))
    }));
}

/// Starts a feed again from a snapshot of its segments' members (after it
/// fell behind `segments.feed_retention`, or to resend everything).
#[pg_extern(schema = "segments")]
fn reset_feed(name: &str) {
    let feed = owned_feed(name, "reset");
    privileged(AssertUnwindSafe(|| {
        spi(Spi::run_with_args(
            "DELETE FROM segments.feed_batch WHERE feed_id OPERATOR(pg_catalog.=) $1",
            &[feed.id.into()],
        ));
        start_from_snapshot(feed.id, &feed.segments);
    }));
}

/// Drops a feed (its owner, or an admin).
#[pg_extern(schema = "segments")]
fn drop_feed(name: &str) {
    let feed = owned_feed(name, "drop");
    privileged(AssertUnwindSafe(|| {
        spi(Spi::run_with_args(
            "DELETE FROM segments.usage_registry WHERE kind OPERATOR(pg_catalog.=) 'export' \
               AND consumer OPERATOR(pg_catalog.=) $2 AND segment_id OPERATOR(pg_catalog.=) ANY ($1)",
            &[feed.segments.clone().into(), usage_consumer(&feed.name).into()],
        ));
        spi(Spi::run_with_args(
            "DELETE FROM segments.feed WHERE id OPERATOR(pg_catalog.=) $1",
            &[feed.id.into()],
        ));
    }));
}

/// A feed not yet lost with a change older than `segments.feed_retention`
/// (`$1`) that it has not acknowledged (`f`).
const LOSING: &str = "f.lost_at IS NULL AND EXISTS ( \
       SELECT FROM segments.feed_batch b \
        WHERE b.at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) $1::pg_catalog.interval) \
          AND (b.first_position OPERATOR(pg_catalog.+) b.count OPERATOR(pg_catalog.-) 1) OPERATOR(pg_catalog.>) f.acked_position \
          AND (b.feed_id OPERATOR(pg_catalog.=) f.id OR (b.feed_id IS NULL AND b.segment_id OPERATOR(pg_catalog.=) ANY (f.segments) \
               AND b.first_position OPERATOR(pg_catalog.>) f.start_position)))";

/// A batch (`b`) no feed still needs.
const UNNEEDED: &str = "NOT EXISTS ( \
       SELECT FROM segments.feed f WHERE f.lost_at IS NULL \
          AND (b.first_position OPERATOR(pg_catalog.+) b.count OPERATOR(pg_catalog.-) 1) OPERATOR(pg_catalog.>) f.acked_position \
          AND (b.feed_id OPERATOR(pg_catalog.=) f.id OR (b.feed_id IS NULL AND b.segment_id OPERATOR(pg_catalog.=) ANY (f.segments) \
               AND b.first_position OPERATOR(pg_catalog.>) f.start_position)))";

/// Retention: a feed with changes older than `segments.feed_retention` it
/// has not acknowledged is marked lost (read_feed fails until reset_feed);
/// then the batches no feed still needs are removed. Runs with the
/// history retention, as the extension.
pub fn expire() {
    if !has_feeds() {
        return;
    }
    let retention = crate::pg::gucs::feed_retention();
    spi(Spi::run_with_args(
        &format!("UPDATE segments.feed f SET lost_at = pg_catalog.now() WHERE {LOSING}"),
        &[retention.as_str().into()],
    ));
    spi(Spi::run(&format!(
        "DELETE FROM segments.feed_batch b WHERE {UNNEEDED}"
    )));
}

/// Whether `expire` has anything to do (read only: a scheduler pass with
/// nothing to expire writes nothing).
pub fn anything_to_expire() -> bool {
    has_feeds()
        && optional_value::<bool>(
            &format!(
                "SELECT EXISTS (SELECT FROM segments.feed f WHERE {LOSING}) \
                     OR EXISTS (SELECT FROM segments.feed_batch b WHERE {UNNEEDED})"
            ),
            &[crate::pg::gucs::feed_retention().as_str().into()],
        ) != Some(false)
}
