//! Case 14: a realistic segment list (segments-core `realistic`), with
//! thresholds drawn from the sample data's distributions, refreshed by one
//! `refresh()` against a hundred of them refreshed one at a time (scaled
//! to the whole list).

use std::time::Instant;

use postgres::Client;
use segments_core::realistic::{segment_list, Profile, RelatedProfile};

use super::{create, exec, measure, one, refresh, Row, Timing};

/// The list's seed: one seed, one list, in every run.
const SEED: u64 = 20261206;

/// How many segments refresh one at a time for the baseline.
const SAMPLE: usize = 100;

/// `n` quantiles of `column` of `table`, as numbers.
fn quantiles(client: &mut Client, table: &str, column: &str) -> Vec<f64> {
    let values: Option<Vec<f64>> = one(
        client,
        &format!(
            "SELECT (percentile_disc(ARRAY(SELECT g / 50.0 FROM generate_series(0, 50) g)) \
               WITHIN GROUP (ORDER BY {column}))::float8[] FROM {table} WHERE {column} IS NOT NULL"
        ),
    );
    let mut values = values.unwrap_or_default();
    values.dedup();
    values
}

/// The values of a text column, most frequent first.
fn values(client: &mut Client, table: &str, column: &str) -> Vec<String> {
    client
        .query(
            &format!(
                "SELECT {column} FROM {table} WHERE {column} IS NOT NULL \
                  GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 60"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// What the generator may use, read from the data.
fn profile(client: &mut Client) -> Profile {
    Profile {
        entity: "customer".into(),
        numbers: vec![
            ("age".into(), true, quantiles(client, "customers", "age")),
            (
                "lifetime_value".into(),
                false,
                quantiles(client, "customers", "lifetime_value"),
            ),
        ],
        categories: ["country", "city", "loyalty_tier", "gender"]
            .iter()
            .map(|c| (c.to_string(), values(client, "customers", c)))
            .collect(),
        times: vec!["signed_up_at".into(), "last_login_at".into()],
        flags: vec!["unsubscribed".into()],
        related: vec![
            RelatedProfile {
                name: "orders".into(),
                amount: Some(("amount".into(), quantiles(client, "orders", "amount"))),
                kind: Some(("channel".into(), values(client, "orders", "channel"))),
            },
            RelatedProfile {
                name: "email_events".into(),
                amount: None,
                kind: Some((
                    "event_type".into(),
                    values(client, "email_events", "event_type"),
                )),
            },
        ],
        traits: ["g_orders_year", "g_spent_year"]
            .iter()
            .map(|t| {
                (
                    t.to_string(),
                    quantiles(client, "segments.customer_traits", t),
                )
            })
            .collect(),
        funnel: Some((
            "product_events".into(),
            "event_type".into(),
            vec!["viewed".into(), "added_to_cart".into(), "purchased".into()],
            Some("product_id".into()),
        )),
    }
}

/// Creates the list (1,000 segments, 10,000 from 10M customers on), the
/// only active segments while it runs, and compares one `refresh()` with
/// `SAMPLE` of them one at a time, scaled to the list.
pub fn case(client: &mut Client, scale: i64, runs: usize, rows: &mut Vec<Row>) {
    // SEGMENTS_BENCH_SEGMENTS sets another length (a multiple of
    // SAMPLE), to see how the cost grows with the list at one scale.
    let count = std::env::var("SEGMENTS_BENCH_SEGMENTS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n >= SAMPLE && n % SAMPLE == 0)
        .unwrap_or(if scale >= 10_000_000 { 10_000 } else { 1_000 });
    exec(
        client,
        "SELECT segments.register_related('customer', 'email_events', 'email_events', 'customer_id', 'occurred_at')
          WHERE NOT EXISTS (SELECT FROM segments.related WHERE name = 'email_events');
         SELECT segments.register_related('customer', 'product_events', 'product_events', 'customer_id', 'occurred_at')
          WHERE NOT EXISTS (SELECT FROM segments.related WHERE name = 'product_events');
         SELECT segments.create_trait('g_orders_year', 'customer', '{\"related\":\"orders\",\"aggregate\":\"count\",\"within\":\"365 days\"}')
          WHERE NOT EXISTS (SELECT FROM segments.trait WHERE name = 'g_orders_year');
         SELECT segments.create_trait('g_spent_year', 'customer', '{\"related\":\"orders\",\"aggregate\":\"sum\",\"attribute\":\"amount\",\"within\":\"365 days\"}')
          WHERE NOT EXISTS (SELECT FROM segments.trait WHERE name = 'g_spent_year');
         SELECT segments.refresh_traits('customer');",
    );
    // The list is measured alone; the segments of the other cases are
    // active again after it (cases 7 and 13 use them).
    let was_active: Vec<i64> = client
        .query(
            "SELECT id FROM segments.segment WHERE state = 'active'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    exec(
        client,
        "SELECT segments.deactivate(array_agg(id)) FROM segments.segment WHERE state = 'active'",
    );
    let profile = profile(client);
    let ids: Vec<i64> = segment_list(&profile, count, SEED)
        .iter()
        .map(|(name, definition)| create(client, name, definition))
        .collect();
    let since: String = one(client, "SELECT clock_timestamp()::text");
    let ours = measure(runs.min(3), || {
        let failed: i64 = one(
            client,
            "SELECT count(*) FROM segments.refresh() WHERE status <> 'succeeded'",
        );
        assert_eq!(failed, 0);
    });
    // The most the refreshes held at once (every run of one refresh
    // records that refresh's peak).
    let peak: i64 = one(
        client,
        &format!(
            "SELECT coalesce(max(peak_memory), 0) FROM segments.refresh_run WHERE started_at >= '{since}'::timestamptz"
        ),
    );
    let started = Instant::now();
    for id in ids.iter().take(SAMPLE) {
        refresh(client, &[*id]);
    }
    let scaled = started.elapsed() * (count / SAMPLE) as u32;
    let base = Timing::of(vec![scaled]);
    let target = if scale >= 10_000_000 { 0.01 } else { 0.02 };
    super::push(
        rows,
        &format!(
            "14. refresh() of {count} generated segments (distinct thresholds, lists, windows, aggregates, references, traits, funnels) vs {SAMPLE} one at a time ×{}",
            count / SAMPLE
        ),
        &ours,
        &base,
        &format!("≤ {target}"),
        Some(target),
    );
    let limit = 4 << 30;
    rows.push(Row {
        case: format!("14b. peak memory of that refresh (`refresh_run.peak_memory`; segments.refresh_work_mem = {})",
            one::<String>(client, "SELECT current_setting('segments.refresh_work_mem')")),
        ours: format!("{} MB", peak >> 20),
        baseline: "-".into(),
        ratio: peak as f64 / limit as f64,
        target: "≤ 4 GB".into(),
        met: Some(peak <= limit),
    });
    exec(
        client,
        "SELECT segments.deactivate(array_agg(id)) FROM segments.segment WHERE name LIKE 'generated %'",
    );
    client
        .execute("SELECT segments.activate($1::bigint[])", &[&was_active])
        .unwrap();
}
