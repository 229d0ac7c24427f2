//! [`RocksStorage`]: a node's whole durable state in one RocksDB instance,
//! implementing dr-raft's [`Storage`] and [`LogStore`], the atomic
//! persistence of a ready, and the key-value state machine.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64};

use bytes::Bytes;
use dr_codec::frame::{CodecConfig, decode_entry, encode_entry};
use dr_codec::message::{ConfState, Entry, LogIndex, SnapshotMeta, Term};
use dr_raft::{
    HardState, InitialState, LogStore, Ready, Snapshot, SnapshotChunk, StagedChunk, Storage,
    StorageError,
};
use rocksdb::{Cache, ColumnFamily, DB, DBRawIterator, WriteBatch, WriteOptions};

use crate::kv_stream::{self, KeyValue, PairReader, StreamError};
use crate::options::{self, CF_DATA, CF_META, CF_RAFT_LOG, CF_RAFT_STATE};
use crate::records::{self, RecordError};
use crate::snapshot_copy::{self, SnapshotCopy};

/// The on-disk format this code writes and reads.
pub const FORMAT_VERSION: u64 = 1;
/// Bytes of snapshot data in one stored record.
pub const SNAPSHOT_RECORD_BYTES: usize = 1 << 20;

const KEY_FORMAT_VERSION: &[u8] = b"format_version";
const KEY_APPLIED: &[u8] = b"applied";
const KEY_COMPACTION_POINT: &[u8] = b"compaction_point";
const KEY_SNAPSHOT: &[u8] = b"snapshot";
const KEY_SNAPSHOT_SLOT: &[u8] = b"snapshot_slot";
const KEY_STAGED: &[u8] = b"staged";
const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_CONF_STATE: &[u8] = b"conf_state";
const KEY_STATE_MACHINE: &[u8] = b"state_machine";
const KEY_DATA_INSTALL: &[u8] = b"data_install";
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
    /// snapshot is a copy of the family at the applied index, streamed
    /// from disk, and installing one replaces the family's contents.
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
}

impl<'a> DataWrite<'a> {
    /// The key written.
    pub fn key(&self) -> &'a [u8] {
        match self {
            Self::Put(key, _) | Self::Delete(key) => key,
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
    /// Which of the two data slots holds the current snapshot.
    slot: u8,
    /// A snapshot being staged in the other slot, and its bytes so far.
    staged: Option<(SnapshotMeta, u64)>,
    applied: LogIndex,
}

/// A node's durable state in RocksDB: see the crate documentation.
pub struct RocksStorage {
    db: Arc<DB>,
    path: PathBuf,
    cached: Cached,
    codec: CodecConfig,
    state_machine: StateMachine,
    /// A snapshot being copied on its own thread.
    copy: Option<SnapshotCopy>,
    /// Shared with every [`StoreReader`].
    installs: Arc<InstallCounter>,
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
        let value = get_data(&self.db, key).map_err(ReadRefused::Storage)?;
        if self.installs.0.load(SeqCst) != before {
            return Err(ReadRefused::Installing);
        }
        Ok(value)
    }
}

