//! The load generator's etcd client against a real etcd (Debian's
//! `etcd-server`, which `cargo xtask ci` installs): the same preload and
//! closed-loop mix `cargo xtask bench cluster` puts on etcd, then a check
//! of what it left there, read back linearizably.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dr_node::loadgen::etcd::{EtcdClient, Outcome};
use dr_node::loadgen::{self, LoadConfig, Protocol, Workload};
use support::free_addr;

/// One etcd member in a scratch directory, killed on drop.
struct Etcd {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_etcd() -> (Etcd, std::net::SocketAddr) {
    let client = free_addr();
    let peer = free_addr();
    let dir = std::env::temp_dir().join(format!("dr-etcd-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let child = Command::new("etcd")
        .args(["--name", "e1", "--data-dir"])
        .arg(&dir)
        .args(["--listen-client-urls", &format!("http://{client}")])
        .args(["--advertise-client-urls", &format!("http://{client}")])
        .args(["--listen-peer-urls", &format!("http://{peer}")])
        .args(["--initial-advertise-peer-urls", &format!("http://{peer}")])
        .args(["--initial-cluster", &format!("e1=http://{peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd runs (cargo xtask ci installs etcd-server)");
    (Etcd { child, dir }, client)
}

#[test]
fn the_etcd_client_puts_and_reads_what_the_bench_measures() {
    let (_etcd, addr) = start_etcd();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut client = loop {
            if let Ok(mut client) = EtcdClient::connect(addr).await
                && client.put(b"ready", b"1").await == Ok(Outcome::Answered)
            {
                break client;
            }
            assert!(
                Instant::now() < deadline,
                "etcd at {addr} took no put in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // etcd refuses an empty key: the client must see the refusal.
        assert_eq!(client.put(b"", b"v").await, Ok(Outcome::Failed));
        assert_eq!(client.count(b"key:0000000003").await, Ok(0));

        let config = LoadConfig {
            targets: vec![addr],
            connections: 8,
            duration: Duration::from_millis(1500),
            writes_per_mille: 500,
            value_bytes: 256,
            keys: 300,
            workload: Workload::Set,
            protocol: Protocol::Etcd,
        };
        loadgen::preload(&config).await.expect("preload");
        for key in [0u64, 3, 299] {
            let name = format!("key:{key:010}");
            assert_eq!(client.count(name.as_bytes()).await, Ok(1), "{name}");
        }
        assert_eq!(
            client.count(b"key:0000000300").await,
            Ok(0),
            "past the keys"
        );
        let report = loadgen::run(&config).await.expect("the load runs");
        assert_eq!(report.errors, 0);
        assert!(report.ops > 100, "{report:?}");
        // Answers larger than the connection's first window (64 KiB) keep
        // coming: the client opens its windows.
        let mut reads = 0;
        while reads < 1000 {
            assert_eq!(client.get(b"key:0000000007").await, Ok(Outcome::Answered));
            reads += 1;
        }

        let refused = LoadConfig {
            workload: Workload::MultiIncr { incrs: 10 },
            ..config
        };
        assert!(
            loadgen::run(&refused).await.is_err(),
            "transactions are RESP only"
        );
    });
}

/// Runs `client` against a fake server on a current-thread runtime:
/// `serve` gets the one connection the client makes. A server whose own
/// checks failed fails the test.
fn with_fake_server<S, C>(
    serve: impl FnOnce(tokio::net::TcpStream) -> S + Send + 'static,
    client: impl FnOnce(std::net::SocketAddr) -> C,
) where
    S: Future<Output = ()> + Send + 'static,
    C: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.expect("accept");
            serve(socket).await;
            // Hold the connection open: the client must not wait for more.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        client(addr).await;
        if server.is_finished() {
            server.await.expect("the fake server's checks pass");
        } else {
            server.abort();
        }
    });
}

/// A target that is not etcd (here: a server answering in RESP, as drkv's
/// client port would) is a clear error, not a panic or a hang.
#[test]
fn a_target_that_is_not_etcd_is_a_clear_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let serve = |mut socket: tokio::net::TcpStream| async move {
        let mut preface = [0u8; 24];
        socket.read_exact(&mut preface).await.expect("preface");
        socket
            .write_all(b"-ERR unknown command 'PRI'\r\n")
            .await
            .expect("answer");
    };
    with_fake_server(serve, |addr| async move {
        let mut client = EtcdClient::connect(addr).await.expect("TCP connects");
        let answer = tokio::time::timeout(Duration::from_secs(20), client.put(b"k", b"v"))
            .await
            .expect("an answer, not a hang");
        let error = answer.expect_err("RESP is not HTTP/2");
        assert!(error.contains("etcd client URL"), "{error}");
    });
}

/// A server that closes the window for new streams after the first
/// answer: the second call waits (a stream's window update opens neither
/// the connection's nor a new stream's window) and is sent once the
/// server's settings allow it.
#[test]
fn the_client_waits_for_the_servers_window() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut bytes = len.to_be_bytes()[1..].to_vec();
        bytes.extend([kind, flags]);
        bytes.extend(stream.to_be_bytes());
        bytes.extend(payload);
        bytes
    }
    /// A whole answer on `stream`: headers, a message, trailers.
    fn answer(stream: u32) -> Vec<u8> {
        let mut bytes = frame(0x1, 0x4, stream, &[0x88]);
        bytes.extend(frame(0x0, 0, stream, &[0, 0, 0, 0, 2, 0x0a, 0]));
        bytes.extend(frame(0x1, 0x5, stream, &[0x40, 1, b'x', 1, b'0']));
        bytes
    }
    async fn read_until_put(socket: &mut tokio::net::TcpStream) {
        let mut seen = Vec::new();
        let mut buffer = vec![0u8; 4096];
        while !seen.windows(4).any(|w| w == b"/Put") {
            let n = socket.read(&mut buffer).await.expect("read");
            assert!(n > 0, "the client closed");
            seen.extend_from_slice(&buffer[..n]);
        }
    }
    let serve = |mut socket: tokio::net::TcpStream| async move {
        read_until_put(&mut socket).await;
        // The first answer, then new streams get no window, and a window
        // update for stream 3 that must not count.
        let mut bytes = answer(1);
        bytes.extend(frame(0x4, 0, 0, &[0, 4, 0, 0, 0, 0]));
        bytes.extend(frame(0x8, 0, 3, &1_000u32.to_be_bytes()));
        socket.write_all(&bytes).await.expect("answer");
        let early =
            tokio::time::timeout(Duration::from_millis(500), read_until_put(&mut socket)).await;
        assert!(early.is_err(), "the second call left with no window");
        socket
            .write_all(&frame(0x4, 0, 0, &[0, 4, 0, 0, 0xFF, 0xFF]))
            .await
            .expect("settings");
        read_until_put(&mut socket).await;
        socket.write_all(&answer(3)).await.expect("answer");
    };
    with_fake_server(serve, |addr| async move {
        let mut client = EtcdClient::connect(addr).await.expect("TCP connects");
        assert_eq!(client.put(b"k", b"v").await, Ok(Outcome::Answered));
        let second = tokio::time::timeout(Duration::from_secs(5), client.put(b"k", b"w"))
            .await
            .expect("an answer once the window opens");
        assert_eq!(second, Ok(Outcome::Answered));
    });
}
