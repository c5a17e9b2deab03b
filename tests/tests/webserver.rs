//! The web server through its real binary, real TLS on loopback.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::StatusCode;
use rjs_e2e::*;
use rjs_webserver::store::Store;
use rjs_wire::api::{self, JobState};
use serde_json::{Value, json};

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
    let mut ws = WebServer::init().unwrap();
    let alice = ws.add_author("alice").unwrap();
    let bob = ws.add_author("bob").unwrap();
    ws.start().unwrap();
    let a = Author::new(&ws, alice).unwrap();

    // A valid upload first, so that "no trace" means "nothing beyond this".
    let good = make_bundle(&a.key, "good", 3);
    let r = a.upload(&good).unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let up: api::UploadResponse = r.json().unwrap();
    assert_eq!(up.jobs.len(), 3);
    assert_eq!(up.bundle_id, sha256_hex(&good));
    let before_counts = counts(&ws);
    let before_blobs = blob_files(&ws);

    // Uploading a bundle signed by another author.
    let bobs = make_bundle(&bob, "bobs", 2);
    assert_eq!(
        code_of(a.upload(&bobs).unwrap()),
        (StatusCode::FORBIDDEN, "signer-mismatch".into())
    );

    // An unknown author.
    let carol = Author::new(&ws, rjs_signer::KeyPair::generate()).unwrap();
    let carols = make_bundle(&carol.key, "carols", 1);
    assert_eq!(
        code_of(carol.upload(&carols).unwrap()),
        (StatusCode::UNAUTHORIZED, "unknown-author".into())
    );

    // A body changed after signing.
    let other = make_bundle(&a.key, "other", 1);
    let (rb, _) = a.signed(Method::POST, "/api/v1/bundles", other.clone(), now());
    let tampered = {
        let mut t = other.clone();
        let n = t.len() / 2;
        t[n] ^= 1;
        t
    };
    assert_eq!(
        code_of(rb.body(tampered).send().unwrap()),
        (StatusCode::UNAUTHORIZED, "body-mismatch".into())
    );

    // A stale timestamp.
    let (rb, _) = a.signed(Method::POST, "/api/v1/bundles", other.clone(), now() - 3600);
    assert_eq!(
        code_of(rb.send().unwrap()),
        (StatusCode::UNAUTHORIZED, "stale-timestamp".into())
    );

    // A bad signature (signed for another path).
    let (rb, auth) = a.signed(
        Method::POST,
        "/api/v1/bundles?resubmit=true",
        other.clone(),
        now(),
    );
    let mut rb2 = a.client.post(ws.url("/api/v1/bundles")).body(other.clone());
    for (k, v) in auth.headers() {
        rb2 = rb2.header(k, v);
    }
    drop(rb);
    assert_eq!(
        code_of(rb2.send().unwrap()),
        (StatusCode::UNAUTHORIZED, "bad-signature".into())
    );

    // A replayed request: the same signed upload twice.
    let replay = make_bundle(&a.key, "replay", 2);
    let (rb, auth) = a.signed(Method::POST, "/api/v1/bundles", replay.clone(), now());
    let first = rb.send().unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let mut again = a
        .client
        .post(ws.url("/api/v1/bundles"))
        .body(replay.clone());
    for (k, v) in auth.headers() {
        again = again.header(k, v);
    }
    assert_eq!(
        code_of(again.send().unwrap()),
        (StatusCode::UNAUTHORIZED, "replayed-nonce".into())
    );

    // An invalid bundle from a known author.
    let mut broken = make_bundle(&a.key, "broken", 1);
    let n = broken.len() - 30;
    broken[n] ^= 0xff;
    let (status, code) = code_of(a.upload(&broken).unwrap());
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid-bundle")
    );

    // Nothing of the refused requests is in the store: only the good bundle and the replay
    // bundle's first (legitimate) upload.
    let after = counts(&ws);
    let queued = |c: &[(JobState, u64)]| {
        c.iter()
            .find(|(s, _)| *s == JobState::Queued)
            .map_or(0, |x| x.1)
    };
    assert_eq!(queued(&after), queued(&before_counts) + 2);
    let mut expected_blobs = before_blobs.clone();
    expected_blobs.push(sha256_hex(&replay));
    expected_blobs.sort();
    assert_eq!(blob_files(&ws), expected_blobs);
    assert_eq!(tmp_files(&ws), 0, "no temporary files left behind");

    // The author sees exactly their own jobs.
    let jobs = a.jobs().unwrap();
    assert_eq!(jobs.jobs.len(), 5);
    let b = Author::new(&ws, bob).unwrap();
    assert!(b.jobs().unwrap().jobs.is_empty());

    // Uploading the same bundle again does not duplicate jobs, unless asked.
    let r = a.upload(&good).unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let again: api::UploadResponse = r.json().unwrap();
    assert!(!again.created);
    assert_eq!(again.jobs, up.jobs);
    let (rb, _) = a.signed(
        Method::POST,
        "/api/v1/bundles?resubmit=true",
        good.clone(),
        now(),
    );
    let r = rb.send().unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(a.jobs().unwrap().jobs.len(), 8);

    // A removed author is refused at once.
    ws.admin(&["author", "remove", "bob"]).unwrap();
    let (rb, _) = b.signed(Method::GET, "/api/v1/jobs", Vec::new(), now());
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

