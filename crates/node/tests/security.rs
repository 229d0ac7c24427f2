//! The trust boundaries of a real 3-node cluster: the client port
//! carries no cluster-changing command, clients authenticate (Redis's
//! `requirepass` and ACL users) and get only their permissions, and
//! followers reach the leader over the peer transport only.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Access, Cluster, DRKV, connect_as, wait_until};

/// A password hash from `drkv passwd` (few rounds: tests authenticate
/// often).
fn hash(password: &str) -> String {
    let mut child = Command::new(DRKV)
        .args(["passwd", "--iterations", "1000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run drkv passwd");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("write the password");
    let output = child.wait_with_output().expect("drkv passwd finishes");
    assert!(output.status.success());
    let hash = String::from_utf8(output.stdout).expect("utf-8");
    assert!(!hash.contains(password), "the hash shows the password");
    hash.trim().to_owned()
}

/// Sends raw RESP and reads the first reply line.
fn raw(addr: std::net::SocketAddr, request: &str) -> String {
    try_raw(addr, request).expect("connect")
}

/// [`raw`], or `None` when nothing listens.
fn try_raw(addr: std::net::SocketAddr, request: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request.as_bytes()).ok()?;
    let mut reply = Vec::new();
    let mut byte = [0];
    while stream.read(&mut byte).map(|n| n == 1).unwrap_or(false) {
        reply.push(byte[0]);
        if reply.ends_with(b"\r\n") {
            break;
        }
    }
    Some(String::from_utf8_lossy(&reply).trim_end().to_owned())
}

fn resp(words: &[&str]) -> String {
    let mut out = format!("*{}\r\n", words.len());
    for word in words {
        out.push_str(&format!("${}\r\n{word}\r\n", word.len()));
    }
    out
}

fn error_code(result: redis::RedisResult<redis::Value>) -> String {
    match result {
        Ok(value) => format!("ok: {value:?}"),
        Err(error) => error.code().unwrap_or("?").to_owned(),
    }
}

#[test]
fn the_client_port_has_no_cluster_commands() {
    let cluster = Cluster::start("no-dr-commands", 3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(20));
    let voters_before = support::info_field(cluster.node(leader).client, "voters");
    for node in &cluster.nodes {
        for command in [
            resp(&["DR.CONFCHANGE", "remove", "3"]),
            resp(&["DR.TRANSFER", "2"]),
            resp(&[
                "DR.MEMBER",
                "3",
                "127.0.0.1:1",
                "127.0.0.1:1",
                "127.0.0.1:1",
            ]),
            resp(&["DR.READINDEX"]),
        ] {
            let reply = raw(node.client, &command);
            assert!(
                reply.starts_with("-ERR unknown command"),
                "{command:?} on node {}: {reply}",
                node.id
            );
        }
    }
    assert_eq!(
        support::info_field(cluster.node(leader).client, "voters"),
        voters_before
    );
    // Writes through followers still reach the leader: over the peer
    // transport, not a client port.
    let follower = cluster
        .nodes
        .iter()
        .find(|n| n.id != leader)
        .expect("a follower")
        .id;
    let mut client = cluster.client(follower);
    let set: String = support::retrying(
        &mut client,
        redis::cmd("SET").arg("through").arg("peers"),
        Duration::from_secs(10),
    )
    .expect("a follower forwards the write");
    assert_eq!(set, "OK");
    for node in &cluster.nodes {
        let value: Option<String> = redis::cmd("GET")
            .arg("through")
            .query(&mut cluster.client(node.id))
            .expect("read");
        assert_eq!(value.as_deref(), Some("peers"), "node {}", node.id);
    }
}

