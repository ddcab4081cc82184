//! Layer 3: the audience builder (README, Audience builder; SPEC 16) against
//! hand-written SQL on the sample data: funnels with an absent last step
//! and same-product references, windows in the past, `every`, ranks with
//! ties, text and uuid keys, explain_member step by step, and live funnels
//! that settle after inserts, updates and deletes.

mod harness;

use harness::{sqlstate, Cluster, ANCHOR};

const REF: &str = "'2026-11-01 00:00:00+00'::timestamptz";

/// The number of keys in one of (members, hand-written) and not the other.
fn difference(client: &mut postgres::Client, view: &str, key: &str, id: i64, hand: &str) -> i64 {
    client
        .query_one(
            &format!(
                "WITH got AS (SELECT {key} AS k FROM segments.{view} WHERE segment_id = $1),
                      want AS ({hand})
                 SELECT (SELECT count(*) FROM (SELECT k FROM got EXCEPT SELECT * FROM want) a)
                      + (SELECT count(*) FROM (SELECT * FROM want EXCEPT SELECT k FROM got) b)"
            ),
            &[&id],
        )
        .unwrap_or_else(|e| panic!("comparing segment {id}: {e}"))
        .get(0)
}

/// How many members segment `id` has, through the members view `view`.
fn member_count(client: &mut postgres::Client, view: &str, id: i64) -> i64 {
    client
        .query_one(
            &format!("SELECT count(*) FROM segments.{view} WHERE segment_id = $1"),
            &[&id],
        )
        .unwrap()
        .get(0)
}

fn create(client: &mut postgres::Client, name: &str, definition: &str, schedule: &str) -> i64 {
    client
        .query_one(
            "SELECT segments.create_segment($1, $2::text::jsonb, schedule => $3)",
            &[&name, &definition, &schedule],
        )
        .unwrap_or_else(|e| panic!("creating {name}: {e}"))
        .get(0)
}

/// "Viewed a product, added that product to the cart within a day, and did
/// not buy it within two days", in the last 30 days.
const ABANDONED: &str = r#"{"entity":"customer","rules":[{"where":{"related":"product_events","within":"30 days","sequence":[
    {"where":{"attribute":"event_type","op":"eq","value":"viewed"}},
    {"where":{"all":[{"attribute":"event_type","op":"eq","value":"added_to_cart"},
                     {"attribute":"product_id","op":"eq","value":{"step":1,"attribute":"product_id"}}]},"within":"1 day"},
    {"where":{"all":[{"attribute":"event_type","op":"eq","value":"purchased"},
                     {"attribute":"product_id","op":"eq","value":{"step":2,"attribute":"product_id"}}]},"within":"2 days","absent":true}]}}]}"#;

/// The same by hand, for customers `c` at reference time `at`.
fn abandoned_sql(at: &str, window: bool) -> String {
    let inside = |alias: &str| {
        if window {
            format!("AND {alias}.occurred_at >= {at} - interval '30 days' AND {alias}.occurred_at <= {at}")
        } else {
            String::new()
        }
    };
    format!(
        "SELECT c.id FROM customers c WHERE EXISTS (
           SELECT 1 FROM product_events v JOIN product_events a
             ON a.customer_id = v.customer_id AND a.event_type = 'added_to_cart' AND a.product_id = v.product_id
            AND a.occurred_at > v.occurred_at AND a.occurred_at <= v.occurred_at + interval '1 day' {}
            WHERE v.customer_id = c.id AND v.event_type = 'viewed' {}
              AND a.occurred_at + interval '2 days' <= {at}
              AND NOT EXISTS (SELECT 1 FROM product_events p
                               WHERE p.customer_id = c.id AND p.event_type = 'purchased' AND p.product_id = a.product_id
                                 AND p.occurred_at > a.occurred_at AND p.occurred_at <= a.occurred_at + interval '2 days'))",
        inside("a"),
        inside("v")
    )
}

