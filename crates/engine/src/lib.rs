//! `dr-engine`: the replica engine. It drives a [`dr_raft::RaftNode`] over
//! a log store, a [`StateMachine`], a [`Transport`] and a [`Clock`], and
//! answers each request with a typed [`Response`] or [`EngineError`].
//!
//! One engine serves `drkv` (over RocksDB, TCP and the system clock) and
//! the simulator (over in-memory storage, an in-memory network and
//! drifting virtual clocks): the code that ships is the code that is
//! tested deterministically.
//!
//! # What it does
//!
//! - **Turns.** [`Engine::turn`] takes one event (a tick, a peer's
//!   message, a request), then everything else waiting in the [`Inbox`],
//!   and works off the readies: persist (one synced write for every
//!   proposal that arrived meanwhile: group commit), send, apply, answer.
//!   A leader's appends leave before its own write; a follower forwards
//!   its requests before its own write.
//! - **Writes.** Proposed on the leader, answered once applied with the
//!   output the state machine computed here. A follower forwards them to
//!   the leader over the transport, and the leader answers exactly once:
//!   done, certainly not done ([`EngineError::TryAgain`]), uncertain, or
//!   refused. A forward unanswered by its deadline, or whose leader stops
//!   leading, is uncertain, never "try again". A host may send a
//!   follower's writes and take the leader's answers on its own threads
//!   through the engine's [`ForwardDesk`], without waking the engine.
//! - **Reads.** ReadIndex on the leader (batched by dr-raft), a read
//!   index fetched from the leader on a follower, or with
//!   [`EngineConfig::read_lease`] the leader's lease; each read is served
//!   once the applied index reaches its index.
//! - **Time.** The leader stamps each entry's payload with its clock
//!   ([`StateMachine::entry_payload`]), so a machine whose state depends
//!   on time applies it deterministically; reads get the serving node's
//!   clock. On its ticks the leader proposes the machine's housekeeping
//!   ([`StateMachine::housekeeping`]), one command in flight at a time.
//! - **Membership, leader transfer, snapshots** (every
//!   `snapshot_every` entries and `snapshot_log_factor` times the last
//!   snapshot's bytes of log, the log compacted behind them, installed
//!   ones handed to the state machine).
//!
//! # Invariants
//!
//! - Nothing is answered as done before its entry is applied, and no
//!   entry is applied before it is committed, so before it is durable on
//!   a quorum.
//! - A ready's messages that depend on its persisted state leave only
//!   after the store returned from persisting it.
//! - Every request is answered exactly once (shutdown answers what is
//!   left: writes as uncertain, reads as "try again").
//! - The lease is dated no later than its round's first send, and closed
//!   to the [`Observer`] before any message of a ready leaves.
//!
//! # Non-goals
//!
//! No IO, threads or async runtime of its own: the host owns the loop
//! that waits for events (a thread with tokio in `drkv`, a scheduler in
//! the simulator) and calls [`Engine::turn`]. No wire format for clients.
//!
//! # Example
//!
//! A replicated counter in one process: see `examples/counter.rs`
//! (`cargo run -p dr-engine --example counter`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use dr_codec::message::{LogIndex, Message, NodeId, Term};
use dr_raft::{ConfChangeOp, LogStore, RaftNode, Role};

mod error;
mod forwards;
mod host;
mod lazy_sync;
mod lease;
mod machine;
pub mod metrics;
mod peers;
mod reads;
mod snapshots;
mod writes;

pub use error::{EngineError, Refusal, Retry, Uncertain};
pub use forwards::{ForwardDesk, Routed};
pub use host::{Clock, NoObserver, Observer, Responder, SystemClock, Transport};
pub use lease::lease_duration;
pub use machine::{Applied, DecodeError, SnapshotStarted, StateMachine};
pub use metrics::EngineMetrics;

use peers::{ReadFetch, ReadWaiter, Waiter};

