//! `rjs-sign answers -o DIR`: download the author's answers not yet in DIR, optionally
//! waiting until every task is finished.
//!
//! Layout: `DIR/<bundle-name>-<first 12 hex digits of the bundle id>/task-<N>.zip`, written
//! atomically (temporary file + rename); a file already there with the answer's size is not
//! downloaded again. When a bundle was submitted more than once (`upload --resubmit`), only
//! the newest submission of each task counts.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar};
use rjs_wire::api::{JobState, JobView};
use serde_json::json;

use super::output::{self, clean, plural};
use super::settings::{self, ServerOpts};
use super::status::{Counts, select_jobs};
use rjs_signer::client::{AuthorClient, ClientError, ServerRefused, is_bundle_id};
use rjs_signer::manifest::valid_job_name;

/// Exit statuses.
pub const EXIT_ALL_DONE: u8 = 0;
pub const EXIT_SOME_FAILED: u8 = 1;
pub const EXIT_ERROR: u8 = 2;
pub const EXIT_UNFINISHED: u8 = 3;

/// How often `--wait` asks the server.
const POLL_INTERVAL: Duration = Duration::from_millis(1500);
/// `--wait` gives up after this many transport failures in a row (about half a minute).
const MAX_TRANSIENT_FAILURES: u32 = 20;
/// Largest answer downloaded when the server does not say its size.
const MAX_UNKNOWN_ANSWER: u64 = 1024 * 1024 * 1024;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Exit status: 0 every task is done and its answer is in DIR; \
1 some task failed (no answer), or with --require-exit-zero some answer ended otherwise than \
exit 0; 2 an error (including --timeout running out); \
3 some tasks are not finished yet (without --wait)."
)]
pub struct AnswersCommand {
    /// Folder for the answers: DIR/<bundle-name>-<bundle-id-prefix>/task-<N>.zip.
    #[arg(short = 'o', long = "out", value_name = "DIR")]
    pub out: PathBuf,
    /// Only these bundles (full id, or a unique prefix of at least 4 hex digits)
    /// [default: all your bundles].
    #[arg(long = "bundle", value_name = "ID")]
    pub bundles: Vec<String>,
    /// Poll until every task is done or failed, downloading answers as they come.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this long (seconds, or e.g. 10m) [default: no limit].
    #[arg(long, value_name = "SECS", requires = "wait", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// Exit with 1 if any answer ended otherwise than with exit 0 (another exit code, a
    /// trap, a limit), as if its task had failed: for scripts that need every program to
    /// have succeeded.
    #[arg(long)]
    pub require_exit_zero: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerOpts,
}

/// `90` (seconds) or a humantime duration (`10m`, `1h 30m`).
fn parse_timeout(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(s.trim())
            .map_err(|e| format!("{s:?} is not a number of seconds or a duration: {e}")),
    }
}

/// Where a job's answer goes: `DIR/<name>-<id prefix 12>/task-<N>.zip`. The server's values
/// are checked, so the path never leaves DIR.
pub fn answer_path(dir: &Path, job: &JobView) -> Result<PathBuf> {
    anyhow::ensure!(
        is_bundle_id(&job.bundle_id),
        "the server sent a malformed bundle id {:?} for job {}",
        clean(&job.bundle_id),
        job.id
    );
    let name = if valid_job_name(&job.name) {
        job.name.as_str()
    } else {
        "bundle"
    };
    Ok(dir
        .join(format!("{name}-{}", &job.bundle_id[..12]))
        .join(format!("task-{}.zip", job.task)))
}

/// The newest job of each (bundle, task): what counts when a bundle was resubmitted.
pub fn current(jobs: &[JobView]) -> Vec<JobView> {
    let mut newest: BTreeMap<(&str, u32), &JobView> = BTreeMap::new();
    for j in jobs {
        let e = newest.entry((j.bundle_id.as_str(), j.task)).or_insert(j);
        if j.id > e.id {
            *e = j;
        }
    }
    // Server order (newest submission first), tasks in order within a bundle.
    let order: Vec<&str> = {
        let mut seen = BTreeSet::new();
        jobs.iter()
            .map(|j| j.bundle_id.as_str())
            .filter(|b| seen.insert(*b))
            .collect()
    };
    let mut out: Vec<JobView> = newest.into_values().cloned().collect();
    out.sort_by_key(|j| {
        (
            order.iter().position(|b| *b == j.bundle_id).unwrap_or(0),
            j.task,
        )
    });
    out
}

