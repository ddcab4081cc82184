//! Connecting records to sales sequences. After a refresh, every record
//! that entered an active segment connected to a sequence is considered:
//!
//! - a record connected to no sequence of its entity goes to the sequence
//!   of the highest-priority (lowest number; NULL last; then lowest id)
//!   active connected segment it is in;
//! - a record already connected elsewhere moves only when that segment has
//!   `move_existing` set and a higher priority than the segment holding the
//!   record (a record connected by hand or by a deleted segment counts as
//!   held with the lowest priority).
//!
//! Inactive segments connect nobody; connections outlive their segment.

use std::collections::HashMap;

use pgrx::prelude::*;
use pgrx::spi::Spi;

use segments_core::bitmap::Members;
use segments_core::catalog::{Catalog, KeyKind};
use segments_core::sql::ident;

use crate::engine::evaluate::stored_members;
use crate::pg::catalog::SpiCatalog;
use crate::pg::error::OrRaise;
use crate::pg::spi::{optional_value, required, spi};

/// An active segment connected to a sequence.
#[derive(Debug, Clone)]
pub struct Connected {
    pub segment: i64,
    pub name: String,
    pub entity: String,
    pub priority: Option<i32>,
    pub move_existing: bool,
    pub sequence: i64,
}

impl Connected {
    /// Sort key: lower is more important.
    fn rank(&self) -> (bool, i32, i64) {
        (
            self.priority.is_none(),
            self.priority.unwrap_or(0),
            self.segment,
        )
    }
}

/// Where a record should go, given the connected segments it is in and
/// who holds it now (None: nobody; Some(None): by hand or a deleted segment).
pub fn decide<'a>(
    holding_me: &[&'a Connected],
    current: Option<Option<&Connected>>,
) -> Option<&'a Connected> {
    let best = holding_me.iter().min_by_key(|c| c.rank())?;
    match current {
        None => Some(best),
        Some(holder) => {
            let outranks = match holder {
                None => true,
                Some(holder) => best.rank() < holder.rank(),
            };
            let elsewhere = holder.is_none_or(|h| h.sequence != best.sequence);
            (best.move_existing && outranks && elsewhere).then_some(*best)
        }
    }
}

fn connected_segments() -> Vec<Connected> {
    Spi::connect(|client| {
        spi(client.select(
            "SELECT s.id, s.name, s.entity, s.priority, s.move_existing, c.sequence_id
               FROM segments.sequence_segment c JOIN segments.segment s ON s.id = c.segment_id
               JOIN segments.sequence q ON q.id = c.sequence_id
              WHERE s.state = 'active' AND q.state = 'active' ORDER BY s.id",
            None,
            &[],
        ))
        .map(|row| Connected {
            segment: required(&row, 1),
            name: required(&row, 2),
            entity: required(&row, 3),
            priority: spi(row.get(4)),
            move_existing: required(&row, 5),
            sequence: required(&row, 6),
        })
        .collect()
    })
}

/// The segments connected to an active sequence: those whose entered
/// records `assign` connects.
pub fn connected_segment_ids() -> Vec<i64> {
    connected_segments()
        .into_iter()
        .map(|c| c.segment)
        .collect()
}

