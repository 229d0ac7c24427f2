//! The key-value state machine as the replica engine runs it: `kv.rs`'s
//! commands and apply path over any [`KvStore`] (RocksDB in `drkv`,
//! memory in the simulator), the reads of `command.rs`, `SCAN`'s cursors,
//! and how commands and outcomes cross between nodes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use dr_codec::message::{ConfState, Entry, LogIndex, NodeId, SnapshotMeta};
use dr_engine::{Applied, DecodeError, SnapshotStarted, StateMachine};
use dr_raft::{LogStore, Ready, StorageError};
use dr_storage::{DataWrite, KeyValue, RocksStorage};

use crate::clock::WallClock;
use crate::command::{ReadOp, ReplyShape};
use crate::kv::record::{self, EXPIRY};
use crate::kv::{self, MemberAddrs, Outcome, PresenceCache, Stamped, Tally, WriteOp};
use crate::reads::{ScanCursors, View};
use crate::resp::{self, Limits, Protocol, Reply};
use crate::status::StatusBoard;

/// A log store that also holds the key-value state (RocksDB's `data`
/// family beside the log, or its in-memory twin), written atomically with
/// the applied index.
pub trait KvStore: LogStore {
    /// The value of a stored key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Up to `limit` pairs at or after `start`, in key order.
    fn scan(&self, start: &[u8], limit: usize) -> Result<Vec<KeyValue>, StorageError>;
    /// Writes an apply batch's effects with the new applied index (and
    /// configuration), atomically; not synced on its own.
    fn apply(
        &mut self,
        writes: &[DataWrite<'_>],
        applied: LogIndex,
        conf_state: Option<&ConfState>,
    ) -> Result<(), StorageError>;
    /// The highest index whose effects are in the state.
    fn applied_index(&self) -> LogIndex;
    /// Whether persisting `ready` syncs.
    fn must_sync(&self, ready: &Ready) -> bool;
    /// Snapshots the state at the applied index (see
    /// [`StateMachine::snapshot`]).
    fn snapshot(
        &mut self,
        conf_state: ConfState,
        background: bool,
    ) -> Result<SnapshotStarted, StorageError>;
    /// A background snapshot now recorded: its index.
    fn poll_snapshot(&mut self) -> Option<LogIndex>;
    /// Whether a background snapshot is being copied.
    fn snapshot_copying(&self) -> bool;
    /// The latest snapshot's data in bytes.
    fn snapshot_bytes(&self) -> u64;
}

impl KvStore for RocksStorage {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        RocksStorage::get(self, key)
    }

    fn scan(&self, start: &[u8], limit: usize) -> Result<Vec<KeyValue>, StorageError> {
        RocksStorage::scan(self, start, limit)
    }

    fn apply(
        &mut self,
        writes: &[DataWrite<'_>],
        applied: LogIndex,
        conf_state: Option<&ConfState>,
    ) -> Result<(), StorageError> {
        RocksStorage::apply(self, writes, applied, conf_state)
    }

    fn applied_index(&self) -> LogIndex {
        RocksStorage::applied_index(self)
    }

    fn must_sync(&self, ready: &Ready) -> bool {
        RocksStorage::must_sync(self, ready)
    }

    fn snapshot(
        &mut self,
        conf_state: ConfState,
        background: bool,
    ) -> Result<SnapshotStarted, StorageError> {
        if background {
            return self
                .begin_snapshot(conf_state)
                .map(SnapshotStarted::Copying);
        }
        let applied = self.applied_index();
        self.create_snapshot(applied, conf_state, Bytes::new())?;
        Ok(SnapshotStarted::Taken(applied))
    }

    fn poll_snapshot(&mut self) -> Option<LogIndex> {
        RocksStorage::poll_snapshot(self)
    }

    fn snapshot_copying(&self) -> bool {
        self.snapshot_making_index().is_some()
    }

    fn snapshot_bytes(&self) -> u64 {
        self.snapshot_len()
    }
}

/// A client's write as the engine carries it: the change, and how its
/// outcome is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvWrite {
    /// The change.
    pub op: WriteOp,
    /// How its outcome is answered.
    pub shape: ReplyShape,
}

