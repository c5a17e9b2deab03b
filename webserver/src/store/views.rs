//! What authors and the administrator read: per-submission summaries, pages of jobs, one job,
//! the change feed and the grid's overview. Every read here costs the same whatever the
//! size of a submission: summaries are kept up to date as jobs change (by the store, in the
//! transaction that changes the job), pages are read by cursor, changes by sequence number.

use rjs_wire::api::{JobState, JobView, SubmissionSummary};

use super::StoreError;

/// Which submissions to list (newest first).
#[derive(Debug, Clone, Default)]
pub struct SubmissionFilter<'a> {
    /// Only this bundle's.
    pub bundle: Option<&'a str>,
    /// Only those with at least one job in this state.
    pub state: Option<JobState>,
    /// Only those whose name contains this (case-insensitive for ASCII).
    pub name: Option<&'a str>,
    /// Only those older than this submission id (the cursor).
    pub before: Option<i64>,
    pub limit: u32,
}

/// Where a page of jobs continues: after this job of this submission (jobs are ordered
/// newest submission first, then by task).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobCursor {
    pub submission_id: i64,
    pub task: u32,
}

impl JobCursor {
    /// The cursor as the API carries it: `<submission>.<task>`.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.submission_id, self.task)
    }
    pub fn decode(s: &str) -> Option<Self> {
        let (sub, task) = s.split_once('.')?;
        let digits =
            |t: &str| !t.is_empty() && t.len() <= 19 && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(sub) || !digits(task) {
            return None;
        }
        Some(JobCursor {
            submission_id: sub.parse().ok()?,
            task: task.parse().ok()?,
        })
    }
}

/// Which jobs of an author to list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter<'a> {
    pub bundle: Option<&'a str>,
    pub submission: Option<i64>,
    pub state: Option<JobState>,
    pub after: Option<JobCursor>,
    /// Only jobs whose newest change is numbered above this ([`Views::change_seq`]).
    pub changed_after: Option<u64>,
    pub limit: u32,
}

/// One lookup server as the administrator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupActivity {
    pub id: i64,
    pub name: String,
    pub revoked: bool,
    pub created_at: i64,
    /// Jobs it holds a lease on now.
    pub held: u64,
    /// Answers it relayed.
    pub relayed: u64,
}

/// The grid as the administrator sees it: no answer contents, no job of an author in
/// particular.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overview {
    pub lookups: Vec<LookupActivity>,
    /// (group, state, jobs), groups in order.
    pub queue: Vec<(String, JobState, u64)>,
    /// (author name, fingerprint, removed, submissions, jobs).
    pub authors: Vec<AuthorActivity>,
}

/// One author's activity as the administrator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorActivity {
    pub name: String,
    pub fingerprint: String,
    pub removed: bool,
    pub submissions: u64,
    pub jobs: u64,
    pub finished: u64,
}

/// The read side of the store for authors and the administrator (a part of
/// [`Store`](super::Store)).
pub trait Views {
    /// The author's submissions, newest first, by `filter`.
    fn submissions(
        &self,
        author_id: i64,
        filter: &SubmissionFilter<'_>,
    ) -> Result<Vec<SubmissionSummary>, StoreError>;
    /// One of the author's submissions; None if it does not exist or is not theirs.
    fn submission(
        &self,
        author_id: i64,
        submission_id: i64,
    ) -> Result<Option<SubmissionSummary>, StoreError>;
    /// One page of the author's jobs (newest submission first, tasks in order).
    fn jobs_page(&self, author_id: i64, filter: &JobFilter<'_>)
    -> Result<Vec<JobView>, StoreError>;
    /// One of the author's jobs; None if it does not exist or is not theirs.
    fn job(&self, author_id: i64, job_id: i64) -> Result<Option<JobView>, StoreError>;
    /// The newest change's sequence number (0 before any change).
    fn change_seq(&self) -> Result<u64, StoreError>;
    /// The author's jobs that changed after `since`, oldest change first, at most `limit`
    /// (only one submission's if given), each with its sequence number.
    fn changes(
        &self,
        author_id: i64,
        submission: Option<i64>,
        since: u64,
        limit: u32,
    ) -> Result<Vec<(u64, JobView)>, StoreError>;
    /// The grid for the administrator.
    fn overview(&self) -> Result<Overview, StoreError>;
}
