//! The network commands against a small in-process HTTPS server (rustls over std TCP,
//! HTTP/1.1, one request per connection) that checks every request's signature the way
//! `docs/webserver-api.md` says the web server does. End-to-end tests against the real
//! `rjs-webserver` live in the workspace's `tests` crate.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rjs_signer::bundle::{BundleBuilder, hex};
use rjs_signer::request::RequestAuth;
use rjs_signer::{KeyPair, keys};
use rjs_wire::api::{JobList, JobRef, JobState, JobView, UploadResponse, WhoAmI};
use serde_json::json;

use super::settings::{ConfigFile, ServerOpts, ServerUrl};
use super::{answers, status, upload};
use rjs_signer::client::{AuthorClient, sha256_hex};

const CA: &str = include_str!("testdata/ca.pem");
const OTHER_CA: &str = include_str!("testdata/other-ca.pem");
const SERVER_CERT: &str = include_str!("testdata/server.pem");
const SERVER_KEY: &str = include_str!("testdata/server.key");

#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Whether the signature, body hash and key checked out.
    auth_ok: Result<(), String>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Resp {
    status: u16,
    body: Vec<u8>,
}

fn ok_json(v: impl serde::Serialize) -> Resp {
    Resp {
        status: 200,
        body: serde_json::to_vec(&v).unwrap(),
    }
}

fn refuse(status: u16, error: &str, code: &str) -> Resp {
    Resp {
        status,
        body: serde_json::to_vec(&json!({"error": error, "code": code})).unwrap(),
    }
}

type Handler = dyn Fn(&Req) -> Resp + Send + Sync;

struct Mock {
    url: String,
    requests: Arc<Mutex<Vec<Req>>>,
}

impl Mock {
    fn requests(&self) -> Vec<Req> {
        self.requests.lock().unwrap().clone()
    }
    fn count(&self, path_prefix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path.starts_with(path_prefix))
            .count()
    }
}

/// Starts the server; requests not signed by `author` get 401 `bad-signature`.
fn serve(
    author: rjs_signer::PublicKey,
    handler: impl Fn(&Req) -> Resp + Send + Sync + 'static,
) -> Mock {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let chain = rjs_wire::tls::certs_from_pem(SERVER_CERT.as_bytes(), "server cert").unwrap();
    let key = rjs_wire::tls::key_from_pem(SERVER_KEY.as_bytes(), "server key").unwrap();
    let config = Arc::new(
        rjs_wire::tls::server_config(chain, key, rjs_wire::tls::ClientAuth::None).unwrap(),
    );
    let requests = Arc::new(Mutex::new(Vec::new()));
    let handler: Arc<Handler> = Arc::new(handler);
    let reqs = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (config, handler, reqs) = (config.clone(), handler.clone(), reqs.clone());
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, stream);
                let Some(mut req) = read_request(&mut tls) else {
                    return;
                };
                req.auth_ok = check_auth(&req, &author);
                let resp = match &req.auth_ok {
                    Ok(()) => handler(&req),
                    Err(e) => refuse(401, e, "bad-signature"),
                };
                reqs.lock().unwrap().push(req);
                let head = format!(
                    "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    resp.status,
                    resp.body.len()
                );
                let _ = tls.write_all(head.as_bytes());
                let _ = tls.write_all(&resp.body);
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    Mock { url, requests }
}

fn read_request(tls: &mut impl Read) -> Option<Req> {
    let mut r = BufReader::new(tls);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some(Req {
        method,
        path,
        headers,
        body,
        auth_ok: Ok(()),
    })
}

