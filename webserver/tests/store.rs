//! The store's conformance suite: the `Store` trait's contract — every job state transition,
//! submissions, accounts, nonces, answers, the dashboard's views, and concurrent leasing from
//! separate handles — written once against `dyn Store` and run against every backend
//! ([`conformance!`]). The SQLite backend's own matters (WAL, migrating old files, corrupt
//! rows written behind its back) are tested apart, at the end.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use rjs_webserver::store::postgres::{PgClock, PgOptions, PgStore};
use rjs_webserver::store::sqlite::SqliteStore;
use rjs_webserver::store::{
    AnswerOutcome, AnswerTarget, JobCursor, JobFilter, NewAnswer, NewSession, NewSubmission,
    RequestNonce, Store, StoreError, Subject, SubmissionFilter, Views,
};
use rjs_wire::api::JobState;

const T0: i64 = 1_800_000_000;
const MAX_ATTEMPTS: u32 = 3;

/// A kind of store the suite runs against.
trait Backend: Sync {
    /// A new, empty database of this kind.
    fn create(&self) -> Db;
}

/// One database: more handles to it (as separate processes or servers would have) come from
/// [`Db::open`].
struct Db {
    open: Box<dyn Fn() -> Arc<dyn Store> + Send + Sync>,
    /// Runs one SQL statement behind the store's back (valid on every backend): a `SELECT`'s
    /// first column of its first row, or the rows another statement changed.
    sql: Box<dyn Fn(&str) -> i64 + Send + Sync>,
    /// What keeps the database alive (a temporary folder, a server).
    _keep: Box<dyn std::any::Any + Send + Sync>,
}

impl Db {
    fn open(&self) -> Arc<dyn Store> {
        (self.open)()
    }

    fn sql(&self, statement: &str) -> i64 {
        (self.sql)(statement)
    }
}

/// SQLite in a temporary folder.
struct Sqlite;

impl Backend for Sqlite {
    fn create(&self) -> Db {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        let raw_path = path.clone();
        Db {
            open: Box::new(move || Arc::new(SqliteStore::open(&path).unwrap()) as Arc<dyn Store>),
            sql: Box::new(move |statement| {
                let c = raw(&raw_path);
                if statement
                    .trim_start()
                    .to_ascii_uppercase()
                    .starts_with("SELECT")
                {
                    c.query_row(statement, [], |r| r.get(0)).unwrap()
                } else {
                    c.execute(statement, []).unwrap() as i64
                }
            }),
            _keep: Box::new(dir),
        }
    }
}

/// PostgreSQL: one throw-away server for the whole test binary
/// ([`rjs_harness::postgres::Postgres::shared`]), a new database per [`Db`]. Its handles read
/// the caller's clock ([`PgClock::Caller`]), as the suite drives time; the database's own
/// clock is tested in `tests/postgres.rs`.
struct Postgres;

impl Backend for Postgres {
    fn create(&self) -> Db {
        let pg = rjs_harness::postgres::Postgres::shared()
            .expect("starting PostgreSQL (scripts/test.sh installs Debian's postgresql)");
        let name = pg.fresh_db("conformance").unwrap();
        let url = pg.url(&name);
        Db {
            open: Box::new(move || {
                let mut opts = PgOptions::new(url.clone());
                opts.clock = PgClock::Caller;
                opts.max_connections = 4;
                Arc::new(PgStore::connect(&opts).unwrap()) as Arc<dyn Store>
            }),
            sql: Box::new(move |statement| {
                let upper = statement.trim_start().to_ascii_uppercase();
                let query = if upper.starts_with("SELECT") {
                    statement.to_owned()
                } else {
                    format!(
                        "WITH changed AS ({statement} RETURNING 1) SELECT count(*) FROM changed"
                    )
                };
                let out = pg.psql(&name, &query).unwrap();
                match out.trim() {
                    "t" => 1,
                    "f" => 0,
                    n => n.parse().unwrap_or_else(|e| panic!("{query}: {n:?}: {e}")),
                }
            }),
            _keep: Box::new(()),
        }
    }
}

/// Runs each named test (`fn name(b: &dyn Backend)`) against every backend: one `#[test]` per
/// test and backend, in a module named after the backend.
macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $test() {
                    super::$test(&super::Sqlite)
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $test() {
                    super::$test(&super::Postgres)
                }
            )*
        }
    };
}

struct Fixture {
    db: Db,
    store: Arc<dyn Store>,
    author: i64,
    lookup: i64,
}

fn db_path(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("rjs.db")
}

fn fixture(b: &dyn Backend) -> Fixture {
    let db = b.create();
    let store = db.open();
    let author = store.add_author("alice", "a-key", "a-fp", T0).unwrap().id;
    let lookup = store.add_lookup("lab", "lab-cert", T0).unwrap().id;
    Fixture {
        db,
        store,
        author,
        lookup,
    }
}

impl Fixture {
    /// Enrols a second lookup server, `other`; its id.
    fn other_lookup(&self) -> i64 {
        self.store.add_lookup("other", "other-cert", T0).unwrap().id
    }

    /// Alice submits bundle 1 (`N` tasks in `group`) at `T0`: its jobs' ids.
    fn jobs<const N: usize>(&self, group: &str) -> [i64; N] {
        let sub = submit(
            &*self.store,
            self.author,
            &bundle_id(1),
            N as u32,
            group,
            false,
            T0,
        );
        let ids: Vec<i64> = sub.jobs.iter().map(|j| j.0).collect();
        ids.try_into().unwrap()
    }
}

/// Leases up to `max` queued jobs of any group to `lookup` until `until`, at `now`, with
/// [`MAX_ATTEMPTS`].
fn lease(
    store: &dyn Store,
    lookup: i64,
    max: u32,
    until: i64,
    now: i64,
) -> Result<Vec<rjs_wire::api::Lease>, StoreError> {
    store.lease(lookup, max, &[], until, now, MAX_ATTEMPTS)
}

fn bundle_id(n: u32) -> String {
    format!("{n:064x}")
}

fn submit(
    store: &dyn Store,
    author: i64,
    bundle: &str,
    tasks: u32,
    group: &str,
    resubmit: bool,
    now: i64,
) -> rjs_webserver::store::Submission {
    store
        .submit(&NewSubmission {
            author_id: author,
            bundle_id: bundle,
            name: "mandelbrot",
            tasks,
            group,
            size: 1234,
            resubmit,
            now,
            nonce: None,
        })
        .unwrap()
}

fn answer<'a>(lookup: i64, job: i64, sha: &'a str, now: i64) -> NewAnswer<'a> {
    NewAnswer {
        lookup_id: lookup,
        job_id: job,
        sha256: sha,
        size: 99,
        outcome: "exit 0",
        node: "node-1",
        now,
        inline: None,
    }
}

fn view(store: &dyn Store, author: i64, job: i64) -> rjs_wire::api::JobView {
    store
        .jobs_of_author(author, None)
        .unwrap()
        .into_iter()
        .find(|j| j.id == job)
        .unwrap()
}

fn counts(store: &dyn Store) -> [u64; 4] {
    let c = store.count_by_state().unwrap();
    let get = |s| c.iter().find(|(st, _)| *st == s).map_or(0, |(_, n)| *n);
    [
        get(JobState::Queued),
        get(JobState::Leased),
        get(JobState::Done),
        get(JobState::Failed),
    ]
}

fn raw(path: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    c
}

// ------------------------------------------------------------------ opening and schema

#[test]
fn open_sets_up_wal_and_schema_and_refuses_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    {
        let s = SqliteStore::open(&path).unwrap();
        s.add_author("alice", "k", "f", T0).unwrap();
    }
    let c = raw(&path);
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SqliteStore::schema_version());

    // Reopening keeps the data and does not migrate again.
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.list_authors().unwrap().len(), 1);
    drop(s);

    c.pragma_update(None, "user_version", SqliteStore::schema_version() + 1)
        .unwrap();
    drop(c);
    match SqliteStore::open(&path) {
        Err(StoreError::Schema(msg)) => assert!(msg.contains("newer"), "{msg}"),
        other => panic!("expected a schema error, got {other:?}"),
    }
}

