//! The forward desk: a follower's requests out to the leader, and the
//! leader's answers back to whoever waits, without the engine's turn in
//! between.
//!
//! A follower's client write needs nothing of the follower's own log or
//! state: it is encoded, sent to the leader, and its answer decoded and
//! handed to the client. The desk does exactly that, callable from any
//! thread: the host routes a request through [`ForwardDesk::route`] on
//! the thread that received it (a client connection's), and hands the
//! leader's answer to [`ForwardDesk::answered`] on the thread that read
//! it (the transport's). The engine keeps the rest: it tells the desk
//! where the leader is ([`ForwardDesk::route`] forwards only to a leader
//! the engine published), answers as uncertain what a leader that
//! stopped leading (another leader became known) or timed out never
//! answered, and forwards itself
//! whatever reached its turn (a request that arrived while no leader was
//! known, a host that routes nothing around it).
//!
//! Invariants: every request the desk took is answered exactly once,
//! by whoever removes it from the pending table under the desk's lock
//! (the leader's answer, the deadline, a leader change, shutdown, or a
//! failed send); a request is registered against the leader the engine
//! published under the same lock that a leader change orphans under, so
//! no request slips past the change; nothing is answered under the lock.

use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use dr_codec::message::{
    ForwardRequest, ForwardResponse, ForwardStatus, Message, MessageBody, NodeId,
};
use parking_lot::Mutex;

use crate::metrics::{EngineMetrics, bump};
use crate::peers::{Forwarded, Kind};
use crate::{
    EngineConfig, EngineError, Refusal, Request, Responder, Response, Retry, StateMachine,
    Uncertain,
};

/// A request this follower forwarded, waiting for the leader's answer.
struct PendingForward<A> {
    leader: NodeId,
    kind: Kind,
    answer: A,
}

/// What the desk's lock guards.
struct Desk<A> {
    /// Where requests go: the leader, when this node is a follower that
    /// knows it (published by the engine).
    leader: Option<NodeId>,
    /// The last leader the engine knew of (itself included): requests
    /// pending for another node were orphaned when it became known.
    known_leader: Option<NodeId>,
    pending: HashMap<u64, PendingForward<A>>,
    /// Request ids in the order they were sent, with their deadlines (one
    /// timeout for all, so the oldest is always first).
    deadlines: VecDeque<(Duration, u64)>,
    /// The last id given to a forwarded request.
    last_request_id: u64,
}

/// A follower's forwarded requests, shared by the engine and the host's
/// threads (see the module docs).
pub struct ForwardDesk<M, A> {
    me: NodeId,
    forward_timeout: Duration,
    forwards_max: usize,
    metrics: Arc<EngineMetrics>,
    desk: Mutex<Desk<A>>,
    machine: PhantomData<fn() -> M>,
}

/// How [`ForwardDesk::route`] took a request.
pub enum Routed<M: StateMachine, A> {
    /// Sent to the leader (or answered already: refused, not sent).
    Taken,
    /// Not the desk's to send (this node leads, no leader is known, or it
    /// is not a write): hand it to the engine.
    ToEngine(Request<M, A>),
}

impl<M: StateMachine, A: Responder<M>> ForwardDesk<M, A> {
    pub(crate) fn new(me: NodeId, config: &EngineConfig, metrics: Arc<EngineMetrics>) -> Self {
        Self {
            me,
            forward_timeout: config.forward_timeout,
            forwards_max: config.forwards_max,
            metrics,
            desk: Mutex::new(Desk {
                leader: None,
                known_leader: None,
                pending: HashMap::new(),
                deadlines: VecDeque::new(),
                // The high half is the incarnation's, the low half counts.
                last_request_id: config.incarnation << 32,
            }),
            machine: PhantomData,
        }
    }

