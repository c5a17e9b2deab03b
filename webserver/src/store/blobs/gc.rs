//! Garbage collection of blobs nothing refers to, safe with several web servers sharing one
//! bucket and one store.
//!
//! A blob is removed only when all of these hold, checked in this order:
//!
//! 1. its last creation or touch is older than the grace period (default an hour): by the
//!    listing, then again by a fresh look just before the next steps (folder: the file's
//!    modification time; S3: the later of the object's and of its touch marker
//!    `<prefix>/touch/<sha256>`'s `Last-Modified`);
//! 2. no request of this server pins it (see `server::pins`: committed, not yet recorded);
//! 3. the store does not refer to it ([`Store::blob_referenced`]);
//! 4. (S3) the DELETE can be sent within [`s3::DELETE_WINDOW`] of the fresh look in 1.
//!
//! Why this is safe. A server that uploads a blob either creates it (young: not removable for
//! the grace period, within which its request records the store row that refers to it) or
//! finds it stored already. Then it touches it (folder: mtime; S3: the touch marker) before
//! recording, and on S3 waits [`s3::TOUCH_SETTLE`] (> the delete window) and checks that the
//! blob is still there, storing it again if not:
//! - a collector that looks at the blob after the touch sees it young and keeps it;
//! - a collector that looked before the touch sends its DELETE within the delete window,
//!   so before the uploader's check, which then finds the blob gone and stores it again;
//! - once the row is recorded, step 3 keeps the blob for good.
//!
//! In one process the folder needs no waiting: pinning takes the same lock as steps 2-3 and
//! the removal, so a request that pins after the removal finds the blob gone and renames its
//! own file in. The folder belongs to one server (its data directory).
//!
//! What it assumes: the uploader's request records its row within the grace period of its
//! touch (requests take seconds; the grace is an hour), clocks of the servers and the object
//! store agree to well within the grace period, and a DELETE that timed out on the client
//! is not applied by the object store later than the settle time.

use std::time::{Duration, Instant, SystemTime};

use super::{BlobError, BlobStore, check_name, io_err, s3};
use crate::store::{Store, StoreError};

/// The shortest grace period a server accepts: the uploader's reuse of a fresh blob
/// ([`super::s3::REUSE_FRESH`]) and its request's time to record its row must fit well
/// within it.
pub const MIN_GRACE: Duration = Duration::from_secs(600);

/// Unreferenced blobs younger than this are kept.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60 * 60);
/// Blobs looked at in one sweep.
pub const DEFAULT_SWEEP_BATCH: usize = 1000;

/// Whether requests in this process pin a blob (committed, not yet recorded).
pub trait Pins: Send + Sync {
    /// Runs `remove` unless `sha256` is pinned, holding off new pins of it meanwhile; None if
    /// it is pinned.
    fn unless_pinned(
        &self,
        sha256: &str,
        remove: &mut dyn FnMut() -> Result<bool, GcError>,
    ) -> Option<Result<bool, GcError>>;
}

/// No requests (an administrator's command or a test).
#[derive(Debug, Default)]
pub struct NoPins;

