//! The fault schedule: drawn from the run's seed before the run starts,
//! printed, then carried out against the real processes and network.
//!
//! Faults happen one at a time, each held for a while and then undone,
//! with quiet gaps between them. Which node a fault hits ("the leader",
//! "a follower") is decided when it happens, from what the nodes say.

use std::fmt;
use std::time::Duration;

use dr_sim::rng::Rng;

use crate::cluster::{Cluster, wait_for};
use crate::net::Network;

/// A family of faults, selectable with `--faults`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum FaultKind {
    /// SIGKILL and restart: a follower, the leader, every node.
    Kill,
    /// SIGSTOP for longer than an election timeout, then SIGCONT.
    Pause,
    /// Network partitions (needs namespaces).
    Partition,
    /// Packet loss (needs namespaces).
    Loss,
    /// A slow link: one node's sending rate limited (needs namespaces).
    Slow,
    /// Leader transfer through the admin API.
    Transfer,
    /// Remove a voter (the leader half the time), wipe it, add it back
    /// as a learner, promote it.
    Membership,
    /// One node's clock running slow (the leader) or fast (a follower),
    /// within the lease's bound (needs drkv's `failpoints` feature).
    Clock,
    /// A synced write failing (EIO, ENOSPC), torn at a crash, or slow
    /// (needs drkv's `failpoints` feature).
    Disk,
}

impl FaultKind {
    /// Every kind.
    pub(crate) const ALL: [Self; 9] = [
        Self::Kill,
        Self::Pause,
        Self::Partition,
        Self::Loss,
        Self::Slow,
        Self::Transfer,
        Self::Membership,
        Self::Clock,
        Self::Disk,
    ];

    /// The `--faults` name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Pause => "pause",
            Self::Partition => "partition",
            Self::Loss => "loss",
            Self::Slow => "slow",
            Self::Transfer => "transfer",
            Self::Membership => "membership",
            Self::Clock => "clock",
            Self::Disk => "disk",
        }
    }

    /// The kind named `name`.
    pub(crate) fn parse(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|k| k.name()).collect();
                format!("unknown fault {name:?}; known: {}", names.join(", "))
            })
    }

    /// Whether it needs network namespaces.
    pub(crate) fn needs_network(self) -> bool {
        matches!(self, Self::Partition | Self::Loss | Self::Slow)
    }

    /// Whether it needs drkv built with the `failpoints` feature.
    pub(crate) fn needs_failpoints(self) -> bool {
        matches!(self, Self::Clock | Self::Disk)
    }
}

/// One fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// SIGKILL a follower.
    KillFollower,
    /// SIGKILL the leader.
    KillLeader,
    /// SIGKILL every node at once.
    KillAll,
    /// SIGSTOP a follower.
    PauseFollower,
    /// SIGSTOP the leader.
    PauseLeader,
    /// The leader cut off from every other node, both ways.
    IsolateLeader,
    /// A follower cut off both ways.
    IsolateFollower,
    /// The leader hears nobody, but is heard (one way).
    LeaderDeaf,
    /// The leader and one follower on one side, the rest on the other
    /// (with five nodes: the leader in the minority).
    SplitWithLeaderInMinority,
    /// Every node drops this percentage of what it receives.
    Loss(u8),
    /// The leader sends at most this many kbit/s.
    SlowLeader(u32),
    /// Hand leadership to a random other voter.
    TransferLeader,
    /// Remove a member (the leader if `true`), wipe it, add it back.
    Readd(bool),
    /// The leader's clock at this many millionths of real time (slow).
    SlowClockLeader(u64),
    /// A follower's clock at this many millionths of real time (fast).
    FastClockFollower(u64),
    /// The leader's next synced write fails with EIO.
    FailSyncLeader,
    /// A follower's next synced write fails with ENOSPC.
    NoSpaceFollower,
    /// The leader's next synced write is torn, and the process ends.
    TornWriteLeader,
    /// Every synced write of the leader this many ms slower.
    SlowDiskLeader(u64),
}

