//! The dashboard's pages: an author's submissions, one submission (manifest, tasks, live), its
//! gallery, one answer; the administrator's view of the grid.

use std::time::{Duration, UNIX_EPOCH};

use actix_web::web;
use askama::Template;
use rjs_wire::api::{JobState, JobView, SubmissionSummary, query_value};
use serde::Deserialize;

use super::answers::{
    MAX_GALLERY_TASKS, Source, answer_bytes, id_param, own_job, own_submission, png_outputs,
    stitch_refusal, verify,
};
use super::session::Viewer;
use super::{Nav, Reply, render};
use crate::server::author::{paged, state_param};
use crate::server::body::blocking;
use crate::server::error::ApiError;
use crate::server::route::Call;
use crate::store::{JobCursor, JobFilter, SubmissionFilter, now};

/// Submissions per page.
pub const SUBMISSIONS_PAGE: u32 = 50;
/// Tasks per page of a submission.
pub const TASKS_PAGE: u32 = 100;
/// Bytes of stdout and stderr shown on an answer page.
pub const MAX_SHOWN_OUTPUT: usize = 64 * 1024;
/// A lookup that has not called for this long is "not lately" (seconds).
pub const LOOKUP_QUIET: i64 = 60;

/// A Unix time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn time(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    let s = humantime::format_rfc3339_seconds(t).to_string();
    format!("{} UTC", s.trim_end_matches('Z').replace('T', " "))
}

/// A duration in seconds as `1h 02m`, `3m 07s`, `12s`.
pub fn duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Bytes as `812 B`, `4.2 KiB`, `3.0 MiB`.
pub fn size(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// A state as the dashboard names it.
pub fn state_label(s: JobState) -> &'static str {
    match s {
        JobState::Queued => "queued",
        JobState::Leased => "running",
        JobState::Done => "done",
        JobState::Failed => "failed",
    }
}

/// How long a submission has run: until its last answer when finished, until now otherwise.
pub fn elapsed(s: &SubmissionSummary, now: i64) -> String {
    let end = if s.is_finished() {
        s.last_answer_at.unwrap_or(s.changed_at)
    } else {
        now
    };
    duration(end - s.created_at)
}

/// Widths of the progress bar's segments (out of 1000).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Bar {
    pub done_w: u64,
    pub failed_x: u64,
    pub failed_w: u64,
    pub leased_x: u64,
    pub leased_w: u64,
}

impl Bar {
    pub fn of(s: &SubmissionSummary) -> Bar {
        let total = u64::from(s.tasks.max(1));
        let w = |n: u64| n.min(total) * 1000 / total;
        let (done_w, failed_w, leased_w) =
            (w(s.states.done), w(s.states.failed), w(s.states.leased));
        Bar {
            done_w,
            failed_x: done_w,
            failed_w,
            leased_x: done_w + failed_w,
            leased_w,
        }
    }
}

/// Why a job is not running, in words, as far as this server knows: the lookup's own reason
/// when it gave one; otherwise what the server sees.
pub fn why_waiting(j: &JobView, last_lookup_call: Option<i64>, now: i64) -> Option<String> {
    match j.state {
        JobState::Done | JobState::Failed => None,
        JobState::Leased => Some(match (&j.leased_by, &j.waiting) {
            (Some(l), Some(w)) => format!("Held by lookup {l}, which says: {w}"),
            (Some(l), None) => format!("Leased by lookup {l}: on its way to a node or running."),
            (None, _) => "Leased by a lookup server.".to_owned(),
        }),
        JobState::Queued => Some(match (&j.waiting, last_lookup_call) {
            (_, None) => {
                "No lookup server has asked for work since this web server started.".to_owned()
            }
            (_, Some(t)) if now - t > LOOKUP_QUIET => format!(
                "No lookup server has asked for work for {}.",
                duration(now - t)
            ),
            (Some(w), _) => format!("Given back by its lookup: {w}"),
            (None, _) => "Queued: the next lookup server that asks for work takes it.".to_owned(),
        }),
    }
}

