//! `rjs`: the RJS umbrella command. `rjs demo` runs a whole grid on this machine; see
//! `docs/demo.md`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "rjs",
    version,
    about = "RJS: remote job submission with signed WebAssembly bundles"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole grid on this machine (web server, lookup server, compute nodes) in a
    /// private network namespace, compute the Mandelbrot sample's 8 tiles on it and stitch
    /// them into one image.
    Demo(rjs::demo::DemoArgs),
}

fn main() -> ExitCode {
    // No thread may exist before `rjs demo` enters its network namespace: parse, then run.
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => ExitCode::from(rjs::demo::run(&args)),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
