//! One simulated run: a cluster of [`RaftNode`]s over [`MemStorage`] on
//! virtual time, a network that drops, delays, reorders and duplicates
//! messages and partitions nodes, crashes at any point of the ready cycle,
//! clients writing and reading a key-value store, and the safety checks.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};
use dr_codec::message::{ConfState, EntryKind, LogIndex, Message, NodeId, Term};
use dr_raft::{
    Config, LeaseTracker, LogStore, MemStorage, ProposeError, RaftNode, ReadError, Ready, Role,
    Snapshot, Storage,
};

use crate::linearizability::{self, Operation, RegisterOp};
use crate::rng::Rng;

const TICK_US: u64 = 10_000;
const ELECTION_TICKS: u32 = 10;
/// A resumed process takes up what waited for it over this long (its
/// engine is slow to catch up; its clients are served meanwhile).
const RESUME_SPREAD_US: u64 = 20_000;
const CLIENT_TIMEOUT_US: u64 = 1_000_000;
/// Time for the healed cluster to commit a new write.
const LIVENESS_DEADLINE_US: u64 = 4_000_000;
const QUIET_US: u64 = 1_000_000;
/// A run that needs more events than this is stuck.
const EVENTS_MAX: u64 = 20_000_000;
/// Entries applied between a node's snapshots, and kept below them.
const SNAPSHOT_EVERY_ENTRIES: u64 = 24;
const LOG_KEPT_BELOW_SNAPSHOT: u64 = 4;

/// What a run did, for the summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Events processed.
    pub events: u64,
    /// Writes acknowledged to clients.
    pub writes_acked: u64,
    /// Reads answered.
    pub reads_answered: u64,
    /// Operations in the checked history.
    pub history_len: u64,
    /// Node crashes.
    pub crashes: u64,
    /// The highest term reached.
    pub max_term: Term,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Reads answered on the leader's lease, without a round.
    pub lease_reads: u64,
    /// Process pauses.
    pub pauses: u64,
}

type OpId = u64;

enum Event {
    Deliver(Message),
    Tick(NodeId),
    ClientNext(usize),
    ClientTimeout(OpId),
    Nemesis,
    Restart(NodeId),
    Heal,
    /// A node's log write (async persistence) has become durable.
    Persisted {
        id: NodeId,
        generation: u64,
        number: u64,
    },
}

/// A ready's write under way (async persistence): what it persists and
/// the messages that wait for it.
struct PendingWrite {
    number: u64,
    write: Ready,
    messages: Vec<Message>,
}

struct SimNode {
    raft: Option<RaftNode<MemStorage>>,
    /// The durable state while crashed.
    disk: MemStorage,
    kv: BTreeMap<u64, u64>,
    applied: LogIndex,
    snapshot_index: LogIndex,
    /// Proposals made here: index -> (term, op).
    writes: BTreeMap<LogIndex, (Term, OpId)>,
    /// Confirmed reads waiting for the apply: (op, read index).
    reads: Vec<(OpId, LogIndex)>,
    last_commit: LogIndex,
    lease: SimLease,
    /// A paused process (a GC pause, SIGSTOP): until this virtual time it
    /// handles nothing, while time, and the other nodes, go on.
    paused_until: u64,
    /// Log writes under way, oldest first (async persistence).
    writing: VecDeque<PendingWrite>,
    /// Incremented on every restart, so a write of a crashed incarnation
    /// is never taken for one of the next.
    generation: u64,
}

/// How long a leader lease lasts after its confirmed round was first
/// seen: three quarters of the `election_ticks - 1` ticks a follower that
/// echoed it refuses votes for (as drkv's `LeaseClock`).
const LEASE_US: u64 = (ELECTION_TICKS as u64 - 1) * TICK_US * 3 / 4;

/// A leader lease on virtual time (µs): dr-raft's tracker, as drkv uses
/// it on the monotonic clock.
type SimLease = LeaseTracker<u64, u64>;

#[derive(Clone, Copy)]
enum ClientOp {
    Put(u64),
    Get,
}

struct PendingOp {
    client: usize,
    key: u64,
    op: ClientOp,
    call: u64,
}

struct Faults {
    drop_ppm: u64,
    duplicate_ppm: u64,
    latency_max_us: u64,
    crash_in_ready_ppm: u64,
}

/// A committed entry as first observed applied.
struct CommittedEntry {
    term: Term,
    payload: Bytes,
    /// The highest term any node had reached when it was first applied:
    /// leaders of later terms must hold it.
    max_term_then: Term,
}

