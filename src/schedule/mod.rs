//! Scheduling: one pass over what is due (`pass`) and the background worker
//! that runs a pass every `segments.naptime` (`worker`). Parsing schedules is
//! pure and lives in segments-core (`segments_core::schedule`).

pub mod pass;
pub mod worker;
