//! Content-addressed store for bundles and answer archives: one interface, two backends.
//!
//! Every upload is spooled to a temporary file in the store's local directory (hashed while
//! written, checked from the file), then committed to the backend:
//!
//! - the folder (the default): renamed into `blobs/ab/<sha256>` below;
//! - S3-compatible object storage ([`s3`]): streamed from the file to the object
//!   `<prefix>/blobs/<sha256>`, create-only, multipart above a part size.
//!
//! Reads stream from either ([`BlobStore::open_blob`]). Unreferenced blobs are removed only
//! by the garbage collector ([`gc`]), never on the spot, and only once they are older than a
//! grace period, so that several web servers can share one bucket.
//!
//! The folder's layout under the store's directory (all 0700, files 0600):
//!
//! ```text
//! blobs/ab/abcdef…   a blob, named by the SHA-256 (64 lowercase hex digits) of its contents
//! tmp/up-…           uploads being written; never visible under blobs/
//! ```
//!
//! A blob appears only by `rename` of a complete, fsynced temporary file (then the directory
//! is fsynced too), so a reader never sees a partial blob and a crash mid-upload leaves only a
//! file in `tmp/`, which [`BlobStore::clean_tmp`] removes at start-up once it is stale. Blob
//! names are always validated before a path is built from them.

pub mod gc;
pub mod s3;

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rjs_signer::bundle::hex;
use rjs_signer::fsutil::{self, FileError};
use sha2::{Digest, Sha256};

/// An upload's temporary file not written to for this long was interrupted (see
/// [`BlobStore::clean_tmp`]): longer than any upload waits between two chunks.
pub const STALE_UPLOAD: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// The process that writes an upload's temporary file (`up-<pid>-<random>`), if the name says.
fn upload_writer(name: &std::ffi::OsStr) -> Option<u32> {
    name.to_str()?
        .strip_prefix("up-")?
        .split_once('-')?
        .0
        .parse()
        .ok()
}

/// Whether process `pid` exists (on this host).
fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Buffer between upload chunks and the temporary file.
const WRITE_BUFFER: usize = 64 * 1024;

/// Blob store failures.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// A blob name that is not 64 lowercase hex digits (never used to build a path).
    #[error("invalid blob name {0:?} (64 lowercase hex digits expected)")]
    BadName(String),
    #[error("blob {sha256} not found ({location})")]
    NotFound { sha256: String, location: String },
    /// The contents exceed the limit; nothing of it is kept.
    #[error("more than {limit} bytes")]
    TooLarge { limit: u64 },
    /// The writer already failed (too large or an I/O error) and was discarded.
    #[error("the upload to {path} was already abandoned after an error")]
    Abandoned { path: PathBuf },
    /// A file operation failed (naming the path).
    #[error(transparent)]
    File(FileError),
    /// A request to the object store failed.
    #[error("{what} blob {name} in the object store")]
    Remote {
        what: &'static str,
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The object store's configuration is unusable.
    #[error("blob store configuration: {0}")]
    Config(String),
    /// Setting up the object store's client failed (`what`, for the reason in `source`).
    #[error("blob store configuration: {what}")]
    Setup {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BlobError + 'a {
    move |source| BlobError::File(FileError::io(what, path, source))
}

/// Whether `name` is a blob name: exactly 64 lowercase hex digits.
pub fn valid_blob_name(name: &str) -> bool {
    rjs_signer::bundle::is_sha256_hex(name)
}

fn check_name(name: &str) -> Result<(), BlobError> {
    if valid_blob_name(name) {
        Ok(())
    } else {
        // Untrusted input: quote at most a short prefix of it.
        Err(BlobError::BadName(name.chars().take(80).collect()))
    }
}

impl From<FileError> for BlobError {
    fn from(e: FileError) -> Self {
        match e {
            FileError::TooLarge { limit, .. } => BlobError::TooLarge { limit },
            e => BlobError::File(e),
        }
    }
}

/// Creates `dir` with mode 0700; Ok(true) if it was created, Ok(false) if it existed.
fn create_private_dir(dir: &Path, recursive: bool) -> Result<bool, BlobError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(recursive);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    if !recursive && dir.is_dir() {
        return Ok(false);
    }
    match builder.create(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(false),
        Err(e) => Err(io_err("creating directory", dir)(e)),
    }
}

