//! [`Store`] on PostgreSQL: the same rules as `sqlite` (the conformance suite holds both to
//! them), written so that several web servers may run each call at the same moment.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::GenericClient;
use rjs_wire::api::{JobState, JobView, Lease};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use super::{
    Clock, PgStore, all_rows, bad_value, changing_jobs, changing_jobs_and, execute, notify_queued,
    one_value, optional_row,
};
use crate::store::rows::{Columns, author_from_row, lookup_from_row, view_from_row};
use crate::store::rules::{
    AUTHOR_COLS, FoundAnswer, LEASE_EXPIRED, LOOKUP_COLS, VIEW_COLS, answer_ref, answer_target,
    check_answer, dedup, group_filter, refused_answer, to_i64,
};
use crate::store::{
    AnswerOutcome, AnswerRef, AnswerTarget, Author, LookupServer, NewAnswer, NewSubmission, Store,
    StoreError, Submission,
};

/// The columns every lease query returns, in this order (`j` the job).
const LEASE_COLUMNS: &str = "j.id, j.bundle_id, j.task, j.tasks, j.grp, j.attempts, \
     (SELECT a.fingerprint FROM authors a WHERE a.id = j.author_id), j.lease_until";

/// A [`Lease`] from a row of [`LEASE_COLUMNS`] (the attempt it will be is one more than those
/// counted).
fn lease_row(r: &Row) -> Result<Lease, StoreError> {
    Ok(Lease {
        job_id: r.try_get(0)?,
        bundle_id: r.try_get(1)?,
        task: r.small(2)?,
        tasks: r.small(3)?,
        group: r.try_get(4)?,
        attempt: r.small(5)?.saturating_add(1),
        author_fingerprint: r.try_get(6)?,
        lease_until: r.try_get(7)?,
    })
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// Runs an `INSERT … RETURNING id`; a unique-constraint violation (a race with the checks
/// before it) is `Exists(what)`.
async fn insert_unique(
    tx: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    what: impl FnOnce() -> String,
) -> Result<i64, StoreError> {
    let stmt = tx.prepare_cached(sql).await?;
    // A violation aborts the transaction: the caller returns the error, which rolls it back.
    match tx.query_one(&stmt, params).await {
        Ok(row) => Ok(row.try_get(0)?),
        Err(e) if is_unique_violation(&e) => Err(StoreError::Exists(what())),
        Err(e) => Err(e.into()),
    }
}

/// Refuses with `Exists(what)` if the `SELECT EXISTS (…)` query `sql` finds a row for `value`.
async fn refuse_taken(
    tx: &impl GenericClient,
    sql: &str,
    value: &str,
    what: impl FnOnce() -> String,
) -> Result<(), StoreError> {
    if one_value::<bool>(tx, sql, &[&value]).await? {
        return Err(StoreError::Exists(what()));
    }
    Ok(())
}

/// Records a request nonce (pruning expired ones first); false if this author used it
/// before.
async fn insert_nonce(
    tx: &impl GenericClient,
    author_id: i64,
    nonce: &str,
    expires_at: i64,
    now: i64,
) -> Result<bool, StoreError> {
    execute(tx, "DELETE FROM nonces WHERE expires_at < $1", &[&now]).await?;
    let n = execute(
        tx,
        "INSERT INTO nonces (author_id, nonce, expires_at) VALUES ($1, $2, $3)
         ON CONFLICT (author_id, nonce) DO NOTHING",
        &[&author_id, &nonce, &expires_at],
    )
    .await?;
    Ok(n == 1)
}

/// Requeues (attempts + 1, reason "lease expired") or fails the jobs whose lease ended before
/// `now`; returns how many were requeued. Jobs another transaction is changing right now are
/// skipped (the next pass takes them), so no server waits for another here.
async fn expire_in(
    tx: &impl GenericClient,
    now: i64,
    max_attempts: u32,
) -> Result<u64, StoreError> {
    let sql = changing_jobs(
        "SELECT id, state AS old_state, outcome AS old_outcome FROM jobs
         WHERE state = 'leased' AND lease_until < $1
         ORDER BY id FOR UPDATE SKIP LOCKED",
        "state = CASE WHEN j.attempts + 1 >= $2 THEN 'failed' ELSE 'queued' END,
         attempts = j.attempts + 1, reason = $3, lease_lookup = NULL, lease_until = NULL,
         updated_at = $1",
        "j.state",
    );
    let states = all_rows(
        tx,
        &sql,
        &[&now, &i64::from(max_attempts), &LEASE_EXPIRED],
        |r| r.state(0),
    )
    .await?;
    let requeued = states.iter().filter(|s| **s == JobState::Queued).count() as u64;
    if requeued > 0 {
        notify_queued(tx).await?;
    }
    Ok(requeued)
}

/// What an answer from `lookup_id` for `job_id` would be (see [`Store::answer_targets`]).
async fn target_in(
    tx: &impl GenericClient,
    lookup_id: i64,
    job_id: i64,
) -> Result<AnswerTarget, StoreError> {
    let row: Option<(bool, Option<i64>)> = optional_row(
        tx,
        "SELECT answer_sha256 IS NOT NULL, last_lookup FROM jobs WHERE id = $1",
        &[&job_id],
        |r| Ok((r.try_get(0)?, r.try_get(1)?)),
    )
    .await?;
    Ok(answer_target(lookup_id, row))
}

/// Records one answer inside `tx` (see [`Store::record_answer`]): a conditional update on the
/// last holder, so that of two answers racing (through two servers) one is stored and the
/// other, re-checked on the row's newest version, is a duplicate. Returns the outcome and
/// whether the job changed.
async fn record_in(
    tx: &impl GenericClient,
    a: &NewAnswer<'_>,
    size: i64,
    now: i64,
) -> Result<AnswerOutcome, StoreError> {
    let sql = changing_jobs(
        "SELECT id, state AS old_state, outcome AS old_outcome FROM jobs
         WHERE id = $7 AND answer_sha256 IS NULL AND last_lookup = $5
         FOR UPDATE",
        "state = 'done', outcome = $1, node = $2, answer_sha256 = $3, answer_bytes = $4,
         answer_lookup = $5, lease_lookup = NULL, lease_until = NULL, updated_at = $6,
         wait_reason = NULL",
        "j.id",
    );
    let n = all_rows(
        tx,
        &sql,
        &[
            &a.outcome,
            &a.node,
            &a.sha256,
            &size,
            &a.lookup_id,
            &now,
            &a.job_id,
        ],
        |_| Ok(()),
    )
    .await?
    .len();
    if n == 1 {
        if let Some(bytes) = a.inline {
            execute(
                tx,
                "INSERT INTO answer_data (job_id, bytes) VALUES ($1, $2)",
                &[&a.job_id, &bytes],
            )
            .await?;
        }
        return Ok(AnswerOutcome::Stored);
    }
    refused_answer(target_in(tx, a.lookup_id, a.job_id).await?, a.job_id)
}

/// Checks that the lookup exists and is not revoked, and reads the clock, in one round trip.
async fn active_lookup(
    store: &PgStore,
    tx: &impl GenericClient,
    lookup_id: i64,
    caller_now: i64,
) -> Result<Clock, StoreError> {
    let (db_now, revoked): (i64, Option<bool>) = optional_row(
        tx,
        "SELECT floor(extract(epoch FROM now()))::bigint,
                (SELECT revoked FROM lookups WHERE id = $1)",
        &[&lookup_id],
        |r| Ok((r.try_get(0)?, r.try_get(1)?)),
    )
    .await?
    .ok_or_else(|| bad_value("no clock".into()))?;
    match revoked {
        None => Err(StoreError::NotFound(format!("lookup server {lookup_id}"))),
        Some(true) => Err(StoreError::Revoked(format!("lookup server {lookup_id}"))),
        Some(false) => Ok(store.clock_at(db_now, caller_now)),
    }
}

impl Store for PgStore {
    // ---------------------------------------------------------------- authors

    fn add_author(
        &self,
        name: &str,
        public_key: &str,
        fingerprint: &str,
        now: i64,
    ) -> Result<Author, StoreError> {
        let name_exists = || format!("author {name:?}");
        self.write(async |tx| {
            let t = self.clock(tx, now).await?.now;
            refuse_taken(
                tx,
                "SELECT EXISTS (SELECT 1 FROM authors WHERE name = $1 AND NOT removed)",
                name,
                name_exists,
            )
            .await?;
            refuse_taken(
                tx,
                "SELECT EXISTS (SELECT 1 FROM authors WHERE public_key = $1 AND NOT removed)",
                public_key,
                || format!("an author with key {public_key}"),
            )
            .await?;
            let id = insert_unique(
                tx,
                "INSERT INTO authors (name, public_key, fingerprint, created_at)
                 VALUES ($1, $2, $3, $4) RETURNING id",
                &[&name, &public_key, &fingerprint, &t],
                name_exists,
            )
            .await?;
            Ok(Author {
                id,
                name: name.to_owned(),
                public_key: public_key.to_owned(),
                fingerprint: fingerprint.to_owned(),
                created_at: t,
                removed: false,
            })
        })
    }

    fn remove_author(&self, name: &str) -> Result<(), StoreError> {
        self.write(async |tx| {
            let id: Option<i64> = optional_row(
                tx,
                "UPDATE authors SET removed = true WHERE name = $1 AND NOT removed RETURNING id",
                &[&name],
                |r| Ok(r.try_get(0)?),
            )
            .await?;
            let Some(id) = id else {
                return Err(StoreError::NotFound(format!("author {name:?}")));
            };
            super::sessions::end_all_of(tx, id).await
        })
    }

    fn list_authors(&self) -> Result<Vec<Author>, StoreError> {
        let sql = format!("SELECT {AUTHOR_COLS} FROM authors ORDER BY id");
        self.read(async |tx| all_rows(tx, &sql, &[], author_from_row).await)
    }

    fn author_by_key(&self, public_key: &str) -> Result<Option<Author>, StoreError> {
        let sql =
            format!("SELECT {AUTHOR_COLS} FROM authors WHERE public_key = $1 AND NOT removed");
        self.read(async |tx| optional_row(tx, &sql, &[&public_key], author_from_row).await)
    }

    fn nonce_used(&self, author_id: i64, nonce: &str, now: i64) -> Result<bool, StoreError> {
        self.read(async |tx| {
            let t = self.clock(tx, now).await?.now;
            one_value(
                tx,
                "SELECT EXISTS (SELECT 1 FROM nonces
                                WHERE author_id = $1 AND nonce = $2 AND expires_at >= $3)",
                &[&author_id, &nonce, &t],
            )
            .await
        })
    }

    fn use_nonce(
        &self,
        author_id: i64,
        nonce: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.write(async |tx| {
            let c = self.clock(tx, now).await?;
            insert_nonce(tx, author_id, nonce, c.at(expires_at), c.now).await
        })
    }

    // ---------------------------------------------------------------- lookup servers

    fn add_lookup(
        &self,
        name: &str,
        cert_sha256: &str,
        now: i64,
    ) -> Result<LookupServer, StoreError> {
        let name_exists = || format!("lookup server {name:?}");
        self.write(async |tx| {
            let t = self.clock(tx, now).await?.now;
            refuse_taken(
                tx,
                "SELECT EXISTS (SELECT 1 FROM lookups WHERE name = $1 AND NOT revoked)",
                name,
                name_exists,
            )
            .await?;
            refuse_taken(
                tx,
                "SELECT EXISTS (SELECT 1 FROM lookups WHERE cert_sha256 = $1)",
                cert_sha256,
                || format!("a lookup server with certificate {cert_sha256}"),
            )
            .await?;
            let id = insert_unique(
                tx,
                "INSERT INTO lookups (name, cert_sha256, created_at) VALUES ($1, $2, $3)
                 RETURNING id",
                &[&name, &cert_sha256, &t],
                name_exists,
            )
            .await?;
            Ok(LookupServer {
                id,
                name: name.to_owned(),
                cert_sha256: cert_sha256.to_owned(),
                created_at: t,
                revoked: false,
            })
        })
    }

    fn revoke_lookup(&self, name: &str) -> Result<(), StoreError> {
        self.write(async |tx| {
            let n = execute(
                tx,
                "UPDATE lookups SET revoked = true WHERE name = $1 AND NOT revoked",
                &[&name],
            )
            .await?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("lookup server {name:?}")));
            }
            Ok(())
        })
    }

    fn list_lookups(&self) -> Result<Vec<LookupServer>, StoreError> {
        let sql = format!("SELECT {LOOKUP_COLS} FROM lookups ORDER BY id");
        self.read(async |tx| all_rows(tx, &sql, &[], lookup_from_row).await)
    }

    fn lookup_by_cert(&self, cert_sha256: &str) -> Result<Option<LookupServer>, StoreError> {
        let sql =
            format!("SELECT {LOOKUP_COLS} FROM lookups WHERE cert_sha256 = $1 AND NOT revoked");
        self.read(async |tx| optional_row(tx, &sql, &[&cert_sha256], lookup_from_row).await)
    }

    // ---------------------------------------------------------------- author side

    fn submit(&self, s: &NewSubmission<'_>) -> Result<Submission, StoreError> {
        let size = to_i64(s.size, "bundle size")?;
        let tasks = i64::from(s.tasks);
        self.write(async |tx| {
            let c = self.clock(tx, s.now).await?;
            if let Some(n) = &s.nonce {
                // First, so that a replay records nothing (the transaction rolls back).
                if !insert_nonce(tx, s.author_id, n.nonce, c.at(n.expires_at), c.now).await? {
                    return Err(StoreError::Replayed);
                }
            }
            if !s.resubmit {
                // Serialises this author's submissions of this bundle (two servers receiving
                // the same upload at once record one submission).
                execute(
                    tx,
                    "SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2::text, 0))",
                    &[&s.bundle_id, &s.author_id.to_string()],
                )
                .await?;
                let earlier: Option<i64> = optional_row(
                    tx,
                    "SELECT id FROM submissions WHERE author_id = $1 AND bundle_id = $2
                     ORDER BY id DESC LIMIT 1",
                    &[&s.author_id, &s.bundle_id],
                    |r| Ok(r.try_get(0)?),
                )
                .await?;
                if let Some(submission_id) = earlier {
                    return Ok(Submission {
                        created: false,
                        jobs: jobs_of_submission(tx, submission_id).await?,
                    });
                }
            }
            execute(
                tx,
                "INSERT INTO bundles (id, author_id, name, tasks, grp, size, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
                &[
                    &s.bundle_id,
                    &s.author_id,
                    &s.name,
                    &tasks,
                    &s.group,
                    &size,
                    &c.now,
                ],
            )
            .await?;
            let submission_id: i64 = one_value(
                tx,
                "INSERT INTO submissions (bundle_id, author_id, created_at) VALUES ($1, $2, $3)
                 RETURNING id",
                &[&s.bundle_id, &s.author_id, &c.now],
            )
            .await?;
            // Its counts: every job queued (the state and outcome triggers keep them).
            execute(
                tx,
                "INSERT INTO submission_counts (submission_id, queued, changed_at)
                 VALUES ($1, $2, $3)",
                &[&submission_id, &tasks, &c.now],
            )
            .await?;
            let jobs = all_rows(
                tx,
                "INSERT INTO jobs (submission_id, bundle_id, author_id, task, tasks, grp, state,
                                   created_at, updated_at)
                 SELECT $1, $2, $3, t, $4::bigint, $5, 'queued', $6, $6
                 FROM generate_series(0, $4::bigint - 1) AS t ORDER BY t
                 RETURNING id, task",
                &[
                    &submission_id,
                    &s.bundle_id,
                    &s.author_id,
                    &tasks,
                    &s.group,
                    &c.now,
                ],
                |r| Ok((r.try_get(0)?, r.small(1)?)),
            )
            .await?;
            let mut jobs: Vec<(i64, u32)> = jobs;
            jobs.sort_unstable_by_key(|j| j.1);
            if !jobs.is_empty() {
                notify_queued(tx).await?;
            }
            Ok(Submission {
                created: true,
                jobs,
            })
        })
    }

    fn bundle_exists(&self, bundle_id: &str) -> Result<bool, StoreError> {
        self.read(async |tx| {
            one_value(
                tx,
                "SELECT EXISTS (SELECT 1 FROM bundles WHERE id = $1)",
                &[&bundle_id],
            )
            .await
        })
    }

    fn jobs_of_author(
        &self,
        author_id: i64,
        bundle_id: Option<&str>,
    ) -> Result<Vec<JobView>, StoreError> {
        let sql = format!(
            "SELECT {VIEW_COLS} FROM jobs j JOIN bundles b ON b.id = j.bundle_id
             WHERE j.author_id = $1 AND ($2::text IS NULL OR j.bundle_id = $2)
             ORDER BY j.submission_id DESC, j.task"
        );
        self.read(async |tx| all_rows(tx, &sql, &[&author_id, &bundle_id], view_from_row).await)
    }

    fn answer_of(&self, author_id: i64, job_id: i64) -> Result<AnswerRef, StoreError> {
        self.read(async |tx| {
            let found: Option<FoundAnswer> = optional_row(
                tx,
                "SELECT j.answer_sha256, j.answer_bytes, d.bytes
                 FROM jobs j LEFT JOIN answer_data d ON d.job_id = j.id
                 WHERE j.id = $1 AND j.author_id = $2",
                &[&job_id, &author_id],
                |r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)),
            )
            .await?;
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
        // One statement, a transaction of its own. The group test is `node_serves`'s (the
        // conformance suite holds the two together): the job's group (without a trailing
        // '/') is empty, equals the node's, or lies above it at a '/'. The clock is the
        // database's (`$5` NULL) or the caller's.
        let sql = changing_jobs(
            "SELECT id, state AS old_state, outcome AS old_outcome FROM jobs
             WHERE state = 'queued'
               AND EXISTS (SELECT 1 FROM lookups WHERE id = $3 AND NOT revoked)
               AND ($1::text[] IS NULL OR EXISTS (
                    SELECT 1 FROM unnest($1::text[]) AS g(node)
                    WHERE rtrim(grp, '/') = '' OR g.node = rtrim(grp, '/')
                       OR left(g.node, length(rtrim(grp, '/')) + 1) = rtrim(grp, '/') || '/'))
             ORDER BY id LIMIT $2
             FOR UPDATE SKIP LOCKED",
            "state = 'leased', lease_lookup = $3, last_lookup = $3,
             lease_until = coalesce($5::bigint, floor(extract(epoch FROM now()))::bigint) + $4,
             updated_at = coalesce($5::bigint, floor(extract(epoch FROM now()))::bigint)",
            LEASE_COLUMNS,
        );
        // Expired leases first: once per second and store is enough (a lease that ended
        // before this second was requeued by the last pass, unless another transaction held
        // its job then, and the expiry task comes back within a second).
        let last = self
            .expired_at
            .swap(now, std::sync::atomic::Ordering::Relaxed);
        if last != now {
            self.expire_leases(now, max_attempts)?;
        }
        let leases = if max == 0 {
            Vec::new()
        } else {
            let duration = until.saturating_sub(now);
            let at = self.caller_clock(now);
            let mut leases = self.single(async |c| {
                all_rows(
                    c,
                    &sql,
                    &[&filter, &i64::from(max), &lookup_id, &duration, &at],
                    lease_row,
                )
                .await
            })?;
            leases.sort_unstable_by_key(|l| l.job_id);
            leases
        };
        if leases.is_empty() {
            // Nothing leased: say why if the lookup may not lease.
            self.read(async |c| active_lookup(self, c, lookup_id, now).await)?;
        }
        Ok(leases)
    }

    fn held(
        &self,
        lookup_id: i64,
        after: i64,
        max: u32,
        until: i64,
        now: i64,
    ) -> Result<Vec<Lease>, StoreError> {
        let sql = format!(
            "WITH held AS (
                 SELECT id FROM jobs
                 WHERE state = 'leased' AND lease_lookup = $1 AND lease_until >= $2 AND id > $3
                 ORDER BY id LIMIT $4 FOR UPDATE)
             UPDATE jobs j SET lease_until = $5, updated_at = $2
             FROM held WHERE j.id = held.id
             RETURNING {LEASE_COLUMNS}"
        );
        self.write(async |tx| {
            let c = self.clock(tx, now).await?;
            let mut held = all_rows(
                tx,
                &sql,
                &[&lookup_id, &c.now, &after, &i64::from(max), &c.at(until)],
                lease_row,
            )
            .await?;
            held.sort_unstable_by_key(|l| l.job_id);
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
        let ids = dedup(job_ids);
        self.write(async |tx| {
            let c = self.clock(tx, now).await?;
            let renewed: HashSet<i64> = all_rows(
                tx,
                "UPDATE jobs SET lease_until = $1, updated_at = $2
                 WHERE id = ANY($3) AND state = 'leased' AND lease_lookup = $4
                   AND lease_until >= $2
                 RETURNING id",
                &[&c.at(until), &c.now, &ids, &lookup_id],
                |r| Ok(r.try_get::<_, i64>(0)?),
            )
            .await?
            .into_iter()
            .collect();
            Ok(ids.iter().copied().partition(|id| renewed.contains(id)))
        })
    }

    fn release(
        &self,
        lookup_id: i64,
        job_ids: &[i64],
        waiting: &[(i64, String)],
        now: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let ids = dedup(job_ids);
        let waiting: HashMap<i64, &str> = waiting.iter().map(|(j, w)| (*j, w.as_str())).collect();
        let reasons: Vec<Option<&str>> = ids.iter().map(|id| waiting.get(id).copied()).collect();
        let sql = changing_jobs(
            "SELECT j.id, j.state AS old_state, j.outcome AS old_outcome, r.why
             FROM jobs j JOIN unnest($2::bigint[], $3::text[]) AS r(id, why)
                 ON j.id = r.id
             WHERE j.state = 'leased' AND j.lease_lookup = $4
             ORDER BY j.id FOR UPDATE OF j",
            "state = 'queued', lease_lookup = NULL, lease_until = NULL, updated_at = $1,
             wait_reason = t.why",
            "j.id",
        );
        self.write(async |tx| {
            let c = self.clock(tx, now).await?;
            let released: HashSet<i64> =
                all_rows(tx, &sql, &[&c.now, &ids, &reasons, &lookup_id], |r| {
                    Ok(r.try_get::<_, i64>(0)?)
                })
                .await?
                .into_iter()
                .collect();
            let released: Vec<i64> = ids
                .iter()
                .copied()
                .filter(|id| released.contains(id))
                .collect();
            if !released.is_empty() {
                notify_queued(tx).await?;
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
        let mut seen = HashSet::new();
        let (ids, reasons): (Vec<i64>, Vec<&str>) = waiting
            .iter()
            .filter(|(id, _)| seen.insert(*id))
            .map(|(id, why)| (*id, why.as_str()))
            .unzip();
        let sql = changing_jobs(
            "SELECT j.id, j.state AS old_state, j.outcome AS old_outcome, r.why
             FROM jobs j JOIN unnest($2::bigint[], $3::text[]) AS r(id, why)
                 ON j.id = r.id
             WHERE j.state = 'leased' AND j.lease_lookup = $4
               AND j.wait_reason IS DISTINCT FROM r.why
             ORDER BY j.id FOR UPDATE OF j",
            "wait_reason = t.why, updated_at = $1",
            "j.id",
        );
        self.write(async |tx| {
            let c = self.clock(tx, now).await?;
            let held: HashSet<i64> = all_rows(
                tx,
                "SELECT id FROM jobs WHERE id = ANY($1) AND state = 'leased' AND lease_lookup = $2
                 ORDER BY id FOR UPDATE",
                &[&ids, &lookup_id],
                |r| Ok(r.try_get::<_, i64>(0)?),
            )
            .await?
            .into_iter()
            .collect();
            all_rows(tx, &sql, &[&c.now, &ids, &reasons, &lookup_id], |_| Ok(())).await?;
            Ok(ids.iter().copied().filter(|id| held.contains(id)).collect())
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
        self.write(async |tx| {
            let c = self.clock(tx, now).await?;
            let row: Option<(JobState, Option<i64>, u32)> = optional_row(
                tx,
                "SELECT state, lease_lookup, attempts FROM jobs WHERE id = $1 FOR UPDATE",
                &[&job_id],
                |r| Ok((r.state(0)?, r.try_get(1)?, r.small(2)?)),
            )
            .await?;
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
            if new_state == JobState::Queued {
                notify_queued(tx).await?;
            }
            let sql = changing_jobs(
                "SELECT id, state AS old_state, outcome AS old_outcome FROM jobs WHERE id = $5",
                "state = $1, attempts = $2, reason = $3, lease_lookup = NULL,
                 lease_until = NULL, updated_at = $4",
                "j.id",
            );
            all_rows(
                tx,
                &sql,
                &[
                    &new_state.as_str(),
                    &i64::from(attempts),
                    &reason,
                    &c.now,
                    &job_id,
                ],
                |_| Ok(()),
            )
            .await?;
            Ok((new_state, attempts))
        })
    }

    fn record_answer(&self, a: &NewAnswer<'_>) -> Result<AnswerOutcome, StoreError> {
        let size = check_answer(a)?;
        self.write(async |tx| {
            let c = self.clock(tx, a.now).await?;
            record_in(tx, a, size, c.now).await
        })
    }

    fn answer_targets(
        &self,
        lookup_id: i64,
        job_ids: &[i64],
    ) -> Result<Vec<AnswerTarget>, StoreError> {
        self.read(async |tx| {
            let rows: HashMap<i64, (bool, Option<i64>)> = all_rows(
                tx,
                "SELECT id, answer_sha256 IS NOT NULL, last_lookup FROM jobs WHERE id = ANY($1)",
                &[&job_ids],
                |r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?))),
            )
            .await?
            .into_iter()
            .collect();
            Ok(job_ids
                .iter()
                .map(|id| {
                    let job = rows.get(id).copied();
                    answer_target(lookup_id, job)
                })
                .collect())
        })
    }

    fn blob_referenced(&self, sha256: &str) -> Result<bool, StoreError> {
        self.read(async |tx| {
            one_value(
                tx,
                "SELECT EXISTS (SELECT 1 FROM bundles WHERE id = $1)
                     OR EXISTS (SELECT 1 FROM jobs WHERE answer_sha256 = $1)",
                &[&sha256],
            )
            .await
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
        // The first answer for each job is tried; a later one for the same job gets what
        // the first got, a stored answer making it a duplicate.
        let mut seen = HashSet::with_capacity(answers.len());
        let first: Vec<usize> = (0..answers.len())
            .filter(|&i| seen.insert(answers[i].job_id))
            .collect();
        let picked: Vec<&NewAnswer<'_>> = first.iter().map(|&i| &answers[i]).collect();
        let ids: Vec<i64> = picked.iter().map(|a| a.job_id).collect();
        let lookups: Vec<i64> = picked.iter().map(|a| a.lookup_id).collect();
        let sizes: Vec<i64> = first.iter().map(|&i| sizes[i]).collect();
        let outcomes: Vec<&str> = picked.iter().map(|a| a.outcome).collect();
        let nodes: Vec<&str> = picked.iter().map(|a| a.node).collect();
        let shas: Vec<&str> = picked.iter().map(|a| a.sha256).collect();
        let times: Vec<Option<i64>> = picked.iter().map(|a| self.caller_clock(a.now)).collect();
        let inline: Vec<Option<&[u8]>> = picked.iter().map(|a| a.inline).collect();
        // One statement for the whole batch (a transaction of its own), conditional on each
        // job's last holder; rows locked in id order (two servers' batches never deadlock);
        // the archives kept inline are written by the same statement.
        let sql = changing_jobs_and(
            "SELECT a.*, j.state AS old_state, j.outcome AS old_outcome
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                         $6::bigint[], $7::bigint[], $8::bytea[])
                  AS a(id, outcome, node, sha, size, lookup, at, bytes)
                 JOIN jobs j ON j.id = a.id
             WHERE j.answer_sha256 IS NULL AND j.last_lookup = a.lookup
             ORDER BY a.id FOR UPDATE OF j",
            "state = 'done', outcome = t.outcome, node = t.node, answer_sha256 = t.sha,
             answer_bytes = t.size, answer_lookup = t.lookup, lease_lookup = NULL,
             lease_until = NULL,
             updated_at = coalesce(t.at, floor(extract(epoch FROM now()))::bigint),
             wait_reason = NULL",
            "j.id",
            ", inlined AS (INSERT INTO answer_data (job_id, bytes)
                           SELECT id, bytes FROM target WHERE bytes IS NOT NULL)",
        );
        let stored: HashSet<i64> = self
            .single(async |c| {
                all_rows(
                    c,
                    &sql,
                    &[
                        &ids, &outcomes, &nodes, &shas, &sizes, &lookups, &times, &inline,
                    ],
                    |r| Ok(r.try_get::<_, i64>(0)?),
                )
                .await
            })?
            .into_iter()
            .collect();
        // Why the others were not stored.
        let others: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| !stored.contains(id))
            .collect();
        let found: HashMap<i64, (bool, Option<i64>)> = if others.is_empty() {
            HashMap::new()
        } else {
            self.read(async |c| {
                all_rows(
                    c,
                    "SELECT id, answer_sha256 IS NOT NULL, last_lookup FROM jobs
                     WHERE id = ANY($1)",
                    &[&others],
                    |r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?))),
                )
                .await
                .map(|rows| rows.into_iter().collect())
            })?
        };
        let mut told = HashSet::with_capacity(answers.len());
        let mut out = Vec::with_capacity(answers.len());
        for a in answers {
            let again = !told.insert(a.job_id);
            let result = if stored.contains(&a.job_id) {
                Ok(if again {
                    AnswerOutcome::Duplicate
                } else {
                    AnswerOutcome::Stored
                })
            } else {
                let job = found.get(&a.job_id).copied();
                match answer_target(a.lookup_id, job) {
                    // Open, yet not stored: it changed between the two statements (leased
                    // anew by this very lookup): try it once more on its own.
                    AnswerTarget::Open => self.record_answer(a),
                    target => refused_answer(target, a.job_id),
                }
            };
            out.push(result);
        }
        Ok(out)
    }

    fn expire_leases(&self, now: i64, max_attempts: u32) -> Result<u64, StoreError> {
        self.write(async |tx| {
            let c = self.clock(tx, now).await?;
            expire_in(tx, c.now, max_attempts).await
        })
    }

    fn queued_count(&self) -> Result<u64, StoreError> {
        self.read(async |tx| {
            let n: i64 =
                one_value(tx, "SELECT count(*) FROM jobs WHERE state = 'queued'", &[]).await?;
            u64::try_from(n).map_err(|_| bad_value(format!("count {n}")))
        })
    }

    fn check(&self) -> Result<(), StoreError> {
        self.read(async |tx| {
            let _: i32 = one_value(tx, "SELECT 1", &[]).await?;
            Ok(())
        })
    }

    fn count_by_state(&self) -> Result<Vec<(JobState, u64)>, StoreError> {
        let counted: Vec<(JobState, u64)> = self.read(async |tx| {
            all_rows(
                tx,
                "SELECT state, count(*) FROM jobs GROUP BY state",
                &[],
                |r| Ok((r.state(0)?, r.count(1)?)),
            )
            .await
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

    fn queue_hint(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        Some(self.queue_hint.clone())
    }
}

async fn jobs_of_submission(
    tx: &impl GenericClient,
    submission_id: i64,
) -> Result<Vec<(i64, u32)>, StoreError> {
    all_rows(
        tx,
        "SELECT id, task FROM jobs WHERE submission_id = $1 ORDER BY task",
        &[&submission_id],
        |r| Ok((r.try_get(0)?, r.small(1)?)),
    )
    .await
}
