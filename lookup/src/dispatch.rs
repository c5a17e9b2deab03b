//! Dispatch: which node runs a job (fastest free node that serves its group and has not
//! refused it), and running it there over a persistent mutual-TLS connection
//! (`docs/compute-protocol.md`).
//!
//! * [`Scheduler`] is pure: it orders the discovered nodes for a job and explains ([`Why`])
//!   why a job is not running.
//! * [`NodeClient`] is one node's connection, reconnected when broken; [`NodeClient::run_job`]
//!   runs one offer to its end (answer or refusal), every step under the protocol's deadlines.
//! * [`dispatch_job`] tries the nodes in the scheduler's order until one runs the job.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rjs_cmd::chain;
use rjs_signer::manifest::node_serves;
use rjs_wire::node::{
    CONTROL_TIMEOUT, DECISION_TIMEOUT, FrameError, FromNode, PROGRESS_TIMEOUT, RefusalCode, ToNode,
    data_timeout, read_frame, read_msg, write_frame, write_msg,
};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::discovery::NodeView;

pub use rjs_wire::ids::NodeId;

/// Time added to a job's own time limit while waiting for its answer (start-up, archive).
pub const DEFAULT_ANSWER_MARGIN: Duration = Duration::from_secs(30);
/// Longest compilation of a job's module waited for by default: a node states its own
/// compile limit (600 s by default) and the lower of the two holds.
pub const DEFAULT_MAX_COMPILE: Duration = Duration::from_secs(1800);
/// Largest answer archive accepted from a node by default.
pub const DEFAULT_MAX_ANSWER: u64 = 256 * 1024 * 1024;
/// Time allowed to open a TCP connection and complete the TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Scheduling

/// Why a job is not running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// No known node serves the job's group.
    NoNodeInGroup,
    /// Every node serving the group (and not having refused the job) has no free slot.
    AllBusy { n: usize },
    /// Every node serving the group refused the job.
    RefusedBy {
        untrusted: usize,
        blocked: usize,
        over_limits: usize,
        other: usize,
    },
}

impl Why {
    /// The explanation as one sentence (what `rjs-lookup why` prints).
    pub fn sentence(&self) -> String {
        fn nodes(n: usize) -> String {
            if n == 1 {
                "1 node".to_owned()
            } else {
                format!("{n} nodes")
            }
        }
        match self {
            Why::NoNodeInGroup => "No node serves this job's group.".to_owned(),
            Why::AllBusy { n } => format!(
                "All {} serving this job's group {} busy: it waits for a free slot.",
                nodes(*n),
                if *n == 1 { "is" } else { "are" }
            ),
            Why::RefusedBy {
                untrusted,
                blocked,
                over_limits,
                other,
            } => {
                let total = untrusted + blocked + over_limits + other;
                let mut parts = Vec::new();
                if *untrusted > 0 {
                    parts.push(format!(
                        "{} because the author is untrusted",
                        nodes(*untrusted)
                    ));
                }
                if *blocked > 0 {
                    parts.push(format!(
                        "{} because the owner blocked the author",
                        nodes(*blocked)
                    ));
                }
                if *over_limits > 0 {
                    parts.push(format!(
                        "{} because the job exceeds their limits",
                        nodes(*over_limits)
                    ));
                }
                if *other > 0 {
                    parts.push(format!("{} for other reasons", nodes(*other)));
                }
                format!(
                    "Refused by {}: {}.",
                    nodes(total),
                    if parts.is_empty() {
                        "no reason given".to_owned()
                    } else {
                        parts.join(", ")
                    }
                )
            }
        }
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sentence())
    }
}

/// Orders nodes for a job: among nodes with a free slot whose groups serve the job's group
/// ([`node_serves`]) and that have not refused it, the fastest (MFLOPS) first.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scheduler;

impl Scheduler {
    fn serves(node: &NodeView, job_group: &str) -> bool {
        node.groups.iter().any(|g| node_serves(g, job_group))
    }

