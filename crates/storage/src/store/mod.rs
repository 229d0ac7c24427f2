//! [`RocksStorage`]: a node's whole durable state in one RocksDB instance,
//! implementing dr-raft's [`Storage`] and [`LogStore`], the atomic
//! persistence of a ready, and the key-value state machine.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dr_codec::frame::{CodecConfig, decode_entry, encode_entry};
use dr_codec::message::{ConfState, Entry, LogIndex, SnapshotMeta, Term};
use dr_raft::{
    HardState, InitialState, LogStore, Ready, Snapshot, SnapshotChunk, StagedChunk, Storage,
    StorageError,
};
use rocksdb::{
    Cache, ColumnFamily, DB, DBRawIterator, FlushOptions, ReadOptions, ReadTier, WriteBatch,
    WriteOptions,
};

use crate::kv_stream::{self, KeyValue, PairReader, StreamError};
use crate::options::{self, CF_DATA, CF_META, CF_RAFT_LOG, CF_RAFT_STATE};
use crate::records::{self, RecordError};
use crate::segments::{LogBatch, SEGMENT_BYTES_DEFAULT, SegmentLog};
use crate::snapshot_view::SnapshotView;

mod log;
mod mirror;
mod recovery;
mod snapshot;
mod staged_keys;
mod write_behind;

use log::decode_stored_entry;
use mirror::{Mirror, ReadMirror};
use snapshot::SlotReader;

/// The on-disk format this code writes and reads.
pub const FORMAT_VERSION: u64 = 1;
/// Bytes of snapshot data in one stored record.
pub const SNAPSHOT_RECORD_BYTES: usize = 1 << 20;

const KEY_FORMAT_VERSION: &[u8] = b"format_version";
const KEY_APPLIED: &[u8] = b"applied";
const KEY_COMPACTION_POINT: &[u8] = b"compaction_point";
const KEY_SNAPSHOT: &[u8] = b"snapshot";
const KEY_SNAPSHOT_SLOT: &[u8] = b"snapshot_slot";
/// Present when the current snapshot is the state machine itself, pinned
/// (`snapshot_view`), not a slot's copy: its index.
const KEY_SNAPSHOT_VIEW: &[u8] = b"snapshot_view";
const KEY_STAGED: &[u8] = b"staged";
const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_CONF_STATE: &[u8] = b"conf_state";
const KEY_STATE_MACHINE: &[u8] = b"state_machine";
const KEY_DATA_INSTALL: &[u8] = b"data_install";
const KEY_LOG_KIND: &[u8] = b"log_kind";
/// Compactions held at one state on disk before RocksDB is asked to flush.
const COMPACTIONS_HELD_MAX: u32 = 4;
/// How long compactions are held at one state on disk before RocksDB is
/// asked to flush.
const COMPACTION_HELD_MAX: Duration = Duration::from_secs(5);

/// Compactions held at the state RocksDB holds on disk.
#[derive(Clone, Copy, Debug)]
struct CompactionHeld {
    /// That state's applied index.
    durable: LogIndex,
    /// When the first of them was held there.
    since: Instant,
    /// How many were.
    times: u32,
}

/// The directory of the segmented log, inside the store's.
const SEGMENTS_DIR: &str = "raft-log";
const SNAPSHOT_DATA_PREFIX: &[u8] = b"snapshot_data/";
/// Bytes of state-machine data written per batch while a snapshot is
/// copied or installed: bounds memory, whatever the state's size.
const INSTALL_BATCH_BYTES: usize = 4 << 20;

/// Where the state machine whose snapshots the store keeps lives. Chosen
/// when a store is created and checked on every open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateMachine {
    /// Outside the store (the store is used for the log only): snapshot
    /// images are the bytes the runtime hands to `create_snapshot`, and
    /// installing a received snapshot only replaces the log.
    External,
    /// The store's `data` family, written by [`RocksStorage::apply`]: a
    /// snapshot is the family at the applied index, pinned (not copied)
    /// and streamed from disk, and installing one replaces the family's
    /// contents.
    DataFamily,
}

impl StateMachine {
    fn code(self) -> u64 {
        match self {
            Self::External => 0,
            Self::DataFamily => 1,
        }
    }

