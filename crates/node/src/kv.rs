//! The key-value state machine: write commands as log entry payloads, and
//! their deterministic application on top of dr-storage.
//!
//! Every node applies the same entries in the same order and computes the
//! same [`Outcome`] for each; the node whose client proposed an entry
//! answers that client with the outcome it computed itself, so a follower
//! that forwarded a write needs no reply message from the leader.
//!
//! Keys live in the storage's `data` family with a one-byte namespace:
//! [`USER`] for client keys, [`SYSTEM`] for the node's own records (the
//! key count, member addresses). Snapshots copy the family whole, so both
//! travel together.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use dr_codec::message::{ConfState, Entry, EntryKind, LogIndex, NodeId, Term};
use dr_raft::StorageError;
use dr_storage::DataWrite;

use crate::machine::KvStore;
use serde::{Deserialize, Serialize};

/// Namespace byte of client keys.
pub const USER: u8 = 1;
/// Namespace byte of the node's own records.
pub const SYSTEM: u8 = 0;
/// The longest key a client may use (the storage's limit, less the
/// namespace byte).
pub const KEY_BYTES_MAX: usize = dr_storage::KEY_BYTES_MAX - 1;
/// The longest value a string may grow to (Redis's limit too).
pub const VALUE_BYTES_MAX: usize = 512 << 20;

const FORMAT_VERSION: u8 = 1;
const KEY_COUNT: &[u8] = b"\0keys";
const MEMBER_PREFIX: &[u8] = b"\0member/";

/// When a `SET` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetCondition {
    /// Always.
    Always,
    /// Only if the key is absent (`NX`).
    IfAbsent,
    /// Only if the key is present (`XX`).
    IfPresent,
}

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

/// A state-changing command, as it travels in a log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// `SET`, `SETNX`, `GETSET`.
    Set {
        /// The key.
        key: Bytes,
        /// The new value.
        value: Bytes,
        /// When to write.
        condition: SetCondition,
    },
    /// `DEL`: removes the keys.
    Delete(Vec<Bytes>),
    /// `MSET`: sets every pair, atomically.
    SetMany(Vec<(Bytes, Bytes)>),
    /// `INCRBY` and friends.
    IncrementBy {
        /// The key.
        key: Bytes,
        /// What to add.
        delta: i64,
    },
    /// `APPEND`.
    Append {
        /// The key.
        key: Bytes,
        /// What to append.
        value: Bytes,
    },
    /// `CAS key expected new`: empty `expected` means absent.
    CompareAndSet {
        /// The key.
        key: Bytes,
        /// The value it must have.
        expected: Bytes,
        /// The value it gets.
        new: Bytes,
    },
    /// Records where a member can be reached.
    Member {
        /// The member.
        id: NodeId,
        /// Its addresses.
        addrs: MemberAddrs,
    },
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
    /// A count or a number (`DEL`, `INCR`, `APPEND`, `CAS`).
    Integer(i64),
    /// Done, nothing to report (`MSET`, membership records, a membership
    /// change).
    Done,
    /// The command failed without changing anything (the same on every
    /// node): the Redis error text.
    Error(String),
}

