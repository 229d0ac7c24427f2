//! The segmented raft log on disk: a torn tail is cut and writing goes on;
//! damage and missing segments are refused; a crash between a seal and the
//! next segment, or between a snapshot switch and the log's clear, opens
//! to the right log; a snapshot clears the log; compaction drops and
//! recycles whole segments.

mod support;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use dr_codec::message::ConfState;
use dr_raft::conformance::entries;
use dr_raft::{HardState, LogStore, Ready, Storage};
use dr_storage::{DataWrite, LogKind, RocksStorage, SEGMENT_BYTES_MIN, StateMachine, StoreOptions};
use support::TestDir;

fn open(path: &Path) -> RocksStorage {
    open_as(path, StateMachine::External).expect("opens")
}

fn open_as(
    path: &Path,
    state_machine: StateMachine,
) -> Result<RocksStorage, dr_storage::OpenError> {
    let options = StoreOptions {
        log: LogKind::Segments,
        segment_bytes: SEGMENT_BYTES_MIN,
        ..StoreOptions::default()
    };
    RocksStorage::open_with(path, state_machine, options)
}

/// Applies entries up to `to`: each sets `key-<index>`.
fn apply_keys(store: &mut RocksStorage, from: u64, to: u64) {
    let keys: Vec<Vec<u8>> = (from..=to)
        .map(|i| format!("key-{i}").into_bytes())
        .collect();
    let writes: Vec<DataWrite<'_>> = keys.iter().map(|k| DataWrite::Put(k, k)).collect();
    store.apply(&writes, to, None).unwrap();
}

/// Appends entries `from..=to` of `term` with a 200-byte payload each,
/// ten per ready, committing them.
fn write(store: &mut RocksStorage, from: u64, to: u64, term: u64) {
    write_committing(store, from, to, term, u64::MAX);
}

/// [`write`], the commit index never above `commit_max`.
fn write_committing(store: &mut RocksStorage, from: u64, to: u64, term: u64, commit_max: u64) {
    write_readies(store, from, to, term, commit_max, true);
}

/// [`write`] without syncs (`LogStore::write_ready_unsynced`).
fn write_unsynced(store: &mut RocksStorage, from: u64, to: u64, term: u64) {
    write_readies(store, from, to, term, u64::MAX, false);
}

fn write_readies(
    store: &mut RocksStorage,
    from: u64,
    to: u64,
    term: u64,
    commit_max: u64,
    synced: bool,
) {
    let mut first = from;
    while first <= to {
        let last = (first + 9).min(to);
        let mut batch = entries(first, last, term);
        for entry in &mut batch {
            entry.payload = Bytes::from(vec![entry.index as u8; 200]);
        }
        let ready = Ready {
            entries: batch,
            hard_state: Some(HardState {
                term,
                vote: Some(1),
                commit: last.min(commit_max),
            }),
            ..Ready::default()
        };
        if synced {
            store.persist_ready(&ready).unwrap();
        } else {
            store.write_ready_unsynced(&ready).unwrap();
        }
        first = last + 1;
    }
}

