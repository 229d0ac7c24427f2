//! The executor: carries a parsed command to the engine (which forwards
//! a follower's writes to the leader over the peer transport) and brings
//! the reply back, retrying what certainly did not happen; and `INFO`.
//! The connections themselves are in [`crate::connection`].

use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::clock::NodeClock;
use crate::command::{Command, ReadOp};
use crate::kv;
use crate::metrics::bump;
use crate::reads;
use crate::resp::{Limits, Reply};
use crate::runtime::{EngineHandle, Request, error_reply, uncertain_reply};
use dr_engine::{EngineError, Retry as EngineRetry, Uncertain};

/// Bounds on clients.
#[derive(Clone, Copy, Debug)]
pub struct ClientLimits {
    /// Request size and argument count.
    pub request: Limits,
    /// Connections served at once; more are refused with an error.
    pub connections_max: usize,
    /// How long a command may wait for a leader and its commit.
    pub request_timeout: Duration,
    /// How long a started request may take to arrive in full (slowloris).
    pub partial_request_timeout: Duration,
    /// How long a connection may sit idle (zero: forever).
    pub idle_timeout: Duration,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            request: Limits::default(),
            connections_max: 10_000,
            request_timeout: Duration::from_secs(5),
            partial_request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::ZERO,
        }
    }
}

/// Carries commands to the engine (which, on a follower, forwards writes
/// to the leader over the peer transport).
#[derive(Clone, Debug)]
pub struct Executor {
    engine: EngineHandle,
    limits: ClientLimits,
}

/// A command on its way; [`Executor::finish`] waits for its reply.
#[derive(Debug)]
pub enum Started {
    /// Answered already.
    Done(Reply),
    /// With the engine.
    Local {
        /// The engine's answer.
        answer: oneshot::Receiver<Result<Reply, EngineError>>,
        /// For a retry.
        retry: Retry,
    },
}

/// What a retry needs.
#[derive(Debug)]
pub struct Retry {
    command: Command,
    deadline: Instant,
}

const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// One timer for a connection's command deadlines, armed for a deadline
/// and re-armed only when it fires.
///
/// tokio's timer wakes the thread parked on its driver whenever an entry
/// is registered earlier than the wake-up that thread parked for; a fresh
/// timeout per command did that for most commands (measured: about 60%
/// of the worker threads' `eventfd` writes under a write load, each one a
/// wake-up of an idle worker for nothing). Commands answered before their
/// deadline never touch the timer wheel here: the timer, armed for an
/// earlier command's deadline, fires about once per request timeout and
/// is then re-armed for the command waiting, if it has not passed.
#[derive(Debug)]
pub struct DeadlineTimer {
    sleep: Pin<Box<Sleep>>,
}

impl Default for DeadlineTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl DeadlineTimer {
    /// A timer not armed yet (the first wait arms it).
    pub fn new() -> Self {
        // Never reached: the first wait's deadline is earlier.
        const UNARMED: Duration = Duration::from_secs(365 * 24 * 3600);
        Self {
            sleep: Box::pin(tokio::time::sleep_until(Instant::now() + UNARMED)),
        }
    }

    /// Returns once `deadline` has passed, never before.
    pub async fn wait_until(&mut self, deadline: Instant) {
        if self.sleep.deadline() > deadline {
            self.sleep.as_mut().reset(deadline);
        }
        loop {
            self.sleep.as_mut().await;
            if Instant::now() >= deadline {
                return;
            }
            // Armed for an earlier command: now for this one.
            self.sleep.as_mut().reset(deadline);
        }
    }
}

impl Executor {
    /// An executor for this engine.
    pub fn new(engine: EngineHandle, limits: ClientLimits) -> Self {
        Self { engine, limits }
    }

    /// The engine it talks to.
    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    /// The client limits it applies.
    pub fn limits(&self) -> &ClientLimits {
        &self.limits
    }

    /// Runs one command to its reply (the admin API's and the node's own
    /// requests: membership, leadership, its member record).
    pub async fn submit(&self, command: Command) -> Reply {
        let started = self.start(command);
        self.finish(started).await
    }

    /// Starts a data command now (connection commands are the
    /// connection's).
    pub fn start(&self, command: Command) -> Started {
        let retry = Retry {
            command,
            deadline: Instant::now() + self.limits.request_timeout,
        };
        self.start_retry(retry)
    }

