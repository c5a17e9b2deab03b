//! The web server through its real binary, real TLS on loopback.

#[path = "../../webserver/tests/support/raw_http.rs"]
mod raw_http;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raw_http::RawHttp;
use reqwest::Method;
use reqwest::StatusCode;
use rjs_e2e::*;
use rjs_webserver::store::Store;
use rjs_webserver::store::sqlite::{RowCounts, SqliteStore};
use rjs_wire::api::{self, JobState};
use serde_json::{Value, json};

/// A web server started with `extra_args`, with `authors` (fresh keys) and `lookups` enrolled;
/// returns it with each author's API client and each lookup's credentials.
fn serving<const A: usize, const L: usize>(
    extra_args: &[&str],
    authors: [&str; A],
    lookups: [&str; L],
) -> (WebServer, [AuthorClient; A], [LookupCreds; L]) {
    let mut ws = WebServer::init().unwrap();
    ws.extra_args = extra_args.iter().map(|s| s.to_string()).collect();
    let keys = authors.map(|name| ws.add_author(name).unwrap());
    let creds = lookups.map(|name| ws.add_lookup(name).unwrap());
    ws.start().unwrap();
    let clients = keys.map(|key| ws.author(key).unwrap());
    (ws, clients, creds)
}

/// How many of the author's jobs are done.
fn done_jobs(a: &AuthorClient) -> usize {
    let jobs = a.jobs(None).unwrap().jobs;
    jobs.iter().filter(|j| j.state == JobState::Done).count()
}

fn code_of(r: reqwest::blocking::Response) -> (StatusCode, String) {
    let status = r.status();
    let body: Value = r.json().unwrap_or(Value::Null);
    (status, body["code"].as_str().unwrap_or("").to_owned())
}

fn counts(ws: &WebServer) -> Vec<(JobState, u64)> {
    let store = rjs_webserver::store::sqlite::SqliteStore::open(&ws.data().join("rjs.db")).unwrap();
    let mut c = store.count_by_state().unwrap();
    c.sort_by_key(|(s, _)| s.as_str());
    c
}

fn blob_files(ws: &WebServer) -> Vec<String> {
    let mut out = Vec::new();
    let root = ws.data().join("blobs").join("blobs");
    if let Ok(rd) = std::fs::read_dir(&root) {
        for d in rd.flatten() {
            if let Ok(rd2) = std::fs::read_dir(d.path()) {
                for f in rd2.flatten() {
                    out.push(f.file_name().to_string_lossy().into_owned());
                }
            }
        }
    }
    out.sort();
    out
}

fn tmp_files(ws: &WebServer) -> usize {
    std::fs::read_dir(ws.data().join("blobs").join("tmp"))
        .map(|r| r.count())
        .unwrap_or(0)
}

fn store_of(ws: &WebServer) -> SqliteStore {
    SqliteStore::open(&ws.data().join("rjs.db")).unwrap()
}

/// Everything a request could leave behind: rows of every table, jobs by state, blob files,
/// temporary files.
#[derive(Debug, PartialEq)]
struct Trace {
    rows: RowCounts,
    states: Vec<(JobState, u64)>,
    blobs: Vec<String>,
    tmp: usize,
}

fn trace(ws: &WebServer) -> Trace {
    Trace {
        rows: store_of(ws).row_counts().unwrap(),
        states: counts(ws),
        blobs: blob_files(ws),
        tmp: tmp_files(ws),
    }
}

/// A hand-written HTTP/1.1 connection over TLS (for bodies sent in part, or slowly).
struct Raw;

impl Raw {
    fn connect(ws: &WebServer, identity: Option<&LookupCreds>) -> RawHttp {
        Self::connect_as(ws, identity, "localhost").unwrap()
    }

    /// Connects and completes the TLS handshake, naming the server `server_name`.
    fn connect_as(
        ws: &WebServer,
        identity: Option<&LookupCreds>,
        server_name: &str,
    ) -> Result<RawHttp, rustls::Error> {
        let tls = client_tls_from_files(&ws.ca_pem(), identity.map(|c| c.path.as_path())).unwrap();
        let mut raw = RawHttp::new(ws.addr.as_str(), tls, server_name);
        raw.handshake()?;
        Ok(raw)
    }
}

