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
        if let Some(line) = webserver_line(&s) {
            println!("{line}");
        }
        Ok(())
    }
}

/// `web server https://b:8443 (2 of 2); 1 failover, the last 12 s ago from https://a:8443:
/// <cause>`; None from a lookup that does not say.
fn webserver_line(s: &StatusResponse) -> Option<String> {
    if s.webserver.is_empty() {
        return None;
    }
    let mut line = format!("web server {}", s.webserver);
    if s.webservers.len() > 1 {
        let pos = s.webservers.iter().position(|w| *w == s.webserver);
        line.push_str(&format!(
            " ({} of {})",
            pos.map_or("?".to_owned(), |p| (p + 1).to_string()),
            s.webservers.len()
        ));
        line.push_str(&format!(
            "; {} failover{}",
            s.failovers,
            if s.failovers == 1 { "" } else { "s" }
        ));
        if let Some(f) = &s.last_failover {
            line.push_str(&format!(
                ", the last {} s ago from {}: {}",
                f.secs_ago, f.from, f.cause
            ));
        }
    }
    Some(line)
}
