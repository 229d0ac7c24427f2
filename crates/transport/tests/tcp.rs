//! Endpoints on 127.0.0.1: many messages, restarts, garbage, strangers,
//! slow readers.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use dr_codec::message::{AppendEntries, Entry, EntryKind, Message, MessageBody, NodeId};
use dr_transport::handshake::{HELLO_LEN, Hello};
use dr_transport::{TcpTransport, Transport, TransportConfig, TransportStats};
use support::heartbeat;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::Receiver;
use tokio::time::{Instant, sleep, timeout};

const CLUSTER: u64 = 0xD1;
const PATIENCE: Duration = Duration::from_secs(20);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn append(from: NodeId, to: NodeId, sequence: u64, entries: usize, bytes: usize) -> Message {
    let entries = (0..entries as u64)
        .map(|i| Entry {
            term: sequence,
            index: sequence * 1000 + i,
            kind: EntryKind::Normal,
            payload: Bytes::from(vec![(sequence + i) as u8; bytes]),
        })
        .collect();
    Message {
        from,
        to,
        term: sequence,
        body: MessageBody::AppendEntries(AppendEntries {
            prev_log_index: 0,
            prev_log_term: 0,
            leader_commit: 0,
            entries,
        }),
    }
}

async fn start(
    id: NodeId,
    listen: SocketAddr,
    peers: &[(NodeId, SocketAddr)],
) -> (TcpTransport, Receiver<Message>) {
    let mut config = TransportConfig::new(CLUSTER, id, listen);
    config.peers = peers.iter().copied().collect();
    config.backoff_max = Duration::from_millis(200);
    TcpTransport::start(config).await.expect("endpoint starts")
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(5)).await;
    }
}

/// Sends, waiting while the peer's queue is full.
async fn send_all(transport: &TcpTransport, messages: impl IntoIterator<Item = Message>) {
    for message in messages {
        let deadline = Instant::now() + PATIENCE;
        while !transport.send(message.clone()) {
            assert!(Instant::now() < deadline, "the queue never drained");
            sleep(Duration::from_millis(1)).await;
        }
    }
}

async fn receive(inbox: &mut Receiver<Message>) -> Message {
    timeout(PATIENCE, inbox.recv())
        .await
        .expect("a message in time")
        .expect("the transport is alive")
}

fn stats(transport: &TcpTransport) -> TransportStats {
    transport.stats()
}

