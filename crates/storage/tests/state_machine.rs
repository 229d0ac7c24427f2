//! A store that is its own state machine (`StateMachine::DataFamily`):
//! snapshots are copies of the `data` family at the applied index, travel
//! in chunks, and replace the receiver's data atomically.

mod support;

use bytes::Bytes;
use dr_codec::message::{ConfState, SnapshotMeta};
use dr_raft::conformance::entries;
use dr_raft::{LogStore, Ready, StagedChunk, Storage, StorageError};
use dr_storage::options::{CF_DATA, CF_META, CF_RAFT_LOG, CF_RAFT_STATE};
use dr_storage::{DataWrite, OpenError, ReadRefused, RocksStorage, StateMachine, StoreOptions};
use support::{CHUNK_BYTES, TestDir, transfer};

fn conf() -> ConfState {
    ConfState {
        voters: vec![1, 2, 3],
        ..ConfState::default()
    }
}

/// Applies written through: a background snapshot copies the state at
/// the applied index. (Kept behind, it copies the state at the last
/// checkpoint: `write_behind.rs`.)
fn open(dir: &TestDir) -> RocksStorage {
    let options = StoreOptions {
        write_behind_bytes: 0,
        ..StoreOptions::default()
    };
    RocksStorage::open_with(dir.path(), StateMachine::DataFamily, options).expect("store opens")
}

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:06}").into_bytes()
}

fn value(i: usize, round: usize) -> Vec<u8> {
    let mut value = format!("round {round} value {i} ").into_bytes();
    value.resize(1000, b'.');
    value
}

/// Logs entries up to `last` and applies `keys` puts (of round `round`)
/// at `last`.
fn fill(store: &mut RocksStorage, first: u64, last: u64, keys: usize, round: usize) {
    store.append(&entries(first, last, 2)).expect("append");
    let keys: Vec<Vec<u8>> = (0..keys).map(key).collect();
    let values: Vec<Vec<u8>> = (0..keys.len()).map(|i| value(i, round)).collect();
    let writes: Vec<DataWrite<'_>> = keys
        .iter()
        .zip(&values)
        .map(|(key, value)| DataWrite::Put(key, value))
        .collect();
    store.apply(&writes, last, Some(&conf())).expect("apply");
}

fn all_pairs(store: &RocksStorage) -> Vec<(Vec<u8>, Vec<u8>)> {
    store.scan(b"", usize::MAX).expect("scan")
}

#[test]
fn a_new_cluster_bootstraps_an_empty_state_machine_once() {
    let dir = TestDir::new();
    let mut store = open(&dir);
    store.bootstrap(conf()).expect("an empty store bootstraps");
    assert_eq!((store.first_index(), store.last_index()), (2, 1));
    assert_eq!(store.initial_state().expect("state").conf_state, conf());
    assert_eq!(store.applied_index(), 1);
    assert!(all_pairs(&store).is_empty());
    assert!(
        store.bootstrap(conf()).is_err(),
        "a second bootstrap is refused"
    );
    drop(store);
    let store = open(&dir);
    assert_eq!(store.initial_state().expect("state").conf_state, conf());
}

#[test]
fn a_state_larger_than_its_chunks_replaces_the_receivers_data() {
    let (source_dir, target_dir) = (TestDir::new(), TestDir::new());
    let mut source = open(&source_dir);
    fill(&mut source, 1, 10, 3000, 1);
    source
        .create_snapshot(10, conf(), Bytes::new())
        .expect("snapshot");
    let meta = source.snapshot_meta().unwrap();
    // The source moves on: the snapshot still holds the state at 10.
    source.append(&entries(11, 11, 2)).unwrap();
    source
        .apply(
            &[DataWrite::Put(b"late", b"x"), DataWrite::Delete(&key(5))],
            11,
            None,
        )
        .unwrap();

    let mut target = open(&target_dir);
    fill(&mut target, 1, 3, 10, 9);
    target
        .apply(&[DataWrite::Put(b"stray", b"gone")], 3, None)
        .unwrap();
    transfer(&source, &mut target, &meta).expect("transfer");

    let expected: Vec<_> = (0..3000).map(|i| (key(i), value(i, 1))).collect();
    assert_eq!(all_pairs(&target), expected, "exactly the state at 10");
    assert_eq!(target.applied_index(), 10);
    assert_eq!(target.snapshot_meta().unwrap(), meta);
    assert_eq!((target.first_index(), target.last_index()), (11, 10));
    drop(target);
    let target = open(&target_dir);
    assert_eq!(all_pairs(&target), expected, "after a reopen");
    // The receiver serves the same snapshot byte for byte.
    let mut offset = 0;
    loop {
        let mine = source.snapshot_chunk(&meta, offset, CHUNK_BYTES).unwrap();
        let theirs = target.snapshot_chunk(&meta, offset, CHUNK_BYTES).unwrap();
        assert_eq!(mine, theirs, "chunk at {offset}");
        offset += mine.data.len() as u64;
        if mine.done {
            break;
        }
    }
    assert!(offset > 2 * (1 << 20), "the stream spans several records");
}

