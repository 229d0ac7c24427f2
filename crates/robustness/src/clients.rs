//! The suite's Redis clients: one command in flight each, never resent.
//!
//! A client that gets no answer (a dropped connection, a timeout, a node
//! killed with the command inside) records the command with an unknown
//! outcome when it writes, and leaves it out when it only reads. A
//! `TRYAGAIN` answer means "certainly not done": left out too. Any other
//! error the specification does not give (a refusal while a node stops,
//! `UNCERTAIN`) is an unknown outcome, and counted by its first word so
//! surprises show in the report.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dr_node::resp::{self, Limits, Reply};
use dr_sim::history::{Done, Values, random_command};
use dr_sim::rng::Rng;

/// How long a client waits for an answer: longer than the server's own
/// request timeout (5 s), so the server's verdict usually arrives.
const REPLY_TIMEOUT: Duration = Duration::from_secs(8);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after "not done" or a refused connection.
const BACKOFF: Duration = Duration::from_millis(20);
/// The hot keys most commands touch, and the cold ones.
pub(crate) const KEYS: &[&str] = &[
    "hot-a", "hot-b", "hot-c", "hot-d", "cold-0", "cold-1", "cold-2", "cold-3", "cold-4", "cold-5",
    "cold-6", "cold-7",
];
const HOT_KEYS: &[&str] = &["hot-a", "hot-b", "hot-c", "hot-d"];

/// The errors the specification gives as replies (checked like values).
const SPECIFIED_ERRORS: &[&str] = &[
    "ERR value is not an integer or out of range",
    "ERR increment or decrement would overflow",
];

/// What happened to a command.
pub(crate) enum Outcome {
    /// An answer the history records.
    Answered(Reply),
    /// Certainly not done.
    NotDone,
    /// Unknown: may or may not have happened.
    Unknown(String),
}

/// A blocking RESP connection.
pub(crate) struct Connection {
    stream: TcpStream,
    input: BytesMut,
}

impl Connection {
    /// Connects to `addr`.
    pub(crate) fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            input: BytesMut::with_capacity(4096),
        })
    }

    /// Sends one command and reads its reply.
    pub(crate) fn call(&mut self, args: &[Bytes]) -> Result<Reply, String> {
        let mut out = BytesMut::new();
        resp::encode_request(args, &mut out);
        self.stream.write_all(&out).map_err(|e| e.to_string())?;
        let mut buffer = [0u8; 4096];
        loop {
            if let Some(reply) =
                resp::parse_reply(&mut self.input, &Limits::default()).map_err(|e| e.to_string())?
            {
                return Ok(reply);
            }
            let read = self.stream.read(&mut buffer).map_err(|e| e.to_string())?;
            if read == 0 {
                return Err("connection closed".into());
            }
            self.input.extend_from_slice(&buffer[..read]);
        }
    }
}

/// Classifies a reply.
pub(crate) fn classify(reply: Result<Reply, String>) -> Outcome {
    match reply {
        Ok(Reply::Error(text)) if text.starts_with("TRYAGAIN") => Outcome::NotDone,
        Ok(Reply::Error(text)) if !SPECIFIED_ERRORS.contains(&text.as_str()) => {
            Outcome::Unknown(text.split_whitespace().next().unwrap_or("ERR").to_owned())
        }
        Ok(reply) => Outcome::Answered(reply),
        Err(_) => Outcome::Unknown("no answer".into()),
    }
}

/// Whether a command only reads.
pub(crate) fn is_read(args: &[Bytes]) -> bool {
    matches!(args.first().map(|a| a.as_ref()), Some(b"GET" | b"MGET"))
}

/// Where clients send commands, shared with the fault schedule.
pub(crate) struct Targets {
    /// The client addresses, by node id.
    pub(crate) nodes: Vec<(u64, SocketAddr)>,
    /// The leader last seen (0: none), for follower-only reads.
    pub(crate) leader: AtomicU64,
    /// Reads go only to nodes other than the leader.
    pub(crate) reads_on_followers: bool,
}

