//! Splits (SPEC 17): a segment's members divided into stable groups, for
//! holdouts and A/B tests. A record's group is a function of the segment
//! and its key alone (`segments.split_bucket`, sql/activation.sql), so it
//! keeps its group across refreshes, live changes, exits and re-entries.
//! Nothing is stored per member: the members view, exports, `preview`,
//! `segments_of` and `explain_member` compute the group as they read, and a
//! refresh of a split segment costs what it did unsplit.

use pgrx::prelude::*;
use pgrx::JsonB;

use segments_core::split::parse_groups;

use crate::pg::authorization::require_editor;
use crate::pg::error::{OrRaise, Raise, SegmentsError};
use crate::pg::sandbox::privileged;
use crate::pg::spi::{optional_value, spi};

/// The segment's name, after checking that the caller may change it.
fn changeable_segment(segment: i64, what: &str) -> String {
    require_editor(what);
    let row = Spi::connect(|client| {
        let table = spi(client.select(
            "SELECT name, segments._may_change(owner) FROM segments.segment WHERE id OPERATOR(pg_catalog.=) $1",
            None,
            &[segment.into()],
        ));
        table.into_iter().next().map(|row| {
            (
                spi(row.get::<String>(1)).unwrap_or_default(),
                spi(row.get::<bool>(2)).unwrap_or(false),
            )
        })
    });
    let Some((name, may_change)) = row else {
        SegmentsError::no_such_segment(segment).raise()
    };
    if !may_change {
        SegmentsError::InsufficientPrivilege(format!(
            "permission denied for segment \"{name}\": only its owner, a member of that role, segments_admin or a superuser may {what}"
        ))
        .raise();
    }
    name
}

/// Splits a segment's members into groups of the given whole percentages.
/// Splitting again with the same groups does nothing; with other groups it
/// is refused (unsplit first: every record may change group).
#[pg_extern(schema = "segments")]
fn split(segment: i64, groups: JsonB) {
    let name = changeable_segment(segment, "split segments");
    let wanted = parse_groups(&groups.0).or_raise();
    let current = optional_value::<JsonB>(
        "SELECT percents FROM segments.segment_split WHERE segment_id OPERATOR(pg_catalog.=) $1",
        &[segment.into()],
    );
    if let Some(current) = current {
        if current.0 == groups.0 {
            return;
        }
        SegmentsError::InvalidParameter(format!(
            "segment \"{name}\" is already split as {}; changing the groups moves records between them: unsplit it and split it again",
            current.0
        ))
        .raise();
    }
    let names: Vec<String> = wanted.iter().map(|g| g.name.clone()).collect();
    let lows: Vec<i32> = wanted.iter().map(|g| g.low).collect();
    privileged(std::panic::AssertUnwindSafe(|| {
        spi(Spi::run_with_args(
            "INSERT INTO segments.segment_split (segment_id, groups, lows, percents) VALUES ($1, $2, $3, $4)",
            &[segment.into(), names.into(), lows.into(), groups.into()],
        ))
    }));
}

/// Ends a segment's split. Refused (2BP01) while a segment's definition
/// names one of its groups.
#[pg_extern(schema = "segments")]
fn unsplit(segment: i64) {
    let name = changeable_segment(segment, "unsplit segments");
    let users = optional_value::<String>(
        "SELECT pg_catalog.string_agg(pg_catalog.format('\"%s\"', s.name), ', ' ORDER BY s.name) FROM segments.segment s \
          WHERE pg_catalog.jsonb_path_exists(s.definition, '$.** ? (@.segment == $s && exists(@.group))', \
                                             pg_catalog.jsonb_build_object('s', $1))",
        &[segment.into()],
    );
    if let Some(users) = users {
        SegmentsError::DependentObjects(format!(
            "segment \"{name}\" cannot be unsplit: segment {users} selects one of its groups"
        ))
        .raise();
    }
    privileged(std::panic::AssertUnwindSafe(|| {
        spi(Spi::run_with_args(
            "DELETE FROM segments.segment_split WHERE segment_id OPERATOR(pg_catalog.=) $1",
            &[segment.into()],
        ))
    }));
}
