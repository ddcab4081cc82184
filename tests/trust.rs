//! Layer 3: trust, round 2 (issue "no table owner becomes superuser, backups
//! keep every segment, live capture never breaks a user's writes"), on real
//! clusters. The table owner here is hostile: `app_owner` owns the customer
//! tables and is not a superuser; `ed` is a `segments_editor`. Every type
//! app_owner makes records `current_user` whenever its code runs; no
//! extension path may run it as a role other than the one that wrote the
//! row.

mod harness;

use harness::{connect_as, sqlstate, Cluster};

const ANCHOR: &str = "2026-11-01";

/// The sample database with its tables handed to app_owner, and app_owner's
/// recorder: `app.who` gets a row whenever one of app_owner's functions
/// runs, naming the role it ran as, and the function also tries to make
/// app_owner a superuser.
fn setup(cluster: &Cluster) -> postgres::Client {
    let mut admin = cluster.sample_database(
        "300",
        ANCHOR,
        "CREATE ROLE app_owner LOGIN;
         CREATE ROLE ed LOGIN IN ROLE segments_editor, segments_sequence_manager;
         ALTER TABLE customers OWNER TO app_owner;
         ALTER TABLE orders OWNER TO app_owner;
         GRANT SELECT ON customers, orders TO ed;
         CREATE SCHEMA app AUTHORIZATION app_owner;",
    );
    let mut owner = connect_as(cluster, "app_owner");
    owner
        .batch_execute(
            "CREATE TABLE app.who (who text, what text);
             GRANT INSERT, SELECT ON app.who TO PUBLIC;
             CREATE FUNCTION app.record(what text) RETURNS boolean LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO app.who VALUES (current_user, what);
                 BEGIN
                     EXECUTE 'ALTER ROLE app_owner SUPERUSER';
                 EXCEPTION WHEN others THEN NULL;
                 END;
                 RETURN true;
             END $$;
             GRANT EXECUTE ON FUNCTION app.record(text) TO PUBLIC;
             -- A composite with a cast to text and to bigint, both implicit.
             CREATE TYPE app.evil AS (v bigint);
             CREATE FUNCTION app.evil_text(app.evil) RETURNS text LANGUAGE sql
                 AS $$ SELECT CASE WHEN app.record('evil::text') THEN ($1).v::text END $$;
             CREATE FUNCTION app.evil_bigint(app.evil) RETURNS bigint LANGUAGE sql
                 AS $$ SELECT CASE WHEN app.record('evil::bigint') THEN ($1).v END $$;
             CREATE CAST (app.evil AS text) WITH FUNCTION app.evil_text(app.evil) AS IMPLICIT;
             CREATE CAST (app.evil AS bigint) WITH FUNCTION app.evil_bigint(app.evil) AS IMPLICIT;
             -- And an operator = of its own, in its own schema.
             CREATE FUNCTION app.evil_eq(app.evil, bigint) RETURNS boolean LANGUAGE sql
                 AS $$ SELECT app.record('evil = bigint') AND ($1).v = $2 $$;
             CREATE OPERATOR app.= (LEFTARG = app.evil, RIGHTARG = bigint, FUNCTION = app.evil_eq);
             -- An enum with an implicit cast to text.
             CREATE TYPE app.mood AS ENUM ('calm', 'angry');
             CREATE FUNCTION app.mood_text(app.mood) RETURNS text LANGUAGE sql
                 AS $$ SELECT CASE WHEN app.record('mood::text') THEN $1::text END $$;
             CREATE CAST (app.mood AS text) WITH FUNCTION app.mood_text(app.mood) AS IMPLICIT;
             -- A domain whose CHECK records.
             CREATE DOMAIN app.nick AS text CHECK (app.record('nick check'));
             ALTER TABLE customers ADD COLUMN mood app.mood, ADD COLUMN nick app.nick, ADD COLUMN score app.evil;
             UPDATE customers SET mood = 'angry', score = ROW(id) WHERE id % 3 = 0;
             ALTER TABLE orders ADD COLUMN weight app.evil;
             TRUNCATE app.who;",
        )
        .unwrap();
    admin
        .batch_execute("SELECT segments.register_entity('by_code', 'customers', 'code')")
        .unwrap();
    admin
}

