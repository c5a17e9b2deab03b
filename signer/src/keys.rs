//! Author keys: ed25519 key pairs, their files and their fingerprints.
//!
//! * Private key file (`NAME.key`): PKCS#8 PEM, written with mode 0600, never overwritten
//!   unless asked; loading refuses a file that group or others may read.
//! * Public key file (`NAME.pub`): one line, `rjs-ed25519 <base64 key> <name>`, safe to share.
//!   [`PublicKey::parse`] also accepts the bare base64 key and an SPKI PEM block.
//! * Fingerprint: the first 16 bytes of SHA-256 of the raw 32-byte key, as 8 dash-separated
//!   groups of 4 lowercase hex digits (`7f3a-91c2-…`), short enough to compare by eye.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::fsutil::{self, FileError};

/// The tag that starts a public key line.
pub const PUBLIC_KEY_TAG: &str = "rjs-ed25519";
/// Longest key label accepted (`keygen --name`).
pub const MAX_KEY_NAME: usize = 64;

/// Errors about keys and key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "invalid key name {0:?}: use 1-{MAX_KEY_NAME} characters of A-Z a-z 0-9 . _ @ -, starting with a letter or digit"
    )]
    BadName(String),
    #[error("{path} already exists (use --force to overwrite it)")]
    Exists { path: PathBuf },
    #[error("private key {path} is readable by others (mode {mode:04o}); run `chmod 600 {path}`")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path} is not an ed25519 private key in PKCS#8 PEM form: {reason}")]
    BadPrivateKey { path: PathBuf, reason: String },
    #[error("not an ed25519 public key: {0}")]
    BadPublicKey(String),
    #[error(transparent)]
    File(#[from] FileError),
}

/// An ed25519 public key (an author's identity).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// From the raw 32 bytes; refuses bytes that are not a valid curve point and weak keys.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::BadPublicKey(format!("{} bytes, expected 32", bytes.len())))?;
        let key = VerifyingKey::from_bytes(&arr)
            .map_err(|e| KeyError::BadPublicKey(format!("not a curve point ({e})")))?;
        if key.is_weak() {
            return Err(KeyError::BadPublicKey("weak (small-order) key".into()));
        }
        Ok(PublicKey(key))
    }

    /// Parses a public key given as a `rjs-ed25519 <base64> [name]` line, a bare base64 key,
    /// or an SPKI PEM block. Returns the key and the name written after it, if any.
    pub fn parse(text: &str) -> Result<(Self, Option<String>), KeyError> {
        let text = text.trim();
        if text.starts_with("-----BEGIN") {
            let key = VerifyingKey::from_public_key_pem(text)
                .map_err(|e| KeyError::BadPublicKey(format!("bad PEM ({e})")))?;
            return Ok((PublicKey::from_bytes(key.as_bytes())?, None));
        }
        let mut parts = text.split_whitespace();
        let first = parts.next().unwrap_or_default();
        let (b64, name) = if first == PUBLIC_KEY_TAG {
            let b64 = parts.next().ok_or_else(|| {
                KeyError::BadPublicKey("nothing after the rjs-ed25519 tag".into())
            })?;
            (b64, parts.next().map(str::to_owned))
        } else {
            (first, None)
        };
        if parts.next().is_some() {
            return Err(KeyError::BadPublicKey(
                "unexpected text after the key".into(),
            ));
        }
        let raw = B64
            .decode(b64)
            .map_err(|e| KeyError::BadPublicKey(format!("bad base64 ({e})")))?;
        let key = PublicKey::from_bytes(&raw)?;
        if let Some(n) = &name {
            validate_key_name(n)?;
        }
        Ok((key, name))
    }

    /// Reads a public key from a file, or from the argument itself when it is not a file
    /// (so `--trust` and `--key` take either).
    pub fn load_or_parse(arg: &str) -> Result<(Self, Option<String>), KeyError> {
        let path = Path::new(arg);
        if path.is_file() {
            let text = fsutil::read_bounded(path, 16 * 1024)?;
            let text = String::from_utf8(text)
                .map_err(|_| KeyError::BadPublicKey(format!("{arg} is not text")))?;
            return PublicKey::parse(&text);
        }
        PublicKey::parse(arg)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// Standard base64 of the raw key.
    pub fn to_base64(&self) -> String {
        B64.encode(self.as_bytes())
    }

    /// The one-line public key file form.
    pub fn to_line(&self, name: &str) -> String {
        format!("{PUBLIC_KEY_TAG} {} {name}\n", self.to_base64())
    }

    pub fn fingerprint(&self) -> Fingerprint {
        let digest = Sha256::digest(self.as_bytes());
        let mut fp = [0u8; 16];
        fp.copy_from_slice(&digest[..16]);
        Fingerprint(fp)
    }

    /// Strict ed25519 verification (rejects malleable and small-order signatures).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = Signature::from_slice(signature) else {
            return false;
        };
        self.0.verify_strict(message, &sig).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

