//! Client requests (arrays of byte strings) turned into typed commands,
//! with Redis's argument checks and error texts; and outcomes turned back
//! into the replies each command gives.

use bytes::Bytes;
use dr_codec::message::NodeId;
use dr_raft::ConfChangeOp;

use crate::clock::NodeClock;
use crate::kv::{self, Outcome, SetCondition, Ttl, WriteOp};
use crate::resp::Reply;

mod expiry;
mod hash;
pub mod table;

pub use hash::{HashPart, HashRead};

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Answered by the connection itself.
    Connection(ConnectionCommand),
    /// Served from the state machine after a linearizable read barrier.
    Read(ReadOp),
    /// Proposed to the log; `shape` says how the outcome is answered.
    Write {
        /// The change.
        op: WriteOp,
        /// How its outcome is answered.
        shape: ReplyShape,
    },
    /// A membership change. Only the admin API makes one: no client
    /// request parses to it.
    ConfChange(ConfChangeOp),
    /// Hands leadership to a voter. Only the admin API makes one.
    TransferLeader(NodeId),
    /// `INFO [section ...]`: the node's state (the named sections, in
    /// lower case; all when none are named).
    Info(Vec<String>),
    /// `MULTI`, `EXEC`, `DISCARD`, `WATCH`, `UNWATCH`: the connection
    /// keeps the transaction.
    Transaction(TxCommand),
}

/// The transaction commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxCommand {
    /// `MULTI`.
    Multi,
    /// `EXEC`.
    Exec,
    /// `DISCARD`.
    Discard,
    /// `WATCH key...`.
    Watch(Vec<Bytes>),
    /// `UNWATCH`.
    Unwatch,
}

/// Commands about the connection, not the data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionCommand {
    /// `PING [message]`.
    Ping(Option<Bytes>),
    /// `ECHO message`.
    Echo(Bytes),
    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
    Hello {
        /// The protocol version asked for.
        version: Option<Bytes>,
        /// Credentials: user name and password.
        auth: Option<(Bytes, Bytes)>,
        /// A name for the connection.
        name: Option<Bytes>,
    },
    /// `AUTH [user] password`.
    Auth {
        /// The user (`default` when not given).
        user: Option<Bytes>,
        /// The password.
        password: Bytes,
    },
    /// `ACL WHOAMI`.
    AclWhoami,
    /// `ACL LIST`: the users, without their passwords.
    AclList,
    /// `ACL USERS`: the users' names.
    AclUsers,
    /// `CLIENT LIST`: the open connections.
    ClientList,
    /// `CLIENT SETNAME name`.
    SetName(Bytes),
    /// `CLIENT GETNAME`.
    GetName,
    /// `CLIENT ID`.
    Id,
    /// `CLIENT` subcommands clients send on connect (`SETINFO`): `+OK`.
    ClientOk,
    /// `COMMAND ...`: what clients probe (the subcommand and its
    /// arguments).
    CommandInfo(Vec<Bytes>),
    /// `SELECT 0`.
    Select,
    /// `TIME`: the node's clock.
    Time,
    /// `QUIT`.
    Quit,
}

/// A read of the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadOp {
    /// `GET key`.
    Get(Bytes),
    /// `MGET key...`.
    GetMany(Vec<Bytes>),
    /// `EXISTS key...`.
    Exists(Vec<Bytes>),
    /// `STRLEN key`.
    Strlen(Bytes),
    /// `DBSIZE`.
    DbSize,
    /// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE t]`.
    Scan {
        /// 0 to start, else a cursor a previous page returned.
        cursor: u64,
        /// A glob the keys must match.
        pattern: Option<Bytes>,
        /// Keys to look at for this page.
        count: usize,
        /// Only keys of this type.
        kind: Option<TypeFilter>,
    },
    /// `TTL`, `PTTL`, `EXPIRETIME`, `PEXPIRETIME`.
    Ttl {
        /// The key.
        key: Bytes,
        /// Which of them.
        query: TtlQuery,
    },
    /// `TYPE key`.
    Type(Bytes),
    /// `GETRANGE key start end`.
    GetRange {
        /// The key.
        key: Bytes,
        /// The first byte (negative: from the end).
        start: i64,
        /// The last byte (negative: from the end).
        end: i64,
    },
    /// `KEYS pattern` (at most the machine's `keys_max` keys).
    Keys(Bytes),
    /// `RANDOMKEY`.
    RandomKey,
    /// A read of a hash.
    Hash {
        /// The hash.
        key: Bytes,
        /// What to read.
        op: HashRead,
    },
    /// The versions of keys (0: absent), for `WATCH`.
    Versions(Vec<Bytes>),
    /// `GETEX` with a time Redis refuses: nil for a missing key,
    /// `WRONGTYPE` for another type, else the error.
    GetOrRefuse {
        /// The key.
        key: Bytes,
        /// The error text.
        error: String,
    },
}