fn shape_code(shape: ReplyShape) -> u8 {
    match shape {
        ReplyShape::Ok => 0,
        ReplyShape::OldValue => 1,
        ReplyShape::Written => 2,
        ReplyShape::Integer => 3,
        ReplyShape::Value => 4,
        ReplyShape::Transaction => 5,
    }
}

fn shape_of(code: u8) -> Option<ReplyShape> {
    Some(match code {
        0 => ReplyShape::Ok,
        1 => ReplyShape::OldValue,
        2 => ReplyShape::Written,
        3 => ReplyShape::Integer,
        4 => ReplyShape::Value,
        5 => ReplyShape::Transaction,
        _ => return None,
    })
}

const OUTCOME_SET: u8 = 1;
const OUTCOME_SET_OLD: u8 = 2;
const OUTCOME_INTEGER: u8 = 3;
const OUTCOME_DONE: u8 = 4;
const OUTCOME_ERROR: u8 = 5;
const OUTCOME_NIL: u8 = 6;
const OUTCOME_VALUE: u8 = 7;
const OUTCOME_ABORTED: u8 = 8;
const OUTCOME_REPLIES: u8 = 9;

/// An outcome as a leader answers a forwarded write.
pub fn encode_outcome(outcome: &Outcome) -> Bytes {
    let mut out = BytesMut::new();
    match outcome {
        Outcome::Set { written, old: None } => {
            out.put_u8(OUTCOME_SET);
            out.put_u8(u8::from(*written));
        }
        Outcome::Set {
            written,
            old: Some(old),
        } => {
            out.put_u8(OUTCOME_SET_OLD);
            out.put_u8(u8::from(*written));
            out.extend_from_slice(old);
        }
        Outcome::Integer(value) => {
            out.put_u8(OUTCOME_INTEGER);
            out.put_i64_le(*value);
        }
        Outcome::Done => out.put_u8(OUTCOME_DONE),
        Outcome::Value(None) => out.put_u8(OUTCOME_NIL),
        Outcome::Value(Some(value)) => {
            out.put_u8(OUTCOME_VALUE);
            out.extend_from_slice(value);
        }
        Outcome::Transaction(None) => out.put_u8(OUTCOME_ABORTED),
        Outcome::Transaction(Some(replies)) => {
            // The replies as RESP3 (maps stay maps; no null arrays in a
            // transaction): the follower parses them back with the
            // client-side parser.
            out.put_u8(OUTCOME_REPLIES);
            Reply::Array(replies.clone()).encode(Protocol::Resp3, &mut out);
        }
        Outcome::Error(text) => {
            out.put_u8(OUTCOME_ERROR);
            out.extend_from_slice(text.as_bytes());
        }
    }
    out.freeze()
}

/// A leader's outcome, every byte checked.
pub fn decode_outcome(payload: &Bytes) -> Result<Outcome, DecodeError> {
    let bad = |why: &str| DecodeError(format!("malformed outcome: {why}"));
    let mut input = payload.clone();
    if !input.has_remaining() {
        return Err(bad("empty"));
    }
    let written = |input: &mut Bytes| match input.first() {
        Some(&flag @ (0 | 1)) => {
            input.advance(1);
            Ok(flag == 1)
        }
        _ => Err(bad("a SET outcome without its flag")),
    };
    match input.get_u8() {
        OUTCOME_SET if input.len() == 1 => Ok(Outcome::Set {
            written: written(&mut input)?,
            old: None,
        }),
        OUTCOME_SET_OLD => {
            let written = written(&mut input)?;
            Ok(Outcome::Set {
                written,
                old: Some(input),
            })
        }
        OUTCOME_INTEGER if input.len() == 8 => Ok(Outcome::Integer(input.get_i64_le())),
        OUTCOME_DONE if input.is_empty() => Ok(Outcome::Done),
        OUTCOME_NIL if input.is_empty() => Ok(Outcome::Value(None)),
        OUTCOME_VALUE => Ok(Outcome::Value(Some(input))),
        OUTCOME_ABORTED if input.is_empty() => Ok(Outcome::Transaction(None)),
        OUTCOME_REPLIES => {
            let mut buffer = BytesMut::from(&input[..]);
            let limits = Limits {
                request_bytes_max: buffer.len().max(1),
                arguments_max: usize::MAX,
            };
            match resp::parse_reply(&mut buffer, &limits) {
                Ok(Some(Reply::Array(replies))) if buffer.is_empty() => {
                    Ok(Outcome::Transaction(Some(replies)))
                }
                _ => Err(bad("transaction replies")),
            }
        }
        OUTCOME_ERROR => String::from_utf8(input.to_vec())
            .map(Outcome::Error)
            .map_err(|_| bad("an error text that is not UTF-8")),
        tag => Err(bad(&format!("kind {tag} or its length"))),
    }
}

