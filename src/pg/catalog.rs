//! The real catalog, read through SPI: registered entities, their columns
//! and related tables, and segments, as the compiler's `Catalog` trait
//! (segments-core) sees them.

use serde_json::Value;

use segments_core::catalog::*;
use segments_core::definition::SegmentRef;

use crate::pg::spi::{optional_value, required, spi};

/// Reads entities, related tables and segments from the database.
pub struct SpiCatalog;

/// The registered entity `name`, or 42P01 naming it (with the closest
/// registered name as a hint).
pub fn registered_entity(name: &str) -> Result<Entity, crate::pg::error::Reported> {
    SpiCatalog.entity(name).ok_or_else(|| {
        let names = SpiCatalog.entity_names();
        crate::pg::error::SegmentsError::UndefinedTable(format!(
            "entity \"{name}\" is not registered"
        ))
        .with_hint(segments_core::spelling::perhaps(
            name,
            names.iter().map(String::as_str),
        ))
    })
}

/// A relation's columns. The fifth is the type literals take: the base
/// type of a domain (a literal of the domain would run its CHECK
/// constraints, which may call its owner's functions). The sixth says why
/// a column is not evaluated (`Column::refused`): a type that is not
/// built-in (an OID below FirstNormalObjectId), an enum or a domain over
/// one of those, or an enum with a cast from it (its owner may make one
/// implicit, and `pg_catalog.lower(e.tier)` would then call it). A user's
/// cast from a built-in type is never chosen: every operator and function
/// the generated SQL names is pg_catalog's, over built-in types.
const TABLE_COLUMNS_SQL: &str = "
    SELECT a.attname::pg_catalog.text,
           pg_catalog.format_type(a.atttypid, a.atttypmod),
           bt.oid,
           bt.typcategory::pg_catalog.text,
           pg_catalog.format_type(bt.oid, NULL),
           CASE WHEN bt.oid OPERATOR(pg_catalog.<) 16384 THEN NULL
                WHEN bt.typtype OPERATOR(pg_catalog.=) 'e'
                 AND NOT EXISTS (SELECT FROM pg_catalog.pg_cast c
                                  WHERE c.castsource OPERATOR(pg_catalog.=) ANY (ARRAY[bt.oid, t.oid]))
                THEN NULL
                WHEN bt.typtype OPERATOR(pg_catalog.=) 'e'
                THEN 'of type ' OPERATOR(pg_catalog.||) pg_catalog.format_type(a.atttypid, NULL)
                     OPERATOR(pg_catalog.||) ', an enum with a cast made by a user; segments does not evaluate it'
                ELSE 'of type ' OPERATOR(pg_catalog.||) pg_catalog.format_type(a.atttypid, NULL)
                     OPERATOR(pg_catalog.||) ', which segments does not evaluate: only built-in types, enums and domains over them'
           END
      FROM pg_catalog.pg_attribute a
      JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid
      JOIN pg_catalog.pg_type bt ON bt.oid OPERATOR(pg_catalog.=) coalesce(nullif(t.typbasetype, 0), t.oid)
     WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
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
            return Table {
                relation_sql: format!("relation {}", relation.to_u32()),
                columns: Vec::new(),
                dropped: true,
            };
        };
        let columns = Spi::connect(|client| {
            spi(client.select(TABLE_COLUMNS_SQL, None, &[relation.into()]))
                .map(|row| {
                    let name: String = spi(row.get(1)).unwrap_or_default();
                    let type_sql: String = spi(row.get(2)).unwrap_or_default();
                    let base: pgrx::pg_sys::Oid =
                        spi(row.get(3)).unwrap_or(pgrx::pg_sys::InvalidOid);
                    let category: String = spi(row.get(4)).unwrap_or_default();
                    let base_type_sql: String = spi(row.get(5)).unwrap_or_default();
                    let refused: Option<String> = spi(row.get(6));
                    Column {
                        name,
                        type_sql,
                        kind: ColumnKind::from_type(base.to_u32(), &category),
                        base_type_sql,
                        refused,
                    }
                })
                .collect()
        });
        Table {
            relation_sql,
            columns,
            dropped: false,
        }
    }
}

/// An entity's traits; none under a schema older than the library (no
/// `segments.trait` before ALTER EXTENSION UPDATE).
fn traits_of(entity: &str) -> Vec<segments_core::catalog::TraitDef> {
    use pgrx::spi::Spi;
    let exists = crate::pg::spi::optional_value::<bool>(
        "SELECT pg_catalog.to_regclass('segments.trait') IS NOT NULL",
        &[],
    );
    if exists != Some(true) {
        return Vec::new();
    }
    Spi::connect(|client| {
        spi(client.select(
            "SELECT id, name, definition FROM segments.trait \
              WHERE entity OPERATOR(pg_catalog.=) $1 ORDER BY id",
            None,
            &[entity.into()],
        ))
        .map(|row| segments_core::catalog::TraitDef {
            id: required(&row, 1),
            name: required(&row, 2),
            definition: spi(row.get::<pgrx::JsonB>(3))
                .map(|j| j.0)
                .unwrap_or_default(),
        })
        .collect()
    })
}

