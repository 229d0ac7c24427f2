//! Write commands as they travel in log entries and between nodes: a
//! version byte, an op byte, then the fields (byte strings as a u32 LE
//! length and the bytes, numbers LE). Every byte is checked on the way
//! in: a payload that is not a command is an error, never a panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use dr_codec::message::NodeId;

use super::MemberAddrs;

const FORMAT_VERSION: u8 = 2;

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

/// What a write does to its key's time to live. Times are milliseconds;
/// the apply path resolves `In` against the entry's time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ttl {
    /// Keeps it (`KEEPTTL`, and every write that changes a value in place).
    Keep,
    /// Removes it (a plain `SET`, `PERSIST`).
    Clear,
    /// Expires this long after the command (`EX`, `PX`, `EXPIRE`).
    In(i64),
    /// Expires at this Unix time (`EXAT`, `PXAT`, `EXPIREAT`).
    At(i64),
}

/// `EXPIRE`'s conditions (none set: always; `XX` goes with `GT` or
/// `LT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpireCondition {
    /// `NX`: only if the key has no expiry.
    pub if_none: bool,
    /// `XX`: only if it has one.
    pub if_some: bool,
    /// `GT`: only if the new time is later (no expiry counts as never).
    pub if_later: bool,
    /// `LT`: only if the new time is earlier.
    pub if_earlier: bool,
}

impl ExpireCondition {
    fn bits(self) -> u8 {
        u8::from(self.if_none)
            | u8::from(self.if_some) << 1
            | u8::from(self.if_later) << 2
            | u8::from(self.if_earlier) << 3
    }

    fn from_bits(bits: u8) -> Option<Self> {
        (bits < 16).then_some(Self {
            if_none: bits & 1 != 0,
            if_some: bits & 2 != 0,
            if_later: bits & 4 != 0,
            if_earlier: bits & 8 != 0,
        })
    }
}

/// A state-changing command, as it travels in a log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// `SET`, `SETNX`, `GETSET`, `SETEX`, `PSETEX`.
    Set {
        /// The key.
        key: Bytes,
        /// The new value.
        value: Bytes,
        /// When to write.
        condition: SetCondition,
        /// The time to live it leaves.
        ttl: Ttl,
        /// `GET`: the old value must be a string.
        get: bool,
    },
    /// `DEL`, `UNLINK`: removes the keys.
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
    /// `EXPIRE`, `PEXPIRE`, `EXPIREAT`, `PEXPIREAT`.
    Expire {
        /// The key.
        key: Bytes,
        /// `In` or `At`.
        ttl: Ttl,
        /// When to change it.
        condition: ExpireCondition,
    },
    /// `PERSIST`.
    Persist(Bytes),
    /// `GETEX` with an option: the value, and a new time to live.
    GetEx {
        /// The key.
        key: Bytes,
        /// The time to live it leaves.
        ttl: Ttl,
    },
    /// `GETDEL`.
    GetDel(Bytes),
    /// The leader's removal of keys whose time passed: each key with the
    /// expiry time the leader saw (a key whose expiry changed since is
    /// left alone).
    Reap(Vec<(Bytes, u64)>),
    /// `FLUSHDB`, `FLUSHALL`: every client key removed.
    Flush,
    /// `HSET`, `HMSET` (every pair), `HSETNX` (`if_absent`: one pair,
    /// written only if the field is new).
    HashSet {
        /// The hash.
        key: Bytes,
        /// Fields and values, in order (a later pair of a field wins).
        pairs: Vec<(Bytes, Bytes)>,
        /// `HSETNX`.
        if_absent: bool,
    },
    /// `HDEL`.
    HashDelete {
        /// The hash.
        key: Bytes,
        /// The fields removed.
        fields: Vec<Bytes>,
    },
    /// `HINCRBY`.
    HashIncrementBy {
        /// The hash.
        key: Bytes,
        /// The field.
        field: Bytes,
        /// What to add.
        delta: i64,
    },
    /// `HINCRBYFLOAT` (the increment checked when parsed, as Redis does
    /// before it looks at the key).
    HashIncrementByFloat {
        /// The hash.
        key: Bytes,
        /// The field.
        field: Bytes,
        /// The increment's text.
        delta: Bytes,
    },
    /// `SETRANGE`.
    SetRange {
        /// The key.
        key: Bytes,
        /// Where the bytes go.
        offset: u64,
        /// The bytes.
        value: Bytes,
    },
    /// `MSETNX`: every pair, only if no key exists.
    SetManyIfNone(Vec<(Bytes, Bytes)>),
    /// `RENAME`, `RENAMENX` (`if_absent`).
    Rename {
        /// The key renamed.
        from: Bytes,
        /// Its new name.
        to: Bytes,
        /// `RENAMENX`: only if `to` does not exist.
        if_absent: bool,
    },
    /// `COPY`.
    Copy {
        /// The key copied.
        from: Bytes,
        /// The copy.
        to: Bytes,
        /// `REPLACE`: an existing `to` is replaced.
        replace: bool,
    },
    /// `EXEC`: the queued commands as the client sent them, applied as one
    /// entry, if every watched key still has the version it had at
    /// `WATCH` (0: absent).
    Transaction {
        /// Watched keys and their versions.
        watched: Vec<(Bytes, u64)>,
        /// The queued data commands, each its arguments.
        commands: Vec<Vec<Bytes>>,
    },
    /// `INCRBYFLOAT`: the increment as the client sent it (checked when
    /// applied, after the key's type, as Redis does).
    IncrementByFloat {
        /// The key.
        key: Bytes,
        /// The increment's text.
        delta: Bytes,
    },
}

