//! Several stateless web servers on one store, one lookup failing over between them
//! (`docs/lookup-server.md`, "Several web servers"): the real binaries, started by the
//! harness's [`LocalGrid`] with a second `rjs-webserver serve` on the first one's data
//! directory (one SQLite store in WAL mode, one CA and certificate, one blob folder) and the
//! lookup given both URLs. The test runs in a child process inside its own private network
//! namespace ([`netns::isolated_child`]): the lookup and the nodes use mDNS.
//!
//! Needs the binaries and the sample jobs: `cargo build --workspace --bins` and
//! `samples/build.sh` (as `scripts/test.sh` does).

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use rjs_harness::grid::{
    AuthorClient, GridOptions, LocalGrid, check_hello_answers, hello_job, states as grid_states,
};
use rjs_harness::netns;
use rjs_harness::wait::poll_until;
use rjs_wire::api::{JobState, JobView};

const KILLED: &str = "the_first_of_two_web_servers_killed_mid_run_every_task_is_answered_once";

/// A few hundred tasks through two web servers; the lookup starts on the first, which is
/// SIGKILLed once about a third are done. The lookup fails over to the second (one store:
/// the same jobs, the same leases), and every task ends done with exactly one answer: no job
/// ran twice on a node, none waited for its lease to lapse (what a lease whose response died
/// with the first server leased is taken back through the second at once), none was lost.
#[test]
fn the_first_of_two_web_servers_killed_mid_run_every_task_is_answered_once() {
    if !netns::isolated_child(KILLED, Duration::from_secs(180)) {
        return;
    }
    const TASKS: u32 = 300;
    let lease = Duration::from_secs(10);
    let dir = tempfile::tempdir().unwrap();
    let opts = GridOptions::several_webservers(dir.path().join("grid"), 2, lease);
    let mut grid = LocalGrid::start(opts).unwrap_or_else(|e| panic!("starting the grid: {e:#}"));
    let urls = grid.webserver_urls();
    assert_eq!(urls.len(), 2);
    assert_ne!(urls[0], urls[1]);

    let status = grid.lookup_status().unwrap();
    assert_eq!(
        (&status.webserver, &status.webservers, status.failovers),
        (&urls[0], &urls, 0),
        "{status:?}"
    );
    assert_eq!(grid.nodes_panel().unwrap().webserver, urls[0]);

    // The author, through the second web server (the first will die).
    let second = grid.author_client_at(1).unwrap();

    let job = dir.path().join("hello-many");
    hello_job(&job, "failover", TASKS).unwrap();
    let up = grid.upload(&grid.pack(&job).unwrap()).unwrap();
    assert_eq!(up.jobs.len(), TASKS as usize);
    let bundle = up.bundle_id.clone();
    let jobs_of = |c: &AuthorClient| c.jobs(Some(&bundle)).map(|l| l.jobs).unwrap_or_default();
    let done = |jobs: &[JobView]| jobs.iter().filter(|j| j.state == JobState::Done).count();

    // One store: the second web server sees the jobs uploaded through the first.
    assert_eq!(jobs_of(&second).len(), TASKS as usize);

    let at_third = poll_until(
        Duration::from_secs(60),
        Duration::from_millis(5),
        || jobs_of(&second),
        |jobs| done(jobs) >= TASKS as usize / 3,
        |jobs| {
            format!(
                "a third of the jobs not done within 60 s: {}\n{}",
                grid_states(jobs),
                grid.log_tails()
            )
        },
    );
    let exit = grid.kill_webserver(libc::SIGKILL).unwrap();
    let killed_at = Instant::now();
    assert_eq!(exit.and_then(|s| s.signal()), Some(libc::SIGKILL));
    let at_kill = jobs_of(&second);
    let done_at_kill = done(&at_kill);
    println!(
        "first web server killed with {}..{done_at_kill} of {TASKS} done: {}",
        done(&at_third),
        grid_states(&at_kill)
    );
    assert!(
        done_at_kill < TASKS as usize,
        "every job was done before the kill: nothing tested"
    );

    let mut jobs = poll_until(
        lease + Duration::from_secs(40),
        Duration::from_millis(50),
        || jobs_of(&second),
        |jobs| jobs.len() == TASKS as usize && jobs.iter().all(|j| j.state.is_final()),
        |jobs| {
            format!(
                "the jobs did not all finish after the kill: {}\n{}",
                grid_states(jobs),
                grid.log_tails()
            )
        },
    );
    let took = killed_at.elapsed();
    println!(
        "all {TASKS} done {took:?} after the kill ({} were left)",
        TASKS as usize - done_at_kill
    );

    // Every task once, done, by a node, never run again after a lapsed lease; each answer
    // this task's, signed by the node named, read through the second.
    for j in &jobs {
        assert_eq!(j.attempts, 0, "a job waited for its lease to lapse: {j:?}");
    }
    check_hello_answers(&second, &mut jobs, &bundle, "failover", TASKS);

    // The lookup says where it is and how it got there; no answer is left behind, and the
    // nodes answered each job once (none ran twice).
    let status = grid.settled_lookup_status(Duration::from_secs(10));
    println!("lookup after the failover: {status:?}");
    assert_eq!(status.webserver, urls[1], "{status:?}");
    assert!(status.failovers >= 1, "{status:?}");
    let last = status.last_failover.clone().unwrap();
    assert_eq!((&last.from, &last.to), (&urls[0], &urls[1]), "{status:?}");
    assert!(last.cause.contains(&urls[0]), "{last:?}");
    assert_eq!(status.answers_total, u64::from(TASKS), "{status:?}");
    assert_eq!(status.lost_total, 0, "{status:?}");
    let panel = grid.nodes_panel().unwrap();
    assert_eq!(
        (&panel.webserver, panel.failovers),
        (&urls[1], status.failovers)
    );
    let log = std::fs::read_to_string(grid.dir().join("logs").join("lookup.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("failing over to the next one") && l.contains(&urls[0])),
        "no failover logged:\n{log}"
    );

    grid.stop().unwrap_or_else(|e| panic!("{e:#}"));
}
