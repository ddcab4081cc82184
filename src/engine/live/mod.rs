//! Live segments (`schedule = 'live'`): memberships follow inserts,
//! updates and deletes within seconds, at a cost proportional to what
//! changed.
//!
//! - `tables`: what capture watches: the tables live segments read, their
//!   key columns and the columns read there.
//! - `install`: the capture triggers live segments need, on the entity
//!   table and the related tables they read, installed with the first
//!   live segment that needs a table and removed with the last.
//! - `capture`: the C trigger functions on users' write path, queuing the
//!   changed keys (and row images) in `segments.change_queue`; a TRUNCATE
//!   or a bulk statement queues a NULL key: everything changed.
//! - `apply`: takes the queue, evaluates the live segments on just those
//!   keys, and stores the result as a refresh does.
//! - `related`: the related values kept between applications.
//! - `paths`: keys queued by tables reached through others, mapped to the
//!   entity keys they belong to.
//! - `publication`: the publication WAL capture decodes, and its checks of
//!   the server and the tables.
//! - `wal`: the other capture (`segments.capture = 'wal'`): the scheduler
//!   decodes the changes from a logical replication slot into the same
//!   queue, and the writing transaction does nothing.
//! - `output_plugin`: the slot's plugin, pgoutput skipping the extension's
//!   own writes, which `own_writes` marks in the WAL.
//!
//! The SQL side (the lifecycle trigger that keeps capture installed) is
//! `sql/live.sql`.

pub mod apply;
pub mod capture;
pub mod install;
pub mod output_plugin;
pub mod own_writes;
pub mod paths;
pub mod publication;
pub mod related;
pub mod tables;
pub mod wal;
