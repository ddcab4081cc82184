//! Layer 3: what analysts and DBAs of 0.2.0 ask for (README, Why a member, history, and the past):
//! why a record is or is not a member, definition history, membership at a
//! past time, frozen copies, the active limit.

mod harness;

use harness::Cluster;

/// explain_member agrees with is_member on every one of 10,000+ keys, and
/// shows the value each condition compared.
#[test]
fn explain_member_agrees_with_is_member() {
    let cluster = Cluster::start("explain", &[]);
    let mut client = cluster.sample_customers_orders("10500");
    let id: i64 = client
        .query_one(
            r#"SELECT segments.create_segment('Explained', '{"entity":"customer","rules":[
                {"name":"Germans or French","where":{"any":[{"attribute":"country","op":"eq","value":"DE"},{"attribute":"country","op":"eq","value":"FR"}]}},
                {"name":"big spenders","combine":"union","where":{"related":"orders","aggregate":"sum","attribute":"amount","within":"90 days","op":"gt","value":2000}},
                {"name":"not unsubscribed","combine":"except","where":{"not":{"attribute":"unsubscribed","op":"is_false"}}}]}')"#,
            &[],
        )
        .unwrap()
        .get(0);
    client
        .batch_execute("SELECT * FROM segments.refresh()")
        .unwrap();
    let disagree: i64 = client
        .query_one(
            "SELECT count(*) FROM customers c
              WHERE (SELECT e.matches FROM segments.explain_member($1, c.id) e WHERE e.path = 'member')
                    IS DISTINCT FROM segments.is_member($1, c.id)",
            &[&id],
        )
        .unwrap()
        .get(0);
    let keys: i64 = client
        .query_one("SELECT count(*) FROM customers", &[])
        .unwrap()
        .get(0);
    assert!(keys >= 10_000);
    assert_eq!(
        disagree, 0,
        "explain_member disagrees with is_member on {disagree} of {keys} keys"
    );
    // A German member: the country row says DE and matches.
    let german: i64 = client
        .query_one(
            "SELECT min(id) FROM customers WHERE country = 'DE' AND NOT unsubscribed",
            &[],
        )
        .unwrap()
        .get(0);
    let rows = client
        .query(
            "SELECT path, name, matches, value FROM segments.explain_member($1, $2::bigint)",
            &[&id, &german],
        )
        .unwrap();
    let find = |path: &str| {
        rows.iter()
            .find(|r| r.get::<_, String>(0) == path)
            .unwrap_or_else(|| panic!("no row {path}"))
    };
    assert_eq!(
        find("rules[0].where.any[0]")
            .get::<_, Option<String>>(3)
            .as_deref(),
        Some("DE")
    );
    assert!(find("rules[0].where.any[0]").get::<_, bool>(2));
    assert!(!find("rules[0].where.any[1]").get::<_, bool>(2));
    assert!(
        find("rules[1].where").get::<_, Option<String>>(3).is_some(),
        "the aggregate's value is shown"
    );
    assert!(find("member").get::<_, bool>(2));
    assert_eq!(
        find("member").get::<_, Option<String>>(3).as_deref(),
        Some("is_member now: true")
    );
    // A key that is no record.
    let rows = client.query(
        "SELECT path, matches FROM segments.explain_member($1, 'nope'::text)",
        &[&id],
    );
    assert!(
        rows.is_err(),
        "a non-integer key of an integer entity is refused"
    );
    let rows = client
        .query(
            "SELECT path, matches FROM segments.explain_member($1, 999999999)",
            &[&id],
        )
        .unwrap();
    assert!(rows.iter().all(|r| !r.get::<_, bool>(1)));
}

