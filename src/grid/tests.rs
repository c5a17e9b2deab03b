//! `LocalGrid` end to end: the real binaries (build them first: `cargo build --workspace
//! --bins`, and the samples: `samples/build.sh`), in a private network namespace entered by a
//! child process (this test executable again), so that no mDNS daemon ever starts on the
//! host's network stack.

use std::fs::File;
use std::process::{Command, Stdio};

use rjs_signer::answer::{AnswerLimits, Ending, verify_answer};
use rjs_wire::api::JobState;

use super::*;

const CHILD: &str = "RJS_GRID_TEST_CHILD";

/// Held while a grid runs in a child: the grid tests take turns (on a small machine, grids
/// running side by side would make each other's timings meaningless).
static ONE_GRID_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `test` (a test of this executable) in a child process and checks its verdict: it
/// prints `SKIP: …` when no private network namespace can be made here, `PASS` when done.
/// One such child runs at a time.
pub(super) fn run_in_child(test: &str, timeout: Duration) {
    let _turn = ONE_GRID_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let exe = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("child.log");
    let mut child = Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, test)
        .stdin(Stdio::null())
        .stdout(File::create(&log).unwrap())
        .stderr(File::create(dir.path().join("child.err")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{test} took longer than {timeout:?}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    let err = std::fs::read_to_string(dir.path().join("child.err")).unwrap_or_default();
    eprintln!("{test}: child ran {:.1?}", started.elapsed());
    assert!(status.success(), "{test} failed ({status}):\n{out}\n{err}");
    if let Some(line) = out.lines().find(|l| l.contains("SKIP:")) {
        eprintln!("NOTE: {test}: {line}");
        return;
    }
    assert!(out.contains("PASS"), "{test} did not finish:\n{out}\n{err}");
}

fn in_child(test: &str) -> bool {
    std::env::var(CHILD).is_ok_and(|t| t == test)
}

/// The head of every grid test: `true` in the child that runs `test`, once it is in a
/// private network namespace (entered first, before any thread exists). Elsewhere runs
/// `test` in such a child within `timeout` and checks its verdict ([`run_in_child`]), and
/// where no namespace can be made prints the SKIP line it looks for: `false` either way.
pub(super) fn isolated_child(test: &str, timeout: Duration) -> bool {
    if !in_child(test) {
        run_in_child(test, timeout);
        return false;
    }
    match netns::enter_private() {
        Ok(_) => true,
        Err(e) => {
            println!("SKIP: no private network namespace here: {e:#}");
            false
        }
    }
}

pub(super) fn wait_panel(
    grid: &LocalGrid,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&NodesResponse) -> bool,
) -> NodesResponse {
    let deadline = Instant::now() + timeout;
    loop {
        let panel = grid.nodes_panel();
        if let Ok(p) = &panel
            && ok(p)
        {
            return p.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}; last panel: {panel:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const LIFECYCLE: &str = "grid::tests::a_grid_runs_jobs_and_survives_node_and_lookup_restarts";

#[test]
fn a_grid_runs_jobs_and_survives_node_and_lookup_restarts() {
    if !isolated_child(LIFECYCLE, Duration::from_secs(240)) {
        return;
    }
    let job = workspace_target_dir()
        .join("rjs-samples")
        .join("mandelbrot");
    assert!(
        job.join("manifest.json").is_file(),
        "{} is missing: run samples/build.sh",
        job.display()
    );
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
    let deadline = Instant::now() + Duration::from_secs(120);
    let jobs = loop {
        let jobs = grid.status().unwrap().jobs;
        if jobs.len() == 8 && jobs.iter().all(|j| j.state.is_final()) {
            break jobs;
        }
        assert!(Instant::now() < deadline, "jobs not done: {jobs:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
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
    println!("PASS");
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
