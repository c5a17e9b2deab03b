//! The lookup API of the real `rjs-webserver serve` process (`cargo bench -p rjs-webserver
//! --bench lookup_api`; docs/webserver-admin.md, "Performance").
//!
//! One fresh data directory, one `serve` process (the binary this package builds, default
//! workers, on a loopback port), clients in this process over mutual TLS and HTTP/2:
//!
//! 1. **idle RSS**: `VmRSS` of the freshly started server after 2 s idle (target ≤ 50 MB);
//! 2. **lease latency**: with Q jobs queued (1,000, then 100,000), 1,000 times: lease 32 jobs
//!    (timed, client-observed round trip), give them back (not timed). p50, p99, max
//!    (target p99 ≤ 10 ms with 100,000 queued, and flat: about the same as with 1,000);
//! 3. **cycle**: one lookup, one request at a time: lease 32 → post their 32 tiny answers
//!    (512 bytes each) in one `POST /lookup/v1/answers` → next lease, until 30,000 jobs are
//!    done (target ≥ 3,000 jobs/s); then the same with 4 lookups at once (information);
//! 4. RSS after all that, idle again (information).
//!
//! Exits 1 if a target is missed. Arguments: `--cycle-jobs N` (default 30,000), `--samples N`
//! (lease samples per queue size, default 1,000).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use rjs_wire::api::ReleaseResponse;

mod common;
use common::{answer, answer_batch, bundle, client, lease, post_answer_batch, post_json, quantile};

const BATCH: u32 = 32;
const ANSWER_BYTES: usize = 512;
const LEASE_SECS: u32 = 600;

async fn release(lookup: &reqwest::Client, base: &str, ids: &[i64]) {
    let body = serde_json::json!({ "job_ids": ids });
    let rel: ReleaseResponse =
        post_json(lookup, base, "/lookup/v1/release", &body, "release").await;
    assert_eq!(rel.released.len(), ids.len());
}

async fn post_answers(lookup: &reqwest::Client, base: &str, ids: &[i64]) {
    let answers: Vec<(i64, Vec<u8>)> = ids.iter().map(|&j| (j, answer(j, ANSWER_BYTES))).collect();
    post_answer_batch(lookup, base, answer_batch(&answers), ids.len()).await;
}

struct Latency {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

/// `samples` times: lease [`BATCH`] (timed), give them back.
async fn lease_latency(lookup: &reqwest::Client, base: &str, samples: usize) -> Latency {
    // Warm-up: connection, statement cache.
    for _ in 0..20 {
        let ids = lease(lookup, base, BATCH, LEASE_SECS).await;
        release(lookup, base, &ids).await;
    }
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        let ids = lease(lookup, base, BATCH, LEASE_SECS).await;
        times.push(t.elapsed());
        assert_eq!(ids.len(), BATCH as usize);
        release(lookup, base, &ids).await;
    }
    times.sort();
    Latency {
        p50: quantile(&times, 0.50),
        p99: quantile(&times, 0.99),
        max: *times.last().unwrap(),
    }
}

/// Lease → answer cycles until `jobs` jobs are done; returns jobs/s.
async fn cycle(lookups: &[reqwest::Client], base: &str, jobs: usize) -> f64 {
    let per = jobs / lookups.len();
    let start = Instant::now();
    let runs = lookups.iter().map(|lookup| async move {
        let mut done = 0;
        while done < per {
            let ids = lease(lookup, base, BATCH.min((per - done) as u32), LEASE_SECS).await;
            assert!(!ids.is_empty(), "the queue ran dry");
            post_answers(lookup, base, &ids).await;
            done += ids.len();
        }
    });
    futures_util::future::join_all(runs).await;
    (per * lookups.len()) as f64 / start.elapsed().as_secs_f64()
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn main() -> ExitCode {
    let mut cycle_jobs: usize = 30_000;
    let mut samples: usize = 1_000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--cycle-jobs" => cycle_jobs = args.next().and_then(|n| n.parse().ok()).unwrap(),
            "--samples" => samples = args.next().and_then(|n| n.parse().ok()).unwrap(),
            // `cargo bench` passes `--bench`; ignore it and anything else cargo adds.
            _ => {}
        }
    }
    let (_tmp, data, creds, server) = common::start(4);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "lookup API of rjs-webserver serve (pid {}), {cores} cores",
        server.proc.pid()
    );

    std::thread::sleep(Duration::from_secs(2));
    let idle_rss = server.rss();

    let rt = common::runtime();
    let mut missed = Vec::new();
    rt.block_on(async {
        let base = server.base.as_str();
        let author = client(&data.ca, None);
        let lookups: Vec<reqwest::Client> = creds
            .into_iter()
            .map(|c| client(&data.ca, Some(c)))
            .collect();
        println!("{:<58} {:>10}   target", "what", "figure");
        println!(
            "{:<58} {:>10}   ≤ 50 MB",
            "idle RSS after start",
            mb(idle_rss)
        );
        if idle_rss > 50_000_000 {
            missed.push("idle RSS");
        }

        // Lease latency, 1,000 queued.
        data.upload(&author, base, bundle(&data.key, "small", 1_000))
            .await;
        let small = lease_latency(&lookups[0], base, samples).await;
        // 100,000 more: the bundle's maximum. The 1,000 stay queued too, and come first.
        let t = Instant::now();
        let ids = data
            .upload(&author, base, bundle(&data.key, "big", 100_000))
            .await;
        let upload_time = t.elapsed();
        assert_eq!(ids.len(), 100_000);
        let big = lease_latency(&lookups[0], base, samples).await;
        for (queued, l) in [("1,000", &small), ("101,000", &big)] {
            println!(
                "{:<58} {:>10}",
                format!("lease {BATCH}, {queued} queued: p50 / max"),
                format!(
                    "{:.2} / {:.2} ms",
                    l.p50.as_secs_f64() * 1e3,
                    l.max.as_secs_f64() * 1e3
                ),
            );
            println!(
                "{:<58} {:>10}   ≤ 10 ms",
                format!("lease {BATCH}, {queued} queued: p99 ({samples} leases)"),
                format!("{:.2} ms", l.p99.as_secs_f64() * 1e3)
            );
        }
        if big.p99 > Duration::from_millis(10) {
            missed.push("lease p99 with 100,000 queued");
        }
        println!(
            "{:<58} {:>10}",
            "  (upload of the 100,000-task bundle)",
            format!("{} ms", upload_time.as_millis())
        );

        let one = cycle(&lookups[..1], base, cycle_jobs).await;
        println!(
            "{:<58} {:>10}   ≥ 3,000",
            format!("cycle: lease {BATCH} → post {BATCH} answers, 1 lookup (jobs/s)"),
            format!("{one:.0}")
        );
        if one < 3_000.0 {
            missed.push("lease → answer cycle");
        }
        let four = cycle(&lookups, base, cycle_jobs).await;
        println!(
            "{:<58} {:>10}",
            format!("cycle: the same, 4 lookups at once (jobs/s)"),
            format!("{four:.0}")
        );
    });
    std::thread::sleep(Duration::from_secs(2));
    println!(
        "{:<58} {:>10}",
        "RSS after the runs, idle again",
        mb(server.rss())
    );
    drop(server);
    if missed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("missed: {}", missed.join(", "));
        ExitCode::from(1)
    }
}
