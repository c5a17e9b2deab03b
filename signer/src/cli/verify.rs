//! `rjs-sign verify`: is this bundle valid, and signed by a key I trust?

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use rjs_signer::bundle::hex;
use serde_json::json;

use super::format_time;
use super::local::{self, Verdict, check};

#[derive(clap::Args, Debug)]
pub struct VerifyCommand {
    pub bundle: PathBuf,
    /// Accept only these signers (public key file, `rjs-ed25519 …` line, or base64 key).
    #[arg(long = "trust", value_name = "PUBKEY")]
    pub trust: Vec<String>,
    /// Print a JSON object instead of a line.
    #[arg(long)]
    pub json: bool,
}

impl VerifyCommand {
    /// Runs the command; `Ok` holds the exit status.
    pub fn run(&self) -> Result<u8> {
        let as_json = self.json;
        let trusted = local::load_keys(&self.trust, "trusted key")?;
        let verdict = check(&self.bundle)?;
        let mut out = std::io::stdout().lock();
        let (b, bytes) = match verdict {
            Verdict::Valid(b, bytes) => (b, bytes),
            Verdict::Refused(e) => {
                return local::refused(&mut out, as_json, e.rule(), e.entry(), &rjs_cmd::chain(&e));
            }
        };
        let s = b.signer();
        if !trusted.is_empty() && !trusted.contains(&s.public_key) {
            let msg = format!(
                "signed by {} ({}), which is not one of the {} trusted key(s)",
                s.name,
                s.fingerprint,
                trusted.len()
            );
            return local::refused(&mut out, as_json, "untrusted-signer", None, &msg);
        }
        if as_json {
            writeln!(
                out,
                "{}",
                json!({
                    "valid": true,
                    "bundle_id": hex(&rjs_signer::bundle_id(&bytes)),
                    "name": b.manifest().name,
                    "signer": local::signer_json(s),
                })
            )?;
        } else {
            writeln!(
                out,
                "OK {}: signed by {} ({}) at {}",
                b.manifest().name,
                s.name,
                s.fingerprint,
                format_time(s.signed_at)
            )?;
        }
        Ok(0)
    }
}