/// Sets a blob file's modification time (its age for the collector) to now.
fn touch(path: &Path) -> Result<(), BlobError> {
    File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now()))
        .map_err(io_err("touching", path))
}

/// Makes a directory's entries (a rename or a new file) durable.
fn sync_dir(dir: &Path) -> Result<(), BlobError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))
}

/// The content-addressed store: a folder, or a bucket with a local folder for spooling.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    blobs: PathBuf,
    tmp: PathBuf,
    /// The bucket; None: the blobs are in `blobs/`.
    remote: Option<Arc<s3::S3Blobs>>,
}

/// A blob opened for reading, with its size.
#[derive(Debug)]
pub enum BlobRead {
    File(File, u64),
    Stream(s3::BlobStream),
}

impl BlobRead {
    pub fn size(&self) -> u64 {
        match self {
            BlobRead::File(_, size) => *size,
            BlobRead::Stream(s) => s.size,
        }
    }
}

/// Where blobs go: `--blobs folder` or `--blobs s3://bucket/prefix`.
#[derive(Debug, Clone, Default)]
pub enum BlobLocation {
    /// `blobs/` in the data directory.
    #[default]
    Folder,
    S3(Box<s3::S3Config>),
}

impl BlobStore {
    /// Opens the store in `dir`, creating `dir`, `dir/blobs` and `dir/tmp` (mode 0700) as
    /// needed. Call [`clean_tmp`](Self::clean_tmp) at start-up, before any upload.
    pub fn open(dir: &Path) -> Result<Self, BlobError> {
        create_private_dir(dir, true)?;
        let store = BlobStore {
            root: dir.to_owned(),
            blobs: dir.join("blobs"),
            tmp: dir.join("tmp"),
            remote: None,
        };
        create_private_dir(&store.blobs, false)?;
        create_private_dir(&store.tmp, false)?;
        Ok(store)
    }

    /// Opens the store at `location`, spooling uploads (and keeping folder blobs) in `dir`.
    /// A bucket is checked to answer.
    pub fn open_at(dir: &Path, location: &BlobLocation) -> Result<Self, BlobError> {
        let mut store = Self::open(dir)?;
        if let BlobLocation::S3(config) = location {
            let remote = s3::S3Blobs::open((**config).clone())?;
            remote.check()?;
            store.remote = Some(Arc::new(remote));
        }
        Ok(store)
    }

    /// Where the blobs are, for messages: the folder or `s3://bucket/prefix`.
    pub fn describe(&self) -> String {
        match &self.remote {
            Some(r) => r.config().url(),
            None => self.blobs.display().to_string(),
        }
    }

    /// Whether the blobs are in an object store.
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The directory for uploads in progress.
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// Where the blob named `sha256_hex` is (or would be): `blobs/ab/abcdef…`. Refuses
    /// anything but 64 lowercase hex digits.
    pub fn path_of(&self, sha256_hex: &str) -> Result<PathBuf, BlobError> {
        check_name(sha256_hex)?;
        Ok(self.blobs.join(&sha256_hex[..2]).join(sha256_hex))
    }

