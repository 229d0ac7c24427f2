//! The in-memory store passes the storage conformance suite, and the suite
//! catches a store that breaks the contract (so it can fail at all).

use bytes::Bytes;
use dr_codec::message::{ConfState, Entry, LogIndex, SnapshotMeta, Term};
use dr_raft::conformance::{checks, run_all};
use dr_raft::{
    HardState, InitialState, LogStore, MemStorage, SnapshotChunk, Storage, StorageError,
};

#[test]
fn mem_storage_conforms() {
    run_all(MemStorage::new);
}

/// A store that forgets to truncate the conflicting suffix on append.
#[derive(Default)]
struct NoTruncation(MemStorage);

impl Storage for NoTruncation {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        self.0.initial_state()
    }
    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.0.entries(low, high, max_bytes)
    }
    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        self.0.term(index)
    }
    fn first_index(&self) -> LogIndex {
        self.0.first_index()
    }
    fn last_index(&self) -> LogIndex {
        self.0.last_index()
    }
    fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError> {
        self.0.snapshot_meta()
    }
    fn snapshot_chunk(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        max_bytes: u64,
    ) -> Result<SnapshotChunk, StorageError> {
        self.0.snapshot_chunk(meta, offset, max_bytes)
    }
}

impl LogStore for NoTruncation {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        // The bug: entries already present are kept instead of replaced.
        let fresh: Vec<Entry> = entries
            .iter()
            .filter(|entry| entry.index > self.0.last_index())
            .cloned()
            .collect();
        self.0.append(&fresh)
    }
    fn set_hard_state(&mut self, hard_state: HardState) -> Result<(), StorageError> {
        self.0.set_hard_state(hard_state)
    }
    fn set_conf_state(&mut self, conf_state: ConfState) -> Result<(), StorageError> {
        self.0.set_conf_state(conf_state)
    }
    fn create_snapshot(
        &mut self,
        index: LogIndex,
        conf_state: ConfState,
        data: Bytes,
    ) -> Result<(), StorageError> {
        self.0.create_snapshot(index, conf_state, data)
    }
    fn stage_snapshot_chunk(
        &mut self,
        meta: &SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), StorageError> {
        self.0.stage_snapshot_chunk(meta, offset, data)
    }
    fn apply_snapshot(&mut self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        self.0.apply_snapshot(meta)
    }
    fn compact(&mut self, index: LogIndex) -> Result<(), StorageError> {
        self.0.compact(index)
    }
}

#[test]
fn the_suite_catches_a_store_that_keeps_conflicting_entries() {
    let outcome = std::panic::catch_unwind(|| run_all(NoTruncation::default));
    let message = outcome.expect_err("the broken store must fail the suite");
    let message = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("an overlapping append replaces the suffix"),
        "{message}"
    );
}

#[test]
fn every_check_has_a_unique_name() {
    let names: Vec<&str> = checks::<MemStorage>()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), names.len());
}