/// A point read of the data family: the store's own reads and a
/// [`StoreReader`]'s share it (the store's without cloning a handle: it
/// runs for every key a write touches).
fn get_data(db: &DB, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
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
        let path = path.as_ref().to_path_buf();
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
                staged: None,
                applied: 0,
            },
            codec: CodecConfig::default(),
            state_machine,
            copy: None,
            installs: Arc::default(),
            _block_cache: block_cache,
        };
        store.check_format_version()?;
        store.load_records()?;
        store.verify_log()?;
        if store.read(CF_META, KEY_DATA_INSTALL)?.is_some() {
            store
                .finish_data_install()
                .map_err(|e| OpenError::Corrupt(e.to_string()))?;
        }
        Ok(store)
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

    fn read(&self, family: &str, key: &[u8]) -> Result<Option<Vec<u8>>, OpenError> {
        self.db
            .get_cf(cf(&self.db, family), key)
            .map_err(|e| OpenError::RocksDb(e.to_string()))
    }

    fn check_format_version(&mut self) -> Result<(), OpenError> {
        match self.read(CF_META, KEY_FORMAT_VERSION)? {
            Some(record) => {
                let found = records::decode_u64("format version", &record)?;
                if found != FORMAT_VERSION {
                    return Err(OpenError::FormatVersion {
                        found,
                        expected: FORMAT_VERSION,
                    });
                }
                let record = self.read(CF_META, KEY_STATE_MACHINE)?.ok_or_else(|| {
                    OpenError::Corrupt("the state machine record is missing".into())
                })?;
                let code = records::decode_u64("state machine", &record)?;
                let found = StateMachine::from_code(code).ok_or_else(|| {
                    OpenError::Corrupt(format!("unknown state machine kind {code}"))
                })?;
                if found != self.state_machine {
                    return Err(OpenError::StateMachine {
                        found,
                        requested: self.state_machine,
                    });
                }
                Ok(())
            }
            None => {
                let empty = [CF_RAFT_LOG, CF_RAFT_STATE, CF_DATA, CF_META]
                    .iter()
                    .all(|family| {
                        self.db
                            .iterator_cf(cf(&self.db, family), rocksdb::IteratorMode::Start)
                            .next()
                            .is_none()
                    });
                if !empty {
                    return Err(OpenError::NotADrStore);
                }
                let mut batch = WriteBatch::default();
                batch.put_cf(
                    cf(&self.db, CF_META),
                    KEY_FORMAT_VERSION,
                    records::encode_u64(FORMAT_VERSION),
                );
                batch.put_cf(
                    cf(&self.db, CF_META),
                    KEY_STATE_MACHINE,
                    records::encode_u64(self.state_machine.code()),
                );
                self.commit(batch, "writing the format version");
                Ok(())
            }
        }
    }

    fn load_records(&mut self) -> Result<(), OpenError> {
        if let Some(record) = self.read(CF_RAFT_STATE, KEY_HARD_STATE)? {
            self.cached.hard_state = records::decode_hard_state(&record)?;
        }
        if let Some(record) = self.read(CF_RAFT_STATE, KEY_CONF_STATE)? {
            self.cached.conf_state = records::decode_conf_state(&record)?;
        }
        if let Some(record) = self.read(CF_META, KEY_APPLIED)? {
            self.cached.applied = records::decode_u64("applied index", &record)?;
        }
        if let Some(record) = self.read(CF_META, KEY_COMPACTION_POINT)? {
            let (index, term) = records::decode_index_term(&record)?;
            self.cached.compacted_index = index;
            self.cached.compacted_term = term;
        }
        if let Some(record) = self.read(CF_META, KEY_SNAPSHOT)? {
            let (meta, len) = records::decode_snapshot_meta("snapshot", &record)?;
            self.cached.snapshot = meta;
            self.cached.snapshot_len = len;
        }
        if let Some(record) = self.read(CF_META, KEY_SNAPSHOT_SLOT)? {
            let slot = records::decode_u64("snapshot slot", &record)?;
            self.cached.slot = u8::try_from(slot)
                .ok()
                .filter(|slot| *slot < 2)
                .ok_or_else(|| OpenError::Corrupt(format!("snapshot slot {slot}")))?;
        }
        if let Some(record) = self.read(CF_META, KEY_STAGED)? {
            self.cached.staged = Some(records::decode_snapshot_meta("staged snapshot", &record)?);
        }
        if self.cached.compacted_index > self.cached.snapshot.index {
            return Err(OpenError::Corrupt(format!(
                "the log is compacted to {} past the snapshot at {}",
                self.cached.compacted_index, self.cached.snapshot.index
            )));
        }
        Ok(())
    }

    /// Reads every entry: contiguous after the compaction point, each one's
    /// checksum and index right. Rebuilds the term index on the way.
    fn verify_log(&mut self) -> Result<(), OpenError> {
        let mut expected = self.cached.compacted_index + 1;
        let mut previous_term = self.cached.compacted_term;
        let mut runs = BTreeMap::new();
        let mut iterator = self.db.raw_iterator_cf(cf(&self.db, CF_RAFT_LOG));
        iterator.seek_to_first();
        while iterator.valid() {
            let key = iterator.key().expect("valid iterator has a key");
            let index = <[u8; 8]>::try_from(key)
                .map(u64::from_be_bytes)
                .map_err(|_| OpenError::Corrupt(format!("raft log key of {} bytes", key.len())))?;
            if index != expected {
                return Err(OpenError::Corrupt(format!(
                    "raft log entry {index} where {expected} was expected (compaction point {})",
                    self.cached.compacted_index
                )));
            }
            let value =
                Bytes::copy_from_slice(iterator.value().expect("valid iterator has a value"));
            let entry = decode_stored_entry(index, &value, &self.codec)
                .map_err(|e| OpenError::Corrupt(e.to_string()))?;
            if entry.term < previous_term {
                return Err(OpenError::Corrupt(format!(
                    "raft log entry {index} has term {} below the term {previous_term} before it",
                    entry.term
                )));
            }
            if entry.term != previous_term || runs.is_empty() {
                runs.insert(index, entry.term);
            }
            previous_term = entry.term;
            expected += 1;
            iterator.next();
        }
        iterator
            .status()
            .map_err(|e| OpenError::RocksDb(e.to_string()))?;
        self.cached.last_index = expected - 1;
        self.cached.term_runs = runs;
        let commit = self.cached.hard_state.commit;
        if commit > self.cached.last_index.max(self.cached.snapshot.index) {
            return Err(OpenError::Corrupt(format!(
                "the commit index {commit} is past the log's last index {}",
                self.cached.last_index
            )));
        }
        Ok(())
    }

    /// Writes `batch` (unsynced) once it holds `INSTALL_BATCH_BYTES`, and
    /// starts a new one: bulk copies go out in bounded pieces, and the
    /// synced batch that ends them makes them durable (the WAL is ordered).
    fn write_if_full(&self, batch: &mut WriteBatch, what: &str) {
        if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
            self.db
                .write(std::mem::take(batch))
                .unwrap_or_else(|error| fatal(what, error));
        }
    }

    /// Builds a batch with `build`; when it fails, the cached state it may
    /// have changed is put back, so the store stays as it was.
    fn try_batch(
        &mut self,
        build: impl FnOnce(&mut Self, &mut WriteBatch) -> Result<(), StorageError>,
    ) -> Result<WriteBatch, StorageError> {
        let saved = self.cached.clone();
        let mut batch = WriteBatch::default();
        match build(self, &mut batch) {
            Ok(()) => Ok(batch),
            Err(error) => {
                self.cached = saved;
                Err(error)
            }
        }
    }

    /// Whether persisting `ready` syncs the disk: it does when the ready
    /// changes what the node promises others (entries, a snapshot, its
    /// term or its vote); a ready that only moves the commit index is
    /// written without a sync. Ask before persisting it.
    pub fn must_sync(&self, ready: &Ready) -> bool {
        let promises = |hard_state: &HardState| {
            hard_state.term != self.cached.hard_state.term
                || hard_state.vote != self.cached.hard_state.vote
        };
        !ready.entries.is_empty()
            || ready.snapshot.is_some()
            || !ready.snapshot_chunks.is_empty()
            || ready.hard_state.as_ref().is_some_and(promises)
    }

    fn commit(&self, batch: WriteBatch, what: &str) {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db
            .write_opt(batch, &options)
            .unwrap_or_else(|error| fatal(what, error));
    }

    fn add_ready(
        &mut self,
        batch: &mut WriteBatch,
        ready: &Ready,
        chunks_done: bool,
    ) -> Result<(), StorageError> {
        if !chunks_done {
            self.add_chunks(batch, &ready.snapshot_chunks)?;
        }
        if let Some(meta) = &ready.snapshot {
            self.add_snapshot_switch(batch, meta)?;
        }
        self.add_entries(batch, &ready.entries)?;
        if let Some(hard_state) = ready.hard_state {
            self.add_hard_state(batch, hard_state);
        }
        Ok(())
    }

    /// The state machine's value for `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        get_data(&self.db, key)
    }

    /// A handle for point reads of the state machine from other threads.
    pub fn reader(&self) -> StoreReader {
        StoreReader {
            db: Arc::clone(&self.db),
            installs: Arc::clone(&self.installs),
        }
    }

    /// Up to `limit` pairs of the state machine whose keys are at or after
    /// `start`, in key order: one page of a scan.
    pub fn scan(&self, start: &[u8], limit: usize) -> Result<Vec<KeyValue>, StorageError> {
        let mut pairs = Vec::new();
        let mut iterator = self.db.raw_iterator_cf(cf(&self.db, CF_DATA));
        iterator.seek(start);
        while pairs.len() < limit {
            let (Some(key), Some(value)) = (iterator.key(), iterator.value()) else {
                break;
            };
            pairs.push((key.to_vec(), value.to_vec()));
            iterator.next();
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

    /// Starts a snapshot of the state machine at the applied index, copied
    /// on a thread of its own while the caller goes on applying (see the
    /// `snapshot_copy` module), and returns its index. It becomes the
    /// current snapshot when [`poll_snapshot`](Self::poll_snapshot) sees
    /// the copy done. [`LogStore::create_snapshot`] does the same on the
    /// caller's thread (and cancels a copy in progress).
    ///
    /// Refused for a store whose state machine is external (it hands its
    /// image to `create_snapshot`), while a copy runs or a received
    /// snapshot is being staged, and when nothing was applied since the
    /// current snapshot.
    pub fn begin_snapshot(&mut self, conf_state: ConfState) -> Result<LogIndex, StorageError> {
        if self.state_machine != StateMachine::DataFamily {
            return Err(StorageError::Invalid(
                "a store with an external state machine takes its snapshot image from create_snapshot"
                    .into(),
            ));
        }
        if let Some(copy) = &self.copy {
            return Err(StorageError::Invalid(format!(
                "a snapshot at index {} is being copied",
                copy.meta.index
            )));
        }
        self.refuse_while_receiving()?;
        let index = self.cached.applied;
        self.refuse_out_of_date(index)?;
        let meta = SnapshotMeta {
            index,
            term: self.term(index)?,
            conf_state,
        };
        let copy = SnapshotCopy::start(Arc::clone(&self.db), meta, 1 - self.cached.slot)
            .map_err(StorageError::Io)?;
        self.copy = Some(copy);
        Ok(index)
    }

    /// The index of the snapshot being copied, if one is.
    pub fn snapshot_copy_index(&self) -> Option<LogIndex> {
        self.copy.as_ref().map(|copy| copy.meta.index)
    }

    /// Makes a finished copy the current snapshot, in one synced write,
    /// and returns its index; `None` while the copy runs or when there is
    /// none. A failed copy is fatal, as every failed write of the store.
    pub fn poll_snapshot(&mut self) -> Option<LogIndex> {
        if !self.copy.as_ref().is_some_and(SnapshotCopy::is_finished) {
            return None;
        }
        let copy = self.copy.take()?;
        let (meta, slot) = (copy.meta.clone(), copy.slot);
        let len = match copy.finish() {
            Ok(Some(len)) => len,
            Ok(None) => return None,
            Err(error) => fatal("copying the state machine", error),
        };
        // Whatever would supersede the copy (a received snapshot, a copy on
        // the caller's thread) cancels it first, so these always hold.
        assert!(
            meta.index > self.cached.snapshot.index
                && self.cached.staged.is_none()
                && slot == 1 - self.cached.slot,
            "a snapshot copy outlived a change of snapshot"
        );
        let mut batch = WriteBatch::default();
        self.add_slot_switch(&mut batch, meta.clone(), len);
        self.commit(batch, "switching in a snapshot");
        Some(meta.index)
    }

    /// A snapshot at `index` would not be newer than the current one.
    fn refuse_out_of_date(&self, index: LogIndex) -> Result<(), StorageError> {
        let current = self.cached.snapshot.index;
        if index <= current {
            return Err(StorageError::SnapshotOutOfDate {
                offered: index,
                current,
            });
        }
        Ok(())
    }

    /// Copying the state machine would overwrite the staging slot under
    /// the chunks arriving for a newer state: let that finish.
    fn refuse_while_receiving(&self) -> Result<(), StorageError> {
        if let Some((receiving, _)) = &self.cached.staged {
            return Err(StorageError::Invalid(format!(
                "a snapshot at index {} is being received; not snapshotting now",
                receiving.index
            )));
        }
        Ok(())
    }

    /// Stops a copy in progress (its slot is about to be reused).
    fn cancel_snapshot_copy(&mut self) {
        if let Some(copy) = self.copy.take() {
            copy.cancel();
        }
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
        let mut batch = WriteBatch::default();
        let data = cf(&self.db, CF_DATA);
        for write in writes {
            match write {
                DataWrite::Put(key, value) => batch.put_cf(data, key, value),
                DataWrite::Delete(key) => batch.delete_cf(data, key),
            }
        }
        batch.put_cf(
            cf(&self.db, CF_META),
            KEY_APPLIED,
            records::encode_u64(applied),
        );
        if let Some(conf) = conf_state {
            batch.put_cf(
                cf(&self.db, CF_RAFT_STATE),
                KEY_CONF_STATE,
                records::encode_conf_state(conf),
            );
            self.cached.conf_state = conf.clone();
        }
        self.db
            .write(batch)
            .unwrap_or_else(|error| fatal("applying committed entries", error));
        self.cached.applied = applied;
        Ok(())
    }

    fn add_hard_state(&mut self, batch: &mut WriteBatch, hard_state: HardState) {
        batch.put_cf(
            cf(&self.db, CF_RAFT_STATE),
            KEY_HARD_STATE,
            records::encode_hard_state(&hard_state),
        );
        self.cached.hard_state = hard_state;
    }

    fn add_entries(
        &mut self,
        batch: &mut WriteBatch,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        check_contiguous(entries)?;
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index > self.cached.last_index + 1 {
            return Err(StorageError::Invalid(format!(
                "append at index {} leaves a gap after the last index {}",
                first.index, self.cached.last_index
            )));
        }
        let skip = (self.cached.compacted_index + 1).saturating_sub(first.index) as usize;
        let Some(kept) = entries.get(skip..).filter(|kept| !kept.is_empty()) else {
            return Ok(());
        };
        let log = cf(&self.db, CF_RAFT_LOG);
        let from = kept[0].index;
        if from <= self.cached.last_index {
            batch.delete_range_cf(log, log_key(from), log_key(self.cached.last_index + 1));
        }
        let mut encoded = bytes::BytesMut::new();
        for entry in kept {
            encoded.clear();
            encode_entry(entry, &self.codec, &mut encoded).map_err(|e| {
                StorageError::Invalid(format!("entry {} cannot be encoded: {e}", entry.index))
            })?;
            batch.put_cf(log, log_key(entry.index), &encoded);
        }
        let runs = &mut self.cached.term_runs;
        runs.split_off(&from);
        let mut previous = runs.last_key_value().map(|(_, &term)| term);
        if from == self.cached.compacted_index + 1 {
            previous = None;
        }
        for entry in kept {
            if previous != Some(entry.term) {
                runs.insert(entry.index, entry.term);
                previous = Some(entry.term);
            }
        }
        self.cached.last_index = kept.last().expect("kept is not empty").index;
        Ok(())
    }

    fn add_chunks(
        &mut self,
        batch: &mut WriteBatch,
        chunks: &[StagedChunk],
    ) -> Result<(), StorageError> {
        for StagedChunk { meta, offset, data } in chunks {
            self.add_staged_chunk(batch, meta, *offset, data)?;
        }
        Ok(())
    }

    fn add_staged_chunk(
        &mut self,
        batch: &mut WriteBatch,
        meta: &SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), StorageError> {
        if offset == 0 {
            self.cancel_snapshot_copy();
        }
        let staging_slot = 1 - self.cached.slot;
        let meta_cf = cf(&self.db, CF_META);
        if offset == 0 {
            add_clear_slot(batch, meta_cf, staging_slot);
            self.cached.staged = Some((meta.clone(), 0));
        }
        let Some((staged_meta, staged_len)) = &mut self.cached.staged else {
            return Err(StorageError::Invalid(format!(
                "snapshot chunk at offset {offset} with nothing staged"
            )));
        };
        if staged_meta != meta || *staged_len != offset {
            return Err(StorageError::Invalid(format!(
                "snapshot chunk at offset {offset} does not continue the staged snapshot ({} bytes of index {})",
                staged_len, staged_meta.index
            )));
        }
        for piece in data.chunks(SNAPSHOT_RECORD_BYTES) {
            batch.put_cf(meta_cf, snapshot_key(staging_slot, *staged_len), piece);
            *staged_len += piece.len() as u64;
        }
        batch.put_cf(
            meta_cf,
            KEY_STAGED,
            records::encode_snapshot_meta(meta, *staged_len),
        );
        Ok(())
    }

    fn add_snapshot_switch(
        &mut self,
        batch: &mut WriteBatch,
        meta: &SnapshotMeta,
    ) -> Result<(), StorageError> {
        if meta.index <= self.cached.snapshot.index {
            return Err(StorageError::SnapshotOutOfDate {
                offered: meta.index,
                current: self.cached.snapshot.index,
            });
        }
        let Some((staged_meta, staged_len)) =
            self.cached.staged.take_if(|(staged, _)| staged == meta)
        else {
            return Err(StorageError::Invalid(format!(
                "snapshot at index {} was not staged",
                meta.index
            )));
        };
        self.add_slot_switch(batch, staged_meta, staged_len);
        let meta_cf = cf(&self.db, CF_META);
        batch.put_cf(
            meta_cf,
            KEY_COMPACTION_POINT,
            records::encode_index_term(meta.index, meta.term),
        );
        let log = cf(&self.db, CF_RAFT_LOG);
        batch.delete_range_cf(log, log_key(0), log_key(u64::MAX));
        batch.put_cf(
            cf(&self.db, CF_RAFT_STATE),
            KEY_CONF_STATE,
            records::encode_conf_state(&meta.conf_state),
        );
        if self.state_machine == StateMachine::DataFamily {
            // The data family is rebuilt from the new slot right after this
            // batch; the marker makes a crash in between finish it on open.
            batch.put_cf(meta_cf, KEY_DATA_INSTALL, records::encode_u64(meta.index));
            batch.put_cf(meta_cf, KEY_APPLIED, records::encode_u64(meta.index));
            self.cached.applied = meta.index;
        }
        let cached = &mut self.cached;
        cached.compacted_index = meta.index;
        cached.compacted_term = meta.term;
        cached.last_index = meta.index;
        cached.term_runs.clear();
        cached.conf_state = meta.conf_state.clone();
        Ok(())
    }

    /// Persists the chunks of a ready that also switches to the snapshot
    /// they complete, and checks the whole staged stream before the
    /// switch: a state-machine snapshot that does not parse must never
    /// replace the data.
    fn stage_and_check(&mut self, ready: &Ready, meta: &SnapshotMeta) -> Result<(), StorageError> {
        if !ready.snapshot_chunks.is_empty() {
            let batch =
                self.try_batch(|store, batch| store.add_chunks(batch, &ready.snapshot_chunks))?;
            self.commit(batch, "staging snapshot chunks");
        }
        self.check_staged_stream(meta)
    }

    fn check_staged_stream(&self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        let Some((staged_meta, staged_len)) = &self.cached.staged else {
            return Ok(());
        };
        if self.state_machine != StateMachine::DataFamily || staged_meta != meta {
            return Ok(());
        }
        let mut pairs = self.slot_pairs(1 - self.cached.slot, *staged_len)?;
        while pairs.next_pair().map_err(invalid_stream)?.is_some() {}
        Ok(())
    }

    fn slot_pairs(&self, slot: u8, len: u64) -> Result<PairReader<SlotReader<'_>>, StorageError> {
        let reader = SlotReader::at(&self.db, slot, 0)
            .map_err(|e| io_error("reading a staged snapshot", e))?;
        PairReader::new(reader, len).map_err(invalid_stream)
    }

    /// Rebuilds the data family from the current snapshot slot, in bounded
    /// batches, then clears the install marker. Idempotent, so a crash
    /// midway is finished by running it again on open.
    fn finish_data_install(&mut self) -> Result<(), StorageError> {
        let installs = Arc::clone(&self.installs);
        let _installing = installs.begin();
        let data = cf(&self.db, CF_DATA);
        let mut batch = WriteBatch::default();
        let everything_after: &[u8] = &[];
        batch.delete_range_cf(data, everything_after, &kv_stream::key_upper_bound()[..]);
        let mut pairs = self.slot_pairs(self.cached.slot, self.cached.snapshot_len)?;
        while let Some((key, value)) = pairs.next_pair().map_err(invalid_stream)? {
            batch.put_cf(data, key, value);
            self.write_if_full(&mut batch, "installing a snapshot");
        }
        drop(pairs);
        batch.delete_cf(cf(&self.db, CF_META), KEY_DATA_INSTALL);
        self.commit(batch, "finishing a snapshot install");
        Ok(())
    }

    /// Copies the data family, as of now, into the staging slot as a
    /// state-machine stream; returns its length. Bounded memory: the copy
    /// goes out in batches of stored records.
    fn copy_data_family(&mut self, meta: &SnapshotMeta) -> u64 {
        self.cancel_snapshot_copy();
        let staging_slot = 1 - self.cached.slot;
        let source = self.db.raw_iterator_cf(cf(&self.db, CF_DATA));
        let never = AtomicBool::new(false);
        let written = snapshot_copy::copy_pairs(&self.db, source, staging_slot, &never)
            .unwrap_or_else(|error| fatal("copying the state machine", error))
            .expect("an uncancellable copy ends");
        self.cached.staged = Some((meta.clone(), written));
        written
    }

    /// Makes the staged slot the current snapshot: its metadata, the slot
    /// flip, the old slot deleted. (The log is the caller's business.)
    fn add_slot_switch(&mut self, batch: &mut WriteBatch, meta: SnapshotMeta, len: u64) {
        let old_slot = self.cached.slot;
        let meta_cf = cf(&self.db, CF_META);
        batch.put_cf(
            meta_cf,
            KEY_SNAPSHOT,
            records::encode_snapshot_meta(&meta, len),
        );
        batch.put_cf(
            meta_cf,
            KEY_SNAPSHOT_SLOT,
            records::encode_u64(u64::from(1 - old_slot)),
        );
        batch.delete_cf(meta_cf, KEY_STAGED);
        add_clear_slot(batch, meta_cf, old_slot);
        self.cached.slot = 1 - old_slot;
        self.cached.snapshot = meta;
        self.cached.snapshot_len = len;
        self.cached.staged = None;
    }

    fn check_in_log(&self, index: LogIndex) -> Result<(), StorageError> {
        if index <= self.cached.compacted_index {
            return Err(StorageError::Compacted {
                index,
                first_index: self.first_index(),
            });
        }
        if index > self.cached.last_index {
            return Err(StorageError::Unavailable {
                index,
                last_index: self.cached.last_index,
            });
        }
        Ok(())
    }
}

