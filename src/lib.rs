//! segments: customer segmentation inside PostgreSQL.
//!
//! Rooms, by concern:
//! - `definition`, `validate`: the definition model and its checks
//! - `catalog`: what the compiler knows of entities, columns and segments
//! - `citus`: placement of distributed tables, registration warnings, and
//!   the refusals that keep coordinator-only state off the workers
//! - `compile`: definitions to SQL leaves and bitmap algebra
//! - `aggregate`: `rb_agg`, positions to a bitmap inside a scan (an
//!   expanded bytea state that Citus can split between shards)
//! - `bitmap`: Roaring memberships, rule counts
//! - `evaluate`: running a plan's queries, evaluating segments
//! - `entity`: registering entities and related tables, members views
//! - `segment`: the segment catalog and its lifecycle trigger
//! - `refresh`: the refresh engine
//! - `schedule`, `scheduler`, `worker`: schedules, one scheduler pass, the
//!   background worker that runs passes
//! - `inspect`: rule counts, estimates, explain
//! - `explain`: explain_member, why a record is or is not a member
//! - `live`: capture triggers' life cycle and the apply step of live segments
//! - `capture`: the C row trigger that queues changed keys of updates
//! - `read`: preview, is_member, segments_of, overlap, bitmap, value picker
//! - `sequence`: connecting records that enter segments to sales sequences
//! - `lookalike`, `suggest`: finding customers like a segment's, and
//!   suggested segments for a measure
//! - `spelling`: "did you mean" hints
//! - `sql`: quoting identifiers and literals for generated SQL
//! - `export`: export tables kept in step with refreshes
//! - `history`: membership at a past time, frozen copies (definition
//!   history is sql/history.sql)
//! - `settings`: every `segments.*` setting
//! - `txn`: subtransactions, the sandbox, running as a segment's owner or
//!   as the extension (the only writer of internal state)
//! - `usage`: usages recorded by applications
//! - `error`: the one error type and its SQLSTATEs
//! - `compat`: C symbols older versions' SQL names (until ALTER EXTENSION UPDATE)

pub mod aggregate;
pub mod bitmap;
pub mod capture;
pub mod catalog;
pub mod citus;
mod compat;
pub mod compile;
pub mod definition;
pub mod entity;
pub mod error;
pub mod evaluate;
pub mod explain;
pub mod export;
pub mod history;
pub mod inspect;
pub mod live;
pub mod lookalike;
pub mod read;
pub mod refresh;
pub mod segment;
pub mod sequence;
pub mod schedule;
pub mod scheduler;
pub mod settings;
pub mod sql;
pub mod spelling;
pub mod suggest;
pub mod txn;
pub mod usage;
pub mod validate;
pub mod worker;

#[cfg(feature = "pg_test")]
mod pg_tests;

::pgrx::pg_module_magic!();

/// Schema `segments`, where everything lives: declared here so that pgrx
/// places functions in it (`#[pg_extern(schema = "segments")]`).
#[pgrx::pg_schema]
mod segments {}

pgrx::extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
pgrx::extension_sql_file!("../sql/aggregate.sql", name = "aggregate", requires = ["schema"]);
pgrx::extension_sql_file!("../sql/roles.sql", name = "roles", requires = ["schema"]);
pgrx::extension_sql_file!(
    "../sql/lifecycle.sql",
    name = "lifecycle",
    requires = ["roles", segment::_check_definition, segment::_check_schedule, txn::_internal_write, live::_sync_capture]
);
pgrx::extension_sql_file!(
    "../sql/manage.sql",
    name = "manage",
    requires = ["lifecycle", segment::_next_refresh_epoch]
);
pgrx::extension_sql_file!("../sql/cleanup.sql", name = "cleanup", requires = ["manage"]);
pgrx::extension_sql_file!("../sql/history.sql", name = "history", requires = ["manage"]);
pgrx::extension_sql_file!("../sql/exports.sql", name = "exports", requires = ["cleanup", "key_functions", export::_rewrite_export]);
pgrx::extension_sql_file!(
    "../sql/sequences.sql",
    name = "sequences",
    requires = ["exports", sequence::_connect_members, sequence::_missing_keys, sequence::_canonical_keys]
);
pgrx::extension_sql_file!("../sql/grants.sql", name = "grants", finalize);

// set_owner takes a regrole, which pgrx cannot spell: declared by hand.
pgrx::extension_sql!(
    r#"
CREATE FUNCTION segments.set_owner(segments bigint[], owner regrole) RETURNS integer
LANGUAGE c AS 'MODULE_PATHNAME', 'set_owner_wrapper';
"#,
    name = "set_owner",
    requires = ["lifecycle"]
);

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    settings::register();
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        settings::register_preload();
        worker::register();
    }
    settings::reserve_prefix();
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
