//! The whole grid end to end: the real `rjs-webserver`, `rjs-lookup` and `rjs-compute`
//! binaries started by [`LocalGrid`] of the harness (`rjs-harness`). Each grid test runs in a
//! child process (this test executable again, see [`netns::isolated_child`]) inside its own
//! private network namespace, so that no mDNS daemon — the grid's, or the forged announcers of
//! these tests — ever runs on the host's network stack. The children run one at a time.
//!
//! Everything is checked through the real interfaces: the web server's author API (job
//! states, the node named for each answer, the answers themselves, verified with
//! [`verify_answer`] against that node's own key), and the lookup's `rjs-lookup nodes`, `why`
//! and `status`.
//!
//! Needs the binaries and the sample jobs: `cargo build --workspace --bins` and
//! `samples/build.sh` (as `scripts/test.sh` does).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use rjs::grid::{Image, stitch};
use rjs_e2e::browser::Browser;
use rjs_harness::grid::flood::{self as grid_flood, FloodPlan};
use rjs_harness::grid::{
    AUTHOR, GridOptions, JobWhere, LocalGrid, NodeOptions, NodeRow, NodesResponse, WhyResponse,
    prepare_dir, states as grid_states,
};
use rjs_harness::wait::poll_until;
use rjs_harness::{netns, paths};
use rjs_sample_mandelbrot as mandelbrot;
use rjs_signer::answer::{AnswerLimits, Ending, VerifiedAnswer, verify_answer};
use rjs_signer::{KeyPair, PublicKey};
use rjs_wire::announce::{Announcement, SERVICE_TYPE, unix_ms_now};
use rjs_wire::api::{JobState, JobView, UploadResponse};

fn wait_panel(
    grid: &LocalGrid,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&NodesResponse) -> bool,
) -> NodesResponse {
    poll_until(
        timeout,
        Duration::from_millis(100),
        || grid.nodes_panel(),
        |panel| panel.as_ref().is_ok_and(&ok),
        |panel| format!("{what}: not within {timeout:?}; last panel: {panel:?}"),
    )
    .unwrap()
}

const LIFECYCLE: &str = "a_grid_runs_jobs_and_survives_node_and_lookup_restarts";

#[test]
fn a_grid_runs_jobs_and_survives_node_and_lookup_restarts() {
    if !netns::isolated_child(LIFECYCLE, Duration::from_secs(240)) {
        return;
    }
    let job = paths::sample("mandelbrot");
    let dir = tempfile::tempdir().unwrap();
    let mut grid = LocalGrid::start(GridOptions::new(dir.path().join("grid")))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(grid.api().whoami().unwrap().name, AUTHOR);
    let panel = grid.nodes_panel().unwrap();
    assert_eq!(panel.nodes.len(), 2, "{panel:?}");
    assert!(
        panel
            .nodes
            .iter()
            .all(|n| n.total_slots == 1 && n.mflops > 0)
    );

    // node-2 killed: the lookup drops it when its lease (3 announcements) runs out.
    let status = grid.kill_node(1, libc::SIGKILL).unwrap();
    assert!(status.is_some());
    assert!(
        grid.kill_node(1, libc::SIGKILL).is_ok(),
        "a dead node takes signals quietly"
    );
    wait_panel(&grid, "node-2 dropped", Duration::from_secs(10), |p| {
        p.nodes.len() == 1 && p.nodes[0].node_id == "node-1"
    });

    // So node-1 computes every tile.
    let bundle = grid.pack(&job).unwrap();
    let up = grid.upload(&bundle).unwrap();
    assert_eq!((up.tasks, up.jobs.len(), up.created), (8, 8, true));
    let jobs = poll_until(
        Duration::from_secs(120),
        Duration::from_millis(100),
        || grid.status().unwrap().jobs,
        |jobs| jobs.len() == 8 && jobs.iter().all(|j| j.state.is_final()),
        |jobs| format!("jobs not done: {jobs:?}"),
    );
    assert!(
        jobs.iter()
            .all(|j| j.state == JobState::Done && j.node.as_deref() == Some("node-1")),
        "{jobs:?}"
    );
    let answers = grid.fetch_answers(&dir.path().join("answers")).unwrap();
    assert_eq!(answers.len(), 8);
    let node1 = grid.node_public_key(0).unwrap();
    let tiles_dir = dir.path().join("tiles");
    std::fs::create_dir_all(&tiles_dir).unwrap();
    let mut tiles = Vec::new();
    for (i, a) in answers.iter().enumerate() {
        let v = verify_answer(&std::fs::read(&a.path).unwrap(), &AnswerLimits::default())
            .unwrap_or_else(|e| panic!("{}: {e}", a.path.display()));
        assert_eq!(*v.public_key(), node1);
        assert_eq!(v.result().task_index, i as u32);
        assert_eq!(v.result().bundle_sha256, up.bundle_id);
        assert_eq!(v.result().ending, Ending::Exit { code: 0 });
        let (name, png) = &v.out_files()[0];
        assert_eq!(*name, format!("tile-{i}.png"));
        let path = tiles_dir.join(name);
        std::fs::write(&path, png).unwrap();
        tiles.push(path);
    }
    let image = stitch(&tiles).unwrap();
    assert_eq!((image.width, image.height), (1024, 1024));
    // Fetching again downloads nothing new and returns the same files.
    let again = grid.fetch_answers(&dir.path().join("answers")).unwrap();
    assert_eq!(
        again.iter().map(|a| &a.path).collect::<Vec<_>>(),
        answers.iter().map(|a| &a.path).collect::<Vec<_>>()
    );

    // node-2 comes back with its data (no new enrolment).
    assert!(grid.start_node(0).is_err(), "node-1 is running");
    grid.start_node(1).unwrap();
    grid.wait_for_nodes(Duration::from_secs(20)).unwrap();

    // The lookup restarts and finds both nodes again.
    let status = grid.kill_lookup(libc::SIGTERM).unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    grid.start_lookup().unwrap();
    let panel = grid.wait_for_nodes(Duration::from_secs(20)).unwrap();
    assert_eq!(panel.nodes.len(), 2);

    grid.stop().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(grid.webserver_pid().is_some());
}

#[test]
fn a_grid_refuses_to_start_on_the_host_network() {
    if netns::is_private() {
        return; // already isolated: nothing to refuse
    }
    let dir = tempfile::tempdir().unwrap();
    let err = LocalGrid::start(GridOptions::new(dir.path())).unwrap_err();
    assert!(
        format!("{err:#}").contains("private network namespace"),
        "{err:#}"
    );
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing was laid out"
    );
}

#[test]
fn a_grid_needs_an_empty_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x"), b"").unwrap();
    let err = prepare_dir(dir.path()).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    prepare_dir(&dir.path().join("new")).unwrap();
}

