//! Reading memberships: previews, membership tests, overlaps, the portable
//! bitmap, and the value picker of the segment builder. Everything runs
//! with the caller's privileges.

use std::collections::HashMap;

use pgrx::prelude::*;
use pgrx::spi::Spi;
use pgrx::JsonB;
use roaring::RoaringBitmap;

use segments_core::bitmap::{key_of, position_of, Members};
use segments_core::catalog::KeyKind;
use segments_core::sql::ident;

use crate::engine::evaluate::{cached_members, membership_version, stored_members};
use crate::pg::error::{OrRaise, Raise, Reported, SegmentsError};
use crate::pg::spi::{optional_value, required, spi};

/// A segment's entity, or 42704 when the segment does not exist.
fn segment_entity(segment: i64) -> Result<segments_core::catalog::Entity, Reported> {
    let entity = optional_value::<String>(
        "SELECT entity FROM segments.segment WHERE id = $1",
        &[segment.into()],
    )
    .ok_or_else(|| {
        crate::engine::citus::refuse_on_worker("functions of segments");
        SegmentsError::no_such_segment(segment)
    })?;
    entity_named(&entity)
}

fn entity_named(name: &str) -> Result<segments_core::catalog::Entity, Reported> {
    crate::pg::catalog::registered_entity(name)
        .inspect_err(|_| crate::engine::citus::refuse_on_worker("functions of segments"))
}

/// The bitmap position of a key given as text, if the key has one.
fn position_of_key(
    entity: &segments_core::catalog::Entity,
    key: &str,
) -> Result<Option<u64>, Reported> {
    key_position(&entity.name, entity.key_kind, entity.key_type_sql(), key)
}

/// The bitmap position of `key` (as text) of an entity whose keys are of
/// `kind` and `key_type`: integer keys are their own positions, dictionary
/// keys are looked up, cast through the key type so that e.g. an
/// upper-case uuid matches. None: a dictionary key never seen.
fn key_position(
    entity: &str,
    kind: KeyKind,
    key_type: &str,
    key: &str,
) -> Result<Option<u64>, Reported> {
    match kind {
        KeyKind::Integer => key
            .trim()
            .parse::<i64>()
            .map(|k| Some(position_of(k)))
            .map_err(|_| {
                SegmentsError::InvalidParameter(format!(
                    "\"{key}\" is not a key of entity \"{entity}\", whose keys are integers"
                ))
                .into()
            }),
        KeyKind::Dictionary => {
            let sql = format!(
                "SELECT position FROM segments.entity_key WHERE entity OPERATOR(pg_catalog.=) $1 \
                    AND key OPERATOR(pg_catalog.=) ($2::{key_type})::pg_catalog.text"
            );
            Ok(optional_value::<i64>(&sql, &[entity.into(), key.into()]).map(|p| p as u64))
        }
    }
}

const MEMBERSHIP_LOOKUP: &str =
    "SELECT e.name, e.key_kind, e.key_type::text, m.xmin::text || m.ctid::text
       FROM segments.segment s JOIN segments.entity e ON e.name = s.entity
       LEFT JOIN segments.membership m ON m.segment_id = s.id
      WHERE s.id = $1";

thread_local! {
    /// `MEMBERSHIP_LOOKUP`, planned once per backend: is_member is called
    /// once per row of the queries that use it.
    static MEMBERSHIP_LOOKUP_PLAN: std::cell::RefCell<Option<pgrx::spi::OwnedPreparedStatement>> =
        const { std::cell::RefCell::new(None) };
}

/// What `is_member` needs of a segment: its entity, the entity's key kind
/// and type, and its membership's row version.
type Lookup = (String, KeyKind, String, Option<String>);

/// What a statement sees, and as whom: two snapshots with the same
/// identity see the same rows (same transaction and command, and no
/// transaction ended between them).
#[derive(Clone, Copy, PartialEq, Eq)]
struct SnapshotIdentity {
    role: pgrx::pg_sys::Oid,
    transaction: u32,
    command: u32,
    completions: u64,
    xmin: u32,
    xmax: u32,
}

