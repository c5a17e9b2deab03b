//! `rjs-sign config set|show`: the settings file the network commands read
//! ([`super::settings`]).

use anyhow::Result;
use clap::Subcommand;

use super::settings;

#[derive(clap::Args, Debug)]
pub struct ConfigCommand {
    #[command(subcommand)]
    pub action: Action,
    /// Configuration file [default: $RJS_HOME/config.toml or ~/.config/rjs/config.toml].
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Action {
    /// Set one setting: server (https://host:port), ca (CA.pem) or key (NAME.key).
    Set {
        #[arg(value_parser = ["server", "ca", "key"])]
        key: String,
        value: String,
    },
    /// Show the configuration file's path and settings.
    Show,
}

impl ConfigCommand {
    /// Runs the command; `Ok` holds the exit status.
    pub fn run(&self) -> Result<u8> {
        let env = settings::Env::from_process();
        match &self.action {
            Action::Set { key, value } => {
                let path = settings::set(self.config.as_deref(), &env, key, value)?;
                println!("{key} set in {}", path.display());
            }
            Action::Show => {
                let loaded = settings::load(self.config.as_deref(), &env)?;
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
}