fn concurrent_first_opens_migrate_once(b: &dyn Backend) {
    let db = Arc::new(b.create());
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let (db, barrier) = (Arc::clone(&db), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                let s = db.open();
                s.add_author(&format!("a{i}"), &format!("k{i}"), "f", T0)
                    .unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(db.open().list_authors().unwrap().len(), 4);
}

fn data_survives_reopen(b: &dyn Backend) {
    let db = b.create();
    let (author, lookup, jobs) = {
        let s = db.open();
        let a = s.add_author("alice", "k", "f", T0).unwrap().id;
        let l = s.add_lookup("lab", "c", T0).unwrap().id;
        let sub = submit(&*s, a, &bundle_id(1), 3, "/compute", false, T0);
        lease(&*s, l, 1, T0 + 60, T0).unwrap();
        (a, l, sub.jobs)
    };
    let s = db.open();
    assert_eq!(counts(&*s), [2, 1, 0, 0]);
    let (renewed, _) = s.renew(lookup, &[jobs[0].0], T0 + 120, T0 + 1).unwrap();
    assert_eq!(renewed, vec![jobs[0].0]);
    assert_eq!(s.jobs_of_author(author, None).unwrap().len(), 3);
}

// ------------------------------------------------------------------ accounts

fn authors_unique_remove_and_reenrol(b: &dyn Backend) {
    let f = fixture(b);
    let s = &*f.store;
    assert!(matches!(
        s.add_author("alice", "other-key", "x", T0),
        Err(StoreError::Exists(_))
    ));
    assert!(matches!(
        s.add_author("bob", "a-key", "x", T0),
        Err(StoreError::Exists(_))
    ));
    let bob = s.add_author("bob", "b-key", "b-fp", T0 + 1).unwrap();
    assert_eq!(bob.name, "bob");
    assert!(!bob.removed);
    assert_eq!(s.author_by_key("b-key").unwrap(), Some(bob.clone()));
    assert_eq!(s.author_by_key("nobody").unwrap(), None);

    s.remove_author("bob").unwrap();
    assert_eq!(s.author_by_key("b-key").unwrap(), None);
    assert!(matches!(
        s.remove_author("bob"),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.remove_author("carol"),
        Err(StoreError::NotFound(_))
    ));
    let all = s.list_authors().unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().any(|a| a.name == "bob" && a.removed));

    // A removed author's name and key may be enrolled again (a new account).
    let bob2 = s.add_author("bob", "b-key", "b-fp", T0 + 2).unwrap();
    assert_ne!(bob2.id, bob.id);
    assert_eq!(
        s.author_by_key("b-key").unwrap().map(|a| a.id),
        Some(bob2.id)
    );
}

