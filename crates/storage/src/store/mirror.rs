//! A mirror of recently written state-machine records, in front of
//! RocksDB for point reads; with write-behind, also the home of the
//! applied writes RocksDB does not hold yet.
//!
//! A point read of the `data` family searches the memtable's skiplist
//! first, and with a 64 MiB memtable that search is a score of cache
//! misses: the largest single cost of a read served on the leader's lease
//! and of the engine thread serving ReadIndex reads. RocksDB's row cache
//! does not help there (it caches what SST files answer, after the
//! memtable was searched). The mirror answers from a hash map instead.
//!
//! ## Write-behind
//!
//! A store that writes its applies behind ([`ReadMirror::stage`]) keeps
//! them here, in each shard's `dirty` map, until a checkpoint writes them
//! to RocksDB in one batch and [`ReadMirror::settle`] turns them into
//! ordinary (clean) mirrored records. A checkpoint on another thread
//! first [`freeze`](ReadMirror::freeze)s them: the dirty maps become the
//! `frozen` ones (one swap per shard), which the thread reads while new
//! writes fill new dirty maps, and [`settle_frozen`](ReadMirror::settle_frozen)
//! turns them clean once RocksDB took them. A dirty or frozen record is
//! the truth for its key (dirty before frozen): it is never aged out or
//! dropped, only settled (after RocksDB took it) or cleared (when a
//! snapshot install replaces the state).
//!
//! ## Invariants
//!
//! - It is filled only by the store's own writes: staged as dirty, or
//!   recorded after RocksDB took them ([`ReadMirror::record`] after each
//!   apply's write, in order); never by a read, so a reader can never put
//!   a value there that a later write has already replaced.
//! - A key is staged (dirty, frozen, or both: the dirty value is the
//!   newer), or clean (young, old, or both: the young value is the
//!   newer), or absent: never staged and clean at once. A clean record
//!   is never recorded over a staged one (asserted): a store writes
//!   through to RocksDB only with nothing staged.
//! - A key it holds maps to the newest value RocksDB holds (or to
//!   `None`: deleted), except between an apply's RocksDB write and its
//!   [`record`](ReadMirror::record), when it still holds the value before
//!   that write: a reader then sees the state before the apply, which the
//!   applied index published to readers still names. So for each key
//!   every reader sees the values in the order they were written, and a
//!   key that leaves the mirror (aged out, or a clear) is served by
//!   RocksDB, which holds that value or a newer one.
//! - A range delete and a snapshot install clear it (before the install
//!   rewrites RocksDB's family, inside its guard).
//! - Bounded: the clean records take at most about its budget in bytes
//!   (keys, values and a per-entry overhead, give or take one entry per
//!   shard); each shard keeps two generations, and when the young one
//!   fills, the old one is dropped and the young one ages. A zero budget
//!   keeps no clean record. A checkpoint's records settle into a shard
//!   whole when there are more than a few: they become its young
//!   generation, whatever its size (they were staged memory until then),
//!   so a generation holds at most its share of the budget or one
//!   checkpoint's records; a key may then be in both generations, the
//!   young one holding its newest value (reads look there first). The
//!   dirty records are bounded by the store (it checkpoints when
//!   [`ReadMirror::dirty_bytes`] passes its bound).
//!
//! ## Non-goals
//!
//! No read-through filling and no recency by reads (see above); no range
//! reads (scans go to RocksDB).

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::DataWrite;
use crate::short_key::ShortKey;

/// What one mirrored record costs beyond its key's and value's bytes
/// (the map's slot with the key inline or boxed, the value's allocation
/// header; an upper bound for keys kept inline).
const ENTRY_OVERHEAD_BYTES: usize = 96;
/// The most shards (each behind its own lock).
const SHARDS_MAX: usize = 64;
/// Bytes of budget per shard at least (a small budget gets fewer shards).
const SHARD_BYTES_MIN: usize = 64 << 10;
/// A shard's settled records that join its young generation one by one
/// at most; more become the young generation whole.
const SETTLE_INSERT_RECORDS_MAX: usize = 256;

/// A stored value, or `None` for a key known deleted.
type Mirrored = Option<Box<[u8]>>;

