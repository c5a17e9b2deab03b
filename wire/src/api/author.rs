//! The author API (`/api/v1`, [`AUTHOR_PREFIX`](super::AUTHOR_PREFIX)): what an author's
//! client sends and reads back.

use serde::{Deserialize, Serialize};

use super::JobState;

/// `GET /api/v1/whoami`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    pub name: String,
    pub fingerprint: String,
}

/// One job of a submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRef {
    pub id: i64,
    pub task: u32,
}

/// `POST /api/v1/bundles` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadResponse {
    /// SHA-256 of the bundle file, lowercase hex.
    pub bundle_id: String,
    pub name: String,
    pub tasks: u32,
    /// True if this upload queued new jobs; false if the bundle was already there and its
    /// existing jobs are returned (upload again with `?resubmit=true` to run it again).
    pub created: bool,
    pub jobs: Vec<JobRef>,
}

/// A job as its author sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    pub id: i64,
    pub bundle_id: String,
    /// The bundle's manifest name.
    pub name: String,
    pub task: u32,
    pub tasks: u32,
    pub state: JobState,
    /// How many leases of this job ended without an answer.
    pub attempts: u32,
    /// Why the last attempt failed (or why the job failed), if it did.
    pub reason: Option<String>,
    /// How the job ended, from its answer (`exit 0`, `trap: …`, `limit: time`).
    pub outcome: Option<String>,
    /// Node that computed the answer.
    pub node: Option<String>,
    /// Size of the answer archive, if there is one.
    pub answer_bytes: Option<u64>,
    /// Unix seconds.
    pub created_at: i64,
    pub updated_at: i64,
}

/// `GET /api/v1/jobs` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobList {
    pub jobs: Vec<JobView>,
}
