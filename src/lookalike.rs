//! Finding customers like a segment's ("similar customers"): a logistic
//! regression of the source segment's members against the target
//! population, on the entity's numeric columns and its categorical columns
//! of 2 to 30 distinct values. Every non-member of the population is scored
//! 0-1; the best `size_percent` of the population, scoring 0.4 or more,
//! becomes a static segment.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;

use pgrx::prelude::*;
use pgrx::spi::Spi;
use serde_json::{json, Value};

use segments_core::bitmap::{key_of, Members};
use segments_core::catalog::{Catalog, ColumnKind, Entity, KeyKind};
use segments_core::sql::ident;

use crate::engine::evaluate::stored_members;
use crate::pg::catalog::SpiCatalog;
use crate::pg::error::{OrRaise, Reported, SegmentsError};
use crate::pg::spi::{optional_value, required, spi};

/// Scores below this never qualify.
pub const MIN_SCORE: f64 = 0.4;
/// The most rows of each class the model is trained on.
const TRAINING_ROWS: usize = 50_000;

/// One row's features: numeric values (NaN for NULL) and category labels.
#[derive(Debug, Clone)]
pub struct Sample {
    pub numbers: Vec<f64>,
    pub categories: Vec<Option<String>>,
}

/// Turns samples into vectors: numbers standardized with the training
/// rows' mean and deviation (NULL is the mean), categories one-hot.
#[derive(Debug, Clone)]
pub struct Encoder {
    means: Vec<f64>,
    deviations: Vec<f64>,
    vocabularies: Vec<Vec<String>>,
}

impl Encoder {
    pub fn fit(samples: &[&Sample]) -> Encoder {
        let width = samples.first().map_or(0, |s| s.numbers.len());
        let mut means = vec![0.0; width];
        let mut deviations = vec![1.0; width];
        for j in 0..width {
            let values: Vec<f64> = samples
                .iter()
                .map(|s| s.numbers[j])
                .filter(|v| v.is_finite())
                .collect();
            if values.is_empty() {
                continue;
            }
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let variance =
                values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
            means[j] = mean;
            deviations[j] = if variance > 0.0 { variance.sqrt() } else { 1.0 };
        }
        let columns = samples.first().map_or(0, |s| s.categories.len());
        let vocabularies = (0..columns)
            .map(|j| {
                let mut values: Vec<String> = samples
                    .iter()
                    .filter_map(|s| s.categories[j].clone())
                    .collect::<HashSet<_>>()
                    .into_iter()
                    .collect();
                values.sort();
                values
            })
            .collect();
        Encoder {
            means,
            deviations,
            vocabularies,
        }
    }

    pub fn width(&self) -> usize {
        self.means.len() + self.vocabularies.iter().map(Vec::len).sum::<usize>()
    }

    pub fn encode(&self, sample: &Sample) -> Vec<f64> {
        let mut x = Vec::with_capacity(self.width());
        for (j, value) in sample.numbers.iter().enumerate() {
            x.push(if value.is_finite() {
                (value - self.means[j]) / self.deviations[j]
            } else {
                0.0
            });
        }
        for (j, vocabulary) in self.vocabularies.iter().enumerate() {
            for word in vocabulary {
                x.push(if sample.categories[j].as_deref() == Some(word.as_str()) {
                    1.0
                } else {
                    0.0
                });
            }
        }
        x
    }
}

