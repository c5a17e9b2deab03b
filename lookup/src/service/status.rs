//! The status socket's answers (node panel, `why`, counters), read from the shared state.

use std::sync::Arc;

use rjs_wire::ids::JobId;
use rjs_wire::status::{
    FailoverRow, JobWhere, NodeRow, NodesResponse, StatusRequest, StatusResponse, WhyResponse,
};

use super::state::{Place, Shared};
use crate::dispatch::{NodeId, Progress};

/// Answers status requests from the shared state.
pub(super) fn shared_status(shared: Arc<Shared>) -> crate::status::Handler {
    Arc::new(move |req| match req {
        StatusRequest::Nodes => serde_json::to_value(nodes_panel(&shared)),
        StatusRequest::Why { job } => serde_json::to_value(why(&shared, job)),
        StatusRequest::Status => serde_json::to_value(status(&shared)),
    })
}

pub(super) fn nodes_panel(shared: &Shared) -> NodesResponse {
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
                answers: s.map(|s| s.answers).unwrap_or_default(),
                lost: s.map_or(0, |s| s.lost),
                refused: s.map_or(0, |s| s.refused),
                node_id: n.node_id.into_string(),
            }
        })
        .collect();
    let servers = shared.client.servers().view();
    NodesResponse {
        nodes: rows,
        drops,
        webserver: servers.current,
        failovers: servers.failovers,
    }
}

pub(super) fn why(shared: &Shared, job: i64) -> WhyResponse {
    let answer = |state, node, why| WhyResponse {
        job,
        state,
        node,
        why,
    };
    let nodes = shared.nodes();
    let id = JobId::from(job);
    let st = shared.lock();
    let Some(j) = st.jobs.get(&id) else {
        if let Some(past) = st.history.get(&id) {
            return answer(
                past.place,
                past.node.as_ref().map(NodeId::to_string),
                past.why.clone(),
            );
        }
        return answer(
            JobWhere::Unknown,
            None,
            "This lookup does not hold the job: it may be queued on the web server, done, or leased by another lookup.".into(),
        );
    };
    match &j.place {
        Place::Running { node } => answer(
            JobWhere::Running,
            Some(node.to_string()),
            match j.compiling {
                Some((
                    Progress::Compiling {
                        elapsed,
                        module_bytes,
                        limit,
                        estimate,
                    },
                    at,
                )) => format!(
                    "Running on {node}: compiling its {:.1} MB module, {} s so far{} (the \
                     node's compile limit: {} s; not counted in the job's time limit).",
                    module_bytes as f64 / 1e6,
                    (elapsed + at.elapsed()).as_secs(),
                    estimate.map_or(String::new(), |e| format!(
                        ", about {} s in all",
                        e.as_secs()
                    )),
                    limit.as_secs()
                ),
                _ => format!("Running on {node}."),
            },
        ),
        Place::Parked { why, since } => answer(
            JobWhere::Parked,
            None,
            format!(
                "{} Held for {} s; given back to the web server after {} s.",
                j.parked_sentence(why),
                since.elapsed().as_secs(),
                shared.cfg.park.as_secs()
            ),
        ),
        Place::Queued => answer(
            JobWhere::Queued,
            None,
            shared
                .scheduler
                .why(&j.lease.group, &st.usable(&nodes, None), &j.refusal_codes())
                .map(|w| w.sentence())
                .unwrap_or_else(|| "Queued: it goes to the next free slot.".into()),
        ),
    }
}

pub(super) fn status(shared: &Shared) -> StatusResponse {
    let spooled = shared.spool.pending_count() as u64;
    let servers = shared.client.servers().view();
    let st = shared.lock();
    StatusResponse {
        queued: st.count(|p| matches!(p, Place::Queued)),
        running: st.count(|p| matches!(p, Place::Running { .. })),
        parked: st.count(|p| matches!(p, Place::Parked { .. })),
        spooled,
        leased_total: st.counters.leased,
        answers_total: st.counters.answers,
        answers: st.counters.outcomes,
        refusals_total: st.counters.refusals,
        lost_total: st.counters.lost,
        released_total: st.counters.released,
        upstream_down: st.down_since.is_some(),
        upstream_down_secs: st.down_since.map(|t| t.elapsed().as_secs()),
        webserver: servers.current,
        webservers: servers.urls,
        failovers: servers.failovers,
        last_failover: servers.last.map(|f| FailoverRow {
            secs_ago: f.at.elapsed().as_secs(),
            from: f.from,
            to: f.to,
            cause: f.cause,
        }),
    }
}