/// The key-value state machine over the store `S`.
#[derive(Debug)]
pub struct KvMachine<S> {
    /// Client keys and the state's clock as of the applied index (kept
    /// here: reading them from the store on every apply costs a memtable
    /// search).
    tally: Tally,
    /// The engine clock's readings as Unix time: what the leader stamps
    /// on its entries, what reads compare expiry times with.
    wall: WallClock,
    /// The most keys `KEYS` looks at.
    keys_max: usize,
    /// `RANDOMKEY`'s generator (xorshift; not part of the state).
    random: u64,
    /// Where the next look at the expiry index starts: past what earlier
    /// removals took, or at the first entry not yet due that the last
    /// look found (everything before it is gone: removed or replaced, and
    /// walking their tombstones, in RocksDB or staged, on every look cost
    /// a scan of every expiry ever replaced). An entry written before it
    /// (a shorter time to live) sends the next look to the index's head
    /// (`Tally::earliest_expiry_written_ms`).
    reap_from: Vec<u8>,
    /// Looks since the last one from the index's head (every so often
    /// one is anyway: for due entries a reap that did not commit left
    /// behind `reap_from`).
    looks_since_head: u32,
    /// Which client keys exist, as far as applies have seen.
    presence: PresenceCache,
    cursors: ScanCursors,
    members: BTreeMap<NodeId, MemberAddrs>,
    status: Arc<StatusBoard>,
    store: std::marker::PhantomData<fn(&S)>,
}

impl<S: KvStore> KvMachine<S> {
    /// The machine over `store` as it is, publishing the member table to
    /// `status`, reading the engine's clock as Unix time with `wall`.
    /// Refuses a store whose data it cannot read.
    pub fn new(store: &S, status: Arc<StatusBoard>, wall: WallClock) -> Result<Self, StorageError> {
        let mut machine = Self {
            tally: kv::tally(store)?,
            wall,
            keys_max: KEYS_MAX_DEFAULT,
            random: wall.unix_ms(Duration::ZERO) | 1,
            reap_from: vec![EXPIRY],
            looks_since_head: 0,
            presence: PresenceCache::default(),
            cursors: ScanCursors::new(status.id()),
            members: BTreeMap::new(),
            status,
            store: std::marker::PhantomData,
        };
        machine.reload_members(store);
        machine.learn_presence(store)?;
        Ok(machine)
    }

    /// Sets the most keys `KEYS` looks at before it answers an error.
    pub fn with_keys_max(mut self, keys_max: usize) -> Self {
        self.keys_max = keys_max;
        self
    }

    /// Client keys as of the applied index.
    pub fn keys(&self) -> u64 {
        self.tally.keys
    }

    /// The time a read at engine time `now` compares expiry times with:
    /// this node's clock, or the state's if that is ahead (so a read
    /// never sees a key that a write already found expired).
    fn read_time_ms(&self, now: Duration) -> u64 {
        self.wall.unix_ms(now).max(self.tally.clock_ms)
    }

