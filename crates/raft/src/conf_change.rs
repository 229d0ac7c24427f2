//! Membership changes: what a [`ConfChange`] entry asks for, how it is
//! encoded in the entry's payload, and how it turns one [`ConfState`] into
//! the next.
//!
//! A change of the voters always goes through **joint consensus**: the
//! first entry enters the joint configuration (decisions need a majority
//! of the old voters and of the new), and once that entry is applied the
//! leader proposes the empty change that leaves it. Changes that touch
//! only learners apply in one step, since learners never vote.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use dr_codec::message::{ConfState, NodeId};

/// One membership operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfChangeOp {
    /// Make `node` a voter (promoting it if it is a learner).
    AddVoter(NodeId),
    /// Make `node` a learner (demoting it if it is a voter).
    AddLearner(NodeId),
    /// Remove `node` from the cluster.
    Remove(NodeId),
}

impl ConfChangeOp {
    fn node(self) -> NodeId {
        match self {
            Self::AddVoter(node) | Self::AddLearner(node) | Self::Remove(node) => node,
        }
    }
}

/// A membership change: several operations applied together, or none,
/// which leaves a joint configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfChange {
    /// The operations, applied in order.
    pub ops: Vec<ConfChangeOp>,
}

/// Operations in one change; a bound on what a decoder accepts.
pub const CONF_CHANGE_OPS_MAX: usize = 1024;
const FORMAT_VERSION: u8 = 1;

impl ConfChange {
    /// The change that leaves a joint configuration.
    pub fn leave_joint() -> Self {
        Self::default()
    }

