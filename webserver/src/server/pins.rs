//! Blobs committed by requests that have not recorded them yet ("pinned"), so that removing
//! an unreferenced blob never races with a request about to reference the same content.
//!
//! A blob is shared by content: two answers (or an answer and a bundle) with the same bytes
//! are one file. When a request commits a blob and then learns that its answer is not
//! recorded (a duplicate that raced with the first answer, a lease lost meanwhile, a failed
//! transaction), the blob may be unreferenced and should go, unless another request
//! committed the same content and is about to record it. Every request pins a blob's name
//! before committing it and unpins it once its answer (or bundle) is recorded or refused; a
//! blob is removed only while no request pins it and the store has no reference to it, both
//! checked under one lock that pinning also takes. This works within one server process
//! (the blob store belongs to one `serve`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::store::Store;
use crate::store::blobs::BlobStore;

/// The set of pinned blob names with their pin counts.
#[derive(Debug, Default)]
pub struct BlobPins {
    pinned: Mutex<HashMap<String, usize>>,
}

/// One pin on a blob name; unpins when dropped.
#[derive(Debug)]
pub struct BlobPin {
    pins: Arc<BlobPins>,
    /// None once unpinned by [`BlobPin::release_unreferenced`].
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

impl BlobPin {
    /// Unpins the blob and removes it if no other request pins it and the store does not
    /// refer to it (its content was committed for nothing). Blocking (store and file system).
    /// Returns whether it was removed; a failure leaves the blob (harmless: unreferenced) and
    /// is only logged.
    pub fn release_unreferenced(mut self, store: &dyn Store, blobs: &BlobStore) -> bool {
        let Some(sha) = self.sha256.take() else {
            return false;
        };
        let mut map = self.pins.lock();
        unpin(&mut map, &sha);
        if map.contains_key(&sha) {
            return false; // another request committed the same content and will record it
        }
        // Still under the lock: nobody can pin (and so commit) this content until the
        // blob is gone; a later commit of it then writes the file anew.
        match store.blob_referenced(&sha) {
            Ok(false) => {}
            Ok(true) => return false,
            Err(e) => {
                tracing::warn!(blob = %sha, error = %rjs_cmd::chain(&e),
                               "checking whether an unrecorded blob is referenced; kept");
                return false;
            }
        }
        match blobs.remove(&sha) {
            Ok(removed) => removed,
            Err(e) => {
                tracing::warn!(blob = %sha, error = %rjs_cmd::chain(&e),
                               "removing an unreferenced blob; kept");
                false
            }
        }
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
    use crate::store::sqlite::SqliteStore;

    #[test]
    fn a_blob_goes_only_when_unpinned_and_unreferenced() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("rjs.db")).unwrap();
        let blobs = BlobStore::open(&dir.path().join("blobs")).unwrap();
        let pins = Arc::new(BlobPins::default());
        let (sha, _) = blobs.put(b"same content").unwrap();

        // Two requests committed the same content; the first gives up on it while the
        // second has not recorded it yet: the blob stays.
        let first = pins.pin(&sha);
        let second = pins.pin(&sha);
        assert!(!first.release_unreferenced(&store, &blobs));
        assert!(blobs.exists(&sha).unwrap());
        assert!(pins.is_pinned(&sha));
        // The second gives up too: nothing refers to it, it goes.
        assert!(second.release_unreferenced(&store, &blobs));
        assert!(!blobs.exists(&sha).unwrap());
        assert!(!pins.is_pinned(&sha));

        // A pin dropped (its answer was recorded) just unpins.
        let (sha, _) = blobs.put(b"kept").unwrap();
        drop(pins.pin(&sha));
        assert!(!pins.is_pinned(&sha));
        assert!(blobs.exists(&sha).unwrap());

        // Referenced by a bundle: kept.
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
        assert!(!pins.pin(&sha).release_unreferenced(&store, &blobs));
        assert!(blobs.exists(&sha).unwrap());
    }
}
