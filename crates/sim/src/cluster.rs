//! The simulated cluster: `drkv`'s replica engine (`dr-engine`) and
//! key-value state machine (`KvMachine`), fed client commands through
//! drkv's command parser, over in-memory stores that lose what was not
//! synced ([`MemKvStore`]), an in-memory network that drops, duplicates,
//! delays and partitions, and one virtual clock per node whose rate may
//! drift. One thread, one seed: a run is a pure function of its seed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dr_codec::message::{ConfState, Message, NodeId};
use dr_engine::{
    Clock, Engine, EngineConfig, EngineError, Event, Inbox, NoObserver, Parts, Transport,
};
use dr_node::command::{self, Command};
use dr_node::machine::KvMachine;
use dr_node::resp::Reply;
use dr_node::runtime::{ReplyTo, Request};
use dr_node::status::StatusBoard;
use dr_raft::{LogStore, RaftNode, Role, Snapshot};
use tokio::sync::oneshot;

use crate::kv_model::{Condition, KeyCommand, KeyOp, StringKey};
use crate::linearizability::{Timed, check_history};
use crate::rng::Rng;
use crate::store::{Disk, MemKvStore};

type Machine = KvMachine<MemKvStore>;
type SimEngine = Engine<Machine, ReplyTo>;
type EngineRequest = dr_engine::Request<Machine, ReplyTo>;

/// One step of virtual time.
const STEP_US: u64 = 1_000;
const TICK: Duration = Duration::from_millis(10);
const KEYS: &[&str] = &["a", "b", "c", "d"];
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
}

