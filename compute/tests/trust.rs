//! The trust store and prompt through the real binary: `rjs-compute run` (one task of a
//! real bundle, the sample `hello` signed by a test author) and `rjs-compute serve` run in a
//! real pseudo-terminal (their controlling terminal, as when the owner starts the node in a
//! terminal window), and these tests play the owner, reading the prompt and typing answers.
//! Also the `trust` and `bench` subcommands.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use rjs_signer::KeyPair;
use rjs_signer::answer::{AnswerLimits, Ending, verify_answer};

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

    /// Waits until `marker` appears; returns the rest of its line, trimmed.
    fn expect_rest_of_line(&mut self, marker: &str) -> String {
        self.expect(marker);
        // What `expect` returns starts right after the marker.
        let rest = self.expect("\n");
        rest.split('\n')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// Reads to the end, waits for the exit; returns the exit status and the whole output.
    fn wait(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + WAIT;
        while self.read_some(Duration::from_millis(200)) {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("process did not end; output:\n{}", self.text());
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                // Drain what is left (bounded: a descendant could hold the terminal open).
                let drain = Instant::now() + Duration::from_secs(5);
                while Instant::now() < drain && self.read_some(Duration::from_millis(100)) {}
                break;
            }
        }
        let status = self.child.wait().unwrap();
        (status, self.text())
    }

    /// [`wait`](Self::wait) for a process that must exit with `code`; returns its output.
    fn finish_with(self, code: i32) -> String {
        let (status, text) = self.wait();
        assert_eq!(status.code(), Some(code), "exit {status}; output:\n{text}");
        text
    }

    /// [`wait`](Self::wait) for a process that must succeed; returns its output.
    fn finish(self) -> String {
        self.finish_with(0)
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

/// The sample job `hello` (`samples/build.sh`). Its manifest asks for limits other than the
/// defaults: 10 s, 16 MiB of memory, 1 MiB of output, 64 KiB of stdout/stderr.
fn hello_dir() -> PathBuf {
    rjs_harness::paths::sample("hello")
}

/// What the prompt shows of `hello`'s manifest limits.
const HELLO_ASKS: &str =
    "asks for: time 10 s, memory 16 MiB, output 1 MiB, stdout/stderr 64 KiB each";

/// A node data directory, an author (key pair, public key file) and the `hello` bundle
/// signed by that author.
struct Setup {
    tmp: tempfile::TempDir,
    data: PathBuf,
    key_file: PathBuf,
    fingerprint: String,
    bundle: PathBuf,
    answer: PathBuf,
}

fn setup(seed: u8, name: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node");
    std::fs::create_dir(&data).unwrap();
    // A stored benchmark result: the node does not spend a second measuring its speed.
    std::fs::write(
        data.join("bench.json"),
        format!(
            r#"{{"mflops": 1000.0, "n": 500, "runs": 3, "seconds": 1.0, "residual": 0.5,
                "measured_at": {}, "program_version": "{}"}}"#,
            rjs_signer::unix_now(),
            env!("CARGO_PKG_VERSION")
        ),
    )
    .unwrap();
    let author = KeyPair::from_secret([seed; 32]);
    let key = author.public();
    let key_file = tmp.path().join(format!("{name}.pub"));
    std::fs::write(&key_file, key.to_line(name)).unwrap();
    let (bundle_bytes, _) =
        rjs_signer::pack_dir(&hello_dir(), &author, name, rjs_signer::unix_now()).unwrap();
    let bundle = tmp.path().join("hello.rjs");
    std::fs::write(&bundle, bundle_bytes).unwrap();
    Setup {
        data,
        key_file,
        fingerprint: key.fingerprint().to_string(),
        bundle,
        answer: tmp.path().join("answer.zip"),
        tmp,
    }
}

/// `rjs-compute run hello.rjs --task 0 -o answer.zip` on `s`'s node.
fn run_job(s: &Setup, extra: &[&str]) -> Command {
    run_job_on(&s.data, s, extra)
}

