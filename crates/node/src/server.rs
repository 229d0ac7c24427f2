//! The client port: Redis-protocol connections, and the executor that
//! carries a parsed command to the engine, or to the leader, and brings
//! the reply back.
//!
//! A connection parses every complete request in its buffer, starts them
//! all (so a pipeline's writes share one log write), then answers them in
//! order. During an election a command waits, up to the request timeout,
//! for a leader instead of failing at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::command::{self, Command, ConnectionCommand, ReadOp};
use crate::forward::{FORWARDER_NAME, ForwardResult, Forwarder};
use crate::kv;
use crate::metrics::bump;
use crate::resp::{self, Limits, Protocol, Reply};
use crate::runtime::{EngineHandle, NodeError, Request};

/// Bounds on clients.
#[derive(Clone, Copy, Debug)]
pub struct ClientLimits {
    /// Request size and argument count.
    pub request: Limits,
    /// Connections served at once; more are refused with an error.
    pub connections_max: usize,
    /// How long a command may wait for a leader and its commit.
    pub request_timeout: Duration,
    /// How long a started request may take to arrive in full (slowloris).
    pub partial_request_timeout: Duration,
    /// How long a connection may sit idle (zero: forever).
    pub idle_timeout: Duration,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            request: Limits::default(),
            connections_max: 10_000,
            request_timeout: Duration::from_secs(5),
            partial_request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::ZERO,
        }
    }
}

/// Carries commands to the engine or the leader.
#[derive(Clone, Debug)]
pub struct Executor {
    engine: EngineHandle,
    forwarder: Arc<Forwarder>,
    limits: ClientLimits,
}

/// A command on its way; [`Executor::finish`] waits for its reply.
#[derive(Debug)]
pub enum Started {
    /// Answered already.
    Done(Reply),
    /// With the engine.
    Local {
        /// The engine's answer.
        answer: oneshot::Receiver<Result<Reply, NodeError>>,
        /// For a retry.
        retry: Retry,
    },
    /// With the leader.
    Forwarded {
        /// The leader's answer.
        answer: oneshot::Receiver<ForwardResult>,
        /// For a retry.
        retry: Retry,
    },
}

/// What a retry needs.
#[derive(Debug)]
pub struct Retry {
    command: Command,
    arguments: Vec<Bytes>,
    deadline: Instant,
    may_forward: bool,
}

const RETRY_PAUSE: Duration = Duration::from_millis(20);

impl Executor {
    /// An executor for this engine.
    pub fn new(engine: EngineHandle, forwarder: Arc<Forwarder>, limits: ClientLimits) -> Self {
        Self {
            engine,
            forwarder,
            limits,
        }
    }

    /// The engine it talks to.
    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    /// Parses and runs one request to its reply.
    pub async fn execute(&self, arguments: Vec<Bytes>) -> Reply {
        match command::parse(&arguments) {
            Ok(command) => {
                let started = self.start(command, arguments, true);
                self.finish(started).await
            }
            Err(reply) => reply,
        }
    }

    /// Starts a data command now (connection commands are the
    /// connection's). `may_forward`: false for commands a follower
    /// forwarded here, which must not travel further.
    pub fn start(&self, command: Command, arguments: Vec<Bytes>, may_forward: bool) -> Started {
        let retry = Retry {
            command,
            arguments,
            deadline: Instant::now() + self.limits.request_timeout,
            may_forward,
        };
        self.start_retry(retry)
    }

