//! Layer 3: live segments (SPEC section 11). Memberships follow inserts,
//! updates, deletes, related rows and TRUNCATE; the worker applies them
//! within seconds; a killed apply loses nothing.

mod harness;

use std::time::{Duration, Instant};

use harness::Cluster;

const ANCHOR: &str = "2026-11-01";

fn sample(cluster: &Cluster, scale: &str) -> postgres::Client {
    cluster.psql_file("postgres", "scripts/sample_data.sql", &[("scale", scale), ("anchor", ANCHOR)]);
    let mut client = cluster.connect("postgres");
    client
        .batch_execute(
            "CREATE EXTENSION segments;
             SELECT segments.register_entity('customer', 'customers', 'id');
             SELECT segments.register_related('customer', 'orders', 'orders', 'customer_id', 'ordered_at');",
        )
        .unwrap();
    client
}

const DE: &str = r#"{"entity":"customer","rules":[{"where":{"attribute":"country","op":"eq","value":"DE"}},
                     {"combine":"except","where":{"attribute":"unsubscribed","op":"is_true"}}]}"#;
const BUYERS: &str = r#"{"entity":"customer","rules":[{"where":{"related":"orders","aggregate":"sum","attribute":"amount","op":"gt","value":3000}}]}"#;
const DE_SQL: &str = "country = 'DE' AND NOT unsubscribed";
const BUYERS_SQL: &str = "(SELECT sum(amount) FROM orders o WHERE o.customer_id = c.id) > 3000";

/// Whether a segment's members equal a hand-written query.
fn equals(client: &mut postgres::Client, segment: i64, sql: &str) -> bool {
    client
        .query_one(
            &format!(
                "SELECT (SELECT array_agg(id ORDER BY id) FROM customers c WHERE {sql}) IS NOT DISTINCT FROM \
                        (SELECT array_agg(id ORDER BY id) FROM segments.customer_members WHERE segment_id = $1)"
            ),
            &[&segment],
        )
        .unwrap()
        .get(0)
}

fn apply(client: &mut postgres::Client) -> i64 {
    client.query_one("SELECT count(*) FROM segments.apply_changes()", &[]).unwrap().get(0)
}

