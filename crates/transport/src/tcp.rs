//! [`TcpTransport`]: peers over TCP on tokio.
//!
//! Between two nodes there is one connection, dialled by the lower id and
//! accepted by the higher; both write and read on it. The dialler
//! redials with capped, jittered exponential backoff, so a peer that
//! restarts at the same address is picked up without anyone acting; the
//! acceptor takes a new connection from a peer as replacing the old one.
//!
//! Each connection has a writer (takes everything queued for the peer,
//! encodes it as one frame, one write: see `link.rs`) and a reader
//! (frames decoded in place from the receive buffer: payloads are slices
//! of it). Anything malformed closes that connection only.
//!
//! A sender may also write itself: [`TcpTransport::hold`] queues without
//! waking the writer, and [`TcpTransport::flush`] then writes what was
//! held on the caller's thread, one frame per peer, when the socket takes
//! it without blocking (plain TCP, no write in progress); the writer task
//! is woken only for what is left. A node's engine thread sends this way:
//! a wake-up of a writer on another thread costs more than the write.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use dr_codec::frame::{decode_messages, peek_header};
use dr_codec::message::{Message, NodeId};
use dr_pool::{BufferPool, BufferPoolConfig};
use parking_lot::{Mutex, RwLock};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use crate::Transport;
use crate::config::{ConfigError, TransportConfig};
use crate::handshake::{HELLO_LEN, HandshakeError, Hello};
use crate::link::{DirectLink, Written, write_loop_direct, write_loop_tls};
use crate::queue::PeerQueue;
use crate::stats::{Counters, TransportStats, add};
use crate::tls::{PEER_NAME, Tls, TlsError};

/// Bytes read from a socket at a time (at least).
pub(crate) const READ_CHUNK: usize = 64 << 10;
/// A connection that lasted this long resets the backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(1);

/// A TLS session over TCP.
pub(crate) trait PeerIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> PeerIo for T {}

/// A connection to a peer: plain TCP (which senders may write to
/// directly) or TLS over it (written by its writer task only).
enum PeerStream {
    Plain(TcpStream),
    Tls(Box<dyn PeerIo>),
}

impl PeerStream {
    /// The stream to read and write, whichever it is (the handshake).
    fn io(&mut self) -> &mut dyn PeerIo {
        match self {
            Self::Plain(tcp) => tcp,
            Self::Tls(session) => session.as_mut(),
        }
    }
}

/// Why an endpoint could not start.
#[derive(Debug)]
pub enum StartError {
    /// The configuration is invalid.
    Config(ConfigError),
    /// The TLS files could not be loaded.
    Tls(TlsError),
    /// The listening address is taken or not ours.
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        error: io::Error,
    },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(error) => error.fmt(f),
            Self::Tls(error) => error.fmt(f),
            Self::Bind { addr, error } => write!(f, "cannot listen for peers on {addr}: {error}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Why a connection ended.
#[derive(Debug)]
pub(crate) enum ConnectionEnd {
    Io(io::Error),
    Closed,
    BadFrame(String),
    Superseded,
    NodeGone,
}

impl fmt::Display for ConnectionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(error) => write!(f, "{error}"),
            Self::Closed => f.write_str("closed by the peer"),
            Self::BadFrame(what) => write!(f, "malformed input: {what}"),
            Self::Superseded => f.write_str("replaced by a newer connection"),
            Self::NodeGone => f.write_str("the node stopped taking messages"),
        }
    }
}

/// A hook that takes received messages on the reading task itself: it
/// returns the messages it leaves for the inbound channel.
pub type Intercept = Box<dyn Fn(Message) -> Option<Message> + Send + Sync>;

pub(crate) struct Peer {
    pub(crate) id: NodeId,
    addr: Mutex<SocketAddr>,
    pub(crate) queue: PeerQueue,
    /// Messages were held (queued without waking the writer) since the
    /// last flush.
    held: AtomicBool,
    /// The plain connection being served, for writes on a sender's
    /// thread.
    link: Mutex<Option<Arc<DirectLink>>>,
    /// Wakes the connection being served when a newer one arrives.
    superseded: Notify,
}

