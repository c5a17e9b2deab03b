//! The lookup API (`/lookup/v1/…`): mutual TLS. The client certificate was verified against
//! the CA during the handshake; here its SHA-256 must be that of an enrolled, unrevoked lookup
//! server, checked on every request.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use std::collections::HashSet;
use std::sync::Arc;

use rjs_wire::api::{
    ANSWERS_CONTENT_TYPE, AnswerBatchHeader, AnswerBatchResponse, AnswerBatchResult,
    AnswerBatchStatus, AnswerFrameError, AnswerRecordDecoder, AnswerRecordEvent, AnswerResponse,
    FailureRequest, FailureResponse, HeldRequest, JobState, LeaseRequest, LeaseResponse, MAX_BATCH,
    MIN_ANSWER_BATCH_BODY, ReleaseRequest, ReleaseResponse, RenewRequest, RenewResponse, Waiting,
    WaitingRequest, WaitingResponse,
};

use super::AppState;
use super::body::{
    Received, WRITE_BATCH, blob_body, blocking, check_declared_length, discard_body, next_chunk,
    read_limited, receive_answer, sha256_hex, start_blob, write_to_blob,
};
use super::commit::{Ready, Recorded};
use super::error::ApiError;
use super::pins::{BlobPin, BlobPins};
use super::route::{Call, Caller, Reply};
use super::validate;
use crate::store::blobs::BlobWriter;
use crate::store::{
    AnswerOutcome, AnswerTarget, INLINE_ANSWER_MAX, LookupServer, Store, StoreError, now,
};

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

/// A lookup API request: from an enrolled, unrevoked lookup server.
pub type LookupCall<'a> = Call<'a, LookupServer>;

impl Caller for LookupServer {
    async fn identify(req: &HttpRequest, state: &AppState) -> Result<Self, ApiError> {
        let lookup = identify(req, state).await?;
        state.activity.lookup_seen(lookup.id, now());
        Ok(lookup)
    }
}

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
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("request JSON: {}", rjs_cmd::report::Chain(&e))))
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

/// A lease or held request's `max`: 1 ..= [`MAX_BATCH`].
fn check_max(max: u32) -> Result<(), ApiError> {
    if (1..=MAX_BATCH).contains(&max) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "max must be 1..={MAX_BATCH}"
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
pub async fn lease(call: LookupCall<'_>, payload: &mut web::Payload) -> Reply {
    let (state, lookup) = (call.state, call.caller);
    let r: LeaseRequest = json_body(payload).await?;
    check_max(r.max)?;
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
    let (lookup_id, max_attempts) = (lookup.id, state.limits.max_attempts);
    let leases = state
        .store_call_or(
            move |s| {
                let now = now();
                let until = now.saturating_add(i64::from(r.lease_secs));
                s.lease(lookup_id, r.max, &r.groups, until, now, max_attempts)
            },
            |e| match e {
                StoreError::Revoked(_) => ApiError::forbidden(
                    "revoked-lookup",
                    format!("the lookup server {:?} was revoked", lookup.name),
                ),
                e => ApiError::internal("leasing jobs", &e),
            },
        )
        .await?;
    Ok(HttpResponse::Ok().json(LeaseResponse { leases }))
}

/// `POST /lookup/v1/held`.
pub async fn held(call: LookupCall<'_>, payload: &mut web::Payload) -> Reply {
    let (state, lookup) = (call.state, call.caller);
    let r: HeldRequest = json_body(payload).await?;
    check_max(r.max)?;
    check_lease_secs(r.lease_secs)?;
    let leases = state
        .store_call("reading the jobs a lookup holds", move |s| {
            let now = now();
            let until = now.saturating_add(i64::from(r.lease_secs));
            s.held(lookup.id, r.after.unwrap_or(0), r.max, until, now)
        })
        .await?;
    Ok(HttpResponse::Ok().json(LeaseResponse { leases }))
}

/// `POST /lookup/v1/renew`.
pub async fn renew(call: LookupCall<'_>, payload: &mut web::Payload) -> Reply {
    let (state, lookup) = (call.state, call.caller);
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
}

/// `POST /lookup/v1/release`.
pub async fn release(call: LookupCall<'_>, payload: &mut web::Payload) -> Reply {
    let (state, lookup) = (call.state, call.caller);
    let r: ReleaseRequest = json_body(payload).await?;
    check_batch(&r.job_ids)?;
    let waiting = check_waiting(&r.waiting, Some(&r.job_ids))?;
    let released = state
        .store_call("releasing leases", move |s| {
            s.release(lookup.id, &r.job_ids, &waiting, now())
        })
        .await?;
    if !released.is_empty() {
        state.notify_queued().await;
    }
    Ok(HttpResponse::Ok().json(ReleaseResponse { released }))
}

/// Checks the reasons a lookup sends for waiting jobs: at most one per job, each a valid
/// reason, for jobs in `within` if given; as (job id, reason) pairs.
fn check_waiting(
    waiting: &[Waiting],
    within: Option<&[i64]>,
) -> Result<Vec<(i64, String)>, ApiError> {
    if waiting.len() > MAX_BATCH as usize {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_BATCH} waiting jobs per request"
        )));
    }
    let mut seen = HashSet::with_capacity(waiting.len());
    waiting
        .iter()
        .map(|w| {
            if !validate::reason(&w.reason) {
                return Err(ApiError::bad_request(format!(
                    "job {}: reason must be 1 to {} bytes without control characters",
                    w.job_id,
                    rjs_wire::api::MAX_REASON
                )));
            }
            if !seen.insert(w.job_id) {
                return Err(ApiError::bad_request(format!(
                    "job {} is named twice in waiting",
                    w.job_id
                )));
            }
            if within.is_some_and(|ids| !ids.contains(&w.job_id)) {
                return Err(ApiError::bad_request(format!(
                    "job {} has a waiting reason but is not given back",
                    w.job_id
                )));
            }
            Ok((w.job_id, w.reason.clone()))
        })
        .collect()
}

