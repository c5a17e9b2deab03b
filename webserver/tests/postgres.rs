//! The PostgreSQL store's own matters, against a real throw-away server
//! (`rjs_harness::postgres`; `scripts/test.sh` installs Debian's `postgresql`): the schema is
//! migrated once however many web servers start at the same moment, and a database of a newer
//! schema is refused. (The store's behaviour is the conformance suite's, `tests/store.rs`.)

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use rjs_harness::postgres::Postgres;
use rjs_webserver::store::postgres::{PgOptions, PgStore};
use rjs_webserver::store::{NewSubmission, Store, StoreError};

fn server() -> Postgres {
    Postgres::start().expect("starting PostgreSQL (scripts/test.sh installs Debian's postgresql)")
}

/// A store on a new database of the shared server, with the database's clock.
fn store_on(pg: &Postgres) -> (String, PgStore) {
    let db = pg.fresh_db("pgtest").unwrap();
    let store = PgStore::connect(&PgOptions::new(pg.url(&db))).unwrap();
    (db, store)
}

/// Alice, a lookup and `tasks` queued jobs; (author, lookup).
fn queue(store: &dyn Store, tasks: u32, now: i64) -> (i64, i64) {
    let author = store.add_author("alice", "key", "fp", now).unwrap().id;
    let lookup = store.add_lookup("lab", "cert", now).unwrap().id;
    store
        .submit(&NewSubmission {
            author_id: author,
            bundle_id: &"ab".repeat(32),
            name: "job",
            tasks,
            group: "",
            size: 1,
            resubmit: false,
            now,
            nonce: None,
        })
        .unwrap();
    (author, lookup)
}

fn unix_now() -> i64 {
    rjs_webserver::store::now()
}

#[test]
fn servers_starting_together_migrate_once_and_a_newer_schema_is_refused() {
    let pg = server();
    pg.create_db("rjs").unwrap();
    let url = pg.url("rjs");
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (url, barrier) = (url.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                PgStore::connect(&PgOptions::new(url)).map(|s| s.database_version())
            })
        })
        .collect();
    for h in handles {
        let version = h.join().unwrap().unwrap().unwrap();
        assert_eq!(version, PgStore::schema_version());
    }
    // A database a newer program migrated: refused, not written to.
    let store = PgStore::connect(&PgOptions::new(url.clone())).unwrap();
    drop(store);
    pg.psql(
        "rjs",
        &format!(
            "UPDATE schema_version SET version = {}",
            PgStore::schema_version() + 1
        ),
    )
    .unwrap();
    match PgStore::connect(&PgOptions::new(url)) {
        Err(StoreError::Schema(msg)) => assert!(msg.contains("newer"), "{msg}"),
        other => panic!("expected a schema error, got {other:?}"),
    }
}

/// Leases end by the database's clock: a web server whose clock is a day behind (or ahead)
/// leases for the time it asked, counted on the database's clock, and cannot expire another
/// server's lease early by its own clock.
#[test]
fn leases_end_by_the_database_clock_not_a_web_servers() {
    let pg = Postgres::shared().unwrap();
    let (_, store) = store_on(pg);
    let day = 86_400;
    let skewed = unix_now() - day; // this server's clock is a day late
    let (_, lookup) = queue(&store, 2, skewed);
    let leases = store.lease(lookup, 1, &[], skewed + 60, skewed, 3).unwrap();
    let until = leases[0].lease_until;
    let real = unix_now();
    assert!(
        (real + 55..=real + 65).contains(&until),
        "lease_until {until} is 60 s on the database's clock ({real})"
    );
    // A server a day ahead expires nothing: the lease has 60 s left by the database's clock.
    assert_eq!(store.expire_leases(real + day, 3).unwrap(), 0);
    let (renewed, lost) = store
        .renew(lookup, &[leases[0].job_id], skewed + 120, skewed)
        .unwrap();
    assert_eq!((renewed.len(), lost.len()), (1, 0));
}

/// The database restarts (as after a crash): the store's next calls succeed on new
/// connections, and nothing committed is lost.
#[test]
fn the_store_reconnects_after_the_database_restarts() {
    let mut pg = server();
    pg.create_db("rjs").unwrap();
    let store = PgStore::connect(&PgOptions::new(pg.url("rjs"))).unwrap();
    let now = unix_now();
    let (_, lookup) = queue(&store, 10, now);
    let leased = store.lease(lookup, 4, &[], now + 600, now, 3).unwrap();
    assert_eq!(leased.len(), 4);
    pg.kill().unwrap();
    assert!(store.queued_count().is_err(), "the database is down");
    pg.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let queued = loop {
        match store.queued_count() {
            Ok(n) => break n,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {}", rjs_cmd::chain(&e));
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("no reconnection: {}", rjs_cmd::chain(&e)),
        }
    };
    assert_eq!(queued, 6);
    let ids: Vec<i64> = leased.iter().map(|l| l.job_id).collect();
    let (renewed, _) = store.renew(lookup, &ids, now + 900, now).unwrap();
    assert_eq!(renewed, ids, "the leases survived the restart");
}

