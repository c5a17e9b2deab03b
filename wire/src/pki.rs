//! Small PKI helpers shared by the web server (its CA, server and lookup certificates) and the
//! lookup server (the cluster CA, its own certificates, node certificates from CSRs). rcgen
//! underneath; feature `pki`.
//!
//! Keys are ECDSA P-256. Certificates get a random 128-bit serial number and start one day
//! before they are issued (clock skew). A CA may only sign end-entity certificates (path
//! length 0).

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Validity of a CA, years.
pub const CA_YEARS: i32 = 20;
/// Validity of leaf certificates, years.
pub const LEAF_YEARS: i32 = 10;
/// Longest DNS name accepted in a certificate.
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
    /// The CA certificate's DER does not parse.
    #[error("CA certificate")]
    CaCert(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// A CA: certificate (public) and key (secret).
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

/// A certificate issued by a CA, with its new key (empty when the key stayed with the
/// requester, see [`issue_for_csr`]).
pub struct Issued {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    /// PKCS#8 PEM. Secret.
    pub key_pem: String,
}

impl Issued {
    fn new(cert: &rcgen::Certificate, key_pem: String) -> Self {
        Issued {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem,
        }
    }

    /// SHA-256 (hex) of the DER certificate.
    pub fn sha256(&self) -> String {
        crate::tls::cert_sha256(&self.cert_der)
    }
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("sha256", &self.sha256())
            .finish_non_exhaustive()
    }
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

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Sets the validity: from yesterday (UTC) for `years` years.
fn set_validity(params: &mut CertificateParams, years: i32) {
    let (y, m, d) = civil_from_unix(unix_now() - 86_400);
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

/// A new ECDSA P-256 key.
pub fn new_key() -> Result<KeyPair, PkiError> {
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

/// Checks a host for a certificate: an IP address or a DNS name.
pub fn check_host(host: &str) -> Result<(), PkiError> {
    if host.parse::<IpAddr>().is_ok() || valid_dns_name(host) {
        Ok(())
    } else {
        Err(PkiError::BadHost(host.to_owned()))
    }
}

/// Subject alternative names for `hosts` (DNS names and IP addresses), checked.
pub fn host_sans(hosts: &[String]) -> Result<Vec<SanType>, PkiError> {
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
    Ok(sans)
}

/// Creates a new self-signed CA named `common_name`.
pub fn new_ca(common_name: &str) -> Result<Ca, PkiError> {
    let key = new_key()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
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
    let der = crate::tls::certs_from_pem(ca.cert_pem.as_bytes(), "CA certificate")?;
    let first = der
        .first()
        .ok_or_else(|| PkiError::Creds("no CA certificate".into()))?;
    let (_, parsed) = X509Certificate::from_der(first).map_err(PkiError::CaCert)?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(PkiError::KeyMismatch);
    }
    Ok(Issuer::from_ca_cert_pem(&ca.cert_pem, key)?)
}

fn leaf_params(
    common_name: &str,
    sans: Vec<SanType>,
    ekus: Vec<ExtendedKeyUsagePurpose>,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = ekus;
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    set_validity(&mut params, LEAF_YEARS);
    params
}

/// Issues an end-entity certificate with a new key.
pub fn issue(
    ca: &Ca,
    common_name: &str,
    sans: Vec<SanType>,
    ekus: Vec<ExtendedKeyUsagePurpose>,
) -> Result<Issued, PkiError> {
    let issuer = issuer(ca)?;
    let key = new_key()?;
    let cert = leaf_params(common_name, sans, ekus).signed_by(&key, &issuer)?;
    Ok(Issued::new(&cert, key.serialize_pem()))
}

/// The URI name that marks the lookup server's client certificate: the one identity a node
/// takes jobs from.
pub const LOOKUP_CLIENT_URI: &str = "urn:rjs:lookup";

/// Issues the lookup server's client certificate: named `common_name` and
/// [`LOOKUP_CLIENT_URI`], for client authentication only.
pub fn issue_lookup_client(ca: &Ca, common_name: &str) -> Result<Issued, PkiError> {
    let uri = SanType::URI(LOOKUP_CLIENT_URI.try_into()?);
    issue(
        ca,
        common_name,
        vec![uri],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )
}

/// Whether a certificate (DER) is a lookup server's client certificate: it names
/// [`LOOKUP_CLIENT_URI`] and no node. (Its chain to the cluster CA is TLS's to check.)
pub fn is_lookup_client(der: &[u8]) -> bool {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let uris = || {
        san.value.general_names.iter().filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(*u),
            _ => None,
        })
    };
    uris().any(|u| u == LOOKUP_CLIENT_URI) && !uris().any(|u| u.starts_with("urn:rjs:node:"))
}

