//! Activation (SPEC 17): what turns a segment into campaigns and syncs.
//!
//! - `split`: stable groups of a segment's members (holdouts, A/B tests);
//! - `priority`: priority lists, each record in at most one audience;
//! - `breakdown`: who the members are, attribute by attribute, against
//!   everyone;
//! - `feed`: change feeds, the changes of segments by position, for
//!   connectors that send only what changed.
//!
//! Splits and priority lists are read from the stored memberships, so
//! every refresh and live apply moves them along; feeds record each run's
//! changes in `after_change` (engine/store.rs).

pub mod breakdown;
pub mod feed;
pub mod priority;
pub mod split;
