//! Real `drkv` processes on 127.0.0.1 for the end-to-end tests: start,
//! SIGKILL, SIGTERM, restart from the data directory; a `redis` client to
//! each; and waiting for the cluster to settle. Every wait has a bound,
//! so a broken cluster fails a test instead of hanging it.

#![allow(unreachable_pub, dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const DRKV: &str = env!("CARGO_BIN_EXE_drkv");

/// A temporary directory removed on drop (see dr-storage's tests for why
/// not the `tempfile` crate).
pub struct TestDir(PathBuf);

impl TestDir {
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let unique = format!(
            "drkv-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port nobody listens on right now. Taken below the kernel's
/// ephemeral range (32768 and up): an ephemeral port released here could
/// be handed to some outgoing connection before the node binds it. Each
/// test process starts at its own place in the range.
pub fn free_addr() -> SocketAddr {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = 20_000 + (u64::from(std::process::id()) % 600) * 20;
    loop {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (start - 20_000 + offset) % 12_000;
        let port = u16::try_from(port).expect("below 32768");
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().expect("local address");
        }
        assert!(offset < 12_000, "no free port below 32768");
    }
}

pub struct NodeProcess {
    pub id: u64,
    pub data_dir: PathBuf,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    pub admin: SocketAddr,
    child: Option<Child>,
}

impl NodeProcess {
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

pub struct Cluster {
    pub dir: TestDir,
    pub nodes: Vec<NodeProcess>,
    extra_args: Vec<String>,
    /// How the tests' clients reach the nodes (password, TLS).
    pub access: Access,
}

/// How a test client reaches a node.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// The redis URL's user part (`"user:password@"`), empty for none.
    pub userinfo: String,
    /// The cluster CA (PEM) when the client port speaks TLS.
    pub ca_pem: Option<Vec<u8>>,
}

impl Access {
    /// With these credentials (`"user:password@"`).
    pub fn user(userinfo: &str) -> Self {
        Self {
            userinfo: userinfo.to_owned(),
            ca_pem: None,
        }
    }

    /// A client for the node at `addr`.
    pub fn client(&self, addr: SocketAddr) -> redis::Client {
        let userinfo = &self.userinfo;
        match &self.ca_pem {
            None => redis::Client::open(format!("redis://{userinfo}{addr}/")).expect("a valid URL"),
            Some(ca) => redis::Client::build_with_tls(
                format!("rediss://{userinfo}{addr}/"),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            )
            .expect("a valid TLS client"),
        }
    }
}

impl Cluster {
    /// Starts `size` founding members with `extra_args` for each.
    pub fn start(name: &str, size: u64, extra_args: &[&str]) -> Self {
        let dir = TestDir::new(name);
        let nodes: Vec<NodeProcess> = (1..=size)
            .map(|id| NodeProcess {
                id,
                data_dir: dir.path().join(format!("node-{id}")),
                client: free_addr(),
                peer: free_addr(),
                admin: free_addr(),
                child: None,
            })
            .collect();
        let mut cluster = Self {
            dir,
            nodes,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            access: Access::default(),
        };
        let peers = cluster.peers_flag();
        for index in 0..cluster.nodes.len() {
            cluster.spawn(index, &["--peers", &peers]);
        }
        cluster
    }

    pub fn peers_flag(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn index(&self, id: u64) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .expect("a node of this cluster")
    }

    pub fn node(&self, id: u64) -> &NodeProcess {
        &self.nodes[self.index(id)]
    }

    fn spawn(&mut self, index: usize, args: &[&str]) {
        let node = &self.nodes[index];
        let addresses = [
            "--id".to_owned(),
            node.id.to_string(),
            "--client-addr".to_owned(),
            node.client.to_string(),
            "--peer-addr".to_owned(),
            node.peer.to_string(),
            "--admin-addr".to_owned(),
            node.admin.to_string(),
        ];
        let mut command = self.server(index);
        command.args(addresses).args(args).args(&self.extra_args);
        self.nodes[index].child = Some(command.spawn().expect("start drkv"));
    }

    /// `drkv server --data-dir <the node's>`, its stderr appended to the
    /// node's log file.
    fn server(&self, index: usize) -> Command {
        let node = &self.nodes[index];
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.dir.path().join(format!("node-{}.log", node.id)))
            .expect("open the log file");
        let mut command = Command::new(DRKV);
        command
            .arg("server")
            .arg("--data-dir")
            .arg(&node.data_dir)
            .stdout(Stdio::null())
            .stderr(log);
        command
    }

    /// Adds node `id` (not started).
    pub fn add_node(&mut self, id: u64) {
        let node = NodeProcess {
            id,
            data_dir: self.dir.path().join(format!("node-{id}")),
            client: free_addr(),
            peer: free_addr(),
            admin: free_addr(),
            child: None,
        };
        self.nodes.push(node);
    }

    /// Starts a node added with [`Self::add_node`] as a joiner.
    pub fn start_joiner(&mut self, id: u64) {
        self.start_joiner_with(id, &[]);
    }

