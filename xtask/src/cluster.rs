//! `cargo xtask dev` and `cargo xtask bench cluster`: a local 3-node
//! `drkv` cluster, for trying it out or for measuring it.
//!
//! The benchmark builds `drkv` optimized (RocksDB at -O3, as `bench`
//! does), starts `drkv dev` on its own ports in a scratch directory,
//! drives it with `drkv bench` (closed loop: each connection waits for
//! its reply before sending again; 256-byte values) at 1, 16, 64 and 256
//! connections for write-only, read-only and 90% read mixes, runs
//! `redis-benchmark` against it when installed, prints one table and
//! stops the cluster; fresh clusters then measure ReadIndex against lease
//! reads, and, when `etcd` is installed, a 3-member etcd takes the same
//! load from the same generator and drkv's rows are divided by its
//! (see `etcd.rs`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::process::{cargo, run_step, workspace_root};

const BASE_PORT: u16 = 17_000;
const SECONDS_PER_RUN: &str = "5";

/// `cargo xtask dev [ARGS...]`: `drkv dev` from a dev build (the build
/// `cargo xtask ci` reuses).
pub(crate) fn dev(args: &[String]) -> Result<(), String> {
    crate::ci::ensure_libclang()?;
    let mut command = cargo();
    command.args([
        "run",
        "--quiet",
        "--package",
        "dr-node",
        "--bin",
        "drkv",
        "--",
        "dev",
    ]);
    command.args(args);
    run_step("dev", &mut command)
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn client_port(id: u16) -> u16 {
    BASE_PORT + id
}

/// Builds `drkv` optimized (RocksDB at -O3, as `bench` does) and says
/// where it is.
pub(crate) fn build_release_drkv() -> Result<PathBuf, String> {
    crate::ci::ensure_libclang()?;
    let mut build = cargo();
    build.env("CXXFLAGS", "-O3 -g0");
    build.args([
        "build",
        "--release",
        "--package",
        "dr-node",
        "--bin",
        "drkv",
    ]);
    run_step("build drkv", &mut build)?;
    Ok(crate::bench::target_dir().join("release").join("drkv"))
}

/// `cargo xtask bench cluster`.
pub(crate) fn bench(raft_log: Option<&str>) -> Result<(), String> {
    let drkv = build_release_drkv()?;
    let (cluster, leader) = start_cluster(&drkv, false, raft_log)?;
    let pids = cluster.node_pids()?;
    let all: String = (1..=3)
        .map(|id| format!("127.0.0.1:{}", client_port(id)))
        .collect::<Vec<_>>()
        .join(",");
    let leader_only = format!("127.0.0.1:{}", client_port(leader));
    let mut rows = Vec::new();
    for (mix, write_percent) in [("write", "100"), ("read", "0"), ("90% read", "10")] {
        for connections in ["1", "16", "64", "256"] {
            let preload = mix == "read" && connections == "1";
            let load = Load {
                mix,
                write_percent,
                connections,
                preload,
                workload: "set",
                protocol: "resp",
            };
            rows.push(run_load(&drkv, &pids, &load, &all, "all 3")?);
        }
        let load = Load {
            mix,
            write_percent,
            connections: "64",
            preload: false,
            workload: "set",
            protocol: "resp",
        };
        rows.push(run_load(&drkv, &pids, &load, &leader_only, "leader")?);
    }
    // The data model's costs, side by side with plain SET in this run.
    let mut model_rows = Vec::new();
    for (mix, write_percent, workload) in [
        ("SET", "100", "set"),
        ("SET EX", "100", "set-ex"),
        ("90/10 EX", "10", "set-ex"),
        ("MULTI 10", "100", "multi-incr"),
    ] {
        let load = Load {
            mix,
            write_percent,
            connections: "64",
            preload: false,
            workload,
            protocol: "resp",
        };
        model_rows.push(run_load(&drkv, &pids, &load, &all, "all 3")?);
    }
    let rss: Vec<String> = (1..=3)
        .map(|id| {
            status(&drkv, BASE_PORT, id).map_or_else(
                |_| "?".to_owned(),
                |s| {
                    format!(
                        "node {id} {:.0} MiB",
                        s["rss_bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64
                    )
                },
            )
        })
        .collect();
    redis_benchmark(client_port(leader));
    drop(cluster);
    print_table(&rows);
    println!("\nexpiry and transactions (MULTI 10: one op is MULTI, 10 INCRs, EXEC):");
    print_table(&model_rows);
    println!("\nresident memory after the runs: {}", rss.join(", "));
    // ReadIndex against leases, each on a fresh cluster loaded the same
    // way, so the two differ only in how the leader confirms reads.
    let mut fresh = Vec::new();
    for read_lease in [false, true] {
        let rows = read_rows(&drkv, &all, read_lease, raft_log)?;
        let how = if read_lease {
            "--read-lease (reads on the leader's lease)"
        } else {
            "ReadIndex (a heartbeat round per batch of reads)"
        };
        println!("\nfresh cluster, {how}:");
        print_table(&rows);
        fresh.push(rows);
    }
    if !crate::etcd::installed() {
        println!("\n(etcd is not installed: apt-get install etcd-server to add its rows)");
        return Ok(());
    }
    let etcd = crate::etcd::rows(&drkv)?;
    println!("\netcd 3-member cluster, same load generator (puts; linearizable gets):");
    print_table(&etcd);
    fn find<'a>(rows: &'a [Row], mix: &str, conns: u64, targets: &str) -> Option<&'a Row> {
        rows.iter().find(|r| {
            r.mix == mix && r.targets == targets && r.result["connections"].as_u64() == Some(conns)
        })
    }
    let compared = [
        (
            "writes, 64 conns via all 3",
            find(&rows, "write", 64, "all 3"),
        ),
        (
            "writes, 256 conns via all 3",
            find(&rows, "write", 256, "all 3"),
        ),
        (
            "writes, 64 conns via leader",
            find(&rows, "write", 64, "leader"),
        ),
        (
            "ReadIndex reads, 64 via all 3",
            find(&fresh[0], "read", 64, "all 3"),
        ),
        (
            "ReadIndex reads, 64 via leader",
            find(&fresh[0], "read", 64, "leader"),
        ),
        (
            "lease reads, 64 via all 3",
            find(&fresh[1], "read", 64, "all 3"),
        ),
        (
            "lease reads, 64 via leader",
            find(&fresh[1], "read", 64, "leader"),
        ),
    ];
    let compared: Vec<(&str, &Row)> = compared
        .into_iter()
        .filter_map(|(name, row)| Some((name, row?)))
        .collect();
    crate::etcd::print_ratios(&etcd, &compared);
    Ok(())
}