// ------------------------------------------------------------------------------------------
// Helpers

/// A copy of sample `name` in `to` with its manifest changed by `edit`: a new bundle.
fn job_variant(name: &str, to: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let from = paths::sample(name);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(&from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    let path = to.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut manifest);
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    to.to_owned()
}

/// The `hello` sample with `tasks` tasks, greeting `who` (each `who` is another bundle).
fn hello(to: &Path, who: &str, tasks: u32) -> PathBuf {
    job_variant("hello", to, |m| {
        m["args"] = serde_json::json!([who]);
        m["tasks"] = tasks.into();
    })
}

/// A node of the given speed (written to its `bench.json`: no benchmark, a known order).
fn node(mflops: f64) -> NodeOptions {
    NodeOptions {
        mflops: Some(mflops),
        ..NodeOptions::default()
    }
}

fn options(dir: &Path, nodes: &[NodeOptions]) -> GridOptions {
    let mut opts = GridOptions::new(dir.join("grid"));
    opts.nodes = nodes.len();
    opts.node_options = nodes.to_vec();
    opts
}

fn start(opts: GridOptions) -> LocalGrid {
    LocalGrid::start(opts).unwrap_or_else(|e| panic!("starting the grid: {e:#}"))
}

/// The lookup's lease TTL for the nodes: 3 announcement intervals (`rjs-lookup serve
/// --announce-interval`, no `--ttl`).
fn node_ttl(grid: &LocalGrid) -> Duration {
    grid.options().announce_interval * 3
}

/// Fetches job `job`'s answer from the web server and checks it completely: done with exit
/// 0, it verifies (canonical layout, every entry, the node's signature), it was signed with
/// the own key of the node the web server names, and it is this job's (bundle, task).
fn checked_answer(grid: &LocalGrid, job: &JobView) -> VerifiedAnswer {
    assert_eq!(job.state, JobState::Done, "{job:?}");
    assert_eq!(job.outcome.as_deref(), Some("exit 0"), "{job:?}");
    let node = job
        .node
        .as_deref()
        .unwrap_or_else(|| panic!("the web server names no node for {job:?}"));
    let i = grid
        .node_index(node)
        .unwrap_or_else(|| panic!("{node} is none of the grid's nodes: {job:?}"));
    let bytes = grid.api().answer_bytes(job.id).unwrap();
    assert_eq!(Some(bytes.len() as u64), job.answer_bytes, "{job:?}");
    let v = verify_answer(&bytes, &AnswerLimits::default()).unwrap_or_else(|e| {
        panic!(
            "the answer of job {} does not verify: {}",
            job.id,
            rjs_cmd::chain(&e)
        )
    });
    assert!(
        *v.public_key() == grid.node_public_key(i).unwrap(),
        "the answer of job {} is not signed with {node}'s key",
        job.id
    );
    let r = v.result();
    assert_eq!(
        (
            r.node_id.as_str(),
            r.bundle_sha256.as_str(),
            r.task_index,
            r.task_count
        ),
        (node, job.bundle_id.as_str(), job.task, job.tasks),
        "the answer of job {}",
        job.id
    );
    assert_eq!(r.ending, Ending::Exit { code: 0 }, "job {}", job.id);
    v
}

/// Checks the answer of every job of a `hello` bundle: each greets from its own task.
fn check_hello(grid: &LocalGrid, jobs: &[JobView], who: &str) {
    for job in jobs {
        let v = checked_answer(grid, job);
        let line = format!("hello, {who} from task {}/{}", job.task, job.tasks);
        assert_eq!(
            String::from_utf8_lossy(v.stdout()).trim(),
            line,
            "job {}",
            job.id
        );
    }
}

/// The nodes the web server names for `jobs`.
fn nodes_of(jobs: &[JobView]) -> BTreeSet<&str> {
    jobs.iter().filter_map(|j| j.node.as_deref()).collect()
}

fn row<'a>(panel: &'a NodesResponse, id: &str) -> Option<&'a NodeRow> {
    panel.nodes.iter().find(|r| r.node_id == id)
}

fn ids(panel: &NodesResponse) -> Vec<&str> {
    panel.nodes.iter().map(|r| r.node_id.as_str()).collect()
}

fn ids_eq(panel: &NodesResponse, want: &[&str]) -> bool {
    ids(panel) == want
}

// ------------------------------------------------------------------------------------------
// 1. The demo's pipeline, checked

const PIPELINE: &str =
    "eight_mandelbrot_tiles_on_two_nodes_verify_and_stitch_into_the_native_image";

/// `rjs demo`'s pipeline with every result checked: 8 tiles on 2 nodes, 8 answers, each
/// signed by the node the web server names, stitched into exactly the image that the sample
/// renders natively.
#[test]
fn eight_mandelbrot_tiles_on_two_nodes_verify_and_stitch_into_the_native_image() {
    if !netns::isolated_child(PIPELINE, Duration::from_secs(120)) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Equal speeds: node-1 gets the first tile (ties go by id), node-2 the second.
    let mut grid = start(options(dir.path(), &[node(1000.0), node(1000.0)]));
    let job = paths::sample("mandelbrot");
    let up = grid.upload(&grid.pack(&job).unwrap()).unwrap();
    assert_eq!((up.tasks, up.jobs.len(), up.created), (8, 8, true));
    let jobs = grid.wait_final(&up.bundle_id, 8, Duration::from_secs(60));

    let tiles_dir = dir.path().join("tiles");
    std::fs::create_dir_all(&tiles_dir).unwrap();
    let mut tiles = Vec::new();
    for job in &jobs {
        let v = checked_answer(&grid, job);
        let files: Vec<&str> = v.out_files().iter().map(|(n, _)| n.as_str()).collect();
        let name = format!("tile-{}.png", job.task);
        assert_eq!(files, [name.as_str()], "job {}", job.id);
        let path = tiles_dir.join(&name);
        std::fs::write(&path, &v.out_files()[0].1).unwrap();
        tiles.push(path);
    }
    assert_eq!(
        nodes_of(&jobs),
        BTreeSet::from(["node-1", "node-2"]),
        "both nodes compute tiles: {}",
        grid_states(&jobs)
    );
    let panel = grid.nodes_panel().unwrap();
    assert_eq!(
        panel.nodes.iter().map(|r| r.answers.exit_zero).sum::<u64>(),
        8,
        "{panel:?}"
    );

    let stitched = stitch(&tiles).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job.join("manifest.json")).unwrap()).unwrap();
    let args: Vec<String> = serde_json::from_value(manifest["args"].clone()).unwrap();
    let params = mandelbrot::parse_args(&args).unwrap();
    let whole = mandelbrot::parse_task(None, None, params.height).unwrap();
    let native = mandelbrot::render_task(&params, &whole);
    let native = Image::decode_png(&mandelbrot::encode_png(&native).unwrap(), u64::MAX).unwrap();
    assert_eq!(
        (stitched.width, stitched.height),
        (native.width, native.height)
    );
    let differing = stitched
        .rgba
        .chunks(4)
        .zip(native.rgba.chunks(4))
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(
        differing, 0,
        "pixels of the stitched image differ from the native render"
    );

    // The dashboard's gallery shows the same picture, in a real browser.
    let b = Browser::start().unwrap();
    let login = grid.api().dashboard_login().unwrap();
    b.sign_in(&grid.api().url_of(&login.path), "/dashboard/submissions")
        .unwrap();
    let sid = grid
        .api()
        .submissions(Some(&up.bundle_id))
        .unwrap()
        .submissions[0]
        .id;
    let gallery = format!("/dashboard/submissions/{sid}/gallery");
    b.goto(&grid.api().url_of(&gallery)).unwrap();
    b.wait_until("the stitched image shown", |b| {
        b.js("const i = document.getElementById('stitched'); return i && i.complete ? i.naturalWidth : 0;")
            .is_ok_and(|w| w == serde_json::json!(native.width))
    })
    .unwrap();
    let shown = rjs_e2e::client(&grid.webserver_ca(), None)
        .unwrap()
        .get(
            grid.api()
                .url_of(&format!("/dashboard/submissions/{sid}/stitched.png")),
        )
        .header(
            "cookie",
            format!(
                "{}={}",
                rjs_webserver::dashboard::session::COOKIE,
                b.session_cookie().unwrap()
            ),
        )
        .send()
        .unwrap();
    assert_eq!(shown.status(), 200);
    let shown = Image::decode_png(&shown.bytes().unwrap(), u64::MAX).unwrap();
    assert!(
        shown == native,
        "the dashboard's stitched image differs from the native render"
    );
    drop(b);

    grid.stop().unwrap_or_else(|e| panic!("{e:#}"));
}

