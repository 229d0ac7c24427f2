//! The ready/advance cycle (what the runtime must persist, send and apply,
//! in that order), proposals, membership changes and leader transfer.

use bytes::Bytes;
use dr_codec::message::{
    ConfState, Entry, EntryKind, LogIndex, Message, MessageBody, NodeId, SnapshotMeta,
};

use crate::conf_change::ConfChange;
use crate::error::ProposeError;
use crate::progress::Progress;
use crate::quorum::JointConfig;
use crate::raft::{Proposal, RaftNode, Role, SoftState};
use crate::read::ReadState;
use crate::storage::{HardState, Storage};
use dr_codec::message::Term;

/// One batch of work for the runtime. Handle it in this order:
///
/// 1. **Persist**, durably and atomically: stage `snapshot_chunks` (in
///    order), then apply `snapshot` (replacing the log and, in the state
///    machine, its data, with the staged snapshot), then `entries` (an
///    append that first discards any stored entry at or after the first
///    one's index), then `hard_state`.
/// 2. **Send** `messages`: they promise what step 1 made durable (a vote,
///    an acknowledged append), so never before it.
/// 3. **Apply** `committed_entries` in order, and store `conf_state` as the
///    configuration as of the last of them (with the applied index, if
///    the state machine is durable).
/// 4. Serve each of `read_states` once the applied index reaches its read
///    index.
/// 5. Call [`RaftNode::advance`].
///
/// A leader's own messages may go before step 1: see
/// [`Ready::take_messages_before_persist`].
///
/// With [`Config::async_persist`](crate::Config::async_persist) step 1 may
/// also run on another thread: hand it the ready's `entries` and
/// `hard_state`, send the messages that may go early, apply, call
/// [`RaftNode::advance_persisting`] and go on; once the write is durable,
/// send the ready's remaining `messages` and call
/// [`RaftNode::on_persisted`] with its `number`. Writes must become
/// durable in the order of the readies. A ready with `snapshot` or
/// `snapshot_chunks` is always settled with `advance`, after every earlier
/// write has ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// This ready's place in the sequence (from 1), for
    /// [`RaftNode::on_persisted`].
    pub number: u64,
    /// The leader or role changed.
    pub soft_state: Option<SoftState>,
    /// Term, vote or commit changed: persist.
    pub hard_state: Option<HardState>,
    /// Pieces of a snapshot being received: stage them
    /// ([`crate::LogStore::stage_snapshot_chunk`]), in order.
    pub snapshot_chunks: Vec<StagedChunk>,
    /// A snapshot received whole from the leader (its data staged by this
    /// or earlier readies): apply it ([`crate::LogStore::apply_snapshot`])
    /// and restore the state machine from it.
    pub snapshot: Option<SnapshotMeta>,
    /// New log entries: persist.
    pub entries: Vec<Entry>,
    /// Messages to send once the above is durable.
    pub messages: Vec<Message>,
    /// Entries to apply, in index order.
    pub committed_entries: Vec<Entry>,
    /// The configuration after `committed_entries` (or the snapshot), when
    /// they changed it.
    pub conf_state: Option<ConfState>,
    /// Reads that are now confirmed (or failed).
    pub read_states: Vec<ReadState>,
}

impl Ready {
    /// Whether persisting this ready changes what the node promises its
    /// peers, given the hard state `stored` before it: new entries, a
    /// snapshot or its chunks, a new term or vote. Those writes must be
    /// durable before the ready's messages leave; a ready that only moves
    /// the commit index may be written without a sync (a crash loses a
    /// commit index that is learned again).
    pub fn makes_promises(&self, stored: &HardState) -> bool {
        !self.entries.is_empty()
            || self.snapshot.is_some()
            || !self.snapshot_chunks.is_empty()
            || self.changes_term_or_vote(stored)
    }

    /// Whether it carries a term or vote other than `stored`'s: a change
    /// that must be durable before anything else the node does.
    pub fn changes_term_or_vote(&self, stored: &HardState) -> bool {
        self.hard_state
            .is_some_and(|h| h.term != stored.term || h.vote != stored.vote)
    }

