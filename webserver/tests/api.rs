//! The web server's HTTP API over real TLS, in process: `server::serve` on a free loopback
//! port, reqwest clients (an author signing requests, lookups with client certificates).

#[path = "support/answers.rs"]
mod answers;
#[path = "support/in_process.rs"]
mod in_process;
#[path = "support/raw_http.rs"]
mod raw_http;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use answers::answer_batch;
use in_process::InProcess;
use raw_http::RawHttp;
use reqwest::Method;
use reqwest::blocking::{Client, Response};
use rjs_harness::data::noise;
use rjs_signer::request::RequestAuth;
use rjs_signer::{BundleBuilder, KeyPair};
use rjs_webserver::store::blobs::BlobStore;
use rjs_webserver::store::blobs::gc::{NoPins, SweepOptions};
use rjs_webserver::store::sqlite::SqliteStore;
use rjs_webserver::{admin, pki, server};
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

struct Server {
    addr: SocketAddr,
    data: PathBuf,
    ca: Vec<CertificateDer<'static>>,
    /// Declared before the data directory: the server stops before it is removed.
    _running: InProcess,
    _tmp: tempfile::TempDir,
}

impl Server {
    fn start(max_bundle: u64, max_attempts: u32) -> Server {
        Self::start_with(max_bundle, max_bundle, max_attempts)
    }

    fn start_with(max_bundle: u64, max_answer: u64, max_attempts: u32) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("ws");
        admin::init(&admin::Site::local(&data), &[]).unwrap();
        let mut config = server::ServeConfig::new(&data);
        config.max_bundle = max_bundle;
        config.max_answer = max_answer;
        config.max_attempts = max_attempts;
        config.workers = Some(2);
        let running = InProcess::start(config);
        let ca = rjs_wire::tls::load_certs(&data.join("ca.pem")).unwrap();
        Server {
            addr: running.addr,
            data,
            ca,
            _running: running,
            _tmp: tmp,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    /// What author requests to this server sign: the SHA-256 of its CA certificate.
    fn audience(&self) -> String {
        rjs_signer::request::audience(&self.ca[0])
    }

    fn client(&self, identity: Option<pki::Creds>) -> Client {
        let mut tls =
            rjs_wire::tls::client_config(&self.ca, identity.map(|c| (vec![c.cert], c.key)))
                .unwrap();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }

    fn lookup(&self, name: &str) -> Client {
        self.client(Some(self.lookup_creds(name)))
    }

    /// Enrols a lookup; its credentials (parse the file again for a second copy).
    fn lookup_creds(&self, name: &str) -> pki::Creds {
        let out = self.data.join(format!("{name}.creds"));
        admin::lookup_add(&admin::Site::local(&self.data), name, &out).unwrap();
        pki::parse_creds(&std::fs::read(&out).unwrap()).unwrap()
    }

    /// The credentials of a lookup enrolled with [`Server::lookup`].
    fn creds_of(&self, name: &str) -> pki::Creds {
        pki::parse_creds(&std::fs::read(self.data.join(format!("{name}.creds"))).unwrap()).unwrap()
    }

    /// The credentials of a lookup certificate issued by this server's CA but never enrolled.
    fn stray_creds(&self) -> pki::Creds {
        let ca = pki::Ca {
            cert_pem: std::fs::read_to_string(self.data.join("ca.pem")).unwrap(),
            key_pem: std::fs::read_to_string(self.data.join("ca-key.pem")).unwrap(),
        };
        let stray = pki::issue_lookup(&ca, "stray").unwrap();
        pki::parse_creds(pki::creds_file("stray", &stray, &ca.cert_pem).as_bytes()).unwrap()
    }

    /// A raw HTTP/1.1 connection over TLS, for requests reqwest cannot make (a body sent
    /// only in part).
    fn raw(&self, identity: Option<pki::Creds>) -> RawHttp {
        let tls = rjs_wire::tls::client_config(&self.ca, identity.map(|c| (vec![c.cert], c.key)))
            .unwrap();
        self.raw_with(tls)
    }

    fn raw_with(&self, tls: rustls::ClientConfig) -> RawHttp {
        RawHttp::new(self.addr, tls, "localhost")
    }

    fn store(&self) -> rjs_webserver::store::sqlite::SqliteStore {
        rjs_webserver::store::sqlite::SqliteStore::open(&self.data.join("rjs.db")).unwrap()
    }

    fn tmp_files(&self) -> usize {
        count_files(&self.data.join("blobs/tmp"))
    }

    fn blob_files(&self) -> usize {
        count_files(&self.data.join("blobs"))
    }
}

/// One response read from `c`: status, JSON body (`Value::Null` if none).
fn json_response(c: &mut RawHttp) -> (u16, Value) {
    let (status, body) = c.response();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            n += count_files(&e.path());
        } else {
            n += 1;
        }
    }
    n
}

fn sha_hex(b: &[u8]) -> String {
    rjs_signer::bundle::hex(&Sha256::digest(b))
}

fn now() -> u64 {
    rjs_signer::unix_now()
}

struct Author<'a> {
    srv: &'a Server,
    http: Client,
    key: KeyPair,
}

impl Author<'_> {
    fn auth(&self, method: &str, path: &str, body: &[u8], ts: u64) -> RequestAuth {
        RequestAuth::sign(
            &self.key,
            &self.srv.audience(),
            method,
            path,
            &sha_hex(body),
            ts,
        )
    }

    fn send_with(&self, method: &str, path: &str, body: Vec<u8>, auth: &RequestAuth) -> Response {
        let mut req = self.http.request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            self.srv.url(path),
        );
        for (k, v) in auth.headers() {
            req = req.header(k, v);
        }
        req.body(body).send().unwrap()
    }

    fn send(&self, method: &str, path: &str, body: Vec<u8>) -> Response {
        let auth = self.auth(method, path, &body, now());
        self.send_with(method, path, body, &auth)
    }
}

fn check_error(resp: Response, status: u16, code: &str) {
    let got = resp.status().as_u16();
    let body: Value = resp.json().unwrap_or(Value::Null);
    assert_eq!((got, body["code"].as_str()), (status, Some(code)), "{body}");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
}

fn wasm() -> Vec<u8> {
    rjs_signer::wasm::empty_command(b"note")
}

fn bundle(key: &KeyPair, tasks: u32, filler: usize) -> Vec<u8> {
    let mut b = BundleBuilder::new();
    b.add(
        "manifest.json",
        serde_json::to_vec(&json!({"format": 1, "name": "job", "entry": "job.wasm",
                                    "inputs": ["data.bin"], "tasks": tasks}))
        .unwrap(),
    )
    .unwrap();
    b.add("job.wasm", wasm()).unwrap();
    // Incompressible filler so the bundle's size is about `filler`.
    let data = noise(filler, 0x9e37_79b9_7f4a_7c15 ^ u64::from(tasks));
    b.add("data.bin", data).unwrap();
    b.sign(key, "alice", now()).unwrap()
}

#[test]
fn author_api() {
    let srv = Server::start(256 * 1024, 3);
    const SECRET: [u8; 32] = [1; 32];
    let key = KeyPair::from_secret(SECRET);
    let alice = Author {
        srv: &srv,
        http: srv.client(None),
        key: KeyPair::from_secret(SECRET),
    };
    routes_and_methods(&srv, &alice.http);
    enrolment_and_request_signatures(&srv, &alice, &key);
    let b = bundle(&key, 3, 1000);
    let id = sha_hex(&b);
    uploads(&srv, &alice, &key, &b);
    jobs(&alice, &id);

    // A removed author can no longer authenticate.
    admin::author_remove(&admin::Site::local(&srv.data), "alice").unwrap();
    check_error(
        alice.send("GET", "/api/v1/whoami", vec![]),
        401,
        "unknown-author",
    );
}

/// Health, unknown routes and methods.
fn routes_and_methods(srv: &Server, http: &Client) {
    let r = http.get(srv.url("/healthz")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().unwrap(), "ok");
    check_error(http.get(srv.url("/nope")).send().unwrap(), 404, "not-found");
    check_error(
        http.delete(srv.url("/api/v1/whoami")).send().unwrap(),
        405,
        "method-not-allowed",
    );
    // Not signed.
    check_error(
        http.get(srv.url("/api/v1/whoami")).send().unwrap(),
        401,
        "missing-auth",
    );
}

