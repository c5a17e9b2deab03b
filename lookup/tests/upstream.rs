//! The lookup's web server client, poller and answer spool against the real web server
//! (`target/<profile>/rjs-webserver serve` on loopback, through the e2e harness).

use std::time::{Duration, Instant};

use rjs_cmd::chain;
use rjs_e2e::{AuthorClient, LookupCreds, WebServer, make_bundle, now, upload_raw};
use rjs_lookup::spool::{AnswerSpool, RelayOptions};
use rjs_lookup::upstream::{AnswerAck, Poller, Timeouts, Wake, WebServerClient};
use rjs_wire::api::{JobState, UploadResponse};
use sha2::{Digest, Sha256};

struct Env {
    ws: WebServer,
    creds: LookupCreds,
    author: AuthorClient,
    tmp: tempfile::TempDir,
}

fn setup() -> Env {
    let mut ws = WebServer::init().unwrap();
    let creds = ws.add_lookup("lk1").unwrap();
    let key = ws.add_author("alice").unwrap();
    ws.start().unwrap();
    let author = ws.author(key).unwrap();
    Env {
        ws,
        creds,
        author,
        tmp: tempfile::tempdir().unwrap(),
    }
}

fn timeouts() -> Timeouts {
    // Quicker to give up than a real lookup's.
    Timeouts {
        connect: Duration::from_secs(2),
        request: Duration::from_secs(10),
        ..Timeouts::default()
    }
}

impl Env {
    fn client(&self) -> WebServerClient {
        WebServerClient::new(
            &format!("https://{}", self.ws.addr),
            &self.creds.path,
            &self.tmp.path().join("cache"),
            timeouts(),
        )
        .unwrap()
    }

    fn upload(&self, tasks: u32) -> UploadResponse {
        let r = upload_raw(&self.author, &make_bundle(self.author.key(), "t", tasks)).unwrap();
        assert_eq!(r.status().as_u16(), 201);
        r.json().unwrap()
    }

    fn answer_bytes(&self, job_id: i64) -> Vec<u8> {
        let (rb, _) = self.author.signed_request(
            reqwest::Method::GET,
            &format!("/api/v1/jobs/{job_id}/answer"),
            Vec::new(),
            now(),
        );
        let r = rb.send().unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        r.bytes().unwrap().to_vec()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn lease_renew_release_fail_round_trip() {
    let env = setup();
    let up = env.upload(3);
    let ids: Vec<i64> = up.jobs.iter().map(|j| j.id).collect();
    let rt = rt();
    let c = env.client();
    rt.block_on(async {
        assert_eq!(c.ping().await.unwrap(), reqwest::Version::HTTP_2);
        let leased = c.lease(10, &[], 30).await.unwrap();
        let mut got: Vec<i64> = leased.leases.iter().map(|l| l.job_id).collect();
        got.sort_unstable();
        assert_eq!(got, ids);
        assert!(leased.leases.iter().all(|l| l.bundle_id == up.bundle_id));

        let r = c.renew(&[ids[0], 999_999], 30).await.unwrap();
        assert_eq!(r.renewed, vec![ids[0]]);
        assert_eq!(r.lost, vec![999_999]);

        let r = c.release(&[ids[1]]).await.unwrap();
        assert_eq!(r.released, vec![ids[1]]);

        let f = c.fail(ids[2], "node lost").await.unwrap();
        assert_eq!(f.state, JobState::Queued);
        assert_eq!(f.attempts, 1);
        // No longer held: 409 not-leased, a permanent error.
        let e = c.fail(ids[2], "node lost").await.unwrap_err();
        assert_eq!(e.status(), Some(409));
        assert!(!e.is_transient());
        assert!(e.to_string().contains("not-leased"), "{e}");

        // Released and failed jobs are queued again.
        let again = c.lease(10, &[], 30).await.unwrap();
        let mut got: Vec<i64> = again.leases.iter().map(|l| l.job_id).collect();
        got.sort_unstable();
        assert_eq!(got, vec![ids[1], ids[2]]);
    });

    // A web server that is not there: a transient error naming the URL and the cause.
    let dead = WebServerClient::new(
        "https://127.0.0.1:9",
        &env.creds.path,
        &env.tmp.path().join("cache2"),
        timeouts(),
    )
    .unwrap();
    rt.block_on(async {
        let e = dead.lease(1, &[], 30).await.unwrap_err();
        assert!(e.is_transient());
        let msg = chain(&e);
        assert!(
            msg.starts_with("leasing jobs from https://127.0.0.1:9/lookup/v1/lease: "),
            "{msg}"
        );
    });
}

#[test]
fn fetch_bundle_is_cached_by_sha256_with_etag() {
    let env = setup();
    let up = env.upload(1);
    let rt = rt();
    let c = env.client();
    rt.block_on(async {
        let first = c.fetch_bundle(&up.bundle_id).await.unwrap();
        assert!(!first.from_cache);
        let bytes = std::fs::read(&first.path).unwrap();
        assert_eq!(rjs_e2e::sha256_hex(&bytes), up.bundle_id);

        let second = c.fetch_bundle(&up.bundle_id).await.unwrap();
        assert!(second.from_cache, "second fetch should be a 304");
        assert_eq!(second.path, first.path);

        // A damaged cache entry is not trusted: downloaded again.
        std::fs::write(&first.path, b"garbage").unwrap();
        let third = c.fetch_bundle(&up.bundle_id).await.unwrap();
        assert!(!third.from_cache);
        assert_eq!(std::fs::read(&third.path).unwrap(), bytes);

        assert!(c.fetch_bundle("../etc/passwd").await.is_err());
        let unknown = hex_sha(b"nothing");
        let e = c.fetch_bundle(&unknown).await.unwrap_err();
        assert_eq!(e.status(), Some(404));
    });
}

/// What a spool reopened in `data` (as after a restart) has left to relay.
fn pending_after_restart(data: &std::path::Path) -> Vec<i64> {
    AnswerSpool::open(data).unwrap().pending().unwrap()
}

fn hex_sha(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[test]
fn event_stream_wakes_the_poller_after_an_upload() {
    let env = setup();
    let rt = rt();
    let c = env.client();
    let (mut rx, task) = rt.block_on(async { c.events() });
    // The stream opens with the current count.
    let first = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), rx.recv()).await })
        .expect("first event within 10 s")
        .expect("stream open");
    assert_eq!(first.queued, 0);

    // A long polling interval: only the event can wake it in time.
    let mut poller = Poller::new(Some(rx), Duration::from_secs(60));
    env.upload(2);
    let wake = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), poller.next_wake()).await })
        .expect("woken within 10 s");
    match wake {
        Wake::Event(ev) => assert!(ev.queued >= 2, "{ev:?}"),
        Wake::Timer => panic!("woken by the timer, not the event"),
    }
    task.abort();
}