/// Definition history records every change with who and when; restoring
/// a version puts it back as a new version.
#[test]
fn definition_history_and_restore() {
    let cluster = Cluster::start("history", &[]);
    let mut client = cluster.sample_customers_orders("500");
    client.batch_execute("CREATE ROLE alice LOGIN IN ROLE segments_editor; GRANT SELECT ON customers, orders TO alice;").unwrap();
    let mut alice = postgres::Client::connect(
        &cluster
            .url("postgres")
            .replace("user=postgres", "user=alice"),
        postgres::NoTls,
    )
    .unwrap();
    let id: i64 = alice
        .query_one(
            "SELECT segments.quick_segment('Germans', 'customer', 'country', 'eq', '\"DE\"')",
            &[],
        )
        .unwrap()
        .get(0);
    alice
        .batch_execute(&format!(
            r#"UPDATE segments.segment SET definition = '{{"entity":"customer","rules":[{{"where":{{"attribute":"country","op":"eq","value":"FR"}}}}]}}' WHERE id = {id};
               SELECT segments.rename({id}, 'French');
               SELECT segments.set_schedule(ARRAY[{id}]::bigint[], 'daily');
               SELECT segments.tag({id}, ARRAY['x']);"#
        ))
        .unwrap();
    let rows = client
        .query("SELECT version, changed_by::text, old_name, new_name, new_definition #>> '{rules,0,where,value}', new_schedule FROM segments.definition_history WHERE segment_id = $1 ORDER BY version", &[&id])
        .unwrap();
    assert_eq!(
        rows.len(),
        4,
        "create, definition, rename, schedule (tags are not part of the history)"
    );
    assert!(rows
        .iter()
        .all(|r| r.get::<_, Option<String>>(1).as_deref() == Some("alice")));
    assert_eq!(rows[1].get::<_, Option<String>>(4).as_deref(), Some("FR"));
    assert_eq!(
        rows[2].get::<_, Option<String>>(2).as_deref(),
        Some("Germans")
    );
    assert_eq!(
        rows[2].get::<_, Option<String>>(3).as_deref(),
        Some("French")
    );
    assert_eq!(
        rows[3].get::<_, Option<String>>(5).as_deref(),
        Some("daily")
    );
    alice
        .batch_execute(&format!("SELECT segments.restore_definition({id}, 1)"))
        .unwrap();
    let value: String = client
        .query_one(
            "SELECT definition #>> '{rules,0,where,value}' FROM segments.segment WHERE id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(value, "DE");
    let versions: i64 = client
        .query_one(
            "SELECT count(*) FROM segments.definition_history WHERE segment_id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(versions, 5);
    // A rename stores no second copy of the definition; the view and
    // restore_definition show it whole.
    let stored: Option<String> = client
        .query_one(
            "SELECT definition::text FROM segments.definition_version WHERE segment_id = $1 AND version = 3",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(stored, None, "a rename stored the definition again");
    assert_eq!(rows[2].get::<_, Option<String>>(4).as_deref(), Some("FR"));
    alice
        .batch_execute(&format!("SELECT segments.restore_definition({id}, 3)"))
        .unwrap();
    let value: String = client
        .query_one(
            "SELECT definition #>> '{rules,0,where,value}' FROM segments.segment WHERE id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        value, "FR",
        "restored through a version that stored no definition"
    );

    let error = alice
        .batch_execute(&format!("SELECT segments.restore_definition({id}, 42)"))
        .unwrap_err();
    assert_eq!(error.as_db_error().unwrap().code().code(), "42704");
}

/// members_at gives back the membership recorded at each refresh; freeze
/// makes a static copy of the current one.
#[test]
fn membership_at_a_past_time_and_frozen_copies() {
    let cluster = Cluster::start("members-at", &[]);
    let mut client = cluster.sample_customers_orders("2000");
    let id: i64 = client
        .query_one(
            "SELECT segments.quick_segment('Germans', 'customer', 'country', 'eq', '\"DE\"')",
            &[],
        )
        .unwrap()
        .get(0);
    let mut snapshots: Vec<(String, Vec<String>)> = Vec::new();
    for step in 0..5 {
        client.batch_execute(&format!("UPDATE customers SET country = 'DE' WHERE id % 37 = {step}; UPDATE customers SET country = 'FR' WHERE id % 41 = {step};")).unwrap();
        client
            .batch_execute(&format!(
                "SELECT * FROM segments.refresh(ARRAY[{id}]::bigint[])"
            ))
            .unwrap();
        let at: String = client
            .query_one("SELECT clock_timestamp()::text", &[])
            .unwrap()
            .get(0);
        let keys: Vec<String> = client
            .query(&format!("SELECT id::text FROM segments.customer_members WHERE segment_id = {id} ORDER BY 1"), &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        snapshots.push((at, keys));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for (at, want) in &snapshots {
        let got: Vec<String> = client
            .query(
                &format!("SELECT k FROM segments.members_at({id}, '{at}') k ORDER BY 1"),
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(&got, want, "members_at({at})");
    }
    let before: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM segments.members_at({id}, '2000-01-01')"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(before, 0, "before the segment existed");
    // freeze: a static copy that does not move.
    let frozen: i64 = client
        .query_one(
            &format!("SELECT segments.freeze({id}, 'Germans, frozen')"),
            &[],
        )
        .unwrap()
        .get(0);
    let (kind, count): (String, i64) = {
        let r = client
            .query_one(
                "SELECT type, member_count FROM segments.segment WHERE id = $1",
                &[&frozen],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(kind, "static");
    assert_eq!(count, snapshots.last().unwrap().1.len() as i64);
    client.batch_execute(&format!("UPDATE customers SET country = 'DE'; SELECT * FROM segments.refresh(ARRAY[{frozen}]::bigint[]);")).unwrap();
    let after: i64 = client
        .query_one(
            "SELECT member_count FROM segments.segment WHERE id = $1",
            &[&frozen],
        )
        .unwrap()
        .get(0);
    assert_eq!(after, count, "a frozen copy keeps its members");
}

/// Admins set the active limit persistently; segment_list shows the count
/// against it.
#[test]
fn admins_set_the_active_limit() {
    let cluster = Cluster::start("limit", &[]);
    let mut client = cluster.sample_customers_orders("100");
    client
        .batch_execute(
            "CREATE ROLE ada LOGIN IN ROLE segments_admin; CREATE ROLE ed LOGIN IN ROLE segments_editor;
             GRANT SELECT ON customers TO ada, ed;",
        )
        .unwrap();
    let connect = |role: &str| {
        postgres::Client::connect(
            &cluster
                .url("postgres")
                .replace("user=postgres", &format!("user={role}")),
            postgres::NoTls,
        )
        .unwrap()
    };
    let (mut ada, mut ed) = (connect("ada"), connect("ed"));
    assert_eq!(
        ed.batch_execute("SELECT segments.set_limit(3)")
            .unwrap_err()
            .as_db_error()
            .unwrap()
            .code()
            .code(),
        "42501"
    );
    ada.batch_execute("SELECT segments.set_limit(3)").unwrap();
    for i in 0..3 {
        ed.batch_execute(&format!(
            "SELECT segments.quick_segment('s{i}', 'customer', 'age', 'gt', '{i}')"
        ))
        .unwrap();
    }
    let error = connect("ed")
        .batch_execute("SELECT segments.quick_segment('s4', 'customer', 'age', 'gt', '4')")
        .unwrap_err();
    let db = error.as_db_error().unwrap();
    assert_eq!(db.code().code(), "54000");
    assert!(
        db.message().contains("max_active_segments"),
        "{}",
        db.message()
    );
    let row = ed
        .query_one(
            "SELECT active_segments, max_active_segments FROM segments.segment_list LIMIT 1",
            &[],
        )
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (3, 3));
    // Admins register entities too.
    client
        .batch_execute(
            "CREATE TABLE leads (id int PRIMARY KEY, status text); GRANT SELECT ON leads TO ada;",
        )
        .unwrap();
    ada.batch_execute("SELECT segments.register_entity('lead', 'leads', 'id'); SELECT segments.unregister_entity('lead');").unwrap();
    assert_eq!(
        ed.batch_execute("SELECT segments.register_entity('lead', 'leads', 'id')")
            .unwrap_err()
            .as_db_error()
            .unwrap()
            .code()
            .code(),
        "42501"
    );
}

/// Seed behaviours: sequence lifecycle and its role, confirmations that
/// name what breaks (dry runs change nothing), export membership, score
/// bands, trend buckets.
#[test]
fn seed_behaviours() {
    let cluster = Cluster::start("seeds", &[]);
    let mut client = cluster.sample_customers_orders("2000");
    client
        .batch_execute(
            "CREATE ROLE sam LOGIN IN ROLE segments_sequence_manager; CREATE ROLE ed LOGIN IN ROLE segments_editor;
             GRANT SELECT ON customers, orders TO sam, ed;",
        )
        .unwrap();
    let connect = |role: &str| {
        postgres::Client::connect(
            &cluster
                .url("postgres")
                .replace("user=postgres", &format!("user={role}")),
            postgres::NoTls,
        )
        .unwrap()
    };
    let (mut sam, mut ed) = (connect("sam"), connect("ed"));
    let code = |e: postgres::Error| e.as_db_error().unwrap().code().code().to_string();
    // Sequences: managers (and admins) only.
    assert_eq!(
        code(
            ed.batch_execute("SELECT segments.create_sequence('Welcome', 'customer')")
                .unwrap_err()
        ),
        "42501"
    );
    let seq: i64 = sam
        .query_one(
            "SELECT segments.create_sequence('Welcome', 'customer')",
            &[],
        )
        .unwrap()
        .get(0);
    let de: i64 = ed
        .query_one(
            "SELECT segments.quick_segment('DE', 'customer', 'country', 'eq', '\"DE\"')",
            &[],
        )
        .unwrap()
        .get(0);
    let reader: i64 = ed
        .query_one(r#"SELECT segments.create_segment('Reads DE', '{"entity":"customer","rules":[{"where":{"segment":"DE"}}]}')"#, &[])
        .unwrap()
        .get(0);
    client
        .batch_execute("SELECT * FROM segments.refresh()")
        .unwrap();
    client.batch_execute("GRANT ed TO sam").unwrap();
    sam.batch_execute(&format!(
        "SELECT segments.connect_sequence({seq}, ARRAY[{de}::bigint])"
    ))
    .unwrap();
    let connected: i64 = client
        .query_one("SELECT count(*) FROM segments.sequence_records", &[])
        .unwrap()
        .get(0);
    assert!(connected > 0);
    // An inactive sequence connects nobody new and keeps its records.
    assert!(sam
        .query_one(&format!("SELECT segments.deactivate_sequence({seq})"), &[])
        .unwrap()
        .get::<_, bool>(0));
    client.batch_execute("UPDATE customers SET country = 'DE' WHERE id % 50 = 0; SELECT * FROM segments.refresh();").unwrap();
    let after: i64 = client
        .query_one("SELECT count(*) FROM segments.sequence_records", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        after, connected,
        "an inactive sequence connected new records"
    );
    sam.batch_execute(&format!("SELECT segments.activate_sequence({seq})"))
        .unwrap();
    let removed: i32 = sam.query_one(&format!("SELECT segments.disconnect_records({seq}, ARRAY(SELECT key FROM segments.sequence_records LIMIT 3))"), &[]).unwrap().get(0);
    assert_eq!(removed, 3);

    // Confirmations: a dry run names what would break and changes nothing.
    let before: String = client
        .query_one(
            "SELECT string_agg(id || state, ',' ORDER BY id) FROM segments.segment",
            &[],
        )
        .unwrap()
        .get(0);
    let row = ed.query_one(&format!("SELECT connected_sequences, dependents FROM segments.deactivate({de}, dry_run => true)"), &[]).unwrap();
    assert_eq!(row.get::<_, Vec<String>>(0), vec!["Welcome".to_string()]);
    assert_eq!(
        row.get::<_, Vec<String>>(1),
        vec!["segment \"Reads DE\"".to_string()]
    );
    let row = ed.query_one(&format!("SELECT connected_sequences, dependents FROM segments.delete({de}, dry_run => true)"), &[]).unwrap();
    assert_eq!(row.get::<_, Vec<String>>(0), vec!["Welcome".to_string()]);
    assert_eq!(
        row.get::<_, Vec<String>>(1),
        vec!["segment \"Reads DE\"".to_string()]
    );
    let after: String = client
        .query_one(
            "SELECT string_agg(id || state, ',' ORDER BY id) FROM segments.segment",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(before, after, "a dry run changed something");
    // Deactivating for real warns, naming the reader.
    let warnings = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = warnings.clone();
    let mut config: postgres::Config = cluster
        .url("postgres")
        .replace("user=postgres", "user=ed")
        .parse()
        .unwrap();
    config.notice_callback(move |n| seen.lock().unwrap().push(n.message().to_string()));
    let mut watched = config.connect(postgres::NoTls).unwrap();
    watched
        .batch_execute(&format!("SELECT * FROM segments.deactivate({de})"))
        .unwrap();
    assert!(
        warnings
            .lock()
            .unwrap()
            .iter()
            .any(|w| w.contains("Reads DE")),
        "{:?}",
        warnings.lock().unwrap()
    );
    watched
        .batch_execute(&format!("SELECT segments.activate({de})"))
        .unwrap();
    let _ = reader;

    // Exports: add and remove segments, keeping usages right.
    client
        .batch_execute("CREATE SCHEMA out AUTHORIZATION ed")
        .unwrap();
    ed.batch_execute(&format!(
        "SELECT segments.create_export('crm', ARRAY[{reader}::bigint], 'out.crm')"
    ))
    .unwrap();
    let added: i32 = ed
        .query_one(
            &format!("SELECT segments.add_to_export('crm', ARRAY[{de}::bigint])"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(added, 1);
    let usages: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM segments.usage WHERE segment_id = {de} AND kind = 'export'"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(usages, 1);
    let rows: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM out.crm WHERE segment_id = {de}"),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(rows > 0);
    let removed: i32 = ed
        .query_one(
            &format!("SELECT segments.remove_from_export('crm', ARRAY[{de}::bigint])"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(removed, 1);
    let usages: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM segments.usage WHERE segment_id = {de} AND kind = 'export'"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(usages, 0);
    assert_eq!(
        code(
            ed.batch_execute(&format!(
                "SELECT segments.remove_from_export('crm', ARRAY[{reader}::bigint])"
            ))
            .unwrap_err()
        ),
        "22023"
    );

    // Score bands.
    let similar: i64 = ed.query_one(&format!("SELECT segments.find_similar({de}, 'Like DE', size_percent => 10, min_band => 'medium')"), &[]).unwrap().get(0);
    let (low, bands): (f32, i64) = {
        let r = client.query_one(&format!("SELECT coalesce(min(score), 1), count(*) FILTER (WHERE band IS NULL) FROM segments.similarity({similar})"), &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert!(low >= 0.7, "min_band medium kept a score of {low}");
    assert_eq!(bands, 0);
    assert_eq!(
        code(
            ed.batch_execute(&format!(
                "SELECT segments.find_similar({de}, 'x', min_band => 'great')"
            ))
            .unwrap_err()
        ),
        "22023"
    );

    // Trend: one point per bucket, with entered and exited totals.
    for _ in 0..3 {
        client.batch_execute(&format!("UPDATE customers SET country = 'DE' WHERE id % 97 = 1; UPDATE customers SET country = 'FR' WHERE id % 89 = 2; SELECT * FROM segments.refresh(ARRAY[{de}::bigint]);")).unwrap();
    }
    let points = client.query(&format!("SELECT at, member_count, entered, exited FROM segments.trend({de}, now() - interval '1 day', now(), 'day')"), &[]).unwrap();
    assert_eq!(points.len(), 1);
    let last: i64 = client
        .query_one(
            "SELECT member_count FROM segments.segment WHERE id = $1",
            &[&de],
        )
        .unwrap()
        .get(0);
    assert_eq!(points[0].get::<_, i64>(1), last);
    let per_run = client
        .query(
            &format!("SELECT at FROM segments.trend({de}, now() - interval '1 day', now())"),
            &[],
        )
        .unwrap();
    assert!(per_run.len() >= 4);
    // A refresh and trend() in one transaction: the refresh finishes after
    // the transaction's now(), and trend's default upper bound is none.
    let mut transaction = client.transaction().unwrap();
    let before: i64 = transaction
        .query_one(&format!("SELECT count(*) FROM segments.trend({de})"), &[])
        .unwrap()
        .get(0);
    transaction
        .batch_execute(&format!(
            "SELECT * FROM segments.refresh(ARRAY[{de}::bigint])"
        ))
        .unwrap();
    let after: i64 = transaction
        .query_one(&format!("SELECT count(*) FROM segments.trend({de})"), &[])
        .unwrap()
        .get(0);
    assert_eq!(
        after,
        before + 1,
        "trend shows the refresh of its own transaction"
    );
    transaction.commit().unwrap();
    assert_eq!(
        code(
            client
                .batch_execute(&format!(
                    "SELECT * FROM segments.trend({de}, now(), now(), 'fortnight')"
                ))
                .unwrap_err()
        ),
        "22023"
    );
    // Suggested segments from activity: a related table as the measure, and
    // activity splits among the candidates.
    let rows = ed.query("SELECT definition::text, members, lift FROM segments.suggest('customer', 'orders', max_segments => 20)", &[]).unwrap();
    assert!(!rows.is_empty());
    assert!(
        rows.iter()
            .any(|r| r.get::<_, String>(0).contains("\"related\"")),
        "no activity split suggested"
    );
    let top: String = rows[0].get(0);
    ed.batch_execute(&format!(
        "SELECT segments.create_segment('Suggested', '{}')",
        top.replace('\'', "''")
    ))
    .unwrap();
    let rows = ed.query("SELECT definition::text FROM segments.suggest('customer', 'orders.amount', max_segments => 3)", &[]).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        code(
            ed.batch_execute("SELECT * FROM segments.suggest('customer', 'order')")
                .unwrap_err()
        ),
        "42703"
    );

    // NaN and infinite values never make a split with a null value.
    client
        .batch_execute("ALTER TABLE customers ADD COLUMN score float8;
                        UPDATE customers SET score = CASE id % 10 WHEN 0 THEN 'NaN'::float8 WHEN 1 THEN 'Infinity'::float8 WHEN 2 THEN '-Infinity'::float8 ELSE id::float8 END;")
        .unwrap();
    let rows = client.query("SELECT definition::text FROM segments.suggest('customer', 'lifetime_value', ARRAY['score'], 10)", &[]).unwrap();
    assert!(!rows.is_empty());
    assert!(
        rows.iter().all(|r| !r.get::<_, String>(0).contains("null")),
        "a split holds null"
    );

    sam.batch_execute(&format!("SELECT segments.drop_sequence({seq})"))
        .unwrap();
    let left: i64 = client
        .query_one("SELECT count(*) FROM segments.sequence_records", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}
