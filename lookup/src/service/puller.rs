//! The puller (leases ahead of the nodes by the bandwidth-delay product of jobs), the
//! reclaimer (a restarted lookup takes back what the web server says it still holds) and
//! the renewer (keeps every held job's lease alive).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rjs_cmd::chain;
use rjs_wire::api::{Lease, LeaseResponse, MAX_BATCH};
use rjs_wire::ids::JobId;
use rjs_wire::status::JobWhere;
use tokio::task::JoinSet;

use super::state::{Job, MAX_PARKED, Place, Shared, wire_ids};
use crate::discovery::NodeView;
use crate::upstream::{UpstreamError, jitter};

/// Lease requests in flight at once (on one HTTP/2 connection).
const MAX_LEASES_IN_FLIGHT: usize = 4;
/// Smallest lease a request sent while another is in flight asks for: below it, the one in
/// flight brings enough.
const MIN_EXTRA_LEASE: u64 = 16;
/// How often the puller re-checks whether the answers kept during an outage are uploaded.
const ANSWERS_FIRST_RECHECK: Duration = Duration::from_millis(100);

/// Slots of the live nodes this lookup may still fill, and the jobs it holds towards them.
struct Budget {
    /// Jobs to hold ([`super::pace::Pace::target`]).
    target: u64,
    /// Jobs held that count against it (running, queued, parked beyond [`MAX_PARKED`]).
    held: u64,
    /// Jobs queued (not yet on a node).
    queued: u64,
}

fn budget(shared: &Shared, nodes: &[NodeView]) -> Budget {
    let slots: u64 = nodes.iter().map(|n| u64::from(n.total_slots)).sum();
    let base = slots * u64::from(shared.cfg.prefetch.max(1));
    let lease = Duration::from_secs(u64::from(shared.cfg.lease_secs()));
    let mut st = shared.lock();
    let target = if slots == 0 {
        0
    } else {
        st.pace.target(base, slots, lease, Instant::now())
    };
    // Parked jobs hold no slot, but past a bound they stop further leasing (a queue of
    // jobs nobody here will run must not be leased whole).
    let parked = st.count(|p| matches!(p, Place::Parked { .. }));
    let held = st.jobs.len() as u64 - parked + parked.saturating_sub(MAX_PARKED);
    Budget {
        target,
        held,
        queued: st.queue.len() as u64,
    }
}

/// Jobs the lookup may still lease.
pub(super) fn free_capacity(shared: &Shared, nodes: &[NodeView]) -> u64 {
    let b = budget(shared, nodes);
    b.target.saturating_sub(b.held)
}

type LeaseResult = (u64, Duration, Result<LeaseResponse, UpstreamError>);

/// Leases ahead of the nodes: as many requests in flight as it takes to keep
/// [`free_capacity`] covered, woken by finished jobs, by the web server's job events, by the
/// link coming back, and by a jittered timer.
pub(super) async fn puller(shared: Arc<Shared>) {
    let (events, _events_task) = shared.client.events();
    let mut events = Some(events);
    let poll = shared.cfg.poll;
    let lease_secs = shared.cfg.lease_secs();
    let mut inflight: JoinSet<LeaseResult> = JoinSet::new();
    // Jobs asked for by the requests in flight.
    let mut asked: u64 = 0;
    // The last lease came back short (the web server's queue looked empty): only an event
    // or the timer leads to another, not every finished job.
    let mut drained = false;
    let mut next_poll = tokio::time::Instant::now() + jitter(poll, 0.5);
    loop {
        let gated = !shared.may_lease();
        if !drained && !gated {
            let free = free_capacity(&shared, &shared.nodes());
            while inflight.len() < MAX_LEASES_IN_FLIGHT {
                let want = free.saturating_sub(asked).min(u64::from(MAX_BATCH));
                let floor = if inflight.is_empty() {
                    1
                } else {
                    MIN_EXTRA_LEASE
                };
                if want < floor {
                    break;
                }
                asked += want;
                let (client, groups) = (shared.client.clone(), shared.cfg.groups.clone());
                inflight.spawn(async move {
                    let t = Instant::now();
                    let r = client.lease(want as u32, &groups, lease_secs).await;
                    (want, t.elapsed(), r)
                });
            }
        }
        let recheck = tokio::time::sleep(if gated {
            ANSWERS_FIRST_RECHECK
        } else {
            Duration::from_secs(3600)
        });
        tokio::select! {
            Some(joined) = inflight.join_next(), if !inflight.is_empty() => {
                let Ok((want, rtt, result)) = joined else { continue };
                asked = asked.saturating_sub(want);
                match result {
                    Ok(resp) => {
                        shared.upstream_ok();
                        shared.lock().pace.round_trip(rtt);
                        if (resp.leases.len() as u64) < want {
                            drained = true;
                        }
                        let _ = take_leases(&shared, resp.leases, Taken::Leased);
                    }
                    // No answer at all: the link (a web server that answers with a failure
                    // is reachable, and leases nothing: back off to the timer below).
                    Err(e) if e.is_unreachable() => {
                        shared.upstream_failed(&chain(&e));
                        // The web server may have leased the jobs and the response been lost.
                        shared.reclaim.notify_one();
                    }
                    Err(e) => {
                        // A 5xx: the store may have leased the jobs before the failure (a
                        // gateway's 502/504 in particular); `held` tells.
                        if e.is_transient() {
                            shared.reclaim.notify_one();
                        }
                        tracing::warn!(error = %chain(&e), "the web server refused to lease jobs");
                        drained = true;
                    }
                }
            }
            _ = shared.capacity.notified() => {}
            _ = shared.upstream_back.notified() => drained = false,
            ev = next_event(&mut events) => {
                if ev.is_some() {
                    drained = false;
                } else {
                    // The event task ended (it only does when told to): poll on the timer.
                    events = None;
                }
            }
            _ = tokio::time::sleep_until(next_poll) => {
                drained = false;
                next_poll = tokio::time::Instant::now() + jitter(poll, 0.5);
                give_back_surplus(&shared);
            }
            _ = recheck => {}
        }
    }
}

