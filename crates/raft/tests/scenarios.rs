//! Protocol scenarios on a small in-memory cluster: elections, the classic
//! safety cases of the Raft paper, replication repair, membership changes,
//! snapshots, leader transfer and ReadIndex reads.

mod support;

use bytes::Bytes;
use dr_codec::message::{ConfState, EntryKind, MessageBody, NodeId};
use dr_raft::{
    ConfChange, ConfChangeOp, Config, LogStore, MemStorage, ProposeError, ReadError, Role, Storage,
};
use support::{Cluster, config};

fn quiet(id: u64) -> Config {
    Config {
        pre_vote: false,
        check_quorum: false,
        ..config(id)
    }
}

#[test]
fn one_leader_is_elected_and_everyone_follows_it() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    assert_eq!(cluster.leaders(), vec![1]);
    for id in [2, 3] {
        assert_eq!(cluster.node(id).leader(), Some(1));
        assert_eq!(cluster.node(id).term(), cluster.node(1).term());
    }
    // The leader's no-op committed everywhere.
    assert!(cluster.nodes.values().all(|n| n.commit_index() == 2));
}

#[test]
fn proposals_are_applied_in_the_same_order_everywhere() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    for payload in ["a", "b", "c"] {
        cluster.propose(1, payload);
    }
    cluster.tick_all(2);
    for id in [1, 2, 3] {
        assert_eq!(
            cluster.applied_payloads(id),
            vec!["a", "b", "c"],
            "node {id}"
        );
    }
    assert_eq!(
        cluster.node(2).propose(Bytes::new()),
        Err(ProposeError::NotLeader { leader: Some(1) })
    );
}

#[test]
fn a_candidate_with_a_stale_log_cannot_win() {
    let mut cluster = Cluster::with(&[1, 2, 3], &[], quiet);
    cluster.elect(1);
    cluster.isolate(3);
    cluster.propose(1, "x");
    cluster.heal();
    let term = cluster.node(1).term();
    // Node 3 campaigns in a higher term; its log lacks "x".
    cluster.elect(3);
    assert_ne!(cluster.node(3).role(), Role::Leader);
    assert!(cluster.node(3).term() > term, "the term moved on");
    cluster.tick_all(40);
    let leaders = cluster.leaders();
    assert_eq!(leaders.len(), 1);
    assert_ne!(leaders[0], 3, "only a node holding \"x\" can lead");
    assert_eq!(cluster.applied_payloads(3), vec!["x"]);
}

#[test]
fn pre_vote_keeps_a_partitioned_node_from_raising_the_term() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    let term = cluster.node(1).term();
    cluster.isolate(3);
    for _ in 0..100 {
        cluster.node(3).tick();
        cluster.settle();
    }
    assert_eq!(cluster.node(3).term(), term, "pre-votes never won");
    cluster.heal();
    cluster.tick_all(20);
    assert_eq!(cluster.leaders(), vec![1], "the leader was not disturbed");
    assert_eq!(cluster.node(1).term(), term);
}

#[test]
fn an_isolated_leader_steps_down_and_its_uncommitted_suffix_is_replaced() {
    let mut cluster = Cluster::new(&[1, 2, 3, 4, 5]);
    cluster.elect(1);
    cluster.isolate(1);
    cluster.propose(1, "lost");
    // Check-quorum: after a whole election timeout without hearing from a
    // quorum, it steps down.
    cluster.tick_all(21);
    assert_ne!(cluster.node(1).role(), Role::Leader);
    let leaders = cluster.leaders();
    assert_eq!(leaders.len(), 1, "the majority elected a leader");
    let leader = leaders[0];
    cluster.propose(leader, "kept");
    cluster.heal();
    cluster.tick_all(5);
    for id in 1..=5 {
        assert_eq!(cluster.applied_payloads(id), vec!["kept"], "node {id}");
        assert_eq!(cluster.node(id).leader(), Some(leader));
    }
}

