//! Log replication: what the leader sends each follower (appends within
//! the flow-control window, snapshots in chunks) and how it counts
//! acknowledgements into the commit index; what a follower does with an
//! append or a snapshot chunk.

use dr_codec::message::{
    AppendEntries, AppendEntriesResponse, Heartbeat, HeartbeatResponse, InstallSnapshot,
    InstallSnapshotResponse, LogIndex, Message, MessageBody, NodeId, RejectHint, SnapshotMeta,
};

use crate::error::StepError;
use crate::progress::{ProgressState, SnapshotTransfer};
use crate::quorum::JointConfig;
use crate::raft::{RaftNode, Role};
use crate::storage::{Storage, StorageError};

/// Steps a leader walks back through its log looking for a follower's
/// conflicting term before falling back to the follower's own hint.
const CONFLICT_SCAN_STEPS_MAX: u64 = 4096;

/// A snapshot being received from the leader: its chunks go to the
/// store's staging area through the ready; only the position is kept here.
pub(crate) struct IncomingSnapshot {
    meta: SnapshotMeta,
    received: u64,
}

/// Checks what a message claims before any of it is used.
pub(crate) fn validate(message: &Message) -> Result<(), StepError> {
    let malformed = |reason: String| Err(StepError::Malformed(reason));
    match &message.body {
        MessageBody::AppendEntries(append) => {
            let mut expected = append.prev_log_index;
            let mut term = append.prev_log_term;
            for entry in &append.entries {
                expected = match expected.checked_add(1) {
                    Some(index) => index,
                    None => return malformed("entry index overflows".into()),
                };
                if entry.index != expected {
                    return malformed(format!(
                        "entry index {} where {expected} was expected",
                        entry.index
                    ));
                }
                if entry.term < term || entry.term > message.term {
                    return malformed(format!(
                        "entry {} has term {} outside {term}..={}",
                        entry.index, entry.term, message.term
                    ));
                }
                term = entry.term;
            }
            Ok(())
        }
        MessageBody::InstallSnapshot(chunk) => {
            if chunk.meta.index == 0 || chunk.meta.conf_state.voters.is_empty() {
                return malformed("snapshot without index or voters".into());
            }
            if chunk.offset.checked_add(chunk.data.len() as u64).is_none() {
                return malformed("snapshot chunk offset overflows".into());
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

impl<S: Storage> RaftNode<S> {
    /// Sends every follower what it lacks, within its window: new
    /// entries, a commit advance, snapshot chunks.
    pub(crate) fn flush_appends(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        // Indexed rather than iterated: sending needs `&mut self`, and a
        // collected list would allocate on every ready.
        let mut position = 0;
        while let Some(peer) = self.progress.keys().nth(position).copied() {
            position += 1;
            if peer != self.id {
                self.send_appends(peer, false);
            }
        }
    }

    /// Sends `peer` appends within its window. `check_tail`: send one
    /// even when nothing is new, an empty one right after what was sent
    /// last, which the follower rejects if an earlier append was lost.
    fn send_appends(&mut self, peer: NodeId, mut check_tail: bool) {
        loop {
            let progress = &self.progress[&peer];
            if progress.state == ProgressState::Snapshot {
                self.send_snapshot_chunks(peer);
                return;
            }
            if progress.is_paused(&self.config) {
                return;
            }
            let next = progress.next;
            let wants_commit = progress.commit_sent < self.log.committed;
            let probing = progress.state == ProgressState::Probe;
            let last_index = self.log.last_index();
            if next > last_index && !wants_commit && !probing && !check_tail {
                return;
            }
            let prev_log_index = next - 1;
            let built = self.log.term(prev_log_index).and_then(|prev_log_term| {
                let entries = self
                    .log
                    .slice(next, last_index + 1, self.config.append_bytes_max)?;
                Ok((prev_log_term, entries))
            });
            let (prev_log_term, entries) = match built {
                Ok(built) => built,
                Err(StorageError::Compacted { .. }) => {
                    self.start_snapshot(peer);
                    return;
                }
                // The store cannot serve it now; the next flush retries.
                Err(_) => return,
            };
            let last_sent = entries.last().map(|e| e.index);
            let bytes = entries.iter().map(|e| e.payload.len() as u64).sum();
            let leader_commit = self.log.committed;
            let progress = self.progress.get_mut(&peer).expect("peer has progress");
            progress.sent_append(last_sent, bytes);
            progress.commit_sent = leader_commit;
            let append = AppendEntries {
                prev_log_index,
                prev_log_term,
                leader_commit,
                entries,
            };
            self.send(peer, self.term, MessageBody::AppendEntries(append));
            check_tail = false;
            if last_sent.is_none() {
                return;
            }
        }
    }

    fn start_snapshot(&mut self, peer: NodeId) {
        let Ok(meta) = self.log.snapshot_meta() else {
            // Being built: the next flush asks again.
            return;
        };
        let transfer = SnapshotTransfer {
            meta,
            end: None,
            sent: 0,
            acked: 0,
            done_sent: false,
            answered: true,
        };
        self.progress
            .get_mut(&peer)
            .expect("peer has progress")
            .become_snapshot(transfer);
        self.send_snapshot_chunks(peer);
    }

    /// Sends the chunks the transfer's window allows, reading each from the
    /// store (a snapshot is never held in memory whole).
    fn send_snapshot_chunks(&mut self, peer: NodeId) {
        let chunk_bytes = self.config.snapshot_chunk_bytes;
        let window = chunk_bytes * u64::from(self.config.snapshot_chunks_inflight_max);
        loop {
            let progress = self.progress.get_mut(&peer).expect("peer has progress");
            let Some(transfer) = progress.snapshot.as_mut() else {
                return;
            };
            if transfer.done_sent || transfer.sent - transfer.acked >= window {
                return;
            }
            let offset = transfer.sent;
            let meta = transfer.meta.clone();
            let chunk = match self.log.storage.snapshot_chunk(&meta, offset, chunk_bytes) {
                Ok(chunk) => chunk,
                Err(StorageError::SnapshotOutOfDate { .. }) => {
                    // A newer snapshot replaced it: start over with that one.
                    progress.become_probe();
                    progress.next = progress.matched + 1;
                    return;
                }
                // Unreadable now: the retransmit timer tries again.
                Err(_) => return,
            };
            let end = offset + chunk.data.len() as u64;
            transfer.sent = end;
            transfer.done_sent = chunk.done;
            if chunk.done {
                transfer.end = Some(end);
            }
            let message = InstallSnapshot {
                meta,
                offset,
                data: chunk.data,
                done: chunk.done,
            };
            self.send(peer, self.term, MessageBody::InstallSnapshot(message));
        }
    }

    /// Sends again the chunks of transfers that got no answer since the
    /// last heartbeat tick (chunks lost, or the follower restarted).
    pub(crate) fn retransmit_stalled_snapshots(&mut self) {
        let mut stalled = Vec::new();
        for (&peer, progress) in &mut self.progress {
            if let Some(transfer) = progress.snapshot.as_mut() {
                if !transfer.answered {
                    transfer.sent = transfer.acked;
                    transfer.done_sent = false;
                    stalled.push(peer);
                }
                transfer.answered = false;
            }
        }
        for peer in stalled {
            self.send_snapshot_chunks(peer);
        }
    }

    pub(crate) fn handle_append_response(
        &mut self,
        from: NodeId,
        response: AppendEntriesResponse,
    ) -> Result<(), StepError> {
        let last_index = self.log.last_index();
        let Some(progress) = self.progress.get_mut(&from) else {
            return Ok(());
        };
        progress.recent_active = true;
        if let Some(hint) = response.reject {
            if response.index > last_index || response.index == 0 {
                return Err(StepError::Malformed(format!(
                    "rejection of index {} the leader never sent",
                    response.index
                )));
            }
            let next = self.next_after_rejection(response.index, hint);
            let progress = self.progress.get_mut(&from).expect("checked above");
            progress.rejected(response.index, next);
            return Ok(());
        }
        if response.index > last_index {
            return Err(StepError::Malformed(format!(
                "acknowledgement of index {} past the leader's last index {last_index}",
                response.index
            )));
        }
        if !progress.update(response.index) {
            return Ok(());
        }
        match progress.state {
            ProgressState::Probe => progress.become_replicate(),
            ProgressState::Snapshot
                if progress
                    .snapshot
                    .as_ref()
                    .is_some_and(|s| progress.matched >= s.meta.index) =>
            {
                progress.become_probe();
            }
            _ => {}
        }
        let caught_up = progress.matched == last_index;
        self.maybe_commit();
        if caught_up && self.transfer_target == Some(from) {
            self.send(from, self.term, MessageBody::TimeoutNow);
        }
        Ok(())
    }

    /// Where to probe next after a follower rejected the append after
    /// `rejected`: skip a whole term at a time using its hint.
    fn next_after_rejection(&self, rejected: LogIndex, hint: RejectHint) -> LogIndex {
        if hint.conflict_term == 0 {
            return hint.last_index.saturating_add(1).min(rejected);
        }
        let mut index = rejected.min(self.log.last_index());
        let floor = index.saturating_sub(CONFLICT_SCAN_STEPS_MAX);
        while index > floor {
            match self.log.term(index) {
                Ok(term) if term > hint.conflict_term => index -= 1,
                Ok(term) if term == hint.conflict_term => return index + 1,
                _ => break,
            }
        }
        hint.conflict_index.min(rejected)
    }

    /// Commits the highest index a quorum holds, if it is of this term
    /// (entries of earlier terms commit only underneath one of this term).
    pub(crate) fn maybe_commit(&mut self) {
        let progress = &self.progress;
        let index = self
            .quorum
            .committed_index(|id| progress.get(&id).map(|p| p.matched));
        if index <= self.log.committed || self.log.term(index) != Ok(self.term) {
            return;
        }
        self.log.commit_to(index);
        while self.uncommitted.front().is_some_and(|&(i, _)| i <= index) {
            let (_, bytes) = self.uncommitted.pop_front().expect("checked front");
            self.uncommitted_bytes -= bytes;
        }
        self.release_reads_after_term_commit();
    }

    pub(crate) fn handle_append(
        &mut self,
        from: NodeId,
        mut append: AppendEntries,
    ) -> Result<(), StepError> {
        let committed = self.log.committed;
        if append.prev_log_index < committed {
            // Everything up to the commit index matches the leader's log.
            let skip = (committed - append.prev_log_index) as usize;
            append.entries.drain(..skip.min(append.entries.len()));
            append.prev_log_index = committed;
            append.prev_log_term = self.log.term(committed)?;
        }
        if !self
            .log
            .matches_term(append.prev_log_index, append.prev_log_term)
        {
            let hint = self.reject_hint(append.prev_log_index);
            let response = AppendEntriesResponse {
                index: append.prev_log_index,
                reject: Some(hint),
            };
            self.send(
                from,
                self.term,
                MessageBody::AppendEntriesResponse(response),
            );
            return Ok(());
        }
        let last_new = append.prev_log_index + append.entries.len() as u64;
        if let Some(conflict) = self.log.find_conflict(&append.entries) {
            let start = (conflict - append.prev_log_index - 1) as usize;
            self.log.append(&append.entries[start..]);
        }
        self.log.commit_to(append.leader_commit.min(last_new));
        let response = AppendEntriesResponse {
            index: last_new,
            reject: None,
        };
        self.send(
            from,
            self.term,
            MessageBody::AppendEntriesResponse(response),
        );
        Ok(())
    }

    fn reject_hint(&self, prev_log_index: LogIndex) -> RejectHint {
        let last_index = self.log.last_index();
        let Ok(conflict_term) = self.log.term(prev_log_index) else {
            return RejectHint {
                last_index,
                conflict_term: 0,
                conflict_index: 0,
            };
        };
        let floor = self
            .log
            .committed
            .max(prev_log_index.saturating_sub(CONFLICT_SCAN_STEPS_MAX));
        let mut conflict_index = prev_log_index;
        while conflict_index > floor + 1 && self.log.term(conflict_index - 1) == Ok(conflict_term) {
            conflict_index -= 1;
        }
        RejectHint {
            last_index,
            conflict_term,
            conflict_index,
        }
    }

    pub(crate) fn handle_heartbeat(&mut self, from: NodeId, heartbeat: Heartbeat) {
        // The leader caps the commit at what this follower matches, but the
        // log may have changed since: never commit past it.
        self.log
            .commit_to(heartbeat.commit.min(self.log.last_index()));
        let response = HeartbeatResponse {
            read_context: heartbeat.read_context,
        };
        self.send(from, self.term, MessageBody::HeartbeatResponse(response));
    }

    pub(crate) fn handle_heartbeat_response(
        &mut self,
        from: NodeId,
        response: HeartbeatResponse,
    ) -> Result<(), StepError> {
        if response.read_context > self.reads.round_sent() {
            return Err(StepError::Malformed(format!(
                "heartbeat answer for read round {} never sent",
                response.read_context
            )));
        }
        let Some(progress) = self.progress.get_mut(&from) else {
            return Ok(());
        };
        progress.heard_heartbeat_answer(&self.config);
        progress.read_round_acked = progress.read_round_acked.max(response.read_context);
        // A follower still short of the log after a heartbeat round may
        // have lost appends (a dropped connection), and in the replicate
        // state nothing would be resent until the next proposal: check
        // the tail now, as etcd's raft does.
        let behind = progress.matched < self.log.last_index();
        self.confirm_reads();
        if behind {
            self.send_appends(from, true);
        }
        Ok(())
    }

    pub(crate) fn handle_snapshot_response(
        &mut self,
        from: NodeId,
        response: InstallSnapshotResponse,
    ) {
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        let Some(transfer) = progress.snapshot.as_mut() else {
            return;
        };
        if transfer.meta.index != response.snapshot_index {
            return;
        }
        transfer.answered = true;
        if response.rejected {
            let restart = response.next_offset.min(transfer.acked);
            transfer.sent = restart;
            transfer.acked = restart;
            transfer.done_sent = false;
            return;
        }
        transfer.acked = transfer.acked.max(response.next_offset.min(transfer.sent));
        if transfer.done_sent && transfer.end == Some(transfer.acked) {
            let index = transfer.meta.index;
            progress.matched = progress.matched.max(index);
            progress.become_probe();
        }
    }

    pub(crate) fn handle_snapshot_chunk(&mut self, from: NodeId, chunk: InstallSnapshot) {
        let meta = &chunk.meta;
        if meta.index <= self.log.committed || self.log.matches_term(meta.index, meta.term) {
            // Nothing to install: the log already has it.
            self.incoming_snapshot = None;
            self.log.commit_to(meta.index.min(self.log.last_index()));
            let response = AppendEntriesResponse {
                index: self.log.committed,
                reject: None,
            };
            self.send(
                from,
                self.term,
                MessageBody::AppendEntriesResponse(response),
            );
            return;
        }
        let same_transfer = self
            .incoming_snapshot
            .as_ref()
            .is_some_and(|incoming| incoming.meta == chunk.meta);
        if !same_transfer && chunk.offset == 0 {
            self.incoming_snapshot = Some(IncomingSnapshot {
                meta: chunk.meta.clone(),
                received: 0,
            });
        }
        let Some(incoming) = self
            .incoming_snapshot
            .as_mut()
            .filter(|incoming| incoming.meta == chunk.meta)
        else {
            self.answer_chunk(from, chunk.meta.index, 0, true);
            return;
        };
        let received = incoming.received;
        if chunk.offset > received {
            self.answer_chunk(from, chunk.meta.index, received, true);
            return;
        }
        if chunk.offset == received {
            incoming.received += chunk.data.len() as u64;
            let received = incoming.received;
            let InstallSnapshot {
                meta,
                offset,
                data,
                done,
            } = chunk;
            self.staged_chunks.push(crate::ready::StagedChunk {
                meta: meta.clone(),
                offset,
                data,
            });
            if done {
                self.incoming_snapshot = None;
                self.install_snapshot(meta.clone());
            }
            self.answer_chunk(from, meta.index, received, false);
            return;
        }
        // A duplicate of a chunk already staged.
        self.answer_chunk(from, chunk.meta.index, received, false);
    }

    fn answer_chunk(
        &mut self,
        to: NodeId,
        snapshot_index: LogIndex,
        next_offset: u64,
        rejected: bool,
    ) {
        let response = InstallSnapshotResponse {
            snapshot_index,
            next_offset,
            rejected,
        };
        self.send(
            to,
            self.term,
            MessageBody::InstallSnapshotResponse(response),
        );
    }

    fn install_snapshot(&mut self, snapshot: SnapshotMeta) {
        self.conf = snapshot.conf_state.clone();
        self.quorum = JointConfig::from_conf_state(&self.conf);
        self.pending_conf_index = 0;
        self.log.restore(snapshot);
    }
}
