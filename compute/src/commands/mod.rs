//! The subcommands of `rjs-compute`, one module each, and what several of them share.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use rjs_compute::config::{ConfigArgs, Overrides};
use rjs_compute::node::{Node, StartOptions};

mod bench;
mod join;
mod run;
mod serve;
mod trust;

#[derive(Parser)]
#[command(
    name = "rjs-compute",
    version,
    about = "RJS compute node: lend this PC to the grid, on the owner's terms"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Show this node's speed (MFLOPS), measuring it first if it was never measured.
    Bench(bench::BenchCommand),
    /// Run one task of a local bundle the way a job from the grid runs (verify, trust,
    /// sandbox, signed answer) and write its answer archive.
    Run(run::RunCommand),
    /// Serve jobs from lookup servers over mutual TLS until SIGTERM/SIGINT, announcing the
    /// node on the LAN by mDNS (signed, every --announce-interval) unless --no-announce.
    Serve(serve::ServeCommand),
    /// Enrol this node with a lookup server using a one-time token from `rjs-lookup token`:
    /// writes the node certificate, its key, the cluster CA and the assigned node id.
    Join(join::JoinCommand),
    /// List, trust, block or forget job authors.
    Trust(trust::TrustCommand),
}

impl Command {
    pub fn run(self) -> Result<ExitCode> {
        match self {
            Command::Bench(c) => c.run().map(|()| ExitCode::SUCCESS),
            Command::Join(c) => c.run().map(|()| ExitCode::SUCCESS),
            Command::Trust(c) => c.run().map(|()| ExitCode::SUCCESS),
            Command::Run(c) => c.run(),
            Command::Serve(c) => c.run(),
        }
    }
}

/// Options of the commands that run jobs.
#[derive(Args, Clone, Debug)]
struct NodeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Node id [default: the id assigned at `join` (<data>/node-id), else `node-` and the node
    /// key's fingerprint prefix].
    #[arg(long, value_name = "ID")]
    node_id: Option<String>,
    /// Measure the speed again at start-up.
    #[arg(long)]
    rebench: bool,
}

impl NodeArgs {
    /// Loads the configuration (these flags, then `adjust`'s changes, over the file) and
    /// starts the node on a new runtime.
    fn start_node(
        &self,
        adjust: impl FnOnce(&mut Overrides),
    ) -> Result<(tokio::runtime::Runtime, Arc<Node>)> {
        let mut overrides = self.config.overrides();
        adjust(&mut overrides);
        let config = rjs_compute::config::NodeConfig::load(&overrides)?;
        let rt = runtime()?;
        let node = rt
            .block_on(Node::start(
                config,
                StartOptions {
                    node_id: self.node_id.clone(),
                    rebench: self.rebench,
                    worker_exe: None,
                },
            ))
            .context("starting the node")?;
        Ok((rt, Arc::new(node)))
    }
}

/// Stops the node's sandbox (its workers) once nothing else holds the node.
fn shut_down(rt: &tokio::runtime::Runtime, node: Arc<Node>) {
    if let Ok(node) = Arc::try_unwrap(node) {
        rt.block_on(node.sandbox.shutdown());
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

use rjs_cmd::time::unix_time as date;
