//! The author API (`/api/v1/…`): every request signed by an enrolled author.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use rjs_signer::VerifyLimits;
use rjs_wire::api::{
    ChangeList, DashboardLogin, JobChange, JobList, JobRef, JobState, MAX_CHANGES_PAGE,
    MAX_JOBS_PAGE, MAX_SUBMISSIONS_PAGE, SubmissionList, UploadResponse, WhoAmI,
};
use serde::Deserialize;

use super::AppState;
use super::auth::{
    Authed, authenticate, check_body, check_nonce_unused, finish, nonce_expiry, replayed,
};
use super::body::{
    blob_body, blocking, check_declared_length, read_limited, sha256_hex, start_blob,
    stream_to_blob,
};
use super::error::ApiError;
use super::route::{Call, Caller, Reply};
use super::validate;
use crate::store::blobs::{BlobRead, BlobWriter};
use crate::store::{
    JobCursor, JobFilter, NewSubmission, RequestNonce, StoreError, SubmissionFilter, now,
};

/// An author API request: signed by an enrolled author (the head checked, the body's hash
/// and the nonce still to check: [`finish`]).
pub type AuthorCall<'a> = Call<'a, Authed>;

impl Caller for Authed {
    async fn identify(req: &HttpRequest, state: &AppState) -> Result<Self, ApiError> {
        authenticate(req, state).await
    }
}

/// Largest body of an author request other than an upload (they have none).
pub const MAX_SMALL_BODY: usize = 64 * 1024;

fn query<T: serde::de::DeserializeOwned>(req: &HttpRequest) -> Result<T, ApiError> {
    web::Query::<T>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| {
            ApiError::bad_request(format!("query parameters: {}", rjs_cmd::report::Chain(&e)))
        })
}

/// Finishes authenticating a request without a meaningful body: reads the (small) body for
/// its hash.
async fn finish_small(
    payload: &mut web::Payload,
    state: &AppState,
    authed: &Authed,
) -> Result<(), ApiError> {
    let body = read_limited(payload, "the request body", MAX_SMALL_BODY).await?;
    finish(state, authed, &sha256_hex(&body)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    #[serde(default)]
    resubmit: bool,
}

/// `POST /api/v1/bundles[?resubmit=true]`.
///
/// Leaves no trace unless it succeeds: the body goes to a temporary file, the nonce is only
/// checked (not recorded) before verification, and the blob is committed only once every
/// check has passed, then recorded with the nonce in one transaction. If that transaction
/// fails (a replay that raced this request, a store error), the blob is left to the
/// collector, which removes it once nothing refers to it and its grace period is over.
pub async fn upload(call: AuthorCall<'_>, payload: &mut web::Payload) -> Reply {
    let (req, state, authed) = (call.req, call.state, call.caller);
    let UploadQuery { resubmit } = query(req)?;
    let max = state.limits.max_bundle;
    check_declared_length(req, "the bundle", max)?;
    let writer = start_blob(&state.blobs, max).await?;
    let writer = stream_to_blob(payload, writer, "the bundle", max).await?;
    check_body(&authed, &writer.sha256_hex())?;
    check_nonce_unused(state, &authed).await?;

    let store = state.store.clone();
    let pins = state.pins.clone();
    let who = authed.clone();
    let nonce_expires = nonce_expiry(&authed);
    let limits = VerifyLimits {
        max_bundle_bytes: max,
        ..VerifyLimits::default()
    };
    let (response, created) = blocking(move || {
        let mut writer = writer;
        let (name, tasks, group) = verify_upload(&mut writer, &limits, &who)?;
        // Every check passed: now, and only now, the blob becomes visible.
        let pin = pins.pin(&writer.sha256_hex());
        let (sha, size) = writer
            .commit()
            .map_err(|e| ApiError::internal("storing the bundle", &e))?;
        let recorded = store.submit(&NewSubmission {
            author_id: who.author.id,
            bundle_id: &sha,
            name: &name,
            tasks,
            group: &group,
            size,
            resubmit,
            now: now(),
            nonce: Some(RequestNonce {
                nonce: &who.auth.nonce,
                expires_at: nonce_expires,
            }),
        });
        let submission = match recorded {
            Ok(s) => {
                drop(pin);
                s
            }
            Err(e) => {
                drop(pin);
                return Err(match e {
                    StoreError::Replayed => replayed(),
                    e => ApiError::internal("recording the bundle", &e),
                });
            }
        };
        let response = UploadResponse {
            bundle_id: sha,
            name,
            tasks,
            created: submission.created,
            jobs: submission
                .jobs
                .into_iter()
                .map(|(id, task)| JobRef { id, task })
                .collect(),
        };
        Ok((response, submission.created))
    })
    .await?;
    if created {
        state.notify_queued().await;
    }
    tracing::info!(
        author = %authed.author.name,
        bundle = %response.bundle_id,
        tasks = response.tasks,
        created,
        "bundle uploaded"
    );
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(response))
}