#[test]
fn figure_8_an_old_term_entry_on_a_majority_is_not_committed() {
    let mut cluster = Cluster::with(&[1, 2, 3, 4, 5], &[], |id| Config {
        append_bytes_max: 1,
        ..quiet(id)
    });
    cluster.elect(1);
    // (a) S1 replicates X (index 2) to S2 only.
    for peer in [3, 4, 5] {
        cluster.cut.insert((1, peer));
    }
    let x = cluster.propose(1, "XX");
    assert_eq!(x.index, 3);
    // (b) S1 crashes; S5 wins with S3 and S4; its own entry at 3 reaches
    // nobody.
    cluster.restart(1);
    cluster.isolate(1);
    cluster.cut.insert((5, 2));
    cluster.cut.insert((2, 5));
    cluster.drop_if = Some(Box::new(|m| {
        m.from == 5 && matches!(m.body, MessageBody::AppendEntries(_))
    }));
    cluster.elect(5);
    assert_eq!(cluster.node(5).role(), Role::Leader);
    // (c) S1 leads again (S2, S3 vote) and sends X to S3, but not its own
    // term's entry at 4.
    cluster.heal();
    cluster.restart(5);
    cluster.isolate(5);
    cluster.cut.insert((1, 4));
    cluster.drop_if = Some(Box::new(|m| {
        if let (1, MessageBody::AppendEntries(append)) = (m.from, &mut m.body) {
            append.entries.retain(|e| e.index < 4);
        }
        false
    }));
    cluster.elect(1);
    assert_eq!(cluster.node(1).role(), Role::Leader);
    for id in [1, 2, 3] {
        assert!(
            cluster.node(id).storage().term(3) == Ok(x.term),
            "X on node {id}"
        );
    }
    assert_eq!(
        cluster.node(1).commit_index(),
        2,
        "X is on a majority but of an old term: not committed"
    );
    // (d) S1 crashes; S5 can win and overwrite X, which nobody applied.
    cluster.drop_if = None;
    cluster.heal();
    cluster.restart(1);
    cluster.isolate(1);
    cluster.elect(5);
    assert_eq!(cluster.node(5).role(), Role::Leader);
    cluster.tick_all(3);
    for id in 2..=5 {
        assert_ne!(cluster.node(id).storage().term(3), Ok(x.term), "node {id}");
        assert!(cluster.applied_payloads(id).is_empty());
    }
}

#[test]
fn a_follower_with_a_long_divergent_log_is_repaired_by_term_skipping() {
    let mut cluster = Cluster::with(&[1, 2, 3], &[], quiet);
    cluster.elect(1);
    cluster.isolate(1);
    for _ in 0..50 {
        cluster
            .node(1)
            .propose(Bytes::from_static(b"stale"))
            .unwrap();
    }
    cluster.settle();
    cluster.elect(2);
    for _ in 0..3 {
        cluster.propose(2, "fresh");
    }
    cluster.heal();
    cluster.tick_all(3);
    let leader_last = cluster.node(2).last_index();
    assert_eq!(cluster.node(1).last_index(), leader_last);
    assert_eq!(cluster.applied_payloads(1), vec!["fresh"; 3]);
}

#[test]
fn learners_replicate_but_neither_vote_nor_count() {
    let mut cluster = Cluster::with(&[1, 2, 3], &[4], config);
    cluster.elect(1);
    cluster.propose(1, "a");
    assert_eq!(cluster.applied_payloads(4), vec!["a"]);
    // Voters 2 and 3 down: the learner does not make a quorum.
    cluster.isolate(2);
    cluster.isolate(3);
    cluster.node(1).propose(Bytes::from_static(b"b")).unwrap();
    cluster.settle();
    assert_eq!(cluster.applied_payloads(1), vec!["a"]);
    for _ in 0..100 {
        cluster.node(4).tick();
    }
    assert_eq!(
        cluster.node(4).role(),
        Role::Follower,
        "learners never campaign"
    );
}

#[test]
fn joint_consensus_replaces_voters_and_a_removed_leader_steps_down() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    for id in [4, 5] {
        cluster.add_node(id, MemStorage::new());
    }
    let change = ConfChange {
        ops: vec![
            ConfChangeOp::AddVoter(4),
            ConfChangeOp::AddVoter(5),
            ConfChangeOp::Remove(1),
        ],
    };
    cluster.node(1).propose_conf_change(&change).unwrap();
    assert_eq!(
        cluster.node(1).propose_conf_change(&change),
        Err(ProposeError::ConfChangePending)
    );
    cluster.settle();
    cluster.tick_all(2);
    let expected = ConfState {
        voters: vec![2, 3, 4, 5],
        ..ConfState::default()
    };
    for id in 2..=5 {
        assert_eq!(cluster.node(id).conf_state(), &expected, "node {id}");
    }
    assert_ne!(
        cluster.node(1).role(),
        Role::Leader,
        "removed leader stepped down"
    );
    cluster.tick_all(40);
    let leaders = cluster.leaders();
    assert_eq!(leaders.len(), 1);
    assert_ne!(leaders[0], 1);
    let leader = leaders[0];
    cluster.propose(leader, "after");
    for id in 2..=5 {
        assert_eq!(cluster.applied_payloads(id), vec!["after"], "node {id}");
    }
}

