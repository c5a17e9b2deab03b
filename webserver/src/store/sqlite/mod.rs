//! [`Store`] on SQLite: one database file in WAL mode, shared by the server and the admin CLI
//! (which writes it from another process while the server runs).
//!
//! - Every read-modify-write is one `BEGIN IMMEDIATE` transaction: the write lock is taken at
//!   the start, so two connections (threads, processes, lookups) never act on the same snapshot
//!   and two lookups can never lease the same job.
//! - `synchronous = FULL`: a commit is on disk before the method returns.
//! - Waiting writers block up to [`BUSY_TIMEOUT`] for the lock instead of failing.
//! - The schema is versioned with `PRAGMA user_version`; [`MIGRATIONS`] are applied in order,
//!   one transaction each; a database newer than this code is refused.
//!
//! A job is leased while `state = 'leased'`; its lease is live while `now <= lease_until` and
//! expired once `lease_until < now` (then `expire_leases`, or the next `lease`, requeues it).
//! `last_lookup` is the lookup of the job's current or last lease (set by `lease`, never
//! cleared): the only one whose answer is taken.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rjs_signer::manifest::node_serves;
use rjs_wire::api::{JobState, JobView, Lease};
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};

mod sessions;
mod views;

use super::rows::{Columns, author_from_row, lookup_from_row, view_from_row};
use super::rules::{
    AUTHOR_COLS, FoundAnswer, LOOKUP_COLS, VIEW_COLS, answer_ref, answer_target, check_answer,
    dedup, group_filter, refused_answer, to_i64,
};
use super::{
    AnswerOutcome, AnswerRef, AnswerTarget, Author, LookupServer, NewAnswer, NewSubmission, Store,
    StoreError, Submission,
};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(Box::new(e))
    }
}

/// How long a writer waits for another connection's write lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

pub use super::rules::LEASE_EXPIRED;

/// Schema steps: step `i` takes `user_version` from `i` to `i + 1`. Append only; never edit a
/// step that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    r#"
CREATE TABLE authors (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    public_key  TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    removed     INTEGER NOT NULL DEFAULT 0 CHECK (removed IN (0, 1))
);
-- A removed author keeps its row (its jobs stay); name and key are unique among active ones,
-- so a removed author can be enrolled again.
CREATE UNIQUE INDEX authors_active_name ON authors (name) WHERE removed = 0;
CREATE UNIQUE INDEX authors_active_key ON authors (public_key) WHERE removed = 0;

CREATE TABLE lookups (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    cert_sha256 TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    revoked     INTEGER NOT NULL DEFAULT 0 CHECK (revoked IN (0, 1))
);
-- A revoked lookup keeps its row; its name may be enrolled again with a new certificate.
CREATE UNIQUE INDEX lookups_active_name ON lookups (name) WHERE revoked = 0;

CREATE TABLE nonces (
    author_id  INTEGER NOT NULL REFERENCES authors (id),
    nonce      TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (author_id, nonce)
) WITHOUT ROWID;
CREATE INDEX nonces_expiry ON nonces (expires_at);

-- One row per bundle file (id = SHA-256 of the file, hex), recorded by its first submission.
CREATE TABLE bundles (
    id         TEXT    PRIMARY KEY NOT NULL,
    author_id  INTEGER NOT NULL REFERENCES authors (id),
    name       TEXT    NOT NULL,
    tasks      INTEGER NOT NULL CHECK (tasks >= 0),
    grp        TEXT    NOT NULL,
    size       INTEGER NOT NULL CHECK (size >= 0),
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

-- One row per run of a bundle by an author: a resubmission is a new row with new jobs.
CREATE TABLE submissions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    bundle_id  TEXT    NOT NULL REFERENCES bundles (id),
    author_id  INTEGER NOT NULL REFERENCES authors (id),
    created_at INTEGER NOT NULL
);
CREATE INDEX submissions_author_bundle ON submissions (author_id, bundle_id, id);

CREATE TABLE jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    submission_id INTEGER NOT NULL REFERENCES submissions (id),
    bundle_id     TEXT    NOT NULL REFERENCES bundles (id),
    author_id     INTEGER NOT NULL REFERENCES authors (id),
    task          INTEGER NOT NULL CHECK (task >= 0),
    tasks         INTEGER NOT NULL CHECK (tasks > task),
    grp           TEXT    NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('queued', 'leased', 'done', 'failed')),
    attempts      INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    reason        TEXT,
    lease_lookup  INTEGER REFERENCES lookups (id),
    lease_until   INTEGER,
    outcome       TEXT,
    node          TEXT,
    answer_sha256 TEXT,
    answer_bytes  INTEGER CHECK (answer_bytes >= 0),
    answer_lookup INTEGER REFERENCES lookups (id),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    UNIQUE (submission_id, task),
    CHECK ((state = 'leased') = (lease_lookup IS NOT NULL AND lease_until IS NOT NULL)),
    CHECK (state <> 'done' OR answer_sha256 IS NOT NULL)
);
CREATE INDEX jobs_state ON jobs (state, id);
CREATE INDEX jobs_author ON jobs (author_id, submission_id DESC, task);
CREATE INDEX jobs_lease_until ON jobs (state, lease_until);
"#,
    // 2: answers kept inline (at most `INLINE_ANSWER_MAX` bytes): the archive of a done job
    // whose answer is not in the blob store. Written in the transaction that marks the job
    // done; `jobs.answer_sha256` / `answer_bytes` still describe it.
    r#"
