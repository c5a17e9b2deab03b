//! The puller (leases jobs sized to the free capacity) and the renewer (keeps every held
//! job's lease alive).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rjs_cmd::chain;
use rjs_wire::api::{Lease, MAX_BATCH};
use rjs_wire::ids::JobId;

use super::state::{Job, MAX_PARKED, Place, Shared, wire_ids};
use crate::discovery::NodeView;
use crate::upstream::Poller;

/// Slots of the live nodes this lookup may still fill.
pub(super) fn free_capacity(shared: &Shared, nodes: &[NodeView]) -> u64 {
    let st = shared.lock();
    let slots: u64 = nodes.iter().map(|n| u64::from(n.total_slots)).sum();
    let target = slots * u64::from(shared.cfg.prefetch.max(1));
    // Parked jobs hold no slot, but past a bound they stop further leasing (a queue of
    // jobs nobody here will run must not be leased whole).
    let parked = st.count(|p| matches!(p, Place::Parked { .. }));
    let held = st.jobs.len() as u64 - parked + parked.saturating_sub(MAX_PARKED);
    target.saturating_sub(held)
}

pub(super) async fn puller(shared: Arc<Shared>) {
    let (events, _events_task) = shared.client.events();
    let mut poller = Poller::new(Some(events), shared.cfg.poll)
        .with_backoff(Duration::from_millis(250), Duration::from_secs(30));
    let lease_secs = shared.cfg.lease_secs();
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
pub(super) fn take_leases(shared: &Shared, leases: Vec<Lease>) {
    let n = leases.len();
    let mut st = shared.lock();
    st.upstream_down = false;
    for lease in leases {
        let id = JobId::from(lease.job_id);
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
}

pub(super) async fn renewer(shared: Arc<Shared>) {
    let lease_secs = shared.cfg.lease_secs();
    let every = Duration::from_secs(u64::from(lease_secs)) / 3;
    loop {
        tokio::time::sleep(every).await;
        let mut ids: Vec<JobId> = shared.lock().jobs.keys().copied().collect();
        let spool = shared.spool.clone();
        if let Ok(Ok(spooled)) = tokio::task::spawn_blocking(move || spool.pending()).await {
            ids.extend(spooled.into_iter().map(JobId::from));
        }
        ids.sort_unstable();
        ids.dedup();
        for chunk in ids.chunks(MAX_BATCH as usize) {
            match shared.client.renew(&wire_ids(chunk), lease_secs).await {
                Ok(r) => {
                    if !r.lost.is_empty() {
                        let mut st = shared.lock();
                        for id in r.lost.iter().map(|&id| JobId::from(id)) {
                            if let Some(j) = st.jobs.get(&id)
                                && !matches!(j.place, Place::Running { .. })
                            {
                                st.jobs.remove(&id);
                                st.queue.retain(|q| *q != id);
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