    fn from_code(code: u64) -> Option<Self> {
        match code {
            0 => Some(Self::External),
            1 => Some(Self::DataFamily),
            _ => None,
        }
    }
}

/// Where a store keeps its Raft log (entries and hard state). Chosen when
/// the store is created and recorded in it: a store opened later keeps
/// its own, whatever is asked (stores from before the choice existed keep
/// theirs in RocksDB).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogKind {
    /// The `raft_log` and `raft_state` column families, through RocksDB's
    /// WAL and memtables.
    RocksDb,
    /// dr's own segmented files in the store's `raft-log` directory: one
    /// write and one `fdatasync` per ready, over blocks written before.
    #[default]
    Segments,
}

impl LogKind {
    fn code(self) -> u64 {
        match self {
            Self::RocksDb => 0,
            Self::Segments => 1,
        }
    }

    fn from_code(code: u64) -> Option<Self> {
        match code {
            0 => Some(Self::RocksDb),
            1 => Some(Self::Segments),
            _ => None,
        }
    }
}

/// How to open a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Where a new store keeps its log (an existing store keeps its own).
    pub log: LogKind,
    /// The size of a segment of the segmented log.
    pub segment_bytes: u64,
    /// The most bytes of recently written state-machine records kept in
    /// memory for point reads ([`READ_MIRROR_BYTES_DEFAULT`]; 0: none,
    /// every point read searches RocksDB).
    pub read_mirror_bytes: usize,
    /// With the segmented log, the most bytes of applied writes kept in
    /// memory only (in the read mirror) before a checkpoint writes them
    /// to RocksDB in one sorted batch ([`WRITE_BEHIND_BYTES_DEFAULT`];
    /// 0: every apply writes RocksDB). The log replays what a crash
    /// loses. A store with its log in RocksDB always writes through.
    ///
    /// Checkpoints run on a thread of their own while applies go on
    /// (new writes are staged beside the ones being written); the staged
    /// writes take up to four times the bound while one is in flight.
    pub write_behind_bytes: usize,
}

/// How many bytes of applied writes a store keeps behind unless told
/// otherwise: 32 MiB saves about a sixth of a replicated write's CPU
/// (`docs/BENCHMARKS.md`, "Applies kept behind"), and a checkpoint of
/// that much (~170k records under drkv's sustained `SET EX`) is written
/// and settled on its own thread without stalling applies.
pub const WRITE_BEHIND_BYTES_DEFAULT: usize = 32 << 20;

/// How many bytes of recently written records a store mirrors for point
/// reads unless told otherwise: a state of up to about 150k records of
/// 300 bytes answers point reads without RocksDB.
pub const READ_MIRROR_BYTES_DEFAULT: usize = 64 << 20;

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            log: LogKind::default(),
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            read_mirror_bytes: READ_MIRROR_BYTES_DEFAULT,
            write_behind_bytes: WRITE_BEHIND_BYTES_DEFAULT,
        }
    }
}

/// Why a store could not be opened. Each variant says what is wrong and
/// where; none is repaired silently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// RocksDB refused to open the directory (missing permissions, a
    /// corrupted file it detected, a lock held by another process).
    RocksDb(String),
    /// The store was written by another format version.
    FormatVersion {
        /// The version on disk.
        found: u64,
        /// The version this code reads.
        expected: u64,
    },
    /// The directory holds data but no format version: not a dr store.
    NotADrStore,
    /// The store keeps its state machine another way than asked.
    StateMachine {
        /// How the store on disk keeps it.
        found: StateMachine,
        /// How the caller asked to open it.
        requested: StateMachine,
    },
    /// A record or log entry is damaged.
    Corrupt(String),
    /// The options asked for cannot be used.
    Options(String),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RocksDb(error) => write!(f, "cannot open the RocksDB store: {error}"),
            Self::FormatVersion { found, expected } => write!(
                f,
                "the store has format version {found}; this build reads version {expected}"
            ),
            Self::NotADrStore => {
                f.write_str("the directory holds a RocksDB database that is not a dr store")
            }
            Self::StateMachine { found, requested } => write!(
                f,
                "the store keeps its state machine as {found:?}, not {requested:?} as asked"
            ),
            Self::Corrupt(what) => write!(f, "the store is damaged: {what}"),
            Self::Options(what) => write!(f, "cannot open the store so: {what}"),
        }
    }
}

