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

#[cfg(test)]
mod tests {
    use super::*;
    use rjs_wire::status::FailoverRow;

    fn status() -> StatusResponse {
        serde_json::from_str(
            r#"{"queued":0,"running":0,"parked":0,"spooled":0,"leased_total":0,
                "answers_total":0,"answers":{"exit_zero":0,"exit_other":0,"trap":0,"limit":0},
                "refusals_total":0,"lost_total":0,"released_total":0,"upstream_down":false}"#,
        )
        .unwrap()
    }

    #[test]
    fn the_web_server_line_names_the_current_one_and_the_last_failover() {
        // A lookup that predates the fields: no line.
        assert_eq!(webserver_line(&status()), None);
        let mut s = status();
        s.webserver = "https://a:1".into();
        s.webservers = vec![s.webserver.clone()];
        assert_eq!(webserver_line(&s).unwrap(), "web server https://a:1");
        s.webservers.push("https://b:1".into());
        s.webserver = "https://b:1".into();
        s.failovers = 1;
        s.last_failover = Some(FailoverRow {
            from: "https://a:1".into(),
            to: "https://b:1".into(),
            cause: "checking the web server at https://a:1/healthz: connection refused".into(),
            secs_ago: 12,
        });
        assert_eq!(
            webserver_line(&s).unwrap(),
            "web server https://b:1 (2 of 2); 1 failover, the last 12 s ago from https://a:1: \
             checking the web server at https://a:1/healthz: connection refused"
        );
    }
}
