//! `rjs-lookup`: the lookup server's command line, a thin layer over `rjs_lookup`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use rjs_lookup::enrol;
use rjs_lookup::service::{ServeConfig, Service};
use rjs_lookup::status;
use rjs_wire::status::{NodesResponse, StatusRequest, StatusResponse, WhyResponse};

#[derive(Parser)]
#[command(name = "rjs-lookup", version, about = "RJS lookup server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the data directory, the cluster CA and the lookup's certificates.
    Init {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Host names / IP addresses of the lookup's server certificate (repeatable)
        /// [default: localhost, 127.0.0.1, ::1].
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
    },
    /// Print a one-time join token for `rjs-compute join`.
    Token {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// The enrolment endpoint as nodes reach it (HOST:PORT).
        #[arg(long, value_name = "HOST:PORT")]
        addr: String,
        /// Lifetime of the token.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Serve the enrolment endpoint only (TLS) until SIGTERM/SIGINT.
    ServeEnrol {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7450")]
        listen: std::net::SocketAddr,
    },
    /// Run the lookup server until SIGTERM/SIGINT: enrolment endpoint, mDNS discovery,
    /// job puller, dispatcher, answer relay and the status socket.
    Serve(ServeArgs),
    /// The node panel of the running lookup (or, with a subcommand, the enrolment registry).
    #[command(args_conflicts_with_subcommands = true)]
    Nodes {
        #[command(subcommand)]
        command: Option<NodesCommand>,
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// One JSON object: {"nodes": [...], "drops": {...}}.
        #[arg(long)]
        json: bool,
    },
    /// Explain why a job is not running (asks the running lookup).
    Why {
        /// The web server's job id.
        job: i64,
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Counters of the running lookup: jobs queued, running, parked, spooled; totals.
    Status {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// The web server's URL (https://HOST:PORT).
    #[arg(long, value_name = "URL")]
    webserver: String,
    /// The credentials file from `rjs-webserver lookup add` (client certificate, web server CA, key).
    #[arg(long, value_name = "FILE")]
    creds: PathBuf,
    /// Where the enrolment endpoint listens.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7450")]
    enrol_listen: std::net::SocketAddr,
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
}

#[derive(Subcommand)]
enum NodesCommand {
    /// List enrolled and revoked nodes.
    List {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a node: its announcements and connections are no longer accepted.
    Remove {
        node: String,
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rjs-lookup: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Init { data, mut hosts } => {
            if hosts.is_empty() {
                hosts = enrol::DEFAULT_HOSTS.map(String::from).to_vec();
            }
            let fp = enrol::init(&data, &hosts)?;
            println!("initialised {}; cluster CA SHA-256 {fp}", data.display());
        }
        Command::Token { data, addr, ttl } => {
            println!("{}", enrol::new_token(&data, &addr, ttl)?.encode());
        }
        Command::ServeEnrol { data, listen } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("listening on {listen}"))?;
                println!("enrolment endpoint listening on {}", listener.local_addr()?);
                let shutdown = rjs_wire::shutdown::stop_signal();
                enrol::serve_enrolment(data, listener, shutdown).await
            })?;
        }
        Command::Serve(args) => serve(args)?,
        Command::Nodes {
            command: None,
            data,
            json,
        } => {
            let data = data.context("--data DIR is required")?;
            let panel: NodesResponse = status::query_blocking(&data, &StatusRequest::Nodes)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&panel)?);
            } else {
                print!("{}", render_panel(&panel));
            }
        }
        Command::Why { job, data, json } => {
            let why: WhyResponse = status::query_blocking(&data, &StatusRequest::Why { job })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&why)?);
            } else {
                println!("job {job}: {}", why.why);
            }
        }
        Command::Status { data, json } => {
            let s: StatusResponse = status::query_blocking(&data, &StatusRequest::Status)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!(
                    "queued {}, running {}, parked {}, spooled {}; since start: leased {}, answers {}, refusals {}, lost {}, given back {}{}",
                    s.queued,
                    s.running,
                    s.parked,
                    s.spooled,
                    s.leased_total,
                    s.answers_total,
                    s.refusals_total,
                    s.lost_total,
                    s.released_total,
                    if s.upstream_down {
                        "; web server unreachable"
                    } else {
                        ""
                    }
                );
            }
        }
        Command::Nodes {
            command: Some(command),
            ..
        } => match command {
            NodesCommand::List { data, json } => {
                let reg = enrol::Registry::load(&data)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&reg.nodes)?);
                } else {
                    println!(
                        "{:<24} {:<8} {:<44} CERT SHA-256",
                        "ID", "STATUS", "NODE KEY"
                    );
                    for n in &reg.nodes {
                        let status = if n.revoked_at.is_some() {
                            "revoked"
                        } else {
                            "active"
                        };
                        println!(
                            "{:<24} {status:<8} {:<44} {}",
                            n.id, n.node_key, n.cert_sha256
                        );
                    }
                }
            }
            NodesCommand::Remove { node, data } => {
                if enrol::revoke(&data, &node)? {
                    println!("revoked {node}");
                } else {
                    println!("{node} was already revoked");
                }
            }
        },
    }
    Ok(())
}

