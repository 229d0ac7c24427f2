//! The engine's reads: on the leader a read index from a heartbeat round
//! (or the lease, with `--read-lease`), on a follower one fetched from
//! the leader (`peers.rs`); then each read is served once the applied
//! index reaches its index. Also `SCAN`'s server-side cursors.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use dr_codec::message::{LogIndex, NodeId};
use dr_raft::{ReadError, ReadState, Role};

use super::peers::ReadWaiter;
use super::{Engine, NodeError, PendingRead};
use crate::command::{ReadOp, glob_match};
use crate::kv::{self, USER};
use crate::metrics::bump;
use crate::resp::Reply;

/// Server-side SCAN cursors: cursor number → the next key, the oldest
/// forgotten first.
pub(super) struct ScanCursors {
    next: u64,
    positions: HashMap<u64, Bytes>,
    order: VecDeque<u64>,
}

const SCAN_CURSORS_MAX: usize = 16 << 10;

impl ScanCursors {
    pub(super) fn new(node: NodeId) -> Self {
        // Different nodes hand out different numbers, so a cursor taken
        // to another node is refused rather than misread.
        Self {
            next: (node << 40) | 1,
            positions: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn save(&mut self, next_key: Bytes) -> u64 {
        let cursor = self.next;
        self.next += 1;
        if self.order.len() == SCAN_CURSORS_MAX
            && let Some(oldest) = self.order.pop_front()
        {
            self.positions.remove(&oldest);
        }
        self.positions.insert(cursor, next_key);
        self.order.push_back(cursor);
        cursor
    }
}

impl Engine {
    pub(super) fn read(&mut self, read: PendingRead) {
        if self.raft.role() == Role::Leader {
            self.confirm_read(ReadWaiter::Client(read));
            return;
        }
        // A follower confirms its reads with a read index from the leader.
        self.follower_reads.unsent.push(read);
        self.fetch_read_index();
    }

    /// On the leader: finds the index a read (this node's, or a
    /// follower's read-index request) may be served at, on the lease or
    /// through a read round.
    pub(super) fn confirm_read(&mut self, waiter: ReadWaiter) {
        if self.raft.role() != Role::Leader {
            let error = self.not_leader();
            self.read_failed(waiter, error);
            return;
        }
        if let Some(index) = self.lease_read_index() {
            bump(&self.metrics.lease_reads);
            self.read_confirmed(waiter, index);
            self.serve_applied_reads();
            return;
        }
        let context = self.next_read_context;
        self.next_read_context += 1;
        match self.raft.read_index(context) {
            Ok(()) => {
                bump(&self.metrics.read_index_requests);
                self.reads.insert(context, waiter);
            }
            Err(error) => {
                let error = self.read_error(error);
                self.read_failed(waiter, error);
            }
        }
    }

    pub(super) fn read_failed(&self, waiter: ReadWaiter, error: NodeError) {
        match waiter {
            ReadWaiter::Client(read) => {
                let _ = read.answer.send(Err(error));
            }
            ReadWaiter::Peer { peer, request_id } => {
                self.answer_read_index(peer, request_id, Err(error));
            }
        }
    }

    pub(super) fn read_error(&self, error: ReadError) -> NodeError {
        match error {
            ReadError::NotLeader { .. } => self.not_leader(),
            ReadError::LeadershipLost => {
                NodeError::TryAgain("leadership changed during the read".into())
            }
            ReadError::Busy => NodeError::TryAgain("too many reads pending".into()),
        }
    }

    pub(super) fn confirm_reads(&mut self, read_states: Vec<ReadState>) {
        for state in read_states {
            let Some(read) = self.reads.remove(&state.context) else {
                continue;
            };
            match state.result {
                Ok(index) => self.read_confirmed(read, index),
                Err(error) => {
                    let error = self.read_error(error);
                    self.read_failed(read, error);
                }
            }
        }
    }

    /// A read the leader may serve once it has applied `index`: a
    /// follower's read-index request gets the index, the others wait for
    /// it.
    pub(super) fn read_confirmed(&mut self, waiter: ReadWaiter, index: LogIndex) {
        match waiter {
            ReadWaiter::Client(read) => self.reads_after_apply.entry(index).or_default().push(read),
            ReadWaiter::Peer { peer, request_id } => {
                self.answer_read_index(peer, request_id, Ok(index));
            }
        }
    }

    /// Publishes the lease for connections' own reads: closed unless lease
    /// reads are on and the core allows one (so it closes before a
    /// `TimeoutNow` leaves: this runs before every ready's messages).
    pub(super) fn publish_lease(&self) {
        let lease = if self.config.read_lease {
            self.lease.valid_until().zip(self.raft.lease_read_index())
        } else {
            None
        };
        self.gate.publish(lease);
    }

    /// The index a read may be served at on the leader's lease, when lease
    /// reads are on, the core allows one and the lease has not run out.
    pub(super) fn lease_read_index(&self) -> Option<LogIndex> {
        if !self.config.read_lease || !self.lease.holds_at(Instant::now()) {
            return None;
        }
        self.raft.lease_read_index()
    }

    pub(super) fn serve_applied_reads(&mut self) {
        let applied = self.raft.storage().applied_index();
        while let Some(entry) = self.reads_after_apply.first_entry() {
            if *entry.key() > applied {
                break;
            }
            for read in entry.remove() {
                let reply = self.serve(&read.op);
                bump(&self.metrics.reads_served);
                let _ = read
                    .answer
                    .send(reply.map_err(|e| NodeError::TryAgain(format!("storage: {e}"))));
            }
        }
    }

    pub(super) fn serve(&mut self, op: &ReadOp) -> Result<Reply, dr_raft::StorageError> {
        let store = self.raft.storage();
        let value = |key: &[u8]| store.get(&kv::user_key(key));
        Ok(match op {
            ReadOp::Get(key) => Reply::bulk_or_null(value(key)?),
            ReadOp::GetMany(keys) => Reply::Array(
                keys.iter()
                    .map(|key| Ok(Reply::bulk_or_null(value(key)?)))
                    .collect::<Result<_, dr_raft::StorageError>>()?,
            ),
            ReadOp::Exists(keys) => {
                let mut present = 0;
                for key in keys {
                    present += i64::from(value(key)?.is_some());
                }
                Reply::Integer(present)
            }
            ReadOp::Strlen(key) => Reply::Integer(value(key)?.map_or(0, |v| v.len() as i64)),
            ReadOp::DbSize => Reply::Integer(self.keys as i64),
            ReadOp::Scan {
                cursor,
                pattern,
                count,
                strings_only,
            } => self.scan(*cursor, pattern.as_deref(), *count, *strings_only)?,
        })
    }

    pub(super) fn scan(
        &mut self,
        cursor: u64,
        pattern: Option<&[u8]>,
        count: usize,
        strings_only: bool,
    ) -> Result<Reply, dr_raft::StorageError> {
        let start = if cursor == 0 {
            vec![USER]
        } else {
            match self.cursors.positions.remove(&cursor) {
                Some(next) => kv::user_key(&next),
                None => return Ok(Reply::err("invalid cursor (unknown here, or expired)")),
            }
        };
        let page = self.raft.storage().scan(&start, count + 1)?;
        let mut page: Vec<Bytes> = page
            .into_iter()
            .take_while(|(key, _)| key.first() == Some(&USER))
            .map(|(key, _)| Bytes::copy_from_slice(&key[1..]))
            .collect();
        let next = if page.len() > count {
            let next_key = page.pop().expect("more than count keys");
            self.cursors.save(next_key)
        } else {
            0
        };
        let keys = page
            .into_iter()
            .filter(|key| strings_only && pattern.is_none_or(|p| glob_match(p, key)))
            .map(Reply::Bulk)
            .collect();
        Ok(Reply::Array(vec![
            Reply::bulk(next.to_string()),
            Reply::Array(keys),
        ]))
    }
}