    fn start_retry(&self, retry: Retry) -> Started {
        if retry.may_forward && is_leader_work(&retry.command) {
            let leader_addr = {
                let status = self.engine.status.lock();
                (status.role != "leader")
                    .then(|| status.leader_client_addr.clone())
                    .flatten()
            };
            if let Some(addr) = leader_addr {
                return self.forward(&addr, retry);
            }
        }
        if let Command::Read(op) = &retry.command
            && let Some(reply) = self.read_on_lease(op)
        {
            return Started::Done(reply);
        }
        let (answer_tx, answer) = oneshot::channel();
        let request = match &retry.command {
            Command::Write { op, shape } => Request::Write {
                op: op.clone(),
                shape: *shape,
                answer: answer_tx,
            },
            Command::Read(op) => Request::Read {
                op: op.clone(),
                answer: answer_tx,
            },
            Command::ConfChange(op) => Request::ConfChange {
                op: *op,
                answer: answer_tx,
            },
            Command::TransferLeader(target) => Request::TransferLeader {
                target: *target,
                answer: answer_tx,
            },
            Command::Info(sections) => return Started::Done(self.info(sections)),
            Command::Connection(_) => {
                return Started::Done(Reply::err(
                    "internal: a connection command reached the executor",
                ));
            }
        };
        if self.engine.requests.try_send(request).is_err() {
            return Started::Done(NodeError::TryAgain("the node is overloaded".into()).reply());
        }
        Started::Local { answer, retry }
    }

    /// Answers a single-key read from the store on this thread, when this
    /// node leads with a lease published for connections (see
    /// `LeaseGate`); `None` sends it the usual way, through the engine.
    /// Reads of several keys take the engine's way: they must see one
    /// state, and separate point reads could straddle a write.
    fn read_on_lease(&self, op: &ReadOp) -> Option<Reply> {
        let key = match op {
            ReadOp::Get(key) | ReadOp::Strlen(key) => key,
            _ => return None,
        };
        let gate = &self.engine.lease;
        if !gate.open() {
            return None;
        }
        let value = self.engine.reader.get(&kv::user_key(key)).ok()?;
        // Still the only leader after the read: it read a state no
        // acknowledged write is missing from.
        if !gate.still_valid() {
            return None;
        }
        bump(&self.engine.metrics.lease_reads);
        Some(match op {
            ReadOp::Strlen(_) => Reply::Integer(value.map_or(0, |v| v.len() as i64)),
            _ => Reply::bulk_or_null(value),
        })
    }

    fn forward(&self, addr: &str, retry: Retry) -> Started {
        bump(&self.engine.metrics.writes_forwarded);
        let answer = self.forwarder.call(addr, &retry.arguments);
        Started::Forwarded { answer, retry }
    }

    /// Waits for a started command's reply, retrying what is safe to
    /// retry until the deadline.
    pub async fn finish(&self, mut started: Started) -> Reply {
        loop {
            started = match started {
                Started::Done(reply) => return reply,
                Started::Local { answer, retry } => {
                    match tokio::time::timeout_at(retry.deadline, answer).await {
                        Ok(Ok(Ok(reply))) => return reply,
                        Ok(Ok(Err(error))) => match self.after_error(error, retry).await {
                            Ok(next) => next,
                            Err(reply) => return reply,
                        },
                        Ok(Err(_)) => {
                            return NodeError::Uncertain("the node is shutting down".into())
                                .reply();
                        }
                        Err(_) => return timed_out(&retry.command),
                    }
                }
                Started::Forwarded { answer, retry } => {
                    match tokio::time::timeout_at(retry.deadline, answer).await {
                        Ok(Ok(Ok(Reply::Error(text)))) if text.starts_with("TRYAGAIN") => {
                            match self.pause(retry).await {
                                Some(retry) => self.start_retry(retry),
                                None => return Reply::Error(text),
                            }
                        }
                        Ok(Ok(Ok(reply))) => return reply,
                        Ok(Ok(Err(error))) => return lost_leader(&retry.command, &error),
                        Ok(Err(_)) => return lost_leader(&retry.command, "the link closed"),
                        Err(_) => return timed_out(&retry.command),
                    }
                }
            };
        }
    }

    async fn after_error(&self, error: NodeError, retry: Retry) -> Result<Started, Reply> {
        match &error {
            NodeError::NotLeader {
                client_addr: Some(addr),
                ..
            } if retry.may_forward && is_leader_work(&retry.command) => {
                Ok(self.forward(addr, retry))
            }
            NodeError::NotLeader { .. } | NodeError::TryAgain(_) => match self.pause(retry).await {
                Some(retry) => Ok(self.start_retry(retry)),
                None => Err(error.reply()),
            },
            NodeError::Uncertain(_) | NodeError::Refused(_) => Err(error.reply()),
        }
    }

