//! The lookup API (`/lookup/v1/…`): mutual TLS. The client certificate was verified against
//! the CA during the handshake; here its SHA-256 must be that of an enrolled, unrevoked lookup
//! server, checked on every request.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use rjs_wire::api::{
    AnswerResponse, FailureRequest, FailureResponse, JobState, LeaseRequest, LeaseResponse,
    MAX_BATCH, ReleaseRequest, ReleaseResponse, RenewRequest, RenewResponse,
};

use super::AppState;
use super::body::{
    blocking, check_declared_length, drained, file_body, read_limited, stream_to_blob,
};
use super::error::ApiError;
use super::validate;
use crate::store::{AnswerOutcome, LookupServer, NewAnswer, StoreError, now};

/// Largest JSON body of a lookup request.
pub const MAX_JSON_BODY: usize = 256 * 1024;
/// Lease durations allowed, seconds.
pub const LEASE_SECS: std::ops::RangeInclusive<u32> = 5..=3600;
/// Most groups in one lease request.
pub const MAX_GROUPS: usize = 64;

/// The SHA-256 (hex) of the client certificate a connection presented, set by
/// [`super::on_connect`].
#[derive(Debug, Clone)]
pub struct PeerCert(pub String);

/// The lookup server this request comes from.
pub async fn identify(req: &HttpRequest, state: &AppState) -> Result<LookupServer, ApiError> {
    let Some(PeerCert(sha)) = req.conn_data::<PeerCert>().cloned() else {
        return Err(ApiError::unauthorized(
            "no-client-certificate",
            "the lookup API needs the client certificate issued by `rjs-webserver lookup add`",
        ));
    };
    let store = state.store.clone();
    blocking(move || {
        if let Some(l) = store
            .lookup_by_cert(&sha)
            .map_err(ApiError::store("looking up the lookup server"))?
        {
            return Ok(l);
        }
        let revoked = store
            .list_lookups()
            .map_err(ApiError::store("listing lookup servers"))?
            .into_iter()
            .find(|l| l.cert_sha256 == sha);
        Err(match revoked {
            Some(l) => ApiError::forbidden(
                "revoked-lookup",
                format!("the lookup server {:?} was revoked", l.name),
            ),
            None => ApiError::forbidden(
                "not-a-lookup",
                "this client certificate was not issued to an enrolled lookup server",
            ),
        })
    })
    .await
}

async fn json_body<T: serde::de::DeserializeOwned>(
    payload: &mut web::Payload,
) -> Result<T, ApiError> {
    let body = read_limited(payload, "the request body", MAX_JSON_BODY).await?;
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("request JSON: {e}")))
}

fn check_lease_secs(secs: u32) -> Result<(), ApiError> {
    if LEASE_SECS.contains(&secs) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "lease_secs must be {}..={}",
            LEASE_SECS.start(),
            LEASE_SECS.end()
        )))
    }
}

fn check_batch(ids: &[i64]) -> Result<(), ApiError> {
    if ids.len() > MAX_BATCH as usize {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_BATCH} job ids per request"
        )));
    }
    Ok(())
}

/// `POST /lookup/v1/lease`.
pub async fn lease(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    drained(payload, async |payload| {
        let lookup = identify(&req, &state).await?;
        let r: LeaseRequest = json_body(payload).await?;
        if !(1..=MAX_BATCH).contains(&r.max) {
            return Err(ApiError::bad_request(format!(
                "max must be 1..={MAX_BATCH}"
            )));
        }
        check_lease_secs(r.lease_secs)?;
        if r.groups.len() > MAX_GROUPS {
            return Err(ApiError::bad_request(format!(
                "at most {MAX_GROUPS} groups"
            )));
        }
        if let Some(g) = r
            .groups
            .iter()
            .find(|g| !rjs_signer::manifest::valid_group(g))
        {
            return Err(ApiError::bad_request(format!(
                "invalid group {:?} (/segment/segment…, segments of a-z 0-9 _ -)",
                g.chars().take(140).collect::<String>()
            )));
        }
        let store = state.store.clone();
        let max_attempts = state.limits.max_attempts;
        let leases = blocking(move || {
            let now = now();
            let until = now.saturating_add(i64::from(r.lease_secs));
            store
                .lease(lookup.id, r.max, &r.groups, until, now, max_attempts)
                .map_err(|e| match e {
                    StoreError::Revoked(_) => ApiError::forbidden(
                        "revoked-lookup",
                        format!("the lookup server {:?} was revoked", lookup.name),
                    ),
                    e => ApiError::internal("leasing jobs", &e),
                })
        })
        .await?;
        Ok(HttpResponse::Ok().json(LeaseResponse { leases }))
    })
    .await
}

