//! Layer 3: a DBA's backup drill. A database holding every kind of thing
//! segments keeps is dumped with `pg_dump -Fc` and restored with plain
//! `pg_restore` into new databases, in one transaction (`-1`) and with
//! `--exit-on-error`; every row of every table the extension keeps
//! (bitmaps included), the capture triggers and the members views must come
//! back as they were, and the restored database must go on working.

mod harness;

use std::process::Command;

use harness::{Cluster, ANCHOR};

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every row of every table segments keeps (the tables it marks for
/// pg_dump), as text, by table; the capture triggers; the members views.
fn state(client: &mut postgres::Client) -> Vec<(String, String)> {
    let tables: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_extension x, unnest(x.extconfig) AS t(oid) JOIN pg_class c ON c.oid = t.oid
              WHERE x.extname = 'segments' AND c.relkind = 'r' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.len() >= 15, "{tables:?}");
    let mut out = Vec::new();
    for table in tables {
        let rows: Option<String> = client
            .query_one(
                &format!(
                    "SELECT string_agg(t::text, E'\\n' ORDER BY t::text) FROM segments.{table} t"
                ),
                &[],
            )
            .unwrap()
            .get(0);
        out.push((table, rows.unwrap_or_default()));
    }
    let triggers: Option<String> = client
        .query_one(
            "SELECT string_agg(pg_get_triggerdef(oid), E'\\n' ORDER BY tgname) FROM pg_trigger WHERE tgname LIKE 'segments\\_live\\_%'",
            &[],
        )
        .unwrap()
        .get(0);
    out.push(("capture triggers".into(), triggers.unwrap_or_default()));
    for view in [
        "customer_members",
        "by_code_members",
        "customer_traits",
        "priority_assignment",
    ] {
        let rows: String = client
            .query_one(
                &format!("SELECT count(*) || ' rows, ' || coalesce(md5(string_agg(v::text, ',' ORDER BY v::text)), '') FROM segments.{view} v"),
                &[],
            )
            .unwrap()
            .get(0);
        out.push((view.into(), rows));
    }
    out
}

