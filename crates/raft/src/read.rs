//! Linearizable reads by ReadIndex, batched and riding on heartbeats.
//!
//! A read asks the leader for its commit index, then waits until a quorum
//! confirms the leader still leads *after* the read arrived; the runtime
//! serves it once its state machine has applied that index. Confirmation
//! goes in rounds: every heartbeat broadcast carries the newest round
//! number, followers echo it, and a round is confirmed when a quorum has
//! echoed it (or a later one). Reads that arrive while a round is out wait
//! for the next one, so any number of reads share one round and there is
//! never more than one round beyond the heartbeats' own.
//!
//! A new leader serves no read until an entry of its own term commits
//! (before that its commit index may be behind the cluster's). Reads
//! pending when the node stops leading are answered with
//! [`ReadError::LeadershipLost`], never dropped.

use std::collections::VecDeque;
use std::ops::Add;

use dr_codec::message::{Heartbeat, LogIndex, MessageBody, NodeId, Term};

use crate::error::ReadError;
use crate::raft::{RaftNode, Role};
use crate::storage::Storage;

/// The outcome of a read request: the index the state machine must have
/// applied before the read is served, or why it cannot be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The context the caller passed to `read_index`.
    pub context: u64,
    /// The read index, or a retryable error.
    pub result: Result<LogIndex, ReadError>,
}

/// A leader's read rounds: see [`RaftNode::read_rounds`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadRounds {
    /// The term they belong to.
    pub term: Term,
    /// The newest round started.
    pub sent: u64,
    /// The newest round a quorum has echoed.
    pub confirmed: u64,
}

/// The clock side of a leader lease, generic over the caller's instant
/// type `I` and duration `D` (a monotonic clock, or a simulation's
/// virtual time): it dates every read round by its first sighting and
/// keeps the lease `duration` past the newest confirmed round's date.
///
/// Call [`observe`](Self::observe) before the messages of every ready
/// leave, so a round is dated no later than its first send: a quorum that
/// echoed it heard from the leader after that date, and each of its
/// members refuses votes for an election timeout after hearing from it
/// (see [`RaftNode::lease_read_index`]). `duration` must stay below that
/// timeout, with a margin for clocks running at different rates. The
/// tracker never extends a lease by itself: the caller starts rounds.
#[derive(Clone, Debug)]
pub struct LeaseTracker<I, D> {
    duration: D,
    term: Term,
    /// The newest round seen sent.
    seen_sent: u64,
    /// Rounds sent but not yet confirmed, each with its first sighting.
    unconfirmed: VecDeque<(u64, I)>,
    valid_until: Option<I>,
}

impl<I: Copy + Ord + Add<D, Output = I>, D: Copy> LeaseTracker<I, D> {
    /// A tracker whose leases last `duration` past their round's date.
    pub fn new(duration: D) -> Self {
        Self {
            duration,
            term: 0,
            seen_sent: 0,
            unconfirmed: VecDeque::new(),
            valid_until: None,
        }
    }

    /// How long a lease lasts after its round was first seen.
    pub fn duration(&self) -> D {
        self.duration
    }

    /// Takes in the core's read rounds at `now`; a new term ends the
    /// lease.
    pub fn observe(&mut self, rounds: ReadRounds, now: I) {
        if rounds.term != self.term {
            *self = Self {
                term: rounds.term,
                ..Self::new(self.duration)
            };
        }
        if rounds.sent > self.seen_sent {
            self.seen_sent = rounds.sent;
            self.unconfirmed.push_back((rounds.sent, now));
        }
        let mut newest_confirmed = None;
        while let Some(&(round, seen)) = self.unconfirmed.front() {
            if round > rounds.confirmed {
                break;
            }
            newest_confirmed = Some(seen);
            self.unconfirmed.pop_front();
        }
        if let Some(seen) = newest_confirmed {
            let until = seen + self.duration;
            self.valid_until = Some(self.valid_until.map_or(until, |old| old.max(until)));
        }
    }

    /// Until when the lease holds, if it was ever confirmed in this term.
    pub fn valid_until(&self) -> Option<I> {
        self.valid_until
    }

