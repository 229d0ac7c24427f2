//! etcd beside drkv in `cargo xtask bench cluster`: when Debian's
//! `etcd-server` is installed, a 3-member etcd on loopback takes the same
//! load from the same generator (`drkv bench --protocol etcd`: puts and
//! linearizable gets of the same keys and values), its rows are printed
//! with the CPU its three processes spent per operation, and drkv's rows
//! are divided by etcd's from this run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{Load, Row, run_load};

/// Client ports `BASE_PORT + id`, peer ports `BASE_PORT + 10 + id`.
const BASE_PORT: u16 = 17_400;
const MEMBERS: u16 = 3;

/// A 3-member etcd (stopped and removed on drop).
struct EtcdCluster {
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl EtcdCluster {
    fn start() -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("drkv-bench-etcd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let peer_url = |id: u16| format!("http://127.0.0.1:{}", BASE_PORT + 10 + id);
        let initial: Vec<String> = (1..=MEMBERS)
            .map(|id| format!("e{id}={}", peer_url(id)))
            .collect();
        let mut cluster = Self {
            children: Vec::new(),
            dir,
        };
        for id in 1..=MEMBERS {
            let client_url = format!("http://127.0.0.1:{}", BASE_PORT + id);
            let log = std::fs::File::create(cluster.dir.join(format!("e{id}.log")))
                .map_err(|e| e.to_string())?;
            let child = Command::new("etcd")
                .args(["--name", &format!("e{id}"), "--data-dir"])
                .arg(cluster.dir.join(format!("e{id}")))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url(id)])
                .args(["--initial-advertise-peer-urls", &peer_url(id)])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "drkv-bench"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot start etcd: {e}"))?;
            cluster.children.push(child);
        }
        Ok(cluster)
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Waits until a put through every member succeeds.
    fn wait_ready(&self, drkv: &Path, targets: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let probe = Command::new(drkv)
                .args(["bench", "--protocol", "etcd", "--targets", targets])
                .args(["--connections", "3", "--seconds", "0.001", "--keys", "3"])
                .arg("--preload")
                .output()
                .map_err(|e| format!("cannot run drkv bench: {e}"))?;
            if probe.status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "etcd took no put within 60 s (logs in {}): {}",
                    self.dir.display(),
                    String::from_utf8_lossy(&probe.stderr)
                ));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// Whether `etcd` can be run here.
pub(crate) fn installed() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// etcd's rows: writes at 64 and 256 connections and linearizable reads
/// at 64, through all three members.
pub(crate) fn rows(drkv: &Path) -> Result<Vec<Row>, String> {
    let cluster = EtcdCluster::start()?;
    let targets: String = (1..=MEMBERS)
        .map(|id| format!("127.0.0.1:{}", BASE_PORT + id))
        .collect::<Vec<_>>()
        .join(",");
    cluster.wait_ready(drkv, &targets)?;
    println!("etcd up: 3 members");
    let pids = cluster.pids();
    let mut rows = Vec::new();
    for (mix, write_percent, connections) in [
        ("write", "100", "64"),
        ("write", "100", "256"),
        ("read", "0", "64"),
    ] {
        let load = Load {
            mix,
            write_percent,
            connections,
            preload: rows.is_empty(),
            workload: "set",
            protocol: "etcd",
        };
        rows.push(run_load(drkv, &pids, &load, &targets, "all 3")?);
    }
    Ok(rows)
}

/// drkv's ops/s over etcd's for the rows both have.
pub(crate) fn print_ratios(etcd: &[Row], drkv: &[(&str, &Row)]) {
    println!("\ndrkv / etcd, same run (ops/s; node CPU per op):");
    for (name, row) in drkv {
        let matching = etcd
            .iter()
            .find(|e| e.mix == row.mix && e.result["connections"] == row.result["connections"]);
        let Some(etcd_row) = matching else {
            continue;
        };
        let ops = |r: &Row| r.result["ops_per_second"].as_f64().unwrap_or(0.0);
        if ops(etcd_row) <= 0.0 || row.cpu_us_per_op <= 0.0 {
            continue;
        }
        println!(
            "  {name:<34} {:>8.0} vs {:>6.0} ops/s = {:>4.1}x; {:>4.0} vs {:>4.0} µs CPU/op = {:.2}",
            ops(row),
            ops(etcd_row),
            ops(row) / ops(etcd_row),
            row.cpu_us_per_op,
            etcd_row.cpu_us_per_op,
            row.cpu_us_per_op / etcd_row.cpu_us_per_op
        );
    }
}
