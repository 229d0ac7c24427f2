//! `cargo xtask bench expiry`: what a million keys under a time to live
//! cost a release three-node cluster: loading them, keeping them while
//! none is due (the leader looks at the head of the expiry index on each
//! tick, never at every key), and removing them all through the log once
//! due (256 keys per entry, one entry in flight). CPU is the three node
//! processes' user + system time from `/proc/<pid>/stat`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cluster::cpu_seconds;

const BASE_PORT: u16 = 17_800;
const KEYS: u64 = 1_000_000;
const TTL_SECONDS: u64 = 90;

pub(crate) fn run() -> Result<(), String> {
    let drkv = crate::cluster::build_release_drkv()?;
    let (cluster, leader) = crate::cluster::start_cluster_at(&drkv, false, None, BASE_PORT)?;
    let pids = cluster.node_pids()?;
    let targets: Vec<String> = (1..=3)
        .map(|id| format!("127.0.0.1:{}", BASE_PORT + id))
        .collect();
    let leader_port = BASE_PORT + leader;

    let cpu_before = cpu_seconds(&pids)?;
    let started = Instant::now();
    load(&drkv, &targets.join(","))?;
    let load_time = started.elapsed();
    let load_cpu = cpu_seconds(&pids)? - cpu_before;
    let loaded_at = started + load_time;
    let keys = dbsize(leader_port)?;
    println!(
        "loaded {keys} keys with EX {TTL_SECONDS} in {:.1} s ({:.0} keys/s), {:.1} CPU s ({:.1} µs per key)",
        load_time.as_secs_f64(),
        KEYS as f64 / load_time.as_secs_f64(),
        load_cpu,
        load_cpu * 1e6 / KEYS as f64
    );

    // None due yet: what holding them costs.
    let idle = Duration::from_secs(10);
    let before = cpu_seconds(&pids)?;
    std::thread::sleep(idle);
    let idle_cpu = cpu_seconds(&pids)? - before;
    println!(
        "holding {keys} keys under TTL, none due: {:.1}% of one core over {} s (all three nodes)",
        idle_cpu * 100.0 / idle.as_secs_f64(),
        idle.as_secs()
    );

    // Due: removal through the log.
    let due_at = started + Duration::from_secs(TTL_SECONDS);
    let first_due = due_at
        .checked_duration_since(Instant::now())
        .unwrap_or_default();
    std::thread::sleep(first_due);
    let before = cpu_seconds(&pids)?;
    let reap_started = Instant::now();
    let deadline = reap_started + Duration::from_secs(300);
    loop {
        let left: Vec<u64> = (1..=3)
            .map(|id| dbsize(BASE_PORT + id))
            .collect::<Result<_, _>>()?;
        if left.iter().all(|&n| n == 0) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("keys left after 300 s: {left:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let reap_time = reap_started.elapsed();
    let reap_cpu = cpu_seconds(&pids)? - before;
    let spread = load_time.as_secs_f64();
    println!(
        "all {keys} removed on every node {:.1} s after the first was due (they fell due over {spread:.1} s): \
         {:.0} keys/s, {:.1} CPU s ({:.1} µs per key, all three nodes)",
        reap_time.as_secs_f64(),
        keys as f64 / reap_time.as_secs_f64().max(spread),
        reap_cpu,
        reap_cpu * 1e6 / keys.max(1) as f64
    );
    let _ = loaded_at;
    drop(cluster);
    Ok(())
}

fn load(drkv: &Path, targets: &str) -> Result<(), String> {
    let output = Command::new(drkv)
        .args([
            "bench",
            "--targets",
            targets,
            "--preload",
            "--workload",
            "set-ex",
        ])
        .args([
            "--ttl-seconds",
            &TTL_SECONDS.to_string(),
            "--keys",
            &KEYS.to_string(),
        ])
        .args([
            "--connections",
            "16",
            "--seconds",
            "0.001",
            "--write-percent",
            "0",
        ])
        .args(["--value-bytes", "64"])
        .output()
        .map_err(|e| format!("cannot run drkv bench: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "loading failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

fn dbsize(port: u16) -> Result<u64, String> {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "DBSIZE"])
        .output()
        .map_err(|e| format!("redis-cli (redis-tools) is needed: {e}"))?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|_| {
            format!(
                "DBSIZE answered {:?}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
}
