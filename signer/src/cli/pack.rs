//! `rjs-sign pack`: a job folder into a signed bundle.

use std::path::PathBuf;

use anyhow::{Context, Result};
use rjs_signer::bundle::hex;
use rjs_signer::fsutil;
use rjs_signer::keys::{self, KeyPair};

#[derive(clap::Args, Debug)]
pub struct PackCommand {
    pub job_dir: PathBuf,
    /// Private key file (NAME.key).
    #[arg(long)]
    pub key: PathBuf,
    /// Output bundle file (written atomically).
    #[arg(short, long)]
    pub out: PathBuf,
    /// Signer name recorded in the bundle [default: the key file's name].
    #[arg(long)]
    pub signer_name: Option<String>,
}

impl PackCommand {
    /// Runs the command; `Ok` holds the exit status.
    pub fn run(&self) -> Result<u8> {
        let key = KeyPair::load(&self.key)
            .with_context(|| format!("loading the signing key {}", self.key.display()))?;
        let signer_name = match &self.signer_name {
            Some(n) => n.clone(),
            None => self
                .key
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .filter(|s| keys::validate_key_name(s).is_ok())
                .unwrap_or_else(|| "author".to_owned()),
        };
        let (bytes, manifest) =
            rjs_signer::pack_dir(&self.job_dir, &key, &signer_name, rjs_signer::unix_now())
                .with_context(|| format!("packing {}", self.job_dir.display()))?;
        fsutil::write_atomic(&self.out, &bytes, 0o644)
            .with_context(|| format!("writing the bundle {}", self.out.display()))?;
        println!(
            "packed {} ({} task{}) signed by {} {}: {} ({} bytes, id sha256:{})",
            manifest.name,
            manifest.tasks,
            if manifest.tasks == 1 { "" } else { "s" },
            signer_name,
            key.public().fingerprint(),
            self.out.display(),
            bytes.len(),
            hex(&rjs_signer::bundle_id(&bytes)),
        );
        Ok(0)
    }
}