impl std::error::Error for OpenError {}

impl From<RecordError> for OpenError {
    fn from(error: RecordError) -> Self {
        Self::Corrupt(error.0)
    }
}

/// A change to the key-value state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataWrite<'a> {
    /// Sets `key` to `value`.
    Put(&'a [u8], &'a [u8]),
    /// Removes `key`.
    Delete(&'a [u8]),
    /// Removes every key from the first (inclusive) to the second
    /// (exclusive): one record, whatever the number of keys.
    DeleteRange(&'a [u8], &'a [u8]),
}

impl<'a> DataWrite<'a> {
    /// The key written (a range's first).
    pub fn key(&self) -> &'a [u8] {
        match self {
            Self::Put(key, _) | Self::Delete(key) | Self::DeleteRange(key, _) => key,
        }
    }
}

/// What the store knows without reading RocksDB, rebuilt on open.
#[derive(Clone, Debug)]
struct Cached {
    compacted_index: LogIndex,
    compacted_term: Term,
    last_index: LogIndex,
    /// The first index of each run of equal terms in the log.
    term_runs: BTreeMap<LogIndex, Term>,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: SnapshotMeta,
    snapshot_len: u64,
    /// Which of the two data slots holds the current snapshot (when it
    /// is not a view; the other is the staging slot either way).
    slot: u8,
    /// Whether the current snapshot is RocksDB's state machine pinned (a
    /// [`SnapshotView`]) rather than a slot's copy.
    snapshot_is_view: bool,
    /// A snapshot being staged in the other slot, and its bytes so far.
    staged: Option<(SnapshotMeta, u64)>,
    applied: LogIndex,
    /// The term of the entry at `applied`, when it was known.
    applied_term: Option<Term>,
}

/// A node's durable state in RocksDB: see the crate documentation.
pub struct RocksStorage {
    db: Arc<DB>,
    path: PathBuf,
    cached: Cached,
    codec: CodecConfig,
    state_machine: StateMachine,
    /// The current snapshot's pinned state, when it is a view.
    view: Option<SnapshotView>,
    /// A view pinned and being measured, to become the current snapshot.
    making: Option<SnapshotView>,
    /// Where compactions stopped short of what they were asked, held at
    /// the state on disk (see `compaction_bound`).
    compaction_held_at: Option<CompactionHeld>,
    /// The segmented log, when the store keeps its log there.
    segments: Option<SegmentLog>,
    /// The segmented log's part of the write being built.
    log_batch: LogBatch,
    options: StoreOptions,
    /// Shared with every [`StoreReader`].
    installs: Arc<InstallCounter>,
    /// Recently written records, for point reads, and the writes kept
    /// behind; shared with every [`StoreReader`].
    mirror: Arc<ReadMirror>,
    /// The keys the mirror holds dirty (written behind), ordered when a
    /// scan asks: what scans merge with RocksDB's and a checkpoint writes.
    dirty_keys: staged_keys::DirtyKeys,
    /// The checkpoint being written on its own thread, if one is.
    in_flight: Option<write_behind::InFlight>,
    /// The last checkpoint's keys, for the next checkpoint's thread to
    /// free.
    retired_keys: Option<Arc<staged_keys::FrozenKeys>>,
    /// The applied index RocksDB's state machine was last written at.
    checkpointed: LogIndex,
    _block_cache: Cache,
}

/// Point reads of a store's state machine from any thread, while the
/// store's owner goes on writing: each read sees the state at one moment
/// (RocksDB point reads are atomic, and every apply is one write), and
/// nothing more: whether that state is fresh enough is the caller's
/// business. Cloning is cheap.
///
/// A snapshot install rewrites the data family in several writes; a read
/// that overlapped one is refused ([`ReadRefused::Installing`]) rather than
/// answered from a state that is half the old one and half the new.
#[derive(Clone)]
pub struct StoreReader {
    db: Arc<DB>,
    installs: Arc<InstallCounter>,
    mirror: Arc<ReadMirror>,
}

