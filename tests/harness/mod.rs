//! Layer-3 harness: a real PostgreSQL cluster (of the major `PG_CONFIG`
//! names; Debian's 15 by default), started with the settings
//! a test asks for (by `scripts/cluster.sh`, as the `postgres` OS user when
//! run as root), handed to the test as connection strings, and always
//! stopped and removed when the `Cluster` is dropped, even if the test panics.
// Each suite compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The day the sample data is anchored at, and relative conditions are
/// measured from, in every suite that uses `Cluster::sample`.
pub const ANCHOR: &str = "2026-11-01";

pub struct Cluster {
    dir: PathBuf,
    port: u16,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The pg_config of the PostgreSQL under test: `PG_CONFIG` (set by
/// scripts/test.sh for each major), else Debian's PostgreSQL 15.
pub fn pg_config() -> String {
    std::env::var("PG_CONFIG").unwrap_or_else(|_| "/usr/bin/pg_config".into())
}

/// A client program (psql, pg_dump, pg_restore...) of the PostgreSQL under test.
pub fn pg_bin(name: &str) -> String {
    let output = Command::new(pg_config())
        .arg("--bindir")
        .output()
        .expect("pg_config runs");
    format!("{}/{name}", String::from_utf8_lossy(&output.stdout).trim())
}

/// A database error's SQLSTATE and message (panics on any other error).
pub fn sqlstate(error: &postgres::Error) -> (String, String) {
    let db = error
        .as_db_error()
        .unwrap_or_else(|| panic!("not a database error: {error}"));
    (db.code().code().to_string(), db.message().to_string())
}

/// A connection to database `postgres` as `role`.
pub fn connect_as(cluster: &Cluster, role: &str) -> postgres::Client {
    postgres::Client::connect(
        &cluster
            .url("postgres")
            .replace("user=postgres", &format!("user={role}")),
        postgres::NoTls,
    )
    .unwrap_or_else(|e| panic!("connect as {role}: {e}"))
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("could not run {command:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl Cluster {
    /// Starts a new cluster; `settings` are `name=value` lines for
    /// postgresql.conf, e.g. `shared_preload_libraries=segments`.
    pub fn start(name: &str, settings: &[&str]) -> Cluster {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("segments-it-{name}-{}-{n}", std::process::id()));
        // Each cluster has its own socket directory, so ports never collide.
        let port = 55500 + (n % 100) as u16;
        let cluster = Cluster { dir, port };
        cluster.script(&["destroy", cluster.dir_str()]);
        let port_text = port.to_string();
        let mut args = vec!["start", cluster.dir_str(), port_text.as_str()];
        args.extend_from_slice(settings);
        cluster.script(&args);
        cluster
    }

    fn dir_str(&self) -> &str {
        self.dir.to_str().expect("temp dir is UTF-8")
    }

    fn script(&self, args: &[&str]) -> String {
        run(Command::new("bash")
            .arg(repo().join("scripts/cluster.sh"))
            .args(args))
    }

    /// A libpq connection string for `database`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={database}",
            self.dir.display(),
            self.port
        )
    }

