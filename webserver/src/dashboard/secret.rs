//! One-time login tokens and session ids: 256 random bits, carried as 43 characters of
//! unpadded URL-safe base64, stored only as their SHA-256 (hex).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// Characters of an encoded secret.
pub const ENCODED_LEN: usize = 43;

/// A login token or session id.
pub struct Secret(String);

impl Secret {
    /// A fresh secret from the operating system's generator.
    pub fn new() -> Secret {
        let bytes: [u8; 32] = rand::random();
        Secret(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// A secret as a client sent it; None unless it has exactly the form [`new`](Self::new)
    /// makes.
    pub fn parse(s: &str) -> Option<Secret> {
        if s.len() != ENCODED_LEN {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(s).ok()?;
        (bytes.len() == 32).then(|| Secret(s.to_owned()))
    }

    /// What the store keeps: SHA-256 of the encoded secret, hex.
    pub fn hash(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Secret {
    fn default() -> Self {
        Secret::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_parse_back_and_hash_stably() {
        let a = Secret::new();
        let b = Secret::new();
        assert_ne!(a.as_str(), b.as_str());
        assert_eq!(a.as_str().len(), ENCODED_LEN);
        let again = Secret::parse(a.as_str()).unwrap();
        assert_eq!(again.hash(), a.hash());
        assert_eq!(a.hash().len(), 64);
        assert!(Secret::parse("short").is_none());
        assert!(Secret::parse(&"!".repeat(ENCODED_LEN)).is_none());
        assert!(Secret::parse(&format!("{}=", &a.as_str()[..42])).is_none());
    }
}
