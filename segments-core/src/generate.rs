//! Random segment definitions with an independent SQL oracle for each, for
//! the differential fuzzer (tests/differential.rs in the extension): every
//! operator, null-heavy columns, related aggregates with windows (and
//! windows in the past), `every`, sequences with step references and an
//! absent last step, ranks with ties, nested any/all/not, subrules with all
//! three combines, varchar/char/numeric typmods, integer bounds.
//!
//! The definitions read `people` (entity `person`, key `id`), its related
//! table `events` (`person_id`, time column `at`) and a path of two hops:
//! `devices` (`person_id`) and `pings` (`device_id` referencing
//! `devices.id`, time column `at`, the same columns as `events`), as
//! `TABLES_SQL` creates them; the oracle's SQL is a predicate over
//! `people p` (it joins the path by hand).

/// The tables the definitions read, with rows that hit every edge case the
/// generator aims at (NULLs, typmods, integer bounds, quotes).
pub const TABLES_SQL: &str = "
CREATE TABLE people (id int PRIMARY KEY, txt text, vc varchar(5), ch char(3), i int, big bigint,
                     num numeric(5,2), b boolean, ts timestamptz, d date);
INSERT INTO people
SELECT g,
       (ARRAY['abc','abcde','ABC','a''b','','x','de',NULL,NULL])[1 + g % 9],
       (ARRAY['abcde','abcd','ab','x',NULL,'ABCDE'])[1 + g % 6],
       (ARRAY['abc','ab','x',NULL,'de'])[1 + g % 5],
       (ARRAY[0, 7, -7, 2147483647, -2147483648, NULL, 12, 13])[1 + g % 8],
       (ARRAY[0, 7, -7, 9223372036854775807, 3000000000, NULL, 99999999999])[1 + g % 7],
       (ARRAY[4.56, 4.55, 999.99, -3, 0, NULL, 12.50])[1 + g % 7],
       (ARRAY[true, false, NULL])[1 + g % 3],
       CASE WHEN g % 11 = 0 THEN NULL ELSE '2026-11-01 12:00:00+00'::timestamptz - (g * interval '7 hours 13 minutes') END,
       CASE WHEN g % 13 = 0 THEN NULL ELSE '2026-11-01'::date - (g % 800) END
  FROM generate_series(1, 600) g;
CREATE TABLE events (person_id int, kind text, amount numeric(8,2), at timestamptz);
INSERT INTO events
SELECT 1 + (g * 7) % 500, (ARRAY['open','click','buy',NULL])[1 + g % 4],
       CASE WHEN g % 10 = 0 THEN NULL ELSE (g % 97) * 1.5 END,
       '2026-11-01 12:00:00+00'::timestamptz - (g * interval '5 hours 17 minutes')
  FROM generate_series(1, 2500) g;
-- Rows at the very time of another row of the same person: a sequence's
-- steps are strictly later, so these must not chain with their twin.
INSERT INTO events
SELECT person_id, (ARRAY['open','click','buy'])[1 + (person_id % 3)], amount + 7, at
  FROM events WHERE person_id % 4 = 0;
CREATE INDEX ON events (person_id, at);
-- A path: a person's devices (some of nobody, some of a person that does
-- not exist) and their pings (some of a device that does not exist).
CREATE TABLE devices (id int PRIMARY KEY, person_id int);
INSERT INTO devices
SELECT g, CASE WHEN g % 17 = 0 THEN NULL ELSE 1 + (g * 13) % 650 END
  FROM generate_series(1, 900) g;
CREATE TABLE pings (device_id int, kind text, amount numeric(8,2), at timestamptz);
INSERT INTO pings
SELECT CASE WHEN g % 29 = 0 THEN NULL ELSE 1 + (g * 11) % 950 END,
       (ARRAY['open','click','buy',NULL])[1 + g % 4],
       CASE WHEN g % 9 = 0 THEN NULL ELSE (g % 89) * 1.5 END,
       '2026-11-01 12:00:00+00'::timestamptz - (g * interval '4 hours 41 minutes')
  FROM generate_series(1, 3000) g;
CREATE INDEX ON pings (device_id, at);
-- The oracle joins a sequence's steps through devices by person: without
-- this index a three-step oracle on pings can take minutes.
CREATE INDEX ON devices (person_id);
ANALYZE people, events, devices, pings;";

