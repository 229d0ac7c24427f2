//! The engine: one thread that owns the consensus core and its store.
//!
//! Each turn of its loop takes a tick, the peers' messages and the
//! clients' requests that are waiting — all of them, so one ready and one
//! synced write cover every proposal that arrived meanwhile (group
//! commit) — then works off the readies in the contract's order: persist,
//! send, apply, answer. The thread runs its own single-threaded tokio
//! runtime, so the synced write blocks nobody else: while it waits for
//! the disk, new requests queue up for the next turn.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dr_codec::message::{ConfState, Entry, LogIndex, Message, NodeId, SnapshotMeta, Term};
use dr_raft::{
    ConfChangeOp, LogStore, ProposeError, RaftNode, ReadError, ReadState, Ready, Role, Storage,
};
use dr_storage::{BackupInfo, RocksStorage, StoreReader};
use dr_transport::{TcpTransport, Transport};
use tokio::sync::{mpsc, oneshot, watch};

use crate::command::{ReadOp, ReplyShape, glob_match, write_reply};
use crate::kv::{self, MemberAddrs, Outcome, PresenceCache, USER, WriteOp};
use crate::lease::{LeaseClock, LeaseGate, lease_clock, lease_remaining};
use crate::metrics::{Metrics, bump};
use crate::resp::Reply;
use crate::status::{Progress, StatusBoard};

mod peers;

pub use peers::{ForwardDecodeError, Forwarded};
use peers::{Forwards, ReadFetch, ReadWaiter, Waiter};

/// Why a request got no answer from the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeError {
    /// This node does not lead (and did not forward the request).
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// Nothing happened; retrying is safe.
    TryAgain(String),
    /// The write may or may not have taken effect.
    Uncertain(String),
    /// Refused for good (a membership change that cannot apply).
    Refused(String),
}

impl NodeError {
    /// The client's error reply.
    pub fn reply(&self) -> Reply {
        match self {
            Self::NotLeader { leader: Some(id) } => Reply::Error(format!(
                "TRYAGAIN node {id} leads but cannot be reached yet"
            )),
            Self::NotLeader { leader: None } => {
                Reply::Error("TRYAGAIN no leader (an election is running)".into())
            }
            Self::TryAgain(why) => Reply::Error(format!("TRYAGAIN {why}")),
            Self::Uncertain(why) => Reply::Error(format!(
                "UNCERTAIN {why}; the write may or may not have been applied"
            )),
            Self::Refused(why) => Reply::err(why),
        }
    }
}

/// What a request gets back.
pub type Answer = oneshot::Sender<Result<Reply, NodeError>>;

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
    /// Back the store up into `dir`, keeping the newest `keep` backups.
    Backup {
        /// The backup directory.
        dir: PathBuf,
        /// How many backups to keep.
        keep: usize,
        /// Where the answer goes.
        answer: oneshot::Sender<Result<BackupInfo, String>>,
    },
}

/// How the engine runs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The consensus core's settings.
    pub raft: dr_raft::Config,
    /// The cluster id (for `/status`).
    pub cluster_id: u64,
    /// Time between ticks.
    pub tick: Duration,
    /// Snapshot after this many applied entries.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot, for slow followers.
    pub log_kept: u64,
    /// Peer addresses known from the command line or config file.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Requests one turn takes at most before it writes (bounds latency).
    pub turn_requests_max: usize,
    /// Serve reads on the leader's lease (see `NodeConfig::read_lease`).
    pub read_lease: bool,
    /// How long a follower waits for the leader's answer to a forwarded
    /// request before telling its client the outcome is unknown.
    pub forward_timeout: Duration,
    /// How long a follower waits for a read index from the leader.
    pub read_fetch_timeout: Duration,
}

/// A running engine: how to reach it and watch it.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    /// Requests go here.
    pub requests: mpsc::Sender<Request>,
    /// The state after the last turn.
    pub status: Arc<StatusBoard>,
    /// The counters.
    pub metrics: Arc<Metrics>,
    /// The leader lease as published for connections (`--read-lease`).
    pub lease: Arc<LeaseGate>,
    /// Point reads of the state machine, for reads on the lease.
    pub reader: StoreReader,
}

