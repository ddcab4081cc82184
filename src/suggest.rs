//! Suggested segments: splits whose members differ most from the whole
//! population on a measure, returned as ready definitions. The measure is
//! a numeric column of the entity, or activity: a related table (`orders`:
//! how many rows in the last 90 days) or one of its numeric columns
//! (`orders.amount`: their sum). Categorical columns (2 to 30 distinct
//! values) split by value; numeric columns by quartile; related tables
//! with a time column split by activity (rows in the last 30 days, none in
//! 60 days, 3 or more in 90 days).

use pgrx::prelude::*;
use pgrx::spi::Spi;
use pgrx::JsonB;
use serde_json::{json, Value};

use segments_core::catalog::{Column, ColumnKind, Entity};
use segments_core::sql::ident;

use crate::pg::error::{OrRaise, Reported, SegmentsError};
use crate::pg::spi::{required, spi};

/// A candidate split and how its members compare with everyone.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub condition: Value,
    pub members: i64,
    pub measure_avg: f64,
}

/// Ranks splits by how far their average is from the population's, skipping
/// those too small to mean anything (under 1% of the rows, or 30).
pub fn rank(
    mut splits: Vec<Split>,
    population_avg: f64,
    population: i64,
    max: usize,
) -> Vec<(Split, f64)> {
    let minimum = ((population as f64) * 0.01).max(30.0) as i64;
    splits.retain(|s| s.members >= minimum && s.members < population && s.measure_avg.is_finite());
    let lift = |s: &Split| {
        if population_avg != 0.0 {
            s.measure_avg / population_avg
        } else {
            f64::NAN
        }
    };
    let mut ranked: Vec<(Split, f64)> = splits
        .into_iter()
        .map(|s| {
            let l = lift(&s);
            (s, l)
        })
        .collect();
    ranked.sort_by(|a, b| {
        let da = (a.0.measure_avg - population_avg).abs();
        let db = (b.0.measure_avg - population_avg).abs();
        db.total_cmp(&da).then(b.0.members.cmp(&a.0.members))
    });
    ranked.truncate(max);
    ranked
}

fn column<'a>(entity: &'a Entity, name: &str) -> Result<&'a Column, Reported> {
    entity.table.column(name).ok_or_else(|| {
        SegmentsError::UndefinedColumn(format!(
            "column \"{name}\" does not exist on entity \"{}\"",
            entity.name
        ))
        .with_hint(segments_core::spelling::perhaps(
            name,
            entity.table.column_names(),
        ))
    })
}

/// The measure of one entity row (alias e) as SQL, and its description.
fn measure_sql(entity: &Entity, measure: &str, reference: &str) -> Result<String, Reported> {
    // A trait first: a named value of each record (0 for a count without rows).
    if entity.trait_def(measure).is_some() {
        let planner = crate::engine::plan::planner(&entity.name, reference)?;
        let found = planner.trait_measure("measure", measure)?;
        if found.column.kind != ColumnKind::Numeric {
            return Err(SegmentsError::InvalidParameter(format!(
                "measure: trait \"{measure}\" is {}; a measure is numeric",
                found.column.type_sql
            ))
            .into());
        }
        let mut filters = found.filters.clone();
        filters.push(format!(
            "{} OPERATOR(pg_catalog.=) e.{}",
            found.key,
            ident(&entity.key_column)
        ));
        return Ok(format!(
            "coalesce((SELECT {} FROM {} WHERE {}), {})::float8",
            found.measure(None),
            found.from,
            filters.join(" AND "),
            found.empty_value()
        ));
    }
    if let Ok(column) = column(entity, measure) {
        if column.kind != ColumnKind::Numeric {
            return Err(SegmentsError::InvalidParameter(format!(
                "measure \"{measure}\" is {}; a measure is a numeric column, a related table or related.column",
                column.type_sql
            ))
            .into());
        }
        return Ok(format!("e.{}::float8", ident(measure)));
    }
    let (related_name, attribute) = match measure.split_once('.') {
        Some((r, a)) => (r, Some(a)),
        None => (measure, None),
    };
    let Some(related) = entity.related(related_name) else {
        return Err(column(entity, measure).expect_err("no such column"));
    };
    let mut filters = vec![format!(
        "r.{} = e.{}",
        ident(&related.foreign_key),
        ident(&entity.key_column)
    )];
    if let Some(time) = &related.time_column {
        filters.push(format!(
            "r.{t} >= {reference} - interval '90 days' AND r.{t} <= {reference}",
            t = ident(time)
        ));
    }
    let value = match attribute {
        None => "count(*)".to_string(),
        Some(a) => {
            let c = related.table.column(a).ok_or_else(|| {
                SegmentsError::UndefinedColumn(format!(
                    "column \"{a}\" does not exist on related table \"{related_name}\""
                ))
            })?;
            if c.kind != ColumnKind::Numeric {
                return Err(SegmentsError::InvalidParameter(format!(
                    "measure \"{measure}\" is {}; it must be numeric",
                    c.type_sql
                ))
                .into());
            }
            format!("coalesce(sum(r.{}), 0)", ident(a))
        }
    };
    Ok(format!(
        "(SELECT {value} FROM {} r WHERE {})::float8",
        related.table.relation_sql,
        filters.join(" AND ")
    ))
}

