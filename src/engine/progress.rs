//! Progress of refreshes and live applications, for `segments.activity`:
//! a slot in shared memory per running one (with the preload), written
//! by the backend or scheduler doing the work, read by anyone. Without the
//! preload nothing is recorded.
//!
//! A slot is released when its `Progress` is dropped, on success and on
//! error alike (errors unwind through it); a slot of a process that died
//! is ignored by readers and reused.

use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};

/// The most refreshes and applications shown at once.
pub const SLOTS: usize = 128;

/// What is running.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Kind {
    #[default]
    Refresh = 0,
    LiveApply = 1,
}

impl Kind {
    /// As `segments.activity.kind` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Refresh => "refresh",
            Kind::LiveApply => "live apply",
        }
    }
}

/// Where a run is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Phase {
    /// Loading and locking the segments, taking the change queue.
    #[default]
    Loading = 0,
    /// Compiling the segments into plans.
    Planning = 1,
    /// Running a plan's queries (the scan of the entity table).
    Computing = 2,
    /// Evaluating a segment and storing its membership.
    Storing = 3,
    /// Sequences and exports (`after_change`).
    Following = 4,
}

impl Phase {
    /// As `segments.activity.phase` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Loading => "loading",
            Phase::Planning => "planning",
            Phase::Computing => "computing",
            Phase::Storing => "storing",
            Phase::Following => "following up",
        }
    }
}

/// One running refresh or application (`pid` 0: a free slot).
#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct Slot {
    pub pid: i32,
    pub database: u32,
    pub kind: Kind,
    pub phase: Phase,
    /// The segment being worked on (0: none yet).
    pub segment: i64,
    pub done: u32,
    pub total: u32,
    /// TimestampTz.
    pub started_at: i64,
}

/// Every slot.
#[derive(Copy, Clone)]
#[repr(C)]
pub struct Slots {
    pub slots: [Slot; SLOTS],
}

impl Default for Slots {
    fn default() -> Self {
        Slots {
            slots: [Slot::default(); SLOTS],
        }
    }
}

// SAFETY: plain old data.
unsafe impl PGRXSharedMemory for Slots {}

static ACTIVITY: PgLwLock<Slots> = unsafe { PgLwLock::new(c"segments_activity") };
static READY: AtomicBool = AtomicBool::new(false);

/// Asks for the shared memory; `_PG_init` calls it while preloading.
// pgrx's macro tests features of majors this crate does not build (13, 14).
#[allow(unexpected_cfgs)]
pub fn init() {
    pg_shmem_init!(ACTIVITY);
    READY.store(true, Ordering::Relaxed);
}

/// Whether `pid` is a live backend.
fn alive(pid: i32) -> bool {
    // SAFETY: looks a pid up in the proc array under its own lock.
    pid != 0 && unsafe { !pg_sys::BackendPidGetProc(pid).is_null() }
}

/// The running refreshes and applications of live processes.
pub fn running() -> Vec<Slot> {
    if !READY.load(Ordering::Relaxed) {
        return Vec::new();
    }
    let slots: Vec<Slot> = ACTIVITY
        .share()
        .slots
        .iter()
        .filter(|s| s.pid != 0)
        .copied()
        .collect();
    slots.into_iter().filter(|s| alive(s.pid)).collect()
}

/// A running refresh or application, shown while it lives.
pub struct Progress {
    slot: Option<usize>,
}

impl Progress {
    /// Starts showing a run of `kind` over `total` segments (or entities).
    pub fn start(kind: Kind, total: usize) -> Progress {
        if !READY.load(Ordering::Relaxed) {
            return Progress { slot: None };
        }
        // SAFETY: reads this process's pid and database, and the clock.
        let (pid, database, now) = unsafe {
            (
                pg_sys::MyProcPid,
                pg_sys::MyDatabaseId.to_u32(),
                pg_sys::GetCurrentTimestamp(),
            )
        };
        // Slots of processes that died are free too (checked outside the
        // lock: the proc array has a lock of its own).
        let stale: Vec<usize> = ACTIVITY
            .share()
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.pid != 0 && s.pid != pid)
            .map(|(i, s)| (i, s.pid))
            .filter(|(_, p)| !alive(*p))
            .map(|(i, _)| i)
            .collect();
        let mut activity = ACTIVITY.exclusive();
        for i in stale {
            activity.slots[i].pid = 0;
        }
        let slot = activity.slots.iter().position(|s| s.pid == 0);
        if let Some(i) = slot {
            activity.slots[i] = Slot {
                pid,
                database,
                kind,
                phase: Phase::Loading,
                segment: 0,
                done: 0,
                total: total.min(u32::MAX as usize) as u32,
                started_at: now,
            };
        }
        Progress { slot }
    }

    /// Changes what is shown of this run.
    fn change(&self, change: impl FnOnce(&mut Slot)) {
        if let Some(i) = self.slot {
            change(&mut ACTIVITY.exclusive().slots[i]);
        }
    }

    /// Sets the total, once known.
    pub fn total(&self, total: usize) {
        self.change(|s| s.total = total.min(u32::MAX as usize) as u32);
    }

    /// Enters a phase, on a segment (0: none in particular).
    pub fn phase(&self, phase: Phase, segment: i64) {
        self.change(|s| {
            s.phase = phase;
            s.segment = segment;
        });
    }

    /// One more segment (or entity) done.
    pub fn advance(&self) {
        self.change(|s| s.done = s.done.saturating_add(1));
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.change(|s| s.pid = 0);
    }
}