impl Catalog for SpiCatalog {
    fn entity(&self, name: &str) -> Option<Entity> {
        use pgrx::spi::Spi;
        let row = Spi::connect(|client| {
            let table = spi(client.select(
                "SELECT relation::oid, key_column::text, key_kind, eligible, \
                        (SELECT pg_catalog.format_type(a.atttypid, NULL) FROM pg_catalog.pg_attribute a \
                          WHERE a.attrelid OPERATOR(pg_catalog.=) e.relation AND a.attname OPERATOR(pg_catalog.=) e.key_column \
                            AND a.atttypid OPERATOR(pg_catalog.<>) e.key_type::pg_catalog.oid AND NOT a.attisdropped), \
                        pg_catalog.format_type(e.key_type, NULL) \
                   FROM segments.entity e WHERE name = $1",
                None,
                &[name.into()],
            ));
            if table.is_empty() {
                return None;
            }
            let row = table.first();
            Some((
                required::<pgrx::pg_sys::Oid>(&row, 1),
                required::<String>(&row, 2),
                required::<String>(&row, 3),
                spi(row.get::<pgrx::JsonB>(4)).map(|j| j.0),
                spi(row.get::<String>(5)),
                required::<String>(&row, 6),
            ))
        })?;
        let (relation, key_column, key_kind, eligible, changed_key_type, registered_key_type) = row;
        type RelatedRow = (
            String,
            pgrx::pg_sys::Oid,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let related_rows: Vec<RelatedRow> = Spi::connect(|client| {
            spi(client.select(
                // `via` read through to_jsonb: an older schema (a library
                // loaded before ALTER EXTENSION UPDATE) has no such column.
                "SELECT name, relation::oid, foreign_key::text, time_column::text, \
                        pg_catalog.to_jsonb(r) OPERATOR(pg_catalog.->>) 'via', \
                        (SELECT a.attname::text FROM pg_catalog.pg_index i \
                           JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
                          WHERE i.indrelid = relation::oid AND i.indisprimary AND i.indnatts = 1) \
                   FROM segments.related r WHERE entity = $1 ORDER BY name",
                None,
                &[name.into()],
            ))
            .map(|row| {
                (
                    required(&row, 1),
                    required(&row, 2),
                    required(&row, 3),
                    spi(row.get(4)),
                    spi(row.get(5)),
                    spi(row.get(6)),
                )
            })
            .collect()
        });
        let related = related_rows
            .into_iter()
            .map(
                |(name, relation, foreign_key, time_column, via, primary_key)| Related {
                    name,
                    table: SpiCatalog::table(relation),
                    foreign_key,
                    time_column,
                    via,
                    primary_key,
                },
            )
            .collect();
        let mut table = SpiCatalog::table(relation);
        // Keys are read (and printed) as the type they were registered with.
        if let (Some(now), Some(column)) = (
            changed_key_type,
            table.columns.iter_mut().find(|c| c.name == key_column),
        ) {
            column.refused = Some(format!("of type {now}, not {registered_key_type} as registered (change it back, or register the entity again)"));
        }
        let key_kind = if key_kind == "integer" {
            KeyKind::Integer
        } else {
            KeyKind::Dictionary
        };
        let key_replica = (key_kind == KeyKind::Dictionary && !table.dropped)
            .then(|| crate::pg::citus::placement(relation))
            .flatten()
            .filter(|p| p.is_distributed() && p.column.as_deref() == Some(key_column.as_str()))
            .map(|_| crate::pg::citus::key_replica_name(name));
        Some(Entity {
            name: name.to_string(),
            table,
            key_column,
            key_kind,
            key_replica,
            eligible,
            related,
            traits: traits_of(name),
        })
    }

    fn entity_names(&self) -> Vec<String> {
        names("SELECT name FROM segments.entity ORDER BY name")
    }