/// `SCAN ... TYPE t`: the type asked for (one drkv does not have matches
/// nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeFilter {
    /// A type drkv stores.
    Kind(kv::Kind),
    /// Any other name.
    Other,
}

/// What a time-to-live read answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TtlQuery {
    /// `TTL`: seconds left, rounded.
    Seconds,
    /// `PTTL`: milliseconds left.
    Millis,
    /// `EXPIRETIME`: the Unix time, seconds.
    UnixSeconds,
    /// `PEXPIRETIME`: the Unix time, milliseconds.
    UnixMillis,
}

/// How a write's [`Outcome`] is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyShape {
    /// `SET`: `+OK`, or nil when the condition failed.
    Ok,
    /// `SET ... GET`, `GETSET`: the old value.
    OldValue,
    /// `SETNX`: 1 if written.
    Written,
    /// `DEL`, `INCR`, `APPEND`, `CAS`, `EXPIRE`: the number.
    Integer,
    /// `GETEX`, `GETDEL`: the value, or nil.
    Value,
    /// `EXEC`: the replies, or a null array.
    Transaction,
}

const SCAN_COUNT_DEFAULT: usize = 10;
/// The most keys one `SCAN` page looks at, whatever `COUNT` asks.
pub const SCAN_COUNT_MAX: usize = 10_000;

/// Parses one request. `Err` is the error reply (the connection stays
/// open).
pub fn parse(arguments: &[Bytes]) -> Result<Command, Reply> {
    parse_at(arguments, NodeClock.unix_ms())
}

