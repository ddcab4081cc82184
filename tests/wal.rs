//! Layer 3: WAL capture (`segments.capture = 'wal'`, README "Live
//! segments"): what it needs of the server and the tables, an invalidated
//! slot, no slot left behind, and switching modes under writes. The live
//! checks themselves run in this mode too (tests/live.rs with
//! `SEGMENTS_TEST_CAPTURE=wal`).

mod harness;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use harness::{members_differ, sqlstate, wait_for, Cluster};

const DE: &str = r#"{"entity":"customer","rules":[{"where":{"attribute":"country","op":"eq","value":"DE"}},
                     {"combine":"except","where":{"attribute":"unsubscribed","op":"is_true"}}]}"#;
const DE_SQL: &str = "country = 'DE' AND NOT unsubscribed";
const BUYERS: &str = r#"{"entity":"customer","rules":[{"where":{"related":"orders","aggregate":"sum","attribute":"amount","op":"gt","value":3000}}]}"#;
const BUYERS_SQL: &str = "(SELECT sum(amount) FROM orders o WHERE o.customer_id = c.id) > 3000";

/// Whether a segment's members equal a hand-written query.
fn equals(client: &mut postgres::Client, segment: i64, sql: &str) -> bool {
    members_differ(
        client,
        "segments.customer_members",
        "customers c",
        "c.id",
        sql,
        segment,
    ) == 0
}

fn create(
    client: &mut postgres::Client,
    name: &str,
    definition: &str,
) -> Result<i64, postgres::Error> {
    client
        .query_one(
            "SELECT segments.create_segment($1, $2::text::jsonb, schedule => 'live')",
            &[&name, &definition],
        )
        .map(|row| row.get(0))
}

fn count(client: &mut postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).unwrap().get(0)
}

const SLOTS: &str = "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'segments\\_%'";

/// Without wal_level = logical, or with a related table whose WAL does not
/// carry its key, a live segment is refused naming what to set, and
/// nothing is half-made.
#[test]
fn wal_capture_refuses_what_it_cannot_decode() {
    let replica = Cluster::start("wal-level", &["segments.capture=wal"]);
    let mut client = replica.sample_unpinned("200");
    let error = create(&mut client, "Live DE", DE).unwrap_err();
    let (code, message) = sqlstate(&error);
    assert_eq!(code, "55000", "{message}");
    assert!(message.contains("wal_level = logical"), "{message}");
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM segments.segment"),
        0
    );

    let logical = Cluster::start(
        "wal-identity",
        &["wal_level=logical", "segments.capture=wal"],
    );
    let mut client = logical.sample_unpinned("200");
    let error = create(&mut client, "Buyers", BUYERS).unwrap_err();
    let db = error.as_db_error().unwrap();
    assert_eq!(db.code().code(), "55000");
    assert!(
        db.message().contains("public.orders") && db.message().contains("customer_id"),
        "{}",
        db.message()
    );
    assert!(db
        .hint()
        .unwrap_or_default()
        .contains("REPLICA IDENTITY FULL"));
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM segments.segment"),
        0
    );
    // The entity's own key is its primary key: nothing to set.
    create(&mut client, "Live DE", DE).unwrap();
    client
        .batch_execute("ALTER TABLE orders REPLICA IDENTITY FULL")
        .unwrap();
    create(&mut client, "Buyers", BUYERS).unwrap();
}

