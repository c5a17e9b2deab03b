//! `rjs-lookup status`: the running lookup's counters.

use std::path::PathBuf;

use anyhow::Result;
use rjs_lookup::status;
use rjs_wire::status::{StatusRequest, StatusResponse};

#[derive(clap::Args)]
pub struct StatusCommand {
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    #[arg(long)]
    json: bool,
}

impl StatusCommand {
    pub fn run(self) -> Result<()> {
        let s: StatusResponse = status::query_blocking(&self.data, &StatusRequest::Status)?;
        if self.json {
            return super::print_json(&s);
        }
        println!(
            "queued {}, running {}, parked {}, spooled {}; since start: leased {}, answers {} ({}), refusals {}, lost {}, given back {}{}",
            s.queued,
            s.running,
            s.parked,
            s.spooled,
            s.leased_total,
            s.answers_total,
            s.answers.line(),
            s.refusals_total,
            s.lost_total,
            s.released_total,
            match (s.upstream_down, s.upstream_down_secs) {
                (true, Some(secs)) => format!("; web server unreachable for {secs} s"),
                (true, None) => "; web server unreachable".to_owned(),
                _ => String::new(),
            }
        );
        Ok(())
    }
}