    /// On an empty keyspace the presence cache knows every key from the
    /// start, so that new keys are written without a store read.
    fn learn_presence(&mut self, store: &S) -> Result<(), StorageError> {
        if self.presence.is_empty() && !kv::holds_client_keys(store)? {
            self.presence.knows_every_key();
        }
        Ok(())
    }

    fn reload_members(&mut self, store: &S) {
        match kv::members(store) {
            Ok(members) => {
                self.members = members.into_iter().collect();
                self.status.publish_members(&self.members);
            }
            Err(error) => tracing::error!(%error, "cannot read the member table"),
        }
    }
}

/// The most keys `KEYS` looks at unless configured otherwise.
pub const KEYS_MAX_DEFAULT: usize = 100_000;

/// Keys removed per expiry command at most: an expiry storm becomes a
/// stream of bounded entries, one in flight at a time.
pub const REAP_BATCH_MAX: usize = 256;

/// Housekeeping looks per look from the expiry index's head at least
/// (each walks what was removed or replaced since the last compaction or
/// checkpoint).
const LOOKS_PER_HEAD_LOOK: u32 = 256;

/// The keys of the expiry index from `from` whose time is at or before
/// `now_ms` (at most [`REAP_BATCH_MAX`]), with their times; and where the
/// next look may start (past the last key found, or at the first entry
/// not yet due).
type Due = (Vec<(Bytes, u64)>, Option<Vec<u8>>);

fn expired_keys(store: &impl KvStore, from: &[u8], now_ms: u64) -> Result<Due, StorageError> {
    let page = store.scan(from, REAP_BATCH_MAX)?;
    let mut due = Vec::new();
    let mut next = None;
    for (stored, _) in &page {
        let Some((at, key)) = record::parse_expiry_key(stored) else {
            break;
        };
        if at > now_ms {
            next = Some(stored.clone());
            break;
        }
        due.push((Bytes::copy_from_slice(key), at));
        let mut after = stored.clone();
        after.push(0);
        next = Some(after);
    }
    Ok((due, next))
}

impl<S: KvStore> StateMachine for KvMachine<S> {
    type Store = S;
    type Command = KvWrite;
    type Context = ReplyShape;
    type Output = Outcome;
    type Query = ReadOp;
    type ReadOutput = Reply;

    fn context(command: &KvWrite) -> ReplyShape {
        command.shape
    }

    fn entry_payload(&self, command: &KvWrite, now: Duration) -> Bytes {
        Stamped {
            now_ms: self.wall.unix_ms(now),
            op: command.op.clone(),
        }
        .encode()
    }

    fn encode_command(command: &KvWrite) -> Bytes {
        let mut out = BytesMut::with_capacity(1 + command.op.encoded_len_hint());
        out.put_u8(shape_code(command.shape));
        command.op.encode_into(&mut out);
        out.freeze()
    }

    fn decode_command(payload: &Bytes) -> Result<KvWrite, DecodeError> {
        let Some(&code) = payload.first() else {
            return Err(DecodeError("an empty write".into()));
        };
        let shape = shape_of(code).ok_or_else(|| DecodeError(format!("reply shape {code}")))?;
        let op = WriteOp::decode(&payload.slice(1..)).map_err(|e| DecodeError(e.0))?;
        Ok(KvWrite { op, shape })
    }

    fn encode_output(output: &Outcome) -> Bytes {
        encode_outcome(output)
    }

    fn decode_output(payload: &Bytes) -> Result<Outcome, DecodeError> {
        decode_outcome(payload)
    }

    fn applied_index(&self, store: &S) -> LogIndex {
        store.applied_index()
    }

