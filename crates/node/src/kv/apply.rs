//! The deterministic apply path: committed entries' commands applied in
//! one atomic storage batch, each seeing the earlier ones' writes.
//!
//! "Now" for an entry is the state's clock: the largest leader time
//! stamped on any entry applied so far (it never goes back, whichever
//! leader proposed). Keys whose expiry time is at or before it are gone
//! for every command of the entry, and are removed as they are met
//! (lazily, as Redis does), so every node removes them at the same entry.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use dr_codec::message::{ConfState, Entry, EntryKind, LogIndex, Term};
use dr_raft::StorageError;
use dr_storage::DataWrite;

use super::long_double::LongDouble;
use super::op::{DecodeError, ExpireCondition, SetCondition, Stamped, Ttl, WriteOp};
use super::presence::PresenceCache;
use super::record::{self, CLIENT_END, Kind, Meta, Record, USER};
use super::{CLOCK, KEY_COUNT, Outcome, VALUE_BYTES_MAX, WRONGTYPE, member_key, parse_integer};
use crate::command::{self, Command};
use crate::machine::KvStore;
use crate::reads::{Lookup, ScanCursors, View};
use crate::resp::Reply;
use dr_storage::KeyValue;

/// What the apply path keeps between batches (so no apply reads it back).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Client keys.
    pub keys: u64,
    /// The state's clock: the latest leader time applied (Unix ms).
    pub clock_ms: u64,
    /// The earliest time written into the expiry index since the
    /// housekeeping last looked from the index's head (not part of the
    /// state: `None` on open, when the housekeeping starts at the head).
    pub earliest_expiry_written_ms: Option<u64>,
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

