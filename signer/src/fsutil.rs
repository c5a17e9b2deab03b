//! Small file helpers with the guarantees the grid relies on: bounded reads, and atomic
//! writes (temporary file in the same directory, fsync, rename, fsync of the directory), so a
//! reader never sees a half-written file and a failure leaves nothing behind.

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

/// Creates a new, uniquely named file `DIR/<prefix><pid>-<random>` with the given
/// permission bits from the start (never briefly more open), refusing to reuse a name.
pub fn create_temp_in(dir: &Path, prefix: &str, mode: u32) -> Result<(PathBuf, File), FileError> {
    let mut opts = OpenOptions::new();
    opts.write(true).read(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut attempt = 0u32;
    loop {
        let tmp = dir.join(format!(
            "{prefix}{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        match opts.open(&tmp) {
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
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
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
    let (tmp, mut file) = create_temp_in(&dir, &format!(".{file_name}.tmp-"), mode)?;
    let result = fill(&mut file)
        .and_then(|()| file.sync_all())
        .map_err(|e| FileError::io("writing", &tmp, e))
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| FileError::io("renaming into", path, e)));
    drop(file);
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // Make the rename itself durable.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
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
