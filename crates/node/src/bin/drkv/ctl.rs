//! `drkv ctl`: the admin API from the command line, over HTTP or HTTPS
//! (with the cluster CA, a bearer token, a client certificate), and the
//! offline `ctl restore`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Where and how to reach a node's admin API.
#[derive(clap::Args)]
pub(crate) struct AdminTarget {
    /// The node's admin address.
    #[arg(long, default_value = "127.0.0.1:7201")]
    admin: SocketAddr,
    /// A file whose first line is the admin bearer token.
    #[arg(long, env = "DRKV_ADMIN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The cluster CA's certificate: talk HTTPS to a node with TLS on.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// A client certificate signed by the cluster CA (with --key).
    #[arg(long, requires_all = ["key", "cacert"])]
    cert: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(long, requires_all = ["cert", "cacert"])]
    key: Option<PathBuf>,
}

#[derive(Subcommand)]
pub(crate) enum CtlAction {
    /// The node's state (JSON).
    Status,
    /// The node's Prometheus metrics (text).
    Metrics,
    /// Members and their addresses.
    Members,
    /// Add a node as a learner (start it with `drkv server --join`).
    AddLearner {
        /// Its id.
        id: u64,
        /// Its Raft address.
        peer_addr: SocketAddr,
    },
    /// Record a member's new addresses (it moved). Peers reconnect to
    /// the new peer address; the peer handshake (and mutual TLS) still
    /// decides whether the node there is that member.
    SetAddrs {
        /// Its id.
        id: u64,
        /// Its new Raft address.
        peer_addr: SocketAddr,
        /// Its new client address (default: unchanged).
        #[arg(long)]
        client_addr: Option<SocketAddr>,
        /// Its new admin address (default: unchanged).
        #[arg(long)]
        admin_addr: Option<SocketAddr>,
    },
    /// Make a learner a voter.
    Promote {
        /// Its id.
        id: u64,
    },
    /// Remove a member.
    Remove {
        /// Its id.
        id: u64,
    },
    /// Hand leadership to a voter.
    TransferLeader {
        /// Its id.
        id: u64,
    },
    /// Snapshot the node's state machine now.
    Snapshot,
    /// Back the node's store up.
    Backup {
        /// Where (default: beside the data directory, `<data-dir>-backups`).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Backups to keep.
        #[arg(long)]
        keep: Option<usize>,
    },
    /// Restore a backup into a new, empty data directory (offline: no
    /// node needed; start a server on the directory afterwards).
    Restore {
        /// The backup directory (`backup` printed it).
        #[arg(long)]
        backup_dir: PathBuf,
        /// The new node's data directory (must not exist or be empty).
        #[arg(long)]
        data_dir: PathBuf,
        /// Which backup (default: the newest).
        #[arg(long)]
        backup_id: Option<u32>,
    },
}

impl AdminTarget {
    /// One HTTP/1.1 request with `Connection: close` (one request per
    /// process needs no client library).
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, String), String> {
        let admin = self.admin;
        let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(3))
            .map_err(|e| format!("cannot reach the admin API at {admin}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let body = body.unwrap_or_default();
        let authorization = match &self.token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let token = text.lines().next().unwrap_or_default().trim();
                format!("Authorization: Bearer {token}\r\n")
            }
            None => String::new(),
        };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n{authorization}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut response = Vec::new();
        match &self.cacert {
            None => {
                stream
                    .write_all(request.as_bytes())
                    .map_err(|e| e.to_string())?;
                stream
                    .read_to_end(&mut response)
                    .map_err(|e| e.to_string())?;
            }
            Some(_) => {
                let config = self.tls_config()?;
                let name = ServerName::IpAddress(admin.ip().into());
                let connection = rustls::ClientConnection::new(Arc::new(config), name)
                    .map_err(|e| format!("TLS: {e}"))?;
                let mut tls = rustls::StreamOwned::new(connection, stream);
                tls.write_all(request.as_bytes())
                    .map_err(|e| format!("TLS to {admin}: {e}"))?;
                match tls.read_to_end(&mut response) {
                    Ok(_) => {}
                    // A server closing without close_notify after a full
                    // response is common; what arrived is the answer.
                    Err(e)
                        if e.kind() == std::io::ErrorKind::UnexpectedEof
                            && !response.is_empty() => {}
                    Err(e) => return Err(format!("TLS from {admin}: {e}")),
                }
            }
        }
        if self.cacert.is_none() && response.first() == Some(&0x15) {
            return Err(format!(
                "{admin} answered with a TLS alert: its admin port speaks HTTPS (give --cacert)"
            ));
        }
        let response = String::from_utf8_lossy(&response);
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or("a malformed HTTP response")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or("a malformed HTTP status line")?;
        Ok((status, body.to_owned()))
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig, String> {
        let cacert = self.cacert.as_deref().expect("called with a CA");
        let roots = dr_node::tls::read_roots(cacert).map_err(|e| e.to_string())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("reading {}: {e}", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("reading {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("the client certificate: {e}"))
            }
            _ => Ok(builder.with_no_client_auth()),
        }
    }
}

