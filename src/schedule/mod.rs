//! Scheduling: when a segment is next due (`next`), one pass over what is
//! due (`pass`) and the background worker that runs a pass every
//! `segments.naptime` (`worker`). Parsing schedules is
//! pure and lives in segments-core (`segments_core::schedule`).

pub mod next;
pub mod pass;
pub mod worker;