/// Parses one request with `now_ms` as the time (the apply path parses a
/// transaction's commands at the entry's time).
pub fn parse_at(arguments: &[Bytes], now_ms: u64) -> Result<Command, Reply> {
    let Some(given) = arguments.first() else {
        return Err(Reply::err("empty command"));
    };
    let name = given.to_ascii_lowercase();
    let args = &arguments[1..];
    let arity = |ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(Reply::err(format!(
                "wrong number of arguments for '{}' command",
                String::from_utf8_lossy(&name)
            )))
        }
    };
    let connection = |command| Ok(Command::Connection(command));
    match name.as_slice() {
        b"ping" => {
            arity(args.len() <= 1)?;
            connection(ConnectionCommand::Ping(args.first().cloned()))
        }
        b"echo" => {
            arity(args.len() == 1)?;
            connection(ConnectionCommand::Echo(args[0].clone()))
        }
        b"hello" => parse_hello(args),
        b"auth" => {
            arity(matches!(args.len(), 1 | 2))?;
            let (user, password) = match args {
                [password] => (None, password.clone()),
                [user, password] => (Some(user.clone()), password.clone()),
                _ => unreachable!("arity checked"),
            };
            connection(ConnectionCommand::Auth { user, password })
        }
        b"acl" => {
            arity(args.len() == 1)?;
            match args[0].to_ascii_uppercase().as_slice() {
                b"WHOAMI" => connection(ConnectionCommand::AclWhoami),
                b"LIST" => connection(ConnectionCommand::AclList),
                b"USERS" => connection(ConnectionCommand::AclUsers),
                _ => Err(Reply::err(format!(
                    "unknown subcommand '{}'; drkv answers ACL WHOAMI, ACL LIST and ACL USERS \
                     (users are set in the configuration file)",
                    String::from_utf8_lossy(&args[0][..args[0].len().min(64)])
                ))),
            }
        }
        b"client" => parse_client(args),
        b"command" => connection(ConnectionCommand::CommandInfo(args.to_vec())),
        b"select" => {
            arity(args.len() == 1)?;
            if args[0].as_ref() != b"0" {
                return Err(Reply::err(
                    "DB index is out of range (drkv has one database)",
                ));
            }
            connection(ConnectionCommand::Select)
        }
        b"quit" => connection(ConnectionCommand::Quit),
        b"time" => {
            arity(args.is_empty())?;
            connection(ConnectionCommand::Time)
        }
        b"info" => Ok(Command::Info(
            args.iter()
                .map(|section| String::from_utf8_lossy(section).to_ascii_lowercase())
                .collect(),
        )),
        b"get" => {
            arity(args.len() == 1)?;
            read(ReadOp::Get(key(&args[0])?))
        }
        b"mget" => {
            arity(!args.is_empty())?;
            read(ReadOp::GetMany(keys(args)?))
        }
        b"exists" | b"touch" => {
            arity(!args.is_empty())?;
            read(ReadOp::Exists(keys(args)?))
        }
        b"strlen" => {
            arity(args.len() == 1)?;
            read(ReadOp::Strlen(key(&args[0])?))
        }
        b"dbsize" => {
            arity(args.is_empty())?;
            read(ReadOp::DbSize)
        }
        b"scan" => {
            arity(!args.is_empty())?;
            parse_scan(args)
        }
        b"set" => {
            arity(args.len() >= 2)?;
            expiry::parse_set(args, now_ms)
        }
        b"setnx" => {
            arity(args.len() == 2)?;
            let shape = ReplyShape::Written;
            expiry::set(
                &args[0],
                &args[1],
                SetCondition::IfAbsent,
                Ttl::Clear,
                false,
                shape,
            )
        }
        b"getset" => {
            arity(args.len() == 2)?;
            let shape = ReplyShape::OldValue;
            expiry::set(
                &args[0],
                &args[1],
                SetCondition::Always,
                Ttl::Clear,
                true,
                shape,
            )
        }
        b"setex" | b"psetex" => {
            arity(args.len() == 3)?;
            let (unit, command) = if name == b"setex" {
                (expiry::Unit::Seconds, "setex")
            } else {
                (expiry::Unit::Millis, "psetex")
            };
            let ttl = expiry::positive_ttl(&args[1], unit, expiry::Base::Now, command, now_ms)?;
            let shape = ReplyShape::Ok;
            expiry::set(&args[0], &args[2], SetCondition::Always, ttl, false, shape)
        }
        b"getex" => {
            arity(!args.is_empty())?;
            expiry::parse_getex(args, now_ms)
        }
        b"getdel" => {
            arity(args.len() == 1)?;
            write(WriteOp::GetDel(key(&args[0])?), ReplyShape::Value)
        }
        b"expire" | b"pexpire" | b"expireat" | b"pexpireat" => {
            arity(args.len() >= 2)?;
            let command = String::from_utf8_lossy(&name).into_owned();
            expiry::parse_expire(args, &command, now_ms)
        }
        b"persist" => {
            arity(args.len() == 1)?;
            write(WriteOp::Persist(key(&args[0])?), ReplyShape::Integer)
        }
        b"ttl" | b"pttl" | b"expiretime" | b"pexpiretime" => {
            arity(args.len() == 1)?;
            let query = match name.as_slice() {
                b"ttl" => TtlQuery::Seconds,
                b"pttl" => TtlQuery::Millis,
                b"expiretime" => TtlQuery::UnixSeconds,
                _ => TtlQuery::UnixMillis,
            };
            read(ReadOp::Ttl {
                key: key(&args[0])?,
                query,
            })
        }
        b"hset" | b"hmset" | b"hsetnx" | b"hdel" | b"hincrby" | b"hincrbyfloat" | b"hget"
        | b"hmget" | b"hlen" | b"hexists" | b"hstrlen" | b"hgetall" | b"hkeys" | b"hvals"
        | b"hscan" => hash::parse(&name, args, arity),
        b"getrange" | b"substr" => {
            arity(args.len() == 3)?;
            read(ReadOp::GetRange {
                key: key(&args[0])?,
                start: integer(&args[1])?,
                end: integer(&args[2])?,
            })
        }
        b"setrange" => {
            arity(args.len() == 3)?;
            let offset = integer(&args[1])?;
            let offset = u64::try_from(offset).map_err(|_| Reply::err("offset is out of range"))?;
            let op = WriteOp::SetRange {
                key: key(&args[0])?,
                offset,
                value: args[2].clone(),
            };
            write(op, ReplyShape::Integer)
        }
        b"incrbyfloat" => {
            arity(args.len() == 2)?;
            let op = WriteOp::IncrementByFloat {
                key: key(&args[0])?,
                delta: args[1].clone(),
            };
            write(op, ReplyShape::Value)
        }
        b"msetnx" => {
            arity(!args.is_empty() && args.len().is_multiple_of(2))?;
            write(WriteOp::SetManyIfNone(pairs(args)?), ReplyShape::Integer)
        }
        b"rename" | b"renamenx" => {
            arity(args.len() == 2)?;
            let if_absent = name == b"renamenx";
            let op = WriteOp::Rename {
                from: key(&args[0])?,
                to: key(&args[1])?,
                if_absent,
            };
            let shape = if if_absent {
                ReplyShape::Integer
            } else {
                ReplyShape::Ok
            };
            write(op, shape)
        }
        b"copy" => {
            arity(args.len() >= 2)?;
            parse_copy(args)
        }
        b"keys" => {
            arity(args.len() == 1)?;
            read(ReadOp::Keys(args[0].clone()))
        }
        b"randomkey" => {
            arity(args.is_empty())?;
            read(ReadOp::RandomKey)
        }
        b"multi" | b"exec" | b"discard" | b"unwatch" => {
            arity(args.is_empty())?;
            Ok(Command::Transaction(match name.as_slice() {
                b"multi" => TxCommand::Multi,
                b"exec" => TxCommand::Exec,
                b"discard" => TxCommand::Discard,
                _ => TxCommand::Unwatch,
            }))
        }
        b"watch" => {
            arity(!args.is_empty())?;
            Ok(Command::Transaction(TxCommand::Watch(keys(args)?)))
        }
        b"type" => {
            arity(args.len() == 1)?;
            read(ReadOp::Type(key(&args[0])?))
        }
        b"flushdb" | b"flushall" => {
            // ASYNC and SYNC are the same here: one range delete.
            match args {
                [] => {}
                [mode]
                    if mode.eq_ignore_ascii_case(b"async")
                        || mode.eq_ignore_ascii_case(b"sync") => {}
                _ => return Err(syntax_error()),
            }
            write(WriteOp::Flush, ReplyShape::Ok)
        }
        b"del" | b"unlink" => {
            arity(!args.is_empty())?;
            write(WriteOp::Delete(keys(args)?), ReplyShape::Integer)
        }
        b"mset" => {
            arity(!args.is_empty() && args.len().is_multiple_of(2))?;
            write(WriteOp::SetMany(pairs(args)?), ReplyShape::Ok)
        }
        b"incr" | b"decr" => {
            arity(args.len() == 1)?;
            let delta = if name == b"incr" { 1 } else { -1 };
            increment(&args[0], delta)
        }
        b"incrby" | b"decrby" => {
            arity(args.len() == 2)?;
            let amount = integer(&args[1])?;
            let delta = if name == b"incrby" {
                Some(amount)
            } else {
                amount.checked_neg()
            };
            let delta = delta.ok_or_else(|| Reply::err("decrement would overflow"))?;
            increment(&args[0], delta)
        }
        b"append" => {
            arity(args.len() == 2)?;
            let op = WriteOp::Append {
                key: key(&args[0])?,
                value: args[1].clone(),
            };
            write(op, ReplyShape::Integer)
        }
        b"cas" => {
            arity(args.len() == 3)?;
            let op = WriteOp::CompareAndSet {
                key: key(&args[0])?,
                expected: args[1].clone(),
                new: args[2].clone(),
            };
            write(op, ReplyShape::Integer)
        }
        _ => Err(unknown_command(&arguments[0], args)),
    }
}

