//! Tests that run inside a real Postgres (`cargo pgrx test`). Each runs in a
//! transaction that is rolled back.
use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn test_schema_exists() {
        let n = Spi::get_one::<i64>("SELECT count(*) FROM pg_tables WHERE schemaname = 'segments'").unwrap();
        assert!(n.unwrap() >= 4);
    }
}
