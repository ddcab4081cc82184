//! Live capture's trigger functions: `segments._capture_row()`, fired by
//! `UPDATE OF <columns live segments read>` on captured tables, and
//! `segments._capture()`, the statement-level trigger of INSERT, DELETE and
//! TRUNCATE that reads the transition tables.
//!
//! Both are on the user's write path, so they are C-level triggers rather
//! than plpgsql: they read the key straight from the tuples and append to
//! `segments.change_queue` with one heap insert each, in the same
//! transaction as the change. Going through the table access method
//! directly skips the executor, privilege checks (the queue is internal;
//! nobody but the extension may write it) and the GUC save and restore a
//! `SECURITY DEFINER ... SET search_path` function pays per call.
//! The queue has no index for the same reason: `apply_changes` drains it
//! whole.
//!
//! Neither is SECURITY DEFINER: the key's output function (the only code
//! of the table's owner they run) runs as the role that wrote the row, as
//! PostgreSQL's own triggers do. And neither ever fails the user's
//! statement over the capture: a key column that was renamed or dropped
//! queues a NULL key (everything changed), and the segments fail their
//! next application naming the column.

use pgrx::heap_tuple::PgHeapTuple;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::AllocatedByRust;

/// Why a capture trigger cannot run; raised as an ERROR (it would
/// otherwise lose a change silently).
#[derive(thiserror::Error, Debug)]
pub enum CaptureError {
    #[error("segments._capture_row() must be fired AFTER UPDATE FOR EACH ROW with (entity, key column, source, compared columns...) arguments")]
    Misused,
    #[error("segments._capture() must be fired AFTER INSERT, DELETE or TRUNCATE FOR EACH STATEMENT with (entity, key column, source) arguments and transition tables")]
    MisusedStatement,
}

/// Queues the row's key (and its old key when the key itself changed) when
/// one of the compared columns changed.
///
/// Arguments: entity, key column, source ('' for the entity's own table),
/// then the columns live segments read. The comparison is done here
/// rather than in the trigger's `WHEN` clause because PostgreSQL parses
/// and compiles a `WHEN` clause again for every statement: with single-row
/// UPDATEs that cost more than the rest of the capture. Values are compared
/// by their bytes, so a value written again unchanged queues nothing, and
/// equal values in different representations (a rare case) only queue a
/// key that `apply_changes` then finds unchanged.
#[pg_trigger(sql = r#"
-- Live segments: the row-level capture of UPDATEs of the columns live
-- segments read (a trigger with a column list cannot have transition
-- tables). C for speed: it is on the user's write path.
CREATE FUNCTION segments._capture_row() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
"#)]
fn _capture_row<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, CaptureError> {
    let data = trigger.trigger_data();
    if data.tg_trigtuple.is_null() || data.tg_newtuple.is_null() || data.tg_trigger.is_null() {
        return Err(CaptureError::Misused);
    }
    // SAFETY: Postgres called us as an UPDATE row trigger (checked above:
    // both tuples are present), so the relation is open and locked, both
    // tuples are valid for the relation's descriptor, and the trigger's
    // arguments are `tgnargs` NUL-terminated strings.
    unsafe {
        let trigger = &*data.tg_trigger;
        let args: &[*mut std::ffi::c_char] = if trigger.tgnargs > 0 && !trigger.tgargs.is_null() {
            std::slice::from_raw_parts(trigger.tgargs, trigger.tgnargs as usize)
        } else {
            &[]
        };
        let [entity, column, source, compared @ ..] = args else {
            return Err(CaptureError::Misused);
        };
        let desc = (*data.tg_relation).rd_att;
        let changed = compared.is_empty()
            || compared.iter().any(|name| {
                let attnum = pg_sys::SPI_fnumber(desc, *name);
                // A column renamed or dropped since: queue, apply decides.
                attnum <= 0 || !same_value(data.tg_trigtuple, data.tg_newtuple, desc, attnum)
            });
        if !changed {
            return Ok(None);
        }
        let entity = std::ffi::CStr::from_ptr(*entity)
            .to_str()
            .map_err(|_| CaptureError::Misused)?;
        let source = std::ffi::CStr::from_ptr(*source)
            .to_str()
            .map_err(|_| CaptureError::Misused)?;
        // '' for the entity's own table, else the related table's name.
        let source = (!source.is_empty()).then_some(source);
        let attnum = pg_sys::SPI_fnumber(desc, *column);
        if attnum <= 0 {
            // The key column was renamed or dropped since the trigger was
            // made: never fail the user's write; everything changed.
            enqueue(entity, None, source, None);
            return Ok(None);
        }
        let key_kept = same_value(data.tg_trigtuple, data.tg_newtuple, desc, attnum);
        // The entity's own row, under the same key: its new version goes
        // with the key, so that apply need not read the heap again.
        let image = (source.is_none() && key_kept)
            .then(|| image_of(data.tg_relation, data.tg_newtuple))
            .flatten();
        if let Some(key) = key_text(data.tg_newtuple, desc, attnum) {
            enqueue(entity, Some(&key), source, image.as_deref());
        }
        if !key_kept {
            if let Some(key) = key_text(data.tg_trigtuple, desc, attnum) {
                enqueue(entity, Some(&key), source, None);
            }
        }
    }
    Ok(None)
}

