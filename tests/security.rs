//! Layer 3: the trust boundary (README, Security model), tried as a hostile
//! `segments_editor` would, on real clusters. Each attack of the 0.1.0
//! security review is here, and must be refused or harmless.

mod harness;

use std::time::{Duration, Instant};

use harness::{connect_as, sqlstate, Cluster};

const ANCHOR: &str = "2026-11-01";

/// Sample data, the extension, and three roles: alice (editor, owns the
/// segments under attack), mallory (a hostile editor), rita (a reader).
fn setup(cluster: &Cluster, scale: &str) -> postgres::Client {
    cluster.sample_database(
        scale,
        ANCHOR,
        "CREATE ROLE alice LOGIN IN ROLE segments_editor, segments_sequence_manager;
             CREATE ROLE mallory LOGIN IN ROLE segments_editor;
             CREATE ROLE rita LOGIN IN ROLE segments_reader;
             GRANT SELECT ON customers, orders TO alice, mallory;
             CREATE SCHEMA mallory AUTHORIZATION mallory;
             -- A DBA who left public writable, as before PostgreSQL 15.
             GRANT CREATE ON SCHEMA public TO PUBLIC;",
    )
}

fn expect_code(client: &mut postgres::Client, sql: &str, code: &str) -> String {
    let error = client.batch_execute(sql).expect_err(sql);
    let (got, message) = sqlstate(&error);
    assert_eq!(got, code, "{sql}: {message}");
    message
}

