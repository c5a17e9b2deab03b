//! The submission page's live updates: `GET /dashboard/submissions/{id}/events?from=&to=`,
//! server-sent events. At most once a [`INTERVAL`] while jobs change: a `summary` event (the
//! submission's counts, one row) when it changed, and a `job` event per task of the page's
//! range (`from..=to`, at most one page) that changed since the last. Its cost per update is
//! bounded by the page, whatever the submission's size.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::web;
use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use serde::Deserialize;

use super::Reply;
use super::answers::{Source, id_param, own_submission, times};
use super::pages::{Bar, TASKS_PAGE, TaskRow, elapsed};
use super::session::{IDLE, Viewer};
use crate::server::changes::{event, query, sse_response};
use crate::server::error::ApiError;
use crate::server::route::Call;
use crate::store::{JobCursor, JobFilter, now};

/// Least time between two updates of one page.
pub const INTERVAL: Duration = Duration::from_secs(1);

#[derive(Deserialize)]
struct Range {
    from: u32,
    to: u32,
    /// The change number the page was rendered at (rows changed after it are sent).
    since: Option<u64>,
}

/// What one stream last sent.
#[derive(Default)]
struct Sent {
    summary: Option<rjs_wire::api::SubmissionSummary>,
    /// The change number read before the last rows were: rows changed after it are sent.
    seq: u64,
}

#[derive(serde::Serialize)]
struct SummaryEvent<'a> {
    #[serde(flatten)]
    s: &'a rjs_wire::api::SubmissionSummary,
    bar: Bar,
    elapsed: String,
}

/// `GET /dashboard/submissions/{id}/events?from=<task>&to=<task>`.
pub async fn events(call: Call<'_, Viewer>, _: &mut web::Payload) -> Reply {
    let id = id_param(call.req, "id", "submission")?;
    own_submission(call.state, &call.caller, id).await?;
    let author = call.caller.author_id()?;
    let pass = call.state.changes.admit(author)?;
    let r = web::Query::<Range>::from_query(call.req.query_string())
        .map_err(|_| ApiError::bad_request("from and to must be task numbers"))?
        .into_inner();
    if r.to < r.from || r.to - r.from >= TASKS_PAGE {
        return Err(ApiError::bad_request(format!(
            "from..=to must name at most {TASKS_PAGE} tasks"
        )));
    }
    let state = call.state;
    // What the client was last sent. The page it has was rendered before this stream
    // started: rows changed since the number read now are sent.
    let start = match r.since {
        Some(s) => s,
        None => {
            state
                .store_call("reading the change sequence", |s| s.change_seq())
                .await?
        }
    };
    let sent = Arc::new(Mutex::new(Sent {
        summary: None,
        seq: start,
    }));
    let store = state.store.clone();
    let activity = state.activity.clone();
    let src = Source::of(state);
    let poll = move || -> LocalBoxFuture<'static, Option<(Bytes, bool)>> {
        let (store, sent, activity, src) =
            (store.clone(), sent.clone(), activity.clone(), src.clone());
        Box::pin(async move {
            let since = sent.lock().unwrap_or_else(|p| p.into_inner()).seq;
            let (summary, rows, seq) = query(move || {
                // The number first: a row that changes after it is read is sent again next
                // time, never missed.
                let seq = store.change_seq()?;
                let summary = store.submission(author, id)?;
                let rows = store.jobs_page(
                    author,
                    &JobFilter {
                        submission: Some(id),
                        after: r.from.checked_sub(1).map(|task| JobCursor {
                            submission_id: id,
                            task,
                        }),
                        changed_after: Some(since),
                        limit: r.to - r.from + 1,
                        ..JobFilter::default()
                    },
                )?;
                Ok((summary, rows, seq))
            })
            .await?;
            let summary = summary?;
            let now = now();
            let mut out = String::new();
            {
                let mut sent = sent.lock().unwrap_or_else(|p| p.into_inner());
                if sent.summary.as_ref() != Some(&summary) {
                    out.push_str(&event(
                        "summary",
                        None,
                        &SummaryEvent {
                            s: &summary,
                            bar: Bar::of(&summary),
                            elapsed: elapsed(&summary, now),
                        },
                    ));
                    sent.summary = Some(summary);
                }
                sent.seq = seq;
            }
            let seen = activity.any_lookup_seen();
            let changed: Vec<_> = rows
                .into_iter()
                .filter(|j| j.task >= r.from && j.task <= r.to)
                .collect();
            if !changed.is_empty() {
                let src = src.clone();
                let rows = query(move || {
                    Ok(changed
                        .iter()
                        .map(|j| {
                            let t = (j.state == rjs_wire::api::JobState::Done)
                                .then(|| times(&src, author, j.id))
                                .flatten();
                            event("job", None, &TaskRow::of(j, t, seen, now))
                        })
                        .collect::<String>())
                })
                .await?;
                out.push_str(&rows);
            }
            Some((Bytes::from(out), false))
        })
    };
    let store = state.store.clone();
    let hash = call.caller.session_hash.clone();
    let still = move || -> LocalBoxFuture<'static, bool> {
        let (store, hash) = (store.clone(), hash.clone());
        Box::pin(async move {
            query(move || store.session(&hash, now(), IDLE))
                .await
                .is_some_and(|s| s.is_some())
        })
    };
    Ok(sse_response(state.changes.stream(
        pass,
        Bytes::from_static(b"retry: 3000\n\n"),
        INTERVAL,
        poll,
        still,
    )))
}
