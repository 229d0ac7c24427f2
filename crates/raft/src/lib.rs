//! # dr-raft: the consensus core
//!
//! A complete Raft as a pure, deterministic state machine: messages,
//! ticks, proposals and read requests go in; one batch of work (a
//! [`Ready`]) comes out. Pre-vote, check-quorum and leader stickiness;
//! pipelined replication with per-follower flow control (probe, replicate
//! and snapshot states, a window bounded in messages and bytes, fast
//! backtracking by term); log compaction and chunked snapshot install;
//! membership change by joint consensus, learners, leader transfer; and
//! linearizable ReadIndex reads, batched and riding on heartbeats.
//!
//! - [`RaftNode`]: one member. Drive it with [`RaftNode::tick`],
//!   [`RaftNode::step`], [`RaftNode::propose`],
//!   [`RaftNode::propose_conf_change`], [`RaftNode::read_index`] and
//!   [`RaftNode::transfer_leader`]; collect work with [`RaftNode::ready`]
//!   and settle it with [`RaftNode::advance`] (or, writing the log on
//!   another thread, [`RaftNode::advance_persisting`] and
//!   [`RaftNode::on_persisted`]). Recently persisted entries stay in an
//!   in-memory entry cache ([`Config::entry_cache_bytes_max`]).
//! - [`Storage`] / [`LogStore`]: what the core reads from a log store and
//!   what the runtime writes to it; [`MemStorage`] in memory;
//!   [`conformance`]: the suite every store passes.
//! - [`quorum`]: majorities and joint majorities; [`ConfChange`]: the
//!   membership change payload.
//!
//! ## The ready contract
//!
//! What must be durable before which message may be sent (see [`Ready`]
//! for the full order): a ready's snapshot, entries and hard state are
//! persisted atomically *before* any of its messages leave, because those
//! messages promise them (a granted vote promises the persisted vote; an
//! append acknowledgement promises the persisted entries). Committed
//! entries are applied after that; a read is served once the applied index
//! reaches its read index. Nothing else may be called between `ready()`
//! and `advance()` (the node asserts it).
//!
//! A leader counts its own log towards a quorum only once `advance()` says
//! the entries are persisted, so a leader crash can never lose an entry it
//! counted.
//!
//! With [`Config::async_persist`] the runtime may instead write a ready's
//! entries and hard state on another thread: it settles the ready with
//! `advance_persisting()`, holds the messages that wait for the write, and
//! reports the write's end with `on_persisted(number)`. The promises stay
//! the same (messages leave after what they promise is durable; the
//! leader counts its entries once written); committed entries are then
//! handed out only once this node holds them durably.
//!
//! ## Invariants, asserted in production code
//!
//! - One leader per term: a node never becomes leader twice in a term, and
//!   a leader receiving a leader's message for its own term panics.
//! - The commit index never goes backwards and never passes the log; an
//!   append never overwrites a committed entry (log matching); the applied
//!   index never passes the commit index; terms never go backwards.
//! - Only entries of the current term commit by counting replicas.
//! - Every input from a peer is validated first ([`StepError`]); a bad
//!   message is dropped, never trusted.
//!
//! ## What this crate does not do
//!
//! No IO, no clock, no threads, no randomness of its own (the election
//! timeout jitter comes from [`Config::election_jitter_seed`]): those
//! belong to the runtime. It does not forward proposals or reads from a
//! follower to the leader (it names the leader in the error), and does not
//! time leases: [`RaftNode::lease_read_index`] says when a leader may
//! serve a read without a round, [`RaftNode::read_rounds`] what a caller
//! with a clock needs to bound the lease.
//! A received snapshot is assembled in memory before the ready hands it
//! out.
//!
//! ## Example
//!
//! A one-node cluster elects itself and commits a proposal:
//!
//! ```
//! use dr_raft::{ConfState, Config, EntryKind, LogStore, MemStorage, RaftNode, Role, Snapshot};
//!
//! let mut store = MemStorage::new();
//! store.restore_snapshot(&Snapshot::bootstrap(ConfState { voters: vec![1], ..ConfState::default() }))?;
//! let mut node = RaftNode::new(Config::new(1), store).expect("valid start");
//! let mut applied = Vec::new();
//! let mut drive = |node: &mut RaftNode<MemStorage>| {
//!     while node.has_ready() {
//!         let ready = node.ready();
//!         node.storage_mut().persist_ready(&ready)?;
//!         // (A cluster would send ready.messages here.)
//!         applied.extend(ready.committed_entries.into_iter().filter(|e| e.kind == EntryKind::Normal));
//!         node.advance();
//!     }
//!     Ok::<(), dr_raft::StorageError>(())
//! };
//! while node.role() != Role::Leader {
//!     node.tick();
//! }
//! drive(&mut node)?;
//! let proposal = node.propose("hello".into()).expect("the leader accepts");
//! drive(&mut node)?;
//! assert_eq!(node.commit_index(), proposal.index);
//! assert_eq!(applied[0].payload, "hello");
//! # Ok::<(), dr_raft::StorageError>(())
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod conf_change;
mod config;
pub mod conformance;
mod error;
mod log;
mod memory;
mod progress;
pub mod quorum;
mod raft;
mod read;
mod ready;
mod replication;
mod storage;

pub use conf_change::{CONF_CHANGE_OPS_MAX, ConfChange, ConfChangeError, ConfChangeOp};
pub use config::{Config, ConfigError};
pub use error::{ProposeError, ReadError, StartError, StepError};
pub use memory::MemStorage;
pub use raft::{Proposal, RaftNode, Role, SoftState};
pub use read::{LeaseTracker, ReadRounds, ReadState};
pub use ready::{Ready, StagedChunk};
pub use storage::{
    HardState, InitialState, LogStore, Snapshot, SnapshotChunk, Storage, StorageError,
};

// The wire types this crate's API takes and gives, so a user needs no
// direct dependency on dr-codec (whose version must match this one's).
pub use dr_codec::message::{
    ConfState, Entry, EntryKind, LogIndex, Message, MessageBody, NodeId, SnapshotMeta, Term,
};
