//! What a leader knows about each follower's log, and the flow control
//! that bounds what it sends: [`Progress`] in one of three states and its
//! window of [`Inflights`].
//!
//! - **Probe**: the leader does not know where the follower's log
//!   matches; one append at a time, then wait for the answer (or the next
//!   heartbeat answer).
//! - **Replicate**: the follower matched; the leader streams appends
//!   optimistically, up to `inflight_messages_max` messages and
//!   `inflight_bytes_max` payload bytes not yet acknowledged.
//! - **Snapshot**: the follower needs entries the leader compacted; the
//!   leader streams a snapshot in chunks and sends no appends meanwhile.

use std::collections::VecDeque;

use dr_codec::message::{LogIndex, SnapshotMeta};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProgressState {
    Probe,
    Replicate,
    Snapshot,
}

/// A snapshot being streamed to one follower.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotTransfer {
    pub(crate) meta: SnapshotMeta,
    /// The data's length, known once its last chunk was read.
    pub(crate) end: Option<u64>,
    /// Bytes sent so far (the next chunk starts here).
    pub(crate) sent: u64,
    /// Bytes the follower confirmed receiving in order.
    pub(crate) acked: u64,
    /// Whether the last chunk went out (a transfer of empty data is one
    /// empty last chunk).
    pub(crate) done_sent: bool,
    /// Whether a chunk answer arrived since the last heartbeat tick; when
    /// none did, the unacknowledged chunks are sent again.
    pub(crate) answered: bool,
}

/// Append messages (their last index and payload bytes) a follower has
/// not acknowledged yet.
#[derive(Clone, Debug, Default)]
pub(crate) struct Inflights {
    messages: VecDeque<(LogIndex, u64)>,
    bytes: u64,
}

impl Inflights {
    fn add(&mut self, last_index: LogIndex, bytes: u64) {
        self.messages.push_back((last_index, bytes));
        self.bytes += bytes;
    }

    /// Frees every message whose last index is at or below `index`.
    fn free_to(&mut self, index: LogIndex) {
        while let Some(&(last, bytes)) = self.messages.front() {
            if last > index {
                break;
            }
            self.messages.pop_front();
            self.bytes -= bytes;
        }
    }

    /// Frees the oldest message, so a window whose appends were all lost
    /// lets one more through (its rejection then repairs the progress).
    fn free_first(&mut self) {
        if let Some((_, bytes)) = self.messages.pop_front() {
            self.bytes -= bytes;
        }
    }

    fn reset(&mut self) {
        self.messages.clear();
        self.bytes = 0;
    }

    pub(crate) fn len(&self) -> usize {
        self.messages.len()
    }
}

/// The leader's view of one follower (or of itself: its own entry tracks
/// what it has persisted).
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// The highest index known to match the leader's log.
    pub(crate) matched: LogIndex,
    /// The next index to send.
    pub(crate) next: LogIndex,
    pub(crate) state: ProgressState,
    /// In probe state, whether an append is out and unanswered.
    pub(crate) probe_sent: bool,
    pub(crate) inflights: Inflights,
    /// The commit index last sent, so a commit advance is propagated.
    pub(crate) commit_sent: LogIndex,
    /// Heard from within the current check-quorum period.
    pub(crate) recent_active: bool,
    /// The newest ReadIndex round this follower answered.
    pub(crate) read_round_acked: u64,
    pub(crate) snapshot: Option<SnapshotTransfer>,
    pub(crate) is_learner: bool,
}

impl Progress {
    pub(crate) fn new(next: LogIndex, is_learner: bool) -> Self {
        Self {
            matched: 0,
            next,
            state: ProgressState::Probe,
            probe_sent: false,
            inflights: Inflights::default(),
            commit_sent: 0,
            recent_active: false,
            read_round_acked: 0,
            snapshot: None,
            is_learner,
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.state = state;
        self.probe_sent = false;
        self.inflights.reset();
        self.snapshot = None;
    }

    pub(crate) fn become_probe(&mut self) {
        // After a snapshot, continue right after it.
        let after_snapshot = self.snapshot.as_ref().map(|s| s.meta.index + 1);
        self.reset_state(ProgressState::Probe);
        self.next = after_snapshot
            .unwrap_or(self.matched + 1)
            .max(self.matched + 1);
    }

    pub(crate) fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next = self.matched + 1;
    }

