//! Writes: proposals (and membership changes, leader transfers), the
//! apply path and its answers.

use std::sync::atomic::Ordering::Relaxed;

use dr_codec::message::{ConfState, Entry};
use dr_raft::{ConfChange, ProposeError};

use crate::metrics::bump;
use crate::peers::{Forwarded, Waiter};
use crate::{Engine, EngineError, PendingWrite, Refusal, Responder, Response, Retry, StateMachine};

impl<M: StateMachine, A: Responder<M>> Engine<M, A> {
    /// Proposes `request` here, answering `waiter` once it applied (or
    /// at once when it is refused).
    pub(crate) fn submit(&mut self, request: Forwarded<M>, waiter: Waiter<A>) {
        match request {
            Forwarded::Write(command) => {
                let payload = self.machine.entry_payload(&command, self.clock.now());
                let result = self.raft.propose(payload);
                self.track_proposal(result, waiter, Some(M::context(&command)));
            }
            Forwarded::ConfChange(op) => {
                let change = ConfChange { ops: vec![op] };
                let result = self.raft.propose_conf_change(&change);
                self.track_proposal(result, waiter, None);
            }
            Forwarded::TransferLeader(target) => {
                let result = self.raft.transfer_leader(target);
                if result.is_ok() {
                    tracing::info!(target, "leadership transfer started");
                }
                let result = result
                    .map(|()| Response::Done)
                    .map_err(|error| self.propose_error(error));
                self.answer(waiter, result);
            }
        }
    }

    pub(crate) fn propose_error(&self, error: ProposeError) -> EngineError {
        match error {
            ProposeError::NotLeader { .. } => self.not_leader(),
            ProposeError::TransferInProgress => EngineError::TryAgain(Retry::TransferInProgress),
            ProposeError::Busy => EngineError::TryAgain(Retry::TooManyWrites),
            ProposeError::ConfChangePending => EngineError::TryAgain(Retry::ConfChangePending),
            ProposeError::ConfChange(error) => {
                EngineError::Refused(Refusal::ConfChange(error.to_string()))
            }
            ProposeError::NotVoter(id) => EngineError::Refused(Refusal::NotVoter(id)),
        }
    }

    fn track_proposal(
        &mut self,
        result: Result<dr_raft::Proposal, ProposeError>,
        waiter: Waiter<A>,
        context: Option<M::Context>,
    ) {
        match result {
            Ok(proposal) => {
                bump(&self.metrics.proposals);
                let pending = PendingWrite {
                    term: proposal.term,
                    waiter,
                    context,
                };
                // A waiter already at this index proposed there in an
                // older term, and its entry has since been cut from this
                // log: never committed (a committed entry is never cut),
                // so certainly not done.
                if let Some(old) = self.writes.insert(proposal.index, pending) {
                    assert!(
                        old.term < proposal.term,
                        "two proposals at index {} in term {}",
                        proposal.index,
                        proposal.term
                    );
                    let error = EngineError::TryAgain(Retry::LeaderChanged);
                    self.answer(old.waiter, Err(error));
                }
            }
            Err(error) => {
                bump(&self.metrics.proposals_refused);
                let error = self.propose_error(error);
                self.answer(waiter, Err(error));
            }
        }
    }

    pub(crate) fn apply(&mut self, entries: &[Entry], conf_state: Option<&ConfState>) {
        if entries.is_empty() && conf_state.is_none() {
            return;
        }
        let writes = &self.writes;
        let waiting = |index| writes.get(&index).and_then(|w| w.context.clone());
        let results = self
            .machine
            .apply(self.raft.storage_mut(), entries, conf_state, &waiting)
            .unwrap_or_else(|error| panic!("cannot apply committed entries: {error}"));
        if !entries.is_empty() {
            let bytes: usize = entries.iter().map(|entry| entry.payload.len()).sum();
            self.log_bytes_applied += bytes as u64;
            self.metrics
                .entries_applied
                .fetch_add(entries.len() as u64, Relaxed);
            self.metrics.entries_per_apply.observe(entries.len() as f64);
        }
        let mut members_changed = false;
        for applied in results {
            members_changed |= applied.members_changed;
            let Some(pending) = self.writes.remove(&applied.index) else {
                continue;
            };
            let result = if pending.term != applied.term {
                Err(EngineError::TryAgain(Retry::LeaderChanged))
            } else if pending.context.is_some() {
                Ok(Response::Written(applied.output))
            } else {
                Ok(Response::Done)
            };
            self.answer(pending.waiter, result);
        }
        if let Some(conf) = conf_state {
            self.transport.sync_members(conf);
        } else if members_changed {
            let conf = self.raft.conf_state().clone();
            self.transport.sync_members(&conf);
        }
    }
}
