//! A connection's transaction: `MULTI` queues commands (refusing at once
//! only what Redis refuses at queue time: unknown commands, wrong
//! arities, missing permissions, which make `EXEC` abort), `WATCH` reads
//! the keys' versions linearizably, and `EXEC` sends every queued data
//! command as one write — one log entry, applied atomically on every node
//! and forwarded to the leader as one unit — with the watched versions.
//! Connection commands queued (`PING`, `ECHO`, `CLIENT ID`, ...) are
//! answered by the connection in their places of `EXEC`'s reply.

use bytes::Bytes;

use super::Connection;
use crate::auth::Permission;
use crate::command::{self, Command, ReadOp, ReplyShape, TxCommand, table};
use crate::kv::WriteOp;
use crate::metrics::bump;
use crate::resp::Reply;
use crate::server::Started;

const EXECABORT: &str = "EXECABORT Transaction discarded because of previous errors.";

/// The most commands one transaction may queue.
pub(super) const QUEUED_MAX: usize = 100_000;
/// The most keys one connection may watch.
pub(super) const WATCHED_MAX: usize = 10_000;

/// What a connection keeps of its transaction.
#[derive(Debug, Default)]
pub(super) struct TxState {
    /// `Some` between `MULTI` and `EXEC` or `DISCARD`.
    queue: Option<Queue>,
    /// Watched keys and the versions `WATCH` read (0: absent).
    watched: Vec<(Bytes, u64)>,
}

#[derive(Debug, Default)]
struct Queue {
    items: Vec<Queued>,
    /// A command was refused at queue time: `EXEC` aborts.
    dirty: bool,
}

#[derive(Debug)]
enum Queued {
    /// A data command's arguments: part of the write.
    Data(Vec<Bytes>),
    /// A connection command's arguments: answered by the connection.
    Local(Vec<Bytes>),
}

/// What the connection does with a request, given its transaction.
pub(super) enum Route {
    /// Not the transaction's business: the usual path.
    Normal,
    /// Answered now.
    Answer(Reply),
    /// `WATCH`: read these keys' versions once what came before is
    /// answered.
    Watch(Vec<Bytes>),
    /// `EXEC`: started.
    Exec(ExecStarted),
}

/// A started `EXEC`: the write (or its answer), and the connection
/// commands' replies in their places.
#[derive(Debug)]
pub(super) struct ExecStarted {
    write: Started,
    locals: Vec<Option<Reply>>,
}

impl Connection {
    /// Routes a request through the transaction state.
    pub(super) fn route(&mut self, arguments: &[Bytes]) -> Route {
        let name = arguments[0].to_ascii_lowercase();
        let in_multi = self.tx.queue.is_some();
        let is_tx = matches!(
            name.as_slice(),
            b"multi" | b"exec" | b"discard" | b"watch" | b"unwatch"
        );
        if !in_multi && !is_tx {
            return Route::Normal;
        }
        if in_multi
            && !matches!(
                name.as_slice(),
                b"exec" | b"discard" | b"multi" | b"watch" | b"quit"
            )
        {
            return Route::Answer(self.enqueue(arguments));
        }
        if name == b"quit" {
            return Route::Normal;
        }
        let parsed = match self.admit(arguments) {
            Ok(Command::Transaction(tx)) => tx,
            Ok(_) => unreachable!("transaction commands parse as such"),
            Err(reply) => {
                if let Some(queue) = &mut self.tx.queue {
                    // Refused (arity, permission): as at queue time.
                    queue.dirty = true;
                }
                return Route::Answer(reply);
            }
        };
        match parsed {
            TxCommand::Multi if in_multi => {
                Route::Answer(Reply::err("MULTI calls can not be nested"))
            }
            TxCommand::Multi => {
                self.tx.queue = Some(Queue::default());
                Route::Answer(Reply::OK)
            }
            TxCommand::Watch(_) if in_multi => {
                Route::Answer(Reply::err("WATCH inside MULTI is not allowed"))
            }
            TxCommand::Watch(keys) => {
                if self.tx.watched.len() + keys.len() > WATCHED_MAX {
                    return Route::Answer(Reply::err(format!(
                        "a connection watches at most {WATCHED_MAX} keys"
                    )));
                }
                Route::Watch(keys)
            }
            TxCommand::Unwatch => {
                self.tx.watched.clear();
                Route::Answer(Reply::OK)
            }
            TxCommand::Discard => match self.tx.queue.take() {
                None => Route::Answer(Reply::err("DISCARD without MULTI")),
                Some(_) => {
                    self.tx.watched.clear();
                    Route::Answer(Reply::OK)
                }
            },
            TxCommand::Exec => match self.tx.queue.take() {
                None => Route::Answer(Reply::err("EXEC without MULTI")),
                Some(queue) => {
                    let watched = std::mem::take(&mut self.tx.watched);
                    if queue.dirty {
                        return Route::Answer(Reply::Error(EXECABORT.into()));
                    }
                    Route::Exec(self.exec(queue, watched))
                }
            },
        }
    }

