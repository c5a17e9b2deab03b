//! Every misbehaving sample (`samples/evil/`: loop, membomb, escape, output, recurse) through
//! the real binary, both ways a job reaches a node: `rjs-compute run BUNDLE --task 0 -o
//! ANSWER` and an offer to `rjs-compute serve` over mutual TLS. Each ends in an answer the
//! signer library verifies, whose `result.json` names how it ended (the limit and its reason,
//! or the trap); a `hello` right after is answered normally; the node's scratch directory is
//! empty afterwards and nothing else in its data directory changed beyond the caches (the
//! compiled module, the bundle); `/var/tmp/rjs-evil-escaped` never appears.
//!
//! Needs the binaries (`cargo build --workspace --bins`) and the samples (`samples/build.sh`).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rjs_e2e::node::{ComputeNode, NodeSetup, compute, trust_author};
use rjs_e2e::pki::Ca;
use rjs_e2e::{bounded, pack, sha256_hex};
use rjs_signer::answer::{AnswerLimits, Ending, LimitKind, VerifiedAnswer, verify_answer};
use rjs_signer::{KeyPair, PublicKey};
use rjs_wire::node::{FromNode, ToNode, read_frame, read_msg, write_frame, write_msg};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The misbehaving samples, each followed by a `hello`.
const EVIL: [&str; 5] = [
    "evil-loop",
    "evil-membomb",
    "evil-escape",
    "evil-output",
    "evil-recurse",
];

/// What `evil-escape` would leave behind if it got out.
const ESCAPED_FILE: &str = "/var/tmp/rjs-evil-escaped";

/// Bound on one protocol step (the loop's answer takes its 2 s of CPU time and a bit).
const STEP: Duration = Duration::from_secs(30);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Verifies `archive` with the signer library and checks it is `key`'s answer for task 0 of
/// `bundle` (job `job`).
fn verified(archive: &[u8], key: &PublicKey, bundle: &[u8], job: &str) -> VerifiedAnswer {
    let v = verify_answer(archive, &AnswerLimits::default()).unwrap_or_else(|e| {
        panic!(
            "{job}: answer refused: {}: {}",
            e.rule(),
            rjs_cmd::chain(&e)
        )
    });
    assert_eq!(
        v.public_key().to_base64(),
        key.to_base64(),
        "{job}: signed by the node's key"
    );
    let r = v.result();
    assert_eq!(r.bundle_sha256, sha256_hex(bundle), "{job}");
    assert_eq!((r.job_name.as_str(), r.task_index), (job, 0));
    v
}

/// The message of a limit ending of kind `kind`.
#[track_caller]
fn limit_message(v: &VerifiedAnswer, kind: LimitKind) -> &str {
    match &v.result().ending {
        Ending::Limit { limit, message } if *limit == kind => message,
        other => panic!("expected a {} limit, got {other:?}", kind.as_str()),
    }
}

