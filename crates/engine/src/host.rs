//! What the engine needs from the host besides the state machine: a way
//! to reach peers, a clock, someone to answer, and someone watching.

use std::time::{Duration, Instant};

use dr_codec::message::{ConfState, LogIndex, Message};

use crate::{EngineError, Response, StateMachine};

/// The engine's way to its peers. Delivery is best effort: Raft
/// retransmits, and the engine's own requests carry deadlines.
///
/// A transport may hold what the engine sends until [`Transport::flush`]
/// (drkv's writes it to the sockets then, on the engine's thread, in one
/// write per peer rather than one wake-up of a writer per message). The
/// engine flushes before it writes its log (so a leader's appends and a
/// follower's forwarded requests leave before its disk write), after it
/// sends a ready's messages, and before a turn ends: nothing it sent
/// waits past the turn that sent it.
pub trait Transport: Send {
    /// Queues `message` for `message.to`; false when it was dropped
    /// (unknown peer, full queue).
    fn send(&mut self, message: Message) -> bool;

    /// Starts sending everything queued since the last flush.
    fn flush(&mut self) {}

    /// The members, or where they are reached, changed: connect to the
    /// members of `conf` (this node aside) and forget the others.
    fn sync_members(&mut self, conf: &ConfState) {
        let _ = conf;
    }
}

/// A monotonic clock: time since an origin of the clock's choosing.
/// Deadlines and the leader lease are measured on it; a simulated clock
/// may run fast or slow.
pub trait Clock: Send {
    /// Now.
    fn now(&self) -> Duration;
}

/// The process's monotonic clock, counted from when it was made.
#[derive(Clone, Copy, Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A clock counting from `origin`.
    pub fn new(origin: Instant) -> Self {
        Self { origin }
    }

    /// The instant its zero stands for.
    pub fn origin(&self) -> Instant {
        self.origin
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// Where one request's answer goes (a channel, a simulated client).
pub trait Responder<M: StateMachine>: Send {
    /// Delivers the answer. Called exactly once per request.
    fn respond(self, result: Result<Response<M>, EngineError>);
}

/// What the engine tells the host while it works, for connections that
/// serve reads themselves and for status pages. Every method has a no-op
/// default.
pub trait Observer: Send {
    /// The leader lease for reads outside the engine: until when (on the
    /// engine's clock) reads at the given index are linearizable without
    /// a round; `None` closes it. Called before each ready's messages
    /// leave, so it closes before leadership can be handed over.
    fn lease(&mut self, lease: Option<(Duration, LogIndex)>) {
        let _ = lease;
    }

    /// The state machine applied up to `index`.
    fn applied(&mut self, index: LogIndex) {
        let _ = index;
    }
}

/// An observer that watches nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;

impl Observer for NoObserver {}