fn check_contiguous(entries: &[Entry]) -> Result<(), StorageError> {
    match entries
        .windows(2)
        .find(|pair| pair[1].index != pair[0].index + 1)
    {
        Some(gap) => Err(StorageError::Invalid(format!(
            "appended entries are not contiguous: {} follows {}",
            gap[1].index, gap[0].index
        ))),
        None => Ok(()),
    }
}

/// Decodes a stored entry, checking its frame, checksum and index.
fn decode_stored_entry(
    index: LogIndex,
    value: &Bytes,
    codec: &CodecConfig,
) -> Result<Entry, StorageError> {
    let (entry, frame_len) = decode_entry(value, codec)
        .map_err(|e| io_error(&format!("raft log entry {index} is damaged"), e))?;
    if frame_len != value.len() || entry.index != index {
        return Err(StorageError::Io(format!(
            "raft log entry stored at {index} holds index {} in {frame_len} of {} bytes",
            entry.index,
            value.len()
        )));
    }
    Ok(entry)
}

fn invalid_stream(error: StreamError) -> StorageError {
    match error {
        StreamError::Io(error) => io_error("reading a staged snapshot", error),
        StreamError::Invalid(what) => StorageError::Invalid(format!(
            "the snapshot is not a valid state-machine stream: {what}"
        )),
    }
}

