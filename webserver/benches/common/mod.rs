//! What both web server benchmarks need: a data directory with one author and lookups, bundles
//! of N tasks, TLS clients, answers and framed answer batches (`tests/support/answers.rs`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rjs_harness::process::{Managed, spawn_listening};
use rjs_signer::request::RequestAuth;
use rjs_signer::{BundleBuilder, KeyPair};
use rjs_webserver::{admin, pki};
use rjs_wire::api::{
    ANSWERS_CONTENT_TYPE, AnswerBatchResponse, AnswerBatchStatus, LeaseResponse, UploadResponse,
};
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};

#[path = "../../tests/support/answers.rs"]
mod answers;
pub use answers::answer_batch;

/// A `rjs-webserver serve` process (the binary this package builds) on a loopback port;
/// stopped with SIGTERM when dropped.
pub struct Server {
    pub proc: Managed,
    pub base: String,
}

impl Server {
    pub fn start(data: &std::path::Path, log: &std::path::Path) -> Server {
        Server::start_with(data, log, &[])
    }

    /// [`start`](Self::start) with more arguments for `serve` (e.g. `--store URL`).
    pub fn start_with(data: &std::path::Path, log: &std::path::Path, args: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rjs-webserver"));
        cmd.args(["serve", "--data"])
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stderr(std::fs::File::create(log).unwrap());
        let (proc, addr) = spawn_listening(&mut cmd, "listening on https://").unwrap();
        let port = addr.rsplit(':').next().unwrap();
        Server {
            proc,
            base: format!("https://localhost:{port}"),
        }
    }

    /// Resident set size in bytes (`VmRSS`).
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.proc.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
            * 1024
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM: the graceful stop `serve` promises.
        let _ = self.proc.terminate(Duration::from_secs(30));
    }
}

/// What every bench of the real `serve` starts with: a temporary folder, a data directory in it
/// with `lookups` lookup servers (their credentials taken out of `Data`), and the server.
pub fn start(lookups: usize) -> (tempfile::TempDir, Data, Vec<pki::Creds>, Server) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ws");
    let mut data = Data::init(&dir, lookups);
    let creds = std::mem::take(&mut data.lookups);
    let server = Server::start(&dir, &tmp.path().join("serve.log"));
    (tmp, data, creds, server)
}

/// The benches' runtime: one thread, beside the server's.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The `q` quantile (0..=1) of sorted durations.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// A fresh data directory: the CA, one author (`bench`) and `lookups` lookup servers.
pub struct Data {
    pub dir: PathBuf,
    pub key: KeyPair,
    pub ca: Vec<CertificateDer<'static>>,
    pub lookups: Vec<pki::Creds>,
}

impl Data {
    pub fn init(dir: &Path, lookups: usize) -> Data {
        Data::init_at(&admin::Site::local(dir), lookups)
    }

    /// [`init`](Self::init) with the site's store (e.g. PostgreSQL).
    pub fn init_at(site: &admin::Site, lookups: usize) -> Data {
        let dir = site.dir.as_path();
        admin::init(site, &[]).unwrap();
        let key = KeyPair::generate();
        admin::author_add(site, "bench", &key.public().to_base64()).unwrap();
        let lookups = (0..lookups)
            .map(|i| {
                let path = dir.join(format!("lab-{i}.creds"));
                admin::lookup_add(site, &format!("lab-{i}"), &path).unwrap();
                pki::parse_creds(&std::fs::read(&path).unwrap()).unwrap()
            })
            .collect();
        let ca = rjs_wire::tls::load_certs(&dir.join("ca.pem")).unwrap();
        Data {
            dir: dir.to_path_buf(),
            key,
            ca,
            lookups,
        }
    }
}

impl Data {
    /// Uploads a bundle as the bench author; returns its job ids.
    pub async fn upload(&self, author: &reqwest::Client, base: &str, b: Vec<u8>) -> Vec<i64> {
        upload(author, base, &self.ca, &self.key, b).await
    }
}

