//! Real programs from real toolchains, through the whole grid of real binaries (issue 13):
//! a module using the Wasm 3.0 features a current toolchain emits runs; a job with a folder of
//! inputs and a standard input file gets both; a declared output the program did not write
//! shows in its outcome; a job asking for more than any node allows tells its author why it
//! waits; a module that takes longer to compile than its time limit plus the lookup's answer
//! margin is answered once, with no job lost; the lookup's panel counts a non-zero exit as
//! an answer; `rjs-sign answers --require-exit-zero` says so in its exit status.
//!
//! One grid for all of it, in a private network namespace ([`netns::isolated_child`]). Needs
//! the binaries and the sample jobs (`scripts/test.sh` builds both).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rjs_harness::grid::{GridOptions, LocalGrid, NodeOptions, job_copy};
use rjs_harness::wait::poll_until;
use rjs_harness::{modules, netns, paths};
use rjs_signer::answer::{AnswerLimits, verify_answer};
use rjs_wire::api::JobState;

const REAL_PROGRAMS: &str = "real_programs_run_on_the_grid_and_are_told_straight";

/// The lookup's margin over a job's time limit, cut from 30 s so that a module compiling for
/// a few seconds outlasts `time_ms + margin` here as a big one does in real life.
const ANSWER_MARGIN: &str = "2s";
/// The slow module: about this much code (≈ 4–8 s to compile on 2 cores, generated in ms).
const SLOW_MODULE_BYTES: usize = 8 << 20;

/// A job folder holding `module` as `job.wasm` with the given manifest fields.
fn module_job(dir: &Path, name: &str, module: &[u8], extra: serde_json::Value) -> PathBuf {
    let to = dir.join(name);
    std::fs::create_dir_all(&to).unwrap();
    std::fs::write(to.join("job.wasm"), module).unwrap();
    let mut manifest = serde_json::json!({"format": 1, "name": name, "entry": "job.wasm"});
    for (k, v) in extra.as_object().unwrap() {
        manifest[k] = v.clone();
    }
    std::fs::write(to.join("manifest.json"), manifest.to_string()).unwrap();
    to
}

