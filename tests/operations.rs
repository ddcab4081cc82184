//! Layer 3: running in production (README, Running in production): a
//! launcher and a scheduler per database, never in a DBA's way (DROP
//! DATABASE, RENAME, CREATE DATABASE ... TEMPLATE, ALTER EXTENSION), quiet
//! on a hot standby and back after promotion, its work visible
//! (`segments.activity`, `segments.schedulers`) and its growth bounded
//! (`segments.storage`, retention).

mod harness;

use harness::{sqlstate, wait_for, Cluster};

const PRELOAD: &[&str] = &["shared_preload_libraries=segments", "segments.naptime=1"];

/// A database with the extension, a small customers table registered and
/// one segment due for its first refresh; returns its client and the id.
fn database_with_a_due_segment(cluster: &Cluster, name: &str) -> (postgres::Client, i64) {
    let mut admin = cluster.connect("postgres");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let mut client = cluster.connect(name);
    client
        .batch_execute(
            "CREATE TABLE customers (id bigint PRIMARY KEY, country text);
             INSERT INTO customers SELECT i, (ARRAY['DE','FR'])[1 + i % 2] FROM generate_series(1, 100) i;
             CREATE EXTENSION segments;
             SELECT segments.register_entity('customer', 'customers', 'id');",
        )
        .unwrap();
    let id: i64 = client
        .query_one(
            "SELECT segments.quick_segment('Germans', 'customer', 'country', 'eq', '\"DE\"')",
            &[],
        )
        .unwrap()
        .get(0);
    (client, id)
}

fn refreshed(client: &mut postgres::Client, id: i64) -> bool {
    client
        .query_one(
            "SELECT status = 'succeeded' FROM segments.segment WHERE id = $1",
            &[&id],
        )
        .unwrap()
        .get(0)
}