fn read(op: ReadOp) -> Result<Command, Reply> {
    Ok(Command::Read(op))
}

fn write(op: WriteOp, shape: ReplyShape) -> Result<Command, Reply> {
    Ok(Command::Write { op, shape })
}

fn pairs(args: &[Bytes]) -> Result<Vec<(Bytes, Bytes)>, Reply> {
    args.chunks(2)
        .map(|pair| Ok((key(&pair[0])?, pair[1].clone())))
        .collect()
}

/// `COPY source destination [DB 0] [REPLACE]` (one database).
fn parse_copy(args: &[Bytes]) -> Result<Command, Reply> {
    let mut replace = false;
    let mut options = args[2..].iter();
    while let Some(option) = options.next() {
        match option.to_ascii_uppercase().as_slice() {
            b"REPLACE" => replace = true,
            b"DB" => {
                let db = options.next().ok_or_else(syntax_error)?;
                if integer(db)? != 0 {
                    return Err(Reply::err("DB index is out of range"));
                }
            }
            _ => return Err(syntax_error()),
        }
    }
    let op = WriteOp::Copy {
        from: key(&args[0])?,
        to: key(&args[1])?,
        replace,
    };
    write(op, ReplyShape::Integer)
}

fn increment(key_arg: &Bytes, delta: i64) -> Result<Command, Reply> {
    let op = WriteOp::IncrementBy {
        key: key(key_arg)?,
        delta,
    };
    write(op, ReplyShape::Integer)
}

