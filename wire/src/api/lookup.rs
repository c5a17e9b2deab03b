//! The lookup API (`/lookup/v1`, [`LOOKUP_PREFIX`](super::LOOKUP_PREFIX)): leases, renewals,
//! releases, failures, single answers and the events stream.

use serde::{Deserialize, Serialize};

use super::JobState;

/// Header a lookup server sets on an answer upload: a one-line summary of how the job ended
/// (e.g. `exit 0`, `exit 10`, `trap: unreachable`, `limit: time`), at most
/// [`MAX_OUTCOME`] bytes.
pub const H_OUTCOME: &str = "rjs-outcome";
/// Header a lookup server sets on an answer upload: the id of the node that computed it.
pub const H_NODE: &str = "rjs-node";
pub const MAX_OUTCOME: usize = 200;
/// A node id is a name as nodes announce themselves ([`crate::announce::valid_name`]).
pub const MAX_NODE_ID: usize = crate::announce::MAX_NAME;
pub const MAX_REASON: usize = 500;
/// Most jobs one lease request may take, and most ids in one renew/release request.
pub const MAX_BATCH: u32 = 500;

/// `POST /lookup/v1/lease` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// At most this many jobs (1 ..= [`MAX_BATCH`]).
    pub max: u32,
    /// Only jobs that a node of one of these groups may run (the job's group equal to one of
    /// them or above it, see `rjs_signer::manifest::node_serves`). Empty: any group.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Lease duration, seconds (5 ..= 3600).
    pub lease_secs: u32,
}

/// One leased job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub job_id: i64,
    pub bundle_id: String,
    pub task: u32,
    pub tasks: u32,
    pub group: String,
    /// The author's key fingerprint (so a lookup can explain refusals by trust).
    pub author_fingerprint: String,
    /// Which attempt this lease is (1 for the first).
    pub attempt: u32,
    /// Unix seconds.
    pub lease_until: i64,
}

/// `POST /lookup/v1/lease` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseResponse {
    pub leases: Vec<Lease>,
}

/// `POST /lookup/v1/held` request: the jobs the web server says this lookup holds (leased
/// to it and not expired), oldest first, their leases extended to `lease_secs` from now. A
/// restarted lookup reads them to take its work back at once instead of leaving it leased
/// and idle until the leases lapse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldRequest {
    /// Only jobs with a greater id (paging; none: from the start).
    #[serde(default)]
    pub after: Option<i64>,
    /// At most this many jobs (1 ..= [`MAX_BATCH`]).
    pub max: u32,
    /// Lease duration, seconds (5 ..= 3600).
    pub lease_secs: u32,
}

/// `POST /lookup/v1/renew` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub job_ids: Vec<i64>,
    pub lease_secs: u32,
}

/// `POST /lookup/v1/renew` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewResponse {
    /// Leases extended, with their new end.
    pub renewed: Vec<i64>,
    pub lease_until: i64,
    /// Jobs this lookup no longer holds (expired and re-leased, answered, failed).
    pub lost: Vec<i64>,
}

/// `POST /lookup/v1/release` request: give leases back without counting an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    pub job_ids: Vec<i64>,
    /// Why some of them could not run here (for their authors; each reason at most
    /// [`MAX_REASON`] bytes, one per job at most, only jobs in `job_ids`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<Waiting>,
}

/// Why a job this lookup holds (or gives back) does not run, in words for its author.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Waiting {
    pub job_id: i64,
    pub reason: String,
}

/// `POST /lookup/v1/waiting` request: why jobs this lookup holds are parked (no node takes
/// them now). At most [`MAX_BATCH`] jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitingRequest {
    pub jobs: Vec<Waiting>,
}

/// `POST /lookup/v1/waiting` response: the jobs whose reason was recorded (those this lookup
/// holds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingResponse {
    pub updated: Vec<i64>,
}

/// `POST /lookup/v1/release` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseResponse {
    pub released: Vec<i64>,
}

/// `POST /lookup/v1/jobs/{id}/failure` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureRequest {
    /// Why no answer could be had (at most [`MAX_REASON`] bytes).
    pub reason: String,
}

/// `POST /lookup/v1/jobs/{id}/failure` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureResponse {
    /// `queued` (will be tried again) or `failed` (out of attempts).
    pub state: JobState,
    pub attempts: u32,
}

/// `PUT /lookup/v1/jobs/{id}/answer` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerResponse {
    /// `stored`, or `duplicate` when the job already had an answer (this one is discarded).
    pub status: String,
}

/// The data of a `jobs` event on `GET /lookup/v1/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobsEvent {
    /// Jobs queued now (all groups).
    pub queued: u64,
}
