//! Discovery of compute nodes: an mDNS browser of `_rjs-compute._tcp.local.` feeding a
//! [`NodeTable`] of leases (`docs/discovery.md`).
//!
//! An announcement is accepted only if it is signed by a key the caller vouches for
//! ([`KeyDirectory`]: the enrolment registry; revoked nodes give `None`), its timestamp is
//! within the clock window of now, and its `(timestamp, seq)` is strictly newer than the last
//! one accepted for that node. Each accepted announcement renews the node's lease; a node not
//! renewed within the TTL is dropped. mDNS record expiry is NOT used (a killed node's records
//! linger about two minutes).
//!
//! WARNING: `mdns_sd::ServiceDaemon::new()` joins the mDNS multicast groups on every interface
//! as soon as it is created. Tests and demos must create a [`Browser`] only inside a private
//! network namespace.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent};
use rjs_signer::keys::PublicKey;
use rjs_wire::announce::{AnnounceError, Announcement, SERVICE_TYPE, StoppableThread};
use rjs_wire::ids::NodeId;
use rjs_wire::status::Drops;
use serde::Serialize;

/// Default announcement interval the TTL is based on.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
/// Default clock window (accepted |announcement time - now|).
pub const DEFAULT_CLOCK_WINDOW: Duration = Duration::from_secs(30);

/// Gives the public key of an enrolled, non-revoked node.
pub trait KeyDirectory: Send + Sync {
    fn key_of(&self, node_id: &str) -> Option<PublicKey>;
}

impl<F: Fn(&str) -> Option<PublicKey> + Send + Sync> KeyDirectory for F {
    fn key_of(&self, node_id: &str) -> Option<PublicKey> {
        self(node_id)
    }
}

/// Lease and acceptance policy.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// Announcement interval of the nodes.
    pub interval: Duration,
    /// Lease TTL (default 3 intervals).
    pub ttl: Duration,
    /// Accepted clock skew either way (default 30 s).
    pub clock_window: Duration,
    /// Interfaces mDNS may use; `None` keeps the daemon's default (all).
    pub interfaces: Option<Vec<IfKind>>,
    /// Where the newest accepted `(timestamp, seq)` of each node is kept across restarts
    /// ([`MARKS_FILE`] in the lookup's data folder); `None`: in memory only.
    pub marks_file: Option<PathBuf>,
}

/// The file of the announcements' high-water marks, in the lookup's data folder.
pub const MARKS_FILE: &str = "announce-marks.json";
/// How often changed marks are written (the window an unclean stop leaves, see
/// `docs/discovery.md`).
pub const MARKS_FLUSH: Duration = Duration::from_secs(1);
/// Largest marks file read.
const MAX_MARKS_BYTES: u64 = 4 << 20;

impl DiscoveryConfig {
    /// TTL of 3 intervals, clock window 30 s, all interfaces.
    pub fn with_interval(interval: Duration) -> Self {
        DiscoveryConfig {
            interval,
            ttl: interval * 3,
            clock_window: DEFAULT_CLOCK_WINDOW,
            interfaces: None,
            marks_file: None,
        }
    }
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self::with_interval(DEFAULT_INTERVAL)
    }
}

/// Why an announcement was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// No signature field.
    Unsigned,
    /// Missing, unknown, duplicate, over-long or malformed fields.
    Malformed,
    /// Signed, but the node id has no enrolled (or a revoked) key.
    UnknownKey,
    /// The signature does not verify with the node's key.
    BadSignature,
    /// Timestamp outside the clock window.
    Stale,
    /// Not newer than the last accepted announcement of that node.
    Replay,
}

/// Counts one dropped announcement in the node panel's counters.
fn count_drop(drops: &mut Drops, r: DropReason) {
    let c = match r {
        DropReason::Unsigned => &mut drops.unsigned,
        DropReason::Malformed => &mut drops.malformed,
        DropReason::UnknownKey => &mut drops.unknown_key,
        DropReason::BadSignature => &mut drops.bad_signature,
        DropReason::Stale => &mut drops.stale,
        DropReason::Replay => &mut drops.replay,
    };
    *c += 1;
}

