//! The answer spool: every answer a node returns is made durable on disk before the lookup
//! offers that node anything else, then relayed to the web server with retries; it is
//! forgotten only after the web server acknowledged it (stored or duplicate). What is left
//! when the lookup stops (or is killed) is relayed at the next start, so a restart loses no
//! answer, and the web server keeps one answer per job.
//!
//! ## Layout (`<data>/spool/`)
//!
//! The spool is a log, not a file per answer: creating and deleting a file per answer made
//! ext4's inode allocator the lookup's main cost at 1,000 answers/s.
//!
//! * `seg-<n>.log` (n: 16 decimal digits, increasing): answers appended one after another.
//!   A record is `"RJSP"`, job id (i64 BE), metadata length (u32 BE), answer length (u32 BE),
//!   SHA-256 of metadata ‖ answer (32 bytes), the metadata JSON ([`SpoolMeta`]), the answer
//!   archive. Appends are made durable by **group commit**: a writer waits until an
//!   `fdatasync` that started after its append has finished; one `fdatasync` covers every
//!   record appended before it. A segment is closed (fully synced, directory synced) at
//!   32 MiB and a new one started; each run starts a new one.
//! * `seg-<n>.acks`: the job ids (i64 BE) of records the web server acknowledged, appended
//!   without fsync: losing an ack only means the answer is uploaded again and acknowledged as
//!   a duplicate.
//! * A closed segment whose every record is acknowledged is deleted with its acks file.
//! * At start every segment is read: records up to the first incomplete or corrupt one (a
//!   crash mid-append) are kept, those not acknowledged are relayed.
//! * `rejected/<job>.zip` + `rejected/<job>.json`: answers the web server refused for good
//!   (4xx other than 408/429, e.g. an unknown job), kept for the administrator.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rjs_cmd::chain;
use rjs_signer::fsutil::{self, FileError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::upstream::{AnswerAck, Backoff, UpstreamError, WebServerClient};

/// Largest answer accepted into the spool (the web server's default limit).
pub const MAX_SPOOLED: u64 = 64 * 1024 * 1024;
/// A segment is closed and a new one started beyond this size.
pub const SEGMENT_BYTES: u64 = 32 * 1024 * 1024;
/// Answers per upload request.
pub const RELAY_BATCH: usize = 256;
/// Answer bytes per upload request (a larger single answer goes alone).
pub const RELAY_BATCH_BYTES: u64 = 16 * 1024 * 1024;
/// Answer bytes kept in memory for the relay; beyond, they are read back from the log.
const MEMORY_BYTES: u64 = 64 * 1024 * 1024;
const MAGIC: &[u8; 4] = b"RJSP";
const HEADER: usize = 4 + 8 + 4 + 4 + 32;
/// Largest metadata JSON.
const MAX_META: u32 = 64 * 1024;

/// What is stored with each answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolMeta {
    pub job_id: i64,
    pub outcome: String,
    pub node: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("answer spool")]
    File(#[from] FileError),
    #[error("answer spool: {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("answer of {size} bytes exceeds the spool's limit of {MAX_SPOOLED}")]
    TooLarge { size: u64 },
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Relay timing.
#[derive(Debug, Clone, Copy)]
pub struct RelayOptions {
    /// First retry delay after a failed upload (doubles, jittered ±50%, up to `retry_cap`).
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Wake-up when nothing signalled a new answer.
    pub rescan: Duration,
    /// Uploads in flight at once.
    pub concurrency: usize,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            retry_base: Duration::from_millis(250),
            retry_cap: Duration::from_secs(30),
            rescan: Duration::from_secs(10),
            concurrency: 4,
        }
    }
}

/// What one relay pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RelayPass {
    pub stored: Vec<i64>,
    pub duplicates: Vec<i64>,
    pub rejected: Vec<i64>,
    /// Still to relay (the web server could not be reached or failed).
    pub remaining: usize,
}

/// One answer waiting for the web server.
#[derive(Debug, Clone)]
struct Entry {
    meta: SpoolMeta,
    seg: u64,
    /// Offset of the answer bytes in the segment, and their length.
    offset: u64,
    len: u32,
    /// The bytes, unless they were dropped from memory (read back from the log).
    bytes: Option<Arc<Vec<u8>>>,
}

struct Segment {
    path: PathBuf,
    acks_path: PathBuf,
    /// Records not acknowledged yet.
    unacked: HashSet<i64>,
    acks: Option<File>,
}

