//! `rjs-sign status`: the author's submissions summed up (one request, whatever their size),
//! or their jobs as a table (`--jobs`, `--bundle`), and choosing jobs by bundle.

use std::collections::BTreeSet;

use anyhow::{Result, bail};
use rjs_wire::api::{JobList, JobState, JobView, SubmissionSummary};

use super::output::{clean, plural, table};
use super::settings::{self, ServerOpts};
use rjs_signer::client::{AuthorClient, is_bundle_id};

#[derive(clap::Args, Debug)]
pub struct StatusCommand {
    /// Only the jobs of these bundles (full id, or a unique prefix of at least 4 hex digits).
    #[arg(long = "bundle", value_name = "ID")]
    pub bundles: Vec<String>,
    /// Print the job list as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// List every job (reads the whole job list, page by page) instead of one line per
    /// submission.
    #[arg(long)]
    pub jobs: bool,
    #[command(flatten)]
    pub server: ServerOpts,
}

impl StatusCommand {
    /// Runs the command; `Ok` holds the exit status.
    pub fn run(&self) -> Result<u8> {
        let api = settings::open(&self.server)?;
        if !self.json && !self.jobs && self.bundles.is_empty() {
            let list = api.submissions(None)?;
            if list.submissions.is_empty() {
                println!("no jobs");
                return Ok(0);
            }
            print!(
                "{}",
                render_submissions(&list.submissions, rjs_signer::unix_now() as i64)
            );
            println!("{}", summary_of_submissions(&list.submissions));
            if list.next.is_some() {
                println!("(the newest {} submissions)", list.submissions.len());
            }
            return Ok(0);
        }
        let jobs = select_jobs(&api, &self.bundles)?;
        if self.json {
            println!("{}", serde_json::to_string(&JobList { jobs, next: None })?);
            return Ok(0);
        }
        if jobs.is_empty() {
            println!("no jobs");
            return Ok(0);
        }
        print!("{}", render(&jobs));
        println!("{}", summary(&jobs));
        Ok(0)
    }
}

/// One line per submission: counts by state and outcome, how long it ran.
pub fn render_submissions(subs: &[SubmissionSummary], now: i64) -> String {
    let rows: Vec<Vec<String>> = subs
        .iter()
        .map(|s| {
            let end = if s.is_finished() {
                s.last_answer_at.unwrap_or(s.changed_at)
            } else {
                now
            };
            let o = &s.outcomes;
            vec![
                s.id.to_string(),
                clean(s.bundle_id.get(..12).unwrap_or(&s.bundle_id)),
                clean(&s.name),
                s.tasks.to_string(),
                s.states.queued.to_string(),
                s.states.leased.to_string(),
                s.states.done.to_string(),
                s.states.failed.to_string(),
                format!("{}/{}/{}/{}", o.exit_zero, o.exit_other, o.trap, o.limit),
                format!("{}s", (end - s.created_at).max(0)),
            ]
        })
        .collect();
    table(
        &[
            "SUBMISSION",
            "BUNDLE",
            "NAME",
            "TASKS",
            "QUEUED",
            "LEASED",
            "DONE",
            "FAILED",
            "EXIT0/OTHER/TRAP/LIMIT",
            "ELAPSED",
        ],
        &rows,
    )
}

/// `8 jobs: 2 queued, 1 leased, 4 done, 1 failed`, from submission summaries.
pub fn summary_of_submissions(subs: &[SubmissionSummary]) -> String {
    let c = subs.iter().fold(Counts::default(), |c, s| Counts {
        queued: c.queued + s.states.queued as usize,
        leased: c.leased + s.states.leased as usize,
        done: c.done + s.states.done as usize,
        failed: c.failed + s.states.failed as usize,
    });
    c.line()
}