/// Read-only and 90% read rows at 64 connections on a fresh cluster.
fn read_rows(
    drkv: &Path,
    all: &str,
    read_lease: bool,
    raft_log: Option<&str>,
) -> Result<Vec<Row>, String> {
    let (cluster, leader) = start_cluster(drkv, read_lease, raft_log)?;
    let pids = cluster.node_pids()?;
    let leader_only = format!("127.0.0.1:{}", client_port(leader));
    let mut rows = Vec::new();
    for (mix, write_percent) in [("read", "0"), ("90% read", "10")] {
        for (targets, name) in [(all, "all 3"), (leader_only.as_str(), "leader")] {
            let load = Load {
                mix,
                write_percent,
                connections: "64",
                preload: rows.is_empty(),
                workload: "set",
                protocol: "resp",
            };
            rows.push(run_load(drkv, &pids, &load, targets, name)?);
        }
    }
    drop(cluster);
    Ok(rows)
}

/// Starts `drkv dev` (with `--read-lease` and `--raft-log` if asked) in
/// a scratch directory and waits for its leader.
fn start_cluster(
    drkv: &Path,
    read_lease: bool,
    raft_log: Option<&str>,
) -> Result<(DevCluster, u16), String> {
    start_cluster_at(drkv, read_lease, raft_log, BASE_PORT)
}

/// A three-node cluster started by `drkv dev` (stopped on drop).
pub(crate) struct DevCluster {
    child: Child,
    dir: PathBuf,
}

impl DevCluster {
    /// The three node processes' ids (`drkv dev`'s children).
    pub(crate) fn node_pids(&self) -> Result<Vec<u32>, String> {
        let pid = self.child.id();
        let pids: Vec<u32> = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|id| id.parse().ok())
            .collect();
        if pids.len() == 3 {
            Ok(pids)
        } else {
            Err(format!(
                "expected three node processes under drkv dev, found {pids:?}"
            ))
        }
    }
}

