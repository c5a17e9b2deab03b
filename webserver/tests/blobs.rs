//! The blob store's contract, written once and run against both backends (`contract!`): the
//! folder, and S3 through a throw-away moto server on loopback (rjs_harness::s3). Streaming a
//! blob larger than 64 MiB, create-only commits, the same content committed at once from two
//! handles (as two servers would), missing blobs, and the collector's rules (grace period,
//! references, bounded sweeps).

use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime};

use rjs_harness::s3::{self as moto, S3Server};
use rjs_webserver::store::blobs::gc::{NoPins, SweepOptions};
use rjs_webserver::store::blobs::s3::{S3Config, S3Credentials, TOUCH_SETTLE};
use rjs_webserver::store::blobs::{BlobError, BlobLocation, BlobRead, BlobStore};
use rjs_webserver::store::sqlite::SqliteStore;
use rjs_webserver::store::{NewSubmission, Store};
use sha2::{Digest, Sha256};

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where a test's blobs live: handles to one store, as separate servers would have them.
trait Backend {
    /// Another handle to the same blobs, spooling in its own folder.
    fn handle(&self, spool: &Path) -> BlobStore;
    fn is_s3(&self) -> bool {
        self.as_s3().is_some()
    }
    fn as_s3(&self) -> Option<&S3> {
        None
    }
}

struct Folder {
    dir: tempfile::TempDir,
}

impl Backend for Folder {
    fn handle(&self, _spool: &Path) -> BlobStore {
        // One folder belongs to one server: handles share the directory.
        BlobStore::open(self.dir.path()).unwrap()
    }
}

struct S3 {
    server: S3Server,
    bucket: String,
}

impl S3 {
    fn config(&self) -> S3Config {
        let mut c = S3Config::from_url(&format!("s3://{}/grid/blobs-test", self.bucket)).unwrap();
        c.endpoint = Some(self.server.endpoint());
        c.region = moto::REGION.into();
        c.path_style = true;
        c.allow_http = true;
        c.credentials = S3Credentials {
            access_key_id: moto::ACCESS_KEY_ID.into(),
            secret_access_key: moto::SECRET_ACCESS_KEY.into(),
            session_token: None,
        };
        // The contract's graces are seconds: every reuse touches
        // (`a_fresh_blob_is_reused_without_a_touch` tests the default).
        c.reuse_fresh = Duration::ZERO;
        c
    }
}

impl Backend for S3 {
    fn handle(&self, spool: &Path) -> BlobStore {
        BlobStore::open_at(spool, &BlobLocation::S3(Box::new(self.config()))).unwrap()
    }
    fn as_s3(&self) -> Option<&S3> {
        Some(self)
    }
}

fn folder() -> Box<dyn Backend> {
    Box::new(Folder {
        dir: tempfile::tempdir().unwrap(),
    })
}

fn s3() -> Box<dyn Backend> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = S3Server::start().unwrap();
    let bucket = "rjs-blobs".to_owned();
    server.create_bucket(&bucket).unwrap();
    Box::new(S3 { server, bucket })
}

/// Runs each contract test against each backend.
macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        mod folder {
            $( #[test] fn $test() { super::$test(&*super::folder()); } )*
        }
        mod s3 {
            $( #[test] fn $test() { super::$test(&*super::s3()); } )*
        }
    };
}

contract!(
    write_commit_read,
    missing_blob,
    huge_blob_streams,
    create_only_same_content,
    concurrent_commits_of_the_same_content,
    collector_keeps_young_and_referenced,
    collector_sweeps_in_bounded_batches,
);

/// Reads a whole blob through the streaming interface, chunk by chunk.
fn read_streamed(blob: BlobRead, mut each: impl FnMut(&[u8])) -> u64 {
    let mut total = 0u64;
    match blob {
        BlobRead::File(mut f, size) => {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                each(&buf[..n]);
                total += n as u64;
            }
            assert_eq!(total, size);
        }
        BlobRead::Stream(mut s) => {
            while let Some(chunk) = s.rx.blocking_recv() {
                let chunk = chunk.unwrap();
                each(&chunk);
                total += chunk.len() as u64;
            }
            assert_eq!(total, s.size);
        }
    }
    total
}

