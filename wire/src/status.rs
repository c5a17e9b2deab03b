//! The lookup server's local status endpoint (`docs/lookup-server.md`): a Unix socket
//! `<data>/status.sock` (mode 0600, inside the 0700 data directory, so only the lookup's own
//! user can ask) that answers one JSON request line with one JSON response line.
//!
//! ```text
//! → {"get":"nodes"}          ← {"nodes":[NodeRow…],"drops":{…}}
//! → {"get":"why","job":42}   ← {"job":42,"state":"parked","node":null,"why":"Refused by 1 node: …"}
//! → {"get":"status"}         ← {"queued":…,"running":…,"parked":…,…}
//! ```

use serde::{Deserialize, Serialize};

/// File name of the socket inside the lookup's data directory.
pub const SOCKET_FILE: &str = "status.sock";
/// Largest request line accepted by the server.
pub const MAX_REQUEST: usize = 4 * 1024;
/// Largest response line accepted by the client.
pub const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// One request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "get", rename_all = "kebab-case", deny_unknown_fields)]
pub enum StatusRequest {
    /// The node panel.
    Nodes,
    /// Why job `job` is (not) running.
    Why { job: i64 },
    /// Counters of the lookup as a whole.
    Status,
}

/// One row of the node panel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRow {
    pub node_id: String,
    /// Addresses from its announcement; the first is the one dialled.
    pub addresses: Vec<String>,
    pub port: u16,
    pub mflops: u64,
    pub total_slots: u32,
    /// Free slots as the node last announced them.
    pub announced_free: u32,
    /// Jobs this lookup is running on it now.
    pub busy: u32,
    /// Slots this lookup may still fill (`total_slots - busy`).
    pub free_slots: u32,
    pub groups: Vec<String>,
    /// Milliseconds since its last accepted announcement (lease renewal).
    pub age_ms: u64,
    /// Answers it returned, by how the job ended: a non-zero exit is an answer (a solver's
    /// exit 10 means "sat"), not a failure.
    pub answers: crate::api::OutcomeCounts,
    /// Jobs that got no answer from it: lost with it (connection broken, node gone mid-job).
    pub lost: u64,
    /// Offers it refused.
    pub refused: u64,
}

/// Announcements dropped by the lookup, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drops {
    pub unsigned: u64,
    pub malformed: u64,
    pub unknown_key: u64,
    pub bad_signature: u64,
    pub stale: u64,
    pub replay: u64,
    /// Times discovery was started afresh (a new mDNS daemon and browse, its cache dropped):
    /// after too many services it could not verify (a flood), or when mdns-sd cancelled the
    /// browse because its event channel filled.
    #[serde(default)]
    pub restarts: u64,
}

/// Response to [`StatusRequest::Nodes`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodesResponse {
    pub nodes: Vec<NodeRow>,
    pub drops: Drops,
    /// The web server the lookup talks to now (empty from a lookup that predates it).
    #[serde(default)]
    pub webserver: String,
    /// Moves from a failed web server to the next since start.
    #[serde(default)]
    pub failovers: u64,
}

/// Where a job is, as the lookup sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobWhere {
    /// Leased, waiting for a free slot.
    Queued,
    /// Running on `node`.
    Running,
    /// Leased, but no node will take it now; retried when nodes change, released after a
    /// while.
    Parked,
    /// Given back to the web server because no node would take it.
    Released,
    /// Its answer is in the spool or was relayed.
    Answered,
    /// This lookup does not hold it.
    Unknown,
}

/// Response to [`StatusRequest::Why`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhyResponse {
    pub job: i64,
    pub state: JobWhere,
    pub node: Option<String>,
    /// One sentence.
    pub why: String,
}

/// Response to [`StatusRequest::Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResponse {
    pub queued: u64,
    pub running: u64,
    pub parked: u64,
    /// Answers spooled and not yet acknowledged by the web server.
    pub spooled: u64,
    /// Jobs leased since start.
    pub leased_total: u64,
    /// Answers received from nodes since start.
    pub answers_total: u64,
    /// The same answers by how the jobs ended.
    pub answers: crate::api::OutcomeCounts,
    /// Offers refused by nodes since start.
    pub refusals_total: u64,
    /// Jobs lost with their node (re-dispatched) since start.
    pub lost_total: u64,
    /// Jobs given back to the web server since start.
    pub released_total: u64,
    /// Whether the web server is currently unreachable.
    pub upstream_down: bool,
    /// For how long, in whole seconds, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_down_secs: Option<u64>,
    /// The web server the lookup talks to now, one of `webservers` (empty from a lookup that
    /// predates it).
    #[serde(default)]
    pub webserver: String,
    /// Every web server the lookup was given, in order.
    #[serde(default)]
    pub webservers: Vec<String>,
    /// Moves from a failed web server to the next since start.
    #[serde(default)]
    pub failovers: u64,
    /// The last of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<FailoverRow>,
}

/// One move from a failed web server to the next ([`StatusResponse::last_failover`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverRow {
    pub from: String,
    pub to: String,
    /// The failure, with its cause chain.
    pub cause: String,
    /// Whole seconds since.
    pub secs_ago: u64,
}

/// An error answer: `{"error":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusError {
    pub error: String,
}
