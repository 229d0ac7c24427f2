//! The engine thread: `dr-engine`'s replica engine over RocksDB
//! ([`RocksStorage`]), the peer transport ([`TcpTransport`]), the system
//! clock and the key-value state machine ([`KvMachine`]), fed from tokio
//! channels.
//!
//! The thread runs its own single-threaded tokio runtime and waits for a
//! tick, a peer's message or a client's request; [`Engine::turn`] then
//! takes everything else waiting (group commit) and works it off, and the
//! thread publishes the node's status. The synced write blocks nobody
//! else: while it waits for the disk, new requests queue up for the next
//! turn. The engine itself (writes, reads and leases, forwarding,
//! membership, snapshots) is the one the simulator runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dr_codec::message::{ConfState, LogIndex, Message, MessageBody, NodeId};
use dr_engine::{
    Engine, EngineConfig, EngineError, Event, ForwardDesk, Inbox, Observer, Parts, Responder,
    Response, Routed,
};
use dr_raft::{ConfChangeOp, RaftNode};
use dr_storage::{BackupInfo, RocksStorage, StoreReader};
use dr_transport::TcpTransport;
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::{NodeClock, Ticks, WallClock};
use crate::command::{ReadOp, ReplyShape, write_reply};
use crate::kv::WriteOp;
use crate::lease::LeaseGate;
use crate::machine::{KvMachine, KvStore, KvWrite};
use crate::metrics::Metrics;
use crate::resp::Reply;
use crate::status::StatusBoard;

/// The client's error reply for an engine error: `-TRYAGAIN` when it
/// certainly did not happen, `-UNCERTAIN` when it may have.
pub fn error_reply(error: &EngineError) -> Reply {
    match error {
        EngineError::NotLeader { .. } | EngineError::TryAgain(_) => {
            Reply::Error(format!("TRYAGAIN {error}"))
        }
        EngineError::Uncertain(_) => uncertain_reply(error),
        EngineError::Refused(_) => Reply::err(error.to_string()),
    }
}

/// `-UNCERTAIN why`: the write may or may not have been applied.
pub fn uncertain_reply(why: &dyn std::fmt::Display) -> Reply {
    Reply::Error(format!(
        "UNCERTAIN {why}; the write may or may not have been applied"
    ))
}

/// What a request gets back.
pub type Answer = oneshot::Sender<Result<Reply, EngineError>>;

/// A request to the engine.
#[derive(Debug)]
pub enum Request {
    /// Propose a write; answered once applied.
    Write {
        /// The change.
        op: WriteOp,
        /// How its outcome is answered.
        shape: ReplyShape,
        /// Where the answer goes.
        answer: Answer,
    },
    /// Propose a membership change; answered once applied.
    ConfChange {
        /// The change.
        op: ConfChangeOp,
        /// Where the answer goes.
        answer: Answer,
    },
    /// Hand leadership to a voter; answered once started.
    TransferLeader {
        /// The voter.
        target: NodeId,
        /// Where the answer goes.
        answer: Answer,
    },
    /// A linearizable read.
    Read {
        /// What to read.
        op: ReadOp,
        /// Where the answer goes.
        answer: Answer,
    },
    /// Snapshot the state machine now (answers the snapshot's index).
    Snapshot {
        /// Where the answer goes.
        answer: Answer,
    },
}

/// Back the store up into `dir`, keeping the newest `keep` backups.
#[derive(Debug)]
pub struct BackupRequest {
    /// The backup directory.
    pub dir: PathBuf,
    /// How many backups to keep.
    pub keep: usize,
    /// Where the answer goes.
    pub answer: oneshot::Sender<Result<BackupInfo, String>>,
}

/// The machine drkv runs.
pub type NodeMachine = KvMachine<RocksStorage>;

/// Where an answer goes, and how the engine's typed response becomes the
/// client's reply.
#[derive(Debug)]
pub struct ReplyTo {
    /// How a write's outcome is answered (only a write's answer carries
    /// one).
    shape: ReplyShape,
    answer: Answer,
}

impl ReplyTo {
    /// Answers a write on `answer`, its outcome shaped by `shape`.
    pub fn write(shape: ReplyShape, answer: Answer) -> Self {
        Self { shape, answer }
    }

    /// Answers any other request on `answer`.
    pub fn new(answer: Answer) -> Self {
        Self::write(ReplyShape::Ok, answer)
    }
}