/// How the engine runs. Every default lives in [`EngineConfig::new`].
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The consensus core's settings.
    pub raft: dr_raft::Config,
    /// Time between ticks (the lease is measured in it).
    pub tick: Duration,
    /// Snapshot after this many applied entries.
    pub snapshot_every: u64,
    /// A snapshot also waits until the log applied since the last one
    /// holds this many times that snapshot's bytes (the Raft thesis's
    /// expansion factor): copying the state then costs at most a
    /// 1/factor byte of copying per byte written, whatever the state's
    /// size, and the log on disk stays within factor times the state.
    /// 0: entries only.
    pub snapshot_log_factor: u64,
    /// A snapshot at the latest after this many times `snapshot_every`
    /// applied entries, whatever the log's bytes: bounds the log's
    /// in-memory index (32 bytes an entry) and what a restart scans, when
    /// entries are small against a large state.
    pub snapshot_every_max_factor: u64,
    /// Entries kept in the log behind a snapshot, for slow followers.
    pub log_kept: u64,
    /// Requests one turn takes at most before it writes (bounds latency).
    pub turn_requests_max: usize,
    /// Messages one turn takes at most besides its event.
    pub turn_messages_max: usize,
    /// Serve reads on the leader's lease.
    pub read_lease: bool,
    /// How long a follower waits for the leader's answer to a forwarded
    /// request before telling its client the outcome is unknown.
    pub forward_timeout: Duration,
    /// How long a follower waits for a read index from the leader.
    pub read_fetch_timeout: Duration,
    /// Requests forwarded and not yet answered, at most.
    pub forwards_max: usize,
    /// A number different on every start of this node (drkv: the wall
    /// clock; the simulator: its seed's generator). The ids of the
    /// requests it sends its peers start from it, so a leader that
    /// remembers ids it served never mistakes a restarted follower's new
    /// request for an old one.
    pub incarnation: u64,
    /// Forwarded request ids the leader remembers, to serve each once
    /// even when the network delivers it twice.
    pub served_ids_max: usize,
    /// As leader, write the log without a sync and sync at the latest
    /// this long after the oldest unsynced write (see the `lazy_sync`
    /// module): the followers' durable copies commit entries meanwhile.
    /// Needs dr-raft's `async_persist` and `apply_unpersisted`. Zero: the
    /// leader syncs every write, as followers do.
    pub leader_sync_delay_max: Duration,
}

impl EngineConfig {
    /// Time between ticks unless set otherwise.
    pub const DEFAULT_TICK: Duration = Duration::from_millis(10);
    /// Applied entries between snapshots unless set otherwise.
    pub const DEFAULT_SNAPSHOT_EVERY: u64 = 100_000;
    /// Log bytes per byte of the last snapshot before the next, unless
    /// set otherwise.
    pub const DEFAULT_SNAPSHOT_LOG_FACTOR: u64 = 4;
    /// `snapshot_every_max_factor` unless set otherwise.
    pub const DEFAULT_SNAPSHOT_EVERY_MAX_FACTOR: u64 = 10;
    /// `leader_sync_delay_max` unless set otherwise (zero: off).
    pub const DEFAULT_LEADER_SYNC_DELAY_MAX: Duration = Duration::ZERO;

    /// The defaults around a consensus configuration.
    pub fn new(raft: dr_raft::Config) -> Self {
        Self {
            raft,
            tick: Self::DEFAULT_TICK,
            snapshot_every: Self::DEFAULT_SNAPSHOT_EVERY,
            snapshot_log_factor: Self::DEFAULT_SNAPSHOT_LOG_FACTOR,
            snapshot_every_max_factor: Self::DEFAULT_SNAPSHOT_EVERY_MAX_FACTOR,
            log_kept: 10_000,
            turn_requests_max: 4096,
            turn_messages_max: 4096,
            read_lease: false,
            forward_timeout: Duration::from_secs(5),
            read_fetch_timeout: Duration::from_secs(2),
            forwards_max: 16 << 10,
            incarnation: 0,
            served_ids_max: 64 << 10,
            leader_sync_delay_max: Self::DEFAULT_LEADER_SYNC_DELAY_MAX,
        }
    }
}