/// Not enrolled yet, then enrolled; timestamp, signature, body hash, nonce.
fn enrolment_and_request_signatures(srv: &Server, alice: &Author<'_>, key: &KeyPair) {
    check_error(
        alice.send("GET", "/api/v1/whoami", vec![]),
        401,
        "unknown-author",
    );
    admin::author_add(
        &admin::Site::local(&srv.data),
        "alice",
        &key.public().to_base64(),
    )
    .unwrap();
    let r = alice.send("GET", "/api/v1/whoami", vec![]);
    assert_eq!(r.status().as_u16(), 200);
    let who: Value = r.json().unwrap();
    assert_eq!(who["name"], "alice");
    assert_eq!(who["fingerprint"], key.public().fingerprint().to_string());

    // Timestamp, signature, body hash, nonce.
    let old = alice.auth("GET", "/api/v1/whoami", b"", now() - 301);
    check_error(
        alice.send_with("GET", "/api/v1/whoami", vec![], &old),
        401,
        "stale-timestamp",
    );
    let other_path = alice.auth("GET", "/api/v1/jobs", b"", now());
    check_error(
        alice.send_with("GET", "/api/v1/whoami", vec![], &other_path),
        401,
        "bad-signature",
    );
    let auth = alice.auth("GET", "/api/v1/whoami", b"", now());
    check_error(
        alice.send_with("GET", "/api/v1/whoami", b"x".to_vec(), &auth),
        401,
        "body-mismatch",
    );
    // The refused request did not use up the nonce; the good one does.
    assert_eq!(
        alice
            .send_with("GET", "/api/v1/whoami", vec![], &auth)
            .status()
            .as_u16(),
        200
    );
    check_error(
        alice.send_with("GET", "/api/v1/whoami", vec![], &auth),
        401,
        "replayed-nonce",
    );
}

/// Bundle `b` uploaded, again, resubmitted; refusals leave no blob.
fn uploads(srv: &Server, alice: &Author<'_>, key: &KeyPair, b: &[u8]) {
    let id = sha_hex(b);
    let r = alice.send("POST", "/api/v1/bundles", b.to_vec());
    assert_eq!(r.status().as_u16(), 201);
    let up: Value = r.json().unwrap();
    assert_eq!(up["bundle_id"], id.as_str());
    assert_eq!(up["created"], true);
    assert_eq!(up["tasks"], 3);
    assert_eq!(up["jobs"].as_array().unwrap().len(), 3);
    assert_eq!(srv.blob_files(), 1);
    let r = alice.send("POST", "/api/v1/bundles", b.to_vec());
    assert_eq!(r.status().as_u16(), 200);
    let again: Value = r.json().unwrap();
    assert_eq!(again["created"], false);
    assert_eq!(again["jobs"], up["jobs"]);
    let r = alice.send("POST", "/api/v1/bundles?resubmit=true", b.to_vec());
    assert_eq!(r.status().as_u16(), 201);
    check_error(
        alice.send("POST", "/api/v1/bundles?resubmit=maybe", b.to_vec()),
        400,
        "bad-request",
    );

    // Refusals leave no blob.
    let mallory = KeyPair::from_secret([2; 32]);
    check_error(
        alice.send("POST", "/api/v1/bundles", bundle(&mallory, 1, 1000)),
        403,
        "signer-mismatch",
    );
    check_error(
        alice.send("POST", "/api/v1/bundles", b"not a zip".to_vec()),
        422,
        "invalid-bundle",
    );
    check_error(
        alice.send("POST", "/api/v1/bundles", bundle(key, 1, 300 * 1024)),
        413,
        "too-large",
    );
    let mut flipped = b.to_vec();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 1;
    check_error(
        alice.send("POST", "/api/v1/bundles", flipped),
        422,
        "invalid-bundle",
    );
    assert_eq!(srv.blob_files(), 1);
    assert_eq!(count_files(&srv.data.join("blobs/tmp")), 0);
}

/// The jobs of bundle `id` (submitted twice), and bad job queries.
fn jobs(alice: &Author<'_>, id: &str) {
    let r = alice.send("GET", &format!("/api/v1/jobs?bundle={id}"), vec![]);
    assert_eq!(r.status().as_u16(), 200);
    let jobs: Value = r.json().unwrap();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 6);
    assert_eq!(jobs["jobs"][0]["state"], "queued");
    check_error(
        alice.send("GET", "/api/v1/jobs?bundle=xyz", vec![]),
        400,
        "bad-request",
    );
    check_error(
        alice.send("GET", "/api/v1/jobs/1/answer", vec![]),
        404,
        "not-found",
    );
    check_error(
        alice.send("GET", "/api/v1/jobs/abc/answer", vec![]),
        400,
        "bad-request",
    );
}

fn post(c: &Client, srv: &Server, path: &str, body: Value) -> Response {
    c.post(srv.url(path)).json(&body).send().unwrap()
}

/// [`post`], its response's JSON.
fn post_json(c: &Client, srv: &Server, path: &str, body: Value) -> Value {
    post(c, srv, path, body).json().unwrap()
}

/// The `data:` lines of a lookup's `GET /lookup/v1/events` stream, one at a time.
struct Events(BufReader<Response>);

impl Events {
    fn open(srv: &Server, lab: &Client) -> Events {
        let events = lab
            .get(srv.url("/lookup/v1/events"))
            .timeout(Duration::from_secs(60))
            .send()
            .unwrap();
        assert_eq!(events.status().as_u16(), 200);
        Events(BufReader::new(events))
    }

    fn next(&mut self) -> String {
        loop {
            let mut line = String::new();
            self.0.read_line(&mut line).unwrap();
            if let Some(data) = line.strip_prefix("data: ") {
                return data.trim().to_owned();
            }
        }
    }
}