/// Whether `path` already holds this job's answer.
fn present(path: &Path, job: &JobView) -> bool {
    match (std::fs::metadata(path), job.answer_bytes) {
        (Ok(m), Some(n)) => m.is_file() && m.len() == n,
        (Ok(m), None) => m.is_file() && m.len() > 0,
        (Err(_), _) => false,
    }
}

/// What became of one download.
enum Fetched {
    Downloaded(u64),
    AlreadyThere,
}

/// Downloads one answer to `path` atomically, checking its size.
fn fetch(api: &AuthorClient, job: &JobView, path: &Path, bar: &ProgressBar) -> Result<Fetched> {
    if present(path, job) {
        return Ok(Fetched::AlreadyThere);
    }
    let dir = path.parent().expect("answer paths have a folder");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let resp = api.answer(job.id, job.answer_bytes)?;
    let limit = job.answer_bytes.unwrap_or(MAX_UNKNOWN_ANSWER);
    let mut written = 0u64;
    rjs_signer::fsutil::write_atomic_with(path, 0o644, |f| {
        let mut reader = resp.take(limit + 1);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            written += n as u64;
            if written > limit {
                return Err(io::Error::other(format!(
                    "the answer is larger than the {limit} bytes announced"
                )));
            }
            f.write_all(&buf[..n])?;
            bar.inc(n as u64);
        }
        if let Some(n) = job.answer_bytes
            && written != n
        {
            return Err(io::Error::other(format!(
                "the answer ended after {written} of the {n} bytes announced"
            )));
        }
        Ok(())
    })
    .with_context(|| {
        format!(
            "downloading the answer of job {} (task {} of {})",
            job.id,
            job.task,
            clean(&job.name)
        )
    })?;
    Ok(Fetched::Downloaded(written))
}

/// Running totals and per-job results.
#[derive(Default)]
struct Tally {
    downloaded: usize,
    downloaded_bytes: u64,
    already: usize,
    /// Job id → file, for answers in DIR.
    files: BTreeMap<i64, PathBuf>,
    /// Job id → error, for answers that could not be had (not retried).
    errors: BTreeMap<i64, String>,
}

/// Downloads the answers of finished jobs that are not in DIR yet. Transport failures are
/// returned (to retry later) if `retry_transport`; other failures are recorded in the tally.
fn fetch_all(
    api: &AuthorClient,
    dir: &Path,
    jobs: &[JobView],
    tally: &mut Tally,
    multi: Option<&MultiProgress>,
    retry_transport: bool,
) -> Result<()> {
    let mut todo = Vec::new();
    for j in jobs {
        if j.state != JobState::Done
            || tally.files.contains_key(&j.id)
            || tally.errors.contains_key(&j.id)
        {
            continue;
        }
        match answer_path(dir, j) {
            Ok(p) if present(&p, j) => {
                tally.already += 1;
                tally.files.insert(j.id, p);
            }
            Ok(p) => todo.push((j, p)),
            Err(e) => {
                tally.errors.insert(j.id, format!("{e:#}"));
            }
        }
    }
    if todo.is_empty() {
        return Ok(());
    }
    let total: u64 = todo.iter().map(|(j, _)| j.answer_bytes.unwrap_or(0)).sum();
    let bar = output::bytes_bar(total, "download");
    let bar = match multi {
        Some(m) => m.add(bar),
        None => output::on_stderr(bar),
    };
    let mut result = Ok(());
    for (j, p) in todo {
        bar.set_message(format!("{}", p.display()));
        match fetch(api, j, &p, &bar) {
            Ok(Fetched::Downloaded(n)) => {
                tally.downloaded += 1;
                tally.downloaded_bytes += n;
                tally.files.insert(j.id, p);
            }
            Ok(Fetched::AlreadyThere) => {
                tally.already += 1;
                tally.files.insert(j.id, p);
            }
            Err(e) if retry_transport && is_transient(&e) => {
                result = Err(e);
                break;
            }
            Err(e) => {
                let chain = rjs_cmd::chain(e.as_ref());
                tally.errors.insert(j.id, chain);
            }
        }
    }
    bar.finish_and_clear();
    if let Some(m) = multi {
        m.remove(&bar);
    }
    result
}