/// A logistic regression trained by batch gradient descent with L2
/// regularization and balanced class weights: deterministic, no sampling.
#[derive(Debug, Clone)]
pub struct Model {
    weights: Vec<f64>,
    bias: f64,
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl Model {
    pub fn train(positives: &[Vec<f64>], negatives: &[Vec<f64>]) -> Model {
        let width = positives.first().or(negatives.first()).map_or(0, Vec::len);
        let mut model = Model {
            weights: vec![0.0; width],
            bias: 0.0,
        };
        let (wp, wn) = (
            0.5 / positives.len().max(1) as f64,
            0.5 / negatives.len().max(1) as f64,
        );
        let (rate, l2) = (0.5, 1e-3);
        for _ in 0..300 {
            let mut gradient = vec![0.0; width];
            let mut bias_gradient = 0.0;
            for (rows, label, weight) in [(positives, 1.0, wp), (negatives, 0.0, wn)] {
                for x in rows {
                    let error = (model.score(x) - label) * weight;
                    bias_gradient += error;
                    for (g, v) in gradient.iter_mut().zip(x) {
                        *g += error * v;
                    }
                }
            }
            for (w, g) in model.weights.iter_mut().zip(&gradient) {
                *w -= rate * (g + l2 * *w);
            }
            model.bias -= rate * bias_gradient;
        }
        model
    }

    pub fn score(&self, x: &[f64]) -> f64 {
        sigmoid(self.bias + self.weights.iter().zip(x).map(|(w, v)| w * v).sum::<f64>())
    }
}

/// Every `step`-th element, so that at most `limit` remain.
fn thin<T>(items: Vec<T>, limit: usize) -> Vec<T> {
    let step = items.len().div_ceil(limit.max(1)).max(1);
    items.into_iter().step_by(step).collect()
}

/// Score bands, as Customer Insights shows them: high from 0.85, medium
/// from 0.7, low from 0.55; below that (and never below 0.4) no band.
pub fn band(score: f64) -> Option<&'static str> {
    match score {
        s if s >= 0.85 => Some("high"),
        s if s >= 0.7 => Some("medium"),
        s if s >= 0.55 => Some("low"),
        _ => None,
    }
}

/// The lowest score of a band name (22023 for an unknown one).
pub fn band_floor(name: &str) -> Result<f64, SegmentsError> {
    match name {
        "high" => Ok(0.85),
        "medium" => Ok(0.7),
        "low" => Ok(0.55),
        other => Err(SegmentsError::InvalidParameter(format!(
            "min_band \"{other}\" is not high, medium or low"
        ))),
    }
}

/// The best `count` scores at or above `floor` (never below 0.4).
pub fn choose_from(mut scored: Vec<(u64, f64)>, count: usize, floor: f64) -> Vec<(u64, f64)> {
    let floor = floor.max(MIN_SCORE);
    scored.retain(|(_, s)| *s >= floor);
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored.truncate(count);
    scored
}

struct Features {
    numeric: Vec<String>,
    categorical: Vec<String>,
}

/// Numeric columns and categorical columns of 2 to 30 distinct values,
/// the key excluded.
fn features(entity: &Entity) -> Features {
    let candidates: Vec<&segments_core::catalog::Column> = entity
        .table
        .columns
        .iter()
        .filter(|c| {
            c.name != entity.key_column && matches!(c.kind, ColumnKind::Text | ColumnKind::Boolean)
        })
        .collect();
    let mut categorical = Vec::new();
    if !candidates.is_empty() {
        let counts = candidates
            .iter()
            .map(|c| format!("count(DISTINCT e.{})", ident(&c.name)))
            .collect::<Vec<_>>();
        let sql = format!(
            "SELECT {} FROM {} e",
            counts.join(", "),
            entity.table.relation_sql
        );
        Spi::connect(|client| {
            let row = spi(client.select(&sql, None, &[])).first();
            for (i, column) in candidates.iter().enumerate() {
                let distinct = spi(row.get::<i64>(i + 1)).unwrap_or(0);
                if (2..=30).contains(&distinct) {
                    categorical.push(column.name.clone());
                }
            }
        });
    }
    let numeric = entity
        .table
        .columns
        .iter()
        .filter(|c| c.name != entity.key_column && c.kind == ColumnKind::Numeric)
        .map(|c| c.name.clone())
        .collect();
    Features {
        numeric,
        categorical,
    }
}

/// Every row of the entity as (position, features).
fn load(entity: &Entity, features: &Features) -> Vec<(u64, Sample)> {
    let (position, join) = entity.position_sql(&format!("e.{}", ident(&entity.key_column)));
    let mut columns = vec![position];
    columns.extend(
        features
            .numeric
            .iter()
            .map(|c| format!("e.{}::float8", ident(c))),
    );
    columns.extend(
        features
            .categorical
            .iter()
            .map(|c| format!("e.{}::text", ident(c))),
    );
    let sql = format!(
        "SELECT {} FROM {} e{join}",
        columns.join(", "),
        entity.table.relation_sql
    );
    let (n, m) = (features.numeric.len(), features.categorical.len());
    Spi::connect(|client| {
        spi(client.select(&sql, None, &[]))
            .filter_map(|row| {
                let position = spi(row.get::<i64>(1))? as u64;
                let numbers = (0..n)
                    .map(|j| spi(row.get::<f64>(j + 2)).unwrap_or(f64::NAN))
                    .collect();
                let categories = (0..m).map(|j| spi(row.get::<String>(j + 2 + n))).collect();
                Some((
                    position,
                    Sample {
                        numbers,
                        categories,
                    },
                ))
            })
            .collect()
    })
}

