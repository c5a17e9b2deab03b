//! A whole RJS grid on this machine: one web server, one lookup server and `n` compute nodes,
//! each the real binary started as a child process, talking over loopback. Used by
//! `rjs demo`, by end-to-end tests and by benchmarks.
//!
//! Run it inside a private network namespace ([`crate::netns::enter_private`]): the lookup and the
//! nodes create mDNS daemons, which join multicast groups on every interface of the network
//! stack they start in.
//!
//! Layout of [`GridOptions::dir`] (see `docs/demo.md`):
//!
//! ```text
//! webserver/      rjs-webserver's data (CA, TLS certificate, SQLite, blobs)
//! lab.creds       the lookup's credentials for the web server (rjs-webserver lookup add)
//! lookup/         rjs-lookup's data (cluster CA, node registry, spool)
//! node-1 … node-n rjs-compute's data of each node (keys, certificate, trust store, bench.json)
//! author/         the demo author's key pair (demo.key, demo.pub) and packed bundles
//! logs/           one log per process (stderr, and stdout prefixed `[stdout]`) and setup.log
//! ```
//!
//! Processes are started from the calling thread, in their own process group, with
//! `PR_SET_PDEATHSIG` = SIGTERM: if the thread that started them dies (even by SIGKILL), they
//! are told to stop. So start and restart processes from one long-lived thread.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rjs_signer::KeyPair;
use rjs_signer::keys::{self, PublicKey};
use rjs_wire::api::{JobList, JobView, UploadResponse};

use crate::process::{self, Managed};
use crate::{netns, paths};

pub mod flood;
pub mod wan;

pub use rjs_signer::client::AuthorClient;
use rjs_signer::client::ServerUrl;
pub use rjs_wire::status::{Drops, JobWhere, NodeRow, NodesResponse, StatusResponse, WhyResponse};

/// Names of the binaries the grid runs.
pub const WEBSERVER_BIN: &str = "rjs-webserver";
pub const LOOKUP_BIN: &str = "rjs-lookup";
pub const COMPUTE_BIN: &str = "rjs-compute";

/// A callback told of each start-up step (`"web server listening on https://…"`).
pub type StepFn = Arc<dyn Fn(&str) + Send + Sync>;

/// What to start.
#[derive(Clone)]
pub struct GridOptions {
    /// Where everything is laid out; created if missing, must be empty.
    pub dir: PathBuf,
    /// Compute nodes (`node-1` … `node-n`).
    pub nodes: usize,
    /// Slots (concurrent jobs) of each node.
    pub slots_per_node: u32,
    /// How often nodes re-announce themselves (and the lookup's lease clock).
    pub announce_interval: Duration,
    /// Where `rjs-webserver`, `rjs-lookup` and `rjs-compute` are [default: next to the
    /// current executable (or its parent, for test executables in `deps/`), else the
    /// workspace's `target/release`, then `target/debug`].
    pub bin_dir: Option<PathBuf>,
    /// The interface nodes announce on and the lookup browses.
    pub interface: String,
    /// Longest wait for one process to report that it is ready.
    pub start_timeout: Duration,
    /// Longest wait for every node to appear in the lookup's panel.
    pub discovery_timeout: Duration,
    /// Longest wait for one process to exit after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
    /// Told of each start-up step.
    pub on_step: Option<StepFn>,
    /// Refuse to start unless the calling thread is in a network namespace whose only link
    /// is `lo` (see [`netns::enter_private`]). On by default: the lookup and the nodes create
    /// mDNS daemons, which must not join multicast groups on the host's interfaces. Turn it
    /// off only to run on a real LAN on purpose (`rjs demo --lan`).
    pub require_private_netns: bool,
    /// Settings of node `i` at index `i`; nodes beyond the vector get
    /// [`NodeOptions::default`].
    pub node_options: Vec<NodeOptions>,
    /// Extra arguments of `rjs-lookup serve` (e.g. `--lease 5s`), also on each restart.
    pub lookup_args: Vec<String>,
    /// Where the processes run [default: all in the calling thread's namespace, on
    /// loopback]. The multi-host tests put the lookup and each node on a host of their own
    /// ([`crate::hosts::Lan`]) and the web server behind a WAN link.
    pub placement: Placement,
    /// More `rjs-webserver serve` processes on the first one's data directory (one store,
    /// CA, certificate and blob folder: several stateless web servers), each on a loopback
    /// port of its own, logging to `logs/webserver-2.log`, …; the lookup is given every web
    /// server's URL (`--webserver` repeated), the first one's first [default: 0].
    pub extra_webservers: usize,
    /// Environment of every `rjs-webserver` command (`init`, `author add`, `lookup add`,
    /// `serve`): e.g. `RJS_STORE` for a shared PostgreSQL store, `RJS_BLOBS` and the S3
    /// settings for an object store [default: none].
    pub webserver_env: Vec<(String, String)>,
}

/// A process's host: a named network namespace, the address it listens on there and the
/// interface it announces on or browses.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    pub netns: String,
    pub addr: std::net::Ipv4Addr,
    pub interface: String,
}

/// Where the grid's processes run ([`GridOptions::placement`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placement {
    /// The lookup's host (else the caller's namespace).
    pub lookup: Option<Placed>,
    /// Node `i`'s host at index `i` (nodes beyond it: the caller's namespace).
    pub nodes: Vec<Placed>,
    /// Where the web server listens [default: `127.0.0.1:0`].
    pub webserver_listen: Option<String>,
    /// More names for the web server's certificate (beside 127.0.0.1): the address the
    /// lookup dials.
    pub webserver_hosts: Vec<String>,
    /// The URL the lookup is given for the web server (a WAN link's) [default: the one the
    /// web server says it listens on].
    pub lookup_webserver_url: Option<String>,
}

impl Placement {
    /// The lookup on `lan`'s host `lookup`, node `i` on `nodes[i]`, each on `eth0`.
    pub fn on_lan(lan: &crate::hosts::Lan, lookup: &str, nodes: &[&str]) -> Result<Placement> {
        let placed = |name: &str| -> Result<Placed> {
            let h = lan.host(name)?;
            Ok(Placed {
                netns: h.netns.clone(),
                addr: h.addr,
                interface: "eth0".to_owned(),
            })
        };
        Ok(Placement {
            lookup: Some(placed(lookup)?),
            nodes: nodes.iter().map(|n| placed(n)).collect::<Result<_>>()?,
            ..Placement::default()
        })
    }
}

