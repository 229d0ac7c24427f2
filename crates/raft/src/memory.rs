//! [`MemStorage`]: a log store in memory, for tests, simulation and
//! benches. It implements the storage contract exactly as a durable store
//! must (the conformance suite runs against it), minus the durability.

use bytes::{Bytes, BytesMut};
use dr_codec::message::{ConfState, Entry, LogIndex, SnapshotMeta, Term};

use crate::storage::{
    HardState, InitialState, LogStore, Snapshot, SnapshotChunk, Storage, StorageError,
};

/// A log store in memory.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    hard_state: HardState,
    conf_state: ConfState,
    /// The latest snapshot; it covers at least up to `compacted_index`.
    snapshot: Snapshot,
    /// The last discarded entry's index and term (0 and 0 for a fresh
    /// log): the anchor the retained entries follow.
    compacted_index: LogIndex,
    compacted_term: Term,
    /// The retained entries: `entries[i].index == compacted_index + 1 + i`.
    entries: Vec<Entry>,
    /// A snapshot being received, apart from the current state.
    staged: Option<(SnapshotMeta, BytesMut)>,
}

impl MemStorage {
    /// An empty store: no entries, the empty snapshot at index 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The latest snapshot, whole (this store holds it in memory anyway).
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The position of `index` in `entries`; the caller has checked that
    /// `index` lies in `first_index()..=last_index()`.
    fn offset(&self, index: LogIndex) -> usize {
        (index - self.first_index()) as usize
    }

    fn check_in_log(&self, index: LogIndex) -> Result<(), StorageError> {
        if index < self.first_index() {
            return Err(StorageError::Compacted {
                index,
                first_index: self.first_index(),
            });
        }
        if index > self.last_index() {
            return Err(StorageError::Unavailable {
                index,
                last_index: self.last_index(),
            });
        }
        Ok(())
    }

    /// Asserts the log's shape: entries contiguous after the compaction
    /// point, which the snapshot covers.
    fn assert_shape(&self) {
        debug_assert!(
            self.entries
                .iter()
                .enumerate()
                .all(|(i, entry)| entry.index == self.compacted_index + 1 + i as u64),
            "MemStorage entries are not contiguous after the compaction point"
        );
        debug_assert!(
            self.snapshot.meta.index >= self.compacted_index,
            "compacted past the snapshot"
        );
    }
}

impl Storage for MemStorage {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        Ok(InitialState {
            hard_state: self.hard_state,
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if low > high {
            return Err(StorageError::Invalid(format!(
                "entries range {low}..{high} is reversed"
            )));
        }
        if low < self.first_index() {
            return Err(StorageError::Compacted {
                index: low,
                first_index: self.first_index(),
            });
        }
        if high > self.last_index() + 1 {
            return Err(StorageError::Unavailable {
                index: high - 1,
                last_index: self.last_index(),
            });
        }
        let range = &self.entries[self.offset(low)..self.offset(high)];
        // The first entry always goes, so replication always progresses;
        // the rest only while the payloads stay within `max_bytes`.
        let mut total_bytes = 0u64;
        let taken = range
            .iter()
            .enumerate()
            .take_while(|(position, entry)| {
                total_bytes += entry.payload.len() as u64;
                *position == 0 || total_bytes <= max_bytes
            })
            .count();
        Ok(range[..taken].to_vec())
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        if index == self.compacted_index {
            return Ok(self.compacted_term);
        }
        self.check_in_log(index)?;
        Ok(self.entries[self.offset(index)].term)
    }

    fn first_index(&self) -> LogIndex {
        self.compacted_index + 1
    }

    fn last_index(&self) -> LogIndex {
        self.compacted_index + self.entries.len() as u64
    }

    fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError> {
        Ok(self.snapshot.meta.clone())
    }

    fn snapshot_chunk(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        max_bytes: u64,
    ) -> Result<SnapshotChunk, StorageError> {
        if *meta != self.snapshot.meta {
            return Err(StorageError::SnapshotOutOfDate {
                offered: meta.index,
                current: self.snapshot.meta.index,
            });
        }
        let data = &self.snapshot.data;
        let start = usize::try_from(offset)
            .ok()
            .filter(|&start| start <= data.len())
            .ok_or_else(|| {
                StorageError::Invalid(format!(
                    "snapshot offset {offset} is past its {} bytes",
                    data.len()
                ))
            })?;
        let end = start.saturating_add(usize::try_from(max_bytes).unwrap_or(usize::MAX));
        let end = end.min(data.len());
        Ok(SnapshotChunk {
            data: data.slice(start..end),
            done: end == data.len(),
        })
    }
}

impl LogStore for MemStorage {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        if let Some(gap) = entries
            .windows(2)
            .find(|pair| pair[1].index != pair[0].index + 1)
        {
            return Err(StorageError::Invalid(format!(
                "appended entries are not contiguous: {} follows {}",
                gap[1].index, gap[0].index
            )));
        }
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index > self.last_index() + 1 {
            return Err(StorageError::Invalid(format!(
                "append at index {} leaves a gap after the last index {}",
                first.index,
                self.last_index()
            )));
        }
        // Skip what compaction already discarded.
        let skip = self.first_index().saturating_sub(first.index) as usize;
        let Some(kept) = entries.get(skip..).filter(|kept| !kept.is_empty()) else {
            return Ok(());
        };
        self.entries.truncate(self.offset(kept[0].index));
        self.entries.extend_from_slice(kept);
        self.assert_shape();
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: HardState) -> Result<(), StorageError> {
        self.hard_state = hard_state;
        Ok(())
    }