/// Why a [`StoreReader`] gave no answer.
#[derive(Debug)]
pub enum ReadRefused {
    /// A snapshot install was rewriting the state machine during the
    /// read: ask the store's owner, who does not read while installing.
    Installing,
    /// Reading the medium failed.
    Storage(StorageError),
}

impl fmt::Display for ReadRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Installing => f.write_str("a snapshot install overlapped the read"),
            Self::Storage(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for ReadRefused {}

/// Counts snapshot installs into the data family, seqlock-style: odd while
/// one is writing, so a reader that saw the same even count before and
/// after its read knows no install touched it.
#[derive(Debug, Default)]
struct InstallCounter(AtomicU64);

impl InstallCounter {
    /// Marks an install under way until the returned guard drops (also on
    /// an early error return).
    fn begin(&self) -> InstallGuard<'_> {
        self.0.fetch_add(1, SeqCst);
        InstallGuard(self)
    }
}

struct InstallGuard<'a>(&'a InstallCounter);

impl Drop for InstallGuard<'_> {
    fn drop(&mut self) {
        self.0.0.fetch_add(1, SeqCst);
    }
}

impl fmt::Debug for StoreReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreReader").finish_non_exhaustive()
    }
}

impl StoreReader {
    /// The state machine's value for `key`, as it is now.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReadRefused> {
        let before = self.installs.0.load(SeqCst);
        if before % 2 == 1 {
            return Err(ReadRefused::Installing);
        }
        let value = get_data(&self.db, &self.mirror, key).map_err(ReadRefused::Storage)?;
        if self.installs.0.load(SeqCst) != before {
            return Err(ReadRefused::Installing);
        }
        Ok(value)
    }
}

/// A point read of the data family, from the mirror when it holds the
/// key: the store's own reads and a [`StoreReader`]'s share it (the
/// store's without cloning a handle: it runs for every key a write
/// touches).
fn get_data(db: &DB, mirror: &ReadMirror, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
    if let Mirror::Held(value) = mirror.get(key) {
        return Ok(value);
    }
    db.get_cf(cf(db, CF_DATA), key)
        .map_err(|e| io_error("reading the state machine", e))
}

/// A column family's handle; borrowing only the database (not the whole
/// store) lets callers update the cached state meanwhile.
fn cf<'a>(db: &'a DB, name: &str) -> &'a ColumnFamily {
    db.cf_handle(name)
        .unwrap_or_else(|| panic!("column family {name} exists since open"))
}

fn log_key(index: LogIndex) -> [u8; 8] {
    index.to_be_bytes()
}

pub(crate) fn snapshot_key(slot: u8, offset: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(SNAPSHOT_DATA_PREFIX.len() + 9);
    key.extend_from_slice(SNAPSHOT_DATA_PREFIX);
    key.push(slot);
    key.extend_from_slice(&offset.to_be_bytes());
    key
}

/// Deletes every stored record of a snapshot slot.
pub(crate) fn add_clear_slot(batch: &mut WriteBatch, meta_cf: &ColumnFamily, slot: u8) {
    batch.delete_range_cf(meta_cf, snapshot_key(slot, 0), snapshot_key(slot, u64::MAX));
}

/// A failed durable write leaves the process unable to know what is on
/// disk: it must stop, never retry (the lesson of PostgreSQL's fsyncgate).
fn fatal(what: &str, error: impl fmt::Display) -> ! {
    panic!("dr-storage: {what} failed, the store can no longer be trusted: {error}")
}

fn io_error(what: &str, error: impl fmt::Display) -> StorageError {
    StorageError::Io(format!("{what}: {error}"))
}

impl RocksStorage {
    /// Opens (or creates) the store in `path`, checks its format version
    /// and that it keeps its state machine as `state_machine` says,
    /// verifies every log entry's checksum and position, rebuilds the
    /// in-memory indexes, and finishes a snapshot install a crash
    /// interrupted.
    pub fn open(path: impl AsRef<Path>, state_machine: StateMachine) -> Result<Self, OpenError> {
        Self::open_with(path, state_machine, StoreOptions::default())
    }