/// A failure worth retrying: anything but the server's refusal or a local file error.
fn is_transient(e: &anyhow::Error) -> bool {
    let refused = e.chain().any(|c| c.is::<ServerRefused>());
    let transient = e.chain().any(|c| {
        c.downcast_ref::<ClientError>()
            .is_some_and(ClientError::is_transient)
            || c.is::<reqwest::Error>()
    });
    transient && !refused
}

impl AnswersCommand {
    /// Runs the command; `Ok` holds the exit status.
    pub fn run(&self) -> Result<u8> {
        let api = settings::open(&self.server)?;
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("creating the answer folder {}", self.out.display()))?;
        let mut tally = Tally::default();

        // First look: errors here are reported at once (wrong server, key, CA...). While
        // waiting, only the jobs that changed since are read (the change feed), not the list.
        let mut seq = if self.wait {
            Some(api.changes(None)?.next)
        } else {
            None
        };
        let mut jobs = current(&select_jobs(&api, &self.bundles)?);
        let mut timed_out = false;
        if !self.wait {
            fetch_all(&api, &self.out, &jobs, &mut tally, None, false)?;
        } else {
            let deadline = self.timeout.map(|t| Instant::now() + t);
            let multi = MultiProgress::with_draw_target(output::draw_target());
            let tasks = multi.add(output::tasks_bar(
                jobs.len() as u64,
                "answers",
                progress_message(&Counts::of(&jobs)),
            ));
            let mut failures = 0u32;
            loop {
                let c = Counts::of(&jobs);
                tasks.set_length(c.total() as u64);
                tasks.set_position(c.finished() as u64);
                tasks.set_message(progress_message(&c));
                let fetched = fetch_all(&api, &self.out, &jobs, &mut tally, Some(&multi), true);
                let all_fetched = jobs
                    .iter()
                    .filter(|j| j.state == JobState::Done)
                    .all(|j| tally.files.contains_key(&j.id) || tally.errors.contains_key(&j.id));
                if fetched.is_ok() && c.finished() == c.total() && all_fetched {
                    break;
                }
                if let Err(e) = fetched {
                    failures += 1;
                    warn(&multi, &e, failures)?;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    timed_out = true;
                    break;
                }
                let pause = match deadline {
                    Some(d) => POLL_INTERVAL.min(d.saturating_duration_since(Instant::now())),
                    None => POLL_INTERVAL,
                };
                std::thread::sleep(pause);
                match apply_changes(&api, &mut seq, &mut jobs) {
                    Ok(()) => failures = 0,
                    Err(e) if is_transient(&e) => {
                        failures += 1;
                        warn(&multi, &e, failures)?;
                    }
                    Err(e) => return Err(e),
                }
            }
            tasks.finish_and_clear();
            multi.clear().ok();
        }

        let report = Report::new(&self.out, &jobs, &tally, timed_out, self.timeout);
        if self.json {
            println!("{}", report.json());
        } else {
            print!("{}", report.text());
        }
        let code = report.exit_code(self.wait);
        let not_zero = report.not_exit_zero();
        if code == EXIT_ALL_DONE && self.require_exit_zero && not_zero > 0 {
            eprintln!(
                "rjs-sign: {} ended otherwise than with exit 0 (--require-exit-zero)",
                plural(not_zero, "answer")
            );
            return Ok(EXIT_SOME_FAILED);
        }
        Ok(code)
    }
}

/// Reads the change feed from `seq` on (every page) and updates the jobs it names.
fn apply_changes(api: &AuthorClient, seq: &mut Option<u64>, jobs: &mut [JobView]) -> Result<()> {
    loop {
        let page = api.changes(*seq)?;
        for c in page.changes {
            if let Some(j) = jobs.iter_mut().find(|j| j.id == c.job.id) {
                *j = c.job;
            }
        }
        *seq = Some(page.next);
        if !page.more {
            return Ok(());
        }
    }
}

