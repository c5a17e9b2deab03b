//! [`Views`] on SQLite: summaries from `submission_counts` (kept by triggers, migration 4),
//! pages of jobs by keyset (`jobs_author`, `jobs_author_bundle`, `jobs_submission_state`
//! indexes), changes by `change_seq` (`jobs_author_change`).

use rjs_wire::api::{JobState, JobView, SubmissionSummary};
use rusqlite::params;

use super::{SqliteStore, all_rows, optional_row};
use crate::store::StoreError;
use crate::store::rows::{Columns, summary_from_row, view_from_row};
use crate::store::rules::{SUMMARY_COLS, SUMMARY_FROM, VIEW_COLS, contains_pattern};
use crate::store::views::{
    AuthorActivity, JobFilter, LookupActivity, Overview, SubmissionFilter, Views,
};

impl Views for SqliteStore {
    fn submissions(
        &self,
        author_id: i64,
        f: &SubmissionFilter<'_>,
    ) -> Result<Vec<SubmissionSummary>, StoreError> {
        let state_col = match f.state {
            None => "1",
            Some(JobState::Queued) => "c.queued > 0",
            Some(JobState::Leased) => "c.leased > 0",
            Some(JobState::Done) => "c.done > 0",
            Some(JobState::Failed) => "c.failed > 0",
        };
        let sql = format!(
            "SELECT {SUMMARY_COLS} FROM {SUMMARY_FROM}
             WHERE s.author_id = ?1 AND (?2 IS NULL OR s.bundle_id = ?2)
               AND (?3 IS NULL OR b.name LIKE ?3 ESCAPE '\\') AND (?4 IS NULL OR s.id < ?4)
               AND {state_col}
             ORDER BY s.id DESC LIMIT ?5"
        );
        let name = f.name.map(contains_pattern);
        self.read(|tx| {
            all_rows(
                tx,
                &sql,
                params![author_id, f.bundle, name, f.before, f.limit],
                |r| summary_from_row(r),
            )
        })
    }

    fn submission(
        &self,
        author_id: i64,
        submission_id: i64,
    ) -> Result<Option<SubmissionSummary>, StoreError> {
        let sql = format!(
            "SELECT {SUMMARY_COLS} FROM {SUMMARY_FROM} WHERE s.id = ?1 AND s.author_id = ?2"
        );
        self.read(|tx| {
            optional_row(tx, &sql, params![submission_id, author_id], |r| {
                summary_from_row(r)
            })
        })
    }

    fn jobs_page(&self, author_id: i64, f: &JobFilter<'_>) -> Result<Vec<JobView>, StoreError> {
        let (after_sub, after_task) = match f.after {
            Some(c) => (Some(c.submission_id), Some(c.task)),
            None => (None, None),
        };
        let state = f.state.map(JobState::as_str);
        // One statement per shape, so that each uses its index (SQLite plans a statement
        // once; `?n IS NULL OR …` would hide the index from it). Parameters a shape does not
        // name are bound and unused.
        let mut conds = vec!["j.author_id = ?1"];
        if f.submission.is_some() {
            conds.push("j.submission_id = ?2");
        }
        if f.bundle.is_some() {
            conds.push("j.bundle_id = ?3");
        }
        if state.is_some() {
            conds.push("j.state = ?4");
        }
        if f.after.is_some() {
            conds.push("(j.submission_id < ?5 OR (j.submission_id = ?5 AND j.task > ?6))");
        }
        // ?8 is named in every shape: a statement must have a place for every value bound
        // up to its highest number.
        if f.changed_after.is_some() {
            // `+`: not by the change index (it would walk every recent change of the author,
            // whatever the page), but filtered on the page's own rows.
            conds.push("+j.change_seq > ?8");
        } else {
            conds.push("?8 IS NULL");
        }
        let changed_after = f
            .changed_after
            .map(|c| i64::try_from(c).unwrap_or(i64::MAX));
        let sql = format!(
            "SELECT {VIEW_COLS} FROM jobs j JOIN bundles b ON b.id = j.bundle_id
             WHERE {}
             ORDER BY j.submission_id DESC, j.task LIMIT ?7",
            conds.join(" AND ")
        );
        self.read(|tx| {
            all_rows(
                tx,
                &sql,
                params![
                    author_id,
                    f.submission,
                    f.bundle,
                    state,
                    after_sub,
                    after_task,
                    f.limit,
                    changed_after
                ],
                |r| view_from_row(r),
            )
        })
    }

    fn job(&self, author_id: i64, job_id: i64) -> Result<Option<JobView>, StoreError> {
        let sql = format!(
            "SELECT {VIEW_COLS} FROM jobs j JOIN bundles b ON b.id = j.bundle_id
             WHERE j.id = ?1 AND j.author_id = ?2"
        );
        self.read(|tx| optional_row(tx, &sql, params![job_id, author_id], |r| view_from_row(r)))
    }

    fn change_seq(&self) -> Result<u64, StoreError> {
        self.read(|tx| {
            Ok(tx
                .prepare_cached("SELECT seq FROM change_counter WHERE id = 1")?
                .query_row([], |r| r.count(0))?)
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
             WHERE j.author_id = ?1 AND j.change_seq > ?2
               AND (?3 IS NULL OR j.submission_id = ?3)
             ORDER BY j.change_seq LIMIT ?4"
        );
        self.read(|tx| {
            all_rows(
                tx,
                &sql,
                params![author_id, since, submission, limit],
                |r| Ok((r.count(16)?, view_from_row(r)?)),
            )
        })
    }

    fn overview(&self) -> Result<Overview, StoreError> {
        self.read(|tx| {
            let lookups = all_rows(
                tx,
                "SELECT l.id, l.name, l.revoked, l.created_at,
                        (SELECT count(*) FROM jobs WHERE state = 'leased' AND lease_lookup = l.id),
                        (SELECT count(*) FROM jobs WHERE answer_lookup = l.id)
                 FROM lookups l ORDER BY l.revoked, l.name, l.id",
                [],
                |r| {
                    Ok(LookupActivity {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        revoked: r.get(2)?,
                        created_at: r.get(3)?,
                        held: r.count(4)?,
                        relayed: r.count(5)?,
                    })
                },
            )?;
            let queue = all_rows(
                tx,
                "SELECT grp, state, count(*) FROM jobs WHERE state IN ('queued', 'leased')
                 GROUP BY grp, state ORDER BY grp, state",
                [],
                |r| Ok((r.get(0)?, r.state(1)?, r.count(2)?)),
            )?;
            let authors = all_rows(
                tx,
                "SELECT a.name, a.fingerprint, a.removed, count(s.id),
                        coalesce(sum(c.queued + c.leased + c.done + c.failed), 0),
                        coalesce(sum(c.done + c.failed), 0)
                 FROM authors a LEFT JOIN submissions s ON s.author_id = a.id
                      LEFT JOIN submission_counts c ON c.submission_id = s.id
                 GROUP BY a.id ORDER BY a.removed, a.name, a.id",
                [],
                |r| {
                    Ok(AuthorActivity {
                        name: r.get(0)?,
                        fingerprint: r.get(1)?,
                        removed: r.get(2)?,
                        submissions: r.count(3)?,
                        jobs: r.count(4)?,
                        finished: r.count(5)?,
                    })
                },
            )?;
            Ok(Overview {
                lookups,
                queue,
                authors,
            })
        })
    }
}