/// What happened to one offered announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// A new node.
    Joined,
    /// A known node's lease renewed.
    Renewed,
    /// The very announcement last accepted, seen again (mDNS re-delivery); not counted.
    Duplicate,
    /// Dropped and counted.
    Dropped(DropReason),
}

/// One node as the panel shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeView {
    pub node_id: NodeId,
    pub addresses: Vec<IpAddr>,
    pub port: u16,
    pub mflops: u64,
    pub free_slots: u32,
    pub total_slots: u32,
    pub groups: Vec<String>,
    /// Time since the last renewal.
    pub age_ms: u64,
}

#[derive(Debug)]
struct Lease {
    ann: Announcement,
    sig: [u8; 64],
    renewed: Instant,
}

/// The leases of discovered nodes. Pure (no network): the [`Browser`] feeds it, tests may too.
#[derive(Debug)]
pub struct NodeTable {
    ttl: Duration,
    clock_window: Duration,
    nodes: HashMap<NodeId, Lease>,
    /// Last accepted `(timestamp, seq)` per node, kept after a lease expires so that an old
    /// announcement cannot bring a dropped node back (and across restarts, through the
    /// marks file).
    last: HashMap<NodeId, (u64, u64)>,
    /// `last` changed since [`NodeTable::take_marks`].
    marks_changed: bool,
    drops: Drops,
}

impl NodeTable {
    pub fn new(ttl: Duration, clock_window: Duration) -> Self {
        NodeTable {
            ttl,
            clock_window,
            nodes: HashMap::new(),
            last: HashMap::new(),
            marks_changed: false,
            drops: Drops::default(),
        }
    }

    /// Starts from the high-water marks of an earlier run: nothing not newer than what was
    /// accepted then is accepted now.
    pub fn restore_marks(&mut self, marks: HashMap<NodeId, (u64, u64)>) {
        for (id, mark) in marks {
            let m = self.last.entry(id).or_insert(mark);
            *m = (*m).max(mark);
        }
    }

    /// The marks, if they changed since the last call.
    pub fn take_marks(&mut self) -> Option<HashMap<NodeId, (u64, u64)>> {
        std::mem::take(&mut self.marks_changed).then(|| self.last.clone())
    }

    /// Offers the TXT fields of a resolved service at wall-clock `now_unix_ms` and monotonic
    /// `now`. The node's addresses are the signed ones in the TXT fields: the addresses of the
    /// service's mDNS records (which anybody on the LAN can send) are never used.
    pub fn offer<K: AsRef<str>, V: AsRef<str>>(
        &mut self,
        props: impl IntoIterator<Item = (K, V)>,
        keys: &dyn KeyDirectory,
        now_unix_ms: u64,
        now: Instant,
    ) -> Offer {
        let r = self.check(props, keys, now_unix_ms);
        let (ann, sig) = match r {
            Ok(x) => x,
            Err(Offer::Dropped(reason)) => {
                count_drop(&mut self.drops, reason);
                return Offer::Dropped(reason);
            }
            Err(other) => return other,
        };
        let id = NodeId::from(ann.node_id.clone());
        self.last.insert(id.clone(), (ann.timestamp_ms, ann.seq));
        self.marks_changed = true;
        let lease = Lease {
            ann,
            sig,
            renewed: now,
        };
        match self.nodes.insert(id, lease) {
            Some(_) => Offer::Renewed,
            None => Offer::Joined,
        }
    }

