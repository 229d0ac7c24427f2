//! A 3-node dr-raft cluster in one process, like openraft's
//! `benchmarks/minimal`: in-memory storage (`MemStorage`) and network
//! (crossbeam channels), empty requests, two worker threads (the leader on
//! one, both followers on the other, each busy-polling its inbox). It
//! measures committed proposals per second with 1, 64, 256 and 4096
//! concurrent proposers (each waits for its proposal to be applied at the
//! leader before proposing again), and ReadIndex reads per second.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_channel::{Receiver, Sender, unbounded};
use dr_codec::message::{ConfState, LogIndex, Message, NodeId};
use dr_raft::{Config, LogStore, MemStorage, RaftNode, Ready, Role, Snapshot, Storage};

const LEADER: NodeId = 1;
const TICK: Duration = Duration::from_millis(10);
/// Loop turns between clock reads (reading the clock on every turn of a
/// busy loop costs more than the work).
const TURNS_PER_CLOCK_READ: u32 = 256;
/// Applied entries kept in a log before it is snapshotted and compacted,
/// as a server would.
const LOG_ENTRIES_KEPT_MAX: u64 = 1 << 16;

#[derive(Clone, Copy)]
enum Work {
    Propose,
    Read,
}

struct BenchCluster {
    leader: RaftNode<MemStorage>,
    followers: Vec<RaftNode<MemStorage>>,
    to_leader: (Sender<Message>, Receiver<Message>),
    to_followers: (Sender<Message>, Receiver<Message>),
}

fn node(id: NodeId) -> RaftNode<MemStorage> {
    let conf = ConfState {
        voters: vec![1, 2, 3],
        ..ConfState::default()
    };
    let mut store = MemStorage::new();
    store
        .restore_snapshot(&Snapshot::bootstrap(conf))
        .expect("fresh store");
    let config = Config {
        // Generous timeouts: the busy loops must not trigger elections.
        election_ticks: 100,
        heartbeat_ticks: 5,
        ..Config::new(id)
    };
    RaftNode::new(config, store).expect("valid start")
}

/// Persists a ready; returns the last index it applies.
fn persist(node: &mut RaftNode<MemStorage>, ready: &mut Ready) -> Option<LogIndex> {
    node.storage_mut()
        .persist_ready(ready)
        .expect("memory store");
    ready.committed_entries.last().map(|e| e.index)
}

fn follower_loop(
    followers: &mut [RaftNode<MemStorage>],
    inbox: &Receiver<Message>,
    to_leader: &Sender<Message>,
    stop: &AtomicBool,
) {
    let mut local: VecDeque<Message> = VecDeque::new();
    let mut clock = Clock::new();
    while !stop.load(Ordering::Relaxed) {
        while let Some(message) = inbox.try_recv().ok().or_else(|| local.pop_front()) {
            let to = message.to;
            if let Some(node) = followers.iter_mut().find(|n| n.id() == to) {
                node.step(message).expect("valid message");
            }
        }
        for node in followers.iter_mut() {
            if node.has_ready() {
                let mut ready = node.ready();
                persist(node, &mut ready);
                for message in ready.messages.drain(..) {
                    if message.to == LEADER {
                        to_leader.send(message).expect("leader alive");
                    } else {
                        local.push_back(message);
                    }
                }
                node.advance();
                compact_if_long(node);
            }
        }
        if clock.tick_due() {
            followers.iter_mut().for_each(RaftNode::tick);
        }
    }
}

/// A tick source for busy loops that reads the clock only now and then.
struct Clock {
    last_tick: Instant,
    turns: u32,
}

impl Clock {
    fn new() -> Self {
        Self {
            last_tick: Instant::now(),
            turns: 0,
        }
    }

    fn tick_due(&mut self) -> bool {
        self.turns += 1;
        if self.turns < TURNS_PER_CLOCK_READ {
            return false;
        }
        self.turns = 0;
        if self.last_tick.elapsed() < TICK {
            return false;
        }
        self.last_tick = Instant::now();
        true
    }
}

/// Snapshots and compacts a log that holds many applied entries.
fn compact_if_long(node: &mut RaftNode<MemStorage>) {
    let applied = node.applied_index();
    if applied >= node.storage().first_index() + LOG_ENTRIES_KEPT_MAX {
        compact(node);
    }
}

fn compact(node: &mut RaftNode<MemStorage>) {
    let applied = node.applied_index();
    let conf = node.conf_state().clone();
    let store = node.storage_mut();
    let snapshot_index = store.snapshot().meta.index;
    if applied > snapshot_index {
        store
            .create_snapshot(applied, conf, Bytes::new())
            .expect("applied index is in the log");
    }
    // Keep a tail so a follower slightly behind needs no snapshot.
    let compact_to = applied.saturating_sub(LOG_ENTRIES_KEPT_MAX / 2);
    if compact_to >= store.first_index() {
        store.compact(compact_to).expect("covered by the snapshot");
    }
}

impl BenchCluster {
    fn new() -> Self {
        let mut cluster = Self {
            leader: node(LEADER),
            followers: vec![node(2), node(3)],
            to_leader: unbounded(),
            to_followers: unbounded(),
        };
        while cluster.leader.role() != Role::Leader {
            cluster.leader.tick();
            cluster.pump_single_threaded();
        }
        cluster
    }

