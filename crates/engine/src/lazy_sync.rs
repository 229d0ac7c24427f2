//! A leader that syncs its own log lazily
//! ([`EngineConfig::leader_sync_delay_max`](crate::EngineConfig::leader_sync_delay_max)).
//!
//! A leader's own copy of an entry is one of three: its followers' two
//! durable copies are a quorum without it. So a leader may write its
//! readies without a sync (`LogStore::write_ready_unsynced`), settle them
//! with dr-raft's `advance_persisting`, and apply and answer what its
//! followers' acknowledgements commit (`Config::apply_unpersisted`). It
//! syncs — one `fdatasync` for every write since the last — when the
//! oldest unsynced write is `leader_sync_delay_max` old, before anything
//! that must be durable (a ready changing the term or vote, snapshot data,
//! a role change), before taking a snapshot, and when the engine stops.
//! Only then does dr-raft count those entries as the leader's own, and
//! only then do the ready's messages that promise durable state leave.
//! A leader whose followers heard from lately do not make a quorum
//! without it (a single node; a follower of three silent for an election
//! timeout) syncs every write as before; until it notices a follower
//! gone, a commit may wait up to the delay.
//!
//! Safety rests on three rules, each enforced here or below: the leader
//! never counts an unsynced entry towards a quorum (dr-raft's
//! `async_persist`); anything that changes term or vote, or carries
//! snapshot data, is written synced, which makes every earlier write
//! durable with it; a crash loses unsynced writes only from the log's end
//! (the segmented log's recovery), and a state machine a crash leaves
//! ahead of its log is kept as a snapshot (dr-storage's open).

use std::time::Duration;

use dr_codec::message::Message;
use dr_raft::{HardState, LogStore, Ready, Role};

use crate::{Engine, Responder, StateMachine, metrics};

/// Held messages past which the unsynced writes are synced at once (a
/// leader holds few: refusals of votes, mostly).
const HELD_MESSAGES_MAX: usize = 1024;

/// Readies written without a sync and what waits for their sync.
#[derive(Debug, Default)]
pub(crate) struct UnsyncedWrites {
    /// The newest ready settled before its write was durable, and when
    /// the oldest such write was made (engine clock).
    pending: Option<(u64, Duration)>,
    /// Messages of those readies that promise durable state.
    held: Vec<Message>,
    /// The term and vote last written: a ready that changes them is never
    /// written lazily.
    written: HardState,
}

impl UnsyncedWrites {
    pub(crate) fn new(hard_state: HardState) -> Self {
        Self {
            pending: None,
            held: Vec::new(),
            written: hard_state,
        }
    }
}

impl<M: StateMachine, A: Responder<M>> Engine<M, A> {
    /// Whether `ready` is settled before its write is durable: on a
    /// leader that syncs lazily and whose followers heard from lately make
    /// a quorum without it (a single node, or one whose followers are
    /// down, needs its own copy for every commit), a ready with no
    /// snapshot data and no new term or vote (and something to write, or
    /// earlier writes still unsynced).
    pub(crate) fn defers_sync(&self, ready: &Ready) -> bool {
        let lazy = !self.config.leader_sync_delay_max.is_zero()
            && self.raft.role() == Role::Leader
            && self.raft.others_make_quorum()
            && !ready.has_snapshot_data()
            && !ready.changes_term_or_vote(&self.unsynced.written);
        let writes = !ready.entries.is_empty() || ready.hard_state.is_some();
        lazy && (writes || self.unsynced.pending.is_some())
    }

    /// Writes `ready` without a sync and settles it; its messages that
    /// promise durable state wait for the sync.
    pub(crate) fn write_deferred(&mut self, ready: &mut Ready) {
        if !ready.entries.is_empty() || ready.hard_state.is_some() {
            if let Err(error) = self.raft.storage_mut().write_ready_unsynced(ready) {
                panic!("cannot write a ready: {error}");
            }
            if let Some(hard_state) = ready.hard_state {
                self.unsynced.written = hard_state;
            }
        }
        let since = self
            .unsynced
            .pending
            .map_or_else(|| self.clock.now(), |(_, since)| since);
        self.unsynced.pending = Some((ready.number, since));
        self.unsynced.held.append(&mut ready.messages);
    }

    /// After a ready persisted the usual way: the term and vote it
    /// wrote, and every earlier unsynced write made durable with it (a
    /// sync, which costs nothing when the ready's write synced the log:
    /// that covered the writes before it). The caller settles the ready
    /// with `advance`, which counts them as persisted.
    pub(crate) fn after_persist(&mut self, ready: &Ready) {
        if let Some(hard_state) = ready.hard_state {
            self.unsynced.written = hard_state;
        }
        self.end_unsynced();
    }

    /// Syncs every write made without one, counts them as this node's
    /// (towards a quorum too) and sends the messages that waited. Call it
    /// between readies, then `drive`.
    pub(crate) fn sync_deferred(&mut self) {
        if let Some(number) = self.end_unsynced() {
            self.raft.on_persisted(number);
        }
    }

    /// Syncs the unsynced writes, if any, and sends the messages that
    /// waited for them; returns the newest ready they belong to.
    fn end_unsynced(&mut self) -> Option<u64> {
        let (number, _) = self.unsynced.pending.take()?;
        self.sync_store();
        for message in std::mem::take(&mut self.unsynced.held) {
            self.transport.send(message);
        }
        Some(number)
    }

    /// Whether the unsynced writes are due for their sync at `now`: the
    /// oldest is `leader_sync_delay_max` old, or too many messages wait.
    pub(crate) fn sync_due(&self, now: Duration) -> bool {
        self.sync_deadline().is_some_and(|due| now >= due)
    }

    /// How long from now until the unsynced writes are due for their sync
    /// (zero: due now), if any wait: the host wakes the engine then with
    /// [`Event::Wake`](crate::Event::Wake).
    pub fn wake_in(&self) -> Option<Duration> {
        let due = self.sync_deadline()?;
        Some(due.saturating_sub(self.clock.now()))
    }

    /// When (engine clock) the unsynced writes, if any, are due for their
    /// sync: `leader_sync_delay_max` after the oldest, or at once when too
    /// many messages wait.
    fn sync_deadline(&self) -> Option<Duration> {
        let (_, since) = self.unsynced.pending?;
        if self.unsynced.held.len() >= HELD_MESSAGES_MAX {
            return Some(Duration::ZERO);
        }
        Some(since + self.config.leader_sync_delay_max)
    }

    fn sync_store(&mut self) {
        let started = std::time::Instant::now();
        if let Err(error) = self.raft.storage_mut().sync() {
            panic!("cannot sync the log: {error}");
        }
        self.metrics
            .fsync_seconds
            .observe_duration(started.elapsed());
        metrics::bump(&self.metrics.leader_lazy_syncs);
    }
}
