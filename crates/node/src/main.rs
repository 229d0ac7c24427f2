//! `drkv`: the dr key-value server and its tools.
//!
//! - `drkv server`: one node (flags, a TOML file, or just `--data-dir` to
//!   restart a node that ran before).
//! - `drkv dev`: a local 3-node cluster (three `drkv server` processes)
//!   under `./drkv-data`, until Ctrl-C.
//! - `drkv ctl`: the admin API from the command line (and `ctl restore`:
//!   a backup into a new data directory, offline).
//! - `drkv bench`: a closed-loop load generator.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
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
    },
    /// Talk to a node's admin API.
    Ctl {
        /// The node's admin address.
        #[arg(long, default_value = "127.0.0.1:7201")]
        admin: SocketAddr,
        #[command(subcommand)]
        action: CtlAction,
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
}

#[derive(Subcommand)]
enum CtlAction {
    /// The node's state (JSON).
    Status,
    /// Members and their addresses.
    Members,
    /// Add a node as a learner (start it with `drkv server --join`).
    AddLearner {
        /// Its id.
        id: u64,
        /// Its Raft address.
        peer_addr: SocketAddr,
    },
    /// Make a learner a voter.
    Promote {
        /// Its id.
        id: u64,
    },
    /// Remove a member.
    Remove {
        /// Its id.
        id: u64,
    },
    /// Hand leadership to a voter.
    TransferLeader {
        /// Its id.
        id: u64,
    },
    /// Snapshot the node's state machine now.
    Snapshot,
    /// Back the node's store up.
    Backup {
        /// Where (default: beside the data directory, `<data-dir>-backups`).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Backups to keep.
        #[arg(long)]
        keep: Option<usize>,
    },
    /// Restore a backup into a new, empty data directory (offline: no
    /// node needed; start a server on the directory afterwards).
    Restore {
        /// The backup directory (`backup` printed it).
        #[arg(long)]
        backup_dir: PathBuf,
        /// The new node's data directory (must not exist or be empty).
        #[arg(long)]
        data_dir: PathBuf,
        /// Which backup (default: the newest).
        #[arg(long)]
        backup_id: Option<u32>,
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
        } => dev(&dir, base_port, read_lease, cli.log_level.as_deref()),
        Commands::Ctl { admin, action } => ctl(admin, action),
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

fn runtime() -> Result<tokio::runtime::Runtime, String> {
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
    if let Some(timeout) = args.partial_request_timeout_ms {
        config.partial_request_timeout_ms = timeout;
    }
    Ok(config)
}

fn server(args: ServerArgs) -> Result<(), String> {
    let config = node_config(args)?;
    runtime()?.block_on(async move {
        let node = RunningNode::start(config)
            .await
            .map_err(|e| e.to_string())?;
        wait_for_stop_signal().await?;
        tracing::info!("stopping: finishing in-flight requests");
        node.shutdown().await;
        Ok(())
    })
}

async fn wait_for_stop_signal() -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}

