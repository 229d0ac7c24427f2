//! Test support: a global allocator that counts allocations, so tests can
//! show that a steady-state loop allocates nothing. Behind the `testing`
//! feature; install it in a test binary with `#[global_allocator]`.

// A `GlobalAlloc` implementation is `unsafe` by definition; this one only
// counts and forwards.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

thread_local! {
    /// Allocations by this thread. Const-initialized and without a
    /// destructor, so reading it from inside the allocator never allocates.
    static THREAD_ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_on_this_thread() {
    // During thread teardown the slot may be gone; such allocations are
    // not a test's work.
    let _ = THREAD_ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
}

/// The system allocator, counting every allocation and reallocation, in
/// total and per thread.
///
/// ```
/// use dr_pool::testing::CountingAllocator;
///
/// static COUNTER: CountingAllocator = CountingAllocator::new();
/// // In a test binary: #[global_allocator] static GLOBAL: CountingAllocator = ...;
/// assert_eq!(COUNTER.allocations(), 0);
/// ```
#[derive(Debug, Default)]
pub struct CountingAllocator {
    allocations: AtomicU64,
}

impl CountingAllocator {
    /// A counter at zero.
    pub const fn new() -> Self {
        Self {
            allocations: AtomicU64::new(0),
        }
    }

    /// Allocations and reallocations so far.
    pub fn allocations(&self) -> u64 {
        self.allocations.load(Relaxed)
    }

    /// Allocations made by the calling thread while `work` ran. Only this
    /// thread's count: the test harness allocates on its own threads at
    /// any time, and those are not the work's.
    pub fn allocations_during(&self, work: impl FnOnce()) -> u64 {
        let this_thread = || THREAD_ALLOCATIONS.with(Cell::get);
        let before = this_thread();
        work();
        this_thread() - before
    }
}

// SAFETY: every method forwards to the system allocator unchanged; the
// counter has no effect on the memory handed out.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.allocations.fetch_add(1, Relaxed);
        count_on_this_thread();
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.allocations.fetch_add(1, Relaxed);
        count_on_this_thread();
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_forwards() {
        let counter = CountingAllocator::new();
        let layout = Layout::from_size_align(64, 8).expect("valid layout");
        // SAFETY: a non-zero-sized layout; the block is written inside its
        // bounds, reallocated with the same alignment, and freed with the
        // layout it has then.
        unsafe {
            let block = counter.alloc(layout);
            assert!(!block.is_null());
            block.write_bytes(0xAB, 64);
            let grown = counter.realloc(block, layout, 128);
            assert!(!grown.is_null());
            assert_eq!(*grown.add(63), 0xAB);
            counter.dealloc(
                grown,
                Layout::from_size_align(128, 8).expect("valid layout"),
            );
        }
        assert_eq!(counter.allocations(), 2);
    }

    #[test]
    fn allocations_during_counts_only_the_calling_thread() {
        let counter = CountingAllocator::new();
        let layout = Layout::from_size_align(32, 8).expect("valid layout");
        let allocate_and_free = || {
            // SAFETY: a non-zero-sized layout, freed with the same layout.
            unsafe { counter.dealloc(counter.alloc(layout), layout) }
        };
        assert_eq!(counter.allocations_during(allocate_and_free), 1);
        let elsewhere = counter.allocations_during(|| {
            std::thread::scope(|scope| {
                scope.spawn(allocate_and_free);
            })
        });
        assert_eq!(
            counter.allocations(),
            2,
            "the other thread's allocation is in the total"
        );
        // Spawning may allocate on this thread (through the system
        // allocator, not `counter`), but the other thread's does not count.
        assert_eq!(elsewhere, 0);
    }
}
