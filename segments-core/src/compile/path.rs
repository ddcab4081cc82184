//! Paths of related tables (`register_related(…, via => …)`): accounts →
//! contacts → events. A related table's rows reach the entity through the
//! chain of tables registered as each one's `via`, each foreign key
//! referencing the next table's primary key; every condition on a related
//! table reads its rows joined along that chain, and groups them by the
//! entity key at its end.

use std::collections::HashSet;

use crate::catalog::{Entity, Related};
use crate::error::SegmentsError;
use crate::sql::{ident, op};

/// The path of `related`'s rows, read as `alias`: the FROM clause that
/// joins them along their path (just the table when they reference the
/// entity directly) and the expression of the entity key they belong to.
/// Intermediate tables are `<alias>_1`, `<alias>_2`, ...
pub fn path_sql(
    entity: &Entity,
    related: &Related,
    alias: &str,
) -> Result<(String, String), SegmentsError> {
    let mut from = format!("{} {alias}", related.table.relation_sql);
    let mut current = related;
    let mut current_alias = alias.to_string();
    let mut seen = HashSet::from([related.name.as_str()]);
    let mut hop = 0;
    while let Some(via_name) = &current.via {
        let via = entity.related(via_name).ok_or_else(|| {
            SegmentsError::UndefinedTable(format!(
                "related table \"{via_name}\" (the via of \"{}\") is not registered for entity \"{}\"",
                current.name, entity.name
            ))
        })?;
        if !seen.insert(via.name.as_str()) {
            return Err(SegmentsError::InvalidParameter(format!(
                "the path of related table \"{}\" leads back to \"{}\"",
                related.name, via.name
            )));
        }
        if via.table.dropped {
            return Err(SegmentsError::UndefinedTable(format!(
                "the table of related table \"{}\" (on the path of \"{}\") no longer exists",
                via.name, related.name
            )));
        }
        let key = via.primary_key.as_ref().ok_or_else(|| {
            SegmentsError::UndefinedColumn(format!(
                "related table \"{}\" ({}) on the path of \"{}\" has no single-column primary key for \"{}\" to reference",
                via.name, via.table.relation_sql, related.name, current.name
            ))
        })?;
        hop += 1;
        let via_alias = format!("{alias}_{hop}");
        from.push_str(&format!(
            " JOIN {} {via_alias} ON {via_alias}.{} {} {current_alias}.{}",
            via.table.relation_sql,
            ident(key),
            op("="),
            ident(&current.foreign_key)
        ));
        current = via;
        current_alias = via_alias;
    }
    let key = format!("{current_alias}.{}", ident(&current.foreign_key));
    Ok((from, key))
}

/// The tables on `related`'s path after itself, nearest first.
pub fn path_tables<'e>(entity: &'e Entity, related: &Related) -> Vec<&'e Related> {
    let mut out: Vec<&Related> = Vec::new();
    let mut via = related.via.as_deref();
    while let Some(name) = via {
        match entity.related(name) {
            Some(next) if next.name != related.name && !out.iter().any(|r| r.name == next.name) => {
                out.push(next);
                via = next.via.as_deref();
            }
            _ => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::fixture::{column, customers};
    use crate::catalog::{ColumnKind, Table};

    /// customer ← orders ← order_lines (via orders) ← returns (via order_lines)
    pub(crate) fn with_paths() -> Entity {
        let mut entity = customers().entities.remove(0);
        let table = |name: &str, columns| Table {
            dropped: false,
            relation_sql: format!("\"public\".\"{name}\""),
            columns,
        };
        entity.related.push(Related {
            name: "order_lines".into(),
            table: table(
                "order_lines",
                vec![
                    column("id", "bigint", ColumnKind::Numeric),
                    column("order_id", "bigint", ColumnKind::Numeric),
                    column("sku", "text", ColumnKind::Text),
                ],
            ),
            foreign_key: "order_id".into(),
            time_column: None,
            via: Some("orders".into()),
            primary_key: Some("id".into()),
        });
        entity.related.push(Related {
            name: "returns".into(),
            table: table(
                "returns",
                vec![
                    column("line_id", "bigint", ColumnKind::Numeric),
                    column(
                        "returned_at",
                        "timestamp with time zone",
                        ColumnKind::TimestampTz,
                    ),
                ],
            ),
            foreign_key: "line_id".into(),
            time_column: Some("returned_at".into()),
            via: Some("order_lines".into()),
            primary_key: None,
        });
        entity
    }

    #[test]
    fn a_path_joins_each_foreign_key_to_the_next_primary_key() {
        let entity = with_paths();
        let returns = entity.related("returns").unwrap();
        let (from, key) = path_sql(&entity, returns, "r").unwrap();
        assert_eq!(
            from,
            "\"public\".\"returns\" r JOIN \"public\".\"order_lines\" r_1 ON r_1.\"id\" OPERATOR(pg_catalog.=) r.\"line_id\" \
             JOIN \"public\".\"orders\" r_2 ON r_2.\"id\" OPERATOR(pg_catalog.=) r_1.\"order_id\""
        );
        assert_eq!(key, "r_2.\"customer_id\"");
        let names: Vec<&str> = path_tables(&entity, returns)
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(names, ["order_lines", "orders"]);
        let (from, key) = path_sql(&entity, entity.related("orders").unwrap(), "s1").unwrap();
        assert_eq!(
            (from.as_str(), key.as_str()),
            ("\"public\".\"orders\" s1", "s1.\"customer_id\"")
        );
    }

    #[test]
    fn a_broken_path_is_refused() {
        let mut entity = with_paths();
        entity.related[0].primary_key = None; // orders
        let returns = entity.related("returns").unwrap().clone();
        let e = path_sql(&entity, &returns, "r").unwrap_err();
        assert_eq!(e.code(), "42703");
        assert!(
            e.to_string().contains("has no single-column primary key"),
            "{e}"
        );
        let mut looped = with_paths();
        looped.related[0].via = Some("returns".into()); // orders via returns
        looped.related[0].primary_key = Some("id".into());
        let returns = looped.related("returns").unwrap().clone();
        let e = path_sql(&looped, &returns, "r").unwrap_err();
        assert_eq!(e.code(), "22023");
        assert!(e.to_string().contains("leads back to"), "{e}");
    }
}
