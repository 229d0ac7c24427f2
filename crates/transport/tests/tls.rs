//! TLS between peers: members with certificates from the cluster CA talk;
//! a peer with a certificate from another CA, or speaking plain TCP, is
//! refused.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dr_codec::message::{Message, NodeId};
use dr_transport::handshake::Hello;
use dr_transport::{PEER_NAME, TcpTransport, TlsFiles, Transport, TransportConfig};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use support::heartbeat;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, sleep, timeout};

const CLUSTER: u64 = 0x715;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("dr-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA, and a function writing node certificates it signs.
struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Authority {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    /// Writes CA, certificate and key files for a node into `dir`.
    fn node_files(&self, dir: &Path, name: &str) -> TlsFiles {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![PEER_NAME.to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let files = TlsFiles {
            ca_cert: dir.join(format!("{name}-ca.pem")),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        };
        std::fs::write(&files.ca_cert, self.issuer.pem()).unwrap();
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }
}

fn config(id: NodeId, tls: Option<TlsFiles>) -> TransportConfig {
    let mut config = TransportConfig::new(CLUSTER, id, "127.0.0.1:0".parse().unwrap());
    config.tls = tls;
    config.backoff_max = Duration::from_millis(100);
    config
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(5)).await;
    }
}

async fn pair(
    first: Option<TlsFiles>,
    second: Option<TlsFiles>,
) -> (
    TcpTransport,
    TcpTransport,
    tokio::sync::mpsc::Receiver<Message>,
) {
    let (two, inbox_two) = TcpTransport::start(config(2, second)).await.unwrap();
    let mut one_config = config(1, first);
    one_config.peers.insert(2, two.local_addr());
    let (one, _) = TcpTransport::start(one_config).await.unwrap();
    two.add_peer(1, one.local_addr());
    (one, two, inbox_two)
}

/// Receives node 1's heartbeats of `terms`, in order.
async fn expect_terms(
    inbox: &mut tokio::sync::mpsc::Receiver<Message>,
    terms: std::ops::RangeInclusive<u64>,
) {
    for term in terms {
        let message = timeout(Duration::from_secs(20), inbox.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((message.from, message.term), (1, term));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_the_cluster_ca_talk_over_tls() {
    let dir = Dir::new("members");
    let ca = Authority::new();
    let (one, _two, mut inbox) = pair(
        Some(ca.node_files(&dir.0, "one")),
        Some(ca.node_files(&dir.0, "two")),
    )
    .await;
    eventually("the TLS connection", || {
        one.stats().connections_established >= 1
    })
    .await;
    for term in 1..=500 {
        while !one.send(heartbeat(1, 2, term)) {
            sleep(Duration::from_millis(1)).await;
        }
    }
    expect_terms(&mut inbox, 1..=500).await;
    // Held messages on a TLS link: the flush hands them to the writer.
    for term in 501..=600 {
        while !one.hold(heartbeat(1, 2, term)) {
            one.flush();
            sleep(Duration::from_millis(1)).await;
        }
    }
    one.flush();
    expect_terms(&mut inbox, 501..=600).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused() {
    let dir = Dir::new("rogue");
    let (cluster_ca, rogue_ca) = (Authority::new(), Authority::new());
    let mut rogue = rogue_ca.node_files(&dir.0, "rogue");
    // The rogue trusts the cluster's CA, so only its own certificate is wrong.
    rogue.ca_cert = cluster_ca.node_files(&dir.0, "two").ca_cert;
    let (one, two, _inbox) = pair(Some(rogue), Some(cluster_ca.node_files(&dir.0, "two"))).await;
    eventually("the refusal", || two.stats().handshakes_refused >= 2).await;
    assert_eq!(two.stats().connections_established, 0);
    assert_eq!(one.stats().connections_established, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_to_a_tls_peer_is_refused() {
    let dir = Dir::new("plain");
    let ca = Authority::new();
    let (two, _inbox) = TcpTransport::start(config(2, Some(ca.node_files(&dir.0, "two"))))
        .await
        .unwrap();
    two.add_peer(1, "127.0.0.1:9".parse::<SocketAddr>().unwrap());
    let mut plain = tokio::net::TcpStream::connect(two.local_addr())
        .await
        .unwrap();
    let hello = Hello {
        cluster_id: CLUSTER,
        node_id: 1,
    };
    plain.write_all(&hello.encode()).await.unwrap();
    let mut answer = [0u8; 64];
    let read = timeout(Duration::from_secs(10), plain.read(&mut answer)).await;
    // Either closed, or a TLS alert: never a dr hello.
    if let Ok(Ok(n)) = read {
        assert!(n == 0 || &answer[..4] != b"DRTP", "answered in plain text");
    }
    eventually("the refusal", || two.stats().handshakes_refused >= 1).await;
    assert_eq!(two.stats().connections_established, 0);
}

#[tokio::test]
async fn missing_tls_files_are_a_clear_error() {
    let files = TlsFiles {
        ca_cert: "/nonexistent/ca.pem".into(),
        cert: "/nonexistent/cert.pem".into(),
        key: "/nonexistent/key.pem".into(),
    };
    let error = TcpTransport::start(config(1, Some(files)))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
}
