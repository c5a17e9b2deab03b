//! Reading and verifying a bundle or answer file on this computer, and reporting a refusal.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use rjs_signer::{VerifyError, VerifyLimits, fsutil};

/// Exit status of a file that was read and refused (other failures exit 2).
pub const EXIT_REFUSED: u8 = 1;

/// Outcome of verifying: the bundle and its bytes, or the rule it broke.
pub enum Verdict {
    Valid(Box<rjs_signer::VerifiedBundle>, Vec<u8>),
    Refused(VerifyError),
}

/// A file read up to a size limit.
pub enum Bounded {
    Bytes(Vec<u8>),
    /// Larger than the limit (its size as the file system says); not read.
    TooLarge {
        size: u64,
        limit: u64,
    },
}

/// Reads `path` unless it is larger than `limit`; `what` names it in errors ("the bundle").
pub fn read_bounded(path: &Path, limit: u64, what: &str) -> Result<Bounded> {
    match fsutil::read_bounded(path, limit) {
        Ok(b) => Ok(Bounded::Bytes(b)),
        Err(fsutil::FileError::TooLarge { limit, .. }) => {
            let size = std::fs::metadata(path).map_or(limit + 1, |m| m.len());
            Ok(Bounded::TooLarge { size, limit })
        }
        Err(e) => Err(e).with_context(|| format!("reading {what} {}", path.display())),
    }
}

/// Reads `path` (bounded by the verifier's size limit) and verifies it.
pub fn check(path: &Path) -> Result<Verdict> {
    let limits = VerifyLimits::default();
    let bytes = match read_bounded(path, limits.max_bundle_bytes, "the bundle")? {
        Bounded::Bytes(b) => b,
        Bounded::TooLarge { size, limit } => {
            return Ok(Verdict::Refused(VerifyError::BundleTooLarge {
                size,
                limit,
            }));
        }
    };
    match rjs_signer::verify_bytes(&bytes, &limits) {
        Ok(b) => Ok(Verdict::Valid(Box::new(b), bytes)),
        Err(e) => Ok(Verdict::Refused(e)),
    }
}

/// Prints a refusal, `REFUSED <rule> (<entry>): <message>` (`REFUSED <rule>: <message>` when
/// the rule is about no one entry) or a JSON object with `valid: false`, and returns
/// [`EXIT_REFUSED`].
pub fn refused(
    out: &mut impl Write,
    as_json: bool,
    rule: &str,
    entry: Option<&str>,
    message: &str,
) -> Result<u8> {
    if as_json {
        writeln!(
            out,
            "{}",
            json!({"valid": false, "rule": rule, "entry": entry, "error": message})
        )?;
    } else {
        writeln!(out, "{}", refusal_line(rule, entry, message))?;
    }
    Ok(EXIT_REFUSED)
}

/// The text form of a refusal: `REFUSED <rule> (<entry>): <message>`, or without the
/// parenthesis when there is no entry. A valid entry name is shown as it is; any other
/// (a name the verifier refused: it may hold spaces, brackets or control characters) is shown
/// quoted and escaped, so the line stays one line and the name unambiguous.
pub fn refusal_line(rule: &str, entry: Option<&str>, message: &str) -> String {
    match entry {
        Some(name) if rjs_signer::paths::check_entry_name(name).is_ok() => {
            format!("REFUSED {rule} ({name}): {message}")
        }
        Some(name) => format!("REFUSED {rule} ({name:?}): {message}"),
        None => format!("REFUSED {rule}: {message}"),
    }
}

/// Parses public keys given on the command line (file, `rjs-ed25519 …` line or base64 key);
/// `what` names them in errors ("trusted key").
pub fn load_keys(specs: &[String], what: &str) -> Result<Vec<rjs_signer::PublicKey>> {
    specs
        .iter()
        .map(|s| {
            rjs_signer::PublicKey::load_or_parse(s)
                .map(|(key, _)| key)
                .with_context(|| format!("reading {what} {s:?}"))
        })
        .collect()
}

/// A bundle's signer as JSON (`verify --json`, `inspect --json`).
pub fn signer_json(s: &rjs_signer::Signer) -> serde_json::Value {
    json!({"name": s.name, "fingerprint": s.fingerprint.to_string(),
           "public_key": s.public_key.to_base64(), "signed_at": s.signed_at})
}
