//! Layer 3: activation (SPEC 17; README, "Activation") against hand-written
//! SQL on the sample data: splits stable across refreshes and live changes
//! with exact shares, priority lists after every refresh and live apply,
//! breakdowns against GROUP BY, and change feeds under concurrent writers
//! and crashing readers, reconstructed exactly.

mod harness;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{connect_as, sqlstate, Cluster};

/// A record's bucket as documented (README): the first four bytes of
/// md5("<segment>:<key>") as an unsigned big-endian integer, modulo 100,
/// computed here without PostgreSQL.
fn bucket(segment: i64, key: &str) -> u32 {
    use md5::{Digest, Md5};
    let digest = Md5::digest(format!("{segment}:{key}").as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % 100
}

/// A breakdown row: value, members, population, member_share,
/// population_share, lift.
type BreakdownRow = (Option<String>, i64, i64, f64, f64, Option<f64>);

fn create(client: &mut postgres::Client, name: &str, definition: &str, schedule: &str) -> i64 {
    client
        .query_one(
            "SELECT segments.create_segment($1, $2::text::jsonb, schedule => $3)",
            &[&name, &definition, &schedule],
        )
        .unwrap_or_else(|e| panic!("creating {name}: {e}"))
        .get(0)
}

fn apply(client: &mut postgres::Client) {
    client
        .batch_execute("SELECT count(*) FROM segments.apply_changes()")
        .unwrap();
}

/// Each member's group through the members view.
fn groups(client: &mut postgres::Client, segment: i64) -> HashMap<i64, String> {
    client
        .query(
            "SELECT id, split_group FROM segments.customer_members WHERE segment_id = $1",
            &[&segment],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The group of bucket `b` for 10/45/45 split into control, email, sms.
fn expected_group(b: u32) -> &'static str {
    match b {
        0..=9 => "control",
        10..=54 => "email",
        _ => "sms",
    }
}

/// Splits: the documented bucket, shares within one point at 100,000
/// members, the same group across 20 rounds of refreshes and live changes
/// (members leave and come back), group conditions, and the rules of
/// split/unsplit.
#[test]
fn splits_are_stable_and_even() {
    let cluster = Cluster::start("splits", &[]);
    let mut client = cluster.sample_unpinned("120000");
    let all = create(
        &mut client,
        "Everyone",
        r#"{"entity":"customer","rules":[{"where":{"attribute":"unsubscribed","op":"is_false"}}]}"#,
        "manual",
    );
    let live = create(
        &mut client,
        "Live DE",
        r#"{"entity":"customer","rules":[{"where":{"attribute":"country","op":"eq","value":"DE"}}]}"#,
        "live",
    );
    client
        .batch_execute(&format!(
            r#"SELECT * FROM segments.refresh(ARRAY[{all}, {live}]::bigint[]);
               SELECT segments.split({all}, '{{"control": 10, "email": 45, "sms": 45}}');
               SELECT segments.split({live}, '{{"sms": 45, "control": 10, "email": 45}}');"#
        ))
        .unwrap();
    // The same in SQL as documented, and in Rust.
    let sql_buckets: Vec<(String, i32)> = client
        .query(
            "SELECT id::text, segments.split_bucket($1, id::text) FROM customers ORDER BY id LIMIT 2000",
            &[&all],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (key, b) in &sql_buckets {
        assert_eq!(bucket(all, key) as i32, *b, "bucket of key {key}");
    }
    // Shares at 100,000 members or more: within one percentage point.
    let first = groups(&mut client, all);
    assert!(first.len() >= 100_000, "{} members", first.len());
    for (group, share) in [("control", 10.0), ("email", 45.0), ("sms", 45.0)] {
        let n = first.values().filter(|g| *g == group).count();
        let got = 100.0 * n as f64 / first.len() as f64;
        assert!(
            (got - share).abs() <= 1.0,
            "{group}: {got:.2}% of {}",
            first.len()
        );
    }
    for (key, group) in &first {
        assert_eq!(
            group,
            expected_group(bucket(all, &key.to_string())),
            "key {key}"
        );
    }
    // 20 rounds: members leave and come back, through refreshes and live
    // applies; every member always has the group it had the first time.
    let mut seen_live: HashMap<i64, String> = groups(&mut client, live);
    let mut seen_all = first;
    let (mut left, mut returned) = (0usize, 0usize);
    for round in 0..20i64 {
        let lo = 1 + round * 997 % 100_000;
        client
            .batch_execute(&format!(
                "UPDATE customers SET unsubscribed = NOT unsubscribed WHERE id BETWEEN {lo} AND {lo} + 3000;
                 UPDATE customers SET country = CASE WHEN country = 'DE' THEN 'AT' WHEN country = 'AT' THEN 'DE' ELSE country END
                  WHERE id BETWEEN {lo} AND {lo} + 5000;
                 SELECT * FROM segments.refresh({all});"
            ))
            .unwrap();
        apply(&mut client);
        for (segment, seen) in [(all, &mut seen_all), (live, &mut seen_live)] {
            let now = groups(&mut client, segment);
            left += seen.keys().filter(|k| !now.contains_key(k)).count();
            for (key, group) in now {
                match seen.get(&key) {
                    Some(before) => assert_eq!(
                        &group, before,
                        "round {round}: key {key} of segment {segment} changed group"
                    ),
                    None => {
                        assert_eq!(group, expected_group(bucket(segment, &key.to_string())));
                        seen.insert(key, group);
                    }
                }
            }
        }
        returned += 1;
    }
    assert!(left > 1000 && returned == 20, "members left {left} times");
    // The live segment is exactly the hand-written one, with its groups.
    let wrong: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT id, segments.split_group($1, id::text) FROM customers WHERE country = 'DE'
                                   EXCEPT SELECT id, split_group FROM segments.customer_members WHERE segment_id = $1) d",
            &[&live],
        )
        .unwrap()
        .get(0);
    assert_eq!(wrong, 0);
    // A group is a condition: members of the segment in that group.
    let control = create(
        &mut client,
        "Holdout",
        &format!(
            r#"{{"entity":"customer","rules":[{{"where":{{"segment":{all},"group":"control"}}}}]}}"#
        ),
        "manual",
    );
    client
        .batch_execute(&format!("SELECT * FROM segments.refresh({control})"))
        .unwrap();
    let diff: i64 = client
        .query_one(
            "SELECT count(*) FROM ((SELECT id FROM segments.customer_members WHERE segment_id = $1
                                    EXCEPT SELECT id FROM customers WHERE NOT unsubscribed AND segments.split_bucket($2, id::text) < 10)
                                   UNION ALL
                                   (SELECT id FROM customers WHERE NOT unsubscribed AND segments.split_bucket($2, id::text) < 10
                                    EXCEPT SELECT id FROM segments.customer_members WHERE segment_id = $1)) d",
            &[&control, &all],
        )
        .unwrap()
        .get(0);
    assert_eq!(diff, 0, "the control group condition");
    // segments_of, preview and explain_member show the group.
    let member: i64 = client
        .query_one(
            "SELECT min(id) FROM segments.customer_members WHERE segment_id = $1",
            &[&all],
        )
        .unwrap()
        .get(0);
    let want = expected_group(bucket(all, &member.to_string()));
    let of: String = client
        .query_one(
            "SELECT split_group FROM segments.segments_of('customer', $1::bigint) WHERE segment_id = $2",
            &[&member, &all],
        )
        .unwrap()
        .get(0);
    assert_eq!(of, want);
    let previewed: String = client
        .query_one(
            "SELECT p ->> 'split_group' FROM segments.preview($1, 1) p",
            &[&all],
        )
        .unwrap()
        .get(0);
    assert_eq!(previewed, want);
    let explained: String = client
        .query_one(
            "SELECT value FROM segments.explain_member($1, $2::bigint) WHERE path = 'split_group'",
            &[&all, &member],
        )
        .unwrap()
        .get(0);
    assert_eq!(explained, want);
    // Changing the groups is refused; the same groups again are accepted.
    let e = client
        .execute(
            &format!(r#"SELECT segments.split({all}, '{{"control": 20, "rest": 80}}')"#),
            &[],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e).0, "22023", "{e}");
    client
        .batch_execute(&format!(
            r#"SELECT segments.split({all}, '{{"email": 45, "sms": 45, "control": 10}}')"#
        ))
        .unwrap();
    for bad in [
        r#"{"a": 50, "b": 40}"#,
        r#"{"a": 100}"#,
        r#"{"a": 50.5, "b": 49.5}"#,
        "[1,2]",
    ] {
        let e = client
            .execute("SELECT segments.split($1, $2::text::jsonb)", &[&live, &bad])
            .unwrap_err();
        assert_eq!(sqlstate(&e).0, "22023", "{bad}: {e}");
    }
    // Unsplit is refused while a segment selects a group (2BP01 naming it).
    let e = client
        .execute(&format!("SELECT segments.unsplit({all})"), &[])
        .unwrap_err();
    let (code, message) = sqlstate(&e);
    assert_eq!(code, "2BP01");
    assert!(message.contains("Holdout"), "{message}");
    // A duplicate is not split.
    let copy: i64 = client
        .query_one("SELECT segments.duplicate($1, 'Copy')", &[&all])
        .unwrap()
        .get(0);
    let split: bool = client
        .query_one(
            "SELECT EXISTS (SELECT FROM segments.segment_split WHERE segment_id = $1)",
            &[&copy],
        )
        .unwrap()
        .get(0);
    assert!(!split);
    client
        .batch_execute(&format!("SELECT segments.unsplit({live})"))
        .unwrap();
    let after: Option<String> = client
        .query_one(
            "SELECT max(split_group) FROM segments.customer_members WHERE segment_id = $1",
            &[&live],
        )
        .unwrap()
        .get(0);
    assert_eq!(after, None, "an unsplit segment has no groups");
}

