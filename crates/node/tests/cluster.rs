//! End to end: three (or four) real `drkv` processes on 127.0.0.1, driven
//! with the `redis` client crate.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{Cluster, connect, retrying, wait_until};

const SETTLE: Duration = Duration::from_secs(20);
/// How long a test waits for load to make progress: generous, since a
/// busy machine is slow but not stuck.
const LOAD_BOUND: Duration = Duration::from_secs(60);

fn set(key: &str, value: &str) -> redis::Cmd {
    let mut command = redis::cmd("SET");
    command.arg(key).arg(value);
    command
}

fn get(key: &str) -> redis::Cmd {
    let mut command = redis::cmd("GET");
    command.arg(key);
    command
}

#[test]
fn writes_through_every_node_are_read_back_from_every_node() {
    let cluster = Cluster::start("rw", 3, &[]);
    cluster.wait_for_leader(SETTLE);
    let mut clients: Vec<redis::Connection> = (1..=3).map(|id| cluster.client(id)).collect();
    for (writer, client) in clients.iter_mut().enumerate() {
        for i in 0..20 {
            let reply: String = retrying(
                client,
                &set(&format!("k{writer}-{i}"), &format!("v{i}")),
                SETTLE,
            )
            .unwrap();
            assert_eq!(reply, "OK");
        }
    }
    // Linearizable: a read on any node right after the writes sees them.
    for client in &mut clients {
        for writer in 0..3 {
            for i in 0..20 {
                let value: Option<String> =
                    retrying(client, &get(&format!("k{writer}-{i}")), SETTLE).unwrap();
                assert_eq!(value.as_deref(), Some(format!("v{i}").as_str()));
            }
        }
    }
    // Read-modify-write commands from all nodes interleave without loss.
    for round in 0..10 {
        for client in &mut clients {
            let _: i64 = retrying(
                client,
                redis::cmd("INCRBY").arg("counter").arg(round + 1),
                SETTLE,
            )
            .unwrap();
        }
    }
    let total: i64 = retrying(&mut clients[1], &get("counter"), SETTLE)
        .map(|v: String| v.parse().unwrap())
        .unwrap();
    assert_eq!(total, 3 * (1..=10).sum::<i64>());

    let c = &mut clients[2];
    let _: () = retrying(
        c,
        redis::cmd("MSET").arg("a").arg("1").arg("b").arg("2"),
        SETTLE,
    )
    .unwrap();
    let values: Vec<Option<String>> =
        retrying(c, redis::cmd("MGET").arg("a").arg("b").arg("nope"), SETTLE).unwrap();
    assert_eq!(values, [Some("1".into()), Some("2".into()), None]);
    let swapped: i64 = retrying(c, redis::cmd("CAS").arg("a").arg("1").arg("9"), SETTLE).unwrap();
    let refused: i64 = retrying(c, redis::cmd("CAS").arg("a").arg("1").arg("7"), SETTLE).unwrap();
    let created: i64 =
        retrying(c, redis::cmd("CAS").arg("fresh").arg("").arg("new"), SETTLE).unwrap();
    assert_eq!((swapped, refused, created), (1, 0, 1));
    let nx: Option<String> =
        retrying(c, redis::cmd("SET").arg("a").arg("x").arg("NX"), SETTLE).unwrap();
    assert_eq!(nx, None);
    let old: Option<String> =
        retrying(c, redis::cmd("SET").arg("a").arg("10").arg("GET"), SETTLE).unwrap();
    assert_eq!(old.as_deref(), Some("9"));
    let length: i64 = retrying(c, redis::cmd("APPEND").arg("a").arg("0"), SETTLE).unwrap();
    assert_eq!(length, 3);
    let error = retrying::<i64>(c, redis::cmd("INCR").arg("k0-0"), SETTLE).unwrap_err();
    assert!(error.to_string().contains("not an integer"), "{error}");
    let deleted: i64 =
        retrying(c, redis::cmd("DEL").arg("a").arg("b").arg("nope"), SETTLE).unwrap();
    assert_eq!(deleted, 2);
    let size: i64 = retrying(&mut clients[0], &redis::cmd("DBSIZE"), SETTLE).unwrap();
    assert_eq!(size, 60 + 1 + 1);
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, page): (u64, Vec<String>) = retrying(
            &mut clients[1],
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("k1-*")
                .arg("COUNT")
                .arg(7),
            SETTLE,
        )
        .unwrap();
        keys.extend(page);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    let mut expected: Vec<String> = (0..20).map(|i| format!("k1-{i}")).collect();
    expected.sort();
    assert_eq!(keys, expected);
}

