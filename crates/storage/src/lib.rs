//! # dr-storage: a node's durable state in RocksDB
//!
//! The one crate that links RocksDB. [`RocksStorage`] keeps everything a
//! node must not lose in one RocksDB instance with four column families
//! (`raft_log`, `raft_state`, `data`, `meta`; their settings and why are
//! in `options.rs` and `docs/design/storage.md`):
//!
//! - it implements dr-raft's [`dr_raft::Storage`] and
//!   [`dr_raft::LogStore`], and passes the same conformance suite as the
//!   in-memory store;
//! - its Raft log (entries and hard state) lives, by default, in dr's own
//!   segmented files beside RocksDB ([`LogKind::Segments`]: one write and
//!   one `fdatasync` per ready over blocks written before, checksummed
//!   batches, whole segments dropped on compaction), or in the `raft_log`
//!   family ([`LogKind::RocksDb`]); a store keeps the kind it was made
//!   with, and both pass the same conformance suite and crash tests;
//! - its [`dr_raft::LogStore::persist_ready`] makes a ready (snapshot
//!   chunks, the snapshot switch, entries, hard state) durable in **one
//!   synced write** (RocksDB's part first when a ready has both), so the
//!   ready's messages may be sent when it returns;
//! - [`RocksStorage::apply`] writes committed entries' effects on the
//!   key-value state machine together with the applied index (and the
//!   configuration) in one atomic batch, so a crash never applies an
//!   entry twice or skips one (with the segmented log it skips RocksDB's
//!   WAL: a crash loses applies only with their applied index, and the
//!   entries are applied again from the log);
//! - with the segmented log, applies are **kept behind** in memory (up to
//!   [`StoreOptions::write_behind_bytes`]), where reads and scans see them
//!   at once, and a checkpoint writes them to RocksDB in one sorted batch
//!   with the applied index, on a thread of its own when they pass the
//!   bound (background snapshots pin the state at the last checkpoint),
//!   and on the owner's thread before a write that goes through (a range
//!   delete, a configuration change), a synchronous snapshot, a backup
//!   and a close; a crash loses them with their applied index, and the
//!   log applies them again;
//! - snapshots are stored and read in bounded records, staged in a second
//!   slot while received, and switched to atomically: an interrupted
//!   install leaves the old state whole;
//! - a store created as [`StateMachine::DataFamily`] is itself the
//!   key-value state machine: its snapshot is the `data` family itself at
//!   the applied index, pinned with a RocksDB snapshot and streamed on
//!   demand (nothing copied, never the whole state in memory; a reopened
//!   store pins the state it finds), the log is never compacted past the
//!   state RocksDB holds on disk, and installing a received snapshot
//!   replaces the family, finishing on the next open if a crash cut it
//!   short; [`RocksStorage::begin_snapshot`] pins and measures it on a
//!   thread of its own while the owner goes on applying, and
//!   [`StoreReader`] serves point reads of it to other threads;
//! - point reads are answered from a mirror of recently written records
//!   when it holds the key ([`StoreOptions::read_mirror_bytes`]): filled
//!   only by applies (kept behind, or after RocksDB took them), cleared
//!   by range deletes and snapshot installs, so it never answers a value
//!   the state no longer holds;
//! - [`RocksStorage::backup`] and [`RocksStorage::restore`] take
//!   incremental backups with RocksDB's backup engine and restore them
//!   into empty directories.
//!
//! ## Invariants
//!
//! - Every log entry is a dr-codec frame with its CRC32C; every other
//!   record carries its own CRC32C. Nothing read back is used unchecked.
//! - On open the format version is checked and every log entry is read
//!   and verified (checksum, position, term order) while the in-memory
//!   indexes are rebuilt; damage is reported with the index and what is
//!   wrong, never repaired by guessing. (A record torn by a crash at the
//!   very end of RocksDB's WAL or of the newest log segment is dropped: it
//!   can only be a write that never returned, since every acknowledged
//!   write is synced; a damaged batch with valid ones after it is refused.)
//! - A failed write or fsync panics: the process cannot know what reached
//!   the disk, and retrying is how data gets silently lost.
//!
//! ## What it does not do
//!
//! It does not decide anything: what to append, apply, snapshot or compact
//! is the consensus core's and the node's call. It does not interpret
//! values (no TTLs, no types: those belong to the node). It does not
//! retry a failed write: a failed synced write ends the process. The
//! test-only `failpoints` feature injects such failures (and torn and
//! slow writes) for the robustness suite; without it there is no hook.
//!
//! ## Example
//!
//! ```
//! use dr_raft::{LogStore, Storage};
//! use dr_storage::{DataWrite, RocksStorage, StateMachine};
//!
//! let dir = std::env::temp_dir().join(format!("dr-storage-doc-{}", std::process::id()));
//! let mut store = RocksStorage::open(&dir, StateMachine::DataFamily).expect("a new store");
//! store.append(&dr_raft::conformance::entries(1, 3, 1)).unwrap();
//! store.apply(&[DataWrite::Put(b"k", b"v")], 3, None).unwrap();
//! drop(store);
//! let store = RocksStorage::open(&dir, StateMachine::DataFamily).expect("reopens");
//! assert_eq!((store.last_index(), store.applied_index()), (3, 3));
//! assert_eq!(store.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
//! drop(store);
//! std::fs::remove_dir_all(&dir).unwrap();
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod backup;
#[cfg(feature = "failpoints")]
pub mod failpoints;
mod kv_stream;
pub mod options;
mod records;
mod segments;
pub mod short_key;
mod snapshot_view;
mod store;

pub use backup::{BackupError, BackupInfo, list_backups};
pub use kv_stream::{KEY_BYTES_MAX, KeyValue, VALUE_BYTES_MAX};
pub use segments::{SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MIN};
pub use store::{
    DataWrite, FORMAT_VERSION, LogKind, OpenError, READ_MIRROR_BYTES_DEFAULT, ReadRefused,
    RocksStorage, SNAPSHOT_RECORD_BYTES, StateMachine, StoreOptions, StoreReader,
    WRITE_BEHIND_BYTES_DEFAULT,
};