#[test]
fn a_snapshot_taken_inside_a_joint_configuration_brings_a_new_voter_up() {
    let mut cluster = Cluster::with(&[1, 2, 3], &[], |id| Config {
        snapshot_chunk_bytes: 3,
        ..config(id)
    });
    cluster.elect(1);
    cluster.add_node(4, MemStorage::new());
    cluster.cut.insert((1, 4));
    for payload in ["a", "b"] {
        cluster.propose(1, payload);
    }
    let enter = cluster
        .node(1)
        .propose_conf_change(&ConfChange {
            ops: vec![ConfChangeOp::AddVoter(4)],
        })
        .unwrap();
    cluster.settle();
    cluster.propose(1, "c");
    // Snapshot the state as of the enter-joint entry, then drop the log
    // under it: node 4 can only catch up through the snapshot.
    let joint = ConfState {
        voters: vec![1, 2, 3, 4],
        voters_outgoing: vec![1, 2, 3],
        ..ConfState::default()
    };
    let store = cluster.node(1).storage_mut();
    store
        .create_snapshot(enter.index, joint.clone(), Bytes::from_static(b"state:a,b"))
        .unwrap();
    store.compact(enter.index).unwrap();
    cluster.heal();
    cluster.tick_all(4);
    let node4 = cluster.node(4);
    assert_eq!(node4.storage().snapshot().meta.conf_state, joint);
    assert_eq!(node4.storage().snapshot().data, "state:a,b");
    assert_eq!(node4.conf_state().voters, vec![1, 2, 3, 4]);
    assert!(node4.conf_state().voters_outgoing.is_empty(), "left joint");
    assert_eq!(node4.commit_index(), cluster.node(1).commit_index());
    assert_eq!(cluster.applied_payloads(4), vec!["c"]);
}

#[test]
fn leadership_moves_to_the_transfer_target() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.propose(1, "a");
    cluster.node(1).transfer_leader(3).unwrap();
    cluster.settle();
    assert_eq!(cluster.leaders(), vec![3]);
    assert_eq!(cluster.node(1).leader(), Some(3));
    assert_eq!(
        cluster.node(3).transfer_leader(9),
        Err(ProposeError::NotVoter(9))
    );
}

#[test]
fn reads_share_one_round_and_fail_over_retryably() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.propose(1, "a");
    let heartbeats_before = std::cell::Cell::new(0);
    for context in 1..=3 {
        cluster.node(1).read_index(context).unwrap();
    }
    for message in cluster.node(1).ready().messages {
        if matches!(message.body, MessageBody::Heartbeat(_)) {
            heartbeats_before.set(heartbeats_before.get() + 1);
        }
        cluster.in_flight.push_back(message);
    }
    cluster.node(1).advance();
    assert_eq!(heartbeats_before.get(), 2, "one round for three reads");
    cluster.settle();
    let commit = cluster.node(1).commit_index();
    let reads = &cluster.reads[&1];
    assert_eq!(reads.len(), 3);
    assert!(reads.iter().all(|r| r.result == Ok(commit)));
    // A read pending when the leader loses its quorum fails, retryably.
    cluster.isolate(1);
    cluster.node(1).read_index(9).unwrap();
    cluster.tick_all(21);
    let last = cluster.reads[&1].last().unwrap();
    assert_eq!(
        (last.context, &last.result),
        (9, &Err(ReadError::LeadershipLost))
    );
    assert!(matches!(
        cluster.node(1).read_index(1),
        Err(ReadError::NotLeader { .. })
    ));
}

