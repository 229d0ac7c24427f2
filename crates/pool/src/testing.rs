//! Test support: a global allocator that counts allocations, so tests can
//! show that a steady-state loop allocates nothing. Behind the `testing`
//! feature; install it in a test binary with `#[global_allocator]`.

// A `GlobalAlloc` implementation is `unsafe` by definition; this one only
// counts and forwards.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The system allocator, counting every allocation and reallocation.
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

    /// Allocations made while `work` ran (on any thread: keep such tests
    /// alone in their test binary).
    pub fn allocations_during(&self, work: impl FnOnce()) -> u64 {
        let before = self.allocations();
        work();
        self.allocations() - before
    }
}

// SAFETY: every method forwards to the system allocator unchanged; the
// counter has no effect on the memory handed out.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.allocations.fetch_add(1, Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.allocations.fetch_add(1, Relaxed);
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
}
