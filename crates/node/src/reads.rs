//! Reads of the key-value state as applied: each command of
//! [`ReadOp`], answered as Redis answers it, with keys whose expiry time
//! has passed on the serving node's clock left out; and `SCAN`'s cursors.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use dr_codec::message::NodeId;
use dr_raft::StorageError;
use dr_storage::KeyValue;

use crate::command::{HashPart, HashRead, ReadOp, TtlQuery, TypeFilter};
use crate::glob::glob_match;
use crate::kv::WRONGTYPE;
use crate::kv::record::{self, Kind, Record, USER};
use crate::machine::KvStore;
use crate::resp::Reply;

/// A key's record as read from the store, if it exists at `now_ms`.
pub fn live_record(stored: Option<Vec<u8>>, now_ms: u64) -> Result<Option<Record>, StorageError> {
    let Some(stored) = stored else {
        return Ok(None);
    };
    let record = Record::decode(Bytes::from(stored))?;
    Ok((!record.meta.expired(now_ms)).then_some(record))
}

/// A live string's value, or the `WRONGTYPE` error for another type.
pub fn string_value(record: Option<Record>) -> Result<Option<Bytes>, Reply> {
    match record {
        Some(record) if record.meta.kind != Kind::String => Err(Reply::Error(WRONGTYPE.into())),
        record => Ok(record.map(|r| r.body)),
    }
}

/// Point and range reads of stored keys: a store, or the apply path's
/// batch with its writes so far (a transaction's reads).
pub trait Lookup {
    /// A stored key's value.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Up to `limit` pairs at or after `start`, in key order.
    fn scan(&self, start: &[u8], limit: usize) -> Result<Vec<KeyValue>, StorageError>;
}

impl<S: KvStore> Lookup for S {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        KvStore::get(self, key)
    }

    fn scan(&self, start: &[u8], limit: usize) -> Result<Vec<KeyValue>, StorageError> {
        KvStore::scan(self, start, limit)
    }
}

/// The state as one read sees it: the store, and the time on the
/// serving node.
pub(crate) struct View<'a, S> {
    pub store: &'a S,
    pub now_ms: u64,
    /// The most keys `KEYS` answers (beyond, an error).
    pub keys_max: usize,
    /// Where `RANDOMKEY` starts looking.
    pub random: u64,
}

