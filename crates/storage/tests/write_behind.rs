//! Applies kept behind (`StoreOptions::write_behind_bytes`): reads and
//! scans see every applied write at once, merged with RocksDB's; a
//! checkpoint runs when the writes kept behind pass the bound, and before
//! a snapshot, a write that goes through, a backup and a close; an
//! install drops them. (Kills at random points: `crash.rs`, whose writer
//! keeps applies behind up to 1 MiB.)

mod support;

use std::collections::BTreeMap;

use bytes::Bytes;
use dr_raft::conformance::entries;
use dr_raft::{LogStore, Storage, StorageError};
use dr_storage::{DataWrite, RocksStorage, StateMachine, StoreOptions};
use proptest::prelude::*;
use support::{TestDir, transfer};

use support::single_voter as conf;

fn open(dir: &TestDir, write_behind_bytes: usize, read_mirror_bytes: usize) -> RocksStorage {
    support::open_state_machine(dir, read_mirror_bytes, write_behind_bytes)
}

fn key(k: u8) -> Vec<u8> {
    format!("k{k:02}").into_bytes()
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u8),
    Delete(u8),
    DeleteRange(u8, u8),
    /// An apply that changes the configuration (goes through).
    Conf(u8, u8),
    Reopen,
    Snapshot,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0u8..50, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        4 => (0u8..50).prop_map(Op::Delete),
        1 => (0u8..50, 0u8..50).prop_map(|(a, b)| Op::DeleteRange(a.min(b), a.max(b))),
        1 => (0u8..50, any::<u8>()).prop_map(|(k, v)| Op::Conf(k, v)),
        1 => Just(Op::Reopen),
        1 => Just(Op::Snapshot),
    ]
}

fn value(v: u8) -> Vec<u8> {
    vec![v; 20 + usize::from(v % 7)]
}

/// Every point read and a scan page from every start agree with `model`.
fn check(store: &RocksStorage, model: &BTreeMap<Vec<u8>, Vec<u8>>, limit: usize) {
    let reader = store.reader();
    for k in 0u8..52 {
        let expected = model.get(&key(k)).cloned();
        assert_eq!(store.get(&key(k)).unwrap(), expected, "get {k}");
        assert_eq!(reader.get(&key(k)).unwrap(), expected, "reader get {k}");
        let start = key(k);
        let page: Vec<_> = model
            .range(start.clone()..)
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(store.scan(&start, limit).unwrap(), page, "scan from {k}");
    }
    let all: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(store.scan(b"", usize::MAX).unwrap(), all, "whole scan");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// With no write-behind, a tiny bound (a checkpoint every few
    /// applies) and a large one (none but the forced ones), with and
    /// without a mirror of clean records: the same answers as a model.
    #[test]
    fn reads_and_scans_see_every_applied_write(
        ops in prop::collection::vec(op(), 1..120),
        bound in prop::sample::select(vec![0usize, 200, 1 << 20]),
        mirror in prop::sample::select(vec![0usize, 1 << 20]),
        limit in 1usize..8,
    ) {
        let dir = TestDir::new();
        let mut store = open(&dir, bound, mirror);
        store.bootstrap(conf()).unwrap();
        let mut model = BTreeMap::new();
        for op in ops {
            let index = store.applied_index() + 1;
            store.append(&entries(index, index, 1)).unwrap();
            let (k1, k2) = match op {
                Op::Put(k, _) | Op::Delete(k) | Op::Conf(k, _) => (key(k), Vec::new()),
                Op::DeleteRange(a, b) => (key(a), key(b)),
                Op::Reopen | Op::Snapshot => (Vec::new(), Vec::new()),
            };
            let mut conf_change = None;
            let v;
            let writes: Vec<DataWrite<'_>> = match op {
                Op::Put(k, x) => {
                    v = value(x);
                    model.insert(key(k), v.clone());
                    vec![DataWrite::Put(&k1, &v)]
                }
                Op::Conf(k, x) => {
                    v = value(x);
                    model.insert(key(k), v.clone());
                    conf_change = Some(conf());
                    vec![DataWrite::Put(&k1, &v)]
                }
                Op::Delete(k) => {
                    model.remove(&key(k));
                    vec![DataWrite::Delete(&k1)]
                }
                Op::DeleteRange(..) => {
                    model.retain(|k, _| *k < k1 || *k >= k2);
                    vec![DataWrite::DeleteRange(&k1, &k2)]
                }
                Op::Reopen => {
                    drop(store);
                    store = open(&dir, bound, mirror);
                    // Closed in order: the applied index came back with
                    // the data it goes with (nothing to replay).
                    prop_assert_eq!(store.applied_index(), index - 1);
                    Vec::new()
                }
                Op::Snapshot => {
                    store.create_snapshot(index - 1, conf(), Bytes::new()).ok();
                    Vec::new()
                }
            };
            store.apply(&writes, index, conf_change.as_ref()).unwrap();
            // Dirty up to twice the bound while a checkpoint is in flight,
            // and as much frozen, each give or take one apply.
            prop_assert!(store.write_behind_bytes() <= 4 * bound + 400);
            check(&store, &model, limit);
        }
        drop(store);
        let store = open(&dir, bound, mirror);
        check(&store, &model, limit);
    }
}

fn put_all(store: &mut RocksStorage, index: u64, keys: std::ops::Range<u8>, v: u8) {
    store.append(&entries(index, index, 1)).unwrap();
    let keys: Vec<_> = keys.map(key).collect();
    let v = value(v);
    let writes: Vec<_> = keys.iter().map(|k| DataWrite::Put(k, &v)).collect();
    store.apply(&writes, index, None).unwrap();
}