/// A log entry payload that is not a valid command (never written by a
/// node; reported, and applied as a no-op everywhere).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

/// A command with the time (Unix milliseconds, on the proposing leader's
/// clock) it was proposed: what a log entry holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamped {
    /// The leader's time.
    pub now_ms: u64,
    /// The command.
    pub op: WriteOp,
}

impl Stamped {
    /// The entry payload.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(9 + self.op.encoded_len_hint());
        out.put_u8(FORMAT_VERSION);
        out.put_u64_le(self.now_ms);
        self.op.encode_into(&mut out);
        out.freeze()
    }

    /// An entry payload, every byte checked.
    pub fn decode(payload: &Bytes) -> Result<Self, DecodeError> {
        let mut input = payload.clone();
        if take_u8(&mut input)? != FORMAT_VERSION {
            return Err(DecodeError("unknown command format version".into()));
        }
        let now_ms = take_u64(&mut input)?;
        let op = WriteOp::decode_from(&mut input)?;
        if input.has_remaining() {
            return Err(DecodeError("trailing bytes after the command".into()));
        }
        Ok(Self { now_ms, op })
    }
}

impl WriteOp {
    /// The command alone (as a follower forwards it).
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len_hint());
        self.encode_into(&mut out);
        out.freeze()
    }

    /// Room for the bytes [`Self::encode`] writes: enough for the
    /// commands of one key and a value (exact for `SET`), so that
    /// encoding them allocates once; a start for the others.
    pub(crate) fn encoded_len_hint(&self) -> usize {
        // Tag, flags and a TTL, and each byte string's length.
        const FIXED_BYTES: usize = 3 + 9;
        const LEN_BYTES: usize = 4;
        match self {
            Self::Set { key, value, .. }
            | Self::Append { key, value }
            | Self::SetRange { key, value, .. } => {
                FIXED_BYTES + 2 * LEN_BYTES + key.len() + value.len()
            }
            Self::CompareAndSet { key, expected, new } => {
                FIXED_BYTES + 3 * LEN_BYTES + key.len() + expected.len() + new.len()
            }
            _ => 64,
        }
    }

    /// Parses what [`Self::encode`] wrote; byte strings are slices of
    /// `payload`.
    pub fn decode(payload: &Bytes) -> Result<Self, DecodeError> {
        let mut input = payload.clone();
        let op = Self::decode_from(&mut input)?;
        if input.has_remaining() {
            return Err(DecodeError("trailing bytes after the command".into()));
        }
        Ok(op)
    }

    /// Appends what [`Self::encode`] returns to `out`.
    pub(crate) fn encode_into(&self, out: &mut BytesMut) {
        match self {
            Self::Set {
                key,
                value,
                condition,
                ttl,
                get,
            } => {
                out.put_u8(1);
                out.put_u8(match condition {
                    SetCondition::Always => 0,
                    SetCondition::IfAbsent => 1,
                    SetCondition::IfPresent => 2,
                });
                out.put_u8(u8::from(*get));
                put_ttl(out, *ttl);
                put_bytes(out, key);
                put_bytes(out, value);
            }
            Self::Delete(keys) => {
                out.put_u8(2);
                put_keys(out, keys);
            }
            Self::SetMany(pairs) => {
                out.put_u8(3);
                put_pairs(out, pairs);
            }
            Self::IncrementBy { key, delta } => {
                out.put_u8(4);
                out.put_i64_le(*delta);
                put_bytes(out, key);
            }
            Self::Append { key, value } => {
                out.put_u8(5);
                put_bytes(out, key);
                put_bytes(out, value);
            }
            Self::CompareAndSet { key, expected, new } => {
                out.put_u8(6);
                put_bytes(out, key);
                put_bytes(out, expected);
                put_bytes(out, new);
            }
            Self::Member { id, addrs } => {
                out.put_u8(7);
                out.put_u64_le(*id);
                let json = serde_json::to_vec(addrs).expect("addresses serialize");
                put_bytes(out, &json);
            }
            Self::Expire {
                key,
                ttl,
                condition,
            } => {
                out.put_u8(8);
                out.put_u8(condition.bits());
                put_ttl(out, *ttl);
                put_bytes(out, key);
            }
            Self::Persist(key) => {
                out.put_u8(9);
                put_bytes(out, key);
            }
            Self::GetEx { key, ttl } => {
                out.put_u8(10);
                put_ttl(out, *ttl);
                put_bytes(out, key);
            }
            Self::GetDel(key) => {
                out.put_u8(11);
                put_bytes(out, key);
            }
            Self::Reap(keys) => {
                out.put_u8(12);
                out.put_u32_le(keys.len() as u32);
                for (key, at) in keys {
                    out.put_u64_le(*at);
                    put_bytes(out, key);
                }
            }
            Self::Flush => out.put_u8(13),
            Self::HashSet {
                key,
                pairs,
                if_absent,
            } => {
                out.put_u8(14);
                out.put_u8(u8::from(*if_absent));
                put_bytes(out, key);
                put_pairs(out, pairs);
            }
            Self::HashDelete { key, fields } => {
                out.put_u8(15);
                put_bytes(out, key);
                put_keys(out, fields);
            }
            Self::HashIncrementBy { key, field, delta } => {
                out.put_u8(16);
                out.put_i64_le(*delta);
                put_bytes(out, key);
                put_bytes(out, field);
            }
            Self::HashIncrementByFloat { key, field, delta } => {
                out.put_u8(23);
                put_bytes(out, key);
                put_bytes(out, field);
                put_bytes(out, delta);
            }
            Self::SetRange { key, offset, value } => {
                out.put_u8(17);
                out.put_u64_le(*offset);
                put_bytes(out, key);
                put_bytes(out, value);
            }
            Self::SetManyIfNone(pairs) => {
                out.put_u8(18);
                put_pairs(out, pairs);
            }
            Self::Rename {
                from,
                to,
                if_absent,
            } => {
                out.put_u8(19);
                out.put_u8(u8::from(*if_absent));
                put_bytes(out, from);
                put_bytes(out, to);
            }
            Self::Copy { from, to, replace } => {
                out.put_u8(20);
                out.put_u8(u8::from(*replace));
                put_bytes(out, from);
                put_bytes(out, to);
            }
            Self::IncrementByFloat { key, delta } => {
                out.put_u8(21);
                put_bytes(out, key);
                put_bytes(out, delta);
            }
            Self::Transaction { watched, commands } => {
                out.put_u8(22);
                out.put_u32_le(watched.len() as u32);
                for (key, version) in watched {
                    out.put_u64_le(*version);
                    put_bytes(out, key);
                }
                out.put_u32_le(commands.len() as u32);
                for command in commands {
                    put_keys(out, command);
                }
            }
        }
    }

    fn decode_from(input: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(match take_u8(input)? {
            1 => {
                let condition = match take_u8(input)? {
                    0 => SetCondition::Always,
                    1 => SetCondition::IfAbsent,
                    2 => SetCondition::IfPresent,
                    other => return Err(DecodeError(format!("unknown SET condition {other}"))),
                };
                let get = take_flag(input)?;
                let ttl = take_ttl(input)?;
                Self::Set {
                    key: take_bytes(input)?,
                    value: take_bytes(input)?,
                    condition,
                    ttl,
                    get,
                }
            }
            2 => Self::Delete(take_keys(input)?),
            3 => Self::SetMany(take_pairs(input)?),
            4 => {
                let delta = take_u64(input)? as i64;
                Self::IncrementBy {
                    key: take_bytes(input)?,
                    delta,
                }
            }
            5 => Self::Append {
                key: take_bytes(input)?,
                value: take_bytes(input)?,
            },
            6 => Self::CompareAndSet {
                key: take_bytes(input)?,
                expected: take_bytes(input)?,
                new: take_bytes(input)?,
            },
            7 => {
                let id = take_u64(input)?;
                let json = take_bytes(input)?;
                let addrs = serde_json::from_slice(&json)
                    .map_err(|e| DecodeError(format!("member addresses: {e}")))?;
                Self::Member { id, addrs }
            }
            8 => {
                let bits = take_u8(input)?;
                let condition = ExpireCondition::from_bits(bits)
                    .ok_or_else(|| DecodeError(format!("unknown EXPIRE conditions {bits}")))?;
                let ttl = take_ttl(input)?;
                Self::Expire {
                    key: take_bytes(input)?,
                    ttl,
                    condition,
                }
            }
            9 => Self::Persist(take_bytes(input)?),
            10 => {
                let ttl = take_ttl(input)?;
                Self::GetEx {
                    key: take_bytes(input)?,
                    ttl,
                }
            }
            11 => Self::GetDel(take_bytes(input)?),
            12 => {
                let count = take_count(input, 12)?;
                let keys = (0..count)
                    .map(|_| {
                        let at = take_u64(input)?;
                        Ok((take_bytes(input)?, at))
                    })
                    .collect::<Result<_, DecodeError>>()?;
                Self::Reap(keys)
            }
            13 => Self::Flush,
            14 => {
                let if_absent = take_flag(input)?;
                Self::HashSet {
                    key: take_bytes(input)?,
                    pairs: take_pairs(input)?,
                    if_absent,
                }
            }
            15 => Self::HashDelete {
                key: take_bytes(input)?,
                fields: take_keys(input)?,
            },
            16 => {
                let delta = take_u64(input)? as i64;
                Self::HashIncrementBy {
                    key: take_bytes(input)?,
                    field: take_bytes(input)?,
                    delta,
                }
            }
            17 => {
                let offset = take_u64(input)?;
                Self::SetRange {
                    key: take_bytes(input)?,
                    offset,
                    value: take_bytes(input)?,
                }
            }
            18 => Self::SetManyIfNone(take_pairs(input)?),
            19 => {
                let if_absent = take_flag(input)?;
                Self::Rename {
                    from: take_bytes(input)?,
                    to: take_bytes(input)?,
                    if_absent,
                }
            }
            20 => {
                let replace = take_flag(input)?;
                Self::Copy {
                    from: take_bytes(input)?,
                    to: take_bytes(input)?,
                    replace,
                }
            }
            21 => Self::IncrementByFloat {
                key: take_bytes(input)?,
                delta: take_bytes(input)?,
            },
            22 => {
                let count = take_count(input, 12)?;
                let watched = (0..count)
                    .map(|_| {
                        let version = take_u64(input)?;
                        Ok((take_bytes(input)?, version))
                    })
                    .collect::<Result<_, DecodeError>>()?;
                let count = take_count(input, 4)?;
                let commands = (0..count)
                    .map(|_| take_keys(input))
                    .collect::<Result<_, DecodeError>>()?;
                Self::Transaction { watched, commands }
            }
            23 => Self::HashIncrementByFloat {
                key: take_bytes(input)?,
                field: take_bytes(input)?,
                delta: take_bytes(input)?,
            },
            other => return Err(DecodeError(format!("unknown command op {other}"))),
        })
    }
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32_le(bytes.len() as u32);
    out.put_slice(bytes);
}