/// Activity splits: for every related table with a time column, who has
/// rows in the last 30 days, who has none in 60 days, who has 3 or more in
/// 90 days.
fn activity_splits(entity: &Entity, measure_sql: &str, reference: &str) -> Vec<Split> {
    let mut splits = Vec::new();
    for related in &entity.related {
        let Some(time) = &related.time_column else {
            continue;
        };
        let rows = |days: i32| {
            format!(
                "FROM {} r WHERE r.{} = e.{} AND r.{t} >= {reference} - interval '{days} days' AND r.{t} <= {reference}",
                related.table.relation_sql,
                ident(&related.foreign_key),
                ident(&entity.key_column),
                t = ident(time)
            )
        };
        let candidates = [
            (
                json!({"related": related.name, "within": "30 days"}),
                format!("EXISTS (SELECT 1 {})", rows(30)),
            ),
            (
                json!({"related": related.name, "exists": false, "within": "60 days"}),
                format!("NOT EXISTS (SELECT 1 {})", rows(60)),
            ),
            (
                json!({"related": related.name, "aggregate": "count", "within": "90 days", "op": "gte", "value": 3}),
                format!("(SELECT count(*) {}) >= 3", rows(90)),
            ),
        ];
        for (condition, sql) in candidates {
            let row = Spi::connect(|client| {
                let table = spi(client.select(
                    &format!(
                        "SELECT count(*), avg({measure_sql}) FROM {} e WHERE {sql}",
                        entity.table.relation_sql
                    ),
                    None,
                    &[],
                ));
                let row = table.first();
                (spi(row.get::<i64>(1)).unwrap_or(0), spi(row.get::<f64>(2)))
            });
            splits.push(Split {
                condition,
                members: row.0,
                measure_avg: row.1.unwrap_or(f64::NAN),
            });
        }
    }
    splits
}

fn splits_of(entity: &Entity, attribute: &Column, measure: &str) -> Vec<Split> {
    let table = &entity.table.relation_sql;
    let (a, m) = (ident(&attribute.name), measure.to_string());
    let mut splits = Vec::new();
    match attribute.kind {
        ColumnKind::Text | ColumnKind::Boolean => {
            // One row per distinct value: a column of 2 to 30 values is categorical.
            let sql = format!(
                "SELECT e.{a}::text, count(*), avg({m})::float8
                   FROM {table} e WHERE e.{a} IS NOT NULL GROUP BY e.{a} LIMIT 31"
            );
            let rows: Vec<(String, i64, Option<f64>)> = Spi::connect(|client| {
                spi(client.select(&sql, None, &[]))
                    .map(|r| (required(&r, 1), required(&r, 2), spi(r.get(3))))
                    .collect()
            });
            if (2..=30).contains(&rows.len()) {
                for (value, members, avg) in rows {
                    let value = if attribute.kind == ColumnKind::Boolean {
                        json!(value == "true")
                    } else {
                        json!(value)
                    };
                    let condition =
                        json!({"attribute": attribute.name, "op": "eq", "value": value});
                    splits.push(Split {
                        condition,
                        members,
                        measure_avg: avg.unwrap_or(f64::NAN),
                    });
                }
            }
        }
        ColumnKind::Numeric => {
            let sql = format!(
                "WITH q AS (SELECT percentile_disc(ARRAY[0, 0.25, 0.5, 0.75, 1]) WITHIN GROUP (ORDER BY e.{a}::float8) AS b
                              FROM {table} e WHERE e.{a} IS NOT NULL
                               AND e.{a}::float8 NOT IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8)),
                      r AS (SELECT low, high FROM q, LATERAL (VALUES (b[1], b[2]), (b[2], b[3]), (b[3], b[4]), (b[4], b[5])) v(low, high)
                             WHERE low < high)
                 SELECT r.low, r.high, count(e.*), avg({m})::float8
                   FROM r LEFT JOIN {table} e ON e.{a}::float8 >= r.low AND (e.{a}::float8 < r.high OR r.high = (SELECT b[5] FROM q))
                  GROUP BY r.low, r.high ORDER BY r.low"
            );
            let rows: Vec<(f64, f64, i64, Option<f64>)> = Spi::connect(|client| {
                spi(client.select(&sql, None, &[]))
                    .map(|r| {
                        (
                            required(&r, 1),
                            required(&r, 2),
                            required(&r, 3),
                            spi(r.get(4)),
                        )
                    })
                    .collect()
            });
            let last = rows.len();
            for (i, (low, high, members, avg)) in rows.into_iter().enumerate() {
                // NaN and infinite values make no split a definition can hold.
                if !low.is_finite() || !high.is_finite() {
                    continue;
                }
                let condition = if i + 1 == last {
                    json!({"attribute": attribute.name, "op": "gte", "value": low})
                } else {
                    json!({"all": [{"attribute": attribute.name, "op": "gte", "value": low},
                                    {"attribute": attribute.name, "op": "lt", "value": high}]})
                };
                splits.push(Split {
                    condition,
                    members,
                    measure_avg: avg.unwrap_or(f64::NAN),
                });
            }
        }
        _ => {}
    }
    splits
}