fn serve(a: ServeArgs) -> Result<()> {
    let mut discovery = rjs_lookup::discovery::DiscoveryConfig::with_interval(a.announce_interval);
    if let Some(ttl) = a.ttl {
        discovery.ttl = ttl;
    }
    if !a.interfaces.is_empty() {
        discovery.interfaces = Some(
            a.interfaces
                .iter()
                .map(|n| mdns_sd::IfKind::Name(n.clone()))
                .collect(),
        );
    }
    let mut cfg = ServeConfig::new(a.data.clone(), a.webserver, a.creds);
    cfg.enrol_listen = a.enrol_listen;
    cfg.discovery = discovery;
    cfg.poll = a.poll;
    cfg.lease = a.lease;
    cfg.groups = a.groups;
    cfg.prefetch = a.prefetch;
    cfg.park = a.park;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
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
        Ok::<(), anyhow::Error>(())
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// The node panel as a table.
fn render_panel(p: &NodesResponse) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<22} {:>7} {:>9} {:>6} {:>8} {:<16} {:>6} {:>6} {:>7}",
        "NODE",
        "ADDRESS",
        "MFLOPS",
        "BUSY/ALL",
        "FREE",
        "AGE",
        "GROUPS",
        "DONE",
        "FAILED",
        "REFUSED"
    );
    for n in &p.nodes {
        let addr = match n.addresses.first() {
            Some(a) if a.contains(':') => format!("[{a}]:{}", n.port),
            Some(a) => format!("{a}:{}", n.port),
            None => format!("?:{}", n.port),
        };
        let _ = writeln!(
            out,
            "{:<16} {:<22} {:>7} {:>9} {:>6} {:>7.1}s {:<16} {:>6} {:>6} {:>7}",
            n.node_id,
            addr,
            n.mflops,
            format!("{}/{}", n.busy, n.total_slots),
            n.free_slots,
            n.age_ms as f64 / 1000.0,
            if n.groups.is_empty() {
                "-".to_owned()
            } else {
                n.groups.join(",")
            },
            n.done,
            n.failed,
            n.refused
        );
    }
    if p.nodes.is_empty() {
        let _ = writeln!(out, "(no live node)");
    }
    let d = &p.drops;
    let dropped = d.unsigned + d.malformed + d.unknown_key + d.bad_signature + d.stale + d.replay;
    if dropped > 0 {
        let _ = writeln!(
            out,
            "announcements dropped: {dropped} (unsigned {}, malformed {}, unknown key {}, bad signature {}, stale {}, replay {})",
            d.unsigned, d.malformed, d.unknown_key, d.bad_signature, d.stale, d.replay
        );
    }
    out
}
