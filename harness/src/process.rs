//! Child processes of tests, benchmarks and the local grid: one managed type, [`Managed`],
//! started and waited for until it reports that it listens ([`spawn_ready`] with a log file,
//! [`spawn_listening`] for tests), signalled, terminated with a timeout, and killed (SIGKILL)
//! when dropped; and short commands run to completion ([`run`], [`run_ok`]).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::signals;

/// How often waits look at the child and at Ctrl-C.
const POLL: Duration = Duration::from_millis(25);
/// Lines of a log quoted in an error.
const TAIL_LINES: usize = 25;
/// How long [`spawn_listening`] waits for the marker line.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A long-running child (a server), killed (SIGKILL) when dropped unless it exited before.
#[derive(Debug)]
pub struct Managed {
    pub name: String,
    pub child: Child,
    /// Where its stderr and stdout go, if to a log file ([`spawn_ready`]).
    pub log: Option<PathBuf>,
    /// Set once the exit was collected.
    pub exited: Option<ExitStatus>,
    /// Whether we asked it to end (SIGTERM, SIGINT, SIGKILL): an exit is then expected.
    pub asked_to_exit: bool,
}

/// Prepares `cmd` the way every process of the grid runs: its own process group (a Ctrl-C on
/// the terminal reaches only `rjs`, which stops the grid in order), SIGTERM when the thread
/// that started it dies (nothing outlives a killed demo), no stdin.
fn prepare(cmd: &mut Command) {
    cmd.stdin(Stdio::null()).process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn open_log(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the log {}", path.display()))
}

/// A printable form of a command line.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Starts `cmd` as `name`, appending its stderr and stdout to `log`, in its own process
/// group and told SIGTERM when the calling thread dies (see [`LocalGrid`]), and waits up to
/// `timeout` for a stdout line containing `marker`; returns the process and that line. Fails
/// early if the process exits, with its status and the end of its log.
///
/// [`LocalGrid`]: crate::grid::LocalGrid
pub fn spawn_ready(
    name: &str,
    mut cmd: Command,
    log: &Path,
    marker: &'static str,
    timeout: Duration,
) -> Result<(Managed, String)> {
    let mut file = open_log(log)?;
    writeln!(file, "--- {} starting {name}: {}", timestamp(), show(&cmd))
        .with_context(|| format!("writing to {}", log.display()))?;
    let stderr = file
        .try_clone()
        .with_context(|| format!("duplicating the log {}", log.display()))?;
    prepare(&mut cmd);
    cmd.stderr(stderr);
    start(name, &mut cmd, Some((log, file)), marker, timeout)
}

/// Spawns `cmd` (as the caller set it up: its stderr, stdin) with its standard output piped
/// and waits up to 30 s for a line holding `marker`; returns the process and the rest of
/// that line after the marker, trimmed.
pub fn spawn_listening(cmd: &mut Command, marker: &'static str) -> Result<(Managed, String)> {
    let name = show(cmd);
    let (proc, line) = start(&name, cmd, None, marker, LISTEN_TIMEOUT)?;
    let rest = line
        .split(marker)
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_owned();
    Ok((proc, rest))
}

/// Spawns `cmd` with its stdout piped (copied to `log` if given, each line prefixed
/// `[stdout]`) and waits for the first line holding `marker`.
fn start(
    name: &str,
    cmd: &mut Command,
    log: Option<(&Path, File)>,
    marker: &'static str,
    timeout: Duration,
) -> Result<(Managed, String)> {
    cmd.stdout(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {name}: {}", show(cmd)))?;
    let stdout = child.stdout.take();
    let (log, file) = match log {
        Some((path, file)) => (Some(path.to_owned()), Some(file)),
        None => (None, None),
    };
    let mut managed = Managed::adopt(name, child);
    managed.log = log;
    let Some(stdout) = stdout else {
        bail!("starting {name}: no stdout pipe");
    };
    let rx = watch_stdout(stdout, file, marker);
    let deadline = Instant::now() + timeout;
    loop {
        match rx.recv_timeout(POLL) {
            Ok(line) => return Ok((managed, line)),
            Err(mpsc::RecvTimeoutError::Timeout) | Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        if let Some(status) = managed.try_exit()? {
            bail!(
                "{name} exited ({}) before reporting {marker:?}; {}",
                describe(status),
                managed.log_note()
            );
        }
        if let Err(e) = signals::check() {
            managed.kill9();
            return Err(e.context(format!("waiting for {name} to start")));
        }
        if Instant::now() >= deadline {
            managed.kill9();
            bail!(
                "{name} did not report {marker:?} within {timeout:?}; {}",
                managed.log_note()
            );
        }
    }
}

/// Reads `stdout` to its end on a thread of its own, copying each line to `log` if given;
/// sends the first line holding `marker`.
fn watch_stdout(
    stdout: ChildStdout,
    mut log: Option<File>,
    marker: &'static str,
) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(f) = log.as_mut() {
                // Best effort: the log is for people.
                let _ = writeln!(f, "[stdout] {line}");
            }
            if !sent && line.contains(marker) {
                sent = tx.send(line).is_ok();
            }
        }
    });
    rx
}