/// The next `jobs` event, or never when there is no stream.
async fn next_event(
    events: &mut Option<tokio::sync::mpsc::Receiver<rjs_wire::api::JobsEvent>>,
) -> Option<rjs_wire::api::JobsEvent> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Gives back queued jobs far beyond what the nodes can use (nodes left): the newest ones,
/// keeping the target and as much again.
fn give_back_surplus(shared: &Arc<Shared>) {
    let b = budget(shared, &shared.nodes());
    let keep = b.target + b.target.max(MIN_EXTRA_LEASE);
    if b.queued <= keep || shared.upstream_is_down() {
        return;
    }
    let surplus = (b.queued - keep).min(u64::from(MAX_BATCH)) as usize;
    let ids: Vec<JobId> = {
        let mut st = shared.lock();
        let mut ids = Vec::with_capacity(surplus);
        while ids.len() < surplus {
            let Some(id) = st.queue.pop_back() else { break };
            if st.jobs.remove(&id).is_some() {
                st.counters.released += 1;
                ids.push(id);
            }
        }
        ids
    };
    if ids.is_empty() {
        return;
    }
    tracing::info!(
        jobs = ids.len(),
        "giving back jobs the nodes here cannot start soon"
    );
    let client = shared.client.clone();
    tokio::spawn(async move {
        if let Err(e) = client.release(&wire_ids(&ids)).await {
            tracing::debug!(error = %chain(&e), "giving jobs back (their leases will lapse)");
        }
    });
}

/// How jobs came to [`take_leases`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Taken {
    /// A lease response: jobs that were queued at the web server.
    Leased,
    /// The web server's list of the jobs held here ([`reclaim`]).
    Held,
}

/// Adds freshly leased (or reclaimed) jobs to the queue. A reclaimed job this lookup has
/// answered since the list was read is not taken: its answer was spooled after the list was
/// read and relayed before the spool was looked at (neither held nor spooled here any more,
/// yet answered), which would run it once more for nothing.
/// Returns how many it took.
pub(super) fn take_leases(shared: &Shared, leases: Vec<Lease>, how: Taken) -> usize {
    let mut n = 0usize;
    let mut st = shared.lock();
    for lease in leases {
        let id = JobId::from(lease.job_id);
        if st.jobs.contains_key(&id) {
            continue;
        }
        if how == Taken::Held
            && st
                .history
                .get(&id)
                .is_some_and(|p| p.place == JobWhere::Answered)
        {
            continue;
        }
        n += 1;
        st.counters.leased += 1;
        st.jobs.insert(
            id,
            Job {
                lease,
                place: Place::Queued,
                refusals: HashMap::new(),
                last_refusal: None,
                compiling: None,
                losses: 0,
                told: None,
            },
        );
        st.queue.push_back(id);
    }
    drop(st);
    if n > 0 {
        tracing::debug!(jobs = n, "leased");
        shared.dispatch.notify_one();
    }
    n
}