/// The tasks bar's message: what is not done.
fn progress_message(c: &Counts) -> String {
    format!(
        "{} failed, {} running, {} queued",
        c.failed, c.leased, c.queued
    )
}

/// Reports a transient failure while waiting; gives up after too many in a row.
fn warn(multi: &MultiProgress, e: &anyhow::Error, failures: u32) -> Result<()> {
    if failures >= MAX_TRANSIENT_FAILURES {
        return Err(
            anyhow::anyhow!("{}", rjs_cmd::chain(e.as_ref())).context(format!(
                "giving up after {failures} failed attempts in a row"
            )),
        );
    }
    if failures == 1 || failures.is_multiple_of(5) {
        let line = format!(
            "rjs-sign: warning: {} (retrying)",
            rjs_cmd::chain(e.as_ref())
        );
        if multi.is_hidden() {
            eprintln!("{line}");
        } else {
            multi.println(line).ok();
        }
    }
    Ok(())
}

/// The outcome of a run, per bundle.
struct Report {
    bundles: Vec<BundleReport>,
    dir: PathBuf,
    downloaded: usize,
    downloaded_bytes: u64,
    already: usize,
    /// (job, message) for answers that could not be had.
    errors: Vec<(i64, String)>,
    timed_out: Option<Duration>,
}

struct BundleReport {
    bundle_id: String,
    name: String,
    dir: Option<PathBuf>,
    tasks: u32,
    /// (task, job id, file, outcome)
    done: Vec<(u32, i64, Option<PathBuf>, Option<String>)>,
    /// (task, job id, attempts, reason)
    failed: Vec<(u32, i64, u32, Option<String>)>,
    /// (task, job id, state)
    pending: Vec<(u32, i64, JobState)>,
}

impl Report {
    fn new(
        dir: &Path,
        jobs: &[JobView],
        tally: &Tally,
        timed_out: bool,
        timeout: Option<Duration>,
    ) -> Self {
        let mut bundles: Vec<BundleReport> = Vec::new();
        for j in jobs {
            let i = match bundles.iter().position(|b| b.bundle_id == j.bundle_id) {
                Some(i) => i,
                None => {
                    bundles.push(BundleReport {
                        bundle_id: j.bundle_id.clone(),
                        name: j.name.clone(),
                        dir: answer_path(dir, j)
                            .ok()
                            .and_then(|p| p.parent().map(Path::to_owned)),
                        tasks: j.tasks,
                        done: Vec::new(),
                        failed: Vec::new(),
                        pending: Vec::new(),
                    });
                    bundles.len() - 1
                }
            };
            let b = &mut bundles[i];
            match j.state {
                JobState::Done => b.done.push((
                    j.task,
                    j.id,
                    tally.files.get(&j.id).cloned(),
                    j.outcome.clone(),
                )),
                JobState::Failed => b.failed.push((j.task, j.id, j.attempts, j.reason.clone())),
                s => b.pending.push((j.task, j.id, s)),
            }
        }
        Report {
            bundles,
            dir: dir.to_owned(),
            downloaded: tally.downloaded,
            downloaded_bytes: tally.downloaded_bytes,
            already: tally.already,
            errors: tally.errors.iter().map(|(k, v)| (*k, v.clone())).collect(),
            timed_out: if timed_out { timeout } else { None },
        }
    }

    /// Answers whose outcome is not an exit 0.
    fn not_exit_zero(&self) -> usize {
        self.bundles
            .iter()
            .flat_map(|b| &b.done)
            .filter(|(_, _, _, o)| !o.as_deref().is_some_and(rjs_wire::api::exited_zero))
            .count()
    }

    fn exit_code(&self, waited: bool) -> u8 {
        let failed = self.bundles.iter().any(|b| !b.failed.is_empty());
        let pending = self.bundles.iter().any(|b| !b.pending.is_empty());
        if !self.errors.is_empty() || self.timed_out.is_some() {
            EXIT_ERROR
        } else if failed {
            EXIT_SOME_FAILED
        } else if pending {
            // Only without --wait: waiting ends when nothing is pending or on timeout.
            debug_assert!(!waited);
            EXIT_UNFINISHED
        } else {
            EXIT_ALL_DONE
        }
    }