    fn start_retry(&self, retry: Retry) -> Started {
        if let Command::Read(op) = &retry.command
            && let Some(reply) = self.read_on_lease(op)
        {
            return Started::Done(reply);
        }
        let (answer_tx, answer) = oneshot::channel();
        let request = match &retry.command {
            Command::Write { op, shape } => Request::Write {
                op: op.clone(),
                shape: *shape,
                answer: answer_tx,
            },
            Command::Read(op) => Request::Read {
                op: op.clone(),
                answer: answer_tx,
            },
            Command::ConfChange(op) => Request::ConfChange {
                op: *op,
                answer: answer_tx,
            },
            Command::TransferLeader(target) => Request::TransferLeader {
                target: *target,
                answer: answer_tx,
            },
            Command::Info(sections) => return Started::Done(self.info(sections)),
            Command::Connection(_) | Command::Transaction(_) => {
                return Started::Done(Reply::err(
                    "internal: a connection command reached the executor",
                ));
            }
        };
        if self.engine.try_submit(request).is_err() {
            return Started::Done(Reply::Error("TRYAGAIN the node is overloaded".into()));
        }
        Started::Local { answer, retry }
    }

    /// Answers a single-key read from the store on this thread, when this
    /// node leads with a lease published for connections (see
    /// `LeaseGate`); `None` sends it the usual way, through the engine.
    /// Reads of several keys take the engine's way: they must see one
    /// state, and separate point reads could straddle a write.
    fn read_on_lease(&self, op: &ReadOp) -> Option<Reply> {
        let key = match op {
            ReadOp::Get(key) | ReadOp::Strlen(key) => key,
            _ => return None,
        };
        let gate = &self.engine.lease;
        if !gate.open() {
            return None;
        }
        let stored = self.engine.reader.get(&kv::user_key(key)).ok()?;
        // Still the only leader after the read: it read a state no
        // acknowledged write is missing from.
        if !gate.still_valid() {
            return None;
        }
        let record = reads::live_record(stored, NodeClock.unix_ms()).ok()?;
        bump(&self.engine.metrics.engine.lease_reads);
        Some(match reads::string_value(record) {
            Err(error) => error,
            Ok(value) if matches!(op, ReadOp::Strlen(_)) => {
                Reply::Integer(value.map_or(0, |v| v.len() as i64))
            }
            Ok(value) => Reply::bulk_or_null(value),
        })
    }

    /// Waits for a started command's reply, retrying what certainly did
    /// not happen until the deadline.
    pub async fn finish(&self, started: Started) -> Reply {
        self.finish_timed(started, &mut DeadlineTimer::new()).await
    }

    /// [`Executor::finish`] with the caller's deadline timer (a
    /// connection keeps one for all its commands).
    pub async fn finish_timed(&self, mut started: Started, timer: &mut DeadlineTimer) -> Reply {
        loop {
            started = match started {
                Started::Done(reply) => return reply,
                Started::Local { answer, retry } => {
                    let answered = tokio::select! {
                        biased;
                        answered = answer => answered,
                        () = timer.wait_until(retry.deadline) => {
                            return timed_out(&retry.command);
                        }
                    };
                    match answered {
                        Ok(Ok(reply)) => return reply,
                        Ok(Err(error)) => match self.after_error(error, retry).await {
                            Ok(next) => next,
                            Err(reply) => return reply,
                        },
                        // The engine dropped the request: it is stopping.
                        Err(_) => return stopping(&retry.command),
                    }
                }
            };
        }
    }

    async fn after_error(&self, error: EngineError, retry: Retry) -> Result<Started, Reply> {
        if !error.is_retryable() {
            return Err(error_reply(&error));
        }
        match self.pause(retry).await {
            Some(retry) => Ok(self.start_retry(retry)),
            None => Err(error_reply(&error)),
        }
    }

