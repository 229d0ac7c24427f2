//! Snapshots: taken every `snapshot_every` entries (in the background
//! when the state machine can), or now on request; the log compacted
//! behind them; and what an installed snapshot from the leader changes.

use std::time::Duration;

use dr_codec::message::{LogIndex, SnapshotMeta};
use dr_raft::{LogStore, Storage, StorageError};

use crate::metrics::bump;
use crate::{Engine, EngineError, Responder, SnapshotStarted, StateMachine, Uncertain};

/// How soon a snapshot the store was not ready for is asked for again.
const SNAPSHOT_NOT_READY_RETRY: Duration = Duration::from_millis(100);
/// How soon a compaction the store kept short of its index is asked for
/// again (a store whose state machine skips its WAL compacts only as far
/// as the state on disk, which a flush moves on).
const COMPACTION_RETRY: Duration = Duration::from_secs(1);

impl<M: StateMachine, A: Responder<M>> Engine<M, A> {
    pub(crate) fn after_snapshot_install(&mut self, snapshot: &SnapshotMeta) {
        bump(&self.metrics.snapshots_installed);
        self.snapshot_index = snapshot.index;
        self.log_bytes_at_snapshot = self.log_bytes_applied;
        // Proposals the snapshot covers: whether they are in it is unknown.
        let covered: Vec<LogIndex> = self
            .writes
            .range(..=snapshot.index)
            .map(|(&i, _)| i)
            .collect();
        for index in covered {
            if let Some(pending) = self.writes.remove(&index) {
                let error = EngineError::Uncertain(Uncertain::SnapshotReplacedLog);
                self.answer(pending.waiter, Err(error));
            }
        }
        self.machine
            .restored(self.raft.storage_mut(), snapshot)
            .unwrap_or_else(|error| panic!("cannot load an installed snapshot: {error}"));
        self.transport.sync_members(&snapshot.conf_state);
        tracing::info!(
            index = snapshot.index,
            "installed a snapshot from the leader"
        );
    }

    /// Snapshots the state machine now (a request: answered once it is
    /// done). Cancels a background copy in progress.
    pub(crate) fn snapshot_now(&mut self) -> Result<LogIndex, String> {
        let applied = self.applied_index();
        if applied <= self.snapshot_index {
            return Ok(self.snapshot_index);
        }
        let conf = self.raft.conf_state().clone();
        let started = (self.clock.now(), self.log_bytes_applied);
        self.snapshot_started = None;
        self.sync_deferred();
        let index = match self
            .machine
            .snapshot(self.raft.storage_mut(), conf, false)
            .map_err(|e| e.to_string())?
        {
            SnapshotStarted::Taken(index) | SnapshotStarted::Copying(index) => index,
        };
        self.snapshot_taken(index, started)?;
        Ok(index)
    }

    /// Records a new snapshot and compacts the log behind it, keeping
    /// `log_kept` entries for followers a little behind.
    /// `started`: when the copy began, and the log bytes applied then.
    fn snapshot_taken(&mut self, index: LogIndex, started: (Duration, u64)) -> Result<(), String> {
        let (started, log_bytes_covered) = started;
        self.snapshot_index = index;
        self.log_bytes_at_snapshot = log_bytes_covered;
        bump(&self.metrics.snapshots_created);
        let compact_to = index.saturating_sub(self.config.log_kept);
        self.compact_to(compact_to)?;
        let millis = self.clock.now().saturating_sub(started).as_millis() as u64;
        tracing::info!(index, millis, "snapshot taken");
        Ok(())
    }

    /// Compacts the log up to `index` (when it holds it); what the store
    /// keeps short of it is asked for again later ([`COMPACTION_RETRY`]).
    fn compact_to(&mut self, index: LogIndex) -> Result<(), String> {
        self.compaction_pending = None;
        let store = self.raft.storage_mut();
        if index < store.first_index() {
            return Ok(());
        }
        store.compact(index).map_err(|e| e.to_string())?;
        if store.first_index() <= index {
            self.compaction_pending = Some((index, self.clock.now() + COMPACTION_RETRY));
        }
        Ok(())
    }