/// A slot invalidated while nobody read it (max_slot_wal_keep_size passed)
/// is made again and the live segments are refreshed in full: exact, never
/// a silent loss.
#[test]
fn an_invalidated_slot_leads_to_a_full_refresh() {
    let cluster = Cluster::start(
        "wal-lost",
        &[
            "wal_level=logical",
            "segments.capture=wal",
            "max_slot_wal_keep_size=1MB",
            "max_wal_size=32MB",
            "min_wal_size=32MB",
        ],
    );
    let mut client = cluster.sample_unpinned("2000");
    let de = create(&mut client, "Live DE", DE).unwrap();
    client
        .query("SELECT * FROM segments.apply_changes()", &[])
        .unwrap();
    let created: String = client
        .query_one("SELECT created_at::text FROM segments.capture_slot", &[])
        .unwrap()
        .get(0);
    client
        .batch_execute("UPDATE customers SET country = 'DE' WHERE id % 3 = 0")
        .unwrap();
    // WAL well past the bound, then checkpoints: the slot is invalidated.
    client
        .batch_execute(
            "CREATE TABLE filler (x text);
             INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 60000);
             SELECT pg_switch_wal(); CHECKPOINT; SELECT pg_switch_wal(); CHECKPOINT;",
        )
        .unwrap();
    let status: String = client
        .query_one(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name LIKE 'segments\\_%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "lost", "the slot was not invalidated");
    assert!(!equals(&mut client, de, DE_SQL), "nothing to catch up");
    client
        .query("SELECT * FROM segments.apply_changes()", &[])
        .unwrap();
    assert!(equals(&mut client, de, DE_SQL), "the full refresh differs");
    let (status, again): (String, String) = {
        let r = client
            .query_one(
                "SELECT s.wal_status, c.created_at::text FROM pg_replication_slots s
                   JOIN segments.capture_slot c USING (slot_name)",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_ne!(status, "lost");
    assert_ne!(created, again, "the slot was not made again");
    // And it captures again.
    client
        .batch_execute(
            "UPDATE customers SET unsubscribed = true WHERE country = 'DE' AND id % 5 = 0",
        )
        .unwrap();
    client
        .query("SELECT * FROM segments.apply_changes()", &[])
        .unwrap();
    assert!(equals(&mut client, de, DE_SQL));
    assert!(
        cluster
            .server_log()
            .contains("invalidated: its WAL was removed"),
        "the log does not say why the live segments were refreshed"
    );
}

/// DROP EXTENSION drops the slot and the publication; DROP DATABASE is not
/// blocked by the slot (PostgreSQL refuses to drop a database with one).
#[test]
fn no_slot_is_left_behind() {
    let cluster = Cluster::start(
        "wal-drop",
        &[
            "shared_preload_libraries=segments",
            "segments.naptime=1",
            "wal_level=logical",
            "segments.capture=wal",
        ],
    );
    let mut client = cluster.sample_unpinned("200");
    create(&mut client, "Live DE", DE).unwrap();
    wait_for("the scheduler's slot", 30, || {
        (count(&mut client, SLOTS) == 1).then_some(())
    });
    client
        .batch_execute("DROP EXTENSION segments CASCADE")
        .unwrap();
    assert_eq!(count(&mut client, SLOTS), 0, "DROP EXTENSION left the slot");
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM pg_publication WHERE pubname = 'segments_capture'"
        ),
        0,
        "DROP EXTENSION left the publication"
    );

    client.batch_execute("CREATE DATABASE other").unwrap();
    let mut other = cluster.connect("other");
    other
        .batch_execute(
            "CREATE TABLE customers (id int PRIMARY KEY, country text, unsubscribed bool DEFAULT false);
             INSERT INTO customers SELECT g, 'DE' FROM generate_series(1, 10) g;
             CREATE EXTENSION segments;
             SELECT segments.register_entity('customer', 'customers', 'id');",
        )
        .unwrap();
    create(&mut other, "Live DE", DE).unwrap();
    wait_for("the other database's slot", 30, || {
        (count(&mut client, SLOTS) == 1).then_some(())
    });
    drop(other);
    client
        .batch_execute("DROP DATABASE other WITH (FORCE)")
        .unwrap();
    assert_eq!(count(&mut client, SLOTS), 0, "DROP DATABASE left the slot");
}

