//! The trust prompt on the node's terminal. See `docs/compute-node.md` ("Trust store and
//! prompt").
//!
//! The question is written to and the answer read from the controlling terminal
//! (`/dev/tty`), opened afresh for each question, non-blocking, and waited on with `poll(2)`
//! until the deadline, so no thread is ever left blocked in a read. Type-ahead is discarded
//! before the question is shown (a key pressed earlier cannot answer a question not yet
//! asked); unrecognised answers are asked again until the deadline. Everything the job
//! controls (its author's self-declared name, its bundle name) is shown with control
//! characters replaced, so a job cannot inject terminal escape sequences.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::{ByteSize, fmt_ms};
use crate::trust::{Answer, PromptOutcome, Prompter, Question};

/// The controlling terminal.
pub const TTY_PATH: &str = "/dev/tty";
/// Longest answer line read; longer ones are garbage.
const MAX_LINE: usize = 256;

/// Asks on a terminal (normally `/dev/tty`).
#[derive(Debug, Clone)]
pub struct TerminalPrompter {
    path: PathBuf,
}

impl TerminalPrompter {
    /// A prompter if a terminal is attached: stdin is a terminal and the controlling
    /// terminal opens. A node started by a service manager, with stdin redirected or
    /// without a controlling terminal gets `None` (and unknown authors are refused).
    pub fn detect() -> Option<TerminalPrompter> {
        // SAFETY: isatty has no preconditions.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return None;
        }
        open_tty(Path::new(TTY_PATH)).ok()?;
        Some(TerminalPrompter {
            path: PathBuf::from(TTY_PATH),
        })
    }

    /// A prompter on an explicit terminal device (tests).
    pub fn on(path: impl Into<PathBuf>) -> TerminalPrompter {
        TerminalPrompter { path: path.into() }
    }

    fn ask_inner(&self, q: &Question, deadline: Instant) -> io::Result<PromptOutcome> {
        let mut tty = open_tty(&self.path)?;
        let fd = tty.as_raw_fd();
        // A background job reading its terminal would be stopped by SIGTTIN: refuse instead.
        // SAFETY: plain calls on a valid descriptor.
        let (fg, own) = unsafe { (libc::tcgetpgrp(fd), libc::getpgrp()) };
        if fg != own {
            return Ok(PromptOutcome::Failed(
                "the node runs in the background of its terminal (bring it to the foreground to be asked)"
                    .into(),
            ));
        }
        // SAFETY: valid descriptor; discards input typed before the question.
        unsafe { libc::tcflush(fd, libc::TCIFLUSH) };
        let remaining = deadline.saturating_duration_since(Instant::now());
        tty.write_all(render_question(q, remaining).as_bytes())?;
        tty.flush()?;
        let mut line: Vec<u8> = Vec::new();
        let mut overlong = false;
        let mut prev_cr = false;
        let mut eofs = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let _ = tty.write_all(b"\nNo answer in time: job refused.\n");
                return Ok(PromptOutcome::TimedOut);
            }
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if n == 0 {
                continue;
            }
            if pfd.revents & libc::POLLIN == 0 {
                if pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                    return Ok(PromptOutcome::Failed("the terminal was closed".into()));
                }
                continue;
            }
            let mut buf = [0u8; 128];
            let input: &[u8] = match tty.read(&mut buf) {
                Ok(0) => {
                    // End of file typed (Ctrl-D) counts as an empty line; a terminal that
                    // keeps reporting end of file is gone.
                    eofs += 1;
                    if eofs > 3 || pfd.revents & libc::POLLHUP != 0 {
                        return Ok(PromptOutcome::Failed("the terminal was closed".into()));
                    }
                    b"\n"
                }
                Ok(k) => {
                    eofs = 0;
                    &buf[..k]
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            for &b in input {
                if b == b'\n' && prev_cr {
                    prev_cr = false;
                    continue;
                }
                prev_cr = b == b'\r';
                if b != b'\n' && b != b'\r' {
                    if line.len() < MAX_LINE {
                        line.push(b);
                    } else {
                        overlong = true;
                    }
                    continue;
                }
                let text = String::from_utf8_lossy(&line).into_owned();
                line.clear();
                if !std::mem::take(&mut overlong) {
                    if let Some(answer) = parse_answer(&text) {
                        tty.write_all(confirmation(answer, q).as_bytes())?;
                        return Ok(PromptOutcome::Answered(answer));
                    }
                    if text.trim().is_empty() {
                        tty.write_all(b"Your choice (o, a, n or r): ")?;
                        continue;
                    }
                }
                let left = deadline.saturating_duration_since(Instant::now());
                tty.write_all(
                    format!(
                        "Not understood. Type o, a, n or r (or 1-4) and Enter ({} s left): ",
                        left.as_secs()
                    )
                    .as_bytes(),
                )?;
            }
        }
    }
}

impl Prompter for TerminalPrompter {
    fn ask(&self, question: &Question, deadline: Instant) -> PromptOutcome {
        match self.ask_inner(question, deadline) {
            Ok(outcome) => outcome,
            Err(e) => PromptOutcome::Failed(format!("terminal {}: {e}", self.path.display())),
        }
    }
}