/// Starts `drkv dev` on ports from `base_port` and waits for its leader;
/// node `id`'s client port is `base_port + id`.
pub(crate) fn start_cluster_at(
    drkv: &Path,
    read_lease: bool,
    raft_log: Option<&str>,
    base_port: u16,
) -> Result<(DevCluster, u16), String> {
    let dir = std::env::temp_dir().join(format!("drkv-cluster-{}-{base_port}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut command = Command::new(drkv);
    command.args([
        "--log-level",
        "warn",
        "dev",
        "--base-port",
        &base_port.to_string(),
        "--dir",
    ]);
    command.arg(&dir);
    if read_lease {
        command.arg("--read-lease");
    }
    if let Some(raft_log) = raft_log {
        command.args(["--raft-log", raft_log]);
    }
    let child = command
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start drkv dev: {e}"))?;
    let cluster = DevCluster { child, dir };
    let leader = wait_for_leader(drkv, base_port)?;
    println!("cluster up: leader is node {leader}");
    Ok((cluster, leader))
}

fn status(drkv: &Path, base_port: u16, id: u16) -> Result<Value, String> {
    let admin = format!("127.0.0.1:{}", base_port + 200 + id);
    let output = Command::new(drkv)
        .args(["ctl", "--admin", &admin, "status"])
        .output()
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())
}

fn wait_for_leader(drkv: &Path, base_port: u16) -> Result<u16, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let statuses: Vec<Option<Value>> =
            (1..=3).map(|id| status(drkv, base_port, id).ok()).collect();
        let leaders: Vec<Option<u64>> = statuses
            .iter()
            .map(|s| s.as_ref().and_then(|s| s["leader"].as_u64()))
            .collect();
        let published = statuses.iter().all(|s| {
            s.as_ref()
                .is_some_and(|s| s["members"].as_object().is_some_and(|m| m.len() == 3))
        });
        if let Some(Some(leader)) = leaders.first()
            && published
            && leaders.iter().all(|l| *l == Some(*leader))
        {
            return u16::try_from(*leader).map_err(|e| e.to_string());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err("the benchmark cluster elected no leader within 60 s".into())
}

pub(crate) struct Row {
    pub(crate) mix: &'static str,
    targets: &'static str,
    pub(crate) result: Value,
    /// CPU of the three node processes per answered command.
    pub(crate) cpu_us_per_op: f64,
    /// The machine's CPU time the hypervisor gave to others during the
    /// row, in percent of all its CPUs (a row with much of it is slow for
    /// reasons outside the processes measured).
    steal_percent: f64,
}

/// One load: its mix, connections, and whether to write every key first.
pub(crate) struct Load {
    pub(crate) mix: &'static str,
    pub(crate) write_percent: &'static str,
    pub(crate) connections: &'static str,
    pub(crate) preload: bool,
    /// `drkv bench --workload`: what a write is.
    pub(crate) workload: &'static str,
    /// `drkv bench --protocol`: what the targets speak.
    pub(crate) protocol: &'static str,
}

/// Runs one load against the cluster whose node processes are `pids`;
/// the row carries the CPU the three nodes spent per answered command
/// (user + system, from `/proc/<pid>/stat` before and after, so the
/// figure does not depend on how busy the machine is; a preload runs
/// first, outside the measurement).
pub(crate) fn run_load(
    drkv: &Path,
    pids: &[u32],
    load: &Load,
    targets: &str,
    targets_name: &'static str,
) -> Result<Row, String> {
    let Load {
        mix,
        write_percent,
        connections,
        preload,
        workload,
        protocol,
    } = *load;
    let bench = |seconds: &str, preload: bool| -> Result<Vec<u8>, String> {
        let mut command = Command::new(drkv);
        command.args([
            "bench",
            "--json",
            "--targets",
            targets,
            "--connections",
            connections,
            "--seconds",
            seconds,
            "--write-percent",
            write_percent,
            "--value-bytes",
            "256",
            "--keys",
            "100000",
            "--workload",
            workload,
            "--protocol",
            protocol,
        ]);
        if preload {
            command.arg("--preload");
        }
        let output = command
            .output()
            .map_err(|e| format!("cannot run drkv bench: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "drkv bench failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(output.stdout)
    };
    if preload {
        bench("0.001", true)?;
    }
    let cpu_before = cpu_seconds(pids)?;
    let steal_before = MachineTicks::read();
    let stdout = bench(SECONDS_PER_RUN, false)?;
    let cpu = cpu_seconds(pids)? - cpu_before;
    let steal_percent = MachineTicks::read().steal_percent_since(&steal_before);
    let result: Value =
        serde_json::from_slice(&stdout).map_err(|e| format!("drkv bench output: {e}"))?;
    let ops = result["ops"].as_f64().unwrap_or(0.0);
    let cpu_us_per_op = if ops > 0.0 { cpu * 1e6 / ops } else { 0.0 };
    eprintln!(
        "{mix:>9} {connections:>4} conns via {targets_name}: {:.0} ops/s, {cpu_us_per_op:.0} µs CPU/op, {steal_percent:.1}% stolen",
        result["ops_per_second"].as_f64().unwrap_or(0.0)
    );
    Ok(Row {
        mix,
        targets: targets_name,
        result,
        cpu_us_per_op,
        steal_percent,
    })
}

/// The machine's CPU ticks from the first line of `/proc/stat`: all of
/// them, and those stolen by the hypervisor.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct MachineTicks {
    total: u64,
    steal: u64,
}

impl MachineTicks {
    /// Zero when `/proc/stat` cannot be read (the column then shows 0).
    fn read() -> Self {
        std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| Self::parse(stat.lines().next()?))
            .unwrap_or_default()
    }

    /// `cpu  user nice system idle iowait irq softirq steal ...`.
    fn parse(line: &str) -> Option<Self> {
        let mut fields = line.split_whitespace();
        if fields.next()? != "cpu" {
            return None;
        }
        let ticks: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
        // guest and guest_nice (9th and 10th) are counted in user and
        // nice already.
        let total = ticks.iter().take(8).sum();
        Some(Self {
            total,
            steal: *ticks.get(7)?,
        })
    }

    fn steal_percent_since(&self, before: &Self) -> f64 {
        let total = self.total.saturating_sub(before.total);
        let steal = self.steal.saturating_sub(before.steal);
        if total == 0 {
            0.0
        } else {
            steal as f64 * 100.0 / total as f64
        }
    }
}

/// User + system CPU seconds of the processes (`/proc/<pid>/stat`, in
/// clock ticks of 1/100 s).
pub(crate) fn cpu_seconds(pids: &[u32]) -> Result<f64, String> {
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
        // The fields after the command name (which is in parentheses):
        // utime and stime, fields 14 and 15, are the 12th and 13th.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        for index in [11, 12] {
            ticks += fields
                .get(index)
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("/proc/{pid}/stat has no CPU times"))?;
        }
    }
    Ok(ticks as f64 / 100.0)
}