impl Managed {
    /// Takes charge of `child`, spawned by the caller (who reads its pipes).
    pub fn adopt(name: &str, child: Child) -> Managed {
        Managed {
            name: name.to_owned(),
            child,
            log: None,
            exited: None,
            asked_to_exit: false,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Whether it exited (collecting the status once).
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name))?;
        }
        Ok(self.exited)
    }

    /// Sends `sig` unless it already exited.
    pub fn signal(&mut self, sig: i32) -> Result<()> {
        if self.try_exit()?.is_some() {
            return Ok(());
        }
        if [libc::SIGTERM, libc::SIGINT, libc::SIGKILL].contains(&sig) {
            self.asked_to_exit = true;
        }
        // SAFETY: kill(2) on our own child, which has not been reaped (so the pid is ours).
        if unsafe { libc::kill(self.pid(), sig) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| {
                format!(
                    "sending {} to {} (pid {})",
                    signals::signal_name(sig),
                    self.name,
                    self.pid()
                )
            });
        }
        Ok(())
    }

    /// Waits until `deadline` for the exit.
    pub fn wait_until(&mut self, deadline: Instant) -> Result<Option<ExitStatus>> {
        loop {
            if let Some(s) = self.try_exit()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; returns the exit code (`None`
    /// if a signal ended it). Past the timeout it is killed (SIGKILL), and that is an error.
    pub fn terminate(&mut self, timeout: Duration) -> Result<Option<i32>> {
        self.signal(libc::SIGTERM)?;
        match self.wait_until(Instant::now() + timeout)? {
            Some(status) => Ok(status.code()),
            None => {
                self.kill9();
                bail!(
                    "{} did not exit within {timeout:?} of SIGTERM and was killed",
                    self.name
                )
            }
        }
    }

    /// `its log (PATH) ends with:\n…` when it writes to a log file, else nothing.
    pub fn log_note(&self) -> String {
        self.log.as_deref().map(tail_note).unwrap_or_default()
    }

    /// SIGKILL and reap, ignoring errors (the process may be gone already).
    pub fn kill9(&mut self) {
        self.asked_to_exit = true;
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `exit 0`, `exit 1`, `killed by SIGKILL`.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("killed by {}", signals::signal_name(s)),
        _ => status.to_string(),
    }
}

/// Runs a short command to completion within `timeout`, appending the command line and its
/// output to `log` if given; returns its stdout. Fails with its status and stderr if it fails.
pub fn run(name: &str, cmd: &mut Command, log: Option<&Path>, timeout: Duration) -> Result<String> {
    let shown = show(cmd);
    let mut file = match log {
        Some(log) => {
            let mut f = open_log(log)?;
            writeln!(f, "--- {} {name}: {shown}", timestamp())
                .with_context(|| format!("writing to {}", log.display()))?;
            Some(f)
        }
        None => None,
    };
    prepare(cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("running {shown}"))?;
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = read(child.stdout.take().map(|p| Box::new(p) as _));
    let err = read(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child
            .try_wait()
            .with_context(|| format!("waiting for {shown}"))?
        {
            break s;
        }
        if Instant::now() >= deadline || signals::received().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            signals::check().with_context(|| format!("running {shown}"))?;
            bail!("{shown} did not finish within {timeout:?}");
        }
        std::thread::sleep(POLL);
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if let Some(f) = file.as_mut() {
        let _ = f.write_all(&stdout);
        let _ = f.write_all(&stderr);
    }
    let stderr = String::from_utf8_lossy(&stderr);
    if !status.success() {
        bail!(
            "{shown} failed ({}): {}",
            describe(status),
            clip(stderr.trim(), 2000)
        );
    }
    String::from_utf8(stdout).map_err(|_| anyhow!("{shown} printed something that is not UTF-8"))
}

/// Runs a command to completion, failing with its output if it fails; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last lines of a log, for an error message.
pub fn tail(log: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(log) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(16 * 1024);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `its log (PATH) ends with:\n…` or `its log PATH is empty`.
pub fn tail_note(log: &Path) -> String {
    let t = tail(log, TAIL_LINES);
    if t.trim().is_empty() {
        format!("its log {} is empty", log.display())
    } else {
        format!("its log ({}) ends with:\n{t}", log.display())
    }
}

/// At most the last `max` bytes of `s` (on a character boundary).
fn clip(s: &str, max: usize) -> &str {
    if s.is_empty() {
        return "no message on stderr";
    }
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", now.as_secs(), now.subsec_millis())
}