    /// Sends a client's write (membership change, leader transfer) to the
    /// leader when this node is a follower that knows one; anything else
    /// comes back for the engine. `now` is on the engine's clock; `send`
    /// queues a message on the transport (false: dropped).
    pub fn route(
        &self,
        request: Request<M, A>,
        now: Duration,
        send: &mut dyn FnMut(Message) -> bool,
    ) -> Routed<M, A> {
        let (forwarded, answer) = match request {
            Request::Write { command, answer } => (Forwarded::Write(command), answer),
            Request::ConfChange { op, answer } => (Forwarded::ConfChange(op), answer),
            Request::TransferLeader { target, answer } => {
                (Forwarded::TransferLeader(target), answer)
            }
            other => return Routed::ToEngine(other),
        };
        match self.forward(&forwarded, answer, now, send) {
            Ok(()) => Routed::Taken,
            Err(answer) => Routed::ToEngine(match forwarded {
                Forwarded::Write(command) => Request::Write { command, answer },
                Forwarded::ConfChange(op) => Request::ConfChange { op, answer },
                Forwarded::TransferLeader(target) => Request::TransferLeader { target, answer },
            }),
        }
    }

    /// Forwards `request` to the published leader: `Ok` once it was sent
    /// or answered; the answer back when no leader is published (the
    /// engine proposes or refuses it).
    pub(crate) fn forward(
        &self,
        request: &Forwarded<M>,
        answer: A,
        now: Duration,
        send: &mut dyn FnMut(Message) -> bool,
    ) -> Result<(), A> {
        let (leader, request_id) = {
            let mut desk = self.desk.lock();
            let Some(leader) = desk.leader else {
                return Err(answer);
            };
            if desk.pending.len() >= self.forwards_max {
                drop(desk);
                answer.respond(Err(EngineError::TryAgain(Retry::TooManyForwards)));
                return Ok(());
            }
            // The low half counts (wrapping), the high half is the
            // incarnation's.
            let counter = (desk.last_request_id as u32).wrapping_add(1);
            let request_id = (desk.last_request_id & !u64::from(u32::MAX)) | u64::from(counter);
            desk.last_request_id = request_id;
            let pending = PendingForward {
                leader,
                kind: request.kind(),
                answer,
            };
            desk.pending.insert(request_id, pending);
            desk.deadlines
                .push_back((now + self.forward_timeout, request_id));
            // Answered requests leave their deadline behind until it
            // passes; past twice the limit they are swept (amortized).
            if desk.deadlines.len() > 2 * self.forwards_max {
                let Desk {
                    pending, deadlines, ..
                } = &mut *desk;
                deadlines.retain(|(_, id)| pending.contains_key(id));
            }
            (leader, request_id)
        };
        // Encoded only once it goes: on the leader (no leader published
        // there) every write passes this way on to the engine.
        let payload = request.encode();
        let message = Message {
            from: self.me,
            to: leader,
            term: 0,
            body: MessageBody::Forward(ForwardRequest {
                request_id,
                payload,
            }),
        };
        if send(message) {
            bump(&self.metrics.writes_forwarded);
            return Ok(());
        }
        // Never queued: certainly not done (unless a leader change or a
        // deadline answered it meanwhile, as uncertain: also true).
        if let Some(pending) = self.desk.lock().pending.remove(&request_id) {
            pending
                .answer
                .respond(Err(EngineError::TryAgain(Retry::LeaderUnreachable(leader))));
        }
        Ok(())
    }