/// Sends `signal` (e.g. "INT") to the server.
fn signal(ws: &WebServer, signal: &str) {
    let pid = ws.proc.as_ref().unwrap().child.id();
    let st = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

/// Waits up to `secs` for the server to exit; its exit code.
fn exit_code(ws: &mut WebServer, secs: u64) -> Option<i32> {
    let proc = ws.proc.as_mut().unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if let Some(st) = proc.child.try_wait().unwrap() {
            return st.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the server did not exit within {secs} s");
}

fn lease(
    c: &reqwest::blocking::Client,
    ws: &WebServer,
    max: u32,
    secs: u32,
) -> reqwest::blocking::Response {
    c.post(ws.url("/lookup/v1/lease"))
        .json(&json!({"max": max, "lease_secs": secs}))
        .send()
        .unwrap()
}

fn lease_ok(c: &reqwest::blocking::Client, ws: &WebServer, max: u32, secs: u32) -> Vec<api::Lease> {
    let r = lease(c, ws, max, secs);
    assert_eq!(r.status(), StatusCode::OK, "lease failed");
    r.json::<api::LeaseResponse>().unwrap().leases
}

fn post_answer(
    c: &reqwest::blocking::Client,
    ws: &WebServer,
    job: i64,
    body: Vec<u8>,
) -> reqwest::blocking::Response {
    c.put(ws.url(&format!("/lookup/v1/jobs/{job}/answer")))
        .header(api::H_OUTCOME, "exit 0")
        .header(api::H_NODE, "node-1")
        .body(body)
        .send()
        .unwrap()
}

#[test]
fn author_refusals_are_clear_and_leave_no_trace() {
    let (mut ws, [a, b], []) = serving(&[], ["alice", "bob"], []);

    // A valid upload first, so that "no trace" means "nothing beyond this".
    let good = make_bundle(a.key(), "good", 3);
    let r = upload_raw(&a, &good).unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let up: api::UploadResponse = r.json().unwrap();
    assert_eq!(up.jobs.len(), 3);
    assert_eq!(up.bundle_id, sha256_hex(&good));

    let mut refusals = Refusals {
        ws: &ws,
        before: trace(&ws),
    };
    let broken = refusals.of_bad_uploads(&a, b.key());
    let replay = refusals.of_replays(&a, broken);

    // Nothing of the refused requests is in the store: only the good bundle and the replay
    // bundle's first (legitimate) upload.
    let mut expected_blobs = vec![sha256_hex(&good), sha256_hex(&replay)];
    expected_blobs.sort();
    assert_eq!(blob_files(&ws), expected_blobs);
    assert_eq!(tmp_files(&ws), 0, "no temporary files left behind");

    // The author sees exactly their own jobs.
    let jobs = a.jobs(None).unwrap();
    assert_eq!(jobs.jobs.len(), 5);
    assert!(b.jobs(None).unwrap().jobs.is_empty());

    same_bundle_again_makes_jobs_only_when_asked(&a, &good, &up);

    // A removed author is refused at once.
    ws.admin(&["author", "remove", "bob"]).unwrap();
    let (rb, _) = b.signed_request(Method::GET, "/api/v1/jobs", Vec::new(), now());
    assert_eq!(
        code_of(rb.send().unwrap()),
        (StatusCode::UNAUTHORIZED, "unknown-author".into())
    );

    // SIGTERM: graceful exit with status 0.
    let code = ws
        .proc
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(20))
        .unwrap();
    assert_eq!(code, Some(0));
}

/// Refused author requests, each checked to leave no trace: after each refusal, not one row
/// (nonce, bundle, submission, job in any state), blob or temporary file more than `before`.
struct Refusals<'a> {
    ws: &'a WebServer,
    before: Trace,
}

impl Refusals<'_> {
    fn refused(&self, case: &str, r: reqwest::blocking::Response, status: StatusCode, code: &str) {
        assert_eq!(code_of(r), (status, code.to_owned()), "{case}");
        assert_eq!(trace(self.ws), self.before, "{case} left a trace");
    }

    /// An upload of `bundle` with the headers of `auth`, sent by a client without them.
    fn upload_with(
        &self,
        auth: &rjs_signer::request::RequestAuth,
        bundle: Vec<u8>,
    ) -> reqwest::blocking::Response {
        let mut rb = self
            .ws
            .anon_client()
            .unwrap()
            .post(self.ws.url("/api/v1/bundles"))
            .body(bundle);
        for (k, v) in auth.headers() {
            rb = rb.header(k, v);
        }
        rb.send().unwrap()
    }

    /// Uploads refused for who signed them or how; returns the invalid bundle from a known
    /// author and the headers of its (refused) upload.
    fn of_bad_uploads(
        &self,
        a: &AuthorClient,
        bob: &rjs_signer::KeyPair,
    ) -> (Vec<u8>, rjs_signer::request::RequestAuth) {
        // Uploading a bundle signed by another author.
        let bobs = make_bundle(bob, "bobs", 2);
        self.refused(
            "another author's bundle",
            upload_raw(a, &bobs).unwrap(),
            StatusCode::FORBIDDEN,
            "signer-mismatch",
        );

        // An unknown author.
        let carol = self.ws.author(rjs_signer::KeyPair::generate()).unwrap();
        let carols = make_bundle(carol.key(), "carols", 1);
        self.refused(
            "unknown author",
            upload_raw(&carol, &carols).unwrap(),
            StatusCode::UNAUTHORIZED,
            "unknown-author",
        );

        // A body changed after signing.
        let other = make_bundle(a.key(), "other", 1);
        let (rb, _) = a.signed_request(Method::POST, "/api/v1/bundles", other.clone(), now());
        let tampered = {
            let mut t = other.clone();
            let n = t.len() / 2;
            t[n] ^= 1;
            t
        };
        self.refused(
            "tampered body",
            rb.body(tampered).send().unwrap(),
            StatusCode::UNAUTHORIZED,
            "body-mismatch",
        );

        // A stale timestamp.
        let (rb, _) =
            a.signed_request(Method::POST, "/api/v1/bundles", other.clone(), now() - 3600);
        self.refused(
            "stale timestamp",
            rb.send().unwrap(),
            StatusCode::UNAUTHORIZED,
            "stale-timestamp",
        );

        // A bad signature (signed for another path).
        let (_, auth) = a.signed_request(
            Method::POST,
            "/api/v1/bundles?resubmit=true",
            other.clone(),
            now(),
        );
        self.refused(
            "bad signature",
            self.upload_with(&auth, other),
            StatusCode::UNAUTHORIZED,
            "bad-signature",
        );

        // An invalid bundle from a known author: its signature and body hash pass, so this is
        // the case that used to leave its nonce behind.
        let mut broken = make_bundle(a.key(), "broken", 1);
        let n = broken.len() - 30;
        broken[n] ^= 0xff;
        let (rb, broken_auth) =
            a.signed_request(Method::POST, "/api/v1/bundles", broken.clone(), now());
        self.refused(
            "invalid bundle",
            rb.send().unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-bundle",
        );
        (broken, broken_auth)
    }

    /// A replayed request: the same signed upload twice. The first is stored; the replay
    /// leaves nothing more. And the refused invalid upload `broken` (sent with `auth`) did not
    /// use up its nonce. Returns the bundle replayed.
    fn of_replays(
        &mut self,
        a: &AuthorClient,
        (broken, auth): (Vec<u8>, rjs_signer::request::RequestAuth),
    ) -> Vec<u8> {
        let replay = make_bundle(a.key(), "replay", 2);
        let (rb, replay_auth) =
            a.signed_request(Method::POST, "/api/v1/bundles", replay.clone(), now());
        let first = rb.send().unwrap();
        assert_eq!(first.status(), StatusCode::CREATED);
        let after_first = trace(self.ws);
        assert_eq!(after_first.rows.nonces, self.before.rows.nonces + 1);
        assert_eq!(after_first.rows.bundles, self.before.rows.bundles + 1);
        assert_eq!(after_first.rows.jobs, self.before.rows.jobs + 2);
        self.before = after_first;
        self.refused(
            "replayed upload",
            self.upload_with(&replay_auth, replay.clone()),
            StatusCode::UNAUTHORIZED,
            "replayed-nonce",
        );
        // The same signed request is refused again for what it is, not as a replay.
        self.refused(
            "invalid bundle sent again",
            self.upload_with(&auth, broken),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-bundle",
        );
        replay
    }
}