/// Every new construct against hand-written SQL, by refresh and by
/// `estimate`, with rule counts; the refusals name their paths.
#[test]
fn the_audience_builder_equals_hand_written_sql() {
    let cluster = Cluster::start("audience", &[]);
    let mut client = cluster.sample_database(
        "6000",
        ANCHOR,
        &format!(
            "SET segments.reference_time = '{ANCHOR}';
             SELECT segments.register_related('customer', 'product_events', 'product_events', 'customer_id', 'occurred_at');"
        ),
    );
    // Carts and purchases at the very instant of the row before: a
    // sequence's steps are strictly later, so these never chain.
    client
        .batch_execute(
            "INSERT INTO product_events
             SELECT id + 100000000, customer_id, CASE event_type WHEN 'viewed' THEN 'added_to_cart' ELSE 'purchased' END,
                    product_id, occurred_at
               FROM product_events WHERE event_type <> 'purchased' AND id % 5 = 0;
             INSERT INTO orders SELECT id + 100000000, customer_id, ordered_at, amount + 1, status, channel
               FROM orders WHERE id % 5 = 0;",
        )
        .unwrap();
    let cases: Vec<(&str, String, String)> = vec![
        ("abandoned cart", ABANDONED.to_string(), abandoned_sql(REF, true)),
        (
            "three steps, same product",
            r#"{"entity":"customer","rules":[{"where":{"related":"product_events","sequence":[
                {"where":{"attribute":"event_type","op":"eq","value":"viewed"}},
                {"where":{"all":[{"attribute":"event_type","op":"eq","value":"added_to_cart"},{"attribute":"product_id","op":"eq","value":{"step":1,"attribute":"product_id"}}]},"within":"6 hours"},
                {"where":{"all":[{"attribute":"event_type","op":"eq","value":"purchased"},{"attribute":"product_id","op":"eq","value":{"step":1,"attribute":"product_id"}}]},"within":"1 day"}]}}]}"#.to_string(),
            "SELECT c.id FROM customers c WHERE EXISTS (
               SELECT 1 FROM product_events v, product_events a, product_events p
                WHERE v.customer_id = c.id AND a.customer_id = c.id AND p.customer_id = c.id
                  AND v.event_type = 'viewed' AND a.event_type = 'added_to_cart' AND p.event_type = 'purchased'
                  AND a.product_id = v.product_id AND p.product_id = v.product_id
                  AND a.occurred_at > v.occurred_at AND a.occurred_at <= v.occurred_at + interval '6 hours'
                  AND p.occurred_at > a.occurred_at AND p.occurred_at <= a.occurred_at + interval '1 day')".to_string(),
        ),
        (
            "bought something dearer than an earlier order, in a past window",
            r#"{"entity":"customer","rules":[{"where":{"related":"orders","within":{"from":"180 days","to":"60 days"},"sequence":[
                {"where":{"attribute":"status","op":"eq","value":"paid"}},
                {"where":{"attribute":"amount","op":"gt","value":{"step":1,"attribute":"amount"}}}]}}]}"#.to_string(),
            format!("SELECT c.id FROM customers c WHERE EXISTS (
               SELECT 1 FROM orders a, orders b
                WHERE a.customer_id = c.id AND b.customer_id = c.id AND a.status = 'paid' AND b.amount > a.amount
                  AND b.ordered_at > a.ordered_at
                  AND a.ordered_at BETWEEN {REF} - interval '180 days' AND {REF} - interval '60 days'
                  AND b.ordered_at BETWEEN {REF} - interval '180 days' AND {REF} - interval '60 days')"),
        ),
        (
            "lapsing: ordered 90 to 30 days ago, not since",
            r#"{"entity":"customer","rules":[{"where":{"related":"orders","within":{"from":"90 days","to":"30 days"}}},
                {"combine":"except","where":{"related":"orders","within":"30 days"}}]}"#.to_string(),
            format!("SELECT c.id FROM customers c
              WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id AND o.ordered_at BETWEEN {REF} - interval '90 days' AND {REF} - interval '30 days')
                AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id AND o.ordered_at BETWEEN {REF} - interval '30 days' AND {REF})"),
        ),
        (
            "windows on attributes",
            r#"{"entity":"customer","rules":[{"where":{"any":[
                {"attribute":"last_login_at","op":"in_last","value":{"from":"60 days","to":"45 days"}},
                {"attribute":"signed_up_at","op":"not_in_last","value":{"from":"2 years","to":"1 years"}}]}}]}"#.to_string(),
            format!("SELECT c.id FROM customers c
              WHERE c.last_login_at BETWEEN {REF} - interval '60 days' AND {REF} - interval '45 days'
                 OR c.signed_up_at < {REF} - interval '2 years' OR c.signed_up_at > {REF} - interval '1 years'"),
        ),
        (
            "every order of the last year paid",
            r#"{"entity":"customer","rules":[{"where":{"related":"orders","within":"1 year","every":{"attribute":"status","op":"eq","value":"paid"}}}]}"#.to_string(),
            format!("SELECT o.customer_id FROM orders o WHERE o.ordered_at BETWEEN {REF} - interval '1 year' AND {REF}
               GROUP BY o.customer_id HAVING bool_and(o.status = 'paid')"),
        ),
        (
            "every big order from the web",
            r#"{"entity":"customer","rules":[{"where":{"related":"orders","where":{"attribute":"amount","op":"gt","value":300},
                "every":{"any":[{"attribute":"channel","op":"eq","value":"web"},{"attribute":"channel","op":"eq","value":"app"}]}}}]}"#.to_string(),
            "SELECT o.customer_id FROM orders o WHERE o.amount > 300 GROUP BY o.customer_id HAVING bool_and(o.channel IN ('web', 'app'))".to_string(),
        ),
        (
            "top 10% by lifetime value",
            r#"{"entity":"customer","rules":[{"where":{"attribute":"lifetime_value","op":"top_percent","value":10}}]}"#.to_string(),
            "SELECT id FROM (SELECT id, rank() OVER (ORDER BY lifetime_value DESC) AS r,
                                    (SELECT count(*) FROM customers WHERE lifetime_value IS NOT NULL) AS n
                               FROM customers WHERE lifetime_value IS NOT NULL) t
              WHERE r <= ceil(n * 10 / 100.0)".to_string(),
        ),
        (
            "the 50 youngest, ties included",
            r#"{"entity":"customer","rules":[{"where":{"attribute":"age","op":"bottom","value":50}}]}"#.to_string(),
            "SELECT id FROM customers WHERE age <= (SELECT max(age) FROM (SELECT age FROM customers WHERE age IS NOT NULL ORDER BY age LIMIT 50) t)".to_string(),
        ),
        (
            "the oldest 2.5% among Germans who bought",
            r#"{"entity":"customer","rules":[{"where":{"attribute":"birth_date","op":"bottom_percent","value":2.5}},
                {"combine":"intersect","where":{"attribute":"country","op":"eq","value":"DE"}}]}"#.to_string(),
            "SELECT id FROM (SELECT id, country, rank() OVER (ORDER BY birth_date) AS r,
                                    (SELECT count(*) FROM customers WHERE birth_date IS NOT NULL) AS n
                               FROM customers WHERE birth_date IS NOT NULL) t
              WHERE r <= ceil(n * 2.5 / 100) AND country = 'DE'".to_string(),
        ),
        (
            "top 1000 by lifetime value (a count larger than a tier)",
            r#"{"entity":"customer","rules":[{"where":{"attribute":"lifetime_value","op":"top","value":1000}},
                {"combine":"except","where":{"attribute":"unsubscribed","op":"is_true"}}]}"#.to_string(),
            "SELECT id FROM (SELECT id, unsubscribed, rank() OVER (ORDER BY lifetime_value DESC) AS r
                               FROM customers WHERE lifetime_value IS NOT NULL) t WHERE r <= 1000 AND NOT unsubscribed".to_string(),
        ),
    ];
    let mut ids = Vec::new();
    for (name, definition, _) in &cases {
        ids.push(create(&mut client, name, definition, "manual"));
    }
    client
        .batch_execute("SELECT * FROM segments.refresh()")
        .unwrap();
    for ((name, definition, hand), id) in cases.iter().zip(&ids) {
        let members: i64 = member_count(&mut client, "customer_members", *id);
        assert!(
            members > 0,
            "{name}: no members, so the comparison proves little"
        );
        let diff = difference(&mut client, "customer_members", "id", *id, hand);
        assert_eq!(
            diff, 0,
            "{name}: {diff} keys differ from the hand-written SQL"
        );
        // estimate and rule_counts agree with the refresh.
        let estimated: i64 = client
            .query_one(
                "SELECT cumulative FROM segments.estimate($1::text::jsonb) WHERE path !~ '[.]' ORDER BY path::int DESC LIMIT 1",
                &[definition],
            )
            .unwrap()
            .get(0);
        assert_eq!(estimated, members, "{name}: estimate");
        let first_rule: i64 = client
            .query_one(
                "SELECT members FROM segments.rule_counts($1) WHERE path = '1'",
                &[id],
            )
            .unwrap_or_else(|e| panic!("{name}: rule_counts: {e}"))
            .get(0);
        assert!(
            first_rule >= members,
            "{name}: rule 1 counts {first_rule} < {members}"
        );
        // explain shows the SQL it runs.
        let explained: String = client
            .query_one("SELECT segments.explain($1)", &[id])
            .unwrap_or_else(|e| panic!("{name}: explain: {e}"))
            .get(0);
        assert!(explained.contains("FROM"), "{name}: {explained}");
    }
    // Ties at the edge are all in: ten customers tie for the top value.
    client
        .batch_execute("UPDATE customers SET lifetime_value = 99999 WHERE id <= 10")
        .unwrap();
    let top3 = create(
        &mut client,
        "top 3 with ties",
        r#"{"entity":"customer","rules":[{"where":{"attribute":"lifetime_value","op":"top","value":3}}]}"#,
        "manual",
    );
    client
        .batch_execute(&format!(
            "SELECT * FROM segments.refresh(ARRAY[{top3}]::bigint[])"
        ))
        .unwrap();
    let tied: i64 = member_count(&mut client, "customer_members", top3);
    assert_eq!(tied, 10, "all ten tied records are in the top 3");
    // Refusals name the construct and its SQLSTATE.
    let refusals = [
        (
            r#"{"entity":"customer","rules":[{"where":{"related":"orders","within":{"from":"30 days","to":"90 days"}}}]}"#,
            "22023",
            "rules[0].where.within: \"from\" (30 days) must reach further back",
        ),
        (
            r#"{"entity":"customer","rules":[{"where":{"related":"product_events","sequence":[{"where":{"attribute":"event_typ","op":"eq","value":"viewed"}}]}}]}"#,
            "42703",
            "rules[0].where.sequence[0].where: column \"event_typ\" does not exist on related table \"product_events\"",
        ),
        (
            r#"{"entity":"customer","rules":[{"where":{"related":"product_event","every":{"attribute":"event_type","op":"eq","value":"viewed"}}}]}"#,
            "42P01",
            "rules[0].where.related: related table \"product_event\" is not registered",
        ),
        (
            r#"{"entity":"customer","rules":[{"where":{"attribute":"country","op":"top_percent","value":10}}]}"#,
            "22023",
            "rules[0].where.op: operator top_percent does not apply to column \"country\" of type text",
        ),
    ];
    for (definition, code, message) in refusals {
        let error = client
            .query(
                "SELECT * FROM segments.estimate($1::text::jsonb)",
                &[&definition],
            )
            .unwrap_err();
        let (got_code, got) = sqlstate(&error);
        assert!(got.starts_with(message), "{got}\n  expected {message}");
        assert_eq!(got_code, code, "{got}");
    }
    // A related table without a time column cannot hold a sequence.
    client
        .batch_execute("SELECT segments.register_related('customer', 'orders_untimed', 'orders', 'customer_id')")
        .unwrap();
    let error = client
        .query(
            r#"SELECT * FROM segments.estimate('{"entity":"customer","rules":[{"where":{"related":"orders_untimed","sequence":[{"where":{"attribute":"status","op":"eq","value":"paid"}}]}}]}')"#,
            &[],
        )
        .unwrap_err();
    let (code, message) = sqlstate(&error);
    assert_eq!(code, "22023", "{message}");
    assert!(
        message.contains("has no time_column: register it with one to use a sequence"),
        "{message}"
    );
}

