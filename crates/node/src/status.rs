//! The node's state as the engine publishes it after every turn, for
//! `INFO`, `HELLO`, `/status` and `/metrics`.
//!
//! The numbers that move every turn (role, term, leader, indexes, key
//! count) are atomics the engine stores without a lock; the lists that
//! change rarely (the configuration, the member table) sit behind a lock
//! the engine takes only when they changed. A reader's [`Status`] is
//! assembled from both, so its numbers may come from two neighbouring
//! turns: it is for watching, never for deciding anything.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};

use dr_codec::message::{ConfState, LogIndex, NodeId, Term};
use parking_lot::Mutex;
use serde::Serialize;

use crate::config::RaftLog;
use crate::kv::MemberAddrs;

/// A node's part in the cluster, as its status shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeRole {
    /// Leads.
    Leader,
    /// Follows a leader, or waits for one.
    #[default]
    Follower,
    /// Campaigns.
    Candidate,
    /// Asks whether it could win before campaigning.
    PreCandidate,
}

impl NodeRole {
    /// `leader`, `follower`, `candidate` or `pre-candidate`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Leader => "leader",
            Self::Follower => "follower",
            Self::Candidate => "candidate",
            Self::PreCandidate => "pre-candidate",
        }
    }

    /// Whether this is the leader.
    pub fn is_leader(self) -> bool {
        self == Self::Leader
    }

    fn code(self) -> u8 {
        match self {
            Self::Leader => 0,
            Self::Follower => 1,
            Self::Candidate => 2,
            Self::PreCandidate => 3,
        }
    }

    fn from_code(code: u8) -> Self {
        match code {
            0 => Self::Leader,
            2 => Self::Candidate,
            3 => Self::PreCandidate,
            _ => Self::Follower,
        }
    }
}

impl From<dr_raft::Role> for NodeRole {
    fn from(role: dr_raft::Role) -> Self {
        match role {
            dr_raft::Role::Leader => Self::Leader,
            dr_raft::Role::Follower => Self::Follower,
            dr_raft::Role::Candidate => Self::Candidate,
            dr_raft::Role::PreCandidate => Self::PreCandidate,
        }
    }
}

/// A copy of the published state.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// The cluster it belongs to.
    pub cluster_id: u64,
    /// Its part.
    pub role: NodeRole,
    /// The current term.
    pub term: Term,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// The leader's client address, when published.
    pub leader_client_addr: Option<String>,
    /// Highest committed index.
    pub commit_index: LogIndex,
    /// Highest applied index.
    pub applied_index: LogIndex,
    /// Last index in the log.
    pub last_index: LogIndex,
    /// First index in the log (before it: compacted into the snapshot).
    pub first_index: LogIndex,
    /// Index of the newest snapshot.
    pub snapshot_index: LogIndex,
    /// The configuration.
    pub voters: Vec<NodeId>,
    /// Outgoing voters during a joint change.
    pub voters_outgoing: Vec<NodeId>,
    /// Learners.
    pub learners: Vec<NodeId>,
    /// Every member's recorded addresses.
    pub members: BTreeMap<NodeId, MemberAddrs>,
    /// Client keys.
    pub keys: u64,
    /// The process's resident memory in bytes (0 where unknown).
    pub rss_bytes: u64,
    /// Bytes of recently written records held for point reads.
    pub read_mirror_bytes: u64,
    /// Of those, bytes of applied writes not yet checkpointed to RocksDB.
    pub write_behind_bytes: u64,
    /// Where the node keeps its Raft log.
    pub raft_log: RaftLog,
    /// The segment files of the log (0 for RocksDB's).
    pub raft_log_segments: u64,
}

#[derive(Debug, Default)]
struct Lists {
    conf: ConfState,
    members: BTreeMap<NodeId, MemberAddrs>,
}

/// Where the engine publishes and everyone else reads.
#[derive(Debug, Default)]
pub struct StatusBoard {
    id: AtomicU64,
    cluster_id: AtomicU64,
    role: AtomicU8,
    term: AtomicU64,
    /// 0: no leader known (node ids are positive).
    leader: AtomicU64,
    commit_index: AtomicU64,
    applied_index: AtomicU64,
    last_index: AtomicU64,
    first_index: AtomicU64,
    snapshot_index: AtomicU64,
    keys: AtomicU64,
    rss_bytes: AtomicU64,
    read_mirror_bytes: AtomicU64,
    write_behind_bytes: AtomicU64,
    /// True: segments; false: RocksDB's column family.
    raft_log_segmented: AtomicBool,
    raft_log_segments: AtomicU64,
    lists: Mutex<Lists>,
}