#[test]
fn a_new_leader_serves_no_read_before_its_term_commits() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.node(2).tick();
    // Node 2 wins but its no-op is not yet acknowledged.
    cluster.node(1).transfer_leader(2).unwrap();
    cluster.drop_if = Some(Box::new(|m| {
        m.from == 2 && matches!(m.body, MessageBody::AppendEntries(_))
    }));
    cluster.settle();
    assert_eq!(cluster.node(2).role(), Role::Leader);
    cluster.node(2).read_index(7).unwrap();
    cluster.settle();
    assert!(cluster.reads.get(&2).is_none_or(|r| r.is_empty()));
    cluster.drop_if = None;
    cluster.tick_all(2);
    let term_start = cluster.node(2).commit_index();
    let reads = &cluster.reads[&2];
    assert_eq!(reads.len(), 1);
    let index = *reads[0].result.as_ref().unwrap();
    assert!(index >= 3 && index <= term_start);
    let noop = cluster
        .node(2)
        .storage()
        .entries(index, index + 1, 0)
        .unwrap();
    assert_eq!(noop[0].kind, EntryKind::Noop);
}

#[test]
fn malformed_messages_are_refused_without_harm() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    let term = cluster.node(2).term();
    let gap = dr_codec::message::Message {
        from: 1,
        to: 2,
        term,
        body: MessageBody::AppendEntries(dr_codec::message::AppendEntries {
            prev_log_index: 1,
            prev_log_term: term,
            leader_commit: 1,
            entries: dr_raft::conformance::entries(5, 6, term),
        }),
    };
    assert!(cluster.node(2).step(gap).is_err());
    let misaddressed = dr_codec::message::Message {
        from: 1,
        to: 3,
        term,
        body: MessageBody::TimeoutNow,
    };
    assert!(cluster.node(2).step(misaddressed).is_err());
    // A node service's message carries no meaningful term: the core
    // refuses it rather than following a term it never should.
    let service = dr_codec::message::Message {
        from: 3,
        to: 2,
        term: term + 10,
        body: MessageBody::ReadIndex(dr_codec::message::ReadIndexRequest { request_id: 1 }),
    };
    assert_eq!(
        cluster.node(2).step(service),
        Err(dr_raft::StepError::NotRaft)
    );
    assert_eq!(cluster.node(2).term(), term);
    // A leader's message to the leader of its own term cannot be genuine:
    // refused, not a crash (the bytes may be forged).
    let forged = dr_codec::message::Message {
        from: 2,
        to: 1,
        term: cluster.node(1).term(),
        body: MessageBody::Heartbeat(dr_codec::message::Heartbeat {
            commit: 0,
            read_context: 0,
        }),
    };
    let leader_term = cluster.node(1).term();
    assert_eq!(
        cluster.node(1).step(forged),
        Err(dr_raft::StepError::ConflictingLeader {
            from: 2,
            term: leader_term
        })
    );
    assert_eq!(cluster.node(1).role(), Role::Leader);
    cluster.propose(1, "still fine");
    assert_eq!(cluster.applied_payloads(2), vec!["still fine"]);
}

/// A leader's appends may leave before its own write (the followers write
/// theirs meanwhile); the acknowledgements are stepped after the leader's
/// advance, as the ready contract requires, and commit the entry.
#[test]
fn a_leader_sending_before_its_own_write_counts_itself_only_after_advance() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    let proposal = cluster
        .node(1)
        .propose(Bytes::from_static(b"early"))
        .expect("leader");
    let leader = cluster.node(1);
    assert!(leader.has_ready());
    let mut ready = leader.ready();
    let early = ready.take_messages_before_persist();
    assert!(!early.is_empty());
    assert!(
        early
            .iter()
            .all(|m| matches!(m.body, MessageBody::AppendEntries(_)))
    );
    assert!(ready.messages.is_empty(), "nothing else waits here");
    // The followers persist and acknowledge while the leader has not
    // written.
    let mut acks = Vec::new();
    for message in early {
        let to = message.to;
        cluster.node(to).step(message).expect("valid append");
        let follower = cluster.node(to);
        let ready = follower.ready();
        follower
            .storage_mut()
            .persist_ready(&ready)
            .expect("persist");
        follower.advance();
        acks.extend(ready.messages);
    }
    assert!(
        acks.iter()
            .all(|m| matches!(m.body, MessageBody::AppendEntriesResponse(_)))
    );
    assert!(cluster.node(1).commit_index() < proposal.index);
    let leader = cluster.node(1);
    leader.storage_mut().persist_ready(&ready).expect("persist");
    leader.advance();
    for ack in acks {
        cluster.node(1).step(ack).expect("valid acknowledgement");
    }
    assert_eq!(cluster.node(1).commit_index(), proposal.index);
}

