//! `rjs-lookup serve`: the whole lookup server until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use rjs_lookup::discovery::DiscoveryConfig;
use rjs_lookup::failover::WebServers;
use rjs_lookup::service::{ServeConfig, Service};

#[derive(clap::Args)]
pub struct ServeCommand {
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// A web server's URL (https://HOST:PORT). Repeatable (at most 16): web servers sharing
    /// one store, used one at a time, the next when the current one fails.
    #[arg(long = "webserver", value_name = "URL", required = true)]
    webservers: Vec<String>,
    /// The credentials file from `rjs-webserver lookup add` (client certificate, web server CA, key).
    #[arg(long, value_name = "FILE")]
    creds: PathBuf,
    /// Where the enrolment endpoint listens.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7450")]
    enrol_listen: SocketAddr,
    /// Interfaces mDNS may use (repeatable; e.g. `lo`, `eth1`) [default: all].
    #[arg(long = "interface", value_name = "NAME")]
    interfaces: Vec<String>,
    /// The nodes' announcement interval; a node's lease lasts 3 of them unless --ttl.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    announce_interval: Duration,
    /// Lease of a node (time without an announcement before it is dropped).
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// Polling interval of the web server (jittered ±50%; the event stream wakes it sooner).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// Job lease asked of the web server (renewed every third of it).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// Lease only jobs of these groups (repeatable) [default: all].
    #[arg(long = "group", value_name = "GROUP")]
    groups: Vec<String>,
    /// Jobs held per node slot (leases ahead so that no slot waits for the web server).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    prefetch: u32,
    /// How long a job no node will take is held and retried before it is given back.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    park: Duration,
    /// Time added to a job's time limit while waiting for its answer.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    answer_margin: Duration,
    /// Longest compilation of a job's module waited for (a node states its own compile
    /// limit; the lower of the two holds).
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    max_compile: Duration,
}

impl ServeCommand {
    pub fn run(self) -> Result<()> {
        let cfg = self.config()?;
        let rt = super::runtime()?;
        rt.block_on(async {
            let service = Service::start(cfg).await?;
            println!(
                "lookup ready: enrolment on {}, status socket {}",
                service.enrol_addr(),
                service.status_path().display()
            );
            rjs_wire::shutdown::stop_signal().await;
            eprintln!("rjs-lookup: stopping");
            service.shutdown(Duration::from_secs(5)).await;
            anyhow::Ok(())
        })?;
        rt.shutdown_timeout(Duration::from_secs(1));
        Ok(())
    }

    fn config(self) -> Result<ServeConfig> {
        let webservers = WebServers::parse(&self.webservers).context("--webserver")?;
        let mut discovery = DiscoveryConfig::with_interval(self.announce_interval);
        if let Some(ttl) = self.ttl {
            discovery.ttl = ttl;
        }
        if !self.interfaces.is_empty() {
            discovery.interfaces = Some(
                self.interfaces
                    .into_iter()
                    .map(mdns_sd::IfKind::Name)
                    .collect(),
            );
        }
        let mut cfg = ServeConfig::new(self.data, webservers, self.creds);
        cfg.enrol_listen = self.enrol_listen;
        cfg.discovery = discovery;
        cfg.poll = self.poll;
        cfg.lease = self.lease;
        cfg.groups = self.groups;
        cfg.prefetch = self.prefetch;
        cfg.park = self.park;
        cfg.answer_margin = self.answer_margin;
        cfg.max_compile = self.max_compile;
        Ok(cfg)
    }
}
