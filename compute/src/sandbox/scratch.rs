//! Scratch directories: where a task's inputs and outputs live on the host.
//!
//! ```text
//! <work_dir>/scratch/slot-<i>/      0700: the `out/` (guest `out`, read-write) of the tasks
//!                                   of slot i, one after the other: emptied after every task
//!                                   and checked empty; replaced by a fresh directory when
//!                                   that fails
//! <work_dir>/inputs/empty/          0700: guest `.` (read-only) of every task without inputs;
//!     out/                          holds nothing but an empty `out` directory entry
//! <work_dir>/inputs/<unique>/       0700: guest `.` (read-only) of the tasks of one set of
//!     <bundle paths>                inputs (0400), written once and shared by those tasks;
//!     out/                          removed once unused and beyond the bounds below
//! ```
//!
//! No directory is made or removed for a task: creating and deleting inodes is what a tiny
//! task's set-up cost most on the host's filesystem (a journal-less ext4 scans past every
//! inode deleted in the last seconds on each allocation), so the slot's `out/` is reused and
//! the read-only side is shared.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Deepest directory nesting walked under `out/`.
const MAX_DEPTH: usize = 32;
/// Input directories kept while no task uses them (most recently used first), at most this
/// many and this many bytes of inputs in all.
const KEEP_UNUSED_INPUTS: usize = 8;
const KEEP_UNUSED_INPUT_BYTES: u64 = 256 << 20;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A task's input files, as a [`TaskSpec`](crate::job::TaskSpec) holds them.
pub(crate) type Inputs = Arc<Vec<(String, Vec<u8>)>>;

fn private_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new().mode(0o700).create(path)
}

