//! The messages of PostgreSQL's `pgoutput` logical decoding plugin,
//! protocol version 1 ("Logical Replication Message Formats" in the
//! PostgreSQL documentation), as WAL capture reads them from
//! `pg_logical_slot_peek_binary_changes`.
//!
//! Only what capture needs is kept: relations (their columns by name),
//! the tuples of inserts, updates and deletes (text values), truncates and
//! commits. Begin, origin, type and generic messages are recognised and
//! skipped. Written here rather than taken from a crate: the Rust parsers
//! of this protocol come with a whole replication client, and this one is
//! a page that needs no Postgres, so it is unit-tested here.

/// A column of a relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the relation's replica identity.
    pub in_identity: bool,
    pub name: String,
    pub type_oid: u32,
}

/// One value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// A TOASTed value the update left unchanged: not sent.
    Unchanged,
    /// The value as the type's output function writes it.
    Text(String),
    /// Binary format (never asked for here; kept so a message still parses).
    Binary(Vec<u8>),
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A transaction starts; `commit_time` is when it committed
    /// (microseconds since 2000-01-01, PostgreSQL's `TimestampTz`).
    Begin {
        commit_time: i64,
    },
    /// The end of a transaction: `end_lsn` is the position after its commit
    /// record, where decoding resumes without seeing it again.
    Commit {
        end_lsn: u64,
    },
    Relation {
        id: u32,
        namespace: String,
        name: String,
        /// `d` default, `n` nothing, `f` full, `i` index.
        replica_identity: u8,
        columns: Vec<Column>,
    },
    Insert {
        relation: u32,
        new: Vec<Value>,
    },
    /// `old` is the key (replica identity columns, others NULL) or the whole
    /// old row (REPLICA IDENTITY FULL); absent when the identity did not
    /// change and is not FULL.
    Update {
        relation: u32,
        old: Option<Vec<Value>>,
        new: Vec<Value>,
    },
    Delete {
        relation: u32,
        old: Vec<Value>,
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// Origin, type and logical messages: nothing for capture.
    Other,
}

