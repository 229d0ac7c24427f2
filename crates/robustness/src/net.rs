//! Where the nodes live on the network, and the network faults between
//! them.
//!
//! As root with iproute2 and nftables, every node runs in its own network
//! namespace, joined to the suite's (the host's) namespace by a veth pair
//! on one bridge: node `i` is `10.211.T.i`, the suite (its clients and
//! admin calls) `10.211.T.254`. Faults act on the real kernel paths:
//! a partition drops the packets a node receives from the nodes cut off
//! (nftables, input hook: the sender sees silence, as on a real network),
//! loss drops a share of every packet a node receives, a slow link limits
//! a node's sending rate (tbf), so its packets queue behind each other.
//! This kernel has no `netem` (CONFIG_NET_SCH_NETEM is off), so there is
//! no fixed added delay.
//!
//! Otherwise every node listens on loopback and the network faults are
//! unavailable: the run says so and schedules none of them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};

/// The ports a node listens on inside its namespace.
const CLIENT_PORT: u16 = 6379;
const PEER_PORT: u16 = 7000;
const ADMIN_PORT: u16 = 8000;
/// The nftables table the faults live in (one per namespace).
const TABLE: &str = "drfault";

/// A node's addresses.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NodeAddrs {
    /// Its Redis port.
    pub(crate) client: SocketAddr,
    /// Its Raft port.
    pub(crate) peer: SocketAddr,
    /// Its admin port.
    pub(crate) admin: SocketAddr,
}

/// What the faults on one node's network are now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct NodeFaults {
    /// Nodes whose packets this node does not receive.
    deaf_to: Vec<u64>,
    /// Percent of received packets dropped.
    loss_percent: u8,
    /// A rate limit on what it sends, in kbit/s.
    rate_kbit: Option<u32>,
}

/// The network of one run.
pub(crate) enum Network {
    /// One namespace per node (see the module doc).
    Namespaces {
        /// Distinguishes this run's names and subnet from another's.
        tag: u16,
        /// The nodes with a namespace, and the faults in force on each.
        faults: Vec<(u64, NodeFaults)>,
    },
    /// Everything on 127.0.0.1 with free ports; no network faults.
    Loopback {
        /// Addresses handed out, per node id.
        addrs: Vec<(u64, NodeAddrs)>,
    },
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    run_with_input(program, args, "")
}

/// Runs `program args` with `input` on its standard input; an error
/// carries what it printed on its standard error.
fn run_with_input(program: &str, args: &[&str], input: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("{program}: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Why namespaces cannot be used here, if they cannot.
pub(crate) fn namespaces_unavailable() -> Option<String> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        return Some("not running as root".into());
    }
    for (program, args) in [("ip", ["-V"]), ("nft", ["--version"]), ("tc", ["-V"])] {
        if run(program, &args).is_err() {
            return Some(format!("`{program}` is not installed"));
        }
    }
    None
}