/// Attacks 1, 2, 3, 7 of the review: direct writes to internal state,
/// forged owners, maintained columns, internal functions.
#[test]
fn editors_cannot_write_internal_state_or_forge_ownership() {
    let cluster = Cluster::start("sec-writes", &[]);
    let mut admin = setup(&cluster, "1000");
    let mut alice = connect_as(&cluster, "alice");
    let mut mallory = connect_as(&cluster, "mallory");
    let de = r#"{"entity":"customer","rules":[{"where":{"attribute":"country","op":"eq","value":"DE"}}]}"#;
    let id: i64 = alice
        .query_one(
            "SELECT segments.create_segment('Germany', $1::text::jsonb)",
            &[&de],
        )
        .unwrap()
        .get(0);
    alice
        .batch_execute("SELECT * FROM segments.refresh()")
        .unwrap();
    alice
        .batch_execute("CREATE SCHEMA alice_out; ")
        .unwrap_err(); // editors may not create schemas...
    admin
        .batch_execute("CREATE SCHEMA alice_out AUTHORIZATION alice")
        .unwrap(); // ...a DBA gives them one
    alice
        .batch_execute(&format!(
            "SELECT segments.create_export('de', ARRAY[{id}::bigint], 'alice_out.germans')"
        ))
        .unwrap();
    let before: String = admin
        .query_one(
            "SELECT format('%s|%s|%s', (SELECT md5(members) FROM segments.membership), \
                    (SELECT count(*) FROM segments.usage_registry), (SELECT string_agg(owner::text || target::text, ',') FROM segments.export))",
            &[],
        )
        .unwrap()
        .get(0);

    // Every internal table is read-only to editors, TRUNCATE included.
    let tables = [
        "membership",
        "entity",
        "related",
        "entity_key",
        "refresh_run",
        "membership_change",
        "usage_registry",
        "export",
        "similarity_score",
        "sequence",
        "sequence_segment",
        "sequence_record",
        "scheduler_state",
    ];
    let column = |table: &str| match table {
        "membership" | "sequence_segment" => "segment_id",
        "entity" | "related" | "export" | "sequence" => "name",
        "refresh_run" => "status",
        "usage_registry" => "consumer",
        "scheduler_state" => "job",
        _ => "key",
    };
    let mut refused = 0;
    for table in tables {
        for sql in [
            format!("INSERT INTO segments.{table} SELECT * FROM segments.{table} LIMIT 1"),
            format!("UPDATE segments.{table} SET {c} = {c}", c = column(table)),
            format!("DELETE FROM segments.{table}"),
            format!("TRUNCATE segments.{table}"),
        ] {
            expect_code(&mut mallory, &sql, "42501");
            refused += 1;
        }
    }
    assert!(refused >= 52);
    for sql in [
        "UPDATE segments.membership SET members = ''::bytea",
        "UPDATE segments.export SET owner = 'mallory', target = 'segments.export'",
        "DELETE FROM segments.usage_registry",
        "UPDATE segments.scheduler_state SET last_run = '-infinity'",
    ] {
        expect_code(&mut mallory, sql, "42501");
    }

    // Someone else's segment: no DML, no function, never silently skipped.
    for sql in [
        format!("UPDATE segments.segment SET name = 'mine' WHERE id = {id}"),
        format!(
            "UPDATE segments.segment SET definition = '{}' WHERE id = {id}",
            de.replace("DE", "FR")
        ),
        format!("DELETE FROM segments.segment WHERE id = {id}"),
        format!("SELECT segments.rename({id}, 'mine')"),
        format!("SELECT segments.deactivate(ARRAY[{id}::bigint])"),
        format!("SELECT segments.tag(ARRAY[{id}::bigint], ARRAY['x'])"),
        format!("SELECT segments.set_schedule(ARRAY[{id}::bigint], 'daily')"),
        format!("SELECT segments.delete(ARRAY[{id}::bigint])"),
        format!("SELECT segments.set_owner(ARRAY[{id}::bigint], 'mallory')"),
        "SELECT segments.drop_export('de')".to_string(),
    ] {
        let message = expect_code(&mut mallory, &sql, "42501");
        assert!(
            message.contains("alice") || message.contains("segments_"),
            "{sql}: {message}"
        );
    }
    // A forged owner on INSERT is ignored; maintained columns are the extension's.
    let row = mallory
        .query_one(
            "INSERT INTO segments.segment (name, definition, owner, status, member_count, updated_at, created_at, needs_refresh) \
             VALUES ('Forged', $1::text::jsonb, 'alice', 'succeeded', 999, 'infinity', '-infinity', false) \
             RETURNING owner::text, status, member_count, updated_at < 'infinity', created_at > '-infinity', needs_refresh",
            &[&de],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "mallory");
    assert_eq!(row.get::<_, String>(1), "not_refreshed");
    assert_eq!(row.get::<_, Option<i64>>(2), None);
    assert!(row.get::<_, bool>(3) && row.get::<_, bool>(4) && row.get::<_, bool>(5));
    for column in [
        "owner = 'alice'",
        "updated_at = 'infinity'",
        "status = 'failed'",
        "member_count = 1",
        "needs_refresh = false",
        "rule_counts = '[]'",
    ] {
        let message = expect_code(
            &mut mallory,
            &format!("UPDATE segments.segment SET {column} WHERE name = 'Forged'"),
            "42501",
        );
        assert!(message.contains("Forged"), "{message}");
    }
    // Usages the extension records itself cannot be removed by hand.
    expect_code(
        &mut mallory,
        &format!("SELECT segments.remove_usage({id}, 'export', 'de')"),
        "22023",
    );
    // Internal functions are not executable by PUBLIC, nor by editors where they write.
    for sql in [
        "SELECT segments._rewrite_export(1)",
        "SELECT segments._connect_members(ARRAY[1::bigint])",
        "SELECT segments._create_export('mallory', 'x', ARRAY[1::bigint], 'mallory.x')",
        "SELECT segments._drop_export('alice', 'de')",
        "SELECT segments._add_usage(1, 'journey', 'x', true)",
        "SELECT segments._create_sequence('alice', 'x', 'customer')",
    ] {
        expect_code(&mut mallory, sql, "42501");
    }
    // The owner may give a segment only to a role they are a member of.
    let forged: i64 = mallory
        .query_one("SELECT id FROM segments.segment WHERE name = 'Forged'", &[])
        .unwrap()
        .get(0);
    expect_code(
        &mut mallory,
        &format!("SELECT segments.set_owner(ARRAY[{forged}::bigint], 'alice')"),
        "42501",
    );
    admin.batch_execute("GRANT alice TO mallory").unwrap();
    let moved: i32 = mallory
        .query_one(
            &format!("SELECT segments.set_owner(ARRAY[{forged}::bigint], 'alice')"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(moved, 1);
    admin.batch_execute("REVOKE alice FROM mallory").unwrap();

    let after: String = admin
        .query_one(
            "SELECT format('%s|%s|%s', (SELECT md5(members) FROM segments.membership), \
                    (SELECT count(*) FROM segments.usage_registry WHERE kind <> 'segment'), (SELECT string_agg(owner::text || target::text, ',') FROM segments.export))",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(before, after, "an attack changed internal state");
    let alices: String = admin
        .query_one(
            "SELECT string_agg(name || ':' || owner::text, ',' ORDER BY id) FROM segments.segment",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(alices, "Germany:alice,Forged:alice");
    // Export tables give no privileges to anyone but their owner.
    let mut rita = connect_as(&cluster, "rita");
    expect_code(&mut rita, "SELECT * FROM alice_out.germans", "42501");
    expect_code(&mut mallory, "SELECT * FROM alice_out.germans", "42501");
    let owner: String = admin
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE tablename = 'germans'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(owner, "alice");
}

/// Shadows of every function and operator name the extension's generated
/// SQL can contain, in a schema first on the caller's search_path, in
/// `public` and in `pg_temp`. Each records `current_user` when called.
/// Refresh, previews, counts, estimates, exports, sequences, run_due and
/// the worker must never call one (attacks 3 and 4 of the review).
#[test]
fn shadowed_functions_and_operators_are_never_called() {
    let cluster = Cluster::start(
        "sec-shadows",
        &["shared_preload_libraries=segments", "segments.naptime=1"],
    );
    let mut admin = setup(&cluster, "2000");
    admin
        .batch_execute(
            "CREATE TABLE public.shadow_calls (name text, called_by text, at timestamptz DEFAULT clock_timestamp());
             GRANT INSERT ON public.shadow_calls TO PUBLIC;",
        )
        .unwrap();
    // (name, argument types, result type, how to compute the real result)
    let functions: &[(&str, &str, &str, &str)] = &[
        (
            "strpos",
            "text, text",
            "integer",
            "pg_catalog.strpos($1, $2)",
        ),
        (
            "strpos",
            "varchar, text",
            "integer",
            "pg_catalog.strpos($1, $2)",
        ),
        (
            "starts_with",
            "text, text",
            "boolean",
            "pg_catalog.starts_with($1, $2)",
        ),
        ("right", "text, integer", "text", "pg_catalog.right($1, $2)"),
        ("length", "text", "integer", "pg_catalog.length($1)"),
        ("lower", "text", "text", "pg_catalog.lower($1)"),
        ("lower", "varchar", "text", "pg_catalog.lower($1)"),
        (
            "to_char",
            "date, text",
            "text",
            "pg_catalog.to_char($1, $2)",
        ),
        (
            "to_char",
            "timestamptz, text",
            "text",
            "pg_catalog.to_char($1, $2)",
        ),
        (
            "unnest",
            "bigint[]",
            "SETOF bigint",
            "pg_catalog.unnest($1)",
        ),
        ("unnest", "text[]", "SETOF text", "pg_catalog.unnest($1)"),
        ("now", "", "timestamptz", "pg_catalog.now()"),
        (
            "clock_timestamp",
            "",
            "timestamptz",
            "pg_catalog.clock_timestamp()",
        ),
        (
            "pg_notify",
            "text, text",
            "void",
            "pg_catalog.pg_notify($1, $2)",
        ),
        ("format", "text, text", "text", "pg_catalog.format($1, $2)"),
        ("to_jsonb", "customers", "jsonb", "pg_catalog.to_jsonb($1)"),
        (
            "array_remove",
            "text[], text",
            "text[]",
            "pg_catalog.array_remove($1, $2)",
        ),
        ("quote_ident", "name", "text", "pg_catalog.quote_ident($1)"),
        (
            "cardinality",
            "bigint[]",
            "integer",
            "pg_catalog.cardinality($1)",
        ),
        (
            "current_setting",
            "text, boolean",
            "text",
            "pg_catalog.current_setting($1, $2)",
        ),
        (
            "jsonb_typeof",
            "jsonb",
            "text",
            "pg_catalog.jsonb_typeof($1)",
        ),
        (
            "textcat",
            "text, text",
            "text",
            "pg_catalog.textcat($1, $2)",
        ),
        ("ceil", "numeric", "numeric", "pg_catalog.ceil($1)"),
        ("to_jsonb", "numeric", "jsonb", "pg_catalog.to_jsonb($1)"),
        // splits, priority lists, breakdowns and feeds (SPEC 17)
        ("md5", "text", "text", "pg_catalog.md5($1)"),
        ("left", "text, integer", "text", "pg_catalog.left($1, $2)"),
        (
            "width_bucket",
            "integer, integer[]",
            "integer",
            "pg_catalog.width_bucket($1, $2)",
        ),
        (
            "current_setting",
            "text",
            "text",
            "pg_catalog.current_setting($1)",
        ),
    ];
    let operators: &[(&str, &str, &str, &str)] = &[
        ("=", "text", "text", "texteq"),
        ("=", "bigint", "bigint", "int8eq"),
        ("=", "integer", "integer", "int4eq"),
        ("<>", "text", "text", "textne"),
        (">", "integer", "integer", "int4gt"),
        ("<", "integer", "integer", "int4lt"),
        (">=", "timestamptz", "timestamptz", "timestamptz_ge"),
        ("<=", "timestamptz", "timestamptz", "timestamptz_le"),
        (">", "numeric", "numeric", "numeric_gt"),
        ("||", "text", "text", "textcat"),
        // windows, sequences, ranks and traits (SPEC 16)
        ("+", "timestamptz", "interval", "timestamptz_pl_interval"),
        ("-", "timestamptz", "interval", "timestamptz_mi_interval"),
        ("*", "numeric", "numeric", "numeric_mul"),
        ("/", "numeric", "numeric", "numeric_div"),
        (">=", "numeric", "numeric", "numeric_ge"),
        ("<=", "numeric", "numeric", "numeric_le"),
        (">", "timestamptz", "timestamptz", "timestamptz_gt"),
        ("%", "bigint", "bigint", "int8mod"),
        ("+", "bigint", "bigint", "int8pl"),
        ("-", "bigint", "bigint", "int8mi"),
    ];
    let mut ddl = String::new();
    let mut created = 0;
    for schema in ["mallory", "public"] {
        for (i, (name, args, result, body)) in functions.iter().enumerate() {
            let lang = if result.starts_with("SETOF") {
                format!("RETURN QUERY SELECT {body};")
            } else if *result == "void" {
                format!("PERFORM {body};")
            } else {
                format!("RETURN {body};")
            };
            let params = args
                .split(", ")
                .filter(|a| !a.is_empty())
                .collect::<Vec<_>>()
                .join(", ");
            ddl.push_str(&format!(
                "CREATE FUNCTION {schema}.{name}({params}) RETURNS {result} LANGUAGE plpgsql AS $f$ BEGIN \
                 INSERT INTO public.shadow_calls (name, called_by) VALUES ('{schema}.{name}#{i}', current_user); {lang} END $f$;\n"
            ));
            created += 1;
        }
        for (i, (op, left, right, real)) in operators.iter().enumerate() {
            ddl.push_str(&format!(
                "CREATE FUNCTION {schema}.op_{i}(a {left}, b {right}) RETURNS {} LANGUAGE plpgsql AS $f$ BEGIN \
                 INSERT INTO public.shadow_calls (name, called_by) VALUES ('{schema} operator {op} #{i}', current_user); \
                 RETURN pg_catalog.{real}(a, b); END $f$;\n\
                 CREATE OPERATOR {schema}.{op} (LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = {schema}.op_{i});\n",
                match *op {
                    "||" => "text",
                    "+" | "-" => left,
                    "*" | "/" => "numeric",
                    _ => "boolean",
                }
            ));
            created += 1;
        }
    }
    // mallory builds the shadows in her own schema and in public.
    let mut mallory = connect_as(&cluster, "mallory");
    mallory.batch_execute(&ddl).unwrap();
    assert!(created >= 60);
    // Everyone's search_path puts mallory's schema first, pg_catalog after.
    admin
        .batch_execute("ALTER ROLE ALL SET search_path = mallory, pg_catalog, public")
        .unwrap();
    admin
        .batch_execute("ALTER DATABASE postgres SET search_path = mallory, pg_catalog, public")
        .unwrap();

    let mut alice = connect_as(&cluster, "alice");
    alice
        .batch_execute("SET search_path = mallory, pg_catalog, public")
        .unwrap();
    alice
        .batch_execute(
            r#"SELECT segments.create_trait('alice_paid', 'customer', '{"related":"orders","aggregate":"sum","attribute":"amount","where":{"attribute":"status","op":"eq","value":"paid"},"within":{"from":"1 year","to":"1 day"}}');
               SELECT segments.create_trait('alice_last_channel', 'customer', '{"related":"orders","aggregate":"last","attribute":"channel"}');
               SELECT segments.create_trait('alice_usual', 'customer', '{"related":"orders","aggregate":"most_frequent","attribute":"channel"}');"#,
        )
        .unwrap();
    // A definition with every kind of condition.
    let definition = r#"{"entity":"customer","rules":[
        {"name":"text","where":{"any":[{"attribute":"email","op":"contains","value":"7"},{"attribute":"email","op":"ends_with","value":".de"},
                                 {"attribute":"first_name","op":"starts_with","value":"M"},{"attribute":"country","op":"eq","value":"de","ignore_case":true}]}},
        {"combine":"union","where":{"all":[{"attribute":"age","op":"gt","value":30},{"attribute":"country","op":"in","value":["DE","FR"]},
                                           {"attribute":"country","op":"ne","value":"ES"},{"not":{"attribute":"city","op":"is_null"}}]}},
        {"combine":"union","where":{"attribute":"birth_date","op":"is_anniversary"}},
        {"combine":"union","where":{"attribute":"last_login_at","op":"in_last","value":"30 days"}},
        {"combine":"except","where":{"related":"orders","aggregate":"sum","attribute":"amount","within":"90 days","op":"gt","value":5000}},
        {"combine":"union","where":{"related":"orders","where":{"attribute":"status","op":"eq","value":"paid"},"within":"30 days"}},
        {"combine":"union","where":{"related":"orders","within":{"from":"90 days","to":"30 days"},"sequence":[
            {"where":{"attribute":"status","op":"eq","value":"paid"}},
            {"where":{"attribute":"amount","op":"gt","value":{"step":1,"attribute":"amount"}},"within":"7 days"},
            {"where":{"attribute":"status","op":"eq","value":"refunded"},"within":"2 days","absent":true}]}},
        {"combine":"union","where":{"related":"orders","every":{"attribute":"channel","op":"eq","value":"web"}}},
        {"combine":"union","where":{"attribute":"lifetime_value","op":"top_percent","value":5}},
        {"combine":"union","where":{"trait":"alice_paid","op":"top","value":10}},
        {"combine":"union","where":{"all":[{"trait":"alice_last_channel","op":"eq","value":"web"},{"trait":"alice_usual","op":"ne","value":"store"}]}}]}"#;
    let id: i64 = alice
        .query_one(
            "SELECT segments.create_segment('Everything', $1::text::jsonb)",
            &[&definition],
        )
        .unwrap()
        .get(0);
    let id2: i64 = alice
        .query_one(r#"SELECT segments.create_segment('Of everything', '{"entity":"customer","rules":[{"where":{"segment":"Everything"}}]}')"#, &[])
        .unwrap()
        .get(0);
    alice.batch_execute("CREATE TEMP TABLE t (x int)").unwrap();
    let mut exercised = 0;
    let sqls = vec![
        format!("SELECT * FROM segments.refresh()"),
        format!("SELECT * FROM segments.refresh(ARRAY[{id}, {id2}]::bigint[])"),
        format!("SELECT * FROM segments.preview({id}, 5)"),
        format!("SELECT * FROM segments.rule_counts({id})"),
        format!("SELECT * FROM segments.estimate('{definition}')"),
        format!("SELECT segments.explain({id})"),
        format!("SELECT * FROM segments.overlap({id}, {id2})"),
        format!("SELECT segments.bitmap({id})"),
        format!("SELECT segments.is_member({id}, 7)"),
        format!("SELECT * FROM segments.segments_of('customer', 7)"),
        format!("SELECT * FROM segments.attribute_values('customer', 'country')"),
        format!("SELECT * FROM segments.run_due()"),
        format!("SELECT * FROM segments.trend({id})"),
        format!("SELECT count(*) FROM segments.customer_members WHERE segment_id = {id}"),
        format!("SELECT * FROM segments.segment_list"),
        format!("SELECT segments.create_sequence('Welcome', 'customer')"),
        format!("SELECT segments.connect_sequence(1, ARRAY[{id}::bigint])"),
        format!("SELECT segments.add_usage({id2}, 'journey', 'J')"),
        format!("SELECT * FROM segments.deactivate_unused(dry_run => true)"),
        format!("SELECT * FROM segments.suggest('customer', 'lifetime_value')"),
        format!("SELECT segments.find_similar({id}, 'Lookalikes', size_percent => 5)"),
        format!("SELECT segments.refresh_traits('customer')"),
        format!("SELECT * FROM segments.customer_traits LIMIT 5"),
        format!("SELECT * FROM segments.explain_member({id}, 7)"),
        format!(r#"SELECT segments.split({id}, '{{"control": 10, "test": 90}}')"#),
        format!("SELECT segments.create_priority_list('Offers', ARRAY[{id2}, {id}]::bigint[])"),
        format!("SELECT segments.create_feed('Feed', ARRAY[{id}, {id2}]::bigint[])"),
        format!(r#"SELECT segments.create_segment('Activated', '{{"entity":"customer","rules":[{{"where":{{"segment":{id},"group":"control"}}}},{{"combine":"union","where":{{"segment":{id},"priority_list":"Offers"}}}}]}}')"#),
        format!("SELECT * FROM segments.refresh()"),
        format!("SELECT count(*) FROM segments.customer_members WHERE split_group = 'control'"),
        format!("SELECT count(*) FROM segments.priority_assignment"),
        format!("SELECT * FROM segments.breakdown({id}, 'country')"),
        format!("SELECT * FROM segments.breakdown({id}, 'lifetime_value', 4)"),
        format!("SELECT segments.ack_feed('Feed', (SELECT max(position) FROM segments.read_feed('Feed', 100)))"),
        format!("SELECT * FROM segments.segments_of('customer', 7)"),
        format!("SELECT * FROM segments.refresh()"),
    ];
    for sql in &sqls {
        alice
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        exercised += 1;
    }
    // The definition with every kind of condition really ran.
    let failed: Option<String> = alice
        .query_one(
            "SELECT string_agg(name || ': ' || coalesce(last_error, status), '; ') FROM segments.segment
              WHERE id IN ($1, $2) AND status <> 'succeeded'",
            &[&id, &id2],
        )
        .unwrap()
        .get(0);
    assert_eq!(failed, None, "the refreshes failed");
    // A pg_temp shadow in the refreshing session of a superuser.
    admin
        .batch_execute("SET search_path = mallory, pg_catalog, public")
        .unwrap();
    admin
        .batch_execute(
            "CREATE FUNCTION pg_temp.unnest(bigint[]) RETURNS SETOF bigint LANGUAGE plpgsql AS $f$ BEGIN \
             INSERT INTO public.shadow_calls VALUES ('pg_temp.unnest', current_user); RETURN QUERY SELECT pg_catalog.unnest($1); END $f$;
             SELECT * FROM segments.refresh();
             SELECT * FROM segments.run_due();",
        )
        .unwrap();
    // From here on the test's own queries must not find the shadows.
    admin
        .batch_execute("SET search_path = pg_catalog, public")
        .unwrap();
    // The worker computes a new segment within a pass or two (its session
    // has the hostile search_path too, from ALTER ROLE ALL).
    let fresh: i64 = alice
        .query_one(
            "SELECT segments.create_segment('For the worker', $1::text::jsonb)",
            &[&definition],
        )
        .unwrap()
        .get(0);
    let start = Instant::now();
    loop {
        let status: String = admin
            .query_one(
                "SELECT status FROM segments.segment WHERE id = $1",
                &[&fresh],
            )
            .unwrap()
            .get(0);
        if status == "succeeded" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the worker did not refresh the new segment ({status})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let calls: Vec<String> = admin
        .query(
            "SELECT name || ' as ' || called_by FROM public.shadow_calls ORDER BY at",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(calls.is_empty(), "shadows were called: {calls:?}");
    println!("shadows: {created} functions and operators in 2 schemas (+ pg_temp), {} calls exercised, 0 called", exercised + 3);
}

/// Attack 5 and RLS on every path: a segment sees exactly the rows its
/// owner may see; no owner change, edit, export, preview or lookalike
/// lets a role see a row it could not SELECT.
#[test]
fn row_level_security_holds_on_every_path() {
    let cluster = Cluster::start("sec-rls", &[]);
    let mut admin = setup(&cluster, "2000");
    admin
        .batch_execute(
            "ALTER TABLE customers ENABLE ROW LEVEL SECURITY;
             CREATE POLICY everyone_but_mallory ON customers USING (current_user <> 'mallory');
             CREATE POLICY mallory_sees_fr ON customers USING (current_user = 'mallory' AND country = 'FR');
             CREATE SCHEMA mallory_out AUTHORIZATION mallory;",
        )
        .unwrap();
    let de_rows: i64 = admin
        .query_one("SELECT count(*) FROM customers WHERE country = 'DE'", &[])
        .unwrap()
        .get(0);
    assert!(de_rows > 0);
    let mut alice = connect_as(&cluster, "alice");
    let mut mallory = connect_as(&cluster, "mallory");
    let de = r#"{"entity":"customer","rules":[{"where":{"attribute":"country","op":"eq","value":"DE"}}]}"#;
    let alices: i64 = alice
        .query_one(
            "SELECT segments.create_segment('Germany', $1::text::jsonb)",
            &[&de],
        )
        .unwrap()
        .get(0);
    let row = alice
        .query_one(
            &format!("SELECT member_count FROM segments.refresh(ARRAY[{alices}::bigint])"),
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, Option<i64>>(0), Some(de_rows));

    // mallory's own segment sees what mallory sees, whoever refreshes it.
    let mine: i64 = mallory
        .query_one(
            "SELECT segments.create_segment('Mine', $1::text::jsonb)",
            &[&de],
        )
        .unwrap()
        .get(0);
    for client in [&mut mallory, &mut alice, &mut admin] {
        let row = client
            .query_one(
                &format!("SELECT member_count FROM segments.refresh(ARRAY[{mine}::bigint])"),
                &[],
            )
            .unwrap();
        assert_eq!(
            row.get::<_, Option<i64>>(0),
            Some(0),
            "mallory's segment saw rows mallory cannot"
        );
    }
    // Forging alice as owner, or editing alice's segment, is refused.
    let forged = mallory
        .query_one("INSERT INTO segments.segment (name, definition, owner) VALUES ('Forged', $1::text::jsonb, 'alice') RETURNING owner::text", &[&de])
        .unwrap();
    assert_eq!(forged.get::<_, String>(0), "mallory");
    expect_code(
        &mut mallory,
        &format!("UPDATE segments.segment SET definition = definition WHERE id = {alices}"),
        "42501",
    );
    expect_code(
        &mut mallory,
        &format!("SELECT segments.set_owner(ARRAY[{mine}::bigint], 'alice')"),
        "42501",
    );
    // An export of alice's segment, made by mallory, is written as mallory.
    mallory
        .batch_execute(&format!(
            "SELECT segments.create_export('leak', ARRAY[{alices}::bigint], 'mallory_out.leak')"
        ))
        .unwrap();
    let leaked: i64 = mallory
        .query_one("SELECT count(*) FROM mallory_out.leak", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        leaked, 0,
        "an export showed mallory rows RLS hides from her"
    );
    alice
        .batch_execute(&format!(
            "SELECT * FROM segments.refresh(ARRAY[{alices}::bigint])"
        ))
        .unwrap();
    let leaked: i64 = admin
        .query_one("SELECT count(*) FROM mallory_out.leak", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        leaked, 0,
        "a refresh by alice rewrote mallory's export with alice's rows"
    );
    // Previews and the members view read the entity table as the reader.
    let previewed: i64 = mallory
        .query_one(
            &format!("SELECT count(*) FROM segments.preview({alices}, 1000)"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(previewed, 0);
    let viewed: i64 = mallory
        .query_one(
            &format!("SELECT count(*) FROM segments.customer_members WHERE segment_id = {alices}"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(viewed, 0);
    // An estimate runs as the caller.
    let estimated: i64 = mallory
        .query_one(
            "SELECT members FROM segments.estimate($1::text::jsonb)",
            &[&de],
        )
        .unwrap()
        .get(0);
    assert_eq!(estimated, 0);
    // A live application reads the table as the owner too: the row images
    // the capture saved (rows mallory may not see, now German) are not
    // used for a table with row-level security.
    let live: i64 = mallory
        .query_one(
            "SELECT segments.create_segment('Mine, live', $1::text::jsonb, schedule => 'live')",
            &[&de],
        )
        .unwrap()
        .get(0);
    mallory
        .batch_execute(&format!(
            "SELECT * FROM segments.refresh(ARRAY[{live}::bigint])"
        ))
        .unwrap();
    admin
        .batch_execute("UPDATE customers SET country = 'DE' WHERE country <> 'DE' AND id % 7 = 0")
        .unwrap();
    let images: i64 = admin
        .query_one("SELECT count(image) FROM segments.change_queue", &[])
        .unwrap()
        .get(0);
    assert!(images > 0, "no row images were captured");
    admin
        .batch_execute("SELECT * FROM segments.apply_changes()")
        .unwrap();
    let row = admin
        .query_one("SELECT status, keys_examined FROM segments.refresh_run WHERE segment_id = $1 AND trigger = 'live' ORDER BY id DESC LIMIT 1", &[&live])
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0).as_str(),
            row.get::<_, Option<i64>>(1).unwrap_or(0) > 0
        ),
        ("succeeded", true),
        "no live application"
    );
    let count: i64 = admin
        .query_one(
            "SELECT member_count FROM segments.segment WHERE id = $1",
            &[&live],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        count, 0,
        "a live application showed mallory rows RLS hides from her"
    );
}

/// Attack 6: keys of a text-keyed entity are readable only by roles that
/// may read the entity table.
#[test]
fn keys_stay_private() {
    let cluster = Cluster::start("sec-keys", &[]);
    let mut admin = setup(&cluster, "500");
    admin
        .batch_execute(
            "CREATE TABLE accounts (code text PRIMARY KEY, tier text);
             INSERT INTO accounts SELECT 'ACC-' || i, CASE WHEN i % 3 = 0 THEN 'gold' ELSE 'basic' END FROM generate_series(1, 300) i;
             SELECT segments.register_entity('account', 'accounts', 'code');
             GRANT SELECT ON accounts TO alice;",
        )
        .unwrap();
    let mut alice = connect_as(&cluster, "alice");
    let gold: i64 = alice
        .query_one(
            "SELECT segments.quick_segment('Gold', 'account', 'tier', 'eq', '\"gold\"')",
            &[],
        )
        .unwrap()
        .get(0);
    alice
        .batch_execute(&format!(
            "SELECT * FROM segments.refresh(ARRAY[{gold}::bigint])"
        ))
        .unwrap();
    admin.batch_execute("TRUNCATE accounts").unwrap();
    let seen: i64 = alice
        .query_one("SELECT count(*) FROM segments.entity_key", &[])
        .unwrap()
        .get(0);
    assert_eq!(seen, 300, "alice may read accounts, so its keys");
    let mut rita = connect_as(&cluster, "rita");
    let seen: i64 = rita
        .query_one("SELECT count(*) FROM segments.entity_key", &[])
        .unwrap()
        .get(0);
    assert_eq!(seen, 0, "a reader without SELECT on accounts read its keys");
    let mut mallory = connect_as(&cluster, "mallory");
    let seen: i64 = mallory
        .query_one(
            "SELECT count(*) FROM segments.entity_key WHERE key LIKE 'ACC-%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(seen, 0);
}

/// Attack 8: statement_timeout and pg_cancel_backend stop a refresh at
/// once (57014); the old membership stays.
#[test]
fn cancels_win() {
    let cluster = Cluster::start("sec-cancel", &[]);
    let mut admin = setup(&cluster, "3000");
    // A policy that makes reading customers slow for alice: about 3000 x 3 ms.
    admin
        .batch_execute(
            "ALTER TABLE customers ENABLE ROW LEVEL SECURITY;
             CREATE POLICY slow_for_alice ON customers USING (current_user <> 'alice' OR pg_sleep(0.003) IS NOT NULL);",
        )
        .unwrap();
    let mut alice = connect_as(&cluster, "alice");
    let a: i64 = alice
        .query_one(
            "SELECT segments.quick_segment('A', 'customer', 'age', 'gt', '30')",
            &[],
        )
        .unwrap()
        .get(0);
    let b: i64 = alice
        .query_one(
            "SELECT segments.quick_segment('B', 'customer', 'age', 'lt', '30')",
            &[],
        )
        .unwrap()
        .get(0);
    // A first refresh without the delay, for an old membership to keep.
    admin
        .batch_execute("ALTER POLICY slow_for_alice ON customers USING (true)")
        .unwrap();
    alice
        .batch_execute("SELECT * FROM segments.refresh()")
        .unwrap();
    admin.batch_execute("ALTER POLICY slow_for_alice ON customers USING (current_user <> 'alice' OR pg_sleep(0.003) IS NOT NULL)").unwrap();
    let snapshot =
        "SELECT string_agg(md5(members), ',' ORDER BY segment_id) FROM segments.membership";
    let before: String = admin.query_one(snapshot, &[]).unwrap().get(0);
    let runs_before: i64 = admin
        .query_one("SELECT count(*) FROM segments.refresh_run", &[])
        .unwrap()
        .get(0);

    // statement_timeout: 57014 within a second of the timeout.
    alice.batch_execute("SET statement_timeout = '1s'").unwrap();
    let started = Instant::now();
    let error = alice
        .batch_execute(&format!(
            "SELECT * FROM segments.refresh(ARRAY[{a}, {b}]::bigint[])"
        ))
        .unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(sqlstate(&error).0, "57014", "{error}");
    assert!(
        elapsed < Duration::from_secs(2),
        "the refresh outlived its timeout by {:?}",
        elapsed - Duration::from_secs(1)
    );
    // A scheduler pass with a segment due.
    alice.batch_execute(&format!("RESET statement_timeout; SELECT segments.deactivate(ARRAY[{a}::bigint]); SELECT segments.activate(ARRAY[{a}::bigint]); SET statement_timeout = '1s'")).unwrap();
    let started = Instant::now();
    let error = alice
        .batch_execute("SELECT * FROM segments.run_due()")
        .unwrap_err();
    assert_eq!(sqlstate(&error).0, "57014", "{error}");
    assert!(started.elapsed() < Duration::from_secs(2));
    alice.batch_execute("RESET statement_timeout").unwrap();

    // One pg_cancel_backend stops a two-segment refresh.
    let pid: i32 = alice
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let url = cluster.url("postgres");
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let sent = Instant::now();
        admin
            .execute("SELECT pg_cancel_backend($1)", &[&pid])
            .unwrap();
        sent
    });
    let error = alice
        .batch_execute(&format!(
            "SELECT * FROM segments.refresh(ARRAY[{a}, {b}]::bigint[])"
        ))
        .unwrap_err();
    let stopped = Instant::now();
    let sent = canceller.join().unwrap();
    assert_eq!(sqlstate(&error).0, "57014", "{error}");
    assert!(
        stopped.duration_since(sent) < Duration::from_secs(1),
        "stopped {:?} after the cancel",
        stopped.duration_since(sent)
    );

    let after: String = admin.query_one(snapshot, &[]).unwrap().get(0);
    assert_eq!(before, after, "a cancelled refresh changed memberships");
    let runs_after: i64 = admin
        .query_one("SELECT count(*) FROM segments.refresh_run", &[])
        .unwrap()
        .get(0);
    assert_eq!(runs_before, runs_after, "a cancelled refresh left history");
}

/// Eight clients for a minute of mixed refreshes, edits, (de)activations,
/// deletes and scheduler passes under the worker: no error but documented
/// refusals (2BP01 for a segment others read, 42704 for one another client
/// just deleted), no deadlock, and memberships equal to hand-written SQL.
#[test]
fn concurrent_mixed_work_under_the_worker() {
    let seconds: u64 = std::env::var("SEGMENTS_CONCURRENCY_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let cluster = Cluster::start(
        "sec-concurrency",
        &["shared_preload_libraries=segments", "segments.naptime=1"],
    );
    let mut admin = setup(&cluster, "3000");
    // Conditions and the hand-written SQL each must equal.
    let conditions: Vec<(String, String)> = ["DE", "FR", "ES", "IT", "NL"]
        .iter()
        .map(|c| {
            (
                format!(r#"{{"attribute":"country","op":"eq","value":"{c}"}}"#),
                format!("country = '{c}'"),
            )
        })
        .chain([20, 30, 40, 50, 60].iter().map(|a| {
            (
                format!(r#"{{"attribute":"age","op":"gt","value":{a}}}"#),
                format!("age > {a}"),
            )
        }))
        .collect();
    let definition = |i: usize| {
        format!(
            r#"{{"entity":"customer","rules":[{{"where":{}}}]}}"#,
            conditions[i % conditions.len()].0
        )
    };
    for i in 0..12 {
        admin
            .execute(
                "SELECT segments.create_segment($1, $2::text::jsonb, description => $3)",
                &[
                    &format!("s{i}"),
                    &definition(i),
                    &conditions[i % conditions.len()].1,
                ],
            )
            .unwrap();
    }
    // Two segments read others: deleting those is refused while they do.
    admin.batch_execute(r#"SELECT segments.create_segment('reads s0', '{"entity":"customer","rules":[{"where":{"segment":"s0"}}]}');
                           SELECT segments.create_segment('reads s1', '{"entity":"customer","rules":[{"where":{"segment":"s1"}}]}');"#).unwrap();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let url = cluster.url("postgres");
    let workers: Vec<_> = (0..8u64)
        .map(|client_no| {
            let url = url.clone();
            let conditions = conditions.clone();
            std::thread::spawn(move || {
                let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                let mut state = 0x2545_F491_4F6C_DD1Du64 ^ ((client_no + 1) * 0x9E37_79B9);
                let mut next = move |n: u64| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state % n
                };
                let (mut done, mut refused, mut unexpected) = (0u64, 0u64, Vec::new());
                while Instant::now() < deadline {
                    let ids: Vec<i64> = client
                        .query("SELECT id FROM segments.segment WHERE name NOT LIKE 'reads%' ORDER BY id", &[])
                        .unwrap()
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    let pick = ids[next(ids.len() as u64) as usize];
                    let c = next(conditions.len() as u64) as usize;
                    let sql = match next(7) {
                        0 | 1 => format!("SELECT * FROM segments.refresh(ARRAY[{pick}, {}]::bigint[])", ids[next(ids.len() as u64) as usize]),
                        2 => format!(
                            "UPDATE segments.segment SET definition = '{{\"entity\":\"customer\",\"rules\":[{{\"where\":{}}}]}}', description = '{}' WHERE id = {pick}",
                            conditions[c].0,
                            conditions[c].1.replace('\'', "''")
                        ),
                        3 => format!("SELECT segments.deactivate(ARRAY[{pick}::bigint])"),
                        4 => format!("SELECT segments.activate(ARRAY[{pick}::bigint])"),
                        5 => format!(
                            "SELECT segments.delete(ARRAY[{pick}::bigint]); \
                             SELECT segments.create_segment('n{client_no}-{done}', '{{\"entity\":\"customer\",\"rules\":[{{\"where\":{}}}]}}', description => '{}')",
                            conditions[c].0,
                            conditions[c].1.replace('\'', "''")
                        ),
                        _ => "SELECT * FROM segments.run_due()".to_string(),
                    };
                    match client.batch_execute(&sql) {
                        Ok(()) => done += 1,
                        Err(e) => {
                            let code = e.as_db_error().map(|d| d.code().code().to_string()).unwrap_or_default();
                            if code == "2BP01" || code == "42704" {
                                refused += 1;
                            } else {
                                unexpected.push(format!("{code} {e} ({sql})"));
                            }
                        }
                    }
                }
                (done, refused, unexpected)
            })
        })
        .collect();
    let (mut done, mut refused, mut unexpected) = (0, 0, Vec::new());
    for worker in workers {
        let (d, r, u) = worker.join().unwrap();
        done += d;
        refused += r;
        unexpected.extend(u);
    }
    assert!(
        unexpected.is_empty(),
        "{} unexpected errors, e.g. {:?}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(5)]
    );
    // Final memberships equal hand-written SQL.
    admin.batch_execute("SELECT segments.activate(array_agg(id)) FROM segments.segment; SELECT * FROM segments.refresh();").unwrap();
    let rows = admin.query("SELECT id, description FROM segments.segment WHERE description IS NOT NULL ORDER BY id", &[]).unwrap();
    for row in &rows {
        let (id, oracle): (i64, String) = (row.get(0), row.get(1));
        let want: i64 = admin
            .query_one(
                &format!("SELECT count(*) FROM customers WHERE {oracle}"),
                &[],
            )
            .unwrap()
            .get(0);
        let exact: bool = admin
            .query_one(
                &format!("SELECT (SELECT array_agg(id ORDER BY id) FROM customers WHERE {oracle}) IS NOT DISTINCT FROM \
                          (SELECT array_agg(id ORDER BY id) FROM segments.customer_members WHERE segment_id = $1)"),
                &[&id],
            )
            .unwrap()
            .get(0);
        assert!(
            exact,
            "segment {id} ({oracle}, {want} rows) differs from the hand-written query"
        );
    }
    let deadlocks = cluster.server_log().matches("deadlock detected").count();
    assert_eq!(deadlocks, 0, "deadlocks in the server log");
    println!("concurrency: 8 clients, {seconds} s, {done} statements, {refused} documented refusals, 0 unexpected errors, 0 deadlocks, {} memberships checked", rows.len());
}

/// Activation under attack (SPEC 17): a hostile editor cannot split,
/// unsplit or drop what is not theirs, nor read, acknowledge, reset or
/// drop another role's feed, nor write the feeds' internal tables; a
/// reader cannot read a feed; splits and breakdowns show only the rows
/// row-level security lets the caller see.
#[test]
fn activation_honours_owners_and_row_level_security() {
    let cluster = Cluster::start("sec-activation", &[]);
    let mut admin = setup(&cluster, "2000");
    let mut alice = connect_as(&cluster, "alice");
    let mut mallory = connect_as(&cluster, "mallory");
    let mut rita = connect_as(&cluster, "rita");
    let de = r#"{"entity":"customer","rules":[{"where":{"attribute":"country","op":"in","value":["DE","FR"]}}]}"#;
    let segment: i64 = alice
        .query_one(
            "SELECT segments.create_segment('Europe', $1::text::jsonb)",
            &[&de],
        )
        .unwrap()
        .get(0);
    alice
        .batch_execute(&format!(
            r#"SELECT * FROM segments.refresh({segment});
               SELECT segments.split({segment}, '{{"control": 10, "test": 90}}');
               SELECT segments.create_priority_list('alices list', ARRAY[{segment}]::bigint[]);
               SELECT segments.create_feed('alices feed', ARRAY[{segment}]::bigint[]);"#
        ))
        .unwrap();
    // Owners' rules.
    expect_code(
        &mut mallory,
        &format!("SELECT segments.unsplit({segment})"),
        "42501",
    );
    expect_code(
        &mut mallory,
        &format!(r#"SELECT segments.split({segment}, '{{"a": 50, "b": 50}}')"#),
        "42501",
    );
    expect_code(
        &mut mallory,
        "SELECT segments.drop_priority_list('alices list')",
        "42501",
    );
    for sql in [
        "SELECT * FROM segments.read_feed('alices feed')",
        "SELECT segments.ack_feed('alices feed', 1)",
        "SELECT segments.reset_feed('alices feed')",
        "SELECT segments.drop_feed('alices feed')",
    ] {
        expect_code(&mut mallory, sql, "42501");
        let message = expect_code(&mut rita, sql, "42501");
        assert!(message.contains("alices feed"), "{message}");
    }
    // Readers may not create any of them.
    expect_code(
        &mut rita,
        &format!("SELECT segments.create_feed('ritas', ARRAY[{segment}]::bigint[])"),
        "42501",
    );
    expect_code(
        &mut rita,
        &format!("SELECT segments.create_priority_list('ritas', ARRAY[{segment}]::bigint[])"),
        "42501",
    );
    // Internal state is not writable, nor the feeds' batches readable.
    for sql in [
        "UPDATE segments.feed SET acked_position = 0",
        "UPDATE segments.feed SET owner = 'mallory'",
        "DELETE FROM segments.segment_split",
        "INSERT INTO segments.priority_list (name, entity, segments, owner) VALUES ('x', 'customer', '{1}', 'mallory')",
        "UPDATE segments.feed_clock SET last_position = 0",
        "SELECT * FROM segments.feed_batch",
    ] {
        expect_code(&mut mallory, sql, "42501");
    }
    // Row-level security: mallory sees only French customers.
    admin
        .batch_execute(
            "ALTER TABLE customers ENABLE ROW LEVEL SECURITY;
             CREATE POLICY everyone_but_mallory ON customers USING (current_user <> 'mallory');
             CREATE POLICY mallory_sees_fr ON customers USING (current_user = 'mallory' AND country = 'FR');",
        )
        .unwrap();
    let visible: i64 = mallory
        .query_one("SELECT count(*) FROM segments.customer_members WHERE segment_id = $1 AND split_group IS NOT NULL", &[&segment])
        .unwrap()
        .get(0);
    let french: i64 = admin
        .query_one("SELECT count(*) FROM customers WHERE country = 'FR'", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        visible, french,
        "the members view with split groups shows mallory only French rows"
    );
    let breakdown: Vec<(Option<String>, i64, i64)> = mallory
        .query(
            "SELECT value, members, population FROM segments.breakdown($1, 'country')",
            &[&segment],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        breakdown,
        vec![(Some("FR".to_string()), french, french)],
        "a breakdown counts only the rows the caller sees"
    );
}
