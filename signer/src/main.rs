//! `rjs-sign`: the job author's command line. A thin layer over the `rjs_signer` library;
//! the network commands live in [`cli`].

mod cli;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use cli::local::{self, EXIT_REFUSED, Verdict, check};
use rjs_signer::bundle::{self, SignatureDoc, hex};
use rjs_signer::keys::{self, KeyPair};
use rjs_signer::{VerifyLimits, error_chain, fsutil, zipread};
use serde_json::json;

/// Exit status of a failure other than a refusal (a refused file exits 1).
const EXIT_ERROR: u8 = 2;

#[derive(Parser)]
#[command(
    name = "rjs-sign",
    version,
    about = "Sign, verify and inspect RJS job bundles; upload them and fetch their answers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate an ed25519 key pair: NAME.key (secret, mode 0600) and NAME.pub (shareable).
    Keygen {
        /// Key name (A-Z a-z 0-9 . _ @ -), also recorded as the signer name in bundles.
        #[arg(long)]
        name: String,
        /// Folder for the key files [default: $RJS_HOME/keys or ~/.config/rjs/keys].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Overwrite existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Pack JOB_DIR (its manifest.json and the files it names) into a signed bundle.
    Pack {
        job_dir: PathBuf,
        /// Private key file (NAME.key).
        #[arg(long)]
        key: PathBuf,
        /// Output bundle file (written atomically).
        #[arg(short, long)]
        out: PathBuf,
        /// Signer name recorded in the bundle [default: the key file's name].
        #[arg(long)]
        signer_name: Option<String>,
    },
    /// Verify a bundle; exit 0 if valid (and signed by a --trust key, if given), 1 if refused.
    Verify {
        bundle: PathBuf,
        /// Accept only these signers (public key file, `rjs-ed25519 …` line, or base64 key).
        #[arg(long = "trust", value_name = "PUBKEY")]
        trust: Vec<String>,
        /// Print a JSON object instead of a line.
        #[arg(long)]
        json: bool,
    },
    /// Verify an answer archive from a compute node; exit 0 if valid (and signed by a --node
    /// key, if given), 1 if refused.
    VerifyAnswer(cli::verify_answer::Args),
    /// Show a bundle's manifest, entries, signer and verdict.
    Inspect {
        bundle: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Verify a bundle here, then upload it to the web server (which queues one job per task).
    Upload(cli::upload::Args),
    /// Show your jobs on the web server: state, attempts, outcome, node.
    Status(cli::status::Args),
    /// Download the answers of your finished jobs (optionally waiting for the rest).
    Answers(cli::answers::Args),
    /// Check the settings: who the web server takes you for.
    Whoami(cli::WhoamiArgs),
    /// Show or change the settings file (server, ca, key) the network commands read.
    Config(cli::ConfigArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // Not `{e:#}`: anyhow prints every cause in full, and an error that displays its
            // source (`"{0}"`, `"manifest.json is not valid: {0}"`) would be said 2-3 times.
            let err: &(dyn std::error::Error + 'static) = e.as_ref();
            eprintln!("rjs-sign: error: {}", error_chain(err));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Keygen { name, dir, force } => keygen(&name, dir, force),
        Command::Pack {
            job_dir,
            key,
            out,
            signer_name,
        } => pack(&job_dir, &key, &out, signer_name),
        Command::Verify {
            bundle,
            trust,
            json,
        } => verify(&bundle, &trust, json),
        Command::VerifyAnswer(args) => cli::verify_answer::run(&args),
        Command::Inspect { bundle, json } => inspect(&bundle, json),
        Command::Upload(args) => cli::upload::run(&args),
        Command::Status(args) => cli::status::run(&args),
        Command::Answers(args) => cli::answers::run(&args),
        Command::Whoami(args) => cli::whoami(&args),
        Command::Config(args) => cli::config(&args),
    }
}

fn default_key_dir() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("RJS_HOME") {
        return Ok(PathBuf::from(home).join("keys"));
    }
    if let Some(cfg) = std::env::var_os("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(cfg).join("rjs").join("keys"));
    }
    let home = std::env::var_os("HOME").context("neither --dir, RJS_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".config").join("rjs").join("keys"))
}

fn keygen(name: &str, dir: Option<PathBuf>, force: bool) -> Result<u8> {
    let dir = match dir {
        Some(d) => d,
        None => default_key_dir()?,
    };
    let key = KeyPair::generate();
    let files = keys::write_key_pair(&key, name, &dir, force)
        .with_context(|| format!("writing the key pair {name:?} to {}", dir.display()))?;
    println!(
        "private key: {} (secret: mode 0600, never share it)",
        files.private.display()
    );
    println!(
        "public key:  {} (give this to web server and PC owners)",
        files.public.display()
    );
    println!("fingerprint: {}", files.fingerprint);
    Ok(0)
}

fn pack(job_dir: &Path, key_path: &Path, out: &Path, signer_name: Option<String>) -> Result<u8> {
    let key = KeyPair::load(key_path)
        .with_context(|| format!("loading the signing key {}", key_path.display()))?;
    let signer_name = match signer_name {
        Some(n) => n,
        None => key_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| keys::validate_key_name(s).is_ok())
            .unwrap_or_else(|| "author".to_owned()),
    };
    let (bytes, manifest) =
        rjs_signer::pack_dir(job_dir, &key, &signer_name, rjs_signer::unix_now())
            .with_context(|| format!("packing {}", job_dir.display()))?;
    fsutil::write_atomic(out, &bytes, 0o644)
        .with_context(|| format!("writing the bundle {}", out.display()))?;
    println!(
        "packed {} ({} task{}) signed by {} {}: {} ({} bytes, id sha256:{})",
        manifest.name,
        manifest.tasks,
        if manifest.tasks == 1 { "" } else { "s" },
        signer_name,
        key.public().fingerprint(),
        out.display(),
        bytes.len(),
        hex(&rjs_signer::bundle_id(&bytes)),
    );
    Ok(0)
}

fn format_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

fn verify(path: &Path, trust: &[String], as_json: bool) -> Result<u8> {
    let trusted = local::load_keys(trust, "trusted key")?;
    let verdict = check(path)?;
    let mut out = std::io::stdout().lock();
    match verdict {
        Verdict::Valid(b, bytes) => {
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
                        "signer": {"name": s.name, "fingerprint": s.fingerprint.to_string(),
                                   "public_key": s.public_key.to_base64(), "signed_at": s.signed_at},
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
        Verdict::Refused(e) => {
            local::refused(&mut out, as_json, e.rule(), e.entry(), &error_chain(&e))
        }
    }
}

fn inspect(path: &Path, as_json: bool) -> Result<u8> {
    let verdict = check(path)?;
    let mut out = std::io::stdout().lock();
    match verdict {
        Verdict::Valid(b, bytes) => {
            let s = b.signer();
            let entries: Vec<_> = b
                .entries()
                .iter()
                .map(|e| {
                    json!({"name": e.name, "method": e.method.as_str(), "size": e.size,
                           "stored_size": e.stored_size, "sha256": hex(&e.stored_sha256)})
                })
                .collect();
            if as_json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "valid": true,
                        "bundle_id": hex(&rjs_signer::bundle_id(&bytes)),
                        "size": bytes.len(),
                        "manifest": b.manifest(),
                        "entries": entries,
                        "signer": {"name": s.name, "fingerprint": s.fingerprint.to_string(),
                                   "public_key": s.public_key.to_base64(), "signed_at": s.signed_at},
                        "module_sha256": hex(b.module_sha256()),
                    }))?
                )?;
                return Ok(0);
            }
            let m = b.manifest();
            writeln!(out, "bundle    {} ({} bytes)", path.display(), bytes.len())?;
            writeln!(
                out,
                "id        sha256:{}",
                hex(&rjs_signer::bundle_id(&bytes))
            )?;
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
            for line in serde_json::to_string_pretty(m)?.lines() {
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
        Verdict::Refused(e) => {
            // Show what the archive claims to hold, unverified, with names escaped.
            let bytes = fsutil::read_bounded(path, VerifyLimits::default().max_bundle_bytes)
                .unwrap_or_default();
            let listing: Vec<_> =
                zipread::read_central_directory(&bytes, VerifyLimits::default().max_entries)
                    .map(|cd| {
                        cd.iter()
                            .map(|c| {
                                json!({"name": String::from_utf8_lossy(c.name), "method": c.method,
                                   "size": c.size, "stored_size": c.stored_size})
                            })
                            .collect()
                    })
                    .unwrap_or_default();
            let claimed_signer = signature_claim(&bytes);
            if as_json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "valid": false, "rule": e.rule(), "entry": e.entry(), "error": error_chain(&e),
                        "unverified_entries": listing, "claimed_signer": claimed_signer,
                    }))?
                )?;
            } else {
                writeln!(out, "bundle    {} ({} bytes)", path.display(), bytes.len())?;
                writeln!(
                    out,
                    "verdict   {}",
                    local::refusal_line(e.rule(), e.entry(), &error_chain(&e))
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
            }
            Ok(EXIT_REFUSED)
        }
    }
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
