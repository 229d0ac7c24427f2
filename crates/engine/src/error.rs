//! Why a request got no output: typed, so a caller decides by kind
//! (retry, report as uncertain, give up) and never by text.

use std::fmt;

use dr_codec::message::NodeId;

/// Why a request got no answer from the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineError {
    /// This node does not lead and could not forward the request.
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// Certainly not done: retrying is safe.
    TryAgain(Retry),
    /// It may or may not have taken effect (it may have been appended).
    Uncertain(Uncertain),
    /// Refused for good.
    Refused(Refusal),
}

/// Why a request certainly did not happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retry {
    /// The leader is known but the transport could not take the request.
    LeaderUnreachable(NodeId),
    /// The proposal's entry was replaced by a new leader's.
    LeaderChanged,
    /// Leadership is being handed over.
    TransferInProgress,
    /// Too many uncommitted writes.
    TooManyWrites,
    /// A membership change is still in progress.
    ConfChangePending,
    /// Too many requests wait for the leader already.
    TooManyForwards,
    /// Leadership changed during the read.
    ReadLeadershipLost,
    /// Too many reads are pending.
    TooManyReads,
    /// The leader gave no read index (it no longer leads).
    NoReadIndex(NodeId),
    /// The leader did not answer a read-index request in time.
    ReadIndexTimedOut(NodeId),
    /// Reading the state failed.
    Storage(String),
    /// The engine is stopping.
    ShuttingDown,
    /// The leader said so, in its words.
    Remote(String),
}

/// Why a request's outcome is unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Uncertain {
    /// The leader did not answer the forwarded request in time.
    NoAnswer(NodeId),
    /// The node it was forwarded to stopped leading before answering.
    LeaderChanged(NodeId),
    /// The leader's answer did not decode.
    UnreadableAnswer(NodeId),
    /// A snapshot replaced the log under the proposal.
    SnapshotReplacedLog,
    /// The engine stopped while the proposal was in the log.
    ShuttingDown,
    /// The leader said so, in its words.
    Remote(String),
}

/// Why a request was refused for good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The membership change cannot apply to the configuration.
    ConfChange(String),
    /// Leadership can only go to a voter.
    NotVoter(NodeId),
    /// A forwarded request did not decode.
    Malformed(String),
    /// The snapshot could not be taken.
    Snapshot(String),
    /// The leader said so, in its words.
    Remote(String),
}

impl fmt::Display for Retry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LeaderUnreachable(id) => write!(f, "the leader (node {id}) cannot be reached"),
            Self::LeaderChanged => f.write_str("the leader changed before the write committed"),
            Self::TransferInProgress => f.write_str("leadership is being handed over"),
            Self::TooManyWrites => f.write_str("too many uncommitted writes"),
            Self::ConfChangePending => f.write_str("a membership change is still in progress"),
            Self::TooManyForwards => f.write_str("too many requests are waiting for the leader"),
            Self::ReadLeadershipLost => f.write_str("leadership changed during the read"),
            Self::TooManyReads => f.write_str("too many reads pending"),
            Self::NoReadIndex(id) => {
                write!(f, "node {id} gave no read index (it no longer leads)")
            }
            Self::ReadIndexTimedOut(id) => {
                write!(f, "the leader (node {id}) did not answer in time")
            }
            Self::Storage(why) => write!(f, "storage: {why}"),
            Self::ShuttingDown => f.write_str("the node is shutting down"),
            Self::Remote(why) => f.write_str(why),
        }
    }
}

impl fmt::Display for Uncertain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoAnswer(id) => write!(f, "no answer from the leader (node {id}) in time"),
            Self::LeaderChanged(id) => write!(f, "node {id} stopped leading before it answered"),
            Self::UnreadableAnswer(id) => {
                write!(f, "the leader's answer (node {id}) was unreadable")
            }
            Self::SnapshotReplacedLog => f.write_str("a snapshot replaced the log"),
            Self::ShuttingDown => f.write_str("the node is shutting down"),
            Self::Remote(why) => f.write_str(why),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ConfChange(why)
            | Self::Malformed(why)
            | Self::Snapshot(why)
            | Self::Remote(why) => f.write_str(why),
            Self::NotVoter(id) => write!(f, "node {id} is not a voter"),
        }
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotLeader { leader: Some(id) } => {
                write!(f, "node {id} leads but cannot be reached yet")
            }
            Self::NotLeader { leader: None } => f.write_str("no leader (an election is running)"),
            Self::TryAgain(why) => why.fmt(f),
            Self::Uncertain(why) => why.fmt(f),
            Self::Refused(why) => why.fmt(f),
        }
    }
}

impl std::error::Error for EngineError {}

impl EngineError {
    /// Whether retrying is safe (the request certainly did not happen).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::NotLeader { .. } | Self::TryAgain(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_certainly_did_not_happen_is_retryable() {
        let retries = [
            Retry::LeaderUnreachable(2),
            Retry::LeaderChanged,
            Retry::TransferInProgress,
            Retry::TooManyWrites,
            Retry::ConfChangePending,
            Retry::TooManyForwards,
            Retry::ReadLeadershipLost,
            Retry::TooManyReads,
            Retry::NoReadIndex(2),
            Retry::ReadIndexTimedOut(2),
            Retry::Storage("disk".into()),
            Retry::ShuttingDown,
            Retry::Remote("busy".into()),
        ];
        let uncertain = [
            Uncertain::NoAnswer(2),
            Uncertain::LeaderChanged(2),
            Uncertain::UnreadableAnswer(2),
            Uncertain::SnapshotReplacedLog,
            Uncertain::ShuttingDown,
            Uncertain::Remote("lost".into()),
        ];
        let refusals = [
            Refusal::ConfChange("joint".into()),
            Refusal::NotVoter(4),
            Refusal::Malformed("bytes".into()),
            Refusal::Snapshot("busy".into()),
            Refusal::Remote("no".into()),
        ];
        let mut all: Vec<(EngineError, bool)> = vec![
            (EngineError::NotLeader { leader: None }, true),
            (EngineError::NotLeader { leader: Some(3) }, true),
        ];
        all.extend(
            retries
                .into_iter()
                .map(|r| (EngineError::TryAgain(r), true)),
        );
        all.extend(
            uncertain
                .into_iter()
                .map(|u| (EngineError::Uncertain(u), false)),
        );
        all.extend(
            refusals
                .into_iter()
                .map(|r| (EngineError::Refused(r), false)),
        );
        for (error, retryable) in all {
            assert_eq!(error.is_retryable(), retryable, "{error:?}");
            let text = error.to_string();
            assert!(
                !text.is_empty() && !text.contains('\n'),
                "{error:?}: {text:?}"
            );
        }
        assert!(
            EngineError::TryAgain(Retry::NoReadIndex(7))
                .to_string()
                .contains("node 7")
        );
    }
}
