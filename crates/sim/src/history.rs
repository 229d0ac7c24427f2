//! Client histories of drkv's string commands: the commands clients send
//! ([`random_command`]), what each did ([`Done`]), and the check that the
//! whole history is linearizable, key by key ([`check_linearizable`]).
//!
//! Shared by the simulator (virtual time, the engine in one thread) and
//! the robustness suite (real `drkv` processes, wall-clock time), so both
//! send the same commands and judge them by the same specification
//! ([`crate::kv_model`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bytes::Bytes;
use dr_node::resp::Reply;

use crate::kv_model::{Condition, KeyCommand, KeyOp, StringKey};
use crate::linearizability::{Timed, check_history};
use crate::rng::Rng;

/// One command of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Done {
    /// The command as sent.
    pub args: Vec<Bytes>,
    /// The node it was sent to.
    pub node: u64,
    /// The client that sent it.
    pub client: usize,
    /// When it was sent (microseconds on the history's clock).
    pub call_us: u64,
    /// When it was answered, and how; `None`: the outcome is unknown (a
    /// write that may or may not have happened).
    pub ret: Option<(u64, Reply)>,
}

impl Done {
    /// One line: call time, return time and reply, client, node, command.
    pub fn line(&self) -> String {
        let args = self.args.iter().map(text).collect::<Vec<_>>().join(" ");
        let outcome = match &self.ret {
            Some((ret, reply)) => format!("{ret:>9} {}", describe(reply)),
            None => format!("{:>9} unknown", "-"),
        };
        format!(
            "{:>9} {outcome} client {} node {}: {args}",
            self.call_us, self.client, self.node
        )
    }
}

/// Bytes as text (lossy).
pub fn text(bytes: &Bytes) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A reply as a history line shows it.
pub fn describe(reply: &Reply) -> String {
    match reply {
        Reply::Bulk(bytes) => format!("{:?}", text(bytes)),
        Reply::Array(items) => format!(
            "[{}]",
            items.iter().map(describe).collect::<Vec<_>>().join(", ")
        ),
        other => format!("{other:?}"),
    }
}

/// Unique values for writes: `v1`, `v2`, ... (unique within a history,
/// so a read tells which write it saw).
#[derive(Clone, Debug, Default)]
pub struct Values {
    next: u64,
    prefix: String,
}

impl Values {
    /// Values `{prefix}v1`, `{prefix}v2`, ... (a prefix per client keeps
    /// concurrent clients' values distinct).
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            next: 0,
            prefix: prefix.to_owned(),
        }
    }

    fn next(&mut self) -> String {
        self.next += 1;
        format!("{}v{}", self.prefix, self.next)
    }

    /// One of the last few values (for `CAS`'s expected value).
    fn recent(&mut self, rng: &mut Rng) -> String {
        format!(
            "{}v{}",
            self.prefix,
            self.next.saturating_sub(rng.range(0, 4))
        )
    }
}

/// A random command on `keys`: `GET`, `MGET`, `SET` (plain, `NX`, `XX`,
/// `GET`), `SETNX`, `DEL`, `INCR`, `APPEND`, `CAS`, `MSET`.
pub fn random_command(rng: &mut Rng, keys: &[&str], values: &mut Values) -> Vec<Bytes> {
    let key = rng.pick(keys).to_string();
    let other = rng.pick(keys).to_string();
    let words: Vec<String> = match rng.range(0, 16) {
        0..=2 => vec!["GET".into(), key],
        3 => vec!["MGET".into(), key, other],
        4 | 5 => vec!["SET".into(), key, values.next()],
        6 => vec!["SET".into(), key, values.next(), "NX".into()],
        7 => vec!["SET".into(), key, values.next(), "XX".into()],
        8 => vec!["SET".into(), key, values.next(), "GET".into()],
        9 => vec!["SETNX".into(), key, values.next()],
        10 => vec!["DEL".into(), key],
        11 | 12 => vec!["INCR".into(), key],
        13 => vec!["APPEND".into(), key, values.next()],
        14 => {
            let expected = if rng.chance(300_000) {
                String::new()
            } else {
                values.recent(rng)
            };
            vec!["CAS".into(), key, expected, values.next()]
        }
        _ => {
            let (a, b) = (values.next(), values.next());
            vec!["MSET".into(), key, a, other, b]
        }
    };
    words.into_iter().map(Bytes::from).collect()
}

/// Whether every key's history is linearizable; the error names the
/// first key that is not and lists its commands.
pub fn check_linearizable(history: &[Done]) -> Result<(), String> {
    let mut per_key: BTreeMap<String, Vec<(usize, Timed<KeyOp>)>> = BTreeMap::new();
    for (index, done) in history.iter().enumerate() {
        for (key, op) in split(done)? {
            per_key.entry(key).or_default().push((index, op));
        }
    }
    for (key, ops) in per_key {
        let timed: Vec<Timed<KeyOp>> = ops.iter().map(|(_, op)| op.clone()).collect();
        if !check_history::<StringKey>(&timed) {
            let mut lines = String::new();
            for (index, _) in &ops {
                let _ = writeln!(lines, "    {}", history[*index].line());
            }
            return Err(format!(
                "the history of key {key:?} is not linearizable:\n{lines}"
            ));
        }
    }
    Ok(())
}

