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
    Live = 1,
    Cleanup = 2,
}

impl Kind {
    /// As `segments.activity.kind` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Refresh => "refresh",
            Kind::Live => "live",
            Kind::Cleanup => "cleanup",
        }
    }
}

/// The most segment ids a slot shows (`segments.activity.segments`).
pub const SHOWN_SEGMENTS: usize = 32;
/// The longest phase text, in bytes.
const PHASE_BYTES: usize = 96;

/// One running refresh, application or cleanup (`pid` 0: a free slot).
#[derive(Copy, Clone, Debug)]
#[repr(C)]
pub struct Slot {
    pub pid: i32,
    pub database: u32,
    pub kind: Kind,
    /// What it does now ("planning", "scanning public.orders", "storing",
    /// "sequences", "exports"), NUL-padded UTF-8.
    phase: [u8; PHASE_BYTES],
    /// The run's segments (the first `SHOWN_SEGMENTS`).
    segments: [i64; SHOWN_SEGMENTS],
    segment_count: u32,
    pub done: u32,
    pub total: u32,
    /// TimestampTz.
    pub started_at: i64,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            pid: 0,
            database: 0,
            kind: Kind::Refresh,
            phase: [0; PHASE_BYTES],
            segments: [0; SHOWN_SEGMENTS],
            segment_count: 0,
            done: 0,
            total: 0,
            started_at: 0,
        }
    }
}

impl Slot {
    /// The phase as text.
    pub fn phase(&self) -> String {
        let end = self
            .phase
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(PHASE_BYTES);
        String::from_utf8_lossy(&self.phase[..end]).into_owned()
    }

    /// The run's segments shown.
    pub fn segments(&self) -> Vec<i64> {
        self.segments[..(self.segment_count as usize).min(SHOWN_SEGMENTS)].to_vec()
    }

    fn set_phase(&mut self, phase: &str) {
        self.phase = [0; PHASE_BYTES];
        // Cut at a character boundary.
        let mut end = phase.len().min(PHASE_BYTES);
        while !phase.is_char_boundary(end) {
            end -= 1;
        }
        self.phase[..end].copy_from_slice(&phase.as_bytes()[..end]);
    }
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

thread_local! {
    /// This process's runs being shown, innermost last: `phase` updates
    /// the innermost (a refresh run by a live application shows its own).
    static SHOWN: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A running refresh, application or cleanup, shown while it lives.
pub struct Progress {
    slot: Option<usize>,
}

impl Progress {
    /// Starts showing a run of `kind` over `segments` (empty when not yet
    /// known, or for a cleanup).
    pub fn start(kind: Kind, segments: &[i64]) -> Progress {
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
        let slot = {
            let mut activity = ACTIVITY.exclusive();
            for i in stale {
                activity.slots[i].pid = 0;
            }
            let slot = activity.slots.iter().position(|s| s.pid == 0);
            if let Some(i) = slot {
                let mut new = Slot {
                    pid,
                    database,
                    kind,
                    started_at: now,
                    ..Slot::default()
                };
                new.set_phase("loading");
                activity.slots[i] = new;
            }
            slot
        };
        let progress = Progress { slot };
        progress.segments(segments);
        if let Some(i) = slot {
            SHOWN.with(|s| s.borrow_mut().push(i));
        }
        progress
    }

    /// Changes what is shown of this run.
    fn change(&self, change: impl FnOnce(&mut Slot)) {
        if let Some(i) = self.slot {
            change(&mut ACTIVITY.exclusive().slots[i]);
        }
    }

    /// Sets the run's segments (and their total), once known.
    pub fn segments(&self, segments: &[i64]) {
        self.change(|s| {
            let shown = segments.len().min(SHOWN_SEGMENTS);
            s.segments = [0; SHOWN_SEGMENTS];
            s.segments[..shown].copy_from_slice(&segments[..shown]);
            s.segment_count = shown as u32;
            s.total = segments.len().min(u32::MAX as usize) as u32;
        });
    }

    /// One more segment done.
    pub fn advance(&self) {
        self.change(|s| s.done = s.done.saturating_add(1));
    }
}

/// Sets the phase of this process's innermost run being shown (nothing
/// without one): "planning", "scanning public.orders", "storing",
/// "sequences", "exports".
pub fn phase(phase: &str) {
    if !READY.load(Ordering::Relaxed) {
        return;
    }
    if let Some(i) = SHOWN.with(|s| s.borrow().last().copied()) {
        ACTIVITY.exclusive().slots[i].set_phase(phase);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            SHOWN.with(|s| s.borrow_mut().retain(|x| *x != i));
        }
        self.change(|s| s.pid = 0);
    }
}