    fn apply(
        &mut self,
        store: &mut S,
        entries: &[Entry],
        conf_state: Option<&ConfState>,
        waiting: &dyn Fn(LogIndex) -> Option<ReplyShape>,
    ) -> Result<Vec<Applied<Outcome>>, StorageError> {
        if entries.is_empty() {
            if let Some(conf) = conf_state {
                let applied = store.applied_index();
                store.apply(&[], applied, Some(conf))?;
            }
            return Ok(Vec::new());
        }
        let results = kv::apply_entries(
            store,
            entries,
            conf_state,
            &mut self.tally,
            &mut self.presence,
            |index| {
                matches!(
                    waiting(index),
                    Some(ReplyShape::OldValue | ReplyShape::Transaction)
                )
            },
            self.keys_max,
        )?;
        let mut applied = Vec::with_capacity(results.len());
        let mut members_changed = false;
        for result in results {
            members_changed |= result.member_changed;
            applied.push(Applied {
                index: result.index,
                term: result.term,
                output: result.outcome,
                members_changed: result.member_changed,
            });
        }
        if members_changed {
            self.reload_members(store);
        }
        Ok(applied)
    }

    fn read(&mut self, store: &S, op: &ReadOp, now: Duration) -> Result<Reply, StorageError> {
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        let view = View {
            store,
            now_ms: self.read_time_ms(now),
            keys_max: self.keys_max,
            random: self.random,
        };
        view.serve(op, self.tally.keys, &mut self.cursors)
    }

    fn housekeeping(&mut self, store: &S, now: Duration) -> Option<KvWrite> {
        let now_ms = self.wall.unix_ms(now);
        // An entry written before where the looks start: look from the
        // head once.
        let start_ms = record::parse_expiry_key(&self.reap_from).map(|(at, _)| at);
        let written = self.tally.earliest_expiry_written_ms.take();
        self.looks_since_head += 1;
        if self.looks_since_head >= LOOKS_PER_HEAD_LOOK
            || written.is_some_and(|written| start_ms.is_some_and(|start| written <= start))
        {
            self.reap_from = vec![EXPIRY];
            self.looks_since_head = 0;
        }
        let (due, next) = match expired_keys(store, &self.reap_from, now_ms) {
            Ok(found) => found,
            Err(error) => {
                tracing::error!(%error, "cannot read the expiry index");
                return None;
            }
        };
        if let Some(next) = next {
            self.reap_from = next;
        }
        (!due.is_empty()).then(|| KvWrite {
            op: WriteOp::Reap(due),
            shape: ReplyShape::Integer,
        })
    }

    fn restored(&mut self, store: &mut S, _meta: &SnapshotMeta) -> Result<(), StorageError> {
        // The install rewrote the data behind the apply path.
        self.presence.clear();
        self.tally = kv::tally(store)?;
        self.reload_members(store);
        self.learn_presence(store)
    }

    fn snapshot(
        &mut self,
        store: &mut S,
        conf_state: ConfState,
        background: bool,
    ) -> Result<SnapshotStarted, StorageError> {
        store.snapshot(conf_state, background)
    }

    fn poll_snapshot(&mut self, store: &mut S) -> Option<LogIndex> {
        store.poll_snapshot()
    }

    fn snapshot_copying(&self, store: &S) -> bool {
        store.snapshot_copying()
    }

    fn snapshot_bytes(&self, store: &S) -> u64 {
        store.snapshot_bytes()
    }

    fn persist_syncs(store: &S, ready: &Ready) -> bool {
        store.must_sync(ready)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::kv::{SetCondition, Ttl};

    type Machine = KvMachine<RocksStorage>;

    #[test]
    fn writes_cross_with_their_shape() {
        let writes = [
            KvWrite {
                op: WriteOp::Set {
                    key: Bytes::from_static(b"k"),
                    value: Bytes::from_static(b"v"),
                    condition: SetCondition::IfAbsent,
                    ttl: Ttl::In(10),
                    get: false,
                },
                shape: ReplyShape::Written,
            },
            KvWrite {
                op: WriteOp::Delete(vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]),
                shape: ReplyShape::Integer,
            },
        ];
        for write in writes {
            assert_eq!(
                Machine::decode_command(&Machine::encode_command(&write)),
                Ok(write)
            );
        }
        for bad in [&[][..], &[9, 1, 1], &[0, 1, 9], &[1]] {
            assert!(Machine::decode_command(&Bytes::copy_from_slice(bad)).is_err());
        }
    }

