//! The node's bundle caches, so that the next task of a bundle is offered without sending it
//! again and runs without verifying it again:
//!
//! * [`BundleCache`] on disk: verified bundle files by SHA-256, re-hashed whenever one is read
//!   back (a file changed on disk is dropped, not run), then verified again;
//! * in memory, [`ReadyBundle`]s: what a verified bundle's tasks need (manifest, signer,
//!   module, inputs), kept for the most recently used bundles, so that an offer of one of them
//!   touches neither the disk nor the verifier. A `ReadyBundle` can only be made from a
//!   [`VerifiedBundle`].

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rjs_signer::bundle::hex;
use rjs_signer::bundle::is_sha256_hex as valid_sha;
use rjs_signer::fsutil::{self, FileError};
use rjs_signer::{Manifest, Signer, VerifiedBundle};

use crate::job::{ModuleHash, TaskSpec};

/// Bundles kept ready in memory: at most this many, and this many bytes of modules and inputs.
pub const READY_ENTRIES: usize = 16;
pub const READY_BYTES: u64 = 256 << 20;
/// How often a bundle used from memory has its file's mtime refreshed (the disk cache evicts
/// the least recently touched files).
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// A verified bundle's parts, ready to run its tasks: made only from a [`VerifiedBundle`].
#[derive(Debug)]
pub struct ReadyBundle {
    sha256: [u8; 32],
    sha_hex: String,
    manifest: Manifest,
    signer: Signer,
    module_sha256: ModuleHash,
    module: Arc<Vec<u8>>,
    inputs: Arc<Vec<(String, Vec<u8>)>>,
}

impl ReadyBundle {
    /// The parts of `verified`, whose bundle file hashes to `sha256`.
    pub fn new(sha256: [u8; 32], verified: VerifiedBundle) -> ReadyBundle {
        let parts = verified.into_parts();
        ReadyBundle {
            sha256,
            sha_hex: hex(&sha256),
            manifest: parts.manifest,
            signer: parts.signer,
            module_sha256: parts.module_sha256.into(),
            module: Arc::new(parts.module),
            inputs: Arc::new(parts.inputs),
        }
    }
    /// SHA-256 of the bundle file (the bundle id).
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }
    /// The bundle id in lowercase hex.
    pub fn sha_hex(&self) -> &str {
        &self.sha_hex
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn signer(&self) -> &Signer {
        &self.signer
    }
    /// Task `task_index` of this bundle, for the sandbox (the index is not checked here).
    pub fn task(&self, task_index: u32) -> TaskSpec {
        TaskSpec::from_manifest(
            &self.manifest,
            self.sha256,
            self.module_sha256,
            self.module.clone(),
            self.inputs.clone(),
            task_index,
        )
    }
    /// Bytes held: the module and the inputs.
    pub fn size(&self) -> u64 {
        self.module.len() as u64 + self.inputs.iter().map(|(_, b)| b.len() as u64).sum::<u64>()
    }
}

struct ReadyEntry {
    bundle: Arc<ReadyBundle>,
    last_used: u64,
    touched: Instant,
}

#[derive(Default)]
struct Ready {
    entries: Vec<ReadyEntry>,
    clock: u64,
}

/// A bounded directory of bundle files named `<sha256>.rjs`.
#[derive(Debug)]
pub struct BundleCache {
    dir: PathBuf,
    max_files: usize,
    max_bytes: u64,
    ready: Mutex<Ready>,
}