#[test]
fn an_invalid_stream_is_refused_and_the_old_state_stays() {
    let dir = TestDir::new();
    let mut store = open(&dir);
    fill(&mut store, 1, 4, 20, 1);
    let before = all_pairs(&store);
    let meta = SnapshotMeta {
        index: 50,
        term: 7,
        conf_state: conf(),
    };
    let mut bytes = Vec::from(&b"DRKVSNP1"[..]);
    bytes.extend_from_slice(&[3, 0, 0, 0, 1, 0, 0, 0, b'a', b'b', b'c', b'v', 0, 0, 0, 0]);
    let ready = Ready {
        snapshot_chunks: vec![StagedChunk {
            meta: meta.clone(),
            offset: 0,
            data: Bytes::from(bytes),
        }],
        snapshot: Some(meta),
        ..Ready::default()
    };
    let error = store.persist_ready(&ready).expect_err("a bad checksum");
    assert!(
        matches!(&error, StorageError::Invalid(what) if what.contains("checksum")),
        "{error:?}"
    );
    assert_eq!(all_pairs(&store), before);
    assert_eq!(store.applied_index(), 4);
    assert_eq!(store.snapshot_meta().unwrap().index, 0);
    assert_eq!(store.last_index(), 4);
}

#[test]
fn an_install_cut_short_by_a_crash_is_finished_on_open() {
    let (source_dir, target_dir) = (TestDir::new(), TestDir::new());
    let mut source = open(&source_dir);
    fill(&mut source, 1, 6, 500, 1);
    source.create_snapshot(6, conf(), Bytes::new()).unwrap();
    let meta = source.snapshot_meta().unwrap();
    let mut target = open(&target_dir);
    transfer(&source, &mut target, &meta).unwrap();
    drop(target);
    // What a crash between the switch and the end of the install leaves:
    // the install marker, part of the data, and a key from before.
    {
        let mut options = rocksdb::Options::default();
        options.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(
            &options,
            target_dir.path(),
            [CF_RAFT_LOG, CF_RAFT_STATE, CF_DATA, CF_META],
        )
        .unwrap();
        let data = db.cf_handle(CF_DATA).unwrap();
        for i in 100..500 {
            db.delete_cf(data, key(i)).unwrap();
        }
        db.put_cf(data, b"from before", b"old").unwrap();
        db.put_cf(db.cf_handle(CF_META).unwrap(), b"data_install", b"6")
            .unwrap();
    }
    let target = open(&target_dir);
    let expected: Vec<_> = (0..500).map(|i| (key(i), value(i, 1))).collect();
    assert_eq!(all_pairs(&target), expected);
    assert_eq!(target.applied_index(), 6);
}

#[test]
fn snapshots_are_taken_at_the_applied_index_and_take_no_image() {
    let dir = TestDir::new();
    let mut store = open(&dir);
    fill(&mut store, 1, 8, 5, 1);
    store.append(&entries(9, 9, 2)).unwrap();
    assert!(matches!(
        store.create_snapshot(9, conf(), Bytes::new()),
        Err(StorageError::Invalid(_))
    ));
    assert!(matches!(
        store.create_snapshot(8, conf(), Bytes::from_static(b"image")),
        Err(StorageError::Invalid(_))
    ));
    store.create_snapshot(8, conf(), Bytes::new()).unwrap();
    assert_eq!(store.snapshot_meta().unwrap().index, 8);
}

#[test]
fn the_kind_of_state_machine_is_checked_on_open() {
    let dir = TestDir::new();
    drop(open(&dir));
    assert_eq!(
        RocksStorage::open(dir.path(), StateMachine::External).err(),
        Some(OpenError::StateMachine {
            found: StateMachine::DataFamily,
            requested: StateMachine::External,
        })
    );
}