/// `POST /lookup/v1/waiting`: why held jobs are parked.
pub async fn waiting(call: LookupCall<'_>, payload: &mut web::Payload) -> Reply {
    let (state, lookup) = (call.state, call.caller);
    let r: WaitingRequest = json_body(payload).await?;
    let waiting = check_waiting(&r.jobs, None)?;
    let updated = state
        .store_call("recording why jobs wait", move |s| {
            s.set_waiting(lookup.id, &waiting, now())
        })
        .await?;
    Ok(HttpResponse::Ok().json(WaitingResponse { updated }))
}

/// `POST /lookup/v1/jobs/{id}/failure`.
pub async fn failure(call: LookupCall<'_>, payload: &mut web::Payload) -> Reply {
    let (req, state, lookup) = (call.req, call.state, call.caller);
    let job_id = validate::job_id(req.match_info().get("id"))?;
    let r: FailureRequest = json_body(payload).await?;
    if !validate::reason(&r.reason) {
        return Err(ApiError::bad_request(format!(
            "reason must be 1 to {} bytes without control characters",
            rjs_wire::api::MAX_REASON
        )));
    }
    let max_attempts = state.limits.max_attempts;
    let (job_state, attempts) = state
        .store_call_or(
            move |s| s.fail(lookup.id, job_id, &r.reason, max_attempts, now()),
            |e| match e {
                StoreError::NotFound(_) => ApiError::not_found(format!("no job {job_id}")),
                StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "not-leased", m),
                e => ApiError::internal("recording a failure", &e),
            },
        )
        .await?;
    if job_state == JobState::Queued {
        state.notify_queued().await;
    }
    Ok(HttpResponse::Ok().json(FailureResponse {
        state: job_state,
        attempts,
    }))
}

/// An answer's archive, received and ready to record.
enum Archive {
    /// Kept in the metadata store (at most [`INLINE_ANSWER_MAX`] bytes).
    Inline(Vec<u8>),
    /// In an uncommitted blob upload.
    Blob(Box<BlobWriter>),
    /// Not kept: the answer's fate was known before its bytes arrived (unknown job, not
    /// this lookup's, already answered), so they were discarded as they came.
    Settled(Recorded),
}

impl From<Received> for Archive {
    fn from(r: Received) -> Self {
        match r {
            Received::Memory(b) => Archive::Inline(b),
            Received::Blob(w) => Archive::Blob(w),
        }
    }
}

/// What an answer for a job with this target is without recording anything; None when it
/// may be recorded.
fn settled(target: AnswerTarget) -> Option<Recorded> {
    match target {
        AnswerTarget::Missing => Some(None),
        AnswerTarget::NotLeased => Some(Some(AnswerOutcome::NotLeased)),
        AnswerTarget::Answered => Some(Some(AnswerOutcome::Duplicate)),
        AnswerTarget::Open => None,
    }
}