fn segments(path: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(path.join("raft-log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    files
}

/// Where the batches of a zero-filled segment end.
fn written_end(segment: &Path) -> usize {
    let bytes = std::fs::read(segment).unwrap();
    bytes
        .chunks(8)
        .rposition(|word| word.iter().any(|b| *b != 0))
        .map_or(0, |at| (at + 1) * 8)
}

#[test]
fn segments_roll_over_and_everything_reads_back_after_reopening() {
    let dir = TestDir::new();
    let mut store = open(dir.path());
    write(&mut store, 1, 2000, 1);
    assert!(
        store.log_segment_count() >= 5,
        "{}",
        store.log_segment_count()
    );
    drop(store);
    let store = open(dir.path());
    assert_eq!((store.first_index(), store.last_index()), (1, 2000));
    let read = store.entries(1, 2001, u64::MAX).unwrap();
    assert_eq!(read.len(), 2000);
    assert!(read.iter().all(|e| e.payload[0] == e.index as u8));
    assert_eq!(store.initial_state().unwrap().hard_state.commit, 2000);
}

#[test]
fn compaction_drops_whole_segments_and_reuses_them() {
    let dir = TestDir::new();
    let mut store = open(dir.path());
    for round in 0..20u64 {
        let from = round * 500 + 1;
        write(&mut store, from, from + 499, 1);
        store
            .create_snapshot(from + 499, ConfState::default(), Bytes::from_static(b"s"))
            .unwrap();
        store.compact(from + 449).unwrap();
        assert!(store.log_segment_count() <= 3, "round {round}");
    }
    let files = std::fs::read_dir(dir.path().join("raft-log"))
        .unwrap()
        .count();
    assert!(
        files <= 6,
        "{files} files: segments are dropped or kept as spares"
    );
    drop(store);
    let store = open(dir.path());
    assert_eq!((store.first_index(), store.last_index()), (9951, 10000));
    assert_eq!(store.entries(9951, 10001, u64::MAX).unwrap().len(), 50);
}

/// The log's files by inode: a recycled segment keeps its inode, a
/// zero-filled one is new.
fn log_inodes(path: &Path) -> std::collections::BTreeSet<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(path.join("raft-log"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().ino())
        .collect()
}

#[test]
fn a_log_that_grows_back_after_compaction_reuses_its_segments() {
    let dir = TestDir::new();
    let mut store = open(dir.path());
    write(&mut store, 1, 2000, 1);
    let grown_to = store.log_segment_count();
    assert!(grown_to >= 5, "{grown_to} segments");
    store
        .create_snapshot(2000, ConfState::default(), Bytes::from_static(b"s"))
        .unwrap();
    store.compact(1990).unwrap();
    assert!(store.log_segment_count() <= 2);
    drop(store);
    // Every dropped segment was kept: the files stay as many as the log
    // took at its largest.
    let kept = log_inodes(dir.path());
    assert!(kept.len() >= grown_to, "{} files of {grown_to}", kept.len());
    // The log grows as far again (less a segment's worth): no file is
    // zero-filled anew, and the files do not grow in number.
    let mut store = open(dir.path());
    write(&mut store, 2001, 3600, 1);
    assert!(store.log_segment_count() >= grown_to - 1);
    drop(store);
    let after = log_inodes(dir.path());
    assert!(after.is_subset(&kept), "{after:?} beside {kept:?}");
    assert_eq!(after.len(), kept.len());
    let store = open(dir.path());
    assert_eq!(store.entries(1991, 3601, u64::MAX).unwrap().len(), 1610);
}

/// A log of entries 1..=25 written and closed: its directory, its newest
/// segment and where that segment's batches end.
fn closed_log_of_25_entries() -> (TestDir, PathBuf, usize) {
    let dir = TestDir::new();
    let mut store = open(dir.path());
    write(&mut store, 1, 25, 1);
    drop(store);
    let newest = segments(dir.path()).pop().unwrap();
    let end = written_end(&newest);
    (dir, newest, end)
}

#[test]
fn a_torn_tail_is_cut_and_writing_goes_on() {
    let (dir, newest, end) = closed_log_of_25_entries();
    // The last ready (entries 21..=25) torn: its second half never written.
    let mut bytes = std::fs::read(&newest).unwrap();
    bytes[end - 300..end].fill(0);
    std::fs::write(&newest, bytes).unwrap();
    let mut store = open(dir.path());
    assert_eq!(store.last_index(), 20, "the torn ready is cut");
    assert_eq!(store.initial_state().unwrap().hard_state.commit, 20);
    write(&mut store, 21, 40, 2);
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.last_index(), 40);
    assert_eq!(store.term(21), Ok(2));
    assert_eq!(store.entries(1, 41, u64::MAX).unwrap().len(), 40);
}

/// The log writes whole pages: a write ending inside a page ext4 did not
/// hold in its cache made it read the block from disk first. Bytes after
/// the log's end (here garbage, as a recycled segment holds) are zeroed up
/// to the page boundary and left alone after it; everything reads back,
/// before and after reopening.
#[test]
fn writes_fill_their_last_page_with_zeros_and_leave_later_pages_alone() {
    const PAGE: usize = 4096;
    let (dir, newest, end) = closed_log_of_25_entries();
    let mut bytes = std::fs::read(&newest).unwrap();
    bytes[end..].fill(0xAA);
    std::fs::write(&newest, &bytes).unwrap();
    // Reopened, the log reads the page it ends in back; then each write
    // starts where the last one ended, inside a page.
    let mut store = open(dir.path());
    write(&mut store, 26, 70, 1);
    let bytes = std::fs::read(&newest).unwrap();
    // Where the garbage left untouched begins.
    let garbage_from = bytes.len() - bytes.iter().rev().position(|b| *b != 0xAA).unwrap();
    assert!(garbage_from > end);
    assert_eq!(garbage_from % PAGE, 0, "the last write ended its page");
    let new_end = bytes[..garbage_from]
        .chunks(8)
        .rposition(|word| word.iter().any(|b| *b != 0))
        .map_or(0, |at| (at + 1) * 8);
    assert!(
        garbage_from - new_end < PAGE,
        "zeros only to the page's end"
    );
    assert_eq!(store.entries(1, 71, u64::MAX).unwrap().len(), 70);
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.last_index(), 70);
    let read = store.entries(1, 71, u64::MAX).unwrap();
    assert!(read.iter().all(|e| e.payload[0] == e.index as u8));
}