fn open_tty(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// The question as shown (`remaining`: time left to answer).
pub fn render_question(q: &Question, remaining: Duration) -> String {
    let l = &q.limits;
    format!(
        "\n\
         ── RJS compute node: a job from an author you have not decided about ──\n\
         \x20 author (self-declared, unverified): {name}\n\
         \x20 key fingerprint:                   {fp}\n\
         \x20 bundle:                            {bundle}\n\
         \x20 asks for: time {time}, memory {mem}, output {out}, stdout/stderr {so} each\n\
         \x20 [o] 1  run this job once\n\
         \x20 [a] 2  always trust this author (remembered)\n\
         \x20 [n] 3  never: block this author (remembered)\n\
         \x20 [r] 4  refuse this job\n\
         Your choice (answer within {secs} s, then the job is refused): ",
        name = sanitize(&q.signer_name, 64),
        fp = q.fingerprint,
        bundle = sanitize(&q.bundle_name, 64),
        time = fmt_ms(l.time_ms),
        mem = ByteSize(l.memory_bytes),
        out = ByteSize(l.output_bytes),
        so = ByteSize(l.stdout_bytes),
        secs = remaining.as_secs_f64().round(),
    )
}

fn confirmation(answer: Answer, q: &Question) -> String {
    let who = format!("{} ({})", sanitize(&q.signer_name, 64), q.fingerprint);
    match answer {
        Answer::Once => "→ running this job once.\n".to_string(),
        Answer::Always => format!("→ {who} is trusted from now on; running the job.\n"),
        Answer::Never => format!("→ {who} is blocked from now on; job refused.\n"),
        Answer::Refuse => "→ job refused.\n".to_string(),
    }
}

/// Reads an answer: `o`/`once`/`1`, `a`/`always`/`2`, `n`/`never`/`3`, `r`/`refuse`/`4`
/// (any case, surrounding blanks ignored). Anything else, the empty line included, is not
/// an answer: there is no default.
pub fn parse_answer(text: &str) -> Option<Answer> {
    match text.trim().to_ascii_lowercase().as_str() {
        "o" | "once" | "1" => Some(Answer::Once),
        "a" | "always" | "2" => Some(Answer::Always),
        "n" | "never" | "3" => Some(Answer::Never),
        "r" | "refuse" | "4" => Some(Answer::Refuse),
        _ => None,
    }
}

/// Makes job-controlled text safe to print on a terminal: control characters (C0, DEL,
/// C1) and bidirectional overrides become `?`; cut to `max` characters with `…`. An empty
/// name shows as `(none)`.
pub fn sanitize(text: &str, max: usize) -> String {
    if text.is_empty() {
        return "(none)".into();
    }
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| {
            if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
                '?'
            } else {
                c
            }
        })
        .collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rjs_signer::{KeyPair, Limits};

    #[test]
    fn answers() {
        assert_eq!(parse_answer("o"), Some(Answer::Once));
        assert_eq!(parse_answer(" Always \n"), Some(Answer::Always));
        assert_eq!(parse_answer("3"), Some(Answer::Never));
        assert_eq!(parse_answer("R"), Some(Answer::Refuse));
        assert_eq!(parse_answer(""), None);
        assert_eq!(parse_answer("yes"), None);
        assert_eq!(parse_answer("oa"), None);
    }

    #[test]
    fn escapes_are_neutralised() {
        assert_eq!(sanitize("a\x1b[2Jb", 64), "a?[2Jb");
        assert_eq!(sanitize("x\u{202e}y\u{9b}", 64), "x?y?");
        assert_eq!(sanitize("abcdef", 3), "abc…");
        assert_eq!(sanitize("", 3), "(none)");
    }

    /// A question about the bundle `bundle` signed by `signer` (key `[1; 32]`).
    fn question(signer: &str, bundle: &str, limits: Limits) -> Question {
        Question {
            signer_name: signer.into(),
            fingerprint: KeyPair::from_secret([1; 32]).public().fingerprint(),
            bundle_name: bundle.into(),
            limits,
        }
    }

    #[test]
    fn question_shows_everything() {
        let q = question(
            "alice\x1b]0;pwned\x07",
            "mandelbrot",
            Limits {
                time_ms: 60_000,
                memory_bytes: 256 << 20,
                output_bytes: 64 << 20,
                stdout_bytes: 1 << 20,
            },
        );
        let text = render_question(&q, Duration::from_secs(60));
        assert!(text.contains("alice?]0;pwned?"), "{text}");
        assert!(!text.contains('\x1b'));
        assert!(text.contains(&q.fingerprint.to_string()));
        assert!(text.contains("mandelbrot"));
        assert!(text.contains("time 60 s, memory 256 MiB, output 64 MiB, stdout/stderr 1 MiB"));
        assert!(text.contains("[a] 2  always trust this author"));
        assert!(text.contains("answer within 60 s"));
    }

    #[test]
    fn no_terminal_file_fails_cleanly() {
        let p = TerminalPrompter::on("/nonexistent/tty");
        let q = question(
            "a",
            "b",
            Limits {
                time_ms: 1,
                memory_bytes: 1 << 16,
                output_bytes: 0,
                stdout_bytes: 0,
            },
        );
        let out = p.ask(&q, Instant::now() + Duration::from_secs(1));
        assert!(matches!(out, PromptOutcome::Failed(m) if m.contains("/nonexistent/tty")));
    }
}
