//! WAL capture (`segments.capture = 'wal'`): live segments learn of changes
//! from the WAL instead of triggers, so the writing transaction does no
//! work for them.
//!
//! - The tables live segments read are the publication `segments_capture`
//!   (`publication`, kept by `install::sync_capture` in place of the
//!   triggers). Updates and deletes must carry the entity key in the WAL:
//!   `publication::check_requirements` refuses a table whose replica
//!   identity lacks it.
//! - Each database has one logical replication slot, `segments_<database
//!   oid>`, with the plugin `segments` (`output_plugin`: pgoutput skipping
//!   the extension's own writes, `own_writes`). Every `apply_changes` (the scheduler's, each pass,
//!   or a user's) first keeps it as the mode and the live segments need
//!   (`maintain`): made, adopted, or retired.
//! - `decode_into_queue`, at the start of every `apply_changes`, reads the
//!   slot from its confirmed position (`pg_logical_slot_peek_binary_changes`,
//!   which does not move it), turns the messages into changed keys
//!   (`segments_core::capture`) in `segments.change_queue`, and records in
//!   `segments.capture_slot`, in the same transaction, how far it read. The
//!   slot is confirmed at that position (`advance`, without decoding
//!   again) only once it is committed, by the scheduler after the
//!   application or by the next decoding: an apply that rolls back (or is
//!   killed) reads the same changes again.
//! - For the entity's own table, each key goes with its last decoded row
//!   (`segments_core::capture::Image`, text values) and that row's commit
//!   time: apply reads it instead of the table, as it reads the row images
//!   of trigger capture (`capture::rows_of_images`).
//! - A slot that is missing (a promoted standby, a restore, pg_upgrade) or
//!   invalidated (`max_slot_wal_keep_size`) is made again, and the live
//!   segments are refreshed in full: changes are never lost silently.
//! - `DROP EXTENSION` and `DROP DATABASE` drop the slot first
//!   (`drop_slot_of`, from the scheduler's utility hook); switching back to
//!   `trigger` installs the triggers, decodes what the slot still holds,
//!   then drops it.

use std::collections::HashMap;

use pgrx::prelude::*;
use pgrx::spi::Spi;

use segments_core::capture::{Captured, Decoder};
use segments_core::sql::literal;

use crate::engine::live::capture::Queue;
use crate::engine::live::output_plugin::{self, PLUGIN};
use crate::engine::live::publication::{
    check_requirements, drop_publication, ensure_publication, publication_exists, wanted,
    PUBLICATION,
};
use crate::engine::live::tables::captured_tables;
use crate::pg::spi::{for_each_row, optional_value, required, spi};

/// Decoded messages read from the slot at a time.
const MESSAGES_PER_FETCH: i64 = 10_000;

/// More changed keys of one entity and table than this in one decoding
/// are applied as "everything changed" (as `apply_changes` does).
const MAX_KEYS: usize = 100_000;

/// The slot of a database: slot names are cluster-wide.
pub fn slot_name(database: pg_sys::Oid) -> String {
    format!("segments_{}", database.to_u32())
}

/// This database's slot.
fn this_slot() -> String {
    // SAFETY: reads this backend's database.
    slot_name(unsafe { pg_sys::MyDatabaseId })
}

/// The slot as pg_replication_slots shows it.
struct SlotState {
    /// Invalidated: its WAL was removed (`max_slot_wal_keep_size`), it was
    /// idle too long (`idle_replication_slot_timeout`, 18), or it conflicted;
    /// or made with another output plugin (an early 0.3.0 build).
    lost: bool,
}

fn slot_state(name: &str) -> Option<SlotState> {
    optional_value::<bool>(
        // invalidation_reason (17+: an idle timeout, too) through to_jsonb:
        // older majors have only wal_status.
        "SELECT COALESCE(s.wal_status OPERATOR(pg_catalog.=) 'lost', false)
                OR (pg_catalog.to_jsonb(s) OPERATOR(pg_catalog.->>) 'invalidation_reason') IS NOT NULL
                OR s.plugin OPERATOR(pg_catalog.<>) $2
           FROM pg_catalog.pg_replication_slots s WHERE s.slot_name OPERATOR(pg_catalog.=) $1",
        &[name.into(), PLUGIN.into()],
    )
    .map(|lost| SlotState { lost })
}