#[test]
fn keys_over_the_limit_are_refused_whole() {
    let dir = TestDir::new();
    let mut store = open(&dir);
    store.append(&entries(1, 1, 1)).unwrap();
    let long = vec![b'k'; dr_storage::KEY_BYTES_MAX + 1];
    let writes = [DataWrite::Put(b"fine", b"1"), DataWrite::Put(&long, b"2")];
    assert!(matches!(
        store.apply(&writes, 1, None),
        Err(StorageError::Invalid(_))
    ));
    assert_eq!(store.get(b"fine").unwrap(), None);
    assert_eq!(store.applied_index(), 0);
}

/// Polls a background snapshot copy until it is switched in.
fn wait_for_copy(store: &mut RocksStorage) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(index) = store.poll_snapshot() {
            return index;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the snapshot copy did not finish"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn a_background_snapshot_holds_the_state_it_started_at() {
    let (source_dir, target_dir) = (TestDir::new(), TestDir::new());
    let mut source = open(&source_dir);
    fill(&mut source, 1, 10, 3000, 1);
    assert_eq!(source.begin_snapshot(conf()), Ok(10));
    assert_eq!(source.snapshot_making_index(), Some(10));
    assert!(
        matches!(source.begin_snapshot(conf()), Err(StorageError::Invalid(_))),
        "one copy at a time"
    );
    // Applying goes on while the copy runs; none of it is in the copy.
    source.append(&entries(11, 12, 2)).unwrap();
    source
        .apply(
            &[DataWrite::Put(b"late", b"x"), DataWrite::Delete(&key(5))],
            12,
            None,
        )
        .unwrap();
    assert_eq!(wait_for_copy(&mut source), 10);
    assert_eq!(source.snapshot_making_index(), None);
    let meta = source.snapshot_meta().unwrap();
    assert_eq!((meta.index, meta.term, &meta.conf_state), (10, 2, &conf()));
    source
        .compact(10)
        .expect("the log compacts behind the snapshot");

    let mut target = open(&target_dir);
    transfer(&source, &mut target, &meta).expect("transfer");
    let expected: Vec<_> = (0..3000).map(|i| (key(i), value(i, 1))).collect();
    assert_eq!(all_pairs(&target), expected, "exactly the state at 10");
    // The view does not outlive the process: reopened, the store's
    // snapshot is the state it finds (applied to 12), pinned again; the
    // log compacted behind the old one still holds what follows it.
    drop(source);
    let source = open(&source_dir);
    let reopened = source.snapshot_meta().unwrap();
    assert_eq!((reopened.index, reopened.term), (12, 2), "the state found");
    assert_eq!(reopened.conf_state, conf());
    assert!(
        source.first_index() <= 11,
        "never compacted past the snapshot"
    );
    let again_dir = TestDir::new();
    let mut again = open(&again_dir);
    transfer(&source, &mut again, &reopened).expect("transfer");
    let mut expected: Vec<_> = (0..3000)
        .filter(|&i| i != 5)
        .map(|i| (key(i), value(i, 1)))
        .collect();
    expected.push((b"late".to_vec(), b"x".to_vec()));
    expected.sort();
    assert_eq!(all_pairs(&again), expected, "exactly the state at 12");
}

