//! The sequential specification of drkv's string commands, per key, for
//! the linearizability checker: what each command does to a key's value
//! and what it answers (Redis's replies, as `drkv` gives them).
//!
//! Multi-key commands are split per key (`MSET` into one `SET` per key,
//! `MGET` into one `GET` per key): each key is checked as its own object,
//! so the atomicity *across* keys of `MSET` is not checked here (the
//! convergence check compares whole states).

use bytes::Bytes;
use dr_node::resp::Reply;

use crate::linearizability::Model;

/// When a `SET` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Always.
    Always,
    /// `NX`.
    IfAbsent,
    /// `XX`.
    IfPresent,
}

/// What a command does to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyCommand {
    /// `SET key value [NX|XX] [GET]`, `SETNX` (`written_reply`).
    Set {
        /// The value.
        value: Bytes,
        /// When it writes.
        condition: Condition,
        /// `GET`: answers the old value.
        get: bool,
        /// `SETNX`: answers 1 or 0.
        written_reply: bool,
    },
    /// `GET`.
    Get,
    /// `DEL` of this one key.
    Del,
    /// `INCRBY` (and `INCR`, `DECR`).
    IncrBy(i64),
    /// `APPEND`.
    Append(Bytes),
    /// `CAS key expected new` (empty `expected`: absent).
    Cas {
        /// The value it must have.
        expected: Bytes,
        /// The value it gets.
        new: Bytes,
    },
}

/// A command on one key with the reply its client saw (`None`: unknown).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyOp {
    /// The command.
    pub command: KeyCommand,
    /// The reply seen.
    pub reply: Option<Reply>,
}

/// The model: a key's value (`None`: absent).
pub struct StringKey;

fn parse_i64(bytes: &[u8]) -> Option<i64> {
    dr_node::kv::parse_integer(bytes)
}

/// What `command` does to `value`, and what it answers.
pub fn apply(value: &Option<Bytes>, command: &KeyCommand) -> (Option<Bytes>, Reply) {
    match command {
        KeyCommand::Set {
            value: new,
            condition,
            get,
            written_reply,
        } => {
            let written = match condition {
                Condition::Always => true,
                Condition::IfAbsent => value.is_none(),
                Condition::IfPresent => value.is_some(),
            };
            let reply = if *get {
                Reply::bulk_or_null(value.as_ref().map(|v| v.to_vec()))
            } else if *written_reply {
                Reply::Integer(i64::from(written))
            } else if written {
                Reply::OK
            } else {
                Reply::Null
            };
            let after = if written {
                Some(new.clone())
            } else {
                value.clone()
            };
            (after, reply)
        }
        KeyCommand::Get => (
            value.clone(),
            Reply::bulk_or_null(value.as_ref().map(|v| v.to_vec())),
        ),
        KeyCommand::Del => (None, Reply::Integer(i64::from(value.is_some()))),
        KeyCommand::IncrBy(delta) => {
            let current = match value {
                None => Some(0),
                Some(bytes) => parse_i64(bytes),
            };
            let Some(current) = current else {
                return (
                    value.clone(),
                    Reply::Error("ERR value is not an integer or out of range".into()),
                );
            };
            match current.checked_add(*delta) {
                Some(new) => (Some(Bytes::from(new.to_string())), Reply::Integer(new)),
                None => (
                    value.clone(),
                    Reply::Error("ERR increment or decrement would overflow".into()),
                ),
            }
        }
        KeyCommand::Append(tail) => {
            let mut joined = value.as_ref().map(|v| v.to_vec()).unwrap_or_default();
            joined.extend_from_slice(tail);
            let len = joined.len() as i64;
            (Some(Bytes::from(joined)), Reply::Integer(len))
        }
        KeyCommand::Cas { expected, new } => {
            let matches = match value {
                None => expected.is_empty(),
                Some(v) => v == expected && !expected.is_empty(),
            };
            let after = if matches {
                Some(new.clone())
            } else {
                value.clone()
            };
            (after, Reply::Integer(i64::from(matches)))
        }
    }
}

impl Model for StringKey {
    type State = Option<Bytes>;
    type Op = KeyOp;

    fn init() -> Option<Bytes> {
        None
    }

    fn step(state: &Option<Bytes>, op: &KeyOp) -> Option<Option<Bytes>> {
        let (after, reply) = apply(state, &op.command);
        match &op.reply {
            Some(seen) if *seen != reply => None,
            _ => Some(after),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linearizability::{Timed, check_history};

    fn op(command: KeyCommand, reply: Option<Reply>, call: u64, ret: Option<u64>) -> Timed<KeyOp> {
        Timed {
            op: KeyOp { command, reply },
            call,
            ret,
        }
    }

    fn set(value: &'static str) -> KeyCommand {
        KeyCommand::Set {
            value: Bytes::from_static(value.as_bytes()),
            condition: Condition::Always,
            get: false,
            written_reply: false,
        }
    }

    #[test]
    fn increments_and_reads_must_agree() {
        let good = [
            op(KeyCommand::IncrBy(1), Some(Reply::Integer(1)), 0, Some(1)),
            op(KeyCommand::IncrBy(1), Some(Reply::Integer(2)), 2, Some(3)),
            op(KeyCommand::Get, Some(Reply::bulk("2")), 4, Some(5)),
        ];
        assert!(check_history::<StringKey>(&good));
        let mut lost = good.to_vec();
        lost[2] = op(KeyCommand::Get, Some(Reply::bulk("1")), 4, Some(5));
        assert!(!check_history::<StringKey>(&lost), "a lost increment");
    }

    #[test]
    fn an_unknown_write_may_or_may_not_have_happened() {
        for seen in [Reply::Null, Reply::bulk("a")] {
            let history = [
                op(set("a"), None, 0, None),
                op(KeyCommand::Get, Some(seen), 5, Some(6)),
            ];
            assert!(check_history::<StringKey>(&history));
        }
        let history = [
            op(set("a"), None, 0, None),
            op(KeyCommand::Get, Some(Reply::bulk("a")), 5, Some(6)),
            op(KeyCommand::Get, Some(Reply::Null), 7, Some(8)),
        ];
        assert!(!check_history::<StringKey>(&history), "seen, then gone");
    }

    #[test]
    fn conditional_commands_answer_as_redis_does() {
        let absent: Option<Bytes> = None;
        let nx = KeyCommand::Set {
            value: Bytes::from_static(b"v"),
            condition: Condition::IfAbsent,
            get: false,
            written_reply: true,
        };
        assert_eq!(apply(&absent, &nx).1, Reply::Integer(1));
        assert_eq!(
            apply(&Some(Bytes::from_static(b"x")), &nx).1,
            Reply::Integer(0)
        );
        let cas = KeyCommand::Cas {
            expected: Bytes::new(),
            new: Bytes::from_static(b"n"),
        };
        assert_eq!(apply(&absent, &cas).1, Reply::Integer(1));
        let incr = apply(&Some(Bytes::from_static(b"abc")), &KeyCommand::IncrBy(1)).1;
        assert!(matches!(incr, Reply::Error(_)));
        assert_eq!(
            apply(&absent, &KeyCommand::Append(Bytes::from_static(b"xy"))).1,
            Reply::Integer(2)
        );
    }
}
