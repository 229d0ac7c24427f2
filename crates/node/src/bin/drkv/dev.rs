//! `drkv dev` (a local 3-node cluster; `--secure` with throwaway TLS
//! files and a password) and `drkv certs` (TLS files for a real
//! deployment).

use std::path::{Path, PathBuf};
use std::time::Duration;

use dr_node::auth::{HASH_ITERATIONS_DEFAULT, PasswordHash};
use dr_node::tls::{self, GeneratedCerts};
use ring::rand::{SecureRandom, SystemRandom};

use crate::{runtime, wait_for_stop_signal};

/// A secure dev cluster's TLS files and password, made once under the
/// dev folder and reused by later runs.
struct DevSecrets {
    certs: GeneratedCerts,
    password: String,
    password_file: PathBuf,
    password_hash: String,
}

fn dev_secrets(dir: &Path) -> Result<DevSecrets, String> {
    let tls_dir = dir.join("tls");
    let existing = GeneratedCerts {
        ca_cert: tls_dir.join("ca.pem"),
        ca_key: tls_dir.join("ca-key.pem"),
        nodes: (1..=3)
            .map(|id| tls::NodeTls {
                ca_cert: tls_dir.join("ca.pem"),
                cert: tls_dir.join(format!("node-{id}.pem")),
                key: tls_dir.join(format!("node-{id}-key.pem")),
                auth_clients: false,
            })
            .collect(),
        client: (tls_dir.join("client.pem"), tls_dir.join("client-key.pem")),
    };
    let complete = existing.nodes.iter().all(|node| node.check().is_ok());
    let certs = if complete {
        existing
    } else {
        tls::generate(&tls_dir, &[1, 2, 3], &[]).map_err(|e| e.to_string())?
    };
    let password_file = dir.join("password");
    let password = match std::fs::read_to_string(&password_file) {
        Ok(text) if !text.trim().is_empty() => text.trim().to_owned(),
        _ => {
            let mut bytes = [0u8; 12];
            SystemRandom::new()
                .fill(&mut bytes)
                .map_err(|_| "the system has no random numbers")?;
            let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            tls::write_private(&password_file, &format!("{password}\n"))
                .map_err(|e| e.to_string())?;
            password
        }
    };
    let password_hash = PasswordHash::new(password.as_bytes(), HASH_ITERATIONS_DEFAULT)
        .map_err(|e| e.to_string())?
        .to_string();
    Ok(DevSecrets {
        certs,
        password,
        password_file,
        password_hash,
    })
}

/// `drkv certs`: a new CA and node certificates in `dir`.
pub(crate) fn certs(dir: &Path, ids: &[u64], hosts: &[String]) -> Result<(), String> {
    if ids.is_empty() || ids.contains(&0) {
        return Err("--ids needs positive node ids, e.g. --ids 1,2,3".into());
    }
    if dir.join("ca.pem").exists() {
        return Err(format!(
            "{} already holds a CA (ca.pem): choose another --dir, or remove it to start over",
            dir.display()
        ));
    }
    let made = tls::generate(dir, ids, hosts).map_err(|e| e.to_string())?;
    println!(
        "CA: {} (its key {} signs new members: keep it offline)",
        made.ca_cert.display(),
        made.ca_key.display()
    );
    for (id, node) in ids.iter().zip(&made.nodes) {
        println!(
            "node {id}: drkv server ... --tls-ca-cert-file {} --tls-cert-file {} --tls-key-file {}",
            node.ca_cert.display(),
            node.cert.display(),
            node.key.display()
        );
    }
    println!(
        "client certificate (for --tls-auth-clients and the admin API): {} {}",
        made.client.0.display(),
        made.client.1.display()
    );
    println!(
        "clients: redis-cli --tls --cacert {} -h <node address> -p <client port> ...",
        made.ca_cert.display()
    );
    Ok(())
}

/// `drkv dev`'s choices.
pub(crate) struct DevOptions<'a> {
    pub(crate) dir: &'a Path,
    pub(crate) base_port: u16,
    pub(crate) read_lease: bool,
    /// `--raft-log` for every node, if given.
    pub(crate) raft_log: Option<&'a str>,
    pub(crate) secure: bool,
    pub(crate) log_level: Option<&'a str>,
}

