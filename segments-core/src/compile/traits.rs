//! Traits in definitions: `{"trait": NAME, "op": OP, "value": V}` tests a
//! trait's value like an attribute, and ranks (`top_percent`, ...) rank
//! records by it. A trait compiles to one `GROUP BY` of its related table
//! (along its path) in the same plan as the conditions around it, so a
//! refresh computes the traits its segments use in the same pass; the
//! stored values that `segments.<entity>_traits` shows come from
//! `refresh_traits`, which computes every trait of a related table in one
//! scan (`traits_query`).

use super::emit::{attribute_sql, compares_true, related_condition, RowScope};
use super::{time_column, ColumnGroup, Leaf, Planner};
use crate::catalog::{Column, ColumnKind, Table, TraitDef};
use crate::definition::{
    AttributeTest, ConditionKind, Op, Operand, TraitDefinition, TraitFunction, TraitTest,
};
use crate::error::{invalid, Reported, SegmentsError};
use crate::spelling::perhaps;
use crate::sql::{ident, literal, op};
use crate::validate::check_op;

/// A trait resolved against the catalog: the rows it aggregates and how.
/// A condition computed in a shared scan of its related table: the
/// measure it reads (as `g.<name>`) and its comparison of it.
pub type SharedCondition = (TraitMeasure, String);

/// The most conditions one shared scan of a related table computes
/// (PostgreSQL allows 1,664 columns; each condition is one, and so is
/// each distinct measure).
const SHARED_CONDITIONS_PER_SCAN: usize = 200;

#[derive(Debug, Clone)]
pub struct TraitMeasure {
    pub id: i64,
    /// The FROM clause of its related rows as `r` (joined along a path).
    pub from: String,
    /// The entity key a row belongs to.
    pub key: String,
    /// Its `where`, `within` and a live restriction.
    pub filters: Vec<String>,
    /// The aggregate call over the rows of one record, e.g.
    /// `pg_catalog.sum(r."amount")`.
    pub aggregate: String,
    /// What goes around the call (a cast, a subscript): the measure is
    /// `wrap.0 || aggregate || wrap.1`, and a `FILTER` goes right after
    /// the call.
    pub wrap: (&'static str, &'static str),
    /// The value's name (the trait's), type and kind.
    pub column: Column,
    /// Counts are 0 for a record without rows; everything else NULL.
    pub is_count: bool,
    /// The related table it reads.
    pub related: String,
}

impl TraitMeasure {
    /// The measure over the rows of one record, only those `filter` selects
    /// when given.
    pub fn measure(&self, filter: Option<&str>) -> String {
        let filter = filter
            .map(|f| format!(" FILTER (WHERE {f})"))
            .unwrap_or_default();
        format!("{}{}{filter}{}", self.wrap.0, self.aggregate, self.wrap.1)
    }

    /// `SELECT key, value FROM ... GROUP BY key`: one row per record with
    /// related rows.
    pub fn grouped_sql(&self) -> String {
        let where_sql = if self.filters.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.filters.join(" AND "))
        };
        format!(
            "SELECT {key} AS key, {measure} AS {name} FROM {from}{where_sql} GROUP BY {key}",
            key = self.key,
            measure = self.measure(None),
            name = ident(&self.column.name),
            from = self.from
        )
    }

    /// The value of a record without related rows, as SQL.
    pub fn empty_value(&self) -> &'static str {
        if self.is_count {
            "0::pg_catalog.int8"
        } else {
            "NULL"
        }
    }
}