pub(crate) struct Shared {
    pub(crate) config: TransportConfig,
    peers: RwLock<HashMap<NodeId, Arc<Peer>>>,
    pub(crate) counters: Counters,
    inbound: mpsc::Sender<Message>,
    /// Sees every received message before the inbound channel does.
    intercept: OnceLock<Intercept>,
    pub(crate) pool: BufferPool,
    tasks: Mutex<JoinSet<()>>,
    runtime: tokio::runtime::Handle,
    tls: Option<Tls>,
}

impl Shared {
    fn peer(&self, id: NodeId) -> Option<Arc<Peer>> {
        self.peers.read().get(&id).cloned()
    }

    fn spawn(self: &Arc<Self>, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock();
        while tasks.try_join_next().is_some() {}
        tasks.spawn_on(task, &self.runtime);
    }

    fn my_hello(&self) -> Hello {
        Hello {
            cluster_id: self.config.cluster_id,
            node_id: self.config.node_id,
        }
    }
}

/// A node's endpoint for talking to its peers over TCP. Dropping it stops
/// every task and closes every connection.
pub struct TcpTransport {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
}

impl fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpTransport")
            .field("node_id", &self.shared.config.node_id)
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl TcpTransport {
    /// Listens on the configured address and starts connecting to the
    /// configured peers. Messages from peers arrive on the returned
    /// receiver. Must run inside a tokio runtime.
    pub async fn start(
        config: TransportConfig,
    ) -> Result<(Self, mpsc::Receiver<Message>), StartError> {
        config.validate().map_err(StartError::Config)?;
        let tls = config
            .tls
            .as_ref()
            .map(Tls::load)
            .transpose()
            .map_err(StartError::Tls)?;
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .map_err(|error| StartError::Bind {
                addr: config.listen_addr,
                error,
            })?;
        let local_addr = listener.local_addr().map_err(|error| StartError::Bind {
            addr: config.listen_addr,
            error,
        })?;
        let (inbound, received) = mpsc::channel(config.inbound_capacity);
        let pool =
            BufferPool::new(&BufferPoolConfig::default()).expect("the default pool is valid");
        let peers = config.peers.clone();
        let shared = Arc::new(Shared {
            config,
            peers: RwLock::new(HashMap::new()),
            counters: Counters::default(),
            inbound,
            intercept: OnceLock::new(),
            pool,
            tasks: Mutex::new(JoinSet::new()),
            runtime: tokio::runtime::Handle::current(),
            tls,
        });
        shared.spawn(accept_loop(Arc::clone(&shared), listener));
        let transport = Self { shared, local_addr };
        for (id, addr) in peers {
            transport.add_peer(id, addr);
        }
        Ok((transport, received))
    }

    /// Where this endpoint listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Adds a peer (a new member), or changes a known peer's address.
    pub fn add_peer(&self, id: NodeId, addr: SocketAddr) {
        if id == self.shared.config.node_id || id == 0 {
            return;
        }
        if let Some(peer) = self.shared.peer(id) {
            *peer.addr.lock() = addr;
            return;
        }
        let config = &self.shared.config;
        let peer = Arc::new(Peer {
            id,
            addr: Mutex::new(addr),
            queue: PeerQueue::new(config.queue_messages_max, config.queue_bytes_max),
            held: AtomicBool::new(false),
            link: Mutex::new(None),
            superseded: Notify::new(),
        });
        self.shared.peers.write().insert(id, Arc::clone(&peer));
        if config.node_id < id {
            self.shared.spawn(dial_loop(Arc::clone(&self.shared), peer));
        }
    }

    /// Forgets a peer (a removed member): its queue is dropped and its
    /// connection closed.
    pub fn remove_peer(&self, id: NodeId) {
        if let Some(peer) = self.shared.peers.write().remove(&id) {
            let dropped = peer.queue.clear();
            add(&self.shared.counters.messages_dropped, dropped as u64);
            peer.superseded.notify_waiters();
        }
    }

    /// Lets `hook` see every message received from now on, on the task
    /// that read it, before it joins the inbound channel: what the hook
    /// keeps (returns `None` for) never reaches the channel. A node uses
    /// it to hand answers to whoever waits for them without a trip
    /// through its own loop. One hook per endpoint: false (and `hook`
    /// dropped) when one is installed already. The hook must not block.
    pub fn intercept(&self, hook: Intercept) -> bool {
        self.shared.intercept.set(hook).is_ok()
    }

    /// Queues `message` like [`Transport::send`], but leaves it for the
    /// next [`TcpTransport::flush`] (the writer is not woken).
    pub fn hold(&self, message: Message) -> bool {
        self.queue(message, |peer| peer.held.store(true, Ordering::Release))
    }

    /// Queues `message` for its peer, then `queued` (the writer's wake-up
    /// or the mark for the next flush); counts it queued or dropped.
    fn queue(&self, message: Message, queued: impl FnOnce(&Peer)) -> bool {
        let counters = &self.shared.counters;
        let Some(peer) = self.shared.peer(message.to) else {
            add(&counters.messages_dropped, 1);
            return false;
        };
        if !peer.queue.push(message) {
            add(&counters.messages_dropped, 1);
            return false;
        }
        add(&counters.messages_queued, 1);
        queued(&peer);
        true
    }

    /// Sends what was held for each peer: written here, one frame per
    /// peer, when the connection is plain TCP, no one else is writing it
    /// and the socket takes it without blocking; otherwise (and for what
    /// the socket did not take) the peer's writer is woken.
    pub fn flush(&self) {
        let peers = self.shared.peers.read();
        for peer in peers.values() {
            if !peer.held.swap(false, Ordering::AcqRel) {
                continue;
            }
            let link = peer.link.lock().clone();
            let written = link
                .as_ref()
                .and_then(|link| link.try_write_queued(&self.shared, peer));
            if !matches!(written, Some(Written::Idle)) {
                // TLS, no connection, a write in progress, a full socket
                // or an error: the writer takes over (and ends the
                // connection on an error).
                peer.queue.wake();
            }
        }
    }

    /// Messages and payload bytes queued for `peer` now.
    pub fn queued(&self, peer: NodeId) -> Option<(usize, usize)> {
        self.shared.peer(peer).map(|peer| peer.queue.len())
    }

    /// The counters of the buffer pool that TLS connections encode their
    /// frames into (for a metrics endpoint; a plain connection keeps one
    /// buffer of its own).
    pub fn pool_stats(&self) -> dr_pool::BufferPoolStats {
        self.shared.pool.stats()
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.shared.tasks.lock().abort_all();
    }
}