/// explain_member walks a funnel step by step: a member matches every
/// step; a customer who only viewed stops at step 2.
#[test]
fn explain_member_walks_a_funnel_step_by_step() {
    let cluster = Cluster::start("audience_explain", &[]);
    let mut client = cluster.sample_database(
        "3000",
        ANCHOR,
        &format!(
            "SET segments.reference_time = '{ANCHOR}';
             SELECT segments.register_related('customer', 'product_events', 'product_events', 'customer_id', 'occurred_at');"
        ),
    );
    let id = create(&mut client, "Abandoned", ABANDONED, "manual");
    client
        .batch_execute("SELECT * FROM segments.refresh()")
        .unwrap();
    let steps = |client: &mut postgres::Client, key: i64| -> Vec<(String, bool)> {
        client
            .query(
                "SELECT path, matches FROM segments.explain_member($1, $2::bigint) WHERE path LIKE '%sequence[%]' ORDER BY path",
                &[&id, &key],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    let member: i64 = client
        .query_one(
            "SELECT min(id) FROM segments.customer_members WHERE segment_id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        steps(&mut client, member),
        vec![
            ("rules[0].where.sequence[0]".to_string(), true),
            ("rules[0].where.sequence[1]".to_string(), true),
            ("rules[0].where.sequence[2]".to_string(), true),
        ]
    );
    let viewer: i64 = client
        .query_one(
            &format!(
                "SELECT min(c.id) FROM customers c
                  WHERE EXISTS (SELECT 1 FROM product_events e WHERE e.customer_id = c.id AND e.event_type = 'viewed'
                                   AND e.occurred_at >= {REF} - interval '30 days')
                    AND NOT EXISTS (SELECT 1 FROM product_events e WHERE e.customer_id = c.id AND e.event_type <> 'viewed')"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        steps(&mut client, viewer),
        vec![
            ("rules[0].where.sequence[0]".to_string(), true),
            ("rules[0].where.sequence[1]".to_string(), false),
            ("rules[0].where.sequence[2]".to_string(), false),
        ]
    );
}

/// Text and uuid keys: a funnel, `every` and a rank on entities keyed by
/// text and by uuid equal the hand-written SQL.
#[test]
fn text_and_uuid_keys() {
    let cluster = Cluster::start("audience_keys", &[]);
    let mut client = cluster.sample_customers_orders("3000");
    client
        .batch_execute(
            "CREATE TABLE shoppers AS SELECT code, md5(code)::uuid AS uid, lifetime_value FROM customers;
             ALTER TABLE shoppers ADD PRIMARY KEY (code);
             CREATE UNIQUE INDEX ON shoppers (uid);
             CREATE TABLE shopper_orders AS
               SELECT c.code AS shopper_code, md5(c.code)::uuid AS shopper_uid, o.ordered_at, o.amount, o.status
                 FROM orders o JOIN customers c ON c.id = o.customer_id;
             CREATE INDEX ON shopper_orders (shopper_code, ordered_at);
             SELECT segments.register_entity('shopper', 'shoppers', 'code');
             SELECT segments.register_related('shopper', 'orders', 'shopper_orders', 'shopper_code', 'ordered_at');
             CREATE TABLE shoppers_u AS SELECT uid, lifetime_value FROM shoppers;
             ALTER TABLE shoppers_u ADD PRIMARY KEY (uid);
             SELECT segments.register_entity('shopper_u', 'shoppers_u', 'uid');
             SELECT segments.register_related('shopper_u', 'orders', 'shopper_orders', 'shopper_uid', 'ordered_at');",
        )
        .unwrap();
    let funnel = |entity: &str| {
        format!(
            r#"{{"entity":"{entity}","rules":[{{"where":{{"related":"orders","sequence":[
                {{"where":{{"attribute":"status","op":"eq","value":"refunded"}}}},
                {{"where":{{"attribute":"status","op":"eq","value":"paid"}},"within":"30 days","absent":true}}]}}}},
                {{"combine":"union","where":{{"related":"orders","every":{{"attribute":"status","op":"eq","value":"cancelled"}}}}}},
                {{"combine":"union","where":{{"attribute":"lifetime_value","op":"top","value":25}}}}]}}"#
        )
    };
    let hand = |key: &str, fk: &str, table: &str| {
        format!(
            "SELECT s.{key} FROM {table} s WHERE EXISTS (
               SELECT 1 FROM shopper_orders r WHERE r.{fk} = s.{key} AND r.status = 'refunded'
                  AND r.ordered_at + interval '30 days' <= {REF}
                  AND NOT EXISTS (SELECT 1 FROM shopper_orders p WHERE p.{fk} = s.{key} AND p.status = 'paid'
                                     AND p.ordered_at > r.ordered_at AND p.ordered_at <= r.ordered_at + interval '30 days'))
             UNION SELECT {fk} FROM shopper_orders GROUP BY {fk} HAVING bool_and(status = 'cancelled')
             UNION SELECT {key} FROM {table} WHERE lifetime_value >=
                   (SELECT min(v) FROM (SELECT lifetime_value v FROM {table} WHERE lifetime_value IS NOT NULL ORDER BY 1 DESC LIMIT 25) t)"
        )
    };
    client
        .batch_execute(&format!("SET segments.reference_time = '{ANCHOR}'"))
        .unwrap();
    let text = create(&mut client, "text keys", &funnel("shopper"), "manual");
    let uuid = create(&mut client, "uuid keys", &funnel("shopper_u"), "manual");
    client
        .batch_execute("SELECT * FROM segments.refresh()")
        .unwrap();
    for (id, view, key, fk, table) in [
        (text, "shopper_members", "code", "shopper_code", "shoppers"),
        (
            uuid,
            "shopper_u_members",
            "uid",
            "shopper_uid",
            "shoppers_u",
        ),
    ] {
        let members: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM segments.{view} WHERE segment_id = $1"),
                &[&id],
            )
            .unwrap()
            .get(0);
        assert!(members > 25, "{view}: {members} members");
        let diff = difference(&mut client, view, key, id, &hand(key, fk, table));
        assert_eq!(
            diff, 0,
            "{view}: {diff} keys differ from the hand-written SQL"
        );
    }
}