/// The related tables conditions read: `events` directly, `pings` through
/// `devices`.
const RELATED: &[&str] = &["events", "pings"];

/// The oracle's tables and join condition for `related`'s rows under
/// `alias` that belong to person `p`: `events` by its foreign key, `pings`
/// through the device it references.
fn owned_rows(related: &str, alias: &str) -> (String, String) {
    match related {
        "events" => (
            format!("events {alias}"),
            format!("{alias}.person_id = p.id"),
        ),
        _ => (
            format!("pings {alias}, devices {alias}v"),
            format!("{alias}v.id = {alias}.device_id AND {alias}v.person_id = p.id"),
        ),
    }
}

/// `FROM ... WHERE <owned>` for `related`'s rows as `r`.
fn rows_of(related: &str) -> String {
    let (tables, owned) = owned_rows(related, "r");
    format!("FROM {tables} WHERE {owned}")
}

/// The traits the definitions use (create them after registering `events`),
/// with the oracle's value of each for person `p` (0 or NULL without rows).
pub const TRAITS: &[(&str, &str, &str)] = &[
    (
        "ev_count",
        r#"{"related":"events","aggregate":"count"}"#,
        "(SELECT count(*) FROM events r WHERE r.person_id = p.id)",
    ),
    (
        "ev_clicks_week",
        r#"{"related":"events","aggregate":"count","where":{"attribute":"kind","op":"eq","value":"click"},"within":"2 weeks"}"#,
        "(SELECT count(*) FROM events r WHERE r.person_id = p.id AND r.kind = 'click' AND r.at >= '2026-11-01 12:00:00+00'::timestamptz - interval '2 weeks' AND r.at <= '2026-11-01 12:00:00+00'::timestamptz)",
    ),
    (
        "ev_spent",
        r#"{"related":"events","aggregate":"sum","attribute":"amount"}"#,
        "(SELECT sum(amount) FROM events r WHERE r.person_id = p.id)",
    ),
    (
        "ev_last_kind",
        r#"{"related":"events","aggregate":"last","attribute":"kind"}"#,
        "(SELECT kind FROM events r WHERE r.person_id = p.id ORDER BY at DESC, kind LIMIT 1)",
    ),
    (
        "ev_usual_kind",
        r#"{"related":"events","aggregate":"most_frequent","attribute":"kind","within":{"from":"1 years","to":"3 days"}}"#,
        "(SELECT kind FROM events r WHERE r.person_id = p.id AND kind IS NOT NULL AND r.at >= '2026-11-01 12:00:00+00'::timestamptz - interval '1 years' AND r.at <= '2026-11-01 12:00:00+00'::timestamptz - interval '3 days' GROUP BY kind ORDER BY count(*) DESC, kind LIMIT 1)",
    ),
    (
        "ping_count",
        r#"{"related":"pings","aggregate":"count"}"#,
        "(SELECT count(*) FROM pings r, devices v WHERE v.id = r.device_id AND v.person_id = p.id)",
    ),
    (
        "ping_top_month",
        r#"{"related":"pings","aggregate":"max","attribute":"amount","within":"1 months"}"#,
        "(SELECT max(amount) FROM pings r, devices v WHERE v.id = r.device_id AND v.person_id = p.id AND r.at >= '2026-11-01 12:00:00+00'::timestamptz - interval '1 months' AND r.at <= '2026-11-01 12:00:00+00'::timestamptz)",
    ),
];

/// The reference time the definitions' windows are relative to.
pub const REFERENCE: &str = "'2026-11-01 12:00:00+00'::timestamptz";