/// Writers through every node; the leader is SIGKILLed mid-load. Every
/// write that was acknowledged must be readable afterwards.
#[test]
fn without_a_quorum_each_command_is_answered_at_its_request_timeout() {
    // drkv's request timeout is 5 s. A connection keeps one timer for
    // its commands' deadlines: each command must still get its own.
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
    let cluster = Cluster::start("timeout", 3, &[]);
    let leader = cluster.wait_for_leader(SETTLE);
    let mut client = cluster.client(leader);
    client.set_read_timeout(Some(LOAD_BOUND)).unwrap();
    // Many commands answered well before their deadlines first.
    for i in 0..200 {
        let _: String = retrying(&mut client, &set(&format!("k{i}"), "1"), SETTLE).unwrap();
    }
    let followers: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    for &id in &followers {
        cluster.signal(id, "STOP");
    }
    for (key, command) in [
        ("a", set("a", "1")),
        ("b", set("b", "1")),
        ("k1", get("k1")),
    ] {
        let started = Instant::now();
        let error = command
            .query::<redis::Value>(&mut client)
            .expect_err("no quorum: no answer but an error");
        let took = started.elapsed();
        // The write may have been appended (uncertain) or was refused by a
        // node that stepped down (not done); the read is never done.
        let code = error.code().unwrap_or_default().to_owned();
        assert!(code == "UNCERTAIN" || code == "TRYAGAIN", "{key}: {error}");
        // Retries pause 20 ms and stop short of the deadline.
        assert!(
            took >= REQUEST_TIMEOUT - Duration::from_millis(100),
            "{key} answered after {took:?}: before its request timeout"
        );
        assert!(took < LOAD_BOUND, "{key} answered after {took:?}");
    }
    for &id in &followers {
        cluster.signal(id, "CONT");
    }
    let value: Option<String> = retrying(&mut client, &get("k199"), SETTLE).unwrap();
    assert_eq!(value.as_deref(), Some("1"));
}

