//! Answer archives (`docs/answer-format.md`): build → verify round trips, every refusal
//! class, domain separation from bundles in both directions, byte flips, and the
//! `rjs-sign verify-answer` command through the real binary.

mod common;

use std::fs;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{
    Part, assert_exit, assert_starts, assert_stdout_has, explode, flip_is_refused, flipped, key,
    listing, noise, relayout, rjs_sign, sign_parts_as, stdout, temp_file, valid_bundle,
};
use proptest::prelude::*;
use rjs_signer::answer::{
    ANSWER_DOMAIN, AnswerError, AnswerLimits, Ending, LimitKind, MAX_MESSAGE, MAX_OUT_FILES,
    MAX_SUMMARY, RESULT, ResultDoc, STDERR, STDOUT, VerifiedAnswer, build_answer, clip_message,
    verify_answer,
};
use rjs_signer::bundle::{BUNDLE_DOMAIN, SignatureDoc, hex};
use rjs_signer::paths::SIGNATURE;
use rjs_signer::{BundleBuilder, KeyPair, Limits, VerifyLimits, bundle_id, verify_bytes};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const NODE: &str = "node-1";
const SIGNED_AT: u64 = 1_700_000_100;

fn node_key() -> KeyPair {
    key(7)
}

/// What a node hands to `build_answer`.
#[derive(Clone)]
struct Inputs {
    result: ResultDoc,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    out_files: Vec<(String, Vec<u8>)>,
}

impl Inputs {
    /// Sets the result's sizes from the data (what a node does before building).
    fn fix_sizes(mut self) -> Self {
        self.result.stdout_bytes = self.stdout.len() as u64;
        self.result.stderr_bytes = self.stderr.len() as u64;
        self.result.output_bytes = self.out_files.iter().map(|(_, d)| d.len() as u64).sum();
        self
    }

    fn build(&self) -> Result<Vec<u8>, AnswerError> {
        build_answer(
            &self.result,
            &self.stdout,
            &self.stderr,
            &self.out_files,
            &node_key(),
            SIGNED_AT,
        )
    }
}

fn result_doc() -> ResultDoc {
    ResultDoc {
        format: 1,
        bundle_sha256: hex(&bundle_id(&valid_bundle())),
        job_name: "test-job".into(),
        task_index: 3,
        task_count: 8,
        node_id: NODE.into(),
        node_mflops: 1500,
        ending: Ending::Exit { code: 0 },
        limits_hit: vec![],
        limits: Limits::default(),
        started_at: 1_700_000_000,
        finished_at: 1_700_000_002,
        wall_ms: 1234,
        cpu_ms: 1200,
        stdout_bytes: 0,
        stderr_bytes: 0,
        output_bytes: 0,
        missing_outputs: vec![],
    }
}

/// A small answer: two out files (one incompressible, one in a folder and deflated), some
/// stdout, empty stderr.
fn inputs() -> Inputs {
    Inputs {
        result: result_doc(),
        stdout: b"hello from task 3\n".repeat(4),
        stderr: Vec::new(),
        out_files: vec![
            ("tile-3.ppm".into(), noise(200, 3)),
            ("logs/summary.txt".into(), b"summary line\n".repeat(20)),
        ],
    }
    .fix_sizes()
}

fn small_answer() -> &'static [u8] {
    static A: OnceLock<Vec<u8>> = OnceLock::new();
    A.get_or_init(|| {
        let a = inputs().build().unwrap();
        verify(&a).expect("the small answer verifies");
        a
    })
}

fn verify(bytes: &[u8]) -> Result<VerifiedAnswer, AnswerError> {
    verify_answer(bytes, &AnswerLimits::default())
}

#[track_caller]
fn assert_refused_with(
    bytes: &[u8],
    limits: &AnswerLimits,
    rule: &str,
    entry: Option<&str>,
) -> AnswerError {
    let e = match verify_answer(bytes, limits) {
        Ok(a) => panic!(
            "answer accepted, expected {rule} (task {})",
            a.result().task_index
        ),
        Err(e) => e,
    };
    assert_eq!(e.rule(), rule, "wrong rule; error was: {e}");
    if let Some(entry) = entry {
        assert_eq!(e.entry(), Some(entry), "wrong entry; error was: {e}");
    }
    e
}

#[track_caller]
fn assert_refused(bytes: &[u8], rule: &str, entry: Option<&str>) -> AnswerError {
    assert_refused_with(bytes, &AnswerLimits::default(), rule, entry)
}

#[track_caller]
fn assert_build_refused(i: &Inputs, rule: &str) -> AnswerError {
    let e = i.build().expect_err("build_answer should refuse");
    assert_eq!(e.rule(), rule, "wrong rule; error was: {e}");
    e
}

/// Signs parts as the node of the small answer.
fn sign_answer(parts: &[Part]) -> Vec<u8> {
    sign_parts_as(parts, &node_key(), ANSWER_DOMAIN, NODE, SIGNED_AT)
}