/// The web server's checks, minus the clock window and nonce store.
fn check_auth(req: &Req, author: &rjs_signer::PublicKey) -> Result<(), String> {
    let auth = RequestAuth::from_headers(|n| req.header(n)).map_err(|e| e.to_string())?;
    let ca = rjs_wire::tls::certs_from_pem(CA.as_bytes(), "test CA").unwrap();
    if auth.audience != rjs_signer::request::audience(&ca[0]) {
        return Err("wrong audience".into());
    }
    if &auth.key != author {
        return Err("unknown author".into());
    }
    auth.verify(&req.method, &req.path)
        .map_err(|e| e.to_string())?;
    if auth.content_sha256 != sha256_hex(&req.body) {
        return Err("body hash differs".into());
    }
    let now = rjs_signer::unix_now();
    if auth.timestamp.abs_diff(now) > 300 {
        return Err("stale".into());
    }
    Ok(())
}

/// An author with a key file in a temporary folder, and flags pointing at `url`.
struct Author {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    key: KeyPair,
    opts: ServerOpts,
}

fn author(secret: u8) -> Author {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let key = KeyPair::from_secret([secret; 32]);
    keys::write_key_pair(&key, "alice", &dir.join("keys"), false).unwrap();
    std::fs::write(dir.join("ca.pem"), CA).unwrap();
    // An empty configuration file: the real user's is never read.
    std::fs::write(dir.join("config.toml"), "").unwrap();
    let opts = ServerOpts {
        given: ConfigFile {
            server: None,
            ca: Some(dir.join("ca.pem")),
            key: Some(dir.join("keys/alice.key")),
        },
        config: Some(dir.join("config.toml")),
    };
    Author {
        _tmp: tmp,
        dir,
        key,
        opts,
    }
}

impl Author {
    fn opts(&self, mock: &Mock) -> ServerOpts {
        self.opts.with_server(&mock.url)
    }
    fn api(&self, url: &str) -> AuthorClient {
        let settings = super::settings::resolve_with(
            &self.opts.with_server(url),
            &super::settings::load(self.opts.config.as_deref(), &Default::default()).unwrap(),
        )
        .unwrap();
        super::settings::connect(&settings).unwrap()
    }
    fn bundle(&self, name: &str) -> (PathBuf, Vec<u8>) {
        let mut b = BundleBuilder::new();
        let manifest = json!({"format": 1, "name": name, "entry": "job.wasm", "tasks": 3});
        b.add("manifest.json", serde_json::to_vec(&manifest).unwrap())
            .unwrap();
        b.add("job.wasm", rjs_signer::wasm::empty_command(b"note"))
            .unwrap();
        let bytes = b.sign(&self.key, "alice", rjs_signer::unix_now()).unwrap();
        let path = self.dir.join(format!("{name}.rjs"));
        std::fs::write(&path, &bytes).unwrap();
        (path, bytes)
    }
}

fn view(id: i64, bundle: &str, task: u32, state: JobState, answer: Option<&[u8]>) -> JobView {
    JobView {
        name: "mandel".to_owned(),
        outcome: answer.map(|_| "exit 0".to_owned()),
        node: answer.map(|_| "node-1".to_owned()),
        answer_bytes: answer.map(|a| a.len() as u64),
        ..super::status::tests::job(id, bundle, task, 3, state)
    }
}

fn chain<E: Into<anyhow::Error>>(e: E) -> String {
    rjs_cmd::chain(e.into().as_ref())
}

#[test]
fn requests_are_signed_over_the_exact_path_and_empty_body() {
    let a = author(1);
    let mock = serve(a.key.public(), |req| match req.path.as_str() {
        "/api/v1/whoami" => ok_json(WhoAmI {
            name: "alice".into(),
            fingerprint: "f".into(),
        }),
        _ => ok_json(JobList {
            jobs: vec![],
            next: None,
        }),
    });
    let api = a.api(&mock.url);
    assert_eq!(api.whoami().unwrap().name, "alice");
    let id = "ab".repeat(32);
    assert!(api.jobs(Some(&id)).unwrap().jobs.is_empty());
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert_eq!(r.method, "GET");
        r.auth_ok.clone().unwrap();
        assert_eq!(
            r.header("rjs-content-sha256"),
            Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
    }
    assert_eq!(reqs[1].path, format!("/api/v1/jobs?bundle={id}"));
    assert_ne!(reqs[0].header("rjs-nonce"), reqs[1].header("rjs-nonce"));
    // Another key's requests are refused by the (mock) server, and the refusal is shown.
    let b = author(2);
    let e = b.api(&mock.url).whoami().unwrap_err();
    let s = chain(e);
    assert!(
        s.contains("server refused: unknown author (bad-signature)"),
        "{s}"
    );
    assert!(
        s.starts_with(&format!("GET {}/api/v1/whoami", mock.url)),
        "{s}"
    );
}