impl Fault {
    fn kind(self) -> FaultKind {
        match self {
            Self::KillFollower | Self::KillLeader | Self::KillAll => FaultKind::Kill,
            Self::PauseFollower | Self::PauseLeader => FaultKind::Pause,
            Self::IsolateLeader
            | Self::IsolateFollower
            | Self::LeaderDeaf
            | Self::SplitWithLeaderInMinority => FaultKind::Partition,
            Self::Loss(_) => FaultKind::Loss,
            Self::SlowLeader(_) => FaultKind::Slow,
            Self::TransferLeader => FaultKind::Transfer,
            Self::Readd(_) => FaultKind::Membership,
            Self::SlowClockLeader(_) | Self::FastClockFollower(_) => FaultKind::Clock,
            Self::FailSyncLeader
            | Self::NoSpaceFollower
            | Self::TornWriteLeader
            | Self::SlowDiskLeader(_) => FaultKind::Disk,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KillFollower => write!(f, "kill -9 a follower"),
            Self::KillLeader => write!(f, "kill -9 the leader"),
            Self::KillAll => write!(f, "kill -9 every node"),
            Self::PauseFollower => write!(f, "SIGSTOP a follower"),
            Self::PauseLeader => write!(f, "SIGSTOP the leader"),
            Self::IsolateLeader => write!(f, "isolate the leader"),
            Self::IsolateFollower => write!(f, "isolate a follower"),
            Self::LeaderDeaf => write!(f, "the leader hears no one (one way)"),
            Self::SplitWithLeaderInMinority => write!(f, "split, the leader in the minority"),
            Self::Loss(percent) => write!(f, "{percent}% packet loss everywhere"),
            Self::SlowLeader(kbit) => write!(f, "the leader's link at {kbit} kbit/s"),
            Self::TransferLeader => write!(f, "transfer leadership"),
            Self::Readd(true) => write!(f, "remove the leader, wipe it, add it back"),
            Self::Readd(false) => write!(f, "remove a follower, wipe it, add it back"),
            Self::SlowClockLeader(ppm) => {
                write!(f, "the leader's clock at {:.2}x", *ppm as f64 / 1e6)
            }
            Self::FastClockFollower(ppm) => {
                write!(f, "a follower's clock at {:.2}x", *ppm as f64 / 1e6)
            }
            Self::FailSyncLeader => write!(f, "the leader's next fsync fails (EIO)"),
            Self::NoSpaceFollower => write!(f, "a follower's disk is full (ENOSPC)"),
            Self::TornWriteLeader => write!(f, "the leader's next synced write is torn"),
            Self::SlowDiskLeader(ms) => write!(f, "the leader's fsyncs {ms} ms slower"),
        }
    }
}

/// A fault, when it starts and how long it holds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Step {
    /// From the start of the load.
    pub(crate) at: Duration,
    /// The fault.
    pub(crate) fault: Fault,
    /// How long until it is undone.
    pub(crate) hold: Duration,
}

/// The slowest leader clock within the lease's bound, and the range
/// beyond it (`--clock-beyond-bound`: to see the check catch what the
/// assumption protects against).
const SLOW_CLOCK_PPM: (u64, u64) = (820_000, 1_000_000);
const SLOW_CLOCK_BEYOND_BOUND_PPM: (u64, u64) = (250_000, 500_000);