// ------------------------------------------------------------------------------------------
// 2. A node killed mid-job

const NODE_KILLED: &str =
    "a_node_killed_mid_job_loses_nothing_and_its_jobs_move_within_the_lease_ttl";

/// Two long tiles run on the faster node; it is SIGKILLed while they run. They must move to
/// the other node within the nodes' lease TTL + 1 s of the kill, and end with exactly one
/// answer each, signed by the survivor.
#[test]
fn a_node_killed_mid_job_loses_nothing_and_its_jobs_move_within_the_lease_ttl() {
    if !netns::isolated_child(NODE_KILLED, Duration::from_secs(120)) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), &[node(1000.0), node(2000.0)]);
    opts.slots_per_node = 2;
    let mut grid = start(opts);
    let ttl = node_ttl(&grid);
    // About 2.5 s of work per task (one core each), so that both are caught running.
    let job = job_variant("mandelbrot", &dir.path().join("big"), |m| {
        m["name"] = "mandelbrot-big".into();
        m["args"] = serde_json::json!(["2048", "2048", "3000"]);
        m["tasks"] = 2.into();
    });
    let up = grid.upload(&grid.pack(&job).unwrap()).unwrap();
    let ids: Vec<i64> = up.jobs.iter().map(|j| j.id).collect();
    assert_eq!(ids.len(), 2);

    // Both run on node-2, the faster one (2 slots).
    poll_until(
        Duration::from_secs(20),
        Duration::from_millis(20),
        || {
            ids.iter()
                .filter(|&&id| {
                    let w = grid.why(id).unwrap();
                    w.state == JobWhere::Running && w.node.as_deref() == Some("node-2")
                })
                .count()
        },
        |&running| running == 2,
        |_| {
            format!(
                "the jobs are not both running on node-2: {:?}\n{}",
                ids.iter().map(|&id| grid.why(id)).collect::<Vec<_>>(),
                grid.log_tails()
            )
        },
    );
    // …as node-2 itself says: its announcements show no free slot.
    wait_panel(&grid, "node-2 busy", Duration::from_secs(5), |p| {
        row(p, "node-2").is_some_and(|r| r.busy == 2 && r.announced_free == 0)
    });
    let before = grid.api().jobs(Some(&up.bundle_id)).unwrap().jobs;
    assert!(
        before.iter().all(|j| j.state == JobState::Leased),
        "caught running: {before:?}"
    );

    let killed_at = Instant::now();
    let status = grid.kill_node(1, libc::SIGKILL).unwrap();
    assert_eq!(status.and_then(|s| s.signal()), Some(libc::SIGKILL));

    // Each job shows up running on node-1 (or already answered by it).
    let mut moved: BTreeMap<i64, Duration> = BTreeMap::new();
    while moved.len() < ids.len() {
        for &id in &ids {
            if moved.contains_key(&id) {
                continue;
            }
            let w = grid.why(id).unwrap();
            if matches!(w.state, JobWhere::Running | JobWhere::Answered)
                && w.node.as_deref() == Some("node-1")
            {
                moved.insert(id, killed_at.elapsed());
            }
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(15),
            "the jobs of the killed node did not move to node-1: {:?}\n{}",
            ids.iter().map(|&id| grid.why(id)).collect::<Vec<_>>(),
            grid.log_tails()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("re-dispatched after the kill: {moved:?} (lease TTL {ttl:?})");
    for (id, after) in &moved {
        assert!(
            *after <= ttl + Duration::from_secs(1),
            "job {id} moved to node-1 only {after:?} after node-2 was killed (TTL {ttl:?})"
        );
    }
    // And the lookup drops it when its lease runs out.
    let left = (ttl + Duration::from_secs(2)).saturating_sub(killed_at.elapsed());
    wait_panel(&grid, "node-2 dropped", left, |p| ids_eq(p, &["node-1"]));

    let jobs = grid.wait_final(&up.bundle_id, 2, Duration::from_secs(30));
    for job in &jobs {
        let v = checked_answer(&grid, job);
        println!("task {} took {} ms on node-1", job.task, v.result().wall_ms);
        assert_eq!(job.node.as_deref(), Some("node-1"), "{job:?}");
        // The lookup moved the job itself: the web server's lease never ran out.
        assert_eq!(job.attempts, 0, "{job:?}");
    }
    let status = grid.lookup_status().unwrap();
    assert_eq!(status.lost_total, 2, "{status:?}");
    assert_eq!(status.answers_total, 2, "{status:?}");
    let panel = grid.nodes_panel().unwrap();
    assert_eq!(
        row(&panel, "node-1").map(|r| r.answers.exit_zero),
        Some(2),
        "{panel:?}"
    );

    grid.stop().unwrap_or_else(|e| panic!("{e:#}"));
}

// ------------------------------------------------------------------------------------------
// 3. Forged, replayed and impostor announcements

/// An mDNS responder of the test's own, on `lo` of the private namespace, announcing
/// whatever it is told to.
struct Responder {
    daemon: ServiceDaemon,
}

impl Responder {
    fn new() -> Self {
        assert!(
            netns::is_private(),
            "an mDNS daemon is only ever created inside a private network namespace"
        );
        let daemon = ServiceDaemon::new().unwrap();
        daemon.disable_interface(IfKind::All).unwrap();
        daemon.enable_interface(IfKind::Name("lo".into())).unwrap();
        Responder { daemon }
    }

    /// Registers (or updates) instance `instance` of the nodes' service at `ip:port` with
    /// these TXT fields.
    fn announce(&self, instance: &str, ip: IpAddr, port: u16, txt: &[(String, String)]) {
        announce_on(&self.daemon, instance, ip, port, txt);
    }

    /// Browses the nodes' service until node `id` announces itself with a signature that
    /// `key` verifies (not one of the forgeries); returns its TXT.
    fn capture(&self, id: &str, key: &PublicKey, timeout: Duration) -> Vec<(String, String)> {
        let events = self.daemon.browse(SERVICE_TYPE).unwrap();
        let deadline = Instant::now() + timeout;
        let txt = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no announcement of {id} heard");
            if let Ok(ServiceEvent::ServiceResolved(info)) = events.recv_timeout(left) {
                let txt: Vec<(String, String)> = info
                    .get_properties()
                    .iter()
                    .map(|p| (p.key().to_owned(), p.val_str().to_owned()))
                    .collect();
                let genuine = Announcement::from_txt(txt.clone()).is_ok_and(|(a, sig)| {
                    a.node_id == id && a.verify(&sig, |m, s| key.verify(m, s)).is_ok()
                });
                if genuine {
                    break txt;
                }
            }
        };
        let _ = self.daemon.stop_browse(SERVICE_TYPE);
        txt
    }

    fn shutdown(self) {
        if let Ok(done) = self.daemon.shutdown() {
            let _ = done.recv_timeout(Duration::from_secs(1));
        }
    }
}