    /// Waits a moment before a retry; `None` when the deadline is too
    /// close.
    async fn pause(&self, retry: Retry) -> Option<Retry> {
        if Instant::now() + RETRY_PAUSE >= retry.deadline {
            return None;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
        Some(retry)
    }

    /// `INFO`: the node's state in Redis's `key:value` sections; only
    /// `sections` when any are named (`all`, `everything` and `default`
    /// name every one).
    pub fn info(&self, sections: &[String]) -> Reply {
        let status = self.engine.status.snapshot();
        let list = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let text = format!(
            "# Server\r\nredis_version:7.2.0\r\ndrkv_version:{}\r\nnode_id:{}\r\ncluster_id:{}\r\n\r\n\
             # Replication\r\nrole:{}\r\nraft_role:{}\r\nterm:{}\r\nleader_id:{}\r\nleader_client_addr:{}\r\n\
             commit_index:{}\r\napplied_index:{}\r\nlast_index:{}\r\nfirst_index:{}\r\n\
             snapshot_index:{}\r\n\
             voters:{}\r\nlearners:{}\r\n\r\n# Keyspace\r\ndb0:keys={}\r\n\r\n# Stats\r\n\
             connected_clients:{}\r\ntotal_commands_processed:{}\r\n",
            env!("CARGO_PKG_VERSION"),
            status.id,
            status.cluster_id,
            if status.role.is_leader() {
                "master"
            } else {
                "slave"
            },
            status.role.as_str(),
            status.term,
            status.leader.map_or_else(String::new, |id| id.to_string()),
            status.leader_client_addr.unwrap_or_default(),
            status.commit_index,
            status.applied_index,
            status.last_index,
            status.first_index,
            status.snapshot_index,
            list(&status.voters),
            list(&status.learners),
            status.keys,
            self.engine.metrics.clients_connected.load(Relaxed),
            self.engine.metrics.commands.load(Relaxed),
        );
        Reply::bulk(info_sections(&text, sections))
    }
}

/// The named sections of an `INFO` text (each starts with `# Name` and
/// ends with a blank line); all of it when none, or `all`, `everything`
/// or `default`, is named.
fn info_sections(text: &str, sections: &[String]) -> String {
    let everything = ["all", "everything", "default"];
    if sections.is_empty() || sections.iter().any(|s| everything.contains(&s.as_str())) {
        return text.to_owned();
    }
    text.split_inclusive("\r\n\r\n")
        .filter(|section| {
            let name = section
                .trim_start_matches("# ")
                .split("\r\n")
                .next()
                .unwrap_or_default();
            sections
                .iter()
                .any(|wanted| wanted.eq_ignore_ascii_case(name))
        })
        .collect()
}

/// Whether a command may have changed the cluster's state.
fn changes_state(command: &Command) -> bool {
    matches!(
        command,
        Command::Write { .. } | Command::ConfChange(_) | Command::TransferLeader(_)
    )
}

fn timed_out(command: &Command) -> Reply {
    if changes_state(command) {
        uncertain_reply(&"timed out waiting for the commit")
    } else {
        Reply::Error("TRYAGAIN timed out (no leader, or no quorum)".into())
    }
}

fn stopping(command: &Command) -> Reply {
    if changes_state(command) {
        error_reply(&EngineError::Uncertain(Uncertain::ShuttingDown))
    } else {
        error_reply(&EngineError::TryAgain(EngineRetry::ShuttingDown))
    }
}

#[cfg(test)]
mod tests {
    use super::{DeadlineTimer, Duration, Instant, info_sections};

    #[test]
    fn info_keeps_only_the_sections_asked_for() {
        let text = "# Server\r\na:1\r\n\r\n# Replication\r\nrole:master\r\n\r\n# Stats\r\nb:2\r\n";
        let only = |names: &[&str]| {
            info_sections(
                text,
                &names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            only(&["replication"]),
            "# Replication\r\nrole:master\r\n\r\n"
        );
        assert_eq!(
            only(&["stats", "server"]),
            "# Server\r\na:1\r\n\r\n# Stats\r\nb:2\r\n"
        );
        assert_eq!(only(&[]), text);
        assert_eq!(only(&["all"]), text);
        assert_eq!(only(&["nothing"]), "");
    }

    /// Waits on `timer` until `deadline`; returns how long it took.
    async fn waited(timer: &mut DeadlineTimer, deadline: Instant) -> Duration {
        let started = Instant::now();
        timer.wait_until(deadline).await;
        assert!(Instant::now() >= deadline, "returned before its deadline");
        started.elapsed()
    }

    #[tokio::test]
    async fn a_deadline_timer_never_returns_early_and_follows_later_deadlines() {
        let mut timer = DeadlineTimer::new();
        // A command answered in time: the timer stays armed for it.
        let first = Instant::now() + Duration::from_millis(200);
        let answered = tokio::time::timeout(Duration::from_millis(10), timer.wait_until(first));
        assert!(answered.await.is_err(), "the deadline had not come");
        // The next command's deadline is later than the armed one: the
        // timer fires at the earlier one and waits on to this one.
        let second = first + Duration::from_millis(300);
        let took = waited(&mut timer, second).await;
        assert!(took >= Duration::from_millis(450), "{took:?}");
        // Fired and not re-armed: a later deadline still waits in full.
        let third = Instant::now() + Duration::from_millis(100);
        waited(&mut timer, third).await;
    }

    #[tokio::test]
    async fn a_deadline_earlier_than_the_armed_one_is_kept() {
        let mut timer = DeadlineTimer::new();
        let far = Instant::now() + Duration::from_secs(60);
        let armed = tokio::time::timeout(Duration::from_millis(10), timer.wait_until(far));
        assert!(armed.await.is_err());
        // Not the minute the timer was armed for (a slow machine takes
        // longer than 50 ms, never a minute).
        let near = Instant::now() + Duration::from_millis(50);
        let took = waited(&mut timer, near).await;
        assert!(took < Duration::from_secs(30), "{took:?}");
    }
}
