//! One `drkv` node: its configuration, its data directory, and the start
//! and orderly stop of everything it runs (store, transport, engine,
//! client port, admin port).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dr_codec::message::{ConfState, NodeId};
use dr_raft::{RaftNode, Storage};
use dr_storage::{RocksStorage, StateMachine};
use dr_transport::{TcpTransport, TransportConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin;
use crate::admin::access::{AdminAccess, AdminListener};
use crate::auth::{UserConfig, Users};
use crate::command::{Command, ReplyShape};
use crate::connection::{self, ClientAccess};
use crate::kv::{MemberAddrs, WriteOp};
use crate::resp::{Limits, Reply};
use crate::runtime::{self, RuntimeConfig};
use crate::server::{ClientLimits, Executor};
use crate::tls::{ClientCerts, NodeTls};

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
    /// Milliseconds between Raft ticks (elections after 10-20 ticks).
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
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
fn default_snapshot_every() -> u64 {
    100_000
}
fn default_tick_ms() -> u64 {
    10
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
const STORE_DIR: &str = "store";

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
            read_lease: false,
            tick_ms: default_tick_ms(),
            partial_request_timeout_ms: default_partial_request_timeout_ms(),
            requirepass: None,
            users: Vec::new(),
            protected_mode: default_protected_mode(),
            tls: None,
            admin_token_file: None,
        }
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
        if self.max_clients == 0
            || self.request_bytes_max < 1024
            || self.snapshot_every == 0
            || self.tick_ms == 0
            || self.partial_request_timeout_ms == 0
        {
            return fail(
                "max_clients, snapshot_every and tick_ms must be positive, request_bytes_max at least 1024",
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
    fn claim_data_dir(&self) -> Result<(), StartError> {
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
}

/// A running node.
pub struct RunningNode {
    /// The client port's address.
    pub client_addr: SocketAddr,
    /// The admin port's address.
    pub admin_addr: SocketAddr,
    /// The Raft port's address.
    pub peer_addr: SocketAddr,
    executor: Executor,
    /// Stops the client and admin ports.
    shutdown: watch::Sender<bool>,
    /// Stops the engine, once the ports' connections are done.
    stop_engine: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    engine_thread: std::thread::JoinHandle<()>,
    transport: Arc<TcpTransport>,
}

impl fmt::Debug for RunningNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningNode")
            .field("client_addr", &self.client_addr)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|error| {
        StartError(match error.kind() {
            std::io::ErrorKind::AddrInUse => {
                format!("the {what} address {addr} is in use (another drkv, or another program?)")
            }
            _ => format!("cannot listen on the {what} address {addr}: {error}"),
        })
    })
}

impl RunningNode {
    /// Opens (or creates) the node's store and starts serving. Must run in
    /// a multi-threaded tokio runtime.
    pub async fn start(config: NodeConfig) -> Result<Self, StartError> {
        config.validate()?;
        let clients = bind(config.client_addr, "client").await?;
        let admin_listener = bind(config.admin_addr, "admin").await?;
        config.claim_data_dir()?;
        let store = open_store(&config)?;
        let mut raft_config = dr_raft::Config::new(config.id);
        raft_config.applied = store.applied_index();
        // Every drkv node keeps the promises a leader lease rests on,
        // whether or not it serves lease reads itself, so that any node of
        // the cluster may turn `read_lease` on.
        raft_config.lease_reads = true;
        raft_config.election_jitter_seed = config.id ^ seed_from_clock();
        let raft = RaftNode::new(raft_config.clone(), store)
            .map_err(|e| StartError(format!("the store cannot start a node: {e:?}")))?;
        let peers: BTreeMap<NodeId, SocketAddr> = config
            .peers
            .iter()
            .filter(|&(&id, _)| id != config.id)
            .map(|(&id, &a)| (id, a))
            .collect();
        let mut transport_config =
            TransportConfig::new(config.cluster_id, config.id, config.peer_addr);
        transport_config.peers = peers.clone();
        transport_config.tls = config.tls.as_ref().map(NodeTls::peer_files);
        let (transport, inbox) = TcpTransport::start(transport_config).await.map_err(|e| {
            StartError(format!(
                "cannot start the peer transport on {}: {e}",
                config.peer_addr
            ))
        })?;
        let transport = Arc::new(transport);
        let limits = ClientLimits {
            request: Limits {
                request_bytes_max: config.request_bytes_max,
                ..Limits::default()
            },
            connections_max: config.max_clients,
            partial_request_timeout: Duration::from_millis(config.partial_request_timeout_ms),
            ..ClientLimits::default()
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (stop_engine, stop_engine_rx) = watch::channel(false);
        let mut engine_config = dr_engine::EngineConfig::new(raft_config);
        engine_config.tick = Duration::from_millis(config.tick_ms);
        engine_config.snapshot_every = config.snapshot_every;
        // Enough log behind a snapshot for a briefly slow follower.
        engine_config.log_kept = (config.snapshot_every / 2).min(10_000);
        engine_config.read_lease = config.read_lease;
        engine_config.forward_timeout = limits.request_timeout;
        engine_config.incarnation = seed_from_clock();
        let engine_config = RuntimeConfig {
            engine: engine_config,
            cluster_id: config.cluster_id,
            peers,
        };
        let (engine, engine_thread) = runtime::start(
            engine_config,
            raft,
            Arc::clone(&transport),
            inbox,
            stop_engine_rx,
        )
        .map_err(|e| StartError(format!("cannot start the engine thread: {e}")))?;
        let executor = Executor::new(engine, limits);
        let tls_error = |e: crate::tls::TlsSetupError| StartError(e.to_string());
        let client_tls = match &config.tls {
            Some(tls) if tls.auth_clients => Some(tls.acceptor(ClientCerts::Required)),
            Some(tls) => Some(tls.acceptor(ClientCerts::None)),
            None => None,
        };
        let access = ClientAccess {
            users: config.client_users()?,
            protected_mode: config.protected_mode,
            tls: client_tls.transpose().map_err(tls_error)?,
        };
        let admin_tls = config
            .tls
            .as_ref()
            .map(|tls| tls.acceptor(ClientCerts::Optional))
            .transpose()
            .map_err(tls_error)?;
        let client_addr = clients
            .local_addr()
            .map_err(|e| StartError(e.to_string()))?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|e| StartError(e.to_string()))?;
        let peer_addr = transport.local_addr();
        let admin_state = admin::AdminState {
            executor: executor.clone(),
            transport: Arc::clone(&transport),
            data_dir: config.data_dir.clone(),
            access: config.admin_access()?,
        };
        let admin_listener = AdminListener::start(admin_listener, admin_tls)
            .map_err(|e| StartError(format!("cannot serve the admin port: {e}")))?;
        let tasks = vec![
            tokio::spawn(connection::serve_clients(
                clients,
                executor.clone(),
                Arc::new(access),
                shutdown_rx.clone(),
            )),
            tokio::spawn(admin::serve(
                admin_listener,
                admin_state,
                shutdown_rx.clone(),
            )),
            tokio::spawn(publish_addresses(
                executor.clone(),
                config.id,
                [peer_addr, client_addr, admin_addr],
                shutdown_rx,
            )),
        ];
        tracing::info!(id = config.id, %client_addr, %peer_addr, %admin_addr, "node started");
        Ok(Self {
            client_addr,
            admin_addr,
            peer_addr,
            executor,
            shutdown,
            stop_engine,
            tasks,
            engine_thread,
            transport,
        })
    }

    /// The executor (to run commands in-process).
    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    /// Stops accepting clients, lets open connections finish what they
    /// started, then stops the engine (every acknowledged write is already
    /// synced) and the transport.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        // Bounded: the client port gives its connections
        // `SHUTDOWN_GRACE`; whatever is still running after a little more
        // (an admin request, say) is cut off.
        let deadline =
            tokio::time::Instant::now() + connection::SHUTDOWN_GRACE + Duration::from_secs(1);
        for mut task in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
            }
        }
        // Only now: the connections' last commands needed the engine.
        let _ = self.stop_engine.send(true);
        let _ = tokio::task::spawn_blocking(move || self.engine_thread.join()).await;
        drop(self.transport);
        tracing::info!("node stopped");
    }
}