/// One command of the history as operations on single keys.
fn split(done: &Done) -> Result<Vec<(String, Timed<KeyOp>)>, String> {
    let args: Vec<String> = done.args.iter().map(text).collect();
    let (ret, reply) = match &done.ret {
        Some((ret, reply)) => (Some(*ret), Some(reply.clone())),
        None => (None, None),
    };
    let timed = |command: KeyCommand, reply: Option<Reply>| Timed {
        op: KeyOp { command, reply },
        call: done.call_us,
        ret,
    };
    let bytes = |s: &String| Bytes::from(s.clone());
    let set = |value: &String, condition, get, written_reply| KeyCommand::Set {
        value: bytes(value),
        condition,
        get,
        written_reply,
    };
    let ops = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["GET", key] => vec![(key.to_string(), timed(KeyCommand::Get, reply))],
        ["SET", key, _] => vec![(
            key.to_string(),
            timed(set(&args[2], Condition::Always, false, false), reply),
        )],
        ["SET", key, _, flag] => {
            let (condition, get) = match *flag {
                "NX" => (Condition::IfAbsent, false),
                "XX" => (Condition::IfPresent, false),
                _ => (Condition::Always, true),
            };
            vec![(
                key.to_string(),
                timed(set(&args[2], condition, get, false), reply),
            )]
        }
        ["SETNX", key, _] => vec![(
            key.to_string(),
            timed(set(&args[2], Condition::IfAbsent, false, true), reply),
        )],
        ["DEL", key] => vec![(key.to_string(), timed(KeyCommand::Del, reply))],
        ["INCR", key] => vec![(key.to_string(), timed(KeyCommand::IncrBy(1), reply))],
        ["APPEND", key, _] => vec![(
            key.to_string(),
            timed(KeyCommand::Append(bytes(&args[2])), reply),
        )],
        ["CAS", key, _, _] => vec![(
            key.to_string(),
            timed(
                KeyCommand::Cas {
                    expected: bytes(&args[2]),
                    new: bytes(&args[3]),
                },
                reply,
            ),
        )],
        ["MSET", rest @ ..] => {
            // Two pairs may name one key: the later value wins, as one
            // write of the key.
            let mut last: BTreeMap<&str, usize> = BTreeMap::new();
            for (i, key) in rest.iter().enumerate().step_by(2) {
                last.insert(key, i + 2);
            }
            last.into_iter()
                .map(|(key, value)| {
                    let command = set(&args[value], Condition::Always, false, false);
                    (key.to_string(), timed(command, reply.clone()))
                })
                .collect()
        }
        ["MGET", keys @ ..] => {
            let replies: Vec<Option<Reply>> = match &reply {
                Some(Reply::Array(items)) if items.len() == keys.len() => {
                    items.iter().cloned().map(Some).collect()
                }
                _ => vec![None; keys.len()],
            };
            keys.iter()
                .zip(replies)
                .map(|(key, reply)| (key.to_string(), timed(KeyCommand::Get, reply)))
                .collect()
        }
        other => return Err(format!("the history checker does not model {other:?}")),
    };
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(args: &[&str], call_us: u64, ret: Option<(u64, Reply)>) -> Done {
        Done {
            args: args.iter().map(|a| Bytes::from(a.to_string())).collect(),
            node: 1,
            client: 0,
            call_us,
            ret,
        }
    }

    #[test]
    fn a_lost_acknowledged_write_fails_the_check() {
        let mut history = vec![
            done(&["SET", "a", "v1"], 0, Some((1, Reply::OK))),
            done(
                &["MGET", "a", "b"],
                2,
                Some((3, Reply::Array(vec![Reply::bulk("v1"), Reply::Null]))),
            ),
        ];
        assert_eq!(check_linearizable(&history), Ok(()));
        history.push(done(&["GET", "a"], 4, Some((5, Reply::Null))));
        let error = check_linearizable(&history).unwrap_err();
        assert!(error.contains("key \"a\""), "{error}");
        assert!(error.contains("SET a v1"), "{error}");
    }

    #[test]
    fn unmodelled_commands_are_an_error_not_a_pass() {
        let history = [done(&["FLUSHALL"], 0, Some((1, Reply::OK)))];
        assert!(check_linearizable(&history).is_err());
    }

    #[test]
    fn random_commands_are_all_modelled() {
        let mut rng = Rng::new(1);
        let mut values = Values::with_prefix("c1");
        for _ in 0..1000 {
            let args = random_command(&mut rng, &["a", "b"], &mut values);
            let one = Done {
                args,
                node: 1,
                client: 0,
                call_us: 0,
                ret: None,
            };
            assert!(split(&one).is_ok(), "{}", one.line());
        }
    }
}
