//! The web server's own small PKI (rcgen): its CA, the server certificate it presents, and the
//! client certificates it issues to lookup servers (`rjs-webserver lookup add`).
//!
//! Keys are ECDSA P-256 (every TLS stack, curl included, takes them). Certificates get a
//! random 128-bit serial number and start one day before they are issued (clock skew). The CA
//! may only sign end-entity certificates (path length 0).
//!
//! # The lookup credentials file
//!
//! `lookup add NAME -o FILE` writes one PEM file (mode 0600) holding, in this order:
//!
//! 1. `CERTIFICATE`: the lookup's client certificate (CN = NAME, clientAuth EKU), signed by
//!    the web server's CA;
//! 2. `CERTIFICATE`: the web server's CA certificate, the one root a lookup must trust for
//!    the web server (the same as `DIR/ca.pem`);
//! 3. `PRIVATE KEY`: the client certificate's key (PKCS#8).
//!
//! Comment lines starting with `#` before and between the blocks say what each block is; PEM
//! readers skip them. The leaf comes first so that the file works as is as an identity for
//! most clients (`curl --cert FILE --key FILE`, reqwest's `Identity::from_pem`); the CA then
//! merely travels as a chain element. [`parse_creds`] splits such a file back.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Common name of the web server's CA.
pub const CA_COMMON_NAME: &str = "RJS web server CA";
/// Common name of the web server's own certificate.
pub const SERVER_COMMON_NAME: &str = "rjs-webserver";
/// Validity of the CA, years.
pub const CA_YEARS: i32 = 20;
/// Validity of server and lookup certificates, years.
pub const LEAF_YEARS: i32 = 10;
/// Longest DNS name accepted for the server certificate.
pub const MAX_HOST: usize = 253;

/// Certificate issuance and parsing failures.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating a certificate")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid host name {0:?} (a DNS name or an IP address)")]
    BadHost(String),
    #[error("the CA key does not match the CA certificate")]
    KeyMismatch,
    #[error("{0}")]
    Creds(String),
    #[error(transparent)]
    Tls(#[from] rjs_wire::tls::TlsError),
}

/// The CA: certificate (public) and key (secret).
pub struct Ca {
    pub cert_pem: String,
    /// PKCS#8 PEM. Secret.
    pub key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// A certificate issued by the CA, with its new key.
pub struct Issued {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    /// PKCS#8 PEM. Secret.
    pub key_pem: String,
}

impl Issued {
    /// SHA-256 (hex) of the DER certificate: how the store names it.
    pub fn sha256(&self) -> String {
        rjs_wire::tls::cert_sha256(&self.cert_der)
    }
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("sha256", &self.sha256())
            .finish_non_exhaustive()
    }
}