/// A message that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pgoutput message malformed: {0}")]
pub struct Malformed(pub &'static str);

/// Reads big-endian integers and C strings off a message.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.bytes.len() < n {
            return Err(Malformed("truncated"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, Malformed> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn string(&mut self) -> Result<String, Malformed> {
        let end = self
            .bytes
            .iter()
            .position(|&b| b == 0)
            .ok_or(Malformed("unterminated string"))?;
        let text = String::from_utf8_lossy(&self.bytes[..end]).into_owned();
        self.bytes = &self.bytes[end + 1..];
        Ok(text)
    }

    fn tuple(&mut self) -> Result<Vec<Value>, Malformed> {
        let count = self.u16()?;
        (0..count)
            .map(|_| match self.u8()? {
                b'n' => Ok(Value::Null),
                b'u' => Ok(Value::Unchanged),
                b't' => {
                    let len = self.u32()? as usize;
                    Ok(Value::Text(
                        String::from_utf8_lossy(self.take(len)?).into_owned(),
                    ))
                }
                b'b' => {
                    let len = self.u32()? as usize;
                    Ok(Value::Binary(self.take(len)?.to_vec()))
                }
                _ => Err(Malformed("unknown tuple value kind")),
            })
            .collect()
    }
}

/// Parses one message (one row of `pg_logical_slot_peek_binary_changes`).
pub fn parse(bytes: &[u8]) -> Result<Message, Malformed> {
    let mut r = Reader { bytes };
    Ok(match r.u8()? {
        b'B' => {
            let _final_lsn = r.u64()?;
            Message::Begin {
                commit_time: r.u64()? as i64,
            }
        }
        b'C' => {
            let _flags = r.u8()?;
            let _commit_lsn = r.u64()?;
            Message::Commit { end_lsn: r.u64()? }
        }
        b'R' => {
            let id = r.u32()?;
            let namespace = r.string()?;
            let name = r.string()?;
            let replica_identity = r.u8()?;
            let count = r.u16()?;
            let columns = (0..count)
                .map(|_| {
                    let flags = r.u8()?;
                    let name = r.string()?;
                    let type_oid = r.u32()?;
                    let _typmod = r.u32()?;
                    Ok(Column {
                        in_identity: flags & 1 == 1,
                        name,
                        type_oid,
                    })
                })
                .collect::<Result<_, Malformed>>()?;
            Message::Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            }
        }
        b'I' => {
            let relation = r.u32()?;
            if r.u8()? != b'N' {
                return Err(Malformed("insert without a new tuple"));
            }
            Message::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let (old, marker) = match r.u8()? {
                b'K' | b'O' => (Some(r.tuple()?), r.u8()?),
                marker => (None, marker),
            };
            if marker != b'N' {
                return Err(Malformed("update without a new tuple"));
            }
            Message::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            if !matches!(r.u8()?, b'K' | b'O') {
                return Err(Malformed("delete without an old tuple"));
            }
            Message::Delete {
                relation,
                old: r.tuple()?,
            }
        }
        b'T' => {
            let count = r.u32()?;
            let _options = r.u8()?;
            let relations = (0..count).map(|_| r.u32()).collect::<Result<_, _>>()?;
            Message::Truncate { relations }
        }
        b'O' | b'Y' | b'M' => Message::Other,
        _ => return Err(Malformed("unknown message type")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hex of real messages, as PostgreSQL 15 wrote them for
    /// `CREATE TABLE o(id int primary key, c int, v int)`.
    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn relation_messages_name_their_columns_and_identity() {
        let m = parse(&hex("52000040007075626c6963006f006400030169640000000017ffffffff00630000000017ffffffff00760000000017ffffffff")).unwrap();
        let Message::Relation {
            id,
            namespace,
            name,
            replica_identity,
            columns,
        } = m
        else {
            panic!("{m:?}")
        };
        assert_eq!(
            (id, namespace.as_str(), name.as_str(), replica_identity),
            (16384, "public", "o", b'd')
        );
        let names: Vec<_> = columns
            .iter()
            .map(|c| (c.name.as_str(), c.in_identity, c.type_oid))
            .collect();
        assert_eq!(
            names,
            [("id", true, 23), ("c", false, 23), ("v", false, 23)]
        );
    }

    #[test]
    fn inserts_updates_deletes_and_truncates_carry_their_tuples() {
        assert_eq!(
            parse(&hex(
                "49000040004e000374000000013174000000023130740000000135"
            ))
            .unwrap(),
            Message::Insert {
                relation: 16384,
                new: vec![
                    Value::Text("1".into()),
                    Value::Text("10".into()),
                    Value::Text("5".into())
                ]
            }
        );
        // An update under the default identity: no old tuple.
        let Message::Update { old, new, .. } = parse(&hex(
            "55000040004e000374000000013174000000023131740000000135",
        ))
        .unwrap() else {
            panic!()
        };
        assert_eq!((old, new[1].clone()), (None, Value::Text("11".into())));
        // REPLICA IDENTITY FULL: the whole old row.
        let Message::Update { old, new, .. } = parse(&hex("55000040004f0003740000000131740000000231317400000001354e000374000000013174000000023132740000000135")).unwrap() else { panic!() };
        assert_eq!(
            (old.unwrap()[1].clone(), new[1].clone()),
            (Value::Text("11".into()), Value::Text("12".into()))
        );
        // A delete under the default identity: the key, other columns NULL.
        assert_eq!(
            parse(&hex("44000040004b00037400000001326e6e")).unwrap(),
            Message::Delete {
                relation: 16384,
                old: vec![Value::Text("2".into()), Value::Null, Value::Null]
            }
        );
        assert_eq!(
            parse(&hex("54000000010000004000")).unwrap(),
            Message::Truncate {
                relations: vec![16384]
            }
        );
        assert_eq!(
            parse(&hex("430000000000015351c800000000015351f8000305063d6e1892")).unwrap(),
            Message::Commit { end_lsn: 0x15351f8 }
        );
        assert_eq!(
            parse(&hex("4200000000015351c8000305063d6e1892000002d6")).unwrap(),
            Message::Begin {
                commit_time: 0x000305063d6e1892
            }
        );
    }

    #[test]
    fn unchanged_toast_and_nulls_are_told_apart_from_text() {
        let mut bytes = vec![b'I', 0, 0, 0, 7, b'N', 0, 3, b'n', b'u', b't', 0, 0, 0, 0];
        assert_eq!(
            parse(&bytes).unwrap(),
            Message::Insert {
                relation: 7,
                new: vec![Value::Null, Value::Unchanged, Value::Text(String::new())]
            }
        );
        bytes.truncate(bytes.len() - 1);
        assert_eq!(parse(&bytes), Err(Malformed("truncated")));
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for bytes in [
            &b""[..],
            b"Z",
            b"R\0\0\0\x01public",
            b"I\0\0\0\x01X",
            b"D\0\0\0\x01N\0\0",
            b"U\0\0\0\x01K\0\0X",
            b"I\0\0\0\x01N\0\x01q",
        ] {
            assert!(parse(bytes).is_err(), "{bytes:?}");
        }
        // Every prefix of a real message fails cleanly.
        let full = hex("55000040004f0003740000000131740000000231317400000001354e000374000000013174000000023132740000000135");
        for n in 0..full.len() {
            assert!(parse(&full[..n]).is_err());
        }
    }
}
