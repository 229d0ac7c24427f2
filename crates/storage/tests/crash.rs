//! Kill a writing process at random points and check, after reopening,
//! that nothing acknowledged is lost and nothing is applied twice or
//! skipped.
//!
//! The writer is this test binary itself, run again with an environment
//! variable naming the store: it appends batches of entries through
//! `persist_ready` (one synced write each), prints `acked <index>` after
//! each returns, applies committed entries in batches, and now and then
//! snapshots (on its thread and in the background) and compacts.
//! Applying entry `i` sets `counter` to `i` and
//! `slot-<i % 97>` to a 1 KiB value naming `i`, so the data says exactly
//! which entries were applied.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dr_codec::message::ConfState;
use dr_raft::conformance::entries;
use dr_raft::{HardState, LogStore, Ready, Storage};
use dr_storage::{DataWrite, LogKind, RocksStorage, SEGMENT_BYTES_MIN, StateMachine, StoreOptions};
use support::TestDir;

const CHILD_ENV: &str = "DR_STORAGE_CRASH_CHILD_STORE";
/// Which log the child's store keeps (`segments` or `rocksdb`).
const CHILD_LOG_ENV: &str = "DR_STORAGE_CRASH_CHILD_LOG";
const SLOTS: u64 = 97;
const ROUNDS: usize = 8;

fn slot_value(index: u64) -> Vec<u8> {
    let mut value = format!("written by entry {index};").into_bytes();
    value.resize(1024, b'#');
    value
}

fn apply_up_to(store: &mut RocksStorage, to: u64) {
    let from = store.applied_index() + 1;
    if from > to {
        return;
    }
    // The newest write per slot wins, as applying one by one would give.
    let first = from.max(to.saturating_sub(SLOTS - 1));
    let keys: Vec<(Vec<u8>, Vec<u8>)> = (first..=to)
        .map(|i| (format!("slot-{}", i % SLOTS).into_bytes(), slot_value(i)))
        .collect();
    let counter = to.to_string().into_bytes();
    let mut writes = vec![DataWrite::Put(b"counter", &counter)];
    writes.extend(keys.iter().map(|(k, v)| DataWrite::Put(k, v)));
    store.apply(&writes, to, None).expect("apply");
}

fn write_forever(path: &Path, log: LogKind) -> ! {
    // Tiny segments: the writer crosses seals, new and recycled segments
    // and compactions that drop them many times per round.
    // Applies kept behind (with the segmented log) up to 1 MiB: a
    // checkpoint every ten applies or so, besides the snapshots'.
    let options = StoreOptions {
        log,
        segment_bytes: SEGMENT_BYTES_MIN,
        write_behind_bytes: 1 << 20,
        ..StoreOptions::default()
    };
    let mut store =
        RocksStorage::open_with(path, StateMachine::DataFamily, options).expect("child opens");
    let conf = ConfState {
        voters: vec![1],
        ..ConfState::default()
    };
    let mut stdout = std::io::stdout();
    let mut batch = 1u64;
    loop {
        let last = store.last_index();
        let count = 1 + (batch * 7919) % 32;
        let ready = Ready {
            entries: entries(last + 1, last + count, 1),
            hard_state: Some(HardState {
                term: 1,
                vote: Some(1),
                commit: last + count,
            }),
            ..Ready::default()
        };
        store.persist_ready(&ready).expect("persist");
        writeln!(stdout, "acked {}", last + count).expect("stdout");
        stdout.flush().expect("stdout");
        let applied_to = last + count - (batch % 3);
        apply_up_to(&mut store, applied_to);
        // Background snapshots too: pinned and flushed on their thread,
        // switched in (and the log compacted behind them) when polled.
        if batch % 40 == 20 {
            store.begin_snapshot(conf.clone()).ok();
        }
        if let Some(index) = store.poll_snapshot() {
            store
                .compact(index.saturating_sub(100).max(store.first_index()))
                .ok();
        }
        if batch.is_multiple_of(40) {
            let applied = store.applied_index();
            if applied > store.snapshot_meta().unwrap().index {
                store
                    .create_snapshot(applied, conf.clone(), Bytes::new())
                    .unwrap();
                store
                    .compact(applied.saturating_sub(100).max(store.first_index()))
                    .ok();
            }
        }
        batch += 1;
    }
}

/// Runs when this binary is started as the writer child.
#[test]
#[ignore = "the writer process of kills_at_random_points_lose_nothing_acknowledged"]
fn crash_writer_child() {
    let path = std::env::var(CHILD_ENV).expect("started by the crash test");
    let log = match std::env::var(CHILD_LOG_ENV).as_deref() {
        Ok("rocksdb") => LogKind::RocksDb,
        _ => LogKind::Segments,
    };
    write_forever(Path::new(&path), log);
}

fn verify(path: &Path, acked: u64, log: LogKind) -> u64 {
    let store = RocksStorage::open(path, StateMachine::DataFamily).expect("reopens after a kill");
    assert_eq!(store.log_kind(), log);
    let applied = store.applied_index();
    assert!(
        store.last_index() >= acked,
        "acknowledged entry {acked} lost"
    );
    assert!(store.initial_state().unwrap().hard_state.commit >= acked);
    assert!(applied <= store.last_index());
    let counter = store
        .get(b"counter")
        .unwrap()
        .unwrap_or_else(|| b"0".to_vec());
    assert_eq!(
        String::from_utf8(counter).unwrap(),
        applied.to_string(),
        "the counter says which entry was applied last"
    );
    for slot in 0..SLOTS {
        let newest = (applied >= slot)
            .then(|| applied - (applied - slot) % SLOTS)
            .filter(|&i| i >= 1);
        let stored = store.get(format!("slot-{slot}").as_bytes()).unwrap();
        assert_eq!(
            stored,
            newest.map(slot_value),
            "slot {slot} at applied {applied}"
        );
    }
    store.last_index()
}

#[test]
fn kills_at_random_points_lose_nothing_acknowledged() {
    kills_lose_nothing(LogKind::Segments, "segments");
}

#[test]
fn kills_at_random_points_lose_nothing_acknowledged_rocksdb_log() {
    kills_lose_nothing(LogKind::RocksDb, "rocksdb");
}

fn kills_lose_nothing(log: LogKind, log_name: &str) {
    let dir = TestDir::new();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("crash test seed {seed}");
    let mut random = seed | 1;
    let mut previous_last = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_writer_child", "--ignored", "--nocapture"])
            .env(CHILD_ENV, dir.path())
            .env(CHILD_LOG_ENV, log_name)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the writer");
        let acked = Arc::new(AtomicU64::new(0));
        let reader = {
            let acked = Arc::clone(&acked);
            let stdout = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(index) = line.strip_prefix("acked ") {
                        acked.store(index.parse().unwrap(), Ordering::SeqCst);
                    }
                }
            })
        };
        let started = Instant::now();
        while acked.load(Ordering::SeqCst) == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "round {round}: the writer acknowledged nothing"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "round {round}: the writer died"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        std::thread::sleep(Duration::from_millis(random % 300));
        child.kill().expect("kill the writer");
        child.wait().unwrap();
        reader.join().unwrap();
        let acked = acked.load(Ordering::SeqCst);
        assert!(acked > previous_last, "round {round} made progress");
        previous_last = verify(dir.path(), acked, log);
        println!("round {round}: acked {acked}, log ends at {previous_last}");
    }
}
