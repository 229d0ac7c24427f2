//! The client port: accepting Redis-protocol connections (plain TCP or
//! TLS), who they are (`AUTH`, `HELLO ... AUTH`, protected mode), what
//! they may do (`NOAUTH`, `NOPERM`), and each connection's loop.
//!
//! A connection parses every complete request in its buffer, starts them
//! all (so a pipeline's writes share one log write), then answers them in
//! order. During an election a command waits, up to the request timeout,
//! for a leader instead of failing at once. On shutdown a connection
//! finishes the commands it started (within [`SHUTDOWN_GRACE`]) and
//! drops a request that had not arrived in full.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::auth::{Permission, User, Users};
use crate::command::{self, Command, ConnectionCommand};
use crate::kv;
use crate::metrics::bump;
use crate::resp::{self, Protocol, Reply};
use crate::server::{DeadlineTimer, Executor, Started};

mod transaction;

use transaction::{ExecStarted, Route, TxState};

/// How long open connections may take to finish what they started once
/// the node stops; then they are closed.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long a wrong password holds its connection's answer back.
pub const WRONG_PASSWORD_DELAY: Duration = Duration::from_millis(100);
/// How long a client has to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) const NOAUTH: &str = "NOAUTH Authentication required.";
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
const DENIED: &str = "DENIED drkv is running in protected mode because protected mode is enabled \
    and no password is set for the default user. In this mode connections are only accepted \
    from the loopback interface. To connect from other computers: 1) set a password \
    (`requirepass` or `users` in the configuration file; `drkv passwd` makes the hash), or \
    2) start the server with --protected-mode=false, only if the network is trusted.";

/// Who may use the client port, and how it is protected.
pub struct ClientAccess {
    /// The users, and whether clients must authenticate.
    pub users: Users,
    /// With no password configured, refuse clients not on loopback.
    pub protected_mode: bool,
    /// TLS on the client port (`None`: plain TCP).
    pub tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for ClientAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAccess")
            .field("users", &self.users)
            .field("protected_mode", &self.protected_mode)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// One open connection as `CLIENT LIST` shows it.
#[derive(Clone, Debug)]
struct ClientEntry {
    addr: SocketAddr,
    name: Option<Bytes>,
    user: Option<String>,
    since: Instant,
    protocol: Protocol,
}

type Registry = Arc<Mutex<BTreeMap<u64, ClientEntry>>>;

/// Whether `addr` is this machine's loopback (also as IPv4 in IPv6): the
/// one test protected mode, the admin port's open door and its start-up
/// check all use.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// Accepts clients until `shutdown`, then gives the open connections
/// [`SHUTDOWN_GRACE`] to finish what they started and closes the rest.
pub async fn serve_clients(
    listener: TcpListener,
    executor: Executor,
    access: Arc<ClientAccess>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = *executor.limits();
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    let next_id = Arc::new(AtomicU64::new(1));
    let registry: Registry = Arc::default();
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
        let metrics = Arc::clone(&executor.engine().metrics);
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
        let _ = stream.set_nodelay(true);
        let id = next_id.fetch_add(1, Relaxed);
        let connection = Connection {
            id,
            peer,
            executor: executor.clone(),
            access: Arc::clone(&access),
            user: access.users.anonymous(),
            protocol: Protocol::Resp2,
            name: None,
            penalty: false,
            registry: Arc::clone(&registry),
            shutdown: shutdown.clone(),
            tx: TxState::default(),
            deadlines: DeadlineTimer::new(),
        };
        connections.spawn(async move {
            metrics.clients_connected.fetch_add(1, Relaxed);
            connection.register();
            let registry = Arc::clone(&connection.registry);
            let result = match &connection.access.tls {
                None => connection.serve(stream).await,
                Some(tls) => {
                    let tls = tls.clone();
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(stream)) => connection.serve(stream).await,
                        Ok(Err(error)) => Err(format!("TLS handshake failed: {error}")),
                        Err(_) => Err("TLS handshake timed out".into()),
                    }
                }
            };
            if let Err(why) = result {
                bump(&metrics.clients_dropped);
                tracing::debug!(%peer, why, "client connection closed");
            }
            registry.lock().remove(&id);
            metrics.clients_connected.fetch_sub(1, Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!(
        open = connections.len(),
        "client port closed; finishing open connections"
    );
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            open = connections.len(),
            "closing the connections still open"
        );
        connections.shutdown().await;
    }
}