/// The active snapshot's identity, None without one.
fn snapshot_identity() -> Option<SnapshotIdentity> {
    // SAFETY: the active snapshot is read only when one is set.
    unsafe {
        if !pgrx::pg_sys::ActiveSnapshotSet() {
            return None;
        }
        let snapshot = &*pgrx::pg_sys::GetActiveSnapshot();
        Some(SnapshotIdentity {
            role: pgrx::pg_sys::GetUserId(),
            transaction: crate::pg::versions::local_transaction_id(),
            command: snapshot.curcid,
            completions: snapshot.snapXactCompletionCount,
            xmin: snapshot.xmin.into_inner(),
            xmax: snapshot.xmax.into_inner(),
        })
    }
}

thread_local! {
    /// Lookups made under one snapshot: a query calling is_member for each
    /// of its rows looks the segment up once (the membership it sees cannot
    /// change within its snapshot).
    static LOOKUPS: std::cell::RefCell<Option<(SnapshotIdentity, HashMap<i64, Lookup>)>> =
        const { std::cell::RefCell::new(None) };
}

/// `membership_lookup`, once per segment and snapshot.
fn membership_lookup_cached(segment: i64) -> Result<Lookup, Reported> {
    let Some(identity) = snapshot_identity() else {
        return membership_lookup(segment);
    };
    let known = LOOKUPS.with(|cache| {
        cache
            .borrow()
            .as_ref()
            .filter(|(seen, _)| *seen == identity)
            .and_then(|(_, lookups)| lookups.get(&segment).cloned())
    });
    if let Some(lookup) = known {
        return Ok(lookup);
    }
    let lookup = membership_lookup(segment)?;
    LOOKUPS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.as_ref().is_none_or(|(seen, _)| *seen != identity) {
            *cache = Some((identity, HashMap::new()));
        }
        if let Some((_, lookups)) = cache.as_mut() {
            lookups.insert(segment, lookup.clone());
        }
    });
    Ok(lookup)
}

/// Everything `is_member` needs in one catalog query: the key kind and
/// type of the segment's entity, and its membership's row version.
fn membership_lookup(segment: i64) -> Result<Lookup, Reported> {
    let row = Spi::connect(|client| {
        let table = MEMBERSHIP_LOOKUP_PLAN.with(|plan| {
            let mut plan = plan.borrow_mut();
            if plan.is_none() {
                let prepared =
                    spi(client.prepare(MEMBERSHIP_LOOKUP, &[pgrx::pg_sys::INT8OID.into()]));
                *plan = Some(prepared.keep());
            }
            spi(client.select(
                plan.as_ref().expect("prepared above"),
                Some(1),
                &[segment.into()],
            ))
        });
        if table.is_empty() {
            return None;
        }
        let row = table.first();
        Some((
            required::<String>(&row, 1),
            required::<String>(&row, 2),
            required::<String>(&row, 3),
            spi(row.get::<String>(4)),
        ))
    });
    let (entity, kind, key_type, version) = row.ok_or_else(|| {
        crate::engine::citus::refuse_on_worker("is_member");
        SegmentsError::no_such_segment(segment)
    })?;
    let kind = if kind == "integer" {
        KeyKind::Integer
    } else {
        KeyKind::Dictionary
    };
    Ok((entity, kind, key_type, version))
}

#[pg_extern(schema = "segments", stable, parallel_safe)]
fn _is_member(segment: i64, key: &str) -> bool {
    let (entity, kind, key_type, version) = membership_lookup_cached(segment).or_raise();
    let Some(position) = key_position(&entity, kind, &key_type, key).or_raise() else {
        return false;
    };
    cached_members(segment, version).contains(position)
}

#[pg_extern(schema = "segments", stable)]
fn _segments_of(
    entity: &str,
    key: &str,
) -> TableIterator<'static, (name!(segment_id, i64), name!(name, String))> {
    // Runs as the caller, in the sandbox (fixed search_path).
    crate::pg::sandbox::as_role(
        crate::pg::authorization::current_role(),
        std::panic::AssertUnwindSafe(|| {
            let entity = entity_named(entity).or_raise();
            let Some(position) = position_of_key(&entity, key).or_raise() else {
                return TableIterator::new(Vec::new());
            };
            let rows: Vec<(i64, String, Vec<u8>)> = Spi::connect(|client| {
                spi(client.select(
                "SELECT s.id, s.name, m.members FROM segments.segment s JOIN segments.membership m ON m.segment_id = s.id \
                 WHERE s.entity = $1 ORDER BY s.id",
                None,
                &[entity.name.as_str().into()],
            ))
            .map(|row| (required(&row, 1), required(&row, 2), required(&row, 3)))
            .collect()
            });
            let found: Vec<(i64, String)> = rows
                .into_iter()
                .filter(|(_, _, bytes)| {
                    segments_core::bitmap::deserialize(bytes)
                        .map(|m| m.contains(position))
                        .unwrap_or(false)
                })
                .map(|(id, name, _)| (id, name))
                .collect();
            TableIterator::new(found)
        }),
    )
}