impl std::fmt::Debug for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ready")
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl BundleCache {
    /// Opens (creating, 0700) the cache directory.
    pub fn open(dir: &Path, max_files: usize, max_bytes: u64) -> Result<Self, FileError> {
        fsutil::create_private_dir(dir)?;
        Ok(BundleCache {
            dir: dir.to_owned(),
            max_files,
            max_bytes,
            ready: Mutex::new(Ready::default()),
        })
    }

    fn path(&self, sha: &str) -> Option<PathBuf> {
        valid_sha(sha).then(|| self.dir.join(format!("{sha}.rjs")))
    }

    /// The cached bundle with this SHA-256 (hex), if present and at most `limit` bytes.
    pub fn get(&self, sha: &str, limit: u64) -> Option<Vec<u8>> {
        let path = self.path(sha)?;
        let bytes = fsutil::read_bounded(&path, limit).ok()?;
        if hex(&rjs_signer::bundle_id(&bytes)) != sha {
            // Damaged on disk: forget it, so the node asks for the bundle again.
            let _ = fs::remove_file(&path);
            return None;
        }
        // Touch so eviction keeps recently used bundles.
        let _ = fs::File::open(&path).and_then(|f| f.set_modified(std::time::SystemTime::now()));
        Some(bytes)
    }

    pub fn contains(&self, sha: &str) -> bool {
        self.path(sha).is_some_and(|p| p.is_file())
    }

    /// Stores a verified bundle whose SHA-256 (hex) the caller computed (atomically) unless
    /// it is already there; a new file evicts the least recently used beyond the bounds.
    pub fn put(&self, sha: &str, bytes: &[u8]) -> Result<(), FileError> {
        if let Some(path) = self.path(sha)
            && !path.exists()
        {
            fsutil::write_atomic(&path, bytes, 0o600)?;
            self.evict();
        }
        Ok(())
    }

    fn ready_state(&self) -> std::sync::MutexGuard<'_, Ready> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bundle with this SHA-256 (hex), if it is kept ready in memory. No I/O, except
    /// refreshing its file's mtime once a minute.
    pub fn ready(&self, sha: &str) -> Option<Arc<ReadyBundle>> {
        let mut st = self.ready_state();
        st.clock += 1;
        let clock = st.clock;
        let e = st.entries.iter_mut().find(|e| e.bundle.sha_hex == sha)?;
        e.last_used = clock;
        let bundle = e.bundle.clone();
        let touch = e.touched.elapsed() >= TOUCH_EVERY;
        if touch {
            e.touched = Instant::now();
        }
        drop(st);
        if touch && let Some(path) = self.path(sha) {
            let _ =
                fs::File::open(&path).and_then(|f| f.set_modified(std::time::SystemTime::now()));
        }
        Some(bundle)
    }

    /// Keeps a verified bundle ready in memory, dropping the least recently used beyond
    /// [`READY_ENTRIES`] and [`READY_BYTES`] (a bundle larger than that is not kept).
    pub fn keep_ready(&self, bundle: Arc<ReadyBundle>) {
        if bundle.size() > READY_BYTES {
            return;
        }
        let mut st = self.ready_state();
        st.clock += 1;
        let clock = st.clock;
        if let Some(e) = st
            .entries
            .iter_mut()
            .find(|e| e.bundle.sha_hex == bundle.sha_hex)
        {
            e.last_used = clock;
            return;
        }
        st.entries.push(ReadyEntry {
            bundle,
            last_used: clock,
            touched: Instant::now(),
        });
        st.entries.sort_by_key(|e| std::cmp::Reverse(e.last_used));
        let mut total = 0u64;
        let mut kept = 0usize;
        st.entries.retain(|e| {
            total = total.saturating_add(e.bundle.size());
            kept += 1;
            kept <= READY_ENTRIES && total <= READY_BYTES
        });
    }

    fn evict(&self) {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = rd
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".rjs"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        files.sort_by_key(|f| std::cmp::Reverse(f.0));
        let mut total = 0u64;
        for (i, (_, len, path)) in files.iter().enumerate() {
            total += len;
            if i >= self.max_files || total > self.max_bytes {
                let _ = fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(c: &BundleCache, bytes: &[u8]) -> String {
        let sha = hex(&rjs_signer::bundle_id(bytes));
        c.put(&sha, bytes).unwrap();
        sha
    }

    #[test]
    fn stores_bounded_and_validates_names() {
        let dir = tempfile::tempdir().unwrap();
        let c = BundleCache::open(&dir.path().join("b"), 2, 1 << 20).unwrap();
        let a = put(&c, b"aaa");
        assert!(c.contains(&a));
        assert_eq!(c.get(&a, 100).unwrap(), b"aaa");
        assert_eq!(c.get(&a, 2), None, "over the limit");
        assert_eq!(c.get("../../etc/passwd", 100), None);
        // A damaged file is dropped, not served.
        let damaged = put(&c, b"ccc");
        fs::write(dir.path().join("b").join(format!("{damaged}.rjs")), b"cc!").unwrap();
        assert_eq!(c.get(&damaged, 100), None);
        assert!(!c.contains(&damaged));
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = put(&c, b"bbb");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let d = put(&c, b"ddd");
        assert!(!c.contains(&a), "oldest evicted");
        assert!(c.contains(&b) && c.contains(&d));
        // Storing a bundle already there evicts nothing.
        std::thread::sleep(std::time::Duration::from_millis(20));
        c.put(&b, b"bbb").unwrap();
        assert!(c.contains(&b) && c.contains(&d));
    }

    fn ready_bundle(key: &rjs_signer::KeyPair, name: &str) -> Arc<ReadyBundle> {
        let manifest = serde_json::json!({"format": 1, "name": name, "entry": "job.wasm"});
        let mut b = rjs_signer::BundleBuilder::new();
        b.add("manifest.json", manifest.to_string().into_bytes())
            .unwrap();
        b.add("job.wasm", rjs_signer::wasm::empty_command(&[]))
            .unwrap();
        let bytes = b.sign(key, "author", 1).unwrap();
        let verified =
            rjs_signer::verify_bytes(&bytes, &rjs_signer::VerifyLimits::default()).unwrap();
        Arc::new(ReadyBundle::new(rjs_signer::bundle_id(&bytes), verified))
    }

    #[test]
    fn keeps_the_most_recently_used_ready() {
        let dir = tempfile::tempdir().unwrap();
        let c = BundleCache::open(&dir.path().join("b"), 2, 1 << 20).unwrap();
        let key = rjs_signer::KeyPair::generate();
        let first = ready_bundle(&key, "first");
        assert_eq!(first.sha_hex(), hex(first.sha256()));
        assert_eq!(first.manifest().name, "first");
        assert!(c.ready(first.sha_hex()).is_none());
        c.keep_ready(first.clone());
        let got = c.ready(first.sha_hex()).unwrap();
        assert!(Arc::ptr_eq(&got, &first));
        // Used all along, `first` outlives older bundles.
        for i in 0..READY_ENTRIES + 4 {
            c.keep_ready(ready_bundle(&key, &format!("b{i}")));
            assert!(c.ready(first.sha_hex()).is_some(), "used recently");
        }
        assert_eq!(c.ready_state().entries.len(), READY_ENTRIES);
        // Unused, it is dropped once READY_ENTRIES newer ones came.
        for i in 0..READY_ENTRIES - 1 {
            c.keep_ready(ready_bundle(&key, &format!("c{i}")));
        }
        assert!(c.ready(first.sha_hex()).is_some());
        for i in 0..READY_ENTRIES {
            c.keep_ready(ready_bundle(&key, &format!("d{i}")));
        }
        assert!(c.ready(first.sha_hex()).is_none(), "least recently used");
        assert_eq!(c.ready_state().entries.len(), READY_ENTRIES);
    }
}
