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

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use rjs_signer::bundle::{VerifyLimits, verify_signed};
use rjs_signer::keys::PublicKey;
use rjs_wire::api::{Lease, MAX_BATCH, MAX_REASON};
use rjs_wire::node::RefusalCode;
use rjs_wire::status::{
    Drops, JobWhere, NodeRow, NodesResponse, StatusRequest, StatusResponse, WhyResponse,
};
use rustls::ClientConfig;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::discovery::{Browser, DiscoveryConfig, KeyDirectory, NodeView};
use crate::dispatch::{
    DispatchError, JobOffer, JobOutcome, NodeClient, NodeId, PeerCheck, Scheduler, Why,
};
use crate::enrol::{self, Registry};
use crate::spool::{AnswerSpool, RelayOptions};
use crate::upstream::{Poller, Timeouts, WebServerClient, chain};

/// Everything `rjs-lookup serve` is told.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The lookup's data directory (`rjs-lookup init`).
    pub data: PathBuf,
    /// The web server's base URL (`https://host:port`).
    pub webserver: String,
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
}

impl ServeConfig {
    pub fn new(data: PathBuf, webserver: String, creds: PathBuf) -> Self {
        ServeConfig {
            data,
            webserver,
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
        }
    }
}

// ---------------------------------------------------------------------------------------
// The registry, re-read when enrolment or `nodes remove` changes it

/// The enrolment registry, re-read whenever `nodes.json` changes (a node enrolled by the
/// running endpoint, or revoked by `rjs-lookup nodes remove` from another process).
pub struct LiveRegistry {
    path: PathBuf,
    data: PathBuf,
    cached: Mutex<(Option<SystemTime>, Registry)>,
}

impl LiveRegistry {
    pub fn open(data: &Path) -> Result<Arc<Self>> {
        let me = LiveRegistry {
            path: data.join(enrol::NODES_FILE),
            data: data.to_owned(),
            cached: Mutex::new((None, Registry::default())),
        };
        me.with(|_| ())?;
        Ok(Arc::new(me))
    }

    fn with<T>(&self, f: impl FnOnce(&Registry) -> T) -> Result<T> {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .with_context(|| format!("reading {}", self.path.display()))?;
        let mut c = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if c.0 != Some(mtime) {
            c.1 = Registry::load(&self.data)?;
            c.0 = Some(mtime);
        }
        Ok(f(&c.1))
    }

    /// Keeps the nodes enrolled and not revoked (none if the registry cannot be read), with
    /// one look at the registry for them all.
    pub fn retain_active(&self, nodes: &mut Vec<NodeView>) {
        let read = self
            .with(|r| nodes.retain(|n| r.get(&n.node_id).is_some_and(|e| e.revoked_at.is_none())));
        if read.is_err() {
            nodes.clear();
        }
    }

    /// Whether `cert_sha256` is node `node_id`'s enrolled, unrevoked certificate.
    pub fn is_node_cert(&self, node_id: &str, cert_sha256: &str) -> bool {
        self.with(|r| {
            r.get(node_id)
                .is_some_and(|n| n.revoked_at.is_none() && n.cert_sha256 == cert_sha256)
        })
        .unwrap_or(false)
    }
}

impl KeyDirectory for LiveRegistry {
    fn key_of(&self, node_id: &str) -> Option<PublicKey> {
        self.with(|r| {
            let n = r.get(node_id)?;
            if n.revoked_at.is_some() {
                return None;
            }
            PublicKey::parse(&n.node_key).ok().map(|(k, _)| k)
        })
        .ok()
        .flatten()
    }
}

// ---------------------------------------------------------------------------------------
// State

#[derive(Debug, Clone)]
enum Place {
    Queued,
    Running { node: NodeId },
    Parked { why: Why, since: Instant },
}

#[derive(Debug)]
struct Job {
    lease: Lease,
    place: Place,
    /// Nodes that refused it, with the code and when.
    refusals: HashMap<NodeId, (RefusalCode, Instant)>,
    /// Nodes it was lost with.
    losses: u32,
}

impl Job {
    /// Who refused it, and why.
    fn refusal_codes(&self) -> HashMap<NodeId, RefusalCode> {
        self.refusals
            .iter()
            .map(|(n, (c, _))| (n.clone(), *c))
            .collect()
    }
}

