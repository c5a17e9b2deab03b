//! `rjs-compute`: the compute node's command line. A thin layer over the `rjs_compute`
//! library; see `docs/compute-node.md`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Weak};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use rjs_compute::announce::{self, Announcer, AnnouncerConfig};
use rjs_compute::bench;
use rjs_compute::config::{ConfigArgs, NodeConfig, Overrides};
use rjs_compute::node::{Node, StartOptions};
use rjs_compute::server::Timeouts;
use rjs_compute::trust::{AuthorRef, Change, EntryStatus, TrustEntry, TrustStore};
use rjs_signer::PublicKey;

#[derive(Parser)]
#[command(
    name = "rjs-compute",
    version,
    about = "RJS compute node: lend this PC to the grid, on the owner's terms"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the node keeps its files (for commands that need nothing else).
#[derive(Args, Clone, Debug)]
struct DataArgs {
    /// Data directory [default: $RJS_HOME/compute or ~/.local/share/rjs/compute].
    #[arg(long, value_name = "DIR", env = "RJS_COMPUTE_DATA", global = true)]
    data: Option<PathBuf>,
    /// Configuration file [default: <data>/node.toml].
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
}

impl DataArgs {
    fn load(&self) -> Result<NodeConfig> {
        Ok(NodeConfig::load(&Overrides {
            data_dir: self.data.clone(),
            config: self.config.clone(),
            ..Overrides::default()
        })?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Show this node's speed (MFLOPS), measuring it first if it was never measured.
    Bench {
        #[command(flatten)]
        data: DataArgs,
        /// Measure again even if a result is stored.
        #[arg(long)]
        rebench: bool,
        /// Print the stored result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run one task of a local bundle the way a job from the grid runs (verify, trust,
    /// sandbox, signed answer) and write its answer archive.
    Run {
        /// The bundle (.rjs).
        bundle: PathBuf,
        /// Task index.
        #[arg(long, default_value_t = 0)]
        task: u32,
        /// Answer archive to write (atomically).
        #[arg(short, long, value_name = "ANSWER.zip")]
        out: PathBuf,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Serve jobs from lookup servers over mutual TLS until SIGTERM/SIGINT, announcing the
    /// node on the LAN by mDNS (signed, every --announce-interval) unless --no-announce.
    Serve {
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
    },
    /// Enrol this node with a lookup server using a one-time token from `rjs-lookup token`:
    /// writes the node certificate, its key, the cluster CA and the assigned node id.
    Join {
        /// The join token (`rjs1-…`).
        token: String,
        #[command(flatten)]
        data: DataArgs,
        /// Node id to ask for [default: the lookup assigns `node-<n>`].
        #[arg(long, value_name = "ID")]
        id: Option<String>,
        /// DNS name or IP address lookups reach this node at, for its certificate (repeatable).
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
    },
    /// List, trust, block or forget job authors.
    Trust {
        #[command(flatten)]
        data: DataArgs,
        #[command(subcommand)]
        command: TrustCommand,
    },
}

/// Options of the commands that run jobs.
#[derive(Args, Clone, Debug)]
struct NodeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Node id [default: the id assigned at `join` (<data>/node-id), else `node-` and the node
    /// key's fingerprint prefix].
    #[arg(long, value_name = "ID")]
    node_id: Option<String>,
    /// Measure the speed again at start-up.
    #[arg(long)]
    rebench: bool,
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

#[derive(Subcommand)]
enum TrustCommand {
    /// List trusted and blocked authors.
    List,
    /// Trust an author's key: their jobs run without asking.
    Add {
        /// Public key: a .pub file, an `rjs-ed25519 <base64> [name]` line, or base64.
        pubkey: String,
        /// Label [default: the name on the key line, else "unnamed"].
        #[arg(long)]
        name: Option<String>,
    },
    /// Forget an author (trusted or blocked): they become unknown again.
    Remove {
        /// Fingerprint (xxxx-xxxx-…) or public key.
        author: String,
    },
    /// Block an author: their jobs are refused without asking.
    Block {
        /// Fingerprint (xxxx-xxxx-…) or public key.
        author: String,
        /// Label (kept from an existing entry if not given).
        #[arg(long)]
        name: Option<String>,
    },
}

fn main() -> ExitCode {
    // The sandbox's worker processes are this executable: dispatch before anything else
    // (no clap, no logging, no runtime) so the worker starts clean and fast.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(
            rjs_compute::sandbox::WORKER_SUBCOMMAND,
        ))
    {
        return rjs_compute::sandbox::worker_main();
    }
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let result = match cli.command {
        Command::Bench {
            data,
            rebench,
            json,
        } => cmd_bench(&data, rebench, json).map(|()| ExitCode::SUCCESS),
        Command::Join {
            token,
            data,
            id,
            hosts,
        } => cmd_join(&token, &data, id, hosts).map(|()| ExitCode::SUCCESS),
        Command::Trust { data, command } => cmd_trust(&data, command).map(|()| ExitCode::SUCCESS),
        Command::Run {
            bundle,
            task,
            out,
            node,
        } => cmd_run(&bundle, task, &out, &node),
        Command::Serve {
            node,
            announce,
            cert,
            key,
            ca,
            io_timeout,
        } => cmd_serve(&node, &announce, cert, key, ca, io_timeout),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("rjs-compute: error: {}", join_chain(&chain));
            ExitCode::from(1)
        }
    }
}

/// `outer: middle: root`, skipping a cause already contained in the text before it.
fn join_chain(parts: &[String]) -> String {
    let mut s = String::new();
    for p in parts {
        if s.ends_with(p.as_str()) {
            continue;
        }
        if !s.is_empty() {
            s.push_str(": ");
        }
        s.push_str(p);
    }
    s
}

fn cmd_join(token: &str, data: &DataArgs, id: Option<String>, hosts: Vec<String>) -> Result<()> {
    let token = rjs_wire::enrol::Token::parse(token)?;
    let config = data.load()?;
    let opts = rjs_compute::join::JoinOptions { node_id: id, hosts };
    let joined = runtime()?.block_on(rjs_compute::join::join(
        &token,
        &config.data_dir,
        &config.tls,
        &opts,
    ))?;
    println!(
        "enrolled as {}; certificate {}, key {}, cluster CA {}",
        joined.node_id,
        joined.cert.display(),
        joined.key.display(),
        joined.ca.display()
    );
    Ok(())
}

fn cmd_bench(data: &DataArgs, rebench: bool, json: bool) -> Result<()> {
    let config = data.load()?;
    if rebench || bench::load(&config.bench_file()).is_none() {
        eprintln!("measuring this node's speed (about a second)…");
    }
    let out = bench::load_or_run(&config.data_dir, rebench).context("benchmark")?;
    let r = &out.result;
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    let when = if out.fresh {
        format!("measured now, saved to {}", out.path.display())
    } else {
        format!(
            "measured {}, from {}; --rebench to measure again",
            date(r.measured_at),
            out.path.display()
        )
    };
    println!(
        "{:.1} MFLOPS (LU n={}, median of {} runs, {:.2} s measured, residual {:.2}; {when})",
        r.mflops, r.n, r.runs, r.seconds, r.residual
    );
    Ok(())
}

fn date(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

fn who(e: &TrustEntry) -> String {
    let name = if e.name.is_empty() { "-" } else { &e.name };
    format!("{name} ({})", e.fingerprint)
}

fn cmd_trust(data: &DataArgs, command: TrustCommand) -> Result<()> {
    let config = data.load()?;
    let store = TrustStore::open(&config.data_dir)?;
    match command {
        TrustCommand::List => {
            let list = store.list()?;
            if list.is_empty() {
                println!("no authors in {}", store.path().display());
                return Ok(());
            }
            let width = list.iter().map(|e| e.name.len()).max().unwrap_or(0).max(4);
            println!(
                "{:<8} {:<width$} {:<39} SINCE",
                "STATUS", "NAME", "FINGERPRINT"
            );
            for e in &list {
                let name = if e.name.is_empty() { "-" } else { &e.name };
                println!(
                    "{:<8} {:<width$} {:<39} {}",
                    e.status.as_str(),
                    name,
                    e.fingerprint.to_string(),
                    date(e.added_at)
                );
            }
        }
        TrustCommand::Add { pubkey, name } => {
            let (key, key_name) = PublicKey::load_or_parse(&pubkey)
                .with_context(|| format!("reading the public key {pubkey:?}"))?;
            let name = name.or(key_name).unwrap_or_else(|| "unnamed".into());
            let change = store.add(&key, &name)?;
            let fp = key.fingerprint();
            match change {
                Change::Added => println!("trusted {name} ({fp})"),
                Change::Changed { from } => {
                    println!("trusted {name} ({fp}), was {}", from.as_str())
                }
                Change::Unchanged => println!("{name} ({fp}) was already trusted"),
            }
        }
        TrustCommand::Remove { author } => {
            let (target, _) = AuthorRef::parse(&author)
                .with_context(|| format!("{author:?} is neither a fingerprint nor a public key"))?;
            let removed = store.remove(&target.fingerprint())?;
            println!("removed {}, was {}", who(&removed), removed.status.as_str());
        }
        TrustCommand::Block { author, name } => {
            let (target, key_name) = AuthorRef::parse(&author)
                .with_context(|| format!("{author:?} is neither a fingerprint nor a public key"))?;
            let name = name.or(key_name);
            let change = store.block(&target, name.as_deref())?;
            let entry = store
                .get(&target.fingerprint())?
                .context("the entry vanished")?;
            match change {
                Change::Added => println!("blocked {}", who(&entry)),
                Change::Changed { from } => {
                    println!("blocked {}, was {}", who(&entry), from.as_str())
                }
                Change::Unchanged => println!("{} was already blocked", who(&entry)),
            }
            debug_assert_eq!(entry.status, EntryStatus::Blocked);
        }
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn start_node(
    args: &NodeArgs,
    slots: Option<usize>,
    announce: Option<&AnnounceArgs>,
) -> Result<(tokio::runtime::Runtime, Arc<Node>)> {
    let mut overrides = args.config.overrides();
    if slots.is_some() {
        overrides.slots = slots;
    }
    if let Some(a) = announce {
        a.apply(&mut overrides);
    }
    let config = NodeConfig::load(&overrides)?;
    let rt = runtime()?;
    let node = rt
        .block_on(Node::start(
            config,
            StartOptions {
                node_id: args.node_id.clone(),
                rebench: args.rebench,
                worker_exe: None,
            },
        ))
        .context("starting the node")?;
    Ok((rt, Arc::new(node)))
}

/// Exit status of `run` when the node refuses the job (1 is an error, 2 a usage error).
const EXIT_REFUSED: u8 = 3;

fn cmd_run(
    bundle: &std::path::Path,
    task: u32,
    out: &std::path::Path,
    args: &NodeArgs,
) -> Result<ExitCode> {
    let bytes = rjs_signer::fsutil::read_bounded(
        bundle,
        rjs_signer::VerifyLimits::default().max_bundle_bytes,
    )
    .with_context(|| format!("reading the bundle {}", bundle.display()))?;
    let (rt, node) = start_node(args, Some(1), None)?;
    let result = rt.block_on(async {
        let admitted = match node.admit(Arc::new(bytes), None, task).await {
            Ok(a) => a,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let answer = node.execute(admitted).await?;
        anyhow::Ok(Ok(answer))
    });
    let outcome = match result? {
        Ok(answer) => {
            rjs_signer::fsutil::write_atomic(out, &answer.bytes, 0o644)
                .with_context(|| format!("writing the answer {}", out.display()))?;
            println!(
                "task {task}: {} in {} ms; answer {} ({} bytes, signed by node {})",
                answer.outcome,
                answer.result.wall_ms,
                out.display(),
                answer.bytes.len(),
                node.identity.id
            );
            ExitCode::SUCCESS
        }
        Err(refusal) => {
            println!("{refusal}");
            ExitCode::from(EXIT_REFUSED)
        }
    };
    if let Ok(node) = Arc::try_unwrap(node) {
        rt.block_on(node.sandbox.shutdown());
    }
    Ok(outcome)
}

fn cmd_serve(
    args: &NodeArgs,
    announce: &AnnounceArgs,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    io_timeout: Option<Duration>,
) -> Result<ExitCode> {
    if io_timeout.is_some_and(|t| t.is_zero()) {
        bail!("--io-timeout must be more than 0");
    }
    let timeouts = io_timeout.map_or_else(Timeouts::default, Timeouts::with_io);
    let (rt, node) = start_node(args, None, Some(announce))?;
    let tls_paths = &node.config.tls;
    let cert = cert.unwrap_or_else(|| tls_paths.cert.clone());
    let key = key.unwrap_or_else(|| tls_paths.key.clone());
    let ca = ca.unwrap_or_else(|| tls_paths.ca.clone());
    let chain = rjs_wire::tls::load_certs(&cert).context("loading the node certificate")?;
    let key = rjs_wire::tls::load_key(&key).context("loading the node key")?;
    let ca = rjs_wire::tls::load_certs(&ca).context("loading the cluster CA")?;
    let tls = rjs_wire::tls::server_config(chain, key, rjs_wire::tls::ClientAuth::Required(&ca))
        .context("building the TLS configuration")?;
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
    } else if announce.no_announce {
        println!("not announcing (--no-announce)");
    } else {
        println!("not announcing (announce.enabled = false)");
    }
    let served = rt.block_on(async {
        let shutdown = rjs_wire::shutdown::stop_signal();
        rjs_compute::server::serve_with(node.clone(), listener, Arc::new(tls), timeouts, shutdown)
            .await
            .context("serving jobs")
    });
    // SIGTERM/SIGINT (or a failure): unregister (mDNS goodbye) and stop the daemon first.
    if let Some(a) = announcer {
        a.shutdown();
    }
    served?;
    if let Ok(node) = Arc::try_unwrap(node) {
        rt.block_on(node.sandbox.shutdown());
    }
    Ok(ExitCode::SUCCESS)
}

/// Starts the signed mDNS announcer for a node whose job server listens on `addr`.
fn start_announcer(node: &Arc<Node>, addr: SocketAddr) -> Result<Announcer> {
    let settings = &node.config.announce;
    for name in &settings.interfaces {
        if !announce::interface_exists(name) {
            bail!("there is no network interface {name:?}");
        }
    }
    // The job server's own IP when it listens on a specific one; else the daemon fills in
    // the addresses of the interfaces it announces on.
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
        Err(e) => tracing::warn!("listing the network interfaces: {e}"),
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