#[test]
fn a_restore_brings_back_every_segment() {
    // Only the source database has a scheduler: the restored copies must
    // stay exactly as restored while they are compared.
    let cluster = Cluster::start(
        "backup",
        &[
            "shared_preload_libraries=segments",
            "segments.database=postgres",
        ],
    );
    let mut admin = cluster.sample_database(
        "800",
        ANCHOR,
        "SELECT segments.register_related('customer', 'email_events', 'email_events', 'customer_id', 'occurred_at');
         SELECT segments.register_entity('by_code', 'customers', 'code');
         SELECT segments.register_related('by_code', 'orders', 'orders', 'customer_id', 'ordered_at');
         CREATE ROLE ed LOGIN IN ROLE segments_editor, segments_sequence_manager;
         CREATE ROLE bi LOGIN;
         GRANT SELECT ON customers, orders, email_events TO ed;
         GRANT SELECT ON segments.customer_members TO bi;
         CREATE SCHEMA out AUTHORIZATION ed;",
    );
    let mut ed = postgres::Client::connect(
        &cluster.url("postgres").replace("user=postgres", "user=ed"),
        postgres::NoTls,
    )
    .unwrap();
    ed.batch_execute(
        r#"SELECT segments.create_segment('Germany', '{"entity":"customer","rules":[{"where":{"attribute":"country","op":"eq","value":"DE"}}]}');
           SELECT segments.create_segment('Buyers', '{"entity":"customer","rules":[{"where":{"related":"orders","within":"90 days"}}]}');
           SELECT segments.create_segment('German buyers', '{"entity":"customer","rules":[{"where":{"segment":"Germany"}},{"combine":"intersect","where":{"segment":"Buyers"}}]}');
           SELECT segments.create_segment('Big spenders live', '{"entity":"customer","rules":[{"where":{"related":"orders","aggregate":"sum","attribute":"amount","op":"gt","value":500}}]}', schedule => 'live');
           SELECT segments.create_segment('Berlin live', '{"entity":"customer","rules":[{"where":{"attribute":"city","op":"eq","value":"Berlin"}}]}', schedule => 'live');
           SELECT segments.create_segment('Openers by code', '{"entity":"by_code","rules":[{"where":{"related":"orders","exists":true}},{"combine":"except","where":{"attribute":"unsubscribed","op":"eq","value":true}}]}');
           SELECT segments.create_segment('Hand picked', '{"entity":"customer","rules":[{"where":{"attribute":"age","op":"lt","value":30}}]}', type => 'static');
           SELECT count(*) FROM segments.refresh();
           UPDATE segments.segment SET definition = '{"entity":"customer","rules":[{"where":{"attribute":"country","op":"in","value":["DE","AT"]}}]}' WHERE name = 'Germany';
           SELECT count(*) FROM segments.refresh();
           SELECT segments.create_export('buyers', ARRAY[2::bigint], 'out.buyers');
           SELECT segments.create_sequence('Welcome', 'by_code');
           SELECT segments.connect_sequence(1, ARRAY[6::bigint]);
           SELECT segments.connect_records(1, ARRAY['C00000001']);
           SELECT segments.add_usage(3, 'journey', 'Winback');
           SELECT segments.create_trait('order_count', 'customer', '{"related": "orders", "aggregate": "count"}');
           SELECT segments.refresh_traits('customer');
           SELECT segments.split(1, '{"control": 10, "rest": 90}');
           SELECT segments.create_priority_list('offers', ARRAY[2, 1]::bigint[]);
           SELECT segments.create_feed('crm', ARRAY[1, 2]::bigint[]);
           SELECT segments.ack_feed('crm', (SELECT max(position) FROM segments.read_feed('crm', 50)));"#,
    )
    .unwrap();
    // Changes captured and not yet applied go into the dump too.
    admin
        .batch_execute("UPDATE customers SET city = 'Berlin' WHERE id BETWEEN 1 AND 5")
        .unwrap();
    let queued: i64 = admin
        .query_one("SELECT count(*) FROM segments.change_queue", &[])
        .unwrap()
        .get(0);
    assert!(queued > 0);
    let before = state(&mut admin);

    let dump = std::env::temp_dir().join(format!("segments-backup-{}.dump", std::process::id()));
    run(Command::new(harness::pg_bin("pg_dump"))
        .arg("-Fc")
        .arg("-f")
        .arg(&dump)
        .arg(cluster.url("postgres")));
    for (database, mode) in [
        ("restored_single", "-1"),
        ("restored_exit", "--exit-on-error"),
    ] {
        admin
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .unwrap();
        run(Command::new(harness::pg_bin("pg_restore"))
            .arg(mode)
            .arg("-d")
            .arg(cluster.url(database))
            .arg(&dump));
        let mut restored = cluster.connect(database);
        let after = state(&mut restored);
        for ((table, rows), (table_after, rows_after)) in before.iter().zip(&after) {
            assert_eq!(table, table_after);
            assert!(
                rows == rows_after,
                "{mode}: {table} differs after the restore:\nbefore:\n{rows}\nafter:\n{rows_after}"
            );
        }
        assert_eq!(before.len(), after.len());
        let grants: bool = restored
            .query_one(
                "SELECT has_table_privilege('bi', 'segments.customer_members', 'SELECT')",
                &[],
            )
            .unwrap()
            .get(0);
        assert!(grants, "{mode}: the members view keeps its grants");

        // The restored database works: refreshes, live capture and apply.
        restored
            .batch_execute("SET segments.reference_time = '2026-11-01'")
            .unwrap();
        let failed: i64 = restored
            .query_one(
                "SELECT count(*) FROM segments.refresh() WHERE status <> 'succeeded'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(
            failed, 0,
            "{mode}: every segment refreshes after the restore"
        );
        restored.batch_execute("UPDATE customers SET city = 'Berlin' WHERE id BETWEEN 6 AND 9; SELECT segments.apply_changes()").unwrap();
        let (count, truth): (i64, i64) = restored
            .query_one(
                "SELECT member_count, (SELECT count(*) FROM customers WHERE city = 'Berlin') FROM segments.segment WHERE name = 'Berlin live'",
                &[],
            )
            .map(|r| (r.get(0), r.get(1)))
            .unwrap();
        assert_eq!(count, truth, "{mode}: live capture works after the restore");
        let versions: i64 = restored
            .query_one("SELECT count(*) FROM segments.definition_history", &[])
            .unwrap()
            .get(0);
        assert!(
            versions >= 8,
            "{mode}: history restored ({versions} versions)"
        );
    }
    // A dump without the usages of kind 'segment' (as 0.2.0 dumped them):
    // the restore derives them from the definitions.
    let segment_usages: i64 = admin
        .query_one(
            "SELECT count(*) FROM segments.usage_registry WHERE kind = 'segment'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(segment_usages > 0);
    let list = Command::new(harness::pg_bin("pg_restore"))
        .arg("-l")
        .arg(&dump)
        .output()
        .unwrap();
    let list: String = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|line| !line.contains("TABLE DATA segments usage_registry"))
        .map(|line| format!("{line}\n"))
        .collect();
    let list_file =
        std::env::temp_dir().join(format!("segments-backup-{}.list", std::process::id()));
    std::fs::write(&list_file, list).unwrap();
    admin
        .batch_execute("CREATE DATABASE restored_without_usages")
        .unwrap();
    run(Command::new(harness::pg_bin("pg_restore"))
        .arg("-1")
        .arg("-L")
        .arg(&list_file)
        .arg("-d")
        .arg(cluster.url("restored_without_usages"))
        .arg(&dump));
    let derived: i64 = cluster
        .connect("restored_without_usages")
        .query_one(
            "SELECT count(*) FROM segments.usage_registry WHERE kind = 'segment'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        derived, segment_usages,
        "usages of kind segment are derived when the dump has none"
    );
    let _ = std::fs::remove_file(&list_file);
    let _ = std::fs::remove_file(&dump);
    eprintln!(
        "restored twice (-1 and --exit-on-error): {} tables, triggers and views compared equal",
        before.len()
    );
}