impl Network {
    /// Namespaces for `ids` when possible, else loopback (`why` says
    /// why not).
    pub(crate) fn new(ids: &[u64], use_namespaces: bool) -> Result<Self, String> {
        if !use_namespaces {
            return Ok(Self::loopback(ids));
        }
        let tag = (std::process::id() % 250) as u16;
        let mut network = Self::Namespaces {
            tag,
            faults: Vec::new(),
        };
        network.remove_leftovers(ids);
        let bridge = network.bridge();
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", network.host_ip()),
                "dev",
                &bridge,
            ],
        )?;
        run("ip", &["link", "set", &bridge, "up"])?;
        for &id in ids {
            network.add(id)?;
        }
        Ok(network)
    }

    fn loopback(ids: &[u64]) -> Self {
        let addrs = ids.iter().map(|&id| (id, loopback_addrs())).collect();
        Self::Loopback { addrs }
    }

    fn tag(&self) -> u16 {
        match self {
            Self::Namespaces { tag, .. } => *tag,
            Self::Loopback { .. } => 0,
        }
    }

    fn bridge(&self) -> String {
        format!("drr{}br", self.tag())
    }

    fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 211, self.tag() as u8, 254)
    }

    fn node_ip(&self, id: u64) -> Ipv4Addr {
        Ipv4Addr::new(10, 211, self.tag() as u8, id as u8)
    }

    /// The namespace node `id` runs in, if any.
    pub(crate) fn namespace(&self, id: u64) -> Option<String> {
        match self {
            Self::Namespaces { tag, .. } => Some(format!("drr{tag}n{id}")),
            Self::Loopback { .. } => None,
        }
    }

    /// Gives node `id` a place on the network (a new member).
    pub(crate) fn add(&mut self, id: u64) -> Result<(), String> {
        let Some(namespace) = self.namespace(id) else {
            if let Self::Loopback { addrs } = self
                && !addrs.iter().any(|(known, _)| *known == id)
            {
                addrs.push((id, loopback_addrs()));
            }
            return Ok(());
        };
        if let Self::Namespaces { faults, .. } = self {
            if faults.iter().any(|(known, _)| *known == id) {
                return Ok(());
            }
            faults.push((id, NodeFaults::default()));
        }
        let veth = format!("drr{}v{id}", self.tag());
        let ip = format!("{}/24", self.node_ip(id));
        run("ip", &["netns", "add", &namespace])?;
        run(
            "ip",
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &namespace,
            ],
        )?;
        run(
            "ip",
            &["link", "set", &veth, "master", &self.bridge(), "up"],
        )?;
        run("ip", &["-n", &namespace, "addr", "add", &ip, "dev", "eth0"])?;
        run("ip", &["-n", &namespace, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", &namespace, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Node `id`'s addresses.
    pub(crate) fn addrs(&self, id: u64) -> NodeAddrs {
        match self {
            Self::Namespaces { .. } => {
                let ip = IpAddr::V4(self.node_ip(id));
                NodeAddrs {
                    client: SocketAddr::new(ip, CLIENT_PORT),
                    peer: SocketAddr::new(ip, PEER_PORT),
                    admin: SocketAddr::new(ip, ADMIN_PORT),
                }
            }
            Self::Loopback { addrs } => addrs
                .iter()
                .find(|(known, _)| *known == id)
                .map(|(_, a)| *a)
                .expect("addresses are handed out before they are asked for"),
        }
    }

    /// `to` stops receiving what `from` sends (one way).
    pub(crate) fn cut(&mut self, from: u64, to: u64) -> Result<(), String> {
        self.change(to, |f| {
            if !f.deaf_to.contains(&from) {
                f.deaf_to.push(from);
            }
        })
    }

    /// Every node drops `percent` of the packets it receives.
    pub(crate) fn lose(&mut self, percent: u8) -> Result<(), String> {
        for id in self.ids() {
            self.change(id, |f| f.loss_percent = percent)?;
        }
        Ok(())
    }

    /// Node `id` sends at most `kbit` per second.
    pub(crate) fn slow(&mut self, id: u64, kbit: u32) -> Result<(), String> {
        self.change(id, |f| f.rate_kbit = Some(kbit))
    }

    /// Every network fault removed.
    pub(crate) fn heal(&mut self) -> Result<(), String> {
        for id in self.ids() {
            self.change(id, |f| *f = NodeFaults::default())?;
        }
        Ok(())
    }

    fn ids(&self) -> Vec<u64> {
        match self {
            Self::Namespaces { faults, .. } => faults.iter().map(|(id, _)| *id).collect(),
            Self::Loopback { .. } => Vec::new(),
        }
    }

    /// Applies `edit` to node `id`'s faults and installs the result.
    fn change(&mut self, id: u64, edit: impl FnOnce(&mut NodeFaults)) -> Result<(), String> {
        let Some(namespace) = self.namespace(id) else {
            return Err("network faults need network namespaces".into());
        };
        let ips: Vec<(u64, Ipv4Addr)> = self.ids().iter().map(|&i| (i, self.node_ip(i))).collect();
        let Self::Namespaces { faults, .. } = self else {
            unreachable!("a namespace implies namespaces");
        };
        let Some((_, current)) = faults.iter_mut().find(|(known, _)| *known == id) else {
            return Err(format!("node {id} has no namespace"));
        };
        let before = current.clone();
        edit(current);
        let after = current.clone();
        if before == after {
            return Ok(());
        }
        let mut rules = String::new();
        for from in &after.deaf_to {
            if let Some((_, ip)) = ips.iter().find(|(i, _)| i == from) {
                rules.push_str(&format!("    ip saddr {ip} drop\n"));
            }
        }
        if after.loss_percent > 0 {
            rules.push_str(&format!(
                "    numgen random mod 100 < {} drop\n",
                after.loss_percent
            ));
        }
        // Replace the whole table atomically: add (so delete cannot fail),
        // delete, then define it again.
        let script = format!(
            "table inet {TABLE} {{}}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n{rules}  }}\n}}\n"
        );
        run_with_input(
            "ip",
            &["netns", "exec", &namespace, "nft", "-f", "-"],
            &script,
        )?;
        if before.rate_kbit != after.rate_kbit {
            let _ = run(
                "ip",
                &[
                    "netns", "exec", &namespace, "tc", "qdisc", "del", "dev", "eth0", "root",
                ],
            );
            if let Some(kbit) = after.rate_kbit {
                run(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &namespace,
                        "tc",
                        "qdisc",
                        "add",
                        "dev",
                        "eth0",
                        "root",
                        "tbf",
                        "rate",
                        &format!("{kbit}kbit"),
                        "burst",
                        "16kbit",
                        "latency",
                        "300ms",
                    ],
                )?;
            }
        }
        Ok(())
    }

    fn remove_leftovers(&self, ids: &[u64]) {
        for &id in ids {
            if let Some(namespace) = self.namespace(id) {
                let _ = run("ip", &["netns", "del", &namespace]);
            }
            // A namespace lives on while a process in it is still exiting,
            // and with it the host's end of its veth: removed here, so the
            // next run with this tag can make its own.
            let veth = format!("drr{}v{id}", self.tag());
            if std::path::Path::new("/sys/class/net").join(&veth).exists() {
                let _ = run("ip", &["link", "del", &veth]);
            }
        }
        let _ = run("ip", &["link", "del", &self.bridge()]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Self::Namespaces { .. } = self {
            let ids = self.ids();
            self.remove_leftovers(&ids);
        }
    }
}

/// Three free ports on loopback.
fn loopback_addrs() -> NodeAddrs {
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port on loopback")
    };
    NodeAddrs {
        client: free(),
        peer: free(),
        admin: free(),
    }
}