/// A log entry payload that is not a valid command (never written by a
/// node; reported, and applied as a no-op everywhere).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl WriteOp {
    /// The entry payload: a version byte, an op byte, then the fields
    /// (byte strings as a u32 LE length and the bytes, numbers LE).
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64);
        out.put_u8(FORMAT_VERSION);
        match self {
            Self::Set {
                key,
                value,
                condition,
            } => {
                out.put_u8(1);
                out.put_u8(match condition {
                    SetCondition::Always => 0,
                    SetCondition::IfAbsent => 1,
                    SetCondition::IfPresent => 2,
                });
                put_bytes(&mut out, key);
                put_bytes(&mut out, value);
            }
            Self::Delete(keys) => {
                out.put_u8(2);
                out.put_u32_le(keys.len() as u32);
                keys.iter().for_each(|key| put_bytes(&mut out, key));
            }
            Self::SetMany(pairs) => {
                out.put_u8(3);
                out.put_u32_le(pairs.len() as u32);
                for (key, value) in pairs {
                    put_bytes(&mut out, key);
                    put_bytes(&mut out, value);
                }
            }
            Self::IncrementBy { key, delta } => {
                out.put_u8(4);
                out.put_i64_le(*delta);
                put_bytes(&mut out, key);
            }
            Self::Append { key, value } => {
                out.put_u8(5);
                put_bytes(&mut out, key);
                put_bytes(&mut out, value);
            }
            Self::CompareAndSet { key, expected, new } => {
                out.put_u8(6);
                put_bytes(&mut out, key);
                put_bytes(&mut out, expected);
                put_bytes(&mut out, new);
            }
            Self::Member { id, addrs } => {
                out.put_u8(7);
                out.put_u64_le(*id);
                let json = serde_json::to_vec(addrs).expect("addresses serialize");
                put_bytes(&mut out, &json);
            }
        }
        out.freeze()
    }

    /// Parses a payload written by [`Self::encode`]; byte strings are
    /// slices of `payload`.
    pub fn decode(payload: &Bytes) -> Result<Self, DecodeError> {
        let mut input = payload.clone();
        if take_u8(&mut input)? != FORMAT_VERSION {
            return Err(DecodeError("unknown command format version".into()));
        }
        let op = match take_u8(&mut input)? {
            1 => {
                let condition = match take_u8(&mut input)? {
                    0 => SetCondition::Always,
                    1 => SetCondition::IfAbsent,
                    2 => SetCondition::IfPresent,
                    other => return Err(DecodeError(format!("unknown SET condition {other}"))),
                };
                let key = take_bytes(&mut input)?;
                let value = take_bytes(&mut input)?;
                Self::Set {
                    key,
                    value,
                    condition,
                }
            }
            2 => {
                let count = take_count(&mut input, 4)?;
                Self::Delete(
                    (0..count)
                        .map(|_| take_bytes(&mut input))
                        .collect::<Result<_, _>>()?,
                )
            }
            3 => {
                let count = take_count(&mut input, 8)?;
                let pairs = (0..count)
                    .map(|_| Ok((take_bytes(&mut input)?, take_bytes(&mut input)?)))
                    .collect::<Result<_, DecodeError>>()?;
                Self::SetMany(pairs)
            }
            4 => {
                let delta = take_i64(&mut input)?;
                Self::IncrementBy {
                    key: take_bytes(&mut input)?,
                    delta,
                }
            }
            5 => Self::Append {
                key: take_bytes(&mut input)?,
                value: take_bytes(&mut input)?,
            },
            6 => Self::CompareAndSet {
                key: take_bytes(&mut input)?,
                expected: take_bytes(&mut input)?,
                new: take_bytes(&mut input)?,
            },
            7 => {
                let id = take_i64(&mut input)? as u64;
                let json = take_bytes(&mut input)?;
                let addrs = serde_json::from_slice(&json)
                    .map_err(|e| DecodeError(format!("member addresses: {e}")))?;
                Self::Member { id, addrs }
            }
            other => return Err(DecodeError(format!("unknown command op {other}"))),
        };
        if input.has_remaining() {
            return Err(DecodeError("trailing bytes after the command".into()));
        }
        Ok(op)
    }
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32_le(bytes.len() as u32);
    out.put_slice(bytes);
}

fn short() -> DecodeError {
    DecodeError("command payload ends early".into())
}

fn take_u8(input: &mut Bytes) -> Result<u8, DecodeError> {
    input.try_get_u8().map_err(|_| short())
}

fn take_i64(input: &mut Bytes) -> Result<i64, DecodeError> {
    input.try_get_i64_le().map_err(|_| short())
}

