//! Quorums: when a vote is won and which index is committed, for a simple
//! majority of voters and for the joint configuration of a membership
//! change (a majority of the old voters *and* a majority of the new).
//!
//! Pure functions of who voted or acknowledged what; the consensus core
//! asks them after every vote and every acknowledgement.

use std::collections::BTreeSet;

use dr_codec::message::{ConfState, LogIndex, NodeId};

/// The outcome of an election so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VoteResult {
    /// Not decided: the missing votes could still go either way.
    Pending,
    /// A quorum refused: the election is lost whatever the missing votes.
    Lost,
    /// A quorum granted.
    Won,
}

/// A set of voters deciding by simple majority.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MajorityConfig {
    voters: BTreeSet<NodeId>,
}

impl MajorityConfig {
    /// The majority configuration of `voters` (duplicates count once).
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Self {
            voters: voters.into_iter().collect(),
        }
    }

    /// The voters, in ascending order.
    pub fn voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().copied()
    }

    /// Whether there are no voters.
    pub fn is_empty(&self) -> bool {
        self.voters.is_empty()
    }

    /// How many votes make a majority.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// The election's outcome given each voter's vote (`None`: not yet
    /// cast). An empty configuration wins every election, so that a joint
    /// configuration with an empty half is decided by the other half.
    pub fn vote_result(&self, vote: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        if self.voters.is_empty() {
            return VoteResult::Won;
        }
        let (mut granted, mut missing) = (0, 0);
        for voter in self.voters() {
            match vote(voter) {
                Some(true) => granted += 1,
                Some(false) => {}
                None => missing += 1,
            }
        }
        if granted >= self.quorum() {
            VoteResult::Won
        } else if granted + missing >= self.quorum() {
            VoteResult::Pending
        } else {
            VoteResult::Lost
        }
    }

    /// The highest index that a majority of voters has acknowledged (has
    /// in its log), given each voter's acknowledged index (`None`: nothing
    /// known, counted as 0). An empty configuration returns `u64::MAX`, so
    /// that in a joint configuration the other half alone decides.
    pub fn committed_index(&self, acked: impl Fn(NodeId) -> Option<LogIndex>) -> LogIndex {
        if self.voters.is_empty() {
            return LogIndex::MAX;
        }
        let mut indexes: Vec<LogIndex> = self
            .voters()
            .map(|voter| acked(voter).unwrap_or(0))
            .collect();
        indexes.sort_unstable_by(|a, b| b.cmp(a));
        // With the indexes in descending order, the first `quorum` voters
        // all have at least the index at position `quorum - 1`.
        indexes[self.quorum() - 1]
    }
}

/// The configuration during a joint-consensus change: decisions need a
/// majority of the incoming voters and a majority of the outgoing ones.
/// Outside a change the outgoing half is empty, and the incoming majority
/// alone decides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JointConfig {
    /// The voters of the new configuration.
    pub incoming: MajorityConfig,
    /// The voters of the old configuration while a change is in progress.
    pub outgoing: MajorityConfig,
}

impl JointConfig {
    /// The voting configuration a [`ConfState`] describes.
    pub fn from_conf_state(conf_state: &ConfState) -> Self {
        Self {
            incoming: MajorityConfig::new(conf_state.voters.iter().copied()),
            outgoing: MajorityConfig::new(conf_state.voters_outgoing.iter().copied()),
        }
    }

