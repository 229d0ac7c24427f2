//! The node's one clock: the engine's leases and ticks and the
//! connections' lease gate all read it, so they agree on what "now" is.
//!
//! It is the process's monotonic clock, counted from the first use in the
//! process. Built with the `failpoints` feature it can be made to run fast
//! or slow (`set_rate_ppm`), as a drifting hardware clock would, for the
//! robustness suite's clock faults; without the feature it is exactly the
//! monotonic clock.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The process's origin: the monotonic instant and the Unix time (ms)
/// read together at the first use.
static ORIGIN: OnceLock<(Instant, u64)> = OnceLock::new();

fn origin() -> &'static (Instant, u64) {
    ORIGIN.get_or_init(|| {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        (Instant::now(), unix)
    })
}

/// The node's clock (cheap to copy; every copy reads the same time).
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeClock;

impl NodeClock {
    /// Time since the process's origin, as this node's clock counts it.
    pub fn now(self) -> Duration {
        let real = origin().0.elapsed();
        #[cfg(feature = "failpoints")]
        {
            rate::scaled(real)
        }
        #[cfg(not(feature = "failpoints"))]
        {
            real
        }
    }
}

impl NodeClock {
    /// The Unix time (ms) at the clock's zero: with it, a reading of the
    /// clock is a wall-clock time ([`WallClock`]).
    pub fn unix_origin_ms(self) -> u64 {
        origin().1
    }

    /// Now as Unix microseconds (`TIME`), on the same clock.
    pub fn unix_micros(self) -> u64 {
        let micros = u64::try_from(self.now().as_micros()).unwrap_or(u64::MAX);
        self.unix_origin_ms()
            .saturating_mul(1000)
            .saturating_add(micros)
    }

    /// Now as Unix milliseconds: the wall clock read once at the origin,
    /// advanced by this clock (so it never steps back, and runs at the
    /// clock's rate).
    pub fn unix_ms(self) -> u64 {
        WallClock::new(self.unix_origin_ms()).unix_ms(self.now())
    }
}

/// Readings of an engine clock as Unix milliseconds: the Unix time at the
/// clock's zero plus the reading. Expiry times are kept in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallClock {
    unix_origin_ms: u64,
}

impl WallClock {
    /// A wall clock whose zero is at `unix_origin_ms`.
    pub fn new(unix_origin_ms: u64) -> Self {
        Self { unix_origin_ms }
    }

    /// The reading `now` as Unix milliseconds.
    pub fn unix_ms(self, now: Duration) -> u64 {
        self.unix_origin_ms
            .saturating_add(u64::try_from(now.as_millis()).unwrap_or(u64::MAX))
    }
}

impl dr_engine::Clock for NodeClock {
    fn now(&self) -> Duration {
        NodeClock::now(*self)
    }
}

/// Makes the clock run at `ppm` millionths of real time from now on
/// (1 000 000: real time); it stays continuous and monotonic.
#[cfg(feature = "failpoints")]
pub fn set_rate_ppm(ppm: u64) {
    let real = origin().0.elapsed();
    rate::set(real, ppm);
}

/// The clock's rate in millionths of real time.
#[cfg(feature = "failpoints")]
pub fn rate_ppm() -> u64 {
    rate::get()
}

#[cfg(feature = "failpoints")]
mod rate {
    use std::time::Duration;

    use parking_lot::Mutex;

    /// From `real` on, the clock reads `clock + (t - real) * ppm`.
    struct Anchor {
        real: Duration,
        clock: Duration,
        ppm: u64,
    }

    static ANCHOR: Mutex<Anchor> = Mutex::new(Anchor {
        real: Duration::ZERO,
        clock: Duration::ZERO,
        ppm: 1_000_000,
    });

    fn at(anchor: &Anchor, real: Duration) -> Duration {
        let since = real.saturating_sub(anchor.real);
        let scaled_nanos = since.as_nanos() * u128::from(anchor.ppm) / 1_000_000;
        anchor.clock + Duration::from_nanos(u64::try_from(scaled_nanos).unwrap_or(u64::MAX))
    }

    pub(super) fn scaled(real: Duration) -> Duration {
        at(&ANCHOR.lock(), real)
    }

    pub(super) fn set(real: Duration, ppm: u64) {
        let mut anchor = ANCHOR.lock();
        let clock = at(&anchor, real);
        *anchor = Anchor {
            real,
            clock,
            ppm: ppm.clamp(1, 10_000_000),
        };
    }

    pub(super) fn get() -> u64 {
        ANCHOR.lock().ppm
    }
}

/// Engine ticks by the node's clock: how many are due at each wake-up of
/// a real-time interval (at most [`Ticks::MAX_PER_WAKE`], so a clock set
/// fast, or a long stall, cannot flood the engine).
#[derive(Debug)]
pub struct Ticks {
    clock: NodeClock,
    tick: Duration,
    next_at: Duration,
}

impl Ticks {
    /// The most ticks one wake-up fires.
    pub const MAX_PER_WAKE: u32 = 4;

    /// Ticks of `tick`, the first due now.
    pub fn new(clock: NodeClock, tick: Duration) -> Self {
        assert!(!tick.is_zero(), "a tick has a length");
        Self {
            clock,
            tick,
            next_at: clock.now(),
        }
    }

    /// The ticks due now.
    pub fn due(&mut self) -> u32 {
        let now = self.clock.now();
        let mut count = 0;
        while self.next_at <= now && count < Self::MAX_PER_WAKE {
            self.next_at += self.tick;
            count += 1;
        }
        if self.next_at <= now {
            // Far behind (a stall): start afresh rather than catch up.
            self.next_at = now + self.tick;
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_follow_the_clock_and_are_bounded() {
        let clock = NodeClock;
        let mut ticks = Ticks::new(clock, Duration::from_millis(5));
        assert_eq!(ticks.due(), 1, "the first is due at once");
        assert_eq!(ticks.due(), 0, "the next not yet");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(ticks.due(), Ticks::MAX_PER_WAKE, "bounded after a stall");
        assert_eq!(ticks.due(), 0, "and not caught up afterwards");
        let a = clock.now();
        assert!(clock.now() >= a, "monotonic");
    }
}
