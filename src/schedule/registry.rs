//! The schedulers' shared state, in shared memory (with the preload): one
//! entry per database the launcher serves, with its scheduler's pid and
//! state, and whether a session has withdrawn it for a statement that
//! needs the database to itself (DROP DATABASE, ALTER EXTENSION ...). The
//! launcher's latch is here too, so that a session can wake it.
//!
//! Readers and writers take the lock only around plain copies: no SPI, no
//! error, no allocation runs under it.

use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};

/// The most databases the launcher keeps track of (the upper bound of
/// `segments.max_schedulers`).
pub const MAX_DATABASES: usize = crate::pg::gucs::MAX_SCHEDULERS_LIMIT;

/// What a database's scheduler is doing, as `segments.schedulers` shows it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum State {
    /// Known to the launcher, no scheduler yet.
    #[default]
    Waiting = 0,
    /// Started, connecting.
    Starting = 1,
    /// Between passes.
    Idle = 2,
    /// Running a pass.
    Running = 3,
    /// The extension is not installed in the database: no scheduler until
    /// `CREATE EXTENSION segments` (or a re-check every ten minutes).
    NoExtension = 4,
    /// The installed extension is older than the library: waiting for
    /// `ALTER EXTENSION segments UPDATE`.
    OutdatedExtension = 5,
    /// Withdrawn for a statement that needs the database to itself.
    Withdrawn = 6,
    /// More databases than `segments.max_schedulers`.
    OverLimit = 7,
}

impl State {
    /// The state as `segments.schedulers.state` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Waiting => "waiting",
            State::Starting => "starting",
            State::Idle => "idle",
            State::Running => "running",
            State::NoExtension => "no extension",
            State::OutdatedExtension => "extension outdated",
            State::Withdrawn => "withdrawn",
            State::OverLimit => "over max_schedulers",
        }
    }
}

/// The longest last error kept, in bytes.
const ERROR_BYTES: usize = 240;

/// One database's entry (`database` 0: a free entry).
#[derive(Copy, Clone, Debug)]
#[repr(C)]
pub struct Entry {
    pub database: u32,
    /// The scheduler's pid, 0 when none runs.
    pub pid: i32,
    pub state: State,
    /// Set by `CREATE EXTENSION segments`: start a scheduler now, even if
    /// the last one found no extension.
    pub wanted: bool,
    /// When the scheduler started, and when it last finished a pass
    /// (TimestampTz, 0: never).
    pub started_at: i64,
    pub last_pass_started_at: i64,
    pub last_pass_at: i64,
    /// The last error a scheduler step logged, NUL-padded UTF-8, and when.
    last_error: [u8; ERROR_BYTES],
    pub last_error_at: i64,
    /// When a scheduler last found no extension here.
    pub probed_at: i64,
    /// The backend that withdrew this database's scheduler (0: none), and
    /// until when the withdrawal holds at most.
    pub withdrawn_by: i32,
    pub withdrawn_until: i64,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            database: 0,
            pid: 0,
            state: State::Waiting,
            wanted: false,
            started_at: 0,
            last_pass_started_at: 0,
            last_pass_at: 0,
            last_error: [0; ERROR_BYTES],
            last_error_at: 0,
            probed_at: 0,
            withdrawn_by: 0,
            withdrawn_until: 0,
        }
    }
}

impl Entry {
    /// The last error, if any.
    pub fn last_error(&self) -> Option<String> {
        let end = self
            .last_error
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(ERROR_BYTES);
        (end > 0).then(|| String::from_utf8_lossy(&self.last_error[..end]).into_owned())
    }

    /// Records an error, cut to what fits.
    pub fn set_last_error(&mut self, error: &str) {
        self.last_error = [0; ERROR_BYTES];
        let mut end = error.len().min(ERROR_BYTES);
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        self.last_error[..end].copy_from_slice(&error.as_bytes()[..end]);
        self.last_error_at = now();
    }
}

/// The whole shared state.
#[derive(Copy, Clone)]
#[repr(C)]
pub struct Registry {
    pub launcher_pid: i32,
    /// The launcher's latch (a PGPROC's, in shared memory), 0 when none.
    pub launcher_latch: usize,
    pub entries: [Entry; MAX_DATABASES],
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            launcher_pid: 0,
            launcher_latch: 0,
            entries: [Entry::default(); MAX_DATABASES],
        }
    }
}

// SAFETY: plain old data (integers, an enum of u8, a latch address that is
// valid in every process because it points into shared memory).
unsafe impl PGRXSharedMemory for Registry {}

static REGISTRY: PgLwLock<Registry> = unsafe { PgLwLock::new(c"segments_schedulers") };

/// Whether the shared memory exists in this process (the library was
/// preloaded); without it there is no launcher and nothing to report.
static READY: AtomicBool = AtomicBool::new(false);

/// Asks for the shared memory; `_PG_init` calls it while preloading.
// pgrx's macro tests features of majors this crate does not build (13, 14).
#[allow(unexpected_cfgs)]
pub fn init() {
    pg_shmem_init!(REGISTRY);
    READY.store(true, Ordering::Relaxed);
}

/// Whether the registry is available (the library was preloaded).
pub fn ready() -> bool {
    READY.load(Ordering::Relaxed)
}

/// Now, as a TimestampTz.
pub fn now() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// A copy of the registry (None without the preload).
pub fn snapshot() -> Option<Registry> {
    ready().then(|| *REGISTRY.share())
}

/// Changes the entry of `database`, making one if there is room; false
/// when there is no preload or no room.
pub fn update(database: u32, change: impl FnOnce(&mut Entry)) -> bool {
    if !ready() || database == 0 {
        return false;
    }
    let mut registry = REGISTRY.exclusive();
    let index = registry
        .entries
        .iter()
        .position(|e| e.database == database)
        .or_else(|| registry.entries.iter().position(|e| e.database == 0));
    let Some(index) = index else { return false };
    let entry = &mut registry.entries[index];
    if entry.database == 0 {
        *entry = Entry {
            database,
            ..Entry::default()
        };
    }
    change(entry);
    true
}

/// Changes every entry (the launcher's reconciliation).
pub fn update_all(mut change: impl FnMut(&mut Registry)) {
    if ready() {
        change(&mut REGISTRY.exclusive());
    }
}

/// Records this process as the launcher, to be woken through its latch.
pub fn set_launcher(pid: i32, latch: *mut pg_sys::Latch) {
    update_all(|r| {
        r.launcher_pid = pid;
        r.launcher_latch = latch as usize;
    });
}

/// Wakes the launcher, if one runs, so that it looks again now instead of
/// after its naptime.
pub fn wake_launcher() {
    let latch = snapshot().map_or(0, |r| r.launcher_latch);
    if latch != 0 {
        // SAFETY: the address of the launcher's PGPROC latch, in shared
        // memory; SetLatch on a latch whose owner exited is harmless.
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}