/// Starts the engine thread. It stops when `shutdown` turns true (or every
/// request sender is gone) and returns the store.
pub fn start(
    config: EngineConfig,
    raft: RaftNode<RocksStorage>,
    transport: Arc<TcpTransport>,
    inbox: mpsc::Receiver<Message>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<(EngineHandle, std::thread::JoinHandle<()>)> {
    let (requests_tx, requests) = mpsc::channel(64 << 10);
    let handle = EngineHandle {
        requests: requests_tx,
        status: Arc::new(StatusBoard::new(raft.id(), config.cluster_id)),
        metrics: Arc::default(),
        lease: Arc::default(),
        reader: raft.storage().reader(),
    };
    let engine = Engine::new(config, raft, transport, &handle);
    let thread = std::thread::Builder::new()
        .name(format!("drkv-engine-{}", engine.raft.id()))
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
            runtime.block_on(engine.run(requests, inbox, shutdown));
        })?;
    Ok((handle, thread))
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

#[derive(Debug)]
struct PendingRead {
    op: ReadOp,
    answer: Answer,
}

/// Follower reads: those waiting for the next read-index fetch, and those
/// whose fetch is out.
#[derive(Default)]
struct FollowerReads {
    unsent: Vec<PendingRead>,
    in_flight: Option<ReadFetch>,
}

/// Server-side SCAN cursors: cursor number → the next key, the oldest
/// forgotten first.
struct ScanCursors {
    next: u64,
    positions: HashMap<u64, Bytes>,
    order: VecDeque<u64>,
}

const SCAN_CURSORS_MAX: usize = 16 << 10;