/// Uploading the same bundle again does not duplicate jobs, unless asked.
fn same_bundle_again_makes_jobs_only_when_asked(
    a: &AuthorClient,
    good: &[u8],
    first: &api::UploadResponse,
) {
    let r = upload_raw(a, good).unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let again: api::UploadResponse = r.json().unwrap();
    assert!(!again.created);
    assert_eq!(again.jobs, first.jobs);
    let (rb, _) = a.signed_request(
        Method::POST,
        "/api/v1/bundles?resubmit=true",
        good.to_vec(),
        now(),
    );
    let r = rb.send().unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(a.jobs(None).unwrap().jobs.len(), 8);
}

/// One request of the lookup API: method, path, headers, body.
type LookupCall = (Method, String, Vec<(&'static str, &'static str)>, Vec<u8>);

/// Every lookup route, aimed at `job` and `bundle_id`.
fn lookup_calls(job: i64, bundle_id: &str) -> Vec<LookupCall> {
    let json_type = vec![("content-type", "application/json")];
    let mut batch = Vec::new();
    api::encode_answer_record(
        &mut batch,
        &api::AnswerBatchHeader {
            job_id: job,
            outcome: "exit 0".into(),
            node: "n".into(),
            size: 2,
        },
        b"PK",
    )
    .unwrap();
    vec![
        (
            Method::POST,
            "/lookup/v1/lease".into(),
            json_type.clone(),
            json!({"max": 10, "lease_secs": 30}).to_string().into(),
        ),
        (
            Method::POST,
            "/lookup/v1/renew".into(),
            json_type.clone(),
            json!({"job_ids": [job], "lease_secs": 30})
                .to_string()
                .into(),
        ),
        (
            Method::POST,
            "/lookup/v1/release".into(),
            json_type.clone(),
            json!({"job_ids": [job]}).to_string().into(),
        ),
        (
            Method::POST,
            format!("/lookup/v1/jobs/{job}/failure"),
            json_type,
            json!({"reason": "node lost"}).to_string().into(),
        ),
        (
            Method::PUT,
            format!("/lookup/v1/jobs/{job}/answer"),
            vec![(api::H_OUTCOME, "exit 0"), (api::H_NODE, "n")],
            b"PK answer".to_vec(),
        ),
        (
            Method::POST,
            "/lookup/v1/answers".into(),
            vec![("content-type", api::ANSWERS_CONTENT_TYPE)],
            batch,
        ),
        (
            Method::GET,
            format!("/lookup/v1/bundles/{bundle_id}"),
            Vec::new(),
            Vec::new(),
        ),
        (
            Method::GET,
            "/lookup/v1/events".into(),
            Vec::new(),
            Vec::new(),
        ),
    ]
}

fn send_call(
    c: &reqwest::blocking::Client,
    ws: &WebServer,
    (method, path, headers, body): &LookupCall,
) -> reqwest::blocking::Response {
    let mut rb = c.request(method.clone(), ws.url(path)).body(body.clone());
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    rb.send().unwrap()
}