/// The keys (as text) of the first `n` members in key order.
fn first_keys(entity: &segments_core::catalog::Entity, members: &Members, n: usize) -> Vec<String> {
    match entity.key_kind {
        KeyKind::Integer => segments_core::bitmap::first_in_key_order(members, n)
            .into_iter()
            .map(|p| key_of(p).to_string())
            .collect(),
        KeyKind::Dictionary => {
            // The first n members by position (the order keys were first
            // seen in): reading n keys, not every member's.
            let positions: Vec<i64> = members.iter().take(n).map(|p| p as i64).collect();
            Spi::connect(|client| {
                spi(client.select(
                    "SELECT key FROM segments.entity_key WHERE entity = $1 AND position = ANY ($2) ORDER BY key LIMIT $3",
                    None,
                    &[entity.name.as_str().into(), positions.into(), (n as i64).into()],
                ))
                .filter_map(|row| spi(row.get::<String>(1)))
                .collect()
            })
        }
    }
}

/// The first `n` members (by key) as JSON objects of the entity's columns.
#[pg_extern(schema = "segments", stable)]
fn preview(segment: i64, n: default!(i32, 100)) -> SetOfIterator<'static, JsonB> {
    // Runs as the caller, in the sandbox (fixed search_path).
    crate::pg::sandbox::as_role(
        crate::pg::authorization::current_role(),
        std::panic::AssertUnwindSafe(|| {
            if n < 0 {
                SegmentsError::InvalidParameter(format!("n must be 0 or more, not {n}")).raise();
            }
            let entity = segment_entity(segment).or_raise();
            let keys = first_keys(&entity, &stored_members(segment), n as usize);
            let type_sql = optional_value::<String>(
                "SELECT key_type::text FROM segments.entity WHERE name = $1",
                &[entity.name.as_str().into()],
            )
            .unwrap_or_else(|| "text".into());
            let key = ident(&entity.key_column);
            // A split segment's rows carry the member's group.
            let row = if crate::pg::catalog::split_groups(segment).is_empty() {
                "to_jsonb(e)".to_string()
            } else {
                format!(
                    "to_jsonb(e) OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('split_group', \
                     segments.split_group($2, e.{key}::pg_catalog.text))"
                )
            };
            let sql = format!(
                "SELECT {row} FROM {} e WHERE e.{key} = ANY ($1::text[]::{type_sql}[]) ORDER BY e.{key}",
                entity.table.relation_sql
            );
            let rows: Vec<JsonB> = Spi::connect(|client| {
                spi(client.select(&sql, None, &[keys.into(), segment.into()]))
                    .filter_map(|row| spi(row.get::<JsonB>(1)))
                    .collect()
            });
            SetOfIterator::new(rows)
        }),
    )
}

/// Members in a only, in both, in b only.
#[pg_extern(schema = "segments", stable)]
fn overlap(
    a: i64,
    b: i64,
) -> TableIterator<'static, (name!(only_a, i64), name!(both, i64), name!(only_b, i64))> {
    // Runs as the caller, in the sandbox (fixed search_path).
    crate::pg::sandbox::as_role(
        crate::pg::authorization::current_role(),
        std::panic::AssertUnwindSafe(|| {
            let (entity_a, entity_b) = (segment_entity(a).or_raise(), segment_entity(b).or_raise());
            if entity_a.name != entity_b.name {
                SegmentsError::InvalidParameter(format!(
                    "segments {a} and {b} group different entities (\"{}\" and \"{}\")",
                    entity_a.name, entity_b.name
                ))
                .raise();
            }
            let (ma, mb) = (
                cached_members(a, membership_version(a)),
                cached_members(b, membership_version(b)),
            );
            let both = ma.intersection_len(&mb);
            TableIterator::once((
                (ma.len() - both) as i64,
                both as i64,
                (mb.len() - both) as i64,
            ))
        }),
    )
}