/// Checks that the answer of `job` says how that sample ends.
fn check_evil(job: &str, v: &VerifiedAnswer) {
    let r = v.result();
    let stdout = text(v.stdout());
    let stderr = text(v.stderr());
    println!(
        "{job}: {:?}, limits hit {:?}, cpu {} ms, wall {} ms",
        r.ending, r.limits_hit, r.cpu_ms, r.wall_ms
    );
    match job {
        "evil-loop" => {
            // Stopped by its CPU time (2 s), not by the wall clock.
            let message = limit_message(v, LimitKind::Time);
            assert!(message.starts_with("cpu: "), "{message}");
            assert_eq!(r.limits_hit, [LimitKind::Time]);
            assert_eq!(r.limits.time_ms, 2000);
            assert!((2000..2100).contains(&r.cpu_ms), "cpu {} ms", r.cpu_ms);
            assert!(r.wall_ms >= r.cpu_ms, "{r:?}");
            assert_eq!(stderr, "evil-loop: spinning forever\n");
        }
        "evil-membomb" => {
            let message = limit_message(v, LimitKind::Memory);
            assert!(message.contains("the limit is 67108864 bytes"), "{message}");
            assert_eq!(r.limits_hit, [LimitKind::Memory]);
            assert!(r.wall_ms < 2000, "stopped by memory, not time: {r:?}");
        }
        "evil-escape" => {
            // Every attempt failed inside the job: no such file in the job's two
            // directories (WASI errno 44); `..` out of a preopened directory, and any path
            // outside them, refused (errno 63); preview 1 has no call that opens a socket,
            // so the job's standard library does not even get to try.
            let lines: Vec<&str> = stdout.lines().collect();
            assert_eq!(
                lines,
                [
                    "BLOCKED: read /etc/passwd: No such file or directory (os error 44)",
                    "BLOCKED: read ../../etc/passwd: Operation not permitted (os error 63)",
                    "BLOCKED: write /var/tmp/rjs-evil-escaped: Operation not permitted (os error 63)",
                    "BLOCKED: connect tcp 127.0.0.1:80: operation not supported on this platform",
                    "BLOCKED: bind udp 0.0.0.0:0: operation not supported on this platform",
                ],
                "{stdout}"
            );
            assert!(!stdout.contains("ESCAPED"), "{stdout}");
            assert!(v.out_files().is_empty());
        }
        "evil-output" => {
            // The 1 GiB file is cut at the 1 MiB output limit (RLIMIT_FSIZE): the next write
            // fails with EFBIG inside the job, which reports it and exits 3.
            assert_eq!(r.ending, Ending::Exit { code: 3 }, "{stderr}");
            assert_eq!(r.limits_hit, [LimitKind::Output]);
            assert_eq!(
                r.summary(),
                "exit 3 (limit hit: output)",
                "the outcome names it"
            );
            assert_eq!(
                stderr,
                "evil-output: stopped: writing out/flood.bin after 1 MiB: File too large \
                 (os error 22)\n"
            );
            assert_eq!(v.out_files().len(), 1);
            let (name, data) = &v.out_files()[0];
            assert_eq!(name, "flood.bin");
            assert_eq!(data.len() as u64, r.limits.output_bytes);
            assert!(data.iter().all(|b| *b == 0x5a));
            assert!(v.stdout().is_empty());
        }
        "evil-recurse" => {
            // Rust's wasm32 code keeps its stack frames' arrays on a shadow stack in linear
            // memory: the recursion runs off its bottom (an out-of-bounds access) before
            // wasmtime's own stack limit would trap with "call stack exhausted".
            let Ending::Trap { message } = &r.ending else {
                panic!("expected a trap, got {:?}", r.ending);
            };
            assert!(
                message.starts_with("wasm trap: out of bounds memory access\nwasm backtrace:\n"),
                "{message}"
            );
            assert!(
                message.contains("  0: evil_recurse::recurse\n"),
                "{message}"
            );
            assert!(r.limits_hit.is_empty(), "{:?}", r.limits_hit);
            assert_eq!(stderr, "evil-recurse: recursing forever\n");
        }
        other => panic!("unknown sample {other}"),
    }
}

/// `hello` answered normally.
fn check_hello(v: &VerifiedAnswer) {
    let r = v.result();
    assert_eq!(r.ending, Ending::Exit { code: 0 }, "{r:?}");
    assert!(r.limits_hit.is_empty());
    assert_eq!(v.stdout(), b"hello, world from task 0/1\n");
    assert_eq!(
        v.out_files(),
        [(
            "hello-0.txt".to_string(),
            b"hello, world from task 0/1\n".to_vec()
        )]
    );
}

// ---------------------------------------------------------------------------------------
// The data directory: nothing written but the slots' (emptied) scratch and the caches

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir,
    File { len: u64, mtime_ns: i128, mode: u32 },
    Other { mode: u32 },
}