/// What a client did.
#[derive(Default)]
pub(crate) struct ClientReport {
    /// Its history.
    pub(crate) history: Vec<Done>,
    /// Commands answered "not done".
    pub(crate) not_done: u64,
    /// Writes with an unknown outcome, by the error's first word (or
    /// "no answer").
    pub(crate) unknown: BTreeMap<String, u64>,
}

/// Runs client `client` until `stop`, timing against `epoch`.
pub(crate) fn run_client(
    client: usize,
    seed: u64,
    targets: &Targets,
    epoch: Instant,
    stop: &Arc<AtomicBool>,
) -> ClientReport {
    let mut rng = Rng::new(seed ^ (client as u64).wrapping_mul(0x9e37_79b9));
    let mut values = Values::with_prefix(&format!("c{client}"));
    let mut report = ClientReport::default();
    let mut connection: Option<(u64, Connection)> = None;
    while !stop.load(Relaxed) {
        let keys = if rng.chance(700_000) { HOT_KEYS } else { KEYS };
        let args = random_command(&mut rng, keys, &mut values);
        let read = is_read(&args);
        let leader = targets.leader.load(Relaxed);
        let choices: Vec<(u64, SocketAddr)> = targets
            .nodes
            .iter()
            .copied()
            .filter(|(id, _)| !(read && targets.reads_on_followers && *id == leader))
            .collect();
        let (node, addr) = rng.pick(&choices);
        // Mostly stay on one node's connection, as a pooled client does
        // (but never read from the leader in follower-read mode).
        let reconnect = match &connection {
            None => true,
            Some((id, _)) => {
                (*id != node && rng.chance(200_000))
                    || (read && targets.reads_on_followers && *id == leader)
            }
        };
        if reconnect {
            connection = match Connection::open(addr) {
                Ok(c) => Some((node, c)),
                Err(_) => {
                    std::thread::sleep(BACKOFF);
                    continue;
                }
            };
        }
        let Some((node, conn)) = connection.as_mut() else {
            continue;
        };
        let node = *node;
        let call_us = epoch.elapsed().as_micros() as u64;
        let reply = conn.call(&args);
        let broken = reply.is_err();
        let ret_us = epoch.elapsed().as_micros() as u64;
        let ret = match classify(reply) {
            Outcome::Answered(reply) => Some((ret_us, reply)),
            Outcome::NotDone => {
                report.not_done += 1;
                std::thread::sleep(BACKOFF);
                continue;
            }
            Outcome::Unknown(why) => {
                if read {
                    // A read that may not have happened did nothing.
                    if broken {
                        connection = None;
                    }
                    continue;
                }
                *report.unknown.entry(why).or_default() += 1;
                None
            }
        };
        if broken {
            connection = None;
        }
        report.history.push(Done {
            args,
            node,
            client,
            call_us,
            ret,
        });
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_sort_into_done_not_done_and_unknown() {
        let reply = |text: &str| Ok(Reply::Error(text.to_owned()));
        assert!(matches!(
            classify(reply("TRYAGAIN no leader")),
            Outcome::NotDone
        ));
        assert!(matches!(
            classify(reply("UNCERTAIN timed out; the write may or may not have been applied")),
            Outcome::Unknown(why) if why == "UNCERTAIN"
        ));
        assert!(matches!(
            classify(reply("ERR value is not an integer or out of range")),
            Outcome::Answered(_)
        ));
        assert!(matches!(classify(Err("reset".into())), Outcome::Unknown(_)));
        assert!(matches!(
            classify(Ok(Reply::OK)),
            Outcome::Answered(Reply::OK)
        ));
        assert!(is_read(&[Bytes::from_static(b"MGET")]));
        assert!(!is_read(&[Bytes::from_static(b"INCR")]));
    }
}