fn scheduler_states(client: &mut postgres::Client) -> Vec<(String, String)> {
    client
        .query(
            "SELECT database, state FROM segments.schedulers WHERE database IS NOT NULL ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Three databases with the extension each get a scheduler that refreshes
/// their due segments; a fourth gets one as soon as it creates the
/// extension; a database without it has none running.
#[test]
fn a_scheduler_serves_every_database_with_the_extension() {
    let cluster = Cluster::start("schedulers", PRELOAD);
    let mut dbs: Vec<(postgres::Client, i64)> = ["shop_a", "shop_b", "shop_c"]
        .iter()
        .map(|name| database_with_a_due_segment(&cluster, name))
        .collect();
    for (client, id) in dbs.iter_mut() {
        wait_for("each database's scheduler to refresh", 30, || {
            refreshed(client, *id).then_some(())
        });
    }
    let mut admin = cluster.connect("postgres");
    admin.batch_execute("CREATE DATABASE plain").unwrap();
    let (mut fourth, id) = database_with_a_due_segment(&cluster, "shop_d");
    wait_for("the fourth database's scheduler", 15, || {
        refreshed(&mut fourth, id).then_some(())
    });
    let states = scheduler_states(&mut fourth);
    for name in ["shop_a", "shop_b", "shop_c", "shop_d"] {
        let state = states
            .iter()
            .find(|(d, _)| d == name)
            .map(|(_, s)| s.as_str());
        assert!(
            matches!(state, Some("idle") | Some("running")),
            "{name}: {states:?}"
        );
    }
    // postgres and plain have no extension: no scheduler stays there.
    let running: Vec<String> = admin
        .query(
            "SELECT datname::text FROM pg_stat_activity WHERE backend_type = 'segments scheduler' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(running, ["shop_a", "shop_b", "shop_c", "shop_d"]);
    let launchers: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'segments launcher'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(launchers, 1);
}

/// DROP DATABASE, ALTER DATABASE ... RENAME and CREATE DATABASE ...
/// TEMPLATE of a database whose scheduler runs work without FORCE; DROP
/// EXTENSION and ALTER EXTENSION are not blocked; the renamed database
/// gets its scheduler back; nothing logs a missing database afterwards.
#[test]
fn the_dba_needs_no_force() {
    let cluster = Cluster::start("dba", PRELOAD);
    let (mut shop, id) = database_with_a_due_segment(&cluster, "shop");
    wait_for("the scheduler", 30, || {
        refreshed(&mut shop, id).then_some(())
    });
    drop(shop);
    let mut admin = cluster.connect("postgres");
    // A role that may not drop or rename the database stops no scheduler
    // by trying: its statement fails PostgreSQL's own check (42501).
    let pid_of = |admin: &mut postgres::Client| -> Option<i32> {
        admin
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'segments scheduler' AND datname = 'shop'",
                &[],
            )
            .unwrap()
            .map(|r| r.get(0))
    };
    let before = wait_for("shop's scheduler", 30, || pid_of(&mut admin));
    admin
        .batch_execute("CREATE ROLE mallory LOGIN CREATEDB")
        .unwrap();
    let mut mallory = harness::connect_as(&cluster, "mallory");
    for sql in ["DROP DATABASE shop", "ALTER DATABASE shop RENAME TO stolen"] {
        let error = mallory.batch_execute(sql).unwrap_err();
        assert_eq!(sqlstate(&error).0, "42501", "{sql}");
    }
    assert_eq!(
        pid_of(&mut admin),
        Some(before),
        "a refused statement stopped the scheduler"
    );
    drop(mallory);
    admin
        .batch_execute("ALTER DATABASE shop RENAME TO store")
        .unwrap();
    let mut store = cluster.connect("store");
    let id2: i64 = store
        .query_one(
            "SELECT segments.quick_segment('French', 'customer', 'country', 'eq', '\"FR\"')",
            &[],
        )
        .unwrap()
        .get(0);
    wait_for("the renamed database's scheduler", 30, || {
        refreshed(&mut store, id2).then_some(())
    });
    drop(store);
    admin
        .batch_execute("CREATE DATABASE copy TEMPLATE store")
        .unwrap();
    let mut copy = cluster.connect("copy");
    // The copy gets a scheduler of its own; ALTER EXTENSION and DROP
    // EXTENSION withdraw it first, and it does not come back.
    wait_for("the copy's scheduler", 30, || {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'segments scheduler' AND datname = 'copy'",
                &[],
            )
            .unwrap()
            .get(0);
        (n == 1).then_some(())
    });
    copy.batch_execute("ALTER EXTENSION segments UPDATE")
        .unwrap();
    copy.batch_execute("DROP EXTENSION segments CASCADE")
        .unwrap();
    drop(copy);
    wait_for("the copy's scheduler to go for good", 30, || {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'segments scheduler' AND datname = 'copy'",
                &[],
            )
            .unwrap()
            .get(0);
        (n == 0).then_some(())
    });
    wait_for("a scheduler back in store", 30, || {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'segments scheduler' AND datname = 'store'",
                &[],
            )
            .unwrap()
            .get(0);
        (n == 1).then_some(())
    });
    admin.batch_execute("DROP DATABASE store").unwrap();
    admin.batch_execute("DROP DATABASE copy").unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let log = cluster.server_log();
    assert!(
        !log.contains("does not exist") || !log.contains("FATAL:  database"),
        "a scheduler looked for a dropped database:\n{log}"
    );
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'segments scheduler'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