/// What an answer from `lookup_id` for `job_id` would be now ([`Store::answer_targets`]).
async fn answer_target(
    state: &AppState,
    lookup_id: i64,
    job_id: i64,
) -> Result<AnswerTarget, ApiError> {
    state
        .store_call("looking up the job", move |s| {
            s.answer_targets(lookup_id, &[job_id])
        })
        .await?
        .first()
        .copied()
        .ok_or_else(|| ApiError::internal_msg("looking up the job", "no result for the job"))
}

fn not_leased(job_id: i64) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "not-leased",
        format!(
            "job {job_id} is not leased by this lookup server (another one holds or held its \
             last lease, or it was never leased): its answer is not taken"
        ),
    )
}

/// One received answer: job, outcome, node, archive.
struct Incoming {
    job_id: i64,
    outcome: String,
    node: String,
    archive: Archive,
}

/// An answer after [`prepare`].
enum Prepared {
    /// To record; the pin of its blob if it has one (committed).
    Ready(Ready, Option<BlobPin>),
    /// Nothing to record: its result is known.
    Settled(Recorded),
}

/// Inline answers up to this many bytes in all are hashed on the request's own thread;
/// more, or any blob, on the blocking pool.
const HASH_INLINE: usize = 256 * 1024;

/// Makes answers ready to record: hashes inline archives; commits (fsyncs) the blobs of large
/// answers, only for jobs this lookup may still answer (a job that does not exist, is not
/// this lookup's, or already has an answer gets its result at once and no blob). Each
/// committed blob is pinned (see `pins`). If committing fails, the blobs committed before
/// are unpinned (the collector removes them once unreferenced and old).
fn prepare(
    store: &dyn Store,
    pins: &Arc<BlobPins>,
    lookup_id: i64,
    incoming: Vec<Incoming>,
) -> Result<Vec<Prepared>, ApiError> {
    let blob_jobs: Vec<i64> = incoming
        .iter()
        .filter(|a| matches!(a.archive, Archive::Blob(_)))
        .map(|a| a.job_id)
        .collect();
    let mut targets = if blob_jobs.is_empty() {
        Vec::new()
    } else {
        store
            .answer_targets(lookup_id, &blob_jobs)
            .map_err(ApiError::store("looking up jobs"))?
    }
    .into_iter();
    let mut out: Vec<Prepared> = Vec::with_capacity(incoming.len());
    let mut failed = None;
    for a in incoming {
        let (sha256, size, inline, pin) = match a.archive {
            Archive::Settled(r) => {
                out.push(Prepared::Settled(r));
                continue;
            }
            Archive::Inline(bytes) => (sha256_hex(&bytes), bytes.len() as u64, Some(bytes), None),
            Archive::Blob(writer) => {
                let Some(target) = targets.next() else {
                    failed = Some(ApiError::internal_msg(
                        "looking up jobs",
                        "fewer results than jobs",
                    ));
                    break;
                };
                if let Some(r) = settled(target) {
                    out.push(Prepared::Settled(r)); // the writer's temporary file goes with it
                    continue;
                }
                let pin = pins.pin(&writer.sha256_hex());
                match writer.commit() {
                    Ok((sha, size)) => (sha, size, None, Some(pin)),
                    Err(e) => {
                        failed = Some(ApiError::internal("storing the answer", &e));
                        drop(pin);
                        break;
                    }
                }
            }
        };
        out.push(Prepared::Ready(
            Ready {
                job_id: a.job_id,
                outcome: a.outcome,
                node: a.node,
                sha256,
                size,
                inline,
            },
            pin,
        ));
    }
    if let Some(e) = failed {
        // The blobs committed before are unpinned (dropped with `out`) and left to the
        // collector.
        return Err(e);
    }
    Ok(out)
}