CREATE TABLE answer_data (
    job_id INTEGER PRIMARY KEY NOT NULL REFERENCES jobs (id),
    bytes  BLOB    NOT NULL
);
"#,
    // 3: the lookup that took the job's last lease, kept after the lease ends (expiry,
    // release, failure report): only it may still post the job's answer. Jobs leased now
    // keep their holder; answered ones get the lookup that answered. An index on answers'
    // SHA-256 for `blob_referenced`.
    r#"
ALTER TABLE jobs ADD COLUMN last_lookup INTEGER REFERENCES lookups (id);
UPDATE jobs SET last_lookup = lease_lookup WHERE lease_lookup IS NOT NULL;
UPDATE jobs SET last_lookup = answer_lookup
    WHERE last_lookup IS NULL AND answer_lookup IS NOT NULL;
CREATE INDEX jobs_answer_sha256 ON jobs (answer_sha256) WHERE answer_sha256 IS NOT NULL;
"#,
    // 4: the dashboard. Per-submission counts, written with the submission and kept by
    // triggers in the transaction that changes a job's state or outcome (so a summary costs one
    // row, whatever the number of tasks); a change sequence (every statement that changes a
    // job's state, attempts, reason, outcome or wait reason gives it the next number,
    // `next_seq`: the change feed reads by it); why a job waits, as its lookup said; login
    // tokens and sessions (hashes only). Index for pages of one bundle's jobs.
    r#"
ALTER TABLE jobs ADD COLUMN wait_reason TEXT;
ALTER TABLE jobs ADD COLUMN change_seq INTEGER NOT NULL DEFAULT 0;
CREATE INDEX jobs_author_change ON jobs (author_id, change_seq);
CREATE INDEX jobs_author_bundle ON jobs (author_id, bundle_id, submission_id DESC, task);

CREATE TABLE change_counter (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
);
INSERT INTO change_counter (id, seq) VALUES (1, 0);

CREATE TABLE submission_counts (
    submission_id   INTEGER PRIMARY KEY NOT NULL REFERENCES submissions (id),
    queued          INTEGER NOT NULL DEFAULT 0,
    leased          INTEGER NOT NULL DEFAULT 0,
    done            INTEGER NOT NULL DEFAULT 0,
    failed          INTEGER NOT NULL DEFAULT 0,
    exit_zero       INTEGER NOT NULL DEFAULT 0,
    exit_other      INTEGER NOT NULL DEFAULT 0,
    trapped         INTEGER NOT NULL DEFAULT 0,
    limited         INTEGER NOT NULL DEFAULT 0,
    first_answer_at INTEGER,
    last_answer_at  INTEGER,
    changed_at      INTEGER NOT NULL
);
INSERT INTO submission_counts
SELECT s.id,
       count(j.id) FILTER (WHERE j.state = 'queued'),
       count(j.id) FILTER (WHERE j.state = 'leased'),
       count(j.id) FILTER (WHERE j.state = 'done'),
       count(j.id) FILTER (WHERE j.state = 'failed'),
       count(j.id) FILTER (WHERE j.outcome = 'exit 0' OR j.outcome LIKE 'exit 0 %'),
       count(j.id) FILTER (WHERE j.outcome LIKE 'exit %'
                              AND NOT (j.outcome = 'exit 0' OR j.outcome LIKE 'exit 0 %')),
       count(j.id) FILTER (WHERE j.outcome LIKE 'trap%'),
       count(j.id) FILTER (WHERE j.outcome LIKE 'limit%'),
       min(j.updated_at) FILTER (WHERE j.outcome IS NOT NULL),
       max(j.updated_at) FILTER (WHERE j.outcome IS NOT NULL),
       coalesce(max(j.updated_at), s.created_at)
FROM submissions s LEFT JOIN jobs j ON j.submission_id = s.id
GROUP BY s.id;

CREATE TRIGGER jobs_counts_state AFTER UPDATE OF state ON jobs
WHEN OLD.state IS NOT NEW.state BEGIN
    UPDATE submission_counts
       SET queued = queued + (NEW.state = 'queued') - (OLD.state = 'queued'),
           leased = leased + (NEW.state = 'leased') - (OLD.state = 'leased'),
           done = done + (NEW.state = 'done') - (OLD.state = 'done'),
           failed = failed + (NEW.state = 'failed') - (OLD.state = 'failed'),
           changed_at = NEW.updated_at
     WHERE submission_id = NEW.submission_id;
END;
CREATE TRIGGER jobs_counts_outcome AFTER UPDATE OF outcome ON jobs
WHEN OLD.outcome IS NULL AND NEW.outcome IS NOT NULL BEGIN
    UPDATE submission_counts
       SET exit_zero = exit_zero + (NEW.outcome = 'exit 0' OR NEW.outcome LIKE 'exit 0 %'),
           exit_other = exit_other + (NEW.outcome LIKE 'exit %'
                        AND NOT (NEW.outcome = 'exit 0' OR NEW.outcome LIKE 'exit 0 %')),
           trapped = trapped + (NEW.outcome LIKE 'trap%'),
           limited = limited + (NEW.outcome LIKE 'limit%'),
           first_answer_at = coalesce(first_answer_at, NEW.updated_at),
           last_answer_at = NEW.updated_at,
           changed_at = NEW.updated_at
     WHERE submission_id = NEW.submission_id;
END;