/// A live funnel and a live `every` settle to the hand-written answer
/// after inserts, updates and deletes of the related rows.
#[test]
fn live_sequences_follow_changes() {
    let cluster = Cluster::start("audience_live", &[]);
    let mut client = cluster.sample_database(
        "3000",
        ANCHOR,
        "SELECT segments.register_related('customer', 'product_events', 'product_events', 'customer_id', 'occurred_at');",
    );
    // No window: the answer does not move with now().
    let funnel = r#"{"entity":"customer","rules":[{"where":{"related":"product_events","sequence":[
        {"where":{"attribute":"event_type","op":"eq","value":"viewed"}},
        {"where":{"all":[{"attribute":"event_type","op":"eq","value":"added_to_cart"},
                         {"attribute":"product_id","op":"eq","value":{"step":1,"attribute":"product_id"}}]},"within":"1 day"},
        {"where":{"all":[{"attribute":"event_type","op":"eq","value":"purchased"},
                         {"attribute":"product_id","op":"eq","value":{"step":2,"attribute":"product_id"}}]},"within":"2 days","absent":true}]}}]}"#;
    let every = r#"{"entity":"customer","rules":[{"where":{"related":"orders","every":{"attribute":"status","op":"eq","value":"paid"}}}]}"#;
    let live_funnel = create(&mut client, "Live abandoned", funnel, "live");
    let live_every = create(&mut client, "Live all paid", every, "live");
    client
        .batch_execute("SELECT * FROM segments.refresh()")
        .unwrap();
    let every_sql =
        "SELECT customer_id FROM orders GROUP BY customer_id HAVING bool_and(status = 'paid')";
    let check = |client: &mut postgres::Client, what: &str| {
        client
            .batch_execute("SELECT * FROM segments.apply_changes()")
            .unwrap();
        let funnel_diff = difference(
            client,
            "customer_members",
            "id",
            live_funnel,
            &abandoned_sql("now()", false),
        );
        assert_eq!(funnel_diff, 0, "{what}: the live funnel differs");
        let every_diff = difference(client, "customer_members", "id", live_every, every_sql);
        assert_eq!(every_diff, 0, "{what}: the live every differs");
    };
    check(&mut client, "after the first refresh");
    // A new abandoned cart for customer 7 (in the past, so its period is over).
    client
        .batch_execute(
            "INSERT INTO product_events VALUES
               (900000001, 7, 'viewed', 999, '2026-10-01 10:00'),
               (900000002, 7, 'added_to_cart', 999, '2026-10-01 12:00')",
        )
        .unwrap();
    check(&mut client, "after inserting a view and a cart");
    // Customer 7 buys it within two days after all: out again.
    client
        .batch_execute("INSERT INTO product_events VALUES (900000003, 7, 'purchased', 999, '2026-10-02 09:00')")
        .unwrap();
    check(&mut client, "after inserting the purchase");
    // The purchase moves a week later: in again; then the cart is deleted.
    client
        .batch_execute(
            "UPDATE product_events SET occurred_at = '2026-10-09 09:00' WHERE id = 900000003",
        )
        .unwrap();
    check(&mut client, "after moving the purchase");
    client
        .batch_execute("DELETE FROM product_events WHERE id = 900000002")
        .unwrap();
    check(&mut client, "after deleting the cart");
    // Every purchase of some members becomes a refund, and one order is paid.
    client
        .batch_execute(
            "UPDATE orders SET status = 'refunded' WHERE id IN (SELECT min(id) FROM orders GROUP BY customer_id LIMIT 40);
             UPDATE product_events SET product_id = product_id + 1 WHERE id % 97 = 0;
             DELETE FROM product_events WHERE id % 101 = 0;",
        )
        .unwrap();
    check(&mut client, "after a burst of updates and deletes");
}

/// Every SQL block of README's "Audience builder" section runs on the
/// demo's data, and each segment it creates refreshes with members.
#[test]
fn the_readme_examples_run() {
    let blocks = harness::readme_sql_blocks("Audience builder");
    assert!(blocks.len() >= 4, "{} SQL blocks", blocks.len());
    let cluster = Cluster::start("audience_readme", &[]);
    let mut client = cluster.sample_customers_orders("3000");
    client.batch_execute(B2B_TABLES).unwrap();
    for block in &blocks {
        client
            .batch_execute(block)
            .unwrap_or_else(|e| panic!("README block failed: {e}\n{block}"));
    }
    let rows = client
        .query(
            "SELECT r.segment_id, r.status, r.member_count FROM segments.refresh() r",
            &[],
        )
        .unwrap();
    assert!(rows.len() >= 5, "{} segments", rows.len());
    for row in rows {
        let (id, status, members): (i64, String, Option<i64>) =
            (row.get(0), row.get(1), row.get(2));
        assert_eq!(status, "succeeded", "segment {id}");
        assert!(members.unwrap_or(0) > 0, "segment {id} has no members");
    }
}

/// Accounts → contacts → events: the B2B tables of the path tests.
const B2B_TABLES: &str = "
CREATE TABLE accounts (id bigint PRIMARY KEY, name text NOT NULL, industry text);
INSERT INTO accounts SELECT g, 'account ' || g, (ARRAY['retail','software','health'])[1 + g % 3]
  FROM generate_series(1, 600) g;
CREATE TABLE contacts (id bigint PRIMARY KEY, account_id bigint NOT NULL REFERENCES accounts, opted_out boolean, role text);
-- accounts 1-50 have no contacts; some contacts have a NULL opt-out
INSERT INTO contacts SELECT g, 51 + (hashint4(g) & 2147483647) % 550,
       CASE WHEN g % 17 = 0 THEN NULL ELSE (hashint4(g * 7) & 3) = 0 END,
       (ARRAY['buyer','user','admin'])[1 + g % 3]
  FROM generate_series(1, 2400) g;
UPDATE contacts SET opted_out = true WHERE account_id % 11 = 0;
CREATE TABLE contact_events (id bigint PRIMARY KEY, contact_id bigint NOT NULL, event_type text NOT NULL, occurred_at timestamptz NOT NULL);
INSERT INTO contact_events
SELECT g, 1 + (hashint4(g) & 2147483647) % 2400,
       (ARRAY['email_open','email_open','webinar','demo_request','email_click'])[1 + (hashint4(g * 3) & 2147483647) % 5],
       '2026-11-01'::timestamptz - ((hashint4(g * 5) & 2147483647) % (200 * 24)) * interval '1 hour'
  FROM generate_series(1, 15000) g;
CREATE INDEX ON contacts (account_id);
CREATE INDEX ON contact_events (contact_id, occurred_at);";

/// The path tests' registrations: events reach accounts through contacts.
const B2B_REGISTER: &str = "
SELECT segments.register_entity('account', 'accounts', 'id');
SELECT segments.register_related('account', 'contacts', 'contacts', 'account_id');
SELECT segments.register_related('account', 'events', 'contact_events', 'contact_id', 'occurred_at', via => 'contacts');";

/// The definitions of the path tests, with their hand-written answers
/// (at reference time `at`).
fn b2b_cases(at: &str) -> Vec<(&'static str, String, String)> {
    let events = "SELECT c.account_id FROM contacts c JOIN contact_events e ON e.contact_id = c.id";
    vec![
        (
            "every contact opted out",
            r#"{"entity":"account","rules":[{"where":{"related":"contacts","every":{"attribute":"opted_out","op":"is_true"}}}]}"#.into(),
            "SELECT account_id FROM contacts GROUP BY account_id HAVING bool_and(coalesce(opted_out, false))".into(),
        ),
        (
            "asked for a demo (through contacts)",
            r#"{"entity":"account","rules":[{"where":{"related":"events","where":{"attribute":"event_type","op":"eq","value":"demo_request"}}}]}"#.into(),
            format!("{events} WHERE e.event_type = 'demo_request'"),
        ),
        (
            "no event in 90 days",
            r#"{"entity":"account","rules":[{"where":{"related":"events","exists":false,"within":"90 days"}}]}"#.into(),
            format!("SELECT id FROM accounts EXCEPT {events} WHERE e.occurred_at BETWEEN {at} - interval '90 days' AND {at}"),
        ),
        (
            "at least 12 events from 90 to 30 days ago",
            r#"{"entity":"account","rules":[{"where":{"related":"events","aggregate":"count","within":{"from":"90 days","to":"30 days"},"op":"gte","value":12}}]}"#.into(),
            format!("{events} WHERE e.occurred_at BETWEEN {at} - interval '90 days' AND {at} - interval '30 days' GROUP BY c.account_id HAVING count(*) >= 12"),
        ),
        (
            "every event of the last 30 days an email",
            r#"{"entity":"account","rules":[{"where":{"related":"events","within":"30 days","every":{"attribute":"event_type","op":"starts_with","value":"email"}}}]}"#.into(),
            format!("{events} WHERE e.occurred_at BETWEEN {at} - interval '30 days' AND {at} GROUP BY c.account_id HAVING bool_and(e.event_type LIKE 'email%')"),
        ),
        (
            "a webinar, then a demo request within 14 days, by any contact",
            r#"{"entity":"account","rules":[{"where":{"related":"events","sequence":[
                {"where":{"attribute":"event_type","op":"eq","value":"webinar"}},
                {"where":{"attribute":"event_type","op":"eq","value":"demo_request"},"within":"14 days"}]}}]}"#.into(),
            "SELECT c1.account_id FROM contacts c1 JOIN contact_events w ON w.contact_id = c1.id
               JOIN contacts c2 ON c2.account_id = c1.account_id JOIN contact_events d ON d.contact_id = c2.id
              WHERE w.event_type = 'webinar' AND d.event_type = 'demo_request'
                AND d.occurred_at > w.occurred_at AND d.occurred_at <= w.occurred_at + interval '14 days'".into(),
        ),
    ]
}

