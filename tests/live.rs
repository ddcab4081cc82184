//! Layer 3: live segments (README, Live segments). Memberships follow inserts,
//! updates, deletes, related rows and TRUNCATE; the worker applies them
//! within seconds; a killed apply loses nothing. With
//! `SEGMENTS_TEST_CAPTURE=wal`, every check runs with WAL capture.

mod harness;

use std::time::{Duration, Instant};

use harness::{prepare_capture, wal_capture, with_capture, Cluster, ANCHOR};

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
    client
        .query_one("SELECT count(*) FROM segments.apply_changes()", &[])
        .unwrap()
        .get(0)
}

#[test]
fn live_segments_follow_row_changes() {
    let cluster = Cluster::start("live", &with_capture(&[]));
    let mut client = cluster.sample_unpinned("3000");
    prepare_capture(&mut client);
    let de: i64 = client
        .query_one(
            "SELECT segments.create_segment('Live DE', $1::text::jsonb, schedule => 'live')",
            &[&DE],
        )
        .unwrap()
        .get(0);
    let buyers: i64 = client
        .query_one(
            "SELECT segments.create_segment('Buyers', $1::text::jsonb, schedule => 'live')",
            &[&BUYERS],
        )
        .unwrap()
        .get(0);
    let reader: i64 = client
        .query_one(r#"SELECT segments.create_segment('DE buyers', '{"entity":"customer","rules":[{"where":{"segment":"Live DE"}},{"combine":"intersect","where":{"segment":"Buyers"}}]}', schedule => 'live')"#, &[])
        .unwrap()
        .get(0);
    client
        .batch_execute("SELECT * FROM segments.refresh()")
        .unwrap();
    let triggers: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'segments_live%'",
            &[],
        )
        .unwrap()
        .get(0);
    let published: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'segments_capture'",
            &[],
        )
        .unwrap()
        .get(0);
    if wal_capture() {
        assert_eq!(
            (triggers, published),
            (0, 2),
            "WAL capture: customers and orders published, no trigger"
        );
    } else {
        assert_eq!(
            (triggers, published),
            (8, 0),
            "capture on customers and orders"
        );
    }
    let both = format!("{DE_SQL} AND {BUYERS_SQL}");
    let check = |client: &mut postgres::Client, what: &str| {
        assert!(equals(client, de, DE_SQL), "{what}: live DE differs");
        assert!(equals(client, buyers, BUYERS_SQL), "{what}: buyers differ");
        assert!(
            equals(client, reader, &both),
            "{what}: the segment of live segments differs"
        );
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
    // The row trigger compares the columns it watches: writing the same
    // values again (as ORMs do) queues nothing, a real change queues the key.
    let queued = |client: &mut postgres::Client| -> i64 {
        client
            .query_one("SELECT count(*) FROM segments.change_queue", &[])
            .unwrap()
            .get(0)
    };
    // WAL capture compares them in the decoded old and new rows, when
    // applying: the queue is filled then.
    client
        .batch_execute(
            "UPDATE customers SET country = country, unsubscribed = unsubscribed WHERE id <= 500",
        )
        .unwrap();
    if wal_capture() {
        assert_eq!(apply(&mut client), 0, "unchanged values were applied");
    } else {
        assert_eq!(queued(&mut client), 0, "unchanged values were queued");
    }
    client
        .batch_execute(
            "UPDATE customers SET country = 'FR', unsubscribed = NOT unsubscribed WHERE id = 7",
        )
        .unwrap();
    if !wal_capture() {
        assert_eq!(queued(&mut client), 1, "a changed row was not queued once");
    }
    assert!(apply(&mut client) > 0, "a changed row was not applied");
    check(&mut client, "compared columns");
    // Row images are used only while they match the table: after a new
    // column (more attributes) or a rewrite (a new file), the queued
    // images are set aside and the heap is read.
    for (what, ddl) in [
        (
            "a new column",
            "ALTER TABLE customers ADD COLUMN note text DEFAULT 'n'",
        ),
        ("a rewrite", "VACUUM FULL customers"),
    ] {
        client.batch_execute("UPDATE customers SET country = CASE WHEN country = 'DE' THEN 'FR' ELSE 'DE' END WHERE id % 13 = 0").unwrap();
        let images: i64 = client
            .query_one("SELECT count(image) FROM segments.change_queue", &[])
            .unwrap()
            .get(0);
        // WAL capture keeps no row images (apply reads the rows).
        assert!(
            images > 0 || wal_capture(),
            "{what}: no row images were captured"
        );
        client.batch_execute(ddl).unwrap();
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
    assert!(
        entered > 0 && exited > 0,
        "entered {entered}, exited {exited}"
    );
    let examined: i64 = client
        .query_one(
            "SELECT max(keys_examined) FROM segments.refresh_run WHERE trigger = 'live'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(examined >= 1900, "the burst examined {examined} keys");

    // A deactivated segment ignores changes; a sequence starts for live entries.
    client
        .batch_execute(&format!(
            "SELECT segments.deactivate(ARRAY[{buyers}::bigint]);
             SELECT segments.create_sequence('Welcome', 'customer');
             SELECT segments.connect_sequence(1, ARRAY[{de}::bigint]);"
        ))
        .unwrap();
    let before: i64 = client
        .query_one(
            "SELECT member_count FROM segments.segment WHERE id = $1",
            &[&buyers],
        )
        .unwrap()
        .get(0);
    client
        .batch_execute("INSERT INTO customers (id, code, country, unsubscribed, signed_up_at) VALUES (900002, 'X2', 'DE', false, now());
                        INSERT INTO orders (id, customer_id, amount, ordered_at, status, channel) VALUES (9900002, 900002, 9999, now(), 'paid', 'web');")
        .unwrap();
    apply(&mut client);
    let after: i64 = client
        .query_one(
            "SELECT member_count FROM segments.segment WHERE id = $1",
            &[&buyers],
        )
        .unwrap()
        .get(0);
    assert_eq!(before, after, "an inactive segment followed a change");
    let connected: i64 = client
        .query_one(
            "SELECT count(*) FROM segments.sequence_records WHERE key = '900002'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(connected, 1, "the live entry did not start the sequence");

    // TRUNCATE: every member exits.
    client
        .batch_execute("TRUNCATE orders, email_events, customers")
        .unwrap();
    apply(&mut client);
    let count: i64 = client
        .query_one(
            "SELECT member_count FROM segments.segment WHERE id = $1",
            &[&de],
        )
        .unwrap()
        .get(0);
    assert_eq!(count, 0);

    // Capture goes with the last live segment.
    client.batch_execute(&format!("SELECT segments.set_schedule(ARRAY[{de}, {reader}]::bigint[], 'daily'); SELECT segments.delete(ARRAY[{reader}]::bigint[]);")).unwrap();
    let triggers: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'segments_live%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(triggers, 0, "capture triggers left behind");
    // WAL capture: the publication is emptied at once, the slot goes with
    // the next application.
    apply(&mut client);
    let (published, slots): (i64, i64) = {
        let r = client
            .query_one(
                "SELECT (SELECT count(*) FROM pg_publication_tables WHERE pubname = 'segments_capture'),
                        (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'segments%')",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((published, slots), (0, 0), "WAL capture left behind");
}

/// Scans of a table so far, as this backend's flushed statistics say.
fn scans(client: &mut postgres::Client, table: &str) -> i64 {
    client
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .unwrap();
    client
        .query_one(
            "SELECT seq_scan + coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = $1",
            &[&table],
        )
        .unwrap()
        .get(0)
}

/// Related values are kept between applications: a change of customers
/// alone does not read orders, and every mix of entity and related changes
/// (amounts, a moved order, deletes, a customer without orders, a full
/// refresh in between) still equals hand-written SQL, for aggregates,
/// `count lt` (members without rows) and `exists: false`.
#[test]
fn kept_related_values_stay_exact_and_spare_related_reads() {
    let cluster = Cluster::start("live-kept", &with_capture(&[]));
    let mut client = cluster.sample_unpinned("3000");
    prepare_capture(&mut client);
    client
        .batch_execute(&format!("SET segments.reference_time = '{ANCHOR}'"))
        .unwrap();
    let few = r#"{"entity":"customer","rules":[{"where":{"all":[{"attribute":"country","op":"eq","value":"DE"},
                   {"related":"orders","aggregate":"count","within":"90 days","op":"lt","value":2}]}}]}"#;
    let few_sql = format!(
        "country = 'DE' AND (SELECT count(*) FROM orders o WHERE o.customer_id = c.id \
           AND o.ordered_at >= '{ANCHOR}'::timestamptz - interval '90 days' AND o.ordered_at <= '{ANCHOR}'::timestamptz) < 2"
    );
    let none = r#"{"entity":"customer","rules":[{"where":{"related":"orders","exists":false,"where":{"attribute":"status","op":"eq","value":"refunded"}}},
                   {"combine":"except","where":{"attribute":"unsubscribed","op":"is_true"}}]}"#;
    let none_sql = "NOT EXISTS (SELECT FROM orders o WHERE o.customer_id = c.id AND o.status = 'refunded') AND NOT unsubscribed";
    let buyers: i64 = client
        .query_one(
            "SELECT segments.create_segment('Buyers', $1::text::jsonb, schedule => 'live')",
            &[&BUYERS],
        )
        .unwrap()
        .get(0);
    let few: i64 = client
        .query_one(
            "SELECT segments.create_segment('Few', $1::text::jsonb, schedule => 'live')",
            &[&few],
        )
        .unwrap()
        .get(0);
    let none: i64 = client
        .query_one(
            "SELECT segments.create_segment('No refunds', $1::text::jsonb, schedule => 'live')",
            &[&none],
        )
        .unwrap()
        .get(0);
    client
        .batch_execute("SELECT * FROM segments.refresh()")
        .unwrap();
    if wal_capture() {
        // The first application makes the slot and refreshes in full.
        apply(&mut client);
    }
    let check = |client: &mut postgres::Client, what: &str| {
        assert!(equals(client, buyers, BUYERS_SQL), "{what}: buyers differ");
        assert!(equals(client, few, &few_sql), "{what}: few differ");
        assert!(equals(client, none, none_sql), "{what}: no-refunds differ");
    };
    let kept = |client: &mut postgres::Client| -> i64 {
        client
            .query_one("SELECT count(*) FROM segments.related_state", &[])
            .unwrap()
            .get(0)
    };
    // The first application computes the related values once and keeps them.
    client
        .batch_execute("UPDATE customers SET country = 'DE' WHERE id % 7 = 0")
        .unwrap();
    apply(&mut client);
    check(&mut client, "first application");
    assert_eq!(kept(&mut client), 3, "one kept value per related condition");
    // A change of customers alone reads no orders.
    client.batch_execute("UPDATE customers SET country = 'FR', unsubscribed = NOT unsubscribed WHERE id % 11 = 0").unwrap();
    let before = scans(&mut client, "orders");
    assert!(apply(&mut client) > 0);
    let after = scans(&mut client, "orders");
    assert_eq!(before, after, "an entity-only change read orders");
    check(&mut client, "entity-only change");
    let steps = [
        ("amounts", "UPDATE orders SET amount = amount + 2500 WHERE customer_id % 13 = 0"),
        ("statuses", "UPDATE orders SET status = 'refunded' WHERE customer_id % 17 = 0"),
        ("a moved order", "UPDATE orders SET customer_id = 14 WHERE id IN (SELECT id FROM orders WHERE customer_id <> 14 ORDER BY id LIMIT 30)"),
        ("recent orders", "INSERT INTO orders (id, customer_id, amount, ordered_at, status, channel) SELECT 8000000 + id, id, 10, '2026-10-20', 'paid', 'web' FROM customers WHERE id % 19 = 0"),
        ("deleted orders", "DELETE FROM orders WHERE customer_id % 23 = 0"),
        ("a customer without orders", "INSERT INTO customers (id, code, country, unsubscribed, signed_up_at) VALUES (900001, 'X1', 'DE', false, now())"),
        ("both tables", "UPDATE customers SET country = 'DE' WHERE id % 29 = 0; UPDATE orders SET amount = 1 WHERE customer_id % 31 = 0"),
    ];
    for (what, sql) in steps {
        client.batch_execute(sql).unwrap();
        apply(&mut client);
        check(&mut client, what);
    }
    // A full refresh forgets the kept values; the next application keeps them anew.
    client
        .batch_execute("SELECT * FROM segments.refresh()")
        .unwrap();
    assert_eq!(
        kept(&mut client),
        0,
        "a full refresh kept stale related values"
    );
    client.batch_execute("UPDATE orders SET amount = amount * 3 WHERE customer_id % 37 = 0; UPDATE customers SET country = 'DE' WHERE id % 41 = 0").unwrap();
    apply(&mut client);
    check(&mut client, "after a full refresh");
    assert_eq!(kept(&mut client), 3);
    // Readers never see them; they go with the last live segment.
    client
        .batch_execute("CREATE ROLE kept_reader LOGIN IN ROLE segments_reader")
        .unwrap();
    let denied = client.batch_execute("SET ROLE kept_reader; SELECT * FROM segments.related_state");
    assert!(denied.is_err(), "a reader read kept related values");
    client.batch_execute("RESET ROLE").unwrap();
    client
        .batch_execute(&format!(
            "SELECT segments.set_schedule(ARRAY[{buyers}, {few}, {none}]::bigint[], 'daily')"
        ))
        .unwrap();
    assert_eq!(kept(&mut client), 0, "kept values left behind");
}