    pub fn connect(&self, database: &str) -> postgres::Client {
        postgres::Client::connect(&self.url(database), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url(database)))
    }

    /// Runs a psql script file with `-v name=value` variables.
    pub fn psql_file(&self, database: &str, file: &str, vars: &[(&str, &str)]) -> String {
        let mut command = Command::new("psql");
        command
            .arg(self.url(database))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
            .arg(repo().join(file));
        for (name, value) in vars {
            command.arg("-v").arg(format!("{name}={value}"));
        }
        run(&mut command)
    }

    /// The sample data set at `scale`, anchored at `ANCHOR` and measured
    /// from it (`segments.reference_time`), with `customers`, `orders` and
    /// `email_events` registered: what most suites start from.
    pub fn sample(&self, scale: &str) -> postgres::Client {
        let then = format!(
            "SET segments.reference_time = '{ANCHOR}'; {}",
            Self::EMAIL_EVENTS
        );
        self.sample_database(scale, ANCHOR, &then)
    }

    /// `sample` without `email_events` registered: customers and their
    /// orders only, measured from `ANCHOR`.
    pub fn sample_customers_orders(&self, scale: &str) -> postgres::Client {
        self.sample_database(
            scale,
            ANCHOR,
            &format!("SET segments.reference_time = '{ANCHOR}';"),
        )
    }

    /// The sample data set at `scale`, anchored at `ANCHOR`, with
    /// `customers` and `orders` registered and relative conditions measured
    /// from `now()` (live segments apply changes as they come).
    pub fn sample_unpinned(&self, scale: &str) -> postgres::Client {
        self.sample_database(scale, ANCHOR, "")
    }

    /// Registers the sample's `email_events` (for `sample_database`'s `then`).
    pub const EMAIL_EVENTS: &'static str =
        "SELECT segments.register_related('customer', 'email_events', 'email_events', 'customer_id', 'occurred_at');";

    /// The sample data set (`scripts/sample_data.sql` at `scale`, anchored
    /// at `anchor`), the extension, and `customers` with its `orders`
    /// registered; then `then` (more registrations, settings, roles), as
    /// the superuser.
    pub fn sample_database(&self, scale: &str, anchor: &str, then: &str) -> postgres::Client {
        self.psql_file(
            "postgres",
            "scripts/sample_data.sql",
            &[("scale", scale), ("anchor", anchor)],
        );
        let mut client = self.connect("postgres");
        client
            .batch_execute(&format!(
                "CREATE EXTENSION segments;
                 SELECT segments.register_entity('customer', 'customers', 'id');
                 SELECT segments.register_related('customer', 'orders', 'orders', 'customer_id', 'ordered_at');
                 {then}"
            ))
            .unwrap_or_else(|e| panic!("setting up the sample database: {e}"));
        client
    }

    /// Stops the cluster (fast shutdown) and starts it again.
    pub fn restart(&self) {
        self.script(&["stop", self.dir_str()]);
        let port = self.port.to_string();
        self.script(&["start", self.dir_str(), port.as_str()]);
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// A streaming replica of this cluster (`pg_basebackup -R`), started
    /// with the same settings (the preload included) in recovery.
    pub fn standby(&self, name: &str) -> Cluster {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("segments-it-{name}-{}-{n}", std::process::id()));
        let port = 55500 + (n % 100) as u16;
        let standby = Cluster { dir, port };
        standby.script(&["destroy", standby.dir_str()]);
        let port_text = self.port.to_string();
        run(as_owner(&pg_bin("pg_basebackup")).args([
            "-D",
            standby.dir_str(),
            "-R",
            "-X",
            "stream",
            "-h",
            self.dir_str(),
            "-p",
            port_text.as_str(),
            "-U",
            "postgres",
        ]));
        // Its own port, socket and log (the copied ones are the primary's).
        let _ = std::fs::remove_file(standby.dir.join("server.log"));
        let conf = standby.dir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("the copy has postgresql.conf");
        text.push_str(&format!(
            "\nport = {}\nunix_socket_directories = '{}'\n",
            standby.port,
            standby.dir.display()
        ));
        std::fs::write(&conf, text).expect("postgresql.conf is writable");
        let port = standby.port.to_string();
        standby.script(&["start", standby.dir_str(), port.as_str()]);
        standby
    }

    /// Promotes a standby (`pg_ctl promote`, waiting for it).
    pub fn promote(&self) {
        run(as_owner(&pg_bin("pg_ctl")).args(["-D", self.dir_str(), "-w", "promote"]));
    }
}

/// A command run as the `postgres` OS user when the tests run as root (as
/// PostgreSQL's own programs must be).
fn as_owner(program: &str) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if root {
        let mut command = Command::new("sudo");
        command.args(["-u", "postgres", "--", program]);
        command
    } else {
        Command::new(program)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("scripts/cluster.sh"))
            .args(["destroy", self.dir_str()])
            .output();
    }
}

/// A throwaway three-node Citus cluster (`scripts/citus.sh`): a coordinator
/// and two workers, destroyed when dropped. `None` when Citus is not
/// installed on this machine (the caller prints that it skipped).
pub struct CitusCluster {
    dir: PathBuf,
    port: u16,
}

impl CitusCluster {
    pub fn installed() -> bool {
        Command::new("bash")
            .arg(repo().join("scripts/citus.sh"))
            .arg("installed")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    pub fn start(name: &str, port: u16) -> Option<CitusCluster> {
        if !Self::installed() {
            return None;
        }
        let dir =
            std::env::temp_dir().join(format!("segments-citus-{name}-{}", std::process::id()));
        let cluster = CitusCluster { dir, port };
        cluster.script(&["destroy"]);
        cluster.script(&["start", &port.to_string()]);
        Some(cluster)
    }

    fn script(&self, args: &[&str]) -> String {
        let mut command = Command::new("bash");
        command
            .arg(repo().join("scripts/citus.sh"))
            .arg(args[0])
            .arg(&self.dir)
            .args(&args[1..]);
        run(&mut command)
    }

    /// Node 0 is the coordinator, 1 and 2 the workers.
    pub fn url(&self, node: u16) -> String {
        format!(
            "host={}/node{node} port={} user=postgres dbname=postgres",
            self.dir.display(),
            self.port + node
        )
    }

    pub fn connect(&self, node: u16) -> postgres::Client {
        postgres::Client::connect(&self.url(node), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url(node)))
    }

