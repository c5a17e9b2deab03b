//! The trust store and prompt through the real binary: `rjs-compute trust-prompt-demo` runs
//! in a real pseudo-terminal (its controlling terminal, as when the owner starts the node in
//! a terminal window), and this test plays the owner, reading the prompt and typing answers.
//! Also the `trust` and `bench` subcommands.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rjs_signer::KeyPair;

const BIN: &str = env!("CARGO_BIN_EXE_rjs-compute");
/// Generous: debug builds on a shared 2-core machine.
const WAIT: Duration = Duration::from_secs(60);

/// A process running with a pseudo-terminal as its stdin, stdout, stderr and controlling
/// terminal.
struct PtyChild {
    master: File,
    child: Child,
    /// Everything the process wrote so far.
    output: Vec<u8>,
    /// How much of `output` earlier `expect`s consumed.
    seen: usize,
}

impl PtyChild {
    fn spawn(cmd: &mut Command) -> PtyChild {
        // SAFETY: plain libc calls; every result is checked.
        let master = unsafe {
            let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(fd >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
            let master = OwnedFd::from_raw_fd(fd);
            assert_eq!(libc::grantpt(fd), 0, "grantpt");
            assert_eq!(libc::unlockpt(fd), 0, "unlockpt");
            master
        };
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: buffer and length match.
        let rc = unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) };
        assert_eq!(rc, 0, "ptsname_r");
        // SAFETY: ptsname_r wrote a NUL-terminated string.
        let slave_path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
            .to_str()
            .unwrap()
            .to_owned();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags_noctty()
            .open(&slave_path)
            .expect("opening the pty slave");
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: async-signal-safe calls only, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("starting rjs-compute in a pty");
        // `cmd` still holds the slave descriptors; the caller's Command is dropped after
        // this returns, so the master sees end of file once the child exits.
        PtyChild {
            master: File::from(master),
            child,
            output: Vec::new(),
            seen: 0,
        }
    }

    /// Reads what is available within `timeout`; false at end of output.
    fn read_some(&mut self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n <= 0 {
            return true;
        }
        let mut buf = [0u8; 4096];
        match self.master.read(&mut buf) {
            Ok(0) => false,
            Ok(k) => {
                self.output.extend_from_slice(&buf[..k]);
                true
            }
            // EIO: every slave descriptor is closed (the process ended).
            Err(_) => false,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }

    /// Waits until `needle` appears after what earlier calls consumed.
    fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let fresh = String::from_utf8_lossy(&self.output[self.seen..]).into_owned();
            if let Some(pos) = fresh.find(needle) {
                self.seen += fresh[..pos + needle.len()].len();
                return fresh;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {needle:?}; output so far:\n{}",
                self.text()
            );
            if !self.read_some(left.min(Duration::from_millis(200))) {
                let fresh = String::from_utf8_lossy(&self.output[self.seen..]).into_owned();
                assert!(
                    fresh.contains(needle),
                    "process ended without printing {needle:?}; output:\n{}",
                    self.text()
                );
            }
        }
    }

    fn send(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).unwrap();
        self.master.flush().unwrap();
    }

    /// Reads to the end, waits for the exit; returns the whole output.
    fn finish(mut self) -> String {
        let deadline = Instant::now() + WAIT;
        while self.read_some(Duration::from_millis(200)) {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("process did not end; output:\n{}", self.text());
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                // Drain what is left.
                while self.read_some(Duration::from_millis(100)) {}
                break;
            }
        }
        let status = self.child.wait().unwrap();
        let text = self.text();
        assert!(status.success(), "exit {status}; output:\n{text}");
        text
    }
}

trait NoCtty {
    fn custom_flags_noctty(&mut self) -> &mut Self;
}

impl NoCtty for std::fs::OpenOptions {
    fn custom_flags_noctty(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
    }
}

/// A node data directory and an author's public key file.
struct Setup {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    key_file: PathBuf,
    fingerprint: String,
}

fn setup(seed: u8, name: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node");
    let key = KeyPair::from_secret([seed; 32]).public();
    let key_file = tmp.path().join(format!("{name}.pub"));
    std::fs::write(&key_file, key.to_line(name)).unwrap();
    Setup {
        data,
        key_file,
        fingerprint: key.fingerprint().to_string(),
        _tmp: tmp,
    }
}

