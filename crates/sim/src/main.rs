//! `dr-sim`: runs simulation seeds from the command line (through
//! `cargo xtask sim`).
//!
//! Each seed runs twice over: the consensus core under its own driver
//! (the protocol simulation), and the shipped engine with drkv's
//! key-value state machine (the cluster simulation).
//!
//! ```text
//! dr-sim --seed N                 run one seed, printing the cluster's client history
//! dr-sim --seeds N [--start-seed S]  run N seeds from S (default 0)
//! ```

use std::process::ExitCode;
use std::time::Instant;

fn parse(args: &[String]) -> Result<(u64, u64), String> {
    let mut seeds = None;
    let mut start = 0;
    let mut iter = args.iter();
    while let Some(flag) = iter.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let raw = iter.next().ok_or(format!("{name} needs a number"))?;
            raw.parse()
                .map_err(|_| format!("{name} needs a number, not {raw:?}"))
        };
        match flag.as_str() {
            "--seed" => {
                start = value("--seed")?;
                seeds = Some(1);
            }
            "--seeds" => seeds = Some(value("--seeds")?),
            "--start-seed" => start = value("--start-seed")?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok((start, seeds.unwrap_or(100)))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (start, count) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(error) => {
            eprintln!("dr-sim: {error}\nusage: dr-sim --seed N | --seeds N [--start-seed S]");
            return ExitCode::from(2);
        }
    };
    // Panics are reported with their seed; the default hook's message
    // would only repeat them.
    std::panic::set_hook(Box::new(|_| {}));
    let began = Instant::now();
    let mut failures = 0u64;
    let mut totals = dr_sim::RunStats::default();
    let mut cluster_failures = 0u64;
    let mut cluster = dr_sim::cluster::Report::default();
    for seed in start..start.saturating_add(count) {
        match dr_sim::run_cluster_seed(seed, dr_sim::FAULT_PHASE_FULL_US) {
            Ok(report) => {
                if count == 1 {
                    for line in &report.history {
                        println!("{line}");
                    }
                }
                cluster.answered += report.answered;
                cluster.uncertain += report.uncertain;
                cluster.refused += report.refused;
                cluster.crashes += report.crashes;
                cluster.pauses += report.pauses;
                cluster.partitions += report.partitions;
                cluster.transfers += report.transfers;
                cluster.crashes_in_writes += report.crashes_in_writes;
                cluster.removals += report.removals;
                cluster.leader_removals += report.leader_removals;
                cluster.snapshots_installed += report.snapshots_installed;
            }
            Err(failure) => {
                cluster_failures += 1;
                eprintln!("cluster simulation: {failure}");
            }
        }
        match dr_sim::run_seed(seed) {
            Ok(stats) => {
                totals.events += stats.events;
                totals.writes_acked += stats.writes_acked;
                totals.reads_answered += stats.reads_answered;
                totals.lease_reads += stats.lease_reads;
                totals.crashes += stats.crashes;
                totals.snapshots_installed += stats.snapshots_installed;
                if count == 1 {
                    println!("seed {seed}: {stats:?}");
                }
            }
            Err(failure) => {
                failures += 1;
                eprintln!("{failure}");
            }
        }
    }
    println!(
        "dr-sim: {count} seeds from {start}: {} passed, {failures} failed in {:.1} s ({} events, {} writes acked, {} reads ({} on a lease), {} crashes, {} snapshots installed)",
        count - failures,
        began.elapsed().as_secs_f64(),
        totals.events,
        totals.writes_acked,
        totals.reads_answered,
        totals.lease_reads,
        totals.crashes,
        totals.snapshots_installed
    );
    println!(
        "dr-sim cluster: {count} seeds from {start}: {} passed, {cluster_failures} failed ({} commands answered, {} uncertain, {} refused as not done; {} crashes, {} inside a synced write; {} pauses, {} partitions, {} leader transfers, {} members removed and added back ({} of them leaders), {} snapshots installed)",
        count - cluster_failures,
        cluster.answered,
        cluster.uncertain,
        cluster.refused,
        cluster.crashes,
        cluster.crashes_in_writes,
        cluster.pauses,
        cluster.partitions,
        cluster.transfers,
        cluster.removals,
        cluster.leader_removals,
        cluster.snapshots_installed
    );
    println!(
        "dr-sim: both simulations in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    failures += cluster_failures;
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