    /// Finishes a snapshot copied in the background, or starts one when
    /// it is due ([`Self::snapshot_due`]); asks again for a compaction the
    /// store kept short.
    pub(crate) fn maybe_snapshot(&mut self) {
        let now = self.clock.now();
        if let Some((index, at)) = self.compaction_pending
            && now >= at
            && let Err(error) = self.compact_to(index)
        {
            tracing::warn!(%error, "log not compacted");
        }
        if let Some(index) = self.machine.poll_snapshot(self.raft.storage_mut()) {
            let started = self
                .snapshot_started
                .take()
                .unwrap_or((now, self.log_bytes_applied));
            if let Err(error) = self.snapshot_taken(index, started) {
                tracing::warn!(%error, "log not compacted after a snapshot");
            }
        }
        if self.machine.snapshot_copying(self.raft.storage()) {
            return;
        }
        if !self.snapshot_due() || self.snapshot_retry_at.is_some_and(|at| now < at) {
            return;
        }
        let conf = self.raft.conf_state().clone();
        let started = (now, self.log_bytes_applied);
        // A snapshot (and the compaction behind it) never passes the
        // durable log: unsynced writes are synced first.
        self.sync_deferred();
        match self.machine.snapshot(self.raft.storage_mut(), conf, true) {
            Ok(SnapshotStarted::Copying(_)) => {
                self.snapshot_started = Some(started);
                self.snapshot_retry_at = None;
            }
            Ok(SnapshotStarted::Taken(index)) => {
                self.snapshot_retry_at = None;
                if let Err(error) = self.snapshot_taken(index, started) {
                    tracing::warn!(%error, "log not compacted after a snapshot");
                }
            }
            Err(StorageError::SnapshotTemporarilyUnavailable) => {
                // The store is getting ready (say, writing out what it
                // keeps in memory first): ask again shortly.
                tracing::debug!("snapshot postponed by the store");
                self.snapshot_retry_at = Some(now + SNAPSHOT_NOT_READY_RETRY);
            }
            Err(error) => {
                // Typically a snapshot from the leader being received:
                // try again in a second rather than on every turn.
                tracing::warn!(%error, "snapshot postponed");
                self.snapshot_retry_at = Some(now + Duration::from_secs(1));
            }
        }
    }

    /// Whether a snapshot is due: `snapshot_every` entries (and a spread)
    /// applied since the last, and, with a `snapshot_log_factor`, that
    /// many times the last snapshot's bytes of log applied since it, or
    /// else `snapshot_every_max_factor` times `snapshot_every` entries. The second rule makes a large
    /// state's copies rare enough to cost a bounded share of the writes,
    /// where a fixed count of entries would copy a state of gigabytes
    /// every few seconds. After a restart the bytes count from zero (the
    /// log since the snapshot is not re-read to count them): the log may
    /// then grow up to twice as far, never past the entries' cap.
    pub(crate) fn snapshot_due(&self) -> bool {
        let since = |entries: u64| {
            self.snapshot_index
                .saturating_add(entries)
                .saturating_add(self.snapshot_offset())
        };
        let applied = self.applied_index();
        if applied < since(self.config.snapshot_every) {
            return false;
        }
        let factor = self.config.snapshot_log_factor;
        let entries_max = self
            .config
            .snapshot_every
            .saturating_mul(self.config.snapshot_every_max_factor);
        if factor == 0 || applied >= since(entries_max) {
            return true;
        }
        let state_bytes = self.machine.snapshot_bytes(self.raft.storage());
        let grown = self
            .log_bytes_applied
            .checked_sub(self.log_bytes_at_snapshot)
            .expect("the bytes applied only grow");
        grown >= state_bytes.saturating_mul(factor)
    }

    /// Up to a tenth of `snapshot_every` more, different on every node
    /// and for every snapshot: nodes apply the same indexes, and without
    /// it they would all pause to snapshot at the same moment.
    fn snapshot_offset(&self) -> u64 {
        let spread = self.config.snapshot_every / 10;
        if spread == 0 {
            return 0;
        }
        let mixed = (self.raft.id() ^ self.snapshot_index.rotate_left(17))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (mixed >> 32) % spread
    }
}