    /// Whether it carries snapshot data (chunks or a whole snapshot to
    /// apply), which is persisted before the ready is settled, never
    /// behind the runtime's back.
    pub fn has_snapshot_data(&self) -> bool {
        self.snapshot.is_some() || !self.snapshot_chunks.is_empty()
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        *self
            == Self {
                number: self.number,
                ..Self::default()
            }
    }

    /// Takes out the messages that may leave *before* step 1: a leader's
    /// appends, heartbeats, snapshot chunks and TimeoutNow. They promise
    /// nothing about the sender's own disk — the leader's term and vote
    /// were made durable before it could win, and it counts its own new
    /// entries towards a quorum only after [`RaftNode::advance`] — so a
    /// leader may write its log in parallel with its followers (Raft
    /// thesis §10.2.1). Everything left in `messages` still waits for
    /// step 1 (votes and acknowledgements promise durable state).
    pub fn take_messages_before_persist(&mut self) -> Vec<Message> {
        let (early, late) = std::mem::take(&mut self.messages)
            .into_iter()
            .partition(|message| {
                matches!(
                    message.body,
                    MessageBody::AppendEntries(_)
                        | MessageBody::Heartbeat(_)
                        | MessageBody::InstallSnapshot(_)
                        | MessageBody::TimeoutNow
                )
            });
        self.messages = late;
        early
    }
}

/// A chunk of an incoming snapshot, to stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedChunk {
    /// The snapshot it belongs to.
    pub meta: SnapshotMeta,
    /// Where it starts in the snapshot's data.
    pub offset: u64,
    /// The bytes.
    pub data: Bytes,
}

/// What a handed-out ready promised, settled by `advance`.
pub(crate) struct ReadyMark {
    applied_to: LogIndex,
    conf_state: Option<ConfState>,
    number: u64,
    /// The last entry it handed out, to recognize it when its write ends.
    last_entry: Option<(LogIndex, Term)>,
    /// It carried snapshot data, which must be persisted before `advance`.
    snapshot_data: bool,
}

/// A ready settled with `advance_persisting` whose write has not ended.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PersistingReady {
    number: u64,
    last_entry: Option<(LogIndex, Term)>,
}

impl<S: Storage> RaftNode<S> {
    /// Whether [`Self::ready`] has anything to hand out.
    pub fn has_ready(&mut self) -> bool {
        self.assert_no_outstanding_ready();
        self.flush_appends();
        self.soft_state() != self.last_soft_state
            || self.hard_state() != self.last_hard_state
            || !self.log.entries_to_hand_out().is_empty()
            || self.log.unstable_snapshot().is_some()
            || !self.staged_chunks.is_empty()
            || !self.messages.is_empty()
            || self.apply_ceiling() > self.apply_floor()
            || !self.reads.done.is_empty()
    }

    /// The entries up to here are applied or covered by a snapshot.
    fn apply_floor(&self) -> LogIndex {
        let snapshot_index = self.log.unstable_snapshot().map_or(0, |s| s.index);
        self.log.applied.max(snapshot_index)
    }

    /// The entries up to here may be applied: the committed ones, and
    /// with asynchronous persistence only those this node has persisted
    /// (so the applied index never reaches the store ahead of them),
    /// unless the store copes with that (`apply_unpersisted`).
    fn apply_ceiling(&self) -> LogIndex {
        if self.config.async_persist && !self.config.apply_unpersisted {
            self.log.committed.min(self.log.stable_last_index())
        } else {
            self.log.committed
        }
    }

