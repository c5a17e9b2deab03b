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
//! merely travels as a chain element. [`parse_creds`] ([`rjs_wire::creds`], shared with the
//! lookup server) splits such a file back, and refuses any other number of certificates.

use rcgen::ExtendedKeyUsagePurpose;

/// The lookup credentials file is read by the one parser the lookup server uses too.
pub use rjs_wire::creds::{Creds, parse_creds};
pub use rjs_wire::pki::{Ca, Issued, PkiError, check_host, civil_from_unix, common_name};

/// Common name of the web server's CA.
pub const CA_COMMON_NAME: &str = "RJS web server CA";
/// Common name of the web server's own certificate.
pub const SERVER_COMMON_NAME: &str = "rjs-webserver";

/// Creates a new self-signed CA.
pub fn new_ca() -> Result<Ca, PkiError> {
    rjs_wire::pki::new_ca(CA_COMMON_NAME)
}

/// Issues the server certificate for `hosts` (DNS names and IP addresses, as SANs).
pub fn issue_server(ca: &Ca, hosts: &[String]) -> Result<Issued, PkiError> {
    rjs_wire::pki::issue(
        ca,
        SERVER_COMMON_NAME,
        rjs_wire::pki::host_sans(hosts)?,
        vec![ExtendedKeyUsagePurpose::ServerAuth],
    )
}

/// Issues a lookup server's client certificate (CN = `name`, clientAuth).
pub fn issue_lookup(ca: &Ca, name: &str) -> Result<Issued, PkiError> {
    rjs_wire::pki::issue(
        ca,
        name,
        Vec::new(),
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::WebPkiClientVerifier;
    use rustls_pki_types::{CertificateDer, UnixTime};

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