    /// [`open`](Self::open) with options: where a new store keeps its log.
    pub fn open_with(
        path: impl AsRef<Path>,
        state_machine: StateMachine,
        options: StoreOptions,
    ) -> Result<Self, OpenError> {
        let path = path.as_ref().to_path_buf();
        crate::segments::check_segment_bytes(options.segment_bytes).map_err(OpenError::Options)?;
        let block_cache = Cache::new_lru_cache(options::BLOCK_CACHE_BYTES);
        let db = DB::open_cf_descriptors(
            &options::db_options(),
            &path,
            options::column_families(&block_cache),
        )
        .map_err(|e| OpenError::RocksDb(e.to_string()))?;
        let mut store = Self {
            db: Arc::new(db),
            path,
            cached: Cached {
                compacted_index: 0,
                compacted_term: 0,
                last_index: 0,
                term_runs: BTreeMap::new(),
                hard_state: HardState::default(),
                conf_state: ConfState::default(),
                snapshot: SnapshotMeta::default(),
                snapshot_len: 0,
                slot: 0,
                snapshot_is_view: false,
                staged: None,
                applied: 0,
                applied_term: None,
            },
            codec: CodecConfig::default(),
            state_machine,
            view: None,
            making: None,
            compaction_held_at: None,
            segments: None,
            log_batch: LogBatch::default(),
            options,
            installs: Arc::default(),
            mirror: Arc::new(ReadMirror::new(
                options.read_mirror_bytes,
                options.write_behind_bytes > 0 && state_machine == StateMachine::DataFamily,
            )),
            dirty_keys: staged_keys::DirtyKeys::default(),
            in_flight: None,
            retired_keys: None,
            checkpointed: 0,
            _block_cache: block_cache,
        };
        store.check_format_version()?;
        store.load_records()?;
        store.checkpointed = store.cached.applied;
        store.verify_log()?;
        if store.read(CF_META, KEY_DATA_INSTALL)?.is_some() {
            store
                .finish_data_install()
                .map_err(|e| OpenError::Corrupt(e.to_string()))?;
        }
        store
            .adopt_state_ahead_of_log()
            .map_err(|e| OpenError::Corrupt(e.to_string()))?;
        store
            .catch_up_with_snapshot()
            .map_err(|e| OpenError::Corrupt(e.to_string()))?;
        store
            .pin_view_on_open()
            .map_err(|e| OpenError::Corrupt(e.to_string()))?;
        Ok(store)
    }

    /// Whether applies are kept behind (in the mirror) and written to
    /// RocksDB by checkpoints: with write-behind configured, when a crash
    /// loses nothing the log cannot replay.
    fn writes_behind(&self) -> bool {
        self.skips_wal() && self.options.write_behind_bytes > 0
    }

    /// Whether applies skip RocksDB's WAL: when the store is its own
    /// state machine and the segmented log can replay what a crash loses.
    fn skips_wal(&self) -> bool {
        self.segments.is_some() && self.state_machine == StateMachine::DataFamily
    }

    /// The applied index of the state RocksDB holds on disk: what a crash
    /// leaves of a state machine whose applies skip the WAL (what is only
    /// in a memtable is lost; RocksDB reads a `Persisted` tier without
    /// the memtables while they hold writes made without the WAL).
    pub(super) fn durable_applied(&self) -> Result<LogIndex, StorageError> {
        let mut options = ReadOptions::default();
        options.set_read_tier(ReadTier::Persisted);
        let record = self
            .db
            .get_cf_opt(cf(&self.db, CF_META), KEY_APPLIED, &options)
            .map_err(|e| io_error("reading the applied index on disk", e))?;
        match record {
            None => Ok(0),
            Some(record) => records::decode_applied(&record)
                .map(|(applied, _)| applied)
                .map_err(|e| StorageError::Invalid(e.0)),
        }
    }

