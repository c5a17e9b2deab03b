//! The dispatcher: keeps one set of lanes per live node, places queued jobs on the fastest
//! free node, parks those no node will take and gives back the overdue.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rjs_cmd::chain;
use rjs_wire::api::{MAX_BATCH, MAX_REASON, Waiting};
use rjs_wire::ids::JobId;
use rjs_wire::status::JobWhere;
use tokio::sync::mpsc;

use super::lanes::lane;
use super::state::{Lanes, Place, Shared, State, wire_ids};
use crate::discovery::NodeView;
use crate::dispatch::{NodeClient, NodeId, Why};

pub(super) async fn dispatcher(shared: Arc<Shared>) {
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
pub(super) fn sync_lanes(
    shared: &Arc<Shared>,
    nodes: &[NodeView],
    known: &mut HashMap<NodeId, SocketAddr>,
) {
    // The addresses are the node's signed ones. Where it signs several, the lanes keep the
    // one they use while it is still signed; a new node gets its first (preferred) one.
    let mut live: HashMap<NodeId, SocketAddr> = HashMap::new();
    for n in nodes {
        let kept = known
            .get(&n.node_id)
            .filter(|a| a.port() == n.port && n.addresses.contains(&a.ip()));
        let chosen = kept
            .copied()
            .or_else(|| n.addresses.first().map(|ip| SocketAddr::new(*ip, n.port)));
        if let Some(addr) = chosen {
            live.insert(n.node_id.clone(), addr);
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

pub(super) fn start_lanes(shared: &Arc<Shared>, n: &NodeView, addr: SocketAddr) {
    tracing::info!(node = %n.node_id, %addr, slots = n.total_slots, mflops = n.mflops, "node joined");
    let (tx, rx) = mpsc::unbounded_channel::<JobId>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let slots = n.total_slots.clamp(1, 256);
    let tasks = (0..slots)
        .map(|_| {
            let mut client = NodeClient::new(n.node_id.clone(), addr, shared.node_tls.clone())
                .with_peer_check(shared.peer_check.clone());
            client.answer_margin = shared.cfg.answer_margin;
            client.max_compile = shared.cfg.max_compile;
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

pub(super) fn stop_lanes(shared: &Arc<Shared>, node: &NodeId) {
    let removed = shared.lanes().remove(node);
    if let Some(l) = removed {
        tracing::info!(%node, addr = %l.addr, "node gone (lease expired or moved)");
        l.tasks.iter().for_each(|t| t.abort());
    }
    // Its running jobs go to other nodes now.
    let mut st = shared.lock();
    let lost: Vec<JobId> = st
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
pub(super) fn job_lost(
    shared: &Arc<Shared>,
    st: &mut State,
    id: JobId,
    node: &NodeId,
    reason: &str,
) {
    st.counters.lost += 1;
    if let Some(s) = st.stats.get_mut(node) {
        s.lost += 1;
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
pub(super) fn report_failure(shared: &Shared, id: JobId, why: String) {
    let client = shared.client.clone();
    tokio::spawn(async move {
        let why = clip_reason(&why);
        if let Err(e) = client.fail(id.get(), &why).await {
            tracing::warn!(job = %id, error = %chain(&e), "reporting a failure");
        }
    });
}

/// Gives back jobs parked longer than `park`.
pub(super) async fn release_overdue(shared: &Arc<Shared>) {
    let now = Instant::now();
    let overdue: Vec<(JobId, String)> = {
        let mut st = shared.lock();
        let ids: Vec<(JobId, String)> = st
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
        ids
    };
    if overdue.is_empty() {
        return;
    }
    let client = shared.client.clone();
    tokio::spawn(async move {
        for chunk in overdue.chunks(MAX_BATCH as usize) {
            let ids: Vec<JobId> = chunk.iter().map(|(id, _)| *id).collect();
            let waiting = chunk
                .iter()
                .map(|(id, why)| Waiting {
                    job_id: id.get(),
                    reason: clip_reason(why),
                })
                .collect();
            if let Err(e) = client.release_waiting(&wire_ids(&ids), waiting).await {
                tracing::warn!(error = %chain(&e), "giving parked jobs back");
            }
        }
    });
}

/// Places queued jobs on the fastest free nodes; parks those no node will take.
pub(super) fn assign(shared: &Arc<Shared>, nodes: &[NodeView]) {
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
        let parked: Vec<JobId> = st
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
    // Jobs parked by this pass whose reason the web server has not heard yet.
    let mut tell: Vec<Waiting> = Vec::new();
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
                        tracing::info!(job = %id, why = %why, "parked");
                        if let Some(j) = st.jobs.get_mut(&id) {
                            let sentence = j.parked_sentence(&why);
                            if j.told.as_deref() != Some(sentence.as_str()) {
                                tell.push(Waiting {
                                    job_id: id.get(),
                                    reason: clip_reason(&sentence),
                                });
                                j.told = Some(sentence);
                            }
                            j.place = Place::Parked { why, since: now };
                        }
                    }
                    _ => keep.push_back(id),
                }
            }
        }
    }
    st.queue = keep;
    drop(st);
    if !tell.is_empty() {
        let client = shared.client.clone();
        tokio::spawn(async move {
            for chunk in tell.chunks(MAX_BATCH as usize) {
                if let Err(e) = client.waiting(chunk.to_vec()).await {
                    tracing::warn!(error = %chain(&e), "telling the web server why jobs wait");
                }
            }
        });
    }
}

/// A reason as the web server takes it: no control characters, at most [`MAX_REASON`] bytes
/// (cut at a character boundary).
fn clip_reason(why: &str) -> String {
    let mut why: String = why.chars().filter(|c| !c.is_control()).collect();
    if why.len() > MAX_REASON {
        let mut cut = MAX_REASON - 3;
        while !why.is_char_boundary(cut) {
            cut -= 1;
        }
        why.truncate(cut);
        why.push('…');
    }
    why
}
