//! A cluster CA for tests: issues node and lookup certificates with rcgen, as the lookup
//! server's enrolment will.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A cluster CA and the certificates it issues (PEM).
pub struct Ca {
    issuer: CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A certificate and its key, PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    pub fn issue(&self, cn: &str, sans: &[&str], eku: Vec<ExtendedKeyUsagePurpose>) -> Leaf {
        self.sign(leaf_params(cn, sans, eku))
    }

    /// A node certificate for 127.0.0.1 / localhost.
    pub fn node_cert(&self) -> Leaf {
        self.node_cert_for("rjs-node")
    }

    /// A node certificate named `cn`, for 127.0.0.1 / localhost.
    pub fn node_cert_for(&self, cn: &str) -> Leaf {
        self.issue(
            cn,
            &["127.0.0.1", "localhost"],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// A certificate as enrolment issues it to node `id` (with its `urn:rjs:node:ID` name):
    /// good for serving and, as a client, for being refused jobs.
    pub fn enrolled_node_cert(&self, id: &str) -> Leaf {
        let eku = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let mut params = leaf_params(id, &["127.0.0.1"], eku);
        params.subject_alt_names.push(rcgen::SanType::URI(
            format!("urn:rjs:node:{id}")
                .as_str()
                .try_into()
                .expect("URI"),
        ));
        self.sign(params)
    }

    /// Signs `params` (a leaf: not a CA, with the authority key identifier) with a fresh key.
    fn sign(&self, mut params: CertificateParams) -> Leaf {
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A lookup server's client configuration: trusts this CA, presents a fresh lookup
    /// certificate.
    pub fn lookup_tls(&self) -> Arc<rustls::ClientConfig> {
        client_tls(self, Some(&self.client_cert("lookup-1")))
    }

    /// A lookup server's client certificate (named `urn:rjs:lookup`, as `rjs-lookup init`
    /// issues it).
    pub fn client_cert(&self, cn: &str) -> Leaf {
        let mut params = leaf_params(cn, &[], vec![ExtendedKeyUsagePurpose::ClientAuth]);
        params.subject_alt_names.push(rcgen::SanType::URI(
            rjs_wire::pki::LOOKUP_CLIENT_URI.try_into().expect("URI"),
        ));
        self.sign(params)
    }

    /// A client certificate of this CA that is not the lookup's (no `urn:rjs:lookup`).
    pub fn other_client_cert(&self, cn: &str) -> Leaf {
        self.issue(cn, &[], vec![ExtendedKeyUsagePurpose::ClientAuth])
    }
}

/// A leaf certificate's parameters: named `cn`, for `sans`, for signing with `eku`.
fn leaf_params(cn: &str, sans: &[&str], eku: Vec<ExtendedKeyUsagePurpose>) -> CertificateParams {
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("SANs");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = eku;
    params
}

impl Leaf {
    pub fn identity(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            rjs_wire::tls::certs_from_pem(self.cert_pem.as_bytes(), "client certificate")
                .expect("client certificate"),
            rjs_wire::tls::key_from_pem(self.key_pem.as_bytes(), "client key").expect("key"),
        )
    }
}

/// A TLS client configuration trusting `ca`, presenting `identity` if given.
pub fn client_tls(ca: &Ca, identity: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    Arc::new(
        rjs_wire::tls::client_config(&[ca.der()], identity.map(Leaf::identity))
            .expect("client TLS configuration"),
    )
}
