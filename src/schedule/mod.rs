//! Scheduling: when a segment is next due (`next`), one pass over what is
//! due (`pass`), and the background workers that run passes: a `launcher`
//! per cluster that keeps a `scheduler` in every database with the
//! extension, their shared `registry`, and the hook that `withdraw`s a
//! scheduler from a statement that needs its database to itself. Parsing
//! schedules is pure and lives in segments-core (`segments_core::schedule`).

pub mod launcher;
pub mod next;
pub mod pass;
pub mod registry;
pub mod scheduler;
pub mod withdraw;
