//! # dr-robustness: drkv's shipped binary under faults, checked from outside
//!
//! Where `dr-sim` proves the engine in virtual time, this runs release
//! `drkv` processes on real sockets and a real disk, the way etcd's
//! robustness tests and Jepsen do. Each run:
//!
//! 1. starts a 3- (or 5-) node cluster, each node in its own network
//!    namespace when running as root (see [`net`]), else on loopback;
//! 2. runs concurrent Redis clients ([`clients`]: `GET`, `MGET`, `SET` with
//!    `NX`/`XX`/`GET`, `SETNX`, `DEL`, `INCR`, `APPEND`, `CAS`, `MSET` on
//!    a few hot keys and some cold ones) against every node, never
//!    resending a command on their own;
//! 3. carries out a fault schedule drawn from the run's seed
//!    ([`nemesis`]): kill -9 of a follower, of the leader, of every node;
//!    SIGSTOP past the election timeout; partitions (the leader isolated,
//!    a follower isolated, the leader deaf one way, the leader in a
//!    minority); packet loss; a slow leader link; leader transfers;
//!    members (the leader too) removed, wiped and added back; and, with
//!    drkv built with its `failpoints` feature, a node's clock running
//!    slow or fast within the lease's bound and disk faults (a synced
//!    write failing with EIO or ENOSPC, torn at a crash, or slow), after
//!    which a node must stop rather than acknowledge, and recover;
//! 4. heals, requires a write to be acknowledged again, then checks
//!    ([`run`]): every key read through every node (all agree), every
//!    node's applied index and key count equal, the whole history
//!    linearizable under Redis's semantics (`dr_sim::kv_model`; an
//!    unanswered write may or may not have happened); then restarts every
//!    node from its disk and checks the same again, so an acknowledged
//!    write lost by a restart fails the run.
//!
//! A run prints its seed, its schedule, what each fault hit, the command
//! count and the verdict; a failed run keeps its directory (node logs,
//! data, `history.json`) and prints how to run its schedule again (the
//! schedule replays exactly; real timing does not).
//!
//! Non-goals: no fixed network delay (this kernel has no `netem`), no
//! clocks beyond the lease's bound (the simulator covers what breaks
//! then), no TLS or authentication between the suite and the nodes.
//!
//! ## Example
//!
//! ```text
//! cargo xtask robustness --runs 3 --secs 20
//! cargo xtask robustness --seed 42 --runs 1 --nodes 5 --read-mode follower
//! ```

#![forbid(unsafe_code)]

mod clients;
mod cluster;
mod nemesis;
mod net;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;

use crate::nemesis::FaultKind;
use crate::run::{Plan, ReadMode};

/// Runs drkv under faults and checks the clients' history.
#[derive(Parser)]
#[command(name = "dr-robustness")]
struct Args {
    /// The release drkv binary.
    #[arg(long)]
    drkv: PathBuf,
    /// Where runs keep their files (a failed run's stay).
    #[arg(long, default_value = "target/robustness")]
    dir: PathBuf,
    /// Runs, with seeds SEED, SEED+1, ...
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// The first run's seed [default: from the clock, printed].
    #[arg(long)]
    seed: Option<u64>,
    /// Founding members: 3 or 5.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=5))]
    nodes: u64,
    /// Seconds of load with faults per run.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// index (ReadIndex), lease (--read-lease) or follower (reads only
    /// through followers).
    #[arg(long, default_value = "index", value_parser = parse_read_mode)]
    read_mode: ReadMode,
    /// Fault kinds, comma-separated [default: all]: kill, pause,
    /// partition, loss, slow, transfer, membership, clock, disk.
    #[arg(long, value_delimiter = ',', value_parser = FaultKind::parse)]
    faults: Vec<FaultKind>,
    /// Stay on loopback even when namespaces are available.
    #[arg(long)]
    loopback: bool,
    /// Keep every run's directory, passed or not.
    #[arg(long)]
    keep: bool,
    /// Slow the leader's clock to 0.25-0.5x, past the lease's bound: with
    /// `--read-mode lease` the check should then catch stale reads.
    #[arg(long)]
    clock_beyond_bound: bool,
    /// Nodes' `--leader-sync-delay-us` (leaders syncing their own log
    /// lazily) [default: by seed: 2000 for odd seeds, 0 for even].
    #[arg(long)]
    leader_sync_delay_us: Option<u64>,
    /// Nodes' `--write-behind-bytes` [default: by seed: 32 MiB, 4096 or
    /// 0 for `seed / 2 % 3` = 0, 1, 2].
    #[arg(long)]
    write_behind_bytes: Option<usize>,
}

fn parse_read_mode(text: &str) -> Result<ReadMode, String> {
    ReadMode::ALL
        .into_iter()
        .find(|mode| mode.name() == text)
        .ok_or_else(|| format!("unknown read mode {text:?}: index, lease or follower"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let namespaces = if args.loopback {
        println!("network: loopback (--loopback): no partitions, loss or slow links");
        false
    } else if let Some(why) = net::namespaces_unavailable() {
        println!("network: loopback, since {why}: no partitions, loss or slow links");
        false
    } else {
        true
    };
    let faults = if args.faults.is_empty() {
        FaultKind::ALL.to_vec()
    } else {
        args.faults.clone()
    };
    let plan = Plan {
        drkv: args.drkv,
        dir: args.dir,
        nodes: args.nodes,
        secs: args.secs,
        clients: args.clients.max(1),
        read_mode: args.read_mode,
        faults,
        namespaces,
        keep: args.keep,
        clock_beyond_bound: args.clock_beyond_bound,
        leader_sync_delay_us: args.leader_sync_delay_us,
        write_behind_bytes: args.write_behind_bytes,
    };
    let first = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    if args.clock_beyond_bound {
        println!(
            "clocks: the leader's slowed past the lease's bound; in lease mode a failure is the expected outcome"
        );
    }
    let mut failed = Vec::new();
    for seed in first..first.saturating_add(args.runs) {
        match run::run(seed, &plan) {
            Ok(summary) => println!("{summary}\nseed {seed}: passed\n"),
            Err(report) => {
                println!("{report}\nseed {seed}: FAILED\n");
                failed.push(seed);
            }
        }
    }
    if failed.is_empty() {
        println!("robustness: {} runs passed", args.runs);
        ExitCode::SUCCESS
    } else {
        println!(
            "robustness: {} of {} runs failed: seeds {failed:?}",
            failed.len(),
            args.runs
        );
        ExitCode::FAILURE
    }
}
