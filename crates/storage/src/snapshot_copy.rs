//! Copying the state machine into a snapshot slot, on the caller's thread
//! or on a thread of its own.
//!
//! A snapshot of a store that is its own state machine is a copy of the
//! data column family, as a key-value stream, into the staging slot of
//! the meta family. For 100k keys that is tens of megabytes written: done
//! on the thread that drives consensus, it stops heartbeats, appends and
//! client answers for as long. [`SnapshotCopy`] does it on its own thread
//! from a RocksDB snapshot pinned at the applied index, while the caller
//! keeps applying; the caller then switches slots in one synced write.
//!
//! Invariants: the copy reads only its pinned view, so later applies never
//! leak into it; it writes only the staging slot, which nothing else
//! touches while it runs (the store cancels it before staging a received
//! snapshot or copying synchronously); the copy is not the snapshot until
//! the caller's switch, so a crash or a cancel leaves the current snapshot
//! as it was and the staging slot as garbage the next use clears.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use dr_codec::message::SnapshotMeta;
use rocksdb::{DB, DBRawIterator, WriteBatch};

use crate::kv_stream;
use crate::options::{CF_DATA, CF_META};
use crate::store::{SNAPSHOT_RECORD_BYTES, add_clear_slot, snapshot_key};

/// Bytes gathered in a write batch before it is written (unsynced; the
/// caller's synced switch makes them durable, as the WAL is ordered).
pub(crate) const COPY_BATCH_BYTES: usize = 4 << 20;

/// Copies every pair `source` yields into `slot` of the meta family as a
/// key-value stream; returns the stream's length, or `None` when `cancel`
/// was raised first.
pub(crate) fn copy_pairs(
    db: &DB,
    mut source: DBRawIterator<'_>,
    slot: u8,
    cancel: &AtomicBool,
) -> Result<Option<u64>, rocksdb::Error> {
    let meta_cf = db
        .cf_handle(CF_META)
        .expect("column family meta exists since open");
    let mut batch = WriteBatch::default();
    add_clear_slot(&mut batch, meta_cf, slot);
    let mut buffer = Vec::with_capacity(2 * SNAPSHOT_RECORD_BYTES);
    kv_stream::encode_header(&mut buffer);
    let mut written = 0u64;
    let mut count = 0u64;
    source.seek_to_first();
    while let (Some(key), Some(value)) = (source.key(), source.value()) {
        kv_stream::encode_pair(key, value, &mut buffer);
        count += 1;
        while buffer.len() >= SNAPSHOT_RECORD_BYTES {
            let rest = buffer.split_off(SNAPSHOT_RECORD_BYTES);
            batch.put_cf(meta_cf, snapshot_key(slot, written), &buffer);
            written += buffer.len() as u64;
            buffer = rest;
        }
        if batch.size_in_bytes() >= COPY_BATCH_BYTES {
            if cancel.load(Ordering::Relaxed) {
                return Ok(None);
            }
            db.write(std::mem::take(&mut batch))?;
        }
        source.next();
    }
    source.status()?;
    kv_stream::encode_trailer(count, &mut buffer);
    for piece in buffer.chunks(SNAPSHOT_RECORD_BYTES) {
        batch.put_cf(meta_cf, snapshot_key(slot, written), piece);
        written += piece.len() as u64;
    }
    db.write(batch)?;
    Ok(Some(written))
}

/// A copy of the state machine running on its own thread.
pub(crate) struct SnapshotCopy {
    /// The snapshot it makes: the applied index, its term and
    /// configuration when the view was pinned.
    pub(crate) meta: SnapshotMeta,
    /// The slot it writes.
    pub(crate) slot: u8,
    cancel: Arc<AtomicBool>,
    thread: JoinHandle<Result<Option<u64>, String>>,
}

impl SnapshotCopy {
    /// Starts copying into `slot` and returns once the thread has pinned
    /// its view of the data, so every write the caller makes afterwards
    /// stays out of the copy.
    pub(crate) fn start(db: Arc<DB>, meta: SnapshotMeta, slot: u8) -> Result<Self, String> {
        let cancel = Arc::new(AtomicBool::new(false));
        let (pinned_sender, pinned) = mpsc::sync_channel(1);
        let thread_cancel = Arc::clone(&cancel);
        let thread = thread::Builder::new()
            .name("dr-snapshot-copy".into())
            .spawn(move || {
                let view = db.snapshot();
                // The caller waits for this; if it is gone, so is the copy.
                if pinned_sender.send(()).is_err() {
                    return Ok(None);
                }
                let data_cf = db
                    .cf_handle(CF_DATA)
                    .expect("column family data exists since open");
                copy_pairs(&db, view.raw_iterator_cf(data_cf), slot, &thread_cancel)
                    .map_err(|error| error.to_string())
            })
            .map_err(|error| format!("cannot start the snapshot copy thread: {error}"))?;
        if pinned.recv().is_err() {
            return Err(match thread.join() {
                Ok(Err(error)) => error,
                _ => "the snapshot copy thread stopped before pinning its view".into(),
            });
        }
        Ok(Self {
            meta,
            slot,
            cancel,
            thread,
        })
    }

    /// Whether the copy has ended (done, failed or cancelled).
    pub(crate) fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the copy: the stream's length, `None` if it was
    /// cancelled, or why writing it failed.
    pub(crate) fn finish(self) -> Result<Option<u64>, String> {
        match self.thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Stops the copy at its next batch and waits for the thread.
    pub(crate) fn cancel(self) {
        self.cancel.store(true, Ordering::Relaxed);
        // A write that failed while cancelling changes nothing: the slot
        // is garbage either way and the next use clears it.
        let _ = self.finish();
    }
}