pub(crate) fn ctl(target: &AdminTarget, action: CtlAction) -> Result<(), String> {
    let (method, path, body) = match &action {
        // Offline: no node to ask.
        CtlAction::Restore {
            backup_dir,
            data_dir,
            backup_id,
        } => return restore(backup_dir, data_dir, *backup_id),
        CtlAction::Status | CtlAction::Members => ("GET", "/status".to_owned(), None),
        CtlAction::Metrics => ("GET", "/metrics".to_owned(), None),
        CtlAction::AddLearner { id, peer_addr } => (
            "POST",
            "/members".to_owned(),
            Some(serde_json::json!({ "id": id, "peer_addr": peer_addr.to_string() }).to_string()),
        ),
        CtlAction::SetAddrs {
            id,
            peer_addr,
            client_addr,
            admin_addr,
        } => (
            "PUT",
            format!("/members/{id}/addrs"),
            Some(
                serde_json::json!({
                    "peer_addr": peer_addr.to_string(),
                    "client_addr": client_addr.map(|a| a.to_string()),
                    "admin_addr": admin_addr.map(|a| a.to_string()),
                })
                .to_string(),
            ),
        ),
        CtlAction::Promote { id } => ("POST", format!("/members/{id}/promote"), None),
        CtlAction::Remove { id } => ("DELETE", format!("/members/{id}"), None),
        CtlAction::TransferLeader { id } => ("POST", format!("/transfer-leader/{id}"), None),
        CtlAction::Snapshot => ("POST", "/snapshot".to_owned(), None),
        CtlAction::Backup { dir, keep } => (
            "POST",
            "/backup".to_owned(),
            Some(serde_json::json!({ "dir": dir, "keep": keep }).to_string()),
        ),
    };
    let (status, body) = target.request(method, &path, body)?;
    if matches!(action, CtlAction::Metrics) && status == 200 {
        print!("{body}");
        return Ok(());
    }
    let value: serde_json::Value =
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    let shown = match action {
        CtlAction::Members => serde_json::json!({
            "voters": value["voters"], "learners": value["learners"], "leader": value["leader"], "members": value["members"],
        }),
        _ => value,
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&shown).map_err(|e| e.to_string())?
    );
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("the node answered HTTP {status}"))
    }
}

pub(crate) fn restore(
    backup_dir: &Path,
    data_dir: &Path,
    backup_id: Option<u32>,
) -> Result<(), String> {
    let store = data_dir.join("store");
    std::fs::create_dir_all(&store)
        .map_err(|e| format!("cannot create {}: {e}", store.display()))?;
    dr_storage::RocksStorage::restore(
        backup_dir,
        backup_id,
        &store,
        dr_storage::StateMachine::DataFamily,
    )
    .map_err(|e| e.to_string())?;
    println!(
        "restored into {}; start it with: drkv server --data-dir {} --id <id> [--peers ...]",
        data_dir.display(),
        data_dir.display()
    );
    Ok(())
}