/// Jobs queued through one server wake the other's listener (LISTEN/NOTIFY).
#[test]
fn a_submission_through_one_server_wakes_the_others() {
    let pg = Postgres::shared().unwrap();
    let (db, a) = store_on(pg);
    let b = PgStore::connect(&PgOptions::new(pg.url(&db))).unwrap();
    let hint = b.queue_hint().expect("PostgreSQL gives hints");
    // The listener's first wake-up (its connection is up) comes first.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), hint.notified())
            .await
            .expect("the listener connected");
    });
    queue(&a, 3, unix_now());
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), hint.notified())
            .await
            .expect("woken by the other server's submission");
    });
}

/// The admin commands through the real binary on a shared store, configured by a file (as a
/// systemd EnvironmentFile): `init` migrates the database and makes no SQLite file; an author
/// added through one data directory is listed through another (a second server's); a
/// configuration file others can read, and a password in the URL, are refused.
#[test]
fn the_admin_commands_work_on_the_shared_store_configured_by_a_file() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    let pg = Postgres::shared().unwrap();
    let db = pg.fresh_db("cli").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("webserver.env");
    std::fs::write(&config, format!("# shared\nRJS_STORE={}\n", pg.url(&db))).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_rjs-webserver"))
            .args(args)
            .env_remove("RJS_STORE")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let cfg = config.to_str().unwrap();
    let (code, _, err) = run(&["init", "--data", a.to_str().unwrap(), "--config", cfg]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        !a.join("rjs.db").exists(),
        "no SQLite file with a shared store"
    );
    let key = rjs_signer::KeyPair::generate().public().to_base64();
    let (code, out, err) = run(&[
        "author",
        "add",
        "alice",
        "--key",
        &key,
        "--data",
        a.to_str().unwrap(),
        "--config",
        cfg,
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    // A second server's data directory: the same CA files copied, the same store.
    std::fs::create_dir(&b).unwrap();
    for f in ["ca.pem", "server.pem", "server-key.pem"] {
        std::fs::copy(a.join(f), b.join(f)).unwrap();
    }
    let list_b_with_config = || {
        run(&[
            "author",
            "list",
            "--data",
            b.to_str().unwrap(),
            "--config",
            cfg,
        ])
    };
    let (code, out, err) = list_b_with_config();
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("alice"), "{out}");
    // Without the file: b's own (missing) SQLite store.
    let (code, _, err) = run(&["author", "list", "--data", b.to_str().unwrap()]);
    assert_ne!(code, Some(0));
    assert!(err.contains("not an initialized"), "{err}");

    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = list_b_with_config();
    assert_ne!(code, Some(0));
    assert!(err.contains("readable by its owner only"), "{err}");

    let (code, _, err) = run(&[
        "author",
        "list",
        "--data",
        b.to_str().unwrap(),
        "--store",
        "postgres://rjs:hunter2@127.0.0.1/rjs",
    ]);
    assert_ne!(code, Some(0));
    assert!(err.contains("carries a password"), "{err}");
}

/// A database reached over the network: TLS (rustls) checked against the CA given with
/// `--store-ca`, the connections really encrypted (`pg_stat_ssl`), and a server whose
/// certificate another CA signed refused.
#[test]
fn a_remote_database_is_reached_over_tls_checked_against_its_ca() {
    use rjs_webserver::store::config::StoreConfig;
    let ca = rjs_webserver::pki::new_ca().unwrap();
    let issued =
        rjs_webserver::pki::issue_server(&ca, &["127.0.0.1".into(), "localhost".into()]).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pg = Postgres::start_tls(port, &issued.cert_pem, &issued.key_pem).unwrap();
    pg.create_db("rjs").unwrap();
    let url = format!("{}?sslmode=require", pg.url("rjs"));
    let tmp = tempfile::tempdir().unwrap();
    let ca_file = tmp.path().join("db-ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let unused = tmp.path().join("unused.db");

    let store = StoreConfig::parse(&url, None, None, Some(&ca_file))
        .unwrap()
        .open(&unused)
        .unwrap();
    store.add_author("alice", "key", "fp", unix_now()).unwrap();
    assert_eq!(store.list_authors().unwrap().len(), 1);
    let encrypted: i64 = pg
        .psql("rjs", "SELECT count(*) FROM pg_stat_ssl WHERE ssl")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(encrypted >= 1, "the store's connections use TLS");
    assert!(!unused.exists());

    let other = rjs_webserver::pki::new_ca().unwrap();
    let other_file = tmp.path().join("other-ca.pem");
    std::fs::write(&other_file, &other.cert_pem).unwrap();
    let refused = StoreConfig::parse(&url, None, None, Some(&other_file))
        .unwrap()
        .open(&unused)
        .map(|_| ())
        .unwrap_err();
    let chain = rjs_cmd::chain(&refused);
    assert!(chain.to_lowercase().contains("certificate"), "{chain}");
}
