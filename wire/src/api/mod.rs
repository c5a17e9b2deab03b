//! JSON bodies of the web server's HTTP API. `docs/webserver-api.md` is the authority; every
//! request type here is `deny_unknown_fields` so that a typo is an error, not a silent
//! default.
//!
//! * [`author`]: the author API (`/api/v1`): who am I, uploads, job views.
//! * [`lookup`]: the lookup API (`/lookup/v1`): leases, renewals, failures, events.
//! * [`batch`]: answer batches (`POST /lookup/v1/answers`): the record framing, its encoder
//!   and its incremental decoder.
//!
//! Everything is re-exported here, so `rjs_wire::api::LeaseRequest` and
//! `rjs_wire::api::lookup::LeaseRequest` name the same type.

use serde::{Deserialize, Serialize};

pub mod author;
pub mod batch;
pub mod lookup;

pub use author::*;
pub use batch::*;
pub use lookup::*;

/// Percent-encodes a value for a query string: everything but `A-Z a-z 0-9 - _ . ~`.
pub fn query_value(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// API path prefixes.
pub const AUTHOR_PREFIX: &str = "/api/v1";
pub const LOOKUP_PREFIX: &str = "/lookup/v1";

/// Every error response: `{"error": "...", "code": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A sentence for people, with the cause.
    pub error: String,
    /// A stable short code for programs (e.g. `stale-timestamp`).
    pub code: String,
}

/// Lifecycle state of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Leased,
    Done,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Leased => "leased",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "queued" => Some(JobState::Queued),
            "leased" => Some(JobState::Leased),
            "done" => Some(JobState::Done),
            "failed" => Some(JobState::Failed),
            _ => None,
        }
    }
    /// Done or failed: nothing more will happen to it.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed)
    }
}