    /// The entry payload: version byte, op count (u16 LE), then per op a
    /// kind byte (1 voter, 2 learner, 3 remove) and the node id (u64 LE).
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(3 + 9 * self.ops.len());
        out.put_u8(FORMAT_VERSION);
        out.put_u16_le(self.ops.len() as u16);
        for op in &self.ops {
            let kind = match op {
                ConfChangeOp::AddVoter(_) => 1,
                ConfChangeOp::AddLearner(_) => 2,
                ConfChangeOp::Remove(_) => 3,
            };
            out.put_u8(kind);
            out.put_u64_le(op.node());
        }
        out.freeze()
    }

    /// Parses a payload written by [`Self::encode`].
    pub fn decode(payload: &[u8]) -> Result<Self, ConfChangeError> {
        let bad = |reason: &str| ConfChangeError(format!("malformed conf change: {reason}"));
        let [version, count_low, count_high, rest @ ..] = payload else {
            return Err(bad("shorter than its 3-byte header"));
        };
        if *version != FORMAT_VERSION {
            return Err(bad(&format!("unknown format version {version}")));
        }
        let count = u16::from_le_bytes([*count_low, *count_high]) as usize;
        if count > CONF_CHANGE_OPS_MAX || rest.len() != count * 9 {
            return Err(bad(&format!(
                "{count} ops do not match {} body bytes",
                rest.len()
            )));
        }
        let ops = rest
            .chunks_exact(9)
            .map(|op| {
                let node = u64::from_le_bytes(op[1..9].try_into().expect("9-byte chunk"));
                match op[0] {
                    1 => Ok(ConfChangeOp::AddVoter(node)),
                    2 => Ok(ConfChangeOp::AddLearner(node)),
                    3 => Ok(ConfChangeOp::Remove(node)),
                    kind => Err(bad(&format!("unknown op kind {kind}"))),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { ops })
    }

    /// Whether applying this change to `conf` enters a joint
    /// configuration (it changes the set of voters).
    pub fn enters_joint(&self, conf: &ConfState) -> bool {
        !self.ops.is_empty() && self.apply_ops(conf).voters != conf.voters
    }

    /// The configuration after this change, or why it cannot apply.
    pub fn apply(&self, conf: &ConfState) -> Result<ConfState, ConfChangeError> {
        let joint = !conf.voters_outgoing.is_empty();
        if self.ops.is_empty() {
            if !joint {
                return Err(ConfChangeError("not in a joint configuration".into()));
            }
            return Ok(leave(conf));
        }
        if joint {
            return Err(ConfChangeError(
                "a joint configuration must be left before the next change".into(),
            ));
        }
        if let Some(op) = self.ops.iter().find(|op| op.node() == 0) {
            return Err(ConfChangeError(format!("{op:?}: node id 0 is reserved")));
        }
        let mut next = self.apply_ops(conf);
        if next.voters.is_empty() {
            return Err(ConfChangeError("the change removes every voter".into()));
        }
        if next.voters != conf.voters {
            next.voters_outgoing = conf.voters.clone();
            // A demoted voter still votes in the outgoing half; it becomes a
            // learner when the joint configuration is left.
            let (demoted, learners) = next
                .learners
                .iter()
                .partition(|node| conf.voters.contains(node));
            next.learners_next = demoted;
            next.learners = learners;
        }
        Ok(next)
    }

    /// The operations applied to the sets, joint bookkeeping aside.
    fn apply_ops(&self, conf: &ConfState) -> ConfState {
        let mut next = conf.clone();
        for op in &self.ops {
            let node = op.node();
            next.voters.retain(|&id| id != node);
            next.learners.retain(|&id| id != node);
            match op {
                ConfChangeOp::AddVoter(_) => next.voters.push(node),
                ConfChangeOp::AddLearner(_) => next.learners.push(node),
                ConfChangeOp::Remove(_) => {}
            }
        }
        next.voters.sort_unstable();
        next.learners.sort_unstable();
        next
    }
}

fn leave(conf: &ConfState) -> ConfState {
    let mut learners = conf.learners.clone();
    learners.extend(
        conf.learners_next
            .iter()
            .filter(|node| !conf.voters.contains(node)),
    );
    learners.sort_unstable();
    learners.dedup();
    ConfState {
        voters: conf.voters.clone(),
        voters_outgoing: Vec::new(),
        learners,
        learners_next: Vec::new(),
    }
}

/// Why a membership change was refused or could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfChangeError(pub String);

impl fmt::Display for ConfChangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfChangeError {}

#[cfg(test)]
mod tests {
    use super::*;
    use ConfChangeOp::*;

    fn conf(voters: &[NodeId], learners: &[NodeId]) -> ConfState {
        ConfState {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            ..ConfState::default()
        }
    }

    #[test]
    fn encoding_round_trips_and_rejects_garbage() {
        let change = ConfChange {
            ops: vec![AddVoter(4), AddLearner(5), Remove(1)],
        };
        assert_eq!(ConfChange::decode(&change.encode()), Ok(change.clone()));
        let bytes = change.encode();
        assert!(ConfChange::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(ConfChange::decode(&[9, 0, 0]).is_err());
        assert!(ConfChange::decode(&[1, 1, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(ConfChange::decode(&[1, 0xff, 0xff]).is_err());
        assert!(ConfChange::decode(&[]).is_err());
    }

    #[test]
    fn voter_changes_go_through_a_joint_configuration() {
        let start = conf(&[1, 2, 3], &[4]);
        let change = ConfChange {
            ops: vec![AddVoter(4), Remove(1), AddLearner(2)],
        };
        assert!(change.enters_joint(&start));
        let joint = change.apply(&start).unwrap();
        assert_eq!(joint.voters, vec![3, 4]);
        assert_eq!(joint.voters_outgoing, vec![1, 2, 3]);
        assert_eq!(joint.learners, Vec::<NodeId>::new());
        assert_eq!(joint.learners_next, vec![2]);
        assert!(change.apply(&joint).is_err(), "no change while joint");
        let left = ConfChange::leave_joint().apply(&joint).unwrap();
        assert_eq!(left, conf(&[3, 4], &[2]));
        assert!(ConfChange::leave_joint().apply(&left).is_err());
    }

    #[test]
    fn learner_changes_apply_at_once_and_empty_voters_are_refused() {
        let start = conf(&[1], &[]);
        let add = ConfChange {
            ops: vec![AddLearner(2)],
        };
        assert!(!add.enters_joint(&start));
        assert_eq!(add.apply(&start).unwrap(), conf(&[1], &[2]));
        let remove_all = ConfChange {
            ops: vec![Remove(1)],
        };
        assert!(remove_all.apply(&start).is_err());
        let zero = ConfChange {
            ops: vec![AddVoter(0)],
        };
        assert!(zero.apply(&start).is_err());
    }
}
