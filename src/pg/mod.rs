//! What binds segments to PostgreSQL, beneath every other room: errors
//! raised as Postgres errors (`error`), SPI helpers (`spi`), the real
//! catalog (`catalog`), who may do what (`authorization`), the owner
//! sandbox (`sandbox`), subtransactions (`subtransaction`), the
//! `segments.*` settings (`gucs`), telling a restore from a user's write
//! (`restore`), and what differs between PostgreSQL majors (`versions`).

pub mod authorization;
pub mod catalog;
pub mod citus;
pub mod error;
pub mod gucs;
pub mod restore;
pub mod sandbox;
pub mod spi;
pub mod subtransaction;
pub mod versions;