/// A bundle argument: `sha256:` is allowed in front (as `pack` prints ids).
fn bundle_arg(arg: &str) -> Result<String> {
    let a = arg.trim();
    let a = a.strip_prefix("sha256:").unwrap_or(a).to_ascii_lowercase();
    if a.len() < 4 || a.len() > 64 || !a.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{arg:?} is not a bundle id (64 hex digits, or a prefix of at least 4)");
    }
    Ok(a)
}

/// The author's jobs, of the named bundles if any (each must have jobs), without duplicates,
/// in the server's order (newest submission first).
pub fn select_jobs(api: &AuthorClient, bundles: &[String]) -> Result<Vec<JobView>> {
    if bundles.is_empty() {
        return Ok(api.jobs(None)?.jobs);
    }
    let mut all: Option<Vec<JobView>> = None;
    let mut out: Vec<JobView> = Vec::new();
    let mut seen = BTreeSet::new();
    for arg in bundles {
        let id = bundle_arg(arg)?;
        let jobs = if is_bundle_id(&id) {
            api.jobs(Some(&id))?.jobs
        } else {
            if all.is_none() {
                all = Some(api.jobs(None)?.jobs);
            }
            let all = all.as_deref().unwrap_or_default();
            let ids: BTreeSet<&str> = all
                .iter()
                .map(|j| j.bundle_id.as_str())
                .filter(|b| b.starts_with(&id))
                .collect();
            if ids.len() > 1 {
                bail!(
                    "bundle prefix {id} is ambiguous: it matches {}",
                    ids.iter().map(|s| clean(s)).collect::<Vec<_>>().join(", ")
                );
            }
            all.iter()
                .filter(|j| j.bundle_id.starts_with(&id))
                .cloned()
                .collect()
        };
        if jobs.is_empty() {
            bail!("none of your jobs belongs to a bundle {id}");
        }
        for j in jobs {
            if seen.insert(j.id) {
                out.push(j);
            }
        }
    }
    Ok(out)
}

/// What happened to a job, in a few words.
fn outcome(j: &JobView) -> String {
    let text = match (j.state, &j.outcome, &j.reason) {
        (JobState::Done, Some(o), _) => o.clone(),
        (JobState::Failed, _, Some(r)) => format!("failed: {r}"),
        (_, _, Some(r)) if j.attempts > 0 => format!("retrying after: {r}"),
        (JobState::Queued | JobState::Leased, _, _) if j.waiting.is_some() => {
            format!("waiting: {}", j.waiting.as_deref().unwrap_or_default())
        }
        (_, Some(o), _) => o.clone(),
        _ => "-".to_owned(),
    };
    clean(&text)
}

/// The job table.
pub fn render(jobs: &[JobView]) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                clean(j.bundle_id.get(..12).unwrap_or(&j.bundle_id)),
                clean(&j.name),
                format!("{}/{}", j.task, j.tasks),
                j.state.as_str().to_owned(),
                j.attempts.to_string(),
                j.node.as_deref().map_or_else(|| "-".to_owned(), clean),
                outcome(j),
            ]
        })
        .collect();
    table(
        &[
            "ID", "BUNDLE", "NAME", "TASK", "STATE", "ATTEMPTS", "NODE", "OUTCOME",
        ],
        &rows,
    )
}

/// Per-state counts of jobs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub queued: usize,
    pub leased: usize,
    pub done: usize,
    pub failed: usize,
}

impl Counts {
    pub fn of<'a>(jobs: impl IntoIterator<Item = &'a JobView>) -> Self {
        let mut c = Counts::default();
        for j in jobs {
            match j.state {
                JobState::Queued => c.queued += 1,
                JobState::Leased => c.leased += 1,
                JobState::Done => c.done += 1,
                JobState::Failed => c.failed += 1,
            }
        }
        c
    }
    pub fn total(&self) -> usize {
        self.queued + self.leased + self.done + self.failed
    }
    pub fn finished(&self) -> usize {
        self.done + self.failed
    }
    /// `8 jobs: 2 queued, 1 leased, 4 done, 1 failed`.
    pub fn line(&self) -> String {
        format!(
            "{}: {} queued, {} leased, {} done, {} failed",
            plural(self.total(), "job"),
            self.queued,
            self.leased,
            self.done,
            self.failed
        )
    }
}

