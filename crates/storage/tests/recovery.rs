//! What survives a close and reopen, what a damaged or foreign store
//! gives, and snapshots larger than their chunks.

mod support;

use bytes::Bytes;
use dr_codec::message::{ConfState, SnapshotMeta};
use dr_raft::conformance::entries;
use dr_raft::{HardState, LogStore, Ready, StagedChunk, Storage};
use dr_storage::options::{CF_DATA, CF_META, CF_RAFT_LOG, CF_RAFT_STATE};
use dr_storage::{DataWrite, LogKind, OpenError, RocksStorage, StateMachine, StoreOptions};
use support::TestDir;

fn raw_db(path: &std::path::Path) -> rocksdb::DB {
    let mut options = rocksdb::Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    rocksdb::DB::open_cf(
        &options,
        path,
        [CF_RAFT_LOG, CF_RAFT_STATE, CF_DATA, CF_META],
    )
    .expect("raw open")
}

/// A store keeping its log in RocksDB's column family (the tests that
/// damage that family's records).
fn rocksdb_log_store(path: &std::path::Path) -> RocksStorage {
    let options = StoreOptions {
        log: LogKind::RocksDb,
        ..StoreOptions::default()
    };
    RocksStorage::open_with(path, StateMachine::External, options).unwrap()
}

fn conf(voters: &[u64]) -> ConfState {
    ConfState {
        voters: voters.to_vec(),
        ..ConfState::default()
    }
}