fn print_table(rows: &[Row]) {
    println!(
        "\n{:<9} {:<7} {:>6} {:>10} {:>9} {:>9} {:>9} {:>10} {:>7} {:>8}",
        "mix",
        "clients",
        "conns",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "CPU µs/op",
        "errors",
        "stolen %"
    );
    for row in rows {
        let r = &row.result;
        let ms = |key: &str| r[key].as_f64().unwrap_or(0.0) / 1000.0;
        println!(
            "{:<9} {:<7} {:>6} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>10.0} {:>7} {:>8.1}",
            row.mix,
            row.targets,
            r["connections"],
            r["ops_per_second"].as_f64().unwrap_or(0.0),
            ms("p50_us"),
            ms("p99_us"),
            ms("p999_us"),
            row.cpu_us_per_op,
            r["errors"],
            row.steal_percent
        );
    }
}

/// redis-benchmark's own numbers against the leader, when it is installed.
fn redis_benchmark(port: u16) {
    let output = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-c",
            "64",
            "-n",
            "100000",
            "-d",
            "256",
            "-r",
            "100000",
            "-t",
            "set,get",
            "--csv",
        ])
        .current_dir(workspace_root())
        .output();
    match output {
        Ok(output) if output.status.success() => {
            println!(
                "\nredis-benchmark -c 64 -d 256 against the leader (CSV: test, rps, avg, min, p50, p95, p99, max ms):"
            );
            print!("{}", String::from_utf8_lossy(&output.stdout));
        }
        Ok(output) => println!(
            "\nredis-benchmark failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(_) => println!(
            "\n(redis-benchmark is not installed: apt-get install redis-tools to add its numbers)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::MachineTicks;

    #[test]
    fn stolen_ticks_are_a_share_of_all_ticks_and_bad_lines_are_none() {
        let before = MachineTicks::parse("cpu  100 0 50 800 10 0 5 35 0 0").expect("a cpu line");
        assert_eq!((before.total, before.steal), (1000, 35));
        let after = MachineTicks::parse("cpu  200 0 100 1500 20 0 10 170 7 0").expect("a cpu line");
        // 1000 more ticks, 135 of them stolen.
        assert!((after.steal_percent_since(&before) - 13.5).abs() < 1e-9);
        assert_eq!(before.steal_percent_since(&before), 0.0, "no time passed");
        assert_eq!(
            MachineTicks::parse("cpu0 1 2 3 4 5 6 7 8"),
            None,
            "one CPU's line"
        );
        assert_eq!(MachineTicks::parse("cpu 1 2 x"), None);
        assert_eq!(MachineTicks::parse("cpu 1 2 3"), None, "no steal field");
    }
}