fn lookups_unique_and_revoke(b: &dyn Backend) {
    let f = fixture(b);
    let s = &*f.store;
    assert!(matches!(
        s.add_lookup("lab", "new-cert", T0),
        Err(StoreError::Exists(_))
    ));
    assert!(matches!(
        s.add_lookup("lab2", "lab-cert", T0),
        Err(StoreError::Exists(_))
    ));
    let found = s.lookup_by_cert("lab-cert").unwrap().unwrap();
    assert_eq!((found.id, found.name.as_str()), (f.lookup, "lab"));
    assert_eq!(s.lookup_by_cert("nope").unwrap(), None);

    submit(s, f.author, &bundle_id(1), 2, "/compute", false, T0);
    s.revoke_lookup("lab").unwrap();
    assert_eq!(s.lookup_by_cert("lab-cert").unwrap(), None);
    assert!(matches!(
        s.revoke_lookup("lab"),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        lease(s, f.lookup, 10, T0 + 60, T0),
        Err(StoreError::Revoked(_))
    ));
    assert!(matches!(
        lease(s, 9999, 10, T0 + 60, T0),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.queued_count().unwrap(), 2);
    // Its certificate stays refused; the name can get a new certificate.
    assert!(matches!(
        s.add_lookup("lab", "lab-cert", T0),
        Err(StoreError::Exists(_))
    ));
    let lab2 = s.add_lookup("lab", "lab-cert-2", T0).unwrap();
    assert_eq!(s.lookup_by_cert("lab-cert-2").unwrap(), Some(lab2));
    let all = s.list_lookups().unwrap();
    assert_eq!(all.len(), 2);
    assert!(all[0].revoked && !all[1].revoked);
}

fn nonce_replay_is_caught_and_expired_nonces_pruned(b: &dyn Backend) {
    let f = fixture(b);
    let s = &*f.store;
    let bob = s.add_author("bob", "b-key", "b-fp", T0).unwrap().id;
    assert!(s.use_nonce(f.author, "n1", T0 + 600, T0).unwrap());
    assert!(!s.use_nonce(f.author, "n1", T0 + 600, T0 + 1).unwrap());
    assert!(!s.use_nonce(f.author, "n1", T0 + 600, T0 + 600).unwrap());
    // Per author.
    assert!(s.use_nonce(bob, "n1", T0 + 600, T0).unwrap());
    assert!(s.use_nonce(f.author, "n2", T0 + 600, T0).unwrap());
    // Past its expiry a nonce is pruned (the timestamp window refuses such a request anyway).
    assert!(s.use_nonce(f.author, "n1", T0 + 2000, T0 + 601).unwrap());
    let left = f.db.sql("SELECT count(*) FROM nonces");
    assert_eq!(left, 1, "only the fresh n1 is kept");
}

// ------------------------------------------------------------------ submissions

fn submit_dedupes_and_resubmit_queues_a_new_set(b: &dyn Backend) {
    let f = fixture(b);
    let s = &*f.store;
    let b = bundle_id(7);
    assert!(!s.bundle_exists(&b).unwrap());
    let first = submit(s, f.author, &b, 3, "/compute", false, T0);
    assert!(first.created);
    assert_eq!(
        first.jobs.iter().map(|j| j.1).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert!(s.bundle_exists(&b).unwrap());

    let again = submit(s, f.author, &b, 3, "/compute", false, T0 + 1);
    assert!(!again.created);
    assert_eq!(again.jobs, first.jobs);
    assert_eq!(s.queued_count().unwrap(), 3);

    let rerun = submit(s, f.author, &b, 3, "/compute", true, T0 + 2);
    assert!(rerun.created);
    assert_eq!(rerun.jobs.len(), 3);
    assert!(rerun.jobs.iter().all(|j| !first.jobs.contains(j)));
    assert_eq!(s.queued_count().unwrap(), 6);
    // Without resubmit, the newest run is returned.
    let third = submit(s, f.author, &b, 3, "/compute", false, T0 + 3);
    assert_eq!(third.jobs, rerun.jobs);

    // Newest submission first, tasks in order; the name is the bundle's.
    let other = bundle_id(8);
    let later = submit(s, f.author, &other, 2, "/gpu", false, T0 + 4);
    let views = s.jobs_of_author(f.author, None).unwrap();
    let ids: Vec<i64> = views.iter().map(|v| v.id).collect();
    let expected: Vec<i64> = later
        .jobs
        .iter()
        .chain(&rerun.jobs)
        .chain(&first.jobs)
        .map(|j| j.0)
        .collect();
    assert_eq!(ids, expected);
    let v = &views[0];
    assert_eq!(v.name, "mandelbrot");
    assert_eq!((v.task, v.tasks, v.state), (0, 2, JobState::Queued));
    assert_eq!((v.attempts, v.reason.as_deref()), (0, None));
    assert_eq!((v.created_at, v.updated_at), (T0 + 4, T0 + 4));
    assert_eq!(v.bundle_id, other);

    let only = s.jobs_of_author(f.author, Some(&b)).unwrap();
    assert_eq!(only.len(), 6);
    assert!(only.iter().all(|v| v.bundle_id == b));

    // Another author sees none of them; submitting the same bundle is their own run.
    let bob = s.add_author("bob", "b-key", "b-fp", T0).unwrap().id;
    assert!(s.jobs_of_author(bob, None).unwrap().is_empty());
    let bobs = submit(s, bob, &b, 3, "/compute", false, T0 + 5);
    assert!(bobs.created);
    assert_eq!(s.jobs_of_author(bob, None).unwrap().len(), 3);
    assert_eq!(s.jobs_of_author(f.author, None).unwrap().len(), 8);
}

// ------------------------------------------------------------------ job lifecycle

fn lease_renew_release_fail_answer(b: &dyn Backend) {
    let f = fixture(b);
    let other = f.other_lookup();
    let [j0, j1, j2] = f.jobs("/compute/light");
    lease_then_renew(&f, other, [j0, j1, j2]);
    release_then_fail(&f, other, [j0, j1, j2]);
    answer_then_nothing_more(&f, j0);
    assert_eq!(counts(&*f.store), [0, 2, 1, 0]);
}

/// Lab leases two of the three jobs, `other` the third; lab renews.
fn lease_then_renew(f: &Fixture, other: i64, [j0, j1, j2]: [i64; 3]) {
    let s = &*f.store;
    // queued -> leased
    let leases = lease(s, f.lookup, 2, T0 + 60, T0).unwrap();
    assert_eq!(leases.len(), 2);
    let l = &leases[0];
    assert_eq!((l.job_id, l.task, l.tasks), (j0, 0, 3));
    assert_eq!(l.bundle_id, bundle_id(1));
    assert_eq!(l.group, "/compute/light");
    assert_eq!(l.author_fingerprint, "a-fp");
    assert_eq!((l.attempt, l.lease_until), (1, T0 + 60));
    assert_eq!(leases[1].job_id, j1);
    assert_eq!(view(s, f.author, j0).state, JobState::Leased);
    assert_eq!(counts(s), [1, 2, 0, 0]);

    // Another lookup gets only what is left.
    let rest = lease(s, other, 10, T0 + 60, T0).unwrap();
    assert_eq!(rest.iter().map(|l| l.job_id).collect::<Vec<_>>(), vec![j2]);
    assert!(lease(s, other, 10, T0 + 60, T0).unwrap().is_empty());

    // renew: only this lookup's leases; repeats counted once.
    let (renewed, lost) = s
        .renew(f.lookup, &[j0, j1, j2, j0, 424242], T0 + 90, T0 + 30)
        .unwrap();
    assert_eq!(renewed, vec![j0, j1]);
    assert_eq!(lost, vec![j2, 424242]);
}

/// Lab gives `j1` back and leases it again; fails `j0` once (queued again, leased again).
fn release_then_fail(f: &Fixture, other: i64, [j0, j1, j2]: [i64; 3]) {
    let s = &*f.store;
    // release: leased -> queued, attempt not counted; only what this lookup holds.
    assert_eq!(
        s.release(f.lookup, &[j1, j2], &[], T0 + 31).unwrap(),
        vec![j1]
    );
    let v1 = view(s, f.author, j1);
    assert_eq!((v1.state, v1.attempts), (JobState::Queued, 0));
    assert_eq!(v1.updated_at, T0 + 31);
    assert_eq!(
        s.release(f.lookup, &[j1], &[], T0 + 31).unwrap(),
        Vec::<i64>::new()
    );
    let again = lease(s, f.lookup, 10, T0 + 90, T0 + 32).unwrap();
    assert_eq!((again.len(), again[0].job_id, again[0].attempt), (1, j1, 1));

    // fail: only for a job this lookup holds.
    assert!(matches!(
        s.fail(other, j0, "nope", MAX_ATTEMPTS, T0 + 33),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.fail(f.lookup, 999_999, "nope", MAX_ATTEMPTS, T0 + 33),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        s.fail(f.lookup, j0, "node lost", MAX_ATTEMPTS, T0 + 33)
            .unwrap(),
        (JobState::Queued, 1)
    );
    let v0 = view(s, f.author, j0);
    assert_eq!((v0.state, v0.attempts), (JobState::Queued, 1));
    assert_eq!(v0.reason.as_deref(), Some("node lost"));
    // A failure report for a job no longer held (it was requeued).
    assert!(matches!(
        s.fail(f.lookup, j0, "again", MAX_ATTEMPTS, T0 + 34),
        Err(StoreError::Conflict(_))
    ));
    let l0 = lease(s, f.lookup, 1, T0 + 95, T0 + 35).unwrap();
    assert_eq!((l0[0].job_id, l0[0].attempt), (j0, 2));
}

/// Lab answers `j0` (which it holds): done; no renew, release or failure of it after that.
fn answer_then_nothing_more(f: &Fixture, j0: i64) {
    let s = &*f.store;
    // leased -> done
    assert!(matches!(
        s.answer_of(f.author, j0),
        Err(StoreError::NotFound(_))
    ));
    let sha = "ab".repeat(32);
    assert_eq!(
        s.record_answer(&answer(f.lookup, j0, &sha, T0 + 40))
            .unwrap(),
        AnswerOutcome::Stored
    );
    let v0 = view(s, f.author, j0);
    assert_eq!(v0.state, JobState::Done);
    assert_eq!(v0.outcome.as_deref(), Some("exit 0"));
    assert_eq!(v0.node.as_deref(), Some("node-1"));
    assert_eq!(v0.answer_bytes, Some(99));
    assert_eq!(v0.attempts, 1);
    assert_eq!(v0.updated_at, T0 + 40);
    let a = s.answer_of(f.author, j0).unwrap();
    assert_eq!((a.sha256.as_str(), a.size), (sha.as_str(), 99));
    // The lease is gone with the answer.
    assert_eq!(
        s.renew(f.lookup, &[j0], T0 + 99, T0 + 41).unwrap(),
        (vec![], vec![j0])
    );
    assert!(s.release(f.lookup, &[j0], &[], T0 + 41).unwrap().is_empty());
    assert!(matches!(
        s.fail(f.lookup, j0, "late", MAX_ATTEMPTS, T0 + 41),
        Err(StoreError::Conflict(_))
    ));

    // Not the author's job: not found.
    let bob = s.add_author("bob", "b-key", "b-fp", T0).unwrap().id;
    assert!(matches!(s.answer_of(bob, j0), Err(StoreError::NotFound(_))));
    assert!(matches!(
        s.answer_of(f.author, 999_999),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.record_answer(&answer(f.lookup, 999_999, &sha, T0)),
        Err(StoreError::NotFound(_))
    ));
}

fn answer_recorded_twice_is_stored_once(b: &dyn Backend) {
    let f = fixture(b);
    let s = &*f.store;
    let other = f.other_lookup();
    let [j] = f.jobs("/compute");
    lease(s, f.lookup, 1, T0 + 60, T0).unwrap();
    let first = "11".repeat(32);
    let second = "22".repeat(32);
    assert_eq!(
        s.record_answer(&answer(f.lookup, j, &first, T0 + 1))
            .unwrap(),
        AnswerOutcome::Stored
    );
    for (lookup, now, outcome) in [
        (f.lookup, T0 + 2, AnswerOutcome::Duplicate),
        (other, T0 + 3, AnswerOutcome::NotLeased),
    ] {
        let mut a = answer(lookup, j, &second, now);
        a.outcome = "trap: unreachable";
        a.node = "node-2";
        assert_eq!(s.record_answer(&a).unwrap(), outcome);
    }
    assert_eq!(
        s.answer_targets(f.lookup, &[j]).unwrap(),
        vec![AnswerTarget::Answered]
    );
    assert_eq!(
        s.answer_targets(other, &[j]).unwrap(),
        vec![AnswerTarget::NotLeased]
    );
    let r = s.answer_of(f.author, j).unwrap();
    assert_eq!(r.sha256, first);
    let v = view(s, f.author, j);
    assert_eq!(v.outcome.as_deref(), Some("exit 0"));
    assert_eq!(v.node.as_deref(), Some("node-1"));
    assert_eq!(v.updated_at, T0 + 1);
    assert_eq!(counts(s), [0, 0, 1, 0]);
}

fn answers_are_taken_only_from_the_holder_or_last_holder_of_the_lease(b: &dyn Backend) {
    let f = fixture(b);
    let s = &*f.store;
    let other = f.other_lookup();
    let [released, leased, failed, expired, never] = f.jobs("/compute");
    let sha = "cd".repeat(32);
    let ids = [released, leased, failed, expired, never, 999_999];

    // `other` leases four: gives one back, fails one for good, lets one expire.
    let l = s.lease(other, 4, &[], T0 + 10, T0, 1).unwrap();
    assert_eq!(l.len(), 4);
    assert_eq!(
        s.release(other, &[released], &[], T0).unwrap(),
        vec![released]
    );
    assert_eq!(
        s.renew(other, &[leased], T0 + 100, T0 + 1).unwrap().0,
        vec![leased]
    );
    assert_eq!(
        s.fail(other, failed, "oom", 1, T0 + 1).unwrap(),
        (JobState::Failed, 1)
    );
    assert_eq!(s.expire_leases(T0 + 11, 2).unwrap(), 1);
    assert_eq!(view(s, f.author, expired).state, JobState::Queued);
    use AnswerTarget::*;
    assert_eq!(
        s.answer_targets(f.lookup, &ids).unwrap(),
        vec![
            NotLeased, NotLeased, NotLeased, NotLeased, NotLeased, Missing
        ]
    );
    assert_eq!(
        s.answer_targets(other, &ids).unwrap(),
        vec![Open, Open, Open, Open, NotLeased, Missing]
    );

    // Any other lookup's answer, or one for a job never leased, is refused; nothing changes.
    let before: Vec<_> = ids[..5].iter().map(|&j| view(s, f.author, j)).collect();
    for j in ids[..5].iter() {
        assert_eq!(
            s.record_answer(&answer(f.lookup, *j, &sha, T0 + 12))
                .unwrap(),
            AnswerOutcome::NotLeased
        );
    }
    assert_eq!(
        s.record_answer(&answer(other, never, &sha, T0 + 12))
            .unwrap(),
        AnswerOutcome::NotLeased
    );
    let after: Vec<_> = ids[..5].iter().map(|&j| view(s, f.author, j)).collect();
    assert_eq!(before, after);
    assert!(
        s.answer_targets(f.lookup, &[never]).unwrap() == vec![NotLeased]
            && s.blob_referenced(&sha).is_ok_and(|r| !r)
    );

    // The holder, and the last holder (released, failed, expired: nobody leased them since),
    // are heard: a late answer still makes the job done.
    for j in [released, leased, failed, expired] {
        assert_eq!(
            s.record_answer(&answer(other, j, &sha, T0 + 13)).unwrap(),
            AnswerOutcome::Stored
        );
        assert_eq!(view(s, f.author, j).state, JobState::Done);
    }
    assert!(s.blob_referenced(&sha).unwrap());
    assert_eq!(
        s.answer_targets(other, &ids).unwrap(),
        vec![Answered, Answered, Answered, Answered, NotLeased, Missing]
    );
    // The failed job keeps its last reason next to its answer.
    assert_eq!(view(s, f.author, failed).reason.as_deref(), Some("oom"));

    // Once someone else leases a job, its last holder is no longer heard.
    lease(s, other, 1, T0 + 60, T0 + 14).unwrap();
    assert_eq!(
        s.release(other, &[never], &[], T0 + 15).unwrap(),
        vec![never]
    );
    let l = lease(s, f.lookup, 1, T0 + 60, T0 + 16).unwrap();
    assert_eq!(l[0].job_id, never);
    assert_eq!(
        s.record_answer(&answer(other, never, &sha, T0 + 17))
            .unwrap(),
        AnswerOutcome::NotLeased
    );
    assert_eq!(
        s.record_answer(&answer(f.lookup, never, &sha, T0 + 18))
            .unwrap(),
        AnswerOutcome::Stored
    );
    assert_eq!(counts(s), [0, 0, 5, 0]);
}

fn attempts_reach_max_then_failed_with_last_reason(b: &dyn Backend) {
    let f = fixture(b);
    let s = &*f.store;
    let [j] = f.jobs("/compute");
    let reasons = ["node lost", "refused by every node", "worker crashed"];
    for (i, reason) in reasons.iter().enumerate() {
        let now = T0 + 10 * i as i64;
        let l = lease(s, f.lookup, 5, now + 60, now).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].attempt, i as u32 + 1);
        let (state, attempts) = s.fail(f.lookup, j, reason, MAX_ATTEMPTS, now + 1).unwrap();
        assert_eq!(attempts, i as u32 + 1);
        let expected = if i + 1 < reasons.len() {
            JobState::Queued
        } else {
            JobState::Failed
        };
        assert_eq!(state, expected);
    }
    let v = view(s, f.author, j);
    assert_eq!((v.state, v.attempts), (JobState::Failed, 3));
    assert_eq!(v.reason.as_deref(), Some("worker crashed"));
    // A failed job is never leased again.
    assert!(
        lease(s, f.lookup, 5, T0 + 200, T0 + 100)
            .unwrap()
            .is_empty()
    );
    assert_eq!(counts(s), [0, 0, 0, 1]);
}

fn expired_leases_come_back(b: &dyn Backend) {
    let f = fixture(b);
    let s = &*f.store;
    let other = f.other_lookup();
    let [j0, j1] = f.jobs("/compute");
    lease(s, f.lookup, 2, T0 + 10, T0).unwrap();
    // Renewed one stays; the lease is live through its last second.
    assert_eq!(
        s.renew(f.lookup, &[j1], T0 + 100, T0 + 10).unwrap(),
        (vec![j1], vec![])
    );
    assert_eq!(s.expire_leases(T0 + 10, MAX_ATTEMPTS).unwrap(), 0);
    assert_eq!(s.expire_leases(T0 + 11, MAX_ATTEMPTS).unwrap(), 1);
    let v0 = view(s, f.author, j0);
    assert_eq!((v0.state, v0.attempts), (JobState::Queued, 1));
    assert_eq!(v0.reason.as_deref(), Some("lease expired"));
    assert_eq!(view(s, f.author, j1).state, JobState::Leased);
    // Too late to renew.
    assert_eq!(
        s.renew(f.lookup, &[j0], T0 + 100, T0 + 12).unwrap(),
        (vec![], vec![j0])
    );

    // lease() requeues expired leases itself before choosing.
    let l = lease(s, other, 5, T0 + 200, T0 + 101).unwrap();
    let mut got: Vec<(i64, u32)> = l.iter().map(|l| (l.job_id, l.attempt)).collect();
    got.sort();
    assert_eq!(got, vec![(j0, 2), (j1, 2)]);
    // The first lookup lost both to the other: its failure report, release and answer are
    // refused, and change nothing.
    assert!(matches!(
        s.fail(f.lookup, j0, "late", MAX_ATTEMPTS, T0 + 102),
        Err(StoreError::Conflict(_))
    ));
    assert!(
        s.release(f.lookup, &[j0, j1], &[], T0 + 102)
            .unwrap()
            .is_empty()
    );
    let sha = "ef".repeat(32);
    assert_eq!(
        s.record_answer(&answer(f.lookup, j0, &sha, T0 + 103))
            .unwrap(),
        AnswerOutcome::NotLeased
    );
    assert_eq!(view(s, f.author, j0).state, JobState::Leased);
    assert_eq!(
        s.record_answer(&answer(other, j0, &sha, T0 + 104)).unwrap(),
        AnswerOutcome::Stored
    );
    assert_eq!(
        s.record_answer(&answer(other, j0, &sha, T0 + 104)).unwrap(),
        AnswerOutcome::Duplicate
    );
    assert_eq!(
        s.renew(other, &[j0, j1], T0 + 300, T0 + 105).unwrap(),
        (vec![j1], vec![j0])
    );

    // Expiry at the last attempt fails the job with "lease expired".
    assert_eq!(s.expire_leases(T0 + 301, 2).unwrap(), 0);
    let v1 = view(s, f.author, j1);
    assert_eq!((v1.state, v1.attempts), (JobState::Failed, 2));
    assert_eq!(v1.reason.as_deref(), Some("lease expired"));
    assert_eq!(counts(s), [0, 0, 1, 1]);
}

fn an_expired_lease_can_still_be_failed_or_released_until_requeued(b: &dyn Backend) {
    let f = fixture(b);
    let s = &*f.store;
    let sub = submit(s, f.author, &bundle_id(1), 2, "/compute", false, T0);
    lease(s, f.lookup, 2, T0 + 10, T0).unwrap();
    assert_eq!(
        s.fail(f.lookup, sub.jobs[0].0, "node lost", MAX_ATTEMPTS, T0 + 50)
            .unwrap(),
        (JobState::Queued, 1)
    );
    assert_eq!(
        s.release(f.lookup, &[sub.jobs[1].0], &[], T0 + 50).unwrap(),
        vec![sub.jobs[1].0]
    );
    assert_eq!(counts(s), [2, 0, 0, 0]);
}

fn groups_filter_by_path_prefix(b: &dyn Backend) {
    let f = fixture(b);
    let s = &*f.store;
    let groups = [
        "/compute",
        "/compute/light",
        "/gpu",
        "/computex",
        "/compute/light/tiny",
    ];
    let mut job_of = std::collections::HashMap::new();
    for (i, g) in groups.iter().enumerate() {
        let sub = submit(s, f.author, &bundle_id(i as u32), 1, g, false, T0);
        job_of.insert(*g, sub.jobs[0].0);
    }
    let ids = |gs: &[&str]| -> Vec<i64> { gs.iter().map(|g| job_of[g]).collect() };
    let lease = |gs: &[&str], max: u32| -> Vec<i64> {
        let gs: Vec<String> = gs.iter().map(|g| g.to_string()).collect();
        let got: Vec<i64> = s
            .lease(f.lookup, max, &gs, T0 + 60, T0, MAX_ATTEMPTS)
            .unwrap()
            .iter()
            .map(|l| l.job_id)
            .collect();
        s.release(f.lookup, &got, &[], T0).unwrap();
        got
    };
    // A node in /compute/light takes /compute/light jobs and the more general /compute ones.
    assert_eq!(lease(&["/compute"], 10), ids(&["/compute"]));
    assert_eq!(lease(&["/compute/"], 10), ids(&["/compute"]));
    assert_eq!(
        lease(&["/compute/light"], 10),
        ids(&["/compute", "/compute/light"])
    );
    assert_eq!(
        lease(&["/gpu", "/computex"], 10),
        ids(&["/gpu", "/computex"])
    );
    assert_eq!(lease(&["/comp"], 10), Vec::<i64>::new());
    assert_eq!(
        lease(&["/nothing", "/compute/light/tiny"], 10),
        ids(&["/compute", "/compute/light", "/compute/light/tiny"])
    );
    assert_eq!(lease(&[], 10), ids(&groups));
    assert_eq!(lease(&["/"], 10), ids(&groups));
    assert_eq!(lease(&["/gpu", "/"], 10), ids(&groups));
    // Oldest first, and max is respected after filtering.
    assert_eq!(
        lease(&["/compute/light/tiny"], 2),
        ids(&["/compute", "/compute/light"])
    );
    assert_eq!(lease(&[], 0), Vec::<i64>::new());
    // Group names with LIKE wildcards are matched literally.
    let sub = submit(s, f.author, &bundle_id(100), 1, "/a_b/c%d", false, T0);
    assert_eq!(lease(&["/a_b/c%d/e"], 10), vec![sub.jobs[0].0]);
    assert_eq!(lease(&["/aXb/cYd/e"], 10), Vec::<i64>::new());
    assert_eq!(lease(&["/a_b"], 10), Vec::<i64>::new());
}

// ------------------------------------------------------------------ concurrency

/// Four "lookup processes", each with its own connection to the same file, race to lease
/// 2,000 queued jobs: every job is leased exactly once.
/// Each lookup leases through its own handle, as separate web servers would. `pause` between a
/// lookup's batches lets the others in (SQLite's busy handler is not fair: without it one
/// connection can take every batch in a row).
fn race(
    b: &dyn Backend,
    batch: impl Fn(usize, usize) -> u32 + Send + Sync + 'static,
    pause: Duration,
    min_winners: usize,
) {
    const JOBS: u32 = 2_000;
    const THREADS: usize = 4;
    let db = Arc::new(b.create());
    let setup = db.open();
    let author = setup.add_author("alice", "k", "f", T0).unwrap().id;
    let mut lookups = Vec::new();
    for i in 0..THREADS {
        lookups.push(
            setup
                .add_lookup(&format!("lab{i}"), &format!("cert{i}"), T0)
                .unwrap()
                .id,
        );
    }
    submit(&*setup, author, &bundle_id(1), JOBS, "/compute", false, T0);
    assert_eq!(setup.queued_count().unwrap(), JOBS as u64);

    let barrier = Arc::new(Barrier::new(THREADS));
    let batch = Arc::new(batch);
    let handles: Vec<_> = lookups
        .iter()
        .enumerate()
        .map(|(t, &lookup)| {
            let db = Arc::clone(&db);
            let barrier = Arc::clone(&barrier);
            let batch = Arc::clone(&batch);
            std::thread::spawn(move || {
                let store = db.open();
                barrier.wait();
                let mut mine = Vec::new();
                for round in 0.. {
                    let got = store
                        .lease(lookup, batch(t, round), &[], T0 + 600, T0, MAX_ATTEMPTS)
                        .unwrap();
                    if got.is_empty() {
                        break;
                    }
                    assert!(
                        got.iter()
                            .all(|l| l.attempt == 1 && l.lease_until == T0 + 600)
                    );
                    mine.extend(got.iter().map(|l| l.job_id));
                    std::thread::sleep(pause);
                }
                (lookup, mine)
            })
        })
        .collect();
    let mut all = HashSet::new();
    let mut total = 0;
    let mut winners = 0;
    for h in handles {
        let (lookup, mine) = h.join().unwrap();
        total += mine.len();
        winners += usize::from(!mine.is_empty());
        // What each lookup was told it holds, it holds.
        let (renewed, lost) = setup.renew(lookup, &mine, T0 + 700, T0 + 1).unwrap();
        assert_eq!(renewed.len(), mine.len());
        assert!(lost.is_empty());
        all.extend(mine);
    }
    assert_eq!(total, JOBS as usize, "no job leased twice");
    assert_eq!(all.len(), JOBS as usize, "every job leased");
    assert_eq!(counts(&*setup), [0, JOBS as u64, 0, 0]);
    assert!(winners >= min_winners, "only {winners} lookups got jobs");
}

fn concurrent_leasing_in_small_batches_leases_each_job_once(b: &dyn Backend) {
    race(
        b,
        |t, round| 1 + ((t * 7 + round * 13) % 64) as u32,
        Duration::from_millis(2),
        2,
    );
}

fn concurrent_leasing_of_the_whole_queue_at_once_leases_each_job_once(b: &dyn Backend) {
    race(b, |_, _| 2_000, Duration::ZERO, 1);
}

/// Four handles (four web servers) post the same answers for 300 jobs at once, singly and in
/// batches, in different orders: each job is answered once, its counts move once, and the
/// change feed shows it done once.
fn duplicate_answers_racing_through_separate_handles_are_stored_once(b: &dyn Backend) {
    const JOBS: u32 = 300;
    const THREADS: usize = 4;
    let f = fixture(b);
    let sub = submit(&*f.store, f.author, &bundle_id(1), JOBS, "/c", false, T0);
    let ids: Vec<i64> = sub.jobs.iter().map(|j| j.0).collect();
    assert_eq!(
        lease(&*f.store, f.lookup, JOBS, T0 + 600, T0)
            .unwrap()
            .len(),
        JOBS as usize
    );
    let seq_before = f.store.change_seq().unwrap();
    let db = Arc::new(f.db);
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (db, barrier, ids) = (Arc::clone(&db), Arc::clone(&barrier), ids.clone());
            let lookup = f.lookup;
            std::thread::spawn(move || {
                let store = db.open();
                let sha = format!("{t:064x}");
                let mut order = ids;
                if t % 2 == 1 {
                    order.reverse();
                }
                barrier.wait();
                let mut stored = Vec::new();
                if t < 2 {
                    for id in order {
                        let outcome = store.record_answer(&answer(lookup, id, &sha, T0 + 5));
                        if outcome.unwrap() == AnswerOutcome::Stored {
                            stored.push(id);
                        }
                    }
                } else {
                    for chunk in order.chunks(32) {
                        let batch: Vec<_> = chunk
                            .iter()
                            .map(|&id| answer(lookup, id, &sha, T0 + 5))
                            .collect();
                        let outcomes = store.record_answers(&batch).unwrap();
                        for (id, o) in chunk.iter().zip(outcomes) {
                            match o.unwrap() {
                                AnswerOutcome::Stored => stored.push(*id),
                                AnswerOutcome::Duplicate => {}
                                other => panic!("job {id}: {other:?}"),
                            }
                        }
                    }
                }
                stored
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, ids, "every job stored exactly once");
    let store = db.open();
    assert_eq!(counts(&*store), [0, 0, JOBS as u64, 0]);
    let summary = store
        .submission(f.author, sub_id(&*store, f.author))
        .unwrap()
        .unwrap();
    assert_eq!(summary.states.done, JOBS as u64);
    assert_eq!(
        summary.outcomes.exit_zero, JOBS as u64,
        "each answer counted once"
    );
    let changes = store.changes(f.author, None, seq_before, 10_000).unwrap();
    assert_eq!(changes.len(), JOBS as usize, "one change per job");
    let seqs: HashSet<u64> = changes.iter().map(|c| c.0).collect();
    assert_eq!(seqs.len(), JOBS as usize, "each change its own number");
    // (Numbers may have gaps: SQLite takes one for each answer tried.)
    assert!(store.change_seq().unwrap() >= seq_before + JOBS as u64);
}

/// The newest submission of `author`.
fn sub_id(store: &dyn Store, author: i64) -> i64 {
    store
        .submissions(
            author,
            &SubmissionFilter {
                limit: 1,
                ..Default::default()
            },
        )
        .unwrap()[0]
        .id
}

/// While one handle expires leases, the last holder's late answers race another lookup
/// leasing the requeued jobs: every job ends either answered by the last holder (and not
/// leased again) or leased by the other lookup (and that late answer refused), never both.
fn expiry_late_answers_and_new_leases_racing_agree(b: &dyn Backend) {
    const JOBS: u32 = 400;
    let f = fixture(b);
    let other = f.other_lookup();
    let sub = submit(&*f.store, f.author, &bundle_id(1), JOBS, "/c", false, T0);
    let ids: Vec<i64> = sub.jobs.iter().map(|j| j.0).collect();
    assert_eq!(
        lease(&*f.store, f.lookup, JOBS, T0 + 60, T0).unwrap().len(),
        JOBS as usize
    );
    let later = T0 + 120; // every lease has ended
    let db = Arc::new(f.db);
    let barrier = Arc::new(Barrier::new(3));
    let expirer = {
        let (db, barrier) = (Arc::clone(&db), Arc::clone(&barrier));
        std::thread::spawn(move || {
            let store = db.open();
            barrier.wait();
            store.expire_leases(later, MAX_ATTEMPTS).unwrap()
        })
    };
    let answerer = {
        let (db, barrier, ids) = (Arc::clone(&db), Arc::clone(&barrier), ids.clone());
        let lookup = f.lookup;
        std::thread::spawn(move || {
            let store = db.open();
            let sha = "ab".repeat(32);
            barrier.wait();
            let mut stored = HashSet::new();
            for id in ids {
                match store
                    .record_answer(&answer(lookup, id, &sha, later))
                    .unwrap()
                {
                    AnswerOutcome::Stored => {
                        stored.insert(id);
                    }
                    AnswerOutcome::NotLeased => {}
                    AnswerOutcome::Duplicate => panic!("job {id} answered twice"),
                }
            }
            stored
        })
    };
    let leaser = {
        let (db, barrier) = (Arc::clone(&db), Arc::clone(&barrier));
        std::thread::spawn(move || {
            let store = db.open();
            barrier.wait();
            let mut mine = HashSet::new();
            for _ in 0..200 {
                for l in lease(&*store, other, 16, later + 600, later).unwrap() {
                    assert!(mine.insert(l.job_id), "job {} leased twice", l.job_id);
                }
            }
            mine
        })
    };
    expirer.join().unwrap();
    let stored = answerer.join().unwrap();
    let mut leased = leaser.join().unwrap();
    let store = db.open();
    // What the leaser did not reach is still queued: lease the rest now.
    loop {
        let got = lease(&*store, other, 1_000, later + 600, later).unwrap();
        if got.is_empty() {
            break;
        }
        leased.extend(got.iter().map(|l| l.job_id));
    }
    assert!(
        stored.is_disjoint(&leased),
        "a job both answered and leased again"
    );
    assert_eq!(
        stored.len() + leased.len(),
        JOBS as usize,
        "every job accounted for"
    );
    assert_eq!(
        counts(&*store),
        [0, leased.len() as u64, stored.len() as u64, 0]
    );
    for id in &leased {
        let v = view(&*store, f.author, *id);
        assert_eq!(v.attempts, 1, "job {id}: the expired lease counted once");
    }
}

// ------------------------------------------------------------------ corrupt data

#[test]
fn corrupt_rows_give_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&db_path(&dir)).unwrap();
    let s = &store;
    let author = s.add_author("alice", "a-key", "a-fp", T0).unwrap().id;
    let lookup = s.add_lookup("lab", "lab-cert", T0).unwrap().id;
    struct F {
        author: i64,
        lookup: i64,
    }
    let f = F { author, lookup };
    let sub = submit(s, f.author, &bundle_id(1), 2, "/compute", false, T0);
    let j = sub.jobs[0].0;
    let c = raw(s.path());
    c.execute_batch("PRAGMA ignore_check_constraints = ON")
        .unwrap();
    c.execute("UPDATE jobs SET state = 'bogus' WHERE id = ?1", [j])
        .unwrap();
    c.execute(
        "UPDATE jobs SET attempts = -5 WHERE id = ?1",
        [sub.jobs[1].0],
    )
    .unwrap();
    assert!(matches!(
        s.jobs_of_author(f.author, None),
        Err(StoreError::Backend(_))
    ));
    assert!(matches!(s.count_by_state(), Err(StoreError::Backend(_))));
    assert!(matches!(
        s.fail(f.lookup, j, "x", MAX_ATTEMPTS, T0),
        Err(StoreError::Backend(_))
    ));
    // The queued job with a negative attempt count cannot be leased, but it does not panic.
    assert!(matches!(
        lease(s, f.lookup, 10, T0 + 60, T0),
        Err(StoreError::Backend(_))
    ));
    let err = s.count_by_state().unwrap_err();
    let mut chain = err.to_string();
    let mut src = std::error::Error::source(&err);
    while let Some(e) = src {
        chain.push_str(" <- ");
        chain.push_str(&e.to_string());
        src = e.source();
    }
    assert!(chain.contains("bogus"), "{chain}");
}

