//! Signed author requests (see `docs/webserver-api.md`, "Author authentication").
//!
//! Every author request carries its audience (the web server it is meant for: the SHA-256 of
//! that server's CA certificate, which the client pins), the author's public key, a
//! timestamp, a random nonce, the SHA-256 of its body and an ed25519 signature over a
//! domain-separated statement of the audience, the method, the path (with query), those
//! values and the key. The web server checks the audience is its own, the timestamp is within
//! its window, the signature, that the key is an enrolled author, the body hash, and that the
//! nonce was never used before. A request captured at one web server is therefore refused by
//! every other one (`wrong-audience`), even where the same key is enrolled.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::bundle::is_lower_hex as is_hex;
use crate::keys::{KeyPair, PublicKey};

/// Domain-separation prefix: a request signature is never valid as any other RJS signature.
/// V1 statements named no audience; they are refused (no header `rjs-audience`).
pub const REQUEST_DOMAIN: &str = "RJS-REQUEST-V2";
/// Header names.
pub const H_AUDIENCE: &str = "rjs-audience";
pub const H_KEY: &str = "rjs-key";
pub const H_TIMESTAMP: &str = "rjs-timestamp";
pub const H_NONCE: &str = "rjs-nonce";
pub const H_CONTENT_SHA256: &str = "rjs-content-sha256";
pub const H_SIGNATURE: &str = "rjs-signature";
/// Longest path (with query) a request may sign.
pub const MAX_PATH: usize = 2048;

/// The authentication fields of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAuth {
    /// The web server the request is meant for: [`audience`] of its CA certificate.
    pub audience: String,
    pub key: PublicKey,
    /// Unix seconds.
    pub timestamp: u64,
    /// 32 lowercase hex digits (16 random bytes).
    pub nonce: String,
    /// SHA-256 of the body, 64 lowercase hex digits.
    pub content_sha256: String,
    /// 64-byte ed25519 signature.
    pub signature: Vec<u8>,
}