// ------------------------------------------------------------------ submissions

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    name: String,
    before: Option<i64>,
}

struct Row {
    s: SubmissionSummary,
    bar: Bar,
    bundle_prefix: String,
    created: String,
    created_iso: String,
    elapsed: String,
}

#[derive(Template)]
#[template(path = "submissions.html")]
struct SubmissionsPage {
    nav: Nav,
    state: String,
    name: String,
    filtered: bool,
    rows: Vec<Row>,
    next: Option<String>,
}

fn query<T: serde::de::DeserializeOwned>(req: &actix_web::HttpRequest) -> Result<T, ApiError> {
    web::Query::<T>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| ApiError::bad_request(format!("query: {}", rjs_cmd::report::Chain(&e))))
}

/// `GET /dashboard/submissions[?state=][&name=][&before=]`.
pub async fn submissions(call: Call<'_, Viewer>, _: &mut web::Payload) -> Reply {
    let author = call.caller.author_id()?;
    let q: ListQuery = query(call.req)?;
    let state = state_param(Some(&q.state))?;
    crate::server::validate::name_filter(&q.name)?;
    let (name, before) = (q.name.clone(), q.before);
    let rows = call
        .state
        .store_call("listing submissions", move |s| {
            s.submissions(
                author,
                &SubmissionFilter {
                    bundle: None,
                    state,
                    name: Some(name.as_str()).filter(|n| !n.is_empty()),
                    before,
                    limit: SUBMISSIONS_PAGE + 1,
                },
            )
        })
        .await?;
    let (rows, next) = paged(rows, SUBMISSIONS_PAGE, |s| s.id.to_string());
    let now = now();
    render(&SubmissionsPage {
        nav: Nav::of(&call.caller),
        filtered: !q.state.is_empty() || !q.name.is_empty(),
        next: next.map(|n| {
            format!(
                "/dashboard/submissions?state={}&name={}&before={n}",
                query_value(&q.state),
                query_value(&q.name)
            )
        }),
        state: q.state,
        name: q.name,
        rows: rows
            .into_iter()
            .map(|s| Row {
                bar: Bar::of(&s),
                bundle_prefix: s.bundle_id.chars().take(12).collect(),
                created: time(s.created_at),
                created_iso: humantime::format_rfc3339_seconds(
                    UNIX_EPOCH + Duration::from_secs(u64::try_from(s.created_at).unwrap_or(0)),
                )
                .to_string(),
                elapsed: elapsed(&s, now),
                s,
            })
            .collect(),
    })
}

// ------------------------------------------------------------------ one submission

/// What the page shows of the bundle's manifest.
pub struct ManifestView {
    pub signer: String,
    pub group: String,
    pub tasks: u32,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub limits: String,
}

/// A task row as the page (and its live updates) show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskRow {
    pub id: i64,
    pub task: u32,
    pub state: &'static str,
    pub state_label: &'static str,
    pub attempts: u32,
    pub node: String,
    pub outcome: String,
    pub answer: String,
    /// Wall and CPU time, from the answer (empty until there is one).
    pub time: String,
    pub updated: String,
    pub why: String,
}

impl TaskRow {
    pub fn of(
        j: &JobView,
        times: Option<(u64, u64)>,
        last_lookup_call: Option<i64>,
        now: i64,
    ) -> TaskRow {
        TaskRow {
            id: j.id,
            task: j.task,
            state: j.state.as_str(),
            state_label: state_label(j.state),
            attempts: j.attempts,
            node: j.node.clone().unwrap_or_default(),
            outcome: j.outcome.clone().unwrap_or_default(),
            answer: j.answer_bytes.map(size).unwrap_or_default(),
            time: times
                .map(|(wall, cpu)| format!("{wall} ms wall · {cpu} ms CPU"))
                .unwrap_or_default(),
            updated: time(j.updated_at),
            why: why_waiting(j, last_lookup_call, now)
                .or_else(|| j.reason.clone().filter(|_| j.state == JobState::Failed))
                .unwrap_or_default(),
        }
    }
}

