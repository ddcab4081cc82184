//! Breakdowns (SPEC 17): who a segment's members are, one attribute or
//! trait at a time, against every eligible record of the entity: counts,
//! shares and lift, the audience insights of a segment builder.
//!
//! One statement, as the caller (their privileges and row-level security on
//! the entity table apply): one scan of the entity table grouped by value,
//! each group's positions gathered into a bitmap by `rb_agg` (as a
//! refresh's scan does, on Citus too), then intersected with the
//! membership here: no join. Numbers and
//! dates with more than `n` distinct values are grouped in `n` ranges of
//! about equal population (bounds from `percentile_disc`; a value shared by
//! many records stays in one range, so a range may hold more).

use std::panic::AssertUnwindSafe;

use pgrx::prelude::*;

use segments_core::catalog::ColumnKind;
use segments_core::sql::{ident, literal};

use crate::pg::authorization::current_role;
use crate::pg::error::{OrRaise, Raise, SegmentsError};
use crate::pg::sandbox::as_role;
use crate::pg::spi::{optional_value, spi};

type BreakdownRow = (Option<String>, i64, f64, i64, f64, Option<f64>);

/// The distribution of an attribute (a column of the entity or a trait)
/// among a segment's members against the entity's eligible records.
#[pg_extern(schema = "segments", stable)]
fn breakdown(
    segment: i64,
    attribute: &str,
    n: default!(i32, 10),
) -> TableIterator<
    'static,
    (
        name!(value, Option<String>),
        name!(members, i64),
        name!(member_share, f64),
        name!(population, i64),
        name!(population_share, f64),
        name!(lift, Option<f64>),
    ),
> {
    as_role(
        current_role(),
        AssertUnwindSafe(|| TableIterator::new(breakdown_rows(segment, attribute, n))),
    )
}