impl Transport for TcpTransport {
    fn send(&self, message: Message) -> bool {
        self.queue(message, |peer| peer.queue.wake())
    }

    fn stats(&self) -> TransportStats {
        self.shared.counters.snapshot()
    }
}

/// Up to `backoff`, at least half of it: peers that lost each other at
/// the same moment do not redial in lockstep.
fn jittered(backoff: Duration, seed: &mut u64) -> Duration {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    let half = backoff / 2;
    half + Duration::from_nanos(*seed % (half.as_nanos() as u64).max(1))
}

async fn dial_loop(shared: Arc<Shared>, peer: Arc<Peer>) {
    let config = &shared.config;
    let mut backoff = config.backoff_min;
    let mut seed = config.node_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ peer.id | 1;
    while shared.peer(peer.id).is_some() {
        let addr = *peer.addr.lock();
        match dial(&shared, peer.id, addr).await {
            Ok(stream) => {
                add(&shared.counters.connections_established, 1);
                tracing::info!(peer = peer.id, %addr, "connected to peer");
                let started = Instant::now();
                let end = serve(&shared, &peer, stream).await;
                tracing::info!(peer = peer.id, %addr, "connection to peer ended: {end}");
                if started.elapsed() >= STABLE_CONNECTION {
                    backoff = config.backoff_min;
                }
            }
            Err(HandshakeError::Io(error)) => {
                add(&shared.counters.dial_failures, 1);
                tracing::debug!(peer = peer.id, %addr, "dialling peer failed: {error}");
            }
            Err(error) => {
                add(&shared.counters.handshakes_refused, 1);
                tracing::warn!(peer = peer.id, %addr, "peer refused: {error}");
            }
        }
        tokio::time::sleep(jittered(backoff, &mut seed)).await;
        backoff = (backoff * 2).min(config.backoff_max);
    }
}