/// The reclaimer: at start, after the web server was unreachable, and after a lease request
/// failed on the way, takes back the jobs the web server says this lookup holds but it does
/// not know of ([`reclaim`]): a previous run's, killed before it could give them back, or
/// those of a lease whose response was lost (the web server leased them, the answer never
/// arrived). Without it they would stay leased and idle until their leases lapse.
pub(super) async fn reclaimer(shared: Arc<Shared>) {
    loop {
        reclaim(&shared).await;
        shared.reclaim.notified().await;
        // A burst of failures or a flapping link: one pass for all of them.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One pass of the [`reclaimer`]: every job held at the web server that is neither here nor
/// answered in the spool is queued. Retries while the web server cannot be reached; gives up
/// when it refuses.
async fn reclaim(shared: &Arc<Shared>) {
    let lease_secs = shared.cfg.lease_secs();
    let mut backoff =
        crate::upstream::Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    let mut after: Option<i64> = None;
    let mut taken = 0usize;
    loop {
        let page = match shared.client.held(after, MAX_BATCH, lease_secs).await {
            Ok(p) => p.leases,
            Err(e) if e.is_transient() => {
                tracing::debug!(error = %chain(&e), "reading the jobs held");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %chain(&e), "could not read the jobs the web server says are leased here; those this lookup does not know of stay idle until their leases lapse");
                return;
            }
        };
        let full = page.len() as u32 >= MAX_BATCH;
        after = page.last().map(|l| l.job_id).or(after);
        let answered = spooled(shared).await;
        let fresh: Vec<Lease> = page
            .into_iter()
            .filter(|l| !answered.contains(&l.job_id))
            .collect();
        taken += take_leases(shared, fresh, Taken::Held);
        if !full {
            break;
        }
    }
    if taken > 0 {
        tracing::info!(
            jobs = taken,
            "took back jobs the web server says are leased here (a previous run's, or a lease whose response was lost)"
        );
    }
}

pub(super) async fn renewer(shared: Arc<Shared>) {
    let lease_secs = shared.cfg.lease_secs();
    let every = Duration::from_secs(u64::from(lease_secs)) / 3;
    loop {
        tokio::time::sleep(every).await;
        let mut ids: Vec<JobId> = shared.lock().jobs.keys().copied().collect();
        ids.extend(spooled(&shared).await.into_iter().map(JobId::from));
        ids.sort_unstable();
        ids.dedup();
        for chunk in ids.chunks(MAX_BATCH as usize) {
            match shared.client.renew(&wire_ids(chunk), lease_secs).await {
                Ok(r) => {
                    shared.upstream_ok();
                    if !r.lost.is_empty() {
                        not_renewed(&shared, r.lost.iter().map(|&id| JobId::from(id))).await;
                    }
                }
                Err(e) => {
                    if e.is_unreachable() {
                        shared.upstream_failed(&chain(&e));
                    }
                    tracing::debug!(error = %chain(&e), "renewing leases failed");
                    break;
                }
            }
        }
    }
}

/// The jobs whose answers wait in the spool (none if it cannot be read: the callers then
/// treat them as not answered here).
async fn spooled(shared: &Shared) -> HashSet<i64> {
    let spool = shared.spool.clone();
    match tokio::task::spawn_blocking(move || spool.pending()).await {
        Ok(Ok(ids)) => ids.into_iter().collect(),
        _ => HashSet::new(),
    }
}

/// Sorts the jobs a renewal did not extend by what they are here now: answered in the
/// meantime (nothing lost), answer still in the spool (it is delivered all the same: the
/// web server takes an answer from the last holder), or really lost (queued or parked here,
/// dropped; running, left to finish).
async fn not_renewed(shared: &Shared, ids: impl Iterator<Item = JobId>) {
    // Read again: answers spooled since the renewal was sent count as answered here.
    let spooled = spooled(shared).await;
    let (mut lost, mut answering) = (Vec::new(), Vec::new());
    let mut st = shared.lock();
    for id in ids {
        if let Some(j) = st.jobs.get(&id) {
            lost.push(id.get());
            if !matches!(j.place, Place::Running { .. }) {
                st.jobs.remove(&id);
                st.queue.retain(|q| *q != id);
            }
        } else if spooled.contains(&id.get()) {
            answering.push(id.get());
        }
        // Else: answered and acknowledged since the renewal was sent.
    }
    drop(st);
    if !answering.is_empty() {
        tracing::info!(jobs = ?answering, "leases lapsed before the answers were delivered; delivering them all the same");
    }
    if !lost.is_empty() {
        tracing::warn!(jobs = ?lost, "leases lost (expired or taken back) before the jobs were answered");
    }
}