fn announce_on(
    daemon: &ServiceDaemon,
    instance: &str,
    ip: IpAddr,
    port: u16,
    txt: &[(String, String)],
) {
    let host = format!("{instance}.local.");
    let mut info = ServiceInfo::new(SERVICE_TYPE, instance, &host, &[ip][..], port, txt).unwrap();
    info.set_requires_probe(false);
    daemon.register(info).unwrap();
}

/// The TXT fields of an announcement of node `id` at `addr` signed with `key`: one slot, and
/// a speed that would make the scheduler pick it first.
fn signed_txt(
    key: &KeyPair,
    id: &str,
    addr: SocketAddr,
    ts: u64,
    seq: u64,
) -> Vec<(String, String)> {
    Announcement {
        node_id: id.to_owned(),
        port: addr.port(),
        addrs: vec![addr.ip()],
        mflops: 999_999,
        free_slots: 1,
        total_slots: 1,
        groups: vec!["/compute".to_owned()],
        timestamp_ms: ts,
        seq,
    }
    .to_txt(|m| key.sign(m))
    .unwrap()
}

/// Announces node `id` signed with `key` every `interval` (fresh timestamp, next sequence
/// number: valid lease renewals) at `ip:port`, until dropped.
struct Impersonation {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Impersonation {
    fn start(
        responder: &Responder,
        key: KeyPair,
        id: &str,
        instance: &str,
        addr: SocketAddr,
        interval: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (daemon, id, instance, flag) = (
            responder.daemon.clone(),
            id.to_owned(),
            instance.to_owned(),
            stop.clone(),
        );
        let thread = std::thread::spawn(move || {
            let mut seq = 1_000_000;
            let mut fullname = None;
            while !flag.load(Ordering::SeqCst) {
                seq += 1;
                let txt = signed_txt(&key, &id, addr, unix_ms_now(), seq);
                announce_on(&daemon, &instance, addr.ip(), addr.port(), &txt);
                fullname = Some(format!("{instance}.{SERVICE_TYPE}"));
                std::thread::sleep(interval);
            }
            if let Some(name) = fullname
                && let Ok(done) = daemon.unregister(&name)
            {
                let _ = done.recv_timeout(Duration::from_secs(1));
            }
        });
        Impersonation {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Impersonation {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP listener that counts the connections made to it (a forged node's job server).
struct Trap {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
}

impl Trap {
    fn bind(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicU64::new(0));
        let count = connections.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                count.fetch_add(1, Ordering::SeqCst);
                drop(s);
            }
        });
        Trap { addr, connections }
    }

    fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

/// An impostor's job server: TLS with a certificate of the test's choosing. Counts
/// connections, completed handshakes and application bytes received after a handshake (an
/// offer would be the first of them).
struct Impostor {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
    handshakes: Arc<AtomicU64>,
    bytes_after_tls: Arc<AtomicU64>,
}

impl Impostor {
    fn start(config: rustls::ServerConfig) -> Self {
        let config = Arc::new(config);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let (connections, handshakes, bytes_after_tls) = Default::default();
        let me = Impostor {
            addr,
            connections,
            handshakes,
            bytes_after_tls,
        };
        let (c, h, b) = (
            me.connections.clone(),
            me.handshakes.clone(),
            me.bytes_after_tls.clone(),
        );
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(sock) = s else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let (config, h, b) = (config.clone(), h.clone(), b.clone());
                std::thread::spawn(move || {
                    let _ = sock.set_read_timeout(Some(Duration::from_secs(10)));
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, sock);
                    while tls.conn.is_handshaking() {
                        match tls.conn.complete_io(&mut tls.sock) {
                            Ok((0, 0)) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = tls.read(&mut buf) {
                        b.fetch_add(n as u64, Ordering::SeqCst);
                    }
                });
            }
        });
        me
    }

