//! Small file helpers with the guarantees the grid relies on: bounded reads, and atomic
//! writes (temporary file in the same directory, fsync, rename, fsync of the directory), so a
//! reader never sees a half-written file and a failure leaves nothing behind; and
//! no-clobber writes ([`Staged::link_new`]: the same, but a hard link instead of the rename, so
//! a file that exists, even one created a moment ago, is never replaced).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// A file operation that failed, naming the path.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is larger than {limit} bytes")]
    TooLarge { path: PathBuf, limit: u64 },
}

impl FileError {
    pub fn io(what: &'static str, path: &Path, source: io::Error) -> Self {
        FileError::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }
}

/// Reads a whole file, refusing one larger than `limit` bytes without reading past it.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let file = File::open(path).map_err(|e| FileError::io("opening", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| FileError::io("reading", path, e))?
        .len();
    if len > limit {
        return Err(FileError::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    let mut buf = Vec::with_capacity(len as usize);
    file.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| FileError::io("reading", path, e))?;
    if buf.len() as u64 > limit {
        return Err(FileError::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(buf)
}

/// Creates a directory (and parents) with mode 0700 if it does not exist.
pub fn create_private_dir(dir: &Path) -> Result<(), FileError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| FileError::io("creating directory", dir, e))
}

/// Writes `bytes` to `path` atomically with the given permission bits (unix). The temporary
/// file is created with those bits from the start, so a secret is never briefly readable.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    write_atomic_with(path, mode, |f| f.write_all(bytes))
}

/// Creates `path`, which must not exist yet, for reading and writing, with the given
/// permission bits (unix) from the start.
fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.write(true).read(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    opts.open(path)
}

/// Creates a new, uniquely named file `DIR/<prefix><pid>-<random>` with the given
/// permission bits from the start (never briefly more open), refusing to reuse a name.
pub fn create_temp_in(dir: &Path, prefix: &str, mode: u32) -> Result<(PathBuf, File), FileError> {
    let mut attempt = 0u32;
    loop {
        let tmp = dir.join(format!(
            "{prefix}{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        match create_new(&tmp, mode) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 8 => attempt += 1,
            Err(e) => return Err(FileError::io("creating a temporary file in", dir, e)),
        }
    }
}

/// Like [`write_atomic`], with the contents produced by a callback writing into the file.
pub fn write_atomic_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), FileError> {
    stage_with(path, mode, fill)?.replace()
}

/// The directory a file is written in (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Makes the directory's entries (a rename, a new link, a removal) durable. Best effort: not
/// every file system lets a directory be opened and synced.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A file written completely under a temporary name beside its target and synced to disk,
/// waiting to be put in place: [`Staged::link_new`] never replaces an existing file,
/// [`Staged::replace`] atomically replaces one. The temporary file is removed when the
/// `Staged` is dropped (also after it was put in place: a link leaves the target behind).
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    target: PathBuf,
    /// The permission bits the file was created with (also those of a copy).
    mode: u32,
    placed: Option<Placed>,
}

/// How [`Staged::link_new`] put a file in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placed {
    /// A hard link to the temporary file: the target is the same inode.
    Linked,
    /// Copied into a file created exclusively (file systems without hard links).
    Copied,
}

/// Writes `bytes` to a temporary file beside `path` (created with `mode` from the start) and
/// syncs it; see [`Staged`].
pub fn stage(path: &Path, bytes: &[u8], mode: u32) -> Result<Staged, FileError> {
    stage_with(path, mode, |f| f.write_all(bytes))
}

/// Like [`stage`], with the contents produced by a callback writing into the file.
pub fn stage_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<Staged, FileError> {
    let file_name = path
        .file_name()
        .ok_or_else(|| {
            FileError::io(
                "writing",
                path,
                io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"),
            )
        })?
        .to_string_lossy()
        .into_owned();
    let (tmp, mut file) = create_temp_in(&parent_dir(path), &format!(".{file_name}.tmp-"), mode)?;
    // From here on, dropping `staged` removes the temporary file, whatever fails.
    let staged = Staged {
        tmp,
        target: path.to_owned(),
        mode,
        placed: None,
    };
    let written = fill(&mut file).and_then(|()| file.sync_all());
    drop(file);
    written.map_err(|e| FileError::io("writing", &staged.tmp, e))?;
    Ok(staged)
}

impl Staged {
    /// Atomically renames the file over its target (replacing any file there) and syncs the
    /// directory.
    pub fn replace(mut self) -> Result<(), FileError> {
        fs::rename(&self.tmp, &self.target)
            .map_err(|e| FileError::io("renaming into", &self.target, e))?;
        // Renamed away: nothing left to remove.
        self.tmp = PathBuf::new();
        sync_dir(&parent_dir(&self.target));
        Ok(())
    }