/// Where each batch of a segment starts (batches are 8-byte aligned and
/// open with the magic "DRLG"; a 200-byte entry payload never holds it).
fn batch_starts(segment: &Path) -> Vec<usize> {
    let bytes = std::fs::read(segment).unwrap();
    (0..bytes.len() - 4)
        .step_by(8)
        .filter(|&at| &bytes[at..at + 4] == b"DRLG")
        .collect()
}

/// Zeros the `n`th batch from the end of the newest segment, as a power
/// failure that kept the pages written after it but not its own would.
fn lose_batch_from_end(dir: &Path, n: usize) {
    let newest = segments(dir).pop().unwrap();
    let starts = batch_starts(&newest);
    let at = starts[starts.len() - n];
    let end = starts
        .get(starts.len() - n + 1)
        .copied()
        .unwrap_or_else(|| written_end(&newest));
    let mut bytes = std::fs::read(&newest).unwrap();
    bytes[at..end].fill(0);
    std::fs::write(&newest, bytes).unwrap();
}

#[test]
fn unsynced_writes_lost_out_of_order_are_cut_and_the_rest_erased() {
    let dir = TestDir::new();
    let mut store = open(dir.path());
    write(&mut store, 1, 20, 1);
    write_unsynced(&mut store, 21, 50, 1);
    assert_eq!(store.last_index(), 50, "unsynced writes read back at once");
    drop(store);
    // Of the three unsynced readies, the first lost, the two after kept.
    lose_batch_from_end(dir.path(), 3);
    let mut store = open(dir.path());
    assert_eq!(store.last_index(), 20, "cut where the loss is");
    assert_eq!(store.initial_state().unwrap().hard_state.commit, 20);
    // The kept later batches were erased: entries written now in their
    // place are the only ones read back, now and after another reopen.
    write(&mut store, 21, 30, 2);
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.last_index(), 30);
    assert_eq!(store.term(21), Ok(2));
    assert_eq!(store.term(30), Ok(2));
    assert_eq!(store.entries(1, 31, u64::MAX).unwrap().len(), 30);
}

#[test]
fn a_loss_before_a_write_that_says_it_was_durable_is_damage() {
    // An unsynced ready, then a synced one: its sync covered the first.
    let dir = TestDir::new();
    let mut store = open(dir.path());
    write(&mut store, 1, 20, 1);
    write_unsynced(&mut store, 21, 30, 1);
    write(&mut store, 31, 40, 1);
    drop(store);
    lose_batch_from_end(dir.path(), 2);
    let error = RocksStorage::open(dir.path(), StateMachine::External)
        .err()
        .expect("damage under a synced write is refused");
    assert!(error.to_string().contains("damage"), "{error}");
    // An unsynced ready, a sync, another unsynced ready: the last one
    // was written knowing the first durable.
    let dir = TestDir::new();
    let mut store = open(dir.path());
    write(&mut store, 1, 20, 1);
    write_unsynced(&mut store, 21, 30, 1);
    store.sync().unwrap();
    write_unsynced(&mut store, 31, 40, 1);
    drop(store);
    lose_batch_from_end(dir.path(), 2);
    let error = RocksStorage::open(dir.path(), StateMachine::External)
        .err()
        .expect("damage under a sync is refused");
    assert!(error.to_string().contains("damage"), "{error}");
}

