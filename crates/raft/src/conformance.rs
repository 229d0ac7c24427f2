//! The conformance suite every [`LogStore`] must pass (in the spirit of
//! openraft's `testing::Suite`): the in-memory store runs it in this
//! crate's tests, the RocksDB store in its own.
//!
//! ```
//! dr_raft::conformance::run_all(dr_raft::MemStorage::new);
//! ```
//!
//! Each check gets a fresh store from the factory and panics, naming the
//! check, at the first behaviour that breaks the contract.

use bytes::Bytes;
use dr_codec::message::{ConfState, Entry, EntryKind, LogIndex, Term};

use crate::storage::{HardState, LogStore, Snapshot, Storage, StorageError};

/// A named check of the contract.
pub type Check<S> = (&'static str, fn(&mut S));

/// Every check, by name.
pub fn checks<S: LogStore>() -> Vec<Check<S>> {
    vec![
        ("a new store is empty", new_store_is_empty::<S>),
        (
            "appended entries read back exactly",
            appended_entries_read_back::<S>,
        ),
        (
            "entries stop at max_bytes but return at least one",
            entries_respect_max_bytes::<S>,
        ),
        (
            "out-of-range reads are typed errors",
            out_of_range_reads_are_errors::<S>,
        ),
        (
            "an append that leaves a gap is refused",
            gap_is_refused::<S>,
        ),
        (
            "an overlapping append replaces the suffix",
            overlapping_append_replaces_suffix::<S>,
        ),
        (
            "hard state and configuration persist",
            hard_and_conf_state_persist::<S>,
        ),
        (
            "compaction keeps the compaction point's term",
            compaction_keeps_anchor::<S>,
        ),
        (
            "compaction never passes the snapshot",
            compaction_stops_at_snapshot::<S>,
        ),
        (
            "snapshots are created in order",
            snapshots_are_created_in_order::<S>,
        ),
        (
            "an applied snapshot replaces the log",
            applied_snapshot_replaces_log::<S>,
        ),
        (
            "appends after a snapshot continue the log",
            append_after_snapshot::<S>,
        ),
        (
            "snapshot chunks read back and stage in order",
            snapshot_chunks_are_checked::<S>,
        ),
        (
            "unsynced writes read back at once and a sync keeps them",
            unsynced_writes_read_back::<S>,
        ),
    ]
}

/// Runs every check, each on a fresh store from `new_store`.
pub fn run_all<S: LogStore>(new_store: impl Fn() -> S) {
    for (name, check) in checks::<S>() {
        let mut store = new_store();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&mut store)));
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!("storage conformance check '{name}' failed: {message}");
        }
    }
}

/// Entries `from..=to` of term `term`, each payload naming its index.
pub fn entries(from: LogIndex, to: LogIndex, term: Term) -> Vec<Entry> {
    (from..=to)
        .map(|index| Entry {
            term,
            index,
            kind: if index % 5 == 0 {
                EntryKind::Noop
            } else {
                EntryKind::Normal
            },
            payload: Bytes::from(format!("entry {index} term {term}")),
        })
        .collect()
}

fn append_ok<S: LogStore>(store: &mut S, entries: &[Entry]) {
    store
        .append(entries)
        .expect("append within the contract succeeds");
}

fn new_store_is_empty<S: LogStore>(store: &mut S) {
    let initial = store.initial_state().expect("initial state");
    assert_eq!(initial.hard_state, HardState::default());
    assert_eq!(initial.conf_state, ConfState::default());
    assert_eq!((store.first_index(), store.last_index()), (1, 0));
    assert_eq!(store.term(0), Ok(0));
    assert_eq!(store.entries(1, 1, u64::MAX), Ok(vec![]));
    assert_eq!(store.snapshot_meta().expect("snapshot").index, 0);
}