#[test]
fn live_segments_follow_row_changes() {
    let cluster = Cluster::start("live", &[]);
    let mut client = sample(&cluster, "3000");
    let de: i64 = client.query_one("SELECT segments.create_segment('Live DE', $1::text::jsonb, schedule => 'live')", &[&DE]).unwrap().get(0);
    let buyers: i64 = client.query_one("SELECT segments.create_segment('Buyers', $1::text::jsonb, schedule => 'live')", &[&BUYERS]).unwrap().get(0);
    let reader: i64 = client
        .query_one(r#"SELECT segments.create_segment('DE buyers', '{"entity":"customer","rules":[{"where":{"segment":"Live DE"}},{"combine":"intersect","where":{"segment":"Buyers"}}]}', schedule => 'live')"#, &[])
        .unwrap()
        .get(0);
    client.batch_execute("SELECT * FROM segments.refresh()").unwrap();
    let triggers: i64 = client.query_one("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'segments_live%'", &[]).unwrap().get(0);
    assert_eq!(triggers, 8, "capture on customers and orders");
    let both = format!("{DE_SQL} AND {BUYERS_SQL}");
    let check = |client: &mut postgres::Client, what: &str| {
        assert!(equals(client, de, DE_SQL), "{what}: live DE differs");
        assert!(equals(client, buyers, BUYERS_SQL), "{what}: buyers differ");
        assert!(equals(client, reader, &both), "{what}: the segment of live segments differs");
    };
    // Update, insert, delete, related insert, a burst, a key change.
    let steps = [
        ("update", "UPDATE customers SET country = 'DE' WHERE id % 97 = 0 AND country <> 'DE'"),
        ("unsubscribe", "UPDATE customers SET unsubscribed = true WHERE country = 'DE' AND id % 5 = 0"),
        ("insert", "INSERT INTO customers (id, code, country, unsubscribed, signed_up_at) VALUES (900001, 'X1', 'DE', false, now())"),
        ("delete", "DELETE FROM orders WHERE customer_id % 89 = 0; DELETE FROM email_events WHERE customer_id % 89 = 0; DELETE FROM customers WHERE id % 89 = 0"),
        ("related insert", "INSERT INTO orders (id, customer_id, amount, ordered_at, status, channel) SELECT 9000000 + id, id, 5000, now(), 'paid', 'web' FROM customers WHERE id % 41 = 0"),
        ("burst of 2000", "UPDATE customers SET country = CASE WHEN country = 'DE' THEN 'FR' ELSE 'DE' END WHERE id <= 2000"),
        ("key change", "UPDATE customers SET id = 800001 WHERE id = 900001"),
    ];
    for (what, sql) in steps {
        client.batch_execute(sql).unwrap();
        assert!(apply(&mut client) > 0, "{what}: nothing applied");
        check(&mut client, what);
    }
    // Entered and exited rows are recorded with live runs.
    let (entered, exited): (i64, i64) = {
        let r = client
            .query_one(
                "SELECT count(*) FILTER (WHERE c.change = 'entered'), count(*) FILTER (WHERE c.change = 'exited')
                   FROM segments.membership_change c JOIN segments.refresh_run r ON r.id = c.run_id WHERE r.trigger = 'live'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(entered > 0 && exited > 0, "entered {entered}, exited {exited}");
    let examined: i64 = client.query_one("SELECT max(keys_examined) FROM segments.refresh_run WHERE trigger = 'live'", &[]).unwrap().get(0);
    assert!(examined >= 1900, "the burst examined {examined} keys");

    // A deactivated segment ignores changes; a sequence starts for live entries.
    client
        .batch_execute(&format!(
            "SELECT segments.deactivate(ARRAY[{buyers}::bigint]);
             SELECT segments.create_sequence('Welcome', 'customer');
             SELECT segments.connect_sequence(1, ARRAY[{de}::bigint]);"
        ))
        .unwrap();
    let before: i64 = client.query_one("SELECT member_count FROM segments.segment WHERE id = $1", &[&buyers]).unwrap().get(0);
    client
        .batch_execute("INSERT INTO customers (id, code, country, unsubscribed, signed_up_at) VALUES (900002, 'X2', 'DE', false, now());
                        INSERT INTO orders (id, customer_id, amount, ordered_at, status, channel) VALUES (9900002, 900002, 9999, now(), 'paid', 'web');")
        .unwrap();
    apply(&mut client);
    let after: i64 = client.query_one("SELECT member_count FROM segments.segment WHERE id = $1", &[&buyers]).unwrap().get(0);
    assert_eq!(before, after, "an inactive segment followed a change");
    let connected: i64 = client.query_one("SELECT count(*) FROM segments.sequence_records WHERE key = '900002'", &[]).unwrap().get(0);
    assert_eq!(connected, 1, "the live entry did not start the sequence");

    // TRUNCATE: every member exits.
    client.batch_execute("TRUNCATE orders, email_events, customers").unwrap();
    apply(&mut client);
    let count: i64 = client.query_one("SELECT member_count FROM segments.segment WHERE id = $1", &[&de]).unwrap().get(0);
    assert_eq!(count, 0);

    // Capture goes with the last live segment.
    client.batch_execute(&format!("SELECT segments.set_schedule(ARRAY[{de}, {reader}]::bigint[], 'daily'); SELECT segments.delete(ARRAY[{reader}]::bigint[]);")).unwrap();
    let triggers: i64 = client.query_one("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'segments_live%'", &[]).unwrap().get(0);
    assert_eq!(triggers, 0, "capture triggers left behind");
}

/// The worker applies changes within seconds; a killed apply redoes its
/// batch; text keys work.
#[test]
fn the_worker_applies_changes_and_a_killed_apply_loses_nothing() {
    let cluster = Cluster::start("live-worker", &["shared_preload_libraries=segments", "segments.naptime=1"]);
    let mut client = sample(&cluster, "2000");
    let de: i64 = client.query_one("SELECT segments.create_segment('Live DE', $1::text::jsonb, schedule => 'live')", &[&DE]).unwrap().get(0);
    let start = Instant::now();
    let wait_equal = |client: &mut postgres::Client, what: &str| {
        let start = Instant::now();
        while !equals(client, de, DE_SQL) {
            assert!(start.elapsed() < Duration::from_secs(20), "{what}: the worker did not apply the change");
            std::thread::sleep(Duration::from_millis(100));
        }
        start.elapsed()
    };
    wait_equal(&mut client, "first computation");
    client.batch_execute("UPDATE customers SET country = 'DE' WHERE id % 7 = 0").unwrap();
    let latency = wait_equal(&mut client, "update");
    assert!(latency < Duration::from_secs(5), "applied after {latency:?}");

    // A rolled back (or killed) apply leaves its batch queued.
    client.batch_execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'segments scheduler'").unwrap();
    client.batch_execute("BEGIN; UPDATE customers SET country = 'FR' WHERE id % 11 = 0; COMMIT;").unwrap();
    client.batch_execute("BEGIN; SELECT * FROM segments.apply_changes(); ROLLBACK;").unwrap();
    let queued: i64 = client.query_one("SELECT count(*) FROM segments.change_queue", &[]).unwrap().get(0);
    assert!(queued > 0, "a rolled back apply lost its batch");
    wait_equal(&mut client, "after the worker came back");
    assert!(start.elapsed() < Duration::from_secs(60));

    // Text keys.
    client
        .batch_execute(
            r#"CREATE TABLE accounts (code text PRIMARY KEY, tier text);
               INSERT INTO accounts SELECT 'A' || i, CASE WHEN i % 3 = 0 THEN 'gold' END FROM generate_series(1, 300) i;
               SELECT segments.register_entity('account', 'accounts', 'code');
               SELECT segments.create_segment('Gold', '{"entity":"account","rules":[{"where":{"attribute":"tier","op":"eq","value":"gold"}}]}', schedule => 'live');"#,
        )
        .unwrap();
    let gold = |client: &mut postgres::Client| -> bool {
        client
            .query_one(
                "SELECT (SELECT array_agg(code ORDER BY code) FROM accounts WHERE tier = 'gold') IS NOT DISTINCT FROM \
                        (SELECT array_agg(code ORDER BY code) FROM segments.account_members WHERE segment_name = 'Gold')",
                &[],
            )
            .unwrap()
            .get(0)
    };
    client.batch_execute("UPDATE accounts SET tier = 'gold' WHERE code IN ('A1', 'A2'); DELETE FROM accounts WHERE code = 'A3'; INSERT INTO accounts VALUES ('B1', 'gold');").unwrap();
    let start = Instant::now();
    while !gold(&mut client) {
        assert!(start.elapsed() < Duration::from_secs(20), "text keys were not applied");
        std::thread::sleep(Duration::from_millis(100));
    }
}
