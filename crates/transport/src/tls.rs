//! Optional TLS between peers, with mutual authentication: both sides
//! present a certificate signed by the cluster's CA and check the other's.
//! rustls on ring.
//!
//! Every peer certificate carries the DNS name [`PEER_NAME`]: the CA
//! admits a node to the cluster, and the hello inside the encrypted
//! session says which node it is.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The DNS subject alternative name every peer certificate must carry.
pub const PEER_NAME: &str = "dr-peer";

/// Where a node's TLS material lives, all PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA's certificate(s): peers must be signed by one.
    pub ca_cert: PathBuf,
    /// This node's certificate chain (its certificate first).
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

/// TLS material that could not be loaded, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsError(pub String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TLS setup failed: {}", self.0)
    }
}

impl std::error::Error for TlsError {}

/// Both roles of a node's TLS: it dials some peers and accepts others.
pub(crate) struct Tls {
    pub(crate) connector: TlsConnector,
    pub(crate) acceptor: TlsAcceptor,
}

fn failed(what: &str, path: &std::path::Path, error: impl fmt::Display) -> TlsError {
    TlsError(format!("{what} {}: {error}", path.display()))
}

impl Tls {
    /// Reads the files and builds the client and server configurations.
    pub(crate) fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        let cas = CertificateDer::pem_file_iter(&files.ca_cert)
            .map_err(|e| failed("reading the CA certificate", &files.ca_cert, e))?;
        for ca in cas {
            let ca = ca.map_err(|e| failed("parsing the CA certificate", &files.ca_cert, e))?;
            roots
                .add(ca)
                .map_err(|e| failed("using the CA certificate", &files.ca_cert, e))?;
        }
        if roots.is_empty() {
            return Err(failed("no certificate in", &files.ca_cert, "empty"));
        }
        let roots = Arc::new(roots);
        let chain = CertificateDer::pem_file_iter(&files.cert)
            .map_err(|e| failed("reading the certificate", &files.cert, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| failed("parsing the certificate", &files.cert, e))?;
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| failed("reading the private key", &files.key, e))?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()
                .map_err(|e| TlsError(format!("the peer verifier: {e}")))?;
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| failed("using the certificate and key", &files.cert, e))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| failed("using the certificate and key", &files.cert, e))?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(client)),
            acceptor: TlsAcceptor::from(Arc::new(server)),
        })
    }
}
