//! A node's configuration, in layers: defaults (one `default_*` function
//! each, their single home), then a TOML file (`--config`) or the copy a
//! data directory saved (`drkv.json`), then `drkv server`'s flags
//! ([`NodeFlags`]); [`NodeConfig::layered`] stacks them and
//! [`NodeConfig::validate`] checks the result.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use dr_codec::message::NodeId;
use serde::{Deserialize, Serialize};

use crate::admin::access::AdminAccess;
use crate::auth::{UserConfig, Users};
use crate::connection;
use crate::resp::Limits;
use crate::tls::NodeTls;

/// Everything a node needs to start. Saved in the data directory on first
/// start, so a restart needs nothing but `--data-dir`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id (positive, unique in the cluster).
    pub id: NodeId,
    /// The cluster's id: peers of other clusters are refused.
    #[serde(default = "default_cluster_id")]
    pub cluster_id: u64,
    /// Where the node keeps its state.
    pub data_dir: PathBuf,
    /// The Redis-protocol port.
    pub client_addr: SocketAddr,
    /// The Raft port.
    pub peer_addr: SocketAddr,
    /// The admin HTTP port.
    pub admin_addr: SocketAddr,
    /// The founding members' Raft addresses (this node's may be included).
    #[serde(default)]
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Join an existing cluster (added with `drkv ctl add-learner`)
    /// instead of founding one with `peers`.
    #[serde(default)]
    pub join: bool,
    /// Client connections served at once.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// The largest request a client may send, in bytes.
    #[serde(default = "default_request_bytes_max")]
    pub request_bytes_max: usize,
    /// Snapshot after this many applied entries.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
    /// And only once the log applied since the last snapshot holds this
    /// many times that snapshot's bytes (0: entries only).
    #[serde(default = "default_snapshot_log_factor")]
    pub snapshot_log_factor: u64,
    /// The most keys one `KEYS` command looks at; past it the command
    /// answers an error pointing at `SCAN` (a whole-keyspace walk would
    /// stall the engine thread).
    #[serde(default = "default_keys_max")]
    pub keys_max: usize,
    /// Bytes of recently written records kept in memory in front of
    /// RocksDB for point reads (`GET`, and the old records writes look
    /// up); 0 turns the mirror off. Memory is taken as records are
    /// written, up to this.
    #[serde(default = "default_read_mirror_bytes")]
    pub read_mirror_bytes: usize,
    /// Bytes of applied writes kept in memory only (beside the read
    /// mirror) before a checkpoint writes them to RocksDB in one sorted
    /// batch, on a thread of its own; the Raft log replays what a crash
    /// loses (`dr_storage::WRITE_BEHIND_BYTES_DEFAULT` by default, 32 MiB;
    /// 0: every apply writes RocksDB). Used with the segmented log only.
    #[serde(default = "default_write_behind_bytes")]
    pub write_behind_bytes: usize,
    /// As leader, sync the log at the latest this many microseconds
    /// after the oldest write made without a sync; the followers' durable
    /// copies commit entries meanwhile (0: sync every write).
    #[serde(default = "default_leader_sync_delay_us")]
    pub leader_sync_delay_us: u64,
    /// Serve reads on the leader's lease, without a heartbeat round per
    /// batch of reads, while a quorum confirmed the leader within the last
    /// three quarters of a follower's election timeout. Linearizable as
    /// long as the nodes' clocks run at rates within a quarter of each
    /// other (a process pause only shortens the lease: it is measured by
    /// the monotonic clock) and the leader's machine is not suspended
    /// while it leads (Linux's monotonic clock stops then). Off by
    /// default: ReadIndex assumes nothing about clocks.
    #[serde(default)]
    pub read_lease: bool,
    /// Where a new data directory keeps its Raft log: dr's segmented
    /// files (the default) or RocksDB's column family. An existing
    /// directory keeps the log it was made with.
    #[serde(default)]
    pub raft_log: RaftLog,
    /// Milliseconds between Raft ticks (elections after 10-20 ticks).
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// Threads serving client connections, the peer transport and the
    /// admin port (the engine has its own thread besides). Defaults to
    /// the machine's cores at each start (`None`). Nodes sharing a
    /// machine spend less CPU per write splitting the cores between them,
    /// but then a node that takes all the load (reads on the leader's
    /// lease) has only its share (docs/BENCHMARKS.md "Forwarding off the
    /// engine thread").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<usize>,
    /// Milliseconds a client may take to send the rest of a request it
    /// started (slow clients holding a connection are dropped).
    #[serde(default = "default_partial_request_timeout_ms")]
    pub partial_request_timeout_ms: u64,
    /// The `default` user's password, as a hash from `drkv passwd`
    /// (`AUTH password`). With it or any user configured, every client
    /// must authenticate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requirepass: Option<String>,
    /// Named users (`AUTH user password`), each with a password hash and
    /// permissions (`read`, `write`, `admin`, `all`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserConfig>,
    /// With no password configured, answer only clients on loopback
    /// (Redis's protected mode). On by default.
    #[serde(default = "default_protected_mode")]
    pub protected_mode: bool,
    /// TLS files: with them peers use mutual TLS (a peer without a
    /// certificate of the cluster CA is refused), the client port speaks
    /// TLS and the admin port HTTPS. Every member must agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<NodeTls>,
    /// A file whose first line is the admin API's bearer token. Needed
    /// (or TLS client certificates) when the admin port is not on
    /// loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
}

