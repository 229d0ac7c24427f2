//! Applies kept behind: staged in the read mirror, written to RocksDB by
//! checkpoints, on a thread of their own while applies go on.
//!
//! ## Invariants
//!
//! - RocksDB's state machine is always the state at one applied index,
//!   `checkpointed` (the applied index is written in the same batch as
//!   the data), and the log holds every entry after it: log compaction
//!   follows snapshots, and a snapshot is taken at `checkpointed`.
//! - Every staged key is in `dirty_keys` (staged since the last
//!   freeze), in the in-flight checkpoint's keys (frozen), or in both
//!   (written again after the freeze); the mirror holds its value (dirty
//!   before frozen). The checkpoint's thread settles its keys before the
//!   owner joins it: a frozen key the mirror no longer stages is in
//!   RocksDB already (scans read it there).
//! - At most one checkpoint is in flight; anything that writes RocksDB's
//!   state machine on the owner's thread (a write that goes through, an
//!   install, a synchronous checkpoint) waits for it first.
//! - Bounded: a checkpoint starts once the dirty records pass
//!   `write_behind_bytes`; while one is in flight the dirty records may
//!   grow to twice that, then the owner waits for it.

use std::thread::{self, JoinHandle};

use super::mirror::Staging;
use super::staged_keys::{FrozenKeys, OrderedDirty};
use super::*;

/// The most a checkpoint's batch reserves up front (a larger one grows).
const CHECKPOINT_BATCH_RESERVE_BYTES_MAX: usize = 256 << 20;

/// A checkpoint being written on its own thread.
pub(super) struct InFlight {
    /// The frozen keys (ordered by the checkpoint's thread or the first
    /// scan; scans merge them).
    keys: Arc<FrozenKeys>,
    /// The applied index whose state it writes.
    applied: LogIndex,
    thread: JoinHandle<()>,
}

/// Writes the `which` records of `keys` with `applied` (and its term) in
/// one batch: the state machine at that index. Without the WAL when
/// `skip_wal`: a crash loses it whole, and the log replays it.
fn write_checkpoint<'a>(
    db: &DB,
    mirror: &ReadMirror,
    which: Staging,
    keys: impl Iterator<Item = &'a [u8]>,
    applied: (LogIndex, Option<Term>),
    skip_wal: bool,
) {
    let data = cf(db, CF_DATA);
    // Sized once from the mirror's count of the records (which is more
    // than their bytes in a batch): a batch grown by doubling copied
    // itself and faulted its new pages in (2.5% of a follower's samples).
    let records_bytes = match which {
        Staging::Dirty => mirror.dirty_bytes(),
        Staging::Frozen => mirror.frozen_bytes(),
    };
    let mut batch =
        WriteBatch::with_capacity_bytes(records_bytes.min(CHECKPOINT_BATCH_RESERVE_BYTES_MAX));
    for key in keys {
        mirror
            .staged_in(which, key, |value| match value {
                Some(value) => batch.put_cf(data, key, value),
                None => batch.delete_cf(data, key),
            })
            .expect("every key of a staged index is staged in the mirror");
    }
    batch.put_cf(
        cf(db, CF_META),
        KEY_APPLIED,
        records::encode_applied(applied.0, applied.1),
    );
    let mut options = WriteOptions::default();
    options.disable_wal(skip_wal);
    db.write_opt(batch, &options)
        .unwrap_or_else(|error| fatal("writing applied writes kept behind", error));
}