/// The entries of the small answer, without the signature entry.
fn answer_parts() -> Vec<Part> {
    let mut parts = explode(small_answer());
    assert_eq!(parts.pop().unwrap().name, SIGNATURE);
    parts
}

/// Parts sorted into canonical order.
fn sorted(mut parts: Vec<Part>) -> Vec<Part> {
    parts.sort_by(|a, b| a.name.cmp(&b.name));
    parts
}

/// The small answer with `result.json` replaced by `json`, correctly signed.
fn with_result_json(json: &[u8]) -> Vec<u8> {
    let parts: Vec<Part> = answer_parts()
        .into_iter()
        .map(|p| {
            if p.name == RESULT {
                Part::stored(RESULT, json)
            } else {
                p
            }
        })
        .collect();
    sign_answer(&parts)
}

/// The small answer with its `result.json` edited as JSON, correctly signed.
fn with_result(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v = serde_json::to_value(&inputs().result).unwrap();
    edit(&mut v);
    with_result_json(&serde_json::to_vec(&v).unwrap())
}

// ---------------------------------------------------------------------------------------
// Round trips

#[test]
fn build_then_verify_gives_back_every_input() {
    let i = inputs();
    let a = verify(small_answer()).unwrap();
    assert_eq!(a.result(), &i.result);
    assert_eq!(ResultDoc::parse(a.result_bytes()).unwrap(), i.result);
    assert_eq!(a.stdout(), &i.stdout[..]);
    assert_eq!(a.stderr(), &i.stderr[..]);
    let mut files = i.out_files.clone();
    files.sort();
    assert_eq!(a.out_files(), &files[..]);
    assert_eq!(a.public_key(), &node_key().public());
    assert_eq!(a.fingerprint(), node_key().public().fingerprint());
    assert_eq!(a.node().name, NODE);
    assert_eq!(a.node().signed_at, SIGNED_AT);
    let names: Vec<&str> = a.entries().iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "out/logs/summary.txt",
            "out/tile-3.ppm",
            RESULT,
            STDERR,
            STDOUT
        ]
    );
}

#[test]
fn build_is_deterministic_whatever_the_order_of_the_files() {
    let mut i = inputs();
    assert_eq!(i.build().unwrap(), small_answer());
    i.out_files.reverse();
    assert_eq!(i.build().unwrap(), small_answer());
}

#[test]
fn the_layout_is_the_canonical_one_and_any_zip_reader_opens_it() {
    use std::io::Read;
    let bytes = small_answer();
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let names: Vec<String> = z.file_names().map(|n| n.unwrap().into_owned()).collect();
    assert_eq!(names.last().map(String::as_str), Some(SIGNATURE));
    let mut s = String::new();
    z.by_name(STDOUT).unwrap().read_to_string(&mut s).unwrap();
    assert_eq!(s.as_bytes(), &inputs().stdout[..]);
    // The signature entry is the bundle's shape: parse it, check the statement's domain.
    let doc: SignatureDoc = serde_json::from_slice(&explode(bytes).pop().unwrap().stored).unwrap();
    assert_eq!(doc.signer_name, NODE);
    assert!(
        doc.statement_in(ANSWER_DOMAIN)
            .starts_with(b"RJS-ANSWER-SIGNATURE-V1\nformat 1\n")
    );
    let sig = B64.decode(&doc.signature).unwrap();
    assert!(
        node_key()
            .public()
            .verify(&doc.statement_in(ANSWER_DOMAIN), &sig)
    );
    assert!(!node_key().public().verify(&doc.statement(), &sig));
}

#[test]
fn result_json_has_the_documented_shape() {
    let mut i = inputs();
    i.result.ending = Ending::Limit {
        limit: LimitKind::Time,
        message: "stopped after 60000 ms".into(),
    };
    i.result.limits_hit = vec![LimitKind::Stdout, LimitKind::Time];
    let a = verify(&i.build().unwrap()).unwrap();
    let v: Value = serde_json::from_slice(a.result_bytes()).unwrap();
    assert_eq!(
        v,
        json!({
            "format": 1,
            "bundle_sha256": i.result.bundle_sha256,
            "job_name": "test-job",
            "task_index": 3,
            "task_count": 8,
            "node_id": "node-1",
            "node_mflops": 1500,
            "ending": {"kind": "limit", "limit": "time", "message": "stopped after 60000 ms"},
            "limits_hit": ["stdout", "time"],
            "limits": {"time_ms": 60000, "memory_bytes": 268435456, "output_bytes": 67108864,
                       "stdout_bytes": 1048576},
            "started_at": 1_700_000_000u64,
            "finished_at": 1_700_000_002u64,
            "wall_ms": 1234,
            "cpu_ms": 1200,
            "stdout_bytes": 72,
            "stderr_bytes": 0,
            "output_bytes": 460,
        })
    );
    assert_eq!(a.result().ending.summary(), "limit: time");
    assert_eq!(a.result().summary(), "limit: time (also hit: stdout)");
}

