//! Layer 3: living with a changing database (README, Entities: schema changes). Schema
//! changes, dropped tables, broken exports, odd values, settings and time
//! zones, on real clusters.

mod harness;

use std::time::{Duration, Instant};

use harness::{sqlstate, Cluster, ANCHOR};

fn expect_code(client: &mut postgres::Client, sql: &str, code: &str) -> String {
    let error = client.batch_execute(sql).expect_err(sql);
    let (got, message) = sqlstate(&error);
    assert_eq!(got, code, "{sql}: {message}");
    message
}

fn count(client: &mut postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).unwrap().get(0)
}

/// ADD, DROP, RENAME COLUMN and ALTER COLUMN TYPE work on registered
/// tables; the members view follows in the same transaction and keeps its
/// grants; a segment reading a dropped column fails alone, naming it.
#[test]
fn registered_tables_stay_alterable() {
    let cluster = Cluster::start("ddl", &[]);
    let mut client = cluster.sample("2000");
    client
        .batch_execute(
            r#"CREATE ROLE bi LOGIN; GRANT SELECT ON segments.customer_members TO bi;
               SELECT segments.quick_segment('DE', 'customer', 'country', 'eq', '"DE"');
               SELECT segments.quick_segment('Named', 'customer', 'last_name', 'is_not_null');
               SELECT segments.create_export('de', ARRAY[1::bigint], 'public.de_out');
               SELECT * FROM segments.refresh();"#,
        )
        .unwrap();
    let de = count(
        &mut client,
        "SELECT count(*) FROM customers WHERE country = 'DE'",
    );
    client
        .batch_execute(
            "BEGIN;
             ALTER TABLE customers DROP COLUMN last_name;
             ALTER TABLE customers ALTER COLUMN age TYPE bigint;
             ALTER TABLE customers ADD COLUMN loyalty text DEFAULT 'none';
             ALTER TABLE customers RENAME COLUMN city TO town;
             COMMIT;",
        )
        .unwrap();
    let columns: Vec<String> = client
        .query("SELECT attname::text FROM pg_attribute WHERE attrelid = 'segments.customer_members'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        columns.contains(&"loyalty".to_string()) && columns.contains(&"town".to_string()),
        "{columns:?}"
    );
    assert!(
        !columns.contains(&"last_name".to_string()) && !columns.contains(&"city".to_string()),
        "{columns:?}"
    );
    let age_type: String = client
        .query_one("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'segments.customer_members'::regclass AND attname = 'age'", &[])
        .unwrap()
        .get(0);
    assert_eq!(age_type, "bigint");
    // Grants stay.
    let bi: bool = client
        .query_one(
            "SELECT has_table_privilege('bi', 'segments.customer_members', 'SELECT')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(bi, "the members view lost its grant");
    // The segment reading the dropped column fails alone, naming it, and keeps its members.
    let rows = client
        .query(
            "SELECT segment_id, status, coalesce(error, '') FROM segments.refresh() ORDER BY 1",
            &[],
        )
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(1), "succeeded");
    assert_eq!(rows[1].get::<_, String>(1), "failed");
    assert!(
        rows[1].get::<_, String>(2).contains("last_name"),
        "{}",
        rows[1].get::<_, String>(2)
    );
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM segments.customer_members WHERE segment_id = 1"
        ),
        de
    );
    // The export follows by column name.
    let export: (String, i64) = {
        let r = client
            .query_one(
                "SELECT status, (SELECT count(*) FROM public.de_out) FROM segments.export",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(export, ("succeeded".to_string(), de));
    // A failed ALTER leaves the view as it was.
    client
        .batch_execute("ALTER TABLE customers ALTER COLUMN email TYPE integer USING email::integer")
        .unwrap_err();
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM segments.customer_members WHERE segment_id = 1"
        ),
        de
    );
    // DROP COLUMN ... CASCADE does not take the view along for good.
    client
        .batch_execute("ALTER TABLE customers DROP COLUMN gender CASCADE")
        .unwrap();
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM segments.customer_members WHERE segment_id = 1"
        ),
        de
    );
    client
        .batch_execute("SELECT segments.create_export('de2', ARRAY[1::bigint], 'public.de_out2')")
        .unwrap();
}

