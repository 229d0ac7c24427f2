//! How long a leader lease lasts.
//!
//! dr-raft says *whether* a leader may serve a lease read
//! (`lease_read_index`), numbers its read rounds and dates them on the
//! clock it is given (`LeaseTracker`). A round that a quorum echoed
//! proves that each of those followers heard from this leader after the
//! round was first sent, and such a follower refuses votes for an
//! election timeout after hearing from its leader, so no rival can win
//! before the round's send time plus that timeout. The engine dates every
//! round by its first sighting, before the round's messages leave.
//!
//! The clock assumption: the leader's clock may run faster than a
//! follower's by at most the margin kept here (a quarter of the promised
//! silence). A leader whose clock runs slower than that bound relative
//! to a follower's may believe in a lease the follower no longer keeps;
//! see `docs/design/consensus.md`.

use std::time::Duration;

/// The lease for a follower election timeout of `election_ticks` ticks of
/// `tick`. A follower's ticks never come faster than `tick` apart and the
/// first may come at once, so it keeps its promise for at least
/// `election_ticks - 1` ticks; a quarter of that is left for clocks
/// running at different rates.
pub fn lease_duration(election_ticks: u32, tick: Duration) -> Duration {
    let promised = tick * election_ticks.saturating_sub(1);
    promised * 3 / 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_lasts_three_quarters_of_the_promised_silence() {
        assert_eq!(
            lease_duration(10, Duration::from_millis(10)),
            Duration::from_micros(67_500)
        );
        assert_eq!(lease_duration(0, Duration::from_millis(10)), Duration::ZERO);
    }
}