fn appended_entries_read_back<S: LogStore>(store: &mut S) {
    let written = entries(1, 10, 1);
    append_ok(store, &written);
    assert_eq!((store.first_index(), store.last_index()), (1, 10));
    assert_eq!(store.entries(1, 11, u64::MAX), Ok(written.clone()));
    assert_eq!(store.entries(4, 7, u64::MAX), Ok(written[3..6].to_vec()));
    for entry in &written {
        assert_eq!(store.term(entry.index), Ok(entry.term));
    }
    append_ok(store, &[]);
    assert_eq!(store.last_index(), 10, "an empty append changes nothing");
}

fn entries_respect_max_bytes<S: LogStore>(store: &mut S) {
    let written = entries(1, 10, 1);
    append_ok(store, &written);
    let size = written[0].payload.len() as u64;
    assert_eq!(
        store.entries(1, 11, 0).map(|got| got.len()),
        Ok(1),
        "at least one entry"
    );
    assert_eq!(store.entries(1, 11, 3 * size).map(|got| got.len()), Ok(3));
    assert_eq!(
        store.entries(1, 11, 3 * size + 1).map(|got| got.len()),
        Ok(3)
    );
}

fn out_of_range_reads_are_errors<S: LogStore>(store: &mut S) {
    append_ok(store, &entries(1, 5, 1));
    assert!(matches!(
        store.term(6),
        Err(StorageError::Unavailable {
            index: 6,
            last_index: 5
        })
    ));
    assert!(matches!(
        store.entries(3, 8, u64::MAX),
        Err(StorageError::Unavailable { .. })
    ));
    assert!(matches!(
        store.entries(4, 2, u64::MAX),
        Err(StorageError::Invalid(_))
    ));
    store
        .create_snapshot(3, ConfState::default(), Bytes::from_static(b"image"))
        .expect("snapshot");
    store.compact(3).expect("compact");
    assert!(matches!(
        store.term(2),
        Err(StorageError::Compacted {
            index: 2,
            first_index: 4
        })
    ));
    assert!(matches!(
        store.entries(2, 5, u64::MAX),
        Err(StorageError::Compacted { .. })
    ));
}

fn gap_is_refused<S: LogStore>(store: &mut S) {
    append_ok(store, &entries(1, 3, 1));
    assert!(matches!(
        store.append(&entries(5, 6, 1)),
        Err(StorageError::Invalid(_))
    ));
    let mut unordered = entries(4, 6, 1);
    unordered.swap(1, 2);
    assert!(matches!(
        store.append(&unordered),
        Err(StorageError::Invalid(_))
    ));
    assert_eq!(store.last_index(), 3, "a refused append changes nothing");
}

fn overlapping_append_replaces_suffix<S: LogStore>(store: &mut S) {
    append_ok(store, &entries(1, 10, 1));
    let replacement = entries(6, 8, 2);
    append_ok(store, &replacement);
    assert_eq!(
        store.last_index(),
        8,
        "entries after the replacement are gone"
    );
    assert_eq!(store.term(5), Ok(1));
    assert_eq!(store.entries(6, 9, u64::MAX), Ok(replacement));
}

fn unsynced_writes_read_back<S: LogStore>(store: &mut S) {
    let write = |store: &mut S, entries: Vec<Entry>, commit: LogIndex| {
        let ready = crate::Ready {
            entries,
            hard_state: Some(HardState {
                term: 2,
                vote: Some(1),
                commit,
            }),
            ..crate::Ready::default()
        };
        store.write_ready_unsynced(&ready).expect("unsynced write");
    };
    write(store, entries(1, 10, 1), 4);
    write(store, entries(7, 9, 2), 6);
    assert_eq!(store.last_index(), 9, "the second write replaced 7..=10");
    assert_eq!(store.term(6), Ok(1));
    assert_eq!(store.entries(7, 10, u64::MAX), Ok(entries(7, 9, 2)));
    assert_eq!(
        store
            .initial_state()
            .expect("initial state")
            .hard_state
            .commit,
        6
    );
    store.sync().expect("sync");
    append_ok(store, &entries(10, 12, 2));
    assert_eq!(store.entries(1, 13, u64::MAX).map(|e| e.len()), Ok(12));
}