/// Connects to `addr`, sends this node's hello, and checks the answer
/// is `expected`'s, all within the handshake timeout.
async fn dial(
    shared: &Shared,
    expected: NodeId,
    addr: SocketAddr,
) -> Result<PeerStream, HandshakeError> {
    let io = |error: io::Error| HandshakeError::Io(error.to_string());
    let handshake = async {
        let tcp = TcpStream::connect(addr).await.map_err(io)?;
        tcp.set_nodelay(true).map_err(io)?;
        let mut stream = match &shared.tls {
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(PEER_NAME)
                    .expect("PEER_NAME is a valid DNS name");
                let session = tls.connector.connect(name, tcp).await;
                PeerStream::Tls(Box::new(
                    session.map_err(|e| HandshakeError::Tls(e.to_string()))?,
                ))
            }
            None => PeerStream::Plain(tcp),
        };
        send_hello(shared, &mut stream).await?;
        let theirs = read_hello(&mut stream).await?;
        theirs.check_cluster(shared.config.cluster_id)?;
        if theirs.node_id != expected {
            return Err(HandshakeError::WrongPeer {
                expected,
                found: theirs.node_id,
            });
        }
        Ok(stream)
    };
    tokio::time::timeout(shared.config.handshake_timeout, handshake)
        .await
        .unwrap_or(Err(HandshakeError::Timeout))
}

/// Sends this node's hello, flushed (TLS holds writes in its session).
async fn send_hello(shared: &Shared, stream: &mut PeerStream) -> Result<(), HandshakeError> {
    let io = |error: io::Error| HandshakeError::Io(error.to_string());
    let stream = stream.io();
    stream
        .write_all(&shared.my_hello().encode())
        .await
        .map_err(io)?;
    stream.flush().await.map_err(io)
}

