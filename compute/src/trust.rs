//! The owner's trust store and the gatekeeper that decides, for each job, whether its author
//! may run code on this PC. See `docs/compute-node.md` ("Trust store and prompt").
//!
//! * [`TrustStore`]: `<data>/trust.json` (mode 0600, written atomically), one entry per
//!   author fingerprint, `trusted` or `blocked`. Changes are read-modify-write under an
//!   exclusive `flock` on `<data>/trust.json.lock`, so `rjs-compute trust add` and a running
//!   node answering a prompt never lose each other's change; a running node notices a changed
//!   file (by inode, size and mtime) at its next decision, without a restart.
//! * [`Gatekeeper`]: trusted → run; blocked → refuse without asking; unknown → ask the owner
//!   once through a [`Prompter`] (several jobs of the same unknown author waiting at the same
//!   time share the one answer), or refuse when no one can be asked.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rjs_signer::fsutil::{self, FileError};
use rjs_signer::keys::{KeyError, validate_key_name};
use rjs_signer::{Fingerprint, Limits, PublicKey};
use rjs_wire::node::RefusalCode;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{NodeConfig, UnknownAuthorPolicy};

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

// ---------------------------------------------------------------------------------------------
// The gatekeeper.

/// What the gatekeeper needs to know about a job (from its verified bundle).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRequest {
    /// The key the bundle is signed with (its fingerprint is derived from it).
    pub key: PublicKey,
    /// The signer's self-declared name (from the signature entry; not proof of anything).
    pub signer_name: String,
    /// The bundle's manifest name.
    pub bundle_name: String,
    /// The limits the manifest asks for.
    pub limits: Limits,
}

/// The gatekeeper's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Run,
    /// `code` is [`RefusalCode::Blocked`] or [`RefusalCode::Untrusted`].
    Refuse {
        code: RefusalCode,
        reason: String,
    },
}

impl Decision {
    fn refuse(code: RefusalCode, reason: impl Into<String>) -> Decision {
        Decision::Refuse {
            code,
            reason: reason.into(),
        }
    }
}

/// The owner's answer to the trust prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Run this job; ask again next time.
    Once,
    /// Trust the author from now on (persisted), and run.
    Always,
    /// Block the author from now on (persisted), and refuse.
    Never,
    /// Refuse this job; ask again next time.
    Refuse,
}

/// What the prompt shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub signer_name: String,
    pub fingerprint: Fingerprint,
    pub bundle_name: String,
    pub limits: Limits,
}

/// How a prompt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptOutcome {
    Answered(Answer),
    /// No answer before the deadline.
    TimedOut,
    /// The prompt could not be shown or read (terminal gone, node in the background…).
    Failed(String),
}

/// Something that can ask the owner. `ask` blocks and must return by `deadline`; the
/// gatekeeper calls it on a blocking thread, one question at a time.
pub trait Prompter: Send + Sync + 'static {
    fn ask(&self, question: &Question, deadline: Instant) -> PromptOutcome;
}

const NO_TERMINAL: &str = "no one can be asked (no terminal attached)";
/// A question is not shown with less time than this left (or half the timeout, if less):
/// the decision is then a timeout without flashing a prompt nobody can answer.
const MIN_PROMPT_TIME: Duration = Duration::from_secs(3);

/// Decides, for each job, whether its author may run here. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Gatekeeper {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<TrustStore>,
    prompter: Option<Arc<dyn Prompter>>,
    /// Why no one is asked when `prompter` is `None`.
    no_prompter: String,
    timeout: Duration,
    /// Questions in flight, by author: later jobs of the same author wait for the answer.
    pending: Mutex<HashMap<PublicKey, watch::Receiver<Option<Decision>>>>,
    /// One prompt on the terminal at a time.
    terminal: tokio::sync::Mutex<()>,
    prompts: AtomicU64,
}

impl std::fmt::Debug for Gatekeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gatekeeper")
            .field("store", &self.inner.store.path())
            .field("can_ask", &self.can_ask())
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

