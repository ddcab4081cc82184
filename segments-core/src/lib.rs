//! segments-core: the part of segments that needs no Postgres. It turns a
//! segment's JSON definition into SQL text and bitmap algebra, and parses
//! schedules; the extension (the `segments` crate) runs what this plans.
//!
//! - `definition`: the definition model, parsed from JSON
//! - `validate`: operators and values against column types
//! - `catalog`: what the compiler knows of entities, columns and segments
//!   (a trait; the extension reads the real catalog, `fixture` is an
//!   in-memory one for tests)
//! - `compile`: definitions to SQL leaves and per-rule expressions
//! - `bitmap`: Roaring memberships and the rules' algebra with their counts
//! - `schedule`: cron schedules, time zones, `live` and `manual`
//! - `sql`: quoting identifiers and literals for generated SQL
//! - `spelling`: "did you mean" hints
//! - `pgoutput`: the logical decoding messages WAL capture reads
//! - `capture`: a slot's messages as the changed keys of live segments
//! - `split`: the groups of a split segment, as bucket ranges
//! - `error`: the one error type and its SQLSTATEs
//! - `generate`: random definitions for the differential fuzzer
//! - `realistic`: a seeded, realistic segment list for benchmarks

pub mod bitmap;
pub mod capture;
pub mod catalog;
pub mod compile;
pub mod definition;
pub mod error;
#[cfg(any(test, feature = "generate"))]
pub mod generate;
pub mod names;
pub mod pgoutput;
#[cfg(any(test, feature = "generate"))]
pub mod realistic;
pub mod schedule;
pub mod spelling;
pub mod split;
pub mod sql;
pub mod validate;
