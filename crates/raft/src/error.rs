//! The errors a caller of the consensus core must handle. None of them is
//! fatal: a refused proposal or read can be retried (at the leader the
//! error names, or later); a refused message is dropped.

use std::fmt;

use dr_codec::message::{NodeId, Term};

use crate::conf_change::ConfChangeError;
use crate::config::ConfigError;
use crate::storage::StorageError;

/// Why a node could not start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartError {
    /// The configuration is invalid.
    Config(ConfigError),
    /// The store could not be read.
    Storage(StorageError),
    /// The store and the configuration disagree (say, `applied` past the
    /// stored commit index).
    Inconsistent(String),
}

/// Why a proposal (or a leader transfer) was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// Only the leader accepts proposals; `leader` is the one this node
    /// knows of, if any.
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// Leadership is being handed over; retry at the new leader.
    TransferInProgress,
    /// Too many uncommitted bytes at the leader; retry later.
    Busy,
    /// A membership change is still being applied; retry later.
    ConfChangePending,
    /// The membership change cannot apply to the current configuration.
    ConfChange(ConfChangeError),
    /// A leader transfer named a node that is not a voter.
    NotVoter(NodeId),
}

/// Why a linearizable read could not be served. Every variant is
/// retryable: the read had no effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// Only the leader confirms reads; `leader` is the one this node knows.
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// The node lost (or handed over) leadership before the read was
    /// confirmed.
    LeadershipLost,
    /// Too many reads are pending.
    Busy,
}

/// Why an incoming message was dropped. The node's state is unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepError {
    /// The message is addressed to another node.
    WrongRecipient {
        /// The addressee.
        to: NodeId,
    },
    /// The message breaks the protocol (a gap in its entries, an index
    /// the sender cannot know, ...): a bug or corruption at the sender.
    Malformed(String),
    /// The message could not be handled because the store failed to read.
    Storage(StorageError),
    /// Not a Raft message (a node service such as a forwarded request,
    /// see `MessageBody::is_raft`): the node handles those itself.
    NotRaft,
    /// A leader's message for the term this node leads: election safety
    /// says no such message exists, so it is a bug in one of the two
    /// nodes or a forged message (a peer port without TLS). Refused, not
    /// obeyed; worth an operator's attention.
    ConflictingLeader {
        /// Who claims to lead.
        from: NodeId,
        /// The term this node leads.
        term: Term,
    },
}

macro_rules! display {
    ($type:ty, |$self:ident, $f:ident| $body:expr) => {
        impl fmt::Display for $type {
            fn fmt(&$self, $f: &mut fmt::Formatter<'_>) -> fmt::Result {
                $body
            }
        }
        impl std::error::Error for $type {}
    };
}

display!(StartError, |self, f| match self {
    Self::Config(error) => write!(f, "{error}"),
    Self::Storage(error) => write!(f, "cannot read the raft store: {error}"),
    Self::Inconsistent(reason) => write!(f, "inconsistent raft start state: {reason}"),
});

display!(ProposeError, |self, f| match self {
    Self::NotLeader { leader: Some(id) } => write!(f, "not the leader; node {id} is"),
    Self::NotLeader { leader: None } => f.write_str("not the leader; no leader is known"),
    Self::TransferInProgress => f.write_str("leadership is being transferred"),
    Self::Busy => f.write_str("too many uncommitted proposals"),
    Self::ConfChangePending => f.write_str("a membership change is still in progress"),
    Self::ConfChange(error) => write!(f, "membership change refused: {error}"),
    Self::NotVoter(id) => write!(f, "node {id} is not a voter"),
});

display!(ReadError, |self, f| match self {
    Self::NotLeader { leader: Some(id) } => write!(f, "not the leader; node {id} is"),
    Self::NotLeader { leader: None } => f.write_str("not the leader; no leader is known"),
    Self::LeadershipLost => f.write_str("leadership changed before the read was confirmed"),
    Self::Busy => f.write_str("too many pending reads"),
});

display!(StepError, |self, f| match self {
    Self::WrongRecipient { to } => write!(f, "message addressed to node {to}"),
    Self::Malformed(reason) => write!(f, "malformed message: {reason}"),
    Self::Storage(error) => write!(f, "{error}"),
    Self::NotRaft => f.write_str("not a Raft message"),
    Self::ConflictingLeader { from, term } => write!(
        f,
        "node {from} sent a leader's message for term {term}, which this node leads \
         (a bug in one of them, or a forged message)"
    ),
});

impl From<StorageError> for StepError {
    fn from(error: StorageError) -> Self {
        Self::Storage(error)
    }
}
