//! The clock side of leader leases (`--read-lease`): how long after a
//! read round a leader may answer reads without another round.
//!
//! dr-raft says *whether* a leader may serve a lease read
//! (`lease_read_index`) and numbers its read rounds; it has no clock. A
//! round that a quorum echoed proves that each of those followers heard
//! from this leader after the round was first sent, and such a follower
//! refuses votes for an election timeout after hearing from its leader (a
//! node that restarts refuses them for as long), so no rival can win
//! before the round's send time plus that timeout. [`LeaseClock`] dates
//! every round by its first sighting, which the engine makes before the
//! round's messages leave, and keeps the lease that far ahead, shortened
//! for clock rates that differ.
//!
//! Invariant: a round's date is never later than its first send, so the
//! lease never outlives the followers' promise. What it does not do: it
//! never extends a lease by itself; the engine starts rounds to renew it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use dr_codec::message::Term;
use dr_raft::ReadRounds;

/// The leader lease, as this node's monotonic clock sees it.
#[derive(Debug)]
pub struct LeaseClock {
    /// How long a confirmed round's lease lasts after it was first seen.
    duration: Duration,
    term: Term,
    /// The newest round seen sent.
    seen_sent: u64,
    /// Rounds sent but not yet confirmed, each with its first sighting.
    unconfirmed: VecDeque<(u64, Instant)>,
    valid_until: Option<Instant>,
}

impl LeaseClock {
    /// Until when the lease holds, if it does at all.
    pub fn valid_until(&self) -> Option<Instant> {
        self.valid_until
    }

    /// A lease for a follower election timeout of `election_ticks` ticks of
    /// `tick`. A follower's ticks never come faster than `tick` apart and
    /// the first may come at once, so it keeps its promise for at least
    /// `election_ticks - 1` ticks; a quarter of that is left for clocks
    /// running at different rates.
    pub fn new(election_ticks: u32, tick: Duration) -> Self {
        let promised = tick * election_ticks.saturating_sub(1);
        Self::with_duration(promised * 3 / 4)
    }

    /// How long a lease lasts after its round was first seen.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Takes in the core's read rounds at `now`. Call it before the
    /// messages of every ready leave, so a new round is dated no later
    /// than its first send.
    pub fn observe(&mut self, rounds: ReadRounds, now: Instant) {
        if rounds.term != self.term {
            *self = Self {
                term: rounds.term,
                ..Self::with_duration(self.duration)
            };
        }
        if rounds.sent > self.seen_sent {
            self.seen_sent = rounds.sent;
            self.unconfirmed.push_back((rounds.sent, now));
        }
        let mut newest_confirmed = None;
        while let Some(&(round, seen)) = self.unconfirmed.front() {
            if round > rounds.confirmed {
                break;
            }
            newest_confirmed = Some(seen);
            self.unconfirmed.pop_front();
        }
        if let Some(seen) = newest_confirmed {
            let until = seen + self.duration;
            self.valid_until = Some(self.valid_until.map_or(until, |old| old.max(until)));
        }
    }

    /// How much of the lease is left at `now` (zero when there is none).
    pub fn remaining(&self, now: Instant) -> Duration {
        self.valid_until
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now))
    }

    /// Whether a round is out that would renew the lease.
    pub fn round_in_flight(&self) -> bool {
        !self.unconfirmed.is_empty()
    }

    fn with_duration(duration: Duration) -> Self {
        Self {
            duration,
            term: 0,
            seen_sent: 0,
            unconfirmed: VecDeque::new(),
            valid_until: None,
        }
    }
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

    fn rounds(term: Term, sent: u64, confirmed: u64) -> ReadRounds {
        ReadRounds {
            term,
            sent,
            confirmed,
        }
    }

    #[test]
    fn a_lease_runs_from_the_first_sighting_of_the_confirmed_round() {
        let mut lease = LeaseClock::new(10, TICK);
        assert_eq!(lease.duration(), Duration::from_micros(67_500));
        let start = Instant::now();
        lease.observe(rounds(3, 1, 0), start);
        assert_eq!(lease.remaining(start), Duration::ZERO, "not confirmed yet");
        assert!(lease.round_in_flight());
        // Seen again later (a heartbeat repeating the round): still dated
        // by its first sighting.
        lease.observe(rounds(3, 1, 0), start + TICK);
        lease.observe(rounds(3, 1, 1), start + 2 * TICK);
        assert!(!lease.round_in_flight());
        assert_eq!(
            lease.remaining(start + 2 * TICK),
            lease.duration() - 2 * TICK
        );
        assert_eq!(lease.remaining(start + lease.duration()), Duration::ZERO);
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

    #[test]
    fn a_later_round_extends_and_a_new_term_ends_the_lease() {
        let mut lease = LeaseClock::new(10, TICK);
        let start = Instant::now();
        lease.observe(rounds(3, 1, 1), start);
        lease.observe(rounds(3, 2, 1), start + 3 * TICK);
        lease.observe(rounds(3, 3, 1), start + 4 * TICK);
        // Round 3 confirmed implies round 2: the lease runs from round 3.
        lease.observe(rounds(3, 3, 3), start + 5 * TICK);
        let now = start + 5 * TICK;
        assert_eq!(lease.remaining(now), lease.duration() - TICK);
        lease.observe(rounds(4, 0, 0), now);
        assert_eq!(lease.remaining(now), Duration::ZERO);
        assert!(!lease.round_in_flight());
    }
}
