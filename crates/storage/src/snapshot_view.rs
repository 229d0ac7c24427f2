//! A snapshot that is RocksDB's own state machine, pinned: no copy.
//!
//! A store that is its own state machine keeps in RocksDB the state at one
//! applied index (the last checkpoint's). Its snapshot at that index is
//! that state: a [`SnapshotView`] pins it with a RocksDB snapshot (a
//! sequence number; table files and overwritten versions stay readable
//! while it is held). Nothing is copied and nothing written: a snapshot of
//! a state of gigabytes costs one read pass to measure it, where a copy
//! wrote the whole state again (and RocksDB flushed and compacted it away
//! later).
//!
//! The pinned state is streamed on demand, in the state-machine stream's
//! format (`kv_stream`), by the view's own thread (the RocksDB snapshot
//! and its iterator borrow the database, so they live on that thread's
//! stack): a follower that needs the snapshot reads it chunk by chunk at
//! growing offsets, and a repeated chunk is served again.
//!
//! Invariants: the view holds the state at exactly its meta's index (the
//! owner pins it when RocksDB holds that state and no checkpoint is being
//! written); the stream reads only the pinned state, so it is the same
//! bytes however late or often it is read. A view is not durable: the
//! state machine skips RocksDB's WAL, so a crash finds it at the last
//! state RocksDB flushed, which may be older. The store therefore never
//! compacts its log past the applied index RocksDB holds on disk
//! (`RocksStorage::durable_applied`), and a reopened store pins a new
//! view at the state it finds, which becomes its snapshot.

use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use bytes::Bytes;
use dr_codec::message::SnapshotMeta;
use rocksdb::{DB, DBRawIterator, ReadOptions};
use std::sync::Arc;

use crate::kv_stream;
use crate::options::CF_DATA;

/// A chunk of the stream asked of the view's thread.
struct ChunkRequest {
    offset: u64,
    max_bytes: u64,
    reply: mpsc::SyncSender<Result<(Bytes, bool), String>>,
}

/// RocksDB's state machine pinned at one applied index (see the module
/// docs), served by a thread of its own.
pub(crate) struct SnapshotView {
    /// The snapshot it is: the applied index, its term and configuration.
    pub(crate) meta: SnapshotMeta,
    requests: Option<mpsc::SyncSender<ChunkRequest>>,
    /// The stream's length in bytes, or why reading the state failed.
    measured: mpsc::Receiver<Result<u64, String>>,
    thread: Option<JoinHandle<()>>,
}

impl SnapshotView {
    /// Pins the state RocksDB holds now as the snapshot `meta` and starts
    /// measuring its stream; returns once the state is pinned, so whatever
    /// the caller writes afterwards stays out of it.
    pub(crate) fn pin(db: Arc<DB>, meta: SnapshotMeta) -> Result<Self, String> {
        let (pinned_sender, pinned) = mpsc::sync_channel(1);
        let (measured_sender, measured) = mpsc::sync_channel(1);
        let (requests, inbox) = mpsc::sync_channel::<ChunkRequest>(1);
        let thread = thread::Builder::new()
            .name("dr-snapshot-view".into())
            .spawn(move || {
                let view = db.snapshot();
                // The caller waits for this; if it is gone, so is the view.
                if pinned_sender.send(()).is_err() {
                    return;
                }
                let data = db
                    .cf_handle(CF_DATA)
                    .expect("column family data exists since open");
                let mut options = ReadOptions::default();
                options.fill_cache(false);
                options.set_snapshot(&view);
                let measured = stream_len(db.raw_iterator_cf_opt(data, options));
                let _ = measured_sender.send(measured);
                let mut stream = ViewStream::new(view.raw_iterator_cf(data));
                while let Ok(request) = inbox.recv() {
                    let chunk = stream.read_at(request.offset, request.max_bytes);
                    let _ = request.reply.send(chunk);
                }
            })
            .map_err(|error| format!("cannot start the snapshot view thread: {error}"))?;
        if pinned.recv().is_err() {
            let _ = thread.join();
            return Err("the snapshot view thread stopped before pinning the state".into());
        }
        Ok(Self {
            meta,
            requests: Some(requests),
            measured,
            thread: Some(thread),
        })
    }

    /// The stream's length in bytes once it is measured (or why reading
    /// the state failed); `None` meanwhile. Reported once.
    pub(crate) fn poll_measured(&self) -> Option<Result<u64, String>> {
        match self.measured.try_recv() {
            Ok(outcome) => Some(outcome),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => {
                Some(Err("the snapshot view thread stopped".into()))
            }
        }
    }

