//! How a client key is stored.
//!
//! - `USER | key` → the key's record: its type, its version (the index of
//!   the log entry that last changed it, for `WATCH`), its expiry time
//!   (absolute, Unix milliseconds, or none), then a string's value or a
//!   hash's field count.
//! - `FIELD | key length (u32 BE) | key | field` → a hash field's value.
//! - `EXPIRY | expiry time (u64 BE) | key` → nothing: the keys by expiry
//!   time, so the leader finds what expired without a scan of all keys.
//!
//! The three namespaces sit side by side (`USER`..`CLIENT_END`), so one
//! range delete empties the keyspace.

use bytes::{Buf, Bytes};
use dr_raft::StorageError;

/// Namespace byte of key records.
pub const USER: u8 = 1;
/// Namespace byte of hash fields.
pub const FIELD: u8 = 2;
/// Namespace byte of the expiry index.
pub const EXPIRY: u8 = 3;
/// The first namespace byte after the client's.
pub const CLIENT_END: u8 = 4;

/// Bytes a record holds before its value: type, version, expiry.
pub const HEADER_BYTES: usize = 1 + 8 + 8;

/// What a key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A string (numbers are strings too).
    String,
    /// A hash of fields to values.
    Hash,
}

impl Kind {
    /// The name `TYPE` answers.
    pub fn name(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Hash => "hash",
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::String => 0,
            Self::Hash => 1,
        }
    }
}

/// A record's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// What the key holds.
    pub kind: Kind,
    /// The index of the entry that last changed the key.
    pub version: u64,
    /// When the key expires (Unix milliseconds); `None`: never.
    pub expire_at_ms: Option<u64>,
}

impl Meta {
    /// Whether the key is gone at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expire_at_ms.is_some_and(|at| at <= now_ms)
    }
}

/// A stored record: its header and its body (a string's value, a hash's
/// field count as u64 LE).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The header.
    pub meta: Meta,
    /// The body.
    pub body: Bytes,
}

impl Record {
    /// The stored bytes.
    pub fn encode(meta: &Meta, body: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
        out.push(meta.kind.code());
        out.extend_from_slice(&meta.version.to_le_bytes());
        out.extend_from_slice(&meta.expire_at_ms.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(body);
        Bytes::from(out)
    }

    /// Reads stored bytes; a record that is not one is corruption.
    pub fn decode(stored: Bytes) -> Result<Self, StorageError> {
        let meta = Self::decode_meta(&stored)?;
        Ok(Self {
            meta,
            body: stored.slice(HEADER_BYTES..),
        })
    }

    /// The header of stored bytes.
    pub fn decode_meta(stored: &[u8]) -> Result<Meta, StorageError> {
        if stored.len() < HEADER_BYTES {
            return Err(corrupt("a key record shorter than its header"));
        }
        let mut input = stored;
        let kind = match input.get_u8() {
            0 => Kind::String,
            1 => Kind::Hash,
            other => return Err(corrupt(&format!("a key record of unknown type {other}"))),
        };
        let version = input.get_u64_le();
        let expire_at_ms = Some(input.get_u64_le()).filter(|&at| at != 0);
        if kind == Kind::Hash && input.len() != 8 {
            return Err(corrupt("a hash record without its field count"));
        }
        Ok(Meta {
            kind,
            version,
            expire_at_ms,
        })
    }

    /// A hash's field count.
    pub fn field_count(&self) -> u64 {
        self.body
            .get(..8)
            .and_then(|bytes| bytes.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    }
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Invalid(format!("corrupt data: {what}"))
}

/// The stored key of a client key's record.
pub fn user_key(key: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(key.len() + 1);
    stored.push(USER);
    stored.extend_from_slice(key);
    stored
}

/// Bytes a field's stored key holds besides its key and field.
pub const FIELD_KEY_OVERHEAD: usize = 5;

/// Where a hash's fields begin: every field key starts with it.
pub fn field_prefix(key: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(key.len() + 5 + 16);
    stored.push(FIELD);
    stored.extend_from_slice(&(key.len() as u32).to_be_bytes());
    stored.extend_from_slice(key);
    stored
}

/// The stored key of one hash field.
pub fn field_key(key: &[u8], field: &[u8]) -> Vec<u8> {
    let mut stored = field_prefix(key);
    stored.extend_from_slice(field);
    stored
}

/// The expiry index's key for `key` expiring at `at_ms`.
pub fn expiry_key(at_ms: u64, key: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(key.len() + 9);
    stored.push(EXPIRY);
    stored.extend_from_slice(&at_ms.to_be_bytes());
    stored.extend_from_slice(key);
    stored
}

/// An expiry index key read back: the time and the key.
pub fn parse_expiry_key(stored: &[u8]) -> Option<(u64, &[u8])> {
    let rest = stored.strip_prefix(&[EXPIRY])?;
    let at = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    Some((at, &rest[8..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_short_or_strange_ones_are_corrupt() {
        let meta = Meta {
            kind: Kind::String,
            version: 7,
            expire_at_ms: Some(1_700_000_000_000),
        };
        let stored = Record::encode(&meta, b"value");
        let record = Record::decode(stored.clone()).unwrap();
        assert_eq!((record.meta, &record.body[..]), (meta, &b"value"[..]));
        for cut in 0..HEADER_BYTES {
            assert!(Record::decode(stored.slice(..cut)).is_err());
        }
        let mut strange = stored.to_vec();
        strange[0] = 9;
        assert!(Record::decode(Bytes::from(strange)).is_err());
        let hash = Meta {
            kind: Kind::Hash,
            version: 1,
            expire_at_ms: None,
        };
        let record = Record::decode(Record::encode(&hash, &3u64.to_le_bytes())).unwrap();
        assert_eq!((record.meta, record.field_count()), (hash, 3));
        assert!(Record::decode(Record::encode(&hash, b"")).is_err());
    }

    #[test]
    fn index_keys_sort_by_time_and_fields_by_key() {
        assert!(expiry_key(9, b"zz") < expiry_key(10, b"a"));
        assert_eq!(
            parse_expiry_key(&expiry_key(42, b"k")),
            Some((42, &b"k"[..]))
        );
        // A key that is another's prefix does not share its fields.
        assert!(!field_key(b"ab", b"c").starts_with(&field_prefix(b"a")));
        assert!(field_key(b"a", b"bc").starts_with(&field_prefix(b"a")));
    }
}