    fn counts(&self) -> (u64, u64, u64) {
        (
            self.connections.load(Ordering::SeqCst),
            self.handshakes.load(Ordering::SeqCst),
            self.bytes_after_tls.load(Ordering::SeqCst),
        )
    }
}

/// A TLS server configuration presenting `cert_pem` / `key_pem`.
fn tls_presenting(cert_pem: &[u8], key_pem: &[u8]) -> rustls::ServerConfig {
    let chain = rjs_wire::tls::certs_from_pem(cert_pem, "certificate").unwrap();
    let key = rjs_wire::tls::key_from_pem(key_pem, "key").unwrap();
    rjs_wire::tls::server_config(chain, key, rjs_wire::tls::ClientAuth::None).unwrap()
}

/// Uploads a `hello` bundle of `tasks` tasks and waits for it; every job must be done by one
/// of `allowed`, with a verified answer.
fn run_hello(grid: &LocalGrid, dir: &Path, who: &str, tasks: u32, allowed: &[&str]) {
    let job = hello(&dir.join(who), who, tasks);
    let up = grid.upload(&grid.pack(&job).unwrap()).unwrap();
    assert_eq!(up.jobs.len(), tasks as usize);
    let jobs = grid.wait_final(&up.bundle_id, tasks as usize, Duration::from_secs(30));
    check_hello(grid, &jobs, who);
    for job in &jobs {
        assert!(
            allowed.contains(&job.node.as_deref().unwrap_or("")),
            "job {} ran on {:?}, not on {allowed:?}",
            job.id,
            job.node
        );
    }
}

/// Runs `hello` bundles of 3 tasks (`<who>-1`, `<who>-2`, …) on the grid, each of whose
/// jobs must be done by one of `allowed`, until `tried()` holds after one (the lookup
/// tried the impostor: it may be holding off a node that failed a moment ago). Up to 20 s.
fn run_hello_until(
    grid: &LocalGrid,
    dir: &Path,
    who: &str,
    allowed: &[&str],
    tried: impl Fn() -> bool,
) {
    let start = Instant::now();
    for round in 1.. {
        run_hello(grid, dir, &format!("{who}-{round}"), 3, allowed);
        if tried() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the lookup never tried the impostor in {round} bundles: the test proves nothing\n{}",
            grid.log_tails()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

const FORGED: &str = "forged_replayed_and_impostor_announcements_never_get_a_job";

/// Announcements that must get nothing: (a) signed by unknown keys (an unknown node id, and
/// a real node's id), (b) replays of a real node's announcements (one captured off the air
/// and re-sent, one signed with its key but older than its last, one outside the clock
/// window), all pointing at a trap; (c) valid announcements of a stopped node (signed with
/// its real key) pointing at an impostor's TLS server, which presents first a certificate
/// from a CA of its own, then another node's genuine cluster certificate. Meanwhile real
/// jobs all run on the real nodes.
#[test]
fn forged_replayed_and_impostor_announcements_never_get_a_job() {
    if !netns::isolated_child(FORGED, Duration::from_secs(120)) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut grid = start(options(dir.path(), &[node(1000.0), node(1000.0)]));
    let ttl = node_ttl(&grid);
    let responder = Responder::new();
    let before = grid.nodes_panel().unwrap();
    let node1_port = row(&before, "node-1").unwrap().port;
    let node2_port = row(&before, "node-2").unwrap().port;

    // (a) Unknown keys, pointing at a trap; (b) replays of node-1 pointing at another.
    let trap = announce_unknown_keys(&responder);
    let replay_trap = replay_node1(&grid, &responder, node1_port);
    let d0 = before.drops;
    let panel = wait_panel(
        &grid,
        "every forgery dropped",
        Duration::from_secs(10),
        |p| {
            let d = p.drops;
            d.unknown_key > d0.unknown_key
                && d.bad_signature > d0.bad_signature
                && d.replay >= d0.replay + 2
                && d.stale > d0.stale
        },
    );
    println!("drops: {:?} → {:?}", d0, panel.drops);
    run_hello(&grid, dir.path(), "ab", 6, &["node-1", "node-2"]);
    let panel = grid.nodes_panel().unwrap();
    assert_eq!(ids(&panel), ["node-1", "node-2"], "{panel:?}");
    assert_eq!(row(&panel, "node-1").unwrap().port, node1_port);
    assert_eq!(row(&panel, "node-1").unwrap().addresses, ["127.0.0.1"]);
    assert_eq!(row(&panel, "node-2").unwrap().port, node2_port);
    assert_eq!(trap.connections(), 0, "the lookup dialled a forged node");
    assert_eq!(replay_trap.connections(), 0, "the lookup dialled a replay");

    // (c) node-2 stops; an impostor announces itself as node-2, correctly signed (the node
    // key leaked), but cannot show node-2's enrolled certificate.
    grid.kill_node(1, libc::SIGTERM).unwrap();
    wait_panel(&grid, "node-2 gone", ttl + Duration::from_secs(2), |p| {
        ids_eq(p, &["node-1"])
    });

    //   1. A certificate from a CA of its own, naming 127.0.0.1.
    let ca = rjs_wire::pki::new_ca("rogue CA").unwrap();
    let cert = rjs_wire::pki::issue(
        &ca,
        "node-2",
        rjs_wire::pki::host_sans(&["127.0.0.1".to_owned()]).unwrap(),
        Vec::new(),
    )
    .unwrap();
    let rogue = tls_presenting(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes());
    let (conns, handshakes, bytes) =
        impersonate_node2(&grid, dir.path(), &responder, rogue, "impostor", "c1");
    println!(
        "impostor with its own CA: {conns} connections, {handshakes} handshakes, {bytes} bytes"
    );
    assert_eq!(
        (handshakes, bytes),
        (0, 0),
        "the lookup completed TLS with a certificate outside the cluster CA"
    );

    //   2. node-1's genuine cluster certificate and key (from the cluster CA, naming
    //      127.0.0.1): TLS completes, but it is not node-2's enrolled certificate.
    let node1_dir = grid.node_dir(0).unwrap().to_owned();
    let stolen = tls_presenting(
        &std::fs::read(node1_dir.join("node.pem")).unwrap(),
        &std::fs::read(node1_dir.join("node-key.pem")).unwrap(),
    );
    let (conns, handshakes, bytes) =
        impersonate_node2(&grid, dir.path(), &responder, stolen, "thief", "c2");
    println!(
        "impostor with node-1's certificate: {conns} connections, {handshakes} handshakes, {bytes} bytes"
    );
    assert_eq!(
        bytes, 0,
        "the lookup sent something (an offer?) to a node whose certificate is not its enrolled one"
    );

    assert_eq!(trap.connections() + replay_trap.connections(), 0);
    responder.shutdown();
    grid.stop().unwrap_or_else(|e| panic!("{e:#}"));
}

/// (a) Announcements signed by an unknown key, of an unknown node id and of node-1's id,
/// pointing at a trap; returns the trap.
fn announce_unknown_keys(responder: &Responder) -> Trap {
    let trap = Trap::bind((Ipv4Addr::LOCALHOST, 0).into());
    let stranger = KeyPair::generate();
    let now = unix_ms_now();
    responder.announce(
        "intruder",
        trap.addr.ip(),
        trap.addr.port(),
        &signed_txt(&stranger, "intruder", trap.addr, now, 1),
    );
    responder.announce(
        "forger",
        trap.addr.ip(),
        trap.addr.port(),
        &signed_txt(&stranger, "node-1", trap.addr, now, u64::MAX / 2),
    );
    trap
}

/// (b) Replays of node-1, at another address (the port is signed) where a second trap
/// listens: one captured off the air and re-sent once node-1 has announced newer ones, one
/// signed with its key but older than its last, one outside the clock window. Returns the
/// trap.
fn replay_node1(grid: &LocalGrid, responder: &Responder, node1_port: u16) -> Trap {
    let replay_trap = Trap::bind((Ipv4Addr::new(127, 0, 0, 2), node1_port).into());
    let node1_public = grid.node_public_key(0).unwrap();
    let captured = responder.capture("node-1", &node1_public, Duration::from_secs(5));
    // node-1 announces newer ones meanwhile.
    std::thread::sleep(grid.options().announce_interval * 3);
    let replay_ip = replay_trap.addr.ip();
    responder.announce("replayed", replay_ip, node1_port, &captured);
    let node1_key = KeyPair::load(&grid.node_dir(0).unwrap().join("node.key")).unwrap();
    let now = unix_ms_now();
    responder.announce(
        "older",
        replay_ip,
        node1_port,
        &signed_txt(&node1_key, "node-1", replay_trap.addr, now - 5_000, 1),
    );
    responder.announce(
        "stale",
        replay_ip,
        node1_port,
        &signed_txt(
            &node1_key,
            "node-1",
            replay_trap.addr,
            now - 120_000,
            u64::MAX / 2,
        ),
    );
    replay_trap
}

/// (c) An impostor's job server presenting `tls`, announced as node-2 (mDNS instance
/// `instance`) with valid announcements signed by node-2's real key: waits until the lookup
/// lists it, then runs `hello` bundles `<round>-…` (every job on node-1) until the lookup
/// has tried it. Returns the impostor's counts (connections, handshakes, bytes).
fn impersonate_node2(
    grid: &LocalGrid,
    dir: &Path,
    responder: &Responder,
    tls: rustls::ServerConfig,
    instance: &str,
    round: &str,
) -> (u64, u64, u64) {
    let impostor = Impostor::start(tls);
    let node2_key = KeyPair::load(&grid.node_dir(1).unwrap().join("node.key")).unwrap();
    let _announcing = Impersonation::start(
        responder,
        node2_key,
        "node-2",
        instance,
        impostor.addr,
        grid.options().announce_interval,
    );
    wait_panel(
        grid,
        &format!("the {instance} listed as node-2"),
        Duration::from_secs(5),
        |p| row(p, "node-2").is_some_and(|r| r.port == impostor.addr.port()),
    );
    run_hello_until(grid, dir, round, &["node-1"], || impostor.counts().0 >= 1);
    impostor.counts()
}

const UNSIGNED_ADDRESS: &str = "an_unsigned_address_record_never_changes_where_the_lookup_connects";

/// Issue 10, item 2: an attacker on the LAN sends, every announcement interval, an extra
/// (unsigned) address record for node-1's host name pointing at a trap. The lookup keeps
/// dialling node-1's signed address only: the panel shows just that address, every job runs
/// on the real nodes, and the trap is never dialled.
#[test]
fn an_unsigned_address_record_never_changes_where_the_lookup_connects() {
    if !netns::isolated_child(UNSIGNED_ADDRESS, Duration::from_secs(120)) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut grid = start(options(dir.path(), &[node(1000.0), node(1000.0)]));
    let responder = Responder::new();
    let panel = grid.nodes_panel().unwrap();
    let node1_port = row(&panel, "node-1").unwrap().port;
    let trap = Trap::bind((Ipv4Addr::new(127, 0, 0, 2), node1_port).into());
    let fingerprint = grid.node_public_key(0).unwrap().fingerprint().to_string();
    let host = rjs_wire::announce::host_name(&fingerprint);
    let stop = Arc::new(AtomicBool::new(false));
    let (daemon, flag, interval) = (
        responder.daemon.clone(),
        stop.clone(),
        grid.options().announce_interval,
    );
    let injector = std::thread::spawn(move || {
        while !flag.load(Ordering::SeqCst) {
            // Services of the attacker's whose address records name node-1's host: its
            // own host name, and `node-1.local.` (the name nodes used to announce).
            for (i, host) in [host.as_str(), "node-1.local."].into_iter().enumerate() {
                let mut info = ServiceInfo::new(
                    "_decoy._tcp.local.",
                    &format!("decoy{i}"),
                    host,
                    &[IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))][..],
                    node1_port,
                    &[("x", "y")][..],
                )
                .unwrap();
                info.set_requires_probe(false);
                let _ = daemon.register(info);
            }
            std::thread::sleep(interval);
        }
    });
    std::thread::sleep(grid.options().announce_interval * 4);
    run_hello(&grid, dir.path(), "signed", 6, &["node-1", "node-2"]);
    let panel = grid.nodes_panel().unwrap();
    assert_eq!(ids(&panel), ["node-1", "node-2"], "{panel:?}");
    assert_eq!(row(&panel, "node-1").unwrap().addresses, ["127.0.0.1"]);
    assert_eq!(
        trap.connections(),
        0,
        "the lookup dialled an unsigned address"
    );
    stop.store(true, Ordering::SeqCst);
    injector.join().unwrap();
    responder.shutdown();
    grid.stop().unwrap_or_else(|e| panic!("{e:#}"));
}

const MARKS: &str = "announcements_replayed_after_a_lookup_restart_are_refused";

/// Issue 10, item 3: node-2's announcements are captured off the air; node-2 is killed and
/// the lookup restarted; the captures, replayed again and again, never bring node-2 back (the
/// lookup kept its high-water marks on disk), and no job is offered to it.
#[test]
fn announcements_replayed_after_a_lookup_restart_are_refused() {
    if !netns::isolated_child(MARKS, Duration::from_secs(120)) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut grid = start(options(dir.path(), &[node(1000.0), node(1000.0)]));
    let ttl = node_ttl(&grid);
    let responder = Responder::new();
    let node2_key = grid.node_public_key(1).unwrap();
    let captured = responder.capture("node-2", &node2_key, Duration::from_secs(5));
    grid.kill_node(1, libc::SIGKILL).unwrap();
    grid.kill_lookup(libc::SIGTERM).unwrap();
    grid.start_lookup().unwrap();
    wait_panel(&grid, "node-2 gone", ttl + Duration::from_secs(3), |p| {
        ids_eq(p, &["node-1"])
    });
    let d0 = grid.nodes_panel().unwrap().drops;
    // The replays, at node-2's own (signed) address.
    let (ann, _) = Announcement::from_txt(captured.clone()).unwrap();
    for round in 0..5 {
        responder.announce(&format!("replay{round}"), ann.addrs[0], ann.port, &captured);
        std::thread::sleep(grid.options().announce_interval);
    }
    let panel = wait_panel(&grid, "the replays dropped", Duration::from_secs(5), |p| {
        p.drops.replay > d0.replay
    });
    assert_eq!(
        ids(&panel),
        ["node-1"],
        "a replay brought node-2 back: {panel:?}"
    );
    run_hello(&grid, dir.path(), "after-restart", 3, &["node-1"]);
    assert!(
        grid.lookup_dir().join("announce-marks.json").exists(),
        "the marks are kept in the lookup's data folder"
    );
    responder.shutdown();
    grid.stop().unwrap_or_else(|e| panic!("{e:#}"));
}

const FLOOD: &str = "a_flood_of_forged_services_neither_drops_real_nodes_nor_lingers";

/// Issue 10, item 4, at CI scale (the full counts are `cargo bench -p rjs --bench
/// discovery_flood`): a burst of forged services (long TTL), then new ones every 100 ms, from
/// another process. No real node ever leaves the panel, discovery starts afresh (so the
/// daemon's cache is bounded), the lookup's CPU is back under 5% of a core within 10 s of
/// the end, its memory stays bounded, and jobs still run.
#[test]
fn a_flood_of_forged_services_neither_drops_real_nodes_nor_lingers() {
    if !netns::isolated_child(FLOOD, Duration::from_secs(120)) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let grid = start(options(dir.path(), &[node(1000.0), node(1000.0)]));
    let plan = FloodPlan {
        burst: 2_000,
        per_second: 300,
        duration: Duration::from_secs(5),
        ttl: 4_500,
        watch_after: Duration::from_secs(10),
    };
    let r = grid_flood::run(&grid, Ipv4Addr::LOCALHOST, plan).unwrap();
    println!("{r:?}");
    assert!(
        r.nodes_missed.is_empty(),
        "real nodes left the panel: {r:?}"
    );
    assert!(r.restarts >= 1, "discovery never started afresh: {r:?}");
    let settled = r.cpu_at(10).unwrap();
    assert!(
        settled < 0.05,
        "the lookup still used {settled:.3} of a core: {r:?}"
    );
    assert!(
        r.rss_max < r.rss_before + (64 << 20),
        "the lookup grew from {} to {} bytes",
        r.rss_before,
        r.rss_max
    );
    run_hello(&grid, dir.path(), "after-flood", 4, &["node-1", "node-2"]);
    let mut grid = grid;
    grid.stop().unwrap_or_else(|e| panic!("{e:#}"));
}

// ------------------------------------------------------------------------------------------
// 4. The lookup killed mid-run

const LOOKUP_KILLED: &str =
    "a_lookup_killed_mid_run_and_restarted_loses_no_job_and_answers_each_once";

/// 200 tasks; the lookup is SIGKILLed when about half are done, with answers in its spool
/// that the web server has not got yet (it is paused for the moment), and started again.
/// Every job ends done, with one verified answer, within a bounded time: the spooled
/// answers are relayed by the restarted lookup (not run again), the other jobs the dead
/// lookup held come back after their (short) lease.
#[test]
fn a_lookup_killed_mid_run_and_restarted_loses_no_job_and_answers_each_once() {
    if !netns::isolated_child(LOOKUP_KILLED, Duration::from_secs(120)) {
        return;
    }
    const TASKS: u32 = 200;
    let lease = Duration::from_secs(5);
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), &[node(1000.0), node(1000.0)]);
    opts.lookup_args = vec!["--lease".into(), format!("{}s", lease.as_secs())];
    let mut grid = start(opts);
    let job = hello(&dir.path().join("many"), "many", TASKS);
    let up = grid.upload(&grid.pack(&job).unwrap()).unwrap();
    assert_eq!(up.jobs.len(), TASKS as usize);

    let kill = kill_lookup_with_answers_in_spool(&mut grid, &up, TASKS);

    grid.start_lookup().unwrap();
    let jobs = grid.wait_final(
        &up.bundle_id,
        TASKS as usize,
        lease + Duration::from_secs(25),
    );
    let took = kill.at.elapsed();
    println!("all {TASKS} final {took:?} after the kill");

    assert!(
        jobs.iter().all(|j| j.state == JobState::Done),
        "{}",
        grid_states(&jobs)
    );
    assert_eq!(
        jobs.iter().map(|j| j.task).collect::<Vec<_>>(),
        (0..TASKS).collect::<Vec<_>>()
    );
    check_hello(&grid, &jobs, "many");
    kill.check_each_job_answered_once(&jobs);
    let status = grid.lookup_status().unwrap();
    assert_eq!(status.spooled, 0, "{status:?}");
    assert!(
        took <= lease + Duration::from_secs(15),
        "the grid took {took:?} to finish after the lookup came back"
    );

    grid.stop().unwrap_or_else(|e| panic!("{e:#}"));
}