#[test]
fn a_received_snapshot_or_a_synchronous_one_drops_one_in_the_making() {
    let (source_dir, target_dir) = (TestDir::new(), TestDir::new());
    let mut source = open(&source_dir);
    fill(&mut source, 1, 20, 2000, 3);
    source
        .create_snapshot(20, conf(), Bytes::new())
        .expect("snapshot");
    let meta = source.snapshot_meta().unwrap();

    let mut target = open(&target_dir);
    fill(&mut target, 1, 5, 3000, 1);
    assert_eq!(target.begin_snapshot(conf()), Ok(5));
    // The leader's newer snapshot arrives: its chunks take the staging
    // slot, so the copy stops and never becomes the snapshot.
    transfer(&source, &mut target, &meta).expect("transfer");
    assert_eq!(target.snapshot_making_index(), None);
    assert_eq!(target.poll_snapshot(), None);
    assert_eq!(target.snapshot_meta().unwrap(), meta);
    let expected: Vec<_> = (0..2000).map(|i| (key(i), value(i, 3))).collect();
    assert_eq!(all_pairs(&target), expected);

    // A synchronous snapshot replaces a copy in progress.
    target.append(&entries(21, 22, 2)).unwrap();
    target
        .apply(&[DataWrite::Put(b"more", b"y")], 22, None)
        .unwrap();
    assert_eq!(target.begin_snapshot(conf()), Ok(22));
    target.create_snapshot(22, conf(), Bytes::new()).unwrap();
    assert_eq!(target.snapshot_making_index(), None);
    assert_eq!(target.snapshot_meta().unwrap().index, 22);
    // Dropping the store with a copy running lets the directory reopen.
    target.append(&entries(23, 23, 2)).unwrap();
    target.apply(&[], 23, None).unwrap();
    assert_eq!(target.begin_snapshot(conf()), Ok(23));
    assert_eq!(target.snapshot_meta().unwrap().index, 22, "not switched in");
    drop(target);
    // Reopened, the snapshot is the state found, pinned again.
    let target = open(&target_dir);
    assert_eq!(target.snapshot_meta().unwrap().index, 23);
}

#[test]
fn a_background_snapshot_is_refused_when_there_is_nothing_new() {
    let dir = TestDir::new();
    let mut store = open(&dir);
    fill(&mut store, 1, 4, 10, 1);
    store.create_snapshot(4, conf(), Bytes::new()).unwrap();
    assert_eq!(
        store.begin_snapshot(conf()),
        Err(StorageError::SnapshotOutOfDate {
            offered: 4,
            current: 4
        })
    );
    let external_dir = TestDir::new();
    let mut external = RocksStorage::open(external_dir.path(), StateMachine::External).unwrap();
    external.append(&entries(1, 3, 1)).unwrap();
    assert!(matches!(
        external.begin_snapshot(conf()),
        Err(StorageError::Invalid(_))
    ));
}

#[test]
fn a_reader_on_another_thread_sees_what_was_applied() {
    let dir = TestDir::new();
    let mut store = open(&dir);
    let reader = store.reader();
    fill(&mut store, 1, 2, 3, 1);
    let seen = std::thread::spawn(move || reader.get(&key(2)).unwrap())
        .join()
        .unwrap();
    assert_eq!(seen, Some(value(2, 1)));
    let reader = store.reader();
    store.append(&entries(3, 3, 2)).unwrap();
    store.apply(&[DataWrite::Delete(&key(2))], 3, None).unwrap();
    assert_eq!(reader.get(&key(2)).unwrap(), None, "a later apply shows");
}

#[test]
fn a_reader_never_answers_from_a_half_installed_snapshot() {
    // Enough data for the install to take several writes (4 MiB each).
    const KEYS: usize = 12_000;
    let (source_dir, target_dir) = (TestDir::new(), TestDir::new());
    let mut source = open(&source_dir);
    fill(&mut source, 1, 10, KEYS, 1);
    source
        .create_snapshot(10, conf(), Bytes::new())
        .expect("snapshot");
    let meta = source.snapshot_meta().unwrap();
    let mut target = open(&target_dir);
    fill(&mut target, 1, 3, KEYS, 9);

    let reader = target.reader();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reading = {
        let done = std::sync::Arc::clone(&done);
        std::thread::spawn(move || {
            let (mut answered, mut refused) = (0u64, 0u64);
            let mut i = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                // Keys from the end: the install writes them last.
                let k = KEYS - 1 - i % 64;
                match reader.get(&key(k)) {
                    Ok(Some(seen)) => {
                        assert!(
                            seen == value(k, 9) || seen == value(k, 1),
                            "key {k}: a value of neither state"
                        );
                        answered += 1;
                    }
                    Ok(None) => panic!("key {k} read as absent: a half-installed state"),
                    Err(ReadRefused::Installing) => refused += 1,
                    Err(error) => panic!("read failed: {error}"),
                }
                i += 1;
            }
            (answered, refused)
        })
    };
    transfer(&source, &mut target, &meta).expect("transfer");
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (answered, refused) = reading.join().expect("the reader saw whole states");
    assert!(answered > 0, "reads were answered around the install");
    assert!(refused > 0, "reads overlapping the install were refused");
    assert_eq!(target.reader().get(&key(7)).unwrap(), Some(value(7, 1)));
}

