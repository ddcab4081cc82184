//! What binds segments to PostgreSQL, beneath every other room: errors
//! raised as Postgres errors, SPI helpers, the real catalog, transactions
//! and the owner sandbox, and the `segments.*` settings.

pub mod catalog;
pub mod error;
pub mod gucs;
pub mod spi;
pub mod txn;