impl<S: Lookup> View<'_, S> {
    fn record(&self, key: &[u8]) -> Result<Option<Record>, StorageError> {
        live_record(self.store.get(&record::user_key(key))?, self.now_ms)
    }

    fn string(&self, key: &[u8]) -> Result<Result<Option<Bytes>, Reply>, StorageError> {
        Ok(string_value(self.record(key)?))
    }

    /// Serves `op`; `keys` is the key count, `cursors` `SCAN`'s.
    pub(crate) fn serve(
        &self,
        op: &ReadOp,
        keys: u64,
        cursors: &mut ScanCursors,
    ) -> Result<Reply, StorageError> {
        Ok(match op {
            ReadOp::Get(key) => match self.string(key)? {
                Ok(value) => Reply::bulk_or_null(value),
                Err(error) => error,
            },
            ReadOp::GetMany(keys) => Reply::Array(
                keys.iter()
                    .map(|key| {
                        // MGET answers nil for a key of another type.
                        Ok(Reply::bulk_or_null(self.string(key)?.unwrap_or(None)))
                    })
                    .collect::<Result<_, StorageError>>()?,
            ),
            ReadOp::Exists(keys) => {
                let mut present = 0;
                for key in keys {
                    present += i64::from(self.record(key)?.is_some());
                }
                Reply::Integer(present)
            }
            ReadOp::Strlen(key) => match self.string(key)? {
                Ok(value) => Reply::Integer(value.map_or(0, |v| v.len() as i64)),
                Err(error) => error,
            },
            ReadOp::DbSize => Reply::Integer(keys as i64),
            ReadOp::Scan {
                cursor,
                pattern,
                count,
                kind,
            } => self.scan(cursors, *cursor, pattern.as_deref(), *count, *kind)?,
            ReadOp::Ttl { key, query } => {
                let Some(record) = self.record(key)? else {
                    return Ok(Reply::Integer(-2));
                };
                let Some(at) = record.meta.expire_at_ms else {
                    return Ok(Reply::Integer(-1));
                };
                let left = at.saturating_sub(self.now_ms);
                Reply::Integer(match query {
                    TtlQuery::Seconds => (left + 500) / 1000,
                    TtlQuery::Millis => left,
                    TtlQuery::UnixSeconds => at / 1000,
                    TtlQuery::UnixMillis => at,
                } as i64)
            }
            ReadOp::Hash { key, op } => self.hash(key, op, cursors)?,
            ReadOp::GetRange { key, start, end } => match self.string(key)? {
                Ok(value) => Reply::Bulk(range(&value.unwrap_or_default(), *start, *end)),
                Err(error) => error,
            },
            ReadOp::Keys(pattern) => self.keys(pattern)?,
            ReadOp::RandomKey => self.random_key()?,
            ReadOp::Versions(keys) => Reply::Array(
                keys.iter()
                    .map(|key| {
                        let version = self.record(key)?.map_or(0, |r| r.meta.version);
                        Ok(Reply::Integer(version as i64))
                    })
                    .collect::<Result<_, StorageError>>()?,
            ),
            ReadOp::GetOrRefuse { key, error } => match self.string(key)? {
                Ok(None) => Reply::Null,
                Ok(Some(_)) => Reply::Error(error.clone()),
                Err(wrong_type) => wrong_type,
            },
            ReadOp::Type(key) => match self.record(key)? {
                Some(record) => Reply::Simple(record.meta.kind.name()),
                None => Reply::Simple("none"),
            },
        })
    }

    fn hash(
        &self,
        key: &[u8],
        op: &HashRead,
        cursors: &mut ScanCursors,
    ) -> Result<Reply, StorageError> {
        let record = match self.record(key)? {
            Some(record) if record.meta.kind != Kind::Hash => {
                return Ok(Reply::Error(WRONGTYPE.into()));
            }
            record => record,
        };
        let field = |name: &[u8]| -> Result<Option<Vec<u8>>, StorageError> {
            if record.is_none() {
                return Ok(None);
            }
            self.store.get(&record::field_key(key, name))
        };
        Ok(match op {
            HashRead::Get(name) => Reply::bulk_or_null(field(name)?),
            HashRead::GetMany(names) => Reply::Array(
                names
                    .iter()
                    .map(|name| Ok(Reply::bulk_or_null(field(name)?)))
                    .collect::<Result<_, StorageError>>()?,
            ),
            HashRead::Len => Reply::Integer(record.map_or(0, |r| r.field_count()) as i64),
            HashRead::Exists(name) => Reply::Integer(i64::from(field(name)?.is_some())),
            HashRead::Strlen(name) => Reply::Integer(field(name)?.map_or(0, |v| v.len()) as i64),
            HashRead::All(part) => {
                if record
                    .as_ref()
                    .is_some_and(|r| r.field_count() > HASH_READ_FIELDS_MAX as u64)
                {
                    return Ok(Reply::err(format!(
                        "the hash has more than {HASH_READ_FIELDS_MAX} fields; read it with HSCAN"
                    )));
                }
                let prefix = record::field_prefix(key);
                let mut items = Vec::new();
                let mut pairs = Vec::new();
                if record.is_some() {
                    for (stored, value) in self.fields(&prefix, &prefix, HASH_READ_FIELDS_MAX)? {
                        let name = Bytes::copy_from_slice(&stored[prefix.len()..]);
                        match part {
                            HashPart::Fields => items.push(Reply::Bulk(name)),
                            HashPart::Values => items.push(Reply::Bulk(value.into())),
                            HashPart::Both => {
                                pairs.push((Reply::Bulk(name), Reply::Bulk(value.into())))
                            }
                        }
                    }
                }
                // A map in RESP3 (a flat array in RESP2), as Redis answers.
                if *part == HashPart::Both {
                    Reply::Map(pairs)
                } else {
                    Reply::Array(items)
                }
            }
            HashRead::Scan {
                cursor,
                pattern,
                count,
            } => {
                let prefix = record::field_prefix(key);
                let start = match *cursor {
                    0 => prefix.clone(),
                    cursor => match cursors.positions.remove(&cursor) {
                        Some(next) if next.starts_with(&prefix) => next.to_vec(),
                        _ => return Ok(Reply::err("invalid cursor (unknown here, or expired)")),
                    },
                };
                let mut page = if record.is_some() {
                    self.fields(&prefix, &start, count + 1)?
                } else {
                    Vec::new()
                };
                let next = if page.len() > *count {
                    let (next_field, _) = page.pop().expect("more than count fields");
                    cursors.save(Bytes::from(next_field))
                } else {
                    0
                };
                let mut items = Vec::with_capacity(page.len() * 2);
                for (stored, value) in page {
                    let name = Bytes::copy_from_slice(&stored[prefix.len()..]);
                    if pattern.as_deref().is_none_or(|p| glob_match(p, &name)) {
                        items.push(Reply::Bulk(name));
                        items.push(Reply::Bulk(value.into()));
                    }
                }
                Reply::Array(vec![Reply::bulk(next.to_string()), Reply::Array(items)])
            }
        })
    }

    /// Every live key matching `pattern`, in key order: an error past
    /// `keys_max` keys looked at (a page of `SCAN` at a time is the way
    /// through a large keyspace).
    fn keys(&self, pattern: &[u8]) -> Result<Reply, StorageError> {
        let mut start = vec![USER];
        let mut found = Vec::new();
        let mut looked = 0;
        loop {
            let page = self.store.scan(&start, KEY_PAGE)?;
            let full = page.len() == KEY_PAGE;
            let mut last = None;
            for (stored, value) in page
                .into_iter()
                .take_while(|(s, _)| s.first() == Some(&USER))
            {
                looked += 1;
                if looked > self.keys_max {
                    return Ok(Reply::err(format!(
                        "KEYS would look at more than {} keys (keys_max); use SCAN",
                        self.keys_max
                    )));
                }
                if live_record(Some(value), self.now_ms)?.is_some()
                    && glob_match(pattern, &stored[1..])
                {
                    found.push(Reply::Bulk(Bytes::copy_from_slice(&stored[1..])));
                }
                last = Some(stored);
            }
            match last {
                Some(mut next) if full => {
                    next.push(0);
                    start = next;
                }
                _ => return Ok(Reply::Array(found)),
            }
        }
    }

    /// A live key, chosen uniformly when the key space fits one page;
    /// else uniformly among a page of keys from a random point of the key
    /// space (wrapping around to its start).
    fn random_key(&self) -> Result<Reply, StorageError> {
        let mut point = vec![USER];
        point.extend_from_slice(&self.random.to_be_bytes());
        let first = self.live_keys(&[USER])?;
        let candidates = if first.len() < KEY_PAGE {
            first
        } else {
            match self.live_keys(&point)? {
                keys if keys.is_empty() => first,
                keys => keys,
            }
        };
        if candidates.is_empty() {
            return Ok(Reply::Null);
        }
        let pick = (self.random >> 17) as usize % candidates.len();
        Ok(Reply::Bulk(candidates[pick].clone()))
    }

    /// The live keys of one page from `start`.
    fn live_keys(&self, start: &[u8]) -> Result<Vec<Bytes>, StorageError> {
        let mut keys = Vec::new();
        let page = self.store.scan(start, KEY_PAGE)?;
        for (stored, value) in page
            .into_iter()
            .take_while(|(s, _)| s.first() == Some(&USER))
        {
            if live_record(Some(value), self.now_ms)?.is_some() {
                keys.push(Bytes::copy_from_slice(&stored[1..]));
            }
        }
        Ok(keys)
    }

    /// Up to `limit` fields under `prefix`, from `start` on.
    fn fields(
        &self,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        let mut found = Vec::new();
        let mut from = start.to_vec();
        while found.len() < limit {
            let want = (limit - found.len()).min(FIELD_PAGE);
            let page = self.store.scan(&from, want)?;
            let full = page.len() == want;
            let before = found.len();
            found.extend(
                page.into_iter()
                    .take_while(|(stored, _)| stored.starts_with(prefix)),
            );
            if !full || found.len() - before < want {
                break;
            }
            from = found.last().expect("a full page").0.clone();
            from.push(0);
        }
        Ok(found)
    }

    fn scan(
        &self,
        cursors: &mut ScanCursors,
        cursor: u64,
        pattern: Option<&[u8]>,
        count: usize,
        kind: Option<TypeFilter>,
    ) -> Result<Reply, StorageError> {
        let start = if cursor == 0 {
            vec![USER]
        } else {
            match cursors.positions.remove(&cursor) {
                Some(next) if next.first() == Some(&USER) => next.to_vec(),
                _ => return Ok(Reply::err("invalid cursor (unknown here, or expired)")),
            }
        };
        let mut page: Vec<(Bytes, Vec<u8>)> = self
            .store
            .scan(&start, count + 1)?
            .into_iter()
            .take_while(|(key, _)| key.first() == Some(&USER))
            .map(|(key, value)| (Bytes::from(key), value))
            .collect();
        let next = if page.len() > count {
            let (next_key, _) = page.pop().expect("more than count keys");
            cursors.save(next_key)
        } else {
            0
        };
        let mut keys = Vec::with_capacity(page.len());
        for (stored, value) in page {
            let key = stored.slice(1..);
            let Some(record) = live_record(Some(value), self.now_ms)? else {
                continue;
            };
            let kind_matches = match kind {
                None => true,
                Some(TypeFilter::Kind(kind)) => record.meta.kind == kind,
                Some(TypeFilter::Other) => false,
            };
            if kind_matches && pattern.is_none_or(|p| glob_match(p, &key)) {
                keys.push(Reply::Bulk(key));
            }
        }
        Ok(Reply::Array(vec![
            Reply::bulk(next.to_string()),
            Reply::Array(keys),
        ]))
    }
}

