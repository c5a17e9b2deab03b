//! `rjs-lookup serve`: the lookup server as one service (`docs/lookup-server.md`).
//!
//! ```text
//!  web server ──lease──► puller ──► queue ──► dispatcher ──► lanes (one per node slot) ──► nodes
//!      ▲                   ▲                     ▲  fastest free node first    │ answer
//!      │                   └──── capacity ───────┴────────── done / refused ───┤
//!      └──────────────── relay ◄──────── spool (fsynced before the next offer) ◄┘
//! ```
//!
//! * The **puller** leases jobs in batches sized to the free slots of the live nodes (times a
//!   small prefetch factor), woken by the web server's event stream, by finished jobs and by a
//!   jittered timer; it backs off while the web server is down. A **renewer** keeps every
//!   held job's lease (queued, running, parked, spooled) alive.
//! * The **dispatcher** assigns each queued job to the fastest live node with a free slot
//!   that serves its group and has not refused it ([`Scheduler`]), and hands it to one of that
//!   node's **lanes**: one persistent mutual-TLS connection per slot.
//! * A refusal sends the job to the next node; when no node will take it, it is **parked**
//!   (still leased) with the reason, retried when the set of nodes changes or a refusal
//!   expires, and given back to the web server after `park` ([`ServeConfig::park`]).
//! * A node lost (broken connection, lease expiry) sends its running jobs back to the queue
//!   at once; a job lost with [`ServeConfig::max_losses`] nodes is reported failed upstream.
//! * Answers are spooled (fsynced) before the lane offers its next job, then relayed to the
//!   web server with retries ([`crate::spool`]).
//!
//! One module per part: `registry` (the enrolment registry, re-read when it changes),
//! `state` (the jobs held and the shared state), `puller` (puller and renewer),
//! `dispatcher`, `lanes` and `status` (the status socket's answers).

mod dispatcher;
mod health;
mod lanes;
mod pace;
mod puller;
mod registry;
mod state;
mod status;

pub use registry::LiveRegistry;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use rjs_cmd::chain;
use rjs_wire::api::MAX_BATCH;
use rjs_wire::ids::JobId;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::discovery::{Browser, DiscoveryConfig, MARKS_FILE};
use crate::dispatch::{PeerCheck, Scheduler};
use crate::enrol;
use crate::failover::WebServers;
use crate::spool::{AnswerSpool, RelayOptions};
use crate::upstream::{Timeouts, WebServerClient};
use dispatcher::dispatcher;
use health::{after_failover, heartbeat};
use puller::{puller, reclaimer, renewer};
use state::{Shared, State, wire_ids};
use status::shared_status;

/// Everything `rjs-lookup serve` is told.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The lookup's data directory (`rjs-lookup init`).
    pub data: PathBuf,
    /// The web servers (`https://host:port`), one store behind them all: the first is used
    /// first, the next when it fails ([`crate::failover`]).
    pub webservers: WebServers,
    /// The `rjs-webserver lookup add` credentials file.
    pub creds: PathBuf,
    /// Where the enrolment endpoint listens.
    pub enrol_listen: SocketAddr,
    /// Discovery: announcement interval, TTL, clock window, interfaces.
    pub discovery: DiscoveryConfig,
    /// Polling interval of the web server (jittered ±50%).
    pub poll: Duration,
    /// Lease duration asked of the web server (renewed every third of it).
    pub lease: Duration,
    /// Lease only jobs of these groups (all if empty).
    pub groups: Vec<String>,
    /// Jobs held per free slot (≥ 1): a little more than the free slots keeps every slot busy
    /// while the next lease is on its way.
    pub prefetch: u32,
    /// How long a job no node will take is held (and retried) before it is given back.
    pub park: Duration,
    /// How long a node's refusal of a job is remembered (the owner may change their mind).
    pub refusal_ttl: Duration,
    /// Nodes a job may be lost with before it is reported failed to the web server.
    pub max_losses: u32,
    /// Time added to a job's time limit while waiting for its answer (start-up, archive).
    pub answer_margin: Duration,
    /// Longest compilation of a job's module waited for (a node states its own limit; the
    /// lower holds).
    pub max_compile: Duration,
}

impl ServeConfig {
    pub fn new(data: PathBuf, webservers: WebServers, creds: PathBuf) -> Self {
        ServeConfig {
            data,
            webservers,
            creds,
            enrol_listen: SocketAddr::from(([0, 0, 0, 0], 7450)),
            discovery: DiscoveryConfig::default(),
            poll: Duration::from_secs(2),
            lease: Duration::from_secs(60),
            groups: Vec::new(),
            prefetch: 2,
            park: Duration::from_secs(60),
            refusal_ttl: Duration::from_secs(30),
            max_losses: 3,
            answer_margin: crate::dispatch::DEFAULT_ANSWER_MARGIN,
            max_compile: crate::dispatch::DEFAULT_MAX_COMPILE,
        }
    }

    /// The job lease asked of the web server, in whole seconds (5 s to 1 h).
    fn lease_secs(&self) -> u32 {
        self.lease.as_secs().clamp(5, 3600) as u32
    }
}