fn demo(s: &Setup, extra: &[&str]) -> Command {
    demo_in(&s.data, s, extra)
}

/// The demo for `s`'s author on the node at `data`.
fn demo_in(data: &Path, s: &Setup, extra: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("trust-prompt-demo")
        .arg("--data")
        .arg(data)
        .arg("--author-key")
        .arg(&s.key_file)
        .args(["--bundle-name", "mandelbrot"])
        .args(extra)
        .env_remove("RJS_COMPUTE_DATA")
        .env("RUST_LOG", "warn");
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn trust_cmd(data: &Path, args: &[&str]) -> Output {
    run(Command::new(BIN)
        .arg("trust")
        .args(args)
        .arg("--data")
        .arg(data)
        .env_remove("RJS_COMPUTE_DATA"))
}

#[test]
fn always_is_remembered_across_restarts() {
    let s = setup(1, "alice");
    let mut p = PtyChild::spawn(&mut demo(&s, &[]));
    let prompt = p.expect("Your choice");
    assert!(prompt.contains("alice"), "{prompt}");
    assert!(prompt.contains(&s.fingerprint), "{prompt}");
    assert!(prompt.contains("mandelbrot"), "{prompt}");
    assert!(
        prompt.contains("time 60 s, memory 256 MiB, output 64 MiB"),
        "{prompt}"
    );
    assert!(prompt.contains("[o]") && prompt.contains("[a]") && prompt.contains("[n]"));
    // Garbage is asked again, within the same prompt.
    p.send("maybe\n");
    p.expect("Not understood");
    p.send("\n");
    p.expect("Your choice");
    p.send("a\n");
    p.expect("trusted from now on");
    let out = p.finish();
    assert!(out.contains("decision: run"), "{out}");
    assert!(out.contains("prompts shown: 1"), "{out}");

    // A new process (a restart): no prompt, runs.
    let p = PtyChild::spawn(&mut demo(&s, &[]));
    let out = p.finish();
    assert!(!out.contains("Your choice"), "{out}");
    assert!(out.contains("decision: run"), "{out}");
    assert!(out.contains("prompts shown: 0"), "{out}");

    // Also without a terminal, since the author is trusted now.
    let out = run(&mut demo(&s, &[]));
    assert!(stdout(&out).contains("decision: run"), "{out:?}");

    let list = stdout(&trust_cmd(&s.data, &["list"]));
    assert!(list.contains("trusted") && list.contains("alice"), "{list}");
    assert!(list.contains(&s.fingerprint), "{list}");
}

#[test]
fn never_blocks_without_asking_again() {
    let s = setup(2, "mallory");
    let mut p = PtyChild::spawn(&mut demo(&s, &[]));
    p.expect("Your choice");
    p.send("never\n");
    let out = p.finish();
    assert!(out.contains("decision: refuse blocked"), "{out}");

    let p = PtyChild::spawn(&mut demo(&s, &[]));
    let out = p.finish();
    assert!(!out.contains("Your choice"), "{out}");
    assert!(
        out.contains(&format!(
            "decision: refuse blocked: author {} is blocked on this node",
            s.fingerprint
        )),
        "{out}"
    );
    let list = stdout(&trust_cmd(&s.data, &["list"]));
    assert!(
        list.contains("blocked") && list.contains("mallory"),
        "{list}"
    );
}

#[test]
fn concurrent_jobs_share_one_prompt_and_once_is_not_remembered() {
    let s = setup(3, "carol");
    let mut p = PtyChild::spawn(&mut demo(&s, &["--jobs", "3"]));
    p.expect("Your choice");
    p.send("o\n");
    let out = p.finish();
    assert_eq!(out.matches("Your choice").count(), 1, "{out}");
    assert_eq!(out.matches("decision: run").count(), 3, "{out}");
    assert!(out.contains("prompts shown: 1"), "{out}");
    assert!(!s.data.join("trust.json").exists(), "once is not persisted");

    // Asked again; "refuse this job" refuses, and is not remembered either.
    let mut p = PtyChild::spawn(&mut demo(&s, &[]));
    p.expect("Your choice");
    p.send("4\n");
    let out = p.finish();
    assert!(
        out.contains("decision: refuse untrusted: the node's owner refused this job"),
        "{out}"
    );
    assert!(!s.data.join("trust.json").exists());
}

#[test]
fn no_answer_in_time_refuses() {
    let s = setup(4, "dave");
    let start = Instant::now();
    let mut p = PtyChild::spawn(&mut demo(&s, &["--prompt-timeout", "1"]));
    p.expect("answer within 1 s");
    let out = p.finish();
    assert!(
        out.contains("decision: refuse untrusted: no answer within 1 s"),
        "{out}"
    );
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[test]
fn no_terminal_refuses_unknown_at_once() {
    let s = setup(5, "erin");
    let start = Instant::now();
    let out = run(&mut demo(&s, &[]));
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains("decision: refuse untrusted: author erin")
            && text.contains("no terminal attached"),
        "{text}"
    );
    assert!(text.contains("prompts shown: 0"), "{text}");
    assert!(start.elapsed() < Duration::from_secs(20));
    assert!(!s.data.join("trust.json").exists());
}

#[test]
fn refuse_policy_never_asks_even_at_a_terminal() {
    let s = setup(6, "frank");
    let p = PtyChild::spawn(&mut demo(&s, &["--unknown-authors", "refuse"]));
    let out = p.finish();
    assert!(!out.contains("Your choice"), "{out}");
    assert!(
        out.contains("decision: refuse untrusted") && out.contains("unknown_authors"),
        "{out}"
    );
}

#[test]
fn trust_cli_add_list_block_remove() {
    let s = setup(7, "grace");
    let other = setup(8, "heidi");
    let list = stdout(&trust_cmd(&s.data, &["list"]));
    assert!(list.starts_with("no authors"), "{list}");

    let out = trust_cmd(&s.data, &["add", s.key_file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), format!("trusted grace ({})\n", s.fingerprint));
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(s.data.join("trust.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode, 0o600);

    // Block by fingerprint alone (the key is not known).
    let out = trust_cmd(&s.data, &["block", &other.fingerprint, "--name", "heidi"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout(&out),
        format!("blocked heidi ({})\n", other.fingerprint)
    );
    let out = run(&mut demo_in(&s.data, &other, &[]));
    assert!(stdout(&out).contains("decision: refuse blocked"), "{out:?}");

    let list = stdout(&trust_cmd(&s.data, &["list"]));
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    assert!(lines[0].starts_with("STATUS"));
    assert!(lines[1].starts_with("trusted  grace"), "{list}");
    assert!(lines[2].starts_with("blocked  heidi"), "{list}");

    // Block a trusted author by key, then remove by fingerprint.
    let out = trust_cmd(&s.data, &["block", s.key_file.to_str().unwrap()]);
    assert_eq!(
        stdout(&out),
        format!("blocked grace ({}), was trusted\n", s.fingerprint)
    );
    let out = trust_cmd(&s.data, &["remove", &s.fingerprint]);
    assert_eq!(
        stdout(&out),
        format!("removed grace ({}), was blocked\n", s.fingerprint)
    );
    let out = trust_cmd(&s.data, &["remove", &s.fingerprint]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not in the trust store"), "{err}");

    // Errors: a bad key, a bad name, a usage error.
    let out = trust_cmd(&s.data, &["add", "not-a-key"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rjs-compute: error:"));
    let out = trust_cmd(
        &s.data,
        &["add", s.key_file.to_str().unwrap(), "--name", "a b"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid key name"));
    let out = trust_cmd(&s.data, &["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bench_measures_once_then_reuses() {
    let s = setup(9, "x");
    let bench = |extra: &[&str]| {
        let out = run(Command::new(BIN)
            .arg("bench")
            .arg("--data")
            .arg(&s.data)
            .args(extra)
            .env_remove("RJS_COMPUTE_DATA"));
        assert!(out.status.success(), "{out:?}");
        stdout(&out)
    };
    let first = bench(&[]);
    assert!(
        first.contains("MFLOPS") && first.contains("measured now"),
        "{first}"
    );
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.data.join("bench.json")).unwrap()).unwrap();
    assert!(stored["mflops"].as_f64().unwrap() > 0.0, "{stored}");
    assert!(stored["residual"].as_f64().unwrap() < 100.0, "{stored}");

    let again = bench(&[]);
    assert!(again.contains("--rebench to measure again"), "{again}");
    let json: serde_json::Value = serde_json::from_str(&bench(&["--json"])).unwrap();
    assert_eq!(json, stored);

    let re = bench(&["--rebench"]);
    assert!(re.contains("measured now"), "{re}");
}