#[test]
fn only_enrolled_unrevoked_lookups_may_lease_fetch_or_post() {
    let (ws, [a], [good, revoked]) = serving(&[], ["alice"], ["lab-1", "lab-2"]);
    let bundle = make_bundle(a.key(), "j", 2);
    assert_eq!(
        upload_raw(&a, &bundle).unwrap().status(),
        StatusCode::CREATED
    );
    let bundle_id = sha256_hex(&bundle);
    let bundle_path = format!("/lookup/v1/bundles/{bundle_id}");

    // lab-2 works until it is revoked, holding one job's lease.
    let rc = ws.lookup_client(&revoked).unwrap();
    assert_eq!(
        rc.get(ws.url(&bundle_path)).send().unwrap().status(),
        StatusCode::OK
    );
    let held = lease_ok(&rc, &ws, 1, 600);
    assert_eq!(held.len(), 1);
    let held = held[0].job_id;
    ws.admin(&["lookup", "revoke", "lab-2"]).unwrap();
    let before = trace(&ws);

    let anon = ws.anon_client().unwrap();
    let other = WebServer::init().unwrap();
    let foreign = other.add_lookup("lab-x").unwrap();
    for call in lookup_calls(held, &bundle_id) {
        let what = format!("{} {}", call.0, call.1);
        // No client certificate: 401.
        assert_eq!(
            code_of(send_call(&anon, &ws, &call)),
            (StatusCode::UNAUTHORIZED, "no-client-certificate".into()),
            "{what}"
        );
        // Revoked (though it holds the job's lease): 403, at once, without a restart.
        assert_eq!(
            code_of(send_call(&rc, &ws, &call)),
            (StatusCode::FORBIDDEN, "revoked-lookup".into()),
            "{what}"
        );
        // A certificate from another CA: the TLS handshake fails; not one byte of HTTP comes
        // back, whatever is sent.
        let mut raw = Raw::connect(&ws, Some(&foreign));
        let mut request = format!(
            "{} {} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {}\r\n",
            call.0,
            call.1,
            call.3.len()
        );
        for (k, v) in &call.2 {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        let _ = raw.send(request.as_bytes()); // may fail: the server drops the connection
        let _ = raw.send(&call.3);
        let (got, end) = raw.read_all();
        assert!(
            got.is_empty(),
            "{what}: a foreign certificate got {:?} ({end})",
            String::from_utf8_lossy(&got)
        );
    }
    // The foreign client is refused by the server's fatal TLS alert after its handshake.
    let (got, end) = Raw::connect(&ws, Some(&foreign)).read_all();
    assert!(
        got.is_empty() && end.contains("received fatal alert"),
        "{end}"
    );

    // Nothing was leased, released, failed or answered by the refused clients.
    assert_eq!(trace(&ws), before);
    assert_eq!(
        counts(&ws),
        vec![
            (JobState::Done, 0),
            (JobState::Failed, 0),
            (JobState::Leased, 1),
            (JobState::Queued, 1)
        ]
    );

    // The enrolled lookup can: lease, fetch (with ETag), post.
    let gc = ws.lookup_client(&good).unwrap();
    let leases = lease_ok(&gc, &ws, 10, 30);
    assert_eq!(leases.len(), 1);
    let r = gc.get(ws.url(&bundle_path)).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let etag = r
        .headers()
        .get("etag")
        .expect("etag")
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(r.bytes().unwrap().as_ref(), &bundle[..]);
    let r = gc
        .get(ws.url(&bundle_path))
        .header("if-none-match", &etag)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let r = post_answer(&gc, &ws, leases[0].job_id, b"answer".to_vec());
    assert_eq!(r.status(), StatusCode::CREATED);
    // …but not for the job the revoked lookup held: not its lease.
    assert_eq!(
        code_of(post_answer(&gc, &ws, held, b"answer".to_vec())),
        (StatusCode::CONFLICT, "not-leased".into())
    );
}

#[test]
fn four_lookups_lease_2000_jobs_exactly_once_expired_leases_return_answers_stored_once() {
    let (ws, [a], creds) = serving(&[], ["alice"], ["lab-0", "lab-1", "lab-2", "lab-3"]);
    let r = upload_raw(&a, &make_bundle(a.key(), "wide", 2000)).unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let ws = Arc::new(ws);
    let taken: Arc<Mutex<Vec<(usize, i64)>>> = Arc::default();
    let threads: Vec<_> = creds
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let client = ws.lookup_client(c).unwrap();
            let (ws, taken) = (ws.clone(), taken.clone());
            std::thread::spawn(move || {
                loop {
                    let leases = lease_ok(&client, &ws, 37, 120);
                    if leases.is_empty() {
                        break;
                    }
                    taken
                        .lock()
                        .unwrap()
                        .extend(leases.iter().map(|l| (i, l.job_id)));
                }
                client
            })
        })
        .collect();
    let clients: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let taken = taken.lock().unwrap().clone();
    let unique: HashSet<i64> = taken.iter().map(|(_, j)| *j).collect();
    assert_eq!(taken.len(), 2000, "every job leased once");
    assert_eq!(unique.len(), 2000, "no job leased twice");
    assert!(
        clients.len() == 4 && (0..4).all(|i| taken.iter().any(|(w, _)| *w == i)),
        "all four lookups took part"
    );

    // Answer all but 10; shorten those 10 leases so they expire and come back.
    let (keep, expire): (Vec<_>, Vec<_>) = taken.iter().partition(|(_, j)| j % 200 != 0);
    assert_eq!(expire.len(), 10);
    for (w, j) in &expire {
        let r = clients[*w]
            .post(ws.url("/lookup/v1/renew"))
            .json(&json!({"job_ids": [j], "lease_secs": 5}))
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let answered: Vec<_> = keep
        .chunks(keep.len() / 4 + 1)
        .map(|chunk| {
            let chunk = chunk.to_vec();
            let clients: Vec<_> = clients.clone();
            let ws = ws.clone();
            std::thread::spawn(move || {
                for (w, j) in chunk {
                    let r = post_answer(&clients[w], &ws, j, format!("answer {j}").into_bytes());
                    assert_eq!(r.status(), StatusCode::CREATED);
                }
            })
        })
        .collect();
    for t in answered {
        t.join().unwrap();
    }
    // A second answer for the same job is acknowledged and discarded.
    let (w, j) = keep[0];
    let r = post_answer(&clients[w], &ws, j, b"a different answer".to_vec());
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<api::AnswerResponse>().unwrap().status, "duplicate");
    let (rb, _) = a.signed_request(
        Method::GET,
        &format!("/api/v1/jobs/{j}/answer"),
        Vec::new(),
        now(),
    );
    assert_eq!(
        rb.send().unwrap().bytes().unwrap().as_ref(),
        format!("answer {j}").as_bytes()
    );

    // The 10 expire (5 s lease) and are leased again, as second attempts.
    std::thread::sleep(Duration::from_secs(7));
    let again = lease_ok(&clients[0], &ws, 100, 60);
    let again_ids: HashSet<i64> = again.iter().map(|l| l.job_id).collect();
    let expire_ids: HashSet<i64> = expire.iter().map(|(_, j)| *j).collect();
    assert_eq!(again_ids, expire_ids);
    assert!(again.iter().all(|l| l.attempt == 2));
    assert_eq!(done_jobs(&a), 1990);
}