fn hard_and_conf_state_persist<S: LogStore>(store: &mut S) {
    let hard_state = HardState {
        term: 7,
        vote: Some(3),
        commit: 12,
    };
    let conf_state = ConfState {
        voters: vec![1, 2, 3],
        voters_outgoing: vec![1, 2],
        learners: vec![9],
        learners_next: vec![],
    };
    store.set_hard_state(hard_state).expect("hard state");
    store
        .set_conf_state(conf_state.clone())
        .expect("conf state");
    let initial = store.initial_state().expect("initial state");
    assert_eq!(
        (initial.hard_state, initial.conf_state),
        (hard_state, conf_state)
    );
}

fn compaction_keeps_anchor<S: LogStore>(store: &mut S) {
    append_ok(store, &entries(1, 5, 1));
    append_ok(store, &entries(6, 10, 2));
    store
        .create_snapshot(7, ConfState::default(), Bytes::from_static(b"image"))
        .expect("snapshot");
    store.compact(7).expect("compact");
    assert_eq!((store.first_index(), store.last_index()), (8, 10));
    assert_eq!(
        store.term(7),
        Ok(2),
        "the compaction point's term stays answerable"
    );
    assert_eq!(store.entries(8, 11, u64::MAX), Ok(entries(8, 10, 2)));
    assert!(matches!(
        store.compact(7),
        Err(StorageError::Compacted { .. })
    ));
}

fn compaction_stops_at_snapshot<S: LogStore>(store: &mut S) {
    append_ok(store, &entries(1, 10, 1));
    assert!(
        matches!(store.compact(3), Err(StorageError::Invalid(_))),
        "no snapshot covers index 3 yet"
    );
    store
        .create_snapshot(5, ConfState::default(), Bytes::new())
        .expect("snapshot");
    assert!(matches!(store.compact(6), Err(StorageError::Invalid(_))));
    store.compact(5).expect("compact up to the snapshot");
    assert!(matches!(
        store.compact(11),
        Err(StorageError::Unavailable { .. })
    ));
}

fn snapshots_are_created_in_order<S: LogStore>(store: &mut S) {
    append_ok(store, &entries(1, 10, 3));
    let conf = ConfState {
        voters: vec![1, 2, 3],
        ..ConfState::default()
    };
    store
        .create_snapshot(6, conf.clone(), Bytes::from_static(b"state at 6"))
        .expect("snapshot");
    let meta = store.snapshot_meta().expect("snapshot");
    assert_eq!((meta.index, meta.term), (6, 3));
    assert_eq!(meta.conf_state, conf);
    assert_eq!(read_snapshot(store, 4), Bytes::from_static(b"state at 6"));
    assert_eq!(
        store.first_index(),
        1,
        "creating a snapshot discards nothing"
    );
    assert!(matches!(
        store.create_snapshot(6, ConfState::default(), Bytes::new()),
        Err(StorageError::SnapshotOutOfDate {
            offered: 6,
            current: 6
        })
    ));
    assert!(matches!(
        store.create_snapshot(11, ConfState::default(), Bytes::new()),
        Err(StorageError::Unavailable { .. })
    ));
}

