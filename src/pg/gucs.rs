//! Every `segments.*` setting, in one place. Settings read by the
//! background worker at start need a restart; the worker's schedules follow
//! a reload; the rest are settable by superusers per session. Values are
//! checked when set (SET, ALTER SYSTEM, reload): a bad one is refused
//! naming the setting, and the `segments.` prefix is reserved.

use std::ffi::{c_char, c_void, CStr, CString};

use pgrx::{pg_sys, GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};

use crate::pg::error::{Raise, SegmentsError};

// Defaults with more than one reader: the setting and the fallback for an
// empty value. SQL reads the effective values through `_setting`.
const DEFAULT_DATABASE: &CStr = c"";
const DEFAULT_SYSTEM_SCHEDULE: &CStr = c"0 2 * * *";
const DEFAULT_CLEANUP_SCHEDULE: &CStr = c"30 1 * * *";
const DEFAULT_UNUSED_AFTER: &CStr = c"45 days";
const DEFAULT_HISTORY_RETENTION: &CStr = c"90 days";
const DEFAULT_FEED_RETENTION: &CStr = c"7 days";

pub static REFERENCE_TIME: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static MAX_ACTIVE_SEGMENTS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
pub static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(DEFAULT_DATABASE));
pub static NAPTIME: GucSetting<i32> = GucSetting::<i32>::new(10);
/// The most databases with a scheduler at once.
pub static MAX_SCHEDULERS: GucSetting<i32> = GucSetting::<i32>::new(8);
/// The upper bound of `segments.max_schedulers`, and the size of the
/// schedulers' registry in shared memory.
pub const MAX_SCHEDULERS_LIMIT: usize = 64;
/// The most conditions one definition may hold.
pub const DEFAULT_MAX_CONDITIONS: i32 = 2_000;
pub static MAX_CONDITIONS: GucSetting<i32> = GucSetting::<i32>::new(DEFAULT_MAX_CONDITIONS);
/// How many comparisons of one column with constants, in one plan, are
/// computed by a pass of their own instead of a `FILTER` clause each
/// (0: never). ARCHITECTURE.md says why 16.
pub static COLUMN_GROUP_MIN_TESTS: GucSetting<i32> = GucSetting::<i32>::new(16);
/// How many related conditions of one table with windows ending now, in
/// one plan, are computed by one sorted pass instead of a `FILTER` clause
/// each (0: never). ARCHITECTURE.md says why 16.
pub static WINDOW_SCAN_MIN_CONDITIONS: GucSetting<i32> = GucSetting::<i32>::new(16);
/// The most memory, in kB, the condition bitmaps of one shared plan may
/// take by estimate: a refresh evaluates the segments of one entity and
/// owner in batches that fit (`engine::refresh`). ARCHITECTURE.md says how
/// it is estimated.
pub static REFRESH_WORK_MEM: GucSetting<i32> = GucSetting::<i32>::new(2 * 1024 * 1024);
/// The memory, in kB, each sort of a refresh's passes over whole tables
/// may use before it spills to disk (window, funnel and grouped scans,
/// `pg::sandbox::sorting_in_memory`); never less than `work_mem`.
pub static SCAN_WORK_MEM: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);
/// How long the worker's refresh of one group of segments may take, in
/// milliseconds (0: no limit).
/// How live segments learn of changes (`segments.capture`).
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Capture {
    /// Triggers on the tables live segments read queue the changed keys in
    /// the writing transaction.
    #[name = c"trigger"]
    Trigger,
    /// The scheduler decodes the WAL from a logical replication slot:
    /// nothing is added to the writing transaction.
    #[name = c"wal"]
    Wal,
}
pub static CAPTURE: GucSetting<Capture> = GucSetting::<Capture>::new(Capture::Trigger);
pub static REFRESH_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static SYSTEM_SCHEDULE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(DEFAULT_SYSTEM_SCHEDULE));
pub static CLEANUP_SCHEDULE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(DEFAULT_CLEANUP_SCHEDULE));
pub static UNUSED_AFTER: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(DEFAULT_UNUSED_AFTER));
pub static HISTORY_RETENTION: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(DEFAULT_HISTORY_RETENTION));
pub static TIMEZONE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static FEED_RETENTION: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(DEFAULT_FEED_RETENTION));

/// Refuses a value with a detail message, for a check hook.
unsafe fn refuse(detail: &str) -> bool {
    // SAFETY: check hooks may set the detail, a palloc'd string.
    unsafe {
        pg_sys::GUC_check_errcode(
            pg_sys::errcodes::PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE as i32,
        );
        let detail = CString::new(detail.replace('\0', "")).unwrap_or_default();
        pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(detail.as_ptr());
    }
    false
}

unsafe fn value<'a>(newval: *mut *mut c_char) -> Option<&'a str> {
    // SAFETY: Postgres hands the hook a pointer to the new (possibly NULL) value.
    unsafe {
        (!newval.is_null() && !(*newval).is_null())
            .then(|| CStr::from_ptr(*newval).to_str().unwrap_or(""))
    }
}