#[test]
fn a_range_delete_removes_its_range_in_order_with_the_other_writes() {
    let dir = TestDir::new();
    let mut store = open(&dir);
    store.append(&entries(1, 2, 1)).unwrap();
    let writes = [
        DataWrite::Put(b"a", b"1"),
        DataWrite::Put(b"b1", b"2"),
        DataWrite::Put(b"b2", b"3"),
        DataWrite::Put(b"c", b"4"),
    ];
    store.apply(&writes, 1, None).unwrap();
    // Written after the range delete in one batch: it stays.
    let writes = [
        DataWrite::DeleteRange(b"b", b"c"),
        DataWrite::Put(b"b3", b"5"),
    ];
    store.apply(&writes, 2, None).unwrap();
    drop(store);
    let store = open(&dir);
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = all_pairs(&store);
    let keys: Vec<&[u8]> = pairs.iter().map(|(key, _)| key.as_slice()).collect();
    assert_eq!(keys, [&b"a"[..], b"b3", b"c"]);
}

#[test]
fn a_snapshot_reads_the_same_bytes_at_any_offset_in_any_order() {
    let dir = TestDir::new();
    let mut store = open(&dir);
    fill(&mut store, 1, 6, 4000, 7);
    store.create_snapshot(6, conf(), Bytes::new()).unwrap();
    let meta = store.snapshot_meta().unwrap();
    // Read in order, small chunks: the whole stream.
    let mut whole = Vec::new();
    loop {
        let chunk = store
            .snapshot_chunk(&meta, whole.len() as u64, 4099)
            .unwrap();
        whole.extend_from_slice(&chunk.data);
        if chunk.done {
            break;
        }
        assert!(!chunk.data.is_empty(), "progress until done");
    }
    // Applies after the snapshot change nothing of it.
    store.append(&entries(7, 7, 2)).unwrap();
    store
        .apply(
            &[DataWrite::Delete(&key(1)), DataWrite::Put(b"new", b"v")],
            7,
            None,
        )
        .unwrap();
    // A chunk asked twice, a jump ahead, a step back to the start, past
    // the end: the same bytes as the stream read in order.
    let at = |offset: usize, len: usize| {
        let chunk = store
            .snapshot_chunk(&meta, offset as u64, len as u64)
            .unwrap();
        let end = (offset + len).min(whole.len());
        assert_eq!(&chunk.data[..], &whole[offset..end], "at {offset}");
        assert_eq!(chunk.done, end == whole.len(), "done at {offset}");
    };
    for (offset, len) in [
        (0, 100),
        (0, 100),
        (50_000, 7000),
        (50_000, 10),
        (9, 1 << 20),
    ] {
        at(offset, len);
    }
    at(whole.len() - 3, 100);
    at(whole.len(), 100);
    assert!(
        store
            .snapshot_chunk(&meta, whole.len() as u64 + 1, 10)
            .is_err()
    );
}

#[test]
fn the_log_is_never_compacted_past_the_state_on_disk() {
    let dir = TestDir::new();
    let mut store = open(&dir);
    fill(&mut store, 1, 10, 100, 1);
    store.create_snapshot(10, conf(), Bytes::new()).unwrap();
    // The applies skipped RocksDB's WAL and sit in a memtable: a crash
    // would lose them, and the log must replay them.
    store.compact(8).unwrap();
    assert_eq!(store.first_index(), 1, "held at the state on disk");
    // Asked again and again with the state on disk where it was: RocksDB
    // is asked to flush (in the background); a later compaction goes
    // through.
    store.compact(8).unwrap();
    assert_eq!(store.first_index(), 1, "held again");
    let started = std::time::Instant::now();
    while store.first_index() == 1 {
        assert!(started.elapsed().as_secs() < 60, "the flush lands");
        std::thread::sleep(std::time::Duration::from_millis(5));
        store.compact(8).unwrap();
    }
    assert_eq!(store.first_index(), 9);
    // Killed now (nothing written out on close), the state on disk is
    // still ahead of the compaction point.
    let applied = store.applied_index();
    std::mem::forget(store);
    // The forgotten store still holds RocksDB's lock: reopen a copy.
    let copy = TestDir::new();
    copy_dir(dir.path(), copy.path());
    let store = open(&copy);
    assert!(store.first_index() <= store.applied_index() + 1);
    assert_eq!(store.applied_index(), applied);
    assert_eq!(all_pairs(&store).len(), 100);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
