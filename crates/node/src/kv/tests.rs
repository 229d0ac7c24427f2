//! The apply path checked against the store: random histories applied
//! with warm and cold caches and in different batchings, expiry across
//! clocks that step back, and the stored state's own consistency.

use dr_codec::message::{Entry, EntryKind, LogIndex};
use dr_storage::RocksStorage;

use super::record::{self, EXPIRY, Record};
use super::*;

/// A store in a fresh directory, removed on drop.
pub(crate) struct TempStore {
    store: Option<RocksStorage>,
    dir: std::path::PathBuf,
}

impl TempStore {
    pub(crate) fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "drkv-kv-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let store = RocksStorage::open(&dir, dr_storage::StateMachine::DataFamily)
            .expect("a fresh store opens");
        Self {
            store: Some(store),
            dir,
        }
    }

    pub(crate) fn store(&mut self) -> &mut RocksStorage {
        self.store.as_mut().expect("open until dropped")
    }

    fn stored(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.store().scan(b"", usize::MAX).expect("scan")
    }
}

impl Drop for TempStore {
    fn drop(&mut self) {
        drop(self.store.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const T0: u64 = 1_700_000_000_000;

/// Xorshift: reproducible.
fn next(state: &mut u64, bound: u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state % bound
}

/// A random op on one of eight keys, with times to live of a few entries.
fn random_op(state: &mut u64, now: u64) -> WriteOp {
    let key = |k: u64| Bytes::from(format!("key-{k}"));
    let k = next(state, 8);
    let ttl = match next(state, 5) {
        0 => Ttl::Keep,
        1 => Ttl::In(next(state, 40) as i64 - 5),
        2 => Ttl::At((now + next(state, 40)) as i64 - 5),
        _ => Ttl::Clear,
    };
    let field = |f: u64| Bytes::from(format!("f{f}"));
    let words = |words: &[&str]| {
        words
            .iter()
            .map(|w| Bytes::from(w.to_string()))
            .collect::<Vec<_>>()
    };
    match next(state, 24) {
        22 | 23 => WriteOp::Transaction {
            watched: if next(state, 2) == 0 {
                vec![(key(k), next(state, 3))]
            } else {
                Vec::new()
            },
            commands: vec![
                words(&["SET", &format!("key-{k}"), "t", "PX", "20"]),
                words(&["HSET", &format!("key-{}", next(state, 8)), "f1", "x"]),
                words(&["INCR", &format!("key-{}", next(state, 8))]),
                words(&["GET", &format!("key-{k}")]),
                words(&[
                    "RENAME",
                    &format!("key-{k}"),
                    &format!("key-{}", next(state, 8)),
                ]),
            ],
        },
        17 => WriteOp::SetRange {
            key: key(k),
            offset: next(state, 6),
            value: "xy".into(),
        },
        18 => WriteOp::SetManyIfNone(vec![
            (key(k), "a".into()),
            (key(next(state, 8)), "b".into()),
        ]),
        19 => WriteOp::Rename {
            from: key(k),
            to: key(next(state, 8)),
            if_absent: next(state, 2) == 0,
        },
        20 => WriteOp::Copy {
            from: key(k),
            to: key(next(state, 8)),
            replace: next(state, 2) == 0,
        },
        21 => WriteOp::IncrementByFloat {
            key: key(k),
            delta: "0.1".into(),
        },
        14 => WriteOp::HashSet {
            key: key(k),
            pairs: (0..=next(state, 2))
                .map(|_| {
                    (
                        field(next(state, 4)),
                        Bytes::from(format!("{}", next(state, 9))),
                    )
                })
                .collect(),
            if_absent: next(state, 4) == 0,
        },
        15 => WriteOp::HashDelete {
            key: key(k),
            fields: (0..=next(state, 2))
                .map(|_| field(next(state, 4)))
                .collect(),
        },
        16 => WriteOp::HashIncrementBy {
            key: key(k),
            field: field(next(state, 4)),
            delta: 2,
        },
        0..=2 => WriteOp::Set {
            key: key(k),
            value: Bytes::from(format!("v{}", next(state, 100))),
            condition: [
                SetCondition::Always,
                SetCondition::IfAbsent,
                SetCondition::IfPresent,
            ][next(state, 3) as usize],
            ttl,
            get: next(state, 2) == 0,
        },
        3 => WriteOp::Delete((0..=next(state, 3)).map(|_| key(next(state, 8))).collect()),
        4 => WriteOp::SetMany(
            (0..=next(state, 3))
                .map(|_| (key(next(state, 8)), "m".into()))
                .collect(),
        ),
        5 => WriteOp::IncrementBy {
            key: key(k),
            delta: 1,
        },
        6 => WriteOp::CompareAndSet {
            key: key(k),
            expected: "".into(),
            new: "c".into(),
        },
        7 => WriteOp::Expire {
            key: key(k),
            ttl: if let Ttl::Keep | Ttl::Clear = ttl {
                Ttl::In(10)
            } else {
                ttl
            },
            condition: [
                ExpireCondition::default(),
                ExpireCondition {
                    if_none: true,
                    ..ExpireCondition::default()
                },
                ExpireCondition {
                    if_some: true,
                    ..ExpireCondition::default()
                },
                ExpireCondition {
                    if_later: true,
                    ..ExpireCondition::default()
                },
                ExpireCondition {
                    if_earlier: true,
                    if_some: next(state, 2) == 0,
                    ..ExpireCondition::default()
                },
            ][next(state, 5) as usize],
        },
        8 => WriteOp::Persist(key(k)),
        9 => WriteOp::GetEx { key: key(k), ttl },
        10 => WriteOp::GetDel(key(k)),
        11 => WriteOp::Append {
            key: key(k),
            value: "a".into(),
        },
        12 => WriteOp::Reap((0..3).map(|k| (key(k), now - next(state, 20))).collect()),
        _ if next(state, 8) == 0 => WriteOp::Flush,
        _ => WriteOp::Delete(vec![key(k)]),
    }
}

pub(crate) fn entry(index: LogIndex, now_ms: u64, op: WriteOp) -> Entry {
    Entry {
        term: 1,
        index,
        kind: EntryKind::Normal,
        payload: Stamped { now_ms, op }.encode(),
    }
}

/// Random entries, stamped with times that mostly advance (a new leader's
/// clock may be behind).
fn random_entries(state: &mut u64, count: usize) -> Vec<Entry> {
    let mut now = T0;
    (1..=count as u64)
        .map(|index| {
            now = now + next(state, 6) - 1;
            entry(index, now, random_op(state, now))
        })
        .collect()
}

fn apply(
    store: &mut RocksStorage,
    entries: &[Entry],
    tally: &mut Tally,
    presence: &mut PresenceCache,
) -> Vec<String> {
    let wants_old = |index: LogIndex| index.is_multiple_of(3);
    apply_entries(store, entries, None, tally, presence, wants_old, 1000)
        .expect("applies")
        .into_iter()
        .map(|applied| format!("{:?}", applied.outcome))
        .collect()
}

/// The stored state is consistent: the count is the number of records,
/// every record with an expiry has its index entry and every index entry
/// its record, every field its hash.
fn check_consistent(store: &mut TempStore, tally: Tally) {
    let stored = store.stored();
    let records: Vec<(&[u8], Record)> = stored
        .iter()
        .filter(|(key, _)| key.first() == Some(&USER))
        .map(|(key, value)| {
            let record = Record::decode(Bytes::from(value.clone())).expect("a record");
            (&key[1..], record)
        })
        .collect();
    assert_eq!(records.len() as u64, tally.keys, "the count");
    // What the state holds (the earliest expiry written is a hint kept
    // beside it, `None` when read back).
    let stored_tally = self::tally(store.store()).unwrap();
    assert_eq!(
        (stored_tally.keys, stored_tally.clock_ms),
        (tally.keys, tally.clock_ms)
    );
    let indexed: Vec<(u64, &[u8])> = stored
        .iter()
        .filter(|(key, _)| key.first() == Some(&EXPIRY))
        .map(|(key, _)| record::parse_expiry_key(key).expect("an index key"))
        .collect();
    let expiring: Vec<(u64, &[u8])> = records
        .iter()
        .filter_map(|(key, record)| record.meta.expire_at_ms.map(|at| (at, *key)))
        .collect();
    let mut indexed_sorted = indexed.clone();
    indexed_sorted.sort_by(|a, b| a.1.cmp(b.1));
    let mut expiring_sorted = expiring;
    expiring_sorted.sort_by(|a, b| a.1.cmp(b.1));
    assert_eq!(indexed_sorted, expiring_sorted, "the expiry index");
    // Every field belongs to a hash whose count is its number of fields.
    let mut fields_per_key: std::collections::BTreeMap<Vec<u8>, u64> = Default::default();
    for (stored, _) in stored
        .iter()
        .filter(|(key, _)| key.first() == Some(&record::FIELD))
    {
        let len = u32::from_be_bytes(stored[1..5].try_into().unwrap()) as usize;
        *fields_per_key
            .entry(stored[5..5 + len].to_vec())
            .or_default() += 1;
    }
    let hashes: std::collections::BTreeMap<Vec<u8>, u64> = records
        .iter()
        .filter(|(_, record)| record.meta.kind == Kind::Hash)
        .map(|(key, record)| (key.to_vec(), record.field_count()))
        .collect();
    assert_eq!(fields_per_key, hashes, "hash fields and their counts");
}

/// Applies 1,500 random entries (`seed`) in random batches twice: with
/// `cache` kept across batches and with an empty cache each batch (which
/// reads the store); the outcomes, counts and stored states must match,
/// and the cached side stays consistent.
fn applies_as_reading_the_store(cache: &mut PresenceCache, seed: u64) {
    let (mut cached, mut cold) = (TempStore::new("cached"), TempStore::new("cold"));
    let (mut cached_tally, mut cold_tally) = (Tally::default(), Tally::default());
    let mut state = seed;
    let entries = random_entries(&mut state, 1500);
    let mut at = 0;
    while at < entries.len() {
        let end = (at + 1 + next(&mut state, 5) as usize).min(entries.len());
        let batch = &entries[at..end];
        let got = apply(cached.store(), batch, &mut cached_tally, cache);
        let expected = apply(
            cold.store(),
            batch,
            &mut cold_tally,
            &mut PresenceCache::default(),
        );
        assert_eq!(got, expected, "seed {seed:#x}, entries {at}..{end}");
        assert_eq!(cached_tally, cold_tally);
        check_consistent(&mut cached, cached_tally);
        at = end;
    }
    assert_eq!(cached.stored(), cold.stored());
}

#[test]
fn applying_with_a_warm_presence_cache_matches_reading_the_store() {
    // Room for five of these keys: it fills and starts over.
    let mut cache = PresenceCache::with_limit(5 * (6 + presence::PRESENCE_ENTRY_OVERHEAD));
    applies_as_reading_the_store(&mut cache, 0x9E37_79B9_7F4A_7C15);
}

/// A cache that knows every key of a keyspace that started empty (it
/// answers "absent" for keys it never saw, without a store read) applies
/// as reading the store does, through flushes (after which it knows
/// every key again) and past its budget (after which it no longer does).
#[test]
fn a_presence_cache_that_knows_every_key_matches_reading_the_store() {
    for (seed, keys) in [(0x51_7CC1_B727_220A, 10_000), (0xD1B5_4A32_D192_ED03, 40)] {
        let mut cache = PresenceCache::with_limit(keys * (6 + presence::PRESENCE_ENTRY_OVERHEAD));
        cache.knows_every_key();
        applies_as_reading_the_store(&mut cache, seed);
    }
}

#[test]
fn the_stored_state_depends_on_the_entries_not_on_their_batching() {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let entries = random_entries(&mut state, 1000);
    let (mut one, mut many) = (TempStore::new("one-batch"), TempStore::new("many-batches"));
    let (mut tally_one, mut tally_many) = (Tally::default(), Tally::default());
    let outcomes_one = apply(
        one.store(),
        &entries,
        &mut tally_one,
        &mut PresenceCache::default(),
    );
    let mut outcomes_many = Vec::new();
    let mut presence = PresenceCache::default();
    for batch in entries.chunks(7) {
        outcomes_many.extend(apply(many.store(), batch, &mut tally_many, &mut presence));
    }
    assert_eq!(outcomes_one, outcomes_many);
    assert_eq!(tally_one, tally_many);
    assert_eq!(one.stored(), many.stored());
    check_consistent(&mut one, tally_one);
}

fn set(key: &str, ttl: Ttl) -> WriteOp {
    WriteOp::Set {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: "v".into(),
        condition: SetCondition::Always,
        ttl,
        get: false,
    }
}

#[test]
fn a_key_is_gone_for_every_entry_stamped_at_or_after_its_expiry() {
    let mut store = TempStore::new("expiry");
    let mut tally = Tally::default();
    let mut presence = PresenceCache::default();
    let entries = [
        entry(1, T0, set("a", Ttl::In(100))),
        entry(
            2,
            T0 + 99,
            WriteOp::IncrementBy {
                key: "n".into(),
                delta: 1,
            },
        ),
        entry(
            3,
            T0 + 99,
            WriteOp::Expire {
                key: "a".into(),
                ttl: Ttl::In(1),
                condition: ExpireCondition {
                    if_later: true,
                    ..ExpireCondition::default()
                },
            },
        ),
        // A new leader whose clock is behind: the state's clock holds.
        entry(
            4,
            T0 + 50,
            WriteOp::GetEx {
                key: "a".into(),
                ttl: Ttl::Keep,
            },
        ),
        entry(
            5,
            T0 + 100,
            WriteOp::GetEx {
                key: "a".into(),
                ttl: Ttl::Keep,
            },
        ),
    ];
    let outcomes = apply(store.store(), &entries, &mut tally, &mut presence);
    assert_eq!(
        outcomes,
        [
            "Set { written: true, old: None }",
            "Integer(1)",
            "Integer(0)",
            "Value(Some(b\"v\"))",
            "Value(None)",
        ]
    );
    assert_eq!((tally.keys, tally.clock_ms), (1, T0 + 100));
    check_consistent(&mut store, tally);
    // A reap names the time it saw: a key whose expiry changed since stays.
    let entries = [
        entry(6, T0 + 100, set("b", Ttl::At((T0 + 150) as i64))),
        entry(
            7,
            T0 + 120,
            WriteOp::Expire {
                key: "b".into(),
                ttl: Ttl::At((T0 + 500) as i64),
                condition: ExpireCondition::default(),
            },
        ),
        entry(8, T0 + 200, WriteOp::Reap(vec![("b".into(), T0 + 150)])),
        entry(9, T0 + 500, WriteOp::Reap(vec![("b".into(), T0 + 500)])),
    ];
    let outcomes = apply(store.store(), &entries, &mut tally, &mut presence);
    assert_eq!(outcomes[2..], ["Integer(0)", "Integer(1)"]);
    check_consistent(&mut store, tally);
    let entries = [
        entry(10, T0 + 500, WriteOp::Flush),
        entry(11, T0 + 500, set("c", Ttl::Keep)),
    ];
    apply(store.store(), &entries, &mut tally, &mut presence);
    assert_eq!(tally.keys, 1);
    check_consistent(&mut store, tally);
}

#[test]
fn a_store_of_the_first_format_is_refused() {
    let mut store = TempStore::new("legacy");
    store
        .store()
        .apply(
            &[dr_storage::DataWrite::Put(
                LEGACY_KEY_COUNT,
                &[1, 0, 0, 0, 0, 0, 0, 0],
            )],
            0,
            None,
        )
        .unwrap();
    let error = tally(store.store()).unwrap_err().to_string();
    assert!(error.contains("first storage format"), "{error}");
}

#[test]
fn integers_are_parsed_the_redis_way() {
    assert_eq!(parse_integer(b"0"), Some(0));
    assert_eq!(parse_integer(b"-12"), Some(-12));
    assert_eq!(parse_integer(b"9223372036854775807"), Some(i64::MAX));
    for bad in [
        &b""[..],
        b"-",
        b"01",
        b"-0",
        b" 1",
        b"1 ",
        b"1.5",
        b"9223372036854775808",
        b"x",
    ] {
        assert_eq!(
            parse_integer(bad),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}
