//! # rjs-signer
//!
//! The security-critical core of the RJS grid: the signed job bundle.
//!
//! * [`keys`]: ed25519 author keys, their files (private key 0600) and fingerprints.
//! * [`manifest`]: the bundle's `manifest.json` and its bounds.
//! * [`bundle`]: building ([`BundleBuilder`], [`pack_dir`]) and verifying
//!   ([`verify_bytes`], [`verify_file`]) bundles under explicit [`VerifyLimits`]. Only a
//!   successful verification yields a [`VerifiedBundle`], the one way to get at a bundle's
//!   manifest, module and inputs.
//! * [`zipfmt`] / [`zipread`]: the one canonical zip layout bundles use, and a strict reader
//!   of its central directory.
//! * [`fsutil`]: bounded reads and atomic writes.
//! * `client` (feature `client`): the author API client — signed HTTPS requests to a web
//!   server — used by the CLI, `rjs demo`, the grid harness and the tests.
//!
//! The format is specified in `docs/bundle-format.md`.

pub mod answer;
pub mod bundle;
#[cfg(feature = "client")]
pub mod client;
pub mod fsutil;
#[cfg(feature = "image")]
pub mod image;
pub mod keys;
pub mod manifest;
pub mod paths;
pub mod request;
pub mod wasm;
pub mod zipfmt;
pub mod zipread;

pub use bundle::{
    BundleBuilder, BundleParts, EntryInfo, PackError, SignedBundle, Signer, VerifiedBundle,
    VerifyError, VerifyFileError, VerifyLimits, bundle_id, pack_dir, verify_bytes, verify_file,
    verify_signed,
};
pub use keys::{Fingerprint, KeyPair, PublicKey};
pub use manifest::{Limits, Manifest};

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