fn segment_row(segment: i64) -> Result<(String, String), Reported> {
    let row = Spi::connect(|client| {
        let table = spi(client.select(
            "SELECT name, entity FROM segments.segment WHERE id = $1",
            None,
            &[segment.into()],
        ));
        if table.is_empty() {
            return None;
        }
        let row = table.first();
        Some((required::<String>(&row, 1), required::<String>(&row, 2)))
    });
    row.ok_or_else(|| SegmentsError::no_such_segment(segment).into())
}

/// Keys (as JSON values of the key's kind) of the given positions.
fn key_values(entity: &Entity, positions: &[u64]) -> Vec<Value> {
    let positions: Members = positions.iter().copied().collect();
    crate::engine::evaluate::keys_at(&entity.name, &positions)
        .into_iter()
        .map(|(p, key)| match entity.key_kind {
            KeyKind::Integer => Value::from(key_of(p)),
            KeyKind::Dictionary => Value::from(key),
        })
        .collect()
}

fn find_similar_impl(
    source: i64,
    name: &str,
    target: Option<i64>,
    size_percent: i32,
    include_source: bool,
    min_band: Option<&str>,
) -> Result<i64, Reported> {
    let (source_name, entity_name) = segment_row(source)?;
    if let Some(target) = target {
        let (target_name, target_entity) = segment_row(target)?;
        if target_entity != entity_name {
            return Err(SegmentsError::InvalidParameter(format!(
                "target segment \"{target_name}\" is of entity \"{target_entity}\", source \"{source_name}\" of \"{entity_name}\""
            ))
            .into());
        }
    }
    if !(1..=100).contains(&size_percent) {
        return Err(SegmentsError::InvalidParameter(format!(
            "size_percent must be 1 to 100, not {size_percent}"
        ))
        .into());
    }
    if optional_value::<i64>(
        "SELECT id FROM segments.segment WHERE name = $1",
        &[name.into()],
    )
    .is_some()
    {
        return Err(SegmentsError::DuplicateObject(format!(
            "a segment named \"{name}\" already exists"
        ))
        .into());
    }
    let mut entity = SpiCatalog
        .entity(&entity_name)
        .expect("a segment's entity exists");
    // Before a first refresh made the Citus key replica, read the dictionary.
    if entity
        .key_replica
        .as_deref()
        .is_some_and(|replica| !crate::engine::citus::relation_exists(replica))
    {
        entity.key_replica = None;
    }
    let features = features(&entity);
    if features.numeric.is_empty() && features.categorical.is_empty() {
        return Err(SegmentsError::InvalidParameter(format!(
            "entity \"{entity_name}\" has no numeric columns and no columns of 2 to 30 distinct values to learn from"
        ))
        .into());
    }
    let source_members = stored_members(source);
    if source_members.is_empty() {
        return Err(SegmentsError::InvalidState(format!(
            "source segment \"{source_name}\" has no members: refresh it first"
        ))
        .into());
    }
    // The training rows are read as the caller, in the sandbox: RLS and
    // column privileges apply.
    let rows = crate::pg::sandbox::as_role(
        crate::pg::authorization::current_role(),
        AssertUnwindSafe(|| load(&entity, &features)),
    );
    let population: Members = match target {
        Some(target) => stored_members(target),
        None => rows.iter().map(|(p, _)| *p).collect(),
    };
    let positives: Vec<&Sample> = thin(
        rows.iter()
            .filter(|(p, _)| source_members.contains(*p))
            .map(|(_, s)| s)
            .collect(),
        TRAINING_ROWS,
    );
    let negatives: Vec<&Sample> = thin(
        rows.iter()
            .filter(|(p, _)| population.contains(*p) && !source_members.contains(*p))
            .map(|(_, s)| s)
            .collect(),
        TRAINING_ROWS,
    );
    if negatives.is_empty() {
        return Err(SegmentsError::InvalidState(format!(
            "every member of the target population is in \"{source_name}\": nobody is left to find"
        ))
        .into());
    }
    let training: Vec<&Sample> = positives.iter().chain(negatives.iter()).copied().collect();
    let encoder = Encoder::fit(&training);
    let model = Model::train(
        &positives
            .iter()
            .map(|s| encoder.encode(s))
            .collect::<Vec<_>>(),
        &negatives
            .iter()
            .map(|s| encoder.encode(s))
            .collect::<Vec<_>>(),
    );
    let scored: Vec<(u64, f64)> = rows
        .iter()
        .filter(|(p, _)| population.contains(*p) && !source_members.contains(*p))
        .map(|(p, s)| (*p, model.score(&encoder.encode(s))))
        .collect();
    let count = (population.len() as f64 * size_percent as f64 / 100.0).ceil() as usize;
    let floor = match min_band {
        Some(band) => band_floor(band)?,
        None => MIN_SCORE,
    };
    let mut chosen = choose_from(scored, count, floor);
    if include_source {
        chosen.extend(
            rows.iter()
                .filter(|(p, _)| source_members.contains(*p))
                .map(|(p, s)| (*p, model.score(&encoder.encode(s)))),
        );
    }
    chosen.sort_by_key(|(p, _)| *p);
    let positions: Vec<u64> = chosen.iter().map(|(p, _)| *p).collect();
    let keys = key_values(&entity, &positions);
    let rule_name = format!("Similar to {source_name}");
    let condition = if keys.is_empty() {
        json!({"attribute": entity.key_column, "op": "is_null"}) // nobody scored high enough: an empty segment
    } else {
        json!({"attribute": entity.key_column, "op": "in", "value": keys})
    };
    let definition =
        json!({"entity": entity_name, "rules": [{"name": rule_name, "where": condition}]});
    let id = spi(Spi::get_one_with_args::<i64>(
        "SELECT segments.create_segment($1, $2, type => 'static', description => $3)",
        &[
            name.into(),
            pgrx::JsonB(definition).into(),
            format!("{size_percent}% most similar to \"{source_name}\" (find_similar)").into(),
        ],
    ))
    .expect("create_segment returns an id");
    let key_texts: Vec<String> = keys
        .iter()
        .map(|k| {
            k.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| k.to_string())
        })
        .collect();
    let scores: Vec<f32> = chosen.iter().map(|(_, s)| *s as f32).collect();
    crate::pg::sandbox::privileged(AssertUnwindSafe(|| {
        spi(Spi::run_with_args(
            "INSERT INTO segments.similarity_score (segment_id, key, score) SELECT $1, k, s FROM unnest($2::text[], $3::real[]) AS x(k, s)",
            &[id.into(), key_texts.into(), scores.into()],
        ));
        crate::engine::refresh::refresh_segments(
            Some(&[id]),
            crate::engine::run::RunCause::Manual,
            false,
        )
    }))?;
    Ok(id)
}