impl Pins for NoPins {
    fn unless_pinned(
        &self,
        _: &str,
        remove: &mut dyn FnMut() -> Result<bool, GcError>,
    ) -> Option<Result<bool, GcError>> {
        Some(remove())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("collecting blobs")]
    Blobs(#[from] BlobError),
    #[error("checking whether blob {sha256} is referenced")]
    Store {
        sha256: String,
        #[source]
        source: StoreError,
    },
}

/// What one sweep does.
#[derive(Debug, Clone, Copy)]
pub struct SweepOptions {
    pub grace: Duration,
    /// Most blobs listed and looked at.
    pub batch: usize,
}

impl Default for SweepOptions {
    fn default() -> Self {
        SweepOptions {
            grace: DEFAULT_GRACE,
            batch: DEFAULT_SWEEP_BATCH,
        }
    }
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub examined: usize,
    pub removed: usize,
    pub young: usize,
    pub pinned: usize,
    pub referenced: usize,
    /// The sweep reached the last blob: the next one starts from the first.
    pub wrapped: bool,
}

/// Whether something last modified at `t` is younger than `grace` (a time in the future, a
/// clock ahead of ours, counts as young).
fn young(t: SystemTime, grace: Duration) -> bool {
    SystemTime::now()
        .duration_since(t)
        .map_or(true, |age| age < grace)
}

impl BlobStore {
    /// One bounded sweep: looks at up to `opts.batch` blobs after `cursor` (name order) and
    /// removes those that the rules above let go; advances `cursor` (None again after the
    /// last blob). Blocking.
    pub fn sweep(
        &self,
        store: &dyn Store,
        pins: &dyn Pins,
        opts: &SweepOptions,
        cursor: &mut Option<String>,
    ) -> Result<SweepReport, GcError> {
        let page = self.list_after(cursor.as_deref(), opts.batch.max(1))?;
        let mut report = SweepReport {
            wrapped: page.len() < opts.batch.max(1),
            ..SweepReport::default()
        };
        *cursor = if report.wrapped {
            None
        } else {
            page.last().map(|(name, _)| name.clone())
        };
        for (name, modified) in page {
            report.examined += 1;
            if young(modified, opts.grace) {
                report.young += 1;
                continue;
            }
            // A fresh look: touched since the listing?
            let looked = Instant::now();
            match self.last_touched(&name)? {
                None => continue, // gone meanwhile
                Some(t) if young(t, opts.grace) => {
                    report.young += 1;
                    continue;
                }
                Some(_) => {}
            }
            let mut referenced = false;
            let removed = pins.unless_pinned(&name, &mut || {
                referenced = store
                    .blob_referenced(&name)
                    .map_err(|source| GcError::Store {
                        sha256: name.clone(),
                        source,
                    })?;
                if referenced {
                    return Ok(false);
                }
                Ok(self.delete_before(&name, looked + s3::DELETE_WINDOW)?)
            });
            match removed {
                None => report.pinned += 1,
                Some(r) => {
                    if r? {
                        report.removed += 1;
                        tracing::info!(blob = %name, "removed an unreferenced blob");
                    } else if referenced {
                        report.referenced += 1;
                    }
                }
            }
        }
        Ok(report)
    }

    /// Up to `max` blobs after `after`, in name order, with their modification times.
    fn list_after(
        &self,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<(String, SystemTime)>, BlobError> {
        if let Some(after) = after {
            check_name(after)?;
        }
        if let Some(remote) = &self.remote {
            return remote.list_after(after, max);
        }
        let mut shards: Vec<String> = Vec::new();
        let entries = std::fs::read_dir(&self.blobs).map_err(io_err("listing", &self.blobs))?;
        for entry in entries {
            let entry = entry.map_err(io_err("listing", &self.blobs))?;
            if let Some(name) = entry.file_name().to_str() {
                let first = after.map_or("", |a| &a[..2]);
                if name.len() == 2 && name >= first {
                    shards.push(name.to_owned());
                }
            }
        }
        shards.sort();
        let mut out = Vec::new();
        for shard in shards {
            let dir = self.blobs.join(&shard);
            let mut names: Vec<(String, SystemTime)> = Vec::new();
            let entries = std::fs::read_dir(&dir).map_err(io_err("listing", &dir))?;
            for entry in entries {
                let entry = entry.map_err(io_err("listing", &dir))?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if !super::valid_blob_name(&name) || after.is_some_and(|a| name.as_str() <= a) {
                    continue;
                }
                let path = entry.path();
                match entry.metadata() {
                    Ok(m) if m.is_file() => {
                        let t = m.modified().map_err(io_err("inspecting", &path))?;
                        names.push((name, t));
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("inspecting", &path)(e)),
                }
            }
            names.sort();
            for n in names {
                if out.len() >= max {
                    return Ok(out);
                }
                out.push(n);
            }
        }
        Ok(out)
    }

    /// When the blob was last created or touched; None if it is not stored.
    pub fn last_touched(&self, sha256_hex: &str) -> Result<Option<SystemTime>, BlobError> {
        if let Some(remote) = &self.remote {
            check_name(sha256_hex)?;
            return remote.last_touched(sha256_hex);
        }
        let path = self.path_of(sha256_hex)?;
        match std::fs::metadata(&path) {
            Ok(m) => Ok(Some(m.modified().map_err(io_err("inspecting", &path))?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("inspecting", &path)(e)),
        }
    }

    /// Removes the blob if that can be done before `deadline` (the folder: always).
    fn delete_before(&self, sha256_hex: &str, deadline: Instant) -> Result<bool, BlobError> {
        match &self.remote {
            Some(remote) => remote.delete_before(sha256_hex, deadline),
            None => self.remove(sha256_hex),
        }
    }
}
