//! The simulated cluster: `drkv`'s replica engine (`dr-engine`) and
//! key-value state machine (`KvMachine`), fed client commands through
//! drkv's command parser, over in-memory stores that lose what was not
//! synced ([`MemKvStore`]), an in-memory network that drops, duplicates,
//! delays and partitions, and one virtual clock per node whose rate may
//! drift. One thread, one seed: a run is a pure function of its seed.
//! As in drkv, a running follower sends its clients' writes to the
//! leader and hands the leader's answers back through the engine's
//! forward desk, outside the engine's turn (a paused node leaves both to
//! its turn).
//!
//! Faults, chosen from the seed about every 50 ms of virtual time:
//! crashes (between turns, or inside a synced write just before or just
//! after it is durable), pauses (the leader's half the time), partitions
//! (one node cut off both ways or one way, the leader half the time),
//! loss, duplication and delay, leader transfers, clock rate changes
//! within ±10%, and a membership schedule: a member (the leader half the
//! time) is removed, its disk thrown away, and it comes back empty as a
//! learner and is promoted. Snapshots are taken every 40 entries, so
//! lagging and returning nodes catch up from them while clients work.
//!
//! Checks: after every step one leader per term, no commit index going
//! back within a node's life, one entry per committed index on every
//! node, and no old leader holding its lease while a newer leader exists
//! (the lease's clock bound); every 64 steps log matching and leader
//! completeness; at the end, after healing: every key read through every
//! node, the members converged on one state, and every key's client
//! history linearizable under Redis's semantics. `DR_SIM_TRACE=1` prints
//! leaders, crashes and membership steps as they happen.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dr_codec::message::{ConfState, LogIndex, Message, MessageBody, NodeId, Term};
use dr_engine::{
    Clock, Engine, EngineConfig, EngineError, Event, Inbox, NoObserver, Parts, Routed, Transport,
};
use dr_node::clock::WallClock;
use dr_node::command::{self, Command};
use dr_node::machine::KvMachine;
use dr_node::resp::Reply;
use dr_node::runtime::{ReplyTo, Request};
use dr_node::status::StatusBoard;
use dr_raft::{ConfChangeOp, LogStore, RaftNode, Role, Snapshot, Storage};
use tokio::sync::oneshot;

/// The Unix time (ms) at every simulated clock's zero: expiry times are
/// counted from it.
const SIM_UNIX_ORIGIN_MS: u64 = 1_700_000_000_000;

use crate::expiry::{self, ExpiryCheck};
use crate::history::{Done, Values, check_linearizable, random_command};
use crate::rng::Rng;
use crate::store::{CrashPoint, Crashed, Disk, MemKvStore, Opened};

type Machine = KvMachine<MemKvStore>;
type SimEngine = Engine<Machine, ReplyTo>;
type EngineRequest = dr_engine::Request<Machine, ReplyTo>;

/// One step of virtual time.
const STEP_US: u64 = 1_000;
/// A node's chance per step, in millionths, that its state machine is
/// flushed when it keeps applies behind.
const FLUSH_PPM: u64 = 5_000;
const TICK: Duration = Duration::from_millis(10);
const KEYS: &[&str] = &["a", "b", "c", "d"];
/// The largest clock drift (either way, in millionths) within which the
/// lease is safe: the lease keeps a quarter of the followers' promise for
/// clocks that differ, so a leader's clock may run up to a third slower
/// than a follower's; ±10% gives a ratio of at most 1.22.
pub const LEASE_SAFE_DRIFT_PPM: u64 = 100_000;
/// How long a client waits for an answer before giving up on it.
const CLIENT_TIMEOUT_US: u64 = 2_000_000;

/// How a run goes.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Virtual time with faults.
    pub fault_us: u64,
    /// Virtual time of clients after healing.
    pub heal_us: u64,
    /// Serve reads on the leader's lease.
    pub read_lease: bool,
    /// The largest clock rate difference from real time, in parts per
    /// million (within the lease's bound: 100 000 = 10%).
    pub drift_ppm: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Members are removed, wiped and added back.
    pub membership_changes: bool,
    /// The engine's `snapshot_log_factor` (0: snapshots by entries only).
    pub snapshot_log_factor: u64,
    /// The engine's `snapshot_every_max_factor` (its `snapshot_every` is
    /// 40 here).
    pub snapshot_every_max_factor: u64,
    /// The engine's `leader_sync_delay_max` in microseconds (0: leaders
    /// sync every write). With it, half the crashes also find the state
    /// machine flushed as it was, ahead of the synced log.
    pub leader_sync_delay_us: u64,
    /// The nodes keep their applies behind (`RocksStorage`'s
    /// write-behind): a sync makes the log durable, not the state
    /// machine, which reaches the disk only when flushed (now and then,
    /// and at half the crashes) or replaced by an install.
    pub applies_behind: bool,
}

impl Settings {
    /// A new node's disk.
    fn disk(&self) -> Disk {
        if self.applies_behind {
            Disk::applies_behind()
        } else {
            Disk::default()
        }
    }

