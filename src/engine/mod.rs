//! The engine: running what segments-core plans. Evaluating leaves into
//! bitmaps inside the scan (`rb_agg`), refreshing and storing memberships,
//! capturing changes and applying them to live segments, and keeping Citus
//! placements right.

pub mod aggregate;
pub mod capture;
pub mod citus;
pub mod evaluate;
pub mod live;
pub mod refresh;