    /// Starts a joiner with `args` instead of the cluster's extra ones.
    pub fn start_joiner_with(&mut self, id: u64, args: &[&str]) {
        let peers: String = self
            .nodes
            .iter()
            .filter(|n| n.id != id)
            .map(|n| format!("{}={}", n.id, n.peer))
            .collect::<Vec<_>>()
            .join(",");
        let index = self.index(id);
        let mut all = vec!["--join", "--peers", &peers];
        all.extend(args);
        if args.is_empty() {
            self.spawn(index, &all);
        } else {
            let saved = std::mem::take(&mut self.extra_args);
            self.spawn(index, &all);
            self.extra_args = saved;
        }
    }

    /// Restarts a stopped node with nothing but its data directory.
    pub fn restart(&mut self, id: u64) {
        let index = self.index(id);
        let child = self.server(index).spawn().expect("restart drkv");
        self.nodes[index].child = Some(child);
    }

    /// Sends `signal` (`STOP`, `CONT`) to a running node: a paused
    /// process keeps all its memory, unlike a restarted one.
    pub fn signal(&self, id: u64, signal: &str) {
        let child = self.nodes[self.index(id)]
            .child
            .as_ref()
            .expect("node is running");
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{signal} failed");
    }

    /// Whether node `id`'s process is still running.
    pub fn alive(&mut self, id: u64) -> bool {
        let index = self.index(id);
        match self.nodes[index].child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self, id: u64) {
        let index = self.index(id);
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self, id: u64) -> std::process::ExitStatus {
        let index = self.index(id);
        let mut child = self.nodes[index].child.take().expect("node is running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait for drkv") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client(&self, id: u64) -> redis::Connection {
        connect_as(self.node(id).client, &self.access)
    }

    /// The leader every running node agrees on, waiting up to `bound`.
    pub fn wait_for_leader(&self, bound: Duration) -> u64 {
        let deadline = Instant::now() + bound;
        loop {
            let leaders: Vec<Option<u64>> = self
                .nodes
                .iter()
                .filter(|n| n.running())
                .map(|n| {
                    info_field_as(n.client, &self.access, "leader_id").and_then(|l| l.parse().ok())
                })
                .collect();
            let published = leaders.first().copied().flatten().and_then(|leader| {
                let node = self.nodes.iter().find(|n| n.id == leader)?;
                let addr = info_field_as(node.client, &self.access, "leader_client_addr")?;
                (!addr.is_empty()).then_some(leader)
            });
            if let Some(leader) = published
                && leaders.iter().all(|&l| l == Some(leader))
            {
                return leader;
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("no agreed leader within {bound:?}: {leaders:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `drkv ctl` against node `id`'s admin port.
    pub fn ctl(&self, id: u64, args: &[&str]) -> (bool, String) {
        let output = Command::new(DRKV)
            .args(["ctl", "--admin", &self.node(id).admin.to_string()])
            .args(args)
            .output()
            .expect("run drkv ctl");
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text)
    }

    pub fn dump_logs(&self) {
        for node in &self.nodes {
            let path = self.dir.path().join(format!("node-{}.log", node.id));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            // Panics and errors first: the tail may be far from them.
            for line in text
                .lines()
                .filter(|l| l.contains("panicked") || l.contains("ERROR"))
            {
                eprintln!("node {}: {line}", node.id);
            }
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            eprintln!("---- node {} (last lines) ----", node.id);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Waits until `condition` holds, checking every 20 ms; panics naming
/// `what` if it does not within `bound`. Tests wait for what they need
/// rather than sleeping a fixed time and counting: a slow machine then
/// takes longer instead of failing.
pub fn wait_until(bound: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !condition() {
        assert!(Instant::now() < deadline, "not within {bound:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn connect(addr: SocketAddr) -> redis::Connection {
    connect_as(addr, &Access::default())
}

/// A connection as `access` says.
pub fn connect_as(addr: SocketAddr, access: &Access) -> redis::Connection {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let client = access.client(addr);
        match client.get_connection_with_timeout(Duration::from_secs(2)) {
            Ok(connection) => {
                connection
                    .set_read_timeout(Some(Duration::from_secs(15)))
                    .expect("set a read timeout");
                return connection;
            }
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => panic!("cannot connect to {addr}: {error}"),
        }
    }
}

/// One field of `INFO`, or None when the node does not answer.
pub fn info_field(addr: SocketAddr, field: &str) -> Option<String> {
    info_field_as(addr, &Access::default(), field)
}

/// One field of `INFO` as a client with `access` sees it.
pub fn info_field_as(addr: SocketAddr, access: &Access, field: &str) -> Option<String> {
    let client = access.client(addr);
    let mut connection = client
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()?;
    connection
        .set_read_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    let info: String = redis::cmd("INFO").query(&mut connection).ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .map(|value| value.trim().to_owned())
}

/// Runs a command, retrying `-TRYAGAIN` (nothing happened) until `bound`.
pub fn retrying<T: redis::FromRedisValue>(
    connection: &mut redis::Connection,
    command: &redis::Cmd,
    bound: Duration,
) -> redis::RedisResult<T> {
    let deadline = Instant::now() + bound;
    loop {
        match command.query(connection) {
            Err(error) if error.code() == Some("TRYAGAIN") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            result => return result,
        }
    }
}
