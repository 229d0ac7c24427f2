//! The values that cross the wire between peers and land in the Raft log.
//!
//! These are plain Rust types, owned, with payloads as `bytes::Bytes` so a
//! decoded payload can be a slice of the received frame. The consensus
//! core uses them as they are; only this crate knows how they are laid
//! out in bytes (rkyv archives, see [`crate::frame`]).

use bytes::Bytes;
use rkyv::{Archive, Serialize};

/// A node of the cluster.
pub type NodeId = u64;
/// A Raft term.
pub type Term = u64;
/// A position in the Raft log (the first entry has index 1).
pub type LogIndex = u64;

/// What a log entry carries.
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum EntryKind {
    /// A command for the state machine.
    Normal,
    /// A membership change: the payload is an encoded configuration
    /// change for the consensus core.
    ConfChange,
    /// An empty entry a new leader appends to commit entries of earlier
    /// terms.
    Noop,
}

/// One entry of the replicated log.
#[derive(Archive, Serialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Entry {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: LogIndex,
    /// What the payload is.
    pub kind: EntryKind,
    /// The command, or the configuration change, or nothing.
    pub payload: Bytes,
}

/// The voters and learners of a configuration; during a joint-consensus
/// change, also the outgoing voters (a decision needs a majority of both).
#[derive(Archive, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ConfState {
    /// Voters of the (incoming) configuration.
    pub voters: Vec<NodeId>,
    /// Voters of the outgoing configuration while a joint change is in
    /// progress; empty otherwise.
    pub voters_outgoing: Vec<NodeId>,
    /// Non-voting members that receive the log.
    pub learners: Vec<NodeId>,
    /// Learners that become voters when the joint change completes.
    pub learners_next: Vec<NodeId>,
}

/// What a snapshot covers.
#[derive(Archive, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SnapshotMeta {
    /// The last log index the snapshot includes.
    pub index: LogIndex,
    /// The term of that entry.
    pub term: Term,
    /// The configuration as of that entry.
    pub conf_state: ConfState,
}

/// A request for a vote, real or pre-vote.
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct VoteRequest {
    /// A pre-vote asks whether the candidate could win, without anyone
    /// changing term.
    pub pre_vote: bool,
    /// The candidate's last log index.
    pub last_log_index: LogIndex,
    /// The term of the candidate's last log entry.
    pub last_log_term: Term,
    /// Sent on a leader's request (TimeoutNow): voters ignore their
    /// leader lease for it.
    pub leader_transfer: bool,
}

/// The answer to a [`VoteRequest`].
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct VoteResponse {
    /// Answers a pre-vote.
    pub pre_vote: bool,
    /// Whether the vote was granted.
    pub granted: bool,
}

/// Log entries from the leader, or a probe with none.
#[derive(Archive, Serialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AppendEntries {
    /// The index of the entry just before `entries`.
    pub prev_log_index: LogIndex,
    /// The term of that entry.
    pub prev_log_term: Term,
    /// The leader's commit index.
    pub leader_commit: LogIndex,
    /// The entries, in index order, starting at `prev_log_index + 1`.
    pub entries: Vec<Entry>,
}

/// Why a follower refused an [`AppendEntries`], so the leader can skip
/// back a whole term at a time rather than one entry per round trip.
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RejectHint {
    /// The follower's last log index.
    pub last_index: LogIndex,
    /// The term of the follower's entry at `prev_log_index`, or 0 when it
    /// has no entry there.
    pub conflict_term: Term,
    /// The first index the follower holds for `conflict_term`.
    pub conflict_index: LogIndex,
}

/// The answer to an [`AppendEntries`].
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AppendEntriesResponse {
    /// On success, the index of the last entry the follower now matches;
    /// on rejection, the `prev_log_index` that did not match.
    pub index: LogIndex,
    /// `None` on success; why not otherwise.
    pub reject: Option<RejectHint>,
}

/// The leader's heartbeat. `read_context` carries the newest ReadIndex
/// round, so read confirmation rides on heartbeats.
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Heartbeat {
    /// The leader's commit index, capped at what the follower matches.
    pub commit: LogIndex,
    /// The ReadIndex round this heartbeat confirms (0: none).
    pub read_context: u64,
}

/// The answer to a [`Heartbeat`], echoing its read context.
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct HeartbeatResponse {
    /// The `read_context` of the heartbeat answered.
    pub read_context: u64,
}