    /// Every node that may take the job now, best first (ties: by id, for determinism).
    pub fn order(
        &self,
        job_group: &str,
        nodes: &[NodeView],
        refused: &HashSet<NodeId>,
    ) -> Vec<NodeId> {
        let mut ok: Vec<&NodeView> = nodes
            .iter()
            .filter(|n| {
                n.free_slots > 0 && Self::serves(n, job_group) && !refused.contains(&n.node_id)
            })
            .collect();
        ok.sort_by(|a, b| {
            b.mflops
                .cmp(&a.mflops)
                .then_with(|| a.node_id.cmp(&b.node_id))
        });
        ok.into_iter().map(|n| n.node_id.clone()).collect()
    }

    /// The best node for the job now, if any.
    pub fn pick(
        &self,
        job_group: &str,
        nodes: &[NodeView],
        refused: &HashSet<NodeId>,
    ) -> Option<NodeId> {
        self.order(job_group, nodes, refused).into_iter().next()
    }

    /// Why the job cannot be placed now; `None` when some node could take it.
    pub fn why(
        &self,
        job_group: &str,
        nodes: &[NodeView],
        refusals: &HashMap<NodeId, RefusalCode>,
    ) -> Option<Why> {
        let serving: Vec<&NodeView> = nodes
            .iter()
            .filter(|n| Self::serves(n, job_group))
            .collect();
        if serving.is_empty() {
            return Some(Why::NoNodeInGroup);
        }
        let not_refused: Vec<&&NodeView> = serving
            .iter()
            .filter(|n| !refusals.contains_key(&n.node_id))
            .collect();
        if not_refused.iter().any(|n| n.free_slots > 0) {
            return None;
        }
        if !not_refused.is_empty() {
            return Some(Why::AllBusy {
                n: not_refused.len(),
            });
        }
        let (mut untrusted, mut blocked, mut over_limits, mut other) = (0, 0, 0, 0);
        for n in &serving {
            match refusals.get(&n.node_id) {
                Some(RefusalCode::Untrusted) => untrusted += 1,
                Some(RefusalCode::Blocked) => blocked += 1,
                Some(RefusalCode::OverLimits) => over_limits += 1,
                _ => other += 1,
            }
        }
        Some(Why::RefusedBy {
            untrusted,
            blocked,
            over_limits,
            other,
        })
    }
}

// ---------------------------------------------------------------------------------------
// One node's connection

/// One task to run.
#[derive(Debug, Clone)]
pub struct JobOffer {
    /// The web server's job id.
    pub job_id: i64,
    /// SHA-256 of the bundle, lowercase hex.
    pub bundle_sha256: String,
    /// The bundle's bytes (sent only if the node asks for them).
    pub bundle: Arc<Vec<u8>>,
    /// Task index within the bundle.
    pub task: u32,
}

/// How an offer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// The job ran; `bytes` is the node-signed answer archive.
    Answer { outcome: String, bytes: Vec<u8> },
    /// The job did not run on this node.
    Refused { code: RefusalCode, reason: String },
}

/// Why a job could not be run to its end on a node.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The node could not be reached (no job was offered).
    #[error("node {node} unreachable: {reason}")]
    Unreachable { node: NodeId, reason: String },
    /// The connection broke, timed out or carried nonsense while the job was offered or
    /// running: the caller re-dispatches it.
    #[error("node {node} lost: {reason}")]
    NodeLost { node: NodeId, reason: String },
}

/// Decides whether the certificate a node presented (its SHA-256, lowercase hex) may speak
/// for node `node_id`: for the lookup server, enrolled under that id and not revoked.
pub type PeerCheck = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// A persistent mutual-TLS connection to one node, reopened when broken.
pub struct NodeClient {
    node_id: NodeId,
    addr: SocketAddr,
    server_name: ServerName<'static>,
    tls: Arc<ClientConfig>,
    conn: Option<TlsStream<TcpStream>>,
    peer_check: Option<PeerCheck>,
    /// Time added to the job's time limit while waiting for the answer.
    pub answer_margin: Duration,
    /// Longest compilation waited for, whatever limit the node states
    /// ([`FromNode::Compiling`]).
    pub max_compile: Duration,
    /// Largest answer archive accepted.
    pub max_answer: u64,
}

