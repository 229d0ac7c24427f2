//! A small in-memory cluster for scenario tests: every node's ready is
#![allow(unreachable_pub, dead_code)]
//! persisted into its `MemStorage` and its messages delivered in order,
//! except across cut links.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use dr_codec::message::{ConfState, Entry, EntryKind, Message, NodeId};
use dr_raft::{Config, LogStore, MemStorage, RaftNode, ReadState, Role};

/// Decides whether the network drops a message (and may trim it).
pub type Filter = Box<dyn FnMut(&mut Message) -> bool>;

pub struct Cluster {
    pub nodes: BTreeMap<NodeId, RaftNode<MemStorage>>,
    pub applied: BTreeMap<NodeId, Vec<Entry>>,
    pub reads: BTreeMap<NodeId, Vec<ReadState>>,
    pub in_flight: VecDeque<Message>,
    /// Directed links that drop everything.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Drops the messages it returns true for (and may trim the others,
    /// as a network delivering part of a batch would).
    pub drop_if: Option<Filter>,
    make: fn(NodeId) -> Config,
}

pub fn config(id: NodeId) -> Config {
    Config {
        election_ticks: 10,
        heartbeat_ticks: 1,
        ..Config::new(id)
    }
}

impl Cluster {
    pub fn new(voters: &[NodeId]) -> Self {
        Self::with(voters, &[], config)
    }

    pub fn with(voters: &[NodeId], learners: &[NodeId], make: fn(NodeId) -> Config) -> Self {
        let conf = ConfState {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            ..ConfState::default()
        };
        let mut cluster = Self {
            nodes: BTreeMap::new(),
            applied: BTreeMap::new(),
            reads: BTreeMap::new(),
            in_flight: VecDeque::new(),
            cut: BTreeSet::new(),
            drop_if: None,
            make,
        };
        for &id in voters.iter().chain(learners) {
            let mut store = MemStorage::new();
            store
                .restore_snapshot(&dr_raft::Snapshot::bootstrap(conf.clone()))
                .unwrap();
            cluster.add_node(id, store);
        }
        cluster
    }

    pub fn add_node(&mut self, id: NodeId, store: MemStorage) {
        self.nodes
            .insert(id, RaftNode::new((self.make)(id), store).unwrap());
        self.applied.entry(id).or_default();
    }

    pub fn node(&mut self, id: NodeId) -> &mut RaftNode<MemStorage> {
        self.nodes.get_mut(&id).unwrap()
    }

    /// Processes every node's ready and delivers messages until quiet.
    pub fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut progressed = false;
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                progressed |= self.process_ready(id);
            }
            if let Some(mut message) = self.in_flight.pop_front() {
                progressed = true;
                let dropped = self
                    .drop_if
                    .as_mut()
                    .is_some_and(|drop_if| drop_if(&mut message));
                if !dropped
                    && !self.cut.contains(&(message.from, message.to))
                    && let Some(node) = self.nodes.get_mut(&message.to)
                {
                    node.step(message).unwrap();
                }
            }
            if !progressed {
                return;
            }
        }
        panic!("cluster did not settle");
    }

    pub fn process_ready(&mut self, id: NodeId) -> bool {
        let node = self.nodes.get_mut(&id).unwrap();
        if !node.has_ready() {
            return false;
        }
        let ready = node.ready();
        let store = node.storage_mut();
        store.persist_ready(&ready).unwrap();
        if let Some(conf) = ready.conf_state.clone() {
            store.set_conf_state(conf).unwrap();
        }
        self.in_flight.extend(ready.messages);
        self.applied
            .get_mut(&id)
            .unwrap()
            .extend(ready.committed_entries);
        self.reads.entry(id).or_default().extend(ready.read_states);
        node.advance();
        true
    }

    /// Ticks `id` (only) until it leads, or gives up after 300 ticks.
    pub fn elect(&mut self, id: NodeId) {
        for _ in 0..300 {
            self.node(id).tick();
            self.settle();
            if self.node(id).role() == Role::Leader {
                return;
            }
        }
    }

    /// Crashes `id` and starts it again from its store: everything not
    /// persisted by the ready contract is gone.
    pub fn restart(&mut self, id: NodeId) {
        let store = self.node(id).storage().clone();
        let applied = self.node(id).applied_index();
        let config = Config {
            applied,
            ..(self.make)(id)
        };
        self.in_flight.retain(|m| m.to != id && m.from != id);
        self.nodes.insert(id, RaftNode::new(config, store).unwrap());
    }

    pub fn tick_all(&mut self, ticks: usize) {
        for _ in 0..ticks {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.node(id).tick();
            }
            self.settle();
        }
    }

    pub fn isolate(&mut self, id: NodeId) {
        for &other in self.nodes.keys() {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, node)| node.role() == Role::Leader)
            .map(|(&id, _)| id)
            .collect()
    }

    pub fn propose(&mut self, id: NodeId, payload: &'static str) -> dr_raft::Proposal {
        let proposal = self.node(id).propose(Bytes::from(payload)).unwrap();
        self.settle();
        proposal
    }

    /// The payloads of normal entries `id` applied, in order.
    pub fn applied_payloads(&self, id: NodeId) -> Vec<Bytes> {
        self.applied[&id]
            .iter()
            .filter(|e| e.kind == EntryKind::Normal)
            .map(|e| e.payload.clone())
            .collect()
    }
}