    /// The settings a seed picks: lease reads on a third of the seeds.
    pub fn for_seed(seed: u64, fault_us: u64) -> Self {
        Self {
            fault_us,
            heal_us: 1_000_000,
            read_lease: seed % 3 == 1,
            drift_ppm: 100_000,
            clients: 6,
            membership_changes: true,
            // Both snapshot rules: entries only, and entries plus log
            // bytes per byte of the last snapshot.
            snapshot_log_factor: (seed / 3) % 3,
            snapshot_every_max_factor: 4,
            // Leaders syncing every write, and lazily within 0.7 or 3 ms.
            leader_sync_delay_us: [0, 700, 3_000][((seed / 9) % 3) as usize],
            applies_behind: (seed / 27).is_multiple_of(2),
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Client commands answered with a result.
    pub answered: u64,
    /// Writes whose outcome stayed unknown.
    pub uncertain: u64,
    /// Commands refused as certainly not done.
    pub refused: u64,
    /// Crashes.
    pub crashes: u64,
    /// Pauses.
    pub pauses: u64,
    /// Partitions.
    pub partitions: u64,
    /// Leader transfers asked for.
    pub transfers: u64,
    /// Crashes in the middle of a synced write.
    pub crashes_in_writes: u64,
    /// Members removed (and later added back as new, empty nodes).
    pub removals: u64,
    /// Removals of the leader itself.
    pub leader_removals: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Snapshots the nodes took of their own state.
    pub snapshots_created: u64,
    /// Syncs of writes leaders made without one.
    pub leader_lazy_syncs: u64,
    /// Restarts that found the state machine ahead of the synced log and
    /// kept it as a snapshot.
    pub states_ahead_kept: u64,
    /// Restarts that found the state machine behind the log's snapshot
    /// (applies kept behind, lost at the crash, the log compacted past
    /// them) and rebuilt it from the snapshot.
    pub states_rebuilt: u64,
    /// Restarts that found applies lost (the state machine behind what
    /// the node had applied): the log applies them again.
    pub applies_lost: u64,
    /// Reads a leader served on its lease.
    pub lease_reads: u64,
    /// Steps during which an old leader still held its lease while a
    /// newer leader existed (possible only with clocks beyond the bound).
    pub overlapping_leases: u64,
    /// Reads of expiring keys that returned a value, each checked against
    /// the serving node's clock.
    pub expiry_reads: u64,

    /// The client history, one line per command.
    pub history: Vec<String>,
}

/// A node's clock: nanoseconds of its own time.
#[derive(Clone, Default)]
struct SimClock(Arc<AtomicU64>);

impl Clock for SimClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Relaxed))
    }
}

/// A node's way out: its messages wait here for the network.
#[derive(Clone, Default)]
struct Outbox(Arc<Mutex<Vec<Message>>>);

impl Transport for Outbox {
    fn send(&mut self, message: Message) -> bool {
        self.0.lock().expect("not poisoned").push(message);
        true
    }
}

/// The engine's way out: what it sends waits in `held` until it flushes
/// (as drkv's transport holds the engine's messages until then), and a
/// node killed in between never sent it.
struct EngineOutbox {
    held: Outbox,
    out: Outbox,
}

impl Transport for EngineOutbox {
    fn send(&mut self, message: Message) -> bool {
        self.held.send(message)
    }

    fn flush(&mut self) {
        let held = std::mem::take(&mut *self.held.0.lock().expect("not poisoned"));
        self.out.0.lock().expect("not poisoned").extend(held);
    }
}

/// What arrived at a node and waits for its next turn.
#[derive(Default)]
struct Queues {
    messages: VecDeque<Message>,
    requests: VecDeque<EngineRequest>,
}

impl Inbox<Machine, ReplyTo> for Queues {
    fn message(&mut self) -> Option<Message> {
        self.messages.pop_front()
    }

    fn request(&mut self) -> Option<EngineRequest> {
        self.requests.pop_front()
    }
}

struct Node {
    id: NodeId,
    disk: Disk,
    engine: Option<SimEngine>,
    clock: SimClock,
    /// Its clock's rate: local time per real time, in millionths.
    rate_ppm: u64,
    next_tick_ns: u64,
    paused_until_us: u64,
    restart_at_us: Option<u64>,
    outbox: Outbox,
    /// What the engine sent and has not flushed yet.
    held: Outbox,
    queues: Queues,
    /// The commit index last seen in this incarnation.
    commit_seen: LogIndex,
    /// The applied index when it last crashed.
    applied_at_crash: LogIndex,
    metrics: Arc<dr_engine::EngineMetrics>,
}

/// Where a membership change stands: one member at a time is removed,
/// wiped, and added back as a learner, then promoted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Membership {
    /// Three voters (or the last change is done).
    Stable,
    /// Asked the leader to remove this member.
    Removing(NodeId),
    /// Removed and wiped; asking for it to come back as a learner.
    Adding(NodeId),
    /// A learner again; asking for its promotion.
    Promoting(NodeId),
}

/// A committed entry as first seen.
#[derive(Clone, Copy, Debug)]
struct CommittedEntry {
    term: Term,
    /// The highest term any node had when the commit was seen.
    max_term_then: Term,
}

/// A client's command in flight.
struct Pending {
    args: Vec<Bytes>,
    node: NodeId,
    call_us: u64,
    /// The node's clock (Unix ms) when the command was sent.
    call_wall_ms: u64,
    answer: oneshot::Receiver<Result<Reply, EngineError>>,
    is_write: bool,
}

