//! The service's shared state: the jobs it holds and where each is, the nodes' counters, and
//! [`Shared`], what every task of the service reaches.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rjs_cmd::chain;
use rjs_signer::bundle::{VerifyLimits, verify_signed};
use rjs_wire::api::Lease;
use rjs_wire::ids::JobId;
use rjs_wire::node::RefusalCode;
use rjs_wire::status::JobWhere;
use rustls::ClientConfig;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use super::pace::Pace;
use super::{LiveRegistry, ServeConfig};
use crate::discovery::{NodeTable, NodeView};
use crate::dispatch::{NodeId, PeerCheck, Scheduler, Why};
use crate::spool::AnswerSpool;
use crate::upstream::WebServerClient;

#[derive(Debug, Clone)]
pub(super) enum Place {
    Queued,
    Running { node: NodeId },
    Parked { why: Why, since: Instant },
}

#[derive(Debug)]
pub(super) struct Job {
    pub(super) lease: Lease,
    pub(super) place: Place,
    /// Nodes that refused it, with the code and when.
    pub(super) refusals: HashMap<NodeId, (RefusalCode, Instant)>,
    /// The last refusal's node and reason, as the node gave it: told to the author with the
    /// count of refusals (`memory_bytes … is above this node's maximum …`).
    pub(super) last_refusal: Option<(NodeId, String)>,
    /// While its node compiles its module: what the node last said, and when.
    pub(super) compiling: Option<(crate::dispatch::Progress, Instant)>,
    /// Nodes it was lost with.
    pub(super) losses: u32,
    /// The last reason it waits that the web server was told.
    pub(super) told: Option<String>,
}

impl Job {
    /// Who refused it, and why.
    /// Why it is parked, as the author and `rjs-lookup why` read it: `why`'s sentence and,
    /// when nodes refused it, the last one's own words (what to change).
    pub(super) fn parked_sentence(&self, why: &Why) -> String {
        match (why, &self.last_refusal) {
            (Why::RefusedBy { .. }, Some((node, reason))) => {
                format!("{} {node}: {reason}", why.sentence())
            }
            _ => why.sentence(),
        }
    }

    pub(super) fn refusal_codes(&self) -> HashMap<NodeId, RefusalCode> {
        self.refusals
            .iter()
            .map(|(n, (c, _))| (n.clone(), *c))
            .collect()
    }
}

#[derive(Debug, Default)]
pub(super) struct NodeStats {
    pub(super) busy: u32,
    pub(super) answers: rjs_wire::api::OutcomeCounts,
    pub(super) lost: u64,
    pub(super) refused: u64,
    /// Not offered anything until then (it was unreachable or said it was busy).
    pub(super) cool_until: Option<Instant>,
    /// Dials in a row that found it unreachable, and when the last did: each doubles its
    /// back-off, which a new announcement from it lifts.
    pub(super) unreachable: u32,
    pub(super) unreachable_at: Option<Instant>,
}

/// Back-off of a node found unreachable `streak` times in a row: 2 s, doubling, at most 30 s.
pub(super) fn unreachable_backoff(streak: u32) -> Duration {
    (Duration::from_secs(2) * 2u32.saturating_pow(streak.saturating_sub(1).min(4)))
        .min(Duration::from_secs(30))
}

/// One live node's lanes.
pub(super) struct Lanes {
    pub(super) addr: SocketAddr,
    pub(super) tx: mpsc::UnboundedSender<JobId>,
    pub(super) tasks: Vec<JoinHandle<()>>,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) leased: u64,
    pub(super) answers: u64,
    pub(super) outcomes: rjs_wire::api::OutcomeCounts,
    pub(super) refusals: u64,
    pub(super) lost: u64,
    pub(super) released: u64,
}

pub(super) struct State {
    pub(super) jobs: HashMap<JobId, Job>,
    pub(super) queue: VecDeque<JobId>,
    pub(super) stats: HashMap<NodeId, NodeStats>,
    /// Jobs given back or answered, for `why` (bounded).
    pub(super) history: HashMap<JobId, Past>,
    history_order: VecDeque<JobId>,
    pub(super) counters: Counters,
    /// Since when the web server has been unreachable (None: reachable).
    pub(super) down_since: Option<Instant>,
    /// After an outage (and at start): answers kept meanwhile go first, leasing waits until
    /// they are nearly all uploaded.
    pub(super) catching_up: bool,
    /// How fast the nodes finish jobs and how far the web server is.
    pub(super) pace: Pace,
    /// Set when the nodes changed or a refusal may have expired: parked jobs are retried.
    pub(super) retry_parked: bool,
    pub(super) stopping: bool,
}

impl Default for State {
    fn default() -> Self {
        State {
            jobs: HashMap::new(),
            queue: VecDeque::new(),
            stats: HashMap::new(),
            history: HashMap::new(),
            history_order: VecDeque::new(),
            counters: Counters::default(),
            down_since: None,
            catching_up: true,
            pace: Pace::new(Instant::now()),
            retry_parked: false,
            stopping: false,
        }
    }
}

