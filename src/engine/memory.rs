//! How much memory the engine's own values hold: bitmaps, plans, leaf
//! values and the rows it reads back. Every allocation of the library's
//! Rust code goes through a counting allocator (the system's, plus two
//! atomic counters), so a refresh can record its peak in
//! `segments.refresh_run.peak_memory`. PostgreSQL's own query memory
//! (sorts, hash tables, bounded by `work_mem`) is palloc'd and not counted
//! here.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting the bytes it has out and their peak.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// What was out when the current measure started.
static BASELINE: AtomicUsize = AtomicUsize::new(0);

#[global_allocator]
static ALLOCATOR: Counting = Counting;

// SAFETY: every call is passed to `System` unchanged; the counters only
// observe the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `System::alloc`, with the caller's layout.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            grew(layout.size());
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `System::alloc_zeroed`, with the caller's layout.
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            grew(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: the caller allocated `pointer` with `layout` through us,
        // that is through `System`.
        unsafe { System.dealloc(pointer, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `System::realloc`, with the caller's pointer and layout.
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        moved
    }
}

/// Counts `bytes` more out, raising the peak if need be.
fn grew(bytes: usize) {
    let now = CURRENT.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

/// Starts measuring a peak (a refresh, a live application) from what is
/// out now. (A backend runs one at a time.)
pub fn start_peak() {
    let now = CURRENT.load(Ordering::Relaxed);
    BASELINE.store(now, Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
}

/// The most bytes out at once since `start_peak`, above what was out then.
pub fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
        .saturating_sub(BASELINE.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_counts_what_was_held_at_once() {
        start_peak();
        let big = vec![0u8; 8 << 20];
        drop(big);
        let small = vec![0u8; 1 << 20];
        let peak = peak();
        // Other test threads allocate too: at least the 8 MiB, not the sum.
        assert!(peak >= 8 << 20, "{peak}");
        drop(small);
    }
}