/// Whether this database has a decoded position on record.
fn recorded(name: &str) -> bool {
    optional_value::<bool>(
        "SELECT true FROM segments.capture_slot WHERE slot_name OPERATOR(pg_catalog.=) $1",
        &[name.into()],
    )
    .unwrap_or(false)
}

/// Whether this database's slot is in use: an application decodes it.
pub fn in_use() -> bool {
    recorded(&this_slot())
}

/// Whether any live segment is active.
fn any_live() -> bool {
    optional_value::<bool>(
        "SELECT true FROM segments.segment WHERE schedule OPERATOR(pg_catalog.=) 'live' \
            AND state OPERATOR(pg_catalog.=) 'active' LIMIT 1",
        &[],
    )
    .unwrap_or(false)
}

/// What the slot needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotPlan {
    Nothing,
    /// No usable slot: make one, then adopt it.
    Create,
    /// A slot without a decoded position on record: adopt it.
    Adopt,
    /// WAL capture is not (or no longer) needed: retire the slot.
    Retire,
}

/// Decides what the slot needs (read-only).
fn plan(name: &str) -> SlotPlan {
    let slot = slot_state(name);
    if wanted() && any_live() {
        match slot {
            None | Some(SlotState { lost: true }) => SlotPlan::Create,
            Some(_) if !recorded(name) => SlotPlan::Adopt,
            Some(_) => SlotPlan::Nothing,
        }
    } else if slot.is_some() || recorded(name) {
        SlotPlan::Retire
    } else {
        SlotPlan::Nothing
    }
}

/// What `apply_changes` does after decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterDecoding {
    Nothing,
    /// Drop the slot: the triggers are back and what it held is queued.
    Retire,
}

/// Keeps the slot as `segments.capture` and the live segments need it;
/// `apply_changes` calls it first, before its transaction writes anything
/// (PostgreSQL makes a slot only in a transaction without a transaction
/// id; one that has written leaves the making to the next application).
///
/// - Create: the server and tables are checked (no slot is made that could
///   not be used), an invalidated slot is dropped, the slot is made, then
///   adopted.
/// - Adopt: the publication names the tables and the triggers go
///   (`sync_capture`), the slot's position is recorded, and every entity
///   with live segments is queued as "everything changed": changes made
///   before the slot existed are not in it.
/// - Retire: the triggers are put back (`sync_capture`), then, after this
///   application decoded what the slot holds, the slot goes. Both in this
///   transaction: writers wait for the triggers' lock, so no change falls
///   between the two captures.
pub fn maintain() -> AfterDecoding {
    let name = this_slot();
    let plan = plan(&name);
    // One session changes the slot at a time (the scheduler and a user's
    // apply_changes may meet); another finds the lock taken and leaves it
    // to that one. An advisory lock assigns no transaction id.
    if plan != SlotPlan::Nothing
        && optional_value::<bool>(
            "SELECT pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtext('segments WAL capture slot'), \
                    pg_catalog.hashtext($1))",
            &[name.as_str().into()],
        ) != Some(true)
    {
        return AfterDecoding::Nothing;
    }
    match plan {
        SlotPlan::Nothing => AfterDecoding::Nothing,
        SlotPlan::Create => {
            // SAFETY: reads this transaction's state.
            let written =
                unsafe { pg_sys::GetTopTransactionIdIfAny() } != pg_sys::InvalidTransactionId;
            if written || !publication_exists() {
                // Decoding needs the publication from the slot's start: it
                // is made now, the slot by the next application.
                check_requirements(&captured_tables());
                ensure_publication();
                return AfterDecoding::Nothing;
            }
            check_requirements(&captured_tables());
            match slot_state(&name) {
                Some(_) => {
                    log!(
                        "segments: WAL capture slot {name} is unusable (invalidated: its WAL was removed, see max_slot_wal_keep_size; or made with another output plugin); it is made again and the live segments are refreshed in full"
                    );
                    // Read-only SPI throughout: pgrx's writing calls would
                    // assign the transaction id that forbids making a slot.
                    optional_value::<bool>(
                        "SELECT true FROM (SELECT pg_catalog.pg_drop_replication_slot($1)) d",
                        &[name.as_str().into()],
                    );
                }
                None if recorded(&name) => log!(
                    "segments: WAL capture slot {name} is missing (a restore, a promoted standby or pg_upgrade); it is made again and the live segments are refreshed in full"
                ),
                None => {}
            }
            // Waits for the transactions running now to end.
            output_plugin::allowed(|| {
                optional_value::<String>(
                    "SELECT (pg_catalog.pg_create_logical_replication_slot($1, $2)).slot_name::pg_catalog.text",
                    &[name.as_str().into(), PLUGIN.into()],
                )
            });
            adopt(&name);
            AfterDecoding::Nothing
        }
        SlotPlan::Adopt => {
            adopt(&name);
            AfterDecoding::Nothing
        }
        SlotPlan::Retire => {
            crate::engine::live::install::sync_capture();
            AfterDecoding::Retire
        }
    }
}

