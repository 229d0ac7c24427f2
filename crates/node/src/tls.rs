//! TLS for a node's three ports from one set of PEM files (the cluster
//! CA, the node's certificate and key): mutual TLS between peers (through
//! dr-transport), TLS on the client port (client certificates optional),
//! HTTPS on the admin port (a client certificate signed by the CA
//! authenticates an operator); and `drkv certs`, which makes such files
//! with rcgen.
//!
//! A node certificate serves all three: it names [`dr_transport::PEER_NAME`]
//! (what peers check) and the host names and addresses clients dial
//! (what redis-cli and curl check).

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
    SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsAcceptor;

/// A node's TLS files (PEM). With them, peers use mutual TLS, the client
/// port speaks TLS and the admin port HTTPS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeTls {
    /// The cluster CA's certificate: peers (and client certificates) must
    /// be signed by it.
    pub ca_cert: PathBuf,
    /// This node's certificate chain, its certificate first.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
    /// Clients of the client port must present a certificate signed by
    /// the CA (besides any password).
    #[serde(default)]
    pub auth_clients: bool,
}

/// TLS files that cannot be used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSetupError(pub String);

impl fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TLS setup failed: {}", self.0)
    }
}

impl std::error::Error for TlsSetupError {}

fn failed(what: &str, path: &Path, error: impl fmt::Display) -> TlsSetupError {
    TlsSetupError(format!("{what} {}: {error}", path.display()))
}

/// Whether clients must, may or need not present a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCerts {
    /// Refused without one signed by the CA.
    Required,
    /// Verified when presented (the admin port: a token or a certificate).
    Optional,
    /// Not asked for.
    None,
}