/// Why a request's authentication fields are unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestAuthError {
    #[error("missing header {0}")]
    Missing(&'static str),
    #[error("malformed header {0}: {1}")]
    Malformed(&'static str, String),
    #[error("the request signature does not verify")]
    BadSignature,
}

/// The audience that names a web server: the SHA-256 (64 lowercase hex digits) of its CA
/// certificate (DER), the certificate its clients pin.
pub fn audience(ca_certificate_der: &[u8]) -> String {
    use sha2::Digest as _;
    crate::bundle::hex(&sha2::Sha256::digest(ca_certificate_der))
}

impl RequestAuth {
    /// The exact bytes that are signed.
    pub fn statement(
        audience: &str,
        method: &str,
        path_and_query: &str,
        timestamp: u64,
        nonce: &str,
        content_sha256: &str,
        key: &PublicKey,
    ) -> Vec<u8> {
        format!(
            "{REQUEST_DOMAIN}\n{audience}\n{method}\n{path_and_query}\n{timestamp}\n{nonce}\n{content_sha256}\n{}\n",
            key.to_base64()
        )
        .into_bytes()
    }

    /// Signs a request for the web server named by `audience`. `content_sha256` is the
    /// lowercase hex SHA-256 of the body.
    pub fn sign(
        key: &KeyPair,
        audience: &str,
        method: &str,
        path_and_query: &str,
        content_sha256: &str,
        timestamp: u64,
    ) -> Self {
        let nonce = crate::bundle::hex(&rand::random::<[u8; 16]>());
        let public = key.public();
        let signature = key
            .sign(&Self::statement(
                audience,
                method,
                path_and_query,
                timestamp,
                &nonce,
                content_sha256,
                &public,
            ))
            .to_vec();
        RequestAuth {
            audience: audience.to_owned(),
            key: public,
            timestamp,
            nonce,
            content_sha256: content_sha256.to_owned(),
            signature,
        }
    }

    /// The headers to send, as (name, value) pairs.
    pub fn headers(&self) -> [(&'static str, String); 6] {
        [
            (H_AUDIENCE, self.audience.clone()),
            (H_KEY, self.key.to_base64()),
            (H_TIMESTAMP, self.timestamp.to_string()),
            (H_NONCE, self.nonce.clone()),
            (H_CONTENT_SHA256, self.content_sha256.clone()),
            (H_SIGNATURE, B64.encode(&self.signature)),
        ]
    }

    /// Parses the headers with `get(name)`; every field is bounded and validated.
    pub fn from_headers<'a>(
        get: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Self, RequestAuthError> {
        let field = |name: &'static str| {
            let v = get(name).ok_or(RequestAuthError::Missing(name))?;
            if v.len() > 256 {
                return Err(RequestAuthError::Malformed(name, "too long".into()));
            }
            Ok(v.trim())
        };
        let audience = field(H_AUDIENCE)?;
        if !is_hex(audience, 64) {
            return Err(RequestAuthError::Malformed(
                H_AUDIENCE,
                "must be 64 lowercase hex digits".into(),
            ));
        }
        let key = PublicKey::parse(field(H_KEY)?)
            .map_err(|e| RequestAuthError::Malformed(H_KEY, e.to_string()))?
            .0;
        let timestamp = field(H_TIMESTAMP)?.parse::<u64>().map_err(|_| {
            RequestAuthError::Malformed(H_TIMESTAMP, "not a number of seconds".into())
        })?;
        let nonce = field(H_NONCE)?;
        if !is_hex(nonce, 32) {
            return Err(RequestAuthError::Malformed(
                H_NONCE,
                "must be 32 lowercase hex digits".into(),
            ));
        }
        let content_sha256 = field(H_CONTENT_SHA256)?;
        if !is_hex(content_sha256, 64) {
            return Err(RequestAuthError::Malformed(
                H_CONTENT_SHA256,
                "must be 64 lowercase hex digits".into(),
            ));
        }
        let signature = B64
            .decode(field(H_SIGNATURE)?)
            .map_err(|e| RequestAuthError::Malformed(H_SIGNATURE, e.to_string()))?;
        if signature.len() != 64 {
            return Err(RequestAuthError::Malformed(
                H_SIGNATURE,
                "must be 64 bytes".into(),
            ));
        }
        Ok(RequestAuth {
            audience: audience.to_owned(),
            key,
            timestamp,
            nonce: nonce.to_owned(),
            content_sha256: content_sha256.to_owned(),
            signature,
        })
    }

    /// Checks the signature for this method and path. (The caller checks the audience, the
    /// timestamp window, that the key is an author, the body's hash and the nonce's
    /// freshness.)
    pub fn verify(&self, method: &str, path_and_query: &str) -> Result<(), RequestAuthError> {
        if path_and_query.len() > MAX_PATH {
            return Err(RequestAuthError::Malformed("path", "too long".into()));
        }
        let statement = Self::statement(
            &self.audience,
            method,
            path_and_query,
            self.timestamp,
            &self.nonce,
            &self.content_sha256,
            &self.key,
        );
        if self.key.verify(&statement, &self.signature) {
            Ok(())
        } else {
            Err(RequestAuthError::BadSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let key = KeyPair::from_secret([5; 32]);
        let body = crate::bundle::hex(&[0u8; 32]);
        let aud = audience(b"a CA certificate");
        let auth = RequestAuth::sign(&key, &aud, "POST", "/api/v1/bundles", &body, 1_800_000_000);
        let headers = auth.headers();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.as_str())
        };
        let parsed = RequestAuth::from_headers(get).unwrap();
        assert_eq!(parsed, auth);
        parsed.verify("POST", "/api/v1/bundles").unwrap();
        assert_eq!(
            parsed.verify("GET", "/api/v1/bundles"),
            Err(RequestAuthError::BadSignature)
        );
        assert_eq!(
            parsed.verify("POST", "/api/v1/bundles?resubmit=true"),
            Err(RequestAuthError::BadSignature)
        );
        // Another audience: the statement differs, so the signature does not verify.
        let mut other = parsed.clone();
        other.audience = audience(b"another CA certificate");
        assert_eq!(
            other.verify("POST", "/api/v1/bundles"),
            Err(RequestAuthError::BadSignature)
        );
        let mut other = parsed.clone();
        other.timestamp += 1;
        assert_eq!(
            other.verify("POST", "/api/v1/bundles"),
            Err(RequestAuthError::BadSignature)
        );
        assert!(matches!(
            RequestAuth::from_headers(|_| None),
            Err(RequestAuthError::Missing(_))
        ));
    }
}