/// Every entry under `root` (relative path → what it is), symlinks not followed.
fn snapshot(root: &Path) -> BTreeMap<String, Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if meta.is_dir() {
                out.insert(rel, Entry::Dir);
                walk(root, &path, out);
            } else if meta.is_file() {
                let mtime_ns =
                    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
                out.insert(
                    rel,
                    Entry::File {
                        len: meta.len(),
                        mtime_ns,
                        mode: meta.mode(),
                    },
                );
            } else {
                out.insert(rel, Entry::Other { mode: meta.mode() });
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What a task may change in the node's data directory: a new compiled module in the
/// module cache, a new bundle in the bundle cache.
fn expected_addition(path: &str, entry: &Entry) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    let file = matches!(entry, Entry::File { .. });
    match parts[..] {
        ["cache", dir, name] => {
            file && dir.starts_with("wasmtime-")
                && name.strip_suffix(".cwasm").is_some_and(is_hex64)
        }
        ["bundles", name] => file && name.strip_suffix(".rjs").is_some_and(is_hex64),
        _ => false,
    }
}

/// The node's scratch directory holds only its slots' directories (`out/` and `/tmp`), each
/// empty, and nothing
/// else under `data` changed between `before` and now beyond [`expected_addition`]s.
fn assert_nothing_left_or_written(data: &Path, before: &BTreeMap<String, Entry>, after: &str) {
    let now = snapshot(data);
    for (path, entry) in &now {
        if let Some(rest) = path.strip_prefix("scratch/") {
            assert!(
                (rest.starts_with("slot-") || rest.starts_with("tmp-"))
                    && !rest.contains('/')
                    && *entry == Entry::Dir,
                "after {after}: {path} left in the scratch directory"
            );
            continue;
        }
        match before.get(path) {
            None => assert!(
                expected_addition(path, entry),
                "after {after}: {path} appeared in the data directory ({entry:?})"
            ),
            // A directory's own times change as entries come and go: only its presence
            // counts.
            Some(old) => assert_eq!(old, entry, "after {after}: {path} changed"),
        }
    }
    for path in before.keys() {
        assert!(
            now.contains_key(path),
            "after {after}: {path} disappeared from the data directory"
        );
    }
    assert!(
        now.keys().any(|p| p.starts_with("scratch/slot-")),
        "the slots' scratch directories"
    );
    assert!(
        !Path::new(ESCAPED_FILE).exists(),
        "after {after}: {ESCAPED_FILE} exists"
    );
}

// ---------------------------------------------------------------------------------------
// `rjs-compute run`

/// `rjs-compute run BUNDLE --task 0 -o ANSWER`: the answer's bytes.
fn run_local(data: &Path, dir: &Path, job: &str, bundle: &[u8]) -> Vec<u8> {
    let bundle_path = dir.join(format!("{job}.rjs"));
    let answer = dir.join(format!("{job}-answer.zip"));
    std::fs::write(&bundle_path, bundle).unwrap();
    let _ = std::fs::remove_file(&answer);
    let out = compute(
        data,
        &[
            "run",
            bundle_path.to_str().unwrap(),
            "--task",
            "0",
            "-o",
            answer.to_str().unwrap(),
        ],
    )
    .unwrap_or_else(|e| panic!("rjs-compute run {job}: {e:#}"));
    assert!(out.starts_with("task 0: "), "{out}");
    std::fs::read(&answer).unwrap()
}