// ------------------------------------------------------------------ inline answers, batches

fn inline_answer<'a>(lookup: i64, job: i64, sha: &'a str, bytes: &'a [u8]) -> NewAnswer<'a> {
    NewAnswer {
        size: bytes.len() as u64,
        inline: Some(bytes),
        ..answer(lookup, job, sha, T0 + 5)
    }
}

fn record_answers_records_each_in_one_transaction(b: &dyn Backend) {
    let f = fixture(b);
    let s = &*f.store;
    let sub = submit(s, f.author, &bundle_id(1), 4, "/compute", false, T0);
    let j: Vec<i64> = sub.jobs.iter().map(|(id, _)| *id).collect();
    lease(s, f.lookup, 4, T0 + 60, T0).unwrap();
    let (sha_a, sha_b) = ("aa".repeat(32), "bb".repeat(32));
    let results = s
        .record_answers(&[
            inline_answer(f.lookup, j[0], &sha_a, b"PK inline"),
            inline_answer(f.lookup, 999_999, &sha_a, b"PK stray"),
            answer(f.lookup, j[1], &sha_b, T0 + 5),
            inline_answer(f.lookup, j[0], &sha_b, b"PK second"),
        ])
        .unwrap();
    assert!(matches!(
        results.as_slice(),
        [
            Ok(AnswerOutcome::Stored),
            Err(StoreError::NotFound(_)),
            Ok(AnswerOutcome::Stored),
            Ok(AnswerOutcome::Duplicate)
        ]
    ));
    let a = s.answer_of(f.author, j[0]).unwrap();
    assert_eq!(
        (a.sha256.as_str(), a.size, a.inline.as_deref()),
        (sha_a.as_str(), 9, Some(&b"PK inline"[..]))
    );
    let b = s.answer_of(f.author, j[1]).unwrap();
    assert_eq!(
        (b.sha256.as_str(), b.size, b.inline),
        (sha_b.as_str(), 99, None)
    );
    assert_eq!(view(s, f.author, j[0]).answer_bytes, Some(9));
    assert_eq!(counts(s), [0, 2, 2, 0]);
    assert!(s.record_answers(&[]).unwrap().is_empty());

    // An inline archive that is not as long as announced, or too long to keep inline, is
    // refused before anything is written.
    let big = vec![0u8; rjs_webserver::store::INLINE_ANSWER_MAX as usize + 1];
    for bad in [
        NewAnswer {
            size: 3,
            ..inline_answer(f.lookup, j[3], &sha_a, b"PK")
        },
        inline_answer(f.lookup, j[3], &sha_a, &big),
    ] {
        assert!(matches!(
            s.record_answers(&[inline_answer(f.lookup, j[2], &sha_a, b"PK"), bad]),
            Err(StoreError::Conflict(_))
        ));
    }
    assert_eq!(counts(s), [0, 2, 2, 0]);

    // A failure in the middle of the transaction rolls all of it back: a (corrupt) leftover
    // inline row makes the second answer's insert fail, the first is not kept either.
    f.db.sql(&format!(
        "INSERT INTO answer_data (job_id, bytes) VALUES ({}, '')",
        j[3]
    ));
    assert!(matches!(
        s.record_answers(&[
            inline_answer(f.lookup, j[2], &sha_a, b"PK"),
            inline_answer(f.lookup, j[3], &sha_a, b"PK"),
        ]),
        Err(StoreError::Backend(_))
    ));
    assert_eq!(counts(s), [0, 2, 2, 0]);
    assert!(matches!(
        s.answer_of(f.author, j[2]),
        Err(StoreError::NotFound(_))
    ));
}

