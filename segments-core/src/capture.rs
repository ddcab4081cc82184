//! What a decoded change means for live segments: WAL capture feeds the
//! `pgoutput` messages of a slot to a `Decoder`, which keeps the changed
//! keys of the tables live segments read, exactly as the capture triggers
//! queue them (`src/engine/live/capture.rs`): the entity key of each
//! inserted, updated or deleted row (the old one too when it changed), or
//! "everything changed" (no key) for a TRUNCATE, a bulk change, or a row
//! whose key the WAL does not carry. For the entity's own table it also
//! keeps each key's last decoded row (`Image`), so that apply need not
//! read the table again.

use std::collections::{BTreeMap, BTreeSet, HashMap};

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
    /// The entity's own table only: each key's row as its last insert or
    /// update wrote it, when the WAL carried every value (a delete, or a
    /// later change of its key, removes it).
    pub images: BTreeMap<String, Image>,
}

/// A decoded row of the entity's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// When the transaction that wrote it committed (PostgreSQL's
    /// `TimestampTz`).
    pub commit_time: i64,
    /// (column, type oid, value as text or NULL); columns the WAL left out
    /// (TOASTed and unchanged) are absent.
    pub columns: Vec<(String, u32, Option<String>)>,
}

/// The first bytes of an encoded `Image`: a relation file number no
/// relation has (0 is InvalidRelFileNumber), so that apply tells these
/// from the heap-tuple images of trigger capture.
pub const IMAGE_MARKER: [u8; 4] = [0, 0, 0, 0];

impl Image {
    /// The image's bytes, as `change_queue.image` keeps them.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = IMAGE_MARKER.to_vec();
        out.extend_from_slice(&(self.columns.len() as u32).to_be_bytes());
        for (name, type_oid, value) in &self.columns {
            out.extend_from_slice(&(name.len() as u32).to_be_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&type_oid.to_be_bytes());
            match value {
                None => out.push(0),
                Some(v) => {
                    out.push(1);
                    out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                    out.extend_from_slice(v.as_bytes());
                }
            }
        }
        out
    }

    /// The columns of an encoded image (commit time not included); None
    /// when the bytes are not one.
    pub fn decode(bytes: &[u8]) -> Option<Vec<(String, u32, Option<String>)>> {
        fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            (bytes.len() >= n).then(|| {
                let (head, rest) = bytes.split_at(n);
                *bytes = rest;
                head
            })
        }
        fn u32_of(bytes: &mut &[u8]) -> Option<u32> {
            take(bytes, 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }
        let mut rest = bytes.strip_prefix(&IMAGE_MARKER[..])?;
        let count = u32_of(&mut rest)?;
        let mut columns = Vec::new();
        for _ in 0..count {
            let len = u32_of(&mut rest)? as usize;
            let name = std::str::from_utf8(take(&mut rest, len)?).ok()?.to_string();
            let type_oid = u32_of(&mut rest)?;
            let value = match take(&mut rest, 1)?[0] {
                0 => None,
                1 => {
                    let len = u32_of(&mut rest)? as usize;
                    Some(std::str::from_utf8(take(&mut rest, len)?).ok()?.to_string())
                }
                _ => return None,
            };
            columns.push((name, type_oid, value));
        }
        rest.is_empty().then_some(columns)
    }
}

