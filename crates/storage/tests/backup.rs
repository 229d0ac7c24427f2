//! Backups are incremental and consistent; restores go into empty
//! directories only and give back exactly the state backed up.

mod support;

use dr_raft::conformance::entries;
use dr_raft::{LogStore, Storage};
use dr_storage::{BackupError, DataWrite, RocksStorage, StateMachine, list_backups};
use support::TestDir;

fn put(store: &mut RocksStorage, index: u64, key: &[u8], value: &[u8]) {
    store.append(&entries(index, index, 1)).unwrap();
    store
        .apply(&[DataWrite::Put(key, value)], index, None)
        .unwrap();
}

#[test]
fn backups_restore_the_state_they_were_taken_at() {
    let (dir, backups) = (TestDir::new(), TestDir::new());
    let mut store = RocksStorage::open(dir.path(), StateMachine::DataFamily).unwrap();
    put(&mut store, 1, b"a", b"first");
    let first = store.backup(backups.path(), 10).expect("backup");
    put(&mut store, 2, b"a", b"second");
    put(&mut store, 3, b"b", b"new");
    let second = store.backup(backups.path(), 10).expect("backup");
    assert!(second.id > first.id);
    let listed = list_backups(backups.path()).unwrap();
    assert_eq!(
        listed.iter().map(|b| b.id).collect::<Vec<_>>(),
        [first.id, second.id]
    );

    let old = TestDir::new();
    let restored = RocksStorage::restore(
        backups.path(),
        Some(first.id),
        old.path().join("db"),
        StateMachine::DataFamily,
    )
    .expect("restore");
    assert_eq!((restored.last_index(), restored.applied_index()), (1, 1));
    assert_eq!(restored.get(b"a").unwrap().as_deref(), Some(&b"first"[..]));
    assert_eq!(restored.get(b"b").unwrap(), None);

    let new = TestDir::new();
    let restored =
        RocksStorage::restore(backups.path(), None, new.path(), StateMachine::DataFamily)
            .expect("restore the newest into an empty directory");
    assert_eq!((restored.last_index(), restored.applied_index()), (3, 3));
    assert_eq!(restored.get(b"a").unwrap().as_deref(), Some(&b"second"[..]));
    assert_eq!(restored.get(b"b").unwrap().as_deref(), Some(&b"new"[..]));
}

#[test]
fn restores_never_overwrite_and_old_backups_are_purged() {
    let (dir, backups) = (TestDir::new(), TestDir::new());
    let mut store = RocksStorage::open(dir.path(), StateMachine::DataFamily).unwrap();
    assert!(matches!(
        RocksStorage::restore(
            backups.path(),
            None,
            TestDir::new().path(),
            StateMachine::DataFamily
        ),
        Err(BackupError::NoBackup)
    ));
    for index in 1..=3 {
        put(&mut store, index, b"k", &index.to_be_bytes());
        store.backup(backups.path(), 2).unwrap();
    }
    assert_eq!(list_backups(backups.path()).unwrap().len(), 2);
    match RocksStorage::restore(backups.path(), None, dir.path(), StateMachine::DataFamily) {
        Err(BackupError::TargetNotEmpty(_)) => {}
        other => panic!("restored over a live store: {:?}", other.err()),
    }
    assert_eq!(
        store.get(b"k").unwrap().as_deref(),
        Some(&3u64.to_be_bytes()[..])
    );
}