impl Gatekeeper {
    /// A gatekeeper over `store`. With `prompter` `None`, unknown authors are refused.
    /// `timeout` bounds each decision that needs the owner (waiting for the terminal included).
    pub fn new(
        store: Arc<TrustStore>,
        prompter: Option<Arc<dyn Prompter>>,
        timeout: Duration,
    ) -> Gatekeeper {
        Self::build(store, prompter, timeout, NO_TERMINAL)
    }

    fn build(
        store: Arc<TrustStore>,
        prompter: Option<Arc<dyn Prompter>>,
        timeout: Duration,
        no_prompter: &str,
    ) -> Gatekeeper {
        Gatekeeper {
            inner: Arc::new(Inner {
                store,
                prompter,
                no_prompter: no_prompter.to_string(),
                timeout,
                pending: Mutex::new(HashMap::new()),
                terminal: tokio::sync::Mutex::new(()),
                prompts: AtomicU64::new(0),
            }),
        }
    }

    /// The node's gatekeeper: the store at `<data>/trust.json`, the configured timeout, and
    /// the terminal prompt when `unknown_authors = "ask"` and a terminal is attached
    /// ([`crate::prompt::TerminalPrompter::detect`]).
    pub fn for_node(config: &NodeConfig) -> Result<Gatekeeper, TrustError> {
        let store = Arc::new(TrustStore::open(&config.data_dir)?);
        let (prompter, why): (Option<Arc<dyn Prompter>>, &str) = match config.unknown_authors {
            UnknownAuthorPolicy::Refuse => (
                None,
                "unknown authors are refused (unknown_authors = \"refuse\")",
            ),
            UnknownAuthorPolicy::Ask => match crate::prompt::TerminalPrompter::detect() {
                Some(p) => (Some(Arc::new(p)), NO_TERMINAL),
                None => (None, NO_TERMINAL),
            },
        };
        Ok(Self::build(store, prompter, config.prompt_timeout, why))
    }

    pub fn store(&self) -> &Arc<TrustStore> {
        &self.inner.store
    }

    /// Whether unknown authors can be asked about (else they are refused).
    pub fn can_ask(&self) -> bool {
        self.inner.prompter.is_some()
    }

    /// How many prompts have been shown so far.
    pub fn prompts_shown(&self) -> u64 {
        self.inner.prompts.load(Ordering::Relaxed)
    }

    /// Decides for one job. Returns at once for trusted and blocked authors and when no one
    /// can be asked; otherwise within the prompt timeout. Must be called inside a tokio
    /// runtime. Cancelling the returned future does not cancel a prompt on screen (its
    /// answer still counts, for other jobs and when persisted).
    pub async fn decide(&self, req: &JobRequest) -> Decision {
        let fp = req.key.fingerprint();
        match self.inner.store.status(&req.key) {
            Ok(TrustStatus::Trusted) => return Decision::Run,
            Ok(TrustStatus::Blocked) => return blocked(fp),
            Ok(TrustStatus::Unknown) => {}
            Err(e) => return store_failed(&e),
        }
        let Some(prompter) = self.inner.prompter.clone() else {
            return Decision::refuse(
                RefusalCode::Untrusted,
                format!(
                    "author {} ({fp}) is not trusted on this node and {}",
                    crate::prompt::sanitize(&req.signer_name, 64),
                    self.inner.no_prompter
                ),
            );
        };
        let mut rx = {
            let mut pending = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
            match pending.get(&req.key) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    pending.insert(req.key, rx.clone());
                    let inner = self.inner.clone();
                    let req = req.clone();
                    tokio::spawn(async move {
                        let key = req.key;
                        let decision = inner.clone().ask(req, prompter).await;
                        let mut pending = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
                        pending.remove(&key);
                        tx.send_replace(Some(decision));
                    });
                    rx
                }
            }
        };
        match rx.wait_for(Option::is_some).await {
            Ok(d) => d.clone().unwrap_or_else(|| prompt_failed("no decision")),
            Err(_) => prompt_failed("the prompt task ended without an answer"),
        }
    }
}

fn blocked(fp: Fingerprint) -> Decision {
    Decision::refuse(
        RefusalCode::Blocked,
        format!("author {fp} is blocked on this node"),
    )
}

