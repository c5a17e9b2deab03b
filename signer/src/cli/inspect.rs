//! `rjs-sign inspect`: a bundle's manifest, entries, signer and verdict; for a refused
//! bundle, what it claims to hold (unverified, names escaped).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use rjs_signer::bundle::{self, SignatureDoc, hex};
use rjs_signer::{VerifiedBundle, VerifyError, VerifyLimits, fsutil, keys, zipread};
use serde_json::json;

use super::format_time;
use super::local::{self, EXIT_REFUSED, Verdict, check};

#[derive(clap::Args, Debug)]
pub struct InspectCommand {
    pub bundle: PathBuf,
    #[arg(long)]
    pub json: bool,
}

impl InspectCommand {
    /// Runs the command; `Ok` holds the exit status.
    pub fn run(&self) -> Result<u8> {
        let mut out = std::io::stdout().lock();
        match check(&self.bundle)? {
            Verdict::Valid(b, bytes) => valid(&mut out, &self.bundle, &b, &bytes, self.json),
            Verdict::Refused(e) => refused(&mut out, &self.bundle, &e, self.json),
        }
    }
}

fn valid(
    out: &mut impl Write,
    path: &Path,
    b: &VerifiedBundle,
    bytes: &[u8],
    as_json: bool,
) -> Result<u8> {
    let s = b.signer();
    let id = hex(&rjs_signer::bundle_id(bytes));
    if as_json {
        let entries: Vec<_> = b
            .entries()
            .iter()
            .map(|e| {
                json!({"name": e.name, "method": e.method.as_str(), "size": e.size,
                       "stored_size": e.stored_size, "sha256": hex(&e.stored_sha256)})
            })
            .collect();
        let doc = json!({
            "valid": true,
            "bundle_id": id,
            "size": bytes.len(),
            "manifest": b.manifest(),
            "entries": entries,
            "signer": local::signer_json(s),
            "module_sha256": hex(b.module_sha256()),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(0);
    }
    writeln!(out, "bundle    {} ({} bytes)", path.display(), bytes.len())?;
    writeln!(out, "id        sha256:{id}")?;
    writeln!(out, "verdict   VALID")?;
    writeln!(
        out,
        "signer    {} {} (key {})",
        s.name,
        s.fingerprint,
        s.public_key.to_base64()
    )?;
    writeln!(out, "signed at {}", format_time(s.signed_at))?;
    writeln!(out, "manifest")?;
    for line in serde_json::to_string_pretty(b.manifest())?.lines() {
        writeln!(out, "  {line}")?;
    }
    writeln!(out, "entries")?;
    for e in b.entries() {
        writeln!(
            out,
            "  {:<32} {:>10} B  {:<7} {:>10} B stored  sha256:{}",
            e.name,
            e.size,
            e.method.as_str(),
            e.stored_size,
            hex(&e.stored_sha256)
        )?;
    }
    Ok(0)
}

fn refused(out: &mut impl Write, path: &Path, e: &VerifyError, as_json: bool) -> Result<u8> {
    let bytes =
        fsutil::read_bounded(path, VerifyLimits::default().max_bundle_bytes).unwrap_or_default();
    let listing = unverified_listing(&bytes);
    let claimed_signer = signature_claim(&bytes);
    let why = rjs_cmd::chain(e);
    if as_json {
        let doc = json!({
            "valid": false, "rule": e.rule(), "entry": e.entry(), "error": why,
            "unverified_entries": listing, "claimed_signer": claimed_signer,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(EXIT_REFUSED);
    }
    writeln!(out, "bundle    {} ({} bytes)", path.display(), bytes.len())?;
    writeln!(
        out,
        "verdict   {}",
        local::refusal_line(e.rule(), e.entry(), &why)
    )?;
    if let Some(c) = claimed_signer {
        writeln!(out, "claims    signed by {} (unverified)", c)?;
    }
    writeln!(out, "entries (unverified)")?;
    for l in &listing {
        writeln!(
            out,
            "  {:?} {} B (method {})",
            l["name"].as_str().unwrap_or(""),
            l["size"],
            l["method"]
        )?;
    }
    Ok(EXIT_REFUSED)
}

/// What the archive's central directory claims to hold, unverified.
fn unverified_listing(bytes: &[u8]) -> Vec<serde_json::Value> {
    zipread::read_central_directory(bytes, VerifyLimits::default().max_entries)
        .map(|cd| {
            cd.iter()
                .map(|c| {
                    json!({"name": String::from_utf8_lossy(c.name), "method": c.method,
                           "size": c.size, "stored_size": c.stored_size})
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The signer a refused bundle claims, for display only.
fn signature_claim(bytes: &[u8]) -> Option<String> {
    let cd = zipread::read_central_directory(bytes, VerifyLimits::default().max_entries).ok()?;
    let last = cd.last()?;
    if last.name != rjs_signer::paths::SIGNATURE.as_bytes()
        || last.method != 0
        || last.size > bundle::MAX_SIGNATURE_ENTRY
    {
        return None;
    }
    let start = usize::try_from(last.local_offset).ok()? + 30 + last.name.len();
    let data = bytes.get(start..start.checked_add(usize::try_from(last.size).ok()?)?)?;
    let doc: SignatureDoc = serde_json::from_slice(data).ok()?;
    if keys::validate_key_name(&doc.signer_name).is_err() {
        return None;
    }
    Some(format!(
        "{} {}",
        doc.signer_name,
        doc.fingerprint.escape_debug()
    ))
}