/// Takes a new slot into use (see `maintain`).
fn adopt(name: &str) {
    crate::engine::live::install::sync_capture();
    spi(Spi::run_with_args(
        "INSERT INTO segments.capture_slot (slot_name, decoded_upto)
         SELECT slot_name, confirmed_flush_lsn FROM pg_catalog.pg_replication_slots
          WHERE slot_name OPERATOR(pg_catalog.=) $1
         ON CONFLICT (slot_name) DO UPDATE SET decoded_upto = EXCLUDED.decoded_upto, created_at = pg_catalog.now()",
        &[name.into()],
    ));
    queue_everything();
}

/// Queues "everything changed" for every entity with active live segments.
fn queue_everything() {
    let entities: Vec<String> = Spi::connect(|client| {
        spi(client.select(
            "SELECT DISTINCT entity FROM segments.segment WHERE schedule OPERATOR(pg_catalog.=) 'live' \
                AND state OPERATOR(pg_catalog.=) 'active'",
            None,
            &[],
        ))
        .map(|row| required::<String>(&row, 1))
        .collect()
    });
    for entity in entities {
        crate::engine::live::capture::enqueue_all(&entity, &[(None, None)], None);
    }
}

/// The last step of switching back to triggers (see `maintain`): the
/// slot, its record and the publication go.
pub fn retire() {
    let name = this_slot();
    if slot_state(&name).is_some() {
        spi(Spi::run_with_args(
            "SELECT pg_catalog.pg_drop_replication_slot($1)",
            &[name.as_str().into()],
        ));
    }
    spi(Spi::run_with_args(
        "DELETE FROM segments.capture_slot WHERE slot_name OPERATOR(pg_catalog.=) $1",
        &[name.as_str().into()],
    ));
    drop_publication();
}

/// How far the slot's restart position may trail its confirmed one before
/// an application writes a restart point (one WAL segment).
const RESTART_LAG: i64 = 16 * 1024 * 1024;

/// Writes a restart point for the slot (a snapshot of the running
/// transactions, as the background writer does every 15 seconds when the
/// server is busy), before this application's transaction has an id, when
/// the slot's restart position trails its confirmed one by more than
/// `RESTART_LAG`. Decoding starts from the restart position, which can
/// only move to such a point before the confirmed one: the next decoding
/// then starts about where this one does instead of re-reading every big
/// transaction since. An idle server gets none (nothing to re-read).
pub fn write_restart_point() {
    let name = this_slot();
    let trailing = recorded(&name)
        && optional_value::<bool>(
            "SELECT pg_catalog.pg_wal_lsn_diff(confirmed_flush_lsn, restart_lsn) OPERATOR(pg_catalog.>) $2
               FROM pg_catalog.pg_replication_slots WHERE slot_name OPERATOR(pg_catalog.=) $1",
            &[name.as_str().into(), RESTART_LAG.into()],
        ) == Some(true);
    if trailing {
        // SAFETY: a primary (apply refuses a standby) with wal_level =
        // logical; what making a slot does in every backend.
        unsafe { pg_sys::LogStandbySnapshot() };
    }
}