#[test]
fn only_enrolled_unrevoked_lookups_may_lease_fetch_or_post() {
    let mut ws = WebServer::init().unwrap();
    let alice = ws.add_author("alice").unwrap();
    let good = ws.add_lookup("lab-1").unwrap();
    let revoked = ws.add_lookup("lab-2").unwrap();
    ws.start().unwrap();
    let a = Author::new(&ws, alice).unwrap();
    let bundle = make_bundle(&a.key, "j", 2);
    assert_eq!(a.upload(&bundle).unwrap().status(), StatusCode::CREATED);
    let bundle_path = format!("/lookup/v1/bundles/{}", sha256_hex(&bundle));

    // No client certificate.
    let anon = ws.anon_client().unwrap();
    assert_eq!(
        code_of(lease(&anon, &ws, 1, 30)).0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        anon.get(ws.url(&bundle_path)).send().unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post_answer(&anon, &ws, 1, b"x".to_vec()).status(),
        StatusCode::UNAUTHORIZED
    );

    // A certificate from another CA: the TLS handshake (or the first read) fails.
    let other = WebServer::init().unwrap();
    let foreign = other.add_lookup("lab-x").unwrap();
    let foreign_client = client(&ws.ca_pem(), Some(&foreign.path)).unwrap();
    let r = foreign_client
        .post(ws.url("/lookup/v1/lease"))
        .json(&json!({"max": 1, "lease_secs": 30}))
        .send();
    assert!(
        r.is_err() || !r.unwrap().status().is_success(),
        "a foreign certificate must not lease"
    );
    let r = foreign_client.get(ws.url(&bundle_path)).send();
    assert!(r.is_err() || !r.unwrap().status().is_success());

    // A revoked certificate: works, then is refused at once after `lookup revoke`.
    let rc = ws.lookup_client(&revoked).unwrap();
    assert_eq!(
        rc.get(ws.url(&bundle_path)).send().unwrap().status(),
        StatusCode::OK
    );
    ws.admin(&["lookup", "revoke", "lab-2"]).unwrap();
    assert_eq!(
        code_of(lease(&rc, &ws, 1, 30)),
        (StatusCode::FORBIDDEN, "revoked-lookup".into())
    );
    assert_eq!(
        rc.get(ws.url(&bundle_path)).send().unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post_answer(&rc, &ws, 1, b"x".to_vec()).status(),
        StatusCode::FORBIDDEN
    );

    // Nothing was leased or answered by the refused clients.
    assert!(
        counts(&ws)
            .iter()
            .all(|(s, n)| *s == JobState::Queued || *n == 0)
    );

    // The enrolled lookup can: lease, fetch (with ETag), post.
    let gc = ws.lookup_client(&good).unwrap();
    let leases = lease_ok(&gc, &ws, 10, 30);
    assert_eq!(leases.len(), 2);
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
}

