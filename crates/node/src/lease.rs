//! Reads on the leader lease outside the engine thread (`--read-lease`).
//!
//! The engine (`dr-engine`) keeps the lease: it dates every read round by
//! its first sighting, before the round's messages leave, and holds the
//! lease for three quarters of the time a quorum promised to elect no one
//! else (`dr_engine::lease_duration`). It publishes the lease through its
//! observer into the [`LeaseGate`] here, which connections check around a
//! single-key read of the store.
//!
//! Invariant: the gate never opens past what the engine published, and
//! the engine closes it before leadership can be handed over.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use crate::clock::NodeClock;

/// The lease as the engine publishes it for client connections, which
/// then answer single-key reads from the store themselves, without a trip
/// through the engine thread.
///
/// A connection checks [`open`](Self::open), reads, then checks
/// [`still_valid`](Self::still_valid): if the lease still held after the
/// read, this node was the only leader throughout it, so nothing newer
/// than what it read had been acknowledged anywhere, and no snapshot can
/// have been installed under it (only a follower installs one, from a
/// leader that cannot exist yet). The engine closes the gate before any
/// `TimeoutNow` leaves.
#[derive(Debug, Default)]
pub struct LeaseGate {
    /// The node's clock, the one the engine dates the lease by.
    clock: NodeClock,
    /// Clock nanoseconds until which the lease holds; 0: closed.
    valid_until: AtomicU64,
    /// The lease read index: the store must have applied it.
    read_index: AtomicU64,
    /// The applied index, as the engine last published it.
    applied: AtomicU64,
}

fn nanos(at: Duration) -> u64 {
    u64::try_from(at.as_nanos()).unwrap_or(u64::MAX)
}

impl LeaseGate {
    /// A closed gate on the node's clock.
    pub fn new(clock: NodeClock) -> Self {
        Self {
            clock,
            valid_until: AtomicU64::new(0),
            read_index: AtomicU64::new(u64::MAX),
            applied: AtomicU64::new(0),
        }
    }

    /// Publishes the lease: until when (on the node's clock), at which
    /// read index; `None` closes the gate.
    pub fn publish(&self, lease: Option<(Duration, u64)>) {
        match lease {
            Some((until, index)) => {
                self.read_index.store(index, SeqCst);
                self.valid_until.store(nanos(until).max(1), SeqCst);
            }
            None => self.valid_until.store(0, SeqCst),
        }
    }

    /// Publishes the applied index (after the apply is written).
    pub fn publish_applied(&self, applied: u64) {
        self.applied.store(applied, SeqCst);
    }

    /// Whether a read may start now: the lease holds and the store has
    /// applied its read index.
    pub fn open(&self) -> bool {
        self.still_valid() && self.applied.load(SeqCst) >= self.read_index.load(SeqCst)
    }

    /// Whether the lease still holds now.
    pub fn still_valid(&self) -> bool {
        nanos(self.clock.now()) < self.valid_until.load(SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_opens_only_while_the_lease_holds_and_the_index_is_applied() {
        let gate = LeaseGate::default();
        assert!(!gate.open(), "closed until published");
        let until = NodeClock.now() + Duration::from_secs(60);
        gate.publish(Some((until, 7)));
        gate.publish_applied(6);
        assert!(!gate.open(), "read index not applied yet");
        assert!(gate.still_valid());
        gate.publish_applied(7);
        assert!(gate.open());
        gate.publish(None);
        assert!(!gate.open() && !gate.still_valid());
        std::thread::sleep(Duration::from_millis(1));
        gate.publish(Some((Duration::from_nanos(1), 7)));
        assert!(!gate.open(), "a lease in the past");
    }
}