#[test]
fn the_outcome_summary_names_the_limits_hit() {
    let mut r = result_doc();
    let cases: Vec<(Ending, Vec<LimitKind>, &str)> = vec![
        (Ending::Exit { code: 0 }, vec![], "exit 0"),
        (
            Ending::Exit { code: 3 },
            vec![LimitKind::Output],
            "exit 3 (limit hit: output)",
        ),
        (
            Ending::Exit { code: 0 },
            vec![LimitKind::Stdout, LimitKind::Stderr],
            "exit 0 (limits hit: stdout, stderr)",
        ),
        (
            Ending::Trap {
                message: "unreachable\nexecuted".into(),
            },
            vec![LimitKind::Memory],
            "trap: unreachable executed (limit hit: memory)",
        ),
        (
            Ending::Limit {
                limit: LimitKind::Time,
                message: "stopped".into(),
            },
            vec![LimitKind::Time],
            "limit: time",
        ),
        (
            Ending::Limit {
                limit: LimitKind::Output,
                message: "too much".into(),
            },
            vec![LimitKind::Stdout, LimitKind::Output],
            "limit: output (also hit: stdout)",
        ),
    ];
    for (ending, hit, want) in cases {
        r.ending = ending;
        r.limits_hit = hit;
        r.validate().unwrap();
        assert_eq!(r.summary(), want);
    }
    // Whatever the message and the limits, the line stays within the outcome bound.
    r.ending = Ending::Crash {
        message: "é".repeat(5000),
    };
    r.limits_hit = vec![
        LimitKind::Time,
        LimitKind::Memory,
        LimitKind::Output,
        LimitKind::Stdout,
        LimitKind::Stderr,
    ];
    let s = r.summary();
    assert!(s.len() <= MAX_SUMMARY, "{} bytes: {s}", s.len());
    assert_starts(&s, "crash: éé");
    assert!(
        s.ends_with("… (limits hit: time, memory, output, stdout, stderr)"),
        "{s}"
    );
}

#[test]
fn every_ending_round_trips() {
    for ending in [
        Ending::Exit { code: 10 },
        Ending::Exit { code: -1 },
        Ending::Trap {
            message: clip_message(&"wasm backtrace line\n".repeat(1000)),
        },
        Ending::Limit {
            limit: LimitKind::Memory,
            message: "memory.grow failed".into(),
        },
        Ending::Crash {
            message: "worker died: signal 9".into(),
        },
    ] {
        let mut i = inputs();
        i.result.limits_hit = match &ending {
            Ending::Limit { limit, .. } => vec![*limit],
            _ => vec![],
        };
        i.result.ending = ending.clone();
        let a = verify(&i.build().unwrap()).unwrap();
        assert_eq!(a.result().ending, ending);
    }
    assert_eq!(
        clip_message(&"é".repeat(MAX_MESSAGE)).len(),
        MAX_MESSAGE - 1
    );
    assert!(clip_message(&"x".repeat(MAX_MESSAGE + 1)).ends_with('…'));
    assert_eq!(clip_message("short"), "short");
}

#[test]
fn an_answer_with_nothing_in_it_verifies() {
    let i = Inputs {
        result: result_doc(),
        stdout: vec![],
        stderr: vec![],
        out_files: vec![],
    };
    let a = verify(&i.build().unwrap()).unwrap();
    assert!(a.out_files().is_empty() && a.stdout().is_empty() && a.stderr().is_empty());
}

#[test]
fn large_and_compressible_outputs_round_trip() {
    let mut i = inputs();
    i.out_files = vec![
        ("image.raw".into(), noise(300_000, 9)),
        // All zeros deflates beyond the 100:1 ratio: the writer stores it.
        ("zeros.bin".into(), vec![0; 200_000]),
        ("text.txt".into(), b"0123456789abcdef\n".repeat(10_000)),
    ];
    i.stderr = b"warning\n".repeat(1000);
    let i = i.fix_sizes();
    let a = verify(&i.build().unwrap()).unwrap();
    let mut files = i.out_files.clone();
    files.sort();
    assert_eq!(a.out_files(), &files[..]);
    assert_eq!(a.stderr(), &i.stderr[..]);
}

// ---------------------------------------------------------------------------------------
// Domain separation, both ways

#[test]
fn a_bundle_is_not_an_answer() {
    // A real bundle signed by an author: the signature is over the bundle statement.
    assert_refused(&valid_bundle(), "bad-signature", Some(SIGNATURE));
    // Even one shaped exactly like an answer, signed by the node's key as a bundle.
    let a = verify(small_answer()).unwrap();
    let mut b = BundleBuilder::new();
    b.add(RESULT, a.result_bytes().to_vec()).unwrap();
    b.add(STDOUT, a.stdout().to_vec()).unwrap();
    b.add(STDERR, a.stderr().to_vec()).unwrap();
    for (path, data) in a.out_files() {
        b.add(&format!("out/{path}"), data.clone()).unwrap();
    }
    let bundle_signed = b.sign(&node_key(), NODE, SIGNED_AT).unwrap();
    assert_refused(&bundle_signed, "bad-signature", Some(SIGNATURE));
    // The same parts under the answer domain verify: only the domain differs.
    assert!(verify(&sign_answer(&answer_parts())).is_ok());
}