/// Who ran app_owner's code: every role but app_owner is an escalation.
fn escalations(admin: &mut postgres::Client) -> Vec<String> {
    let rows = admin
        .query(
            "SELECT who || ': ' || what FROM app.who WHERE who <> 'app_owner' ORDER BY 1",
            &[],
        )
        .unwrap();
    let mut found: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let superuser: bool = admin
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = 'app_owner'",
            &[],
        )
        .unwrap()
        .get(0);
    if superuser {
        found.push("app_owner became a superuser".into());
    }
    found
}

/// Issue items 1a, 1b, 1c and the user-type class: a user-defined type
/// with casts and operators on every key, foreign-key and compared column.
#[test]
fn a_table_owner_never_runs_code_as_another_role() {
    let cluster = Cluster::start("trust-types", &["shared_preload_libraries=segments"]);
    let mut admin = setup(&cluster);
    let mut ed = connect_as(&cluster, "ed");
    let mut owner = connect_as(&cluster, "app_owner");

    // Compared columns of app_owner's types are refused when saved (42804,
    // naming the column); a domain over text is compared as text, without
    // its CHECK.
    for (column, op) in [("score", "eq"), ("mood", "eq"), ("mood", "contains")] {
        let definition = format!(
            r#"{{"entity":"customer","rules":[{{"where":{{"attribute":"{column}","op":"{op}","value":"1"}}}}]}}"#
        );
        let error = ed
            .query_one(
                "SELECT segments.create_segment($1, $2::text::jsonb)",
                &[&format!("by {column} {op}"), &definition],
            )
            .expect_err(column);
        let (code, message) = sqlstate(&error);
        assert_eq!(code, "42804", "{message}");
        assert!(message.contains(&format!("\"{column}\"")), "{message}");
    }
    for definition in [
        r#"{"entity":"customer","rules":[{"where":{"related":"orders","aggregate":"sum","attribute":"weight","op":"gt","value":1}}]}"#,
        r#"{"entity":"customer","rules":[{"where":{"related":"orders","where":{"attribute":"weight","op":"eq","value":"1"}}}]}"#,
    ] {
        let error = ed
            .query_one(
                "SELECT segments.create_segment('weights', $1::text::jsonb)",
                &[&definition],
            )
            .expect_err(definition);
        assert_eq!(sqlstate(&error).0, "42804", "{definition}");
    }
    let nick: i64 = ed
        .query_one(
            r#"SELECT segments.create_segment('nicks', '{"entity":"customer","rules":[{"where":{"attribute":"nick","op":"eq","value":"x"}}]}')"#,
            &[],
        )
        .unwrap()
        .get(0);
    // A live segment on orders, a text-keyed segment, a sequence.
    let live: i64 = ed
        .query_one(
            r#"SELECT segments.create_segment('buyers', '{"entity":"customer","rules":[{"where":{"related":"orders","exists":true}}]}', schedule => 'live')"#,
            &[],
        )
        .unwrap()
        .get(0);
    let by_code: i64 = ed
        .query_one(
            r#"SELECT segments.create_segment('coded', '{"entity":"by_code","rules":[{"where":{"attribute":"country","op":"eq","value":"DE"}}]}')"#,
            &[],
        )
        .unwrap()
        .get(0);
    ed.batch_execute("SELECT * FROM segments.refresh()")
        .unwrap();
    let sequence: i64 = ed
        .query_one("SELECT segments.create_sequence('Welcome', 'by_code')", &[])
        .unwrap()
        .get(0);
    assert!(
        escalations(&mut admin).is_empty(),
        "{:?}",
        escalations(&mut admin)
    );

    // 1a: the foreign key of the live segment's related table is renamed
    // and a column of type evil takes its name; writes are captured (the
    // registration follows the rename) and nothing of app_owner's runs.
    owner
        .batch_execute(
            "ALTER TABLE orders RENAME customer_id TO buyer_id;
             ALTER TABLE orders ADD COLUMN customer_id app.evil;
             INSERT INTO orders (id, buyer_id, ordered_at, amount, status, channel, customer_id)
                 VALUES (900001, 2, now(), 5, 'paid', 'web', ROW(2));
             UPDATE orders SET buyer_id = 3, customer_id = ROW(3) WHERE id = 900001;
             DELETE FROM orders WHERE id = 900001;",
        )
        .unwrap();
    let foreign_key: String = admin
        .query_one(
            "SELECT foreign_key::text FROM segments.related WHERE name = 'orders'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        foreign_key, "buyer_id",
        "the registration follows the rename"
    );
    let queued: i64 = admin
        .query_one(
            "SELECT count(*) FROM segments.change_queue WHERE source = 'orders'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(queued >= 2, "changes of orders were captured ({queued})");
    admin
        .batch_execute("SELECT segments.apply_changes()")
        .unwrap();
    let status: String = admin
        .query_one(
            "SELECT status FROM segments.segment WHERE id = $1",
            &[&live],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "succeeded");
    assert!(
        escalations(&mut admin).is_empty(),
        "1a: {:?}",
        escalations(&mut admin)
    );

    // A foreign key of app_owner's type: registering it is refused, and a
    // registered one changed to it fails its segments, naming it.
    let error = admin
        .batch_execute(
            "SELECT segments.register_related('customer', 'weighted', 'orders', 'weight')",
        )
        .expect_err("a foreign key of type evil");
    assert_eq!(sqlstate(&error).0, "42804");
    owner
        .batch_execute("ALTER TABLE orders ALTER COLUMN buyer_id TYPE app.evil USING ROW(buyer_id)")
        .unwrap();
    admin
        .batch_execute("SELECT * FROM segments.refresh()")
        .unwrap();
    let (status, error): (String, Option<String>) = admin
        .query_one(
            "SELECT status, last_error FROM segments.segment WHERE id = $1",
            &[&live],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(status, "failed");
    assert!(
        error.as_deref().unwrap_or("").contains("\"buyer_id\""),
        "{error:?}"
    );
    owner.batch_execute("INSERT INTO orders (id, buyer_id, ordered_at, amount, status, channel) VALUES (900002, ROW(4), now(), 1, 'paid', 'web')").unwrap();
    admin
        .batch_execute("SELECT segments.apply_changes()")
        .unwrap();
    assert!(
        escalations(&mut admin).is_empty(),
        "foreign key: {:?}",
        escalations(&mut admin)
    );

    // 1b, zero-click: the text key becomes app_owner's type with an
    // implicit cast to text; the scheduler's pass (what the worker runs, as
    // the extension) and a superuser's refresh fail the entity's segments,
    // naming the column, and run nothing of app_owner's.
    owner
        .batch_execute(
            "CREATE TYPE app.evil2 AS (v text);
             CREATE FUNCTION app.evil2_text(app.evil2) RETURNS text LANGUAGE sql
                 AS $$ SELECT CASE WHEN app.record('evil2::text') THEN ($1).v END $$;
             CREATE CAST (app.evil2 AS text) WITH FUNCTION app.evil2_text(app.evil2) AS IMPLICIT;
             ALTER TABLE customers ALTER COLUMN code TYPE app.evil2 USING ROW(code);
             INSERT INTO customers (id, code, country, unsubscribed, signed_up_at) VALUES (900001, ROW($$new$$), $$DE$$, false, now());",
        )
        .unwrap();
    admin
        .batch_execute(
            "UPDATE segments.segment SET needs_refresh = true WHERE id = $1"
                .replace("$1", &by_code.to_string())
                .as_str(),
        )
        .ok();
    admin
        .batch_execute("SELECT segments.run_due(); SELECT * FROM segments.refresh()")
        .unwrap();
    let error: Option<String> = admin
        .query_one(
            "SELECT last_error FROM segments.segment WHERE id = $1",
            &[&by_code],
        )
        .unwrap()
        .get(0);
    let error = error.unwrap_or_default();
    assert!(
        error.contains("\"code\"") && error.contains("not text"),
        "{error}"
    );
    // 1c: connecting records reads the keys as the caller, and refuses the
    // changed key column.
    let error = ed
        .query_one(
            "SELECT segments.connect_records($1, ARRAY['C00000001'])",
            &[&sequence],
        )
        .expect_err("connect_records on a key of type evil2");
    assert_eq!(sqlstate(&error).0, "42804", "{}", sqlstate(&error).1);
    // Reading members, explaining, estimating: as the reader, never as the extension.
    ed.batch_execute(&format!(
        "SELECT count(*) FROM segments.customer_members WHERE segment_id = {nick}"
    ))
    .unwrap();
    assert!(
        escalations(&mut admin).is_empty(),
        "1b/1c: {:?}",
        escalations(&mut admin)
    );
    let records: i64 = admin
        .query_one("SELECT count(*) FROM app.who", &[])
        .unwrap()
        .get(0);
    eprintln!("app_owner's code ran {records} time(s), each as app_owner");
}

/// Issue item 3: capture never fails a user's statement, and follows DDL.
#[test]
fn capture_never_breaks_a_users_writes() {
    let cluster = Cluster::start("trust-capture", &["shared_preload_libraries=segments"]);
    let mut admin = cluster.sample_database("300", ANCHOR, "");
    let country: i64 = admin
        .query_one(
            r#"SELECT segments.create_segment('Germany', '{"entity":"customer","rules":[{"where":{"attribute":"country","op":"eq","value":"DE"}}]}', schedule => 'live')"#,
            &[],
        )
        .unwrap()
        .get(0);
    let city: i64 = admin
        .query_one(
            r#"SELECT segments.create_segment('Berlin', '{"entity":"customer","rules":[{"where":{"attribute":"city","op":"eq","value":"Berlin"}}]}', schedule => 'live')"#,
            &[],
        )
        .unwrap()
        .get(0);
    let buyers: i64 = admin
        .query_one(
            r#"SELECT segments.create_segment('Buyers', '{"entity":"customer","rules":[{"where":{"related":"orders","exists":true}}]}', schedule => 'live')"#,
            &[],
        )
        .unwrap()
        .get(0);
    admin
        .batch_execute("SELECT * FROM segments.refresh()")
        .unwrap();
    let members = |admin: &mut postgres::Client, id: i64| -> i64 {
        admin
            .query_one(
                "SELECT coalesce(member_count, -1) FROM segments.segment WHERE id = $1",
                &[&id],
            )
            .unwrap()
            .get(0)
    };
    let truth = |admin: &mut postgres::Client, sql: &str| -> i64 {
        admin.query_one(sql, &[]).unwrap().get(0)
    };

    // The foreign key of a related table live segments read is renamed:
    // writes go on, are captured, and the segment stays exact.
    admin
        .batch_execute(
            "ALTER TABLE orders RENAME customer_id TO buyer_id;
             INSERT INTO orders (id, buyer_id, ordered_at, amount, status, channel)
                 SELECT 800000 + c.id, c.id, now(), 1, 'paid', 'web' FROM customers c
                  WHERE NOT EXISTS (SELECT FROM orders o WHERE o.buyer_id = c.id) LIMIT 5;
             UPDATE orders SET amount = amount + 1 WHERE id > 800000;
             DELETE FROM orders WHERE id IN (SELECT min(id) FROM orders);",
        )
        .expect("writes after renaming the foreign key");
    admin
        .batch_execute("SELECT segments.apply_changes()")
        .unwrap();
    assert_eq!(
        members(&mut admin, buyers),
        truth(&mut admin, "SELECT count(DISTINCT buyer_id) FROM orders")
    );

    // Columns live segments read can be retyped and dropped, with CASCADE
    // too: the capture of the others is remade, and create_segment works.
    admin
        .batch_execute("ALTER TABLE customers ALTER COLUMN city TYPE varchar(80)")
        .expect("retyping a watched column");
    admin
        .batch_execute("ALTER TABLE customers DROP COLUMN country")
        .expect("dropping a watched column");
    admin.batch_execute("ALTER TABLE customers ADD COLUMN country text; ALTER TABLE customers DROP COLUMN country CASCADE").unwrap();
    admin
        .batch_execute(r#"SELECT segments.create_segment('Young', '{"entity":"customer","rules":[{"where":{"attribute":"age","op":"lt","value":30}}]}', schedule => 'live')"#)
        .expect("create_segment after a watched column was dropped");
    let upd_triggers: i64 = truth(
        &mut admin,
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'customers'::regclass AND tgname LIKE 'segments\\_live\\_upd\\_%'",
    );
    assert_eq!(
        upd_triggers, 1,
        "one row trigger, remade on the columns the table still has"
    );
    admin
        .batch_execute("SELECT * FROM segments.refresh()")
        .unwrap();
    admin
        .batch_execute("UPDATE customers SET city = 'Berlin' WHERE id BETWEEN 1 AND 7")
        .unwrap();
    admin
        .batch_execute("SELECT segments.apply_changes()")
        .unwrap();
    assert_eq!(
        members(&mut admin, city),
        truth(
            &mut admin,
            "SELECT count(*) FROM customers WHERE city = 'Berlin'"
        )
    );
    // The segment reading the dropped column fails, naming it.
    let error: Option<String> = admin
        .query_one(
            "SELECT last_error FROM segments.segment WHERE id = $1",
            &[&country],
        )
        .unwrap()
        .get(0);
    assert!(error.unwrap_or_default().contains("\"country\""));

    // The key column itself renamed: followed too.
    admin
        .batch_execute("ALTER TABLE customers RENAME id TO customer_no")
        .unwrap();
    admin.batch_execute("UPDATE customers SET city = 'Berlin' WHERE customer_no BETWEEN 8 AND 9; DELETE FROM orders WHERE buyer_id = 10; DELETE FROM email_events WHERE customer_id = 10; DELETE FROM customers WHERE customer_no = 10").unwrap();
    admin
        .batch_execute("SELECT segments.apply_changes()")
        .unwrap();
    assert_eq!(
        members(&mut admin, city),
        truth(
            &mut admin,
            "SELECT count(*) FROM customers WHERE city = 'Berlin'"
        )
    );
    let key: String = admin
        .query_one("SELECT key_column::text FROM segments.entity", &[])
        .unwrap()
        .get(0);
    assert_eq!(key, "customer_no");
}

/// Issue item 4: a row image older than a segment's last full refresh is
/// never applied.
#[test]
fn a_stale_row_image_is_never_applied() {
    let cluster = Cluster::start("trust-image", &["shared_preload_libraries=segments"]);
    let mut admin = cluster.sample_database("300", ANCHOR, "");
    admin
        .batch_execute(r#"SELECT segments.create_segment('Berlin', '{"entity":"customer","rules":[{"where":{"attribute":"city","op":"eq","value":"Berlin"}}]}', schedule => 'live'); SELECT * FROM segments.refresh()"#)
        .unwrap();
    admin
        .batch_execute(
            "UPDATE customers SET loyalty_tier = 'gold' WHERE id = 20;
             UPDATE customers SET city = 'Munich' WHERE id = 20;
             UPDATE customers SET loyalty_tier = 'diamond' WHERE id = 20;",
        )
        .unwrap();
    let image: i64 = admin
        .query_one(
            "SELECT count(*) FROM segments.change_queue WHERE key = '20' AND image IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(image, 1, "the city update was queued with its image");
    let diamond: i64 = admin
        .query_one(
            r#"SELECT segments.create_segment('Diamond', '{"entity":"customer","rules":[{"where":{"attribute":"loyalty_tier","op":"eq","value":"diamond"}}]}', schedule => 'live')"#,
            &[],
        )
        .unwrap()
        .get(0);
    admin
        .batch_execute(&format!(
            "SELECT * FROM segments.refresh(ARRAY[{diamond}::bigint])"
        ))
        .unwrap();
    admin
        .batch_execute("SELECT segments.apply_changes()")
        .unwrap();
    let member: bool = admin
        .query_one("SELECT segments.is_member($1, 20)", &[&diamond])
        .unwrap()
        .get(0);
    assert!(
        member,
        "key 20 is diamond: the image from before the refresh must not be applied"
    );
    let exited: i64 = admin
        .query_one("SELECT count(*) FROM segments.membership_change WHERE segment_id = $1 AND key = '20' AND change = 'exited'", &[&diamond])
        .unwrap()
        .get(0);
    assert_eq!(exited, 0);
}

/// A definition of exactly `n` conditions: an `any` of n - 1 tests.
fn wide_definition(n: usize) -> String {
    let tests: Vec<String> = (1..n)
        .map(|i| format!(r#"{{"attribute":"email","op":"contains","value":"q{i}z"}}"#))
        .collect();
    format!(
        r#"{{"entity":"customer","rules":[{{"where":{{"any":[{}]}}}}]}}"#,
        tests.join(",")
    )
}

/// Issue item 5: definitions are bounded (segments.max_conditions), the
/// extension's queries never use JIT, and a cancel of the largest allowed
/// definition's refresh wins within a second, JIT forced on or not.
#[test]
fn a_cancel_wins_over_the_largest_definition() {
    let cluster = Cluster::start("trust-cancel", &["shared_preload_libraries=segments"]);
    let mut admin = cluster.sample_database("30000", ANCHOR, "");
    let max: i64 = admin
        .query_one(
            "SELECT current_setting('segments.max_conditions')::bigint",
            &[],
        )
        .unwrap()
        .get(0);
    let too_wide = wide_definition(max as usize + 1);
    let error = admin
        .query_one(
            "SELECT segments.create_segment('too wide', $1::text::jsonb)",
            &[&too_wide],
        )
        .expect_err("over the limit");
    let (code, message) = sqlstate(&error);
    assert_eq!(code, "22023");
    assert!(message.contains("segments.max_conditions"), "{message}");
    let error = admin
        .query(
            "SELECT * FROM segments.estimate($1::text::jsonb)",
            &[&too_wide],
        )
        .expect_err("estimate over the limit");
    assert_eq!(sqlstate(&error).0, "22023");

    let widest = wide_definition(max as usize);
    let id: i64 = admin
        .query_one(
            "SELECT segments.create_segment('widest', $1::text::jsonb)",
            &[&widest],
        )
        .unwrap()
        .get(0);
    for jit in ["off", "on"] {
        let mut session = cluster.connect("postgres");
        session.batch_execute(&format!("SET jit = {jit}; SET jit_above_cost = 0; SET jit_optimize_above_cost = 0; SET jit_inline_above_cost = 0")).unwrap();
        let pid: i32 = session
            .query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        let refresh = std::thread::spawn(move || {
            let result = session.query("SELECT * FROM segments.refresh(ARRAY[$1::bigint])", &[&id]);
            (result.map(|rows| rows.len()), std::time::Instant::now())
        });
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let cancelled_at = std::time::Instant::now();
        let sent: bool = admin
            .query_one("SELECT pg_cancel_backend($1)", &[&pid])
            .unwrap()
            .get(0);
        assert!(sent);
        let (result, ended_at) = refresh.join().unwrap();
        let error = result
            .expect_err("the refresh was still running when cancelled (make the data larger)");
        assert_eq!(sqlstate(&error).0, "57014", "{error}");
        let waited = ended_at.duration_since(cancelled_at);
        eprintln!("jit = {jit}: the cancel of a {max}-condition refresh won after {waited:?}");
        assert!(
            waited < std::time::Duration::from_secs(1),
            "jit = {jit}: the cancel took {waited:?}"
        );
    }
}

/// Issue item 5: the worker's refresh of a group stops at
/// segments.refresh_timeout; its segments fail with 57014, keep their
/// membership, and the worker goes on.
#[test]
fn the_worker_stops_a_refresh_at_its_timeout() {
    let cluster = Cluster::start(
        "trust-timeout",
        &[
            "shared_preload_libraries=segments",
            "segments.naptime=1",
            "segments.refresh_timeout=300",
        ],
    );
    let mut admin = cluster.sample_database("30000", ANCHOR, "");
    let widest = wide_definition(2000);
    let id: i64 = admin
        .query_one(
            "SELECT segments.create_segment('widest', $1::text::jsonb)",
            &[&widest],
        )
        .unwrap()
        .get(0);
    let small: i64 = admin
        .query_one(r#"SELECT segments.create_segment('small', '{"entity":"customer","rules":[{"where":{"attribute":"age","op":"lt","value":30}}]}')"#, &[])
        .unwrap()
        .get(0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let row = admin
            .query_opt("SELECT error_code, error FROM segments.refresh_run WHERE segment_id = $1 AND status = 'failed' LIMIT 1", &[&id])
            .unwrap();
        if let Some(row) = row {
            let (code, error): (Option<String>, Option<String>) = (row.get(0), row.get(1));
            assert_eq!(code.as_deref(), Some("57014"));
            assert!(error
                .unwrap_or_default()
                .contains("segments.refresh_timeout"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never timed out the wide refresh:\n{}",
            cluster.server_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (status, failures): (String, i32) = admin
        .query_one(
            "SELECT status, consecutive_failures FROM segments.segment WHERE id = $1",
            &[&id],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(status, "failed");
    assert!(failures >= 1);
    // The other segment was refreshed all the same.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status: String = admin
            .query_one(
                "SELECT status FROM segments.segment WHERE id = $1",
                &[&small],
            )
            .unwrap()
            .get(0);
        if status == "succeeded" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the small segment was never refreshed"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Issue item 6: a key longer than the dictionary indexes leaves its row out
/// (with a warning naming it); the entity's refreshes and live applications
/// go on.
#[test]
fn a_long_text_key_never_breaks_its_entity() {
    let cluster = Cluster::start("trust-long-key", &["shared_preload_libraries=segments"]);
    let mut admin = cluster.sample_database(
        "300",
        ANCHOR,
        "SELECT segments.register_entity('by_code', 'customers', 'code');",
    );
    let germany: i64 = admin
        .query_one(r#"SELECT segments.create_segment('German codes', '{"entity":"by_code","rules":[{"where":{"attribute":"country","op":"eq","value":"DE"}}]}')"#, &[])
        .unwrap()
        .get(0);
    let live: i64 = admin
        .query_one(
            r#"SELECT segments.create_segment('Berlin codes', '{"entity":"by_code","rules":[{"where":{"attribute":"city","op":"eq","value":"Berlin"}}]}', schedule => 'live')"#,
            &[],
        )
        .unwrap()
        .get(0);
    admin
        .batch_execute("SELECT * FROM segments.refresh()")
        .unwrap();
    admin
        .batch_execute(
            "INSERT INTO customers (id, code, country, city, unsubscribed, signed_up_at)
                 VALUES (900001, repeat('k', 2688), 'DE', 'Berlin', false, now()),
                        (900002, 'short-one', 'DE', 'Berlin', false, now())",
        )
        .unwrap();
    admin
        .batch_execute("SELECT segments.apply_changes()")
        .expect("a live application with a long key");
    let rows = admin
        .query("SELECT status, error FROM segments.refresh()", &[])
        .unwrap();
    for row in &rows {
        let (status, error): (String, Option<String>) = (row.get(0), row.get(1));
        assert_eq!(status, "succeeded", "{error:?}");
    }
    let (count, truth): (i64, i64) = admin
        .query_one(
            "SELECT member_count, (SELECT count(*) FROM customers WHERE country = 'DE' AND length(code) <= 2000) FROM segments.segment WHERE id = $1",
            &[&germany],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(count, truth, "every other German row is a member");
    let short: bool = admin
        .query_one("SELECT segments.is_member($1, 'short-one'::text)", &[&live])
        .unwrap()
        .get(0);
    assert!(short);
    let long: bool = admin
        .query_one(
            "SELECT segments.is_member($1, repeat('k', 2688))",
            &[&germany],
        )
        .unwrap()
        .get(0);
    assert!(!long, "the long key is left out");
    // The warning names the entity and the key's start.
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = notices.clone();
    let mut session = cluster
        .url("postgres")
        .parse::<postgres::Config>()
        .unwrap()
        .notice_callback(move |notice| seen.lock().unwrap().push(notice.message().to_string()))
        .connect(postgres::NoTls)
        .unwrap();
    session
        .batch_execute(&format!(
            "SELECT * FROM segments.refresh(ARRAY[{germany}::bigint])"
        ))
        .unwrap();
    let notices = notices.lock().unwrap();
    assert!(
        notices.iter().any(|n| n.contains("entity \"by_code\"")
            && n.contains("kkkk")
            && n.contains("left out")),
        "{notices:?}"
    );
}

/// Issue item 7: connect_records checks keys as the caller, under RLS, and
/// answers alike for a hidden key and a missing one.
#[test]
fn connect_records_is_no_oracle_of_hidden_keys() {
    let cluster = Cluster::start("trust-rls", &["shared_preload_libraries=segments"]);
    let mut admin = cluster.sample_database(
        "300",
        ANCHOR,
        "CREATE ROLE sales LOGIN IN ROLE segments_sequence_manager;
         GRANT SELECT ON customers TO sales;
         ALTER TABLE customers ENABLE ROW LEVEL SECURITY;
         CREATE POLICY everyone ON customers FOR SELECT TO PUBLIC USING (current_user <> 'sales');
         CREATE POLICY french ON customers FOR SELECT TO sales USING (country = 'FR');",
    );
    let hidden: i64 = admin
        .query_one("SELECT min(id) FROM customers WHERE country <> 'FR'", &[])
        .unwrap()
        .get(0);
    let visible: i64 = admin
        .query_one("SELECT min(id) FROM customers WHERE country = 'FR'", &[])
        .unwrap()
        .get(0);
    let mut sales = connect_as(&cluster, "sales");
    let sequence: i64 = sales
        .query_one(
            "SELECT segments.create_sequence('French welcome', 'customer')",
            &[],
        )
        .unwrap()
        .get(0);
    let answer = |client: &mut postgres::Client, key: i64| -> (String, String) {
        let error = client
            .query_one(
                "SELECT segments.connect_records($1, ARRAY[$2::text])",
                &[&sequence, &key.to_string()],
            )
            .expect_err("a key the caller cannot see");
        let (code, message) = sqlstate(&error);
        (code, message.replace(&key.to_string(), "KEY"))
    };
    let for_hidden = answer(&mut sales, hidden);
    let for_missing = answer(&mut sales, 99_999_999);
    assert_eq!(
        for_hidden, for_missing,
        "a hidden key and a missing key get the same answer"
    );
    let connected: i32 = sales
        .query_one(
            "SELECT segments.connect_records($1, ARRAY[$2::text])",
            &[&sequence, &visible.to_string()],
        )
        .unwrap()
        .get(0);
    assert_eq!(connected, 1, "a visible key connects");
    let records: i64 = admin
        .query_one("SELECT count(*) FROM segments.sequence_record", &[])
        .unwrap()
        .get(0);
    assert_eq!(records, 1);
}

/// Issue item 8: every change of a definition is in the history, whatever
/// the statement that made it (a COPY in the same query string, an editor's
/// COPY into segments.segment).
#[test]
fn history_records_every_change_whatever_the_statement() {
    let cluster = Cluster::start("trust-history", &["shared_preload_libraries=segments"]);
    let _admin = cluster.sample_database(
        "300",
        ANCHOR,
        "CREATE ROLE ed LOGIN IN ROLE segments_editor; GRANT SELECT ON customers TO ed;",
    );
    let url = cluster.url("postgres").replace("user=postgres", "user=ed");
    let psql = |sql: &str, input: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new(harness::pg_bin("psql"))
            .args([url.as_str(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    psql(
        r#"COPY (SELECT 1) TO STDOUT; SELECT segments.quick_segment('After a copy', 'customer', 'country', 'eq', '"DE"')"#,
        "",
    );
    psql(
        "COPY segments.segment (name, definition) FROM STDIN",
        "Copied in\t{\"entity\": \"customer\", \"rules\": [{\"where\": {\"attribute\": \"country\", \"op\": \"eq\", \"value\": \"FR\"}}]}\n\\.\n",
    );
    let mut ed = connect_as(&cluster, "ed");
    for name in ["After a copy", "Copied in"] {
        let versions: i64 = ed
            .query_one(
                "SELECT count(*) FROM segments.definition_history h JOIN segments.segment s ON s.id = h.segment_id WHERE s.name = $1",
                &[&name],
            )
            .unwrap()
            .get(0);
        assert_eq!(versions, 1, "{name} has its first version in the history");
        let owner: String = ed
            .query_one(
                "SELECT owner::text FROM segments.segment WHERE name = $1",
                &[&name],
            )
            .unwrap()
            .get(0);
        assert_eq!(owner, "ed", "{name}: an editor's COPY is an ordinary write");
    }
}

/// Issue item 9: numbers are exact end to end: stored definition, compiled
/// literal and explain.
#[test]
fn numbers_are_kept_exactly() {
    let cluster = Cluster::start("trust-numbers", &["shared_preload_libraries=segments"]);
    let mut admin = cluster.sample_database(
        "300",
        ANCHOR,
        "ALTER TABLE customers ADD COLUMN big numeric, ADD COLUMN ratio numeric;
         UPDATE customers SET big = 123456789012345678901234567890 WHERE id = 7;
         UPDATE customers SET ratio = 0.3 WHERE id = 8;",
    );
    let big: i64 = admin
        .query_one(r#"SELECT segments.create_segment('Big', '{"entity":"customer","rules":[{"where":{"attribute":"big","op":"eq","value":123456789012345678901234567890}}]}')"#, &[])
        .unwrap()
        .get(0);
    let ratio: i64 = admin
        .query_one(r#"SELECT segments.create_segment('Ratio', '{"entity":"customer","rules":[{"where":{"attribute":"ratio","op":"eq","value":0.30000000000000001}}]}')"#, &[])
        .unwrap()
        .get(0);
    admin
        .batch_execute("SELECT * FROM segments.refresh()")
        .unwrap();
    let (stored, count): (String, i64) = admin
        .query_one(
            "SELECT definition::text, member_count FROM segments.segment WHERE id = $1",
            &[&big],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert!(
        stored.contains("123456789012345678901234567890"),
        "{stored}"
    );
    assert_eq!(count, 1, "the row holding the number is a member");
    let (stored, count): (String, i64) = admin
        .query_one(
            "SELECT definition::text, member_count FROM segments.segment WHERE id = $1",
            &[&ratio],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert!(stored.contains("0.30000000000000001"), "{stored}");
    assert_eq!(count, 0, "0.30000000000000001 is not 0.3");
    let explained: String = admin
        .query_one(
            "SELECT string_agg(e::text, ' ') FROM segments.explain($1) e",
            &[&big],
        )
        .unwrap()
        .get(0);
    assert!(
        explained.contains("123456789012345678901234567890"),
        "{explained}"
    );
}