impl NodeTls {
    /// As dr-transport takes them, for mutual TLS between peers.
    pub fn peer_files(&self) -> dr_transport::TlsFiles {
        dr_transport::TlsFiles {
            ca_cert: self.ca_cert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }

    /// The CA's certificates.
    pub fn roots(&self) -> Result<RootCertStore, TlsSetupError> {
        read_roots(&self.ca_cert)
    }

    /// A server for the client or admin port.
    pub fn acceptor(&self, client_certs: ClientCerts) -> Result<TlsAcceptor, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| failed("reading the certificate", &self.cert, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| failed("parsing the certificate", &self.cert, e))?;
        if chain.is_empty() {
            return Err(failed("no certificate in", &self.cert, "empty"));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| failed("reading the private key", &self.key, e))?;
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError(e.to_string()))?;
        let builder = match client_certs {
            ClientCerts::None => builder.with_no_client_auth(),
            ClientCerts::Required | ClientCerts::Optional => {
                let roots = Arc::new(self.roots()?);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
                let verifier = if client_certs == ClientCerts::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| TlsSetupError(format!("the client verifier: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|e| failed("using the certificate and key", &self.cert, e))?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Loads everything once, so a node with bad files refuses to start.
    pub fn check(&self) -> Result<(), TlsSetupError> {
        self.acceptor(ClientCerts::Required).map(drop)
    }
}

/// The certificates of a CA file.
pub fn read_roots(path: &Path) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(path)
        .map_err(|e| failed("reading the CA certificate", path, e))?;
    for ca in cas {
        let ca = ca.map_err(|e| failed("parsing the CA certificate", path, e))?;
        roots
            .add(ca)
            .map_err(|e| failed("using the CA certificate", path, e))?;
    }
    if roots.is_empty() {
        return Err(failed("no certificate in", path, "empty"));
    }
    Ok(roots)
}

/// What `drkv certs` wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedCerts {
    /// The CA's certificate (give it to clients: `--cacert`).
    pub ca_cert: PathBuf,
    /// The CA's private key (keep it offline; it signs new members).
    pub ca_key: PathBuf,
    /// Each node's files, in the order of the ids asked for.
    pub nodes: Vec<NodeTls>,
    /// A client certificate signed by the CA (for `--tls-auth-clients`
    /// and the admin API): certificate and key.
    pub client: (PathBuf, PathBuf),
}

/// Makes a new CA in `dir` and, signed by it, a certificate for each node
/// id (valid for `dr-peer`, `localhost`, 127.0.0.1, ::1 and `hosts`) and
/// one client certificate. Private keys are written owner-only.
pub fn generate(
    dir: &Path,
    ids: &[u64],
    hosts: &[String],
) -> Result<GeneratedCerts, TlsSetupError> {
    let io = |path: &Path, e: std::io::Error| failed("writing", path, e);
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let rcgen_error = |e: rcgen::Error| TlsSetupError(format!("making a certificate: {e}"));
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "drkv cluster CA");
    ca_params.distinguished_name = name;
    let ca_key = KeyPair::generate().map_err(rcgen_error)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(rcgen_error)?;
    let ca_cert = dir.join("ca.pem");
    let ca_key_path = dir.join("ca-key.pem");
    std::fs::write(&ca_cert, issuer.pem()).map_err(|e| io(&ca_cert, e))?;
    write_private(&ca_key_path, &ca_key_pem)?;

    let mut names = vec![dr_transport::PEER_NAME.to_owned(), "localhost".to_owned()];
    names.extend(
        hosts
            .iter()
            .filter(|h| h.parse::<IpAddr>().is_err())
            .cloned(),
    );
    let mut addresses: Vec<IpAddr> =
        vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()];
    addresses.extend(hosts.iter().filter_map(|h| h.parse::<IpAddr>().ok()));
    let sign = |common_name: String, with_names: bool| -> Result<(String, String), TlsSetupError> {
        let mut params = CertificateParams::new(if with_names {
            names.clone()
        } else {
            Vec::new()
        })
        .map_err(rcgen_error)?;
        if with_names {
            params
                .subject_alt_names
                .extend(addresses.iter().map(|&ip| SanType::IpAddress(ip)));
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let cert = params.signed_by(&key, &issuer).map_err(rcgen_error)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let mut nodes = Vec::with_capacity(ids.len());
    for &id in ids {
        let (cert_pem, key_pem) = sign(format!("drkv node {id}"), true)?;
        let cert = dir.join(format!("node-{id}.pem"));
        let key = dir.join(format!("node-{id}-key.pem"));
        std::fs::write(&cert, cert_pem).map_err(|e| io(&cert, e))?;
        write_private(&key, &key_pem)?;
        nodes.push(NodeTls {
            ca_cert: ca_cert.clone(),
            cert,
            key,
            auth_clients: false,
        });
    }
    let (cert_pem, key_pem) = sign("drkv client".to_owned(), false)?;
    let client_cert = dir.join("client.pem");
    let client_key = dir.join("client-key.pem");
    std::fs::write(&client_cert, cert_pem).map_err(|e| io(&client_cert, e))?;
    write_private(&client_key, &key_pem)?;
    Ok(GeneratedCerts {
        ca_cert,
        ca_key: ca_key_path,
        nodes,
        client: (client_cert, client_key),
    })
}

/// Writes a secret readable by its owner only.
pub fn write_private(path: &Path, text: &str) -> Result<(), TlsSetupError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let write = || {
        let _ = std::fs::remove_file(path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    };
    write().map_err(|e| failed("writing", path, e))
}

#[cfg(test)]
mod tests {
    use super::{ClientCerts, generate};

    #[test]
    fn generated_files_load_for_every_port() {
        let dir = std::env::temp_dir().join(format!("drkv-certs-{}", std::process::id()));
        let made = generate(&dir, &[1, 2], &["10.1.2.3".into(), "db.example".into()]).unwrap();
        assert_eq!(made.nodes.len(), 2);
        for node in &made.nodes {
            node.check().unwrap();
            node.acceptor(ClientCerts::None).unwrap();
            node.acceptor(ClientCerts::Optional).unwrap();
        }
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&made.ca_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the CA key is readable by others");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
