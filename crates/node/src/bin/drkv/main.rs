//! `drkv`: the dr key-value server and its tools.
//!
//! - `drkv server`: one node (flags, a TOML file, or just `--data-dir` to
//!   restart a node that ran before).
//! - `drkv dev`: a local 3-node cluster (three `drkv server` processes)
//!   under `./drkv-data`, until Ctrl-C.
//! - `drkv ctl`: the admin API from the command line (and `ctl restore`:
//!   a backup into a new data directory, offline).
//! - `drkv certs`: a cluster CA and node certificates; `drkv passwd`: a
//!   client password's hash.
//! - `drkv bench`: a closed-loop load generator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod ctl;
mod dev;
use dr_node::config::{NodeConfig, NodeFlags};
use dr_node::loadgen::{self, LoadConfig, Protocol, Workload};
use dr_node::node::RunningNode;

#[derive(Parser)]
#[command(
    name = "drkv",
    version,
    about = "dr: a Raft-replicated key-value store speaking the Redis protocol"
)]
struct Cli {
    /// Log level or filter (`info`, `debug`, `dr_node=debug`); RUST_LOG also works.
    #[arg(long, global = true, env = "DRKV_LOG")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run one node.
    Server(Box<NodeFlags>),
    /// Run a local 3-node cluster (three processes) until Ctrl-C.
    Dev {
        /// Where the nodes keep their data.
        #[arg(long, default_value = "drkv-data")]
        dir: PathBuf,
        /// Client ports are BASE+1..BASE+3, Raft ports BASE+101.., admin BASE+201...
        #[arg(long, default_value_t = 7000)]
        base_port: u16,
        /// Start the nodes with `--read-lease`.
        #[arg(long)]
        read_lease: bool,
        /// Start the nodes with `--raft-log` (`segments` or `rocksdb`).
        #[arg(long)]
        raft_log: Option<String>,
        /// Peer mutual TLS, client TLS and a password, with throwaway
        /// certificates and password made under the data folder.
        #[arg(long)]
        secure: bool,
    },
    /// Make a cluster CA and TLS files for its nodes (and a client
    /// certificate), for `--tls-*-file`.
    Certs {
        /// Where to write them (must not hold a CA yet).
        #[arg(long)]
        dir: PathBuf,
        /// The node ids to make certificates for.
        #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
        ids: Vec<u64>,
        /// Host names or IP addresses clients use to reach the nodes
        /// (besides localhost and 127.0.0.1); repeat or separate with commas.
        #[arg(long = "host", value_delimiter = ',')]
        hosts: Vec<String>,
    },
    /// Talk to a node's admin API.
    Ctl {
        #[command(flatten)]
        target: ctl::AdminTarget,
        #[command(subcommand)]
        action: ctl::CtlAction,
    },
    /// Drive nodes with a closed-loop load (one command in flight per
    /// connection) and print throughput and latency.
    Bench(BenchArgs),
    /// Hash a client password for the configuration file (`requirepass`,
    /// or a user's `password`): reads the password from the first line
    /// of standard input, prints the salted hash.
    Passwd {
        /// PBKDF2 rounds (more: slower to check, slower to guess).
        #[arg(long, default_value_t = dr_node::auth::HASH_ITERATIONS_DEFAULT)]
        iterations: u32,
    },
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Client ports to spread connections over.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    )]
    targets: Vec<SocketAddr>,
    /// Connections, each with one command in flight.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds to measure.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Percentage of commands that are SET (the rest GET).
    #[arg(long, default_value_t = 100)]
    write_percent: u32,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Write every key once first (so reads hit).
    #[arg(long)]
    preload: bool,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    json: bool,
    /// What a write is: `set`, `set-ex` (SET ... EX ttl-seconds) or
    /// `multi-incr` (MULTI, 10 INCRs, EXEC: one operation).
    #[arg(long, default_value = "set")]
    workload: String,
    /// The time to live of `set-ex` writes, in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_seconds: u32,
    /// What the targets speak: `resp` (drkv, Redis) or `etcd` (etcd
    /// v3's gRPC API at its client URLs: puts and linearizable gets, the
    /// `set` workload only), to put the same load on etcd.
    #[arg(long, default_value = "resp")]
    protocol: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref());
    let result = match cli.command {
        Commands::Server(args) => server(*args),
        Commands::Dev {
            dir,
            base_port,
            read_lease,
            raft_log,
            secure,
        } => dev::dev(&dev::DevOptions {
            dir: &dir,
            base_port,
            read_lease,
            raft_log: raft_log.as_deref(),
            secure,
            log_level: cli.log_level.as_deref(),
        }),
        Commands::Certs { dir, ids, hosts } => dev::certs(&dir, &ids, &hosts),
        Commands::Ctl { target, action } => ctl::ctl(&target, action),
        Commands::Bench(args) => bench(args),
        Commands::Passwd { iterations } => passwd(iterations),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("drkv: {error}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, String> {
    runtime_with(dr_node::config::default_worker_threads())
}

/// A runtime with `workers` worker threads.
pub(crate) fn runtime_with(workers: usize) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn server(flags: NodeFlags) -> Result<(), String> {
    let config = NodeConfig::layered(flags)?;
    // Checked before the runtime starts on its worker count (and again
    // by the node).
    config.validate().map_err(|e| e.to_string())?;
    let runtime = runtime_with(config.worker_threads())?;
    let result = runtime.block_on(async move {
        let node = RunningNode::start(config)
            .await
            .map_err(|e| e.to_string())?;
        wait_for_stop_signal().await?;
        tracing::info!("stopping: finishing in-flight requests");
        node.shutdown().await;
        Ok(())
    });
    // Whatever is left (a half-open admin connection, a peer's socket)
    // does not hold the process.
    runtime.shutdown_timeout(Duration::from_millis(500));
    result
}

pub(crate) async fn wait_for_stop_signal() -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}