fn suggest_impl(
    entity: &str,
    measure: &str,
    influencing: Option<Vec<String>>,
    max_segments: i32,
) -> Result<Vec<(Value, i64, f64, f64)>, Reported> {
    let entity = crate::pg::catalog::registered_entity(entity)?;
    let reference = crate::engine::evaluate::reference_time_sql();
    let measure_sql = measure_sql(&entity, measure, &reference)?;
    if max_segments < 1 {
        return Err(SegmentsError::InvalidParameter(format!(
            "max_segments must be 1 or more, not {max_segments}"
        ))
        .into());
    }
    let attributes: Vec<&Column> = match &influencing {
        Some(names) => names
            .iter()
            .map(|n| column(&entity, n))
            .collect::<Result<_, _>>()?,
        None => entity
            .table
            .columns
            .iter()
            .filter(|c| {
                c.name != entity.key_column
                    && c.name != measure
                    && matches!(
                        c.kind,
                        ColumnKind::Text | ColumnKind::Boolean | ColumnKind::Numeric
                    )
            })
            .collect(),
    };
    let (population, population_avg): (i64, f64) = Spi::connect(|client| {
        let row = spi(client.select(
            &format!(
                "SELECT count(*), avg({measure_sql})::float8 FROM {} e",
                entity.table.relation_sql
            ),
            None,
            &[],
        ))
        .first();
        (
            spi(row.get::<i64>(1)).unwrap_or(0),
            spi(row.get::<f64>(2)).unwrap_or(f64::NAN),
        )
    });
    let mut splits: Vec<Split> = attributes
        .iter()
        .flat_map(|a| splits_of(&entity, a, &measure_sql))
        .collect();
    if influencing.is_none() {
        splits.extend(activity_splits(&entity, &measure_sql, &reference));
    }
    Ok(
        rank(splits, population_avg, population, max_segments as usize)
            .into_iter()
            .map(|(split, lift)| {
                let definition =
                    json!({"entity": entity.name, "rules": [{"where": split.condition}]});
                (definition, split.members, split.measure_avg, lift)
            })
            .collect(),
    )
}

/// Attribute splits whose members differ most from everyone on `measure`,
/// as ready definitions (pass one to create_segment).
#[pg_extern(schema = "segments", stable)]
fn suggest(
    entity: &str,
    measure: &str,
    influencing: default!(Option<Vec<String>>, "NULL"),
    max_segments: default!(i32, 5),
) -> TableIterator<
    'static,
    (
        name!(definition, JsonB),
        name!(members, i64),
        name!(measure_avg, f64),
        name!(lift, f64),
    ),
> {
    // Runs as the caller, in the sandbox (fixed search_path).
    crate::pg::sandbox::as_role(
        crate::pg::authorization::current_role(),
        std::panic::AssertUnwindSafe(|| {
            let rows = suggest_impl(entity, measure, influencing, max_segments).or_raise();
            TableIterator::new(rows.into_iter().map(|(d, m, a, l)| (JsonB(d), m, a, l)))
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(name: &str, members: i64, avg: f64) -> Split {
        Split {
            condition: json!(name),
            members,
            measure_avg: avg,
        }
    }

    #[test]
    fn splits_rank_by_distance_from_the_population() {
        let ranked = rank(
            vec![
                split("close", 500, 101.0),
                split("far", 300, 180.0),
                split("tiny", 5, 900.0),
                split("low", 200, 20.0),
            ],
            100.0,
            1000,
            2,
        );
        let names: Vec<&str> = ranked
            .iter()
            .map(|(s, _)| s.condition.as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["far", "low"], "tiny splits are noise");
        assert!((ranked[0].1 - 1.8).abs() < 1e-9);
    }
}
