//! The node's bundle cache: bundles it has verified, kept by SHA-256 so that the next task of
//! a bundle is offered without sending it again. Bundles are verified again on every use (it
//! is cheap: hashing dominates), so a file changed on disk is refused, not run.

use std::fs;
use std::path::{Path, PathBuf};

use rjs_signer::bundle::hex;
use rjs_signer::bundle::is_sha256_hex as valid_sha;
use rjs_signer::fsutil::{self, FileError};

/// A bounded directory of bundle files named `<sha256>.rjs`.
#[derive(Debug)]
pub struct BundleCache {
    dir: PathBuf,
    max_files: usize,
    max_bytes: u64,
}

impl BundleCache {
    /// Opens (creating, 0700) the cache directory.
    pub fn open(dir: &Path, max_files: usize, max_bytes: u64) -> Result<Self, FileError> {
        fsutil::create_private_dir(dir)?;
        Ok(BundleCache {
            dir: dir.to_owned(),
            max_files,
            max_bytes,
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

    /// Stores a verified bundle whose SHA-256 (hex) the caller computed (atomically), then
    /// evicts the least recently used beyond the bounds.
    pub fn put(&self, sha: &str, bytes: &[u8]) -> Result<(), FileError> {
        if let Some(path) = self.path(sha)
            && !path.exists()
        {
            fsutil::write_atomic(&path, bytes, 0o600)?;
        }
        self.evict();
        Ok(())
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
    }
}
