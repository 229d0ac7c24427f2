//! Counters of what an endpoint did, for the metrics endpoint and tests.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of an endpoint's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Messages accepted for sending.
    pub messages_queued: u64,
    /// Messages dropped: queue full, unknown peer, or lost with a broken
    /// connection (Raft retransmits).
    pub messages_dropped: u64,
    /// Messages written to a socket.
    pub messages_sent: u64,
    /// Frames written.
    pub frames_sent: u64,
    /// Bytes written.
    pub bytes_sent: u64,
    /// Messages received and handed to the node.
    pub messages_received: u64,
    /// Bytes read.
    pub bytes_received: u64,
    /// Connections that completed their handshake.
    pub connections_established: u64,
    /// Dials that failed (refused, unreachable, timed out).
    pub dial_failures: u64,
    /// Connections refused during the handshake (strangers, other
    /// clusters, garbage).
    pub handshakes_refused: u64,
    /// Connections closed for a malformed frame or a message not meant
    /// for this link.
    pub bad_frames: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) messages_queued: AtomicU64,
    pub(crate) messages_dropped: AtomicU64,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) frames_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) connections_established: AtomicU64,
    pub(crate) dial_failures: AtomicU64,
    pub(crate) handshakes_refused: AtomicU64,
    pub(crate) bad_frames: AtomicU64,
}

/// Adds to a counter (relaxed: counters order nothing).
pub(crate) fn add(counter: &AtomicU64, amount: u64) {
    counter.fetch_add(amount, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> TransportStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TransportStats {
            messages_queued: load(&self.messages_queued),
            messages_dropped: load(&self.messages_dropped),
            messages_sent: load(&self.messages_sent),
            frames_sent: load(&self.frames_sent),
            bytes_sent: load(&self.bytes_sent),
            messages_received: load(&self.messages_received),
            bytes_received: load(&self.bytes_received),
            connections_established: load(&self.connections_established),
            dial_failures: load(&self.dial_failures),
            handshakes_refused: load(&self.handshakes_refused),
            bad_frames: load(&self.bad_frames),
        }
    }
}