    /// Waits a moment before a retry; `None` when the deadline is too
    /// close (or the command came from another node, which retries).
    async fn pause(&self, retry: Retry) -> Option<Retry> {
        if !retry.may_forward || Instant::now() + RETRY_PAUSE >= retry.deadline {
            return None;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
        Some(retry)
    }

    /// `INFO`: the node's state in Redis's `key:value` sections; only
    /// `sections` when any are named (`all`, `everything` and `default`
    /// name every one).
    pub fn info(&self, sections: &[String]) -> Reply {
        let status = self.engine.status.lock().clone();
        let list = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let text = format!(
            "# Server\r\nredis_version:7.2.0\r\ndrkv_version:{}\r\nnode_id:{}\r\ncluster_id:{}\r\n\r\n\
             # Replication\r\nrole:{}\r\nraft_role:{}\r\nterm:{}\r\nleader_id:{}\r\nleader_client_addr:{}\r\n\
             commit_index:{}\r\napplied_index:{}\r\nlast_index:{}\r\nsnapshot_index:{}\r\n\
             voters:{}\r\nlearners:{}\r\n\r\n# Keyspace\r\ndb0:keys={}\r\n\r\n# Stats\r\n\
             connected_clients:{}\r\ntotal_commands_processed:{}\r\n",
            env!("CARGO_PKG_VERSION"),
            status.id,
            status.cluster_id,
            if status.role == "leader" {
                "master"
            } else {
                "slave"
            },
            status.role,
            status.term,
            status.leader.map_or_else(String::new, |id| id.to_string()),
            status.leader_client_addr.unwrap_or_default(),
            status.commit_index,
            status.applied_index,
            status.last_index,
            status.snapshot_index,
            list(&status.voters),
            list(&status.learners),
            status.keys,
            self.engine.metrics.clients_connected.load(Relaxed),
            self.engine.metrics.commands.load(Relaxed),
        );
        Reply::bulk(info_sections(&text, sections))
    }
}

/// The named sections of an `INFO` text (each starts with `# Name` and
/// ends with a blank line); all of it when none, or `all`, `everything`
/// or `default`, is named.
fn info_sections(text: &str, sections: &[String]) -> String {
    let everything = ["all", "everything", "default"];
    if sections.is_empty() || sections.iter().any(|s| everything.contains(&s.as_str())) {
        return text.to_owned();
    }
    text.split_inclusive("\r\n\r\n")
        .filter(|section| {
            let name = section
                .trim_start_matches("# ")
                .split("\r\n")
                .next()
                .unwrap_or_default();
            sections
                .iter()
                .any(|wanted| wanted.eq_ignore_ascii_case(name))
        })
        .collect()
}

/// Writes and membership work go to the leader; reads stay here (a
/// follower confirms them with a read index from the leader).
fn is_leader_work(command: &Command) -> bool {
    matches!(
        command,
        Command::Write { .. } | Command::ConfChange(_) | Command::TransferLeader(_)
    )
}

fn timed_out(command: &Command) -> Reply {
    match command {
        Command::Write { .. } | Command::ConfChange(_) => {
            NodeError::Uncertain("timed out waiting for the commit".into()).reply()
        }
        _ => NodeError::TryAgain("timed out (no leader, or no quorum)".into()).reply(),
    }
}

fn lost_leader(command: &Command, error: &str) -> Reply {
    match command {
        Command::Write { .. } | Command::ConfChange(_) => {
            NodeError::Uncertain(format!("lost the leader: {error}")).reply()
        }
        _ => NodeError::TryAgain(format!("lost the leader: {error}")).reply(),
    }
}

/// Accepts clients until `shutdown`, then waits for the open connections
/// to finish what they started.
pub async fn serve_clients(
    listener: TcpListener,
    executor: Executor,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = executor.limits;
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    let next_id = Arc::new(AtomicU64::new(1));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (mut stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting a client failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let metrics = &executor.engine.metrics;
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            bump(&metrics.clients_refused);
            tokio::spawn(async move {
                let _ = stream
                    .write_all(b"-ERR max number of clients reached\r\n")
                    .await;
            });
            continue;
        };
        bump(&metrics.clients_accepted);
        let connection = Connection {
            id: next_id.fetch_add(1, Relaxed),
            executor: executor.clone(),
            protocol: Protocol::Resp2,
            name: None,
            shutdown: shutdown.clone(),
        };
        connections.spawn(async move {
            let metrics = Arc::clone(&connection.executor.engine.metrics);
            metrics.clients_connected.fetch_add(1, Relaxed);
            if let Err(why) = connection.run(stream).await {
                bump(&metrics.clients_dropped);
                tracing::debug!(%peer, why, "client connection closed");
            }
            metrics.clients_connected.fetch_sub(1, Relaxed);
            drop(slot);
        });
    }
    tracing::info!("client port closed; finishing open connections");
    while connections.join_next().await.is_some() {}
}

