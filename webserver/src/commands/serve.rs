//! `rjs-webserver serve`.

use clap::Args;
use rjs_cmd::units::nonzero_size_arg;
use rjs_webserver::server;

use super::Data;

#[derive(Args)]
pub struct ServeCommand {
    #[command(flatten)]
    data: Data,
    /// Address to listen on (port 0: any free port; the line `listening on https://ADDR`
    /// says which).
    #[arg(long, value_name = "ADDR", default_value = server::DEFAULT_LISTEN)]
    listen: String,
    /// Largest bundle accepted (bytes; K, M, G suffixes are powers of 1024).
    #[arg(long, value_name = "BYTES", default_value = "64M", value_parser = nonzero_size_arg)]
    pub(super) max_bundle: u64,
    /// Largest answer archive accepted (bytes; K, M, G suffixes).
    #[arg(long, value_name = "BYTES", default_value = "64M", value_parser = nonzero_size_arg)]
    max_answer: u64,
    /// Leases of a job that may end without an answer before it fails.
    #[arg(long, value_name = "N", default_value_t = server::DEFAULT_MAX_ATTEMPTS,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    max_attempts: u32,
    /// HTTP worker threads (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
}

impl ServeCommand {
    pub fn run(self) -> anyhow::Result<()> {
        rjs_cmd::logging::init("info");
        let site = self.data.site()?;
        let mut config = server::ServeConfig::new(site.dir);
        config.store = site.store;
        config.listen = self.listen;
        config.max_bundle = self.max_bundle;
        config.max_answer = self.max_answer;
        config.max_attempts = self.max_attempts;
        config.workers = self.workers.map(usize::from);
        server::run(config)?;
        Ok(())
    }
}