/// Stores answers: [`prepare`], then records them through the group committer. One result
/// per answer, in order: the outcome, or None for an unknown job (nothing stored for it). A
/// blob committed for an answer that was not stored after all (a duplicate or a lost lease
/// that raced it, a failed transaction) is left to the collector (`store::blobs::gc`).
async fn store_answers(
    state: &AppState,
    lookup_id: i64,
    incoming: Vec<Incoming>,
) -> Result<Vec<Recorded>, ApiError> {
    // No blob, and the inline archives small enough in all.
    let small = incoming
        .iter()
        .try_fold(0usize, |sum, a| match &a.archive {
            Archive::Inline(b) => Some(sum.saturating_add(b.len())),
            Archive::Settled(_) => Some(sum),
            Archive::Blob(_) => None,
        })
        .is_some_and(|sum| sum <= HASH_INLINE);
    let prepared = if small {
        prepare(state.store.as_ref(), &state.pins, lookup_id, incoming)?
    } else {
        let (store, pins) = (state.store.clone(), state.pins.clone());
        blocking(move || prepare(store.as_ref(), &pins, lookup_id, incoming)).await?
    };
    let mut slots: Vec<Option<Recorded>> = Vec::with_capacity(prepared.len());
    let mut answers: Vec<Ready> = Vec::new();
    let mut pins: Vec<Option<BlobPin>> = Vec::new();
    for p in prepared {
        match p {
            Prepared::Ready(r, pin) => {
                slots.push(None);
                answers.push(r);
                pins.push(pin);
            }
            Prepared::Settled(r) => slots.push(Some(r)),
        }
    }
    let recorded = state.answers.record(lookup_id, answers).await;
    if let Ok(results) = &recorded {
        let stored = results
            .iter()
            .filter(|r| **r == Some(AnswerOutcome::Stored))
            .count();
        state.activity.answers_stored(stored as u64, now());
    }
    // The answers are recorded (their blobs referenced) or refused (their blobs left to the
    // collector): unpin.
    drop(pins);
    let mut recorded = recorded?.into_iter();
    slots
        .into_iter()
        .map(|slot| match slot {
            Some(r) => Ok(r),
            None => recorded.next().ok_or_else(|| {
                ApiError::internal_msg("recording answers", "fewer results than answers")
            }),
        })
        .collect()
}

/// `PUT /lookup/v1/jobs/{id}/answer`.
pub async fn answer(call: LookupCall<'_>, payload: &mut web::Payload) -> Reply {
    let (req, state, lookup) = (call.req, call.state, call.caller);
    let job_id = validate::job_id(req.match_info().get("id"))?;
    let (outcome, node) = validate::answer_headers(req.headers())?;
    let max = state.limits.max_answer;
    let declared = check_declared_length(req, "the answer", max)?;
    // A body that may go to the blob store: first make sure it is wanted, so that nothing
    // (not even a temporary file) is written for an answer that will not be recorded.
    if !matches!(declared, Some(d) if d <= INLINE_ANSWER_MAX) {
        match answer_target(state, lookup.id, job_id).await? {
            AnswerTarget::Missing => {
                return Err(ApiError::not_found(format!("no job {job_id}")));
            }
            AnswerTarget::NotLeased => return Err(not_leased(job_id)),
            AnswerTarget::Answered => {
                discard_body(payload, "the answer", max).await?;
                tracing::debug!(lookup = %lookup.name, job = job_id,
                                "duplicate answer discarded unread");
                return Ok(HttpResponse::Ok().json(AnswerResponse {
                    status: "duplicate".into(),
                }));
            }
            AnswerTarget::Open => {}
        }
    }
    let received = receive_answer(
        payload,
        &state.blobs,
        declared,
        "the answer",
        max,
        INLINE_ANSWER_MAX,
    )
    .await?;
    let incoming = Incoming {
        job_id,
        outcome,
        node,
        archive: received.into(),
    };
    let result = store_answers(state, lookup.id, vec![incoming]).await?;
    let stored = match result.first() {
        Some(Some(o)) => *o,
        _ => return Err(ApiError::not_found(format!("no job {job_id}"))),
    };
    tracing::debug!(lookup = %lookup.name, job = job_id, outcome = ?stored, "answer received");
    match stored {
        AnswerOutcome::Stored => Ok(HttpResponse::Created().json(AnswerResponse {
            status: "stored".into(),
        })),
        AnswerOutcome::Duplicate => Ok(HttpResponse::Ok().json(AnswerResponse {
            status: "duplicate".into(),
        })),
        AnswerOutcome::NotLeased => Err(not_leased(job_id)),
    }
}