#[test]
fn an_answer_is_not_a_bundle() {
    let limits = VerifyLimits::default();
    let e = verify_bytes(small_answer(), &limits).unwrap_err();
    assert_eq!(e.rule(), "bad-signature", "{e}");
    // A bundle's entries signed by its author's key under the answer domain.
    let mut parts = explode(&valid_bundle());
    parts.pop();
    let answer_signed = sign_parts_as(&parts, &key(1), ANSWER_DOMAIN, common::SIGNER, SIGNED_AT);
    let e = verify_bytes(&answer_signed, &limits).unwrap_err();
    assert_eq!(e.rule(), "bad-signature", "{e}");
    // Control: under the bundle domain it verifies.
    let bundle_signed = sign_parts_as(&parts, &key(1), BUNDLE_DOMAIN, common::SIGNER, SIGNED_AT);
    assert!(verify_bytes(&bundle_signed, &limits).is_ok());
}

#[test]
fn a_signature_under_any_other_domain_is_refused() {
    for domain in [
        BUNDLE_DOMAIN,
        "RJS-ANSWER-SIGNATURE-V2",
        "RJS-ANSWER-SIGNATURE-V1 ",
        "",
    ] {
        let b = sign_parts_as(&answer_parts(), &node_key(), domain, NODE, SIGNED_AT);
        assert_refused(&b, "bad-signature", Some(SIGNATURE));
    }
}

// ---------------------------------------------------------------------------------------
// Refusals: the archive

#[test]
fn a_changed_byte_in_an_entry_is_refused() {
    for target in [STDOUT, RESULT, "out/tile-3.ppm", "out/logs/summary.txt"] {
        let mut parts = explode(small_answer());
        let p = parts.iter_mut().find(|p| p.name == target).unwrap();
        p.stored[0] ^= 0x20;
        assert_refused(&relayout(&parts), "changed-entry", Some(target));
    }
}

#[test]
fn an_entry_the_signature_does_not_cover_is_refused() {
    let mut parts = explode(small_answer());
    let sig = parts.pop().unwrap();
    parts.push(Part::stored("out/extra.txt", b"slipped in"));
    let mut parts = sorted(parts);
    parts.push(sig);
    assert_refused(&relayout(&parts), "uncovered-entry", Some("out/extra.txt"));
}

#[test]
fn a_signed_entry_that_was_removed_is_refused() {
    let parts: Vec<Part> = explode(small_answer())
        .into_iter()
        .filter(|p| p.name != "out/tile-3.ppm")
        .collect();
    assert_refused(&relayout(&parts), "missing-entry", Some("out/tile-3.ppm"));
}

#[test]
fn an_unsigned_answer_is_refused_and_says_answer() {
    let e = assert_refused(&relayout(&answer_parts()), "unsigned", Some(SIGNATURE));
    assert!(e.to_string().contains("answer is unsigned"), "{e}");
    let e = assert_refused(b"not a zip at all", "not-an-answer-zip", None);
    assert!(e.to_string().contains("not a valid answer archive"), "{e}");
    let mut trailing = small_answer().to_vec();
    trailing.push(0);
    assert_refused(&trailing, "not-an-answer-zip", None);
}

#[test]
fn a_key_other_than_the_signers_is_refused() {
    // Signed by one key, the entry names another.
    let mut parts = explode(&sign_parts_as(
        &answer_parts(),
        &key(8),
        ANSWER_DOMAIN,
        NODE,
        SIGNED_AT,
    ));
    let mut doc: SignatureDoc = serde_json::from_slice(&parts.last().unwrap().stored).unwrap();
    doc.public_key = node_key().public().to_base64();
    doc.fingerprint = node_key().public().fingerprint().to_string();
    *parts.last_mut().unwrap() = Part::stored(SIGNATURE, &serde_json::to_vec(&doc).unwrap());
    assert_refused(&relayout(&parts), "bad-signature", Some(SIGNATURE));
}

#[test]
fn a_corrupt_deflate_stream_is_refused_after_the_signature() {
    let mut parts = answer_parts();
    let p = parts
        .iter_mut()
        .find(|p| p.name == "out/logs/summary.txt")
        .unwrap();
    p.crc32 ^= 1; // signed, but not the content's CRC
    assert_refused(
        &sign_answer(&parts),
        "corrupt-entry",
        Some("out/logs/summary.txt"),
    );
}