impl Planner<'_> {
    /// Resolves the trait `name` of the plan's entity (42704 when there is
    /// none; 42P01, 42703, 22023 when its definition no longer fits the
    /// catalog, naming `path`).
    pub fn trait_measure(&self, path: &str, name: &str) -> Result<TraitMeasure, Reported> {
        let found: &TraitDef = self.entity.trait_def(name).ok_or_else(|| {
            SegmentsError::UndefinedObject(format!(
                "{path}.trait: trait \"{name}\" does not exist for entity \"{}\"",
                self.entity.name
            ))
            .with_hint(perhaps(
                name,
                self.entity.traits.iter().map(|t| t.name.as_str()),
            ))
        })?;
        let definition = TraitDefinition::parse(&found.definition)
            .map_err(|e| e.at(&format!("{path}.trait \"{name}\"")))?;
        self.measure_of(path, found.id, name, &definition)
    }

    /// A trait definition's measure (also for `create_trait`'s check).
    pub fn measure_of(
        &self,
        path: &str,
        id: i64,
        name: &str,
        definition: &TraitDefinition,
    ) -> Result<TraitMeasure, Reported> {
        let related = self
            .entity
            .related(&definition.related)
            .cloned()
            .ok_or_else(|| {
                SegmentsError::UndefinedTable(format!(
                    "{path}.related: related table \"{}\" is not registered for entity \"{}\"",
                    definition.related, self.entity.name
                ))
                .with_hint(perhaps(
                    &definition.related,
                    self.entity.related.iter().map(|r| r.name.as_str()),
                ))
            })?;
        let what = format!("related table \"{}\"", related.name);
        let (filters, key, from) =
            self.related_filters(path, "r", &related, &definition.scope())?;
        let attribute = match &definition.attribute {
            None => None,
            Some(attribute) => {
                let column = related.table.column(attribute).ok_or_else(|| {
                    SegmentsError::UndefinedColumn(format!(
                        "{path}.attribute: column \"{attribute}\" does not exist on {what}"
                    ))
                    .with_hint(perhaps(attribute, related.table.column_names()))
                })?;
                column.check_usable(&format!("{path}.attribute"), &what)?;
                Some(column.clone())
            }
        };
        let function = definition.function;
        let needs = |kinds: &[ColumnKind], what_for: &str| -> Result<Column, Reported> {
            let column = attribute.clone().expect("the parser requires an attribute");
            if kinds.contains(&column.kind) {
                Ok(column)
            } else {
                Err(invalid(
                    &format!("{path}.attribute"),
                    format!(
                        "{} needs {what_for}, and \"{}\" is {}",
                        function.name(),
                        column.name,
                        column.type_sql
                    ),
                )
                .into())
            }
        };
        use ColumnKind::*;
        let r = |column: &Column| format!("r.{}", ident(&column.name));
        let bare = ("", "");
        let (aggregate, wrap, mut column) = match function {
            TraitFunction::Count => (
                "pg_catalog.count(*)".to_string(),
                bare,
                value_column("bigint", Numeric),
            ),
            TraitFunction::CountDistinct => {
                let c = attribute.clone().expect("the parser requires an attribute");
                (
                    format!("pg_catalog.count(DISTINCT {})", r(&c)),
                    bare,
                    value_column("bigint", Numeric),
                )
            }
            TraitFunction::Sum | TraitFunction::Avg => {
                let c = needs(&[Numeric], "a numeric column")?;
                (
                    format!("pg_catalog.{}({})", function.name(), r(&c)),
                    ("(", ")::pg_catalog.numeric"),
                    value_column("numeric", Numeric),
                )
            }
            TraitFunction::Min | TraitFunction::Max => {
                let c = needs(
                    &[Numeric, Text, Date, Timestamp, TimestampTz],
                    "a number, text, date or timestamp column",
                )?;
                (
                    format!("pg_catalog.{}({})", function.name(), r(&c)),
                    bare,
                    c,
                )
            }
            TraitFunction::First | TraitFunction::Last => {
                let c = attribute.clone().expect("the parser requires an attribute");
                let time = time_column(&format!("{path}.related"), &related, function.name())?;
                let order = if function == TraitFunction::First {
                    "ASC"
                } else {
                    "DESC"
                };
                (
                    format!(
                        "pg_catalog.array_agg({} ORDER BY r.{} {order}, {})",
                        r(&c),
                        ident(&time.name),
                        r(&c)
                    ),
                    ("(", ")[1]"),
                    c,
                )
            }
            TraitFunction::MostFrequent => {
                let c = attribute.clone().expect("the parser requires an attribute");
                (
                    format!("pg_catalog.mode() WITHIN GROUP (ORDER BY {})", r(&c)),
                    bare,
                    c,
                )
            }
        };
        column.name = name.to_string();
        column.refused = None;
        Ok(TraitMeasure {
            id,
            from,
            key,
            filters,
            aggregate,
            wrap,
            column,
            is_count: function.is_count(),
            related: related.name.clone(),
        })
    }

    /// `{"trait": T, "op": OP, "value": V}`: an aggregate leaf (matching
    /// records, records with rows), records without rows matching when the
    /// trait's empty value (0 or NULL) does; with the trait and the
    /// comparison, which `share_trait_scans` merges with the other
    /// conditions on traits of the same related table. A rank is a key set
    /// of its own.
    pub(super) fn trait_leaf(
        &self,
        path: &str,
        test: &TraitTest,
    ) -> Result<(Leaf, Option<(TraitMeasure, String)>), Reported> {
        let measure = self.trait_measure(path, &test.name)?;
        if test.op.is_rank() {
            return Ok((self.trait_rank(path, test, &measure)?, None));
        }
        let table = Table {
            dropped: false,
            relation_sql: String::new(),
            columns: vec![measure.column.clone()],
        };
        let what = format!("trait \"{}\"", test.name);
        let attribute = AttributeTest {
            column: test.name.clone(),
            op: test.op,
            value: test.value.clone(),
            ignore_case: test.ignore_case,
        };
        let comparison = attribute_sql(path, "g", &table, &what, &attribute, &self.reference_time)?;
        let empty_matches = if measure.is_count {
            zero_matches(test.op, &test.value)
        } else {
            test.op == Op::IsNull
        };
        let (position, join) = self.position("g.key");
        let leaf = Leaf::Aggregate {
            sql: format!(
                "SELECT segments.rb_agg({position}) FILTER (WHERE {comparison}), segments.rb_agg({position}) \
                 FROM ({}) g{join}",
                measure.grouped_sql()
            ),
            empty_matches,
            column: 1,
        };
        Ok((leaf, Some((measure, comparison))))
    }

    /// Rewrites the plan's conditions on traits so that those on the traits
    /// of one related table (and path) share one query: one scan and one
    /// `GROUP BY` computing every trait they use, one bitmap column per
    /// condition, and the keys with rows last. A record in the group without
    /// rows in one trait's own scope gets that trait's empty value (0 or
    /// NULL) from its `FILTER`, which its comparison then tests. Leaves in
    /// `scanned` are a window scan's, and keep their own queries.
    pub(super) fn share_trait_scans(
        &self,
        leaves: &mut [Leaf],
        scanned: &std::collections::HashSet<usize>,
    ) {
        let mut groups: std::collections::BTreeMap<(String, String), Vec<usize>> =
            std::collections::BTreeMap::new();
        for (i, leaf) in leaves.iter().enumerate() {
            if scanned.contains(&i) {
                continue;
            }
            if let Some((measure, _)) = self.trait_conditions.get(leaf) {
                groups
                    .entry((measure.from.clone(), measure.key.clone()))
                    .or_default()
                    .push(i);
            }
        }
        let (position, join) = self.position("g.key");
        for group in groups.values() {
            // A lone related condition keeps its own query (an existence
            // test needs no GROUP BY); traits always read their values.
            let traits = group
                .iter()
                .any(|&i| self.trait_conditions[&leaves[i]].0.id >= 0);
            if group.len() < 2 && !traits {
                continue;
            }
            for chunk in group.chunks(SHARED_CONDITIONS_PER_SCAN) {
                let conditions: Vec<&(TraitMeasure, String)> = chunk
                    .iter()
                    .map(|&i| &self.trait_conditions[&leaves[i]])
                    .collect();
                let mut measures: Vec<TraitMeasure> = Vec::new();
                for (measure, _) in conditions.iter().copied() {
                    if !measures.iter().any(|m| m.id == measure.id) {
                        measures.push(measure.clone());
                    }
                }
                let columns: Vec<String> = conditions
                    .iter()
                    .map(|(_, comparison)| {
                        format!("segments.rb_agg({position}) FILTER (WHERE {comparison})")
                    })
                    .collect();
                let sql = format!(
                    "SELECT {}, segments.rb_agg({position}) FROM ({}) g{join}",
                    columns.join(", "),
                    traits_query(&measures)
                );
                for (j, &i) in chunk.iter().enumerate() {
                    let empty_matches = match &leaves[i] {
                        Leaf::Aggregate { empty_matches, .. } => *empty_matches,
                        // An existence test: a record without rows never holds.
                        _ => false,
                    };
                    leaves[i] = Leaf::Aggregate {
                        sql: sql.clone(),
                        empty_matches,
                        column: j + 1,
                    };
                }
            }
        }
    }

    /// A rank on a trait: its value for every eligible record (0 or NULL
    /// without rows), ranked as `rank_filter` ranks an attribute.
    fn trait_rank(
        &self,
        path: &str,
        test: &TraitTest,
        measure: &TraitMeasure,
    ) -> Result<Leaf, Reported> {
        check_op(path, &measure.column, test.op, test.ignore_case)?;
        let Operand::Scalar(value) = &test.value else {
            unreachable!("the parser gives ranks a number")
        };
        let entity = &self.entity;
        let what = format!("entity \"{}\"", entity.name);
        let key = format!("e.{}", ident(&entity.key_column));
        let mut scope = Vec::new();
        if let Some(eligible) = &entity.eligible {
            let condition = crate::definition::parse_condition("eligible", eligible)?;
            let mut nodes = Vec::new();
            crate::definition::walk_condition(&condition, &mut nodes);
            if nodes.iter().any(|n| {
                matches!(
                    n.kind,
                    ConditionKind::Related(_) | ConditionKind::Segment(_) | ConditionKind::Trait(_)
                )
            }) {
                return Err(SegmentsError::FeatureNotSupported(format!(
                    "{path}: {} ranks among the eligible records of {what}, and its eligible condition reads related tables or segments; ranks need an eligible condition on the entity's own columns",
                    test.op.name()
                ))
                .into());
            }
            scope.push(related_condition(
                &condition,
                RowScope {
                    alias: "e",
                    steps: &[],
                },
                &entity.table,
                &what,
                &self.reference_time,
            )?);
        }
        let where_sql = if scope.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", scope.join(" AND "))
        };
        let name = ident(&measure.column.name);
        // Records without rows rank only when their value is not NULL (a
        // count's 0) or when only eligible records rank: then every record
        // is read; otherwise the grouped rows are all there is to rank.
        let values = if measure.is_count || !scope.is_empty() {
            format!(
                "SELECT {key} AS key, coalesce(g.{name}, {}) AS v FROM {} e \
                 LEFT JOIN ({}) g ON g.key {} {key}{where_sql}",
                measure.empty_value(),
                entity.table.relation_sql,
                measure.grouped_sql(),
                op("=")
            )
        } else {
            format!(
                "SELECT g.key, g.{name} AS v FROM ({}) g",
                measure.grouped_sql()
            )
        };
        let number = literal(&value.to_string());
        let limit = match test.op {
            Op::TopPercent | Op::BottomPercent => format!(
                "(SELECT pg_catalog.ceil((pg_catalog.count(*) {} {number}::pg_catalog.numeric) {} 100::pg_catalog.numeric)::pg_catalog.int8 \
                 FROM t WHERE t.v IS NOT NULL)",
                op("*"),
                op("/")
            ),
            _ => format!("{number}::pg_catalog.int8"),
        };
        let (order, pick, compare) = match test.op {
            Op::TopPercent | Op::Top => ("DESC", "min", ">="),
            _ => ("ASC", "max", "<="),
        };
        let restriction = match &self.restriction {
            Some(keys) => format!(" AND t.key {} ANY ({keys})", op("=")),
            None => String::new(),
        };
        let (position, join) = self.position("t.key");
        Ok(Leaf::KeySet(format!(
            "WITH t AS MATERIALIZED ({values}) \
             SELECT segments.rb_agg({position}) FROM t{join} WHERE t.v IS NOT NULL AND t.v {} \
             (SELECT pg_catalog.{pick}(x.v) FROM (SELECT t.v FROM t WHERE t.v IS NOT NULL ORDER BY t.v {order} LIMIT {limit}) x){restriction}",
            op(compare)
        )))
    }

    /// For `explain_member`: a trait's value for the restricted keys, as
    /// text (0 or NULL without rows).
    pub fn trait_value_sql(&self, path: &str, name: &str) -> Result<String, Reported> {
        let measure = self.trait_measure(path, name)?;
        Ok(format!(
            "SELECT coalesce((SELECT ({})::pg_catalog.text FROM ({}) g), ({})::pg_catalog.text)",
            ident(&measure.column.name),
            measure.grouped_sql(),
            measure.empty_value()
        ))
    }
}