/// 0.1.0's `find_similar` (five arguments): its symbol stays so that a
/// 0.1.0 schema keeps working with this library until the update.
#[pg_extern(schema = "segments", sql = false)]
fn find_similar(
    source: i64,
    name: &str,
    target: Option<i64>,
    size_percent: i32,
    include_source: bool,
) -> i64 {
    find_similar_banded(source, name, target, size_percent, include_source, None)
}

/// Creates a static segment of the customers most like `source`'s members.
#[pg_extern(schema = "segments", name = "find_similar")]
fn find_similar_banded(
    source: i64,
    name: &str,
    target: default!(Option<i64>, "NULL"),
    size_percent: default!(i32, 20),
    include_source: default!(bool, false),
    min_band: default!(Option<&str>, "NULL"),
) -> i64 {
    crate::pg::authorization::require_editor("find similar customers");
    // Runs as the caller, in the sandbox (fixed search_path).
    crate::pg::sandbox::as_role(
        crate::pg::authorization::current_role(),
        std::panic::AssertUnwindSafe(|| {
            find_similar_impl(source, name, target, size_percent, include_source, min_band)
                .or_raise()
        }),
    )
}

/// The scores of the members of a segment made by `find_similar`.
/// 0.1.0's `similarity` (key, score): its symbol stays until the update.
#[pg_extern(schema = "segments", sql = false)]
fn similarity(segment: i64) -> TableIterator<'static, (name!(key, String), name!(score, f32))> {
    let rows: Vec<(String, f32)> = similarity_banded(segment).map(|(k, s, _)| (k, s)).collect();
    TableIterator::new(rows)
}

