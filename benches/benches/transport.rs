//! dr-transport between two endpoints on 127.0.0.1: messages per second
//! for heartbeats (about 64 bytes on the wire each) and bytes per second
//! for append batches of 64 entries of 256 B, one way, as fast as the
//! sender can queue them.

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dr_codec::message::{AppendEntries, Entry, EntryKind, Heartbeat, Message, MessageBody};
use dr_transport::{TcpTransport, Transport, TransportConfig};
use tokio::runtime::Runtime;
use tokio::sync::mpsc::Receiver;

fn heartbeat(term: u64) -> Message {
    Message {
        from: 1,
        to: 2,
        term,
        body: MessageBody::Heartbeat(Heartbeat {
            commit: term,
            read_context: 0,
        }),
    }
}

fn append_batch(term: u64, payload: &Bytes) -> Message {
    let entries = (0..64)
        .map(|i| Entry {
            term,
            index: term * 64 + i,
            kind: EntryKind::Normal,
            payload: payload.clone(),
        })
        .collect();
    Message {
        from: 1,
        to: 2,
        term,
        body: MessageBody::AppendEntries(AppendEntries {
            prev_log_index: term * 64,
            prev_log_term: term,
            leader_commit: term * 64,
            entries,
        }),
    }
}

struct Link {
    runtime: Runtime,
    sender: TcpTransport,
    _receiver: TcpTransport,
    inbox: Receiver<Message>,
}

fn link() -> Link {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let any_port = "127.0.0.1:0".parse().expect("address");
    let (sender, receiver, inbox) = runtime.block_on(async {
        let (receiver, inbox) = TcpTransport::start(TransportConfig::new(9, 2, any_port))
            .await
            .expect("receiver");
        let mut config = TransportConfig::new(9, 1, any_port);
        config.peers.insert(2, receiver.local_addr());
        let (sender, _) = TcpTransport::start(config).await.expect("sender");
        receiver.add_peer(1, sender.local_addr());
        while sender.stats().connections_established == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        (sender, receiver, inbox)
    });
    Link {
        runtime,
        sender,
        _receiver: receiver,
        inbox,
    }
}

/// Sends `count` messages made by `make` and waits until all arrived.
fn transfer(link: &mut Link, count: u64, make: &dyn Fn(u64) -> Message) -> Duration {
    let Link {
        runtime,
        sender,
        inbox,
        ..
    } = link;
    runtime.block_on(async {
        let started = Instant::now();
        let sending = async {
            for n in 0..count {
                let message = make(n);
                while !sender.send(message.clone()) {
                    tokio::task::yield_now().await;
                }
            }
        };
        let receiving = async {
            for _ in 0..count {
                inbox.recv().await.expect("link alive");
            }
        };
        tokio::join!(sending, receiving);
        started.elapsed()
    })
}

fn loopback(c: &mut Criterion) {
    let mut link = link();
    let payload = Bytes::from(vec![0x5A; 256]);
    let mut group = c.benchmark_group("transport/loopback");
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("dr-transport", "heartbeat"), |b| {
        b.iter_custom(|iters| transfer(&mut link, iters, &heartbeat));
    });
    group.throughput(Throughput::Bytes(64 * 256));
    group.bench_function(BenchmarkId::new("dr-transport", "append 64 x 256 B"), |b| {
        b.iter_custom(|iters| transfer(&mut link, iters, &|n| append_batch(n, &payload)));
    });
    group.finish();
}

criterion_group!(benches, loopback);
criterion_main!(benches);