    /// Hands out the next batch of work. Call [`Self::advance`] once it is
    /// done, before anything else on this node.
    pub fn ready(&mut self) -> Ready {
        self.assert_no_outstanding_ready();
        self.flush_appends();
        let snapshot = self.log.unstable_snapshot().cloned();
        let apply_floor = self.apply_floor();
        let apply_ceiling = self.apply_ceiling();
        let committed_entries = if apply_ceiling > apply_floor {
            self.log
                .slice(
                    apply_floor + 1,
                    apply_ceiling + 1,
                    self.config.ready_committed_bytes_max,
                )
                .unwrap_or_else(|error| panic!("cannot read committed entries to apply: {error}"))
        } else {
            Vec::new()
        };
        let conf_state = self.conf_after(&committed_entries, snapshot.is_some());
        let hard_state = self.hard_state();
        let soft_state = self.soft_state();
        self.readies_handed_out += 1;
        let entries = self.log.entries_to_hand_out().to_vec();
        self.log.hand_out();
        let ready = Ready {
            number: self.readies_handed_out,
            soft_state: (soft_state != self.last_soft_state).then_some(soft_state),
            hard_state: (hard_state != self.last_hard_state).then_some(hard_state),
            entries,
            snapshot,
            snapshot_chunks: std::mem::take(&mut self.staged_chunks),
            messages: std::mem::take(&mut self.messages),
            conf_state: conf_state.clone(),
            read_states: std::mem::take(&mut self.reads.done),
            committed_entries,
        };
        self.last_hard_state = hard_state;
        self.last_soft_state = soft_state;
        self.outstanding = Some(ReadyMark {
            applied_to: ready
                .committed_entries
                .last()
                .map_or(apply_floor, |e| e.index),
            conf_state,
            number: ready.number,
            last_entry: ready.entries.last().map(|e| (e.index, e.term)),
            snapshot_data: ready.has_snapshot_data(),
        });
        ready
    }

    /// The configuration after applying `entries`, if they change it.
    fn conf_after(&self, entries: &[Entry], snapshot: bool) -> Option<ConfState> {
        let mut conf = self.conf.clone();
        let mut changed = snapshot;
        for entry in entries.iter().filter(|e| e.kind == EntryKind::ConfChange) {
            // An entry that does not decode or apply changes nothing, on
            // every node alike (the leader validated it when proposing).
            let next = ConfChange::decode(&entry.payload).and_then(|change| change.apply(&conf));
            if let Ok(next) = next {
                conf = next;
                changed = true;
            }
        }
        changed.then_some(conf)
    }

    /// Settles the ready handed out last: everything it said to persist is
    /// durable (and so is every earlier ready's), its messages are sent
    /// and its committed entries applied.
    pub fn advance(&mut self) {
        let mark = self
            .outstanding
            .take()
            .expect("raft contract: advance() without a ready() before it");
        self.persisting.clear();
        self.log.persisted();
        self.settle(mark);
        self.count_own_persisted();
    }

    /// Settles the ready handed out last whose `entries` and `hard_state`
    /// are still being written (see [`Ready`]): its committed entries are
    /// applied and the messages that may go early were sent; the rest of
    /// its messages wait for [`Self::on_persisted`]. Needs
    /// [`Config::async_persist`](crate::Config::async_persist).
    ///
    /// # Panics
    /// Without that setting, or for a ready with snapshot data (settle
    /// those with [`Self::advance`] once they are durable).
    pub fn advance_persisting(&mut self) {
        assert!(
            self.config.async_persist,
            "raft contract: advance_persisting() needs Config::async_persist"
        );
        let mark = self
            .outstanding
            .take()
            .expect("raft contract: advance_persisting() without a ready() before it");
        assert!(
            !mark.snapshot_data,
            "raft contract: a ready with snapshot data is settled with advance() once durable"
        );
        self.persisting.push_back(PersistingReady {
            number: mark.number,
            last_entry: mark.last_entry,
        });
        self.settle(mark);
    }

    /// The write of ready `number` (and, writes ending in order, of every
    /// earlier one) is durable: its entries count as this node's, towards
    /// a quorum too. Call it between readies, and then send the ready's
    /// remaining messages. Numbers already settled are ignored.
    pub fn on_persisted(&mut self, number: u64) {
        self.assert_no_outstanding_ready();
        let mut last_entry = None;
        while let Some(ready) = self.persisting.front().copied() {
            if ready.number > number {
                break;
            }
            self.persisting.pop_front();
            last_entry = ready.last_entry.or(last_entry);
        }
        if let Some((index, term)) = last_entry {
            self.log.persisted_to(index, term);
        }
        self.count_own_persisted();
    }

    /// What `advance` and `advance_persisting` share: the applied index,
    /// the configuration, and leaving a joint configuration once applied.
    fn settle(&mut self, mark: ReadyMark) {
        assert!(
            mark.applied_to <= self.log.committed,
            "applied {} past commit {}",
            mark.applied_to,
            self.log.committed
        );
        self.log.applied = self.log.applied.max(mark.applied_to);
        if let Some(conf) = mark.conf_state {
            self.apply_conf(conf);
        }
        if self.role == Role::Leader
            && self.quorum.is_joint()
            && self.pending_conf_index <= self.log.applied
        {
            let leave = ConfChange::leave_joint().encode();
            self.pending_conf_index = self.append_new_entry(EntryKind::ConfChange, leave);
        }
    }