    fn text(&self) -> String {
        let mut s = String::new();
        if self.bundles.is_empty() {
            s.push_str("no jobs\n");
            return s;
        }
        for b in &self.bundles {
            let dir = b
                .dir
                .as_ref()
                .map_or_else(|| clean(&b.bundle_id), |d| d.display().to_string());
            s.push_str(&format!(
                "{} ({}): {} done, {} failed, {} not finished\n",
                dir,
                plural(b.done.len() + b.failed.len() + b.pending.len(), "task"),
                b.done.len(),
                b.failed.len(),
                b.pending.len()
            ));
            for (task, job, attempts, reason) in &b.failed {
                s.push_str(&format!(
                    "  task {task} (job {job}) failed after {}: {}\n",
                    plural(*attempts as usize, "attempt"),
                    reason
                        .as_deref()
                        .map_or_else(|| "no reason given".into(), clean)
                ));
            }
            if !b.pending.is_empty() {
                let tasks: Vec<String> = b.pending.iter().map(|(t, _, _)| t.to_string()).collect();
                s.push_str(&format!("  not finished: tasks {}\n", tasks.join(", ")));
            }
            for (task, job, _, outcome) in &b.done {
                if let Some(o) = outcome.as_deref().filter(|o| *o != "exit 0") {
                    s.push_str(&format!(
                        "  task {task} (job {job}) ended with {}\n",
                        clean(o)
                    ));
                }
            }
        }
        s.push_str(&format!(
            "{} downloaded ({} bytes), {} already in {}\n",
            plural(self.downloaded, "answer"),
            self.downloaded_bytes,
            self.already,
            self.dir.display()
        ));
        for (job, e) in &self.errors {
            s.push_str(&format!("error: job {job}: {e}\n"));
        }
        if let Some(t) = self.timed_out {
            s.push_str(&format!(
                "error: timed out after {} with tasks not finished\n",
                humantime::format_duration(t)
            ));
        }
        s
    }