#[test]
fn a_state_flushed_ahead_of_a_lost_log_tail_becomes_a_snapshot() {
    let dir = TestDir::new();
    let mut store = open_as(dir.path(), StateMachine::DataFamily).unwrap();
    write(&mut store, 1, 20, 1);
    // A leader's lazily synced entries, committed on its followers'
    // disks and applied; then its state reaches the disk (closing
    // flushes the memtables) but its log tail does not.
    write_unsynced(&mut store, 21, 40, 2);
    apply_keys(&mut store, 1, 35);
    drop(store);
    lose_batch_from_end(dir.path(), 2);
    let mut store = open_as(dir.path(), StateMachine::DataFamily).unwrap();
    assert_eq!(store.applied_index(), 35, "the flushed state survived");
    assert_eq!((store.first_index(), store.last_index()), (36, 35));
    let meta = store.snapshot_meta().unwrap();
    assert_eq!((meta.index, meta.term), (35, 2));
    assert_eq!(store.term(35), Ok(2));
    assert_eq!(store.get(b"key-35").unwrap(), Some(b"key-35".to_vec()));
    let chunk = store.snapshot_chunk(&meta, 0, u64::MAX).unwrap();
    assert!(chunk.done);
    let mut copy = open_as(&dir.path().join("copy"), StateMachine::DataFamily).unwrap();
    copy.stage_snapshot_chunk(&meta, 0, &chunk.data).unwrap();
    copy.apply_snapshot(&meta).unwrap();
    assert_eq!(
        copy.get(b"key-1").unwrap(),
        Some(b"key-1".to_vec()),
        "the snapshot holds the state"
    );
    // The log goes on after it, and so after another reopen.
    write(&mut store, 36, 50, 3);
    drop(store);
    let store = open_as(dir.path(), StateMachine::DataFamily).unwrap();
    assert_eq!((store.first_index(), store.last_index()), (36, 50));
    assert_eq!(store.term(36), Ok(3));
    assert_eq!(store.applied_index(), 35);
}

#[test]
fn a_state_ahead_of_the_log_without_its_term_is_refused() {
    let dir = TestDir::new();
    let mut store = open_as(dir.path(), StateMachine::DataFamily).unwrap();
    write(&mut store, 1, 10, 1);
    apply_keys(&mut store, 1, 12);
    drop(store);
    let error = open_as(dir.path(), StateMachine::DataFamily)
        .err()
        .expect("no term for the applied index");
    assert!(
        error.to_string().contains("term was not recorded"),
        "{error}"
    );
}

#[test]
fn a_sync_makes_unsynced_writes_durable_and_reads_see_them_before() {
    let dir = TestDir::new();
    let mut store = open(dir.path());
    write_unsynced(&mut store, 1, 2000, 1);
    assert!(
        store.log_segment_count() >= 5,
        "unsynced writes roll over too"
    );
    assert_eq!(store.entries(1, 2001, u64::MAX).unwrap().len(), 2000);
    store.sync().unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!((store.first_index(), store.last_index()), (1, 2000));
    assert_eq!(store.initial_state().unwrap().hard_state.commit, 2000);
}

/// Flips `mask` into byte `at` of `file`, checks that opening the store
/// in `dir` is refused with an error saying `says`, and flips it back.
fn flip_is_refused(dir: &Path, file: &Path, at: usize, mask: u8, says: &str) {
    let mut bytes = std::fs::read(file).unwrap();
    bytes[at] ^= mask;
    std::fs::write(file, &bytes).unwrap();
    let error = RocksStorage::open(dir, StateMachine::External)
        .err()
        .unwrap_or_else(|| panic!("a flipped byte at {at} of {} opened", file.display()));
    assert!(error.to_string().contains(says), "{error}");
    bytes[at] ^= mask;
    std::fs::write(file, &bytes).unwrap();
}

#[test]
fn damage_before_valid_batches_and_missing_segments_are_refused() {
    let dir = TestDir::new();
    let mut store = open(dir.path());
    write(&mut store, 1, 1000, 1);
    drop(store);
    let files = segments(dir.path());
    assert!(files.len() >= 3);
    // Early in the newest segment: valid batches follow.
    flip_is_refused(dir.path(), files.last().unwrap(), 100, 0x40, "damage");
    // In an older, sealed segment.
    flip_is_refused(dir.path(), &files[0], 5000, 0x01, "seal");
    assert_eq!(open(dir.path()).last_index(), 1000, "both flips undone");
    // A missing middle segment.
    std::fs::remove_file(&files[1]).unwrap();
    let error = RocksStorage::open(dir.path(), StateMachine::External)
        .err()
        .expect("a missing segment is refused");
    assert!(error.to_string().contains("missing"), "{error}");
}

#[test]
fn a_crash_after_a_seal_opens_a_new_segment() {
    let dir = TestDir::new();
    let mut store = open(dir.path());
    write(&mut store, 1, 600, 1);
    drop(store);
    // As if the process died after sealing the newest segment but before
    // its successor was renamed into place.
    let newest = segments(dir.path()).pop().unwrap();
    std::fs::remove_file(&newest).unwrap();
    let mut store = open(dir.path());
    assert!(store.last_index() < 600);
    let last = store.last_index();
    write(&mut store, last + 1, last + 50, 1);
    drop(store);
    assert_eq!(open(dir.path()).last_index(), last + 50);
}

