//! Layer 3: installing the extension: with the preload in several databases,
//! every public object commented, and `DROP EXTENSION ... CASCADE`
//! leaving nothing behind.

mod harness;

use harness::Cluster;

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
    assert_eq!(database, "", "every database by default");
    let schedulers: String = admin
        .query_one("SHOW segments.max_schedulers", &[])
        .unwrap()
        .get(0);
    assert_eq!(schedulers, "8");
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

/// DROP EXTENSION ... CASCADE leaves nothing of segments in the database.
#[test]
fn drop_extension_cascade_leaves_nothing_behind() {
    let cluster = Cluster::start("drop", &[]);
    let mut client = cluster.sample("200");
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

/// Every public function, view, table and column has a comment, members
/// views included (the single-id overloads too).
#[test]
fn every_public_object_has_a_comment() {
    let cluster = Cluster::start("comments", &[]);
    let mut client = cluster.sample("100");
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

/// docs/reference.md documents every public function, view, table, column
/// and setting the installed extension has: adding one without its entry
/// fails here, naming it.
#[test]
fn every_public_object_is_in_the_reference() {
    let reference =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/reference.md"))
            .expect("docs/reference.md exists");
    // A section: from its heading to the next heading of any level.
    let section = |heading: &str| -> Option<String> {
        let start = reference.find(&format!("\n{heading}\n"))?;
        let rest = &reference[start + heading.len() + 2..];
        let end = rest.find("\n#").unwrap_or(rest.len());
        Some(rest[..end].to_string())
    };
    let cluster = Cluster::start("reference", &[]);
    let mut client = cluster.sample("100");
    let mut missing = Vec::new();
    let functions = client
        .query(
            "SELECT DISTINCT proname::text FROM pg_proc
              WHERE pronamespace = 'segments'::regnamespace AND proname NOT LIKE '\\_%' ORDER BY 1",
            &[],
        )
        .unwrap();
    for row in functions {
        let name: String = row.get(0);
        if section(&format!("#### segments.{name}")).is_none() {
            missing.push(format!("function segments.{name}"));
        }
    }
    // Tables and views, but not the per-entity members views (documented
    // once, as segments.<entity>_members).
    let relations = client
        .query(
            "SELECT c.relname::text, array_agg(a.attname::text ORDER BY a.attnum)
               FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
              WHERE c.relnamespace = 'segments'::regnamespace AND c.relkind IN ('r', 'v', 'p')
                AND c.relname NOT IN (SELECT name || '_members' FROM segments.entity)
              GROUP BY c.relname ORDER BY 1",
            &[],
        )
        .unwrap();
    assert!(
        relations.len() > 15,
        "the catalog query found the relations"
    );
    for row in relations {
        let (name, columns): (String, Vec<String>) = (row.get(0), row.get(1));
        let Some(text) = section(&format!("#### segments.{name}")) else {
            missing.push(format!("relation segments.{name}"));
            continue;
        };
        for column in columns {
            if !text.contains(&format!("| `{column}` |")) {
                missing.push(format!("column segments.{name}.{column}"));
            }
        }
    }
    let settings = section("## Settings").expect("docs/reference.md has a Settings section");
    let names = client
        .query(
            "SELECT name FROM pg_settings WHERE name LIKE 'segments.%' ORDER BY 1",
            &[],
        )
        .unwrap();
    assert!(names.len() >= 10, "the preload registered the settings");
    for row in names {
        let name: String = row.get(0);
        if !settings.contains(&format!("| `{name}` |")) {
            missing.push(format!("setting {name}"));
        }
    }
    assert!(
        missing.is_empty(),
        "missing from docs/reference.md: {missing:?}"
    );
}