#[test]
fn failures_requeue_until_max_attempts_and_events_announce_jobs() {
    let (ws, [a], [creds]) = serving(&["--max-attempts", "2"], ["alice"], ["lab"]);
    let c = ws.lookup_client(&creds).unwrap();

    // Subscribe to events, then upload: a `jobs` event arrives.
    let mut events = reqwest::blocking::Client::builder()
        .use_preconfigured_tls(client_tls_from_files(&ws.ca_pem(), Some(&creds.path)).unwrap())
        .timeout(None)
        .build()
        .unwrap()
        .get(ws.url("/lookup/v1/events"))
        .send()
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    let got_event = Arc::new(AtomicBool::new(false));
    let flag = got_event.clone();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        let mut seen = String::new();
        while let Ok(n) = events.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if seen.contains("event: jobs") && seen.contains("\"queued\"") {
                flag.store(true, Ordering::SeqCst);
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        upload_raw(&a, &make_bundle(a.key(), "flaky", 1))
            .unwrap()
            .status(),
        StatusCode::CREATED
    );
    let start = Instant::now();
    while !got_event.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        got_event.load(Ordering::SeqCst),
        "no `jobs` event within 10 s of an upload"
    );

    // Failure 1: queued again; failure 2: failed with the last reason.
    for (i, reason) in ["node lost", "refused by every node: author untrusted"]
        .iter()
        .enumerate()
    {
        let l = lease_ok(&c, &ws, 1, 30);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].attempt as usize, i + 1);
        let r = c
            .post(ws.url(&format!("/lookup/v1/jobs/{}/failure", l[0].job_id)))
            .json(&json!({"reason": reason}))
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let f: api::FailureResponse = r.json().unwrap();
        assert_eq!(f.attempts as usize, i + 1);
    }
    let jobs = a.jobs(None).unwrap().jobs;
    assert_eq!(jobs[0].state, JobState::Failed);
    assert_eq!(
        jobs[0].reason.as_deref(),
        Some("refused by every node: author untrusted")
    );
    assert!(lease_ok(&c, &ws, 1, 30).is_empty());
    // A failure report for a job this lookup does not hold.
    let r = c
        .post(ws.url("/lookup/v1/jobs/999999/failure"))
        .json(&json!({"reason": "x"}))
        .send()
        .unwrap();
    assert_eq!(code_of(r), (StatusCode::NOT_FOUND, "not-found".into()));
}

/// After a SIGKILL, with the server down: the database is sound, every blob it refers to is
/// there with the right SHA-256, every file in the blob directory is complete (named by its
/// SHA-256); returns how many temporary files the crash left (cleaned at the next start).
fn check_store_after_crash(ws: &WebServer) -> usize {
    let store = store_of(ws);
    assert_eq!(store.integrity_check().unwrap(), vec!["ok".to_owned()]);
    let on_disk = blob_files(ws);
    for name in &on_disk {
        let p = ws
            .data()
            .join("blobs")
            .join("blobs")
            .join(&name[..2])
            .join(name);
        assert_eq!(
            sha256_hex(&std::fs::read(&p).unwrap()),
            *name,
            "blob {name} is complete"
        );
    }
    for name in store.blob_names().unwrap() {
        assert!(
            on_disk.binary_search(&name).is_ok(),
            "recorded blob {name} is missing"
        );
    }
    tmp_files(ws)
}

/// After a restart: waits for the leases taken before the kill to expire (`lease_secs` 5),
/// leases everything not done and checks that every job is now done or leased again, and
/// that every job in `held` (leased, not acknowledged as answered, when the server died) is
/// among them.
fn leases_come_back(
    ws: &WebServer,
    author: &AuthorClient,
    c: &reqwest::blocking::Client,
    held: &HashSet<i64>,
) {
    std::thread::sleep(Duration::from_secs(7));
    let mut again = HashSet::new();
    loop {
        let l = lease_ok(c, ws, 500, 600);
        if l.is_empty() {
            break;
        }
        again.extend(l.iter().map(|l| l.job_id));
    }
    let jobs = author.jobs(None).unwrap().jobs;
    for j in &jobs {
        match j.state {
            JobState::Done => assert!(!again.contains(&j.id)),
            JobState::Leased => assert!(again.contains(&j.id), "job {} lost", j.id),
            s => panic!("job {} is {} after every lease expired", j.id, s.as_str()),
        }
    }
    for job in held {
        let j = jobs
            .iter()
            .find(|j| j.id == *job)
            .expect("a leased job exists");
        assert!(
            j.state == JobState::Done || again.contains(job),
            "job {job}, leased at the kill, did not come back"
        );
    }
    eprintln!(
        "{} job(s) leased at the kill, {} of them leased again after expiry",
        held.len(),
        held.iter().filter(|j| again.contains(j)).count()
    );
}

/// An answer sent: job id and bytes.
type Answer = (i64, Vec<u8>);

/// What the load threads of a SIGKILL test share: the author and lookup clients, the stop
/// flag, the answers acknowledged and the jobs held.
#[derive(Clone)]
struct Load {
    author: Arc<AuthorClient>,
    lookup: reqwest::blocking::Client,
    /// `https://ADDR`.
    url: String,
    stop: Arc<AtomicBool>,
    /// Answers the server acknowledged as stored, with what was sent.
    acked: Arc<Mutex<Vec<Answer>>>,
    /// Jobs leased and not (yet) acknowledged as answered.
    held: Arc<Mutex<HashSet<i64>>>,
}