    fn check<K: AsRef<str>, V: AsRef<str>>(
        &self,
        props: impl IntoIterator<Item = (K, V)>,
        keys: &dyn KeyDirectory,
        now_unix_ms: u64,
    ) -> Result<(Announcement, [u8; 64]), Offer> {
        let (ann, sig) = Announcement::from_txt(props).map_err(|e| {
            Offer::Dropped(match e {
                AnnounceError::Unsigned => DropReason::Unsigned,
                _ => DropReason::Malformed,
            })
        })?;
        let key = keys
            .key_of(&ann.node_id)
            .ok_or(Offer::Dropped(DropReason::UnknownKey))?;
        ann.verify(&sig, |m, s| key.verify(m, s))
            .map_err(|_| Offer::Dropped(DropReason::BadSignature))?;
        let window = self.clock_window.as_millis() as u64;
        if ann.timestamp_ms.abs_diff(now_unix_ms) > window {
            return Err(Offer::Dropped(DropReason::Stale));
        }
        if let Some(&last) = self.last.get(ann.node_id.as_str()) {
            let this = (ann.timestamp_ms, ann.seq);
            if this <= last {
                let same = this == last
                    && self
                        .nodes
                        .get(ann.node_id.as_str())
                        .is_some_and(|l| l.sig == sig);
                return Err(if same {
                    Offer::Duplicate
                } else {
                    Offer::Dropped(DropReason::Replay)
                });
            }
        }
        Ok((ann, sig))
    }

    /// Renews the lease of live node `id` on proof from an authenticated connection (a pong,
    /// or a reply to a job, over mutual TLS with the node's enrolled certificate), so that a
    /// node's liveness does not rest on mDNS packets alone. An expired lease is not revived:
    /// that takes a fresh signed announcement. Returns whether there was a lease.
    pub fn touch(&mut self, id: &str, now: Instant) -> bool {
        match self.nodes.get_mut(id) {
            Some(l) if now.saturating_duration_since(l.renewed) <= self.ttl => {
                l.renewed = l.renewed.max(now);
                true
            }
            _ => false,
        }
    }

    /// Drops the leases not renewed within the TTL; returns the dropped node ids.
    pub fn expire(&mut self, now: Instant) -> Vec<NodeId> {
        let ttl = self.ttl;
        let gone: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, l)| now.saturating_duration_since(l.renewed) > ttl)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.nodes.remove(id);
        }
        gone
    }

    /// The live nodes, sorted by id.
    pub fn nodes(&self, now: Instant) -> Vec<NodeView> {
        let mut v: Vec<NodeView> = self
            .nodes
            .values()
            .filter(|l| now.saturating_duration_since(l.renewed) <= self.ttl)
            .map(|l| NodeView {
                node_id: l.ann.node_id.clone().into(),
                addresses: l.ann.addrs.clone(),
                port: l.ann.port,
                mflops: l.ann.mflops,
                free_slots: l.ann.free_slots,
                total_slots: l.ann.total_slots,
                groups: l.ann.groups.clone(),
                age_ms: now.saturating_duration_since(l.renewed).as_millis() as u64,
            })
            .collect();
        v.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        v
    }

    pub fn drops(&self) -> Drops {
        self.drops
    }
}

