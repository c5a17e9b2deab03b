//! What both store backends ([`super::sqlite`], [`super::postgres`]) share: the rules that do
//! not depend on the database (how ids and groups are read, what an answer must be, what the
//! outcome of an answer that changed nothing is) and the SQL both dialects write alike.

use std::collections::HashSet;

use super::{AnswerOutcome, AnswerRef, AnswerTarget, INLINE_ANSWER_MAX, NewAnswer, StoreError};

/// Reason recorded when a lease ran out without renewal.
pub const LEASE_EXPIRED: &str = "lease expired";

/// A session's last use is written at most this often (seconds): reading a page must not cost
/// a write each time.
pub(crate) const SESSION_TOUCH_EVERY: i64 = 60;

pub(crate) const AUTHOR_COLS: &str = "id, name, public_key, fingerprint, created_at, removed";

pub(crate) const LOOKUP_COLS: &str = "id, name, cert_sha256, created_at, revoked";

/// A job as authors see it (`j` the job; its bundle `b` joined).
pub(crate) const VIEW_COLS: &str = "j.id, j.bundle_id, b.name, j.task, j.tasks, j.state, \
     j.attempts, j.reason, j.outcome, j.node, j.answer_bytes, j.created_at, j.updated_at, \
     j.submission_id, j.wait_reason, (SELECT l.name FROM lookups l WHERE l.id = j.lease_lookup)";

/// A submission's summary (`s`, its bundle `b` and its counts `c`: [`SUMMARY_FROM`]).
pub(crate) const SUMMARY_COLS: &str = "s.id, s.bundle_id, b.name, b.grp, b.tasks, s.created_at, \
     c.queued, c.leased, c.done, c.failed, c.exit_zero, c.exit_other, c.trapped, c.limited, \
     c.first_answer_at, c.last_answer_at, c.changed_at";

pub(crate) const SUMMARY_FROM: &str = "submissions s JOIN bundles b ON b.id = s.bundle_id \
     JOIN submission_counts c ON c.submission_id = s.id";

/// Ids in first-seen order, without repeats.
pub(crate) fn dedup(ids: &[i64]) -> Vec<i64> {
    let mut seen = HashSet::with_capacity(ids.len());
    ids.iter().copied().filter(|id| seen.insert(*id)).collect()
}

/// The node groups a lease asks for, normalised as
/// [`node_serves`](rjs_signer::manifest::node_serves) reads them; `None` means any group (no
/// groups given, or one of them is the root).
pub(crate) fn group_filter(groups: &[String]) -> Option<Vec<&str>> {
    if groups.is_empty() {
        return None;
    }
    let mut out: Vec<&str> = Vec::with_capacity(groups.len());
    for g in groups {
        let g = g.trim_end_matches('/');
        if g.is_empty() {
            return None;
        }
        if !out.contains(&g) {
            out.push(g);
        }
    }
    Some(out)
}

/// A count or size as the databases store it (a signed 64-bit integer).
pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| {
        StoreError::Backend(format!("{what} {v} does not fit in a database integer").into())
    })
}

/// Checks an answer before any write: sizes fit, an inline archive is as long as announced and
/// small enough. Its size as stored.
pub(crate) fn check_answer(a: &NewAnswer<'_>) -> Result<i64, StoreError> {
    let size = to_i64(a.size, "answer size")?;
    if let Some(bytes) = a.inline
        && (bytes.len() as u64 != a.size || a.size > INLINE_ANSWER_MAX)
    {
        return Err(StoreError::Conflict(format!(
            "inline answer for job {}: {} bytes, announced {} (at most {INLINE_ANSWER_MAX})",
            a.job_id,
            bytes.len(),
            a.size
        )));
    }
    Ok(size)
}

/// A job's answer as the store found it: its SHA-256, its size and its archive if kept
/// inline (`None`: no such job of the author's).
pub(crate) type FoundAnswer = (Option<String>, Option<i64>, Option<Vec<u8>>);