impl Load {
    /// Runs `round` in a thread again and again until the test stops the load or `round`
    /// returns false (the server is gone).
    fn spawn(
        &self,
        mut round: impl FnMut(&Load) -> bool + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        let load = self.clone();
        std::thread::spawn(move || while !load.stop.load(Ordering::SeqCst) && round(&load) {})
    }

    /// Leases up to `max` jobs for 5 s and adds them to the held jobs; None once the server is
    /// gone.
    fn lease(&self, max: u32) -> Option<Vec<api::Lease>> {
        let r = self
            .lookup
            .post(format!("{}/lookup/v1/lease", self.url))
            .json(&json!({"max": max, "lease_secs": 5}))
            .send()
            .ok()?;
        let leases = r.json::<api::LeaseResponse>().ok()?.leases;
        let mut held = self.held.lock().unwrap();
        held.extend(leases.iter().map(|l| l.job_id));
        Some(leases)
    }

    /// Records answers the server acknowledged: no longer held, to be found after the kill.
    fn acknowledged(&self, answers: Vec<Answer>) {
        let mut held = self.held.lock().unwrap();
        for (job, _) in &answers {
            held.remove(job);
        }
        self.acked.lock().unwrap().extend(answers);
    }
}

/// The `n`th answer a load thread sends, for job `job`: starting `answer for JOB `, 4 KiB
/// (small: kept inline), or `big` bytes (for the blob store) every `big_every`th answer.
fn answer_body(job: i64, n: usize, big_every: usize, big: usize) -> Vec<u8> {
    let len = if n.is_multiple_of(big_every) {
        big
    } else {
        4096
    };
    let mut body = format!("answer for {job} ").into_bytes();
    body.resize(len, b'x');
    body
}

/// A SIGKILL test: a web server (started with `extra_args`) with the author alice and the
/// lookup lab, and the load run against it.
struct CrashRig {
    ws: WebServer,
    addr: String,
    load: Load,
}

impl CrashRig {
    fn start(extra_args: &[&str]) -> CrashRig {
        let (ws, [author], [creds]) = serving(extra_args, ["alice"], ["lab"]);
        let addr = ws.addr.clone();
        let load = Load {
            author: Arc::new(author),
            lookup: ws.lookup_client(&creds).unwrap(),
            url: format!("https://{addr}"),
            stop: Arc::default(),
            acked: Arc::default(),
            held: Arc::default(),
        };
        CrashRig { ws, addr, load }
    }

    fn author(&self) -> &AuthorClient {
        &self.load.author
    }

    /// SIGKILLs the server, stops the load and waits for its threads; returns the answers
    /// acknowledged and the jobs held at the kill.
    fn kill(&mut self, threads: Vec<std::thread::JoinHandle<()>>) -> (Vec<Answer>, HashSet<i64>) {
        self.ws.kill9();
        self.load.stop.store(true, Ordering::SeqCst);
        for t in threads {
            t.join().unwrap();
        }
        let acked = self.load.acked.lock().unwrap().clone();
        let held = self.load.held.lock().unwrap().clone();
        (acked, held)
    }

    /// Checks the store as the kill left it ([`check_store_after_crash`]), then restarts the
    /// server on the same data and address: the temporary files are cleaned at start-up.
    /// Returns how many the kill left.
    fn check_and_restart(&mut self) -> usize {
        let leftovers = check_store_after_crash(&self.ws);
        self.ws.addr = self.addr.clone();
        self.ws.start().unwrap();
        assert_eq!(
            tmp_files(&self.ws),
            0,
            "half-written files are cleaned at start-up"
        );
        leftovers
    }

    /// Every acknowledged answer is there, intact.
    fn assert_answers_kept(&self, acked: &[Answer]) {
        for (job, body) in acked {
            let r = get_answer(self.author(), *job);
            assert_eq!(
                r.status(),
                StatusCode::OK,
                "acknowledged answer for job {job} lost"
            );
            assert!(
                r.bytes().unwrap()[..] == body[..],
                "answer for job {job} intact"
            );
        }
    }

    /// See [`leases_come_back`].
    fn leases_come_back(&self, held: &HashSet<i64>) {
        leases_come_back(&self.ws, self.author(), &self.load.lookup, held);
    }
}

/// The author's request for the answer of `job`.
fn get_answer(a: &AuthorClient, job: i64) -> reqwest::blocking::Response {
    let (rb, _) = a.signed_request(
        Method::GET,
        &format!("/api/v1/jobs/{job}/answer"),
        Vec::new(),
        now(),
    );
    rb.send().unwrap()
}