fn passwd(iterations: u32) -> Result<(), String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return Err("an empty password: give one on standard input".into());
    }
    let hash = dr_node::auth::PasswordHash::new(password.as_bytes(), iterations)
        .map_err(|e| e.to_string())?;
    println!("{hash}");
    Ok(())
}

fn bench(args: BenchArgs) -> Result<(), String> {
    if args.targets.is_empty()
        || args.connections == 0
        || args.seconds <= 0.0
        || args.write_percent > 100
    {
        return Err(
            "need targets, at least one connection, positive seconds and --write-percent 0..=100"
                .into(),
        );
    }
    let workload = match args.workload.as_str() {
        "set" => Workload::Set,
        "set-ex" => Workload::SetEx {
            seconds: args.ttl_seconds.max(1),
        },
        "multi-incr" => Workload::MultiIncr { incrs: 10 },
        other => {
            return Err(format!(
                "unknown workload {other:?}: set, set-ex or multi-incr"
            ));
        }
    };
    let protocol = match args.protocol.as_str() {
        "resp" => Protocol::Resp,
        "etcd" => Protocol::Etcd,
        other => return Err(format!("unknown protocol {other:?}: resp or etcd")),
    };
    let config = LoadConfig {
        targets: args.targets,
        connections: args.connections,
        duration: Duration::from_secs_f64(args.seconds),
        writes_per_mille: args.write_percent * 10,
        value_bytes: args.value_bytes,
        keys: args.keys.max(1),
        workload,
        protocol,
    };
    runtime()?.block_on(async {
        if args.preload {
            loadgen::preload(&config).await?;
        }
        let report = loadgen::run(&config).await?;
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "connections": config.connections, "write_percent": args.write_percent,
                    "workload": args.workload,
                    "ops": report.ops, "errors": report.errors, "ops_per_second": report.ops_per_second,
                    "p50_us": report.latency_us[0], "p99_us": report.latency_us[1],
                    "p999_us": report.latency_us[2], "max_us": report.latency_us[3],
                })
            );
        } else {
            println!(
                "{} connections, {}% writes: {:.0} ops/s, p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs, {} errors",
                config.connections,
                args.write_percent,
                report.ops_per_second,
                report.latency_us[0],
                report.latency_us[1],
                report.latency_us[2],
                report.latency_us[3],
                report.errors
            );
        }
        Ok(())
    })
}