    /// Whether the lease holds at `now`.
    pub fn holds_at(&self, now: I) -> bool {
        self.valid_until.is_some_and(|until| now < until)
    }

    /// Whether a round is out that would renew the lease.
    pub fn round_in_flight(&self) -> bool {
        !self.unconfirmed.is_empty()
    }
}

#[derive(Default)]
pub(crate) struct ReadQueue {
    /// Reads waiting for the leader's first commit in its term.
    before_term_commit: Vec<u64>,
    /// Reads waiting for the next round: (context, read index).
    unassigned: Vec<(u64, LogIndex)>,
    /// Reads in a round: (context, read index, round).
    assigned: VecDeque<(u64, LogIndex, u64)>,
    round_sent: u64,
    round_confirmed: u64,
    /// Finished reads for the next ready.
    pub(crate) done: Vec<ReadState>,
}

impl ReadQueue {
    pub(crate) fn round_sent(&self) -> u64 {
        self.round_sent
    }

    fn pending(&self) -> usize {
        self.before_term_commit.len() + self.unassigned.len() + self.assigned.len()
    }

    /// Answers every pending read with a retryable error.
    pub(crate) fn fail_all(&mut self) {
        let contexts = self
            .before_term_commit
            .drain(..)
            .chain(self.unassigned.drain(..).map(|(context, _)| context))
            .chain(self.assigned.drain(..).map(|(context, ..)| context));
        let failed: Vec<ReadState> = contexts
            .map(|context| ReadState {
                context,
                result: Err(ReadError::LeadershipLost),
            })
            .collect();
        self.done.extend(failed);
    }
}

impl<S: Storage> RaftNode<S> {
    /// Asks for a linearizable read. Its [`ReadState`] comes in a later
    /// ready; `context` identifies it there (the caller chooses it).
    pub fn read_index(&mut self, context: u64) -> Result<(), ReadError> {
        self.assert_no_outstanding_ready();
        if self.role != Role::Leader {
            return Err(ReadError::NotLeader {
                leader: self.leader,
            });
        }
        if self.reads.pending() >= self.config.pending_reads_max {
            return Err(ReadError::Busy);
        }
        if !self.committed_in_term() {
            self.reads.before_term_commit.push(context);
            return Ok(());
        }
        self.reads.unassigned.push((context, self.log.committed));
        if self.reads.round_confirmed == self.reads.round_sent {
            self.start_read_round();
        }
        Ok(())
    }

    /// The index a *lease read* may be served at without a round of
    /// heartbeats: the commit index, when this node leads with
    /// [`Config::lease_reads`](crate::Config::lease_reads), has committed
    /// an entry of its term, and has not sent `TimeoutNow` in it. `None`
    /// otherwise: use [`read_index`](Self::read_index).
    ///
    /// The core has no clock, so the lease itself is the caller's: after
    /// a quorum confirmed read round `r` ([`read_rounds`](Self::read_rounds)),
    /// no other leader can be elected until an election timeout after the
    /// moment round `r` was first sent, minus the clock drift the caller
    /// allows, because every follower that echoed it refuses votes that
    /// long after hearing from this leader (and a node that restarts
    /// refuses them for as long). Before that moment the commit index is
    /// the newest any client may have seen acknowledged.
    pub fn lease_read_index(&self) -> Option<LogIndex> {
        let leads = self.config.lease_reads && self.role == Role::Leader;
        (leads && self.committed_in_term() && self.timeout_now_term < self.term)
            .then_some(self.log.committed)
    }

    /// The leader's read rounds in this term: what a caller timing a
    /// lease watches. A round is sent in the first ready after `sent`
    /// grows; rounds are numbered from 1 in every term.
    pub fn read_rounds(&self) -> ReadRounds {
        ReadRounds {
            term: self.term,
            sent: self.reads.round_sent,
            confirmed: self.reads.round_confirmed,
        }
    }

    fn committed_in_term(&self) -> bool {
        self.log.term(self.log.committed) == Ok(self.term)
    }

