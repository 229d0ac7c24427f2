//! # dr-sim: deterministic simulation of a dr cluster
//!
//! Runs the code that ships — dr-engine's replica engine with drkv's
//! key-value state machine and command parser — as a 3-node cluster in one
//! thread on virtual time ([`cluster`]). Storage is in memory and loses what
//! was not synced at a crash ([`store`]; on half the seeds also the applies
//! since the state machine was last flushed, as `RocksStorage` loses the
//! applies it keeps behind), the network drops, duplicates,
//! delays and partitions, and every node has its own clock whose rate
//! drifts. Everything random comes from one seed, so a run is a pure
//! function of its seed and a failure replays exactly with
//! `cargo xtask sim --seed N`.
//!
//! ## What a run does
//!
//! Six clients send `GET`, `MGET`, `SET` (with `NX`, `XX`, `GET`),
//! `SETNX`, `DEL`, `INCR`, `APPEND`, `CAS` and `MSET` to any node for six
//! virtual seconds (1.5 in the CI tests) while faults are injected:
//! crashes between turns and inside synced writes, pauses, partitions (one
//! way, both ways, the leader's), loss, duplication and delay, leader
//! transfers, clock rate changes within ±10%, and members (the leader
//! too) removed, wiped and added back. Then the faults stop, and clients
//! run on for a second.
//!
//! ## What it checks
//!
//! After every step: one leader per term, no commit index going back
//! within a node's life, one entry per committed index on every node, and
//! no old leader holding its lease while a newer leader exists. Every 64
//! steps: log matching and leader completeness. At the end: every key read
//! through every node, the members converged, and every key's client
//! history linearizable ([`linearizability`], [`kv_model`], [`history`],
//! which the robustness suite on real processes shares). Production
//! assertions of the engine and the consensus core fire as panics, which
//! the runner reports with the seed.
//!
//! ## What it does not do
//!
//! No real IO or threads (that is what the node's end-to-end tests are
//! for), no TLS or authentication, no connection-side lease reads, three
//! members at most. See `docs/design/testing.md`.
//!
//! ## Example
//!
//! ```
//! let report = dr_sim::run_cluster_seed(7, dr_sim::FAULT_PHASE_SHORT_US).expect("seed 7 passes");
//! assert!(report.answered > 0);
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cluster;
pub mod expiry;
pub mod history;
pub mod kv_model;
pub mod linearizability;
pub mod rng;
pub mod store;

use std::panic::{AssertUnwindSafe, catch_unwind};

/// A failed run: the seed, what broke, and how to replay it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The seed of the run.
    pub seed: u64,
    /// The check that failed, or the panic message.
    pub reason: String,
    /// The run's fault phase (to replay it alike).
    pub fault_us: u64,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = if self.fault_us == FAULT_PHASE_SHORT_US {
            " --short"
        } else {
            ""
        };
        write!(
            f,
            "seed {} failed: {}\n  replay: cargo xtask sim --seed {}{short}",
            self.seed, self.reason, self.seed
        )
    }
}

/// Virtual time with faults in a full run.
pub const FAULT_PHASE_FULL_US: u64 = 6_000_000;
/// Virtual time with faults in a short run (the CI tests).
pub const FAULT_PHASE_SHORT_US: u64 = 1_500_000;

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
    let settings_fault_us = settings.fault_us;
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        cluster::SimCluster::new(seed, settings).run()
    }));
    let reason = match outcome {
        Ok(Ok(report)) => return Ok(report),
        Ok(Err(reason)) => reason,
        Err(panic) => panic_message(panic.as_ref()),
    };
    Err(Failure {
        seed,
        reason,
        fault_us: settings_fault_us,
    })
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