    /// Puts the file in place only if nothing is at its target: a hard link from the
    /// temporary file, which the kernel refuses when the target exists (unlike a rename, which
    /// would replace a file created since anyone looked). The error for an existing target is
    /// an I/O error of kind [`io::ErrorKind::AlreadyExists`]. On a file system without hard
    /// links, the contents are copied into a target created exclusively instead (still never
    /// replacing; a crash while copying could leave a short file there).
    ///
    /// The directory is not synced: call [`sync_dir`] once every file is in place.
    pub fn link_new(&mut self) -> Result<(), FileError> {
        match fs::hard_link(&self.tmp, &self.target) {
            Ok(()) => {
                self.placed = Some(Placed::Linked);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Unsupported | io::ErrorKind::PermissionDenied
                ) && !self.target_exists() =>
            {
                self.copy_new()?;
                self.placed = Some(Placed::Copied);
                Ok(())
            }
            Err(e) => Err(FileError::io("creating", &self.target, e)),
        }
    }

    fn target_exists(&self) -> bool {
        self.target.symlink_metadata().is_ok()
    }

    /// The fallback of [`Staged::link_new`]: the temporary file's bytes into a new file.
    fn copy_new(&self) -> Result<(), FileError> {
        let mut src = File::open(&self.tmp).map_err(|e| FileError::io("reading", &self.tmp, e))?;
        let mut dst = create_new(&self.target, self.mode)
            .map_err(|e| FileError::io("creating", &self.target, e))?;
        let copied = io::copy(&mut src, &mut dst).and_then(|_| dst.sync_all());
        if let Err(e) = copied {
            drop(dst);
            let _ = fs::remove_file(&self.target);
            return Err(FileError::io("writing", &self.target, e));
        }
        Ok(())
    }

    /// Undoes a [`Staged::link_new`] that succeeded (when a later step failed): removes the
    /// target if it is still the file this put there. Best effort.
    pub fn unlink_new(&mut self) {
        let ours = match self.placed.take() {
            None => false,
            Some(Placed::Copied) => true,
            Some(Placed::Linked) => same_file(&self.tmp, &self.target),
        };
        if ours {
            let _ = fs::remove_file(&self.target);
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Whether two paths name the same file (same device and inode; on other systems, whether
/// both exist).
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.symlink_metadata(), b.symlink_metadata()) {
        #[cfg(unix)]
        (Ok(x), Ok(y)) => {
            use std::os::unix::fs::MetadataExt;
            x.dev() == y.dev() && x.ino() == y.ino()
        }
        #[cfg(not(unix))]
        (Ok(_), Ok(_)) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp files left"
        );
    }

    #[test]
    fn failed_fill_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        let r = write_atomic_with(&p, 0o644, |_| Err(io::Error::other("boom")));
        assert!(r.is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn link_new_never_replaces_a_file_that_appeared_after_staging() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let mut staged = stage(&p, b"new", 0o600).unwrap();
        // Another process creates the file between our check and our write.
        fs::write(&p, b"theirs").unwrap();
        let e = staged.link_new().unwrap_err();
        match &e {
            FileError::Io { source, .. } => {
                assert_eq!(source.kind(), io::ErrorKind::AlreadyExists, "{e}")
            }
            other => panic!("{other:?}"),
        }
        drop(staged);
        assert_eq!(fs::read(&p).unwrap(), b"theirs", "their file untouched");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "temp removed");
    }

    #[test]
    fn link_new_places_the_file_with_its_mode_and_unlink_new_undoes_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let mut staged = stage(&p, b"secret", 0o600).unwrap();
        staged.link_new().unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"secret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        staged.unlink_new();
        drop(staged);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);

        // Once placed and dropped, only the target remains.
        let mut staged = stage(&p, b"secret", 0o600).unwrap();
        staged.link_new().unwrap();
        drop(staged);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // unlink_new never removes a file it did not place.
        let mut other = stage(&p, b"x", 0o600).unwrap();
        assert!(other.link_new().is_err());
        other.unlink_new();
        drop(other);
        assert_eq!(fs::read(&p).unwrap(), b"secret");
    }

    #[test]
    fn bounded_read_refuses_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        fs::write(&p, vec![0u8; 100]).unwrap();
        assert!(matches!(
            read_bounded(&p, 99),
            Err(FileError::TooLarge { .. })
        ));
        assert_eq!(read_bounded(&p, 100).unwrap().len(), 100);
    }
}
