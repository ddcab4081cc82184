//! Storing a full computation of traits as its difference from what is
//! stored: only values that changed, appeared or vanished are written.
//!
//! The system refresh computes every trait every day. Writing every value
//! again (delete all, insert all) wrote gigabytes of WAL for ten traits
//! over a million customers (10 million rows and their index entries),
//! which standbys replay, archives keep, and WAL capture's slot reads
//! twice (bench/NOTES.md), while most values are the same as the day
//! before. Here each chunk of computed rows is compared with the stored
//! values of its keys (one index lookup per key and trait), and a trait
//! whose stored values outnumber its computed ones after the last chunk
//! (a key whose related rows all went) has the vanished keys found by a
//! merge of two sorted key lists. Memory stays one chunk, whatever the
//! number of keys.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;

use pgrx::spi::Spi;

use crate::pg::sandbox::privileged;
use crate::pg::spi::{required, spi};

/// Keys deleted at a time when vanished keys are swept.
const SWEEP_BATCH: usize = 10_000;

/// The stored values of one scan's traits, brought in line with a full
/// computation chunk by chunk.
pub struct Difference {
    /// The traits of the scan, in the order of each row's values.
    ids: Vec<i64>,
    /// How many values each trait has in the computation so far.
    computed: Vec<i64>,
    /// Whether no value of these traits was stored when the computation
    /// began (their first): a key comes in one chunk only, so no chunk
    /// has stored values to compare with, and none are looked up.
    first: bool,
}

/// A computed row: the key, then one value per trait (JSON text; None
/// where the trait has no value for the key).
pub type Row = (String, Vec<Option<String>>);

impl Difference {
    pub fn new(ids: Vec<i64>) -> Difference {
        let computed = vec![0; ids.len()];
        let first = !privileged(AssertUnwindSafe(|| {
            crate::pg::spi::optional_value::<bool>(
                "SELECT EXISTS (SELECT FROM segments.trait_value WHERE trait_id OPERATOR(pg_catalog.=) ANY ($1))",
                &[ids.clone().into()],
            )
        }))
        .unwrap_or(true);
        Difference {
            ids,
            computed,
            first,
        }
    }

    /// How many values the computation gave, all traits together.
    pub fn values(&self) -> i64 {
        self.computed.iter().sum()
    }

    /// Writes what differs between the stored values of these rows' keys
    /// and the rows (as the extension).
    pub fn chunk(&mut self, rows: &[Row]) {
        if rows.is_empty() {
            return;
        }
        let keys: Vec<String> = rows.iter().map(|(key, _)| key.clone()).collect();
        let stored = if self.first {
            HashMap::new()
        } else {
            self.stored_values(&keys)
        };
        // Per trait: the keys whose stored value goes, and the values
        // written in their place or anew.
        let mut removed: Vec<Vec<String>> = vec![Vec::new(); self.ids.len()];
        let (mut trait_ids, mut written_keys, mut values) = (Vec::new(), Vec::new(), Vec::new());
        for (key, row) in rows {
            for (i, value) in row.iter().enumerate() {
                let before = stored.get(&(self.ids[i], key.as_str()));
                if value.is_some() {
                    self.computed[i] += 1;
                }
                match (value, before) {
                    (Some(value), Some(before)) if value == before => {}
                    (Some(value), before) => {
                        if before.is_some() {
                            removed[i].push(key.clone());
                        }
                        trait_ids.push(self.ids[i]);
                        written_keys.push(key.clone());
                        values.push(value.clone());
                    }
                    (None, Some(_)) => removed[i].push(key.clone()),
                    (None, None) => {}
                }
            }
        }
        for (i, keys) in removed.into_iter().enumerate() {
            remove(self.ids[i], keys);
        }
        insert(trait_ids, written_keys, values);
    }

