//! One `drkv` node: its configuration, its data directory, and the start
//! and orderly stop of everything it runs (store, transport, engine,
//! client port, admin port).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dr_codec::message::{ConfState, NodeId};
use dr_raft::{RaftNode, Storage};
use dr_storage::{RocksStorage, StateMachine};
use dr_transport::{TcpTransport, TransportConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin;
use crate::admin::access::AdminListener;
use crate::command::{Command, ReplyShape};
pub use crate::config::{NodeConfig, REQUEST_BYTES_LIMIT, StartError};
use crate::connection::{self, ClientAccess};
use crate::kv::{MemberAddrs, WriteOp};
use crate::resp::{Limits, Reply};
use crate::runtime::{self, RuntimeConfig};
use crate::server::{ClientLimits, Executor};
use crate::tls::{ClientCerts, NodeTls};

const STORE_DIR: &str = "store";

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
        // A leader syncing lazily settles readies before their sync and
        // applies what its followers' copies commit.
        raft_config.async_persist = config.leader_sync_delay_us > 0;
        raft_config.apply_unpersisted = raft_config.async_persist;
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
        engine_config.snapshot_log_factor = config.snapshot_log_factor;
        // Enough log behind a snapshot for a briefly slow follower.
        engine_config.log_kept = (config.snapshot_every / 2).min(10_000);
        engine_config.read_lease = config.read_lease;
        engine_config.leader_sync_delay_max = Duration::from_micros(config.leader_sync_delay_us);
        engine_config.forward_timeout = limits.request_timeout;
        engine_config.incarnation = seed_from_clock();
        let engine_config = RuntimeConfig {
            engine: engine_config,
            cluster_id: config.cluster_id,
            peers,
            keys_max: config.keys_max,
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
    let options = dr_storage::StoreOptions {
        log: config.raft_log.into(),
        read_mirror_bytes: config.read_mirror_bytes,
        write_behind_bytes: config.write_behind_bytes,
        ..dr_storage::StoreOptions::default()
    };
    let mut store =
        RocksStorage::open_with(&path, StateMachine::DataFamily, options).map_err(|error| {
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