fn store_failed(e: &TrustError) -> Decision {
    Decision::refuse(
        RefusalCode::Untrusted,
        format!(
            "the node's trust store cannot be read: {}",
            rjs_signer::error_chain(e)
        ),
    )
}

fn prompt_failed(why: &str) -> Decision {
    Decision::refuse(
        RefusalCode::Untrusted,
        format!("could not ask the node's owner: {why}"),
    )
}

impl Inner {
    fn timed_out(&self) -> Decision {
        Decision::refuse(
            RefusalCode::Untrusted,
            format!("no answer within {} s", self.timeout.as_secs_f64().round()),
        )
    }

    /// One question: wait for the terminal, re-check the store, ask, persist.
    async fn ask(self: Arc<Self>, req: JobRequest, prompter: Arc<dyn Prompter>) -> Decision {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let Ok(guard) = tokio::time::timeout_at(deadline, self.terminal.lock()).await else {
            return self.timed_out();
        };
        let inner = self.clone();
        let std_deadline = deadline.into_std();
        let result =
            tokio::task::spawn_blocking(move || inner.ask_blocking(&req, &*prompter, std_deadline))
                .await;
        drop(guard);
        result.unwrap_or_else(|_| prompt_failed("the prompt panicked"))
    }

    fn ask_blocking(
        &self,
        req: &JobRequest,
        prompter: &dyn Prompter,
        deadline: Instant,
    ) -> Decision {
        let fp = req.key.fingerprint();
        // The owner may have decided meanwhile (an earlier prompt, `rjs-compute trust add`).
        match self.store.status(&req.key) {
            Ok(TrustStatus::Trusted) => return Decision::Run,
            Ok(TrustStatus::Blocked) => return blocked(fp),
            Ok(TrustStatus::Unknown) => {}
            Err(e) => return store_failed(&e),
        }
        let enough = MIN_PROMPT_TIME.min(self.timeout / 2);
        if deadline.saturating_duration_since(Instant::now()) < enough {
            return self.timed_out();
        }
        let question = Question {
            signer_name: req.signer_name.clone(),
            fingerprint: fp,
            bundle_name: req.bundle_name.clone(),
            limits: req.limits,
        };
        self.prompts.fetch_add(1, Ordering::Relaxed);
        // The name stored with "always"/"never": the self-declared one if it is a valid key
        // name (verified bundles guarantee it), else none.
        let name = validate_key_name(&req.signer_name)
            .is_ok()
            .then_some(req.signer_name.as_str());
        match prompter.ask(&question, deadline) {
            PromptOutcome::Answered(Answer::Once) => Decision::Run,
            PromptOutcome::Answered(Answer::Always) => {
                if let Err(e) = self.store.add(&req.key, name.unwrap_or("unnamed")) {
                    tracing::error!(
                        "could not record {fp} as trusted (running this job anyway, as answered): {}",
                        rjs_signer::error_chain(&e)
                    );
                }
                Decision::Run
            }
            PromptOutcome::Answered(Answer::Never) => {
                if let Err(e) = self.store.block(&AuthorRef::Key(req.key), name) {
                    tracing::error!(
                        "could not record {fp} as blocked: {}",
                        rjs_signer::error_chain(&e)
                    );
                }
                Decision::refuse(
                    RefusalCode::Blocked,
                    format!("the node's owner blocked author {fp}"),
                )
            }
            PromptOutcome::Answered(Answer::Refuse) => {
                Decision::refuse(RefusalCode::Untrusted, "the node's owner refused this job")
            }
            PromptOutcome::TimedOut => self.timed_out(),
            PromptOutcome::Failed(why) => prompt_failed(&why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rjs_signer::KeyPair;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::AtomicUsize;

    fn key(seed: u8) -> PublicKey {
        KeyPair::from_secret([seed; 32]).public()
    }

    fn limits() -> Limits {
        Limits {
            time_ms: 60_000,
            memory_bytes: 256 << 20,
            output_bytes: 64 << 20,
            stdout_bytes: 1 << 20,
        }
    }

    fn req(seed: u8) -> JobRequest {
        JobRequest {
            key: key(seed),
            signer_name: format!("author{seed}"),
            bundle_name: "mandelbrot".into(),
            limits: limits(),
        }
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

    /// A prompter that counts questions, waits a little (so concurrent jobs pile up), and
    /// gives a fixed answer (or none: sleeps to the deadline).
    struct Fake {
        answer: Option<Answer>,
        asked: AtomicUsize,
        delay: Duration,
    }

    impl Fake {
        fn new(answer: Option<Answer>) -> Arc<Fake> {
            Arc::new(Fake {
                answer,
                asked: AtomicUsize::new(0),
                delay: Duration::from_millis(200),
            })
        }
    }

    impl Prompter for Fake {
        fn ask(&self, _q: &Question, deadline: Instant) -> PromptOutcome {
            self.asked.fetch_add(1, Ordering::SeqCst);
            match self.answer {
                Some(a) => {
                    std::thread::sleep(self.delay);
                    PromptOutcome::Answered(a)
                }
                None => {
                    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                    PromptOutcome::TimedOut
                }
            }
        }
    }

    fn gatekeeper(dir: &Path, fake: &Arc<Fake>, timeout: Duration) -> Gatekeeper {
        let store = Arc::new(TrustStore::open(dir).unwrap());
        Gatekeeper::new(store, Some(fake.clone() as Arc<dyn Prompter>), timeout)
    }

    async fn decide_many(g: &Gatekeeper, r: &JobRequest, n: usize) -> Vec<Decision> {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let g = g.clone();
                let r = r.clone();
                tokio::spawn(async move { g.decide(&r).await })
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_jobs_of_one_author_share_one_answer() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::new(Some(Answer::Always));
        let g = gatekeeper(dir.path(), &fake, Duration::from_secs(10));
        let decisions = decide_many(&g, &req(1), 8).await;
        assert!(
            decisions.iter().all(|d| *d == Decision::Run),
            "{decisions:?}"
        );
        assert_eq!(fake.asked.load(Ordering::SeqCst), 1);
        // Persisted: later jobs (and a new gatekeeper = restart) do not ask.
        assert_eq!(g.decide(&req(1)).await, Decision::Run);
        let g2 = gatekeeper(dir.path(), &fake, Duration::from_secs(10));
        assert_eq!(g2.decide(&req(1)).await, Decision::Run);
        assert_eq!(fake.asked.load(Ordering::SeqCst), 1);
        assert_eq!(g.prompts_shown(), 1);
        let entry = g.store().get(&key(1).fingerprint()).unwrap().unwrap();
        assert_eq!(entry.name, "author1");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_blocks_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::new(Some(Answer::Never));
        let g = gatekeeper(dir.path(), &fake, Duration::from_secs(10));
        let decisions = decide_many(&g, &req(2), 4).await;
        for d in &decisions {
            assert!(
                matches!(
                    d,
                    Decision::Refuse {
                        code: RefusalCode::Blocked,
                        ..
                    }
                ),
                "{d:?}"
            );
        }
        assert_eq!(fake.asked.load(Ordering::SeqCst), 1);
        let g2 = gatekeeper(dir.path(), &fake, Duration::from_secs(10));
        let d = g2.decide(&req(2)).await;
        assert!(
            matches!(&d, Decision::Refuse { code: RefusalCode::Blocked, reason } if reason.contains("is blocked")),
            "{d:?}"
        );
        assert_eq!(fake.asked.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn once_and_refuse_are_not_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let once = Fake::new(Some(Answer::Once));
        let g = gatekeeper(dir.path(), &once, Duration::from_secs(10));
        assert_eq!(g.decide(&req(3)).await, Decision::Run);
        assert_eq!(g.decide(&req(3)).await, Decision::Run);
        assert_eq!(once.asked.load(Ordering::SeqCst), 2, "asked again");
        let refuse = Fake::new(Some(Answer::Refuse));
        let g = gatekeeper(dir.path(), &refuse, Duration::from_secs(10));
        let d = g.decide(&req(3)).await;
        assert_eq!(
            d,
            Decision::Refuse {
                code: RefusalCode::Untrusted,
                reason: "the node's owner refused this job".into()
            }
        );
        assert_eq!(g.store().status(&key(3)).unwrap(), TrustStatus::Unknown);
        assert!(!dir.path().join(TRUST_FILE).exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_answer_times_out_for_every_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::new(None);
        let g = gatekeeper(dir.path(), &fake, Duration::from_secs(1));
        let start = Instant::now();
        let decisions = decide_many(&g, &req(4), 3).await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{took:?}"
        );
        for d in decisions {
            assert_eq!(
                d,
                Decision::Refuse {
                    code: RefusalCode::Untrusted,
                    reason: "no answer within 1 s".into()
                }
            );
        }
        assert_eq!(fake.asked.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn different_authors_are_asked_one_after_the_other() {
        let dir = tempfile::tempdir().unwrap();
        struct Serial {
            inside: AtomicUsize,
            overlap: AtomicUsize,
        }
        impl Prompter for Serial {
            fn ask(&self, _q: &Question, _d: Instant) -> PromptOutcome {
                if self.inside.fetch_add(1, Ordering::SeqCst) > 0 {
                    self.overlap.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(100));
                self.inside.fetch_sub(1, Ordering::SeqCst);
                PromptOutcome::Answered(Answer::Once)
            }
        }
        let p = Arc::new(Serial {
            inside: AtomicUsize::new(0),
            overlap: AtomicUsize::new(0),
        });
        let store = Arc::new(TrustStore::open(dir.path()).unwrap());
        let g = Gatekeeper::new(
            store,
            Some(p.clone() as Arc<dyn Prompter>),
            Duration::from_secs(10),
        );
        let (r5, r6, r7) = (req(5), req(6), req(7));
        let (a, b, c) = tokio::join!(g.decide(&r5), g.decide(&r6), g.decide(&r7));
        assert_eq!((a, b, c), (Decision::Run, Decision::Run, Decision::Run));
        assert_eq!(p.overlap.load(Ordering::SeqCst), 0);
        assert_eq!(g.prompts_shown(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_prompt_flashed_with_too_little_time_left() {
        // Author 5's question takes most of the timeout; author 6, waiting for the terminal
        // meanwhile, would have under half the timeout left: refused as timed out, unasked.
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake {
            answer: Some(Answer::Once),
            asked: AtomicUsize::new(0),
            delay: Duration::from_millis(1500),
        });
        let g = gatekeeper(dir.path(), &fake, Duration::from_secs(2));
        let first = {
            let g = g.clone();
            tokio::spawn(async move { g.decide(&req(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = g.decide(&req(6)).await;
        assert_eq!(first.await.unwrap(), Decision::Run);
        assert_eq!(
            second,
            Decision::Refuse {
                code: RefusalCode::Untrusted,
                reason: "no answer within 2 s".into()
            }
        );
        assert_eq!(fake.asked.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn trusted_blocked_and_unaskable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(TrustStore::open(dir.path()).unwrap());
        store.add(&key(1), "alice").unwrap();
        store.block(&AuthorRef::Key(key(2)), None).unwrap();
        let g = Gatekeeper::new(store.clone(), None, Duration::from_secs(10));
        assert!(!g.can_ask());
        assert_eq!(g.decide(&req(1)).await, Decision::Run);
        assert!(matches!(
            g.decide(&req(2)).await,
            Decision::Refuse {
                code: RefusalCode::Blocked,
                ..
            }
        ));
        let d = g.decide(&req(3)).await;
        assert!(
            matches!(&d, Decision::Refuse { code: RefusalCode::Untrusted, reason } if reason.contains("not trusted") && reason.contains("no terminal")),
            "{d:?}"
        );
        // A blocked author is never asked about, even with a prompter.
        let fake = Fake::new(Some(Answer::Always));
        let g = Gatekeeper::new(
            store,
            Some(fake.clone() as Arc<dyn Prompter>),
            Duration::from_secs(10),
        );
        assert!(matches!(
            g.decide(&req(2)).await,
            Decision::Refuse {
                code: RefusalCode::Blocked,
                ..
            }
        ));
        assert_eq!(fake.asked.load(Ordering::SeqCst), 0);
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