#[test]
fn lookup_api() {
    let srv = Server::start(1024 * 1024, 2);
    const SECRET: [u8; 32] = [3; 32];
    let key = KeyPair::from_secret(SECRET);
    admin::author_add(
        &admin::Site::local(&srv.data),
        "bob",
        &key.public().to_base64(),
    )
    .unwrap();
    let bob = Author {
        srv: &srv,
        http: srv.client(None),
        key: KeyPair::from_secret(SECRET),
    };
    let b = bundle(&key, 4, 500);
    let id = sha_hex(&b);
    assert_eq!(
        bob.send("POST", "/api/v1/bundles", b.clone())
            .status()
            .as_u16(),
        201
    );

    lookup_identity_is_checked(&srv, &bob.http);
    let lab = srv.lookup("lab");
    let lab2 = srv.lookup("lab2");
    // Events: the first event says how many are queued.
    let mut events = Events::open(&srv, &lab);
    assert_eq!(events.next(), r#"{"queued":4}"#);
    lease_requests_are_validated(&srv, &lab);
    let (j, j4) = leases_go_to_one_lookup_each(&srv, &lab, &lab2, &id, &key);
    held_is_each_lookups_own(&srv, &lab, &lab2, &j, j4);
    renew_release_and_fail(&srv, &lab, &mut events, &j, j4);
    answers_first_one_wins(&srv, &lab, j[0]);
    only_its_author_sees_the_answer(&srv, &bob, j[0]);
    bundles_are_served_with_an_etag(&srv, &lab, &id, &b);
    an_expired_lease_is_queued_again(&srv, &lab2, &mut events, j4);

    // Revocation takes effect at once.
    admin::lookup_revoke(&admin::Site::local(&srv.data), "lab2").unwrap();
    let one = || json!({"max": 1, "lease_secs": 60});
    check_error(
        post(&lab2, &srv, "/lookup/v1/lease", one()),
        403,
        "revoked-lookup",
    );
    assert_eq!(
        post(&lab, &srv, "/lookup/v1/lease", one())
            .status()
            .as_u16(),
        200
    );
}

/// No certificate, one never enrolled, one from another CA: refused.
fn lookup_identity_is_checked(srv: &Server, no_cert: &Client) {
    let one = || json!({"max": 1, "lease_secs": 60});
    check_error(
        post(no_cert, srv, "/lookup/v1/lease", one()),
        401,
        "no-client-certificate",
    );
    // Issued by the right CA but never enrolled.
    let creds = srv.stray_creds();
    check_error(
        post(&srv.client(Some(creds)), srv, "/lookup/v1/lease", one()),
        403,
        "not-a-lookup",
    );
    // Issued by another CA: the handshake (or the first read) fails.
    let other = pki::new_ca().unwrap();
    let foreign = pki::issue_lookup(&other, "lab").unwrap();
    let creds =
        pki::parse_creds(pki::creds_file("lab", &foreign, &other.cert_pem).as_bytes()).unwrap();
    let r = srv
        .client(Some(creds))
        .post(srv.url("/lookup/v1/lease"))
        .json(&one())
        .send();
    assert!(r.is_err(), "{r:?}");
}

fn lease_requests_are_validated(srv: &Server, lab: &Client) {
    for bad in [
        json!({"max": 0, "lease_secs": 60}),
        json!({"max": 501, "lease_secs": 60}),
        json!({"max": 1, "lease_secs": 4}),
        json!({"max": 1, "lease_secs": 60, "groups": ["compute"]}),
        json!({"max": 1, "lease_secs": 60, "extra": 1}),
    ] {
        check_error(post(lab, srv, "/lookup/v1/lease", bad), 400, "bad-request");
    }
    check_error(
        lab.post(srv.url("/lookup/v1/lease"))
            .body("{")
            .send()
            .unwrap(),
        400,
        "bad-request",
    );
}

/// Lease 3 of 4; the other lookup gets the last one only. Returns (lab's jobs, lab2's job).
fn leases_go_to_one_lookup_each(
    srv: &Server,
    lab: &Client,
    lab2: &Client,
    id: &str,
    key: &KeyPair,
) -> (Vec<i64>, i64) {
    let r = post_json(
        lab,
        srv,
        "/lookup/v1/lease",
        json!({"max": 3, "groups": ["/compute"], "lease_secs": 60}),
    );
    let leases = r["leases"].as_array().unwrap().clone();
    assert_eq!(leases.len(), 3);
    assert_eq!(leases[0]["bundle_id"], id);
    assert_eq!(leases[0]["attempt"], 1);
    assert_eq!(
        leases[0]["author_fingerprint"],
        key.public().fingerprint().to_string()
    );
    let j: Vec<i64> = leases
        .iter()
        .map(|l| l["job_id"].as_i64().unwrap())
        .collect();
    let ten = || json!({"max": 10, "lease_secs": 60});
    let r = post_json(lab2, srv, "/lookup/v1/lease", ten());
    assert_eq!(r["leases"].as_array().unwrap().len(), 1);
    let j4 = r["leases"][0]["job_id"].as_i64().unwrap();
    let r = post_json(lab2, srv, "/lookup/v1/lease", ten());
    assert!(r["leases"].as_array().unwrap().is_empty());
    (j, j4)
}

/// What a (restarted) lookup reads back as held: its own leases only, oldest first, paged;
/// bad requests refused.
fn held_is_each_lookups_own(srv: &Server, lab: &Client, lab2: &Client, j: &[i64], j4: i64) {
    let ids = |r: Value| -> Vec<i64> {
        r["leases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["job_id"].as_i64().unwrap())
            .collect()
    };
    let all = json!({"max": 500, "lease_secs": 60});
    assert_eq!(ids(post_json(lab, srv, "/lookup/v1/held", all.clone())), j);
    let page = json!({"after": j[0], "max": 1, "lease_secs": 60});
    assert_eq!(ids(post_json(lab, srv, "/lookup/v1/held", page)), [j[1]]);
    assert_eq!(ids(post_json(lab2, srv, "/lookup/v1/held", all)), [j4]);
    for bad in [
        json!({"max": 0, "lease_secs": 60}),
        json!({"max": 501, "lease_secs": 60}),
        json!({"max": 1, "lease_secs": 1}),
        json!({"max": 1, "lease_secs": 60, "extra": 1}),
    ] {
        check_error(post(lab, srv, "/lookup/v1/held", bad), 400, "bad-request");
    }
}

/// Renew, release and failure reports of lab's jobs `j` (not of lab2's `j4`).
fn renew_release_and_fail(srv: &Server, lab: &Client, events: &mut Events, j: &[i64], j4: i64) {
    // Renew: ours renewed, others lost.
    let r = post_json(
        lab,
        srv,
        "/lookup/v1/renew",
        json!({"job_ids": [j[0], j4], "lease_secs": 60}),
    );
    assert_eq!(r["renewed"], json!([j[0]]));
    assert_eq!(r["lost"], json!([j4]));

    // Release one: queued again, event.
    let r = post_json(lab, srv, "/lookup/v1/release", json!({"job_ids": [j[2]]}));
    assert_eq!(r["released"], json!([j[2]]));
    assert_eq!(events.next(), r#"{"queued":1}"#);

    // Failure: of a job we hold (queued again, attempts 1), of one we do not (409).
    let failure = |job: i64, reason: &str| {
        post(
            lab,
            srv,
            &format!("/lookup/v1/jobs/{job}/failure"),
            json!({ "reason": reason }),
        )
    };
    let r: Value = failure(j[1], "node lost").json().unwrap();
    assert_eq!(r, json!({"state": "queued", "attempts": 1}));
    assert_eq!(events.next(), r#"{"queued":2}"#);
    check_error(failure(j[1], "again"), 409, "not-leased");
    check_error(failure(j4, "x\ny"), 400, "bad-request");
}

/// Answers to `job`: first one wins, later ones are duplicates; unknown jobs leave nothing.
fn answers_first_one_wins(srv: &Server, lab: &Client, job: i64) {
    let blobs_before = srv.blob_files();
    let put = |job: i64, body: &[u8], outcome: &str, node: &str| {
        lab.put(srv.url(&format!("/lookup/v1/jobs/{job}/answer")))
            .header("rjs-outcome", outcome)
            .header("rjs-node", node)
            .body(body.to_vec())
            .send()
            .unwrap()
    };
    let r = put(job, b"PK answer one", "exit 0", "node-1");
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(r.json::<Value>().unwrap(), json!({"status": "stored"}));
    let r = put(job, b"PK answer two", "exit 1", "node-2");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().unwrap(), json!({"status": "duplicate"}));
    check_error(
        put(999_999, b"PK stray answer", "exit 0", "n"),
        404,
        "not-found",
    );
    check_error(put(job, b"x", "exit 0", "bad node"), 400, "bad-request");
    check_error(put(job, b"x", "", "n"), 400, "bad-request");
    check_error(
        put(job, &vec![7u8; 1024 * 1024 + 1], "exit 0", "n"),
        413,
        "too-large",
    );
    // Far over the declared limit: refused at once, the client sees why.
    check_error(
        put(job, &vec![7u8; 8 * 1024 * 1024], "exit 0", "n"),
        413,
        "too-large",
    );
    // Streamed without a length: refused at the limit; the server drains up to 1 MiB more
    // so the client can read the answer (beyond that the stream is reset).
    let chunked = reqwest::blocking::Body::new(std::io::Cursor::new(vec![7u8; 1536 * 1024]));
    let r = lab
        .put(srv.url(&format!("/lookup/v1/jobs/{job}/answer")))
        .header("rjs-outcome", "exit 0")
        .header("rjs-node", "n")
        .body(chunked)
        .send()
        .unwrap();
    check_error(r, 413, "too-large");
    assert_eq!(count_files(&srv.data.join("blobs/tmp")), 0);
    // Small answers are kept in the database: no blob at all.
    assert_eq!(srv.blob_files(), blobs_before);
    assert!(!blob_exists(srv, b"PK stray answer"));
}

/// The author of `job` (answered `PK answer one` by node-1) sees its answer; another does not.
fn only_its_author_sees_the_answer(srv: &Server, bob: &Author<'_>, job: i64) {
    let r = bob.send("GET", &format!("/api/v1/jobs/{job}/answer"), vec![]);
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/zip");
    assert_eq!(r.bytes().unwrap().as_ref(), b"PK answer one");
    let jobs: Value = bob.send("GET", "/api/v1/jobs", vec![]).json().unwrap();
    let done = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == job)
        .unwrap()
        .clone();
    assert_eq!(done["state"], "done");
    assert_eq!(done["outcome"], "exit 0");
    assert_eq!(done["node"], "node-1");
    assert_eq!(done["answer_bytes"], 13);
    // Another author does not.
    let eve_key = KeyPair::from_secret([4; 32]);
    admin::author_add(
        &admin::Site::local(&srv.data),
        "eve",
        &eve_key.public().to_base64(),
    )
    .unwrap();
    let eve = Author {
        srv,
        http: srv.client(None),
        key: eve_key,
    };
    check_error(
        eve.send("GET", &format!("/api/v1/jobs/{job}/answer"), vec![]),
        404,
        "not-found",
    );
    let eve_jobs: Value = eve.send("GET", "/api/v1/jobs", vec![]).json().unwrap();
    assert_eq!(eve_jobs["jobs"], json!([]));
}

/// Bundle `id` (bytes `b`), with ETag; an unknown one, a bad id, an answer's blob: refused.
fn bundles_are_served_with_an_etag(srv: &Server, lab: &Client, id: &str, b: &[u8]) {
    let get = |id: &str| lab.get(srv.url(&format!("/lookup/v1/bundles/{id}")));
    let r = get(id).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{id}\""));
    assert_eq!(r.bytes().unwrap().as_ref(), b);
    let r = get(id).header("if-none-match", &etag).send().unwrap();
    assert_eq!(r.status().as_u16(), 304);
    check_error(get(&"0".repeat(64)).send().unwrap(), 404, "not-found");
    check_error(get("xyz").send().unwrap(), 400, "bad-request");
    // An answer's blob is not a bundle.
    check_error(
        get(&sha_hex(b"PK answer one")).send().unwrap(),
        404,
        "not-found",
    );
}

/// Lease expiry: lab2's lease on `j4`, cut to 5 s, runs out; the job is queued again with
/// attempt 2, and listeners are told.
fn an_expired_lease_is_queued_again(srv: &Server, lab2: &Client, events: &mut Events, j4: i64) {
    let r = post_json(
        lab2,
        srv,
        "/lookup/v1/renew",
        json!({"job_ids": [j4], "lease_secs": 5}),
    );
    assert_eq!(r["renewed"], json!([j4]));
    assert_eq!(events.next(), r#"{"queued":3}"#);
    let r = post_json(
        lab2,
        srv,
        "/lookup/v1/lease",
        json!({"max": 10, "lease_secs": 60}),
    );
    let again = r["leases"].as_array().unwrap();
    let j4_again = again
        .iter()
        .find(|l| l["job_id"] == j4)
        .expect("j4 requeued");
    assert_eq!(j4_again["attempt"], 2);
}

// ------------------------------------------------------------------ answer batches

use rjs_webserver::store::Store as _;
use rjs_wire::api::{
    ANSWERS_CONTENT_TYPE, AnswerBatchResponse, AnswerBatchStatus, MAX_ANSWER_BATCH,
};

/// An author with a submitted bundle of `tasks` jobs, and a lookup holding all of them.
struct Leased<'a> {
    author: Author<'a>,
    lab: Client,
    jobs: Vec<i64>,
}