#[derive(Debug, Default)]
struct NodeStats {
    busy: u32,
    done: u64,
    failed: u64,
    refused: u64,
    /// Not offered anything until then (it was unreachable or said it was busy).
    cool_until: Option<Instant>,
}

/// One live node's lanes.
struct Lanes {
    addr: SocketAddr,
    tx: mpsc::UnboundedSender<i64>,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Default)]
struct Counters {
    leased: u64,
    answers: u64,
    refusals: u64,
    lost: u64,
    released: u64,
}

#[derive(Default)]
struct State {
    jobs: HashMap<i64, Job>,
    queue: VecDeque<i64>,
    stats: HashMap<NodeId, NodeStats>,
    /// Jobs given back or answered, for `why` (bounded).
    history: HashMap<i64, (JobWhere, Option<NodeId>, String)>,
    history_order: VecDeque<i64>,
    counters: Counters,
    upstream_down: bool,
    /// Set when the nodes changed or a refusal may have expired: parked jobs are retried.
    retry_parked: bool,
    stopping: bool,
}

const MAX_HISTORY: usize = 100_000;

impl State {
    fn remember(&mut self, job: i64, place: JobWhere, node: Option<NodeId>, why: String) {
        if self.history.insert(job, (place, node, why)).is_none() {
            self.history_order.push_back(job);
            while self.history_order.len() > MAX_HISTORY {
                if let Some(old) = self.history_order.pop_front() {
                    self.history.remove(&old);
                }
            }
        }
    }

    /// `nodes` with their free slots as this lookup can use them: the total less the jobs it
    /// runs there, and none while a node cools down (when `cooling_at` is given, which also
    /// leaves out nodes without an address).
    fn usable(&self, nodes: &[NodeView], cooling_at: Option<Instant>) -> Vec<NodeView> {
        nodes
            .iter()
            .filter(|n| cooling_at.is_none() || !n.addresses.is_empty())
            .cloned()
            .map(|mut n| {
                let s = self.stats.get(&n.node_id);
                let busy = s.map_or(0, |s| s.busy);
                let cooling = cooling_at
                    .is_some_and(|now| s.and_then(|s| s.cool_until).is_some_and(|t| t > now));
                n.free_slots = if cooling {
                    0
                } else {
                    n.total_slots.saturating_sub(busy)
                };
                n
            })
            .collect()
    }

    fn count(&self, f: impl Fn(&Place) -> bool) -> u64 {
        self.jobs.values().filter(|j| f(&j.place)).count() as u64
    }
}

/// A verified bundle kept in memory for dispatch.
struct BundleInfo {
    bytes: Arc<Vec<u8>>,
    time_limit: Duration,
}

struct Shared {
    cfg: ServeConfig,
    client: WebServerClient,
    spool: Arc<AnswerSpool>,
    table: Arc<Mutex<crate::discovery::NodeTable>>,
    node_tls: Arc<ClientConfig>,
    peer_check: PeerCheck,
    registry: Arc<LiveRegistry>,
    scheduler: Scheduler,
    state: Mutex<State>,
    /// Something changed that may let the dispatcher place a job.
    dispatch: Notify,
    /// Capacity was freed: the puller may lease more.
    capacity: Notify,
    bundles: tokio::sync::Mutex<HashMap<String, Arc<BundleInfo>>>,
    /// The lanes of each live node.
    lanes: Mutex<HashMap<NodeId, Lanes>>,
}

/// Parked jobs held before they count against the lease budget.
const MAX_PARKED: u64 = 512;

