//! What a replicated service brings: its state machine, and how its
//! commands and outcomes cross between nodes.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use dr_codec::message::{ConfState, Entry, LogIndex, SnapshotMeta, Term};
use dr_raft::{LogStore, StorageError};

/// One applied entry's result.
#[derive(Debug)]
pub struct Applied<O> {
    /// The entry's index.
    pub index: LogIndex,
    /// The entry's term (a proposal of another term lost its place).
    pub term: Term,
    /// What applying it gave.
    pub output: O,
    /// It changed where members are reached: the engine tells the
    /// transport to look again.
    pub members_changed: bool,
}

/// A payload from a peer that does not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

/// How a snapshot the engine asked for goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotStarted {
    /// Taken and recorded in the store at this index.
    Taken(LogIndex),
    /// Being copied in the background; [`StateMachine::poll_snapshot`]
    /// says when it is recorded.
    Copying(LogIndex),
}

/// A deterministic state machine the engine replicates.
///
/// Every node applies the same entries in the same order and must compute
/// the same state and the same outputs: `apply` may not look at clocks,
/// randomness or anything outside `store` and `self`. The node whose
/// client proposed an entry answers that client with the output it
/// computed itself; a follower that forwarded the command gets the
/// leader's output, encoded with [`encode_output`](Self::encode_output).
///
/// The state may live inside the log store (drkv keeps it in RocksDB's
/// `data` family beside the log, written atomically with the applied
/// index) or beside it; either way the machine says which index it has
/// applied, makes snapshots, and rebuilds after one was installed.
pub trait StateMachine {
    /// The log store it runs over.
    type Store: LogStore;
    /// What a client proposes: the change, and anything the proposing
    /// node needs to shape its answer.
    type Command: Send;
    /// What the proposing node keeps about a command while it waits (say,
    /// whether the client wants the old value back).
    type Context: Send + Clone;
    /// What applying a command gives its client.
    type Output: Send + fmt::Debug;
    /// A read.
    type Query: Send;
    /// What a read gives.
    type ReadOutput: Send + fmt::Debug;

    /// The waiting context of `command`.
    fn context(command: &Self::Command) -> Self::Context;
    /// The log entry payload of `command` (only what every node applies),
    /// as the leader proposes it at `now` on its clock (a machine whose
    /// commands depend on time stamps them: `apply` may not read a clock).
    fn entry_payload(&self, command: &Self::Command, now: Duration) -> Bytes;
    /// `command` as a follower forwards it to the leader.
    fn encode_command(command: &Self::Command) -> Bytes;
    /// A forwarded command, every byte checked.
    fn decode_command(payload: &Bytes) -> Result<Self::Command, DecodeError>;
    /// An output as the leader answers a forwarded command.
    fn encode_output(output: &Self::Output) -> Bytes;
    /// A leader's output, every byte checked.
    fn decode_output(payload: &Bytes) -> Result<Self::Output, DecodeError>;

    /// The highest index whose effects are in the state.
    fn applied_index(&self, store: &Self::Store) -> LogIndex;

    /// Applies committed `entries` (and records `conf_state`, the
    /// configuration after them, when they changed it), returning each
    /// entry's output. `entries` may be empty when only the configuration
    /// is new. `waiting(index)` is the context of the command proposed
    /// here at `index`, if a client here waits for it. An error is fatal:
    /// the state can no longer follow the log.
    fn apply(
        &mut self,
        store: &mut Self::Store,
        entries: &[Entry],
        conf_state: Option<&ConfState>,
        waiting: &dyn Fn(LogIndex) -> Option<Self::Context>,
    ) -> Result<Vec<Applied<Self::Output>>, StorageError>;

    /// Serves a read on the state as applied now; `now` is the serving
    /// node's clock (for state that depends on time, such as expiry).
    fn read(
        &mut self,
        store: &Self::Store,
        query: &Self::Query,
        now: Duration,
    ) -> Result<Self::ReadOutput, StorageError>;

    /// Work the leader proposes on its own, asked on every tick while no
    /// earlier such command is waiting to be applied (removing expired
    /// keys, say); `None`: nothing to do. It must be bounded: one command,
    /// of bounded size.
    fn housekeeping(&mut self, _store: &Self::Store, _now: Duration) -> Option<Self::Command> {
        None
    }

    /// The store installed the snapshot `meta` from the leader: whatever
    /// the machine keeps beside the store is rebuilt from it.
    fn restored(
        &mut self,
        store: &mut Self::Store,
        meta: &SnapshotMeta,
    ) -> Result<(), StorageError>;

    /// Snapshots the state at its applied index with configuration
    /// `conf_state` and records it in the store. With `background`, a
    /// machine that can copy its state on another thread may start that
    /// and return [`SnapshotStarted::Copying`].
    fn snapshot(
        &mut self,
        store: &mut Self::Store,
        conf_state: ConfState,
        background: bool,
    ) -> Result<SnapshotStarted, StorageError>;

    /// A background snapshot that is now recorded in the store: its index.
    fn poll_snapshot(&mut self, _store: &mut Self::Store) -> Option<LogIndex> {
        None
    }

    /// Whether a background snapshot is being copied.
    fn snapshot_copying(&self, _store: &Self::Store) -> bool {
        false
    }

    /// The size of the latest snapshot's data in bytes (what a snapshot
    /// copies), for the engine's `snapshot_log_factor`; 0 when unknown,
    /// which leaves only the count of entries.
    fn snapshot_bytes(&self, _store: &Self::Store) -> u64 {
        0
    }

    /// Whether persisting `ready` makes the store sync the disk (for the
    /// engine's fsync histogram only).
    fn persist_syncs(_store: &Self::Store, ready: &dr_raft::Ready) -> bool {
        !ready.entries.is_empty() || ready.snapshot.is_some() || ready.hard_state.is_some()
    }
}
