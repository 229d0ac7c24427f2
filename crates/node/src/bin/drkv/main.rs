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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod ctl;
mod dev;
use dr_node::loadgen::{self, LoadConfig};
use dr_node::node::{NodeConfig, RunningNode};

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
    Server(Box<ServerArgs>),
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
struct ServerArgs {
    /// A TOML file with the node's settings (the same names as the flags,
    /// with underscores; `peers` as a table of id = "host:port").
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's id (a positive integer, unique in the cluster).
    #[arg(long)]
    id: Option<u64>,
    /// The cluster's id (peers of another cluster are refused).
    #[arg(long)]
    cluster_id: Option<u64>,
    /// Where the node keeps its state.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The Redis-protocol port [default: 127.0.0.1:(7000 + id)].
    #[arg(long)]
    client_addr: Option<SocketAddr>,
    /// The Raft port [default: 127.0.0.1:(7100 + id)].
    #[arg(long)]
    peer_addr: Option<SocketAddr>,
    /// The admin HTTP port [default: 127.0.0.1:(7200 + id)].
    #[arg(long)]
    admin_addr: Option<SocketAddr>,
    /// The founding members' Raft addresses: `1=127.0.0.1:7101,2=...`.
    #[arg(long, value_parser = parse_peers)]
    peers: Option<BTreeMap<u64, SocketAddr>>,
    /// Join a running cluster (after `drkv ctl add-learner`) instead of
    /// founding one; `--peers` then names existing members.
    #[arg(long)]
    join: bool,
    /// Client connections served at once.
    #[arg(long)]
    max_clients: Option<usize>,
    /// The largest client request in bytes.
    #[arg(long)]
    request_bytes_max: Option<usize>,
    /// Snapshot after this many applied entries.
    #[arg(long)]
    snapshot_every: Option<u64>,
    /// Milliseconds a client may take to finish a request it started.
    #[arg(long)]
    partial_request_timeout_ms: Option<u64>,
    /// Serve reads on the leader's lease (no heartbeat round per batch;
    /// assumes clock rates within 25% of each other).
    #[arg(long)]
    read_lease: bool,
    /// The `default` user's password hash (`drkv passwd` makes one):
    /// clients must then `AUTH`.
    #[arg(long)]
    requirepass: Option<String>,
    /// A TOML file of client users (`requirepass`, `[[users]]` with
    /// `name`, `password` hash and `permissions`); replaces the users
    /// the node had.
    #[arg(long)]
    acl_file: Option<PathBuf>,
    /// While no password is set, answer only clients on loopback
    /// [default: true].
    #[arg(long)]
    protected_mode: Option<bool>,
    /// The cluster CA's certificate (PEM). With --tls-cert-file and
    /// --tls-key-file: mutual TLS between peers, TLS on the client port,
    /// HTTPS on the admin port (`drkv certs` makes the files).
    #[arg(long, requires_all = ["tls_cert_file", "tls_key_file"])]
    tls_ca_cert_file: Option<PathBuf>,
    /// This node's certificate (PEM), signed by the cluster CA.
    #[arg(long, requires_all = ["tls_ca_cert_file", "tls_key_file"])]
    tls_cert_file: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, requires_all = ["tls_ca_cert_file", "tls_cert_file"])]
    tls_key_file: Option<PathBuf>,
    /// Clients of the client port must present a certificate signed by
    /// the cluster CA.
    #[arg(long, requires = "tls_ca_cert_file")]
    tls_auth_clients: bool,
    /// A file whose first line is the admin API's bearer token (needed
    /// when the admin port is not on loopback, unless TLS is on).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
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
}

