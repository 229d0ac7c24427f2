//! Many threads getting and returning buffers and objects at once: no
//! buffer is handed to two holders, none is lost, and the budget holds.

use std::collections::HashSet;
use std::sync::Arc;
use std::thread;

use dr_pool::{BufferPool, BufferPoolConfig, ObjectPool};
use parking_lot::Mutex;

const THREADS: usize = 8;
const ROUNDS: usize = 5_000;

#[test]
fn buffers_are_never_shared_lost_or_over_budget() {
    // A budget smaller than what the threads hold at peak, so returns
    // race for room in it.
    let config = BufferPoolConfig {
        size_classes: vec![256, 4096],
        budget_bytes: 64 * 1024,
        idle_buffers_per_class_max: 64,
    };
    let pool = BufferPool::new(&config).expect("valid config");
    // Addresses of buffers currently held by some thread.
    let live = Arc::new(Mutex::new(HashSet::new()));
    let threads: Vec<_> = (0..THREADS)
        .map(|thread_index| {
            let (pool, live) = (pool.clone(), Arc::clone(&live));
            thread::spawn(move || {
                for round in 0..ROUNDS {
                    let size = if (thread_index + round) % 3 == 0 {
                        4000
                    } else {
                        200
                    };
                    let held: Vec<_> = (0..1 + round % 4).map(|_| pool.get(size)).collect();
                    for buffer in &held {
                        let fresh = live.lock().insert(buffer.as_ptr() as usize);
                        assert!(fresh, "a buffer was handed to two holders at once");
                        assert!(buffer.is_empty() && buffer.capacity() >= size);
                    }
                    for mut buffer in held {
                        buffer.extend_from_slice(&[thread_index as u8; 100]);
                        assert!(buffer.iter().all(|&byte| byte == thread_index as u8));
                        live.lock().remove(&(buffer.as_ptr() as usize));
                    }
                    assert!(pool.stats().bytes_reserved <= pool.budget_bytes());
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("worker thread panicked");
    }
    // Every buffer ever allocated is idle in the pool or was freed on
    // return (counted): none was lost, and the budget held.
    let stats = pool.stats();
    assert_eq!(
        stats.misses,
        stats.buffers_held as u64 + stats.discards,
        "{stats:?}"
    );
    assert!(stats.bytes_held <= stats.bytes_reserved);
    assert!(stats.bytes_reserved <= config.budget_bytes);
    assert!(stats.hits > 0, "the pool was actually reused: {stats:?}");
}

#[test]
fn objects_are_reset_and_never_shared() {
    let pool = ObjectPool::new(16, Vec::<usize>::new, Vec::clear);
    let threads: Vec<_> = (0..THREADS)
        .map(|thread_index| {
            let pool = pool.clone();
            thread::spawn(move || {
                for round in 0..ROUNDS {
                    let mut batch = pool.get();
                    assert!(batch.is_empty(), "handed out without reset");
                    batch.extend([thread_index; 8]);
                    thread::yield_now();
                    assert!(
                        batch.iter().all(|&value| value == thread_index),
                        "shared at round {round}"
                    );
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("worker thread panicked");
    }
    let stats = pool.stats();
    assert_eq!(stats.misses, stats.idle as u64 + stats.discards);
}

#[test]
fn buffers_filled_on_one_thread_return_from_another() {
    let pool = BufferPool::new(&BufferPoolConfig::default()).expect("valid config");
    let (sender, receiver) = std::sync::mpsc::sync_channel(16);
    let producer = {
        let pool = pool.clone();
        thread::spawn(move || {
            for round in 0..ROUNDS {
                let mut buffer = pool.get(4096);
                buffer.extend_from_slice(&(round as u64).to_le_bytes());
                sender.send(buffer.freeze()).expect("consumer alive");
            }
        })
    };
    let consumer = thread::spawn(move || {
        for (round, frame) in receiver.iter().enumerate() {
            assert_eq!(frame[..8], (round as u64).to_le_bytes());
        }
    });
    producer.join().expect("producer panicked");
    consumer.join().expect("consumer panicked");
    let stats = pool.stats();
    assert_eq!(stats.hits + stats.misses, ROUNDS as u64);
    // Only the buffers in flight (channel, magazines) were ever allocated.
    assert!(
        stats.misses <= 200,
        "buffers came back for reuse: {stats:?}"
    );
}