fn unknown_command(name: &[u8], args: &[Bytes]) -> Reply {
    let beginning: String = args
        .iter()
        .take(8)
        .map(|arg| format!("'{}' ", String::from_utf8_lossy(&arg[..arg.len().min(128)])))
        .collect();
    Reply::err(format!(
        "unknown command '{}', with args beginning with: {beginning}",
        String::from_utf8_lossy(&name[..name.len().min(128)])
    ))
}

fn key(arg: &Bytes) -> Result<Bytes, Reply> {
    if arg.len() > kv::KEY_BYTES_MAX {
        return Err(Reply::err(format!(
            "key is too long ({} bytes; drkv keys have at most {})",
            arg.len(),
            kv::KEY_BYTES_MAX
        )));
    }
    Ok(arg.clone())
}

fn keys(args: &[Bytes]) -> Result<Vec<Bytes>, Reply> {
    args.iter().map(key).collect()
}

fn integer(arg: &[u8]) -> Result<i64, Reply> {
    kv::parse_integer(arg).ok_or_else(|| Reply::err("value is not an integer or out of range"))
}

fn syntax_error() -> Reply {
    Reply::err("syntax error")
}

/// `SCAN`'s and `HSCAN`'s cursor and options.
struct ScanOptions {
    cursor: u64,
    pattern: Option<Bytes>,
    count: usize,
    kind: Option<TypeFilter>,
}

/// Parses a cursor and options (`TYPE` only where `with_type`).
fn parse_scan_options(
    cursor: &[u8],
    options: &[Bytes],
    with_type: bool,
) -> Result<ScanOptions, Reply> {
    let cursor = std::str::from_utf8(cursor)
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .ok_or_else(|| Reply::err("invalid cursor"))?;
    let mut parsed = ScanOptions {
        cursor,
        pattern: None,
        count: SCAN_COUNT_DEFAULT,
        kind: None,
    };
    let mut options = options.iter();
    while let Some(option) = options.next() {
        let value = options.next().ok_or_else(syntax_error)?;
        match option.to_ascii_uppercase().as_slice() {
            b"MATCH" => parsed.pattern = Some(value.clone()),
            b"COUNT" => match integer(value)? {
                n if n >= 1 => parsed.count = (n as usize).min(SCAN_COUNT_MAX),
                _ => return Err(syntax_error()),
            },
            b"TYPE" if with_type => parsed.kind = Some(type_filter(value)),
            _ => return Err(syntax_error()),
        }
    }
    Ok(parsed)
}

fn parse_scan(args: &[Bytes]) -> Result<Command, Reply> {
    let options = parse_scan_options(&args[0], &args[1..], true)?;
    read(ReadOp::Scan {
        cursor: options.cursor,
        pattern: options.pattern,
        count: options.count,
        kind: options.kind,
    })
}

fn type_filter(name: &[u8]) -> TypeFilter {
    [kv::Kind::String, kv::Kind::Hash]
        .into_iter()
        .find(|kind| name.eq_ignore_ascii_case(kind.name().as_bytes()))
        .map_or(TypeFilter::Other, TypeFilter::Kind)
}

