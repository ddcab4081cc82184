//! Living with Citus: what this node is, how a table is distributed, and
//! the checks that keep segments exact on distributed tables.
//!
//! Segment state (catalog, memberships, dictionary) lives on the
//! coordinator only. Refreshes run there and send per-shard aggregation to
//! the workers (`rb_agg` is split by Citus); the members views ship the
//! bitmap to the shards, not the other way round. A function that reads
//! segment state must never run on a worker, where those tables are empty:
//! when it finds nothing there, it says so instead of answering wrongly.

use pgrx::pg_sys;
use pgrx::spi::Spi;

use segments_core::catalog::Entity;
use segments_core::sql::{ident, literal};

use crate::pg::citus::{citus_installed, key_replica_name, on_worker, placement, Placement};
use crate::pg::error::{Raise, Reported, SegmentsError};
use crate::pg::spi::{optional_value, spi};

/// Makes Citus use one connection per node for the rest of the
/// transaction, where a command reads distributed tables and then changes
/// an object Citus propagates (the traits view): Citus refuses DDL after
/// a parallel multi-shard read in the same transaction, so two
/// `create_trait` calls in one transaction would otherwise fail.
pub fn sequential_transaction() {
    if citus_installed() {
        spi(Spi::run(
            "SELECT pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true)",
        ));
    }
}

/// Raised where a function reading segment state found nothing: on a
/// Citus worker that is because the state lives on the coordinator (Citus
/// sent the call to the shards), so the caller gets an error, not a wrong
/// empty answer.
pub fn refuse_on_worker(function: &str) {
    if on_worker() {
        SegmentsError::FeatureNotSupported(format!(
            "segments.{function} reads segment state, which lives on the Citus coordinator; it cannot run on a worker"
        ))
        .with_hint(Some(
            "Citus sends per-row calls in a query over a distributed table to the shards. \
             Join segments.<entity>_members (or select its keys in a subquery) instead."
                .into(),
        ))
        .raise();
    }
}

/// What is wrong with how an entity's table is distributed, if anything.
pub fn entity_warning(
    relation_sql: &str,
    key_column: &str,
    placement: Option<&Placement>,
) -> Option<String> {
    let placement = placement.filter(|p| p.is_distributed())?;
    match placement.column.as_deref() {
        Some(column) if column == key_column => None,
        column => Some(format!(
            "entity table {relation_sql} is distributed by column \"{}\", not by its key \"{key_column}\": \
             related tables cannot be colocated with it, and every lookup of a record by key goes to all shards",
            column.unwrap_or("?")
        )),
    }
}

/// What is wrong with how a related table sits next to its entity's, if
/// anything: it must be distributed by its foreign key and colocated with
/// the entity table, or each related condition ships rows.
pub fn related_warning(
    related_sql: &str,
    foreign_key: &str,
    related: Option<&Placement>,
    entity_sql: &str,
    entity: Option<&Placement>,
) -> Option<String> {
    let entity_distributed = entity.is_some_and(Placement::is_distributed);
    let related_distributed = related.is_some_and(Placement::is_distributed);
    if !entity_distributed && !related_distributed {
        return None;
    }
    let (Some(entity), Some(related)) = (
        entity.filter(|p| p.is_distributed()),
        related.filter(|p| p.is_distributed()),
    ) else {
        return Some(format!(
            "related table {related_sql} and entity table {entity_sql} are not both distributed: \
             related conditions join them on the coordinator"
        ));
    };
    if related.column.as_deref() != Some(foreign_key) {
        return Some(format!(
            "related table {related_sql} is distributed by column \"{}\", not by its foreign key \"{foreign_key}\": \
             its conditions ship rows to the coordinator",
            related.column.as_deref().unwrap_or("?")
        ));
    }
    if related.colocation != entity.colocation {
        return Some(format!(
            "related table {related_sql} is not colocated with entity table {entity_sql}: \
             its conditions ship rows to the coordinator (create_distributed_table(..., colocate_with => '{entity_sql}'))"
        ));
    }
    None
}

/// Live capture needs triggers on the table, which Citus runs on the
/// shards, far from the coordinator's change queue.
pub fn refuse_capture(relation: pg_sys::Oid, relation_sql: &str) -> Result<(), Reported> {
    match placement(relation) {
        Some(p) if p.is_distributed() || p.method == "n" => Err(SegmentsError::FeatureNotSupported(format!(
            "live segments cannot capture changes of {relation_sql}: it is a Citus distributed or reference table, \
             whose triggers would run on the workers"
        ))
        .with_hint(Some("Give the segment a schedule (e.g. '*/5 * * * *') instead of 'live'.".into()))),
        _ => Ok(()),
    }
}

/// The row-level policy of a key replica: its keys are readable by roles
/// that may read the entity table, as for `segments.entity_key`. The table
/// is named as text (a regclass constant would make the entity table
/// undroppable); the policy is remade when the table is renamed. With no
/// column reference, PostgreSQL checks it once per scan, not per row.
fn replica_policy_sql(relation_sql: &str) -> String {
    format!(
        "pg_catalog.has_table_privilege({}, 'SELECT')",
        literal(relation_sql)
    )
}