/// The parts of a lookup credentials file.
#[derive(Debug)]
pub struct Creds {
    /// The web server's CA (the root to trust).
    pub ca: CertificateDer<'static>,
    /// The client certificate.
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

/// (year, month, day) of a Unix time, UTC (proleptic Gregorian; H. Hinnant's algorithm).
pub fn civil_from_unix(secs: i64) -> (i32, u8, u8) {
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (y as i32, m as u8, d as u8)
}

/// Sets the validity: from yesterday (UTC) for `years` years.
fn set_validity(params: &mut CertificateParams, years: i32) {
    let now = rjs_signer::unix_now() as i64;
    let (y, m, d) = civil_from_unix(now - 86_400);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    // Day 28 at most: every month has it.
    params.not_after = rcgen::date_time_ymd(y + years, m, d.min(28));
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and exactly 16 bytes long in DER.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn new_key() -> Result<KeyPair, PkiError> {
    Ok(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?)
}

/// A DNS name as certificates take it: labels of letters, digits and `-`, dot-separated.
fn valid_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= MAX_HOST
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Checks a host for the server certificate: an IP address or a DNS name.
pub fn check_host(host: &str) -> Result<(), PkiError> {
    if host.parse::<IpAddr>().is_ok() || valid_dns_name(host) {
        Ok(())
    } else {
        Err(PkiError::BadHost(host.to_owned()))
    }
}

/// Creates a new self-signed CA.
pub fn new_ca() -> Result<Ca, PkiError> {
    let key = new_key()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    set_validity(&mut params, CA_YEARS);
    let cert = params.self_signed(&key)?;
    Ok(Ca {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn issuer(ca: &Ca) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let key = KeyPair::from_pem(&ca.key_pem)?;
    // The key must be the one the certificate names, or every issued certificate is junk.
    let der = rjs_wire::tls::certs_from_pem(ca.cert_pem.as_bytes(), "CA certificate")?;
    let first = der
        .first()
        .ok_or_else(|| PkiError::Creds("no CA certificate".into()))?;
    let (_, parsed) = X509Certificate::from_der(first)
        .map_err(|e| PkiError::Creds(format!("CA certificate: {e}")))?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(PkiError::KeyMismatch);
    }
    Ok(Issuer::from_ca_cert_pem(&ca.cert_pem, key)?)
}

fn issue(
    ca: &Ca,
    common_name: &str,
    sans: Vec<SanType>,
    eku: ExtendedKeyUsagePurpose,
) -> Result<Issued, PkiError> {
    let issuer = issuer(ca)?;
    let key = new_key()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![eku];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    set_validity(&mut params, LEAF_YEARS);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        cert_der: cert.der().to_vec(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues the server certificate for `hosts` (DNS names and IP addresses, as SANs).
pub fn issue_server(ca: &Ca, hosts: &[String]) -> Result<Issued, PkiError> {
    let mut sans = Vec::with_capacity(hosts.len());
    for host in hosts {
        check_host(host)?;
        sans.push(match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                host.as_str()
                    .try_into()
                    .map_err(|_| PkiError::BadHost(host.clone()))?,
            ),
        });
    }
    issue(
        ca,
        SERVER_COMMON_NAME,
        sans,
        ExtendedKeyUsagePurpose::ServerAuth,
    )
}

/// Issues a lookup server's client certificate (CN = `name`, clientAuth).
pub fn issue_lookup(ca: &Ca, name: &str) -> Result<Issued, PkiError> {
    issue(ca, name, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)
}

/// The text of a lookup credentials file (see the module documentation).
pub fn creds_file(name: &str, issued: &Issued, ca_cert_pem: &str) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "# RJS lookup credentials for {name:?}, issued by rjs-webserver.\n\
         # SECRET: holds the private key of this lookup's client certificate.\n\
         # Blocks: 1. client certificate (CN={name}), 2. web server CA certificate (trust it),\n\
         # 3. client certificate's private key (PKCS#8).\n\
         # client certificate, SHA-256 {}\n",
        issued.sha256()
    ));
    s.push_str(issued.cert_pem.trim_end());
    s.push_str("\n# web server CA certificate\n");
    s.push_str(ca_cert_pem.trim_end());
    s.push_str("\n# client private key\n");
    s.push_str(issued.key_pem.trim_end());
    s.push('\n');
    s
}

/// Splits a lookup credentials file.
pub fn parse_creds(pem: &[u8]) -> Result<Creds, PkiError> {
    let mut certs = rjs_wire::tls::certs_from_pem(pem, "credentials file")?;
    if certs.len() != 2 {
        return Err(PkiError::Creds(format!(
            "credentials file: {} certificates, expected 2 (client, then CA)",
            certs.len()
        )));
    }
    let key = rjs_wire::tls::key_from_pem(pem, "credentials file")?;
    let ca = certs.pop().ok_or_else(|| PkiError::Creds("no CA".into()))?;
    let cert = certs
        .pop()
        .ok_or_else(|| PkiError::Creds("no client certificate".into()))?;
    Ok(Creds { ca, cert, key })
}

