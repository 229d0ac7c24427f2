//! Damaged files give clear errors: a flipped byte in a table file, in
//! the write-ahead log or in a segment of the raft log of a copy of a
//! store must make opening or reading fail with an error, never panic and
//! never return wrong data.

mod support;

use std::path::{Path, PathBuf};

use dr_raft::conformance::entries;
use dr_raft::{HardState, LogStore, Ready, Storage};
use dr_storage::options::{CF_DATA, CF_META, CF_RAFT_LOG, CF_RAFT_STATE};
use dr_storage::{DataWrite, LogKind, RocksStorage, StateMachine, StoreOptions};
use support::TestDir;

const KEYS: usize = 2000;
const LOG_END: u64 = 200;

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:05}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    format!("value of {i}, padded").repeat(8).into_bytes()
}

/// A store with a log and data; flushed to table files when `flush`.
fn build_store(path: &Path, flush: bool, log: LogKind) {
    let options = StoreOptions {
        log,
        ..StoreOptions::default()
    };
    let mut store = RocksStorage::open_with(path, StateMachine::DataFamily, options).unwrap();
    for round in 0..20u64 {
        let first = round * 10 + 1;
        store
            .persist_ready(&Ready {
                entries: entries(first, first + 9, 1),
                hard_state: Some(HardState {
                    term: 1,
                    vote: Some(1),
                    commit: first + 9,
                }),
                ..Ready::default()
            })
            .unwrap();
        let keys: Vec<_> = (round as usize * 100..(round as usize + 1) * 100)
            .map(|i| (key(i), value(i)))
            .collect();
        let writes: Vec<_> = keys.iter().map(|(k, v)| DataWrite::Put(k, v)).collect();
        store.apply(&writes, first + 9, None).unwrap();
    }
    drop(store);
    if flush {
        let db = rocksdb::DB::open_cf(
            &rocksdb::Options::default(),
            path,
            [CF_RAFT_LOG, CF_RAFT_STATE, CF_DATA, CF_META],
        )
        .unwrap();
        for family in [CF_RAFT_LOG, CF_RAFT_STATE, CF_DATA, CF_META] {
            db.flush_cf(db.cf_handle(family).unwrap()).unwrap();
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with(suffix))
        .filter(|path| std::fs::metadata(path).unwrap().len() > 0)
        .collect();
    files.sort();
    files
}

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = at % bytes.len();
    bytes[at] ^= 0x5A;
    std::fs::write(path, bytes).unwrap();
}

/// Opens the damaged copy and reads everything back. Returns whether an
/// error reported the damage; without one, every acknowledged entry must
/// be in the log and every applied key there with its value (the flip hit
/// bytes nothing reads, or an unsynced apply at the very end, which the
/// log replays). Wrong or missing data without an error fails the test.
fn damage_is_reported(path: &Path) -> bool {
    let store = match RocksStorage::open(path, StateMachine::DataFamily) {
        Ok(store) => store,
        Err(error) => {
            assert!(!error.to_string().is_empty());
            return true;
        }
    };
    assert_eq!(
        store.last_index(),
        LOG_END,
        "acknowledged entries silently lost"
    );
    let mut reported = store.scan(b"", usize::MAX).is_err();
    let applied = store.applied_index();
    for i in 0..KEYS {
        let written_by = (i as u64 / 100 + 1) * 10;
        if written_by > applied {
            continue;
        }
        match store.get(&key(i)) {
            Ok(Some(found)) => assert_eq!(found, value(i), "wrong data for key {i}"),
            Ok(None) => panic!("key {i} silently lost"),
            Err(_) => reported = true,
        }
    }
    reported
}

#[test]
fn a_flipped_byte_in_a_table_file_is_an_error() {
    for log in [LogKind::Segments, LogKind::RocksDb] {
        flipped_table_bytes_are_reported(log);
    }
}

fn flipped_table_bytes_are_reported(log: LogKind) {
    let original = TestDir::new();
    build_store(original.path(), true, log);
    let tables = files_ending(original.path(), ".sst");
    assert!(!tables.is_empty(), "the flush wrote table files");
    let (mut cases, mut reported) = (0, 0);
    for table in &tables {
        let size = std::fs::metadata(table).unwrap().len() as usize;
        for fraction in [0.1, 0.5, 0.9] {
            let copy = TestDir::new();
            copy_dir(original.path(), copy.path());
            flip(
                &copy.path().join(table.file_name().unwrap()),
                (size as f64 * fraction) as usize,
            );
            reported += usize::from(damage_is_reported(copy.path()));
            cases += 1;
        }
    }
    assert!(cases >= 6);
    // Block checksums cover everything RocksDB reads; only a flip in bytes
    // nothing reads may pass, and then the data is intact.
    assert!(
        reported * 2 > cases,
        "only {reported} of {cases} flips reported"
    );
}

/// With the RocksDB log (the segmented log's stores write entries and
/// applies outside RocksDB's WAL: their damage is the segment test's).
#[test]
fn a_flipped_byte_in_the_write_ahead_log_is_an_error() {
    flipped_wal_bytes_are_reported(LogKind::RocksDb);
}

fn flipped_wal_bytes_are_reported(log: LogKind) {
    let original = TestDir::new();
    build_store(original.path(), false, log);
    let logs = files_ending(original.path(), ".log");
    let log = logs.last().expect("the writes are in a write-ahead log");
    let size = std::fs::metadata(log).unwrap().len() as usize;
    for fraction in [0.05, 0.3, 0.6, 0.95] {
        let copy = TestDir::new();
        copy_dir(original.path(), copy.path());
        flip(
            &copy.path().join(log.file_name().unwrap()),
            (size as f64 * fraction) as usize,
        );
        assert!(
            damage_is_reported(copy.path()),
            "a flip at {fraction} of the write-ahead log ({log:?} raft log) went unnoticed"
        );
    }
}

#[test]
fn a_flipped_byte_in_a_raft_log_segment_is_an_error() {
    let original = TestDir::new();
    build_store(original.path(), false, LogKind::Segments);
    let segments = files_ending(&original.path().join("raft-log"), ".seg");
    let segment = segments.last().expect("the log has a segment");
    // Where the batches end: the first 8-byte word after them is zeros
    // (the segment was zero-filled), and the last batch is left alone: a
    // damaged last batch looks like a write torn by a crash, which is
    // never acknowledged, and is cut (the documented limit, as etcd's).
    let bytes = std::fs::read(segment).unwrap();
    let end = bytes
        .chunks(8)
        .rposition(|word| word.iter().any(|b| *b != 0))
        .map(|at| (at + 1) * 8)
        .unwrap();
    let mut cases = 0;
    for fraction in [0.0, 0.02, 0.3, 0.6, 0.85] {
        let copy = TestDir::new();
        copy_dir(original.path(), copy.path());
        let at = (end as f64 * fraction) as usize;
        flip(
            &copy
                .path()
                .join("raft-log")
                .join(segment.file_name().unwrap()),
            at,
        );
        assert!(
            damage_is_reported(copy.path()),
            "a flip at byte {at} of {end} of the raft log went unnoticed"
        );
        cases += 1;
    }
    assert_eq!(cases, 5);
}