/// Why the browser could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("mDNS")]
    Mdns(#[from] mdns_sd::Error),
    #[error("reading the announcements' high-water marks {}", path.display())]
    Marks {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The browser thread: feeds the table from `session`'s events, expires leases, writes the
/// marks, and starts discovery afresh when the session must go (see [`Browser`]).
fn browse(
    mut session: Session,
    config: &DiscoveryConfig,
    table: &Mutex<NodeTable>,
    keys: &dyn KeyDirectory,
    stop_rx: &mpsc::Receiver<()>,
) {
    let lock = || table.lock().unwrap_or_else(|e| e.into_inner());
    // Wake often enough to expire leases promptly.
    let tick = (config.ttl / 10).clamp(Duration::from_millis(10), Duration::from_millis(500));
    let mut last_flush = Instant::now();
    let mut cancelled = false;
    while let Err(mpsc::TryRecvError::Empty) = stop_rx.try_recv() {
        if cancelled || session.unverified() > MAX_UNVERIFIED {
            let wait = RESTART_MIN_INTERVAL.saturating_sub(session.started.elapsed());
            if !wait.is_zero() {
                std::thread::sleep(wait.min(tick));
            } else {
                let why = if cancelled {
                    "mdns-sd cancelled the browse"
                } else {
                    "too many services it could not verify"
                };
                match Session::open(config) {
                    Ok(fresh) => {
                        let unverified = session.unverified();
                        std::mem::replace(&mut session, fresh).close();
                        lock().drops.restarts += 1;
                        cancelled = false;
                        tracing::warn!(unverified, "discovery started afresh: {why}");
                    }
                    Err(e) => tracing::warn!(error = %rjs_cmd::chain(&e), "restarting discovery"),
                }
            }
        }
        match session.events.recv_timeout(tick) {
            Ok(ServiceEvent::ServiceFound(_, fullname)) => {
                session.seen.insert(fullname);
            }
            Ok(ServiceEvent::ServiceResolved(info)) => {
                let props: Vec<(String, String)> = info
                    .get_properties()
                    .iter()
                    .map(|p| (p.key().to_owned(), p.val_str().to_owned()))
                    .collect();
                let fullname = info.get_fullname().to_owned();
                let r = lock().offer(
                    props,
                    keys,
                    rjs_wire::announce::unix_ms_now(),
                    Instant::now(),
                );
                if !matches!(r, Offer::Dropped(_)) {
                    session.verified.insert(fullname.clone());
                }
                session.seen.insert(fullname);
                tracing::debug!("announcement from {}: {r:?}", info.get_fullname());
            }
            Ok(_) => {}
            Err(mdns_sd::RecvTimeoutError::Timeout) => {}
            Err(mdns_sd::RecvTimeoutError::Disconnected) => cancelled = true,
        }
        for id in lock().expire(Instant::now()) {
            tracing::info!("node {id}: lease expired");
        }
        if last_flush.elapsed() >= MARKS_FLUSH {
            last_flush = Instant::now();
            flush_marks(table, config.marks_file.as_deref());
        }
    }
    session.close();
}

/// The marks file: `{"node-1": [timestamp_ms, seq], …}`; none yet is an empty map.
pub fn load_marks(path: &Path) -> Result<HashMap<NodeId, (u64, u64)>, DiscoveryError> {
    let bytes = match rjs_signer::fsutil::read_bounded(path, MAX_MARKS_BYTES) {
        Ok(b) => b,
        Err(rjs_signer::fsutil::FileError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Ok(HashMap::new());
        }
        Err(e) => {
            return Err(DiscoveryError::Marks {
                path: path.to_owned(),
                source: Box::new(e),
            });
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| DiscoveryError::Marks {
        path: path.to_owned(),
        source: Box::new(e),
    })
}

/// Writes the marks if they changed (atomically, 0600); a failure is logged and retried at
/// the next flush.
fn flush_marks(table: &Mutex<NodeTable>, path: Option<&Path>) {
    let Some(path) = path else {
        return;
    };
    let Some(marks) = table.lock().unwrap_or_else(|e| e.into_inner()).take_marks() else {
        return;
    };
    let written = serde_json::to_vec(&marks)
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            rjs_signer::fsutil::write_atomic(path, &bytes, 0o600)
                .map_err(|e| rjs_cmd::chain(&e).to_string())
        });
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "writing the announcements' marks");
        table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .marks_changed = true;
    }
}

