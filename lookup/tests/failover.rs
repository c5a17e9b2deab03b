//! A lookup given several web servers on one store (`docs/lookup-server.md`, "Several web
//! servers"): the client fails over in list order when the current one is gone, sends again
//! at once only what is safe to send twice, comes back round to a server it left, and the
//! event stream follows; `rjs-lookup serve` refuses a bad list with the reason. Against the
//! real `rjs-webserver serve` (two processes on one data directory) on loopback.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rjs_e2e::{LookupCreds, Managed, WebServer, make_bundle, upload_raw};
use rjs_harness::postgres::Postgres;
use rjs_harness::wan::WanLink;
use rjs_lookup::failover::WebServers;
use rjs_lookup::upstream::{Timeouts, WebServerClient};
use rjs_signer::KeyPair;
use rjs_signer::client::{AuthorClient, ServerUrl};
use rjs_wire::api::UploadResponse;

/// Two web servers on one data directory (one SQLite store, CA, certificate, blob folder),
/// an author and an enrolled lookup.
struct Two {
    first: WebServer,
    /// The second `serve` process and its address.
    second: Option<(Managed, String)>,
    creds: LookupCreds,
    /// The author, through the first and through the second.
    author: AuthorClient,
    author_second: AuthorClient,
    tmp: tempfile::TempDir,
}

fn two() -> Two {
    let mut first = WebServer::init().unwrap();
    let creds = first.add_lookup("lk1").unwrap();
    let secret: [u8; 32] = rand::random();
    let public = KeyPair::from_secret(secret).public().to_base64();
    first
        .admin(&["author", "add", "alice", "--key", &public])
        .unwrap();
    first.start().unwrap();
    let author = first.author(KeyPair::from_secret(secret)).unwrap();
    let second = first.serve_another(&[]).unwrap();
    let author_second = AuthorClient::with_ca_file(
        ServerUrl::parse(&format!("https://{}", second.1)).unwrap(),
        &first.ca_pem(),
        KeyPair::from_secret(secret),
    )
    .unwrap();
    Two {
        first,
        second: Some(second),
        creds,
        author,
        author_second,
        tmp: tempfile::tempdir().unwrap(),
    }
}

impl Two {
    fn urls(&self) -> [String; 2] {
        let second = &self.second.as_ref().unwrap().1;
        [
            format!("https://{}", self.first.addr),
            format!("https://{second}"),
        ]
    }

    fn client(&self, urls: &[String]) -> WebServerClient {
        self.client_within(urls, Duration::from_secs(10))
    }

    /// A client whose requests give up after `request` (and connecting after 2 s: quicker
    /// than a real lookup's).
    fn client_within(&self, urls: &[String], request: Duration) -> WebServerClient {
        WebServerClient::with_webservers(
            WebServers::parse(urls).unwrap(),
            &self.creds.path,
            &self.tmp.path().join("cache"),
            Timeouts {
                connect: Duration::from_secs(2),
                request,
                ..Timeouts::default()
            },
        )
        .unwrap()
    }

    /// Uploads a bundle of `tasks` tasks through the first web server, or the second.
    fn upload_to(&self, second: bool, tasks: u32) -> UploadResponse {
        let a = if second {
            &self.author_second
        } else {
            &self.author
        };
        let r = upload_raw(a, &make_bundle(a.key(), "t", tasks)).unwrap();
        assert_eq!(r.status().as_u16(), 201);
        r.json().unwrap()
    }
}

