//! Breakdowns (SPEC 17): who a segment's members are, one attribute or
//! trait at a time, against every eligible record of the entity: counts,
//! shares and lift, the audience insights of a segment builder.
//!
//! One statement, as the caller (their privileges and row-level security on
//! the entity table apply): the membership bitmap's positions are joined to
//! one scan of the entity table, and the grouping runs on that. Numbers and
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
    let fractions: Vec<String> = (0..n).map(|i| format!("{}", i as f64 / n as f64)).collect();
    let label = if ranged {
        format!(
            "CASE WHEN r.v IS NULL THEN NULL \
                  WHEN (SELECT d FROM stats) OPERATOR(pg_catalog.<=) {n} THEN r.v::pg_catalog.text \
                  ELSE (SELECT CASE WHEN i OPERATOR(pg_catalog.<) pg_catalog.cardinality(b.b) \
                               THEN '[' OPERATOR(pg_catalog.||) b.b[i] OPERATOR(pg_catalog.||) ',' OPERATOR(pg_catalog.||) b.b[i OPERATOR(pg_catalog.+) 1] OPERATOR(pg_catalog.||) ')' \
                               ELSE '[' OPERATOR(pg_catalog.||) b.b[i] OPERATOR(pg_catalog.||) ',' OPERATOR(pg_catalog.||) (SELECT top FROM stats) OPERATOR(pg_catalog.||) ']' END \
                          FROM bounds b, LATERAL (SELECT pg_catalog.width_bucket(r.v, b.b) AS i) w) END"
        )
    } else {
        "r.v::pg_catalog.text".to_string()
    };
    let bounds = if ranged {
        format!(
            ", stats AS (SELECT pg_catalog.count(DISTINCT v) AS d, pg_catalog.max(v) AS top FROM r), \
             bounds AS (SELECT ARRAY(SELECT DISTINCT x FROM pg_catalog.unnest( \
                          pg_catalog.percentile_disc({}::pg_catalog.float8[]) WITHIN GROUP (ORDER BY v)) x ORDER BY x) AS b \
                        FROM r WHERE v IS NOT NULL)",
            literal(&format!("{{{}}}", fractions.join(",")))
        )
    } else {
        String::new()
    };
    let sql = format!(
        // r is read once for values (PostgreSQL inlines it) and three times
        // for ranges (PostgreSQL computes it once).
        "WITH m AS (SELECT p FROM segments.membership s, \
                                 LATERAL segments.bitmap_positions(s.members) p WHERE s.segment_id OPERATOR(pg_catalog.=) $1), \
              r AS (SELECT {value} AS v, m.p IS NOT NULL AS member \
                                   FROM {relation} e{dictionary_join}{traits_join} \
                                   LEFT JOIN m ON m.p OPERATOR(pg_catalog.=) {position}{eligible}){bounds}, \
              g AS (SELECT {label} AS value, pg_catalog.count(*) FILTER (WHERE r.member) AS members, pg_catalog.count(*) AS population \
                      FROM r GROUP BY 1) \
         SELECT value, members, \
                coalesce(members::pg_catalog.float8 OPERATOR(pg_catalog./) NULLIF(pg_catalog.sum(members) OVER (), 0), 0), \
                population, \
                coalesce(population::pg_catalog.float8 OPERATOR(pg_catalog./) NULLIF(pg_catalog.sum(population) OVER (), 0), 0) \
           FROM g ORDER BY members DESC, population DESC, value NULLS LAST",
        relation = entity.table.relation_sql,
    );
    let rows: Vec<(Option<String>, i64, f64, i64, f64)> = Spi::connect(|client| {
        spi(client.select(&sql, None, &[segment.into()]))
            .map(|row| {
                (
                    spi(row.get::<String>(1)),
                    spi(row.get::<i64>(2)).unwrap_or(0),
                    spi(row.get::<f64>(3)).unwrap_or(0.0),
                    spi(row.get::<i64>(4)).unwrap_or(0),
                    spi(row.get::<f64>(5)).unwrap_or(0.0),
                )
            })
            .collect()
    });
    rows.into_iter()
        .map(
            |(value, members, member_share, population, population_share)| {
                let lift = (population_share > 0.0).then(|| member_share / population_share);
                (
                    value,
                    members,
                    member_share,
                    population,
                    population_share,
                    lift,
                )
            },
        )
        .collect()
}