impl RocksStorage {
    /// Applies puts and deletes by staging them in the mirror, where
    /// reads find them at once; RocksDB takes them with a checkpoint,
    /// started once they pass `write_behind_bytes`.
    pub(super) fn apply_behind(&mut self, writes: &[DataWrite<'_>], applied: LogIndex) {
        for write in writes {
            let (key, value) = match *write {
                DataWrite::Put(key, value) => (key, Some(value)),
                DataWrite::Delete(key) => (key, None),
                DataWrite::DeleteRange(..) => unreachable!("range deletes go through"),
            };
            if self.mirror.stage(key, value) {
                self.dirty_keys.insert(key);
            }
        }
        self.cached.applied = applied;
        self.cached.applied_term = self.term(applied).ok();
        self.poll_checkpoint();
        let (dirty, bound) = (self.mirror.dirty_bytes(), self.options.write_behind_bytes);
        if dirty <= bound {
            return;
        }
        if self.in_flight.is_some() {
            if dirty <= bound.saturating_mul(2) {
                return;
            }
            self.wait_checkpoint();
        }
        self.start_checkpoint();
    }

    /// Freezes the dirty records and starts writing them on a thread,
    /// which then settles them (and frees the last checkpoint's keys):
    /// the owner's share is one swap per shard here and a join later.
    pub(super) fn start_checkpoint(&mut self) {
        assert!(self.in_flight.is_none(), "one checkpoint at a time");
        let keys = Arc::new(self.dirty_keys.freeze());
        self.mirror.freeze();
        let applied = (self.cached.applied, self.cached.applied_term);
        let (db, mirror, frozen) = (
            Arc::clone(&self.db),
            Arc::clone(&self.mirror),
            Arc::clone(&keys),
        );
        let skip_wal = self.skips_wal();
        let retired = self.retired_keys.take();
        let thread = thread::Builder::new()
            .name("dr-checkpoint".into())
            .spawn(move || {
                drop(retired);
                write_checkpoint(
                    &db,
                    &mirror,
                    Staging::Frozen,
                    frozen.iter(),
                    applied,
                    skip_wal,
                );
                mirror.settle_frozen();
            })
            .unwrap_or_else(|error| fatal("starting a checkpoint thread", error));
        self.in_flight = Some(InFlight {
            keys,
            applied: applied.0,
            thread,
        });
    }

    /// Settles the checkpoint in flight if its thread is done.
    pub(super) fn poll_checkpoint(&mut self) {
        if self
            .in_flight
            .as_ref()
            .is_some_and(|in_flight| in_flight.thread.is_finished())
        {
            self.wait_checkpoint();
        }
    }

    /// Waits for the checkpoint in flight, if any: its records are then
    /// clean and RocksDB's state is at its index. Its keys are kept for
    /// the next checkpoint's thread to free (a hundred thousand of them
    /// took the owner milliseconds).
    pub(super) fn wait_checkpoint(&mut self) {
        let Some(in_flight) = self.in_flight.take() else {
            return;
        };
        if let Err(panic) = in_flight.thread.join() {
            std::panic::resume_unwind(panic);
        }
        self.checkpointed = in_flight.applied;
        self.retired_keys = Some(in_flight.keys);
    }

    /// Whether a checkpoint is being written.
    pub(super) fn checkpoint_in_flight(&self) -> Option<LogIndex> {
        self.in_flight.as_ref().map(|in_flight| in_flight.applied)
    }

    /// Writes every write kept behind to RocksDB on this thread, with the
    /// applied index, after the checkpoint in flight: RocksDB then holds
    /// the state at the applied index. Used where that must hold before
    /// going on (a write that goes through, a synchronous snapshot, a
    /// backup, a close); the running store checkpoints in the background.
    pub(crate) fn checkpoint(&mut self) {
        self.wait_checkpoint();
        if self.checkpointed == self.cached.applied && self.dirty_keys.is_empty() {
            return;
        }
        let applied = (self.cached.applied, self.cached.applied_term);
        // Taken as a checkpoint's thread takes them (sorted as a vector,
        // not inserted into the ordered set a scan keeps); the dirty keys
        // are empty after.
        let keys = self.dirty_keys.freeze();
        write_checkpoint(
            &self.db,
            &self.mirror,
            Staging::Dirty,
            keys.iter(),
            applied,
            self.skips_wal(),
        );
        self.mirror.settle();
        self.checkpointed = self.cached.applied;
    }

    /// The staged keys from `start` on, in key order, each once: the
    /// dirty ones (`dirty`, from [`DirtyKeys::ordered`]) merged with the
    /// in-flight checkpoint's.
    ///
    /// [`DirtyKeys::ordered`]: super::staged_keys::DirtyKeys::ordered
    pub(super) fn staged_keys<'a>(
        &'a self,
        dirty: &'a OrderedDirty<'a>,
        start: &'a [u8],
    ) -> impl Iterator<Item = &'a [u8]> + 'a {
        let dirty = dirty.range_from(start).peekable();
        let frozen = self
            .in_flight
            .iter()
            .flat_map(move |in_flight| in_flight.keys.range_from(start))
            .peekable();
        MergedKeys { dirty, frozen }
    }

    /// Forgets the writes kept behind: the state they changed is being
    /// replaced (a snapshot install). A checkpoint in flight finishes
    /// first, so it cannot write the old state over the new one.
    pub(super) fn drop_writes_behind(&mut self) {
        self.wait_checkpoint();
        self.mirror.clear();
        self.dirty_keys.clear();
    }
}

/// Two ordered key sequences merged, each key once.
struct MergedKeys<A: Iterator, B: Iterator> {
    dirty: std::iter::Peekable<A>,
    frozen: std::iter::Peekable<B>,
}

impl<'a, A, B> Iterator for MergedKeys<A, B>
where
    A: Iterator<Item = &'a [u8]>,
    B: Iterator<Item = &'a [u8]>,
{
    type Item = &'a [u8];

    fn next(&mut self) -> Option<Self::Item> {
        match (self.dirty.peek(), self.frozen.peek()) {
            (Some(dirty), Some(frozen)) => match dirty.cmp(frozen) {
                std::cmp::Ordering::Less => self.dirty.next(),
                std::cmp::Ordering::Greater => self.frozen.next(),
                std::cmp::Ordering::Equal => {
                    self.frozen.next();
                    self.dirty.next()
                }
            },
            (Some(_), None) => self.dirty.next(),
            (None, _) => self.frozen.next(),
        }
    }
}