    /// Delivers messages on the calling thread until nothing moves.
    fn pump_single_threaded(&mut self) {
        for _ in 0..100 {
            if self.leader.has_ready() {
                let mut ready = self.leader.ready();
                persist(&mut self.leader, &mut ready);
                for message in ready.messages.drain(..) {
                    self.to_followers.0.send(message).expect("channel open");
                }
                self.leader.advance();
            }
            while let Ok(message) = self.to_followers.1.try_recv() {
                let to = message.to;
                let node = self.followers.iter_mut().find(|n| n.id() == to);
                node.expect("a follower").step(message).expect("valid");
            }
            for node in &mut self.followers {
                if node.has_ready() {
                    let mut ready = node.ready();
                    persist(node, &mut ready);
                    for message in ready.messages.drain(..) {
                        self.to_leader.0.send(message).expect("channel open");
                    }
                    node.advance();
                }
            }
            while let Ok(message) = self.to_leader.1.try_recv() {
                self.leader.step(message).expect("valid");
            }
        }
    }

    /// Completes `count` operations with `concurrency` outstanding; the
    /// time it took.
    fn run(&mut self, work: Work, concurrency: usize, count: u64) -> Duration {
        let stop = AtomicBool::new(false);
        let Self {
            leader,
            followers,
            to_leader,
            to_followers,
        } = self;
        let elapsed = thread::scope(|scope| {
            let (inbox, outbox) = (&to_followers.1, &to_leader.0);
            let stop = &stop;
            scope.spawn(move || follower_loop(followers, inbox, outbox, stop));
            let elapsed = lead(
                leader,
                &to_leader.1,
                &to_followers.0,
                work,
                concurrency,
                count,
            );
            stop.store(true, Ordering::Relaxed);
            elapsed
        });
        self.compact();
        elapsed
    }

    /// Snapshots and compacts every log so runs do not accumulate memory.
    fn compact(&mut self) {
        std::iter::once(&mut self.leader)
            .chain(&mut self.followers)
            .for_each(compact);
    }
}

fn lead(
    leader: &mut RaftNode<MemStorage>,
    inbox: &Receiver<Message>,
    to_followers: &Sender<Message>,
    work: Work,
    concurrency: usize,
    count: u64,
) -> Duration {
    let started = Instant::now();
    let mut clock = Clock::new();
    // Outstanding proposals (index) or reads (context, read index).
    let mut proposals: VecDeque<LogIndex> = VecDeque::new();
    let mut reads_waiting = 0usize;
    let mut reads_confirmed: VecDeque<LogIndex> = VecDeque::new();
    let (mut issued, mut done) = (0u64, 0u64);
    while done < count {
        let outstanding = proposals.len() + reads_waiting + reads_confirmed.len();
        for _ in outstanding..concurrency.min((count - issued) as usize + outstanding) {
            issued += 1;
            match work {
                Work::Propose => {
                    let proposal = leader.propose(Bytes::new()).expect("leader");
                    proposals.push_back(proposal.index);
                }
                Work::Read => {
                    leader.read_index(issued).expect("leader");
                    reads_waiting += 1;
                }
            }
        }
        while let Ok(message) = inbox.try_recv() {
            leader.step(message).expect("valid message");
        }
        if leader.has_ready() {
            let mut ready = leader.ready();
            let applied = persist(leader, &mut ready);
            for message in ready.messages.drain(..) {
                to_followers.send(message).expect("followers alive");
            }
            for read in ready.read_states.drain(..) {
                reads_waiting -= 1;
                reads_confirmed.push_back(read.result.expect("still leading"));
            }
            leader.advance();
            compact_if_long(leader);
            let applied = applied.unwrap_or(0).max(leader.applied_index());
            while proposals.front().is_some_and(|&index| index <= applied) {
                proposals.pop_front();
                done += 1;
            }
            while reads_confirmed
                .front()
                .is_some_and(|&index| index <= applied)
            {
                reads_confirmed.pop_front();
                done += 1;
            }
        }
        if clock.tick_due() {
            leader.tick();
        }
    }
    started.elapsed()
}

fn proposals(c: &mut Criterion) {
    let mut cluster = BenchCluster::new();
    let mut group = c.benchmark_group("raft/commit");
    group.throughput(Throughput::Elements(1));
    for concurrency in [1, 64, 256, 4096] {
        group.bench_function(BenchmarkId::new("dr", concurrency), |b| {
            b.iter_custom(|iters| cluster.run(Work::Propose, concurrency, iters));
        });
    }
    group.finish();
}

fn reads(c: &mut Criterion) {
    let mut cluster = BenchCluster::new();
    let mut group = c.benchmark_group("raft/read_index");
    group.throughput(Throughput::Elements(1));
    for concurrency in [1, 64, 256, 4096] {
        group.bench_function(BenchmarkId::new("dr", concurrency), |b| {
            b.iter_custom(|iters| cluster.run(Work::Read, concurrency, iters));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = dr_benches::criterion_config(Duration::from_secs(1), Duration::from_secs(3));
    targets = proposals, reads
}
criterion_main!(benches);