CREATE TABLE login_tokens (
    hash       TEXT    PRIMARY KEY NOT NULL,
    author_id  INTEGER REFERENCES authors (id),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE sessions (
    hash       TEXT    PRIMARY KEY NOT NULL,
    author_id  INTEGER REFERENCES authors (id),
    created_at INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX sessions_author ON sessions (author_id);
"#,
    // 5: an answer that exited 0 but lacks a declared output (`exit 0, missing output: x`)
    // ended with exit 0: counted so, like `rjs_wire::api::OutcomeCounts::count`.
    r#"
DROP TRIGGER jobs_counts_outcome;
CREATE TRIGGER jobs_counts_outcome AFTER UPDATE OF outcome ON jobs
WHEN OLD.outcome IS NULL AND NEW.outcome IS NOT NULL BEGIN
    UPDATE submission_counts
       SET exit_zero = exit_zero + (NEW.outcome = 'exit 0' OR NEW.outcome LIKE 'exit 0 %'
                        OR NEW.outcome LIKE 'exit 0,%'),
           exit_other = exit_other + (NEW.outcome LIKE 'exit %'
                        AND NOT (NEW.outcome = 'exit 0' OR NEW.outcome LIKE 'exit 0 %'
                                 OR NEW.outcome LIKE 'exit 0,%')),
           trapped = trapped + (NEW.outcome LIKE 'trap%'),
           limited = limited + (NEW.outcome LIKE 'limit%'),
           first_answer_at = coalesce(first_answer_at, NEW.updated_at),
           last_answer_at = NEW.updated_at,
           changed_at = NEW.updated_at
     WHERE submission_id = NEW.submission_id;
END;
"#,
];

/// Rows per table, from [`SqliteStore::row_counts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowCounts {
    pub authors: u64,
    pub lookups: u64,
    pub nonces: u64,
    pub bundles: u64,
    pub submissions: u64,
    /// Jobs in every state.
    pub jobs: u64,
    /// Answers kept in the database.
    pub answer_data: u64,
}