/// Issues an end-entity certificate for the key in a CSR (PEM; its signature proves the
/// requester holds the key). Only the CSR's public key is used: the name, SANs and usages
/// are the CA's decision. The returned `key_pem` is empty.
pub fn issue_for_csr(
    ca: &Ca,
    csr_pem: &str,
    common_name: &str,
    sans: Vec<SanType>,
    ekus: Vec<ExtendedKeyUsagePurpose>,
) -> Result<Issued, PkiError> {
    let issuer = issuer(ca)?;
    let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
    csr.params = leaf_params(common_name, sans, ekus);
    let cert = csr.signed_by(&issuer)?;
    Ok(Issued::new(&cert, String::new()))
}

/// A new key and a CSR for it (PEM both; the key is secret), naming `common_name`.
pub fn new_csr(common_name: &str) -> Result<(String, String), PkiError> {
    let key = new_key()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

/// The subject's common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// The node id a certificate was issued for (its `urn:rjs:node:ID` URI name), if it is a
/// node's certificate. The lookup's own certificates carry no such name.
pub fn node_id_of(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => {
            u.strip_prefix("urn:rjs:node:").map(str::to_owned)
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_certificates_name_their_node_and_others_do_not() {
        let ca = new_ca("test CA").unwrap();
        let (csr, _) = new_csr("x").unwrap();
        let sans = vec![SanType::URI("urn:rjs:node:n1".try_into().unwrap())];
        let node = issue_for_csr(&ca, &csr, "n1", sans, vec![]).unwrap();
        let der = x509_der(&node.cert_pem);
        assert_eq!(node_id_of(&der).as_deref(), Some("n1"));
        let lookup = issue_lookup_client(&ca, "rjs-lookup").unwrap();
        let lookup_der = x509_der(&lookup.cert_pem);
        assert_eq!(node_id_of(&lookup_der), None);
        // Only the lookup's client certificate is the lookup's.
        assert!(is_lookup_client(&lookup_der));
        assert!(!is_lookup_client(&der));
        let plain = issue(&ca, "rjs-lookup", vec![], vec![]).unwrap();
        assert!(!is_lookup_client(&x509_der(&plain.cert_pem)));
        assert!(!is_lookup_client(b"not a certificate"));
        assert_eq!(node_id_of(b"not a certificate"), None);
    }

    fn x509_der(pem: &str) -> Vec<u8> {
        crate::tls::certs_from_pem(pem.as_bytes(), "test").unwrap()[0].to_vec()
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_unix(0), (1970, 1, 1));
        assert_eq!(civil_from_unix(951_782_400), (2000, 2, 29));
        assert_eq!(civil_from_unix(1_795_569_960), (2026, 11, 25));
        assert_eq!(civil_from_unix(-86_400), (1969, 12, 31));
    }

    #[test]
    fn csr_is_issued_with_the_cas_names_not_the_requesters() {
        let ca = new_ca("test CA").unwrap();
        let (csr, key) = new_csr("whatever").unwrap();
        let sans = vec![SanType::URI("urn:rjs:node:n1".try_into().unwrap())];
        let issued = issue_for_csr(
            &ca,
            &csr,
            "n1",
            sans,
            vec![ExtendedKeyUsagePurpose::ServerAuth],
        )
        .unwrap();
        assert_eq!(common_name(&issued.cert_der).as_deref(), Some("n1"));
        let (_, cert) = X509Certificate::from_der(&issued.cert_der).unwrap();
        let kp = KeyPair::from_pem(&key).unwrap();
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            kp.public_key_raw()
        );
        assert!(issue_for_csr(&ca, "junk", "n1", vec![], vec![]).is_err());
    }
}
