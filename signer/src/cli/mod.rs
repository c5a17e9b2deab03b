//! The commands of `rjs-sign`, one module each (as wasmtime's `src/commands/`):
//!
//! * local: [`keygen`], [`pack`], [`verify`], [`inspect`], [`verify_answer`];
//! * network (through [`rjs_signer::client`]): [`upload`], [`status`], [`answers`],
//!   [`whoami`], [`dashboard`]; and [`config`], the settings file they read ([`settings`]).
//!
//! Shared by several commands: [`local`] (the local bundle check and refusal lines) and
//! [`output`] (terminal-safe text, progress bars).
//!
//! A new subcommand: a module here with an `XCommand` (clap) and `XCommand::run` (`Ok`: the
//! exit status), one variant in [`Command`], one arm in [`run`].

pub mod answers;
pub mod config;
pub mod dashboard;
pub mod inspect;
pub mod keygen;
pub mod local;
pub mod output;
pub mod pack;
pub mod settings;
pub mod status;
pub mod upload;
pub mod verify;
pub mod verify_answer;
pub mod whoami;

#[cfg(test)]
mod tests;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Exit status of a failure other than a refusal (a refused file exits 1).
pub const EXIT_ERROR: u8 = 2;

#[derive(Parser)]
#[command(
    name = "rjs-sign",
    version,
    about = "Sign, verify and inspect RJS job bundles; upload them and fetch their answers"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate an ed25519 key pair: NAME.key (secret, mode 0600) and NAME.pub (shareable).
    Keygen(keygen::KeygenCommand),
    /// Pack JOB_DIR (its manifest.json and the files it names) into a signed bundle.
    Pack(pack::PackCommand),
    /// Verify a bundle; exit 0 if valid (and signed by a --trust key, if given), 1 if refused.
    Verify(verify::VerifyCommand),
    /// Verify an answer archive from a compute node; exit 0 if valid (and signed by a --node
    /// key, if given), 1 if refused.
    VerifyAnswer(verify_answer::VerifyAnswerCommand),
    /// Show a bundle's manifest, entries, signer and verdict.
    Inspect(inspect::InspectCommand),
    /// Verify a bundle here, then upload it to the web server (which queues one job per task).
    Upload(upload::UploadCommand),
    /// Show your jobs on the web server: state, attempts, outcome, node.
    Status(status::StatusCommand),
    /// Download the answers of your finished jobs (optionally waiting for the rest).
    Answers(answers::AnswersCommand),
    /// Check the settings: who the web server takes you for.
    Whoami(whoami::WhoamiCommand),
    /// Sign in to the web dashboard: print (and open) a one-time login link.
    Dashboard(dashboard::DashboardCommand),
    /// Show or change the settings file (server, ca, key) the network commands read.
    Config(config::ConfigCommand),
}

/// Runs one command; `Ok` holds the exit status.
pub fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Keygen(args) => args.run(),
        Command::Pack(args) => args.run(),
        Command::Verify(args) => args.run(),
        Command::VerifyAnswer(args) => args.run(),
        Command::Inspect(args) => args.run(),
        Command::Upload(args) => args.run(),
        Command::Status(args) => args.run(),
        Command::Answers(args) => args.run(),
        Command::Whoami(args) => args.run(),
        Command::Dashboard(args) => args.run(),
        Command::Config(args) => args.run(),
    }
}

pub use rjs_cmd::time::unix_time as format_time;

#[cfg(test)]
mod cli_definition {
    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