    /// Called when the commit index advances at the leader.
    pub(crate) fn release_reads_after_term_commit(&mut self) {
        if self.reads.before_term_commit.is_empty() || !self.committed_in_term() {
            return;
        }
        let committed = self.log.committed;
        let released: Vec<(u64, LogIndex)> = self
            .reads
            .before_term_commit
            .drain(..)
            .map(|context| (context, committed))
            .collect();
        self.reads.unassigned.extend(released);
        if self.reads.round_confirmed == self.reads.round_sent {
            self.start_read_round();
        }
    }

    /// The leader's heartbeat tick: a new round if reads wait for one,
    /// otherwise the current round again (covering lost heartbeats).
    pub(crate) fn heartbeat_round(&mut self) {
        if self.reads.unassigned.is_empty() {
            self.broadcast_heartbeats();
        } else {
            self.start_read_round();
        }
    }

    fn start_read_round(&mut self) {
        let reads = &mut self.reads;
        reads.round_sent += 1;
        let round = reads.round_sent;
        reads.assigned.extend(
            reads
                .unassigned
                .drain(..)
                .map(|(context, index)| (context, index, round)),
        );
        self.broadcast_heartbeats();
        self.confirm_reads();
    }

    fn broadcast_heartbeats(&mut self) {
        let round = self.reads.round_sent;
        let committed = self.log.committed;
        let own = self
            .progress
            .get_mut(&self.id)
            .expect("a leader is a member");
        own.read_round_acked = round;
        let beats: Vec<(NodeId, Heartbeat)> = self
            .progress
            .iter()
            .filter(|&(&id, _)| id != self.id)
            .map(|(&id, progress)| {
                let heartbeat = Heartbeat {
                    commit: committed.min(progress.matched),
                    read_context: round,
                };
                (id, heartbeat)
            })
            .collect();
        for (peer, heartbeat) in beats {
            self.send(peer, self.term, MessageBody::Heartbeat(heartbeat));
        }
    }

    /// Releases the reads of every round a quorum has confirmed, and
    /// starts the next round if reads wait for one.
    pub(crate) fn confirm_reads(&mut self) {
        let progress = &self.progress;
        let confirmed = self
            .quorum
            .committed_index(|id| progress.get(&id).map(|p| p.read_round_acked))
            .min(self.reads.round_sent);
        let reads = &mut self.reads;
        reads.round_confirmed = reads.round_confirmed.max(confirmed);
        while let Some(&(context, index, round)) = reads.assigned.front() {
            if round > reads.round_confirmed {
                break;
            }
            reads.assigned.pop_front();
            reads.done.push(ReadState {
                context,
                result: Ok(index),
            });
        }
        if !reads.unassigned.is_empty() && reads.round_confirmed == reads.round_sent {
            self.start_read_round();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rounds(term: Term, sent: u64, confirmed: u64) -> ReadRounds {
        ReadRounds {
            term,
            sent,
            confirmed,
        }
    }

    #[test]
    fn a_lease_runs_from_the_first_sighting_of_the_confirmed_round() {
        let mut lease = LeaseTracker::<u64, u64>::new(70);
        lease.observe(rounds(3, 1, 0), 100);
        assert!(!lease.holds_at(100), "not confirmed yet");
        assert!(lease.round_in_flight());
        // Seen again later (a heartbeat repeating the round): still dated
        // by its first sighting.
        lease.observe(rounds(3, 1, 0), 110);
        lease.observe(rounds(3, 1, 1), 120);
        assert!(!lease.round_in_flight());
        assert_eq!(lease.valid_until(), Some(170));
        assert!(lease.holds_at(169) && !lease.holds_at(170));
    }

    #[test]
    fn a_later_round_extends_and_a_new_term_ends_the_lease() {
        let mut lease = LeaseTracker::<u64, u64>::new(70);
        lease.observe(rounds(3, 1, 1), 100);
        lease.observe(rounds(3, 2, 1), 130);
        lease.observe(rounds(3, 3, 1), 140);
        // Round 3 confirmed implies round 2: the lease runs from round 3.
        lease.observe(rounds(3, 3, 3), 150);
        assert_eq!(lease.valid_until(), Some(210));
        lease.observe(rounds(4, 0, 0), 150);
        assert_eq!(lease.valid_until(), None);
        assert!(!lease.round_in_flight());
    }
}
