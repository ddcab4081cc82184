//! What a decoded change means for live segments: WAL capture feeds the
//! `pgoutput` messages of a slot to a `Decoder`, which keeps the changed
//! keys of the tables live segments read, exactly as the capture triggers
//! queue them (`src/engine/live/capture.rs`): the entity key of each
//! inserted, updated or deleted row (the old one too when it changed), or
//! "everything changed" (no key) for a TRUNCATE, a bulk change, or a row
//! whose key the WAL does not carry.

use std::collections::{BTreeSet, HashMap};

use crate::pgoutput::{Message, Value};

/// A table live segments read, as capture maps its rows to entity keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub entity: String,
    /// The column holding the entity key (the key, or a related table's
    /// foreign key).
    pub key_column: String,
    /// None for the entity's own table, else the related table's name.
    pub source: Option<String>,
    /// The columns live segments read: an UPDATE that changes none of them
    /// (nor the key) is skipped when the WAL carries the old row.
    pub compared: Vec<String>,
}

/// The changed keys of one (entity, source), or everything.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Keys {
    pub everything: bool,
    pub keys: BTreeSet<String>,
}

/// A relation as its last relation message described it.
struct Relation {
    full_identity: bool,
    columns: Vec<(String, bool)>,
}

/// Turns a slot's messages into changed keys.
pub struct Decoder {
    captured: HashMap<u32, Vec<Captured>>,
    relations: HashMap<u32, Relation>,
    /// By (entity, source).
    pub changes: HashMap<(String, Option<String>), Keys>,
    /// The end of the last complete transaction seen: decoding resumes
    /// there.
    pub decoded_upto: Option<u64>,
    max_keys: usize,
}

impl Decoder {
    /// A decoder for the tables in `captured` (by relation oid); more than
    /// `max_keys` keys of one (entity, source) become "everything".
    pub fn new(captured: HashMap<u32, Vec<Captured>>, max_keys: usize) -> Decoder {
        Decoder {
            captured,
            relations: HashMap::new(),
            changes: HashMap::new(),
            decoded_upto: None,
            max_keys,
        }
    }

    /// Takes one message.
    pub fn feed(&mut self, message: Message) {
        match message {
            Message::Commit { end_lsn } => self.decoded_upto = Some(end_lsn),
            Message::Relation {
                id,
                replica_identity,
                columns,
                ..
            } => {
                let columns = columns
                    .into_iter()
                    .map(|c| (c.name, c.in_identity))
                    .collect();
                self.relations.insert(
                    id,
                    Relation {
                        full_identity: replica_identity == b'f',
                        columns,
                    },
                );
            }
            Message::Insert { relation, new } => {
                for c in self.captured_on(relation) {
                    let key = self.key_of(relation, &c, &new);
                    self.queue(&c, key);
                }
            }
            Message::Update { relation, old, new } => {
                for c in self.captured_on(relation) {
                    self.update(relation, &c, old.as_deref(), &new);
                }
            }
            Message::Delete { relation, old } => {
                for c in self.captured_on(relation) {
                    let key = match self.key_of(relation, &c, &old) {
                        // NULL in the old row: a NULL key only if the WAL
                        // carries the key column at all.
                        Found::Null if !self.carries_old_key(relation, &c) => Found::Unknown,
                        found => found,
                    };
                    self.queue(&c, key);
                }
            }
            Message::Truncate { relations } => {
                for relation in relations {
                    for c in self.captured_on(relation) {
                        self.queue(&c, Found::Unknown);
                    }
                }
            }
            Message::Begin | Message::Other => {}
        }
    }

    /// The captures of a relation (cloned: `queue` needs `self`).
    fn captured_on(&self, relation: u32) -> Vec<Captured> {
        self.captured.get(&relation).cloned().unwrap_or_default()
    }