/// The most distinct keys one statement queues one by one; a statement
/// changing more rows queues "everything changed" instead.
const MAX_STATEMENT_KEYS: usize = 100_000;

/// Queues the distinct keys of the rows a statement inserted or deleted
/// (read from its transition table), or a NULL key for a TRUNCATE.
///
/// Arguments: entity, key column, source ('' for the entity's own table,
/// else the related table's name).
#[pg_trigger(sql = r#"
-- Live segments: the statement-level capture of INSERT, DELETE and
-- TRUNCATE (transition tables). C, not SECURITY DEFINER: the key's output
-- function runs as the writer, and the queue is written directly.
CREATE FUNCTION segments._capture() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
"#)]
fn _capture<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, CaptureError> {
    let data = trigger.trigger_data();
    if data.tg_trigger.is_null() || data.tg_relation.is_null() {
        return Err(CaptureError::MisusedStatement);
    }
    // SAFETY: Postgres called us as a trigger (checked above): the relation
    // is open and locked, the transition tables (when present) hold tuples
    // of its descriptor, and the arguments are `tgnargs` C strings.
    unsafe {
        let trigger = &*data.tg_trigger;
        let args: &[*mut std::ffi::c_char] = if trigger.tgnargs > 0 && !trigger.tgargs.is_null() {
            std::slice::from_raw_parts(trigger.tgargs, trigger.tgnargs as usize)
        } else {
            &[]
        };
        let [entity, column, source, ..] = args else {
            return Err(CaptureError::MisusedStatement);
        };
        let entity = std::ffi::CStr::from_ptr(*entity)
            .to_str()
            .map_err(|_| CaptureError::MisusedStatement)?;
        let source = std::ffi::CStr::from_ptr(*source)
            .to_str()
            .map_err(|_| CaptureError::MisusedStatement)?;
        let source = (!source.is_empty()).then_some(source);
        let operation = data.tg_event & pg_sys::TRIGGER_EVENT_OPMASK;
        if operation == pg_sys::TRIGGER_EVENT_TRUNCATE {
            enqueue(entity, None, source, None);
            return Ok(None);
        }
        let tables: Vec<*mut pg_sys::Tuplestorestate> = [data.tg_newtable, data.tg_oldtable]
            .into_iter()
            .filter(|t| !t.is_null())
            .collect();
        if tables.is_empty() {
            return Err(CaptureError::MisusedStatement);
        }
        let desc = (*data.tg_relation).rd_att;
        let attnum = pg_sys::SPI_fnumber(desc, *column);
        if attnum <= 0 {
            // Renamed or dropped since: never fail the user's statement.
            enqueue(entity, None, source, None);
            return Ok(None);
        }
        let mut keys = std::collections::BTreeSet::new();
        let slot = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsMinimalTuple);
        'tables: for table in tables {
            // A read pointer of our own: other triggers read the same
            // transition table, each from its start.
            let pointer = pg_sys::tuplestore_alloc_read_pointer(table, 0);
            pg_sys::tuplestore_select_read_pointer(table, pointer);
            pg_sys::tuplestore_rescan(table);
            while pg_sys::tuplestore_gettupleslot(table, true, false, slot) {
                let mut free = false;
                let tuple = pg_sys::ExecFetchSlotHeapTuple(slot, false, &mut free);
                if let Some(key) = key_text(tuple, desc, attnum) {
                    keys.insert(key);
                }
                if free {
                    pg_sys::heap_freetuple(tuple);
                }
                if keys.len() > MAX_STATEMENT_KEYS {
                    pg_sys::tuplestore_select_read_pointer(table, 0);
                    break 'tables;
                }
            }
            pg_sys::tuplestore_select_read_pointer(table, 0);
        }
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        if keys.len() > MAX_STATEMENT_KEYS {
            // A bulk load: one "everything changed" (a full refresh of the
            // entity's live segments) costs less than its keys, and holds
            // no memory in proportion to it.
            enqueue(entity, None, source, None);
            return Ok(None);
        }
        let rows: Vec<(Option<&str>, Option<&[u8]>)> =
            keys.iter().map(|k| (Some(k.as_str()), None)).collect();
        enqueue_all(entity, &rows, source);
    }
    Ok(None)
}

