//! The RocksDB store runs the same conformance suite as the in-memory one,
//! with each kind of log: the segmented log with tiny segments (so the
//! suite's logs cross many segments, seals and recycled files) and the
//! RocksDB column family.

mod support;

use std::cell::Cell;

use dr_storage::{LogKind, RocksStorage, SEGMENT_BYTES_MIN, StateMachine, StoreOptions};
use support::TestDir;

fn options(log: LogKind) -> StoreOptions {
    StoreOptions {
        log,
        segment_bytes: SEGMENT_BYTES_MIN,
        ..StoreOptions::default()
    }
}

fn conforms(log: LogKind) {
    let base = TestDir::new();
    let next = Cell::new(0);
    dr_raft::conformance::run_all(|| {
        next.set(next.get() + 1);
        let store = RocksStorage::open_with(
            base.path().join(next.get().to_string()),
            StateMachine::External,
            options(log),
        )
        .expect("a new store opens");
        assert_eq!(store.log_kind(), log);
        store
    });
}

fn conforms_after_reopening(log: LogKind) {
    // Every check again, but each store is closed and reopened first, so
    // the recovery path (not just the cache) serves the checks' reads.
    let base = TestDir::new();
    let next = Cell::new(0);
    dr_raft::conformance::run_all(|| {
        next.set(next.get() + 1);
        let path = base.path().join(next.get().to_string());
        drop(
            RocksStorage::open_with(&path, StateMachine::External, options(log))
                .expect("a new store opens"),
        );
        // Reopened asking for the other kind: a store keeps its own.
        let other = match log {
            LogKind::Segments => LogKind::RocksDb,
            LogKind::RocksDb => LogKind::Segments,
        };
        let store = RocksStorage::open_with(&path, StateMachine::External, options(other))
            .expect("it reopens");
        assert_eq!(store.log_kind(), log);
        store
    });
}

#[test]
fn segmented_log_conforms() {
    conforms(LogKind::Segments);
}

#[test]
fn segmented_log_conforms_after_reopening() {
    conforms_after_reopening(LogKind::Segments);
}

#[test]
fn rocksdb_log_conforms() {
    conforms(LogKind::RocksDb);
}

#[test]
fn rocksdb_log_conforms_after_reopening() {
    conforms_after_reopening(LogKind::RocksDb);
}
