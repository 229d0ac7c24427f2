//! A replicated counter: three replica engines in one process, with an
//! in-memory log store, an in-memory network and a manual clock.
//!
//! Run it with `cargo run -p dr-engine --example counter`. It adds to the
//! counter through every node (followers forward to the leader), reads it
//! back linearizably from a follower, and prints what each step answered.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use bytes::Bytes;
use dr_codec::message::{ConfState, Entry, EntryKind, LogIndex, Message, SnapshotMeta};
use dr_engine::{
    Applied, Clock, DecodeError, Engine, EngineConfig, EngineError, Event, Inbox, NoObserver,
    Parts, Request, Responder, Response, SnapshotStarted, StateMachine, Transport,
};
use dr_raft::{LogStore, MemStorage, RaftNode, Snapshot, Storage, StorageError};

/// The state machine: one integer, and the index it reflects.
#[derive(Default)]
struct Counter {
    value: i64,
    applied: LogIndex,
}

fn encode_i64(value: i64) -> Bytes {
    Bytes::copy_from_slice(&value.to_le_bytes())
}

fn decode_i64(payload: &[u8]) -> Result<i64, DecodeError> {
    <[u8; 8]>::try_from(payload)
        .map(i64::from_le_bytes)
        .map_err(|_| DecodeError(format!("{} bytes, not 8", payload.len())))
}

impl StateMachine for Counter {
    type Store = MemStorage;
    type Command = i64;
    type Context = ();
    type Output = i64;
    type Query = ();
    type ReadOutput = i64;

    fn context(_: &i64) {}

    fn entry_payload(&self, delta: &i64, _now: Duration) -> Bytes {
        encode_i64(*delta)
    }

    fn encode_command(delta: &i64) -> Bytes {
        encode_i64(*delta)
    }

    fn decode_command(payload: &Bytes) -> Result<i64, DecodeError> {
        decode_i64(payload)
    }

    fn encode_output(value: &i64) -> Bytes {
        encode_i64(*value)
    }

    fn decode_output(payload: &Bytes) -> Result<i64, DecodeError> {
        decode_i64(payload)
    }

    fn applied_index(&self, _: &MemStorage) -> LogIndex {
        self.applied
    }

    fn apply(
        &mut self,
        _: &mut MemStorage,
        entries: &[Entry],
        _: Option<&ConfState>,
        _: &dyn Fn(LogIndex) -> Option<()>,
    ) -> Result<Vec<Applied<i64>>, StorageError> {
        let mut applied = Vec::new();
        for entry in entries {
            if entry.kind == EntryKind::Normal {
                let delta = decode_i64(&entry.payload).unwrap_or(0);
                self.value = self.value.wrapping_add(delta);
            }
            self.applied = entry.index;
            applied.push(Applied {
                index: entry.index,
                term: entry.term,
                output: self.value,
                members_changed: false,
            });
        }
        Ok(applied)
    }

    fn read(&mut self, _: &MemStorage, _: &(), _now: Duration) -> Result<i64, StorageError> {
        Ok(self.value)
    }

    fn restored(
        &mut self,
        store: &mut MemStorage,
        meta: &SnapshotMeta,
    ) -> Result<(), StorageError> {
        let data = store.snapshot_chunk(meta, 0, u64::MAX)?.data;
        self.value = if data.is_empty() {
            0
        } else {
            decode_i64(&data).map_err(|e| StorageError::Io(e.0))?
        };
        self.applied = meta.index;
        Ok(())
    }

    fn snapshot(
        &mut self,
        store: &mut MemStorage,
        conf_state: ConfState,
        _background: bool,
    ) -> Result<SnapshotStarted, StorageError> {
        store.create_snapshot(self.applied, conf_state, Self::encode_output(&self.value))?;
        Ok(SnapshotStarted::Taken(self.applied))
    }
}

/// Every node's outgoing messages, in one queue.
#[derive(Clone, Default)]
struct Network(Arc<Mutex<VecDeque<Message>>>);

impl Transport for Network {
    fn send(&mut self, message: Message) -> bool {
        self.0.lock().expect("not poisoned").push_back(message);
        true
    }
}

/// A clock the example moves by hand.
#[derive(Clone, Default)]
struct ManualClock(Arc<AtomicU64>);

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

/// Answers arrive on a channel.
struct Reply(mpsc::Sender<Result<Response<Counter>, EngineError>>);

impl Responder<Counter> for Reply {
    fn respond(self, result: Result<Response<Counter>, EngineError>) {
        let _ = self.0.send(result);
    }
}

/// Nothing else waits between turns here.
struct Empty;

impl Inbox<Counter, Reply> for Empty {
    fn message(&mut self) -> Option<Message> {
        None
    }
    fn request(&mut self) -> Option<Request<Counter, Reply>> {
        None
    }
}

const TICK: Duration = Duration::from_millis(10);

fn main() {
    let network = Network::default();
    let clock = ManualClock::default();
    let conf = ConfState {
        voters: vec![1, 2, 3],
        ..ConfState::default()
    };
    let mut engines: Vec<Engine<Counter, Reply>> = (1..=3)
        .map(|id| {
            let mut store = MemStorage::new();
            store
                .restore_snapshot(&Snapshot::bootstrap(conf.clone()))
                .expect("a new store takes the bootstrap snapshot");
            let mut raft_config = dr_raft::Config::new(id);
            raft_config.election_jitter_seed = id;
            let raft = RaftNode::new(raft_config.clone(), store).expect("the node starts");
            let parts = Parts {
                machine: Counter {
                    applied: 1,
                    ..Counter::default()
                },
                transport: Box::new(network.clone()),
                clock: Box::new(clock.clone()),
                observer: Box::new(NoObserver),
                metrics: Arc::default(),
            };
            Engine::new(EngineConfig::new(raft_config), raft, parts)
        })
        .collect();

    // Ticks until someone leads; then each node adds its id three times.
    let (answers_tx, answers) = mpsc::channel();
    let mut requested = false;
    for round in 0..1_000 {
        clock.0.fetch_add(TICK.as_nanos() as u64, Ordering::Relaxed);
        for engine in &mut engines {
            engine.turn(Event::Tick, &mut Empty);
        }
        loop {
            let next = network.0.lock().expect("not poisoned").pop_front();
            let Some(message) = next else { break };
            let to = usize::try_from(message.to - 1).expect("ids start at 1");
            engines[to].turn(Event::Message(message), &mut Empty);
        }
        let leads = engines
            .iter()
            .any(|e| e.raft().role() == dr_raft::Role::Leader);
        if leads && !requested {
            requested = true;
            println!("round {round}: node {:?} leads", engines[0].raft().leader());
            for (i, engine) in engines.iter_mut().enumerate() {
                for _ in 0..3 {
                    let request = Request::Write {
                        command: i as i64 + 1,
                        answer: Reply(answers_tx.clone()),
                    };
                    engine.turn(Event::Request(request), &mut Empty);
                }
            }
            let read = Request::Read {
                query: (),
                answer: Reply(answers_tx.clone()),
            };
            engines[2].turn(Event::Request(read), &mut Empty);
        }
        if requested
            && answers
                .try_iter()
                .map(|answer| println!("answer: {answer:?}"))
                .count()
                > 0
        {
            continue;
        }
        if requested && engines.iter().all(|e| e.machine().value == 18) {
            println!("every node holds 18 after round {round}");
            return;
        }
    }
    panic!("the counter did not reach 18 on every node");
}