    /// A leader counts its own entries towards a quorum once persisted.
    fn count_own_persisted(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let persisted = self.log.stable_last_index();
        if let Some(own) = self.progress.get_mut(&self.id) {
            own.update(persisted);
        }
        self.maybe_commit();
    }

    fn apply_conf(&mut self, conf: ConfState) {
        self.quorum = JointConfig::from_conf_state(&conf);
        self.conf = conf;
        if self.role != Role::Leader {
            return;
        }
        if !self.is_promotable() {
            self.hand_over_after_removal();
            return;
        }
        let members = self.members();
        self.progress.retain(|id, _| members.contains(id));
        let next = self.log.last_index() + 1;
        let voters = self.quorum.voters();
        for id in members {
            let is_learner = !voters.contains(&id);
            self.progress
                .entry(id)
                .or_insert_with(|| Progress::new(next, is_learner))
                .is_learner = is_learner;
        }
        if self.transfer_target.is_some_and(|id| !voters.contains(&id)) {
            self.transfer_target = None;
        }
        self.maybe_commit();
        self.confirm_reads();
    }

    /// A leader removed from the voters tells everyone the commit index
    /// (which includes its removal) and asks the most caught-up voter to
    /// campaign at once, then steps down.
    fn hand_over_after_removal(&mut self) {
        let members = self.members();
        self.progress
            .retain(|id, _| members.contains(id) || *id == self.id);
        self.flush_appends();
        self.heartbeat_round();
        let last_index = self.log.last_index();
        let successor = self
            .quorum
            .voters()
            .into_iter()
            .filter_map(|id| self.progress.get(&id).map(|p| (p.matched, id)))
            .max();
        if let Some((matched, id)) = successor
            && matched == last_index
        {
            self.send(id, self.term, MessageBody::TimeoutNow);
        }
        self.become_follower(self.term, None);
    }

    fn check_can_propose(&self) -> Result<(), ProposeError> {
        self.assert_no_outstanding_ready();
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transfer_target.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        Ok(())
    }

    /// Proposes a command for the state machine.
    pub fn propose(&mut self, payload: Bytes) -> Result<Proposal, ProposeError> {
        self.check_can_propose()?;
        let bytes = payload.len() as u64;
        if self.uncommitted_bytes > 0
            && self.uncommitted_bytes + bytes > self.config.uncommitted_bytes_max
        {
            return Err(ProposeError::Busy);
        }
        let index = self.append_new_entry(EntryKind::Normal, payload);
        Ok(Proposal {
            index,
            term: self.term,
        })
    }

    /// Proposes a membership change. Only one may be in progress: the next
    /// is refused until this one (and, for a change of voters, the leaving
    /// of the joint configuration) is applied.
    pub fn propose_conf_change(&mut self, change: &ConfChange) -> Result<Proposal, ProposeError> {
        self.check_can_propose()?;
        if self.pending_conf_index > self.log.applied || self.quorum.is_joint() {
            return Err(ProposeError::ConfChangePending);
        }
        change.apply(&self.conf).map_err(ProposeError::ConfChange)?;
        let index = self.append_new_entry(EntryKind::ConfChange, change.encode());
        self.pending_conf_index = index;
        Ok(Proposal {
            index,
            term: self.term,
        })
    }

    /// Hands leadership to `target` once its log has caught up. Proposals
    /// are refused meanwhile; the transfer is abandoned after an election
    /// timeout.
    pub fn transfer_leader(&mut self, target: NodeId) -> Result<(), ProposeError> {
        self.assert_no_outstanding_ready();
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if target == self.id || self.transfer_target == Some(target) {
            return Ok(());
        }
        if !self.quorum.voters().contains(&target) {
            return Err(ProposeError::NotVoter(target));
        }
        self.transfer_target = Some(target);
        self.transfer_elapsed = 0;
        if self.progress[&target].matched == self.log.last_index() {
            self.send(target, self.term, MessageBody::TimeoutNow);
        }
        Ok(())
    }
}
