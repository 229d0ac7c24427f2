//! One run: start the cluster, load it while the schedule's faults
//! happen, heal, and check what the clients saw and what the nodes hold.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dr_node::resp::Reply;
use dr_sim::history::{Done, check_linearizable, describe};
use serde_json::{Value, json};

use crate::clients::{self, ClientReport, Connection, KEYS, Outcome, Targets};
use crate::cluster::{Cluster, wait_for};
use crate::nemesis::{self, FaultKind, Nemesis, Step};
use crate::net::Network;

/// How a run goes (from the command line).
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// The release `drkv` binary.
    pub(crate) drkv: PathBuf,
    /// Where runs keep their files.
    pub(crate) dir: PathBuf,
    /// Founding members.
    pub(crate) nodes: u64,
    /// Seconds of load with faults.
    pub(crate) secs: u64,
    /// Concurrent clients.
    pub(crate) clients: usize,
    /// `index`, `lease` or `follower`.
    pub(crate) read_mode: ReadMode,
    /// The fault kinds to draw from.
    pub(crate) faults: Vec<FaultKind>,
    /// Use network namespaces (else loopback, no network faults).
    pub(crate) namespaces: bool,
    /// Keep the run's directory when it passes too.
    pub(crate) keep: bool,
    /// Slow the leader's clock past the lease's bound (expected to fail
    /// in lease mode: the check's own test).
    pub(crate) clock_beyond_bound: bool,
    /// The nodes' `--leader-sync-delay-us` (`None`: by seed).
    pub(crate) leader_sync_delay_us: Option<u64>,
    /// The nodes' `--write-behind-bytes` (`None`: by seed).
    pub(crate) write_behind_bytes: Option<usize>,
}

/// How reads are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadMode {
    /// ReadIndex, reads sent to any node.
    Index,
    /// The leader's lease (`--read-lease`), reads sent to any node.
    Lease,
    /// ReadIndex, reads sent only to followers (served from their own
    /// state once caught up to the read index).
    Follower,
}

impl ReadMode {
    /// Every mode.
    pub(crate) const ALL: [Self; 3] = [Self::Index, Self::Lease, Self::Follower];

    /// The `--read-mode` name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Index => "index",
            Self::Lease => "lease",
            Self::Follower => "follower",
        }
    }
}

impl Plan {
    /// The nodes' `--leader-sync-delay-us` in run `seed`: as given, or
    /// 2000 for odd seeds and 0 (every write synced) for even ones.
    fn leader_sync_delay_us(&self, seed: u64) -> u64 {
        self.leader_sync_delay_us
            .unwrap_or(if seed % 2 == 1 { 2_000 } else { 0 })
    }

    /// The nodes' `--write-behind-bytes` in run `seed`: as given, or by
    /// `seed / 2 % 3`: 32 MiB (checkpoints at that bound, changes of
    /// configuration and shutdown), 4 KiB (a checkpoint on its thread
    /// every few applies), or 0 (every apply writes RocksDB, drkv's
    /// default for now). With
    /// the leader's sync delay chosen by `seed % 2`, the six pairs take
    /// turns.
    fn write_behind_bytes(&self, seed: u64) -> usize {
        self.write_behind_bytes.unwrap_or(match seed / 2 % 3 {
            0 => 32 << 20,
            1 => 4 << 10,
            _ => 0,
        })
    }

    /// The command that runs `seed`'s schedule again with this plan's
    /// settings (which decide the schedule too).
    fn replay(&self, seed: u64) -> String {
        let faults: Vec<&str> = self.faults.iter().map(|k| k.name()).collect();
        let mut command = format!(
            "cargo xtask robustness --seed {seed} --runs 1 --nodes {} --secs {} --clients {} --read-mode {} --faults {} --leader-sync-delay-us {} --write-behind-bytes {}",
            self.nodes,
            self.secs,
            self.clients,
            self.read_mode.name(),
            faults.join(","),
            self.leader_sync_delay_us(seed),
            self.write_behind_bytes(seed)
        );
        if !self.namespaces {
            command.push_str(" --loopback");
        }
        if self.clock_beyond_bound {
            command.push_str(" --clock-beyond-bound");
        }
        command
    }
}