/// A trait value's column: named as the trait later.
fn value_column(type_sql: &str, kind: ColumnKind) -> Column {
    Column {
        name: String::new(),
        type_sql: type_sql.to_string(),
        base_type_sql: type_sql.to_string(),
        kind,
        refused: None,
    }
}

/// Whether a count of 0 (a record without related rows) passes `op`.
fn zero_matches(op: Op, value: &Operand) -> bool {
    match (op, value) {
        (Op::IsNotNull, _) => true,
        (Op::In | Op::NotIn, Operand::List(items)) => {
            let has_zero = items.iter().any(|v| v.as_f64() == Some(0.0));
            (op == Op::In) == has_zero
        }
        (Op::Eq | Op::Ne | Op::Lt | Op::Lte | Op::Gt | Op::Gte | Op::Between, _) => {
            compares_true(0.0, op, value)
        }
        _ => false,
    }
}

/// Column groups over traits of one related table and path (two or more),
/// computed from one grouped scan of it: each trait grouped again would
/// sort the table again.
#[derive(Debug, Clone, PartialEq)]
pub struct TraitSource {
    /// The traits' values, one row per record with rows (`traits_query`).
    pub values_sql: String,
    /// The column groups it computes (indexes into `Plan::column_groups`),
    /// all bucketed.
    pub groups: Vec<usize>,
}

