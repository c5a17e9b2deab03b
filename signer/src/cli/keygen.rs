//! `rjs-sign keygen`: a new author key pair.

use std::path::PathBuf;

use anyhow::{Context, Result};
use rjs_signer::keys::{self, KeyPair};

#[derive(clap::Args, Debug)]
pub struct KeygenCommand {
    /// Key name (A-Z a-z 0-9 . _ @ -), also recorded as the signer name in bundles.
    #[arg(long)]
    pub name: String,
    /// Folder for the key files [default: $RJS_HOME/keys or ~/.config/rjs/keys].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Overwrite existing key files.
    #[arg(long)]
    pub force: bool,
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

impl KeygenCommand {
    /// Runs the command; `Ok` holds the exit status.
    pub fn run(&self) -> Result<u8> {
        let dir = match &self.dir {
            Some(d) => d.clone(),
            None => default_key_dir()?,
        };
        let name = &self.name;
        let key = KeyPair::generate();
        let files = keys::write_key_pair(&key, name, &dir, self.force)
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
}
