//! The trust boundaries of a real 3-node cluster: the client port
//! carries no cluster-changing command, clients authenticate (Redis's
//! `requirepass` and ACL users) and get only their permissions, and
//! followers reach the leader over the peer transport only.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Cluster, DRKV, connect_as};

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
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request.as_bytes()).expect("send");
    let mut reply = Vec::new();
    let mut byte = [0];
    while stream.read(&mut byte).map(|n| n == 1).unwrap_or(false) {
        reply.push(byte[0]);
        if reply.ends_with(b"\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&reply).trim_end().to_owned()
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
    cluster.userinfo = format!(":{}@", admin_password.replace(' ', "%20"));
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
    let mut reader = connect_as(follower.client, "reader:reader-pass@");
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
    let mut writer = connect_as(cluster.node(leader).client, "");
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