/// Decodes the slot's committed changes into `segments.change_queue`, when
/// this database has one (see the module's notes). An unusable slot queues
/// "everything changed" for every live entity: what it lost is unknown.
pub fn decode_into_queue() {
    let name = this_slot();
    // Serializes decoders (a slot is read by one process at a time); the
    // position is the last one committed.
    let Some(decoded_upto) = optional_value::<String>(
        "SELECT decoded_upto::pg_catalog.text FROM segments.capture_slot \
          WHERE slot_name OPERATOR(pg_catalog.=) $1 FOR UPDATE",
        &[name.as_str().into()],
    ) else {
        return;
    };
    match slot_state(&name) {
        Some(SlotState { lost: false }) => {}
        _ => {
            queue_everything();
            return;
        }
    }
    // What the last decoding committed is applied: the slot may move on.
    advance(&name, &decoded_upto);
    let mut captured: HashMap<u32, Vec<Captured>> = HashMap::new();
    for table in captured_tables() {
        captured
            .entry(table.relation.to_u32())
            .or_default()
            .push(Captured {
                entity: table.entity,
                compared: table.columns.into_iter().collect(),
                key_column: table.key_column,
                source: (!table.source.is_empty()).then_some(table.source),
            });
    }
    // Decoding stops at the WAL flushed to disk: transactions committed
    // with synchronous_commit = off may not be yet (the WAL writer flushes
    // within wal_writer_delay). Flushing what is written makes every commit
    // made before this application visible to it, as a commit would.
    let flushed = end_of_inserted_wal();
    // SAFETY: a primary (apply refuses a standby), inside a transaction;
    // flushing up to the end of an inserted record is what a commit does.
    unsafe { pg_sys::XLogFlush(flushed) };
    let mut decoder = Decoder::new(captured, MAX_KEYS);
    let mut malformed = None;
    output_plugin::allowed(|| {
        for_each_row(
            &format!(
                "SELECT data FROM pg_catalog.pg_logical_slot_peek_binary_changes({}, NULL, NULL, \
               'proto_version', '1', 'publication_names', {})",
                literal(&name),
                literal(PUBLICATION)
            ),
            MESSAGES_PER_FETCH,
            |row| {
                let data: Vec<u8> = required(row, 1);
                match segments_core::pgoutput::parse(&data) {
                    Ok(message) => {
                        decoder.feed(message);
                        true
                    }
                    Err(e) => {
                        malformed = Some(e);
                        false
                    }
                }
            },
        )
    });
    if let Some(e) = malformed {
        error!("segments: WAL capture slot {name}: {e}");
    }
    for ((entity, source), keys) in &decoder.changes {
        // A key of the entity's own table goes with its last decoded row
        // and that row's commit time (apply uses an image only when it is
        // newer than the live segments' last full evaluation).
        let images: Vec<(Vec<u8>, i64)> = keys
            .keys
            .iter()
            .map(|k| {
                keys.images
                    .get(k)
                    .map(|i| (i.encode(), i.commit_time))
                    .unwrap_or_default()
            })
            .collect();
        let rows: Vec<Queue<'_>> = if keys.everything {
            vec![(None, None, None)]
        } else {
            keys.keys
                .iter()
                .zip(&images)
                .map(|(k, (image, at))| {
                    if image.is_empty() {
                        (Some(k.as_str()), None, None)
                    } else {
                        (Some(k.as_str()), Some(image.as_slice()), Some(*at))
                    }
                })
                .collect()
        };
        if !rows.is_empty() {
            crate::engine::live::capture::enqueue_rows(entity, &rows, source.as_deref());
        }
    }
    // Every transaction committed before the flushed position was decoded
    // (most of them skipped: other tables, or the extension's own writes).
    match decoder.decoded_upto {
        // Changes found: the position goes with them, in this transaction.
        Some(upto) => spi(Spi::run_with_args(
            "UPDATE segments.capture_slot SET decoded_upto = $2::pg_catalog.pg_lsn \
              WHERE slot_name OPERATOR(pg_catalog.=) $1",
            &[
                name.as_str().into(),
                format_lsn(upto.max(flushed)).as_str().into(),
            ],
        )),
        // Nothing to apply up to the flushed position: the slot moves past
        // it now (nothing can be lost if this transaction fails), and
        // nothing is written, so an idle server gets no WAL from it.
        None => advance(&name, &format_lsn(flushed)),
    }
}