    fn segment(&self, reference: &SegmentRef) -> Option<SegmentSummary> {
        use pgrx::spi::Spi;
        let (sql, arg): (&str, pgrx::datum::DatumWithOid) = match reference {
            SegmentRef::Id(id) => (
                "SELECT id, name, entity, definition FROM segments.segment WHERE id = $1",
                (*id).into(),
            ),
            SegmentRef::Name(name) => (
                "SELECT id, name, entity, definition FROM segments.segment WHERE name = $1",
                name.as_str().into(),
            ),
        };
        Spi::connect(|client| {
            let table = spi(client.select(sql, None, &[arg]));
            if table.is_empty() {
                return None;
            }
            let row = table.first();
            Some(SegmentSummary {
                id: required(&row, 1),
                name: required(&row, 2),
                entity: required(&row, 3),
                definition: spi(row.get::<pgrx::JsonB>(4))
                    .map(|j| j.0)
                    .unwrap_or(Value::Null),
                split: Vec::new(),
            })
        })
        .map(|mut summary| {
            summary.split = split_groups(summary.id);
            summary
        })
    }

    fn priority_list(&self, name: &str) -> Option<segments_core::catalog::PriorityListSummary> {
        priority_list_named(name)
    }

    fn segment_names(&self) -> Vec<String> {
        names("SELECT name FROM segments.segment ORDER BY name")
    }
}

fn names(sql: &str) -> Vec<String> {
    pgrx::spi::Spi::connect(|client| {
        spi(client.select(sql, None, &[]))
            .filter_map(|row| spi(row.get(1)))
            .collect()
    })
}
thread_local! {
    static SCHEMA_VERSION: std::cell::RefCell<Option<(u32, String)>> = const { std::cell::RefCell::new(None) };
}

/// Whether the database's schema is older than this library (a new build
/// installed before `ALTER EXTENSION segments UPDATE`): the library then
/// leaves the columns the update adds alone, so the old schema keeps
/// working until the update.
pub fn legacy_schema() -> bool {
    schema_version() == "0.1.0"
}

/// The installed schema's version (`pg_extension.extversion`), read once
/// per transaction.
pub fn schema_version() -> String {
    let transaction = crate::pg::versions::local_transaction_id();
    let cached = SCHEMA_VERSION.with(|v| {
        v.borrow()
            .as_ref()
            .filter(|(t, _)| *t == transaction)
            .map(|(_, v)| v.clone())
    });
    let version = cached.unwrap_or_else(|| {
        let version = crate::pg::spi::optional_value::<String>(
            "SELECT extversion FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'segments'",
            &[],
        )
        .unwrap_or_default();
        SCHEMA_VERSION.with(|v| *v.borrow_mut() = Some((transaction, version.clone())));
        version
    });
    version
}

/// A type as the catalog names it: its oid and its SQL spelling
/// (`format_type`, schema-qualified where the search path would need it).
pub struct TypeName {
    pub oid: pgrx::pg_sys::Oid,
    pub sql: String,
}

/// The first row's (oid, text) of a query, if it returns a row.
fn type_row(sql: &str, args: &[pgrx::datum::DatumWithOid]) -> Option<TypeName> {
    pgrx::spi::Spi::connect(|client| {
        let table = spi(client.select(sql, Some(1), args));
        if table.is_empty() {
            return None;
        }
        let row = table.first();
        Some(TypeName {
            oid: spi(row.get::<pgrx::pg_sys::Oid>(1))?,
            sql: spi(row.get::<String>(2))?,
        })
    })
}

/// The key type an entity was registered with (`segments.entity.key_type`);
/// text when the entity is unknown. The one place it is read.
pub fn registered_key_type(entity: &str) -> TypeName {
    type_row(
        "SELECT key_type::pg_catalog.oid, pg_catalog.format_type(key_type, NULL) FROM segments.entity \
          WHERE name OPERATOR(pg_catalog.=) $1",
        &[entity.into()],
    )
    .unwrap_or_else(|| TypeName {
        oid: pgrx::pg_sys::TEXTOID,
        sql: "text".into(),
    })
}

/// The type of a column of a relation now, with its modifier (None: no
/// such column).
pub fn column_type(relation: pgrx::pg_sys::Oid, column: &str) -> Option<TypeName> {
    type_row(
        "SELECT atttypid, pg_catalog.format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute \
          WHERE attrelid OPERATOR(pg_catalog.=) $1 AND attname OPERATOR(pg_catalog.=) $2 \
            AND attnum OPERATOR(pg_catalog.>) 0 AND NOT attisdropped",
        &[relation.into(), column.into()],
    )
}

/// The oid of the registered entity's table.
pub fn entity_relation(entity: &str) -> Option<pgrx::pg_sys::Oid> {
    optional_value::<pgrx::pg_sys::Oid>(
        "SELECT relation::pg_catalog.oid FROM segments.entity WHERE name OPERATOR(pg_catalog.=) $1",
        &[entity.into()],
    )
}

