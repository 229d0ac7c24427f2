//! The clock side of leader leases (`--read-lease`): how long after a
//! read round a leader may answer reads without another round.
//!
//! dr-raft says *whether* a leader may serve a lease read
//! (`lease_read_index`), numbers its read rounds and dates them on a clock
//! it is given (`LeaseTracker`); this module gives it the monotonic one. A
//! round that a quorum echoed proves that each of those followers heard
//! from this leader after the round was first sent, and such a follower
//! refuses votes for an election timeout after hearing from its leader (a
//! node that restarts refuses them for as long), so no rival can win
//! before the round's send time plus that timeout. [`LeaseClock`] dates
//! every round by its first sighting, which the engine makes before the
//! round's messages leave, and keeps the lease that far ahead, shortened
//! for clock rates that differ ([`lease_clock`]).
//!
//! Invariant: a round's date is never later than its first send, so the
//! lease never outlives the followers' promise. What it does not do: it
//! never extends a lease by itself; the engine starts rounds to renew it.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// The leader lease, as this node's monotonic clock sees it: dr-raft's
/// tracker on `Instant`s.
pub type LeaseClock = dr_raft::LeaseTracker<Instant, Duration>;

/// A lease clock for a follower election timeout of `election_ticks`
/// ticks of `tick`. A follower's ticks never come faster than `tick` apart
/// and the first may come at once, so it keeps its promise for at least
/// `election_ticks - 1` ticks; a quarter of that is left for clocks running
/// at different rates.
pub fn lease_clock(election_ticks: u32, tick: Duration) -> LeaseClock {
    let promised = tick * election_ticks.saturating_sub(1);
    LeaseClock::new(promised * 3 / 4)
}

/// How much of the lease is left at `now` (zero when there is none).
pub fn lease_remaining(lease: &LeaseClock, now: Instant) -> Duration {
    lease
        .valid_until()
        .map_or(Duration::ZERO, |until| until.saturating_duration_since(now))
}

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
#[derive(Debug)]
pub struct LeaseGate {
    base: Instant,
    /// Nanoseconds after `base` until which the lease holds; 0: closed.
    valid_until: AtomicU64,
    /// The lease read index: the store must have applied it.
    read_index: AtomicU64,
    /// The applied index, as the engine last published it.
    applied: AtomicU64,
}

impl Default for LeaseGate {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            valid_until: AtomicU64::new(0),
            read_index: AtomicU64::new(u64::MAX),
            applied: AtomicU64::new(0),
        }
    }
}

impl LeaseGate {
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Publishes the lease: until when, at which read index; `None`
    /// closes the gate.
    pub fn publish(&self, lease: Option<(Instant, u64)>) {
        match lease {
            Some((until, index)) => {
                self.read_index.store(index, SeqCst);
                self.valid_until.store(self.nanos(until).max(1), SeqCst);
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
        self.nanos(Instant::now()) < self.valid_until.load(SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(10);

    #[test]
    fn a_lease_lasts_three_quarters_of_the_promised_silence() {
        let lease = lease_clock(10, TICK);
        assert_eq!(lease.duration(), Duration::from_micros(67_500));
        assert_eq!(lease_remaining(&lease, Instant::now()), Duration::ZERO);
    }

    #[test]
    fn the_gate_opens_only_while_the_lease_holds_and_the_index_is_applied() {
        let gate = LeaseGate::default();
        assert!(!gate.open(), "closed until published");
        let until = Instant::now() + Duration::from_secs(60);
        gate.publish(Some((until, 7)));
        gate.publish_applied(6);
        assert!(!gate.open(), "read index not applied yet");
        assert!(gate.still_valid());
        gate.publish_applied(7);
        assert!(gate.open());
        gate.publish(None);
        assert!(!gate.open() && !gate.still_valid());
        gate.publish(Some((Instant::now() - Duration::from_millis(1), 7)));
        assert!(!gate.open(), "a lease in the past");
    }
}