/// A running lookup server. Stops on [`Service::shutdown`].
pub struct Service {
    shared: Arc<Shared>,
    browser: Option<Browser>,
    tasks: Vec<JoinHandle<()>>,
    enrol_addr: SocketAddr,
    enrol_stop: Option<tokio::sync::oneshot::Sender<()>>,
    enrol_task: Option<JoinHandle<Result<()>>>,
    status_path: PathBuf,
}

impl Service {
    /// Starts everything: enrolment endpoint, discovery, puller, renewer, dispatcher, answer
    /// relay and the status socket. Must be called inside a tokio runtime.
    pub async fn start(cfg: ServeConfig) -> Result<Service> {
        let data = cfg.data.clone();
        enrol::ca_fingerprint(&data).with_context(|| {
            format!(
                "{} is not an initialised lookup (rjs-lookup init)",
                data.display()
            )
        })?;
        let registry = LiveRegistry::open(&data)?;

        let node_tls = enrol::node_client_tls(&data)?;

        let client = WebServerClient::with_webservers(
            cfg.webservers.clone(),
            &cfg.creds,
            &data.join("bundles"),
            Timeouts::default(),
        )
        .context("setting up the web server client")?;
        let spool = AnswerSpool::open(&data).context("opening the answer spool")?;

        let listener = tokio::net::TcpListener::bind(cfg.enrol_listen)
            .await
            .with_context(|| format!("listening for enrolment on {}", cfg.enrol_listen))?;
        let enrol_addr = listener.local_addr()?;
        let (enrol_stop, enrol_rx) = tokio::sync::oneshot::channel::<()>();
        let enrol_task = tokio::spawn(enrol::serve_enrolment(data.clone(), listener, async {
            let _ = enrol_rx.await;
        }));

        let discovery = DiscoveryConfig {
            marks_file: Some(data.join(MARKS_FILE)),
            ..cfg.discovery.clone()
        };
        let browser =
            Browser::start(discovery, registry.clone()).context("starting mDNS discovery")?;
        let reg = registry.clone();
        let peer_check: PeerCheck = Arc::new(move |id, sha| reg.is_node_cert(id, sha));
        let shared = Arc::new(Shared {
            table: browser.table(),
            client: client.clone(),
            spool: spool.clone(),
            node_tls,
            peer_check,
            registry,
            scheduler: Scheduler,
            state: Mutex::new(State::default()),
            dispatch: Notify::new(),
            capacity: Notify::new(),
            upstream_back: Notify::new(),
            reclaim: Notify::new(),
            bundles: tokio::sync::Mutex::new(HashMap::new()),
            lanes: Mutex::new(HashMap::new()),
            cfg,
        });

        let status_path = data.join(rjs_wire::status::SOCKET_FILE);
        let status = crate::status::serve(&status_path, shared_status(shared.clone()))
            .with_context(|| format!("opening the status socket {}", status_path.display()))?;

        let tasks = vec![
            spool.spawn_relay(client, RelayOptions::default()),
            tokio::spawn(heartbeat(shared.clone())),
            tokio::spawn(after_failover(shared.clone())),
            tokio::spawn(reclaimer(shared.clone())),
            tokio::spawn(puller(shared.clone())),
            tokio::spawn(renewer(shared.clone())),
            tokio::spawn(dispatcher(shared.clone())),
            status,
        ];
        Ok(Service {
            shared,
            browser: Some(browser),
            tasks,
            enrol_addr,
            enrol_stop: Some(enrol_stop),
            enrol_task: Some(enrol_task),
            status_path,
        })
    }

    /// Where the enrolment endpoint listens.
    pub fn enrol_addr(&self) -> SocketAddr {
        self.enrol_addr
    }

    /// The status socket.
    pub fn status_path(&self) -> &Path {
        &self.status_path
    }

    /// Stops: gives queued and parked jobs back to the web server, stops the lanes (running
    /// jobs' leases are given back too, so they run again elsewhere at once), relays what is
    /// spooled for up to `grace`, shuts discovery down.
    pub async fn shutdown(mut self, grace: Duration) {
        let held: Vec<JobId> = {
            let mut st = self.shared.lock();
            st.stopping = true;
            st.jobs.keys().copied().collect()
        };
        for t in &self.tasks {
            t.abort();
        }
        let lanes = std::mem::take(&mut *self.shared.lanes());
        for (_, l) in lanes {
            for t in l.tasks {
                t.abort();
            }
        }
        let client = self.shared.client.clone();
        let spool = self.shared.spool.clone();
        let _ = tokio::time::timeout(grace, async {
            for chunk in held.chunks(MAX_BATCH as usize) {
                if let Err(e) = client.release(&wire_ids(chunk)).await {
                    tracing::warn!(error = %chain(&e), "giving jobs back at shutdown");
                    break;
                }
            }
            let _ = spool.relay_once(&client, 16).await;
        })
        .await;
        if let Some(tx) = self.enrol_stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.enrol_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        let _ = std::fs::remove_file(&self.status_path);
        if let Some(b) = self.browser.take() {
            let _ = tokio::task::spawn_blocking(move || b.shutdown()).await;
        }
    }
}
