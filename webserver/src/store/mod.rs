//! The web server's store: metadata behind the [`Store`] trait (SQLite in the data directory by
//! default, or PostgreSQL shared by several web servers: [`config`]) and file contents in the
//! content-addressed [`blobs::BlobStore`].
//!
//! Every method commits before it returns `Ok`: a handler acknowledges only what is durable.
//! Times are Unix seconds passed in by the caller (so tests can drive the clock).
//!
//! Answers of at most [`INLINE_ANSWER_MAX`] bytes are kept in the metadata store itself, written
//! in the transaction that marks their job done (no file per answer: creating, syncing and
//! renaming one file per answer was the web server's main cost under load); larger ones go to
//! the blob store first and the metadata store records their SHA-256.

pub mod blobs;
pub mod config;
pub mod postgres;
pub(crate) mod rows;
pub mod rules;
pub mod sessions;
pub mod sqlite;
pub mod views;

pub use sessions::{NewSession, Session, Sessions, Subject};
pub use views::{JobCursor, JobFilter, Overview, SubmissionFilter, Views};

use rjs_wire::api::{JobState, JobView, Lease};

/// Largest answer archive kept in the metadata store (inline) rather than in the blob store,
/// bytes.
pub const INLINE_ANSWER_MAX: u64 = 256 * 1024;

/// The current time as the store takes it: Unix seconds.
pub fn now() -> i64 {
    i64::try_from(rjs_signer::unix_now()).unwrap_or(i64::MAX)
}

/// An enrolled author.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    pub id: i64,
    pub name: String,
    /// Standard base64 of the ed25519 public key.
    pub public_key: String,
    pub fingerprint: String,
    pub created_at: i64,
    /// Removed authors keep their row (their jobs stay) but can no longer authenticate.
    pub removed: bool,
}

/// An enrolled lookup server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupServer {
    pub id: i64,
    pub name: String,
    /// SHA-256 (hex) of the DER client certificate issued to it.
    pub cert_sha256: String,
    pub created_at: i64,
    pub revoked: bool,
}

/// A verified bundle to record, with the jobs it fans out into.
#[derive(Debug, Clone)]
pub struct NewSubmission<'a> {
    pub author_id: i64,
    /// SHA-256 of the bundle file, hex (its blob is already stored).
    pub bundle_id: &'a str,
    pub name: &'a str,
    pub tasks: u32,
    pub group: &'a str,
    pub size: u64,
    /// Queue new jobs even if this author already submitted this bundle.
    pub resubmit: bool,
    pub now: i64,
    /// The upload request's nonce, recorded in the same transaction as the submission: if
    /// it is already recorded (a replay, e.g. two identical requests at once), the call fails
    /// with [`StoreError::Replayed`] and records nothing. Expired nonces (before `now`) may
    /// be pruned.
    pub nonce: Option<RequestNonce<'a>>,
}

/// A request nonce to record (see [`Store::use_nonce`]).
#[derive(Debug, Clone, Copy)]
pub struct RequestNonce<'a> {
    pub nonce: &'a str,
    /// Until when it is kept (Unix seconds).
    pub expires_at: i64,
}

/// What [`Store::submit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// False when the bundle was already submitted by this author and `resubmit` was not
    /// asked: `jobs` are then that earlier submission's.
    pub created: bool,
    /// (job id, task index), task order.
    pub jobs: Vec<(i64, u32)>,
}

/// Where an answer's archive is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerRef {
    /// SHA-256 of the archive, hex: its blob name when it is in the blob store.
    pub sha256: String,
    pub size: u64,
    /// The archive itself when it is kept in the metadata store (`size` bytes, at most
    /// [`INLINE_ANSWER_MAX`]); None: it is the blob `sha256`.
    pub inline: Option<Vec<u8>>,
}

/// What [`Store::record_answer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerOutcome {
    Stored,
    /// The job already had an answer: this one was discarded.
    Duplicate,
    /// The lookup neither holds the job's lease nor held its last one: nothing was recorded.
    NotLeased,
}

/// Whether a lookup may post an answer for a job, as things stand ([`Store::answer_targets`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerTarget {
    /// No such job.
    Missing,
    /// The job's lease (or its last one) belongs to another lookup, or it was never leased.
    NotLeased,
    /// The lookup may answer, but the job already has an answer: a new one is a duplicate.
    Answered,
    /// The lookup holds (or held last) the job's lease and it has no answer yet.
    Open,
}