#[test]
fn four_lookups_lease_2000_jobs_exactly_once_expired_leases_return_answers_stored_once() {
    let mut ws = WebServer::init().unwrap();
    let alice = ws.add_author("alice").unwrap();
    let creds: Vec<_> = (0..4)
        .map(|i| ws.add_lookup(&format!("lab-{i}")).unwrap())
        .collect();
    ws.start().unwrap();
    let a = Author::new(&ws, alice).unwrap();
    let r = a.upload(&make_bundle(&a.key, "wide", 2000)).unwrap();
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
    let (rb, _) = a.signed(
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
    let done = a
        .jobs()
        .unwrap()
        .jobs
        .iter()
        .filter(|j| j.state == JobState::Done)
        .count();
    assert_eq!(done, 1990);
}

#[test]
fn failures_requeue_until_max_attempts_and_events_announce_jobs() {
    let mut ws = WebServer::init().unwrap();
    ws.extra_args = vec!["--max-attempts".into(), "2".into()];
    let alice = ws.add_author("alice").unwrap();
    let creds = ws.add_lookup("lab").unwrap();
    ws.start().unwrap();
    let a = Author::new(&ws, alice).unwrap();
    let c = ws.lookup_client(&creds).unwrap();

    // Subscribe to events, then upload: a `jobs` event arrives.
    let mut events = reqwest::blocking::Client::builder()
        .use_preconfigured_tls({
            let ca = rjs_wire::tls::load_certs(&ws.ca_pem()).unwrap();
            let pem = std::fs::read(&creds.path).unwrap();
            let certs: Vec<_> = rjs_wire::tls::certs_from_pem(&pem, "c")
                .unwrap()
                .into_iter()
                .filter(|x| !ca.contains(x))
                .collect();
            rjs_wire::tls::client_config(
                &ca,
                Some((certs, rjs_wire::tls::key_from_pem(&pem, "c").unwrap())),
            )
            .unwrap()
        })
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
        a.upload(&make_bundle(&a.key, "flaky", 1)).unwrap().status(),
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
    let jobs = a.jobs().unwrap().jobs;
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
    assert!(r.status() == StatusCode::CONFLICT || r.status() == StatusCode::NOT_FOUND);
}

#[test]
fn sigkill_during_uploads_and_answers_loses_nothing_acknowledged() {
    let mut ws = WebServer::init().unwrap();
    let alice = ws.add_author("alice").unwrap();
    let creds = ws.add_lookup("lab").unwrap();
    ws.start().unwrap();
    let addr = ws.addr.clone();
    let a = Arc::new(Author::new(&ws, alice).unwrap());
    let c = ws.lookup_client(&creds).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let acked_uploads: Arc<Mutex<Vec<String>>> = Arc::default();
    type Acked = Arc<Mutex<Vec<(i64, Vec<u8>)>>>;
    let acked_answers: Acked = Arc::default();
    let uploader = {
        let (a, stop, acked) = (a.clone(), stop.clone(), acked_uploads.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let b = make_bundle(&a.key, "crash", 1);
                match a.upload(&b) {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        acked.lock().unwrap().push(sha256_hex(&b))
                    }
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => break,
                }
            }
        })
    };
    let answerer = {
        let (stop, acked, ws_url) = (
            stop.clone(),
            acked_answers.clone(),
            format!("https://{addr}"),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok(r) = c
                    .post(format!("{ws_url}/lookup/v1/lease"))
                    .json(&json!({"max": 5, "lease_secs": 60}))
                    .send()
                else {
                    break;
                };
                let Ok(leases) = r.json::<api::LeaseResponse>() else {
                    break;
                };
                for l in leases.leases {
                    let body = format!("answer for {} {}", l.job_id, "x".repeat(4096)).into_bytes();
                    match c
                        .put(format!("{ws_url}/lookup/v1/jobs/{}/answer", l.job_id))
                        .header(api::H_OUTCOME, "exit 0")
                        .header(api::H_NODE, "n")
                        .body(body.clone())
                        .send()
                    {
                        Ok(r) if r.status() == StatusCode::CREATED => {
                            acked.lock().unwrap().push((l.job_id, body))
                        }
                        Ok(r) => panic!("unexpected status {}", r.status()),
                        Err(_) => return,
                    }
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(2500));
    ws.kill9();
    stop.store(true, Ordering::SeqCst);
    uploader.join().unwrap();
    answerer.join().unwrap();
    let acked_uploads = acked_uploads.lock().unwrap().clone();
    let acked_answers = acked_answers.lock().unwrap().clone();
    assert!(
        acked_uploads.len() >= 5,
        "the load ran ({} uploads acknowledged)",
        acked_uploads.len()
    );
    assert!(!acked_answers.is_empty(), "the load ran (answers)");

    // Restart on the same data.
    ws.addr = addr;
    ws.start().unwrap();
    assert_eq!(
        tmp_files(&ws),
        0,
        "half-written files are cleaned at start-up"
    );
    for name in blob_files(&ws) {
        let p = ws
            .data()
            .join("blobs")
            .join("blobs")
            .join(&name[..2])
            .join(&name);
        assert_eq!(
            sha256_hex(&std::fs::read(&p).unwrap()),
            name,
            "blob {name} is complete"
        );
    }
    let jobs = a.jobs().unwrap().jobs;
    let bundles: HashSet<&str> = jobs.iter().map(|j| j.bundle_id.as_str()).collect();
    for id in &acked_uploads {
        assert!(
            bundles.contains(id.as_str()),
            "acknowledged upload {id} lost"
        );
    }
    for (job, body) in &acked_answers {
        let (rb, _) = a.signed(
            Method::GET,
            &format!("/api/v1/jobs/{job}/answer"),
            Vec::new(),
            now(),
        );
        let r = rb.send().unwrap();
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "acknowledged answer for job {job} lost"
        );
        assert_eq!(&r.bytes().unwrap()[..], &body[..]);
    }
    // No job lost: each recorded bundle has its job, in a sane state.
    assert_eq!(jobs.len(), bundles.len());
}

