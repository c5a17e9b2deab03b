//! `rjs-lookup why`: why a job is not running, as the running lookup sees it.

use std::path::PathBuf;

use anyhow::Result;
use rjs_lookup::status;
use rjs_wire::status::{StatusRequest, WhyResponse};

#[derive(clap::Args)]
pub struct WhyCommand {
    /// The web server's job id.
    job: i64,
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    #[arg(long)]
    json: bool,
}

impl WhyCommand {
    pub fn run(self) -> Result<()> {
        let job = self.job;
        let why: WhyResponse = status::query_blocking(&self.data, &StatusRequest::Why { job })?;
        if self.json {
            super::print_json(&why)
        } else {
            println!("job {job}: {}", why.why);
            Ok(())
        }
    }
}
