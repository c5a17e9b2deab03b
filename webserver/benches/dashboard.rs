//! The dashboard of the real `rjs-webserver serve` process (`cargo bench -p rjs-webserver
//! --bench dashboard`; docs/dashboard.md, "Performance").
//!
//! One fresh data directory with 40 small answered submissions and three of `--tasks` tasks
//! (default 10,000), one `serve` process, a signed-in dashboard session:
//!
//! 1. **render**: `GET /dashboard/submissions` and `GET /dashboard/submissions/<id>` of a
//!    finished 10,000-task submission (its first page of 100 tasks, each row with its node's
//!    times read from the answer), `--samples` times each (default 200): p50 and p95 of the
//!    client-observed round trip over loopback (target p95 ≤ 50 ms each);
//! 2. **live cost**: the web server's answer throughput (a lookup leasing 32 jobs and posting
//!    their 32 real signed answers in one batch, one request at a time, as fast as the server
//!    takes them) while a 10,000-task submission finishes, with no dashboard open, then with
//!    `--dashboards` (default 100) dashboards receiving its live updates (each an event stream
//!    of the submission page), then again with none. Cost = 1 − loaded / mean(quiet) (target
//!    ≤ 10%); the web server's CPU per answer in each phase; every dashboard must have
//!    received updates.
//!
//! Exits 1 if a target is missed.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rjs_signer::KeyPair;
use rjs_signer::answer::{Ending, ResultDoc, build_answer};
use rjs_signer::request::RequestAuth;
use rjs_wire::api::DashboardLogin;

mod common;
use common::{
    Data, answer_batch, bundle, client, client_builder, lease, post_answer_batch, quantile, sha_hex,
};

const BATCH: u32 = 32;
const LEASE_SECS: u32 = 600;

/// A real answer of `task`, signed by `node`.
fn real_answer(node: &KeyPair, bundle_id: &str, task: u32, tasks: u32) -> Vec<u8> {
    let out = vec![(
        "result.txt".to_owned(),
        format!("task {task}\n").into_bytes(),
    )];
    let result = ResultDoc {
        format: 1,
        bundle_sha256: bundle_id.to_owned(),
        job_name: "bench".into(),
        task_index: task,
        task_count: tasks,
        node_id: "node-1".into(),
        node_mflops: 2000,
        ending: Ending::Exit { code: 0 },
        limits_hit: vec![],
        limits: Default::default(),
        started_at: 1_800_000_000,
        finished_at: 1_800_000_001,
        wall_ms: 500 + u64::from(task % 100),
        cpu_ms: 480,
        stdout_bytes: 6,
        stderr_bytes: 0,
        output_bytes: out[0].1.len() as u64,
        missing_outputs: vec![],
    };
    build_answer(&result, b"hello\n", b"", &out, node, 1_800_000_001).unwrap()
}

/// Answers every job of a submission (ids in task order): lease [`BATCH`], post their answers
/// in one batch, until none is left. Returns answers per second and the server's CPU seconds.
async fn finish(
    lookup: &reqwest::Client,
    base: &str,
    answers: &std::collections::HashMap<i64, Vec<u8>>,
    total: usize,
    pid: i32,
) -> (f64, f64) {
    let cpu0 = rjs_harness::procstat::cpu_seconds(pid).unwrap_or(0.0);
    let t = Instant::now();
    let mut done = 0;
    while done < total {
        // Never more than this submission has left (the next one is queued behind it).
        let want = BATCH.min((total - done) as u32);
        let ids = lease(lookup, base, want, LEASE_SECS).await;
        assert!(!ids.is_empty(), "the queue ran dry at {done} of {total}");
        let batch: Vec<(i64, &[u8])> = ids.iter().map(|id| (*id, &answers[id][..])).collect();
        post_answer_batch(lookup, base, answer_batch(&batch), ids.len()).await;
        done += ids.len();
    }
    let rate = total as f64 / t.elapsed().as_secs_f64();
    let cpu = rjs_harness::procstat::cpu_seconds(pid).unwrap_or(0.0) - cpu0;
    (rate, cpu)
}

