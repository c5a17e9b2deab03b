//! Scratch directories: where a task's inputs and outputs live on the host.
//!
//! ```text
//! <work_dir>/scratch/<unique>/      0700, removed after the task whatever happened
//!     in/                           guest `.` (read-only): the inputs at their bundle paths
//!     out/                          guest `out` (read-write)
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Deepest directory nesting walked under `out/`.
const MAX_DEPTH: usize = 32;

static COUNTER: AtomicU64 = AtomicU64::new(0);

pub(crate) struct Scratch {
    pub root: PathBuf,
    pub input_dir: PathBuf,
    pub out_dir: PathBuf,
}

fn private_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new().mode(0o700).create(path)
}

/// Creates a fresh scratch directory under `base` holding `inputs` (names already checked by
/// the bundle verifier; checked again here).
pub(crate) fn create(base: &Path, inputs: &[(String, Vec<u8>)]) -> io::Result<Scratch> {
    let root = loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "{}-{}-{nanos:08x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let root = base.join(name);
        match private_dir(&root) {
            Ok(()) => break root,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    };
    let scratch = Scratch {
        input_dir: root.join("in"),
        out_dir: root.join("out"),
        root,
    };
    let filled = (|| {
        private_dir(&scratch.input_dir)?;
        private_dir(&scratch.out_dir)?;
        for (name, bytes) in inputs {
            rjs_signer::paths::check_entry_name(name).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("input {name:?}: {e}"))
            })?;
            let path = scratch.input_dir.join(name);
            if let Some(parent) = path.parent() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)?;
            }
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&path)?;
            io::Write::write_all(&mut f, bytes)?;
        }
        // So that listing `.` shows `out` (the guest's `out` is the writable preopen, which
        // shadows anything under `in/out`).
        match private_dir(&scratch.input_dir.join("out")) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        Ok(())
    })();
    if let Err(e) = filled {
        remove(&scratch.root);
        return Err(e);
    }
    Ok(scratch)
}

/// Removes a scratch directory and everything in it (never following symlinks). Errors are
/// logged: there is nobody to return them to.
pub(crate) fn remove(root: &Path) {
    if let Err(e) = fs::remove_dir_all(root)
        && e.kind() != io::ErrorKind::NotFound
    {
        // A directory without write permission cannot be emptied: open it up and retry.
        let _ = make_writable(root, 0);
        if let Err(e) = fs::remove_dir_all(root) {
            tracing::warn!(path = %root.display(), error = %e, "removing a scratch directory");
        }
    }
}

fn make_writable(dir: &Path, depth: usize) -> io::Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    if depth < MAX_DEPTH {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                let _ = make_writable(&entry.path(), depth + 1);
            }
        }
    }
    Ok(())
}

/// What `out/` holds right now.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Usage {
    /// Sum of the sizes of the regular files.
    pub bytes: u64,
    /// Regular files.
    pub files: usize,
    /// Every entry seen (files, directories, anything else).
    pub entries: usize,
    /// The walk stopped early at `max_entries` or `MAX_DEPTH`.
    pub truncated: bool,
}

/// Walks `out/` without following symlinks, stopping after `max_entries` entries.
pub(crate) fn usage(out_dir: &Path, max_entries: usize) -> Usage {
    let mut u = Usage::default();
    let mut stack = vec![(out_dir.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            u.entries += 1;
            if u.entries > max_entries {
                u.truncated = true;
                return u;
            }
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_file() {
                u.files += 1;
                if let Ok(m) = entry.metadata() {
                    u.bytes = u.bytes.saturating_add(m.len());
                }
            } else if ft.is_dir() {
                if depth + 1 >= MAX_DEPTH {
                    u.truncated = true;
                } else {
                    stack.push((entry.path(), depth + 1));
                }
            }
        }
    }
    u
}

/// The files collected from `out/`.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    /// (name relative to `out/`, bytes), sorted by name.
    pub files: Vec<(String, Vec<u8>)>,
    /// Files left out: over the byte or file budget, not a regular file, or a name the
    /// answer format cannot carry.
    pub skipped: Vec<String>,
    /// Something was left out because of the byte or file budget.
    pub over_budget: bool,
}

