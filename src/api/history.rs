//! History an analyst reads: membership as it was at a past time
//! (`members_at`, reconstructed from the changes every refresh records) and
//! frozen copies of a membership (`freeze`). Definition history lives in
//! SQL (sql/history.sql).

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;

use pgrx::prelude::*;
use pgrx::spi::Spi;
use serde_json::{json, Value};

use segments_core::catalog::KeyKind;

use crate::engine::evaluate::{keys_at, stored_members};
use crate::pg::error::{OrRaise, Reported, SegmentsError};
use crate::pg::spi::{optional_value, spi};

fn segment_row(segment: i64) -> Result<(String, String), Reported> {
    Spi::connect(|client| {
        let table = spi(client.select(
            "SELECT name, entity FROM segments.segment WHERE id OPERATOR(pg_catalog.=) $1",
            Some(1),
            &[segment.into()],
        ));
        if table.is_empty() {
            return None;
        }
        let row = table.first();
        Some((
            spi(row.get::<String>(1)).unwrap_or_default(),
            spi(row.get::<String>(2)).unwrap_or_default(),
        ))
    })
    .ok_or_else(|| SegmentsError::no_such_segment(segment).into())
}

/// The member keys after the last successful refresh at or before `at`:
/// today's members, with every change recorded since then undone.
fn members_at_impl(
    segment: i64,
    at: pgrx::datum::TimestampWithTimeZone,
) -> Result<Vec<String>, Reported> {
    let (_, entity) = segment_row(segment)?;
    let created_after = optional_value::<bool>(
        "SELECT created_at OPERATOR(pg_catalog.>) $2 FROM segments.segment WHERE id OPERATOR(pg_catalog.=) $1",
        &[segment.into(), at.into()],
    )
    .unwrap_or(false);
    if created_after {
        return Ok(Vec::new());
    }
    let last_run = optional_value::<i64>(
        "SELECT max(id) FROM segments.refresh_run WHERE segment_id OPERATOR(pg_catalog.=) $1 \
           AND status OPERATOR(pg_catalog.=) $3 AND finished_at OPERATOR(pg_catalog.<=) $2",
        &[
            segment.into(),
            at.into(),
            crate::engine::run::RunStatus::Succeeded.as_str().into(),
        ],
    );
    let Some(last_run) = last_run else {
        let kept_since = optional_value::<String>(
            "SELECT min(started_at)::pg_catalog.text FROM segments.refresh_run WHERE segment_id OPERATOR(pg_catalog.=) $1",
            &[segment.into()],
        );
        return Err(SegmentsError::InvalidParameter(format!(
            "segment {segment} has no refresh kept from before that time (history kept since {}; see segments.history_retention)",
            kept_since.unwrap_or_else(|| "its first refresh".into())
        ))
        .into());
    };
    let mut keys: BTreeSet<String> = keys_at(&entity, &stored_members(segment))
        .into_iter()
        .map(|(_, key)| key)
        .collect();
    let changes: Vec<(String, String)> = Spi::connect(|client| {
        spi(client.select(
            "SELECT c.key, c.change FROM segments.membership_change c \
              WHERE c.segment_id OPERATOR(pg_catalog.=) $1 AND c.run_id OPERATOR(pg_catalog.>) $2 \
              ORDER BY c.run_id DESC",
            None,
            &[segment.into(), last_run.into()],
        ))
        .map(|row| {
            (
                spi(row.get::<String>(1)).unwrap_or_default(),
                spi(row.get::<String>(2)).unwrap_or_default(),
            )
        })
        .collect()
    });
    for (key, change) in changes {
        pgrx::check_for_interrupts!();
        if change == "entered" {
            keys.remove(&key);
        } else {
            keys.insert(key);
        }
    }
    Ok(keys.into_iter().collect())
}

/// The keys (as text) of a segment's members as they were after the last
/// refresh at or before `at`, within the history retention.
#[pg_extern(schema = "segments", stable)]
fn members_at(
    segment: i64,
    at: pgrx::datum::TimestampWithTimeZone,
) -> SetOfIterator<'static, String> {
    let keys = crate::pg::sandbox::as_role(
        crate::pg::authorization::current_role(),
        AssertUnwindSafe(|| members_at_impl(segment, at)),
    )
    .or_raise();
    SetOfIterator::new(keys)
}

fn freeze_impl(segment: i64, name: &str) -> Result<i64, Reported> {
    let (source_name, entity_name) = segment_row(segment)?;
    let entity = crate::pg::catalog::registered_entity(&entity_name)?;
    let members = stored_members(segment);
    let keys: Vec<Value> = keys_at(&entity_name, &members)
        .into_iter()
        .map(|(_, key)| match entity.key_kind {
            KeyKind::Integer => key
                .parse::<i64>()
                .map(Value::from)
                .unwrap_or(Value::String(key)),
            KeyKind::Dictionary => Value::String(key),
        })
        .collect();
    let condition = if keys.is_empty() {
        json!({"attribute": entity.key_column, "op": "is_null"})
    } else {
        json!({"attribute": entity.key_column, "op": "in", "value": keys})
    };
    let stamp = spi(Spi::get_one::<String>(
        "SELECT pg_catalog.now()::pg_catalog.text",
    ))
    .unwrap_or_default();
    let definition = json!({"entity": entity_name, "rules": [{"name": format!("Frozen from {source_name} at {stamp}"), "where": condition}]});
    let id = spi(Spi::get_one_with_args::<i64>(
        "SELECT segments.create_segment($1, $2, type => 'static', description => $3)",
        &[
            name.into(),
            pgrx::JsonB(definition).into(),
            format!("Membership of \"{source_name}\" frozen at {stamp} (freeze)").into(),
        ],
    ))
    .expect("create_segment returns an id");
    // The copy's membership is the source's, as of now.
    let count = members.len() as i64;
    crate::pg::sandbox::privileged(AssertUnwindSafe(|| {
        crate::engine::store::copy_membership(segment, id, count)
    }));
    Ok(id)
}

/// A static copy of a segment's current membership, named `name`; returns
/// its id.
#[pg_extern(schema = "segments")]
fn freeze(segment: i64, name: &str) -> i64 {
    crate::pg::authorization::require_editor("freeze segments");
    crate::pg::sandbox::as_role(
        crate::pg::authorization::current_role(),
        AssertUnwindSafe(|| freeze_impl(segment, name)),
    )
    .or_raise()
}