fn leased(srv: &Server, tasks: u32) -> Leased<'_> {
    let key = KeyPair::from_secret([9; 32]);
    admin::author_add(
        &admin::Site::local(&srv.data),
        "carol",
        &key.public().to_base64(),
    )
    .unwrap();
    let author = Author {
        srv,
        http: srv.client(None),
        key,
    };
    let b = bundle(&author.key, tasks, 100);
    assert_eq!(
        author.send("POST", "/api/v1/bundles", b).status().as_u16(),
        201
    );
    let lab = srv.lookup("lab");
    let mut jobs = Vec::new();
    loop {
        let r = post_json(
            &lab,
            srv,
            "/lookup/v1/lease",
            json!({"max": 500, "lease_secs": 600}),
        );
        let leases = r["leases"].as_array().unwrap();
        if leases.is_empty() {
            break;
        }
        jobs.extend(leases.iter().map(|l| l["job_id"].as_i64().unwrap()));
    }
    assert_eq!(jobs.len(), tasks as usize);
    Leased { author, lab, jobs }
}

/// A distinct answer archive of `len` bytes for `job`.
fn answer_bytes(job: i64, len: usize) -> Vec<u8> {
    let seed = (job as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = b"PK".to_vec();
    out.extend(noise(len.saturating_sub(2), seed));
    out.truncate(len);
    out
}

/// [`answer_batch`] of answers given as literals of different lengths.
fn batch(records: &[(i64, &[u8])]) -> Vec<u8> {
    answer_batch(records)
}

/// One record with a raw JSON header.
fn raw_record(body: &mut Vec<u8>, header: &[u8], bytes: &[u8]) {
    body.extend_from_slice(&(header.len() as u32).to_be_bytes());
    body.extend_from_slice(header);
    body.extend_from_slice(bytes);
}

fn post_batch(c: &Client, srv: &Server, body: Vec<u8>) -> Response {
    c.post(srv.url("/lookup/v1/answers"))
        .header("content-type", ANSWERS_CONTENT_TYPE)
        .body(body)
        .send()
        .unwrap()
}

fn batch_ok(c: &Client, srv: &Server, body: Vec<u8>) -> Vec<(i64, AnswerBatchStatus)> {
    let r = post_batch(c, srv, body);
    assert_eq!(r.status().as_u16(), 200);
    r.json::<AnswerBatchResponse>()
        .unwrap()
        .results
        .into_iter()
        .map(|r| (r.job_id, r.status))
        .collect()
}

fn store(srv: &Server) -> rjs_webserver::store::sqlite::SqliteStore {
    srv.store()
}

/// Jobs by state: [queued, leased, done, failed].
fn states(srv: &Server) -> [u64; 4] {
    let c = store(srv).count_by_state().unwrap();
    let get = |s| c.iter().find(|(st, _)| *st == s).map_or(0, |(_, n)| *n);
    use rjs_wire::api::JobState::*;
    [get(Queued), get(Leased), get(Done), get(Failed)]
}

/// Answers kept inline in the database.
fn inline_answers(srv: &Server) -> i64 {
    rusqlite::Connection::open(srv.data.join("rjs.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM answer_data", [], |r| r.get(0))
        .unwrap()
}

/// The author downloads a job's answer: (content type, content disposition, bytes).
fn download(author: &Author<'_>, job: i64) -> (String, String, Vec<u8>) {
    let r = author.send("GET", &format!("/api/v1/jobs/{job}/answer"), vec![]);
    assert_eq!(r.status().as_u16(), 200, "answer of job {job}");
    let h = |n: &str| r.headers()[n].to_str().unwrap().to_owned();
    let (ct, cd) = (h("content-type"), h("content-disposition"));
    let len: usize = h("content-length").parse().unwrap();
    let bytes = r.bytes().unwrap().to_vec();
    assert_eq!(len, bytes.len());
    (ct, cd, bytes)
}

#[test]
fn answer_batch_of_100_is_stored_at_once_and_a_resent_batch_is_all_duplicates() {
    let srv = Server::start(1024 * 1024, 3);
    let l = leased(&srv, 100);
    let blobs_before = srv.blob_files();
    let answers: Vec<(i64, Vec<u8>)> = l.jobs.iter().map(|&j| (j, answer_bytes(j, 2000))).collect();
    let body = answer_batch(&answers);

    let results = batch_ok(&l.lab, &srv, body.clone());
    let expected: Vec<(i64, AnswerBatchStatus)> = l
        .jobs
        .iter()
        .map(|&j| (j, AnswerBatchStatus::Stored))
        .collect();
    assert_eq!(results, expected, "every record stored, in request order");
    assert_eq!(states(&srv), [0, 0, 100, 0]);
    // Kept in the database: not one file was created for them.
    assert_eq!(inline_answers(&srv), 100);
    assert_eq!(srv.blob_files(), blobs_before);
    // One transaction: every job was marked done at the same instant by the same lookup.
    let jobs: Value = l.author.send("GET", "/api/v1/jobs", vec![]).json().unwrap();
    let jobs = jobs["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 100);
    assert!(
        jobs.iter()
            .all(|j| j["updated_at"] == jobs[0]["updated_at"])
    );
    assert!(jobs.iter().all(|j| j["state"] == "done"
        && j["outcome"] == "exit 0"
        && j["node"] == "node-1"
        && j["answer_bytes"] == 2000));

    // The author downloads them byte for byte, as any answer.
    for (job, bytes) in answers.iter().step_by(17) {
        let (ct, cd, got) = download(&l.author, *job);
        assert_eq!(ct, "application/zip");
        assert_eq!(cd, format!("attachment; filename=\"job-{job}-answer.zip\""));
        assert_eq!(&got, bytes, "answer of job {job}");
    }

    // The same batch again: acknowledged, discarded.
    let results = batch_ok(&l.lab, &srv, body);
    assert!(
        results
            .iter()
            .zip(&l.jobs)
            .all(|((j, s), want)| j == want && *s == AnswerBatchStatus::Duplicate),
        "{results:?}"
    );
    // Different bytes for an answered job: still the first answer.
    let results = batch_ok(&l.lab, &srv, batch(&[(l.jobs[0], b"PK other")]));
    assert_eq!(results, vec![(l.jobs[0], AnswerBatchStatus::Duplicate)]);
    assert_eq!(download(&l.author, l.jobs[0]).2, answers[0].1);
    assert_eq!(inline_answers(&srv), 100);
    // An empty batch is a valid, empty request.
    assert!(batch_ok(&l.lab, &srv, Vec::new()).is_empty());
}

#[test]
fn a_job_named_twice_in_a_batch_is_a_duplicate_record_not_a_bad_batch() {
    let srv = Server::start(1024 * 1024, 3);
    let l = leased(&srv, 2);
    let (a, b) = (l.jobs[0], l.jobs[1]);
    let blobs_before = srv.blob_files();
    let large = answer_bytes(a, 600 * 1024);
    let results = batch_ok(
        &l.lab,
        &srv,
        batch(&[(a, b"PK a"), (b, b"PK b"), (a, &large)]),
    );
    assert_eq!(
        results,
        vec![
            (a, AnswerBatchStatus::Stored),
            (b, AnswerBatchStatus::Stored),
            (a, AnswerBatchStatus::Duplicate)
        ]
    );
    assert_eq!(download(&l.author, a).2, b"PK a");
    assert_eq!(download(&l.author, b).2, b"PK b");
    // The second (large) answer of `a` was never written anywhere.
    assert_eq!(srv.blob_files(), blobs_before);
    assert_eq!(count_files(&srv.data.join("blobs/tmp")), 0);
}

#[test]
fn answer_batch_with_an_unknown_job_stores_the_others() {
    let srv = Server::start(1024 * 1024, 3);
    let l = leased(&srv, 3);
    let (a, b) = (l.jobs[0], l.jobs[1]);
    let results = batch_ok(
        &l.lab,
        &srv,
        batch(&[(a, b"PK a"), (999_999, b"PK stray"), (b, b"PK b")]),
    );
    assert_eq!(
        results,
        vec![
            (a, AnswerBatchStatus::Stored),
            (999_999, AnswerBatchStatus::NotFound),
            (b, AnswerBatchStatus::Stored)
        ]
    );
    assert_eq!(states(&srv), [0, 1, 2, 0]);
    assert_eq!(inline_answers(&srv), 2);
    assert_eq!(download(&l.author, a).2, b"PK a");
    assert_eq!(download(&l.author, b).2, b"PK b");

    // A job leased by another lookup: `not-leased`, nothing stored (small or large);
    // the holder's answer is then taken.
    let c = l.jobs[2];
    let other = srv.lookup("other");
    let blobs_before = srv.blob_files();
    let large = answer_bytes(c, 600 * 1024);
    let results = batch_ok(
        &other,
        &srv,
        batch(&[(c, b"PK from the other lookup"), (a, &large)]),
    );
    assert_eq!(
        results,
        vec![
            (c, AnswerBatchStatus::NotLeased),
            (a, AnswerBatchStatus::NotLeased)
        ]
    );
    assert_eq!(states(&srv), [0, 1, 2, 0]);
    assert_eq!(inline_answers(&srv), 2);
    assert_eq!(srv.blob_files(), blobs_before);
    assert_eq!(count_files(&srv.data.join("blobs/tmp")), 0);
    let results = batch_ok(&l.lab, &srv, batch(&[(c, b"PK c")]));
    assert_eq!(results, vec![(c, AnswerBatchStatus::Stored)]);
    assert_eq!(download(&l.author, c).2, b"PK c");
    assert_eq!(states(&srv), [0, 0, 3, 0]);
}

#[test]
fn malformed_or_oversize_answer_batches_store_nothing() {
    // Answers up to 1 MiB; a batch body up to 64 MiB.
    let srv = Server::start_with(1024 * 1024, 1024 * 1024, 3);
    let l = leased(&srv, 300);
    let j0 = l.jobs[0];
    let blobs_before = srv.blob_files();
    let ok_record = answer_batch(&[(j0, answer_bytes(j0, 100))]);
    for (what, body, status, code) in malformed_batches(&ok_record, &l.jobs) {
        let r = post_batch(&l.lab, &srv, body);
        let got = r.status().as_u16();
        let v: Value = r.json().unwrap_or(Value::Null);
        assert_eq!(
            (got, v["code"].as_str()),
            (status, Some(code)),
            "{what}: {v}"
        );
    }
    oversize_batches_are_refused(&srv, &l, &ok_record);

    // Nothing of any of them was stored.
    assert_eq!(states(&srv), [0, 300, 0, 0]);
    assert_eq!(inline_answers(&srv), 0);
    assert_eq!(srv.blob_files(), blobs_before);
    assert_eq!(count_files(&srv.data.join("blobs/tmp")), 0);
    // The server is fine: a good batch goes through.
    assert_eq!(
        batch_ok(&l.lab, &srv, ok_record),
        vec![(j0, AnswerBatchStatus::Stored)]
    );
}

/// Batches a lookup holding `jobs` (more than [`MAX_ANSWER_BATCH`]) might send that are
/// refused whole: (what, body, status, code). `ok_record` is one good record for `jobs[0]`.
fn malformed_batches(
    ok_record: &[u8],
    jobs: &[i64],
) -> Vec<(&'static str, Vec<u8>, u16, &'static str)> {
    let (j0, j1) = (jobs[0], jobs[1]);
    let good = |j: i64| (j, answer_bytes(j, 100));
    let header = |extra: &str| {
        format!(r#"{{"job_id":{j1},"outcome":"exit 0","node":"n1","size":2{extra}}}"#)
    };
    let with_bad = |header: &str| {
        let mut body = ok_record.to_vec();
        raw_record(&mut body, header.as_bytes(), b"PK");
        body
    };
    let mut cases = vec![
        (
            "truncated answer",
            ok_record[..ok_record.len() - 1].to_vec(),
            400,
            "bad-request",
        ),
        (
            "truncated length",
            [ok_record, &[0, 0]].concat(),
            400,
            "bad-request",
        ),
        (
            "zero header length",
            [ok_record, &[0, 0, 0, 0]].concat(),
            400,
            "bad-request",
        ),
        (
            "header over 4 KiB",
            [ok_record, &(4097u32).to_be_bytes(), &[b' '; 4097]].concat(),
            400,
            "bad-request",
        ),
        ("bad JSON", with_bad("{\"job_id\":"), 400, "bad-request"),
        (
            "unknown field",
            with_bad(&header(r#","extra":true"#)),
            400,
            "bad-request",
        ),
        (
            "missing field",
            with_bad(&format!(r#"{{"job_id":{j1},"outcome":"exit 0","size":2}}"#)),
            400,
            "bad-request",
        ),
        (
            "bad outcome",
            with_bad(&format!(
                r#"{{"job_id":{j1},"outcome":"exit 0\nx: y","node":"n1","size":2}}"#
            )),
            400,
            "bad-request",
        ),
        (
            "bad node",
            with_bad(&format!(
                r#"{{"job_id":{j1},"outcome":"exit 0","node":"n 1","size":2}}"#
            )),
            400,
            "bad-request",
        ),
        (
            "job id 0",
            with_bad(r#"{"job_id":0,"outcome":"exit 0","node":"n1","size":2}"#),
            400,
            "bad-request",
        ),
        (
            "answer over --max-answer",
            {
                let big = vec![7u8; 1024 * 1024 + 1];
                batch(&[(j0, b"PK"), (j1, &big)])
            },
            413,
            "too-large",
        ),
    ];
    // Too many records: MAX_ANSWER_BATCH + 1.
    let many: Vec<(i64, Vec<u8>)> = jobs[..MAX_ANSWER_BATCH + 1]
        .iter()
        .map(|&j| good(j))
        .collect();
    cases.push(("too many records", answer_batch(&many), 400, "bad-request"));
    cases
}

/// The wrong content type, a declared length over the body limit, a streamed body that
/// crosses it, a cut batch of large answers: refused.
fn oversize_batches_are_refused(srv: &Server, l: &Leased<'_>, ok_record: &[u8]) {
    // Not the batch content type.
    let r = l
        .lab
        .post(srv.url("/lookup/v1/answers"))
        .header("content-type", "application/octet-stream")
        .body(ok_record.to_vec())
        .send()
        .unwrap();
    check_error(r, 415, "unsupported-media-type");
    // A declared length over the body limit: refused at once.
    check_error(
        post_batch(&l.lab, srv, vec![0u8; 64 * 1024 * 1024 + 1]),
        413,
        "too-large",
    );
    // Streamed without a length: refused where the body crosses 64 MiB (here 65 large
    // answers of 1 MiB each, in blob uploads until then).
    let big: Vec<(i64, Vec<u8>)> = l.jobs[..65]
        .iter()
        .map(|&j| (j, answer_bytes(j, 1024 * 1024)))
        .collect();
    let body = answer_batch(&big);
    assert!(body.len() > 64 * 1024 * 1024);
    let r = l
        .lab
        .post(srv.url("/lookup/v1/answers"))
        .header("content-type", ANSWERS_CONTENT_TYPE)
        .body(reqwest::blocking::Body::new(std::io::Cursor::new(body)))
        .send();
    match r {
        Ok(r) => check_error(r, 413, "too-large"),
        // Past the limit the server reads at most 1 MiB more: the client may instead see the
        // stream reset.
        Err(e) => eprintln!("streamed oversize batch: {e}"),
    }
    // Large answers uploaded within a refused batch were never committed.
    let big_ok = answer_batch(&big[..2]);
    let mut cut = big_ok.clone();
    cut.truncate(big_ok.len() - 10);
    check_error(post_batch(&l.lab, srv, cut), 400, "bad-request");
}

#[test]
fn large_answers_go_to_the_blob_store_small_ones_inline() {
    const INLINE: usize = rjs_webserver::store::INLINE_ANSWER_MAX as usize;
    let srv = Server::start_with(1024 * 1024, 2 * 1024 * 1024, 3);
    let l = leased(&srv, 6);
    let blobs_before = srv.blob_files();
    let j = &l.jobs;
    let sizes = [INLINE, INLINE + 1, 1536 * 1024, 10, INLINE, INLINE + 1];
    let answers: Vec<Vec<u8>> = j
        .iter()
        .zip(sizes)
        .map(|(&j, n)| answer_bytes(j, n))
        .collect();
    // Batch: at the threshold inline, above it a blob.
    let results = batch_ok(
        &l.lab,
        &srv,
        batch(&[
            (j[0], &answers[0]),
            (j[1], &answers[1]),
            (j[2], &answers[2]),
            (j[3], &answers[3]),
        ]),
    );
    assert!(results.iter().all(|(_, s)| *s == AnswerBatchStatus::Stored));
    // Single uploads: the same rule.
    for i in [4, 5] {
        let r = put_answer(&l.lab, &srv, j[i], answers[i].clone().into());
        assert_eq!(r.status().as_u16(), 201);
    }
    // A large single answer streamed without a length moves to a blob once past the threshold.
    let streamed = reqwest::blocking::Body::new(std::io::Cursor::new(answer_bytes(1, INLINE + 5)));
    let r = put_answer(&l.lab, &srv, j[5], streamed);
    assert_eq!(r.status().as_u16(), 200, "duplicate");

    assert_eq!(states(&srv), [0, 0, 6, 0]);
    assert_eq!(inline_answers(&srv), 3);
    // Three answer blobs, named by their SHA-256; nothing of the streamed duplicate.
    assert_eq!(srv.blob_files(), blobs_before + 3);
    assert!(!blob_exists(&srv, &answer_bytes(1, INLINE + 5)));
    for i in [1, 2, 5] {
        let sha = sha_hex(&answers[i]);
        let path = srv.data.join("blobs/blobs").join(&sha[..2]).join(&sha);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            answers[i],
            "blob of job {}",
            j[i]
        );
    }
    for (i, bytes) in answers.iter().enumerate() {
        let (ct, _, got) = download(&l.author, j[i]);
        assert_eq!(ct, "application/zip");
        assert!(
            got == *bytes,
            "answer of job {} ({} bytes) intact",
            j[i],
            bytes.len()
        );
    }
    assert_eq!(count_files(&srv.data.join("blobs/tmp")), 0);
}

#[test]
fn answer_batches_need_an_enrolled_unrevoked_lookup() {
    let srv = Server::start(1024 * 1024, 3);
    let l = leased(&srv, 2);
    let body = batch(&[(l.jobs[0], b"PK")]);
    check_error(
        post_batch(&l.author.http, &srv, body.clone()),
        401,
        "no-client-certificate",
    );
    let creds = srv.stray_creds();
    check_error(
        post_batch(&srv.client(Some(creds)), &srv, body.clone()),
        403,
        "not-a-lookup",
    );
    admin::lookup_revoke(&admin::Site::local(&srv.data), "lab").unwrap();
    check_error(
        post_batch(&l.lab, &srv, body.clone()),
        403,
        "revoked-lookup",
    );
    // Wrong method on the route.
    check_error(
        l.lab.get(srv.url("/lookup/v1/answers")).send().unwrap(),
        405,
        "method-not-allowed",
    );
    assert_eq!(states(&srv), [0, 2, 0, 0]);
    assert_eq!(inline_answers(&srv), 0);
}

// ------------------------------------------------------------------ duplicates, refusals

fn put_answer(c: &Client, srv: &Server, job: i64, body: reqwest::blocking::Body) -> Response {
    c.put(srv.url(&format!("/lookup/v1/jobs/{job}/answer")))
        .header("rjs-outcome", "exit 0")
        .header("rjs-node", "n1")
        .body(body)
        .send()
        .unwrap()
}

fn blob_exists(srv: &Server, bytes: &[u8]) -> bool {
    let sha = sha_hex(bytes);
    srv.data
        .join("blobs/blobs")
        .join(&sha[..2])
        .join(&sha)
        .exists()
}

#[test]
fn a_duplicate_or_refused_large_answer_leaves_no_blob() {
    let srv = Server::start_with(1024 * 1024, 4 * 1024 * 1024, 3);
    let l = leased(&srv, 4);
    let other = srv.lookup("other");
    let j = l.jobs.clone();
    let blobs_before = srv.blob_files();
    let chunked = |b: &[u8]| reqwest::blocking::Body::new(std::io::Cursor::new(b.to_vec()));

    let first = answer_bytes(j[0], 600 * 1024);
    assert_eq!(
        put_answer(&l.lab, &srv, j[0], first.clone().into())
            .status()
            .as_u16(),
        201
    );
    assert_eq!(srv.blob_files(), blobs_before + 1);

    // A second large answer, with a length, streamed without one, in a batch: acknowledged
    // and discarded, no blob, no temporary file.
    let second = answer_bytes(j[0] + 1000, 700 * 1024);
    for body in [second.clone().into(), chunked(&second)] {
        let r = put_answer(&l.lab, &srv, j[0], body);
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.json::<Value>().unwrap(), json!({"status": "duplicate"}));
    }
    assert_eq!(
        batch_ok(&l.lab, &srv, batch(&[(j[0], &second)])),
        vec![(j[0], AnswerBatchStatus::Duplicate)]
    );
    assert!(!blob_exists(&srv, &second));
    // Over the limit is still too large, duplicate or not.
    check_error(
        put_answer(&l.lab, &srv, j[0], vec![1u8; 4 * 1024 * 1024 + 1].into()),
        413,
        "too-large",
    );

    // Another lookup's large answer for a job this one holds: 409, nothing kept.
    for body in [second.clone().into(), chunked(&second)] {
        check_error(put_answer(&other, &srv, j[1], body), 409, "not-leased");
    }
    check_error(
        put_answer(&other, &srv, 999_999, second.clone().into()),
        404,
        "not-found",
    );
    assert!(!blob_exists(&srv, &second));
    assert_eq!(srv.blob_files(), blobs_before + 1);
    assert_eq!(srv.tmp_files(), 0);
    assert_eq!(states(&srv), [0, 3, 1, 0]);

    // Two large answers for one job at once (both pass the first check, both are received
    // into blobs): one is stored, the other acknowledged as a duplicate; the duplicate's blob
    // is left to the collector, which removes it (and only it) once past its grace period.
    let mut droppeds = Vec::new();
    for &job in &j[1..] {
        let bodies = [
            answer_bytes(job, 900 * 1024),
            answer_bytes(job + 7777, 900 * 1024),
        ];
        let mut statuses: Vec<u16> = std::thread::scope(|scope| {
            let threads: Vec<_> = bodies
                .iter()
                .map(|b| {
                    let put = || put_answer(&l.lab, &srv, job, b.clone().into());
                    scope.spawn(move || put().status().as_u16())
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        statuses.sort();
        assert_eq!(statuses, vec![200, 201], "job {job}");
        let stored = download(&l.author, job).2;
        let (kept, dropped) = if stored == bodies[0] {
            (&bodies[0], &bodies[1])
        } else {
            (&bodies[1], &bodies[0])
        };
        assert_eq!(&stored, kept);
        assert!(blob_exists(&srv, kept));
        droppeds.push(dropped.clone());
    }
    // A sweep as the server's collector makes it, with no grace period left.
    let blobs = BlobStore::open(&srv.data.join("blobs")).unwrap();
    let store = SqliteStore::open(&srv.data.join("rjs.db")).unwrap();
    let opts = SweepOptions {
        grace: Duration::ZERO,
        ..SweepOptions::default()
    };
    let report = blobs.sweep(&store, &NoPins, &opts, &mut None).unwrap();
    assert_eq!(report.removed, 3, "{report:?}");
    for dropped in &droppeds {
        assert!(!blob_exists(&srv, dropped), "a duplicate's blob");
    }
    assert_eq!(srv.blob_files(), blobs_before + 4);
    assert_eq!(srv.tmp_files(), 0);
    assert_eq!(download(&l.author, j[0]).2, first);
    assert_eq!(states(&srv), [0, 0, 4, 0]);
}

/// What one lookup route is asked, for [`every_lookup_route_refuses_…`].
struct Route {
    name: &'static str,
    method: Method,
    path: String,
    body: Vec<u8>,
    headers: Vec<(&'static str, &'static str)>,
}

fn lookup_routes(job: i64, bundle_id: &str) -> Vec<Route> {
    let json_route = |name, path: String, body: Value| Route {
        name,
        method: Method::POST,
        path,
        body: body.to_string().into_bytes(),
        headers: vec![("content-type", "application/json")],
    };
    vec![
        json_route(
            "lease",
            "/lookup/v1/lease".into(),
            json!({"max": 10, "lease_secs": 60}),
        ),
        json_route(
            "renew",
            "/lookup/v1/renew".into(),
            json!({"job_ids": [job], "lease_secs": 60}),
        ),
        json_route(
            "release",
            "/lookup/v1/release".into(),
            json!({"job_ids": [job]}),
        ),
        json_route(
            "failure",
            format!("/lookup/v1/jobs/{job}/failure"),
            json!({"reason": "node lost"}),
        ),
        Route {
            name: "answer",
            method: Method::PUT,
            path: format!("/lookup/v1/jobs/{job}/answer"),
            body: b"PK answer".to_vec(),
            headers: vec![("rjs-outcome", "exit 0"), ("rjs-node", "n1")],
        },
        Route {
            name: "answers",
            method: Method::POST,
            path: "/lookup/v1/answers".into(),
            body: batch(&[(job, b"PK batch answer")]),
            headers: vec![("content-type", ANSWERS_CONTENT_TYPE)],
        },
        Route {
            name: "bundle",
            method: Method::GET,
            path: format!("/lookup/v1/bundles/{bundle_id}"),
            body: Vec::new(),
            headers: Vec::new(),
        },
        Route {
            name: "events",
            method: Method::GET,
            path: "/lookup/v1/events".into(),
            body: Vec::new(),
            headers: Vec::new(),
        },
    ]
}

impl Route {
    /// The request as HTTP/1.1 bytes.
    fn http1(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {}\r\n",
            self.method,
            self.path,
            self.body.len()
        );
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

fn call(c: &Client, srv: &Server, r: &Route) -> reqwest::Result<Response> {
    let mut rb = c
        .request(r.method.clone(), srv.url(&r.path))
        .body(r.body.clone());
    for (k, v) in &r.headers {
        rb = rb.header(*k, *v);
    }
    rb.send()
}

#[test]
fn every_lookup_route_refuses_clients_without_an_enrolled_unrevoked_certificate() {
    let srv = Server::start(1024 * 1024, 3);
    let l = leased(&srv, 3);
    let jobs: Value = l.author.send("GET", "/api/v1/jobs", vec![]).json().unwrap();
    let bundle_id = jobs["jobs"][0]["bundle_id"].as_str().unwrap().to_owned();
    // `gone` takes one of lab's jobs back (released by lab), then is revoked.
    let gone = srv.lookup("gone");
    let given = post_json(
        &l.lab,
        &srv,
        "/lookup/v1/release",
        json!({"job_ids": [l.jobs[2]]}),
    );
    assert_eq!(given["released"], json!([l.jobs[2]]));
    let r = post_json(
        &gone,
        &srv,
        "/lookup/v1/lease",
        json!({"max": 1, "lease_secs": 600}),
    );
    assert_eq!(r["leases"][0]["job_id"], l.jobs[2]);
    admin::lookup_revoke(&admin::Site::local(&srv.data), "gone").unwrap();

    let stray = srv.client(Some(srv.stray_creds()));
    let other_ca = pki::new_ca().unwrap();
    let foreign = pki::issue_lookup(&other_ca, "lab").unwrap();
    let foreign_creds = || {
        pki::parse_creds(pki::creds_file("lab", &foreign, &other_ca.cert_pem).as_bytes()).unwrap()
    };
    let blobs_before = srv.blob_files();
    let rows_before = srv.store().row_counts().unwrap();

    for (who, job) in [("lab's job", l.jobs[0]), ("gone's job", l.jobs[2])] {
        for route in lookup_routes(job, &bundle_id) {
            let what = format!("{} ({who})", route.name);
            // No certificate: 401.
            let r = call(&srv.client(None), &srv, &route).unwrap();
            check_error(r, 401, "no-client-certificate");
            // Issued by the web server's CA but never enrolled: 403.
            check_error(call(&stray, &srv, &route).unwrap(), 403, "not-a-lookup");
            // Revoked (and holding this job's lease, for gone's job): 403.
            check_error(call(&gone, &srv, &route).unwrap(), 403, "revoked-lookup");
            // Issued by another CA: the TLS handshake fails; not one byte of HTTP comes
            // back, whatever was sent after the handshake.
            let mut c = srv.raw(Some(foreign_creds()));
            let _ = c.send(&route.http1()); // may fail: the server drops the connection
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let end = loop {
                match std::io::Read::read(&mut c.0, &mut buf) {
                    Ok(0) => break "closed".to_owned(),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => break e.to_string(),
                }
            };
            assert!(
                got.is_empty(),
                "{what}: a foreign certificate got {:?} ({end})",
                String::from_utf8_lossy(&got)
            );
        }
    }
    // The refusal is the server's: a fatal alert right after the client's handshake flight
    // (read before anything else is sent, so no reset can hide it).
    let mut c = srv.raw(Some(foreign_creds()));
    c.handshake().unwrap();
    let err = std::io::Read::read(&mut c.0, &mut [0u8; 16]).unwrap_err();
    assert!(err.to_string().contains("received fatal alert"), "{err}");
    // Nothing changed: lab still holds its two jobs, gone (revoked) its one.
    assert_eq!(states(&srv), [0, 3, 0, 0]);
    assert_eq!(srv.store().row_counts().unwrap(), rows_before);
    assert_eq!(srv.blob_files(), blobs_before);
    assert_eq!(srv.tmp_files(), 0);
    let r = post_json(
        &l.lab,
        &srv,
        "/lookup/v1/renew",
        json!({"job_ids": [l.jobs[0], l.jobs[1], l.jobs[2]], "lease_secs": 60}),
    );
    assert_eq!(r["renewed"], json!([l.jobs[0], l.jobs[1]]));
    assert_eq!(r["lost"], json!([l.jobs[2]]));
}

/// Bytes of a body that is never sent whole.
fn filler(len: usize) -> Vec<u8> {
    noise(len, 0x0123_4567_89ab_cdef)
}

/// The response read from `c` is `413 too-large`, within 10 s.
fn refused_as_too_large_at_once(c: &mut RawHttp) {
    let start = std::time::Instant::now();
    let (status, v) = json_response(c);
    assert_eq!(
        (status, v["code"].as_str()),
        (413, Some("too-large")),
        "{v}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn an_oversized_upload_streamed_without_a_length_is_refused_before_it_is_sent() {
    // Bundles up to 1 MiB; the client means to send 16 MiB, in chunks, without a length.
    let srv = Server::start(1024 * 1024, 3);
    let key = KeyPair::from_secret([5; 32]);
    admin::author_add(
        &admin::Site::local(&srv.data),
        "dana",
        &key.public().to_base64(),
    )
    .unwrap();
    let dana = Author {
        srv: &srv,
        http: srv.client(None),
        key: KeyPair::from_secret([5; 32]),
    };
    let b = bundle(&dana.key, 2, 1000);
    assert_eq!(
        dana.send("POST", "/api/v1/bundles", b).status().as_u16(),
        201
    );
    let rows_before = srv.store().row_counts().unwrap();
    let blobs_before = srv.blob_files();

    let body = filler(16 * 1024 * 1024);
    let auth = RequestAuth::sign(
        &key,
        &srv.audience(),
        "POST",
        "/api/v1/bundles",
        &sha_hex(&body),
        now(),
    );
    let mut c = srv.raw(None);
    let mut head = String::from(
        "POST /api/v1/bundles HTTP/1.1\r\nhost: localhost\r\n\
         content-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n",
    );
    for (k, v) in auth.headers() {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    c.send(head.as_bytes()).unwrap();
    // 1.5 MiB: past the limit, then the client stops and waits for the answer.
    let mut sent = 0;
    for piece in body.chunks(64 * 1024).take(24) {
        c.chunk(piece).unwrap();
        sent += piece.len();
    }
    refused_as_too_large_at_once(&mut c);
    assert!(
        sent * 10 < body.len(),
        "answered with {sent} of {} bytes sent",
        body.len()
    );
    // Nothing kept: no row (nonce included), no blob, no temporary file.
    assert_eq!(srv.store().row_counts().unwrap(), rows_before);
    assert_eq!(srv.blob_files(), blobs_before);
    assert_eq!(srv.tmp_files(), 0);
}

#[test]
fn an_oversized_answer_with_a_declared_length_is_refused_before_it_is_sent() {
    // Answers up to 1 MiB; the lookup holding the job announces 8 MiB.
    let srv = Server::start_with(1024 * 1024, 1024 * 1024, 3);
    let l = leased(&srv, 1);
    let job = l.jobs[0];
    let rows_before = srv.store().row_counts().unwrap();
    let blobs_before = srv.blob_files();
    let mut c = srv.raw(Some(srv.creds_of("lab")));
    let total = 8 * 1024 * 1024;
    c.send(
        format!(
            "PUT /lookup/v1/jobs/{job}/answer HTTP/1.1\r\nhost: localhost\r\n\
             rjs-outcome: exit 0\r\nrjs-node: n1\r\ncontent-length: {total}\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let first = filler(128 * 1024);
    c.send(&first).unwrap();
    refused_as_too_large_at_once(&mut c);
    // Nothing kept: the job is still leased, without an answer; no blob, no temporary file.
    assert_eq!(states(&srv), [0, 1, 0, 0]);
    assert_eq!(srv.store().row_counts().unwrap(), rows_before);
    assert_eq!(srv.blob_files(), blobs_before);
    assert_eq!(srv.tmp_files(), 0);
    // So its holder's next (acceptable) answer is stored, not a duplicate.
    assert_eq!(
        put_answer(&l.lab, &srv, job, answer_bytes(job, 600 * 1024).into())
            .status()
            .as_u16(),
        201
    );
}

// ------------------------------------------------------------------ TLS versions

/// A TLS 1.0-style ClientHello offering only `version` (no `supported_versions` extension).
fn legacy_client_hello(version: [u8; 2]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version);
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // no session id
    let suites: [u16; 4] = [0xc013, 0xc014, 0x002f, 0x0035];
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null only
    let mut handshake = vec![1]; // client_hello
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 3, 1];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

#[test]
fn tls_1_2_and_1_3_clients_connect_and_nothing_older_is_offered() {
    let srv = Server::start(1024 * 1024, 3);
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(srv.ca[0].clone()).unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(rjs_wire::tls::provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut c = srv.raw_with(tls);
        c.send(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .unwrap();
        let (status, _) = json_response(&mut c);
        assert_eq!(status, 200, "{:?}", version.version);
        assert_eq!(c.0.conn.protocol_version(), Some(version.version));
    }
    // SSL 3.0, TLS 1.0 and 1.1 only: the server answers with a fatal alert
    // (handshake_failure, 40, or protocol_version, 70), never a ServerHello.
    for version in [[3, 0], [3, 1], [3, 2]] {
        use std::io::{Read, Write};
        let mut sock = std::net::TcpStream::connect(srv.addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        sock.write_all(&legacy_client_hello(version)).unwrap();
        let mut reply = [0u8; 7];
        sock.read_exact(&mut reply).unwrap();
        assert_eq!(reply[0], 0x15, "an alert record for {version:?}: {reply:?}");
        assert!(
            reply[5] == 2 && [40, 70].contains(&reply[6]),
            "a fatal handshake_failure or protocol_version alert: {reply:?}"
        );
    }
}

/// Reads `GET /api/v1/jobs` page by page (`limit` each); every job once, in order.
fn all_pages(author: &Author<'_>, limit: u32) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let path = format!("/api/v1/jobs?limit={limit}{after}");
        let r = author.send("GET", &path, vec![]);
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let page: Value = r.json().unwrap();
        let jobs = page["jobs"].as_array().unwrap();
        assert!(jobs.len() <= limit as usize);
        out.extend(jobs.iter().cloned());
        match page["next"].as_str() {
            Some(n) => after = format!("&after={n}"),
            None => return out,
        }
    }
}

#[test]
fn summaries_pages_and_the_change_feed_of_the_author_api() {
    let srv = Server::start(1024 * 1024, 3);
    let l = leased(&srv, 25);
    let a = &l.author;

    // Pages: every job once, a stable order, whatever the page size.
    let whole = all_pages(a, 1000);
    assert_eq!(whole.len(), 25);
    assert_eq!(all_pages(a, 7), whole);
    for bad in [
        "limit=0",
        "limit=1001",
        "after=x",
        "after=1.x",
        "state=running",
    ] {
        check_error(
            a.send("GET", &format!("/api/v1/jobs?{bad}"), vec![]),
            400,
            "bad-request",
        );
    }

    // A name filter is text: too long or with a control character (which PostgreSQL's text
    // could not even hold) is refused the same way on every backend; LIKE's own characters
    // are matched literally.
    let too_long = "x".repeat(201);
    for bad in [
        "name=%00",
        "name=a%0Ab",
        "name=%7F",
        &format!("name={too_long}"),
    ] {
        check_error(
            a.send("GET", &format!("/api/v1/submissions?{bad}"), vec![]),
            400,
            "bad-request",
        );
    }
    for (filter, found) in [("%25", 0), ("_", 0), ("\\", 0), ("ob", 1), ("", 1)] {
        let subs: Value = a
            .send("GET", &format!("/api/v1/submissions?name={filter}"), vec![])
            .json()
            .unwrap();
        assert_eq!(
            subs["submissions"].as_array().map(Vec::len),
            Some(found),
            "{filter}"
        );
    }

    // The summary: all leased; one job, with why it waits once its lookup says.
    let subs: Value = a.send("GET", "/api/v1/submissions", vec![]).json().unwrap();
    let s = &subs["submissions"][0];
    assert_eq!(
        (s["tasks"].as_u64(), s["states"]["leased"].as_u64()),
        (Some(25), Some(25))
    );
    let sid = s["id"].as_i64().unwrap();
    let one: Value = a
        .send("GET", &format!("/api/v1/submissions/{sid}"), vec![])
        .json()
        .unwrap();
    assert_eq!(&one, s);
    let since: Value = a.send("GET", "/api/v1/changes", vec![]).json().unwrap();
    let since = since["next"].as_u64().unwrap();
    let j = l.jobs[0];
    let why = "No node serves this job's group.";
    let r = post_json(
        &l.lab,
        &srv,
        "/lookup/v1/waiting",
        json!({"jobs": [{"job_id": j, "reason": why}]}),
    );
    assert_eq!(r["updated"], json!([j]));
    let job: Value = a
        .send("GET", &format!("/api/v1/jobs/{j}"), vec![])
        .json()
        .unwrap();
    assert_eq!(
        (job["waiting"].as_str(), job["leased_by"].as_str()),
        (Some(why), Some("lab"))
    );

    // The change feed names that job, once, after `since`; then nothing new.
    let feed: Value = a
        .send("GET", &format!("/api/v1/changes?since={since}"), vec![])
        .json()
        .unwrap();
    let changes = feed["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{feed}");
    assert_eq!(changes[0]["job"]["id"], json!(j));
    let next = feed["next"].as_u64().unwrap();
    assert!(next > since);
    // The same as server-sent events, from `since`: `id:` the change number, then the job.
    let stream = a.send("GET", &format!("/api/v1/events?since={since}"), vec![]);
    assert_eq!(stream.status().as_u16(), 200);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let mut lines = BufReader::new(stream).lines().map(Result::unwrap);
    let event: Vec<String> = lines
        .by_ref()
        .skip_while(|l| !l.starts_with("id: "))
        .take(3)
        .collect();
    let id: u64 = event[0].strip_prefix("id: ").unwrap().parse().unwrap();
    assert!(id >= next, "{event:?}");
    assert_eq!(event[1], "event: job");
    let data: Value = serde_json::from_str(event[2].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(data["job"]["id"], json!(j));
    let again: Value = a
        .send("GET", &format!("/api/v1/changes?since={next}"), vec![])
        .json()
        .unwrap();
    assert!(again["changes"].as_array().unwrap().is_empty());

    // Another author sees none of it; a bad reason is refused and changes nothing.
    let bob = KeyPair::from_secret([8; 32]);
    admin::author_add(
        &admin::Site::local(&srv.data),
        "bob",
        &bob.public().to_base64(),
    )
    .unwrap();
    let bob = Author {
        srv: &srv,
        http: srv.client(None),
        key: bob,
    };
    check_error(
        bob.send("GET", &format!("/api/v1/submissions/{sid}"), vec![]),
        404,
        "not-found",
    );
    check_error(
        bob.send("GET", &format!("/api/v1/jobs/{j}"), vec![]),
        404,
        "not-found",
    );
    let theirs: Value = bob
        .send("GET", &format!("/api/v1/changes?since={since}"), vec![])
        .json()
        .unwrap();
    assert!(theirs["changes"].as_array().unwrap().is_empty());
    for bad in [
        json!({"jobs": [{"job_id": j, "reason": ""}]}),
        json!({"jobs": [{"job_id": j, "reason": "a\nb"}]}),
        json!({"jobs": [{"job_id": j, "reason": "x".repeat(501)}]}),
        json!({"jobs": [{"job_id": j, "reason": "a"}, {"job_id": j, "reason": "b"}]}),
    ] {
        assert_eq!(
            post(&l.lab, &srv, "/lookup/v1/waiting", bad)
                .status()
                .as_u16(),
            400
        );
    }
    let r = post(
        &l.lab,
        &srv,
        "/lookup/v1/release",
        json!({"job_ids": [l.jobs[1]], "waiting": [{"job_id": l.jobs[2], "reason": "x"}]}),
    );
    assert_eq!(
        r.status().as_u16(),
        400,
        "a reason for a job not given back"
    );
    let job: Value = a
        .send("GET", &format!("/api/v1/jobs/{j}"), vec![])
        .json()
        .unwrap();
    assert_eq!(job["waiting"].as_str(), Some(why));

    // Given back with a reason: queued, the reason kept for the author.
    let r = post_json(
        &l.lab,
        &srv,
        "/lookup/v1/release",
        json!({"job_ids": [l.jobs[1]], "waiting": [{"job_id": l.jobs[1], "reason": "every node refused it"}]}),
    );
    assert_eq!(r["released"], json!([l.jobs[1]]));
    let job: Value = a
        .send("GET", &format!("/api/v1/jobs/{}", l.jobs[1]), vec![])
        .json()
        .unwrap();
    assert_eq!(
        (job["state"].as_str(), job["waiting"].as_str()),
        (Some("queued"), Some("every node refused it"))
    );
}

#[test]
fn a_dashboard_login_is_a_signed_request_used_once() {
    let srv = Server::start(1024 * 1024, 3);
    let l = leased(&srv, 1);
    let r = l.author.send("POST", "/api/v1/dashboard/login", vec![]);
    assert_eq!(r.status().as_u16(), 200);
    let login: Value = r.json().unwrap();
    assert!(
        login["path"]
            .as_str()
            .unwrap()
            .starts_with("/dashboard/login?token=")
    );
    assert_eq!(
        login["fingerprint"].as_str(),
        Some(l.author.key.public().fingerprint().to_string().as_str())
    );
    // The same signed request again is a replay.
    let auth = l.author.auth("POST", "/api/v1/dashboard/login", b"", now());
    assert_eq!(
        l.author
            .send_with("POST", "/api/v1/dashboard/login", vec![], &auth)
            .status()
            .as_u16(),
        200
    );
    check_error(
        l.author
            .send_with("POST", "/api/v1/dashboard/login", vec![], &auth),
        401,
        "replayed-nonce",
    );
    // Unsigned: refused.
    let anon = srv.client(None);
    assert_eq!(
        anon.post(srv.url("/api/v1/dashboard/login"))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        401
    );
}