impl NodeClient {
    /// A client for node `node_id` at `addr`, checking the node's certificate for the
    /// address's IP (see [`NodeClient::with_server_name`]). Connects lazily.
    pub fn new(node_id: impl Into<NodeId>, addr: SocketAddr, tls: Arc<ClientConfig>) -> Self {
        NodeClient {
            node_id: node_id.into(),
            addr,
            server_name: ServerName::IpAddress(addr.ip().into()),
            tls,
            conn: None,
            peer_check: None,
            answer_margin: DEFAULT_ANSWER_MARGIN,
            max_compile: DEFAULT_MAX_COMPILE,
            max_answer: DEFAULT_MAX_ANSWER,
        }
    }

    /// Checks the node's certificate for `name` (a DNS name or an IP) instead.
    pub fn with_server_name(mut self, name: ServerName<'static>) -> Self {
        self.server_name = name;
        self
    }

    /// After each handshake, also requires `check(node_id, certificate SHA-256)` to hold
    /// (a certificate from the cluster CA alone is not enough: it must be this node's, and
    /// not revoked).
    pub fn with_peer_check(mut self, check: PeerCheck) -> Self {
        self.peer_check = Some(check);
        self
    }

    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether a connection is currently open.
    pub fn connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Closes the connection (the next job reconnects).
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    async fn connect(&mut self) -> Result<(), DispatchError> {
        let unreachable = |reason: String| DispatchError::Unreachable {
            node: self.node_id.clone(),
            reason,
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .map_err(|_| unreachable("connect timed out".into()))?
            .map_err(|e| unreachable(format!("connect: {}", chain(&e))))?;
        let _ = tcp.set_nodelay(true);
        let s = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TlsConnector::from(self.tls.clone()).connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| unreachable("TLS handshake timed out".into()))?
        .map_err(|e| unreachable(format!("TLS handshake: {}", chain(&e))))?;
        if let Some(check) = &self.peer_check {
            let sha = s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| rjs_wire::tls::cert_sha256(c));
            match sha {
                Some(sha) if check(self.node_id.as_str(), &sha) => {}
                Some(sha) => {
                    return Err(unreachable(format!(
                        "its certificate (SHA-256 {sha}) is not the enrolled, unrevoked certificate of {}",
                        self.node_id
                    )));
                }
                None => return Err(unreachable("it presented no certificate".into())),
            }
        }
        self.conn = Some(s);
        Ok(())
    }

    /// Runs `offer` on this node: offer → (send-bundle → bundle) → accepted/refused → answer.
    /// `time_limit` is the job's own time limit (the answer may take that plus
    /// [`NodeClient::answer_margin`]). Any broken connection, missed deadline or protocol
    /// error after the offer is [`DispatchError::NodeLost`] and closes the connection.
    pub async fn run_job(
        &mut self,
        offer: &JobOffer,
        time_limit: Duration,
    ) -> Result<JobOutcome, DispatchError> {
        self.run_job_watched(offer, time_limit, &mut |_| {}).await
    }

    /// [`run_job`](Self::run_job), telling `on_progress` what the node says while the job
    /// is under way (compiling its module, then running).
    pub async fn run_job_watched(
        &mut self,
        offer: &JobOffer,
        time_limit: Duration,
        on_progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<JobOutcome, DispatchError> {
        let reused = self.conn.is_some();
        if !reused {
            self.connect().await?;
        }
        match self.attempt(offer, time_limit, on_progress).await {
            // A reused connection the node had already closed (idle timeout): nothing was
            // received about this offer, so offer it once more on a fresh connection.
            Err(Step::BeforeReply(e)) if reused && !matches!(e, FrameError::Timeout(_)) => {
                self.conn = None;
                self.connect().await?;
                self.attempt(offer, time_limit, on_progress)
                    .await
                    .map_err(|e| self.lost(e))
            }
            r => r.map_err(|e| self.lost(e)),
        }
    }

    /// Proves the node alive over an authenticated connection (opened if need be): `ping`,
    /// answered `pong` within `timeout`. Any failure closes the connection.
    pub async fn ping(&mut self, timeout: Duration) -> Result<(), DispatchError> {
        if self.conn.is_none() {
            self.connect().await?;
        }
        let Some(s) = self.conn.as_mut() else {
            return Err(self.lost(Step::After("not connected".into())));
        };
        let exchange = async {
            write_msg(s, &ToNode::Ping, timeout).await?;
            read_msg::<_, FromNode>(s, timeout).await
        };
        match exchange.await {
            Ok(FromNode::Pong) => Ok(()),
            Ok(other) => Err(self.lost(Step::After(format!("expected pong, got {other:?}")))),
            Err(e) => Err(self.lost(Step::After(format!("ping: {}", chain(&e))))),
        }
    }

    fn lost(&mut self, e: Step) -> DispatchError {
        self.conn = None;
        let reason = match e {
            Step::BeforeReply(e) => format!("before any reply to the offer: {}", chain(&e)),
            Step::After(s) => s,
        };
        DispatchError::NodeLost {
            node: self.node_id.clone(),
            reason,
        }
    }

    async fn attempt(
        &mut self,
        offer: &JobOffer,
        time_limit: Duration,
        on_progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<JobOutcome, Step> {
        let s = self
            .conn
            .as_mut()
            .ok_or_else(|| Step::After("not connected".into()))?;
        let after = |what: &str, e: FrameError| Step::After(format!("{what}: {}", chain(&e)));
        write_msg(
            s,
            &ToNode::Offer {
                bundle_sha256: offer.bundle_sha256.clone(),
                bundle_size: offer.bundle.len() as u64,
                task: offer.task,
                job_id: offer.job_id,
            },
            CONTROL_TIMEOUT,
        )
        .await
        .map_err(Step::BeforeReply)?;
        // If the node has the bundle, its first reply is already the decision.
        let mut msg: FromNode = read_msg(s, DECISION_TIMEOUT)
            .await
            .map_err(Step::BeforeReply)?;
        if msg == FromNode::SendBundle {
            write_frame(s, &offer.bundle, data_timeout(offer.bundle.len() as u64))
                .await
                .map_err(|e| after("sending the bundle", e))?;
            msg = read_msg(s, DECISION_TIMEOUT)
                .await
                .map_err(|e| after("waiting for the decision", e))?;
        }
        match msg {
            FromNode::Refused { code, reason } => return Ok(JobOutcome::Refused { code, reason }),
            FromNode::Accepted => {}
            other => return Err(Step::After(format!("expected a decision, got {other:?}"))),
        }
        // Until the answer: the job's time limit plus the margin, except while the node says
        // it is compiling the module (within its compile limit, and ours).
        let mut wait = time_limit + self.answer_margin;
        let answer = loop {
            let msg = read_msg(s, wait)
                .await
                .map_err(|e| after("waiting for the answer", e))?;
            match msg {
                FromNode::Compiling {
                    elapsed_ms,
                    module_bytes,
                    limit_ms,
                    estimate_ms,
                } => {
                    on_progress(Progress::Compiling {
                        elapsed: Duration::from_millis(elapsed_ms),
                        module_bytes,
                        limit: Duration::from_millis(limit_ms),
                        estimate: estimate_ms.map(Duration::from_millis),
                    });
                    let bound = Duration::from_millis(limit_ms).min(self.max_compile);
                    if Duration::from_millis(elapsed_ms) > bound + self.answer_margin {
                        return Err(Step::After(format!(
                            "still compiling the {module_bytes}-byte module after {} s, \
                             beyond the compile limit of {} s",
                            elapsed_ms / 1000,
                            bound.as_secs()
                        )));
                    }
                    wait = PROGRESS_TIMEOUT;
                }
                FromNode::Running => {
                    on_progress(Progress::Running);
                    wait = time_limit + self.answer_margin;
                }
                other => break other,
            }
        };
        match answer {
            FromNode::Answer { outcome, size } => {
                if size > self.max_answer {
                    return Err(Step::After(format!(
                        "answer of {size} bytes exceeds the limit of {}",
                        self.max_answer
                    )));
                }
                let bytes = read_frame(s, size, data_timeout(size))
                    .await
                    .map_err(|e| after("reading the answer archive", e))?;
                if bytes.len() as u64 != size {
                    return Err(Step::After(format!(
                        "answer of {} bytes, {size} announced",
                        bytes.len()
                    )));
                }
                Ok(JobOutcome::Answer { outcome, bytes })
            }
            // The node failed to build the answer: the job counts as not run.
            FromNode::Refused { code, reason } => Ok(JobOutcome::Refused { code, reason }),
            other => Err(Step::After(format!("expected an answer, got {other:?}"))),
        }
    }
}

/// What a node says about a job between `accepted` and its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// It is compiling the job's module: for `elapsed` so far, within its `limit`; `estimate`:
    /// how long the whole compilation should take at its last speed.
    Compiling {
        elapsed: Duration,
        module_bytes: u64,
        limit: Duration,
        estimate: Option<Duration>,
    },
    /// The program started (after compiling).
    Running,
}

