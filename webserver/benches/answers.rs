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

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use rjs_signer::request::RequestAuth;
use rjs_signer::{BundleBuilder, KeyPair};
use rjs_webserver::store::Store as _;
use rjs_webserver::store::sqlite::SqliteStore;
use rjs_webserver::{admin, pki, server};
use rjs_wire::api::{
    self, ANSWERS_CONTENT_TYPE, AnswerBatchHeader, AnswerBatchResponse, AnswerBatchStatus,
    JobState, LeaseResponse, UploadResponse,
};
use sha2::{Digest, Sha256};

const ANSWER_BYTES: usize = 2048;
const SINGLE_IN_FLIGHT: usize = 16;
const BATCH_SIZE: usize = 64;
const BATCH_IN_FLIGHT: usize = 4;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Single,
    Batch,
}

struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), server::ServeError>>>,
}

impl Running {
    fn start(data: &Path) -> Running {
        let mut config = server::ServeConfig::new(data);
        config.listen = "127.0.0.1:0".into();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(server::serve(
                config,
                move |addrs| addr_tx.send(addrs[0]).unwrap(),
                async move {
                    let _ = stop_rx.await;
                },
            ))
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server did not start");
        Running {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }
}

fn sha_hex(b: &[u8]) -> String {
    rjs_signer::bundle::hex(&Sha256::digest(b))
}

fn bundle(key: &KeyPair, tasks: u32) -> Vec<u8> {
    let mut b = BundleBuilder::new();
    let manifest = serde_json::json!({"format": 1, "name": "bench", "entry": "job.wasm",
                                      "tasks": tasks});
    b.add("manifest.json", manifest.to_string().into_bytes())
        .unwrap();
    let mut wasm = rjs_signer::bundle::WASM_HEADER.to_vec();
    wasm.extend_from_slice(&[0, 5, 4, b'n', b'o', b't', b'e']);
    b.add("job.wasm", wasm).unwrap();
    b.sign(key, "bench", rjs_signer::unix_now()).unwrap()
}

/// An answer of about [`ANSWER_BYTES`], different for every job.
fn answer(job: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(ANSWER_BYTES);
    let mut x = (job as u64) ^ 0x9e37_79b9_7f4a_7c15;
    while out.len() < ANSWER_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn client(
    ca: &[rustls_pki_types::CertificateDer<'static>],
    identity: Option<pki::Creds>,
) -> reqwest::Client {
    let mut tls =
        rjs_wire::tls::client_config(ca, identity.map(|c| (vec![c.cert], c.key))).unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// Runs one mode; returns answers per second.
fn run(mode: Mode, jobs: u32) -> f64 {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("ws");
    admin::init(&data, &[]).unwrap();
    let key = KeyPair::generate();
    admin::author_add(&data, "bench", &key.public().to_base64()).unwrap();
    let creds_path = data.join("lab.creds");
    admin::lookup_add(&data, "lab", &creds_path).unwrap();
    let creds = pki::parse_creds(&std::fs::read(&creds_path).unwrap()).unwrap();
    let ca = rjs_wire::tls::load_certs(&data.join("ca.pem")).unwrap();
    let srv = Running::start(&data);
    let base = format!("https://localhost:{}", srv.addr.port());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rate = rt.block_on(async {
        let author = client(&ca, None);
        let lookup = client(&ca, Some(creds));

        // Upload the bundle.
        let b = bundle(&key, jobs);
        let path = "/api/v1/bundles";
        let auth = RequestAuth::sign(&key, "POST", path, &sha_hex(&b), rjs_signer::unix_now());
        let mut rb = author.post(format!("{base}{path}")).body(b);
        for (k, v) in auth.headers() {
            rb = rb.header(k, v);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 201, "upload");
        let up: UploadResponse = r.json().await.unwrap();
        assert_eq!(up.jobs.len(), jobs as usize);

        // Lease them all.
        let mut leased: Vec<i64> = Vec::with_capacity(jobs as usize);
        loop {
            let r = lookup
                .post(format!("{base}/lookup/v1/lease"))
                .json(&serde_json::json!({"max": api::MAX_BATCH, "lease_secs": 3600}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200, "lease");
            let l: LeaseResponse = r.json().await.unwrap();
            if l.leases.is_empty() {
                break;
            }
            leased.extend(l.leases.iter().map(|l| l.job_id));
        }
        assert_eq!(leased.len(), jobs as usize);
        let answers: Vec<(i64, Vec<u8>)> = leased.iter().map(|&j| (j, answer(j))).collect();

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
                    .map(|chunk| {
                        let mut body = Vec::with_capacity(chunk.len() * (ANSWER_BYTES + 100));
                        for (job, bytes) in chunk {
                            let h = AnswerBatchHeader {
                                job_id: *job,
                                outcome: "exit 0".into(),
                                node: "node-1".into(),
                                size: bytes.len() as u64,
                            };
                            api::encode_answer_record(&mut body, &h, bytes).unwrap();
                        }
                        (chunk.len(), body)
                    })
                    .collect();
                let lookup = &lookup;
                let base = &base;
                futures_util::stream::iter(bodies)
                    .map(|(n, body)| async move {
                        let r = lookup
                            .post(format!("{base}/lookup/v1/answers"))
                            .header(reqwest::header::CONTENT_TYPE, ANSWERS_CONTENT_TYPE)
                            .body(body)
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(r.status().as_u16(), 200, "answer batch");
                        let res: AnswerBatchResponse = r.json().await.unwrap();
                        assert_eq!(res.results.len(), n);
                        assert!(
                            res.results
                                .iter()
                                .all(|r| r.status == AnswerBatchStatus::Stored)
                        );
                    })
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