/// Locks an entity's table (ACCESS SHARE, to the end of the transaction)
/// and checks, under that lock, what privileged code is about to rely on
/// when it reads the table: still a plain or partitioned table, and a key
/// column of the registered built-in type, whose `::text` is PostgreSQL's
/// own output function. Raises an error naming the column otherwise.
pub fn lock_verified(entity: &segments_core::catalog::Entity) {
    let Some(relation) = entity_relation(&entity.name) else {
        return;
    };
    // SAFETY: takes a lock on a relation by OID (an ERROR if it is gone).
    unsafe {
        pgrx::pg_sys::LockRelationOid(
            relation,
            pgrx::pg_sys::AccessShareLock as pgrx::pg_sys::LOCKMODE,
        )
    };
    let kind = optional_value::<i8>(
        "SELECT relkind FROM pg_catalog.pg_class WHERE oid OPERATOR(pg_catalog.=) $1",
        &[relation.into()],
    );
    if !matches!(kind.map(|k| k as u8), Some(b'r' | b'p')) {
        use crate::pg::error::Raise;
        crate::pg::error::Reported::from(segments_core::error::SegmentsError::FeatureNotSupported(
            format!(
                "the relation of entity \"{}\" ({}) is no longer a table",
                entity.name, entity.table.relation_sql
            ),
        ))
        .raise();
    }
    use crate::pg::error::OrRaise;
    let now = registered_entity(&entity.name).or_raise();
    let what = format!("entity \"{}\"", entity.name);
    now.key()
        .and_then(|key| key.check_usable("key", &what))
        .map_err(crate::pg::error::Reported::from)
        .or_raise();
}

// ---- activation: splits and priority lists (read by the compiler and by
// src/activation/) ----

/// The groups of a split segment in bucket order; empty when it is not
/// split (or the schema predates splits).
pub fn split_groups(segment: i64) -> Vec<SplitGroup> {
    if !has_splits() {
        return Vec::new();
    }
    let row = pgrx::spi::Spi::connect(|client| {
        let table = spi(client.select(
            "SELECT groups, lows FROM segments.segment_split WHERE segment_id OPERATOR(pg_catalog.=) $1",
            None,
            &[segment.into()],
        ));
        table.into_iter().next().map(|row| {
            (
                spi(row.get::<Vec<String>>(1)).unwrap_or_default(),
                spi(row.get::<Vec<i32>>(2)).unwrap_or_default(),
            )
        })
    });
    let Some((names, lows)) = row else {
        return Vec::new();
    };
    names
        .iter()
        .enumerate()
        .map(|(i, name)| SplitGroup {
            name: name.clone(),
            low: lows[i],
            high: lows.get(i + 1).map(|next| next - 1).unwrap_or(99),
        })
        .collect()
}

/// Whether the schema has splits (0.3.0 and later).
pub fn has_splits() -> bool {
    optional_value::<bool>(
        "SELECT pg_catalog.to_regclass('segments.segment_split') IS NOT NULL",
        &[],
    )
    .unwrap_or(false)
}

/// Whether the schema has priority lists (0.3.0 and later).
pub fn has_priority_lists() -> bool {
    optional_value::<bool>(
        "SELECT pg_catalog.to_regclass('segments.priority_list') IS NOT NULL",
        &[],
    )
    .unwrap_or(false)
}

/// A priority list by name.
pub fn priority_list_named(name: &str) -> Option<PriorityListSummary> {
    if !has_priority_lists() {
        return None;
    }
    priority_list_where("name OPERATOR(pg_catalog.=) $1", name.into())
}

/// A priority list's id by name.
pub fn priority_list_id(name: &str) -> Option<i64> {
    optional_value::<i64>(
        "SELECT id FROM segments.priority_list WHERE name OPERATOR(pg_catalog.=) $1",
        &[name.into()],
    )
}

/// A priority list by id.
pub fn priority_list_by_id(id: i64) -> Option<PriorityListSummary> {
    priority_list_where("id OPERATOR(pg_catalog.=) $1", id.into())
}

fn priority_list_where(
    condition: &str,
    arg: pgrx::datum::DatumWithOid<'static>,
) -> Option<PriorityListSummary> {
    pgrx::spi::Spi::connect(|client| {
        let table = spi(client.select(
            &format!("SELECT name, entity, segments FROM segments.priority_list WHERE {condition}"),
            None,
            &[arg],
        ));
        table.into_iter().next().map(|row| PriorityListSummary {
            name: required(&row, 1),
            entity: required(&row, 2),
            segments: required(&row, 3),
        })
    })
}

/// The planner's estimate of the rows of a table given by its SQL name
/// (`pg_class.reltuples`); 0 when it was never vacuumed or analyzed.
pub fn estimated_rows(relation_sql: &str) -> f64 {
    optional_value::<f64>(
        "SELECT GREATEST(c.reltuples, 0)::pg_catalog.float8 FROM pg_catalog.pg_class c \
          WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1)",
        &[relation_sql.into()],
    )
    .unwrap_or(0.0)
}