/// A two-hop path (accounts → contacts → events): exists, not exists,
/// aggregates, every and sequences through it equal hand-written SQL; the
/// registration's mistakes are refused.
#[test]
fn paths_reach_an_entity_through_other_tables() {
    let cluster = Cluster::start("audience_paths", &[]);
    let mut client = cluster.connect("postgres");
    client
        .batch_execute(&format!(
            "CREATE EXTENSION segments; SET segments.reference_time = '{ANCHOR}'; {B2B_TABLES} {B2B_REGISTER}"
        ))
        .unwrap();
    let cases = b2b_cases(REF);
    let mut ids = Vec::new();
    for (name, definition, _) in &cases {
        ids.push(create(&mut client, name, definition, "manual"));
    }
    client
        .batch_execute("SELECT * FROM segments.refresh()")
        .unwrap();
    for ((name, _, hand), id) in cases.iter().zip(&ids) {
        let members: i64 = member_count(&mut client, "account_members", *id);
        assert!(
            members > 0 && members < 600,
            "{name}: {members} members proves little"
        );
        let diff = difference(&mut client, "account_members", "id", *id, hand);
        assert_eq!(
            diff, 0,
            "{name}: {diff} keys differ from the hand-written SQL"
        );
    }
    // Registration mistakes.
    client
        .batch_execute("CREATE TABLE notes (contact_ref text, body text); CREATE TABLE nokey (id bigint, account_id bigint)")
        .unwrap();
    let refusals = [
        ("SELECT segments.register_related('account', 'notes', 'notes', 'contact_ref', via => 'contact')", "42P01", "via: related table \"contact\" is not registered for entity \"account\""),
        ("SELECT segments.register_related('account', 'notes', 'notes', 'contact_ref', via => 'notes')", "22023", "via: related table \"notes\" cannot be reached through itself"),
        ("SELECT segments.register_related('account', 'notes', 'notes', 'contact_ref', via => 'contacts')", "42804", "via: foreign key \"contact_ref\" is text, and the primary key \"id\" of related table \"contacts\" is bigint"),
        ("SELECT segments.register_related('account', 'nokey', 'nokey', 'account_id'); SELECT segments.register_related('account', 'notes', 'notes', 'contact_ref', via => 'nokey')", "22023", "via: related table \"nokey\" (public.nokey) has no single-column primary key"),
        ("SELECT segments.unregister_related('account', 'contacts')", "2BP01", "related table \"contacts\" of entity \"account\" is used by segments: every contact opted out"),
    ];
    for (sql, code, message) in refusals {
        let error = client.batch_execute(sql).unwrap_err();
        let (got_code, got) = sqlstate(&error);
        assert!(got.starts_with(message), "{got}\n  expected {message}");
        assert_eq!(got_code, code, "{got}");
    }
    // Without the segment that names it, contacts is still on the path
    // of events.
    let error = client
        .batch_execute(&format!(
            "SELECT segments.delete({}); SELECT segments.unregister_related('account', 'contacts')",
            ids[0]
        ))
        .unwrap_err();
    let (code, message) = sqlstate(&error);
    assert_eq!(code, "2BP01", "{message}");
    assert!(
        message.starts_with(
            "related table \"contacts\" of entity \"account\" is the via of related tables: events"
        ),
        "{message}"
    );
}

/// Live segments over a path settle to the hand-written answer after
/// inserts, updates and deletes on every table of the path: new events, a
/// contact moving to another account, deleted events and contacts.
#[test]
fn live_segments_follow_changes_anywhere_on_a_path() {
    let cluster = Cluster::start("audience_paths_live", &[]);
    let mut client = cluster.connect("postgres");
    client
        .batch_execute(&format!(
            "CREATE EXTENSION segments; {B2B_TABLES} {B2B_REGISTER}"
        ))
        .unwrap();
    // The cases without a window: their answer does not move with now().
    let cases: Vec<_> = b2b_cases("now()")
        .into_iter()
        .filter(|(_, definition, _)| {
            !definition.contains("within\":\"") || definition.contains("sequence")
        })
        .filter(|(_, definition, _)| !definition.contains("\"from\""))
        .collect();
    assert_eq!(cases.len(), 3, "every, exists and the sequence");
    let ids: Vec<i64> = cases
        .iter()
        .map(|(name, definition, _)| create(&mut client, name, definition, "live"))
        .collect();
    client
        .batch_execute("SELECT * FROM segments.refresh()")
        .unwrap();
    let triggers: i64 = client
        .query_one(
            "SELECT count(DISTINCT tgrelid) FROM pg_trigger WHERE tgname LIKE 'segments_live%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        triggers, 3,
        "capture on accounts, contacts and contact_events"
    );
    let check = |client: &mut postgres::Client, what: &str| {
        client
            .batch_execute("SELECT * FROM segments.apply_changes()")
            .unwrap();
        for ((name, _, hand), id) in cases.iter().zip(&ids) {
            let diff = difference(client, "account_members", "id", *id, hand);
            assert_eq!(diff, 0, "{what}: {name}: {diff} keys differ");
        }
    };
    check(&mut client, "after the first refresh");
    client
        .batch_execute(
            "INSERT INTO contact_events VALUES (900001, 5, 'webinar', '2026-10-01'), (900002, 6, 'demo_request', '2026-10-05')",
        )
        .unwrap();
    check(&mut client, "after new events");
    client
        .batch_execute("UPDATE contacts SET account_id = 3 WHERE id IN (5, 6); UPDATE contacts SET opted_out = NOT coalesce(opted_out, false) WHERE id % 50 = 0")
        .unwrap();
    check(
        &mut client,
        "after contacts moved to an account without contacts",
    );
    client
        .batch_execute("UPDATE contact_events SET event_type = 'demo_request' WHERE id % 23 = 0; DELETE FROM contact_events WHERE id % 19 = 0")
        .unwrap();
    check(&mut client, "after events changed and deleted");
    client
        .batch_execute("DELETE FROM contact_events WHERE contact_id IN (SELECT id FROM contacts WHERE account_id = 3); DELETE FROM contacts WHERE account_id = 3")
        .unwrap();
    check(
        &mut client,
        "after an account's contacts and their events were deleted",
    );
}

