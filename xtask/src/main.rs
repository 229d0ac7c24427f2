//! # xtask: the project's automation, in Rust
//!
//! `cargo xtask <command>` (an alias in `.cargo/config.toml`) runs the
//! checks and tools of the workspace, so a developer runs locally exactly
//! what CI runs:
//!
//! - `cargo xtask ci`: prerequisites, formatting, clippy, tests, examples, a short robustness
//!   pass, docs, packaging and
//!   the tidy check, one line per step with its duration; stops at the
//!   first failure with a non-zero exit.
//! - `cargo xtask bench [NAME [FILTER]]`: the criterion benches (all, or
//!   the bench target `NAME`, optionally only benchmarks matching the regex
//!   `FILTER`), then a summary table of throughput and of ratios between
//!   implementations measured in the same run.
//! - `cargo xtask bench cluster`: a 3-node `drkv` cluster under load
//!   (see `cluster.rs`); `cargo xtask dev`: a local cluster to try.
//! - `cargo xtask bench ab A B`: two `drkv` builds side by side, in
//!   alternating fresh clusters (see `ab.rs`).
//! - `cargo xtask sim --seed N` / `--seeds N [--start-seed S]`: the
//!   deterministic cluster simulation (dr-sim), built with optimizations;
//!   exits non-zero if any seed fails, printing each failing seed.
//! - `cargo xtask robustness [ARGS]`: real `drkv` processes under faults
//!   (see `robustness.rs` and the `dr-robustness` crate).
//!
//! Invariant: xtask never changes the source tree; its only writes are
//! cargo's own (`target/`) and, when run as root without libclang, the
//! system package it installs. It is not a library and has no API.

#![forbid(unsafe_code)]

mod ab;
mod bench;
mod ci;
mod cluster;
mod etcd;
mod expiry_bench;
mod process;
mod redis_suite;
mod robustness;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci             everything CI checks: prerequisites, fmt, clippy, tests, examples, a short
                 robustness pass, Redis's own tests, docs, tidy, packaging
  bench [NAME [FILTER]]
                 criterion benches (all, or one bench target such as `simd`, optionally
                 only the benchmarks matching the regex FILTER) and a summary table
  bench cluster [--raft-log segments|rocksdb]
                 a 3-node drkv cluster on loopback under a closed-loop load (1-256
                 connections; writes, reads, 90% reads), redis-benchmark if installed;
                 --raft-log: the nodes' log (default: drkv's)
  bench expiry   a million keys under TTL on a 3-node cluster: load, hold, removal (CPU)
  bench ab A B [--connections 1|16|64|256] [--pairs N] [--via all|leader] [--write-percent 100|10|0]
                 two drkv binaries side by side: fresh preloaded clusters of each in
                 alternating order, one row each, every row and the medians (B / A)
  dev [ARGS]     a local 3-node cluster under ./drkv-data (drkv dev ARGS), until Ctrl-C
  sim --seed N | --seeds N [--start-seed S] [--short]
                 deterministic cluster simulation: one seed, or N seeds from S (default 0);
                 --short: the CI tests' shorter fault phase
  robustness [--runs N] [--seed S] [--nodes 3|5] [--secs T] [--read-mode index|lease|follower]
             [--faults kill,pause,partition,loss,slow,transfer,membership,clock,disk] [--loopback]
                 release drkv processes under faults; the clients' history checked for
                 linearizability, the nodes for convergence (network faults need root)
  redis-suite    Redis 7.0.15's own tests (string, incr, hash, expire, multi, keyspace)
                 against a local cluster; fails on any failure not due to an unserved command
";

/// Runs dr-sim optimized; its own argument parser checks the flags.
fn run_sim(args: &[String]) -> Result<(), String> {
    let mut command = process::cargo();
    command.args(["run", "--quiet", "--release", "--package", "dr-sim", "--"]);
    command.args(args);
    process::run_step("sim", &mut command)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") if args.len() == 1 => ci::run(),
        Some("bench") if args.get(1).map(String::as_str) == Some("cluster") => {
            match args.get(2..).unwrap_or_default() {
                [] => cluster::bench(None),
                [flag, kind] if flag == "--raft-log" => cluster::bench(Some(kind)),
                _ => Err("usage: cargo xtask bench cluster [--raft-log segments|rocksdb]".into()),
            }
        }
        Some("bench") if args.get(1).map(String::as_str) == Some("expiry") => expiry_bench::run(),
        Some("bench") if args.get(1).map(String::as_str) == Some("ab") => ab::run(&args[2..]),
        Some("dev") => cluster::dev(&args[1..]),
        Some("bench") if args.len() <= 3 => bench::run(
            args.get(1).map(String::as_str),
            args.get(2).map(String::as_str),
        ),
        Some("sim") => run_sim(&args[1..]),
        Some("robustness") => robustness::run(robustness::Build::Release, &args[1..]),
        Some("redis-suite") if args.len() == 1 => redis_suite::run(),
        Some("help" | "--help" | "-h") => {
            print!("{USAGE}");
            Ok(())
        }
        _ => Err(format!("unknown or malformed command: {args:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}
