//! Layer 3: behaviour on a real running cluster started with
//! `shared_preload_libraries = 'segments'`, through a real client.
//! Run by `scripts/test.sh` after `cargo pgrx install`.

mod harness;

use harness::{sqlstate, Cluster};

const ANCHOR: &str = "2026-11-01";

#[test]
fn extension_loads_with_preload_in_two_databases() {
    let cluster = Cluster::start("preload", &["shared_preload_libraries=segments"]);
    let mut admin = cluster.connect("postgres");
    let preload: String = admin
        .query_one("SHOW shared_preload_libraries", &[])
        .unwrap()
        .get(0);
    assert_eq!(preload, "segments");
    // Settings read at start exist only when the library is preloaded.
    let database: String = admin
        .query_one("SHOW segments.database", &[])
        .unwrap()
        .get(0);
    assert_eq!(database, "postgres");
    for db in ["shop_a", "shop_b"] {
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .unwrap();
        let mut client = cluster.connect(db);
        client.batch_execute("CREATE EXTENSION segments").unwrap();
        let tables: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'segments'",
                &[],
            )
            .unwrap()
            .get(0);
        assert!(tables >= 5, "{db}: catalog tables missing");
        let roles: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'segments\\_%'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(roles, 4, "{db}: roles missing");
    }
}

/// Loads the sample data set and registers its tables.
fn sample_database(cluster: &Cluster, scale: &str) -> postgres::Client {
    let then = format!(
        "SET segments.reference_time = '{ANCHOR}'; {}",
        Cluster::EMAIL_EVENTS
    );
    cluster.sample_database(scale, ANCHOR, &then)
}

