//! The client port under bad and unusual input, against a real one-node
//! `drkv` process: malformed and oversized requests, slow and vanishing
//! clients, the connection limit, pipelining, RESP3.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::{Cluster, retrying};

fn raw(cluster: &Cluster) -> TcpStream {
    let stream = TcpStream::connect(cluster.node(1).client).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

/// Reads until the server closes the connection.
fn read_to_close(stream: &mut TcpStream) -> String {
    let mut text = Vec::new();
    let _ = stream.read_to_end(&mut text);
    String::from_utf8_lossy(&text).into_owned()
}

/// Reads at least `len` bytes.
fn read_exactly(stream: &mut TcpStream, len: usize) -> String {
    let mut buffer = vec![0; len];
    stream.read_exact(&mut buffer).expect("a reply");
    String::from_utf8_lossy(&buffer).into_owned()
}

#[test]
fn bad_input_gets_redis_errors_and_never_harms_other_clients() {
    let cluster = Cluster::start(
        "clients",
        1,
        &[
            "--max-clients",
            "6",
            "--partial-request-timeout-ms",
            "500",
            "--request-bytes-max",
            "65536",
        ],
    );
    cluster.wait_for_leader(Duration::from_secs(20));
    let mut healthy = cluster.client(1);
    let _: String = retrying(
        &mut healthy,
        redis::cmd("SET").arg("k").arg("v"),
        Duration::from_secs(10),
    )
    .unwrap();

    // Malformed framing: an error, then the connection is closed.
    let mut stream = raw(&cluster);
    stream.write_all(b"*1\r\n$x\r\n").unwrap();
    assert!(read_to_close(&mut stream).starts_with("-ERR Protocol error: invalid bulk length"));

    // A bulk length past the limit is refused before anything is read.
    let mut stream = raw(&cluster);
    stream
        .write_all(b"*2\r\n$3\r\nSET\r\n$999999999999\r\n")
        .unwrap();
    assert!(read_to_close(&mut stream).starts_with("-ERR Protocol error"));
    let mut stream = raw(&cluster);
    stream.write_all(&[b'A'; 70_000]).unwrap();
    assert!(read_to_close(&mut stream).contains("-ERR Protocol error: request too large"));

    // Unknown commands and wrong arities: errors, the connection stays.
    let mut stream = raw(&cluster);
    stream.write_all(b"FLY away\r\nGET\r\nPING\r\n").unwrap();
    let expected = "-ERR unknown command 'FLY', with args beginning with: 'away' \r\n-ERR wrong number of arguments for 'get' command\r\n+PONG\r\n";
    let text = read_exactly(&mut stream, expected.len());
    assert_eq!(text.to_lowercase(), expected.to_lowercase());

    // Slowloris: half a request, then silence: dropped after the timeout.
    let mut slow = raw(&cluster);
    slow.write_all(b"*2\r\n$3\r\nGET").unwrap();
    assert_eq!(read_to_close(&mut slow), "");

    // A client that vanishes mid-request harms nobody.
    let mut vanishing = raw(&cluster);
    vanishing
        .write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100\r\nabc")
        .unwrap();
    drop(vanishing);

    // Pipelining: 200 commands in one write, answered in order.
    let mut stream = raw(&cluster);
    let mut pipeline = Vec::new();
    for i in 0..100 {
        pipeline.extend_from_slice(
            format!(
                "*3\r\n$3\r\nSET\r\n$2\r\np{}\r\n$1\r\n{}\r\n",
                i % 10,
                i % 10
            )
            .as_bytes(),
        );
        pipeline.extend_from_slice(format!("*2\r\n$3\r\nGET\r\n$2\r\np{}\r\n", i % 10).as_bytes());
    }
    stream.write_all(&pipeline).unwrap();
    let mut expected = String::new();
    for i in 0..100 {
        expected.push_str(&format!("+OK\r\n$1\r\n{}\r\n", i % 10));
    }
    assert_eq!(read_exactly(&mut stream, expected.len()), expected);

    // RESP3 after HELLO 3: maps and the null type.
    let mut stream = raw(&cluster);
    stream.write_all(b"HELLO 3\r\n").unwrap();
    let mut head = [0u8; 1];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(head[0], b'%');
    let mut rest = vec![0; 4096];
    let _ = stream.read(&mut rest).unwrap();
    stream.write_all(b"GET missing\r\n").unwrap();
    assert_eq!(read_exactly(&mut stream, 3), "_\r\n");

    // The connection limit (6, of which `healthy`, `stream` and the
    // one above hold... this fills the rest and one more).
    let mut extra: Vec<TcpStream> = Vec::new();
    let refused = loop {
        let mut candidate = raw(&cluster);
        candidate.write_all(b"PING\r\n").unwrap();
        let mut reply = [0u8; 7];
        candidate.read_exact(&mut reply).unwrap();
        if &reply == b"+PONG\r\n" {
            extra.push(candidate);
            assert!(extra.len() <= 6, "the limit is not enforced");
            continue;
        }
        break String::from_utf8_lossy(&reply).into_owned() + &read_to_close(&mut candidate);
    };
    assert!(
        refused.contains("max number of clients reached"),
        "{refused}"
    );
    drop(extra);

    // Through all of it the healthy client was served.
    let value: String = retrying(
        &mut healthy,
        redis::cmd("GET").arg("k"),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(value, "v");
}

/// SIGTERM while a pipeline is being answered: every command the node
/// took is answered, then the connection closes and the node exits 0.
#[test]
fn a_stopping_node_answers_what_it_took() {
    let mut cluster = Cluster::start("stopping", 1, &[]);
    cluster.wait_for_leader(Duration::from_secs(20));
    let mut warm = cluster.client(1);
    let _: String = retrying(
        &mut warm,
        redis::cmd("SET").arg("w").arg("1"),
        Duration::from_secs(10),
    )
    .unwrap();
    let mut stream = raw(&cluster);
    let mut pipeline = Vec::new();
    for i in 0..100 {
        pipeline.extend_from_slice(
            format!("*3\r\n$3\r\nSET\r\n$3\r\ns{:02}\r\n$1\r\nx\r\n", i).as_bytes(),
        );
    }
    stream.write_all(&pipeline).unwrap();
    assert_eq!(read_exactly(&mut stream, 5), "+OK\r\n");
    let stopping = std::thread::spawn(move || {
        let status = cluster.stop(1);
        (cluster, status)
    });
    let rest = read_to_close(&mut stream);
    assert_eq!(
        rest,
        "+OK\r\n".repeat(99),
        "every taken command is answered"
    );
    let (_cluster, status) = stopping.join().unwrap();
    assert!(status.success(), "exit after SIGTERM: {status}");
}

/// SIGTERM stops a node within a few seconds whatever its clients do:
/// idle connections, a request cut in half, a client that never reads
/// its answers, a half-sent admin request — also right after the node
/// was removed from the cluster.
#[test]
fn sigterm_stops_a_node_promptly_whatever_its_clients_do() {
    let mut cluster = Cluster::start("prompt-stop", 3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(20));
    let victim = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|&id| id != leader)
        .expect("a follower");
    let node = cluster.node(victim);
    let (client_addr, admin_addr) = (node.client, node.admin);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(client_addr).unwrap());
    }
    let mut half = TcpStream::connect(client_addr).unwrap();
    half.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk").unwrap();
    // Pipelined reads it never collects: the node's writes block.
    let mut deaf = TcpStream::connect(client_addr).unwrap();
    let request = b"*2\r\n$4\r\nECHO\r\n$4096\r\n".to_vec();
    let mut pipeline = Vec::new();
    for _ in 0..2000 {
        pipeline.extend_from_slice(&request);
        pipeline.extend_from_slice(&[b'x'; 4096]);
        pipeline.extend_from_slice(b"\r\n");
    }
    deaf.set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let _ = deaf.write_all(&pipeline);
    let mut admin = TcpStream::connect(admin_addr).unwrap();
    admin
        .write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let (removed, text) = cluster.ctl(leader, &["remove", &victim.to_string()]);
    assert!(removed, "{text}");
    let started = std::time::Instant::now();
    let status = cluster.stop(victim);
    let took = started.elapsed();
    assert!(status.success(), "exit after SIGTERM: {status}");
    // By design at most about 3.5 s (2 s for connections to finish,
    // 1 s more for the other ports, 0.5 s for the runtime); the bound
    // leaves room for a busy machine and still catches a node that hangs.
    assert!(
        took < Duration::from_secs(8),
        "SIGTERM took {took:?} to stop the node"
    );
    drop((held, half, deaf, admin));
}