/// Connects or moves the records that entered segments. `entered` maps a
/// segment to the positions that entered it; `fresh` holds memberships
/// computed in the same refresh (others are read as stored).
pub fn assign(entered: &HashMap<i64, Members>, fresh: &HashMap<i64, Members>) {
    let connected = connected_segments();
    let mut by_entity: HashMap<&str, Vec<&Connected>> = HashMap::new();
    for c in &connected {
        by_entity.entry(c.entity.as_str()).or_default().push(c);
    }
    for (entity, segments) in by_entity {
        let mut candidates = Members::new();
        for c in &segments {
            if let Some(e) = entered.get(&c.segment) {
                candidates |= e;
            }
        }
        if candidates.is_empty() {
            continue;
        }
        let members: Vec<(&Connected, Members)> = segments
            .iter()
            .map(|c| {
                (
                    *c,
                    fresh
                        .get(&c.segment)
                        .cloned()
                        .unwrap_or_else(|| stored_members(c.segment)),
                )
            })
            .collect();
        let keys = crate::engine::evaluate::keys_at(entity, &candidates);
        let key_texts: Vec<String> = keys.iter().map(|(_, k)| k.clone()).collect();
        let current: HashMap<String, Option<i64>> = Spi::connect(|client| {
            spi(client.select(
                "SELECT key, segment_id FROM segments.sequence_record WHERE entity = $1 AND key = ANY ($2)",
                None,
                &[entity.into(), key_texts.into()],
            ))
            .map(|row| (required::<String>(&row, 1), spi(row.get::<i64>(2))))
            .collect()
        });
        let (mut new_keys, mut new_sequences, mut new_segments, mut new_names) =
            (vec![], vec![], vec![], vec![]);
        for (position, key) in keys {
            let holding_me: Vec<&Connected> = members
                .iter()
                .filter(|(_, m)| m.contains(position))
                .map(|(c, _)| *c)
                .collect();
            let holder = current
                .get(&key)
                .map(|segment| segment.and_then(|id| connected.iter().find(|c| c.segment == id)));
            if let Some(target) = decide(&holding_me, holder) {
                new_keys.push(key);
                new_sequences.push(target.sequence);
                new_segments.push(target.segment);
                new_names.push(target.name.clone());
            }
        }
        if new_keys.is_empty() {
            continue;
        }
        spi(Spi::run_with_args(
            "INSERT INTO segments.sequence_record (entity, key, sequence_id, segment_id, segment_name, connected_at)
             SELECT $1, k, q, s, n, now() FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::text[]) AS x(k, q, s, n)
             ON CONFLICT ON CONSTRAINT sequence_record_pkey DO UPDATE
                SET sequence_id = EXCLUDED.sequence_id, segment_id = EXCLUDED.segment_id,
                    segment_name = EXCLUDED.segment_name, connected_at = EXCLUDED.connected_at",
            &[entity.into(), new_keys.into(), new_sequences.into(), new_segments.into(), new_names.into()],
        ));
    }
}

/// Connects the current members of newly connected segments.
#[pg_extern(schema = "segments")]
fn _connect_members(segments: Vec<i64>) {
    let entered: HashMap<i64, Members> = segments
        .iter()
        .map(|&id| (id, stored_members(id)))
        .collect();
    assign(&entered, &HashMap::new());
}

/// The keys of `keys` that no row of the entity table visible to `caller`
/// has, comma-separated (NULL when all exist). A key that is not even of
/// the key's type is missing. The table is read as `caller`, in the
/// sandbox: its row-level security holds (a row the caller may not see is
/// missing, with the same answer as a key no row has), and nothing of the
/// table's owner runs as the extension.
#[pg_extern(schema = "segments", name = "_missing_keys")]
fn _missing_keys_seen_by(entity: &str, keys: Vec<String>, caller: pg_sys::Oid) -> Option<String> {
    missing_keys(entity, keys, caller)
}

/// `_missing_keys`, in plain Rust (compat.rs serves 0.2.0's SQL with it).
pub fn missing_keys(entity: &str, keys: Vec<String>, caller: pg_sys::Oid) -> Option<String> {
    let table = crate::pg::catalog::registered_entity(entity).or_raise();
    table
        .key()
        .and_then(|key| key.check_usable("key", &format!("entity \"{entity}\"")))
        .or_raise();
    // An inner join rather than NOT EXISTS: Citus plans it on distributed
    // tables (a correlated subquery beside a set-returning function it
    // refuses).
    let sql = format!(
        "SELECT DISTINCT k FROM pg_catalog.unnest($1::pg_catalog.text[]) AS k \
         JOIN {} e ON e.{}::pg_catalog.text OPERATOR(pg_catalog.=) k",
        table.table.relation_sql,
        ident(&table.key_column)
    );
    let canonical_keys = canonical(entity, &keys);
    let found: std::collections::HashSet<String> = crate::pg::sandbox::as_role(
        caller,
        std::panic::AssertUnwindSafe(|| {
            Spi::connect(|client| {
                spi(client.select(&sql, None, &[canonical_keys.clone().into()]))
                    .filter_map(|row| spi(row.get::<String>(1)))
                    .collect()
            })
        }),
    );
    let missing: Vec<String> = canonical_keys
        .iter()
        .filter(|k| !found.contains(*k))
        .cloned()
        .collect();
    let originals: Vec<String> = keys
        .iter()
        .zip(canonical(entity, &keys))
        .filter(|(_, c)| missing.contains(c))
        .map(|(k, _)| format!("\"{k}\""))
        .collect();
    (!originals.is_empty()).then(|| originals.join(", "))
}

