//! Refresh schedules: `system`, `daily`, `weekly`, `monthly`, `manual`, or
//! a five-field cron expression, read in `segments.timezone` (default: the
//! server's TimeZone), as pg_cron reads `cron.timezone`.

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds};
use croner::Cron;

use crate::error::SegmentsError;

/// The named schedules as cron expressions.
pub const DAILY: &str = "0 0 * * *";
pub const WEEKLY: &str = "0 0 * * 0";
pub const MONTHLY: &str = "0 0 1 * *";

#[derive(Debug, Clone)]
pub enum Schedule {
    /// Follows `segments.system_schedule`.
    System,
    /// Follows row changes (live segments); also fully refreshed by the
    /// system refresh, so relative-time windows slide at least daily.
    Live,
    /// Refreshed only when asked.
    Manual,
    Cron(Box<Cron>),
}

pub fn parse_cron(text: &str) -> Result<Cron, SegmentsError> {
    let fields = text.split_whitespace().count();
    if fields != 5 {
        return Err(SegmentsError::InvalidParameter(format!(
            "schedule \"{text}\" is not system, live, daily, weekly, monthly, manual or a five-field cron expression \
             (minute hour day-of-month month day-of-week)"
        )));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .build()
        .parse(text)
        .map_err(|e| {
            SegmentsError::InvalidParameter(format!(
                "schedule \"{text}\" is not a valid cron expression: {e}"
            ))
        })
}

impl Schedule {
    /// The schedule of a segment: NULL means `system` for a dynamic segment
    /// and `manual` for a static one.
    pub fn parse(text: Option<&str>, dynamic: bool) -> Result<Schedule, SegmentsError> {
        let text = text.map(str::trim).filter(|t| !t.is_empty());
        Ok(match text {
            None if dynamic => Schedule::System,
            None => Schedule::Manual,
            Some("system") => Schedule::System,
            Some("live") => Schedule::Live,
            Some("manual") => Schedule::Manual,
            Some("daily") => Schedule::Cron(Box::new(parse_cron(DAILY)?)),
            Some("weekly") => Schedule::Cron(Box::new(parse_cron(WEEKLY)?)),
            Some("monthly") => Schedule::Cron(Box::new(parse_cron(MONTHLY)?)),
            Some(cron) => Schedule::Cron(Box::new(parse_cron(cron)?)),
        })
    }

    /// The first time strictly after `after` at which the schedule fires;
    /// `system` follows `system_cron`. None for manual schedules.
    pub fn next_after(
        &self,
        after: DateTime<Utc>,
        system_cron: &Cron,
        zone: &chrono_tz::Tz,
    ) -> Option<DateTime<Utc>> {
        let cron = match self {
            Schedule::Manual => return None,
            Schedule::System | Schedule::Live => system_cron,
            Schedule::Cron(cron) => cron,
        };
        next_in_zone(cron, after, zone)
    }
}

/// The first time strictly after `after` at which `cron`, read as wall-clock
/// time in `zone`, fires.
pub fn next_in_zone(
    cron: &Cron,
    after: DateTime<Utc>,
    zone: &chrono_tz::Tz,
) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&after.with_timezone(zone), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// What the scheduler knows of a segment to say when it is next due.
pub struct Due<'a> {
    pub dynamic: bool,
    pub active: bool,
    pub schedule: Option<&'a str>,
    /// The last refresh, or the creation when it never refreshed.
    pub since: DateTime<Utc>,
    /// Just created, changed or activated.
    pub needs_refresh: bool,
}

/// When a segment is next refreshed by the scheduler: never for inactive,
/// manual or static segments (a static one once, right after it was
/// created, changed or activated); now for a dynamic one that needs a
/// refresh; otherwise its schedule's next time after `since`.
pub fn next_refresh(
    due: &Due,
    now: DateTime<Utc>,
    system_cron: &Cron,
    zone: &chrono_tz::Tz,
) -> Option<DateTime<Utc>> {
    if !due.active {
        return None;
    }
    if !due.dynamic {
        return due.needs_refresh.then_some(now);
    }
    let schedule = Schedule::parse(due.schedule, true).ok()?;
    if matches!(schedule, Schedule::Manual) {
        return None;
    }
    if due.needs_refresh {
        return Some(now);
    }
    schedule.next_after(due.since, system_cron, zone)
}

