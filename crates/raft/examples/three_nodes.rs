//! Three `RaftNode`s driven by hand, raft-rs style: the whole ready loop
//! in about sixty lines, for callers who want full control. (Those who
//! want a replicated service without writing this loop use `dr-engine`,
//! which also forwards, serves reads, snapshots and changes membership.)
//!
//! Run it with `cargo run -p dr-raft --example three_nodes`.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use dr_raft::{
    ConfState, Config, EntryKind, LogStore, MemStorage, Message, NodeId, RaftNode, Role, Snapshot,
};

/// One node: its consensus core and what it applied.
struct Node {
    raft: RaftNode<MemStorage>,
    applied: Vec<Bytes>,
}

/// Works off every ready of `node` in the contract's order: persist, send,
/// apply, advance.
fn drive(node: &mut Node, network: &mut VecDeque<Message>) {
    while node.raft.has_ready() {
        let ready = node.raft.ready();
        // 1. Persist (MemStorage: durable as soon as it returns).
        node.raft
            .storage_mut()
            .persist_ready(&ready)
            .expect("the store takes what the core hands out");
        // 2. Send: these messages promise what step 1 stored.
        network.extend(ready.messages);
        // 3. Apply committed entries (a real service applies payloads to
        //    its state and records the configuration with its index).
        for entry in ready.committed_entries {
            if entry.kind == EntryKind::Normal {
                node.applied.push(entry.payload);
            }
        }
        // 4. Tell the core this ready is done.
        node.raft.advance();
    }
}

fn main() {
    let conf = ConfState {
        voters: vec![1, 2, 3],
        ..ConfState::default()
    };
    let mut nodes: BTreeMap<NodeId, Node> = conf
        .voters
        .iter()
        .map(|&id| {
            let mut store = MemStorage::new();
            store
                .restore_snapshot(&Snapshot::bootstrap(conf.clone()))
                .expect("a new store takes the bootstrap snapshot");
            let config = Config {
                election_jitter_seed: id,
                ..Config::new(id)
            };
            let raft = RaftNode::new(config, store).expect("the node starts");
            let applied = Vec::new();
            (id, Node { raft, applied })
        })
        .collect();
    let mut network = VecDeque::new();
    let mut proposed = false;
    for round in 0..500 {
        for node in nodes.values_mut() {
            node.raft.tick();
            drive(node, &mut network);
        }
        // Deliver everything sent (a real transport is asynchronous).
        while let Some(message) = network.pop_front() {
            let node = nodes.get_mut(&message.to).expect("a member");
            // A message the core refuses (stale, malformed) is dropped.
            let _ = node.raft.step(message);
            drive(node, &mut network);
        }
        let leader = nodes
            .values_mut()
            .find(|node| node.raft.role() == Role::Leader);
        if let (Some(leader), false) = (leader, proposed) {
            println!("round {round}: node {} leads", leader.raft.id());
            for word in ["one", "two", "three"] {
                leader
                    .raft
                    .propose(Bytes::from(word))
                    .expect("the leader accepts");
            }
            drive(leader, &mut network);
            proposed = true;
        }
        if nodes.values().all(|node| node.applied.len() == 3) {
            for (id, node) in &nodes {
                println!("node {id} applied {:?}", node.applied);
            }
            return;
        }
    }
    panic!("the proposals did not reach every node");
}
