//! Blobs committed by requests that have not recorded them yet ("pinned"), so that the
//! garbage collector never removes a blob that a request in this process is about to refer to.
//!
//! A blob is shared by content: two answers (or an answer and a bundle) with the same bytes
//! are one blob. Every request pins a blob's name before committing it and unpins it once its
//! answer (or bundle) is recorded or refused. A blob committed for nothing (a duplicate that
//! raced with the first answer, a lease lost meanwhile, a failed transaction) stays until the
//! collector (`store::blobs::gc`) finds it unreferenced and older than the grace period; the
//! collector checks the pins and the store's references and removes the blob while pinning
//! that name waits (other names are not held up), so within one process it never races with a
//! commit of the same content.
//! Across servers sharing a bucket the grace period and touches do that (see `gc`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::store::blobs::gc::{GcError, Pins};

/// The set of pinned blob names with their pin counts, and the names the collector is
/// deciding on.
#[derive(Debug, Default)]
pub struct BlobPins {
    state: Mutex<State>,
    /// Signalled when the collector is done with a name.
    collected: Condvar,
}

#[derive(Debug, Default)]
struct State {
    pinned: HashMap<String, usize>,
    /// Names the collector checks and may remove right now: pinning one of them waits (the
    /// lock is not held meanwhile: the check asks the store, the removal the object store).
    collecting: HashSet<String>,
}

/// One pin on a blob name; unpins when dropped.
#[derive(Debug)]
pub struct BlobPin {
    pins: Arc<BlobPins>,
    sha256: String,
}

impl BlobPins {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while it was held.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pins `sha256` (before the blob is committed). If the collector is deciding on this
    /// very name, waits until it is done (a blocking call: made on a blocking thread).
    pub fn pin(self: &Arc<Self>, sha256: &str) -> BlobPin {
        let mut state = self.lock();
        while state.collecting.contains(sha256) {
            state = self
                .collected
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
        *state.pinned.entry(sha256.to_owned()).or_insert(0) += 1;
        BlobPin {
            pins: self.clone(),
            sha256: sha256.to_owned(),
        }
    }

    /// Whether any request pins `sha256`.
    pub fn is_pinned(&self, sha256: &str) -> bool {
        self.lock().pinned.contains_key(sha256)
    }
}

/// The collector's claim on a name; released (and waiting pins woken) when dropped, also if
/// the removal panicked.
struct Collecting<'a> {
    pins: &'a BlobPins,
    sha256: &'a str,
}

impl Drop for Collecting<'_> {
    fn drop(&mut self) {
        self.pins.lock().collecting.remove(self.sha256);
        self.pins.collected.notify_all();
    }
}

impl Pins for BlobPins {
    fn unless_pinned(
        &self,
        sha256: &str,
        remove: &mut dyn FnMut() -> Result<bool, GcError>,
    ) -> Option<Result<bool, GcError>> {
        {
            let mut state = self.lock();
            if state.pinned.contains_key(sha256) || !state.collecting.insert(sha256.to_owned()) {
                return None;
            }
        }
        // Nobody can pin (and so commit) this content until the collector is done with it; a
        // later commit of it then stores it anew. Other names pin and unpin meanwhile.
        let _claim = Collecting { pins: self, sha256 };
        Some(remove())
    }
}

impl Drop for BlobPin {
    fn drop(&mut self) {
        let mut state = self.pins.lock();
        if let Some(n) = state.pinned.get_mut(&self.sha256) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.pinned.remove(&self.sha256);
            }
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

    /// While the collector decides on a name (asking the store, deleting the object), other
    /// names pin and unpin at once; the same name waits until it is done.
    #[test]
    fn only_the_name_being_collected_waits() {
        use std::sync::mpsc;
        let pins = Arc::new(BlobPins::default());
        let (entered, inside) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let collector = {
            let pins = pins.clone();
            std::thread::spawn(move || {
                pins.unless_pinned("a", &mut || {
                    entered.send(()).unwrap();
                    released.recv().unwrap();
                    Ok(true)
                })
            })
        };
        inside.recv().unwrap();
        // Another name: no wait, pinned and unpinned while the collector is busy.
        drop(pins.pin("b"));
        // The collector does not take a name it already holds.
        assert!(pins.unless_pinned("a", &mut || Ok(true)).is_none());
        // The same name: waits for the collector.
        let (pinned_tx, pinned) = mpsc::channel();
        let waiter = {
            let pins = pins.clone();
            std::thread::spawn(move || {
                let pin = pins.pin("a");
                pinned_tx.send(()).unwrap();
                pin
            })
        };
        assert!(pinned.recv_timeout(Duration::from_millis(300)).is_err());
        release.send(()).unwrap();
        assert!(matches!(collector.join().unwrap(), Some(Ok(true))));
        pinned.recv_timeout(Duration::from_secs(5)).unwrap();
        let pin = waiter.join().unwrap();
        assert!(pins.is_pinned("a"));
        assert!(pins.unless_pinned("a", &mut || Ok(true)).is_none());
        drop(pin);
        assert!(!pins.is_pinned("a"));
    }

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