fn dev(
    dir: &Path,
    base_port: u16,
    read_lease: bool,
    log_level: Option<&str>,
) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let port = |offset: u16| -> Result<u16, String> {
        base_port
            .checked_add(offset)
            .ok_or_else(|| "--base-port is too large".to_owned())
    };
    let mut peers = Vec::new();
    for id in 1..=3u16 {
        peers.push(format!("{id}=127.0.0.1:{}", port(100 + id)?));
    }
    let peers = peers.join(",");
    let mut children = Vec::new();
    for id in 1..=3u16 {
        let mut command = std::process::Command::new(&exe);
        if let Some(level) = log_level {
            command.env("DRKV_LOG", level);
        }
        command
            .args(["server", "--id", &id.to_string()])
            .arg("--data-dir")
            .arg(dir.join(format!("node-{id}")))
            .args(["--client-addr", &format!("127.0.0.1:{}", port(id)?)])
            .args(["--peer-addr", &format!("127.0.0.1:{}", port(100 + id)?)])
            .args(["--admin-addr", &format!("127.0.0.1:{}", port(200 + id)?)])
            .args(["--peers", &peers]);
        if read_lease {
            command.arg("--read-lease");
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start node {id}: {e}"))?;
        children.push(child);
    }
    println!("drkv dev: 3 nodes, data under {}", dir.display());
    for id in 1..=3u16 {
        println!(
            "  node {id}: clients 127.0.0.1:{}  admin http://127.0.0.1:{}/status",
            port(id)?,
            port(200 + id)?
        );
    }
    println!(
        "try:  redis-cli -p {} set hello world && redis-cli -p {} get hello",
        port(1)?,
        port(2)?
    );
    println!("      drkv ctl --admin 127.0.0.1:{} status", port(201)?);
    println!("Ctrl-C stops the cluster.");
    let result = runtime()?.block_on(async {
        let exited = tokio::task::spawn_blocking(move || {
            // Poll: any node that exits on its own ends the session.
            loop {
                for (index, child) in children.iter_mut().enumerate() {
                    if let Ok(Some(status)) = child.try_wait() {
                        return (children, Some((index + 1, status)));
                    }
                }
                if STOP.load(std::sync::atomic::Ordering::Relaxed) {
                    return (children, None);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let signal = tokio::spawn(async {
            let _ = wait_for_stop_signal().await;
            STOP.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let (children, died) = exited.await.map_err(|e| e.to_string())?;
        signal.abort();
        Ok::<_, String>((children, died))
    });
    let (mut children, died) = result?;
    for child in &children {
        // SIGTERM: each node finishes in-flight requests and stops.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    for child in &mut children {
        let _ = child.wait();
    }
    match died {
        Some((id, status)) => Err(format!(
            "node {id} exited ({status}); the cluster was stopped"
        )),
        None => {
            println!("drkv dev: stopped");
            Ok(())
        }
    }
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// One HTTP/1.1 request with `Connection: close` (the admin API is local
/// and tiny; one request per process needs no client library).
fn http(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: Option<String>,
) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(3))
        .map_err(|e| format!("cannot reach the admin API at {admin}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let body = body.unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("a malformed HTTP response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or("a malformed HTTP status line")?;
    Ok((status, body.to_owned()))
}

fn ctl(admin: SocketAddr, action: CtlAction) -> Result<(), String> {
    let (method, path, body) = match &action {
        // Offline: no node to ask.
        CtlAction::Restore {
            backup_dir,
            data_dir,
            backup_id,
        } => return restore(backup_dir, data_dir, *backup_id),
        CtlAction::Status | CtlAction::Members => ("GET", "/status".to_owned(), None),
        CtlAction::AddLearner { id, peer_addr } => (
            "POST",
            "/members".to_owned(),
            Some(serde_json::json!({ "id": id, "peer_addr": peer_addr.to_string() }).to_string()),
        ),
        CtlAction::Promote { id } => ("POST", format!("/members/{id}/promote"), None),
        CtlAction::Remove { id } => ("DELETE", format!("/members/{id}"), None),
        CtlAction::TransferLeader { id } => ("POST", format!("/transfer-leader/{id}"), None),
        CtlAction::Snapshot => ("POST", "/snapshot".to_owned(), None),
        CtlAction::Backup { dir, keep } => (
            "POST",
            "/backup".to_owned(),
            Some(serde_json::json!({ "dir": dir, "keep": keep }).to_string()),
        ),
    };
    let (status, body) = http(admin, method, &path, body)?;
    let value: serde_json::Value =
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    let shown = match action {
        CtlAction::Members => serde_json::json!({
            "voters": value["voters"], "learners": value["learners"], "leader": value["leader"], "members": value["members"],
        }),
        _ => value,
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&shown).map_err(|e| e.to_string())?
    );
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("the node answered HTTP {status}"))
    }
}

fn restore(backup_dir: &Path, data_dir: &Path, backup_id: Option<u32>) -> Result<(), String> {
    let store = data_dir.join("store");
    std::fs::create_dir_all(&store)
        .map_err(|e| format!("cannot create {}: {e}", store.display()))?;
    dr_storage::RocksStorage::restore(
        backup_dir,
        backup_id,
        &store,
        dr_storage::StateMachine::DataFamily,
    )
    .map_err(|e| e.to_string())?;
    println!(
        "restored into {}; start it with: drkv server --data-dir {} --id <id> [--peers ...]",
        data_dir.display(),
        data_dir.display()
    );
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