/// A count of items each at least `item_bytes_min` long: checked against
/// what is left, so a forged count cannot make the decoder allocate.
fn take_count(input: &mut Bytes, item_bytes_min: usize) -> Result<usize, DecodeError> {
    let count = input.try_get_u32_le().map_err(|_| short())? as usize;
    if count.saturating_mul(item_bytes_min) > input.remaining() {
        return Err(short());
    }
    Ok(count)
}

fn take_bytes(input: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = input.try_get_u32_le().map_err(|_| short())? as usize;
    if len > input.remaining() {
        return Err(short());
    }
    Ok(input.split_to(len))
}

/// The stored key of a client key.
pub fn user_key(key: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(key.len() + 1);
    stored.push(USER);
    stored.extend_from_slice(key);
    stored
}

fn member_key(id: NodeId) -> Vec<u8> {
    let mut key = MEMBER_PREFIX.to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// The number of client keys.
pub fn key_count(store: &impl KvStore) -> Result<u64, StorageError> {
    Ok(store
        .get(KEY_COUNT)?
        .and_then(|bytes| bytes.try_into().ok())
        .map_or(0, u64::from_le_bytes))
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

/// One applied entry's result.
#[derive(Debug)]
pub struct Applied {
    /// The entry's index.
    pub index: LogIndex,
    /// The entry's term (a waiter whose proposal had another term lost it).
    pub term: Term,
    /// What it did.
    pub outcome: Outcome,
    /// It recorded a member's addresses.
    pub member_changed: bool,
}

/// Which client keys exist, for the keys the apply path wrote or read
/// since it was last cleared. Most writes need only that of their key's
/// old state (for the key count: `SET`, `MSET`, `DEL`, `NX`/`XX`), and a
/// hit spares the store read, which is most of an apply's cost.
///
/// Invariant: what it says is what the store holds, because every write
/// of a client key goes through [`apply_entries`], which records it; the
/// one other writer, a snapshot install, must be followed by
/// [`clear`](Self::clear). Bounded in bytes (keys may be up to 64 KiB):
/// past its budget it starts over.
#[derive(Debug)]
pub struct PresenceCache {
    known: HashMap<Vec<u8>, bool>,
    bytes: usize,
    bytes_max: usize,
}

impl Default for PresenceCache {
    fn default() -> Self {
        Self::with_limit(PRESENCE_BYTES_MAX)
    }
}

/// Bytes a [`PresenceCache`] may hold by default: about 256k keys of
/// 64 bytes.
pub const PRESENCE_BYTES_MAX: usize = 32 << 20;

/// What a remembered key costs beyond its bytes (the map's slot, the
/// key's allocation).
const PRESENCE_ENTRY_OVERHEAD: usize = 64;

impl PresenceCache {
    /// A cache that holds at most `bytes_max` bytes.
    pub fn with_limit(bytes_max: usize) -> Self {
        Self {
            known: HashMap::new(),
            bytes: 0,
            bytes_max,
        }
    }

    /// Forgets everything (after the store changed behind the apply path).
    pub fn clear(&mut self) {
        self.known = HashMap::new();
        self.bytes = 0;
    }

    /// Whether it remembers none.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// The bytes it holds, as its budget counts them.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn get(&self, stored_key: &[u8]) -> Option<bool> {
        self.known.get(stored_key).copied()
    }

    fn record(&mut self, stored_key: &[u8], present: bool) {
        if let Some(known) = self.known.get_mut(stored_key) {
            *known = present;
            return;
        }
        let cost = stored_key.len() + PRESENCE_ENTRY_OVERHEAD;
        if cost > self.bytes_max {
            return;
        }
        if self.bytes + cost > self.bytes_max {
            self.clear();
        }
        self.bytes += cost;
        self.known.insert(stored_key.to_vec(), present);
    }
}

/// Applies committed entries in one atomic storage batch (with the new
/// applied index and configuration) and returns each entry's outcome.
/// Later entries of the batch see the earlier ones' writes. `keys` is the
/// number of client keys before (the caller keeps it, so no apply reads
/// it back) and after. `wants_old(index)`: whether the outcome of the
/// entry at `index` must carry the old value (`SET ... GET`, `GETSET`: a
/// client waits on this node for it); other writes read only whether their
/// key existed, which `presence` often knows.
pub fn apply_entries<S: KvStore>(
    store: &mut S,
    entries: &[Entry],
    conf_state: Option<&ConfState>,
    keys: &mut u64,
    presence: &mut PresenceCache,
    wants_old: impl Fn(LogIndex) -> bool,
) -> Result<Vec<Applied>, StorageError> {
    let Some(last) = entries.last() else {
        return Ok(Vec::new());
    };
    let mut batch = ApplyBatch::new(store, *keys, &mut *presence);
    let mut applied = Vec::with_capacity(entries.len());
    for entry in entries {
        let mut member_changed = false;
        let outcome = match entry.kind {
            EntryKind::Normal => match WriteOp::decode(&entry.payload) {
                Ok(op) => {
                    member_changed = matches!(op, WriteOp::Member { .. });
                    batch.apply(op, wants_old(entry.index))?
                }
                Err(error) => {
                    tracing::error!(index = entry.index, error = %error.0, "a log entry is not a command; skipped");
                    Outcome::Error(format!("ERR undecodable command: {}", error.0))
                }
            },
            EntryKind::ConfChange | EntryKind::Noop => Outcome::Done,
        };
        applied.push(Applied {
            index: entry.index,
            term: entry.term,
            outcome,
            member_changed,
        });
    }
    let after = batch.keys;
    let writes = batch.into_writes();
    let writes: Vec<DataWrite<'_>> = writes
        .iter()
        .map(|(key, value)| match value {
            Some(value) => DataWrite::Put(key, value),
            None => DataWrite::Delete(key),
        })
        .collect();
    store.apply(&writes, last.index, conf_state)?;
    // Stored: from now on the cache may say so.
    for write in writes
        .iter()
        .filter(|write| write.key().first() == Some(&USER))
    {
        presence.record(write.key(), matches!(write, DataWrite::Put(..)));
    }
    *keys = after;
    Ok(applied)
}

/// The writes of one batch of entries, kept in memory until the batch is
/// written, so later entries read what earlier ones wrote.
struct ApplyBatch<'a, S> {
    store: &'a S,
    presence: &'a mut PresenceCache,
    pending: HashMap<Vec<u8>, Option<Bytes>>,
    /// Client keys now.
    keys: u64,
    /// Whether the batch wrote a client key (the only way `keys` moves):
    /// then the count is written, even if it ended where it began, so the
    /// stored state depends on the entries applied, never on how they
    /// were batched.
    wrote_client_key: bool,
}

