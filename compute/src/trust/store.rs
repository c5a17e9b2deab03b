//! The trust store: `<data>/trust.json`, one entry per author fingerprint, changed
//! read-modify-write under an exclusive `flock`, re-read when it changed on disk.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rjs_signer::fsutil::{self, FileError};
use rjs_signer::keys::{KeyError, validate_key_name};
use rjs_signer::{Fingerprint, PublicKey};
use serde::{Deserialize, Serialize};

/// Name of the trust store inside the data directory.
pub const TRUST_FILE: &str = "trust.json";
/// Version written in (and required of) the file.
pub const TRUST_FORMAT: u32 = 1;
/// Largest trust store read.
const MAX_TRUST_BYTES: u64 = 4 * 1024 * 1024;

/// An author's standing in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryStatus {
    Trusted,
    Blocked,
}

impl EntryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryStatus::Trusted => "trusted",
            EntryStatus::Blocked => "blocked",
        }
    }
}

/// What the store says about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustStatus {
    Trusted,
    Blocked,
    Unknown,
}

/// One author in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustEntry {
    pub fingerprint: Fingerprint,
    /// The full key; `None` only for an author blocked by fingerprint alone. A trusted entry
    /// always has its key: trust is granted to the exact key, never to a fingerprint.
    pub key: Option<PublicKey>,
    /// The owner's label for the author (a key name, or empty).
    pub name: String,
    pub status: EntryStatus,
    /// When the entry got its current status, seconds since the Unix epoch.
    pub added_at: u64,
}

/// An author named by full key or by fingerprint (`trust block`, `trust remove`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorRef {
    Key(PublicKey),
    Fingerprint(Fingerprint),
}

impl AuthorRef {
    /// A fingerprint (`xxxx-xxxx-…`, dashes optional), else a public key as
    /// [`PublicKey::load_or_parse`] takes it (a `.pub` file, a `rjs-ed25519 …` line or bare
    /// base64). Returns the name written after a key, if any.
    pub fn parse(text: &str) -> Result<(AuthorRef, Option<String>), KeyError> {
        if let Some(fp) = Fingerprint::parse(text.trim()) {
            return Ok((AuthorRef::Fingerprint(fp), None));
        }
        let (key, name) = PublicKey::load_or_parse(text)?;
        Ok((AuthorRef::Key(key), name))
    }

    pub fn fingerprint(&self) -> Fingerprint {
        match self {
            AuthorRef::Key(k) => k.fingerprint(),
            AuthorRef::Fingerprint(f) => *f,
        }
    }
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new entry.
    Added,
    /// The entry existed with another status.
    Changed { from: EntryStatus },
    /// The entry already had this status (its name may have been updated).
    Unchanged,
}

/// Errors of the trust store.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path} is not a valid trust store: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("locking {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} is not in the trust store")]
    NotFound(Fingerprint),
    #[error(transparent)]
    Name(#[from] KeyError),
}

/// The file's shape.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    version: u32,
    authors: Vec<FileEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    fingerprint: String,
    public_key: Option<String>,
    name: String,
    status: EntryStatus,
    added_at: u64,
}

/// Identity of the file version last read (atomic writes replace the inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

fn stamp_of(meta: &std::fs::Metadata) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    Stamp {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec(),
    }
}

#[derive(Debug, Default)]
struct State {
    entries: Vec<TrustEntry>,
    /// `None`: the file did not exist at the last look.
    stamp: Option<Stamp>,
    loaded: bool,
}

/// The trust store (`<data>/trust.json`). All methods are blocking file operations on a
/// small file; every read first checks (one `stat`) whether the file changed on disk.
#[derive(Debug)]
pub struct TrustStore {
    path: PathBuf,
    lock_path: PathBuf,
    state: Mutex<State>,
}

impl TrustStore {
    /// Opens `<data_dir>/trust.json`; a missing file is an empty store (created at the first
    /// change, with the data directory, mode 0700).
    pub fn open(data_dir: &Path) -> Result<TrustStore, TrustError> {
        Self::open_file(&data_dir.join(TRUST_FILE))
    }