    /// An update: the new key, the old one when it differs, nothing when
    /// the old row shows that no compared column changed.
    fn update(&mut self, relation: u32, c: &Captured, old: Option<&[Value]>, new: &[Value]) {
        let new_key = self.key_of(relation, c, new);
        let full = self
            .relations
            .get(&relation)
            .is_some_and(|r| r.full_identity);
        match old {
            Some(old) if full => {
                let unchanged = c.compared.iter().chain(std::iter::once(&c.key_column)).all(
                    |column| match self.position(relation, column) {
                        Some(i) => match (old.get(i), new.get(i)) {
                            (_, Some(Value::Unchanged)) => true,
                            (Some(a), Some(b)) => a == b,
                            _ => false,
                        },
                        None => false,
                    },
                );
                if unchanged {
                    return;
                }
                let old_key = self.key_of(relation, c, old);
                if old_key != new_key {
                    self.queue(c, old_key);
                }
            }
            Some(old) => {
                // The identity changed: its old values.
                let old_key = self.key_of(relation, c, old);
                let old_key = match old_key {
                    Found::Null if !self.carries_old_key(relation, c) => Found::Unknown,
                    found => found,
                };
                if old_key != new_key {
                    self.queue(c, old_key);
                }
            }
            None => {
                // No old row: the identity did not change. The key did not
                // either if it is part of the identity; otherwise it may
                // have, and its old value is unknown.
                if !self.carries_old_key(relation, c) {
                    self.queue(c, Found::Unknown);
                }
            }
        }
        self.queue(c, new_key);
    }

    /// Whether the WAL carries a row's old key column (REPLICA IDENTITY
    /// FULL, or the key column is part of the identity).
    fn carries_old_key(&self, relation: u32, c: &Captured) -> bool {
        self.relations.get(&relation).is_some_and(|r| {
            r.full_identity
                || r.columns
                    .iter()
                    .any(|(name, in_identity)| *in_identity && *name == c.key_column)
        })
    }

    fn position(&self, relation: u32, column: &str) -> Option<usize> {
        self.relations
            .get(&relation)?
            .columns
            .iter()
            .position(|(name, _)| name == column)
    }

    /// The key column's value in a tuple.
    fn key_of(&self, relation: u32, c: &Captured, tuple: &[Value]) -> Found {
        match self
            .position(relation, &c.key_column)
            .and_then(|i| tuple.get(i))
        {
            Some(Value::Text(key)) => Found::Key(key.clone()),
            Some(Value::Null) => Found::Null,
            // Renamed or dropped since, binary, or TOASTed and unchanged.
            _ => Found::Unknown,
        }
    }

    fn queue(&mut self, c: &Captured, key: Found) {
        let keys = self
            .changes
            .entry((c.entity.clone(), c.source.clone()))
            .or_default();
        if keys.everything {
            return;
        }
        match key {
            Found::Key(key) => {
                keys.keys.insert(key);
                if keys.keys.len() > self.max_keys {
                    keys.everything = true;
                    keys.keys.clear();
                }
            }
            // A row without a key belongs to no entity.
            Found::Null => {}
            Found::Unknown => {
                keys.everything = true;
                keys.keys.clear();
            }
        }
    }
}

