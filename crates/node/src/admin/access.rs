//! Who may call the admin API, and the listener that tells: plain TCP or
//! HTTPS with optional client certificates.
//!
//! With a bearer token configured (`--admin-token-file`) every request
//! needs `Authorization: Bearer <token>` or a client certificate signed
//! by the cluster CA. Without one, only callers on loopback, or with such
//! a certificate, get in; a node refuses to start with its admin port off
//! loopback and neither a token nor TLS. Every request that changes
//! something is logged with who made it (never the token).

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use ring::digest;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::connection::is_loopback;

/// The longest token file read.
const TOKEN_BYTES_MAX: usize = 4096;
/// Connections accepted but not yet taken by the HTTP server.
const PENDING_CONNECTIONS_MAX: usize = 64;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The other end of an admin connection.
#[derive(Clone, Debug)]
pub struct AdminPeer {
    /// Its address.
    pub addr: SocketAddr,
    /// The SHA-256 of the client certificate it presented, verified
    /// against the cluster CA (HTTPS only).
    pub certificate: Option<[u8; 32]>,
}

impl Connected<IncomingStream<'_, AdminListener>> for AdminPeer {
    fn connect_info(stream: IncomingStream<'_, AdminListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Who made an admin request, for the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The bearer token's holder.
    Token,
    /// A client certificate (its SHA-256, shortened).
    Certificate(String),
    /// A process on this machine (no token configured).
    Loopback,
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Token => f.write_str("bearer token"),
            Self::Certificate(fingerprint) => write!(f, "client certificate sha256:{fingerprint}"),
            Self::Loopback => f.write_str("loopback"),
        }
    }
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No credentials where some are needed.
    Missing,
    /// A token that is not the one.
    WrongToken,
}

/// The admin API's credentials.
#[derive(Clone)]
pub struct AdminAccess {
    /// SHA-256 of the bearer token.
    token_digest: Option<[u8; 32]>,
}

impl fmt::Debug for AdminAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminAccess")
            .field("token", &self.token_digest.is_some())
            .finish()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    digest::digest(&digest::SHA256, bytes)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// Equal without an early exit (the inputs are digests of the same size).
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AdminAccess {
    /// Reads the token file (its first line; at least 16 characters).
    pub fn new(token_file: Option<&Path>) -> Result<Self, String> {
        let Some(path) = token_file else {
            return Ok(Self { token_digest: None });
        };
        let text = std::fs::read(path)
            .map_err(|e| format!("cannot read the admin token file {}: {e}", path.display()))?;
        if text.len() > TOKEN_BYTES_MAX {
            return Err(format!(
                "the admin token file {} is too long",
                path.display()
            ));
        }
        let token = text.split(|&b| b == b'\n').next().unwrap_or_default();
        let token = token.strip_suffix(b"\r").unwrap_or(token);
        if token.len() < 16 || !token.iter().all(u8::is_ascii_graphic) {
            return Err(format!(
                "the admin token in {} must be at least 16 printable characters on its first line",
                path.display()
            ));
        }
        Ok(Self {
            token_digest: Some(sha256(token)),
        })
    }

    /// Whether a token is configured.
    pub fn has_token(&self) -> bool {
        self.token_digest.is_some()
    }

    /// Who is calling, given the connection and the `Authorization`
    /// header.
    pub fn caller(
        &self,
        peer: &AdminPeer,
        authorization: Option<&[u8]>,
    ) -> Result<Caller, Refusal> {
        if let Some(fingerprint) = &peer.certificate {
            let short: String = fingerprint[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            return Ok(Caller::Certificate(short));
        }
        match (&self.token_digest, authorization) {
            (Some(expected), Some(header)) => {
                let token = header.strip_prefix(b"Bearer ").ok_or(Refusal::Missing)?;
                if same(&sha256(token.trim_ascii()), expected) {
                    Ok(Caller::Token)
                } else {
                    Err(Refusal::WrongToken)
                }
            }
            (Some(_), None) => Err(Refusal::Missing),
            (None, _) if is_loopback(&peer.addr) => Ok(Caller::Loopback),
            (None, _) => Err(Refusal::Missing),
        }
    }
}

/// What an admin connection is: TCP, or TLS over it.
pub trait AdminIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AdminIo for T {}

/// A connection of the admin port, TLS or not.
pub type AdminStream = Box<dyn AdminIo>;

/// Accepts admin connections on its own task (TLS handshakes run
/// concurrently, each with a deadline), handing finished ones to the HTTP
/// server.
pub struct AdminListener {
    incoming: mpsc::Receiver<(AdminStream, AdminPeer)>,
    local: AdminPeer,
}

impl AdminListener {
    /// Starts accepting on `listener`, with TLS when `tls` is given.
    pub fn start(listener: TcpListener, tls: Option<TlsAcceptor>) -> std::io::Result<Self> {
        let local = AdminPeer {
            addr: listener.local_addr()?,
            certificate: None,
        };
        let (sender, incoming) = mpsc::channel(PENDING_CONNECTIONS_MAX);
        tokio::spawn(accept_loop(listener, tls, sender));
        Ok(Self { incoming, local })
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    sender: mpsc::Sender<(AdminStream, AdminPeer)>,
) {
    loop {
        let (stream, addr) = tokio::select! {
            _ = sender.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting an admin connection failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let Some(tls) = &tls else {
            let peer = AdminPeer {
                addr,
                certificate: None,
            };
            if sender.send((Box::new(stream), peer)).await.is_err() {
                return;
            }
            continue;
        };
        let tls = tls.clone();
        let sender = sender.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%addr, %error, "admin TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| sha256(cert));
            let _ = sender
                .send((Box::new(stream), AdminPeer { addr, certificate }))
                .await;
        });
    }
}

impl axum::serve::Listener for AdminListener {
    type Io = AdminStream;
    type Addr = AdminPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(connection) => connection,
            // The accept task ended (it never does while this lives).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::{AdminAccess, AdminPeer, Caller, Refusal};

    fn peer(addr: &str, certificate: Option<[u8; 32]>) -> AdminPeer {
        AdminPeer {
            addr: addr.parse().unwrap(),
            certificate,
        }
    }

    #[test]
    fn callers_need_a_token_a_certificate_or_loopback() {
        let open = AdminAccess::new(None).unwrap();
        assert_eq!(
            open.caller(&peer("127.0.0.1:5", None), None),
            Ok(Caller::Loopback)
        );
        assert_eq!(
            open.caller(&peer("10.0.0.1:5", None), None),
            Err(Refusal::Missing)
        );
        assert!(matches!(
            open.caller(&peer("10.0.0.1:5", Some([7; 32])), None),
            Ok(Caller::Certificate(_))
        ));

        let dir = std::env::temp_dir().join(format!("drkv-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "0123456789abcdef-token\n").unwrap();
        let guarded = AdminAccess::new(Some(&file)).unwrap();
        let local = peer("127.0.0.1:5", None);
        assert_eq!(guarded.caller(&local, None), Err(Refusal::Missing));
        assert_eq!(
            guarded.caller(&local, Some(b"Bearer 0123456789abcdef-token")),
            Ok(Caller::Token)
        );
        assert_eq!(
            guarded.caller(&local, Some(b"Bearer 0123456789abcdef-tokeN")),
            Err(Refusal::WrongToken)
        );
        assert_eq!(
            guarded.caller(&local, Some(b"Basic 0123456789abcdef-token")),
            Err(Refusal::Missing)
        );
        std::fs::write(&file, "short\n").unwrap();
        assert!(AdminAccess::new(Some(&file)).is_err());
        assert!(AdminAccess::new(Some(&dir.join("missing"))).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