#[test]
fn spooled_answers_survive_a_web_server_outage_exactly_once() {
    let mut env = setup();
    let up = env.upload(2);
    let ids: Vec<i64> = up.jobs.iter().map(|j| j.id).collect();
    let rt = rt();
    let c = env.client();
    rt.block_on(async {
        assert_eq!(c.lease(10, &[], 300).await.unwrap().leases.len(), 2);
    });

    env.ws.kill9();
    let data = env.tmp.path().join("data");
    let spool = AnswerSpool::open(&data).unwrap();
    let answers: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| format!("answer of job {id}").into_bytes())
        .collect();
    rt.block_on(async {
        for (id, a) in ids.iter().zip(&answers) {
            spool
                .put(*id, "exit 0".into(), "node-a".into(), a.clone())
                .await
                .unwrap();
        }
    });
    let relay = {
        let _in_rt = rt.enter();
        spool.spawn_relay(
            c.clone(),
            RelayOptions {
                retry_base: Duration::from_millis(100),
                retry_cap: Duration::from_millis(500),
                rescan: Duration::from_secs(10),
                concurrency: 4,
            },
        )
    };
    // Down: nothing can be delivered, everything stays on disk.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(spool.pending().unwrap(), ids);

    env.ws.start().unwrap();
    wait_until("the spool to drain", Duration::from_secs(20), || {
        spool.pending().unwrap().is_empty()
    });
    relay.abort();

    let jobs = env.author.jobs(None).unwrap().jobs;
    for (id, a) in ids.iter().zip(&answers) {
        let j = jobs.iter().find(|j| j.id == *id).unwrap();
        assert_eq!(j.state, JobState::Done);
        assert_eq!(j.node.as_deref(), Some("node-a"));
        assert_eq!(j.outcome.as_deref(), Some("exit 0"));
        assert_eq!(env.answer_bytes(*id), *a);
    }
    // Posting again is acknowledged as a duplicate, not a second answer.
    rt.block_on(async {
        let ack = c
            .post_answer(ids[0], "exit 1", "node-b", b"other".to_vec())
            .await
            .unwrap();
        assert_eq!(ack, AnswerAck::Duplicate);
    });
    assert_eq!(env.answer_bytes(ids[0]), answers[0]);
    // Reopened (as after a restart), nothing is left to relay.
    drop(spool);
    assert!(pending_after_restart(&data).is_empty());
}