    /// Where a compaction to `index` may go: not past the state on disk
    /// when applies skip the WAL (a crash would leave the state behind the
    /// log, with nothing to rebuild it from: snapshots are views).
    /// RocksDB's memtables usually fill and flush between two snapshots;
    /// when compactions keep finding the state on disk where the first of
    /// them left it ([`COMPACTIONS_HELD_MAX`] times, or for
    /// [`COMPACTION_HELD_MAX`]: a state of a few hot keys never fills a
    /// memtable, a quiet one neither), RocksDB is asked to flush, in the
    /// background, so the next one goes further.
    pub(super) fn compaction_bound(&mut self, index: LogIndex) -> Result<LogIndex, StorageError> {
        if !self.skips_wal() {
            return Ok(index);
        }
        let durable = self.durable_applied()?;
        if durable >= index {
            self.compaction_held_at = None;
            return Ok(index);
        }
        let held = match self.compaction_held_at {
            Some(held) if held.durable == durable => held,
            _ => CompactionHeld {
                durable,
                since: Instant::now(),
                times: 0,
            },
        };
        let held = CompactionHeld {
            times: held.times + 1,
            ..held
        };
        self.compaction_held_at = Some(held);
        if held.times >= COMPACTIONS_HELD_MAX || held.since.elapsed() >= COMPACTION_HELD_MAX {
            let families: Vec<_> = options::COLUMN_FAMILIES
                .into_iter()
                .map(|name| cf(&self.db, name))
                .collect();
            let mut flush = FlushOptions::default();
            flush.set_wait(false);
            self.db
                .flush_cfs_opt(&families, &flush)
                .map_err(|e| io_error("asking RocksDB to flush", e))?;
            self.compaction_held_at = None;
        }
        Ok(durable)
    }

    /// After a crash lost applies written without the WAL, the state may be
    /// behind the log's compaction point, where the log cannot replay it
    /// from: it is rebuilt from the current snapshot (which covers the
    /// compaction point), as an install would.
    fn catch_up_with_snapshot(&mut self) -> Result<(), StorageError> {
        if !self.skips_wal() || self.cached.applied >= self.cached.compacted_index {
            return Ok(());
        }
        if self.cached.snapshot_is_view {
            // A view is not on disk, and nothing can rebuild the state from
            // it: the log is never compacted past the state on disk.
            return Err(StorageError::Invalid(format!(
                "the state machine at {} is behind the log's compaction point {}, which never \
                 passes the state RocksDB holds on disk: the store lost data",
                self.cached.applied, self.cached.compacted_index
            )));
        }
        let snapshot = self.cached.snapshot.clone();
        let meta_cf = cf(&self.db, CF_META);
        let mut batch = WriteBatch::default();
        batch.put_cf(
            meta_cf,
            KEY_DATA_INSTALL,
            records::encode_u64(snapshot.index),
        );
        batch.put_cf(
            meta_cf,
            KEY_APPLIED,
            records::encode_applied(snapshot.index, Some(snapshot.term)),
        );
        batch.put_cf(
            cf(&self.db, CF_RAFT_STATE),
            KEY_CONF_STATE,
            records::encode_conf_state(&snapshot.conf_state),
        );
        self.commit(batch, "rebuilding the state machine from the snapshot");
        self.cached.applied = snapshot.index;
        self.cached.applied_term = Some(snapshot.term);
        self.cached.conf_state = snapshot.conf_state;
        self.finish_data_install()
    }

    /// After a crash the state machine may be ahead of the log: applies
    /// skip RocksDB's WAL, and a memtable flush can make durable the
    /// effects of committed entries whose log write had not been synced
    /// yet (a leader syncing its own log lazily: the entries were on its
    /// followers' disks). The state is kept as a snapshot at the applied
    /// index, as if received: pinned as the snapshot (it is on disk
    /// already), with the compaction point there and the log cleared to
    /// start after it.
    fn adopt_state_ahead_of_log(&mut self) -> Result<(), StorageError> {
        let (applied, last) = (self.cached.applied, self.cached.last_index);
        if !self.skips_wal() || applied <= last {
            return Ok(());
        }
        let term = self.cached.applied_term.ok_or_else(|| {
            StorageError::Invalid(format!(
                "the state machine is applied to {applied}, past the log's last index {last}, \
                 and the applied entry's term was not recorded"
            ))
        })?;
        let meta = SnapshotMeta {
            index: applied,
            term,
            conf_state: self.cached.conf_state.clone(),
        };
        let view = self.pin_measured(meta.clone())?;
        let mut batch = WriteBatch::default();
        self.add_view_switch(&mut batch, view);
        self.add_log_replacement(&mut batch, &meta);
        self.commit(batch, "keeping a state ahead of the log as a snapshot");
        Ok(())
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The RocksDB instance, for the crate's backups.
    pub(crate) fn db(&self) -> &DB {
        &self.db
    }

    /// How the store keeps its state machine.
    pub fn state_machine(&self) -> StateMachine {
        self.state_machine
    }

    /// Where the store keeps its log.
    pub fn log_kind(&self) -> LogKind {
        if self.segments.is_some() {
            LogKind::Segments
        } else {
            LogKind::RocksDb
        }
    }

    /// The directory of the segmented log, for the store in `path`.
    pub(crate) fn segments_dir(path: &Path) -> PathBuf {
        path.join(SEGMENTS_DIR)
    }

    /// Copies the segmented log (if the store has one) into `target`.
    pub(crate) fn copy_log_to(&self, target: &Path) -> io::Result<()> {
        match &self.segments {
            Some(log) => log.copy_to(target),
            None => Ok(()),
        }
    }

    /// How many segment files the log has (0 for a RocksDB log).
    pub fn log_segment_count(&self) -> usize {
        self.segments.as_ref().map_or(0, SegmentLog::segment_count)
    }

    /// The state machine's value for `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        get_data(&self.db, &self.mirror, key)
    }