async fn read_hello(stream: &mut PeerStream) -> Result<Hello, HandshakeError> {
    let mut bytes = [0u8; HELLO_LEN];
    stream
        .io()
        .read_exact(&mut bytes)
        .await
        .map_err(|error| HandshakeError::Io(error.to_string()))?;
    Hello::decode(&bytes)
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let connection = accept_one(Arc::clone(&shared), stream, addr);
                shared.spawn(connection);
            }
            Err(error) => {
                // Out of file descriptors and the like: wait, do not spin.
                tracing::warn!("accepting a peer connection failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The acceptor's half of the handshake: read the dialler's hello first
/// (a stranger learns nothing about this node), check it, then answer.
async fn accept_handshake(
    shared: &Shared,
    tcp: TcpStream,
) -> Result<(Arc<Peer>, PeerStream), HandshakeError> {
    let io = |error: io::Error| HandshakeError::Io(error.to_string());
    tcp.set_nodelay(true).map_err(io)?;
    let mut stream = match &shared.tls {
        Some(tls) => {
            let session = tls.acceptor.accept(tcp).await;
            PeerStream::Tls(Box::new(
                session.map_err(|e| HandshakeError::Tls(e.to_string()))?,
            ))
        }
        None => PeerStream::Plain(tcp),
    };
    let theirs = read_hello(&mut stream).await?;
    theirs.check_cluster(shared.config.cluster_id)?;
    let peer = shared
        .peer(theirs.node_id)
        .ok_or(HandshakeError::UnknownPeer(theirs.node_id))?;
    if theirs.node_id > shared.config.node_id {
        return Err(HandshakeError::WrongDirection(theirs.node_id));
    }
    send_hello(shared, &mut stream).await?;
    Ok((peer, stream))
}

async fn accept_one(shared: Arc<Shared>, tcp: TcpStream, addr: SocketAddr) {
    let handshake = accept_handshake(&shared, tcp);
    let accepted = tokio::time::timeout(shared.config.handshake_timeout, handshake)
        .await
        .unwrap_or(Err(HandshakeError::Timeout));
    let (peer, stream) = match accepted {
        Ok(accepted) => accepted,
        Err(error) => {
            add(&shared.counters.handshakes_refused, 1);
            tracing::warn!(%addr, "refused a peer connection: {error}");
            return;
        }
    };
    // A peer that restarted dials again while its old connection may
    // still look open here: the new one wins.
    peer.superseded.notify_waiters();
    add(&shared.counters.connections_established, 1);
    tracing::info!(peer = peer.id, %addr, "peer connected");
    let end = serve(&shared, &peer, stream).await;
    tracing::info!(peer = peer.id, %addr, "peer connection ended: {end}");
}

/// Runs a connection until either direction fails; then drops what was
/// queued for the peer (stale by the time a new connection is up; Raft
/// retransmits what still matters).
async fn serve(shared: &Shared, peer: &Peer, stream: PeerStream) -> ConnectionEnd {
    let superseded = peer.superseded.notified();
    let end = match stream {
        PeerStream::Plain(tcp) => {
            let (reader, writer) = tcp.into_split();
            let link = Arc::new(DirectLink::new(writer));
            *peer.link.lock() = Some(Arc::clone(&link));
            let end = tokio::select! {
                end = read_loop(shared, peer.id, reader) => end,
                end = write_loop_direct(shared, peer, &link) => end,
                () = superseded => ConnectionEnd::Superseded,
            };
            // A newer connection may have put its own link in already.
            let mut current = peer.link.lock();
            if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &link)) {
                *current = None;
            }
            end
        }
        PeerStream::Tls(session) => {
            let (reader, writer) = tokio::io::split(session);
            tokio::select! {
                end = read_loop(shared, peer.id, reader) => end,
                end = write_loop_tls(shared, peer, writer) => end,
                () = superseded => ConnectionEnd::Superseded,
            }
        }
    };
    if let ConnectionEnd::BadFrame(what) = &end {
        add(&shared.counters.bad_frames, 1);
        tracing::warn!(peer = peer.id, "closing the connection: {what}");
    }
    let dropped = peer.queue.clear();
    add(&shared.counters.messages_dropped, dropped as u64);
    end
}

async fn read_loop(
    shared: &Shared,
    peer: NodeId,
    mut reader: impl AsyncRead + Unpin,
) -> ConnectionEnd {
    let me = shared.config.node_id;
    let codec = &shared.config.codec;
    let counters = &shared.counters;
    let mut buffer = BytesMut::with_capacity(READ_CHUNK);
    let mut messages = Vec::new();
    loop {
        loop {
            let header = match peek_header(&buffer, codec) {
                Ok(Some(header)) => header,
                Ok(None) => break,
                Err(error) => return ConnectionEnd::BadFrame(error.to_string()),
            };
            if buffer.len() < header.frame_len {
                buffer.reserve(header.frame_len - buffer.len());
                break;
            }
            // The frame's bytes become shared and immutable; decoded
            // payloads are slices of them, never copies.
            let frame = buffer.split_to(header.frame_len).freeze();
            messages.clear();
            if let Err(error) = decode_messages(&frame, codec, &mut messages) {
                return ConnectionEnd::BadFrame(error.to_string());
            }
            for message in messages.drain(..) {
                if message.from != peer || message.to != me {
                    return ConnectionEnd::BadFrame(format!(
                        "a message from {} to {} on the link from {peer} to {me}",
                        message.from, message.to
                    ));
                }
                add(&counters.messages_received, 1);
                let message = match shared.intercept.get() {
                    Some(hook) => match hook(message) {
                        Some(message) => message,
                        None => continue,
                    },
                    None => message,
                };
                if shared.inbound.send(message).await.is_err() {
                    return ConnectionEnd::NodeGone;
                }
            }
        }
        if buffer.capacity() - buffer.len() < READ_CHUNK / 4 {
            buffer.reserve(READ_CHUNK);
        }
        match reader.read_buf(&mut buffer).await {
            Ok(0) => return ConnectionEnd::Closed,
            Ok(read) => add(&counters.bytes_received, read as u64),
            Err(error) => return ConnectionEnd::Io(error),
        }
    }
}