/// Gives every key of a dictionary-keyed entity whose table Citus
/// distributes by its key a bitmap position, in `segments.entity_key` (the
/// coordinator's dictionary, which coordinator reads use) and in the
/// entity's key replica, a copy distributed and colocated with the entity
/// table that leaf queries join on the shards. Without the replica, Citus
/// would send the whole dictionary to every shard on every refresh.
///
/// Only keys missing from the replica travel: the anti-join runs on the
/// shards. Runs as the extension's owner, serialized per entity.
pub fn sync_key_replica(entity: &Entity) {
    let Some(replica) = entity.key_replica.as_deref() else {
        return;
    };
    crate::pg::sandbox::privileged(std::panic::AssertUnwindSafe(|| {
        crate::pg::catalog::lock_verified(entity);
        lock_and_ensure(entity, replica);
        let key = ident(&entity.key_column);
        let fresh_sql = format!(
            "INSERT INTO segments.entity_key (entity, key) \
             SELECT {name}, e.{key}::pg_catalog.text FROM {table} e LEFT JOIN {replica} r ON r.key OPERATOR(pg_catalog.=) e.{key} \
              WHERE r.key IS NULL AND e.{key} IS NOT NULL \
             ON CONFLICT (entity, key) DO UPDATE SET key = EXCLUDED.key RETURNING key, position",
            name = literal(&entity.name),
            table = entity.table.relation_sql,
        );
        // DO UPDATE returns keys the coordinator knew but the replica
        // missed (it was remade), so that they reach it too.
        let (keys, positions): (Vec<String>, Vec<i64>) = Spi::connect_mut(|client| {
            spi(client.update(&fresh_sql, None, &[]))
                .map(|row| {
                    (
                        spi(row.get::<String>(1)).unwrap_or_default(),
                        spi(row.get::<i64>(2)).unwrap_or_default(),
                    )
                })
                .unzip()
        });
        if !keys.is_empty() {
            spi(Spi::run_with_args(
                &format!(
                    "INSERT INTO {replica} (key, position) SELECT u.k::{}, u.p \
                       FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.int8[])) u (k, p) \
                     ON CONFLICT (key) DO NOTHING",
                    entity.key_type_sql()
                ),
                &[keys.into(), positions.into()],
            ));
        }
    }))
}

/// Makes an entity's key replica (empty) at registration, in the
/// registering session: the first refresh may run in the background
/// worker, and DDL on distributed tables is best done by a user's session.
pub fn prepare_key_replica(entity: &Entity) {
    if let Some(replica) = entity.key_replica.as_deref() {
        crate::pg::sandbox::privileged(std::panic::AssertUnwindSafe(|| {
            lock_and_ensure(entity, replica)
        }));
    }
}

/// Serializes the replica's upkeep per entity, then makes it right.
fn lock_and_ensure(entity: &Entity, replica: &str) {
    spi(Spi::run_with_args(
        "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('segments.key_replica'), pg_catalog.hashtext($1))",
        &[entity.name.as_str().into()],
    ));
    ensure_key_replica(entity, replica);
}

/// Makes the key replica exist, colocated with the entity table, of the
/// key's type, with a policy naming the table's current name; a replica
/// that is none of these is remade from `segments.entity_key`.
fn ensure_key_replica(entity: &Entity, replica: &str) {
    let policy = replica_policy_sql(&entity.table.relation_sql);
    let state = Spi::connect(|client| {
        let rows = spi(client.select(
            "SELECT (SELECT p.colocationid FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid OPERATOR(pg_catalog.=) r.oid) \
                    IS NOT DISTINCT FROM \
                    (SELECT p.colocationid FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid OPERATOR(pg_catalog.=) $2::pg_catalog.regclass), \
                    (SELECT a.atttypid FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) r.oid AND a.attname OPERATOR(pg_catalog.=) 'key') \
                    IS NOT DISTINCT FROM \
                    (SELECT a.atttypid FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) $2::pg_catalog.regclass AND a.attname OPERATOR(pg_catalog.=) $3), \
                    coalesce((SELECT pg_catalog.strpos(pg_catalog.pg_get_expr(y.polqual, y.polrelid), $4) OPERATOR(pg_catalog.>) 0 \
                                FROM pg_catalog.pg_policy y WHERE y.polrelid OPERATOR(pg_catalog.=) r.oid), false) \
               FROM (SELECT pg_catalog.to_regclass($1)::pg_catalog.oid AS oid) r WHERE r.oid IS NOT NULL",
            Some(1),
            &[
                replica.into(),
                entity.table.relation_sql.as_str().into(),
                entity.key_column.as_str().into(),
                literal(&entity.table.relation_sql).into(),
            ],
        ));
        if rows.is_empty() {
            return None;
        }
        let row = rows.first();
        Some((
            spi(row.get::<bool>(1)).unwrap_or(false),
            spi(row.get::<bool>(2)).unwrap_or(false),
            spi(row.get::<bool>(3)).unwrap_or(false),
        ))
    });
    quietly(|| match state {
        Some((true, true, true)) => {}
        Some((true, true, false)) => {
            run_each(&[
                format!("DROP POLICY IF EXISTS readable ON {replica}"),
                format!("CREATE POLICY readable ON {replica} FOR SELECT USING ({policy})"),
            ]);
        }
        Some(_) => {
            drop_key_replica_table(replica);
            create_key_replica(entity, replica, &policy);
        }
        None => create_key_replica(entity, replica, &policy),
    });
}

