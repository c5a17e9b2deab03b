//! `rjs-lookup token`: a one-time join token for `rjs-compute join`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use rjs_lookup::enrol;

#[derive(clap::Args)]
pub struct TokenCommand {
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// The enrolment endpoint as nodes reach it (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT")]
    addr: String,
    /// Lifetime of the token.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

impl TokenCommand {
    pub fn run(self) -> Result<()> {
        println!(
            "{}",
            enrol::new_token(&self.data, &self.addr, self.ttl)?.encode()
        );
        Ok(())
    }
}
