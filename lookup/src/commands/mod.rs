//! The subcommands of `rjs-lookup`, one module each.

use anyhow::Result;
use clap::Subcommand;

mod init;
mod nodes;
mod serve;
mod serve_enrol;
mod status;
mod token;
mod why;

#[derive(Subcommand)]
pub enum Command {
    /// Create the data directory, the cluster CA and the lookup's certificates.
    Init(init::InitCommand),
    /// Print a one-time join token for `rjs-compute join`.
    Token(token::TokenCommand),
    /// Serve the enrolment endpoint only (TLS) until SIGTERM/SIGINT.
    ServeEnrol(serve_enrol::ServeEnrolCommand),
    /// Run the lookup server until SIGTERM/SIGINT: enrolment endpoint, mDNS discovery,
    /// job puller, dispatcher, answer relay and the status socket.
    Serve(serve::ServeCommand),
    /// The node panel of the running lookup (or, with a subcommand, the enrolment registry).
    Nodes(nodes::NodesCommand),
    /// Explain why a job is not running (asks the running lookup).
    Why(why::WhyCommand),
    /// Counters of the running lookup: jobs queued, running, parked, spooled; totals.
    Status(status::StatusCommand),
}

impl Command {
    pub fn run(self) -> Result<()> {
        match self {
            Command::Init(c) => c.run(),
            Command::Token(c) => c.run(),
            Command::ServeEnrol(c) => c.run(),
            Command::Serve(c) => c.run(),
            Command::Nodes(c) => c.run(),
            Command::Why(c) => c.run(),
            Command::Status(c) => c.run(),
        }
    }
}

/// The runtime of the serving commands: two worker threads are plenty for a lookup.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Prints `value` as pretty JSON.
fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