#[test]
fn sigkill_during_answer_batches_loses_nothing_acknowledged() {
    let mut ws = WebServer::init().unwrap();
    let alice = ws.add_author("alice").unwrap();
    let creds = ws.add_lookup("lab").unwrap();
    ws.start().unwrap();
    let addr = ws.addr.clone();
    let a = Author::new(&ws, alice).unwrap();
    assert_eq!(
        a.upload(&make_bundle(&a.key, "many", 20_000))
            .unwrap()
            .status(),
        StatusCode::CREATED
    );
    let c = ws.lookup_client(&creds).unwrap();

    type Acked = Arc<Mutex<Vec<(i64, Vec<u8>)>>>;
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let poster = {
        let (stop, acked, url) = (stop.clone(), acked.clone(), format!("https://{addr}"));
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let Ok(r) = c
                    .post(format!("{url}/lookup/v1/lease"))
                    .json(&json!({"max": 16, "lease_secs": 600}))
                    .send()
                else {
                    return;
                };
                let Ok(leases) = r.json::<api::LeaseResponse>() else {
                    return;
                };
                let mut body = Vec::new();
                let mut answers = Vec::new();
                for l in leases.leases {
                    n += 1;
                    // Mostly small answers (kept inline), now and then one for the blob store.
                    let len = if n.is_multiple_of(16) {
                        300 * 1024
                    } else {
                        4096
                    };
                    let mut bytes = format!("answer for {} ", l.job_id).into_bytes();
                    bytes.resize(len, b'x');
                    let h = api::AnswerBatchHeader {
                        job_id: l.job_id,
                        outcome: "exit 0".into(),
                        node: "n".into(),
                        size: bytes.len() as u64,
                    };
                    api::encode_answer_record(&mut body, &h, &bytes).unwrap();
                    answers.push((l.job_id, bytes));
                }
                let r = match c
                    .post(format!("{url}/lookup/v1/answers"))
                    .header("content-type", api::ANSWERS_CONTENT_TYPE)
                    .body(body)
                    .send()
                {
                    Ok(r) => r,
                    Err(_) => return,
                };
                assert_eq!(r.status(), StatusCode::OK);
                let Ok(res) = r.json::<api::AnswerBatchResponse>() else {
                    return; // killed while sending the response
                };
                assert!(
                    res.results
                        .iter()
                        .all(|r| r.status == api::AnswerBatchStatus::Stored)
                );
                acked.lock().unwrap().extend(answers);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(2500));
    ws.kill9();
    stop.store(true, Ordering::SeqCst);
    poster.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 32, "the load ran ({} answers)", acked.len());

    ws.addr = addr;
    ws.start().unwrap();
    assert_eq!(
        tmp_files(&ws),
        0,
        "half-written files are cleaned at start-up"
    );
    for name in blob_files(&ws) {
        let p = ws
            .data()
            .join("blobs")
            .join("blobs")
            .join(&name[..2])
            .join(&name);
        assert_eq!(
            sha256_hex(&std::fs::read(&p).unwrap()),
            name,
            "blob {name} is complete"
        );
    }
    let done = a
        .jobs()
        .unwrap()
        .jobs
        .iter()
        .filter(|j| j.state == JobState::Done)
        .count();
    assert!(
        done >= acked.len(),
        "{done} done, {} acknowledged",
        acked.len()
    );
    for (job, body) in &acked {
        let (rb, _) = a.signed(
            Method::GET,
            &format!("/api/v1/jobs/{job}/answer"),
            Vec::new(),
            now(),
        );
        let r = rb.send().unwrap();
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