fn frame_error(e: AnswerFrameError) -> ApiError {
    match e {
        AnswerFrameError::AnswerTooLarge { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!("answer batch: {}", rjs_cmd::report::Chain(&e)),
        ),
        e => ApiError::bad_request(format!("answer batch: {}", rjs_cmd::report::Chain(&e))),
    }
}

/// A record of a batch being received.
struct Receiving {
    header: AnswerBatchHeader,
    archive: ReceivingArchive,
}

enum ReceivingArchive {
    Memory(Vec<u8>),
    /// The upload (None only while a write is in progress) and bytes not yet written to it.
    Blob(Option<Box<BlobWriter>>, Vec<u8>),
    /// A large answer known not to be recorded: its bytes are dropped as they arrive.
    Discard(Recorded),
}

/// Checks a record's header as the single-answer route checks its path and headers.
fn check_record(h: &AnswerBatchHeader, record: usize) -> Result<(), ApiError> {
    if h.job_id <= 0 {
        return Err(ApiError::bad_request(format!(
            "answer batch: record {record}: job_id must be a positive integer"
        )));
    }
    if !validate::outcome(&h.outcome) {
        return Err(ApiError::bad_request(format!(
            "answer batch: record {record}: outcome must be one printable line of 1 to {} bytes",
            rjs_wire::api::MAX_OUTCOME
        )));
    }
    if !validate::node_id(&h.node) {
        return Err(ApiError::bad_request(format!(
            "answer batch: record {record}: node must match [A-Za-z0-9._-]{{1,{}}}",
            rjs_wire::api::MAX_NODE_ID
        )));
    }
    Ok(())
}

/// Reads a whole answer batch: small answers into memory, large ones into blob uploads (not
/// committed), unless their job is already known not to take them, or already has a record
/// earlier in this batch (then their bytes are dropped as they arrive). Refuses the batch
/// (nothing kept) at the first framing, header or size problem.
async fn receive_batch(
    payload: &mut web::Payload,
    state: &AppState,
    lookup_id: i64,
    max_answer: u64,
    limit: u64,
) -> Result<Vec<Receiving>, ApiError> {
    let blobs = &state.blobs;
    const WHAT: &str = "the answer batch";
    let mut decoder = AnswerRecordDecoder::new(max_answer);
    let mut records: Vec<Receiving> = Vec::new();
    let mut seen: HashSet<i64> = HashSet::new();
    let mut total: u64 = 0;
    while let Some(chunk) = next_chunk(payload).await? {
        total = total.saturating_add(chunk.len() as u64);
        if total > limit {
            return Err(ApiError::too_large(WHAT, limit));
        }
        let mut input = &chunk[..];
        while let Some(event) = decoder.next(&mut input).map_err(frame_error)? {
            match event {
                AnswerRecordEvent::Header(header) => {
                    check_record(&header, records.len())?;
                    let archive = if !seen.insert(header.job_id) {
                        // The job's first record in this batch wins; a later one is answered
                        // `duplicate` on its own, never by refusing the batch (its other
                        // records are unrelated, valid answers).
                        ReceivingArchive::Discard(Some(AnswerOutcome::Duplicate))
                    } else if header.size <= INLINE_ANSWER_MAX {
                        // Reserve no more than a little ahead of what has arrived.
                        ReceivingArchive::Memory(Vec::with_capacity(
                            header.size.min(64 * 1024) as usize
                        ))
                    } else if let Some(r) =
                        settled(answer_target(state, lookup_id, header.job_id).await?)
                    {
                        // Not wanted: no temporary file is written for it.
                        ReceivingArchive::Discard(r)
                    } else {
                        let writer = start_blob(blobs, header.size).await?;
                        ReceivingArchive::Blob(Some(Box::new(writer)), Vec::new())
                    };
                    records.push(Receiving { header, archive });
                }
                AnswerRecordEvent::Data(piece) => {
                    match records.last_mut().map(|r| &mut r.archive) {
                        Some(ReceivingArchive::Memory(bytes)) => bytes.extend_from_slice(piece),
                        Some(ReceivingArchive::Discard(_)) => {}
                        Some(ReceivingArchive::Blob(writer, pending)) => {
                            pending.extend_from_slice(piece);
                            if pending.len() >= WRITE_BATCH
                                && let Some(w) = writer.take()
                            {
                                *writer = Some(Box::new(write_to_blob(*w, pending, WHAT).await?));
                            }
                        }
                        None => {
                            return Err(ApiError::internal_msg(
                                "reading an answer batch",
                                "answer bytes before any record header",
                            ));
                        }
                    }
                }
                AnswerRecordEvent::End => {
                    if let Some(ReceivingArchive::Blob(writer, pending)) =
                        records.last_mut().map(|r| &mut r.archive)
                        && !pending.is_empty()
                        && let Some(w) = writer.take()
                    {
                        *writer = Some(Box::new(write_to_blob(*w, pending, WHAT).await?));
                    }
                }
            }
        }
    }
    decoder.finish().map_err(frame_error)?;
    Ok(records)
}

