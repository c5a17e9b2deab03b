//! `rjs-lookup init`: the data directory, the cluster CA and the lookup's certificates.

use std::path::PathBuf;

use anyhow::Result;
use rjs_lookup::enrol;

#[derive(clap::Args)]
pub struct InitCommand {
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Host names / IP addresses of the lookup's server certificate (repeatable)
    /// [default: localhost, 127.0.0.1, ::1].
    #[arg(long = "host", value_name = "HOST")]
    hosts: Vec<String>,
}

impl InitCommand {
    pub fn run(self) -> Result<()> {
        let mut hosts = self.hosts;
        if hosts.is_empty() {
            hosts = enrol::DEFAULT_HOSTS.map(String::from).to_vec();
        }
        let fp = enrol::init(&self.data, &hosts)?;
        println!(
            "initialised {}; cluster CA SHA-256 {fp}",
            self.data.display()
        );
        Ok(())
    }
}