impl<S: KvStore> Responder<KvMachine<S>> for ReplyTo {
    fn respond(self, result: Result<Response<KvMachine<S>>, EngineError>) {
        let reply = result.map(|response| match response {
            Response::Written(outcome) => write_reply(self.shape, outcome),
            Response::Read(reply) => reply,
            Response::Done => Reply::OK,
            Response::Snapshot(index) => Reply::Integer(index as i64),
        });
        let _ = self.answer.send(reply);
    }
}

impl Request {
    /// The engine's request.
    pub fn into_engine<S: KvStore>(self) -> dr_engine::Request<KvMachine<S>, ReplyTo> {
        use dr_engine::Request as R;
        match self {
            Self::Write { op, shape, answer } => R::Write {
                command: KvWrite { op, shape },
                answer: ReplyTo::write(shape, answer),
            },
            Self::ConfChange { op, answer } => R::ConfChange {
                op,
                answer: ReplyTo::new(answer),
            },
            Self::TransferLeader { target, answer } => R::TransferLeader {
                target,
                answer: ReplyTo::new(answer),
            },
            Self::Read { op, answer } => R::Read {
                query: op,
                answer: ReplyTo::new(answer),
            },
            Self::Snapshot { answer } => R::Snapshot {
                answer: ReplyTo::new(answer),
            },
        }
    }
}

/// A request as the engine takes it.
pub type EngineRequest = dr_engine::Request<NodeMachine, ReplyTo>;

/// The engine's forward desk as drkv uses it.
pub type NodeDesk = ForwardDesk<NodeMachine, ReplyTo>;

/// The engine's queue of requests was full: nothing was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overloaded;

/// How the node's engine runs.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// The engine's settings.
    pub engine: EngineConfig,
    /// The cluster id (for `/status`).
    pub cluster_id: u64,
    /// Peer addresses known from the command line or config file.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// The most keys one `KEYS` looks at.
    pub keys_max: usize,
}

/// A running engine: how to reach it and watch it.
#[derive(Clone)]
pub struct EngineHandle {
    /// Requests go here (see [`EngineHandle::try_submit`] for writes).
    pub requests: mpsc::Sender<EngineRequest>,
    /// A follower's writes go to the leader through here, on the
    /// connection's own thread (the engine's thread is not woken).
    desk: Arc<NodeDesk>,
    transport: Arc<TcpTransport>,
    /// Backups go here.
    pub backups: mpsc::Sender<BackupRequest>,
    /// The state after the last turn.
    pub status: Arc<StatusBoard>,
    /// The counters.
    pub metrics: Arc<Metrics>,
    /// The leader lease as published for connections (`--read-lease`).
    pub lease: Arc<LeaseGate>,
    /// Point reads of the state machine, for reads on the lease.
    pub reader: StoreReader,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("id", &self.status.id())
            .field("forwards_pending", &self.desk.pending())
            .finish_non_exhaustive()
    }
}

impl EngineHandle {
    /// Hands `request` on without waiting: a write (membership change,
    /// leader transfer) straight to the leader when this node follows
    /// one, anything else to the engine's queue.
    pub fn try_submit(&self, request: Request) -> Result<(), Overloaded> {
        match self.route(request) {
            None => Ok(()),
            Some(request) => self.requests.try_send(request).map_err(|_| Overloaded),
        }
    }

    /// The request when it is the engine's to take.
    fn route(&self, request: Request) -> Option<EngineRequest> {
        let transport = &self.transport;
        let mut send = |message| dr_transport::Transport::send(&**transport, message);
        match self
            .desk
            .route(request.into_engine(), NodeClock.now(), &mut send)
        {
            Routed::Taken => None,
            Routed::ToEngine(request) => Some(request),
        }
    }
}