/// The assignment by hand: each record of any listed segment under the
/// first listed segment it is a member of (`ids` in priority order).
fn hand_assignment(client: &mut postgres::Client, ids: &[i64]) -> BTreeMap<String, i64> {
    let mut assigned = BTreeMap::new();
    for id in ids {
        for row in client
            .query(
                "SELECT id::text FROM segments.customer_members WHERE segment_id = $1",
                &[id],
            )
            .unwrap()
        {
            assigned.entry(row.get::<_, String>(0)).or_insert(*id);
        }
    }
    assigned
}

fn view_assignment(client: &mut postgres::Client, list: &str) -> BTreeMap<String, i64> {
    client
        .query(
            "SELECT key, segment_id FROM segments.priority_assignment WHERE list = $1",
            &[&list],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Priority lists: the view after every refresh and live apply, the
/// condition, an export of a list, and what a list protects.
#[test]
fn priority_lists_assign_each_record_once() {
    let cluster = Cluster::start("priority", &[]);
    let mut client = cluster.sample_unpinned("5000");
    let vip = create(
        &mut client,
        "VIP",
        r#"{"entity":"customer","rules":[{"where":{"attribute":"loyalty_tier","op":"in","value":["gold","platinum"]}}]}"#,
        "live",
    );
    let de = create(
        &mut client,
        "DE",
        r#"{"entity":"customer","rules":[{"where":{"attribute":"country","op":"eq","value":"DE"}}]}"#,
        "manual",
    );
    let young = create(
        &mut client,
        "Young",
        r#"{"entity":"customer","rules":[{"where":{"attribute":"age","op":"lt","value":30}}]}"#,
        "live",
    );
    client
        .batch_execute("SELECT * FROM segments.refresh()")
        .unwrap();
    let list: i64 = client
        .query_one(
            "SELECT segments.create_priority_list('offers', ARRAY[$1, $2, $3]::bigint[])",
            &[&vip, &de, &young],
        )
        .unwrap()
        .get(0);
    assert!(list > 0);
    let order = [vip, de, young];
    assert_eq!(
        view_assignment(&mut client, "offers"),
        hand_assignment(&mut client, &order)
    );
    // A segment of what the list assigns to DE, and an export of the list.
    let only_de = create(
        &mut client,
        "DE offer",
        &format!(
            r#"{{"entity":"customer","rules":[{{"where":{{"segment":{de},"priority_list":"offers"}}}}]}}"#
        ),
        "manual",
    );
    client
        .batch_execute("SELECT segments.create_export('offers_out', NULL, 'public.offers_out', priority_list => 'offers')")
        .unwrap();
    for round in 0..6 {
        client
            .batch_execute(&format!(
                "UPDATE customers SET loyalty_tier = CASE WHEN loyalty_tier = 'gold' THEN 'silver' ELSE 'gold' END
                  WHERE id % 7 = {round};
                 UPDATE customers SET country = CASE WHEN country = 'DE' THEN 'FR' ELSE 'DE' END WHERE id % 11 = {round};
                 UPDATE customers SET age = 70 - age WHERE id % 13 = {round} AND age IS NOT NULL;"
            ))
            .unwrap();
        // After a live apply alone, then after a refresh.
        apply(&mut client);
        assert_eq!(
            view_assignment(&mut client, "offers"),
            hand_assignment(&mut client, &order),
            "round {round}, after a live apply"
        );
        client
            .batch_execute(&format!(
                "SELECT * FROM segments.refresh(ARRAY[{de}, {only_de}]::bigint[])"
            ))
            .unwrap();
        let hand = hand_assignment(&mut client, &order);
        assert_eq!(
            view_assignment(&mut client, "offers"),
            hand,
            "round {round}, after a refresh"
        );
        let exported: BTreeMap<String, i64> = client
            .query("SELECT id::text, segment_id FROM public.offers_out", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(exported, hand, "round {round}: the export of the list");
        let condition: BTreeMap<String, i64> = client
            .query(
                "SELECT id::text, $2::bigint FROM segments.customer_members WHERE segment_id = $1",
                &[&only_de, &de],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let want: BTreeMap<String, i64> = hand.into_iter().filter(|(_, s)| *s == de).collect();
        assert_eq!(
            condition, want,
            "round {round}: the priority_list condition"
        );
    }
    // A listed segment cannot be deleted (2BP01 naming the list); the list
    // cannot be dropped while used.
    let e = client
        .execute("DELETE FROM segments.segment WHERE id = $1", &[&young])
        .unwrap_err();
    let (code, message) = sqlstate(&e);
    assert_eq!(code, "2BP01");
    assert!(message.contains("offers"), "{message}");
    let e = client
        .execute("SELECT segments.drop_priority_list('offers')", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&e).0, "2BP01", "{e}");
    let usage: i64 = client
        .query_one(
            "SELECT count(*) FROM segments.usage_registry WHERE kind = 'campaign' AND consumer = 'priority list offers'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(usage, 3);
    // Its usages go only with the list; its export's segments are the list's.
    let e = client
        .execute(
            "SELECT segments.remove_usage($1, 'campaign', 'priority list offers')",
            &[&young],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e).0, "2BP01", "{e}");
    for sql in [
        "SELECT segments.add_to_export('offers_out', ARRAY[1]::bigint[])",
        "SELECT segments.remove_from_export('offers_out', ARRAY[1]::bigint[])",
    ] {
        let e = client.execute(sql, &[]).unwrap_err();
        assert_eq!(sqlstate(&e).0, "22023", "{sql}: {e}");
    }
    for (sql, code) in [
        (
            "SELECT segments.create_priority_list('offers', ARRAY[1]::bigint[])",
            "42710",
        ),
        (
            "SELECT segments.create_priority_list('x', ARRAY[1, 1]::bigint[])",
            "22023",
        ),
        (
            "SELECT segments.create_priority_list('x', ARRAY[]::bigint[])",
            "22023",
        ),
        (
            "SELECT segments.create_priority_list('x', ARRAY[999]::bigint[])",
            "42704",
        ),
    ] {
        let e = client.execute(sql, &[]).unwrap_err();
        assert_eq!(sqlstate(&e).0, code, "{sql}: {e}");
    }
    client
        .batch_execute(&format!(
            "SELECT segments.drop_export('offers_out'); DELETE FROM segments.segment WHERE id = {only_de};
             SELECT segments.drop_priority_list('offers'); DELETE FROM segments.segment WHERE id = {young};"
        ))
        .unwrap();
}

/// Breakdowns against hand-written GROUP BY: values with NULL as a row of
/// its own, ranges of about equal population for numbers, and traits.
#[test]
fn breakdowns_match_group_by() {
    let cluster = Cluster::start("breakdown", &[]);
    let mut client = cluster.sample("20000");
    let de = create(
        &mut client,
        "Buyers",
        r#"{"entity":"customer","rules":[{"where":{"related":"orders","aggregate":"count","op":"gte","value":3}}]}"#,
        "manual",
    );
    client
        .batch_execute(&format!("SELECT * FROM segments.refresh({de})"))
        .unwrap();
    let hand = "WITH m AS (SELECT id FROM segments.customer_members WHERE segment_id = $1)
                SELECT c.loyalty_tier, count(m.id), count(*) FROM customers c LEFT JOIN m ON m.id = c.id
                 GROUP BY 1 ORDER BY 2 DESC, 3 DESC";
    let want: Vec<(Option<String>, i64, i64)> = client
        .query(hand, &[&de])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let got: Vec<BreakdownRow> = client
        .query(
            "SELECT value, members, population, member_share, population_share, lift FROM segments.breakdown($1, 'loyalty_tier')",
            &[&de],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    assert_eq!(
        got.iter()
            .map(|g| (g.0.clone(), g.1, g.2))
            .collect::<Vec<_>>(),
        want
    );
    let (members, population): (i64, i64) =
        (got.iter().map(|g| g.1).sum(), got.iter().map(|g| g.2).sum());
    for (value, m, p, ms, ps, lift) in &got {
        assert!((ms - *m as f64 / members as f64).abs() < 1e-9, "{value:?}");
        assert!(
            (ps - *p as f64 / population as f64).abs() < 1e-9,
            "{value:?}"
        );
        assert!((lift.unwrap() - ms / ps).abs() < 1e-9, "{value:?}");
    }
    assert!(got.iter().any(|g| g.0.is_none()) == want.iter().any(|w| w.0.is_none()));
    // A number: 4 ranges of about equal population, NULL apart; the members
    // of each range by hand from its bounds.
    let ranges: Vec<(Option<String>, i64, i64)> = client
        .query(
            "SELECT value, members, population FROM segments.breakdown($1, 'age', 4)",
            &[&de],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let non_null: Vec<&(Option<String>, i64, i64)> =
        ranges.iter().filter(|r| r.0.is_some()).collect();
    assert_eq!(non_null.len(), 4, "{ranges:?}");
    let ages: i64 = client
        .query_one("SELECT count(age) FROM customers", &[])
        .unwrap()
        .get(0);
    for (value, m, p) in &non_null {
        let value = value.as_ref().unwrap();
        let (lo, hi) = value[1..value.len() - 1].split_once(',').unwrap();
        let upper = if value.ends_with(']') { "<=" } else { "<" };
        let hand: (i64, i64) = client
            .query_one(
                &format!(
                    "WITH m AS (SELECT id FROM segments.customer_members WHERE segment_id = $1)
                     SELECT count(m.id), count(*) FROM customers c LEFT JOIN m ON m.id = c.id
                      WHERE c.age >= {lo} AND c.age {upper} {hi}"
                ),
                &[&de],
            )
            .map(|r| (r.get(0), r.get(1)))
            .unwrap();
        assert_eq!((*m, *p), hand, "range {value}");
        // About equal population: within a half of the ideal quarter (the
        // bounds are values, and a value is never split between ranges).
        assert!(
            (*p as f64 - ages as f64 / 4.0).abs() < ages as f64 / 8.0,
            "range {value}: {p} of {ages}"
        );
    }
    let nulls: (i64, i64) = client
        .query_one(
            "WITH m AS (SELECT id FROM segments.customer_members WHERE segment_id = $1)
             SELECT count(m.id), count(*) FROM customers c LEFT JOIN m ON m.id = c.id WHERE c.age IS NULL",
            &[&de],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(
        ranges.iter().find(|r| r.0.is_none()).map(|r| (r.1, r.2)),
        Some(nulls)
    );
    // A trait, against its values by hand.
    client
        .batch_execute(
            r#"SELECT segments.create_trait('favourite_status', 'customer', '{"related": "orders", "aggregate": "most_frequent", "attribute": "status"}');
               SELECT segments.refresh_traits('customer');"#,
        )
        .unwrap();
    let traits: Vec<(Option<String>, i64, i64)> = client
        .query("SELECT value, members, population FROM segments.breakdown($1, 'favourite_status') ORDER BY value", &[&de])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let hand: Vec<(Option<String>, i64, i64)> = client
        .query(
            "WITH m AS (SELECT id FROM segments.customer_members WHERE segment_id = $1),
                  t AS (SELECT customer_id, status, row_number() OVER (PARTITION BY customer_id ORDER BY count(*) DESC, status) AS r
                          FROM orders GROUP BY customer_id, status)
             SELECT t.status, count(m.id), count(*) FROM customers c LEFT JOIN t ON t.customer_id = c.id AND t.r = 1
               LEFT JOIN m ON m.id = c.id GROUP BY 1 ORDER BY 1",
            &[&de],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(traits, hand);
    let e = client
        .execute("SELECT * FROM segments.breakdown($1, 'nope')", &[&de])
        .unwrap_err();
    assert_eq!(sqlstate(&e).0, "42703");
    // As the caller: a reader without SELECT on customers is refused by
    // PostgreSQL itself.
    client
        .batch_execute("CREATE ROLE plain_reader LOGIN IN ROLE segments_reader")
        .unwrap();
    let mut reader = connect_as(&cluster, "plain_reader");
    let e = reader
        .execute("SELECT * FROM segments.breakdown($1, 'country')", &[&de])
        .unwrap_err();
    assert_eq!(sqlstate(&e).0, "42501", "{e}");
}

/// One feed reader's view: positions applied, members reconstructed, the
/// last position acknowledged.
#[derive(Default)]
struct Reconstruction {
    members: HashMap<i64, HashSet<String>>,
    applied: i64,
    acked: i64,
}

impl Reconstruction {
    /// Applies rows read (position, segment, key, change), refusing an
    /// acknowledged position read again and any gap-free violation of
    /// increasing positions.
    fn apply(&mut self, rows: &[(i64, i64, String, String)]) {
        let mut last = 0;
        for (position, segment, key, change) in rows {
            assert!(
                *position > self.acked,
                "position {position} read again after ack {}",
                self.acked
            );
            assert!(
                *position > last,
                "positions must increase: {position} after {last}"
            );
            last = *position;
            if *position <= self.applied {
                continue; // read again after a crash before its ack: at least once
            }
            let keys = self.members.entry(*segment).or_default();
            match change.as_str() {
                "entered" => assert!(
                    keys.insert(key.clone()),
                    "{key} entered {segment} twice (position {position})"
                ),
                "exited" => assert!(
                    keys.remove(key),
                    "{key} exited {segment} without being in it (position {position})"
                ),
                other => panic!("change {other}"),
            }
            self.applied = *position;
        }
    }
}

fn read(client: &mut postgres::Client, feed: &str, max: i32) -> Vec<(i64, i64, String, String)> {
    client
        .query(
            "SELECT position, segment_id, key, change FROM segments.read_feed($1, $2)",
            &[&feed, &max],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// Feeds under 8 concurrent writers (refreshes and live applies of the
/// feed's segments) and 2 readers that crash between read and ack, for 60
/// seconds: each reader's reconstruction equals the final memberships, and
/// an acknowledged change never comes back.
#[test]
fn feeds_reconstruct_memberships_under_concurrent_writers() {
    let cluster = Cluster::start(
        "feeds",
        &["shared_preload_libraries=segments", "segments.naptime=1"],
    );
    let mut client = cluster.sample_unpinned("20000");
    let ids = [
        create(
            &mut client,
            "Live DE",
            r#"{"entity":"customer","rules":[{"where":{"attribute":"country","op":"eq","value":"DE"}}]}"#,
            "live",
        ),
        create(
            &mut client,
            "Live gold",
            r#"{"entity":"customer","rules":[{"where":{"attribute":"loyalty_tier","op":"eq","value":"gold"}}]}"#,
            "live",
        ),
        create(
            &mut client,
            "Young",
            r#"{"entity":"customer","rules":[{"where":{"attribute":"age","op":"lt","value":30}}]}"#,
            "manual",
        ),
        create(
            &mut client,
            "Subscribed",
            r#"{"entity":"customer","rules":[{"where":{"attribute":"unsubscribed","op":"is_false"}}]}"#,
            "manual",
        ),
    ];
    client
        .batch_execute("SELECT * FROM segments.refresh()")
        .unwrap();
    let list = format!("ARRAY[{}]::bigint[]", ids.map(|i| i.to_string()).join(","));
    client
        .batch_execute(&format!(
            "SELECT segments.create_feed('reader_a', {list}); SELECT segments.create_feed('reader_b', {list});"
        ))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let url = cluster.url("postgres");
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let (stop, writes, url) = (stop.clone(), writes.clone(), url.clone());
        writers.push(std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                i += 8;
                let sql = match w % 4 {
                    // Live: row changes, applied by this session or the worker.
                    0 => format!(
                        "UPDATE customers SET country = CASE WHEN country = 'DE' THEN 'AT' ELSE 'DE' END WHERE id % 97 = {};
                         SELECT count(*) FROM segments.apply_changes();",
                        i % 97
                    ),
                    1 => format!(
                        "UPDATE customers SET loyalty_tier = CASE WHEN loyalty_tier = 'gold' THEN 'silver' ELSE 'gold' END WHERE id % 89 = {};",
                        i % 89
                    ),
                    // Refreshes of the manual segments after changes.
                    2 => format!(
                        "UPDATE customers SET age = 60 - age WHERE id % 83 = {} AND age IS NOT NULL;
                         SELECT * FROM segments.refresh({});",
                        i % 83, ids[2]
                    ),
                    _ => format!(
                        "UPDATE customers SET unsubscribed = NOT unsubscribed WHERE id % 79 = {};
                         SELECT * FROM segments.refresh(ARRAY[{}, {}]::bigint[]);",
                        i % 79, ids[2], ids[3]
                    ),
                };
                match c.batch_execute(&format!("BEGIN; {sql} COMMIT;")) {
                    Ok(()) => {
                        writes.fetch_add(1, Ordering::Relaxed);
                    }
                    // Two writers of one segment: one waits, is told it is
                    // busy, or loses a deadlock; it tries again.
                    Err(e) => {
                        let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
                        assert!(
                            ["55006", "40P01", "40001", "55P03"].contains(&code.as_str()),
                            "writer {w}: {e}"
                        );
                        c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                    }
                }
            }
        }));
    }
    let mut readers = Vec::new();
    for (r, feed) in ["reader_a", "reader_b"].into_iter().enumerate() {
        let (stop, url) = (stop.clone(), url.clone());
        readers.push(std::thread::spawn(move || {
            let mut state = Reconstruction::default();
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let (mut reads, mut crashes) = (0u64, 0u64);
            loop {
                let stopping = stop.load(Ordering::Relaxed);
                let rows = read(&mut c, feed, 500 + 300 * r as i32);
                reads += 1;
                state.apply(&rows);
                if rows.is_empty() {
                    if stopping {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                // Every fourth batch: the client dies before acknowledging.
                if reads % 4 == 0 && !stopping {
                    drop(c);
                    crashes += 1;
                    c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                    continue;
                }
                let last = rows.last().unwrap().0;
                c.execute("SELECT segments.ack_feed($1, $2)", &[&feed, &last])
                    .unwrap();
                state.acked = last;
            }
            (state, reads, crashes)
        }));
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_secs(1));
    }
    // Writers stop; the last captured changes are applied; then the readers
    // drain and stop.
    let stop_writers = stop.clone();
    stop_writers.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    apply(&mut client);
    apply(&mut client);
    let results: Vec<(Reconstruction, u64, u64)> =
        readers.into_iter().map(|r| r.join().unwrap()).collect();
    let writes = writes.load(Ordering::Relaxed);
    assert!(writes > 100, "only {writes} writes in 60 s");
    for (feed, (state, reads, crashes)) in ["reader_a", "reader_b"].iter().zip(results) {
        // Anything committed after the reader's last empty read.
        let mut state = state;
        loop {
            let rows = read(&mut client, feed, 10_000);
            if rows.is_empty() {
                break;
            }
            state.apply(&rows);
            let last = rows.last().unwrap().0;
            client
                .execute("SELECT segments.ack_feed($1, $2)", &[feed, &last])
                .unwrap();
            state.acked = last;
        }
        assert!(crashes > 3, "{feed}: {crashes} crashes in {reads} reads");
        for id in ids {
            let now: HashSet<String> = client
                .query(
                    "SELECT id::text FROM segments.customer_members WHERE segment_id = $1",
                    &[&id],
                )
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            let rebuilt = state.members.get(&id).cloned().unwrap_or_default();
            assert_eq!(
                rebuilt.len(),
                now.len(),
                "{feed}: segment {id} rebuilt from the feed has {} members, the segment {}",
                rebuilt.len(),
                now.len()
            );
            assert_eq!(rebuilt, now, "{feed}: segment {id}");
        }
        eprintln!(
            "{feed}: {reads} reads, {crashes} crashes, last position {}; {writes} writes",
            state.applied
        );
    }
}

/// Retention, reset, ownership and the rules of feeds.
#[test]
fn feeds_retention_reset_and_owners() {
    let cluster = Cluster::start("feedrules", &[]);
    let mut client = cluster.sample("3000");
    let de = create(
        &mut client,
        "DE",
        r#"{"entity":"customer","rules":[{"where":{"attribute":"country","op":"eq","value":"DE"}}]}"#,
        "manual",
    );
    client
        .batch_execute(&format!(
            "SELECT * FROM segments.refresh({de});
             CREATE ROLE alice LOGIN IN ROLE segments_editor; CREATE ROLE bob LOGIN IN ROLE segments_editor;
             GRANT SELECT ON customers TO alice, bob;"
        ))
        .unwrap();
    let members: i64 = client
        .query_one(
            "SELECT member_count FROM segments.segment WHERE id = $1",
            &[&de],
        )
        .unwrap()
        .get(0);
    let mut alice = connect_as(&cluster, "alice");
    alice
        .execute(
            "SELECT segments.create_feed('crm', ARRAY[$1]::bigint[])",
            &[&de],
        )
        .unwrap();
    // The first reads: everyone, entered.
    let rows = read(&mut alice, "crm", 100_000);
    assert_eq!(rows.len() as i64, members);
    assert!(rows.iter().all(|r| r.3 == "entered"));
    // Another editor may not read, acknowledge, reset or drop it.
    let mut bob = connect_as(&cluster, "bob");
    for sql in [
        "SELECT * FROM segments.read_feed('crm')",
        "SELECT segments.ack_feed('crm', 1)",
        "SELECT segments.reset_feed('crm')",
        "SELECT segments.drop_feed('crm')",
    ] {
        let e = bob.execute(sql, &[]).unwrap_err();
        let (code, message) = sqlstate(&e);
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(message.contains("crm"), "{message}");
    }
    let e = bob
        .execute(
            "SELECT segments.create_feed('crm', ARRAY[1]::bigint[])",
            &[],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e).0, "42710");
    // A position never handed out cannot be acknowledged.
    let e = alice
        .execute("SELECT segments.ack_feed('crm', 1000000000)", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&e).0, "22023");
    let last = rows.last().unwrap().0;
    alice
        .execute("SELECT segments.ack_feed('crm', $1)", &[&last])
        .unwrap();
    assert!(read(&mut alice, "crm", 10).is_empty());
    // The feed is a usage of kind export: the segment cannot be deleted.
    let e = client
        .execute("DELETE FROM segments.segment WHERE id = $1", &[&de])
        .unwrap_err();
    let (code, message) = sqlstate(&e);
    assert_eq!(code, "2BP01");
    assert!(message.contains("feed:crm"), "{message}");
    // A change, then retention passes it unacknowledged: the feed fails
    // (55000 naming it) until reset_feed, which starts from a snapshot.
    client
        .batch_execute(&format!(
            "UPDATE customers SET country = 'DE' WHERE id <= 50; SELECT * FROM segments.refresh({de});"
        ))
        .unwrap();
    let changed = read(&mut alice, "crm", 1000);
    assert!(!changed.is_empty());
    assert!(changed.iter().all(|r| r.0 > last));
    // Two hours pass (the superuser moves the batches' time back).
    client
        .batch_execute(
            "UPDATE segments.feed_batch SET at = at - interval '2 hours';
             SET segments.feed_retention = '1 hour'; SELECT count(*) FROM segments.run_due();",
        )
        .unwrap();
    let e = alice
        .query("SELECT * FROM segments.read_feed('crm')", &[])
        .unwrap_err();
    let (code, message) = sqlstate(&e);
    assert_eq!(code, "55000");
    assert!(
        message.contains("\"crm\"") && message.contains("reset_feed"),
        "{message}"
    );
    alice
        .execute("SELECT segments.reset_feed('crm')", &[])
        .unwrap();
    let again = read(&mut alice, "crm", 100_000);
    let now: i64 = client
        .query_one(
            "SELECT member_count FROM segments.segment WHERE id = $1",
            &[&de],
        )
        .unwrap()
        .get(0);
    assert_eq!(again.len() as i64, now);
    // Batches nobody needs are removed by retention.
    client
        .batch_execute(
            "SET segments.feed_retention = '7 days'; SELECT count(*) FROM segments.run_due();",
        )
        .unwrap();
    alice
        .execute(
            "SELECT segments.ack_feed('crm', $1)",
            &[&again.last().unwrap().0],
        )
        .unwrap();
    client
        .batch_execute("SELECT count(*) FROM segments.run_due();")
        .unwrap();
    let kept: i64 = client
        .query_one("SELECT count(*) FROM segments.feed_batch", &[])
        .unwrap()
        .get(0);
    assert_eq!(kept, 0, "acknowledged batches are removed");
    alice
        .execute("SELECT segments.drop_feed('crm')", &[])
        .unwrap();
    client
        .execute("DELETE FROM segments.segment WHERE id = $1", &[&de])
        .unwrap();
}

/// The Python connector under examples/ drains a feed into its
/// destination, which then equals the segment's members.
#[test]
fn the_python_connector_example_works() {
    let python = ["python3", "/usr/bin/python3"].into_iter().find(|p| {
        std::process::Command::new(p)
            .args(["-c", "import psycopg"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(python) = python else {
        println!("SKIPPED the_python_connector_example_works: no python3 with psycopg 3 (Debian: python3-psycopg)");
        return;
    };
    let cluster = Cluster::start("connector", &[]);
    let mut client = cluster.sample("3000");
    let de = create(
        &mut client,
        "DE",
        r#"{"entity":"customer","rules":[{"where":{"attribute":"country","op":"eq","value":"DE"}}]}"#,
        "manual",
    );
    client
        .batch_execute(&format!(
            "SELECT * FROM segments.refresh({de}); SELECT segments.create_feed('crm', ARRAY[{de}]::bigint[]);
             UPDATE customers SET country = CASE WHEN country = 'DE' THEN 'FR' ELSE 'DE' END WHERE id % 10 = 0;
             SELECT * FROM segments.refresh({de});"
        ))
        .unwrap();
    let destination =
        std::env::temp_dir().join(format!("segments-connector-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&destination);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/feed_connector.py");
    for _ in 0..2 {
        let output = std::process::Command::new(python)
            .arg(&script)
            .arg(cluster.url("postgres"))
            .arg("crm")
            .arg(&destination)
            .args(["--once", "--batch", "100"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&destination).unwrap()).unwrap();
    let mut got: Vec<String> = state["members"][de.to_string()]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    got.sort();
    let mut want: Vec<String> = client
        .query(
            "SELECT id::text FROM segments.customer_members WHERE segment_id = $1",
            &[&de],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    want.sort();
    assert_eq!(got, want);
    let _ = std::fs::remove_file(&destination);
}

/// Every SQL block of README's "Activation" section runs, in order, on the
/// demo's data in a fresh database.
#[test]
fn the_readme_examples_run() {
    let blocks = harness::readme_sql_blocks("Activation");
    assert!(blocks.len() >= 5, "{} SQL blocks", blocks.len());
    let cluster = Cluster::start("activation_readme", &[]);
    let mut client = cluster.sample_customers_orders("3000");
    for block in &blocks {
        client
            .batch_execute(block)
            .unwrap_or_else(|e| panic!("README block failed: {e}\n{block}"));
    }
    let exported: i64 = client
        .query_one(
            "SELECT count(DISTINCT id) - count(*) FROM public.spring_offers",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        exported, 0,
        "each record once in the export of a priority list"
    );
}
