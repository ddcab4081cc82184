//! Layer 3: a property-based differential test. Random definitions (every
//! operator, null-heavy columns, related aggregates with windows, a path
//! of two hops (devices, then their pings), nested
//! any/all/not, subrules with all three combines, varchar/char/numeric
//! typmods, integer bounds) over generated tables; each segment's
//! membership must equal an independent SQL oracle written here. Batches
//! of definitions alternate between computing comparisons of a column in
//! column groups and as one `FILTER` clause each.
//!
//!   SEGMENTS_DIFFERENTIAL_CASES=100000 cargo test --features integration --test differential
//!
//! (SEGMENTS_DIFFERENTIAL_FROM=N starts at definition N of the same run.)
//!
//! (`bash scripts/differential.sh --cases N`). A failure prints the seed
//! and the definition.

mod harness;

use harness::Cluster;
use segments_core::generate::{rules, Rng, TABLES_SQL, TRAITS};

#[test]
fn random_definitions_equal_an_independent_oracle() {
    let cases: usize = std::env::var("SEGMENTS_DIFFERENTIAL_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let seed: u64 = std::env::var("SEGMENTS_DIFFERENTIAL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_2026);
    let cluster = Cluster::start("differential", &["timezone=UTC"]);
    let mut client = cluster.connect("postgres");
    client
        .batch_execute(&format!(
            "CREATE EXTENSION segments;
             {TABLES_SQL}
             SELECT segments.register_entity('person', 'people', 'id');
             SELECT segments.register_related('person', 'events', 'events', 'person_id', 'at');
             SELECT segments.register_related('person', 'devices', 'devices', 'person_id');
             SELECT segments.register_related('person', 'pings', 'pings', 'device_id', 'at', via => 'devices');
             {}
             SET segments.reference_time = '2026-11-01 12:00:00+00';",
            TRAITS
                .iter()
                .map(|(name, definition, _)| format!(
                    "SELECT segments.create_trait('{name}', 'person', '{definition}');"
                ))
                .collect::<String>()
        ))
        .unwrap();
    let mut rng = Rng(seed);
    let (mut compared, mut mismatches) = (0usize, Vec::new());
    let batch = 500;
    let mut done = 0;
    // Where a long run spends its time: creating, refreshing, comparing.
    let (mut creating, mut refreshing, mut comparing) = (
        std::time::Duration::ZERO,
        std::time::Duration::ZERO,
        std::time::Duration::ZERO,
    );
    // SEGMENTS_DIFFERENTIAL_FROM=N skips the batches before definition N
    // (generated, so the same seed gives the same definitions after them,
    // but not created): a failure late in a long run is reproduced fast.
    let from: usize = std::env::var("SEGMENTS_DIFFERENTIAL_FROM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    while done < cases {
        let n = batch.min(cases - done);
        if done + n <= from {
            for _ in 0..n {
                rules(&mut rng, 0);
            }
            done += n;
            continue;
        }
        let mut oracles = Vec::with_capacity(n);
        let started = std::time::Instant::now();
        for k in 0..n {
            let generated = rules(&mut rng, 0);
            let definition = format!(r#"{{"entity":"person","rules":{}}}"#, generated.json);
            let id: i64 = match client.query_one(
                "SELECT segments.create_segment($1, $2::text::jsonb)",
                &[&format!("d{}", done + k), &definition],
            ) {
                Ok(row) => row.get(0),
                Err(e) => panic!("seed {seed}: a valid definition was refused: {e}\n{definition}"),
            };
            oracles.push((id, definition, generated.sql));
        }
        creating += started.elapsed();
        let started = std::time::Instant::now();
        // Batches alternate between the two ways of computing comparisons
        // of a column: column groups (from 2 comparisons on) and one FILTER
        // clause each; and, independently, between the two ways of
        // computing related conditions with windows: window scans (from 2
        // conditions of a table on) and one query or FILTER clause each.
        let groups = if (done / batch) % 2 == 0 { 2 } else { 0 };
        // (Batches 0-3 take both on, both off, groups only, windows only.)
        let windows = if (done / batch).div_ceil(2) % 2 == 0 {
            2
        } else {
            0
        };
        // Every third batch refreshes in memory batches (the smallest
        // `segments.refresh_work_mem` holds about 120 conditions here).
        let memory = if (done / batch) % 3 == 2 {
            "1MB"
        } else {
            "2GB"
        };
        client
            .batch_execute(&format!(
                "SET segments.column_group_min_tests = {groups}; \
                 SET segments.window_scan_min_conditions = {windows}; \
                 SET segments.refresh_work_mem = '{memory}'"
            ))
            .unwrap();
        let failed: Vec<(i64, String)> = client
            .query(
                "SELECT segment_id, error FROM segments.refresh() WHERE status <> 'succeeded'",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get::<_, Option<String>>(1).unwrap_or_default()))
            .collect();
        assert!(
            failed.is_empty(),
            "seed {seed}: refreshes failed: {failed:?}"
        );
        refreshing += started.elapsed();
        let started = std::time::Instant::now();
        for (id, definition, sql) in &oracles {
            let differ: i64 = client
                .query_one(
                    &format!(
                        "WITH want AS (SELECT p.id FROM people p WHERE {sql}),
                              got AS (SELECT id FROM segments.person_members WHERE segment_id = $1)
                         SELECT (SELECT count(*) FROM (SELECT * FROM want EXCEPT SELECT * FROM got) a)
                              + (SELECT count(*) FROM (SELECT * FROM got EXCEPT SELECT * FROM want) b)"
                    ),
                    &[id],
                )
                .unwrap_or_else(|e| panic!("seed {seed}: oracle failed: {e}\n{sql}"))
                .get(0);
            compared += 1;
            if differ != 0 {
                mismatches.push(format!(
                    "{differ} rows differ for {definition}\n  oracle: {sql}"
                ));
            }
        }
        comparing += started.elapsed();
        client
            .batch_execute("DELETE FROM segments.segment")
            .unwrap();
        done += n;
        // A long run says how far it got, so that a run stopped early is
        // still evidence.
        if cases > 1000 {
            eprintln!(
                "differential: {done} of {cases} definitions, {} mismatches so far (seed {seed}; \
                 {:.0} s creating, {:.0} s refreshing, {:.0} s comparing)",
                mismatches.len(),
                creating.as_secs_f64(),
                refreshing.as_secs_f64(),
                comparing.as_secs_f64()
            );
        }
    }
    assert!(
        mismatches.is_empty(),
        "seed {seed}: {} of {compared} definitions differ, e.g.\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(3)].join("\n")
    );
    println!("differential: {compared} random definitions, 0 mismatches, 0 crashes (seed {seed})");
}
