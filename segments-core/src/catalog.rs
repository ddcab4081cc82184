//! What the compiler knows about the database: registered entities, their
//! columns and related tables, and existing segments. `Catalog` is a trait
//! so that compilation is plain Rust; `SpiCatalog` reads the real catalog.

use serde_json::Value;

use crate::definition::SegmentRef;
use crate::error::SegmentsError;

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

    pub fn is_temporal(self) -> bool {
        matches!(
            self,
            ColumnKind::Date | ColumnKind::Timestamp | ColumnKind::TimestampTz
        )
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
    /// Why segments does not evaluate this column's values (None: it
    /// does). Comparing, casting or printing a value runs its type's
    /// functions, casts and operators; for a type the table's owner made,
    /// that would be the owner's code run as another role (the segment's
    /// owner, or the extension itself). Only built-in types, enums and
    /// domains over them, with no cast of the owner's, are evaluated; a key
    /// column must also still have the type it was registered with.
    pub refused: Option<String>,
}

impl Column {
    /// Refuses (42804) a column whose values segments does not evaluate,
    /// naming it, `what` it belongs to and where the definition reads it.
    pub fn check_usable(&self, path: &str, what: &str) -> Result<(), SegmentsError> {
        match &self.refused {
            None => Ok(()),
            Some(reason) => Err(SegmentsError::DatatypeMismatch(format!(
                "{path}: column \"{}\" of {what} is {reason}",
                self.name
            ))),
        }
    }
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
    /// The entity's traits (`create_trait`), by name.
    pub traits: Vec<TraitDef>,
}

/// A trait as registered: a named value computed per record.
#[derive(Debug, Clone, PartialEq)]
pub struct TraitDef {
    pub id: i64,
    pub name: String,
    /// `{"related": R, "aggregate": A, "attribute"?, "where"?, "within"?}`.
    pub definition: Value,
}

impl Entity {
    pub fn related(&self, name: &str) -> Option<&Related> {
        self.related.iter().find(|r| r.name == name)
    }

    pub fn trait_def(&self, name: &str) -> Option<&TraitDef> {
        self.traits.iter().find(|t| t.name == name)
    }

    /// The key column, or 42703 naming it when it was dropped or renamed
    /// away from its registration.
    pub fn key(&self) -> Result<&Column, SegmentsError> {
        self.table.column(&self.key_column).ok_or_else(|| {
            SegmentsError::UndefinedColumn(format!(
                "key column \"{}\" of entity \"{}\" ({}) no longer exists",
                self.key_column, self.name, self.table.relation_sql
            ))
        })
    }

    /// The key column's type, without modifier.
    pub fn key_type_sql(&self) -> &str {
        self.table
            .column(&self.key_column)
            .map(|c| c.base_type_sql.as_str())
            .unwrap_or("pg_catalog.text")
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
                format!(
                    " JOIN {replica} k ON k.key OPERATOR(pg_catalog.=) {key_sql}::{}",
                    self.key_type_sql()
                ),
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
    /// A path: `foreign_key` references the primary key of the related
    /// table of this name instead of the entity's key.
    pub via: Option<String>,
    /// The table's single-column primary key, which a related table
    /// registered with this one as its `via` references.
    pub primary_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SegmentSummary {
    pub id: i64,
    pub name: String,
    pub entity: String,
    pub definition: Value,
    /// The groups of a split segment (`segments.split`), in bucket order;
    /// empty when it is not split.
    pub split: Vec<SplitGroup>,
}

/// One group of a split segment: the records whose bucket
/// (`segments.split_bucket`, 0 to 99) is in `low..=high`.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitGroup {
    pub name: String,
    pub low: i32,
    pub high: i32,
}

/// A priority list: segments of one entity, highest priority first.
#[derive(Debug, Clone, PartialEq)]
pub struct PriorityListSummary {
    pub name: String,
    pub entity: String,
    pub segments: Vec<i64>,
}

pub trait Catalog {
    fn entity(&self, name: &str) -> Option<Entity>;
    fn entity_names(&self) -> Vec<String>;
    fn segment(&self, reference: &SegmentRef) -> Option<SegmentSummary>;
    fn segment_names(&self) -> Vec<String>;
    /// A priority list by name (`create_priority_list`).
    fn priority_list(&self, _name: &str) -> Option<PriorityListSummary> {
        None
    }
}

#[cfg(any(test, feature = "fixture"))]
pub mod fixture {
    //! A small in-memory catalog for unit tests of the compiler.
    use super::*;

    pub struct FixedCatalog {
        pub entities: Vec<Entity>,
        pub segments: Vec<SegmentSummary>,
        pub priority_lists: Vec<PriorityListSummary>,
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
        fn priority_list(&self, name: &str) -> Option<PriorityListSummary> {
            self.priority_lists.iter().find(|l| l.name == name).cloned()
        }
    }

    pub fn column(name: &str, type_sql: &str, kind: ColumnKind) -> Column {
        let base = type_sql.split('(').next().unwrap_or(type_sql).to_string();
        Column {
            name: name.into(),
            type_sql: type_sql.into(),
            kind,
            base_type_sql: base,
            refused: None,
        }
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
                    column(
                        "signed_up_at",
                        "timestamp with time zone",
                        ColumnKind::TimestampTz,
                    ),
                    column("external_id", "uuid", ColumnKind::Uuid),
                ],
            },
            key_column: "id".into(),
            key_kind: KeyKind::Integer,
            key_replica: None,
            eligible: None,
            traits: vec![],
            related: vec![Related {
                name: "orders".into(),
                table: Table {
                    dropped: false,
                    relation_sql: "\"public\".\"orders\"".into(),
                    columns: vec![
                        column("customer_id", "bigint", ColumnKind::Numeric),
                        column("amount", "numeric(10,2)", ColumnKind::Numeric),
                        column("status", "text", ColumnKind::Text),
                        column(
                            "ordered_at",
                            "timestamp with time zone",
                            ColumnKind::TimestampTz,
                        ),
                    ],
                },
                foreign_key: "customer_id".into(),
                time_column: Some("ordered_at".into()),
                via: None,
                primary_key: Some("id".into()),
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
                split: vec![],
            }],
            priority_lists: vec![],
        }
    }
}