/// Services seen by one mDNS daemon that it could not verify (not accepted) after which
/// discovery starts afresh, dropping the daemon and all it cached.
pub const MAX_UNVERIFIED: usize = 512;
/// Least time between two fresh starts of discovery.
pub const RESTART_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// A running mDNS browser feeding a shared [`NodeTable`]; stops on drop or
/// [`Browser::shutdown`].
///
/// mdns-sd caches every record of the browsed type that arrives, for the TTL the sender
/// chose, and keeps querying to refresh it; it has no bound on its cache, and it cancels a
/// browse whose event channel (1,000 events) fills. So the browser counts the services its
/// daemon has seen but could not verify, and when they pass [`MAX_UNVERIFIED`], or the browse
/// was cancelled, it shuts that daemon down and starts a fresh one (at most once per
/// [`RESTART_MIN_INTERVAL`]): a flood costs at most that much cache, and nothing lingers
/// after it. The leases are in the [`NodeTable`], which survives; real nodes re-announce
/// within an interval, and their authenticated connections keep their leases meanwhile.
pub struct Browser {
    table: Arc<Mutex<NodeTable>>,
    thread: StoppableThread,
}

/// One mDNS daemon browsing the nodes' service.
struct Session {
    daemon: ServiceDaemon,
    events: mdns_sd::Receiver<ServiceEvent>,
    started: Instant,
    /// Instances found by this daemon, and those whose announcements were accepted.
    seen: std::collections::HashSet<String>,
    verified: std::collections::HashSet<String>,
}

impl Session {
    fn open(config: &DiscoveryConfig) -> Result<Session, DiscoveryError> {
        let daemon = ServiceDaemon::new()?;
        if let Some(ifs) = &config.interfaces {
            daemon.disable_interface(IfKind::All)?;
            daemon.enable_interface(ifs.clone())?;
        }
        let events = daemon.browse(SERVICE_TYPE)?;
        Ok(Session {
            daemon,
            events,
            started: Instant::now(),
            seen: Default::default(),
            verified: Default::default(),
        })
    }

    fn unverified(&self) -> usize {
        self.seen.len().saturating_sub(self.verified.len())
    }

    /// Stops the daemon without waiting for it (its thread ends by itself).
    fn close(self) {
        let _ = self.daemon.stop_browse(SERVICE_TYPE);
        let _ = self.daemon.shutdown();
    }
}

impl Browser {
    /// Creates a daemon (restricted to `config.interfaces`) and browses for compute nodes.
    pub fn start(
        config: DiscoveryConfig,
        keys: Arc<dyn KeyDirectory>,
    ) -> Result<Self, DiscoveryError> {
        let mut nodes = NodeTable::new(config.ttl, config.clock_window);
        if let Some(path) = &config.marks_file {
            nodes.restore_marks(load_marks(path)?);
        }
        let first = Session::open(&config)?;
        let table = Arc::new(Mutex::new(nodes));
        let t = table.clone();
        let thread = StoppableThread::spawn("rjs-discovery", move |stop_rx| {
            browse(first, &config, &t, &*keys, &stop_rx);
            flush_marks(&t, config.marks_file.as_deref());
        });
        Ok(Browser { table, thread })
    }

    /// The shared lease table.
    pub fn table(&self) -> Arc<Mutex<NodeTable>> {
        self.table.clone()
    }

    /// The live nodes now.
    pub fn nodes(&self) -> Vec<NodeView> {
        self.lock().nodes(Instant::now())
    }

