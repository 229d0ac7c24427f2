//! The simulator's store: the key-value state machine's data and the Raft
//! log in memory, with the crash behaviour of `RocksStorage` — what a
//! synced write covers survives a crash (with everything written before
//! it, as RocksDB's write-ahead log replays a prefix), and nothing else
//! does: entries, votes and snapshots are synced when persisted, applies,
//! commit-index updates and a lazily syncing leader's writes only ride
//! along with the next sync. A crash may also find the state machine
//! flushed on its own ([`Disk::flush_state_machine`]: RocksDB's memtable
//! flush of applies that skip its WAL), ahead of the synced log; opening
//! then keeps that state as a snapshot at its applied index, as
//! `RocksStorage` does.
//!
//! A disk made with [`Disk::applies_behind`] models `RocksStorage`'s
//! applies kept behind: syncs make the log durable but not the state
//! machine, which reaches the disk only by flushes (a checkpoint RocksDB
//! flushed) and snapshot installs; a crash loses the applies since, and
//! the engine applies them again from the log. A state machine left
//! behind the snapshot the log was compacted to is rebuilt from that
//! snapshot on open, as `RocksStorage` catches up with a stored (received)
//! one. (`RocksStorage`'s own snapshots are now its state pinned, and its
//! log is never compacted past the state on disk instead; this model
//! still keeps copies: both are stores the engine must run on.)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use dr_codec::message::{ConfState, Entry, LogIndex, SnapshotMeta, Term};
use dr_engine::SnapshotStarted;
use dr_node::machine::KvStore;
use dr_raft::{
    HardState, InitialState, LogStore, MemStorage, Ready, SnapshotChunk, Storage, StorageError,
};
use dr_storage::{DataWrite, KeyValue};

/// Everything a node stores.
#[derive(Clone, Debug, Default)]
struct State {
    log: MemStorage,
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    applied: LogIndex,
    /// The term of the entry at `applied`, when the log held it.
    applied_term: Option<Term>,
}

/// Where the next synced write of a node crashes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// Before anything of the write reaches the disk.
    BeforeSync,
    /// Right after the write is durable, before anything else happens.
    AfterSync,
}

/// The panic payload of a crash at a [`CrashPoint`]: the simulator
/// catches it and treats the node as killed there.
#[derive(Debug)]
pub struct Crashed;

/// What survives a crash of one node: the state as of its last sync, and
/// a crash point set for its next synced write.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    state: Arc<Mutex<State>>,
    crash_point: Arc<Mutex<Option<CrashPoint>>>,
    /// The state machine reaches the disk only by flushes and installs.
    applies_behind: bool,
}

/// How [`MemKvStore::open`] found the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    /// Where the disk held it.
    AsStored,
    /// Ahead of the synced log: kept as a snapshot at its applied index.
    AheadOfLog,
    /// Behind the log's snapshot (its applies lost, the log compacted
    /// past them): rebuilt from the snapshot.
    BehindSnapshot,
}

impl Disk {
    /// A disk whose state machine is made durable only by flushes
    /// ([`Disk::flush_state_machine`]) and snapshot installs, not by the
    /// log's syncs (`RocksStorage` with applies kept behind).
    pub fn applies_behind() -> Self {
        Self {
            applies_behind: true,
            ..Self::default()
        }
    }

    /// Makes the node's next synced write crash it at `point`.
    pub fn crash_at(&self, point: Option<CrashPoint>) {
        *self.crash_point.lock().expect("not poisoned") = point;
    }

    fn take_crash_point(&self) -> Option<CrashPoint> {
        self.crash_point.lock().expect("not poisoned").take()
    }

    /// Makes `state` durable; with applies kept behind, its log only,
    /// unless `state_machine_replaced` (an install, written through).
    fn save(&self, state: &State, state_machine_replaced: bool) {
        let point = self.take_crash_point();
        if point == Some(CrashPoint::BeforeSync) {
            std::panic::panic_any(Crashed);
        }
        let mut saved = state.clone();
        let mut disk = self.state.lock().expect("not poisoned");
        if self.applies_behind && !state_machine_replaced {
            saved.data = std::mem::take(&mut disk.data);
            saved.applied = disk.applied;
            saved.applied_term = disk.applied_term;
            let conf_state = disk
                .log
                .initial_state()
                .expect("memory storage answers")
                .conf_state;
            saved
                .log
                .set_conf_state(conf_state)
                .expect("memory storage takes a configuration");
        }
        *disk = saved;
        drop(disk);
        if point == Some(CrashPoint::AfterSync) {
            std::panic::panic_any(Crashed);
        }
    }

