//! `rjs-lookup`: the lookup server's command line, a thin layer over `rjs_lookup`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use rjs_lookup::enrol;

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
    /// Enrolled nodes.
    Nodes {
        #[command(subcommand)]
        command: NodesCommand,
    },
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
        Command::Nodes { command } => match command {
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