/// A signed author request with an empty body.
async fn signed_post(
    author: &reqwest::Client,
    base: &str,
    data: &Data,
    path: &str,
) -> reqwest::Response {
    let audience = rjs_signer::request::audience(&data.ca[0]);
    let auth = RequestAuth::sign(
        &data.key,
        &audience,
        "POST",
        path,
        &sha_hex(b""),
        rjs_signer::unix_now(),
    );
    let mut rb = author.post(format!("{base}{path}"));
    for (k, v) in auth.headers() {
        rb = rb.header(k, v);
    }
    rb.send().await.unwrap()
}

/// Signs in to the dashboard as the bench author: the session cookie (`name=value`).
async fn sign_in(author: &reqwest::Client, base: &str, data: &Data) -> String {
    let r = signed_post(author, base, data, "/api/v1/dashboard/login").await;
    assert_eq!(r.status().as_u16(), 200, "dashboard login");
    let login: DashboardLogin = r.json().await.unwrap();
    let token = login.path.split("token=").nth(1).unwrap().to_owned();
    let r = author
        .post(format!("{base}/dashboard/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "same-origin")
        .body(format!("token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303, "sign-in");
    let set = r.headers()["set-cookie"].to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

/// p50 and p95 of `samples` GETs of `path`.
async fn render(
    c: &reqwest::Client,
    base: &str,
    cookie: &str,
    path: &str,
    samples: usize,
) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples + 10 {
        let t = Instant::now();
        let r = c
            .get(format!("{base}{path}"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let body = r.text().await.unwrap();
        assert!(body.len() > 1000);
        if i >= 10 {
            times.push(t.elapsed());
        }
    }
    times.sort();
    (quantile(&times, 0.5), quantile(&times, 0.95))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> ExitCode {
    let mut tasks: u32 = 10_000;
    let mut dashboards: usize = 100;
    let mut samples: usize = 200;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut n = || args.next().and_then(|n| n.parse::<usize>().ok()).unwrap();
        match a.as_str() {
            "--tasks" => tasks = n() as u32,
            "--dashboards" => dashboards = n(),
            "--samples" => samples = n(),
            _ => {}
        }
    }
    let (_tmp, data, creds, server) = common::start(1);
    let pid = server.proc.pid();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "dashboard of rjs-webserver serve (pid {pid}), {cores} cores; {tasks} tasks, {dashboards} dashboards"
    );
    let rt = common::runtime();
    let mut missed = Vec::new();
    rt.block_on(async {
        let base = server.base.as_str();
        // Redirects are not followed: the sign-in's cookie comes with its 303.
        let author = client_builder(&data.ca, None)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let lookup = client(&data.ca, creds.into_iter().next());
        let node = KeyPair::generate();

        // 40 small finished submissions for the list.
        for i in 0..40 {
            let b = bundle(&data.key, &format!("small-{i}"), 10);
            let id = sha_hex(&b);
            let ids = data.upload(&author, base, b).await;
            let answers = ids
                .iter()
                .enumerate()
                .map(|(t, &j)| (j, real_answer(&node, &id, t as u32, 10)))
                .collect();
            finish(&lookup, base, &answers, ids.len(), pid).await;
        }
        // Three big ones; answers made beforehand (signing is the bench's cost, not the
        // server's).
        let mut big = Vec::new();
        for name in ["quiet-a", "loaded", "quiet-b"] {
            let b = bundle(&data.key, name, tasks);
            let id = sha_hex(&b);
            let ids = data.upload(&author, base, b).await;
            let answers: std::collections::HashMap<i64, Vec<u8>> = ids
                .iter()
                .enumerate()
                .map(|(t, &j)| (j, real_answer(&node, &id, t as u32, tasks)))
                .collect();
            big.push((id, answers));
        }
        let cookie = sign_in(&author, base, &data).await;
        let sub_of = |bundle: &str| {
            let bundle = bundle.to_owned();
            let author = author.clone();
            let data = &data;
            async move {
                let path = format!("/api/v1/submissions?bundle={bundle}");
                let audience = rjs_signer::request::audience(&data.ca[0]);
                let auth = RequestAuth::sign(
                    &data.key,
                    &audience,
                    "GET",
                    &path,
                    &sha_hex(b""),
                    rjs_signer::unix_now(),
                );
                let mut rb = author.get(format!("{base}{path}"));
                for (k, v) in auth.headers() {
                    rb = rb.header(k, v);
                }
                let list: rjs_wire::api::SubmissionList =
                    rb.send().await.unwrap().json().await.unwrap();
                list.submissions[0].id
            }
        };

        println!("{:<64} {:>12}   target", "what", "figure");
        // Phase 1: quiet.
        let (q1, q1_cpu) = finish(&lookup, base, &big[0].1, tasks as usize, pid).await;
        println!(
            "{:<64} {:>12}",
            "answers/s, no dashboard open (1)",
            format!("{q1:.0}")
        );

        // Renders (the first big submission is finished now).
        let sid = sub_of(&big[0].0).await;
        let (p50, p95) = render(&author, base, &cookie, "/dashboard/submissions", samples).await;
        println!(
            "{:<64} {:>12}   p95 ≤ 50 ms",
            format!("submissions page (41 rows), p50 {}", ms(p50)),
            format!("p95 {}", ms(p95))
        );
        if p95 > Duration::from_millis(50) {
            missed.push("submissions page p95");
        }
        let page = format!("/dashboard/submissions/{sid}");
        let (p50, p95) = render(&author, base, &cookie, &page, samples).await;
        println!(
            "{:<64} {:>12}   p95 ≤ 50 ms",
            format!("{tasks}-task submission page, p50 {}", ms(p50)),
            format!("p95 {}", ms(p95))
        );
        if p95 > Duration::from_millis(50) {
            missed.push("submission page p95");
        }

        // Phase 2: the loaded one, with dashboards watching it.
        let sid = sub_of(&big[1].0).await;
        let events = Arc::new(AtomicU64::new(0));
        let mut streams = Vec::new();
        for _ in 0..dashboards {
            let r = author
                .get(format!(
                    "{base}/dashboard/submissions/{sid}/events?from=0&to=99"
                ))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200, "event stream");
            let n = events.clone();
            let mut r = r;
            streams.push(tokio::spawn(async move {
                while let Ok(Some(chunk)) = r.chunk().await {
                    let k = chunk.windows(7).filter(|w| w == b"event: ").count();
                    n.fetch_add(k as u64, Ordering::Relaxed);
                }
            }));
        }
        let (l, l_cpu) = finish(&lookup, base, &big[1].1, tasks as usize, pid).await;
        // The last updates arrive within a second.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let got = events.load(Ordering::Relaxed);
        println!(
            "{:<64} {:>12}",
            format!("answers/s, {dashboards} dashboards watching ({got} events)"),
            format!("{l:.0}")
        );
        if got < dashboards as u64 {
            missed.push("dashboards got no updates");
        }
        for s in streams {
            s.abort();
        }
        // Phase 3: quiet again.
        let (q2, q2_cpu) = finish(&lookup, base, &big[2].1, tasks as usize, pid).await;
        println!(
            "{:<64} {:>12}",
            "answers/s, no dashboard open (2)",
            format!("{q2:.0}")
        );
        let quiet = (q1 + q2) / 2.0;
        let cost = 1.0 - l / quiet;
        println!(
            "{:<64} {:>12}   ≤ 10%",
            "throughput lost to the live dashboards",
            format!("{:.1}%", cost * 100.0)
        );
        let per = |cpu: f64| format!("{:.0} µs", cpu / f64::from(tasks) * 1e6);
        println!(
            "{:<64} {:>12}",
            "web server CPU per answer: quiet (1), loaded, quiet (2)",
            format!("{} / {} / {}", per(q1_cpu), per(l_cpu), per(q2_cpu))
        );
        if cost > 0.10 {
            missed.push("live dashboards cost more than 10% of the throughput");
        }
    });
    drop(server);
    if missed.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("MISSED: {}", missed.join(", "));
        ExitCode::FAILURE
    }
}