struct Network {
    in_flight: BTreeMap<(u64, u64), Message>,
    next_seq: u64,
    cut: BTreeSet<(NodeId, NodeId)>,
    drop_ppm: u64,
    duplicate_ppm: u64,
    latency_us: (u64, u64),
}

/// The simulated cluster.
pub struct SimCluster {
    rng: Rng,
    settings: Settings,
    now_us: u64,
    nodes: Vec<Node>,
    network: Network,
    clients: Vec<Option<Pending>>,
    /// A client told "not done" waits until then before its next command
    /// (as drkv's executor pauses before a retry).
    client_backoff_us: Vec<u64>,
    history: Vec<Done>,
    report: Report,
    config: EngineConfig,
    values: Values,
    /// The expiring keys and what their reads showed.
    expiry: ExpiryCheck,
    membership: Membership,
    /// When the membership schedule acts next.
    membership_at_us: u64,
    leaders_by_term: BTreeMap<Term, NodeId>,
    /// `DR_SIM_TRACE` is set: events are printed as they happen.
    tracing: bool,
    committed: BTreeMap<LogIndex, CommittedEntry>,
    steps: u64,
}

impl SimCluster {
    /// A 3-node cluster for `seed`.
    pub fn new(seed: u64, settings: Settings) -> Self {
        let mut rng = Rng::new(seed);
        let ids = [1, 2, 3];
        let conf = ConfState {
            voters: ids.to_vec(),
            ..ConfState::default()
        };
        let mut raft = dr_raft::Config::new(1);
        raft.election_ticks = 10;
        raft.heartbeat_ticks = 1;
        raft.lease_reads = true;
        raft.async_persist = settings.leader_sync_delay_us > 0;
        raft.apply_unpersisted = raft.async_persist;
        let mut config = EngineConfig::new(raft);
        config.tick = TICK;
        config.read_lease = settings.read_lease;
        config.snapshot_every = 40;
        config.snapshot_log_factor = settings.snapshot_log_factor;
        config.snapshot_every_max_factor = settings.snapshot_every_max_factor;
        config.log_kept = 8;
        config.forward_timeout = Duration::from_millis(1_500);
        config.read_fetch_timeout = Duration::from_millis(500);
        config.leader_sync_delay_max = Duration::from_micros(settings.leader_sync_delay_us);
        let nodes = ids
            .iter()
            .map(|&id| {
                let disk = settings.disk();
                let (mut store, _) = MemKvStore::open(&disk);
                store
                    .restore_snapshot(&Snapshot::bootstrap(conf.clone()))
                    .expect("a new store takes the bootstrap snapshot");
                let rate_ppm =
                    1_000_000 + rng.range(0, 2 * settings.drift_ppm + 1) - settings.drift_ppm;
                Node {
                    id,
                    disk,
                    engine: None,
                    clock: SimClock::default(),
                    rate_ppm,
                    next_tick_ns: 0,
                    paused_until_us: 0,
                    restart_at_us: Some(0),
                    outbox: Outbox::default(),
                    held: Outbox::default(),
                    queues: Queues::default(),
                    commit_seen: 0,
                    applied_at_crash: 0,
                    metrics: Arc::default(),
                }
            })
            .collect();
        let clients = (0..settings.clients).map(|_| None).collect();
        let client_backoff_us = vec![0; settings.clients];
        Self {
            rng,
            settings,
            now_us: 0,
            nodes,
            network: Network {
                in_flight: BTreeMap::new(),
                next_seq: 0,
                cut: BTreeSet::new(),
                drop_ppm: 0,
                duplicate_ppm: 0,
                latency_us: (100, 1_500),
            },
            clients,
            client_backoff_us,
            history: Vec::new(),
            report: Report::default(),
            config,
            values: Values::default(),
            expiry: ExpiryCheck::default(),
            membership: Membership::Stable,
            membership_at_us: 300_000,
            leaders_by_term: BTreeMap::new(),
            tracing: std::env::var_os("DR_SIM_TRACE").is_some(),
            committed: BTreeMap::new(),
            steps: 0,
        }
    }

    /// Runs faults, heals, checks. `Err` says what broke.
    pub fn run(mut self) -> Result<Report, String> {
        self.restart_due();
        let fault_end = self.settings.fault_us;
        while self.now_us < fault_end {
            self.faults();
            self.membership(true);
            self.step(true);
            self.check_step()?;
        }
        self.heal();
        let heal_end = self.now_us + self.settings.heal_us;
        while self.now_us < heal_end || self.membership != Membership::Stable {
            if self.now_us > heal_end + 10_000_000 {
                return Err(format!(
                    "liveness: the membership change {:?} did not finish after healing",
                    self.membership
                ));
            }
            self.membership(false);
            self.step(true);
            self.check_step()?;
        }
        // Clients finish what they started.
        let drain_end = self.now_us + CLIENT_TIMEOUT_US + 100_000;
        while self.now_us < drain_end && self.clients.iter().any(Option::is_some) {
            self.step(false);
            self.check_step()?;
        }
        self.final_reads()?;
        self.check_convergence()?;
        self.check_expiry()?;
        self.check_logs()?;
        self.check_linearizable()?;
        self.report.snapshots_installed = self
            .nodes
            .iter()
            .map(|n| n.metrics.snapshots_installed.load(Relaxed))
            .sum();
        self.report.snapshots_created = self
            .nodes
            .iter()
            .map(|n| n.metrics.snapshots_created.load(Relaxed))
            .sum();
        self.report.lease_reads = self
            .nodes
            .iter()
            .map(|n| n.metrics.lease_reads.load(Relaxed))
            .sum();
        self.report.leader_lazy_syncs = self
            .nodes
            .iter()
            .map(|n| n.metrics.leader_lazy_syncs.load(Relaxed))
            .sum();
        self.report.history = self.history.iter().map(Done::line).collect();
        Ok(self.report)
    }