/// A key column's value in a decoded row.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    Key(String),
    Null,
    /// Not in the row: every key may have changed.
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::Column;

    fn text(v: &str) -> Value {
        Value::Text(v.into())
    }

    fn relation(id: u32, identity: u8, columns: &[(&str, bool)]) -> Message {
        Message::Relation {
            id,
            namespace: "public".into(),
            name: format!("t{id}"),
            replica_identity: identity,
            columns: columns
                .iter()
                .map(|(n, k)| Column {
                    in_identity: *k,
                    name: n.to_string(),
                    type_oid: 23,
                })
                .collect(),
        }
    }

    /// customers (1: id key, country) and orders (2: id, customer_id, amount).
    fn decoder() -> Decoder {
        let customers = Captured {
            entity: "customer".into(),
            key_column: "id".into(),
            source: None,
            compared: vec!["country".into()],
        };
        let orders = Captured {
            entity: "customer".into(),
            key_column: "customer_id".into(),
            source: Some("orders".into()),
            compared: vec!["amount".into()],
        };
        Decoder::new(HashMap::from([(1, vec![customers]), (2, vec![orders])]), 3)
    }

    fn keys(d: &Decoder, source: Option<&str>) -> (bool, Vec<String>) {
        let k = d
            .changes
            .get(&("customer".to_string(), source.map(str::to_string)))
            .cloned()
            .unwrap_or_default();
        (k.everything, k.keys.into_iter().collect())
    }

    #[test]
    fn inserts_and_deletes_queue_their_keys_and_commits_mark_progress() {
        let mut d = decoder();
        d.feed(relation(1, b'd', &[("id", true), ("country", false)]));
        d.feed(Message::Insert {
            relation: 1,
            new: vec![text("7"), text("DE")],
        });
        d.feed(Message::Delete {
            relation: 1,
            old: vec![text("8"), Value::Null],
        });
        // A table nobody captures.
        d.feed(Message::Insert {
            relation: 9,
            new: vec![text("1")],
        });
        assert_eq!(d.decoded_upto, None);
        d.feed(Message::Commit { end_lsn: 42 });
        assert_eq!(keys(&d, None), (false, vec!["7".into(), "8".into()]));
        assert_eq!(d.decoded_upto, Some(42));
        assert_eq!(d.changes.len(), 1);
    }

    #[test]
    fn a_related_row_without_its_key_in_the_identity_means_everything() {
        // orders under the default identity (id only): a delete does not
        // carry customer_id.
        let mut d = decoder();
        d.feed(relation(
            2,
            b'd',
            &[("id", true), ("customer_id", false), ("amount", false)],
        ));
        d.feed(Message::Insert {
            relation: 2,
            new: vec![text("1"), text("7"), text("5")],
        });
        assert_eq!(keys(&d, Some("orders")), (false, vec!["7".into()]));
        d.feed(Message::Delete {
            relation: 2,
            old: vec![text("1"), Value::Null, Value::Null],
        });
        assert_eq!(keys(&d, Some("orders")), (true, vec![]));
    }

    #[test]
    fn under_full_identity_updates_queue_old_and_new_keys_or_nothing() {
        let mut d = decoder();
        d.feed(relation(
            2,
            b'f',
            &[("id", true), ("customer_id", true), ("amount", true)],
        ));
        // Only a column no segment reads changed: nothing.
        d.feed(relation(
            2,
            b'f',
            &[
                ("id", true),
                ("customer_id", true),
                ("amount", true),
                ("note", true),
            ],
        ));
        d.feed(Message::Update {
            relation: 2,
            old: Some(vec![text("1"), text("7"), text("5"), text("a")]),
            new: vec![text("1"), text("7"), text("5"), text("b")],
        });
        assert_eq!(keys(&d, Some("orders")), (false, vec![]));
        // The amount changed: the customer.
        d.feed(Message::Update {
            relation: 2,
            old: Some(vec![text("1"), text("7"), text("5"), text("a")]),
            new: vec![text("1"), text("7"), text("6"), Value::Unchanged],
        });
        assert_eq!(keys(&d, Some("orders")), (false, vec!["7".into()]));
        // The order moved to another customer: both.
        d.feed(Message::Update {
            relation: 2,
            old: Some(vec![text("1"), text("7"), text("6"), text("a")]),
            new: vec![text("1"), text("9"), text("6"), text("a")],
        });
        assert_eq!(
            keys(&d, Some("orders")),
            (false, vec!["7".into(), "9".into()])
        );
        // A delete with a NULL key under FULL: no customer.
        d.feed(Message::Delete {
            relation: 2,
            old: vec![text("2"), Value::Null, text("1"), Value::Null],
        });
        assert_eq!(keys(&d, Some("orders")).0, false);
    }

    #[test]
    fn entity_updates_follow_the_key_through_the_identity() {
        let mut d = decoder();
        d.feed(relation(1, b'd', &[("id", true), ("country", false)]));
        // Key unchanged: no old tuple.
        d.feed(Message::Update {
            relation: 1,
            old: None,
            new: vec![text("7"), text("FR")],
        });
        // Key changed: the old key tuple.
        d.feed(Message::Update {
            relation: 1,
            old: Some(vec![text("8"), Value::Null]),
            new: vec![text("10"), text("FR")],
        });
        assert_eq!(
            keys(&d, None),
            (false, vec!["10".into(), "7".into(), "8".into()])
        );
    }

    #[test]
    fn truncates_renamed_keys_and_bulk_changes_mean_everything() {
        let mut d = decoder();
        d.feed(Message::Truncate { relations: vec![1] });
        assert_eq!(keys(&d, None), (true, vec![]));
        // The key column renamed: its rows cannot be mapped.
        let mut d = decoder();
        d.feed(relation(
            1,
            b'd',
            &[("customer_key", true), ("country", false)],
        ));
        d.feed(Message::Insert {
            relation: 1,
            new: vec![text("7"), text("DE")],
        });
        assert_eq!(keys(&d, None), (true, vec![]));
        // More keys than the bound.
        let mut d = decoder();
        d.feed(relation(1, b'd', &[("id", true), ("country", false)]));
        for k in 0..4 {
            d.feed(Message::Insert {
                relation: 1,
                new: vec![text(&k.to_string()), Value::Null],
            });
        }
        assert_eq!(keys(&d, None), (true, vec![]));
    }
}
