//! The node's services to its peers, on the peer transport beside Raft's
//! messages: a follower forwards its clients' writes (and the admin's
//! membership and leadership requests) to the leader and fetches read
//! indexes from it; the leader serves both for every peer.
//!
//! Everything travels as dr-codec messages behind the transport's
//! handshake (and mutual TLS when on); the client port never carries
//! node-to-node traffic. A forwarded request carries an id chosen by the
//! follower, and the leader answers it exactly once: with the reply once
//! the write applied, or with why not — certainly not done (the follower
//! may retry), uncertain (it was appended), or refused. A leader never
//! forwards again what it was forwarded: a node that is not the leader
//! answers "not done". A follower whose request gets no answer within
//! `forward_timeout` tells its client the write is uncertain.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use dr_codec::message::{
    ForwardRequest, ForwardResponse, ForwardStatus, Message, MessageBody, NodeId, ReadIndexRequest,
    ReadIndexResponse,
};
use dr_raft::{ConfChange, ConfChangeOp, Role};
use dr_transport::Transport;

use super::{Answer, Engine, NodeError, PendingRead};
use crate::command::ReplyShape;
use crate::kv::WriteOp;
use crate::metrics::bump;
use crate::resp::{self, Limits, Protocol, Reply};

/// Requests forwarded and not yet answered, at most.
pub(super) const FORWARDS_MAX: usize = 16 << 10;
const FORMAT_VERSION: u8 = 1;

/// What a follower hands to the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forwarded {
    /// A client's write.
    Write {
        /// The change.
        op: WriteOp,
        /// How its outcome is answered.
        shape: ReplyShape,
    },
    /// A membership change (from the admin API).
    ConfChange(ConfChangeOp),
    /// Hand leadership to this voter (from the admin API).
    TransferLeader(NodeId),
}

/// A forwarded request whose payload cannot be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardDecodeError(pub String);

impl std::fmt::Display for ForwardDecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

const TAG_WRITE: u8 = 1;
const TAG_CONF_CHANGE: u8 = 2;
const TAG_TRANSFER: u8 = 3;

fn shape_code(shape: ReplyShape) -> u8 {
    match shape {
        ReplyShape::Ok => 0,
        ReplyShape::OldValue => 1,
        ReplyShape::Written => 2,
        ReplyShape::Integer => 3,
    }
}

fn shape_of(code: u8) -> Option<ReplyShape> {
    Some(match code {
        0 => ReplyShape::Ok,
        1 => ReplyShape::OldValue,
        2 => ReplyShape::Written,
        3 => ReplyShape::Integer,
        _ => return None,
    })
}

impl Forwarded {
    /// The payload of a [`ForwardRequest`]: a version byte, a tag, then
    /// the request (a write in the log's own encoding).
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u8(FORMAT_VERSION);
        match self {
            Self::Write { op, shape } => {
                out.put_u8(TAG_WRITE);
                out.put_u8(shape_code(*shape));
                out.extend_from_slice(&op.encode());
            }
            Self::ConfChange(op) => {
                out.put_u8(TAG_CONF_CHANGE);
                out.extend_from_slice(&ConfChange { ops: vec![*op] }.encode());
            }
            Self::TransferLeader(target) => {
                out.put_u8(TAG_TRANSFER);
                out.put_u64_le(*target);
            }
        }
        out.freeze()
    }

    /// Reads a payload from a peer, checking every byte.
    pub fn decode(payload: &Bytes) -> Result<Self, ForwardDecodeError> {
        let bad = |why: String| ForwardDecodeError(format!("malformed forwarded request: {why}"));
        let [version, tag, rest @ ..] = payload.as_ref() else {
            return Err(bad("shorter than its header".into()));
        };
        if *version != FORMAT_VERSION {
            return Err(bad(format!("version {version}, not {FORMAT_VERSION}")));
        }
        match (*tag, rest) {
            (TAG_WRITE, [shape, ..]) => {
                let shape = shape_of(*shape).ok_or_else(|| bad(format!("reply shape {shape}")))?;
                let op = WriteOp::decode(&payload.slice(3..)).map_err(|e| bad(e.0))?;
                Ok(Self::Write { op, shape })
            }
            (TAG_CONF_CHANGE, change) => {
                let change = ConfChange::decode(change).map_err(|e| bad(e.to_string()))?;
                match change.ops.as_slice() {
                    [op] => Ok(Self::ConfChange(*op)),
                    ops => Err(bad(format!("{} membership operations, not one", ops.len()))),
                }
            }
            (TAG_TRANSFER, id) => match <[u8; 8]>::try_from(id).map(u64::from_le_bytes) {
                Ok(id) if id > 0 => Ok(Self::TransferLeader(id)),
                _ => Err(bad("a leader transfer names one positive node id".into())),
            },
            (tag, _) => Err(bad(format!("unknown request kind {tag}"))),
        }
    }
}