    /// Makes `store`'s state machine durable as it is now — its data,
    /// applied index and configuration — and nothing of its log: a
    /// memtable flush, which may run ahead of the synced log.
    pub fn flush_state_machine(&self, store: &MemKvStore) {
        let mut disk = self.state.lock().expect("not poisoned");
        disk.data = store.state.data.clone();
        disk.applied = store.state.applied;
        disk.applied_term = store.state.applied_term;
        disk.log
            .set_conf_state(store.conf_state())
            .expect("memory storage takes a configuration");
    }
}

/// A node's store in memory, saving to its [`Disk`] on every sync.
#[derive(Debug)]
pub struct MemKvStore {
    state: State,
    disk: Disk,
    /// A snapshot install replaced the state machine since the last save
    /// (the next one writes it whole).
    replaced: bool,
}

/// A snapshot's data: the pair count (u64 LE), then each key and value as
/// a u32 LE length and the bytes; nothing after.
fn encode_data(data: &BTreeMap<Vec<u8>, Vec<u8>>) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u64_le(data.len() as u64);
    for (key, value) in data {
        out.put_u32_le(key.len() as u32);
        out.extend_from_slice(key);
        out.put_u32_le(value.len() as u32);
        out.extend_from_slice(value);
    }
    out.freeze()
}

fn decode_data(mut input: Bytes) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, StorageError> {
    let mut data = BTreeMap::new();
    if input.is_empty() {
        // The bootstrap snapshot: no state yet.
        return Ok(data);
    }
    if input.remaining() < 8 {
        return Err(StorageError::Io("a cut snapshot".into()));
    }
    let count = input.get_u64_le();
    let take = |input: &mut Bytes| {
        if input.remaining() < 4 {
            return Err(StorageError::Io("a cut snapshot".into()));
        }
        let len = input.get_u32_le() as usize;
        if input.remaining() < len {
            return Err(StorageError::Io("a cut snapshot".into()));
        }
        Ok(input.split_to(len).to_vec())
    };
    for _ in 0..count {
        let key = take(&mut input)?;
        let value = take(&mut input)?;
        data.insert(key, value);
    }
    if input.has_remaining() || data.len() as u64 != count {
        return Err(StorageError::Io("a snapshot with stray bytes".into()));
    }
    Ok(data)
}

impl MemKvStore {
    /// The store as `disk` holds it (a new node: empty). A state machine
    /// ahead of the log (flushed past the synced log) is kept as a
    /// snapshot at its applied index, as `RocksStorage` keeps it; one
    /// behind the log's snapshot is rebuilt from it. Either is written
    /// back to the disk at once.
    pub fn open(disk: &Disk) -> (Self, Opened) {
        let mut store = Self {
            state: disk.state.lock().expect("not poisoned").clone(),
            disk: disk.clone(),
            replaced: false,
        };
        let snapshot = store.state.log.snapshot().clone();
        let opened = if store.state.applied > store.state.log.last_index() {
            let term = store
                .state
                .applied_term
                .expect("a state machine ahead of the log recorded its applied term");
            let snapshot = dr_raft::Snapshot {
                meta: SnapshotMeta {
                    index: store.state.applied,
                    term,
                    conf_state: store.conf_state(),
                },
                data: encode_data(&store.state.data),
            };
            store
                .state
                .log
                .restore_snapshot(&snapshot)
                .expect("a snapshot past the log applies");
            Opened::AheadOfLog
        } else if store.state.applied < snapshot.meta.index {
            store.state.data =
                decode_data(snapshot.data.clone()).expect("the log's snapshot decodes");
            store.state.applied = snapshot.meta.index;
            store.state.applied_term = Some(snapshot.meta.term);
            store
                .state
                .log
                .set_conf_state(snapshot.meta.conf_state.clone())
                .expect("memory storage takes a configuration");
            Opened::BehindSnapshot
        } else {
            Opened::AsStored
        };
        if opened != Opened::AsStored {
            *disk.state.lock().expect("not poisoned") = store.state.clone();
        }
        (store, opened)
    }