/// Each kind of condition selects exactly the rows a hand-written query does.
#[test]
fn conditions_match_hand_written_sql_on_generated_data() {
    let cluster = Cluster::start("conditions", &["shared_preload_libraries=segments"]);
    let mut client = sample_database(&cluster, "20000");
    let since = |d: &str| format!("'{ANCHOR}'::timestamptz - interval '{d}'");
    let now = format!("'{ANCHOR}'::timestamptz");
    let cases: Vec<(&str, String, String)> = vec![
        ("text eq", r#"{"attribute":"country","op":"eq","value":"DE"}"#.into(), "country = 'DE'".into()),
        ("ne excludes NULL", r#"{"attribute":"country","op":"ne","value":"DE"}"#.into(), "country <> 'DE'".into()),
        ("not includes NULL", r#"{"not":{"attribute":"country","op":"eq","value":"DE"}}"#.into(), "country IS DISTINCT FROM 'DE'".into()),
        ("ignore_case", r#"{"attribute":"country","op":"eq","value":"de","ignore_case":true}"#.into(), "lower(country) = 'de'".into()),
        ("in", r#"{"attribute":"country","op":"in","value":["FR","ES"]}"#.into(), "country IN ('FR','ES')".into()),
        ("not_in", r#"{"attribute":"country","op":"not_in","value":["FR","ES"]}"#.into(), "country NOT IN ('FR','ES')".into()),
        ("between", r#"{"attribute":"age","op":"between","value":[25,34]}"#.into(), "age BETWEEN 25 AND 34".into()),
        ("gt on numeric", r#"{"attribute":"lifetime_value","op":"gt","value":5000}"#.into(), "lifetime_value > 5000".into()),
        ("contains", r#"{"attribute":"email","op":"contains","value":"77"}"#.into(), "email LIKE '%77%'".into()),
        ("starts_with", r#"{"attribute":"first_name","op":"starts_with","value":"Mi"}"#.into(), "first_name LIKE 'Mi%'".into()),
        ("ends_with", r#"{"attribute":"email","op":"ends_with","value":".de"}"#.into(), "email LIKE '%.de'".into()),
        ("is_null", r#"{"attribute":"age","op":"is_null"}"#.into(), "age IS NULL".into()),
        ("is_true", r#"{"attribute":"unsubscribed","op":"is_true"}"#.into(), "unsubscribed".into()),
        ("in_last on timestamptz", r#"{"attribute":"last_login_at","op":"in_last","value":"7 days"}"#.into(),
            format!("last_login_at >= {} AND last_login_at <= {now}", since("7 days"))),
        ("not_in_last", r#"{"attribute":"last_login_at","op":"not_in_last","value":"30 days"}"#.into(),
            format!("last_login_at < {}", since("30 days"))),
        ("before on date", r#"{"attribute":"birth_date","op":"before","value":"1970-01-01"}"#.into(), "birth_date < '1970-01-01'".into()),
        ("is_anniversary", r#"{"attribute":"birth_date","op":"is_anniversary"}"#.into(), "to_char(birth_date, 'MM-DD') = '11-01'".into()),
        ("related exists within", r#"{"related":"orders","within":"30 days"}"#.into(),
            format!("EXISTS (SELECT FROM orders o WHERE o.customer_id = c.id AND o.ordered_at >= {} AND o.ordered_at <= {now})", since("30 days"))),
        ("related not exists", r#"{"related":"orders","exists":false,"where":{"attribute":"status","op":"eq","value":"refunded"}}"#.into(),
            "NOT EXISTS (SELECT FROM orders o WHERE o.customer_id = c.id AND o.status = 'refunded')".into()),
        ("sum within", r#"{"related":"orders","aggregate":"sum","attribute":"amount","within":"30 days","op":"gt","value":300}"#.into(),
            format!("(SELECT sum(amount) FROM orders o WHERE o.customer_id = c.id AND o.ordered_at >= {} AND o.ordered_at <= {now}) > 300", since("30 days"))),
        ("count lt includes zero", r#"{"related":"orders","aggregate":"count","op":"lt","value":2}"#.into(),
            "(SELECT count(*) FROM orders o WHERE o.customer_id = c.id) < 2".into()),
        ("avg", r#"{"related":"orders","aggregate":"avg","attribute":"amount","op":"gte","value":200}"#.into(),
            "(SELECT avg(amount) FROM orders o WHERE o.customer_id = c.id) >= 200".into()),
        ("count of clicks", r#"{"related":"email_events","aggregate":"count","where":{"attribute":"event_type","op":"eq","value":"click"},"op":"gte","value":2}"#.into(),
            "(SELECT count(*) FROM email_events v WHERE v.customer_id = c.id AND v.event_type = 'click') >= 2".into()),
        ("any of all", r#"{"any":[{"all":[{"attribute":"country","op":"eq","value":"DE"},{"attribute":"age","op":"lt","value":30}]},{"attribute":"loyalty_tier","op":"eq","value":"platinum"}]}"#.into(),
            "(country = 'DE' AND age < 30) OR loyalty_tier = 'platinum'".into()),
    ];
    for (label, condition, hand_written) in &cases {
        let definition = format!(r#"{{"entity":"customer","rules":[{{"where":{condition}}}]}}"#);
        let name = format!("case {label}");
        let id: i64 = client
            .query_one(
                "SELECT segments.create_segment($1, $2::text::jsonb)",
                &[&name, &definition],
            )
            .unwrap_or_else(|e| panic!("{label}: {e}"))
            .get(0);
        let row = client
            .query_one(
                "SELECT status, member_count, error FROM segments.refresh(ARRAY[$1::bigint])",
                &[&id],
            )
            .unwrap();
        let status: String = row.get(0);
        let error: Option<String> = row.get(2);
        assert_eq!(status, "succeeded", "{label}: {error:?}");
        let members: i64 = row.get(1);
        let expected: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM customers c WHERE {hand_written}"),
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(members, expected, "{label}: member count");
        let differences: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM (
                        (SELECT id FROM customers c WHERE {hand_written}
                         EXCEPT SELECT id FROM segments.customer_members WHERE segment_id = $1)
                        UNION ALL
                        (SELECT id FROM segments.customer_members WHERE segment_id = $1
                         EXCEPT SELECT id FROM customers c WHERE {hand_written})) d"
                ),
                &[&id],
            )
            .unwrap()
            .get(0);
        assert_eq!(
            differences, 0,
            "{label}: members differ from the hand-written query"
        );
        assert!(
            expected > 0 || *label == "is_anniversary",
            "{label}: the case selects nobody, so it proves little"
        );
    }
}

/// Per-rule counts equal separate queries: rule alone and cumulative.
#[test]
fn rule_counts_equal_separate_queries() {
    let cluster = Cluster::start("counts", &["shared_preload_libraries=segments"]);
    let mut client = sample_database(&cluster, "20000");
    client
        .batch_execute(
            r#"SELECT segments.create_segment('Counted', '{"entity":"customer","rules":[
                 {"name":"Germany","where":{"attribute":"country","op":"eq","value":"DE"}},
                 {"name":"or France","combine":"union","where":{"attribute":"country","op":"eq","value":"FR"}},
                 {"name":"Adults 30+","combine":"intersect","rules":[
                    {"where":{"attribute":"age","op":"gte","value":30}},
                    {"combine":"except","where":{"attribute":"age","op":"gt","value":60}}]},
                 {"name":"not unsubscribed","combine":"except","where":{"attribute":"unsubscribed","op":"is_true"}}]}');
               SELECT * FROM segments.refresh();"#,
        )
        .unwrap();
    let rows = client
        .query(
            "SELECT path, members, cumulative FROM segments.rule_counts(1) ORDER BY path",
            &[],
        )
        .unwrap();
    let got: Vec<(String, i64, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let mut count = |sql: &str| -> i64 {
        client
            .query_one(&format!("SELECT count(*) FROM customers WHERE {sql}"), &[])
            .unwrap()
            .get(0)
    };
    let expected = vec![
        (
            "1".to_string(),
            count("country = 'DE'"),
            count("country = 'DE'"),
        ),
        (
            "2".to_string(),
            count("country = 'FR'"),
            count("country IN ('DE','FR')"),
        ),
        (
            "3".to_string(),
            count("age BETWEEN 30 AND 60"),
            count("country IN ('DE','FR') AND age BETWEEN 30 AND 60"),
        ),
        ("3.1".to_string(), count("age >= 30"), count("age >= 30")),
        (
            "3.2".to_string(),
            count("age > 60"),
            count("age BETWEEN 30 AND 60"),
        ),
        (
            "4".to_string(),
            count("unsubscribed"),
            count("country IN ('DE','FR') AND age BETWEEN 30 AND 60 AND NOT unsubscribed"),
        ),
    ];
    assert_eq!(got, expected);
}

/// Every refusal has its SQLSTATE, names the culprit, and writes nothing,
/// through the functions and through direct writes to the catalog alike.
#[test]
fn refusals_name_the_culprit_and_write_nothing() {
    let cluster = Cluster::start("refusals", &[]);
    let mut client = sample_database(&cluster, "1000");
    client
        .batch_execute(
            r#"SELECT segments.create_segment('A', '{"entity":"customer","rules":[{"where":{"attribute":"age","op":"gt","value":30}}]}');
               SELECT segments.create_segment('B', '{"entity":"customer","rules":[{"where":{"segment":"A"}}]}');"#,
        )
        .unwrap();
    let snapshot = "SELECT string_agg(format('%s|%s|%s', id, name, definition), ';' ORDER BY id) FROM segments.segment";
    let before: String = client.query_one(snapshot, &[]).unwrap().get(0);
    let def =
        |condition: &str| format!(r#"{{"entity":"customer","rules":[{{"where":{condition}}}]}}"#);
    let cases: Vec<(String, &str, String)> = vec![
        (format!("SELECT segments.create_segment('C', '{}')", def(r#"{"attribute":"contry","op":"eq","value":"DE"}"#)),
         "42703", r#"rules[0].where: column "contry" does not exist on entity "customer""#.into()),
        ("SELECT segments.create_segment('C', '{\"entity\":\"client\",\"rules\":[{\"where\":{\"attribute\":\"age\",\"op\":\"is_null\"}}]}')".into(),
         "42P01", r#"entity: entity "client" is not registered"#.into()),
        (format!("SELECT segments.create_segment('C', '{}')", def(r#"{"related":"purchases"}"#)),
         "42P01", r#"rules[0].where.related: related table "purchases" is not registered for entity "customer""#.into()),
        (format!("SELECT segments.create_segment('C', '{}')", def(r#"{"segment":"Z"}"#)),
         "42P01", r#"rules[0].where.segment: segment "Z" does not exist"#.into()),
        (format!("SELECT segments.create_segment('C', '{}')", def(r#"{"attribute":"age","op":"like","value":1}"#)),
         "22023", r#"rules[0].where.op: unknown operator "like""#.into()),
        (format!("SELECT segments.create_segment('C', '{}')", def(r#"{"attribute":"age","op":"eq","value":"old"}"#)),
         "22023", r#"rules[0].where.value: "old" is not a number (column "age" is integer)"#.into()),
        (format!("SELECT segments.create_segment('C', '{}')", def(r#"{"attribute":"unsubscribed","op":"contains","value":"x"}"#)),
         "22023", r#"rules[0].where.op: operator contains does not apply to column "unsubscribed" of type boolean"#.into()),
        (format!("SELECT segments.create_segment('C', '{}')", def(r#"{"related":"orders","aggregate":"sum","attribute":"status","op":"gt","value":1}"#)),
         "22023", r#"rules[0].where.attribute: sum needs a numeric column, and "status" is text"#.into()),
        (format!("SELECT segments.create_segment('A', '{}')", def(r#"{"attribute":"age","op":"is_null"}"#)),
         "42710", r#"a segment named "A" already exists"#.into()),
        (format!("SELECT segments.create_segment('C', '{}', type => 'sometimes')", def(r#"{"attribute":"age","op":"is_null"}"#)),
         "22023", r#"segment "C": type "sometimes" is not static or dynamic"#.into()),
        // Direct writes go through the same checks.
        (format!("INSERT INTO segments.segment (name, definition) VALUES ('C', '{}')", def(r#"{"attribute":"agee","op":"is_null"}"#)),
         "42703", r#"rules[0].where: column "agee" does not exist on entity "customer""#.into()),
        (format!("UPDATE segments.segment SET definition = '{}' WHERE name = 'A'", def(r#"{"attribute":"age","op":"between","value":[1]}"#)),
         "22023", "rules[0].where.value: operator between takes [low, high]".into()),
        (format!("UPDATE segments.segment SET definition = '{}' WHERE name = 'A'", def(r#"{"segment":"B"}"#)),
         "22023", "rules: segment references form a cycle: this segment -> B -> A".into()),
        (format!("UPDATE segments.segment SET definition = '{}' WHERE name = 'A'", def(r#"{"segment":"A"}"#)),
         "22023", "rules[0].where: a segment cannot refer to itself".into()),
        ("SELECT * FROM segments.refresh(ARRAY[424242])".into(), "42704", "segment 424242 does not exist".into()),
        ("SELECT segments.explain(424242)".into(), "42704", "segment 424242 does not exist".into()),
    ];
    for (sql, code, message) in &cases {
        let error = client.batch_execute(sql).expect_err(sql);
        let (got_code, got_message) = sqlstate(&error);
        assert_eq!(got_code, *code, "{sql}: {got_message}");
        assert!(
            got_message.starts_with(message.as_str()),
            "{sql}:\n  got  {got_message}\n  want {message}"
        );
    }
    let after: String = client.query_one(snapshot, &[]).unwrap().get(0);
    assert_eq!(before, after, "a refused statement changed the catalog");
}

/// Quotes, semicolons, comments, backslashes and unicode in every place a
/// definition can hold text stay data: tables stay intact, and values
/// select exactly the rows that hold them.
#[test]
fn injection_attempts_leave_every_table_intact() {
    let cluster = Cluster::start("injection", &[]);
    let mut client = sample_database(&cluster, "1000");
    client
        .batch_execute("CREATE TABLE canary (id int); INSERT INTO canary VALUES (1), (2), (3);")
        .unwrap();
    let evil = [
        "x'); DROP TABLE canary; --",
        "\"; DROP TABLE canary; --",
        "\\'; DROP TABLE canary; --",
        "/* */; DELETE FROM canary; --",
        "$$; DROP TABLE canary; $$",
        "ünïcødé ' \" \\ ; 🎯",
    ];
    for (i, text) in evil.iter().enumerate() {
        // Plant the value in one customer so the segment has exactly one member.
        client
            .execute(
                "UPDATE customers SET city = $1 WHERE id = $2",
                &[text, &(i as i64 + 1)],
            )
            .unwrap();
        let value = serde_json::to_string(text).unwrap();
        for (op, expected) in [("eq", 1i64), ("contains", 1), ("in", 1)] {
            let value = if op == "in" {
                format!("[{value}]")
            } else {
                value.clone()
            };
            let definition = format!(
                r#"{{"entity":"customer","rules":[{{"where":{{"attribute":"city","op":"{op}","value":{value}}}}}]}}"#
            );
            let name = format!("{text} {op}");
            let id: i64 = client
                .query_one(
                    "SELECT segments.create_segment($1, $2::text::jsonb)",
                    &[&name, &definition],
                )
                .unwrap()
                .get(0);
            let count: i64 = client
                .query_one(
                    "SELECT member_count FROM segments.refresh(ARRAY[$1::bigint])",
                    &[&id],
                )
                .unwrap()
                .get(0);
            assert_eq!(count, expected, "{op} {text}");
            // The name is data too: a segment of segments finds it by name.
            let by_name = format!(
                r#"{{"entity":"customer","rules":[{{"where":{{"segment":{}}}}}]}}"#,
                serde_json::to_string(&name).unwrap()
            );
            let estimate: i64 = client
                .query_one(
                    "SELECT cumulative FROM segments.estimate($1::text::jsonb)",
                    &[&by_name],
                )
                .unwrap()
                .get(0);
            assert_eq!(estimate, expected, "segment named {name}");
        }
        // As an attribute, related table or entity name it is refused as unknown.
        for (condition, code) in [
            (
                format!(r#"{{"attribute":{value},"op":"is_null"}}"#),
                "42703",
            ),
            (format!(r#"{{"related":{value}}}"#), "42P01"),
            (
                format!(r#"{{"related":"orders","where":{{"attribute":{value},"op":"is_null"}}}}"#),
                "42703",
            ),
        ] {
            let definition =
                format!(r#"{{"entity":"customer","rules":[{{"where":{condition}}}]}}"#);
            let error = client
                .query_one(
                    "SELECT * FROM segments.estimate($1::text::jsonb)",
                    &[&definition],
                )
                .unwrap_err();
            assert_eq!(sqlstate(&error).0, code, "{condition}");
        }
        let definition = format!(
            r#"{{"entity":{value},"rules":[{{"where":{{"attribute":"age","op":"is_null"}}}}]}}"#
        );
        let error = client
            .query_one(
                "SELECT * FROM segments.estimate($1::text::jsonb)",
                &[&definition],
            )
            .unwrap_err();
        assert_eq!(sqlstate(&error).0, "42P01");
        let error = client
            .query_one(
                "SELECT segments.register_entity($1, 'customers', 'id')",
                &[text],
            )
            .unwrap_err();
        assert_eq!(sqlstate(&error).0, "22023");
    }
    let canary: i64 = client
        .query_one("SELECT count(*) FROM canary", &[])
        .unwrap()
        .get(0);
    assert_eq!(canary, 3);
    let customers: i64 = client
        .query_one("SELECT count(*) FROM customers", &[])
        .unwrap()
        .get(0);
    assert_eq!(customers, 1000);
}

/// uuid and text keys go through the key dictionary and come back out
/// through the members view.
#[test]
fn uuid_and_text_keys_work_end_to_end() {
    let cluster = Cluster::start("keys", &[]);
    let mut client = cluster.connect("postgres");
    client
        .batch_execute(
            "CREATE EXTENSION segments;
             CREATE TABLE leads (id uuid PRIMARY KEY, status text, score int);
             INSERT INTO leads SELECT ('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid,
                    CASE WHEN i % 3 = 0 THEN 'closed' ELSE 'open' END, i FROM generate_series(1, 300) i;
             CREATE TABLE contacts (code text PRIMARY KEY, country text);
             INSERT INTO contacts SELECT 'K-' || i, CASE WHEN i % 2 = 0 THEN 'DE' ELSE 'FR' END FROM generate_series(1, 200) i;
             CREATE TABLE calls (id serial, contact text, at timestamptz);
             INSERT INTO calls (contact, at) SELECT 'K-' || i, now() FROM generate_series(1, 50) i;
             SELECT segments.register_entity('lead', 'leads', 'id', '{\"attribute\": \"status\", \"op\": \"eq\", \"value\": \"open\"}');
             SELECT segments.register_entity('contact', 'contacts', 'code');
             SELECT segments.register_related('contact', 'calls', 'calls', 'contact', 'at');",
        )
        .unwrap();
    client
        .batch_execute(
            r#"SELECT segments.create_segment('Hot leads', '{"entity":"lead","rules":[{"where":{"attribute":"score","op":"gt","value":200}}]}');
               SELECT segments.create_segment('Called Germans', '{"entity":"contact","rules":[
                 {"where":{"attribute":"country","op":"eq","value":"DE"}},
                 {"combine":"intersect","where":{"related":"calls","within":"1 day"}}]}');
               SELECT * FROM segments.refresh();"#,
        )
        .unwrap();
    let hot: i64 = client
        .query_one(
            "SELECT count(*) FROM segments.lead_members WHERE segment_name = 'Hot leads'",
            &[],
        )
        .unwrap()
        .get(0);
    let expected: i64 = client
        .query_one(
            "SELECT count(*) FROM leads WHERE status = 'open' AND score > 200",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(hot, expected);
    let keys: Vec<String> = client
        .query("SELECT code FROM segments.contact_members WHERE segment_name = 'Called Germans' ORDER BY code", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<String> = client
        .query("SELECT code FROM contacts WHERE country = 'DE' AND code IN (SELECT contact FROM calls) ORDER BY code", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(keys.len(), 25);
    assert_eq!(keys, expected);
}

/// Readers read, editors edit, only admins touch never_expire, and a
/// segment is evaluated with its owner's privileges whoever refreshes it.
#[test]
fn roles_and_owner_privileges() {
    let cluster = Cluster::start("roles", &[]);
    let mut admin = sample_database(&cluster, "500");
    admin
        .batch_execute(
            "CREATE ROLE alice LOGIN IN ROLE segments_editor;
             CREATE ROLE bob LOGIN IN ROLE segments_reader;
             CREATE ROLE carol LOGIN IN ROLE segments_admin;
             CREATE ROLE dave LOGIN IN ROLE segments_editor;
             GRANT SELECT ON customers, orders TO alice, carol;
             -- dave may not read customers at all.",
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
    let (mut alice, mut bob, mut carol, mut dave) = (
        connect("alice"),
        connect("bob"),
        connect("carol"),
        connect("dave"),
    );
    let quick = "SELECT segments.quick_segment($1, 'customer', 'country', 'eq', '\"DE\"')";
    let id: i64 = alice
        .query_one(quick, &[&"Alice's Germans"])
        .unwrap()
        .get(0);
    let owner: String = alice
        .query_one(
            "SELECT owner::text FROM segments.segment WHERE id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(owner, "alice");
    alice
        .query("SELECT * FROM segments.refresh(ARRAY[$1::bigint])", &[&id])
        .unwrap();

    // A reader reads, and cannot write.
    let count: i64 = bob
        .query_one(
            "SELECT member_count FROM segments.segment_list WHERE id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert!(count > 0);
    let error = bob.query_one(quick, &[&"Bob's"]).unwrap_err();
    assert_eq!(sqlstate(&error).0, "42501");
    let error = bob
        .execute("SELECT segments.rename($1, 'x')", &[&id])
        .unwrap_err();
    assert_eq!(sqlstate(&error).0, "42501");
    // The members view checks the reader's own privileges on customers.
    let error = bob
        .query("SELECT * FROM segments.customer_members", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&error).0, "42501");
    let rows: i64 = carol
        .query_one(
            "SELECT count(*) FROM segments.customer_members WHERE segment_id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows, count);

    // never_expire: refused to an editor, allowed to an admin, both paths.
    let error = alice
        .execute(
            "SELECT segments.disable_auto_cleanup(ARRAY[$1::bigint])",
            &[&id],
        )
        .unwrap_err();
    let (code, message) = sqlstate(&error);
    assert_eq!(code, "42501");
    assert!(message.contains("never_expire"), "{message}");
    let error = alice
        .execute(
            "UPDATE segments.segment SET never_expire = true WHERE id = $1",
            &[&id],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&error).0, "42501");
    let changed: i32 = carol
        .query_one(
            "SELECT segments.disable_auto_cleanup(ARRAY[$1::bigint])",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(changed, 1);

    // An editor cannot save a definition reading what they may not SELECT...
    let error = dave.query_one(quick, &[&"Dave's Germans"]).unwrap_err();
    let (code, message) = sqlstate(&error);
    assert_eq!(code, "42501");
    assert!(
        message.contains("column \"country\" of public.customers"),
        "{message}"
    );
    // ...nor edit someone else's segment into one.
    let error = dave
        .execute("UPDATE segments.segment SET definition = jsonb_set(definition, '{rules,0,where,value}', '\"FR\"') WHERE id = $1", &[&id])
        .unwrap_err();
    assert_eq!(sqlstate(&error).0, "42501");
    // A segment is evaluated as its owner, whoever refreshes it: dave can
    // refresh alice's segment, and once alice loses access even a
    // superuser's refresh fails instead of reading customers for her.
    let row = dave
        .query_one(
            "SELECT status FROM segments.refresh(ARRAY[$1::bigint])",
            &[&id],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "succeeded");
    admin
        .batch_execute("REVOKE SELECT ON customers FROM alice")
        .unwrap();
    let row = admin
        .query_one(
            "SELECT status, error FROM segments.refresh(ARRAY[$1::bigint])",
            &[&id],
        )
        .unwrap();
    let (status, error): (String, Option<String>) = (row.get(0), row.get(1));
    assert_eq!(status, "failed");
    assert!(error
        .unwrap_or_default()
        .contains("permission denied for table customers"));
    // The history keeps the error's SQLSTATE.
    let code: Option<String> =
        admin.query_one("SELECT error_code FROM segments.refresh_run WHERE segment_id = $1 ORDER BY id DESC LIMIT 1", &[&id]).unwrap().get(0);
    assert_eq!(code.as_deref(), Some("42501"));
    let kept: i64 = admin
        .query_one(
            "SELECT member_count FROM segments.membership WHERE segment_id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(kept, count, "a failed refresh keeps the old membership");
}

/// pg_dump and pg_restore keep every segment, its membership and history.
#[test]
fn dump_and_restore_keep_segments_memberships_and_history() {
    let cluster = Cluster::start("dump", &[]);
    let mut source = sample_database(&cluster, "2000");
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

/// DROP EXTENSION ... CASCADE leaves nothing of segments in the database.
#[test]
fn drop_extension_cascade_leaves_nothing_behind() {
    let cluster = Cluster::start("drop", &[]);
    let mut client = sample_database(&cluster, "200");
    client
        .batch_execute(
            r#"SELECT segments.quick_segment('Germans', 'customer', 'country', 'eq', '"DE"');
               SELECT * FROM segments.refresh();
               DROP EXTENSION segments CASCADE;"#,
        )
        .unwrap();
    let left: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = 'segments')
                  + (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'segments')
                  + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'segments')
                  + (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'segment%' AND NOT tgisinternal)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let customers: i64 = client
        .query_one("SELECT count(*) FROM customers", &[])
        .unwrap()
        .get(0);
    assert_eq!(customers, 200, "the user's tables stay");
    // And it installs again cleanly.
    client.batch_execute("CREATE EXTENSION segments").unwrap();
}

/// CSV download through the members view equals the hand-written query.
#[test]
fn csv_download_equals_the_hand_written_query() {
    let cluster = Cluster::start("csv", &[]);
    let mut client = sample_database(&cluster, "3000");
    client
        .batch_execute(
            r#"SELECT segments.create_segment('VIP', '{"entity":"customer","rules":[
                 {"where":{"attribute":"loyalty_tier","op":"in","value":["gold","platinum"]}},
                 {"combine":"except","where":{"attribute":"unsubscribed","op":"is_true"}}]}');
               SELECT * FROM segments.refresh();"#,
        )
        .unwrap();
    let dir = std::env::temp_dir();
    let ours = dir.join(format!("segments-vip-{}.csv", std::process::id()));
    let theirs = dir.join(format!("segments-hand-{}.csv", std::process::id()));
    let psql = |command: String| {
        let status = std::process::Command::new(harness::pg_bin("psql"))
            .args([
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                &cluster.url("postgres"),
                "-c",
                &command,
            ])
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
    };
    psql(format!(
        "\\copy (SELECT * FROM segments.customer_members WHERE segment_name = 'VIP' ORDER BY id) TO '{}' CSV HEADER",
        ours.display()
    ));
    psql(format!(
        "\\copy (SELECT 1::bigint AS segment_id, 'VIP'::text AS segment_name, c.* FROM customers c \
         WHERE loyalty_tier IN ('gold', 'platinum') AND NOT unsubscribed ORDER BY id) TO '{}' CSV HEADER",
        theirs.display()
    ));
    let (a, b) = (
        std::fs::read_to_string(&ours).unwrap(),
        std::fs::read_to_string(&theirs).unwrap(),
    );
    let _ = (std::fs::remove_file(&ours), std::fs::remove_file(&theirs));
    assert!(
        a.lines().count() > 100,
        "the segment should have many members"
    );
    assert_eq!(a, b);
}

fn wait_for<T>(what: &str, seconds: u64, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {seconds}s waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn worker_pid(client: &mut postgres::Client) -> Option<i32> {
    client
        .query_opt(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'segments scheduler'",
            &[],
        )
        .unwrap()
        .map(|r| r.get(0))
}

/// The worker refreshes a due segment within naptime plus a margin, comes
/// back after pg_terminate_backend, and logs what it did.
#[test]
fn worker_refreshes_due_segments_and_comes_back_after_termination() {
    let cluster = Cluster::start(
        "worker",
        &["shared_preload_libraries=segments", "segments.naptime=1"],
    );
    let mut client = sample_database(&cluster, "2000");
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
    let mut client = sample_database(&cluster, "1000");
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
    let mut client = sample_database(&cluster, "1000");
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

/// Two refreshes of one segment from two connections run one after the
/// other: the second waits for the first to commit.
#[test]
fn concurrent_refreshes_of_a_segment_serialize() {
    let cluster = Cluster::start("concurrent", &[]);
    let mut first = sample_database(&cluster, "2000");
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
    let mut writer = sample_database(&cluster, "2000");
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

/// A fast shutdown while the worker refreshes loses nothing: after the
/// restart every segment is in a consistent state.
#[test]
fn fast_shutdown_mid_refresh_loses_nothing() {
    let cluster = Cluster::start(
        "shutdown",
        &["shared_preload_libraries=segments", "segments.naptime=1"],
    );
    let mut client = sample_database(&cluster, "100000");
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

fn names(client: &mut postgres::Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The unused-segment cleanup: the 45-day boundary on created and updated
/// time, live against analytics usage, segment references, never_expire,
/// dry runs, and reactivation.
#[test]
fn unused_segments_are_deactivated_and_tagged() {
    let cluster = Cluster::start("cleanup", &[]);
    let mut client = sample_database(&cluster, "500");
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

/// An export table holds exactly the hand-written query's rows after each
/// refresh, keeps its segments in use, and goes with drop_export.
#[test]
fn exports_follow_refreshes() {
    let cluster = Cluster::start("exports", &[]);
    let mut client = sample_database(&cluster, "2000");
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

/// Refreshing many segments of one entity scans the entity table once.
#[test]
fn many_segments_share_one_scan() {
    let cluster = Cluster::start("sharing", &[]);
    let mut client = sample_database(&cluster, "2000");
    for (i, country) in ["DE", "FR", "US", "GB", "ES", "IT"].iter().enumerate() {
        client
            .execute(
                "SELECT segments.create_segment($1, $2::text::jsonb)",
                &[
                    &format!("{country} over {}", i * 10),
                    &format!(r#"{{"entity":"customer","rules":[{{"where":{{"all":[{{"attribute":"country","op":"eq","value":"{country}"}},{{"attribute":"age","op":"gt","value":{}}}]}}}}]}}"#, i * 10),
                ],
            )
            .unwrap();
    }
    let mut tx = client.transaction().unwrap();
    let refreshed: i64 = tx
        .query_one(
            "SELECT count(*) FROM segments.refresh() WHERE status = 'succeeded'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(refreshed, 6);
    let scans: i64 = tx
        .query_one("SELECT seq_scan + coalesce(idx_scan, 0) FROM pg_stat_xact_user_tables WHERE relname = 'customers'", &[])
        .unwrap()
        .get(0);
    assert_eq!(scans, 1, "six segments, one scan of customers");
}

/// The sales flow: records entering connected segments start sequences by
/// priority, move_existing takes records, deactivation stops new
/// connections, deletion keeps the ones made, records connect by hand.
#[test]
fn sequences_connect_records_by_priority() {
    let cluster = Cluster::start("sequences", &[]);
    let mut client = sample_database(&cluster, "2000");
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
    let mut client = sample_database(&cluster, "5000");
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

/// Every public function, view, table and column has a comment, members
/// views included (the single-id overloads too).
#[test]
fn every_public_object_has_a_comment() {
    let cluster = Cluster::start("comments", &[]);
    let mut client = sample_database(&cluster, "100");
    let missing: Vec<String> = client
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_proc p
              WHERE p.pronamespace = 'segments'::regnamespace AND p.proname NOT LIKE '\\_%'
                AND obj_description(p.oid, 'pg_proc') IS NULL
             UNION ALL
             SELECT c.oid::regclass::text FROM pg_class c
              WHERE c.relnamespace = 'segments'::regnamespace AND c.relkind IN ('r', 'v')
                AND obj_description(c.oid, 'pg_class') IS NULL
             UNION ALL
             SELECT c.oid::regclass::text || '.' || a.attname FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
              WHERE c.relnamespace = 'segments'::regnamespace AND c.relkind IN ('r', 'v') AND a.attnum > 0
                AND NOT a.attisdropped AND col_description(c.oid, a.attnum) IS NULL
             ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(missing.is_empty(), "objects without a comment: {missing:?}");
    // One id and untyped literals work; NULL and empty change nothing.
    let id: i64 = client
        .query_one(
            "SELECT segments.quick_segment('x', 'customer', 'age', 'gt', '30')",
            &[],
        )
        .unwrap()
        .get(0);
    let n: i32 = client
        .query_one(&format!("SELECT segments.tag({id}, ARRAY['a'])"), &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let rows = client
        .query("SELECT * FROM segments.refresh(NULL)", &[])
        .unwrap();
    assert_eq!(rows.len(), 1, "refresh(NULL) is every segment");
    for sql in [
        "SELECT segments.activate(NULL)",
        "SELECT segments.activate(ARRAY[]::bigint[])",
        "SELECT segments.set_type(NULL, 'static')",
    ] {
        let n: i32 = client.query_one(sql, &[]).unwrap().get(0);
        assert_eq!(n, 0, "{sql}");
    }
    let rows = client.query("SELECT * FROM segments.deactivate((SELECT array_agg(id) FROM segments.segment WHERE 'nope' = ANY (tags)))", &[]).unwrap();
    assert!(rows.is_empty());
    let rows = client
        .query("SELECT * FROM segments.delete(NULL)", &[])
        .unwrap();
    assert!(rows.is_empty());
    let state: String = client
        .query_one(
            &format!("SELECT state FROM segments.segment WHERE id = {id}"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(state, "active");
    let n: i32 = client
        .query_one(&format!("SELECT segments.activate('{{{id}}}')"), &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}
