//! [`RaftNode`]: one member's consensus state, its roles and elections
//! (pre-vote, check-quorum, leader stickiness, leader transfer) and the
//! dispatch of incoming messages. Replication lives in `replication.rs`,
//! reads in `read.rs`, and the ready/advance cycle in `ready.rs`.

use std::collections::BTreeMap;

use bytes::Bytes;
use dr_codec::message::{
    ConfState, Entry, EntryKind, LogIndex, Message, MessageBody, NodeId, Term, VoteRequest,
    VoteResponse,
};

use crate::config::Config;
use crate::error::{StartError, StepError};
use crate::log::RaftLog;
use crate::progress::Progress;
use crate::quorum::{JointConfig, VoteResult};
use crate::read::ReadQueue;
use crate::ready::ReadyMark;
use crate::replication::IncomingSnapshot;
use crate::storage::{HardState, Storage};

/// What a node is doing in the current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asks whether it could win an election, without changing term.
    PreCandidate,
    /// Campaigns in a new term.
    Candidate,
    /// Leads the term.
    Leader,
}

/// State that is not persisted: who leads, and this node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SoftState {
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// This node's role.
    pub role: Role,
}

/// A proposal accepted into the leader's log: it took effect if and when
/// the entry at `index` is applied with term `term`; an entry with
/// another term at that index means it was lost and may be retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Proposal {
    /// Where the entry went.
    pub index: LogIndex,
    /// The leader's term.
    pub term: Term,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Campaign {
    PreVote,
    Election,
    Transfer,
}

/// A member of a Raft cluster, as a pure state machine over a store `S`:
/// see the crate documentation for the contract.
pub struct RaftNode<S> {
    pub(crate) config: Config,
    pub(crate) id: NodeId,
    pub(crate) term: Term,
    pub(crate) vote: Option<NodeId>,
    pub(crate) leader: Option<NodeId>,
    pub(crate) role: Role,
    pub(crate) log: RaftLog<S>,
    pub(crate) conf: ConfState,
    pub(crate) quorum: JointConfig,
    /// Every member's progress; kept up to date only while leading.
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    pub(crate) votes: BTreeMap<NodeId, bool>,
    pub(crate) election_elapsed: u32,
    pub(crate) heartbeat_elapsed: u32,
    pub(crate) election_timeout_ticks: u32,
    jitter_state: u64,
    pub(crate) transfer_target: Option<NodeId>,
    pub(crate) transfer_elapsed: u32,
    /// With `lease_reads`: true from start until an election timeout has
    /// passed, refusing votes meanwhile (see [`Config::lease_reads`]).
    pub(crate) starting: bool,
    /// The latest term in which this node sent `TimeoutNow`: its lease
    /// ends there, as the target may win an election at once.
    pub(crate) timeout_now_term: Term,
    /// The index of the latest membership change; no other may be
    /// proposed until it is applied.
    pub(crate) pending_conf_index: LogIndex,
    /// Payload bytes of the leader's uncommitted proposals, by index.
    pub(crate) uncommitted: std::collections::VecDeque<(LogIndex, u64)>,
    pub(crate) uncommitted_bytes: u64,
    pub(crate) messages: Vec<Message>,
    pub(crate) reads: ReadQueue,
    pub(crate) incoming_snapshot: Option<IncomingSnapshot>,
    /// Received snapshot chunks for the next ready to stage.
    pub(crate) staged_chunks: Vec<crate::ready::StagedChunk>,
    pub(crate) last_hard_state: HardState,
    pub(crate) last_soft_state: SoftState,
    pub(crate) outstanding: Option<ReadyMark>,
    /// Readies settled with `advance_persisting` whose writes have not
    /// ended, oldest first.
    pub(crate) persisting: std::collections::VecDeque<crate::ready::PersistingReady>,
    /// Readies handed out so far (the last one's number).
    pub(crate) readies_handed_out: u64,
    /// The highest term in which this node has seen itself lead, to
    /// assert one leader per term.
    pub(crate) led_term: Term,
}