/// The membership in the portable Roaring format: the standard 32-bit
/// format when every position fits in 32 bits (non-negative integer keys
/// below 2^32, or dictionary positions), else the 64-bit portable format.
pub fn portable_bytes(members: &Members) -> Vec<u8> {
    if members.max().is_none_or(|m| m <= u32::MAX as u64) {
        // Every position is in the treemap's first bitmap: take it whole.
        let small: RoaringBitmap = members
            .bitmaps()
            .next()
            .map(|(_, b)| b.clone())
            .unwrap_or_default();
        let mut bytes = Vec::with_capacity(small.serialized_size());
        small
            .serialize_into(&mut bytes)
            .expect("writing to a Vec cannot fail");
        bytes
    } else {
        segments_core::bitmap::serialize(members)
    }
}

#[pg_extern(schema = "segments", stable)]
fn bitmap(segment: i64) -> Vec<u8> {
    // Runs as the caller, in the sandbox (fixed search_path).
    crate::pg::sandbox::as_role(
        crate::pg::authorization::current_role(),
        std::panic::AssertUnwindSafe(|| {
            segment_entity(segment).or_raise();
            portable_bytes(&stored_members(segment))
        }),
    )
}

/// The distinct values of an attribute with their row counts, in the
/// column's own order, optionally only those containing `search`
/// (case-insensitive): the value picker of the segment builder.
#[pg_extern(schema = "segments", stable)]
fn attribute_values(
    entity: &str,
    attribute: &str,
    search: default!(Option<&str>, "NULL"),
    n: default!(i32, 50),
) -> TableIterator<'static, (name!(value, String), name!(rows, i64))> {
    // Runs as the caller, in the sandbox (fixed search_path).
    crate::pg::sandbox::as_role(
        crate::pg::authorization::current_role(),
        std::panic::AssertUnwindSafe(|| {
            let entity = entity_named(entity).or_raise();
            if entity.table.column(attribute).is_none() {
                SegmentsError::UndefinedColumn(format!(
                    "column \"{attribute}\" does not exist on entity \"{}\"",
                    entity.name
                ))
                .with_hint(segments_core::spelling::perhaps(
                    attribute,
                    entity.table.column_names(),
                ))
                .raise();
            }
            if n < 0 {
                SegmentsError::InvalidParameter(format!("n must be 0 or more, not {n}")).raise();
            }
            let column = format!("e.{}", ident(attribute));
            let sql = format!(
                "SELECT {column}::text, count(*) FROM {} e WHERE {column} IS NOT NULL \
             AND ($1::text IS NULL OR strpos(lower({column}::text), lower($1)) > 0) \
             GROUP BY {column} ORDER BY {column} LIMIT $2",
                entity.table.relation_sql
            );
            let rows: Vec<(String, i64)> = Spi::connect(|client| {
                spi(client.select(&sql, None, &[search.into(), (n as i64).into()]))
                    .map(|row| {
                        (
                            spi(row.get::<String>(1)).unwrap_or_default(),
                            spi(row.get::<i64>(2)).unwrap_or(0),
                        )
                    })
                    .collect()
            });
            TableIterator::new(rows)
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portable_format_is_32_bit_when_it_fits() {
        let small: Members = [1u64, 7, 100_000].into_iter().collect();
        let bytes = portable_bytes(&small);
        let read = RoaringBitmap::deserialize_from(&bytes[..]).unwrap();
        assert_eq!(read.iter().collect::<Vec<_>>(), vec![1, 7, 100_000]);
        let large: Members = [1u64, 1 << 40].into_iter().collect();
        let read = roaring::RoaringTreemap::deserialize_from(&portable_bytes(&large)[..]).unwrap();
        assert_eq!(read, large);
    }
}

/// The bitmap positions of a segment's members (integer keys are their own
/// positions).
#[pg_extern(schema = "segments", stable, parallel_safe)]
fn member_positions(segment: i64) -> SetOfIterator<'static, i64> {
    let members = stored_members(segment);
    SetOfIterator::new(members.into_iter().map(key_of))
}

/// The positions in a serialized bitmap. The members views join these to
/// the entity table: a pure function of its argument, it gives the same
/// answer wherever it runs, which on Citus is on the workers, next to the
/// shards, with the bitmap shipped to them.
#[pg_extern(schema = "segments", immutable, parallel_safe, strict)]
fn bitmap_positions(bitmap: &[u8]) -> SetOfIterator<'static, i64> {
    let members =
        segments_core::bitmap::deserialize(bitmap).unwrap_or_else(|e| crate::pg::error::corrupt(e));
    SetOfIterator::new(members.into_iter().map(key_of))
}