    /// Whether a joint change is in progress.
    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Every voter of either half, once each, ascending.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.incoming
            .voters()
            .chain(self.outgoing.voters())
            .collect()
    }

    /// Won when both halves won, lost when either lost, pending otherwise.
    pub fn vote_result(&self, vote: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        match (
            self.incoming.vote_result(&vote),
            self.outgoing.vote_result(&vote),
        ) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }

    /// The highest index acknowledged by a majority of both halves.
    pub fn committed_index(&self, acked: impl Fn(NodeId) -> Option<LogIndex>) -> LogIndex {
        self.incoming
            .committed_index(&acked)
            .min(self.outgoing.committed_index(&acked))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// `votes` as "1y 2n 3" (3: not yet voted), against `voters`.
    fn check_vote(voters: &[NodeId], votes: &[(NodeId, bool)], expected: VoteResult) {
        let votes: BTreeMap<NodeId, bool> = votes.iter().copied().collect();
        let result = MajorityConfig::new(voters.iter().copied())
            .vote_result(|voter| votes.get(&voter).copied());
        assert_eq!(result, expected, "voters {voters:?} votes {votes:?}");
    }

    #[test]
    fn majority_votes() {
        check_vote(&[], &[], VoteResult::Won);
        check_vote(&[1], &[], VoteResult::Pending);
        check_vote(&[1], &[(1, true)], VoteResult::Won);
        check_vote(&[1], &[(1, false)], VoteResult::Lost);
        check_vote(&[1, 2, 3], &[(1, true)], VoteResult::Pending);
        check_vote(&[1, 2, 3], &[(1, true), (2, true)], VoteResult::Won);
        check_vote(&[1, 2, 3], &[(1, true), (2, false)], VoteResult::Pending);
        check_vote(&[1, 2, 3], &[(1, false), (2, false)], VoteResult::Lost);
        check_vote(&[1, 2, 3, 4], &[(1, true), (2, true)], VoteResult::Pending);
        check_vote(
            &[1, 2, 3, 4],
            &[(1, true), (2, true), (3, false), (4, false)],
            VoteResult::Lost,
        );
        check_vote(
            &[1, 2, 3, 4, 5],
            &[(1, true), (2, true), (3, true)],
            VoteResult::Won,
        );
        // Votes from non-voters do not count.
        check_vote(&[1, 2, 3], &[(1, true), (9, true)], VoteResult::Pending);
    }

    fn check_committed(voters: &[NodeId], acked: &[(NodeId, LogIndex)], expected: LogIndex) {
        let acked: BTreeMap<NodeId, LogIndex> = acked.iter().copied().collect();
        let index = MajorityConfig::new(voters.iter().copied())
            .committed_index(|voter| acked.get(&voter).copied());
        assert_eq!(index, expected, "voters {voters:?} acked {acked:?}");
    }

    #[test]
    fn majority_committed_index() {
        check_committed(&[], &[], LogIndex::MAX);
        check_committed(&[1], &[(1, 7)], 7);
        check_committed(&[1, 2, 3], &[(1, 5), (2, 4), (3, 1)], 4);
        check_committed(&[1, 2, 3], &[(1, 5)], 0);
        check_committed(&[1, 2, 3, 4], &[(1, 9), (2, 8), (3, 7), (4, 1)], 7);
        check_committed(
            &[1, 2, 3, 4, 5],
            &[(1, 10), (2, 10), (3, 3), (4, 2), (5, 2)],
            3,
        );
    }

    #[test]
    fn joint_configurations_need_both_majorities() {
        let joint = JointConfig {
            incoming: MajorityConfig::new([1, 2, 3]),
            outgoing: MajorityConfig::new([3, 4, 5]),
        };
        assert!(joint.is_joint());
        assert_eq!(
            joint.voters().into_iter().collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        let acked = BTreeMap::from([(1, 10), (2, 10), (3, 4), (4, 6), (5, 2)]);
        // Incoming majority has 10, outgoing majority only 4.
        assert_eq!(joint.committed_index(|voter| acked.get(&voter).copied()), 4);
        let votes = BTreeMap::from([(1, true), (2, true)]);
        assert_eq!(
            joint.vote_result(|voter| votes.get(&voter).copied()),
            VoteResult::Pending
        );
        let votes = BTreeMap::from([(1, true), (2, true), (4, false), (5, false)]);
        assert_eq!(
            joint.vote_result(|voter| votes.get(&voter).copied()),
            VoteResult::Lost
        );
        let votes = BTreeMap::from([(1, true), (3, true), (4, true)]);
        assert_eq!(
            joint.vote_result(|voter| votes.get(&voter).copied()),
            VoteResult::Won
        );
    }

    #[test]
    fn outside_a_change_the_incoming_majority_decides() {
        let conf = ConfState {
            voters: vec![1, 2, 3],
            ..ConfState::default()
        };
        let config = JointConfig::from_conf_state(&conf);
        assert!(!config.is_joint());
        let acked = BTreeMap::from([(1, 8), (2, 6), (3, 1)]);
        assert_eq!(
            config.committed_index(|voter| acked.get(&voter).copied()),
            6
        );
    }

    /// The committed index is acknowledged by a majority, and no higher
    /// index is: checked against brute force on many small cases.
    #[test]
    fn committed_index_is_the_highest_majority_acknowledged() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let size = 1 + (next() % 7) as usize;
            let voters: Vec<NodeId> = (1..=size as u64).collect();
            let acked: BTreeMap<NodeId, LogIndex> =
                voters.iter().map(|&voter| (voter, next() % 6)).collect();
            let config = MajorityConfig::new(voters.iter().copied());
            let committed = config.committed_index(|voter| acked.get(&voter).copied());
            let at_least =
                |index: LogIndex| acked.values().filter(|&&acked| acked >= index).count();
            assert!(
                at_least(committed) >= config.quorum(),
                "{acked:?} -> {committed}"
            );
            assert!(
                at_least(committed + 1) < config.quorum(),
                "{acked:?} -> {committed} is not the highest"
            );
        }
    }
}