fn create_key_replica(entity: &Entity, replica: &str, policy: &str) {
    spi(Spi::run(&format!(
        "CREATE TABLE {replica} (key {} PRIMARY KEY, position pg_catalog.int8 NOT NULL)",
        entity.key_type_sql()
    )));
    spi(Spi::run_with_args(
        "SELECT pg_catalog.create_distributed_table($1, 'key', colocate_with => $2)",
        &[replica.into(), entity.table.relation_sql.as_str().into()],
    ));
    let comment = format!(
        "Bitmap positions of the keys of entity \"{}\", distributed with its table for Citus (internal; rebuilt from segments.entity_key).",
        entity.name
    );
    run_each(&[
        format!("ALTER TABLE {replica} ENABLE ROW LEVEL SECURITY"),
        format!("CREATE POLICY readable ON {replica} FOR SELECT USING ({policy})"),
        format!("GRANT SELECT ON {replica} TO segments_reader"),
        format!("COMMENT ON TABLE {replica} IS {}", literal(&comment)),
        format!("ALTER EXTENSION segments ADD TABLE {replica}"),
    ]);
    spi(Spi::run_with_args(
        &format!(
            "INSERT INTO {replica} (key, position) SELECT k.key::{}, k.position FROM segments.entity_key k \
              WHERE k.entity OPERATOR(pg_catalog.=) $1",
            entity.key_type_sql()
        ),
        &[entity.name.as_str().into()],
    ));
}

fn drop_key_replica_table(replica: &str) {
    run_each(&[
        format!("ALTER EXTENSION segments DROP TABLE {replica}"),
        format!("DROP TABLE {replica}"),
    ]);
}

fn run_each(statements: &[String]) {
    for statement in statements {
        spi(Spi::run(statement));
    }
}

/// Whether a relation of this (quoted) name exists.
pub fn relation_exists(name: &str) -> bool {
    optional_value::<bool>(
        "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
        &[name.into()],
    )
    .unwrap_or(false)
}

/// Drops an entity's key replica, if it has one (unregister_entity).
pub fn drop_key_replica(entity: &str) {
    let replica = key_replica_name(entity);
    if relation_exists(&replica) {
        quietly(|| drop_key_replica_table(&replica));
    }
}

/// Runs `f` with NOTICEs off: Citus tells every DDL's caller what it
/// propagates and what not ("does not propagate adding/dropping member
/// objects"), which is noise to a refresh.
fn quietly(f: impl FnOnce()) {
    let previous = optional_value::<String>(
        "SELECT pg_catalog.current_setting('client_min_messages')",
        &[],
    )
    .unwrap_or_else(|| "notice".into());
    spi(Spi::run(
        "SELECT pg_catalog.set_config('client_min_messages', 'warning', true)",
    ));
    f();
    spi(Spi::run_with_args(
        "SELECT pg_catalog.set_config('client_min_messages', $1, true)",
        &[previous.into()],
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(column: &str, colocation: i32) -> Placement {
        Placement {
            method: "h".into(),
            column: Some(column.into()),
            colocation,
        }
    }

    #[test]
    fn an_entity_distributed_by_its_key_is_fine() {
        assert_eq!(
            entity_warning("public.customers", "id", Some(&hash("id", 1))),
            None
        );
        assert_eq!(entity_warning("public.customers", "id", None), None);
        let warning = entity_warning("public.customers", "id", Some(&hash("country", 1))).unwrap();
        assert!(
            warning.contains("\"country\"") && warning.contains("\"id\""),
            "{warning}"
        );
    }

    #[test]
    fn related_tables_must_be_colocated_by_their_foreign_key() {
        let entity = hash("id", 1);
        assert_eq!(
            related_warning(
                "public.orders",
                "customer_id",
                Some(&hash("customer_id", 1)),
                "public.customers",
                Some(&entity)
            ),
            None
        );
        assert!(related_warning(
            "public.orders",
            "customer_id",
            Some(&hash("customer_id", 2)),
            "public.customers",
            Some(&entity)
        )
        .unwrap()
        .contains("not colocated"));
        assert!(related_warning(
            "public.orders",
            "customer_id",
            Some(&hash("id", 1)),
            "public.customers",
            Some(&entity)
        )
        .unwrap()
        .contains("\"id\""));
        assert!(related_warning(
            "public.orders",
            "customer_id",
            None,
            "public.customers",
            Some(&entity)
        )
        .unwrap()
        .contains("not both distributed"));
        assert_eq!(
            related_warning(
                "public.orders",
                "customer_id",
                None,
                "public.customers",
                None
            ),
            None
        );
    }
}