pub(crate) fn dev(options: &DevOptions<'_>) -> Result<(), String> {
    let DevOptions {
        dir,
        base_port,
        read_lease,
        raft_log,
        secure,
        log_level,
    } = *options;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let secrets = if secure {
        Some(dev_secrets(dir)?)
    } else {
        None
    };
    let port = |offset: u16| -> Result<u16, String> {
        base_port
            .checked_add(offset)
            .ok_or_else(|| "--base-port is too large".to_owned())
    };
    let mut peers = Vec::new();
    for id in 1..=3u16 {
        peers.push(format!("{id}=127.0.0.1:{}", port(100 + id)?));
    }
    let peers = peers.join(",");
    let mut children = Vec::new();
    for id in 1..=3u16 {
        let mut command = std::process::Command::new(&exe);
        if let Some(level) = log_level {
            command.env("DRKV_LOG", level);
        }
        command
            .args(["server", "--id", &id.to_string()])
            .arg("--data-dir")
            .arg(dir.join(format!("node-{id}")))
            .args(["--client-addr", &format!("127.0.0.1:{}", port(id)?)])
            .args(["--peer-addr", &format!("127.0.0.1:{}", port(100 + id)?)])
            .args(["--admin-addr", &format!("127.0.0.1:{}", port(200 + id)?)])
            .args(["--peers", &peers]);
        if read_lease {
            command.arg("--read-lease");
        }
        if let Some(raft_log) = raft_log {
            command.args(["--raft-log", raft_log]);
        }
        if let Some(secrets) = &secrets {
            let node = &secrets.certs.nodes[usize::from(id - 1)];
            command
                .arg("--tls-ca-cert-file")
                .arg(&node.ca_cert)
                .arg("--tls-cert-file")
                .arg(&node.cert)
                .arg("--tls-key-file")
                .arg(&node.key)
                .args(["--requirepass", &secrets.password_hash]);
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start node {id}: {e}"))?;
        children.push(child);
    }
    println!("drkv dev: 3 nodes, data under {}", dir.display());
    let scheme = if secure { "https" } else { "http" };
    for id in 1..=3u16 {
        println!(
            "  node {id}: clients 127.0.0.1:{}  admin {scheme}://127.0.0.1:{}/status",
            port(id)?,
            port(200 + id)?
        );
    }
    match &secrets {
        None => {
            println!(
                "try:  redis-cli -p {} set hello world && redis-cli -p {} get hello",
                port(1)?,
                port(2)?
            );
            println!(
                "      {} ctl --admin 127.0.0.1:{} status",
                exe.display(),
                port(201)?
            );
        }
        Some(secrets) => {
            let ca = secrets.certs.ca_cert.display();
            println!(
                "peers use mutual TLS; clients need TLS and the password (in {}):",
                secrets.password_file.display()
            );
            println!(
                "try:  redis-cli --tls --cacert {ca} -p {} --user default --pass {} --no-auth-warning set hello world",
                port(1)?,
                secrets.password
            );
            println!(
                "      redis-cli --tls --cacert {ca} -p {} --user default --pass {} --no-auth-warning get hello",
                port(2)?,
                secrets.password
            );
            println!(
                "      {} ctl --admin 127.0.0.1:{} --cacert {ca} status",
                exe.display(),
                port(201)?
            );
        }
    }
    println!("Ctrl-C stops the cluster.");
    let result = runtime()?.block_on(async {
        let exited = tokio::task::spawn_blocking(move || {
            // Poll: any node that exits on its own ends the session.
            loop {
                for (index, child) in children.iter_mut().enumerate() {
                    if let Ok(Some(status)) = child.try_wait() {
                        return (children, Some((index + 1, status)));
                    }
                }
                if STOP.load(std::sync::atomic::Ordering::Relaxed) {
                    return (children, None);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let signal = tokio::spawn(async {
            let _ = wait_for_stop_signal().await;
            STOP.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let (children, died) = exited.await.map_err(|e| e.to_string())?;
        signal.abort();
        Ok::<_, String>((children, died))
    });
    let (mut children, died) = result?;
    for child in &children {
        // SIGTERM: each node finishes in-flight requests and stops.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    for child in &mut children {
        let _ = child.wait();
    }
    match died {
        Some((id, status)) => Err(format!(
            "node {id} exited ({status}); the cluster was stopped"
        )),
        None => {
            println!("drkv dev: stopped");
            Ok(())
        }
    }
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