impl Planner<'_> {
    /// The trait sources of `groups`: groups over traits of one related
    /// table and path, where there are two or more.
    pub(super) fn trait_sources(&self, groups: &[ColumnGroup]) -> Vec<TraitSource> {
        let mut by_table: std::collections::BTreeMap<(&str, &str), Vec<(usize, &TraitMeasure)>> =
            Default::default();
        for (i, group) in groups.iter().enumerate() {
            let measure = group.rows.as_ref().and_then(|r| self.trait_rows.get(r));
            if let Some(measure) = measure.filter(|_| group.ordered) {
                by_table
                    .entry((&measure.from, &measure.key))
                    .or_default()
                    .push((i, measure));
            }
        }
        by_table
            .into_values()
            .filter(|members| members.len() >= 2)
            .map(|members| {
                let mut measures: Vec<TraitMeasure> = Vec::new();
                for (_, measure) in &members {
                    if !measures.iter().any(|m| m.id == measure.id) {
                        measures.push((*measure).clone());
                    }
                }
                TraitSource {
                    values_sql: traits_query(&measures),
                    groups: members.iter().map(|(i, _)| *i).collect(),
                }
            })
            .collect()
    }
}

/// Every trait of `measures` (all of one related table and path) computed
/// in one scan: one row per record with rows of it, one column per trait,
/// each over just the rows its own `where` and `within` select.
pub fn traits_query(measures: &[TraitMeasure]) -> String {
    let first = &measures[0];
    // Filters every trait has (a live restriction, a shared window) go to
    // the WHERE clause, where an index can serve them; each trait's others
    // to its FILTER.
    let common: Vec<&String> = first
        .filters
        .iter()
        .filter(|f| measures.iter().all(|m| m.filters.contains(f)))
        .collect();
    let own = |m: &TraitMeasure| -> Vec<String> {
        m.filters
            .iter()
            .filter(|f| !common.contains(f))
            .cloned()
            .collect()
    };
    let columns: Vec<String> = measures
        .iter()
        .map(|m| {
            let own = own(m);
            let filter = (!own.is_empty()).then(|| own.join(" AND "));
            format!(
                "{} AS {}",
                m.measure(filter.as_deref()),
                ident(&m.column.name)
            )
        })
        .collect();
    // The rows some trait reads.
    let mut conditions: Vec<String> = common.iter().map(|f| f.to_string()).collect();
    let scopes: Vec<String> = measures
        .iter()
        .map(own)
        .filter(|own| !own.is_empty())
        .map(|own| format!("({})", own.join(" AND ")))
        .collect();
    if scopes.len() == measures.len() {
        conditions.push(format!("({})", scopes.join(" OR ")));
    }
    let where_sql = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    format!(
        "SELECT {key} AS key, {} FROM {}{where_sql} GROUP BY {key}",
        columns.join(", "),
        first.from,
        key = first.key
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::fixture::customers;
    use crate::catalog::fixture::FixedCatalog;
    use crate::compile::compile_definition;
    use serde_json::{json, Value};

    const NOW: &str = "'2026-11-01 00:00:00+00'::timestamptz";

    fn catalog() -> FixedCatalog {
        let mut catalog = customers();
        let traits = [
            (
                "order_count",
                json!({"related": "orders", "aggregate": "count"}),
            ),
            (
                "lifetime_value",
                json!({"related": "orders", "aggregate": "sum", "attribute": "amount",
                                     "where": {"attribute": "status", "op": "eq", "value": "paid"}}),
            ),
            (
                "last_status",
                json!({"related": "orders", "aggregate": "last", "attribute": "status"}),
            ),
            (
                "usual_status",
                json!({"related": "orders", "aggregate": "most_frequent", "attribute": "status", "within": "1 year"}),
            ),
        ];
        catalog.entities[0].traits = traits
            .into_iter()
            .enumerate()
            .map(|(i, (name, definition))| TraitDef {
                id: i as i64 + 1,
                name: name.into(),
                definition,
            })
            .collect();
        catalog
    }

    fn leaves(condition: Value) -> Result<Vec<Leaf>, (String, String)> {
        let definition = json!({"entity": "customer", "rules": [{"where": condition}]});
        compile_definition(&catalog(), &definition, None, NOW, usize::MAX)
            .map(|(_, plan, _)| plan.leaves)
            .map_err(|e| (e.error.code().to_string(), e.error.to_string()))
    }

    #[test]
    fn a_condition_on_a_trait_is_a_grouped_aggregate() {
        let [Leaf::Aggregate {
            sql, empty_matches, ..
        }] = &leaves(json!({"trait": "lifetime_value", "op": "gte", "value": 500})).unwrap()[..]
        else {
            panic!()
        };
        assert!(!empty_matches);
        assert!(
            sql.contains(
                r#"FILTER (WHERE g."lifetime_value" OPERATOR(pg_catalog.>=) '500'::numeric)"#
            ),
            "{sql}"
        );
        assert!(sql.contains(r#"(SELECT r."customer_id" AS key, (pg_catalog.sum(r."amount"))::pg_catalog.numeric AS "lifetime_value" FROM "public"."orders" r WHERE r."status" OPERATOR(pg_catalog.=) 'paid'::text GROUP BY r."customer_id") g"#), "{sql}");
        // A count below 3 holds for records without orders.
        let [Leaf::Aggregate { empty_matches, .. }] =
            &leaves(json!({"trait": "order_count", "op": "lt", "value": 3})).unwrap()[..]
        else {
            panic!()
        };
        assert!(empty_matches);
        let [Leaf::Aggregate { sql, .. }] =
            &leaves(json!({"trait": "last_status", "op": "in", "value": ["paid", "refunded"]}))
                .unwrap()[..]
        else {
            panic!()
        };
        assert!(sql.contains(r#"(pg_catalog.array_agg(r."status" ORDER BY r."ordered_at" DESC, r."status"))[1] AS "last_status""#), "{sql}");
    }

    #[test]
    fn column_groups_over_traits_of_one_table_share_one_grouped_scan() {
        let catalog = catalog();
        let mut planner = Planner::new(&catalog, "customer", "entity", NOW).unwrap();
        planner.group_columns_from(2);
        let definition = |condition: Value| {
            crate::definition::Definition::parse(
                &json!({"entity": "customer", "rules": [{"where": condition}]}),
            )
            .unwrap()
        };
        let mut compiled = Vec::new();
        for n in 1..=3 {
            for name in ["order_count", "lifetime_value"] {
                compiled.push(
                    planner
                        .add(
                            &definition(json!({"trait": name, "op": "gt", "value": n * 7})),
                            None,
                        )
                        .unwrap(),
                );
            }
        }
        let mut refs: Vec<&mut crate::compile::CompiledSegment> = compiled.iter_mut().collect();
        let plan = planner.finish(&mut refs);
        assert_eq!(plan.column_groups.len(), 2, "{:?}", plan.column_groups);
        let [source] = &plan.trait_sources[..] else {
            panic!("{:?}", plan.trait_sources)
        };
        assert_eq!(source.groups, vec![0, 1]);
        // One GROUP BY of orders, each trait over its own rows.
        assert_eq!(
            source.values_sql.matches("GROUP BY").count(),
            1,
            "{}",
            source.values_sql
        );
        assert!(source.values_sql.contains(r#"(pg_catalog.sum(r."amount") FILTER (WHERE r."status" OPERATOR(pg_catalog.=) 'paid'::text))::pg_catalog.numeric AS "lifetime_value""#), "{}", source.values_sql);
        let sql = plan.trait_source_sql(source, &[vec![1, 2, 3], vec![1, 2, 3]]);
        assert!(
            sql.starts_with("WITH trait_values AS MATERIALIZED ("),
            "{sql}"
        );
        assert_eq!(sql.matches("FROM trait_values g").count(), 2, "{sql}");
        assert_eq!(sql.matches(" UNION ALL ").count(), 1, "{sql}");
    }

    #[test]
    fn conditions_on_traits_of_one_table_share_one_scan() {
        let leaves = leaves(json!({"all": [
            {"trait": "lifetime_value", "op": "gte", "value": 500},
            {"trait": "order_count", "op": "lt", "value": 3},
            {"trait": "last_status", "op": "eq", "value": "paid"}]}))
        .unwrap();
        let [Leaf::Aggregate {
            sql: a, column: 1, ..
        }, Leaf::Aggregate {
            sql: b,
            column: 2,
            empty_matches: true,
        }, Leaf::Aggregate {
            sql: c, column: 3, ..
        }] = &leaves[..]
        else {
            panic!("{leaves:?}")
        };
        assert!(a == b && b == c, "one shared query");
        assert_eq!(a.matches(" FROM \"public\".\"orders\" r").count(), 1, "{a}");
        assert!(a.contains(r#"segments.rb_agg(g.key::pg_catalog.int8) FILTER (WHERE g."order_count" OPERATOR(pg_catalog.<) '3'::bigint)"#), "{a}");
        assert!(a.contains(r#"(pg_catalog.sum(r."amount") FILTER (WHERE r."status" OPERATOR(pg_catalog.=) 'paid'::text))::pg_catalog.numeric AS "lifetime_value""#), "{a}");
        assert_ne!(leaves[0].identity(), leaves[1].identity());
    }

    #[test]
    fn related_conditions_of_one_table_share_one_scan_with_traits() {
        let shared = leaves(json!({"any": [
            {"related": "orders", "within": "30 days"},
            {"related": "orders", "aggregate": "count", "within": "90 days", "op": "lt", "value": 2},
            {"trait": "order_count", "op": "gte", "value": 3}]}))
        .unwrap();
        let [Leaf::Aggregate {
            sql: a,
            column: 1,
            empty_matches: false,
        }, Leaf::Aggregate {
            sql: b,
            column: 2,
            empty_matches: true,
        }, Leaf::Aggregate {
            sql: c, column: 3, ..
        }] = &shared[..]
        else {
            panic!("{shared:?}")
        };
        assert!(a == b && b == c, "one shared query");
        assert_eq!(a.matches(" FROM \"public\".\"orders\" r").count(), 1, "{a}");
        // Each window's edges are computed once, not per row.
        assert!(a.contains("FILTER (WHERE (r.\"ordered_at\" OPERATOR(pg_catalog.>=) (SELECT ('2026-11-01 00:00:00+00'::timestamptz OPERATOR(pg_catalog.-) '30 days'::pg_catalog.interval))"), "{a}");
        assert!(a.contains("OPERATOR(pg_catalog.>) 0)"), "{a}");
        // A lone related condition keeps its own query.
        let [Leaf::KeySet(alone)] =
            &leaves(json!({"related": "orders", "within": "30 days"})).unwrap()[..]
        else {
            panic!()
        };
        assert!(!alone.contains("GROUP BY"), "{alone}");
    }

    #[test]
    fn a_rank_on_a_trait_counts_records_without_rows() {
        let [Leaf::KeySet(sql)] =
            &leaves(json!({"trait": "order_count", "op": "top_percent", "value": 5})).unwrap()[..]
        else {
            panic!()
        };
        assert!(sql.starts_with("WITH t AS MATERIALIZED (SELECT e.\"id\" AS key, coalesce(g.\"order_count\", 0::pg_catalog.int8) AS v FROM \"public\".\"customers\" e LEFT JOIN"), "{sql}");
        assert!(
            sql.contains("ORDER BY t.v DESC LIMIT (SELECT pg_catalog.ceil("),
            "{sql}"
        );
    }

    #[test]
    fn trait_mistakes_are_refused() {
        let cases = [
            (json!({"trait": "lifetime_valu", "op": "gt", "value": 1}), "42704", "rules[0].where.trait: trait \"lifetime_valu\" does not exist for entity \"customer\""),
            (json!({"trait": "order_count", "op": "gt", "value": "many"}), "22023", "rules[0].where.value"),
            (json!({"trait": "last_status", "op": "top", "value": 1}), "22023", "rules[0].where.op: operator top does not apply to column \"last_status\" of type text"),
            (json!({"trait": "order_count", "op": "contains", "value": "x"}), "22023", "rules[0].where.op: operator contains does not apply to column \"order_count\""),
            (json!({"related": "orders", "where": {"trait": "order_count", "op": "gt", "value": 1}}), "22023", "rules[0].where.where: inside \"related\""),
        ];
        for (condition, code, message) in cases {
            let (got_code, got) = leaves(condition).unwrap_err();
            assert!(got.starts_with(message), "{got}\n  expected {message}");
            assert_eq!(got_code, code, "{got}");
        }
    }

    #[test]
    fn traits_of_one_table_are_one_scan() {
        let catalog = catalog();
        let planner = Planner::new(&catalog, "customer", "entity", NOW).unwrap();
        let measures: Vec<TraitMeasure> = ["order_count", "lifetime_value", "last_status"]
            .iter()
            .map(|n| planner.trait_measure("trait", n).unwrap())
            .collect();
        let sql = traits_query(&measures);
        assert_eq!(sql.matches(" FROM ").count(), 1, "{sql}");
        assert!(sql.contains(r#"(pg_catalog.sum(r."amount") FILTER (WHERE r."status" OPERATOR(pg_catalog.=) 'paid'::text))::pg_catalog.numeric AS "lifetime_value""#), "{sql}");
        // order_count reads every row: no WHERE.
        assert!(!sql.contains(" WHERE r."), "{sql}");
    }
}