    /// The key-value data now.
    pub fn data(&self) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        &self.state.data
    }

    /// Makes everything written so far durable (a synced write); with
    /// applies kept behind, the log and any install, not the applies.
    fn save(&mut self) {
        self.disk
            .save(&self.state, std::mem::take(&mut self.replaced));
    }

    /// Switches the log to the staged snapshot `meta` and the data to its
    /// image (unsynced: the caller syncs).
    fn install(&mut self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        self.state.log.apply_snapshot(meta)?;
        self.state.data = decode_data(self.state.log.snapshot().data.clone())?;
        self.state.applied = meta.index;
        self.state.applied_term = Some(meta.term);
        self.replaced = true;
        Ok(())
    }

    /// The configuration as of the applied index.
    fn conf_state(&self) -> ConfState {
        self.state
            .log
            .initial_state()
            .expect("memory storage answers")
            .conf_state
    }

    /// Appends a ready's entries and writes its hard state, unsynced.
    fn write_entries(&mut self, ready: &Ready) -> Result<(), StorageError> {
        let log = &mut self.state.log;
        log.append(&ready.entries)?;
        if let Some(hard_state) = ready.hard_state {
            log.set_hard_state(hard_state)?;
        }
        Ok(())
    }

    fn hard_state(&self) -> HardState {
        self.state
            .log
            .initial_state()
            .map(|s| s.hard_state)
            .unwrap_or_default()
    }
}

impl Storage for MemKvStore {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        self.state.log.initial_state()
    }

    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.state.log.entries(low, high, max_bytes)
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        self.state.log.term(index)
    }

    fn first_index(&self) -> LogIndex {
        self.state.log.first_index()
    }

    fn last_index(&self) -> LogIndex {
        self.state.log.last_index()
    }

    fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError> {
        self.state.log.snapshot_meta()
    }

    fn snapshot_chunk(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        max_bytes: u64,
    ) -> Result<SnapshotChunk, StorageError> {
        self.state.log.snapshot_chunk(meta, offset, max_bytes)
    }
}

impl LogStore for MemKvStore {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.state.log.append(entries)?;
        self.save();
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: HardState) -> Result<(), StorageError> {
        self.state.log.set_hard_state(hard_state)?;
        self.save();
        Ok(())
    }

    fn set_conf_state(&mut self, conf_state: ConfState) -> Result<(), StorageError> {
        self.state.log.set_conf_state(conf_state)?;
        self.save();
        Ok(())
    }

    fn create_snapshot(
        &mut self,
        index: LogIndex,
        conf_state: ConfState,
        data: Bytes,
    ) -> Result<(), StorageError> {
        self.state.log.create_snapshot(index, conf_state, data)?;
        self.save();
        Ok(())
    }

    fn stage_snapshot_chunk(
        &mut self,
        meta: &SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), StorageError> {
        self.state.log.stage_snapshot_chunk(meta, offset, data)?;
        self.save();
        Ok(())
    }

    fn apply_snapshot(&mut self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        self.install(meta)?;
        self.save();
        Ok(())
    }

    /// One atomic write per ready, synced when it promises something
    /// (as `RocksStorage` does).
    fn persist_ready(&mut self, ready: &Ready) -> Result<(), StorageError> {
        let syncs = KvStore::must_sync(self, ready);
        let log = &mut self.state.log;
        for chunk in &ready.snapshot_chunks {
            log.stage_snapshot_chunk(&chunk.meta, chunk.offset, &chunk.data)?;
        }
        if let Some(meta) = &ready.snapshot {
            self.install(meta)?;
        }
        self.write_entries(ready)?;
        if syncs {
            self.save();
        }
        Ok(())
    }

    /// Written, not saved: a crash before the next sync or synced write
    /// loses it (and every later one), as the segmented log's recovery
    /// cuts unsynced writes from the end.
    fn write_ready_unsynced(&mut self, ready: &Ready) -> Result<(), StorageError> {
        if ready.has_snapshot_data() {
            return Err(StorageError::Invalid(
                "a ready with snapshot data is persisted with a sync".into(),
            ));
        }
        self.write_entries(ready)
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.save();
        Ok(())
    }

    fn compact(&mut self, index: LogIndex) -> Result<(), StorageError> {
        self.state.log.compact(index)
    }
}

