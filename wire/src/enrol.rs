//! Enrolment of compute nodes with a lookup server: the one-time join token printed by
//! `rjs-lookup token` and the messages of the enrolment exchange. See
//! `docs/lookup-enrolment.md`.
//!
//! A token is `rjs1-` followed by the unpadded base64url encoding of a small JSON object:
//! `{"a": "HOST:PORT", "f": "<cluster CA certificate SHA-256, hex>", "s": "<secret, 32
//! bytes, base64url>"}`.
//!
//! The exchange runs over TLS to the lookup's enrolment endpoint, as length-prefixed JSON
//! frames ([`crate::node::write_msg`]/[`crate::node::read_msg`]): the node sends one
//! [`EnrolRequest`], the lookup answers one [`EnrolResponse`] and closes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// Prefix of every join token (and its format version).
pub const TOKEN_PREFIX: &str = "rjs1-";
/// Size of a token's secret, bytes.
pub const SECRET_LEN: usize = 32;
/// Longest token accepted.
pub const MAX_TOKEN: usize = 2048;
/// Most host names a node may ask for in its certificate.
pub const MAX_HOSTS: usize = 16;

/// A decoded join token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// The enrolment endpoint, `HOST:PORT`.
    #[serde(rename = "a")]
    pub addr: String,
    /// SHA-256 (lowercase hex) of the cluster CA certificate (DER).
    #[serde(rename = "f")]
    pub ca_sha256: String,
    /// The one-time secret.
    #[serde(rename = "s", with = "b64")]
    pub secret: [u8; SECRET_LEN],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("addr", &self.addr)
            .field("ca_sha256", &self.ca_sha256)
            .finish_non_exhaustive()
    }
}

/// Why a token does not parse.
#[derive(Debug, thiserror::Error)]
#[error("not a valid join token: {0}")]
pub struct BadToken(pub String);

impl Token {
    /// The token's text.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    /// Parses a token's text (surrounding white space ignored).
    pub fn parse(text: &str) -> Result<Token, BadToken> {
        let text = text.trim();
        if text.len() > MAX_TOKEN {
            return Err(BadToken("too long".into()));
        }
        let body = text
            .strip_prefix(TOKEN_PREFIX)
            .ok_or_else(|| BadToken(format!("it does not start with {TOKEN_PREFIX}")))?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| BadToken(e.to_string()))?;
        let token: Token = serde_json::from_slice(&json).map_err(|e| BadToken(e.to_string()))?;
        if token.ca_sha256.len() != 64
            || !token
                .ca_sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(BadToken("bad CA fingerprint".into()));
        }
        if token.addr.is_empty() || token.addr.len() > 300 {
            return Err(BadToken("bad address".into()));
        }
        Ok(token)
    }
}

mod b64 {
    use super::{SECRET_LEN, URL_SAFE_NO_PAD};
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &[u8; SECRET_LEN], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; SECRET_LEN], D::Error> {
        let s = String::deserialize(d)?;
        let v = URL_SAFE_NO_PAD.decode(s).map_err(D::Error::custom)?;
        v.try_into()
            .map_err(|_| D::Error::custom("the secret must be 32 bytes"))
    }
}

/// What a joining node sends.
#[derive(Clone, Serialize, Deserialize)]
pub struct EnrolRequest {
    /// The token's secret.
    #[serde(with = "b64")]
    pub secret: [u8; SECRET_LEN],
    /// The node's ed25519 public key (standard base64): signs its announcements and answers.
    pub node_key: String,
    /// A PKCS#10 request (PEM) for the node's TLS key, generated on the node.
    pub csr_pem: String,
    /// The node id asked for; the lookup assigns `node-<n>` when absent.
    #[serde(default)]
    pub node_id: Option<String>,
    /// DNS names and IP addresses to put in the node certificate.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// What the lookup answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum EnrolResponse {
    /// Enrolled: the node's id, its certificate (PEM) and the cluster CA certificate (PEM).
    Enrolled {
        node_id: String,
        cert_pem: String,
        ca_pem: String,
    },
    /// Refused, with a reason fit to show the node's owner.
    Refused { reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip_and_garbage() {
        let t = Token {
            addr: "127.0.0.1:7450".into(),
            ca_sha256: "ab".repeat(32),
            secret: [7; SECRET_LEN],
        };
        let text = t.encode();
        assert!(text.starts_with("rjs1-"));
        assert_eq!(Token::parse(&format!(" {text}\n")).unwrap(), t);
        assert!(Token::parse("rjs1-!!").is_err());
        assert!(Token::parse(&text[1..]).is_err());
        let mut bad = t.clone();
        bad.ca_sha256 = "zz".into();
        assert!(Token::parse(&bad.encode()).is_err());
        assert!(!format!("{t:?}").contains("secret"));
    }
}