/// Waits (up to 5 s) until an upload is being written (a temporary file with data in it).
fn wait_for_an_upload_being_written(ws: &WebServer) {
    let writing = || {
        std::fs::read_dir(ws.data().join("blobs").join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.metadata().is_ok_and(|m| m.len() > 0))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !writing() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[test]
fn sigkill_during_uploads_and_answers_loses_nothing_acknowledged() {
    // Leases left to expire come back again and again: no job may fail for that here.
    let mut rig = CrashRig::start(&["--max-attempts", "1000"]);
    let acked_uploads: Arc<Mutex<Vec<String>>> = Arc::default();
    const TASKS: u32 = 20;
    // Two uploaders, so that an upload is nearly always being received when the kill comes.
    let mut threads: Vec<_> = (0..2)
        .map(|_| {
            let acked = acked_uploads.clone();
            rig.load.spawn(move |load| {
                // A few MiB of incompressible data: the kill can land mid-write.
                let b = big_bundle(load.author.key(), "crash", TASKS, 3 * 1024 * 1024);
                match upload_raw(&load.author, &b) {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        acked.lock().unwrap().push(sha256_hex(&b));
                        true
                    }
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => false,
                }
            })
        })
        .collect();
    let mut n = 0usize;
    threads.push(rig.load.spawn(move |load| {
        let Some(leases) = load.lease(5) else {
            return false;
        };
        for l in leases {
            if l.job_id % 5 == 0 {
                continue; // kept leased, unanswered: it must come back after the kill
            }
            n += 1;
            // Small answers (kept in the database) and, now and then, one for the blob store.
            let body = answer_body(l.job_id, n, 3, 600 * 1024);
            match load
                .lookup
                .put(format!("{}/lookup/v1/jobs/{}/answer", load.url, l.job_id))
                .header(api::H_OUTCOME, "exit 0")
                .header(api::H_NODE, "n")
                .body(body.clone())
                .send()
            {
                Ok(r) if r.status() == StatusCode::CREATED => {
                    load.acknowledged(vec![(l.job_id, body)])
                }
                Ok(r) => panic!("unexpected status {}", r.status()),
                Err(_) => return false,
            }
        }
        true
    }));
    // After 2 s of load, kill the server the moment an upload is being written, so that the
    // kill lands mid-write.
    std::thread::sleep(Duration::from_millis(2000));
    wait_for_an_upload_being_written(&rig.ws);
    let (acked_answers, held) = rig.kill(threads);
    let acked_uploads = acked_uploads.lock().unwrap().clone();
    assert!(
        acked_uploads.len() >= 3,
        "the load ran ({} uploads acknowledged)",
        acked_uploads.len()
    );
    assert!(!acked_answers.is_empty(), "the load ran (answers)");

    // Down: the database and the blob store are consistent as the kill left them; restart on
    // the same data: temporary files are cleaned at start.
    let leftovers = rig.check_and_restart();
    eprintln!(
        "{} uploads and {} answers acknowledged; the kill left {leftovers} temporary file(s)",
        acked_uploads.len(),
        acked_answers.len()
    );
    let jobs = rig.author().jobs(None).unwrap().jobs;
    let bundles: HashSet<&str> = jobs.iter().map(|j| j.bundle_id.as_str()).collect();
    for id in &acked_uploads {
        assert!(
            bundles.contains(id.as_str()),
            "acknowledged upload {id} lost"
        );
    }
    rig.assert_answers_kept(&acked_answers);
    // No job lost: each recorded bundle has its jobs; those leased at the kill come back.
    assert_eq!(jobs.len(), TASKS as usize * bundles.len());
    rig.leases_come_back(&held);
}

#[test]
fn sigkill_during_answer_batches_loses_nothing_acknowledged() {
    let mut rig = CrashRig::start(&[]);
    let a = rig.author();
    assert_eq!(
        upload_raw(a, &make_bundle(a.key(), "many", 20_000))
            .unwrap()
            .status(),
        StatusCode::CREATED
    );
    let mut n = 0usize;
    let poster = rig.load.spawn(move |load| {
        let Some(leases) = load.lease(16) else {
            return false;
        };
        let mut body = Vec::new();
        let mut answers = Vec::new();
        for l in leases {
            n += 1;
            // Mostly small answers (kept inline), now and then one for the blob store.
            let bytes = answer_body(l.job_id, n, 16, 300 * 1024);
            let h = api::AnswerBatchHeader {
                job_id: l.job_id,
                outcome: "exit 0".into(),
                node: "n".into(),
                size: bytes.len() as u64,
            };
            api::encode_answer_record(&mut body, &h, &bytes).unwrap();
            answers.push((l.job_id, bytes));
        }
        let r = match load
            .lookup
            .post(format!("{}/lookup/v1/answers", load.url))
            .header("content-type", api::ANSWERS_CONTENT_TYPE)
            .body(body)
            .send()
        {
            Ok(r) => r,
            Err(_) => return false,
        };
        assert_eq!(r.status(), StatusCode::OK);
        let Ok(res) = r.json::<api::AnswerBatchResponse>() else {
            return false; // killed while sending the response
        };
        assert!(
            res.results
                .iter()
                .all(|r| r.status == api::AnswerBatchStatus::Stored)
        );
        load.acknowledged(answers);
        true
    });
    std::thread::sleep(Duration::from_millis(2500));
    let (acked, held) = rig.kill(vec![poster]);
    assert!(acked.len() >= 32, "the load ran ({} answers)", acked.len());

    let leftovers = rig.check_and_restart();
    eprintln!("the kill left {leftovers} temporary file(s)");
    let done = done_jobs(rig.author());
    assert!(
        done >= acked.len(),
        "{done} done, {} acknowledged",
        acked.len()
    );
    rig.assert_answers_kept(&acked);
    rig.leases_come_back(&held);
}

#[test]
fn init_from_the_command_line_makes_a_private_directory_and_prints_nothing_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let init = || {
        std::process::Command::new(bin("rjs-webserver"))
            .arg("init")
            .arg("--data")
            .arg(&data)
            .args(["--host", "example.test", "--host", "127.0.0.1"])
            .output()
            .unwrap()
    };
    let out = init();
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    let mode = rjs_harness::paths::mode;
    assert_eq!(mode(&data), 0o700);
    for key in ["ca-key.pem", "server-key.pem"] {
        assert_eq!(mode(&data.join(key)), 0o600, "{key}");
    }
    // It names the file to hand out, and says nothing secret.
    let ca = data.join("ca.pem");
    assert!(ca.is_file());
    assert!(stdout.contains(&ca.display().to_string()), "{stdout}");
    assert!(stdout.contains("example.test"), "{stdout}");
    for text in [&stdout, &stderr] {
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        for key in ["ca-key.pem", "server-key.pem"] {
            let pem = std::fs::read_to_string(data.join(key)).unwrap();
            for line in pem
                .lines()
                .filter(|l| !l.starts_with("-----") && l.len() > 16)
            {
                assert!(!text.contains(line), "{key} material printed");
            }
        }
    }
    let ca_bytes = std::fs::read(&ca).unwrap();
    let key_bytes = std::fs::read(data.join("ca-key.pem")).unwrap();

    // A second init refuses and changes nothing.
    let again = init();
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already holds a web server CA"), "{err}");
    assert_eq!(std::fs::read(&ca).unwrap(), ca_bytes);
    assert_eq!(std::fs::read(data.join("ca-key.pem")).unwrap(), key_bytes);

    // The certificate is for the hosts given (and only them: not the default localhost).
    let mut ws = WebServer {
        dir: tmp,
        proc: None,
        addr: String::new(),
        extra_args: Vec::new(),
        env: Vec::new(),
    };
    ws.start().unwrap();
    let mut raw = Raw::connect_as(&ws, None, "example.test").unwrap();
    raw.send(b"GET /healthz HTTP/1.1\r\nhost: example.test\r\n\r\n")
        .unwrap();
    assert_eq!(raw.response(), (200, b"ok".to_vec()));
    assert!(Raw::connect_as(&ws, None, "localhost").is_err());
    assert_eq!(
        ws.anon_client()
            .unwrap()
            .get(ws.url("/healthz"))
            .send()
            .unwrap()
            .status(),
        StatusCode::OK,
        "127.0.0.1"
    );
}