#[test]
fn writes_stay_behind_until_the_bound_then_a_checkpoint_takes_them() {
    let dir = TestDir::new();
    let mut store = open(&dir, 4096, 1 << 20);
    store.bootstrap(conf()).unwrap();
    put_all(&mut store, 2, 0..10, 1);
    let held = store.write_behind_bytes();
    assert!(held > 0, "kept behind");
    // Writing the same keys again costs no more.
    // (Values of the same length: 8 % 7 == 1 % 7.)
    put_all(&mut store, 3, 0..10, 8);
    assert_eq!(store.write_behind_bytes(), held, "overwrites coalesce");
    // Past the bound, checkpoints run on their own thread: what is held
    // stays within four times the bound and falls when one is settled.
    let mut index = 4;
    let mut fell = false;
    let mut before = store.write_behind_bytes();
    while !fell {
        put_all(&mut store, index, 0..50, index as u8);
        let now = store.write_behind_bytes();
        assert!(now <= 4 * 4096 + 8192, "{now} bytes held");
        fell = now < before;
        before = now;
        index += 1;
        assert!(index < 1000, "a checkpoint was settled");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let last = value(index as u8 - 1);
    assert_eq!(store.get(&key(7)).unwrap(), Some(last.clone()));
    assert_eq!(
        store.scan(&key(7), 1).unwrap(),
        vec![(key(7), last.clone())]
    );
    // Closed in order and opened again: all of it, nothing to replay.
    drop(store);
    let store = open(&dir, 4096, 1 << 20);
    assert_eq!(store.applied_index(), index - 1);
    assert_eq!(store.get(&key(7)).unwrap(), Some(last));
}

#[test]
fn a_background_snapshot_copies_the_writes_kept_behind() {
    let dir = TestDir::new();
    let mut store = open(&dir, 1 << 20, 1 << 20);
    store.bootstrap(conf()).unwrap();
    put_all(&mut store, 2, 0..20, 1);
    assert!(store.write_behind_bytes() > 0);
    // Nothing checkpointed since the bootstrap snapshot: the first try
    // starts a checkpoint (on its thread) and is postponed; a later one
    // copies the state at the checkpoint's index.
    let mut tries = 0;
    let index = loop {
        match store.begin_snapshot(conf()) {
            Ok(index) => break index,
            Err(error) => assert_eq!(error, StorageError::SnapshotTemporarilyUnavailable),
        }
        tries += 1;
        assert!(tries < 1000, "the checkpoint ends");
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    assert!(tries > 0, "postponed at first");
    assert_eq!(index, 2);
    // Written after the copy began: not in the snapshot.
    put_all(&mut store, 3, 0..5, 2);
    while store.poll_snapshot().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let meta = store.snapshot_meta().unwrap();
    assert_eq!(meta.index, index);
    let target_dir = TestDir::new();
    // The target has writes kept behind of its own, past a small bound (a
    // checkpoint of them may be in flight): the install waits for it and
    // drops them.
    let mut target = open(&target_dir, 256, 1 << 20);
    target.bootstrap(conf()).unwrap();
    put_all(&mut target, 2, 30..40, 9);
    put_all(&mut target, 3, 40..50, 9);
    assert!(target.write_behind_bytes() > 0);
    transfer(&store, &mut target, &meta).expect("transfer");
    assert_eq!(target.write_behind_bytes(), 0);
    let expected: Vec<_> = (0..20).map(|k| (key(k), value(1))).collect();
    assert_eq!(target.scan(b"", usize::MAX).unwrap(), expected);
    assert_eq!(target.get(&key(35)).unwrap(), None);
}

#[test]
fn a_store_with_its_log_in_rocksdb_writes_through() {
    let dir = TestDir::new();
    let options = StoreOptions {
        log: dr_storage::LogKind::RocksDb,
        write_behind_bytes: 1 << 20,
        ..StoreOptions::default()
    };
    let mut store = RocksStorage::open_with(dir.path(), StateMachine::DataFamily, options).unwrap();
    store.bootstrap(conf()).unwrap();
    put_all(&mut store, 2, 0..10, 1);
    assert_eq!(store.write_behind_bytes(), 0);
}

#[test]
fn a_scan_reads_what_a_finished_checkpoint_settled_before_its_owner_saw_it() {
    let dir = TestDir::new();
    let mut store = open(&dir, 4096, 1 << 20);
    store.bootstrap(conf()).unwrap();
    put_all(&mut store, 2, 0..10, 1);
    // Past the bound in one apply: a checkpoint starts, with a delete.
    store.append(&entries(3, 3, 1)).unwrap();
    let (keys, v) = ((0u8..50).map(key).collect::<Vec<_>>(), value(3));
    let mut writes: Vec<_> = keys.iter().map(|k| DataWrite::Put(k, &v)).collect();
    writes[5] = DataWrite::Delete(&keys[5]);
    store.apply(&writes, 3, None).unwrap();
    // Its thread settles the records itself; the store (no apply since)
    // still counts the checkpoint in flight, and scans merge its keys.
    let started = std::time::Instant::now();
    while store.write_behind_bytes() > 0 {
        assert!(started.elapsed().as_secs() < 60, "the checkpoint settles");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let expected: Vec<_> = (0u8..50)
        .filter(|&k| k != 5)
        .map(|k| (key(k), v.clone()))
        .collect();
    assert_eq!(store.scan(&key(0), 100).unwrap(), expected);
    assert_eq!(store.scan(&key(4), 2).unwrap(), expected[4..6].to_vec());
    assert_eq!(store.get(&key(5)).unwrap(), None);
}
