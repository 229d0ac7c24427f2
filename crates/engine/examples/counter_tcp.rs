//! A replicated counter on RocksDB and TCP: three replica engines in one
//! process, each on its own thread, each with its own RocksDB store in a
//! temporary directory, talking over dr-transport on 127.0.0.1.
//!
//! Run it with `cargo run -p dr-engine --example counter_tcp`. The
//! counter's value lives in the store's data family, written atomically
//! with the applied index, so the store's own snapshots (a copy of that
//! family) carry it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dr_codec::message::{ConfState, Entry, EntryKind, LogIndex, Message, NodeId, SnapshotMeta};
use dr_engine::{
    Applied, DecodeError, Engine, EngineConfig, EngineError, Event, Inbox, NoObserver, Parts,
    Request, Responder, Response, SnapshotStarted, StateMachine, SystemClock,
};
use dr_raft::{LogStore, RaftNode, Ready, StorageError};
use dr_storage::{DataWrite, RocksStorage};
use dr_transport::{TcpTransport, TransportConfig};
use tokio::sync::mpsc;

const KEY: &[u8] = b"counter";

/// The counter, kept in the store.
struct Counter;

fn encode_i64(value: i64) -> Bytes {
    Bytes::copy_from_slice(&value.to_le_bytes())
}

fn decode_i64(payload: &[u8]) -> Result<i64, DecodeError> {
    <[u8; 8]>::try_from(payload)
        .map(i64::from_le_bytes)
        .map_err(|_| DecodeError(format!("{} bytes, not 8", payload.len())))
}

fn value(store: &RocksStorage) -> Result<i64, StorageError> {
    match store.get(KEY)? {
        Some(bytes) => decode_i64(&bytes).map_err(|e| StorageError::Io(e.0)),
        None => Ok(0),
    }
}

impl StateMachine for Counter {
    type Store = RocksStorage;
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

    fn applied_index(&self, store: &RocksStorage) -> LogIndex {
        store.applied_index()
    }

    fn apply(
        &mut self,
        store: &mut RocksStorage,
        entries: &[Entry],
        conf_state: Option<&ConfState>,
        _: &dyn Fn(LogIndex) -> Option<()>,
    ) -> Result<Vec<Applied<i64>>, StorageError> {
        let mut counter = value(store)?;
        let mut applied = Vec::with_capacity(entries.len());
        for entry in entries {
            if entry.kind == EntryKind::Normal {
                counter = counter.wrapping_add(decode_i64(&entry.payload).unwrap_or(0));
            }
            applied.push(Applied {
                index: entry.index,
                term: entry.term,
                output: counter,
                members_changed: false,
            });
        }
        let index = entries.last().map_or(store.applied_index(), |e| e.index);
        let bytes = counter.to_le_bytes();
        // The value and the applied index in one atomic write.
        store.apply(&[DataWrite::Put(KEY, &bytes)], index, conf_state)?;
        Ok(applied)
    }

    fn read(&mut self, store: &RocksStorage, _: &(), _now: Duration) -> Result<i64, StorageError> {
        value(store)
    }

    fn restored(&mut self, _: &mut RocksStorage, _: &SnapshotMeta) -> Result<(), StorageError> {
        // The install replaced the data family: nothing is kept beside it.
        Ok(())
    }

    fn snapshot(
        &mut self,
        store: &mut RocksStorage,
        conf_state: ConfState,
        background: bool,
    ) -> Result<SnapshotStarted, StorageError> {
        if background {
            return store
                .begin_snapshot(conf_state)
                .map(SnapshotStarted::Copying);
        }
        let applied = store.applied_index();
        store.create_snapshot(applied, conf_state, Bytes::new())?;
        Ok(SnapshotStarted::Taken(applied))
    }

    fn poll_snapshot(&mut self, store: &mut RocksStorage) -> Option<LogIndex> {
        store.poll_snapshot()
    }

    fn snapshot_copying(&self, store: &RocksStorage) -> bool {
        store.snapshot_making_index().is_some()
    }

    fn persist_syncs(store: &RocksStorage, ready: &Ready) -> bool {
        store.must_sync(ready)
    }
}

/// dr-transport as the engine's transport.
struct Tcp(Arc<TcpTransport>);

impl dr_engine::Transport for Tcp {
    fn send(&mut self, message: Message) -> bool {
        dr_transport::Transport::send(&*self.0, message)
    }
}

/// Answers go back on a channel.
struct Reply(std::sync::mpsc::Sender<Result<Response<Counter>, EngineError>>);

impl Responder<Counter> for Reply {
    fn respond(self, result: Result<Response<Counter>, EngineError>) {
        let _ = self.0.send(result);
    }
}

type CounterRequest = Request<Counter, Reply>;

