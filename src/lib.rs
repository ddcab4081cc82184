//! segments: customer segmentation inside PostgreSQL.
//!
//! Rooms, by concern:
//! - `definition`, `validate`: the definition model and its checks
//! - `catalog`: what the compiler knows of entities, columns and segments
//! - `compile`: definitions to SQL leaves and bitmap algebra
//! - `bitmap`: Roaring memberships, the `rb_agg` aggregate, rule counts
//! - `error`: the one error type and its SQLSTATEs

pub mod bitmap;
pub mod catalog;
pub mod compile;
pub mod definition;
pub mod error;
pub mod sql;
pub mod suggest;
pub mod validate;

::pgrx::pg_module_magic!();

pgrx::extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);

#[cfg(feature = "pg_test")]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn test_schema_exists() {
        let n = Spi::get_one::<i64>("SELECT count(*) FROM pg_tables WHERE schemaname = 'segments'").unwrap();
        assert!(n.unwrap() >= 4);
    }
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