/// Verifies an uploaded bundle and that the uploader signed it; its manifest's name, tasks and
/// group. Verified from a read-only map of the synced temporary file: never read into memory
/// whole (see `BlobWriter::map_written`); only the module is inflated, to validate it.
fn verify_upload(
    writer: &mut BlobWriter,
    limits: &VerifyLimits,
    uploader: &Authed,
) -> Result<(String, u32, String), ApiError> {
    let mapped = writer
        .map_written()
        .map_err(|e| ApiError::internal("reading back the upload", &e))?;
    let refused = |e: rjs_signer::VerifyError| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-bundle",
            format!(
                "the bundle fails verification ({}): {}",
                e.rule(),
                rjs_cmd::chain(&e)
            ),
        )
    };
    let signed = rjs_signer::verify_signed(&mapped, limits).map_err(refused)?;
    let signer = signed.signer();
    if signer.public_key != uploader.auth.key {
        return Err(ApiError::forbidden(
            "signer-mismatch",
            format!(
                "the bundle is signed by {}, not by the uploader {}",
                signer.fingerprint, uploader.author.fingerprint
            ),
        ));
    }
    // The module, inflated and validated as a node would before compiling it: a module no
    // node could run is refused now, not after every node has tried it.
    signed.module().map_err(refused)?;
    let manifest = signed.manifest();
    Ok((
        manifest.name.clone(),
        manifest.tasks,
        manifest.group.clone(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsQuery {
    bundle: Option<String>,
    submission: Option<i64>,
    state: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

/// A job state named in a query (`queued`, `leased`, `done`, `failed`).
pub fn state_param(s: Option<&str>) -> Result<Option<JobState>, ApiError> {
    s.filter(|s| !s.is_empty())
        .map(|s| {
            JobState::parse(s).ok_or_else(|| {
                ApiError::bad_request("state must be queued, leased, done or failed")
            })
        })
        .transpose()
}

/// A page size named in a query: 1 to `max`, `max` if not given.
pub fn limit_param(limit: Option<u32>, max: u32) -> Result<u32, ApiError> {
    match limit {
        None => Ok(max),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(format!("limit must be 1 to {max}"))),
    }
}

/// Reads one page more than asked, to know whether there is a next one: the page and the
/// next page's cursor.
pub fn paged<T>(
    mut rows: Vec<T>,
    limit: u32,
    cursor: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        let next = rows.last().map(cursor);
        (rows, next)
    } else {
        (rows, None)
    }
}

/// `GET /api/v1/jobs[?bundle=<id>][&submission=<id>][&state=<s>][&after=<cursor>][&limit=<n>]`:
/// one page of the author's jobs (at most [`MAX_JOBS_PAGE`]), newest submission first, tasks
/// in order; `next` is the cursor of the following page.
pub async fn jobs(call: AuthorCall<'_>, payload: &mut web::Payload) -> Reply {
    let (req, state, authed) = (call.req, call.state, call.caller);
    let q: JobsQuery = query(req)?;
    if let Some(b) = &q.bundle {
        validate::bundle_id(b)?;
    }
    let job_state = state_param(q.state.as_deref())?;
    let after = q
        .after
        .as_deref()
        .map(|c| JobCursor::decode(c).ok_or_else(|| ApiError::bad_request("after: not a cursor")))
        .transpose()?;
    let limit = limit_param(q.limit, MAX_JOBS_PAGE)?;
    finish_small(payload, state, &authed).await?;
    let author_id = authed.author.id;
    let rows = state
        .store_call("listing jobs", move |s| {
            s.jobs_page(
                author_id,
                &JobFilter {
                    bundle: q.bundle.as_deref(),
                    submission: q.submission,
                    state: job_state,
                    after,
                    changed_after: None,
                    limit: limit + 1,
                },
            )
        })
        .await?;
    let (jobs, next) = paged(rows, limit, |j| {
        JobCursor {
            submission_id: j.submission_id,
            task: j.task,
        }
        .encode()
    });
    Ok(HttpResponse::Ok().json(JobList { jobs, next }))
}

/// `GET /api/v1/jobs/{id}`: one job, with why it waits.
pub async fn job(call: AuthorCall<'_>, payload: &mut web::Payload) -> Reply {
    let (req, state, authed) = (call.req, call.state, call.caller);
    let job_id = validate::job_id(req.match_info().get("id"))?;
    finish_small(payload, state, &authed).await?;
    let author_id = authed.author.id;
    let job = state
        .store_call("reading a job", move |s| s.job(author_id, job_id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job {job_id} of yours")))?;
    Ok(HttpResponse::Ok().json(job))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmissionsQuery {
    bundle: Option<String>,
    state: Option<String>,
    name: Option<String>,
    before: Option<i64>,
    limit: Option<u32>,
}

/// `GET /api/v1/submissions[?bundle=<id>][&state=<s>][&name=<text>][&before=<id>][&limit=<n>]`:
/// the author's submissions summed up (counts by state and outcome), newest first.
pub async fn submissions(call: AuthorCall<'_>, payload: &mut web::Payload) -> Reply {
    let (req, state, authed) = (call.req, call.state, call.caller);
    let q: SubmissionsQuery = query(req)?;
    if let Some(b) = &q.bundle {
        validate::bundle_id(b)?;
    }
    if let Some(n) = &q.name {
        validate::name_filter(n)?;
    }
    let job_state = state_param(q.state.as_deref())?;
    let limit = limit_param(q.limit, MAX_SUBMISSIONS_PAGE)?;
    finish_small(payload, state, &authed).await?;
    let author_id = authed.author.id;
    let rows = state
        .store_call("listing submissions", move |s| {
            s.submissions(
                author_id,
                &SubmissionFilter {
                    bundle: q.bundle.as_deref(),
                    state: job_state,
                    name: q.name.as_deref().filter(|n| !n.is_empty()),
                    before: q.before,
                    limit: limit + 1,
                },
            )
        })
        .await?;
    let (submissions, next) = paged(rows, limit, |s| s.id.to_string());
    Ok(HttpResponse::Ok().json(SubmissionList { submissions, next }))
}

/// `GET /api/v1/submissions/{id}`: one submission summed up.
pub async fn submission(call: AuthorCall<'_>, payload: &mut web::Payload) -> Reply {
    let (req, state, authed) = (call.req, call.state, call.caller);
    let id = validate::job_id(req.match_info().get("id"))?;
    finish_small(payload, state, &authed).await?;
    let author_id = authed.author.id;
    let found = state
        .store_call("reading a submission", move |s| s.submission(author_id, id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no submission {id} of yours")))?;
    Ok(HttpResponse::Ok().json(found))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesQuery {
    submission: Option<i64>,
    since: Option<u64>,
    limit: Option<u32>,
}

/// `GET /api/v1/changes[?since=<seq>][&submission=<id>][&limit=<n>]`: the change feed polled.
/// Without `since`: no changes, and the number to start from.
pub async fn changes(call: AuthorCall<'_>, payload: &mut web::Payload) -> Reply {
    let (req, state, authed) = (call.req, call.state, call.caller);
    let q: ChangesQuery = query(req)?;
    let limit = limit_param(q.limit, MAX_CHANGES_PAGE)?;
    finish_small(payload, state, &authed).await?;
    let author_id = authed.author.id;
    let Some(since) = q.since else {
        let next = state
            .store_call("reading the change sequence", |s| s.change_seq())
            .await?;
        return Ok(HttpResponse::Ok().json(ChangeList {
            changes: Vec::new(),
            next,
            more: false,
        }));
    };
    let rows = state
        .store_call("reading changes", move |s| {
            s.changes(author_id, q.submission, since, limit)
        })
        .await?;
    let more = rows.len() == limit as usize;
    let next = rows.last().map_or(since, |(seq, _)| *seq);
    Ok(HttpResponse::Ok().json(ChangeList {
        changes: rows
            .into_iter()
            .map(|(seq, job)| JobChange { seq, job })
            .collect(),
        next,
        more,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    submission: Option<i64>,
    since: Option<u64>,
}

/// `GET /api/v1/events[?submission=<id>][&since=<seq>]`: the change feed, server-sent events
/// `job` (a [`JobChange`](rjs_wire::api::JobChange)) for the author's jobs that change after
/// `since` (or the `Last-Event-ID` header; by default from now on).
pub async fn events(call: AuthorCall<'_>, payload: &mut web::Payload) -> Reply {
    let (req, state, authed) = (call.req, call.state, call.caller);
    let q: EventsQuery = query(req)?;
    let last_event = validate::single_header(req.headers(), "last-event-id")?
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request("Last-Event-ID must be a number"))
        })
        .transpose()?;
    finish_small(payload, state, &authed).await?;
    let since = match q.since.or(last_event) {
        Some(s) => s,
        None => {
            state
                .store_call("reading the change sequence", |s| s.change_seq())
                .await?
        }
    };
    let author = authed.author.clone();
    let pass = state.changes.admit(author.id)?;
    let stream =
        state
            .changes
            .author_stream(pass, state.store.clone(), author, q.submission, since);
    Ok(super::changes::sse_response(stream))
}

/// How long a dashboard login token is valid.
pub const LOGIN_TOKEN_TTL: i64 = 60;

/// `POST /api/v1/dashboard/login`: a one-time dashboard login for the requesting author.
pub async fn dashboard_login(call: AuthorCall<'_>, payload: &mut web::Payload) -> Reply {
    let (state, authed) = (call.state, call.caller);
    finish_small(payload, state, &authed).await?;
    let author_id = authed.author.id;
    let token = crate::dashboard::secret::Secret::new();
    let hash = token.hash();
    let now = now();
    let expires_at = now + LOGIN_TOKEN_TTL;
    state
        .store_call("recording a login token", move |s| {
            s.add_login_token(&hash, Some(author_id), expires_at, now)
        })
        .await?;
    tracing::info!(author = %authed.author.name, "dashboard login issued");
    Ok(HttpResponse::Ok().json(DashboardLogin {
        path: crate::dashboard::login_path(&token),
        expires_at,
        fingerprint: authed.author.fingerprint,
    }))
}

/// `GET /api/v1/jobs/{id}/answer`.
pub async fn answer(call: AuthorCall<'_>, payload: &mut web::Payload) -> Reply {
    let (req, state, authed) = (call.req, call.state, call.caller);
    let job_id = validate::job_id(req.match_info().get("id"))?;
    finish_small(payload, state, &authed).await?;
    let store = state.store.clone();
    let blobs = state.blobs.clone();
    let author_id = authed.author.id;
    let body = blocking(move || {
        let answer = store.answer_of(author_id, job_id).map_err(|e| match e {
            StoreError::NotFound(_) => {
                ApiError::not_found(format!("job {job_id} has no answer you may see"))
            }
            e => ApiError::internal("looking up the answer", &e),
        })?;
        match answer.inline {
            Some(bytes) => Ok(AnswerBody::Inline(bytes)),
            None => blobs
                .open_blob(&answer.sha256)
                .map(AnswerBody::Blob)
                .map_err(|e| ApiError::internal("opening the answer", &e)),
        }
    })
    .await?;
    let mut response = HttpResponse::Ok();
    response.content_type("application/zip").insert_header((
        actix_web::http::header::CONTENT_DISPOSITION,
        format!("attachment; filename=\"job-{job_id}-answer.zip\""),
    ));
    Ok(match body {
        AnswerBody::Inline(bytes) => response.body(bytes),
        AnswerBody::Blob(blob) => response.body(blob_body(blob)),
    })
}

/// Where an answer's bytes come from.
enum AnswerBody {
    /// Kept in the metadata store.
    Inline(Vec<u8>),
    /// A blob, from the folder or the object store.
    Blob(BlobRead),
}

/// `GET /api/v1/whoami`.
pub async fn whoami(call: AuthorCall<'_>, payload: &mut web::Payload) -> Reply {
    let (state, authed) = (call.state, call.caller);
    finish_small(payload, state, &authed).await?;
    Ok(HttpResponse::Ok().json(WhoAmI {
        name: authed.author.name,
        fingerprint: authed.author.fingerprint,
    }))
}