/// A follower whose last appends were lost (a dropped connection) while
/// no further writes come is brought up to date by the heartbeats alone.
#[test]
fn a_follower_that_lost_the_last_appends_catches_up_without_new_writes() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.propose(1, "seen");
    cluster.cut.insert((1, 3));
    let last = cluster.propose(1, "lost on the way to 3");
    assert!(cluster.node(3).last_index() < last.index);
    cluster.heal();
    cluster.tick_all(5);
    assert_eq!(cluster.node(3).last_index(), last.index);
    assert_eq!(cluster.node(3).commit_index(), last.index);
    assert_eq!(
        cluster.applied_payloads(3).last().map(|p| &p[..]),
        Some(&b"lost on the way to 3"[..])
    );
}

fn async_config(id: NodeId) -> Config {
    Config {
        async_persist: true,
        ..config(id)
    }
}

/// Steps `message` into its target, which persists and settles the
/// ready synchronously; returns that ready's messages.
fn step_and_persist(
    cluster: &mut Cluster,
    message: dr_codec::message::Message,
) -> Vec<dr_codec::message::Message> {
    let node = cluster.node(message.to);
    node.step(message).expect("valid message");
    let ready = node.ready();
    node.storage_mut().persist_ready(&ready).expect("persist");
    node.advance();
    ready.messages
}

/// With asynchronous persistence a leader settles its ready before its
/// write ends and keeps going, but counts its own entries towards a
/// quorum only once told they are durable: one follower's
/// acknowledgement plus an unwritten leader is one durable copy of
/// three, not a quorum.
#[test]
fn an_async_leader_counts_its_own_entries_only_once_persisted() {
    let mut cluster = Cluster::with(&[1, 2, 3], &[], async_config);
    cluster.elect(1);
    let proposal = cluster
        .node(1)
        .propose(Bytes::from_static(b"behind"))
        .expect("leader");
    let leader = cluster.node(1);
    let mut ready = leader.ready();
    let number = ready.number;
    let early = ready.take_messages_before_persist();
    leader.advance_persisting();
    assert!(
        !leader.has_ready(),
        "the handed-out entries are not handed out again"
    );
    let to_two = early
        .into_iter()
        .find(|m| m.to == 2)
        .expect("an append to 2");
    let acks = step_and_persist(&mut cluster, to_two);
    for ack in acks {
        cluster.node(1).step(ack).expect("valid acknowledgement");
    }
    assert!(
        cluster.node(1).commit_index() < proposal.index,
        "committed on one durable copy"
    );
    // A later proposal can be handed out while the first write is under way.
    let second = cluster
        .node(1)
        .propose(Bytes::from_static(b"next"))
        .expect("leader");
    let leader = cluster.node(1);
    let later = leader.ready();
    assert_eq!(later.entries.first().map(|e| e.index), Some(second.index));
    leader.advance_persisting();
    leader.storage_mut().persist_ready(&ready).expect("persist");
    leader.on_persisted(number);
    assert_eq!(
        leader.commit_index(),
        proposal.index,
        "now two durable copies"
    );
    assert!(leader.commit_index() < second.index);
    leader.storage_mut().persist_ready(&later).expect("persist");
    leader.on_persisted(later.number);
    leader.on_persisted(number);
    assert_eq!(
        leader.commit_index(),
        proposal.index,
        "only node 2's ack counts"
    );
}

