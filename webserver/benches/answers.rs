//! Answer ingestion throughput of the real web server (`cargo bench -p rjs-webserver --bench
//! answers`; `docs/webserver-admin.md`, "Performance").
//!
//! For each mode: a fresh data directory, `serve` on a loopback port in this process (default
//! workers, logging at `info` into a file as `serve` would to stderr), one author uploads a
//! bundle of 10,000 tasks, one lookup leases them all, then uploads 10,000 small (~2 KB)
//! answers over one HTTP/2 connection, as
//!
//! * `single`: `PUT /lookup/v1/jobs/{id}/answer`, 16 requests in flight;
//! * `batch`: `POST /lookup/v1/answers`, 64 answers per request, 4 requests in flight.
//!
//! and prints answers/s. Arguments: mode names to run only those (`single`, `batch`);
//! `--jobs N` for another number of tasks.

use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt as _;
use rjs_webserver::server;
use rjs_webserver::store::Store as _;
use rjs_webserver::store::sqlite::SqliteStore;
use rjs_wire::api::{self, JobState};

mod common;
#[path = "../tests/support/in_process.rs"]
mod in_process;
use common::{Data, answer, answer_batch, bundle, client, lease, post_answer_batch, upload};
use in_process::InProcess;

const ANSWER_BYTES: usize = 2048;
const SINGLE_IN_FLIGHT: usize = 16;
const BATCH_SIZE: usize = 64;
const BATCH_IN_FLIGHT: usize = 4;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Single,
    Batch,
}

/// Runs one mode; returns answers per second.
fn run(mode: Mode, jobs: u32) -> f64 {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("ws");
    let Data {
        key, ca, lookups, ..
    } = Data::init(&data, 1);
    let creds = lookups.into_iter().next().unwrap();
    let srv = InProcess::start(server::ServeConfig::new(&data));
    let base = format!("https://localhost:{}", srv.addr.port());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rate = rt.block_on(async {
        let author = client(&ca, None);
        let lookup = client(&ca, Some(creds));

        let ids = upload(&author, &base, &ca, &key, bundle(&key, "bench", jobs)).await;
        assert_eq!(ids.len(), jobs as usize);

        // Lease them all.
        let mut leased: Vec<i64> = Vec::with_capacity(jobs as usize);
        loop {
            let ids = lease(&lookup, &base, api::MAX_BATCH, 3600).await;
            if ids.is_empty() {
                break;
            }
            leased.extend(ids);
        }
        assert_eq!(leased.len(), jobs as usize);
        let answers: Vec<(i64, Vec<u8>)> = leased
            .iter()
            .map(|&j| (j, answer(j, ANSWER_BYTES)))
            .collect();

        let start = Instant::now();
        match mode {
            Mode::Single => {
                let lookup = &lookup;
                let base = &base;
                futures_util::stream::iter(answers)
                    .map(|(job, bytes)| async move {
                        let r = lookup
                            .put(format!("{base}/lookup/v1/jobs/{job}/answer"))
                            .header(api::H_OUTCOME, "exit 0")
                            .header(api::H_NODE, "node-1")
                            .header(reqwest::header::CONTENT_TYPE, "application/zip")
                            .body(bytes)
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(r.status().as_u16(), 201, "answer for job {job}");
                        let _ = r.bytes().await.unwrap();
                    })
                    .buffer_unordered(SINGLE_IN_FLIGHT)
                    .collect::<Vec<()>>()
                    .await;
            }
            Mode::Batch => {
                let bodies: Vec<(usize, Vec<u8>)> = answers
                    .chunks(BATCH_SIZE)
                    .map(|chunk| (chunk.len(), answer_batch(chunk)))
                    .collect();
                let lookup = &lookup;
                let base = &base;
                futures_util::stream::iter(bodies)
                    .map(|(n, body)| post_answer_batch(lookup, base, body, n))
                    .buffer_unordered(BATCH_IN_FLIGHT)
                    .collect::<Vec<()>>()
                    .await;
            }
        }
        f64::from(jobs) / start.elapsed().as_secs_f64()
    });
    drop(srv);
    let store = SqliteStore::open(&data.join("rjs.db")).unwrap();
    let done = store
        .count_by_state()
        .unwrap()
        .into_iter()
        .find(|(s, _)| *s == JobState::Done)
        .map_or(0, |(_, n)| n);
    assert_eq!(done, u64::from(jobs), "every answer stored");
    rate
}

fn main() {
    let mut modes = Vec::new();
    let mut jobs: u32 = 10_000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "single" => modes.push(Mode::Single),
            "batch" => modes.push(Mode::Batch),
            "--jobs" => jobs = args.next().and_then(|n| n.parse().ok()).expect("--jobs N"),
            // `cargo bench` passes `--bench`; ignore it and anything else cargo adds.
            _ => {}
        }
    }
    if modes.is_empty() {
        modes = vec![Mode::Single, Mode::Batch];
    }
    // The server logs at `info` as `serve` does, into a file (not the terminal).
    let log_dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(log_dir.path().join("serve.log")).unwrap();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .with_writer(Arc::new(log))
        .init();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("answers: {jobs} answers of ~{ANSWER_BYTES} bytes, {cores} cores");
    for mode in modes {
        let rate = run(mode, jobs);
        let how = match mode {
            Mode::Single => format!("single PUTs, {SINGLE_IN_FLIGHT} in flight"),
            Mode::Batch => format!("batches of {BATCH_SIZE}, {BATCH_IN_FLIGHT} in flight"),
        };
        println!("{how:<32} {rate:>8.0} answers/s");
    }
}