/// `s`'s job on the node at `data`.
fn run_job_on(data: &Path, s: &Setup, extra: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("run")
        .arg(&s.bundle)
        .args(["--task", "0", "-o"])
        .arg(&s.answer)
        .arg("--data")
        .arg(data)
        .args(extra)
        .env_remove("RJS_COMPUTE_DATA")
        .env("RUST_LOG", "warn");
    cmd
}

/// Checks the answer `run` wrote: signed by the node, `hello`'s task 0, exit 0, its file.
/// Then removes it, for the next run.
fn check_answer(s: &Setup) {
    let bytes = std::fs::read(&s.answer).expect("the answer archive was written");
    let v = verify_answer(&bytes, &AnswerLimits::default())
        .unwrap_or_else(|e| panic!("answer refused: {}: {e}", e.rule()));
    let node_key = std::fs::read_to_string(s.data.join("node.pub")).unwrap();
    assert!(
        node_key.contains(&v.public_key().to_base64()),
        "the answer is signed by the node's key"
    );
    let r = v.result();
    assert_eq!(r.ending, Ending::Exit { code: 0 });
    assert_eq!((r.job_name.as_str(), r.task_index), ("hello", 0));
    assert_eq!(v.out_files()[0].0, "hello-0.txt");
    assert_eq!(v.out_files()[0].1, b"hello, world from task 0/1\n");
    std::fs::remove_file(&s.answer).unwrap();
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

/// Exit status of `run` for a refused job.
const REFUSED: i32 = 3;

#[test]
fn always_runs_the_job_and_is_remembered_across_restarts() {
    let s = setup(1, "alice");
    let mut p = PtyChild::spawn(&mut run_job(&s, &[]));
    let prompt = p.expect("Your choice");
    assert!(
        prompt.contains("author (self-declared, unverified): alice"),
        "{prompt}"
    );
    assert!(prompt.contains(&s.fingerprint), "{prompt}");
    assert!(
        prompt.contains("bundle:") && prompt.contains("hello"),
        "{prompt}"
    );
    // The limits the bundle's manifest asks for, not the defaults.
    assert!(prompt.contains(HELLO_ASKS), "{prompt}");
    assert!(prompt.contains("[o]") && prompt.contains("[a]") && prompt.contains("[n]"));
    assert!(!s.answer.exists(), "nothing ran before the answer");
    // Garbage is asked again, within the same prompt.
    p.send("maybe\n");
    p.expect("Not understood");
    p.send("\n");
    p.expect("Your choice");
    p.send("a\n");
    p.expect("trusted from now on");
    let out = p.finish();
    assert!(out.contains("task 0: exit 0 in "), "{out}");
    check_answer(&s);

    // A new process (a restart): no prompt, runs.
    let out = PtyChild::spawn(&mut run_job(&s, &[])).finish();
    assert!(!out.contains("Your choice"), "{out}");
    assert!(out.contains("task 0: exit 0 in "), "{out}");
    check_answer(&s);

    // Also without a terminal, since the author is trusted now.
    let out = run(&mut run_job(&s, &[]));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    check_answer(&s);

    let list = stdout(&trust_cmd(&s.data, &["list"]));
    assert!(list.contains("trusted") && list.contains("alice"), "{list}");
    assert!(list.contains(&s.fingerprint), "{list}");
}

#[test]
fn never_refuses_and_blocks_without_asking_again() {
    let s = setup(2, "mallory");
    let mut p = PtyChild::spawn(&mut run_job(&s, &[]));
    let prompt = p.expect("Your choice");
    assert!(prompt.contains(HELLO_ASKS), "{prompt}");
    p.send("never\n");
    let out = p.finish_with(REFUSED);
    assert!(
        out.contains("refused (blocked): the node's owner blocked author"),
        "{out}"
    );
    assert!(!s.answer.exists(), "a refused job has no answer");

    // A new process: refused at once, without asking.
    let out = PtyChild::spawn(&mut run_job(&s, &[])).finish_with(REFUSED);
    assert!(!out.contains("Your choice"), "{out}");
    assert!(
        out.contains(&format!(
            "refused (blocked): author {} is blocked on this node",
            s.fingerprint
        )),
        "{out}"
    );
    assert!(!s.answer.exists());
    let list = stdout(&trust_cmd(&s.data, &["list"]));
    assert!(
        list.contains("blocked") && list.contains("mallory"),
        "{list}"
    );
}

#[test]
fn once_runs_without_remembering_and_refuse_refuses() {
    let s = setup(3, "carol");
    let mut p = PtyChild::spawn(&mut run_job(&s, &[]));
    p.expect("Your choice");
    p.send("o\n");
    let out = p.finish();
    assert!(out.contains("task 0: exit 0 in "), "{out}");
    check_answer(&s);
    assert!(!s.data.join("trust.json").exists(), "once is not persisted");

    // Asked again; "refuse this job" refuses, and is not remembered either.
    let mut p = PtyChild::spawn(&mut run_job(&s, &[]));
    p.expect("Your choice");
    p.send("4\n");
    let out = p.finish_with(REFUSED);
    assert!(
        out.contains("refused (untrusted): the node's owner refused this job"),
        "{out}"
    );
    assert!(!s.answer.exists());
    assert!(!s.data.join("trust.json").exists());
}

#[test]
fn no_answer_in_time_refuses() {
    let s = setup(4, "dave");
    let start = Instant::now();
    let mut p = PtyChild::spawn(&mut run_job(&s, &["--prompt-timeout", "1"]));
    p.expect("answer within 1 s");
    let out = p.finish_with(REFUSED);
    assert!(
        out.contains("refused (untrusted): no answer within 1 s"),
        "{out}"
    );
    assert!(start.elapsed() < Duration::from_secs(30));
    assert!(!s.answer.exists());
}

#[test]
fn no_terminal_refuses_unknown_at_once() {
    let s = setup(5, "erin");
    let start = Instant::now();
    let out = run(&mut run_job(&s, &[]));
    assert_eq!(out.status.code(), Some(REFUSED), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains("refused (untrusted): author erin") && text.contains("no terminal attached"),
        "{text}"
    );
    assert!(start.elapsed() < Duration::from_secs(20));
    assert!(!s.data.join("trust.json").exists());
    assert!(!s.answer.exists());
}

#[test]
fn refuse_policy_never_asks_even_at_a_terminal() {
    let s = setup(6, "frank");
    let out =
        PtyChild::spawn(&mut run_job(&s, &["--unknown-authors", "refuse"])).finish_with(REFUSED);
    assert!(!out.contains("Your choice"), "{out}");
    assert!(
        out.contains("refused (untrusted)") && out.contains("unknown_authors"),
        "{out}"
    );
}

/// A mutual-TLS client of `rjs-compute serve` playing the lookup: offers task 0 of `bundle`,
/// sends it when asked, and returns the node's decision and, if accepted, the answer's
/// outcome.
async fn offer_once(
    addr: std::net::SocketAddr,
    tls: std::sync::Arc<rustls::ClientConfig>,
    bundle: std::sync::Arc<Vec<u8>>,
    sent: tokio::sync::mpsc::UnboundedSender<()>,
) -> (rjs_wire::node::FromNode, Option<String>) {
    use rjs_wire::node::{FromNode, ToNode, read_frame, read_msg, write_frame, write_msg};
    let step = WAIT;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    let sha = rjs_signer::bundle::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bundle[..]));
    let offer = ToNode::Offer {
        bundle_sha256: sha,
        bundle_size: bundle.len() as u64,
        task: 0,
        job_id: 1,
    };
    write_msg(&mut s, &offer, step).await.unwrap();
    let mut reply: FromNode = read_msg(&mut s, step).await.unwrap();
    if reply == FromNode::SendBundle {
        write_frame(&mut s, &bundle, step).await.unwrap();
        let _ = sent.send(());
        reply = read_msg(&mut s, step).await.unwrap();
    }
    if reply != FromNode::Accepted {
        return (reply, None);
    }
    match read_msg(&mut s, step).await.unwrap() {
        FromNode::Answer { outcome, size } => {
            let archive = read_frame(&mut s, size, step).await.unwrap();
            verify_answer(&archive, &AnswerLimits::default()).unwrap();
            (reply, Some(outcome))
        }
        other => panic!("expected an answer, got {other:?}"),
    }
}

