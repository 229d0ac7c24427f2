//! # dr-raft: the consensus core (in construction)
//!
//! This crate will hold dr's Raft: a pure, deterministic state machine
//! (messages and ticks in, a batch of work out) with pre-vote,
//! check-quorum, pipelined replication, snapshots, joint consensus,
//! learners, leader transfer and ReadIndex reads. What it holds today are
//! the parts the rest is built on, the **storage contract** and the
//! **quorum rules**:
//!
//! - [`Storage`]: what the core reads from a log store (entries in a
//!   range, the term of an index, first and last index, hard state,
//!   configuration, snapshot) and [`LogStore`]: what the runtime writes
//!   (append, hard state, configuration, snapshots, compaction);
//! - [`MemStorage`]: a complete in-memory log store;
//! - [`conformance`]: the suite every store must pass; the RocksDB store
//!   of `dr-storage` will run the same one;
//! - [`quorum`]: vote tallying and the committed index for a majority and
//!   for the joint configuration of a membership change.
//!
//! The message and entry types come from `dr-codec`, which owns their
//! bytes; this crate uses them as plain Rust values.
//!
//! ## Invariants
//!
//! - A store's entries are contiguous after its compaction point, and the
//!   compaction point never passes the snapshot: every index is either in
//!   the log or covered by the snapshot. `MemStorage` asserts this after
//!   every write.
//! - Storage errors that the core must handle (compacted, unavailable,
//!   snapshot in progress, out-of-date snapshot) are typed; contract
//!   breaches are `Invalid`; a failed durable write panics in the store.
//!
//! ## What this crate does not do (yet, or ever)
//!
//! No IO, no clock, no threads, no randomness of its own: those belong to
//! the runtime in `dr-node`. The protocol itself is the next step of this
//! crate and not here yet.
//!
//! ## Example
//!
//! ```
//! use dr_raft::{LogStore, MemStorage, Storage};
//!
//! let mut store = MemStorage::new();
//! store.append(&dr_raft::conformance::entries(1, 3, 1))?;
//! assert_eq!((store.first_index(), store.last_index()), (1, 3));
//! assert_eq!(store.term(2)?, 1);
//! # Ok::<(), dr_raft::StorageError>(())
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod conformance;
mod memory;
pub mod quorum;
mod storage;

pub use memory::MemStorage;
pub use storage::{HardState, InitialState, LogStore, Snapshot, Storage, StorageError};