#[test]
fn upload_sends_the_bundle_signed_and_prints_ids() {
    let a = author(3);
    let (path, bytes) = a.bundle("mandel");
    let id = hex(&rjs_signer::bundle_id(&bytes));
    let mock = serve(a.key.public(), move |req| {
        assert_eq!(req.method, "POST");
        ok_json(UploadResponse {
            bundle_id: id.clone(),
            name: "mandel".into(),
            tasks: 3,
            created: !req.path.ends_with("resubmit=true"),
            jobs: (0..3)
                .map(|t| JobRef {
                    id: 10 + t as i64,
                    task: t,
                })
                .collect(),
        })
    });
    let args = upload::UploadCommand {
        bundle: path.clone(),
        resubmit: false,
        json: false,
        server: a.opts(&mock),
    };
    assert_eq!(args.run().unwrap(), 0);
    let args = upload::UploadCommand {
        resubmit: true,
        json: true,
        ..args
    };
    assert_eq!(args.run().unwrap(), 0);
    let reqs = mock.requests();
    assert_eq!(reqs[0].path, "/api/v1/bundles");
    assert_eq!(reqs[1].path, "/api/v1/bundles?resubmit=true");
    for r in &reqs {
        r.auth_ok.clone().unwrap();
        assert_eq!(r.body, bytes, "the exact bundle bytes");
        assert_eq!(
            r.header("content-length"),
            Some(bytes.len().to_string().as_str())
        );
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    }
}

#[test]
fn upload_refuses_an_invalid_bundle_before_any_request() {
    let a = author(4);
    let (path, mut bytes) = a.bundle("mandel");
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let mock = serve(a.key.public(), |_| ok_json(json!({})));
    let args = upload::UploadCommand {
        bundle: path,
        resubmit: false,
        json: false,
        server: a.opts(&mock),
    };
    assert_eq!(args.run().unwrap(), 1);
    assert!(mock.requests().is_empty());
}

#[test]
fn transport_errors_say_what_was_being_done() {
    let a = author(5);
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("https://127.0.0.1:{port}");
    let e = a.api(&url).whoami().unwrap_err();
    let s = chain(e);
    assert!(
        s.starts_with(&format!("connecting to {url}/api/v1/whoami: ")),
        "{s}"
    );

    // A server whose certificate does not chain to the configured CA.
    let mock = serve(a.key.public(), |_| ok_json(json!({})));
    std::fs::write(a.dir.join("ca.pem"), OTHER_CA).unwrap();
    let s = chain(a.api(&mock.url).whoami().unwrap_err());
    assert!(s.starts_with("connecting to"), "{s}");
    assert!(s.to_lowercase().contains("certificate"), "{s}");
    assert!(mock.requests().is_empty());
}

#[test]
fn http_urls_are_refused_before_connecting() {
    let a = author(6);
    let args = status::StatusCommand {
        bundles: vec![],
        json: false,
        jobs: false,
        server: a.opts.with_server("http://127.0.0.1:1"),
    };
    let s = chain(args.run().unwrap_err());
    assert!(s.contains("HTTPS only"), "{s}");
    assert!(ServerUrl::parse("http://127.0.0.1:1").is_err());
}