    /// Dropped-announcement counters.
    pub fn drops(&self) -> Drops {
        self.lock().drops()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NodeTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops browsing and shuts the daemon down.
    pub fn shutdown(mut self) {
        self.thread.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rjs_signer::keys::KeyPair;

    fn ann(id: &str, ts: u64, seq: u64) -> Announcement {
        Announcement {
            node_id: id.into(),
            port: 7000,
            addrs: vec!["10.0.0.7".parse().unwrap()],
            mflops: 500,
            free_slots: 1,
            total_slots: 2,
            groups: vec!["/compute".into()],
            timestamp_ms: ts,
            seq,
        }
    }

    #[test]
    fn table_policy() {
        let good = KeyPair::from_secret([1; 32]);
        let other = KeyPair::from_secret([2; 32]);
        let pk = good.public();
        let keys = move |id: &str| (id == "a").then_some(pk);
        let mut t = NodeTable::new(Duration::from_millis(600), DEFAULT_CLOCK_WINDOW);
        let now_ms = 1_000_000_000;
        let t0 = Instant::now();
        let s = |a: &Announcement, k: &KeyPair| a.to_txt(|m| k.sign(m)).unwrap();
        let a1 = s(&ann("a", now_ms, 1), &good);
        assert_eq!(t.offer(a1.clone(), &keys, now_ms, t0), Offer::Joined);
        assert_eq!(t.offer(a1.clone(), &keys, now_ms, t0), Offer::Duplicate);
        let a2 = s(&ann("a", now_ms, 2), &good);
        assert_eq!(t.offer(a2, &keys, now_ms, t0), Offer::Renewed);
        // Replay of the older one.
        assert_eq!(
            t.offer(a1, &keys, now_ms, t0),
            Offer::Dropped(DropReason::Replay)
        );
        // Unknown node, wrong key, stale (past and future), unsigned, malformed.
        let mut unsigned = s(&ann("a", now_ms + 2, 1), &good);
        unsigned.pop();
        for (txt, why) in [
            (s(&ann("b", now_ms, 1), &good), DropReason::UnknownKey),
            (
                s(&ann("a", now_ms + 1, 1), &other),
                DropReason::BadSignature,
            ),
            (s(&ann("a", now_ms - 31_000, 9), &good), DropReason::Stale),
            (s(&ann("a", now_ms + 31_000, 9), &good), DropReason::Stale),
            (unsigned, DropReason::Unsigned),
        ] {
            assert_eq!(t.offer(txt, &keys, now_ms, t0), Offer::Dropped(why));
        }
        assert_eq!(
            t.offer(vec![("id", "a")], &keys, now_ms, t0),
            Offer::Dropped(DropReason::Unsigned)
        );
        assert_eq!(
            t.offer(vec![("sig", "x")], &keys, now_ms, t0),
            Offer::Dropped(DropReason::Malformed)
        );
        let d = t.drops();
        assert_eq!(
            (
                d.replay,
                d.unknown_key,
                d.bad_signature,
                d.stale,
                d.unsigned,
                d.malformed
            ),
            (1, 1, 1, 2, 2, 1)
        );
        assert_eq!(t.nodes(t0).len(), 1);
        // Lease expiry, and an old announcement cannot revive the node.
        let later = t0 + Duration::from_millis(700);
        assert!(t.nodes(later).is_empty());
        assert_eq!(t.expire(later), vec![NodeId::from("a")]);
        let a2_again = s(&ann("a", now_ms, 2), &good);
        assert_eq!(
            t.offer(a2_again, &keys, now_ms, later),
            Offer::Dropped(DropReason::Replay)
        );
        let a3 = s(&ann("a", now_ms + 100, 1), &good);
        assert_eq!(t.offer(a3, &keys, now_ms, later), Offer::Joined);
        // An authenticated contact renews a live lease without any announcement...
        let still = later + Duration::from_millis(500);
        assert!(t.touch("a", still));
        let after = still + Duration::from_millis(500);
        assert_eq!(t.nodes(after).len(), 1, "touched within the TTL");
        // ...but does not bring back an expired one, nor make up an unknown node.
        let gone = after + Duration::from_millis(700);
        assert!(!t.touch("a", gone));
        // The marks survive a restart: a new table seeded with them refuses the old ones.
        let marks = t.take_marks().unwrap();
        assert_eq!(t.take_marks(), None, "unchanged since");
        let mut restarted = NodeTable::new(Duration::from_millis(600), DEFAULT_CLOCK_WINDOW);
        restarted.restore_marks(marks);
        let before_restart = s(&ann("a", now_ms + 100, 1), &good);
        assert_eq!(
            restarted.offer(before_restart, &keys, now_ms, gone),
            Offer::Dropped(DropReason::Replay)
        );
        assert!(t.nodes(gone).is_empty());
        assert!(!t.touch("b", after));
    }
}
