//! What the compiler knows about the database: registered entities, their
//! columns and related tables, and existing segments. `Catalog` is a trait
//! so that compilation is plain Rust; `SpiCatalog` reads the real catalog.

use serde_json::Value;

use crate::definition::SegmentRef;

/// How a column's values behave in conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    Numeric,
    Text,
    Boolean,
    Date,
    Timestamp,
    TimestampTz,
    Uuid,
    Other,
}

impl ColumnKind {
    /// From a (base) type oid and its `typcategory`.
    pub fn from_type(type_oid: u32, category: &str) -> ColumnKind {
        match (type_oid, category) {
            (1082, _) => ColumnKind::Date,
            (1114, _) => ColumnKind::Timestamp,
            (1184, _) => ColumnKind::TimestampTz,
            (2950, _) => ColumnKind::Uuid,
            (16, _) => ColumnKind::Boolean,
            (_, "N") => ColumnKind::Numeric,
            (_, "S") => ColumnKind::Text,
            _ => ColumnKind::Other,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            ColumnKind::Numeric => "numeric",
            ColumnKind::Text => "text",
            ColumnKind::Boolean => "boolean",
            ColumnKind::Date => "date",
            ColumnKind::Timestamp => "timestamp",
            ColumnKind::TimestampTz => "timestamptz",
            ColumnKind::Uuid => "uuid",
            ColumnKind::Other => "other",
        }
    }