fn applied_snapshot_replaces_log<S: LogStore>(store: &mut S) {
    append_ok(store, &entries(1, 5, 1));
    let conf = ConfState {
        voters: vec![4, 5, 6],
        ..ConfState::default()
    };
    let mut snapshot = Snapshot {
        data: Bytes::from_static(b"leader's image"),
        ..Snapshot::default()
    };
    snapshot.meta.index = 20;
    snapshot.meta.term = 4;
    snapshot.meta.conf_state = conf.clone();
    // Staged in uneven chunks, as a transfer would deliver them.
    for (offset, piece) in [(0, &b"leade"[..]), (5, b"r's"), (8, b" image")] {
        store
            .stage_snapshot_chunk(&snapshot.meta, offset, piece)
            .expect("stage");
        assert_eq!(store.last_index(), 5, "staging leaves the log alone");
    }
    store.apply_snapshot(&snapshot.meta).expect("apply");
    assert_eq!((store.first_index(), store.last_index()), (21, 20));
    assert_eq!(store.term(20), Ok(4));
    assert_eq!(store.snapshot_meta(), Ok(snapshot.meta.clone()));
    assert_eq!(read_snapshot(store, 3), snapshot.data);
    assert_eq!(
        store.initial_state().expect("initial state").conf_state,
        conf
    );
    assert!(matches!(
        store.restore_snapshot(&snapshot),
        Err(StorageError::SnapshotOutOfDate { .. })
    ));
}

/// Reads the latest snapshot's data in chunks of `chunk_bytes`.
fn read_snapshot<S: Storage>(store: &S, chunk_bytes: u64) -> Bytes {
    let meta = store.snapshot_meta().expect("snapshot meta");
    let mut data = Vec::new();
    loop {
        let chunk = store
            .snapshot_chunk(&meta, data.len() as u64, chunk_bytes)
            .expect("chunk");
        assert!(
            chunk.data.len() as u64 <= chunk_bytes,
            "chunk over its bound"
        );
        data.extend_from_slice(&chunk.data);
        if chunk.done {
            return Bytes::from(data);
        }
        assert!(
            !chunk.data.is_empty(),
            "an unfinished chunk must make progress"
        );
    }
}

fn snapshot_chunks_are_checked<S: LogStore>(store: &mut S) {
    append_ok(store, &entries(1, 4, 2));
    store
        .create_snapshot(3, ConfState::default(), Bytes::from_static(b"0123456789"))
        .expect("snapshot");
    let meta = store.snapshot_meta().expect("meta");
    let again = store.snapshot_chunk(&meta, 4, 3).expect("chunk");
    assert_eq!(again, store.snapshot_chunk(&meta, 4, 3).expect("chunk"));
    assert_eq!(&again.data[..], b"456");
    let mut stale = meta.clone();
    stale.index = 2;
    assert!(matches!(
        store.snapshot_chunk(&stale, 0, 3),
        Err(StorageError::SnapshotOutOfDate { .. })
    ));
    let mut incoming = meta.clone();
    incoming.index = 9;
    store
        .stage_snapshot_chunk(&incoming, 0, b"ab")
        .expect("stage");
    assert!(
        store.stage_snapshot_chunk(&incoming, 5, b"cd").is_err(),
        "a gap in the staged data is refused"
    );
    // Offset 0 starts over: the earlier staging is discarded.
    store
        .stage_snapshot_chunk(&incoming, 0, b"xy")
        .expect("restart");
    store.apply_snapshot(&incoming).expect("apply");
    assert_eq!(read_snapshot(store, 1), Bytes::from_static(b"xy"));
    let mut unstaged = incoming.clone();
    unstaged.index = 12;
    assert!(store.apply_snapshot(&unstaged).is_err(), "nothing staged");
}

fn append_after_snapshot<S: LogStore>(store: &mut S) {
    let mut snapshot = Snapshot::default();
    snapshot.meta.index = 20;
    snapshot.meta.term = 4;
    store.restore_snapshot(&snapshot).expect("apply");
    assert!(
        matches!(
            store.append(&entries(22, 23, 4)),
            Err(StorageError::Invalid(_))
        ),
        "gap after the snapshot"
    );
    // Entries the snapshot covers are skipped; the rest continue the log.
    append_ok(store, &entries(18, 25, 4));
    assert_eq!((store.first_index(), store.last_index()), (21, 25));
    assert_eq!(store.entries(21, 26, u64::MAX), Ok(entries(21, 25, 4)));
}
