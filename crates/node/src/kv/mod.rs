//! The key-value state machine: write commands as log entry payloads
//! ([`op`]), how keys are stored ([`record`]), and their deterministic
//! application on top of dr-storage ([`apply`]).
//!
//! Every node applies the same entries in the same order and computes the
//! same [`Outcome`] for each; the node whose client proposed an entry
//! answers that client with the outcome it computed itself, so a follower
//! that forwarded a write needs no reply message from the leader.
//!
//! Keys live in the storage's `data` family under a one-byte namespace:
//! [`record`]'s client namespaces (records, hash fields, the expiry
//! index), and [`SYSTEM`] for the node's own records (the key count, the
//! state's clock, member addresses). Snapshots copy the family whole, so
//! all travel together.

pub mod apply;
pub mod long_double;
pub mod op;
pub mod presence;
pub mod record;

use bytes::Bytes;
use dr_codec::message::NodeId;
use dr_raft::StorageError;
use serde::{Deserialize, Serialize};

use crate::machine::KvStore;
use crate::resp::Reply;

pub use apply::{Applied, Tally, apply_entries};
pub use op::{DecodeError, ExpireCondition, SetCondition, Stamped, Ttl, WriteOp};
pub use presence::{PRESENCE_BYTES_MAX, PresenceCache};
pub use record::{Kind, USER, user_key};

/// Namespace byte of the node's own records.
pub const SYSTEM: u8 = 0;
/// The longest key a client may use (the storage's limit, less the
/// expiry index's namespace byte and time).
pub const KEY_BYTES_MAX: usize = dr_storage::KEY_BYTES_MAX - 9;
/// The longest value a string may grow to (Redis's limit, less the
/// record's header).
pub const VALUE_BYTES_MAX: usize = dr_storage::VALUE_BYTES_MAX - record::HEADER_BYTES;

/// The key count (named anew when records gained headers, so a data
/// directory of the older format is recognised).
const KEY_COUNT: &[u8] = b"\0count";
/// The key count of the first format, whose values had no header.
const LEGACY_KEY_COUNT: &[u8] = b"\0keys";
/// The state's clock (Unix ms).
const CLOCK: &[u8] = b"\0clock";
const MEMBER_PREFIX: &[u8] = b"\0member/";

/// Redis's answer to a command on a key of another type.
pub const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

/// Where a member can be reached: recorded in the log so every node, and
/// every node that joins later, knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAddrs {
    /// Raft traffic.
    pub peer: String,
    /// The Redis protocol port ("" until the member published it).
    pub client: String,
    /// The admin HTTP port ("" until the member published it).
    pub admin: String,
}

/// What applying one entry did, for the client that proposed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A `SET`: whether it wrote, and the value before.
    Set {
        /// The condition held and the value was written.
        written: bool,
        /// The value before the command, when the applier asked for it
        /// (`wants_old` of [`apply_entries`]); `None` otherwise.
        old: Option<Bytes>,
    },
    /// A count or a number (`DEL`, `INCR`, `APPEND`, `CAS`, `EXPIRE`).
    Integer(i64),
    /// A value or nothing (`GETEX`, `GETDEL`).
    Value(Option<Bytes>),
    /// `EXEC`: each queued command's reply, or `None` when a watched key
    /// had changed (nothing ran).
    Transaction(Option<Vec<Reply>>),
    /// Done, nothing to report (`MSET`, `FLUSHALL`, membership records,
    /// a membership change).
    Done,
    /// The command failed without changing anything (the same on every
    /// node): the Redis error text.
    Error(String),
}

fn member_key(id: NodeId) -> Vec<u8> {
    let mut key = MEMBER_PREFIX.to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key
}

fn stored_u64(store: &impl KvStore, key: &[u8]) -> Result<u64, StorageError> {
    Ok(store
        .get(key)?
        .and_then(|bytes| bytes.try_into().ok())
        .map_or(0, u64::from_le_bytes))
}

/// The count of client keys and the state's clock, as stored. A data
/// directory written by the first format (values without headers) is
/// refused: its values would be misread.
pub fn tally(store: &impl KvStore) -> Result<Tally, StorageError> {
    if store.get(LEGACY_KEY_COUNT)?.is_some() {
        return Err(StorageError::Invalid(
            "this data directory holds keys in drkv's first storage format (values without \
             type and expiry); export them with the older drkv (`redis-cli --scan` and \
             `MGET`) and import them into a fresh directory"
                .into(),
        ));
    }
    Ok(Tally {
        keys: stored_u64(store, KEY_COUNT)?,
        clock_ms: stored_u64(store, CLOCK)?,
        earliest_expiry_written_ms: None,
    })
}

/// Whether the store holds any client key (one step of a scan).
pub fn holds_client_keys(store: &impl KvStore) -> Result<bool, StorageError> {
    Ok(store
        .scan(&[USER], 1)?
        .first()
        .is_some_and(|(key, _)| key.first() == Some(&USER)))
}

/// Every member's recorded addresses.
pub fn members(store: &impl KvStore) -> Result<Vec<(NodeId, MemberAddrs)>, StorageError> {
    let records = store.scan(MEMBER_PREFIX, 4096)?;
    Ok(records
        .into_iter()
        .take_while(|(key, _)| key.starts_with(MEMBER_PREFIX))
        .filter_map(|(key, value)| {
            let id = u64::from_be_bytes(key[MEMBER_PREFIX.len()..].try_into().ok()?);
            Some((id, serde_json::from_slice(&value).ok()?))
        })
        .collect())
}

/// A Redis integer: optional minus sign, digits, no leading zeros or
/// spaces, within i64.
pub fn parse_integer(bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && text != "-0";
    if !canonical {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
pub(crate) mod tests;