impl StatusBoard {
    /// A board for node `id` of `cluster_id`.
    pub fn new(id: NodeId, cluster_id: u64) -> Self {
        let board = Self::default();
        board.id.store(id, Relaxed);
        board.cluster_id.store(cluster_id, Relaxed);
        board.role.store(NodeRole::Follower.code(), Relaxed);
        board
    }

    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.id.load(Relaxed)
    }

    /// This node's part now, without a lock.
    pub fn role(&self) -> NodeRole {
        NodeRole::from_code(self.role.load(Relaxed))
    }

    /// The leader this node knows of, without a lock.
    pub fn leader(&self) -> Option<NodeId> {
        Some(self.leader.load(Relaxed)).filter(|&id| id != 0)
    }

    /// A member's recorded addresses.
    pub fn member(&self, id: NodeId) -> Option<MemberAddrs> {
        self.lists.lock().members.get(&id).cloned()
    }

    /// Everything, as one copy.
    pub fn snapshot(&self) -> Status {
        let lists = self.lists.lock();
        let leader = self.leader();
        let leader_client_addr = leader
            .and_then(|id| lists.members.get(&id))
            .map(|m| m.client.clone())
            .filter(|addr| !addr.is_empty());
        Status {
            id: self.id.load(Relaxed),
            cluster_id: self.cluster_id.load(Relaxed),
            role: self.role(),
            term: self.term.load(Relaxed),
            leader,
            leader_client_addr,
            commit_index: self.commit_index.load(Relaxed),
            applied_index: self.applied_index.load(Relaxed),
            last_index: self.last_index.load(Relaxed),
            first_index: self.first_index.load(Relaxed),
            snapshot_index: self.snapshot_index.load(Relaxed),
            voters: lists.conf.voters.clone(),
            voters_outgoing: lists.conf.voters_outgoing.clone(),
            learners: lists.conf.learners.clone(),
            members: lists.members.clone(),
            keys: self.keys.load(Relaxed),
            rss_bytes: self.rss_bytes.load(Relaxed),
            read_mirror_bytes: self.read_mirror_bytes.load(Relaxed),
            write_behind_bytes: self.write_behind_bytes.load(Relaxed),
            raft_log: if self.raft_log_segmented.load(Relaxed) {
                RaftLog::Segments
            } else {
                RaftLog::Rocksdb
            },
            raft_log_segments: self.raft_log_segments.load(Relaxed),
        }
    }

    /// The engine's numbers after a turn, and the client key count (no
    /// lock).
    pub fn publish(&self, progress: &dr_engine::Progress, keys: u64) {
        self.role
            .store(NodeRole::from(progress.role).code(), Relaxed);
        self.term.store(progress.term, Relaxed);
        self.leader.store(progress.leader.unwrap_or(0), Relaxed);
        self.commit_index.store(progress.commit_index, Relaxed);
        self.applied_index.store(progress.applied_index, Relaxed);
        self.last_index.store(progress.last_index, Relaxed);
        self.first_index.store(progress.first_index, Relaxed);
        self.snapshot_index.store(progress.snapshot_index, Relaxed);
        self.keys.store(keys, Relaxed);
    }

    /// The process's resident memory, what of it the store's read mirror
    /// holds, and what of that are writes kept behind.
    pub fn publish_memory(&self, rss_bytes: u64, read_mirror_bytes: u64, write_behind_bytes: u64) {
        self.rss_bytes.store(rss_bytes, Relaxed);
        self.read_mirror_bytes.store(read_mirror_bytes, Relaxed);
        self.write_behind_bytes.store(write_behind_bytes, Relaxed);
    }

    /// Where the log is kept and how many segment files it has.
    pub fn publish_raft_log(&self, log: dr_storage::LogKind, segments: usize) {
        self.raft_log_segmented
            .store(log == dr_storage::LogKind::Segments, Relaxed);
        self.raft_log_segments.store(segments as u64, Relaxed);
    }

    /// A new configuration (call only when it changed).
    pub fn publish_conf(&self, conf: &ConfState) {
        self.lists.lock().conf.clone_from(conf);
    }

    /// A new member table (call only when it changed).
    pub fn publish_members(&self, members: &BTreeMap<NodeId, MemberAddrs>) {
        self.lists.lock().members.clone_from(members);
    }
}

#[cfg(test)]
mod tests {
    use super::{NodeRole, StatusBoard};

    #[test]
    fn published_numbers_and_lists_come_back() {
        let board = StatusBoard::new(2, 7);
        assert_eq!(board.role(), NodeRole::Follower);
        assert_eq!(board.leader(), None);
        let progress = dr_engine::Progress {
            role: dr_raft::Role::Leader,
            term: 4,
            leader: Some(2),
            commit_index: 10,
            applied_index: 9,
            last_index: 11,
            first_index: 4,
            snapshot_index: 5,
        };
        board.publish(&progress, 3);
        let members = [(
            2,
            crate::kv::MemberAddrs {
                peer: "p".into(),
                client: "c:1".into(),
                admin: "a".into(),
            },
        )]
        .into_iter()
        .collect();
        board.publish_members(&members);
        let status = board.snapshot();
        assert_eq!((status.id, status.cluster_id), (2, 7));
        assert!(status.role.is_leader());
        assert_eq!(status.leader_client_addr.as_deref(), Some("c:1"));
        assert_eq!(
            (
                status.commit_index,
                status.applied_index,
                status.last_index,
                status.first_index
            ),
            (10, 9, 11, 4)
        );
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["role"], "leader");
        for role in [
            NodeRole::Leader,
            NodeRole::Follower,
            NodeRole::Candidate,
            NodeRole::PreCandidate,
        ] {
            assert_eq!(NodeRole::from_code(role.code()), role);
            let json = serde_json::to_value(role).unwrap();
            assert_eq!(json, role.as_str());
        }
    }
}
