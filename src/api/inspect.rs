//! Looking inside segments: per-rule counts of the last refresh, estimates
//! of an unsaved definition ("simulate results"), and the SQL a segment runs.

use std::panic::AssertUnwindSafe;

use pgrx::prelude::*;
use pgrx::spi::Spi;
use pgrx::JsonB;

use segments_core::bitmap::RuleCount;
use segments_core::compile::compile_definition;

use crate::engine::evaluate::{
    compute_leaves, evaluate_segment, fill_late_leaves, plan_queries, reference_time_sql,
};
use crate::pg::catalog::SpiCatalog;
use crate::pg::error::{OrRaise, Reported, SegmentsError};
use crate::pg::spi::spi;

type CountRow = (
    name!(path, String),
    name!(name, Option<String>),
    name!(combine, Option<String>),
    name!(members, Option<i64>),
    name!(cumulative, Option<i64>),
);

fn rows(counts: Vec<RuleCount>) -> TableIterator<'static, CountRow> {
    TableIterator::new(counts.into_iter().map(|c| {
        (
            c.path,
            c.name,
            c.combine,
            Some(c.members as i64),
            Some(c.cumulative as i64),
        )
    }))
}

fn segment_definition(
    segment: i64,
) -> Result<(serde_json::Value, Option<serde_json::Value>), Reported> {
    let row = Spi::connect(|client| {
        let table = spi(client.select(
            "SELECT definition, rule_counts FROM segments.segment WHERE id = $1",
            Some(1),
            &[segment.into()],
        ));
        if table.is_empty() {
            return (None, None);
        }
        let row = table.first();
        (spi(row.get::<JsonB>(1)), spi(row.get::<JsonB>(2)))
    });
    match row {
        (Some(definition), counts) => Ok((definition.0, counts.map(|c| c.0))),
        (None, _) => Err(SegmentsError::no_such_segment(segment).into()),
    }
}

/// The counts of every rule and subrule at the last refresh: `members` for
/// the rule alone, `cumulative` combined with the rules before it at its
/// level. Rows with NULL counts until the first refresh after a change.
#[pg_extern(schema = "segments", stable)]
fn rule_counts(
    segment: i64,
) -> TableIterator<
    'static,
    (
        name!(path, String),
        name!(name, Option<String>),
        name!(combine, Option<String>),
        name!(members, Option<i64>),
        name!(cumulative, Option<i64>),
    ),
> {
    // Runs as the caller, in the sandbox (fixed search_path).
    crate::pg::sandbox::as_role(
        crate::pg::authorization::current_role(),
        std::panic::AssertUnwindSafe(|| {
            let (definition, counts) = segment_definition(segment).or_raise();
            if let Some(counts) = counts {
                let counts: Vec<RuleCount> = serde_json::from_value(counts)
                    .unwrap_or_else(|e| error!("segments: stored rule counts unreadable: {e}"));
                return rows(counts);
            }
            // Not refreshed since the last change: the rules, without counts.
            let parsed = segments_core::definition::Definition::parse(&definition).or_raise();
            let mut out = Vec::new();
            fn walk(
                rules: &[segments_core::definition::Rule],
                out: &mut Vec<(
                    String,
                    Option<String>,
                    Option<String>,
                    Option<i64>,
                    Option<i64>,
                )>,
            ) {
                for rule in rules {
                    out.push((
                        rule.label.clone(),
                        rule.name.clone(),
                        rule.combine.map(|c| c.as_str().to_string()),
                        None,
                        None,
                    ));
                    if let segments_core::definition::RuleBody::Rules(sub) = &rule.body {
                        walk(sub, out);
                    }
                }
            }
            walk(&parsed.rules, &mut out);
            TableIterator::new(out)
        }),
    )
}

pub fn estimate_counts(definition: &serde_json::Value) -> Result<Vec<RuleCount>, Reported> {
    let (_, plan, compiled) = compile_definition(
        &SpiCatalog,
        definition,
        None,
        &reference_time_sql(),
        crate::pg::gucs::max_conditions(),
    )?;
    let mut values = compute_leaves(&plan);
    fill_late_leaves(&plan, &mut values, &Default::default());
    Ok(evaluate_segment(&compiled, &values).1)
}

/// Counts what an unsaved definition would select, rule by rule, with the
/// caller's privileges. Nothing is saved. (`segments.estimate(jsonb)`
/// passes the definition as text, see `_check_definition`.)
#[pg_extern(schema = "segments")]
fn _estimate(
    definition: &str,
) -> TableIterator<
    'static,
    (
        name!(path, String),
        name!(name, Option<String>),
        name!(combine, Option<String>),
        name!(members, Option<i64>),
        name!(cumulative, Option<i64>),
    ),
> {
    let definition = segments_core::definition::parse_json_text(definition).or_raise();
    rows(
        crate::pg::sandbox::as_role(
            crate::pg::authorization::current_role(),
            AssertUnwindSafe(|| estimate_counts(&definition)),
        )
        .or_raise(),
    )
}

/// 0.1.0's `estimate(jsonb)` entry point: its symbol stays so that a 0.1.0
/// schema keeps working with this library until ALTER EXTENSION UPDATE.
#[pg_extern(schema = "segments", sql = false)]
fn estimate(
    definition: JsonB,
) -> TableIterator<
    'static,
    (
        name!(path, String),
        name!(name, Option<String>),
        name!(combine, Option<String>),
        name!(members, Option<i64>),
        name!(cumulative, Option<i64>),
    ),
> {
    let definition = definition.0;
    rows(
        crate::pg::sandbox::as_role(
            crate::pg::authorization::current_role(),
            AssertUnwindSafe(|| estimate_counts(&definition)),
        )
        .or_raise(),
    )
}

/// The SQL a segment's refresh runs, one statement per leaf query.
#[pg_extern(schema = "segments", stable)]
fn explain(segment: i64) -> String {
    // Runs as the caller, in the sandbox (fixed search_path).
    crate::pg::sandbox::as_role(
        crate::pg::authorization::current_role(),
        std::panic::AssertUnwindSafe(|| {
            let (definition, _) = segment_definition(segment).or_raise();
            let (parsed, plan, _) = compile_definition(
                &SpiCatalog,
                &definition,
                Some(segment),
                &reference_time_sql(),
                usize::MAX,
            )
            .or_raise();
            let mut text = format!(
            "-- segment {segment} of entity \"{}\": every query returns Roaring bitmaps of key positions;\n\
             -- rules combine them left to right ({} top-level rule(s)).\n",
            parsed.entity,
            parsed.rules.len()
        );
            for (i, query) in plan_queries(&plan).iter().enumerate() {
                text.push_str(&format!("-- query {}\n{query};\n", i + 1));
            }
            text
        }),
    )
}