/// Committed entries are handed out for applying only once this node
/// has persisted them, so an applied index never reaches the store ahead
/// of the entries: a follower that learns of an entry and of its commit
/// in one append applies it only after its write ends.
#[test]
fn an_async_follower_applies_only_what_it_has_persisted() {
    let mut cluster = Cluster::with(&[1, 2, 3], &[], async_config);
    cluster.elect(1);
    cluster.cut.insert((1, 3));
    let late = cluster.propose(1, "late");
    assert_eq!(
        cluster.node(1).commit_index(),
        late.index,
        "committed with node 2"
    );
    cluster.heal();
    // The next heartbeat answer from node 3 brings it the entry, with a
    // commit index that already covers it.
    let mut append = None;
    for _ in 0..20 {
        cluster.node(1).tick();
        let _ = cluster.process_ready(1);
        while let Some(message) = cluster.in_flight.pop_front() {
            let carries = matches!(&message.body, MessageBody::AppendEntries(a)
                if a.entries.iter().any(|e| e.index == late.index));
            if message.to == 3 && carries {
                append = Some(message);
                break;
            }
            let to = message.to;
            cluster.node(to).step(message).expect("valid");
            let _ = cluster.process_ready(to);
        }
        if append.is_some() {
            break;
        }
    }
    let append = append.expect("the leader resends the entry to node 3");
    let follower = cluster.node(3);
    follower.step(append).expect("valid append");
    assert_eq!(follower.commit_index(), late.index);
    let ready = follower.ready();
    assert_eq!(ready.entries.last().map(|e| e.index), Some(late.index));
    assert!(
        ready.committed_entries.iter().all(|e| e.index < late.index),
        "applied before it was persisted"
    );
    follower.advance_persisting();
    follower
        .storage_mut()
        .persist_ready(&ready)
        .expect("persist");
    follower.on_persisted(ready.number);
    let ready = follower.ready();
    assert_eq!(
        ready.committed_entries.last().map(|e| e.index),
        Some(late.index),
        "applied once persisted"
    );
    follower.advance();
}

/// With `apply_unpersisted`, a leader whose own write has not ended
/// applies an entry as soon as both followers' durable copies commit it,
/// and its late own copy changes nothing.
#[test]
fn a_leader_applying_unpersisted_applies_on_its_followers_copies() {
    let mut cluster = Cluster::with(&[1, 2, 3], &[], |id| Config {
        apply_unpersisted: true,
        ..async_config(id)
    });
    cluster.elect(1);
    let proposal = cluster
        .node(1)
        .propose(Bytes::from_static(b"ahead"))
        .expect("leader");
    let leader = cluster.node(1);
    let ready = leader.ready();
    let mut early = ready.clone();
    let appends = early.take_messages_before_persist();
    leader
        .storage_mut()
        .write_ready_unsynced(&ready)
        .expect("write");
    leader.advance_persisting();
    let mut acks = Vec::new();
    for append in appends.into_iter().filter(|m| m.to != 1) {
        acks.extend(step_and_persist(&mut cluster, append));
    }
    let leader = cluster.node(1);
    let mut acks = acks.into_iter().filter(|m| m.to == 1);
    leader
        .step(acks.next().expect("an ack"))
        .expect("valid ack");
    assert!(
        leader.commit_index() < proposal.index,
        "one durable follower copy and an unsynced leader are not a quorum"
    );
    for ack in acks {
        leader.step(ack).expect("valid ack");
    }
    assert_eq!(leader.commit_index(), proposal.index, "two durable copies");
    let first = ready.number;
    let ready = leader.ready();
    assert_eq!(
        ready.committed_entries.last().map(|e| e.index),
        Some(proposal.index),
        "applied before its own copy is durable"
    );
    leader.advance_persisting();
    assert_eq!(leader.applied_index(), proposal.index);
    leader.storage_mut().sync().expect("sync");
    leader.on_persisted(first);
    assert_eq!(leader.commit_index(), proposal.index);
    assert!(!leader.has_ready() || leader.ready().committed_entries.is_empty());
}

#[test]
fn apply_unpersisted_needs_async_persist() {
    let config = Config {
        apply_unpersisted: true,
        ..config(1)
    };
    assert!(config.validate().is_err());
}

/// The followers heard from lately make a quorum without the leader in a
/// healthy cluster of three, not in a cluster of one, and not once a
/// follower has been silent for an election timeout.
#[test]
fn others_make_a_quorum_only_with_enough_live_followers() {
    let mut single = Cluster::new(&[1]);
    single.elect(1);
    assert!(!single.node(1).others_make_quorum(), "a single node");
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.propose(1, "x");
    assert!(cluster.node(1).others_make_quorum());
    cluster.isolate(3);
    for _ in 0..12 {
        cluster.node(1).tick();
        cluster.settle();
    }
    assert_eq!(cluster.leaders(), vec![1], "still leading with node 2");
    assert!(
        !cluster.node(1).others_make_quorum(),
        "node 3 silent for an election timeout"
    );
    cluster.heal();
    cluster.propose(1, "y");
    assert!(cluster.node(1).others_make_quorum());
}