/// A generation of records.
type Records = HashMap<ShortKey, Mirrored>;

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct ReadMirror {
    shards: Box<[RwLock<Shard>]>,
    /// Bytes a shard's young generation holds before it ages (0: no
    /// clean records are kept).
    young_bytes_max: usize,
    /// A shard's settled records that join its young generation one by
    /// one at most ([`SETTLE_INSERT_RECORDS_MAX`] outside tests).
    settle_insert_records_max: usize,
    /// The dirty records' bytes over all shards.
    dirty_bytes: AtomicUsize,
    /// The frozen records' bytes over all shards.
    frozen_bytes: AtomicUsize,
}

#[derive(Debug, Default)]
struct Shard {
    /// Staged writes RocksDB does not hold yet (write-behind).
    dirty: HashMap<ShortKey, Mirrored>,
    /// Staged writes a checkpoint is writing to RocksDB now.
    frozen: HashMap<ShortKey, Mirrored>,
    young: HashMap<ShortKey, Mirrored>,
    old: HashMap<ShortKey, Mirrored>,
    /// The young generation's bytes (as [`entry_bytes`] counts them).
    young_bytes: usize,
    /// The old generation's.
    old_bytes: usize,
    /// The dirty records'.
    dirty_bytes: usize,
    /// The frozen records'.
    frozen_bytes: usize,
}

fn entry_bytes(key: &[u8], value: Option<&[u8]>) -> usize {
    key.len() + value.map_or(0, <[u8]>::len) + ENTRY_OVERHEAD_BYTES
}

/// `held` less an entry it counted: the count covers every entry of its
/// generation (a shortfall is a bookkeeping bug, never to be wrapped).
fn uncount(held: usize, entry: usize) -> usize {
    held.checked_sub(entry)
        .expect("a read mirror generation counts every entry it holds")
}

/// Which staged records: those applies write now, or those a checkpoint
/// on another thread is writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Staging {
    /// Staged since the last freeze.
    Dirty,
    /// Frozen for the checkpoint in flight.
    Frozen,
}

/// How a lookup went.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Mirror {
    /// The key's current value (`None`: deleted).
    Held(Option<Vec<u8>>),
    /// Not mirrored: ask RocksDB.
    Unknown,
}

impl ReadMirror {
    /// A mirror of at most about `bytes_max` bytes of clean records (0:
    /// none); `write_behind`: it will also hold staged writes.
    pub(crate) fn new(bytes_max: usize, write_behind: bool) -> Self {
        Self::with_settle_insert_records_max(bytes_max, write_behind, SETTLE_INSERT_RECORDS_MAX)
    }

    /// [`ReadMirror::new`], settling at most `settle_insert_records_max`
    /// records per shard one by one (tests choose a few, so that they
    /// settle both ways).
    fn with_settle_insert_records_max(
        bytes_max: usize,
        write_behind: bool,
        settle_insert_records_max: usize,
    ) -> Self {
        let count = match (bytes_max, write_behind) {
            (0, false) => 0,
            (0, true) => SHARDS_MAX,
            (bytes, _) => (bytes / SHARD_BYTES_MIN).clamp(1, SHARDS_MAX),
        };
        Self {
            shards: (0..count).map(|_| RwLock::default()).collect(),
            // Two generations per shard share the shard's part.
            young_bytes_max: bytes_max.checked_div(count).unwrap_or(0) / 2,
            settle_insert_records_max,
            dirty_bytes: AtomicUsize::new(0),
            frozen_bytes: AtomicUsize::new(0),
        }
    }

    fn shard_index(&self, key: &[u8]) -> Option<usize> {
        if self.shards.is_empty() {
            return None;
        }
        Some(dr_simd::crc32c(key) as usize % self.shards.len())
    }