/// Several jobs of one unknown author reaching `serve` at the same time wait for one
/// question; "once" runs them all and is not remembered.
#[test]
fn concurrent_jobs_share_one_prompt_and_once_is_not_remembered() {
    use rjs_wire::pki;
    let s = setup(10, "judy");
    // A cluster CA, the node's certificate and the lookup's client certificate.
    let ca = pki::new_ca("test cluster CA").unwrap();
    let node_cert = pki::issue(
        &ca,
        "rjs-node",
        pki::host_sans(&["127.0.0.1".to_owned()]).unwrap(),
        vec![],
    )
    .unwrap();
    let lookup = pki::issue_lookup_client(&ca, "lookup-1").unwrap();
    let dir = s.tmp.path();
    for (file, pem) in [
        ("ca.pem", &ca.cert_pem),
        ("node.pem", &node_cert.cert_pem),
        ("node-key.pem", &node_cert.key_pem),
    ] {
        std::fs::write(dir.join(file), pem).unwrap();
    }
    let tls = rjs_wire::tls::client_config(
        &rjs_wire::tls::certs_from_pem(ca.cert_pem.as_bytes(), "CA").unwrap(),
        Some((
            rjs_wire::tls::certs_from_pem(lookup.cert_pem.as_bytes(), "lookup").unwrap(),
            rjs_wire::tls::key_from_pem(lookup.key_pem.as_bytes(), "lookup key").unwrap(),
        )),
    )
    .unwrap();
    let tls = std::sync::Arc::new(tls);

    let mut serve = Command::new(BIN);
    serve
        .arg("serve")
        .arg("--data")
        .arg(&s.data)
        .args(["--listen", "127.0.0.1:0", "--slots", "3", "--no-announce"])
        .arg("--cert")
        .arg(dir.join("node.pem"))
        .arg("--key")
        .arg(dir.join("node-key.pem"))
        .arg("--ca")
        .arg(dir.join("ca.pem"))
        .env_remove("RJS_COMPUTE_DATA")
        .env("RUST_LOG", "warn");
    let mut p = PtyChild::spawn(&mut serve);
    let addr: std::net::SocketAddr = p.expect_rest_of_line(" listening on ").parse().unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bundle = std::sync::Arc::new(std::fs::read(&s.bundle).unwrap());
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel();
    let jobs: Vec<_> = (0..3)
        .map(|_| {
            rt.spawn(offer_once(
                addr,
                tls.clone(),
                bundle.clone(),
                sent_tx.clone(),
            ))
        })
        .collect();
    let prompt = p.expect("Your choice");
    assert!(
        prompt.contains("judy") && prompt.contains(HELLO_ASKS),
        "{prompt}"
    );
    // Every bundle is with the node; give it time to verify them and join the question.
    rt.block_on(async {
        for _ in 0..3 {
            tokio::time::timeout(WAIT, sent_rx.recv()).await.unwrap();
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    p.send("o\n");
    for job in jobs {
        let (decision, outcome) = rt.block_on(job).unwrap();
        assert_eq!(decision, rjs_wire::node::FromNode::Accepted);
        assert_eq!(outcome.as_deref(), Some("exit 0"));
    }
    // SIGTERM: the node stops cleanly.
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(
        unsafe { libc::kill(p.child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let out = p.finish();
    assert_eq!(out.matches("Your choice").count(), 1, "{out}");
    assert!(!s.data.join("trust.json").exists(), "once is not persisted");
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

    // Block by fingerprint alone (the key is not known): heidi's job is refused on this node.
    let out = trust_cmd(&s.data, &["block", &other.fingerprint, "--name", "heidi"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout(&out),
        format!("blocked heidi ({})\n", other.fingerprint)
    );
    let out = run(&mut run_job_on(&s.data, &other, &[]));
    assert_eq!(out.status.code(), Some(REFUSED), "{out:?}");
    assert!(stdout(&out).contains("refused (blocked)"), "{out:?}");

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
    std::fs::remove_file(s.data.join("bench.json")).unwrap();
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