/// A database left at schema version `version` by an older rjs-webserver: an author, two
/// lookups, a bundle of four jobs: one done (answered by lookup 1), one leased by lookup 1,
/// one leased by lookup 2 and one queued.
fn old_database(path: &Path, version: usize) -> [i64; 4] {
    let c = raw(path);
    for step in &SqliteStore::migration_steps()[..version] {
        c.execute_batch(step).unwrap();
    }
    c.pragma_update(None, "user_version", version as i64)
        .unwrap();
    let b = bundle_id(1);
    c.execute_batch(&format!(
        "INSERT INTO authors (id, name, public_key, fingerprint, created_at)
             VALUES (1, 'alice', 'a-key', 'a-fp', {T0});
         INSERT INTO lookups (id, name, cert_sha256, created_at) VALUES (1, 'lab', 'c1', {T0});
         INSERT INTO lookups (id, name, cert_sha256, created_at) VALUES (2, 'lab2', 'c2', {T0});
         INSERT INTO bundles (id, author_id, name, tasks, grp, size, created_at)
             VALUES ('{b}', 1, 'job', 4, '/compute', 10, {T0});
         INSERT INTO submissions (id, bundle_id, author_id, created_at) VALUES (1, '{b}', 1, {T0});
         INSERT INTO jobs (id, submission_id, bundle_id, author_id, task, tasks, grp, state,
                           attempts, outcome, node, answer_sha256, answer_bytes, answer_lookup,
                           created_at, updated_at)
             VALUES (1, 1, '{b}', 1, 0, 4, '/compute', 'done', 0, 'exit 0', 'n',
                     '{sha}', 99, 1, {T0}, {T0});
         INSERT INTO jobs (id, submission_id, bundle_id, author_id, task, tasks, grp, state,
                           lease_lookup, lease_until, created_at, updated_at)
             VALUES (2, 1, '{b}', 1, 1, 4, '/compute', 'leased', 1, {until}, {T0}, {T0});
         INSERT INTO jobs (id, submission_id, bundle_id, author_id, task, tasks, grp, state,
                           lease_lookup, lease_until, created_at, updated_at)
             VALUES (3, 1, '{b}', 1, 2, 4, '/compute', 'leased', 2, {until}, {T0}, {T0});
         INSERT INTO jobs (id, submission_id, bundle_id, author_id, task, tasks, grp, state,
                           created_at, updated_at)
             VALUES (4, 1, '{b}', 1, 3, 4, '/compute', 'queued', {T0}, {T0});",
        sha = "ab".repeat(32),
        until = T0 + 600,
    ))
    .unwrap();
    [1, 2, 3, 4]
}

