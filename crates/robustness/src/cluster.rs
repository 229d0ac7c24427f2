//! The `drkv` processes of one run: starting, killing, pausing and
//! restarting them, and their admin API.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::net::{Network, NodeAddrs};

/// How long an admin call may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// The admin bearer token of every run (the admin port is off loopback
/// inside a namespace, which drkv allows only with a token).
const ADMIN_TOKEN: &str = "robustness-suite-admin-token";

/// One node.
pub(crate) struct Node {
    /// Its id.
    pub(crate) id: u64,
    /// Its addresses.
    pub(crate) addrs: NodeAddrs,
    data_dir: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Node {
    /// Whether its process runs (paused or not).
    pub(crate) fn running(&self) -> bool {
        self.child.is_some()
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// The processes of a run.
pub(crate) struct Cluster {
    drkv: PathBuf,
    dir: PathBuf,
    token_file: PathBuf,
    /// Flags every server gets (e.g. `--read-lease`).
    extra: Vec<String>,
    /// The nodes, members or not.
    pub(crate) nodes: Vec<Node>,
    /// Nodes allowed to exit on their own (a disk fault ends them).
    may_exit: Vec<u64>,
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

impl Cluster {
    /// Starts founding members `ids` on `network` under `dir`.
    pub(crate) fn start(
        drkv: &Path,
        dir: &Path,
        network: &Network,
        ids: &[u64],
        extra: Vec<String>,
    ) -> Result<Self, String> {
        let token_file = dir.join("admin-token");
        std::fs::write(&token_file, ADMIN_TOKEN).map_err(|e| e.to_string())?;
        let mut cluster = Self {
            drkv: drkv.to_owned(),
            dir: dir.to_owned(),
            token_file,
            extra,
            nodes: ids
                .iter()
                .map(|&id| Node {
                    id,
                    addrs: network.addrs(id),
                    data_dir: dir.join(format!("node-{id}")),
                    child: None,
                    paused: false,
                })
                .collect(),
            may_exit: Vec::new(),
        };
        let peers = cluster.peers_flag(ids);
        for &id in ids {
            cluster.spawn(network, id, &["--peers".to_owned(), peers.clone()])?;
        }
        Ok(cluster)
    }

    fn peers_flag(&self, ids: &[u64]) -> String {
        ids.iter()
            .map(|&id| format!("{id}={}", self.node(id).addrs.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `id`.
    pub(crate) fn node(&self, id: u64) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .expect("a node of this run")
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .expect("a node of this run")
    }

    /// The log file of node `id`.
    pub(crate) fn log_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.log"))
    }

    /// Starts node `id` (first start: with its addresses and `args`;
    /// later: with nothing but its data directory, as an operator would).
    fn spawn(&mut self, network: &Network, id: u64, args: &[String]) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.log_path(id))
            .map_err(|e| format!("cannot open node {id}'s log: {e}"))?;
        let node = self.node(id);
        let mut command = match network.namespace(id) {
            Some(namespace) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", &namespace]).arg(&self.drkv);
                command
            }
            None => Command::new(&self.drkv),
        };
        command
            .arg("server")
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--admin-token-file"])
            .arg(&self.token_file)
            .args(["--protected-mode", "false"]);
        if !args.is_empty() {
            command
                .args(["--id", &id.to_string()])
                .args(["--client-addr", &node.addrs.client.to_string()])
                .args(["--peer-addr", &node.addrs.peer.to_string()])
                .args(["--admin-addr", &node.addrs.admin.to_string()])
                .args(args)
                .args(&self.extra);
        }
        command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start node {id}: {e}"))?;
        let node = self.node_mut(id);
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// SIGKILL: the process dies with whatever it had not synced.
    pub(crate) fn kill(&mut self, id: u64) {
        let node = self.node_mut(id);
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.paused = false;
    }

    /// Restarts a killed node from its data directory.
    pub(crate) fn restart(&mut self, network: &Network, id: u64) -> Result<(), String> {
        if self.node(id).running() {
            return Ok(());
        }
        self.spawn(network, id, &[])
    }

    /// SIGSTOP (it keeps its memory and sockets, and answers nothing).
    pub(crate) fn pause(&mut self, id: u64) {
        let node = self.node_mut(id);
        if let Some(pid) = node.pid() {
            signal(pid, "STOP");
            node.paused = true;
        }
    }

    /// SIGCONT.
    pub(crate) fn resume(&mut self, id: u64) {
        let node = self.node_mut(id);
        if let Some(pid) = node.pid() {
            signal(pid, "CONT");
        }
        node.paused = false;
    }

    /// Node `id` may exit on its own until [`Self::expected_exit_done`].
    pub(crate) fn expect_exit(&mut self, id: u64) {
        self.may_exit.push(id);
    }

    /// Node `id` exiting on its own is a failure again.
    pub(crate) fn expected_exit_done(&mut self, id: u64) {
        self.may_exit.retain(|&other| other != id);
    }

    /// Whether node `id` may exit on its own now.
    pub(crate) fn may_exit(&self, id: u64) -> bool {
        self.may_exit.contains(&id)
    }

    /// Whether a started node has exited on its own (and how).
    pub(crate) fn exited(&mut self, id: u64) -> Option<String> {
        let node = self.node_mut(id);
        let status = node.child.as_mut()?.try_wait().ok()??;
        node.child = None;
        Some(status.to_string())
    }

    /// Wipes node `id` (stopped) and starts it empty, joining through
    /// the members `via`.
    pub(crate) fn start_joiner(
        &mut self,
        network: &Network,
        id: u64,
        via: &[u64],
    ) -> Result<(), String> {
        self.kill(id);
        let data_dir = self.node(id).data_dir.clone();
        if data_dir.exists() {
            std::fs::remove_dir_all(&data_dir)
                .map_err(|e| format!("cannot wipe {}: {e}", data_dir.display()))?;
        }
        let peers = self.peers_flag(via);
        self.spawn(
            network,
            id,
            &["--join".to_owned(), "--peers".to_owned(), peers],
        )
    }

    /// One admin call to node `id`: the JSON body on a 2xx answer.
    pub(crate) fn admin(
        &self,
        id: u64,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<Value, String> {
        let node = self.node(id);
        if node.paused || !node.running() {
            return Err(format!("node {id} is not answering (paused or down)"));
        }
        admin_request(node.addrs.admin, method, path, body)
    }

    /// Node `id`'s `/status`.
    pub(crate) fn status(&self, id: u64) -> Result<Value, String> {
        self.admin(id, "GET", "/status", "")
    }

    /// The leader as the answering nodes see it: a node that says it
    /// leads, in the highest term any answering node reports.
    pub(crate) fn leader(&self) -> Option<u64> {
        let statuses: Vec<Value> = self
            .nodes
            .iter()
            .filter_map(|n| self.status(n.id).ok())
            .collect();
        let top_term = statuses.iter().filter_map(|s| s["term"].as_u64()).max()?;
        statuses
            .iter()
            .find(|s| s["role"] == "leader" && s["term"].as_u64() == Some(top_term))
            .and_then(|s| s["id"].as_u64())
    }

    /// Waits up to `bound` for a leader.
    pub(crate) fn wait_for_leader(&self, bound: Duration) -> Result<u64, String> {
        wait_for(bound, || self.leader())
            .ok_or_else(|| format!("no leader within {} s", bound.as_secs()))
    }

    /// Kills every process (resuming paused ones first so they die).
    pub(crate) fn stop_all(&mut self) {
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        for id in ids {
            self.resume(id);
            self.kill(id);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Polls `probe` every 50 ms until it gives something or `bound` passes.
pub(crate) fn wait_for<T>(bound: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(found) = probe() {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP/1.1 request with the run's admin token; short timeouts,
/// since a paused node must not stall the suite.
fn admin_request(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<Value, String> {
    let mut stream = TcpStream::connect_timeout(&addr, ADMIN_TIMEOUT)
        .map_err(|e| format!("admin {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(ADMIN_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(ADMIN_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("admin {addr}: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("admin {addr}: {e}"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("admin {addr}: a malformed HTTP response"))?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("admin {addr}: a malformed status line"))?;
    let value: Value = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
    if (200..300).contains(&code) {
        Ok(value)
    } else {
        Err(format!("admin {addr} {method} {path}: HTTP {code} {value}"))
    }
}