/// Where job `job_id`'s answer is, from what the store found ([`FoundAnswer`]): `NotFound` if
/// the job is not the author's or has no answer; an error if the row contradicts itself.
pub(crate) fn answer_ref(job_id: i64, found: Option<FoundAnswer>) -> Result<AnswerRef, StoreError> {
    let bad = |what: String| StoreError::Backend(what.into());
    match found {
        Some((Some(sha256), Some(size), inline)) => {
            let size = u64::try_from(size)
                .map_err(|_| bad(format!("job {job_id}'s answer has size {size}")))?;
            if let Some(bytes) = &inline
                && bytes.len() as u64 != size
            {
                return Err(bad(format!(
                    "job {job_id}'s inline answer has {} bytes, recorded {size}",
                    bytes.len()
                )));
            }
            Ok(AnswerRef {
                sha256,
                size,
                inline,
            })
        }
        Some((Some(_), None, _)) => Err(bad(format!("job {job_id} has an answer without a size"))),
        _ => Err(StoreError::NotFound(format!("answer of job {job_id}"))),
    }
}

/// What an answer that changed nothing was, from what it would have been
/// ([`Store::answer_targets`](super::Store::answer_targets)) as the job stands now.
pub(crate) fn refused_answer(
    target: AnswerTarget,
    job_id: i64,
) -> Result<AnswerOutcome, StoreError> {
    match target {
        AnswerTarget::Missing => Err(StoreError::NotFound(format!("job {job_id}"))),
        AnswerTarget::NotLeased => Ok(AnswerOutcome::NotLeased),
        AnswerTarget::Answered => Ok(AnswerOutcome::Duplicate),
        AnswerTarget::Open => Err(StoreError::Conflict(format!(
            "job {job_id} changed while its answer was recorded"
        ))),
    }
}

/// What an answer from `lookup_id` would be for a job that exists (`Some`: whether it has an
/// answer, and the lookup of its current or last lease) or not (`None`).
pub(crate) fn answer_target(lookup_id: i64, job: Option<(bool, Option<i64>)>) -> AnswerTarget {
    match job {
        None => AnswerTarget::Missing,
        Some((_, last)) if last != Some(lookup_id) => AnswerTarget::NotLeased,
        Some((true, _)) => AnswerTarget::Answered,
        Some((false, _)) => AnswerTarget::Open,
    }
}

/// A `LIKE` pattern matching names that contain `needle` literally (`\` escapes; case-folded
/// as each database's case-insensitive match does).
pub(crate) fn contains_pattern(needle: &str) -> String {
    let mut p = String::with_capacity(needle.len() + 2);
    p.push('%');
    for c in needle.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_ids_and_patterns() {
        assert_eq!(dedup(&[3, 1, 3, 2, 1]), vec![3, 1, 2]);
        assert_eq!(group_filter(&[]), None);
        assert_eq!(
            group_filter(&["/".into(), "a".into()]),
            None,
            "the root is any"
        );
        assert_eq!(
            group_filter(&["a/b/".into(), "a/b".into(), "c".into()]),
            Some(vec!["a/b", "c"])
        );
        assert_eq!(contains_pattern("5%_a\\"), "%5\\%\\_a\\\\%");
        assert!(to_i64(u64::MAX, "size").is_err());
    }

    #[test]
    fn refused_answers_are_told_apart() {
        let t = |job| answer_target(7, job);
        assert_eq!(t(None), AnswerTarget::Missing);
        assert_eq!(t(Some((false, Some(8)))), AnswerTarget::NotLeased);
        assert_eq!(t(Some((true, None))), AnswerTarget::NotLeased);
        assert_eq!(t(Some((true, Some(7)))), AnswerTarget::Answered);
        assert_eq!(t(Some((false, Some(7)))), AnswerTarget::Open);
        assert!(matches!(
            refused_answer(AnswerTarget::Missing, 1),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(
            refused_answer(AnswerTarget::Answered, 1).unwrap(),
            AnswerOutcome::Duplicate
        );
    }
}
