//! The engine's snapshots: taken every `snapshot_every` entries on a
//! thread of their own (from a view pinned at the applied index), or now
//! on the admin's request; the log compacted behind them; and what an
//! installed snapshot from the leader changes here.

use std::time::{Duration, Instant};

use bytes::Bytes;
use dr_codec::message::{LogIndex, SnapshotMeta};
use dr_raft::{LogStore, Storage};

use super::{Engine, NodeError};
use crate::metrics::bump;

impl Engine {
    pub(super) fn after_snapshot_install(&mut self, snapshot: &SnapshotMeta) {
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

    /// Snapshots the state machine on this thread (the admin's request:
    /// answered once it is done). Cancels a copy in progress.
    pub(super) fn snapshot_now(&mut self) -> Result<LogIndex, String> {
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
    pub(super) fn snapshot_taken(
        &mut self,
        index: LogIndex,
        started: Instant,
    ) -> Result<(), String> {
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
    pub(super) fn maybe_snapshot(&mut self) {
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
    pub(super) fn snapshot_offset(&self) -> u64 {
        let spread = self.config.snapshot_every / 10;
        if spread == 0 {
            return 0;
        }
        let mixed = (self.raft.id() ^ self.snapshot_index.rotate_left(17))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (mixed >> 32) % spread
    }
}
