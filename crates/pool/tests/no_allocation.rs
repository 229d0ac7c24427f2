//! A counting global allocator shows that a warmed-up pool serves a
//! get/fill/return loop (and a freeze/slice/drop loop) without allocating.
//! Only the test thread's allocations count (see `allocations_during`).

use dr_pool::testing::CountingAllocator;
use dr_pool::{BufferPool, BufferPoolConfig, ObjectPool};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator::new();

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
    let allocated = GLOBAL.allocations_during(|| (0..10_000).for_each(|_| round()));
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
    let allocated = GLOBAL.allocations_during(|| (0..1000).for_each(|_| frozen_round()));
    assert_eq!(
        allocated, 1000,
        "one owner header per frozen frame, no buffer"
    );
}
