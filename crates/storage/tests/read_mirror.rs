//! The read mirror in front of RocksDB (`StoreOptions::read_mirror_bytes`):
//! point reads answer what RocksDB holds, through writes, deletes, range
//! deletes, aging out and snapshot installs, and readers on other threads
//! see each key move forward only, never behind the applied index.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

use bytes::Bytes;
use dr_raft::conformance::entries;
use dr_raft::{LogStore, Storage};
use dr_storage::{DataWrite, ReadRefused, RocksStorage};
use support::{TestDir, transfer};

const KEYS: u64 = 300;

use support::{open_state_machine as open, single_voter as conf};

fn key(k: u64) -> Vec<u8> {
    format!("key-{k:04}").into_bytes()
}

/// xorshift64: a fixed sequence per seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Every key's point read against what a scan of RocksDB finds.
fn assert_reads_agree(store: &RocksStorage, when: &str) {
    let stored: std::collections::BTreeMap<Vec<u8>, Vec<u8>> =
        store.scan(b"", usize::MAX).unwrap().into_iter().collect();
    let reader = store.reader();
    for k in 0..KEYS {
        let expected = stored.get(&key(k)).cloned();
        assert_eq!(store.get(&key(k)).unwrap(), expected, "key {k} {when}");
        assert_eq!(reader.get(&key(k)).unwrap(), expected, "key {k} {when}");
    }
}

/// Installs a snapshot of `source` (taken at its applied index) into
/// `target`.
fn install(source: &mut RocksStorage, target: &mut RocksStorage) {
    let applied = source.applied_index();
    source
        .create_snapshot(applied, conf(), Bytes::new())
        .unwrap();
    let meta = source.snapshot_meta().unwrap();
    transfer(source, target, &meta).unwrap();
}

#[test]
fn point_reads_agree_with_rocksdb_through_every_kind_of_write() {
    // A budget far below the state (300 keys of up to 600 bytes, about
    // 200 KiB): keys age out of the mirror all the time.
    // Applies written through, or kept behind (4 KiB: a checkpoint on its
    // own thread every few rounds) with configuration changes (which go
    // through) now and then.
    for (seed, budget, behind) in [
        (1u64, 16 << 10, 0),
        (7, 64 << 10, 0),
        (42, 1 << 20, 0),
        (3, 16 << 10, 4 << 10),
        (9, 1 << 20, 4 << 10),
    ] {
        let dir = TestDir::new();
        let mut store = open(&dir, budget, behind);
        store.append(&entries(1, 2000, 1)).unwrap();
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut index = 0;
        for round in 0..400u64 {
            let writes_owned: Vec<(u64, Option<Vec<u8>>)> = (0..1 + rng.below(20))
                .map(|_| {
                    let k = rng.below(KEYS);
                    let value = (rng.below(4) != 0)
                        .then(|| vec![b'a' + (round % 26) as u8; 1 + rng.below(600) as usize]);
                    (k, value)
                })
                .collect();
            let keys: Vec<Vec<u8>> = writes_owned.iter().map(|(k, _)| key(*k)).collect();
            let mut writes: Vec<DataWrite<'_>> = keys
                .iter()
                .zip(&writes_owned)
                .map(|(key, (_, value))| match value {
                    Some(value) => DataWrite::Put(key, value),
                    None => DataWrite::Delete(key),
                })
                .collect();
            if rng.below(50) == 0 {
                // FLUSHALL's shape: a range delete, then more writes.
                writes.insert(
                    writes.len() / 2,
                    DataWrite::DeleteRange(b"key-", b"key-\xff"),
                );
            }
            index += 1;
            let conf_change = (behind == 0 || rng.below(10) == 0).then(conf);
            store.apply(&writes, index, conf_change.as_ref()).unwrap();
            assert_reads_agree(&store, &format!("after round {round} (seed {seed})"));
            if rng.below(100) == 0 {
                // Another state, further along, replaces this one whole.
                let source_dir = TestDir::new();
                let mut source = open(&source_dir, budget, behind);
                let at = store.last_index() + 10;
                source.append(&entries(1, at, 1)).unwrap();
                let (put, other) = (key(rng.below(KEYS)), key(rng.below(KEYS)));
                let writes = [
                    DataWrite::Put(&put, b"from the snapshot"),
                    DataWrite::Put(&other, b"also"),
                ];
                source.apply(&writes, at, Some(&conf())).unwrap();
                install(&mut source, &mut store);
                assert_eq!(store.applied_index(), at);
                assert_reads_agree(&store, &format!("after an install in round {round}"));
                assert_eq!(
                    store.get(&put).unwrap().as_deref(),
                    Some(&b"from the snapshot"[..])
                );
                index = at;
                store.append(&entries(at + 1, at + 2000, 1)).unwrap();
            }
        }
        assert!(store.read_mirror_bytes() <= budget + 64 * 1000);
    }
}