impl<S: Storage> RaftNode<S> {
    /// Starts (or restarts) a node from what `storage` holds. The initial
    /// members of a new cluster start from [`crate::Snapshot::bootstrap`];
    /// a node joining later starts from an empty store.
    pub fn new(config: Config, storage: S) -> Result<Self, StartError> {
        config.validate().map_err(StartError::Config)?;
        let initial = storage.initial_state().map_err(StartError::Storage)?;
        let hard_state = initial.hard_state;
        let snapshot_index = storage.first_index() - 1;
        // Only committed entries are ever applied, so the applied index is
        // a commit index too; the stored one may lag it (a commit index
        // alone is written without a sync, and with asynchronous
        // persistence an apply may reach the store before the hard state
        // of its ready).
        let committed = hard_state.commit.max(snapshot_index).max(config.applied);
        if committed > storage.last_index() {
            return Err(StartError::Inconsistent(format!(
                "commit index {committed} (stored {}, applied {}) is past the last log index {}",
                hard_state.commit,
                config.applied,
                storage.last_index()
            )));
        }
        let applied = config.applied.max(snapshot_index);
        let id = config.id;
        let mut node = Self {
            id,
            term: hard_state.term,
            vote: hard_state.vote,
            leader: None,
            role: Role::Follower,
            log: RaftLog::new(storage, committed, applied, config.entry_cache_bytes_max),
            quorum: JointConfig::from_conf_state(&initial.conf_state),
            conf: initial.conf_state,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            election_timeout_ticks: config.election_ticks,
            jitter_state: config.election_jitter_seed ^ 0x9e37_79b9_7f4a_7c15,
            transfer_target: None,
            transfer_elapsed: 0,
            starting: config.lease_reads,
            timeout_now_term: 0,
            pending_conf_index: 0,
            uncommitted: Default::default(),
            uncommitted_bytes: 0,
            messages: Vec::new(),
            reads: ReadQueue::default(),
            incoming_snapshot: None,
            staged_chunks: Vec::new(),
            last_hard_state: HardState {
                commit: committed,
                ..hard_state
            },
            last_soft_state: SoftState {
                leader: None,
                role: Role::Follower,
            },
            outstanding: None,
            persisting: Default::default(),
            readies_handed_out: 0,
            led_term: 0,
            config,
        };
        node.randomize_election_timeout();
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// This node's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// The highest index known committed.
    pub fn commit_index(&self) -> LogIndex {
        self.log.committed
    }

    /// The highest index the runtime has applied (as of the last
    /// `advance`).
    pub fn applied_index(&self) -> LogIndex {
        self.log.applied
    }

    /// The last index in the log, persisted or not.
    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }

    /// The configuration as of the applied index.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf
    }

    /// The store, to read.
    pub fn storage(&self) -> &S {
        &self.log.storage
    }

    /// The store, to persist a ready into or to snapshot and compact
    /// between readies. Writing anything else breaks the contract.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.log.storage
    }

    /// The term, vote and commit index as the next ready would persist
    /// them.
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    pub(crate) fn soft_state(&self) -> SoftState {
        SoftState {
            leader: self.leader,
            role: self.role,
        }
    }

    /// Whether this node may campaign: it votes in the configuration.
    pub(crate) fn is_promotable(&self) -> bool {
        self.quorum.voters().contains(&self.id)
    }

    pub(crate) fn send(&mut self, to: NodeId, term: Term, body: MessageBody) {
        if matches!(body, MessageBody::TimeoutNow) {
            self.timeout_now_term = term;
        }
        self.messages.push(Message {
            from: self.id,
            to,
            term,
            body,
        });
    }

    pub(crate) fn assert_no_outstanding_ready(&self) {
        assert!(
            self.outstanding.is_none(),
            "raft contract: call advance() after ready() before driving the node again"
        );
    }

    fn randomize_election_timeout(&mut self) {
        // xorshift64*: deterministic given the configured seed.
        let mut x = self.jitter_state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.jitter_state = x;
        let random = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let ticks = self.config.election_ticks;
        self.election_timeout_ticks = ticks + (random % u64::from(ticks)) as u32;
    }

    /// Moves the logical clock one tick forward.
    pub fn tick(&mut self) {
        self.assert_no_outstanding_ready();
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => self.tick_election(),
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed >= self.config.election_ticks {
            self.starting = false;
        }
        if self.is_promotable() && self.election_elapsed >= self.election_timeout_ticks {
            self.election_elapsed = 0;
            let kind = if self.config.pre_vote {
                Campaign::PreVote
            } else {
                Campaign::Election
            };
            self.campaign(kind);
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.transfer_target.is_some() {
            self.transfer_elapsed += 1;
            if self.transfer_elapsed >= self.config.election_ticks {
                self.transfer_target = None;
            }
        }
        if self.election_elapsed >= self.config.election_ticks {
            self.election_elapsed = 0;
            if self.config.check_quorum && !self.quorum_recently_active() {
                self.become_follower(self.term, None);
                return;
            }
            for (&id, progress) in &mut self.progress {
                progress.recent_active = id == self.id;
            }
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.heartbeat_round();
            self.retransmit_stalled_snapshots();
        }
    }

    /// Whether the voters other than this node that were heard from
    /// lately make a quorum of the configuration (of both halves of a
    /// joint one): if not, a commit needs this node's own durable copy
    /// (a leader syncing lazily syncs at once then).
    pub fn others_make_quorum(&self) -> bool {
        self.recently_active_quorum(false)
    }

    /// Whether this node and the voters heard from lately make a quorum.
    fn quorum_recently_active(&self) -> bool {
        self.recently_active_quorum(true)
    }

    /// Whether the voters heard from lately, with this node counted as
    /// `self_counts`, make a quorum of the configuration.
    fn recently_active_quorum(&self, self_counts: bool) -> bool {
        let active = |id: NodeId| {
            Some(if id == self.id {
                self_counts
            } else {
                self.progress.get(&id).is_some_and(|p| p.recent_active)
            })
        };
        self.quorum.vote_result(active) == VoteResult::Won
    }

    /// Resets the per-term state for `term`.
    fn reset(&mut self, term: Term) {
        if self.term != term {
            assert!(
                term > self.term,
                "term went backwards: {} -> {term}",
                self.term
            );
            self.term = term;
            self.vote = None;
        }
        self.leader = None;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.randomize_election_timeout();
        self.transfer_target = None;
        self.votes.clear();
        self.progress.clear();
        self.uncommitted.clear();
        self.uncommitted_bytes = 0;
    }

    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if self.role == Role::Leader {
            self.reads.fail_all();
        }
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
    }

    fn become_pre_candidate(&mut self) {
        assert_ne!(self.role, Role::Leader, "a leader does not pre-campaign");
        // The term and vote stay: a pre-vote changes nothing durable.
        self.votes.clear();
        self.leader = None;
        self.role = Role::PreCandidate;
    }

    fn become_candidate(&mut self) {
        assert_ne!(self.role, Role::Leader, "a leader does not campaign");
        self.reset(self.term + 1);
        self.vote = Some(self.id);
        self.role = Role::Candidate;
    }

    pub(crate) fn become_leader(&mut self) {
        assert_ne!(self.role, Role::Follower, "a follower cannot become leader");
        assert!(
            self.led_term < self.term,
            "election safety: node {} elected twice in term {}",
            self.id,
            self.term
        );
        self.reset(self.term);
        self.led_term = self.term;
        self.role = Role::Leader;
        self.leader = Some(self.id);
        let answered = std::mem::take(&mut self.reads.done);
        self.reads = ReadQueue::default();
        self.reads.done = answered;
        let next = self.log.last_index() + 1;
        for id in self.members() {
            let is_learner = !self.quorum.voters().contains(&id);
            self.progress.insert(id, Progress::new(next, is_learner));
        }
        let own = self
            .progress
            .get_mut(&self.id)
            .expect("a leader is a member");
        own.matched = self.log.stable_last_index();
        own.become_replicate();
        own.recent_active = true;
        // Entries of earlier terms commit only through one of this term;
        // membership changes wait until whatever is in the log applied.
        self.pending_conf_index = self.log.last_index();
        self.append_new_entry(EntryKind::Noop, Bytes::new());
    }

    /// Every voter and learner of the configuration.
    pub(crate) fn members(&self) -> Vec<NodeId> {
        let mut members: Vec<NodeId> = self.quorum.voters().into_iter().collect();
        members.extend(self.conf.learners.iter().chain(&self.conf.learners_next));
        members.sort_unstable();
        members.dedup();
        members
    }

    pub(crate) fn campaign(&mut self, kind: Campaign) {
        let (vote_term, pre_vote) = if kind == Campaign::PreVote {
            self.become_pre_candidate();
            (self.term + 1, true)
        } else {
            self.become_candidate();
            (self.term, false)
        };
        self.votes.insert(self.id, true);
        if self.tally_votes() {
            return;
        }
        let request = VoteRequest {
            pre_vote,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            leader_transfer: kind == Campaign::Transfer,
        };
        for voter in self.quorum.voters() {
            if voter != self.id {
                self.send(voter, vote_term, MessageBody::Vote(request));
            }
        }
    }

    /// Acts on the votes so far; whether the election is decided.
    fn tally_votes(&mut self) -> bool {
        match self.quorum.vote_result(|id| self.votes.get(&id).copied()) {
            VoteResult::Won if self.role == Role::PreCandidate => {
                self.campaign(Campaign::Election);
                true
            }
            VoteResult::Won => {
                self.become_leader();
                true
            }
            VoteResult::Lost => {
                self.become_follower(self.term, None);
                true
            }
            VoteResult::Pending => false,
        }
    }

    /// Handles a message from a peer.
    pub fn step(&mut self, message: Message) -> Result<(), StepError> {
        self.assert_no_outstanding_ready();
        if !message.body.is_raft() {
            // Its term means nothing: reading it would move this node's.
            return Err(StepError::NotRaft);
        }
        if message.to != self.id {
            return Err(StepError::WrongRecipient { to: message.to });
        }
        if message.from == self.id || message.from == 0 {
            return Err(StepError::Malformed(format!(
                "sender id {} is invalid here",
                message.from
            )));
        }
        crate::replication::validate(&message)?;
        if message.term > self.term {
            if !self.accept_higher_term(&message) {
                return Ok(());
            }
        } else if message.term < self.term {
            self.answer_stale(&message);
            return Ok(());
        }
        let Message {
            from, term, body, ..
        } = message;
        match body {
            MessageBody::Vote(request) => {
                self.handle_vote(from, term, request);
                Ok(())
            }
            body => match self.role {
                Role::Leader => self.step_leader(from, body),
                Role::Candidate | Role::PreCandidate => self.step_candidate(from, term, body),
                Role::Follower => self.step_follower(from, body),
            },
        }
    }

    /// Adopts a higher term when the message warrants it; false when the
    /// message is to be ignored.
    fn accept_higher_term(&mut self, message: &Message) -> bool {
        // A follower that heard from its leader within an election timeout
        // (or just started) promised it not to help elect another before
        // the timeout passes: the leader's lease rests on that promise.
        let in_lease = self.config.check_quorum
            && (self.leader.is_some() || self.starting)
            && self.election_elapsed < self.config.election_ticks;
        match &message.body {
            MessageBody::Vote(request) => {
                if in_lease && !request.leader_transfer {
                    // Leader stickiness: a live leader is known.
                    return false;
                }
                if !request.pre_vote {
                    self.become_follower(message.term, None);
                }
            }
            // A granted pre-vote carries the term the pre-candidate would
            // campaign in; nobody changes term for it.
            MessageBody::VoteResponse(response) if response.pre_vote && response.granted => {}
            MessageBody::AppendEntries(_)
            | MessageBody::Heartbeat(_)
            | MessageBody::InstallSnapshot(_) => {
                self.become_follower(message.term, Some(message.from));
            }
            // Anything else of a higher term comes from a node that is no
            // leader of it (a refused pre-vote answered from a rival's
            // campaign, a stale answer): a follower in lease ignores it.
            // Adopting the term would forget the leader and let the next
            // vote request of that term through, inside the lease.
            _ if in_lease && self.role == Role::Follower => return false,
            _ => self.become_follower(message.term, None),
        }
        true
    }

    /// Answers a message from an older term where that helps the sender
    /// catch up: a deposed leader learns the new term, a pre-candidate its
    /// refusal.
    fn answer_stale(&mut self, message: &Message) {
        match &message.body {
            MessageBody::AppendEntries(_) | MessageBody::Heartbeat(_)
                if self.config.check_quorum || self.config.pre_vote =>
            {
                self.send(
                    message.from,
                    self.term,
                    MessageBody::AppendEntriesResponse(dr_codec::message::AppendEntriesResponse {
                        index: 0,
                        reject: None,
                    }),
                );
            }
            MessageBody::Vote(request) if request.pre_vote => {
                self.send(
                    message.from,
                    self.term,
                    MessageBody::VoteResponse(VoteResponse {
                        pre_vote: true,
                        granted: false,
                    }),
                );
            }
            _ => {}
        }
    }

    fn handle_vote(&mut self, from: NodeId, term: Term, request: VoteRequest) {
        let can_vote = self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none())
            || (request.pre_vote && term > self.term);
        let granted = can_vote
            && self
                .log
                .is_up_to_date(request.last_log_index, request.last_log_term);
        let response = VoteResponse {
            pre_vote: request.pre_vote,
            granted,
        };
        if !granted {
            self.send(from, self.term, MessageBody::VoteResponse(response));
            return;
        }
        if !request.pre_vote {
            self.election_elapsed = 0;
            self.vote = Some(from);
        }
        // A granted pre-vote answers in the pre-candidate's future term.
        self.send(from, term, MessageBody::VoteResponse(response));
    }

    fn step_candidate(
        &mut self,
        from: NodeId,
        term: Term,
        body: MessageBody,
    ) -> Result<(), StepError> {
        match body {
            MessageBody::VoteResponse(response) => {
                let expected_pre_vote = self.role == Role::PreCandidate;
                if response.pre_vote != expected_pre_vote {
                    return Ok(());
                }
                if response.pre_vote && response.granted && term != self.term + 1 {
                    return Ok(());
                }
                if self.quorum.voters().contains(&from) {
                    self.votes.insert(from, response.granted);
                    self.tally_votes();
                }
                Ok(())
            }
            body @ (MessageBody::AppendEntries(_)
            | MessageBody::Heartbeat(_)
            | MessageBody::InstallSnapshot(_)) => {
                // Someone won this term.
                self.become_follower(self.term, Some(from));
                self.step_follower(from, body)
            }
            _ => Ok(()),
        }
    }

    fn step_follower(&mut self, from: NodeId, body: MessageBody) -> Result<(), StepError> {
        match body {
            MessageBody::AppendEntries(append) => {
                self.heard_from_leader(from);
                self.handle_append(from, append)
            }
            MessageBody::Heartbeat(heartbeat) => {
                self.heard_from_leader(from);
                self.handle_heartbeat(from, heartbeat);
                Ok(())
            }
            MessageBody::InstallSnapshot(chunk) => {
                self.heard_from_leader(from);
                self.handle_snapshot_chunk(from, chunk);
                Ok(())
            }
            MessageBody::TimeoutNow if self.is_promotable() => {
                self.campaign(Campaign::Transfer);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn heard_from_leader(&mut self, from: NodeId) {
        self.election_elapsed = 0;
        self.leader = Some(from);
    }

    fn step_leader(&mut self, from: NodeId, body: MessageBody) -> Result<(), StepError> {
        match body {
            MessageBody::AppendEntries(_)
            | MessageBody::Heartbeat(_)
            | MessageBody::InstallSnapshot(_) => {
                // Bytes from the network prove nothing about another
                // node's state: refuse them rather than fall over.
                Err(StepError::ConflictingLeader {
                    from,
                    term: self.term,
                })
            }
            MessageBody::AppendEntriesResponse(response) => {
                self.handle_append_response(from, response)
            }
            MessageBody::HeartbeatResponse(response) => {
                self.handle_heartbeat_response(from, response)
            }
            MessageBody::InstallSnapshotResponse(response) => {
                self.handle_snapshot_response(from, response);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Appends an entry made by this leader; returns its index.
    pub(crate) fn append_new_entry(&mut self, kind: EntryKind, payload: Bytes) -> LogIndex {
        assert_eq!(self.role, Role::Leader, "only a leader creates entries");
        let index = self.log.last_index() + 1;
        let bytes = payload.len() as u64;
        self.uncommitted.push_back((index, bytes));
        self.uncommitted_bytes += bytes;
        self.log.append_one(Entry {
            term: self.term,
            index,
            kind,
            payload,
        });
        index
    }
}
