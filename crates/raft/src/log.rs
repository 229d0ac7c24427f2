//! [`RaftLog`]: the log as the consensus core sees it, the durable part in
//! a [`Storage`] plus the unstable tail (entries and at most one snapshot)
//! that the next ready hands to the runtime to persist.
//!
//! Entries stay in memory a while after they are persisted (the *entry
//! cache*, bounded in bytes): the ready that applies them and the appends
//! to a follower a little behind come right after, and reading them back
//! from the store would cost an iterator and a decode each time. The cache
//! always holds exactly what the store holds at those indexes: it is cut
//! where an append replaces the store's tail, and emptied by a snapshot.

use std::collections::VecDeque;

use dr_codec::message::{Entry, LogIndex, SnapshotMeta, Term};

use crate::storage::{Storage, StorageError};

/// The most entries [`RaftLog::slice`] makes room for before it knows
/// how many fit its byte limit.
const SLICE_RESERVE_MAX: usize = 256;

/// What an entry costs the cache beyond its payload (its fields and the
/// `Bytes` handle), so that empty entries count too.
const CACHED_ENTRY_OVERHEAD: u64 = 64;

fn cache_cost(entry: &Entry) -> u64 {
    entry.payload.len() as u64 + CACHED_ENTRY_OVERHEAD
}

pub(crate) struct RaftLog<S> {
    pub(crate) storage: S,
    /// A snapshot received from the leader, not yet persisted.
    unstable_snapshot: Option<SnapshotMeta>,
    /// Entries not yet persisted: `unstable[i].index == unstable_offset + i`.
    unstable: Vec<Entry>,
    unstable_offset: LogIndex,
    /// How many of `unstable` a ready has handed out (being persisted).
    handed_out: usize,
    /// Persisted entries kept in memory: the stored ones just below
    /// `unstable_offset`, `cached[i].index == unstable_offset - len + i`.
    cached: VecDeque<Entry>,
    cached_bytes: u64,
    cache_bytes_max: u64,
    /// The highest index known committed; never goes backwards.
    pub(crate) committed: LogIndex,
    /// The highest index the runtime has applied.
    pub(crate) applied: LogIndex,
}

impl<S: Storage> RaftLog<S> {
    pub(crate) fn new(
        storage: S,
        committed: LogIndex,
        applied: LogIndex,
        cache_bytes_max: u64,
    ) -> Self {
        let unstable_offset = storage.last_index() + 1;
        let log = Self {
            storage,
            unstable_snapshot: None,
            unstable: Vec::new(),
            unstable_offset,
            handed_out: 0,
            cached: VecDeque::new(),
            cached_bytes: 0,
            cache_bytes_max,
            committed,
            applied,
        };
        assert!(
            applied <= committed && committed <= log.last_index(),
            "restart state out of order: applied {applied}, committed {committed}, last index {}",
            log.last_index()
        );
        log
    }

    pub(crate) fn first_index(&self) -> LogIndex {
        match &self.unstable_snapshot {
            Some(snapshot) => snapshot.index + 1,
            None => self.storage.first_index(),
        }
    }

    pub(crate) fn last_index(&self) -> LogIndex {
        if let Some(last) = self.unstable.last() {
            return last.index;
        }
        match &self.unstable_snapshot {
            Some(snapshot) => snapshot.index,
            None => self.storage.last_index(),
        }
    }

    pub(crate) fn last_term(&self) -> Term {
        self.term(self.last_index())
            .expect("the last index's term is always known")
    }

