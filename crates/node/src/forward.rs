//! Forwarding to the leader: a follower sends a client's write (or its
//! own request for a read index) to the leader's client port, over one
//! pipelined connection per leader, and relays the leader's reply.
//!
//! The leader treats a forwarded command like any client's, so the write
//! is acknowledged only once committed and applied. A connection whose
//! name is [`FORWARDER_NAME`] is never forwarded again: a node that
//! receives a forwarded command but is not the leader answers
//! `-TRYAGAIN` instead of starting a loop between two confused nodes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::resp::{self, Limits, Reply};

/// The client name forwarding connections announce.
pub const FORWARDER_NAME: &str = "drkv-forwarder";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const QUEUE_CALLS_MAX: usize = 16 << 10;

/// What a forwarded call returns: the leader's reply, or why there is
/// none (the connection failed: a write's outcome is then unknown).
pub type ForwardResult = Result<Reply, String>;

struct Call {
    request: Bytes,
    reply: oneshot::Sender<ForwardResult>,
}

type Waiting = Arc<Mutex<VecDeque<oneshot::Sender<ForwardResult>>>>;

/// One pipelined connection per leader address, made on first use and
/// again after a failure.
pub struct Forwarder {
    links: Mutex<HashMap<String, mpsc::Sender<Call>>>,
    runtime: Handle,
    limits: Limits,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").finish_non_exhaustive()
    }
}

impl Forwarder {
    /// A forwarder whose connections run on `runtime`.
    pub fn new(runtime: Handle, limits: Limits) -> Self {
        Self {
            links: Mutex::new(HashMap::new()),
            runtime,
            limits,
        }
    }

    /// Sends `arguments` to `addr` now; the reply arrives on the returned
    /// receiver (calls to one address are answered in order).
    pub fn call(&self, addr: &str, arguments: &[Bytes]) -> oneshot::Receiver<ForwardResult> {
        let (reply, answer) = oneshot::channel();
        let mut request = BytesMut::new();
        resp::encode_request(arguments, &mut request);
        let mut call = Call {
            request: request.freeze(),
            reply,
        };
        let mut links = self.links.lock();
        for _ in 0..2 {
            let link = links
                .entry(addr.to_owned())
                .or_insert_with(|| self.open_link(addr));
            match link.try_send(call) {
                Ok(()) => return answer,
                Err(mpsc::error::TrySendError::Full(refused)) => {
                    let _ = refused
                        .reply
                        .send(Err("too many forwarded calls queued".into()));
                    return answer;
                }
                // The link failed since: make a new one.
                Err(mpsc::error::TrySendError::Closed(refused)) => {
                    links.remove(addr);
                    call = refused;
                }
            }
        }
        let _ = call.reply.send(Err("cannot open a link".into()));
        answer
    }

    fn open_link(&self, addr: &str) -> mpsc::Sender<Call> {
        let (sender, calls) = mpsc::channel(QUEUE_CALLS_MAX);
        let addr = addr.to_owned();
        let limits = self.limits;
        self.runtime.spawn(async move {
            if let Err(error) = run_link(&addr, calls, limits).await {
                tracing::debug!(%addr, %error, "forwarding link closed");
            }
        });
        sender
    }
}

async fn run_link(
    addr: &str,
    mut calls: mpsc::Receiver<Call>,
    limits: Limits,
) -> Result<(), String> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            return fail_queued(
                &mut calls,
                format!("cannot reach the leader at {addr}: {error}"),
            );
        }
        Err(_) => return fail_queued(&mut calls, format!("the leader at {addr} did not answer")),
    };
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    let waiting: Waiting = Arc::default();
    let mut reading = tokio::spawn(read_replies(reader, Arc::clone(&waiting), limits));
    let result = tokio::select! {
        result = write_calls(writer, &mut calls, &waiting) => result,
        result = &mut reading => result.unwrap_or_else(|e| Err(e.to_string())),
    };
    reading.abort();
    calls.close();
    let error = result.err().unwrap_or_else(|| "link closed".into());
    for reply in waiting.lock().drain(..) {
        let _ = reply.send(Err(error.clone()));
    }
    fail_queued(&mut calls, error)
}

fn fail_queued(calls: &mut mpsc::Receiver<Call>, error: String) -> Result<(), String> {
    calls.close();
    while let Ok(call) = calls.try_recv() {
        let _ = call.reply.send(Err(error.clone()));
    }
    Err(error)
}

async fn write_calls(
    mut writer: OwnedWriteHalf,
    calls: &mut mpsc::Receiver<Call>,
    waiting: &Waiting,
) -> Result<(), String> {
    let mut out = BytesMut::new();
    let name = [
        Bytes::from_static(b"CLIENT"),
        Bytes::from_static(b"SETNAME"),
        Bytes::from_static(FORWARDER_NAME.as_bytes()),
    ];
    resp::encode_request(&name, &mut out);
    let (discard, _) = oneshot::channel();
    waiting.lock().push_back(discard);
    while let Some(call) = calls.recv().await {
        let mut batch = vec![call];
        while let Ok(more) = calls.try_recv() {
            batch.push(more);
        }
        {
            let mut waiting = waiting.lock();
            for call in batch {
                out.extend_from_slice(&call.request);
                waiting.push_back(call.reply);
            }
        }
        writer
            .write_all(&out)
            .await
            .map_err(|e| format!("sending to the leader: {e}"))?;
        out.clear();
    }
    Ok(())
}

async fn read_replies(
    mut reader: OwnedReadHalf,
    waiting: Waiting,
    limits: Limits,
) -> Result<(), String> {
    let mut input = BytesMut::with_capacity(16 << 10);
    loop {
        let read = reader
            .read_buf(&mut input)
            .await
            .map_err(|e| format!("reading from the leader: {e}"))?;
        if read == 0 {
            return Err("the leader closed the connection".into());
        }
        while let Some(reply) = resp::parse_reply(&mut input, &limits).map_err(|e| e.to_string())? {
            let Some(sender) = waiting.lock().pop_front() else {
                return Err("a reply nobody asked for".into());
            };
            let _ = sender.send(Ok(reply));
        }
    }
}