/// A xorshift generator: a seed replays a run.
pub struct Rng(pub u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// A condition as JSON, with the oracle's SQL for it (true or false for
/// every row: NULL attributes make a leaf false, `not` is the complement).
pub struct Generated {
    pub json: String,
    pub sql: String,
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

const TEXTS: &[&str] = &[
    "abc", "abcde", "abcdefgh", "ab", "x", "ABC", "a'b", "", "abcz", "de", "zz",
];
const DURATIONS: &[(&str, &str)] = &[
    ("12 hours", "12 hours"),
    ("3 days", "3 days"),
    ("2 weeks", "2 weeks"),
    ("1 months", "1 months"),
    ("1 years", "1 years"),
];

fn leaf(rng: &mut Rng) -> Generated {
    let null_false = |sql: String| format!("coalesce(({sql}), false)");
    match rng.below(12) {
        // text-like columns: txt (text), vc (varchar(5)), ch (char(3))
        0 | 1 => {
            let column = *rng.pick(&["txt", "vc", "ch"]);
            let v = *rng.pick(TEXTS);
            let ignore = rng.chance(25);
            let col = if ignore {
                format!("lower(p.{column}::text)")
            } else {
                format!("p.{column}::text")
            };
            let lit = |v: &str| {
                if ignore {
                    format!("lower({}::text)", quote(v))
                } else {
                    format!("{}::text", quote(v))
                }
            };
            // char(n) compares without trailing spaces: its text form.
            let (op, sql) = match rng.below(10) {
                0 => ("eq", format!("{col} = {}", lit(v))),
                1 => ("ne", format!("{col} <> {}", lit(v))),
                2 => ("contains", format!("strpos({col}, {}) > 0", lit(v))),
                3 => ("not_contains", format!("strpos({col}, {}) = 0", lit(v))),
                4 => ("starts_with", format!("starts_with({col}, {})", lit(v))),
                5 => (
                    "ends_with",
                    format!("right({col}, length({})) = {}", lit(v), lit(v)),
                ),
                6 => ("lt", format!("{col} < {}", lit(v))),
                7 => ("is_null", format!("p.{column} IS NULL")),
                8 => ("is_not_null", format!("p.{column} IS NOT NULL")),
                _ => {
                    let w = *rng.pick(TEXTS);
                    let json = format!(
                        r#"{{"attribute":"{column}","op":"in","value":[{},{}]{}}}"#,
                        json_str(v),
                        json_str(w),
                        if ignore { r#","ignore_case":true"# } else { "" }
                    );
                    return Generated {
                        json,
                        sql: null_false(format!("{col} IN ({}, {})", lit(v), lit(w))),
                    };
                }
            };
            let value = if op == "is_null" || op == "is_not_null" {
                String::new()
            } else {
                format!(r#","value":{}"#, json_str(v))
            };
            let ic = if ignore && op != "is_null" && op != "is_not_null" {
                r#","ignore_case":true"#
            } else {
                ""
            };
            // ch is char(3) and compares as bpchar in segments: 'abc ' = 'abc'.
            let sql = if column == "ch" && !ignore {
                sql.replace("p.ch::text", "rtrim(p.ch::text)")
            } else {
                sql
            };
            let sql = if op == "is_null" {
                sql
            } else {
                null_false(sql)
            };
            Generated {
                json: format!(r#"{{"attribute":"{column}","op":"{op}"{value}{ic}}}"#),
                sql,
            }
        }
        // numbers: i (int), big (bigint), num (numeric(5,2))
        2 | 3 => {
            let column = *rng.pick(&["i", "big", "num"]);
            let values: &[&str] = match column {
                "num" => &["4.555", "4.56", "1000", "999.995", "-3", "0", "12.5"],
                _ => &[
                    "3000000000",
                    "-3000000000",
                    "0",
                    "7",
                    "-7",
                    "2147483647",
                    "99999999999",
                    "12.5",
                ],
            };
            let v = *rng.pick(values);
            let w = *rng.pick(values);
            let col = format!("p.{column}::numeric");
            let (op, json_value, sql) = match rng.below(9) {
                0 => ("eq", v.to_string(), format!("{col} = {v}")),
                1 => ("ne", v.to_string(), format!("{col} <> {v}")),
                2 => ("lt", v.to_string(), format!("{col} < {v}")),
                3 => ("lte", v.to_string(), format!("{col} <= {v}")),
                4 => ("gt", v.to_string(), format!("{col} > {v}")),
                5 => ("gte", v.to_string(), format!("{col} >= {v}")),
                6 => (
                    "between",
                    format!("[{v},{w}]"),
                    format!("{col} >= {v} AND {col} <= {w}"),
                ),
                7 => ("in", format!("[{v},{w}]"), format!("{col} IN ({v}, {w})")),
                _ => (
                    "not_in",
                    format!("[{v},{w}]"),
                    format!("{col} NOT IN ({v}, {w})"),
                ),
            };
            Generated {
                json: format!(r#"{{"attribute":"{column}","op":"{op}","value":{json_value}}}"#),
                sql: null_false(sql),
            }
        }
        // booleans
        4 => {
            let (op, sql) = *rng.pick(&[
                ("is_true", "p.b IS TRUE"),
                ("is_false", "p.b IS FALSE"),
                ("is_null", "p.b IS NULL"),
            ]);
            Generated {
                json: format!(r#"{{"attribute":"b","op":"{op}"}}"#),
                sql: sql.to_string(),
            }
        }
        // time: ts (timestamptz), d (date)
        5 => {
            let (column, date) = *rng.pick(&[("ts", false), ("d", true)]);
            let (duration, interval) = *rng.pick(DURATIONS);
            let r = |expr: String| {
                if date {
                    format!("({expr})::date")
                } else {
                    expr
                }
            };
            let reference = r(REFERENCE.to_string());
            let col = format!("p.{column}");
            let (op, value, sql) = match rng.below(7) {
                0 => (
                    "in_last",
                    Some(json_str(duration)),
                    format!(
                        "{col} >= {} AND {col} <= {reference}",
                        r(format!("{REFERENCE} - interval '{interval}'"))
                    ),
                ),
                1 => (
                    "not_in_last",
                    Some(json_str(duration)),
                    format!(
                        "{col} < {} OR {col} > {reference}",
                        r(format!("{REFERENCE} - interval '{interval}'"))
                    ),
                ),
                2 => (
                    "in_next",
                    Some(json_str(duration)),
                    format!(
                        "{col} >= {reference} AND {col} <= {}",
                        r(format!("{REFERENCE} + interval '{interval}'"))
                    ),
                ),
                3 => (
                    "before",
                    Some(json_str("2026-10-15")),
                    format!(
                        "{col} < '2026-10-15'::{}",
                        if date { "date" } else { "timestamptz" }
                    ),
                ),
                4 => (
                    "after",
                    Some(json_str("2026-10-15")),
                    format!(
                        "{col} > '2026-10-15'::{}",
                        if date { "date" } else { "timestamptz" }
                    ),
                ),
                5 => ("is_today", None, format!("{col}::date = {REFERENCE}::date")),
                _ => (
                    "is_anniversary",
                    None,
                    format!("to_char({col}, 'MM-DD') = to_char({REFERENCE}, 'MM-DD')"),
                ),
            };
            let value = value
                .map(|v| format!(r#","value":{v}"#))
                .unwrap_or_default();
            Generated {
                json: format!(r#"{{"attribute":"{column}","op":"{op}"{value}}}"#),
                sql: null_false(sql),
            }
        }
        // related: exists / not exists, with a filter and a window
        6 => {
            let related = *rng.pick(RELATED);
            let exists = rng.chance(70);
            let (filter_json, filter_sql) = related_filter(rng);
            let (within_json, within_sql) = window(rng);
            let json =
                format!(r#"{{"related":"{related}","exists":{exists}{filter_json}{within_json}}}"#);
            let sub = format!("SELECT 1 {}{filter_sql}{within_sql}", rows_of(related));
            let sql = if exists {
                format!("EXISTS ({sub})")
            } else {
                format!("NOT EXISTS ({sub})")
            };
            Generated { json, sql }
        }
        8 => every(rng),
        9 => sequence(rng),
        10 => rank(rng),
        11 => trait_condition(rng),
        // related aggregates
        _ => {
            let related = *rng.pick(RELATED);
            let function = *rng.pick(&["count", "sum", "avg", "min", "max"]);
            let (filter_json, filter_sql) = related_filter(rng);
            let (within_json, within_sql) = window(rng);
            let v = *rng.pick(&["0", "1", "2", "50", "100.5", "-1"]);
            let (op, json_value, cmp) = match rng.below(4) {
                0 => ("gt", v.to_string(), format!("> {v}")),
                1 => ("lte", v.to_string(), format!("<= {v}")),
                2 => ("eq", v.to_string(), format!("= {v}")),
                _ => (
                    "between",
                    "[1, 60]".to_string(),
                    "BETWEEN 1 AND 60".to_string(),
                ),
            };
            let measure = if function == "count" {
                "count(*)".to_string()
            } else {
                format!("{function}(r.amount)")
            };
            let attribute = if function == "count" {
                String::new()
            } else {
                r#","attribute":"amount""#.to_string()
            };
            let json = format!(
                r#"{{"related":"{related}","aggregate":"{function}"{attribute}{filter_json}{within_json},"op":"{op}","value":{json_value}}}"#
            );
            let sql = format!(
                "coalesce((SELECT {measure} {}{filter_sql}{within_sql}) {cmp}, false)",
                rows_of(related)
            );
            Generated { json, sql }
        }
    }
}

fn related_filter(rng: &mut Rng) -> (String, String) {
    match rng.below(3) {
        0 => (String::new(), String::new()),
        1 => {
            let kind = *rng.pick(&["open", "click", "buy"]);
            (
                format!(r#","where":{{"attribute":"kind","op":"eq","value":"{kind}"}}"#),
                format!(" AND coalesce(r.kind = '{kind}', false)"),
            )
        }
        _ => (
            r#","where":{"attribute":"amount","op":"gt","value":20}"#.to_string(),
            " AND coalesce(r.amount > 20, false)".to_string(),
        ),
    }
}

fn window(rng: &mut Rng) -> (String, String) {
    if rng.chance(50) {
        return (String::new(), String::new());
    }
    let (json, from, to) = window_value(rng);
    (
        format!(r#","within":{json}"#),
        format!(" AND r.at >= {from} AND r.at <= {to}"),
    )
}

/// A duration or a window in the past, as JSON, with the oracle's earliest
/// and latest times.
fn window_value(rng: &mut Rng) -> (String, String, String) {
    let later = rng.below(DURATIONS.len());
    if later == 0 || rng.chance(50) {
        let (duration, interval) = DURATIONS[later];
        return (
            json_str(duration),
            format!("({REFERENCE} - interval '{interval}')"),
            REFERENCE.to_string(),
        );
    }
    // DURATIONS grow: an earlier one ends the window.
    let earlier = rng.below(later);
    let ((from, from_interval), (to, to_interval)) = (DURATIONS[later], DURATIONS[earlier]);
    (
        format!(r#"{{"from":{},"to":{}}}"#, json_str(from), json_str(to)),
        format!("({REFERENCE} - interval '{from_interval}')"),
        format!("({REFERENCE} - interval '{to_interval}')"),
    )
}

/// `every` over events: at least one row in scope, none failing.
fn every(rng: &mut Rng) -> Generated {
    let related = *rng.pick(RELATED);
    let (within_json, within_sql) = window(rng);
    let (test_json, test_sql) = match rng.below(3) {
        0 => {
            let kind = *rng.pick(&["open", "click", "buy"]);
            (
                format!(r#"{{"attribute":"kind","op":"ne","value":"{kind}"}}"#),
                format!("r.kind <> '{kind}'"),
            )
        }
        1 => (
            r#"{"attribute":"amount","op":"lte","value":60}"#.to_string(),
            "r.amount <= 60".to_string(),
        ),
        _ => (
            r#"{"any":[{"attribute":"kind","op":"eq","value":"open"},{"attribute":"amount","op":"is_null"}]}"#
                .to_string(),
            "(r.kind = 'open' OR r.amount IS NULL)".to_string(),
        ),
    };
    let scope = format!("{}{within_sql}", rows_of(related));
    Generated {
        json: format!(r#"{{"related":"{related}","every":{test_json}{within_json}}}"#),
        sql: format!(
            "(EXISTS (SELECT 1 {scope}) AND NOT EXISTS (SELECT 1 {scope} AND NOT coalesce({test_sql}, false)))"
        ),
    }
}

/// A sequence of two or three steps over events, written by the oracle as
/// one join of the steps' rows (and a NOT EXISTS for an absent last step).
fn sequence(rng: &mut Rng) -> Generated {
    let related = *rng.pick(RELATED);
    let steps = 2 + rng.below(2);
    let absent = rng.chance(40);
    let window = if rng.chance(50) {
        Some(window_value(rng))
    } else {
        None
    };
    let mut json_steps = Vec::new();
    let mut conditions = vec![owned_rows(related, "s1").1];
    let mut absent_sql = String::new();
    for i in 1..=steps {
        let alias = format!("s{i}");
        let (filter_json, filter_sql) = match rng.below(4) {
            0 | 1 => {
                let kind = *rng.pick(&["open", "click", "buy"]);
                (
                    format!(r#"{{"attribute":"kind","op":"eq","value":"{kind}"}}"#),
                    format!("{alias}.kind = '{kind}'"),
                )
            }
            2 if i > 1 => (
                r#"{"attribute":"amount","op":"gt","value":{"step":1,"attribute":"amount"}}"#
                    .to_string(),
                format!("{alias}.amount > s1.amount"),
            ),
            _ => (
                r#"{"attribute":"amount","op":"gte","value":30}"#.to_string(),
                format!("{alias}.amount >= 30"),
            ),
        };
        let is_absent = absent && i == steps;
        let within = if i > 1 && (is_absent || rng.chance(60)) {
            Some(*rng.pick(DURATIONS))
        } else {
            None
        };
        let mut step_json = format!(r#"{{"where":{filter_json}"#);
        if let Some((duration, _)) = within {
            step_json.push_str(&format!(r#","within":{}"#, json_str(duration)));
        }
        if is_absent {
            step_json.push_str(r#","absent":true"#);
        }
        step_json.push('}');
        json_steps.push(step_json);
        let previous = format!("s{}", i - 1);
        let mut here = vec![format!("coalesce({filter_sql}, false)")];
        if i > 1 {
            here.push(owned_rows(related, &alias).1);
            here.push(format!("{alias}.at > {previous}.at"));
            if let Some((_, interval)) = within {
                here.push(format!(
                    "{alias}.at <= {previous}.at + interval '{interval}'"
                ));
            }
        }
        if is_absent {
            let (_, interval) = within.unwrap();
            absent_sql = format!(
                " AND {previous}.at + interval '{interval}' <= {REFERENCE} \
                 AND NOT EXISTS (SELECT 1 FROM {} WHERE {})",
                owned_rows(related, &alias).0,
                here.join(" AND ")
            );
        } else {
            if let Some((_, from, to)) = &window {
                here.push(format!("{alias}.at >= {from} AND {alias}.at <= {to}"));
            }
            conditions.extend(here);
        }
    }
    let present = if absent { steps - 1 } else { steps };
    let tables: Vec<String> = (1..=present)
        .map(|i| owned_rows(related, &format!("s{i}")).0)
        .collect();
    let within_json = window
        .as_ref()
        .map(|(json, _, _)| format!(r#","within":{json}"#))
        .unwrap_or_default();
    Generated {
        json: format!(
            r#"{{"related":"{related}","sequence":[{}]{within_json}}}"#,
            json_steps.join(",")
        ),
        sql: format!(
            "EXISTS (SELECT 1 FROM {} WHERE {}{absent_sql})",
            tables.join(", "),
            conditions.join(" AND ")
        ),
    }
}

/// A trait's value for a record without related rows: 0 for a count.
fn empty_value(definition: &str) -> &'static str {
    if definition.contains(r#""aggregate":"count""#) {
        "0"
    } else {
        "NULL"
    }
}

/// A condition on one of `TRAITS` (or a rank on a numeric one).
fn trait_condition(rng: &mut Rng) -> Generated {
    let (name, definition, value) = *rng.pick(TRAITS);
    let text = name.ends_with("kind");
    if !text && rng.chance(25) {
        let share = *rng.pick(&["5", "50"]);
        let (op, order) = if rng.chance(50) {
            ("top_percent", "DESC")
        } else {
            ("bottom_percent", "ASC")
        };
        let empty = empty_value(definition);
        return Generated {
            json: format!(r#"{{"trait":"{name}","op":"{op}","value":{share}}}"#),
            sql: format!(
                "p.id IN (SELECT id FROM (SELECT id, v, rank() OVER (ORDER BY v {order}) AS r, \
                 ceil(count(*) OVER () * {share} / 100.0) AS k \
                 FROM (SELECT p.id, coalesce({value}, {empty}) AS v FROM people p) x WHERE v IS NOT NULL) t WHERE r <= k)"
            ),
        };
    }
    let empty = empty_value(definition);
    let v = format!("coalesce({value}, {empty})");
    let (json_value, op, sql) = if text {
        let kind = *rng.pick(&["open", "click", "buy"]);
        match rng.below(3) {
            0 => (format!(r#""{kind}""#), "eq", format!("{v} = '{kind}'")),
            1 => (format!(r#""{kind}""#), "ne", format!("{v} <> '{kind}'")),
            _ => (String::new(), "is_null", format!("{v} IS NULL")),
        }
    } else {
        let n = *rng.pick(&["0", "1", "3", "40.5", "200"]);
        match rng.below(4) {
            0 => (n.to_string(), "gt", format!("{v} > {n}")),
            1 => (n.to_string(), "lte", format!("{v} <= {n}")),
            2 => (n.to_string(), "eq", format!("{v} = {n}")),
            _ => (String::new(), "is_null", format!("{v} IS NULL")),
        }
    };
    let value_json = if json_value.is_empty() {
        String::new()
    } else {
        format!(r#","value":{json_value}"#)
    };
    Generated {
        json: format!(r#"{{"trait":"{name}","op":"{op}"{value_json}}}"#),
        sql: format!("coalesce(({sql}), false)"),
    }
}

/// A rank on a number or a time, with ties: the oracle counts the records
/// strictly better with rank().
fn rank(rng: &mut Rng) -> Generated {
    let column = *rng.pick(&["i", "num", "d", "ts"]);
    let top = rng.chance(50);
    let (op, value, k) = if rng.chance(50) {
        let share = *rng.pick(&["0.5", "10", "33.3", "100"]);
        (
            if top { "top_percent" } else { "bottom_percent" },
            share.to_string(),
            format!("ceil(count(*) OVER () * {share} / 100.0)"),
        )
    } else {
        let count = *rng.pick(&["1", "7", "50", "5000"]);
        (
            if top { "top" } else { "bottom" },
            count.to_string(),
            count.to_string(),
        )
    };
    let order = if top { "DESC" } else { "ASC" };
    Generated {
        json: format!(r#"{{"attribute":"{column}","op":"{op}","value":{value}}}"#),
        sql: format!(
            "p.id IN (SELECT id FROM (SELECT id, rank() OVER (ORDER BY {column} {order}) AS r, {k} AS k \
             FROM people WHERE {column} IS NOT NULL) t WHERE r <= k)"
        ),
    }
}

fn condition(rng: &mut Rng, depth: usize) -> Generated {
    if depth >= 3 || rng.chance(45) {
        return leaf(rng);
    }
    match rng.below(3) {
        0 => {
            let inner = condition(rng, depth + 1);
            Generated {
                json: format!(r#"{{"not":{}}}"#, inner.json),
                sql: format!("NOT ({})", inner.sql),
            }
        }
        kind => {
            let items: Vec<Generated> = (0..1 + rng.below(3))
                .map(|_| condition(rng, depth + 1))
                .collect();
            let (key, joiner) = if kind == 1 {
                ("all", " AND ")
            } else {
                ("any", " OR ")
            };
            Generated {
                json: format!(
                    r#"{{"{key}":[{}]}}"#,
                    items
                        .iter()
                        .map(|g| g.json.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                sql: format!(
                    "({})",
                    items
                        .iter()
                        .map(|g| format!("({})", g.sql))
                        .collect::<Vec<_>>()
                        .join(joiner)
                ),
            }
        }
    }
}

/// Rules combined left to right; the oracle combines them the same way.
pub fn rules(rng: &mut Rng, depth: usize) -> Generated {
    let mut json = Vec::new();
    let mut sql = String::new();
    for i in 0..1 + rng.below(3) {
        let body = if depth < 1 && rng.chance(20) {
            rules(rng, depth + 1)
        } else {
            condition(rng, 0)
        };
        let body_json = if depth < 1 && body.json.starts_with('[') {
            format!(r#""rules":{}"#, body.json)
        } else {
            format!(r#""where":{}"#, body.json)
        };
        if i == 0 {
            json.push(format!("{{{body_json}}}"));
            sql = format!("({})", body.sql);
        } else {
            let combine = *rng.pick(&["union", "intersect", "except"]);
            json.push(format!(r#"{{"combine":"{combine}",{body_json}}}"#));
            sql = match combine {
                "union" => format!("({sql} OR ({}))", body.sql),
                "intersect" => format!("({sql} AND ({}))", body.sql),
                _ => format!("({sql} AND NOT ({}))", body.sql),
            };
        }
    }
    Generated {
        json: format!("[{}]", json.join(",")),
        sql,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::fixture::{column, FixedCatalog};
    use crate::catalog::{ColumnKind, Entity, KeyKind, Related, Table};
    use crate::compile::compile_definition;

    /// `TABLES_SQL`'s tables as the catalog sees them.
    fn people() -> FixedCatalog {
        use ColumnKind::*;
        let table = |name: &str, columns: Vec<Column>| Table {
            dropped: false,
            relation_sql: format!("\"public\".\"{name}\""),
            columns,
        };
        use crate::catalog::Column;
        let person = Entity {
            name: "person".into(),
            table: table(
                "people",
                vec![
                    column("id", "integer", Numeric),
                    column("txt", "text", Text),
                    column("vc", "character varying(5)", Text),
                    column("ch", "character(3)", Text),
                    column("i", "integer", Numeric),
                    column("big", "bigint", Numeric),
                    column("num", "numeric(5,2)", Numeric),
                    column("b", "boolean", Boolean),
                    column("ts", "timestamp with time zone", TimestampTz),
                    column("d", "date", Date),
                ],
            ),
            key_column: "id".into(),
            key_kind: KeyKind::Integer,
            key_replica: None,
            eligible: None,
            traits: TRAITS
                .iter()
                .enumerate()
                .map(|(i, (name, definition, _))| crate::catalog::TraitDef {
                    id: i as i64 + 1,
                    name: name.to_string(),
                    definition: serde_json::from_str(definition).unwrap(),
                })
                .collect(),
            related: vec![
                Related {
                    name: "events".into(),
                    table: table(
                        "events",
                        vec![
                            column("person_id", "integer", Numeric),
                            column("kind", "text", Text),
                            column("amount", "numeric(8,2)", Numeric),
                            column("at", "timestamp with time zone", TimestampTz),
                        ],
                    ),
                    foreign_key: "person_id".into(),
                    time_column: Some("at".into()),
                    via: None,
                    primary_key: None,
                },
                Related {
                    name: "devices".into(),
                    table: table(
                        "devices",
                        vec![
                            column("id", "integer", Numeric),
                            column("person_id", "integer", Numeric),
                        ],
                    ),
                    foreign_key: "person_id".into(),
                    time_column: None,
                    via: None,
                    primary_key: Some("id".into()),
                },
                Related {
                    name: "pings".into(),
                    table: table(
                        "pings",
                        vec![
                            column("device_id", "integer", Numeric),
                            column("kind", "text", Text),
                            column("amount", "numeric(8,2)", Numeric),
                            column("at", "timestamp with time zone", TimestampTz),
                        ],
                    ),
                    foreign_key: "device_id".into(),
                    time_column: Some("at".into()),
                    via: Some("devices".into()),
                    primary_key: None,
                },
            ],
        };
        FixedCatalog {
            entities: vec![person],
            segments: vec![],
            priority_lists: vec![],
        }
    }

    #[test]
    fn every_generated_definition_parses_and_compiles() {
        let catalog = people();
        let mut rng = Rng(0x5EED_2026);
        for _ in 0..2000 {
            let generated = rules(&mut rng, 0);
            let text = format!(r#"{{"entity":"person","rules":{}}}"#, generated.json);
            let value: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
            let (definition, plan, _) =
                compile_definition(&catalog, &value, None, REFERENCE, usize::MAX)
                    .unwrap_or_else(|e| panic!("refused ({e}): {text}"));
            assert!(!definition.rules.is_empty());
            assert!(!plan.leaves.is_empty(), "no leaf for {text}");
            assert!(!generated.sql.is_empty());
        }
    }

    #[test]
    fn a_seed_replays_the_same_definitions() {
        let (mut a, mut b) = (Rng(42), Rng(42));
        for _ in 0..50 {
            let (x, y) = (rules(&mut a, 0), rules(&mut b, 0));
            assert_eq!((x.json, x.sql), (y.json, y.sql));
        }
    }
}