/// A ready with snapshot data is never settled before it is durable.
#[test]
#[should_panic(expected = "snapshot data is settled with advance()")]
fn a_snapshot_ready_cannot_be_settled_before_its_write() {
    let mut cluster = Cluster::with(&[1, 2, 3], &[], async_config);
    cluster.elect(1);
    // Node 3 is cut off while the others move on and the leader compacts
    // its log, so catching up takes a snapshot.
    cluster.isolate(3);
    for _ in 0..3 {
        cluster.propose(1, "y");
    }
    let leader = cluster.node(1);
    let applied = leader.applied_index();
    let conf = leader.conf_state().clone();
    leader
        .storage_mut()
        .create_snapshot(applied, conf, Bytes::from_static(b"state"))
        .expect("snapshot");
    leader.storage_mut().compact(applied).expect("compact");
    cluster.heal();
    for _ in 0..100 {
        cluster.node(1).tick();
        let _ = cluster.process_ready(1);
        while let Some(message) = cluster.in_flight.pop_front() {
            let to = message.to;
            cluster.node(to).step(message).expect("valid");
            if to == 3 && cluster.node(3).has_ready() {
                let ready = cluster.node(3).ready();
                if ready.has_snapshot_data() {
                    cluster.node(3).advance_persisting();
                }
                let node = cluster.node(3);
                node.storage_mut().persist_ready(&ready).expect("persist");
                node.advance();
                cluster.in_flight.extend(ready.messages);
            } else {
                let _ = cluster.process_ready(to);
            }
        }
    }
    panic!("no snapshot reached node 3");
}

fn lease_config(id: NodeId) -> Config {
    Config {
        lease_reads: true,
        ..config(id)
    }
}

/// A 3-node cluster with `lease_reads`, run until it has a leader (every
/// node ticks: each refuses votes for its first election timeout) and one
/// entry committed; returns it with the leader and the two followers.
fn lease_cluster() -> (Cluster, NodeId, NodeId, NodeId) {
    let mut cluster = Cluster::with(&[1, 2, 3], &[], lease_config);
    cluster.tick_all(40);
    let leaders = cluster.leaders();
    assert_eq!(leaders.len(), 1, "one leader after 40 ticks");
    let leader = leaders[0];
    cluster.propose(leader, "x");
    let mut followers = [1, 2, 3].into_iter().filter(|&id| id != leader);
    let (a, b) = (followers.next().unwrap(), followers.next().unwrap());
    (cluster, leader, a, b)
}

#[test]
fn lease_reads_are_offered_only_to_a_leader_that_may_serve_them() {
    let (mut cluster, leader, follower, target) = lease_cluster();
    let committed = cluster.node(leader).commit_index();
    assert_eq!(cluster.node(leader).lease_read_index(), Some(committed));
    assert_eq!(cluster.node(follower).lease_read_index(), None);
    // A read round is numbered, sent, and confirmed by a quorum.
    let before = cluster.node(leader).read_rounds();
    cluster.node(leader).read_index(5).unwrap();
    let started = cluster.node(leader).read_rounds();
    assert_eq!(
        (started.sent, started.confirmed),
        (before.sent + 1, before.confirmed)
    );
    cluster.settle();
    let confirmed = cluster.node(leader).read_rounds();
    assert_eq!(confirmed.confirmed, started.sent);
    assert_eq!(confirmed.term, cluster.node(leader).term());
    // Once it has sent TimeoutNow the target may win at once: no lease
    // for the rest of the term, even when the transfer is abandoned.
    cluster.cut.insert((leader, target));
    cluster.node(leader).transfer_leader(target).unwrap();
    cluster.settle();
    cluster.heal();
    assert_eq!(cluster.leaders(), vec![leader]);
    assert_eq!(cluster.node(leader).lease_read_index(), None);
    cluster.tick_all(15);
    if cluster.leaders() == vec![leader] {
        assert_eq!(cluster.node(leader).lease_read_index(), None);
    }
}

#[test]
fn without_lease_reads_no_lease_is_offered_and_check_quorum_is_required() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.propose(1, "x");
    assert_eq!(cluster.node(1).lease_read_index(), None);
    let config = Config {
        lease_reads: true,
        check_quorum: false,
        ..config(1)
    };
    assert!(config.validate().is_err());
}