/// `https://127.0.0.1:PORT` where nothing listens (connection refused).
fn closed_port_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("https://127.0.0.1:{port}")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_server_killed_is_left_for_the_next_and_what_it_leased_is_held_there() {
    let mut env = two();
    let up = env.upload_to(false, 4);
    let ids: Vec<i64> = up.jobs.iter().map(|j| j.id).collect();
    let [a, b] = env.urls();
    let rt = rt();
    let c = env.client(&[a.clone(), b.clone()]);
    rt.block_on(async {
        // Through the first: it leases from the shared store.
        let leased = c.lease(2, &[], 60).await.unwrap();
        assert_eq!(leased.leases.len(), 2);
        assert_eq!(c.servers().view().failovers, 0);
        assert_eq!(c.base(), a);
    });

    // The first dies (its lease response could as well have been lost with it).
    env.first.kill9();
    rt.block_on(async {
        // `held` is safe to send twice: the failure moves to the second and it is sent there
        // at once; the second lists the jobs leased through the first (one store, one
        // lookup identity).
        let held = c.held(None, 500, 60).await.unwrap();
        let mut got: Vec<i64> = held.leases.iter().map(|l| l.job_id).collect();
        got.sort_unstable();
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|id| ids.contains(id)));
        let v = c.servers().view();
        assert_eq!(
            (v.current.as_str(), v.index, v.failovers),
            (b.as_str(), 1, 1)
        );
        let last = v.last.unwrap();
        assert_eq!(
            (last.from.as_str(), last.to.as_str()),
            (a.as_str(), b.as_str())
        );
        assert!(
            last.cause
                .starts_with(&format!("reading the jobs held at {a}/lookup/v1/held: ")),
            "{}",
            last.cause
        );
        // Everything else goes to the second now: the rest of the jobs, and renewals of all.
        let more = c.lease(10, &[], 60).await.unwrap();
        assert_eq!(more.leases.len(), 2);
        let r = c.renew(&ids, 60).await.unwrap();
        assert_eq!(r.renewed.len(), 4, "{r:?}");
        let f = c.fetch_bundle(&up.bundle_id).await.unwrap();
        assert!(!f.from_cache);
        assert_eq!(c.servers().view().failovers, 1);
    });
    if let Some((mut p, _)) = env.second.take() {
        p.kill9();
    }
}

#[test]
fn a_lease_that_never_reached_a_server_goes_to_the_next_at_once() {
    let env = two();
    env.upload_to(false, 3);
    let [_, b] = env.urls();
    let dead = closed_port_url();
    let rt = rt();
    let c = env.client(&[dead.clone(), b.clone()]);
    rt.block_on(async {
        // Connection refused: the request never reached the first, so even a lease (not safe
        // to send twice) is sent to the next at once.
        let leased = c.lease(10, &[], 60).await.unwrap();
        assert_eq!(leased.leases.len(), 3);
        let v = c.servers().view();
        assert_eq!((v.current.as_str(), v.failovers), (b.as_str(), 1));
        assert!(v.last.unwrap().cause.contains(&dead));
    });
}

#[test]
fn a_server_left_is_tried_again_when_the_others_fail() {
    let mut env = two();
    let [a, _] = env.urls();
    let (d1, d2) = (closed_port_url(), closed_port_url());
    let rt = rt();
    // [first, dead, dead]: each failed ask (the heartbeat's: never sent again at once) moves
    // one step, in list order, and round to the first again.
    let c = env.client(&[a.clone(), d1.clone(), d2.clone()]);
    rt.block_on(async { c.ping().await.unwrap() });
    env.first.kill9();
    let mut order = Vec::new();
    rt.block_on(async {
        for _ in 0..2 {
            assert!(c.ping().await.is_err());
            order.push(c.base());
        }
    });
    // Back on its address while the others are still dead.
    env.first.start().unwrap();
    rt.block_on(async {
        assert!(c.ping().await.is_err());
        order.push(c.base());
        c.ping().await.unwrap();
    });
    assert_eq!(order, [d1, d2, a]);
    assert_eq!(c.servers().view().failovers, 3);
}

#[test]
fn the_event_stream_follows_the_failover() {
    let env = two();
    let [_, b] = env.urls();
    let rt = rt();
    let c = env.client(&[closed_port_url(), b.clone()]);
    let (mut rx, task) = rt.block_on(async { c.events() });
    // The first connection is refused; the stream opens on the second with the current count.
    let first = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), rx.recv()).await })
        .expect("first event within 10 s")
        .expect("stream open");
    assert_eq!(first.queued, 0);
    assert_eq!(c.base(), b);
    // (A web server's `jobs` events are of its own process's changes: the upload goes
    // through the second. The lookup's polling covers the others'.)
    env.upload_to(true, 2);
    let ev = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), rx.recv()).await })
        .expect("an event within 10 s")
        .expect("stream open");
    assert!(ev.queued >= 2, "{ev:?}");
    task.abort();
}