/// The traits of the trait tests, with the hand-written value of each for
/// customer `c` (at reference time `REF`).
fn trait_cases() -> Vec<(&'static str, &'static str, String)> {
    let of = "FROM orders o WHERE o.customer_id = c.id";
    vec![
        ("n_orders", r#"{"related":"orders","aggregate":"count"}"#, format!("(SELECT count(*) {of})")),
        ("n_channels", r#"{"related":"orders","aggregate":"count_distinct","attribute":"channel"}"#, format!("(SELECT count(DISTINCT channel) {of})")),
        ("paid_value", r#"{"related":"orders","aggregate":"sum","attribute":"amount","where":{"attribute":"status","op":"eq","value":"paid"}}"#,
            format!("(SELECT sum(amount) {of} AND o.status = 'paid')")),
        ("avg_90_days", r#"{"related":"orders","aggregate":"avg","attribute":"amount","within":"90 days"}"#,
            format!("(SELECT avg(amount) {of} AND o.ordered_at BETWEEN {REF} - interval '90 days' AND {REF})")),
        ("first_order_at", r#"{"related":"orders","aggregate":"min","attribute":"ordered_at"}"#, format!("(SELECT min(ordered_at) {of})")),
        ("biggest", r#"{"related":"orders","aggregate":"max","attribute":"amount","within":{"from":"1 year","to":"30 days"}}"#,
            format!("(SELECT max(amount) {of} AND o.ordered_at BETWEEN {REF} - interval '1 year' AND {REF} - interval '30 days')")),
        ("first_channel", r#"{"related":"orders","aggregate":"first","attribute":"channel"}"#, format!("(SELECT channel {of} ORDER BY ordered_at, channel LIMIT 1)")),
        ("last_channel", r#"{"related":"orders","aggregate":"last","attribute":"channel"}"#, format!("(SELECT channel {of} ORDER BY ordered_at DESC, channel LIMIT 1)")),
        ("usual_channel", r#"{"related":"orders","aggregate":"most_frequent","attribute":"channel"}"#,
            format!("(SELECT channel {of} GROUP BY channel ORDER BY count(*) DESC, channel LIMIT 1)")),
    ]
}

/// Every aggregate of a trait, stored and shown by the typed traits view,
/// equals hand-written SQL (ties in time and in frequency included);
/// conditions and ranks on traits select what the hand-written SQL does;
/// explain_member shows a trait's value; suggest takes a trait as its
/// measure; exports carry traits.
#[test]
fn traits_equal_hand_written_sql() {
    let cluster = Cluster::start("audience_traits", &[]);
    let mut client = cluster.sample_customers_orders("4000");
    // Orders at the very time of another of the same customer, on another
    // channel: first and last take the smallest value of a tie.
    client
        .batch_execute(
            "INSERT INTO orders SELECT id + 100000000, customer_id, ordered_at, amount, status,
                    CASE channel WHEN 'web' THEN 'app' ELSE 'web' END FROM orders WHERE id % 7 = 0",
        )
        .unwrap();
    for (name, definition, _) in trait_cases() {
        client
            .query_one(
                "SELECT segments.create_trait($1, 'customer', $2::text::jsonb)",
                &[&name, &definition],
            )
            .unwrap_or_else(|e| panic!("creating trait {name}: {e}"));
    }
    let stored: i64 = client
        .query_one("SELECT segments.refresh_traits('customer')", &[])
        .unwrap()
        .get(0);
    assert!(stored > 10_000, "{stored} values stored");
    for (name, _, hand) in trait_cases() {
        let (differ, set): (i64, i64) = {
            let row = client
                .query_one(
                    &format!(
                        "SELECT count(*) FILTER (WHERE t.{name} IS DISTINCT FROM {hand}),
                                count(*) FILTER (WHERE t.{name} IS NOT NULL)
                           FROM customers c JOIN segments.customer_traits t ON t.id = c.id"
                    ),
                    &[],
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            (row.get(0), row.get(1))
        };
        assert_eq!(
            differ, 0,
            "trait {name}: {differ} records differ from the hand-written value"
        );
        assert!(set > 100, "trait {name}: only {set} records have a value");
    }
    // Counts are 0, not NULL, for a customer without orders.
    let zero: i64 = client
        .query_one(
            "SELECT count(*) FROM segments.customer_traits t WHERE t.n_orders = 0 AND t.paid_value IS NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(zero > 100, "customers without orders: {zero}");
    // Conditions and ranks on traits.
    let conditions = [
        ("paid over 3000", r#"{"trait":"paid_value","op":"gt","value":3000}"#.to_string(),
            "(SELECT sum(amount) FROM orders o WHERE o.customer_id = c.id AND o.status = 'paid') > 3000".to_string()),
        ("fewer than 2 orders", r#"{"trait":"n_orders","op":"lt","value":2}"#.to_string(),
            "(SELECT count(*) FROM orders o WHERE o.customer_id = c.id) < 2".to_string()),
        ("last bought in the store", r#"{"trait":"last_channel","op":"eq","value":"store"}"#.to_string(),
            "(SELECT channel FROM orders o WHERE o.customer_id = c.id ORDER BY ordered_at DESC, channel LIMIT 1) = 'store'".to_string()),
        ("no average in 90 days", r#"{"trait":"avg_90_days","op":"is_null"}"#.to_string(),
            format!("NOT EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id AND o.ordered_at BETWEEN {REF} - interval '90 days' AND {REF})")),
        ("top 10% by paid value", r#"{"trait":"paid_value","op":"top_percent","value":10}"#.to_string(),
            "c.id IN (SELECT id FROM (SELECT c2.id, rank() OVER (ORDER BY p.v DESC) AS r, count(*) OVER () AS n
                         FROM customers c2 JOIN (SELECT customer_id, sum(amount) AS v FROM orders WHERE status = 'paid' GROUP BY customer_id) p
                           ON p.customer_id = c2.id) t WHERE r <= ceil(n * 10 / 100.0))".to_string()),
        ("the 30 with the fewest orders", r#"{"trait":"n_orders","op":"bottom","value":30}"#.to_string(),
            "(SELECT count(*) FROM orders o WHERE o.customer_id = c.id) <= (SELECT max(n) FROM (SELECT (SELECT count(*) FROM orders o WHERE o.customer_id = c3.id) AS n FROM customers c3 ORDER BY 1 LIMIT 30) t)".to_string()),
    ];
    let mut ids = Vec::new();
    for (name, condition, _) in &conditions {
        let definition = format!(r#"{{"entity":"customer","rules":[{{"where":{condition}}}]}}"#);
        ids.push(create(&mut client, name, &definition, "manual"));
    }
    client
        .batch_execute("SELECT * FROM segments.refresh()")
        .unwrap();
    for ((name, _, hand), id) in conditions.iter().zip(&ids) {
        let diff = difference(
            &mut client,
            "customer_members",
            "id",
            *id,
            &format!("SELECT c.id FROM customers c WHERE {hand}"),
        );
        assert_eq!(
            diff, 0,
            "{name}: {diff} keys differ from the hand-written SQL"
        );
    }
    // explain_member shows the trait's value.
    let (key, value): (i64, Option<String>) = {
        let row = client
            .query_one(
                "SELECT t.id, e.value FROM segments.customer_traits t,
                        segments.explain_member($1, t.id) e
                  WHERE t.paid_value > 3000 AND e.path = 'rules[0].where' ORDER BY t.id LIMIT 1",
                &[&ids[0]],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    let expected: String = client
        .query_one(
            "SELECT sum(amount)::text FROM orders WHERE customer_id = $1 AND status = 'paid'",
            &[&key],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        value.as_deref(),
        Some(expected.as_str()),
        "explain_member's value of paid_value"
    );
    // suggest takes a trait as its measure.
    let suggested: i64 = client
        .query_one(
            "SELECT count(*) FROM segments.suggest('customer', 'paid_value')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(suggested > 0, "suggest with a trait measure");
    // An export carries traits as columns.
    client
        .batch_execute(&format!(
            "SELECT segments.create_export('paid', ARRAY[{}]::bigint[], 'public.paid_export', traits => ARRAY['paid_value', 'last_channel'])",
            ids[0]
        ))
        .unwrap();
    let wrong: i64 = client
        .query_one(
            "SELECT count(*) FROM paid_export x WHERE x.paid_value IS DISTINCT FROM
                    (SELECT sum(amount) FROM orders o WHERE o.customer_id = x.id AND o.status = 'paid')
                 OR x.paid_value <= 3000",
            &[],
        )
        .unwrap()
        .get(0);
    let exported: i64 = client
        .query_one("SELECT count(*) FROM paid_export", &[])
        .unwrap()
        .get(0);
    assert!(
        exported > 0 && wrong == 0,
        "{exported} exported, {wrong} wrong"
    );
}

/// How many records' stored value of each trait of `trait_cases` differs
/// from its hand-written value (through the typed traits view).
fn traits_differing(client: &mut postgres::Client) -> Vec<(&'static str, i64)> {
    trait_cases()
        .into_iter()
        .map(|(name, _, hand)| {
            let differ: i64 = client
                .query_one(
                    &format!(
                        "SELECT count(*) FILTER (WHERE t.{name} IS DISTINCT FROM {hand})
                           FROM customers c JOIN segments.customer_traits t ON t.id = c.id"
                    ),
                    &[],
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .get(0);
            (name, differ)
        })
        .filter(|(_, differ)| *differ > 0)
        .collect()
}

/// Computing every trait again writes only what changed: values that
/// changed, keys that gained a value, and keys whose related rows all went
/// (found by the sweep); an unchanged value keeps its row (the daily
/// system refresh used to write every value again: bench/NOTES.md).
#[test]
fn computing_traits_again_writes_only_what_changed() {
    let cluster = Cluster::start("audience_traits_again", &[]);
    let mut client = cluster.sample_customers_orders("3000");
    for (name, definition, _) in trait_cases() {
        client
            .query_one(
                "SELECT segments.create_trait($1, 'customer', $2::text::jsonb)",
                &[&name, &definition],
            )
            .unwrap_or_else(|e| panic!("creating trait {name}: {e}"));
    }
    client
        .batch_execute(
            "SELECT segments.refresh_traits('customer');
             CREATE TABLE before AS SELECT trait_id, key, value, ctid::text AS at FROM segments.trait_value;",
        )
        .unwrap();
    // A customer whose orders changed, one whose orders all went, and
    // one without orders who gets some.
    let (changed, emptied, newcomer): (i64, i64, i64) = {
        let row = client
            .query_one(
                "SELECT (SELECT min(customer_id) FROM orders),
                        (SELECT max(customer_id) FROM orders),
                        (SELECT min(id) FROM customers c WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id))",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    client
        .batch_execute(&format!(
            "UPDATE orders SET amount = amount + 1000, status = 'paid' WHERE customer_id = {changed};
             DELETE FROM orders WHERE customer_id = {emptied};
             INSERT INTO orders (id, customer_id, ordered_at, amount, status, channel)
             VALUES (900000001, {newcomer}, {REF} - interval '3 days', 42, 'paid', 'web');"
        ))
        .unwrap();
    let stored: i64 = client
        .query_one("SELECT segments.refresh_traits('customer')", &[])
        .unwrap()
        .get(0);
    assert!(stored > 1_000, "{stored} values");
    assert_eq!(
        traits_differing(&mut client),
        vec![],
        "traits differ from the hand-written values"
    );
    let count = |client: &mut postgres::Client, sql: &str| -> i64 {
        client.query_one(sql, &[]).unwrap().get(0)
    };
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM segments.trait_value v JOIN before b USING (trait_id, key)
              WHERE v.value = b.value AND v.ctid::text <> b.at"
        ),
        0,
        "unchanged values were written again"
    );
    let rewritten = count(
        &mut client,
        "SELECT count(*) FROM segments.trait_value v LEFT JOIN before b USING (trait_id, key)
          WHERE b.at IS NULL OR v.ctid::text <> b.at",
    );
    assert!(
        (1..=30).contains(&rewritten),
        "{rewritten} values written for three customers' changes"
    );
    assert_eq!(
        count(
            &mut client,
            &format!("SELECT count(*) FROM segments.trait_value WHERE key = '{emptied}'")
        ),
        0,
        "the values of a customer without orders any more are kept"
    );
    assert!(
        count(
            &mut client,
            &format!("SELECT count(*) FROM segments.trait_value WHERE key = '{newcomer}'")
        ) > 0,
        "a new customer's values are missing"
    );
}

/// Two computations of an entity's traits at once: the second waits for
/// the first and writes nothing it already wrote (writing a changed
/// key's value from a stale reading failed on the first's row, 23505).
#[test]
fn concurrent_computations_of_traits_do_not_collide() {
    let cluster = Cluster::start("audience_traits_concurrent", &[]);
    let mut client = cluster.sample_customers_orders("1000");
    client
        .query_one(
            "SELECT segments.create_trait('spent', 'customer', '{\"related\":\"orders\",\"aggregate\":\"sum\",\"attribute\":\"amount\"}'::jsonb)",
            &[],
        )
        .unwrap();
    client
        .batch_execute(
            "UPDATE orders SET amount = amount + 1 WHERE customer_id = (SELECT min(customer_id) FROM orders)",
        )
        .unwrap();
    client
        .batch_execute("BEGIN; SELECT segments.refresh_traits('customer');")
        .unwrap();
    let url = cluster.url("postgres");
    let second = std::thread::spawn(move || {
        let mut other = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        other
            .query_one("SELECT segments.refresh_traits('customer')", &[])
            .map(|row| row.get::<_, i64>(0))
    });
    // The second is waiting for the first (its lock), then the first
    // commits.
    harness::wait_for("the second computation to wait", 30, || {
        let waiting: i64 = cluster
            .connect("postgres")
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%refresh_traits%'",
                &[],
            )
            .unwrap()
            .get(0);
        (waiting > 0).then_some(())
    });
    client.batch_execute("COMMIT").unwrap();
    let stored = second.join().unwrap();
    assert!(
        stored.is_ok(),
        "the second computation failed: {:?}",
        stored.err()
    );
}

/// The traits view follows trait creation and deletion with its grants
/// kept; drop_trait is refused while a segment or an export uses the trait
/// and for anyone but its owner; create_trait refuses bad definitions.
#[test]
fn traits_are_managed_safely() {
    let cluster = Cluster::start("audience_traits_admin", &[]);
    let mut client = cluster.sample_customers_orders("1000");
    client
        .batch_execute(
            r#"CREATE ROLE analyst LOGIN; GRANT segments_reader TO analyst;
               CREATE ROLE other_editor LOGIN; GRANT segments_editor TO other_editor;
               GRANT SELECT ON customers, orders TO other_editor;
               SELECT segments.create_trait('n_orders', 'customer', '{"related":"orders","aggregate":"count"}', 'Orders ever');
               GRANT SELECT ON segments.customer_traits TO analyst;
               SELECT segments.create_trait('paid_value', 'customer', '{"related":"orders","aggregate":"sum","attribute":"amount"}');"#,
        )
        .unwrap();
    let (columns, granted): (String, bool) = {
        let row = client
            .query_one(
                "SELECT string_agg(attname, ',' ORDER BY attnum), has_table_privilege('analyst', 'segments.customer_traits', 'SELECT')
                   FROM pg_attribute WHERE attrelid = 'segments.customer_traits'::regclass AND attnum > 0",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(columns, "id,n_orders,paid_value");
    assert!(granted, "the analyst's grant survives a new trait");
    // Refusals.
    client
        .batch_execute(r#"SELECT segments.create_segment('Buyers', '{"entity":"customer","rules":[{"where":{"trait":"n_orders","op":"gte","value":1}}]}')"#)
        .unwrap();
    let refusals = [
        (
            "SELECT segments.drop_trait('n_orders')",
            "2BP01",
            "trait \"n_orders\" is used by segments: Buyers",
        ),
        (
            "SELECT segments.drop_trait('n_order')",
            "42704",
            "trait \"n_order\" does not exist",
        ),
        (
            r#"SELECT segments.create_trait('n_orders', 'customer', '{"related":"orders","aggregate":"count"}')"#,
            "42710",
            "trait \"n_orders\" already exists",
        ),
        (
            r#"SELECT segments.create_trait('x', 'customer', '{"related":"order","aggregate":"count"}')"#,
            "42P01",
            "definition.related: related table \"order\" is not registered",
        ),
        (
            r#"SELECT segments.create_trait('x', 'customer', '{"related":"orders","aggregate":"sum","attribute":"amout"}')"#,
            "42703",
            "definition.attribute: column \"amout\" does not exist on related table \"orders\"",
        ),
        (
            r#"SELECT segments.create_trait('x', 'customer', '{"related":"orders","aggregate":"sum","attribute":"channel"}')"#,
            "22023",
            "definition.attribute: sum needs a numeric column",
        ),
        (
            r#"SELECT segments.create_trait('x', 'customer', '{"related":"orders","aggregate":"median","attribute":"amount"}')"#,
            "22023",
            "definition.aggregate: must be one of",
        ),
        (
            r#"SELECT segments.create_trait('Bad Name', 'customer', '{"related":"orders","aggregate":"count"}')"#,
            "22023",
            "name: ",
        ),
        (
            r#"SELECT segments.create_trait('id', 'customer', '{"related":"orders","aggregate":"count"}')"#,
            "42710",
            "name: trait \"id\" would be named as the key column",
        ),
        (
            r#"SELECT segments.create_trait('x', 'client', '{"related":"orders","aggregate":"count"}')"#,
            "42P01",
            "entity \"client\" is not registered",
        ),
    ];
    for (sql, code, message) in refusals {
        let error = client.batch_execute(sql).unwrap_err();
        let (got_code, got) = sqlstate(&error);
        assert!(
            got.starts_with(message),
            "{sql}: {got}\n  expected {message}"
        );
        assert_eq!(got_code, code, "{got}");
    }
    let mut other = harness::connect_as(&cluster, "other_editor");
    let error = other
        .batch_execute("SELECT segments.drop_trait('paid_value')")
        .unwrap_err();
    assert_eq!(sqlstate(&error).0, "42501", "{}", sqlstate(&error).1);
    let error = harness::connect_as(&cluster, "analyst")
        .batch_execute(r#"SELECT segments.create_trait('y', 'customer', '{"related":"orders","aggregate":"count"}')"#)
        .unwrap_err();
    assert_eq!(sqlstate(&error).0, "42501", "{}", sqlstate(&error).1);
    // A trait reading a column its creator may not SELECT is refused.
    client
        .batch_execute("REVOKE SELECT ON orders FROM other_editor; GRANT SELECT (customer_id, ordered_at) ON orders TO other_editor")
        .unwrap();
    let error = other
        .batch_execute(r#"SELECT segments.create_trait('their_sum', 'customer', '{"related":"orders","aggregate":"sum","attribute":"amount"}')"#)
        .unwrap_err();
    let (code, message) = sqlstate(&error);
    assert_eq!(code, "42501", "{message}");
    assert!(message.contains("\"amount\""), "{message}");
    // Dropping a trait drops its column, grants kept.
    client
        .batch_execute("SELECT segments.drop_trait('paid_value')")
        .unwrap();
    let (columns, granted): (String, bool) = {
        let row = client
            .query_one(
                "SELECT string_agg(attname, ',' ORDER BY attnum), has_table_privilege('analyst', 'segments.customer_traits', 'SELECT')
                   FROM pg_attribute WHERE attrelid = 'segments.customer_traits'::regclass AND attnum > 0",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(columns, "id,n_orders");
    assert!(granted, "the analyst's grant survives a dropped trait");
    // The analyst reads the view.
    let rows: i64 = harness::connect_as(&cluster, "analyst")
        .query_one("SELECT count(*) FROM segments.customer_traits", &[])
        .map(|r| r.get(0))
        .unwrap_or(-1);
    assert_eq!(
        rows, -1,
        "analyst has no SELECT on customers: the security_invoker view refuses"
    );
}

/// A live segment using traits settles to the hand-written answer after
/// inserts, updates and deletes of orders.
#[test]
fn live_segments_use_traits() {
    let cluster = Cluster::start("audience_traits_live", &[]);
    let mut client = cluster.sample_unpinned("3000");
    client
        .batch_execute(
            r#"SELECT segments.create_trait('paid_value', 'customer', '{"related":"orders","aggregate":"sum","attribute":"amount","where":{"attribute":"status","op":"eq","value":"paid"}}');
               SELECT segments.create_trait('usual_channel', 'customer', '{"related":"orders","aggregate":"most_frequent","attribute":"channel"}');"#,
        )
        .unwrap();
    let id = create(
        &mut client,
        "Live big web spenders",
        r#"{"entity":"customer","rules":[{"where":{"all":[{"trait":"paid_value","op":"gte","value":2000},{"trait":"usual_channel","op":"eq","value":"web"}]}}]}"#,
        "live",
    );
    client
        .batch_execute("SELECT * FROM segments.refresh()")
        .unwrap();
    let triggers: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'orders'::regclass AND tgname LIKE 'segments_live%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(triggers, 4, "orders, read through the traits, is captured");
    let hand = "SELECT c.id FROM customers c
                 WHERE (SELECT sum(amount) FROM orders o WHERE o.customer_id = c.id AND o.status = 'paid') >= 2000
                   AND (SELECT channel FROM orders o WHERE o.customer_id = c.id GROUP BY channel ORDER BY count(*) DESC, channel LIMIT 1) = 'web'";
    let check = |client: &mut postgres::Client, what: &str| {
        client
            .batch_execute("SELECT * FROM segments.apply_changes()")
            .unwrap();
        let diff = difference(client, "customer_members", "id", id, hand);
        if diff != 0 {
            let rows = client
                .query(
                    &format!(
                        "WITH got AS (SELECT id FROM segments.customer_members WHERE segment_id = {id}), want AS ({hand})
                         SELECT x.k, x.side, (SELECT sum(amount) FROM orders o WHERE o.customer_id = x.k AND o.status = 'paid')::text,
                                (SELECT string_agg(channel || ':' || n, ',') FROM (SELECT channel, count(*) n FROM orders o WHERE o.customer_id = x.k GROUP BY 1) q)
                           FROM (SELECT id AS k, 'extra' AS side FROM (SELECT id FROM got EXCEPT SELECT id FROM want) a
                                 UNION ALL SELECT id, 'missing' FROM (SELECT id FROM want EXCEPT SELECT id FROM got) b) x"
                    ),
                    &[],
                )
                .unwrap();
            for r in rows {
                let (k, side, paid, channels): (i64, String, Option<String>, Option<String>) =
                    (r.get(0), r.get(1), r.get(2), r.get(3));
                eprintln!("{what}: {side} {k} paid {paid:?} channels {channels:?}");
            }
        }
        assert_eq!(diff, 0, "{what}: {diff} keys differ");
        // The stored values the traits view shows follow too.
        let stale: i64 = client
            .query_one(
                "SELECT count(*) FROM customers c JOIN segments.customer_traits t ON t.id = c.id
                  WHERE t.paid_value IS DISTINCT FROM (SELECT sum(amount) FROM orders o WHERE o.customer_id = c.id AND o.status = 'paid')
                     OR t.usual_channel IS DISTINCT FROM (SELECT channel FROM orders o WHERE o.customer_id = c.id
                                                            GROUP BY channel ORDER BY count(*) DESC, channel LIMIT 1)",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(
            stale, 0,
            "{what}: {stale} customers' stored traits are stale"
        );
    };
    check(&mut client, "after the first refresh");
    client
        .batch_execute("INSERT INTO orders SELECT 900000000 + g, 1 + g % 40, now(), 999, 'paid', 'web' FROM generate_series(1, 200) g")
        .unwrap();
    check(&mut client, "after big web orders");
    client
        .batch_execute("UPDATE orders SET status = 'refunded' WHERE customer_id IN (SELECT id FROM segments.customer_members WHERE segment_id = 1 LIMIT 10)")
        .unwrap();
    check(&mut client, "after refunds");
    client
        .batch_execute("UPDATE orders SET channel = 'store' WHERE id % 3 = 0; DELETE FROM orders WHERE id % 11 = 0")
        .unwrap();
    check(&mut client, "after channel changes and deletes");
}