#[test]
fn limits_are_checked_before_anything_is_inflated() {
    let b = small_answer();
    let d = AnswerLimits::default();
    let e = assert_refused_with(
        b,
        &AnswerLimits {
            max_answer_bytes: b.len() as u64 - 1,
            ..d
        },
        "answer-too-large",
        None,
    );
    assert!(e.to_string().starts_with("answer is"), "{e}");
    assert!(
        verify_answer(
            b,
            &AnswerLimits {
                max_answer_bytes: b.len() as u64,
                ..d
            }
        )
        .is_ok()
    );
    assert_refused_with(
        b,
        &AnswerLimits {
            max_entries: 5,
            ..d
        },
        "too-many-entries",
        None,
    );
    assert_refused_with(
        b,
        &AnswerLimits {
            max_total_bytes: 500,
            ..d
        },
        "too-many-bytes",
        None,
    );
    // A signed bomb: 10 MB of zeros deflated ~1000:1.
    let mut parts = answer_parts();
    parts.push(Part::deflated("out/bomb.bin", &vec![0u8; 10_000_000]));
    let mut parts = sorted(parts);
    for p in &mut parts {
        if p.name == RESULT {
            let mut r = inputs().result;
            r.output_bytes += 10_000_000;
            *p = Part::stored(RESULT, &serde_json::to_vec(&r).unwrap());
        }
    }
    let bomb = sign_answer(&parts);
    assert_refused(&bomb, "compression-ratio", Some("out/bomb.bin"));
    let lenient = AnswerLimits {
        max_ratio: 10_000,
        ..d
    };
    assert_eq!(
        verify_answer(&bomb, &lenient).unwrap().out_files()[0]
            .1
            .len(),
        10_000_000
    );
}

#[test]
fn names_that_escape_are_refused() {
    for (name, rule) in [
        ("out/../../etc/passwd", "parent-dir-path"),
        ("../x", "parent-dir-path"),
        ("/etc/passwd", "absolute-path"),
        ("out\\..\\x", "backslash-path"),
        ("C:x", "drive-letter-path"),
        ("out//x", "bad-name"),
        ("out/./x", "bad-name"),
        ("out/x y", "bad-name"),
    ] {
        let mut parts = answer_parts();
        parts.push(Part::stored(name, b"x"));
        let b = sign_answer(&sorted(parts));
        assert_refused(&b, rule, Some(name));
    }
}

// ---------------------------------------------------------------------------------------
// Refusals: what an answer holds

#[test]
fn an_answer_without_result_stdout_or_stderr_is_refused() {
    for missing in [RESULT, STDOUT, STDERR] {
        let parts: Vec<Part> = answer_parts()
            .into_iter()
            .filter(|p| p.name != missing)
            .collect();
        assert_refused(&sign_answer(&parts), "incomplete-answer", Some(missing));
    }
}

#[test]
fn an_entry_that_is_not_part_of_an_answer_is_refused() {
    for extra in [
        "notes.txt",
        "manifest.json",
        "OUT/x",
        "Result.json.bak",
        "output/x",
    ] {
        let mut parts = answer_parts();
        parts.push(Part::stored(extra, b"x"));
        assert_refused(
            &sign_answer(&sorted(parts)),
            "undeclared-entry",
            Some(extra),
        );
    }
}

#[test]
fn a_file_inside_another_file_is_refused() {
    for (file, inner) in [("out/a", "out/a/b"), ("out/A", "out/a/b/c")] {
        let mut parts = answer_parts();
        parts.push(Part::stored(file, b""));
        parts.push(Part::stored(inner, b""));
        let e = assert_refused(&sign_answer(&sorted(parts)), "path-conflict", Some(inner));
        assert!(e.to_string().contains(file), "{e}");
    }
}

#[test]
fn a_bad_result_json_is_refused() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{".to_vec(), "invalid-result-json"),
        (b"".to_vec(), "invalid-result-json"),
        (b"[]".to_vec(), "invalid-result-json"),
        (
            with_result_value(|v| v["surprise"] = json!(1)),
            "invalid-result-json",
        ),
        (
            with_result_value(|v| {
                v.as_object_mut().unwrap().remove("cpu_ms");
            }),
            "invalid-result-json",
        ),
        (
            with_result_value(|v| v["ending"] = json!({"kind": "exit", "code": 0, "x": 1})),
            "invalid-result-json",
        ),
        (
            with_result_value(|v| v["ending"] = json!({"kind": "vanished"})),
            "invalid-result-json",
        ),
        (
            with_result_value(|v| v["limits_hit"] = json!(["time", "patience"])),
            "invalid-result-json",
        ),
        (
            with_result_value(|v| v["node_mflops"] = json!(1500.5)),
            "invalid-result-json",
        ),
        (
            with_result_value(|v| v["format"] = json!(2)),
            "unknown-format-version",
        ),
        (
            with_result_value(|v| {
                v["format"] = json!(2);
                v["new_field"] = json!(true);
            }),
            "unknown-format-version",
        ),
        (
            with_result_value(|v| v["task_index"] = json!(8)),
            "invalid-result",
        ),
        (
            with_result_value(|v| v["task_count"] = json!(0)),
            "invalid-result",
        ),
        (
            with_result_value(|v| v["bundle_sha256"] = json!("AB".repeat(32))),
            "invalid-result",
        ),
        (
            with_result_value(|v| v["bundle_sha256"] = json!("ab")),
            "invalid-result",
        ),
        (
            with_result_value(|v| v["job_name"] = json!("../job")),
            "invalid-result",
        ),
        (
            with_result_value(|v| v["node_id"] = json!("node 1")),
            "invalid-result",
        ),
        (
            with_result_value(|v| v["finished_at"] = json!(1)),
            "invalid-result",
        ),
        (
            with_result_value(|v| v["limits_hit"] = json!(["time", "time"])),
            "invalid-result",
        ),
        (
            with_result_value(|v| {
                v["ending"] = json!({"kind": "limit", "limit": "time", "message": "stopped"});
            }),
            "invalid-result",
        ),
        (
            with_result_value(|v| {
                v["ending"] = json!({"kind": "trap", "message": "x".repeat(MAX_MESSAGE + 1)});
            }),
            "invalid-result",
        ),
        (
            with_result_value(|v| v["limits"]["time_ms"] = json!(0)),
            "invalid-result",
        ),
        (
            with_result_value(|v| v["limits"]["stdout_bytes"] = json!(10)),
            "invalid-result",
        ),
        (
            format!("{{\"x\":\"{}\"}}", "a".repeat(65 * 1024)).into_bytes(),
            "invalid-result",
        ),
    ];
    for (json, rule) in cases {
        let b = with_result_json(&json);
        assert_refused(&b, rule, Some(RESULT));
    }
    // A key given twice is refused, not "last one wins".
    let mut text = String::from_utf8(serde_json::to_vec(&inputs().result).unwrap()).unwrap();
    text.insert_str(1, "\"node_id\":\"node-2\",");
    assert_refused(
        &with_result_json(text.as_bytes()),
        "invalid-result-json",
        Some(RESULT),
    );
}