fn put_keys(out: &mut BytesMut, keys: &[Bytes]) {
    out.put_u32_le(keys.len() as u32);
    keys.iter().for_each(|key| put_bytes(out, key));
}

fn put_pairs(out: &mut BytesMut, pairs: &[(Bytes, Bytes)]) {
    out.put_u32_le(pairs.len() as u32);
    for (key, value) in pairs {
        put_bytes(out, key);
        put_bytes(out, value);
    }
}

fn put_ttl(out: &mut BytesMut, ttl: Ttl) {
    let (code, ms) = match ttl {
        Ttl::Keep => (0, 0),
        Ttl::Clear => (1, 0),
        Ttl::In(ms) => (2, ms),
        Ttl::At(ms) => (3, ms),
    };
    out.put_u8(code);
    out.put_i64_le(ms);
}

fn short() -> DecodeError {
    DecodeError("command payload ends early".into())
}

fn take_u8(input: &mut Bytes) -> Result<u8, DecodeError> {
    input.try_get_u8().map_err(|_| short())
}

fn take_flag(input: &mut Bytes) -> Result<bool, DecodeError> {
    match take_u8(input)? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(DecodeError(format!("a flag of {other}"))),
    }
}

fn take_u64(input: &mut Bytes) -> Result<u64, DecodeError> {
    input.try_get_u64_le().map_err(|_| short())
}