#[test]
fn older_databases_are_migrated_keeping_their_answers_and_lease_holders() {
    for version in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        let [done, leased1, leased2, queued] = old_database(&path, version);
        let s = SqliteStore::open(&path).unwrap();
        let v: i64 = raw(&path)
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SqliteStore::schema_version());
        assert_eq!(s.integrity_check().unwrap(), vec!["ok".to_owned()]);
        let sha = "ab".repeat(32);
        let a = s.answer_of(1, done).unwrap();
        assert_eq!((a.sha256, a.size, a.inline), (sha.clone(), 99, None));
        assert!(s.blob_referenced(&sha).unwrap());
        // Lease holders are known: each lookup may answer its own jobs (the one that answered
        // a job gets `Answered`), not the other's, and nobody a job never leased.
        use AnswerTarget::*;
        assert_eq!(
            s.answer_targets(1, &[done, leased1, leased2, queued])
                .unwrap(),
            vec![Answered, Open, NotLeased, NotLeased],
            "from schema {version}"
        );
        assert_eq!(
            s.answer_targets(2, &[done, leased1, leased2, queued])
                .unwrap(),
            vec![NotLeased, NotLeased, Open, NotLeased]
        );
        assert_eq!(
            s.record_answer(&inline_answer(1, leased1, &sha, b"PK new"))
                .unwrap(),
            AnswerOutcome::Stored
        );
        assert_eq!(
            s.answer_of(1, leased1).unwrap().inline.as_deref(),
            Some(&b"PK new"[..])
        );
        assert_eq!(
            s.record_answer(&answer(1, leased2, &sha, T0 + 1)).unwrap(),
            AnswerOutcome::NotLeased
        );
        assert_eq!(
            s.record_answer(&answer(2, done, &sha, T0 + 1)).unwrap(),
            AnswerOutcome::NotLeased
        );
        assert_eq!(
            s.record_answer(&answer(1, done, &sha, T0 + 1)).unwrap(),
            AnswerOutcome::Duplicate
        );
        // New leases record their holder.
        let l = lease(&s, 2, 1, T0 + 60, T0).unwrap();
        assert_eq!(l[0].job_id, queued);
        assert_eq!(s.answer_targets(2, &[queued]).unwrap(), vec![Open]);
        assert_eq!(s.row_counts().unwrap().answer_data, 1);
    }
}