/// `result.json` of the small answer edited as JSON (bytes).
fn with_result_value(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v = serde_json::to_value(&inputs().result).unwrap();
    edit(&mut v);
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn a_result_json_that_disagrees_with_the_archive_is_refused() {
    for (field, value) in [
        ("stdout_bytes", json!(71)),
        ("stderr_bytes", json!(1)),
        ("output_bytes", json!(461)),
        ("node_id", json!("node-2")),
    ] {
        let b = with_result(|v| v[field] = value.clone());
        let e = assert_refused(&b, "result-mismatch", Some(RESULT));
        assert!(e.to_string().contains(field), "{e}");
    }
    // The result names the node that signed it: a node cannot sign in another's name.
    let b = sign_parts_as(
        &answer_parts(),
        &node_key(),
        ANSWER_DOMAIN,
        "node-2",
        SIGNED_AT,
    );
    assert_refused(&b, "result-mismatch", Some(RESULT));
    // A signer name that is no node id at all.
    let b = sign_parts_as(
        &answer_parts(),
        &node_key(),
        ANSWER_DOMAIN,
        "node 1",
        SIGNED_AT,
    );
    assert_refused(&b, "malformed-signature-entry", Some(SIGNATURE));
}

#[test]
fn a_result_json_in_other_valid_json_forms_is_accepted() {
    // The signature covers result.json's bytes, not one serialisation of them.
    let compact = serde_json::to_vec(&inputs().result).unwrap();
    assert_eq!(
        verify(&with_result_json(&compact)).unwrap().result(),
        &inputs().result
    );
}

// ---------------------------------------------------------------------------------------
// What build_answer refuses

#[test]
fn build_refuses_out_paths_that_break_the_name_rules() {
    for (path, rule) in [
        ("../x", "parent-dir-path"),
        ("a/../../x", "parent-dir-path"),
        ("/etc/passwd", "absolute-path"),
        ("a\\b", "backslash-path"),
        ("C:x", "drive-letter-path"),
        ("", "bad-name"),
        ("a//b", "bad-name"),
        ("dir/", "bad-name"),
        ("a b", "bad-name"),
        ("é", "bad-name"),
    ] {
        let mut i = inputs();
        i.out_files.push((path.into(), b"x".to_vec()));
        let e = assert_build_refused(&i.fix_sizes(), rule);
        assert_eq!(e.entry(), Some(format!("out/{path}").as_str()));
    }
    // 251 bytes fit under out/, 252 do not.
    let mut i = inputs();
    i.out_files.push(("x".repeat(251), b"x".to_vec()));
    assert!(i.fix_sizes().build().is_ok());
    let mut i = inputs();
    i.out_files.push(("x".repeat(252), b"x".to_vec()));
    assert_build_refused(&i.fix_sizes(), "bad-name");
}

#[test]
fn build_refuses_duplicates_and_files_inside_files() {
    let mut i = inputs();
    i.out_files.push(("Tile-3.PPM".into(), b"x".to_vec()));
    assert_build_refused(&i.fix_sizes(), "duplicate-name");
    let mut i = inputs();
    i.out_files.push(("tile-3.ppm/inner".into(), b"x".to_vec()));
    assert_build_refused(&i.fix_sizes(), "path-conflict");
}

#[test]
fn build_refuses_more_files_than_an_answer_holds() {
    let files = |n: usize| -> Vec<(String, Vec<u8>)> {
        (0..n).map(|k| (format!("f{k:04}"), vec![b'x'])).collect()
    };
    let mut i = inputs();
    i.out_files = files(MAX_OUT_FILES);
    let a = verify(&i.fix_sizes().build().unwrap()).unwrap();
    assert_eq!(a.out_files().len(), MAX_OUT_FILES);
    let mut i = inputs();
    i.out_files = files(MAX_OUT_FILES + 1);
    assert_build_refused(&i.fix_sizes(), "too-many-entries");
}

#[test]
fn build_refuses_a_result_that_does_not_validate_or_agree() {
    let mut i = inputs();
    i.result.task_index = 8;
    assert_build_refused(&i, "invalid-result");
    let mut i = inputs();
    i.result.node_id = "node/1".into();
    assert_build_refused(&i, "invalid-result");
    let mut i = inputs();
    i.result.ending = Ending::Trap {
        message: "x".repeat(MAX_MESSAGE + 1),
    };
    assert_build_refused(&i, "invalid-result");
    let mut i = inputs();
    i.result.ending = Ending::Limit {
        limit: LimitKind::Memory,
        message: String::new(),
    };
    assert_build_refused(&i, "invalid-result");
    // More stdout kept than the limit allows.
    let mut i = inputs();
    i.result.limits.stdout_bytes = 10;
    assert_build_refused(&i, "invalid-result");
    // More out bytes than the limit allows.
    let mut i = inputs();
    i.result.limits.output_bytes = 100;
    assert_build_refused(&i, "invalid-result");
    // Sizes that disagree with the data.
    let mut i = inputs();
    i.result.stdout_bytes += 1;
    assert_build_refused(&i, "result-mismatch");
    let mut i = inputs();
    i.out_files.pop();
    assert_build_refused(&i, "result-mismatch");
}

// ---------------------------------------------------------------------------------------
// Byte flips

#[test]
fn every_byte_flipped_with_0x01_is_refused() {
    let b = small_answer();
    for at in 0..b.len() {
        assert!(
            verify(&flipped(b, at, 0x01)).is_err(),
            "flip at {at} accepted"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_single_byte_flip_of_an_answer_is_refused(
        pos in any::<prop::sample::Index>(),
        xor in 1..=255u8,
    ) {
        flip_is_refused(small_answer(), pos, xor, |b| verify(b).is_ok())?;
    }
}

// ---------------------------------------------------------------------------------------
// rjs-sign verify-answer

/// Writes the small answer (or `bytes`) into a fresh folder; returns the folder and path.
fn answer_file(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    temp_file("task-3.zip", bytes)
}

#[test]
fn cli_verify_answer_prints_one_ok_line() {
    let (_d, p) = answer_file(small_answer());
    let o = rjs_sign(&[&"verify-answer", &p]);
    assert_exit(&o, 0);
    let id = hex(&bundle_id(&valid_bundle()));
    assert_eq!(
        stdout(&o),
        format!(
            "OK task 3 of {} by node node-1 ({}): exit 0, 1234 ms, 2 files\n",
            &id[..12],
            node_key().public().fingerprint()
        )
    );
    assert!(o.stderr.is_empty());

    // A limit hit that did not end the task is on the OK line too.
    let mut i = inputs();
    i.result.ending = Ending::Exit { code: 3 };
    i.result.limits_hit = vec![LimitKind::Output];
    let (_d, p) = answer_file(&i.build().unwrap());
    let o = rjs_sign(&[&"verify-answer", &p]);
    assert_exit(&o, 0);
    assert_stdout_has(&o, "): exit 3 (limit hit: output), 1234 ms, 2 files\n");
}

#[test]
fn cli_verify_answer_checks_the_node_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, p) = answer_file(small_answer());
    let node_pub = dir.path().join("node-1.pub");
    fs::write(&node_pub, node_key().public().to_line("node-1")).unwrap();
    let other = key(9).public().to_base64();
    assert_exit(&rjs_sign(&[&"verify-answer", &p, &"--node", &node_pub]), 0);
    assert_exit(
        &rjs_sign(&[
            &"verify-answer",
            &p,
            &"--node",
            &other,
            &"--node",
            &node_pub,
        ]),
        0,
    );
    let o = rjs_sign(&[&"verify-answer", &p, &"--node", &other]);
    assert_exit(&o, 1);
    let out = stdout(&o);
    assert!(
        out.starts_with("REFUSED untrusted-node: signed by node node-1 ("),
        "{out}"
    );
    assert_eq!(out.lines().count(), 1);
    let o = rjs_sign(&[&"verify-answer", &p, &"--node", &other, &"--json"]);
    assert_exit(&o, 1);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (v["valid"].as_bool(), v["rule"].as_str()),
        (Some(false), Some("untrusted-node"))
    );
    // A --node value that is no key at all is an error, not a refusal.
    assert_exit(
        &rjs_sign(&[&"verify-answer", &p, &"--node", &"not-a-key"]),
        2,
    );
}