/// Settings of one compute node of the grid ([`GridOptions::node_options`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeOptions {
    /// Whether the node trusts the grid's author (`rjs-compute trust add` at enrolment)
    /// [default: true]. The nodes have no terminal to ask on, so a node that does not trust
    /// the author refuses its jobs (`untrusted`).
    pub trust_author: bool,
    /// The node's speed: written to its `bench.json` at enrolment instead of letting it run
    /// its ~1 s benchmark at first start [default: measured]. Makes the scheduler's order
    /// (fastest first) predictable, and the grid start faster.
    pub mflops: Option<f64>,
    /// Extra arguments of `rjs-compute serve`.
    pub serve_args: Vec<String>,
    /// Whether [`LocalGrid::start`] starts the node [default: true]. A node not started is
    /// enrolled all the same (and trusts the author as set): [`LocalGrid::start_node`] starts
    /// it later, as a new node joining the running grid.
    pub start: bool,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            trust_author: true,
            mflops: None,
            serve_args: Vec::new(),
            start: true,
        }
    }
}

impl GridOptions {
    /// Two nodes of one slot each, announcing every 200 ms on `lo`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        GridOptions {
            dir: dir.into(),
            nodes: 2,
            slots_per_node: 1,
            announce_interval: Duration::from_millis(200),
            bin_dir: None,
            interface: "lo".to_owned(),
            start_timeout: Duration::from_secs(60),
            discovery_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(15),
            on_step: None,
            require_private_netns: true,
            node_options: Vec::new(),
            lookup_args: Vec::new(),
            placement: Placement::default(),
            extra_webservers: 0,
            webserver_env: Vec::new(),
        }
    }

    /// A grid for failover tests: `webservers` web servers on one store (the first and
    /// [`extra_webservers`](Self::extra_webservers)), a lookup leasing for `lease` and
    /// given all of their URLs, two nodes of two slots each at a fixed 1,000 MFLOPS.
    pub fn several_webservers(dir: impl Into<PathBuf>, webservers: usize, lease: Duration) -> Self {
        let mut opts = GridOptions::new(dir);
        opts.slots_per_node = 2;
        opts.node_options = vec![
            NodeOptions {
                mflops: Some(1000.0),
                ..NodeOptions::default()
            };
            opts.nodes
        ];
        opts.extra_webservers = webservers.saturating_sub(1);
        opts.lookup_args = vec!["--lease".into(), format!("{}s", lease.as_secs())];
        opts
    }

    /// The settings of node `i` (0-based).
    pub fn node(&self, i: usize) -> NodeOptions {
        self.node_options.get(i).cloned().unwrap_or_default()
    }
}