    /// Opens a trust store at an explicit path.
    pub fn open_file(path: &Path) -> Result<TrustStore, TrustError> {
        let mut lock_name = path.file_name().unwrap_or_default().to_os_string();
        lock_name.push(".lock");
        let store = TrustStore {
            path: path.to_path_buf(),
            lock_path: path.with_file_name(lock_name),
            state: Mutex::new(State::default()),
        };
        store.refresh()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file if it changed since the last read.
    pub fn refresh(&self) -> Result<(), TrustError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let current = match std::fs::metadata(&self.path) {
            Ok(m) => Some(stamp_of(&m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(FileError::io("reading", &self.path, e).into()),
        };
        if state.loaded && current == state.stamp {
            return Ok(());
        }
        let (entries, stamp) = self.read_file()?;
        *state = State {
            entries,
            stamp,
            loaded: true,
        };
        Ok(())
    }

    /// Every entry, in the order they were added.
    pub fn list(&self) -> Result<Vec<TrustEntry>, TrustError> {
        self.refresh()?;
        Ok(self.lock_state().entries.clone())
    }

    /// The entry for a fingerprint, if any.
    pub fn get(&self, fingerprint: &Fingerprint) -> Result<Option<TrustEntry>, TrustError> {
        self.refresh()?;
        Ok(self
            .lock_state()
            .entries
            .iter()
            .find(|e| e.fingerprint == *fingerprint)
            .cloned())
    }

    /// Blocked if the key's fingerprint is blocked; trusted only if this exact key is
    /// trusted; unknown otherwise.
    pub fn status(&self, key: &PublicKey) -> Result<TrustStatus, TrustError> {
        self.refresh()?;
        let fp = key.fingerprint();
        let state = self.lock_state();
        Ok(match state.entries.iter().find(|e| e.fingerprint == fp) {
            Some(e) if e.status == EntryStatus::Blocked => TrustStatus::Blocked,
            Some(e) if e.key.as_ref() == Some(key) => TrustStatus::Trusted,
            _ => TrustStatus::Unknown,
        })
    }

    /// Trusts `key` (a blocked author becomes trusted: an explicit owner action). `name`
    /// must be a key name (`A-Z a-z 0-9 . _ @ -`, 1–64 characters).
    pub fn add(&self, key: &PublicKey, name: &str) -> Result<Change, TrustError> {
        validate_key_name(name)?;
        let fp = key.fingerprint();
        self.mutate(|entries| {
            Ok(set_status(
                entries,
                fp,
                Some(*key),
                Some(name),
                EntryStatus::Trusted,
            ))
        })
    }

    /// Blocks an author by key or fingerprint (a trusted author becomes blocked). `name`, if
    /// given, must be a key name; an existing entry keeps its name when `None`.
    pub fn block(&self, author: &AuthorRef, name: Option<&str>) -> Result<Change, TrustError> {
        if let Some(n) = name {
            validate_key_name(n)?;
        }
        let key = match author {
            AuthorRef::Key(k) => Some(*k),
            AuthorRef::Fingerprint(_) => None,
        };
        let fp = author.fingerprint();
        self.mutate(|entries| Ok(set_status(entries, fp, key, name, EntryStatus::Blocked)))
    }

    /// Removes an author's entry (trusted or blocked); the author becomes unknown again.
    pub fn remove(&self, fingerprint: &Fingerprint) -> Result<TrustEntry, TrustError> {
        self.mutate(|entries| {
            let i = entries
                .iter()
                .position(|e| e.fingerprint == *fingerprint)
                .ok_or(TrustError::NotFound(*fingerprint))?;
            Ok(entries.remove(i))
        })
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Read-modify-write under the lock file; the in-memory copy follows the new file.
    fn mutate<T>(
        &self,
        f: impl FnOnce(&mut Vec<TrustEntry>) -> Result<T, TrustError>,
    ) -> Result<T, TrustError> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fsutil::create_private_dir(dir)?;
        }
        let _lock = FileLock::exclusive(&self.lock_path)?;
        let (mut entries, _) = self.read_file()?;
        let out = f(&mut entries)?;
        let doc = FileDoc {
            version: TRUST_FORMAT,
            authors: entries
                .iter()
                .map(|e| FileEntry {
                    fingerprint: e.fingerprint.to_string(),
                    public_key: e.key.as_ref().map(PublicKey::to_base64),
                    name: e.name.clone(),
                    status: e.status,
                    added_at: e.added_at,
                })
                .collect(),
        };
        let mut json = serde_json::to_vec_pretty(&doc).expect("serialising the trust store");
        json.push(b'\n');
        fsutil::write_atomic(&self.path, &json, 0o600)?;
        let stamp = std::fs::metadata(&self.path).ok().map(|m| stamp_of(&m));
        *self.lock_state() = State {
            entries,
            stamp,
            loaded: true,
        };
        Ok(out)
    }

    /// Reads and checks the file (missing: empty).
    fn read_file(&self) -> Result<(Vec<TrustEntry>, Option<Stamp>), TrustError> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), None)),
            Err(e) => return Err(FileError::io("opening", &self.path, e).into()),
        };
        let meta = file
            .metadata()
            .map_err(|e| FileError::io("reading", &self.path, e))?;
        if meta.len() > MAX_TRUST_BYTES {
            return Err(FileError::TooLarge {
                path: self.path.clone(),
                limit: MAX_TRUST_BYTES,
            }
            .into());
        }
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(&file, MAX_TRUST_BYTES + 1), &mut bytes)
            .map_err(|e| FileError::io("reading", &self.path, e))?;
        let corrupt = |reason: String| TrustError::Corrupt {
            path: self.path.clone(),
            reason,
        };
        let doc: FileDoc = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if doc.version != TRUST_FORMAT {
            return Err(corrupt(format!(
                "version {} (this program reads version {TRUST_FORMAT})",
                doc.version
            )));
        }
        let mut entries: Vec<TrustEntry> = Vec::with_capacity(doc.authors.len());
        for (i, e) in doc.authors.into_iter().enumerate() {
            let at = |what: String| corrupt(format!("authors[{i}]: {what}"));
            let fingerprint = Fingerprint::parse(&e.fingerprint)
                .ok_or_else(|| at(format!("bad fingerprint {:?}", e.fingerprint)))?;
            let key = match &e.public_key {
                Some(b64) => {
                    let (k, _) =
                        PublicKey::parse(b64).map_err(|err| at(format!("public_key: {err}")))?;
                    if k.fingerprint() != fingerprint {
                        return Err(at(format!(
                            "public_key has fingerprint {}, not {fingerprint}",
                            k.fingerprint()
                        )));
                    }
                    Some(k)
                }
                None if e.status == EntryStatus::Trusted => {
                    return Err(at("a trusted author needs its public_key".into()));
                }
                None => None,
            };
            if !e.name.is_empty() && validate_key_name(&e.name).is_err() {
                return Err(at(format!("bad name {:?}", e.name)));
            }
            if entries.iter().any(|x| x.fingerprint == fingerprint) {
                return Err(at(format!("{fingerprint} appears twice")));
            }
            entries.push(TrustEntry {
                fingerprint,
                key,
                name: e.name,
                status: e.status,
                added_at: e.added_at,
            });
        }
        Ok((entries, Some(stamp_of(&meta))))
    }
}

