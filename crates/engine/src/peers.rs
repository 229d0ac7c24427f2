//! The engine's services to its peers, on the transport beside Raft's
//! messages: a follower forwards its clients' writes (and membership and
//! leadership requests) to the leader and fetches read indexes from it;
//! the leader serves both for every peer.
//!
//! A forwarded request carries an id chosen by the follower, and the
//! leader answers it exactly once: with the output once the write
//! applied, or with why not — certainly not done (the follower may
//! retry), uncertain (it was appended), or refused. A leader never
//! forwards again what it was forwarded: a node that is not the leader
//! answers "not done". A follower whose request gets no answer within
//! `forward_timeout`, or whose leader stops leading first, tells its
//! client the write is uncertain. The follower's side of forwarding
//! lives in the forward desk (`forwards.rs`), which the host may call
//! from its own threads.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use dr_codec::message::{
    ForwardRequest, ForwardResponse, ForwardStatus, LogIndex, Message, MessageBody, NodeId,
    ReadIndexRequest, ReadIndexResponse,
};
use dr_raft::{ConfChange, ConfChangeOp, Role};

use crate::metrics::bump;
use crate::{
    DecodeError, Engine, EngineError, PendingRead, Refusal, Responder, Response, Retry,
    StateMachine,
};

/// 2: a leader answers a write with the state machine's encoded output.
const FORMAT_VERSION: u8 = 2;
const TAG_WRITE: u8 = 1;
const TAG_CONF_CHANGE: u8 = 2;
const TAG_TRANSFER: u8 = 3;

/// What a follower hands to the leader.
pub(crate) enum Forwarded<M: StateMachine> {
    /// A client's command.
    Write(M::Command),
    /// A membership change.
    ConfChange(ConfChangeOp),
    /// Hand leadership to this voter.
    TransferLeader(NodeId),
}

/// What a forwarded request was, to read the leader's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Write,
    Other,
}

