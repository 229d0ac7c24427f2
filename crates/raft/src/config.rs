//! [`Config`]: the knobs of one consensus node, every one of them a named
//! bound, checked by [`Config::validate`] before a node starts.

use std::fmt;

use dr_codec::message::{LogIndex, NodeId};

/// How one node of the cluster behaves. Times are in ticks: the runtime
/// calls `tick()` at a fixed interval (dr-node uses 10 ms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's id (never 0).
    pub id: NodeId,
    /// Ticks without hearing from a leader before a follower campaigns;
    /// the actual timeout is drawn from `[election_ticks, 2 * election_ticks)`
    /// after every reset. A leader with check-quorum steps down when it
    /// has not heard from a quorum within `election_ticks`.
    pub election_ticks: u32,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: u32,
    /// Seed of the generator that randomizes election timeouts; give every
    /// node a different one. The core has no other source of randomness.
    pub election_jitter_seed: u64,
    /// Make leader leases safe (see [`crate::RaftNode::lease_read_index`]):
    /// a node that starts refuses votes, as a follower of a live leader
    /// does, until an election timeout has passed, since it cannot know
    /// whether it promised a leader its vote-free silence before it
    /// stopped; and a leader that sends `TimeoutNow` serves no lease read
    /// for the rest of its term. Needs `check_quorum` (leader stickiness is
    /// what a lease rests on) and must be set on every voter.
    pub lease_reads: bool,
    /// Run a pre-vote round before a real election, so a node that was
    /// partitioned away cannot force the cluster into a new term.
    pub pre_vote: bool,
    /// A leader steps down when it has not heard from a quorum within an
    /// election timeout; followers then also ignore vote requests while
    /// they hear from a leader (leader stickiness).
    pub check_quorum: bool,
    /// Payload bytes of entries in one append message (at least one entry
    /// always goes).
    pub append_bytes_max: u64,
    /// Append messages in flight to one follower.
    pub inflight_messages_max: usize,
    /// Payload bytes in flight to one follower.
    pub inflight_bytes_max: u64,
    /// Payload bytes a leader accepts that are not yet committed; further
    /// proposals are refused with [`crate::ProposeError::Busy`].
    pub uncommitted_bytes_max: u64,
    /// Payload bytes of committed entries handed out in one ready.
    pub ready_committed_bytes_max: u64,
    /// The runtime may settle readies before their entries are durable
    /// ([`crate::RaftNode::advance_persisting`], then
    /// [`crate::RaftNode::on_persisted`]), so its turn never waits for a
    /// sync. Committed entries are then handed out only once this node has
    /// persisted them (unless `apply_unpersisted`).
    pub async_persist: bool,
    /// With `async_persist`: committed entries are handed out for applying
    /// as soon as they are committed, before this node's own copy is
    /// durable. They are durable on a quorum (a node counts its own copy
    /// only once persisted), so applying them is safe for the cluster; the
    /// node's store must then cope with a state machine that a crash
    /// leaves ahead of its log (dr-storage keeps such a state as a
    /// snapshot at its applied index). Lets a leader sync its own log off
    /// the path of its answers.
    pub apply_unpersisted: bool,
    /// Payload bytes of recently persisted entries kept in memory, so
    /// that applying them and sending them to a follower a little behind
    /// need not read them back from the store (0: keep none).
    pub entry_cache_bytes_max: u64,
    /// Bytes of snapshot data in one install-snapshot chunk.
    pub snapshot_chunk_bytes: u64,
    /// Snapshot chunks in flight to one follower.
    pub snapshot_chunks_inflight_max: u32,
    /// Read requests waiting at the leader; further ones are refused with
    /// [`crate::ReadError::Busy`].
    pub pending_reads_max: usize,
    /// The index the state machine has durably applied when the node
    /// (re)starts; the configuration the store returns must be as of this
    /// index, and entries after it are handed out again.
    pub applied: LogIndex,
}

impl Config {
    /// A configuration with dr's defaults for node `id`.
    pub fn new(id: NodeId) -> Self {
        Self {
            id,
            election_ticks: 10,
            heartbeat_ticks: 2,
            election_jitter_seed: id,
            pre_vote: true,
            check_quorum: true,
            lease_reads: false,
            append_bytes_max: 1 << 20,
            inflight_messages_max: 256,
            inflight_bytes_max: 32 << 20,
            uncommitted_bytes_max: 256 << 20,
            ready_committed_bytes_max: 64 << 20,
            entry_cache_bytes_max: 8 << 20,
            async_persist: false,
            apply_unpersisted: false,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_chunks_inflight_max: 4,
            pending_reads_max: 1 << 16,
            applied: 0,
        }
    }

    /// Checks every field and the relations between them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |reason: &str| Err(ConfigError(reason.to_owned()));
        if self.id == 0 {
            return fail("id must not be 0");
        }
        if self.heartbeat_ticks == 0 {
            return fail("heartbeat_ticks must be at least 1");
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return fail("election_ticks must be greater than heartbeat_ticks");
        }
        if self.inflight_messages_max == 0 || self.inflight_bytes_max == 0 {
            return fail("inflight_messages_max and inflight_bytes_max must be at least 1");
        }
        if self.append_bytes_max == 0 || self.snapshot_chunk_bytes == 0 {
            return fail("append_bytes_max and snapshot_chunk_bytes must be at least 1");
        }
        if self.snapshot_chunks_inflight_max == 0 {
            return fail("snapshot_chunks_inflight_max must be at least 1");
        }
        if self.uncommitted_bytes_max == 0 || self.ready_committed_bytes_max == 0 {
            return fail("uncommitted_bytes_max and ready_committed_bytes_max must be at least 1");
        }
        if self.apply_unpersisted && !self.async_persist {
            return fail("apply_unpersisted needs async_persist");
        }
        if self.lease_reads && !self.check_quorum {
            return fail("lease_reads needs check_quorum");
        }
        if self.pending_reads_max == 0 {
            return fail("pending_reads_max must be at least 1");
        }
        Ok(())
    }
}

/// Why a [`Config`] was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid raft config: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_refused() {
        assert_eq!(Config::new(1).validate(), Ok(()));
        let broken: [fn(&mut Config); 4] = [
            |c| c.id = 0,
            |c| c.heartbeat_ticks = c.election_ticks,
            |c| c.inflight_messages_max = 0,
            |c| c.snapshot_chunk_bytes = 0,
        ];
        for breaks in broken {
            let mut config = Config::new(1);
            breaks(&mut config);
            assert!(config.validate().is_err(), "{config:?}");
        }
    }
}
