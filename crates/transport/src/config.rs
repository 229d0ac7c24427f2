//! How a transport endpoint is set up.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use dr_codec::frame::CodecConfig;
use dr_codec::message::NodeId;

use crate::tls::TlsFiles;

/// An endpoint's identity, peers and limits.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// The cluster this node belongs to; peers of another are refused.
    pub cluster_id: u64,
    /// This node.
    pub node_id: NodeId,
    /// Where to listen for peers (port 0: any free port).
    pub listen_addr: SocketAddr,
    /// The other members and where they listen. More can be added later
    /// ([`crate::TcpTransport::add_peer`]).
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Messages queued for one peer before new ones are dropped.
    pub queue_messages_max: usize,
    /// Payload bytes queued for one peer before new messages are dropped.
    pub queue_bytes_max: usize,
    /// Frame limits, for both directions.
    pub codec: CodecConfig,
    /// How long the other side has to send its hello.
    pub handshake_timeout: Duration,
    /// The first wait before redialling a peer; doubles up to
    /// `backoff_max`, with jitter.
    pub backoff_min: Duration,
    /// The longest wait before redialling.
    pub backoff_max: Duration,
    /// Messages received and not yet taken by the node before readers stop
    /// reading (and TCP pushes back on the senders).
    pub inbound_capacity: usize,
    /// TLS with mutual authentication between peers; off (`None`) by
    /// default. Every member of a cluster must agree.
    pub tls: Option<TlsFiles>,
}

impl TransportConfig {
    /// Defaults for `node_id` of `cluster_id`, listening on `listen_addr`.
    pub fn new(cluster_id: u64, node_id: NodeId, listen_addr: SocketAddr) -> Self {
        Self {
            cluster_id,
            node_id,
            listen_addr,
            peers: BTreeMap::new(),
            queue_messages_max: 4096,
            queue_bytes_max: 64 << 20,
            codec: CodecConfig::default(),
            handshake_timeout: Duration::from_secs(3),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_secs(2),
            inbound_capacity: 8192,
            tls: None,
        }
    }

    /// Checks the values make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(ConfigError("node id 0 is reserved".into()));
        }
        if self.peers.contains_key(&self.node_id) {
            return Err(ConfigError(format!(
                "node {} lists itself as a peer",
                self.node_id
            )));
        }
        if self.peers.contains_key(&0) {
            return Err(ConfigError("peer id 0 is reserved".into()));
        }
        if self.queue_messages_max == 0 || self.queue_bytes_max == 0 || self.inbound_capacity == 0 {
            return Err(ConfigError("queue bounds must be positive".into()));
        }
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            return Err(ConfigError(format!(
                "backoff {:?}..{:?} is not a positive range",
                self.backoff_min, self.backoff_max
            )));
        }
        if self.handshake_timeout.is_zero() {
            return Err(ConfigError("the handshake timeout must be positive".into()));
        }
        Ok(())
    }
}

/// A configuration that cannot work, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid transport configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}