// The check hooks below are called by Postgres with a pointer to the new
// value (`value` reads it) and may set the error's detail (`refuse`): the
// unsafe blocks in them only make those two calls.

/// A five-field cron expression.
unsafe extern "C-unwind" fn check_cron(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    match unsafe { value(newval) } {
        None => true,
        Some(text) => match segments_core::schedule::parse_cron(text.trim()) {
            Ok(_) => true,
            Err(e) => unsafe { refuse(&e.to_string()) },
        },
    }
}

/// A duration such as `45 days` (hours, days, weeks, months, years).
unsafe extern "C-unwind" fn check_duration(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    match unsafe { value(newval) } {
        None => true,
        Some(text) if segments_core::definition::RelativeDuration::parse(text).is_some() => true,
        Some(_) => unsafe {
            refuse("It must be a duration such as \"45 days\" (hours, days, weeks, months, years; at most 1000 years).")
        },
    }
}

/// A time zone both PostgreSQL and the scheduler know.
unsafe extern "C-unwind" fn check_timezone(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    match unsafe { value(newval) } {
        None | Some("") => true,
        Some(name) => {
            // SAFETY: pg_tzset takes a NUL-terminated name; it returns NULL for an unknown zone.
            let known_to_postgres = CString::new(name)
                .map(|c| unsafe { !pg_sys::pg_tzset(c.as_ptr()).is_null() })
                .unwrap_or(false);
            if known_to_postgres && name.parse::<chrono_tz::Tz>().is_ok() {
                true
            } else {
                unsafe {
                    refuse("It must be a time zone name such as \"Europe/Berlin\" or \"UTC\".")
                }
            }
        }
    }
}

/// The time zone of calendar days and cron schedules: `segments.timezone`,
/// else the server's `TimeZone` (its configured value, not a session's).
pub fn timezone_name() -> String {
    if let Some(name) = text(&TIMEZONE) {
        return name;
    }
    // SAFETY: reads the reset value of a built-in setting.
    let reset = unsafe { pg_sys::GetConfigOptionResetString(c"TimeZone".as_ptr()) };
    if reset.is_null() {
        return "UTC".into();
    }
    // SAFETY: not NULL (checked), a NUL-terminated string owned by the GUC.
    unsafe { CStr::from_ptr(reset) }
        .to_string_lossy()
        .into_owned()
}

/// `timezone_name()` for chrono; UTC when chrono does not know it.
pub fn timezone() -> chrono_tz::Tz {
    timezone_name().parse().unwrap_or(chrono_tz::UTC)
}

