//! `cargo xtask bench ab A B`: two `drkv` builds measured side by side.
//!
//! On a shared two-core machine a row's throughput and CPU per operation
//! drift by a fifth from one minute to the next, so two builds measured
//! one after the other compare the minutes, not the builds. Here each
//! pair starts a fresh cluster of each build in turn, alternating which
//! goes first (A B, B A, A B, ...), writes every key once (the cluster
//! benchmark's preload), measures one row of the same load, and stops
//! it; the table gives every row and each build's medians, and B's
//! medians as a ratio of A's.

use std::path::{Path, PathBuf};

use crate::cluster::{self, Load, Row};

/// Client ports from here (clear of `bench cluster`'s and `dev`'s).
const BASE_PORT: u16 = 19_000;
/// The most pairs one run measures.
const PAIRS_MAX: u32 = 20;

const USAGE: &str = "usage: cargo xtask bench ab A B [--connections 1|16|64|256] [--pairs N] \
                     [--via all|leader] [--write-percent 100|10|0]";

/// What to compare, and under which load.
#[derive(Debug, PartialEq)]
struct Comparison {
    builds: [PathBuf; 2],
    connections: &'static str,
    pairs: u32,
    leader_only: bool,
    write_percent: &'static str,
}

fn parse(args: &[String]) -> Result<Comparison, String> {
    let [a, b, flags @ ..] = args else {
        return Err(USAGE.into());
    };
    let mut comparison = Comparison {
        builds: [PathBuf::from(a), PathBuf::from(b)],
        connections: "64",
        pairs: 3,
        leader_only: false,
        write_percent: "100",
    };
    let mut flags = flags.iter();
    while let Some(flag) = flags.next() {
        let value = flags.next().map(String::as_str);
        match (flag.as_str(), value) {
            ("--connections", Some(n)) => {
                comparison.connections = ["1", "16", "64", "256"]
                    .into_iter()
                    .find(|allowed| *allowed == n)
                    .ok_or_else(|| format!("--connections {n}: one of 1, 16, 64, 256"))?;
            }
            ("--pairs", Some(n)) => {
                comparison.pairs = n
                    .parse()
                    .ok()
                    .filter(|pairs| (1..=PAIRS_MAX).contains(pairs))
                    .ok_or_else(|| format!("--pairs {n}: 1 to {PAIRS_MAX}"))?;
            }
            ("--via", Some("all")) => comparison.leader_only = false,
            ("--via", Some("leader")) => comparison.leader_only = true,
            ("--write-percent", Some(n)) => {
                comparison.write_percent = ["100", "10", "0"]
                    .into_iter()
                    .find(|allowed| *allowed == n)
                    .ok_or_else(|| format!("--write-percent {n}: one of 100, 10, 0"))?;
            }
            _ => return Err(format!("{flag}: {USAGE}")),
        }
    }
    for build in &comparison.builds {
        if !build.is_file() {
            return Err(format!("{}: no such drkv binary", build.display()));
        }
    }
    Ok(comparison)
}

/// `cargo xtask bench ab ARGS`.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let comparison = parse(args)?;
    let mut measured: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for pair in 0..comparison.pairs {
        let order = if pair % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let row = measure(&comparison.builds[which], &comparison)?;
            let ops = row.result["ops_per_second"].as_f64().unwrap_or(0.0);
            measured[which].push((ops, row.cpu_us_per_op));
        }
    }
    println!();
    for (name, (build, rows)) in ["A", "B"]
        .into_iter()
        .zip(comparison.builds.iter().zip(&measured))
    {
        let all: Vec<String> = rows
            .iter()
            .map(|(ops, cpu)| format!("{ops:.0} ops/s {cpu:.1} µs"))
            .collect();
        let (ops, cpu) = medians(rows);
        println!(
            "{name} {}: {}; medians {ops:.0} ops/s, {cpu:.1} µs CPU/op",
            build.display(),
            all.join(", ")
        );
    }
    let ((ops_a, cpu_a), (ops_b, cpu_b)) = (medians(&measured[0]), medians(&measured[1]));
    println!(
        "B / A: ops/s {:.3}x, CPU per op {:.3}x",
        ops_b / ops_a,
        cpu_b / cpu_a
    );
    Ok(())
}

/// One fresh cluster of `drkv`, preloaded, and one measured row.
fn measure(drkv: &Path, comparison: &Comparison) -> Result<Row, String> {
    let (cluster, leader) = cluster::start_cluster_at(drkv, false, None, BASE_PORT)?;
    let pids = cluster.node_pids()?;
    let targets = if comparison.leader_only {
        format!("127.0.0.1:{}", BASE_PORT + leader)
    } else {
        (1..=3)
            .map(|id| format!("127.0.0.1:{}", BASE_PORT + id))
            .collect::<Vec<_>>()
            .join(",")
    };
    let load = Load {
        mix: "ab",
        write_percent: comparison.write_percent,
        connections: comparison.connections,
        preload: true,
        workload: "set",
        protocol: "resp",
    };
    let name = if comparison.leader_only {
        "leader"
    } else {
        "all 3"
    };
    cluster::run_load(drkv, &pids, &load, &targets, name)
}

/// The medians of ops/s and CPU per op (each sorted on its own).
fn medians(rows: &[(f64, f64)]) -> (f64, f64) {
    fn median(mut values: Vec<f64>) -> f64 {
        values.sort_by(f64::total_cmp);
        match values.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => values[n / 2],
            n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        }
    }
    (
        median(rows.iter().map(|row| row.0).collect()),
        median(rows.iter().map(|row| row.1).collect()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn medians_sort_each_column_and_average_an_even_middle() {
        let rows = [(30.0, 50.0), (10.0, 40.0), (20.0, 60.0)];
        assert_eq!(medians(&rows), (20.0, 50.0));
        assert_eq!(medians(&rows[..2]), (20.0, 45.0));
        assert!(medians(&[]).0.is_nan());
    }

    #[test]
    fn flags_are_checked_and_builds_must_exist() {
        // This test's own executable stands in for two drkv builds.
        let exe = std::env::current_exe().expect("the test's path");
        let exe = exe.display();
        let parsed = parse(&args(&format!(
            "{exe} {exe} --connections 256 --pairs 5 --via leader --write-percent 10"
        )))
        .expect("valid flags");
        assert_eq!(
            (
                parsed.connections,
                parsed.pairs,
                parsed.leader_only,
                parsed.write_percent
            ),
            ("256", 5, true, "10")
        );
        let defaults = parse(&args(&format!("{exe} {exe}"))).expect("defaults");
        assert_eq!((defaults.connections, defaults.pairs), ("64", 3));
        for bad in [
            "--connections 65",
            "--pairs 0",
            "--pairs 21",
            "--via some",
            "--write-percent 50",
            "--pairs",
            "--color red",
        ] {
            assert!(
                parse(&args(&format!("{exe} {exe} {bad}"))).is_err(),
                "{bad}"
            );
        }
        assert!(parse(&args(&format!("{exe}"))).is_err(), "one build");
        assert!(parse(&args(&format!("{exe} /no/such/drkv"))).is_err());
    }
}