fn parse_peers(text: &str) -> Result<BTreeMap<u64, SocketAddr>, String> {
    text.split(',')
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            let (id, addr) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}' is not id=host:port"))?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| format!("'{id}' is not a node id"))?;
            let addr = addr
                .trim()
                .parse()
                .map_err(|_| format!("'{addr}' is not host:port"))?;
            Ok((id, addr))
        })
        .collect()
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
            secure,
        } => dev::dev(&dev::DevOptions {
            dir: &dir,
            base_port,
            read_lease,
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
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn node_config(args: ServerArgs) -> Result<NodeConfig, String> {
    let mut config = match (&args.config, &args.data_dir) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let mut value: toml::Table =
                toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            // TOML keys are strings: `[peers]` `1 = "..."` is what people write.
            if let Some(dir) = &args.data_dir {
                value.insert(
                    "data_dir".into(),
                    toml::Value::String(dir.display().to_string()),
                );
            }
            let json = serde_json::to_value(&value).map_err(|e| e.to_string())?;
            serde_json::from_value(json).map_err(|e| format!("{}: {e}", path.display()))?
        }
        (None, Some(dir)) => match NodeConfig::load(dir).map_err(|e| e.to_string())? {
            Some(saved) => saved,
            None => {
                let id = args.id.ok_or("--id is needed for a new data directory")?;
                let local = |port: u64| -> Result<SocketAddr, String> {
                    let port = u16::try_from(port).map_err(|_| {
                        format!("--id {id} is too large for the default ports; give the addresses")
                    })?;
                    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
                };
                NodeConfig::new(
                    id,
                    dir.clone(),
                    local(7000 + id)?,
                    local(7100 + id)?,
                    local(7200 + id)?,
                )
            }
        },
        (None, None) => return Err("give --data-dir (and --id for a new node), or --config".into()),
    };
    if let Some(id) = args.id {
        config.id = id;
    }
    if let Some(cluster_id) = args.cluster_id {
        config.cluster_id = cluster_id;
    }
    if let Some(addr) = args.client_addr {
        config.client_addr = addr;
    }
    if let Some(addr) = args.peer_addr {
        config.peer_addr = addr;
    }
    if let Some(addr) = args.admin_addr {
        config.admin_addr = addr;
    }
    if let Some(peers) = args.peers {
        config.peers = peers;
    }
    config.join |= args.join;
    if let Some(max) = args.max_clients {
        config.max_clients = max;
    }
    if let Some(max) = args.request_bytes_max {
        config.request_bytes_max = max;
    }
    if let Some(every) = args.snapshot_every {
        config.snapshot_every = every;
    }
    config.read_lease |= args.read_lease;
    if let Some(path) = &args.acl_file {
        let acl = dr_node::auth::AclFile::load(path).map_err(|e| e.to_string())?;
        config.requirepass = acl.requirepass;
        config.users = acl.users;
    }
    if let Some(hash) = args.requirepass {
        config.requirepass = Some(hash);
    }
    if let Some(protected) = args.protected_mode {
        config.protected_mode = protected;
    }
    let absolute =
        |path: PathBuf| std::path::absolute(&path).map_err(|e| format!("{}: {e}", path.display()));
    if let (Some(ca_cert), Some(cert), Some(key)) =
        (args.tls_ca_cert_file, args.tls_cert_file, args.tls_key_file)
    {
        config.tls = Some(dr_node::tls::NodeTls {
            ca_cert: absolute(ca_cert)?,
            cert: absolute(cert)?,
            key: absolute(key)?,
            auth_clients: args.tls_auth_clients,
        });
    }
    if let Some(path) = args.admin_token_file {
        config.admin_token_file = Some(absolute(path)?);
    }
    if let Some(timeout) = args.partial_request_timeout_ms {
        config.partial_request_timeout_ms = timeout;
    }
    Ok(config)
}

fn server(args: ServerArgs) -> Result<(), String> {
    let config = node_config(args)?;
    let runtime = runtime()?;
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
    let config = LoadConfig {
        targets: args.targets,
        connections: args.connections,
        duration: Duration::from_secs_f64(args.seconds),
        writes_per_mille: args.write_percent * 10,
        value_bytes: args.value_bytes,
        keys: args.keys.max(1),
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