fn write_commit_read(b: &dyn Backend) {
    let spool = tempfile::tempdir().unwrap();
    let blobs = b.handle(spool.path());
    assert_eq!(blobs.is_remote(), b.is_s3());
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut w = blobs.writer(data.len() as u64).unwrap();
    for chunk in data.chunks(7_000) {
        w.write(chunk).unwrap();
    }
    assert_eq!(&w.map_written().unwrap()[..], &data[..]);
    let (name, size) = w.commit().unwrap();
    assert_eq!(
        (name.as_str(), size),
        (sha(&data).as_str(), data.len() as u64)
    );
    assert!(blobs.exists(&name).unwrap());
    assert_eq!(blobs.read(&name, size).unwrap(), data);
    assert!(matches!(
        blobs.read(&name, size - 1),
        Err(BlobError::TooLarge { .. })
    ));
    let blob = blobs.open_blob(&name).unwrap();
    assert_eq!(blob.size(), size);
    let mut back = Vec::new();
    read_streamed(blob, |c| back.extend_from_slice(c));
    assert_eq!(back, data);
    // The empty blob.
    let (empty, n) = blobs.put(b"").unwrap();
    assert_eq!((empty.as_str(), n), (sha(b"").as_str(), 0));
    assert!(blobs.read(&empty, 0).unwrap().is_empty());
    // No spool file is left behind.
    assert_eq!(std::fs::read_dir(blobs.tmp_dir()).unwrap().count(), 0);
    // Names are checked before anything is sent.
    assert!(matches!(blobs.exists("../x"), Err(BlobError::BadName(_))));
    assert!(matches!(blobs.open_blob("AB"), Err(BlobError::BadName(_))));
}

fn missing_blob(b: &dyn Backend) {
    let spool = tempfile::tempdir().unwrap();
    let blobs = b.handle(spool.path());
    let name = sha(b"never stored");
    assert!(!blobs.exists(&name).unwrap());
    let e = blobs.open_blob(&name).unwrap_err();
    assert!(matches!(e, BlobError::NotFound { .. }), "{e:?}");
    assert!(e.to_string().contains(&name), "{e}");
    assert!(matches!(
        blobs.read(&name, 10),
        Err(BlobError::NotFound { .. })
    ));
    assert!(!blobs.remove(&name).unwrap());
}

/// 65 MiB + 1 byte, written and read back in 1 MiB pieces: the upload goes from the spool
/// file (multipart for S3: 9 parts of 8 MiB), the download arrives in chunks; neither side
/// of the interface ever holds more than a chunk here.
fn huge_blob_streams(b: &dyn Backend) {
    let spool = tempfile::tempdir().unwrap();
    let blobs = b.handle(spool.path());
    let size: u64 = 65 * 1024 * 1024 + 1;
    let piece = |i: u64| -> Vec<u8> {
        let mut v = vec![(i % 251) as u8; 1024 * 1024];
        v[0] = (i >> 8) as u8;
        v
    };
    let mut w = blobs.writer(size).unwrap();
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    let mut i = 0;
    while written < size {
        let mut p = piece(i);
        p.truncate((size - written).min(p.len() as u64) as usize);
        hasher.update(&p);
        w.write(&p).unwrap();
        written += p.len() as u64;
        i += 1;
    }
    let expected: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let started = std::time::Instant::now();
    let (name, got) = w.commit().unwrap();
    let up = started.elapsed();
    assert_eq!((name.as_str(), got), (expected.as_str(), size));

    let started = std::time::Instant::now();
    let blob = blobs.open_blob(&name).unwrap();
    assert_eq!(blob.size(), size);
    let mut hasher = Sha256::new();
    let mut largest = 0usize;
    let total = read_streamed(blob, |c| {
        largest = largest.max(c.len());
        hasher.update(c);
    });
    let down = started.elapsed();
    assert_eq!(total, size);
    let back: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(back, expected);
    assert!(largest <= 8 * 1024 * 1024, "a chunk of {largest} bytes");
    eprintln!("65 MiB blob: commit {up:?}, streamed read {down:?}, largest chunk {largest} bytes");
    // The size limit of a whole read is kept without reading it all.
    assert!(matches!(
        blobs.read(&name, 1024),
        Err(BlobError::TooLarge { .. })
    ));
}