/// Where a job attempt failed.
enum Step {
    /// Writing the offer or reading the first reply to it.
    BeforeReply(FrameError),
    After(String),
}

// ---------------------------------------------------------------------------------------
// Dispatching one job

/// The connections to the known nodes, opened on first use.
pub struct NodePool {
    tls: Arc<ClientConfig>,
    clients: HashMap<NodeId, NodeClient>,
}

impl NodePool {
    /// A pool presenting the lookup's identity through `tls` (see
    /// [`rjs_wire::tls::client_config`]).
    pub fn new(tls: Arc<ClientConfig>) -> Self {
        NodePool {
            tls,
            clients: HashMap::new(),
        }
    }

    /// The client for `node`, (re)created when the node's address changed.
    pub fn client(&mut self, node: &NodeView) -> Option<&mut NodeClient> {
        let ip = *node.addresses.first()?;
        let addr = SocketAddr::new(ip, node.port);
        let stale = self
            .clients
            .get(&node.node_id)
            .is_some_and(|c| c.addr() != addr);
        if stale {
            self.clients.remove(&node.node_id);
        }
        let tls = self.tls.clone();
        Some(
            self.clients
                .entry(node.node_id.clone())
                .or_insert_with(|| NodeClient::new(node.node_id.clone(), addr, tls)),
        )
    }

