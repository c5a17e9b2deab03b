//! TLS helpers: PEM files in, rustls configurations out. Every configuration uses the ring
//! provider explicitly (no process-wide default needed), TLS 1.3 and 1.2 only, and trusts
//! only the roots it is given: never the system's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// Errors loading PEM material or building a configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {why}")]
    Pem { what: String, why: String },
    #[error("building the TLS configuration")]
    Rustls(#[from] rustls::Error),
    #[error("building the certificate verifier: {0}")]
    Verifier(String),
}

/// The crypto provider all RJS configurations use.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM text (in order).
pub fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    let certs = certs.map_err(|e| TlsError::Pem {
        what: what.to_owned(),
        why: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: what.to_owned(),
            why: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// The (first) private key in a PEM text.
pub fn key_from_pem(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        what: what.to_owned(),
        why: e.to_string(),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    // PEM files here are small; refuse anything absurd.
    let meta = std::fs::metadata(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    if meta.len() > 1024 * 1024 {
        return Err(TlsError::Pem {
            what: path.display().to_string(),
            why: "larger than 1 MiB".into(),
        });
    }
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs_from_pem(&read(path)?, &path.display().to_string())
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    key_from_pem(&read(path)?, &path.display().to_string())
}

/// SHA-256 of a DER certificate, lowercase hex: how RJS names a certificate.
pub fn cert_sha256(cert: &[u8]) -> String {
    Sha256::digest(cert)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn roots(certs: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certs {
        store.add(c.clone())?;
    }
    Ok(Arc::new(store))
}

/// A client configuration that trusts only `ca` and, if given, presents `identity`
/// (certificate chain and key) for mutual TLS.
pub fn client_config(
    ca: &[CertificateDer<'static>],
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_webpki_verifier(verifier);
    Ok(match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    })
}

/// How a server treats client certificates.
pub enum ClientAuth<'a> {
    /// No client certificates.
    None,
    /// Client certificates are verified against these roots if presented, but not required
    /// (handlers decide per route).
    Optional(&'a [CertificateDer<'static>]),
    /// Every connection must present a certificate issued by these roots.
    Required(&'a [CertificateDer<'static>]),
}

/// A server configuration presenting `chain`/`key`.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_auth: ClientAuth<'_>,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional(ca) | ClientAuth::Required(ca) => {
            let optional = matches!(client_auth, ClientAuth::Optional(_));
            let mut v = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider);
            if optional {
                v = v.allow_unauthenticated();
            }
            let v = v.build().map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(v)
        }
    };
    Ok(builder.with_single_cert(chain, key)?)
}