impl KvStore for MemKvStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.state.data.get(key).cloned())
    }

    fn scan(&self, start: &[u8], limit: usize) -> Result<Vec<KeyValue>, StorageError> {
        Ok(self
            .state
            .data
            .range(start.to_vec()..)
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn apply(
        &mut self,
        writes: &[DataWrite<'_>],
        applied: LogIndex,
        conf_state: Option<&ConfState>,
    ) -> Result<(), StorageError> {
        if applied < self.state.applied {
            return Err(StorageError::Invalid(format!(
                "applied index going back from {} to {applied}",
                self.state.applied
            )));
        }
        for write in writes {
            match write {
                DataWrite::Put(key, value) => {
                    self.state.data.insert(key.to_vec(), value.to_vec());
                }
                DataWrite::Delete(key) => {
                    self.state.data.remove(*key);
                }
                DataWrite::DeleteRange(from, to) => {
                    let doomed: Vec<Vec<u8>> = self
                        .state
                        .data
                        .range(from.to_vec()..to.to_vec())
                        .map(|(key, _)| key.clone())
                        .collect();
                    for key in doomed {
                        self.state.data.remove(&key);
                    }
                }
            }
        }
        self.state.applied = applied;
        self.state.applied_term = self.state.log.term(applied).ok();
        if let Some(conf) = conf_state {
            // Recorded with the apply, unsynced, as RocksStorage does.
            self.state.log.set_conf_state(conf.clone())?;
        }
        Ok(())
    }

    fn applied_index(&self) -> LogIndex {
        self.state.applied
    }

    fn must_sync(&self, ready: &Ready) -> bool {
        ready.makes_promises(&self.hard_state())
    }

    fn snapshot(
        &mut self,
        conf_state: ConfState,
        _background: bool,
    ) -> Result<SnapshotStarted, StorageError> {
        let applied = self.state.applied;
        let data = encode_data(&self.state.data);
        self.create_snapshot(applied, conf_state, data)?;
        Ok(SnapshotStarted::Taken(applied))
    }

    fn poll_snapshot(&mut self) -> Option<LogIndex> {
        None
    }

    fn snapshot_copying(&self) -> bool {
        false
    }

    fn snapshot_bytes(&self) -> u64 {
        self.state.log.snapshot().data.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_data_round_trips_and_cut_data_is_refused() {
        let mut data = BTreeMap::new();
        data.insert(b"a".to_vec(), b"1".to_vec());
        data.insert(b"bb".to_vec(), Vec::new());
        let encoded = encode_data(&data);
        assert_eq!(decode_data(encoded.clone()).unwrap(), data);
        for cut in 1..encoded.len() {
            assert!(decode_data(encoded.slice(..cut)).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_crash_keeps_only_what_was_synced() {
        let disk = Disk::default();
        let mut store = MemKvStore::open(&disk).0;
        store
            .restore_snapshot(&dr_raft::Snapshot::bootstrap(ConfState {
                voters: vec![1],
                ..ConfState::default()
            }))
            .unwrap();
        KvStore::apply(&mut store, &[DataWrite::Put(b"k", b"v")], 1, None).unwrap();
        assert_eq!(store.get(b"k").unwrap(), Some(b"v".to_vec()));
        let reopened = MemKvStore::open(&disk).0;
        assert_eq!(
            reopened.get(b"k").unwrap(),
            None,
            "the apply was not synced"
        );
        assert_eq!(reopened.last_index(), 1, "the bootstrap was");
    }

    fn bootstrapped(disk: &Disk) -> MemKvStore {
        let mut store = MemKvStore::open(disk).0;
        store
            .restore_snapshot(&dr_raft::Snapshot::bootstrap(ConfState {
                voters: vec![1, 2, 3],
                ..ConfState::default()
            }))
            .unwrap();
        store
    }

    fn ready(from: LogIndex, to: LogIndex, term: Term) -> Ready {
        Ready {
            entries: dr_raft::conformance::entries(from, to, term),
            hard_state: Some(HardState {
                term,
                vote: Some(1),
                commit: to,
            }),
            ..Ready::default()
        }
    }

    #[test]
    fn unsynced_writes_are_lost_at_a_crash_until_a_sync() {
        let disk = Disk::default();
        let mut store = bootstrapped(&disk);
        store.persist_ready(&ready(2, 5, 2)).unwrap();
        store.write_ready_unsynced(&ready(6, 9, 2)).unwrap();
        assert_eq!(store.last_index(), 9, "read back at once");
        assert_eq!(MemKvStore::open(&disk).0.last_index(), 5, "lost at a crash");
        LogStore::sync(&mut store).unwrap();
        assert_eq!(
            MemKvStore::open(&disk).0.last_index(),
            9,
            "kept once synced"
        );
    }

    #[test]
    fn a_state_machine_flushed_ahead_of_the_log_opens_as_a_snapshot() {
        let disk = Disk::default();
        let mut store = bootstrapped(&disk);
        store.persist_ready(&ready(2, 5, 2)).unwrap();
        store.write_ready_unsynced(&ready(6, 9, 3)).unwrap();
        KvStore::apply(&mut store, &[DataWrite::Put(b"k", b"v")], 8, None).unwrap();
        disk.flush_state_machine(&store);
        let (reopened, opened) = MemKvStore::open(&disk);
        assert_eq!(opened, Opened::AheadOfLog);
        assert_eq!(reopened.applied_index(), 8);
        assert_eq!((reopened.first_index(), reopened.last_index()), (9, 8));
        let meta = reopened.snapshot_meta().unwrap();
        assert_eq!((meta.index, meta.term), (8, 3));
        assert_eq!(meta.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(reopened.get(b"k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(
            decode_data(reopened.state.log.snapshot().data.clone()).unwrap(),
            reopened.state.data,
            "the snapshot holds the state"
        );
        let (again, opened) = MemKvStore::open(&disk);
        assert_eq!(
            opened,
            Opened::AsStored,
            "kept on the disk as it was adopted"
        );
        assert_eq!(again.snapshot_meta().unwrap().index, 8);
        // Flushed but not ahead: the log replays the rest.
        let disk = Disk::default();
        let mut store = bootstrapped(&disk);
        store.persist_ready(&ready(2, 5, 2)).unwrap();
        KvStore::apply(&mut store, &[DataWrite::Put(b"k", b"v")], 4, None).unwrap();
        disk.flush_state_machine(&store);
        let (reopened, opened) = MemKvStore::open(&disk);
        assert_eq!(opened, Opened::AsStored);
        assert_eq!((reopened.applied_index(), reopened.last_index()), (4, 5));
    }

    #[test]
    fn applies_kept_behind_reach_the_disk_only_when_flushed_or_installed() {
        let disk = Disk::applies_behind();
        let mut store = bootstrapped(&disk);
        store.persist_ready(&ready(2, 5, 2)).unwrap();
        KvStore::apply(&mut store, &[DataWrite::Put(b"k", b"1")], 3, None).unwrap();
        store.persist_ready(&ready(6, 7, 2)).unwrap();
        // The sync after the apply kept the log, not the apply.
        let (reopened, opened) = MemKvStore::open(&disk);
        assert_eq!(opened, Opened::AsStored);
        assert_eq!((reopened.applied_index(), reopened.last_index()), (1, 7));
        assert_eq!(reopened.get(b"k").unwrap(), None, "the apply is lost");
        assert_eq!(reopened.conf_state().voters, vec![1, 2, 3]);
        // Flushed: kept, with later syncs too.
        disk.flush_state_machine(&store);
        KvStore::apply(&mut store, &[DataWrite::Put(b"k", b"2")], 5, None).unwrap();
        LogStore::sync(&mut store).unwrap();
        let reopened = MemKvStore::open(&disk).0;
        assert_eq!(reopened.applied_index(), 3);
        assert_eq!(reopened.get(b"k").unwrap(), Some(b"1".to_vec()));
        // A snapshot at 5 and the log compacted past the flushed state:
        // rebuilt from the snapshot.
        KvStore::snapshot(&mut store, reopened.conf_state(), false).unwrap();
        LogStore::compact(&mut store, 5).unwrap();
        LogStore::sync(&mut store).unwrap();
        let (reopened, opened) = MemKvStore::open(&disk);
        assert_eq!(opened, Opened::BehindSnapshot);
        assert_eq!((reopened.applied_index(), reopened.first_index()), (5, 6));
        assert_eq!(reopened.get(b"k").unwrap(), Some(b"2".to_vec()));
        assert_eq!(MemKvStore::open(&disk).1, Opened::AsStored, "written back");
        // An install is written whole by its sync.
        let mut other = bootstrapped(&Disk::default());
        KvStore::apply(&mut other, &[DataWrite::Put(b"i", b"x")], 1, None).unwrap();
        other.persist_ready(&ready(2, 9, 3)).unwrap();
        KvStore::apply(&mut other, &[DataWrite::Put(b"i", b"y")], 9, None).unwrap();
        let conf = other.conf_state();
        KvStore::snapshot(&mut other, conf, false).unwrap();
        let snapshot = dr_raft::Snapshot {
            meta: other.snapshot_meta().unwrap(),
            data: other.state.log.snapshot().data.clone(),
        };
        let disk = Disk::applies_behind();
        let mut store = bootstrapped(&disk);
        store.restore_snapshot(&snapshot).unwrap();
        let reopened = MemKvStore::open(&disk).0;
        assert_eq!(reopened.applied_index(), 9);
        assert_eq!(reopened.get(b"i").unwrap(), Some(b"y".to_vec()));
    }
}