fn breakdown_rows(segment: i64, attribute: &str, n: i32) -> Vec<BreakdownRow> {
    if !(1..=1000).contains(&n) {
        SegmentsError::InvalidParameter(format!("n must be from 1 to 1000, not {n}")).raise();
    }
    let entity_name = optional_value::<String>(
        "SELECT entity FROM segments.segment WHERE id OPERATOR(pg_catalog.=) $1",
        &[segment.into()],
    )
    .unwrap_or_else(|| SegmentsError::no_such_segment(segment).raise());
    let entity = crate::pg::catalog::registered_entity(&entity_name).or_raise();
    let key = format!("e.{}", ident(&entity.key_column));
    // The value: a column of the entity, else a trait (from the traits view).
    let (value, ranged, traits_join) = match entity.table.column(attribute) {
        Some(column) => (
            format!("e.{}", ident(&column.name)),
            matches!(
                column.kind,
                ColumnKind::Numeric
                    | ColumnKind::Date
                    | ColumnKind::Timestamp
                    | ColumnKind::TimestampTz
            ),
            String::new(),
        ),
        None if entity.traits.iter().any(|t| t.name == attribute) => {
            let view = format!(
                "segments.{}",
                ident(&crate::tables::traits_view::traits_view_name(&entity.name))
            );
            let category = optional_value::<String>(
                "SELECT t.typcategory::pg_catalog.text FROM pg_catalog.pg_attribute a \
                   JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid \
                  WHERE a.attrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1) \
                    AND a.attname OPERATOR(pg_catalog.=) $2",
                &[view.clone().into(), attribute.into()],
            )
            .unwrap_or_default();
            (
                format!("t.{}", ident(attribute)),
                category == "N" || category == "D",
                format!(
                    " LEFT JOIN {view} t ON t.{k} OPERATOR(pg_catalog.=) {key}",
                    k = ident(&entity.key_column)
                ),
            )
        }
        None => SegmentsError::UndefinedColumn(format!(
            "entity \"{}\" has no column or trait \"{attribute}\"",
            entity.name
        ))
        .with_hint(segments_core::spelling::perhaps(
            attribute,
            entity
                .table
                .column_names()
                .chain(entity.traits.iter().map(|t| t.name.as_str())),
        ))
        .raise(),
    };
    let (position, dictionary_join) = entity.position_sql(&key);
    // A record without a dictionary entry yet is in the population too.
    let dictionary_join = dictionary_join.replacen(" JOIN ", " LEFT JOIN ", 1);
    let eligible = segments_core::compile::eligible_sql(
        &entity,
        "e",
        &crate::engine::evaluate::reference_time_sql(),
    )
    .or_raise()
    .map(|sql| format!(" WHERE {sql}"))
    .unwrap_or_default();
    let rows_sql = format!(
        "SELECT {value} AS v, {position} AS p FROM {relation} e{dictionary_join}{traits_join}{eligible}",
        relation = entity.table.relation_sql,
    );
    // Each group's positions as a bitmap (rb_agg, as a refresh's scan
    // builds them), intersected with the members below: no join.
    let sql = if ranged {
        let fractions: Vec<String> = (0..n).map(|i| format!("{}", i as f64 / n as f64)).collect();
        format!(
            "WITH r AS ({rows_sql}), \
                  stats AS (SELECT pg_catalog.count(DISTINCT v) AS d, pg_catalog.max(v) AS top FROM r), \
                  bounds AS (SELECT ARRAY(SELECT DISTINCT x FROM pg_catalog.unnest( \
                               pg_catalog.percentile_disc({fractions}::pg_catalog.float8[]) WITHIN GROUP (ORDER BY v)) x ORDER BY x) AS b \
                             FROM r WHERE v IS NOT NULL), \
                  g AS (SELECT CASE WHEN st.d OPERATOR(pg_catalog.>) {n} THEN pg_catalog.width_bucket(r.v, bo.b) END AS i, \
                               CASE WHEN st.d OPERATOR(pg_catalog.<=) {n} THEN r.v END AS raw, r.v IS NULL AS is_null, \
                               pg_catalog.count(*) AS population, segments.rb_agg(r.p) AS positions \
                          FROM r, stats st, bounds bo GROUP BY 1, 2, 3) \
             SELECT CASE WHEN g.is_null THEN NULL WHEN g.i IS NULL THEN g.raw::pg_catalog.text \
                         WHEN g.i OPERATOR(pg_catalog.<) pg_catalog.cardinality(bo.b) \
                         THEN '[' OPERATOR(pg_catalog.||) bo.b[g.i] OPERATOR(pg_catalog.||) ',' OPERATOR(pg_catalog.||) bo.b[g.i OPERATOR(pg_catalog.+) 1] OPERATOR(pg_catalog.||) ')' \
                         ELSE '[' OPERATOR(pg_catalog.||) bo.b[g.i] OPERATOR(pg_catalog.||) ',' OPERATOR(pg_catalog.||) st.top OPERATOR(pg_catalog.||) ']' END, \
                    g.population, g.positions \
               FROM g, stats st, bounds bo",
            fractions = literal(&format!("{{{}}}", fractions.join(",")))
        )
    } else {
        format!(
            "SELECT r.v::pg_catalog.text, pg_catalog.count(*), segments.rb_agg(r.p) FROM ({rows_sql}) r GROUP BY r.v"
        )
    };
    let groups: Vec<(Option<String>, i64, Option<Vec<u8>>)> = Spi::connect(|client| {
        spi(client.select(&sql, None, &[]))
            .map(|row| {
                (
                    spi(row.get::<String>(1)),
                    spi(row.get::<i64>(2)).unwrap_or(0),
                    spi(row.get::<Vec<u8>>(3)),
                )
            })
            .collect()
    });
    let members = crate::engine::evaluate::stored_members(segment);
    let counted: Vec<(Option<String>, i64, i64)> = groups
        .into_iter()
        .map(|(value, population, positions)| {
            let in_group = positions
                .map(|bytes| {
                    let group = segments_core::bitmap::deserialize(&bytes)
                        .unwrap_or_else(|e| crate::pg::error::corrupt(e));
                    group.intersection_len(&members) as i64
                })
                .unwrap_or(0);
            (value, in_group, population)
        })
        .collect();
    let total_members: i64 = counted.iter().map(|c| c.1).sum();
    let total_population: i64 = counted.iter().map(|c| c.2).sum();
    let share = |part: i64, whole: i64| {
        if whole > 0 {
            part as f64 / whole as f64
        } else {
            0.0
        }
    };
    let mut rows: Vec<BreakdownRow> = counted
        .into_iter()
        .map(|(value, members, population)| {
            let member_share = share(members, total_members);
            let population_share = share(population, total_population);
            let lift = (population_share > 0.0).then(|| member_share / population_share);
            (
                value,
                members,
                member_share,
                population,
                population_share,
                lift,
            )
        })
        .collect();
    // By members, then population, then value (NULL last).
    rows.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then(b.3.cmp(&a.3))
            .then_with(|| match (&a.0, &b.0) {
                (Some(x), Some(y)) => x.cmp(y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            })
    });
    rows
}