/// Applies committed entries in one atomic storage batch (with the new
/// applied index and configuration) and returns each entry's outcome.
/// Later entries of the batch see the earlier ones' writes. `tally` is
/// the count and clock before, and after. `wants_old(index)`: whether the
/// outcome of the entry at `index` must be complete (`SET ... GET`,
/// `GETSET`: the old value; `EXEC`: its reads' replies), because a client
/// waits on this node for it; other writes read only their key's header,
/// which `presence` often knows. `keys_max` bounds a `KEYS` in `EXEC`.
pub fn apply_entries<S: KvStore>(
    store: &mut S,
    entries: &[Entry],
    conf_state: Option<&ConfState>,
    tally: &mut Tally,
    presence: &mut PresenceCache,
    wants_old: impl Fn(LogIndex) -> bool,
    keys_max: usize,
) -> Result<Vec<Applied>, StorageError> {
    let Some(last) = entries.last() else {
        return Ok(Vec::new());
    };
    let mut batch = ApplyBatch::new(store, *tally, &mut *presence, entries.len());
    batch.keys_max = keys_max;
    let mut applied = Vec::with_capacity(entries.len());
    for entry in entries {
        let mut member_changed = false;
        let outcome = match entry.kind {
            EntryKind::Normal => match Stamped::decode(&entry.payload) {
                Ok(Stamped { now_ms, op }) => {
                    member_changed = matches!(op, WriteOp::Member { .. });
                    batch.begin(entry.index, now_ms);
                    batch.apply(op, wants_old(entry.index))?
                }
                Err(DecodeError(error)) => {
                    tracing::error!(index = entry.index, %error, "a log entry is not a command; skipped");
                    Outcome::Error(format!("ERR undecodable command: {error}"))
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
    let after = batch.tally;
    let flushed = batch.flushed;
    let writes = batch.into_writes();
    let client_range = ([USER], [CLIENT_END]);
    let mut data_writes: Vec<DataWrite<'_>> = Vec::with_capacity(writes.len() + 1);
    if flushed {
        data_writes.push(DataWrite::DeleteRange(&client_range.0, &client_range.1));
    }
    data_writes.extend(writes.iter().map(|(key, value)| match value {
        Some(value) => DataWrite::Put(key, value),
        None => DataWrite::Delete(key),
    }));
    store.apply(&data_writes, last.index, conf_state)?;
    // Stored: from now on the cache may say so.
    if flushed {
        // The keyspace is now the batch's keys after the flush, which the
        // loop below records: the cache will know every key.
        presence.clear();
        presence.knows_every_key();
    }
    for (key, value) in writes.iter().filter(|(key, _)| key.first() == Some(&USER)) {
        let meta = value
            .as_deref()
            .map(Record::decode_meta)
            .transpose()
            .expect("the apply path writes well-formed records");
        presence.record(key, meta);
    }
    *tally = after;
    Ok(applied)
}

/// When a resolved time to live says a key goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Deadline {
    Never,
    At(u64),
    /// At or before now: the key goes at once.
    Passed,
}

impl Deadline {
    fn expire_at_ms(self) -> Option<u64> {
        match self {
            Self::At(at) => Some(at),
            Self::Never | Self::Passed => None,
        }
    }
}

/// The writes of one batch of entries, kept in memory until the batch is
/// written, so later entries read what earlier ones wrote.
struct ApplyBatch<'a, S> {
    store: &'a S,
    presence: &'a mut PresenceCache,
    pending: HashMap<Vec<u8>, Option<Bytes>>,
    tally: Tally,
    /// The entry being applied: the version its writes give their keys.
    index: LogIndex,
    /// Whether the batch wrote a client key (the only way the count
    /// moves): then the count is written, even if it ended where it
    /// began, so the stored state depends on the entries applied, never
    /// on how they were batched.
    wrote_client_key: bool,
    /// Whether the clock moved (then it is written).
    clock_moved: bool,
    /// A flush emptied the keyspace: what the store holds of it is gone.
    flushed: bool,
    /// The most keys a `KEYS` in a transaction looks at.
    keys_max: usize,
}

/// The most keys an apply batch makes room for before it starts.
const PENDING_RESERVE_MAX: usize = 4096;

fn wrong_type() -> Outcome {
    Outcome::Error(WRONGTYPE.into())
}

impl<'a, S: KvStore> ApplyBatch<'a, S> {
    /// A batch for `entries` entries: room for a key written by each and
    /// the count and clock, so that the usual batch never rehashes (the
    /// keys an entry writes beyond one grow the map as usual).
    fn new(store: &'a S, tally: Tally, presence: &'a mut PresenceCache, entries: usize) -> Self {
        Self {
            store,
            presence,
            pending: HashMap::with_capacity(entries.min(PENDING_RESERVE_MAX) + 2),
            tally,
            index: 0,
            wrote_client_key: false,
            clock_moved: false,
            flushed: false,
            keys_max: crate::machine::KEYS_MAX_DEFAULT,
        }
    }

    fn begin(&mut self, index: LogIndex, now_ms: u64) {
        self.index = index;
        if now_ms > self.tally.clock_ms {
            self.tally.clock_ms = now_ms;
            self.clock_moved = true;
        }
    }

    /// A stored key's bytes as of this point of the batch.
    fn stored(&self, stored_key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        if let Some(value) = self.pending.get(stored_key) {
            return Ok(value.clone());
        }
        if self.flushed && is_client(stored_key) {
            return Ok(None);
        }
        // A client key the presence cache knows absent (or, knowing every
        // key, does not hold) needs no store read either.
        if stored_key.first() == Some(&USER) && matches!(self.presence.get(stored_key), Some(None))
        {
            return Ok(None);
        }
        Ok(self.store.get(stored_key)?.map(Bytes::from))
    }

    /// A key's header, expired or not.
    fn meta(&mut self, key: &[u8]) -> Result<Option<Meta>, StorageError> {
        let stored_key = record::user_key(key);
        if let Some(value) = self.pending.get(&stored_key) {
            return value.as_deref().map(Record::decode_meta).transpose();
        }
        if self.flushed {
            return Ok(None);
        }
        if let Some(known) = self.presence.get(&stored_key) {
            return Ok(known);
        }
        let meta = self
            .store
            .get(&stored_key)?
            .as_deref()
            .map(Record::decode_meta)
            .transpose()?;
        self.presence.record(&stored_key, meta);
        Ok(meta)
    }

    /// A key's header, if it exists now (an expired key is removed).
    fn live_meta(&mut self, key: &[u8]) -> Result<Option<Meta>, StorageError> {
        match self.meta(key)? {
            Some(meta) if meta.expired(self.tally.clock_ms) => {
                self.remove(key, meta)?;
                Ok(None)
            }
            meta => Ok(meta),
        }
    }

    /// A key's record, if it exists now (an expired key is removed).
    fn live_record(&mut self, key: &[u8]) -> Result<Option<Record>, StorageError> {
        let Some(stored) = self.stored(&record::user_key(key))? else {
            return Ok(None);
        };
        let record = Record::decode(stored)?;
        if record.meta.expired(self.tally.clock_ms) {
            self.remove(key, record.meta)?;
            return Ok(None);
        }
        Ok(Some(record))
    }

    /// A live string's value; `Err(outcome)` for another type.
    fn live_string(&mut self, key: &[u8]) -> Result<Result<Option<Record>, Outcome>, StorageError> {
        Ok(match self.live_record(key)? {
            Some(record) if record.meta.kind != Kind::String => Err(wrong_type()),
            record => Ok(record),
        })
    }

    fn deadline(&self, ttl: Ttl, old: Option<&Meta>) -> Deadline {
        let now = i128::from(self.tally.clock_ms);
        let at = match ttl {
            Ttl::Keep => {
                return old
                    .and_then(|m| m.expire_at_ms)
                    .map_or(Deadline::Never, Deadline::At);
            }
            Ttl::Clear => return Deadline::Never,
            Ttl::In(ms) => now + i128::from(ms),
            Ttl::At(ms) => i128::from(ms),
        };
        if at <= now {
            Deadline::Passed
        } else {
            Deadline::At(u64::try_from(at).unwrap_or(u64::MAX))
        }
    }

    /// Writes a key's record (replacing `old`, its header if it exists),
    /// keeping the count and the expiry index; a hash replaced by a
    /// string loses its fields.
    fn put(
        &mut self,
        key: &[u8],
        old: Option<Meta>,
        kind: Kind,
        expire_at_ms: Option<u64>,
        body: &[u8],
    ) -> Result<(), StorageError> {
        match old {
            None => self.tally.keys += 1,
            Some(old) => {
                if old.kind == Kind::Hash && kind != Kind::Hash {
                    self.remove_fields(key)?;
                }
                if let Some(at) = old.expire_at_ms.filter(|&at| Some(at) != expire_at_ms) {
                    self.pending.insert(record::expiry_key(at, key), None);
                }
            }
        }
        if let Some(at) = expire_at_ms.filter(|&at| old.and_then(|m| m.expire_at_ms) != Some(at)) {
            self.pending
                .insert(record::expiry_key(at, key), Some(Bytes::new()));
            let earliest = &mut self.tally.earliest_expiry_written_ms;
            *earliest = Some(earliest.map_or(at, |earliest| earliest.min(at)));
        }
        let meta = Meta {
            kind,
            version: self.index,
            expire_at_ms,
        };
        self.pending
            .insert(record::user_key(key), Some(Record::encode(&meta, body)));
        self.wrote_client_key = true;
        Ok(())
    }

    /// Removes an existing key (header `old`) with its fields and its
    /// place in the expiry index.
    fn remove(&mut self, key: &[u8], old: Meta) -> Result<(), StorageError> {
        self.tally.keys -= 1;
        if old.kind == Kind::Hash {
            self.remove_fields(key)?;
        }
        if let Some(at) = old.expire_at_ms {
            self.pending.insert(record::expiry_key(at, key), None);
        }
        self.pending.insert(record::user_key(key), None);
        self.wrote_client_key = true;
        Ok(())
    }

    fn remove_fields(&mut self, key: &[u8]) -> Result<(), StorageError> {
        for (field, _) in self.fields_of(key)? {
            self.pending.insert(record::field_key(key, &field), None);
        }
        Ok(())
    }

    fn apply(&mut self, op: WriteOp, wants_old: bool) -> Result<Outcome, StorageError> {
        Ok(match op {
            WriteOp::Set {
                key,
                value,
                condition,
                ttl,
                get,
            } => self.set(&key, value, condition, ttl, get, wants_old)?,
            WriteOp::Delete(keys) => {
                let mut removed = 0;
                for key in keys {
                    if let Some(meta) = self.live_meta(&key)? {
                        self.remove(&key, meta)?;
                        removed += 1;
                    }
                }
                Outcome::Integer(removed)
            }
            WriteOp::SetMany(pairs) => {
                for (key, value) in pairs {
                    let old = self.live_meta(&key)?;
                    self.put(&key, old, Kind::String, None, &value)?;
                }
                Outcome::Done
            }
            WriteOp::IncrementBy { key, delta } => self.increment(&key, delta)?,
            WriteOp::Append { key, value } => {
                let old = match self.live_string(&key)? {
                    Ok(old) => old,
                    Err(outcome) => return Ok(outcome),
                };
                let old_len = old.as_ref().map_or(0, |r| r.body.len());
                if old_len + value.len() > VALUE_BYTES_MAX {
                    return Ok(Outcome::Error(
                        "ERR string exceeds maximum allowed size (proto-max-bulk-len)".into(),
                    ));
                }
                let mut joined = BytesMut::with_capacity(old_len + value.len());
                joined.extend_from_slice(old.as_ref().map_or(&[][..], |r| &r.body));
                joined.extend_from_slice(&value);
                let meta = old.map(|r| r.meta);
                let at = meta.and_then(|m| m.expire_at_ms);
                self.put(&key, meta, Kind::String, at, &joined)?;
                Outcome::Integer(joined.len() as i64)
            }
            WriteOp::CompareAndSet { key, expected, new } => {
                let old = match self.live_string(&key)? {
                    Ok(old) => old,
                    Err(outcome) => return Ok(outcome),
                };
                let matches = match &old {
                    None => expected.is_empty(),
                    Some(record) => record.body == expected && !expected.is_empty(),
                };
                if matches {
                    self.put(&key, old.map(|r| r.meta), Kind::String, None, &new)?;
                }
                Outcome::Integer(i64::from(matches))
            }
            WriteOp::Member { id, addrs } => {
                let json = serde_json::to_vec(&addrs).expect("addresses serialize");
                self.pending.insert(member_key(id), Some(json.into()));
                Outcome::Done
            }
            WriteOp::Expire {
                key,
                ttl,
                condition,
            } => self.expire(&key, ttl, condition)?,
            WriteOp::Persist(key) => match self.live_record(&key)? {
                Some(record) if record.meta.expire_at_ms.is_some() => {
                    self.put(
                        &key,
                        Some(record.meta),
                        record.meta.kind,
                        None,
                        &record.body,
                    )?;
                    Outcome::Integer(1)
                }
                _ => Outcome::Integer(0),
            },
            WriteOp::GetEx { key, ttl } => {
                let record = match self.live_string(&key)? {
                    Ok(Some(record)) => record,
                    Ok(None) => return Ok(Outcome::Value(None)),
                    Err(outcome) => return Ok(outcome),
                };
                let changes = match ttl {
                    Ttl::Keep => false,
                    Ttl::Clear => record.meta.expire_at_ms.is_some(),
                    Ttl::In(_) | Ttl::At(_) => true,
                };
                if changes {
                    match self.deadline(ttl, Some(&record.meta)) {
                        Deadline::Passed => self.remove(&key, record.meta)?,
                        deadline => self.put(
                            &key,
                            Some(record.meta),
                            Kind::String,
                            deadline.expire_at_ms(),
                            &record.body,
                        )?,
                    }
                }
                Outcome::Value(Some(record.body))
            }
            WriteOp::GetDel(key) => match self.live_string(&key)? {
                Ok(Some(record)) => {
                    self.remove(&key, record.meta)?;
                    Outcome::Value(Some(record.body))
                }
                Ok(None) => Outcome::Value(None),
                Err(outcome) => outcome,
            },
            WriteOp::Reap(keys) => {
                let mut removed = 0;
                for (key, at) in keys {
                    match self.meta(&key)? {
                        Some(meta)
                            if meta.expire_at_ms == Some(at)
                                && meta.expired(self.tally.clock_ms) =>
                        {
                            self.remove(&key, meta)?;
                            removed += 1;
                        }
                        _ => {}
                    }
                }
                Outcome::Integer(removed)
            }
            WriteOp::HashSet {
                key,
                pairs,
                if_absent,
            } => self.hash_set(&key, &pairs, if_absent)?,
            WriteOp::HashDelete { key, fields } => self.hash_delete(&key, &fields)?,
            WriteOp::HashIncrementBy { key, field, delta } => {
                self.hash_increment(&key, &field, delta)?
            }
            WriteOp::HashIncrementByFloat { key, field, delta } => {
                self.hash_increment_float(&key, &field, &delta)?
            }
            WriteOp::SetRange { key, offset, value } => self.set_range(&key, offset, &value)?,
            WriteOp::SetManyIfNone(pairs) => {
                for (key, _) in &pairs {
                    if self.live_meta(key)?.is_some() {
                        return Ok(Outcome::Integer(0));
                    }
                }
                for (key, value) in pairs {
                    let old = self.live_meta(&key)?;
                    self.put(&key, old, Kind::String, None, &value)?;
                }
                Outcome::Integer(1)
            }
            WriteOp::Rename {
                from,
                to,
                if_absent,
            } => {
                let Some(record) = self.live_record(&from)? else {
                    return Ok(Outcome::Error("ERR no such key".into()));
                };
                let done = || {
                    if if_absent {
                        Outcome::Integer(1)
                    } else {
                        Outcome::Done
                    }
                };
                if from == to {
                    return Ok(if if_absent {
                        Outcome::Integer(0)
                    } else {
                        done()
                    });
                }
                let existing = self.live_meta(&to)?;
                if if_absent && existing.is_some() {
                    return Ok(Outcome::Integer(0));
                }
                self.copy_key(&from, &record, &to, existing)?;
                self.remove(&from, record.meta)?;
                done()
            }
            WriteOp::Copy { from, to, replace } => {
                if from == to {
                    return Ok(Outcome::Error(
                        "ERR source and destination objects are the same".into(),
                    ));
                }
                let Some(record) = self.live_record(&from)? else {
                    return Ok(Outcome::Integer(0));
                };
                let existing = self.live_meta(&to)?;
                if existing.is_some() && !replace {
                    return Ok(Outcome::Integer(0));
                }
                self.copy_key(&from, &record, &to, existing)?;
                Outcome::Integer(1)
            }
            WriteOp::IncrementByFloat { key, delta } => self.increment_float(&key, &delta)?,
            WriteOp::Transaction { watched, commands } => {
                self.transaction(&watched, &commands, wants_old)?
            }
            WriteOp::Flush => {
                self.pending.retain(|stored, _| !is_client(stored));
                self.flushed = true;
                self.tally.keys = 0;
                self.wrote_client_key = true;
                Outcome::Done
            }
        })
    }

    fn set(
        &mut self,
        key: &[u8],
        value: Bytes,
        condition: SetCondition,
        ttl: Ttl,
        check_type: bool,
        wants_old: bool,
    ) -> Result<Outcome, StorageError> {
        let (old_meta, old_value) = if wants_old {
            match self.live_record(key)? {
                Some(record) if record.meta.kind != Kind::String && check_type => {
                    return Ok(wrong_type());
                }
                Some(record) if record.meta.kind != Kind::String => (Some(record.meta), None),
                Some(record) => (Some(record.meta), Some(record.body)),
                None => (None, None),
            }
        } else {
            let meta = self.live_meta(key)?;
            if check_type && meta.is_some_and(|m| m.kind != Kind::String) {
                return Ok(wrong_type());
            }
            (meta, None)
        };
        let written = match condition {
            SetCondition::Always => true,
            SetCondition::IfAbsent => old_meta.is_none(),
            SetCondition::IfPresent => old_meta.is_some(),
        };
        if written {
            match self.deadline(ttl, old_meta.as_ref()) {
                Deadline::Passed => {
                    if let Some(old) = old_meta {
                        self.remove(key, old)?;
                    }
                }
                deadline => {
                    self.put(key, old_meta, Kind::String, deadline.expire_at_ms(), &value)?;
                }
            }
        }
        Ok(Outcome::Set {
            written,
            old: old_value,
        })
    }

    fn expire(
        &mut self,
        key: &[u8],
        ttl: Ttl,
        condition: ExpireCondition,
    ) -> Result<Outcome, StorageError> {
        let Some(record) = self.live_record(key)? else {
            return Ok(Outcome::Integer(0));
        };
        let deadline = self.deadline(ttl, Some(&record.meta));
        // A key without an expiry counts as expiring never; a deadline
        // passed, as the earliest time.
        let current = record.meta.expire_at_ms;
        let new_at = match deadline {
            Deadline::Passed => 0,
            Deadline::At(at) => at,
            Deadline::Never => u64::MAX,
        };
        let allowed = (!condition.if_none || current.is_none())
            && (!condition.if_some || current.is_some())
            && (!condition.if_later || current.is_some_and(|at| new_at > at))
            && (!condition.if_earlier || current.is_none_or(|at| new_at < at));
        if !allowed {
            return Ok(Outcome::Integer(0));
        }
        match deadline {
            Deadline::Passed => self.remove(key, record.meta)?,
            deadline => self.put(
                key,
                Some(record.meta),
                record.meta.kind,
                deadline.expire_at_ms(),
                &record.body,
            )?,
        }
        Ok(Outcome::Integer(1))
    }

    /// `EXEC`: nothing if a watched key's version moved; else each
    /// command parsed again at the entry's time and run here, reads on the
    /// batch so far (only when a client here waits: a read changes
    /// nothing).
    fn transaction(
        &mut self,
        watched: &[(Bytes, u64)],
        commands: &[Vec<Bytes>],
        wants_replies: bool,
    ) -> Result<Outcome, StorageError> {
        for (key, version) in watched {
            let now = self.live_meta(key)?.map_or(0, |meta| meta.version);
            if now != *version {
                return Ok(Outcome::Transaction(None));
            }
        }
        let mut replies = Vec::with_capacity(commands.len());
        // A cursor a SCAN in a transaction hands out is not kept.
        let mut cursors = ScanCursors::new(0);
        for arguments in commands {
            let reply = match command::parse_at(arguments, self.tally.clock_ms) {
                Ok(Command::Write { op, shape }) => {
                    if matches!(op, WriteOp::Transaction { .. } | WriteOp::Member { .. }) {
                        Reply::err("internal: not a command of a transaction")
                    } else {
                        command::write_reply(shape, self.apply(op, wants_replies)?)
                    }
                }
                Ok(Command::Read(op)) if wants_replies => {
                    let view = View {
                        store: &*self,
                        now_ms: self.tally.clock_ms,
                        keys_max: self.keys_max,
                        random: self.index,
                    };
                    view.serve(&op, self.tally.keys, &mut cursors)?
                }
                Ok(Command::Read(_)) => Reply::Null,
                // The connection keeps connection commands out.
                Ok(_) => Reply::err("internal: not a command of a transaction"),
                Err(reply) => reply,
            };
            replies.push(reply);
        }
        Ok(Outcome::Transaction(Some(replies)))
    }

    fn set_range(
        &mut self,
        key: &[u8],
        offset: u64,
        value: &[u8],
    ) -> Result<Outcome, StorageError> {
        let old = match self.live_string(key)? {
            Ok(old) => old,
            Err(outcome) => return Ok(outcome),
        };
        let old_len = old.as_ref().map_or(0, |r| r.body.len());
        if value.is_empty() {
            return Ok(Outcome::Integer(old_len as i64));
        }
        let end = usize::try_from(offset)
            .ok()
            .and_then(|offset| offset.checked_add(value.len()))
            .filter(|&end| end <= VALUE_BYTES_MAX);
        let Some(end) = end else {
            return Ok(Outcome::Error(
                "ERR string exceeds maximum allowed size (proto-max-bulk-len)".into(),
            ));
        };
        let mut new = BytesMut::with_capacity(old_len.max(end));
        new.extend_from_slice(old.as_ref().map_or(&[][..], |r| &r.body));
        if new.len() < end {
            new.resize(end, 0);
        }
        new[end - value.len()..end].copy_from_slice(value);
        let meta = old.map(|r| r.meta);
        let at = meta.and_then(|m| m.expire_at_ms);
        self.put(key, meta, Kind::String, at, &new)?;
        Ok(Outcome::Integer(new.len() as i64))
    }

    fn increment_float(&mut self, key: &[u8], delta: &[u8]) -> Result<Outcome, StorageError> {
        let old = match self.live_string(key)? {
            Ok(old) => old,
            Err(outcome) => return Ok(outcome),
        };
        let not_float = || Outcome::Error("ERR value is not a valid float".into());
        let current = match &old {
            None => LongDouble::ZERO,
            Some(record) => match LongDouble::parse(&record.body) {
                Some(value) => value,
                None => return Ok(not_float()),
            },
        };
        let Some(delta) = LongDouble::parse(delta) else {
            return Ok(not_float());
        };
        let Some(sum) = current.add(&delta).filter(LongDouble::is_finite) else {
            return Ok(Outcome::Error(
                "ERR increment would produce NaN or Infinity".into(),
            ));
        };
        let text = Bytes::from(sum.to_human());
        let meta = old.map(|r| r.meta);
        let at = meta.and_then(|m| m.expire_at_ms);
        self.put(key, meta, Kind::String, at, &text)?;
        Ok(Outcome::Value(Some(text)))
    }

    /// A hash's fields as of this point of the batch (field → value).
    fn fields_of(&self, key: &[u8]) -> Result<Vec<(Vec<u8>, Bytes)>, StorageError> {
        let prefix = record::field_prefix(key);
        let mut fields: std::collections::BTreeMap<Vec<u8>, Option<Bytes>> = Default::default();
        if !self.flushed {
            let mut start = prefix.clone();
            loop {
                let page = self.store.scan(&start, FIELD_PAGE)?;
                let full = page.len() == FIELD_PAGE;
                let mut last = None;
                for (stored, value) in page.into_iter().take_while(|(s, _)| s.starts_with(&prefix))
                {
                    last = Some(stored.clone());
                    fields.insert(stored, Some(Bytes::from(value)));
                }
                match last {
                    Some(mut next) if full => {
                        next.push(0);
                        start = next;
                    }
                    _ => break,
                }
            }
        }
        for (stored, value) in &self.pending {
            if stored.starts_with(&prefix) {
                fields.insert(stored.clone(), value.clone());
            }
        }
        Ok(fields
            .into_iter()
            .filter_map(|(stored, value)| Some((stored[prefix.len()..].to_vec(), value?)))
            .collect())
    }

    /// Writes a copy of the live `record` of `from` (fields, expiry and
    /// all) as `to`, replacing `existing`, `to`'s header if it exists.
    fn copy_key(
        &mut self,
        from: &[u8],
        record: &Record,
        to: &[u8],
        existing: Option<Meta>,
    ) -> Result<(), StorageError> {
        if let Some(existing) = existing {
            self.remove(to, existing)?;
        }
        if record.meta.kind == Kind::Hash {
            for (field, value) in self.fields_of(from)? {
                self.pending
                    .insert(record::field_key(to, &field), Some(value));
            }
        }
        self.put(
            to,
            None,
            record.meta.kind,
            record.meta.expire_at_ms,
            &record.body,
        )
    }

    /// A live hash's record; `Err(outcome)` for another type.
    fn live_hash(&mut self, key: &[u8]) -> Result<Result<Option<Record>, Outcome>, StorageError> {
        Ok(match self.live_record(key)? {
            Some(record) if record.meta.kind != Kind::Hash => Err(wrong_type()),
            record => Ok(record),
        })
    }

    /// Writes a hash's record with `fields` fields (removing it when
    /// none are left), keeping its expiry.
    fn put_hash(&mut self, key: &[u8], old: Option<Meta>, fields: u64) -> Result<(), StorageError> {
        match old {
            Some(old) if fields == 0 => self.remove(key, old),
            None if fields == 0 => Ok(()),
            old => {
                let at = old.and_then(|m| m.expire_at_ms);
                self.put(key, old, Kind::Hash, at, &fields.to_le_bytes())
            }
        }
    }

    fn hash_set(
        &mut self,
        key: &[u8],
        pairs: &[(Bytes, Bytes)],
        if_absent: bool,
    ) -> Result<Outcome, StorageError> {
        let record = match self.live_hash(key)? {
            Ok(record) => record,
            Err(outcome) => return Ok(outcome),
        };
        let mut fields = record.as_ref().map_or(0, Record::field_count);
        let mut added = 0;
        for (field, value) in pairs {
            let stored = record::field_key(key, field);
            // A new hash has no fields stored, only those this command
            // wrote (a field named twice).
            let existed = if record.is_some() {
                self.stored(&stored)?.is_some()
            } else {
                self.pending.get(&stored).is_some_and(Option::is_some)
            };
            if existed && if_absent {
                continue;
            }
            if !existed {
                fields += 1;
                added += 1;
            }
            self.pending.insert(stored, Some(value.clone()));
        }
        if added > 0 || !if_absent {
            self.put_hash(key, record.map(|r| r.meta), fields)?;
        }
        Ok(Outcome::Integer(added))
    }

    fn hash_delete(&mut self, key: &[u8], fields: &[Bytes]) -> Result<Outcome, StorageError> {
        let record = match self.live_hash(key)? {
            Ok(Some(record)) => record,
            Ok(None) => return Ok(Outcome::Integer(0)),
            Err(outcome) => return Ok(outcome),
        };
        let mut count = record.field_count();
        let mut removed = 0;
        for field in fields {
            let stored = record::field_key(key, field);
            if self.stored(&stored)?.is_some() {
                self.pending.insert(stored, None);
                count -= 1;
                removed += 1;
            }
        }
        if removed > 0 {
            self.put_hash(key, Some(record.meta), count)?;
        }
        Ok(Outcome::Integer(removed))
    }

    /// Replaces a hash field's value (absent: `None`) with what `update`
    /// makes of it; `Err(outcome)` when the type or `update` refuses.
    fn update_field(
        &mut self,
        key: &[u8],
        field: &[u8],
        update: impl FnOnce(Option<&Bytes>) -> Result<Bytes, Outcome>,
    ) -> Result<Result<Bytes, Outcome>, StorageError> {
        let record = match self.live_hash(key)? {
            Ok(record) => record,
            Err(outcome) => return Ok(Err(outcome)),
        };
        let stored = record::field_key(key, field);
        let old = match &record {
            Some(_) => self.stored(&stored)?,
            None => None,
        };
        let new = match update(old.as_ref()) {
            Ok(new) => new,
            Err(outcome) => return Ok(Err(outcome)),
        };
        let fields = record.as_ref().map_or(0, Record::field_count) + u64::from(old.is_none());
        self.pending.insert(stored, Some(new.clone()));
        self.put_hash(key, record.map(|r| r.meta), fields)?;
        Ok(Ok(new))
    }

    fn hash_increment(
        &mut self,
        key: &[u8],
        field: &[u8],
        delta: i64,
    ) -> Result<Outcome, StorageError> {
        let mut sum = 0;
        let updated = self.update_field(key, field, |old| {
            let current = match old {
                None => 0,
                Some(value) => parse_integer(value)
                    .ok_or_else(|| Outcome::Error("ERR hash value is not an integer".into()))?,
            };
            sum = current.checked_add(delta).ok_or_else(|| {
                Outcome::Error("ERR increment or decrement would overflow".into())
            })?;
            Ok(Bytes::from(sum.to_string()))
        })?;
        Ok(updated.map_or_else(|refused| refused, |_| Outcome::Integer(sum)))
    }

    fn hash_increment_float(
        &mut self,
        key: &[u8],
        field: &[u8],
        delta: &[u8],
    ) -> Result<Outcome, StorageError> {
        let Some(delta) = LongDouble::parse(delta).filter(LongDouble::is_finite) else {
            return Ok(Outcome::Error("ERR value is not a valid float".into()));
        };
        let updated = self.update_field(key, field, |old| {
            let current = match old {
                None => LongDouble::ZERO,
                Some(value) => LongDouble::parse(value)
                    .ok_or_else(|| Outcome::Error("ERR hash value is not a float".into()))?,
            };
            let sum = current
                .add(&delta)
                .filter(LongDouble::is_finite)
                .ok_or_else(|| {
                    Outcome::Error("ERR increment would produce NaN or Infinity".into())
                })?;
            Ok(Bytes::from(sum.to_human()))
        })?;
        Ok(updated.map_or_else(|refused| refused, |new| Outcome::Value(Some(new))))
    }

    fn increment(&mut self, key: &[u8], delta: i64) -> Result<Outcome, StorageError> {
        let old = match self.live_string(key)? {
            Ok(old) => old,
            Err(outcome) => return Ok(outcome),
        };
        let current = match &old {
            None => 0,
            Some(record) => match parse_integer(&record.body) {
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
        let meta = old.map(|r| r.meta);
        let at = meta.and_then(|m| m.expire_at_ms);
        self.put(key, meta, Kind::String, at, new.to_string().as_bytes())?;
        Ok(Outcome::Integer(new))
    }

    fn into_writes(mut self) -> Vec<(Vec<u8>, Option<Bytes>)> {
        if self.wrote_client_key {
            let count = Bytes::copy_from_slice(&self.tally.keys.to_le_bytes());
            self.pending.insert(KEY_COUNT.to_vec(), Some(count));
        }
        if self.clock_moved {
            let clock = Bytes::copy_from_slice(&self.tally.clock_ms.to_le_bytes());
            self.pending.insert(CLOCK.to_vec(), Some(clock));
        }
        self.pending.into_iter().collect()
    }
}

/// The batch as a transaction's reads see it: the store with the
/// batch's writes over it.
impl<S: KvStore> Lookup for ApplyBatch<'_, S> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.stored(key)?.map(|value| value.to_vec()))
    }

    fn scan(&self, start: &[u8], limit: usize) -> Result<Vec<KeyValue>, StorageError> {
        let mut merged: std::collections::BTreeMap<Vec<u8>, Option<Bytes>> = self
            .pending
            .iter()
            .filter(|(key, _)| key.as_slice() >= start)
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let deleted = merged.values().filter(|value| value.is_none()).count();
        // The store's first `limit + deleted` keys: enough that the first
        // `limit` live keys of the merge all come before its last one.
        if !(self.flushed && is_client(start)) {
            for (key, value) in self.store.scan(start, limit + deleted)? {
                if self.flushed && is_client(&key) {
                    continue;
                }
                merged.entry(key).or_insert(Some(Bytes::from(value)));
            }
        }
        Ok(merged
            .into_iter()
            .filter_map(|(key, value)| Some((key, value?.to_vec())))
            .take(limit)
            .collect())
    }
}

/// Hash fields removed per store page when a hash goes.
const FIELD_PAGE: usize = 1024;

fn is_client(stored_key: &[u8]) -> bool {
    stored_key
        .first()
        .is_some_and(|&namespace| (USER..CLIENT_END).contains(&namespace))
}