#[test]
fn cli_verify_answer_refuses_with_one_line_naming_the_rule() {
    let mut flipped = small_answer().to_vec();
    let at = flipped.len() / 3;
    flipped[at] ^= 0x40;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            valid_bundle(),
            "REFUSED bad-signature (rjs-signature.json): ",
        ),
        (b"junk".to_vec(), "REFUSED not-an-answer-zip: "),
        (
            with_result(|v| v["stdout_bytes"] = json!(1)),
            "REFUSED result-mismatch (result.json): ",
        ),
        (flipped, "REFUSED "),
    ];
    for (bytes, prefix) in cases {
        let (_d, p) = answer_file(&bytes);
        let o = rjs_sign(&[&"verify-answer", &p]);
        assert_exit(&o, 1);
        let out = stdout(&o);
        assert_starts(&out, prefix);
        assert_eq!(out.lines().count(), 1, "{out}");
        let o = rjs_sign(&[&"verify-answer", &p, &"--json"]);
        assert_exit(&o, 1);
        let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(v["valid"], json!(false));
        let rule = v["rule"].as_str().unwrap();
        let said = match v["entry"].as_str() {
            Some(entry) => format!("REFUSED {rule} ({entry}): "),
            None => format!("REFUSED {rule}: "),
        };
        assert_starts(&out, &said);
    }
}

