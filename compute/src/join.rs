//! `rjs-compute join TOKEN`: enrols this node with a lookup server (see
//! `docs/lookup-enrolment.md`).
//!
//! The token carries the enrolment endpoint, the SHA-256 of the cluster CA certificate and a
//! one-time secret. The node connects over TLS with [`PinnedCaVerifier`]: the server must
//! send its chain *including* the CA certificate; the verifier picks the chain element whose
//! SHA-256 equals the pinned fingerprint, then verifies the leaf with ordinary WebPKI rules
//! (signature chain, validity, server name = the token's host) against that one root. So a
//! server not holding a certificate issued by the pinned CA cannot complete the handshake and
//! the secret is never sent to it. The node then sends the secret, its ed25519 public key and
//! a CSR for a TLS key generated here (the key never leaves the node), and writes the
//! certificate, key, CA and assigned id where `rjs-compute serve` finds them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rjs_wire::enrol::{EnrolRequest, EnrolResponse, Token};
use rjs_wire::ids::NodeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::config::TlsPaths;
use crate::identity::{NODE_ID_FILE, NodeIdentity};

/// Deadline of the whole enrolment exchange.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Accepts a server whose chain contains the CA certificate with the pinned SHA-256 and whose
/// leaf verifies against that CA for the server name (see the module documentation).
#[derive(Debug)]
pub struct PinnedCaVerifier {
    ca_sha256: String,
    provider: Arc<CryptoProvider>,
}

impl PinnedCaVerifier {
    pub fn new(ca_sha256: &str) -> Self {
        PinnedCaVerifier {
            ca_sha256: ca_sha256.to_ascii_lowercase(),
            provider: rjs_wire::tls::provider(),
        }
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = intermediates
            .iter()
            .find(|c| rjs_wire::tls::cert_sha256(c) == self.ca_sha256)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the server's chain does not contain the cluster CA named in the token".into(),
                )
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pinned.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::Other(rustls::OtherError(Arc::new(e))))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What to ask for.
#[derive(Debug, Clone, Default)]
pub struct JoinOptions {
    /// Node id to request (the lookup assigns `node-<n>` otherwise).
    pub node_id: Option<String>,
    /// DNS names / IP addresses for the node certificate.
    pub hosts: Vec<String>,
}

/// Where the enrolment put things.
#[derive(Debug, Clone)]
pub struct Joined {
    pub node_id: NodeId,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h,
        None => addr,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Enrols the node whose data directory is `data_dir` (TLS files at `tls`).
pub async fn join(
    token: &Token,
    data_dir: &Path,
    tls: &TlsPaths,
    opts: &JoinOptions,
) -> Result<Joined> {
    if let Some(id) = &opts.node_id
        && !crate::identity::valid_node_id(id)
    {
        bail!("node id {id:?}: use 1-64 characters of A-Z a-z 0-9 . _ -");
    }
    rjs_signer::fsutil::create_private_dir(data_dir)?;
    let identity = NodeIdentity::load_or_create(data_dir, None).context("the node key")?;
    let (csr_pem, key_pem) = rjs_wire::pki::new_csr("rjs-compute node")?;
    let request = EnrolRequest {
        secret: token.secret,
        node_key: identity.key.public().to_base64(),
        csr_pem,
        node_id: opts.node_id.clone(),
        hosts: opts.hosts.clone(),
    };

    let config = rustls::ClientConfig::builder_with_provider(rjs_wire::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier::new(&token.ca_sha256)))
        .with_no_client_auth();
    let name = ServerName::try_from(host_of(&token.addr).to_owned())
        .with_context(|| format!("the token's address {:?}", token.addr))?;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(&token.addr)
            .await
            .with_context(|| format!("connecting to {}", token.addr))?;
        let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .context("TLS handshake with the lookup (is the token's CA fingerprint right?)")?;
        rjs_wire::node::write_msg(&mut stream, &request, rjs_wire::node::CONTROL_TIMEOUT).await?;
        let resp: EnrolResponse =
            rjs_wire::node::read_msg(&mut stream, rjs_wire::node::CONTROL_TIMEOUT).await?;
        anyhow::Ok(resp)
    };
    let resp = tokio::time::timeout(JOIN_TIMEOUT, exchange)
        .await
        .context("the enrolment timed out")??;
    let (node_id, cert_pem, ca_pem) = match resp {
        EnrolResponse::Enrolled {
            node_id,
            cert_pem,
            ca_pem,
        } => (node_id, cert_pem, ca_pem),
        EnrolResponse::Refused { reason } => {
            bail!("the lookup refused to enrol this node: {reason}")
        }
    };
    if !crate::identity::valid_node_id(&node_id) {
        bail!("the lookup assigned an invalid node id {node_id:?}");
    }
    let ca = rjs_wire::tls::certs_from_pem(ca_pem.as_bytes(), "cluster CA")?;
    if ca.len() != 1 || rjs_wire::tls::cert_sha256(&ca[0]) != token.ca_sha256 {
        bail!("the lookup sent a CA certificate other than the token's");
    }
    rjs_wire::tls::certs_from_pem(cert_pem.as_bytes(), "node certificate")?;
    let write = |path: &Path, text: &str, mode: u32| {
        rjs_signer::fsutil::write_atomic(path, text.as_bytes(), mode)
            .with_context(|| format!("writing {}", path.display()))
    };
    write(&tls.key, &key_pem, 0o600)?;
    write(&tls.cert, &cert_pem, 0o644)?;
    write(&tls.ca, &ca_pem, 0o644)?;
    write(&data_dir.join(NODE_ID_FILE), &format!("{node_id}\n"), 0o644)?;
    Ok(Joined {
        node_id: NodeId::from(node_id),
        cert: tls.cert.clone(),
        key: tls.key.clone(),
        ca: tls.ca.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_addresses() {
        assert_eq!(host_of("127.0.0.1:7450"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7450"), "::1");
        assert_eq!(host_of("lookup.lan:1"), "lookup.lan");
    }
}