impl<'a, S: KvStore> ApplyBatch<'a, S> {
    fn new(store: &'a S, keys: u64, presence: &'a mut PresenceCache) -> Self {
        Self {
            store,
            presence,
            pending: HashMap::new(),
            keys,
            wrote_client_key: false,
        }
    }

    fn read(&mut self, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        let stored = user_key(key);
        if let Some(value) = self.pending.get(&stored) {
            return Ok(value.clone());
        }
        let value = self.store.get(&stored)?.map(Bytes::from);
        self.presence.record(&stored, value.is_some());
        Ok(value)
    }

    /// Whether the key exists, without its value when that is known.
    fn exists(&mut self, key: &[u8]) -> Result<bool, StorageError> {
        let stored = user_key(key);
        if let Some(value) = self.pending.get(&stored) {
            return Ok(value.is_some());
        }
        if let Some(present) = self.presence.get(&stored) {
            return Ok(present);
        }
        let present = self.store.get(&stored)?.is_some();
        self.presence.record(&stored, present);
        Ok(present)
    }

    /// Writes (or with `None` deletes) a client key, keeping the count.
    fn write(&mut self, key: &[u8], value: Option<Bytes>, existed: bool) {
        match (existed, value.is_some()) {
            (false, true) => self.keys += 1,
            (true, false) => self.keys -= 1,
            _ => {}
        }
        self.pending.insert(user_key(key), value);
        self.wrote_client_key = true;
    }