/// Reads a snapshot slot's stored records as one byte stream.
struct SlotReader<'a> {
    iterator: DBRawIterator<'a>,
    slot: u8,
    /// The stream offset of `record`'s first byte past the consumed ones.
    position: u64,
    record: Vec<u8>,
    consumed: usize,
}

impl<'a> SlotReader<'a> {
    /// A reader of `slot` from stream offset `offset`: it starts in the
    /// record holding that offset, so no earlier record is read.
    fn at(db: &'a DB, slot: u8, offset: u64) -> io::Result<Self> {
        let iterator = db.raw_iterator_cf(cf(db, CF_META));
        let mut reader = Self {
            iterator,
            slot,
            position: 0,
            record: Vec::new(),
            consumed: 0,
        };
        if offset == 0 {
            reader.iterator.seek(snapshot_key(slot, 0));
            return Ok(reader);
        }
        reader.iterator.seek_for_prev(snapshot_key(slot, offset));
        let start = reader
            .iterator
            .key()
            .and_then(|key| key.strip_prefix(SNAPSHOT_DATA_PREFIX))
            .filter(|rest| rest.len() == 9 && rest[0] == slot)
            .map(|rest| u64::from_be_bytes(rest[1..].try_into().expect("8 bytes")));
        let Some(start) = start else {
            reader.iterator.status().map_err(io::Error::other)?;
            return Err(io::Error::other(format!(
                "snapshot data at offset {offset} is missing"
            )));
        };
        reader.position = start;
        if !reader.next_record()? || start + reader.record.len() as u64 <= offset {
            return Err(io::Error::other(format!(
                "snapshot data at offset {offset} is missing"
            )));
        }
        reader.consumed = (offset - start) as usize;
        reader.position = offset;
        Ok(reader)
    }