/// The worker applies changes within seconds; a killed apply redoes its
/// batch; text keys work.
#[test]
fn the_worker_applies_changes_and_a_killed_apply_loses_nothing() {
    let cluster = Cluster::start(
        "live-worker",
        &with_capture(&["shared_preload_libraries=segments", "segments.naptime=1"]),
    );
    let mut client = cluster.sample_unpinned("2000");
    prepare_capture(&mut client);
    let de: i64 = client
        .query_one(
            "SELECT segments.create_segment('Live DE', $1::text::jsonb, schedule => 'live')",
            &[&DE],
        )
        .unwrap()
        .get(0);
    let start = Instant::now();
    let wait_equal = |client: &mut postgres::Client, what: &str| {
        let start = Instant::now();
        while !equals(client, de, DE_SQL) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{what}: the worker did not apply the change"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        start.elapsed()
    };
    wait_equal(&mut client, "first computation");
    client
        .batch_execute("UPDATE customers SET country = 'DE' WHERE id % 7 = 0")
        .unwrap();
    let latency = wait_equal(&mut client, "update");
    assert!(
        latency < Duration::from_secs(5),
        "applied after {latency:?}"
    );

    // A rolled back (or killed) apply leaves its batch queued.
    client.batch_execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'segments scheduler'").unwrap();
    client
        .batch_execute("BEGIN; UPDATE customers SET country = 'FR' WHERE id % 11 = 0; COMMIT;")
        .unwrap();
    client
        .batch_execute("BEGIN; SELECT * FROM segments.apply_changes(); ROLLBACK;")
        .unwrap();
    let queued: i64 = client
        .query_one("SELECT count(*) FROM segments.change_queue", &[])
        .unwrap()
        .get(0);
    // WAL capture: the slot still holds the batch (its position moves
    // only past what a committed application queued).
    assert!(
        queued > 0 || wal_capture(),
        "a rolled back apply lost its batch"
    );
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
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "text keys were not applied"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