/// The round a reader's answer carries (0: the key was never written).
fn round_of(read: &Result<Option<Vec<u8>>, ReadRefused>) -> u64 {
    match read {
        Ok(Some(value)) => u64::from_be_bytes(value[..8].try_into().unwrap()),
        Ok(None) => 0,
        Err(error) => panic!("{error}"),
    }
}

#[test]
fn readers_on_other_threads_see_each_key_move_forward_only() {
    // A budget that ages keys out while the readers read (each round
    // writes about 40 KiB).
    // Applies written through, and kept behind with checkpoints on their
    // own thread every few rounds (256 KiB).
    for (budget, behind) in [
        (8 << 10, 0),
        (64 << 20, 0),
        (8 << 10, 256 << 10),
        (64 << 20, 256 << 10),
    ] {
        let dir = TestDir::new();
        let mut store = open(&dir, budget, behind);
        const ROUNDS: u64 = 1500;
        store.append(&entries(1, ROUNDS, 1)).unwrap();
        // The round a reader may count on: published after each apply,
        // as the engine publishes its applied index.
        let published = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..3u64)
            .map(|r| {
                let reader = store.reader();
                let (published, done) = (Arc::clone(&published), Arc::clone(&done));
                std::thread::spawn(move || {
                    let mut last_seen = vec![0u64; KEYS as usize];
                    let mut reads = 0u64;
                    let mut rng = Rng(r * 7919 + 13);
                    while !done.load(SeqCst) {
                        let k = rng.below(KEYS);
                        let floor = published.load(SeqCst);
                        let seen = match reader.get(&key(k)) {
                            Err(ReadRefused::Installing) => continue,
                            read => round_of(&read),
                        };
                        let last = last_seen[k as usize];
                        if seen < floor || seen < last {
                            // What the key reads as right after, and the
                            // round published then: a stale value that
                            // stays points at the mirror, one that does
                            // not at the read below it.
                            let again = round_of(&reader.get(&key(k)));
                            let published_now = published.load(SeqCst);
                            panic!(
                                "key {k} (budget {budget}, behind {behind}): round {seen} read with round {floor} \
                                 published and round {last} seen before; read again: {again:?} \
                                 with round {published_now} published"
                            );
                        }
                        last_seen[k as usize] = seen;
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        let keys: Vec<Vec<u8>> = (0..KEYS).map(key).collect();
        for round in 1..=ROUNDS {
            let mut value = round.to_be_bytes().to_vec();
            value.resize(128, b'.');
            let writes: Vec<DataWrite<'_>> =
                keys.iter().map(|key| DataWrite::Put(key, &value)).collect();
            store.apply(&writes, round, None).unwrap();
            published.store(round, SeqCst);
        }
        done.store(true, SeqCst);
        for reader in readers {
            let reads = reader.join().expect("every read moved forward");
            assert!(reads > 0);
        }
    }
}