/// The schedule for `seed`: faults of `kinds` during `secs` seconds.
pub(crate) fn schedule(
    seed: u64,
    kinds: &[FaultKind],
    secs: u64,
    clock_beyond_bound: bool,
) -> Vec<Step> {
    let slow_clock = if clock_beyond_bound {
        SLOW_CLOCK_BEYOND_BOUND_PPM
    } else {
        SLOW_CLOCK_PPM
    };
    let mut rng = Rng::new(seed);
    let mut steps = Vec::new();
    let mut at_ms = 1_000;
    let end_ms = secs * 1_000;
    let faults: Vec<Fault> = [
        Fault::KillFollower,
        Fault::KillLeader,
        Fault::KillAll,
        Fault::PauseFollower,
        Fault::PauseLeader,
        Fault::IsolateLeader,
        Fault::IsolateFollower,
        Fault::LeaderDeaf,
        Fault::SplitWithLeaderInMinority,
        Fault::Loss(0),
        Fault::SlowLeader(0),
        Fault::TransferLeader,
        Fault::Readd(false),
        Fault::Readd(true),
        Fault::SlowClockLeader(0),
        Fault::FastClockFollower(0),
        Fault::FailSyncLeader,
        Fault::NoSpaceFollower,
        Fault::TornWriteLeader,
        Fault::SlowDiskLeader(0),
    ]
    .into_iter()
    .filter(|f| kinds.contains(&f.kind()))
    .collect();
    if faults.is_empty() {
        return steps;
    }
    while at_ms + 500 < end_ms {
        let fault = match rng.pick(&faults) {
            Fault::Loss(_) => Fault::Loss(rng.range(5, 30) as u8),
            Fault::SlowLeader(_) => Fault::SlowLeader(rng.range(200, 2_000) as u32),
            // Within the lease's bound: rates within a quarter of each
            // other (one node skewed at a time).
            Fault::SlowClockLeader(_) => {
                Fault::SlowClockLeader(rng.range(slow_clock.0, slow_clock.1))
            }
            Fault::FastClockFollower(_) => {
                Fault::FastClockFollower(rng.range(1_000_000, 1_200_000))
            }
            Fault::SlowDiskLeader(_) => Fault::SlowDiskLeader(rng.range(20, 300)),
            other => other,
        };
        let hold_ms = match fault {
            Fault::TransferLeader | Fault::Readd(_) => 0,
            // Long enough for an election (100-200 ms) several times over.
            _ => rng.range(500, 3_000),
        };
        steps.push(Step {
            at: Duration::from_millis(at_ms),
            fault,
            hold: Duration::from_millis(hold_ms),
        });
        at_ms += hold_ms + rng.range(300, 1_500);
    }
    steps
}

/// What a carried-out fault left to undo.
pub(crate) enum Undo {
    /// Nothing.
    Nothing,
    /// Restart these nodes.
    Restart(Vec<u64>),
    /// SIGCONT this node.
    Resume(u64),
    /// Heal the network.
    Heal,
    /// Set this node's clock back to real time.
    Clock(u64),
    /// Set this node's clock back to real time and heal the network.
    ClockAndHeal(u64),
    /// Clear this node's disk fault, or restart it if the fault ended it.
    Disk(u64),
}

/// Carries faults out against `cluster` and `network`.
pub(crate) struct Nemesis {
    rng: Rng,
    /// Log lines of what was done.
    pub(crate) log: Vec<String>,
}