pub(crate) struct World {
    seed: u64,
    rng: Rng,
    now: u64,
    seq: u64,
    events: BTreeMap<(u64, u64), Event>,
    nodes: BTreeMap<NodeId, SimNode>,
    configs: BTreeMap<NodeId, Config>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    faults: Faults,
    faults_active: bool,
    clients: Vec<Option<NodeId>>,
    clients_active: bool,
    pending: BTreeMap<OpId, PendingOp>,
    next_op: OpId,
    next_value: u64,
    keys: u64,
    history: Vec<Operation>,
    committed: BTreeMap<LogIndex, CommittedEntry>,
    leaders_by_term: BTreeMap<Term, NodeId>,
    max_term: Term,
    heal_time: u64,
    first_write_after_heal: Option<u64>,
    /// (index, term) of every write acknowledged to a client.
    acked_writes: Vec<(LogIndex, Term)>,
    stats: RunStats,
}

fn encode_put(op: OpId, key: u64, value: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(24);
    out.put_u64_le(op);
    out.put_u64_le(key);
    out.put_u64_le(value);
    out.freeze()
}

fn decode_put(payload: &[u8]) -> Result<(OpId, u64, u64), String> {
    let words: Vec<u64> = payload
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
        .collect();
    match words[..] {
        [op, key, value] if payload.len() == 24 => Ok((op, key, value)),
        _ => Err(format!(
            "a normal entry of {} bytes is not a put",
            payload.len()
        )),
    }
}

fn encode_kv(kv: &BTreeMap<u64, u64>) -> Bytes {
    let mut out = BytesMut::with_capacity(16 * kv.len());
    for (key, value) in kv {
        out.put_u64_le(*key);
        out.put_u64_le(*value);
    }
    out.freeze()
}

fn decode_kv(data: &[u8]) -> BTreeMap<u64, u64> {
    data.chunks_exact(16)
        .map(|pair| {
            let key = u64::from_le_bytes(pair[..8].try_into().expect("8 bytes"));
            let value = u64::from_le_bytes(pair[8..].try_into().expect("8 bytes"));
            (key, value)
        })
        .collect()
}

impl World {
    /// A run of `fault_phase_us` virtual microseconds of faults, then
    /// healing.
    pub(crate) fn new(seed: u64, fault_phase_us: u64) -> Self {
        let mut rng = Rng::new(seed);
        let node_count = if rng.chance(500_000) { 3 } else { 5 };
        let faults = Faults {
            drop_ppm: rng.pick(&[0, 10_000, 50_000, 200_000]),
            duplicate_ppm: rng.pick(&[0, 10_000, 50_000]),
            latency_max_us: rng.pick(&[1_000, 10_000, 60_000]),
            crash_in_ready_ppm: rng.pick(&[0, 500, 3_000]),
        };
        let pre_vote = rng.chance(750_000);
        let check_quorum = rng.chance(750_000);
        let voters: Vec<NodeId> = (1..=node_count).collect();
        let conf = ConfState {
            voters: voters.clone(),
            ..ConfState::default()
        };
        let mut world = Self {
            seed,
            now: 0,
            seq: 0,
            events: BTreeMap::new(),
            nodes: BTreeMap::new(),
            configs: BTreeMap::new(),
            blocked: BTreeSet::new(),
            faults,
            faults_active: true,
            clients: vec![None; rng.range(1, 6) as usize],
            clients_active: true,
            pending: BTreeMap::new(),
            next_op: 1,
            next_value: 1,
            keys: rng.range(1, 5),
            history: Vec::new(),
            committed: BTreeMap::new(),
            leaders_by_term: BTreeMap::new(),
            max_term: 0,
            heal_time: fault_phase_us,
            first_write_after_heal: None,
            acked_writes: Vec::new(),
            stats: RunStats::default(),
            rng,
        };
        for &id in &voters {
            let config = Config {
                election_ticks: ELECTION_TICKS,
                heartbeat_ticks: 2,
                election_jitter_seed: seed.wrapping_mul(31).wrapping_add(id),
                pre_vote,
                check_quorum,
                // Leases rest on leader stickiness, so they come with it.
                lease_reads: check_quorum,
                append_bytes_max: 200,
                inflight_messages_max: 4,
                inflight_bytes_max: 2_000,
                snapshot_chunk_bytes: 48,
                snapshot_chunks_inflight_max: 2,
                // No entry cache, one that keeps a few entries (so reads
                // straddle it and the store), or one that keeps them all.
                entry_cache_bytes_max: [0, 400, 8 << 20][(seed / 7 % 3) as usize],
                // Half the runs write logs behind the nodes' backs, the
                // writes ending a while later, or never if the node crashes.
                async_persist: seed / 11 % 2 == 1,
                ..Config::new(id)
            };
            let mut disk = MemStorage::new();
            disk.restore_snapshot(&Snapshot::bootstrap(conf.clone()))
                .expect("fresh store");
            world.configs.insert(id, config);
            world.nodes.insert(
                id,
                SimNode {
                    raft: None,
                    disk,
                    kv: BTreeMap::new(),
                    applied: 0,
                    snapshot_index: 0,
                    writes: BTreeMap::new(),
                    reads: Vec::new(),
                    last_commit: 0,
                    lease: SimLease::new(LEASE_US),
                    paused_until: 0,
                    writing: VecDeque::new(),
                    generation: 0,
                },
            );
            world.restart(id);
            let phase = world.rng.range(0, TICK_US);
            world.schedule(phase, Event::Tick(id));
        }
        for client in 0..world.clients.len() {
            let start = world.rng.range(0, 100_000);
            world.schedule(start, Event::ClientNext(client));
        }
        let first = world.rng.range(50_000, 300_000);
        world.schedule(first, Event::Nemesis);
        world.schedule(fault_phase_us, Event::Heal);
        world
    }