/// `POST /lookup/v1/renew`.
pub async fn renew(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    drained(payload, async |payload| {
        let lookup = identify(&req, &state).await?;
        let r: RenewRequest = json_body(payload).await?;
        check_batch(&r.job_ids)?;
        check_lease_secs(r.lease_secs)?;
        let now = now();
        let until = now.saturating_add(i64::from(r.lease_secs));
        let (renewed, lost) = state
            .store_call("renewing leases", move |s| {
                s.renew(lookup.id, &r.job_ids, until, now)
            })
            .await?;
        Ok(HttpResponse::Ok().json(RenewResponse {
            renewed,
            lease_until: until,
            lost,
        }))
    })
    .await
}

/// `POST /lookup/v1/release`.
pub async fn release(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    drained(payload, async |payload| {
        let lookup = identify(&req, &state).await?;
        let r: ReleaseRequest = json_body(payload).await?;
        check_batch(&r.job_ids)?;
        let released = state
            .store_call("releasing leases", move |s| {
                s.release(lookup.id, &r.job_ids, now())
            })
            .await?;
        if !released.is_empty() {
            state.notify_queued().await;
        }
        Ok(HttpResponse::Ok().json(ReleaseResponse { released }))
    })
    .await
}

/// `POST /lookup/v1/jobs/{id}/failure`.
pub async fn failure(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    drained(payload, async |payload| {
        let lookup = identify(&req, &state).await?;
        let job_id = validate::job_id(req.match_info().get("id"))?;
        let r: FailureRequest = json_body(payload).await?;
        if !validate::reason(&r.reason) {
            return Err(ApiError::bad_request(format!(
                "reason must be 1 to {} bytes without control characters",
                rjs_wire::api::MAX_REASON
            )));
        }
        let store = state.store.clone();
        let max_attempts = state.limits.max_attempts;
        let (job_state, attempts) = blocking(move || {
            store
                .fail(lookup.id, job_id, &r.reason, max_attempts, now())
                .map_err(|e| match e {
                    StoreError::NotFound(_) => ApiError::not_found(format!("no job {job_id}")),
                    StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "not-leased", m),
                    e => ApiError::internal("recording a failure", &e),
                })
        })
        .await?;
        if job_state == JobState::Queued {
            state.notify_queued().await;
        }
        Ok(HttpResponse::Ok().json(FailureResponse {
            state: job_state,
            attempts,
        }))
    })
    .await
}