/// Dropping a related table, or the entity table with CASCADE, fails only
/// the segments that read it; everything else carries on, the worker too.
#[test]
fn dropped_tables_fail_only_their_segments() {
    let cluster = Cluster::start(
        "dropped",
        &["shared_preload_libraries=segments", "segments.naptime=1"],
    );
    let mut client = cluster.sample("1000");
    client
        .batch_execute(
            r#"CREATE TABLE accounts (code text PRIMARY KEY, tier text);
               INSERT INTO accounts SELECT 'A' || i, CASE WHEN i % 2 = 0 THEN 'gold' END FROM generate_series(1, 100) i;
               SELECT segments.register_entity('account', 'accounts', 'code');
               SELECT segments.quick_segment('DE', 'customer', 'country', 'eq', '"DE"');
               SELECT segments.create_segment('Mailed', '{"entity":"customer","rules":[{"where":{"related":"email_events","within":"30 days"}}]}');
               SELECT segments.quick_segment('Gold', 'account', 'tier', 'eq', '"gold"');
               SELECT segments.create_export('gold', ARRAY[3::bigint], 'public.gold_out');
               SELECT * FROM segments.refresh();"#,
        )
        .unwrap();
    client.batch_execute("DROP TABLE email_events").unwrap();
    let rows = client
        .query(
            "SELECT segment_id, status, coalesce(error, '') FROM segments.refresh() ORDER BY 1",
            &[],
        )
        .unwrap();
    let statuses: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
    assert_eq!(statuses, vec!["succeeded", "failed", "succeeded"]);
    let error: String = rows[1].get(2);
    assert!(
        error.contains("email_events") && error.contains("no longer exists"),
        "{error}"
    );
    let status: String = client
        .query_one("SELECT status FROM segments.segment WHERE id = 2", &[])
        .unwrap()
        .get(0);
    assert_eq!(status, "failed");
    client.batch_execute(r#"SELECT * FROM segments.estimate('{"entity":"customer","rules":[{"where":{"attribute":"age","op":"gt","value":30}}]}');
                           SELECT segments.quick_segment('Old', 'customer', 'age', 'gt', '60');
                           SELECT * FROM segments.run_due();"#).unwrap();
    expect_code(
        &mut client,
        "SELECT segments.unregister_related('customer', 'email_events')",
        "2BP01",
    );
    client.batch_execute("SELECT segments.delete(ARRAY[2::bigint]); SELECT segments.unregister_related('customer', 'email_events')").unwrap();

    // The entity table, with CASCADE: its segments fail; the others and the worker go on.
    client.batch_execute("DROP TABLE accounts CASCADE").unwrap();
    let rows = client
        .query(
            "SELECT segment_id, status, coalesce(error, '') FROM segments.refresh() ORDER BY 1",
            &[],
        )
        .unwrap();
    let failed: Vec<i64> = rows
        .iter()
        .filter(|r| r.get::<_, String>(1) == "failed")
        .map(|r| r.get(0))
        .collect();
    assert_eq!(failed, vec![3]);
    assert!(rows
        .iter()
        .any(|r| r.get::<_, String>(2).contains("account")));
    let export: (String, String) = {
        let r = client
            .query_one(
                "SELECT status, coalesce(last_error, '') FROM segments.export WHERE name = 'gold'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        export.0, "succeeded",
        "the export was not touched by a failed refresh"
    );
    // The worker keeps refreshing a new segment of the other entity.
    let id: i64 = client
        .query_one(
            r#"SELECT segments.quick_segment('Young', 'customer', 'age', 'lt', '30')"#,
            &[],
        )
        .unwrap()
        .get(0);
    let start = Instant::now();
    while count(
        &mut client,
        &format!("SELECT count(*) FROM segments.segment WHERE id = {id} AND status = 'succeeded'"),
    ) == 0
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the worker stopped"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    client.batch_execute("SELECT segments.drop_export('gold'); SELECT segments.delete(ARRAY[3::bigint]); SELECT segments.unregister_entity('account')").unwrap();
    assert!(
        !cluster.server_log().contains("SpiTupleTable"),
        "an SPI error reached the log"
    );
}

/// A failing export is recorded on the export and never undoes a refresh;
/// two refreshes feeding one export never duplicate its rows.
#[test]
fn exports_fail_alone_and_never_duplicate() {
    let cluster = Cluster::start("exports2", &[]);
    let mut client = cluster.sample("3000");
    client
        .batch_execute(
            r#"SELECT segments.quick_segment('DE', 'customer', 'country', 'eq', '"DE"');
               SELECT segments.quick_segment('FR', 'customer', 'country', 'eq', '"FR"');
               SELECT segments.create_export('both', ARRAY[1, 2]::bigint[], 'public.both_out');
               SELECT segments.create_export('broken', ARRAY[1]::bigint[], 'public.broken_out');
               DROP TABLE public.broken_out;"#,
        )
        .unwrap();
    let rows = client
        .query("SELECT status FROM segments.refresh()", &[])
        .unwrap();
    assert!(rows.iter().all(|r| r.get::<_, String>(0) == "succeeded"));
    let (status, error): (String, String) = {
        let r = client
            .query_one(
                "SELECT status, last_error FROM segments.export WHERE name = 'broken'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(status, "failed");
    assert!(error.contains("no longer exists"), "{error}");
    client
        .batch_execute("SELECT segments.drop_export('broken')")
        .unwrap();
    // Two sessions refreshing the two segments at once.
    let url = cluster.url("postgres");
    let threads: Vec<_> = (1..=2)
        .map(|id: i64| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                for _ in 0..20 {
                    c.batch_execute(&format!(
                        "SELECT * FROM segments.refresh(ARRAY[{id}::bigint])"
                    ))
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (rows, distinct): (i64, i64) = {
        let r = client
            .query_one(
                "SELECT count(*), count(DISTINCT (segment_id, id)) FROM public.both_out",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(rows, distinct, "duplicate export rows");
    assert_eq!(
        rows,
        count(
            &mut client,
            "SELECT count(*) FROM customers WHERE country IN ('DE', 'FR')"
        )
    );
}

/// Values compare by value: never cut or rounded to the column's size,
/// out-of-range literals compare in a wider type, and what cannot be
/// evaluated is refused when saved, naming its path.
#[test]
fn values_compare_by_value() {
    let cluster = Cluster::start("values", &[]);
    let mut client = cluster.connect("postgres");
    client
        .batch_execute(
            "CREATE EXTENSION segments;
             CREATE TABLE things (id int PRIMARY KEY, short varchar(5), code char(3), price numeric(5,2), n int);
             INSERT INTO things VALUES (1, 'abcde', 'abc', 4.56, 1), (2, 'abcd', 'ab', 9.99, 2000000000), (3, NULL, NULL, NULL, NULL);
             SELECT segments.register_entity('thing', 'things', 'id');",
        )
        .unwrap();
    let cases = [
        (r#"{"attribute":"short","op":"eq","value":"abcdefgh"}"#, 0),
        (r#"{"attribute":"code","op":"eq","value":"abcz"}"#, 0),
        (r#"{"attribute":"code","op":"eq","value":"abc"}"#, 1),
        (r#"{"attribute":"price","op":"eq","value":4.555}"#, 0),
        (r#"{"attribute":"price","op":"gt","value":4.555}"#, 2),
        (r#"{"attribute":"price","op":"lt","value":1000}"#, 2),
        (r#"{"attribute":"n","op":"lt","value":3000000000}"#, 2),
        (r#"{"attribute":"n","op":"gt","value":-3000000000}"#, 2),
        (r#"{"attribute":"n","op":"in","value":[1, 99999999999]}"#, 1),
    ];
    for (i, (condition, want)) in cases.iter().enumerate() {
        let definition = format!(r#"{{"entity":"thing","rules":[{{"where":{condition}}}]}}"#);
        let id: i64 = client
            .query_one(
                "SELECT segments.create_segment($1, $2::text::jsonb)",
                &[&format!("c{i}"), &definition],
            )
            .unwrap()
            .get(0);
        let row = client
            .query_one(
                "SELECT status, member_count, error FROM segments.refresh(ARRAY[$1::bigint])",
                &[&id],
            )
            .unwrap();
        assert_eq!(
            row.get::<_, String>(0),
            "succeeded",
            "{condition}: {:?}",
            row.get::<_, Option<String>>(2)
        );
        assert_eq!(row.get::<_, Option<i64>>(1), Some(*want), "{condition}");
    }
    let message = expect_code(
        &mut client,
        r#"SELECT segments.create_segment('far', '{"entity":"thing","rules":[{"where":{"attribute":"n","op":"is_null"}},{"combine":"union","where":{"related":"x","within":"100000 years"}}]}')"#,
        "22023",
    );
    assert!(message.starts_with("rules[1].where.within"), "{message}");
    let deep = format!(
        r#"{{"entity":"thing","rules":[{{"where":{}{{"attribute":"n","op":"is_null"}}{}}}]}}"#,
        r#"{"not":"#.repeat(150),
        "}".repeat(150)
    );
    for sql in [
        "SELECT segments.create_segment('deep', $1::text::jsonb)",
        "SELECT * FROM segments.estimate($1::text::jsonb)",
    ] {
        let error = client.query(sql, &[&deep]).unwrap_err();
        let (code, message) = sqlstate(&error);
        assert_eq!(code, "22023", "{message}");
        assert!(
            message.starts_with("rules[0].where.not.not")
                && message.contains("deeper than 100 levels"),
            "{message}"
        );
    }
}

/// Settings are validated when set; the segments. prefix is reserved.
#[test]
fn settings_are_validated_and_the_prefix_reserved() {
    let cluster = Cluster::start("settings", &["shared_preload_libraries=segments"]);
    let mut client = cluster.connect("postgres");
    client.batch_execute("CREATE EXTENSION segments").unwrap();
    for (sql, code, name) in [
        (
            "SET segments.unused_after = 'forever'",
            "22023",
            "segments.unused_after",
        ),
        (
            "SET segments.history_retention = '3 fortnights'",
            "22023",
            "segments.history_retention",
        ),
        (
            "SET segments.timezone = 'Mars/Olympus'",
            "22023",
            "segments.timezone",
        ),
        (
            "ALTER SYSTEM SET segments.system_schedule = 'every day'",
            "22023",
            "segments.system_schedule",
        ),
        (
            "ALTER SYSTEM SET segments.cleanup_schedule = '61 * * * *'",
            "22023",
            "segments.cleanup_schedule",
        ),
        (
            "SET segments.max_active_segments = 0",
            "22023",
            "segments.max_active_segments",
        ),
        ("SET segments.naptim = 5", "42602", "segments.naptim"),
    ] {
        let message = expect_code(&mut client, sql, code);
        assert!(message.contains(name), "{sql}: {message}");
    }
    client
        .batch_execute(
            "SET segments.timezone = 'Europe/Berlin'; SET segments.unused_after = '90 days'",
        )
        .unwrap();
    // Nothing bad reached the worker's configuration.
    client.batch_execute("SELECT pg_reload_conf()").unwrap();
    let schedule: String = client
        .query_one("SHOW segments.system_schedule", &[])
        .unwrap()
        .get(0);
    assert_eq!(schedule, "0 2 * * *");
}

/// Calendar days follow segments.timezone (default: the server's
/// TimeZone), never the zone of the session that refreshes.
#[test]
fn calendar_days_follow_segments_timezone() {
    let cluster = Cluster::start("timezone", &["timezone=UTC"]);
    let mut client = cluster.sample("5000");
    let definition = r#"{"entity":"customer","rules":[{"where":{"attribute":"last_login_at","op":"is_anniversary"}}]}"#;
    let today = r#"{"entity":"customer","rules":[{"where":{"attribute":"last_login_at","op":"is_today"}}]}"#;
    client
        .execute(
            "SELECT segments.create_segment('Anniversary', $1::text::jsonb)",
            &[&definition],
        )
        .unwrap();
    client
        .execute(
            "SELECT segments.create_segment('Today', $1::text::jsonb)",
            &[&today],
        )
        .unwrap();
    let mut counts = Vec::new();
    for zone in ["UTC", "Pacific/Kiritimati", "America/Los_Angeles"] {
        client
            .batch_execute(&format!(
                "SET TimeZone = '{zone}'; SET segments.reference_time = '{ANCHOR} 23:30:00+00'"
            ))
            .unwrap();
        let rows: Vec<i64> = client
            .query(
                "SELECT member_count FROM segments.refresh() ORDER BY segment_id",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        counts.push(rows);
    }
    assert_eq!(
        counts[0], counts[1],
        "the refreshing session's time zone changed the result"
    );
    assert_eq!(counts[0], counts[2]);
    let utc = |client: &mut postgres::Client, zone: &str, what: &str| -> i64 {
        client
            .batch_execute(&format!("SET TimeZone = '{zone}'"))
            .unwrap();
        count(
            client,
            &format!("SELECT count(*) FROM customers WHERE {what}"),
        )
    };
    let anniversary = format!(
        "to_char(last_login_at, 'MM-DD') = to_char('{ANCHOR} 23:30:00+00'::timestamptz, 'MM-DD')"
    );
    assert_eq!(
        counts[0][0],
        utc(&mut client, "UTC", &anniversary),
        "differs from the hand-written query in the server's zone"
    );
    // segments.timezone moves the days.
    client
        .batch_execute("SET segments.timezone = 'Pacific/Kiritimati'")
        .unwrap();
    let rows: Vec<i64> = client
        .query(
            "SELECT member_count FROM segments.refresh() ORDER BY segment_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        rows[0],
        utc(&mut client, "Pacific/Kiritimati", &anniversary)
    );
    let is_today = format!("last_login_at::date = '{ANCHOR} 23:30:00+00'::timestamptz::date");
    assert_eq!(rows[1], utc(&mut client, "Pacific/Kiritimati", &is_today));
}

/// A resumed (or new) static segment is computed once by the scheduler.
#[test]
fn static_segments_are_computed_when_resumed() {
    let cluster = Cluster::start("static", &[]);
    let mut client = cluster.sample("500");
    let id: i64 = client
        .query_one(r#"SELECT segments.create_segment('Fixed', '{"entity":"customer","rules":[{"where":{"attribute":"age","op":"gt","value":40}}]}', type => 'static')"#, &[])
        .unwrap()
        .get(0);
    let next: Option<String> = client
        .query_one(
            "SELECT next_refresh_at::text FROM segments.segment_list WHERE id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert!(next.is_some(), "a new static segment is due once");
    client
        .batch_execute("SELECT * FROM segments.run_due()")
        .unwrap();
    let refreshed: i64 = count(
        &mut client,
        &format!("SELECT count(*) FROM segments.refresh_run WHERE segment_id = {id}"),
    );
    assert_eq!(refreshed, 1);
    client
        .batch_execute("SELECT * FROM segments.run_due()")
        .unwrap();
    assert_eq!(
        count(
            &mut client,
            &format!("SELECT count(*) FROM segments.refresh_run WHERE segment_id = {id}")
        ),
        1,
        "static: once only"
    );
    client.batch_execute(&format!("SELECT segments.deactivate(ARRAY[{id}::bigint]); SELECT segments.activate(ARRAY[{id}::bigint]);")).unwrap();
    let next: Option<String> = client
        .query_one(
            "SELECT next_refresh_at::text FROM segments.segment_list WHERE id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert!(
        next.is_some(),
        "a resumed static segment shows when it will be computed"
    );
    client
        .batch_execute("SELECT * FROM segments.run_due()")
        .unwrap();
    assert_eq!(
        count(
            &mut client,
            &format!("SELECT count(*) FROM segments.refresh_run WHERE segment_id = {id}")
        ),
        2
    );
}

/// A segment that keeps failing counts its failures and waits longer
/// between attempts.
#[test]
fn failing_segments_back_off() {
    let cluster = Cluster::start(
        "backoff",
        &["shared_preload_libraries=segments", "segments.naptime=1"],
    );
    let mut client = cluster.sample("500");
    client
        .batch_execute(
            r#"SELECT segments.create_segment('Breaks', '{"entity":"customer","rules":[{"where":{"attribute":"age","op":"gt","value":40}}]}', schedule => '* * * * *');
               ALTER TABLE customers DROP COLUMN age;"#,
        )
        .unwrap();
    // The worker tries it at once (it is new); each failure is counted
    // (the doubling wait itself is a unit test of retry_wait).
    let start = Instant::now();
    while count(
        &mut client,
        "SELECT count(*) FROM segments.refresh_run WHERE status = 'failed'",
    ) == 0
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the worker never tried"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    client
        .batch_execute("SELECT * FROM segments.refresh()")
        .unwrap();
    let failures: i32 = client
        .query_one(
            "SELECT consecutive_failures FROM segments.segment_list WHERE name = 'Breaks'",
            &[],
        )
        .unwrap()
        .get(0);
    let attempts = count(
        &mut client,
        "SELECT count(*) FROM segments.refresh_run WHERE status = 'failed'",
    );
    assert_eq!(failures as i64, attempts, "failures in a row are counted");
    assert!(failures >= 2);
    client
        .batch_execute(
            "ALTER TABLE customers ADD COLUMN age int; SELECT * FROM segments.refresh();",
        )
        .unwrap();
    let failures: i32 = client
        .query_one(
            "SELECT consecutive_failures FROM segments.segment_list WHERE name = 'Breaks'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(failures, 0, "a success resets the count");
}
