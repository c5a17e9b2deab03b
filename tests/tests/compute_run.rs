//! `rjs-compute run` through the real binary: the local path a job from the grid takes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rjs_e2e::bin;
use rjs_e2e::node::{compiled_modules, scratch_left, store_bench};
use rjs_signer::KeyPair;
use rjs_signer::answer::{AnswerLimits, Ending, verify_answer};

fn samples() -> std::path::PathBuf {
    let d = rjs_e2e::samples_dir();
    assert!(
        d.join("hello/manifest.json").is_file(),
        "run samples/build.sh first"
    );
    d
}

fn rjs_compute(data: &Path, args: &[&str]) -> Output {
    Command::new(bin("rjs-compute"))
        .args(args)
        .arg("--data")
        .arg(data)
        .stdin(Stdio::null())
        .output()
        .expect("rjs-compute runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `out` is a refusal: exit status 3, and stdout says `says`.
fn assert_refused(out: &Output, says: &str) {
    assert_exit(out, 3, stdout, says);
}

/// `out` ended with exit status `code`, and `stream` (stdout or stderr) says `says`.
fn assert_exit(out: &Output, code: i32, stream: fn(&Output) -> String, says: &str) {
    assert_eq!(out.status.code(), Some(code), "{}", stderr(out));
    assert!(stream(out).contains(says), "{}", stream(out));
}

/// A node data directory with a stored benchmark result (no second of measuring per run).
fn node_dir(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("node");
    std::fs::create_dir_all(&data).unwrap();
    store_bench(&data, 1000.0).unwrap();
    data
}

/// `hello` signed by `key`, written to `dir/<file>`.
fn hello_bundle(dir: &Path, key: &KeyPair, file: &str) -> (Vec<u8>, std::path::PathBuf) {
    let (bundle, _) =
        rjs_signer::pack_dir(&samples().join("hello"), key, "alice", rjs_e2e::now()).unwrap();
    let path = dir.join(file);
    std::fs::write(&path, &bundle).unwrap();
    (bundle, path)
}

/// In `dir`: a node data directory that trusts a new author, the `hello` bundle signed by that
/// author, and where its answer goes: (data, bundle, answer).
/// A node's data folder that trusts alice, her hello bundle, and where `run` puts the answer.
struct TrustedHello {
    dir: tempfile::TempDir,
    data: PathBuf,
    bundle: PathBuf,
    answer: PathBuf,
}

impl TrustedHello {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = node_dir(dir.path());
        let alice = KeyPair::generate();
        let (_, bundle) = hello_bundle(dir.path(), &alice, "hello.rjs");
        let out = rjs_compute(&data, &["trust", "add", &alice.public().to_base64()]);
        assert!(out.status.success(), "{}", stderr(&out));
        let answer = dir.path().join("answer.zip");
        TrustedHello {
            dir,
            data,
            bundle,
            answer,
        }
    }

    /// `rjs-compute run BUNDLE -o ANSWER`, then `more`.
    fn run(&self, more: &[&str]) -> Output {
        let mut args = vec![
            "run",
            self.bundle.to_str().unwrap(),
            "-o",
            self.answer.to_str().unwrap(),
        ];
        args.extend_from_slice(more);
        rjs_compute(&self.data, &args)
    }
}

fn check_hello_answer(answer: &Path) {
    let v = verify_answer(&std::fs::read(answer).unwrap(), &AnswerLimits::default()).unwrap();
    assert_eq!(v.result().ending, Ending::Exit { code: 0 });
    assert_eq!(v.out_files()[0].0, "hello-0.txt");
    assert_eq!(v.out_files()[0].1, b"hello, world from task 0/1\n");
}

#[test]
fn run_answers_trusted_jobs_and_refuses_the_rest_before_running() {
    let dir = tempfile::tempdir().unwrap();
    let data = node_dir(dir.path());
    let alice = KeyPair::generate();
    let (bundle, path) = hello_bundle(dir.path(), &alice, "hello.rjs");
    let answer = dir.path().join("answer.zip");
    let p = path.to_str().unwrap();
    let a = answer.to_str().unwrap();

    // Unknown author, no terminal: refused (exit 3), no answer written, nothing compiled.
    let out = rjs_compute(&data, &["run", p, "-o", a]);
    assert_refused(&out, "refused (untrusted)");
    assert!(!answer.exists());
    assert_eq!(compiled_modules(&data), 0, "the unknown author's module");
    assert_eq!(scratch_left(&data), Vec::<String>::new());

    // A blocked author: refused without asking, before anything compiles.
    let bob = KeyPair::generate();
    let (_, bobs) = hello_bundle(dir.path(), &bob, "bob.rjs");
    let bob_fp = bob.public().fingerprint().to_string();
    assert!(
        rjs_compute(&data, &["trust", "block", &bob_fp])
            .status
            .success()
    );
    let out = rjs_compute(&data, &["run", bobs.to_str().unwrap(), "-o", a]);
    assert_refused(&out, "refused (blocked)");
    assert!(!answer.exists());
    assert_eq!(compiled_modules(&data), 0, "the blocked author's module");
    assert_eq!(scratch_left(&data), Vec::<String>::new());

    // A tampered bundle of a trusted author is refused before anything runs.
    let out = rjs_compute(&data, &["trust", "add", &alice.public().to_line("alice")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut bad = bundle.clone();
    let n = bad.len() / 3;
    bad[n] ^= 0x40;
    std::fs::write(&path, &bad).unwrap();
    let out = rjs_compute(&data, &["run", p, "-o", a]);
    assert_refused(&out, "refused (invalid-bundle)");
    assert!(!answer.exists());
    assert_eq!(compiled_modules(&data), 0, "the tampered bundle's module");

    // Trusted: the answer is written, verifies, and holds the job's output.
    std::fs::write(&path, &bundle).unwrap();
    let out = rjs_compute(&data, &["run", p, "--task", "0", "-o", a]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("exit 0"));
    check_hello_answer(&answer);
    assert_eq!(compiled_modules(&data), 1, "what a job that runs leaves");

    // A task that does not exist.
    let out = rjs_compute(&data, &["run", p, "--task", "1", "-o", a]);
    assert_refused(&out, "refused (bad-request)");

    // Blocked after being trusted: refused without asking.
    std::fs::remove_file(&answer).unwrap();
    let fp = alice.public().fingerprint().to_string();
    assert!(
        rjs_compute(&data, &["trust", "block", &fp])
            .status
            .success()
    );
    let out = rjs_compute(&data, &["run", p, "-o", a]);
    assert_refused(&out, "refused (blocked)");
    assert!(!answer.exists());
}

/// The node's largest limits from `node.toml` and from the `--max-*` flags, which win.
#[test]
fn limit_flags_override_node_toml() {
    let hello = TrustedHello::new();
    let (data, answer) = (&hello.data, &hello.answer);

    // hello asks for 16 MiB of memory and 10 s; the file allows 8 MiB.
    std::fs::write(
        data.join("node.toml"),
        "[limits]\nmax_memory_bytes = \"8M\"\n",
    )
    .unwrap();
    let out = hello.run(&[]);
    assert_refused(
        &out,
        "refused (over-limits): asks for 16 MiB of memory, this node allows at most 8 MiB",
    );
    // The flag wins over the file.
    let out = hello.run(&["--max-memory", "16M"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    check_hello_answer(answer);
    std::fs::remove_file(answer).unwrap();
    // Each flag: time (a duration), output and stdout (sizes).
    for (flag, value, says) in [
        (
            "--max-time",
            "5s",
            "asks for 10 s of time, this node allows at most 5 s",
        ),
        (
            "--max-output",
            "512K",
            "asks for 1 MiB of output, this node allows at most 512 KiB",
        ),
        (
            "--max-stdout",
            "1K",
            "asks for 64 KiB of stdout/stderr, this node allows at most 1 KiB",
        ),
    ] {
        let out = hello.run(&["--max-memory", "1G", flag, value]);
        assert_refused(&out, &format!("refused (over-limits): {says}"));
    }
    assert!(!answer.exists());
    assert_eq!(compiled_modules(data), 1, "only the job that ran");

    // Errors: a size that does not parse is a usage error (2); a value out of range names
    // the flag (1).
    let out = hello.run(&["--max-memory", "lots"]);
    assert_exit(
        &out,
        2,
        stderr,
        "invalid size \"lots\": use bytes or a number with K, M or G",
    );
    let out = hello.run(&["--max-time", "48h"]);
    assert_exit(
        &out,
        1,
        stderr,
        "command line: --max-time: 48 h is not between 1 ms and 24 h",
    );
    assert!(!answer.exists());
}

/// `run` honours the idle policy, as the node would for a job from the grid: refused
/// `not-idle` while the (fake) load average is high, run once it drops.
#[test]
fn run_honours_the_idle_policy() {
    let hello = TrustedHello::new();
    let (data, answer) = (&hello.data, &hello.answer);
    let loadavg = hello.dir.path().join("loadavg");
    let l = loadavg.to_str().unwrap();

    std::fs::write(&loadavg, "100000.00 1.00 1.00 1/100 42\n").unwrap();
    let out = hello.run(&["--only-when-idle", "--loadavg-file", l]);
    assert_refused(
        &out,
        "refused (not-idle): not idle: load 100000.00 with 0 own jobs",
    );
    assert!(!answer.exists());
    assert_eq!(compiled_modules(data), 0);
    // The same from node.toml.
    std::fs::write(data.join("node.toml"), "[idle]\nonly_when_idle = true\n").unwrap();
    let out = hello.run(&["--loadavg-file", l]);
    assert_refused(&out, "refused (not-idle)");

    std::fs::write(&loadavg, "0.00 1.00 1.00 1/100 42\n").unwrap();
    let out = hello.run(&["--loadavg-file", l]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    check_hello_answer(answer);
}
