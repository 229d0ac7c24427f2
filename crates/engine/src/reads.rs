//! Reads: on the leader a read index from a heartbeat round (or the
//! lease), on a follower one fetched from the leader (`peers.rs`); then
//! each read is served once the applied index reaches its index.

use std::time::Duration;

use dr_codec::message::LogIndex;
use dr_raft::{ReadError, ReadState, Role};

use crate::metrics::bump;
use crate::peers::ReadWaiter;
use crate::{Engine, EngineError, PendingRead, Responder, Response, Retry, StateMachine};

impl<M: StateMachine, A: Responder<M>> Engine<M, A> {
    pub(crate) fn read(&mut self, read: PendingRead<M, A>) {
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
    pub(crate) fn confirm_read(&mut self, waiter: ReadWaiter<M, A>) {
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

    pub(crate) fn read_failed(&mut self, waiter: ReadWaiter<M, A>, error: EngineError) {
        match waiter {
            ReadWaiter::Client(read) => read.answer.respond(Err(error)),
            ReadWaiter::Peer { peer, request_id } => {
                self.answer_read_index(peer, request_id, Err(error));
            }
        }
    }

    fn read_error(&self, error: ReadError) -> EngineError {
        match error {
            ReadError::NotLeader { .. } => self.not_leader(),
            ReadError::LeadershipLost => EngineError::TryAgain(Retry::ReadLeadershipLost),
            ReadError::Busy => EngineError::TryAgain(Retry::TooManyReads),
        }
    }

    pub(crate) fn confirm_reads(&mut self, read_states: Vec<ReadState>) {
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
    fn read_confirmed(&mut self, waiter: ReadWaiter<M, A>, index: LogIndex) {
        match waiter {
            ReadWaiter::Client(read) => self.reads_after_apply.entry(index).or_default().push(read),
            ReadWaiter::Peer { peer, request_id } => {
                self.answer_read_index(peer, request_id, Ok(index));
            }
        }
    }

    /// Publishes the lease for reads outside the engine: closed unless
    /// lease reads are on and the core allows one (so it closes before a
    /// `TimeoutNow` leaves: this runs before every ready's messages).
    pub(crate) fn publish_lease(&mut self) {
        let lease = if self.config.read_lease {
            self.lease.valid_until().zip(self.raft.lease_read_index())
        } else {
            None
        };
        self.observer.lease(lease);
    }

    /// The index a read may be served at on the leader's lease, when lease
    /// reads are on, the core allows one and the lease has not run out.
    fn lease_read_index(&self) -> Option<LogIndex> {
        if !self.config.read_lease || !self.lease.holds_at(self.clock.now()) {
            return None;
        }
        self.raft.lease_read_index()
    }

    /// How much of the lease is left now (zero when there is none).
    pub fn lease_remaining(&self) -> Duration {
        let now = self.clock.now();
        self.lease
            .valid_until()
            .map_or(Duration::ZERO, |until| until.saturating_sub(now))
    }

    pub(crate) fn serve_applied_reads(&mut self) {
        let applied = self.applied_index();
        while let Some(entry) = self.reads_after_apply.first_entry() {
            if *entry.key() > applied {
                break;
            }
            for read in entry.remove() {
                let result = self
                    .machine
                    .read(self.raft.storage(), &read.query, self.clock.now())
                    .map(Response::Read)
                    .map_err(|e| EngineError::TryAgain(Retry::Storage(e.to_string())));
                bump(&self.metrics.reads_served);
                read.answer.respond(result);
            }
        }
    }
}