    /// The term of the entry at `index`, for indexes from the compaction
    /// point to the last index.
    pub(crate) fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        if index >= self.unstable_offset {
            let position = (index - self.unstable_offset) as usize;
            return match self.unstable.get(position) {
                Some(entry) => Ok(entry.term),
                None => Err(StorageError::Unavailable {
                    index,
                    last_index: self.last_index(),
                }),
            };
        }
        match &self.unstable_snapshot {
            Some(snapshot) if index == snapshot.index => Ok(snapshot.term),
            Some(snapshot) => Err(StorageError::Compacted {
                index,
                first_index: snapshot.index + 1,
            }),
            None => self.storage.term(index),
        }
    }

    pub(crate) fn matches_term(&self, index: LogIndex, term: Term) -> bool {
        self.term(index).is_ok_and(|held| held == term)
    }

    /// Whether a log ending at (`last_index`, `last_term`) is at least as
    /// up to date as this one (§5.4.1 of the Raft paper).
    pub(crate) fn is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        let own_term = self.last_term();
        last_term > own_term || (last_term == own_term && last_index >= self.last_index())
    }

    /// Entries in `low..high`, at least one if the range is not empty, the
    /// rest while their payloads stay within `max_bytes`.
    pub(crate) fn slice(
        &self,
        low: LogIndex,
        high: LogIndex,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if low >= high {
            return Ok(Vec::new());
        }
        if low < self.first_index() {
            return Err(StorageError::Compacted {
                index: low,
                first_index: self.first_index(),
            });
        }
        let mut entries = Vec::new();
        let mut bytes = 0u64;
        let cached_from = self.cached_offset();
        if low < cached_from {
            entries = self
                .storage
                .entries(low, high.min(cached_from), max_bytes)?;
            bytes = entries.iter().map(|e| e.payload.len() as u64).sum();
            let stored_end = low + entries.len() as u64;
            if stored_end < high.min(cached_from) {
                return Ok(entries);
            }
        }
        let from = low.max(cached_from);
        // Room for the usual slice at once (a few hundred entries at
        // most; a longer one grows as it goes).
        entries.reserve(
            usize::try_from(high.saturating_sub(from)).map_or(0, |n| n.min(SLICE_RESERVE_MAX)),
        );
        for index in from..high {
            let Some(entry) = self.in_memory(index) else {
                break;
            };
            bytes += entry.payload.len() as u64;
            if !entries.is_empty() && bytes > max_bytes {
                break;
            }
            entries.push(entry.clone());
        }
        Ok(entries)
    }

    /// The first index the entry cache holds (`unstable_offset` when it
    /// holds none).
    fn cached_offset(&self) -> LogIndex {
        self.unstable_offset - self.cached.len() as u64
    }

    /// The entry at `index` from the cache or the unstable tail.
    fn in_memory(&self, index: LogIndex) -> Option<&Entry> {
        if index >= self.unstable_offset {
            return self.unstable.get((index - self.unstable_offset) as usize);
        }
        let position = index.checked_sub(self.cached_offset())?;
        self.cached.get(position as usize)
    }

    /// The first index in `entries` whose term differs from this log's, or
    /// that this log does not hold yet.
    pub(crate) fn find_conflict(&self, entries: &[Entry]) -> Option<LogIndex> {
        entries
            .iter()
            .find(|entry| !self.matches_term(entry.index, entry.term))
            .map(|entry| entry.index)
    }

    /// Appends `entries` (contiguous), replacing whatever the log holds at
    /// and after the first one's index.
    pub(crate) fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let after = first.index;
        assert!(
            after > self.committed,
            "log matching violated: overwriting committed index {} (committed {})",
            after,
            self.committed
        );
        assert!(
            after <= self.last_index() + 1,
            "append at {after} leaves a gap after {}",
            self.last_index()
        );
        if after <= self.unstable_offset {
            // The store's entries from `after` on are replaced when the
            // runtime persists these (the append contract truncates); the
            // cache keeps only what stays.
            let kept = self
                .cached
                .len()
                .saturating_sub((self.unstable_offset - after) as usize);
            for dropped in self.cached.drain(kept..) {
                self.cached_bytes -= cache_cost(&dropped);
            }
            self.unstable.clear();
            self.unstable_offset = after;
            self.handed_out = 0;
        } else {
            let kept = (after - self.unstable_offset) as usize;
            self.unstable.truncate(kept);
            // Replaced entries are handed out again; a write of the old
            // ones still under way is recognized by its term when it ends.
            self.handed_out = self.handed_out.min(kept);
        }
        self.unstable.extend_from_slice(entries);
    }

    /// Appends one entry right after the last (the leader's own).
    pub(crate) fn append_one(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index() + 1,
            "a leader appends right after its last entry"
        );
        self.unstable.push(entry);
    }

    pub(crate) fn commit_to(&mut self, index: LogIndex) {
        if index <= self.committed {
            return;
        }
        assert!(
            index <= self.last_index(),
            "commit {index} is past the last index {}",
            self.last_index()
        );
        self.committed = index;
    }

    /// Replaces the log with a snapshot from the leader (its data is
    /// staged in the store).
    pub(crate) fn restore(&mut self, snapshot: SnapshotMeta) {
        assert!(
            snapshot.index > self.committed,
            "restoring snapshot at {} behind commit {}",
            snapshot.index,
            self.committed
        );
        self.committed = snapshot.index;
        self.unstable.clear();
        self.handed_out = 0;
        self.clear_cache();
        self.unstable_offset = snapshot.index + 1;
        self.unstable_snapshot = Some(snapshot);
    }

    /// The last index the store holds durably and that is still part of
    /// the log (0 while a received snapshot is not yet persisted).
    pub(crate) fn stable_last_index(&self) -> LogIndex {
        if self.unstable_snapshot.is_some() {
            return 0;
        }
        self.unstable_offset - 1
    }

    #[cfg(test)]
    pub(crate) fn unstable_entries(&self) -> &[Entry] {
        &self.unstable
    }

    /// The unstable entries no ready has handed out yet.
    pub(crate) fn entries_to_hand_out(&self) -> &[Entry] {
        &self.unstable[self.handed_out..]
    }

    /// The next ready hands out every unstable entry.
    pub(crate) fn hand_out(&mut self) {
        self.handed_out = self.unstable.len();
    }

    /// The runtime persisted the entries up to `index`, which had `term`:
    /// they move to the cache, unless the log no longer holds that entry
    /// (a conflicting append replaced it while it was being written; the
    /// replacement's own write is still to come).
    pub(crate) fn persisted_to(&mut self, index: LogIndex, term: Term) {
        if index < self.unstable_offset || !self.matches_term(index, term) {
            return;
        }
        let count = (index + 1 - self.unstable_offset) as usize;
        let rest = self.unstable.split_off(count);
        let stable = std::mem::replace(&mut self.unstable, rest);
        self.unstable_offset = index + 1;
        self.handed_out = self.handed_out.saturating_sub(count);
        self.cache(stable);
    }

    pub(crate) fn unstable_snapshot(&self) -> Option<&SnapshotMeta> {
        self.unstable_snapshot.as_ref()
    }

    /// The runtime persisted everything unstable: the entries move to the
    /// cache, whose oldest go once it is over its budget.
    pub(crate) fn persisted(&mut self) {
        if self.unstable_snapshot.take().is_some() {
            // `restore` emptied the cache when the snapshot arrived.
            debug_assert!(self.cached.is_empty());
        }
        self.unstable_offset = self.last_index() + 1;
        self.handed_out = 0;
        let stable = std::mem::take(&mut self.unstable);
        self.cache(stable);
    }

    /// Appends just-persisted entries to the cache, dropping its oldest
    /// while it is over budget.
    fn cache(&mut self, stable: Vec<Entry>) {
        for entry in stable {
            self.cached_bytes += cache_cost(&entry);
            self.cached.push_back(entry);
        }
        while self.cached_bytes > self.cache_bytes_max {
            let Some(oldest) = self.cached.pop_front() else {
                break;
            };
            self.cached_bytes -= cache_cost(&oldest);
        }
        debug_assert!(
            self.cached
                .iter()
                .zip(self.cached_offset()..)
                .all(|(entry, index)| entry.index == index),
            "the entry cache holds a contiguous run ending at the stored tail"
        );
    }

    fn clear_cache(&mut self) {
        self.cached.clear();
        self.cached_bytes = 0;
    }

    /// The latest snapshot's metadata, to send to a follower.
    pub(crate) fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError> {
        match &self.unstable_snapshot {
            Some(snapshot) => Ok(snapshot.clone()),
            None => self.storage.snapshot_meta(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LogStore, MemStorage, conformance::entries};

    fn log_with(stored: &[Entry], unstable: &[Entry]) -> RaftLog<MemStorage> {
        let mut storage = MemStorage::new();
        storage.append(stored).unwrap();
        let mut log = RaftLog::new(storage, 0, 0, 1 << 20);
        log.append(unstable);
        log
    }

    #[test]
    fn reads_span_the_store_and_the_unstable_tail() {
        let log = log_with(&entries(1, 3, 1), &entries(4, 6, 2));
        assert_eq!((log.first_index(), log.last_index()), (1, 6));
        assert_eq!(log.term(3), Ok(1));
        assert_eq!(log.term(5), Ok(2));
        assert!(log.term(7).is_err());
        let all = log.slice(2, 7, u64::MAX).unwrap();
        assert_eq!(
            all.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![2, 3, 4, 5, 6]
        );
        let one = log.slice(2, 7, 0).unwrap();
        assert_eq!(one.len(), 1, "at least one entry always comes back");
    }

    fn indexes(entries: &[Entry]) -> Vec<LogIndex> {
        entries.iter().map(|e| e.index).collect()
    }

    /// Entries whose payload is `[source]`, to tell which copy a read
    /// returned.
    fn marked(from: LogIndex, to: LogIndex, term: Term, source: u8) -> Vec<Entry> {
        let mut marked = entries(from, to, term);
        for entry in &mut marked {
            entry.payload = bytes::Bytes::from(vec![source]);
        }
        marked
    }

    const STORE: u8 = b's';
    const CACHE: u8 = b'c';

    fn sources(entries: &[Entry]) -> Vec<u8> {
        entries.iter().map(|e| e.payload[0]).collect()
    }

    /// A log over a store holding `1..=stored` whose entries
    /// `stored+1..=last` were appended and persisted (copies marked
    /// `STORE` in the store, `CACHE` in the log), with a cache of
    /// `budget` bytes.
    fn persisted_log(stored: LogIndex, last: LogIndex, budget: u64) -> RaftLog<MemStorage> {
        let mut storage = MemStorage::new();
        storage.append(&marked(1, last, 1, STORE)).unwrap();
        let mut log = RaftLog::new(storage, 0, 0, budget);
        log.unstable_offset = stored + 1;
        log.append(&marked(stored + 1, last, 1, CACHE));
        log.persisted();
        log
    }

    #[test]
    fn persisted_entries_are_read_from_the_cache() {
        let mut log = persisted_log(3, 6, 1 << 20);
        assert_eq!(log.unstable_entries(), &[]);
        let read = log.slice(2, 7, u64::MAX).unwrap();
        assert_eq!(indexes(&read), vec![2, 3, 4, 5, 6]);
        assert_eq!(sources(&read), b"ssccc");
        log.append_one(marked(7, 7, 1, CACHE).remove(0));
        assert_eq!(sources(&log.slice(5, 8, u64::MAX).unwrap()), b"ccc");
    }

    #[test]
    fn an_append_that_replaces_the_stored_tail_cuts_the_cache() {
        let mut log = persisted_log(3, 6, 1 << 20);
        log.append(&marked(5, 5, 2, b'n'));
        let read = log.slice(4, 6, u64::MAX).unwrap();
        assert_eq!(indexes(&read), vec![4, 5]);
        assert_eq!(sources(&read), b"cn", "4 cached, 5 the new one");
        log.append(&marked(2, 2, 3, b'n'));
        assert!(log.cached.is_empty(), "everything cached was at or after 2");
        assert_eq!(log.cached_bytes, 0);
    }

    #[test]
    fn the_cache_keeps_its_budget_and_falls_back_to_the_store() {
        let budget = 3 * (1 + CACHED_ENTRY_OVERHEAD);
        let log = persisted_log(10, 15, budget);
        assert_eq!(log.cached_bytes, budget);
        let read = log.slice(9, 16, u64::MAX).unwrap();
        assert_eq!(indexes(&read), (9..=15).collect::<Vec<_>>());
        assert_eq!(sources(&read), b"ssssccc", "the oldest two were dropped");
        let none = persisted_log(10, 15, 0);
        assert_eq!(sources(&none.slice(11, 16, u64::MAX).unwrap()), b"sssss");
    }

    #[test]
    fn a_snapshot_empties_the_cache() {
        let mut log = persisted_log(3, 6, 1 << 20);
        log.restore(SnapshotMeta {
            index: 9,
            term: 2,
            ..SnapshotMeta::default()
        });
        assert!(log.cached.is_empty() && log.cached_bytes == 0);
    }

    #[test]
    fn entries_handed_out_are_not_handed_out_again_until_replaced() {
        let mut log = log_with(&entries(1, 3, 1), &entries(4, 6, 1));
        assert_eq!(indexes(log.entries_to_hand_out()), vec![4, 5, 6]);
        log.hand_out();
        assert!(log.entries_to_hand_out().is_empty());
        log.append_one(entries(7, 7, 1).remove(0));
        assert_eq!(indexes(log.entries_to_hand_out()), vec![7]);
        log.hand_out();
        // A conflicting append replaces 6 and 7: they go out again.
        log.append(&entries(6, 6, 2));
        assert_eq!(indexes(log.entries_to_hand_out()), vec![6]);
        log.append(&entries(3, 3, 3));
        assert_eq!(indexes(log.entries_to_hand_out()), vec![3]);
    }

    #[test]
    fn a_finished_write_stabilizes_only_entries_the_log_still_holds() {
        let mut log = log_with(&entries(1, 3, 1), &entries(4, 6, 1));
        log.hand_out();
        log.storage.append(&entries(4, 6, 1)).unwrap();
        log.persisted_to(5, 1);
        assert_eq!(log.stable_last_index(), 5);
        assert_eq!(indexes(log.unstable_entries()), vec![6]);
        assert_eq!(indexes(log.entries_to_hand_out()), Vec::<LogIndex>::new());
        // 6 is replaced (term 2) while its first write is under way: that
        // write ending must not make the replacement count as durable.
        log.append(&entries(6, 6, 2));
        log.persisted_to(6, 1);
        assert_eq!(log.stable_last_index(), 5);
        log.hand_out();
        log.storage.append(&entries(6, 6, 2)).unwrap();
        log.persisted_to(6, 2);
        assert_eq!(log.stable_last_index(), 6);
        assert!(log.unstable_entries().is_empty());
        assert_eq!(terms(&log.slice(4, 7, u64::MAX).unwrap()), vec![1, 1, 2]);
        // A write the log has already moved past is ignored.
        log.persisted_to(3, 1);
        assert_eq!(log.stable_last_index(), 6);
    }

    fn terms(entries: &[Entry]) -> Vec<Term> {
        entries.iter().map(|e| e.term).collect()
    }

    #[test]
    fn conflicting_appends_truncate_the_tail() {
        let mut log = log_with(&entries(1, 3, 1), &entries(4, 6, 1));
        assert_eq!(log.find_conflict(&entries(2, 4, 1)), None);
        assert_eq!(log.find_conflict(&entries(3, 7, 2)), Some(3));
        log.append(&entries(5, 5, 3));
        assert_eq!((log.last_index(), log.last_term()), (5, 3));
        log.append(&entries(2, 2, 4));
        assert_eq!((log.last_index(), log.last_term()), (2, 4));
        assert_eq!(log.unstable_entries().len(), 1);
    }

    #[test]
    fn up_to_date_compares_term_then_index() {
        let log = log_with(&entries(1, 3, 2), &[]);
        assert!(log.is_up_to_date(3, 2));
        assert!(log.is_up_to_date(1, 3));
        assert!(!log.is_up_to_date(2, 2));
        assert!(!log.is_up_to_date(9, 1));
    }

    #[test]
    #[should_panic(expected = "log matching violated")]
    fn overwriting_a_committed_entry_panics() {
        let mut log = log_with(&entries(1, 3, 1), &[]);
        log.commit_to(2);
        log.append(&entries(2, 2, 2));
    }
}