/// The scores, with their bands, of the members of a segment made by
/// `find_similar`.
#[pg_extern(schema = "segments", name = "similarity", stable)]
fn similarity_banded(
    segment: i64,
) -> TableIterator<
    'static,
    (
        name!(key, String),
        name!(score, f32),
        name!(band, Option<String>),
    ),
> {
    // Runs as the caller, in the sandbox (fixed search_path).
    crate::pg::sandbox::as_role(
        crate::pg::authorization::current_role(),
        std::panic::AssertUnwindSafe(|| {
            segment_row(segment).or_raise();
            let rows: Vec<(String, f32, Option<String>)> = Spi::connect(|client| {
                spi(client.select(
                "SELECT key, score FROM segments.similarity_score WHERE segment_id = $1 ORDER BY score DESC, key",
                None,
                &[segment.into()],
            ))
            .map(|row| {
                let score = spi(row.get::<f32>(2)).unwrap_or_default();
                (spi(row.get::<String>(1)).unwrap_or_default(), score, band(f64::from(score)).map(str::to_string))
            })
            .collect()
            });
            TableIterator::new(rows)
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(x: f64, tier: &str) -> Sample {
        Sample {
            numbers: vec![x],
            categories: vec![Some(tier.to_string())],
        }
    }

    #[test]
    fn the_model_separates_the_classes_it_learns() {
        let positives: Vec<Sample> = (0..200)
            .map(|i| sample(80.0 + (i % 20) as f64, "gold"))
            .collect();
        let negatives: Vec<Sample> = (0..800)
            .map(|i| sample((i % 60) as f64, if i % 4 == 0 { "gold" } else { "bronze" }))
            .collect();
        let all: Vec<&Sample> = positives.iter().chain(negatives.iter()).collect();
        let encoder = Encoder::fit(&all);
        assert_eq!(encoder.width(), 3, "one number, two categories");
        let model = Model::train(
            &positives
                .iter()
                .map(|s| encoder.encode(s))
                .collect::<Vec<_>>(),
            &negatives
                .iter()
                .map(|s| encoder.encode(s))
                .collect::<Vec<_>>(),
        );
        let like = model.score(&encoder.encode(&sample(95.0, "gold")));
        let unlike = model.score(&encoder.encode(&sample(5.0, "bronze")));
        assert!(like > 0.9 && unlike < 0.1, "{like} {unlike}");
        let missing = Sample {
            numbers: vec![f64::NAN],
            categories: vec![None],
        };
        assert!(model.score(&encoder.encode(&missing)).is_finite());
    }

    #[test]
    fn choosing_keeps_the_best_above_the_threshold() {
        let scored = vec![(1, 0.9), (2, 0.39), (3, 0.7), (4, 0.95), (5, 0.7)];
        assert_eq!(
            choose_from(scored.clone(), 3, MIN_SCORE),
            vec![(4, 0.95), (1, 0.9), (3, 0.7)]
        );
        assert_eq!(
            choose_from(scored.clone(), 10, MIN_SCORE).len(),
            4,
            "0.39 never qualifies"
        );
        assert_eq!(
            choose_from(scored, 10, 0.85),
            vec![(4, 0.95), (1, 0.9)],
            "min_band high"
        );
        assert_eq!(
            (band(0.9), band(0.7), band(0.6), band(0.5)),
            (Some("high"), Some("medium"), Some("low"), None)
        );
        assert!(band_floor("great").is_err());
        assert_eq!(thin((0..10).collect::<Vec<_>>(), 3), vec![0, 4, 8]);
    }
}
