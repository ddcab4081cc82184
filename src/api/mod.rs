//! The SQL surface: `#[pg_extern]` functions grouped as docs/reference.md
//! groups them.
//! Each delegates to the engine, segments-core or the optional parts; SQL
//! that only reads or writes tables lives in `sql/`.

pub mod compat;
pub mod entity;
pub mod explain;
pub mod history;
pub mod inspect;
pub mod internal;
pub mod live;
pub mod operations;
pub mod read;
pub mod refresh;
pub mod schedule;
pub mod schema_changes;
pub mod segment;
pub mod usage;
