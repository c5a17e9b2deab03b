//! [`Views`] on PostgreSQL: the same reads as `sqlite::views` (summaries from
//! `submission_counts`, pages by keyset, changes by `change_seq`).

use rjs_wire::api::{JobState, JobView, SubmissionSummary};

use super::{PgStore, all_rows, one_value, optional_row};
use crate::store::StoreError;
use crate::store::rows::{Columns, summary_from_row, view_from_row};
use crate::store::rules::{SUMMARY_COLS, SUMMARY_FROM, VIEW_COLS, contains_pattern};
use crate::store::views::{
    AuthorActivity, JobFilter, LookupActivity, Overview, SubmissionFilter, Views,
};

impl Views for PgStore {
    fn submissions(
        &self,
        author_id: i64,
        f: &SubmissionFilter<'_>,
    ) -> Result<Vec<SubmissionSummary>, StoreError> {
        let state_col = match f.state {
            None => "true",
            Some(JobState::Queued) => "c.queued > 0",
            Some(JobState::Leased) => "c.leased > 0",
            Some(JobState::Done) => "c.done > 0",
            Some(JobState::Failed) => "c.failed > 0",
        };
        let sql = format!(
            "SELECT {SUMMARY_COLS} FROM {SUMMARY_FROM}
             WHERE s.author_id = $1 AND ($2::text IS NULL OR s.bundle_id = $2)
               AND ($3::text IS NULL OR b.name ILIKE $3 ESCAPE '\\')
               AND ($4::bigint IS NULL OR s.id < $4)
               AND {state_col}
             ORDER BY s.id DESC LIMIT $5"
        );
        let name = f.name.map(contains_pattern);
        let limit = i64::from(f.limit);
        self.read(async |tx| {
            all_rows(
                tx,
                &sql,
                &[&author_id, &f.bundle, &name, &f.before, &limit],
                summary_from_row,
            )
            .await
        })
    }

    fn submission(
        &self,
        author_id: i64,
        submission_id: i64,
    ) -> Result<Option<SubmissionSummary>, StoreError> {
        let sql = format!(
            "SELECT {SUMMARY_COLS} FROM {SUMMARY_FROM} WHERE s.id = $1 AND s.author_id = $2"
        );
        self.read(async |tx| {
            optional_row(tx, &sql, &[&submission_id, &author_id], summary_from_row).await
        })
    }

    fn jobs_page(&self, author_id: i64, f: &JobFilter<'_>) -> Result<Vec<JobView>, StoreError> {
        let (after_sub, after_task) = match f.after {
            Some(c) => (Some(c.submission_id), Some(i64::from(c.task))),
            None => (None, None),
        };
        let state = f.state.map(JobState::as_str);
        let changed_after = f
            .changed_after
            .map(|c| i64::try_from(c).unwrap_or(i64::MAX));
        let sql = format!(
            "SELECT {VIEW_COLS} FROM jobs j JOIN bundles b ON b.id = j.bundle_id
             WHERE j.author_id = $1
               AND ($2::bigint IS NULL OR j.submission_id = $2)
               AND ($3::text IS NULL OR j.bundle_id = $3)
               AND ($4::text IS NULL OR j.state = $4)
               AND ($5::bigint IS NULL
                    OR j.submission_id < $5 OR (j.submission_id = $5 AND j.task > $6))
               AND ($8::bigint IS NULL OR j.change_seq > $8)
             ORDER BY j.submission_id DESC, j.task LIMIT $7"
        );
        let limit = i64::from(f.limit);
        self.read(async |tx| {
            all_rows(
                tx,
                &sql,
                &[
                    &author_id,
                    &f.submission,
                    &f.bundle,
                    &state,
                    &after_sub,
                    &after_task,
                    &limit,
                    &changed_after,
                ],
                view_from_row,
            )
            .await
        })
    }

    fn job(&self, author_id: i64, job_id: i64) -> Result<Option<JobView>, StoreError> {
        let sql = format!(
            "SELECT {VIEW_COLS} FROM jobs j JOIN bundles b ON b.id = j.bundle_id
             WHERE j.id = $1 AND j.author_id = $2"
        );
        self.read(async |tx| optional_row(tx, &sql, &[&job_id, &author_id], view_from_row).await)
    }

    fn change_seq(&self) -> Result<u64, StoreError> {
        self.read(async |tx| {
            let seq: i64 = one_value(tx, "SELECT seq FROM change_counter", &[]).await?;
            Ok(u64::try_from(seq).unwrap_or(0))
        })
    }

    fn changes(
        &self,
        author_id: i64,
        submission: Option<i64>,
        since: u64,
        limit: u32,
    ) -> Result<Vec<(u64, JobView)>, StoreError> {
        let since = i64::try_from(since).unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT {VIEW_COLS}, j.change_seq FROM jobs j JOIN bundles b ON b.id = j.bundle_id
             WHERE j.author_id = $1 AND j.change_seq > $2
               AND ($3::bigint IS NULL OR j.submission_id = $3)
             ORDER BY j.change_seq LIMIT $4"
        );
        let limit = i64::from(limit);
        self.read(async |tx| {
            all_rows(tx, &sql, &[&author_id, &since, &submission, &limit], |r| {
                Ok((r.count(16)?, view_from_row(r)?))
            })
            .await
        })
    }

    fn overview(&self) -> Result<Overview, StoreError> {
        self.read(async |tx| {
            let lookups = all_rows(
                tx,
                "SELECT l.id, l.name, l.revoked, l.created_at,
                        (SELECT count(*) FROM jobs WHERE state = 'leased' AND lease_lookup = l.id),
                        (SELECT count(*) FROM jobs WHERE answer_lookup = l.id)
                 FROM lookups l ORDER BY l.revoked, l.name, l.id",
                &[],
                |r| {
                    Ok(LookupActivity {
                        id: r.try_get(0)?,
                        name: r.try_get(1)?,
                        revoked: r.try_get(2)?,
                        created_at: r.try_get(3)?,
                        held: r.count(4)?,
                        relayed: r.count(5)?,
                    })
                },
            )
            .await?;
            let queue = all_rows(
                tx,
                "SELECT grp, state, count(*) FROM jobs WHERE state IN ('queued', 'leased')
                 GROUP BY grp, state ORDER BY grp, state",
                &[],
                |r| Ok((r.try_get(0)?, r.state(1)?, r.count(2)?)),
            )
            .await?;
            let authors = all_rows(
                tx,
                "SELECT a.name, a.fingerprint, a.removed, count(s.id),
                        coalesce(sum(c.queued + c.leased + c.done + c.failed), 0)::bigint,
                        coalesce(sum(c.done + c.failed), 0)::bigint
                 FROM authors a LEFT JOIN submissions s ON s.author_id = a.id
                      LEFT JOIN submission_counts c ON c.submission_id = s.id
                 GROUP BY a.id ORDER BY a.removed, a.name, a.id",
                &[],
                |r| {
                    Ok(AuthorActivity {
                        name: r.try_get(0)?,
                        fingerprint: r.try_get(1)?,
                        removed: r.try_get(2)?,
                        submissions: r.count(3)?,
                        jobs: r.count(4)?,
                        finished: r.count(5)?,
                    })
                },
            )
            .await?;
            Ok(Overview {
                lookups,
                queue,
                authors,
            })
        })
    }
}