// ------------------------------------------------------------------ nonces with uploads

fn an_upload_records_its_nonce_with_the_submission_or_nothing(b: &dyn Backend) {
    let f = fixture(b);
    let s = &*f.store;
    let sub = |bundle: &str, nonce: &'static str, now: i64| {
        s.submit(&NewSubmission {
            author_id: f.author,
            bundle_id: bundle,
            name: "job",
            tasks: 2,
            group: "/compute",
            size: 10,
            resubmit: false,
            now,
            nonce: Some(RequestNonce {
                nonce,
                expires_at: now + 600,
            }),
        })
    };
    assert!(!s.nonce_used(f.author, "n1", T0).unwrap());
    let first = sub(&bundle_id(1), "n1", T0).unwrap();
    assert!(first.created);
    assert!(s.nonce_used(f.author, "n1", T0 + 1).unwrap());
    let rows = || {
        ["nonces", "bundles", "submissions", "jobs"]
            .map(|table| f.db.sql(&format!("SELECT count(*) FROM {table}")))
    };
    let before = rows();
    assert_eq!(before, [1, 1, 1, 2]);
    // The same nonce again, even for another bundle: refused, nothing recorded.
    for b in [bundle_id(1), bundle_id(2)] {
        assert!(matches!(sub(&b, "n1", T0 + 2), Err(StoreError::Replayed)));
        assert_eq!(rows(), before);
    }
    assert!(!s.bundle_exists(&bundle_id(2)).unwrap());
    // A nonce used by a read (`use_nonce`) counts too, and the other way round.
    assert!(s.use_nonce(f.author, "n2", T0 + 600, T0).unwrap());
    assert!(matches!(
        sub(&bundle_id(2), "n2", T0 + 3),
        Err(StoreError::Replayed)
    ));
    assert!(!s.use_nonce(f.author, "n1", T0 + 600, T0 + 3).unwrap());
    // An already submitted bundle (not created again) still records the nonce.
    let again = sub(&bundle_id(1), "n3", T0 + 4).unwrap();
    assert!(!again.created);
    assert_eq!(again.jobs, first.jobs);
    assert!(s.nonce_used(f.author, "n3", T0 + 5).unwrap());
    // Past its expiry a nonce is unused (and pruned by the next upload).
    assert!(!s.nonce_used(f.author, "n1", T0 + 601).unwrap());
    sub(&bundle_id(3), "n4", T0 + 700).unwrap();
    assert_eq!(rows()[0], 1);
}

// ---------------------------------------------------------------- views (dashboard, summaries)

// ------------------------------------------------------------------ views and sessions

fn summary(f: &Fixture, id: i64) -> rjs_wire::api::SubmissionSummary {
    f.store.submission(f.author, id).unwrap().unwrap()
}

fn summaries_follow_every_transition_without_reading_the_jobs(b: &dyn Backend) {
    let f = fixture(b);
    let [j0, j1, j2, j3] = f.jobs::<4>("/");
    let sub = view(&*f.store, f.author, j0).submission_id;
    let s = summary(&f, sub);
    assert_eq!(
        (s.states.queued, s.tasks, s.name.as_str()),
        (4, 4, "mandelbrot")
    );
    lease(&*f.store, f.lookup, 4, T0 + 30, T0 + 1).unwrap();
    assert_eq!(summary(&f, sub).states.leased, 4);
    let mut a = answer(f.lookup, j0, "a0", T0 + 2);
    f.store.record_answer(&a).unwrap();
    a = answer(f.lookup, j1, "a1", T0 + 3);
    a.outcome = "exit 3";
    f.store.record_answer(&a).unwrap();
    a = answer(f.lookup, j2, "a2", T0 + 4);
    a.outcome = "trap: unreachable";
    f.store.record_answer(&a).unwrap();
    f.store.fail(f.lookup, j3, "node lost", 1, T0 + 5).unwrap();
    let s = summary(&f, sub);
    assert_eq!(
        (
            s.states.queued,
            s.states.leased,
            s.states.done,
            s.states.failed
        ),
        (0, 0, 3, 1)
    );
    assert_eq!(
        (
            s.outcomes.exit_zero,
            s.outcomes.exit_other,
            s.outcomes.trap,
            s.outcomes.limit
        ),
        (1, 1, 1, 0)
    );
    assert_eq!(
        (s.first_answer_at, s.last_answer_at),
        (Some(T0 + 2), Some(T0 + 4))
    );
    assert!(s.is_finished());
    // A duplicate answer changes no count.
    f.store
        .record_answer(&answer(f.lookup, j0, "again", T0 + 6))
        .unwrap();
    assert_eq!(summary(&f, sub), s);
    // Nobody else sees it.
    let bob = f.store.add_author("bob", "b-key", "b-fp", T0).unwrap().id;
    assert!(f.store.submission(bob, sub).unwrap().is_none());
}

/// The store counts outcomes as `OutcomeCounts::count` does (the lookup's panel): an exit
/// 0 with a missing output or a limit hit on the way is an exit 0; `exit 01`, `exit 10`
/// are other exits; a compile limit is a limit.
fn outcome_counts_agree_with_the_wire_rule(b: &dyn Backend) {
    let f = fixture(b);
    let lines = [
        "exit 0",
        "exit 0 (limit hit: stdout)",
        "exit 0, missing output: speech.wav",
        "exit 10",
        "exit 3 (limit hit: output)",
        "trap: unreachable",
        "limit: compile",
    ];
    let jobs = f.jobs::<7>("/");
    let sub = view(&*f.store, f.author, jobs[0]).submission_id;
    lease(&*f.store, f.lookup, 7, T0 + 30, T0 + 1).unwrap();
    let mut want = rjs_wire::api::OutcomeCounts::default();
    for (i, (job, line)) in jobs.iter().zip(lines).enumerate() {
        let mut a = answer(f.lookup, *job, "a", T0 + 2 + i as i64);
        a.outcome = line;
        f.store.record_answer(&a).unwrap();
        want.count(line);
    }
    assert_eq!(summary(&f, sub).outcomes, want);
    assert_eq!((want.exit_zero, want.exit_other), (3, 2));
}

fn submissions_filter_by_state_and_name_and_page_newest_first(b: &dyn Backend) {
    let f = fixture(b);
    for n in 1..=5u32 {
        submit(
            &*f.store,
            f.author,
            &bundle_id(n),
            2,
            "/",
            false,
            T0 + i64::from(n),
        );
    }
    let all = |filter: SubmissionFilter<'_>| f.store.submissions(f.author, &filter).unwrap();
    let page = all(SubmissionFilter {
        limit: 2,
        ..Default::default()
    });
    assert_eq!(
        page.iter().map(|s| s.bundle_id.clone()).collect::<Vec<_>>(),
        [bundle_id(5), bundle_id(4)]
    );
    let next = all(SubmissionFilter {
        limit: 10,
        before: Some(page[1].id),
        ..Default::default()
    });
    assert_eq!(next.len(), 3);
    assert_eq!(
        all(SubmissionFilter {
            limit: 10,
            name: Some("DELBR"),
            ..Default::default()
        })
        .len(),
        5
    );
    assert!(
        all(SubmissionFilter {
            limit: 10,
            name: Some("%"),
            ..Default::default()
        })
        .is_empty()
    );
    assert!(
        all(SubmissionFilter {
            limit: 10,
            state: Some(JobState::Done),
            ..Default::default()
        })
        .is_empty()
    );
    let b3 = bundle_id(3);
    assert_eq!(
        all(SubmissionFilter {
            limit: 10,
            bundle: Some(&b3),
            ..Default::default()
        })
        .len(),
        1
    );
}

