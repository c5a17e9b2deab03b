//! `rjs-sign`: the job author's command line. A thin layer over the `rjs_signer` library:
//! parsing in [`cli`], one module per subcommand there.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    rjs_cmd::report::exit_with(
        "rjs-sign",
        cli::run(args).map(ExitCode::from),
        cli::EXIT_ERROR,
    )
}
