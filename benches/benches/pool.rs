//! dr-pool against the allocator: one buffer got, filled and released per
//! iteration, on one thread, on two threads at once, and across threads
//! (filled on one, released on the other, as on the receive path).

use std::hint::black_box;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dr_pool::{BufferPool, BufferPoolConfig};

const SIZES: [usize; 3] = [256, 4096, 65_536];
/// Bytes written into each buffer: a header's worth, as a frame encoder
/// or a socket read of a small message would.
const FILL_BYTES: usize = 64;

fn pool() -> BufferPool {
    BufferPool::new(&BufferPoolConfig::default()).expect("default config is valid")
}

fn fill(buffer: &mut BytesMut) {
    buffer.put_bytes(0xAB, FILL_BYTES);
    black_box(buffer.as_ptr());
}

/// One get/fill/release with the pool.
fn pooled_round(pool: &BufferPool, size: usize) {
    let mut buffer = pool.get(size);
    fill(&mut buffer);
}

/// One allocate/fill/free with the allocator.
fn allocated_round(size: usize) {
    let mut buffer = BytesMut::with_capacity(size);
    fill(&mut buffer);
}

fn single_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool-1-thread");
    group.throughput(Throughput::Elements(1));
    let pool = pool();
    for size in SIZES {
        group.bench_with_input(BenchmarkId::new("dr", size), &size, |b, &size| {
            b.iter(|| pooled_round(&pool, size))
        });
        group.bench_with_input(BenchmarkId::new("alloc", size), &size, |b, &size| {
            b.iter(|| allocated_round(size))
        });
    }
    group.finish();
}

/// Runs `round` `iterations` times on each of `threads` threads started
/// together; returns the wall time divided by the thread count, so the
/// result is time per operation per thread.
fn on_threads(threads: usize, iterations: u64, round: impl Fn() + Sync) -> Duration {
    let barrier = Barrier::new(threads);
    let elapsed = thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let started = Instant::now();
                    for _ in 0..iterations {
                        round();
                    }
                    started.elapsed()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("bench thread"))
            .max()
    });
    elapsed.unwrap_or_default()
}

fn two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool-2-threads");
    group.throughput(Throughput::Elements(1));
    let pool = pool();
    for size in SIZES {
        group.bench_with_input(BenchmarkId::new("dr", size), &size, |b, &size| {
            b.iter_custom(|iterations| on_threads(2, iterations, || pooled_round(&pool, size)))
        });
        group.bench_with_input(BenchmarkId::new("alloc", size), &size, |b, &size| {
            b.iter_custom(|iterations| on_threads(2, iterations, || allocated_round(size)))
        });
    }
    group.finish();
}

/// `iterations` buffers made by `make` on this thread, filled, sent over a
/// bounded channel and dropped on another thread.
fn across_threads<B: Send>(
    iterations: u64,
    make: impl Fn() -> B,
    fill: impl Fn(&mut B),
) -> Duration {
    let (sender, receiver) = crossbeam_channel::bounded::<B>(256);
    thread::scope(|scope| {
        scope.spawn(move || receiver.iter().for_each(drop));
        let started = Instant::now();
        for _ in 0..iterations {
            let mut buffer = make();
            fill(&mut buffer);
            sender.send(buffer).expect("consumer alive");
        }
        drop(sender);
        started.elapsed()
    })
}

fn cross_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool-cross-thread");
    group.throughput(Throughput::Elements(1));
    let pool = pool();
    for size in SIZES {
        group.bench_with_input(BenchmarkId::new("dr", size), &size, |b, &size| {
            b.iter_custom(|iterations| {
                across_threads(iterations, || pool.get(size), |buffer| fill(buffer))
            })
        });
        group.bench_with_input(BenchmarkId::new("alloc", size), &size, |b, &size| {
            b.iter_custom(|iterations| {
                across_threads(iterations, || BytesMut::with_capacity(size), fill)
            })
        });
    }
    group.finish();
}

fn config() -> Criterion {
    dr_benches::criterion_config(Duration::from_millis(500), Duration::from_millis(2500))
}

criterion_group! {
    name = benches;
    config = config();
    targets = single_thread, two_threads, cross_thread
}
criterion_main!(benches);