    /// Whether the blob is stored.
    pub fn exists(&self, sha256_hex: &str) -> Result<bool, BlobError> {
        if let Some(remote) = &self.remote {
            check_name(sha256_hex)?;
            return Ok(remote.head(sha256_hex)?.is_some());
        }
        let path = self.path_of(sha256_hex)?;
        match fs::metadata(&path) {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("checking", &path)(e)),
        }
    }

    /// Opens a blob for reading: a file, or a download streaming in chunks. Blocking.
    pub fn open_blob(&self, sha256_hex: &str) -> Result<BlobRead, BlobError> {
        if let Some(remote) = &self.remote {
            check_name(sha256_hex)?;
            return remote.open_stream(sha256_hex).map(BlobRead::Stream);
        }
        let path = self.path_of(sha256_hex)?;
        let file = File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                BlobError::NotFound {
                    sha256: sha256_hex.to_owned(),
                    location: path.display().to_string(),
                }
            } else {
                io_err("opening", &path)(e)
            }
        })?;
        let size = file.metadata().map_err(io_err("reading", &path))?.len();
        Ok(BlobRead::File(file, size))
    }

    /// Reads a whole blob, refusing one larger than `limit` bytes (without reading past it).
    pub fn read(&self, sha256_hex: &str, limit: u64) -> Result<Vec<u8>, BlobError> {
        if let Some(remote) = &self.remote {
            check_name(sha256_hex)?;
            return remote.read(sha256_hex, limit);
        }
        let path = self.path_of(sha256_hex)?;
        fsutil::read_bounded(&path, limit).map_err(|e| match e {
            FileError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                BlobError::NotFound {
                    sha256: sha256_hex.to_owned(),
                    location: path.display().to_string(),
                }
            }
            e => e.into(),
        })
    }

    /// Starts an upload of at most `max_bytes` bytes into a new temporary file.
    pub fn writer(&self, max_bytes: u64) -> Result<BlobWriter, BlobError> {
        let (path, file) = fsutil::create_temp_in(&self.tmp, "up-", 0o600)?;
        Ok(BlobWriter {
            store: self.clone(),
            file: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            tmp_path: path,
            tmp_live: true,
            synced: false,
            hasher: Sha256::new(),
            size: 0,
            max_bytes,
        })
    }

    /// Stores `bytes` as a blob; returns (SHA-256 hex, size).
    pub fn put(&self, bytes: &[u8]) -> Result<(String, u64), BlobError> {
        let mut w = self.writer(bytes.len() as u64)?;
        w.write(bytes)?;
        w.commit()
    }

    /// Removes a blob at once, whatever its age; Ok(false) if it was not there. The shard
    /// directory is synced so that the removal is durable. Only for tests and tools: the
    /// server removes blobs through the collector ([`gc`]).
    pub fn remove(&self, sha256_hex: &str) -> Result<bool, BlobError> {
        if let Some(remote) = &self.remote {
            check_name(sha256_hex)?;
            return remote.delete(sha256_hex);
        }
        let path = self.path_of(sha256_hex)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("removing", &path)(e)),
        }
        if let Some(shard) = path.parent() {
            sync_dir(shard)?;
        }
        Ok(true)
    }

    /// Removes the files left in `tmp/` by uploads that were interrupted (a crash), at
    /// start-up: those of a process that is gone (a temporary file is named after the process
    /// writing it, `up-<pid>-…`), or of this process's pid (an earlier process with the same
    /// pid: this one has written nothing yet), or not written to for [`STALE_UPLOAD`].
    /// Several servers may share the folder (one data directory on one host), so an upload
    /// another live server is writing is left alone. Returns how many were removed.
    pub fn clean_tmp(&self) -> Result<usize, BlobError> {
        self.clean_tmp_older_than(STALE_UPLOAD)
    }

    /// [`clean_tmp`](Self::clean_tmp) with another age for uploads of live processes.
    pub fn clean_tmp_older_than(&self, age: std::time::Duration) -> Result<usize, BlobError> {
        let mut removed = 0;
        let entries = fs::read_dir(&self.tmp).map_err(io_err("listing", &self.tmp))?;
        for entry in entries {
            let entry = entry.map_err(io_err("listing", &self.tmp))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(io_err("inspecting", &path))?;
            if kind.is_dir() {
                continue; // never created by us: leave it to the operator
            }
            let written = entry
                .metadata()
                .and_then(|m| m.modified())
                .map_err(io_err("inspecting", &path))?;
            let writer_alive = upload_writer(&entry.file_name())
                .is_some_and(|pid| pid != std::process::id() && process_alive(pid));
            if writer_alive && written.elapsed().is_ok_and(|a| a < age) {
                continue; // being written by another server
            }
            match fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing", &path)(e)),
            }
        }
        if removed > 0 {
            sync_dir(&self.tmp)?;
        }
        Ok(removed)
    }
}