impl Settings {
    /// The settings a seed picks: lease reads on a third of the seeds.
    pub fn for_seed(seed: u64, fault_us: u64) -> Self {
        Self {
            fault_us,
            heal_us: 1_000_000,
            read_lease: seed % 3 == 1,
            drift_ppm: 100_000,
            clients: 6,
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
    queues: Queues,
}

/// A client's command in flight.
struct Pending {
    args: Vec<Bytes>,
    node: NodeId,
    call_us: u64,
    answer: oneshot::Receiver<Result<Reply, EngineError>>,
    is_write: bool,
}

/// One command of the history.
#[derive(Clone, Debug)]
struct Done {
    args: Vec<Bytes>,
    node: NodeId,
    client: usize,
    call_us: u64,
    /// `None`: outcome unknown.
    ret: Option<(u64, Reply)>,
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
    history: Vec<Done>,
    report: Report,
    config: EngineConfig,
    next_value: u64,
}

fn text(bytes: &Bytes) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(reply: &Reply) -> String {
    match reply {
        Reply::Bulk(bytes) => format!("{:?}", text(bytes)),
        Reply::Array(items) => format!(
            "[{}]",
            items.iter().map(describe).collect::<Vec<_>>().join(", ")
        ),
        other => format!("{other:?}"),
    }
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
        let mut config = EngineConfig::new(raft);
        config.tick = TICK;
        config.read_lease = settings.read_lease;
        config.snapshot_every = 40;
        config.log_kept = 8;
        config.forward_timeout = Duration::from_millis(1_500);
        config.read_fetch_timeout = Duration::from_millis(500);
        let nodes = ids
            .iter()
            .map(|&id| {
                let disk = Disk::default();
                let mut store = MemKvStore::open(&disk);
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
                    queues: Queues::default(),
                }
            })
            .collect();
        let clients = (0..settings.clients).map(|_| None).collect();
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
            history: Vec::new(),
            report: Report::default(),
            config,
            next_value: 0,
        }
    }

    /// Runs faults, heals, checks. `Err` says what broke.
    pub fn run(mut self) -> Result<Report, String> {
        self.restart_due();
        let fault_end = self.settings.fault_us;
        while self.now_us < fault_end {
            self.faults();
            self.step(true);
        }
        self.heal();
        let heal_end = self.now_us + self.settings.heal_us;
        while self.now_us < heal_end {
            self.step(true);
        }
        // Clients finish what they started.
        let drain_end = self.now_us + CLIENT_TIMEOUT_US + 100_000;
        while self.now_us < drain_end && self.clients.iter().any(Option::is_some) {
            self.step(false);
        }
        self.final_reads()?;
        self.check_convergence()?;
        self.check_linearizable()?;
        self.report.history = self.history.iter().map(|d| self.line(d)).collect();
        Ok(self.report)
    }

    fn line(&self, done: &Done) -> String {
        let args = done.args.iter().map(text).collect::<Vec<_>>().join(" ");
        let outcome = match &done.ret {
            Some((ret, reply)) => format!("{ret:>9} {}", describe(reply)),
            None => format!("{:>9} unknown", "-"),
        };
        format!(
            "{:>9} {outcome} client {} node {}: {args}",
            done.call_us, done.client, done.node
        )
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
            let store = MemKvStore::open(&node.disk);
            let mut raft_config = self.config.raft.clone();
            raft_config.id = node.id;
            raft_config.applied = dr_node::machine::KvStore::applied_index(&store);
            raft_config.election_jitter_seed = self.rng.next_u64();
            let status = Arc::new(StatusBoard::new(node.id, 1));
            let machine = KvMachine::new(&store, status);
            let raft = RaftNode::new(raft_config.clone(), store).expect("a stored node restarts");
            let mut config = self.config.clone();
            config.raft = raft_config;
            config.incarnation = self.rng.next_u64();
            let parts = Parts {
                machine,
                transport: Box::new(node.outbox.clone()),
                clock: Box::new(node.clock.clone()),
                observer: Box::new(NoObserver),
                metrics: Arc::default(),
            };
            node.engine = Some(Engine::new(config, raft, parts));
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
        if local_ns >= node.next_tick_ns {
            // Like tokio's interval with `Delay`: one tick, however late.
            node.next_tick_ns = local_ns + TICK.as_nanos() as u64;
            engine.turn(Event::Tick, &mut node.queues);
        }
        // Bounded: a turn takes at most its limits, so loop until empty.
        for _ in 0..64 {
            let event = if let Some(message) = node.queues.messages.pop_front() {
                Event::Message(message)
            } else if let Some(request) = node.queues.requests.pop_front() {
                Event::Request(request)
            } else {
                break;
            };
            engine.turn(event, &mut node.queues);
        }
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
            if let Some(node) = self.nodes.iter_mut().find(|n| n.id == message.to)
                && node.engine.is_some()
            {
                node.queues.messages.push_back(message);
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
        match self.rng.range(0, 10) {
            0 => {
                let id = self.rng.pick(&ids);
                let index = self.node_index(id);
                let node = &mut self.nodes[index];
                if node.engine.take().is_some() {
                    // Everything not synced is gone; so is what waited.
                    node.queues = Queues::default();
                    node.outbox.0.lock().expect("not poisoned").clear();
                    node.restart_at_us = Some(now + self.rng.range(20_000, 400_000));
                    node.paused_until_us = 0;
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
            8 => {
                let id = self.rng.pick(&ids);
                let index = self.node_index(id);
                let drift = self.settings.drift_ppm;
                self.nodes[index].rate_ppm = 1_000_000 + self.rng.range(0, 2 * drift + 1) - drift;
            }
            _ => {}
        }
    }

    fn heal(&mut self) {
        self.network.cut.clear();
        self.network.drop_ppm = 0;
        self.network.duplicate_ppm = 0;
        self.network.latency_us = (100, 1_500);
        for node in &mut self.nodes {
            node.paused_until_us = 0;
            if node.engine.is_none() {
                node.restart_at_us = Some(self.now_us);
            }
        }
    }

    fn value(&mut self) -> String {
        self.next_value += 1;
        format!("v{}", self.next_value)
    }

    /// A random command on the keys, as a client would send it.
    fn random_command(&mut self) -> Vec<String> {
        let key = self.rng.pick(KEYS).to_string();
        let other = self.rng.pick(KEYS).to_string();
        match self.rng.range(0, 16) {
            0..=2 => vec!["GET".into(), key],
            3 => vec!["MGET".into(), key, other],
            4 | 5 => vec!["SET".into(), key, self.value()],
            6 => vec!["SET".into(), key, self.value(), "NX".into()],
            7 => vec!["SET".into(), key, self.value(), "XX".into()],
            8 => vec!["SET".into(), key, self.value(), "GET".into()],
            9 => vec!["SETNX".into(), key, self.value()],
            10 => vec!["DEL".into(), key],
            11 | 12 => vec!["INCR".into(), key],
            13 => vec!["APPEND".into(), key, self.value()],
            14 => {
                let expected = if self.rng.chance(300_000) {
                    String::new()
                } else {
                    format!("v{}", self.next_value.saturating_sub(self.rng.range(0, 4)))
                };
                vec!["CAS".into(), key, expected, self.value()]
            }
            _ => {
                let (a, b) = (self.value(), self.value());
                vec!["MSET".into(), key, a, other, b]
            }
        }
    }

    fn poll_clients(&mut self, start_new: bool) {
        for client in 0..self.clients.len() {
            if let Some(pending) = self.clients[client].take() {
                self.clients[client] = self.poll(client, pending);
            }
            if self.clients[client].is_none() && start_new && self.rng.chance(500_000) {
                let args: Vec<Bytes> = self.random_command().into_iter().map(Bytes::from).collect();
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
        let target = &mut self.nodes[index];
        // A crashed node refuses the connection: certainly not done.
        target.engine.as_ref()?;
        target.queues.requests.push_back(request.into_engine());
        Some(Pending {
            args,
            node,
            call_us: self.now_us,
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
            Ok(Err(error)) if error.is_retryable() => {
                self.report.refused += 1;
                return None;
            }
            Ok(Err(EngineError::Refused(_))) => {
                self.report.refused += 1;
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
            let applied: BTreeSet<u64> = self
                .nodes
                .iter()
                .filter_map(|n| n.engine.as_ref())
                .map(|e| e.applied_index())
                .collect();
            let datas: Vec<_> = self
                .nodes
                .iter()
                .filter_map(|n| n.engine.as_ref())
                .map(|e| e.store().data().clone())
                .collect();
            if applied.len() == 1 && datas.windows(2).all(|w| w[0] == w[1]) {
                return Ok(());
            }
            if self.now_us >= deadline {
                return Err(format!(
                    "the nodes did not converge: applied indexes {applied:?}"
                ));
            }
            self.step(false);
        }
    }

    fn check_linearizable(&self) -> Result<(), String> {
        let mut per_key: BTreeMap<String, Vec<(usize, Timed<KeyOp>)>> = BTreeMap::new();
        for (index, done) in self.history.iter().enumerate() {
            for (key, op) in split(done) {
                per_key.entry(key).or_default().push((index, op));
            }
        }
        for (key, ops) in per_key {
            let timed: Vec<Timed<KeyOp>> = ops.iter().map(|(_, op)| op.clone()).collect();
            if !check_history::<StringKey>(&timed) {
                let mut lines = String::new();
                for (index, _) in &ops {
                    let _ = writeln!(lines, "    {}", self.line(&self.history[*index]));
                }
                return Err(format!(
                    "the history of key {key:?} is not linearizable:\n{lines}"
                ));
            }
        }
        Ok(())
    }
}

/// One command of the history as operations on single keys.
fn split(done: &Done) -> Vec<(String, Timed<KeyOp>)> {
    let args: Vec<String> = done.args.iter().map(text).collect();
    let (ret, reply) = match &done.ret {
        Some((ret, reply)) => (Some(*ret), Some(reply.clone())),
        None => (None, None),
    };
    let timed = |command: KeyCommand, reply: Option<Reply>| Timed {
        op: KeyOp { command, reply },
        call: done.call_us,
        ret,
    };
    let bytes = |s: &String| Bytes::from(s.clone());
    let set = |value: &String, condition, get, written_reply| KeyCommand::Set {
        value: bytes(value),
        condition,
        get,
        written_reply,
    };
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["GET", key] => vec![(key.to_string(), timed(KeyCommand::Get, reply))],
        ["SET", key, _] => vec![(
            key.to_string(),
            timed(set(&args[2], Condition::Always, false, false), reply),
        )],
        ["SET", key, _, flag] => {
            let (condition, get) = match *flag {
                "NX" => (Condition::IfAbsent, false),
                "XX" => (Condition::IfPresent, false),
                _ => (Condition::Always, true),
            };
            vec![(
                key.to_string(),
                timed(set(&args[2], condition, get, false), reply),
            )]
        }
        ["SETNX", key, _] => vec![(
            key.to_string(),
            timed(set(&args[2], Condition::IfAbsent, false, true), reply),
        )],
        ["DEL", key] => vec![(key.to_string(), timed(KeyCommand::Del, reply))],
        ["INCR", key] => vec![(key.to_string(), timed(KeyCommand::IncrBy(1), reply))],
        ["APPEND", key, _] => vec![(
            key.to_string(),
            timed(KeyCommand::Append(bytes(&args[2])), reply),
        )],
        ["CAS", key, _, _] => vec![(
            key.to_string(),
            timed(
                KeyCommand::Cas {
                    expected: bytes(&args[2]),
                    new: bytes(&args[3]),
                },
                reply,
            ),
        )],
        ["MSET", rest @ ..] => {
            // Two pairs may name one key: the later value wins, as one
            // write of the key.
            let mut last: BTreeMap<&str, usize> = BTreeMap::new();
            for (i, key) in rest.iter().enumerate().step_by(2) {
                last.insert(key, i + 2);
            }
            last.into_iter()
                .map(|(key, value)| {
                    let command = set(&args[value], Condition::Always, false, false);
                    (key.to_string(), timed(command, reply.clone()))
                })
                .collect()
        }
        ["MGET", keys @ ..] => {
            let replies: Vec<Option<Reply>> = match &reply {
                Some(Reply::Array(items)) if items.len() == keys.len() => {
                    items.iter().cloned().map(Some).collect()
                }
                _ => vec![None; keys.len()],
            };
            keys.iter()
                .zip(replies)
                .map(|(key, reply)| (key.to_string(), timed(KeyCommand::Get, reply)))
                .collect()
        }
        other => panic!("the simulator does not model {other:?}"),
    }
}