impl ScanCursors {
    fn new(node: NodeId) -> Self {
        // Different nodes hand out different numbers, so a cursor taken
        // to another node is refused rather than misread.
        Self {
            next: (node << 40) | 1,
            positions: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn save(&mut self, next_key: Bytes) -> u64 {
        let cursor = self.next;
        self.next += 1;
        if self.order.len() == SCAN_CURSORS_MAX
            && let Some(oldest) = self.order.pop_front()
        {
            self.positions.remove(&oldest);
        }
        self.positions.insert(cursor, next_key);
        self.order.push_back(cursor);
        cursor
    }
}

struct Engine {
    config: EngineConfig,
    raft: RaftNode<RocksStorage>,
    transport: Arc<TcpTransport>,
    status: Arc<StatusBoard>,
    /// The configuration last published.
    published_conf: ConfState,
    metrics: Arc<Metrics>,
    /// Proposals waiting for their entry: index → (term, waiter, shape).
    writes: BTreeMap<LogIndex, (Term, Waiter, Option<ReplyShape>)>,
    /// Reads waiting for the leader's read index: context → read.
    reads: HashMap<u64, ReadWaiter>,
    next_read_context: u64,
    /// Requests this follower forwarded to the leader.
    forwards: Forwards,
    /// The last id given to a request to a peer.
    next_request_id: u64,
    /// Confirmed reads waiting for the apply to reach their index.
    reads_after_apply: BTreeMap<LogIndex, Vec<PendingRead>>,
    follower_reads: FollowerReads,
    cursors: ScanCursors,
    members: BTreeMap<NodeId, MemberAddrs>,
    connected_peers: BTreeMap<NodeId, SocketAddr>,
    snapshot_index: LogIndex,
    /// When the snapshot being copied in the background was started.
    snapshot_started: Option<Instant>,
    /// No snapshot is tried before this (after one was refused).
    snapshot_retry_at: Option<Instant>,
    /// Client keys as of the applied index (kept here: reading it from
    /// the store on every turn costs a memtable search).
    keys: u64,
    /// Which client keys exist, as far as applies have seen.
    presence: PresenceCache,
    rss_read_at: Instant,
    /// The leader lease, as this node's clock sees it.
    lease: LeaseClock,
    /// The lease as published for connections.
    gate: Arc<LeaseGate>,
}

impl Engine {
    fn new(
        config: EngineConfig,
        raft: RaftNode<RocksStorage>,
        transport: Arc<TcpTransport>,
        handle: &EngineHandle,
    ) -> Self {
        let id = raft.id();
        let snapshot_index = raft.storage().snapshot_meta().map_or(0, |m| m.index);
        let mut engine = Self {
            raft,
            transport,
            status: Arc::clone(&handle.status),
            published_conf: ConfState::default(),
            metrics: Arc::clone(&handle.metrics),
            writes: BTreeMap::new(),
            reads: HashMap::new(),
            next_read_context: 1,
            forwards: Forwards::default(),
            next_request_id: 0,
            reads_after_apply: BTreeMap::new(),
            follower_reads: FollowerReads::default(),
            cursors: ScanCursors::new(id),
            members: BTreeMap::new(),
            connected_peers: config.peers.clone(),
            snapshot_index,
            snapshot_started: None,
            snapshot_retry_at: None,
            keys: 0,
            presence: PresenceCache::default(),
            rss_read_at: Instant::now() - Duration::from_secs(2),
            lease: lease_clock(config.raft.election_ticks, config.tick),
            gate: Arc::clone(&handle.lease),
            config,
        };
        engine.reload_key_count();
        engine.reload_members();
        engine.publish_status();
        engine
            .gate
            .publish_applied(engine.raft.storage().applied_index());
        engine
    }

    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut inbox: mpsc::Receiver<Message>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(self.config.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut first_request = None;
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                _ = ticker.tick() => self.on_tick(),
                message = inbox.recv() => match message {
                    Some(message) => self.step(message),
                    None => break,
                },
                request = requests.recv() => match request {
                    Some(request) => first_request = Some(request),
                    None => break,
                },
            }
            // A follower forwards its requests (writes to the leader,
            // reads for a read index) before its own synced write: they
            // join no ready of its own, and should not wait for its disk.
            let follower = self.raft.role() != Role::Leader;
            if follower {
                self.take_requests(first_request.take(), &mut requests);
            }
            // Peers first: acknowledgements commit entries, which are
            // applied and answered now rather than after the next synced
            // write (a leader's committed entries are on its disk already).
            while let Ok(message) = inbox.try_recv() {
                self.step(message);
            }
            self.drive();
            // Then every request waiting joins one ready: one synced write
            // for all of them (group commit).
            if !follower {
                self.take_requests(first_request, &mut requests);
            }
            self.drive();
            self.publish_status();
        }
        self.fail_everything("the node is shutting down");
        tracing::info!(id = self.raft.id(), "engine stopped");
    }

    /// Handles `first` and what else is waiting, up to
    /// `turn_requests_max` in all.
    fn take_requests(&mut self, first: Option<Request>, requests: &mut mpsc::Receiver<Request>) {
        let mut taken = 0;
        if let Some(request) = first {
            self.handle(request);
            taken += 1;
        }
        while taken < self.config.turn_requests_max {
            let Ok(request) = requests.try_recv() else {
                break;
            };
            self.handle(request);
            taken += 1;
        }
    }

    fn step(&mut self, message: Message) {
        if !message.body.is_raft() {
            self.serve_peer(message);
            return;
        }
        match self.raft.step(message) {
            Ok(()) => {}
            Err(error @ dr_raft::StepError::ConflictingLeader { .. }) => {
                tracing::error!(%error, "refused a peer message");
            }
            Err(error) => tracing::debug!(%error, "dropped a peer message"),
        }
    }