/// Collects the regular files under `out/` (no symlink is followed, names must pass
/// `check_entry_name`), in name order, while they fit `max_bytes` and `max_files`.
pub(crate) fn collect(out_dir: &Path, max_bytes: u64, max_files: usize) -> Collected {
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    let mut c = Collected::default();
    let mut stack = vec![(out_dir.to_path_buf(), String::new(), 0usize)];
    let mut seen = 0usize;
    let walk_cap = max_files.saturating_mul(4).max(64);
    while let Some((dir, prefix, depth)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > walk_cap {
                c.over_budget = true;
                break;
            }
            let name = match entry.file_name().into_string() {
                Ok(n) => format!("{prefix}{n}"),
                Err(n) => {
                    c.skipped.push(format!("{prefix}{}", n.to_string_lossy()));
                    continue;
                }
            };
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                if depth + 1 < MAX_DEPTH {
                    stack.push((entry.path(), format!("{name}/"), depth + 1));
                } else {
                    c.skipped.push(name);
                }
            } else if ft.is_file() {
                if rjs_signer::paths::check_entry_name(&name).is_ok() {
                    found.push((name, entry.path()));
                } else {
                    c.skipped.push(name);
                }
            } else {
                c.skipped.push(name);
            }
        }
    }
    found.sort();
    let mut budget = max_bytes;
    for (name, path) in found {
        if c.files.len() >= max_files {
            c.over_budget = true;
            c.skipped.push(name);
            continue;
        }
        match read_regular(&path, budget) {
            Ok(Some(bytes)) => {
                budget -= bytes.len() as u64;
                c.files.push((name, bytes));
            }
            Ok(None) => {
                c.over_budget = true;
                c.skipped.push(name);
            }
            Err(_) => c.skipped.push(name),
        }
    }
    c
}

/// Reads a regular file without following a symlink; `Ok(None)` if it is larger than `max`.
fn read_regular(path: &Path, max: u64) -> io::Result<Option<Vec<u8>>> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a file"));
    }
    if meta.len() > max {
        return Ok(None);
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    Read::take(&f as &File, max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Ok(None);
    }
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_collect_remove() {
        let base = tempfile::tempdir().unwrap();
        let s = create(
            base.path(),
            &[
                ("a.txt".into(), b"in".to_vec()),
                ("d/b.bin".into(), vec![1, 2]),
            ],
        )
        .unwrap();
        assert_eq!(fs::read(s.input_dir.join("d/b.bin")).unwrap(), [1, 2]);
        assert!(s.input_dir.join("out").is_dir());
        let mode = fs::metadata(&s.root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);

        fs::write(s.out_dir.join("x.txt"), b"12345").unwrap();
        fs::create_dir(s.out_dir.join("sub")).unwrap();
        fs::write(s.out_dir.join("sub/y.txt"), b"678").unwrap();
        fs::write(s.out_dir.join("bad name"), b"9").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", s.out_dir.join("link")).unwrap();
        let u = usage(&s.out_dir, 100);
        assert_eq!((u.bytes, u.files, u.entries), (9, 3, 5));
        assert!(usage(&s.out_dir, 2).truncated);

        let c = collect(&s.out_dir, 100, 10);
        let names: Vec<_> = c.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["sub/y.txt", "x.txt"]);
        assert!(!c.over_budget);
        assert_eq!(c.skipped.len(), 2);

        let c = collect(&s.out_dir, 4, 10);
        assert_eq!(c.files.len(), 1);
        assert!(c.over_budget);
        let c = collect(&s.out_dir, 100, 1);
        assert_eq!(c.files.len(), 1);
        assert!(c.over_budget);

        remove(&s.root);
        assert!(!s.root.exists());
    }

    #[test]
    fn refuses_bad_input_names() {
        let base = tempfile::tempdir().unwrap();
        assert!(create(base.path(), &[("../x".into(), vec![])]).is_err());
        assert_eq!(fs::read_dir(base.path()).unwrap().count(), 0);
    }
}