    fn next_record(&mut self) -> io::Result<bool> {
        let expected = snapshot_key(self.slot, self.position);
        if !self.iterator.valid() {
            self.iterator.status().map_err(io::Error::other)?;
            return Ok(false);
        }
        if self.iterator.key() != Some(&expected[..]) {
            return Err(io::Error::other(format!(
                "snapshot record at offset {} is missing",
                self.position
            )));
        }
        self.record.clear();
        self.record
            .extend_from_slice(self.iterator.value().expect("valid iterator has a value"));
        self.consumed = 0;
        self.iterator.next();
        Ok(true)
    }
}

impl Read for SlotReader<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.consumed == self.record.len() && !self.next_record()? {
            return Ok(0);
        }
        let available = &self.record[self.consumed..];
        let taken = available.len().min(buffer.len());
        buffer[..taken].copy_from_slice(&available[..taken]);
        self.consumed += taken;
        self.position += taken as u64;
        Ok(taken)
    }
}

impl Drop for RocksStorage {
    /// A copy thread holds the database open: it stops with the store, so
    /// the directory can be opened again at once.
    fn drop(&mut self) {
        self.cancel_snapshot_copy();
    }
}

impl Storage for RocksStorage {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        Ok(InitialState {
            hard_state: self.cached.hard_state,
            conf_state: self.cached.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if low > high {
            return Err(StorageError::Invalid(format!(
                "entries range {low}..{high} is reversed"
            )));
        }
        if low == high {
            if low <= self.cached.compacted_index {
                return Err(StorageError::Compacted {
                    index: low,
                    first_index: self.first_index(),
                });
            }
            return Ok(Vec::new());
        }
        self.check_in_log(low)?;
        self.check_in_log(high - 1)?;
        let mut entries = Vec::new();
        let mut bytes = 0u64;
        let mut iterator = self.db.raw_iterator_cf(cf(&self.db, CF_RAFT_LOG));
        iterator.seek(log_key(low));
        for index in low..high {
            if !iterator.valid() || iterator.key() != Some(&log_key(index)[..]) {
                iterator
                    .status()
                    .map_err(|e| io_error("reading the raft log", e))?;
                return Err(StorageError::Io(format!(
                    "raft log entry {index} is missing"
                )));
            }
            let value =
                Bytes::copy_from_slice(iterator.value().expect("valid iterator has a value"));
            let entry = decode_stored_entry(index, &value, &self.codec)?;
            bytes += entry.payload.len() as u64;
            if !entries.is_empty() && bytes > max_bytes {
                break;
            }
            entries.push(entry);
            iterator.next();
        }
        Ok(entries)
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        if index == self.cached.compacted_index {
            return Ok(self.cached.compacted_term);
        }
        self.check_in_log(index)?;
        let (_, &term) = self
            .cached
            .term_runs
            .range(..=index)
            .next_back()
            .expect("every index in the log lies in a term run");
        Ok(term)
    }

    fn first_index(&self) -> LogIndex {
        self.cached.compacted_index + 1
    }

    fn last_index(&self) -> LogIndex {
        self.cached.last_index
    }

    fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError> {
        Ok(self.cached.snapshot.clone())
    }

    fn snapshot_chunk(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        max_bytes: u64,
    ) -> Result<SnapshotChunk, StorageError> {
        if *meta != self.cached.snapshot {
            return Err(StorageError::SnapshotOutOfDate {
                offered: meta.index,
                current: self.cached.snapshot.index,
            });
        }
        let total = self.cached.snapshot_len;
        if offset > total {
            return Err(StorageError::Invalid(format!(
                "snapshot offset {offset} is past its {total} bytes"
            )));
        }
        let end = offset.saturating_add(max_bytes).min(total);
        let mut data = vec![0u8; (end - offset) as usize];
        if !data.is_empty() {
            SlotReader::at(&self.db, self.cached.slot, offset)
                .and_then(|mut reader| reader.read_exact(&mut data))
                .map_err(|e| io_error(&format!("reading the snapshot at offset {offset}"), e))?;
        }
        Ok(SnapshotChunk {
            data: Bytes::from(data),
            done: end == total,
        })
    }
}

impl LogStore for RocksStorage {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        self.add_entries(&mut batch, entries)?;
        if !batch.is_empty() {
            self.commit(batch, "appending to the raft log");
        }
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: HardState) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        self.add_hard_state(&mut batch, hard_state);
        self.commit(batch, "writing the hard state");
        Ok(())
    }

    fn set_conf_state(&mut self, conf_state: ConfState) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            cf(&self.db, CF_RAFT_STATE),
            KEY_CONF_STATE,
            records::encode_conf_state(&conf_state),
        );
        self.commit(batch, "writing the configuration");
        self.cached.conf_state = conf_state;
        Ok(())
    }

    fn create_snapshot(
        &mut self,
        index: LogIndex,
        conf_state: ConfState,
        data: Bytes,
    ) -> Result<(), StorageError> {
        self.refuse_out_of_date(index)?;
        let term = self.term(index)?;
        let meta = SnapshotMeta {
            index,
            term,
            conf_state,
        };
        let (mut batch, len) = match self.state_machine {
            StateMachine::External => {
                let batch =
                    self.try_batch(|store, batch| store.add_staged_chunk(batch, &meta, 0, &data))?;
                (batch, data.len() as u64)
            }
            StateMachine::DataFamily => {
                self.refuse_while_receiving()?;
                if !data.is_empty() || index != self.cached.applied {
                    return Err(StorageError::Invalid(format!(
                        "a store that is its own state machine snapshots its data at the \
                         applied index {} and takes no image (asked: index {index}, {} bytes)",
                        self.cached.applied,
                        data.len()
                    )));
                }
                (WriteBatch::default(), self.copy_data_family(&meta))
            }
        };
        self.add_slot_switch(&mut batch, meta, len);
        self.commit(batch, "creating a snapshot");
        Ok(())
    }

    fn stage_snapshot_chunk(
        &mut self,
        meta: &SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), StorageError> {
        let batch =
            self.try_batch(|store, batch| store.add_staged_chunk(batch, meta, offset, data))?;
        self.commit(batch, "staging a snapshot chunk");
        Ok(())
    }

    fn apply_snapshot(&mut self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        self.check_staged_stream(meta)?;
        let batch = self.try_batch(|store, batch| store.add_snapshot_switch(batch, meta))?;
        self.commit(batch, "applying a snapshot");
        if self.state_machine == StateMachine::DataFamily {
            self.finish_data_install()?;
        }
        Ok(())
    }

    /// Persists a ready atomically, in one synced write: its snapshot
    /// chunks, the snapshot switch, the entries and the hard state. The
    /// messages of the ready may be sent when this returns. (A ready that
    /// completes a state-machine snapshot first stages its chunks and
    /// checks the whole stream, then switches and rebuilds the data.)
    fn persist_ready(&mut self, ready: &Ready) -> Result<(), StorageError> {
        let installs_data =
            ready.snapshot.is_some() && self.state_machine == StateMachine::DataFamily;
        let mut chunks_done = false;
        if let Some(meta) = ready.snapshot.as_ref().filter(|_| installs_data) {
            self.stage_and_check(ready, meta)?;
            chunks_done = true;
        }
        let must_sync = self.must_sync(ready);
        let batch = self.try_batch(|store, batch| store.add_ready(batch, ready, chunks_done))?;
        if must_sync {
            self.commit(batch, "persisting a ready");
        } else if !batch.is_empty() {
            // Only the commit index moved: written, not synced (etcd's
            // MustSync rule). A power failure can lose it, which only
            // lowers the commit index recovered; the leader teaches it
            // again, and the applied index (written after it, in the same
            // WAL) can never survive it.
            self.db
                .write(batch)
                .unwrap_or_else(|error| fatal("persisting the commit index", error));
        }
        if installs_data {
            self.finish_data_install()?;
        }
        Ok(())
    }

    fn compact(&mut self, index: LogIndex) -> Result<(), StorageError> {
        if index <= self.cached.compacted_index {
            return Err(StorageError::Compacted {
                index,
                first_index: self.first_index(),
            });
        }
        self.check_in_log(index)?;
        if index > self.cached.snapshot.index {
            return Err(StorageError::Invalid(format!(
                "compacting to {index} would discard entries the snapshot (at {}) does not cover",
                self.cached.snapshot.index
            )));
        }
        let term = self.term(index)?;
        let next_term = if index < self.cached.last_index {
            Some(self.term(index + 1)?)
        } else {
            None
        };
        let mut batch = WriteBatch::default();
        let first = self.first_index();
        batch.delete_range_cf(
            cf(&self.db, CF_RAFT_LOG),
            log_key(first),
            log_key(index + 1),
        );
        batch.put_cf(
            cf(&self.db, CF_META),
            KEY_COMPACTION_POINT,
            records::encode_index_term(index, term),
        );
        self.commit(batch, "compacting the raft log");
        let runs = &mut self.cached.term_runs;
        *runs = runs.split_off(&(index + 1));
        if let Some(next_term) = next_term {
            runs.entry(index + 1).or_insert(next_term);
        }
        self.cached.compacted_index = index;
        self.cached.compacted_term = term;
        Ok(())
    }
}
