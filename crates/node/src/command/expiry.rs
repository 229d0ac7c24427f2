//! The options of the commands that set a time to live (`SET`, `SETEX`,
//! `PSETEX`, `GETEX`, the `EXPIRE` family), checked as Redis 7 checks
//! them and with its error texts.

use bytes::Bytes;

use super::{Command, ReadOp, ReplyShape, integer, key, syntax_error, write};
use crate::kv::{ExpireCondition, SetCondition, Ttl, VALUE_BYTES_MAX, WriteOp};
use crate::resp::Reply;

/// What a time to live is counted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unit {
    Seconds,
    Millis,
}

/// Whether a given time is relative to now or absolute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Base {
    Now,
    Unix,
}

fn invalid_expire_time(command: &str) -> Reply {
    Reply::err(format!("invalid expire time in '{command}' command"))
}

/// `SET`'s, `SETEX`'s and `GETEX`'s time: positive, and not past the
/// largest time once made absolute.
pub(super) fn positive_ttl(
    arg: &[u8],
    unit: Unit,
    base: Base,
    command: &str,
    now_ms: u64,
) -> Result<Ttl, Reply> {
    let amount = integer(arg)?;
    if amount <= 0 || (unit == Unit::Seconds && amount > i64::MAX / 1000) {
        return Err(invalid_expire_time(command));
    }
    let ms = if unit == Unit::Seconds {
        amount * 1000
    } else {
        amount
    };
    match base {
        Base::Unix => Ok(Ttl::At(ms)),
        Base::Now => {
            // The apply path adds the leader's time; one that would pass
            // the largest time is refused here, by the parser's clock.
            let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
            if ms.checked_add(now).is_none() {
                return Err(invalid_expire_time(command));
            }
            Ok(Ttl::In(ms))
        }
    }
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]`.
pub(super) fn parse_set(args: &[Bytes], now_ms: u64) -> Result<Command, Reply> {
    let mut condition = SetCondition::Always;
    let mut get = false;
    let mut ttl: TimeOption<'_> = None;
    let mut keep = false;
    let mut options = args[2..].iter();
    while let Some(option) = options.next() {
        match option.to_ascii_uppercase().as_slice() {
            b"NX" if condition != SetCondition::IfPresent => condition = SetCondition::IfAbsent,
            b"XX" if condition != SetCondition::IfAbsent => condition = SetCondition::IfPresent,
            b"GET" => get = true,
            b"KEEPTTL" if ttl.is_none() => keep = true,
            // Redis takes the same option twice (the last wins), not two.
            name @ (b"EX" | b"PX" | b"EXAT" | b"PXAT") if same_or_none(&ttl, name) && !keep => {
                let amount = options.next().ok_or_else(syntax_error)?;
                ttl = Some((name.to_vec(), amount));
            }
            _ => return Err(syntax_error()),
        }
    }
    let ttl = match resolve(&ttl, "set", now_ms)? {
        Some(ttl) => ttl,
        None if keep => Ttl::Keep,
        None => Ttl::Clear,
    };
    let shape = if get {
        ReplyShape::OldValue
    } else {
        ReplyShape::Ok
    };
    set(&args[0], &args[1], condition, ttl, get, shape)
}

/// A time option given (`EX`, `PX`, `EXAT`, `PXAT`) and its amount.
type TimeOption<'a> = Option<(Vec<u8>, &'a Bytes)>;

fn same_or_none(ttl: &TimeOption<'_>, name: &[u8]) -> bool {
    ttl.as_ref().is_none_or(|(given, _)| given == name)
}

fn resolve(ttl: &TimeOption<'_>, command: &str, now_ms: u64) -> Result<Option<Ttl>, Reply> {
    let Some((name, amount)) = ttl else {
        return Ok(None);
    };
    let (unit, base) = match name.as_slice() {
        b"EX" => (Unit::Seconds, Base::Now),
        b"PX" => (Unit::Millis, Base::Now),
        b"EXAT" => (Unit::Seconds, Base::Unix),
        _ => (Unit::Millis, Base::Unix),
    };
    positive_ttl(amount, unit, base, command, now_ms).map(Some)
}

/// A `SET` of any form.
pub(super) fn set(
    key_arg: &Bytes,
    value: &Bytes,
    condition: SetCondition,
    ttl: Ttl,
    get: bool,
    shape: ReplyShape,
) -> Result<Command, Reply> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(Reply::err(
            "string exceeds maximum allowed size (proto-max-bulk-len)",
        ));
    }
    let op = WriteOp::Set {
        key: key(key_arg)?,
        value: value.clone(),
        condition,
        ttl,
        get,
    };
    write(op, shape)
}

/// `GETEX key [EX s|PX ms|EXAT s|PXAT ms|PERSIST]`: a read without an
/// option.
pub(super) fn parse_getex(args: &[Bytes], now_ms: u64) -> Result<Command, Reply> {
    let key = key(&args[0])?;
    let mut ttl: TimeOption<'_> = None;
    let mut persist = false;
    let mut options = args[1..].iter();
    while let Some(option) = options.next() {
        match option.to_ascii_uppercase().as_slice() {
            b"PERSIST" if ttl.is_none() => persist = true,
            name @ (b"EX" | b"PX" | b"EXAT" | b"PXAT") if same_or_none(&ttl, name) && !persist => {
                let amount = options.next().ok_or_else(syntax_error)?;
                ttl = Some((name.to_vec(), amount));
            }
            _ => return Err(syntax_error()),
        }
    }
    // Redis checks the time only once it found a string there: a bad one
    // is a read that answers nil, WRONGTYPE or the error.
    let ttl = match resolve(&ttl, "getex", now_ms) {
        Err(Reply::Error(error)) => {
            return Ok(Command::Read(ReadOp::GetOrRefuse { key, error }));
        }
        Err(reply) => return Err(reply),
        Ok(Some(ttl)) => ttl,
        Ok(None) if persist => Ttl::Clear,
        Ok(None) => return Ok(Command::Read(ReadOp::Get(key))),
    };
    write(WriteOp::GetEx { key, ttl }, ReplyShape::Value)
}

/// `EXPIRE key time [NX|XX|GT|LT]` and its siblings (`command` names
/// which): any time, a past one removes the key.
pub(super) fn parse_expire(args: &[Bytes], command: &str, now_ms: u64) -> Result<Command, Reply> {
    let (unit, base) = match command {
        "expire" => (Unit::Seconds, Base::Now),
        "pexpire" => (Unit::Millis, Base::Now),
        "expireat" => (Unit::Seconds, Base::Unix),
        _ => (Unit::Millis, Base::Unix),
    };
    let mut condition = ExpireCondition::default();
    for option in &args[2..] {
        match option.to_ascii_uppercase().as_slice() {
            b"NX" => condition.if_none = true,
            b"XX" => condition.if_some = true,
            b"GT" => condition.if_later = true,
            b"LT" => condition.if_earlier = true,
            _ => {
                return Err(Reply::err(format!(
                    "Unsupported option {}",
                    String::from_utf8_lossy(&option[..option.len().min(64)])
                )));
            }
        }
    }
    if condition.if_none && (condition.if_some || condition.if_later || condition.if_earlier) {
        return Err(Reply::err(
            "NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if condition.if_later && condition.if_earlier {
        return Err(Reply::err(
            "GT and LT options at the same time are not compatible",
        ));
    }
    let amount = integer(&args[1])?;
    let ms = match unit {
        Unit::Seconds => amount
            .checked_mul(1000)
            .ok_or_else(|| invalid_expire_time(command))?,
        Unit::Millis => amount,
    };
    let ttl = match base {
        Base::Unix => Ttl::At(ms),
        Base::Now => {
            let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
            if ms > i64::MAX - now {
                return Err(invalid_expire_time(command));
            }
            Ttl::In(ms)
        }
    };
    let op = WriteOp::Expire {
        key: key(&args[0])?,
        ttl,
        condition,
    };
    write(op, ReplyShape::Integer)
}