    #[test]
    fn outcomes_cross_exactly() {
        for outcome in [
            Outcome::Done,
            Outcome::Integer(-3),
            Outcome::Set {
                written: true,
                old: None,
            },
            Outcome::Set {
                written: false,
                old: Some(Bytes::from_static(b"old value")),
            },
            Outcome::Set {
                written: true,
                old: Some(Bytes::new()),
            },
            Outcome::Error("WRONGTYPE no".into()),
            Outcome::Value(None),
            Outcome::Value(Some(Bytes::new())),
            Outcome::Value(Some(Bytes::from_static(b"v"))),
            Outcome::Transaction(None),
            Outcome::Transaction(Some(vec![
                Reply::OK,
                Reply::Simple("QUEUED"),
                Reply::Null,
                Reply::Integer(-1),
                Reply::bulk("x"),
                Reply::Error("WRONGTYPE no".into()),
                Reply::Array(vec![Reply::bulk("a")]),
                Reply::Map(vec![(Reply::bulk("f"), Reply::bulk("v"))]),
            ])),
        ] {
            assert_eq!(decode_outcome(&encode_outcome(&outcome)), Ok(outcome));
        }
        let bad: [&[u8]; 7] = [
            b"",
            b"\x01",
            b"\x01\x02",
            b"\x03\x01",
            b"\x04\x00",
            b"\x09",
            b"\x06\x00",
        ];
        for bad in bad {
            assert!(
                decode_outcome(&Bytes::copy_from_slice(bad)).is_err(),
                "{bad:?}"
            );
        }
    }

    /// A look that finds nothing due leaves the next one at the first
    /// entry not yet due (not at the index's head, where every replaced
    /// entry's tombstone would be walked again); an expiry written before
    /// it sends the next look back to the head.
    #[test]
    fn housekeeping_looks_start_at_the_first_entry_not_yet_due() {
        use crate::kv::record::expiry_key;
        use crate::kv::tests::{TempStore, entry};

        const T0: u64 = 1_700_000_000_000;
        let mut temp = TempStore::new("housekeeping-jump");
        let store = temp.store();
        let wall = WallClock::new(T0);
        let mut machine = Machine::new(store, Arc::new(StatusBoard::new(1, 7)), wall).unwrap();
        let set = |key: &str, at: u64| WriteOp::Set {
            key: Bytes::from(key.to_string()),
            value: Bytes::from_static(b"v"),
            condition: SetCondition::Always,
            ttl: Ttl::At(at as i64),
            get: false,
        };
        let mut index = 0;
        let mut apply = |machine: &mut Machine, store: &mut RocksStorage, op| {
            index += 1;
            machine
                .apply(store, &[entry(index, T0, op)], None, &|_| None)
                .unwrap();
        };
        for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
            apply(&mut machine, store, set(key, T0 + 1000 + 10 * i as u64));
        }
        // Nothing due: the look ends at a's entry.
        assert_eq!(machine.housekeeping(store, Duration::ZERO), None);
        assert_eq!(machine.reap_from, expiry_key(T0 + 1000, b"a"));
        // a moves later: the next look steps over its old entry to b's.
        apply(&mut machine, store, set("a", T0 + 5000));
        assert_eq!(machine.housekeeping(store, Duration::ZERO), None);
        assert_eq!(machine.reap_from, expiry_key(T0 + 1010, b"b"));
        // z expires before b: the next look starts at the head.
        apply(&mut machine, store, set("z", T0 + 500));
        assert_eq!(machine.housekeeping(store, Duration::ZERO), None);
        assert_eq!(machine.reap_from, expiry_key(T0 + 500, b"z"));
        // Past z's and b's times: both found, from where the look starts.
        let due = machine.housekeeping(store, Duration::from_millis(1015));
        let Some(KvWrite {
            op: WriteOp::Reap(keys),
            ..
        }) = due
        else {
            panic!("a reap: {due:?}");
        };
        let names: Vec<_> = keys.iter().map(|(key, _)| key.clone()).collect();
        assert_eq!(names, [Bytes::from_static(b"z"), Bytes::from_static(b"b")]);
    }
}