fn default_cluster_id() -> u64 {
    1
}
fn default_max_clients() -> usize {
    10_000
}
fn default_request_bytes_max() -> usize {
    Limits::default().request_bytes_max
}
/// Where a node keeps its Raft log (`dr_storage::LogKind`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RaftLog {
    /// dr's segmented log files beside RocksDB.
    #[default]
    Segments,
    /// RocksDB's `raft_log` column family.
    Rocksdb,
}

impl From<RaftLog> for dr_storage::LogKind {
    fn from(log: RaftLog) -> Self {
        match log {
            RaftLog::Segments => Self::Segments,
            RaftLog::Rocksdb => Self::RocksDb,
        }
    }
}

fn default_snapshot_every() -> u64 {
    dr_engine::EngineConfig::DEFAULT_SNAPSHOT_EVERY
}
fn default_snapshot_log_factor() -> u64 {
    dr_engine::EngineConfig::DEFAULT_SNAPSHOT_LOG_FACTOR
}
fn default_keys_max() -> usize {
    crate::machine::KEYS_MAX_DEFAULT
}
/// drkv's leaders sync their own log at the latest 2 ms after a write
/// (measured: `docs/BENCHMARKS.md`, "A leader syncing its own log
/// lazily"); the engine's own default is off, as its library users'
/// stores may not write unsynced.
pub const LEADER_SYNC_DELAY_US_DEFAULT: u64 = 2_000;

fn default_leader_sync_delay_us() -> u64 {
    LEADER_SYNC_DELAY_US_DEFAULT
}
fn default_read_mirror_bytes() -> usize {
    dr_storage::READ_MIRROR_BYTES_DEFAULT
}
fn default_write_behind_bytes() -> usize {
    dr_storage::WRITE_BEHIND_BYTES_DEFAULT
}
/// The machine's cores (1 when they cannot be counted).
pub fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}
/// The most worker threads a node starts.
pub const WORKER_THREADS_MAX: usize = 1024;
fn default_tick_ms() -> u64 {
    dr_engine::EngineConfig::DEFAULT_TICK.as_millis() as u64
}
fn default_partial_request_timeout_ms() -> u64 {
    10_000
}
fn default_protected_mode() -> bool {
    true
}

const IDENTITY_FILE: &str = "drkv.json";
/// The largest `request_bytes_max` allowed (see [`NodeConfig::validate`]).
pub const REQUEST_BYTES_LIMIT: usize = 32 << 20;

/// Why a node cannot start.
#[derive(Debug)]
pub struct StartError(pub String);

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