struct Connection {
    id: u64,
    executor: Executor,
    protocol: Protocol,
    name: Option<Bytes>,
    shutdown: watch::Receiver<bool>,
}

enum Next {
    Continue,
    Quit,
}

impl Connection {
    async fn run(mut self, mut stream: TcpStream) -> Result<(), String> {
        let _ = stream.set_nodelay(true);
        let limits = self.executor.limits;
        let mut input = BytesMut::with_capacity(16 << 10);
        let mut output = BytesMut::with_capacity(16 << 10);
        loop {
            if !self.read_more(&mut stream, &mut input).await? {
                return Ok(());
            }
            let mut started = Vec::new();
            let mut next = Next::Continue;
            let mut fatal = None;
            let mut writes_pending = false;
            while matches!(next, Next::Continue) {
                match resp::parse_request(&mut input, &limits.request) {
                    Ok(Some(arguments)) if arguments.is_empty() => {}
                    Ok(Some(arguments)) => {
                        let parsed = command::parse(&arguments);
                        // Commands of one connection take effect in order:
                        // a read waits for the writes before it.
                        let reads = matches!(parsed, Ok(Command::Read(_) | Command::Info(_)));
                        if reads && writes_pending {
                            self.answer(&mut started, &mut output).await;
                            writes_pending = false;
                        }
                        writes_pending |=
                            matches!(parsed, Ok(Command::Write { .. } | Command::ConfChange(_)));
                        let (item, after) = self.start(arguments, parsed);
                        started.push((item, self.protocol));
                        next = after;
                    }
                    Ok(None) => break,
                    Err(error) => {
                        fatal = Some(error);
                        break;
                    }
                }
            }
            self.answer(&mut started, &mut output).await;
            if let Some(error) = &fatal {
                Reply::Error(error.reply()).encode(self.protocol, &mut output);
            }
            stream.write_all(&output).await.map_err(|e| e.to_string())?;
            output.clear();
            if let Some(error) = fatal {
                return Err(format!("protocol error: {error}"));
            }
            if matches!(next, Next::Quit) {
                return Ok(());
            }
        }
    }