    /// Bytes the read mirror holds now (see [`StoreOptions::read_mirror_bytes`]).
    pub fn read_mirror_bytes(&self) -> usize {
        self.mirror.bytes()
    }

    /// Bytes of applied writes kept behind now, not yet in RocksDB (see
    /// [`StoreOptions::write_behind_bytes`]; part of
    /// [`read_mirror_bytes`](Self::read_mirror_bytes)).
    pub fn write_behind_bytes(&self) -> usize {
        self.mirror.dirty_bytes() + self.mirror.frozen_bytes()
    }

    /// A handle for point reads of the state machine from other threads.
    pub fn reader(&self) -> StoreReader {
        StoreReader {
            db: Arc::clone(&self.db),
            installs: Arc::clone(&self.installs),
            mirror: Arc::clone(&self.mirror),
        }
    }

    /// Up to `limit` pairs of the state machine whose keys are at or after
    /// `start`, in key order: one page of a scan. RocksDB's pairs merged
    /// with the writes kept behind (which win, and hide deleted keys).
    pub fn scan(&self, start: &[u8], limit: usize) -> Result<Vec<KeyValue>, StorageError> {
        let mut pairs = Vec::new();
        let mut iterator = self.db.raw_iterator_cf(cf(&self.db, CF_DATA));
        iterator.seek(start);
        let dirty = self.dirty_keys.ordered();
        let mut staged = self.staged_keys(&dirty, start).peekable();
        while pairs.len() < limit {
            let stored = iterator.key();
            match (staged.peek(), stored) {
                (None, None) => break,
                (Some(key), stored) if stored.is_none_or(|stored| key[..] <= *stored) => {
                    if stored == Some(&key[..]) {
                        iterator.next();
                    }
                    // Staged, or settled since the scan began by the
                    // checkpoint in flight: then RocksDB holds it now.
                    let value = match self.mirror.staged(key) {
                        Some(value) => value.map(Vec::from),
                        None => get_data(&self.db, &self.mirror, key)?,
                    };
                    if let Some(value) = value {
                        pairs.push((key.to_vec(), value));
                    }
                    staged.next();
                }
                (_, Some(key)) => {
                    let value = iterator.value().expect("a valid iterator has a value");
                    pairs.push((key.to_vec(), value.to_vec()));
                    iterator.next();
                }
                (_, None) => unreachable!("matched by the arm before"),
            }
        }
        iterator
            .status()
            .map_err(|e| io_error("scanning the state machine", e))?;
        Ok(pairs)
    }