#[test]
fn everything_persisted_survives_a_reopen() {
    let dir = TestDir::new();
    let hard_state = HardState {
        term: 3,
        vote: Some(2),
        commit: 4,
    };
    {
        let mut store = RocksStorage::open(dir.path(), StateMachine::External).unwrap();
        let ready = Ready {
            entries: entries(1, 6, 3),
            hard_state: Some(hard_state),
            ..Ready::default()
        };
        store.persist_ready(&ready).unwrap();
        store
            .apply(
                &[DataWrite::Put(b"a", b"1"), DataWrite::Put(b"b", b"2")],
                4,
                Some(&conf(&[1, 2])),
            )
            .unwrap();
        store.apply(&[DataWrite::Delete(b"a")], 4, None).unwrap();
        store
            .create_snapshot(4, conf(&[1, 2]), Bytes::from_static(b"image"))
            .unwrap();
        store.compact(3).unwrap();
    }
    let store = RocksStorage::open(dir.path(), StateMachine::External).unwrap();
    let initial = store.initial_state().unwrap();
    assert_eq!(initial.hard_state, hard_state);
    assert_eq!(initial.conf_state, conf(&[1, 2]));
    assert_eq!((store.first_index(), store.last_index()), (4, 6));
    assert_eq!(store.term(3), Ok(3), "the compaction point's term");
    assert_eq!(store.entries(4, 7, u64::MAX), Ok(entries(4, 6, 3)));
    assert_eq!(store.applied_index(), 4);
    assert_eq!(store.get(b"a").unwrap(), None);
    assert_eq!(store.get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
    let meta = store.snapshot_meta().unwrap();
    assert_eq!((meta.index, meta.term), (4, 3));
    assert_eq!(store.snapshot_chunk(&meta, 0, 100).unwrap().data, "image");
}

#[test]
fn a_damaged_log_entry_is_reported_with_its_index() {
    let dir = TestDir::new();
    {
        let mut store = rocksdb_log_store(dir.path());
        store.append(&entries(1, 5, 1)).unwrap();
    }
    {
        let db = raw_db(dir.path());
        let log = db.cf_handle(CF_RAFT_LOG).unwrap();
        let mut value = db.get_cf(log, 3u64.to_be_bytes()).unwrap().unwrap();
        let last = value.len() - 1;
        value[last] ^= 0x01;
        db.put_cf(log, 3u64.to_be_bytes(), value).unwrap();
    }
    match RocksStorage::open(dir.path(), StateMachine::External) {
        Err(OpenError::Corrupt(what)) => assert!(what.contains("entry 3"), "{what}"),
        Err(other) => panic!("expected a corruption report, got {other}"),
        Ok(_) => panic!("a damaged entry went unnoticed"),
    }
}

#[test]
fn a_missing_entry_and_a_damaged_record_are_reported() {
    let dir = TestDir::new();
    {
        let mut store = rocksdb_log_store(dir.path());
        store.append(&entries(1, 5, 1)).unwrap();
        store
            .set_hard_state(HardState {
                term: 1,
                vote: None,
                commit: 2,
            })
            .unwrap();
    }
    {
        let db = raw_db(dir.path());
        db.delete_cf(db.cf_handle(CF_RAFT_LOG).unwrap(), 2u64.to_be_bytes())
            .unwrap();
    }
    let error = RocksStorage::open(dir.path(), StateMachine::External)
        .err()
        .expect("a gap is an error");
    assert!(
        error.to_string().contains("entry 3 where 2 was expected"),
        "{error}"
    );
    {
        let db = raw_db(dir.path());
        let state = db.cf_handle(CF_RAFT_STATE).unwrap();
        db.put_cf(state, b"hard_state", b"garbage!").unwrap();
    }
    let error = RocksStorage::open(dir.path(), StateMachine::External)
        .err()
        .expect("a damaged record is an error");
    assert!(error.to_string().contains("hard state"), "{error}");
}

#[test]
fn foreign_and_future_stores_are_refused() {
    let dir = TestDir::new();
    {
        let db = raw_db(dir.path());
        db.put_cf(db.cf_handle(CF_DATA).unwrap(), b"someone else's", b"data")
            .unwrap();
    }
    assert_eq!(
        RocksStorage::open(dir.path(), StateMachine::External).err(),
        Some(OpenError::NotADrStore)
    );
    let dir = TestDir::new();
    drop(RocksStorage::open(dir.path(), StateMachine::External).unwrap());
    {
        let db = raw_db(dir.path());
        let mut record = 9u64.to_le_bytes().to_vec();
        record.extend_from_slice(&dr_simd::crc32c(&record).to_le_bytes());
        db.put_cf(db.cf_handle(CF_META).unwrap(), b"format_version", record)
            .unwrap();
    }
    assert_eq!(
        RocksStorage::open(dir.path(), StateMachine::External).err(),
        Some(OpenError::FormatVersion {
            found: 9,
            expected: dr_storage::FORMAT_VERSION
        })
    );
}

/// Deterministic bytes that make misplaced chunks visible.
fn image(len: usize) -> Bytes {
    (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>().into()
}

#[test]
fn a_snapshot_larger_than_its_chunks_travels_between_stores() {
    let (source_dir, target_dir) = (TestDir::new(), TestDir::new());
    let data = image(3 * dr_storage::SNAPSHOT_RECORD_BYTES + 12_345);
    let mut source = RocksStorage::open(source_dir.path(), StateMachine::External).unwrap();
    source.append(&entries(1, 10, 2)).unwrap();
    source
        .create_snapshot(8, conf(&[1, 2, 3]), data.clone())
        .unwrap();
    let meta = source.snapshot_meta().unwrap();

    let mut target = RocksStorage::open(target_dir.path(), StateMachine::External).unwrap();
    target.append(&entries(1, 3, 1)).unwrap();
    let chunk_bytes = 700_001;
    let mut offset = 0;
    loop {
        let chunk = source.snapshot_chunk(&meta, offset, chunk_bytes).unwrap();
        assert!(chunk.data.len() as u64 <= chunk_bytes);
        let ready = Ready {
            snapshot_chunks: vec![StagedChunk {
                meta: meta.clone(),
                offset,
                data: chunk.data.clone(),
            }],
            snapshot: chunk.done.then(|| meta.clone()),
            ..Ready::default()
        };
        target.persist_ready(&ready).unwrap();
        offset += chunk.data.len() as u64;
        if chunk.done {
            break;
        }
        assert_eq!(target.last_index(), 3, "staging leaves the log alone");
    }
    drop(target);
    let target = RocksStorage::open(target_dir.path(), StateMachine::External).unwrap();
    assert_eq!(target.snapshot_meta().unwrap(), meta);
    assert_eq!((target.first_index(), target.last_index()), (9, 8));
    let copy = target.snapshot_chunk(&meta, 0, u64::MAX).unwrap();
    assert!(copy.done);
    assert_eq!(copy.data, data);
}

#[test]
fn an_interrupted_install_leaves_the_old_state_whole() {
    let dir = TestDir::new();
    let old = image(1000);
    {
        let mut store = RocksStorage::open(dir.path(), StateMachine::External).unwrap();
        store.append(&entries(1, 5, 1)).unwrap();
        store.create_snapshot(4, conf(&[1]), old.clone()).unwrap();
        let incoming = SnapshotMeta {
            index: 50,
            term: 7,
            conf_state: conf(&[1, 2]),
        };
        store
            .stage_snapshot_chunk(&incoming, 0, &image(5000))
            .unwrap();
        // The process dies before the last chunk and the switch.
    }
    let store = RocksStorage::open(dir.path(), StateMachine::External).unwrap();
    let meta = store.snapshot_meta().unwrap();
    assert_eq!(meta.index, 4);
    assert_eq!(store.snapshot_chunk(&meta, 0, u64::MAX).unwrap().data, old);
    assert_eq!((store.first_index(), store.last_index()), (1, 5));
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .unwrap()
        .filter_map(|entry| entry.ok()?.metadata().ok())
        .filter(|metadata| metadata.is_file())
        .map(|metadata| metadata.len())
        .sum()
}

#[test]
fn compaction_keeps_disk_use_bounded_in_a_long_run() {
    // 576 MiB of entries through the log, nine times the log's memtable,
    // snapshotting and compacting every 4096 entries as a node would: the
    // directory stays within a couple of memtables and WAL files, however
    // much is written.
    const ENTRY_BYTES: usize = 4096;
    const ENTRIES: u64 = 144 * 1024;
    const EVERY: u64 = 4096;
    let dir = TestDir::new();
    let mut store = RocksStorage::open(dir.path(), StateMachine::DataFamily).unwrap();
    let payload = Bytes::from(vec![7u8; ENTRY_BYTES]);
    let mut largest = 0;
    for first in (1..=ENTRIES).step_by(256) {
        let batch: Vec<_> = (first..first + 256)
            .map(|index| dr_codec::message::Entry {
                term: 1,
                index,
                kind: dr_codec::message::EntryKind::Normal,
                payload: payload.clone(),
            })
            .collect();
        let last = first + 255;
        store
            .persist_ready(&Ready {
                entries: batch,
                hard_state: Some(HardState {
                    term: 1,
                    vote: Some(1),
                    commit: last,
                }),
                ..Ready::default()
            })
            .unwrap();
        let key = (last % 1000).to_be_bytes();
        store
            .apply(&[DataWrite::Put(&key, b"v")], last, None)
            .unwrap();
        if last % EVERY == 0 {
            store
                .create_snapshot(last, conf(&[1]), Bytes::new())
                .unwrap();
            store.compact(last - 1024).unwrap();
            largest = largest.max(dir_bytes(dir.path()));
        }
    }
    let written = ENTRIES * ENTRY_BYTES as u64;
    println!(
        "wrote {} MiB, the directory peaked at {} MiB",
        written >> 20,
        largest >> 20
    );
    assert!(
        largest < written / 2,
        "disk use {largest} grows with the {written} bytes written"
    );
    // Compactions stop at the state RocksDB holds on disk (the applies
    // skip its WAL); a few hot keys never fill a memtable, so the store
    // has RocksDB flush when four compactions in a row find that state
    // unmoved: the log stays within about five snapshots of where it was
    // asked to go.
    let asked = ENTRIES - 1024 + 1;
    let first = store.first_index();
    assert!(
        first <= asked && first + 5 * EVERY >= asked,
        "compacted to {first}, asked {asked}"
    );
}
