//! segments: customer segmentation inside PostgreSQL.
//!
//! The engine's pure half (definitions, validation, the compiler to SQL
//! text, bitmap algebra, schedules) is the `segments-core` crate; this crate
//! runs it inside PostgreSQL. Rooms, by concern (ARCHITECTURE.md has the
//! data flow and where a change goes):
//! - `api/`: the SQL surface, thin `#[pg_extern]` wrappers by subject
//!   (entities, segments, refresh, reads, inspection, explain, history,
//!   usage, live, schedule, schema changes, internal helpers, and `compat`,
//!   the C symbols older versions' SQL names)
//! - `engine/`: by stage: `run` (what a run is), `plan`, `evaluate` (with
//!   `aggregate`'s `rb_agg`), `store` (and its `after_change` step), the
//!   orchestrations `refresh` and `live/`, and Citus placement (`citus`)
//! - `tables/`: what segments keeps on users' tables (members views) and
//!   its response to their DDL
//! - `schedule/`: one scheduler pass (`pass`), due times (`next`) and the
//!   background worker
//! - `pg/`: beneath every room: errors, SPI helpers, the real catalog,
//!   Citus's catalog, authorization, the sandbox, subtransactions, every
//!   setting (`gucs`), restores, and what differs between majors
//! - features, one module each, whose whole purpose is one SQL-facing
//!   feature and which therefore declare their own SQL functions: `sequence`
//!   (sales sequences), `export` (export tables), `lookalike`, `suggest`,
//!   `traits` (computed traits)
//! - `activation/`: splits, priority lists, breakdowns and change feeds
//!   (SPEC 17)

// pgrx reads the result columns of a set-returning function from the
// `TableIterator<(name!(..), ..)>` written out in its signature: a type
// alias would hide them from its SQL generation, so long signatures stay.
#[allow(clippy::type_complexity)]
mod activation;
#[allow(clippy::type_complexity)]
mod api;
mod engine;
mod export;
mod lookalike;
mod pg;
mod schedule;
mod sequence;
mod suggest;
mod tables;
mod traits;

#[cfg(feature = "pg_test")]
mod pg_tests;

::pgrx::pg_module_magic!();

/// Schema `segments`, where everything lives: declared here so that pgrx
/// places functions in it (`#[pg_extern(schema = "segments")]`).
#[pgrx::pg_schema]
mod segments {}

pgrx::extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
pgrx::extension_sql_file!(
    "../sql/aggregate.sql",
    name = "aggregate",
    requires = ["schema"]
);
pgrx::extension_sql_file!("../sql/roles.sql", name = "roles", requires = ["schema"]);
pgrx::extension_sql_file!(
    "../sql/lifecycle.sql",
    name = "lifecycle",
    requires = [
        "roles",
        api::segment::_check_definition,
        api::segment::_check_schedule,
        api::internal::_internal_write,
        api::internal::_setting,
        api::internal::_restoring
    ]
);
pgrx::extension_sql_file!(
    "../sql/live.sql",
    name = "live",
    requires = ["lifecycle", api::live::_sync_capture]
);
pgrx::extension_sql_file!(
    "../sql/manage.sql",
    name = "manage",
    requires = ["lifecycle", api::schedule::_next_refresh_epoch]
);
pgrx::extension_sql_file!(
    "../sql/cleanup.sql",
    name = "cleanup",
    requires = ["manage"]
);
pgrx::extension_sql_file!(
    "../sql/history.sql",
    name = "history",
    requires = ["manage", api::internal::_restoring]
);
pgrx::extension_sql_file!(
    "../sql/ddl_events.sql",
    name = "ddl_events",
    requires = ["schema"]
);
pgrx::extension_sql_file!(
    "../sql/activation.sql",
    name = "activation",
    requires = ["schema"]
);
pgrx::extension_sql_file!(
    "../sql/activation_views.sql",
    name = "activation_views",
    requires = ["activation", activation::priority::_priority_members]
);
pgrx::extension_sql_file!(
    "../sql/wrappers.sql",
    name = "wrappers",
    requires = [
        "cleanup",
        "activation",
        api::read::_is_member,
        api::read::_segments_of,
        api::explain::_explain_member,
        api::inspect::_estimate,
        api::schedule::_run_due,
        api::live::_apply_changes
    ]
);
pgrx::extension_sql_file!(
    "../sql/exports.sql",
    name = "exports",
    requires = ["wrappers", export::_rewrite_export]
);
pgrx::extension_sql_file!(
    "../sql/sequences.sql",
    name = "sequences",
    requires = [
        "exports",
        sequence::_connect_members,
        sequence::_missing_keys_seen_by,
        sequence::_canonical_keys
    ]
);
pgrx::extension_sql_file!(
    "../sql/operations.sql",
    name = "operations",
    requires = [
        "wrappers",
        "history",
        "sequences",
        "traits",
        "activation",
        api::operations::_activity,
        api::operations::_schedulers
    ]
);
pgrx::extension_sql_file!("../sql/traits.sql", name = "traits", requires = ["schema"]);
pgrx::extension_sql_file!("../sql/grants.sql", name = "grants", finalize);

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    pg::gucs::register();
    // SAFETY: reads a flag the postmaster sets while loading preloads.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        pg::gucs::register_preload();
        schedule::registry::init();
        engine::progress::init();
        schedule::withdraw::install();
        // Not under pg_upgrade (a server started with -b): a scheduler
        // would hold a connection to a database pg_upgrade must drop and
        // create again, and would change data while it is copied.
        // SAFETY: reads a flag the postmaster sets from its options before
        // it loads preloads.
        if !unsafe { pgrx::pg_sys::IsBinaryUpgrade } {
            schedule::launcher::register();
        }
    }
    pg::gucs::reserve_prefix();
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
