//! The author's network commands of `rjs-sign` (upload, status, answers, whoami, config),
//! the local bundle check they share with `verify` and `inspect`, and `verify-answer`.

pub mod answers;
pub mod client;
pub mod config;
pub mod local;
pub mod output;
pub mod status;
pub mod upload;
pub mod verify_answer;

#[cfg(test)]
mod tests;

use anyhow::Result;
use clap::Subcommand;

use config::ServerOpts;

#[derive(clap::Args, Debug)]
pub struct WhoamiArgs {
    #[command(flatten)]
    pub server: ServerOpts,
}

/// `rjs-sign whoami`: checks the settings and that the server knows the key.
pub fn whoami(args: &WhoamiArgs) -> Result<u8> {
    let settings = config::resolve(&args.server, &config::Env::from_process())?;
    let api = client::Api::connect(&settings)?;
    let me = api.whoami()?;
    println!(
        "{} ({}) on {}",
        output::clean(&me.name),
        output::clean(&me.fingerprint),
        api.server()
    );
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub action: ConfigAction,
    /// Configuration file [default: $RJS_HOME/config.toml or ~/.config/rjs/config.toml].
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum ConfigAction {
    /// Set one setting: server (https://host:port), ca (CA.pem) or key (NAME.key).
    Set {
        #[arg(value_parser = ["server", "ca", "key"])]
        key: String,
        value: String,
    },
    /// Show the configuration file's path and settings.
    Show,
}

/// `rjs-sign config set|show`.
pub fn config(args: &ConfigArgs) -> Result<u8> {
    let env = config::Env::from_process();
    match &args.action {
        ConfigAction::Set { key, value } => {
            let path = config::set(args.config.as_deref(), &env, key, value)?;
            println!("{key} set in {}", path.display());
        }
        ConfigAction::Show => {
            let loaded = config::load(args.config.as_deref(), &env)?;
            match (&loaded.path, loaded.exists) {
                (Some(p), true) => println!("# {}", p.display()),
                (Some(p), false) => println!("# {} (does not exist)", p.display()),
                (None, _) => println!("# no configuration file (set RJS_HOME or HOME)"),
            }
            let show = |k: &str, v: Option<String>| match v {
                Some(v) => println!("{k} = {v:?}"),
                None => println!("# {k} is not set"),
            };
            show("server", loaded.file.server.clone());
            show(
                "ca",
                loaded.file.ca.as_ref().map(|p| p.display().to_string()),
            );
            show(
                "key",
                loaded.file.key.as_ref().map(|p| p.display().to_string()),
            );
        }
    }
    Ok(0)
}