/// A fresh private directory under `base` with a unique name.
fn unique_dir(base: &Path) -> io::Result<PathBuf> {
    loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "{}-{}-{nanos:08x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = base.join(name);
        match private_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The `out/` directory of slot `index`'s tasks under `base` (`<work_dir>/scratch`).
pub(crate) fn slot_dir(base: &Path, index: usize) -> PathBuf {
    base.join(format!("slot-{index}"))
}

/// Makes slot `index`'s `out/` a fresh, empty private directory: whatever is at its path
/// (the directory of an earlier task that could not be emptied, or nothing) is moved aside
/// and removed first. Blocking.
pub(crate) fn fresh_slot_dir(base: &Path, index: usize) -> io::Result<PathBuf> {
    fresh_dir(base, slot_dir(base, index))
}

/// The temporary directory of slot `index`'s tasks under `base`: the guest's `/tmp`
/// (`TMPDIR`), emptied after every task that wrote there. What it holds counts against the
/// task's output limit but is never returned.
pub(crate) fn tmp_dir(base: &Path, index: usize) -> PathBuf {
    base.join(format!("tmp-{index}"))
}

/// Makes slot `index`'s temporary directory a fresh, empty private directory (as
/// [`fresh_slot_dir`]). Blocking.
pub(crate) fn fresh_tmp_dir(base: &Path, index: usize) -> io::Result<PathBuf> {
    fresh_dir(base, tmp_dir(base, index))
}

/// Makes `dir` (in `base`) a fresh, empty private directory. Blocking.
fn fresh_dir(base: &Path, dir: PathBuf) -> io::Result<PathBuf> {
    match fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
        Ok(_) => {
            // Moved aside first, so that the slot's path is free even if removing fails.
            let aside = base.join(format!(
                "stale-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            fs::rename(&dir, &aside)?;
            remove(&aside);
        }
    }
    private_dir(&dir)?;
    Ok(dir)
}

/// Whether `dir` is an empty directory.
pub(crate) fn is_empty_dir(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

/// Writes `inputs` (names already checked by the bundle verifier; checked again here) into
/// the fresh directory `dir`, plus an empty `out` directory so that listing the guest's `.`
/// shows `out` (the guest's `out` is the writable preopen, which shadows anything under
/// `<dir>/out`).
fn fill_inputs(dir: &Path, inputs: &[(String, Vec<u8>)]) -> io::Result<()> {
    for (name, bytes) in inputs {
        rjs_signer::paths::check_entry_name(name).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("input {name:?}: {e}"))
        })?;
        let path = dir.join(name);
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
    match private_dir(&dir.join("out")) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// The read-only input directories (the guest's `.`), shared by the tasks whose inputs are
/// the same. The guest cannot change them: `.` is preopened read-only and the files are 0400.
pub(crate) struct InputDirs {
    base: PathBuf,
    empty: PathBuf,
    state: Mutex<InputState>,
}

#[derive(Default)]
struct InputState {
    entries: Vec<InputEntry>,
    clock: u64,
}

struct InputEntry {
    id: u64,
    inputs: Inputs,
    dir: PathBuf,
    bytes: u64,
    users: usize,
    last_used: u64,
}

/// A task's directories on the host.
pub(crate) struct Scratch {
    /// Its guest `.`.
    pub input: InputLease,
    /// Its guest `out`.
    pub out_dir: PathBuf,
    /// Its guest `/tmp` (`TMPDIR`).
    pub tmp_dir: PathBuf,
}

/// The input directory one task uses; give it back with [`InputDirs::release`].
#[derive(Debug)]
pub(crate) struct InputLease {
    pub dir: PathBuf,
    /// `None`: the shared empty directory.
    id: Option<u64>,
}

fn same_inputs(a: &Inputs, b: &Inputs) -> bool {
    Arc::ptr_eq(a, b) || **a == **b
}

impl InputDirs {
    /// Takes over `base` (an existing private directory): removes what a previous run left
    /// there and makes `base/empty`. Blocking.
    pub(crate) fn open(base: &Path) -> io::Result<InputDirs> {
        for entry in fs::read_dir(base)? {
            remove(&entry?.path());
        }
        let empty = base.join("empty");
        private_dir(&empty)?;
        fill_inputs(&empty, &[])?;
        Ok(InputDirs {
            base: base.to_owned(),
            empty,
            state: Mutex::new(InputState::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, InputState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The directory already holding `inputs`, if any (no I/O).
    pub(crate) fn lookup(&self, inputs: &Inputs) -> Option<InputLease> {
        if inputs.is_empty() {
            return Some(InputLease {
                dir: self.empty.clone(),
                id: None,
            });
        }
        let mut st = self.state();
        st.clock += 1;
        let clock = st.clock;
        let e = st
            .entries
            .iter_mut()
            .find(|e| same_inputs(&e.inputs, inputs))?;
        e.users += 1;
        e.last_used = clock;
        Some(InputLease {
            dir: e.dir.clone(),
            id: Some(e.id),
        })
    }

    /// A directory holding `inputs`: [`lookup`](Self::lookup), else a new one written now.
    /// Blocking.
    pub(crate) fn acquire(&self, inputs: &Inputs) -> io::Result<InputLease> {
        if let Some(lease) = self.lookup(inputs) {
            return Ok(lease);
        }
        let dir = unique_dir(&self.base)?;
        if let Err(e) = fill_inputs(&dir, inputs) {
            remove(&dir);
            return Err(e);
        }
        let id = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state();
        st.clock += 1;
        let last_used = st.clock;
        st.entries.push(InputEntry {
            id,
            inputs: inputs.clone(),
            dir: dir.clone(),
            bytes: inputs.iter().map(|(_, b)| b.len() as u64).sum(),
            users: 1,
            last_used,
        });
        Ok(InputLease { dir, id: Some(id) })
    }

    /// Gives a lease back; returns the directories no longer kept (unused, beyond the
    /// bounds), for the caller to [`remove`] on a blocking thread.
    pub(crate) fn release(&self, lease: InputLease) -> Vec<PathBuf> {
        let Some(id) = lease.id else {
            return Vec::new();
        };
        let mut st = self.state();
        if let Some(e) = st.entries.iter_mut().find(|e| e.id == id) {
            e.users = e.users.saturating_sub(1);
        }
        // Most recently used first; drop unused ones past the bounds.
        st.entries.sort_by_key(|e| std::cmp::Reverse(e.last_used));
        let (mut kept, mut bytes, mut gone) = (0usize, 0u64, Vec::new());
        st.entries.retain(|e| {
            if e.users > 0 {
                return true;
            }
            kept += 1;
            bytes = bytes.saturating_add(e.bytes);
            if kept > KEEP_UNUSED_INPUTS || bytes > KEEP_UNUSED_INPUT_BYTES {
                gone.push(e.dir.clone());
                false
            } else {
                true
            }
        });
        gone
    }
}

/// Removes a scratch directory and everything in it (never following symlinks). Errors are
/// logged: there is nobody to return them to.
pub(crate) fn remove(root: &Path) {
    if let Err(e) = fs::remove_dir_all(root)
        && e.kind() != io::ErrorKind::NotFound
    {
        if fs::symlink_metadata(root).is_ok_and(|m| !m.is_dir()) {
            // Not a directory (a stray file left in a directory the node owns).
            if let Err(e) = fs::remove_file(root) {
                tracing::warn!(path = %root.display(), error = %e, "removing a scratch file");
            }
            return;
        }
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

/// One walk of `out/` (no symlink followed): what [`usage`] and [`collect`] need, and what
/// is there to remove.
#[derive(Default)]
struct Walk {
    /// As [`usage`] with `4 × max_files` entries at most.
    usage: Usage,
    /// Regular files whose names the answer format can carry: (name, path).
    found: Vec<(String, PathBuf)>,
    skipped: Vec<String>,
    over_budget: bool,
    /// Every entry was seen: `dirs` and `others` are all there is.
    complete: bool,
    /// Directories under `out/`, parents before children.
    dirs: Vec<PathBuf>,
    /// Everything else (files, symlinks, special files).
    others: Vec<PathBuf>,
}

fn walk(out_dir: &Path, max_files: usize) -> Walk {
    let mut w = Walk {
        complete: true,
        ..Walk::default()
    };
    let max_entries = max_files.saturating_mul(4);
    let walk_cap = max_entries.max(64);
    let mut usage_done = false;
    // (directory, name prefix, depth); prefix `None`: under a directory whose name is not
    // UTF-8 (counted, not collected).
    let mut stack = vec![(out_dir.to_path_buf(), Some(String::new()), 0usize)];
    let mut seen = 0usize;
    'walk: while let Some((dir, prefix, depth)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            w.complete = false;
            continue;
        };
        for entry in entries {
            let Ok(entry) = entry else {
                w.complete = false;
                continue;
            };
            seen += 1;
            if !usage_done {
                w.usage.entries += 1;
                if w.usage.entries > max_entries {
                    w.usage.truncated = true;
                    usage_done = true;
                }
            }
            if seen > walk_cap {
                w.over_budget = true;
                w.complete = false;
                break 'walk;
            }
            let name = prefix
                .as_ref()
                .map(|p| match entry.file_name().into_string() {
                    Ok(n) => Ok(format!("{p}{n}")),
                    Err(n) => Err(format!("{p}{}", n.to_string_lossy())),
                });
            let Ok(ft) = entry.file_type() else {
                w.complete = false;
                continue;
            };
            if ft.is_dir() {
                if depth + 1 < MAX_DEPTH {
                    let sub = match &name {
                        Some(Ok(n)) => Some(format!("{n}/")),
                        Some(Err(n)) => {
                            w.skipped.push(n.clone());
                            None
                        }
                        None => None,
                    };
                    w.dirs.push(entry.path());
                    stack.push((entry.path(), sub, depth + 1));
                } else {
                    if !usage_done {
                        w.usage.truncated = true;
                    }
                    w.complete = false;
                    if let Some(n) = name {
                        w.skipped.push(n.unwrap_or_else(|n| n));
                    }
                }
                continue;
            }
            w.others.push(entry.path());
            if ft.is_file() && !usage_done {
                w.usage.files += 1;
                if let Ok(m) = entry.metadata() {
                    w.usage.bytes = w.usage.bytes.saturating_add(m.len());
                }
            }
            match name {
                Some(Ok(n)) if ft.is_file() && rjs_signer::paths::check_entry_name(&n).is_ok() => {
                    w.found.push((n, entry.path()))
                }
                Some(n) => w.skipped.push(n.unwrap_or_else(|n| n)),
                None => {}
            }
        }
    }
    w
}

/// Reads the files a walk found, in name order, while they fit `max_bytes` and
/// `max_files`.
fn read_found(w: &mut Walk, max_bytes: u64, max_files: usize) -> Collected {
    let mut c = Collected {
        skipped: std::mem::take(&mut w.skipped),
        over_budget: w.over_budget,
        ..Collected::default()
    };
    let mut found = std::mem::take(&mut w.found);
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

/// Collects the regular files under `out/` (no symlink is followed, names must pass
/// `check_entry_name`), in name order, while they fit `max_bytes` and `max_files`.
#[cfg(test)]
pub(crate) fn collect(out_dir: &Path, max_bytes: u64, max_files: usize) -> Collected {
    read_found(&mut walk(out_dir, max_files), max_bytes, max_files)
}

/// What [`finish`] and [`finish_small`] found and did.
#[derive(Debug, Default)]
pub(crate) struct Finished {
    pub usage: Usage,
    pub collected: Collected,
    /// `out/` is empty again (checked after removing everything in it), ready for the next
    /// task; if not, the caller replaces it ([`fresh_slot_dir`]).
    pub emptied: bool,
}

/// After the task: measures `out/` (as [`usage`] with `4 × max_files` entries), collects
/// it (as `collect`) and empties it, with one walk of the directory, then checks that it is
/// empty.
pub(crate) fn finish(out_dir: &Path, max_bytes: u64, max_files: usize) -> Finished {
    let mut w = walk(out_dir, max_files);
    let collected = read_found(&mut w, max_bytes, max_files);
    // Nothing writes here any more (the worker is done or dead): what the walk saw is all
    // there is, unless it stopped early.
    let mut emptied = w.complete
        && w.others.iter().all(|p| fs::remove_file(p).is_ok())
        && w.dirs.iter().rev().all(|d| fs::remove_dir(d).is_ok());
    if !emptied {
        // Deeper than the walk goes, or something would not go: everything, the hard way.
        emptied = empty_dir(out_dir);
    }
    Finished {
        usage: w.usage,
        collected,
        emptied: emptied && is_empty_dir(out_dir),
    }
}

/// Removes everything in `dir` (never following symlinks), keeping `dir`; whether that
/// worked.
fn empty_dir(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    for entry in entries {
        let Ok(entry) = entry else { return false };
        remove(&entry.path());
    }
    true
}

/// Most files, and bytes, that [`finish_small`] handles.
const SMALL_FILES: usize = 8;
const SMALL_BYTES: u64 = 64 << 10;

/// [`finish`] for the usual tiny `out/`: at most a few regular files, directly in `out/`,
/// with names the answer can carry, a few KiB in all. `None` (and nothing done) for anything
/// else: then call [`finish`]. Cheap enough to call on an async thread when `out/` is on a
/// RAM filesystem.
pub(crate) fn finish_small(out_dir: &Path, max_bytes: u64, max_files: usize) -> Option<Finished> {
    let most = SMALL_FILES.min(max_files);
    let mut names = Vec::new();
    for entry in fs::read_dir(out_dir).ok()? {
        let entry = entry.ok()?;
        if names.len() >= most || !entry.file_type().ok()?.is_file() {
            return None;
        }
        let name = entry.file_name().into_string().ok()?;
        rjs_signer::paths::check_entry_name(&name).ok()?;
        names.push((name, entry.path()));
    }
    names.sort();
    let budget = max_bytes.min(SMALL_BYTES);
    let mut files = Vec::with_capacity(names.len());
    let mut total = 0u64;
    for (name, path) in &names {
        let bytes = read_regular(path, budget - total).ok()??;
        total += bytes.len() as u64;
        files.push((name.clone(), bytes));
    }
    let emptied = names.iter().all(|(_, p)| fs::remove_file(p).is_ok()) && is_empty_dir(out_dir);
    let usage = Usage {
        bytes: total,
        files: files.len(),
        entries: files.len(),
        truncated: false,
    };
    Some(Finished {
        usage,
        collected: Collected {
            files,
            ..Collected::default()
        },
        emptied,
    })
}

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;
const EXT4_MAGIC: i64 = 0xef53; // ext2, ext3, ext4
const XFS_MAGIC: i64 = 0x5846_5342;
const BTRFS_MAGIC: i64 = 0x9123_683e;
const F2FS_MAGIC: i64 = 0xf2f5_2010;

/// The filesystem type (`statfs` magic) of `dir`.
fn fs_type(dir: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs writes into the zeroed struct we pass; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)]
    Some(st.f_type as i64)
}

/// Whether `dir` is on a RAM filesystem (tmpfs, ramfs), where making, reading and removing a
/// few small files costs microseconds and never waits for a disk.
#[cfg(test)]
pub(crate) fn on_ram_fs(dir: &Path) -> bool {
    matches!(fs_type(dir), Some(TMPFS_MAGIC | RAMFS_MAGIC))
}

/// Whether a small `out/` in `dir` may be collected and emptied on an async thread
/// ([`finish_small`]): on a RAM filesystem, or a local disk filesystem (ext2/3/4, XFS,
/// btrfs, F2FS), where reading and unlinking a few KiB the job has just written works on the
/// page and inode caches (microseconds). Not on network or FUSE filesystems, whose every
/// call may wait for a server: there the blocking pool does it.
pub(crate) fn inline_ok(dir: &Path) -> bool {
    matches!(
        fs_type(dir),
        Some(TMPFS_MAGIC | RAMFS_MAGIC | EXT4_MAGIC | XFS_MAGIC | BTRFS_MAGIC | F2FS_MAGIC)
    )
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
    fn inputs_are_shared_and_bounded() {
        let base = tempfile::tempdir().unwrap();
        fs::write(base.path().join("leftover"), b"x").unwrap();
        let dirs = InputDirs::open(base.path()).unwrap();
        assert!(!base.path().join("leftover").exists());
        let none: Inputs = Arc::new(Vec::new());
        let empty = dirs.lookup(&none).unwrap();
        assert!(empty.dir.join("out").is_dir());
        assert_eq!(fs::read_dir(&empty.dir).unwrap().count(), 1);

        let inputs: Inputs = Arc::new(vec![
            ("a.txt".into(), b"in".to_vec()),
            ("d/b.bin".into(), vec![1, 2]),
        ]);
        assert!(dirs.lookup(&inputs).is_none());
        let a = dirs.acquire(&inputs).unwrap();
        assert_eq!(fs::read(a.dir.join("d/b.bin")).unwrap(), [1, 2]);
        assert!(a.dir.join("out").is_dir());
        let mode = fs::metadata(&a.dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let mode = fs::metadata(a.dir.join("a.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o400);
        // Equal inputs in another allocation share the directory.
        let b = dirs.lookup(&Arc::new((*inputs).clone())).unwrap();
        assert_eq!(a.dir, b.dir);
        let dir = a.dir.clone();
        assert!(dirs.release(a).is_empty());
        assert!(dirs.release(b).is_empty());
        assert!(dirs.release(empty).is_empty());

        // Unused directories beyond the bound go, least recently used first.
        let mut gone = Vec::new();
        for i in 0..KEEP_UNUSED_INPUTS {
            let other: Inputs = Arc::new(vec![(format!("f{i}"), vec![])]);
            let lease = dirs.acquire(&other).unwrap();
            gone.extend(dirs.release(lease));
        }
        assert_eq!(gone, [dir]);
    }

    fn empty(dir: &Path) -> bool {
        fs::read_dir(dir).unwrap().next().is_none()
    }

    #[test]
    fn out_collect_empty() {
        let base = tempfile::tempdir().unwrap();
        let out = fresh_slot_dir(base.path(), 0).unwrap();
        assert_eq!(out, base.path().join("slot-0"));
        let mode = fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);

        fs::write(out.join("x.txt"), b"12345").unwrap();
        fs::create_dir(out.join("sub")).unwrap();
        fs::write(out.join("sub/y.txt"), b"678").unwrap();
        fs::write(out.join("bad name"), b"9").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", out.join("link")).unwrap();
        let u = usage(&out, 100);
        assert_eq!((u.bytes, u.files, u.entries), (9, 3, 5));
        assert!(usage(&out, 2).truncated);

        let c = collect(&out, 100, 10);
        let names: Vec<_> = c.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["sub/y.txt", "x.txt"]);
        assert!(!c.over_budget);
        assert_eq!(c.skipped.len(), 2);

        let c = collect(&out, 4, 10);
        assert_eq!(c.files.len(), 1);
        assert!(c.over_budget);
        let c = collect(&out, 100, 1);
        assert_eq!(c.files.len(), 1);
        assert!(c.over_budget);

        let Finished {
            usage: u,
            collected: c,
            emptied,
        } = finish(&out, 100, 10);
        assert_eq!((u.bytes, u.files, u.entries, u.truncated), (9, 3, 5, false));
        let names: Vec<_> = c.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["sub/y.txt", "x.txt"]);
        assert!(emptied && empty(&out), "kept, and empty");
        assert_eq!(fs::read_dir(base.path()).unwrap().count(), 1);

        // Deeper than the walk goes: still measured as truncated and emptied.
        let mut deep = out.clone();
        for i in 0..MAX_DEPTH + 2 {
            deep.push(format!("d{i}"));
        }
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("f"), b"x").unwrap();
        fs::write(out.join("top"), b"top").unwrap();
        let done = finish(&out, 100, 10);
        assert!(done.usage.truncated);
        assert_eq!(done.collected.files, [("top".to_string(), b"top".to_vec())]);
        assert!(done.emptied && empty(&out));

        // A directory that cannot be emptied is not reported empty; a fresh one replaces it.
        fs::create_dir(out.join("locked")).unwrap();
        fs::write(out.join("locked/f"), b"x").unwrap();
        fs::set_permissions(out.join("locked"), fs::Permissions::from_mode(0o500)).unwrap();
        fs::write(out.join("a"), b"a").unwrap();
        let fresh = fresh_slot_dir(base.path(), 0).unwrap();
        assert_eq!(fresh, out);
        assert!(empty(&out));
        let names: Vec<_> = fs::read_dir(base.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["slot-0"], "the old one moved aside and removed");
        // Missing altogether: made.
        fs::remove_dir(&out).unwrap();
        assert_eq!(fresh_slot_dir(base.path(), 0).unwrap(), out);
        assert!(empty(&out));
    }

    #[test]
    fn finish_small_takes_only_the_simple_case() {
        let base = tempfile::tempdir().unwrap();
        let out = fresh_slot_dir(base.path(), 3).unwrap();
        fs::write(out.join("b.txt"), b"2").unwrap();
        fs::write(out.join("a.txt"), b"1").unwrap();
        let Finished {
            usage: u,
            collected: c,
            emptied,
        } = finish_small(&out, 100, 10).unwrap();
        assert_eq!((u.bytes, u.files, u.entries, u.truncated), (2, 2, 2, false));
        let names: Vec<_> = c.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a.txt", "b.txt"]);
        assert!(c.skipped.is_empty() && !c.over_budget);
        assert!(emptied && empty(&out));

        // Anything else is left alone for `finish`.
        for setup in [
            &(|o: &Path| fs::create_dir(o.join("sub")).unwrap()) as &dyn Fn(&Path),
            &|o: &Path| fs::write(o.join("bad name"), b"x").unwrap(),
            &|o: &Path| std::os::unix::fs::symlink("/etc/passwd", o.join("l")).unwrap(),
            &|o: &Path| fs::write(o.join("big"), vec![0u8; 101]).unwrap(),
            &|o: &Path| {
                for i in 0..=SMALL_FILES {
                    fs::write(o.join(format!("f{i}")), b"").unwrap();
                }
            },
        ] {
            setup(&out);
            assert!(finish_small(&out, 100, 10).is_none());
            assert!(!empty(&out), "left alone");
            assert!(finish(&out, 100, 10).emptied);
            assert!(empty(&out));
        }
        assert!(on_ram_fs(Path::new("/dev/shm")) || !Path::new("/dev/shm").exists());
    }

    #[test]
    fn refuses_bad_input_names() {
        let base = tempfile::tempdir().unwrap();
        let dirs = InputDirs::open(base.path()).unwrap();
        assert!(
            dirs.acquire(&Arc::new(vec![("../x".into(), vec![])]))
                .is_err()
        );
        // Only the shared empty directory is left.
        assert_eq!(fs::read_dir(base.path()).unwrap().count(), 1);
    }
}