    fn json(&self) -> serde_json::Value {
        let bundles: Vec<_> = self
            .bundles
            .iter()
            .map(|b| {
                json!({
                    "bundle_id": b.bundle_id,
                    "name": b.name,
                    "dir": b.dir,
                    "tasks": b.tasks,
                    "done": b.done.iter().map(|(task, job, file, outcome)| json!({
                        "task": task, "job": job, "file": file, "outcome": outcome})).collect::<Vec<_>>(),
                    "failed": b.failed.iter().map(|(task, job, attempts, reason)| json!({
                        "task": task, "job": job, "attempts": attempts, "reason": reason})).collect::<Vec<_>>(),
                    "pending": b.pending.iter().map(|(task, job, state)| json!({
                        "task": task, "job": job, "state": state})).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "dir": self.dir,
            "bundles": bundles,
            "downloaded": self.downloaded,
            "downloaded_bytes": self.downloaded_bytes,
            "already_present": self.already,
            "errors": self.errors.iter().map(|(job, e)| json!({"job": job, "error": e})).collect::<Vec<_>>(),
            "timed_out": self.timed_out.is_some(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::status::tests::job;
    use super::*;

    #[test]
    fn answer_paths_are_name_dash_id_prefix_slash_task() {
        let id = format!("fb2b1234abcd{}", "0".repeat(52));
        let j = job(3, &id, 7, 8, JobState::Done);
        assert_eq!(
            answer_path(Path::new("out"), &j).unwrap(),
            PathBuf::from("out/mandelbrot-fb2b1234abcd/task-7.zip")
        );
    }

    #[test]
    fn server_values_never_lead_out_of_the_folder() {
        let id = "a".repeat(64);
        let mut j = job(1, &id, 0, 1, JobState::Done);
        j.name = "../../etc".into();
        assert_eq!(
            answer_path(Path::new("out"), &j).unwrap(),
            PathBuf::from(format!("out/bundle-{}/task-0.zip", &id[..12]))
        );
        j.name = "/abs".into();
        assert_eq!(
            answer_path(Path::new("out"), &j).unwrap(),
            PathBuf::from(format!("out/bundle-{}/task-0.zip", &id[..12]))
        );
        j.bundle_id =
            "../../../../../../etc/passwd/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".into();
        assert!(answer_path(Path::new("out"), &j).is_err());
        j.bundle_id = "A".repeat(64);
        assert!(answer_path(Path::new("out"), &j).is_err());
    }

    #[test]
    fn only_the_newest_submission_of_each_task_counts() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        // Server order: newest submission first.
        let jobs = vec![
            job(5, &a, 0, 2, JobState::Queued),
            job(6, &a, 1, 2, JobState::Queued),
            job(3, &b, 0, 1, JobState::Done),
            job(1, &a, 0, 2, JobState::Done),
            job(2, &a, 1, 2, JobState::Done),
        ];
        let cur = current(&jobs);
        let ids: Vec<i64> = cur.iter().map(|j| j.id).collect();
        assert_eq!(ids, [5, 6, 3]);
    }

    #[test]
    fn present_means_same_size() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("task-0.zip");
        let mut j = job(1, &"a".repeat(64), 0, 1, JobState::Done);
        j.answer_bytes = Some(3);
        assert!(!present(&p, &j));
        std::fs::write(&p, b"ab").unwrap();
        assert!(!present(&p, &j), "a short file is downloaded again");
        std::fs::write(&p, b"abc").unwrap();
        assert!(present(&p, &j));
    }

    #[test]
    fn exit_codes_and_summary() {
        let a = "a".repeat(64);
        let dir = Path::new("out");
        let mut done = job(1, &a, 0, 3, JobState::Done);
        done.outcome = Some("exit 0".into());
        let mut failed = job(2, &a, 1, 3, JobState::Failed);
        failed.attempts = 3;
        failed.reason = Some("lease expired".into());
        let queued = job(3, &a, 2, 3, JobState::Queued);
        let tally = Tally::default();

        let all_done = Report::new(dir, std::slice::from_ref(&done), &tally, false, None);
        assert_eq!(all_done.exit_code(true), EXIT_ALL_DONE);
        assert_eq!(all_done.not_exit_zero(), 0);
        // Answers that ended otherwise are done (exit 0 of the command) but counted for
        // --require-exit-zero; a missing output still exited 0.
        let mut sat = job(4, &a, 1, 3, JobState::Done);
        sat.outcome = Some("exit 10".into());
        let mut missing = job(5, &a, 2, 3, JobState::Done);
        missing.outcome = Some("exit 0, missing output: speech.wav".into());
        let answered = Report::new(dir, &[done.clone(), sat, missing], &tally, false, None);
        assert_eq!(answered.exit_code(true), EXIT_ALL_DONE);
        assert_eq!(answered.not_exit_zero(), 1);
        let with_failure = Report::new(dir, &[done.clone(), failed.clone()], &tally, false, None);
        assert_eq!(with_failure.exit_code(true), EXIT_SOME_FAILED);
        let text = with_failure.text();
        assert!(
            text.contains("task 1 (job 2) failed after 3 attempts: lease expired"),
            "{text}"
        );
        assert!(
            text.starts_with("out/mandelbrot-aaaaaaaaaaaa (2 tasks): 1 done, 1 failed"),
            "{text}"
        );
        let unfinished = Report::new(dir, &[done.clone(), queued.clone()], &tally, false, None);
        assert_eq!(unfinished.exit_code(false), EXIT_UNFINISHED);
        let timed_out = Report::new(
            dir,
            &[done, failed, queued],
            &tally,
            true,
            Some(Duration::from_secs(3)),
        );
        assert_eq!(timed_out.exit_code(true), EXIT_ERROR);
        assert!(
            timed_out.text().contains("timed out after 3s"),
            "{}",
            timed_out.text()
        );
        assert_eq!(timed_out.json()["timed_out"], true);
        let none = Report::new(dir, &[], &tally, false, None);
        assert_eq!(none.exit_code(true), EXIT_ALL_DONE);
        assert_eq!(none.text(), "no jobs\n");
    }

    #[test]
    fn timeouts_parse_as_seconds_or_durations() {
        assert_eq!(parse_timeout("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_timeout("soon").is_err());
    }
}