struct Connection {
    id: u64,
    peer: SocketAddr,
    executor: Executor,
    access: Arc<ClientAccess>,
    /// Who the client is; `None` until it authenticates (when required).
    user: Option<Arc<User>>,
    protocol: Protocol,
    name: Option<Bytes>,
    /// A wrong password was given: hold the answer back a moment.
    penalty: bool,
    registry: Registry,
    shutdown: watch::Receiver<bool>,
    /// `MULTI`'s queue and the watched keys.
    tx: TxState,
    /// The deadlines of the commands it waits for.
    deadlines: DeadlineTimer,
}

/// A command on its way to its reply.
enum Pending {
    /// Any command.
    Plain(Started),
    /// `EXEC`.
    Exec(ExecStarted),
}

enum Next {
    Continue,
    Quit,
}

impl Connection {
    fn register(&self) {
        let entry = ClientEntry {
            addr: self.peer,
            name: self.name.clone(),
            user: self.user.as_ref().map(|u| u.name.clone()),
            since: Instant::now(),
            protocol: self.protocol,
        };
        self.registry.lock().insert(self.id, entry);
    }

    fn update_registry(&self) {
        if let Some(entry) = self.registry.lock().get_mut(&self.id) {
            entry.name.clone_from(&self.name);
            entry.user = self.user.as_ref().map(|u| u.name.clone());
            entry.protocol = self.protocol;
        }
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(self, mut stream: S) -> Result<(), String> {
        let refused =
            self.access.protected_mode && !self.access.users.required() && !is_loopback(&self.peer);
        if refused {
            tracing::warn!(peer = %self.peer, "refused a client from outside loopback (protected mode)");
            let mut out = BytesMut::new();
            Reply::Error(DENIED.into()).encode(Protocol::Resp2, &mut out);
            let _ = stream.write_all(&out).await;
            return Ok(());
        }
        self.run(stream).await
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(mut self, mut stream: S) -> Result<(), String> {
        let limits = *self.executor.limits();
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
                        match self.route(&arguments) {
                            Route::Normal => {}
                            Route::Answer(reply) => {
                                bump(&self.executor.engine().metrics.commands);
                                started.push((Pending::Plain(Started::Done(reply)), self.protocol));
                                continue;
                            }
                            Route::Watch(keys) => {
                                // A read: after everything before it.
                                bump(&self.executor.engine().metrics.commands);
                                self.answer(&mut started, &mut output).await;
                                writes_pending = false;
                                let reply = self.watch(keys).await;
                                started.push((Pending::Plain(Started::Done(reply)), self.protocol));
                                continue;
                            }
                            Route::Exec(exec) => {
                                bump(&self.executor.engine().metrics.commands);
                                writes_pending = true;
                                started.push((Pending::Exec(exec), self.protocol));
                                continue;
                            }
                        }
                        let parsed = self.admit(&arguments);
                        // Commands of one connection take effect in order:
                        // a read waits for the writes before it.
                        let reads = matches!(parsed, Ok(Command::Read(_) | Command::Info(_)));
                        if reads && writes_pending {
                            self.answer(&mut started, &mut output).await;
                            writes_pending = false;
                        }
                        writes_pending |= matches!(parsed, Ok(Command::Write { .. }));
                        let (item, after) = self.start(parsed);
                        started.push((Pending::Plain(item), self.protocol));
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
            if std::mem::take(&mut self.penalty) {
                tokio::time::sleep(WRONG_PASSWORD_DELAY).await;
            }
            stream.write_all(&output).await.map_err(|e| e.to_string())?;
            output.clear();
            if let Some(error) = fatal {
                return Err(format!("protocol error: {error}"));
            }
            if matches!(next, Next::Quit) {
                let _ = stream.shutdown().await;
                return Ok(());
            }
        }
    }

    /// Parses a request, and refuses it when the client is not
    /// authenticated (all but `AUTH`, `HELLO` and `QUIT`) or its user
    /// lacks the permission.
    fn admit(&self, arguments: &[Bytes]) -> Result<Command, Reply> {
        let Some(user) = &self.user else {
            let name = arguments[0].to_ascii_lowercase();
            if !matches!(name.as_slice(), b"auth" | b"hello" | b"quit") {
                bump(&self.executor.engine().metrics.commands_denied);
                return Err(Reply::Error(NOAUTH.into()));
            }
            return command::parse(arguments);
        };
        let command = command::parse(arguments)?;
        let needed = match &command {
            Command::Read(_) => Permission::Read,
            Command::Write { .. } => Permission::Write,
            // Never parsed from a client; refused all the same.
            Command::ConfChange(_) | Command::TransferLeader(_) => Permission::All,
            Command::Connection(ConnectionCommand::AclList | ConnectionCommand::ClientList) => {
                Permission::Admin
            }
            Command::Transaction(command::TxCommand::Watch(_)) => Permission::Read,
            Command::Info(_) | Command::Connection(_) | Command::Transaction(_) => {
                return Ok(command);
            }
        };
        if user.permissions.allow(needed) {
            return Ok(command);
        }
        bump(&self.executor.engine().metrics.commands_denied);
        let name = String::from_utf8_lossy(&arguments[0][..arguments[0].len().min(64)])
            .to_ascii_lowercase();
        Err(Reply::Error(format!(
            "NOPERM User {} has no permissions to run the '{name}' command",
            user.name
        )))
    }

    /// Reads more input. False: the client left, or the node is stopping
    /// (a request that had not arrived in full is dropped: it never
    /// started).
    async fn read_more<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        input: &mut BytesMut,
    ) -> Result<bool, String> {
        let limits = *self.executor.limits();
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
        if *self.shutdown.borrow() {
            return Ok(false);
        }
        // Bytes already here are read first.
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
            _ = self.shutdown.changed() => Ok(false),
        }
    }

    /// Waits for every started command's reply, in order.
    async fn answer(&mut self, started: &mut Vec<(Pending, Protocol)>, output: &mut BytesMut) {
        for (item, protocol) in started.drain(..) {
            let reply = match item {
                Pending::Plain(item) => self.executor.finish_timed(item, &mut self.deadlines).await,
                Pending::Exec(exec) => self.finish_exec(exec).await,
            };
            reply.encode(protocol, output);
        }
    }

    fn start(&mut self, parsed: Result<Command, Reply>) -> (Started, Next) {
        bump(&self.executor.engine().metrics.commands);
        let command = match parsed {
            Ok(command) => command,
            Err(reply) => return (Started::Done(reply), Next::Continue),
        };
        let command = match command {
            Command::Info(sections) if !self.may(Permission::Admin) => {
                // Without `admin`, only what clients probe on connect.
                let _ = sections;
                Command::Info(vec!["server".into()])
            }
            Command::Connection(command) => {
                let (reply, next) = self.connection_command(command);
                return (Started::Done(reply), next);
            }
            // Only `UNWATCH` queued in a transaction comes here (its
            // `EXEC` has already forgotten the watched keys).
            Command::Transaction(_) => return (Started::Done(Reply::OK), Next::Continue),
            command => command,
        };
        (self.executor.start(command), Next::Continue)
    }

    fn may(&self, permission: Permission) -> bool {
        self.user
            .as_ref()
            .is_some_and(|user| user.permissions.allow(permission))
    }

    fn connection_command(&mut self, command: ConnectionCommand) -> (Reply, Next) {
        let reply = match command {
            ConnectionCommand::Quit => return (Reply::OK, Next::Quit),
            ConnectionCommand::Ping(None) => Reply::Simple("PONG"),
            ConnectionCommand::Ping(Some(message)) | ConnectionCommand::Echo(message) => {
                Reply::Bulk(message)
            }
            ConnectionCommand::Hello {
                version,
                auth,
                name,
            } => self.hello(version, auth, name),
            ConnectionCommand::Auth { user, password } => {
                match self.authenticate(user, &password) {
                    Ok(()) => Reply::OK,
                    Err(reply) => reply,
                }
            }
            ConnectionCommand::AclWhoami => match &self.user {
                Some(user) => Reply::bulk(user.name.clone()),
                None => Reply::Error(NOAUTH.into()),
            },
            ConnectionCommand::AclList => Reply::Array(
                self.access
                    .users
                    .acl_list()
                    .into_iter()
                    .map(Reply::bulk)
                    .collect(),
            ),
            ConnectionCommand::AclUsers => Reply::Array(
                self.access
                    .users
                    .names()
                    .map(|name| Reply::bulk(name.to_owned()))
                    .collect(),
            ),
            ConnectionCommand::ClientList => Reply::bulk(self.client_list()),
            ConnectionCommand::SetName(name) => {
                self.name = Some(name);
                self.update_registry();
                Reply::OK
            }
            ConnectionCommand::GetName => Reply::bulk_or_null(self.name.clone()),
            ConnectionCommand::Id => Reply::Integer(self.id as i64),
            ConnectionCommand::ClientOk | ConnectionCommand::Select => Reply::OK,
            ConnectionCommand::Time => {
                let micros = crate::clock::NodeClock.unix_micros();
                Reply::Array(vec![
                    Reply::bulk((micros / 1_000_000).to_string()),
                    Reply::bulk((micros % 1_000_000).to_string()),
                ])
            }
            ConnectionCommand::CommandInfo(args) => command::table::reply(&args),
        };
        (reply, Next::Continue)
    }

    /// Checks credentials; a failure is logged (the user name, never the
    /// password), counted, and answered after a delay.
    fn authenticate(&mut self, user: Option<Bytes>, password: &[u8]) -> Result<(), Reply> {
        if user.is_none() && !self.access.users.required() {
            return Err(Reply::err(
                "AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?",
            ));
        }
        match self.access.users.authenticate(user.as_deref(), password) {
            Some(found) => {
                self.user = Some(found);
                self.update_registry();
                Ok(())
            }
            None => {
                bump(&self.executor.engine().metrics.auth_failures);
                let name = user.as_deref().map_or("default".into(), |name| {
                    String::from_utf8_lossy(&name[..name.len().min(64)]).into_owned()
                });
                tracing::warn!(peer = %self.peer, user = %name, "client authentication failed");
                self.penalty = true;
                Err(Reply::Error(WRONGPASS.into()))
            }
        }
    }

    fn client_list(&self) -> String {
        let now = Instant::now();
        let registry = self.registry.lock();
        let mut text = String::with_capacity(registry.len() * 96);
        for (id, entry) in registry.iter() {
            let name = entry
                .name
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let resp = entry.protocol.version();
            text.push_str(&format!(
                "id={id} addr={} name={name} age={} user={} resp={resp}\n",
                entry.addr,
                now.duration_since(entry.since).as_secs(),
                entry.user.as_deref().unwrap_or(""),
            ));
        }
        text
    }

    fn hello(
        &mut self,
        version: Option<Bytes>,
        auth: Option<(Bytes, Bytes)>,
        name: Option<Bytes>,
    ) -> Reply {
        let protocol = match version.as_deref() {
            None => self.protocol,
            Some(b"2") => Protocol::Resp2,
            Some(b"3") => Protocol::Resp3,
            Some(other) if kv::parse_integer(other).is_some() => {
                return Reply::Error("NOPROTO unsupported protocol version".into());
            }
            Some(_) => return Reply::err("Protocol version is not an integer or out of range"),
        };
        if let Some((user, password)) = auth {
            if let Err(reply) = self.authenticate(Some(user), &password) {
                return reply;
            }
        } else if self.user.is_none() {
            return Reply::Error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise \
                 the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the \
                 client and select the RESP protocol version at the same time"
                    .into(),
            );
        }
        self.protocol = protocol;
        if let Some(name) = name {
            self.name = Some(name);
        }
        self.update_registry();
        let role = if self.executor.engine().status.role().is_leader() {
            "master"
        } else {
            "replica"
        };
        let protocol = self.protocol.version();
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
    use super::is_loopback;

    #[test]
    fn loopback_includes_mapped_addresses() {
        for (addr, loopback) in [
            ("127.0.0.1:1", true),
            ("127.8.9.10:1", true),
            ("[::1]:1", true),
            ("[::ffff:127.0.0.1]:1", true),
            ("10.0.0.1:1", false),
            ("[::ffff:10.0.0.1]:1", false),
            ("[2001:db8::1]:1", false),
        ] {
            assert_eq!(is_loopback(&addr.parse().unwrap()), loopback, "{addr}");
        }
    }
}