/// An engine thread's receiving ends.
struct Channels {
    messages: mpsc::Receiver<Message>,
    requests: mpsc::Receiver<CounterRequest>,
}

impl Inbox<Counter, Reply> for Channels {
    fn message(&mut self) -> Option<Message> {
        self.messages.try_recv().ok()
    }

    fn request(&mut self) -> Option<CounterRequest> {
        self.requests.try_recv().ok()
    }
}

/// The engine's loop: wait for a tick, a message or a request; take one
/// turn; stop when the request channel closes.
fn run(mut engine: Engine<Counter, Reply>, mut channels: Channels, tick: Duration) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime starts");
    runtime.block_on(async move {
        let mut ticker = tokio::time::interval(tick);
        loop {
            let event = tokio::select! {
                _ = ticker.tick() => Event::Tick,
                Some(message) = channels.messages.recv() => Event::Message(message),
                request = channels.requests.recv() => match request {
                    Some(request) => Event::Request(request),
                    None => break,
                },
            };
            engine.turn(event, &mut channels);
        }
        engine.shut_down();
    });
}

/// Sends `make(reply)` to `node` until it is done (retrying what certainly
/// did not happen), and returns the response.
fn ask(
    node: &mpsc::Sender<CounterRequest>,
    make: impl Fn(Reply) -> CounterRequest,
) -> Response<Counter> {
    for _ in 0..200 {
        let (tx, rx) = std::sync::mpsc::channel();
        node.blocking_send(make(Reply(tx)))
            .expect("the engine runs");
        match rx.recv().expect("every request is answered") {
            Ok(response) => return response,
            Err(error) if error.is_retryable() => std::thread::sleep(Duration::from_millis(50)),
            Err(error) => panic!("the counter refused: {error}"),
        }
    }
    panic!("no leader within ten seconds");
}

fn main() {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("dr-engine-counter-{}", std::process::id()));
    let transports = tokio::runtime::Runtime::new().expect("a runtime starts");
    let ids: [NodeId; 3] = [1, 2, 3];
    let conf = ConfState {
        voters: ids.to_vec(),
        ..ConfState::default()
    };
    // Every node listens on a free port, then learns the others'.
    let started: Vec<(Arc<TcpTransport>, mpsc::Receiver<Message>)> = ids
        .iter()
        .map(|&id| {
            let config = TransportConfig::new(7, id, "127.0.0.1:0".parse().expect("an address"));
            let (transport, inbox) = transports
                .block_on(TcpTransport::start(config))
                .expect("the transport starts");
            (Arc::new(transport), inbox)
        })
        .collect();
    for (transport, _) in &started {
        for (&id, (peer, _)) in ids.iter().zip(&started) {
            transport.add_peer(id, peer.local_addr());
        }
    }
    let mut nodes = Vec::new();
    let mut threads = Vec::new();
    for (&id, (transport, messages)) in ids.iter().zip(started) {
        let mut store = RocksStorage::open(
            dir.join(format!("node-{id}")),
            dr_storage::StateMachine::DataFamily,
        )
        .expect("the store opens");
        store
            .bootstrap(conf.clone())
            .expect("a new store bootstraps");
        let mut raft_config = dr_raft::Config::new(id);
        raft_config.applied = store.applied_index();
        raft_config.election_jitter_seed = id;
        let raft = RaftNode::new(raft_config.clone(), store).expect("the node starts");
        let config = EngineConfig::new(raft_config);
        let tick = config.tick;
        let parts = Parts {
            machine: Counter,
            transport: Box::new(Tcp(transport)),
            clock: Box::new(SystemClock::default()),
            observer: Box::new(NoObserver),
            metrics: Arc::default(),
        };
        let engine = Engine::new(config, raft, parts);
        let (requests_tx, requests) = mpsc::channel(1024);
        nodes.push(requests_tx);
        let channels = Channels { messages, requests };
        threads.push(std::thread::spawn(move || run(engine, channels, tick)));
    }

    // Each node adds its id twice; followers forward to the leader.
    for (node, &id) in nodes.iter().zip(&ids) {
        for _ in 0..2 {
            let response = ask(node, |answer| Request::Write {
                command: id as i64,
                answer,
            });
            println!("node {id} added {id}: {response:?}");
        }
    }
    // A linearizable read through every node sees all six writes.
    for (node, id) in nodes.iter().zip(ids) {
        let response = ask(node, |answer| Request::Read { query: (), answer });
        println!("node {id} reads {response:?}");
        assert!(matches!(response, Response::Read(12)), "{response:?}");
    }
    drop(nodes);
    for thread in threads {
        thread.join().expect("the engine thread ends");
    }
    drop(transports);
    let _ = std::fs::remove_dir_all(&dir);
    println!("three nodes agree: 12");
}
