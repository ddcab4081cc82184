//! Layer 3: the background worker and `run_due()`: schedules, failures,
//! termination, fast shutdown, and the unused-segment cleanup.

mod harness;

use harness::{sqlstate, wait_for, Cluster};

fn worker_pid(client: &mut postgres::Client) -> Option<i32> {
    client
        .query_opt(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'segments scheduler'",
            &[],
        )
        .unwrap()
        .map(|r| r.get(0))
}

fn names(client: &mut postgres::Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The worker refreshes a due segment within naptime plus a margin, comes
/// back after pg_terminate_backend, and logs what it did.
#[test]
fn worker_refreshes_due_segments_and_comes_back_after_termination() {
    let cluster = Cluster::start(
        "worker",
        &["shared_preload_libraries=segments", "segments.naptime=1"],
    );
    let mut client = cluster.sample("2000");
    let status_of = |client: &mut postgres::Client, id: i64| -> (String, Option<String>) {
        let row = client
            .query_one(
                "SELECT s.status, (SELECT r.trigger FROM segments.refresh_run r WHERE r.segment_id = s.id ORDER BY r.id DESC LIMIT 1)
                   FROM segments.segment s WHERE s.id = $1",
                &[&id],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    let id: i64 = client
        .query_one(
            "SELECT segments.quick_segment('Germans', 'customer', 'country', 'eq', '\"DE\"')",
            &[],
        )
        .unwrap()
        .get(0);
    let (status, trigger) = wait_for("the worker to refresh a new segment", 10, || {
        let s = status_of(&mut client, id);
        (s.0 == "succeeded").then_some(s)
    });
    assert_eq!(
        (status.as_str(), trigger.as_deref()),
        ("succeeded", Some("schedule"))
    );
    let members: i64 = client
        .query_one(
            "SELECT member_count FROM segments.segment WHERE id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    let expected: i64 = client
        .query_one("SELECT count(*) FROM customers WHERE country = 'DE'", &[])
        .unwrap()
        .get(0);
    assert_eq!(members, expected);

    let first = wait_for("the worker", 10, || worker_pid(&mut client));
    client
        .execute("SELECT pg_terminate_backend($1)", &[&first])
        .unwrap();
    let second = wait_for("the worker to come back", 20, || {
        worker_pid(&mut client).filter(|pid| *pid != first)
    });
    assert_ne!(first, second);
    let id2: i64 = client
        .query_one(
            "SELECT segments.quick_segment('French', 'customer', 'country', 'eq', '\"FR\"')",
            &[],
        )
        .unwrap()
        .get(0);
    wait_for("the new worker to refresh", 10, || {
        (status_of(&mut client, id2).0 == "succeeded").then_some(())
    });
    let log = cluster.server_log();
    assert!(
        log.contains("segments scheduler started in database \"postgres\""),
        "{log}"
    );
    assert!(
        log.contains("segments: schedule refresh of 1 segment(s): 0 failed"),
        "{log}"
    );
}

/// One pass of run_due(): the system refresh when it is due, own cron
/// schedules when due, skipped runs for inactive segments, nothing for
/// manual ones.
#[test]
fn run_due_follows_schedules() {
    let cluster = Cluster::start("due", &[]);
    let mut client = cluster.sample("1000");
    client
        .batch_execute(
            r#"SELECT segments.quick_segment('System', 'customer', 'country', 'eq', '"DE"');
               SELECT segments.quick_segment('Idle system', 'customer', 'country', 'eq', '"FR"');
               SELECT segments.create_segment('Early', '{"entity":"customer","rules":[{"where":{"attribute":"age","op":"lt","value":30}}]}', schedule => '0 3 * * *');
               SELECT segments.create_segment('By hand', '{"entity":"customer","rules":[{"where":{"attribute":"age","op":"gt","value":60}}]}', type => 'static');
               SELECT * FROM segments.refresh();
               SELECT segments.deactivate(ARRAY[2::bigint]);
               -- Nothing is due right after a refresh.
               "#,
        )
        .unwrap();
    let runs: i64 = client
        .query_one("SELECT count(*) FROM segments.run_due()", &[])
        .unwrap()
        .get(0);
    assert_eq!(runs, 0, "nothing is due right after a refresh");
    // Two days pass.
    client
        .batch_execute(
            "SET session_replication_role = replica; -- maintained columns: triggers off, as a superuser
             UPDATE segments.scheduler_state SET last_run = last_run - interval '2 days';
             UPDATE segments.refresh_run SET started_at = started_at - interval '2 days', finished_at = finished_at - interval '2 days';
             UPDATE segments.segment SET last_refreshed_at = last_refreshed_at - interval '2 days',
                                         created_at = created_at - interval '2 days';
             RESET session_replication_role;",
        )
        .unwrap();
    let rows = client
        .query("SELECT s.name, r.trigger, r.status FROM segments.run_due() r JOIN segments.segment s ON s.id = r.segment_id ORDER BY s.name", &[])
        .unwrap();
    let got: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let want = vec![
        (
            "Early".to_string(),
            "schedule".to_string(),
            "succeeded".to_string(),
        ),
        (
            "Idle system".to_string(),
            "system".to_string(),
            "skipped".to_string(),
        ),
        (
            "System".to_string(),
            "system".to_string(),
            "succeeded".to_string(),
        ),
    ];
    assert_eq!(got, want);
    let again: i64 = client
        .query_one("SELECT count(*) FROM segments.run_due()", &[])
        .unwrap()
        .get(0);
    assert_eq!(again, 0, "a pass leaves nothing due behind it");
    // History older than segments.history_retention goes with the next pass.
    client
        .batch_execute(
            "SET segments.history_retention = '1 day'; SELECT * FROM segments.run_due();",
        )
        .unwrap();
    let old: i64 = client
        .query_one(
            "SELECT count(*) FROM segments.refresh_run WHERE started_at < now() - interval '1 day'",
            &[],
        )
        .unwrap()
        .get(0);
    let recent: i64 = client
        .query_one("SELECT count(*) FROM segments.refresh_run", &[])
        .unwrap()
        .get(0);
    assert_eq!((old, recent), (0, 3));
}

/// A segment whose SQL starts failing is marked failed with its error and
/// keeps its membership; the others refresh.
#[test]
fn a_failing_segment_does_not_stop_the_others() {
    let cluster = Cluster::start("failing", &[]);
    let mut client = cluster.sample("1000");
    client
        .batch_execute(
            r#"ALTER TABLE customers ADD COLUMN score integer DEFAULT 5;
               SELECT segments.quick_segment('Scored', 'customer', 'score', 'gt', '1');
               SELECT segments.quick_segment('Germans', 'customer', 'country', 'eq', '"DE"');
               SELECT segments.create_segment('Scored Germans', '{"entity":"customer","rules":[
                  {"where":{"segment":"Germans"}},{"combine":"intersect","where":{"attribute":"age","op":"gt","value":40}}]}');
               SELECT * FROM segments.refresh();
               ALTER TABLE customers DROP COLUMN score CASCADE;"#,
        )
        .unwrap();
    let rows = client
        .query(
            "SELECT segment_id, status, error FROM segments.refresh() ORDER BY segment_id",
            &[],
        )
        .unwrap();
    let statuses: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        statuses,
        vec![
            (1, "failed".into()),
            (2, "succeeded".into()),
            (3, "succeeded".into())
        ]
    );
    let error: String = rows[0].get(2);
    assert!(error.contains("score"), "{error}");
    let codes: Vec<Option<String>> = client
        .query("SELECT DISTINCT ON (segment_id) error_code FROM segments.refresh_run ORDER BY segment_id, id DESC", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        codes,
        vec![Some("42703".to_string()), None, None],
        "a compile failure keeps its SQLSTATE, successes have none"
    );
    let row = client
        .query_one("SELECT status, last_error, member_count, (SELECT member_count FROM segments.membership WHERE segment_id = 1) FROM segments.segment WHERE id = 1", &[])
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "failed");
    assert!(row.get::<_, String>(1).contains("score"));
    assert_eq!(row.get::<_, i64>(2), 1000, "the old membership stays");
    assert_eq!(row.get::<_, i64>(3), 1000);
}

/// A fast shutdown while the worker refreshes loses nothing: after the
/// restart every segment is in a consistent state.
#[test]
fn fast_shutdown_mid_refresh_loses_nothing() {
    let cluster = Cluster::start(
        "shutdown",
        &["shared_preload_libraries=segments", "segments.naptime=1"],
    );
    let mut client = cluster.sample("100000");
    for i in 0..8 {
        client
            .execute(
                "SELECT segments.create_segment($1, $2::text::jsonb)",
                &[
                    &format!("Heavy {i}"),
                    &format!(r#"{{"entity":"customer","rules":[{{"where":{{"related":"orders","aggregate":"sum","attribute":"amount","op":"gt","value":{}}}}}]}}"#, 100 * i),
                ],
            )
            .unwrap();
    }
    // Wait until the worker is busy refreshing, then stop the server.
    wait_for("the worker to start refreshing", 20, || {
        client
            .query_opt("SELECT 1 FROM pg_stat_activity WHERE backend_type = 'segments scheduler' AND state = 'active'", &[])
            .unwrap()
    });
    drop(client);
    cluster.restart();
    let mut client = cluster.connect("postgres");
    let inconsistent: i64 = client
        .query_one(
            "SELECT count(*) FROM segments.segment s LEFT JOIN segments.membership m ON m.segment_id = s.id
              WHERE (m.segment_id IS NULL) <> (s.status = 'not_refreshed')
                 OR m.member_count IS DISTINCT FROM (CASE WHEN m.segment_id IS NULL THEN NULL ELSE s.member_count END)
                 OR s.member_count IS DISTINCT FROM (SELECT r.member_count FROM segments.refresh_run r
                                                     WHERE r.segment_id = s.id AND r.status = 'succeeded' ORDER BY r.id DESC LIMIT 1)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(inconsistent, 0);
    // And the worker finishes the job after the restart.
    wait_for(
        "every segment to be refreshed after the restart",
        120,
        || {
            let left: i64 = client
                .query_one(
                    "SELECT count(*) FROM segments.segment WHERE status <> 'succeeded'",
                    &[],
                )
                .unwrap()
                .get(0);
            (left == 0).then_some(())
        },
    );
}

/// The unused-segment cleanup: the 45-day boundary on created and updated
/// time, live against analytics usage, segment references, never_expire,
/// dry runs, and reactivation.
#[test]
fn unused_segments_are_deactivated_and_tagged() {
    let cluster = Cluster::start("cleanup", &[]);
    let mut client = cluster.sample("500");
    let make = |client: &mut postgres::Client, name: &str, definition: &str| -> i64 {
        client
            .query_one(
                "SELECT segments.create_segment($1, $2::text::jsonb)",
                &[&name, &definition],
            )
            .unwrap()
            .get(0)
    };
    let simple =
        r#"{"entity":"customer","rules":[{"where":{"attribute":"age","op":"gt","value":30}}]}"#;
    for name in [
        "old",
        "young",
        "recently edited",
        "in a journey",
        "only analytics",
        "never expires",
        "referenced",
    ] {
        make(&mut client, name, simple);
    }
    make(
        &mut client,
        "reader",
        r#"{"entity":"customer","rules":[{"where":{"segment":"referenced"}}]}"#,
    );
    client
        .batch_execute(
            "-- Time passes: maintained columns are moved as a superuser with triggers off.
             SET session_replication_role = replica;
             UPDATE segments.segment SET created_at = now() - interval '60 days', updated_at = now() - interval '60 days';
             UPDATE segments.segment SET created_at = now() - interval '46 days', updated_at = now() - interval '46 days' WHERE name = 'old';
             UPDATE segments.segment SET created_at = now() - interval '44 days', updated_at = now() - interval '44 days' WHERE name = 'young';
             UPDATE segments.segment SET updated_at = now() - interval '10 days' WHERE name = 'recently edited';
             RESET session_replication_role;
             SELECT segments.add_usage(id, 'journey', 'Welcome journey') FROM segments.segment WHERE name = 'in a journey';
             SELECT segments.add_usage(id, 'analytics', 'Funnel report', live => false) FROM segments.segment WHERE name = 'only analytics';
             SELECT segments.disable_auto_cleanup(array_agg(id)) FROM segments.segment WHERE name = 'never expires';",
        )
        .unwrap();
    let usage: Vec<String> = names(
        &mut client,
        "SELECT format('%s %s %s', kind, consumer, live) FROM segments.usage ORDER BY kind",
    );
    assert_eq!(
        usage,
        vec![
            "analytics Funnel report f",
            "journey Welcome journey t",
            "segment reader t"
        ]
    );

    let expected = vec![
        "old".to_string(),
        "only analytics".to_string(),
        "reader".to_string(),
    ];
    let state_before = names(&mut client, "SELECT string_agg(name || state || array_to_string(tags, ','), ';' ORDER BY id) FROM segments.segment");
    let dry = names(
        &mut client,
        "SELECT name FROM segments.deactivate_unused(dry_run => true) ORDER BY name",
    );
    assert_eq!(dry, expected);
    let state_after = names(&mut client, "SELECT string_agg(name || state || array_to_string(tags, ','), ';' ORDER BY id) FROM segments.segment");
    assert_eq!(state_before, state_after, "a dry run changes nothing");

    // The setting moves the boundary.
    client
        .batch_execute("SET segments.unused_after = '50 days'")
        .unwrap();
    let later = names(
        &mut client,
        "SELECT name FROM segments.deactivate_unused(dry_run => true) ORDER BY name",
    );
    assert_eq!(
        later,
        vec!["only analytics".to_string(), "reader".to_string()]
    );
    client.batch_execute("RESET segments.unused_after").unwrap();

    let done = names(
        &mut client,
        "SELECT name FROM segments.deactivate_unused() ORDER BY name",
    );
    assert_eq!(done, expected);
    let tagged = names(&mut client, "SELECT name FROM segments.segment WHERE state = 'inactive' AND 'AutoDeactivated' = ANY (tags) ORDER BY name");
    assert_eq!(tagged, expected);

    // Once "reader" no longer reads "referenced", nothing keeps it in use.
    client
        .batch_execute(&format!(
            "UPDATE segments.segment SET definition = '{simple}' WHERE name = 'reader'"
        ))
        .unwrap();
    let usage_left: i64 = client
        .query_one(
            "SELECT count(*) FROM segments.usage WHERE kind = 'segment'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(usage_left, 0);
    let now_unused = names(
        &mut client,
        "SELECT name FROM segments.deactivate_unused(dry_run => true) ORDER BY name",
    );
    assert_eq!(now_unused, vec!["referenced".to_string()]);

    // Resuming removes the tag and makes the segment due.
    client
        .batch_execute(
            "SELECT segments.activate(array_agg(id)) FROM segments.segment WHERE name = 'old'",
        )
        .unwrap();
    let row = client
        .query_one(
            "SELECT state, tags, needs_refresh FROM segments.segment WHERE name = 'old'",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "active");
    assert_eq!(row.get::<_, Vec<String>>(1), Vec::<String>::new());
    assert!(row.get::<_, bool>(2));
    let error = client
        .execute("SELECT segments.add_usage(1, 'poster', 'x')", &[])
        .unwrap_err();
    let (code, message) = sqlstate(&error);
    assert_eq!(code, "22023");
    assert!(
        message.contains("analytics, campaign, export, journey, measure"),
        "the kinds come from segments.usage_kind: {message}"
    );
    // Kinds the extension records are refused, both ways.
    for call in [
        "SELECT segments.add_usage(1, 'export', 'x')",
        "SELECT segments.remove_usage(1, 'segment', '2')",
    ] {
        let error = client.execute(call, &[]).unwrap_err();
        let (code, message) = sqlstate(&error);
        assert_eq!(code, "22023", "{call}");
        assert!(
            message.contains("recorded by segments itself"),
            "{call}: {message}"
        );
    }
}
