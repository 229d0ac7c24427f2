//! Reads of the key-value state as applied: each command of
//! [`ReadOp`], answered as Redis answers it, with keys whose expiry time
//! has passed on the serving node's clock left out; and `SCAN`'s cursors.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use dr_codec::message::NodeId;
use dr_raft::StorageError;

use crate::command::{ReadOp, TtlQuery, TypeFilter};
use crate::glob::glob_match;
use crate::kv::record::{self, Kind, Record, USER};
use crate::kv::{self, WRONGTYPE};
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

/// The state as one read sees it: the store, and the time on the
/// serving node.
pub(crate) struct View<'a, S> {
    pub store: &'a S,
    pub now_ms: u64,
}

impl<S: KvStore> View<'_, S> {
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
                Some(next) => kv::user_key(&next),
                None => return Ok(Reply::err("invalid cursor (unknown here, or expired)")),
            }
        };
        let mut page: Vec<(Bytes, Vec<u8>)> = self
            .store
            .scan(&start, count + 1)?
            .into_iter()
            .take_while(|(key, _)| key.first() == Some(&USER))
            .map(|(key, value)| (Bytes::copy_from_slice(&key[1..]), value))
            .collect();
        let next = if page.len() > count {
            let (next_key, _) = page.pop().expect("more than count keys");
            cursors.save(next_key)
        } else {
            0
        };
        let mut keys = Vec::with_capacity(page.len());
        for (key, value) in page {
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

/// Server-side SCAN cursors: cursor number → the next key, the oldest
/// forgotten first.
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