fn take_ttl(input: &mut Bytes) -> Result<Ttl, DecodeError> {
    let code = take_u8(input)?;
    let ms = take_u64(input)? as i64;
    Ok(match code {
        0 => Ttl::Keep,
        1 => Ttl::Clear,
        2 => Ttl::In(ms),
        3 => Ttl::At(ms),
        other => return Err(DecodeError(format!("unknown time-to-live kind {other}"))),
    })
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

fn take_keys(input: &mut Bytes) -> Result<Vec<Bytes>, DecodeError> {
    let count = take_count(input, 4)?;
    (0..count).map(|_| take_bytes(input)).collect()
}

fn take_pairs(input: &mut Bytes) -> Result<Vec<(Bytes, Bytes)>, DecodeError> {
    let count = take_count(input, 8)?;
    (0..count)
        .map(|_| Ok((take_bytes(input)?, take_bytes(input)?)))
        .collect()
}

fn take_bytes(input: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = input.try_get_u32_le().map_err(|_| short())? as usize;
    if len > input.remaining() {
        return Err(short());
    }
    Ok(input.split_to(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn every_op() -> Vec<WriteOp> {
        vec![
            WriteOp::Set {
                key: "k".into(),
                value: "v".into(),
                condition: SetCondition::IfAbsent,
                ttl: Ttl::In(1500),
                get: true,
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
            WriteOp::Expire {
                key: "k".into(),
                ttl: Ttl::At(-5),
                condition: ExpireCondition {
                    if_some: true,
                    if_earlier: true,
                    ..ExpireCondition::default()
                },
            },
            WriteOp::Persist("k".into()),
            WriteOp::GetEx {
                key: "k".into(),
                ttl: Ttl::Clear,
            },
            WriteOp::GetDel("k".into()),
            WriteOp::Reap(vec![("a".into(), 5), ("b".into(), u64::MAX)]),
            WriteOp::Flush,
            WriteOp::HashSet {
                key: "h".into(),
                pairs: vec![("f".into(), "1".into()), ("g".into(), "".into())],
                if_absent: false,
            },
            WriteOp::HashDelete {
                key: "h".into(),
                fields: vec!["f".into()],
            },
            WriteOp::HashIncrementBy {
                key: "h".into(),
                field: "n".into(),
                delta: i64::MIN,
            },
            WriteOp::HashIncrementByFloat {
                key: "h".into(),
                field: "f".into(),
                delta: "0.5".into(),
            },
            WriteOp::SetRange {
                key: "k".into(),
                offset: 7,
                value: "xy".into(),
            },
            WriteOp::SetManyIfNone(vec![("a".into(), "1".into())]),
            WriteOp::Rename {
                from: "a".into(),
                to: "b".into(),
                if_absent: true,
            },
            WriteOp::Copy {
                from: "a".into(),
                to: "b".into(),
                replace: false,
            },
            WriteOp::IncrementByFloat {
                key: "f".into(),
                delta: "1.5e3".into(),
            },
            WriteOp::Transaction {
                watched: vec![("w".into(), 7)],
                commands: vec![
                    vec!["SET".into(), "k".into(), "v".into()],
                    vec!["GET".into()],
                ],
            },
        ]
    }

    #[test]
    fn every_op_round_trips_and_every_cut_or_flip_is_an_error_or_another_op() {
        for op in every_op() {
            let stamped = Stamped {
                now_ms: 1_700_000_000_123,
                op: op.clone(),
            };
            let encoded = stamped.encode();
            assert_eq!(Stamped::decode(&encoded), Ok(stamped));
            assert_eq!(WriteOp::decode(&op.encode()), Ok(op.clone()));
            for cut in 0..encoded.len() {
                assert!(
                    Stamped::decode(&encoded.slice(..cut)).is_err(),
                    "{op:?} cut at {cut}"
                );
            }
            for position in 0..encoded.len() {
                let mut flipped = encoded.to_vec();
                flipped[position] ^= 0xff;
                // Never a panic; whatever decodes is a well-formed op.
                let _ = Stamped::decode(&Bytes::from(flipped));
            }
        }
    }

    /// The hint covers the commands of one key and a value whole (exact
    /// for `SET`), so encoding them allocates once.
    #[test]
    fn the_encoded_length_hint_covers_one_key_and_a_value() {
        for op in every_op() {
            let (len, hint) = (op.encode().len(), op.encoded_len_hint());
            match op {
                WriteOp::Set { .. } => assert_eq!(len, hint, "{op:?}"),
                WriteOp::Append { .. }
                | WriteOp::SetRange { .. }
                | WriteOp::CompareAndSet { .. } => assert!(len <= hint, "{op:?}: {len} > {hint}"),
                _ => {}
            }
        }
    }

    #[test]
    fn a_forged_count_does_not_allocate() {
        for op in [2u8, 3, 12, 18, 22] {
            let mut payload = vec![op];
            payload.extend_from_slice(&u32::MAX.to_le_bytes());
            assert!(WriteOp::decode(&Bytes::from(payload)).is_err());
        }
    }
}