/// Checks that `c`'s first server answers through `link`, then makes the link hold every byte
/// (the connection stays open); returns when it started holding.
async fn hang_after_a_ping(c: &WebServerClient, link: &WanLink) -> Instant {
    c.ping()
        .await
        .expect("the first server answers through the link");
    link.set_one_way(Duration::from_secs(60));
    Instant::now()
}

/// A server that stops answering on a connection already made (a hung process, or a link that
/// holds every byte): the heartbeat's short deadline, not the request timeout, fails it over,
/// and the event stream gives up on a response head that never comes.
#[test]
fn a_server_that_stops_answering_is_failed_over_within_the_deadlines() {
    let env = two();
    let [a, b] = env.urls();
    let first: SocketAddr = a.trim_start_matches("https://").parse().unwrap();
    // The first server behind a link that can be made to hold every byte.
    let link = WanLink::start("127.0.0.1:0".parse().unwrap(), first, Duration::ZERO).unwrap();
    let via = format!("https://{}", link.addr());
    let rt = rt();
    let request = Duration::from_secs(4);
    // The lookup service's heartbeat deadline.
    let heartbeat = Duration::from_millis(1500);
    let c = env.client_within(&[via.clone(), b.clone()], request);
    rt.block_on(async {
        let t0 = hang_after_a_ping(&c, &link).await;
        let e = c.ping_within(heartbeat).await.unwrap_err();
        let took = t0.elapsed();
        println!("hung ping: {} after {took:?}", rjs_cmd::chain(&e));
        assert!(e.is_unreachable(), "{e:?}");
        assert!(
            took >= heartbeat && took < heartbeat + Duration::from_secs(1),
            "the heartbeat's deadline, not the request timeout ({request:?}): {took:?}"
        );
        assert_eq!(c.base(), b, "failed over");
        c.ping().await.expect("the second server answers");
    });

    // The event stream, through the link again, with a new client.
    link.set_one_way(Duration::ZERO);
    let c = env.client_within(&[via.clone(), b.clone()], request);
    let (tx, _rx) = tokio::sync::mpsc::channel(8);
    rt.block_on(async {
        let t0 = hang_after_a_ping(&c, &link).await;
        let r = tokio::time::timeout(request * 3, c.stream_events_once(&tx))
            .await
            .expect("the event stream gave up by itself");
        let took = t0.elapsed();
        let e = r.unwrap_err();
        println!("hung event stream: {} after {took:?}", rjs_cmd::chain(&e));
        assert!(e.is_unreachable(), "{e:?}");
        assert!(took < request + Duration::from_secs(1), "{took:?}");
        assert_eq!(c.base(), b, "failed over");
    });
    drop(link);
}