/// Committing content that is stored already succeeds and changes nothing; the S3 object is
/// written create-only, so the second commit leaves the first object as it was.
fn create_only_same_content(b: &dyn Backend) {
    let spool = tempfile::tempdir().unwrap();
    let blobs = b.handle(spool.path());
    let (name, _) = blobs.put(b"same bytes").unwrap();
    let first = blobs.last_touched(&name).unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let (again, _) = blobs.put(b"same bytes").unwrap();
    assert_eq!(again, name);
    assert_eq!(blobs.read(&name, 100).unwrap(), b"same bytes");
    // Young again: touched by the second commit.
    let touched = blobs.last_touched(&name).unwrap().unwrap();
    assert!(touched > first, "{touched:?} vs {first:?}");
    if let Some(s3) = as_s3(b) {
        let keys = s3.server.keys(&s3.bucket, "grid/blobs-test/").unwrap();
        assert!(
            keys.contains(&format!("grid/blobs-test/blobs/{name}")),
            "{keys:?}"
        );
        assert!(
            keys.contains(&format!("grid/blobs-test/touch/{name}")),
            "{keys:?}"
        );
    }
}

fn as_s3(b: &dyn Backend) -> Option<&S3> {
    b.as_s3()
}

/// Two handles (two servers) commit the same content at the same moment, small and
/// multipart-sized: both succeed, one blob results, with the right bytes.
fn concurrent_commits_of_the_same_content(b: &dyn Backend) {
    for size in [10_000usize, 9 * 1024 * 1024] {
        let data: Arc<Vec<u8>> = Arc::new((0..size).map(|i| (i % 241) as u8).collect());
        let barrier = Arc::new(Barrier::new(2));
        let results: Vec<(String, u64)> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    let (data, barrier) = (data.clone(), barrier.clone());
                    let spool = tempfile::tempdir().unwrap();
                    let blobs = b.handle(spool.path());
                    s.spawn(move || {
                        let mut w = blobs.writer(data.len() as u64).unwrap();
                        w.write(&data).unwrap();
                        barrier.wait();
                        let r = w.commit().unwrap();
                        drop(spool);
                        r
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        assert_eq!(results[0], results[1]);
        assert_eq!(results[0], (sha(&data), size as u64));
        let spool = tempfile::tempdir().unwrap();
        let blobs = b.handle(spool.path());
        assert_eq!(&blobs.read(&results[0].0, size as u64).unwrap(), &*data);
    }
}

fn submit(store: &SqliteStore, bundle: &str) {
    let author = store.add_author("a", "k", "f", 1).unwrap().id;
    store
        .submit(&NewSubmission {
            author_id: author,
            bundle_id: bundle,
            name: "job",
            tasks: 1,
            group: "/compute",
            size: 1,
            resubmit: false,
            now: 1,
            nonce: None,
        })
        .unwrap();
}

/// Unreferenced blobs go only once older than the grace period; referenced blobs never; a
/// blob touched by a later commit of the same content is young again.
fn collector_keeps_young_and_referenced(b: &dyn Backend) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("rjs.db")).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let blobs = b.handle(spool.path());
    let (orphan, _) = blobs.put(b"nobody refers to me").unwrap();
    let (kept, _) = blobs.put(b"a bundle").unwrap();
    let (reused, _) = blobs.put(b"committed again later").unwrap();
    submit(&store, &kept);

    // An hour's grace: everything is young.
    let hour = SweepOptions::default();
    let r = blobs.sweep(&store, &NoPins, &hour, &mut None).unwrap();
    assert_eq!((r.examined, r.young, r.removed), (3, 3, 0));

    // Let the three age 4.3 s, then commit `reused` again (a second server's upload; on S3
    // it touches the blob and waits its settle time, longer on a busy machine).
    std::thread::sleep(Duration::from_millis(4300));
    let before = SystemTime::now();
    blobs.put(b"committed again later").unwrap();
    assert!(blobs.last_touched(&reused).unwrap().unwrap() + Duration::from_secs(1) >= before);
    // A grace 2 s longer than the touch's age (S3 times are whole seconds), which the
    // orphan, 4.3 s older than the touch, has outlived whatever the commit took.
    let short = SweepOptions {
        grace: before.elapsed().unwrap_or_default() + Duration::from_secs(2),
        ..SweepOptions::default()
    };
    let r = blobs.sweep(&store, &NoPins, &short, &mut None).unwrap();
    assert_eq!((r.removed, r.referenced, r.young), (1, 1, 1), "{r:?}");
    assert!(!blobs.exists(&orphan).unwrap());
    assert!(blobs.exists(&kept).unwrap());
    assert!(blobs.exists(&reused).unwrap());
    if let Some(s3) = as_s3(b) {
        // The orphan's object went, and no touch marker of it stayed.
        let keys = s3.server.keys(&s3.bucket, "grid/").unwrap();
        assert!(!keys.iter().any(|k| k.ends_with(&orphan)), "{keys:?}");
    }
}

