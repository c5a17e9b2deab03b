//! Blobs committed by requests that have not recorded them yet ("pinned"), so that the
//! garbage collector never removes a blob that a request in this process is about to refer to.
//!
//! A blob is shared by content: two answers (or an answer and a bundle) with the same bytes
//! are one blob. Every request pins a blob's name before committing it and unpins it once its
//! answer (or bundle) is recorded or refused. A blob committed for nothing (a duplicate that
//! raced with the first answer, a lease lost meanwhile, a failed transaction) stays until the
//! collector (`store::blobs::gc`) finds it unreferenced and older than the grace period; the
//! collector checks the pins, the store's references and removes the blob under the lock that
//! pinning takes, so within one process it never races with a commit of the same content.
//! Across servers sharing a bucket the grace period and touches do that (see `gc`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::store::blobs::gc::{GcError, Pins};

/// The set of pinned blob names with their pin counts.
#[derive(Debug, Default)]
pub struct BlobPins {
    pinned: Mutex<HashMap<String, usize>>,
}

/// One pin on a blob name; unpins when dropped.
#[derive(Debug)]
pub struct BlobPin {
    pins: Arc<BlobPins>,
    /// None once unpinned.
    sha256: Option<String>,
}

impl BlobPins {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        // The map stays consistent whatever panicked while it was held.
        self.pinned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pins `sha256` (before the blob is committed).
    pub fn pin(self: &Arc<Self>, sha256: &str) -> BlobPin {
        *self.lock().entry(sha256.to_owned()).or_insert(0) += 1;
        BlobPin {
            pins: self.clone(),
            sha256: Some(sha256.to_owned()),
        }
    }

    /// Whether any request pins `sha256`.
    pub fn is_pinned(&self, sha256: &str) -> bool {
        self.lock().contains_key(sha256)
    }
}

fn unpin(map: &mut HashMap<String, usize>, sha256: &str) {
    if let Some(n) = map.get_mut(sha256) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(sha256);
        }
    }
}

impl Pins for BlobPins {
    fn unless_pinned(
        &self,
        sha256: &str,
        remove: &mut dyn FnMut() -> Result<bool, GcError>,
    ) -> Option<Result<bool, GcError>> {
        let map = self.lock();
        if map.contains_key(sha256) {
            return None;
        }
        // Still under the lock: nobody can pin (and so commit) this content until the
        // collector is done with it; a later commit of it then stores it anew.
        let removed = remove();
        drop(map);
        Some(removed)
    }
}

impl Drop for BlobPin {
    fn drop(&mut self) {
        if let Some(sha) = self.sha256.take() {
            unpin(&mut self.pins.lock(), &sha);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::blobs::BlobStore;
    use crate::store::blobs::gc::SweepOptions;
    use crate::store::sqlite::SqliteStore;
    use std::time::Duration;

    #[test]
    fn the_collector_keeps_pinned_and_referenced_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("rjs.db")).unwrap();
        let blobs = BlobStore::open(&dir.path().join("blobs")).unwrap();
        let pins = Arc::new(BlobPins::default());
        let now = SweepOptions {
            grace: Duration::ZERO,
            batch: 100,
        };
        let (sha, _) = blobs.put(b"same content").unwrap();

        // Two requests committed the same content; one gives up on it while the other has
        // not recorded it yet: the blob stays.
        let first = pins.pin(&sha);
        let second = pins.pin(&sha);
        drop(first);
        let report = blobs.sweep(&store, pins.as_ref(), &now, &mut None).unwrap();
        assert_eq!((report.pinned, report.removed), (1, 0));
        assert!(blobs.exists(&sha).unwrap());
        // The second gives up too: nothing refers to it, it goes.
        drop(second);
        assert!(!pins.is_pinned(&sha));
        let report = blobs.sweep(&store, pins.as_ref(), &now, &mut None).unwrap();
        assert_eq!(report.removed, 1);
        assert!(!blobs.exists(&sha).unwrap());

        // Referenced by a bundle: kept.
        let (sha, _) = blobs.put(b"kept").unwrap();
        let author = store.add_author("a", "k", "f", 1).unwrap().id;
        store
            .submit(&crate::store::NewSubmission {
                author_id: author,
                bundle_id: &sha,
                name: "job",
                tasks: 1,
                group: "/compute",
                size: 4,
                resubmit: false,
                now: 1,
                nonce: None,
            })
            .unwrap();
        let report = blobs.sweep(&store, pins.as_ref(), &now, &mut None).unwrap();
        assert_eq!((report.referenced, report.removed), (1, 0));
        assert!(blobs.exists(&sha).unwrap());
        assert!(store.blob_referenced(&sha).unwrap());
    }
}
