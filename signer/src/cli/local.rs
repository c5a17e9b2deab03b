//! Reading and verifying a bundle file on this computer.

use std::path::Path;

use anyhow::{Context, Result};

use rjs_signer::{VerifyError, VerifyLimits, fsutil};

/// Outcome of verifying: the bundle and its bytes, or the rule it broke.
pub enum Verdict {
    Valid(Box<rjs_signer::VerifiedBundle>, Vec<u8>),
    Refused(VerifyError),
}

/// Reads `path` (bounded by the verifier's size limit) and verifies it.
pub fn check(path: &Path) -> Result<Verdict> {
    let limits = VerifyLimits::default();
    let bytes = match fsutil::read_bounded(path, limits.max_bundle_bytes) {
        Ok(b) => b,
        Err(fsutil::FileError::TooLarge { limit, .. }) => {
            let size = std::fs::metadata(path).map_or(limit + 1, |m| m.len());
            return Ok(Verdict::Refused(VerifyError::BundleTooLarge {
                size,
                limit,
            }));
        }
        Err(e) => return Err(e).with_context(|| format!("reading the bundle {}", path.display())),
    };
    match rjs_signer::verify_bytes(&bytes, &limits) {
        Ok(b) => Ok(Verdict::Valid(Box::new(b), bytes)),
        Err(e) => Ok(Verdict::Refused(e)),
    }
}