/// `POST /lookup/v1/answers`: several answers, stored in one transaction.
pub async fn answers(call: LookupCall<'_>, payload: &mut web::Payload) -> Reply {
    let (req, state, lookup) = (call.req, call.state, call.caller);
    let content_type = validate::single_header(req.headers(), header::CONTENT_TYPE.as_str())?;
    if content_type.map(str::trim) != Some(ANSWERS_CONTENT_TYPE) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            format!("an answer batch is sent as Content-Type: {ANSWERS_CONTENT_TYPE}"),
        ));
    }
    let max_answer = state.limits.max_answer;
    let limit = max_answer.max(MIN_ANSWER_BATCH_BODY);
    check_declared_length(req, "the answer batch", limit)?;
    let records = receive_batch(payload, state, lookup.id, max_answer, limit).await?;
    let mut incoming = Vec::with_capacity(records.len());
    for r in records {
        let archive = match r.archive {
            ReceivingArchive::Memory(bytes) => Archive::Inline(bytes),
            ReceivingArchive::Discard(r) => Archive::Settled(r),
            ReceivingArchive::Blob(Some(w), pending) if pending.is_empty() => Archive::Blob(w),
            ReceivingArchive::Blob(..) => {
                return Err(ApiError::internal_msg(
                    "reading an answer batch",
                    "an answer upload was left incomplete",
                ));
            }
        };
        incoming.push(Incoming {
            job_id: r.header.job_id,
            outcome: r.header.outcome,
            node: r.header.node,
            archive,
        });
    }
    let job_ids: Vec<i64> = incoming.iter().map(|a| a.job_id).collect();
    let outcomes = store_answers(state, lookup.id, incoming).await?;
    let results: Vec<AnswerBatchResult> = job_ids
        .into_iter()
        .zip(outcomes)
        .map(|(job_id, o)| AnswerBatchResult {
            job_id,
            status: match o {
                Some(AnswerOutcome::Stored) => AnswerBatchStatus::Stored,
                Some(AnswerOutcome::Duplicate) => AnswerBatchStatus::Duplicate,
                Some(AnswerOutcome::NotLeased) => AnswerBatchStatus::NotLeased,
                None => AnswerBatchStatus::NotFound,
            },
        })
        .collect();
    tracing::debug!(
        lookup = %lookup.name,
        answers = results.len(),
        stored = results.iter().filter(|r| r.status == AnswerBatchStatus::Stored).count(),
        "answer batch received"
    );
    Ok(HttpResponse::Ok().json(AnswerBatchResponse { results }))
}

/// `GET /lookup/v1/bundles/{bundle_id}`.
pub async fn bundle(call: LookupCall<'_>, payload: &mut web::Payload) -> Reply {
    let (req, state) = (call.req, call.state);
    let id = validate::bundle_id(req.match_info().get("bundle_id").unwrap_or_default())?.to_owned();
    read_limited(payload, "the request body", MAX_JSON_BODY).await?;
    let etag = format!("\"{id}\"");
    let not_modified = validate::single_header(req.headers(), header::IF_NONE_MATCH.as_str())?
        .is_some_and(|v| validate::if_none_match(v, &id));
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
    let etag_value =
        HeaderValue::from_str(&etag).map_err(|e| ApiError::internal("building the ETag", &e))?;
    Ok(match file {
        None => HttpResponse::NotModified()
            .insert_header((header::ETAG, etag_value))
            .finish(),
        Some(blob) => HttpResponse::Ok()
            .content_type("application/octet-stream")
            .insert_header((header::ETAG, etag_value))
            .insert_header((
                header::CACHE_CONTROL,
                "private, max-age=31536000, immutable",
            ))
            .body(blob_body(blob)),
    })
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