/// The jobs as a lookup was SIGKILLed ([`kill_lookup_with_answers_in_spool`]).
struct LookupKill {
    at: Instant,
    /// The bundle's jobs at the web server right after the kill.
    jobs: Vec<JobView>,
    /// Those leased.
    held: Vec<i64>,
    /// Answered by a node, not yet at the web server: only in the dead lookup's spool (with
    /// the node that answered).
    in_spool: BTreeMap<i64, String>,
}

/// Once half the `tasks` jobs of the upload `up` are done, pauses the web server (SIGSTOP) so that
/// what the nodes answer meanwhile cannot be relayed, waits for answers in the lookup's spool,
/// SIGKILLs the lookup and lets the web server go on.
fn kill_lookup_with_answers_in_spool(
    grid: &mut LocalGrid,
    up: &UploadResponse,
    tasks: u32,
) -> LookupKill {
    let bundle = up.bundle_id.as_str();
    let done = |jobs: &[JobView]| jobs.iter().filter(|j| j.state == JobState::Done).count();
    let now = poll_until(
        Duration::from_secs(30),
        Duration::from_millis(10),
        || grid.api().jobs(Some(bundle)).unwrap().jobs,
        |jobs| done(jobs) >= tasks as usize / 2,
        |jobs| {
            format!(
                "half the jobs not done within 30 s: {}\n{}",
                grid_states(jobs),
                grid.log_tails()
            )
        },
    );
    let done_at_kill = done(&now);
    // The kill is to catch answers in the lookup's spool.
    grid.kill_webserver(libc::SIGSTOP).unwrap();
    let spooled = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(20),
        || grid.lookup_status().unwrap(),
        |s| s.spooled >= 1 && s.running == 0 && s.queued == 0,
        |s| format!("no answer spooled while the web server is paused: {s:?}"),
    )
    .spooled;
    let socket = grid.status_socket().unwrap().to_owned();
    let answered: BTreeMap<i64, String> = up
        .jobs
        .iter()
        .filter_map(|j| {
            let w = ask_why(&socket, j.id);
            (w.state == JobWhere::Answered).then(|| (j.id, w.node.unwrap_or_default()))
        })
        .collect();
    let status = grid.kill_lookup(libc::SIGKILL).unwrap();
    let at = Instant::now();
    assert_eq!(status.and_then(|s| s.signal()), Some(libc::SIGKILL));
    grid.kill_webserver(libc::SIGCONT).unwrap();
    let at_kill = grid.api().jobs(Some(bundle)).unwrap().jobs;
    let held: Vec<i64> = at_kill
        .iter()
        .filter(|j| j.state == JobState::Leased)
        .map(|j| j.id)
        .collect();
    let in_spool: BTreeMap<i64, String> = answered
        .into_iter()
        .filter(|(id, _)| held.contains(id))
        .collect();
    println!(
        "lookup killed with {done_at_kill}+ of {tasks} done and {spooled} answers spooled \
         ({} of them never reached the web server): {}",
        in_spool.len(),
        grid_states(&at_kill)
    );
    assert!(
        !in_spool.is_empty() && in_spool.len() as u64 <= spooled,
        "{in_spool:?}, {spooled} spooled"
    );
    LookupKill {
        at,
        jobs: at_kill,
        held,
        in_spool,
    }
}

