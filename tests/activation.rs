//! Layer 3: what follows memberships: exports, sales sequences, lookalikes
//! and suggested segments.

mod harness;

use harness::{sqlstate, Cluster};

/// An export table holds exactly the hand-written query's rows after each
/// refresh, keeps its segments in use, and goes with drop_export.
#[test]
fn exports_follow_refreshes() {
    let cluster = Cluster::start("exports", &[]);
    let mut client = cluster.sample("2000");
    client
        .batch_execute(
            r#"SELECT segments.quick_segment('Germans', 'customer', 'country', 'eq', '"DE"');
               SELECT segments.quick_segment('Young', 'customer', 'age', 'lt', '25');
               SELECT * FROM segments.refresh();
               SELECT segments.create_export('crm', ARRAY[1, 2]::bigint[], 'public.crm_audience');"#,
        )
        .unwrap();
    let hand = "SELECT 'Germans' AS segment_name, id FROM customers WHERE country = 'DE'
                UNION ALL SELECT 'Young', id FROM customers WHERE age < 25";
    let differences = |client: &mut postgres::Client| -> (i64, i64) {
        let row = client
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM crm_audience),
                            (SELECT count(*) FROM ((SELECT segment_name, id FROM crm_audience EXCEPT ALL ({hand}))
                                        UNION ALL (({hand}) EXCEPT ALL SELECT segment_name, id FROM crm_audience)) d)"
                ),
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    let (rows, diff) = differences(&mut client);
    assert!(rows > 100);
    assert_eq!(diff, 0);
    let columns: i64 = client
        .query_one("SELECT count(*) FROM information_schema.columns WHERE table_name = 'crm_audience' AND column_name IN ('segment_name', 'email', 'country')", &[])
        .unwrap()
        .get(0);
    assert_eq!(columns, 3, "entity columns plus segment_name");

    client.batch_execute("UPDATE customers SET country = 'DE' WHERE id <= 300; SELECT * FROM segments.refresh(ARRAY[1::bigint]);").unwrap();
    assert_eq!(
        differences(&mut client).1,
        0,
        "the export follows a membership change"
    );

    let error = client
        .query("SELECT * FROM segments.delete(ARRAY[1::bigint])", &[])
        .unwrap_err();
    let (code, message) = sqlstate(&error);
    assert_eq!(code, "2BP01");
    assert!(message.contains("export \"crm\""), "{message}");
    let used: i64 = client
        .query_one(
            "SELECT usage_count FROM segments.segment_list WHERE id = 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(used, 1);

    let error = client
        .execute(
            "SELECT segments.create_export('again', ARRAY[1]::bigint[], 'public.crm_audience')",
            &[],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&error).0, "42P07");
    client
        .batch_execute("SELECT segments.drop_export('crm')")
        .unwrap();
    let gone: Option<String> = client
        .query_one("SELECT to_regclass('public.crm_audience')::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(gone, None);
    let deleted: i64 = client
        .query_one(
            "SELECT count(*) FROM segments.delete(ARRAY[1::bigint])",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(deleted, 1);
}

/// The sales flow: records entering connected segments start sequences by
/// priority, move_existing takes records, deactivation stops new
/// connections, deletion keeps the ones made, records connect by hand.
#[test]
fn sequences_connect_records_by_priority() {
    let cluster = Cluster::start("sequences", &[]);
    let mut client = cluster.sample("2000");
    client
        .batch_execute(
            r#"SELECT segments.quick_segment('Germans', 'customer', 'country', 'eq', '"DE"');   -- 1
               SELECT segments.quick_segment('Young', 'customer', 'age', 'lt', '30');           -- 2
               SELECT segments.quick_segment('French', 'customer', 'country', 'eq', '"FR"');    -- 3
               SELECT segments.set_priority(1, 2);
               SELECT segments.set_priority(2, 1);
               SELECT segments.create_sequence('Germany outreach', 'customer');                  -- 1
               SELECT segments.create_sequence('Student offer', 'customer');                     -- 2
               SELECT segments.create_sequence('France outreach', 'customer');                   -- 3
               SELECT segments.connect_sequence(1, ARRAY[1]::bigint[]);
               SELECT segments.connect_sequence(2, ARRAY[2]::bigint[]);
               SELECT segments.connect_sequence(3, ARRAY[3]::bigint[]);
               SELECT * FROM segments.refresh();"#,
        )
        .unwrap();
    let placement = |client: &mut postgres::Client| -> Vec<(String, i64)> {
        client
            .query(
                "SELECT sequence, count(*) FROM segments.sequence_records GROUP BY 1 ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    let count = |client: &mut postgres::Client, sql: &str| -> i64 {
        client
            .query_one(&format!("SELECT count(*) FROM customers WHERE {sql}"), &[])
            .unwrap()
            .get(0)
    };
    let expected = vec![
        (
            "France outreach".to_string(),
            count(
                &mut client,
                "country = 'FR' AND NOT coalesce(age < 30, false)",
            ),
        ),
        (
            "Germany outreach".to_string(),
            count(
                &mut client,
                "country = 'DE' AND NOT coalesce(age < 30, false)",
            ),
        ),
        ("Student offer".to_string(), count(&mut client, "age < 30")),
    ];
    assert_eq!(
        placement(&mut client),
        expected,
        "young Germans and French go to the higher-priority Student offer"
    );
    let wrong: i64 = client
        .query_one(
            "SELECT count(*) FROM segments.sequence_records r JOIN customers c ON c.id::text = r.key
              WHERE (c.age < 30) <> (r.sequence = 'Student offer')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(wrong, 0);

    // A segment connects to at most one sequence.
    let error = client
        .execute(
            "SELECT segments.connect_sequence(2, ARRAY[1]::bigint[])",
            &[],
        )
        .unwrap_err();
    let (code, message) = sqlstate(&error);
    assert_eq!(code, "55000");
    assert!(
        message.contains("already connected to sequence \"Germany outreach\""),
        "{message}"
    );

    // move_existing: a higher-priority segment takes the records it wants.
    client
        .batch_execute(
            r#"SELECT segments.quick_segment('Seniors', 'customer', 'age', 'gt', '60');          -- 4
               SELECT segments.quick_segment('Seniors too', 'customer', 'age', 'gt', '60');      -- 5
               SELECT segments.set_priority(4, 0);
               SELECT segments.set_priority(5, 0);
               UPDATE segments.segment SET move_existing = true WHERE id = 4;
               SELECT segments.create_sequence('Silver surfers', 'customer');                    -- 4
               SELECT segments.create_sequence('Never used', 'customer');                        -- 5
               SELECT segments.connect_sequence(5, ARRAY[5]::bigint[]);
               SELECT segments.connect_sequence(4, ARRAY[4]::bigint[]);
               SELECT * FROM segments.refresh(ARRAY[4, 5]::bigint[]);"#,
        )
        .unwrap();
    let seniors = count(&mut client, "age > 60");
    let moved: i64 = client
        .query_one(
            "SELECT count(*) FROM segments.sequence_records WHERE sequence = 'Silver surfers'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        moved, seniors,
        "every senior moved: 'Seniors' has move_existing and priority 0"
    );
    let untouched: i64 = client
        .query_one(
            "SELECT count(*) FROM segments.sequence_records WHERE sequence = 'Never used'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        untouched, 0,
        "'Seniors too' neither takes connected records nor beats 'Seniors' by id"
    );

    // Deactivating stops new connections, and reports the sequence.
    let row = client
        .query_one(
            "SELECT connected_sequences FROM segments.deactivate(ARRAY[3]::bigint[])",
            &[],
        )
        .unwrap();
    assert_eq!(
        row.get::<_, Vec<String>>(0),
        vec!["France outreach".to_string()]
    );
    client
        .batch_execute(
            "INSERT INTO customers (id, code, country, age, unsubscribed, signed_up_at) VALUES (900001, 'NEW1', 'FR', 45, false, now());
             SELECT * FROM segments.refresh();",
        )
        .unwrap();
    let new_one: i64 = client
        .query_one(
            "SELECT count(*) FROM segments.sequence_records WHERE key = '900001'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(new_one, 0, "an inactive segment connects nobody");

    // Deleting keeps the connections made, without the segment's id.
    let before: i64 = client
        .query_one(
            "SELECT count(*) FROM segments.sequence_records WHERE segment_id = 1",
            &[],
        )
        .unwrap()
        .get(0);
    client
        .batch_execute("SELECT * FROM segments.delete(ARRAY[1]::bigint[])")
        .unwrap();
    let after: i64 = client
        .query_one("SELECT count(*) FROM segments.sequence_records WHERE segment_id IS NULL AND segment_name = 'Germans' AND sequence = 'Germany outreach'", &[])
        .unwrap()
        .get(0);
    assert!(before > 0);
    assert_eq!(after, before);

    // By hand, with or without a segment; refusals write nothing.
    let error = client
        .execute(
            "SELECT segments.connect_records(3, ARRAY['900001', '999999'])",
            &[],
        )
        .unwrap_err();
    let (code, message) = sqlstate(&error);
    assert_eq!(code, "22023");
    assert!(message.contains("\"999999\""), "{message}");
    let added: i32 = client
        .query_one(
            "SELECT segments.connect_records(3, ARRAY['900001', '0900001'])",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(added, 1);
    let manual: (Option<i64>, Option<String>) = {
        let row = client.query_one("SELECT segment_id, segment_name FROM segments.sequence_records WHERE key = '900001'", &[]).unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(manual, (None, None));
    let taken_key: String = client
        .query_one(
            "SELECT key FROM segments.sequence_records WHERE sequence = 'Student offer' LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    let error = client
        .execute(
            "SELECT segments.connect_records(3, ARRAY[$1])",
            &[&taken_key],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&error).0, "55000");

    for (sql, code) in [
        (
            "SELECT segments.create_sequence('Student offer', 'customer')",
            "42710",
        ),
        ("SELECT segments.create_sequence('x', 'lead')", "42P01"),
        (
            "SELECT segments.connect_sequence(99, ARRAY[2]::bigint[])",
            "42704",
        ),
        (
            "SELECT segments.connect_sequence(2, ARRAY[99]::bigint[])",
            "42704",
        ),
        ("SELECT segments.set_priority(99, 1)", "42704"),
    ] {
        let error = client.execute(sql, &[]).unwrap_err();
        assert_eq!(sqlstate(&error).0, code, "{sql}");
    }
    let disconnected: i32 = client
        .query_one(
            "SELECT segments.disconnect_sequence(2, ARRAY[2]::bigint[])",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(disconnected, 1);
    let still: i64 = client
        .query_one(
            "SELECT count(*) FROM segments.sequence_records WHERE sequence = 'Student offer'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(still > 0, "disconnecting keeps the records connected");
}

/// find_similar learns what a segment's members share and finds more of
/// them; suggest finds the split that moves a measure most.
#[test]
fn finding_similar_customers_and_suggested_segments() {
    let cluster = Cluster::start("finding", &[]);
    let mut client = cluster.sample("5000");
    // The source: platinum customers with an even id. The other platinum
    // customers are what a good model finds.
    client
        .batch_execute(
            r#"SELECT segments.create_segment('Platinum, even', '{"entity":"customer","rules":[{"where":{"all":[
                  {"attribute":"loyalty_tier","op":"eq","value":"platinum"},
                  {"any":[{"attribute":"code","op":"ends_with","value":"0"},{"attribute":"code","op":"ends_with","value":"2"},
                          {"attribute":"code","op":"ends_with","value":"4"},{"attribute":"code","op":"ends_with","value":"6"},
                          {"attribute":"code","op":"ends_with","value":"8"}]}]}}]}');
               SELECT segments.quick_segment('Germans', 'customer', 'country', 'eq', '"DE"');
               SELECT * FROM segments.refresh();"#,
        )
        .unwrap();
    let id: i64 = client
        .query_one(
            "SELECT segments.find_similar(1, 'Lookalikes', size_percent => 10)",
            &[],
        )
        .unwrap()
        .get(0);
    let row = client
        .query_one(
            "SELECT s.type, s.member_count,
                    (SELECT count(*) FROM segments.customer_members m WHERE m.segment_id = s.id AND m.loyalty_tier = 'platinum'),
                    (SELECT count(*) FROM segments.customer_members m WHERE m.segment_id = s.id AND segments.is_member(1, m.id)),
                    (SELECT count(*) FROM customers WHERE loyalty_tier = 'platinum' AND id % 2 = 1)
               FROM segments.segment s WHERE s.id = $1",
            &[&id],
        )
        .unwrap();
    let (kind, members, platinum, overlap, odd_platinum): (String, i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!(kind, "static");
    assert!(
        members <= 500,
        "at most 10% of the 5000 customers: {members}"
    );
    assert!(
        members as f64 >= 0.8 * odd_platinum as f64,
        "it should find most of the {odd_platinum} other platinum customers: {members}"
    );
    assert!(
        platinum as f64 >= 0.9 * members as f64,
        "{platinum} of {members} are platinum"
    );
    assert_eq!(overlap, 0, "source members are left out unless asked for");
    let scores = client
        .query_one(
            "SELECT count(*), min(score), max(score) FROM segments.similarity($1)",
            &[&id],
        )
        .unwrap();
    assert_eq!(scores.get::<_, i64>(0), members);
    assert!(scores.get::<_, f32>(1) >= 0.4 && scores.get::<_, f32>(2) <= 1.0);

    // Within a target, and with the source included.
    let within: i64 = client
        .query_one("SELECT segments.find_similar(1, 'German lookalikes', target => 2, include_source => true)", &[])
        .unwrap()
        .get(0);
    let outside: i64 = client
        .query_one("SELECT count(*) FROM segments.customer_members WHERE segment_id = $1 AND NOT segments.is_member(2, id) AND NOT segments.is_member(1, id)", &[&within])
        .unwrap()
        .get(0);
    assert_eq!(outside, 0, "only the target population, plus the source");
    let sources: i64 = client
        .query_one("SELECT count(*) FROM segments.customer_members WHERE segment_id = $1 AND segments.is_member(1, id)", &[&within])
        .unwrap()
        .get(0);
    let source_size: i64 = client
        .query_one(
            "SELECT member_count FROM segments.segment WHERE id = 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(sources, source_size);

    for (sql, code) in [
        ("SELECT segments.find_similar(99, 'x')", "42704"),
        (
            "SELECT segments.find_similar(1, 'x', size_percent => 0)",
            "22023",
        ),
        ("SELECT segments.find_similar(1, 'Germans')", "42710"),
    ] {
        let error = client.execute(sql, &[]).unwrap_err();
        assert_eq!(sqlstate(&error).0, code, "{sql}");
    }

    // Suggested segments: gold customers spend three times as much.
    client
        .batch_execute(
            "ALTER TABLE customers ADD COLUMN spend numeric;
             UPDATE customers SET spend = CASE WHEN loyalty_tier = 'gold' THEN 300 ELSE 100 END + id % 10;",
        )
        .unwrap();
    let rows = client.query("SELECT definition::text, members, measure_avg, lift FROM segments.suggest('customer', 'spend')", &[]).unwrap();
    assert!(!rows.is_empty() && rows.len() <= 5);
    let best: String = rows[0].get(0);
    assert!(
        best.contains(r#""attribute": "loyalty_tier""#) && best.contains(r#""value": "gold""#),
        "{best}"
    );
    let gold: i64 = client
        .query_one(
            "SELECT count(*) FROM customers WHERE loyalty_tier = 'gold'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows[0].get::<_, i64>(1), gold);
    assert!(
        rows[0].get::<_, f64>(3) > 2.0,
        "gold spends well over twice the average"
    );
    // A suggestion is a ready definition.
    let created: i64 = client
        .query_one("SELECT segments.create_segment('Suggested', (SELECT definition FROM segments.suggest('customer', 'spend') LIMIT 1))", &[])
        .unwrap()
        .get(0);
    assert!(created > 0);
    let limited = client
        .query("SELECT definition::text FROM segments.suggest('customer', 'spend', influencing => ARRAY['country', 'age'], max_segments => 3)", &[])
        .unwrap();
    assert!(
        limited.len() <= 3
            && limited
                .iter()
                .all(|r| !r.get::<_, String>(0).contains("loyalty_tier"))
    );
    for (sql, code) in [
        (
            "SELECT * FROM segments.suggest('customer', 'country')",
            "22023",
        ),
        (
            "SELECT * FROM segments.suggest('customer', 'spent')",
            "42703",
        ),
        ("SELECT * FROM segments.suggest('buyer', 'spend')", "42P01"),
    ] {
        let error = client.query(sql, &[]).unwrap_err();
        assert_eq!(sqlstate(&error).0, code, "{sql}");
    }
}