/// A relation as its last relation message described it.
struct Relation {
    full_identity: bool,
    /// (name, part of the identity, type oid).
    columns: Vec<(String, bool, u32)>,
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
    /// The commit time of the transaction being decoded.
    commit_time: i64,
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
            commit_time: 0,
        }
    }

    /// Takes one message.
    pub fn feed(&mut self, message: Message) {
        match message {
            Message::Begin { commit_time } => self.commit_time = commit_time,
            Message::Commit { end_lsn } => self.decoded_upto = Some(end_lsn),
            Message::Relation {
                id,
                replica_identity,
                columns,
                ..
            } => {
                let columns = columns
                    .into_iter()
                    .map(|c| (c.name, c.in_identity, c.type_oid))
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
                    self.keep_image(relation, &c, &key, Some(&new));
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
                    self.keep_image(relation, &c, &key, None);
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
            Message::Other => {}
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
                    self.keep_image(relation, c, &old_key, None);
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
                    self.keep_image(relation, c, &old_key, None);
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
        self.keep_image(relation, c, &new_key, Some(new));
        self.queue(c, new_key);
    }

    /// Keeps (`row` given) or forgets (None) a key's row image, for the
    /// entity's own table.
    fn keep_image(&mut self, relation: u32, c: &Captured, key: &Found, row: Option<&[Value]>) {
        let Found::Key(key) = key else {
            return;
        };
        if c.source.is_some() {
            return;
        }
        let image = row.and_then(|row| {
            let described = &self.relations.get(&relation)?.columns;
            let columns = described
                .iter()
                .zip(row)
                .filter_map(|((name, _, type_oid), value)| match value {
                    Value::Text(v) => Some(Some((name.clone(), *type_oid, Some(v.clone())))),
                    Value::Null => Some(Some((name.clone(), *type_oid, None))),
                    Value::Unchanged => None,
                    Value::Binary(_) => Some(None),
                })
                .collect::<Option<Vec<_>>>()?;
            Some(Image {
                commit_time: self.commit_time,
                columns,
            })
        });
        let keys = self
            .changes
            .entry((c.entity.clone(), c.source.clone()))
            .or_default();
        match image {
            Some(image) => keys.images.insert(key.clone(), image),
            None => keys.images.remove(key),
        };
    }

    /// Whether the WAL carries a row's old key column (REPLICA IDENTITY
    /// FULL, or the key column is part of the identity).
    fn carries_old_key(&self, relation: u32, c: &Captured) -> bool {
        self.relations.get(&relation).is_some_and(|r| {
            r.full_identity
                || r.columns
                    .iter()
                    .any(|(name, in_identity, _)| *in_identity && *name == c.key_column)
        })
    }

    fn position(&self, relation: u32, column: &str) -> Option<usize> {
        self.relations
            .get(&relation)?
            .columns
            .iter()
            .position(|(name, _, _)| name == column)
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
                    keys.images.clear();
                }
            }
            // A row without a key belongs to no entity.
            Found::Null => {}
            Found::Unknown => {
                keys.everything = true;
                keys.keys.clear();
                keys.images.clear();
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
        assert!(!keys(&d, Some("orders")).0);
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
    fn the_entity_s_last_decoded_row_is_kept_for_each_key() {
        let mut d = decoder();
        d.feed(relation(1, b'd', &[("id", true), ("country", false)]));
        d.feed(Message::Begin { commit_time: 5 });
        d.feed(Message::Insert {
            relation: 1,
            new: vec![text("7"), text("DE")],
        });
        d.feed(Message::Insert {
            relation: 1,
            new: vec![text("8"), Value::Null],
        });
        d.feed(Message::Begin { commit_time: 9 });
        d.feed(Message::Update {
            relation: 1,
            old: None,
            new: vec![text("7"), text("FR")],
        });
        // A TOASTed value left out: no image (the table is read).
        d.feed(Message::Update {
            relation: 1,
            old: None,
            new: vec![text("8"), Value::Unchanged],
        });
        let images = &d.changes[&("customer".to_string(), None)].images;
        assert_eq!(
            images["7"],
            Image {
                commit_time: 9,
                columns: vec![
                    ("id".into(), 23, Some("7".into())),
                    ("country".into(), 23, Some("FR".into()))
                ]
            }
        );
        assert_eq!(
            images["8"].columns,
            vec![("id".into(), 23, Some("8".into()))]
        );
        // A deleted row and a key that moved away have none.
        d.feed(Message::Delete {
            relation: 1,
            old: vec![text("7"), Value::Null],
        });
        d.feed(Message::Update {
            relation: 1,
            old: Some(vec![text("8"), Value::Null]),
            new: vec![text("10"), text("IT")],
        });
        let images = &d.changes[&("customer".to_string(), None)].images;
        assert_eq!(images.keys().collect::<Vec<_>>(), ["10"]);
        // Related tables keep none.
        d.feed(relation(
            2,
            b'f',
            &[("id", true), ("customer_id", true), ("amount", true)],
        ));
        d.feed(Message::Insert {
            relation: 2,
            new: vec![text("1"), text("7"), text("5")],
        });
        assert!(
            d.changes[&("customer".to_string(), Some("orders".to_string()))]
                .images
                .is_empty()
        );
    }

    #[test]
    fn images_encode_and_decode_and_nothing_else_decodes() {
        let image = Image {
            commit_time: 1,
            columns: vec![
                ("id".into(), 23, Some("7".into())),
                ("note".into(), 25, None),
                ("naïve \"q\"".into(), 25, Some(String::new())),
            ],
        };
        let bytes = image.encode();
        assert_eq!(Image::decode(&bytes), Some(image.columns.clone()));
        for n in 0..bytes.len() {
            assert_eq!(Image::decode(&bytes[..n]), None);
        }
        // A heap tuple image starts with its file number, never 0.
        assert_eq!(Image::decode(&[1, 0, 0, 0, 0, 0, 0, 0]), None);
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