#[test]
fn status_selects_bundles_by_prefix() {
    let a = author(7);
    let b1 = format!("aaaa{}", "1".repeat(60));
    let b2 = format!("aaab{}", "2".repeat(60));
    let jobs = vec![
        view(3, &b2, 0, JobState::Queued, None),
        view(1, &b1, 0, JobState::Done, Some(b"x")),
        view(2, &b1, 1, JobState::Leased, None),
    ];
    let mock = serve(a.key.public(), move |req| {
        let jobs = match req.path.split_once("?bundle=") {
            Some((_, id)) => jobs.iter().filter(|j| j.bundle_id == id).cloned().collect(),
            None => jobs.clone(),
        };
        ok_json(JobList { jobs, next: None })
    });
    let api = a.api(&mock.url);
    let got = status::select_jobs(&api, &["aaaa".into()]).unwrap();
    assert_eq!(got.iter().map(|j| j.id).collect::<Vec<_>>(), [1, 2]);
    let e = status::select_jobs(&api, &["aaa".into()]).unwrap_err();
    assert!(e.to_string().contains("not a bundle id"), "{e}");
    let e = status::select_jobs(&api, &["aaa1".into(), "aaaa".into()]).unwrap_err();
    assert!(e.to_string().contains("none of your jobs"), "{e}");
    let e = status::select_jobs(&api, &["aaaa".into(), "aaa".into()]).unwrap_err();
    assert!(e.to_string().contains("not a bundle id"), "{e}");
    let got = status::select_jobs(&api, &[format!("sha256:{b2}"), "aaaa".into()]).unwrap();
    assert_eq!(got.iter().map(|j| j.id).collect::<Vec<_>>(), [3, 1, 2]);
    assert!(
        mock.requests()
            .iter()
            .any(|r| r.path == format!("/api/v1/jobs?bundle={b2}"))
    );
}

#[test]
fn answers_are_downloaded_once_atomically_and_checked() {
    let a = author(8);
    let b = "c".repeat(64);
    let answer0 = b"PK answer zero".to_vec();
    let answer1 = b"PK answer one!".to_vec();
    let mut failed = view(3, &b, 2, JobState::Failed, None);
    failed.attempts = 3;
    failed.reason = Some("lease expired".into());
    let jobs = vec![
        view(1, &b, 0, JobState::Done, Some(&answer0)),
        view(2, &b, 1, JobState::Done, Some(&answer1)),
        failed,
    ];
    let truncate = Arc::new(AtomicUsize::new(0));
    let t = truncate.clone();
    let (a0, a1) = (answer0.clone(), answer1.clone());
    let mock = serve(a.key.public(), move |req| match req.path.as_str() {
        "/api/v1/jobs" => ok_json(JobList {
            jobs: jobs.clone(),
            next: None,
        }),
        "/api/v1/jobs/1/answer" => Resp {
            status: 200,
            body: a0.clone(),
        },
        "/api/v1/jobs/2/answer" => {
            let mut body = a1.clone();
            if t.load(Ordering::SeqCst) > 0 {
                body.truncate(3);
            }
            Resp { status: 200, body }
        }
        _ => refuse(404, "no such thing", "not-found"),
    });
    let out = a.dir.join("out");
    let args = answers::AnswersCommand {
        out: out.clone(),
        bundles: vec![],
        wait: false,
        timeout: None,
        require_exit_zero: false,
        json: false,
        server: a.opts(&mock),
    };
    let folder = out.join(format!("mandel-{}", &b[..12]));

    // A short answer is an error and leaves nothing behind; the other is kept.
    truncate.store(1, Ordering::SeqCst);
    assert_eq!(args.run().unwrap(), answers::EXIT_ERROR);
    assert_eq!(std::fs::read(folder.join("task-0.zip")).unwrap(), answer0);
    assert!(!folder.join("task-1.zip").exists());
    assert_eq!(
        std::fs::read_dir(&folder).unwrap().count(),
        1,
        "no temporary files left"
    );

    // Then all done except the failed task: exit 1, and task 0 is not fetched again.
    truncate.store(0, Ordering::SeqCst);
    assert_eq!(args.run().unwrap(), answers::EXIT_SOME_FAILED);
    assert_eq!(std::fs::read(folder.join("task-1.zip")).unwrap(), answer1);
    assert_eq!(mock.count("/api/v1/jobs/1/answer"), 1);
    assert_eq!(mock.count("/api/v1/jobs/2/answer"), 2);
    assert_eq!(args.run().unwrap(), answers::EXIT_SOME_FAILED);
    assert_eq!(mock.count("/api/v1/jobs/1/answer"), 1);
    assert_eq!(mock.count("/api/v1/jobs/2/answer"), 2);

    // A file of the wrong size is replaced.
    std::fs::write(folder.join("task-0.zip"), b"junk").unwrap();
    args.run().unwrap();
    assert_eq!(std::fs::read(folder.join("task-0.zip")).unwrap(), answer0);
    for r in mock.requests() {
        r.auth_ok.unwrap();
    }
}

