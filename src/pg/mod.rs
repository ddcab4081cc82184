//! What binds segments to PostgreSQL, beneath every other room: errors
//! raised as Postgres errors, SPI helpers, the real catalog, transactions
//! and the owner sandbox, the `segments.*` settings, and telling a restore
//! from a user's write.

pub mod catalog;
pub mod error;
pub mod gucs;
pub mod restore;
pub mod spi;
pub mod txn;
pub mod versions;