    /// The leader's answer to a forwarded request: handed to whoever
    /// waits (dropped when it came late or from a node not asked).
    pub fn answered(&self, from: NodeId, response: ForwardResponse) {
        let pending = {
            let mut desk = self.desk.lock();
            if desk
                .pending
                .get(&response.request_id)
                .is_none_or(|p| p.leader != from)
            {
                return;
            }
            desk.pending.remove(&response.request_id)
        };
        let Some(PendingForward { answer, kind, .. }) = pending else {
            return;
        };
        let why = || String::from_utf8_lossy(&response.payload).into_owned();
        let result = match (response.status, kind) {
            (ForwardStatus::Done, Kind::Write) => M::decode_output(&response.payload)
                .map(Response::Written)
                .map_err(|_| EngineError::Uncertain(Uncertain::UnreadableAnswer(from))),
            (ForwardStatus::Done, Kind::Other) => Ok(Response::Done),
            (ForwardStatus::NotDone, _) => Err(EngineError::TryAgain(Retry::Remote(why()))),
            (ForwardStatus::Uncertain, _) => Err(EngineError::Uncertain(Uncertain::Remote(why()))),
            (ForwardStatus::Refused, _) => Err(EngineError::Refused(Refusal::Remote(why()))),
        };
        answer.respond(result);
    }

    /// The engine's view of the leader: `route_to` is where requests go
    /// (the leader when this node follows one, else `None`), `known` the
    /// leader this node knows (itself when it leads; `None` during a
    /// pre-vote or an election). Requests sent to a node other than a
    /// known leader may never be answered (it may be dead): they are
    /// answered now, as uncertain (they may have been appended). While no
    /// leader is known they wait: a follower's pre-vote (it missed the
    /// heartbeats of a loaded leader for an election timeout) often ends
    /// with the same leader, whose answers then arrive; the deadline
    /// bounds the wait otherwise.
    pub(crate) fn set_leader(&self, route_to: Option<NodeId>, known: Option<NodeId>) {
        let orphaned: Vec<PendingForward<A>> = {
            let mut desk = self.desk.lock();
            desk.leader = route_to;
            // Every pending request went to a node published as leader:
            // with no other leader known, none is orphaned.
            let Some(known) = known else {
                return;
            };
            if desk.known_leader == Some(known) {
                return;
            }
            desk.known_leader = Some(known);
            let ids: Vec<u64> = desk
                .pending
                .iter()
                .filter(|(_, pending)| pending.leader != known)
                .map(|(&id, _)| id)
                .collect();
            ids.iter()
                .filter_map(|id| desk.pending.remove(id))
                .collect()
        };
        for pending in orphaned {
            let why = Uncertain::LeaderChanged(pending.leader);
            pending.answer.respond(Err(EngineError::Uncertain(why)));
        }
    }

    /// Requests the leader did not answer by their deadline: whether
    /// they took effect is unknown.
    pub(crate) fn expire(&self, now: Duration) {
        let mut expired = Vec::new();
        {
            let mut desk = self.desk.lock();
            while let Some(&(deadline, request_id)) = desk.deadlines.front() {
                if deadline > now {
                    break;
                }
                desk.deadlines.pop_front();
                if let Some(pending) = desk.pending.remove(&request_id) {
                    expired.push(pending);
                }
            }
        }
        for pending in expired {
            let why = Uncertain::NoAnswer(pending.leader);
            pending.answer.respond(Err(EngineError::Uncertain(why)));
        }
    }

    /// Answers everything still waiting as uncertain and stops routing:
    /// the engine stops.
    pub(crate) fn shut_down(&self) {
        let left: Vec<PendingForward<A>> = {
            let mut desk = self.desk.lock();
            desk.leader = None;
            desk.deadlines.clear();
            desk.pending.drain().map(|(_, pending)| pending).collect()
        };
        for pending in left {
            let why = Uncertain::ShuttingDown;
            pending.answer.respond(Err(EngineError::Uncertain(why)));
        }
    }

