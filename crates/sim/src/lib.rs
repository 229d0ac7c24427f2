//! # dr-sim: deterministic simulation of dr clusters
//!
//! Two simulations share this crate while the first is retired:
//! [`cluster`] runs the code that ships — dr-engine's replica engine with
//! drkv's key-value state machine and command parser — over in-memory
//! storage that loses unsynced writes at a crash ([`store`]), an
//! in-memory network and drifting virtual clocks, with crashes inside
//! synced writes, membership changes (removing the leader too) and leader
//! transfers, checks Raft's safety properties and the lease's clock bound
//! at every step, and every key's client history against Redis's
//! semantics ([`kv_model`]); the protocol simulation described below
//! drives dr-raft alone.
//!
//! Runs a whole cluster (3 or 5 [`dr_raft::RaftNode`]s over
//! [`dr_raft::MemStorage`]) in one thread on virtual time. Everything
//! random (fault schedule, message latency, which client does what) comes
//! from one seed, so a run is a pure function of its seed and a failure
//! replays exactly with `cargo xtask sim --seed N`.
//!
//! ## What a run does
//!
//! - **Faults** for six virtual seconds (1.5 in the short runs of the
//!   tests): messages dropped, duplicated and
//!   delayed (hence reordered); partitions that are symmetric, asymmetric
//!   or isolate one node; crashes and restarts, including crashes in the
//!   middle of a ready (before it is persisted, or after persisting but
//!   before sending), where a node loses exactly what the ready contract
//!   says it may; process pauses of up to 400 ms (mostly the leader's:
//!   ticks are missed, and on resuming its clients get in before what
//!   its peers sent meanwhile); leader transfers. Nodes snapshot and compact their logs
//!   every few dozen entries, so lagging nodes catch up by snapshot.
//! - **Clients** write and read a few keys of a register store, through
//!   whichever node they believe leads; reads go through ReadIndex, or,
//!   for half the reads a leader with a live lease gets, on its lease
//!   (runs with check-quorum turn `lease_reads` on; the lease is timed on
//!   virtual time as drkv times it on the monotonic clock).
//! - **Healing**: faults stop, crashed nodes restart; within four virtual
//!   seconds a new write must commit (liveness), and after a quiet second
//!   every node must hold the same state.
//!
//! ## What it checks
//!
//! After every event: election safety (one leader per term) and that no
//! node's commit index goes backwards. Every 16 events and at the end: log
//! matching between every pair of nodes, and leader completeness (a leader
//! holds every entry committed before its term began). On every apply:
//! state machine safety (every node applies the same entry at an index).
//! At the end: convergence, every acknowledged write still committed at
//! its index and applied everywhere, and **linearizability** of the client history
//! with [`linearizability::check`], per key. The consensus core's own
//! production assertions fire as panics, which the runner reports with the
//! seed.
//!
//! ## What it does not do
//!
//! No real IO or threads (that is what the node's end-to-end tests are
//! for), and no membership changes during runs yet: those are covered by
//! the scenario tests of dr-raft.
//!
//! ## Example
//!
//! ```
//! let stats = dr_sim::run_seed(7).expect("seed 7 passes");
//! assert!(stats.writes_acked > 0);
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cluster;
pub mod kv_model;
pub mod linearizability;
pub mod rng;
pub mod store;
mod world;

use std::panic::{AssertUnwindSafe, catch_unwind};

pub use world::RunStats;

/// Seeds that once found a bug, replayed (full length) by the tests
/// forever.
///
/// - 1, 4, 19: a follower stalled for good once every append of a full
///   replicate window was lost; heartbeat answers now free a slot.
pub const REGRESSION_SEEDS: &[u64] = &[1, 4, 19];

/// A failed run: the seed, what broke, and how to replay it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The seed of the run.
    pub seed: u64,
    /// The check that failed, or the panic message.
    pub reason: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} failed: {}\n  replay: cargo xtask sim --seed {}",
            self.seed, self.reason, self.seed
        )
    }
}

/// Virtual time with faults in a full run.
pub const FAULT_PHASE_FULL_US: u64 = 6_000_000;
/// Virtual time with faults in a short run (the CI tests).
pub const FAULT_PHASE_SHORT_US: u64 = 1_500_000;

/// Runs the full simulation for `seed`: its statistics, or the failure.
pub fn run_seed(seed: u64) -> Result<RunStats, Failure> {
    run_seed_for(seed, FAULT_PHASE_FULL_US)
}

/// Runs the shipped engine and state machine for `seed` with
/// `fault_us` of faults before healing (see [`cluster`]).
pub fn run_cluster_seed(seed: u64, fault_us: u64) -> Result<cluster::Report, Failure> {
    run_cluster_with(seed, cluster::Settings::for_seed(seed, fault_us))
}

/// Runs the cluster simulation for `seed` with `settings`.
pub fn run_cluster_with(
    seed: u64,
    settings: cluster::Settings,
) -> Result<cluster::Report, Failure> {
    quiet_crashes();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        cluster::SimCluster::new(seed, settings).run()
    }));
    let reason = match outcome {
        Ok(Ok(report)) => return Ok(report),
        Ok(Err(reason)) => reason,
        Err(panic) => panic_message(panic.as_ref()),
    };
    Err(Failure { seed, reason })
}

/// A simulated crash inside a synced write unwinds as a panic the
/// simulator catches; the panic hook stays quiet about those.
fn quiet_crashes() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<store::Crashed>() {
                previous(info);
            }
        }));
    });
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into());
    format!("panic: {message}")
}

/// Runs `seed` with `fault_phase_us` of faults before healing.
pub fn run_seed_for(seed: u64, fault_phase_us: u64) -> Result<RunStats, Failure> {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let world = world::World::new(seed, fault_phase_us);
        debug_assert_eq!((world.seed(), world.history_len()), (seed, 0));
        world.run()
    }));
    let reason = match outcome {
        Ok(Ok(stats)) => return Ok(stats),
        Ok(Err(reason)) => reason,
        Err(panic) => panic_message(panic.as_ref()),
    };
    Err(Failure { seed, reason })
}