#[test]
fn clients_authenticate_and_get_only_their_permissions() {
    let admin_password = "correct horse battery staple";
    let dir = support::TestDir::new("acl-file");
    let acl = dir.path().join("users.toml");
    std::fs::write(
        &acl,
        format!(
            "requirepass = \"{}\"\n\n[[users]]\nname = \"reader\"\npassword = \"{}\"\npermissions = [\"read\"]\n\n\
             [[users]]\nname = \"writer\"\npassword = \"{}\"\npermissions = [\"read\", \"write\"]\n",
            hash(admin_password),
            hash("reader-pass"),
            hash("writer-pass"),
        ),
    )
    .expect("write the ACL file");
    let mut cluster = Cluster::start(
        "auth",
        3,
        &["--acl-file", acl.to_str().expect("utf-8 path")],
    );
    cluster.access = Access::user(&format!(":{}@", admin_password.replace(' ', "%20")));
    let leader = cluster.wait_for_leader(Duration::from_secs(20));
    let follower = cluster
        .nodes
        .iter()
        .find(|n| n.id != leader)
        .expect("a follower");

    // Nobody: every command but AUTH, HELLO and QUIT is refused.
    for command in [
        resp(&["GET", "k"]),
        resp(&["SET", "k", "v"]),
        resp(&["INFO"]),
        resp(&["PING"]),
        resp(&["DR.CONFCHANGE", "remove", "3"]),
        resp(&["ACL", "LIST"]),
    ] {
        assert_eq!(
            raw(follower.client, &command),
            "-NOAUTH Authentication required.",
            "{command:?}"
        );
    }
    assert!(raw(follower.client, &resp(&["HELLO", "3"])).starts_with("-NOAUTH"));
    assert_eq!(
        raw(follower.client, &resp(&["AUTH", "wrong"])),
        "-WRONGPASS invalid username-password pair or user is disabled."
    );
    assert_eq!(
        raw(follower.client, &resp(&["AUTH", "reader", "writer-pass"])),
        "-WRONGPASS invalid username-password pair or user is disabled."
    );
    assert_eq!(
        raw(follower.client, &resp(&["AUTH", "nobody", "reader-pass"])),
        "-WRONGPASS invalid username-password pair or user is disabled."
    );
    assert_eq!(
        raw(
            follower.client,
            &format!(
                "{}{}",
                resp(&["AUTH", "reader", "reader-pass"]),
                resp(&["PING"])
            )
        ),
        "+OK"
    );

    // The admin (requirepass) writes through a follower; the cluster
    // commands stay unknown even to it.
    let mut admin = cluster.client(follower.id);
    let set: String = support::retrying(
        &mut admin,
        redis::cmd("SET").arg("k").arg("v1"),
        Duration::from_secs(10),
    )
    .expect("the admin writes");
    assert_eq!(set, "OK");
    let who: String = redis::cmd("ACL")
        .arg("WHOAMI")
        .query(&mut admin)
        .expect("whoami");
    assert_eq!(who, "default");
    let unknown = redis::cmd("DR.CONFCHANGE")
        .arg("remove")
        .arg("3")
        .query::<redis::Value>(&mut admin);
    assert_eq!(error_code(unknown), "ERR");
    let listed: Vec<String> = redis::cmd("ACL")
        .arg("LIST")
        .query(&mut admin)
        .expect("list");
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(
        listed
            .iter()
            .all(|line| !line.contains("pbkdf2") && !line.contains('$')),
        "{listed:?}"
    );

    // The reader reads, and may not write or see the node's details.
    let mut reader = connect_as(follower.client, &Access::user("reader:reader-pass@"));
    let value: Option<String> = redis::cmd("GET").arg("k").query(&mut reader).expect("read");
    assert_eq!(value.as_deref(), Some("v1"));
    let refused = redis::cmd("SET")
        .arg("k")
        .arg("v2")
        .query::<redis::Value>(&mut reader);
    assert_eq!(error_code(refused), "NOPERM");
    let refused = redis::cmd("ACL")
        .arg("LIST")
        .query::<redis::Value>(&mut reader);
    assert_eq!(error_code(refused), "NOPERM");
    let info: String = redis::cmd("INFO").query(&mut reader).expect("info");
    assert!(info.contains("redis_version"), "{info}");
    assert!(
        !info.contains("leader_id"),
        "a reader sees replication details: {info}"
    );

    // The writer authenticates with HELLO 3 AUTH and writes on any node.
    let mut writer = connect_as(cluster.node(leader).client, &Access::default());
    let hello = redis::cmd("HELLO")
        .arg(3)
        .arg("AUTH")
        .arg("writer")
        .arg("writer-pass")
        .query::<redis::Value>(&mut writer);
    assert!(hello.is_ok(), "{hello:?}");
    let incr: i64 = redis::cmd("INCR")
        .arg("counter")
        .query(&mut writer)
        .expect("incr");
    assert_eq!(incr, 1);
    let who: String = redis::cmd("ACL")
        .arg("WHOAMI")
        .query(&mut writer)
        .expect("whoami");
    assert_eq!(who, "writer");

    // No password reached any log.
    for node in &cluster.nodes {
        let log = std::fs::read_to_string(cluster.dir.path().join(format!("node-{}.log", node.id)))
            .unwrap_or_default();
        for secret in [admin_password, "reader-pass", "writer-pass", "pbkdf2"] {
            assert!(!log.contains(secret), "node {} logged {secret}", node.id);
        }
    }
    drop(cluster);
}