/// A streaming replica reads everything, refuses writes with 25006, logs
/// nothing of schedulers, sees memberships replayed from the primary
/// (through each backend's bitmap cache), and after promotion gets its
/// schedulers within a naptime.
#[test]
fn a_standby_reads_refuses_writes_and_schedules_once_promoted() {
    let primary = Cluster::start("primary", PRELOAD);
    let mut client = primary.sample("500");
    let id: i64 = client
        .query_one(
            "SELECT segments.quick_segment('Germans', 'customer', 'country', 'eq', '\"DE\"')",
            &[],
        )
        .unwrap()
        .get(0);
    client
        .batch_execute("SELECT * FROM segments.refresh()")
        .unwrap();
    let standby = primary.standby("standby");
    let mut replica = standby.connect("postgres");
    let in_recovery: bool = replica
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(in_recovery);
    let key: i64 = client
        .query_one("SELECT min(id) FROM customers WHERE country = 'DE'", &[])
        .unwrap()
        .get(0);
    for sql in [
        format!("SELECT count(*) FROM segments.customer_members WHERE segment_id = {id}"),
        format!("SELECT count(*) FROM segments.preview({id}, 5)"),
        format!("SELECT segments.is_member({id}, {key}::bigint)::int"),
        format!("SELECT count(*) FROM segments.segments_of('customer', {key}::bigint)"),
        format!("SELECT count(*) FROM segments.trend({id})"),
        format!("SELECT count(*) FROM segments.rule_counts({id})"),
        format!("SELECT count(*) FROM segments.overlap({id}, {id})"),
        format!("SELECT octet_length(segments.bitmap({id}))"),
        format!("SELECT count(*) FROM segments.members_at({id}, now())"),
        format!("SELECT count(*) FROM segments.explain_member({id}, {key}::bigint)"),
        format!("SELECT length(segments.explain({id}))"),
        "SELECT count(*) FROM segments.estimate('{\"entity\":\"customer\",\"rules\":[{\"where\":{\"attribute\":\"country\",\"op\":\"eq\",\"value\":\"FR\"}}]}')".to_string(),
        "SELECT count(*) FROM segments.suggest('customer', 'age', ARRAY['country'], 2)".to_string(),
        "SELECT count(*) FROM segments.segment_list".to_string(),
        "SELECT count(*) FROM segments.storage".to_string(),
        "SELECT count(*) FROM segments.activity".to_string(),
    ] {
        replica
            .query_one(sql.as_str(), &[])
            .unwrap_or_else(|e| panic!("on the standby, {sql}: {:?}", sqlstate(&e)));
    }
    let member: bool = replica
        .query_one(
            &format!("SELECT segments.is_member({id}, {key}::bigint)"),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(member);
    for sql in [
        "SELECT * FROM segments.refresh()",
        "SELECT segments.apply_changes()",
        "SELECT segments.run_due()",
        "SELECT segments.quick_segment('x', 'customer', 'country', 'eq', '\"ES\"')",
    ] {
        let error = replica.batch_execute(sql).unwrap_err();
        assert_eq!(sqlstate(&error).0, "25006", "{sql}: {error}");
    }
    // The primary changes the membership; the standby's cached bitmap
    // follows the replayed row.
    client
        .batch_execute(&format!(
            "UPDATE customers SET country = 'FR' WHERE id = {key}; SELECT * FROM segments.refresh();"
        ))
        .unwrap();
    wait_for("the standby to replay the refresh", 30, || {
        let member: bool = replica
            .query_one(
                &format!("SELECT segments.is_member({id}, {key}::bigint)"),
                &[],
            )
            .unwrap()
            .get(0);
        (!member).then_some(())
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    let log = standby.server_log();
    assert!(!log.contains("segments scheduler"), "{log}");
    assert!(!log.contains("segments launcher"), "{log}");
    let schedulers: i64 = replica
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'segments%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(schedulers, 0);
    drop(client);
    standby.promote();
    let due: i64 = replica
        .query_one(
            "SELECT segments.quick_segment('Spanish', 'customer', 'country', 'eq', '\"ES\"')",
            &[],
        )
        .unwrap()
        .get(0);
    wait_for("a scheduler after promotion", 20, || {
        refreshed(&mut replica, due).then_some(())
    });
}

/// A refresh of several seconds shows in `segments.activity` from another
/// session, with its phase and progress; `segments.schedulers` shows the
/// scheduler.
#[test]
fn activity_shows_a_running_refresh() {
    let cluster = Cluster::start("activity", &["shared_preload_libraries=segments"]);
    let mut client = cluster.sample("1000");
    client
        .batch_execute(
            "SELECT segments.quick_segment('Germans', 'customer', 'country', 'eq', '\"DE\"');
             SELECT segments.quick_segment('French', 'customer', 'country', 'eq', '\"FR\"');",
        )
        .unwrap();
    // A session holds the table: the refresh waits in its computing phase.
    let mut holder = cluster.connect("postgres");
    holder
        .batch_execute("BEGIN; LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let url = cluster.url("postgres");
    let refresher = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        c.batch_execute("SELECT * FROM segments.refresh()").unwrap();
        pid
    });
    let mut watcher = cluster.connect("postgres");
    let row = wait_for("the refresh in segments.activity", 20, || {
        watcher
            .query_opt(
                "SELECT kind, phase, segments_done, segments_total, backend_type, database,
                        started_at IS NOT NULL, cardinality(segments)
                   FROM segments.activity WHERE kind = 'refresh' AND phase <> 'loading'",
                &[],
            )
            .unwrap()
    });
    let (kind, phase, done, total): (String, String, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(kind, "refresh");
    // Waiting for the lock, in planning (the catalog of the table) or in
    // its scan.
    assert!(
        matches!(phase.as_str(), "planning" | "scanning public.customers"),
        "{phase}"
    );
    assert_eq!(row.get::<_, Option<i32>>(7), Some(2), "its two segments");
    assert_eq!((done, total), (0, 2));
    assert_eq!(
        row.get::<_, Option<String>>(4).as_deref(),
        Some("client backend")
    );
    assert_eq!(row.get::<_, Option<String>>(5).as_deref(), Some("postgres"));
    assert!(row.get::<_, bool>(6));
    std::thread::sleep(std::time::Duration::from_secs(2));
    holder.batch_execute("COMMIT").unwrap();
    refresher.join().unwrap();
    let left: i64 = watcher
        .query_one("SELECT count(*) FROM segments.activity", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "a finished refresh left its slot");
    let schedulers = scheduler_states(&mut watcher);
    assert!(
        schedulers.iter().any(|(d, _)| d == "postgres"),
        "{schedulers:?}"
    );
    let columns: i64 = watcher
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'segments' AND table_name = 'schedulers'
                AND column_name IN ('database', 'pid', 'started_at', 'last_pass_started_at', 'last_pass_finished_at', 'last_error')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(columns, 6);
}

/// Every table the extension fills is in `segments.storage`, with what
/// bounds it; the history trim removes old runs and old definition
/// versions but never a segment's latest.
#[test]
fn storage_is_listed_and_retention_enforced() {
    let cluster = Cluster::start("storage", &[]);
    let mut client = cluster.sample("200");
    let listed: Vec<String> = client
        .query("SELECT table_name FROM segments.storage ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let filled: Vec<String> = client
        .query(
            "SELECT relname::text FROM pg_class WHERE relnamespace = 'segments'::regnamespace AND relkind = 'r'
                AND relname NOT IN ('entity', 'related', 'segment', 'export', 'sequence', 'sequence_segment',
                                    'limits', 'usage_kind', 'scheduler_state', 'trait',
                                    'segment_split', 'priority_list', 'feed', 'feed_clock')
              ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        listed, filled,
        "segments.storage lists every table the extension fills"
    );
    let unbounded: i64 = client
        .query_one(
            "SELECT count(*) FROM segments.storage WHERE retention IS NULL OR bytes IS NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(unbounded, 0);
    let id: i64 = client
        .query_one(
            "SELECT segments.quick_segment('Germans', 'customer', 'country', 'eq', '\"DE\"')",
            &[],
        )
        .unwrap()
        .get(0);
    client
        .batch_execute(&format!(
            "SELECT * FROM segments.refresh();
             SELECT segments.rename({id}, 'Deutsche');
             SELECT segments.rename({id}, 'Germans again');
             SELECT * FROM segments.refresh();
             UPDATE segments.refresh_run SET started_at = started_at - interval '100 days';
             UPDATE segments.definition_version SET changed_at = changed_at - interval '100 days';
             SET segments.history_retention = '90 days';
             SELECT segments.run_due();"
        ))
        .unwrap();
    let runs: i64 = client
        .query_one(
            "SELECT count(*) FROM segments.refresh_run WHERE started_at < now() - interval '90 days'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(runs, 0, "old runs are trimmed");
    let versions: Vec<String> = client
        .query(
            "SELECT name FROM segments.definition_version WHERE segment_id = $1 ORDER BY version",
            &[&id],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, ["Germans again"], "only the latest version stays");
    let kept: String = client
        .query_one(
            "SELECT definition #>> '{rules,0,where,value}' FROM segments.definition_version WHERE segment_id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        kept, "DE",
        "the kept version got its definition written out"
    );

    // A change queue longer than a batch is applied as one refresh of the
    // entity's live segments, and emptied.
    let live: i64 = client
        .query_one(
            r#"SELECT segments.create_segment('Live French', '{"entity":"customer","rules":[{"where":{"attribute":"country","op":"eq","value":"FR"}}]}', schedule => 'live')"#,
            &[],
        )
        .unwrap()
        .get(0);
    client
        .batch_execute(
            "SELECT * FROM segments.refresh();
             INSERT INTO segments.change_queue (entity, key) SELECT 'customer', i::text FROM generate_series(1, 100001) i;
             SELECT segments.apply_changes();",
        )
        .unwrap();
    let left: i64 = client
        .query_one("SELECT count(*) FROM segments.change_queue", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let (trigger, examined): (String, Option<i64>) = client
        .query_one(
            "SELECT trigger, keys_examined FROM segments.refresh_run WHERE segment_id = $1 ORDER BY id DESC LIMIT 1",
            &[&live],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((trigger.as_str(), examined), ("live", None));
    // Every run records its peak memory: at least the bitmap it wrote
    // (serialized in the library's memory before it is stored).
    let (peak, written): (Option<i64>, i32) = client
        .query_one(
            "SELECT r.peak_memory, pg_catalog.length(m.members) FROM segments.refresh_run r, segments.membership m
              WHERE r.segment_id = $1 AND m.segment_id = $1 ORDER BY r.id DESC LIMIT 1",
            &[&live],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert!(
        peak.is_some_and(|peak| peak >= written as i64 && written > 0),
        "peak_memory {peak:?} for a bitmap of {written} bytes"
    );
}

/// The ProcessUtility hook leaves a statement's errors as PostgreSQL
/// raised them: their position and context reach the client (PostgreSQL's
/// own regression suite compares them).
#[test]
fn utility_errors_keep_their_position_and_context() {
    let cluster = Cluster::start("hook-errors", PRELOAD);
    let mut client = cluster.connect("postgres");
    let error = client
        .batch_execute("CREATE TABLE t (a nosuch_type)")
        .unwrap_err();
    let db = error.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "42704");
    assert!(
        db.position().is_some(),
        "the error lost its position: {db:?}"
    );
    let error = client
        .batch_execute(
            "CREATE FUNCTION boom() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1/0; END $$;
             CREATE TABLE u (a int DEFAULT boom()); INSERT INTO u DEFAULT VALUES;",
        )
        .unwrap_err();
    let db = error.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "22012");
    assert!(
        db.where_().is_some_and(|w| w.contains("boom")),
        "the error lost its context: {db:?}"
    );
    let error = client
        .batch_execute("DO $$ BEGIN PERFORM 1/0; END $$")
        .unwrap_err();
    let db = error.as_db_error().expect("a database error");
    assert!(
        db.where_().is_some_and(|w| w.contains("PL/pgSQL")),
        "DO lost its context: {db:?}"
    );
}

/// Inactive segments (the active-segment limit does not count them) cost
/// a pass nothing once recorded as skipped: the next system refresh
/// records no run for them.
#[test]
fn inactive_segments_are_skipped_once() {
    let cluster = Cluster::start("inactive", &[]);
    let mut client = cluster.sample("100");
    client
        .batch_execute(
            r#"SELECT segments.create_segment('inactive ' || i, '{"entity":"customer","rules":[{"where":{"attribute":"country","op":"eq","value":"DE"}}]}', active => false)
                 FROM generate_series(1, 1000) i;"#,
        )
        .unwrap();
    let runs = |client: &mut postgres::Client| -> i64 {
        client
            .query_one("SELECT count(*) FROM segments.refresh_run", &[])
            .unwrap()
            .get(0)
    };
    let system_due = "UPDATE segments.scheduler_state SET last_run = now() - interval '2 days' WHERE job = 'system'; \
                      SELECT segments.run_due();";
    let before = runs(&mut client);
    client.batch_execute(system_due).unwrap();
    let first = runs(&mut client) - before;
    assert_eq!(
        first, 1000,
        "each inactive segment recorded as skipped once"
    );
    client.batch_execute(system_due).unwrap();
    let second = runs(&mut client) - before - first;
    assert_eq!(second, 0, "already skipped: nothing recorded again");
    let skipped: i64 = client
        .query_one(
            "SELECT count(*) FROM segments.segment WHERE status = 'skipped'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(skipped, 1000);
}

/// Renaming the entity's key column is followed: registration, members
/// view, live capture and refresh carry on under the new name.
#[test]
fn renaming_the_key_column_is_followed() {
    let cluster = Cluster::start("key-rename", &[]);
    let mut client = cluster.sample("300");
    let live: i64 = client
        .query_one(
            r#"SELECT segments.create_segment('Live Germans', '{"entity":"customer","rules":[{"where":{"attribute":"country","op":"eq","value":"DE"}}]}', schedule => 'live')"#,
            &[],
        )
        .unwrap()
        .get(0);
    client
        .batch_execute(
            "SELECT * FROM segments.refresh();
             ALTER TABLE customers RENAME COLUMN id TO customer_no;
             UPDATE customers SET country = 'DE' WHERE customer_no BETWEEN 1 AND 20;
             SELECT segments.apply_changes();",
        )
        .expect("writes and apply after renaming the key column");
    let count = |client: &mut postgres::Client, sql: &str| -> i64 {
        client.query_one(sql, &[]).unwrap().get(0)
    };
    let truth = count(
        &mut client,
        "SELECT count(*) FROM customers WHERE country = 'DE'",
    );
    let members = count(
        &mut client,
        &format!("SELECT member_count FROM segments.segment WHERE id = {live}"),
    );
    assert_eq!(members, truth, "live apply after the key rename");
    client
        .batch_execute("SELECT * FROM segments.refresh()")
        .unwrap();
    let failed = count(
        &mut client,
        "SELECT count(*) FROM segments.segment WHERE status = 'failed'",
    );
    assert_eq!(failed, 0, "refresh after the key rename");
    let viewed = count(
        &mut client,
        &format!("SELECT count(*) FROM segments.customer_members WHERE segment_id = {live}"),
    );
    assert_eq!(viewed, truth, "the members view follows the rename");
    let registered: String = client
        .query_one(
            "SELECT key_column::text FROM segments.entity WHERE name = 'customer'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(registered, "customer_no");
}

/// The transaction ids assigned so far (the next one to assign), read
/// without assigning one.
fn next_xid(client: &mut postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
            &[],
        )
        .unwrap()
        .get(0)
}

/// A database whose scheduler has nothing to do gets nothing written by
/// it: no transaction id, so no commit record, no WAL for archiving or
/// standbys, no tuple for vacuum, pass after pass (naptime 1 s). With a
/// daily segment, a live one (trigger capture) whose change was applied,
/// a feed and history within its retention, all of which a pass checks.
#[test]
fn an_idle_database_gets_no_transaction_from_its_scheduler() {
    // Nothing else assigns ids here: autovacuum's ANALYZE would.
    let cluster = Cluster::start(
        "idle",
        &[
            "shared_preload_libraries=segments",
            "segments.naptime=1",
            "autovacuum=off",
        ],
    );
    let (mut client, id) = database_with_a_due_segment(&cluster, "idle_shop");
    wait_for("the first refresh", 30, || {
        refreshed(&mut client, id).then_some(())
    });
    client
        .batch_execute(&format!(
            "SELECT segments.set_schedule(ARRAY[{id}]::bigint[], 'live');
             SELECT segments.create_feed('crm', ARRAY[{id}]::bigint[]);
             UPDATE customers SET country = 'DE' WHERE id = 1;"
        ))
        .unwrap();
    wait_for("the live change to be applied", 30, || {
        let member: bool = client
            .query_one("SELECT segments.is_member($1, 1)", &[&id])
            .unwrap()
            .get(0);
        member.then_some(())
    });
    let daily: i64 = client
        .query_one(
            "SELECT segments.quick_segment('French', 'customer', 'country', 'eq', '\"FR\"')",
            &[],
        )
        .unwrap()
        .get(0);
    client
        .batch_execute(&format!(
            "SELECT segments.set_schedule(ARRAY[{daily}]::bigint[], 'daily')"
        ))
        .unwrap();
    wait_for("the daily segment's first refresh", 30, || {
        refreshed(&mut client, daily).then_some(())
    });
    // The passes still busy with the above end.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let before = next_xid(&mut client);
    std::thread::sleep(std::time::Duration::from_secs(5));
    let after = next_xid(&mut client);
    assert_eq!(
        after,
        before,
        "the scheduler assigned {} transaction id(s) in five idle passes",
        after - before
    );
    // And it still works: a change is applied.
    client
        .batch_execute("UPDATE customers SET country = 'FR' WHERE id = 1")
        .unwrap();
    wait_for("the next live change", 30, || {
        let member: bool = client
            .query_one("SELECT segments.is_member($1, 1)", &[&id])
            .unwrap()
            .get(0);
        (!member).then_some(())
    });
}