    /// One step of virtual time.
    fn step(&mut self, clients_start: bool) {
        self.now_us += STEP_US;
        self.restart_due();
        self.deliver();
        for index in 0..self.nodes.len() {
            self.run_node(index);
        }
        self.route();
        self.poll_clients(clients_start);
    }

    fn restart_due(&mut self) {
        for index in 0..self.nodes.len() {
            let node = &mut self.nodes[index];
            if node.engine.is_some() || node.restart_at_us.is_none_or(|at| at > self.now_us) {
                continue;
            }
            node.restart_at_us = None;
            let (store, opened) = MemKvStore::open(&node.disk);
            match opened {
                Opened::AsStored => {}
                Opened::AheadOfLog => self.report.states_ahead_kept += 1,
                Opened::BehindSnapshot => self.report.states_rebuilt += 1,
            }
            if dr_node::machine::KvStore::applied_index(&store) < node.applied_at_crash {
                self.report.applies_lost += 1;
            }
            let mut raft_config = self.config.raft.clone();
            raft_config.id = node.id;
            raft_config.applied = dr_node::machine::KvStore::applied_index(&store);
            raft_config.election_jitter_seed = self.rng.next_u64();
            let status = Arc::new(StatusBoard::new(node.id, 1));
            let wall = WallClock::new(SIM_UNIX_ORIGIN_MS);
            let machine = KvMachine::new(&store, status, wall).expect("a stored node restarts");
            let raft = RaftNode::new(raft_config.clone(), store).expect("a stored node restarts");
            let mut config = self.config.clone();
            config.raft = raft_config;
            config.incarnation = self.rng.next_u64();
            let parts = Parts {
                machine,
                transport: Box::new(EngineOutbox {
                    held: node.held.clone(),
                    out: node.outbox.clone(),
                }),
                clock: Box::new(node.clock.clone()),
                observer: Box::new(NoObserver),
                metrics: Arc::clone(&node.metrics),
            };
            node.engine = Some(Engine::new(config, raft, parts));
            node.commit_seen = 0;
            node.next_tick_ns = node.clock.0.load(Relaxed) + TICK.as_nanos() as u64;
        }
    }