#[test]
fn a_restarted_node_grants_no_vote_until_an_election_timeout_passes() {
    let (mut cluster, leader, restarted, candidate) = lease_cluster();
    // The leader's lease rests on both followers. One restarts at once and
    // the other is cut off from the leader: without the restart rule the
    // restarted one would give the other the second vote while the leader
    // still serves lease reads.
    cluster.restart(restarted);
    cluster.isolate(leader);
    for _ in 0..2 * 10 - 1 {
        cluster.node(candidate).tick();
        cluster.settle();
    }
    assert_ne!(cluster.node(candidate).role(), Role::Leader);
    // After an election timeout of its own the restarted node votes again:
    // the two elect a leader (and the cut-off one has stepped down).
    cluster.tick_all(40);
    let leaders = cluster.leaders();
    assert!(
        leaders == vec![restarted] || leaders == vec![candidate],
        "leaders: {leaders:?}"
    );
}

/// A follower that just acknowledged its leader promised not to help
/// elect another for an election timeout. A rival's refusal of a pre-vote
/// (carrying the rival's higher term) must not move it into that term,
/// where the rival's vote request would then find it free to vote. Found
/// by dr-sim (seed 101500, short): the follower had pre-campaigned, heard
/// the leader again, and got the rival's refusal after.
#[test]
fn a_follower_in_lease_ignores_a_higher_term_from_a_non_leader() {
    use dr_codec::message::{Message, VoteRequest, VoteResponse};
    let (mut cluster, leader, follower, rival) = lease_cluster();
    cluster.settle();
    let term = cluster.node(follower).term();
    assert_eq!(cluster.node(follower).leader(), Some(leader));
    // Everything the rival sends carries its higher term.
    let from_rival = |body| Message {
        from: rival,
        to: follower,
        term: term + 1,
        body,
    };
    let refusal = from_rival(MessageBody::VoteResponse(VoteResponse {
        pre_vote: true,
        granted: false,
    }));
    cluster
        .node(follower)
        .step(refusal)
        .expect("a valid message");
    assert_eq!(cluster.node(follower).term(), term, "the term stays");
    assert_eq!(cluster.node(follower).leader(), Some(leader));
    let last_index = cluster.node(rival).last_index() + 10;
    let vote = from_rival(MessageBody::Vote(VoteRequest {
        pre_vote: false,
        last_log_index: last_index,
        last_log_term: term + 1,
        leader_transfer: false,
    }));
    cluster.node(follower).step(vote).expect("a valid message");
    assert_eq!(
        cluster.node(follower).term(),
        term,
        "no vote inside the lease"
    );
    // Once an election timeout passes without the leader, the follower
    // (or pre-candidate, by then) moves on as usual.
    cluster.isolate(leader);
    for _ in 0..10 {
        cluster.node(follower).tick();
    }
    let late = from_rival(MessageBody::VoteResponse(VoteResponse {
        pre_vote: false,
        granted: false,
    }));
    cluster.node(follower).step(late).expect("a valid message");
    assert_eq!(
        cluster.node(follower).term(),
        term + 1,
        "outside the lease it follows"
    );
}

#[test]
fn a_leader_refuses_acknowledgements_of_indexes_it_never_sent() {
    use dr_codec::message::{AppendEntriesResponse, Message, RejectHint};
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.propose(1, "a");
    cluster.settle();
    let leader = cluster.node(1);
    let (term, last, commit) = (leader.term(), leader.last_index(), leader.commit_index());
    let from_two = |body| Message {
        from: 2,
        to: 1,
        term,
        body,
    };
    let beyond = from_two(MessageBody::AppendEntriesResponse(AppendEntriesResponse {
        index: last + 5,
        reject: None,
    }));
    let rejection = |index| {
        from_two(MessageBody::AppendEntriesResponse(AppendEntriesResponse {
            index,
            reject: Some(RejectHint {
                last_index: 0,
                conflict_term: 0,
                conflict_index: 0,
            }),
        }))
    };
    for message in [beyond, rejection(last + 1), rejection(0)] {
        let refused = cluster.node(1).step(message.clone());
        assert!(
            matches!(refused, Err(dr_raft::StepError::Malformed(_))),
            "{message:?}: {refused:?}"
        );
    }
    // Nothing moved, and the cluster goes on.
    assert_eq!(cluster.node(1).commit_index(), commit);
    cluster.propose(1, "b");
    cluster.settle();
    assert_eq!(cluster.node(2).commit_index(), last + 1);
}