impl Segment {
    /// Segment `seq` of `dir`, with no record yet.
    fn new(dir: &Path, seq: u64) -> Self {
        Segment {
            path: dir.join(seg_name(seq, "log")),
            acks_path: dir.join(seg_name(seq, "acks")),
            unacked: HashSet::new(),
            acks: None,
        }
    }
}

struct Inner {
    cur_seq: u64,
    cur: File,
    cur_len: u64,
    segments: BTreeMap<u64, Segment>,
    /// Not yet taken by the relay, oldest first.
    queue: VecDeque<Entry>,
    /// Taken by the relay, not yet acknowledged: job id → segment.
    in_flight: HashMap<i64, u64>,
    memory: u64,
    /// Appends so far (the group-commit generation).
    written: u64,
}

/// Group commit: which appends are known durable.
#[derive(Default)]
struct SyncState {
    synced: u64,
    syncing: bool,
    /// The last sync's error, for the writers it covered.
    failed_at: Option<(u64, Arc<std::io::Error>)>,
}

pub struct AnswerSpool {
    dir: PathBuf,
    inner: Mutex<Inner>,
    sync: Mutex<SyncState>,
    synced_cv: Condvar,
    notify: Notify,
    /// The web server is reachable again: a relay waiting out its backoff goes at once.
    retry: Notify,
}

fn seg_name(seq: u64, ext: &str) -> String {
    format!("seg-{seq:016}.{ext}")
}

/// A fresh, empty segment file (created, then the directory synced so it survives a crash).
fn create_segment(dir: &Path, seq: u64) -> Result<File, SpoolError> {
    let path = dir.join(seg_name(seq, "log"));
    let f = OpenOptions::new()
        .create_new(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err("creating", &path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", dir))?;
    Ok(f)
}

/// Reads the records of a segment up to the first incomplete or corrupt one.
fn read_segment(path: &Path) -> Result<Vec<(SpoolMeta, u64, u32)>, SpoolError> {
    let mut f = File::open(path).map_err(io_err("opening", path))?;
    let size = f.metadata().map_err(io_err("reading", path))?.len();
    let mut out = Vec::new();
    let mut pos = 0u64;
    loop {
        if size - pos < HEADER as u64 {
            break;
        }
        let mut h = [0u8; HEADER];
        f.read_exact(&mut h).map_err(io_err("reading", path))?;
        let job_id = i64::from_be_bytes(h[4..12].try_into().unwrap_or_default());
        let meta_len = u32::from_be_bytes(h[12..16].try_into().unwrap_or_default());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap_or_default());
        let body = u64::from(meta_len) + u64::from(len);
        if &h[0..4] != MAGIC
            || meta_len > MAX_META
            || u64::from(len) > MAX_SPOOLED
            || size - pos - (HEADER as u64) < body
        {
            if pos + HEADER as u64 + body != size || &h[0..4] != MAGIC {
                tracing::warn!(path = %path.display(), offset = pos, "spool: torn or corrupt record; the rest of this segment is ignored");
            }
            break;
        }
        let mut data = vec![0u8; body as usize];
        f.read_exact(&mut data).map_err(io_err("reading", path))?;
        if Sha256::digest(&data).as_slice() != &h[20..52] {
            tracing::warn!(path = %path.display(), offset = pos, "spool: record fails its checksum; the rest of this segment is ignored");
            break;
        }
        let meta: SpoolMeta = match serde_json::from_slice(&data[..meta_len as usize]) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(path = %path.display(), offset = pos, "spool: bad record metadata ({e}); the rest is ignored");
                break;
            }
        };
        if meta.job_id != job_id {
            break;
        }
        let offset = pos + HEADER as u64 + u64::from(meta_len);
        out.push((meta, offset, len));
        pos += HEADER as u64 + body;
        f.seek(SeekFrom::Start(pos))
            .map_err(io_err("reading", path))?;
    }
    Ok(out)
}

fn read_acks(path: &Path) -> HashSet<i64> {
    let Ok(bytes) = std::fs::read(path) else {
        return HashSet::new();
    };
    bytes
        .chunks_exact(8)
        .map(|c| i64::from_be_bytes(c.try_into().unwrap_or_default()))
        .collect()
}

