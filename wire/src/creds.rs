//! The lookup credentials file (`rjs-webserver lookup add NAME -o FILE`,
//! `docs/webserver-admin.md`, "Lookup credentials file"), read the same way by the web server's
//! tools and by the lookup server.
//!
//! The file holds exactly two `CERTIFICATE` blocks — the lookup's client certificate, then the
//! web server's CA certificate — and one `PRIVATE KEY` block (the client certificate's key).
//! `#` comment lines around the blocks are skipped. Any other number of certificates is refused:
//! the web server's CA signs lookup certificates directly, so there is no intermediate to carry.

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::pki::PkiError;

/// What the file is called in error messages.
const WHAT: &str = "credentials file";

/// The parts of a lookup credentials file.
#[derive(Debug)]
pub struct Creds {
    /// The web server's CA (the one root to trust for the web server).
    pub ca: CertificateDer<'static>,
    /// The lookup's client certificate.
    pub cert: CertificateDer<'static>,
    /// The client certificate's key.
    pub key: PrivateKeyDer<'static>,
}

/// Splits a lookup credentials file (see the [module documentation](self)).
pub fn parse_creds(pem: &[u8]) -> Result<Creds, PkiError> {
    let certs = crate::tls::certs_from_pem(pem, WHAT)?;
    let [cert, ca]: [CertificateDer<'static>; 2] = certs.try_into().map_err(|c: Vec<_>| {
        PkiError::Creds(format!(
            "{WHAT}: {} certificates, expected 2 (client, then CA)",
            c.len()
        ))
    })?;
    let key = crate::tls::key_from_pem(pem, WHAT)?;
    Ok(Creds { ca, cert, key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{issue, new_ca};

    fn parts() -> (String, String, String) {
        let ca = new_ca("test CA").unwrap();
        let leaf = issue(&ca, "lab-1", vec![], vec![]).unwrap();
        (leaf.cert_pem, ca.cert_pem, leaf.key_pem)
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        crate::tls::certs_from_pem(pem.as_bytes(), "pem")
            .unwrap()
            .remove(0)
    }

    #[test]
    fn client_then_ca_then_key_with_comments() {
        let (leaf, ca, key) = parts();
        let file = format!("# client\n{leaf}# CA\n{ca}# key\n{key}");
        let creds = parse_creds(file.as_bytes()).unwrap();
        assert_eq!(creds.cert, der(&leaf));
        assert_eq!(creds.ca, der(&ca));
    }

    #[test]
    fn exactly_two_certificates() {
        let (leaf, ca, key) = parts();
        for (file, n) in [
            (format!("{leaf}{key}"), 1),
            (format!("{leaf}{ca}{ca}{key}"), 3),
        ] {
            let e = parse_creds(file.as_bytes()).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("credentials file: {n} certificates, expected 2 (client, then CA)")
            );
        }
    }

    #[test]
    fn the_key_is_required() {
        let (leaf, ca, _) = parts();
        assert!(parse_creds(format!("{leaf}{ca}").as_bytes()).is_err());
    }
}