/// A key fingerprint, displayed as `xxxx-xxxx-xxxx-xxxx-xxxx-xxxx-xxxx-xxxx`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 16]);

impl Fingerprint {
    /// Parses the displayed form (dashes optional, case-insensitive).
    pub fn parse(text: &str) -> Option<Self> {
        let hex: String = text.chars().filter(|c| *c != '-' && *c != ':').collect();
        if hex.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, pair) in self.0.chunks(2).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            write!(f, "{:02x}{:02x}", pair[0], pair[1])?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An author's private key. The secret is zeroed when dropped.
pub struct KeyPair {
    signing: SigningKey,
}

impl KeyPair {
    pub fn generate() -> Self {
        KeyPair {
            signing: SigningKey::generate(&mut rand::rng()),
        }
    }

    /// Deterministic key from 32 secret bytes (tests and key derivation).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        KeyPair {
            signing: SigningKey::from_bytes(&secret),
        }
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// Loads a PKCS#8 PEM private key, refusing a file that group or others can read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = fs::metadata(path).map_err(|e| FileError::io("reading", path, e))?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::TooOpen {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        let bytes = fsutil::read_bounded(path, 16 * 1024)?;
        let text = String::from_utf8(bytes).map_err(|_| KeyError::BadPrivateKey {
            path: path.to_owned(),
            reason: "not text".into(),
        })?;
        let signing = SigningKey::from_pkcs8_pem(&text).map_err(|e| KeyError::BadPrivateKey {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(KeyPair { signing })
    }
}

/// Checks a key label (`keygen --name`, public key lines).
pub fn validate_key_name(name: &str) -> Result<(), KeyError> {
    let ok = crate::paths::is_label(name, MAX_KEY_NAME, &['.', '_', '@', '-']);
    if ok {
        Ok(())
    } else {
        Err(KeyError::BadName(name.to_owned()))
    }
}

/// Where [`write_key_pair`] put the files.
#[derive(Debug)]
pub struct KeyFiles {
    pub private: PathBuf,
    pub public: PathBuf,
    pub fingerprint: Fingerprint,
}

/// Writes `DIR/NAME.key` (0600 from its creation) and `DIR/NAME.pub`, each written in full
/// and synced under a temporary name before it takes its real one, so a reader never sees a
/// partial key file.
///
/// Without `force`, an existing file of either name is an error ([`KeyError::Exists`]) and
/// nothing is written or changed: both files are put in place with hard links, which the
/// kernel refuses when the name exists (a rename would replace a file created after the
/// check), the public file first; if the private one cannot be placed, the public one is
/// removed again, so a failure leaves neither. With `force`, both are atomically renamed over
/// any old files.
pub fn write_key_pair(
    key: &KeyPair,
    name: &str,
    dir: &Path,
    force: bool,
) -> Result<KeyFiles, KeyError> {
    validate_key_name(name)?;
    fsutil::create_private_dir(dir)?;
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    if !force {
        // The early, friendly check; the links below are what guarantees it.
        for p in [&private, &public] {
            if p.symlink_metadata().is_ok() {
                return Err(KeyError::Exists { path: p.clone() });
            }
        }
    }
    let pem =
        key.signing
            .to_pkcs8_pem(Default::default())
            .map_err(|e| KeyError::BadPrivateKey {
                path: private.clone(),
                reason: e.to_string(),
            })?;
    let mut staged_pub = fsutil::stage(&public, key.public().to_line(name).as_bytes(), 0o644)?;
    let mut staged_key = fsutil::stage(&private, pem.as_bytes(), 0o600)?;
    if force {
        staged_pub.replace()?;
        staged_key.replace()?;
    } else {
        staged_pub.link_new().map_err(exists_or_file)?;
        if let Err(e) = staged_key.link_new() {
            staged_pub.unlink_new();
            return Err(exists_or_file(e));
        }
        fsutil::sync_dir(dir);
    }
    Ok(KeyFiles {
        private,
        public,
        fingerprint: key.public().fingerprint(),
    })
}

/// A [`fsutil::Staged::link_new`] error: [`KeyError::Exists`] when the name was taken.
fn exists_or_file(e: FileError) -> KeyError {
    match e {
        FileError::Io { path, source, .. }
            if source.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            KeyError::Exists { path }
        }
        e => KeyError::File(e),
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair(public {})", self.public().fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_round_trips() {
        let k = KeyPair::from_secret([7; 32]).public();
        let fp = k.fingerprint();
        let shown = fp.to_string();
        assert_eq!(shown.len(), 39);
        assert_eq!(Fingerprint::parse(&shown), Some(fp));
        assert_eq!(Fingerprint::parse(&shown.to_uppercase()), Some(fp));
        assert_eq!(Fingerprint::parse("abcd"), None);
    }