/// Two web servers on one PostgreSQL store, each connecting as a role of its own. The first
/// loses its database (its role may no longer log in; its connections are ended): it answers
/// 503 `store-unavailable`, `/healthz` included; a request refused so does not fail over,
/// but the heartbeat's ask moves the lookup to the second, which it finds ready, and which
/// leases the jobs. When the database is out of reach of both, the heartbeat stays where it
/// is (no failover back and forth). Once the database is back, both are ready again.
#[test]
fn a_server_that_lost_its_database_is_failed_over() {
    let pg = Postgres::shared().expect("PostgreSQL (scripts/test.sh installs it)");
    let db = pg.fresh_db("lost").unwrap();
    let url = pg.url(&db);
    let as_role = |role: &str| {
        pg.psql(&db, &format!("CREATE ROLE {role} LOGIN SUPERUSER"))
            .unwrap();
        url.replacen("postgres@", &format!("{role}@"), 1)
    };
    let (role_a, role_b) = (format!("{db}_a"), format!("{db}_b"));
    let (url_a, url_b) = (as_role(&role_a), as_role(&role_b));
    let lose = |role: &str| {
        pg.psql(
            &db,
            &format!(
                "ALTER ROLE {role} NOLOGIN; \
                 SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE usename = '{role}'"
            ),
        )
        .unwrap();
    };

    let store = |u: &str| vec![("RJS_STORE".to_owned(), u.to_owned())];
    let mut second = WebServer::init_with_env(store(&url_b)).unwrap();
    let creds = second.add_lookup("lk1").unwrap();
    let key = second.add_author("alice").unwrap();
    second.start().unwrap();
    let first = second.serve_another(&[("RJS_STORE", &url_a)]).unwrap();
    let (a, b) = (format!("https://{}", first.1), second.url(""));
    let anon = second.anon_client().unwrap();
    let healthz = |base: &str| {
        let r = anon.get(format!("{base}/healthz")).send().unwrap();
        let retry = r.headers().get("retry-after").cloned();
        (r.status().as_u16(), retry, r.text().unwrap_or_default())
    };
    assert_eq!(healthz(&a).0, 200);
    let author = second.author(key).unwrap();
    let up = upload_raw(&author, &make_bundle(author.key(), "t", 3)).unwrap();
    assert_eq!(up.status().as_u16(), 201);

    let tmp = tempfile::tempdir().unwrap();
    let c = WebServerClient::with_webservers(
        WebServers::parse(&[a.clone(), b.clone()]).unwrap(),
        &creds.path,
        &tmp.path().join("cache"),
        Timeouts {
            connect: Duration::from_secs(2),
            request: Duration::from_secs(10),
            ..Timeouts::default()
        },
    )
    .unwrap();
    let heartbeat = Duration::from_millis(1500);
    let rt = rt();
    rt.block_on(async { c.heartbeat(heartbeat).await.expect("the first is ready") });

    // The first loses its database.
    lose(&role_a);
    let (status, retry, body) = healthz(&a);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("store-unavailable"), "{body}");
    assert_eq!(retry.unwrap(), "5");
    assert_eq!(healthz(&b).0, 200, "the second still reaches it");

    rt.block_on(async {
        // A lease asked of the first: refused with 503, and no failover on that alone.
        let e = c.lease(8, &[], 60).await.unwrap_err();
        assert!(e.store_unavailable(), "{e:?}");
        assert_eq!(c.base(), a);
        // The heartbeat finds the second ready and moves there; it leases the jobs.
        let e = c.heartbeat(heartbeat).await.unwrap_err();
        assert_eq!(e.status(), Some(503), "{e:?}");
        assert_eq!(c.base(), b);
        assert_eq!(c.servers().view().failovers, 1);
        let leased = c.lease(8, &[], 60).await.unwrap();
        assert_eq!(leased.leases.len(), 3);
    });

    // Both lose it: the heartbeat stays on the second, however often it asks.
    lose(&role_b);
    rt.block_on(async {
        for _ in 0..3 {
            let e = c.heartbeat(heartbeat).await.unwrap_err();
            assert!(e.store_unavailable(), "{e:?}");
        }
    });
    assert_eq!(c.base(), b);
    assert_eq!(
        c.servers().view().failovers,
        1,
        "no failover between two servers alike"
    );

    // Back within their reach: ready again, on new connections.
    pg.psql(
        &db,
        &format!("ALTER ROLE {role_a} LOGIN; ALTER ROLE {role_b} LOGIN"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while healthz(&a).0 != 200 || healthz(&b).0 != 200 {
        assert!(Instant::now() < deadline, "a server did not reconnect");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(first);
}

fn lookup_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rjs-lookup"))
}

/// `rjs-lookup serve` with these `--webserver` values: its exit code and standard error.
fn serve_with(urls: &[&str]) -> (Option<i32>, String) {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(lookup_bin());
    cmd.arg("serve")
        .arg("--data")
        .arg(tmp.path().join("lookup"))
        .arg("--creds")
        .arg(tmp.path().join("none.creds"));
    for u in urls {
        cmd.args(["--webserver", u]);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn serve_refuses_a_bad_web_server_list_with_the_reason() {
    let (code, err) = serve_with(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--webserver <URL>"), "{err}");

    let (code, err) = serve_with(&["http://grid:8080"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--webserver: web server URL \"http://grid:8080\": only https:// is allowed"),
        "{err}"
    );

    let (code, err) = serve_with(&["https://grid:8443", "https://GRID:8443/"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is given twice"), "{err}");

    let many: Vec<String> = (0..17).map(|i| format!("https://w{i}:1")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let (code, err) = serve_with(&refs);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("17 web servers given; at most 16"), "{err}");

    // A good list gets past the check: what fails is the (missing) data directory.
    let (code, err) = serve_with(&["https://a:1", "https://b:1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(!err.contains("--webserver"), "{err}");
}
