//! The hash commands: `HSET`, `HMSET`, `HSETNX`, `HDEL`, `HINCRBY`,
//! `HINCRBYFLOAT`
//! (writes) and `HGET`, `HMGET`, `HLEN`, `HEXISTS`, `HSTRLEN`, `HGETALL`,
//! `HKEYS`, `HVALS`, `HSCAN` (reads).

use bytes::Bytes;

use super::{Command, ReadOp, ReplyShape, integer, key, parse_scan_options, read, write};
use crate::kv::WriteOp;
use crate::kv::long_double::LongDouble;
use crate::kv::record::FIELD_KEY_OVERHEAD;
use crate::resp::Reply;

/// Which parts of a hash `HGETALL`, `HKEYS` and `HVALS` answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashPart {
    /// `HKEYS`.
    Fields,
    /// `HVALS`.
    Values,
    /// `HGETALL`: field, value, field, value...
    Both,
}

/// A hash read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashRead {
    /// `HGET key field`.
    Get(Bytes),
    /// `HMGET key field...`.
    GetMany(Vec<Bytes>),
    /// `HLEN key`.
    Len,
    /// `HEXISTS key field`.
    Exists(Bytes),
    /// `HSTRLEN key field`.
    Strlen(Bytes),
    /// `HGETALL`, `HKEYS`, `HVALS`.
    All(HashPart),
    /// `HSCAN key cursor [MATCH pattern] [COUNT n]`.
    Scan {
        /// 0 to start, else a cursor a previous page returned.
        cursor: u64,
        /// A glob the fields must match.
        pattern: Option<Bytes>,
        /// Fields to look at for this page.
        count: usize,
    },
}

/// A field name checked against the storage's key limit (with its key).
fn field(key: &Bytes, field: &Bytes) -> Result<Bytes, Reply> {
    if key.len() + field.len() + FIELD_KEY_OVERHEAD > dr_storage::KEY_BYTES_MAX {
        return Err(Reply::err(format!(
            "hash field is too long (key and field together may have at most {} bytes)",
            dr_storage::KEY_BYTES_MAX - FIELD_KEY_OVERHEAD
        )));
    }
    Ok(field.clone())
}

fn fields(key: &Bytes, names: &[Bytes]) -> Result<Vec<Bytes>, Reply> {
    names.iter().map(|name| field(key, name)).collect()
}

/// Parses the hash command `name` (lower case) with `args`; `arity`
/// answers the wrong-number-of-arguments error.
pub(super) fn parse(
    name: &[u8],
    args: &[Bytes],
    arity: impl Fn(bool) -> Result<(), Reply>,
) -> Result<Command, Reply> {
    let hash_read = |args: &[Bytes], op: HashRead| -> Result<Command, Reply> {
        read(ReadOp::Hash {
            key: key(&args[0])?,
            op,
        })
    };
    match name {
        b"hset" | b"hmset" => {
            arity(args.len() >= 3 && args.len() % 2 == 1)?;
            let key = key(&args[0])?;
            let pairs = args[1..]
                .chunks(2)
                .map(|pair| Ok((field(&key, &pair[0])?, pair[1].clone())))
                .collect::<Result<_, Reply>>()?;
            let shape = if name == b"hset" {
                ReplyShape::Integer
            } else {
                ReplyShape::Ok
            };
            let op = WriteOp::HashSet {
                key,
                pairs,
                if_absent: false,
            };
            write(op, shape)
        }
        b"hsetnx" => {
            arity(args.len() == 3)?;
            let key = key(&args[0])?;
            let pairs = vec![(field(&key, &args[1])?, args[2].clone())];
            let op = WriteOp::HashSet {
                key,
                pairs,
                if_absent: true,
            };
            write(op, ReplyShape::Integer)
        }
        b"hdel" => {
            arity(args.len() >= 2)?;
            let key = key(&args[0])?;
            let fields = fields(&key, &args[1..])?;
            write(WriteOp::HashDelete { key, fields }, ReplyShape::Integer)
        }
        b"hincrby" => {
            arity(args.len() == 3)?;
            let key = key(&args[0])?;
            let op = WriteOp::HashIncrementBy {
                field: field(&key, &args[1])?,
                delta: integer(&args[2])?,
                key,
            };
            write(op, ReplyShape::Integer)
        }
        b"hincrbyfloat" => {
            arity(args.len() == 3)?;
            match LongDouble::parse(&args[2]) {
                None => return Err(Reply::err("value is not a valid float")),
                Some(delta) if !delta.is_finite() => {
                    return Err(Reply::err("value is NaN or Infinity"));
                }
                Some(_) => {}
            }
            let key = key(&args[0])?;
            let op = WriteOp::HashIncrementByFloat {
                field: field(&key, &args[1])?,
                delta: args[2].clone(),
                key,
            };
            write(op, ReplyShape::Value)
        }
        b"hget" => {
            arity(args.len() == 2)?;
            hash_read(args, HashRead::Get(field(&args[0], &args[1])?))
        }
        b"hmget" => {
            arity(args.len() >= 2)?;
            hash_read(args, HashRead::GetMany(fields(&args[0], &args[1..])?))
        }
        b"hlen" => {
            arity(args.len() == 1)?;
            hash_read(args, HashRead::Len)
        }
        b"hexists" => {
            arity(args.len() == 2)?;
            hash_read(args, HashRead::Exists(field(&args[0], &args[1])?))
        }
        b"hstrlen" => {
            arity(args.len() == 2)?;
            hash_read(args, HashRead::Strlen(field(&args[0], &args[1])?))
        }
        b"hgetall" | b"hkeys" | b"hvals" => {
            arity(args.len() == 1)?;
            let part = match name {
                b"hgetall" => HashPart::Both,
                b"hkeys" => HashPart::Fields,
                _ => HashPart::Values,
            };
            hash_read(args, HashRead::All(part))
        }
        b"hscan" => {
            arity(args.len() >= 2)?;
            let options = parse_scan_options(&args[1], &args[2..], false)?;
            hash_read(
                args,
                HashRead::Scan {
                    cursor: options.cursor,
                    pattern: options.pattern,
                    count: options.count,
                },
            )
        }
        _ => unreachable!("only hash commands come here"),
    }
}