/// Two connected endpoints, 1 and 2.
async fn pair() -> (
    (TcpTransport, Receiver<Message>),
    (TcpTransport, Receiver<Message>),
) {
    let two = start(2, any_port(), &[]).await;
    let one = start(1, any_port(), &[(2, two.0.local_addr())]).await;
    two.0.add_peer(1, one.0.local_addr());
    eventually("the connection", || {
        stats(&one.0).connections_established >= 1
    })
    .await;
    (one, two)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_messages_both_ways_arrive_in_order() {
    let ((one, mut inbox_one), (two, mut inbox_two)) = pair().await;
    const COUNT: u64 = 20_000;
    let sending = async {
        send_all(&one, (1..=COUNT).map(|n| heartbeat(1, 2, n))).await;
        send_all(&two, (1..=COUNT).map(|n| heartbeat(2, 1, n))).await;
    };
    let receiving = async {
        for expected in 1..=COUNT {
            let message = receive(&mut inbox_two).await;
            assert_eq!((message.from, message.term), (1, expected));
        }
        for expected in 1..=COUNT {
            let message = receive(&mut inbox_one).await;
            assert_eq!((message.from, message.term), (2, expected));
        }
    };
    tokio::join!(sending, receiving);
    let sent = stats(&one);
    assert_eq!(sent.messages_sent, COUNT);
    assert!(
        sent.frames_sent < COUNT,
        "batched: {} frames",
        sent.frames_sent
    );
    assert_eq!(stats(&two).messages_received, COUNT);
}

/// Holds `message` until it is queued (the queue may be full).
async fn hold(transport: &TcpTransport, message: &Message) {
    let deadline = Instant::now() + PATIENCE;
    while !transport.hold(message.clone()) {
        assert!(Instant::now() < deadline, "the queue never drained");
        transport.flush();
        sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_messages_leave_at_the_flush_on_the_flushing_thread() {
    let ((one, _inbox_one), (_two, mut inbox_two)) = pair().await;
    for term in 1..=3 {
        hold(&one, &heartbeat(1, 2, term)).await;
    }
    // Nothing woke the writer: the messages wait for the flush (a busy
    // machine only makes a wrong early delivery less likely, never a
    // right answer wrong).
    sleep(Duration::from_millis(100)).await;
    assert!(inbox_two.try_recv().is_err(), "held until the flush");
    assert_eq!(stats(&one).messages_sent, 0);
    one.flush();
    // Written by the flush itself: one frame, counted before it returned.
    let sent = stats(&one);
    assert_eq!((sent.messages_sent, sent.frames_sent), (3, 1));
    for term in 1..=3 {
        assert_eq!(receive(&mut inbox_two).await.term, term);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_and_sent_frames_never_interleave_when_the_socket_fills() {
    // A flush writes what the socket takes and leaves the rest of its
    // frame to the writer task, while another thread sends through the
    // writer: every frame must still arrive whole (a torn frame fails
    // its checksum and closes the connection) and each sender's
    // messages in order.
    // Node 2 takes 4 messages into its inbox before its reader stalls:
    // the socket fills until the test reads.
    let mut config = TransportConfig::new(CLUSTER, 2, any_port());
    config.inbound_capacity = 4;
    let (two, mut inbox_two) = TcpTransport::start(config).await.unwrap();
    let (one, _inbox_one) = start(1, any_port(), &[(2, two.local_addr())]).await;
    two.add_peer(1, one.local_addr());
    eventually("the connection", || {
        stats(&one).connections_established >= 1
    })
    .await;
    const BIG: u64 = 300;
    const SMALL: u64 = 3000;
    let one = std::sync::Arc::new(one);
    let sender = std::sync::Arc::clone(&one);
    let small = tokio::spawn(async move {
        for n in 1..=SMALL {
            send_all(&sender, [heartbeat(1, 2, n)]).await;
            if n % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    let mut left_to_the_writer = false;
    for n in 1..=BIG {
        // 64 KiB appends: a few fill the loopback socket's buffer.
        hold(&one, &append(1, 2, n, 16, 4096)).await;
        one.flush();
        left_to_the_writer |= one.queued(2).unwrap().0 > 0;
    }
    assert!(left_to_the_writer, "a flush met a full socket");
    let (mut big_seen, mut small_seen) = (0, 0);
    while big_seen < BIG || small_seen < SMALL {
        let message = receive(&mut inbox_two).await;
        match message.body {
            MessageBody::AppendEntries(_) => {
                big_seen += 1;
                assert_eq!(message.term, big_seen, "held appends in order");
            }
            _ => {
                small_seen += 1;
                assert_eq!(message.term, small_seen, "sent heartbeats in order");
            }
        }
    }
    small.await.unwrap();
    assert_eq!(stats(&one).bad_frames, 0);
    assert_eq!(stats(&one).connections_established, 1, "never reconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_takes_the_messages_it_keeps_before_the_inbox() {
    let ((one, _inbox_one), (two, mut inbox_two)) = pair().await;
    let (kept_tx, mut kept) = tokio::sync::mpsc::unbounded_channel();
    // Odd terms are the hook's; even ones go on to the inbox.
    let hook = move |message: Message| {
        if message.term % 2 == 1 {
            kept_tx.send(message.term).expect("the test listens");
            None
        } else {
            Some(message)
        }
    };
    assert!(two.intercept(Box::new(hook)));
    assert!(!two.intercept(Box::new(Some)), "one hook per endpoint");
    send_all(&one, (1..=100).map(|n| heartbeat(1, 2, n))).await;
    for expected in (2..=100).step_by(2) {
        assert_eq!(receive(&mut inbox_two).await.term, expected);
    }
    for expected in (1..=100).step_by(2) {
        let term = timeout(PATIENCE, kept.recv()).await.expect("in time");
        assert_eq!(term, Some(expected));
    }
    assert!(inbox_two.try_recv().is_err());
    assert_eq!(stats(&two).messages_received, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_batches_arrive_with_their_payloads() {
    let ((one, _inbox_one), (_two, mut inbox_two)) = pair().await;
    send_all(&one, (1..=200).map(|n| append(1, 2, n, 64, 256))).await;
    for n in 1..=200 {
        let received = receive(&mut inbox_two).await;
        assert_eq!(received, append(1, 2, n, 64, 256));
        // Zero copy: the payloads are slices of one receive buffer, so they
        // lie within one frame's span of memory, not in 64 allocations.
        let MessageBody::AppendEntries(batch) = &received.body else {
            unreachable!("checked equal above")
        };
        let starts = batch.entries.iter().map(|e| e.payload.as_ptr() as usize);
        let (low, high) = (starts.clone().min().unwrap(), starts.max().unwrap());
        // (Separate 256-byte allocations would sit at least 16 bytes apart.)
        assert!(
            high + 256 - low <= 64 * (256 + 8),
            "payloads were copied apart: span {}",
            high + 256 - low
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_restarted_at_its_address_is_picked_up() {
    let three = start(3, any_port(), &[]).await;
    let address_of_three = three.0.local_addr();
    let two = start(2, any_port(), &[(3, address_of_three)]).await;
    let one = start(
        1,
        any_port(),
        &[(2, two.0.local_addr()), (3, address_of_three)],
    )
    .await;
    three.0.add_peer(1, one.0.local_addr());
    three.0.add_peer(2, two.0.local_addr());
    two.0.add_peer(1, one.0.local_addr());
    let (three_transport, mut inbox_three) = three;
    send_all(&one.0, (1..=100).map(|n| heartbeat(1, 3, n))).await;
    for n in 1..=100 {
        assert_eq!(receive(&mut inbox_three).await.term, n);
    }
    drop(three_transport);
    drop(inbox_three);
    // Node 1 keeps sending while 3 is down: those may be lost.
    for n in 101..=150 {
        one.0.send(heartbeat(1, 3, n));
        sleep(Duration::from_millis(1)).await;
    }
    let (restarted, mut inbox) = start(
        3,
        address_of_three,
        &[(1, one.0.local_addr()), (2, two.0.local_addr())],
    )
    .await;
    // Without anyone acting, 1 and 2 redial, and messages flow again.
    let mut next = 1000;
    let deadline = Instant::now() + PATIENCE;
    let first = loop {
        assert!(
            Instant::now() < deadline,
            "node 1 never reached the restarted node 3"
        );
        one.0.send(heartbeat(1, 3, next));
        next += 1;
        if let Ok(Some(message)) = timeout(Duration::from_millis(20), inbox.recv()).await {
            break message;
        }
    };
    assert_eq!(first.from, 1);
    assert!(two.0.send(heartbeat(2, 3, 7)));
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(
            Instant::now() < deadline,
            "node 2 never reached the restarted node 3"
        );
        let message = receive(&mut inbox).await;
        if message.from == 2 {
            break;
        }
    }
    drop(restarted);
}

async fn raw_connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

/// Connects and sends a hello claiming to be `node_id` of `cluster_id`.
async fn connect_as(addr: SocketAddr, cluster_id: u64, node_id: NodeId) -> TcpStream {
    let mut stream = raw_connect(addr).await;
    let hello = Hello {
        cluster_id,
        node_id,
    }
    .encode();
    stream.write_all(&hello).await.expect("send the hello");
    stream
}

/// Connects as `node_id`, and checks the answer comes from node `to`.
async fn handshake_as(addr: SocketAddr, node_id: NodeId, to: NodeId) -> TcpStream {
    let mut stream = connect_as(addr, CLUSTER, node_id).await;
    let mut answer = [0u8; HELLO_LEN];
    stream.read_exact(&mut answer).await.expect("the answer");
    assert_eq!(Hello::decode(&answer).unwrap().node_id, to);
    stream
}

fn frame_of(message: Message) -> bytes::BytesMut {
    let mut frame = bytes::BytesMut::new();
    dr_codec::frame::encode_messages(&[message], &Default::default(), &mut frame).unwrap();
    frame
}

/// Reads until the other side closes (or a deadline), as a refused
/// connection must be closed.
async fn closed_by_peer(stream: &mut TcpStream) -> bool {
    let mut buffer = [0u8; 256];
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        match timeout(Duration::from_millis(100), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_strangers_and_bad_frames_close_only_their_connection() {
    // Node 3 accepts from 1 (running) and 2 (impersonated below).
    let three = start(3, any_port(), &[]).await;
    let one = start(1, any_port(), &[(3, three.0.local_addr())]).await;
    let (three_transport, mut inbox_three) = three;
    three_transport.add_peer(1, one.0.local_addr());
    three_transport.add_peer(2, "127.0.0.1:9".parse().unwrap());
    let target = three_transport.local_addr();
    eventually("1 connects to 3", || {
        stats(&one.0).connections_established >= 1
    })
    .await;

    let mut garbage = raw_connect(target).await;
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_by_peer(&mut garbage).await, "garbage closed");

    let mut truncated = raw_connect(target).await;
    let hello = Hello {
        cluster_id: CLUSTER,
        node_id: 2,
    }
    .encode();
    truncated.write_all(&hello[..10]).await.unwrap();
    truncated.shutdown().await.unwrap();

    let mut stranger = connect_as(target, CLUSTER + 1, 2).await;
    assert!(closed_by_peer(&mut stranger).await, "other cluster closed");

    let mut unknown = connect_as(target, CLUSTER, 77).await;
    assert!(closed_by_peer(&mut unknown).await, "unknown node closed");

    // A good hello, then a frame with a bad checksum.
    let mut impostor = handshake_as(target, 2, 3).await;
    let mut frame = frame_of(heartbeat(2, 3, 1));
    let last = frame.len() - 1;
    frame[last] ^= 0xFF;
    impostor.write_all(&frame).await.unwrap();
    assert!(closed_by_peer(&mut impostor).await, "bad frame closed");

    // A message that claims another sender on 2's link.
    let mut spoofer = handshake_as(target, 2, 3).await;
    spoofer
        .write_all(&frame_of(heartbeat(1, 3, 1)))
        .await
        .unwrap();
    assert!(closed_by_peer(&mut spoofer).await, "spoofed sender closed");

    eventually("the refusals counted", || {
        let stats = stats(&three_transport);
        stats.handshakes_refused >= 4 && stats.bad_frames >= 2
    })
    .await;
    // The real peer never noticed.
    send_all(&one.0, (1..=50).map(|n| heartbeat(1, 3, n))).await;
    for n in 1..=50 {
        let message = receive(&mut inbox_three).await;
        assert_eq!((message.from, message.term), (1, n));
    }
    assert_eq!(
        stats(&one.0).connections_established,
        1,
        "1's link was never cut"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_fills_only_its_own_bounded_queue() {
    // Node 2 completes the handshake and then never reads.
    let silent = TcpListener::bind(any_port()).await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let (mut stream, _) = silent.accept().await.unwrap();
        let mut hello = [0u8; HELLO_LEN];
        stream.read_exact(&mut hello).await.unwrap();
        stream
            .write_all(
                &Hello {
                    cluster_id: CLUSTER,
                    node_id: 2,
                }
                .encode(),
            )
            .await
            .unwrap();
        sleep(Duration::from_secs(3600)).await;
        drop(stream);
    });
    let (three, mut inbox_three) = start(3, any_port(), &[]).await;
    let mut config = TransportConfig::new(CLUSTER, 1, any_port());
    config.peers = [(2, silent_addr), (3, three.local_addr())]
        .into_iter()
        .collect();
    config.queue_bytes_max = 4 << 20;
    let (one, _) = TcpTransport::start(config).await.unwrap();
    three.add_peer(1, one.local_addr());
    eventually("both links up", || stats(&one).connections_established >= 2).await;

    let mut refused = 0;
    for n in 1..=2000 {
        if !one.send(append(1, 2, n, 16, 1024)) {
            refused += 1;
        }
        if n % 100 == 0 {
            sleep(Duration::from_millis(1)).await;
        }
    }
    assert!(refused > 0, "the silent peer's queue filled up");
    let (_, queued_bytes) = one.queued(2).unwrap();
    assert!(queued_bytes <= 4 << 20, "queue bound held: {queued_bytes}");
    assert!(stats(&one).messages_dropped >= refused);
    send_all(&one, (1..=100).map(|n| heartbeat(1, 3, n))).await;
    for n in 1..=100 {
        assert_eq!(receive(&mut inbox_three).await.term, n);
    }
    hold.abort();
}

#[tokio::test]
async fn strangers_to_the_cluster_cannot_dial_in() {
    let two = start(2, any_port(), &[]).await;
    let mut config = TransportConfig::new(CLUSTER + 1, 1, any_port());
    config.peers.insert(2, two.0.local_addr());
    let (foreign, _) = TcpTransport::start(config).await.unwrap();
    two.0.add_peer(1, foreign.local_addr());
    eventually("the refusal", || stats(&two.0).handshakes_refused >= 1).await;
    eventually("the dialler's failures", || {
        let stats = stats(&foreign);
        stats.handshakes_refused + stats.dial_failures >= 1
    })
    .await;
    assert_eq!(stats(&two.0).connections_established, 0);
}

#[tokio::test]
async fn a_taken_port_is_a_clear_error() {
    let (one, _) = start(1, any_port(), &[]).await;
    let error = TcpTransport::start(TransportConfig::new(CLUSTER, 2, one.local_addr()))
        .await
        .expect_err("the port is taken");
    assert!(error.to_string().contains("cannot listen"), "{error}");
}