/// The end of the last record inserted in the WAL. The insert position
/// is where the next record goes: on a page not yet begun, past the
/// page's header, which XLogFlush cannot flush to ("flush request ... is
/// not satisfied"); there the records before end at the page's start.
fn end_of_inserted_wal() -> u64 {
    // SAFETY: reads the insert position and a server constant.
    let (insert, segment) = unsafe {
        (
            pg_sys::GetXLogInsertRecPtr(),
            pg_sys::wal_segment_size as u64,
        )
    };
    let align = |size: usize| (size as u64).div_ceil(8) * 8;
    let short_header = align(std::mem::size_of::<pg_sys::XLogPageHeaderData>());
    let long_header = align(std::mem::size_of::<pg_sys::XLogLongPageHeaderData>());
    let in_page = insert % pg_sys::XLOG_BLCKSZ as u64;
    let segment_start = insert % segment == in_page;
    if (segment_start && in_page == long_header) || (!segment_start && in_page == short_header) {
        insert - in_page
    } else {
        insert
    }
}

/// Moves the slot's confirmed position to `upto` (a position this
/// extension's decoding reached and committed) when it is behind it, as
/// a streaming client's reply does (`LogicalConfirmReceivedLocation`):
/// the restart position moves with it to the latest restart point the
/// decoding met. `pg_replication_slot_advance` would read the WAL again
/// from the restart position up to `upto` first, which after a system
/// refresh is gigabytes of the extension's own writes (bench/NOTES.md).
fn advance(name: &str, upto: &str) {
    // A slot another process reads (a DBA peeking at it) is left alone:
    // the next application confirms the position.
    let Some(upto) = optional_value::<i64>(
        "SELECT pg_catalog.pg_wal_lsn_diff($2::pg_catalog.pg_lsn, '0/0')::pg_catalog.int8
           FROM pg_catalog.pg_replication_slots s
          WHERE s.slot_name OPERATOR(pg_catalog.=) $1 AND NOT s.active
            AND s.confirmed_flush_lsn OPERATOR(pg_catalog.<) $2::pg_catalog.pg_lsn",
        &[name.into(), upto.into()],
    ) else {
        return;
    };
    let name = std::ffi::CString::new(name).expect("a slot name has no NUL");
    // SAFETY: this backend holds no slot (decoding released it); the slot
    // is released again whatever happens. Confirming a position decoded
    // up to is what a walsender does on a client's reply; the restart
    // and catalog positions move only to candidates the decoding recorded.
    unsafe { crate::pg::versions::acquire_slot(&name) };
    PgTryBuilder::new(|| unsafe {
        pg_sys::LogicalConfirmReceivedLocation(upto as u64);
        pg_sys::ReplicationSlotMarkDirty();
    })
    .finally(|| unsafe { pg_sys::ReplicationSlotRelease() })
    .execute();
}

/// After an application committed (the scheduler calls it then): the slot
/// moves to the position it recorded, so that the next decoding does not
/// read that WAL again (decoding starts from the slot's position).
pub fn advance_to_recorded() {
    let name = this_slot();
    if let Some(upto) = optional_value::<String>(
        "SELECT decoded_upto::pg_catalog.text FROM segments.capture_slot \
          WHERE slot_name OPERATOR(pg_catalog.=) $1",
        &[name.as_str().into()],
    ) {
        advance(&name, &upto);
    }
}

/// An LSN as `pg_lsn` writes it.
fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Drops a database's slot, if it has one, before `DROP EXTENSION
/// segments` or `DROP DATABASE` (which refuses a database with a logical
/// slot). Not transactional: when the statement then fails, the scheduler
/// makes the slot again and refreshes the live segments in full.
pub fn drop_slot_of(database: pg_sys::Oid) {
    let Ok(name) = std::ffi::CString::new(slot_name(database)) else {
        return;
    };
    // SAFETY: looks the slot up by name under its lock, and drops it with
    // PostgreSQL's own function (which fails cleanly if a process is
    // reading it); no slot is held by this backend.
    unsafe {
        if !pg_sys::SearchNamedReplicationSlot(name.as_ptr(), true).is_null() {
            pg_sys::ReplicationSlotDrop(name.as_ptr(), true);
        }
    }
}