#[test]
fn cli_verify_answer_other_errors_exit_2() {
    let o = rjs_sign(&[&"verify-answer", &"/nonexistent/task-0.zip"]);
    assert_exit(&o, 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("reading the answer"));
    assert!(o.stdout.is_empty());
}

#[test]
fn cli_verify_answer_json_gives_the_result_and_the_files() {
    let (_d, p) = answer_file(small_answer());
    let o = rjs_sign(&[&"verify-answer", &p, &"--json"]);
    assert_exit(&o, 0);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["valid"], json!(true));
    assert_eq!(v["result"], serde_json::to_value(&inputs().result).unwrap());
    assert_eq!(
        v["answer_sha256"],
        json!(hex(&Sha256::digest(small_answer())))
    );
    assert_eq!(v["node"]["id"], json!(NODE));
    assert_eq!(
        v["node"]["fingerprint"],
        json!(node_key().public().fingerprint().to_string())
    );
    let summary = b"summary line\n".repeat(20);
    assert_eq!(
        v["files"],
        json!([
            {"path": "logs/summary.txt", "size": summary.len(), "sha256": hex(&Sha256::digest(&summary))},
            {"path": "tile-3.ppm", "size": 200, "sha256": hex(&Sha256::digest(noise(200, 3)))},
        ])
    );
    assert_eq!(v["extracted_to"], Value::Null);
}

#[test]
fn cli_verify_answer_extracts_everything_or_nothing() {
    let (d, p) = answer_file(small_answer());
    let dest = d.path().join("task-3");
    let o = rjs_sign(&[&"verify-answer", &p, &"--extract", &dest]);
    assert_exit(&o, 0);
    assert!(stdout(&o).ends_with(&format!("; extracted to {}\n", dest.display())));
    let i = inputs();
    assert_eq!(fs::read(dest.join(STDOUT)).unwrap(), i.stdout);
    assert_eq!(fs::read(dest.join(STDERR)).unwrap(), i.stderr);
    assert_eq!(
        ResultDoc::parse(&fs::read(dest.join(RESULT)).unwrap()).unwrap(),
        i.result
    );
    for (path, data) in &i.out_files {
        assert_eq!(&fs::read(dest.join("out").join(path)).unwrap(), data);
    }
    assert_eq!(listing(&dest), ["out", RESULT, STDERR, STDOUT]);
    // The same folder again: it is not empty, so nothing is written (exit 2), no leftovers.
    let before = listing(d.path());
    let o = rjs_sign(&[&"verify-answer", &p, &"--extract", &dest]);
    assert_exit(&o, 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not empty"));
    assert_eq!(listing(d.path()), before);
    // An existing empty folder is filled.
    let empty = d.path().join("empty");
    fs::create_dir(&empty).unwrap();
    assert_exit(&rjs_sign(&[&"verify-answer", &p, &"--extract", &empty]), 0);
    assert_eq!(listing(&empty), ["out", RESULT, STDERR, STDOUT]);
    // A refused answer extracts nothing.
    let (d2, bad) = answer_file(&with_result(|v| v["output_bytes"] = json!(0)));
    let dest2 = d2.path().join("never");
    assert_exit(
        &rjs_sign(&[&"verify-answer", &bad, &"--extract", &dest2]),
        1,
    );
    assert!(!dest2.exists());
    // Nor does an untrusted one.
    let other = key(9).public().to_base64();
    let o = rjs_sign(&[
        &"verify-answer",
        &p,
        &"--node",
        &other,
        &"--extract",
        &dest2,
    ]);
    assert_exit(&o, 1);
    assert!(!dest2.exists());
    assert_eq!(listing(d2.path()), ["task-3.zip"]);
}

#[test]
fn cli_verify_answer_extract_json_names_the_folder() {
    let (d, p) = answer_file(small_answer());
    let dest = d.path().join("x");
    let o = rjs_sign(&[&"verify-answer", &p, &"--json", &"--extract", &dest]);
    assert_exit(&o, 0);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["extracted_to"], json!(dest));
}