    fn run_node(&mut self, index: usize) {
        let now_us = self.now_us;
        let node = &mut self.nodes[index];
        let advance = STEP_US * 1_000 * node.rate_ppm / 1_000_000;
        node.clock.0.fetch_add(advance, Relaxed);
        let Some(engine) = node.engine.as_mut() else {
            return;
        };
        if node.paused_until_us > now_us {
            return;
        }
        let local_ns = node.clock.0.load(Relaxed);
        let tick = local_ns >= node.next_tick_ns;
        if tick {
            // Like tokio's interval with `Delay`: one tick, however late.
            node.next_tick_ns = local_ns + TICK.as_nanos() as u64;
        }
        let queues = &mut node.queues;
        let turns = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if tick {
                engine.turn(Event::Tick, queues);
            }
            if engine.wake_in().is_some_and(|after| after.is_zero()) {
                engine.turn(Event::Wake, queues);
            }
            // Bounded: a turn takes at most its limits, so loop until empty.
            for _ in 0..64 {
                let event = if let Some(message) = queues.messages.pop_front() {
                    Event::Message(message)
                } else if let Some(request) = queues.requests.pop_front() {
                    Event::Request(request)
                } else {
                    break;
                };
                engine.turn(event, queues);
            }
        }));
        if let Err(panic) = turns {
            if !panic.is::<Crashed>() {
                std::panic::resume_unwind(panic);
            }
            // Killed inside a synced write: what it sent before stays
            // sent, nothing after it happens.
            self.report.crashes_in_writes += 1;
            self.crash(index);
            return;
        }
        let node = &self.nodes[index];
        assert!(
            node.held.0.lock().expect("not poisoned").is_empty(),
            "node {} ended a turn with messages it never flushed",
            node.id
        );
        // With applies kept behind, a checkpoint reaches the disk now and
        // then (about every 200 ms of virtual time).
        if self.settings.applies_behind && self.rng.chance(FLUSH_PPM) {
            let node = &self.nodes[index];
            if let Some(engine) = &node.engine {
                node.disk.flush_state_machine(engine.raft().storage());
            }
        }
    }

    /// Kills node `index`: everything not synced is gone; so is what
    /// waited for it.
    fn crash(&mut self, index: usize) {
        self.trace(format_args!("node {} crashes", self.nodes[index].id));
        let restart_at = self.now_us + self.rng.range(20_000, 400_000);
        let flush = (self.settings.leader_sync_delay_us > 0 || self.settings.applies_behind)
            && self.rng.chance(500_000);
        let node = &mut self.nodes[index];
        node.applied_at_crash = node
            .engine
            .as_ref()
            .map_or(0, |engine| engine.applied_index());
        if let Some(engine) = node.engine.take().filter(|_| flush) {
            node.disk.flush_state_machine(engine.raft().storage());
        }
        node.queues = Queues::default();
        // Never flushed: never sent.
        node.held.0.lock().expect("not poisoned").clear();
        node.restart_at_us = Some(restart_at);
        node.paused_until_us = 0;
        node.disk.crash_at(None);
    }

    /// Moves every node's sent messages into the network.
    fn route(&mut self) {
        for index in 0..self.nodes.len() {
            let sent: Vec<Message> =
                std::mem::take(&mut *self.nodes[index].outbox.0.lock().expect("not poisoned"));
            for message in sent {
                let network = &mut self.network;
                if network.cut.contains(&(message.from, message.to))
                    || self.rng.chance(network.drop_ppm)
                {
                    continue;
                }
                let copies = if self.rng.chance(network.duplicate_ppm) {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    let (low, high) = network.latency_us;
                    let at = self.now_us + self.rng.range(low, high);
                    network.next_seq += 1;
                    network
                        .in_flight
                        .insert((at, network.next_seq), message.clone());
                }
            }
        }
    }

    fn deliver(&mut self) {
        while let Some(entry) = self.network.in_flight.first_entry() {
            if entry.key().0 > self.now_us {
                break;
            }
            let message = entry.remove();
            let now_us = self.now_us;
            let Some(node) = self.nodes.iter_mut().find(|n| n.id == message.to) else {
                continue;
            };
            let Some(engine) = node.engine.as_ref() else {
                continue;
            };
            // As drkv's transport does: the leader's answer to a forward
            // goes to the waiting client from the reading side, unless
            // the process is paused (then through the engine's turn).
            match message.body {
                MessageBody::ForwardResponse(response) if node.paused_until_us <= now_us => {
                    engine.forward_desk().answered(message.from, response);
                }
                body => node.queues.messages.push_back(Message { body, ..message }),
            }
        }
    }

    fn node_index(&self, id: NodeId) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .expect("a member")
    }

    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|n| n.engine.as_ref())
            .filter(|e| e.raft().role() == Role::Leader)
            .max_by_key(|e| e.raft().term())
            .map(|e| e.raft().id())
    }

    fn faults(&mut self) {
        let now = self.now_us;
        // About one fault decision every 50 ms.
        if !self.rng.chance(20_000) {
            return;
        }
        let ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        match self.rng.range(0, 11) {
            0 => {
                let id = self.rng.pick(&ids);
                let index = self.node_index(id);
                if self.nodes[index].engine.is_some() {
                    self.crash(index);
                    self.nodes[index]
                        .outbox
                        .0
                        .lock()
                        .expect("not poisoned")
                        .clear();
                    self.report.crashes += 1;
                }
            }
            1 => {
                let id = self
                    .leader()
                    .filter(|_| self.rng.chance(500_000))
                    .unwrap_or_else(|| self.rng.pick(&ids));
                let index = self.node_index(id);
                self.nodes[index].paused_until_us = now + self.rng.range(50_000, 500_000);
                self.report.pauses += 1;
            }
            2 | 3 => {
                self.network.cut.clear();
                let victim = self
                    .leader()
                    .filter(|_| self.rng.chance(500_000))
                    .unwrap_or_else(|| self.rng.pick(&ids));
                let one_way = self.rng.chance(300_000);
                for &other in ids.iter().filter(|&&o| o != victim) {
                    self.network.cut.insert((victim, other));
                    if !one_way {
                        self.network.cut.insert((other, victim));
                    }
                }
                self.report.partitions += 1;
            }
            4 | 5 => self.network.cut.clear(),
            6 => {
                self.network.drop_ppm = self.rng.pick(&[0, 0, 20_000, 100_000]);
                self.network.duplicate_ppm = self.rng.pick(&[0, 10_000, 50_000]);
                self.network.latency_us = self.rng.pick(&[(100, 1_500), (100, 20_000)]);
            }
            7 => {
                let Some(leader) = self.leader() else { return };
                let target = self.rng.pick(&ids);
                let (answer, _ignored) = oneshot::channel();
                let request = Request::TransferLeader { target, answer };
                let index = self.node_index(leader);
                self.nodes[index]
                    .queues
                    .requests
                    .push_back(request.into_engine());
                self.report.transfers += 1;
            }
            9 => {
                let id = self
                    .leader()
                    .filter(|_| self.rng.chance(500_000))
                    .unwrap_or_else(|| self.rng.pick(&ids));
                let point = if self.rng.chance(500_000) {
                    CrashPoint::BeforeSync
                } else {
                    CrashPoint::AfterSync
                };
                let index = self.node_index(id);
                self.nodes[index].disk.crash_at(Some(point));
            }
            8 => {
                let id = self.rng.pick(&ids);
                let index = self.node_index(id);
                let drift = self.settings.drift_ppm;
                self.nodes[index].rate_ppm = 1_000_000 + self.rng.range(0, 2 * drift + 1) - drift;
            }
            _ => {}
        }
    }

    /// Sends `op` to the leader (its answer is watched through the
    /// configuration, not awaited).
    fn propose_conf_change(&mut self, op: ConfChangeOp) {
        let Some(leader) = self.leader() else { return };
        let (answer, _ignored) = oneshot::channel();
        let request = Request::ConfChange { op, answer };
        let index = self.node_index(leader);
        self.nodes[index]
            .queues
            .requests
            .push_back(request.into_engine());
    }

    /// The configuration as the leader has it (no other node's view is
    /// trusted to decide that a member is gone: a lagging or wiped node
    /// knows an older configuration, or none).
    fn conf(&self) -> Option<ConfState> {
        let leader = self.node_index(self.leader()?);
        let engine = self.nodes[leader].engine.as_ref()?;
        Some(engine.raft().conf_state().clone())
    }

    fn trace(&self, what: std::fmt::Arguments<'_>) {
        if self.tracing {
            eprintln!("{:>9} {what}", self.now_us);
        }
    }

    fn membership(&mut self, may_start: bool) {
        if self.now_us < self.membership_at_us {
            return;
        }
        self.membership_at_us = self.now_us + 50_000;
        let Some(conf) = self.conf() else { return };
        let settled = conf.voters_outgoing.is_empty() && conf.learners_next.is_empty();
        match self.membership {
            Membership::Stable => {
                if !may_start
                    || !self.settings.membership_changes
                    || !settled
                    || conf.voters.len() < 3
                    || !self.rng.chance(150_000)
                {
                    return;
                }
                let leader = self.leader();
                let victim = leader
                    .filter(|_| self.rng.chance(500_000))
                    .unwrap_or_else(|| self.rng.pick(&[1, 2, 3]));
                if Some(victim) == leader {
                    self.report.leader_removals += 1;
                }
                self.report.removals += 1;
                self.membership = Membership::Removing(victim);
                self.trace(format_args!("removing {victim} (leader {leader:?})"));
                self.propose_conf_change(ConfChangeOp::Remove(victim));
            }
            Membership::Removing(id) => {
                let member = conf.voters.contains(&id) || conf.learners.contains(&id);
                if member || !settled {
                    self.propose_conf_change(ConfChangeOp::Remove(id));
                    return;
                }
                // Gone from the configuration: the process is stopped and
                // its data thrown away; it comes back as a new, empty node.
                let index = self.node_index(id);
                self.crash(index);
                let node = &mut self.nodes[index];
                node.disk = self.settings.disk();
                node.restart_at_us = Some(self.now_us);
                self.membership = Membership::Adding(id);
                self.trace(format_args!("wiped {id}, adding it back; conf {conf:?}"));
            }
            Membership::Adding(id) => {
                if conf.learners.contains(&id) && settled {
                    self.membership = Membership::Promoting(id);
                    self.trace(format_args!("{id} is a learner; promoting; conf {conf:?}"));
                } else {
                    self.propose_conf_change(ConfChangeOp::AddLearner(id));
                }
            }
            Membership::Promoting(id) => {
                if conf.voters.contains(&id) && settled {
                    self.membership = Membership::Stable;
                } else {
                    self.propose_conf_change(ConfChangeOp::AddVoter(id));
                }
            }
        }
    }

    /// After every step: one leader per term (election safety), no
    /// commit index going back within a node's life, every committed
    /// index holding one entry on every node (state machine safety), and
    /// every 64 steps log matching and leader completeness.
    fn check_step(&mut self) -> Result<(), String> {
        self.steps += 1;
        let max_term = self
            .nodes
            .iter()
            .filter_map(|n| n.engine.as_ref())
            .map(|e| e.raft().term())
            .max()
            .unwrap_or(0);
        for node in &mut self.nodes {
            let Some(engine) = node.engine.as_ref() else {
                continue;
            };
            let raft = engine.raft();
            if raft.role() == Role::Leader {
                if !self.leaders_by_term.contains_key(&raft.term()) && self.tracing {
                    eprintln!(
                        "{:>9} node {} leads term {} (last index {}, commit {}, conf {:?})",
                        self.now_us,
                        node.id,
                        raft.term(),
                        raft.last_index(),
                        raft.commit_index(),
                        raft.conf_state()
                    );
                }
                let leader = *self.leaders_by_term.entry(raft.term()).or_insert(node.id);
                if leader != node.id {
                    return Err(format!(
                        "election safety: nodes {leader} and {} both led term {}",
                        node.id,
                        raft.term()
                    ));
                }
            }
            let commit = raft.commit_index();
            if commit < node.commit_seen {
                return Err(format!(
                    "node {}: commit went back from {} to {commit}",
                    node.id, node.commit_seen
                ));
            }
            let store = engine.store();
            for index in (node.commit_seen + 1).max(store.first_index())..=commit {
                let Ok(term) = store.term(index) else {
                    continue;
                };
                let seen = self.committed.entry(index).or_insert(CommittedEntry {
                    term,
                    max_term_then: max_term,
                });
                if seen.term != term {
                    return Err(format!(
                        "state machine safety: node {} committed term {term} at index {index}, another node term {}",
                        node.id, seen.term
                    ));
                }
            }
            node.commit_seen = commit;
        }
        // Two leaders, the older still on its lease: its lease reads may
        // miss what the newer one acknowledged. Within the clock bound
        // this never happens (the lease ends before the followers that
        // renewed it would vote for anyone else); beyond it, it is how
        // the broken assumption shows.
        let leaders: Vec<(NodeId, Term, bool)> = self
            .nodes
            .iter()
            .filter_map(|n| n.engine.as_ref())
            .filter(|e| e.raft().role() == Role::Leader)
            .map(|e| {
                // The lease as reads would use it: the tracker's time, and
                // dr-raft still allowing lease reads (not after a
                // `TimeoutNow` left).
                let leased =
                    !e.lease_remaining().is_zero() && e.raft().lease_read_index().is_some();
                (e.raft().id(), e.raft().term(), leased)
            })
            .collect();
        let newest = leaders.iter().map(|l| l.1).max().unwrap_or(0);
        if let Some(&(old, term, _)) = leaders
            .iter()
            .find(|&&(_, term, leased)| term < newest && leased)
        {
            self.report.overlapping_leases += 1;
            if self.settings.drift_ppm <= LEASE_SAFE_DRIFT_PPM {
                return Err(format!(
                    "lease safety: node {old} still holds its lease of term {term} while a leader of term {newest} exists"
                ));
            }
        }
        if self.steps.is_multiple_of(64) {
            self.check_logs()?;
        }
        Ok(())
    }

    /// Log matching between every pair of running nodes, and leader
    /// completeness for every leader.
    fn check_logs(&self) -> Result<(), String> {
        let running: Vec<(NodeId, &SimEngine)> = self
            .nodes
            .iter()
            .filter_map(|n| n.engine.as_ref().map(|e| (n.id, e)))
            .collect();
        for (i, &(a, engine_a)) in running.iter().enumerate() {
            for &(b, engine_b) in &running[i + 1..] {
                check_log_matching(a, engine_a.store(), b, engine_b.store())?;
            }
        }
        for &(id, engine) in &running {
            let raft = engine.raft();
            if raft.role() != Role::Leader {
                continue;
            }
            let (store, term) = (engine.store(), raft.term());
            for (&index, entry) in self.committed.range(store.first_index()..) {
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

    fn heal(&mut self) {
        self.network.cut.clear();
        self.network.drop_ppm = 0;
        self.network.duplicate_ppm = 0;
        self.network.latency_us = (100, 1_500);
        for node in &mut self.nodes {
            node.paused_until_us = 0;
            node.disk.crash_at(None);
            if node.engine.is_none() {
                node.restart_at_us = Some(self.now_us);
            }
        }
    }

    fn poll_clients(&mut self, start_new: bool) {
        for client in 0..self.clients.len() {
            if let Some(pending) = self.clients[client].take() {
                self.clients[client] = self.poll(client, pending);
            }
            let ready = self.client_backoff_us[client] <= self.now_us;
            if self.clients[client].is_none() && ready && start_new && self.rng.chance(500_000) {
                let args = if self.rng.chance(150_000) {
                    let now_ms = SIM_UNIX_ORIGIN_MS + self.now_us / 1000;
                    self.expiry.random_command(&mut self.rng, now_ms)
                } else {
                    random_command(&mut self.rng, KEYS, &mut self.values)
                };
                let node = self.rng.pick(&[1, 2, 3]);
                self.clients[client] = self.send(args, node);
            }
        }
    }

    /// Sends `args` to `node` through drkv's command parser.
    fn send(&mut self, args: Vec<Bytes>, node: NodeId) -> Option<Pending> {
        let command = command::parse(&args).expect("the simulator sends valid commands");
        let (answer_tx, answer) = oneshot::channel();
        let (request, is_write) = match command {
            Command::Write { op, shape } => (
                Request::Write {
                    op,
                    shape,
                    answer: answer_tx,
                },
                true,
            ),
            Command::Read(op) => (
                Request::Read {
                    op,
                    answer: answer_tx,
                },
                false,
            ),
            other => panic!("the simulator sent {other:?}"),
        };
        let index = self.node_index(node);
        let now_us = self.now_us;
        let target = &mut self.nodes[index];
        // A crashed node refuses the connection: certainly not done.
        let engine = target.engine.as_ref()?;
        let mut request = Some(request.into_engine());
        // As drkv's connections do: a running follower sends a write to
        // its leader itself, through the engine's forward desk (a paused
        // process does nothing until it runs again).
        if target.paused_until_us <= now_us {
            let now = target.clock.now();
            let outbox = &mut target.outbox;
            let mut send = |message| outbox.send(message);
            let routed =
                engine
                    .forward_desk()
                    .route(request.take().expect("set above"), now, &mut send);
            if let Routed::ToEngine(back) = routed {
                request = Some(back);
            }
        }
        target.queues.requests.extend(request);
        let call_wall_ms = SIM_UNIX_ORIGIN_MS + target.clock.0.load(Relaxed) / 1_000_000;
        Some(Pending {
            args,
            node,
            call_us: self.now_us,
            call_wall_ms,
            answer,
            is_write,
        })
    }

    /// Checks a client's command; `Some` while it still waits.
    fn poll(&mut self, client: usize, mut pending: Pending) -> Option<Pending> {
        let outcome = match pending.answer.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => {
                if self.now_us < pending.call_us + CLIENT_TIMEOUT_US {
                    return Some(pending);
                }
                Err(())
            }
            // The node crashed with the request inside.
            Err(oneshot::error::TryRecvError::Closed) => Err(()),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(error)) if error.is_retryable() || matches!(error, EngineError::Refused(_)) => {
                self.report.refused += 1;
                if let Some(backoff) = self.client_backoff_us.get_mut(client) {
                    *backoff = self.now_us + 20_000;
                }
                return None;
            }
            Ok(Err(_)) => Err(()),
        };
        let ret = match outcome {
            Ok(reply) => {
                self.report.answered += 1;
                Some((self.now_us, reply))
            }
            // A read that got no answer did nothing: left out.
            Err(()) if !pending.is_write => return None,
            Err(()) => {
                self.report.uncertain += 1;
                None
            }
        };
        if ExpiryCheck::owns(&pending.args) {
            if let Some((_, reply)) = &ret {
                self.expiry
                    .observe(&pending.args, pending.node, pending.call_wall_ms, reply);
            }
            return None;
        }
        self.history.push(Done {
            args: pending.args,
            node: pending.node,
            client,
            call_us: pending.call_us,
            ret,
        });
        None
    }

    /// After healing: every key read through every node, so every
    /// acknowledged write is checked for.
    fn final_reads(&mut self) -> Result<(), String> {
        for node in [1, 2, 3] {
            let args: Vec<Bytes> = std::iter::once("MGET")
                .chain(KEYS.iter().copied())
                .map(Bytes::from)
                .collect();
            let mut pending = self
                .send(args, node)
                .ok_or_else(|| format!("node {node} is down after healing"))?;
            let deadline = self.now_us + 3_000_000;
            loop {
                self.step(false);
                match self.poll(usize::MAX, pending) {
                    Some(still) if self.now_us < deadline => pending = still,
                    Some(_) => return Err(format!("node {node} answered no read after healing")),
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// Every node ends with the same applied state.
    fn check_convergence(&mut self) -> Result<(), String> {
        let deadline = self.now_us + 3_000_000;
        loop {
            let conf = self.conf().unwrap_or_default();
            let members = |n: &&Node| conf.voters.contains(&n.id) || conf.learners.contains(&n.id);
            // Each running member's applied index and state, read once.
            let states: Vec<_> = self
                .nodes
                .iter()
                .filter(members)
                .filter_map(|n| {
                    let engine = n.engine.as_ref()?;
                    Some((n.id, engine.applied_index(), engine.store().data()))
                })
                .collect();
            let same = |a: &(NodeId, u64, _), b: &(NodeId, u64, _)| a.1 == b.1 && a.2 == b.2;
            if !states.is_empty() && states.windows(2).all(|w| same(&w[0], &w[1])) {
                return Ok(());
            }
            if self.now_us >= deadline {
                let applied: BTreeSet<u64> = states.iter().map(|s| s.1).collect();
                let lines: Vec<String> = states
                    .iter()
                    .map(|(id, applied, data)| format!("node {id} applied {applied} data {data:?}"))
                    .collect();
                return Err(format!(
                    "the nodes did not converge: applied indexes {applied:?}\n  {}",
                    lines.join("\n  ")
                ));
            }
            self.step(false);
        }
    }

    fn check_linearizable(&self) -> Result<(), String> {
        check_linearizable(&self.history)
    }

    /// Every read of an expiring key was served before its time (checked
    /// as answers came); now, settled, the keys whose time passed are
    /// gone from every node, and the nodes still agree.
    fn check_expiry(&mut self) -> Result<(), String> {
        let settle_end = self.now_us + (expiry::REAP_SLACK_MS + 500) * 1000;
        while self.now_us < settle_end {
            self.step(false);
        }
        self.check_convergence()?;
        let leader = self
            .nodes
            .iter()
            .find(|n| {
                n.engine
                    .as_ref()
                    .is_some_and(|e| e.raft().role() == Role::Leader)
            })
            .ok_or("no leader after settling")?;
        let leader_ms = SIM_UNIX_ORIGIN_MS + leader.clock.0.load(Relaxed) / 1_000_000;
        for node in &self.nodes {
            if let Some(engine) = &node.engine {
                self.expiry
                    .check_removed(node.id, engine.store().data(), leader_ms);
            }
        }
        self.report.expiry_reads = self.expiry.reads_checked;
        self.expiry.result()
    }
}

fn check_log_matching(
    a: NodeId,
    store_a: &MemKvStore,
    b: NodeId,
    store_b: &MemKvStore,
) -> Result<(), String> {
    let low = store_a.first_index().max(store_b.first_index());
    let high = store_a.last_index().min(store_b.last_index());
    if low > high {
        return Ok(());
    }
    // The highest index where both logs hold the same term: everything
    // from `low` to it must be identical.
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