/// `8 jobs: 2 queued, 1 leased, 4 done, 1 failed`.
pub fn summary(jobs: &[JobView]) -> String {
    Counts::of(jobs).line()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn job(id: i64, bundle: &str, task: u32, tasks: u32, state: JobState) -> JobView {
        JobView {
            id,
            submission_id: 1,
            waiting: None,
            leased_by: None,
            bundle_id: bundle.to_owned(),
            name: "mandelbrot".to_owned(),
            task,
            tasks,
            state,
            attempts: 0,
            reason: None,
            outcome: None,
            node: None,
            answer_bytes: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn table_and_summary() {
        let b = "fb2b".repeat(16);
        let mut done = job(1, &b, 0, 3, JobState::Done);
        done.outcome = Some("exit 0".into());
        done.node = Some("node-1".into());
        let mut failed = job(2, &b, 1, 3, JobState::Failed);
        failed.attempts = 3;
        failed.reason = Some("lease expired".into());
        let mut retry = job(3, &b, 2, 3, JobState::Queued);
        retry.attempts = 1;
        retry.reason = Some("node lost".into());
        let jobs = [done, failed, retry];
        let t = render(&jobs);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].starts_with("ID  BUNDLE        NAME"), "{t}");
        assert!(lines[1].contains("fb2bfb2bfb2b  mandelbrot  0/3"), "{t}");
        assert!(lines[1].ends_with("node-1  exit 0"), "{t}");
        assert!(lines[2].ends_with("failed: lease expired"), "{t}");
        assert!(lines[3].ends_with("retrying after: node lost"), "{t}");
        assert_eq!(
            summary(&jobs),
            "3 jobs: 1 queued, 0 leased, 1 done, 1 failed"
        );
    }

    #[test]
    fn why_a_job_waits_and_submission_lines() {
        let b = "fb2b".repeat(16);
        let mut parked = job(4, &b, 0, 2, JobState::Leased);
        parked.waiting = Some("No node serves this job's group.".into());
        let t = render(&[parked]);
        assert!(
            t.lines()
                .nth(1)
                .unwrap()
                .ends_with("waiting: No node serves this job's group."),
            "{t}"
        );
        let s = SubmissionSummary {
            id: 7,
            bundle_id: b.clone(),
            name: "mandelbrot".into(),
            group: "/compute".into(),
            tasks: 8,
            created_at: 100,
            states: rjs_wire::api::StateCounts {
                queued: 1,
                leased: 2,
                done: 4,
                failed: 1,
            },
            outcomes: rjs_wire::api::OutcomeCounts {
                exit_zero: 3,
                exit_other: 1,
                trap: 0,
                limit: 0,
            },
            first_answer_at: Some(103),
            last_answer_at: Some(110),
            changed_at: 110,
        };
        let t = render_submissions(std::slice::from_ref(&s), 130);
        let line = t.lines().nth(1).unwrap();
        assert!(
            line.starts_with("7           fb2bfb2bfb2b  mandelbrot  8"),
            "{t}"
        );
        assert!(line.ends_with("3/1/0/0                 30s"), "{t}");
        assert_eq!(
            summary_of_submissions(&[s]),
            "8 jobs: 1 queued, 2 leased, 4 done, 1 failed"
        );
    }

    #[test]
    fn bundle_arguments() {
        assert_eq!(bundle_arg("sha256:ABCD").unwrap(), "abcd");
        assert!(bundle_arg("abc").is_err());
        assert!(bundle_arg("abcg").is_err());
        assert!(bundle_arg(&"a".repeat(65)).is_err());
        assert!(bundle_arg("../x").is_err());
    }
}
