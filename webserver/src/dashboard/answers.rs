//! Answers as the dashboard serves them. An answer is the untrusted output of untrusted code:
//! it is verified (the node's signature, the format's every rule) before anything in it is
//! shown; a file is shown inline only if it is a PNG that decodes within [`MAX_PREVIEW_PIXELS`]
//! and is then re-encoded by us (never passed through); every other file, and every download,
//! goes out as `attachment` with `X-Content-Type-Options: nosniff`.

use std::io::{Seek as _, Write as _};
use std::sync::Arc;

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use rjs_signer::answer::{AnswerLimits, VerifiedAnswer, verify_answer};
use rjs_signer::image::{Image, is_png, stitch};
use rjs_wire::api::{JobState, JobView, SubmissionSummary};
use serde::Deserialize;

use super::Reply;
use super::session::Viewer;
use crate::server::AppState;
use crate::server::body::{blocking, file_body};
use crate::server::error::ApiError;
use crate::server::route::Call;
use crate::server::validate;
use crate::store::blobs::BlobStore;
use crate::store::{JobCursor, JobFilter, Store, StoreError};

/// Largest image shown inline, pixels (decoded before it is shown).
pub const MAX_PREVIEW_PIXELS: u64 = 16 * 1024 * 1024;
/// Largest stitched image, pixels.
pub const MAX_STITCHED_PIXELS: u64 = 64 * 1024 * 1024;
/// Most tasks a stitched image or a gallery takes.
pub const MAX_GALLERY_TASKS: u32 = 256;

/// The same answer for "not yours" and "does not exist".
pub fn no_such(what: &str) -> ApiError {
    ApiError::not_found(format!("no such {what}"))
}

/// A path segment that must be a positive id.
pub fn id_param(
    call_req: &actix_web::HttpRequest,
    name: &str,
    what: &str,
) -> Result<i64, ApiError> {
    validate::job_id(call_req.match_info().get(name)).map_err(|_| no_such(what))
}

/// The viewer's submission `id`, or not found.
pub async fn own_submission(
    state: &AppState,
    viewer: &Viewer,
    id: i64,
) -> Result<SubmissionSummary, ApiError> {
    let author = viewer.author_id()?;
    state
        .store_call("reading a submission", move |s| s.submission(author, id))
        .await?
        .ok_or_else(|| no_such("submission"))
}

/// The viewer's job `id`, or not found.
pub async fn own_job(state: &AppState, viewer: &Viewer, id: i64) -> Result<JobView, ApiError> {
    let author = viewer.author_id()?;
    state
        .store_call("reading a job", move |s| s.job(author, id))
        .await?
        .ok_or_else(|| no_such("task"))
}

/// Where answers are read from, for work on the blocking pool.
#[derive(Clone)]
pub struct Source {
    pub store: Arc<dyn Store>,
    pub blobs: BlobStore,
    pub max_answer: u64,
    pub times: Arc<TimesCache>,
}

impl Source {
    pub fn of(state: &AppState) -> Source {
        Source {
            store: state.store.clone(),
            blobs: state.blobs.clone(),
            max_answer: state.limits.max_answer,
            times: state.answer_times.clone(),
        }
    }
}

/// The archive of one of the author's answers (None if the job has none yet).
pub fn answer_bytes(
    src: &Source,
    author_id: i64,
    job_id: i64,
) -> Result<Option<Vec<u8>>, ApiError> {
    let answer = match src.store.answer_of(author_id, job_id) {
        Ok(a) => a,
        Err(StoreError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(ApiError::internal("looking up an answer", &e)),
    };
    if let Some(bytes) = answer.inline {
        return Ok(Some(bytes));
    }
    src.blobs
        .read(&answer.sha256, src.max_answer)
        .map(Some)
        .map_err(|e| ApiError::internal("reading an answer", &e))
}

/// Largest `result.json` read for a task row's times, bytes.
const MAX_RESULT_JSON: u64 = 64 * 1024;

/// The times of answers already read (a job's answer never changes), one per server: every
/// dashboard showing a row reads its answer once between them.
#[derive(Debug, Default)]
pub struct TimesCache(std::sync::Mutex<std::collections::HashMap<i64, (u64, u64)>>);

/// Entries kept in a [`TimesCache`] (about 24 bytes each); it starts afresh when full.
const TIMES_KEPT: usize = 200_000;

/// A task's wall and CPU time (ms) from its answer's `result.json`, read without verifying
/// the archive (the row only shows them; the answer page verifies everything it shows).
pub fn times(src: &Source, author_id: i64, job_id: i64) -> Option<(u64, u64)> {
    let cache = || src.times.0.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(t) = cache().get(&job_id) {
        return Some(*t);
    }
    let t = read_times(src, author_id, job_id)?;
    let mut c = cache();
    if c.len() >= TIMES_KEPT {
        c.clear();
    }
    c.insert(job_id, t);
    Some(t)
}

fn read_times(src: &Source, author_id: i64, job_id: i64) -> Option<(u64, u64)> {
    use std::io::Read as _;
    let bytes = answer_bytes(src, author_id, job_id).ok()??;
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bytes[..])).ok()?;
    let entry = zip.by_name("result.json").ok()?;
    let mut json = Vec::new();
    entry.take(MAX_RESULT_JSON).read_to_end(&mut json).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&json).ok()?;
    Some((v["wall_ms"].as_u64()?, v["cpu_ms"].as_u64()?))
}

