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
    /// The submission (one run of a bundle) the job belongs to.
    #[serde(default)]
    pub submission_id: i64,
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
    /// Why a queued or leased job is not running, as far as the grid knows it (sent by the
    /// lookup that parked it or gave it back); None when the job runs or is finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// The lookup server holding its lease, while it is leased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leased_by: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    pub updated_at: i64,
}

/// `GET /api/v1/jobs` response: one page of jobs, newest submission first, tasks in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// The cursor of the next page (`?after=`), None on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Largest page of `GET /api/v1/jobs` (`?limit=`), and its default.
pub const MAX_JOBS_PAGE: u32 = 1000;
/// Largest page of `GET /api/v1/submissions` (`?limit=`), and its default.
pub const MAX_SUBMISSIONS_PAGE: u32 = 200;

/// A submission's jobs by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    pub queued: u64,
    /// Leased by a lookup server: on its way to a node, or running there.
    pub leased: u64,
    pub done: u64,
    pub failed: u64,
}

impl StateCounts {
    pub fn total(&self) -> u64 {
        self.queued + self.leased + self.done + self.failed
    }
    /// Done or failed.
    pub fn finished(&self) -> u64 {
        self.done + self.failed
    }
    pub fn get(&self, state: JobState) -> u64 {
        match state {
            JobState::Queued => self.queued,
            JobState::Leased => self.leased,
            JobState::Done => self.done,
            JobState::Failed => self.failed,
        }
    }
}

/// How a submission's answers ended (from each answer's outcome).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCounts {
    /// `exit 0`.
    pub exit_zero: u64,
    /// Another exit code.
    pub exit_other: u64,
    /// A WebAssembly trap.
    pub trap: u64,
    /// A limit (time, memory, output) ended the run.
    pub limit: u64,
}

/// Whether an outcome line says the program exited with 0 (`exit 0`, `exit 0 (limit hit:
/// stdout)`, `exit 0, missing output: x`).
pub fn exited_zero(outcome: &str) -> bool {
    outcome
        .strip_prefix("exit 0")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', ',']))
}

impl OutcomeCounts {
    /// Counts one answer by its outcome line (`exit 0`, `exit 10`, `exit 0, missing output:
    /// x`, `trap: …`, `limit: time`); a `crash: …` (the node's runtime failed) is none of
    /// these and is not counted. The web server's SQL counts the same way.
    pub fn count(&mut self, outcome: &str) {
        if exited_zero(outcome) {
            self.exit_zero += 1;
        } else if outcome.starts_with("exit ") {
            self.exit_other += 1;
        } else if outcome.starts_with("trap") {
            self.trap += 1;
        } else if outcome.starts_with("limit") {
            self.limit += 1;
        }
    }

    /// Answers counted.
    pub fn total(&self) -> u64 {
        self.exit_zero + self.exit_other + self.trap + self.limit
    }

    /// `exit 0: 3, other exit: 1, trap: 0, limit: 2`.
    pub fn line(&self) -> String {
        format!(
            "exit 0: {}, other exit: {}, trap: {}, limit: {}",
            self.exit_zero, self.exit_other, self.trap, self.limit
        )
    }
}

/// One submission (a run of a bundle) summed up: what `rjs-sign status` and the dashboard
/// show without reading every job. Its cost does not depend on the number of tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmissionSummary {
    pub id: i64,
    pub bundle_id: String,
    pub name: String,
    pub group: String,
    pub tasks: u32,
    /// Unix seconds.
    pub created_at: i64,
    pub states: StateCounts,
    pub outcomes: OutcomeCounts,
    /// When its first and last answer arrived (Unix seconds).
    pub first_answer_at: Option<i64>,
    pub last_answer_at: Option<i64>,
    /// When a job of it last changed state (Unix seconds).
    pub changed_at: i64,
}

impl SubmissionSummary {
    /// Every job is done or failed.
    pub fn is_finished(&self) -> bool {
        self.states.finished() >= u64::from(self.tasks)
    }
}

/// `GET /api/v1/submissions` response: newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmissionList {
    pub submissions: Vec<SubmissionSummary>,
    /// The cursor of the next page (`?before=`), None on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One event of the change feed (`GET /api/v1/events`, server-sent events `job`): a job
/// changed state, attempts, reason, outcome or why it waits. `seq` grows with every change
/// on the server; a client resumes after the last it saw (`Last-Event-ID`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobChange {
    pub seq: u64,
    pub job: JobView,
}

/// `GET /api/v1/changes` response: one page of the change feed, polled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeList {
    /// Each changed job once, at its newest change, oldest change first.
    pub changes: Vec<JobChange>,
    /// Ask again with `?since=` this (the last change's number; the newest number on the
    /// server when `since` was not given).
    pub next: u64,
    /// True when the page was full: more changes follow at once.
    pub more: bool,
}

/// Largest page of `GET /api/v1/changes`.
pub const MAX_CHANGES_PAGE: u32 = 1000;

/// `POST /api/v1/dashboard/login` response: a one-time dashboard login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DashboardLogin {
    /// The path (with the token) to open on this server: `/dashboard/login?token=…`.
    pub path: String,
    /// Unix seconds after which the token is refused.
    pub expires_at: i64,
    /// Fingerprint of the key the login is for.
    pub fingerprint: String,
}

#[cfg(test)]
mod outcome_tests {
    use super::OutcomeCounts;

    #[test]
    fn answers_are_counted_by_how_they_ended() {
        let mut c = OutcomeCounts::default();
        for line in [
            "exit 0",
            "exit 0 (limit hit: stdout)",
            "exit 0, missing output: speech.wav",
            "exit 01",
            "exit 10",
            "exit 3 (limit hit: output)",
            "limit: time",
            "limit: compile",
            "trap: unreachable",
            "crash: the worker died",
        ] {
            c.count(line);
        }
        assert_eq!(
            c,
            OutcomeCounts {
                exit_zero: 3,
                exit_other: 3,
                trap: 1,
                limit: 2,
            }
        );
        assert_eq!(c.total(), 9);
    }
}
