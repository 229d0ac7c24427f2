//! The RocksDB store runs the same conformance suite as the in-memory one.

mod support;

use std::cell::Cell;

use dr_storage::{RocksStorage, StateMachine};
use support::TestDir;

#[test]
fn rocks_storage_conforms() {
    let base = TestDir::new();
    let next = Cell::new(0);
    dr_raft::conformance::run_all(|| {
        next.set(next.get() + 1);
        RocksStorage::open(
            base.path().join(next.get().to_string()),
            StateMachine::External,
        )
        .expect("a new store opens")
    });
}

#[test]
fn rocks_storage_conforms_after_reopening() {
    // Every check again, but each store is closed and reopened first, so
    // the recovery path (not just the cache) serves the checks' reads.
    let base = TestDir::new();
    let next = Cell::new(0);
    dr_raft::conformance::run_all(|| {
        next.set(next.get() + 1);
        let path = base.path().join(next.get().to_string());
        drop(RocksStorage::open(&path, StateMachine::External).expect("a new store opens"));
        RocksStorage::open(&path, StateMachine::External).expect("it reopens")
    });
}