    fn apply(&mut self, op: WriteOp, wants_old: bool) -> Result<Outcome, StorageError> {
        Ok(match op {
            WriteOp::Set {
                key,
                value,
                condition,
            } => {
                let (existed, old) = if wants_old {
                    let old = self.read(&key)?;
                    (old.is_some(), old)
                } else {
                    (self.exists(&key)?, None)
                };
                let written = match condition {
                    SetCondition::Always => true,
                    SetCondition::IfAbsent => !existed,
                    SetCondition::IfPresent => existed,
                };
                if written {
                    self.write(&key, Some(value), existed);
                }
                Outcome::Set { written, old }
            }
            WriteOp::Delete(keys) => {
                let mut removed = 0;
                for key in keys {
                    if self.exists(&key)? {
                        self.write(&key, None, true);
                        removed += 1;
                    }
                }
                Outcome::Integer(removed)
            }
            WriteOp::SetMany(pairs) => {
                for (key, value) in pairs {
                    let existed = self.exists(&key)?;
                    self.write(&key, Some(value), existed);
                }
                Outcome::Done
            }
            WriteOp::IncrementBy { key, delta } => self.increment(&key, delta)?,
            WriteOp::Append { key, value } => {
                let old = self.read(&key)?;
                let old_len = old.as_ref().map_or(0, Bytes::len);
                if old_len + value.len() > VALUE_BYTES_MAX {
                    return Ok(Outcome::Error(
                        "ERR string exceeds maximum allowed size (proto-max-bulk-len)".into(),
                    ));
                }
                let mut joined = BytesMut::with_capacity(old_len + value.len());
                joined.extend_from_slice(old.as_deref().unwrap_or_default());
                joined.extend_from_slice(&value);
                let len = joined.len() as i64;
                self.write(&key, Some(joined.freeze()), old.is_some());
                Outcome::Integer(len)
            }
            WriteOp::CompareAndSet { key, expected, new } => {
                let old = self.read(&key)?;
                let matches = match &old {
                    None => expected.is_empty(),
                    Some(value) => *value == expected && !expected.is_empty(),
                };
                if matches {
                    self.write(&key, Some(new), old.is_some());
                }
                Outcome::Integer(i64::from(matches))
            }
            WriteOp::Member { id, addrs } => {
                let json = serde_json::to_vec(&addrs).expect("addresses serialize");
                self.pending.insert(member_key(id), Some(json.into()));
                Outcome::Done
            }
        })
    }

    fn increment(&mut self, key: &[u8], delta: i64) -> Result<Outcome, StorageError> {
        let old = self.read(key)?;
        let current = match &old {
            None => 0,
            Some(bytes) => match parse_integer(bytes) {
                Some(value) => value,
                None => {
                    return Ok(Outcome::Error(
                        "ERR value is not an integer or out of range".into(),
                    ));
                }
            },
        };
        let Some(new) = current.checked_add(delta) else {
            return Ok(Outcome::Error(
                "ERR increment or decrement would overflow".into(),
            ));
        };
        self.write(key, Some(Bytes::from(new.to_string())), old.is_some());
        Ok(Outcome::Integer(new))
    }

    fn into_writes(mut self) -> Vec<(Vec<u8>, Option<Bytes>)> {
        if self.wrote_client_key {
            let count = Bytes::copy_from_slice(&self.keys.to_le_bytes());
            self.pending.insert(KEY_COUNT.to_vec(), Some(count));
        }
        self.pending.into_iter().collect()
    }
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
mod tests {
    use dr_storage::RocksStorage;

    use super::*;