impl AnswerSpool {
    /// Opens (creating) `<data>/spool`: reads what earlier runs left, deletes fully
    /// acknowledged segments, and starts a new segment.
    pub fn open(data: &Path) -> Result<Arc<Self>, SpoolError> {
        let dir = data.join("spool");
        fsutil::create_private_dir(&dir)?;
        let mut seqs: Vec<u64> = std::fs::read_dir(&dir)
            .map_err(io_err("listing", &dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                let n = name.to_str()?.strip_prefix("seg-")?.strip_suffix(".log")?;
                (n.len() == 16).then(|| n.parse().ok()).flatten()
            })
            .collect();
        seqs.sort_unstable();
        let mut segments = BTreeMap::new();
        let mut queue = VecDeque::new();
        for seq in &seqs {
            let mut seg = Segment::new(&dir, *seq);
            let acked = read_acks(&seg.acks_path);
            for (meta, offset, len) in read_segment(&seg.path)? {
                if acked.contains(&meta.job_id) || !seg.unacked.insert(meta.job_id) {
                    continue;
                }
                queue.push_back(Entry {
                    meta,
                    seg: *seq,
                    offset,
                    len,
                    bytes: None,
                });
            }
            if seg.unacked.is_empty() {
                let _ = std::fs::remove_file(&seg.path);
                let _ = std::fs::remove_file(&seg.acks_path);
                continue;
            }
            segments.insert(*seq, seg);
        }
        let cur_seq = seqs.last().map_or(1, |s| s + 1);
        let cur = create_segment(&dir, cur_seq)?;
        segments.insert(cur_seq, Segment::new(&dir, cur_seq));
        Ok(Arc::new(AnswerSpool {
            dir,
            inner: Mutex::new(Inner {
                cur_seq,
                cur,
                cur_len: 0,
                segments,
                queue,
                in_flight: HashMap::new(),
                memory: 0,
                written: 0,
            }),
            sync: Mutex::new(SyncState::default()),
            synced_cv: Condvar::new(),
            notify: Notify::new(),
            retry: Notify::new(),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an answer and returns once it is durable (group commit); wakes the relay.
    /// Call this before offering the node its next job.
    pub fn put_blocking(
        &self,
        job_id: i64,
        outcome: &str,
        node: &str,
        bytes: Vec<u8>,
    ) -> Result<(), SpoolError> {
        if bytes.len() as u64 > MAX_SPOOLED {
            return Err(SpoolError::TooLarge {
                size: bytes.len() as u64,
            });
        }
        let meta = SpoolMeta {
            job_id,
            outcome: outcome.to_owned(),
            node: node.to_owned(),
        };
        let meta_json = serde_json::to_vec(&meta).expect("spool metadata serializes");
        let mut rec = Vec::with_capacity(HEADER + meta_json.len() + bytes.len());
        rec.extend_from_slice(MAGIC);
        rec.extend_from_slice(&job_id.to_be_bytes());
        rec.extend_from_slice(&(meta_json.len() as u32).to_be_bytes());
        rec.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        let mut h = Sha256::new();
        h.update(&meta_json);
        h.update(&bytes);
        rec.extend_from_slice(&h.finalize());
        rec.extend_from_slice(&meta_json);
        rec.extend_from_slice(&bytes);

        let generation = {
            let mut g = self.lock();
            if g.cur_len > 0 && g.cur_len + rec.len() as u64 > SEGMENT_BYTES {
                self.rotate(&mut g)?;
            }
            let seq = g.cur_seq;
            g.cur
                .write_all(&rec)
                .map_err(|e| io_err("appending to", &self.dir.join(seg_name(seq, "log")))(e))?;
            let offset = g.cur_len + (HEADER + meta_json.len()) as u64;
            g.cur_len += rec.len() as u64;
            if let Some(s) = g.segments.get_mut(&seq) {
                s.unacked.insert(job_id);
            }
            let keep = g.memory + bytes.len() as u64 <= MEMORY_BYTES;
            if keep {
                g.memory += bytes.len() as u64;
            }
            let len = bytes.len() as u32;
            g.queue.push_back(Entry {
                meta,
                seg: seq,
                offset,
                len,
                bytes: keep.then(|| Arc::new(bytes)),
            });
            g.written += 1;
            g.written
        };
        self.wait_durable(generation)?;
        self.notify.notify_one();
        Ok(())
    }

    /// Closes the current segment (fully synced) and starts the next.
    fn rotate(&self, g: &mut Inner) -> Result<(), SpoolError> {
        let path = self.dir.join(seg_name(g.cur_seq, "log"));
        g.cur.sync_all().map_err(io_err("syncing", &path))?;
        let next = g.cur_seq + 1;
        g.cur = create_segment(&self.dir, next)?;
        g.cur_seq = next;
        g.cur_len = 0;
        g.segments.insert(next, Segment::new(&self.dir, next));
        // Everything appended so far is durable now.
        let written = g.written;
        let mut s = self.sync.lock().unwrap_or_else(|e| e.into_inner());
        s.synced = s.synced.max(written);
        self.synced_cv.notify_all();
        let prev = g.cur_seq - 1;
        self.drop_if_done(g, prev);
        Ok(())
    }

    /// Waits until append number `generation` is durable, syncing the current segment if no
    /// one else is (a rotation syncs the segment it closes).
    fn wait_durable(&self, generation: u64) -> Result<(), SpoolError> {
        let mut s = self.sync.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if s.synced >= generation {
                return Ok(());
            }
            if let Some((upto, why)) = &s.failed_at
                && *upto >= generation
            {
                return Err(SpoolError::Io {
                    what: "syncing",
                    path: self.dir.clone(),
                    source: std::io::Error::new(why.kind(), why.clone()),
                });
            }
            if !s.syncing {
                s.syncing = true;
                drop(s);
                let (target, file) = {
                    let g = self.lock();
                    (g.written, g.cur.try_clone())
                };
                let r = file.and_then(|f| f.sync_data());
                s = self.sync.lock().unwrap_or_else(|e| e.into_inner());
                s.syncing = false;
                match r {
                    Ok(()) => s.synced = s.synced.max(target),
                    Err(e) => s.failed_at = Some((target, Arc::new(e))),
                }
                self.synced_cv.notify_all();
            } else {
                s = self.synced_cv.wait(s).unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    /// [`AnswerSpool::put_blocking`] on the blocking thread pool.
    pub async fn put(
        self: &Arc<Self>,
        job_id: i64,
        outcome: String,
        node: String,
        bytes: Vec<u8>,
    ) -> Result<(), SpoolError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.put_blocking(job_id, &outcome, &node, bytes))
            .await
            .map_err(|e| SpoolError::Io {
                what: "writing to",
                path: self.dir.clone(),
                source: std::io::Error::other(e),
            })?
    }

    /// Job ids with an answer not yet acknowledged by the web server, lowest first.
    pub fn pending(&self) -> Result<Vec<i64>, SpoolError> {
        let g = self.lock();
        let mut ids: Vec<i64> = g
            .queue
            .iter()
            .map(|e| e.meta.job_id)
            .chain(g.in_flight.keys().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Tells the relay that the web server is reachable again: it stops waiting out its
    /// backoff and uploads at once.
    pub fn retry_now(&self) {
        self.retry.notify_one();
    }

    /// Number of answers not yet acknowledged.
    pub fn pending_count(&self) -> usize {
        let g = self.lock();
        g.queue.len() + g.in_flight.len()
    }

    /// Takes up to `max` entries for upload, with their bytes: at least one, and no more
    /// than [`RELAY_BATCH_BYTES`] in all after the first.
    fn take(&self, max: usize) -> Vec<(SpoolMeta, Arc<Vec<u8>>)> {
        let mut out = Vec::new();
        let mut total = 0u64;
        let mut g = self.lock();
        while out.len() < max {
            if let Some(next) = g.queue.front()
                && !out.is_empty()
                && total + u64::from(next.len) > RELAY_BATCH_BYTES
            {
                break;
            }
            let Some(e) = g.queue.pop_front() else { break };
            let id = e.meta.job_id;
            // Two answers of one job (it ran again after its lease ran out while the first
            // waited here): the first wins; a later one never travels, in this batch or
            // beside one in flight. It is dropped here as the duplicate it would be.
            // (Everything taken is in flight, so one look covers this batch too.)
            if let Some(&first) = g.in_flight.get(&id) {
                tracing::info!(
                    job = id,
                    "a second answer of the job is dropped: the first is on its way"
                );
                if let Some(b) = &e.bytes {
                    g.memory = g.memory.saturating_sub(b.len() as u64);
                }
                // A segment counts a job once: in the first's segment, its ack settles both.
                if first != e.seg {
                    self.ack_locked(&mut g, e.seg, id);
                }
                continue;
            }
            let bytes = match &e.bytes {
                Some(b) => {
                    g.memory = g.memory.saturating_sub(b.len() as u64);
                    b.clone()
                }
                None => match self.read_back(&g, &e) {
                    Ok(b) => Arc::new(b),
                    Err(err) => {
                        tracing::error!(job = id, error = %chain(&err), "unreadable spooled answer; dropped");
                        self.ack_locked(&mut g, e.seg, id);
                        continue;
                    }
                },
            };
            g.in_flight.insert(id, e.seg);
            total += bytes.len() as u64;
            out.push((e.meta, bytes));
        }
        out
    }

    fn read_back(&self, g: &Inner, e: &Entry) -> Result<Vec<u8>, SpoolError> {
        let path = g
            .segments
            .get(&e.seg)
            .map(|s| s.path.clone())
            .unwrap_or_else(|| self.dir.join(seg_name(e.seg, "log")));
        let f = File::open(&path).map_err(io_err("opening", &path))?;
        let mut buf = vec![0u8; e.len as usize];
        f.read_exact_at(&mut buf, e.offset)
            .map_err(io_err("reading", &path))?;
        Ok(buf)
    }

    /// Puts entries back at the front (their upload failed for now).
    fn put_back(&self, entries: Vec<(SpoolMeta, Arc<Vec<u8>>)>) {
        let mut g = self.lock();
        for (meta, bytes) in entries.into_iter().rev() {
            let id = meta.job_id;
            let Some(seg) = g.in_flight.remove(&id) else {
                continue;
            };
            g.memory += bytes.len() as u64;
            let len = bytes.len() as u32;
            g.queue.push_front(Entry {
                meta,
                seg,
                offset: 0,
                len,
                bytes: Some(bytes),
            });
        }
    }

    /// The web server acknowledged (or refused for good) the answer of `job_id`.
    fn ack(&self, job_id: i64) {
        let mut g = self.lock();
        if let Some(seg) = g.in_flight.remove(&job_id) {
            self.ack_locked(&mut g, seg, job_id);
        }
    }

    fn ack_locked(&self, g: &mut Inner, seg: u64, job_id: i64) {
        let Some(s) = g.segments.get_mut(&seg) else {
            return;
        };
        s.unacked.remove(&job_id);
        if s.acks.is_none() {
            s.acks = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&s.acks_path)
                .ok();
        }
        if let Some(f) = &mut s.acks {
            let _ = f.write_all(&job_id.to_be_bytes());
        }
        self.drop_if_done(g, seg);
    }

    /// Deletes a closed segment whose every record is acknowledged.
    fn drop_if_done(&self, g: &mut Inner, seg: u64) {
        if seg == g.cur_seq {
            return;
        }
        if g.segments.get(&seg).is_some_and(|s| s.unacked.is_empty())
            && let Some(s) = g.segments.remove(&seg)
        {
            let _ = std::fs::remove_file(&s.path);
            let _ = std::fs::remove_file(&s.acks_path);
        }
    }

    fn reject(&self, meta: &SpoolMeta, bytes: &[u8]) {
        let dir = self.dir.join("rejected");
        if fsutil::create_private_dir(&dir).is_ok() {
            let id = meta.job_id;
            let _ = fsutil::write_atomic(&dir.join(format!("{id}.zip")), bytes, 0o600);
            if let Ok(json) = serde_json::to_vec(meta) {
                let _ = fsutil::write_atomic(&dir.join(format!("{id}.json")), &json, 0o600);
            }
        }
        self.ack(meta.job_id);
    }

    /// Settles one uploaded answer by what the web server said of it (`ack`: `None` when the
    /// response did not name it). False when it must go again later (put back).
    fn settle(
        &self,
        pass: &mut RelayPass,
        meta: SpoolMeta,
        bytes: Arc<Vec<u8>>,
        ack: Option<Option<AnswerAck>>,
    ) -> bool {
        let id = meta.job_id;
        match ack {
            Some(Some(AnswerAck::Stored)) => {
                self.ack(id);
                pass.stored.push(id);
            }
            Some(Some(AnswerAck::Duplicate)) => {
                self.ack(id);
                pass.duplicates.push(id);
            }
            Some(None) => {
                tracing::error!(
                    job = id,
                    "web server does not know the job; answer moved aside"
                );
                self.reject(&meta, &bytes);
                pass.rejected.push(id);
            }
            None => {
                // Not in the response: try again later.
                self.put_back(vec![(meta, bytes)]);
                return false;
            }
        }
        true
    }

    /// Uploads everything queued once, in batches of up to [`RELAY_BATCH`] answers
    /// ([`WebServerClient::post_answers`]: one request, one transaction on the web server),
    /// `concurrency` batches at a time; stops starting new uploads at the first transient
    /// failure (the web server is likely down) and leaves the rest for the next pass.
    pub async fn relay_once(
        self: &Arc<Self>,
        client: &WebServerClient,
        concurrency: usize,
    ) -> Result<RelayPass, SpoolError> {
        let mut pass = RelayPass::default();
        let mut running = tokio::task::JoinSet::new();
        let mut failed = false;
        loop {
            while !failed && running.len() < concurrency.max(1) {
                let batch = self.take(RELAY_BATCH);
                if batch.is_empty() {
                    break;
                }
                let client = client.clone();
                running.spawn(async move {
                    let refs: Vec<(i64, &str, &str, &[u8])> = batch
                        .iter()
                        .map(|(m, b)| (m.job_id, m.outcome.as_str(), m.node.as_str(), b.as_slice()))
                        .collect();
                    let r = client.post_answers(&refs).await;
                    (batch, r)
                });
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            let Ok((batch, result)) = joined else {
                continue;
            };
            match result {
                Ok(acks) => {
                    let acks: HashMap<i64, Option<AnswerAck>> = acks.into_iter().collect();
                    for (meta, bytes) in batch {
                        let ack = acks.get(&meta.job_id).copied();
                        failed |= !self.settle(&mut pass, meta, bytes, ack);
                    }
                }
                Err(e) if e.is_transient() => {
                    // An unreachable web server is reported once, by the service's heartbeat;
                    // a web server that answers and fails is worth a warning each time.
                    if e.is_unreachable() {
                        tracing::debug!(answers = batch.len(), error = %chain(&e), "answer relay failed; will retry");
                    } else {
                        tracing::warn!(answers = batch.len(), error = %chain(&e), "answer relay failed; will retry");
                    }
                    failed = true;
                    self.put_back(batch);
                }
                Err(e) if batch.len() > 1 => {
                    // Refused as a whole: one record may be at fault, the others are valid
                    // answers. Each goes again alone before anything is set aside.
                    tracing::warn!(
                        answers = batch.len(),
                        error = %chain(&e),
                        "answer batch refused; sending its answers one by one"
                    );
                    for (meta, bytes) in batch {
                        if failed {
                            self.put_back(vec![(meta, bytes)]);
                            continue;
                        }
                        let one = [(
                            meta.job_id,
                            meta.outcome.as_str(),
                            meta.node.as_str(),
                            bytes.as_slice(),
                        )];
                        match client.post_answers(&one).await {
                            Ok(acks) => {
                                let ack = acks
                                    .into_iter()
                                    .find(|(id, _)| *id == meta.job_id)
                                    .map(|(_, a)| a);
                                failed |= !self.settle(&mut pass, meta, bytes, ack);
                            }
                            Err(e) if e.is_transient() => {
                                failed = true;
                                self.put_back(vec![(meta, bytes)]);
                            }
                            Err(e) => {
                                refused(meta.job_id, &e);
                                self.reject(&meta, &bytes);
                                pass.rejected.push(meta.job_id);
                            }
                        }
                    }
                }
                Err(e) => {
                    for (meta, bytes) in batch {
                        refused(meta.job_id, &e);
                        self.reject(&meta, &bytes);
                        pass.rejected.push(meta.job_id);
                    }
                }
            }
        }
        if failed {
            pass.remaining = self.pending_count();
        }
        Ok(pass)
    }

    /// The relay task: relays what is spooled at once (answers left by a previous run), then
    /// whenever an answer is put or every `rescan`, retrying with jittered backoff while the
    /// web server fails.
    pub fn spawn_relay(
        self: &Arc<Self>,
        client: WebServerClient,
        opts: RelayOptions,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(opts.retry_base, opts.retry_cap);
            loop {
                let failed = match me.relay_once(&client, opts.concurrency).await {
                    Ok(pass) => pass.remaining > 0,
                    Err(e) => {
                        tracing::error!(error = %chain(&e), "answer spool");
                        true
                    }
                };
                if failed {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = me.retry.notified() => backoff.reset(),
                    }
                    continue;
                }
                backoff.reset();
                let _ = tokio::time::timeout(opts.rescan, me.notify.notified()).await;
            }
        })
    }
}

fn refused(id: i64, e: &UpstreamError) {
    tracing::error!(job = id, error = %chain(e), "web server refused the answer; moved aside");
}