fn set_status(
    entries: &mut Vec<TrustEntry>,
    fp: Fingerprint,
    key: Option<PublicKey>,
    name: Option<&str>,
    status: EntryStatus,
) -> Change {
    let now = rjs_signer::unix_now();
    match entries.iter_mut().find(|e| e.fingerprint == fp) {
        Some(e) => {
            if key.is_some() {
                e.key = key;
            }
            if let Some(n) = name {
                e.name = n.to_string();
            }
            if e.status == status {
                Change::Unchanged
            } else {
                let from = e.status;
                e.status = status;
                e.added_at = now;
                Change::Changed { from }
            }
        }
        None => {
            entries.push(TrustEntry {
                fingerprint: fp,
                key,
                name: name.unwrap_or_default().to_string(),
                status,
                added_at: now,
            });
            Change::Added
        }
    }
}

/// An exclusive `flock` held until dropped.
struct FileLock(File);

impl FileLock {
    fn exclusive(path: &Path) -> Result<FileLock, TrustError> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let lock_err = |source| TrustError::Lock {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(lock_err)?;
        loop {
            // SAFETY: a valid open descriptor.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(FileLock(file));
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(lock_err(err));
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid open descriptor (closing it would unlock too).
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use rjs_signer::KeyPair;
    use std::os::unix::fs::PermissionsExt;

    /// The public key of the test key pair made from `seed`.
    pub(in crate::trust) fn key(seed: u8) -> PublicKey {
        KeyPair::from_secret([seed; 32]).public()
    }

    #[test]
    fn store_persists_across_reload_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let store = TrustStore::open(&data).unwrap();
        assert!(store.list().unwrap().is_empty());
        assert!(!data.exists(), "opening does not create anything");
        assert_eq!(store.add(&key(1), "alice").unwrap(), Change::Added);
        assert_eq!(store.add(&key(1), "alice").unwrap(), Change::Unchanged);
        assert_eq!(
            store
                .block(&AuthorRef::Fingerprint(key(2).fingerprint()), None)
                .unwrap(),
            Change::Added
        );
        let path = data.join(TRUST_FILE);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
            0o700
        );

        let again = TrustStore::open(&data).unwrap();
        let list = again.list().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name, "alice");
        assert_eq!(list[0].key, Some(key(1)));
        assert_eq!(list[0].status, EntryStatus::Trusted);
        assert_eq!(list[1].key, None);
        assert_eq!(list[1].status, EntryStatus::Blocked);
        assert_eq!(again.status(&key(1)).unwrap(), TrustStatus::Trusted);
        assert_eq!(again.status(&key(2)).unwrap(), TrustStatus::Blocked);
        assert_eq!(again.status(&key(3)).unwrap(), TrustStatus::Unknown);