/// A store whose log holds 31..=60 of term 2 after a snapshot at 30, none
/// of them committed (a snapshot of term 3 at 40 will replace them).
fn log_the_snapshot_replaces(path: &Path) {
    let mut store = open(path);
    write(&mut store, 1, 30, 1);
    store
        .create_snapshot(30, ConfState::default(), Bytes::from_static(b"x"))
        .unwrap();
    store.compact(30).unwrap();
    write_committing(&mut store, 31, 60, 2, 30);
}

/// Installs a snapshot at `index` of term 3 (the log has term 2 up to
/// 60), which clears the log.
fn install_snapshot(store: &mut RocksStorage, index: u64) {
    let meta = dr_codec::message::SnapshotMeta {
        index,
        term: 3,
        conf_state: ConfState::default(),
    };
    store.stage_snapshot_chunk(&meta, 0, b"new").unwrap();
    store.apply_snapshot(&meta).unwrap();
    assert_eq!(
        (store.first_index(), store.last_index()),
        (index + 1, index)
    );
}

/// Installs a snapshot at `index` into the store in `path`, as if the
/// process died after the snapshot switch reached RocksDB but before the
/// log's clear reached the segment (the segment's bytes after the old
/// log's end are put back as they were); then opens it, appends 5
/// entries after the snapshot and checks the next open keeps them (they
/// are not replayed behind the old log's, which would drop them or read
/// as a gap).
fn install_losing_the_clear(path: &Path, index: u64) {
    let newest = segments(path).pop().unwrap();
    let before = std::fs::read(&newest).unwrap();
    let before_end = written_end(&newest);
    install_snapshot(&mut open(path), index);
    let mut after = std::fs::read(&newest).unwrap();
    after[before_end..].copy_from_slice(&before[before_end..]);
    std::fs::write(&newest, &after).unwrap();
    let mut store = open(path);
    assert_eq!(
        (store.first_index(), store.last_index()),
        (index + 1, index),
        "the old log must not come back"
    );
    assert_eq!(store.term(index), Ok(3));
    write(&mut store, index + 1, index + 5, 3);
    drop(store);
    let store = open(path);
    assert_eq!(
        (store.first_index(), store.last_index()),
        (index + 1, index + 5)
    );
    assert_eq!(
        store.entries(index + 1, index + 6, u64::MAX).unwrap().len(),
        5
    );
}

#[test]
fn a_snapshot_replacing_the_log_wins_over_the_old_log_after_a_crash() {
    let dir = TestDir::new();
    log_the_snapshot_replaces(dir.path());
    install_losing_the_clear(dir.path(), 40);
}

#[test]
fn a_snapshot_past_the_old_log_survives_a_crash_before_its_clear() {
    let dir = TestDir::new();
    log_the_snapshot_replaces(dir.path());
    install_losing_the_clear(dir.path(), 70);
}

#[test]
fn a_snapshot_clears_the_log_and_entries_after_it_persist() {
    let dir = TestDir::new();
    log_the_snapshot_replaces(dir.path());
    let mut store = open(dir.path());
    install_snapshot(&mut store, 40);
    write(&mut store, 41, 45, 3);
    drop(store);
    let store = open(dir.path());
    assert_eq!((store.first_index(), store.last_index()), (41, 45));
    assert_eq!(store.term(40), Ok(3));
    assert_eq!(store.term(41), Ok(3));
}

#[test]
fn the_hard_state_survives_a_crash_before_a_new_segment_opened() {
    let dir = TestDir::new();
    let mut store = open(dir.path());
    write(&mut store, 1, 600, 4);
    drop(store);
    // As if the process died right after the newest segment was renamed
    // into place, before its opening hard state was written: its bytes
    // are all zeros (its entries were never written either).
    let newest = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&newest).unwrap().len() as usize;
    std::fs::write(&newest, vec![0u8; len]).unwrap();
    let mut store = open(dir.path());
    let last = store.last_index();
    let hard_state = store.initial_state().unwrap().hard_state;
    assert_eq!((hard_state.term, hard_state.vote), (4, Some(1)));
    // Compacting everything must not drop the segment that holds the only
    // copy of the hard state.
    store
        .create_snapshot(last, ConfState::default(), Bytes::from_static(b"s"))
        .unwrap();
    store.compact(last).unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.initial_state().unwrap().hard_state, hard_state);
}