/// A request to the engine; `A` is where its answer goes.
pub enum Request<M: StateMachine, A> {
    /// Propose a command; answered with its output once applied.
    Write {
        /// The command.
        command: M::Command,
        /// Where the answer goes.
        answer: A,
    },
    /// A linearizable read.
    Read {
        /// What to read.
        query: M::Query,
        /// Where the answer goes.
        answer: A,
    },
    /// Propose a membership change; answered once applied.
    ConfChange {
        /// The change.
        op: ConfChangeOp,
        /// Where the answer goes.
        answer: A,
    },
    /// Hand leadership to a voter; answered once started.
    TransferLeader {
        /// The voter.
        target: NodeId,
        /// Where the answer goes.
        answer: A,
    },
    /// Snapshot the state machine now; answered with the snapshot's index.
    Snapshot {
        /// Where the answer goes.
        answer: A,
    },
}

/// A successful answer.
pub enum Response<M: StateMachine> {
    /// A write applied: its output.
    Written(M::Output),
    /// A read's result.
    Read(M::ReadOutput),
    /// A membership change applied, or a leader transfer started.
    Done,
    /// The snapshot's index.
    Snapshot(LogIndex),
}

impl<M: StateMachine> std::fmt::Debug for Response<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Written(output) => f.debug_tuple("Written").field(output).finish(),
            Self::Read(output) => f.debug_tuple("Read").field(output).finish(),
            Self::Done => f.write_str("Done"),
            Self::Snapshot(index) => f.debug_tuple("Snapshot").field(index).finish(),
        }
    }
}

/// What the host's loop woke up for.
pub enum Event<M: StateMachine, A> {
    /// The tick interval passed.
    Tick,
    /// A peer's message arrived.
    Message(Message),
    /// A request arrived.
    Request(Request<M, A>),
    /// The time [`Engine::wake_in`] named passed.
    Wake,
}

/// Whatever else is waiting when a turn starts: drained without blocking.
pub trait Inbox<M: StateMachine, A> {
    /// The next waiting peer message, if any.
    fn message(&mut self) -> Option<Message>;
    /// The next waiting request, if any.
    fn request(&mut self) -> Option<Request<M, A>>;
}

/// The engine's progress, for status pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The node's role.
    pub role: Role,
    /// Its term.
    pub term: Term,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// The highest index known committed.
    pub commit_index: LogIndex,
    /// The highest index applied.
    pub applied_index: LogIndex,
    /// The last index in the log.
    pub last_index: LogIndex,
    /// The first index in the log (entries before it are compacted into
    /// the snapshot).
    pub first_index: LogIndex,
    /// The latest snapshot's index.
    pub snapshot_index: LogIndex,
}

/// A read waiting for its index to be confirmed or applied.
struct PendingRead<M: StateMachine, A> {
    query: M::Query,
    answer: A,
}

/// A proposal waiting for its entry to apply.
struct PendingWrite<M: StateMachine, A> {
    term: Term,
    waiter: Waiter<A>,
    /// The command's context (`None`: not a command of the machine's).
    context: Option<M::Context>,
}

/// Follower reads: those waiting for the next read-index fetch, and those
/// whose fetch is out.
struct FollowerReads<M: StateMachine, A> {
    unsent: Vec<PendingRead<M, A>>,
    in_flight: Option<ReadFetch<M, A>>,
}

/// The replica engine (see the crate docs).
pub struct Engine<M: StateMachine, A> {
    config: EngineConfig,
    raft: RaftNode<M::Store>,
    machine: M,
    transport: Box<dyn Transport>,
    clock: Box<dyn Clock>,
    observer: Box<dyn Observer>,
    metrics: Arc<EngineMetrics>,
    /// Proposals waiting for their entry, by index.
    writes: BTreeMap<LogIndex, PendingWrite<M, A>>,
    /// Reads waiting for the leader's read index: context → read.
    reads: HashMap<u64, ReadWaiter<M, A>>,
    next_read_context: u64,
    /// Requests this follower forwarded to the leader (shared with the
    /// host, which may route requests through it).
    desk: Arc<ForwardDesk<M, A>>,
    /// The last id given to a read-index request to a peer.
    next_request_id: u64,
    /// Forwarded requests served lately: (peer, id), oldest first.
    served: peers::ServedIds,
    /// Confirmed reads waiting for the apply to reach their index.
    reads_after_apply: BTreeMap<LogIndex, Vec<PendingRead<M, A>>>,
    follower_reads: FollowerReads<M, A>,
    snapshot_index: LogIndex,
    /// When the snapshot being copied in the background was started, and
    /// `log_bytes_applied` then (what the copy covers).
    snapshot_started: Option<(Duration, u64)>,
    /// Payload bytes of the entries applied since this engine started.
    log_bytes_applied: u64,
    /// `log_bytes_applied` as of the latest snapshot (or start).
    log_bytes_at_snapshot: u64,
    /// No snapshot is tried before this (after one was refused).
    snapshot_retry_at: Option<Duration>,
    /// A compaction the store did not finish (it keeps entries it still
    /// needs after a crash): where it was asked to go, and when to ask
    /// again.
    compaction_pending: Option<(LogIndex, Duration)>,
    /// The leader lease, on this node's clock.
    lease: dr_raft::LeaseTracker<Duration, Duration>,
    /// The index of the machine's housekeeping command not yet applied.
    housekeeping_index: Option<LogIndex>,
    /// Writes made without a sync (a leader syncing lazily).
    unsynced: lazy_sync::UnsyncedWrites,
}