/// `drkv certs` into `dir` for nodes `ids`.
fn certs(dir: &std::path::Path, ids: &str) {
    let output = Command::new(DRKV)
        .args(["certs", "--ids", ids, "--dir"])
        .arg(dir)
        .output()
        .expect("run drkv certs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn tls_args(dir: &std::path::Path, id: u64) -> Vec<String> {
    let path = |name: String| dir.join(name).to_str().expect("utf-8 path").to_owned();
    vec![
        "--tls-ca-cert-file".into(),
        path("ca.pem".into()),
        "--tls-cert-file".into(),
        path(format!("node-{id}.pem")),
        "--tls-key-file".into(),
        path(format!("node-{id}-key.pem")),
    ]
}

#[test]
fn tls_clients_work_and_peers_of_another_ca_never_join() {
    let files = support::TestDir::new("tls-files");
    let good = files.path().join("good");
    let foreign = files.path().join("foreign");
    certs(&good, "1,2,3,4");
    certs(&foreign, "4");
    // Every member uses node 1's certificate: it names dr-peer, and the
    // hello inside the session says which node it is.
    let args = tls_args(&good, 1);
    let password_hash = hash("tls-pass");
    let mut flags: Vec<&str> = args.iter().map(String::as_str).collect();
    flags.extend(["--requirepass", &password_hash]);
    let mut cluster = Cluster::start("tls", 3, &flags);
    cluster.access = Access {
        userinfo: ":tls-pass@".into(),
        ca_pem: Some(std::fs::read(good.join("ca.pem")).expect("the CA")),
    };
    let leader = cluster.wait_for_leader(Duration::from_secs(20));

    // Over TLS with the password: writes through every node, read back
    // everywhere.
    for node in &cluster.nodes {
        let mut client = cluster.client(node.id);
        let key = format!("tls-{}", node.id);
        let set: String = support::retrying(
            &mut client,
            redis::cmd("SET").arg(&key).arg("secret"),
            Duration::from_secs(10),
        )
        .expect("a write over TLS");
        assert_eq!(set, "OK");
    }
    for node in &cluster.nodes {
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg("tls-1")
            .arg("tls-2")
            .arg("tls-3")
            .query(&mut cluster.client(node.id))
            .expect("a read over TLS");
        assert!(
            values.iter().all(|v| v.as_deref() == Some("secret")),
            "{values:?}"
        );
    }
    // Plain TCP to a TLS client port gets no Redis answer.
    let plain = raw(cluster.node(leader).client, &resp(&["PING"]));
    assert!(!plain.starts_with('+'), "plain TCP got {plain:?}");

    // A fourth node whose certificate another CA signed is added as a
    // learner: the members refuse it, it never hears from the leader.
    cluster.add_node(4);
    let joiner = cluster.node(4).peer;
    let (added, text) = cluster.ctl(
        leader,
        &[
            "--cacert",
            good.join("ca.pem").to_str().expect("utf-8"),
            "add-learner",
            "4",
            &joiner.to_string(),
        ],
    );
    assert!(added, "{text}");
    let foreign_args = tls_args(&foreign, 4);
    cluster.start_joiner_with(
        4,
        &foreign_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let leader_admin = cluster.node(leader).admin;
    wait_until(Duration::from_secs(20), "a refused peer handshake", || {
        admin_metric(
            leader_admin,
            &good,
            "drkv_transport_handshakes_refused_total",
        ) > 0
    });
    std::thread::sleep(Duration::from_secs(1));
    let foreign_access = Access {
        userinfo: String::new(),
        ca_pem: Some(std::fs::read(foreign.join("ca.pem")).expect("the foreign CA")),
    };
    let heard = support::info_field_as(cluster.node(4).client, &foreign_access, "leader_id");
    assert_eq!(
        heard.as_deref(),
        Some(""),
        "the foreign node heard from a leader"
    );
    let applied = support::info_field_as(cluster.node(4).client, &foreign_access, "applied_index");
    assert_eq!(applied.as_deref(), Some("0"));
}

/// A counter from a node's admin API over HTTPS.
fn admin_metric(admin: std::net::SocketAddr, ca_dir: &std::path::Path, name: &str) -> u64 {
    let output = Command::new(DRKV)
        .args(["ctl", "--admin", &admin.to_string(), "--cacert"])
        .arg(ca_dir.join("ca.pem"))
        .arg("metrics")
        .output()
        .expect("run drkv ctl metrics");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_admin_api_needs_its_token_or_a_certificate() {
    let files = support::TestDir::new("admin-files");
    let good = files.path().join("good");
    certs(&good, "1");
    let token = files.path().join("token");
    std::fs::write(&token, "an-admin-token-of-some-length\n").expect("write the token");
    let wrong = files.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-admin-token-at-all\n").expect("write a wrong token");
    let mut flags = tls_args(&good, 1);
    flags.extend([
        "--admin-token-file".into(),
        token.to_str().expect("utf-8").into(),
    ]);
    let mut cluster = Cluster::start(
        "admin-auth",
        1,
        &flags.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    cluster.access.ca_pem = Some(std::fs::read(good.join("ca.pem")).expect("the CA"));
    cluster.wait_for_leader(Duration::from_secs(20));
    let ca = good.join("ca.pem").to_str().expect("utf-8").to_owned();
    let cert = good.join("client.pem").to_str().expect("utf-8").to_owned();
    let key = good
        .join("client-key.pem")
        .to_str()
        .expect("utf-8")
        .to_owned();
    let token = token.to_str().expect("utf-8").to_owned();
    let wrong = wrong.to_str().expect("utf-8").to_owned();

    let (ok, text) = cluster.ctl(1, &["--cacert", &ca, "status"]);
    assert!(!ok && text.contains("401"), "no token: {text}");
    let (ok, text) = cluster.ctl(1, &["--cacert", &ca, "--token-file", &wrong, "snapshot"]);
    assert!(!ok && text.contains("401"), "a wrong token: {text}");
    let (ok, text) = cluster.ctl(1, &["--cacert", &ca, "--token-file", &token, "snapshot"]);
    assert!(ok, "the token: {text}");
    let (ok, text) = cluster.ctl(
        1,
        &["--cacert", &ca, "--cert", &cert, "--key", &key, "status"],
    );
    assert!(ok, "a client certificate: {text}");
    // A member's addresses change through the admin API only.
    let peer = cluster.node(1).peer.to_string();
    let (ok, text) = cluster.ctl(
        1,
        &[
            "--cacert",
            &ca,
            "--token-file",
            &token,
            "set-addrs",
            "1",
            &peer,
            "--client-addr",
            "127.0.0.1:6999",
        ],
    );
    assert!(ok, "set-addrs: {text}");
    let (_, members) = cluster.ctl(1, &["--cacert", &ca, "--token-file", &token, "members"]);
    assert!(members.contains("127.0.0.1:6999"), "{members}");
    // Plain HTTP to the HTTPS port is no way in either.
    let (ok, _) = cluster.ctl(1, &["--token-file", &token, "status"]);
    assert!(!ok);
    cluster.stop(1);
    let log = std::fs::read_to_string(cluster.dir.path().join("node-1.log")).unwrap_or_default();
    assert!(
        log.contains("admin call") && log.contains("bearer token"),
        "no audit line:\n{log}"
    );
    assert!(log.contains("admin request refused"), "no refusal logged");
    assert!(
        !log.contains("an-admin-token-of-some-length"),
        "the token was logged"
    );
}

#[test]
fn an_admin_port_off_loopback_needs_a_token() {
    let dir = support::TestDir::new("admin-open");
    let output = Command::new(DRKV)
        .args([
            "server",
            "--id",
            "1",
            "--admin-addr",
            "0.0.0.0:0",
            "--client-addr",
            "127.0.0.1:0",
            "--peer-addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("node"))
        .output()
        .expect("run drkv server");
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("--admin-token-file"), "{text}");
}

/// A network namespace joined to this one by a veth pair: a second host
/// whose address is not loopback, made and removed by the test (root and
/// iproute2 needed).
struct OtherHost {
    name: String,
    veth: String,
    /// This side's address, as the other host sees it.
    here: String,
}

impl OtherHost {
    fn new() -> Option<Self> {
        let id = std::process::id() % 200 + 20;
        let name = format!("drkv-pm-{}", std::process::id());
        let veth = format!("drkvh{}", std::process::id() % 100_000);
        let peer = format!("drkvn{}", std::process::id() % 100_000);
        let here = format!("10.213.{id}.1");
        let there = format!("10.213.{id}.2");
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), name.clone()],
            vec![
                "link".into(),
                "add".into(),
                veth.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                peer.clone(),
            ],
            vec![
                "link".into(),
                "set".into(),
                peer.clone(),
                "netns".into(),
                name.clone(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{here}/30"),
                "dev".into(),
                veth.clone(),
            ],
            vec!["link".into(), "set".into(), veth.clone(), "up".into()],
            vec![
                "-n".into(),
                name.clone(),
                "addr".into(),
                "add".into(),
                format!("{there}/30"),
                "dev".into(),
                peer.clone(),
            ],
            vec![
                "-n".into(),
                name.clone(),
                "link".into(),
                "set".into(),
                peer.clone(),
                "up".into(),
            ],
            vec![
                "-n".into(),
                name.clone(),
                "link".into(),
                "set".into(),
                "lo".into(),
                "up".into(),
            ],
        ];
        let host = Self { name, veth, here };
        for step in steps {
            let done = Command::new("ip").args(&step).output().ok()?;
            if !done.status.success() {
                eprintln!(
                    "cannot make a second host (ip {}: {}): needs root and iproute2",
                    step.join(" "),
                    String::from_utf8_lossy(&done.stderr).trim()
                );
                return None;
            }
        }
        Some(host)
    }

    /// Sends `request` to `port` on this side from the other host, and
    /// returns the first reply line.
    fn ask(&self, port: u16, request: &str) -> String {
        let script = format!(
            "exec 3<>/dev/tcp/{}/{port} && printf '{}' >&3 && timeout 5 head -n 1 <&3",
            self.here,
            request.replace('\r', "\\r").replace('\n', "\\n")
        );
        let output = Command::new("ip")
            .args(["netns", "exec", &self.name, "bash", "-c", &script])
            .output()
            .expect("run bash in the namespace");
        String::from_utf8_lossy(&output.stdout)
            .trim_end()
            .to_owned()
    }
}

impl Drop for OtherHost {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// One `drkv` node on its own, killed on drop.
struct Solo {
    _dir: support::TestDir,
    child: std::process::Child,
}

impl Solo {
    fn start(name: &str, client_addr: &str, extra: &[&str]) -> Self {
        let dir = support::TestDir::new(name);
        let child = Command::new(DRKV)
            .args(["server", "--id", "1", "--client-addr", client_addr])
            .args(["--peer-addr", &support::free_addr().to_string()])
            .args(["--admin-addr", &support::free_addr().to_string()])
            .args(extra)
            .arg("--data-dir")
            .arg(dir.path().join("node"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start drkv");
        Self { _dir: dir, child }
    }
}

impl Drop for Solo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first non-empty answer to `ask`, waiting for the node to start.
fn first_answer(mut ask: impl FnMut() -> String) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reply = ask();
        if !reply.is_empty() || std::time::Instant::now() > deadline {
            return reply;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn protected_mode_answers_only_loopback_until_a_password_is_set() {
    let Some(other) = OtherHost::new() else {
        return;
    };
    let port = support::free_addr().port();
    let any = format!("0.0.0.0:{port}");
    let local: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("an address");
    let open = Solo::start("protected", &any, &[]);
    let ping = || try_raw(local, "PING\r\n").unwrap_or_default();
    assert_eq!(first_answer(ping), "+PONG", "loopback is served");
    let denied = other.ask(port, "PING\r\n");
    assert!(denied.starts_with("-DENIED"), "another host got {denied:?}");
    drop(open);

    let port = support::free_addr().port();
    let unprotected = Solo::start(
        "unprotected",
        &format!("0.0.0.0:{port}"),
        &["--protected-mode", "false"],
    );
    let reply = first_answer(|| other.ask(port, "PING\r\n"));
    assert_eq!(reply, "+PONG", "protected mode off serves other hosts");
    drop(unprotected);

    let port = support::free_addr().port();
    let password_hash = hash("pm-pass");
    let _guarded = Solo::start(
        "guarded",
        &format!("0.0.0.0:{port}"),
        &["--requirepass", &password_hash],
    );
    let reply = first_answer(|| other.ask(port, "PING\r\n"));
    assert_eq!(
        reply, "-NOAUTH Authentication required.",
        "with a password: authenticate"
    );
}

#[test]
fn client_certificates_can_be_required() {
    let files = support::TestDir::new("client-cert-files");
    let good = files.path().join("good");
    let foreign = files.path().join("foreign");
    certs(&good, "1");
    certs(&foreign, "1");
    let mut flags = tls_args(&good, 1);
    flags.push("--tls-auth-clients".into());
    let cluster = Cluster::start(
        "client-certs",
        1,
        &flags.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let ca = std::fs::read(good.join("ca.pem")).expect("the CA");
    let with_cert = |dir: &std::path::Path| {
        Some(redis::ClientTlsConfig {
            client_cert: std::fs::read(dir.join("client.pem")).expect("a client certificate"),
            client_key: std::fs::read(dir.join("client-key.pem")).expect("its key"),
        })
    };
    let client = |client_tls| {
        redis::Client::build_with_tls(
            format!("rediss://{}/", cluster.node(1).client),
            redis::TlsCertificates {
                client_tls,
                root_cert: Some(ca.clone()),
            },
        )
        .expect("a TLS client")
    };
    let ping = |client: redis::Client| -> redis::RedisResult<String> {
        let mut connection = client.get_connection_with_timeout(Duration::from_secs(5))?;
        redis::cmd("PING").query(&mut connection)
    };
    // The node's own certificate check: a client with the CA's
    // certificate gets in; one without, or of another CA, does not.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while ping(client(with_cert(&good))).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "a certified client never got in"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        ping(client(None)).is_err(),
        "a client without a certificate got in"
    );
    assert!(
        ping(client(with_cert(&foreign))).is_err(),
        "a client certified by another CA got in"
    );
}
