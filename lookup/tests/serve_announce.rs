//! `rjs-compute serve` announces itself by mDNS: the real binaries (`rjs-lookup init`,
//! `serve-enrol`, `token`, `nodes remove`; `rjs-compute join`, `serve`) and the lookup's
//! [`Browser`] with the enrolment registry as its key directory, inside a private network
//! namespace.
//!
//! The mdns-sd daemon joins its multicast groups on every interface as soon as it is created,
//! so no daemon (and no announcing `rjs-compute serve`) may ever run on the host's network
//! stack. The test re-executes this test binary to run itself in a child that first enters a
//! private network namespace (only `lo`, multicast routed to it):
//! [`rjs_harness::netns::isolated_child`], as `discovery.rs` does.
//!
//! Needs the `rjs-compute` binary next to `rjs-lookup`
//! (`cargo build -p rjs-compute --bins`, or `cargo test -p rjs-lookup -p rjs-compute`).

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use mdns_sd::IfKind;
use rjs_e2e::node::{store_bench, trust_author};
use rjs_e2e::{Managed, bin, pack, run_ok, sha256_hex, spawn_listening};
use rjs_harness::netns;
use rjs_harness::wait::wait_for;
use rjs_lookup::discovery::{Browser, DiscoveryConfig, NodeView};
use rjs_lookup::dispatch::{JobOffer, JobOutcome, NodeClient};
use rjs_lookup::enrol;
use rjs_lookup::service::LiveRegistry;
use rjs_signer::keys::KeyPair;

const INTERVAL: Duration = Duration::from_millis(200);
/// The browser's lease TTL: 3 intervals.
const TTL: Duration = Duration::from_millis(600);
const MFLOPS: u64 = 1234;

fn find(browser: &Browser, id: &str) -> Option<NodeView> {
    browser.nodes().into_iter().find(|n| n.node_id == id)
}

/// A running `rjs-compute serve` and its standard output, line by line.
struct Serving {
    proc: Managed,
    lines: Receiver<String>,
    /// When the ready line was read.
    ready_at: Instant,
    addr: SocketAddr,
}

impl Serving {
    /// The next line of standard output, within `timeout`.
    fn line(&self, timeout: Duration) -> String {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => l,
            Err(RecvTimeoutError::Timeout) => panic!("no output within {timeout:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("rjs-compute serve exited"),
        }
    }
}

/// `rjs-compute serve` on loopback, announcing on `lo` every 200 ms; waits for its ready line.
fn serve(node: &Path, id: &str) -> Serving {
    let mut child = Command::new(bin("rjs-compute"))
        .arg("serve")
        .arg("--data")
        .arg(node)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--interface",
            "lo",
            "--announce-interval",
            "200ms",
            "--slots",
            "2",
            "--unknown-authors",
            "refuse",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting rjs-compute serve");
    let stdout = child.stdout.take().expect("stdout");
    let proc = Managed::adopt("rjs-compute serve", child);
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut serving = Serving {
        proc,
        lines,
        ready_at: Instant::now(),
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
    };
    let ready = serving.line(Duration::from_secs(30));
    serving.ready_at = Instant::now();
    let prefix = format!("node {id} ({MFLOPS} MFLOPS, 2 slots) listening on ");
    let addr = ready
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("ready line {ready:?}, expected {prefix:?}…"));
    serving.addr = addr.parse().expect("listening address");
    assert_eq!(serving.addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_ne!(serving.addr.port(), 0);
    assert_eq!(
        serving.line(Duration::from_secs(5)),
        format!("announcing {id} on mDNS every 200ms")
    );
    serving
}

/// Asserts that the browser shows the node serving at `s.addr`, within 1 s of its ready line.
fn appears(browser: &Browser, id: &str, s: &Serving) -> NodeView {
    let n = wait_for(
        &format!("{id} to be discovered"),
        Duration::from_secs(5),
        || find(browser, id).filter(|n| n.port == s.addr.port()),
    );
    let took = s.ready_at.elapsed();
    assert!(
        took <= Duration::from_secs(1),
        "discovered {took:?} after the ready line"
    );
    assert_eq!(
        (n.port, n.total_slots, n.free_slots, n.mflops),
        (s.addr.port(), 2, 2, MFLOPS)
    );
    assert!(n.mflops > 0);
    // The default group.
    assert_eq!(n.groups, vec!["/compute".to_owned()]);
    assert!(
        n.addresses.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
        "addresses {:?}",
        n.addresses
    );
    n
}

/// Asserts that the node's lease ends within the TTL + 0.5 s of `since`.
fn disappears(browser: &Browser, id: &str, since: Instant) {
    wait_for(
        &format!("{id}'s lease to expire"),
        TTL + Duration::from_secs(3),
        || find(browser, id).is_none().then_some(()),
    );
    let took = since.elapsed();
    assert!(
        took <= TTL + Duration::from_millis(500),
        "{id} removed {took:?} after it stopped"
    );
}

/// Runs `evil-loop` (spins until its 2 s time limit) on the node over mutual TLS, on a
/// thread of its own.
fn run_loop_job(
    lookup: &Path,
    id: &str,
    addr: SocketAddr,
    author: &KeyPair,
) -> std::thread::JoinHandle<JobOutcome> {
    let tls = enrol::node_client_tls(lookup).unwrap();
    let bundle = pack("evil-loop", author);
    let offer = JobOffer {
        job_id: 1,
        bundle_sha256: sha256_hex(&bundle),
        bundle: Arc::new(bundle),
        task: 0,
    };
    let id = id.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut client = NodeClient::new(id, addr, tls);
            tokio::time::timeout(
                Duration::from_secs(30),
                client.run_job(&offer, Duration::from_secs(2)),
            )
            .await
            .expect("the job took longer than 30 s")
            .expect("the job ran")
        })
    })
}