/// Verifies an answer archive with this server's limits.
pub fn verify(
    src: &Source,
    bytes: &[u8],
) -> Result<VerifiedAnswer, rjs_signer::answer::AnswerError> {
    verify_answer(
        bytes,
        &AnswerLimits {
            max_answer_bytes: src.max_answer,
            ..AnswerLimits::default()
        },
    )
}

/// A file name made safe for `Content-Disposition`: its last path segment, characters other
/// than `[A-Za-z0-9._-]` replaced.
pub fn download_name(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    let safe: String = base
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.is_empty() || safe.starts_with('.') {
        format!("file{safe}")
    } else {
        safe
    }
}

fn attachment(bytes: Vec<u8>, name: &str, kind: &str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(kind)
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{}\"", download_name(name)),
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(bytes)
}

/// The decoded and re-encoded PNG of `bytes`, if it is a PNG within the preview bound.
pub fn preview_png(bytes: &[u8]) -> Option<Vec<u8>> {
    if !is_png(bytes) {
        return None;
    }
    Image::decode_png(bytes, MAX_PREVIEW_PIXELS)
        .ok()?
        .encode_png()
        .ok()
}

#[derive(Deserialize)]
struct FileQuery {
    #[serde(default)]
    download: Option<String>,
}

/// `GET /dashboard/jobs/{id}/files/{index}[?download=1]`: one output file.
pub async fn file(call: Call<'_, Viewer>, _: &mut web::Payload) -> Reply {
    let job_id = id_param(call.req, "id", "file")?;
    let index: usize = call
        .req
        .match_info()
        .get("index")
        .filter(|s| s.len() <= 6 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| no_such("file"))?;
    let download = web::Query::<FileQuery>::from_query(call.req.query_string())
        .map(|q| q.into_inner().download.is_some())
        .unwrap_or(true);
    own_job(call.state, &call.caller, job_id).await?;
    let author = call.caller.author_id()?;
    let state = Source::of(call.state);
    let (data, name, png) = blocking(move || {
        let bytes = answer_bytes(&state, author, job_id)?.ok_or_else(|| no_such("file"))?;
        let answer = verify(&state, &bytes).map_err(|_| no_such("file"))?;
        let (name, data) = answer
            .out_files()
            .get(index)
            .ok_or_else(|| no_such("file"))?;
        let png = if download { None } else { preview_png(data) };
        Ok((data.clone(), name.clone(), png))
    })
    .await?;
    Ok(match png {
        Some(png) => HttpResponse::Ok()
            .content_type("image/png")
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .insert_header((
                header::CONTENT_DISPOSITION,
                format!("inline; filename=\"{}\"", download_name(&name)),
            ))
            .body(png),
        None => attachment(data, &name, "application/octet-stream"),
    })
}

/// `GET /dashboard/jobs/{id}/answer.zip`: the answer archive as the node signed it.
pub async fn archive(call: Call<'_, Viewer>, _: &mut web::Payload) -> Reply {
    let job_id = id_param(call.req, "id", "answer")?;
    own_job(call.state, &call.caller, job_id).await?;
    let author = call.caller.author_id()?;
    let state = Source::of(call.state);
    let bytes =
        blocking(move || answer_bytes(&state, author, job_id)?.ok_or_else(|| no_such("answer")))
            .await?;
    Ok(attachment(
        bytes,
        &format!("job-{job_id}-answer.zip"),
        "application/zip",
    ))
}

/// Every done job of a submission, in task order (page by page).
fn done_jobs(
    state: &Source,
    author: i64,
    submission: i64,
    mut each: impl FnMut(&JobView) -> Result<bool, ApiError>,
) -> Result<(), ApiError> {
    let mut after: Option<JobCursor> = None;
    loop {
        let page = state
            .store
            .jobs_page(
                author,
                &JobFilter {
                    submission: Some(submission),
                    state: Some(JobState::Done),
                    after,
                    limit: 500,
                    ..JobFilter::default()
                },
            )
            .map_err(|e| ApiError::internal("listing jobs", &e))?;
        for j in &page {
            if !each(j)? {
                return Ok(());
            }
        }
        match page.last() {
            Some(j) if page.len() == 500 => {
                after = Some(JobCursor {
                    submission_id: j.submission_id,
                    task: j.task,
                })
            }
            _ => return Ok(()),
        }
    }
}