/// The bytes of an upload, mapped read-only ([`BlobWriter::map_written`]); the writer can
/// neither write nor commit while this lives.
#[derive(Debug)]
pub struct MappedUpload<'a> {
    map: memmap2::Mmap,
    _writer: std::marker::PhantomData<&'a mut BlobWriter>,
}

impl std::ops::Deref for MappedUpload<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map
    }
}

/// An upload in progress: a temporary file being written and hashed. Nothing is visible in
/// the store until [`commit`](Self::commit); dropping the writer uncommitted, or exceeding the
/// size limit, removes the temporary file.
#[derive(Debug)]
pub struct BlobWriter {
    store: BlobStore,
    /// None once the upload failed (the temporary file is then already removed).
    file: Option<BufWriter<File>>,
    tmp_path: PathBuf,
    /// The temporary file exists and is this writer's to remove.
    tmp_live: bool,
    /// Everything written so far is fsynced.
    synced: bool,
    hasher: Sha256,
    size: u64,
    max_bytes: u64,
}

impl BlobWriter {
    /// Appends a chunk. Past the size limit the upload is abandoned (`TooLarge`, temporary
    /// file removed at once); after any error further calls fail with `Abandoned`.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        let Some(file) = self.file.as_mut() else {
            return Err(self.abandoned());
        };
        let new_size = self.size.saturating_add(chunk.len() as u64);
        if new_size > self.max_bytes {
            self.discard();
            return Err(BlobError::TooLarge {
                limit: self.max_bytes,
            });
        }
        if let Err(e) = file.write_all(chunk) {
            let err = io_err("writing", &self.tmp_path)(e);
            self.discard();
            return Err(err);
        }
        self.hasher.update(chunk);
        self.size = new_size;
        if !chunk.is_empty() {
            self.synced = false;
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// SHA-256 (lowercase hex) of the bytes written so far.
    pub fn sha256_hex(&self) -> String {
        hex(&self.hasher.clone().finalize())
    }

    /// The temporary file (complete on disk only after [`flush`](Self::flush)). For checking
    /// the contents before committing; never hand this path out.
    pub fn temp_path(&self) -> &Path {
        &self.tmp_path
    }

    /// Writes buffered bytes through to the temporary file.
    pub fn flush(&mut self) -> Result<(), BlobError> {
        let Some(file) = self.file.as_mut() else {
            return Err(self.abandoned());
        };
        if let Err(e) = file.flush() {
            let err = io_err("writing", &self.tmp_path)(e);
            self.discard();
            return Err(err);
        }
        Ok(())
    }

    /// Completes the temporary file (flush, fsync) and maps it read-only, e.g. to verify a
    /// bundle before committing it without holding it in memory: the kernel pages it in and
    /// out as it is read. The map must be dropped before the writer is committed or dropped.
    ///
    /// A mapped file that shrinks under the map makes reads of the lost pages raise SIGBUS.
    /// That cannot happen here: the temporary file is private to this server (in `tmp/`,
    /// mode 0600 in a 0700 directory, a random name), only this writer writes it and it
    /// writes nothing more while the map lives (the map borrows the writer mutably), and
    /// [`BlobStore::clean_tmp`] removes only files not written to for [`STALE_UPLOAD`]
    /// (longer than a request may stall). The map's length is checked against
    /// the bytes written.
    pub fn map_written(&mut self) -> Result<MappedUpload<'_>, BlobError> {
        self.sync()?;
        let file = File::open(&self.tmp_path).map_err(io_err("opening", &self.tmp_path))?;
        // SAFETY: see above: nothing modifies or truncates the file while the map lives.
        let map =
            unsafe { memmap2::Mmap::map(&file) }.map_err(io_err("mapping", &self.tmp_path))?;
        if map.len() as u64 != self.size {
            return Err(io_err("mapping", &self.tmp_path)(io::Error::other(
                format!("mapped {} bytes, wrote {}", map.len(), self.size),
            )));
        }
        Ok(MappedUpload {
            map,
            _writer: std::marker::PhantomData,
        })
    }

    /// Flushes and fsyncs the temporary file (once: [`commit`](Self::commit) then skips it).
    fn sync(&mut self) -> Result<(), BlobError> {
        self.flush()?;
        if self.synced {
            return Ok(());
        }
        let Some(file) = self.file.as_mut() else {
            return Err(self.abandoned());
        };
        if let Err(e) = file.get_ref().sync_all() {
            let err = io_err("syncing", &self.tmp_path)(e);
            self.discard();
            return Err(err);
        }
        self.synced = true;
        Ok(())
    }

    /// Makes the upload a blob: fsync, rename to `blobs/ab/<sha256>` (or just drop the
    /// temporary file if that blob already exists), fsync the directory. Returns (SHA-256 hex,
    /// size).
    pub fn commit(mut self) -> Result<(String, u64), BlobError> {
        let Some(buffered) = self.file.take() else {
            return Err(self.abandoned());
        };
        let file = buffered
            .into_inner()
            .map_err(|e| io_err("writing", &self.tmp_path)(e.into_error()))?;
        if !self.synced {
            file.sync_all().map_err(io_err("syncing", &self.tmp_path))?;
        }
        drop(file);

        let sha256 = self.sha256_hex();
        if let Some(remote) = self.store.remote.clone() {
            // Streamed from the file; the file goes when the writer is dropped.
            remote.commit_file(&self.tmp_path, &sha256, self.size)?;
            return Ok((sha256, self.size));
        }
        let dest = self.store.path_of(&sha256)?;
        let shard = dest
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| self.store.blobs.clone());
        if fs::symlink_metadata(&dest).is_ok() {
            // Same contents already stored: keep the existing blob, young again (see `gc`).
            touch(&dest)?;
            fs::remove_file(&self.tmp_path).map_err(io_err("removing", &self.tmp_path))?;
            self.tmp_live = false;
            return Ok((sha256, self.size));
        }
        if create_private_dir(&shard, false)? {
            sync_dir(&self.store.blobs)?;
        }
        fs::rename(&self.tmp_path, &dest).map_err(io_err("renaming into", &dest))?;
        self.tmp_live = false;
        sync_dir(&shard)?;
        Ok((sha256, self.size))
    }

    fn abandoned(&self) -> BlobError {
        BlobError::Abandoned {
            path: self.tmp_path.clone(),
        }
    }

    /// Abandons the upload: closes and removes the temporary file.
    fn discard(&mut self) {
        self.file = None;
        if self.tmp_live {
            self.tmp_live = false;
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Uncommitted, or failed mid-commit: remove the temporary file.
        self.discard();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob store in a new temporary directory (removed when dropped).
    fn temp_store() -> (tempfile::TempDir, BlobStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        (dir, store)
    }

    fn tmp_entries(store: &BlobStore) -> usize {
        fs::read_dir(store.tmp_dir()).unwrap().count()
    }

    fn sha(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    #[test]
    fn open_creates_private_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store = BlobStore::open(&root).unwrap();
        assert!(root.join("blobs").is_dir());
        assert!(root.join("tmp").is_dir());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for d in [&root, &root.join("blobs"), &root.join("tmp")] {
                assert_eq!(fs::metadata(d).unwrap().permissions().mode() & 0o777, 0o700);
            }
        }
        // Opening again is fine.
        BlobStore::open(&root).unwrap();
        assert_eq!(store.dir(), root);
    }

    #[test]
    fn names_are_validated() {
        let (dir, store) = temp_store();
        let good = "ab".repeat(32);
        assert_eq!(
            store.path_of(&good).unwrap(),
            dir.path().join("blobs").join("ab").join(&good)
        );
        for bad in [
            String::new(),
            "ab".repeat(31),
            "ab".repeat(33),
            "AB".repeat(32),
            format!("../{}", "a".repeat(61)),
            format!("{}/", "a".repeat(63)),
            format!("{}g", "a".repeat(63)),
            format!("{}é", "a".repeat(62)),
        ] {
            assert!(
                matches!(store.path_of(&bad), Err(BlobError::BadName(_))),
                "{bad:?}"
            );
            assert!(store.exists(&bad).is_err());
            assert!(store.open_blob(&bad).is_err());
        }
        let long = "x".repeat(10_000);
        let msg = store.path_of(&long).unwrap_err().to_string();
        assert!(msg.len() < 200, "{msg}");
    }

    #[test]
    fn write_commit_read() {
        let (_dir, store) = temp_store();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = store.writer(data.len() as u64).unwrap();
        for chunk in data.chunks(7_000) {
            w.write(chunk).unwrap();
        }
        assert_eq!(w.size(), data.len() as u64);
        assert_eq!(w.sha256_hex(), sha(&data));
        assert_eq!(&w.map_written().unwrap()[..], &data[..]);
        let (name, size) = w.commit().unwrap();
        assert_eq!(name, sha(&data));
        assert_eq!(size, data.len() as u64);
        assert!(store.exists(&name).unwrap());
        assert_eq!(store.read(&name, size).unwrap(), data);
        assert!(matches!(
            store.read(&name, size - 1),
            Err(BlobError::TooLarge { .. })
        ));
        assert_eq!(store.open_blob(&name).unwrap().size(), size);
        assert_eq!(tmp_entries(&store), 0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let p = store.path_of(&name).unwrap();
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[test]
    fn empty_blob() {
        let (_dir, store) = temp_store();
        let (name, size) = store.writer(0).unwrap().commit().unwrap();
        assert_eq!(size, 0);
        assert_eq!(name, sha(b""));
        assert!(store.read(&name, 0).unwrap().is_empty());
    }

    #[test]
    fn missing_blob() {
        let (_dir, store) = temp_store();
        let name = sha(b"nothing");
        assert!(!store.exists(&name).unwrap());
        assert!(matches!(
            store.open_blob(&name),
            Err(BlobError::NotFound { .. })
        ));
        assert!(matches!(
            store.read(&name, 10),
            Err(BlobError::NotFound { .. })
        ));
    }

    #[test]
    fn too_large_leaves_nothing() {
        let (dir, store) = temp_store();
        let mut w = store.writer(10).unwrap();
        assert_eq!(tmp_entries(&store), 1);
        w.write(b"12345").unwrap();
        w.write(b"67890").unwrap(); // exactly the limit is fine
        assert!(matches!(
            w.write(b"x"),
            Err(BlobError::TooLarge { limit: 10 })
        ));
        // Removed at once, not only when the writer is dropped.
        assert_eq!(tmp_entries(&store), 0);
        assert!(matches!(w.write(b"y"), Err(BlobError::Abandoned { .. })));
        assert!(matches!(w.commit(), Err(BlobError::Abandoned { .. })));
        assert_eq!(tmp_entries(&store), 0);
        assert_eq!(
            fs::read_dir(dir.path().join("blobs")).unwrap().count(),
            0,
            "no blob"
        );
    }

    #[test]
    fn one_huge_chunk_is_refused() {
        let (_dir, store) = temp_store();
        let mut w = store.writer(1000).unwrap();
        assert!(matches!(
            w.write(&[0u8; 1001]),
            Err(BlobError::TooLarge { .. })
        ));
        drop(w);
        assert_eq!(tmp_entries(&store), 0);
    }

    #[test]
    fn same_content_twice_is_one_blob() {
        let (dir, store) = temp_store();
        let mut names = Vec::new();
        for _ in 0..2 {
            let mut w = store.writer(100).unwrap();
            w.write(b"hello ").unwrap();
            w.write(b"world").unwrap();
            names.push(w.commit().unwrap());
        }
        assert_eq!(names[0], names[1]);
        assert_eq!(names[0], (sha(b"hello world"), 11));
        let shard = store.path_of(&names[0].0).unwrap();
        let shard = shard.parent().unwrap();
        assert_eq!(fs::read_dir(shard).unwrap().count(), 1);
        assert_eq!(fs::read_dir(dir.path().join("blobs")).unwrap().count(), 1);
        assert_eq!(tmp_entries(&store), 0);
        assert_eq!(store.put(b"hello world").unwrap(), names[0]);
        assert_eq!(tmp_entries(&store), 0);
    }

    #[test]
    fn drop_without_commit_leaves_nothing() {
        let (dir, store) = temp_store();
        let mut w = store.writer(1 << 20).unwrap();
        w.write(&[7u8; 100_000]).unwrap();
        w.flush().unwrap();
        assert!(w.temp_path().is_file());
        assert_eq!(tmp_entries(&store), 1);
        drop(w);
        assert_eq!(tmp_entries(&store), 0);
        assert_eq!(fs::read_dir(dir.path().join("blobs")).unwrap().count(), 0);
    }

    #[test]
    fn clean_tmp_removes_leftovers() {
        let (dir, store) = temp_store();
        // A crash mid-upload: the writer's temp file stays (simulate with mem::forget).
        let mut w = store.writer(100).unwrap();
        w.write(b"partial").unwrap();
        w.flush().unwrap();
        std::mem::forget(w);
        fs::write(store.tmp_dir().join("stray"), b"x").unwrap();
        assert_eq!(tmp_entries(&store), 2);
        let reopened = BlobStore::open(dir.path()).unwrap();
        // Another live server's upload in progress (pid 1 is alive: init), kept while fresh.
        fs::write(store.tmp_dir().join("up-1-0123456789abcdef"), b"x").unwrap();
        // A dead process's (no such pid), removed at once.
        fs::write(store.tmp_dir().join("up-4294967294-0123456789abcdef"), b"x").unwrap();
        // This pid's (an earlier process's) and a stray file: removed.
        assert_eq!(reopened.clean_tmp().unwrap(), 3);
        assert_eq!(tmp_entries(&reopened), 1);
        // Once stale, the live server's too.
        let stale = std::time::Duration::from_millis(50);
        std::thread::sleep(stale * 2);
        assert_eq!(reopened.clean_tmp_older_than(stale).unwrap(), 1);
        assert_eq!(tmp_entries(&reopened), 0);
        assert_eq!(reopened.clean_tmp().unwrap(), 0);
        assert_eq!(fs::read_dir(dir.path().join("blobs")).unwrap().count(), 0);
    }

    #[test]
    fn mapped_uploads_and_removal() {
        let (_dir, store) = temp_store();
        // An empty upload maps to an empty slice.
        let mut w = store.writer(10).unwrap();
        assert!(w.map_written().unwrap().is_empty());
        drop(w);
        assert_eq!(tmp_entries(&store), 0);
        // Written in pieces, mapped (synced), written on, mapped again, committed.
        let mut w = store.writer(1 << 20).unwrap();
        w.write(b"first part, ").unwrap();
        assert_eq!(&w.map_written().unwrap()[..], b"first part, ");
        w.write(b"second part").unwrap();
        assert_eq!(&w.map_written().unwrap()[..], b"first part, second part");
        let (name, size) = w.commit().unwrap();
        assert_eq!(
            (name.as_str(), size),
            (sha(b"first part, second part").as_str(), 23)
        );
        assert_eq!(store.read(&name, 100).unwrap(), b"first part, second part");
        // Removal: once, then it is not there; names are checked.
        assert!(store.remove(&name).unwrap());
        assert!(!store.exists(&name).unwrap());
        assert!(!store.remove(&name).unwrap());
        assert!(matches!(store.remove("../x"), Err(BlobError::BadName(_))));
    }
}