fn fail<T>(text: impl Into<String>) -> Result<T, StartError> {
    Err(StartError(text.into()))
}

impl NodeConfig {
    /// A configuration with defaults for everything but the identity and
    /// the addresses.
    pub fn new(
        id: NodeId,
        data_dir: PathBuf,
        client: SocketAddr,
        peer: SocketAddr,
        admin: SocketAddr,
    ) -> Self {
        Self {
            id,
            cluster_id: default_cluster_id(),
            data_dir,
            client_addr: client,
            peer_addr: peer,
            admin_addr: admin,
            peers: BTreeMap::new(),
            join: false,
            max_clients: default_max_clients(),
            request_bytes_max: default_request_bytes_max(),
            snapshot_every: default_snapshot_every(),
            snapshot_log_factor: default_snapshot_log_factor(),
            read_lease: false,
            raft_log: RaftLog::default(),
            tick_ms: default_tick_ms(),
            worker_threads: None,
            partial_request_timeout_ms: default_partial_request_timeout_ms(),
            keys_max: default_keys_max(),
            read_mirror_bytes: default_read_mirror_bytes(),
            write_behind_bytes: default_write_behind_bytes(),
            leader_sync_delay_us: default_leader_sync_delay_us(),
            requirepass: None,
            users: Vec::new(),
            protected_mode: default_protected_mode(),
            tls: None,
            admin_token_file: None,
        }
    }

    /// The worker threads to start: as configured, else the machine's
    /// cores.
    pub fn worker_threads(&self) -> usize {
        self.worker_threads.unwrap_or_else(default_worker_threads)
    }

    /// Checks the values and their relations.
    pub fn validate(&self) -> Result<(), StartError> {
        if self.id == 0 {
            return fail("--id must be a positive integer");
        }
        if self.peers.contains_key(&0) {
            return fail("peer ids must be positive integers");
        }
        if let Some(&own) = self.peers.get(&self.id)
            && own.port() != 0
            && own != self.peer_addr
        {
            return fail(format!(
                "--peers gives node {} the address {own}, but --peer-addr is {}",
                self.id, self.peer_addr
            ));
        }
        if self.join && self.peers.keys().all(|&id| id == self.id) {
            return fail(
                "a joining node needs --peers with the Raft addresses of existing members",
            );
        }
        if self.request_bytes_max > REQUEST_BYTES_LIMIT {
            return fail(format!(
                "request_bytes_max is at most {REQUEST_BYTES_LIMIT} bytes: a request becomes one log \
                 entry, and an entry must fit in one peer frame (64 MiB) with room to spare"
            ));
        }
        if !(1..=WORKER_THREADS_MAX).contains(&self.worker_threads()) {
            return fail(format!(
                "worker_threads must be between 1 and {WORKER_THREADS_MAX}"
            ));
        }
        if self.max_clients == 0
            || self.request_bytes_max < 1024
            || self.snapshot_every == 0
            || self.tick_ms == 0
            || self.partial_request_timeout_ms == 0
            || self.keys_max == 0
        {
            return fail(
                "max_clients, snapshot_every, tick_ms, partial_request_timeout_ms and keys_max must be \
                 positive, request_bytes_max at least 1024",
            );
        }
        self.client_users()?;
        let admin_on_loopback = connection::is_loopback(&self.admin_addr);
        if !admin_on_loopback && self.admin_token_file.is_none() && self.tls.is_none() {
            return fail(format!(
                "the admin port {} is not on loopback: give --admin-token-file (and/or TLS files, \
                 so operators can authenticate with a client certificate of the cluster CA)",
                self.admin_addr
            ));
        }
        if let Some(tls) = &self.tls {
            tls.check().map_err(|e| StartError(e.to_string()))?;
        }
        self.admin_access()?;
        Ok(())
    }

    /// Who may call the admin API.
    pub fn admin_access(&self) -> Result<AdminAccess, StartError> {
        AdminAccess::new(self.admin_token_file.as_deref()).map_err(StartError)
    }