    fn read(&self, index: usize) -> RwLockReadGuard<'_, Shard> {
        self.shards[index].read()
    }

    fn write(&self, index: usize) -> RwLockWriteGuard<'_, Shard> {
        self.shards[index].write()
    }

    /// The mirrored value of `key`, if the mirror holds it.
    pub(crate) fn get(&self, key: &[u8]) -> Mirror {
        let Some(index) = self.shard_index(key) else {
            return Mirror::Unknown;
        };
        let shard = self.read(index);
        let held = (shard.dirty.get(key))
            .or_else(|| shard.frozen.get(key))
            .or_else(|| shard.young.get(key))
            .or_else(|| shard.old.get(key));
        match held {
            Some(value) => Mirror::Held(value.as_deref().map(<[u8]>::to_vec)),
            None => Mirror::Unknown,
        }
    }

    /// Takes `writes` in, in order; call it after RocksDB took them.
    pub(crate) fn record(&self, writes: &[DataWrite<'_>]) {
        if self.shards.is_empty() {
            return;
        }
        for write in writes {
            match *write {
                DataWrite::Put(key, value) => self.insert(key, Some(value)),
                DataWrite::Delete(key) => self.insert(key, None),
                DataWrite::DeleteRange(..) => self.clear(),
            }
        }
    }

    fn insert(&self, key: &[u8], value: Option<&[u8]>) {
        let Some(index) = self.shard_index(key) else {
            return;
        };
        let added = entry_bytes(key, value);
        let aged = {
            let mut shard = self.write(index);
            let shard = &mut *shard;
            assert!(
                !shard.dirty.contains_key(key) && !shard.frozen.contains_key(key),
                "a write went through to RocksDB past a staged one"
            );
            if self.young_bytes_max == 0 {
                return;
            }
            if let Some(slot) = shard.young.get_mut(key) {
                shard.young_bytes = uncount(shard.young_bytes, entry_bytes(key, slot.as_deref()));
                match (slot.as_deref_mut(), value) {
                    // The same length (an overwrite of a fixed-size
                    // record): no allocation.
                    (Some(held), Some(new)) if held.len() == new.len() => held.copy_from_slice(new),
                    (_, value) => *slot = value.map(Box::from),
                }
            } else {
                let key = match shard.old.remove_entry(key) {
                    Some((key, old)) => {
                        shard.old_bytes =
                            uncount(shard.old_bytes, entry_bytes(&key, old.as_deref()));
                        key
                    }
                    None => key.into(),
                };
                shard.young.insert(key, value.map(Box::from));
            }
            shard.young_bytes += added;
            self.age_if_full(shard)
        };
        // The dropped generation is freed outside the lock.
        drop(aged);
    }

    /// Ages a full young generation: returns the old one, to be dropped
    /// (outside the lock).
    fn age_if_full(&self, shard: &mut Shard) -> Option<HashMap<ShortKey, Mirrored>> {
        if shard.young_bytes <= self.young_bytes_max {
            return None;
        }
        shard.old_bytes = std::mem::take(&mut shard.young_bytes);
        let young = std::mem::take(&mut shard.young);
        Some(std::mem::replace(&mut shard.old, young))
    }

    /// Stages a write RocksDB does not take yet (a put, or with `None` a
    /// delete): from now on the key reads so until the write is settled
    /// or cleared. Returns whether the key was not dirty before.
    pub(crate) fn stage(&self, key: &[u8], value: Option<&[u8]>) -> bool {
        let index = self
            .shard_index(key)
            .expect("a write-behind mirror has shards");
        let added = entry_bytes(key, value);
        let mut shard = self.write(index);
        let shard = &mut *shard;
        let removed = if let Some(slot) = shard.dirty.get_mut(key) {
            let removed = entry_bytes(key, slot.as_deref());
            match (slot.as_deref_mut(), value) {
                (Some(held), Some(new)) if held.len() == new.len() => held.copy_from_slice(new),
                (_, value) => *slot = value.map(Box::from),
            }
            Some(removed)
        } else {
            // Out of the clean generations (both: a settle may have left
            // an older copy in the old one): a staged key is never clean.
            let young = shard.young.remove_entry(key).map(|(key, young)| {
                shard.young_bytes = uncount(shard.young_bytes, entry_bytes(&key, young.as_deref()));
                key
            });
            let old = shard.old.remove_entry(key).map(|(key, old)| {
                shard.old_bytes = uncount(shard.old_bytes, entry_bytes(&key, old.as_deref()));
                key
            });
            let key = young.or(old).unwrap_or_else(|| key.into());
            shard.dirty.insert(key, value.map(Box::from));
            None
        };
        shard.dirty_bytes += added;
        self.dirty_bytes.fetch_add(added, Relaxed);
        if let Some(removed) = removed {
            shard.dirty_bytes = uncount(shard.dirty_bytes, removed);
            self.dirty_bytes.fetch_sub(removed, Relaxed);
        }
        removed.is_none()
    }

    /// Calls `read` with the value of `key` (`None`: deleted) among the
    /// `which` records, if it is one of them.
    pub(crate) fn staged_in<R>(
        &self,
        which: Staging,
        key: &[u8],
        read: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Option<R> {
        let index = self.shard_index(key)?;
        let shard = self.read(index);
        let records = match which {
            Staging::Dirty => &shard.dirty,
            Staging::Frozen => &shard.frozen,
        };
        records.get(key).map(|value| read(value.as_deref()))
    }

    /// The newest staged value of `key` (dirty, else frozen), if staged.
    pub(crate) fn staged(&self, key: &[u8]) -> Option<Mirrored> {
        let index = self.shard_index(key)?;
        let shard = self.read(index);
        let staged = shard.dirty.get(key).or_else(|| shard.frozen.get(key));
        staged.map(|value| value.as_deref().map(Box::from))
    }

    /// Turns every dirty record frozen, for a checkpoint on another
    /// thread; nothing may be frozen already (asserted).
    pub(crate) fn freeze(&self) {
        for index in 0..self.shards.len() {
            let mut shard = self.write(index);
            let shard = &mut *shard;
            assert!(
                shard.frozen.is_empty(),
                "one checkpoint at a time: the last one's records are settled first"
            );
            shard.frozen = std::mem::take(&mut shard.dirty);
            let bytes = std::mem::take(&mut shard.dirty_bytes);
            shard.frozen_bytes = bytes;
            self.dirty_bytes.fetch_sub(bytes, Relaxed);
            self.frozen_bytes.fetch_add(bytes, Relaxed);
        }
    }

    /// Makes every frozen record clean (a newer dirty one for the same key
    /// stays and the frozen one goes): call it once RocksDB holds them.
    /// Runs beside the owner's staging and other threads' reads.
    pub(crate) fn settle_frozen(&self) {
        self.settle_staged(Staging::Frozen);
    }

    /// Makes every dirty record clean: call it once RocksDB holds them
    /// all, with nothing frozen (asserted). They join the young
    /// generations (a zero budget drops them).
    pub(crate) fn settle(&self) {
        self.settle_staged(Staging::Dirty);
    }

    /// Settles `which` records shard by shard. A shard's few records join
    /// its young generation one by one; more than
    /// `settle_insert_records_max` become the young generation whole
    /// (the young one ages, the old one goes), so the lock is held for a
    /// bounded time whatever the checkpoint's size: a hundred thousand
    /// records inserted under the locks held the owner's staging (and
    /// readers) for tens of milliseconds. Dropped records are freed
    /// outside the lock.
    fn settle_staged(&self, which: Staging) {
        for index in 0..self.shards.len() {
            let dropped = {
                let mut shard = self.write(index);
                let (records, bytes) = self.take_staged(&mut shard, which);
                if self.young_bytes_max == 0 {
                    vec![records]
                } else if records.len() <= self.settle_insert_records_max {
                    self.make_clean(&mut shard, records)
                } else {
                    self.make_young(&mut shard, records, bytes)
                }
            };
            drop(dropped);
        }
    }

    /// Takes `shard`'s `which` records out, with their bytes.
    fn take_staged(&self, shard: &mut Shard, which: Staging) -> (Records, usize) {
        let (records, bytes, total) = match which {
            Staging::Dirty => {
                assert!(
                    shard.frozen.is_empty(),
                    "a checkpoint settles after the one in flight"
                );
                (&mut shard.dirty, &mut shard.dirty_bytes, &self.dirty_bytes)
            }
            Staging::Frozen => (
                &mut shard.frozen,
                &mut shard.frozen_bytes,
                &self.frozen_bytes,
            ),
        };
        let bytes = std::mem::take(bytes);
        total.fetch_sub(bytes, Relaxed);
        (std::mem::take(records), bytes)
    }

    /// Puts `records` RocksDB now holds into `shard`'s young generation,
    /// except those a dirty record supersedes: what is dropped (the
    /// superseded records and any aged-out generation) is returned, to be
    /// freed outside the lock.
    fn make_clean(&self, shard: &mut Shard, records: Records) -> Vec<Records> {
        let mut dropped = vec![HashMap::new()];
        for (key, value) in records {
            if shard.dirty.contains_key(&key) {
                dropped[0].insert(key, value);
                continue;
            }
            let bytes = entry_bytes(&key, value.as_deref());
            shard.young.insert(key, value);
            shard.young_bytes += bytes;
            dropped.extend(self.age_if_full(shard));
        }
        dropped
    }

    /// Makes `records` RocksDB now holds `shard`'s young generation, less
    /// those a dirty record supersedes; the young generation ages and the
    /// old one is returned, to be freed outside the lock. The new young
    /// generation may be larger than a generation's share of the budget
    /// (by the checkpoint's records, which were staged until now); the
    /// next write ages it. A key may now be in both generations: the
    /// young one, read first, holds its newest value.
    fn make_young(
        &self,
        shard: &mut Shard,
        mut records: Records,
        mut bytes: usize,
    ) -> Vec<Records> {
        let mut superseded = HashMap::new();
        for key in shard.dirty.keys() {
            if let Some((key, value)) = records.remove_entry(key) {
                bytes = uncount(bytes, entry_bytes(&key, value.as_deref()));
                superseded.insert(key, value);
            }
        }
        let young = std::mem::replace(&mut shard.young, records);
        let old = std::mem::replace(&mut shard.old, young);
        shard.old_bytes = std::mem::replace(&mut shard.young_bytes, bytes);
        vec![old, superseded]
    }

    /// Bytes of the dirty records (as the budget counts them).
    pub(crate) fn dirty_bytes(&self) -> usize {
        self.dirty_bytes.load(Relaxed)
    }

    /// Bytes of the frozen records.
    pub(crate) fn frozen_bytes(&self) -> usize {
        self.frozen_bytes.load(Relaxed)
    }

    /// Forgets everything, dirty records too (RocksDB's family changed in
    /// a way the mirror does not follow key by key, or the state staged
    /// writes changed was replaced).
    pub(crate) fn clear(&self) {
        for index in 0..self.shards.len() {
            let dropped = {
                let mut shard = self.write(index);
                shard.young_bytes = 0;
                shard.old_bytes = 0;
                self.dirty_bytes
                    .fetch_sub(std::mem::take(&mut shard.dirty_bytes), Relaxed);
                self.frozen_bytes
                    .fetch_sub(std::mem::take(&mut shard.frozen_bytes), Relaxed);
                (
                    std::mem::take(&mut shard.young),
                    std::mem::take(&mut shard.old),
                    std::mem::take(&mut shard.dirty),
                    std::mem::take(&mut shard.frozen),
                )
            };
            drop(dropped);
        }
    }

    /// Bytes held now, clean and dirty (as the budget counts them).
    pub(crate) fn bytes(&self) -> usize {
        (0..self.shards.len())
            .map(|index| {
                let shard = self.read(index);
                shard.young_bytes + shard.old_bytes + shard.dirty_bytes + shard.frozen_bytes
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    /// The bytes of every entry, counted one by one.
    fn counted_bytes(mirror: &ReadMirror) -> usize {
        (0..mirror.shards.len())
            .map(|index| {
                let shard = mirror.read(index);
                shard
                    .young
                    .iter()
                    .chain(shard.old.iter())
                    .chain(shard.dirty.iter())
                    .chain(shard.frozen.iter())
                    .map(|(key, value)| entry_bytes(key, value.as_deref()))
                    .sum::<usize>()
            })
            .sum()
    }

    #[test]
    fn it_answers_what_was_written_last() {
        let mirror = ReadMirror::new(1 << 20, false);
        assert_eq!(mirror.get(b"k"), Mirror::Unknown);
        mirror.record(&[DataWrite::Put(b"k", b"1"), DataWrite::Put(b"k", b"2")]);
        assert_eq!(mirror.get(b"k"), Mirror::Held(Some(b"2".to_vec())));
        mirror.record(&[DataWrite::Delete(b"k")]);
        assert_eq!(mirror.get(b"k"), Mirror::Held(None), "known deleted");
        mirror.record(&[
            DataWrite::Put(b"a", b"1"),
            DataWrite::DeleteRange(b"a", b"b"),
        ]);
        assert_eq!(mirror.get(b"a"), Mirror::Unknown, "a range delete clears");
        assert_eq!(mirror.get(b"k"), Mirror::Unknown);
    }

    #[test]
    fn a_zero_budget_holds_nothing() {
        let mirror = ReadMirror::new(0, false);
        mirror.record(&[DataWrite::Put(b"k", b"1")]);
        assert_eq!(mirror.get(b"k"), Mirror::Unknown);
        assert_eq!(mirror.bytes(), 0);
    }

    #[test]
    fn it_stays_within_its_budget() {
        let budget = 1 << 20;
        let mirror = ReadMirror::new(budget, false);
        let value = [7u8; 200];
        // Each shard may pass its part by the one entry that made it age.
        let bound = budget + SHARDS_MAX * (ENTRY_OVERHEAD_BYTES + 4 + value.len());
        for i in 0..100_000u32 {
            let key = i.to_be_bytes();
            mirror.record(&[DataWrite::Put(&key, &value)]);
            if i % 10_000 == 0 {
                assert!(mirror.bytes() <= bound, "{} > {bound}", mirror.bytes());
            }
        }
        let held = mirror.bytes();
        assert!(held <= bound && held > budget / 4, "{held} of {budget}");
        // The newest writes are the ones kept.
        let newest = 99_999u32.to_be_bytes();
        assert_eq!(mirror.get(&newest), Mirror::Held(Some(value.to_vec())));
        assert_eq!(mirror.get(&0u32.to_be_bytes()), Mirror::Unknown);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Put(u8, u8),
        Delete(u8),
        DeleteRange,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0u8..40, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
            3 => (0u8..40).prop_map(Op::Delete),
            1 => Just(Op::DeleteRange),
        ]
    }

    #[derive(Clone, Debug)]
    enum Step {
        Stage(u8, Option<u8>),
        /// Settle, then write through.
        Record(u8, u8),
        /// Freeze (when nothing is frozen).
        Freeze,
        SettleFrozen,
        /// Settle the frozen records, then the dirty ones.
        Settle,
        Clear,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            8 => (0u8..40, prop::option::of(any::<u8>())).prop_map(|(k, v)| Step::Stage(k, v)),
            2 => (0u8..40, any::<u8>()).prop_map(|(k, v)| Step::Record(k, v)),
            1 => Just(Step::Freeze),
            1 => Just(Step::SettleFrozen),
            1 => Just(Step::Settle),
            1 => Just(Step::Clear),
        ]
    }

    proptest! {
        /// Whatever it holds is the model's current value; with a tiny
        /// budget most keys age out (and are then unknown, never stale).
        #[test]
        fn it_never_answers_a_stale_value(ops in prop::collection::vec(op(), 1..300), budget in 0usize..4096) {
            let mirror = ReadMirror::new(budget, false);
            let mut model: BTreeMap<u8, Option<u8>> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Put(k, v) => {
                        mirror.record(&[DataWrite::Put(&[k], &[v; 30])]);
                        model.insert(k, Some(v));
                    }
                    Op::Delete(k) => {
                        mirror.record(&[DataWrite::Delete(&[k])]);
                        model.insert(k, None);
                    }
                    Op::DeleteRange => {
                        mirror.record(&[DataWrite::DeleteRange(&[0], &[255])]);
                        model.clear();
                    }
                }
                for k in 0u8..40 {
                    if let Mirror::Held(held) = mirror.get(&[k]) {
                        let expected = model.get(&k).copied().flatten().map(|v| vec![v; 30]);
                        prop_assert_eq!(held, expected, "key {}", k);
                    }
                }
                prop_assert!(mirror.bytes() <= budget.max(1) + 200);
                prop_assert_eq!(mirror.bytes(), counted_bytes(&mirror));
            }
        }

        /// With write-behind: a staged key (dirty or frozen) always
        /// answers its newest value, whatever the budget (aging never
        /// drops it); anything else held is the current value (also a
        /// key a whole settle left in both generations); the dirty and
        /// frozen bytes are counted exactly.
        #[test]
        fn staged_writes_answer_until_settled(steps in prop::collection::vec(step(), 1..300), budget in 0usize..4096) {
            // Four records settle one by one at most: both ways.
            let mirror = ReadMirror::with_settle_insert_records_max(budget, true, 4);
            let mut model: BTreeMap<u8, Option<u8>> = BTreeMap::new();
            let mut dirty: BTreeMap<u8, Option<u8>> = BTreeMap::new();
            let mut frozen: BTreeMap<u8, Option<u8>> = BTreeMap::new();
            // The most bytes settled at once.
            let mut settled_max = 0;
            let bytes_of = |staged: &BTreeMap<u8, Option<u8>>| -> usize {
                staged
                    .iter()
                    .map(|(k, v)| entry_bytes(&[*k], v.map(|v| [v; 30]).as_ref().map(|v| &v[..])))
                    .sum()
            };
            for step in steps {
                match step {
                    Step::Stage(k, v) => {
                        let value = v.map(|v| [v; 30]);
                        let new = mirror.stage(&[k], value.as_ref().map(|v| &v[..]));
                        prop_assert_eq!(new, dirty.insert(k, v).is_none(), "newly dirty {}", k);
                        model.insert(k, v);
                    }
                    Step::Record(k, v) => {
                        settled_max = settled_max.max(bytes_of(&frozen)).max(bytes_of(&dirty));
                        mirror.settle_frozen();
                        mirror.settle();
                        dirty.clear();
                        frozen.clear();
                        mirror.record(&[DataWrite::Put(&[k], &[v; 30])]);
                        model.insert(k, Some(v));
                    }
                    Step::Freeze => {
                        if frozen.is_empty() {
                            mirror.freeze();
                            frozen = std::mem::take(&mut dirty);
                        }
                    }
                    Step::SettleFrozen => {
                        settled_max = settled_max.max(bytes_of(&frozen));
                        mirror.settle_frozen();
                        frozen.clear();
                    }
                    Step::Settle => {
                        settled_max = settled_max.max(bytes_of(&frozen)).max(bytes_of(&dirty));
                        mirror.settle_frozen();
                        mirror.settle();
                        dirty.clear();
                        frozen.clear();
                    }
                    Step::Clear => {
                        mirror.clear();
                        dirty.clear();
                        frozen.clear();
                        model.clear();
                    }
                }
                for k in 0u8..40 {
                    let expected = model.get(&k).copied().flatten().map(|v| vec![v; 30]);
                    let held = mirror.get(&[k]);
                    let staged = dirty.get(&k).or_else(|| frozen.get(&k)).copied();
                    let found = mirror.staged(&[k]).map(|v| v.map(Vec::from));
                    prop_assert_eq!(found, staged.map(|v| v.map(|v| vec![v; 30])), "staged {}", k);
                    if staged.is_some() {
                        prop_assert_eq!(&held, &Mirror::Held(expected.clone()), "staged key {}", k);
                    } else if let Mirror::Held(held) = held {
                        prop_assert_eq!(held, expected, "key {}", k);
                    }
                }
                prop_assert_eq!(mirror.dirty_bytes(), bytes_of(&dirty));
                prop_assert_eq!(mirror.frozen_bytes(), bytes_of(&frozen));
                prop_assert_eq!(mirror.bytes(), counted_bytes(&mirror));
                // Two generations may each be one checkpoint's records.
                let staged_bytes = bytes_of(&dirty) + bytes_of(&frozen);
                prop_assert!(mirror.bytes() <= budget.max(1) + 200 + staged_bytes + 2 * settled_max);
            }
        }
    }
}
