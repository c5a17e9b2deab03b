//! `rjs-compute join TOKEN`: enrolment with a lookup server.

use anyhow::Result;
use clap::Args;
use rjs_compute::config::{DataArgs, NodeConfig};
use rjs_compute::join::{JoinOptions, join};

#[derive(Args)]
pub struct JoinCommand {
    /// The join token (`rjs1-…`).
    token: String,
    #[command(flatten)]
    data: DataArgs,
    /// Node id to ask for [default: the lookup assigns `node-<n>`].
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// DNS name or IP address lookups reach this node at, for its certificate (repeatable).
    #[arg(long = "host", value_name = "HOST")]
    hosts: Vec<String>,
}

impl JoinCommand {
    pub fn run(self) -> Result<()> {
        let token = rjs_wire::enrol::Token::parse(&self.token)?;
        let config = NodeConfig::load(&self.data.overrides())?;
        let opts = JoinOptions {
            node_id: self.id,
            hosts: self.hosts,
        };
        let joined =
            super::runtime()?.block_on(join(&token, &config.data_dir, &config.tls, &opts))?;
        println!(
            "enrolled as {}; certificate {}, key {}, cluster CA {}",
            joined.node_id,
            joined.cert.display(),
            joined.key.display(),
            joined.ca.display()
        );
        Ok(())
    }
}
