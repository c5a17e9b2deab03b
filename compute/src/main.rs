//! `rjs-compute`: the compute node's command line. A thin layer over the `rjs_compute`
//! library, one module per subcommand under `commands/`; see `docs/compute-node.md`.

use std::process::ExitCode;

use clap::Parser;

mod commands;

fn main() -> ExitCode {
    // The sandbox's worker processes are this executable: dispatch before anything else
    // (no clap, no logging, no runtime) so the worker starts clean and fast.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(
            rjs_compute::sandbox::WORKER_SUBCOMMAND,
        ))
    {
        return rjs_compute::sandbox::worker_main();
    }
    let cli = commands::Cli::parse();
    rjs_cmd::logging::init("warn");
    rjs_cmd::exit("rjs-compute", cli.command.run())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::commands::Cli::command().debug_assert();
    }
}