#[derive(Template)]
#[template(path = "submission.html")]
struct SubmissionPage {
    nav: Nav,
    s: SubmissionSummary,
    bar: Bar,
    elapsed: String,
    manifest: Result<ManifestView, String>,
    state: String,
    jobs: Vec<TaskRow>,
    next: Option<String>,
    first_page: Option<String>,
}

#[derive(Deserialize)]
struct TasksQuery {
    #[serde(default)]
    state: String,
    after: Option<u32>,
}

fn manifest_of(src: &Source, bundle_id: &str) -> Result<ManifestView, String> {
    let bytes = src
        .blobs
        .read(
            bundle_id,
            rjs_signer::VerifyLimits::default().max_bundle_bytes,
        )
        .map_err(|e| rjs_cmd::chain(&e))?;
    let signed = rjs_signer::verify_signed(&bytes, &rjs_signer::VerifyLimits::default())
        .map_err(|e| rjs_cmd::chain(&e))?;
    let m = signed.manifest();
    let l = &m.limits;
    Ok(ManifestView {
        signer: signed.signer().fingerprint.to_string(),
        group: m.group.clone(),
        tasks: m.tasks,
        args: m.args.clone(),
        env: m.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        limits: format!(
            "time {} ms · memory {} · output {} · stdout {}",
            l.time_ms,
            size(l.memory_bytes),
            size(l.output_bytes),
            size(l.stdout_bytes)
        ),
    })
}

/// `GET /dashboard/submissions/{id}[?state=][&after=<task>]`.
pub async fn submission(call: Call<'_, Viewer>, _: &mut web::Payload) -> Reply {
    let id = id_param(call.req, "id", "submission")?;
    let s = own_submission(call.state, &call.caller, id).await?;
    let author = call.caller.author_id()?;
    let q: TasksQuery = query(call.req)?;
    let state = state_param(Some(&q.state))?;
    let after = q.after.map(|task| JobCursor {
        submission_id: id,
        task,
    });
    let src = Source::of(call.state);
    let bundle = s.bundle_id.clone();
    let (rows, manifest, times, seq) = blocking(move || {
        // Read before the rows: the live stream sends what changes after it.
        let seq = src
            .store
            .change_seq()
            .map_err(|e| ApiError::internal("reading the change sequence", &e))?;
        let rows = src
            .store
            .jobs_page(
                author,
                &JobFilter {
                    submission: Some(id),
                    state,
                    after,
                    limit: TASKS_PAGE + 1,
                    ..JobFilter::default()
                },
            )
            .map_err(|e| ApiError::internal("listing tasks", &e))?;
        let times: Vec<Option<(u64, u64)>> = rows
            .iter()
            .take(TASKS_PAGE as usize)
            .map(|j| {
                (j.state == JobState::Done)
                    .then(|| super::answers::times(&src, author, j.id))
                    .flatten()
            })
            .collect();
        Ok((rows, manifest_of(&src, &bundle), times, seq))
    })
    .await?;
    let (rows, next) = paged(rows, TASKS_PAGE, |j| j.task.to_string());
    let now = now();
    let seen = call.state.activity.any_lookup_seen();
    let base = format!(
        "/dashboard/submissions/{id}?state={}",
        query_value(&q.state)
    );
    let (from, to) = (
        rows.first().map_or(0, |j| j.task),
        rows.last().map_or(0, |j| j.task),
    );
    let mut nav = Nav::of(&call.caller);
    nav.live = Some(format!(
        "/dashboard/submissions/{id}/events?from={from}&to={to}&since={seq}"
    ));
    render(&SubmissionPage {
        nav,
        bar: Bar::of(&s),
        elapsed: elapsed(&s, now),
        manifest,
        jobs: rows
            .iter()
            .zip(times)
            .map(|(j, t)| TaskRow::of(j, t, seen, now))
            .collect(),
        next: next.map(|n| format!("{base}&after={n}")),
        first_page: q.after.map(|_| base.clone()),
        state: q.state,
        s,
    })
}

