//! What the store's tests share: a temporary directory removed on drop
//! (the `tempfile` crate would do, but as a dev-dependency it changes the
//! feature set RocksDB's build script is compiled with, and every test
//! build then compiles RocksDB a second time), and a snapshot sent from
//! one store to another in chunks.

#![allow(unreachable_pub, dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use dr_codec::message::ConfState;
use dr_codec::message::SnapshotMeta;
use dr_raft::{LogStore, Ready, StagedChunk, Storage, StorageError};
use dr_storage::{RocksStorage, StateMachine, StoreOptions};

/// The chunk size [`transfer`] sends.
pub const CHUNK_BYTES: u64 = 64 << 10;

pub struct TestDir(PathBuf);

impl TestDir {
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "dr-storage-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends `meta`'s snapshot from `source` to `target` in chunks, the last
/// one in the ready that also switches, as the consensus core hands them
/// out.
pub fn transfer(
    source: &RocksStorage,
    target: &mut RocksStorage,
    meta: &SnapshotMeta,
) -> Result<(), StorageError> {
    let mut offset = 0;
    loop {
        let chunk = source.snapshot_chunk(meta, offset, CHUNK_BYTES)?;
        let staged = StagedChunk {
            meta: meta.clone(),
            offset,
            data: chunk.data.clone(),
        };
        offset += chunk.data.len() as u64;
        let ready = Ready {
            snapshot_chunks: vec![staged],
            snapshot: chunk.done.then(|| meta.clone()),
            ..Ready::default()
        };
        target.persist_ready(&ready)?;
        if chunk.done {
            return Ok(());
        }
    }
}

/// A store that is its own state machine, with a read mirror of
/// `read_mirror_bytes` and applies kept behind up to `write_behind_bytes`.
pub fn open_state_machine(
    dir: &TestDir,
    read_mirror_bytes: usize,
    write_behind_bytes: usize,
) -> RocksStorage {
    let options = StoreOptions {
        read_mirror_bytes,
        write_behind_bytes,
        ..StoreOptions::default()
    };
    RocksStorage::open_with(dir.path(), StateMachine::DataFamily, options).expect("store opens")
}

/// A one-voter configuration.
pub fn single_voter() -> ConfState {
    ConfState {
        voters: vec![1],
        ..ConfState::default()
    }
}