#[test]
fn every_evil_sample_through_rjs_compute_run() {
    let _ = std::fs::remove_file(ESCAPED_FILE);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let author = KeyPair::generate();
    trust_author(&data, &author, "author").unwrap();
    let hello = pack("hello", &author);

    // A first task makes the node's identity, speed measurement and caches.
    let answer = run_local(&data, dir.path(), "hello", &hello);
    let key = PublicKey::load_or_parse(data.join("node.pub").to_str().unwrap())
        .unwrap()
        .0;
    check_hello(&verified(&answer, &key, &hello, "hello"));
    let mut before = snapshot(&data);

    for job in EVIL {
        let bundle = pack(job, &author);
        let answer = run_local(&data, dir.path(), job, &bundle);
        check_evil(job, &verified(&answer, &key, &bundle, job));
        assert_nothing_left_or_written(&data, &before, job);
        let answer = run_local(&data, dir.path(), "hello", &hello);
        check_hello(&verified(&answer, &key, &hello, "hello"));
        assert_nothing_left_or_written(&data, &before, &format!("hello after {job}"));
        // The caches keep what they gained.
        before = snapshot(&data);
    }
}

// ---------------------------------------------------------------------------------------
// `rjs-compute serve`

/// A lookup's connection to the node.
struct Conn {
    s: TlsStream<TcpStream>,
}

impl Conn {
    async fn connect(node: &ComputeNode, tls: Arc<rustls::ClientConfig>) -> Result<Conn> {
        let tcp = tokio::time::timeout(STEP, TcpStream::connect(node.addr))
            .await
            .context("connect timed out")??;
        let name = ServerName::try_from("127.0.0.1")?;
        let s = tokio::time::timeout(STEP, TlsConnector::from(tls).connect(name, tcp))
            .await
            .context("TLS handshake timed out")??;
        Ok(Conn { s })
    }

    /// Offers task 0 of `bundle` (sent if the node asks for it); expects `accepted`, then
    /// returns the outcome line and the answer archive.
    async fn run(&mut self, bundle: &[u8], job_id: i64) -> Result<(String, Vec<u8>)> {
        let offer = ToNode::Offer {
            bundle_sha256: sha256_hex(bundle),
            bundle_size: bundle.len() as u64,
            task: 0,
            job_id,
        };
        write_msg(&mut self.s, &offer, STEP).await?;
        let mut msg: FromNode = read_msg(&mut self.s, STEP).await?;
        if msg == FromNode::SendBundle {
            write_frame(&mut self.s, bundle, STEP).await?;
            msg = read_msg(&mut self.s, STEP).await?;
        }
        if msg != FromNode::Accepted {
            bail!("job {job_id} not accepted: {msg:?}");
        }
        match read_msg(&mut self.s, STEP).await? {
            FromNode::Answer { outcome, size } => {
                let archive = read_frame(&mut self.s, size, STEP).await?;
                Ok((outcome, archive))
            }
            other => bail!("expected an answer, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_evil_sample_through_rjs_compute_serve() {
    let _ = std::fs::remove_file(ESCAPED_FILE);
    let author = KeyPair::generate();
    let ca = Ca::new("RJS evil test cluster CA");
    let node = ComputeNode::start(
        &ca,
        &ca.node_cert(),
        NodeSetup {
            trusted: &[&author],
            ..Default::default()
        },
    )
    .unwrap();
    let key = node.public_key();
    let tls = ca.lookup_tls();
    let mut conn = Conn::connect(&node, tls).await.unwrap();
    let hello = pack("hello", &author);
    let mut job_id = 0;
    let mut run = async |bundle: &[u8], job: &str| {
        job_id += 1;
        let (outcome, archive) = bounded(job, 60, conn.run(bundle, job_id))
            .await
            .unwrap_or_else(|e| panic!("{job}: {e:#}"));
        let v = verified(&archive, &key, bundle, job);
        assert_eq!(outcome, v.result().summary(), "outcome line = ending");
        v
    };

    check_hello(&run(&hello, "hello").await);
    let mut before = snapshot(&node.data);
    for job in EVIL {
        let bundle = pack(job, &author);
        check_evil(job, &run(&bundle, job).await);
        assert_nothing_left_or_written(&node.data, &before, job);
        check_hello(&run(&hello, "hello").await);
        assert_nothing_left_or_written(&node.data, &before, &format!("hello after {job}"));
        before = snapshot(&node.data);
    }
}