/// The subject's common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::WebPkiClientVerifier;
    use rustls_pki_types::UnixTime;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_unix(0), (1970, 1, 1));
        assert_eq!(civil_from_unix(951_782_400), (2000, 2, 29));
        assert_eq!(civil_from_unix(1_795_569_960), (2026, 11, 25));
        assert_eq!(civil_from_unix(-86_400), (1969, 12, 31));
    }

    #[test]
    fn hosts() {
        for ok in ["localhost", "127.0.0.1", "::1", "ws.lab.example", "a-b.c"] {
            check_host(ok).unwrap();
        }
        for bad in ["", "-a", "a..b", "a b", "*.x", "é.fr", "a/b"] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lookup_cert_chains_to_ca_and_names_the_lookup() {
        let ca = new_ca().unwrap();
        let issued = issue_lookup(&ca, "lab-1").unwrap();
        let file = creds_file("lab-1", &issued, &ca.cert_pem);
        let creds = parse_creds(file.as_bytes()).unwrap();
        assert_eq!(creds.cert.as_ref(), issued.cert_der.as_slice());
        assert_eq!(common_name(&creds.cert).as_deref(), Some("lab-1"));
        assert_eq!(common_name(&creds.ca).as_deref(), Some(CA_COMMON_NAME));

        // rustls's client verifier (what the server runs) accepts it for client auth.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(creds.ca.clone()).unwrap();
        let verifier = WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            rjs_wire::tls::provider(),
        )
        .build()
        .unwrap();
        verifier
            .verify_client_cert(&creds.cert, &[], UnixTime::now())
            .unwrap();

        // A certificate from another CA does not.
        let other = new_ca().unwrap();
        let stranger = issue_lookup(&other, "lab-1").unwrap();
        let der = CertificateDer::from(stranger.cert_der.clone());
        assert!(
            verifier
                .verify_client_cert(&der, &[], UnixTime::now())
                .is_err()
        );

        // The key in the file is the certificate's: a client config builds from it.
        rjs_wire::tls::client_config(&[creds.ca], Some((vec![creds.cert], creds.key))).unwrap();
    }

    #[test]
    fn server_cert_is_valid_for_its_hosts_only() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls_pki_types::ServerName;
        let ca = new_ca().unwrap();
        let hosts: Vec<String> = ["localhost", "127.0.0.1", "::1", "ws.example"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let issued = issue_server(&ca, &hosts).unwrap();
        let ca_der = rjs_wire::tls::certs_from_pem(ca.cert_pem.as_bytes(), "ca").unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der[0].clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            rjs_wire::tls::provider(),
        )
        .build()
        .unwrap();
        let leaf = CertificateDer::from(issued.cert_der.clone());
        for h in &hosts {
            let name = ServerName::try_from(h.clone()).unwrap();
            verifier
                .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
                .unwrap_or_else(|e| panic!("{h}: {e}"));
        }
        let other = ServerName::try_from("other.example").unwrap();
        assert!(
            verifier
                .verify_server_cert(&leaf, &[], &other, &[], UnixTime::now())
                .is_err()
        );
        // The server key loads, and the configuration builds.
        let key = rjs_wire::tls::key_from_pem(issued.key_pem.as_bytes(), "key").unwrap();
        rjs_wire::tls::server_config(
            vec![leaf],
            key,
            rjs_wire::tls::ClientAuth::Optional(&ca_der),
        )
        .unwrap();
    }

    #[test]
    fn mismatched_ca_key_is_refused() {
        let a = new_ca().unwrap();
        let b = new_ca().unwrap();
        let franken = Ca {
            cert_pem: a.cert_pem.clone(),
            key_pem: b.key_pem.clone(),
        };
        assert!(matches!(
            issue_lookup(&franken, "x"),
            Err(PkiError::KeyMismatch)
        ));
    }

    #[test]
    fn creds_with_wrong_block_count_are_refused() {
        let ca = new_ca().unwrap();
        let issued = issue_lookup(&ca, "x").unwrap();
        let only_leaf = format!("{}{}", issued.cert_pem, issued.key_pem);
        assert!(parse_creds(only_leaf.as_bytes()).is_err());
    }
}