impl std::fmt::Debug for GridOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GridOptions")
            .field("dir", &self.dir)
            .field("nodes", &self.nodes)
            .field("slots_per_node", &self.slots_per_node)
            .field("announce_interval", &self.announce_interval)
            .field("bin_dir", &self.bin_dir)
            .field("interface", &self.interface)
            .field("require_private_netns", &self.require_private_netns)
            .field("node_options", &self.node_options)
            .field("lookup_args", &self.lookup_args)
            .field("placement", &self.placement)
            .field("extra_webservers", &self.extra_webservers)
            .field(
                "webserver_env",
                &self
                    .webserver_env
                    .iter()
                    .map(|(k, _)| k)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// An answer fetched by [`LocalGrid::fetch_answers`].
#[derive(Debug, Clone)]
pub struct FetchedAnswer {
    pub job: JobView,
    pub path: PathBuf,
}

/// A compute node of the grid.
#[derive(Debug)]
struct NodeSlot {
    /// `node-<i+1>`: its directory name and the id it enrols with.
    id: String,
    dir: PathBuf,
    proc: Option<Managed>,
    /// The job server's address, from its ready line.
    listen: Option<String>,
}

/// The binaries.
#[derive(Debug, Clone)]
struct Bins {
    webserver: PathBuf,
    lookup: PathBuf,
    compute: PathBuf,
}

/// A running grid. Dropping it stops everything it started ([`LocalGrid::stop`]).
pub struct LocalGrid {
    opts: GridOptions,
    bins: Bins,
    webserver: Option<Managed>,
    webserver_url: String,
    /// [`GridOptions::extra_webservers`]: each process and its URL.
    extra_webservers: Vec<(Managed, String)>,
    lookup: Option<Managed>,
    enrol_addr: Option<String>,
    status_socket: Option<PathBuf>,
    nodes: Vec<NodeSlot>,
    /// Holds the author's key.
    api: AuthorClient,
    stopped: bool,
}

impl std::fmt::Debug for LocalGrid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalGrid")
            .field("dir", &self.opts.dir)
            .field("webserver_url", &self.webserver_url)
            .field("enrol_addr", &self.enrol_addr)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

/// Author name of the grid's fresh key (also the bundle signer name).
pub const AUTHOR: &str = "demo";
/// Name of the lookup server at the web server.
pub const LOOKUP_NAME: &str = "lab";

impl LocalGrid {
    /// Lays out `opts.dir` and starts the web server, the lookup server and the nodes; returns
    /// when the lookup's panel lists every node. On error everything started is stopped.
    pub fn start(opts: GridOptions) -> Result<LocalGrid> {
        check_options(&opts)?;
        let bins = find_bins(opts.bin_dir.as_deref())?;
        prepare_dir(&opts.dir)?;
        let logs = opts.dir.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;

        // 1. The web server, its author and its lookup.
        let author = init_webserver(&opts, &bins)?;
        let (webserver, webserver_url) = serve_webserver(&opts, &bins)?;
        tell(&opts, &format!("web server listening on {webserver_url}"));
        let server = ServerUrl::parse(&webserver_url)
            .with_context(|| format!("the web server's URL {webserver_url:?}"))?;
        let ca = opts.dir.join("webserver").join("ca.pem");
        let api = AuthorClient::with_ca_file(server, &ca, author)?;
        let mut grid = LocalGrid::new(opts, bins, webserver, webserver_url, api);
        // From here on, an error drops `grid`, which stops what was started.
        for i in 0..grid.opts.extra_webservers {
            let log = format!("webserver-{}.log", i + 2);
            let (proc, url) = serve_webserver_as(&grid.opts, &grid.bins, "127.0.0.1:0", &log)?;
            grid.step(&format!("web server {} listening on {url}", i + 2));
            grid.extra_webservers.push((proc, url));
        }

        // 2. The lookup server.
        let mut init = Command::new(&grid.bins.lookup);
        init.arg("init").arg("--data").arg(grid.lookup_dir());
        if let Some(p) = &grid.opts.placement.lookup {
            init.args(["--host", "127.0.0.1", "--host", &p.addr.to_string()]);
        }
        grid.setup_run("rjs-lookup init", &mut init)?;
        grid.start_lookup()?;

        // 3. The nodes: enrol, trust the author, serve.
        for i in 0..grid.nodes.len() {
            grid.enrol_node(i)?;
            if grid.opts.node(i).start {
                grid.start_node(i)?;
            }
        }

        // 4. Discovered by the lookup.
        let panel = grid.wait_for_nodes(grid.opts.discovery_timeout)?;
        grid.step(&discovered(&panel));
        Ok(grid)
    }

    /// The grid of a running web server, with its nodes laid out but not started.
    fn new(
        opts: GridOptions,
        bins: Bins,
        webserver: Managed,
        webserver_url: String,
        api: AuthorClient,
    ) -> LocalGrid {
        LocalGrid {
            nodes: (1..=opts.nodes)
                .map(|i| NodeSlot {
                    id: format!("node-{i}"),
                    dir: opts.dir.join(format!("node-{i}")),
                    proc: None,
                    listen: None,
                })
                .collect(),
            opts,
            bins,
            webserver: Some(webserver),
            webserver_url,
            extra_webservers: Vec::new(),
            lookup: None,
            enrol_addr: None,
            status_socket: None,
            api,
            stopped: false,
        }
    }

    /// Runs a set-up command to its end ([`setup_run`]).
    fn setup_run(&self, name: &str, cmd: &mut Command) -> Result<String> {
        setup_run(&self.opts, name, cmd)
    }

    fn step(&self, s: &str) {
        tell(&self.opts, s)
    }

    fn logs(&self) -> PathBuf {
        self.opts.dir.join("logs")
    }

    /// The options the grid was started with.
    pub fn options(&self) -> &GridOptions {
        &self.opts
    }

    /// The grid's directory.
    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }

    /// `https://127.0.0.1:PORT`.
    pub fn webserver_url(&self) -> &str {
        &self.webserver_url
    }

    /// Every web server's URL: the first one's, then those of
    /// [`GridOptions::extra_webservers`] (one store behind them all).
    pub fn webserver_urls(&self) -> Vec<String> {
        std::iter::once(self.webserver_url.clone())
            .chain(self.extra_webservers.iter().map(|(_, u)| u.clone()))
            .collect()
    }

    /// The author's API client through web server `n` of [`webserver_urls`](Self::webserver_urls)
    /// (0-based), trusting the grid's CA.
    pub fn author_client_at(&self, n: usize) -> Result<AuthorClient> {
        let urls = self.webserver_urls();
        let url = urls
            .get(n)
            .with_context(|| format!("no web server {n}: the grid has {}", urls.len()))?;
        let server =
            ServerUrl::parse(url).with_context(|| format!("the web server's URL {url:?}"))?;
        let key = KeyPair::load(&self.author_key_path())
            .with_context(|| format!("loading {}", self.author_key_path().display()))?;
        Ok(AuthorClient::with_ca_file(
            server,
            &self.webserver_ca(),
            key,
        )?)
    }

    /// The web server's CA certificate.
    pub fn webserver_ca(&self) -> PathBuf {
        self.opts.dir.join("webserver").join("ca.pem")
    }

    pub fn lookup_dir(&self) -> PathBuf {
        self.opts.dir.join("lookup")
    }

    /// The lookup's enrolment endpoint, while it runs.
    pub fn enrol_addr(&self) -> Option<&str> {
        self.enrol_addr.as_deref()
    }

    /// The lookup's status socket, as its ready line named it.
    pub fn status_socket(&self) -> Option<&Path> {
        self.status_socket.as_deref()
    }

    /// The demo author's key pair (trusted by every node, enrolled at the web server).
    pub fn author_key(&self) -> &KeyPair {
        self.api.key()
    }

    /// `author/demo.key`.
    pub fn author_key_path(&self) -> PathBuf {
        self.opts.dir.join("author").join(format!("{AUTHOR}.key"))
    }

    /// The author API client.
    pub fn api(&self) -> &AuthorClient {
        &self.api
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The id of node `i` (0-based: node `i` is `node-<i+1>`).
    pub fn node_id(&self, i: usize) -> Result<&str> {
        Ok(&self.node(i)?.id)
    }

    /// The data directory of node `i`.
    pub fn node_dir(&self, i: usize) -> Result<&Path> {
        Ok(&self.node(i)?.dir)
    }

    /// The address node `i`'s job server listens on, once started.
    pub fn node_addr(&self, i: usize) -> Result<Option<&str>> {
        Ok(self.node(i)?.listen.as_deref())
    }

    /// The ed25519 key node `i` signs its answers with (`node.pub` in its directory).
    pub fn node_public_key(&self, i: usize) -> Result<PublicKey> {
        let path = self.node(i)?.dir.join("node.pub");
        let (key, _) = PublicKey::load_or_parse(&path.to_string_lossy())
            .with_context(|| format!("reading node key {}", path.display()))?;
        Ok(key)
    }

    /// The index of the node with id `node_id`.
    pub fn node_index(&self, node_id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == node_id)
    }

    fn node(&self, i: usize) -> Result<&NodeSlot> {
        self.nodes
            .get(i)
            .with_context(|| format!("no node {i}: the grid has {} nodes", self.nodes.len()))
    }

    /// The process id of node `i`, if it runs.
    pub fn node_pid(&self, i: usize) -> Result<Option<i32>> {
        Ok(self.node(i)?.proc.as_ref().map(Managed::pid))
    }

    /// The lookup server's process id, if it runs.
    pub fn lookup_pid(&self) -> Option<i32> {
        self.lookup.as_ref().map(Managed::pid)
    }

    /// The web server's process id, if it runs.
    pub fn webserver_pid(&self) -> Option<i32> {
        self.webserver.as_ref().map(Managed::pid)
    }

    /// Starts `rjs-lookup serve` (again, after [`LocalGrid::kill_lookup`]) and waits for its
    /// ready line.
    pub fn start_lookup(&mut self) -> Result<()> {
        if let Some(p) = &mut self.lookup
            && p.try_exit()?.is_none()
        {
            bail!("the lookup server is already running (pid {})", p.pid());
        }
        let l = self.lookup_dir();
        let interval = format!("{}ms", self.opts.announce_interval.as_millis());
        let creds = self.opts.dir.join(format!("{LOOKUP_NAME}.creds"));
        let place = &self.opts.placement;
        let url = place
            .lookup_webserver_url
            .as_deref()
            .unwrap_or(&self.webserver_url);
        let (enrol_listen, interface) = match &place.lookup {
            Some(p) => (format!("{}:0", p.addr), p.interface.as_str()),
            None => ("127.0.0.1:0".to_owned(), self.opts.interface.as_str()),
        };
        let mut cmd = Command::new(&self.bins.lookup);
        if let Some(p) = &place.lookup {
            crate::hosts::place(&p.netns, &mut cmd)?;
        }
        cmd.arg("serve")
            .arg("--data")
            .arg(&l)
            .arg("--webserver")
            .arg(url);
        for (_, more) in &self.extra_webservers {
            cmd.arg("--webserver").arg(more);
        }
        cmd.arg("--creds")
            .arg(&creds)
            .args(["--enrol-listen", &enrol_listen, "--interface", interface])
            .arg("--announce-interval")
            .arg(&interval)
            .args(&self.opts.lookup_args);
        self.lookup = None;
        let (proc, line) = process::spawn_ready(
            "lookup server",
            cmd,
            &self.logs().join("lookup.log"),
            "lookup ready: ",
            self.opts.start_timeout,
        )?;
        self.lookup = Some(proc);
        // `lookup ready: enrolment on 127.0.0.1:PORT, status socket L/status.sock`
        let rest = after(&line, "lookup ready: ")
            .with_context(|| format!("unexpected ready line of the lookup: {line:?}"))?;
        let enrol = after(rest, "enrolment on ")
            .map(|s| s.split(',').next().unwrap_or(s).trim().to_owned())
            .with_context(|| format!("no enrolment address in the lookup's ready line {line:?}"))?;
        self.status_socket = after(rest, "status socket ").map(|s| PathBuf::from(s.trim()));
        self.step(&format!("lookup server ready, enrolment on {enrol}"));
        self.enrol_addr = Some(enrol);
        Ok(())
    }

    /// Sends `signal` to the lookup server; for SIGTERM, SIGINT and SIGKILL also waits for
    /// its exit (SIGKILL after the stop timeout) and returns the status.
    pub fn kill_lookup(&mut self, signal: i32) -> Result<Option<ExitStatus>> {
        let p = self.lookup.as_mut();
        signal_and_wait(p, "the lookup server", signal, self.opts.stop_timeout)
    }

    /// Sends `signal` to the web server (SIGSTOP and SIGCONT to pause it and let it go on);
    /// for SIGTERM, SIGINT and SIGKILL also waits for its exit (SIGKILL after the stop
    /// timeout) and returns the status ([`LocalGrid::restart_webserver`] starts it again).
    pub fn kill_webserver(&mut self, signal: i32) -> Result<Option<ExitStatus>> {
        let p = self.webserver.as_mut();
        signal_and_wait(p, "the web server", signal, self.opts.stop_timeout)
    }

    /// Sends `signal` to web server `n` (2, 3, …: the [`GridOptions::extra_webservers`]; 1
    /// is [`LocalGrid::kill_webserver`]'s); for SIGTERM, SIGINT and SIGKILL also waits for its
    /// exit and returns the status.
    pub fn kill_extra_webserver(&mut self, n: usize, signal: i32) -> Result<Option<ExitStatus>> {
        let Some((p, _)) = n
            .checked_sub(2)
            .and_then(|i| self.extra_webservers.get_mut(i))
        else {
            bail!("there is no web server {n}");
        };
        signal_and_wait(Some(p), "a web server", signal, self.opts.stop_timeout)
    }

    /// Starts the web server again after [`LocalGrid::kill_webserver`], on the address it
    /// had (the placement must fix its port: [`Placement::webserver_listen`]).
    pub fn restart_webserver(&mut self) -> Result<()> {
        if let Some(p) = &mut self.webserver
            && p.try_exit()?.is_none()
        {
            bail!("the web server is already running (pid {})", p.pid());
        }
        let (proc, url) = serve_webserver(&self.opts, &self.bins)?;
        self.webserver = Some(proc);
        if url != self.webserver_url {
            bail!(
                "the web server came back on {url}, not {}: fix its port \
                 (Placement::webserver_listen)",
                self.webserver_url
            );
        }
        Ok(())
    }

    /// Enrols node `i` (`rjs-lookup token` + `rjs-compute join`) and makes it trust the
    /// grid's author. Needs the lookup server running.
    fn enrol_node(&mut self, i: usize) -> Result<()> {
        let enrol = self
            .enrol_addr
            .clone()
            .context("the lookup server is not running: no enrolment endpoint")?;
        let token = self.setup_run(
            "rjs-lookup token",
            Command::new(&self.bins.lookup)
                .arg("token")
                .arg("--data")
                .arg(self.lookup_dir())
                .arg("--addr")
                .arg(&enrol),
        )?;
        let token = token.trim();
        let node = self.node(i)?;
        let (id, dir) = (&node.id, &node.dir);
        let mut join = Command::new(&self.bins.compute);
        let host = match self.opts.placement.nodes.get(i) {
            Some(p) => {
                crate::hosts::place(&p.netns, &mut join)?;
                p.addr.to_string()
            }
            None => "127.0.0.1".to_owned(),
        };
        self.setup_run(
            &format!("rjs-compute join ({id})"),
            join.args(["join", token, "--data"])
                .arg(dir)
                .args(["--id", id, "--host", &host]),
        )?;
        let settings = self.opts.node(i);
        if settings.trust_author {
            let public = self.opts.dir.join("author").join(format!("{AUTHOR}.pub"));
            self.setup_run(
                &format!("rjs-compute trust add ({id})"),
                Command::new(&self.bins.compute)
                    .args(["trust", "add"])
                    .arg(&public)
                    .arg("--data")
                    .arg(dir),
            )?;
        }
        if let Some(mflops) = settings.mflops {
            write_bench(dir, mflops)?;
        }
        Ok(())
    }

    /// Starts node `i`'s `rjs-compute serve` (again, after [`LocalGrid::kill_node`]) and waits
    /// for its ready line. (It does not wait for the lookup to see it: see
    /// [`LocalGrid::wait_for_nodes`].)
    pub fn start_node(&mut self, i: usize) -> Result<()> {
        let interval = format!("{}ms", self.opts.announce_interval.as_millis());
        let slots = self.opts.slots_per_node.to_string();
        let (listen, interface) = match self.opts.placement.nodes.get(i) {
            Some(p) => (format!("{}:0", p.addr), p.interface.clone()),
            None => ("127.0.0.1:0".to_owned(), self.opts.interface.clone()),
        };
        let netns = self.opts.placement.nodes.get(i).map(|p| p.netns.clone());
        let timeout = self.opts.start_timeout;
        let compute = self.bins.compute.clone();
        let settings = self.opts.node(i);
        let log = self.logs().join(format!("{}.log", self.node(i)?.id));
        let node = self
            .nodes
            .get_mut(i)
            .with_context(|| format!("no node {i}"))?;
        if let Some(p) = &mut node.proc
            && p.try_exit()?.is_none()
        {
            bail!("{} is already running (pid {})", node.id, p.pid());
        }
        node.proc = None;
        let mut cmd = Command::new(&compute);
        if let Some(ns) = &netns {
            crate::hosts::place(ns, &mut cmd)?;
        }
        cmd.arg("serve")
            .arg("--data")
            .arg(&node.dir)
            .args(["--slots", &slots, "--listen", &listen])
            .args(["--interface", &interface, "--announce-interval", &interval]);
        // Task scratch directories on RAM when the machine has /dev/shm, as a PC owner may
        // choose (`--scratch-dir`, docs/compute-node.md): a tiny task's files then cost no
        // disk inode churn.
        let shm = Path::new("/dev/shm");
        if shm.is_dir() && !settings.serve_args.iter().any(|a| a == "--scratch-dir") {
            cmd.arg("--scratch-dir").arg(shm);
        }
        cmd.args(&settings.serve_args);
        let (proc, line) = process::spawn_ready(&node.id, cmd, &log, " listening on ", timeout)?;
        node.listen = after(&line, " listening on ").map(|s| s.trim().to_owned());
        node.proc = Some(proc);
        // `node ID (N MFLOPS, S slots) listening on ADDR`
        if let Some(want) = settings.mflops {
            let said = line
                .split_once(" (")
                .and_then(|(_, r)| r.split_once(" MFLOPS"))
                .and_then(|(n, _)| n.trim().parse::<u64>().ok());
            if said != Some(want.round() as u64) {
                bail!(
                    "{} was to run at {want} MFLOPS (from its bench.json) but says {line:?}: \
                     did the format of bench.json change?",
                    node.id
                );
            }
        }
        let msg = format!("{}: {}", node.id, line.trim());
        self.step(&msg);
        Ok(())
    }

    /// Sends `signal` to node `i` (SIGSTOP and SIGCONT too); for SIGTERM, SIGINT and SIGKILL
    /// also waits for its exit (SIGKILL after the stop timeout) and returns the status.
    pub fn kill_node(&mut self, i: usize, signal: i32) -> Result<Option<ExitStatus>> {
        let timeout = self.opts.stop_timeout;
        let node = self
            .nodes
            .get_mut(i)
            .with_context(|| format!("no node {i}"))?;
        signal_and_wait(node.proc.as_mut(), &node.id, signal, timeout)
    }

    /// Runs `rjs-lookup ARGS --data L --json` and parses what it prints.
    fn lookup_json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> Result<T> {
        let name = format!("rjs-lookup {}", args.join(" "));
        let out = process::run(
            &name,
            Command::new(&self.bins.lookup)
                .args(args)
                .arg("--data")
                .arg(self.lookup_dir())
                .arg("--json"),
            None,
            Duration::from_secs(10),
        )?;
        serde_json::from_str(&out)
            .with_context(|| format!("parsing what {name} --json printed: {out:?}"))
    }

    /// The lookup's node panel (`rjs-lookup nodes --data L --json`).
    pub fn nodes_panel(&self) -> Result<NodesResponse> {
        self.lookup_json(&["nodes"])
    }

    /// Why job `job` is (not) running, as the lookup sees it (`rjs-lookup why JOB --data L
    /// --json`).
    pub fn why(&self, job: i64) -> Result<WhyResponse> {
        self.lookup_json(&["why", &job.to_string()])
    }

    /// The lookup's status once nothing is left in it (no answer spooled, no job queued or
    /// running), within `within`; panics otherwise (a test's check).
    pub fn settled_lookup_status(&self, within: Duration) -> StatusResponse {
        crate::wait::poll_until(
            within,
            Duration::from_millis(50),
            || self.lookup_status().unwrap_or_else(|e| panic!("{e:#}")),
            |s| s.spooled == 0 && s.queued == 0 && s.running == 0,
            |s| format!("the lookup did not settle: {s:?}"),
        )
    }

    /// The lookup's counters (`rjs-lookup status --data L --json`).
    pub fn lookup_status(&self) -> Result<StatusResponse> {
        self.lookup_json(&["status"])
    }

    /// Waits until the panel lists every running node; returns the panel.
    pub fn wait_for_nodes(&self, timeout: Duration) -> Result<NodesResponse> {
        let want: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| n.proc.is_some())
            .map(|n| n.id.as_str())
            .collect();
        let deadline = Instant::now() + timeout;
        loop {
            let panel = self.nodes_panel();
            if let Ok(p) = &panel
                && want
                    .iter()
                    .all(|id| p.nodes.iter().any(|r| r.node_id == *id))
            {
                return panel;
            }
            crate::signals::check().context("waiting for the lookup to discover the nodes")?;
            if Instant::now() >= deadline {
                let seen = match &panel {
                    Ok(p) => format!(
                        "it lists [{}]",
                        p.nodes
                            .iter()
                            .map(|r| r.node_id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    Err(e) => format!("the last panel read failed: {}", rjs_cmd::chain(e.as_ref())),
                };
                bail!(
                    "the lookup did not list nodes [{}] within {timeout:?} ({seen}); {}",
                    want.join(", "),
                    process::tail_note(&self.logs().join("lookup.log"))
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Packs and signs the job folder `job_dir` with the author key; writes the bundle into
    /// `author/` and returns its path.
    pub fn pack(&self, job_dir: &Path) -> Result<PathBuf> {
        let (bytes, manifest) =
            rjs_signer::pack_dir(job_dir, self.api.key(), AUTHOR, rjs_signer::unix_now())
                .with_context(|| format!("packing {}", job_dir.display()))?;
        let id = rjs_signer::bundle::hex(&rjs_signer::bundle_id(&bytes));
        let path =
            self.opts
                .dir
                .join("author")
                .join(format!("{}-{}.rjs", manifest.name, &id[..12]));
        rjs_signer::fsutil::write_atomic(&path, &bytes, 0o644)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Uploads a bundle through the author API.
    pub fn upload(&self, bundle: &Path) -> Result<UploadResponse> {
        let limit = rjs_signer::VerifyLimits::default().max_bundle_bytes;
        let bytes = rjs_signer::fsutil::read_bounded(bundle, limit)
            .with_context(|| format!("reading {}", bundle.display()))?;
        self.api
            .upload(bytes, false)
            .with_context(|| format!("uploading {}", bundle.display()))
    }

    /// The author's jobs (newest submission first).
    pub fn status(&self) -> Result<JobList> {
        Ok(self.api.jobs(None)?)
    }

    /// The end of each process's log (lookup, web server, every node), for a failure
    /// message.
    pub fn log_tails(&self) -> String {
        let mut names = vec!["lookup".to_owned(), "webserver".to_owned()];
        names.extend((0..self.extra_webservers.len()).map(|i| format!("webserver-{}", i + 2)));
        names.extend(self.nodes.iter().map(|n| n.id.clone()));
        names
            .iter()
            .map(|n| process::tail_note(&self.opts.dir.join("logs").join(format!("{n}.log"))))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The jobs of `bundle`, in task order, once all `tasks` of them are done or failed.
    /// Panics after `timeout`, with the jobs' states and the logs' tails.
    pub fn wait_final(&self, bundle: &str, tasks: usize, timeout: Duration) -> Vec<JobView> {
        let mut jobs = crate::wait::poll_until(
            timeout,
            Duration::from_millis(50),
            || {
                self.api
                    .jobs(Some(bundle))
                    .map(|l| l.jobs)
                    .unwrap_or_default()
            },
            |jobs| jobs.len() == tasks && jobs.iter().all(|j| j.state.is_final()),
            |jobs| {
                format!(
                    "the {tasks} jobs of bundle {bundle} did not all finish within \
                     {timeout:?}: {}\n{}",
                    states(jobs),
                    self.log_tails()
                )
            },
        );
        jobs.sort_by_key(|j| j.task);
        jobs
    }

    /// Downloads the answer of every done job into `out_dir/<name>-<bundle id prefix>/task-<N>.zip`
    /// (for a bundle submitted more than once, the newest job of each task); answers already
    /// there are not downloaded again. Returns them by bundle and task.
    pub fn fetch_answers(&self, out_dir: &Path) -> Result<Vec<FetchedAnswer>> {
        let jobs = self.status()?.jobs;
        let mut seen = std::collections::HashSet::new();
        let mut fetched = Vec::new();
        // Newest submission first: the first job of each (bundle, task) is the current one.
        for job in jobs {
            if !seen.insert((job.bundle_id.clone(), job.task)) {
                continue;
            }
            if job.state != rjs_wire::api::JobState::Done {
                continue;
            }
            if !rjs_signer::bundle::is_sha256_hex(&job.bundle_id)
                || !rjs_signer::manifest::valid_job_name(&job.name)
            {
                bail!("the web server sent a job with a bad bundle id or name: {job:?}");
            }
            let folder = out_dir.join(format!("{}-{}", job.name, &job.bundle_id[..12]));
            let path = folder.join(format!("task-{}.zip", job.task));
            if !path.is_file() {
                let bytes = self
                    .api
                    .answer_bytes(job.id)
                    .with_context(|| format!("fetching the answer of job {}", job.id))?;
                std::fs::create_dir_all(&folder)
                    .with_context(|| format!("creating {}", folder.display()))?;
                rjs_signer::fsutil::write_atomic(&path, &bytes, 0o644)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            fetched.push(FetchedAnswer { job, path });
        }
        fetched.sort_by(|a, b| (&a.job.bundle_id, a.job.task).cmp(&(&b.job.bundle_id, b.job.task)));
        Ok(fetched)
    }

    /// Stops everything: SIGTERM to the lookup, the nodes and the web server, waits up to the
    /// stop timeout, SIGKILLs what is left. Fails (after stopping everything) if a process
    /// had to be killed or exited with an error.
    pub fn stop(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let mut problems = Vec::new();
        // Our own kept-alive connection would hold the web server's graceful stop for 10 s.
        if let Err(e) = self.api.disconnect() {
            problems.push(rjs_cmd::chain(&e));
        }
        let mut procs: Vec<&mut Managed> = Vec::new();
        if let Some(p) = self.lookup.as_mut() {
            procs.push(p);
        }
        for n in self.nodes.iter_mut() {
            if let Some(p) = n.proc.as_mut() {
                procs.push(p);
            }
        }
        if let Some(p) = self.webserver.as_mut() {
            procs.push(p);
        }
        for (p, _) in self.extra_webservers.iter_mut() {
            procs.push(p);
        }
        let mut signalled = vec![false; procs.len()];
        for (p, signalled) in procs.iter_mut().zip(signalled.iter_mut()) {
            match p.try_exit() {
                Ok(Some(status)) if !p.asked_to_exit => problems.push(format!(
                    "{} had exited ({}) before the grid was stopped; {}",
                    p.name,
                    process::describe(status),
                    p.log_note()
                )),
                Ok(Some(_)) => {}
                Ok(None) => {
                    // A process stopped with SIGSTOP would not act on SIGTERM.
                    let sent = p
                        .signal(libc::SIGTERM)
                        .and_then(|()| p.signal(libc::SIGCONT));
                    match sent {
                        Ok(()) => *signalled = true,
                        Err(e) => problems.push(rjs_cmd::chain(e.as_ref())),
                    }
                }
                Err(e) => problems.push(rjs_cmd::chain(e.as_ref())),
            }
        }
        let deadline = Instant::now() + self.opts.stop_timeout;
        for (p, signalled) in procs.iter_mut().zip(signalled) {
            if !signalled {
                continue;
            }
            match p.wait_until(deadline) {
                Ok(Some(status)) => {
                    // Servers exit 0 on SIGTERM; one still starting may die of it.
                    if !(status.success() || status.signal() == Some(libc::SIGTERM)) {
                        problems.push(format!(
                            "{} exited with {} after SIGTERM; {}",
                            p.name,
                            process::describe(status),
                            p.log_note()
                        ));
                    }
                }
                Ok(None) => {
                    p.kill9();
                    problems.push(format!(
                        "{} did not exit within {:?} of SIGTERM and was killed; {}",
                        p.name,
                        self.opts.stop_timeout,
                        p.log_note()
                    ));
                }
                Err(e) => problems.push(rjs_cmd::chain(e.as_ref())),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("stopping the grid: {}", problems.join("\n"))
        }
    }
}

impl Drop for LocalGrid {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("rjs: {}", rjs_cmd::chain(e.as_ref()));
        }
    }
}

/// Refuses options no grid can start with, and a start outside a private network namespace
/// unless asked for.
fn check_options(opts: &GridOptions) -> Result<()> {
    if opts.nodes == 0 {
        bail!("a grid needs at least one node");
    }
    if opts.require_private_netns && !netns::is_isolated() {
        bail!(
            "refusing to start a grid outside a private network namespace (its mDNS \
             daemons would join multicast groups on this machine's interfaces): call \
             rjs_harness::netns::enter_private() first, or set require_private_netns = false \
             to run on the real network on purpose"
        );
    }
    Ok(())
}

/// Tells `opts.on_step` of a start-up step.
fn tell(opts: &GridOptions, step: &str) {
    if let Some(f) = &opts.on_step {
        f(step)
    }
}

/// Runs a set-up command to its end, logged to `logs/setup.log`, within the start timeout;
/// returns its standard output.
fn setup_run(opts: &GridOptions, name: &str, cmd: &mut Command) -> Result<String> {
    let setup_log = opts.dir.join("logs").join("setup.log");
    process::run(name, cmd, Some(&setup_log), opts.start_timeout)
}

/// `rjs-webserver init` in `webserver/`, a fresh author key pair in `author/` enrolled as
/// [`AUTHOR`], and the lookup [`LOOKUP_NAME`] with its credentials. Returns the author's key.
fn init_webserver(opts: &GridOptions, bins: &Bins) -> Result<KeyPair> {
    let w = opts.dir.join("webserver");
    let webserver = || {
        let mut c = Command::new(&bins.webserver);
        c.envs(opts.webserver_env.iter().map(|(k, v)| (k, v)));
        c
    };
    let mut init = webserver();
    init.arg("init")
        .arg("--data")
        .arg(&w)
        .args(["--host", "127.0.0.1"]);
    for h in &opts.placement.webserver_hosts {
        init.args(["--host", h]);
    }
    setup_run(opts, "rjs-webserver init", &mut init)?;
    let author = KeyPair::generate();
    let files = keys::write_key_pair(&author, AUTHOR, &opts.dir.join("author"), false)
        .context("writing the demo author's key pair")?;
    setup_run(
        opts,
        "rjs-webserver author add",
        webserver()
            .args(["author", "add", AUTHOR, "--key"])
            .arg(&files.public)
            .arg("--data")
            .arg(&w),
    )?;
    let creds = opts.dir.join(format!("{LOOKUP_NAME}.creds"));
    setup_run(
        opts,
        "rjs-webserver lookup add",
        webserver()
            .args(["lookup", "add", LOOKUP_NAME, "-o"])
            .arg(&creds)
            .arg("--data")
            .arg(&w),
    )?;
    Ok(author)
}

/// Starts `rjs-webserver serve` on a free loopback port; returns it and its URL.
fn serve_webserver(opts: &GridOptions, bins: &Bins) -> Result<(Managed, String)> {
    let listen = opts
        .placement
        .webserver_listen
        .as_deref()
        .unwrap_or("127.0.0.1:0");
    serve_webserver_as(opts, bins, listen, "webserver.log")
}

/// Starts `rjs-webserver serve` of the grid's web server data on `listen`, logging to
/// `logs/<log>`; returns it and its URL.
fn serve_webserver_as(
    opts: &GridOptions,
    bins: &Bins,
    listen: &str,
    log: &str,
) -> Result<(Managed, String)> {
    let mut serve = Command::new(&bins.webserver);
    serve
        .envs(opts.webserver_env.iter().map(|(k, v)| (k, v)))
        .arg("serve")
        .arg("--data")
        .arg(opts.dir.join("webserver"))
        .args(["--listen", listen]);
    let (webserver, line) = process::spawn_ready(
        "web server",
        serve,
        &opts.dir.join("logs").join(log),
        "listening on ",
        opts.start_timeout,
    )?;
    let url = after(&line, "listening on ")
        .with_context(|| format!("no URL in the web server's ready line {line:?}"))?
        .to_owned();
    Ok((webserver, url))
}

/// `lookup sees 2 nodes: node-1 (900 MFLOPS), node-2 (450 MFLOPS)`.
fn discovered(panel: &NodesResponse) -> String {
    format!(
        "lookup sees {} node{}: {}",
        panel.nodes.len(),
        if panel.nodes.len() == 1 { "" } else { "s" },
        panel
            .nodes
            .iter()
            .map(|r| format!("{} ({} MFLOPS)", r.node_id, r.mflops))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Sends `signal` to `p` (`what`, if it runs); for SIGTERM, SIGINT and SIGKILL also waits
/// up to `timeout` for its exit (SIGKILL after it) and returns the status.
fn signal_and_wait(
    p: Option<&mut Managed>,
    what: &str,
    signal: i32,
    timeout: Duration,
) -> Result<Option<ExitStatus>> {
    let p = p.with_context(|| format!("{what} is not running"))?;
    p.signal(signal)?;
    if ![libc::SIGTERM, libc::SIGINT, libc::SIGKILL].contains(&signal) {
        return Ok(None);
    }
    if signal != libc::SIGKILL {
        // A stopped process must run to act on the signal.
        let _ = p.signal(libc::SIGCONT);
    }
    match p.wait_until(Instant::now() + timeout)? {
        Some(s) => Ok(Some(s)),
        None => {
            p.kill9();
            bail!(
                "{} did not exit within {timeout:?} of {} and was killed; {}",
                p.name,
                crate::signals::signal_name(signal),
                p.log_note()
            )
        }
    }
}

/// Writes `<node dir>/bench.json` as `rjs-compute` stores its benchmark result
/// (`compute/src/bench.rs`), so that the node starts at once with this speed.
fn write_bench(node_dir: &Path, mflops: f64) -> Result<()> {
    if !(mflops.is_finite() && mflops >= 1.0) {
        bail!("a node's speed must be at least 1 MFLOPS, not {mflops}");
    }
    let bench = serde_json::json!({
        "mflops": mflops,
        "n": 500,
        "runs": 3,
        "seconds": 1.0,
        "residual": 1.0,
        "measured_at": rjs_signer::unix_now(),
        // rjs-compute re-measures a result of another version; the workspace shares one.
        "program_version": env!("CARGO_PKG_VERSION"),
    });
    let path = node_dir.join("bench.json");
    let mut json = serde_json::to_vec_pretty(&bench).context("serialising bench.json")?;
    json.push(b'\n');
    rjs_signer::fsutil::write_atomic(&path, &json, 0o644)
        .with_context(|| format!("writing {}", path.display()))
}

/// Checks that `jobs` (sorted here by task) are every task of `bundle` (`0..tasks`) once,
/// each done with exit 0, and that each answer, read through `client`, verifies, is that
/// task's, names the node the job names and printed `hello, GREETING from task I/TASKS` (the
/// `hello` sample run with `args: [GREETING]`). A test's check: panics, naming the job, on
/// the first difference.
pub fn check_hello_answers(
    client: &AuthorClient,
    jobs: &mut [JobView],
    bundle: &str,
    greeting: &str,
    tasks: u32,
) {
    use rjs_signer::answer::{AnswerLimits, Ending, verify_answer};
    jobs.sort_by_key(|j| j.task);
    assert_eq!(
        jobs.iter().map(|j| j.task).collect::<Vec<_>>(),
        (0..tasks).collect::<Vec<_>>(),
        "every task once"
    );
    let ids: std::collections::BTreeSet<i64> = jobs.iter().map(|j| j.id).collect();
    assert_eq!(ids.len(), tasks as usize, "one job per task");
    for j in jobs.iter() {
        assert_eq!(j.state, rjs_wire::api::JobState::Done, "{j:?}");
        assert_eq!(j.outcome.as_deref(), Some("exit 0"), "{j:?}");
        let bytes = client
            .answer_bytes(j.id)
            .unwrap_or_else(|e| panic!("job {}'s answer: {}", j.id, rjs_cmd::chain(&e)));
        let v = verify_answer(&bytes, &AnswerLimits::default())
            .unwrap_or_else(|e| panic!("job {}: {}", j.id, rjs_cmd::chain(&e)));
        let r = v.result();
        assert_eq!(
            (
                r.task_index,
                r.bundle_sha256.as_str(),
                Some(r.node_id.as_str())
            ),
            (j.task, bundle, j.node.as_deref()),
            "job {}",
            j.id
        );
        assert_eq!(r.ending, Ending::Exit { code: 0 }, "job {}", j.id);
        assert_eq!(
            String::from_utf8_lossy(v.stdout()).trim(),
            format!("hello, {greeting} from task {}/{tasks}", j.task),
            "job {}",
            j.id
        );
    }
}

/// `3 done on node-1, 1 leased` …: where a list of jobs stands.
pub fn states(jobs: &[JobView]) -> String {
    let mut by: std::collections::BTreeMap<String, usize> = Default::default();
    for j in jobs {
        let key = match &j.node {
            Some(n) => format!("{} on {n}", j.state.as_str()),
            None => j.state.as_str().to_owned(),
        };
        *by.entry(key).or_default() += 1;
    }
    by.iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A copy of the `hello` sample in `dst` with `tasks` tasks, each greeting `arg`.
pub fn hello_job(dst: &Path, arg: &str, tasks: u32) -> Result<()> {
    job_copy(&paths::sample("hello"), dst, |m| {
        m.insert("args".into(), serde_json::json!([arg]));
        m.insert("tasks".into(), tasks.into());
    })
}

/// Copies the job folder `src` (its files, and its input folders whole) into `dst`
/// (created), its `manifest.json` changed by `edit` (e.g. another task count).
pub fn job_copy(
    src: &Path,
    dst: &Path,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Result<()> {
    copy_tree(src, dst)?;
    let path = dst.join("manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))?;
    edit(
        manifest
            .as_object_mut()
            .context("manifest.json is not an object")?,
    );
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Copies the regular files and folders under `src` into `dst` (created).
fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&entry.path(), &dst.join(entry.file_name()))?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), dst.join(entry.file_name()))
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// The text after `marker` in `line`.
fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.split_once(marker).map(|(_, r)| r.trim())
}

/// Creates `dir` or checks that it is empty.
pub fn prepare_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut entries =
        std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    if entries.next().is_some() {
        bail!(
            "{} is not empty: a grid is laid out in a new or empty directory",
            dir.display()
        );
    }
    Ok(())
}

/// Where the grid's binaries are: `explicit`, else the first of the candidate folders that
/// holds all three.
fn find_bins(explicit: Option<&Path>) -> Result<Bins> {
    let in_dir = |d: &Path| -> Option<Bins> {
        let b = Bins {
            webserver: d.join(WEBSERVER_BIN),
            lookup: d.join(LOOKUP_BIN),
            compute: d.join(COMPUTE_BIN),
        };
        (b.webserver.is_file() && b.lookup.is_file() && b.compute.is_file()).then_some(b)
    };
    if let Some(d) = explicit {
        return in_dir(d).with_context(|| {
            format!(
                "{} does not hold {WEBSERVER_BIN}, {LOOKUP_BIN} and {COMPUTE_BIN}",
                d.display()
            )
        });
    }
    let candidates = bin_candidates();
    for d in &candidates {
        if let Some(b) = in_dir(d) {
            return Ok(b);
        }
    }
    bail!(
        "cannot find {WEBSERVER_BIN}, {LOOKUP_BIN} and {COMPUTE_BIN} in {}: build them first \
         (cargo build --release --workspace --bins)",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Next to the running executable ([`paths::profile_dir`]), then the workspace's
/// `target/release` and `target/debug`.
fn bin_candidates() -> Vec<PathBuf> {
    let target = paths::target_dir();
    vec![
        paths::profile_dir(),
        target.join("release"),
        target.join("debug"),
    ]
}