impl<M: StateMachine> Forwarded<M> {
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Self::Write(_) => Kind::Write,
            Self::ConfChange(_) | Self::TransferLeader(_) => Kind::Other,
        }
    }

    /// The payload of a [`ForwardRequest`]: a version byte, a tag, then
    /// the request.
    pub(crate) fn encode(&self) -> Bytes {
        let (tag, body) = match self {
            Self::Write(command) => (TAG_WRITE, M::encode_command(command)),
            Self::ConfChange(op) => (TAG_CONF_CHANGE, ConfChange { ops: vec![*op] }.encode()),
            Self::TransferLeader(target) => {
                (TAG_TRANSFER, Bytes::copy_from_slice(&target.to_le_bytes()))
            }
        };
        // One allocation the size of the payload.
        let mut out = BytesMut::with_capacity(2 + body.len());
        out.put_u8(FORMAT_VERSION);
        out.put_u8(tag);
        out.extend_from_slice(&body);
        out.freeze()
    }

    /// Reads a payload from a peer, checking every byte.
    pub(crate) fn decode(payload: &Bytes) -> Result<Self, DecodeError> {
        let bad = |why: String| DecodeError(format!("malformed forwarded request: {why}"));
        let [version, tag, rest @ ..] = payload.as_ref() else {
            return Err(bad("shorter than its header".into()));
        };
        if *version != FORMAT_VERSION {
            return Err(bad(format!("version {version}, not {FORMAT_VERSION}")));
        }
        match (*tag, rest) {
            (TAG_WRITE, _) => M::decode_command(&payload.slice(2..))
                .map(Self::Write)
                .map_err(|e| bad(e.0)),
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
pub(crate) enum Waiter<A> {
    /// A request of this node's.
    Client(A),
    /// A follower's forwarded request.
    Peer {
        /// The follower.
        peer: NodeId,
        /// Its id for the request.
        request_id: u64,
    },
}

/// Who waits for a read index on the leader.
pub(crate) enum ReadWaiter<M: StateMachine, A> {
    /// A read of this node's clients.
    Client(PendingRead<M, A>),
    /// A follower's read-index request.
    Peer {
        /// The follower.
        peer: NodeId,
        /// Its id for the request.
        request_id: u64,
    },
}

/// Forwarded requests the leader served lately, so that one delivered
/// twice is proposed once.
#[derive(Default)]
pub(crate) struct ServedIds {
    seen: std::collections::HashSet<(NodeId, u64)>,
    order: VecDeque<(NodeId, u64)>,
}

impl ServedIds {
    /// Records `id`; false when it was seen already.
    fn first_time(&mut self, id: (NodeId, u64), limit: usize) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > limit
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        true
    }
}

/// A read-index fetch out to the leader, and the reads it will confirm.
pub(crate) struct ReadFetch<M: StateMachine, A> {
    request_id: u64,
    leader: NodeId,
    deadline: Duration,
    pub(crate) reads: Vec<PendingRead<M, A>>,
}

impl<M: StateMachine, A: Responder<M>> Engine<M, A> {
    fn service_message(&mut self, to: NodeId, body: MessageBody) -> bool {
        let from = self.raft.id();
        self.transport.send(Message {
            from,
            to,
            term: 0,
            body,
        })
    }

    fn next_request_id(&mut self) -> u64 {
        // The low half counts, the high half is the incarnation's.
        let counter = (self.next_request_id as u32).wrapping_add(1);
        self.next_request_id = (self.next_request_id & !u64::from(u32::MAX)) | u64::from(counter);
        self.next_request_id
    }

    /// A peer's message that is not Raft's.
    pub(crate) fn serve_peer(&mut self, message: Message) {
        let from = message.from;
        match message.body {
            MessageBody::Forward(request) => self.serve_forward(from, request),
            MessageBody::ForwardResponse(response) => self.desk.answered(from, response),
            MessageBody::ReadIndex(ReadIndexRequest { request_id }) => {
                bump(&self.metrics.read_index_served);
                self.confirm_read(ReadWaiter::Peer {
                    peer: from,
                    request_id,
                });
            }
            MessageBody::ReadIndexResponse(response) => self.read_index_answered(from, response),
            body => debug_assert!(body.is_raft(), "every service message is handled"),
        }
    }

    /// Proposes on the leader, forwards on a follower that knows the
    /// leader; otherwise (no leader known) the proposal's refusal says
    /// so and the caller retries.
    pub(crate) fn submit_local(&mut self, request: Forwarded<M>, answer: A) {
        self.publish_leader();
        let now = self.clock.now();
        let transport = &mut self.transport;
        let forwarded = self.desk.forward(&request, answer, now, &mut |message| {
            transport.send(message)
        });
        if let Err(answer) = forwarded {
            self.submit(request, Waiter::Client(answer));
        }
    }

    /// Tells the forward desk where requests go now: the leader when this
    /// node follows one, else nowhere (requests reach the engine).
    fn publish_leader(&self) {
        let me = self.raft.id();
        let leader = self.raft.leader();
        let follows = leader.filter(|&leader| leader != me && self.raft.role() != Role::Leader);
        self.desk.set_leader(follows, leader);
    }

    /// Hands a proposal's outcome to whoever waits for it.
    pub(crate) fn answer(&mut self, waiter: Waiter<A>, result: Result<Response<M>, EngineError>) {
        match waiter {
            Waiter::Client(answer) => answer.respond(result),
            Waiter::Peer { peer, request_id } => {
                let me = self.raft.id();
                let (status, payload) = match result {
                    Ok(Response::Written(output)) => {
                        (ForwardStatus::Done, M::encode_output(&output))
                    }
                    Ok(_) => (ForwardStatus::Done, Bytes::new()),
                    Err(EngineError::NotLeader { leader }) => (
                        ForwardStatus::NotDone,
                        Bytes::from(match leader {
                            Some(id) => format!("node {me} does not lead; node {id} does"),
                            None => format!("node {me} does not lead"),
                        }),
                    ),
                    Err(EngineError::TryAgain(why)) => {
                        (ForwardStatus::NotDone, Bytes::from(why.to_string()))
                    }
                    Err(EngineError::Uncertain(why)) => {
                        (ForwardStatus::Uncertain, Bytes::from(why.to_string()))
                    }
                    Err(EngineError::Refused(why)) => {
                        (ForwardStatus::Refused, Bytes::from(why.to_string()))
                    }
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
        let limit = self.config.served_ids_max;
        if !self.served.first_time((from, request.request_id), limit) {
            // Delivered twice: the first copy is answered.
            return;
        }
        let waiter = Waiter::Peer {
            peer: from,
            request_id: request.request_id,
        };
        let forwarded = match Forwarded::<M>::decode(&request.payload) {
            Ok(forwarded) => forwarded,
            Err(error) => {
                tracing::warn!(peer = from, %error, "refused a forwarded request");
                self.answer(
                    waiter,
                    Err(EngineError::Refused(Refusal::Malformed(error.0))),
                );
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

    /// Answers a follower's read-index request.
    pub(crate) fn answer_read_index(
        &mut self,
        peer: NodeId,
        request_id: u64,
        result: Result<LogIndex, EngineError>,
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
    pub(crate) fn fetch_read_index(&mut self) {
        if self.follower_reads.in_flight.is_some() || self.follower_reads.unsent.is_empty() {
            return;
        }
        let me = self.raft.id();
        let leader = self.raft.leader().filter(|&leader| leader != me);
        let Some(leader) = leader.filter(|_| self.raft.role() != Role::Leader) else {
            let error = self.not_leader();
            for read in self.follower_reads.unsent.drain(..) {
                read.answer.respond(Err(error.clone()));
            }
            return;
        };
        let request_id = self.next_request_id();
        let body = MessageBody::ReadIndex(ReadIndexRequest { request_id });
        if !self.service_message(leader, body) {
            for read in self.follower_reads.unsent.drain(..) {
                read.answer
                    .respond(Err(EngineError::TryAgain(Retry::LeaderUnreachable(leader))));
            }
            return;
        }
        bump(&self.metrics.read_index_fetches);
        self.follower_reads.in_flight = Some(ReadFetch {
            request_id,
            leader,
            deadline: self.clock.now() + self.config.read_fetch_timeout,
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
                    read.answer
                        .respond(Err(EngineError::TryAgain(Retry::NoReadIndex(from))));
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
    pub(crate) fn leader_changed(&mut self) {
        self.publish_leader();
        let leader = self.raft.leader();
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
    pub(crate) fn expire_read_fetch(&mut self, now: Duration) {
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
            read.answer
                .respond(Err(EngineError::TryAgain(Retry::ReadIndexTimedOut(
                    fetch.leader,
                ))));
        }
        self.fetch_read_index();
    }
}