    fn schedule(&mut self, after_us: u64, event: Event) {
        self.seq += 1;
        self.events.insert((self.now + after_us, self.seq), event);
    }

    /// Runs to the end; the reason of the first failed check otherwise.
    pub(crate) fn run(mut self) -> Result<RunStats, String> {
        let end = self.heal_time + LIVENESS_DEADLINE_US + QUIET_US;
        while let Some(((time, _), event)) = self.events.pop_first() {
            if time > end {
                break;
            }
            self.now = time;
            self.stats.events += 1;
            if self.stats.events > EVENTS_MAX {
                return Err(format!("more than {EVENTS_MAX} events: the run is stuck"));
            }
            if self.now >= self.heal_time + LIVENESS_DEADLINE_US {
                self.clients_active = false;
            }
            self.handle(event)?;
            self.check_every_step()?;
            if self.stats.events.is_multiple_of(16) {
                self.check_logs()?;
            }
        }
        self.check_logs()?;
        self.check_end()?;
        self.stats.max_term = self.max_term;
        self.stats.history_len = self.history.len() as u64;
        Ok(self.stats)
    }

    fn handle(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Deliver(message) => match self.resumes_at(message.to) {
                // What reached a paused process waits for it. Its clients
                // get in first (below): a resumed process may answer them,
                // as drkv's connection threads do, before its engine has
                // read what the others said meanwhile.
                Some(at) => {
                    let after =
                        at - self.now + self.rng.range(RESUME_SPREAD_US, 2 * RESUME_SPREAD_US);
                    self.schedule(after, Event::Deliver(message));
                }
                None => self.deliver(message)?,
            },
            Event::Tick(id) => {
                // A paused process misses its ticks.
                if self.resumes_at(id).is_none() {
                    if let Some(raft) = self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut()) {
                        raft.tick();
                    }
                    self.drive(id)?;
                }
                self.schedule(TICK_US, Event::Tick(id));
            }
            Event::ClientNext(client) => {
                match self.clients[client].and_then(|target| self.resumes_at(target)) {
                    // Some clients wait for a paused node; others give up
                    // on it and try another (so writes go on elsewhere).
                    Some(at) if self.rng.chance(500_000) => {
                        let after = at - self.now + self.rng.range(0, RESUME_SPREAD_US);
                        self.schedule(after, Event::ClientNext(client));
                    }
                    Some(_) => {
                        self.clients[client] = None;
                        self.client_next(client)?;
                    }
                    None => self.client_next(client)?,
                }
            }
            Event::ClientTimeout(op) => self.finish(op, None),
            Event::Nemesis => self.nemesis()?,
            Event::Restart(id) => {
                if self.nodes[&id].raft.is_none() {
                    self.restart(id);
                    self.drive(id)?;
                }
            }
            Event::Persisted {
                id,
                generation,
                number,
            } => {
                let node = &self.nodes[&id];
                if node.raft.is_none() || node.generation != generation {
                    return Ok(());
                }
                if let Some(at) = self.resumes_at(id) {
                    // The disk finished; the paused process notices later.
                    self.schedule(
                        at - self.now,
                        Event::Persisted {
                            id,
                            generation,
                            number,
                        },
                    );
                    return Ok(());
                }
                if self.finish_writes(id, number)? {
                    let raft = self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut());
                    raft.expect("running").on_persisted(number);
                    self.drive(id)?;
                }
            }
            Event::Heal => {
                self.faults_active = false;
                self.blocked.clear();
                let crashed: Vec<NodeId> = self
                    .nodes
                    .iter()
                    .filter(|(_, n)| n.raft.is_none())
                    .map(|(&id, _)| id)
                    .collect();
                for id in crashed {
                    self.restart(id);
                    self.drive(id)?;
                }
            }
        }
        Ok(())
    }

    /// When `id` resumes, if it is paused now.
    fn resumes_at(&self, id: NodeId) -> Option<u64> {
        let until = self.nodes.get(&id)?.paused_until;
        (self.now < until).then_some(until)
    }

    fn deliver(&mut self, message: Message) -> Result<(), String> {
        let (from, to) = (message.from, message.to);
        if self.blocked.contains(&(from, to)) {
            return Ok(());
        }
        let Some(raft) = self.nodes.get_mut(&to).and_then(|n| n.raft.as_mut()) else {
            return Ok(());
        };
        raft.step(message.clone())
            .map_err(|error| format!("node {to} refused {message:?} from node {from}: {error}"))?;
        self.drive(to)
    }

    fn send(&mut self, message: Message) {
        let faults = self.faults_active;
        if faults && self.rng.chance(self.faults.drop_ppm) {
            return;
        }
        let latency_max = if faults {
            self.faults.latency_max_us
        } else {
            2_000
        };
        let latency = self.rng.range(50, latency_max);
        if faults && self.rng.chance(self.faults.duplicate_ppm) {
            let again = self.rng.range(50, latency_max);
            self.schedule(again, Event::Deliver(message.clone()));
        }
        self.schedule(latency, Event::Deliver(message));
    }

    /// Processes every ready of `id`, with crashes at the two points of the
    /// cycle where they lose the most: before persisting, after persisting
    /// but before sending.
    fn drive(&mut self, id: NodeId) -> Result<(), String> {
        loop {
            let now = self.now;
            let Some(node) = self.nodes.get_mut(&id) else {
                return Ok(());
            };
            let Some(raft) = node.raft.as_mut() else {
                return Ok(());
            };
            if !raft.has_ready() {
                return Ok(());
            }
            let mut ready = raft.ready();
            // Before this ready's messages leave: a round is dated no
            // later than its first send.
            node.lease.observe(raft.read_rounds(), now);
            if self.crash_now() {
                self.crash(id);
                return Ok(());
            }
            let behind = self.configs[&id].async_persist && !ready.has_snapshot_data();
            if behind {
                self.write_behind(id, &mut ready)?;
            } else {
                // Synchronously: every write under way ends first.
                self.finish_writes(id, u64::MAX)?;
                if self.nodes[&id].raft.is_none() {
                    return Ok(());
                }
                self.persist(id, &ready)?;
                if self.crash_now() {
                    self.crash(id);
                    return Ok(());
                }
                for message in std::mem::take(&mut ready.messages) {
                    self.send(message);
                }
            }
            self.apply(id, ready.committed_entries)?;
            self.read_states(id, ready.read_states);
            let raft = self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut());
            let raft = raft.expect("running");
            if behind {
                raft.advance_persisting();
            } else {
                raft.advance();
            }
            self.serve_reads(id);
            self.maybe_snapshot(id)?;
        }
    }

    /// Async persistence: sends what may leave before the write, stores
    /// the configuration (it goes with the apply), and queues the write,
    /// to end after a disk's delay.
    fn write_behind(&mut self, id: NodeId, ready: &mut Ready) -> Result<(), String> {
        for message in ready.take_messages_before_persist() {
            self.send(message);
        }
        let node = self.nodes.get_mut(&id).expect("node exists");
        if let Some(conf) = &ready.conf_state {
            let store = node.raft.as_mut().expect("running").storage_mut();
            store
                .set_conf_state(conf.clone())
                .map_err(|e| format!("node {id}: conf state: {e}"))?;
        }
        let write = Ready {
            number: ready.number,
            entries: std::mem::take(&mut ready.entries),
            hard_state: ready.hard_state.take(),
            ..Ready::default()
        };
        node.writing.push_back(PendingWrite {
            number: ready.number,
            write,
            messages: std::mem::take(&mut ready.messages),
        });
        let generation = node.generation;
        // A slow disk while faults run widens the window in which a
        // write is acknowledged by peers but not yet durable here.
        let slowest = if self.faults_active { 30_000 } else { 3_000 };
        let delay = self.rng.range(100, slowest);
        let number = ready.number;
        self.schedule(
            delay,
            Event::Persisted {
                id,
                generation,
                number,
            },
        );
        Ok(())
    }

    /// Ends the writes under way up to ready `number`, in order: each is
    /// stored, then its messages leave. False if there were none (or the
    /// node crashed meanwhile).
    fn finish_writes(&mut self, id: NodeId, number: u64) -> Result<bool, String> {
        let mut finished = false;
        loop {
            let node = self.nodes.get_mut(&id).expect("node exists");
            if node.writing.front().is_none_or(|w| w.number > number) {
                return Ok(finished);
            }
            if self.crash_now() {
                self.crash(id);
                return Ok(false);
            }
            let node = self.nodes.get_mut(&id).expect("node exists");
            let pending = node.writing.pop_front().expect("checked above");
            node.raft
                .as_mut()
                .expect("running")
                .storage_mut()
                .persist_ready(&pending.write)
                .map_err(|e| format!("node {id}: persisting ready {}: {e}", pending.number))?;
            for message in pending.messages {
                self.send(message);
            }
            finished = true;
        }
    }

    fn crash_now(&mut self) -> bool {
        self.faults_active && self.rng.chance(self.faults.crash_in_ready_ppm)
    }

    fn persist(&mut self, id: NodeId, ready: &Ready) -> Result<(), String> {
        let node = self.nodes.get_mut(&id).expect("node exists");
        let raft = node.raft.as_mut().expect("running");
        let store = raft.storage_mut();
        let fail = |what: &str, error: dr_raft::StorageError| format!("node {id}: {what}: {error}");
        store
            .persist_ready(ready)
            .map_err(|e| fail("persisting a ready", e))?;
        if let Some(conf) = &ready.conf_state {
            store
                .set_conf_state(conf.clone())
                .map_err(|e| fail("conf state", e))?;
        }
        if let Some(snapshot) = &ready.snapshot {
            node.kv = decode_kv(&store.snapshot().data);
            node.applied = snapshot.index;
            node.snapshot_index = snapshot.index;
            self.stats.snapshots_installed += 1;
            // Proposals the snapshot covers: their fate is unknown here.
            let covered: Vec<OpId> = node
                .writes
                .range(..=snapshot.index)
                .map(|(_, &(_, op))| op)
                .collect();
            node.writes.retain(|&index, _| index > snapshot.index);
            for op in covered {
                self.finish(op, None);
            }
        }
        Ok(())
    }

    fn apply(&mut self, id: NodeId, entries: Vec<dr_codec::message::Entry>) -> Result<(), String> {
        for entry in entries {
            let node = self.nodes.get_mut(&id).expect("node exists");
            if entry.index != node.applied + 1 {
                return Err(format!(
                    "node {id} applied index {} after {}",
                    entry.index, node.applied
                ));
            }
            node.applied = entry.index;
            match self.committed.get(&entry.index) {
                Some(known) if known.term != entry.term || known.payload != entry.payload => {
                    return Err(format!(
                        "state machine safety: node {id} applied term {} at index {}, another node term {}",
                        entry.term, entry.index, known.term
                    ));
                }
                Some(_) => {}
                None => {
                    let first_seen = CommittedEntry {
                        term: entry.term,
                        payload: entry.payload.clone(),
                        max_term_then: self.max_term,
                    };
                    self.committed.insert(entry.index, first_seen);
                }
            }
            if entry.kind == EntryKind::Normal {
                let (_, key, value) = decode_put(&entry.payload)?;
                node.kv.insert(key, value);
            }
            let proposed_here = node.writes.remove(&entry.index);
            if let Some((term, op)) = proposed_here {
                if term == entry.term {
                    self.acked_writes.push((entry.index, entry.term));
                    self.finish(op, Some(self.now));
                } else {
                    self.fail(op);
                }
            }
        }
        Ok(())
    }

    fn read_states(&mut self, id: NodeId, reads: Vec<dr_raft::ReadState>) {
        for read in reads {
            match read.result {
                Ok(index) => {
                    let node = self.nodes.get_mut(&id).expect("node exists");
                    node.reads.push((read.context, index));
                }
                Err(_) => self.fail(read.context),
            }
        }
    }

    fn serve_reads(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        let applied = node.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = node
            .reads
            .drain(..)
            .partition(|&(_, index)| index <= applied);
        node.reads = waiting;
        for (op, _) in ready {
            let Some(pending) = self.pending.get(&op) else {
                continue;
            };
            let value = self.nodes[&id].kv.get(&pending.key).copied();
            self.finish_read(op, value);
        }
    }

    fn maybe_snapshot(&mut self, id: NodeId) -> Result<(), String> {
        let node = self.nodes.get_mut(&id).expect("node exists");
        if node.applied < node.snapshot_index + SNAPSHOT_EVERY_ENTRIES {
            return Ok(());
        }
        let raft = node.raft.as_mut().expect("running");
        let conf = raft.conf_state().clone();
        let store = raft.storage_mut();
        store
            .create_snapshot(node.applied, conf, encode_kv(&node.kv))
            .map_err(|e| format!("node {id}: snapshot at {}: {e}", node.applied))?;
        node.snapshot_index = node.applied;
        let compact_to = node.applied - LOG_KEPT_BELOW_SNAPSHOT;
        if compact_to >= store.first_index() {
            store
                .compact(compact_to)
                .map_err(|e| format!("node {id}: compact to {compact_to}: {e}"))?;
        }
        Ok(())
    }

    fn crash(&mut self, id: NodeId) {
        self.stats.crashes += 1;
        let node = self.nodes.get_mut(&id).expect("node exists");
        let Some(raft) = node.raft.take() else {
            return;
        };
        node.disk = raft.storage().clone();
        node.kv.clear();
        node.lease = SimLease::new(LEASE_US);
        node.paused_until = 0;
        // Writes under way are lost with the process.
        node.writing.clear();
        let writes: Vec<OpId> = node.writes.values().map(|&(_, op)| op).collect();
        let reads: Vec<OpId> = node.reads.iter().map(|&(op, _)| op).collect();
        node.writes.clear();
        node.reads.clear();
        for op in writes {
            self.finish(op, None);
        }
        // Reads still being confirmed are lost with the node; the client
        // times out on them.
        for op in reads {
            self.fail(op);
        }
        let after = self.rng.range(10_000, 800_000);
        self.schedule(after, Event::Restart(id));
    }

    /// Starts `id` from its disk; the state machine, being volatile, is
    /// rebuilt from the snapshot and the log after it.
    fn restart(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        node.generation += 1;
        let snapshot = node.disk.snapshot().clone();
        node.disk
            .set_conf_state(snapshot.meta.conf_state.clone())
            .expect("memory store");
        node.kv = decode_kv(&snapshot.data);
        node.applied = snapshot.meta.index;
        node.snapshot_index = snapshot.meta.index;
        let config = Config {
            applied: snapshot.meta.index,
            ..self.configs[&id].clone()
        };
        let raft = RaftNode::new(config, node.disk.clone())
            .unwrap_or_else(|e| panic!("node {id} cannot restart: {e}"));
        node.last_commit = raft.commit_index();
        node.raft = Some(raft);
    }

    fn running(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.raft.is_some())
            .map(|(&id, _)| id)
            .collect()
    }

    fn client_next(&mut self, client: usize) -> Result<(), String> {
        if !self.clients_active {
            return Ok(());
        }
        let running = self.running();
        if running.is_empty() {
            self.schedule(50_000, Event::ClientNext(client));
            return Ok(());
        }
        let awake: Vec<NodeId> = running
            .iter()
            .copied()
            .filter(|&id| self.resumes_at(id).is_none())
            .collect();
        let target = match self.clients[client] {
            Some(id) if running.contains(&id) => id,
            _ if !awake.is_empty() => self.rng.pick(&awake),
            _ => self.rng.pick(&running),
        };
        if let Some(at) = self.resumes_at(target) {
            // Only a paused node known: wait for it.
            let after = at - self.now + self.rng.range(0, RESUME_SPREAD_US);
            self.schedule(after, Event::ClientNext(client));
            return Ok(());
        }
        self.clients[client] = Some(target);
        let key = self.rng.range(0, self.keys);
        let op = if self.rng.chance(500_000) {
            self.next_value += 1;
            ClientOp::Put(self.next_value)
        } else {
            ClientOp::Get
        };
        let op_id = self.next_op;
        self.next_op += 1;
        self.pending.insert(
            op_id,
            PendingOp {
                client,
                key,
                op,
                call: self.now,
            },
        );
        self.schedule(CLIENT_TIMEOUT_US, Event::ClientTimeout(op_id));
        let node = self.nodes.get_mut(&target).expect("running node");
        let raft = node.raft.as_mut().expect("running node");
        let leader_hint = match op {
            ClientOp::Put(value) => match raft.propose(encode_put(op_id, key, value)) {
                Ok(proposal) => {
                    node.writes.insert(proposal.index, (proposal.term, op_id));
                    None
                }
                Err(ProposeError::NotLeader { leader }) => Some(leader),
                Err(_) => Some(None),
            },
            ClientOp::Get => {
                // Half the reads a leased leader gets go on its lease.
                let on_lease = raft
                    .lease_read_index()
                    .filter(|_| node.lease.holds_at(self.now) && self.rng.chance(500_000));
                match on_lease {
                    Some(index) => {
                        node.reads.push((op_id, index));
                        self.stats.lease_reads += 1;
                        None
                    }
                    None => match raft.read_index(op_id) {
                        Ok(()) => None,
                        Err(ReadError::NotLeader { leader }) => Some(leader),
                        Err(_) => Some(None),
                    },
                }
            }
        };
        if let Some(leader) = leader_hint {
            self.fail(op_id);
            self.clients[client] = leader;
        }
        self.serve_reads(target);
        self.drive(target)
    }

    /// Records a finished operation (`ret` None: outcome unknown).
    fn finish(&mut self, op: OpId, ret: Option<u64>) {
        let Some(pending) = self.pending.remove(&op) else {
            return;
        };
        match pending.op {
            ClientOp::Put(value) => {
                self.history.push(Operation {
                    key: pending.key,
                    op: RegisterOp::Write(value),
                    call: pending.call,
                    ret,
                });
                if ret.is_some() {
                    self.stats.writes_acked += 1;
                    if pending.call >= self.heal_time && self.first_write_after_heal.is_none() {
                        self.first_write_after_heal = Some(self.now);
                    }
                }
            }
            // A read with no answer tells nothing.
            ClientOp::Get => {}
        }
        self.next_client_op(pending.client, ret.is_some());
    }

    fn finish_read(&mut self, op: OpId, value: Option<u64>) {
        let Some(pending) = self.pending.remove(&op) else {
            return;
        };
        self.stats.reads_answered += 1;
        self.history.push(Operation {
            key: pending.key,
            op: RegisterOp::Read(value),
            call: pending.call,
            ret: Some(self.now),
        });
        self.next_client_op(pending.client, true);
    }

    /// The operation had no effect.
    fn fail(&mut self, op: OpId) {
        if let Some(pending) = self.pending.remove(&op) {
            self.next_client_op(pending.client, false);
        }
    }

    fn next_client_op(&mut self, client: usize, succeeded: bool) {
        let think = if succeeded {
            self.rng.range(0, 2_000)
        } else {
            self.rng.range(5_000, 30_000)
        };
        self.schedule(think, Event::ClientNext(client));
    }

    fn nemesis(&mut self) -> Result<(), String> {
        if !self.faults_active {
            return Ok(());
        }
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        match self.rng.range(0, 100) {
            0..30 => {
                self.blocked.clear();
                let mut shuffled = ids.clone();
                for i in (1..shuffled.len()).rev() {
                    let j = self.rng.range(0, i as u64 + 1) as usize;
                    shuffled.swap(i, j);
                }
                let split = self.rng.range(1, ids.len() as u64) as usize;
                let (a, b) = shuffled.split_at(split);
                for &x in a {
                    for &y in b {
                        self.blocked.insert((x, y));
                        self.blocked.insert((y, x));
                    }
                }
            }
            30..40 => {
                for &x in &ids {
                    for &y in &ids {
                        if x != y && self.rng.chance(300_000) {
                            self.blocked.insert((x, y));
                        }
                    }
                }
            }
            40..55 => {
                let victim = self.rng.pick(&ids);
                for &other in &ids {
                    if other != victim {
                        self.blocked.insert((victim, other));
                        self.blocked.insert((other, victim));
                    }
                }
            }
            55..75 => self.blocked.clear(),
            75..90 => {
                let running = self.running();
                if !running.is_empty() {
                    let victim = self.rng.pick(&running);
                    self.crash(victim);
                }
            }
            90..95 => {
                // Pause a process, most often the leader, for up to a few
                // election timeouts: the case leader leases must survive.
                let running = self.running();
                if !running.is_empty() {
                    let leader = running.iter().copied().find(|id| {
                        self.nodes[id]
                            .raft
                            .as_ref()
                            .is_some_and(|r| r.role() == Role::Leader)
                    });
                    let victim = match leader {
                        Some(leader) if self.rng.chance(750_000) => leader,
                        _ => self.rng.pick(&running),
                    };
                    let pause = self.rng.range(20_000, 400_000);
                    self.nodes.get_mut(&victim).expect("running").paused_until = self.now + pause;
                    self.stats.pauses += 1;
                }
            }
            _ => {
                let leader = self.running().into_iter().find(|id| {
                    self.nodes[id]
                        .raft
                        .as_ref()
                        .is_some_and(|r| r.role() == Role::Leader)
                });
                if let Some(leader) = leader.filter(|&id| self.resumes_at(id).is_none()) {
                    let target = self.rng.pick(&ids);
                    let raft = self.nodes.get_mut(&leader).and_then(|n| n.raft.as_mut());
                    let _ = raft.expect("running leader").transfer_leader(target);
                    self.drive(leader)?;
                }
            }
        }
        let next = self.rng.range(20_000, 400_000);
        self.schedule(next, Event::Nemesis);
        Ok(())
    }

    /// Election safety and monotone commit, after every event.
    fn check_every_step(&mut self) -> Result<(), String> {
        for (&id, node) in &mut self.nodes {
            let Some(raft) = &node.raft else { continue };
            self.max_term = self.max_term.max(raft.term());
            if raft.role() == Role::Leader {
                let leader = *self.leaders_by_term.entry(raft.term()).or_insert(id);
                if leader != id {
                    return Err(format!(
                        "election safety: nodes {leader} and {id} both led term {}",
                        raft.term()
                    ));
                }
            }
            if raft.commit_index() < node.last_commit {
                return Err(format!(
                    "node {id}: commit went back from {} to {}",
                    node.last_commit,
                    raft.commit_index()
                ));
            }
            node.last_commit = raft.commit_index();
        }
        Ok(())
    }

    /// Log matching between every pair of running nodes, and leader
    /// completeness for every leader.
    fn check_logs(&self) -> Result<(), String> {
        let stores: Vec<(NodeId, &RaftNode<MemStorage>)> = self
            .nodes
            .iter()
            .filter_map(|(&id, n)| n.raft.as_ref().map(|raft| (id, raft)))
            .collect();
        for (i, &(a, raft_a)) in stores.iter().enumerate() {
            for &(b, raft_b) in &stores[i + 1..] {
                check_log_matching(a, raft_a.storage(), b, raft_b.storage())?;
            }
        }
        for &(id, raft) in &stores {
            if raft.role() != Role::Leader {
                continue;
            }
            let (store, term) = (raft.storage(), raft.term());
            let first = store.first_index();
            for (&index, entry) in self.committed.range(first..) {
                if entry.max_term_then < term && store.term(index) != Ok(entry.term) {
                    return Err(format!(
                        "leader completeness: leader {id} of term {term} lacks index {index} (term {}) committed by term {}",
                        entry.term, entry.max_term_then
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_end(&self) -> Result<(), String> {
        let Some(acked) = self.first_write_after_heal else {
            return Err(format!(
                "liveness: no write committed within {} ms of healing",
                LIVENESS_DEADLINE_US / 1000
            ));
        };
        debug_assert!(acked >= self.heal_time);
        // After the quiet period every node holds the same state.
        let mut states = self.nodes.iter().map(|(&id, n)| (id, n.applied, &n.kv));
        let (first_id, applied, kv) = states.next().expect("nodes exist");
        for (id, other_applied, other_kv) in states {
            if (other_applied, other_kv) != (applied, kv) {
                return Err(format!(
                    "convergence: node {id} applied {other_applied}, node {first_id} applied {applied}; {}",
                    self.describe()
                ));
            }
        }
        // No acknowledged write lost: each is still the committed entry at
        // its index, and every node has applied past it.
        for &(index, term) in &self.acked_writes {
            if self.committed.get(&index).map(|e| e.term) != Some(term) || applied < index {
                return Err(format!(
                    "acknowledged write at index {index} (term {term}) was lost"
                ));
            }
        }
        linearizability::check(&self.history).map_err(|key| {
            format!(
                "linearizability: the history of key {key} is not linearizable ({} operations)",
                self.history.iter().filter(|o| o.key == key).count()
            )
        })
    }

    /// Every node's consensus state, for failure reports.
    fn describe(&self) -> String {
        let mut out = String::new();
        for (id, node) in &self.nodes {
            let Some(raft) = &node.raft else {
                out += &format!("[node {id} down] ");
                continue;
            };
            let store = raft.storage();
            out += &format!(
                "[node {id} {:?} term {} leader {:?} commit {} applied {} log {}..={} conf {:?}] ",
                raft.role(),
                raft.term(),
                raft.leader(),
                raft.commit_index(),
                node.applied,
                store.first_index(),
                store.last_index(),
                raft.conf_state().voters
            );
        }
        out
    }

    pub(crate) fn history_len(&self) -> usize {
        self.history.len()
    }

    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }
}

fn check_log_matching(
    a: NodeId,
    store_a: &MemStorage,
    b: NodeId,
    store_b: &MemStorage,
) -> Result<(), String> {
    let low = store_a.first_index().max(store_b.first_index());
    let high = store_a.last_index().min(store_b.last_index());
    if low > high {
        return Ok(());
    }
    // The highest index where both logs hold the same term: everything
    // below it must be identical.
    let Some(matched) = (low..=high)
        .rev()
        .find(|&i| store_a.term(i).is_ok() && store_a.term(i) == store_b.term(i))
    else {
        return Ok(());
    };
    let entries_a = store_a.entries(low, matched + 1, u64::MAX);
    let entries_b = store_b.entries(low, matched + 1, u64::MAX);
    if entries_a != entries_b {
        return Err(format!(
            "log matching: nodes {a} and {b} agree on the term at {matched} but differ in {low}..={matched}"
        ));
    }
    Ok(())
}