    fn every_op() -> Vec<WriteOp> {
        vec![
            WriteOp::Set {
                key: "k".into(),
                value: "v".into(),
                condition: SetCondition::IfAbsent,
            },
            WriteOp::Delete(vec!["a".into(), "".into()]),
            WriteOp::SetMany(vec![("a".into(), "1".into()), ("b".into(), "".into())]),
            WriteOp::IncrementBy {
                key: "n".into(),
                delta: -7,
            },
            WriteOp::Append {
                key: "k".into(),
                value: "tail".into(),
            },
            WriteOp::CompareAndSet {
                key: "k".into(),
                expected: "".into(),
                new: "x".into(),
            },
            WriteOp::Member {
                id: 3,
                addrs: MemberAddrs {
                    peer: "127.0.0.1:1".into(),
                    client: "".into(),
                    admin: "127.0.0.1:2".into(),
                },
            },
        ]
    }

    #[test]
    fn every_op_round_trips_and_every_cut_or_flip_is_an_error_or_another_op() {
        for op in every_op() {
            let encoded = op.encode();
            assert_eq!(WriteOp::decode(&encoded), Ok(op.clone()));
            for cut in 0..encoded.len() {
                assert!(
                    WriteOp::decode(&encoded.slice(..cut)).is_err(),
                    "{op:?} cut at {cut}"
                );
            }
            for position in 0..encoded.len() {
                let mut flipped = encoded.to_vec();
                flipped[position] ^= 0xff;
                // Never a panic; whatever decodes is a well-formed op.
                let _ = WriteOp::decode(&Bytes::from(flipped));
            }
        }
    }

    /// A store in a fresh directory, removed on drop.
    struct TempStore {
        store: Option<RocksStorage>,
        dir: std::path::PathBuf,
    }

    impl TempStore {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "drkv-kv-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            let store = RocksStorage::open(&dir, dr_storage::StateMachine::DataFamily)
                .expect("a fresh store opens");
            Self {
                store: Some(store),
                dir,
            }
        }

        fn store(&mut self) -> &mut RocksStorage {
            self.store.as_mut().expect("open until dropped")
        }
    }

    impl Drop for TempStore {
        fn drop(&mut self) {
            drop(self.store.take());
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A random op on one of eight keys (xorshift: reproducible).
    fn random_op(state: &mut u64) -> WriteOp {
        let mut next = |bound: u64| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            *state % bound
        };
        let key = |k: u64| Bytes::from(format!("key-{k}"));
        match next(6) {
            0 | 1 => WriteOp::Set {
                key: key(next(8)),
                value: Bytes::from(format!("v{}", next(100))),
                condition: [
                    SetCondition::Always,
                    SetCondition::IfAbsent,
                    SetCondition::IfPresent,
                ][next(3) as usize],
            },
            2 => WriteOp::Delete((0..=next(3)).map(|_| key(next(8))).collect()),
            3 => WriteOp::SetMany((0..=next(3)).map(|_| (key(next(8)), "m".into())).collect()),
            4 => WriteOp::IncrementBy {
                key: key(next(8)),
                delta: 1,
            },
            _ => WriteOp::CompareAndSet {
                key: key(next(8)),
                expected: "".into(),
                new: "c".into(),
            },
        }
    }

    #[test]
    fn applying_with_a_warm_presence_cache_matches_reading_the_store() {
        // `warm` keeps one small cache (it fills and starts over);
        // `cold` starts every batch with an empty one, so reads the store.
        let (mut warm, mut cold) = (TempStore::new("warm"), TempStore::new("cold"));
        // Room for five of these keys.
        let mut warm_cache = PresenceCache::with_limit(5 * (6 + PRESENCE_ENTRY_OVERHEAD));
        let (mut warm_keys, mut cold_keys) = (0u64, 0u64);
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut index = 0;
        for _batch in 0..300 {
            let entries: Vec<Entry> = (0..1 + state % 5)
                .map(|_| {
                    index += 1;
                    Entry {
                        term: 1,
                        index,
                        kind: EntryKind::Normal,
                        payload: random_op(&mut state).encode(),
                    }
                })
                .collect();
            let wants_old = |index: LogIndex| index.is_multiple_of(3);
            let got = apply_entries(
                warm.store(),
                &entries,
                None,
                &mut warm_keys,
                &mut warm_cache,
                wants_old,
            )
            .expect("applies");
            let expected = apply_entries(
                cold.store(),
                &entries,
                None,
                &mut cold_keys,
                &mut PresenceCache::default(),
                wants_old,
            )
            .expect("applies");
            assert_eq!(format!("{got:?}"), format!("{expected:?}"));
            assert_eq!(warm_keys, cold_keys);
            assert_eq!(key_count(warm.store()).unwrap(), warm_keys);
        }
        let stored = |store: &mut RocksStorage| store.scan(b"", usize::MAX).expect("scan");
        assert_eq!(stored(warm.store()), stored(cold.store()));
        let client_keys = stored(cold.store())
            .iter()
            .filter(|(key, _)| key.first() == Some(&USER))
            .count() as u64;
        assert_eq!(cold_keys, client_keys, "the count is the number of keys");
    }