    /// The stored values of `keys` for this scan's traits, by trait and key
    /// (JSON text, as the computation writes it): one probe of the primary
    /// key per (trait, key). (As `key = ANY ($2)` PostgreSQL may instead
    /// read every stored value of the traits and filter them, for every
    /// chunk: hours at 10M records.)
    fn stored_values<'k>(&self, keys: &'k [String]) -> HashMap<(i64, &'k str), String> {
        let by_key: HashMap<&str, &'k str> =
            keys.iter().map(|k| (k.as_str(), k.as_str())).collect();
        privileged(AssertUnwindSafe(|| {
            Spi::connect(|client| {
                spi(client.select(
                    "SELECT v.trait_id, v.key, v.value::pg_catalog.text \
                       FROM pg_catalog.unnest($1::pg_catalog.int8[]) AS t(id) \
                      CROSS JOIN pg_catalog.unnest($2::pg_catalog.text[]) AS k(key) \
                       JOIN segments.trait_value v ON v.trait_id OPERATOR(pg_catalog.=) t.id \
                                                  AND v.key OPERATOR(pg_catalog.=) k.key",
                    None,
                    &[self.ids.clone().into(), keys.to_vec().into()],
                ))
                .filter_map(|row| {
                    let key: String = required(&row, 2);
                    let key = *by_key.get(key.as_str())?;
                    Some(((required::<i64>(&row, 1), key), required::<String>(&row, 3)))
                })
                .collect()
            })
        }))
    }

    /// After the last chunk: deletes the stored values of keys the
    /// computation no longer gave. `computed_keys(i)` is the SQL (run as
    /// the current role, the traits' owner) of the keys trait `i` has a
    /// value for, as text; it is read only for a trait whose stored values
    /// outnumber its computed ones.
    pub fn finish(self, computed_keys: impl Fn(usize) -> String) {
        for (i, &id) in self.ids.iter().enumerate() {
            let stored = privileged(AssertUnwindSafe(|| {
                crate::pg::spi::optional_value::<i64>(
                    "SELECT pg_catalog.count(*) FROM segments.trait_value WHERE trait_id OPERATOR(pg_catalog.=) $1",
                    &[id.into()],
                )
            }))
            .unwrap_or(0);
            // Every computed value is stored: equal counts, equal sets.
            if stored > self.computed[i] {
                sweep(id, &computed_keys(i));
            }
        }
    }
}

/// Stores values (trait, key, JSON text), none of them stored yet (as the
/// extension).
pub fn insert(trait_ids: Vec<i64>, keys: Vec<String>, values: Vec<String>) {
    if values.is_empty() {
        return;
    }
    privileged(AssertUnwindSafe(|| {
        spi(Spi::run_with_args(
            "INSERT INTO segments.trait_value (trait_id, key, value) \
             SELECT t, k, v::pg_catalog.jsonb \
               FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.text[]), \
                               pg_catalog.unnest($3::pg_catalog.text[])) AS u(t, k, v)",
            &[trait_ids.into(), keys.into(), values.into()],
        ))
    }));
}

/// Deletes trait `id`'s values of `keys` (as the extension).
fn remove(id: i64, keys: Vec<String>) {
    if keys.is_empty() {
        return;
    }
    privileged(AssertUnwindSafe(|| {
        spi(Spi::run_with_args(
            "DELETE FROM segments.trait_value WHERE trait_id OPERATOR(pg_catalog.=) $1 \
               AND key OPERATOR(pg_catalog.=) ANY ($2)",
            &[id.into(), keys.into()],
        ))
    }));
}

/// Deletes the stored values of trait `id` whose key `computed` (SQL of
/// the keys with a value, as text) no longer gives: both key lists sorted
/// by byte (`COLLATE "C"`, Rust's order of strings) and merged.
fn sweep(id: i64, computed: &str) {
    let computed =
        format!("SELECT s.k FROM ({computed}) s(k) ORDER BY s.k COLLATE pg_catalog.\"C\"");
    Spi::connect(|client| {
        let mut computed = client.open_cursor(computed.as_str(), &[]);
        let mut stored = privileged(AssertUnwindSafe(|| {
            client.open_cursor(
                "SELECT key FROM segments.trait_value WHERE trait_id OPERATOR(pg_catalog.=) $1 \
                  ORDER BY key COLLATE pg_catalog.\"C\"",
                &[id.into()],
            )
        }));
        let fetch = |cursor: &mut pgrx::spi::SpiCursor<'_>| -> Vec<String> {
            spi(cursor.fetch(SWEEP_BATCH as i64))
                .filter_map(|row| spi(row.get::<String>(1)))
                .collect()
        };
        let mut next_computed = fetch(&mut computed).into_iter();
        let mut current = next_computed.next();
        let mut vanished = Vec::new();
        loop {
            let batch = privileged(AssertUnwindSafe(|| fetch(&mut stored)));
            if batch.is_empty() {
                break;
            }
            for key in batch {
                // Computed keys before this stored one have no stored
                // counterpart left to compare (they were written above).
                while current
                    .as_ref()
                    .is_some_and(|c| c.as_bytes() < key.as_bytes())
                {
                    current = next_computed.next().or_else(|| {
                        next_computed = fetch(&mut computed).into_iter();
                        next_computed.next()
                    });
                }
                if current.as_deref() != Some(key.as_str()) {
                    vanished.push(key);
                }
                if vanished.len() >= SWEEP_BATCH {
                    remove(id, std::mem::take(&mut vanished));
                }
            }
        }
        remove(id, vanished);
    });
}
