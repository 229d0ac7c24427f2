//! The shipped engine and key-value state machine under faults: seeds
//! run by `cargo test` (split so the test runner can spread them).
//!
//! Every run takes 300 fresh seeds, starting from `DR_SIM_START_SEED` or
//! else from the clock, and prints where it started; a failure names its
//! seed and how to replay it. The seeds that once found a bug run every
//! time.

/// Seeds that found a bug, replayed forever (full length).
///
/// - 0: a forwarded write delivered twice was applied twice.
/// - 75, 105, 210: a proposal at an index whose earlier waiter's entry
///   had been cut left that waiter unanswered.
const REGRESSION_SEEDS: &[u64] = &[0, 75, 105, 210];

/// Seeds that found a bug at the short fault phase, replayed forever.
///
/// - 29942575137: a `SET` and a `DEL` applied in one batch left no key
///   count where two batches left a count of 0: one applied index, two
///   stored states (the key count is now written whenever a batch writes
///   a client key).
const SHORT_REGRESSION_SEEDS: &[u64] = &[29_942_575_137];

/// Seeds found under `Settings::for_seed` as it was on 2026-12-07,
/// replayed with those settings spelled out (short fault phase).
///
/// - 101500 (lease reads, snapshots by log bytes at factor 2, leaders
///   syncing every write): a follower that had just acknowledged its
///   leader's heartbeat took a rival's higher term from the rival's
///   refusal of its own earlier pre-vote, then voted for the rival while
///   the old leader still held its lease (dr-raft now ignores a higher
///   term from a non-leader while in lease).
const SPELLED_OUT_SEEDS: &[(u64, bool, u64, u64)] = &[(101_500, true, 2, 0)];

fn fresh_start() -> u64 {
    let start = std::env::var("DR_SIM_START_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            // Whole minutes, so the parallel halves agree; far from the
            // regression seeds.
            now.map_or(0, |d| d.as_secs() / 60 * 1_000)
        });
    eprintln!("cluster seeds from {start} (DR_SIM_START_SEED={start} replays these)");
    start
}