    pub(crate) fn become_snapshot(&mut self, transfer: SnapshotTransfer) {
        self.reset_state(ProgressState::Snapshot);
        self.snapshot = Some(transfer);
    }

    /// Records an acknowledgement of `index`; whether it moved `matched`.
    pub(crate) fn update(&mut self, index: LogIndex) -> bool {
        let advanced = index > self.matched;
        if advanced {
            self.matched = index;
            self.probe_sent = false;
        }
        self.next = self.next.max(index + 1);
        self.inflights.free_to(index);
        advanced
    }

    /// The follower answered a heartbeat: it is reachable, so let one
    /// more append through even if everything in flight was lost.
    pub(crate) fn heard_heartbeat_answer(&mut self, config: &crate::Config) {
        self.recent_active = true;
        match self.state {
            ProgressState::Probe => self.probe_sent = false,
            ProgressState::Replicate if self.is_paused(config) => self.inflights.free_first(),
            _ => {}
        }
    }

    /// Whether the leader must wait before sending another append.
    pub(crate) fn is_paused(&self, config: &crate::Config) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => {
                self.inflights.len() >= config.inflight_messages_max
                    || self.inflights.bytes >= config.inflight_bytes_max
            }
            ProgressState::Snapshot => true,
        }
    }

    /// Records an append sent with entries up to `last_index`.
    pub(crate) fn sent_append(&mut self, last_index: Option<LogIndex>, bytes: u64) {
        match self.state {
            ProgressState::Replicate => {
                if let Some(last) = last_index {
                    self.next = last + 1;
                    self.inflights.add(last, bytes);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => unreachable!("appends are not sent during a snapshot"),
        }
    }

    /// Handles a rejection of the append whose previous index was
    /// `rejected`; `next` is where the follower's hint says to retry.
    /// Returns false when the rejection is stale.
    pub(crate) fn rejected(&mut self, rejected: LogIndex, next: LogIndex) -> bool {
        match self.state {
            ProgressState::Replicate => {
                if rejected <= self.matched {
                    return false;
                }
                self.become_probe();
                self.next = next.clamp(self.matched + 1, rejected.max(self.matched + 1));
                true
            }
            ProgressState::Probe => {
                if self.next != rejected + 1 {
                    return false;
                }
                self.next = next.clamp(self.matched + 1, rejected.max(self.matched + 1));
                self.probe_sent = false;
                true
            }
            ProgressState::Snapshot => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    #[test]
    fn replicate_window_bounds_messages_and_bytes() {
        let config = Config {
            inflight_messages_max: 2,
            inflight_bytes_max: 100,
            ..Config::new(1)
        };
        let mut progress = Progress::new(1, false);
        progress.become_replicate();
        progress.sent_append(Some(1), 10);
        assert!(!progress.is_paused(&config));
        progress.sent_append(Some(2), 10);
        assert!(progress.is_paused(&config), "two messages in flight");
        progress.update(1);
        assert!(!progress.is_paused(&config));
        progress.sent_append(Some(3), 200);
        assert!(progress.is_paused(&config), "bytes bound");
        progress.update(3);
        assert_eq!((progress.matched, progress.next), (3, 4));
        assert!(!progress.is_paused(&config));
    }

    #[test]
    fn probe_sends_one_at_a_time_and_ignores_stale_rejections() {
        let config = Config::new(1);
        let mut progress = Progress::new(10, false);
        progress.sent_append(None, 0);
        assert!(progress.is_paused(&config));
        assert!(!progress.rejected(5, 3), "stale: the probe was for 9");
        assert!(progress.rejected(9, 4));
        assert_eq!(progress.next, 4);
        assert!(!progress.is_paused(&config));
    }

    #[test]
    fn replicate_rejection_falls_back_to_probe_above_match() {
        let mut progress = Progress::new(1, false);
        progress.update(5);
        progress.become_replicate();
        progress.sent_append(Some(9), 1);
        assert!(!progress.rejected(4, 1), "below match: stale");
        assert!(progress.rejected(7, 2));
        assert_eq!(progress.state, ProgressState::Probe);
        assert_eq!(progress.next, 6, "never below match + 1");
    }
}
