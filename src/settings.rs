//! Every `segments.*` setting, in one place. Settings read by the
//! background worker at start need a restart; the worker's schedules follow
//! a reload; the rest are settable by superusers per session.

use std::ffi::CString;

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

pub static REFERENCE_TIME: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static MAX_ACTIVE_SEGMENTS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
pub static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));
pub static NAPTIME: GucSetting<i32> = GucSetting::<i32>::new(10);
pub static SYSTEM_SCHEDULE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"0 2 * * *"));
pub static CLEANUP_SCHEDULE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"30 1 * * *"));
pub static UNUSED_AFTER: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"45 days"));
pub static HISTORY_RETENTION: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"90 days"));

/// Settings read at server start exist only when the library is preloaded
/// (Postgres refuses to define them later).
pub fn register_preload() {
    GucRegistry::define_string_guc(
        c"segments.database",
        c"The database the background worker runs in.",
        c"Read when the server starts.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

pub fn register() {
    GucRegistry::define_string_guc(
        c"segments.reference_time",
        c"The time relative conditions are measured from (default: now()).",
        c"Set it to a timestamptz for reproducible reports and tests.",
        &REFERENCE_TIME,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"segments.max_active_segments",
        c"The most segments that may be active at once.",
        c"Activating past it is refused; a WARNING comes at 90%.",
        &MAX_ACTIVE_SEGMENTS,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"segments.naptime",
        c"Seconds the background worker sleeps between passes.",
        c"",
        &NAPTIME,
        1,
        3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_string_guc(
        c"segments.system_schedule",
        c"Cron expression of the system refresh of segments on the 'system' schedule.",
        c"",
        &SYSTEM_SCHEDULE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"segments.cleanup_schedule",
        c"Cron expression of the daily deactivation of unused segments.",
        c"",
        &CLEANUP_SCHEDULE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"segments.unused_after",
        c"How long a segment without live usage stays active after it was created or last updated.",
        c"",
        &UNUSED_AFTER,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"segments.history_retention",
        c"How long refresh history and membership changes are kept.",
        c"",
        &HISTORY_RETENTION,
        GucContext::Suset,
        GucFlags::default(),
    );
}

pub fn text(setting: &GucSetting<Option<CString>>) -> Option<String> {
    setting.get().map(|s| s.to_string_lossy().into_owned()).filter(|s| !s.trim().is_empty())
}