    /// Waits for the stream's length (see [`Self::poll_measured`]).
    pub(crate) fn wait_measured(&self) -> Result<u64, String> {
        self.measured
            .recv()
            .unwrap_or_else(|_| Err("the snapshot view thread stopped".into()))
    }

    /// Up to `max_bytes` of the stream from `offset` on, and whether they
    /// reach its end.
    pub(crate) fn chunk(&self, offset: u64, max_bytes: u64) -> Result<(Bytes, bool), String> {
        let (reply, answer) = mpsc::sync_channel(1);
        let request = ChunkRequest {
            offset,
            max_bytes,
            reply,
        };
        self.requests
            .as_ref()
            .expect("requests are open until drop")
            .send(request)
            .map_err(|_| "the snapshot view thread stopped".to_owned())?;
        answer
            .recv()
            .map_err(|_| "the snapshot view thread stopped".to_owned())?
    }
}

impl Drop for SnapshotView {
    /// Releases the pinned state: the thread ends (after measuring) and
    /// its hold on the database with it.
    fn drop(&mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take()
            && let Err(panic) = thread.join()
            && !thread::panicking()
        {
            std::panic::resume_unwind(panic);
        }
    }
}

/// The exact length of the pinned state's stream, from one pass over it
/// that reads without filling the block cache. (RocksDB's size estimates
/// read far off: table files are compressed; the engine spaces snapshots
/// by this figure.)
fn stream_len(mut pairs: DBRawIterator<'_>) -> Result<u64, String> {
    let (mut count, mut bytes) = (0u64, 0u64);
    pairs.seek_to_first();
    while let (Some(key), Some(value)) = (pairs.key(), pairs.value()) {
        count += 1;
        bytes += (key.len() + value.len()) as u64;
        pairs.next();
    }
    pairs.status().map_err(|error| error.to_string())?;
    Ok(kv_stream::stream_len(count, bytes))
}

/// The state-machine stream of a pinned state, produced as it is read:
/// the bytes from the last chunk asked on are kept (a chunk asked again
/// is served again), earlier ones dropped (a chunk from before them
/// starts the stream over).
struct ViewStream<'a> {
    pairs: DBRawIterator<'a>,
    /// Encoded bytes from stream offset `start` on.
    buffer: Vec<u8>,
    start: u64,
    count: u64,
    /// Whether the trailer is in `buffer` (every pair was read).
    ended: bool,
}

impl<'a> ViewStream<'a> {
    fn new(pairs: DBRawIterator<'a>) -> Self {
        let mut stream = Self {
            pairs,
            buffer: Vec::new(),
            start: 0,
            count: 0,
            ended: false,
        };
        stream.rewind();
        stream
    }

    fn rewind(&mut self) {
        self.pairs.seek_to_first();
        self.buffer.clear();
        kv_stream::encode_header(&mut self.buffer);
        self.start = 0;
        self.count = 0;
        self.ended = false;
    }

    fn read_at(&mut self, offset: u64, max_bytes: u64) -> Result<(Bytes, bool), String> {
        if offset < self.start {
            self.rewind();
        }
        let wanted_end = offset.saturating_add(max_bytes);
        loop {
            // Bytes before the offset asked are never asked again
            // (short of a rewind): dropped as they pass, so memory stays
            // about one chunk, wherever the offset.
            let buffered_end = self.start + self.buffer.len() as u64;
            if buffered_end <= offset && !self.buffer.is_empty() {
                self.start = buffered_end;
                self.buffer.clear();
            }
            if self.ended || buffered_end >= wanted_end {
                break;
            }
            match (self.pairs.key(), self.pairs.value()) {
                (Some(key), Some(value)) => {
                    kv_stream::encode_pair(key, value, &mut self.buffer);
                    self.count += 1;
                    self.pairs.next();
                }
                _ => {
                    self.pairs
                        .status()
                        .map_err(|error| format!("reading the pinned state: {error}"))?;
                    kv_stream::encode_trailer(self.count, &mut self.buffer);
                    self.ended = true;
                }
            }
        }
        let buffered_end = self.start + self.buffer.len() as u64;
        if offset > buffered_end {
            return Err(format!(
                "snapshot offset {offset} is past its {buffered_end} bytes"
            ));
        }
        self.buffer.drain(..(offset - self.start) as usize);
        self.start = offset;
        let taken = self
            .buffer
            .len()
            .min(usize::try_from(max_bytes).unwrap_or(usize::MAX));
        let done = self.ended && taken == self.buffer.len();
        Ok((Bytes::copy_from_slice(&self.buffer[..taken]), done))
    }
}
