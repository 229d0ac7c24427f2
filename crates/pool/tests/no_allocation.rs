//! A counting global allocator shows that a warmed-up pool serves a
//! get/fill/return loop (and a freeze/slice/drop loop) without allocating.

// A `GlobalAlloc` implementation is `unsafe` by definition; it only counts.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use dr_pool::{BufferPool, BufferPoolConfig, ObjectPool};

struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to the system allocator unchanged; the
// counter has no effect on the memory handed out.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Allocations made while running `work`. The test harness runs tests on
/// several threads, so this file keeps a single test to count alone.
fn allocations_during(work: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.load(Relaxed);
    work();
    ALLOCATIONS.load(Relaxed) - before
}

#[test]
fn steady_state_pool_loops_allocate_nothing() {
    let pool = BufferPool::new(&BufferPoolConfig::default()).expect("valid config");
    let batches = ObjectPool::new(4, || Vec::<u64>::with_capacity(64), Vec::clear);
    let payload = [7u8; 3000];
    let round = || {
        let mut buffer = pool.get(4096);
        buffer.extend_from_slice(&payload);
        assert_eq!(buffer.len(), payload.len());
        drop(buffer);
        let mut batch = batches.get();
        batch.extend(0..64);
        drop(batch);
    };
    // Warm up: the first round allocates the buffer and the batch.
    round();
    let allocated = allocations_during(|| (0..10_000).for_each(|_| round()));
    assert_eq!(allocated, 0, "steady-state get/fill/put allocated");

    // The receive path: freeze into Bytes, slice, drop. `Bytes::from_owner`
    // boxes its owner once per freeze, so this path allocates exactly one
    // small header per frame and never the buffer itself.
    let frozen_round = || {
        let mut buffer = pool.get(4096);
        buffer.extend_from_slice(&payload);
        let frame = buffer.freeze();
        let slice = frame.slice(100..200);
        drop(frame);
        assert_eq!(slice.len(), 100);
    };
    frozen_round();
    let allocated = allocations_during(|| (0..1000).for_each(|_| frozen_round()));
    assert_eq!(
        allocated, 1000,
        "one owner header per frozen frame, no buffer"
    );
}
