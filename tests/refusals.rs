//! Layer 3: what segments refuse and who may do what: every refusal's
//! SQLSTATE names the culprit and writes nothing, injection attempts stay
//! data, and roles and owners' privileges hold.

mod harness;

use harness::{sqlstate, Cluster};

/// Every refusal has its SQLSTATE, names the culprit, and writes nothing,
/// through the functions and through direct writes to the catalog alike.
#[test]
fn refusals_name_the_culprit_and_write_nothing() {
    let cluster = Cluster::start("refusals", &[]);
    let mut client = cluster.sample("1000");
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
    let mut client = cluster.sample("1000");
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

/// Readers read, editors edit, only admins touch never_expire, and a
/// segment is evaluated with its owner's privileges whoever refreshes it.
#[test]
fn roles_and_owner_privileges() {
    let cluster = Cluster::start("roles", &[]);
    let mut admin = cluster.sample("500");
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