// ------------------------------------------------------------------ gallery

struct GalleryImage {
    job: i64,
    task: u32,
    index: usize,
    name: String,
}

#[derive(Template)]
#[template(path = "gallery.html")]
struct GalleryPage {
    nav: Nav,
    s: SubmissionSummary,
    stitchable: bool,
    stitch_note: String,
    images: Vec<GalleryImage>,
    truncated: bool,
}

/// `GET /dashboard/submissions/{id}/gallery`.
pub async fn gallery(call: Call<'_, Viewer>, _: &mut web::Payload) -> Reply {
    let id = id_param(call.req, "id", "submission")?;
    let s = own_submission(call.state, &call.caller, id).await?;
    let author = call.caller.author_id()?;
    let src = Source::of(call.state);
    let (images, truncated) = blocking(move || {
        let jobs = src
            .store
            .jobs_page(
                author,
                &JobFilter {
                    submission: Some(id),
                    state: Some(JobState::Done),
                    limit: MAX_GALLERY_TASKS + 1,
                    ..JobFilter::default()
                },
            )
            .map_err(|e| ApiError::internal("listing tasks", &e))?;
        let truncated = jobs.len() > MAX_GALLERY_TASKS as usize;
        let mut images = Vec::new();
        for j in jobs.iter().take(MAX_GALLERY_TASKS as usize) {
            let Some(bytes) = answer_bytes(&src, author, j.id)? else {
                continue;
            };
            let Ok(answer) = verify(&src, &bytes) else {
                continue;
            };
            for (index, name, _) in png_outputs(&answer) {
                images.push(GalleryImage {
                    job: j.id,
                    task: j.task,
                    index,
                    name: name.to_owned(),
                });
            }
        }
        Ok((images, truncated))
    })
    .await?;
    let note = stitch_refusal(&s);
    render(&GalleryPage {
        nav: Nav::of(&call.caller),
        stitchable: note.is_none() && !images.is_empty(),
        stitch_note: note.unwrap_or_else(|| "No task wrote a PNG image.".to_owned()),
        images,
        truncated,
        s,
    })
}

// ------------------------------------------------------------------ one answer

struct FileView {
    index: usize,
    name: String,
    size: String,
    png: bool,
}

struct AnswerView {
    ending: String,
    node_id: String,
    node_mflops: u64,
    fingerprint: String,
    wall_ms: u64,
    cpu_ms: u64,
    size: String,
    files: Vec<FileView>,
    stdout: String,
    stdout_note: String,
    stderr: String,
    stderr_note: String,
    result_json: String,
}

#[derive(Template)]
#[template(path = "answer.html")]
struct AnswerPage {
    nav: Nav,
    j: JobView,
    state_label: &'static str,
    why: Option<String>,
    answer: Option<Result<AnswerView, String>>,
}

/// Text of an output stream as shown: at most [`MAX_SHOWN_OUTPUT`] bytes, invalid UTF-8
/// replaced (the template escapes it); and a note of what was cut.
fn shown(bytes: &[u8]) -> (String, String) {
    let cut = bytes.len() > MAX_SHOWN_OUTPUT;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_SHOWN_OUTPUT)]).into_owned();
    let note = if cut {
        format!(
            "first {} of {}",
            size(MAX_SHOWN_OUTPUT as u64),
            size(bytes.len() as u64)
        )
    } else {
        size(bytes.len() as u64)
    };
    (text, note)
}