    /// Requests forwarded and not yet answered.
    pub fn pending(&self) -> usize {
        self.desk.lock().pending.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use bytes::Bytes;
    use dr_codec::message::{ConfState, Entry, LogIndex};
    use dr_raft::{MemStorage, StorageError};

    use super::*;
    use crate::{Applied, DecodeError, SnapshotStarted};

    /// A machine whose commands and outputs are one byte.
    struct Byte;

    fn one_byte(payload: &Bytes) -> Result<u8, DecodeError> {
        match payload.as_ref() {
            [byte] => Ok(*byte),
            other => Err(DecodeError(format!("{} bytes", other.len()))),
        }
    }

    impl StateMachine for Byte {
        type Store = MemStorage;
        type Command = u8;
        type Context = ();
        type Output = u8;
        type Query = ();
        type ReadOutput = u8;

        fn context(_: &u8) {}
        fn entry_payload(&self, command: &u8, _: Duration) -> Bytes {
            Bytes::copy_from_slice(&[*command])
        }
        fn encode_command(command: &u8) -> Bytes {
            Bytes::copy_from_slice(&[*command])
        }
        fn decode_command(payload: &Bytes) -> Result<u8, DecodeError> {
            one_byte(payload)
        }
        fn encode_output(output: &u8) -> Bytes {
            Bytes::copy_from_slice(&[*output])
        }
        fn decode_output(payload: &Bytes) -> Result<u8, DecodeError> {
            one_byte(payload)
        }
        fn applied_index(&self, _: &MemStorage) -> LogIndex {
            0
        }
        fn apply(
            &mut self,
            _: &mut MemStorage,
            _: &[Entry],
            _: Option<&ConfState>,
            _: &dyn Fn(LogIndex) -> Option<()>,
        ) -> Result<Vec<Applied<u8>>, StorageError> {
            Ok(Vec::new())
        }
        fn read(&mut self, _: &MemStorage, _: &(), _: Duration) -> Result<u8, StorageError> {
            Ok(0)
        }
        fn restored(
            &mut self,
            _: &mut MemStorage,
            _: &dr_codec::message::SnapshotMeta,
        ) -> Result<(), StorageError> {
            Ok(())
        }
        fn snapshot(
            &mut self,
            _: &mut MemStorage,
            _: ConfState,
            _: bool,
        ) -> Result<SnapshotStarted, StorageError> {
            Ok(SnapshotStarted::Taken(0))
        }
    }

    type Outcome = Result<Response<Byte>, EngineError>;

    /// Where one request's answer lands.
    struct Answer(mpsc::Sender<Outcome>);

    impl Responder<Byte> for Answer {
        fn respond(self, result: Outcome) {
            let _ = self.0.send(result);
        }
    }

    const ME: NodeId = 1;
    const LEADER: NodeId = 2;
    const TIMEOUT: Duration = Duration::from_secs(5);

    fn desk(forwards_max: usize) -> ForwardDesk<Byte, Answer> {
        let mut config = EngineConfig::new(dr_raft::Config::new(ME));
        config.forward_timeout = TIMEOUT;
        config.forwards_max = forwards_max;
        config.incarnation = 7;
        ForwardDesk::new(ME, &config, Arc::default())
    }

    /// Routes a write of `byte`; the answer's receiver, and what was sent.
    fn write(
        desk: &ForwardDesk<Byte, Answer>,
        byte: u8,
        now: Duration,
        sent: &mut Vec<Message>,
        send_works: bool,
    ) -> (mpsc::Receiver<Outcome>, bool) {
        let (tx, rx) = mpsc::channel();
        let request = Request::Write {
            command: byte,
            answer: Answer(tx),
        };
        let mut send = |message| {
            sent.push(message);
            send_works
        };
        let taken = matches!(desk.route(request, now, &mut send), Routed::Taken);
        (rx, taken)
    }

    fn request_id(message: &Message) -> u64 {
        match &message.body {
            MessageBody::Forward(request) => request.request_id,
            other => panic!("sent {other:?}"),
        }
    }

    fn done(request_id: u64, output: u8) -> ForwardResponse {
        ForwardResponse {
            request_id,
            status: ForwardStatus::Done,
            payload: Bytes::copy_from_slice(&[output]),
        }
    }

    #[test]
    fn without_a_leader_requests_go_to_the_engine() {
        let desk = desk(8);
        let mut sent = Vec::new();
        let (_rx, taken) = write(&desk, 1, Duration::ZERO, &mut sent, true);
        assert!(!taken);
        assert!(sent.is_empty());
        desk.set_leader(Some(LEADER), Some(LEADER));
        let (tx, _rx) = mpsc::channel();
        let read = Request::Read {
            query: (),
            answer: Answer(tx),
        };
        let mut send = |_| panic!("a read is never forwarded by the desk");
        assert!(matches!(
            desk.route(read, Duration::ZERO, &mut send),
            Routed::ToEngine(Request::Read { .. })
        ));
    }

    #[test]
    fn the_leaders_answer_reaches_the_writer_once() {
        let desk = desk(8);
        desk.set_leader(Some(LEADER), Some(LEADER));
        let mut sent = Vec::new();
        let (rx, taken) = write(&desk, 5, Duration::ZERO, &mut sent, true);
        assert!(taken);
        let [message] = sent.as_slice() else {
            panic!("sent {sent:?}")
        };
        assert_eq!((message.from, message.to), (ME, LEADER));
        let id = request_id(message);
        assert_eq!(id >> 32, 7, "ids carry the incarnation");
        // Another node's answer, or one to an unknown id, is dropped.
        desk.answered(3, done(id, 9));
        desk.answered(LEADER, done(id + 1, 9));
        assert!(rx.try_recv().is_err());
        desk.answered(LEADER, done(id, 9));
        assert!(matches!(rx.try_recv(), Ok(Ok(Response::Written(9)))));
        // A duplicate answer finds nobody waiting.
        desk.answered(LEADER, done(id, 9));
        assert_eq!(desk.pending(), 0);
    }

    #[test]
    fn statuses_become_the_engines_errors() {
        let desk = desk(8);
        desk.set_leader(Some(LEADER), Some(LEADER));
        let cases = [
            (ForwardStatus::NotDone, "try again"),
            (ForwardStatus::Uncertain, "uncertain"),
            (ForwardStatus::Refused, "refused"),
            (ForwardStatus::Done, "unreadable"),
        ];
        for (status, expected) in cases {
            let mut sent = Vec::new();
            let (rx, _) = write(&desk, 1, Duration::ZERO, &mut sent, true);
            let response = ForwardResponse {
                request_id: request_id(&sent[0]),
                status,
                // Two bytes: not an output of this machine.
                payload: Bytes::from_static(b"no"),
            };
            desk.answered(LEADER, response);
            let outcome = rx.try_recv().expect("answered");
            let kind = match outcome {
                Err(EngineError::TryAgain(Retry::Remote(why))) if why == "no" => "try again",
                Err(EngineError::Uncertain(Uncertain::Remote(why))) if why == "no" => "uncertain",
                Err(EngineError::Refused(Refusal::Remote(why))) if why == "no" => "refused",
                Err(EngineError::Uncertain(Uncertain::UnreadableAnswer(LEADER))) => "unreadable",
                other => panic!("{status:?} gave {other:?}"),
            };
            assert_eq!(kind, expected);
        }
    }

    #[test]
    fn a_leader_change_answers_what_the_old_leader_holds_as_uncertain() {
        let desk = desk(8);
        desk.set_leader(Some(LEADER), Some(LEADER));
        let mut sent = Vec::new();
        let (rx, _) = write(&desk, 1, Duration::ZERO, &mut sent, true);
        // The same leader published again orphans nothing.
        desk.set_leader(Some(LEADER), Some(LEADER));
        assert!(rx.try_recv().is_err());
        desk.set_leader(Some(3), Some(3));
        assert!(matches!(
            rx.try_recv(),
            Ok(Err(EngineError::Uncertain(Uncertain::LeaderChanged(
                LEADER
            ))))
        ));
        // The old leader's late answer is dropped; new requests go to 3.
        desk.answered(LEADER, done(request_id(&sent[0]), 1));
        let (_rx, _) = write(&desk, 2, Duration::ZERO, &mut sent, true);
        assert_eq!(sent[1].to, 3);
        // No leader known (a pre-vote, an election): requests go to the
        // engine, and what is pending waits for its leader's answer.
        desk.set_leader(None, None);
        let (_rx, taken) = write(&desk, 3, Duration::ZERO, &mut sent, true);
        assert!(!taken);
        assert_eq!(desk.pending(), 1);
        desk.set_leader(Some(3), Some(3));
        desk.answered(3, done(request_id(&sent[1]), 4));
        assert_eq!(desk.pending(), 0, "answered by the leader it went to");
        let (rx, _) = write(&desk, 4, Duration::ZERO, &mut sent, true);
        desk.set_leader(None, None);
        assert!(rx.try_recv().is_err(), "waits while no leader is known");
        // This node leads: what waits for another node is orphaned.
        desk.set_leader(None, Some(ME));
        assert_eq!(desk.pending(), 0);
        assert!(matches!(
            rx.try_recv(),
            Ok(Err(EngineError::Uncertain(Uncertain::LeaderChanged(3))))
        ));
    }

    #[test]
    fn unanswered_requests_expire_as_uncertain() {
        let desk = desk(8);
        desk.set_leader(Some(LEADER), Some(LEADER));
        let mut sent = Vec::new();
        let (first, _) = write(&desk, 1, Duration::ZERO, &mut sent, true);
        let (second, _) = write(&desk, 2, Duration::from_secs(1), &mut sent, true);
        desk.expire(TIMEOUT - Duration::from_millis(1));
        assert!(first.try_recv().is_err());
        desk.expire(TIMEOUT);
        assert!(matches!(
            first.try_recv(),
            Ok(Err(EngineError::Uncertain(Uncertain::NoAnswer(LEADER))))
        ));
        assert!(second.try_recv().is_err());
        desk.shut_down();
        assert!(matches!(
            second.try_recv(),
            Ok(Err(EngineError::Uncertain(Uncertain::ShuttingDown)))
        ));
    }

    #[test]
    fn a_request_never_sent_is_certainly_not_done() {
        let desk = desk(8);
        desk.set_leader(Some(LEADER), Some(LEADER));
        let mut sent = Vec::new();
        let (rx, taken) = write(&desk, 1, Duration::ZERO, &mut sent, false);
        assert!(taken);
        assert!(matches!(
            rx.try_recv(),
            Ok(Err(EngineError::TryAgain(Retry::LeaderUnreachable(LEADER))))
        ));
        assert_eq!(desk.pending(), 0);
    }

    #[test]
    fn pending_requests_and_their_deadlines_are_bounded() {
        let desk = desk(4);
        desk.set_leader(Some(LEADER), Some(LEADER));
        let mut sent = Vec::new();
        let waiting: Vec<_> = (0..4)
            .map(|i| write(&desk, i, Duration::ZERO, &mut sent, true).0)
            .collect();
        let (refused, taken) = write(&desk, 9, Duration::ZERO, &mut sent, true);
        assert!(taken);
        assert!(matches!(
            refused.try_recv(),
            Ok(Err(EngineError::TryAgain(Retry::TooManyForwards)))
        ));
        assert_eq!(sent.len(), 4);
        // Answered requests leave deadlines behind; they are swept.
        for message in &sent {
            desk.answered(LEADER, done(request_id(message), 0));
        }
        assert!(waiting.iter().all(|rx| rx.try_recv().is_ok()));
        for i in 0..100 {
            let mut sent = Vec::new();
            let _ = write(&desk, i, Duration::ZERO, &mut sent, true);
            desk.answered(LEADER, done(request_id(&sent[0]), 0));
            assert!(desk.desk.lock().deadlines.len() <= 2 * 4 + 1);
        }
    }
}
