//! `rjs-webserver`: thin command line over `rjs_webserver::{admin, server}`: parsing in
//! [`commands`], one module per subcommand there.

mod commands;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;

fn main() -> ExitCode {
    // The configuration file's settings become environment variables the flags read, before
    // anything else runs (one thread yet).
    if let Err(e) = load_config(std::env::args_os().skip(1)) {
        return rjs_cmd::exit("rjs-webserver", Err(e));
    }
    // Usage errors exit 2, --help and --version 0.
    let cli = commands::Cli::parse();
    rjs_cmd::exit("rjs-webserver", cli.run().map(|()| ExitCode::SUCCESS))
}

/// `--config FILE` (or `RJS_WEBSERVER_CONFIG`): sets each of its settings that the
/// environment does not already have.
fn load_config(args: impl Iterator<Item = OsString>) -> anyhow::Result<()> {
    let mut file: Option<PathBuf> = None;
    let mut args = args;
    while let Some(a) = args.next() {
        if a == "--" {
            break;
        }
        if a == "--config" {
            file = args.next().map(PathBuf::from);
        } else if let Some(v) = a.to_str().and_then(|s| s.strip_prefix("--config=")) {
            file = Some(PathBuf::from(v));
        }
    }
    let file = file.or_else(|| std::env::var_os(commands::CONFIG_ENV).map(PathBuf::from));
    let Some(file) = file else {
        return Ok(());
    };
    let settings = rjs_webserver::envfile::read(&file)
        .with_context(|| format!("reading the configuration file {}", file.display()))?;
    for (name, value) in settings {
        if std::env::var_os(&name).is_none() {
            // SAFETY: no other thread runs yet (this is the start of `main`).
            unsafe { std::env::set_var(&name, &value) };
        }
    }
    Ok(())
}
