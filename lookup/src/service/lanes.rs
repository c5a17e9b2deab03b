//! The lanes: one per slot of a live node, each running one job at a time over its own
//! connection; and what becomes of a job when its lane is done with it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rjs_cmd::chain;
use rjs_wire::ids::JobId;
use rjs_wire::node::RefusalCode;
use rjs_wire::status::JobWhere;
use tokio::sync::mpsc;

use super::dispatcher::{job_lost, report_failure};
use super::state::{Place, Shared, State, unreachable_backoff};
use crate::dispatch::{DispatchError, JobOffer, JobOutcome, NodeClient, NodeId, Progress};

/// How long a keepalive ping may take.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// One slot of one node: takes the jobs assigned to the node, one at a time, over its own
/// persistent connection.
pub(super) async fn lane(
    shared: Arc<Shared>,
    mut client: NodeClient,
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<JobId>>>,
) {
    let node = client.node_id().to_owned();
    let keepalive = shared.keepalive();
    loop {
        // Idle for a keepalive interval: prove the node alive over this lane's connection,
        // so that its lease does not depend on mDNS packets alone (which a flood may drown).
        let next = tokio::time::timeout(keepalive, async { rx.lock().await.recv().await }).await;
        let id = match next {
            Ok(Some(id)) => id,
            Ok(None) => return,
            Err(_) => {
                match client.ping(PING_TIMEOUT).await {
                    Ok(()) => shared.alive(&node),
                    Err(e) => tracing::debug!(%node, error = %chain(&e), "keepalive"),
                }
                continue;
            }
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
                tracing::warn!(job = %id, %why, "bundle unavailable");
                finish(&shared, &node, id, Finish::BadBundle(why));
                continue;
            }
        };
        let offer = JobOffer {
            job_id: id.get(),
            bundle_sha256: lease.bundle_id.clone(),
            bundle: bundle.bytes.clone(),
            task: lease.task,
        };
        let offered = Instant::now();
        let watched = shared.clone();
        let mut on_progress = move |p: Progress| {
            if let Some(j) = watched.lock().jobs.get_mut(&id) {
                j.compiling = match p {
                    Progress::Compiling { .. } => Some((p, Instant::now())),
                    Progress::Running => None,
                };
            }
        };
        let result = client
            .run_job_watched(&offer, bundle.time_limit, &mut on_progress)
            .await;
        if result.is_ok() {
            shared.alive(&node);
        }
        let fin = match result {
            Ok(JobOutcome::Answer { outcome, bytes }) => {
                // Spooled (fsynced) before this lane offers the node anything else.
                match shared
                    .spool
                    .put(id.get(), outcome.clone(), node.to_string(), bytes)
                    .await
                {
                    Ok(()) => Finish::Answered {
                        outcome,
                        took: offered.elapsed(),
                    },
                    Err(e) => {
                        tracing::error!(job = %id, error = %chain(&e), "spooling an answer failed");
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

pub(super) enum Finish {
    Answered { outcome: String, took: Duration },
    Refused { code: RefusalCode, reason: String },
    Unreachable(String),
    Lost(String),
    BadBundle(String),
    Vanished,
}

/// Puts a job that is still ours back at the head of the queue (it was offered before the
/// jobs behind it).
fn requeue_first(st: &mut State, id: JobId) {
    if let Some(j) = st.jobs.get_mut(&id) {
        j.place = Place::Queued;
        st.queue.push_front(id);
    }
}

/// Records how a lane's job ended and wakes whoever can use the freed slot.
pub(super) fn finish(shared: &Arc<Shared>, node: &NodeId, id: JobId, fin: Finish) {
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
        Finish::Answered { outcome, took } => {
            st.counters.answers += 1;
            st.pace.finished(now, took);
            let s = st.stats.entry(node.to_owned()).or_default();
            (s.unreachable, s.unreachable_at) = (0, None);
            s.answers.count(&outcome);
            st.counters.outcomes.count(&outcome);
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
            tracing::info!(job = %id, %node, code = code.as_str(), %reason, "refused");
            if !transient && let Some(j) = st.jobs.get_mut(&id) {
                j.refusals.insert(node.to_owned(), (code, now));
                j.last_refusal = Some((node.to_owned(), reason));
            }
            requeue_first(&mut st, id);
        }
        Finish::Unreachable(reason) => {
            let s = st.stats.entry(node.to_owned()).or_default();
            s.unreachable = s.unreachable.saturating_add(1);
            s.unreachable_at = Some(now);
            let backoff = unreachable_backoff(s.unreachable);
            s.cool_until = Some(now + backoff);
            tracing::warn!(job = %id, %node, %reason, ?backoff, "node unreachable; not dialled again until it announces itself or the back-off ends");
            requeue_first(&mut st, id);
        }
        Finish::Lost(reason) => {
            tracing::warn!(job = %id, %node, %reason, "job lost with its node");
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
