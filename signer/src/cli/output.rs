//! Shared output helpers: safe display of server text, compact job ranges, tables and
//! progress bars.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rjs_wire::api::JobRef;

/// Server-provided text made safe for a terminal: control characters are escaped.
pub use rjs_signer::client::clean;

/// Whether progress bars may be drawn (stderr is a terminal).
pub fn progress_visible() -> bool {
    std::io::stderr().is_terminal()
}

/// A progress bar over `len` bytes, not drawn yet: pass it to [`on_stderr`] or
/// `MultiProgress::add`.
pub fn bytes_bar(len: u64, prefix: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_owned());
    bar
}

/// A progress bar over `len` tasks, not drawn yet (see [`bytes_bar`]).
pub fn tasks_bar(len: u64, prefix: &str, message: String) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:20}] {pos}/{len} tasks finished ({msg}) {elapsed}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_owned());
    bar.set_message(message);
    bar
}

/// Draws `bar` on stderr if it is a terminal.
pub fn on_stderr(bar: ProgressBar) -> ProgressBar {
    bar.set_draw_target(draw_target());
    bar
}

/// Where progress is drawn: stderr if it is a terminal, else nowhere.
pub fn draw_target() -> ProgressDrawTarget {
    if progress_visible() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

/// The jobs of an upload, compactly: `jobs 1-8 (tasks 0-7)` when ids and tasks both run
/// consecutively, else one `job ID: task N` line per job.
pub fn job_lines(jobs: &[JobRef]) -> Vec<String> {
    match jobs {
        [] => vec!["no jobs".to_owned()],
        [j] => vec![format!("job {} (task {})", j.id, j.task)],
        [first, .., last] => {
            let consecutive = jobs
                .windows(2)
                .all(|w| w[1].id == w[0].id + 1 && w[1].task.checked_sub(1) == Some(w[0].task));
            if consecutive {
                vec![format!(
                    "jobs {}-{} (tasks {}-{})",
                    first.id, last.id, first.task, last.task
                )]
            } else {
                jobs.iter()
                    .map(|j| format!("job {}: task {}", j.id, j.task))
                    .collect()
            }
        }
    }
}

/// Renders rows as left-aligned columns separated by two spaces (the last column is not
/// padded).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let n = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(n) {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, c) in cells.enumerate() {
            if i + 1 < n {
                s.push_str(c);
                s.extend(std::iter::repeat_n(' ', widths[i] - c.chars().count() + 2));
            } else {
                s.push_str(c);
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}

/// `3 jobs` / `1 job`.
pub fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(pairs: &[(i64, u32)]) -> Vec<JobRef> {
        pairs
            .iter()
            .map(|&(id, task)| JobRef { id, task })
            .collect()
    }

    #[test]
    fn job_ranges_are_compact_when_consecutive() {
        assert_eq!(
            job_lines(&refs(&[(1, 0), (2, 1), (3, 2)])),
            ["jobs 1-3 (tasks 0-2)"]
        );
        assert_eq!(job_lines(&refs(&[(7, 0)])), ["job 7 (task 0)"]);
        assert_eq!(
            job_lines(&refs(&[(1, 0), (5, 1)])),
            ["job 1: task 0", "job 5: task 1"]
        );
        assert_eq!(job_lines(&[]), ["no jobs"]);
    }

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["ID", "NAME", "STATE"],
            &[
                vec!["1".into(), "mandelbrot".into(), "done".into()],
                vec!["10".into(), "x".into(), "queued".into()],
            ],
        );
        assert_eq!(
            t,
            "ID  NAME        STATE\n1   mandelbrot  done\n10  x           queued\n"
        );
    }

    #[test]
    fn clean_escapes_control_characters_only() {
        assert_eq!(clean("exit 0: ok é"), "exit 0: ok é");
        assert_eq!(clean("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\n");
    }
}