#[test]
fn a_spool_left_by_a_crashed_lookup_is_relayed_at_start() {
    let env = setup();
    let up = env.upload(1);
    let id = up.jobs[0].id;
    let data = env.tmp.path().join("data");
    let spool_dir = data.join("spool");
    {
        // A lookup that spooled an answer and died before relaying it...
        let crashed = AnswerSpool::open(&data).unwrap();
        crashed
            .put_blocking(id, "exit 0", "node-z", b"left behind".to_vec())
            .unwrap();
        crashed
            .put_blocking(424242, "exit 0", "node-z", b"half written".to_vec())
            .unwrap();
    }
    // ...in the middle of appending the second record: its tail never reached the disk.
    let seg = std::fs::read_dir(&spool_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "log") && std::fs::metadata(p).unwrap().len() > 0
        })
        .unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 3)
        .unwrap();

    let rt = rt();
    let c = env.client();
    // The crashed lookup held the job's lease (the web server takes an answer only from the
    // lookup that holds or last held it).
    rt.block_on(async {
        assert_eq!(c.lease(10, &[], 300).await.unwrap().leases.len(), 1);
    });
    let spool = AnswerSpool::open(&data).unwrap();
    assert_eq!(spool.pending().unwrap(), vec![id]);
    let relay = {
        let _in_rt = rt.enter();
        spool.spawn_relay(c, RelayOptions::default())
    };
    wait_until("the spool to drain", Duration::from_secs(20), || {
        spool.pending().unwrap().is_empty()
    });
    relay.abort();
    let jobs = env.author.jobs(None).unwrap().jobs;
    let j = jobs.iter().find(|j| j.id == id).unwrap();
    assert_eq!(j.state, JobState::Done);
    assert_eq!(j.node.as_deref(), Some("node-z"));
    assert_eq!(env.answer_bytes(id), b"left behind");
    // The torn record was never acknowledged to a node: it is not sent, and nothing is left.
    drop(spool);
    assert!(pending_after_restart(&data).is_empty());
}

/// What the web server says happened to each job: (state, node).
fn states(env: &Env, ids: &[i64]) -> Vec<(JobState, Option<String>)> {
    let jobs = env.author.jobs(None).unwrap().jobs;
    ids.iter()
        .map(|id| {
            let j = jobs.iter().find(|j| j.id == *id).unwrap();
            (j.state, j.node.clone())
        })
        .collect()
}

#[test]
fn no_answer_is_set_aside_because_another_shares_its_batch() {
    let env = setup();
    let up = env.upload(6);
    let ids: Vec<i64> = up.jobs.iter().map(|j| j.id).collect();
    let rt = rt();
    let c = env.client();
    rt.block_on(async {
        assert_eq!(c.lease(10, &[], 300).await.unwrap().leases.len(), 6);
    });

    // The web server: a job named twice in one batch is a duplicate record, not a bad batch.
    rt.block_on(async {
        let acks = c
            .post_answers(&[
                (ids[0], "exit 0", "node-a", b"first".as_slice()),
                (ids[0], "exit 0", "node-b", b"second".as_slice()),
                (ids[1], "exit 0", "node-a", b"other".as_slice()),
            ])
            .await
            .unwrap();
        assert_eq!(
            acks,
            vec![
                (ids[0], Some(AnswerAck::Stored)),
                (ids[0], Some(AnswerAck::Duplicate)),
                (ids[1], Some(AnswerAck::Stored)),
            ]
        );
    });
    assert_eq!(env.answer_bytes(ids[0]), b"first");

    // The spool: a job's second answer (it ran again while the first waited) never travels;
    // an answer the web server refuses (a node's bad outcome line) is set aside alone, after
    // its batch was refused whole and sent again record by record.
    let data = env.tmp.path().join("data");
    let spool = AnswerSpool::open(&data).unwrap();
    rt.block_on(async {
        for (id, outcome, node, bytes) in [
            (ids[2], "exit 0", "node-a", &b"answer 2"[..]),
            (ids[3], "exit 0", "node-a", b"answer 3"),
            (ids[2], "exit 0", "node-b", b"answer 2 again"),
            (ids[4], "exit 0\nforged: header", "node-c", b"bad outcome"),
            (ids[5], "exit 0", "node-a", b"answer 5"),
        ] {
            spool
                .put(id, outcome.into(), node.into(), bytes.to_vec())
                .await
                .unwrap();
        }
        let pass = spool.relay_once(&c, 4).await.unwrap();
        assert_eq!(pass.rejected, vec![ids[4]], "{pass:?}");
        let mut stored = pass.stored.clone();
        stored.sort();
        assert_eq!(stored, vec![ids[2], ids[3], ids[5]], "{pass:?}");
    });
    assert_eq!(env.answer_bytes(ids[2]), b"answer 2");
    let s = states(&env, &ids[2..]);
    assert_eq!(s[0], (JobState::Done, Some("node-a".into())));
    assert_eq!(s[1].0, JobState::Done);
    assert_eq!(
        s[2].0,
        JobState::Leased,
        "the refused answer stored nothing"
    );
    assert_eq!(s[3].0, JobState::Done);
    assert!(
        data.join("spool")
            .join("rejected")
            .join(format!("{}.zip", ids[4]))
            .is_file()
    );
    drop(spool);
    assert!(pending_after_restart(&data).is_empty());
}