fn parse_hello(args: &[Bytes]) -> Result<Command, Reply> {
    let version = args.first().cloned();
    let mut name = None;
    let mut auth = None;
    let mut options = args.iter().skip(1);
    while let Some(option) = options.next() {
        match option.to_ascii_uppercase().as_slice() {
            b"AUTH" => {
                let user = options.next().ok_or_else(syntax_error)?.clone();
                let password = options.next().ok_or_else(syntax_error)?.clone();
                auth = Some((user, password));
            }
            b"SETNAME" => name = Some(options.next().ok_or_else(syntax_error)?.clone()),
            _ => return Err(syntax_error()),
        }
    }
    Ok(Command::Connection(ConnectionCommand::Hello {
        version,
        auth,
        name,
    }))
}

fn parse_client(args: &[Bytes]) -> Result<Command, Reply> {
    let Some(sub) = args.first() else {
        return Err(Reply::err("wrong number of arguments for 'client' command"));
    };
    let command = match (sub.to_ascii_uppercase().as_slice(), args.len()) {
        (b"SETNAME", 2) => {
            if args[1].iter().any(|&b| b == b' ' || b == b'\n') {
                return Err(Reply::err(
                    "Client names cannot contain spaces, newlines or special characters.",
                ));
            }
            ConnectionCommand::SetName(args[1].clone())
        }
        (b"GETNAME", 1) => ConnectionCommand::GetName,
        (b"ID", 1) => ConnectionCommand::Id,
        (b"LIST", 1) => ConnectionCommand::ClientList,
        (b"SETINFO", 3) => ConnectionCommand::ClientOk,
        _ => {
            return Err(Reply::err(format!(
                "unknown subcommand or wrong number of arguments for '{}'",
                String::from_utf8_lossy(sub)
            )));
        }
    };
    Ok(Command::Connection(command))
}

