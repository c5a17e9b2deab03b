//! `rjs-webserver`: thin command line over `rjs_webserver::{admin, server}`: parsing in
//! [`commands`], one module per subcommand there.

mod commands;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Usage errors exit 2, --help and --version 0.
    let cli = commands::Cli::parse();
    rjs_cmd::exit("rjs-webserver", cli.run().map(|()| ExitCode::SUCCESS))
}
