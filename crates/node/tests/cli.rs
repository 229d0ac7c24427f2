//! `drkv`'s command line: clear errors for bad flags, an occupied port, a
//! data directory of another node; a node restarts from `--data-dir`.

mod support;

use std::net::TcpListener;
use std::process::Command;

use support::{DRKV, TestDir, free_addr};

fn drkv(args: &[&str]) -> (bool, String) {
    let output = Command::new(DRKV).args(args).output().expect("run drkv");
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    (output.status.success(), text)
}

#[test]
fn bad_flags_are_explained() {
    let (ok, text) = drkv(&["server", "--id", "x"]);
    assert!(
        !ok && text.contains("invalid value 'x' for '--id"),
        "{text}"
    );
    let (ok, text) = drkv(&[
        "server",
        "--id",
        "1",
        "--data-dir",
        "/tmp/x",
        "--peers",
        "1=nowhere",
    ]);
    assert!(!ok && text.contains("'nowhere' is not host:port"), "{text}");
    let (ok, text) = drkv(&["server"]);
    assert!(!ok && text.contains("give --data-dir"), "{text}");
    let dir = TestDir::new("cli-flags");
    let data = dir.path().join("d");
    let data = data.to_str().unwrap();
    let (ok, text) = drkv(&["server", "--data-dir", data]);
    assert!(!ok && text.contains("--id is needed"), "{text}");
    let (ok, text) = drkv(&["server", "--data-dir", data, "--id", "0"]);
    assert!(
        !ok && text.contains("--id must be a positive integer"),
        "{text}"
    );
}

#[test]
fn an_occupied_port_is_named() {
    let dir = TestDir::new("cli-port");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let data = dir.path().join("d");
    let (ok, text) = drkv(&[
        "server",
        "--id",
        "1",
        "--data-dir",
        data.to_str().unwrap(),
        "--client-addr",
        &taken_addr,
        "--peer-addr",
        &free_addr().to_string(),
        "--admin-addr",
        &free_addr().to_string(),
    ]);
    assert!(
        !ok && text.contains(&format!("the client address {taken_addr} is in use")),
        "{text}"
    );
}

#[test]
fn a_data_dir_of_another_node_is_refused() {
    let dir = TestDir::new("cli-identity");
    let data = dir.path().join("d");
    let data = data.to_str().unwrap();
    std::fs::create_dir_all(data).unwrap();
    std::fs::write(
        dir.path().join("d/drkv.json"),
        r#"{"id": 2, "cluster_id": 7, "data_dir": "x", "client_addr": "127.0.0.1:1", "peer_addr": "127.0.0.1:2", "admin_addr": "127.0.0.1:3"}"#,
    )
    .unwrap();
    let addrs: Vec<String> = (0..3).map(|_| free_addr().to_string()).collect();
    let (ok, text) = drkv(&[
        "server",
        "--id",
        "1",
        "--data-dir",
        data,
        "--client-addr",
        &addrs[0],
        "--peer-addr",
        &addrs[1],
        "--admin-addr",
        &addrs[2],
    ]);
    assert!(
        !ok && text.contains("belongs to node 2 of cluster 7, not node 1 of cluster 7"),
        "{text}"
    );
    std::fs::write(dir.path().join("d/drkv.json"), "{ not json").unwrap();
    let (ok, text) = drkv(&["server", "--data-dir", data]);
    assert!(!ok && text.contains("drkv.json is damaged"), "{text}");
}

/// A one-node cluster from a TOML file; a backup through the admin API,
/// restored offline into a new directory, serves the same data.
#[test]
fn a_config_file_starts_a_node_and_a_backup_restores_elsewhere() {
    let dir = TestDir::new("cli-backup");
    let [client, peer, admin] = [free_addr(), free_addr(), free_addr()];
    let config = dir.path().join("node.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &config,
        format!(
            "id = 1\ndata_dir = \"{}\"\nclient_addr = \"{client}\"\npeer_addr = \"{peer}\"\nadmin_addr = \"{admin}\"\n\n[peers]\n1 = \"{peer}\"\n",
            data.display()
        ),
    )
    .unwrap();
    let mut server = Command::new(DRKV)
        .args(["server", "--config", config.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut connection = support::connect(client);
    let set = |c: &mut redis::Connection, i: usize| {
        support::retrying::<String>(
            c,
            redis::cmd("SET").arg(format!("b{i}")).arg(i),
            std::time::Duration::from_secs(20),
        )
    };
    for i in 0..50 {
        set(&mut connection, i).unwrap();
    }
    let backups = dir.path().join("backups");
    let admin = admin.to_string();
    let (ok, text) = drkv(&[
        "ctl",
        "--admin",
        &admin,
        "backup",
        "--dir",
        backups.to_str().unwrap(),
    ]);
    assert!(ok && text.contains("\"backup_id\": 1"), "{text}");
    let (ok, text) = drkv(&["ctl", "--admin", &admin, "snapshot"]);
    assert!(ok && text.contains("snapshot_index"), "{text}");
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    assert!(server.wait().unwrap().success());

    let restored = dir.path().join("restored");
    let restore = [
        "ctl",
        "restore",
        "--backup-dir",
        backups.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
    ];
    let (ok, text) = drkv(&restore);
    assert!(ok, "{text}");
    let (ok, text) = drkv(&restore);
    assert!(!ok, "restoring over a store must be refused: {text}");
    let client = free_addr();
    let mut server = Command::new(DRKV)
        .args([
            "server",
            "--id",
            "1",
            "--data-dir",
            restored.to_str().unwrap(),
        ])
        .args([
            "--client-addr",
            &client.to_string(),
            "--peer-addr",
            &peer.to_string(),
        ])
        .args(["--admin-addr", &free_addr().to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut connection = support::connect(client);
    for i in [0, 25, 49] {
        let value: String = support::retrying(
            &mut connection,
            redis::cmd("GET").arg(format!("b{i}")),
            std::time::Duration::from_secs(20),
        )
        .unwrap();
        assert_eq!(value, i.to_string());
    }
    let _ = server.kill();
    let _ = server.wait();
}
