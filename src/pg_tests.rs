//! Tests that run inside a real Postgres (`cargo pgrx test`). Each runs in a
//! transaction that is rolled back.
use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;
    use pgrx::spi::Spi;

    fn count(sql: &str) -> i64 {
        Spi::get_one::<i64>(sql).unwrap().unwrap()
    }

    /// A table with one row per interesting value of every type, and a row
    /// of NULLs, registered as entity `thing`.
    fn truth_table() {
        Spi::run(
            "CREATE TABLE truth (id integer PRIMARY KEY, n integer, x numeric, t text, b boolean,
                                 d date, ts timestamp, tz timestamptz, u uuid);
             INSERT INTO truth VALUES
               (1, 1, 1.5, 'Apple', true, '2026-10-31', '2026-10-31 10:00', '2026-10-31 10:00+00', '00000000-0000-0000-0000-000000000001'),
               (2, 5, 10, 'banana', false, '2026-09-01', '2026-09-01 00:00', '2026-09-01 00:00+00', '00000000-0000-0000-0000-000000000002'),
               (3, 10, -3, 'cherry pie', true, '1990-11-01', '1990-11-01 12:00', '1990-11-01 12:00+00', '00000000-0000-0000-0000-000000000003'),
               (4, 7, 0, 'APPLE', false, '2026-11-20', '2026-11-20 08:00', '2026-11-20 08:00+00', '00000000-0000-0000-0000-000000000004'),
               (5, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
             SET LOCAL TimeZone = 'UTC';
             SET LOCAL segments.reference_time = '2026-11-01 00:00:00+00';
             SELECT segments.register_entity('thing', 'truth', 'id');",
        )
        .unwrap();
    }

    fn estimate_members(condition: &str) -> i64 {
        let definition = format!(r#"{{"entity": "thing", "rules": [{{"where": {condition}}}]}}"#);
        Spi::get_one_with_args::<i64>(
            "SELECT cumulative FROM segments.estimate($1::jsonb)",
            &[definition.into()],
        )
        .unwrap()
        .unwrap()
    }

    /// Every operator on every type it applies to selects exactly the rows
    /// whose hand-written predicate is TRUE (NULL counts as false), and
    /// `not` selects exactly the others, NULLs included.
    #[pg_test]
    fn test_truth_table_of_every_operator() {
        truth_table();
        let ref_ts = "'2026-11-01 00:00:00+00'::timestamptz";
        let cases: Vec<(String, String)> = vec![
            (r#"{"attribute": "n", "op": "eq", "value": 5}"#.into(), "n = 5".into()),
            (r#"{"attribute": "n", "op": "ne", "value": 5}"#.into(), "n <> 5".into()),
            (r#"{"attribute": "n", "op": "lt", "value": 7}"#.into(), "n < 7".into()),
            (r#"{"attribute": "n", "op": "lte", "value": 7}"#.into(), "n <= 7".into()),
            (r#"{"attribute": "n", "op": "gt", "value": 4.5}"#.into(), "n > 4.5".into()),
            (r#"{"attribute": "n", "op": "gte", "value": "7"}"#.into(), "n >= 7".into()),
            (r#"{"attribute": "x", "op": "between", "value": [0, 1.5]}"#.into(), "x BETWEEN 0 AND 1.5".into()),
            (r#"{"attribute": "n", "op": "in", "value": [1, 10]}"#.into(), "n IN (1, 10)".into()),
            (r#"{"attribute": "n", "op": "not_in", "value": [1, 10]}"#.into(), "n NOT IN (1, 10)".into()),
            (r#"{"attribute": "t", "op": "eq", "value": "Apple"}"#.into(), "t = 'Apple'".into()),
            (r#"{"attribute": "t", "op": "eq", "value": "apple", "ignore_case": true}"#.into(), "lower(t) = 'apple'".into()),
            (r#"{"attribute": "t", "op": "ne", "value": "apple", "ignore_case": true}"#.into(), "lower(t) <> 'apple'".into()),
            (r#"{"attribute": "t", "op": "lt", "value": "b"}"#.into(), "t < 'b'".into()),
            (r#"{"attribute": "t", "op": "in", "value": ["banana", "APPLE"]}"#.into(), "t IN ('banana', 'APPLE')".into()),
            (r#"{"attribute": "t", "op": "in", "value": ["BANANA"], "ignore_case": true}"#.into(), "lower(t) IN ('banana')".into()),
            (r#"{"attribute": "t", "op": "contains", "value": "an"}"#.into(), "t LIKE '%an%'".into()),
            (r#"{"attribute": "t", "op": "contains", "value": "PP", "ignore_case": true}"#.into(), "t ILIKE '%pp%'".into()),
            (r#"{"attribute": "t", "op": "not_contains", "value": "an"}"#.into(), "t NOT LIKE '%an%'".into()),
            (r#"{"attribute": "t", "op": "starts_with", "value": "ch"}"#.into(), "t LIKE 'ch%'".into()),
            (r#"{"attribute": "t", "op": "ends_with", "value": "LE"}"#.into(), "t LIKE '%LE'".into()),
            (r#"{"attribute": "t", "op": "ends_with", "value": "le", "ignore_case": true}"#.into(), "t ILIKE '%le'".into()),
            (r#"{"attribute": "t", "op": "is_null"}"#.into(), "t IS NULL".into()),
            (r#"{"attribute": "t", "op": "is_not_null"}"#.into(), "t IS NOT NULL".into()),
            (r#"{"attribute": "b", "op": "is_true"}"#.into(), "b".into()),
            (r#"{"attribute": "b", "op": "is_false"}"#.into(), "NOT b".into()),
            (r#"{"attribute": "b", "op": "eq", "value": false}"#.into(), "b = false".into()),
            (r#"{"attribute": "u", "op": "eq", "value": "00000000-0000-0000-0000-000000000002"}"#.into(), "u = '00000000-0000-0000-0000-000000000002'".into()),
            (r#"{"attribute": "u", "op": "is_not_null"}"#.into(), "u IS NOT NULL".into()),
            // Dates: relative to the reference time 2026-11-01.
            (r#"{"attribute": "d", "op": "in_last", "value": "30 days"}"#.into(), "d BETWEEN '2026-10-02' AND '2026-11-01'".into()),
            (r#"{"attribute": "d", "op": "not_in_last", "value": "30 days"}"#.into(), "d NOT BETWEEN '2026-10-02' AND '2026-11-01'".into()),
            (r#"{"attribute": "d", "op": "in_next", "value": "3 weeks"}"#.into(), "d BETWEEN '2026-11-01' AND '2026-11-22'".into()),
            (r#"{"attribute": "d", "op": "before", "value": "2026-09-01"}"#.into(), "d < '2026-09-01'".into()),
            (r#"{"attribute": "d", "op": "after", "value": "2026-09-01"}"#.into(), "d > '2026-09-01'".into()),
            (r#"{"attribute": "d", "op": "on", "value": "2026-09-01"}"#.into(), "d = '2026-09-01'".into()),
            (r#"{"attribute": "d", "op": "is_anniversary"}"#.into(), "to_char(d, 'MM-DD') = '11-01'".into()),
            (r#"{"attribute": "d", "op": "between", "value": ["2026-01-01", "2026-10-31"]}"#.into(), "d BETWEEN '2026-01-01' AND '2026-10-31'".into()),
            // Timestamps without and with time zone.
            (r#"{"attribute": "ts", "op": "in_last", "value": "2 months"}"#.into(), "ts BETWEEN '2026-09-01' AND '2026-11-01'".into()),
            (r#"{"attribute": "ts", "op": "on", "value": "2026-10-31"}"#.into(), "ts::date = '2026-10-31'".into()),
            (r#"{"attribute": "ts", "op": "is_anniversary"}"#.into(), "to_char(ts, 'MM-DD') = '11-01'".into()),
            (r#"{"attribute": "tz", "op": "in_last", "value": "24 hours"}"#.into(),
                format!("tz BETWEEN {ref_ts} - interval '24 hours' AND {ref_ts}")),
            (r#"{"attribute": "tz", "op": "in_next", "value": "1 month"}"#.into(),
                format!("tz BETWEEN {ref_ts} AND {ref_ts} + interval '1 month'")),
            (r#"{"attribute": "tz", "op": "after", "value": "2026-10-31 09:00:00+00"}"#.into(), "tz > '2026-10-31 09:00+00'".into()),
            (r#"{"attribute": "tz", "op": "is_today"}"#.into(), "tz::date = '2026-11-01'".into()),
            (r#"{"attribute": "tz", "op": "lte", "value": "2026-09-01T00:00:00Z"}"#.into(), "tz <= '2026-09-01 00:00+00'".into()),
            // Windows in the past.
            (r#"{"attribute": "d", "op": "in_last", "value": {"from": "90 days", "to": "1 day"}}"#.into(),
                "d BETWEEN '2026-08-03' AND '2026-10-31'".into()),
            (r#"{"attribute": "d", "op": "not_in_last", "value": {"from": "90 days", "to": "1 day"}}"#.into(),
                "d NOT BETWEEN '2026-08-03' AND '2026-10-31'".into()),
            // Ranks among the non-NULL values, ties included.
            (r#"{"attribute": "n", "op": "top", "value": 2}"#.into(),
                "id IN (SELECT id FROM (SELECT id, rank() OVER (ORDER BY n DESC) AS r FROM truth WHERE n IS NOT NULL) x WHERE r <= 2)".into()),
            (r#"{"attribute": "n", "op": "top_percent", "value": 50}"#.into(),
                "id IN (SELECT id FROM (SELECT id, rank() OVER (ORDER BY n DESC) AS r FROM truth WHERE n IS NOT NULL) x WHERE r <= 2)".into()),
            (r#"{"attribute": "x", "op": "bottom", "value": 1}"#.into(),
                "id IN (SELECT id FROM (SELECT id, rank() OVER (ORDER BY x) AS r FROM truth WHERE x IS NOT NULL) x WHERE r <= 1)".into()),
            (r#"{"attribute": "d", "op": "bottom_percent", "value": 25}"#.into(),
                "id IN (SELECT id FROM (SELECT id, rank() OVER (ORDER BY d) AS r FROM truth WHERE d IS NOT NULL) x WHERE r <= 1)".into()),
        ];
        for (condition, predicate) in &cases {
            let expected = count(&format!(
                "SELECT count(*) FROM truth WHERE ({predicate}) IS TRUE"
            ));
            assert_eq!(
                estimate_members(condition),
                expected,
                "{condition} vs {predicate}"
            );
            let complement = count(&format!(
                "SELECT count(*) FROM truth WHERE ({predicate}) IS NOT TRUE"
            ));
            assert_eq!(
                estimate_members(&format!(r#"{{"not": {condition}}}"#)),
                complement,
                "not {condition}"
            );
        }
        // Every operator of a definition is exercised above.
        for op in segments_core::definition::ALL_OPS {
            let name = format!("\"op\": \"{}\"", op.name());
            assert!(
                cases.iter().any(|(c, _)| c.contains(&name)),
                "no truth-table case for {}",
                op.name()
            );
        }
    }

    /// The `eligible` condition limits every rule, `not` included.
    #[pg_test]
    fn test_eligible_limits_every_rule() {
        truth_table();
        Spi::run(
            "SELECT segments.register_entity('open_thing', 'truth', 'n', '{\"attribute\": \"b\", \"op\": \"is_true\"}')",
        )
        .unwrap();
        let definition = r#"{"entity": "open_thing", "rules": [{"where": {"not": {"attribute": "t", "op": "eq", "value": "Apple"}}}]}"#;
        let members = Spi::get_one_with_args::<i64>(
            "SELECT cumulative FROM segments.estimate($1::jsonb)",
            &[definition.into()],
        )
        .unwrap()
        .unwrap();
        assert_eq!(members, count("SELECT count(*) FROM truth WHERE b AND t IS DISTINCT FROM 'Apple' AND n IS NOT NULL"));
    }

    /// A refreshed segment and a segment of segments, rule counts cleared by
    /// a definition change.
    #[pg_test]
    fn test_refresh_stores_members_and_counts() {
        truth_table();
        Spi::run(
            r#"SELECT segments.create_segment('Fruit', '{"entity": "thing", "rules": [
                 {"where": {"attribute": "t", "op": "in", "value": ["Apple", "banana", "APPLE"]}}]}');
               SELECT segments.create_segment('Sweet fruit', '{"entity": "thing", "rules": [
                 {"where": {"segment": "Fruit"}},
                 {"combine": "except", "where": {"attribute": "b", "op": "is_false"}}]}');"#,
        )
        .unwrap();
        // Refreshing only the dependent first still computes Fruit first when both are asked.
        let statuses = count("SELECT count(*) FROM segments.refresh() WHERE status = 'succeeded'");
        assert_eq!(statuses, 2);
        assert_eq!(
            count("SELECT member_count FROM segments.segment WHERE name = 'Fruit'"),
            3
        );
        assert_eq!(
            count("SELECT member_count FROM segments.segment WHERE name = 'Sweet fruit'"),
            1
        );
        assert_eq!(count("SELECT count(*) FROM segments.rule_counts((SELECT id FROM segments.segment WHERE name = 'Sweet fruit')) WHERE members IS NOT NULL"), 2);
        assert_eq!(count("SELECT count(*) FROM segments.thing_members WHERE segment_name = 'Sweet fruit' AND id = 1"), 1);
        Spi::run(r#"UPDATE segments.segment SET definition = jsonb_set(definition, '{rules,0,where,value}', '["Apple"]') WHERE name = 'Fruit'"#)
            .unwrap();
        assert_eq!(count("SELECT count(*) FROM segments.rule_counts((SELECT id FROM segments.segment WHERE name = 'Fruit')) WHERE members IS NULL"), 1);
    }

    /// `rb_agg` builds the same bitmap whatever the row order, duplicates and
    /// NULLs, per group too, and `bitmap_positions` gives back exactly the
    /// distinct positions; a malformed bitmap is 22P03, not a crash.
    #[pg_test]
    fn test_rb_agg_and_bitmap_positions_round_trip() {
        let keys =
            "SELECT ((i * 7919) % 50000 - 1000)::bigint AS k FROM generate_series(1, 60000) i \
                    UNION ALL SELECT NULL UNION ALL SELECT 42";
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM segments.bitmap_positions((SELECT segments.rb_agg(k) FROM ({keys}) s)) p"
            )),
            count(&format!("SELECT count(DISTINCT k) FROM ({keys}) s"))
        );
        let same = Spi::get_one::<bool>(&format!(
            "SELECT (SELECT array_agg(p ORDER BY p) FROM segments.bitmap_positions(
                        (SELECT segments.rb_agg(k ORDER BY random()) FROM ({keys}) s)) p)
                  = (SELECT array_agg(DISTINCT k ORDER BY k) FROM ({keys}) s WHERE k IS NOT NULL)"
        ))
        .unwrap()
        .unwrap();
        assert!(same, "positions equal the distinct keys");
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM (SELECT k % 7 AS g, segments.rb_agg(k) AS b FROM ({keys}) s GROUP BY 1) x \
                  WHERE (SELECT count(*) FROM segments.bitmap_positions(x.b)) \
                      = (SELECT count(DISTINCT k) FROM ({keys}) s WHERE k % 7 IS NOT DISTINCT FROM x.g)"
            )),
            count(&format!("SELECT count(DISTINCT k % 7) + 1 FROM ({keys}) s"))
        );
        Spi::run(
            "DO $$ BEGIN
               PERFORM segments.bitmap_positions('\\x0102030405'::bytea);
               RAISE EXCEPTION 'a malformed bitmap was accepted';
             EXCEPTION WHEN invalid_binary_representation THEN NULL;
             END $$",
        )
        .unwrap();
    }

    /// SQL reads setting defaults from the library (`_setting`), which
    /// follows SET, and refuses any other name with 22023.
    #[pg_test]
    fn test_settings_read_by_sql_come_from_the_library() {
        let setting = |name: &str| {
            Spi::get_one_with_args::<String>("SELECT segments._setting($1)", &[name.into()])
                .unwrap()
                .unwrap()
        };
        assert_eq!(setting("segments.max_active_segments"), "10000");
        assert_eq!(setting("segments.unused_after"), "45 days");
        Spi::run("SET LOCAL segments.unused_after = '3 weeks'").unwrap();
        assert_eq!(setting("segments.unused_after"), "3 weeks");
        Spi::run(
            "DO $$ BEGIN
               PERFORM segments._setting('segments.naptime');
               RAISE EXCEPTION 'an unlisted setting was read';
             EXCEPTION WHEN invalid_parameter_value THEN NULL;
             END $$",
        )
        .unwrap();
    }
}