#[test]
fn killing_the_leader_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start("kill", 3, &[]);
    let leader = cluster.wait_for_leader(SETTLE);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (1..=3)
        .map(|id| {
            let addr = cluster.node(id).client;
            let stop = Arc::clone(&stop);
            let acked = Arc::clone(&acked);
            std::thread::spawn(move || {
                let mut acknowledged = BTreeMap::new();
                let mut client = connect(addr);
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{id}-{i}");
                    match set(&key, &i.to_string()).query::<String>(&mut client) {
                        Ok(_) => {
                            acknowledged.insert(key, i.to_string());
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        // The node itself died, or the outcome is unknown:
                        // neither counts as acknowledged.
                        Err(error) if error.is_io_error() || error.is_connection_dropped() => {
                            std::thread::sleep(Duration::from_millis(100));
                            if let Ok(c) =
                                redis::Client::open(format!("redis://{addr}/")).and_then(|c| {
                                    c.get_connection_with_timeout(Duration::from_millis(500))
                                })
                            {
                                client = c;
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                    i += 1;
                }
                acknowledged
            })
        })
        .collect();
    let count = || acked.load(Ordering::Relaxed);
    wait_until(LOAD_BOUND, "50 writes acknowledged under load", || {
        count() >= 50
    });
    cluster.kill(leader);
    let killed_at = Instant::now();
    let new_leader = cluster.wait_for_leader(SETTLE);
    assert_ne!(new_leader, leader);
    eprintln!("new leader {new_leader} after {:?}", killed_at.elapsed());
    let before = count();
    wait_until(
        LOAD_BOUND,
        "20 writes acknowledged after the failover",
        || count() >= before + 20,
    );
    stop.store(true, Ordering::Relaxed);
    let acknowledged: BTreeMap<String, String> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(
        acknowledged.len() > 50,
        "only {} writes acknowledged",
        acknowledged.len()
    );
    let survivor = (1..=3).find(|&id| id != leader).unwrap();
    let mut client = cluster.client(survivor);
    for (key, value) in &acknowledged {
        let stored: Option<String> = retrying(&mut client, &get(key), SETTLE).unwrap();
        assert_eq!(
            stored.as_ref(),
            Some(value),
            "acknowledged write {key} lost"
        );
    }
    // The old leader comes back from its data dir and catches up.
    cluster.restart(leader);
    let mut old = cluster.client(leader);
    let probe = acknowledged.keys().next_back().unwrap();
    let stored: Option<String> = retrying(&mut old, &get(probe), SETTLE).unwrap();
    assert_eq!(stored.as_ref(), acknowledged.get(probe));
}

/// A node is down while the others write enough to snapshot and compact
/// their logs; restarted with only its data dir, it catches up (through a
/// snapshot) and serves linearizable reads. A SIGTERM stops it cleanly.
#[test]
fn a_restarted_node_catches_up_through_a_snapshot() {
    let mut cluster = Cluster::start(
        "restart",
        3,
        &["--snapshot-every", "20", "--snapshot-log-factor", "0"],
    );
    cluster.wait_for_leader(SETTLE);
    let leader = cluster.wait_for_leader(SETTLE);
    let lagging = (1..=3).find(|&id| id != leader).unwrap();
    cluster.kill(lagging);
    let writer = (1..=3).find(|&id| id != lagging).unwrap();
    let mut client = cluster.client(writer);
    let pairs: Vec<(String, String)> = (0..600)
        .map(|i| (format!("r{i}"), format!("value-{i}")))
        .collect();
    for chunk in pairs.chunks(50) {
        let mut mset = redis::cmd("MSET");
        for (key, value) in chunk {
            mset.arg(key).arg(value);
        }
        let _: () = retrying(&mut client, &mset, SETTLE).unwrap();
        for (key, value) in chunk.iter().take(5) {
            let _: String =
                retrying(&mut client, &set(&format!("{key}-single"), value), SETTLE).unwrap();
        }
    }
    cluster.restart(lagging);
    let mut caught_up = cluster.client(lagging);
    for (key, value) in &pairs {
        let stored: Option<String> = retrying(&mut caught_up, &get(key), SETTLE).unwrap();
        assert_eq!(stored.as_ref(), Some(value));
    }
    let installed = support::info_field(cluster.node(lagging).client, "snapshot_index").unwrap();
    assert!(
        installed.parse::<u64>().unwrap() > 1,
        "caught up without a snapshot? {installed}"
    );
    // Its log is the segmented one (the default), cleared by the install.
    let (ok, status) = cluster.ctl(lagging, &["status"]);
    assert!(ok, "{status}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["raft_log"], "segments", "{status}");
    assert!(status["raft_log_segments"].as_u64() >= Some(1), "{status}");
    let status = cluster.stop(lagging);
    assert!(status.success(), "SIGTERM exit: {status}");
}

/// A follower paused (its memory kept) while keys are deleted and others
/// written, long enough that the leader's log moves past it, installs a
/// snapshot on resuming; what its apply path remembered about which keys
/// exist must not survive that, or re-creating the deleted keys would
/// leave its key count behind the others'.
#[test]
fn a_follower_that_installs_a_snapshot_while_running_keeps_an_exact_key_count() {
    let cluster = Cluster::start(
        "presence",
        3,
        &["--snapshot-every", "20", "--snapshot-log-factor", "0"],
    );
    let leader = cluster.wait_for_leader(SETTLE);
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let mut writer = cluster.client(leader);
    let mut reader = cluster.client(follower);
    for i in 0..30 {
        let _: String = retrying(&mut writer, &set(&format!("p{i}"), "1"), SETTLE).unwrap();
    }
    let seen: Option<String> = retrying(&mut reader, &get("p29"), SETTLE).unwrap();
    assert_eq!(seen.as_deref(), Some("1"), "the follower applied the keys");
    cluster.signal(follower, "STOP");
    // First more appends than the leader keeps in flight to one follower
    // (256): those wait in the paused follower's socket, the rest wait at
    // the leader. Then the deletes, which the follower will only ever see
    // as part of a snapshot, since the leader's log moves past them.
    for j in 0..300 {
        let _: String = retrying(&mut writer, &set(&format!("q{j}"), "2"), SETTLE).unwrap();
    }
    for i in 0..30 {
        let _: i64 = retrying(&mut writer, redis::cmd("DEL").arg(format!("p{i}")), SETTLE).unwrap();
    }
    for j in 0..50 {
        let _: String = retrying(&mut writer, &set(&format!("r{j}"), "2"), SETTLE).unwrap();
    }
    // Snapshots are taken at the state machine's last checkpoint (written
    // in the background), a little behind the applied index, and the log
    // is compacted 10 entries behind them once RocksDB holds their state
    // on disk: wait until the leader's log starts past the deletes, 50
    // writes back.
    let field = |name: &str| {
        support::info_field(cluster.node(leader).client, name)
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let applied = field("applied_index");
    let deadline = Instant::now() + SETTLE;
    while field("first_index") < applied - 30 {
        assert!(Instant::now() < deadline, "no snapshot past the deletes");
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.signal(follower, "CONT");
    let caught_up: Option<String> = retrying(&mut reader, &get("r49"), SETTLE).unwrap();
    assert_eq!(caught_up.as_deref(), Some("2"));
    assert!(
        metric(
            cluster.node(follower).admin,
            "drkv_snapshots_installed_total"
        ) > 0,
        "the follower caught up without a snapshot"
    );
    for i in 0..30 {
        let _: String = retrying(&mut writer, &set(&format!("p{i}"), "3"), SETTLE).unwrap();
    }
    for id in 1..=3 {
        let mut client = cluster.client(id);
        let size: i64 = retrying(&mut client, &redis::cmd("DBSIZE"), SETTLE).unwrap();
        assert_eq!(size, 380, "DBSIZE on node {id}");
    }
}

/// A fourth node joins as a learner and is promoted while writes go on;
/// then a founding member is removed. No acknowledged write is lost.
#[test]
fn a_learner_joins_under_load_is_promoted_and_a_member_is_removed() {
    let mut cluster = Cluster::start("members", 3, &[]);
    let leader = cluster.wait_for_leader(SETTLE);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writer = {
        let addr = cluster.node(leader).client;
        let stop = Arc::clone(&stop);
        let acked = Arc::clone(&acked);
        std::thread::spawn(move || {
            let mut client = connect(addr);
            let mut acknowledged = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                if set(&format!("m{i}"), "x")
                    .query::<String>(&mut client)
                    .is_ok()
                {
                    acknowledged.push(format!("m{i}"));
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
            acknowledged
        })
    };
    cluster.add_node(4);
    let peer = cluster.node(4).peer.to_string();
    let (ok, text) = cluster.ctl(1, &["add-learner", "4", &peer]);
    assert!(ok, "add-learner: {text}");
    cluster.start_joiner(4);
    // The learner catches up and serves reads (through the leader's
    // read index) before it is promoted.
    let mut learner = cluster.client(4);
    let value: Option<String> = retrying(&mut learner, &get("m0"), SETTLE).unwrap();
    assert_eq!(value.as_deref(), Some("x"));
    let (ok, text) = cluster.ctl(2, &["promote", "4"]);
    assert!(ok, "promote: {text}");
    assert_eq!(voters(&cluster, 4), [1, 2, 3, 4]);
    let removed = (1..=3).find(|&id| id != leader).unwrap();
    let (ok, text) = cluster.ctl(leader, &["remove", &removed.to_string()]);
    assert!(ok, "remove: {text}");
    cluster.kill(removed);
    // Writes go on after the removal: wait for some, not for a time.
    let before = acked.load(Ordering::Relaxed);
    wait_until(
        LOAD_BOUND,
        "5 writes acknowledged after the removal, 21 in all",
        || acked.load(Ordering::Relaxed) >= (before + 5).max(21),
    );
    stop.store(true, Ordering::Relaxed);
    let acknowledged = writer.join().unwrap();
    assert!(
        acknowledged.len() > 20,
        "only {} writes acknowledged",
        acknowledged.len()
    );
    let remaining: Vec<u64> = [1, 2, 3, 4]
        .into_iter()
        .filter(|&id| id != removed)
        .collect();
    let deadline = Instant::now() + SETTLE;
    while voters(&cluster, 4) != remaining {
        assert!(
            Instant::now() < deadline,
            "voters stay {:?}",
            voters(&cluster, 4)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for key in &acknowledged {
        let value: Option<String> = retrying(&mut learner, &get(key), SETTLE).unwrap();
        assert_eq!(value.as_deref(), Some("x"), "acknowledged write {key} lost");
    }
}

/// The voters node `id` reports through `drkv ctl members`.
fn voters(cluster: &Cluster, id: u64) -> Vec<u64> {
    let (ok, text) = cluster.ctl(id, &["members"]);
    assert!(ok, "members: {text}");
    let members: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    serde_json::from_value(members["voters"].clone()).expect("a list of ids")
}

/// The admin port's counter `name`, or 0 when the node does not answer.
fn metric(admin: std::net::SocketAddr, name: &str) -> u64 {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(admin) else {
        return 0;
    };
    let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: drkv\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// With `--read-lease` the leader answers reads on its lease; every read
/// that starts after a write was acknowledged still sees it, on every
/// node, also across the leader's death and a new leader's first lease.
#[test]
fn lease_reads_see_every_acknowledged_write_across_a_failover() {
    let mut cluster = Cluster::start("lease", 3, &["--read-lease"]);
    let leader = cluster.wait_for_leader(SETTLE);
    let stop = Arc::new(AtomicBool::new(false));
    let checked_total = Arc::new(AtomicU64::new(0));
    // Checkers connected to both their nodes: the leader is killed only
    // after all are (on a busy machine a thread may start late, and its
    // first connection must not be to the dead leader).
    let connected = Arc::new(AtomicU64::new(0));
    let checkers: Vec<_> = (1..=3u64)
        .map(|id| {
            // Write through one node, read back through the next one.
            let write_addr = cluster.node(id).client;
            let read_addr = cluster.node(id % 3 + 1).client;
            let stop = Arc::clone(&stop);
            let checked_total = Arc::clone(&checked_total);
            let connected = Arc::clone(&connected);
            std::thread::spawn(move || {
                let reconnect = |addr: std::net::SocketAddr| {
                    redis::Client::open(format!("redis://{addr}/"))
                        .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
                        .ok()
                };
                let (mut writer, mut reader) = (connect(write_addr), connect(read_addr));
                connected.fetch_add(1, Ordering::Relaxed);
                let (mut checked, mut i) = (0u64, 0u64);
                let key = format!("lease-{id}");
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let written = set(&key, &i.to_string()).query::<String>(&mut writer);
                    if written.is_err() {
                        std::thread::sleep(Duration::from_millis(50));
                        writer = reconnect(write_addr).unwrap_or(writer);
                        continue;
                    }
                    match get(&key).query::<Option<String>>(&mut reader) {
                        Ok(value) => {
                            // Only this thread writes the key, so the read
                            // must see exactly the acknowledged value.
                            assert_eq!(value, Some(i.to_string()), "stale read of {key}");
                            checked += 1;
                            checked_total.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(50));
                            reader = reconnect(read_addr).unwrap_or(reader);
                        }
                    }
                }
                checked
            })
        })
        .collect();
    let leader_admin = cluster.node(leader).admin;
    wait_until(LOAD_BOUND, "every checker connected", || {
        connected.load(Ordering::Relaxed) == 3
    });
    wait_until(LOAD_BOUND, "the leader answers reads on its lease", || {
        metric(leader_admin, "drkv_lease_reads_total") > 0
    });
    cluster.kill(leader);
    let new_leader = cluster.wait_for_leader(SETTLE);
    assert_ne!(new_leader, leader);
    let new_admin = cluster.node(new_leader).admin;
    wait_until(
        LOAD_BOUND,
        "the new leader answers reads on its lease",
        || metric(new_admin, "drkv_lease_reads_total") > 0,
    );
    // And checkers through live nodes keep checking after the failover.
    let checked_before = checked_total.load(Ordering::Relaxed);
    wait_until(LOAD_BOUND, "30 reads checked after the failover", || {
        checked_total.load(Ordering::Relaxed) >= checked_before + 30
    });
    stop.store(true, Ordering::Relaxed);
    let checked: Vec<u64> = checkers.into_iter().map(|c| c.join().unwrap()).collect();
    // The two checkers that touch only live nodes kept checking.
    assert!(
        checked.iter().filter(|&&n| n > 20).count() >= 1,
        "reads checked per thread: {checked:?}"
    );
    assert!(metric(cluster.node(new_leader).admin, "drkv_lease_reads_total") > 0);
}
