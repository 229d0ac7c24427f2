//! The storage contract of the consensus core: what it reads from a log
//! store ([`Storage`]) and what the runtime writes to it ([`LogStore`]).
//!
//! # The log's shape
//!
//! A store holds the latest snapshot (at first the empty one at index 0),
//! a compaction point at or before it (the last discarded entry), and the
//! entries after the compaction point, contiguous: `first_index() ==
//! compaction index + 1` and `last_index() == compaction index + number of
//! entries`. The compaction point's index and term stay answerable by
//! [`Storage::term`], because appending right after it needs that term for
//! the log matching check. Entries are never discarded past the snapshot,
//! so whatever a lagging follower needs is either in the log or in the
//! snapshot.

use std::fmt;

use bytes::Bytes;
use dr_codec::message::{ConfState, Entry, LogIndex, NodeId, SnapshotMeta, Term};

/// The state that must be durable before a node answers a vote or an
/// append: Raft's persistent state (Figure 2 of the paper) plus the commit
/// index, so a restarted node does not re-apply what it knew committed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// Whom this node voted for in `term`, if anyone.
    pub vote: Option<NodeId>,
    /// The highest index known committed.
    pub commit: LogIndex,
}

/// A piece of a snapshot's data, as [`Storage::snapshot_chunk`] reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// The bytes.
    pub data: Bytes,
    /// Whether they reach the end of the snapshot's data.
    pub done: bool,
}

/// A point-in-time image of the state machine, and what it covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The index, term and configuration the image includes.
    pub meta: SnapshotMeta,
    /// The image itself, opaque to the consensus core.
    pub data: Bytes,
}

impl Snapshot {
    /// The snapshot a new cluster's initial members start from: index 1,
    /// term 1, the initial configuration, empty state-machine data.
    /// Keeping the initial configuration in a snapshot (rather than only in
    /// each store's configuration) means a node that joins later with an
    /// empty store learns it the same way: the leader sends it the
    /// snapshot, because it cannot send entries from before index 2.
    pub fn bootstrap(conf_state: ConfState) -> Self {
        Self {
            meta: SnapshotMeta {
                index: 1,
                term: 1,
                conf_state,
            },
            data: Bytes::new(),
        }
    }
}

/// What a store holds when a node starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitialState {
    /// The last persisted hard state.
    pub hard_state: HardState,
    /// The last persisted configuration.
    pub conf_state: ConfState,
}

/// Why a store could not do what was asked. `Compacted`, `Unavailable`
/// and `SnapshotTemporarilyUnavailable` are expected in normal operation
/// and handled by the consensus core; `Invalid` means the caller broke the
/// contract; `Io` that the medium failed to read (a failed write is fatal
/// and panics in the store, never returned).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageError {
    /// The index was compacted into the snapshot.
    Compacted {
        /// The index asked for.
        index: LogIndex,
        /// The store's first index.
        first_index: LogIndex,
    },
    /// The index is past the end of the log.
    Unavailable {
        /// The index asked for.
        index: LogIndex,
        /// The store's last index.
        last_index: LogIndex,
    },
    /// A snapshot is being built; ask again later.
    SnapshotTemporarilyUnavailable,
    /// A snapshot older than the store's own was offered.
    SnapshotOutOfDate {
        /// The offered snapshot's index.
        offered: LogIndex,
        /// The store's snapshot index.
        current: LogIndex,
    },
    /// The request broke the storage contract (say, an append that leaves
    /// a gap).
    Invalid(String),
    /// Reading the medium failed (checksum mismatch, unreadable file).
    Io(String),
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Compacted { index, first_index } => {
                write!(
                    f,
                    "log index {index} was compacted (first index is {first_index})"
                )
            }
            Self::Unavailable { index, last_index } => {
                write!(
                    f,
                    "log index {index} is past the end of the log (last index is {last_index})"
                )
            }
            Self::SnapshotTemporarilyUnavailable => {
                f.write_str("a snapshot is being built; retry later")
            }
            Self::SnapshotOutOfDate { offered, current } => {
                write!(
                    f,
                    "snapshot at index {offered} is older than the store's snapshot at {current}"
                )
            }
            Self::Invalid(reason) => write!(f, "invalid storage request: {reason}"),
            Self::Io(reason) => write!(f, "storage read failed: {reason}"),
        }
    }
}

impl std::error::Error for StorageError {}

/// What the consensus core reads from a log store.
pub trait Storage {
    /// The hard state and configuration to start from.
    fn initial_state(&self) -> Result<InitialState, StorageError>;

    /// Entries with indexes in `low..high`, in order. Stops early once the
    /// payloads add up to more than `max_bytes`, but always returns at
    /// least one entry when the range is not empty, so replication always
    /// progresses.
    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError>;

    /// The term of the entry at `index`, for `index` in
    /// `first_index() - 1 ..= last_index()` (the lower end being the
    /// compaction point's).
    fn term(&self, index: LogIndex) -> Result<Term, StorageError>;

