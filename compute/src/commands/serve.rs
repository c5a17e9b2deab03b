//! `rjs-compute serve`: the mutual-TLS job server, announced on the LAN by mDNS.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use rjs_compute::announce::{self, Announcer, AnnouncerConfig};
use rjs_compute::config::Overrides;
use rjs_compute::node::Node;
use rjs_compute::server::Timeouts;

use super::NodeArgs;

#[derive(Args)]
pub struct ServeCommand {
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    announce: AnnounceArgs,
    /// This node's certificate [default: <data>/node.pem].
    #[arg(long, value_name = "PEM")]
    cert: Option<PathBuf>,
    /// Its key [default: <data>/node-key.pem].
    #[arg(long, value_name = "PEM")]
    key: Option<PathBuf>,
    /// The cluster CA that issues lookup and node certificates [default: <data>/cluster-ca.pem].
    #[arg(long, value_name = "PEM")]
    ca: Option<PathBuf>,
    /// Test aid: the job server's deadline for a TLS handshake and for each frame once
    /// begun (and each write), instead of 10 s and 30 s.
    #[arg(long, value_name = "DUR", hide = true, value_parser = rjs_compute::config::parse_duration)]
    io_timeout: Option<Duration>,
}

/// mDNS announcement options of `serve` (override `[announce]` in node.toml).
#[derive(Args, Clone, Debug)]
struct AnnounceArgs {
    /// Re-announce (renew the lease at lookup servers) this often, e.g. 2s, 500ms
    /// [default: 2s; at least 100ms].
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    announce_interval: Option<Duration>,
    /// Announce only on this network interface, e.g. eth0 or lo (repeatable) [default: all].
    #[arg(long = "interface", value_name = "NAME")]
    interfaces: Vec<String>,
    /// IP address to put in the announcement (repeatable) [default: the --listen IP if it is
    /// a specific one, else the addresses of the interfaces announced on].
    #[arg(long = "advertise", value_name = "IP")]
    advertise: Vec<IpAddr>,
    /// Do not announce on mDNS: serve jobs only (no lookup server discovers the node).
    #[arg(long, conflicts_with_all = ["announce_interval", "interfaces", "advertise"])]
    no_announce: bool,
}

impl AnnounceArgs {
    fn apply(&self, o: &mut Overrides) {
        if self.no_announce {
            o.announce = Some(false);
        }
        o.announce_interval = self.announce_interval;
        o.interfaces = self.interfaces.clone();
        o.advertise = self.advertise.clone();
    }
}

impl ServeCommand {
    pub fn run(self) -> Result<ExitCode> {
        if self.io_timeout.is_some_and(|t| t.is_zero()) {
            bail!("--io-timeout must be more than 0");
        }
        let timeouts = self
            .io_timeout
            .map_or_else(Timeouts::default, Timeouts::with_io);
        let (rt, node) = self.node.start_node(|o| self.announce.apply(o))?;
        let tls = self.tls_config(&node)?;
        let listen = node.config.listen;
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(listen))
            .with_context(|| format!("listening on {listen}"))?;
        let addr = listener.local_addr()?;
        // Announced once the job server listens (connections wait in the backlog until the
        // accept loop runs), before the ready line, so a failure to announce stops the start.
        let settings = &node.config.announce;
        let announcer = if settings.enabled {
            Some(
                start_announcer(&node, addr)
                    .context("announcing on mDNS (--no-announce to serve without)")?,
            )
        } else {
            None
        };
        println!(
            "node {} ({} MFLOPS, {} slots) listening on {addr}",
            node.identity.id,
            node.mflops,
            node.sandbox.slots()
        );
        if announcer.is_some() {
            println!(
                "announcing {} on mDNS every {}",
                node.identity.id,
                humantime::format_duration(settings.interval)
            );
        } else if self.announce.no_announce {
            println!("not announcing (--no-announce)");
        } else {
            println!("not announcing (announce.enabled = false)");
        }
        let served = rt.block_on(async {
            let shutdown = rjs_wire::shutdown::stop_signal();
            let tls = Arc::new(tls);
            rjs_compute::server::serve_with(node.clone(), listener, tls, timeouts, shutdown)
                .await
                .context("serving jobs")
        });
        // SIGTERM/SIGINT (or a failure): unregister (mDNS goodbye) and stop the daemon first.
        if let Some(a) = announcer {
            a.shutdown();
        }
        served?;
        super::shut_down(&rt, node);
        Ok(ExitCode::SUCCESS)
    }

    /// The job server's TLS set-up: the node's certificate and key, client certificates
    /// required and issued by the cluster CA (each file from its flag, else the data
    /// directory's).
    fn tls_config(&self, node: &Node) -> Result<rustls::ServerConfig> {
        let paths = &node.config.tls;
        let cert = self.cert.as_ref().unwrap_or(&paths.cert);
        let key = self.key.as_ref().unwrap_or(&paths.key);
        let ca = self.ca.as_ref().unwrap_or(&paths.ca);
        let chain = rjs_wire::tls::load_certs(cert).context("loading the node certificate")?;
        let key = rjs_wire::tls::load_key(key).context("loading the node key")?;
        let ca = rjs_wire::tls::load_certs(ca).context("loading the cluster CA")?;
        rjs_wire::tls::server_config(chain, key, rjs_wire::tls::ClientAuth::Required(&ca))
            .context("building the TLS configuration")
    }
}

/// Starts the signed mDNS announcer for a node whose job server listens on `addr`.
fn start_announcer(node: &Arc<Node>, addr: SocketAddr) -> Result<Announcer> {
    let settings = &node.config.announce;
    for name in &settings.interfaces {
        if !announce::interface_exists(name) {
            bail!("there is no network interface {name:?}");
        }
    }
    // The job server's own IP when it listens on a specific one; else the addresses of the
    // interfaces it announces on (of its address family), found for each announcement.
    let advertise = if settings.advertise.is_empty() && !addr.ip().is_unspecified() {
        vec![addr.ip()]
    } else {
        settings.advertise.clone()
    };
    match announce::local_addrs() {
        Ok(local) => {
            for p in announce::reach_problems(&local, &settings.interfaces, &advertise) {
                eprintln!("rjs-compute: warning: {p}");
            }
        }
        Err(e) => tracing::warn!("listing the network interfaces: {}", rjs_cmd::chain(&e)),
    }
    let interfaces = (!settings.interfaces.is_empty()).then(|| {
        settings
            .interfaces
            .iter()
            .map(|n| mdns_sd::IfKind::Name(n.clone()))
            .collect()
    });
    let config = AnnouncerConfig {
        node_id: node.identity.id.clone(),
        port: addr.port(),
        mflops: node.mflops,
        total_slots: u32::try_from(node.sandbox.slots()).unwrap_or(u32::MAX),
        groups: node.config.groups.clone(),
        interval: settings.interval,
        interfaces,
        addresses: advertise,
        ipv4_only: addr.is_ipv4(),
    };
    // A weak reference: the announcer does not keep the node alive.
    let weak: Weak<Node> = Arc::downgrade(node);
    let free_slots = Arc::new(move || {
        weak.upgrade().map_or(0, |n| {
            u32::try_from(n.sandbox.slots().saturating_sub(n.sandbox.busy())).unwrap_or(u32::MAX)
        })
    });
    Ok(Announcer::start(
        config,
        node.identity.key.clone(),
        free_slots,
    )?)
}