/// Keys as the entity stores them as text: `007` is `7` for integer keys,
/// a uuid in its canonical lower-case form. A key that is not of the key's
/// type stays as given (and matches nothing).
fn canonical(entity: &str, keys: &[String]) -> Vec<String> {
    if SpiCatalog.entity(entity).map(|e| e.key_kind) == Some(KeyKind::Integer) {
        return keys
            .iter()
            .map(|k| {
                k.trim()
                    .parse::<i64>()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|_| k.clone())
            })
            .collect();
    }
    let type_sql = crate::pg::catalog::registered_key_type(entity).sql;
    keys.iter()
        .map(|k| {
            crate::pg::subtransaction::in_subtransaction(std::panic::AssertUnwindSafe(|| {
                optional_value::<String>(
                    &format!("SELECT ($1::{type_sql})::text"),
                    &[k.as_str().into()],
                )
            }))
            .ok()
            .flatten()
            .unwrap_or_else(|| k.clone())
        })
        .collect()
}

#[pg_extern(schema = "segments")]
fn _canonical_keys(entity: &str, keys: Vec<String>) -> Vec<String> {
    canonical(entity, &keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(segment: i64, priority: Option<i32>, move_existing: bool, sequence: i64) -> Connected {
        Connected {
            segment,
            name: format!("s{segment}"),
            entity: "lead".into(),
            priority,
            move_existing,
            sequence,
        }
    }

    #[test]
    fn the_highest_priority_segment_wins_an_unconnected_record() {
        let (a, b, c) = (
            seg(1, Some(5), false, 10),
            seg(2, Some(1), false, 20),
            seg(3, None, false, 30),
        );
        assert_eq!(decide(&[&a, &b, &c], None).unwrap().segment, 2);
        assert_eq!(
            decide(&[&a, &c], None).unwrap().segment,
            1,
            "NULL priority comes last"
        );
        let (d, e) = (seg(4, Some(1), false, 40), seg(5, Some(1), false, 50));
        assert_eq!(
            decide(&[&e, &d], None).unwrap().segment,
            4,
            "ties go to the lowest id"
        );
        assert!(decide(&[], None).is_none());
    }

    #[test]
    fn connected_records_move_only_to_a_higher_priority_move_existing_segment() {
        let low = seg(1, Some(9), false, 10);
        let high_moving = seg(2, Some(1), true, 20);
        let high_staying = seg(3, Some(1), false, 30);
        assert_eq!(
            decide(&[&high_moving], Some(Some(&low))).unwrap().segment,
            2
        );
        assert!(decide(&[&high_staying], Some(Some(&low))).is_none());
        assert!(
            decide(&[&low], Some(Some(&high_moving))).is_none(),
            "never to a lower priority"
        );
        let lower_moving = seg(4, Some(20), true, 40);
        assert!(decide(&[&lower_moving], Some(Some(&low))).is_none());
        assert_eq!(
            decide(&[&high_moving], Some(None)).unwrap().segment,
            2,
            "hand-made connections can be taken"
        );
        let same_sequence = seg(5, Some(0), true, 10);
        assert!(
            decide(&[&same_sequence], Some(Some(&low))).is_none(),
            "already in that sequence"
        );
    }
}

// ---- the public functions: checks, then the internal SQL as the extension --

/// Creates a sales sequence for an entity, owned by the caller.
#[pg_extern(schema = "segments")]
fn create_sequence(name: Option<&str>, entity: &str) -> i64 {
    crate::pg::authorization::require_sequence_manager("create sequences");
    crate::pg::sandbox::call_internal::<i64>(
        "SELECT segments._create_sequence($1::regrole, $2, $3)",
        vec![
            crate::pg::authorization::current_role().into(),
            name.map(str::to_string).into(),
            entity.to_string().into(),
        ],
    )
    .expect("_create_sequence returns an id")
}

/// Connects segments to a sequence; returns how many were newly connected.
#[pg_extern(schema = "segments")]
fn connect_sequence(sequence: i64, segments: Option<Vec<i64>>) -> i32 {
    crate::pg::authorization::require_sequence_manager("connect segments to sequences");
    crate::pg::sandbox::call_internal::<i32>(
        "SELECT segments._connect_sequence($1::regrole, $2, $3)",
        vec![
            crate::pg::authorization::current_role().into(),
            sequence.into(),
            segments.into(),
        ],
    )
    .unwrap_or(0)
}

/// Disconnects segments from a sequence; records already connected stay.
#[pg_extern(schema = "segments")]
fn disconnect_sequence(sequence: i64, segments: Option<Vec<i64>>) -> i32 {
    crate::pg::authorization::require_sequence_manager("disconnect segments from sequences");
    crate::pg::sandbox::call_internal::<i32>(
        "SELECT segments._disconnect_sequence($1::regrole, $2, $3)",
        vec![
            crate::pg::authorization::current_role().into(),
            sequence.into(),
            segments.into(),
        ],
    )
    .unwrap_or(0)
}

/// Connects records to a sequence by hand. The caller must be able to
/// read the entity table: whether a key exists is not theirs to learn
/// otherwise.
#[pg_extern(schema = "segments")]
fn connect_records(sequence: i64, keys: Option<Vec<String>>) -> i32 {
    crate::pg::authorization::require_sequence_manager("connect records to sequences");
    let relation = crate::pg::spi::optional_value::<pg_sys::Oid>(
        "SELECT e.relation::oid FROM segments.sequence q JOIN segments.entity e ON e.name OPERATOR(pg_catalog.=) q.entity \
          WHERE q.id OPERATOR(pg_catalog.=) $1",
        &[sequence.into()],
    );
    if let Some(relation) = relation {
        crate::pg::authorization::require_select(
            relation,
            &format!("the entity table of sequence {sequence}"),
        );
    }
    crate::pg::sandbox::call_internal::<i32>(
        "SELECT segments._connect_records($1::regrole, $2, $3)",
        vec![
            crate::pg::authorization::current_role().into(),
            sequence.into(),
            keys.into(),
        ],
    )
    .unwrap_or(0)
}

/// Activates or deactivates a sequence: an inactive sequence connects
/// nobody new and keeps the records it has. Returns whether it changed.
#[pg_extern(schema = "segments")]
fn activate_sequence(sequence: i64) -> bool {
    crate::pg::authorization::require_sequence_manager("activate sequences");
    crate::pg::sandbox::call_internal::<bool>(
        "SELECT segments._set_sequence_state($1::regrole, $2, 'active')",
        vec![
            crate::pg::authorization::current_role().into(),
            sequence.into(),
        ],
    )
    .unwrap_or(false)
}

/// Deactivates a sequence (see `activate_sequence`).
#[pg_extern(schema = "segments")]
fn deactivate_sequence(sequence: i64) -> bool {
    crate::pg::authorization::require_sequence_manager("deactivate sequences");
    crate::pg::sandbox::call_internal::<bool>(
        "SELECT segments._set_sequence_state($1::regrole, $2, 'inactive')",
        vec![
            crate::pg::authorization::current_role().into(),
            sequence.into(),
        ],
    )
    .unwrap_or(false)
}

/// Drops a sequence with its segment connections and connected records.
#[pg_extern(schema = "segments")]
fn drop_sequence(sequence: i64) {
    crate::pg::authorization::require_sequence_manager("drop sequences");
    crate::pg::sandbox::run_internal(
        "SELECT segments._drop_sequence($1::regrole, $2)",
        vec![
            crate::pg::authorization::current_role().into(),
            sequence.into(),
        ],
    );
}

/// Disconnects records from a sequence; returns how many were connected.
#[pg_extern(schema = "segments")]
fn disconnect_records(sequence: i64, keys: Option<Vec<String>>) -> i32 {
    crate::pg::authorization::require_sequence_manager("disconnect records from sequences");
    crate::pg::sandbox::call_internal::<i32>(
        "SELECT segments._disconnect_records($1::regrole, $2, $3)",
        vec![
            crate::pg::authorization::current_role().into(),
            sequence.into(),
            keys.into(),
        ],
    )
    .unwrap_or(0)
}