/// The reply a write's outcome gets.
pub fn write_reply(shape: ReplyShape, outcome: Outcome) -> Reply {
    match (shape, outcome) {
        (_, Outcome::Error(text)) => Reply::Error(text),
        (ReplyShape::Ok, Outcome::Set { written: false, .. }) => Reply::Null,
        (ReplyShape::Ok, _) => Reply::OK,
        (ReplyShape::OldValue, Outcome::Set { old, .. }) => Reply::bulk_or_null(old),
        (ReplyShape::Written, Outcome::Set { written, .. }) => Reply::Integer(i64::from(written)),
        (ReplyShape::Value, Outcome::Value(value)) => Reply::bulk_or_null(value),
        (ReplyShape::Transaction, Outcome::Transaction(None)) => Reply::NullArray,
        (ReplyShape::Transaction, Outcome::Transaction(Some(replies))) => Reply::Array(replies),
        (_, Outcome::Integer(value)) => Reply::Integer(value),
        (shape, outcome) => Reply::err(format!("internal: {outcome:?} for {shape:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Bytes> {
        words
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect()
    }

    fn error_text(words: &[&str]) -> String {
        match parse(&args(words)) {
            Err(Reply::Error(text)) => text,
            other => panic!("{words:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn arity_and_unknown_commands_get_redis_errors() {
        assert_eq!(
            error_text(&["GET"]),
            "ERR wrong number of arguments for 'get' command"
        );
        assert_eq!(
            error_text(&["mset", "a"]),
            "ERR wrong number of arguments for 'mset' command"
        );
        assert!(
            error_text(&["FLY", "away"])
                .starts_with("ERR unknown command 'FLY', with args beginning with: 'away'")
        );
        assert_eq!(
            error_text(&["SET", "k", "v", "NX", "XX"]),
            "ERR syntax error"
        );
        assert_eq!(
            error_text(&["SET", "k", "v", "EX", "0"]),
            "ERR invalid expire time in 'set' command"
        );
        assert_eq!(
            error_text(&["SET", "k", "v", "EX", "1", "PX", "1"]),
            "ERR syntax error"
        );
        assert_eq!(
            error_text(&["EXPIRE", "k", "1", "NX", "GT"]),
            "ERR NX and XX, GT or LT options at the same time are not compatible"
        );
        assert_eq!(
            error_text(&["PEXPIRE", "k", "9223372036854775807"]),
            "ERR invalid expire time in 'pexpire' command"
        );
        assert_eq!(
            error_text(&["INCRBY", "k", "1.5"]),
            "ERR value is not an integer or out of range"
        );
        assert_eq!(
            error_text(&["DECRBY", "k", "-9223372036854775808"]),
            "ERR decrement would overflow"
        );
        assert_eq!(error_text(&["SCAN", "x"]), "ERR invalid cursor");
        assert_eq!(
            error_text(&["SELECT", "1"]),
            "ERR DB index is out of range (drkv has one database)"
        );
        let long_key = "k".repeat(kv::KEY_BYTES_MAX + 1);
        assert!(error_text(&["GET", &long_key]).contains("key is too long"));
    }

    #[test]
    fn the_command_table_lists_exactly_what_is_served() {
        // Names from Redis's command set: served or not.
        let names = [
            "ping",
            "echo",
            "hello",
            "auth",
            "acl",
            "client",
            "command",
            "select",
            "quit",
            "info",
            "get",
            "mget",
            "strlen",
            "getrange",
            "substr",
            "set",
            "setnx",
            "getset",
            "setex",
            "psetex",
            "getex",
            "getdel",
            "setrange",
            "append",
            "incr",
            "decr",
            "incrby",
            "decrby",
            "incrbyfloat",
            "mset",
            "msetnx",
            "cas",
            "del",
            "unlink",
            "exists",
            "touch",
            "type",
            "expire",
            "pexpire",
            "expireat",
            "pexpireat",
            "persist",
            "ttl",
            "pttl",
            "expiretime",
            "pexpiretime",
            "rename",
            "renamenx",
            "copy",
            "keys",
            "scan",
            "randomkey",
            "dbsize",
            "flushdb",
            "flushall",
            "hset",
            "hmset",
            "hsetnx",
            "hdel",
            "hincrby",
            "hget",
            "hmget",
            "hlen",
            "hexists",
            "hstrlen",
            "hgetall",
            "hkeys",
            "hvals",
            "hscan",
            "lpush",
            "rpop",
            "sadd",
            "zadd",
            "subscribe",
            "eval",
            "hincrbyfloat",
            "hrandfield",
            "object",
            "debug",
            "config",
            "lcs",
            "move",
            "swapdb",
            "dump",
            "restore",
            "sort",
            "wait",
            "multi",
            "exec",
            "watch",
        ];
        for name in names {
            let served = table::find(name.as_bytes());
            let unknown = |words: &[&str]| matches!(parse(&args(words)), Err(Reply::Error(e)) if e.starts_with("ERR unknown command"));
            let Some(spec) = served else {
                assert!(
                    unknown(&[name, "a", "b", "c"]),
                    "{name} is served but not in the table"
                );
                continue;
            };
            assert_eq!(spec.name, name);
            let needed = spec.arity.unsigned_abs() as usize;
            // Too few arguments: the arity error, whatever they are.
            if needed >= 2 {
                let words: Vec<&str> = std::iter::once(name)
                    .chain(["1"; 8].into_iter().take(needed - 2))
                    .collect();
                let arity_error = format!("ERR wrong number of arguments for '{name}' command");
                let got = parse(&args(&words));
                assert!(
                    matches!(&got, Err(Reply::Error(e)) if *e == arity_error)
                        || matches!(
                            name,
                            "client" | "acl" | "hello" | "command" | "ping" | "quit" | "info"
                        ),
                    "{name} with {} arguments: {got:?}",
                    needed - 2
                );
            }
            assert!(
                !unknown(&[name, "1", "1", "1"]),
                "{name} is in the table but not served"
            );
        }
        assert_eq!(
            table::reply(&[Bytes::from_static(b"COUNT")]),
            Reply::Integer(table::COMMANDS.len() as i64)
        );
    }

    #[test]
    fn set_options_choose_condition_and_reply() {
        let command = parse(&args(&["set", "k", "v", "nx", "get", "px", "1", "PX", "5"])).unwrap();
        let Command::Write {
            op:
                WriteOp::Set {
                    condition,
                    ttl,
                    get,
                    ..
                },
            shape,
        } = command
        else {
            panic!("{command:?}");
        };
        assert_eq!(
            (condition, ttl, get, shape),
            (
                SetCondition::IfAbsent,
                Ttl::In(5),
                true,
                ReplyShape::OldValue
            )
        );
        assert_eq!(
            write_reply(
                ReplyShape::Ok,
                Outcome::Set {
                    written: false,
                    old: None
                }
            ),
            Reply::Null
        );
        assert_eq!(
            write_reply(
                ReplyShape::Written,
                Outcome::Set {
                    written: true,
                    old: None
                }
            ),
            Reply::Integer(1)
        );
    }
}
