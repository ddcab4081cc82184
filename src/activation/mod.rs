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

use pgrx::spi::Spi;

use crate::pg::error::{Raise, SegmentsError};
use crate::pg::spi::{required, spi};

/// The entity of `segments` (at least one), which must all exist (42704)
/// and group one entity (22023 naming `what`, e.g. `feed "crm"`).
fn entity_of(what: &str, segments: &[i64]) -> String {
    let entities: Vec<(i64, String)> = Spi::connect(|client| {
        spi(client.select(
            "SELECT id, entity FROM segments.segment WHERE id OPERATOR(pg_catalog.=) ANY ($1)",
            None,
            &[segments.to_vec().into()],
        ))
        .map(|row| (required(&row, 1), required(&row, 2)))
        .collect()
    });
    if let Some(missing) = segments
        .iter()
        .find(|s| !entities.iter().any(|(id, _)| id == *s))
    {
        SegmentsError::no_such_segment(missing).raise();
    }
    let entity = entities[0].1.clone();
    if let Some((other, other_entity)) = entities.iter().find(|(_, e)| *e != entity) {
        SegmentsError::InvalidParameter(format!(
            "{what}: segment {other} is of entity \"{other_entity}\", the others of \"{entity}\""
        ))
        .raise();
    }
    entity
}