/// `GET /dashboard/jobs/{id}`: one task and its answer.
pub async fn answer(call: Call<'_, Viewer>, _: &mut web::Payload) -> Reply {
    let id = id_param(call.req, "id", "task")?;
    let j = own_job(call.state, &call.caller, id).await?;
    let author = call.caller.author_id()?;
    let src = Source::of(call.state);
    let answer = blocking(move || {
        let Some(bytes) = answer_bytes(&src, author, id)? else {
            return Ok(None);
        };
        Ok(Some(match verify(&src, &bytes) {
            Err(e) => Err(rjs_cmd::chain(&e)),
            Ok(a) => {
                let r = a.result();
                let (stdout, stdout_note) = shown(a.stdout());
                let (stderr, stderr_note) = shown(a.stderr());
                let pretty = serde_json::from_slice::<serde_json::Value>(a.result_bytes())
                    .and_then(|v| serde_json::to_string_pretty(&v))
                    .unwrap_or_else(|_| String::from_utf8_lossy(a.result_bytes()).into_owned());
                Ok(AnswerView {
                    ending: r.summary(),
                    node_id: r.node_id.clone(),
                    node_mflops: r.node_mflops,
                    fingerprint: a.fingerprint().to_string(),
                    wall_ms: r.wall_ms,
                    cpu_ms: r.cpu_ms,
                    size: size(bytes.len() as u64),
                    files: a
                        .out_files()
                        .iter()
                        .enumerate()
                        .map(|(index, (name, data))| FileView {
                            index,
                            name: name.clone(),
                            size: size(data.len() as u64),
                            png: super::answers::preview_png(data).is_some(),
                        })
                        .collect(),
                    stdout,
                    stdout_note,
                    stderr,
                    stderr_note,
                    result_json: pretty,
                })
            }
        }))
    })
    .await?;
    let why = why_waiting(&j, call.state.activity.any_lookup_seen(), now());
    render(&AnswerPage {
        nav: Nav::of(&call.caller),
        state_label: state_label(j.state),
        why,
        answer,
        j,
    })
}

// ------------------------------------------------------------------ administrator

struct LookupRow {
    name: String,
    last_contact: String,
    held: u64,
    relayed: u64,
    revoked: bool,
}

/// One minute's bar of the throughput chart (viewBox 300 × 64).
struct Minute {
    label: String,
    n: u64,
    x: u64,
    y: u64,
    h: u64,
}

#[derive(Template)]
#[template(path = "admin.html")]
struct AdminPage {
    nav: Nav,
    lookups: Vec<LookupRow>,
    queue: Vec<(String, &'static str, u64)>,
    throughput: Vec<Minute>,
    last_minute: u64,
    total: u64,
    peak: u64,
    authors: Vec<crate::store::views::AuthorActivity>,
}

/// `GET /dashboard/admin`: the grid (administrator only; anyone else: not found).
pub async fn admin(call: Call<'_, Viewer>, _: &mut web::Payload) -> Reply {
    if !call.caller.is_admin() {
        return Err(ApiError::not_found("no such page"));
    }
    let o = call
        .state
        .store_call("reading the grid's overview", |s| s.overview())
        .await?;
    let now = now();
    let activity = &call.state.activity;
    let minutes = activity.throughput(now);
    let peak = minutes.iter().map(|m| m.1).max().unwrap_or(0);
    render(&AdminPage {
        nav: Nav::of(&call.caller),
        lookups: o
            .lookups
            .into_iter()
            .map(|l| LookupRow {
                last_contact: activity.last_seen(l.id).map_or_else(
                    || "not since this server started".to_owned(),
                    |t| format!("{} ago", duration(now - t)),
                ),
                name: l.name,
                held: l.held,
                relayed: l.relayed,
                revoked: l.revoked,
            })
            .collect(),
        queue: o
            .queue
            .into_iter()
            .map(|(g, s, n)| (g, state_label(s), n))
            .collect(),
        last_minute: minutes.last().map_or(0, |m| m.1),
        total: minutes.iter().map(|m| m.1).sum(),
        peak,
        throughput: minutes
            .iter()
            .enumerate()
            .map(|(i, &(t, n))| {
                let h = if n == 0 {
                    0
                } else {
                    (n * 60 / peak.max(1)).max(2)
                };
                Minute {
                    label: time(t),
                    n,
                    x: i as u64 * 20,
                    y: 64 - h,
                    h,
                }
            })
            .collect(),
        authors: o.authors,
    })
}