    /// The index of the first entry still held (the compaction index + 1).
    fn first_index(&self) -> LogIndex;

    /// The index of the last entry (the compaction index when no entries
    /// follow it).
    fn last_index(&self) -> LogIndex;

    /// The latest snapshot's index, term and configuration (index 0 for
    /// the empty snapshot of a new store).
    fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError>;

    /// Up to `max_bytes` of the data of the snapshot `meta` describes,
    /// from byte `offset` on, and whether that reaches the end. Snapshots
    /// are read in chunks so that a state larger than memory can be sent;
    /// reading the same offset twice gives the same bytes. A snapshot that
    /// is no longer the latest gives `SnapshotOutOfDate` (the leader then
    /// starts over with the new one).
    fn snapshot_chunk(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        max_bytes: u64,
    ) -> Result<SnapshotChunk, StorageError>;
}

/// What the runtime writes to a log store, following the consensus core's
/// instructions. Each call is durable when it returns.
pub trait LogStore: Storage {
    /// Appends `entries` (contiguous, ascending), first discarding every
    /// entry at or after `entries[0].index`: the consensus core has
    /// already decided they conflict. Entries at or below the snapshot
    /// index are skipped. An append that would leave a gap after
    /// `last_index()` is refused.
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError>;

    /// Replaces the hard state.
    fn set_hard_state(&mut self, hard_state: HardState) -> Result<(), StorageError>;

    /// Replaces the configuration.
    fn set_conf_state(&mut self, conf_state: ConfState) -> Result<(), StorageError>;

    /// Records a snapshot of the state machine at `index` (which must be in
    /// the log and newer than the current snapshot), taken with
    /// configuration `conf_state`. Entries are kept: [`Self::compact`]
    /// discards them separately.
    fn create_snapshot(
        &mut self,
        index: LogIndex,
        conf_state: ConfState,
        data: Bytes,
    ) -> Result<(), StorageError>;

    /// Writes a chunk of a snapshot being received into a staging area
    /// that does not touch the current state. Chunks come in order; a chunk
    /// at offset 0 discards whatever was staged before (a transfer that
    /// started over).
    fn stage_snapshot_chunk(
        &mut self,
        meta: &SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), StorageError>;

    /// Replaces the whole log with the fully staged snapshot `meta`, which
    /// must be newer than the store's own, atomically: a crash leaves
    /// either the old state or the new. The snapshot's index becomes the
    /// compaction point and its configuration the store's.
    fn apply_snapshot(&mut self, meta: &SnapshotMeta) -> Result<(), StorageError>;

    /// Persists what a ready says to persist, in the contract's order:
    /// stage its snapshot chunks, apply its snapshot, append its entries,
    /// write its hard state. A store that can write these atomically (one
    /// batch, one sync) should override this.
    fn persist_ready(&mut self, ready: &crate::Ready) -> Result<(), StorageError> {
        for chunk in &ready.snapshot_chunks {
            self.stage_snapshot_chunk(&chunk.meta, chunk.offset, &chunk.data)?;
        }
        if let Some(snapshot) = &ready.snapshot {
            self.apply_snapshot(snapshot)?;
        }
        self.append(&ready.entries)?;
        if let Some(hard_state) = ready.hard_state {
            self.set_hard_state(hard_state)?;
        }
        Ok(())
    }

    /// Writes what a ready without snapshot data says to persist (its
    /// entries and hard state) so that reads see it at once, but durable
    /// only once a later [`Self::sync`] or synced write returns: for
    /// [`Config::async_persist`](crate::Config::async_persist), whose
    /// runtime settles the ready with
    /// [`RaftNode::advance_persisting`](crate::RaftNode::advance_persisting)
    /// and calls `on_persisted` after the sync. A crash before it loses
    /// such writes from the end of the log only (never one before a write
    /// that survived). The default writes durably, as
    /// [`Self::persist_ready`]: a store that cannot defer the sync.
    fn write_ready_unsynced(&mut self, ready: &crate::Ready) -> Result<(), StorageError> {
        self.persist_ready(ready)
    }

    /// Makes every earlier write durable. The default has nothing to do:
    /// every write of a store without deferred syncs is durable.
    fn sync(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Stages a whole snapshot held in memory and applies it (a new
    /// cluster's [`Snapshot::bootstrap`], tests).
    fn restore_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.stage_snapshot_chunk(&snapshot.meta, 0, &snapshot.data)?;
        self.apply_snapshot(&snapshot.meta)
    }

    /// Discards entries up to and including `index`, which must be in the
    /// log and covered by the snapshot; its index and term stay
    /// answerable. A store may discard fewer (down to none) when it still
    /// needs them to recover after a crash; never more.
    fn compact(&mut self, index: LogIndex) -> Result<(), StorageError>;
}