    fn set_conf_state(&mut self, conf_state: ConfState) -> Result<(), StorageError> {
        self.conf_state = conf_state;
        Ok(())
    }

    fn create_snapshot(
        &mut self,
        index: LogIndex,
        conf_state: ConfState,
        data: Bytes,
    ) -> Result<(), StorageError> {
        let current = self.snapshot.meta.index;
        if index <= current {
            return Err(StorageError::SnapshotOutOfDate {
                offered: index,
                current,
            });
        }
        let term = self.term(index)?;
        self.snapshot = Snapshot {
            meta: SnapshotMeta {
                index,
                term,
                conf_state,
            },
            data,
        };
        self.assert_shape();
        Ok(())
    }

    fn stage_snapshot_chunk(
        &mut self,
        meta: &SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), StorageError> {
        if offset == 0 {
            self.staged = Some((meta.clone(), BytesMut::new()));
        }
        match &mut self.staged {
            Some((staged_meta, staged)) if staged_meta == meta && staged.len() as u64 == offset => {
                staged.extend_from_slice(data);
                Ok(())
            }
            _ => Err(StorageError::Invalid(format!(
                "snapshot chunk at offset {offset} does not continue the staged snapshot"
            ))),
        }
    }

    fn apply_snapshot(&mut self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        let current = self.snapshot.meta.index;
        if meta.index <= current {
            return Err(StorageError::SnapshotOutOfDate {
                offered: meta.index,
                current,
            });
        }
        let Some((_, data)) = self.staged.take_if(|(staged_meta, _)| staged_meta == meta) else {
            return Err(StorageError::Invalid(format!(
                "snapshot at index {} was not staged",
                meta.index
            )));
        };
        self.conf_state = meta.conf_state.clone();
        self.compacted_index = meta.index;
        self.compacted_term = meta.term;
        self.snapshot = Snapshot {
            meta: meta.clone(),
            data: data.freeze(),
        };
        self.entries.clear();
        self.assert_shape();
        Ok(())
    }

    fn compact(&mut self, index: LogIndex) -> Result<(), StorageError> {
        if index <= self.compacted_index {
            return Err(StorageError::Compacted {
                index,
                first_index: self.first_index(),
            });
        }
        self.check_in_log(index)?;
        if index > self.snapshot.meta.index {
            return Err(StorageError::Invalid(format!(
                "compacting to {index} would discard entries the snapshot (at {}) does not cover",
                self.snapshot.meta.index
            )));
        }
        self.compacted_term = self.entries[self.offset(index)].term;
        self.entries.drain(..=self.offset(index));
        self.compacted_index = index;
        self.assert_shape();
        Ok(())
    }
}