    /// Runs SQL with psql on the coordinator; returns (stdout, stderr).
    pub fn psql(&self, sql: &str) -> (String, String) {
        let output = Command::new("psql")
            .arg(self.url(0))
            .args(["-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql runs");
        (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

impl Drop for CitusCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("scripts/citus.sh"))
            .arg("destroy")
            .arg(&self.dir)
            .output();
    }
}

/// Refreshes every active segment in one transaction, after `settings`
/// (`SET LOCAL ...;`), asserting that none fails; returns how many times
/// `table` was read (sequential and index scans) and the rows of
/// `members_sql`, each through `row`. (The statistics counters may still
/// hold the previous transaction's reads, flushed at most once a second:
/// the reads are the difference within this one.)
pub fn refresh_counting_reads<T>(
    client: &mut postgres::Client,
    settings: &str,
    table: &str,
    members_sql: &str,
    row: impl Fn(&postgres::Row) -> T,
) -> (i64, Vec<T>) {
    let mut tx = client.transaction().unwrap();
    tx.batch_execute(settings).unwrap();
    let reads_sql = "SELECT coalesce((SELECT seq_scan + coalesce(idx_scan, 0) FROM pg_stat_xact_user_tables WHERE relname = $1), 0)";
    let before: i64 = tx.query_one(reads_sql, &[&table]).unwrap().get(0);
    let failed: Vec<String> = tx
        .query(
            "SELECT segment_id || ': ' || coalesce(error, '') FROM segments.refresh() WHERE status <> 'succeeded'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(failed.is_empty(), "refreshes failed: {failed:?}");
    let reads = tx.query_one(reads_sql, &[&table]).unwrap().get::<_, i64>(0) - before;
    let members = tx
        .query(members_sql, &[])
        .unwrap()
        .iter()
        .map(row)
        .collect();
    tx.commit().unwrap();
    (reads, members)
}

/// How many records differ between segment `segment`'s members (in the
/// members view `view`, e.g. `segments.customer_members`) and the keys
/// `key` of `from` (e.g. `customers c`, `c.id`) where `condition` holds.
pub fn members_differ(
    client: &mut postgres::Client,
    view: &str,
    from: &str,
    key: &str,
    condition: &str,
    segment: i64,
) -> i64 {
    client
        .query_one(
            &format!(
                "WITH want AS (SELECT {key} AS id FROM {from} WHERE {condition}),
                      got AS (SELECT id FROM {view} WHERE segment_id = $1)
                 SELECT (SELECT count(*) FROM (SELECT * FROM want EXCEPT SELECT * FROM got) a)
                      + (SELECT count(*) FROM (SELECT * FROM got EXCEPT SELECT * FROM want) b)"
            ),
            &[&segment],
        )
        .unwrap_or_else(|e| panic!("segment {segment}: {e}\n{condition}"))
        .get(0)
}

pub fn wait_for<T>(what: &str, seconds: u64, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {seconds}s waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The SQL blocks (```sql fences) of one `## ` section of README.md, in
/// order, for the tests that run a section's examples.
pub fn readme_sql_blocks(section: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find(&format!("\n## {section}\n"))
        .unwrap_or_else(|| panic!("README has no section {section}"));
    let text = &readme[start + 1..];
    let text = &text[..text.find("\n## ").unwrap_or(text.len())];
    text.split("```sql\n")
        .skip(1)
        .map(|b| b[..b.find("```").unwrap()].to_string())
        .collect()
}

/// Whether the live tests run with WAL capture (`SEGMENTS_TEST_CAPTURE=wal`,
/// as scripts/test.sh runs tests/live.rs a second time).
#[allow(dead_code)]
pub fn wal_capture() -> bool {
    std::env::var("SEGMENTS_TEST_CAPTURE").as_deref() == Ok("wal")
}

/// `settings` plus what the capture mode under test needs.
#[allow(dead_code)]
pub fn with_capture<'a>(settings: &[&'a str]) -> Vec<&'a str> {
    let mut all = settings.to_vec();
    if wal_capture() {
        all.extend(["wal_level=logical", "segments.capture=wal"]);
    }
    all
}

/// With WAL capture, the sample's tables carry whole old rows in the WAL
/// (REPLICA IDENTITY FULL), as WAL capture requires of related tables.
#[allow(dead_code)]
pub fn prepare_capture(client: &mut postgres::Client) {
    if wal_capture() {
        client
            .batch_execute(
                "ALTER TABLE customers REPLICA IDENTITY FULL;
                 ALTER TABLE orders REPLICA IDENTITY FULL;
                 ALTER TABLE email_events REPLICA IDENTITY FULL;",
            )
            .expect("replica identity");
    }
}
