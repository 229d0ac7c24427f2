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