    #[test]
    fn the_stored_state_depends_on_the_entries_not_on_their_batching() {
        // The simulator found two nodes with one applied index and
        // different bytes: a SET and a DEL in one batch left no key count,
        // in two batches a count of 0.
        let (mut one, mut two) = (TempStore::new("one-batch"), TempStore::new("two-batches"));
        let entry = |index, op: WriteOp| Entry {
            term: 1,
            index,
            kind: EntryKind::Normal,
            payload: op.encode(),
        };
        let set = WriteOp::Set {
            key: "b".into(),
            value: "v".into(),
            condition: SetCondition::Always,
        };
        let del = WriteOp::Delete(vec!["b".into()]);
        let entries = [entry(1, set), entry(2, del)];
        let (mut keys_one, mut keys_two) = (0u64, 0u64);
        let apply = |store: &mut RocksStorage, entries: &[Entry], keys: &mut u64| {
            apply_entries(
                store,
                entries,
                None,
                keys,
                &mut PresenceCache::default(),
                |_| false,
            )
            .expect("applies");
        };
        apply(one.store(), &entries, &mut keys_one);
        apply(two.store(), &entries[..1], &mut keys_two);
        apply(two.store(), &entries[1..], &mut keys_two);
        let stored = |store: &mut RocksStorage| store.scan(b"", usize::MAX).expect("scan");
        assert_eq!(stored(one.store()), stored(two.store()));
        assert_eq!((keys_one, keys_two), (0, 0));
    }

    #[test]
    fn the_presence_cache_keeps_its_byte_budget_whatever_the_key_sizes() {
        let budget = 1 << 20;
        let mut cache = PresenceCache::with_limit(budget);
        for round in 0..200usize {
            let key = vec![round as u8; (round * 997) % (64 << 10) + 1];
            cache.record(&key, round % 2 == 0);
            assert!(cache.bytes() <= budget, "over budget after {round} keys");
            assert_eq!(cache.get(&key), Some(round % 2 == 0));
        }
        cache.record(&vec![1; budget], true);
        assert_eq!(
            cache.get(&vec![1; budget]),
            None,
            "a key over the budget is not kept"
        );
        cache.clear();
        assert!(cache.is_empty() && cache.bytes() == 0);
    }

    #[test]
    fn a_forged_count_does_not_allocate() {
        let mut payload = vec![FORMAT_VERSION, 2];
        payload.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(WriteOp::decode(&Bytes::from(payload)).is_err());
    }

    #[test]
    fn integers_are_parsed_the_redis_way() {
        assert_eq!(parse_integer(b"0"), Some(0));
        assert_eq!(parse_integer(b"-12"), Some(-12));
        assert_eq!(parse_integer(b"9223372036854775807"), Some(i64::MAX));
        for bad in [
            &b""[..],
            b"-",
            b"01",
            b"-0",
            b" 1",
            b"1 ",
            b"1.5",
            b"9223372036854775808",
            b"x",
        ] {
            assert_eq!(
                parse_integer(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