    /// Reads more input. False: the client left (or the node is shutting
    /// down and this connection has nothing in progress).
    async fn read_more(
        &mut self,
        stream: &mut TcpStream,
        input: &mut BytesMut,
    ) -> Result<bool, String> {
        let limits = self.executor.limits;
        let idle = input.is_empty();
        let timeout = if !idle {
            Some(limits.partial_request_timeout)
        } else {
            Some(limits.idle_timeout).filter(|t| !t.is_zero())
        };
        let read = async {
            match timeout {
                Some(timeout) => tokio::time::timeout(timeout, stream.read_buf(input)).await,
                None => Ok(stream.read_buf(input).await),
            }
        };
        // Bytes already here are read first: a shutdown only closes a
        // connection that has nothing more to say.
        tokio::select! {
            biased;
            read = read => match read {
                Ok(Ok(0)) if idle => Ok(false),
                Ok(Ok(0)) => Err("the client left mid-request".into()),
                Ok(Ok(_)) => Ok(true),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) if idle => Err("idle too long".into()),
                Err(_) => Err("a request arrived too slowly".into()),
            },
            _ = self.shutdown.changed(), if idle => Ok(false),
        }
    }

    /// Waits for every started command's reply, in order.
    async fn answer(&self, started: &mut Vec<(Started, Protocol)>, output: &mut BytesMut) {
        for (item, protocol) in started.drain(..) {
            let reply = self.executor.finish(item).await;
            reply.encode(protocol, output);
        }
    }

    fn start(&mut self, arguments: Vec<Bytes>, parsed: Result<Command, Reply>) -> (Started, Next) {
        bump(&self.executor.engine.metrics.commands);
        let command = match parsed {
            Ok(command) => command,
            Err(reply) => return (Started::Done(reply), Next::Continue),
        };
        let Command::Connection(command) = command else {
            let may_forward = self.name.as_deref() != Some(FORWARDER_NAME.as_bytes());
            return (
                self.executor.start(command, arguments, may_forward),
                Next::Continue,
            );
        };
        let reply = match command {
            ConnectionCommand::Quit => return (Started::Done(Reply::OK), Next::Quit),
            ConnectionCommand::Ping(None) => Reply::Simple("PONG"),
            ConnectionCommand::Ping(Some(message)) | ConnectionCommand::Echo(message) => {
                Reply::Bulk(message)
            }
            ConnectionCommand::Hello { version, name } => self.hello(version, name),
            ConnectionCommand::SetName(name) => {
                self.name = Some(name);
                Reply::OK
            }
            ConnectionCommand::GetName => Reply::bulk_or_null(self.name.clone()),
            ConnectionCommand::Id => Reply::Integer(self.id as i64),
            ConnectionCommand::ClientOk | ConnectionCommand::Select => Reply::OK,
            ConnectionCommand::CommandInfo(sub) => match sub.map(|s| s.to_ascii_uppercase()) {
                Some(sub) if sub == b"COUNT" => Reply::Integer(0),
                _ => Reply::Array(Vec::new()),
            },
        };
        (Started::Done(reply), Next::Continue)
    }

    fn hello(&mut self, version: Option<Bytes>, name: Option<Bytes>) -> Reply {
        match version.as_deref() {
            None => {}
            Some(b"2") => self.protocol = Protocol::Resp2,
            Some(b"3") => self.protocol = Protocol::Resp3,
            Some(other) if kv::parse_integer(other).is_some() => {
                return Reply::Error("NOPROTO unsupported protocol version".into());
            }
            Some(_) => return Reply::err("Protocol version is not an integer or out of range"),
        }
        if let Some(name) = name {
            self.name = Some(name);
        }
        let role = if self.executor.engine.status.lock().role == "leader" {
            "master"
        } else {
            "replica"
        };
        let protocol = match self.protocol {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        };
        Reply::Map(vec![
            (Reply::bulk("server"), Reply::bulk("drkv")),
            (
                Reply::bulk("version"),
                Reply::bulk(env!("CARGO_PKG_VERSION")),
            ),
            (Reply::bulk("proto"), Reply::Integer(protocol)),
            (Reply::bulk("id"), Reply::Integer(self.id as i64)),
            (Reply::bulk("mode"), Reply::bulk("standalone")),
            (Reply::bulk("role"), Reply::bulk(role)),
            (Reply::bulk("modules"), Reply::Array(Vec::new())),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::info_sections;

    #[test]
    fn info_keeps_only_the_sections_asked_for() {
        let text = "# Server\r\na:1\r\n\r\n# Replication\r\nrole:master\r\n\r\n# Stats\r\nb:2\r\n";
        let only = |names: &[&str]| {
            info_sections(
                text,
                &names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            only(&["replication"]),
            "# Replication\r\nrole:master\r\n\r\n"
        );
        assert_eq!(
            only(&["stats", "server"]),
            "# Server\r\na:1\r\n\r\n# Stats\r\nb:2\r\n"
        );
        assert_eq!(only(&[]), text);
        assert_eq!(only(&["all"]), text);
        assert_eq!(only(&["nothing"]), "");
    }
}