/// Starts the engine thread. It stops when `shutdown` turns true (or every
/// request sender is gone).
pub fn start(
    config: RuntimeConfig,
    raft: RaftNode<RocksStorage>,
    transport: Arc<TcpTransport>,
    inbox: mpsc::Receiver<Message>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<(EngineHandle, std::thread::JoinHandle<()>)> {
    let (requests_tx, requests) = mpsc::channel(64 << 10);
    let (backups_tx, backups) = mpsc::channel(16);
    let clock = NodeClock;
    let status = Arc::new(StatusBoard::new(raft.id(), config.cluster_id));
    let metrics: Arc<Metrics> = Arc::default();
    let lease = Arc::new(LeaseGate::new(clock));
    let reader = raft.storage().reader();
    let wall = WallClock::new(clock.unix_origin_ms());
    let machine = KvMachine::new(raft.storage(), Arc::clone(&status), wall)
        .map_err(|error| std::io::Error::other(error.to_string()))?
        .with_keys_max(config.keys_max);
    let parts = Parts {
        machine,
        transport: Box::new(PeerLinks {
            transport: Arc::clone(&transport),
            configured: config.peers.clone(),
            connected: config.peers,
            status: Arc::clone(&status),
        }),
        clock: Box::new(clock),
        observer: Box::new(GateObserver {
            gate: Arc::clone(&lease),
        }),
        metrics: Arc::clone(&metrics.engine),
    };
    let tick = config.engine.tick;
    let engine = Engine::new(config.engine, raft, parts);
    let desk = Arc::clone(engine.forward_desk());
    let answers = Arc::clone(&desk);
    // The leader's answers to forwarded writes go to the waiting
    // connections from the transport's reading task.
    let installed = transport.intercept(Box::new(move |message: Message| {
        let Message {
            from,
            to,
            term,
            body,
        } = message;
        match body {
            MessageBody::ForwardResponse(response) => {
                answers.answered(from, response);
                None
            }
            body => Some(Message {
                from,
                to,
                term,
                body,
            }),
        }
    }));
    if !installed {
        // Answers still arrive, through the engine's turn.
        tracing::warn!("the peer transport has a hook already");
    }
    let handle = EngineHandle {
        requests: requests_tx,
        desk,
        transport,
        backups: backups_tx,
        status: Arc::clone(&status),
        metrics,
        lease,
        reader,
    };
    let thread = std::thread::Builder::new()
        .name(format!("drkv-engine-{}", engine.raft().id()))
        .spawn(move || {
            // A panic here (a failed fsync, a broken invariant) must not
            // leave a process that accepts clients with no engine behind
            // it: the process ends, and a supervisor restarts it from
            // what is durable.
            let _abort_on_panic = AbortOnPanic;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a single-threaded runtime starts");
            let channels = Channels {
                requests,
                messages: inbox,
            };
            let publisher = Publisher::new(status);
            runtime.block_on(run(engine, tick, channels, backups, publisher, shutdown));
        })?;
    Ok((handle, thread))
}

type NodeEngine = Engine<NodeMachine, ReplyTo>;

async fn run(
    mut engine: NodeEngine,
    tick: Duration,
    mut channels: Channels,
    mut backups: mpsc::Receiver<BackupRequest>,
    mut publisher: Publisher,
    mut shutdown: watch::Receiver<bool>,
) {
    // Ticks follow the node's clock; the interval only wakes the loop
    // (twice a tick, so a clock running fast gets its extra ticks in time).
    let mut ticks = Ticks::new(NodeClock, tick);
    let mut ticker = tokio::time::interval(tick / 2);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The engine's own deadline (a leader's lazy sync): one timer, moved
    // only when the deadline changes.
    let wake = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(wake);
    let mut wake_at: Option<tokio::time::Instant> = None;
    publisher.publish(&engine);
    loop {
        let due = engine
            .wake_in()
            .map(|after| tokio::time::Instant::now() + after);
        match due {
            Some(at) if wake_at.is_none_or(|armed| at < armed) => {
                wake.as_mut().reset(at);
                wake_at = Some(at);
            }
            None => wake_at = None,
            Some(_) => {}
        }
        let event = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            () = &mut wake, if wake_at.is_some() => {
                wake_at = None;
                Event::Wake
            }
            _ = ticker.tick() => {
                let due = ticks.due();
                for _ in 0..due {
                    engine.turn(Event::Tick, &mut channels);
                }
                if due > 0 {
                    publisher.publish(&engine);
                }
                continue;
            }
            message = channels.messages.recv() => match message {
                Some(message) => Event::Message(message),
                None => break,
            },
            request = channels.requests.recv() => match request {
                Some(request) => Event::Request(request),
                None => break,
            },
            Some(backup) = backups.recv() => {
                let result = engine.store_mut().backup(&backup.dir, backup.keep);
                let _ = backup.answer.send(result.map_err(|e| e.to_string()));
                continue;
            }
        };
        engine.turn(event, &mut channels);
        publisher.publish(&engine);
    }
    engine.shut_down();
}