/// `GETRANGE`'s bytes of `value`, as Redis counts `start` and `end`.
fn range(value: &[u8], start: i64, end: i64) -> Bytes {
    let len = value.len() as i64;
    if len == 0 || (start < 0 && end < 0 && start > end) {
        return Bytes::new();
    }
    let start = if start < 0 {
        (len + start).max(0)
    } else {
        start
    };
    let end = if end < 0 {
        (len + end).max(0)
    } else {
        end.min(len - 1)
    };
    if start > end {
        return Bytes::new();
    }
    Bytes::copy_from_slice(&value[start as usize..=end as usize])
}

/// Keys read from the store per page (`KEYS`, `RANDOMKEY`).
const KEY_PAGE: usize = 1024;

/// Fields `HGETALL`, `HKEYS` and `HVALS` answer at most (beyond, `HSCAN`).
pub const HASH_READ_FIELDS_MAX: usize = 1 << 20;
/// Fields read from the store per page.
const FIELD_PAGE: usize = 1024;

/// Server-side `SCAN` and `HSCAN` cursors: cursor number → the stored key
/// to go on from, the oldest forgotten first.
#[derive(Debug)]
pub(crate) struct ScanCursors {
    next: u64,
    positions: HashMap<u64, Bytes>,
    order: VecDeque<u64>,
}

const SCAN_CURSORS_MAX: usize = 16 << 10;

impl ScanCursors {
    pub(crate) fn new(node: NodeId) -> Self {
        // Different nodes hand out different numbers, so a cursor taken
        // to another node is refused rather than misread.
        Self {
            next: (node << 40) | 1,
            positions: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn save(&mut self, next_key: Bytes) -> u64 {
        let cursor = self.next;
        self.next += 1;
        if self.order.len() == SCAN_CURSORS_MAX
            && let Some(oldest) = self.order.pop_front()
        {
            self.positions.remove(&oldest);
        }
        self.positions.insert(cursor, next_key);
        self.order.push_back(cursor);
        cursor
    }
}