/// `PUT /lookup/v1/jobs/{id}/answer`.
pub async fn answer(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    drained(payload, async |payload| {
        let lookup = identify(&req, &state).await?;
        let job_id = validate::job_id(req.match_info().get("id"))?;
        let (outcome, node) = validate::answer_headers(req.headers())?;
        let max = state.limits.max_answer;
        check_declared_length(&req, "the answer", max)?;
        let blobs = state.blobs.clone();
        let writer = blocking(move || {
            blobs
                .writer(max)
                .map_err(|e| ApiError::internal("starting an upload", &e))
        })
        .await?;
        let writer = stream_to_blob(payload, writer, "the answer", max).await?;
        let store = state.store.clone();
        let blobs = state.blobs.clone();
        let lookup_name = lookup.name.clone();
        let outcome_stored = blocking(move || {
            let sha = writer.sha256_hex();
            let existed = blobs
                .exists(&sha)
                .map_err(|e| ApiError::internal("storing the answer", &e))?;
            let (sha, size) = writer
                .commit()
                .map_err(|e| ApiError::internal("storing the answer", &e))?;
            let recorded = store.record_answer(&NewAnswer {
                lookup_id: lookup.id,
                job_id,
                sha256: &sha,
                size,
                outcome: &outcome,
                node: &node,
                now: now(),
            });
            match recorded {
                Ok(o) => Ok(o),
                Err(StoreError::NotFound(_)) => {
                    // A refused request leaves nothing: remove the blob if this request made it.
                    if !existed && let Ok(path) = blobs.path_of(&sha) {
                        let _ = std::fs::remove_file(path);
                    }
                    Err(ApiError::not_found(format!("no job {job_id}")))
                }
                Err(e) => Err(ApiError::internal("recording the answer", &e)),
            }
        })
        .await?;
        tracing::info!(lookup = %lookup_name, job = job_id, outcome = ?outcome_stored, "answer received");
        Ok(match outcome_stored {
            AnswerOutcome::Stored => HttpResponse::Created().json(AnswerResponse {
                status: "stored".into(),
            }),
            AnswerOutcome::Duplicate => HttpResponse::Ok().json(AnswerResponse {
                status: "duplicate".into(),
            }),
        })
    })
    .await
}

/// `GET /lookup/v1/bundles/{bundle_id}`.
pub async fn bundle(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    drained(payload, async |payload| {
        identify(&req, &state).await?;
        let id =
            validate::bundle_id(req.match_info().get("bundle_id").unwrap_or_default())?.to_owned();
        read_limited(payload, "the request body", MAX_JSON_BODY).await?;
        let etag = format!("\"{id}\"");
        let not_modified =
            match validate::single_header(req.headers(), header::IF_NONE_MATCH.as_str()) {
                Ok(Some(v)) => validate::if_none_match(v, &id),
                Ok(None) => false,
                Err(e) => return Err(e),
            };
        let store = state.store.clone();
        let blobs = state.blobs.clone();
        let id2 = id.clone();
        let file = blocking(move || {
            if !store
                .bundle_exists(&id2)
                .map_err(ApiError::store("looking up the bundle"))?
            {
                return Err(ApiError::not_found(format!("no bundle {id2}")));
            }
            if not_modified {
                return Ok(None);
            }
            blobs
                .open_blob(&id2)
                .map(Some)
                .map_err(|e| ApiError::internal("opening the bundle", &e))
        })
        .await?;
        let etag_value = HeaderValue::from_str(&etag)
            .map_err(|e| ApiError::internal("building the ETag", &e))?;
        Ok(match file {
            None => HttpResponse::NotModified()
                .insert_header((header::ETAG, etag_value))
                .finish(),
            Some((file, size)) => HttpResponse::Ok()
                .content_type("application/octet-stream")
                .insert_header((header::ETAG, etag_value))
                .insert_header((
                    header::CACHE_CONTROL,
                    "private, max-age=31536000, immutable",
                ))
                .body(file_body(file, size)),
        })
    })
    .await
}

/// Whether the lookup with this certificate is still enrolled and not revoked (a store
/// failure counts as yes: the stream is not cut because of it).
fn still_enrolled(
    state: &AppState,
    sha: String,
) -> impl FnMut() -> futures_util::future::LocalBoxFuture<'static, bool> + 'static {
    let store = state.store.clone();
    move || {
        let store = store.clone();
        let sha = sha.clone();
        Box::pin(async move {
            !matches!(
                web::block(move || store.lookup_by_cert(&sha)).await,
                Ok(Ok(None))
            )
        })
    }
}

/// `GET /lookup/v1/events`.
pub async fn events(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    identify(&req, &state).await?;
    let sha = req
        .conn_data::<PeerCert>()
        .map(|p| p.0.clone())
        .unwrap_or_default();
    let queued = state
        .store_call("counting queued jobs", |s| s.queued_count())
        .await?;
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(state.events.stream(queued, still_enrolled(&state, sha))))
}
