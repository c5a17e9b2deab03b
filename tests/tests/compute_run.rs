//! `rjs-compute run` through the real binary: the local path a job from the grid takes.

use std::process::{Command, Stdio};

use rjs_e2e::bin;
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

fn rjs_compute(data: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(bin("rjs-compute"))
        .args(args)
        .arg("--data")
        .arg(data)
        .stdin(Stdio::null())
        .output()
        .expect("rjs-compute runs")
}

#[test]
fn run_answers_trusted_jobs_and_refuses_the_rest_before_running() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    std::fs::create_dir_all(&data).unwrap();
    let alice = KeyPair::generate();
    let (bundle, _) = rjs_signer::pack_dir(
        &samples().join("hello"),
        &alice,
        "alice",
        rjs_signer::unix_now(),
    )
    .unwrap();
    let path = dir.path().join("hello.rjs");
    std::fs::write(&path, &bundle).unwrap();
    let answer = dir.path().join("answer.zip");
    let p = path.to_str().unwrap();
    let a = answer.to_str().unwrap();

    // Unknown author, no terminal: refused (exit 3), no answer written.
    let out = rjs_compute(&data, &["run", p, "-o", a]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("refused (untrusted)"));
    assert!(!answer.exists());

    // Trusted: the answer is written, verifies, and holds the job's output.
    let out = rjs_compute(&data, &["trust", "add", &alice.public().to_line("alice")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = rjs_compute(&data, &["run", p, "--task", "0", "-o", a]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("exit 0"));
    let v = verify_answer(&std::fs::read(&answer).unwrap(), &AnswerLimits::default()).unwrap();
    assert_eq!(v.result().ending, Ending::Exit { code: 0 });
    assert_eq!(v.out_files()[0].0, "hello-0.txt");
    assert_eq!(v.out_files()[0].1, b"hello, world from task 0/1\n");

    // A tampered bundle is refused before anything runs.
    let mut bad = bundle.clone();
    let n = bad.len() / 3;
    bad[n] ^= 0x40;
    std::fs::write(&path, &bad).unwrap();
    std::fs::remove_file(&answer).unwrap();
    let out = rjs_compute(&data, &["run", p, "-o", a]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("refused (invalid-bundle)"));
    assert!(!answer.exists());

    // A task that does not exist.
    std::fs::write(&path, &bundle).unwrap();
    let out = rjs_compute(&data, &["run", p, "--task", "1", "-o", a]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("refused (bad-request)"));

    // Blocked: refused without asking.
    let fp = alice.public().fingerprint().to_string();
    assert!(
        rjs_compute(&data, &["trust", "block", &fp])
            .status
            .success()
    );
    let out = rjs_compute(&data, &["run", p, "-o", a]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("refused (blocked)"));
    assert!(!answer.exists());
}
