//! Reading result rows of either backend: [`Columns`] is what the mappers need of a row, and
//! each mapper (an author, a lookup, a job as authors see it, a submission's summary) is
//! written once for both. The columns are those of [`super::rules`]'s `*_COLS`, in order.

use rjs_wire::api::{JobState, JobView, OutcomeCounts, StateCounts, SubmissionSummary};

use super::{Author, LookupServer};

/// A result row read by column index; each backend's row type implements it with its driver's
/// own conversions (their errors name the column).
pub(crate) trait Columns {
    type Error;
    fn int(&self, idx: usize) -> Result<i64, Self::Error>;
    fn opt_int(&self, idx: usize) -> Result<Option<i64>, Self::Error>;
    fn text(&self, idx: usize) -> Result<String, Self::Error>;
    fn opt_text(&self, idx: usize) -> Result<Option<String>, Self::Error>;
    fn flag(&self, idx: usize) -> Result<bool, Self::Error>;
    /// The error for a value the column holds that the mapper cannot take.
    fn invalid(&self, idx: usize, why: String) -> Self::Error;

    /// A count or size: never negative.
    fn count(&self, idx: usize) -> Result<u64, Self::Error> {
        let v = self.int(idx)?;
        u64::try_from(v).map_err(|_| self.invalid(idx, format!("{v} is out of range")))
    }

    fn opt_count(&self, idx: usize) -> Result<Option<u64>, Self::Error> {
        match self.opt_int(idx)? {
            None => Ok(None),
            Some(v) => u64::try_from(v)
                .map(Some)
                .map_err(|_| self.invalid(idx, format!("{v} is out of range"))),
        }
    }

    /// A task index, task count or attempt count.
    fn small(&self, idx: usize) -> Result<u32, Self::Error> {
        let v = self.int(idx)?;
        u32::try_from(v).map_err(|_| self.invalid(idx, format!("{v} is out of range")))
    }

    fn state(&self, idx: usize) -> Result<JobState, Self::Error> {
        let s = self.text(idx)?;
        JobState::parse(&s).ok_or_else(|| self.invalid(idx, format!("unknown job state {s:?}")))
    }
}

/// A row of [`super::rules::AUTHOR_COLS`].
pub(crate) fn author_from_row<R: Columns>(r: &R) -> Result<Author, R::Error> {
    Ok(Author {
        id: r.int(0)?,
        name: r.text(1)?,
        public_key: r.text(2)?,
        fingerprint: r.text(3)?,
        created_at: r.int(4)?,
        removed: r.flag(5)?,
    })
}

/// A row of [`super::rules::LOOKUP_COLS`].
pub(crate) fn lookup_from_row<R: Columns>(r: &R) -> Result<LookupServer, R::Error> {
    Ok(LookupServer {
        id: r.int(0)?,
        name: r.text(1)?,
        cert_sha256: r.text(2)?,
        created_at: r.int(3)?,
        revoked: r.flag(4)?,
    })
}

/// A row of [`super::rules::VIEW_COLS`].
pub(crate) fn view_from_row<R: Columns>(r: &R) -> Result<JobView, R::Error> {
    Ok(JobView {
        id: r.int(0)?,
        submission_id: r.int(13)?,
        waiting: r.opt_text(14)?,
        leased_by: r.opt_text(15)?,
        bundle_id: r.text(1)?,
        name: r.text(2)?,
        task: r.small(3)?,
        tasks: r.small(4)?,
        state: r.state(5)?,
        attempts: r.small(6)?,
        reason: r.opt_text(7)?,
        outcome: r.opt_text(8)?,
        node: r.opt_text(9)?,
        answer_bytes: r.opt_count(10)?,
        created_at: r.int(11)?,
        updated_at: r.int(12)?,
    })
}

/// A row of [`super::rules::SUMMARY_COLS`].
pub(crate) fn summary_from_row<R: Columns>(r: &R) -> Result<SubmissionSummary, R::Error> {
    Ok(SubmissionSummary {
        id: r.int(0)?,
        bundle_id: r.text(1)?,
        name: r.text(2)?,
        group: r.text(3)?,
        tasks: r.small(4)?,
        created_at: r.int(5)?,
        states: StateCounts {
            queued: r.count(6)?,
            leased: r.count(7)?,
            done: r.count(8)?,
            failed: r.count(9)?,
        },
        outcomes: OutcomeCounts {
            exit_zero: r.count(10)?,
            exit_other: r.count(11)?,
            trap: r.count(12)?,
            limit: r.count(13)?,
        },
        first_answer_at: r.opt_int(14)?,
        last_answer_at: r.opt_int(15)?,
        changed_at: r.int(16)?,
    })
}
