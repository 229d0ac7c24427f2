//! The engine: one thread that owns the consensus core and its store.
//!
//! Each turn of its loop takes a tick, the peers' messages and the
//! clients' requests that are waiting — all of them, so one ready and one
//! synced write cover every proposal that arrived meanwhile (group
//! commit) — then works off the readies in the contract's order: persist,
//! send, apply, answer. The thread runs its own single-threaded tokio
//! runtime, so the synced write blocks nobody else: while it waits for
//! the disk, new requests queue up for the next turn.
//!
//! This file holds the loop, writes (proposals, the apply path and its
//! answers) and the published status; by concern beside it: `reads.rs`
//! (read indexes, leases, serving reads, `SCAN` cursors), `snapshots.rs`,
//! `membership.rs` (member table, peer list) and `peers.rs` (forwarding
//! and read-index fetches on the peer transport).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use dr_codec::message::{ConfState, Entry, LogIndex, Message, NodeId, Term};
use dr_raft::{ConfChangeOp, LogStore, ProposeError, RaftNode, Ready, Role, Storage};
use dr_storage::{BackupInfo, RocksStorage, StoreReader};
use dr_transport::{TcpTransport, Transport};
use tokio::sync::{mpsc, oneshot, watch};

use crate::command::{ReadOp, ReplyShape, write_reply};
use crate::kv::{self, MemberAddrs, Outcome, PresenceCache, WriteOp};
use crate::lease::{LeaseClock, LeaseGate, lease_clock, lease_remaining};
use crate::metrics::{Metrics, bump};
use crate::resp::Reply;
use crate::status::{Progress, StatusBoard};

mod membership;
mod peers;
mod reads;
mod snapshots;

pub use peers::{ForwardDecodeError, Forwarded};
use peers::{Forwards, ReadFetch, ReadWaiter, Waiter};
use reads::ScanCursors;

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

    fn on_role_change(&mut self) {
        let role = self.raft.role();
        tracing::info!(id = self.raft.id(), ?role, leader = ?self.raft.leader(), term = self.raft.term(), "role changed");
        self.leader_changed();
    }

    fn reload_key_count(&mut self) {
        match kv::key_count(self.raft.storage()) {
            Ok(keys) => self.keys = keys,
            Err(error) => tracing::error!(%error, "cannot read the key count"),
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