pub fn sha_hex(b: &[u8]) -> String {
    rjs_signer::bundle::hex(&Sha256::digest(b))
}

/// A signed bundle of `tasks` tasks (a module that does nothing: the web server never runs it).
/// `name` makes bundles differ.
pub fn bundle(key: &KeyPair, name: &str, tasks: u32) -> Vec<u8> {
    let mut b = BundleBuilder::new();
    let manifest =
        serde_json::json!({"format": 1, "name": name, "entry": "job.wasm", "tasks": tasks});
    b.add("manifest.json", manifest.to_string().into_bytes())
        .unwrap();
    b.add("job.wasm", rjs_signer::wasm::empty_command(b"note"))
        .unwrap();
    b.sign(key, "bench", rjs_signer::unix_now()).unwrap()
}

/// A TLS client trusting only `ca`, presenting `identity` if given; HTTP/2 when offered.
pub fn client(ca: &[CertificateDer<'static>], identity: Option<pki::Creds>) -> reqwest::Client {
    client_builder(ca, identity).build().unwrap()
}

/// [`client`]'s builder, to change before building (e.g. not to follow redirects).
pub fn client_builder(
    ca: &[CertificateDer<'static>],
    identity: Option<pki::Creds>,
) -> reqwest::ClientBuilder {
    let mut tls =
        rjs_wire::tls::client_config(ca, identity.map(|c| (vec![c.cert], c.key))).unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(120))
}

/// Uploads a bundle as the author to the server whose CA is `ca`; returns its job ids.
pub async fn upload(
    author: &reqwest::Client,
    base: &str,
    ca: &[CertificateDer<'static>],
    key: &KeyPair,
    b: Vec<u8>,
) -> Vec<i64> {
    let path = "/api/v1/bundles";
    let audience = rjs_signer::request::audience(&ca[0]);
    let now = rjs_signer::unix_now();
    let auth = RequestAuth::sign(key, &audience, "POST", path, &sha_hex(&b), now);
    let mut rb = author.post(format!("{base}{path}")).body(b);
    for (k, v) in auth.headers() {
        rb = rb.header(k, v);
    }
    let r = rb.send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201, "upload");
    let up: UploadResponse = r.json().await.unwrap();
    up.jobs.iter().map(|j| j.id).collect()
}

/// `bytes` bytes of incompressible data, different for every job.
pub fn answer(job: i64, bytes: usize) -> Vec<u8> {
    rjs_harness::data::noise(bytes, (job as u64) ^ 0x9e37_79b9_7f4a_7c15)
}

/// `POST {base}{path}` with a JSON body; the JSON of its 200 response (`what` names the call
/// when it is not 200).
pub async fn post_json<T: serde::de::DeserializeOwned>(
    lookup: &reqwest::Client,
    base: &str,
    path: &str,
    body: &serde_json::Value,
    what: &str,
) -> T {
    let r = lookup
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{what}");
    r.json().await.unwrap()
}

/// Leases up to `max` jobs for `lease_secs`; their ids.
pub async fn lease(lookup: &reqwest::Client, base: &str, max: u32, lease_secs: u32) -> Vec<i64> {
    let body = serde_json::json!({"max": max, "lease_secs": lease_secs});
    let l: LeaseResponse = post_json(lookup, base, "/lookup/v1/lease", &body, "lease").await;
    l.leases.iter().map(|l| l.job_id).collect()
}

/// Posts one answer batch of `answers` answers; checks that every one was stored.
pub async fn post_answer_batch(
    lookup: &reqwest::Client,
    base: &str,
    body: Vec<u8>,
    answers: usize,
) {
    let r = lookup
        .post(format!("{base}/lookup/v1/answers"))
        .header(reqwest::header::CONTENT_TYPE, ANSWERS_CONTENT_TYPE)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "answer batch");
    let res: AnswerBatchResponse = r.json().await.unwrap();
    assert_eq!(res.results.len(), answers);
    assert!(
        res.results
            .iter()
            .all(|r| r.status == AnswerBatchStatus::Stored)
    );
}
