//! Layer 3: concurrent sessions: refreshes of one segment serialize, and
//! readers see the old membership or the new one, never a mix.

mod harness;

use harness::Cluster;

/// Two refreshes of one segment from two connections run one after the
/// other: the second waits for the first to commit.
#[test]
fn concurrent_refreshes_of_a_segment_serialize() {
    let cluster = Cluster::start("concurrent", &[]);
    let mut first = cluster.sample("2000");
    first
        .batch_execute(
            "SELECT segments.quick_segment('Germans', 'customer', 'country', 'eq', '\"DE\"')",
        )
        .unwrap();
    let mut tx = first.transaction().unwrap();
    tx.query("SELECT * FROM segments.refresh(ARRAY[1::bigint])", &[])
        .unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = cluster.url("postgres");
    let flag = done.clone();
    let second = std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let status: String = client
            .query_one("SELECT status FROM segments.refresh(ARRAY[1::bigint])", &[])
            .unwrap()
            .get(0);
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        status
    });
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        !done.load(std::sync::atomic::Ordering::SeqCst),
        "the second refresh must wait for the first"
    );
    tx.commit().unwrap();
    assert_eq!(second.join().unwrap(), "succeeded");
    let runs = first
        .query("SELECT started_at, finished_at FROM segments.refresh_run WHERE segment_id = 1 ORDER BY id", &[])
        .unwrap();
    assert_eq!(runs.len(), 2);
    let first_finished: std::time::SystemTime = runs[0].get(1);
    let second_started: std::time::SystemTime = runs[1].get(0);
    assert!(
        second_started >= first_finished,
        "the runs must not overlap"
    );
}

/// A reader in a long transaction sees the old membership or the new one,
/// never a mix; LISTEN gets the counts of each change.
#[test]
fn readers_see_old_or_new_and_notify_carries_counts() {
    let cluster = Cluster::start("readers", &[]);
    let mut writer = cluster.sample("2000");
    writer.batch_execute("SELECT segments.quick_segment('Young', 'customer', 'age', 'lt', '30'); SELECT * FROM segments.refresh();").unwrap();
    let mut listener = cluster.connect("postgres");
    listener.batch_execute("LISTEN segments").unwrap();
    let mut reader = cluster.connect("postgres");
    let mut tx = reader
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .start()
        .unwrap();
    let snapshot = "SELECT (SELECT count(*) FROM segments.customer_members WHERE segment_id = 1),
                           (SELECT member_count FROM segments.segment WHERE id = 1),
                           segments.is_member(1, 1), (SELECT age < 30 FROM customers WHERE id = 1)";
    let before = tx.query_one(snapshot, &[]).unwrap();
    let (view_before, count_before): (i64, i64) = (before.get(0), before.get(1));
    assert_eq!(view_before, count_before);
    writer
        .batch_execute(
            "UPDATE customers SET age = CASE WHEN age < 30 THEN 50 ELSE 20 END WHERE id <= 100",
        )
        .unwrap();
    let row = writer
        .query_one(
            "SELECT entered, exited, member_count FROM segments.refresh()",
            &[],
        )
        .unwrap();
    let (entered, exited, count_after): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert!(entered > 0 && exited > 0);
    let during = tx.query_one(snapshot, &[]).unwrap();
    assert_eq!(
        (during.get::<_, i64>(0), during.get::<_, i64>(1)),
        (view_before, count_before),
        "the reader's snapshot keeps the old set"
    );
    assert_eq!(during.get::<_, bool>(2), before.get::<_, bool>(2));
    tx.commit().unwrap();
    let after = reader.query_one(snapshot, &[]).unwrap();
    assert_eq!(
        (after.get::<_, i64>(0), after.get::<_, i64>(1)),
        (count_after, count_after)
    );
    assert_eq!(
        after.get::<_, bool>(2),
        after.get::<_, Option<bool>>(3).unwrap_or(false)
    );
    let changes: i64 = writer
        .query_one("SELECT count(*) FROM segments.membership_change WHERE run_id = (SELECT max(id) FROM segments.refresh_run)", &[])
        .unwrap()
        .get(0);
    assert_eq!(changes, entered + exited);

    listener.batch_execute("SELECT 1").unwrap();
    use postgres::fallible_iterator::FallibleIterator;
    let notifications: Vec<postgres::Notification> =
        listener.notifications().iter().collect().unwrap();
    let payloads: Vec<serde_json::Value> = notifications
        .iter()
        .map(|n| serde_json::from_str(n.payload()).unwrap())
        .collect();
    let last = payloads
        .last()
        .expect("a notification for the changing refresh");
    assert_eq!(last["segment"], 1);
    assert_eq!(last["entered"], entered);
    assert_eq!(last["exited"], exited);
}

/// is_member looks a segment up once per snapshot (a query testing many
/// rows reads the membership once), and so sees every change its snapshot
/// sees: another session's committed refresh, its own refresh in the
/// same transaction, and neither after a rollback.
#[test]
fn is_member_sees_each_change_its_snapshot_sees() {
    let cluster = Cluster::start("member_snapshots", &[]);
    let mut writer = cluster.sample("2000");
    writer
        .batch_execute(
            "SELECT segments.quick_segment('Young', 'customer', 'age', 'lt', '30');
             UPDATE customers SET age = 20 WHERE id = 1; SELECT * FROM segments.refresh();",
        )
        .unwrap();
    let mut reader = cluster.connect("postgres");
    let member = |client: &mut postgres::Client| -> bool {
        client
            .query_one("SELECT segments.is_member(1, 1)", &[])
            .unwrap()
            .get(0)
    };
    // Many calls in one statement agree with the members view.
    let (calls, view): (i64, i64) = {
        let row = reader
            .query_one(
                "SELECT (SELECT count(*) FROM generate_series(1, 2000) i WHERE segments.is_member(1, i)),
                        (SELECT count(*) FROM segments.customer_members WHERE segment_id = 1)",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(calls, view);
    assert!(member(&mut reader));
    // Another session's committed refresh.
    writer
        .batch_execute(
            "UPDATE customers SET age = 50 WHERE id = 1; SELECT * FROM segments.refresh();",
        )
        .unwrap();
    assert!(
        !member(&mut reader),
        "a committed refresh is seen by the next statement"
    );
    // Its own refresh, in its transaction, then rolled back.
    let mut tx = reader.transaction().unwrap();
    assert!(!tx
        .query_one("SELECT segments.is_member(1, 1)", &[])
        .unwrap()
        .get::<_, bool>(0));
    tx.batch_execute("UPDATE customers SET age = 20 WHERE id = 1; SELECT * FROM segments.refresh(ARRAY[1::bigint]);")
        .unwrap();
    assert!(
        tx.query_one("SELECT segments.is_member(1, 1)", &[])
            .unwrap()
            .get::<_, bool>(0),
        "its own refresh is seen by its next statement"
    );
    tx.rollback().unwrap();
    assert!(!member(&mut reader), "a rolled back refresh is not seen");
}