/// A run's verdict: `Ok` with a one-line summary, or what failed.
pub(crate) fn run(seed: u64, plan: &Plan) -> Result<String, String> {
    let dir = plan.dir.join(format!("run-{seed}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut state = RunState::start(seed, plan, &dir)?;
    let failpoints = state.cluster.admin(1, "PUT", "/failpoints", "{}").is_ok();
    let kinds: Vec<FaultKind> = plan
        .faults
        .iter()
        .copied()
        .filter(|k| plan.namespaces || !k.needs_network())
        .filter(|k| failpoints || !k.needs_failpoints())
        .collect();
    let steps = nemesis::schedule(seed, &kinds, plan.secs, plan.clock_beyond_bound);
    let mut header = format!(
        "seed {seed}: {} nodes, {} s, {} clients, reads: {:?}, leader sync delay: {} us, write-behind: {} bytes, network: {}, clock and disk faults: {}\n",
        plan.nodes,
        plan.secs,
        plan.clients,
        plan.read_mode,
        plan.leader_sync_delay_us(seed),
        plan.write_behind_bytes(seed),
        if plan.namespaces {
            "namespaces"
        } else {
            "loopback (no partitions, loss or slow links)"
        },
        if failpoints {
            "on"
        } else {
            "off (drkv built without the failpoints feature)"
        }
    );
    for step in &steps {
        let _ = writeln!(
            header,
            "  {:6.1} s  {} (held {:.1} s)",
            step.at.as_secs_f64(),
            step.fault,
            step.hold.as_secs_f64()
        );
    }
    print!("{header}");
    let result = state.drive(&steps, plan);
    let log = state.nemesis.log.join("\n");
    match result {
        Ok(summary) => {
            if plan.keep {
                state.save_history(&dir);
            }
            drop(state);
            if !plan.keep {
                let _ = std::fs::remove_dir_all(&dir);
            }
            Ok(format!("{log}\n  {summary}"))
        }
        Err(reason) => {
            state.save_history(&dir);
            drop(state);
            Err(format!(
                "{log}\n  FAILED: {reason}\n  kept: {} (node logs, data directories, history.json)\n  replay the schedule: {}",
                dir.display(),
                plan.replay(seed)
            ))
        }
    }
}

/// A run in progress. The cluster is declared before the network so its
/// processes die before their namespaces go.
struct RunState {
    seed: u64,
    cluster: Cluster,
    network: Network,
    nemesis: Nemesis,
    epoch: Instant,
    history: Vec<Done>,
    not_done: u64,
    unknown: std::collections::BTreeMap<String, u64>,
}

impl RunState {
    fn start(seed: u64, plan: &Plan, dir: &Path) -> Result<Self, String> {
        let ids: Vec<u64> = (1..=plan.nodes).collect();
        let network = Network::new(&ids, plan.namespaces)?;
        let mut extra = match plan.read_mode {
            ReadMode::Lease => vec!["--read-lease".to_owned()],
            _ => Vec::new(),
        };
        let delay_us = plan.leader_sync_delay_us(seed);
        extra.extend(["--leader-sync-delay-us".to_owned(), delay_us.to_string()]);
        let behind = plan.write_behind_bytes(seed);
        extra.extend(["--write-behind-bytes".to_owned(), behind.to_string()]);
        let cluster = Cluster::start(&plan.drkv, dir, &network, &ids, extra)?;
        let state = Self {
            seed,
            cluster,
            network,
            nemesis: Nemesis::new(seed),
            epoch: Instant::now(),
            history: Vec::new(),
            not_done: 0,
            unknown: Default::default(),
        };
        state.cluster.wait_for_leader(Duration::from_secs(30))?;
        Ok(state)
    }

    fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    fn drive(&mut self, steps: &[Step], plan: &Plan) -> Result<String, String> {
        let targets = Arc::new(Targets {
            nodes: self
                .cluster
                .nodes
                .iter()
                .map(|n| (n.id, n.addrs.client))
                .collect(),
            leader: AtomicU64::new(self.cluster.leader().unwrap_or(0)),
            reads_on_followers: plan.read_mode == ReadMode::Follower,
        });
        let stop = Arc::new(AtomicBool::new(false));
        self.epoch = Instant::now();
        let workers: Vec<_> = (0..plan.clients)
            .map(|client| {
                let (targets, stop, seed, epoch) = (
                    Arc::clone(&targets),
                    Arc::clone(&stop),
                    self.seed,
                    self.epoch,
                );
                std::thread::spawn(move || {
                    clients::run_client(client, seed, &targets, epoch, &stop)
                })
            })
            .collect();
        let faulted = self.carry_out(steps, &targets);
        // Heal, then let clients run on a while: the cluster must serve
        // again.
        let healed = faulted.and_then(|()| self.heal_all());
        let after_heal = healed.and_then(|()| {
            let writes_before = self.wait_for_service(&targets);
            std::thread::sleep(Duration::from_secs(2));
            writes_before
        });
        stop.store(true, Relaxed);
        for worker in workers {
            let report: ClientReport = worker.join().map_err(|_| "a client thread panicked")?;
            self.history.extend(report.history);
            self.not_done += report.not_done;
            for (why, count) in report.unknown {
                *self.unknown.entry(why).or_default() += count;
            }
        }
        after_heal?;
        let loaded = self.history.len();
        let unknown = self.history.iter().filter(|d| d.ret.is_none()).count();
        // Every acknowledged write must be there, through every node.
        self.final_reads("after healing")?;
        self.check_converged()?;
        check_linearizable(&self.history)?;
        // ... and after every node restarts from its disk.
        self.cluster.stop_all();
        let ids: Vec<u64> = self.cluster.nodes.iter().map(|n| n.id).collect();
        for id in ids {
            self.cluster.restart(&self.network, id)?;
        }
        self.cluster.wait_for_leader(Duration::from_secs(30))?;
        self.final_reads("after restarting every node")?;
        self.check_converged()?;
        check_linearizable(&self.history)?;
        let unknown_why: Vec<String> = self
            .unknown
            .iter()
            .map(|(why, n)| format!("{why} {n}"))
            .collect();
        Ok(format!(
            "ok: {loaded} commands ({unknown} unknown outcomes; {} \"not done\"; unknown by cause: {}), linearizable, converged, all acknowledged writes present after healing and after restarting every node",
            self.not_done,
            if unknown_why.is_empty() {
                "none".to_owned()
            } else {
                unknown_why.join(", ")
            }
        ))
    }

    /// Carries out `steps` in time, tracking the leader for the clients.
    fn carry_out(&mut self, steps: &[Step], targets: &Targets) -> Result<(), String> {
        for step in steps {
            while self.epoch.elapsed() < step.at {
                self.watch(targets)?;
                std::thread::sleep(Duration::from_millis(100));
            }
            let at = self.now();
            let undo = self
                .nemesis
                .start(step.fault, &mut self.cluster, &mut self.network, at)?;
            let until = Instant::now() + step.hold;
            while Instant::now() < until {
                self.watch(targets)?;
                std::thread::sleep(Duration::from_millis(100));
            }
            self.nemesis
                .undo(undo, &mut self.cluster, &mut self.network)?;
        }
        Ok(())
    }

    /// Notes the leader; a node that exited on its own fails the run.
    fn watch(&mut self, targets: &Targets) -> Result<(), String> {
        let ids: Vec<u64> = self.cluster.nodes.iter().map(|n| n.id).collect();
        for id in ids {
            if self.cluster.may_exit(id) {
                continue;
            }
            if let Some(status) = self.cluster.exited(id) {
                return Err(format!(
                    "node {id} exited on its own ({status}); see {}",
                    self.cluster.log_path(id).display()
                ));
            }
        }
        if let Some(leader) = self.cluster.leader() {
            targets.leader.store(leader, Relaxed);
        }
        Ok(())
    }

    /// Every fault undone: processes resumed or restarted, the network
    /// whole, every node a voter again.
    fn heal_all(&mut self) -> Result<(), String> {
        self.network.heal()?;
        let ids: Vec<u64> = self.cluster.nodes.iter().map(|n| n.id).collect();
        for &id in &ids {
            self.cluster.resume(id);
            if let Some(status) = self.cluster.exited(id)
                && !self.cluster.may_exit(id)
            {
                return Err(format!("node {id} exited on its own ({status})"));
            }
            self.cluster.restart(&self.network, id)?;
        }
        self.cluster.wait_for_leader(Duration::from_secs(30))?;
        self.nemesis
            .log
            .push(format!("[{:6.1} s] healed", self.now()));
        Ok(())
    }

    /// Waits until a write through the leader is acknowledged after
    /// healing (the cluster serves again).
    fn wait_for_service(&self, targets: &Targets) -> Result<(), String> {
        let probe = [
            Bytes::from_static(b"SET"),
            Bytes::from_static(b"robustness-probe"),
            Bytes::from_static(b"1"),
        ];
        wait_for(Duration::from_secs(30), || {
            let leader = self.cluster.leader()?;
            targets.leader.store(leader, Relaxed);
            let mut connection = Connection::open(self.cluster.node(leader).addrs.client).ok()?;
            matches!(connection.call(&probe), Ok(Reply::Simple("OK"))).then_some(())
        })
        .ok_or_else(|| "no write was acknowledged within 30 s of healing".into())
    }

    /// Reads every key through every node into the history.
    fn final_reads(&mut self, when: &str) -> Result<(), String> {
        let args: Vec<Bytes> = std::iter::once("MGET")
            .chain(KEYS.iter().copied())
            .map(Bytes::from)
            .collect();
        let client = usize::MAX;
        let nodes: Vec<(u64, std::net::SocketAddr)> = self
            .cluster
            .nodes
            .iter()
            .map(|n| (n.id, n.addrs.client))
            .collect();
        let mut seen: Vec<(u64, Reply)> = Vec::new();
        for (node, addr) in nodes {
            let done = wait_for(Duration::from_secs(30), || {
                let mut connection = Connection::open(addr).ok()?;
                let call_us = self.epoch.elapsed().as_micros() as u64;
                let reply = connection.call(&args);
                let ret_us = self.epoch.elapsed().as_micros() as u64;
                match clients::classify(reply) {
                    Outcome::Answered(reply) => Some(Done {
                        args: args.clone(),
                        node,
                        client,
                        call_us,
                        ret: Some((ret_us, reply)),
                    }),
                    _ => None,
                }
            })
            .ok_or_else(|| format!("node {node} answered no read {when} within 30 s"))?;
            if let Some((_, reply)) = &done.ret {
                seen.push((node, reply.clone()));
            }
            self.history.push(done);
        }
        if let Some((first, reply)) = seen.first()
            && let Some((other, differs)) = seen.iter().find(|(_, r)| r != reply)
        {
            return Err(format!(
                "nodes disagree {when}: node {first} reads {}, node {other} reads {}",
                describe(reply),
                describe(differs)
            ));
        }
        Ok(())
    }

    /// Every node applied the same index and holds the same key count.
    fn check_converged(&self) -> Result<(), String> {
        let mut last = Vec::new();
        let converged = wait_for(Duration::from_secs(30), || {
            last = self
                .cluster
                .nodes
                .iter()
                .map(|n| {
                    self.cluster
                        .status(n.id)
                        .map(|s| (n.id, s["applied_index"].as_u64(), s["keys"].as_u64()))
                })
                .collect::<Vec<_>>();
            let states: Vec<(Option<u64>, Option<u64>)> = last
                .iter()
                .filter_map(|s| s.as_ref().ok().map(|(_, a, k)| (*a, *k)))
                .collect();
            (states.len() == self.cluster.nodes.len() && states.windows(2).all(|w| w[0] == w[1]))
                .then_some(())
        });
        converged.ok_or_else(|| format!("the nodes did not converge within 30 s: {last:?}"))
    }

    /// Writes the history as JSON beside the logs.
    fn save_history(&self, dir: &Path) {
        let commands: Vec<Value> = self
            .history
            .iter()
            .map(|d| {
                json!({
                    "client": if d.client == usize::MAX { json!("final-read") } else { json!(d.client) },
                    "node": d.node,
                    "call_us": d.call_us,
                    "args": d.args.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect::<Vec<_>>(),
                    "return_us": d.ret.as_ref().map(|(at, _)| *at),
                    "reply": d.ret.as_ref().map(|(_, r)| describe(r)),
                })
            })
            .collect();
        let document = json!({
            "seed": self.seed,
            "faults": self.nemesis.log,
            "history": commands,
        });
        let _ = std::fs::write(
            dir.join("history.json"),
            serde_json::to_string_pretty(&document).unwrap_or_default(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_command_carries_what_decides_the_schedule() {
        let plan = Plan {
            drkv: PathBuf::from("drkv"),
            dir: PathBuf::from("runs"),
            nodes: 5,
            secs: 20,
            clients: 4,
            read_mode: ReadMode::Lease,
            faults: vec![FaultKind::Disk, FaultKind::Clock],
            namespaces: false,
            keep: false,
            clock_beyond_bound: true,
            leader_sync_delay_us: None,
            write_behind_bytes: None,
        };
        let replay = plan.replay(42);
        assert!(replay.contains("--leader-sync-delay-us 0"), "{replay}");
        assert!(plan.replay(43).contains("--leader-sync-delay-us 2000"));
        // 42 / 2 % 3 == 0: 32 MiB; 44: 4 KiB; 46: through.
        assert!(replay.contains("--write-behind-bytes 33554432"), "{replay}");
        assert!(plan.replay(44).contains("--write-behind-bytes 4096"));
        assert!(plan.replay(46).contains("--write-behind-bytes 0"));
        for part in [
            "--seed 42 --runs 1",
            "--nodes 5",
            "--secs 20",
            "--clients 4",
            "--read-mode lease",
            "--faults disk,clock",
            "--loopback",
            "--clock-beyond-bound",
        ] {
            assert!(replay.contains(part), "{part} missing from {replay}");
        }
        for mode in ReadMode::ALL {
            assert_eq!(
                ReadMode::ALL
                    .iter()
                    .filter(|m| m.name() == mode.name())
                    .count(),
                1
            );
        }
    }
}
