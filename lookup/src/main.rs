//! `rjs-lookup`: the lookup server's command line, a thin layer over `rjs_lookup`: one module
//! per subcommand in `commands/`.

use std::process::ExitCode;

use clap::Parser;

mod commands;

use commands::Command;

#[derive(Parser)]
#[command(name = "rjs-lookup", version, about = "RJS lookup server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    rjs_cmd::logging::init("warn");
    rjs_cmd::exit("rjs-lookup", cli.command.run().map(|()| ExitCode::SUCCESS))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
