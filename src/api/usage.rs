//! Usages recorded by applications (journeys, campaigns, measures...).
//! The usage registry is internal state: these functions check the caller
//! and write it as the extension. Usages of kind segment, export and
//! sequence are recorded by the extension itself and cannot be added or
//! removed here.

use pgrx::prelude::*;

use crate::pg::authorization::require_editor;
use crate::pg::sandbox::run_internal;

/// Records that `consumer` uses a segment; `live` false does not keep it in use.
#[pg_extern(schema = "segments")]
fn add_usage(segment: i64, kind: &str, consumer: &str, live: default!(bool, true)) {
    require_editor("record usages");
    run_internal(
        "SELECT segments._add_usage($1, $2, $3, $4)",
        vec![
            segment.into(),
            kind.to_string().into(),
            consumer.to_string().into(),
            live.into(),
        ],
    );
}

/// Removes a usage recorded by add_usage.
#[pg_extern(schema = "segments")]
fn remove_usage(segment: i64, kind: &str, consumer: &str) {
    require_editor("remove usages");
    run_internal(
        "SELECT segments._remove_usage($1, $2, $3)",
        vec![
            segment.into(),
            kind.to_string().into(),
            consumer.to_string().into(),
        ],
    );
}