    #[test]
    fn public_key_forms_parse() {
        let k = KeyPair::from_secret([9; 32]).public();
        let (p, n) = PublicKey::parse(&k.to_line("alice")).unwrap();
        assert_eq!((p, n.as_deref()), (k, Some("alice")));
        assert_eq!(PublicKey::parse(&k.to_base64()).unwrap().0, k);
        assert!(PublicKey::parse("rjs-ed25519 AAAA alice").is_err());
        assert!(PublicKey::parse("").is_err());
        assert!(
            PublicKey::from_bytes(&[0u8; 32]).is_err(),
            "identity point is weak"
        );
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn an_existing_public_or_private_file_alone_refuses_and_stays_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::from_secret([5; 32]);
        for (existing, other) in [("alice.pub", "alice.key"), ("alice.key", "alice.pub")] {
            let path = dir.path().join(existing);
            fs::write(&path, b"someone else's file\n").unwrap();
            match write_key_pair(&key, "alice", dir.path(), false) {
                Err(KeyError::Exists { path: p }) => assert_eq!(p, path),
                other => panic!("expected Exists, got {other:?}"),
            }
            assert_eq!(fs::read(&path).unwrap(), b"someone else's file\n");
            assert!(!dir.path().join(other).exists(), "{other} not written");
            assert_eq!(files_in(dir.path()), [existing], "no temporary files");
            fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn key_pair_files_are_written_once_and_replaced_only_with_force() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (KeyPair::from_secret([5; 32]), KeyPair::from_secret([6; 32]));
        let files = write_key_pair(&a, "alice", dir.path(), false).unwrap();
        assert_eq!(files_in(dir.path()), ["alice.key", "alice.pub"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&files.private).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(KeyPair::load(&files.private).unwrap().public(), a.public());
        assert!(matches!(
            write_key_pair(&b, "alice", dir.path(), false),
            Err(KeyError::Exists { .. })
        ));
        assert_eq!(KeyPair::load(&files.private).unwrap().public(), a.public());
        write_key_pair(&b, "alice", dir.path(), true).unwrap();
        assert_eq!(KeyPair::load(&files.private).unwrap().public(), b.public());
        let line = fs::read_to_string(&files.public).unwrap();
        assert_eq!(PublicKey::parse(&line).unwrap().0, b.public());
        assert_eq!(files_in(dir.path()), ["alice.key", "alice.pub"]);
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_key_name("alice@lab-1.x").is_ok());
        for bad in ["", "-x", "a b", "a/b", &"x".repeat(65)] {
            assert!(validate_key_name(bad).is_err(), "{bad}");
        }
    }
}