/// One chunk of a snapshot sent to a lagging follower.
#[derive(Archive, Serialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct InstallSnapshot {
    /// What the whole snapshot covers.
    pub meta: SnapshotMeta,
    /// Where this chunk starts in the snapshot's byte stream.
    pub offset: u64,
    /// The chunk.
    pub data: Bytes,
    /// Whether this is the last chunk.
    pub done: bool,
}

/// The answer to an [`InstallSnapshot`] chunk.
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct InstallSnapshotResponse {
    /// The snapshot's index, naming which snapshot this answers.
    pub snapshot_index: LogIndex,
    /// Bytes received in order so far: the offset of the next chunk wanted.
    pub next_offset: u64,
    /// Whether the follower dropped the transfer (it must restart at 0).
    pub rejected: bool,
}

/// What a node's answer to a peer's [`ForwardRequest`] or
/// [`ReadIndexRequest`] says happened.
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ForwardStatus {
    /// Done: the payload (or index) is the result.
    Done,
    /// Certainly not done (never appended to the log, or not the
    /// leader): asking again is safe. The payload says why.
    NotDone,
    /// Appended, but whether it took effect is unknown. The payload says
    /// why.
    Uncertain,
    /// Refused for good (asking again will not help). The payload says
    /// why.
    Refused,
}

/// A request a follower hands to the leader on a client's behalf (a
/// write, a membership or leadership change), opaque to this crate: the
/// node that sends it encodes the payload and the leader validates it.
#[derive(Archive, Serialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ForwardRequest {
    /// Chosen by the sender, unique among its requests in flight; the
    /// answer carries it back.
    pub request_id: u64,
    /// The request.
    pub payload: Bytes,
}

/// The leader's one answer to a [`ForwardRequest`].
#[derive(Archive, Serialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ForwardResponse {
    /// The request answered.
    pub request_id: u64,
    /// What happened.
    pub status: ForwardStatus,
    /// The result when done, else the reason, as text.
    pub payload: Bytes,
}

/// A follower asks the leader for a read index: the commit index as of a
/// moment after this request was sent, confirmed by a quorum.
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ReadIndexRequest {
    /// Chosen by the sender; the answer carries it back.
    pub request_id: u64,
}

/// The leader's one answer to a [`ReadIndexRequest`].
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ReadIndexResponse {
    /// The request answered.
    pub request_id: u64,
    /// [`ForwardStatus::Done`] when `index` is valid; else why not.
    pub status: ForwardStatus,
    /// The read index: reads are linearizable once applied to it.
    pub index: LogIndex,
}

/// What a [`Message`] says.
#[derive(Archive, Serialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum MessageBody {
    /// Asks for a (pre-)vote.
    Vote(VoteRequest),
    /// Answers a (pre-)vote.
    VoteResponse(VoteResponse),
    /// Replicates log entries.
    AppendEntries(AppendEntries),
    /// Answers an append.
    AppendEntriesResponse(AppendEntriesResponse),
    /// Keeps followers from electing, advances commit, confirms reads.
    Heartbeat(Heartbeat),
    /// Answers a heartbeat.
    HeartbeatResponse(HeartbeatResponse),
    /// Sends a chunk of a snapshot.
    InstallSnapshot(InstallSnapshot),
    /// Answers a snapshot chunk.
    InstallSnapshotResponse(InstallSnapshotResponse),
    /// Tells the leader-transfer target to start an election now.
    TimeoutNow,
    // The node's services to its peers, outside Raft. New variants only
    // ever go at the end: a variant's tag is its position.
    /// A request forwarded to the leader.
    Forward(ForwardRequest),
    /// The answer to a forwarded request.
    ForwardResponse(ForwardResponse),
    /// A follower's request for a read index.
    ReadIndex(ReadIndexRequest),
    /// The answer to a read-index request.
    ReadIndexResponse(ReadIndexResponse),
}

impl MessageBody {
    /// Whether the consensus core reads this message. The others are the
    /// node's services to its peers (forwarded requests, read indexes):
    /// their [`Message::term`] means nothing and the core refuses them.
    pub fn is_raft(&self) -> bool {
        !matches!(
            self,
            Self::Forward(_)
                | Self::ForwardResponse(_)
                | Self::ReadIndex(_)
                | Self::ReadIndexResponse(_)
        )
    }
}

/// A message between two nodes.
#[derive(Archive, Serialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Message {
    /// The sender.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// The sender's term.
    pub term: Term,
    /// What it says.
    pub body: MessageBody,
}
