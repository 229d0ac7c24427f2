//! The simulator's expiry checks, with every node's clock drifting: keys
//! of their own (`t1`, `t2`) written with absolute expiry times
//! (`SET ... PXAT`), read and deleted by the clients, and two properties
//! checked:
//!
//! - **No read after expiry:** a value is never returned by a node whose
//!   own clock, when the read was sent, was already at or past the value's
//!   expiry time (the read is served later still).
//! - **Removal:** once healed and settled, no node keeps a key whose time
//!   passed more than [`REAP_SLACK_MS`] before the leader's clock: the
//!   leader's removals reach every node.
//!
//! Every value is unique and its expiry never changes (these keys see no
//! `EXPIRE` or `PERSIST`), so a value names its expiry time. These keys
//! stay out of the linearizability check (its model has no time); the
//! convergence check compares their records, expiry index and the state's
//! clock across nodes like everything else.

use std::collections::HashMap;

use bytes::Bytes;
use dr_node::resp::Reply;

use crate::rng::Rng;

/// The keys with expiry times.
pub const TTL_KEYS: &[&str] = &["t1", "t2"];
/// How long after its time a key may still be stored once the cluster
/// settled (a look from the index head every 16 ticks, then a commit).
pub const REAP_SLACK_MS: u64 = 3_000;

/// What the expiry checks saw.
#[derive(Debug, Default)]
pub struct ExpiryCheck {
    /// Each value written: its expiry time (Unix ms).
    expiry_of: HashMap<Bytes, u64>,
    next_value: u64,
    /// Reads that returned a value, checked.
    pub reads_checked: u64,
    /// Reads that found no value.
    pub reads_empty: u64,
    violations: Vec<String>,
}

impl ExpiryCheck {
    /// Whether `args` is one of this check's commands.
    pub fn owns(args: &[Bytes]) -> bool {
        args.get(1)
            .is_some_and(|key| TTL_KEYS.iter().any(|k| k.as_bytes() == key.as_ref()))
    }

    /// A random command on the expiry keys; `now_ms` is the true time.
    pub fn random_command(&mut self, rng: &mut Rng, now_ms: u64) -> Vec<Bytes> {
        let key = rng.pick(TTL_KEYS);
        let words: Vec<String> = match rng.range(0, 10) {
            0..=3 => {
                self.next_value += 1;
                let value = format!("tv{}", self.next_value);
                // From already passed to a few hundred milliseconds ahead.
                let at = now_ms + rng.range(0, 400) - 50;
                self.expiry_of.insert(Bytes::from(value.clone()), at);
                let mut words = vec![
                    "SET".into(),
                    key.into(),
                    value,
                    "PXAT".into(),
                    at.to_string(),
                ];
                if rng.chance(300_000) {
                    words.push("NX".into());
                }
                words
            }
            4 => vec!["DEL".into(), key.into()],
            _ => vec!["GET".into(), key.into()],
        };
        words.into_iter().map(Bytes::from).collect()
    }

    /// A reply to one of this check's commands, sent to `node` when its
    /// clock read `call_wall_ms`.
    pub fn observe(&mut self, args: &[Bytes], node: u64, call_wall_ms: u64, reply: &Reply) {
        if args[0].as_ref() != b"GET" {
            return;
        }
        match reply {
            Reply::Bulk(value) => {
                self.reads_checked += 1;
                let Some(&at) = self.expiry_of.get(value) else {
                    self.violations.push(format!(
                        "node {node} returned {value:?}, a value never written"
                    ));
                    return;
                };
                if call_wall_ms >= at {
                    self.violations.push(format!(
                        "node {node} returned {value:?} (expiry {at}) for a read sent at {call_wall_ms} on its clock"
                    ));
                }
            }
            Reply::Null => self.reads_empty += 1,
            other => self
                .violations
                .push(format!("node {node} answered GET with {other:?}")),
        }
    }

    /// Stored keys (`data`: a node's `data` family) whose expiry time is
    /// more than the slack before `leader_ms`.
    pub fn check_removed(
        &mut self,
        node: u64,
        data: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
        leader_ms: u64,
    ) {
        let index = dr_node::kv::record::EXPIRY;
        for (stored, _) in data.range(vec![index]..vec![index + 1]) {
            let Some((at, key)) = dr_node::kv::record::parse_expiry_key(stored) else {
                continue;
            };
            if at + REAP_SLACK_MS < leader_ms {
                self.violations.push(format!(
                    "node {node} still holds {:?}, due at {at}, with the leader's clock at {leader_ms}",
                    String::from_utf8_lossy(key)
                ));
            }
        }
    }

    /// `Err` with every violation seen.
    pub fn result(&self) -> Result<(), String> {
        if self.violations.is_empty() {
            return Ok(());
        }
        Err(format!("expiry: {}", self.violations.join("\n  ")))
    }
}