/// Switching trigger -> wal -> trigger while a writer runs loses nothing:
/// each switch overlaps the two captures.
#[test]
fn switching_modes_under_writes_loses_nothing() {
    let cluster = Cluster::start(
        "wal-switch",
        &[
            "shared_preload_libraries=segments",
            "segments.naptime=1",
            "wal_level=logical",
        ],
    );
    let mut client = cluster.sample_unpinned("2000");
    client
        .batch_execute("ALTER TABLE orders REPLICA IDENTITY FULL")
        .unwrap();
    let de = create(&mut client, "Live DE", DE).unwrap();
    let buyers = create(&mut client, "Buyers", BUYERS).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let url = cluster.url("postgres");
        std::thread::spawn(move || {
            let mut w = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let mut i: i64 = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                w.batch_execute(&format!(
                    "UPDATE customers SET country = CASE WHEN country = 'DE' THEN 'FR' ELSE 'DE' END WHERE id = {};
                     INSERT INTO orders (id, customer_id, amount, ordered_at, status, channel) VALUES ({}, {}, 700, now(), 'paid', 'web');",
                    1 + (i * 7) % 2000,
                    70_000_000 + i,
                    1 + (i * 13) % 2000
                ))
                .unwrap();
            }
            i
        })
    };
    let mode = |client: &mut postgres::Client, m: &str| {
        client
            .batch_execute(&format!("ALTER SYSTEM SET segments.capture = '{m}'"))
            .unwrap();
        client.batch_execute("SELECT pg_reload_conf()").unwrap();
    };
    std::thread::sleep(Duration::from_secs(2));
    mode(&mut client, "wal");
    wait_for("the switch to WAL capture", 30, || {
        (count(&mut client, SLOTS) == 1
            && count(
                &mut client,
                "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'segments_live%'",
            ) == 0)
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    mode(&mut client, "trigger");
    wait_for("the switch back to triggers", 30, || {
        (count(&mut client, SLOTS) == 0
            && count(
                &mut client,
                "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'segments_live%'",
            ) > 0)
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(writes > 50, "the writer wrote {writes} times");
    wait_for("the last changes", 30, || {
        (equals(&mut client, de, DE_SQL) && equals(&mut client, buyers, BUYERS_SQL)).then_some(())
    });
}

/// An application that rolls back (or is killed) leaves the slot where the
/// last committed one left it: the next one decodes the same changes.
#[test]
fn a_rolled_back_application_decodes_its_changes_again() {
    let cluster = Cluster::start(
        "wal-rollback",
        &["wal_level=logical", "segments.capture=wal"],
    );
    let mut client = cluster.sample_unpinned("1000");
    let de = create(&mut client, "Live DE", DE).unwrap();
    client
        .query("SELECT * FROM segments.apply_changes()", &[])
        .unwrap();
    let position = |client: &mut postgres::Client| -> String {
        client
            .query_one("SELECT decoded_upto::text FROM segments.capture_slot", &[])
            .unwrap()
            .get(0)
    };
    let before = position(&mut client);
    client
        .batch_execute("UPDATE customers SET country = 'DE' WHERE id % 3 = 0")
        .unwrap();
    client
        .batch_execute("BEGIN; SELECT * FROM segments.apply_changes(); ROLLBACK;")
        .unwrap();
    assert_eq!(
        position(&mut client),
        before,
        "a rolled back application moved the position"
    );
    assert!(!equals(&mut client, de, DE_SQL));
    client
        .query("SELECT * FROM segments.apply_changes()", &[])
        .unwrap();
    assert!(equals(&mut client, de, DE_SQL), "the changes were lost");
    assert_ne!(position(&mut client), before);
    // The slot was advanced past them by a later decoding only: the next
    // application finds nothing new.
    client
        .query("SELECT * FROM segments.apply_changes()", &[])
        .unwrap();
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM segments.change_queue"),
        0
    );
}

/// A standby has no slot (slots are not replicated) and makes none; once
/// promoted, its scheduler makes one and refreshes the live segments in
/// full, then follows changes.
#[test]
fn a_promoted_standby_makes_its_own_slot() {
    let primary = Cluster::start(
        "wal-primary",
        &[
            "shared_preload_libraries=segments",
            "segments.naptime=1",
            "wal_level=logical",
            "segments.capture=wal",
        ],
    );
    let mut client = primary.sample_unpinned("1000");
    let de = create(&mut client, "Live DE", DE).unwrap();
    wait_for("the primary's slot", 30, || {
        (count(&mut client, SLOTS) == 1).then_some(())
    });
    let standby = primary.standby("wal-standby");
    let mut replica = standby.connect("postgres");
    wait_for("the standby", 30, || {
        (count(&mut replica, "SELECT count(*) FROM segments.capture_slot") == 1).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count(&mut replica, SLOTS), 0, "a standby made a slot");
    drop(client);
    standby.promote();
    let mut promoted = standby.connect("postgres");
    wait_for("the promoted server's slot", 30, || {
        (count(&mut promoted, SLOTS) == 1).then_some(())
    });
    promoted
        .batch_execute("UPDATE customers SET country = 'DE' WHERE id % 5 = 0")
        .unwrap();
    wait_for("the change on the promoted server", 30, || {
        equals(&mut promoted, de, DE_SQL).then_some(())
    });
    assert!(
        standby.server_log().contains("is missing"),
        "the log does not say why"
    );
}

/// The changed rows of the entity's table come from the WAL (the decoded
/// rows), not from the table again; results equal the table's.
#[test]
fn decoded_rows_spare_reading_the_entity_table() {
    let cluster = Cluster::start("wal-images", &["wal_level=logical", "segments.capture=wal"]);
    let mut client = cluster.sample_unpinned("3000");
    let de = create(&mut client, "Live DE", DE).unwrap();
    client
        .query("SELECT * FROM segments.apply_changes()", &[])
        .unwrap();
    // Rows read from customers by one application, inside its transaction
    // (index scans only: a scan of no key would read this small table
    // whole).
    client.batch_execute("SET enable_seqscan = off").unwrap();
    let read_by_apply = |client: &mut postgres::Client| -> i64 {
        // The counters can still hold the last transaction's reads: the
        // difference inside this one.
        let read = |t: &mut postgres::Transaction| -> i64 {
            t.query_one(
                "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables WHERE relname = 'customers'",
                &[],
            )
            .unwrap()
            .get(0)
        };
        let mut t = client.transaction().unwrap();
        let before = read(&mut t);
        t.query("SELECT * FROM segments.apply_changes()", &[])
            .unwrap();
        let after = read(&mut t);
        t.commit().unwrap();
        after - before
    };
    client
        .batch_execute(
            "UPDATE customers SET country = CASE WHEN country = 'DE' THEN 'FR' ELSE 'DE' END WHERE id % 10 = 0;
             INSERT INTO customers (id, code, country, unsubscribed, signed_up_at) VALUES (900001, 'N1', 'DE', false, now());",
        )
        .unwrap();
    let read = read_by_apply(&mut client);
    assert!(equals(&mut client, de, DE_SQL));
    assert_eq!(read, 0, "the application read {read} rows of customers");
    // A key changed twice in one batch: the later row wins.
    client
        .batch_execute(
            "UPDATE customers SET country = 'DE', unsubscribed = false WHERE id = 7;
             UPDATE customers SET unsubscribed = true WHERE id = 7;
             UPDATE customers SET country = 'IT' WHERE id = 9;
             DELETE FROM customers WHERE id = 900001;",
        )
        .unwrap();
    read_by_apply(&mut client);
    assert!(
        equals(&mut client, de, DE_SQL),
        "a later change lost to an earlier one"
    );
    // After a change of the column's type, the decoded text is not trusted:
    // the table is read, and the result is still exact.
    client
        .batch_execute(
            "UPDATE customers SET country = 'DE' WHERE id % 10 = 1;
             ALTER TABLE customers ALTER COLUMN country TYPE varchar(10);",
        )
        .unwrap();
    let read = read_by_apply(&mut client);
    assert!(equals(&mut client, de, DE_SQL));
    assert!(read > 0, "decoded rows of another type were used");
}

/// A dump of a database with WAL capture restores (`pg_restore -1`) with
/// its publication and no slot: the restored database makes its own slot
/// and refreshes its live segments in full, and DROP DATABASE of it is not
/// blocked by that slot.
#[test]
fn a_restored_database_makes_its_own_slot() {
    let cluster = Cluster::start(
        "wal-restore",
        &[
            "shared_preload_libraries=segments",
            "segments.naptime=3600",
            "wal_level=logical",
            "segments.capture=wal",
        ],
    );
    let mut client = cluster.sample_unpinned("500");
    client
        .batch_execute("ALTER TABLE orders REPLICA IDENTITY FULL")
        .unwrap();
    let de = create(&mut client, "Live DE", DE).unwrap();
    let buyers = create(&mut client, "Buyers", BUYERS).unwrap();
    client
        .query("SELECT * FROM segments.apply_changes()", &[])
        .unwrap();
    client
        .batch_execute("UPDATE customers SET country = 'DE' WHERE id % 4 = 0")
        .unwrap();
    let dump = std::env::temp_dir().join(format!("segments-wal-{}.dump", std::process::id()));
    let run = |command: &mut std::process::Command| {
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{command:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(std::process::Command::new(harness::pg_bin("pg_dump"))
        .args(["-Fc", "-f"])
        .arg(&dump)
        .arg(cluster.url("postgres")));
    client.batch_execute("CREATE DATABASE restored").unwrap();
    run(std::process::Command::new(harness::pg_bin("pg_restore"))
        .args(["-1", "-d"])
        .arg(cluster.url("restored"))
        .arg(&dump));
    let _ = std::fs::remove_file(&dump);
    let mut restored = cluster.connect("restored");
    assert_eq!(
        count(&mut restored, "SELECT count(*) FROM segments.capture_slot"),
        0,
        "the decoded position was dumped"
    );
    restored
        .query("SELECT * FROM segments.apply_changes()", &[])
        .unwrap();
    assert_eq!(
        count(&mut client, SLOTS),
        2,
        "the restored database has no slot of its own"
    );
    restored
        .batch_execute("UPDATE customers SET unsubscribed = true WHERE id % 6 = 0")
        .unwrap();
    restored
        .query("SELECT * FROM segments.apply_changes()", &[])
        .unwrap();
    assert!(
        equals(&mut restored, de, DE_SQL),
        "restored: live DE differs"
    );
    assert!(
        equals(&mut restored, buyers, BUYERS_SQL),
        "restored: buyers differ"
    );
    drop(restored);
    client.batch_execute("DROP DATABASE restored").unwrap();
    assert_eq!(count(&mut client, SLOTS), 1);
}

/// What the extension writes to its own tables is marked with the "do not
/// replicate" origin, which the slot's plugin skips before decoding: a
/// refresh's memberships are not decoded, while a user's writes before
/// and after it in the same transaction are; the slot then moves past the
/// refresh's WAL (nothing found is still progress); the session's
/// `output_plugin_libraries` is as it was.
#[test]
fn the_extension_s_own_writes_are_skipped_by_decoding() {
    let cluster = Cluster::start(
        "wal-own-writes",
        &["wal_level=logical", "segments.capture=wal"],
    );
    let mut client = cluster.sample_unpinned("2000");
    // A publication of the extension's membership table beside the
    // customers, read below through the same slot (from the slot's
    // position on, which the applications below move past its making).
    client
        .batch_execute("CREATE PUBLICATION probe FOR TABLE segments.membership, public.customers")
        .unwrap();
    let de = create(&mut client, "Live DE", DE).unwrap();
    let scheduled: i64 = client
        .query_one(
            "SELECT segments.create_segment('Buyers', $1::text::jsonb)",
            &[&BUYERS],
        )
        .unwrap()
        .get(0);
    // The first application makes the publication, the second the slot,
    // the next two move it on.
    for _ in 0..4 {
        client
            .query("SELECT * FROM segments.apply_changes()", &[])
            .unwrap();
    }
    assert_eq!(count(&mut client, SLOTS), 1);
    let plugins_before: Option<String> = client
        .query_one(
            "SELECT current_setting('output_plugin_libraries', true)",
            &[],
        )
        .unwrap()
        .get(0);
    client
        .batch_execute(
            "BEGIN;
             UPDATE customers SET country = 'DE', unsubscribed = false WHERE id = 1;
             SELECT count(*) FROM segments.refresh(ARRAY[(SELECT id FROM segments.segment WHERE name = 'Buyers')]);
             UPDATE customers SET country = 'FR' WHERE id = 2;
             COMMIT;",
        )
        .unwrap();
    let _ = scheduled;
    // Peeking with the extension's plugin from a test session: allowed in
    // it, where the server lists plugins.
    client
        .batch_execute(
            "DO $$ BEGIN
               IF current_setting('output_plugin_libraries', true) IS NOT NULL THEN
                 PERFORM set_config('output_plugin_libraries',
                                    current_setting('output_plugin_libraries') || ', segments', false);
               END IF;
             END $$",
        )
        .unwrap();
    let decoded = |client: &mut postgres::Client, table: &str| -> i64 {
        count(
            client,
            &format!(
                "SELECT count(*) FROM pg_logical_slot_peek_binary_changes(
                        (SELECT slot_name FROM segments.capture_slot), NULL, NULL,
                        'proto_version', '1', 'publication_names', 'probe') m
                  WHERE get_byte(m.data, 0) IN (ascii('I'), ascii('U'), ascii('D'))
                    AND ('x' || encode(substring(m.data FROM 2 FOR 4), 'hex'))::bit(32)::int
                        = '{table}'::regclass::oid::int"
            ),
        )
    };
    assert!(
        count(
            &mut client,
            &format!("SELECT count(*) FROM segments.membership WHERE segment_id = {scheduled}")
        ) > 0,
        "the refresh wrote no membership"
    );
    assert_eq!(
        decoded(&mut client, "segments.membership"),
        0,
        "the extension's own writes were decoded"
    );
    assert_eq!(
        decoded(&mut client, "public.customers"),
        2,
        "a user's writes around a refresh were not decoded"
    );
    client
        .batch_execute("RESET output_plugin_libraries")
        .unwrap();
    // Both users' changes are applied.
    client
        .batch_execute("BEGIN; SELECT count(*) FROM segments.apply_changes();")
        .unwrap();
    let plugins_after: Option<String> = client
        .query_one(
            "SELECT current_setting('output_plugin_libraries', true)",
            &[],
        )
        .unwrap()
        .get(0);
    client.batch_execute("COMMIT").unwrap();
    assert_eq!(
        plugins_after, plugins_before,
        "the session's setting changed"
    );
    assert!(equals(&mut client, de, DE_SQL), "a change was lost");
    // WAL with nothing for live segments (a table no live segment reads):
    // two applications later the slot keeps none of it, its restart
    // position past it too (a restart point once it trails by more than a
    // segment), and an application that found nothing recorded nothing.
    let recorded = |client: &mut postgres::Client| -> String {
        client
            .query_one("SELECT decoded_upto::text FROM segments.capture_slot", &[])
            .unwrap()
            .get(0)
    };
    let before = recorded(&mut client);
    client
        .batch_execute(
            "CREATE TABLE filler (x text);
             INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 30000);",
        )
        .unwrap();
    let after_filler: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .unwrap()
        .get(0);
    for _ in 0..2 {
        client
            .query("SELECT * FROM segments.apply_changes()", &[])
            .unwrap();
    }
    let past: bool = client
        .query_one(
            "SELECT confirmed_flush_lsn >= $1::text::pg_lsn AND restart_lsn >= $1::text::pg_lsn
               FROM pg_replication_slots WHERE slot_name LIKE 'segments\\_%'",
            &[&after_filler],
        )
        .unwrap()
        .get(0);
    assert!(past, "the slot still holds WAL it has no use for");
    assert_eq!(recorded(&mut client), before);
}

/// An application decodes the slot once: it confirms the position its
/// last decoding reached as a streaming client's reply does, instead of
/// `pg_replication_slot_advance`, which decodes again from the restart
/// position first (after a system refresh, gigabytes of the extension's
/// own WAL read twice; bench/NOTES.md). Counted in the server log, where
/// PostgreSQL names each decoding it starts.
#[test]
fn an_application_decodes_the_slot_once() {
    let cluster = Cluster::start(
        "wal-decodes-once",
        &[
            "wal_level=logical",
            "segments.capture=wal",
            "log_min_messages=debug1",
        ],
    );
    let mut client = cluster.sample_unpinned("2000");
    let de = create(&mut client, "Live DE", DE).unwrap();
    // The first applications make the publication and the slot.
    for _ in 0..3 {
        client
            .query("SELECT * FROM segments.apply_changes()", &[])
            .unwrap();
    }
    let decodings = |cluster: &Cluster| {
        cluster
            .server_log()
            .matches("starting logical decoding for slot")
            .count()
    };
    let before = decodings(&cluster);
    for id in 1..=3 {
        client
            .batch_execute(&format!(
                "UPDATE customers SET country = CASE WHEN country = 'DE' THEN 'FR' ELSE 'DE' END WHERE id = {id}"
            ))
            .unwrap();
        let runs = count(&mut client, "SELECT count(*) FROM segments.apply_changes()");
        assert!(runs > 0, "the change of customer {id} was not applied");
    }
    assert_eq!(
        decodings(&cluster) - before,
        3,
        "three applications decoded the slot more than three times"
    );
    assert!(equals(&mut client, de, DE_SQL), "a change was lost");
    // The slot is confirmed where the last decoding recorded it (by the
    // next application), and its restart position follows.
    client
        .query("SELECT * FROM segments.apply_changes()", &[])
        .unwrap();
    let confirmed: bool = client
        .query_one(
            "SELECT s.confirmed_flush_lsn >= c.decoded_upto AND s.restart_lsn <= s.confirmed_flush_lsn
               FROM pg_replication_slots s JOIN segments.capture_slot c USING (slot_name)",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(confirmed, "the slot was not confirmed where it was decoded");
}