    fn not_leader(&self) -> NodeError {
        NodeError::NotLeader {
            leader: self.raft.leader(),
        }
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::Write { op, shape, answer } => {
                self.submit_local(Forwarded::Write { op, shape }, answer);
            }
            Request::ConfChange { op, answer } => {
                self.submit_local(Forwarded::ConfChange(op), answer);
            }
            Request::TransferLeader { target, answer } => {
                self.submit_local(Forwarded::TransferLeader(target), answer);
            }
            Request::Read { op, answer } => self.read(PendingRead { op, answer }),
            Request::Snapshot { answer } => {
                let result = self
                    .snapshot_now()
                    .map(|index| Reply::Integer(index as i64));
                let _ = answer.send(result.map_err(NodeError::Refused));
            }
            Request::Backup { dir, keep, answer } => {
                let result = self.raft.storage().backup(&dir, keep);
                let _ = answer.send(result.map_err(|e| e.to_string()));
            }
        }
    }

    fn propose_error(&self, error: ProposeError) -> NodeError {
        match error {
            ProposeError::NotLeader { .. } => self.not_leader(),
            ProposeError::TransferInProgress => {
                NodeError::TryAgain("leadership is being handed over".into())
            }
            ProposeError::Busy => NodeError::TryAgain("too many uncommitted writes".into()),
            ProposeError::ConfChangePending => {
                NodeError::TryAgain("a membership change is still in progress".into())
            }
            ProposeError::ConfChange(error) => NodeError::Refused(error.to_string()),
            ProposeError::NotVoter(id) => NodeError::Refused(format!("node {id} is not a voter")),
        }
    }

    fn track_proposal(
        &mut self,
        result: Result<dr_raft::Proposal, ProposeError>,
        waiter: Waiter,
        shape: Option<ReplyShape>,
    ) {
        match result {
            Ok(proposal) => {
                bump(&self.metrics.proposals);
                self.writes
                    .insert(proposal.index, (proposal.term, waiter, shape));
            }
            Err(error) => {
                bump(&self.metrics.proposals_refused);
                let error = self.propose_error(error);
                self.answer(waiter, Err(error));
            }
        }
    }

    fn read(&mut self, read: PendingRead) {
        if self.raft.role() == Role::Leader {
            self.confirm_read(ReadWaiter::Client(read));
            return;
        }
        // A follower confirms its reads with a read index from the leader.
        self.follower_reads.unsent.push(read);
        self.fetch_read_index();
    }

    /// On the leader: finds the index a read (this node's, or a
    /// follower's read-index request) may be served at, on the lease or
    /// through a read round.
    fn confirm_read(&mut self, waiter: ReadWaiter) {
        if self.raft.role() != Role::Leader {
            let error = self.not_leader();
            self.read_failed(waiter, error);
            return;
        }
        if let Some(index) = self.lease_read_index() {
            bump(&self.metrics.lease_reads);
            self.read_confirmed(waiter, index);
            self.serve_applied_reads();
            return;
        }
        let context = self.next_read_context;
        self.next_read_context += 1;
        match self.raft.read_index(context) {
            Ok(()) => {
                bump(&self.metrics.read_index_requests);
                self.reads.insert(context, waiter);
            }
            Err(error) => {
                let error = self.read_error(error);
                self.read_failed(waiter, error);
            }
        }
    }

    fn read_failed(&self, waiter: ReadWaiter, error: NodeError) {
        match waiter {
            ReadWaiter::Client(read) => {
                let _ = read.answer.send(Err(error));
            }
            ReadWaiter::Peer { peer, request_id } => {
                self.answer_read_index(peer, request_id, Err(error));
            }
        }
    }

    fn read_error(&self, error: ReadError) -> NodeError {
        match error {
            ReadError::NotLeader { .. } => self.not_leader(),
            ReadError::LeadershipLost => {
                NodeError::TryAgain("leadership changed during the read".into())
            }
            ReadError::Busy => NodeError::TryAgain("too many reads pending".into()),
        }
    }

    /// Works off every ready: persist, send, apply, answer.
    fn drive(&mut self) {
        while self.raft.has_ready() {
            // Before anything leaves: a read round is dated no later than
            // its first send (the lease's invariant).
            self.lease.observe(self.raft.read_rounds(), Instant::now());
            self.publish_lease();
            let mut ready = self.raft.ready();
            // The leader's appends go out first: followers write their
            // logs while the leader writes its own.
            for message in ready.take_messages_before_persist() {
                self.transport.send(message);
            }
            self.persist(&ready);
            if let Some(snapshot) = &ready.snapshot {
                self.after_snapshot_install(snapshot);
            }
            for message in ready.messages {
                self.transport.send(message);
            }
            self.apply(&ready.committed_entries, ready.conf_state.as_ref());
            self.gate
                .publish_applied(self.raft.storage().applied_index());
            self.confirm_reads(ready.read_states);
            self.raft.advance();
            self.serve_applied_reads();
            if ready.soft_state.is_some() {
                self.on_role_change();
            }
        }
        self.maybe_snapshot();
    }

    fn persist(&mut self, ready: &Ready) {
        let syncs = self.raft.storage().must_sync(ready);
        let started = Instant::now();
        if let Err(error) = self.raft.storage_mut().persist_ready(ready) {
            // The core handed out something the store refuses: a bug, and
            // continuing would break the ready contract.
            panic!("cannot persist a ready: {error}");
        }
        if syncs {
            self.metrics
                .fsync_seconds
                .observe_duration(started.elapsed());
        }
        if !ready.entries.is_empty() {
            self.metrics
                .entries_per_write
                .observe(ready.entries.len() as f64);
        }
    }

    fn after_snapshot_install(&mut self, snapshot: &SnapshotMeta) {
        bump(&self.metrics.snapshots_installed);
        self.snapshot_index = snapshot.index;
        // Proposals the snapshot covers: whether they are in it is unknown.
        let covered: Vec<LogIndex> = self
            .writes
            .range(..=snapshot.index)
            .map(|(&i, _)| i)
            .collect();
        for index in covered {
            if let Some((_, waiter, _)) = self.writes.remove(&index) {
                let error = NodeError::Uncertain("a snapshot replaced the log".into());
                self.answer(waiter, Err(error));
            }
        }
        // The install rewrote the data behind the apply path.
        self.presence.clear();
        self.reload_members();
        self.reload_key_count();
        self.sync_peers(&snapshot.conf_state);
        tracing::info!(
            index = snapshot.index,
            "installed a snapshot from the leader"
        );
    }

    fn apply(&mut self, entries: &[Entry], conf_state: Option<&ConfState>) {
        if entries.is_empty() {
            if let Some(conf) = conf_state {
                let applied = self.raft.storage().applied_index();
                self.raft
                    .storage_mut()
                    .apply(&[], applied, Some(conf))
                    .unwrap_or_else(|e| panic!("cannot store the configuration: {e}"));
                self.sync_peers(conf);
            }
            return;
        }
        let results = kv::apply_entries(
            self.raft.storage_mut(),
            entries,
            conf_state,
            &mut self.keys,
            &mut self.presence,
            |index| {
                self.writes
                    .get(&index)
                    .is_some_and(|(_, _, shape)| *shape == Some(ReplyShape::OldValue))
            },
        )
        .unwrap_or_else(|error| panic!("cannot apply committed entries: {error}"));
        self.metrics
            .entries_applied
            .fetch_add(entries.len() as u64, Relaxed);
        self.metrics.entries_per_apply.observe(entries.len() as f64);
        let mut members_changed = false;
        for applied in results {
            members_changed |= applied.member_changed;
            let Some((term, waiter, shape)) = self.writes.remove(&applied.index) else {
                continue;
            };
            let result = if term != applied.term {
                Err(NodeError::TryAgain(
                    "the leader changed before the write committed".into(),
                ))
            } else {
                Ok(match shape {
                    Some(shape) => write_reply(shape, applied.outcome),
                    None => outcome_reply(applied.outcome),
                })
            };
            self.answer(waiter, result);
        }
        if members_changed {
            self.reload_members();
        }
        if let Some(conf) = conf_state {
            self.sync_peers(conf);
        } else if members_changed {
            let conf = self.raft.conf_state().clone();
            self.sync_peers(&conf);
        }
    }

    fn confirm_reads(&mut self, read_states: Vec<ReadState>) {
        for state in read_states {
            let Some(read) = self.reads.remove(&state.context) else {
                continue;
            };
            match state.result {
                Ok(index) => self.read_confirmed(read, index),
                Err(error) => {
                    let error = self.read_error(error);
                    self.read_failed(read, error);
                }
            }
        }
    }

    /// A read the leader may serve once it has applied `index`: a
    /// follower's read-index request gets the index, the others wait for
    /// it.
    fn read_confirmed(&mut self, waiter: ReadWaiter, index: LogIndex) {
        match waiter {
            ReadWaiter::Client(read) => self.reads_after_apply.entry(index).or_default().push(read),
            ReadWaiter::Peer { peer, request_id } => {
                self.answer_read_index(peer, request_id, Ok(index));
            }
        }
    }

    /// Publishes the lease for connections' own reads: closed unless lease
    /// reads are on and the core allows one (so it closes before a
    /// `TimeoutNow` leaves: this runs before every ready's messages).
    fn publish_lease(&self) {
        let lease = if self.config.read_lease {
            self.lease.valid_until().zip(self.raft.lease_read_index())
        } else {
            None
        };
        self.gate.publish(lease);
    }

    /// The index a read may be served at on the leader's lease, when lease
    /// reads are on, the core allows one and the lease has not run out.
    fn lease_read_index(&self) -> Option<LogIndex> {
        if !self.config.read_lease || !self.lease.holds_at(Instant::now()) {
            return None;
        }
        self.raft.lease_read_index()
    }

    /// A tick, and with lease reads a read round when the lease has less
    /// than half its length left and no round is out, so a leader under
    /// read load keeps its lease rather than falling back to rounds.
    fn on_tick(&mut self) {
        self.raft.tick();
        let now = Instant::now();
        self.expire_forwards(now);
        self.expire_read_fetch(now);
        if !self.config.read_lease || self.raft.lease_read_index().is_none() {
            return;
        }
        let low = lease_remaining(&self.lease, Instant::now()) < self.lease.duration() / 2;
        if low && !self.lease.round_in_flight() {
            // A context no read holds: the read state it yields is dropped.
            let context = self.next_read_context;
            self.next_read_context += 1;
            if self.raft.read_index(context).is_ok() {
                bump(&self.metrics.lease_renewals);
            }
        }
    }

    fn serve_applied_reads(&mut self) {
        let applied = self.raft.storage().applied_index();
        while let Some(entry) = self.reads_after_apply.first_entry() {
            if *entry.key() > applied {
                break;
            }
            for read in entry.remove() {
                let reply = self.serve(&read.op);
                bump(&self.metrics.reads_served);
                let _ = read
                    .answer
                    .send(reply.map_err(|e| NodeError::TryAgain(format!("storage: {e}"))));
            }
        }
    }

    fn serve(&mut self, op: &ReadOp) -> Result<Reply, dr_raft::StorageError> {
        let store = self.raft.storage();
        let value = |key: &[u8]| store.get(&kv::user_key(key));
        Ok(match op {
            ReadOp::Get(key) => Reply::bulk_or_null(value(key)?),
            ReadOp::GetMany(keys) => Reply::Array(
                keys.iter()
                    .map(|key| Ok(Reply::bulk_or_null(value(key)?)))
                    .collect::<Result<_, dr_raft::StorageError>>()?,
            ),
            ReadOp::Exists(keys) => {
                let mut present = 0;
                for key in keys {
                    present += i64::from(value(key)?.is_some());
                }
                Reply::Integer(present)
            }
            ReadOp::Strlen(key) => Reply::Integer(value(key)?.map_or(0, |v| v.len() as i64)),
            ReadOp::DbSize => Reply::Integer(self.keys as i64),
            ReadOp::Scan {
                cursor,
                pattern,
                count,
                strings_only,
            } => self.scan(*cursor, pattern.as_deref(), *count, *strings_only)?,
        })
    }

    fn scan(
        &mut self,
        cursor: u64,
        pattern: Option<&[u8]>,
        count: usize,
        strings_only: bool,
    ) -> Result<Reply, dr_raft::StorageError> {
        let start = if cursor == 0 {
            vec![USER]
        } else {
            match self.cursors.positions.remove(&cursor) {
                Some(next) => kv::user_key(&next),
                None => return Ok(Reply::err("invalid cursor (unknown here, or expired)")),
            }
        };
        let page = self.raft.storage().scan(&start, count + 1)?;
        let mut page: Vec<Bytes> = page
            .into_iter()
            .take_while(|(key, _)| key.first() == Some(&USER))
            .map(|(key, _)| Bytes::copy_from_slice(&key[1..]))
            .collect();
        let next = if page.len() > count {
            let next_key = page.pop().expect("more than count keys");
            self.cursors.save(next_key)
        } else {
            0
        };
        let keys = page
            .into_iter()
            .filter(|key| strings_only && pattern.is_none_or(|p| glob_match(p, key)))
            .map(Reply::Bulk)
            .collect();
        Ok(Reply::Array(vec![
            Reply::bulk(next.to_string()),
            Reply::Array(keys),
        ]))
    }

    fn on_role_change(&mut self) {
        let role = self.raft.role();
        tracing::info!(id = self.raft.id(), ?role, leader = ?self.raft.leader(), term = self.raft.term(), "role changed");
        self.leader_changed();
    }

    /// Snapshots the state machine on this thread (the admin's request:
    /// answered once it is done). Cancels a copy in progress.
    fn snapshot_now(&mut self) -> Result<LogIndex, String> {
        let applied = self.raft.storage().applied_index();
        if applied <= self.snapshot_index {
            return Ok(self.snapshot_index);
        }
        let conf = self.raft.conf_state().clone();
        let started = Instant::now();
        // A background copy in progress is cancelled by this one.
        self.snapshot_started = None;
        self.raft
            .storage_mut()
            .create_snapshot(applied, conf, Bytes::new())
            .map_err(|e| e.to_string())?;
        self.snapshot_taken(applied, started)?;
        Ok(applied)
    }

    /// Records a new snapshot and compacts the log behind it, keeping
    /// `log_kept` entries for followers a little behind.
    fn snapshot_taken(&mut self, index: LogIndex, started: Instant) -> Result<(), String> {
        self.snapshot_index = index;
        bump(&self.metrics.snapshots_created);
        let store = self.raft.storage_mut();
        let compact_to = index.saturating_sub(self.config.log_kept);
        if compact_to >= store.first_index() {
            store.compact(compact_to).map_err(|e| e.to_string())?;
        }
        tracing::info!(
            index,
            millis = started.elapsed().as_millis() as u64,
            "snapshot taken"
        );
        Ok(())
    }

    /// Finishes a snapshot copied in the background, or starts one when
    /// `snapshot_every` entries were applied since the last. The copy runs
    /// on its own thread from a view pinned at the applied index, so this
    /// thread keeps answering while tens of megabytes are written.
    fn maybe_snapshot(&mut self) {
        if let Some(index) = self.raft.storage_mut().poll_snapshot() {
            let started = self.snapshot_started.take().unwrap_or_else(Instant::now);
            if let Err(error) = self.snapshot_taken(index, started) {
                tracing::warn!(%error, "log not compacted after a snapshot");
            }
        }
        if self.raft.storage().snapshot_copy_index().is_some() {
            return;
        }
        let applied = self.raft.storage().applied_index();
        let due = self.snapshot_index + self.config.snapshot_every + self.snapshot_offset();
        let now = Instant::now();
        if applied < due || self.snapshot_retry_at.is_some_and(|at| now < at) {
            return;
        }
        let conf = self.raft.conf_state().clone();
        match self.raft.storage_mut().begin_snapshot(conf) {
            Ok(_) => {
                self.snapshot_started = Some(now);
                self.snapshot_retry_at = None;
            }
            Err(error) => {
                // Typically a snapshot from the leader being received:
                // try again in a second rather than on every turn.
                tracing::warn!(%error, "snapshot postponed");
                self.snapshot_retry_at = Some(now + Duration::from_secs(1));
            }
        }
    }

    /// Up to a tenth of `snapshot_every` more, different on every node
    /// and for every snapshot: nodes apply the same indexes, and without
    /// it they would all pause to snapshot at the same moment.
    fn snapshot_offset(&self) -> u64 {
        let spread = self.config.snapshot_every / 10;
        if spread == 0 {
            return 0;
        }
        let mixed = (self.raft.id() ^ self.snapshot_index.rotate_left(17))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (mixed >> 32) % spread
    }

    fn reload_key_count(&mut self) {
        match kv::key_count(self.raft.storage()) {
            Ok(keys) => self.keys = keys,
            Err(error) => tracing::error!(%error, "cannot read the key count"),
        }
    }

    fn reload_members(&mut self) {
        match kv::members(self.raft.storage()) {
            Ok(members) => {
                self.members = members.into_iter().collect();
                self.status.publish_members(&self.members);
            }
            Err(error) => tracing::error!(%error, "cannot read the member table"),
        }
    }

    /// Connects to every member of `conf` whose address is known, and
    /// forgets peers that are no longer members.
    fn sync_peers(&mut self, conf: &ConfState) {
        let me = self.raft.id();
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
            let recorded = self.members.get(&id).and_then(|m| m.peer.parse().ok());
            let Some(addr) = recorded.or_else(|| self.config.peers.get(&id).copied()) else {
                continue;
            };
            if self.connected_peers.get(&id) != Some(&addr) {
                tracing::info!(peer = id, %addr, "connecting to member");
                self.transport.add_peer(id, addr);
                self.connected_peers.insert(id, addr);
            }
        }
        let gone: Vec<NodeId> = self
            .connected_peers
            .keys()
            .copied()
            .filter(|id| !members.contains(id))
            .collect();
        if members.is_empty() && !conf.voters.contains(&me) && conf.voters.is_empty() {
            // No configuration yet (a joining node): keep the given peers.
            return;
        }
        for id in gone {
            tracing::info!(peer = id, "disconnecting from a removed member");
            self.transport.remove_peer(id);
            self.connected_peers.remove(&id);
        }
    }

    fn publish_status(&mut self) {
        if self.rss_read_at.elapsed() >= Duration::from_secs(1) {
            self.rss_read_at = Instant::now();
            self.status.publish_rss(resident_bytes());
        }
        let raft = &self.raft;
        self.status.publish(Progress {
            role: raft.role().into(),
            term: raft.term(),
            leader: raft.leader(),
            commit_index: raft.commit_index(),
            applied_index: raft.storage().applied_index(),
            last_index: raft.last_index(),
            snapshot_index: self.snapshot_index,
            keys: self.keys,
        });
        if *raft.conf_state() != self.published_conf {
            self.published_conf.clone_from(raft.conf_state());
            self.status.publish_conf(&self.published_conf);
        }
    }

    fn fail_everything(&mut self, why: &str) {
        for (_, (_, waiter, _)) in std::mem::take(&mut self.writes) {
            self.answer(waiter, Err(NodeError::Uncertain(why.into())));
        }
        for answer in self.forwards.drain() {
            let _ = answer.send(Err(NodeError::Uncertain(why.into())));
        }
        for (_, waiter) in std::mem::take(&mut self.reads) {
            self.read_failed(waiter, NodeError::TryAgain(why.into()));
        }
        let reads = self
            .reads_after_apply
            .values_mut()
            .flat_map(std::mem::take)
            .chain(self.follower_reads.unsent.drain(..))
            .chain(
                self.follower_reads
                    .in_flight
                    .take()
                    .map(|fetch| fetch.reads)
                    .unwrap_or_default(),
            );
        for read in reads {
            let _ = read.answer.send(Err(NodeError::TryAgain(why.into())));
        }
    }
}

fn outcome_reply(outcome: Outcome) -> Reply {
    match outcome {
        Outcome::Error(text) => Reply::Error(text),
        Outcome::Integer(value) => Reply::Integer(value),
        Outcome::Set { .. } | Outcome::Done => Reply::OK,
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