fn job_pages_are_stable_and_cover_every_job_once(b: &dyn Backend) {
    let f = fixture(b);
    submit(&*f.store, f.author, &bundle_id(1), 7, "/", false, T0);
    submit(&*f.store, f.author, &bundle_id(2), 5, "/", false, T0 + 1);
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = f
            .store
            .jobs_page(
                f.author,
                &JobFilter {
                    after,
                    limit: 3,
                    ..Default::default()
                },
            )
            .unwrap();
        seen.extend(page.iter().map(|j| (j.bundle_id.clone(), j.task)));
        match page.last() {
            Some(j) if page.len() == 3 => {
                after = Some(JobCursor {
                    submission_id: j.submission_id,
                    task: j.task,
                });
                let c = after.unwrap();
                assert_eq!(JobCursor::decode(&c.encode()), Some(c));
            }
            _ => break,
        }
    }
    assert_eq!(seen.len(), 12);
    assert_eq!(seen[0], (bundle_id(2), 0), "newest submission first");
    assert_eq!(seen[5], (bundle_id(1), 0));
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 12);
    assert!(JobCursor::decode("1.x").is_none() && JobCursor::decode("").is_none());
}

fn the_change_feed_numbers_changes_and_tells_why_jobs_wait(b: &dyn Backend) {
    let f = fixture(b);
    let [j0, j1] = f.jobs::<2>("/");
    let start = f.store.change_seq().unwrap();
    lease(&*f.store, f.lookup, 2, T0 + 30, T0 + 1).unwrap();
    let held = f
        .store
        .set_waiting(
            f.lookup,
            &[
                (j0, "No node serves this job's group.".into()),
                (999, "x".into()),
            ],
            T0 + 2,
        )
        .unwrap();
    assert_eq!(held, vec![j0]);
    let changes = f.store.changes(f.author, None, start, 100).unwrap();
    // Each job once, at its newest change: j1 (leased), then j0 (leased, then its reason).
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(changes[0].1.id, j1);
    assert!(changes.windows(2).all(|w| w[0].0 < w[1].0));
    let last = changes.last().unwrap();
    assert_eq!(last.1.id, j0);
    assert_eq!(
        last.1.waiting.as_deref(),
        Some("No node serves this job's group.")
    );
    assert_eq!(last.1.leased_by.as_deref(), Some("lab"));
    // Released with a reason: queued, the reason kept for the author; an answer clears it.
    f.store
        .release(
            f.lookup,
            &[j1],
            &[(j1, "every node refused it".into())],
            T0 + 3,
        )
        .unwrap();
    let v = f.store.job(f.author, j1).unwrap().unwrap();
    assert_eq!(
        (v.state, v.waiting.as_deref(), v.leased_by),
        (JobState::Queued, Some("every node refused it"), None)
    );
    f.store
        .record_answer(&answer(f.lookup, j0, "a", T0 + 4))
        .unwrap();
    assert_eq!(f.store.job(f.author, j0).unwrap().unwrap().waiting, None);
    let bob = f.store.add_author("bob", "b-key", "b-fp", T0).unwrap().id;
    assert!(f.store.changes(bob, None, 0, 100).unwrap().is_empty());
    assert!(f.store.job(bob, j0).unwrap().is_none());
}

fn a_login_token_is_used_once_expires_and_ends_with_its_author(b: &dyn Backend) {
    let f = fixture(b);
    let s = &*f.store;
    s.add_login_token("t1", Some(f.author), T0 + 60, T0)
        .unwrap();
    // Peeking (the GET of the login page) changes nothing.
    for _ in 0..3 {
        assert!(
            matches!(s.peek_login_token("t1", T0 + 1).unwrap(), Some(Subject::Author(a)) if a.name == "alice")
        );
    }
    let session = |hash| NewSession {
        hash,
        now: T0 + 2,
        expires_at: T0 + 1000,
    };
    assert!(s.login("t1", &session("s1")).unwrap().is_some());
    assert!(
        s.login("t1", &session("s2")).unwrap().is_none(),
        "a token works once"
    );
    assert!(s.peek_login_token("t1", T0 + 3).unwrap().is_none());
    // Expired tokens are refused.
    s.add_login_token("t2", Some(f.author), T0 + 60, T0)
        .unwrap();
    assert!(s.peek_login_token("t2", T0 + 61).unwrap().is_none());
    assert!(
        s.login(
            "t2",
            &NewSession {
                hash: "s3",
                now: T0 + 61,
                expires_at: T0 + 999
            }
        )
        .unwrap()
        .is_none()
    );
    // Sessions: idle and absolute expiry, logout.
    assert!(s.session("s1", T0 + 10, 100).unwrap().is_some());
    assert!(
        s.session("s1", T0 + 500, 100).unwrap().is_none(),
        "idle too long"
    );
    s.add_login_token("t3", Some(f.author), T0 + 60, T0)
        .unwrap();
    s.login("t3", &session("s4")).unwrap().unwrap();
    assert!(
        s.session("s4", T0 + 1001, 10_000).unwrap().is_none(),
        "past its end"
    );
    s.add_login_token("t4", Some(f.author), T0 + 60, T0)
        .unwrap();
    s.login("t4", &session("s5")).unwrap().unwrap();
    assert!(s.end_session("s5").unwrap());
    assert!(s.session("s5", T0 + 3, 100).unwrap().is_none());
    // Removing the author ends their sessions and tokens at once.
    s.add_login_token("t5", Some(f.author), T0 + 60, T0)
        .unwrap();
    s.login("t5", &session("s6")).unwrap().unwrap();
    s.add_login_token("t6", Some(f.author), T0 + 60, T0)
        .unwrap();
    s.remove_author("alice").unwrap();
    assert!(s.session("s6", T0 + 3, 100).unwrap().is_none());
    assert!(s.peek_login_token("t6", T0 + 3).unwrap().is_none());
    // The administrator's token.
    s.add_login_token("admin", None, T0 + 60, T0).unwrap();
    assert_eq!(
        s.login("admin", &session("s7")).unwrap(),
        Some(Subject::Admin)
    );
    assert_eq!(
        s.session("s7", T0 + 3, 100).unwrap().unwrap().subject,
        Subject::Admin
    );
}

#[test]
fn counts_of_a_database_from_before_the_dashboard_are_filled_in() {
    // A database made by schema version 3 with jobs in every state, migrated on open.
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        for step in &SqliteStore::migration_steps()[..3] {
            tx.execute_batch(step).unwrap();
        }
        tx.pragma_update(None, "user_version", 3).unwrap();
        tx.execute_batch(&format!(
            "INSERT INTO authors (name, public_key, fingerprint, created_at) VALUES ('a', 'k', 'f', {T0});
             INSERT INTO bundles (id, author_id, name, tasks, grp, size, created_at)
                 VALUES ('{b}', 1, 'old', 3, '/', 1, {T0});
             INSERT INTO submissions (bundle_id, author_id, created_at) VALUES ('{b}', 1, {T0});
             INSERT INTO jobs (submission_id, bundle_id, author_id, task, tasks, grp, state, outcome, answer_sha256, created_at, updated_at)
                 VALUES (1, '{b}', 1, 0, 3, '/', 'done', 'exit 0', 'x', {T0}, {t1}),
                        (1, '{b}', 1, 1, 3, '/', 'failed', NULL, NULL, {T0}, {T0}),
                        (1, '{b}', 1, 2, 3, '/', 'queued', NULL, NULL, {T0}, {T0});",
            b = bundle_id(9),
            t1 = T0 + 5
        ))
        .unwrap();
        tx.commit().unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let s = store.submission(1, 1).unwrap().unwrap();
    assert_eq!((s.states.done, s.states.failed, s.states.queued), (1, 1, 1));
    assert_eq!((s.outcomes.exit_zero, s.first_answer_at), (1, Some(T0 + 5)));
}

conformance!(
    concurrent_first_opens_migrate_once,
    data_survives_reopen,
    authors_unique_remove_and_reenrol,
    lookups_unique_and_revoke,
    nonce_replay_is_caught_and_expired_nonces_pruned,
    submit_dedupes_and_resubmit_queues_a_new_set,
    lease_renew_release_fail_answer,
    answer_recorded_twice_is_stored_once,
    answers_are_taken_only_from_the_holder_or_last_holder_of_the_lease,
    attempts_reach_max_then_failed_with_last_reason,
    expired_leases_come_back,
    an_expired_lease_can_still_be_failed_or_released_until_requeued,
    groups_filter_by_path_prefix,
    concurrent_leasing_in_small_batches_leases_each_job_once,
    concurrent_leasing_of_the_whole_queue_at_once_leases_each_job_once,
    record_answers_records_each_in_one_transaction,
    an_upload_records_its_nonce_with_the_submission_or_nothing,
    summaries_follow_every_transition_without_reading_the_jobs,
    outcome_counts_agree_with_the_wire_rule,
    submissions_filter_by_state_and_name_and_page_newest_first,
    job_pages_are_stable_and_cover_every_job_once,
    the_change_feed_numbers_changes_and_tells_why_jobs_wait,
    a_login_token_is_used_once_expires_and_ends_with_its_author,
    duplicate_answers_racing_through_separate_handles_are_stored_once,
    expiry_late_answers_and_new_leases_racing_agree,
);