/// The parts an engine is built from besides its consensus core.
pub struct Parts<M> {
    /// The state machine.
    pub machine: M,
    /// The way to the peers.
    pub transport: Box<dyn Transport>,
    /// The clock.
    pub clock: Box<dyn Clock>,
    /// Who watches.
    pub observer: Box<dyn Observer>,
    /// Where it counts.
    pub metrics: Arc<EngineMetrics>,
}

impl<M: StateMachine, A: Responder<M>> Engine<M, A> {
    /// An engine over `raft` (whose store the machine runs over).
    pub fn new(config: EngineConfig, raft: RaftNode<M::Store>, parts: Parts<M>) -> Self {
        let snapshot_index = dr_raft::Storage::snapshot_meta(raft.storage()).map_or(0, |m| m.index);
        let lease =
            dr_raft::LeaseTracker::new(lease_duration(config.raft.election_ticks, config.tick));
        assert!(
            config.leader_sync_delay_max.is_zero()
                || (config.raft.async_persist && config.raft.apply_unpersisted),
            "leader_sync_delay_max needs dr-raft's async_persist and apply_unpersisted"
        );
        let unsynced = lazy_sync::UnsyncedWrites::new(raft.hard_state());
        let desk = Arc::new(ForwardDesk::new(
            raft.id(),
            &config,
            Arc::clone(&parts.metrics),
        ));
        let mut engine = Self {
            raft,
            machine: parts.machine,
            transport: parts.transport,
            clock: parts.clock,
            observer: parts.observer,
            metrics: parts.metrics,
            writes: BTreeMap::new(),
            reads: HashMap::new(),
            next_read_context: 1,
            desk,
            next_request_id: config.incarnation << 32,
            served: peers::ServedIds::default(),
            reads_after_apply: BTreeMap::new(),
            follower_reads: FollowerReads {
                unsent: Vec::new(),
                in_flight: None,
            },
            snapshot_index,
            snapshot_started: None,
            log_bytes_applied: 0,
            log_bytes_at_snapshot: 0,
            snapshot_retry_at: None,
            compaction_pending: None,
            lease,
            housekeeping_index: None,
            unsynced,
            config,
        };
        let conf = engine.raft.conf_state().clone();
        engine.transport.sync_members(&conf);
        let applied = engine.applied_index();
        engine.observer.applied(applied);
        engine
    }

    /// One turn: `event`, then what else waits in `inbox`, worked off to
    /// the last ready.
    pub fn turn(&mut self, event: Event<M, A>, inbox: &mut impl Inbox<M, A>) {
        let mut first_request = None;
        match event {
            Event::Tick => self.tick(),
            Event::Message(message) => self.step(message),
            Event::Request(request) => first_request = Some(request),
            Event::Wake => {}
        }
        // A follower forwards its requests (writes to the leader, reads
        // for a read index) before its own synced write: they join no
        // ready of its own, and should not wait for its disk.
        let follower = self.raft.role() != Role::Leader;
        if follower {
            self.take_requests(first_request.take(), inbox);
        }
        // Peers first: acknowledgements commit entries, which are applied
        // and answered now rather than after the next synced write (a
        // leader's committed entries are on its disk already).
        for _ in 0..self.config.turn_messages_max {
            let Some(message) = inbox.message() else {
                break;
            };
            self.step(message);
        }
        self.drive();
        // Then every request waiting joins one ready: one synced write for
        // all of them (group commit).
        if !follower {
            self.take_requests(first_request, inbox);
        }
        self.drive();
        // The last housekeeping command applied: the next one now, not at
        // the next tick (a backlog of expired keys drains at the speed of
        // commits, one bounded command at a time).
        if self
            .housekeeping_index
            .is_some_and(|index| index <= self.applied_index())
        {
            self.housekeep(self.clock.now());
            self.drive();
        }
        if self.sync_due(self.clock.now()) {
            self.sync_deferred();
            self.drive();
        }
        // Answers to peers, and whatever else this turn sent since the
        // last flush.
        self.transport.flush();
    }