/// The metadata store on one SQLite file. Each handle owns two connections: one for writes
/// and one (`query_only`) for reads, so that reads (e.g. the lookup identity check on every
/// request) never wait for a write transaction's fsync. Open several handles (or processes)
/// on the same file and they coordinate through SQLite's locks.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    reader: Mutex<Connection>,
    path: PathBuf,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, sets it up (WAL, `synchronous =
    /// FULL`, foreign keys, busy timeout) and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Switching to WAL may answer SQLITE_BUSY at once, without the busy handler, while
        // another connection opens the same new file: wait for it as the handler would.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        let mode: String = loop {
            match conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)) {
                Err(e)
                    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other?,
            }
        };
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Schema(format!(
                "{}: could not switch to WAL journal mode (got {mode:?})",
                path.display()
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let fk: bool = conn.pragma_query_value(None, "foreign_keys", |r| r.get(0))?;
        if !fk {
            return Err(StoreError::Schema(
                "this SQLite build does not enforce foreign keys".into(),
            ));
        }
        migrate(&mut conn)?;
        let reader = Connection::open(path)?;
        reader.busy_timeout(BUSY_TIMEOUT)?;
        reader.pragma_update(None, "query_only", "ON")?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            reader: Mutex::new(reader),
            path: path.to_owned(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Schema version this code creates and understands.
    pub fn schema_version() -> i64 {
        MIGRATIONS.len() as i64
    }

    /// The schema steps, in order: step `i` takes `user_version` from `i` to `i + 1` (for
    /// building a database of an older version in tests).
    pub fn migration_steps() -> &'static [&'static str] {
        MIGRATIONS
    }

    /// `PRAGMA integrity_check`: `["ok"]` for a sound database, else the problems found.
    pub fn integrity_check(&self) -> Result<Vec<String>, StoreError> {
        self.read(|tx| {
            let mut stmt = tx.prepare("PRAGMA integrity_check")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// How many rows each table holds (for checks and tests).
    pub fn row_counts(&self) -> Result<RowCounts, StoreError> {
        self.read(|tx| {
            let count = |table: &str| -> Result<u64, StoreError> {
                Ok(tx.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.count(0))?)
            };
            Ok(RowCounts {
                authors: count("authors")?,
                lookups: count("lookups")?,
                nonces: count("nonces")?,
                bundles: count("bundles")?,
                submissions: count("submissions")?,
                jobs: count("jobs")?,
                answer_data: count("answer_data")?,
            })
        })
    }

    /// Every blob the database refers to (bundles, and answers not kept inline), sorted: each
    /// must be in the blob store.
    pub fn blob_names(&self) -> Result<Vec<String>, StoreError> {
        self.read(|tx| {
            let mut stmt = tx.prepare(
                "SELECT id FROM bundles
                 UNION
                 SELECT j.answer_sha256 FROM jobs j
                 WHERE j.answer_sha256 IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM answer_data d WHERE d.job_id = j.id)
                 ORDER BY 1",
            )?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while the lock was held rolled its transaction back (Transaction's drop):
        // the connection is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction, committed if `f` succeeds.
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    /// Runs `f` in one read transaction (a consistent snapshot that includes every committed
    /// write), on the read connection.
    fn read<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let known = MIGRATIONS.len();
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let version = usize::try_from(version).map_err(|_| {
            StoreError::Schema(format!("invalid schema version {version} in the database"))
        })?;
        if version > known {
            return Err(StoreError::Schema(format!(
                "the database has schema version {version}, newer than this program knows \
                 ({known}): use a newer rjs-webserver"
            )));
        }
        let Some(step) = MIGRATIONS.get(version) else {
            return Ok(()); // up to date (the transaction just rolls back: nothing was written)
        };
        tx.execute_batch(step).map_err(|e| StoreError::Migration {
            version: version + 1,
            source: Box::new(e),
        })?;
        tx.pragma_update(None, "user_version", (version + 1) as i64)?;
        tx.commit()?;
    }
}

// ------------------------------------------------------------------ row helpers

impl Columns for Row<'_> {
    type Error = rusqlite::Error;
    fn int(&self, idx: usize) -> rusqlite::Result<i64> {
        self.get(idx)
    }
    fn opt_int(&self, idx: usize) -> rusqlite::Result<Option<i64>> {
        self.get(idx)
    }
    fn text(&self, idx: usize) -> rusqlite::Result<String> {
        self.get(idx)
    }
    fn opt_text(&self, idx: usize) -> rusqlite::Result<Option<String>> {
        self.get(idx)
    }
    fn flag(&self, idx: usize) -> rusqlite::Result<bool> {
        self.get(idx)
    }
    fn invalid(&self, idx: usize, why: String) -> rusqlite::Error {
        let ty = self.get_ref(idx).map_or(Type::Null, |v| v.data_type());
        rusqlite::Error::FromSqlConversionFailure(idx, ty, why.into())
    }
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_extended_error_code(),
        Some(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
    )
}

/// Refuses with `Exists(what)` if the `SELECT EXISTS (…)` query `sql` finds a row for `value`.
fn refuse_taken(
    tx: &Transaction<'_>,
    sql: &str,
    value: &str,
    what: impl FnOnce() -> String,
) -> Result<(), StoreError> {
    let taken: bool = tx.query_row(sql, [value], |r| r.get(0))?;
    if taken {
        return Err(StoreError::Exists(what()));
    }
    Ok(())
}

/// Runs an `INSERT`; a unique-constraint violation (a race with the checks before it) is
/// `Exists(what)`.
fn insert_unique(
    tx: &Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
    what: impl FnOnce() -> String,
) -> Result<i64, StoreError> {
    match tx.execute(sql, params) {
        Ok(_) => Ok(tx.last_insert_rowid()),
        Err(e) if is_unique_violation(&e) => Err(StoreError::Exists(what())),
        Err(e) => Err(e.into()),
    }
}

/// Runs an `UPDATE … WHERE name = ?1 …` of one active row; `NotFound(what)` if none matched.
fn update_named(tx: &Transaction<'_>, sql: &str, name: &str, what: &str) -> Result<(), StoreError> {
    if tx.execute(sql, [name])? == 0 {
        return Err(StoreError::NotFound(format!("{what} {name:?}")));
    }
    Ok(())
}

/// Every row of a query, mapped.
fn all_rows<T>(
    tx: &Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = tx.prepare_cached(sql)?;
    let rows = stmt.query_map(params, map)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The row of `sql` (a cached statement) mapped by `map`, if there is one.
fn optional_row<T>(
    tx: &Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Option<T>, StoreError> {
    Ok(tx.prepare_cached(sql)?.query_row(params, map).optional()?)
}

/// Records a request nonce (pruning expired ones first); false if this author used it
/// before.
fn insert_nonce(
    tx: &Transaction<'_>,
    author_id: i64,
    nonce: &str,
    expires_at: i64,
    now: i64,
) -> Result<bool, StoreError> {
    tx.prepare_cached("DELETE FROM nonces WHERE expires_at < ?1")?
        .execute([now])?;
    let n = tx
        .prepare_cached(
            "INSERT INTO nonces (author_id, nonce, expires_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (author_id, nonce) DO NOTHING",
        )?
        .execute(params![author_id, nonce, expires_at])?;
    Ok(n == 1)
}

/// The next number of the change sequence (migration 4), for one statement that changes a
/// job the change feed shows (its state, attempts, reason, outcome or wait reason): taken in
/// the same transaction, so numbers are committed in order. An unused number is a harmless
/// gap.
fn next_seq(tx: &Transaction<'_>) -> Result<i64, StoreError> {
    Ok(tx
        .prepare_cached("UPDATE change_counter SET seq = seq + 1 WHERE id = 1 RETURNING seq")?
        .query_row([], |r| r.get(0))?)
}

/// Requeues (attempts + 1, reason "lease expired") or fails the jobs whose lease ended before
/// `now`; returns how many were requeued.
fn expire_in(tx: &Transaction<'_>, now: i64, max_attempts: u32) -> Result<u64, StoreError> {
    // One statement per job: each change gets its own number.
    let expired: Vec<(i64, u32)> = all_rows(
        tx,
        "SELECT id, attempts FROM jobs WHERE state = 'leased' AND lease_until < ?1",
        [now],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut update = tx.prepare_cached(
        "UPDATE jobs SET state = ?2, attempts = attempts + 1, reason = ?3,
                lease_lookup = NULL, lease_until = NULL, updated_at = ?1, change_seq = ?4
         WHERE id = ?5 AND state = 'leased'",
    )?;
    let mut requeued = 0;
    for (id, attempts) in expired {
        let state = if attempts.saturating_add(1) >= max_attempts {
            "failed"
        } else {
            requeued += 1;
            "queued"
        };
        update.execute(params![now, state, LEASE_EXPIRED, next_seq(tx)?, id])?;
    }
    Ok(requeued)
}

fn jobs_of_submission(
    tx: &Transaction<'_>,
    submission_id: i64,
) -> Result<Vec<(i64, u32)>, StoreError> {
    all_rows(
        tx,
        "SELECT id, task FROM jobs WHERE submission_id = ?1 ORDER BY task",
        [submission_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// What an answer from `lookup_id` for `job_id` would be (see [`Store::answer_targets`]).
fn target_in(
    tx: &Transaction<'_>,
    lookup_id: i64,
    job_id: i64,
) -> Result<AnswerTarget, StoreError> {
    let row: Option<(bool, Option<i64>)> = optional_row(
        tx,
        "SELECT answer_sha256 IS NOT NULL, last_lookup FROM jobs WHERE id = ?1",
        [job_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(answer_target(lookup_id, row))
}

/// Records one answer inside `tx` (see [`Store::record_answer`]); `size` from [`check_answer`].
/// `last_lookup` is the lookup of the job's current or last lease: while a job is leased it
/// is the holder, so one test covers both "holds the lease" and "held the last one".
fn record_in(
    tx: &Transaction<'_>,
    a: &NewAnswer<'_>,
    size: i64,
) -> Result<AnswerOutcome, StoreError> {
    let n = tx
        .prepare_cached(
            "UPDATE jobs SET state = 'done', outcome = ?1, node = ?2, answer_sha256 = ?3,
                    answer_bytes = ?4, answer_lookup = ?5, lease_lookup = NULL,
                    lease_until = NULL, updated_at = ?6, wait_reason = NULL, change_seq = ?8
             WHERE id = ?7 AND answer_sha256 IS NULL AND last_lookup = ?5",
        )?
        .execute(params![
            a.outcome,
            a.node,
            a.sha256,
            size,
            a.lookup_id,
            a.now,
            a.job_id,
            next_seq(tx)?
        ])?;
    if n == 1 {
        if let Some(bytes) = a.inline {
            tx.prepare_cached("INSERT INTO answer_data (job_id, bytes) VALUES (?1, ?2)")?
                .execute(params![a.job_id, bytes])?;
        }
        return Ok(AnswerOutcome::Stored);
    }
    refused_answer(target_in(tx, a.lookup_id, a.job_id)?, a.job_id)
}

/// The columns every lease query selects, in this order.
const LEASE_COLUMNS: &str = "j.id, j.bundle_id, j.task, j.tasks, j.grp, j.attempts, a.fingerprint";

/// A [`Lease`] until `until` from a row of [`LEASE_COLUMNS`] (the attempt it will be is one
/// more than those counted).
fn lease_row(r: &rusqlite::Row<'_>, until: i64) -> rusqlite::Result<Lease> {
    Ok(Lease {
        job_id: r.get(0)?,
        bundle_id: r.get(1)?,
        task: r.get(2)?,
        tasks: r.get(3)?,
        group: r.get(4)?,
        attempt: r.get::<_, u32>(5)?.saturating_add(1),
        author_fingerprint: r.get(6)?,
        lease_until: until,
    })
}

impl Store for SqliteStore {
    // ---------------------------------------------------------------- authors

    fn add_author(
        &self,
        name: &str,
        public_key: &str,
        fingerprint: &str,
        now: i64,
    ) -> Result<Author, StoreError> {
        let name_exists = || format!("author {name:?}");
        self.write(|tx| {
            refuse_taken(
                tx,
                "SELECT EXISTS (SELECT 1 FROM authors WHERE name = ?1 AND removed = 0)",
                name,
                name_exists,
            )?;
            refuse_taken(
                tx,
                "SELECT EXISTS (SELECT 1 FROM authors WHERE public_key = ?1 AND removed = 0)",
                public_key,
                || format!("an author with key {public_key}"),
            )?;
            let id = insert_unique(
                tx,
                "INSERT INTO authors (name, public_key, fingerprint, created_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![name, public_key, fingerprint, now],
                name_exists,
            )?;
            Ok(Author {
                id,
                name: name.to_owned(),
                public_key: public_key.to_owned(),
                fingerprint: fingerprint.to_owned(),
                created_at: now,
                removed: false,
            })
        })
    }

    fn remove_author(&self, name: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            let id: Option<i64> = optional_row(
                tx,
                "SELECT id FROM authors WHERE name = ?1 AND removed = 0",
                [name],
                |r| r.get(0),
            )?;
            update_named(
                tx,
                "UPDATE authors SET removed = 1 WHERE name = ?1 AND removed = 0",
                name,
                "author",
            )?;
            if let Some(id) = id {
                sessions::end_all_of(tx, id)?;
            }
            Ok(())
        })
    }

    fn list_authors(&self) -> Result<Vec<Author>, StoreError> {
        let sql = format!("SELECT {AUTHOR_COLS} FROM authors ORDER BY id");
        self.read(|tx| all_rows(tx, &sql, [], |r| author_from_row(r)))
    }

    fn author_by_key(&self, public_key: &str) -> Result<Option<Author>, StoreError> {
        let sql =
            format!("SELECT {AUTHOR_COLS} FROM authors WHERE public_key = ?1 AND removed = 0");
        self.read(|tx| optional_row(tx, &sql, [public_key], |r| author_from_row(r)))
    }

    fn nonce_used(&self, author_id: i64, nonce: &str, now: i64) -> Result<bool, StoreError> {
        self.read(|tx| {
            Ok(tx
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM nonces
                                    WHERE author_id = ?1 AND nonce = ?2 AND expires_at >= ?3)",
                )?
                .query_row(params![author_id, nonce, now], |r| r.get(0))?)
        })
    }

    fn use_nonce(
        &self,
        author_id: i64,
        nonce: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.write(|tx| insert_nonce(tx, author_id, nonce, expires_at, now))
    }

    // ---------------------------------------------------------------- lookup servers

    fn add_lookup(
        &self,
        name: &str,
        cert_sha256: &str,
        now: i64,
    ) -> Result<LookupServer, StoreError> {
        let name_exists = || format!("lookup server {name:?}");
        self.write(|tx| {
            refuse_taken(
                tx,
                "SELECT EXISTS (SELECT 1 FROM lookups WHERE name = ?1 AND revoked = 0)",
                name,
                name_exists,
            )?;
            refuse_taken(
                tx,
                "SELECT EXISTS (SELECT 1 FROM lookups WHERE cert_sha256 = ?1)",
                cert_sha256,
                || format!("a lookup server with certificate {cert_sha256}"),
            )?;
            let id = insert_unique(
                tx,
                "INSERT INTO lookups (name, cert_sha256, created_at) VALUES (?1, ?2, ?3)",
                params![name, cert_sha256, now],
                name_exists,
            )?;
            Ok(LookupServer {
                id,
                name: name.to_owned(),
                cert_sha256: cert_sha256.to_owned(),
                created_at: now,
                revoked: false,
            })
        })
    }

    fn revoke_lookup(&self, name: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            update_named(
                tx,
                "UPDATE lookups SET revoked = 1 WHERE name = ?1 AND revoked = 0",
                name,
                "lookup server",
            )
        })
    }

    fn list_lookups(&self) -> Result<Vec<LookupServer>, StoreError> {
        let sql = format!("SELECT {LOOKUP_COLS} FROM lookups ORDER BY id");
        self.read(|tx| all_rows(tx, &sql, [], |r| lookup_from_row(r)))
    }

    fn lookup_by_cert(&self, cert_sha256: &str) -> Result<Option<LookupServer>, StoreError> {
        let sql =
            format!("SELECT {LOOKUP_COLS} FROM lookups WHERE cert_sha256 = ?1 AND revoked = 0");
        self.read(|tx| optional_row(tx, &sql, [cert_sha256], |r| lookup_from_row(r)))
    }

    // ---------------------------------------------------------------- author side

    fn submit(&self, s: &NewSubmission<'_>) -> Result<Submission, StoreError> {
        let size = to_i64(s.size, "bundle size")?;
        self.write(|tx| {
            if let Some(n) = &s.nonce {
                // First, so that a replay records nothing (the transaction rolls back).
                if !insert_nonce(tx, s.author_id, n.nonce, n.expires_at, s.now)? {
                    return Err(StoreError::Replayed);
                }
            }
            if !s.resubmit {
                let earlier: Option<i64> = optional_row(
                    tx,
                    "SELECT id FROM submissions WHERE author_id = ?1 AND bundle_id = ?2
                     ORDER BY id DESC LIMIT 1",
                    params![s.author_id, s.bundle_id],
                    |r| r.get(0),
                )?;
                if let Some(submission_id) = earlier {
                    return Ok(Submission {
                        created: false,
                        jobs: jobs_of_submission(tx, submission_id)?,
                    });
                }
            }
            tx.prepare_cached(
                "INSERT INTO bundles (id, author_id, name, tasks, grp, size, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![
                s.bundle_id,
                s.author_id,
                s.name,
                s.tasks,
                s.group,
                size,
                s.now
            ])?;
            tx.prepare_cached(
                "INSERT INTO submissions (bundle_id, author_id, created_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![s.bundle_id, s.author_id, s.now])?;
            let submission_id = tx.last_insert_rowid();
            // Its counts: every job queued (the state and outcome triggers keep them).
            tx.prepare_cached(
                "INSERT INTO submission_counts (submission_id, queued, changed_at)
                 VALUES (?1, ?2, ?3)",
            )?
            .execute(params![submission_id, s.tasks, s.now])?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO jobs (submission_id, bundle_id, author_id, task, tasks, grp, state,
                                   created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?7)",
            )?;
            let mut jobs = Vec::with_capacity(s.tasks.min(100_000) as usize);
            for task in 0..s.tasks {
                insert.execute(params![
                    submission_id,
                    s.bundle_id,
                    s.author_id,
                    task,
                    s.tasks,
                    s.group,
                    s.now
                ])?;
                jobs.push((tx.last_insert_rowid(), task));
            }
            Ok(Submission {
                created: true,
                jobs,
            })
        })
    }

    fn bundle_exists(&self, bundle_id: &str) -> Result<bool, StoreError> {
        self.read(|tx| {
            Ok(tx
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM bundles WHERE id = ?1)")?
                .query_row([bundle_id], |r| r.get(0))?)
        })
    }

    fn jobs_of_author(
        &self,
        author_id: i64,
        bundle_id: Option<&str>,
    ) -> Result<Vec<JobView>, StoreError> {
        let sql = format!(
            "SELECT {VIEW_COLS} FROM jobs j JOIN bundles b ON b.id = j.bundle_id
             WHERE j.author_id = ?1 AND (?2 IS NULL OR j.bundle_id = ?2)
             ORDER BY j.submission_id DESC, j.task"
        );
        self.read(|tx| {
            all_rows(tx, &sql, params![author_id, bundle_id], |r| {
                view_from_row(r)
            })
        })
    }

    fn answer_of(&self, author_id: i64, job_id: i64) -> Result<AnswerRef, StoreError> {
        self.read(|tx| {
            let found: Option<FoundAnswer> = optional_row(
                tx,
                "SELECT j.answer_sha256, j.answer_bytes, d.bytes
                 FROM jobs j LEFT JOIN answer_data d ON d.job_id = j.id
                 WHERE j.id = ?1 AND j.author_id = ?2",
                params![job_id, author_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            answer_ref(job_id, found)
        })
    }

    // ---------------------------------------------------------------- lookup side

    fn lease(
        &self,
        lookup_id: i64,
        max: u32,
        groups: &[String],
        until: i64,
        now: i64,
        max_attempts: u32,
    ) -> Result<Vec<Lease>, StoreError> {
        let filter = group_filter(groups);
        let filter_json = match &filter {
            None => None,
            Some(g) => Some(serde_json::to_string(g).map_err(|e| {
                StoreError::from(rusqlite::Error::ToSqlConversionFailure(e.into()))
            })?),
        };
        self.write(|tx| {
            let revoked: Option<bool> = optional_row(
                tx,
                "SELECT revoked FROM lookups WHERE id = ?1",
                [lookup_id],
                |r| r.get(0),
            )?;
            match revoked {
                None => return Err(StoreError::NotFound(format!("lookup server {lookup_id}"))),
                Some(true) => {
                    return Err(StoreError::Revoked(format!("lookup server {lookup_id}")));
                }
                Some(false) => {}
            }
            expire_in(tx, now, max_attempts)?;
            if max == 0 {
                return Ok(Vec::new());
            }
            // The group test in SQL is the same as `node_serves` (the job's group equals the
            // node's or lies above it, at a '/'), so LIMIT stops at the right row; it is
            // checked again in Rust below.
            let mut select = tx.prepare_cached(&format!(
                "SELECT {LEASE_COLUMNS}
                 FROM jobs j JOIN authors a ON a.id = j.author_id
                 WHERE j.state = 'queued'
                   AND (?1 IS NULL OR EXISTS (
                        SELECT 1 FROM json_each(?1) g
                        WHERE j.grp = g.value
                           OR substr(g.value, 1, length(j.grp) + 1) = j.grp || '/'))
                 ORDER BY j.id LIMIT ?2"
            ))?;
            let candidates = select
                .query_map(params![filter_json, max], |r| lease_row(r, until))?
                .collect::<Result<Vec<_>, _>>()?;
            let mut update = tx.prepare_cached(
                "UPDATE jobs SET state = 'leased', lease_lookup = ?1, last_lookup = ?1,
                        lease_until = ?2, updated_at = ?3, change_seq = ?5
                 WHERE id = ?4 AND state = 'queued'",
            )?;
            let mut leases = Vec::with_capacity(candidates.len());
            for lease in candidates {
                if let Some(g) = &filter
                    && !g.iter().any(|node| node_serves(node, &lease.group))
                {
                    continue;
                }
                let seq = next_seq(tx)?;
                if update.execute(params![lookup_id, until, now, lease.job_id, seq])? != 1 {
                    return Err(StoreError::Conflict(format!(
                        "job {} changed while being leased",
                        lease.job_id
                    )));
                }
                leases.push(lease);
            }
            Ok(leases)
        })
    }

    fn held(
        &self,
        lookup_id: i64,
        after: i64,
        max: u32,
        until: i64,
        now: i64,
    ) -> Result<Vec<Lease>, StoreError> {
        self.write(|tx| {
            let mut select = tx.prepare_cached(&format!(
                "SELECT {LEASE_COLUMNS}
                 FROM jobs j JOIN authors a ON a.id = j.author_id
                 WHERE j.state = 'leased' AND j.lease_lookup = ?1 AND j.lease_until >= ?2
                   AND j.id > ?3
                 ORDER BY j.id LIMIT ?4"
            ))?;
            let held = select
                .query_map(params![lookup_id, now, after, max], |r| lease_row(r, until))?
                .collect::<Result<Vec<_>, _>>()?;
            let mut update = tx.prepare_cached(
                "UPDATE jobs SET lease_until = ?1, updated_at = ?2
                 WHERE id = ?3 AND state = 'leased' AND lease_lookup = ?4",
            )?;
            for lease in &held {
                update.execute(params![until, now, lease.job_id, lookup_id])?;
            }
            Ok(held)
        })
    }

    fn renew(
        &self,
        lookup_id: i64,
        job_ids: &[i64],
        until: i64,
        now: i64,
    ) -> Result<(Vec<i64>, Vec<i64>), StoreError> {
        self.write(|tx| {
            let mut update = tx.prepare_cached(
                "UPDATE jobs SET lease_until = ?1, updated_at = ?2
                 WHERE id = ?3 AND state = 'leased' AND lease_lookup = ?4 AND lease_until >= ?2",
            )?;
            let (mut renewed, mut lost) = (Vec::new(), Vec::new());
            for id in dedup(job_ids) {
                if update.execute(params![until, now, id, lookup_id])? == 1 {
                    renewed.push(id);
                } else {
                    lost.push(id);
                }
            }
            Ok((renewed, lost))
        })
    }

    fn release(
        &self,
        lookup_id: i64,
        job_ids: &[i64],
        waiting: &[(i64, String)],
        now: i64,
    ) -> Result<Vec<i64>, StoreError> {
        self.write(|tx| {
            let mut update = tx.prepare_cached(
                "UPDATE jobs SET state = 'queued', lease_lookup = NULL, lease_until = NULL,
                        updated_at = ?1, wait_reason = ?4, change_seq = ?5
                 WHERE id = ?2 AND state = 'leased' AND lease_lookup = ?3",
            )?;
            let waiting: HashMap<i64, &str> =
                waiting.iter().map(|(j, w)| (*j, w.as_str())).collect();
            let mut released = Vec::new();
            for id in dedup(job_ids) {
                let why = waiting.get(&id);
                let seq = next_seq(tx)?;
                if update.execute(params![now, id, lookup_id, why, seq])? == 1 {
                    released.push(id);
                }
            }
            Ok(released)
        })
    }

    fn set_waiting(
        &self,
        lookup_id: i64,
        waiting: &[(i64, String)],
        now: i64,
    ) -> Result<Vec<i64>, StoreError> {
        self.write(|tx| {
            let mut update = tx.prepare_cached(
                "UPDATE jobs SET wait_reason = ?1, updated_at = ?2, change_seq = ?5
                 WHERE id = ?3 AND state = 'leased' AND lease_lookup = ?4
                   AND wait_reason IS NOT ?1",
            )?;
            let mut check = tx.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM jobs
                                WHERE id = ?1 AND state = 'leased' AND lease_lookup = ?2)",
            )?;
            let mut updated = Vec::new();
            let mut seen = HashSet::new();
            for (id, why) in waiting {
                if !seen.insert(*id) {
                    continue;
                }
                let seq = next_seq(tx)?;
                let changed = update.execute(params![why, now, id, lookup_id, seq])? == 1;
                if changed || check.query_row(params![id, lookup_id], |r| r.get::<_, bool>(0))? {
                    updated.push(*id);
                }
            }
            Ok(updated)
        })
    }

    fn fail(
        &self,
        lookup_id: i64,
        job_id: i64,
        reason: &str,
        max_attempts: u32,
        now: i64,
    ) -> Result<(JobState, u32), StoreError> {
        self.write(|tx| {
            let row: Option<(JobState, Option<i64>, u32)> = optional_row(
                tx,
                "SELECT state, lease_lookup, attempts FROM jobs WHERE id = ?1",
                [job_id],
                |r| Ok((r.state(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let Some((state, holder, attempts)) = row else {
                return Err(StoreError::NotFound(format!("job {job_id}")));
            };
            // A lease past its end still counts as held until it is requeued or re-leased.
            if state != JobState::Leased || holder != Some(lookup_id) {
                return Err(StoreError::Conflict(format!(
                    "job {job_id} is not leased by this lookup server (it is {})",
                    state.as_str()
                )));
            }
            let attempts = attempts.saturating_add(1);
            let new_state = if attempts >= max_attempts {
                JobState::Failed
            } else {
                JobState::Queued
            };
            tx.prepare_cached(
                "UPDATE jobs SET state = ?1, attempts = ?2, reason = ?3, lease_lookup = NULL,
                        lease_until = NULL, updated_at = ?4, change_seq = ?6
                 WHERE id = ?5",
            )?
            .execute(params![
                new_state.as_str(),
                attempts,
                reason,
                now,
                job_id,
                next_seq(tx)?
            ])?;
            Ok((new_state, attempts))
        })
    }

    fn record_answer(&self, a: &NewAnswer<'_>) -> Result<AnswerOutcome, StoreError> {
        let size = check_answer(a)?;
        self.write(|tx| record_in(tx, a, size))
    }

    fn answer_targets(
        &self,
        lookup_id: i64,
        job_ids: &[i64],
    ) -> Result<Vec<AnswerTarget>, StoreError> {
        self.read(|tx| {
            job_ids
                .iter()
                .map(|&id| target_in(tx, lookup_id, id))
                .collect()
        })
    }

    fn blob_referenced(&self, sha256: &str) -> Result<bool, StoreError> {
        self.read(|tx| {
            Ok(tx
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM bundles WHERE id = ?1)
                         OR EXISTS (SELECT 1 FROM jobs WHERE answer_sha256 = ?1)",
                )?
                .query_row([sha256], |r| r.get(0))?)
        })
    }

    fn record_answers(
        &self,
        answers: &[NewAnswer<'_>],
    ) -> Result<Vec<Result<AnswerOutcome, StoreError>>, StoreError> {
        let sizes = answers
            .iter()
            .map(check_answer)
            .collect::<Result<Vec<_>, _>>()?;
        self.write(|tx| {
            let mut out = Vec::with_capacity(answers.len());
            for (a, size) in answers.iter().zip(sizes) {
                match record_in(tx, a, size) {
                    Err(StoreError::NotFound(m)) => out.push(Err(StoreError::NotFound(m))),
                    Err(e) => return Err(e),
                    Ok(o) => out.push(Ok(o)),
                }
            }
            Ok(out)
        })
    }

    fn expire_leases(&self, now: i64, max_attempts: u32) -> Result<u64, StoreError> {
        self.write(|tx| expire_in(tx, now, max_attempts))
    }

    fn queued_count(&self) -> Result<u64, StoreError> {
        self.read(|tx| {
            Ok(tx
                .prepare_cached("SELECT count(*) FROM jobs WHERE state = 'queued'")?
                .query_row([], |r| r.count(0))?)
        })
    }

    fn check(&self) -> Result<(), StoreError> {
        self.read(|tx| Ok(tx.query_row("SELECT 1", [], |_| Ok(()))?))
    }

    fn count_by_state(&self) -> Result<Vec<(JobState, u64)>, StoreError> {
        let counted: Vec<(JobState, u64)> = self.read(|tx| {
            all_rows(
                tx,
                "SELECT state, count(*) FROM jobs GROUP BY state",
                [],
                |r| Ok((r.state(0)?, r.count(1)?)),
            )
        })?;
        Ok([
            JobState::Queued,
            JobState::Leased,
            JobState::Done,
            JobState::Failed,
        ]
        .into_iter()
        .map(|s| {
            let n = counted.iter().find(|(c, _)| *c == s).map_or(0, |(_, n)| *n);
            (s, n)
        })
        .collect())
    }
}