#[test]
fn authors_never_see_each_others_jobs_or_answers() {
    let (ws, [a, b], [creds]) = serving(&[], ["alice", "bob"], ["lab"]);
    let mut ids = Vec::new();
    for (who, name) in [(&a, "alices"), (&b, "bobs")] {
        let r = upload_raw(who, &make_bundle(who.key(), name, 2)).unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        ids.push(r.json::<api::UploadResponse>().unwrap());
    }
    let c = ws.lookup_client(&creds).unwrap();
    for l in lease_ok(&c, &ws, 10, 60) {
        let r = post_answer(&c, &ws, l.job_id, format!("answer {}", l.job_id).into());
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let get = |who: &AuthorClient, path: &str| {
        let (rb, _) = who.signed_request(Method::GET, path, Vec::new(), now());
        rb.send().unwrap()
    };
    for (me, mine, theirs) in [(&a, &ids[0], &ids[1]), (&b, &ids[1], &ids[0])] {
        // Filtering by the other's bundle shows nothing of it.
        let r = get(me, &format!("/api/v1/jobs?bundle={}", theirs.bundle_id));
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.json::<api::JobList>().unwrap().jobs.is_empty());
        // The full list holds only my jobs.
        let all: Vec<i64> = get(me, "/api/v1/jobs")
            .json::<api::JobList>()
            .unwrap()
            .jobs
            .iter()
            .map(|j| j.id)
            .collect();
        let want: Vec<i64> = mine.jobs.iter().map(|j| j.id).collect();
        assert_eq!(all, want);
        // My answers I get; the other's answers are 404, exactly as a job that does not
        // exist.
        for j in &mine.jobs {
            let r = get(me, &format!("/api/v1/jobs/{}/answer", j.id));
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.bytes().unwrap(), format!("answer {}", j.id).as_bytes());
        }
        for j in &theirs.jobs {
            assert_eq!(
                code_of(get(me, &format!("/api/v1/jobs/{}/answer", j.id))),
                (StatusCode::NOT_FOUND, "not-found".into())
            );
        }
        assert_eq!(
            code_of(get(me, "/api/v1/jobs/999999/answer")),
            (StatusCode::NOT_FOUND, "not-found".into())
        );
    }
}

#[test]
fn sigint_and_sigterm_stop_the_server_gracefully() {
    let (mut ws, [a], [creds]) = serving(&[], ["alice"], ["lab"]);

    // SIGINT with an event stream open: the stream ends, the process exits 0.
    let mut events = Raw::connect(&ws, Some(&creds));
    events
        .send(b"GET /lookup/v1/events HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .unwrap();
    assert_eq!(events.response().0, 200);
    signal(&ws, "INT");
    assert_eq!(exit_code(&mut ws, 20), Some(0));
    events.read_all(); // returns: the stream was ended, not left hanging

    // SIGTERM while an upload is on its way: it completes, then the process exits 0.
    ws.addr = String::new();
    ws.start().unwrap();
    let bundle = big_bundle(a.key(), "slow", 1, 3 * 1024 * 1024);
    let auth = rjs_signer::request::RequestAuth::sign(
        a.key(),
        a.audience(),
        "POST",
        "/api/v1/bundles",
        &sha256_hex(&bundle),
        now(),
    );
    let mut up = Raw::connect(&ws, None);
    let mut head = format!(
        "POST /api/v1/bundles HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n",
        bundle.len()
    );
    for (k, v) in auth.headers() {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    up.send(head.as_bytes()).unwrap();
    let (start, rest) = bundle.split_at(512 * 1024);
    up.send(start).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    signal(&ws, "TERM");
    // The rest arrives slowly, over about a second after the signal.
    for piece in rest.chunks(256 * 1024) {
        std::thread::sleep(Duration::from_millis(100));
        up.send(piece).unwrap();
    }
    let (status, body) = up.response();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let r: api::UploadResponse = serde_json::from_slice(&body).unwrap();
    assert_eq!(r.bundle_id, sha256_hex(&bundle));
    assert_eq!(exit_code(&mut ws, 20), Some(0));
    // What was acknowledged is stored.
    let store = store_of(&ws);
    assert!(store.bundle_exists(&r.bundle_id).unwrap());
    assert_eq!(store.integrity_check().unwrap(), vec!["ok".to_owned()]);
    assert_eq!(tmp_files(&ws), 0);
}