const MAX_HISTORY: usize = 100_000;

/// What became of a job this lookup no longer holds.
#[derive(Debug, Clone)]
pub(super) struct Past {
    pub(super) place: JobWhere,
    pub(super) node: Option<NodeId>,
    pub(super) why: String,
}

/// Job ids as the web server's API carries them.
pub(super) fn wire_ids(ids: &[JobId]) -> Vec<i64> {
    ids.iter().map(|id| id.get()).collect()
}

impl State {
    pub(super) fn remember(
        &mut self,
        job: JobId,
        place: JobWhere,
        node: Option<NodeId>,
        why: String,
    ) {
        if self
            .history
            .insert(job, Past { place, node, why })
            .is_none()
        {
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
    pub(super) fn usable(&self, nodes: &[NodeView], cooling_at: Option<Instant>) -> Vec<NodeView> {
        nodes
            .iter()
            .filter(|n| cooling_at.is_none() || !n.addresses.is_empty())
            .cloned()
            .map(|mut n| {
                let s = self.stats.get(&n.node_id);
                let busy = s.map_or(0, |s| s.busy);
                let cooling = cooling_at.is_some_and(|now| {
                    let renewed = now.checked_sub(Duration::from_millis(n.age_ms));
                    s.is_some_and(|s| {
                        // A node found unreachable is dialled again when its back-off ends
                        // or when it announces itself again, whichever comes first.
                        let announced_since = s
                            .unreachable_at
                            .is_some_and(|f| renewed.is_some_and(|r| r > f));
                        s.cool_until.is_some_and(|t| t > now) && !announced_since
                    })
                });
                n.free_slots = if cooling {
                    0
                } else {
                    n.total_slots.saturating_sub(busy)
                };
                n
            })
            .collect()
    }

    pub(super) fn count(&self, f: impl Fn(&Place) -> bool) -> u64 {
        self.jobs.values().filter(|j| f(&j.place)).count() as u64
    }
}

/// A verified bundle kept in memory for dispatch.
pub(super) struct BundleInfo {
    pub(super) bytes: Arc<Vec<u8>>,
    pub(super) time_limit: Duration,
}

pub(super) struct Shared {
    pub(super) cfg: ServeConfig,
    pub(super) client: WebServerClient,
    pub(super) spool: Arc<AnswerSpool>,
    pub(super) table: Arc<Mutex<NodeTable>>,
    pub(super) node_tls: Arc<ClientConfig>,
    pub(super) peer_check: PeerCheck,
    pub(super) registry: Arc<LiveRegistry>,
    pub(super) scheduler: Scheduler,
    pub(super) state: Mutex<State>,
    /// Something changed that may let the dispatcher place a job.
    pub(super) dispatch: Notify,
    /// Capacity was freed: the puller may lease more.
    pub(super) capacity: Notify,
    /// The web server is reachable again.
    pub(super) upstream_back: Notify,
    /// Jobs may be leased here that this lookup does not know of (a lease response lost).
    pub(super) reclaim: Notify,
    pub(super) bundles: tokio::sync::Mutex<HashMap<String, Arc<BundleInfo>>>,
    /// The lanes of each live node.
    pub(super) lanes: Mutex<HashMap<NodeId, Lanes>>,
}

/// Parked jobs held before they count against the lease budget.
pub(super) const MAX_PARKED: u64 = 512;

/// Bundles kept verified in memory.
const MAX_BUNDLES: usize = 64;

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn lanes(&self) -> MutexGuard<'_, HashMap<NodeId, Lanes>> {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live nodes: leases not expired, and not revoked since (a revocation by
    /// `rjs-lookup nodes remove` takes effect here at once, not at the lease's end).
    pub(super) fn nodes(&self) -> Vec<NodeView> {
        let mut nodes = self
            .table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .nodes(Instant::now());
        self.registry.retain_active(&mut nodes);
        nodes
    }

    /// Node `id` proved alive over its authenticated connection: renews its lease.
    pub(super) fn alive(&self, id: &NodeId) {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .touch(id.as_str(), Instant::now());
    }

    /// How often an idle lane proves its node alive: three times per lease TTL.
    pub(super) fn keepalive(&self) -> Duration {
        (self.cfg.discovery.ttl / 3).max(Duration::from_millis(50))
    }

    /// The bundle `id`, fetched (ETag cache on disk) and verified once.
    pub(super) async fn bundle(&self, id: &str) -> Result<Arc<BundleInfo>, String> {
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
        .map_err(|e| format!("verifying bundle {id}: {}", chain(&e)))??;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_node_backs_off_doubling_to_30_s() {
        let secs: Vec<u64> = (1..=7).map(|n| unreachable_backoff(n).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 30, 30, 30]);
    }
}