impl LookupKill {
    /// The final `jobs`: the answers left in the spool were relayed by the restarted lookup
    /// (not run again); only jobs the dead lookup held can have lost a lease (at most once:
    /// the new lookup runs them), and only because it ran out.
    fn check_each_job_answered_once(&self, jobs: &[JobView]) {
        for (id, node) in &self.in_spool {
            let j = jobs.iter().find(|j| j.id == *id).unwrap();
            assert_eq!(
                (j.attempts, j.node.as_deref()),
                (0, Some(node.as_str())),
                "job {id}, answered by {node} before the kill: {j:?}"
            );
        }
        // "Held" includes a lease the web server granted after it was resumed, from a request
        // the dead lookup had sent while it was paused: so any job not done at the kill.
        let done_at_kill: Vec<i64> = self
            .jobs
            .iter()
            .filter(|j| j.state == JobState::Done)
            .map(|j| j.id)
            .collect();
        for j in jobs {
            assert!(j.attempts <= 1, "{j:?}");
            if j.attempts == 1 {
                assert!(
                    !done_at_kill.contains(&j.id),
                    "job {} was done at the kill yet ran again: {j:?}",
                    j.id
                );
                assert!(
                    j.reason.as_deref().is_some_and(|r| r.contains("expired")),
                    "{j:?}"
                );
            }
        }
        let retried = jobs.iter().filter(|j| j.attempts == 1).count();
        println!(
            "{} jobs leased at the kill: {} answers relayed from the spool, {retried} ran again \
             after their lease expired",
            self.held.len(),
            self.in_spool.len()
        );
    }
}

