//! The engine: running what segments-core plans, by stage.
//!
//! - `run`: what a run is (target, cause, status, outcome);
//! - `plan`: compiling segments into one plan;
//! - `evaluate` (with `aggregate`'s `rb_agg`): computing a plan's leaves
//!   inside the scan, and segments over them; `late`: the leaves made
//!   only when a segment reads them;
//! - `store`: writing memberships, statuses, runs and changes, then
//!   `after_change`, where every consumer of membership changes plugs in;
//! - `refresh` and `live`: the two orchestrations (every row, or just the
//!   changed ones);
//! - `progress`: what runs now, for `segments.activity`;
//! - `memory`: the counting allocator behind a run's `peak_memory`;
//! - `citus`: keeping Citus placements right.
//!
//! Dependencies point one way: refresh and live use plan, evaluate and
//! store; store uses evaluate; nothing below imports refresh or live
//! (`scripts/module_cycles.py` checks it).

pub mod aggregate;
pub mod citus;
pub mod evaluate;
pub mod late;
pub mod live;
pub mod memory;
pub mod plan;
pub mod progress;
pub mod refresh;
pub mod run;
pub mod store;