fn seed_from_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn open_store(config: &NodeConfig) -> Result<RocksStorage, StartError> {
    let path = config.data_dir.join(STORE_DIR);
    let mut store = RocksStorage::open(&path, StateMachine::DataFamily).map_err(|error| {
        let text = error.to_string();
        StartError(if text.contains("lock") {
            format!(
                "{} is in use by another drkv process ({text})",
                path.display()
            )
        } else {
            format!("cannot open the store in {}: {text}", path.display())
        })
    })?;
    let fresh = store.last_index() == 0 && store.snapshot_meta().map_or(0, |m| m.index) == 0;
    if fresh && !config.join {
        let mut voters: Vec<NodeId> = config.peers.keys().copied().collect();
        if !voters.contains(&config.id) {
            voters.push(config.id);
        }
        voters.sort_unstable();
        let conf = ConfState {
            voters,
            ..ConfState::default()
        };
        store
            .bootstrap(conf)
            .map_err(|e| StartError(format!("cannot bootstrap the store: {e}")))?;
        tracing::info!(id = config.id, "bootstrapped a new cluster");
    }
    Ok(store)
}

/// Records this node's addresses in the replicated member table (through
/// the leader), once, retrying until it is done.
async fn publish_addresses(
    executor: Executor,
    id: NodeId,
    [peer, client, admin]: [SocketAddr; 3],
    mut shutdown: watch::Receiver<bool>,
) {
    let wanted = MemberAddrs {
        peer: peer.to_string(),
        client: client.to_string(),
        admin: admin.to_string(),
    };
    loop {
        if executor.engine().status.member(id) == Some(wanted.clone()) {
            return;
        }
        let record = Command::Write {
            op: WriteOp::Member {
                id,
                addrs: wanted.clone(),
            },
            shape: ReplyShape::Ok,
        };
        let reply = executor.submit(record).await;
        if reply == Reply::OK {
            tracing::info!(id, "addresses published");
            return;
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}
