//! # dr-transport: Raft messages between nodes
//!
//! Moves dr-codec [`Message`]s between the nodes of a cluster.
//! [`TcpTransport`] is the real thing, on tokio: one long-lived connection
//! per pair of nodes (the lower id dials), a 32-byte handshake that
//! refuses strangers and other clusters ([`handshake`]), a bounded queue
//! per peer whose writer sends everything queued as one frame in one
//! write (or that the sender flushes itself, on its own thread:
//! [`TcpTransport::hold`], [`TcpTransport::flush`]), snapshot chunks kept
//! behind heartbeats, reconnection with
//! capped jittered backoff, and readers that decode frames in place.
//! [`MemoryNetwork`] gives the same [`Transport`] over channels.
//!
//! ## Invariants
//!
//! - Sending never blocks and never grows memory without bound: a full
//!   queue (messages or bytes) drops the message and counts it. Raft
//!   retransmits whatever still matters.
//! - Nothing from a peer is trusted: the hello is checked before anything
//!   else is read, frames are length-, checksum- and structure-checked by
//!   dr-codec, and every message must be from that peer and to this node.
//!   Any violation closes that one connection with a logged reason and a
//!   counter; other peers never notice.
//! - A heartbeat waits behind at most one snapshot chunk.
//!
//! ## What it does not do
//!
//! No ordering or delivery guarantee beyond TCP's within one connection:
//! messages queued when a connection breaks are dropped. Without TLS
//! (off by default; [`TransportConfig::tls`]) peers are told apart only
//! by the cluster id and node id in their hello: turn TLS on where the
//! network is not trusted. It does not interpret messages.
//!
//! ## Example
//!
//! ```
//! use dr_codec::message::{Heartbeat, Message, MessageBody};
//! use dr_transport::{TcpTransport, Transport, TransportConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let any_port = "127.0.0.1:0".parse().unwrap();
//! let (one, _from_peers_of_one) = TcpTransport::start(TransportConfig::new(7, 1, any_port)).await.unwrap();
//! let mut config = TransportConfig::new(7, 2, any_port);
//! config.peers.insert(1, one.local_addr());
//! let (two, _) = TcpTransport::start(config).await.unwrap();
//! one.add_peer(2, two.local_addr());
//!
//! let mut inbox = _from_peers_of_one;
//! let heartbeat = MessageBody::Heartbeat(Heartbeat { commit: 5, read_context: 0 });
//! assert!(two.send(Message { from: 2, to: 1, term: 3, body: heartbeat.clone() }));
//! let received = inbox.recv().await.unwrap();
//! assert_eq!((received.from, received.body), (2, heartbeat));
//! # }
//! ```

pub mod handshake;

mod config;
mod link;
mod memory;
mod queue;
mod stats;
mod tcp;
mod tls;

pub use config::{ConfigError, TransportConfig};
pub use dr_codec::message::Message;
pub use memory::{MemoryNetwork, MemoryTransport};
pub use stats::TransportStats;
pub use tcp::{Intercept, StartError, TcpTransport};
pub use tls::{PEER_NAME, TlsError, TlsFiles};

/// Sends messages to peers. Implementations queue and return at once.
pub trait Transport: Send + Sync {
    /// Queues `message` for `message.to`. Returns false when it was
    /// dropped instead (unknown peer, full queue); Raft retransmits.
    fn send(&self, message: Message) -> bool;

    /// The endpoint's counters.
    fn stats(&self) -> TransportStats;
}