/// Settings read at server start exist only when the library is preloaded
/// (Postgres refuses to define them later).
pub fn register_preload() {
    GucRegistry::define_string_guc(
        c"segments.database",
        c"The one database the schedulers serve (empty: every database with the extension).",
        c"Read when the server starts.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"segments.max_schedulers",
        c"The most databases with a scheduler at once (each is a background worker: see max_worker_processes).",
        c"Read when the server starts.",
        &MAX_SCHEDULERS,
        1,
        MAX_SCHEDULERS_LIMIT as i32,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

/// A text setting checked when set: name, description, format, setting,
/// who may set it, and its check hook.
type CheckedText = (
    &'static CStr,
    &'static CStr,
    &'static CStr,
    &'static GucSetting<Option<CString>>,
    GucContext,
    pg_sys::GucStringCheckHook,
);

/// Defines the settings every backend has (called from `_PG_init`).
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
        c"segments.max_conditions",
        c"The most conditions (attribute, related and segment tests) one definition may hold.",
        c"A longer definition is refused when saved or estimated, with SQLSTATE 22023.",
        &MAX_CONDITIONS,
        1,
        100_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"segments.column_group_min_tests",
        c"How many comparisons of one column with constants in one refresh make a column group (0: never).",
        c"A column group reads the column once, in buckets, instead of one FILTER clause per comparison.",
        &COLUMN_GROUP_MIN_TESTS,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"segments.window_scan_min_conditions",
        c"How many related conditions of one table with windows (within N days) in one refresh make a window scan (0: never).",
        c"A window scan reads the related table once, sorted by record, instead of one FILTER clause per condition.",
        &WINDOW_SCAN_MIN_CONDITIONS,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"segments.refresh_work_mem",
        c"The most memory the condition bitmaps of one refresh's shared plan may take (by estimate).",
        c"Segments of one entity and owner are evaluated in batches that fit; each batch reads the tables again.",
        &REFRESH_WORK_MEM,
        1024,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"segments.scan_work_mem",
        c"The memory each sort of a refresh's passes over whole tables may use (never less than work_mem).",
        c"Window, funnel and grouped scans sort a related table by record; past this they spill to disk.",
        &SCAN_WORK_MEM,
        64,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"segments.refresh_timeout",
        c"How long the background worker's refresh of one group of segments may take (0: no limit).",
        c"A group that takes longer is cancelled, its segments fail with SQLSTATE 57014 and are retried with backoff.",
        &REFRESH_TIMEOUT,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_enum_guc(
        c"segments.capture",
        c"How live segments capture changes: 'trigger' (in the writing transaction) or 'wal' (decoded from a logical replication slot by the scheduler).",
        c"'wal' needs wal_level = logical and the preloaded scheduler; the scheduler switches at its next pass after a reload.",
        &CAPTURE,
        GucContext::Sighup,
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
    // Text settings checked when set: (name, description, format, setting,
    // who may set it, check).
    let checked: [CheckedText; 6] = [
        (
            c"segments.system_schedule",
            c"Cron expression of the system refresh of segments on the 'system' schedule.",
            c"Five fields, in segments.timezone.",
            &SYSTEM_SCHEDULE,
            GucContext::Sighup,
            Some(check_cron),
        ),
        (
            c"segments.cleanup_schedule",
            c"Cron expression of the daily deactivation of unused segments.",
            c"Five fields, in segments.timezone.",
            &CLEANUP_SCHEDULE,
            GucContext::Sighup,
            Some(check_cron),
        ),
        (
            c"segments.unused_after",
            c"How long a segment without live usage stays active after it was created or last updated.",
            c"A duration such as 45 days.",
            &UNUSED_AFTER,
            GucContext::Suset,
            Some(check_duration),
        ),
        (
            c"segments.history_retention",
            c"How long refresh history and membership changes are kept.",
            c"A duration such as 90 days.",
            &HISTORY_RETENTION,
            GucContext::Suset,
            Some(check_duration),
        ),
        (
            c"segments.feed_retention",
            c"How long a change feed keeps changes its reader has not acknowledged.",
            c"A duration such as 7 days; a feed that falls further behind fails until reset_feed.",
            &FEED_RETENTION,
            GucContext::Suset,
            Some(check_duration),
        ),
        (
            c"segments.timezone",
            c"The time zone of calendar days (on, is_today, is_anniversary, date windows) and cron schedules.",
            c"Default: the server's TimeZone.",
            &TIMEZONE,
            GucContext::Suset,
            Some(check_timezone),
        ),
    ];
    for (name, short, long, setting, context, check) in checked {
        // SAFETY: the hooks are plain functions that only read their input.
        unsafe {
            GucRegistry::define_string_guc_with_hooks(
                name,
                short,
                long,
                setting,
                context,
                GucFlags::default(),
                check,
                None,
                None,
            )
        };
    }
}

/// Reserves the `segments.` prefix: a misspelt `segments.*` setting is an
/// error, not a silent placeholder. Call after every setting is defined.
pub fn reserve_prefix() {
    // SAFETY: called from _PG_init, after the definitions above.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"segments".as_ptr()) };
}

/// A text setting's value, or `default` when it is empty.
fn text_or(setting: &GucSetting<Option<CString>>, default: &CStr) -> String {
    text(setting).unwrap_or_else(|| default.to_string_lossy().into_owned())
}

/// `segments.database`: the one database the schedulers serve; empty
/// (the default) for every database that has the extension.
pub fn database() -> String {
    text_or(&DATABASE, DEFAULT_DATABASE)
}

/// `segments.system_schedule`: when every dynamic segment is refreshed.
pub fn system_schedule() -> String {
    text_or(&SYSTEM_SCHEDULE, DEFAULT_SYSTEM_SCHEDULE)
}

/// `segments.cleanup_schedule`: when unused segments are deactivated.
pub fn cleanup_schedule() -> String {
    text_or(&CLEANUP_SCHEDULE, DEFAULT_CLEANUP_SCHEDULE)
}

/// `segments.history_retention`: how long refresh and change rows stay.
pub fn history_retention() -> String {
    text_or(&HISTORY_RETENTION, DEFAULT_HISTORY_RETENTION)
}

/// `segments.feed_retention`: how long unacknowledged feed changes stay.
pub fn feed_retention() -> String {
    text_or(&FEED_RETENTION, DEFAULT_FEED_RETENTION)
}

/// `segments.unused_after`: how long a segment without usage stays active.
pub fn unused_after() -> String {
    text_or(&UNUSED_AFTER, DEFAULT_UNUSED_AFTER)
}

/// The effective value of a setting SQL reads (`segments._setting`); only
/// the settings SQL needs are readable this way.
pub fn sql_visible(name: &str) -> String {
    match name {
        "segments.max_active_segments" => MAX_ACTIVE_SEGMENTS.get().to_string(),
        "segments.unused_after" => unused_after(),
        "segments.history_retention" => history_retention(),
        "segments.feed_retention" => feed_retention(),
        _ => SegmentsError::InvalidParameter(format!(
            "setting \"{name}\" is not read through segments._setting"
        ))
        .raise(),
    }
}

pub fn text(setting: &GucSetting<Option<CString>>) -> Option<String> {
    setting
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.trim().is_empty())
}

/// `segments.max_conditions`, as a count.
pub fn max_conditions() -> usize {
    MAX_CONDITIONS.get().max(1) as usize
}