/// `{"get":"why","job":N}` on the lookup's status socket (what `rjs-lookup why` asks,
/// without a process per question).
fn ask_why(socket: &Path, job: i64) -> WhyResponse {
    let mut conn = std::os::unix::net::UnixStream::connect(socket).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut line = serde_json::to_vec(&rjs_wire::status::StatusRequest::Why { job }).unwrap();
    line.push(b'\n');
    conn.write_all(&line).unwrap();
    let mut answer = String::new();
    std::io::BufReader::new(conn)
        .read_line(&mut answer)
        .unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{answer:?}: {e}"))
}

// ------------------------------------------------------------------------------------------
// 5. A node that does not trust the author

const UNTRUSTED: &str =
    "a_node_that_does_not_trust_the_author_is_skipped_and_a_job_only_it_could_take_waits";

/// node-2, the faster, does not trust the author (and has no terminal to ask on): it
/// refuses, every job runs on node-1. With node-1 stopped a new job is parked, and `why`
/// says node-2 refused it because the author is untrusted; node-1 back, it runs.
#[test]
fn a_node_that_does_not_trust_the_author_is_skipped_and_a_job_only_it_could_take_waits() {
    if !netns::isolated_child(UNTRUSTED, Duration::from_secs(120)) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let doubter = NodeOptions {
        trust_author: false,
        ..node(5000.0)
    };
    let mut grid = start(options(dir.path(), &[node(1000.0), doubter]));
    let panel = grid.nodes_panel().unwrap();
    assert!(
        row(&panel, "node-2").unwrap().mflops > row(&panel, "node-1").unwrap().mflops,
        "node-2 is tried first: {panel:?}"
    );

    run_hello(&grid, dir.path(), "first", 6, &["node-1"]);
    let panel = grid.nodes_panel().unwrap();
    let (n1, n2) = (
        row(&panel, "node-1").unwrap(),
        row(&panel, "node-2").unwrap(),
    );
    assert_eq!((n1.answers.exit_zero, n1.refused), (6, 0), "{panel:?}");
    println!("refusals by node-2: {}", n2.refused);
    assert!(n2.refused >= 1 && n2.answers.total() == 0, "{panel:?}");
    assert!(grid.lookup_status().unwrap().refusals_total >= 1);

    // node-1 stops: nothing will take the next job.
    grid.kill_node(0, libc::SIGTERM).unwrap();
    wait_panel(
        &grid,
        "node-1 gone",
        node_ttl(&grid) + Duration::from_secs(2),
        |p| ids_eq(p, &["node-2"]),
    );
    let job = hello(&dir.path().join("second"), "second", 1);
    let up = grid.upload(&grid.pack(&job).unwrap()).unwrap();
    let id = up.jobs[0].id;
    let why = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || grid.why(id).unwrap(),
        |w| w.state == JobWhere::Parked,
        |w| format!("job {id} not parked: {w:?}\n{}", grid.log_tails()),
    );
    println!("rjs-lookup why {id}: {}", why.why);
    assert!(
        why.why
            .starts_with("Refused by 1 node: 1 node because the author is untrusted."),
        "{why:?}"
    );
    let state = grid.api().jobs(Some(&up.bundle_id)).unwrap().jobs[0].state;
    assert_eq!(state, JobState::Leased, "parked, still leased");
    // The author, who cannot run rjs-lookup, reads the same reason from the web server.
    let seen = poll_until(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || grid.api().jobs(Some(&up.bundle_id)).unwrap().jobs[0].clone(),
        // The lookup's sentence (rjs-lookup why adds how long it holds the job).
        |j| {
            j.waiting
                .as_deref()
                .is_some_and(|w| !w.is_empty() && why.why.starts_with(w))
        },
        |j| format!("the web server does not say why job {id} waits: {j:?}"),
    );
    assert_eq!(seen.leased_by.as_deref(), Some("lab"), "{seen:?}");

    // node-1 back: the parked job runs on it.
    grid.start_node(0).unwrap();
    let jobs = grid.wait_final(&up.bundle_id, 1, Duration::from_secs(20));
    check_hello(&grid, &jobs, "second");
    assert_eq!(jobs[0].node.as_deref(), Some("node-1"));
    let why = grid.why(id).unwrap();
    assert_eq!(why.state, JobWhere::Answered, "{why:?}");

    grid.stop().unwrap_or_else(|e| panic!("{e:#}"));
}