/// The engine thread's receiving ends.
struct Channels {
    requests: mpsc::Receiver<EngineRequest>,
    messages: mpsc::Receiver<Message>,
}

impl Inbox<NodeMachine, ReplyTo> for Channels {
    fn message(&mut self) -> Option<Message> {
        self.messages.try_recv().ok()
    }

    fn request(&mut self) -> Option<EngineRequest> {
        self.requests.try_recv().ok()
    }
}

/// Publishes the engine's state after every turn.
struct Publisher {
    status: Arc<StatusBoard>,
    /// The configuration last published.
    conf: ConfState,
    rss_read_at: Instant,
}

impl Publisher {
    fn new(status: Arc<StatusBoard>) -> Self {
        Self {
            status,
            conf: ConfState::default(),
            rss_read_at: Instant::now() - Duration::from_secs(2),
        }
    }

    fn publish(&mut self, engine: &NodeEngine) {
        if self.rss_read_at.elapsed() >= Duration::from_secs(1) {
            self.rss_read_at = Instant::now();
            let store = engine.store();
            self.status.publish_memory(
                resident_bytes(),
                store.read_mirror_bytes() as u64,
                store.write_behind_bytes() as u64,
            );
            self.status
                .publish_raft_log(store.log_kind(), store.log_segment_count());
        }
        self.status
            .publish(&engine.progress(), engine.machine().keys());
        let conf = engine.raft().conf_state();
        if *conf != self.conf {
            self.conf.clone_from(conf);
            self.status.publish_conf(&self.conf);
        }
    }
}

/// The peer transport as the engine sees it: messages out, and the peer
/// list following the configuration and the replicated member table.
struct PeerLinks {
    transport: Arc<TcpTransport>,
    /// Peer addresses from the command line or config file.
    configured: BTreeMap<NodeId, SocketAddr>,
    connected: BTreeMap<NodeId, SocketAddr>,
    /// Where the state machine publishes the member table.
    status: Arc<StatusBoard>,
}

impl dr_engine::Transport for PeerLinks {
    /// Held until the engine flushes: then written on the engine's
    /// thread, one frame per peer, with no writer task to wake.
    fn send(&mut self, message: Message) -> bool {
        self.transport.hold(message)
    }

    fn flush(&mut self) {
        self.transport.flush();
    }

    /// Connects to every member of `conf` whose address is known, and
    /// forgets peers that are no longer members.
    fn sync_members(&mut self, conf: &ConfState) {
        let me = self.status.id();
        let members: Vec<NodeId> = conf
            .voters
            .iter()
            .chain(&conf.voters_outgoing)
            .chain(&conf.learners)
            .chain(&conf.learners_next)
            .copied()
            .filter(|&id| id != me)
            .collect();
        for &id in &members {
            let recorded = self.status.member(id).and_then(|m| m.peer.parse().ok());
            let Some(addr) = recorded.or_else(|| self.configured.get(&id).copied()) else {
                continue;
            };
            if self.connected.get(&id) != Some(&addr) {
                tracing::info!(peer = id, %addr, "connecting to member");
                self.transport.add_peer(id, addr);
                self.connected.insert(id, addr);
            }
        }
        if members.is_empty() && conf.voters.is_empty() {
            // No configuration yet (a joining node): keep the given peers.
            return;
        }
        let gone: Vec<NodeId> = self
            .connected
            .keys()
            .copied()
            .filter(|id| !members.contains(id))
            .collect();
        for id in gone {
            tracing::info!(peer = id, "disconnecting from a removed member");
            self.transport.remove_peer(id);
            self.connected.remove(&id);
        }
    }
}

/// Publishes the lease and the applied index for connections.
struct GateObserver {
    gate: Arc<LeaseGate>,
}

impl Observer for GateObserver {
    fn lease(&mut self, lease: Option<(Duration, LogIndex)>) {
        self.gate.publish(lease);
    }

    fn applied(&mut self, index: LogIndex) {
        self.gate.publish_applied(index);
    }
}

/// Ends the process when dropped during a panic (see `start`).
struct AbortOnPanic;

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the engine thread panicked: stopping the process");
            std::process::abort();
        }
    }
}

/// This process's resident set size, from `/proc/self/statm` (Linux).
fn resident_bytes() -> u64 {
    const PAGE_BYTES: u64 = 4096;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|text| text.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * PAGE_BYTES)
}