#[test]
fn answers_wait_until_finished_or_time_out() {
    let a = author(9);
    let b = "d".repeat(64);
    let answer = b"PK the answer".to_vec();
    let polls = Arc::new(AtomicUsize::new(0));
    let p = polls.clone();
    let (b2, ans) = (b.clone(), answer.clone());
    // Leased for the first five looks (the job list, then the change feed), then done.
    let look = move |p: &AtomicUsize| {
        let n = p.fetch_add(1, Ordering::SeqCst);
        if n >= 5 {
            JobState::Done
        } else {
            JobState::Leased
        }
    };
    let mock = serve(a.key.public(), move |req| match req.path.as_str() {
        path if path.starts_with("/api/v1/jobs?") => {
            let state = look(&p);
            let done = (state == JobState::Done).then_some(ans.as_slice());
            ok_json(JobList {
                jobs: vec![view(1, &b2, 0, state, done)],
                next: None,
            })
        }
        "/api/v1/changes" => ok_json(json!({"changes": [], "next": 7, "more": false})),
        path if path.starts_with("/api/v1/changes?since=7") => {
            let state = look(&p);
            let changes = if state == JobState::Done {
                vec![json!({"seq": 8, "job": view(1, &b2, 0, state, Some(ans.as_slice()))})]
            } else {
                vec![]
            };
            ok_json(json!({"changes": changes, "next": 7, "more": false}))
        }
        "/api/v1/jobs/1/answer" => Resp {
            status: 200,
            body: ans.clone(),
        },
        _ => refuse(404, "no such thing", "not-found"),
    });
    let out = a.dir.join("out");
    // Without --wait: nothing finished yet.
    let full = answers::AnswersCommand {
        out: out.clone(),
        bundles: vec![b.clone()],
        wait: false,
        timeout: None,
        require_exit_zero: false,
        json: true,
        server: a.opts(&mock),
    };
    assert_eq!(full.run().unwrap(), answers::EXIT_UNFINISHED);

    // --wait with a short timeout: not finished in time.
    let short = answers::AnswersCommand {
        wait: true,
        timeout: Some(Duration::from_millis(500)),
        ..full
    };
    let t0 = std::time::Instant::now();
    assert_eq!(short.run().unwrap(), answers::EXIT_ERROR);
    assert!(t0.elapsed() < Duration::from_secs(5));

    // --wait: polls until done, then downloads.
    let wait = answers::AnswersCommand {
        timeout: Some(Duration::from_secs(30)),
        ..short
    };
    assert_eq!(wait.run().unwrap(), answers::EXIT_ALL_DONE);
    let file = out.join(format!("mandel-{}/task-0.zip", &b[..12]));
    assert_eq!(std::fs::read(file).unwrap(), answer);
    assert!(polls.load(Ordering::SeqCst) >= 6);
}