    /// Handles `first` and what else is waiting, up to
    /// `turn_requests_max` in all.
    fn take_requests(&mut self, first: Option<Request<M, A>>, inbox: &mut impl Inbox<M, A>) {
        let mut taken = 0;
        if let Some(request) = first {
            self.handle(request);
            taken += 1;
        }
        while taken < self.config.turn_requests_max {
            let Some(request) = inbox.request() else {
                break;
            };
            self.handle(request);
            taken += 1;
        }
    }

    fn handle(&mut self, request: Request<M, A>) {
        match request {
            Request::Write { command, answer } => {
                self.submit_local(peers::Forwarded::Write(command), answer);
            }
            Request::ConfChange { op, answer } => {
                self.submit_local(peers::Forwarded::ConfChange(op), answer);
            }
            Request::TransferLeader { target, answer } => {
                self.submit_local(peers::Forwarded::TransferLeader(target), answer);
            }
            Request::Read { query, answer } => self.read(PendingRead { query, answer }),
            Request::Snapshot { answer } => {
                let result = self
                    .snapshot_now()
                    .map(Response::Snapshot)
                    .map_err(|why| EngineError::Refused(Refusal::Snapshot(why)));
                answer.respond(result);
            }
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

    /// A tick, and with lease reads a read round when the lease has less
    /// than half its length left and no round is out, so a leader under
    /// read load keeps its lease rather than falling back to rounds.
    fn tick(&mut self) {
        self.raft.tick();
        let now = self.clock.now();
        self.desk.expire(now);
        self.expire_read_fetch(now);
        self.housekeep(now);
        if !self.config.read_lease || self.raft.lease_read_index().is_none() {
            return;
        }
        let low = self.lease_remaining() < self.lease.duration() / 2;
        if low && !self.lease.round_in_flight() {
            // A context no read holds: the read state it yields is dropped.
            let context = self.next_read_context;
            self.next_read_context += 1;
            if self.raft.read_index(context).is_ok() {
                metrics::bump(&self.metrics.lease_renewals);
            }
        }
    }

    /// On the leader: proposes the machine's housekeeping, one command at
    /// a time (asked on ticks, and again as soon as the last one applied).
    fn housekeep(&mut self, now: Duration) {
        if self.raft.role() != Role::Leader {
            self.housekeeping_index = None;
            return;
        }
        if self
            .housekeeping_index
            .is_some_and(|index| index > self.applied_index())
        {
            return;
        }
        self.housekeeping_index = None;
        let Some(command) = self.machine.housekeeping(self.raft.storage(), now) else {
            return;
        };
        let payload = self.machine.entry_payload(&command, now);
        match self.raft.propose(payload) {
            Ok(proposal) => {
                self.housekeeping_index = Some(proposal.index);
                metrics::bump(&self.metrics.housekeeping_proposals);
            }
            Err(error) => tracing::debug!(%error, "housekeeping not proposed"),
        }
    }

    /// Works off every ready: persist, send, apply, answer.
    fn drive(&mut self) {
        while self.raft.has_ready() {
            // Before anything leaves: a read round is dated no later than
            // its first send (the lease's invariant).
            self.lease
                .observe(self.raft.read_rounds(), self.clock.now());
            self.publish_lease();
            let mut ready = self.raft.ready();
            // The leader's appends go out first: followers write their
            // logs while the leader writes its own.
            for message in ready.take_messages_before_persist() {
                self.transport.send(message);
            }
            // Before the disk write: appends, and what a follower
            // forwarded this turn.
            self.transport.flush();
            let deferred = self.defers_sync(&ready);
            if deferred {
                self.write_deferred(&mut ready);
            } else {
                self.persist(&ready);
                self.after_persist(&ready);
            }
            if let Some(snapshot) = &ready.snapshot {
                self.after_snapshot_install(snapshot);
            }
            for message in std::mem::take(&mut ready.messages) {
                self.transport.send(message);
            }
            self.transport.flush();
            self.apply(&ready.committed_entries, ready.conf_state.as_ref());
            let applied = self.applied_index();
            self.observer.applied(applied);
            self.confirm_reads(ready.read_states);
            if deferred {
                self.raft.advance_persisting();
            } else {
                self.raft.advance();
            }
            self.serve_applied_reads();
            if ready.soft_state.is_some() {
                self.on_role_change();
            }
        }
        self.maybe_snapshot();
    }

    fn persist(&mut self, ready: &dr_raft::Ready) {
        let syncs = M::persist_syncs(self.raft.storage(), ready);
        let started = std::time::Instant::now();
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

    fn on_role_change(&mut self) {
        let role = self.raft.role();
        tracing::info!(id = self.raft.id(), ?role, leader = ?self.raft.leader(), term = self.raft.term(), "role changed");
        self.leader_changed();
    }

    fn not_leader(&self) -> EngineError {
        EngineError::NotLeader {
            leader: self.raft.leader(),
        }
    }

    /// The state machine's applied index.
    pub fn applied_index(&self) -> LogIndex {
        self.machine.applied_index(self.raft.storage())
    }

    /// Where the engine stands.
    pub fn progress(&self) -> Progress {
        let raft = &self.raft;
        Progress {
            role: raft.role(),
            term: raft.term(),
            leader: raft.leader(),
            commit_index: raft.commit_index(),
            applied_index: self.applied_index(),
            last_index: raft.last_index(),
            first_index: dr_raft::Storage::first_index(raft.storage()),
            snapshot_index: self.snapshot_index,
        }
    }

    /// The consensus core (for its configuration, role, log).
    pub fn raft(&self) -> &RaftNode<M::Store> {
        &self.raft
    }

    /// The store.
    pub fn store(&self) -> &M::Store {
        self.raft.storage()
    }

    /// The store, between turns, for upkeep that leaves the log and the
    /// state it holds as they are (a backup, which first writes out
    /// what the store kept in memory).
    pub fn store_mut(&mut self) -> &mut M::Store {
        self.raft.storage_mut()
    }

    /// The state machine.
    pub fn machine(&self) -> &M {
        &self.machine
    }

    /// Where a host may route its requests to the leader itself (see
    /// [`ForwardDesk`]).
    pub fn forward_desk(&self) -> &Arc<ForwardDesk<M, A>> {
        &self.desk
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<EngineMetrics> {
        &self.metrics
    }

    /// Answers every request still waiting (writes as uncertain, reads as
    /// "try again"): the engine stops.
    pub fn shut_down(&mut self) {
        // What was acknowledged rests on the followers' copies; the
        // leader's own goes to its disk before it stops.
        self.sync_deferred();
        for (_, pending) in std::mem::take(&mut self.writes) {
            self.answer(
                pending.waiter,
                Err(EngineError::Uncertain(Uncertain::ShuttingDown)),
            );
        }
        self.desk.shut_down();
        for (_, waiter) in std::mem::take(&mut self.reads) {
            self.read_failed(waiter, EngineError::TryAgain(Retry::ShuttingDown));
        }
        let reads: Vec<PendingRead<M, A>> = std::mem::take(&mut self.reads_after_apply)
            .into_values()
            .flatten()
            .chain(self.follower_reads.unsent.drain(..))
            .chain(
                self.follower_reads
                    .in_flight
                    .take()
                    .map(|fetch| fetch.reads)
                    .unwrap_or_default(),
            )
            .collect();
        for read in reads {
            read.answer
                .respond(Err(EngineError::TryAgain(Retry::ShuttingDown)));
        }
        self.transport.flush();
        tracing::info!(id = self.raft.id(), "engine stopped");
    }
}
