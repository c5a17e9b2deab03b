//! `rjs-sign whoami`: checks the settings and that the server knows the key.

use anyhow::Result;

use super::output;
use super::settings::{self, ServerOpts};

#[derive(clap::Args, Debug)]
pub struct WhoamiCommand {
    #[command(flatten)]
    pub server: ServerOpts,
}

impl WhoamiCommand {
    /// Runs the command; `Ok` holds the exit status.
    pub fn run(&self) -> Result<u8> {
        let api = settings::open(&self.server)?;
        let me = api.whoami()?;
        println!(
            "{} ({}) on {}",
            output::clean(&me.name),
            output::clean(&me.fingerprint),
            api.server()
        );
        Ok(0)
    }
}