/// `rjs-sign ARGS` against the grid's web server as its author: (exit status, stdout+stderr).
fn rjs_sign(grid: &LocalGrid, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(paths::bin("rjs-sign"))
        .args(args)
        .arg("--server")
        .arg(grid.webserver_url())
        .arg("--ca")
        .arg(grid.webserver_ca())
        .arg("--key")
        .arg(grid.author_key_path())
        .env("RJS_HOME", grid.dir().join("author-home"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn real_programs_run_on_the_grid_and_are_told_straight() {
    if !netns::isolated_child(REAL_PROGRAMS, Duration::from_secs(240)) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut opts = GridOptions::new(dir.path().join("grid"));
    opts.nodes = 1;
    opts.slots_per_node = 2;
    opts.node_options = vec![NodeOptions {
        mflops: Some(1000.0),
        ..NodeOptions::default()
    }];
    opts.lookup_args = vec!["--answer-margin".into(), ANSWER_MARGIN.into()];
    let mut grid = LocalGrid::start(opts).unwrap_or_else(|e| panic!("starting the grid: {e:#}"));
    let jobs_dir = dir.path().join("jobs");

    // 1. A module built as current toolchains build them: exception handling, a tail call,
    //    two memories, SIMD. Exit 42 is its answer, not a failure.
    let modern = module_job(
        &jobs_dir,
        "modern",
        &modules::modern_command(),
        serde_json::json!({}),
    );
    let modern = grid.upload(&grid.pack(&modern).unwrap()).unwrap();

    // 2. wordcount: a folder of inputs, a standard input file, $TMPDIR, a declared output.
    let wordcount = grid
        .upload(&grid.pack(&paths::sample("wordcount")).unwrap())
        .unwrap();
    // The same program declaring an output it never writes.
    let promised = jobs_dir.join("wordcount-promised");
    job_copy(&paths::sample("wordcount"), &promised, |m| {
        m.insert("name".into(), "promised".into());
        m.insert(
            "outputs".into(),
            serde_json::json!(["counts.txt", "summary.json"]),
        );
    })
    .unwrap();
    let promised = grid.upload(&grid.pack(&promised).unwrap()).unwrap();

    // 3. More memory than any node allows (nodes accept 1 GiB by default).
    let greedy = module_job(
        &jobs_dir,
        "greedy",
        &rjs_signer::wasm::empty_command(&[]),
        serde_json::json!({"limits": {"memory_bytes": 2u64 << 30}}),
    );
    let greedy = grid.upload(&grid.pack(&greedy).unwrap()).unwrap();

    // 4. A module that compiles for longer than time_ms + the lookup's answer margin.
    let t = Instant::now();
    let slow_module = modules::slow_to_compile(SLOW_MODULE_BYTES);
    println!(
        "slow module: {} bytes generated in {:?}",
        slow_module.len(),
        t.elapsed()
    );
    let slow = module_job(
        &jobs_dir,
        "slow",
        &slow_module,
        serde_json::json!({"tasks": 2, "limits": {"time_ms": 1000}}),
    );
    let slow_started = Instant::now();
    let slow = grid.upload(&grid.pack(&slow).unwrap()).unwrap();
    // While it compiles, the lab admin sees so (`rjs-lookup why`).
    let compiling = poll_until(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            slow.jobs
                .iter()
                .map(|j| grid.why(j.id).map(|w| w.why).unwrap_or_default())
                .find(|w| w.contains("compiling its"))
        },
        Option::is_some,
        |_| {
            format!(
                "the lookup never said a slow job was compiling\n{}",
                grid.log_tails()
            )
        },
    );
    println!("rjs-lookup why, while it compiles: {}", compiling.unwrap());

    // -- The modern module answered exit 42, and the panel counts it as an answer.
    let jobs = grid.wait_final(&modern.bundle_id, 1, Duration::from_secs(60));
    assert_eq!(jobs[0].state, JobState::Done, "{jobs:?}");
    assert_eq!(jobs[0].outcome.as_deref(), Some("exit 42"), "{jobs:?}");
    let answer = grid.api().answer_bytes(jobs[0].id).unwrap();
    let v = verify_answer(&answer, &AnswerLimits::default()).unwrap();
    assert_eq!(v.stdout(), b"caught\n");

    // -- wordcount read its stdin and every file of its folder; its temporary file stayed
    //    behind on the node.
    let jobs = grid.wait_final(&wordcount.bundle_id, 1, Duration::from_secs(60));
    assert_eq!(jobs[0].outcome.as_deref(), Some("exit 0"), "{jobs:?}");
    let v = verify_answer(
        &grid.api().answer_bytes(jobs[0].id).unwrap(),
        &AnswerLimits::default(),
    )
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(v.stdout()),
        "3 files, 63 words read; the=9 sea=2 wind=2\n"
    );
    let files: Vec<(&str, &[u8])> = v
        .out_files()
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    assert_eq!(files, [("counts.txt", &b"the 9\nsea 2\nwind 2\n"[..])]);
    assert!(v.result().missing_outputs.is_empty());

    // -- The declared output it did not write: in the outcome, result.json and status.
    let jobs = grid.wait_final(&promised.bundle_id, 1, Duration::from_secs(60));
    assert_eq!(
        jobs[0].outcome.as_deref(),
        Some("exit 0, missing output: summary.json"),
        "{jobs:?}"
    );
    let v = verify_answer(
        &grid.api().answer_bytes(jobs[0].id).unwrap(),
        &AnswerLimits::default(),
    )
    .unwrap();
    assert_eq!(v.result().missing_outputs, ["summary.json"]);
    let (code, text) = rjs_sign(&grid, &["status", "--bundle", &promised.bundle_id]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("exit 0, missing output: summary.json"),
        "{text}"
    );

    // -- The greedy job: every node refused it for its limits, and its author hears why.
    let why = poll_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || grid.api().jobs(Some(&greedy.bundle_id)).unwrap().jobs,
        |jobs| jobs.first().is_some_and(|j| j.waiting.is_some()),
        |jobs| {
            format!(
                "no reason reached the author: {jobs:?}\n{}",
                grid.log_tails()
            )
        },
    );
    let reason = why[0].waiting.clone().unwrap();
    println!("greedy job waits: {reason}");
    assert!(
        reason.contains("because the job exceeds their limits") && reason.contains("memory"),
        "{reason}"
    );
    let (code, text) = rjs_sign(&grid, &["status", "--bundle", &greedy.bundle_id]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("waiting: Refused by 1 node"), "{text}");

    // -- The slow module: answered once per task, nothing lost, compiled once on the node.
    let jobs = grid.wait_final(&slow.bundle_id, 2, Duration::from_secs(150));
    let took = slow_started.elapsed();
    for j in &jobs {
        assert_eq!(
            (j.state, j.outcome.as_deref(), j.attempts),
            (JobState::Done, Some("exit 0"), 0),
            "{jobs:?}\n{}",
            grid.log_tails()
        );
    }
    let status = grid.lookup_status().unwrap();
    println!(
        "figure: slow module ({} MB) answered {:.1} s after upload (time_ms 1000 + margin \
         {ANSWER_MARGIN}); lookup: {} answers ({}), {} lost",
        SLOW_MODULE_BYTES >> 20,
        took.as_secs_f64(),
        status.answers_total,
        status.answers.line(),
        status.lost_total
    );
    assert!(
        took > Duration::from_secs(3),
        "the module compiled in {took:?}: too fast to show anything; make it bigger"
    );
    assert_eq!(status.lost_total, 0, "{status:?}\n{}", grid.log_tails());
    let lookup_log =
        std::fs::read_to_string(grid.dir().join("logs").join("lookup.log")).unwrap_or_default();
    assert!(!lookup_log.contains("job lost"), "{lookup_log}");

    // -- The panel: every answer counted by how it ended, none as lost.
    let panel = grid.nodes_panel().unwrap();
    let row = &panel.nodes[0];
    assert!(row.answers.exit_other >= 1, "{panel:?}");
    assert!(row.answers.exit_zero >= 4, "{panel:?}");
    assert_eq!(row.lost, 0, "{panel:?}");
    assert!(row.refused >= 1, "the greedy job: {panel:?}");

    // -- answers --wait --require-exit-zero: the modern job's exit 42 makes it exit 1.
    let out = dir.path().join("answers");
    let out = out.to_str().unwrap();
    let answers = |bundle: &str| {
        rjs_sign(
            &grid,
            &[
                "answers",
                "--wait",
                "--timeout",
                "60",
                "-o",
                out,
                "--bundle",
                bundle,
                "--require-exit-zero",
            ],
        )
    };
    let (code, text) = answers(&modern.bundle_id);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("--require-exit-zero"), "{text}");
    let (code, text) = answers(&wordcount.bundle_id);
    assert_eq!(code, Some(0), "{text}");

    grid.stop().unwrap();
}