    /// The client users this configuration defines.
    pub fn client_users(&self) -> Result<Users, StartError> {
        Users::new(self.requirepass.as_deref(), &self.users).map_err(|e| StartError(e.to_string()))
    }

    /// The saved configuration of `data_dir`, if it has one.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, StartError> {
        let path = data_dir.join(IDENTITY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return fail(format!("cannot read {}: {error}", path.display())),
        };
        let mut config: Self = serde_json::from_str(&text)
            .map_err(|e| StartError(format!("{} is damaged: {e}", path.display())))?;
        config.data_dir = data_dir.to_path_buf();
        Ok(Some(config))
    }

    /// Refuses a data directory that belongs to another node or cluster;
    /// records this configuration in it otherwise.
    pub(crate) fn claim_data_dir(&self) -> Result<(), StartError> {
        std::fs::create_dir_all(&self.data_dir)
            .map_err(|e| StartError(format!("cannot create {}: {e}", self.data_dir.display())))?;
        if let Some(saved) = Self::load(&self.data_dir)?
            && (saved.id != self.id || saved.cluster_id != self.cluster_id)
        {
            return fail(format!(
                "{} belongs to node {} of cluster {}, not node {} of cluster {}",
                self.data_dir.display(),
                saved.id,
                saved.cluster_id,
                self.id,
                self.cluster_id
            ));
        }
        let text = serde_json::to_string_pretty(self).expect("a config serializes");
        let path = self.data_dir.join(IDENTITY_FILE);
        let temporary = path.with_extension("json.tmp");
        // Owner-only: it may hold password hashes.
        let write = || {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temporary)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()
        };
        write()
            .and_then(|()| std::fs::rename(&temporary, &path))
            .map_err(|e| StartError(format!("cannot write {}: {e}", path.display())))
    }

    /// The configuration in layers, each over the one before: the
    /// defaults (the `default_*` functions here, their single home), then
    /// the TOML file of `--config` or the copy a data directory saved, then
    /// the flags.
    pub fn layered(args: NodeFlags) -> Result<NodeConfig, String> {
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
            (None, Some(dir)) => {
                match NodeConfig::load(dir).map_err(|e| e.to_string())? {
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
                }
            }
            (None, None) => {
                return Err("give --data-dir (and --id for a new node), or --config".into());
            }
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
        if let Some(factor) = args.snapshot_log_factor {
            config.snapshot_log_factor = factor;
        }
        if let Some(bytes) = args.read_mirror_bytes {
            config.read_mirror_bytes = bytes;
        }
        if let Some(bytes) = args.write_behind_bytes {
            config.write_behind_bytes = bytes;
        }
        if let Some(delay) = args.leader_sync_delay_us {
            config.leader_sync_delay_us = delay;
        }
        config.read_lease |= args.read_lease;
        if let Some(raft_log) = args.raft_log {
            config.raft_log = raft_log;
        }
        if let Some(threads) = args.worker_threads {
            config.worker_threads = Some(threads);
        }
        if let Some(path) = &args.acl_file {
            let acl = crate::auth::AclFile::load(path).map_err(|e| e.to_string())?;
            config.requirepass = acl.requirepass;
            config.users = acl.users;
        }
        if let Some(hash) = args.requirepass {
            config.requirepass = Some(hash);
        }
        if let Some(protected) = args.protected_mode {
            config.protected_mode = protected;
        }
        let absolute = |path: PathBuf| {
            std::path::absolute(&path).map_err(|e| format!("{}: {e}", path.display()))
        };
        if let (Some(ca_cert), Some(cert), Some(key)) =
            (args.tls_ca_cert_file, args.tls_cert_file, args.tls_key_file)
        {
            config.tls = Some(NodeTls {
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
}

/// `drkv server`'s flags: the top layer of a node's configuration.
#[derive(clap::Args, Debug, Default)]
pub struct NodeFlags {
    /// A TOML file with the node's settings (the same names as the flags,
    /// with underscores; `peers` as a table of id = "host:port").
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This node's id (a positive integer, unique in the cluster).
    #[arg(long)]
    pub id: Option<u64>,
    /// The cluster's id (peers of another cluster are refused).
    #[arg(long)]
    pub cluster_id: Option<u64>,
    /// Where the node keeps its state.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The Redis-protocol port [default: 127.0.0.1:(7000 + id)].
    #[arg(long)]
    pub client_addr: Option<SocketAddr>,
    /// The Raft port [default: 127.0.0.1:(7100 + id)].
    #[arg(long)]
    pub peer_addr: Option<SocketAddr>,
    /// The admin HTTP port [default: 127.0.0.1:(7200 + id)].
    #[arg(long)]
    pub admin_addr: Option<SocketAddr>,
    /// The founding members' Raft addresses: `1=127.0.0.1:7101,2=...`.
    #[arg(long, value_parser = parse_peers)]
    pub peers: Option<BTreeMap<u64, SocketAddr>>,
    /// Join a running cluster (after `drkv ctl add-learner`) instead of
    /// founding one; `--peers` then names existing members.
    #[arg(long)]
    pub join: bool,
    /// Client connections served at once.
    #[arg(long)]
    pub max_clients: Option<usize>,
    /// The largest client request in bytes.
    #[arg(long)]
    pub request_bytes_max: Option<usize>,
    /// Snapshot after this many applied entries.
    #[arg(long)]
    pub snapshot_every: Option<u64>,
    /// ... and once the log since the last snapshot holds this many times
    /// its bytes (0: entries only).
    #[arg(long)]
    pub snapshot_log_factor: Option<u64>,
    /// Bytes of recently written records kept in memory for point reads
    /// (0: none).
    #[arg(long)]
    pub read_mirror_bytes: Option<usize>,
    /// Bytes of applied writes kept in memory before a checkpoint writes
    /// them to RocksDB (0: every apply writes RocksDB).
    #[arg(long)]
    pub write_behind_bytes: Option<usize>,
    /// As leader, sync the log at the latest this many microseconds after
    /// the oldest unsynced write (0: sync every write).
    #[arg(long)]
    pub leader_sync_delay_us: Option<u64>,
    /// Milliseconds a client may take to finish a request it started.
    #[arg(long)]
    pub partial_request_timeout_ms: Option<u64>,
    /// Serve reads on the leader's lease (no heartbeat round per batch;
    /// assumes clock rates within 25% of each other).
    #[arg(long)]
    pub read_lease: bool,
    /// Where a new data directory keeps its Raft log.
    #[arg(long, value_enum)]
    pub raft_log: Option<RaftLog>,
    /// Threads serving clients, peers and the admin port [default: the
    /// machine's cores].
    #[arg(long)]
    pub worker_threads: Option<usize>,
    /// The `default` user's password hash (`drkv passwd` makes one):
    /// clients must then `AUTH`.
    #[arg(long)]
    pub requirepass: Option<String>,
    /// A TOML file of client users (`requirepass`, `[[users]]` with
    /// `name`, `password` hash and `permissions`); replaces the users
    /// the node had.
    #[arg(long)]
    pub acl_file: Option<PathBuf>,
    /// While no password is set, answer only clients on loopback
    /// [default: true].
    #[arg(long)]
    pub protected_mode: Option<bool>,
    /// The cluster CA's certificate (PEM). With --tls-cert-file and
    /// --tls-key-file: mutual TLS between peers, TLS on the client port,
    /// HTTPS on the admin port (`drkv certs` makes the files).
    #[arg(long, requires_all = ["tls_cert_file", "tls_key_file"])]
    pub tls_ca_cert_file: Option<PathBuf>,
    /// This node's certificate (PEM), signed by the cluster CA.
    #[arg(long, requires_all = ["tls_ca_cert_file", "tls_key_file"])]
    pub tls_cert_file: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, requires_all = ["tls_ca_cert_file", "tls_cert_file"])]
    pub tls_key_file: Option<PathBuf>,
    /// Clients of the client port must present a certificate signed by
    /// the cluster CA.
    #[arg(long, requires = "tls_ca_cert_file")]
    pub tls_auth_clients: bool,
    /// A file whose first line is the admin API's bearer token (needed
    /// when the admin port is not on loopback, unless TLS is on).
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
}

/// `--peers`: `1=127.0.0.1:7101,2=...`.
pub fn parse_peers(text: &str) -> Result<BTreeMap<u64, SocketAddr>, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("drkv-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        dir
    }

    #[test]
    fn flags_lie_over_the_file_which_lies_over_the_defaults() {
        let dir = temp_dir("layers");
        let file = dir.join("node.toml");
        std::fs::write(
            &file,
            "id = 2\ndata_dir = \"/nowhere\"\nclient_addr = \"127.0.0.1:7002\"\n\
             peer_addr = \"127.0.0.1:7102\"\nadmin_addr = \"127.0.0.1:7202\"\n\
             snapshot_every = 5\nsnapshot_log_factor = 2\ntick_ms = 20\n\
             [peers]\n1 = \"127.0.0.1:7101\"\n",
        )
        .unwrap();
        let flags = NodeFlags {
            config: Some(file.clone()),
            data_dir: Some(dir.join("data")),
            snapshot_every: Some(7),
            ..NodeFlags::default()
        };
        let config = NodeConfig::layered(flags).unwrap();
        assert_eq!(config.snapshot_every, 7, "the flag");
        assert_eq!(config.snapshot_log_factor, 2, "the file");
        let flagged = NodeConfig::layered(NodeFlags {
            config: Some(file),
            data_dir: Some(dir.join("data")),
            snapshot_log_factor: Some(0),
            read_mirror_bytes: Some(0),
            ..NodeFlags::default()
        })
        .unwrap();
        assert_eq!(flagged.snapshot_log_factor, 0, "the flag over the file");
        assert_eq!(flagged.read_mirror_bytes, 0, "the flag");
        assert_eq!(
            config.read_mirror_bytes,
            dr_storage::READ_MIRROR_BYTES_DEFAULT,
            "the default"
        );
        assert_eq!(config.tick_ms, 20, "the file");
        assert_eq!(config.data_dir, dir.join("data"), "the flag");
        assert_eq!(config.max_clients, default_max_clients(), "the default");
        assert_eq!(config.peers.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_new_data_directory_takes_the_defaults_and_a_used_one_its_saved_copy() {
        let dir = temp_dir("saved");
        let flags = || NodeFlags {
            data_dir: Some(dir.clone()),
            ..NodeFlags::default()
        };
        assert!(NodeConfig::layered(flags()).is_err(), "--id is needed");
        let mut first = NodeConfig::layered(NodeFlags {
            id: Some(3),
            read_lease: true,
            ..flags()
        })
        .unwrap();
        assert_eq!(first.client_addr, SocketAddr::from(([127, 0, 0, 1], 7003)));
        assert_eq!(
            first.tick_ms,
            dr_engine::EngineConfig::DEFAULT_TICK.as_millis() as u64
        );
        first.snapshot_every = 11;
        first.claim_data_dir().unwrap();
        let again = NodeConfig::layered(flags()).unwrap();
        assert_eq!(again, first, "the saved copy, with nothing over it");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn worker_threads_default_to_the_cores_at_each_start_and_are_bounded() {
        let dir = temp_dir("workers");
        let flags = |threads| NodeFlags {
            id: Some(1),
            data_dir: Some(dir.clone()),
            worker_threads: threads,
            ..NodeFlags::default()
        };
        let config = NodeConfig::layered(flags(None)).unwrap();
        assert_eq!(config.worker_threads, None, "not fixed in the saved copy");
        assert_eq!(config.worker_threads(), default_worker_threads());
        let config = NodeConfig::layered(flags(Some(3))).unwrap();
        assert_eq!(config.worker_threads(), 3);
        assert!(config.validate().is_ok());
        for wrong in [0, WORKER_THREADS_MAX + 1] {
            let config = NodeConfig::layered(flags(Some(wrong))).unwrap();
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains("worker_threads"), "{error}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