fn lookup_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rjs-lookup"))
}

/// Enrolment: `rjs-lookup init` at `lookup`, `serve-enrol`, `token`, and `rjs-compute join`
/// into `node`, with a stored benchmark result of [`MFLOPS`] (the node does not spend a
/// second measuring). Returns the node's id.
fn enrol_node(lookup: &Path, node: &Path) -> String {
    run_ok(
        Command::new(lookup_exe())
            .arg("init")
            .arg("--data")
            .arg(lookup),
    )
    .unwrap();
    let (mut enrol_server, enrol_addr) = spawn_listening(
        Command::new(lookup_exe())
            .args(["serve-enrol", "--listen", "127.0.0.1:0", "--data"])
            .arg(lookup)
            .stdin(Stdio::null()),
        "listening on ",
    )
    .unwrap();
    let token = run_ok(
        Command::new(lookup_exe())
            .args(["token", "--addr", &enrol_addr, "--data"])
            .arg(lookup),
    )
    .unwrap();
    let joined = run_ok(
        Command::new(bin("rjs-compute"))
            .arg("join")
            .arg(token.trim())
            .arg("--data")
            .arg(node)
            .args(["--host", "127.0.0.1"])
            .stdin(Stdio::null()),
    )
    .unwrap();
    enrol_server.kill9();
    let id = std::fs::read_to_string(node.join("node-id"))
        .unwrap()
        .trim()
        .to_owned();
    assert!(
        joined.starts_with(&format!("enrolled as {id};")),
        "{joined}"
    );
    store_bench(node, MFLOPS as f64).unwrap();
    id
}

/// The lookup's browser on `lo`; keys from the enrolment registry at `lookup`, as the
/// running lookup reads it (re-read when it changes, so `nodes remove` takes effect at once).
fn registry_browser(lookup: &Path) -> Browser {
    Browser::start(
        DiscoveryConfig {
            interfaces: Some(vec![IfKind::Name("lo".into())]),
            ..DiscoveryConfig::with_interval(INTERVAL)
        },
        LiveRegistry::open(lookup).unwrap(),
    )
    .unwrap()
}

#[test]
fn serve_announce_in_private_netns() {
    if !netns::isolated_child("serve_announce_in_private_netns", Duration::from_secs(120)) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lookup: PathBuf = tmp.path().join("lookup");
    let node: PathBuf = tmp.path().join("node");
    let id = enrol_node(&lookup, &node);
    let author = KeyPair::generate();
    trust_author(&node, &author, "author").unwrap();
    let browser = registry_browser(&lookup);

    // 1. Discovered with the bound port, slots and speed, within 1 s of the ready line; a
    //    SIGTERM stops it cleanly and its lease ends within the TTL.
    let mut s = serve(&node, &id);
    let n = appears(&browser, &id, &s);
    eprintln!("discovered: {n:?}");
    // It keeps renewing.
    std::thread::sleep(TTL * 2);
    let n = find(&browser, &id).expect("a renewing node stays");
    assert!(n.age_ms <= 3 * INTERVAL.as_millis() as u64, "{n:?}");
    // The renewals carry the live free slots: 1 while a job holds a slot, then 2 again.
    let job = run_loop_job(&lookup, &id, s.addr, &author);
    wait_for(
        "a busy slot in the announcements",
        Duration::from_secs(10),
        || find(&browser, &id).filter(|n| n.free_slots == 1),
    );
    match job.join().unwrap() {
        JobOutcome::Answer { outcome, .. } => eprintln!("the job: {outcome}"),
        JobOutcome::Refused { code, reason } => panic!("refused ({code:?}): {reason}"),
    }
    wait_for("the slot to be free again", Duration::from_secs(3), || {
        find(&browser, &id).filter(|n| n.free_slots == 2)
    });
    let stopped = Instant::now();
    assert_eq!(s.proc.terminate(Duration::from_secs(10)).unwrap(), Some(0));
    disappears(&browser, &id, stopped);
    // Records younger than 1 s survive an mDNS cache flush (RFC 6762 10.2): let them age
    // so that the next start is seen as an update.
    std::thread::sleep(Duration::from_millis(1100));

    // 2. Restarted: discovered again; after SIGKILL (no goodbye) it is gone within the TTL.
    let mut s = serve(&node, &id);
    appears(&browser, &id, &s);
    let killed = Instant::now();
    s.proc.kill9();
    disappears(&browser, &id, killed);
    std::thread::sleep(Duration::from_millis(1100));

    // 3. Revoked (`rjs-lookup nodes remove`): a freshly started node's announcements are
    //    dropped as signed by an unknown key.
    let removed = run_ok(
        Command::new(lookup_exe())
            .args(["nodes", "remove", &id, "--data"])
            .arg(&lookup),
    )
    .unwrap();
    assert!(removed.contains(&id), "{removed}");
    let before = browser.drops().unknown_key;
    let s = serve(&node, &id);
    wait_for("unknown-key drops", Duration::from_secs(5), || {
        (browser.drops().unknown_key > before).then_some(())
    });
    // Several renewals later it is still not a node.
    std::thread::sleep(INTERVAL * 4);
    assert!(find(&browser, &id).is_none(), "a revoked node was accepted");
    assert!(
        browser.drops().unknown_key >= before + 2,
        "drops {:?}",
        browser.drops()
    );
    drop(s);
    let d = browser.drops();
    eprintln!("drops: {d:?}");
    assert_eq!((d.bad_signature, d.malformed, d.unsigned), (0, 0, 0));
    browser.shutdown();
}