/// `GET /dashboard/submissions/{id}/answers.zip`: every answer of the submission, one entry
/// per task (`task-<n>.zip`, the signed archives as they are), built in a temporary file.
pub async fn all_answers(call: Call<'_, Viewer>, _: &mut web::Payload) -> Reply {
    let id = id_param(call.req, "id", "submission")?;
    let s = own_submission(call.state, &call.caller, id).await?;
    let author = call.caller.author_id()?;
    let state = Source::of(call.state);
    let width = s.tasks.saturating_sub(1).to_string().len();
    let (file, size) = blocking(move || {
        let fail = |e: &(dyn std::error::Error + 'static)| {
            ApiError::internal_msg("building the zip", &rjs_cmd::chain(e))
        };
        let tmp = tempfile_in(&state)?;
        let mut zip = zip::ZipWriter::new(tmp);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(true);
        done_jobs(&state, author, id, |j| {
            let Some(bytes) = answer_bytes(&state, author, j.id)? else {
                return Ok(true);
            };
            zip.start_file(format!("task-{:0width$}.zip", j.task), options)
                .map_err(|e| fail(&e))?;
            zip.write_all(&bytes).map_err(|e| fail(&e))?;
            Ok(true)
        })?;
        let mut file = zip.finish().map_err(|e| fail(&e))?;
        let size = file.stream_position().map_err(|e| fail(&e))?;
        file.rewind().map_err(|e| fail(&e))?;
        Ok((file, size))
    })
    .await?;
    Ok(HttpResponse::Ok()
        .content_type("application/zip")
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"{}-answers.zip\"",
                download_name(&s.name)
            ),
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(file_body(file, size)))
}

/// An anonymous temporary file beside the blobs (same disk, removed when closed).
fn tempfile_in(src: &Source) -> Result<std::fs::File, ApiError> {
    tempfile::tempfile_in(src.blobs.tmp_dir())
        .map_err(|e| ApiError::internal("creating a temporary file", &e))
}

/// The PNG outputs of one answer: (index among its files, name, bytes).
pub fn png_outputs(answer: &VerifiedAnswer) -> Vec<(usize, &str, &[u8])> {
    answer
        .out_files()
        .iter()
        .enumerate()
        .filter(|(_, (_, data))| is_png(data))
        .map(|(i, (name, data))| (i, name.as_str(), data.as_slice()))
        .collect()
}

/// Why a submission's images cannot be stitched, or None if they can: at most
/// [`MAX_GALLERY_TASKS`] tasks, all done.
pub fn stitch_refusal(s: &SubmissionSummary) -> Option<String> {
    if s.tasks > MAX_GALLERY_TASKS {
        return Some(format!(
            "A stitched image is made for at most {MAX_GALLERY_TASKS} tasks; this submission has {}.",
            s.tasks
        ));
    }
    if s.states.done < u64::from(s.tasks) {
        return Some(format!(
            "The stitched image appears when every task is done ({} of {} are).",
            s.states.done, s.tasks
        ));
    }
    None
}

/// `GET /dashboard/submissions/{id}/stitched.png`: one image from every task's PNG (one band
/// per task, equal widths), each decoded and checked first.
pub async fn stitched(call: Call<'_, Viewer>, _: &mut web::Payload) -> Reply {
    let id = id_param(call.req, "id", "submission")?;
    let s = own_submission(call.state, &call.caller, id).await?;
    if let Some(why) = stitch_refusal(&s) {
        return Err(ApiError::not_found(why));
    }
    let author = call.caller.author_id()?;
    let state = Source::of(call.state);
    let png = blocking(move || {
        let mut tiles = Vec::new();
        let mut budget = MAX_STITCHED_PIXELS;
        let mut problem: Option<String> = None;
        done_jobs(&state, author, id, |j| {
            let bytes = answer_bytes(&state, author, j.id)?.unwrap_or_default();
            let answer = match verify(&state, &bytes) {
                Ok(a) => a,
                Err(e) => {
                    problem = Some(format!("task {}: the answer does not verify: {e}", j.task));
                    return Ok(false);
                }
            };
            let pngs = png_outputs(&answer);
            let [(_, _, data)] = pngs[..] else {
                problem = Some(format!(
                    "task {} has {} PNG files, not one",
                    j.task,
                    pngs.len()
                ));
                return Ok(false);
            };
            match Image::decode_png(data, budget.min(MAX_PREVIEW_PIXELS)) {
                Ok(img) => {
                    budget = budget.saturating_sub(u64::from(img.width) * u64::from(img.height));
                    tiles.push(img);
                    Ok(true)
                }
                Err(e) => {
                    problem = Some(format!("task {}: {}", j.task, rjs_cmd::chain(&e)));
                    Ok(false)
                }
            }
        })?;
        if let Some(p) = problem {
            return Err(ApiError::not_found(format!("no stitched image: {p}")));
        }
        let whole = stitch(&tiles, MAX_STITCHED_PIXELS).map_err(|e| {
            ApiError::not_found(format!("no stitched image: {}", rjs_cmd::chain(&e)))
        })?;
        whole
            .encode_png()
            .map_err(|e| ApiError::internal("encoding the stitched image", &e))
    })
    .await?;
    Ok(HttpResponse::Ok()
        .content_type("image/png")
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(png))
}