    pub fn is_temporal(self) -> bool {
        matches!(self, ColumnKind::Date | ColumnKind::Timestamp | ColumnKind::TimestampTz)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    /// `format_type` of the column, e.g. `numeric(10,2)`: safe to splice.
    pub type_sql: String,
    pub kind: ColumnKind,
    /// The type without its modifier (`numeric`, `character varying`):
    /// literals take this type, so a value is never cut or rounded to the
    /// column's declared size before it is compared.
    pub base_type_sql: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// The schema-qualified, quoted name of the relation.
    pub relation_sql: String,
    pub columns: Vec<Column>,
    /// The registered relation no longer exists (dropped): every use of it
    /// fails, naming it, and nothing else does.
    pub dropped: bool,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn column_names(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(|c| c.name.as_str())
    }
}

/// How an entity's keys become bitmap positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// smallint, integer and bigint keys are their own positions.
    Integer,
    /// uuid and text keys get a position from `segments.entity_key`.
    Dictionary,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Integer => "integer",
            KeyKind::Dictionary => "dictionary",
        }
    }

    pub fn for_type(type_oid: u32) -> Option<KeyKind> {
        match type_oid {
            20 | 21 | 23 => Some(KeyKind::Integer),
            25 | 1043 | 2950 => Some(KeyKind::Dictionary),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub name: String,
    pub table: Table,
    pub key_column: String,
    pub key_kind: KeyKind,
    /// Citus: the quoted name of the entity's key dictionary copy,
    /// distributed and colocated with the entity table (dictionary keys of
    /// a table distributed by its key; see `citus::sync_key_replica`).
    pub key_replica: Option<String>,
    pub eligible: Option<Value>,
    pub related: Vec<Related>,
}

impl Entity {
    pub fn related(&self, name: &str) -> Option<&Related> {
        self.related.iter().find(|r| r.name == name)
    }

    /// The key column's type, without modifier.
    pub fn key_type_sql(&self) -> &str {
        self.table.column(&self.key_column).map(|c| c.base_type_sql.as_str()).unwrap_or("pg_catalog.text")
    }

    /// How a key expression becomes a bitmap position: the position's SQL
    /// and the join it needs. Integer keys are their own positions;
    /// dictionary keys join `segments.entity_key` or, on Citus, its
    /// colocated copy, so that the join runs on the shards.
    pub fn position_sql(&self, key_sql: &str) -> (String, String) {
        match (self.key_kind, &self.key_replica) {
            (KeyKind::Integer, _) => (format!("{key_sql}::pg_catalog.int8"), String::new()),
            (KeyKind::Dictionary, Some(replica)) => (
                "k.position".to_string(),
                format!(" JOIN {replica} k ON k.key OPERATOR(pg_catalog.=) {key_sql}::{}", self.key_type_sql()),
            ),
            (KeyKind::Dictionary, None) => (
                "k.position".to_string(),
                format!(
                    " JOIN segments.entity_key k ON k.entity OPERATOR(pg_catalog.=) {} \
                     AND k.key OPERATOR(pg_catalog.=) {key_sql}::pg_catalog.text",
                    crate::sql::literal(&self.name)
                ),
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Related {
    pub name: String,
    pub table: Table,
    pub foreign_key: String,
    pub time_column: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SegmentSummary {
    pub id: i64,
    pub name: String,
    pub entity: String,
    pub definition: Value,
}

pub trait Catalog {
    fn entity(&self, name: &str) -> Option<Entity>;
    fn entity_names(&self) -> Vec<String>;
    fn segment(&self, reference: &SegmentRef) -> Option<SegmentSummary>;
    fn segment_names(&self) -> Vec<String>;
}

#[cfg(any(test, feature = "pg_test"))]
pub mod fixture {
    //! A small in-memory catalog for unit tests of the compiler.
    use super::*;

    pub struct FixedCatalog {
        pub entities: Vec<Entity>,
        pub segments: Vec<SegmentSummary>,
    }

    impl Catalog for FixedCatalog {
        fn entity(&self, name: &str) -> Option<Entity> {
            self.entities.iter().find(|e| e.name == name).cloned()
        }
        fn entity_names(&self) -> Vec<String> {
            self.entities.iter().map(|e| e.name.clone()).collect()
        }
        fn segment(&self, reference: &SegmentRef) -> Option<SegmentSummary> {
            self.segments
                .iter()
                .find(|s| match reference {
                    SegmentRef::Id(id) => s.id == *id,
                    SegmentRef::Name(name) => &s.name == name,
                })
                .cloned()
        }
        fn segment_names(&self) -> Vec<String> {
            self.segments.iter().map(|s| s.name.clone()).collect()
        }
    }

    fn column(name: &str, type_sql: &str, kind: ColumnKind) -> Column {
        let base = type_sql.split('(').next().unwrap_or(type_sql).to_string();
        Column { name: name.into(), type_sql: type_sql.into(), kind, base_type_sql: base }
    }

    /// customers(id, country, age, ...) with orders(customer_id, amount, ...).
    pub fn customers() -> FixedCatalog {
        let customer = Entity {
            name: "customer".into(),
            table: Table {
                dropped: false,
                relation_sql: "\"public\".\"customers\"".into(),
                columns: vec![
                    column("id", "bigint", ColumnKind::Numeric),
                    column("country", "text", ColumnKind::Text),
                    column("age", "integer", ColumnKind::Numeric),
                    column("unsubscribed", "boolean", ColumnKind::Boolean),
                    column("birth_date", "date", ColumnKind::Date),
                    column("signed_up_at", "timestamp with time zone", ColumnKind::TimestampTz),
                    column("external_id", "uuid", ColumnKind::Uuid),
                ],
            },
            key_column: "id".into(),
            key_kind: KeyKind::Integer,
            key_replica: None,
            eligible: None,
            related: vec![Related {
                name: "orders".into(),
                table: Table {
                    dropped: false,
                    relation_sql: "\"public\".\"orders\"".into(),
                    columns: vec![
                        column("customer_id", "bigint", ColumnKind::Numeric),
                        column("amount", "numeric(10,2)", ColumnKind::Numeric),
                        column("status", "text", ColumnKind::Text),
                        column("ordered_at", "timestamp with time zone", ColumnKind::TimestampTz),
                    ],
                },
                foreign_key: "customer_id".into(),
                time_column: Some("ordered_at".into()),
            }],
        };
        FixedCatalog {
            entities: vec![customer],
            segments: vec![SegmentSummary {
                id: 7,
                name: "VIP".into(),
                entity: "customer".into(),
                definition: serde_json::json!({"entity": "customer", "rules": [
                    {"where": {"attribute": "age", "op": "gt", "value": 60}}]}),
            }],
        }
    }
}

// ---- the real catalog, read through SPI -----------------------------------

/// Reads entities, related tables and segments from the database.
pub struct SpiCatalog;

/// The registered entity `name`, or 42P01 naming it (with the closest
/// registered name as a hint).
pub fn registered_entity(name: &str) -> Result<Entity, crate::error::Reported> {
    SpiCatalog.entity(name).ok_or_else(|| {
        let names = SpiCatalog.entity_names();
        crate::error::SegmentsError::UndefinedTable(format!("entity \"{name}\" is not registered"))
            .with_hint(crate::spelling::perhaps(name, names.iter().map(String::as_str)))
    })
}

/// Unwraps an SPI result; SPI only fails this way on a bug of ours.
pub fn spi<T>(result: Result<T, pgrx::spi::SpiError>) -> T {
    result.unwrap_or_else(|e| pgrx::error!("segments: SPI failed: {e}"))
}

const TABLE_COLUMNS_SQL: &str = "
    SELECT a.attname::text,
           format_type(a.atttypid, a.atttypmod),
           coalesce(nullif(t.typbasetype, 0), t.oid)::oid,
           bt.typcategory::text,
           format_type(a.atttypid, NULL)
      FROM pg_catalog.pg_attribute a
      JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
      JOIN pg_catalog.pg_type bt ON bt.oid = coalesce(nullif(t.typbasetype, 0), t.oid)
     WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
     ORDER BY a.attnum";

impl SpiCatalog {
    /// The columns of a relation and its qualified name; a relation that
    /// no longer exists is a `dropped` table named by its old OID.
    pub fn table(relation: pgrx::pg_sys::Oid) -> Table {
        use pgrx::spi::Spi;
        let relation_sql = optional_value::<String>(
            "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
             WHERE c.oid OPERATOR(pg_catalog.=) $1",
            &[relation.into()],
        );
        let Some(relation_sql) = relation_sql else {
            return Table { relation_sql: format!("relation {}", relation.to_u32()), columns: Vec::new(), dropped: true };
        };
        let columns = Spi::connect(|client| {
            spi(client.select(TABLE_COLUMNS_SQL, None, &[relation.into()]))
                .map(|row| {
                    let name: String = spi(row.get(1)).unwrap_or_default();
                    let type_sql: String = spi(row.get(2)).unwrap_or_default();
                    let base: pgrx::pg_sys::Oid = spi(row.get(3)).unwrap_or(pgrx::pg_sys::InvalidOid);
                    let category: String = spi(row.get(4)).unwrap_or_default();
                    let base_type_sql: String = spi(row.get(5)).unwrap_or_default();
                    Column { name, type_sql, kind: ColumnKind::from_type(base.to_u32(), &category), base_type_sql }
                })
                .collect()
        });
        Table { relation_sql, columns, dropped: false }
    }
}

impl Catalog for SpiCatalog {
    fn entity(&self, name: &str) -> Option<Entity> {
        use pgrx::spi::Spi;
        let row = Spi::connect(|client| {
            let table = spi(client.select(
                "SELECT relation::oid, key_column::text, key_kind, eligible FROM segments.entity WHERE name = $1",
                None,
                &[name.into()],
            ));
            if table.is_empty() {
                return None;
            }
            let row = table.first();
            Some((
                spi(row.get::<pgrx::pg_sys::Oid>(1)).unwrap(),
                spi(row.get::<String>(2)).unwrap(),
                spi(row.get::<String>(3)).unwrap(),
                spi(row.get::<pgrx::JsonB>(4)).map(|j| j.0),
            ))
        })?;
        let (relation, key_column, key_kind, eligible) = row;
        let related_rows: Vec<(String, pgrx::pg_sys::Oid, String, Option<String>)> = Spi::connect(|client| {
            spi(client.select(
                "SELECT name, relation::oid, foreign_key::text, time_column::text FROM segments.related \
                 WHERE entity = $1 ORDER BY name",
                None,
                &[name.into()],
            ))
            .map(|row| {
                (
                    spi(row.get(1)).unwrap(),
                    spi(row.get(2)).unwrap(),
                    spi(row.get(3)).unwrap(),
                    spi(row.get(4)),
                )
            })
            .collect()
        });
        let related = related_rows
            .into_iter()
            .map(|(name, relation, foreign_key, time_column)| Related {
                name,
                table: SpiCatalog::table(relation),
                foreign_key,
                time_column,
            })
            .collect();
        let table = SpiCatalog::table(relation);
        let key_kind = if key_kind == "integer" { KeyKind::Integer } else { KeyKind::Dictionary };
        let key_replica = (key_kind == KeyKind::Dictionary && !table.dropped)
            .then(|| crate::citus::placement(relation))
            .flatten()
            .filter(|p| p.is_distributed() && p.column.as_deref() == Some(key_column.as_str()))
            .map(|_| crate::citus::key_replica_name(name));
        Some(Entity { name: name.to_string(), table, key_column, key_kind, key_replica, eligible, related })
    }

    fn entity_names(&self) -> Vec<String> {
        names("SELECT name FROM segments.entity ORDER BY name")
    }

    fn segment(&self, reference: &SegmentRef) -> Option<SegmentSummary> {
        use pgrx::spi::Spi;
        let (sql, arg): (&str, pgrx::datum::DatumWithOid) = match reference {
            SegmentRef::Id(id) => ("SELECT id, name, entity, definition FROM segments.segment WHERE id = $1", (*id).into()),
            SegmentRef::Name(name) => {
                ("SELECT id, name, entity, definition FROM segments.segment WHERE name = $1", name.as_str().into())
            }
        };
        Spi::connect(|client| {
            let table = spi(client.select(sql, None, &[arg]));
            if table.is_empty() {
                return None;
            }
            let row = table.first();
            Some(SegmentSummary {
                id: spi(row.get(1)).unwrap(),
                name: spi(row.get(2)).unwrap(),
                entity: spi(row.get(3)).unwrap(),
                definition: spi(row.get::<pgrx::JsonB>(4)).map(|j| j.0).unwrap_or(Value::Null),
            })
        })
    }

    fn segment_names(&self) -> Vec<String> {
        names("SELECT name FROM segments.segment ORDER BY name")
    }
}

fn names(sql: &str) -> Vec<String> {
    pgrx::spi::Spi::connect(|client| spi(client.select(sql, None, &[])).filter_map(|row| spi(row.get(1))).collect())
}

/// The first column of the first row of a query, or None when it returns
/// no row (pgrx's `get_one` treats that as an error).
pub fn optional_value<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
) -> Option<T> {
    pgrx::spi::Spi::connect(|client| {
        let table = spi(client.select(sql, Some(1), args));
        if table.is_empty() {
            None
        } else {
            spi(table.first().get::<T>(1))
        }
    })
}