/// A sweep looks at a bounded batch and goes on where the last one stopped.
fn collector_sweeps_in_bounded_batches(b: &dyn Backend) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("rjs.db")).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let blobs = b.handle(spool.path());
    let mut names: Vec<String> = (0..7)
        .map(|i| blobs.put(format!("blob {i}").as_bytes()).unwrap().0)
        .collect();
    names.sort();
    let opts = SweepOptions {
        grace: Duration::ZERO,
        batch: 3,
    };
    let mut cursor = None;
    let mut removed = 0;
    let mut rounds = 0;
    loop {
        let r = blobs.sweep(&store, &NoPins, &opts, &mut cursor).unwrap();
        assert!(r.examined <= 3);
        removed += r.removed;
        rounds += 1;
        if r.wrapped {
            assert!(cursor.is_none());
            break;
        }
        assert!(cursor.is_some());
    }
    assert_eq!((removed, rounds), (7, 3));
    for n in &names {
        assert!(!blobs.exists(n).unwrap());
    }
}

/// On S3, content stored (or touched) a moment ago is reused as it is: no touch, no settle
/// wait; once older than the window, a reuse touches it again.
#[test]
fn a_fresh_blob_is_reused_without_a_touch() {
    let backend = s3();
    let s3 = backend.as_s3().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let mut config = s3.config();
    config.reuse_fresh = rjs_webserver::store::blobs::s3::REUSE_FRESH;
    let blobs =
        BlobStore::open_at(spool.path(), &BlobLocation::S3(Box::new(config.clone()))).unwrap();
    let (name, _) = blobs.put(b"hot content").unwrap();
    let t0 = Instant::now();
    for _ in 0..5 {
        assert_eq!(blobs.put(b"hot content").unwrap().0, name);
    }
    let took = t0.elapsed();
    assert!(took < TOUCH_SETTLE, "five reuses took {took:?}");
    let touch = format!("grid/blobs-test/touch/{name}");
    assert!(
        !s3.server
            .keys(&s3.bucket, "grid/")
            .unwrap()
            .contains(&touch)
    );

    // A window of one second, passed: the reuse touches and waits.
    config.reuse_fresh = Duration::from_secs(1);
    let blobs = BlobStore::open_at(spool.path(), &BlobLocation::S3(Box::new(config))).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let t0 = Instant::now();
    blobs.put(b"hot content").unwrap();
    assert!(t0.elapsed() >= TOUCH_SETTLE);
    assert!(
        s3.server
            .keys(&s3.bucket, "grid/")
            .unwrap()
            .contains(&touch)
    );
}