/// An answer to record.
#[derive(Debug, Clone)]
pub struct NewAnswer<'a> {
    pub lookup_id: i64,
    pub job_id: i64,
    /// SHA-256 of the archive, hex.
    pub sha256: &'a str,
    pub size: u64,
    pub outcome: &'a str,
    pub node: &'a str,
    pub now: i64,
    /// The archive, to keep in the metadata store with the job (`size` bytes, at most
    /// [`INLINE_ANSWER_MAX`]); None: its blob `sha256` is already in the blob store.
    pub inline: Option<&'a [u8]>,
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    Exists(String),
    /// The request conflicts with the job's state (e.g. failure report for a job this
    /// lookup does not hold).
    #[error("{0}")]
    Conflict(String),
    /// The lookup server is revoked.
    #[error("{0} is revoked")]
    Revoked(String),
    /// The request nonce was already recorded for this author (a replayed request).
    #[error("request nonce already used")]
    Replayed,
    /// A failure of the database behind the store (SQLite, …), with its cause. Backends
    /// convert their own errors into it (e.g. `From<rusqlite::Error>` in [`sqlite`]), so the
    /// handlers never depend on one.
    #[error("database error")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// The database cannot be reached (connecting failed, the connection was lost, the
    /// server is shutting down or starting, no answer in time). Another web server of the
    /// grid may reach it. (A connection lost while committing leaves unknown whether the
    /// change was made, as any lost response does.)
    #[error("the database cannot be reached")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    #[error("database schema: {0}")]
    Schema(String),
    #[error("migrating the database to schema version {version}")]
    Migration {
        version: usize,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl StoreError {
    /// Whether the database could not be reached ([`StoreError::Unavailable`]).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Metadata store. Implementations are safe to share between threads; every mutating call is
/// one transaction, committed before it returns. Its read models for authors and the
/// administrator are [`Views`]; dashboard logins are [`Sessions`].
pub trait Store: Views + Sessions + Send + Sync + 'static {
    // -------- authors
    fn add_author(
        &self,
        name: &str,
        public_key: &str,
        fingerprint: &str,
        now: i64,
    ) -> Result<Author, StoreError>;
    /// Marks the author removed and ends their dashboard sessions and logins; NotFound if no
    /// active author has that name.
    fn remove_author(&self, name: &str) -> Result<(), StoreError>;
    fn list_authors(&self) -> Result<Vec<Author>, StoreError>;
    /// The active (not removed) author with this key.
    fn author_by_key(&self, public_key: &str) -> Result<Option<Author>, StoreError>;
    /// Whether this author already used this nonce (a replay). Writes nothing. A nonce whose
    /// `expires_at` is before `now` counts as unused (it may be pruned).
    fn nonce_used(&self, author_id: i64, nonce: &str, now: i64) -> Result<bool, StoreError>;
    /// Records a request nonce. False if this author used it before (a replay). Nonces whose
    /// `expires_at` is before `now` may be pruned.
    fn use_nonce(
        &self,
        author_id: i64,
        nonce: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError>;

    // -------- lookup servers
    fn add_lookup(
        &self,
        name: &str,
        cert_sha256: &str,
        now: i64,
    ) -> Result<LookupServer, StoreError>;
    fn revoke_lookup(&self, name: &str) -> Result<(), StoreError>;
    fn list_lookups(&self) -> Result<Vec<LookupServer>, StoreError>;
    /// The active (not revoked) lookup whose certificate has this SHA-256.
    fn lookup_by_cert(&self, cert_sha256: &str) -> Result<Option<LookupServer>, StoreError>;

    // -------- bundles and jobs (author side)
    /// Records the bundle (once) and queues one job per task, unless this author already
    /// submitted it and `resubmit` is false; records `s.nonce` in the same transaction
    /// ([`StoreError::Replayed`], nothing recorded, if it was used before).
    fn submit(&self, s: &NewSubmission<'_>) -> Result<Submission, StoreError>;
    /// Whether a bundle with this id is recorded (its blob exists).
    fn bundle_exists(&self, bundle_id: &str) -> Result<bool, StoreError>;
    /// The author's jobs, newest submission first, tasks in order; only one bundle's if given.
    fn jobs_of_author(
        &self,
        author_id: i64,
        bundle_id: Option<&str>,
    ) -> Result<Vec<JobView>, StoreError>;
    /// The answer of one of the author's jobs (with its bytes if it is kept inline). NotFound
    /// if the job is not theirs or has none.
    fn answer_of(&self, author_id: i64, job_id: i64) -> Result<AnswerRef, StoreError>;

    // -------- lookup side
    /// Leases up to `max` queued jobs (oldest first) whose group is within one of `groups`
    /// (any if empty) to this lookup until `until`. Expired leases are requeued first. Two
    /// lookups never hold the same job.
    fn lease(
        &self,
        lookup_id: i64,
        max: u32,
        groups: &[String],
        until: i64,
        now: i64,
        max_attempts: u32,
    ) -> Result<Vec<Lease>, StoreError>;
    /// The jobs leased to this lookup whose lease has not expired, with an id above `after`,
    /// oldest first (at most `max`), their leases extended to `until`.
    fn held(
        &self,
        lookup_id: i64,
        after: i64,
        max: u32,
        until: i64,
        now: i64,
    ) -> Result<Vec<Lease>, StoreError>;
    /// Extends this lookup's unexpired leases of these jobs; returns (renewed, lost).
    fn renew(
        &self,
        lookup_id: i64,
        job_ids: &[i64],
        until: i64,
        now: i64,
    ) -> Result<(Vec<i64>, Vec<i64>), StoreError>;
    /// Gives leases back: queued again, attempt not counted. Returns those released. A job
    /// with a reason in `waiting` (job id, why it could not run) keeps it until it runs, for
    /// its author to read.
    fn release(
        &self,
        lookup_id: i64,
        job_ids: &[i64],
        waiting: &[(i64, String)],
        now: i64,
    ) -> Result<Vec<i64>, StoreError>;
    /// Records why jobs this lookup holds do not run (job id, reason); returns those it holds
    /// (the others are left alone).
    fn set_waiting(
        &self,
        lookup_id: i64,
        waiting: &[(i64, String)],
        now: i64,
    ) -> Result<Vec<i64>, StoreError>;
    /// No answer could be had for a job this lookup holds (a lease past its end still counts
    /// until the job is requeued): attempts + 1, queued again, or failed with `reason` once
    /// attempts reach `max_attempts`. Returns (state, attempts); `Conflict` (nothing changed)
    /// if this lookup does not hold the job's lease.
    fn fail(
        &self,
        lookup_id: i64,
        job_id: i64,
        reason: &str,
        max_attempts: u32,
        now: i64,
    ) -> Result<(JobState, u32), StoreError>;
    /// Records an answer (its blob already stored). Accepted only from the lookup that holds
    /// the job's lease or held the last one (its lease expired, or it was released or failed,
    /// and nobody leased the job since): a late answer from the last holder still makes the
    /// job done, whatever its state (queued again, even failed). From any other lookup (or
    /// for a job never leased): `NotLeased`, nothing recorded. The first accepted answer
    /// wins; later ones are `Duplicate`. NotFound if the job does not exist.
    fn record_answer(&self, a: &NewAnswer<'_>) -> Result<AnswerOutcome, StoreError>;
    /// What an answer from this lookup for each of these jobs would be, as things stand: one
    /// per id, in order. Writes nothing. (Jobs are never deleted and answers never removed,
    /// so `Missing` and `Answered` stay true.)
    fn answer_targets(
        &self,
        lookup_id: i64,
        job_ids: &[i64],
    ) -> Result<Vec<AnswerTarget>, StoreError>;
    /// Whether any bundle or job answer refers to the blob with this SHA-256 (hex), i.e.
    /// whether the blob must be kept.
    fn blob_referenced(&self, sha256: &str) -> Result<bool, StoreError>;
    /// Records several answers in ONE transaction, each as [`record_answer`](Self::record_answer)
    /// would (in order: a job named twice gets the first, the second is `Duplicate`). Returns
    /// one result per answer, in order: `Stored`, `Duplicate`, `NotLeased`, or
    /// `Err(NotFound)` for a job that does not exist (nothing is recorded for it; the others
    /// still are). An outer `Err` means nothing at all was recorded.
    fn record_answers(
        &self,
        answers: &[NewAnswer<'_>],
    ) -> Result<Vec<Result<AnswerOutcome, StoreError>>, StoreError>;
    /// Requeues (attempts + 1, reason "lease expired") or fails every job whose lease ended
    /// before `now`. Returns how many were requeued.
    fn expire_leases(&self, now: i64, max_attempts: u32) -> Result<u64, StoreError>;
    /// Jobs currently queued.
    fn queued_count(&self) -> Result<u64, StoreError>;
    /// Reaches the database with a trivial read (`GET /healthz`).
    fn check(&self) -> Result<(), StoreError>;
    /// Jobs by state (for tests and the admin CLI).
    fn count_by_state(&self) -> Result<Vec<(JobState, u64)>, StoreError>;

    /// Woken (a hint: it may fire for nothing, and may miss nothing only together with
    /// polling) when jobs were queued through another process sharing the store; None if the
    /// backend cannot tell (the server then only polls).
    fn queue_hint(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
}