/// Who waits for a proposal's outcome.
#[derive(Debug)]
pub(super) enum Waiter {
    /// A request of this node's.
    Client(Answer),
    /// A follower's forwarded request.
    Peer {
        /// The follower.
        peer: NodeId,
        /// Its id for the request.
        request_id: u64,
    },
}

/// Who waits for a read index on the leader.
#[derive(Debug)]
pub(super) enum ReadWaiter {
    /// A read of this node's clients.
    Client(PendingRead),
    /// A follower's read-index request.
    Peer {
        /// The follower.
        peer: NodeId,
        /// Its id for the request.
        request_id: u64,
    },
}

/// A request this follower forwarded, waiting for the leader's answer.
#[derive(Debug)]
pub(super) struct PendingForward {
    leader: NodeId,
    answer: Answer,
}

/// This follower's forwarded requests, and when each gives up.
#[derive(Debug, Default)]
pub(super) struct Forwards {
    pending: std::collections::HashMap<u64, PendingForward>,
    /// Request ids in the order they were sent, with their deadlines (one
    /// timeout for all, so the oldest is always first).
    deadlines: VecDeque<(std::time::Instant, u64)>,
}

impl Forwards {
    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }

    /// Every request still waiting, forgotten.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = Answer> + '_ {
        self.deadlines.clear();
        self.pending.drain().map(|(_, pending)| pending.answer)
    }
}

/// A read-index fetch out to the leader, and the reads it will confirm.
#[derive(Debug)]
pub(super) struct ReadFetch {
    pub(super) request_id: u64,
    pub(super) leader: NodeId,
    pub(super) deadline: std::time::Instant,
    pub(super) reads: Vec<PendingRead>,
}

/// A reply as the answer of a forwarded request carries it (RESP2).
fn encode_reply(reply: &Reply) -> Bytes {
    let mut out = BytesMut::new();
    reply.encode(Protocol::Resp2, &mut out);
    out.freeze()
}

/// The reply in a leader's answer; `None` when it is not one reply.
fn decode_reply(payload: &[u8]) -> Option<Reply> {
    let mut buffer = BytesMut::from(payload);
    let limits = Limits {
        request_bytes_max: payload.len().max(1024),
        ..Limits::default()
    };
    match resp::parse_reply(&mut buffer, &limits) {
        Ok(Some(reply)) if buffer.is_empty() => Some(reply),
        _ => None,
    }
}