/// Bundles kept verified in memory.
const MAX_BUNDLES: usize = 64;

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lanes(&self) -> MutexGuard<'_, HashMap<NodeId, Lanes>> {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live nodes: leases not expired, and not revoked since (a revocation by
    /// `rjs-lookup nodes remove` takes effect here at once, not at the lease's end).
    fn nodes(&self) -> Vec<NodeView> {
        let mut nodes = self
            .table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .nodes(Instant::now());
        self.registry.retain_active(&mut nodes);
        nodes
    }

    /// The bundle `id`, fetched (ETag cache on disk) and verified once.
    async fn bundle(&self, id: &str) -> Result<Arc<BundleInfo>, String> {
        let mut cache = self.bundles.lock().await;
        if let Some(b) = cache.get(id) {
            return Ok(b.clone());
        }
        let fetched = self
            .client
            .fetch_bundle(id)
            .await
            .map_err(|e| format!("fetching bundle {id}: {}", chain(&e)))?;
        let path = fetched.path.clone();
        let info = tokio::task::spawn_blocking(move || -> Result<BundleInfo, String> {
            let bytes =
                rjs_signer::fsutil::read_bounded(&path, VerifyLimits::default().max_bundle_bytes)
                    .map_err(|e| format!("reading {}: {}", path.display(), chain(&e)))?;
            let signed = verify_signed(&bytes, &VerifyLimits::default())
                .map_err(|e| format!("bundle does not verify: {}", chain(&e)))?;
            let time_limit = Duration::from_millis(signed.manifest().limits.time_ms);
            Ok(BundleInfo {
                bytes: Arc::new(bytes),
                time_limit,
            })
        })
        .await
        .map_err(|e| format!("verifying bundle {id}: {e}"))??;
        if cache.len() >= MAX_BUNDLES
            && let Some(k) = cache.keys().next().cloned()
        {
            cache.remove(&k);
        }
        let info = Arc::new(info);
        cache.insert(id.to_owned(), info.clone());
        Ok(info)
    }
}