/// Checks a schedule for a segment of the given type.
pub fn check(text: Option<&str>, dynamic: bool) -> Result<(), SegmentsError> {
    let schedule = Schedule::parse(text, dynamic)?;
    if !dynamic && !matches!(schedule, Schedule::Manual) {
        return Err(SegmentsError::InvalidParameter(format!(
            "a static segment refreshes only when asked: its schedule must be manual, not \"{}\"",
            text.unwrap_or_default()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_schedules_follow_the_time_zone() {
        let cron = parse_cron("0 2 * * *").unwrap();
        let after: DateTime<Utc> = "2026-11-01T00:00:00Z".parse().unwrap();
        let utc = next_in_zone(&cron, after, &chrono_tz::UTC).unwrap();
        assert_eq!(utc.to_rfc3339(), "2026-11-01T02:00:00+00:00");
        let berlin = next_in_zone(&cron, after, &chrono_tz::Europe::Berlin).unwrap();
        assert_eq!(berlin.to_rfc3339(), "2026-11-01T01:00:00+00:00"); // 02:00 CET
        let kiritimati = next_in_zone(&cron, after, &chrono_tz::Pacific::Kiritimati).unwrap();
        assert_eq!(kiritimati.to_rfc3339(), "2026-11-01T12:00:00+00:00"); // 02:00 on Nov 2 at +14
    }
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn named_schedules_and_cron() {
        let system = parse_cron("0 2 * * *").unwrap();
        let from = at(2026, 11, 22, 10, 30);
        let next = |text: &str| {
            Schedule::parse(Some(text), true)
                .unwrap()
                .next_after(from, &system, &chrono_tz::UTC)
        };
        assert_eq!(next("system"), Some(at(2026, 11, 23, 2, 0)));
        assert_eq!(next("daily"), Some(at(2026, 11, 23, 0, 0)));
        assert_eq!(next("weekly"), Some(at(2026, 11, 29, 0, 0))); // a Sunday
        assert_eq!(next("monthly"), Some(at(2026, 12, 1, 0, 0)));
        assert_eq!(next("*/15 * * * *"), Some(at(2026, 11, 22, 10, 45)));
        assert_eq!(next("manual"), None);
        assert!(matches!(
            Schedule::parse(None, true).unwrap(),
            Schedule::System
        ));
        assert!(matches!(
            Schedule::parse(None, false).unwrap(),
            Schedule::Manual
        ));
    }

    #[test]
    fn bad_schedules_are_refused() {
        for bad in [
            "hourly",
            "* * * *",
            "0 0 0 * * *",
            "61 * * * *",
            "0 25 * * *",
            "0 0 * * 9",
        ] {
            let e = Schedule::parse(Some(bad), true).unwrap_err();
            assert_eq!(e.code(), "22023", "{bad}");
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn static_segments_take_only_manual() {
        assert!(check(Some("manual"), false).is_ok());
        assert!(check(None, false).is_ok());
        let e = check(Some("daily"), false).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("a static segment refreshes only when asked"),
            "{e}"
        );
        assert!(check(Some("0 6 * * 1"), true).is_ok());
    }

    #[test]
    fn next_refresh_follows_state_type_and_schedule() {
        let system = parse_cron("0 2 * * *").unwrap();
        let zone = chrono_tz::UTC;
        let at = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc)
        };
        let now = at("2026-11-24T10:00:00Z");
        let since = at("2026-11-24T03:00:00Z");
        let due = |dynamic, active, schedule, needs_refresh| Due {
            dynamic,
            active,
            schedule,
            since,
            needs_refresh,
        };
        let next = |d: Due| next_refresh(&d, now, &system, &zone);
        assert_eq!(next(due(true, false, None, true)), None, "inactive: never");
        assert_eq!(
            next(due(false, true, None, true)),
            Some(now),
            "static, changed: once, now"
        );
        assert_eq!(
            next(due(false, true, None, false)),
            None,
            "static: never again"
        );
        assert_eq!(
            next(due(true, true, Some("manual"), true)),
            None,
            "manual: never"
        );
        assert_eq!(
            next(due(true, true, Some("daily"), true)),
            Some(now),
            "dynamic, changed: now"
        );
        assert_eq!(
            next(due(true, true, None, false)),
            Some(at("2026-11-25T02:00:00Z")),
            "system: the system cron after the last refresh"
        );
        assert_eq!(
            next(due(true, true, Some("live"), false)),
            Some(at("2026-11-25T02:00:00Z")),
            "live: the system refresh too"
        );
        assert_eq!(
            next(due(true, true, Some("*/15 * * * *"), false)),
            Some(at("2026-11-24T03:15:00Z"))
        );
        assert_eq!(
            next(due(true, true, Some("not a schedule"), false)),
            None,
            "an unreadable schedule is never due"
        );
    }
}