    /// Starts a new cluster's store: a snapshot at index 1, term 1 with
    /// configuration `conf_state` and an empty state machine (an empty
    /// but well-formed snapshot stream when the store is its own state
    /// machine). Refused unless the store is empty.
    pub fn bootstrap(&mut self, conf_state: ConfState) -> Result<(), StorageError> {
        if self.cached.last_index != 0 || self.cached.snapshot.index != 0 {
            return Err(StorageError::Invalid(format!(
                "cannot bootstrap a store that holds a log (last index {}, snapshot at {})",
                self.cached.last_index, self.cached.snapshot.index
            )));
        }
        let mut snapshot = Snapshot::bootstrap(conf_state);
        if self.state_machine == StateMachine::DataFamily {
            let mut stream = Vec::new();
            kv_stream::encode_header(&mut stream);
            kv_stream::encode_trailer(0, &mut stream);
            snapshot.data = Bytes::from(stream);
        }
        self.restore_snapshot(&snapshot)
    }

    /// The highest index whose effects are in the state machine.
    pub fn applied_index(&self) -> LogIndex {
        self.cached.applied
    }

    /// Applies committed entries' effects: `writes`, the new applied index
    /// and (when the entries changed it) the configuration, in one atomic
    /// batch, so a crash never applies an entry twice or skips one. Not
    /// synced on its own: a crash loses it only together with its applied
    /// index, and the entries are applied again from the log.
    pub fn apply(
        &mut self,
        writes: &[DataWrite<'_>],
        applied: LogIndex,
        conf_state: Option<&ConfState>,
    ) -> Result<(), StorageError> {
        if applied < self.cached.applied {
            return Err(StorageError::Invalid(format!(
                "applied index going back from {} to {applied}",
                self.cached.applied
            )));
        }
        if let Some(long) = writes
            .iter()
            .map(DataWrite::key)
            .find(|key| key.len() > kv_stream::KEY_BYTES_MAX)
        {
            return Err(StorageError::Invalid(format!(
                "a {}-byte key is longer than the {} bytes a key may have",
                long.len(),
                kv_stream::KEY_BYTES_MAX
            )));
        }
        let through = !self.writes_behind()
            || conf_state.is_some()
            || writes
                .iter()
                .any(|write| matches!(write, DataWrite::DeleteRange(..)));
        if !through {
            self.apply_behind(writes, applied);
            return Ok(());
        }
        // Nothing kept behind may stay behind a write that goes through.
        self.checkpoint();
        let mut batch = WriteBatch::default();
        let data = cf(&self.db, CF_DATA);
        for write in writes {
            match write {
                DataWrite::Put(key, value) => batch.put_cf(data, key, value),
                DataWrite::Delete(key) => batch.delete_cf(data, key),
                DataWrite::DeleteRange(from, to) => batch.delete_range_cf(data, from, to),
            }
        }
        // With its term when the log holds it (always, in a running node):
        // a state machine found ahead of the log on open becomes a
        // snapshot at the applied index, which needs it.
        let applied_term = self.term(applied).ok();
        batch.put_cf(
            cf(&self.db, CF_META),
            KEY_APPLIED,
            records::encode_applied(applied, applied_term),
        );
        if let Some(conf) = conf_state {
            batch.put_cf(
                cf(&self.db, CF_RAFT_STATE),
                KEY_CONF_STATE,
                records::encode_conf_state(conf),
            );
            self.cached.conf_state = conf.clone();
        }
        let mut options = WriteOptions::default();
        // With the segmented log, the state machine skips RocksDB's WAL: a
        // crash loses the applies since the last memtable flush together
        // with their applied index (flushes are atomic across families),
        // and the engine applies those entries again from the log. The log
        // keeps them: on open, a state behind the compaction point is
        // rebuilt from the snapshot (`catch_up_with_snapshot`).
        options.disable_wal(self.skips_wal());
        self.db
            .write_opt(batch, &options)
            .unwrap_or_else(|error| fatal("applying committed entries", error));
        // After RocksDB took them, before the caller publishes `applied`.
        self.mirror.record(writes);
        self.cached.applied = applied;
        self.cached.applied_term = applied_term;
        self.checkpointed = applied;
        Ok(())
    }
}

impl Drop for RocksStorage {
    /// A view's thread holds the database open: it stops with the store,
    /// so the directory can be opened again at once. The writes kept
    /// behind are written out.
    fn drop(&mut self) {
        self.making = None;
        self.view = None;
        // A store closed in order keeps what it applied (RocksDB flushes
        // its memtables on close): no replay on the next open.
        if !std::thread::panicking() {
            self.checkpoint();
        }
    }
}