impl Nemesis {
    /// A nemesis whose choices of target follow `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            rng: Rng::new(seed ^ 0x006e_656d_6573_6973),
            log: Vec::new(),
        }
    }

    fn members(cluster: &Cluster) -> Vec<u64> {
        cluster
            .nodes
            .iter()
            .find_map(|n| cluster.status(n.id).ok())
            .and_then(|s| {
                s["voters"]
                    .as_array()
                    .map(|v| v.iter().filter_map(|id| id.as_u64()).collect())
            })
            .unwrap_or_default()
    }

    fn follower(&mut self, cluster: &Cluster, leader: u64) -> Option<u64> {
        let others: Vec<u64> = Self::members(cluster)
            .into_iter()
            // Up and answering (a node restarted a moment ago may not
            // listen yet).
            .filter(|&id| id != leader && cluster.status(id).is_ok())
            .collect();
        (!others.is_empty()).then(|| self.rng.pick(&others))
    }

    /// Starts `fault`; what to undo when its hold ends. `Err` only for
    /// what breaks the suite itself (not for a refused admin call).
    pub(crate) fn start(
        &mut self,
        fault: Fault,
        cluster: &mut Cluster,
        network: &mut Network,
        at: f64,
    ) -> Result<Undo, String> {
        let needs_leader = !matches!(fault, Fault::KillAll | Fault::Loss(_));
        let leader = match cluster.leader() {
            Some(leader) => leader,
            None if needs_leader => {
                self.log
                    .push(format!("[{at:6.1} s] {fault}: skipped (no leader now)"));
                return Ok(Undo::Nothing);
            }
            None => 0,
        };
        let follower = self.follower(cluster, leader);
        let target = match fault {
            Fault::KillFollower
            | Fault::PauseFollower
            | Fault::IsolateFollower
            | Fault::FastClockFollower(_)
            | Fault::NoSpaceFollower => follower,
            _ => Some(leader),
        };
        let Some(target) = target else {
            self.log
                .push(format!("[{at:6.1} s] {fault}: skipped (no follower up)"));
            return Ok(Undo::Nothing);
        };
        let all: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
        let mut note = format!("node {target}");
        let undo = match fault {
            Fault::KillFollower | Fault::KillLeader => {
                cluster.kill(target);
                Undo::Restart(vec![target])
            }
            Fault::KillAll => {
                let running: Vec<u64> = all
                    .iter()
                    .copied()
                    .filter(|&id| cluster.node(id).running())
                    .collect();
                for &id in &running {
                    cluster.kill(id);
                }
                note = format!("nodes {running:?}");
                Undo::Restart(running)
            }
            Fault::PauseFollower | Fault::PauseLeader => {
                cluster.pause(target);
                Undo::Resume(target)
            }
            Fault::IsolateLeader | Fault::IsolateFollower => {
                for &other in all.iter().filter(|&&id| id != target) {
                    network.cut(target, other)?;
                    network.cut(other, target)?;
                }
                Undo::Heal
            }
            Fault::LeaderDeaf => {
                for &other in all.iter().filter(|&&id| id != target) {
                    network.cut(other, target)?;
                }
                Undo::Heal
            }
            Fault::SplitWithLeaderInMinority => {
                let mut minority = vec![target];
                if all.len() > 3
                    && let Some(f) = follower
                {
                    minority.push(f);
                }
                for &a in &minority {
                    for &b in all.iter().filter(|id| !minority.contains(id)) {
                        network.cut(a, b)?;
                        network.cut(b, a)?;
                    }
                }
                note = format!("nodes {minority:?} apart");
                Undo::Heal
            }
            Fault::Loss(percent) => {
                network.lose(percent)?;
                note = "all nodes".into();
                Undo::Heal
            }
            Fault::SlowLeader(kbit) => {
                network.slow(target, kbit)?;
                Undo::Heal
            }
            Fault::TransferLeader => {
                let to = follower.unwrap_or(leader);
                note = match cluster.admin(leader, "POST", &format!("/transfer-leader/{to}"), "") {
                    Ok(_) => format!("node {leader} to node {to}"),
                    Err(e) => format!("node {leader} to node {to}: refused ({e})"),
                };
                Undo::Nothing
            }
            Fault::SlowClockLeader(ppm) | Fault::FastClockFollower(ppm) => {
                let body = format!("{{\"clock_rate_ppm\":{ppm}}}");
                if let Err(error) = cluster.admin(target, "PUT", "/failpoints", &body) {
                    self.log
                        .push(format!("[{at:6.1} s] {fault}: skipped ({error})"));
                    return Ok(Undo::Nothing);
                }
                if ppm < SLOW_CLOCK_PPM.0 {
                    // Beyond the bound: cut the slow leader off too, so a
                    // new leader rises while it may still trust its lease.
                    std::thread::sleep(Duration::from_millis(200));
                    for &other in all.iter().filter(|&&id| id != target) {
                        network.cut(target, other)?;
                        network.cut(other, target)?;
                    }
                    note = format!("node {target}, then isolated");
                    Undo::ClockAndHeal(target)
                } else {
                    Undo::Clock(target)
                }
            }
            Fault::FailSyncLeader
            | Fault::NoSpaceFollower
            | Fault::TornWriteLeader
            | Fault::SlowDiskLeader(_) => {
                let body = match fault {
                    Fault::FailSyncLeader => r#"{"disk":"fail-sync"}"#.to_owned(),
                    Fault::NoSpaceFollower => r#"{"disk":"no-space"}"#.to_owned(),
                    Fault::TornWriteLeader => r#"{"disk":"torn-write"}"#.to_owned(),
                    Fault::SlowDiskLeader(ms) => {
                        format!(r#"{{"disk":"slow-sync","slow_sync_ms":{ms}}}"#)
                    }
                    _ => unreachable!("a disk fault"),
                };
                if !matches!(fault, Fault::SlowDiskLeader(_)) {
                    cluster.expect_exit(target);
                }
                if let Err(error) = cluster.admin(target, "PUT", "/failpoints", &body) {
                    // A fault that ends the process may fire before the
                    // answer leaves (the next synced write can come within
                    // microseconds): then the node stops, and the fault
                    // is undone as one that fired.
                    let ended = !matches!(fault, Fault::SlowDiskLeader(_))
                        && wait_for(Duration::from_secs(2), || {
                            (cluster.exited(target).is_some() || !cluster.node(target).running())
                                .then_some(())
                        })
                        .is_some();
                    if !ended {
                        cluster.expected_exit_done(target);
                        self.log
                            .push(format!("[{at:6.1} s] {fault}: skipped ({error})"));
                        return Ok(Undo::Nothing);
                    }
                    note = format!("node {target} (it ended before answering)");
                }
                Undo::Disk(target)
            }
            Fault::Readd(leader_too) => {
                let victim = if leader_too { Some(leader) } else { follower };
                note = match victim {
                    Some(victim) => self.readd(cluster, network, victim)?,
                    None => "no follower up".into(),
                };
                Undo::Nothing
            }
        };
        self.log.push(format!("[{at:6.1} s] {fault}: {note}"));
        Ok(undo)
    }

    /// Removes `victim` through another member, wipes it, adds it back
    /// as a learner and promotes it once it caught up.
    fn readd(
        &mut self,
        cluster: &mut Cluster,
        network: &Network,
        victim: u64,
    ) -> Result<String, String> {
        let others: Vec<u64> = Self::members(cluster)
            .into_iter()
            .filter(|&id| id != victim && cluster.node(id).running())
            .collect();
        let Some(&via) = others.first() else {
            return Ok(format!("node {victim}: no other member up"));
        };
        if let Err(e) = cluster.admin(via, "DELETE", &format!("/members/{victim}"), "") {
            // Refused, or uncertain (the leader stepped down before it
            // answered: the removal may still commit). Settled once a
            // leader has committed everything in its log: from then on
            // its voters say what happened.
            if voters_settled(cluster).is_some_and(|voters| !voters.contains(&victim)) {
                cluster.kill(victim);
                add_back(cluster, network, victim, &others)?;
                return Ok(format!(
                    "node {victim}: removal answered {e}, yet it took effect; wiped, back as a voter"
                ));
            }
            return Ok(format!("node {victim}: removal refused ({e})"));
        }
        cluster.kill(victim);
        add_back(cluster, network, victim, &others)?;
        Ok(format!(
            "node {victim} removed through node {via}, wiped, back as a voter"
        ))
    }

    /// Undoes what [`Self::start`] did.
    pub(crate) fn undo(
        &mut self,
        undo: Undo,
        cluster: &mut Cluster,
        network: &mut Network,
    ) -> Result<(), String> {
        match undo {
            Undo::Nothing => Ok(()),
            Undo::Restart(ids) => ids
                .into_iter()
                .try_for_each(|id| cluster.restart(network, id)),
            Undo::Resume(id) => {
                cluster.resume(id);
                Ok(())
            }
            Undo::Heal => network.heal(),
            Undo::ClockAndHeal(id) => {
                network.heal()?;
                self.undo(Undo::Clock(id), cluster, network)
            }
            Undo::Clock(id) => {
                if cluster.node(id).running() {
                    let body = r#"{"clock_rate_ppm":1000000}"#;
                    wait_for(Duration::from_secs(10), || {
                        cluster.admin(id, "PUT", "/failpoints", body).ok()
                    })
                    .ok_or_else(|| format!("node {id}'s clock could not be set back"))?;
                }
                Ok(())
            }
            Undo::Disk(id) => {
                let cleared = cluster
                    .admin(id, "PUT", "/failpoints", r#"{"disk":"none"}"#)
                    .ok();
                // A fatal fault clears itself as it fires: the process
                // is then on its way out (printing its panic), or gone.
                let fired = cleared
                    .as_ref()
                    .is_none_or(|c| c["disk_before"] == "None" && cluster.may_exit(id));
                let stopped = fired
                    && wait_for(Duration::from_secs(30), || {
                        (cluster.exited(id).is_some() || !cluster.node(id).running()).then_some(())
                    })
                    .is_some();
                if fired && !stopped {
                    return Err(format!(
                        "node {id} went on running after its disk fault fired"
                    ));
                }
                if stopped {
                    cluster.restart(network, id)?;
                }
                cluster.expected_exit_done(id);
                self.log.push(format!(
                    "           node {id} {}",
                    if stopped {
                        "had stopped on its disk fault; restarted"
                    } else {
                        "still runs; its disk fault cleared"
                    }
                ));
                Ok(())
            }
        }
    }
}

/// The voters as seen by a leader once it has committed and applied
/// every entry its log held when first asked, still leading in the same
/// term (within 30 s; `None` if none got there): no entry of an older
/// term that is not in its log can commit after that, so an uncertain
/// change is settled either way.
fn voters_settled(cluster: &Cluster) -> Option<Vec<u64>> {
    let mut first_seen: Option<(u64, u64, u64)> = None;
    wait_for(Duration::from_secs(30), || {
        let leader = cluster.leader()?;
        let status = cluster.status(leader).ok()?;
        let term = status["term"].as_u64()?;
        let last_index = status["last_index"].as_u64()?;
        let (id, seen_term, last) = *first_seen.get_or_insert((leader, term, last_index));
        if (id, seen_term) != (leader, term) {
            first_seen = None;
            return None;
        }
        let settled = status["applied_index"].as_u64()? >= last;
        let voters = status["voters"].as_array()?;
        settled.then(|| voters.iter().filter_map(|id| id.as_u64()).collect())
    })
}

/// Adds the wiped `victim` back as a learner through the leader, starts
/// it empty and promotes it once it holds the leader's committed state.
fn add_back(
    cluster: &mut Cluster,
    network: &Network,
    victim: u64,
    members: &[u64],
) -> Result<(), String> {
    let bound = Duration::from_secs(30);
    let peer = cluster.node(victim).addrs.peer;
    let body = format!("{{\"id\":{victim},\"peer_addr\":\"{peer}\"}}");
    wait_for(bound, || {
        let leader = cluster.leader()?;
        cluster.admin(leader, "POST", "/members", &body).ok()
    })
    .ok_or_else(|| format!("node {victim} could not be added back as a learner"))?;
    cluster.start_joiner(network, victim, members)?;
    wait_for(bound, || {
        let leader = cluster.leader()?;
        let commit = cluster.status(leader).ok()?["commit_index"].as_u64()?;
        let applied = cluster.status(victim).ok()?["applied_index"].as_u64()?;
        (applied >= commit).then_some(())
    })
    .ok_or_else(|| format!("node {victim} did not catch up as a learner within 30 s"))?;
    wait_for(bound, || {
        let leader = cluster.leader()?;
        cluster
            .admin(leader, "POST", &format!("/members/{victim}/promote"), "")
            .ok()
    })
    .ok_or_else(|| format!("node {victim} could not be promoted"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_schedule_of_the_chosen_kinds() {
        let kinds = [FaultKind::Kill, FaultKind::Partition];
        let first = schedule(7, &kinds, 30, false);
        let again = schedule(7, &kinds, 30, false);
        assert!(!first.is_empty());
        assert_eq!(
            first
                .iter()
                .map(|s| (s.at, s.fault, s.hold))
                .collect::<Vec<_>>(),
            again
                .iter()
                .map(|s| (s.at, s.fault, s.hold))
                .collect::<Vec<_>>()
        );
        assert!(first.iter().all(|s| kinds.contains(&s.fault.kind())));
        assert!(first.windows(2).all(|w| w[0].at + w[0].hold < w[1].at));
        assert!(first.iter().all(|s| s.at < Duration::from_secs(30)));
        assert!(schedule(7, &[], 30, false).is_empty());
    }

    #[test]
    fn fault_names_round_trip() {
        for kind in FaultKind::ALL {
            assert_eq!(FaultKind::parse(kind.name()), Ok(kind));
        }
        assert!(FaultKind::parse("meteor").is_err());
    }
}
