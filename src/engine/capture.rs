//! The row-level half of live capture: `segments._capture_row()`, fired by
//! `UPDATE OF <columns live segments read>` on captured tables.
//!
//! It is on the write path of every such UPDATE, so it is a C-level
//! trigger rather than plpgsql: it reads the key straight from the old and
//! new tuples and appends to `segments.change_queue` with one heap insert,
//! in the same transaction as the change. Going through the table access
//! method directly skips the executor, privilege checks (the queue is
//! internal; nobody but the extension may write it) and the GUC save and
//! restore a `SECURITY DEFINER ... SET search_path` function pays per call.
//! The queue has no index for the same reason: `apply_changes` drains it
//! whole.

use std::ffi::CString;

use pgrx::AllocatedByRust;
use pgrx::heap_tuple::PgHeapTuple;
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Why a capture trigger cannot run; raised as an ERROR (it would
/// otherwise lose a change silently).
#[derive(thiserror::Error, Debug)]
pub enum CaptureError {
    #[error("segments._capture_row() must be fired AFTER UPDATE FOR EACH ROW with (entity, key column, source) arguments")]
    Misused,
    #[error("segments: captured table has no key column \"{0}\"; recreate the live segment's capture with segments._sync_capture()")]
    NoKeyColumn(String),
}

/// Queues the row's key (and its old key when the key itself changed).
#[pg_trigger(sql = r#"
-- Live segments: the row-level capture of UPDATEs of the columns live
-- segments read (a trigger with a column list cannot have transition
-- tables). C for speed: it is on the user's write path.
CREATE FUNCTION segments._capture_row() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
"#)]
fn _capture_row<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, CaptureError> {
    let args = trigger.extra_args().map_err(|_| CaptureError::Misused)?;
    let [entity, column, source] = args.as_slice() else { return Err(CaptureError::Misused) };
    // '' for the entity's own table, else the related table's name.
    let source = (!source.is_empty()).then_some(source.as_str());
    let data = trigger.trigger_data();
    if data.tg_trigtuple.is_null() || data.tg_newtuple.is_null() {
        return Err(CaptureError::Misused);
    }
    let column_c = CString::new(column.as_str()).map_err(|_| CaptureError::Misused)?;
    // SAFETY: Postgres called us as an UPDATE row trigger (checked above:
    // both tuples are present), so the relation is open and locked and
    // both tuples are valid for the relation's descriptor.
    unsafe {
        let desc = (*data.tg_relation).rd_att;
        let attnum = pg_sys::SPI_fnumber(desc, column_c.as_ptr());
        if attnum <= 0 {
            return Err(CaptureError::NoKeyColumn(column.clone()));
        }
        let new_key = key_text(data.tg_newtuple, desc, attnum);
        let old_key = key_text(data.tg_trigtuple, desc, attnum);
        if let Some(key) = &new_key {
            enqueue(entity, key, source);
        }
        if let Some(key) = &old_key {
            if old_key != new_key {
                enqueue(entity, key, source);
            }
        }
    }
    Ok(None)
}

/// The key column of a tuple as text, as the key type's output function
/// writes it (what the queue and `apply_changes` expect); None for NULL.
///
/// # Safety
/// `tuple` must be a valid heap tuple of `desc`, and `attnum` a user
/// column of it.
unsafe fn key_text(tuple: pg_sys::HeapTuple, desc: pg_sys::TupleDesc, attnum: i32) -> Option<String> {
    // SAFETY: guaranteed by the caller; SPI_getvalue needs no SPI
    // connection and returns a palloc'd string or NULL for a NULL value.
    unsafe {
        let text = pg_sys::SPI_getvalue(tuple, desc, attnum);
        if text.is_null() {
            return None;
        }
        let key = std::ffi::CStr::from_ptr(text).to_string_lossy().into_owned();
        pg_sys::pfree(text.cast());
        Some(key)
    }
}

/// Appends (entity, key, now(), source) to `segments.change_queue`.
fn enqueue(entity: &str, key: &str, source: Option<&str>) {
    // SAFETY: plain catalog lookups and a heap insert into our own table,
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
        let mut values = vec![pg_sys::Datum::from(0); natts];
        let mut nulls = vec![true; natts];
        // Columns by position, as created: entity, key, queued_at, source.
        let row = [
            entity.into_datum(),
            key.into_datum(),
            Some(pg_sys::Datum::from(pg_sys::GetCurrentTransactionStartTimestamp())),
            source.and_then(|s| s.into_datum()),
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
        pg_sys::table_close(relation, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
    }
}