    /// Forgets a node (gone from discovery).
    pub fn remove(&mut self, node: &str) {
        self.clients.remove(node);
    }
}

/// What became of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// It ran on `node`.
    Ran {
        node: NodeId,
        outcome: String,
        answer: Vec<u8>,
    },
    /// No node will take it now: give the lease back (or report the failure).
    Unplaced(Why),
    /// The node running it was lost: dispatch it again elsewhere.
    NodeLost(NodeId),
}

/// Tries the nodes in the [`Scheduler`]'s order until one runs `job` (of group
/// `job_group`, time limit `time_limit`). Refusals are recorded in `refusals` (kept by the
/// caller across attempts of the same job) and the next node is tried; unreachable nodes are
/// skipped for this attempt.
pub async fn dispatch_job(
    scheduler: &Scheduler,
    pool: &mut NodePool,
    nodes: &[NodeView],
    job: &JobOffer,
    job_group: &str,
    time_limit: Duration,
    refusals: &mut HashMap<NodeId, RefusalCode>,
) -> Placement {
    let mut skipped: HashSet<NodeId> = refusals.keys().cloned().collect();
    loop {
        let Some(id) = scheduler.pick(job_group, nodes, &skipped) else {
            let why = scheduler
                .why(job_group, nodes, refusals)
                // Every candidate was unreachable.
                .unwrap_or(Why::AllBusy {
                    n: skipped.len() - refusals.len(),
                });
            return Placement::Unplaced(why);
        };
        skipped.insert(id.clone());
        let Some(view) = nodes.iter().find(|n| n.node_id == id) else {
            continue;
        };
        let Some(client) = pool.client(view) else {
            continue;
        };
        match client.run_job(job, time_limit).await {
            Ok(JobOutcome::Answer { outcome, bytes }) => {
                return Placement::Ran {
                    node: id,
                    outcome,
                    answer: bytes,
                };
            }
            Ok(JobOutcome::Refused { code, reason }) => {
                tracing::info!(node = %id, job = job.job_id, code = code.as_str(), %reason, "refused");
                refusals.insert(id, code);
            }
            Err(DispatchError::Unreachable { node, reason }) => {
                tracing::warn!(%node, %reason, "node unreachable");
            }
            Err(DispatchError::NodeLost { node, reason }) => {
                tracing::warn!(%node, job = job.job_id, %reason, "node lost");
                return Placement::NodeLost(node);
            }
        }
    }
}