        // Block a trusted author by key, then trust again, then remove.
        assert_eq!(
            again.block(&AuthorRef::Key(key(1)), None).unwrap(),
            Change::Changed {
                from: EntryStatus::Trusted
            }
        );
        // The first handle sees the other's change (file changed on disk).
        assert_eq!(store.status(&key(1)).unwrap(), TrustStatus::Blocked);
        assert_eq!(
            store.add(&key(1), "alice2").unwrap(),
            Change::Changed {
                from: EntryStatus::Blocked
            }
        );
        assert_eq!(again.status(&key(1)).unwrap(), TrustStatus::Trusted);
        let removed = again.remove(&key(1).fingerprint()).unwrap();
        assert_eq!(removed.name, "alice2");
        assert_eq!(store.status(&key(1)).unwrap(), TrustStatus::Unknown);
        assert!(matches!(
            store.remove(&key(1).fingerprint()),
            Err(TrustError::NotFound(_))
        ));
        // Only trust.json and its lock file: no temporary files left.
        let mut names: Vec<_> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["trust.json", "trust.json.lock"]);
    }

    #[test]
    fn bad_names_and_corrupt_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = TrustStore::open(dir.path()).unwrap();
        assert!(matches!(
            store.add(&key(1), "\x1b[31mevil"),
            Err(TrustError::Name(_))
        ));
        let path = dir.path().join(TRUST_FILE);
        std::fs::write(&path, "{\"version\": 1, \"authors\": [], \"x\": 1}").unwrap();
        let e = store.status(&key(1)).unwrap_err().to_string();
        assert!(e.contains("not a valid trust store"), "{e}");
        // A trusted entry whose key does not match its fingerprint.
        let doc = serde_json::json!({"version": 1, "authors": [{
            "fingerprint": key(2).fingerprint().to_string(),
            "public_key": key(1).to_base64(),
            "name": "x", "status": "trusted", "added_at": 0}]});
        std::fs::write(&path, doc.to_string()).unwrap();
        let e = TrustStore::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("authors[0]: public_key has fingerprint"), "{e}");
        let doc = serde_json::json!({"version": 2, "authors": []});
        std::fs::write(&path, doc.to_string()).unwrap();
        assert!(TrustStore::open(dir.path()).is_err());
    }

    #[test]
    fn author_refs_parse() {
        let k = key(5);
        let (r, _) = AuthorRef::parse(&k.fingerprint().to_string()).unwrap();
        assert_eq!(r, AuthorRef::Fingerprint(k.fingerprint()));
        let (r, name) = AuthorRef::parse(&k.to_line("bob")).unwrap();
        assert_eq!(r, AuthorRef::Key(k));
        assert_eq!(name.as_deref(), Some("bob"));
        assert_eq!(r.fingerprint(), k.fingerprint());
        assert!(AuthorRef::parse("nonsense").is_err());
    }

    #[tokio::test]
    async fn trust_is_for_the_exact_key() {
        // An entry blocked by fingerprint alone blocks; a trusted entry needs the exact key
        // (checked on load: a trusted entry whose key does not hash to its fingerprint is
        // refused as corrupt, see above).
        let dir = tempfile::tempdir().unwrap();
        let store = TrustStore::open(dir.path()).unwrap();
        store
            .block(
                &AuthorRef::Fingerprint(key(9).fingerprint()),
                Some("mallory"),
            )
            .unwrap();
        assert_eq!(store.status(&key(9)).unwrap(), TrustStatus::Blocked);
        // Trusting the key later replaces the fingerprint-only entry and records the key.
        store.add(&key(9), "mallory").unwrap();
        let e = store.get(&key(9).fingerprint()).unwrap().unwrap();
        assert_eq!(e.key, Some(key(9)));
        assert_eq!(store.status(&key(9)).unwrap(), TrustStatus::Trusted);
    }
}
