//! `dr-sim`: runs cluster simulation seeds from the command line (through
//! `cargo xtask sim`).
//!
//! ```text
//! dr-sim --seed N                    run one seed and print its client history
//! dr-sim --seeds N [--start-seed S]  run N seeds from S (default 0)
//! --short                            the CI tests' shorter fault phase
//! ```

use std::process::ExitCode;
use std::time::Instant;

use dr_sim::cluster::Report;

fn parse(args: &[String]) -> Result<(u64, u64, u64), String> {
    let mut seeds = None;
    let mut start = 0;
    let mut fault_us = dr_sim::FAULT_PHASE_FULL_US;
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
            "--short" => fault_us = dr_sim::FAULT_PHASE_SHORT_US,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok((start, seeds.unwrap_or(100), fault_us))
}

fn add(totals: &mut Report, report: &Report) {
    totals.answered += report.answered;
    totals.uncertain += report.uncertain;
    totals.refused += report.refused;
    totals.crashes += report.crashes;
    totals.crashes_in_writes += report.crashes_in_writes;
    totals.pauses += report.pauses;
    totals.partitions += report.partitions;
    totals.transfers += report.transfers;
    totals.removals += report.removals;
    totals.leader_removals += report.leader_removals;
    totals.snapshots_installed += report.snapshots_installed;
    totals.snapshots_created += report.snapshots_created;
    totals.lease_reads += report.lease_reads;
    totals.expiry_reads += report.expiry_reads;
    totals.leader_lazy_syncs += report.leader_lazy_syncs;
    totals.states_ahead_kept += report.states_ahead_kept;
    totals.states_rebuilt += report.states_rebuilt;
    totals.applies_lost += report.applies_lost;
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (start, count, fault_us) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(error) => {
            eprintln!(
                "dr-sim: {error}\nusage: dr-sim --seed N | --seeds N [--start-seed S] [--short]"
            );
            return ExitCode::from(2);
        }
    };
    let began = Instant::now();
    let mut failures = 0u64;
    let mut totals = Report::default();
    for seed in start..start.saturating_add(count) {
        match dr_sim::run_cluster_seed(seed, fault_us) {
            Ok(report) => {
                if count == 1 {
                    for line in &report.history {
                        println!("{line}");
                    }
                }
                add(&mut totals, &report);
            }
            Err(failure) => {
                failures += 1;
                eprintln!("{failure}");
            }
        }
    }
    println!(
        "dr-sim: {count} seeds from {start}: {} passed, {failures} failed in {:.1} s \
         ({} commands answered, {} uncertain, {} refused as not done, {} lease reads, \
         {} reads of expiring keys checked against the serving node's clock; \
         {} crashes, {} inside a synced write; {} pauses, {} partitions, {} leader transfers, \
         {} members removed and added back ({} of them leaders), {} snapshots taken, {} installed; \
         {} lazy leader syncs, {} restarts with the state machine ahead of the log, \
         {} with applies lost, {} of them rebuilt from a snapshot)",
        count - failures,
        began.elapsed().as_secs_f64(),
        totals.answered,
        totals.uncertain,
        totals.refused,
        totals.lease_reads,
        totals.expiry_reads,
        totals.crashes,
        totals.crashes_in_writes,
        totals.pauses,
        totals.partitions,
        totals.transfers,
        totals.removals,
        totals.leader_removals,
        totals.snapshots_created,
        totals.snapshots_installed,
        totals.leader_lazy_syncs,
        totals.states_ahead_kept,
        totals.applies_lost,
        totals.states_rebuilt
    );
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