fn run(seeds: std::ops::Range<u64>) {
    let failures: Vec<String> = seeds
        .filter_map(|seed| dr_sim::run_cluster_seed(seed, dr_sim::FAULT_PHASE_SHORT_US).err())
        .map(|failure| failure.to_string())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A regression seed's settings: the seed's own, with snapshots by
/// entries only and leaders syncing every write, the rules they were
/// found under (replays stay exact).
fn as_found(seed: u64, fault_us: u64) -> dr_sim::cluster::Settings {
    dr_sim::cluster::Settings {
        snapshot_log_factor: 0,
        leader_sync_delay_us: 0,
        ..dr_sim::cluster::Settings::for_seed(seed, fault_us)
    }
}

#[test]
fn regression_seeds_pass() {
    for &seed in REGRESSION_SEEDS {
        let settings = as_found(seed, dr_sim::FAULT_PHASE_FULL_US);
        if let Err(failure) = dr_sim::run_cluster_with(seed, settings) {
            panic!("{failure}");
        }
    }
    for &seed in SHORT_REGRESSION_SEEDS {
        let settings = as_found(seed, dr_sim::FAULT_PHASE_SHORT_US);
        if let Err(failure) = dr_sim::run_cluster_with(seed, settings) {
            panic!("{failure}");
        }
    }
    for &(seed, read_lease, snapshot_log_factor, leader_sync_delay_us) in SPELLED_OUT_SEEDS {
        let settings = dr_sim::cluster::Settings {
            read_lease,
            snapshot_log_factor,
            leader_sync_delay_us,
            ..dr_sim::cluster::Settings::for_seed(seed, dr_sim::FAULT_PHASE_SHORT_US)
        };
        if let Err(failure) = dr_sim::run_cluster_with(seed, settings) {
            panic!("{failure}");
        }
    }
}

#[test]
fn fresh_seeds_first_150() {
    let start = fresh_start();
    run(start..start + 150);
}

#[test]
fn fresh_seeds_second_150() {
    let start = fresh_start() + 150;
    run(start..start + 150);
}

/// Beyond the clock bound the lease is unsafe, and the simulator shows
/// it: with clock rates drifting within ±90% (a leader's clock may run at
/// a fifth of a follower's), runs reach the state where an old leader
/// still holds its lease while a newer leader exists, the state in which
/// its lease reads could miss writes the newer one acknowledged. Within
/// the bound (±10%, every other test here) that state fails the run.
#[test]
fn clocks_beyond_the_bound_are_caught_holding_a_stale_lease() {
    let mut overlapping_steps = 0;
    for seed in 0..200 {
        let mut settings = dr_sim::cluster::Settings::for_seed(seed, dr_sim::FAULT_PHASE_FULL_US);
        settings.read_lease = true;
        settings.drift_ppm = 900_000;
        // Stale reads may or may not show in the history: only the
        // lease state is asserted.
        if let Ok(report) = dr_sim::run_cluster_with(seed, settings) {
            overlapping_steps += report.overlapping_leases;
        }
        if overlapping_steps > 0 {
            return;
        }
    }
    panic!("200 seeds with clocks beyond the bound never showed a stale lease");
}

/// Seeds with leaders syncing their own log lazily do sync lazily (the
/// path the fresh seeds check is really taken), and pass.
#[test]
fn lazily_syncing_leaders_are_exercised() {
    let mut lazy_syncs = 0;
    for seed in 0..12 {
        let mut settings = dr_sim::cluster::Settings::for_seed(seed, dr_sim::FAULT_PHASE_SHORT_US);
        settings.leader_sync_delay_us = 700;
        let report = dr_sim::run_cluster_with(seed, settings).unwrap_or_else(|f| panic!("{f}"));
        lazy_syncs += report.leader_lazy_syncs;
    }
    assert!(lazy_syncs > 100, "{lazy_syncs} lazy syncs in 12 seeds");
}

/// Seeds with applies kept behind lose applies at crashes and apply them
/// again from the log, some rebuilding the state machine from the log's
/// snapshot first (the paths the fresh seeds check are really taken),
/// and pass.
#[test]
fn applies_lost_at_crashes_are_applied_again() {
    let (mut lost, mut rebuilt) = (0, 0);
    for seed in 0..40 {
        let mut settings = dr_sim::cluster::Settings::for_seed(seed, dr_sim::FAULT_PHASE_SHORT_US);
        settings.applies_behind = true;
        let report = dr_sim::run_cluster_with(seed, settings).unwrap_or_else(|f| panic!("{f}"));
        lost += report.applies_lost;
        rebuilt += report.states_rebuilt;
    }
    assert!(
        lost > 20 && rebuilt > 0,
        "{lost} restarts with applies lost, {rebuilt} rebuilt"
    );
}

#[test]
fn a_cluster_run_is_a_function_of_its_seed() {
    let first = dr_sim::run_cluster_seed(42, dr_sim::FAULT_PHASE_SHORT_US).unwrap();
    let again = dr_sim::run_cluster_seed(42, dr_sim::FAULT_PHASE_SHORT_US).unwrap();
    assert_eq!(first, again);
    assert!(first.answered > 50, "{first:?}");
    eprintln!(
        "{:?}",
        dr_sim::cluster::Report {
            history: Vec::new(),
            ..first
        }
    );
}

/// The log-bytes rule spaces a node's own snapshots out beyond what the
/// count of entries alone would take, `snapshot_every_max_factor` still takes
/// them when the log's bytes never reach the factor, and the runs pass
/// either way.
#[test]
fn a_snapshot_log_factor_spaces_snapshots_out() {
    let seed = 3;
    let run = |factor, every_max_factor| {
        let mut settings = dr_sim::cluster::Settings::for_seed(seed, dr_sim::FAULT_PHASE_SHORT_US);
        settings.snapshot_log_factor = factor;
        settings.snapshot_every_max_factor = every_max_factor;
        dr_sim::run_cluster_with(seed, settings)
            .unwrap_or_else(|failure| panic!("{failure}"))
            .snapshots_created
    };
    let entries_only = run(0, 4);
    let spaced = run(8, 4);
    assert!(
        spaced < entries_only,
        "{spaced} snapshots with the factor, {entries_only} without"
    );
    let unreachable = 1 << 40;
    let capped = run(unreachable, 4);
    let uncapped = run(unreachable, u64::MAX);
    assert!(
        uncapped < capped && capped < entries_only,
        "an unreachable factor: {capped} snapshots with the cap, {uncapped} without; \
         {entries_only} by entries only"
    );
}