/// A row image: the relation's file number (4 bytes, native order), then
/// the tuple's bytes (`t_data`). None when the tuple keeps a value out of
/// line (TOAST): the image would point at data a later update may free.
///
/// # Safety
/// `relation` must be open and `tuple` a valid heap tuple of it.
unsafe fn image_of(relation: pg_sys::Relation, tuple: pg_sys::HeapTuple) -> Option<Vec<u8>> {
    // SAFETY: guaranteed by the caller; t_data holds t_len bytes.
    unsafe {
        let header = (*tuple).t_data;
        if (*header).t_infomask & pg_sys::HEAP_HASEXTERNAL as u16 != 0 {
            return None;
        }
        let body = std::slice::from_raw_parts(header.cast::<u8>(), (*tuple).t_len as usize);
        let mut image = Vec::with_capacity(4 + body.len());
        image.extend_from_slice(&crate::pg::versions::relation_file_number(relation).to_ne_bytes());
        image.extend_from_slice(body);
        Some(image)
    }
}

/// The rows of `relation` that `images` (from `image_of`) hold, as SQL: a
/// `SELECT` of `columns` (name, SQL type) from the unnested arrays of
/// their values, keyed by `key`. An image is usable only when the relation
/// was not rewritten since (same file number) and has no more columns than
/// the image; `images` not usable are returned in the second list.
///
/// The images come from `segments.change_queue`, which only the capture
/// trigger writes: no SQL function turns bytes into rows, since a user
/// could hand it forged ones. The relation is locked (AccessShareLock, to
/// the end of the transaction) before its descriptor is trusted.
pub fn rows_of_images(
    relation: pg_sys::Oid,
    columns: &[(String, String)],
    images: &[(String, Vec<u8>)],
) -> (Option<String>, Vec<String>) {
    // WAL capture's images (decoded rows, as text) and the triggers' (heap
    // tuples) become one SELECT each.
    let (decoded, tuples): (Vec<_>, Vec<_>) = images
        .iter()
        .cloned()
        .partition(|(_, image)| image.starts_with(&segments_core::capture::IMAGE_MARKER[..]));
    let (tuple_rows, mut unusable) = rows_of_tuple_images(relation, columns, &tuples);
    let (decoded_rows, unusable_decoded) = rows_of_decoded_images(relation, columns, &decoded);
    unusable.extend(unusable_decoded);
    let source = match (tuple_rows, decoded_rows) {
        (Some(a), Some(b)) => Some(format!("{a} UNION ALL {b}")),
        (a, b) => a.or(b),
    };
    (source, unusable)
}

