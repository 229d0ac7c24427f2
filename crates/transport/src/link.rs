//! Writing a connection: its writer task, and — on plain TCP — any
//! sender that flushes what it held ([`DirectLink`]). Both take the
//! peer's queue in batches and write each as one frame.

use bytes::BytesMut;
use dr_codec::frame::encode_messages;
use dr_codec::message::Message;
use parking_lot::Mutex;
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::net::tcp::OwnedWriteHalf;

use std::io;

use crate::stats::add;
use crate::tcp::{ConnectionEnd, Peer, PeerIo, READ_CHUNK, Shared};

/// A direct link's frame buffer keeps at most this much capacity between
/// frames (a snapshot chunk's frame is let go).
const FRAME_KEPT_BYTES_MAX: usize = 1 << 20;

/// Batches out of a peer's queue, each encoded as one frame.
#[derive(Default)]
struct Batches {
    /// Messages being encoded (kept for its capacity).
    messages: Vec<Message>,
    /// Messages in the frame last encoded.
    count: usize,
}

impl Batches {
    /// Encodes the next batch of `peer`'s queue into `out` (which it
    /// clears first); false when the queue is empty. A batch that cannot
    /// be encoded is dropped and counted, and the next one taken.
    fn encode_next(&mut self, shared: &Shared, peer: &Peer, out: &mut BytesMut) -> bool {
        let codec = &shared.config.codec;
        loop {
            out.clear();
            self.messages.clear();
            self.count = 0;
            // Half a frame of payload per batch leaves room for the framing.
            if !peer
                .queue
                .take_batch(&mut self.messages, codec.frame_bytes_max / 2)
            {
                return false;
            }
            let encoded = encode_messages(&self.messages, codec, out);
            let count = self.messages.len();
            self.messages.clear();
            match encoded {
                Ok(_) => {
                    self.count = count;
                    return true;
                }
                Err(error) => {
                    add(&shared.counters.messages_dropped, count as u64);
                    tracing::error!(peer = peer.id, "dropping {count} messages: {error}");
                }
            }
        }
    }

    /// Counts the frame last encoded, of `bytes` bytes, as sent.
    fn sent(&self, shared: &Shared, bytes: usize) {
        let counters = &shared.counters;
        add(&counters.messages_sent, self.count as u64);
        add(&counters.frames_sent, 1);
        add(&counters.bytes_sent, bytes as u64);
    }
}

/// A direct link's frame in progress.
#[derive(Default)]
struct Frame {
    batches: Batches,
    /// The encoded frame; `written` of its bytes are out.
    bytes: BytesMut,
    written: usize,
}

/// Where a write left off.
pub(crate) enum Written {
    /// Everything queued is out.
    Idle,
    /// The socket is full; the rest waits for it.
    Blocked,
}

/// The sending side of a plain TCP connection, written by its writer
/// task or by a flushing sender, whichever holds `frame`: a frame begun
/// is finished before the next is taken, so frames never interleave.
pub(crate) struct DirectLink {
    stream: OwnedWriteHalf,
    frame: Mutex<Frame>,
}

impl DirectLink {
    pub(crate) fn new(stream: OwnedWriteHalf) -> Self {
        Self {
            stream,
            frame: Mutex::new(Frame::default()),
        }
    }

    /// On a sender's thread: writes what is queued unless someone else is
    /// writing (`None`, as for an error: the writer task takes over).
    pub(crate) fn try_write_queued(&self, shared: &Shared, peer: &Peer) -> Option<Written> {
        let mut frame = self.frame.try_lock()?;
        self.write_queued(&mut frame, shared, peer).ok()
    }

    /// Writes the frame begun, then a frame of what is queued, and again,
    /// until the queue is empty or the socket is full. Never waits.
    fn write_queued(&self, frame: &mut Frame, shared: &Shared, peer: &Peer) -> io::Result<Written> {
        loop {
            while frame.written < frame.bytes.len() {
                match self.stream.try_write(&frame.bytes[frame.written..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(written) => frame.written += written,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        return Ok(Written::Blocked);
                    }
                    Err(error) => return Err(error),
                }
            }
            if !frame.bytes.is_empty() {
                frame.batches.sent(shared, frame.bytes.len());
            }
            frame.written = 0;
            if frame.bytes.capacity() > FRAME_KEPT_BYTES_MAX {
                frame.bytes = BytesMut::new();
            }
            let Frame { batches, bytes, .. } = frame;
            if !batches.encode_next(shared, peer, bytes) {
                return Ok(Written::Idle);
            }
        }
    }
}

/// Waits for the queue's next message, then lets the tasks already
/// runnable (other clients' forwarded requests) queue theirs too, so
/// they leave in one frame.
async fn next_messages(peer: &Peer) {
    peer.queue.wait().await;
    tokio::task::yield_now().await;
}

/// The writer task of a plain connection: writes what is queued whenever
/// a flushing sender did not.
pub(crate) async fn write_loop_direct(
    shared: &Shared,
    peer: &Peer,
    link: &DirectLink,
) -> ConnectionEnd {
    loop {
        let written = {
            let mut frame = link.frame.lock();
            link.write_queued(&mut frame, shared, peer)
        };
        match written {
            Ok(Written::Idle) => next_messages(peer).await,
            Ok(Written::Blocked) => {
                if let Err(error) = link.stream.writable().await {
                    return ConnectionEnd::Io(error);
                }
            }
            Err(error) => return ConnectionEnd::Io(error),
        }
    }
}

/// The writer task of a TLS connection (the session buffers inside
/// itself, so no one else writes it): a pooled buffer per frame.
pub(crate) async fn write_loop_tls(
    shared: &Shared,
    peer: &Peer,
    mut writer: WriteHalf<Box<dyn PeerIo>>,
) -> ConnectionEnd {
    let mut batches = Batches::default();
    loop {
        let mut buffer = shared.pool.get(READ_CHUNK);
        if !batches.encode_next(shared, peer, &mut buffer) {
            drop(buffer);
            next_messages(peer).await;
            continue;
        }
        // Flushed so that the batch leaves now.
        let written = async {
            writer.write_all(&buffer).await?;
            writer.flush().await
        };
        if let Err(error) = written.await {
            add(&shared.counters.messages_dropped, batches.count as u64);
            return ConnectionEnd::Io(error);
        }
        batches.sent(shared, buffer.len());
    }
}
