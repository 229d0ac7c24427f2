//! dr-storage on the machine's disk: synced appends of 1, 16 and 256
//! entries of 256 B per write (the ratio of batched to unbatched is the
//! value of group commit), applied writes, point reads, and group commit
//! under 64 concurrent proposers (entries per fsync).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use dr_codec::message::{Entry, EntryKind};
use dr_raft::{HardState, LogStore, Ready, Storage};
use dr_storage::{DataWrite, RocksStorage, StateMachine};

const ENTRY_BYTES: usize = 256;
const PROPOSERS: usize = 64;

/// A store in a fresh directory on the target's disk (not tmpfs, so
/// fsync costs what it costs), removed on drop.
struct BenchStore {
    store: Option<RocksStorage>,
    dir: PathBuf,
}

impl BenchStore {
    fn new(name: &str) -> Self {
        let dir = std::env::current_dir()
            .expect("working directory")
            .join("target")
            .join("bench-stores")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = RocksStorage::open(&dir, StateMachine::DataFamily).expect("bench store");
        Self {
            store: Some(store),
            dir,
        }
    }

    fn store(&mut self) -> &mut RocksStorage {
        self.store.as_mut().expect("open")
    }
}

impl Drop for BenchStore {
    fn drop(&mut self) {
        drop(self.store.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn entries(first: u64, count: u64, payload: &Bytes) -> Vec<Entry> {
    (first..first + count)
        .map(|index| Entry {
            term: 1,
            index,
            kind: EntryKind::Normal,
            payload: payload.clone(),
        })
        .collect()
}

/// One ready: `count` new entries and the hard state, one synced write.
fn append_synced(store: &mut RocksStorage, count: u64, payload: &Bytes) {
    let first = store.last_index() + 1;
    let ready = Ready {
        entries: entries(first, count, payload),
        hard_state: Some(HardState {
            term: 1,
            vote: Some(1),
            commit: first + count - 1,
        }),
        ..Ready::default()
    };
    store.persist_ready(&ready).expect("persist");
}

fn synced_appends(c: &mut Criterion) {
    let payload = Bytes::from(vec![0xAB; ENTRY_BYTES]);
    let mut group = c.benchmark_group("storage/synced_append");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    for batch in [1u64, 16, 256] {
        let mut bench = BenchStore::new("append");
        group.throughput(Throughput::Elements(batch));
        group.bench_function(BenchmarkId::new("dr-storage", batch), |b| {
            b.iter(|| append_synced(bench.store(), batch, &payload));
        });
    }
    group.finish();
}

fn applied_writes(c: &mut Criterion) {
    const WRITES_PER_APPLY: usize = 64;
    let mut bench = BenchStore::new("apply");
    let value = vec![0xCD; ENTRY_BYTES];
    let keys: Vec<Vec<u8>> = (0..1 << 16)
        .map(|i: u32| format!("key-{i:08}").into_bytes())
        .collect();
    let mut next = 0usize;
    let mut applied = 0u64;
    let mut group = c.benchmark_group("storage/apply");
    group.throughput(Throughput::Elements(WRITES_PER_APPLY as u64));
    group.bench_function("dr-storage/64 puts", |b| {
        b.iter(|| {
            let writes: Vec<DataWrite<'_>> = (0..WRITES_PER_APPLY)
                .map(|i| DataWrite::Put(&keys[(next + i * 7919) % keys.len()], &value))
                .collect();
            next += 1;
            applied += 1;
            bench.store().apply(&writes, applied, None).expect("apply");
        });
    });
    group.finish();
}

fn point_reads(c: &mut Criterion) {
    const KEYS: u32 = 100_000;
    let mut bench = BenchStore::new("read");
    let keys: Vec<Vec<u8>> = (0..KEYS)
        .map(|i| format!("key-{i:08}").into_bytes())
        .collect();
    let value = vec![0xEF; ENTRY_BYTES];
    for (n, chunk) in keys.chunks(1000).enumerate() {
        let writes: Vec<_> = chunk.iter().map(|k| DataWrite::Put(k, &value)).collect();
        bench
            .store()
            .apply(&writes, n as u64 + 1, None)
            .expect("fill");
    }
    let store = bench.store();
    let mut group = c.benchmark_group("storage/get");
    group.throughput(Throughput::Elements(1));
    let mut at = 0usize;
    group.bench_function("dr-storage/present", |b| {
        b.iter(|| {
            at = (at + 7919) % keys.len();
            store.get(&keys[at]).expect("get").expect("present")
        });
    });
    group.bench_function("dr-storage/absent", |b| {
        b.iter(|| {
            at = (at + 7919) % keys.len();
            let mut key = keys[at].clone();
            key.push(b'!');
            assert!(store.get(&key).expect("get").is_none());
        });
    });
    group.finish();
}

/// A proposal waiting for its entry to be durable.
type Proposal = Sender<()>;

/// How long the writer keeps gathering after a proposal arrives, when
/// more keep coming: well under one fsync, so it costs little latency and
/// lets proposers acknowledged by the last write join the next one.
const LINGER_IDLE: Duration = Duration::from_micros(50);
const LINGER_MAX: Duration = Duration::from_micros(250);

/// The writer of a group commit: blocks for a proposal, gathers what
/// arrives while proposals keep coming (at most `LINGER_MAX`), writes them
/// all as one synced ready, then acknowledges each. Returns (entries,
/// synced writes) when the proposal channel closes.
fn group_commit_writer(
    mut bench: BenchStore,
    proposals: Receiver<Proposal>,
    payload: Bytes,
    linger: bool,
) -> (u64, u64) {
    let (mut entries, mut writes) = (0, 0);
    let mut waiting = Vec::new();
    while let Ok(first) = proposals.recv() {
        waiting.push(first);
        waiting.extend(proposals.try_iter());
        let deadline = Instant::now() + LINGER_MAX;
        while linger && let Ok(next) = proposals.recv_timeout(LINGER_IDLE) {
            waiting.push(next);
            waiting.extend(proposals.try_iter());
            if Instant::now() >= deadline {
                break;
            }
        }
        append_synced(bench.store(), waiting.len() as u64, &payload);
        entries += waiting.len() as u64;
        writes += 1;
        for proposal in waiting.drain(..) {
            let _ = proposal.send(());
        }
    }
    (entries, writes)
}

/// 64 proposers, each keeping `window` proposals in flight (1: propose
/// again only once the last is durable), `rounds` proposals each. Returns
/// the time taken and entries per fsync.
fn group_commit_run(rounds: u64, window: usize, linger: bool) -> (Duration, f64) {
    let payload = Bytes::from(vec![0x42; ENTRY_BYTES]);
    let (to_writer, proposals) = unbounded::<Proposal>();
    let writer = {
        let bench = BenchStore::new("group");
        thread::spawn(move || group_commit_writer(bench, proposals, payload, linger))
    };
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let proposers: Vec<_> = (0..PROPOSERS)
        .map(|_| {
            let to_writer = to_writer.clone();
            let done = Arc::clone(&done);
            thread::spawn(move || {
                let (ack_to, acks) = bounded(window);
                let rounds = rounds.max(window as u64);
                for sent in 0..rounds {
                    if sent >= window as u64 {
                        acks.recv().expect("acknowledged");
                    }
                    to_writer.send(ack_to.clone()).expect("writer alive");
                }
                for _ in 0..window {
                    acks.recv().expect("acknowledged");
                }
                done.fetch_add(rounds, Ordering::Relaxed);
            })
        })
        .collect();
    for proposer in proposers {
        proposer.join().expect("proposer");
    }
    let elapsed = started.elapsed();
    drop(to_writer);
    let (entries, writes) = writer.join().expect("writer");
    (elapsed, entries as f64 / writes as f64)
}

fn group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("storage/group_commit");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(6));
    group.throughput(Throughput::Elements(PROPOSERS as u64));
    for (window, linger) in [(1usize, false), (1, true), (4, false), (4, true)] {
        let mut per_fsync = Vec::new();
        let policy = if linger { "linger" } else { "no linger" };
        let name = format!("64 proposers x {window} in flight, {policy}");
        group.bench_function(BenchmarkId::new("dr-storage", &name), |b| {
            b.iter_custom(|iters| {
                let (elapsed, entries_per_fsync) = group_commit_run(iters, window, linger);
                per_fsync.push(entries_per_fsync);
                elapsed
            });
        });
        let mean = per_fsync.iter().sum::<f64>() / per_fsync.len().max(1) as f64;
        println!("storage/group_commit: {mean:.1} entries per fsync with {name}");
    }
    group.finish();
}

criterion_group!(
    benches,
    synced_appends,
    applied_writes,
    point_reads,
    group_commit
);
criterion_main!(benches);