/// pg_dump and pg_restore keep every segment, its membership and history.
#[test]
fn dump_and_restore_keep_segments_memberships_and_history() {
    let cluster = Cluster::start("dump", &[]);
    let mut source = cluster.sample("2000");
    source
        .batch_execute(
            r#"SELECT segments.quick_segment('Germans', 'customer', 'country', 'eq', '"DE"');
               SELECT segments.create_segment('Young Germans', '{"entity":"customer","rules":[
                  {"where":{"segment":"Germans"}},{"combine":"intersect","where":{"attribute":"age","op":"lt","value":30}}]}',
                  tags => '{a,b}');
               SELECT * FROM segments.refresh();
               UPDATE customers SET country = 'DE' WHERE id <= 50;
               SELECT * FROM segments.refresh();"#,
        )
        .unwrap();
    let fingerprint = "SELECT string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s|%s|%s', s.id, s.name, s.definition, s.tags, s.status, s.member_count, s.created_at, s.updated_at, s.rule_counts,
                              md5(m.members)), ';' ORDER BY s.id)
                         || (SELECT count(*) FROM segments.refresh_run)::text
                         || (SELECT count(*) FROM segments.membership_change)::text
                         || (SELECT string_agg(consumer, ',') FROM segments.usage)
                       FROM segments.segment s JOIN segments.membership m ON m.segment_id = s.id";
    let before: String = source.query_one(fingerprint, &[]).unwrap().get(0);
    let bin = harness::pg_bin("");
    let bin = bin.trim_end_matches('/');
    let dump = std::env::temp_dir().join(format!("segments-dump-{}.custom", std::process::id()));
    let status = std::process::Command::new(format!("{bin}/pg_dump"))
        .args([
            "-Fc",
            "-f",
            dump.to_str().unwrap(),
            &cluster.url("postgres"),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    source.batch_execute("CREATE DATABASE restored").unwrap();
    let output = std::process::Command::new(format!("{bin}/pg_restore"))
        .args([
            "--exit-on-error",
            "-d",
            &cluster.url("restored"),
            dump.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&dump);
    assert!(
        output.status.success(),
        "pg_restore: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut restored = cluster.connect("restored");
    let after: String = restored.query_one(fingerprint, &[]).unwrap().get(0);
    assert_eq!(before, after);
    // The restored catalog is alive: new segments get fresh ids, refresh works.
    let id: i64 = restored
        .query_one(
            "SELECT segments.quick_segment('French', 'customer', 'country', 'eq', '\"FR\"')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(id > 2);
    let status: String = restored
        .query_one("SELECT status FROM segments.refresh(ARRAY[2::bigint])", &[])
        .unwrap()
        .get(0);
    assert_eq!(status, "succeeded");
}
