//! The scale-out grid (`docs/scale-out.md`): three stateless web servers sharing one
//! PostgreSQL store and one S3 object store (moto), one lookup given all three, nodes — the
//! real binaries, in a private network namespace ([`netns::isolated_child`]; the lookup and
//! the nodes use mDNS). PostgreSQL is Debian's server on a Unix socket in a temporary folder,
//! moto a loopback HTTP server: both started here and stopped at the end.
//!
//! Needs the binaries and the sample jobs: `cargo build --workspace --bins` and
//! `samples/build.sh` (as `scripts/test.sh` does).

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use rjs_harness::grid::{
    AuthorClient, GridOptions, LocalGrid, check_hello_answers, hello_job, states,
};
use rjs_harness::netns;
use rjs_harness::postgres::Postgres;
use rjs_harness::s3::{self, S3Server};
use rjs_harness::wait::poll_until;

const THREE: &str = "three_web_servers_one_killed_and_the_database_restarted_every_task_once";
const BUCKET: &str = "rjs-grid";

/// 2,000 tasks uploaded through web server 3 while the lookup works through web server 1
/// (it hears of them through the database: an event stream on one server, a submission on
/// another). Web server 1 is SIGKILLed a third of the way: the lookup fails over to server 2.
/// PostgreSQL is killed (a crash: `pg_ctl stop -m immediate`) two thirds of the way and
/// started again 3 s later: the servers reconnect. Every task ends done with exactly one
/// answer, each verified and read from the object store through a surviving server.
#[test]
fn three_web_servers_one_killed_and_the_database_restarted_every_task_once() {
    if !netns::isolated_child(THREE, Duration::from_secs(600)) {
        return;
    }
    const TASKS: u32 = 2_000;
    let lease = Duration::from_secs(20);
    let mut pg = Postgres::start().expect("starting PostgreSQL (scripts/test.sh installs it)");
    pg.create_db("rjs").unwrap();
    let s3 = S3Server::start().expect("starting moto (scripts/test.sh installs it)");
    s3.create_bucket(BUCKET).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut opts = GridOptions::several_webservers(dir.path().join("grid"), 3, lease);
    let mut env: Vec<(String, String)> = vec![
        ("RJS_STORE".into(), pg.url("rjs")),
        ("RJS_BLOBS".into(), format!("s3://{BUCKET}/grid")),
        ("RJS_S3_ENDPOINT".into(), s3.endpoint()),
        ("RJS_S3_REGION".into(), s3::REGION.into()),
        ("RJS_S3_PATH_STYLE".into(), "true".into()),
        ("RJS_S3_ALLOW_HTTP".into(), "true".into()),
    ];
    env.extend(s3.env().into_iter().map(|(k, v)| (k.to_owned(), v)));
    opts.webserver_env = env;
    let mut grid = LocalGrid::start(opts).unwrap_or_else(|e| panic!("starting the grid: {e:#}"));
    let urls = grid.webserver_urls();
    assert_eq!(urls.len(), 3);
    // No SQLite file: the store is PostgreSQL's.
    assert!(!grid.dir().join("webserver").join("rjs.db").exists());

    let (second, third) = (
        grid.author_client_at(1).unwrap(),
        grid.author_client_at(2).unwrap(),
    );

    let job = dir.path().join("hello-many");
    hello_job(&job, "scale-out", TASKS).unwrap();
    let packed = grid.pack(&job).unwrap();
    let bundle_bytes = std::fs::read(&packed).unwrap();
    let up = third.upload(bundle_bytes, false).unwrap();
    assert_eq!(up.jobs.len(), TASKS as usize);
    let bundle = up.bundle_id.clone();
    // The bundle is in the object store, not in the data directory.
    let keys = s3.keys(BUCKET, "grid/").unwrap();
    assert!(keys.contains(&format!("grid/blobs/{bundle}")), "{keys:?}");

    let jobs_of = |c: &AuthorClient| c.jobs(Some(&bundle)).map(|l| l.jobs).unwrap_or_default();
    // The submission's counts: one row, however many tasks (a failed read counts nothing).
    let done_through = |c: &AuthorClient| {
        c.submissions(Some(&bundle))
            .ok()
            .and_then(|l| l.submissions.first().map(|s| s.states.done as usize))
            .unwrap_or(0)
    };
    let started = Instant::now();
    let wait_for = |c: &AuthorClient, part: usize, what: &str| {
        poll_until(
            Duration::from_secs(180),
            Duration::from_millis(50),
            || done_through(c),
            |n| *n >= part,
            |n| format!("{what}: {n} done"),
        )
    };

    // A third done: web server 1, the lookup's, dies.
    wait_for(&second, TASKS as usize / 3, "a third not done within 180 s");
    let exit = grid.kill_webserver(libc::SIGKILL).unwrap();
    assert_eq!(exit.and_then(|s| s.signal()), Some(libc::SIGKILL));
    let at_kill = done_through(&second);
    println!(
        "web server 1 killed at {at_kill} of {TASKS} done, {:.1} s in",
        started.elapsed().as_secs_f64()
    );
    assert!(at_kill < TASKS as usize, "all done before the kill");

    // Two thirds done: the database crashes, and comes back 3 s later.
    wait_for(
        &second,
        2 * TASKS as usize / 3,
        "two thirds not done within 180 s",
    );
    // (Counted before: a server without its database answers 503, counted as 0 here.)
    let at_crash = done_through(&third);
    pg.kill().unwrap();
    println!(
        "PostgreSQL killed at {at_crash} of {TASKS} done, {:.1} s in",
        started.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(3));
    pg.restart().unwrap();
    assert!(
        at_crash < TASKS as usize,
        "all done before the database crash"
    );

    poll_until(
        Duration::from_secs(240),
        Duration::from_millis(100),
        || done_through(&second),
        |n| *n == TASKS as usize,
        |n| format!("{n} of {TASKS} done\n{}", grid.log_tails()),
    );
    let mut jobs = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || jobs_of(&second),
        |jobs| jobs.len() == TASKS as usize && jobs.iter().all(|j| j.state.is_final()),
        |jobs| {
            format!(
                "the jobs did not all finish: {}\n{}",
                states(jobs),
                grid.log_tails()
            )
        },
    );
    println!(
        "all {TASKS} done {:.1} s after the upload",
        started.elapsed().as_secs_f64()
    );
    let retried: Vec<i64> = jobs
        .iter()
        .filter(|j| j.attempts > 0)
        .map(|j| j.id)
        .collect();
    println!("jobs leased again after a lapsed lease: {}", retried.len());
    // Each answer verified, read through web server 3 (answers larger than the inline limit
    // would come from the object store; these are small and kept in the database).
    check_hello_answers(&third, &mut jobs, &bundle, "scale-out", TASKS);

    // The lookup moved once, to server 2; it relayed every answer once and lost none.
    let status = grid.settled_lookup_status(Duration::from_secs(20));
    println!("lookup at the end: {status:?}");
    assert_eq!(status.webserver, urls[1], "{status:?}");
    assert_eq!(status.failovers, 1, "{status:?}");
    assert_eq!(status.lost_total, 0, "{status:?}");
    assert_eq!(
        status.answers_total,
        u64::from(TASKS) + retried.len() as u64,
        "each task answered once by a node (plus once more for a job whose lease lapsed): \
         {status:?}"
    );
    assert!(
        retried.is_empty(),
        "jobs ran again after their lease lapsed: {retried:?}"
    );

    grid.stop().unwrap_or_else(|e| panic!("{e:#}"));
}