// ---------------------------------------------------------------------------------------
// The service

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

        let ca = rjs_wire::tls::load_certs(&data.join(enrol::CA_FILE))?;
        let chain_certs = rjs_wire::tls::load_certs(&data.join(enrol::CLIENT_CERT_FILE))?;
        let key = rjs_wire::tls::load_key(&data.join(enrol::CLIENT_KEY_FILE))?;
        let leaf: Vec<_> = chain_certs
            .into_iter()
            .filter(|c| !ca.contains(c))
            .collect();
        let node_tls = Arc::new(
            rjs_wire::tls::client_config(&ca, Some((leaf, key)))
                .context("building the TLS client configuration for nodes")?,
        );

        let client = WebServerClient::new(
            &cfg.webserver,
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

        let browser = Browser::start(cfg.discovery.clone(), registry.clone())
            .context("starting mDNS discovery")?;
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
            bundles: tokio::sync::Mutex::new(HashMap::new()),
            lanes: Mutex::new(HashMap::new()),
            cfg,
        });

        let status_path = data.join(rjs_wire::status::SOCKET_FILE);
        let status = crate::status::serve(&status_path, shared_status(shared.clone()))
            .with_context(|| format!("opening the status socket {}", status_path.display()))?;

        let tasks = vec![
            spool.spawn_relay(client, RelayOptions::default()),
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
        let held: Vec<i64> = {
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
                if let Err(e) = client.release(chunk).await {
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

// ---------------------------------------------------------------------------------------
// Puller and renewer

/// Slots of the live nodes this lookup may still fill.
fn free_capacity(shared: &Shared, nodes: &[NodeView]) -> u64 {
    let st = shared.lock();
    let slots: u64 = nodes.iter().map(|n| u64::from(n.total_slots)).sum();
    let target = slots * u64::from(shared.cfg.prefetch.max(1));
    // Parked jobs hold no slot, but past a bound they stop further leasing (a queue of
    // jobs nobody here will run must not be leased whole).
    let parked = st.count(|p| matches!(p, Place::Parked { .. }));
    let held = st.jobs.len() as u64 - parked + parked.saturating_sub(MAX_PARKED);
    target.saturating_sub(held)
}

async fn puller(shared: Arc<Shared>) {
    let (events, _events_task) = shared.client.events();
    let mut poller = Poller::new(Some(events), shared.cfg.poll)
        .with_backoff(Duration::from_millis(250), Duration::from_secs(30));
    let lease_secs = shared.cfg.lease.as_secs().clamp(5, 3600) as u32;
    // Whether the last lease came back short (the web server's queue looked empty): then
    // only an event or the timer leads to another lease, not every finished job.
    let mut drained = false;
    loop {
        let want = free_capacity(&shared, &shared.nodes()).min(u64::from(MAX_BATCH));
        if want > 0 {
            match shared
                .client
                .lease(want as u32, &shared.cfg.groups, lease_secs)
                .await
            {
                Ok(resp) => {
                    poller.report_ok();
                    let n = resp.leases.len();
                    drained = (n as u64) < want;
                    take_leases(&shared, resp.leases);
                    if !drained {
                        continue;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "leasing jobs failed; backing off");
                    poller.report_down();
                    shared.lock().upstream_down = true;
                }
            }
        }
        if drained || poller.is_down() {
            poller.next_wake().await;
            drained = false;
        } else {
            // No capacity: wait for a slot to free up (or the timer, in case).
            tokio::select! {
                _ = poller.next_wake() => {}
                _ = shared.capacity.notified() => {}
            }
        }
    }
}

/// Adds freshly leased jobs to the queue.
fn take_leases(shared: &Shared, leases: Vec<Lease>) {
    let n = leases.len();
    let mut st = shared.lock();
    st.upstream_down = false;
    for lease in leases {
        let id = lease.job_id;
        if st.jobs.contains_key(&id) {
            continue;
        }
        st.counters.leased += 1;
        st.jobs.insert(
            id,
            Job {
                lease,
                place: Place::Queued,
                refusals: HashMap::new(),
                losses: 0,
            },
        );
        st.queue.push_back(id);
    }
    drop(st);
    if n > 0 {
        tracing::debug!(jobs = n, "leased");
        shared.dispatch.notify_one();
    }
}

async fn renewer(shared: Arc<Shared>) {
    let lease_secs = shared.cfg.lease.as_secs().clamp(5, 3600) as u32;
    let every = Duration::from_secs(u64::from(lease_secs)) / 3;
    loop {
        tokio::time::sleep(every).await;
        let mut ids: Vec<i64> = shared.lock().jobs.keys().copied().collect();
        let spool = shared.spool.clone();
        if let Ok(Ok(spooled)) = tokio::task::spawn_blocking(move || spool.pending()).await {
            ids.extend(spooled);
        }
        ids.sort_unstable();
        ids.dedup();
        for chunk in ids.chunks(MAX_BATCH as usize) {
            match shared.client.renew(chunk, lease_secs).await {
                Ok(r) => {
                    if !r.lost.is_empty() {
                        let mut st = shared.lock();
                        for id in &r.lost {
                            if let Some(j) = st.jobs.get(id)
                                && !matches!(j.place, Place::Running { .. })
                            {
                                st.jobs.remove(id);
                                st.queue.retain(|q| q != id);
                            }
                        }
                        tracing::warn!(jobs = ?r.lost, "leases lost (expired or taken back)");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "renewing leases failed");
                    break;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Dispatcher

async fn dispatcher(shared: Arc<Shared>) {
    let mut known: HashMap<NodeId, SocketAddr> = HashMap::new();
    let tick = (shared.cfg.discovery.ttl / 10)
        .clamp(Duration::from_millis(20), Duration::from_millis(250));
    loop {
        let _ = tokio::time::timeout(tick, shared.dispatch.notified()).await;
        let nodes = shared.nodes();
        sync_lanes(&shared, &nodes, &mut known);
        release_overdue(&shared).await;
        assign(&shared, &nodes);
    }
}

/// Starts lanes for new nodes, stops those of nodes gone (their running jobs go back to the
/// queue at once).
fn sync_lanes(shared: &Arc<Shared>, nodes: &[NodeView], known: &mut HashMap<NodeId, SocketAddr>) {
    let mut live: HashMap<NodeId, SocketAddr> = HashMap::new();
    for n in nodes {
        if let Some(ip) = n.addresses.first() {
            live.insert(n.node_id.clone(), SocketAddr::new(*ip, n.port));
        }
    }
    let gone: Vec<NodeId> = known
        .iter()
        .filter(|(id, addr)| live.get(*id) != Some(addr))
        .map(|(id, _)| id.clone())
        .collect();
    let mut changed = false;
    for id in gone {
        known.remove(&id);
        stop_lanes(shared, &id);
        changed = true;
    }
    for n in nodes {
        let Some(addr) = live.get(&n.node_id).copied() else {
            continue;
        };
        if known.contains_key(&n.node_id) {
            continue;
        }
        known.insert(n.node_id.clone(), addr);
        start_lanes(shared, n, addr);
        changed = true;
    }
    if changed {
        shared.lock().retry_parked = true;
        shared.capacity.notify_one();
    }
}

fn start_lanes(shared: &Arc<Shared>, n: &NodeView, addr: SocketAddr) {
    tracing::info!(node = %n.node_id, %addr, slots = n.total_slots, mflops = n.mflops, "node joined");
    let (tx, rx) = mpsc::unbounded_channel::<i64>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let slots = n.total_slots.clamp(1, 256);
    let tasks = (0..slots)
        .map(|_| {
            let client = NodeClient::new(n.node_id.clone(), addr, shared.node_tls.clone())
                .with_peer_check(shared.peer_check.clone());
            tokio::spawn(lane(shared.clone(), client, rx.clone()))
        })
        .collect();
    shared.lock().stats.entry(n.node_id.clone()).or_default();
    if let Some(old) = shared
        .lanes()
        .insert(n.node_id.clone(), Lanes { addr, tx, tasks })
    {
        old.tasks.iter().for_each(|t| t.abort());
    }
}

fn stop_lanes(shared: &Arc<Shared>, node: &str) {
    let removed = shared.lanes().remove(node);
    if let Some(l) = removed {
        tracing::info!(node, addr = %l.addr, "node gone (lease expired or moved)");
        l.tasks.iter().for_each(|t| t.abort());
    }
    // Its running jobs go to other nodes now.
    let mut st = shared.lock();
    let lost: Vec<i64> = st
        .jobs
        .iter()
        .filter(|(_, j)| matches!(&j.place, Place::Running { node: n } if n == node))
        .map(|(id, _)| *id)
        .collect();
    for id in lost {
        job_lost(shared, &mut st, id, node, "the node's lease expired");
    }
    if let Some(s) = st.stats.get_mut(node) {
        s.busy = 0;
    }
}

/// A job lost with `node`: back to the front of the queue, or reported failed after
/// `max_losses` nodes.
fn job_lost(shared: &Arc<Shared>, st: &mut State, id: i64, node: &str, reason: &str) {
    st.counters.lost += 1;
    if let Some(s) = st.stats.get_mut(node) {
        s.failed += 1;
    }
    let Some(job) = st.jobs.get_mut(&id) else {
        return;
    };
    job.losses += 1;
    if job.losses >= shared.cfg.max_losses {
        let why = format!("lost with {} nodes, last {node}: {reason}", job.losses);
        st.jobs.remove(&id);
        st.remember(id, JobWhere::Released, None, why.clone());
        report_failure(shared, id, why);
    } else {
        job.place = Place::Queued;
        st.queue.push_front(id);
    }
    shared.dispatch.notify_one();
}

/// Tells the web server that job `id` could not be run (it queues it again or fails it).
fn report_failure(shared: &Shared, id: i64, why: String) {
    let client = shared.client.clone();
    tokio::spawn(async move {
        let mut why: String = why.chars().filter(|c| !c.is_control()).collect();
        if why.len() > MAX_REASON {
            let mut cut = MAX_REASON - 3;
            while !why.is_char_boundary(cut) {
                cut -= 1;
            }
            why.truncate(cut);
            why.push('…');
        }
        if let Err(e) = client.fail(id, &why).await {
            tracing::warn!(job = id, error = %chain(&e), "reporting a failure");
        }
    });
}

/// Gives back jobs parked longer than `park`.
async fn release_overdue(shared: &Arc<Shared>) {
    let now = Instant::now();
    let overdue: Vec<i64> = {
        let mut st = shared.lock();
        let ids: Vec<(i64, String)> = st
            .jobs
            .iter()
            .filter_map(|(id, j)| match &j.place {
                Place::Parked { why, since } if now.duration_since(*since) >= shared.cfg.park => {
                    Some((*id, why.sentence()))
                }
                _ => None,
            })
            .collect();
        for (id, why) in &ids {
            st.jobs.remove(id);
            st.counters.released += 1;
            st.remember(
                *id,
                JobWhere::Released,
                None,
                format!("given back to the web server: {why}"),
            );
        }
        ids.into_iter().map(|(id, _)| id).collect()
    };
    if overdue.is_empty() {
        return;
    }
    let client = shared.client.clone();
    tokio::spawn(async move {
        for chunk in overdue.chunks(MAX_BATCH as usize) {
            if let Err(e) = client.release(chunk).await {
                tracing::warn!(error = %chain(&e), "giving parked jobs back");
            }
        }
    });
}

/// Places queued jobs on the fastest free nodes; parks those no node will take.
fn assign(shared: &Arc<Shared>, nodes: &[NodeView]) {
    let now = Instant::now();
    let mut st = shared.lock();
    if st.stopping {
        return;
    }
    // Refusals expire; parked jobs are retried when the nodes changed or a refusal expired.
    let ttl = shared.cfg.refusal_ttl;
    let mut expired = false;
    for j in st.jobs.values_mut() {
        let before = j.refusals.len();
        j.refusals
            .retain(|_, (_, at)| now.duration_since(*at) < ttl);
        expired |= j.refusals.len() != before;
    }
    if std::mem::take(&mut st.retry_parked) || expired {
        let parked: Vec<i64> = st
            .jobs
            .iter()
            .filter(|(_, j)| matches!(j.place, Place::Parked { .. }))
            .map(|(id, _)| *id)
            .collect();
        for id in parked {
            if let Some(j) = st.jobs.get_mut(&id) {
                j.place = Place::Queued;
                st.queue.push_back(id);
            }
        }
    }
    // The nodes as this lookup can use them now.
    let mut views = st.usable(nodes, Some(now));
    let mut free: u32 = views.iter().map(|n| n.free_slots).sum();
    let mut keep = VecDeque::new();
    while let Some(id) = st.queue.pop_front() {
        if free == 0 {
            keep.push_back(id);
            continue;
        }
        let Some(job) = st.jobs.get(&id) else {
            continue;
        };
        if !matches!(job.place, Place::Queued) {
            continue;
        }
        let refused: HashSet<NodeId> = job.refusals.keys().cloned().collect();
        let group = job.lease.group.clone();
        match shared.scheduler.pick(&group, &views, &refused) {
            Some(node) => {
                let sent = shared
                    .lanes()
                    .get(&node)
                    .is_some_and(|lanes| lanes.tx.send(id).is_ok());
                if !sent {
                    keep.push_back(id);
                    continue;
                }
                if let Some(v) = views.iter_mut().find(|v| v.node_id == node) {
                    v.free_slots -= 1;
                }
                free -= 1;
                st.stats.entry(node.clone()).or_default().busy += 1;
                if let Some(j) = st.jobs.get_mut(&id) {
                    j.place = Place::Running { node };
                }
            }
            None => {
                let codes = job.refusal_codes();
                match shared.scheduler.why(&group, nodes, &codes) {
                    Some(why @ (Why::NoNodeInGroup | Why::RefusedBy { .. })) => {
                        tracing::info!(job = id, why = %why, "parked");
                        if let Some(j) = st.jobs.get_mut(&id) {
                            j.place = Place::Parked { why, since: now };
                        }
                    }
                    _ => keep.push_back(id),
                }
            }
        }
    }
    st.queue = keep;
}

// ---------------------------------------------------------------------------------------
// Lanes

/// One slot of one node: takes the jobs assigned to the node, one at a time, over its own
/// persistent connection.
async fn lane(
    shared: Arc<Shared>,
    mut client: NodeClient,
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<i64>>>,
) {
    let node = client.node_id().to_owned();
    loop {
        let Some(id) = rx.lock().await.recv().await else {
            return;
        };
        let lease = match shared.lock().jobs.get(&id) {
            Some(j) => j.lease.clone(),
            None => {
                finish(&shared, &node, id, Finish::Vanished);
                continue;
            }
        };
        let bundle = match shared.bundle(&lease.bundle_id).await {
            Ok(b) => b,
            Err(why) => {
                tracing::warn!(job = id, %why, "bundle unavailable");
                finish(&shared, &node, id, Finish::BadBundle(why));
                continue;
            }
        };
        let offer = JobOffer {
            job_id: id,
            bundle_sha256: lease.bundle_id.clone(),
            bundle: bundle.bytes.clone(),
            task: lease.task,
        };
        let result = client.run_job(&offer, bundle.time_limit).await;
        let fin = match result {
            Ok(JobOutcome::Answer { outcome, bytes }) => {
                // Spooled (fsynced) before this lane offers the node anything else.
                match shared
                    .spool
                    .put(id, outcome.clone(), node.clone(), bytes)
                    .await
                {
                    Ok(()) => Finish::Answered { outcome },
                    Err(e) => {
                        tracing::error!(job = id, error = %chain(&e), "spooling an answer failed");
                        Finish::Lost("the answer could not be spooled".into())
                    }
                }
            }
            Ok(JobOutcome::Refused { code, reason }) => Finish::Refused { code, reason },
            Err(DispatchError::Unreachable { reason, .. }) => Finish::Unreachable(reason),
            Err(DispatchError::NodeLost { reason, .. }) => Finish::Lost(reason),
        };
        finish(&shared, &node, id, fin);
    }
}

enum Finish {
    Answered { outcome: String },
    Refused { code: RefusalCode, reason: String },
    Unreachable(String),
    Lost(String),
    BadBundle(String),
    Vanished,
}

/// Whether an answer's outcome line says the job exited with 0, whatever limits it hit on the
/// way (`exit 0`, `exit 0 (limit hit: stdout)`): the panel counts it as done.
fn exited_zero(outcome: &str) -> bool {
    outcome == "exit 0" || outcome.starts_with("exit 0 (")
}

/// Records how a lane's job ended and wakes whoever can use the freed slot.
fn finish(shared: &Arc<Shared>, node: &str, id: i64, fin: Finish) {
    let now = Instant::now();
    let mut st = shared.lock();
    let still_ours = st
        .jobs
        .get(&id)
        .is_some_and(|j| matches!(&j.place, Place::Running { node: n } if n == node));
    if still_ours && let Some(s) = st.stats.get_mut(node) {
        s.busy = s.busy.saturating_sub(1);
    }
    match fin {
        Finish::Vanished => {}
        Finish::Answered { outcome } => {
            st.counters.answers += 1;
            let s = st.stats.entry(node.to_owned()).or_default();
            if exited_zero(&outcome) {
                s.done += 1;
            } else {
                s.failed += 1;
            }
            st.jobs.remove(&id);
            st.remember(
                id,
                JobWhere::Answered,
                Some(node.to_owned()),
                format!("answered by {node}: {outcome}"),
            );
        }
        Finish::Refused { code, reason } => {
            st.counters.refusals += 1;
            let s = st.stats.entry(node.to_owned()).or_default();
            s.refused += 1;
            let transient = matches!(
                code,
                RefusalCode::NoFreeSlot | RefusalCode::NotIdle | RefusalCode::Unavailable
            );
            if transient {
                s.cool_until = Some(now + Duration::from_secs(1));
            }
            tracing::info!(job = id, node, code = code.as_str(), %reason, "refused");
            if let Some(j) = st.jobs.get_mut(&id) {
                if !transient {
                    j.refusals.insert(node.to_owned(), (code, now));
                }
                j.place = Place::Queued;
                st.queue.push_front(id);
            }
        }
        Finish::Unreachable(reason) => {
            tracing::warn!(job = id, node, %reason, "node unreachable");
            st.stats.entry(node.to_owned()).or_default().cool_until =
                Some(now + Duration::from_secs(2));
            if let Some(j) = st.jobs.get_mut(&id) {
                j.place = Place::Queued;
                st.queue.push_front(id);
            }
        }
        Finish::Lost(reason) => {
            tracing::warn!(job = id, node, %reason, "job lost with its node");
            st.stats.entry(node.to_owned()).or_default().cool_until =
                Some(now + Duration::from_millis(500));
            if still_ours {
                job_lost(shared, &mut st, id, node, &reason);
            }
        }
        Finish::BadBundle(why) => {
            if still_ours {
                st.jobs.remove(&id);
                st.remember(id, JobWhere::Released, None, why.clone());
                report_failure(shared, id, why);
            }
        }
    }
    drop(st);
    shared.dispatch.notify_one();
    shared.capacity.notify_one();
}

// ---------------------------------------------------------------------------------------
// Status

/// Answers status requests from the shared state.
fn shared_status(shared: Arc<Shared>) -> crate::status::Handler {
    Arc::new(move |req| match req {
        StatusRequest::Nodes => serde_json::to_value(nodes_panel(&shared)),
        StatusRequest::Why { job } => serde_json::to_value(why(&shared, job)),
        StatusRequest::Status => serde_json::to_value(status(&shared)),
    })
}

fn nodes_panel(shared: &Shared) -> NodesResponse {
    let nodes = shared.nodes();
    let drops = shared
        .table
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drops();
    let st = shared.lock();
    let rows = nodes
        .into_iter()
        .map(|n| {
            let s = st.stats.get(&n.node_id);
            let busy = s.map_or(0, |s| s.busy);
            NodeRow {
                addresses: n.addresses.iter().map(|a| a.to_string()).collect(),
                port: n.port,
                mflops: n.mflops,
                total_slots: n.total_slots,
                announced_free: n.free_slots,
                busy,
                free_slots: n.total_slots.saturating_sub(busy),
                groups: n.groups,
                age_ms: n.age_ms,
                done: s.map_or(0, |s| s.done),
                failed: s.map_or(0, |s| s.failed),
                refused: s.map_or(0, |s| s.refused),
                node_id: n.node_id,
            }
        })
        .collect();
    NodesResponse {
        nodes: rows,
        drops: Drops {
            unsigned: drops.unsigned,
            malformed: drops.malformed,
            unknown_key: drops.unknown_key,
            bad_signature: drops.bad_signature,
            stale: drops.stale,
            replay: drops.replay,
        },
    }
}

fn why(shared: &Shared, job: i64) -> WhyResponse {
    let nodes = shared.nodes();
    let st = shared.lock();
    let Some(j) = st.jobs.get(&job) else {
        if let Some((place, node, why)) = st.history.get(&job) {
            return WhyResponse {
                job,
                state: *place,
                node: node.clone(),
                why: why.clone(),
            };
        }
        return WhyResponse {
            job,
            state: JobWhere::Unknown,
            node: None,
            why: "This lookup does not hold the job: it may be queued on the web server, done, or leased by another lookup.".into(),
        };
    };
    let codes = j.refusal_codes();
    let busy_views = st.usable(&nodes, None);
    match &j.place {
        Place::Running { node } => WhyResponse {
            job,
            state: JobWhere::Running,
            node: Some(node.clone()),
            why: format!("Running on {node}."),
        },
        Place::Parked { why, since } => WhyResponse {
            job,
            state: JobWhere::Parked,
            node: None,
            why: format!(
                "{} Held for {} s; given back to the web server after {} s.",
                why.sentence(),
                since.elapsed().as_secs(),
                shared.cfg.park.as_secs()
            ),
        },
        Place::Queued => WhyResponse {
            job,
            state: JobWhere::Queued,
            node: None,
            why: shared
                .scheduler
                .why(&j.lease.group, &busy_views, &codes)
                .map(|w| w.sentence())
                .unwrap_or_else(|| "Queued: it goes to the next free slot.".into()),
        },
    }
}

fn status(shared: &Shared) -> StatusResponse {
    let spooled = shared.spool.pending_count() as u64;
    let st = shared.lock();
    StatusResponse {
        queued: st.count(|p| matches!(p, Place::Queued)),
        running: st.count(|p| matches!(p, Place::Running { .. })),
        parked: st.count(|p| matches!(p, Place::Parked { .. })),
        spooled,
        leased_total: st.counters.leased,
        answers_total: st.counters.answers,
        refusals_total: st.counters.refusals,
        lost_total: st.counters.lost,
        released_total: st.counters.released,
        upstream_down: st.upstream_down,
    }
}

#[cfg(test)]
mod tests {
    use super::exited_zero;

    #[test]
    fn done_is_exit_0_with_or_without_limits_hit() {
        assert!(exited_zero("exit 0"));
        assert!(exited_zero("exit 0 (limit hit: stdout)"));
        for other in [
            "exit 01",
            "exit 3",
            "exit 3 (limit hit: output)",
            "limit: time",
            "trap: unreachable",
        ] {
            assert!(!exited_zero(other), "{other}");
        }
    }
}