/// The rows of WAL capture's images (`segments_core::capture::Image`) as a
/// SELECT of `columns`: their text values cast to the columns' base types
/// (as the heap images' arrays are). An image is usable only when it has
/// every column, each of the type the column has now (a type changed since
/// would read the text differently); the others are returned.
fn rows_of_decoded_images(
    relation: pg_sys::Oid,
    columns: &[(String, String)],
    images: &[(String, Vec<u8>)],
) -> (Option<String>, Vec<String>) {
    if images.is_empty() {
        return (None, Vec::new());
    }
    // The columns' types now, by name.
    let types: Vec<Option<u32>> = columns
        .iter()
        .map(|(name, _)| {
            crate::pg::spi::optional_value::<pg_sys::Oid>(
                "SELECT atttypid FROM pg_catalog.pg_attribute WHERE attrelid OPERATOR(pg_catalog.=) $1 \
                    AND attname OPERATOR(pg_catalog.=) $2 AND attnum OPERATOR(pg_catalog.>) 0 AND NOT attisdropped",
                &[relation.into(), name.as_str().into()],
            )
            .map(|oid| oid.to_u32())
        })
        .collect();
    let mut unusable = Vec::new();
    let mut values: Vec<Vec<Option<String>>> = vec![Vec::new(); columns.len()];
    for (key, image) in images {
        let row: Option<Vec<Option<String>>> = segments_core::capture::Image::decode(image)
            .and_then(|decoded| {
                columns
                    .iter()
                    .zip(&types)
                    .map(|((name, _), now)| {
                        decoded
                            .iter()
                            .find(|(n, t, _)| n == name && Some(*t) == *now)
                            .map(|(_, _, v)| v.clone())
                    })
                    .collect()
            });
        match row {
            Some(row) => {
                for (i, v) in row.into_iter().enumerate() {
                    values[i].push(v);
                }
            }
            None => unusable.push(key.clone()),
        }
    }
    if values.first().is_none_or(Vec::is_empty) {
        return (None, unusable);
    }
    // Each column's values as a text array literal, cast to its type.
    let arrays = values
        .iter()
        .zip(columns)
        .map(|(values, (_, type_sql))| {
            let elements = values
                .iter()
                .map(|v| match v {
                    None => "NULL".to_string(),
                    Some(v) => format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")),
                })
                .collect::<Vec<_>>()
                .join(",");
            format!(
                "pg_catalog.unnest({}::{type_sql}[])",
                segments_core::sql::literal(&format!("{{{elements}}}"))
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    (Some(rows_from(columns, &arrays)), unusable)
}

/// `SELECT <columns> FROM ROWS FROM (<arrays>)`: one unnested array per
/// column, side by side.
fn rows_from(columns: &[(String, String)], arrays: &str) -> String {
    let names = columns
        .iter()
        .map(|(name, _)| segments_core::sql::ident(name))
        .collect::<Vec<_>>()
        .join(", ");
    format!("SELECT {names} FROM ROWS FROM ({arrays}) AS i({names})")
}

/// The rows of the capture triggers' heap-tuple images (see `image_of`).
fn rows_of_tuple_images(
    relation: pg_sys::Oid,
    columns: &[(String, String)],
    images: &[(String, Vec<u8>)],
) -> (Option<String>, Vec<String>) {
    if images.is_empty() {
        return (None, Vec::new());
    }
    let mut unusable = Vec::new();
    // SAFETY: the relation is opened under a lock and closed keeping it;
    // every image is copied to a MAXALIGNed buffer before it is deformed
    // with that relation's descriptor, after its file number and
    // attribute count were checked against the relation's.
    unsafe {
        let rel = pg_sys::try_table_open(relation, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        if rel.is_null() {
            return (None, images.iter().map(|(k, _)| k.clone()).collect());
        }
        let desc = (*rel).rd_att;
        let natts = (*desc).natts as usize;
        let file = crate::pg::versions::relation_file_number(rel);
        let attnums: Vec<Option<usize>> = columns
            .iter()
            .map(|(name, _)| {
                let c = std::ffi::CString::new(name.as_str()).ok()?;
                let n = pg_sys::SPI_fnumber(desc, c.as_ptr());
                (n > 0).then_some(n as usize)
            })
            .collect();
        if attnums.iter().any(Option::is_none) {
            pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
            return (None, images.iter().map(|(k, _)| k.clone()).collect());
        }
        let mut values: Vec<Vec<pg_sys::Datum>> = vec![Vec::new(); columns.len()];
        let mut nulls: Vec<Vec<bool>> = vec![Vec::new(); columns.len()];
        let mut row_values = vec![pg_sys::Datum::from(0); natts];
        let mut row_nulls = vec![true; natts];
        for (key, image) in images {
            let header_size = std::mem::size_of::<pg_sys::HeapTupleHeaderData>();
            let usable = image.len() >= 4 + header_size
                && u32::from_ne_bytes([image[0], image[1], image[2], image[3]]) == file;
            if !usable {
                unusable.push(key.clone());
                continue;
            }
            let body = &image[4..];
            let buffer = pg_sys::palloc(body.len()).cast::<u8>();
            std::ptr::copy_nonoverlapping(body.as_ptr(), buffer, body.len());
            let header = buffer.cast::<pg_sys::HeapTupleHeaderData>();
            let image_natts = ((*header).t_infomask2 & pg_sys::HEAP_NATTS_MASK as u16) as usize;
            if image_natts != natts || ((*header).t_hoff as usize) > body.len() {
                pg_sys::pfree(buffer.cast());
                unusable.push(key.clone());
                continue;
            }
            let mut tuple = pg_sys::HeapTupleData {
                t_len: body.len() as u32,
                t_data: header,
                ..Default::default()
            };
            pg_sys::heap_deform_tuple(
                &mut tuple,
                desc,
                row_values.as_mut_ptr(),
                row_nulls.as_mut_ptr(),
            );
            for (i, attnum) in attnums.iter().enumerate() {
                let attnum = attnum.expect("checked above");
                values[i].push(row_values[attnum - 1]);
                nulls[i].push(row_nulls[attnum - 1]);
            }
        }
        let rows = values.first().map_or(0, Vec::len);
        let source = (rows > 0).then(|| {
            let arrays = attnums
                .iter()
                .zip(columns)
                .enumerate()
                .map(|(i, (attnum, (_, type_sql)))| {
                    let attribute =
                        crate::pg::versions::attribute(desc, attnum.expect("checked above") - 1);
                    let mut dims = [rows as i32];
                    let mut lower = [1i32];
                    let array = pg_sys::construct_md_array(
                        values[i].as_mut_ptr(),
                        nulls[i].as_mut_ptr(),
                        1,
                        dims.as_mut_ptr(),
                        lower.as_mut_ptr(),
                        attribute.atttypid,
                        attribute.attlen as i32,
                        attribute.attbyval,
                        attribute.attalign as std::ffi::c_char,
                    );
                    let array_type = pg_sys::get_array_type(attribute.atttypid);
                    let mut output = pg_sys::InvalidOid;
                    let mut varlena = false;
                    pg_sys::getTypeOutputInfo(array_type, &mut output, &mut varlena);
                    let text = pg_sys::OidOutputFunctionCall(output, pg_sys::Datum::from(array));
                    let text = std::ffi::CStr::from_ptr(text)
                        .to_string_lossy()
                        .into_owned();
                    format!(
                        "pg_catalog.unnest({}::{type_sql}[])",
                        segments_core::sql::literal(&text)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            rows_from(columns, &arrays)
        });
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        (source, unusable)
    }
}

/// Whether column `attnum` holds the same bytes in both tuples (both NULL
/// counts as the same), as PostgreSQL's `datumIsEqual` compares.
///
/// # Safety
/// Both tuples must be valid heap tuples of `desc`, and `attnum` a user
/// column of it.
unsafe fn same_value(
    old: pg_sys::HeapTuple,
    new: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
    attnum: i32,
) -> bool {
    // SAFETY: guaranteed by the caller; heap_getattr returns datums that
    // point into the tuples, valid while they are.
    unsafe {
        let attribute = crate::pg::versions::attribute(desc, attnum as usize - 1);
        let (mut old_null, mut new_null) = (false, false);
        let a = pg_sys::heap_getattr(old, attnum, desc, &mut old_null);
        let b = pg_sys::heap_getattr(new, attnum, desc, &mut new_null);
        if old_null || new_null {
            return old_null == new_null;
        }
        if attribute.attbyval {
            return a == b;
        }
        let size = |d: pg_sys::Datum| -> usize {
            match attribute.attlen {
                len if len > 0 => len as usize,
                -1 => pgrx::varlena::varsize_any(d.cast_mut_ptr()),
                _ => std::ffi::CStr::from_ptr(d.cast_mut_ptr())
                    .to_bytes_with_nul()
                    .len(),
            }
        };
        let (len_a, len_b) = (size(a), size(b));
        len_a == len_b
            && std::slice::from_raw_parts(a.cast_mut_ptr::<u8>(), len_a)
                == std::slice::from_raw_parts(b.cast_mut_ptr::<u8>(), len_b)
    }
}

/// The key column of a tuple as text, as the key type's output function
/// writes it (what the queue and `apply_changes` expect); None for NULL.
///
/// # Safety
/// `tuple` must be a valid heap tuple of `desc`, and `attnum` a user
/// column of it.
unsafe fn key_text(
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
    attnum: i32,
) -> Option<String> {
    // SAFETY: guaranteed by the caller; SPI_getvalue needs no SPI
    // connection and returns a palloc'd string or NULL for a NULL value.
    unsafe {
        let text = pg_sys::SPI_getvalue(tuple, desc, attnum);
        if text.is_null() {
            return None;
        }
        let key = std::ffi::CStr::from_ptr(text)
            .to_string_lossy()
            .into_owned();
        pg_sys::pfree(text.cast());
        Some(key)
    }
}

/// Appends (entity, key, now(), source, image) to `segments.change_queue`;
/// a NULL key means every row may have changed.
fn enqueue(entity: &str, key: Option<&str>, source: Option<&str>, image: Option<&[u8]>) {
    // Straight to the queue: this is the row trigger's path.
    enqueue_rows(entity, &[(key, image, None)], source);
}

/// Appends one row per (key, image) to `segments.change_queue`, opening it
/// once; queued now (the transaction's start).
pub(super) fn enqueue_all(
    entity: &str,
    rows: &[(Option<&str>, Option<&[u8]>)],
    source: Option<&str>,
) {
    let rows: Vec<Queue<'_>> = rows.iter().map(|(k, i)| (*k, *i, None)).collect();
    enqueue_rows(entity, &rows, source);
}

/// A row for the queue: key, image, and when the change was made (None:
/// the transaction's start).
pub(super) type Queue<'a> = (
    Option<&'a str>,
    Option<&'a [u8]>,
    Option<pg_sys::TimestampTz>,
);

/// Appends `rows` to `segments.change_queue`, opening it once.
pub(super) fn enqueue_rows(entity: &str, rows: &[Queue<'_>], source: Option<&str>) {
    // SAFETY: plain catalog lookups and heap inserts into our own table,
    // inside the running transaction; errors are Postgres ERRORs that
    // pgrx's guard turns into a clean abort.
    unsafe {
        let namespace = pg_sys::get_namespace_oid(c"segments".as_ptr(), false);
        let relid = pg_sys::get_relname_relid(c"change_queue".as_ptr(), namespace);
        if relid == pg_sys::InvalidOid {
            error!("segments: relation segments.change_queue is missing");
        }
        let relation = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let desc = (*relation).rd_att;
        let natts = (*desc).natts as usize;
        let now = pg_sys::GetCurrentTransactionStartTimestamp();
        for (key, image, at) in rows {
            let mut values = vec![pg_sys::Datum::from(0); natts];
            let mut nulls = vec![true; natts];
            // Columns by position, as created: entity, key, queued_at, source, image.
            let row = [
                entity.into_datum(),
                key.and_then(|k| k.into_datum()),
                Some(pg_sys::Datum::from(at.unwrap_or(now))),
                source.and_then(|s| s.into_datum()),
                image.and_then(|i| i.into_datum()),
            ];
            for (i, value) in row.into_iter().enumerate().take(natts) {
                if let Some(value) = value {
                    values[i] = value;
                    nulls[i] = false;
                }
            }
            let tuple = pg_sys::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr());
            pg_sys::simple_heap_insert(relation, tuple);
            pg_sys::heap_freetuple(tuple);
        }
        pg_sys::table_close(relation, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
    }
}