    /// Queues a command inside `MULTI`: `+QUEUED`, or the refusal (which
    /// makes `EXEC` abort).
    fn enqueue(&mut self, arguments: &[Bytes]) -> Reply {
        let refusal = self.queue_refusal(arguments);
        let queue = self.tx.queue.as_mut().expect("in MULTI");
        if let Some(refusal) = refusal {
            queue.dirty = true;
            return refusal;
        }
        if queue.items.len() >= QUEUED_MAX {
            queue.dirty = true;
            return Reply::err(format!(
                "a transaction queues at most {QUEUED_MAX} commands"
            ));
        }
        let local = table::find(&arguments[0]).is_some_and(|spec| {
            spec.keys == (0, 0, 0) && !spec.write && !is_keyspace_read(spec.name)
        });
        queue.items.push(if local {
            Queued::Local(arguments.to_vec())
        } else {
            Queued::Data(arguments.to_vec())
        });
        Reply::Simple("QUEUED")
    }

    /// What Redis refuses at queue time: a command it does not know, a
    /// wrong number of arguments, a client not authenticated or not
    /// permitted.
    fn queue_refusal(&self, arguments: &[Bytes]) -> Option<Reply> {
        let Some(spec) = table::find(&arguments[0]) else {
            // The parser's own text for an unknown command.
            return command::parse(arguments).err();
        };
        let given = arguments.len() as i64;
        let arity_ok = if spec.arity >= 0 {
            given == spec.arity
        } else {
            given >= -spec.arity
        };
        if !arity_ok {
            return Some(Reply::err(format!(
                "wrong number of arguments for '{}' command",
                spec.name
            )));
        }
        let Some(user) = &self.user else {
            return Some(Reply::Error(super::NOAUTH.into()));
        };
        let needed = if spec.write {
            Permission::Write
        } else if spec.keys != (0, 0, 0) || is_keyspace_read(spec.name) {
            Permission::Read
        } else {
            return None;
        };
        if user.permissions.allow(needed) {
            return None;
        }
        bump(&self.executor.engine().metrics.commands_denied);
        Some(Reply::Error(format!(
            "NOPERM User {} has no permissions to run the '{}' command",
            user.name, spec.name
        )))
    }

    fn exec(&mut self, queue: Queue, watched: Vec<(Bytes, u64)>) -> ExecStarted {
        let mut commands = Vec::new();
        let mut locals = Vec::with_capacity(queue.items.len());
        for item in queue.items {
            match item {
                Queued::Data(arguments) => {
                    commands.push(arguments);
                    locals.push(None);
                }
                Queued::Local(arguments) => {
                    let (started, _) = self.start(self.admit(&arguments));
                    let reply = match started {
                        Started::Done(reply) => reply,
                        Started::Local { .. } => {
                            Reply::err("internal: a connection command went to the engine")
                        }
                    };
                    locals.push(Some(reply));
                }
            }
        }
        let write = if commands.is_empty() && watched.is_empty() {
            Started::Done(Reply::Array(Vec::new()))
        } else {
            let op = WriteOp::Transaction { watched, commands };
            self.executor.start(Command::Write {
                op,
                shape: ReplyShape::Transaction,
            })
        };
        ExecStarted { write, locals }
    }

    /// `WATCH`: the keys' versions, read like any read; `+OK` once known.
    pub(super) async fn watch(&mut self, keys: Vec<Bytes>) -> Reply {
        let reply = self
            .executor
            .submit(Command::Read(ReadOp::Versions(keys.clone())))
            .await;
        match reply {
            Reply::Array(versions) if versions.len() == keys.len() => {
                for (key, version) in keys.into_iter().zip(versions) {
                    let Reply::Integer(version) = version else {
                        return Reply::err("internal: a version that is not a number");
                    };
                    self.tx.watched.push((key, version as u64));
                }
                Reply::OK
            }
            error => error,
        }
    }

    /// `EXEC`'s reply: the write's replies with the connection commands'
    /// in their places.
    pub(super) async fn finish_exec(&mut self, started: ExecStarted) -> Reply {
        let reply = self
            .executor
            .finish_timed(started.write, &mut self.deadlines)
            .await;
        let Reply::Array(replies) = reply else {
            // Aborted (a watched key changed), or not done / uncertain.
            return reply;
        };
        let mut replies = replies.into_iter();
        let merged: Vec<Reply> = started
            .locals
            .into_iter()
            .map(|local| local.or_else(|| replies.next()).unwrap_or(Reply::Null))
            .collect();
        Reply::Array(merged)
    }
}

/// Keyless reads of the data (they go in the write, to see its state).
fn is_keyspace_read(name: &str) -> bool {
    matches!(name, "dbsize" | "keys" | "scan" | "randomkey")
}
