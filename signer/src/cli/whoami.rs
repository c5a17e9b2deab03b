//! `rjs-sign whoami`: checks the settings and that the server knows the key.

use anyhow::Result;

use super::output;
use super::settings::{self, ServerOpts};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub server: ServerOpts,
}

pub fn run(args: &Args) -> Result<u8> {
    let api = settings::open(&args.server)?;
    let me = api.whoami()?;
    println!(
        "{} ({}) on {}",
        output::clean(&me.name),
        output::clean(&me.fingerprint),
        api.server()
    );
    Ok(0)
}