fn text(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

impl Engine {
    fn service_message(&self, to: NodeId, body: MessageBody) -> bool {
        self.transport.send(Message {
            from: self.raft.id(),
            to,
            term: 0,
            body,
        })
    }

    pub(super) fn next_request_id(&mut self) -> u64 {
        self.next_request_id += 1;
        self.next_request_id
    }

    /// A peer's message that is not Raft's.
    pub(super) fn serve_peer(&mut self, message: Message) {
        let from = message.from;
        match message.body {
            MessageBody::Forward(request) => self.serve_forward(from, request),
            MessageBody::ForwardResponse(response) => self.forward_answered(from, response),
            MessageBody::ReadIndex(ReadIndexRequest { request_id }) => {
                self.serve_read_index(from, request_id);
            }
            MessageBody::ReadIndexResponse(response) => self.read_index_answered(from, response),
            body => debug_assert!(body.is_raft(), "every service message is handled"),
        }
    }

    /// Proposes on the leader, forwards on a follower that knows the
    /// leader; otherwise (no leader known) the proposal's refusal says
    /// so and the caller retries.
    pub(super) fn submit_local(&mut self, request: Forwarded, answer: Answer) {
        let me = self.raft.id();
        match self.raft.leader() {
            Some(leader) if leader != me && self.raft.role() != Role::Leader => {
                self.forward(leader, &request, answer);
            }
            _ => self.submit(request, Waiter::Client(answer)),
        }
    }

    /// Proposes `request` here, answering `waiter` once it applied (or
    /// at once when it is refused).
    pub(super) fn submit(&mut self, request: Forwarded, waiter: Waiter) {
        match request {
            Forwarded::Write { op, shape } => {
                let result = self.raft.propose(op.encode());
                self.track_proposal(result, waiter, Some(shape));
            }
            Forwarded::ConfChange(op) => {
                let change = ConfChange { ops: vec![op] };
                let result = self.raft.propose_conf_change(&change);
                self.track_proposal(result, waiter, None);
            }
            Forwarded::TransferLeader(target) => {
                let result = self.raft.transfer_leader(target);
                if result.is_ok() {
                    tracing::info!(target, "leadership transfer started");
                }
                let result = result
                    .map(|()| Reply::OK)
                    .map_err(|error| self.propose_error(error));
                self.answer(waiter, result);
            }
        }
    }

    /// Hands a proposal's outcome to whoever waits for it.
    pub(super) fn answer(&self, waiter: Waiter, result: Result<Reply, NodeError>) {
        match waiter {
            Waiter::Client(answer) => {
                let _ = answer.send(result);
            }
            Waiter::Peer { peer, request_id } => {
                let (status, payload) = match result {
                    Ok(reply) => (ForwardStatus::Done, encode_reply(&reply)),
                    Err(NodeError::NotLeader { leader }) => (
                        ForwardStatus::NotDone,
                        Bytes::from(match leader {
                            Some(id) => {
                                format!("node {} does not lead; node {id} does", self.raft.id())
                            }
                            None => format!("node {} does not lead", self.raft.id()),
                        }),
                    ),
                    Err(NodeError::TryAgain(why)) => (ForwardStatus::NotDone, Bytes::from(why)),
                    Err(NodeError::Uncertain(why)) => (ForwardStatus::Uncertain, Bytes::from(why)),
                    Err(NodeError::Refused(why)) => (ForwardStatus::Refused, Bytes::from(why)),
                };
                let response = ForwardResponse {
                    request_id,
                    status,
                    payload,
                };
                // Dropped (queue full, connection gone): the follower's
                // request times out as uncertain.
                self.service_message(peer, MessageBody::ForwardResponse(response));
            }
        }
    }

    fn serve_forward(&mut self, from: NodeId, request: ForwardRequest) {
        let waiter = Waiter::Peer {
            peer: from,
            request_id: request.request_id,
        };
        let forwarded = match Forwarded::decode(&request.payload) {
            Ok(forwarded) => forwarded,
            Err(error) => {
                tracing::warn!(peer = from, %error, "refused a forwarded request");
                self.answer(waiter, Err(NodeError::Refused(error.0)));
                return;
            }
        };
        bump(&self.metrics.forwards_served);
        if self.raft.role() != Role::Leader {
            // Never forwarded again: the follower asks the right node.
            let error = self.not_leader();
            self.answer(waiter, Err(error));
            return;
        }
        self.submit(forwarded, waiter);
    }

    fn forward(&mut self, leader: NodeId, request: &Forwarded, answer: Answer) {
        if self.forwards.len() >= FORWARDS_MAX {
            let _ = answer.send(Err(NodeError::TryAgain(
                "too many requests are waiting for the leader".into(),
            )));
            return;
        }
        let request_id = self.next_request_id();
        let body = MessageBody::Forward(ForwardRequest {
            request_id,
            payload: request.encode(),
        });
        if !self.service_message(leader, body) {
            // Never queued: certainly not done.
            let _ = answer.send(Err(NodeError::TryAgain(format!(
                "the leader (node {leader}) cannot be reached"
            ))));
            return;
        }
        bump(&self.metrics.writes_forwarded);
        let deadline = std::time::Instant::now() + self.config.forward_timeout;
        self.forwards
            .pending
            .insert(request_id, PendingForward { leader, answer });
        self.forwards.deadlines.push_back((deadline, request_id));
    }

    fn forward_answered(&mut self, from: NodeId, response: ForwardResponse) {
        let pending = &mut self.forwards.pending;
        // Answered late (timed out already), or by a node not asked.
        if pending
            .get(&response.request_id)
            .is_none_or(|p| p.leader != from)
        {
            return;
        }
        let Some(PendingForward { answer, .. }) = pending.remove(&response.request_id) else {
            return;
        };
        let why = || text(&response.payload);
        let result = match response.status {
            ForwardStatus::Done => decode_reply(&response.payload).ok_or_else(|| {
                NodeError::Uncertain(format!("the leader's answer (node {from}) was unreadable"))
            }),
            ForwardStatus::NotDone => Err(NodeError::TryAgain(why())),
            ForwardStatus::Uncertain => Err(NodeError::Uncertain(why())),
            ForwardStatus::Refused => Err(NodeError::Refused(why())),
        };
        let _ = answer.send(result);
    }

    /// Forwarded requests the leader did not answer in time: whether
    /// they took effect is unknown.
    pub(super) fn expire_forwards(&mut self, now: std::time::Instant) {
        while let Some(&(deadline, request_id)) = self.forwards.deadlines.front() {
            if deadline > now {
                break;
            }
            self.forwards.deadlines.pop_front();
            if let Some(pending) = self.forwards.pending.remove(&request_id) {
                let _ = pending.answer.send(Err(NodeError::Uncertain(format!(
                    "no answer from the leader (node {}) in time",
                    pending.leader
                ))));
            }
        }
    }

    fn serve_read_index(&mut self, from: NodeId, request_id: u64) {
        bump(&self.metrics.read_index_served);
        self.confirm_read(ReadWaiter::Peer {
            peer: from,
            request_id,
        });
    }

    /// Answers a follower's read-index request.
    pub(super) fn answer_read_index(
        &self,
        peer: NodeId,
        request_id: u64,
        result: Result<dr_codec::message::LogIndex, NodeError>,
    ) {
        let (status, index) = match result {
            Ok(index) => (ForwardStatus::Done, index),
            Err(_) => (ForwardStatus::NotDone, 0),
        };
        let response = ReadIndexResponse {
            request_id,
            status,
            index,
        };
        self.service_message(peer, MessageBody::ReadIndexResponse(response));
    }

    /// Asks the leader for a read index covering every unsent follower
    /// read, unless a fetch is out already (its answer could predate
    /// these reads, so they wait for the next one).
    pub(super) fn fetch_read_index(&mut self) {
        if self.follower_reads.in_flight.is_some() || self.follower_reads.unsent.is_empty() {
            return;
        }
        let me = self.raft.id();
        let leader = self.raft.leader().filter(|&leader| leader != me);
        let Some(leader) = leader.filter(|_| self.raft.role() != Role::Leader) else {
            let error = self.not_leader();
            for read in self.follower_reads.unsent.drain(..) {
                let _ = read.answer.send(Err(error.clone()));
            }
            return;
        };
        let request_id = self.next_request_id();
        let body = MessageBody::ReadIndex(ReadIndexRequest { request_id });
        if !self.service_message(leader, body) {
            for read in self.follower_reads.unsent.drain(..) {
                let _ = read.answer.send(Err(NodeError::TryAgain(format!(
                    "the leader (node {leader}) cannot be reached"
                ))));
            }
            return;
        }
        bump(&self.metrics.read_index_fetches);
        self.follower_reads.in_flight = Some(ReadFetch {
            request_id,
            leader,
            deadline: std::time::Instant::now() + self.config.read_fetch_timeout,
            reads: std::mem::take(&mut self.follower_reads.unsent),
        });
    }

    fn read_index_answered(&mut self, from: NodeId, response: ReadIndexResponse) {
        let in_flight = self.follower_reads.in_flight.as_ref();
        if in_flight.is_none_or(|f| f.request_id != response.request_id || f.leader != from) {
            return;
        }
        let fetch = self.follower_reads.in_flight.take().expect("checked above");
        match response.status {
            ForwardStatus::Done => self
                .reads_after_apply
                .entry(response.index)
                .or_default()
                .extend(fetch.reads),
            _ => {
                for read in fetch.reads {
                    let _ = read.answer.send(Err(NodeError::TryAgain(format!(
                        "node {from} gave no read index (it no longer leads)"
                    ))));
                }
            }
        }
        self.fetch_read_index();
        self.serve_applied_reads();
    }

    /// The leader (or this node's role) changed. A node that no longer
    /// leads may never answer what was forwarded to it (it may be dead):
    /// those requests are answered now, as uncertain (they may have been
    /// appended). Reads waiting for its read index are asked of the new
    /// leader instead: a later read index serves them just as well.
    pub(super) fn leader_changed(&mut self) {
        let leader = self.raft.leader();
        let orphaned: Vec<u64> = self
            .forwards
            .pending
            .iter()
            .filter(|(_, pending)| Some(pending.leader) != leader)
            .map(|(&id, _)| id)
            .collect();
        for id in orphaned {
            if let Some(pending) = self.forwards.pending.remove(&id) {
                let _ = pending.answer.send(Err(NodeError::Uncertain(format!(
                    "node {} stopped leading before it answered",
                    pending.leader
                ))));
            }
        }
        if self
            .follower_reads
            .in_flight
            .as_ref()
            .is_some_and(|fetch| Some(fetch.leader) != leader)
        {
            let fetch = self.follower_reads.in_flight.take().expect("checked above");
            let mut reads = fetch.reads;
            reads.append(&mut self.follower_reads.unsent);
            self.follower_reads.unsent = reads;
        }
        self.fetch_read_index();
    }

    /// A read-index fetch the leader did not answer in time: its reads
    /// fail (a read can always be retried) and the next fetch starts.
    pub(super) fn expire_read_fetch(&mut self, now: std::time::Instant) {
        if self
            .follower_reads
            .in_flight
            .as_ref()
            .is_none_or(|fetch| fetch.deadline > now)
        {
            return;
        }
        let fetch = self.follower_reads.in_flight.take().expect("checked above");
        for read in fetch.reads {
            let _ = read.answer.send(Err(NodeError::TryAgain(format!(
                "the leader (node {}) did not answer in time",
                fetch.leader
            ))));
        }
        self.fetch_read_index();
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use dr_raft::ConfChangeOp;

    use super::{Forwarded, decode_reply, encode_reply};
    use crate::command::ReplyShape;
    use crate::kv::{SetCondition, WriteOp};
    use crate::resp::Reply;

    #[test]
    fn forwarded_requests_round_trip() {
        let requests = [
            Forwarded::Write {
                op: WriteOp::Set {
                    key: Bytes::from_static(b"k"),
                    value: Bytes::from_static(b"v"),
                    condition: SetCondition::IfAbsent,
                },
                shape: ReplyShape::Written,
            },
            Forwarded::Write {
                op: WriteOp::Delete(vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]),
                shape: ReplyShape::Integer,
            },
            Forwarded::ConfChange(ConfChangeOp::AddLearner(4)),
            Forwarded::ConfChange(ConfChangeOp::Remove(2)),
            Forwarded::TransferLeader(3),
        ];
        for request in requests {
            assert_eq!(Forwarded::decode(&request.encode()), Ok(request));
        }
    }

    #[test]
    fn malformed_forwarded_requests_are_refused() {
        let good = Forwarded::TransferLeader(3).encode();
        let mut cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![1],
            vec![2, 3, 0, 0, 0, 0, 0, 0, 0, 3],
            vec![1, 9],
            vec![1, 3, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![1, 3, 1],
            vec![1, 1, 7, 1, 1],
            vec![1, 1, 0],
            vec![1, 2, 1, 0, 0],
        ];
        // Every prefix of a good request.
        cases.extend((0..good.len()).map(|len| good[..len].to_vec()));
        for case in cases {
            assert!(
                Forwarded::decode(&Bytes::from(case.clone())).is_err(),
                "{case:?} was accepted"
            );
        }
    }

    #[test]
    fn replies_cross_as_resp2() {
        for reply in [
            Reply::OK,
            Reply::Null,
            Reply::Integer(-3),
            Reply::bulk("old value"),
            Reply::Error("WRONGTYPE no".into()),
        ] {
            assert_eq!(decode_reply(&encode_reply(&reply)), Some(reply));
        }
        assert_eq!(decode_reply(b":1\r\n:2\r\n"), None);
        assert_eq!(decode_reply(b"$5\r\nab"), None);
    }
}
