//! The answer spool: every answer a node returns is written to disk (atomically, fsynced)
//! before the node is acknowledged, then relayed to the web server with retries; a file is
//! deleted only after the web server acknowledged it (stored or duplicate). What is left on
//! disk when the lookup stops is relayed at the next start, so a restart loses no answer.
//!
//! Layout: `<data>/spool/<job_id>.zip` (the answer archive) and `<data>/spool/<job_id>.json`
//! (`{"job_id": 7, "outcome": "exit 0", "node": "node-1"}`). The zip is written first and the
//! JSON second: the JSON is the commit mark, a zip without it is ignored (and overwritten by
//! the next put for that job). Answers the web server refuses for good (4xx other than
//! 408/429, e.g. an unknown job) are moved to `<data>/spool/rejected/`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rjs_signer::fsutil::{self, FileError};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::upstream::{AnswerAck, Backoff, WebServerClient, chain};

/// Largest answer read back from the spool (the web server's default limit).
pub const MAX_SPOOLED: u64 = 64 * 1024 * 1024;

/// The JSON next to a spooled answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolMeta {
    pub job_id: i64,
    pub outcome: String,
    pub node: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("answer spool")]
    File(#[from] FileError),
    #[error("reading the spool directory {path}")]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("spool metadata {path}")]
    Meta {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Relay timing.
#[derive(Debug, Clone, Copy)]
pub struct RelayOptions {
    /// First retry delay after a failed upload (doubles, jittered ±50%, up to `retry_cap`).
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Rescan of the directory when nothing signalled a new answer.
    pub rescan: Duration,
    /// Uploads in flight at once.
    pub concurrency: usize,
}

/// How relaying one spooled answer ended.
enum Relayed {
    /// Nothing (left) to relay.
    Gone,
    Acked(AnswerAck),
    Rejected,
    Retry,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            retry_base: Duration::from_millis(250),
            retry_cap: Duration::from_secs(30),
            rescan: Duration::from_secs(10),
            concurrency: 16,
        }
    }
}

/// What one relay pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RelayPass {
    pub stored: Vec<i64>,
    pub duplicates: Vec<i64>,
    pub rejected: Vec<i64>,
    /// Still on disk (the web server could not be reached or failed).
    pub remaining: usize,
}

pub struct AnswerSpool {
    dir: PathBuf,
    notify: Notify,
}

impl AnswerSpool {
    /// Opens (creating) `<data>/spool`.
    pub fn open(data: &Path) -> Result<Arc<Self>, SpoolError> {
        let dir = data.join("spool");
        fsutil::create_private_dir(&dir)?;
        Ok(Arc::new(AnswerSpool {
            dir,
            notify: Notify::new(),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn zip_path(&self, job_id: i64) -> PathBuf {
        self.dir.join(format!("{job_id}.zip"))
    }

    fn meta_path(&self, job_id: i64) -> PathBuf {
        self.dir.join(format!("{job_id}.json"))
    }

    /// Writes an answer durably (returns once it is on disk) and wakes the relay. Call this
    /// before acknowledging the node.
    pub fn put_blocking(
        &self,
        job_id: i64,
        outcome: &str,
        node: &str,
        bytes: &[u8],
    ) -> Result<(), SpoolError> {
        fsutil::write_atomic(&self.zip_path(job_id), bytes, 0o600)?;
        let meta = SpoolMeta {
            job_id,
            outcome: outcome.to_owned(),
            node: node.to_owned(),
        };
        let json = serde_json::to_vec(&meta).expect("meta serializes");
        fsutil::write_atomic(&self.meta_path(job_id), &json, 0o600)?;
        self.notify.notify_one();
        Ok(())
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
        tokio::task::spawn_blocking(move || me.put_blocking(job_id, &outcome, &node, &bytes))
            .await
            .expect("spool write task")
    }

    /// Job ids with a complete spooled answer, lowest first.
    pub fn pending(&self) -> Result<Vec<i64>, SpoolError> {
        let rd = std::fs::read_dir(&self.dir).map_err(|source| SpoolError::List {
            path: self.dir.clone(),
            source,
        })?;
        let mut ids: Vec<i64> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                name.strip_suffix(".json")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    fn load(&self, job_id: i64) -> Result<Option<(SpoolMeta, Vec<u8>)>, SpoolError> {
        let mp = self.meta_path(job_id);
        let raw = fsutil::read_bounded(&mp, 64 * 1024)?;
        let meta: SpoolMeta =
            serde_json::from_slice(&raw).map_err(|source| SpoolError::Meta { path: mp, source })?;
        match fsutil::read_bounded(&self.zip_path(job_id), MAX_SPOOLED) {
            Ok(b) => Ok(Some((meta, b))),
            Err(FileError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                // Half-deleted entry: the answer was acknowledged already.
                let _ = std::fs::remove_file(self.meta_path(job_id));
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn remove(&self, job_id: i64) {
        // Meta first: a zip without its meta is ignored.
        let _ = std::fs::remove_file(self.meta_path(job_id));
        let _ = std::fs::remove_file(self.zip_path(job_id));
    }

    fn reject(&self, job_id: i64) {
        let dir = self.dir.join("rejected");
        if fsutil::create_private_dir(&dir).is_ok() {
            let _ = std::fs::rename(self.zip_path(job_id), dir.join(format!("{job_id}.zip")));
            let _ = std::fs::rename(self.meta_path(job_id), dir.join(format!("{job_id}.json")));
        }
        self.remove(job_id);
    }

    /// Posts every spooled answer once, up to [`RelayOptions::concurrency`] at a time; stops
    /// starting new uploads at the first transient failure (the web server is likely down)
    /// and leaves the rest for the next pass.
    pub async fn relay_once(
        self: &Arc<Self>,
        client: &WebServerClient,
        concurrency: usize,
    ) -> Result<RelayPass, SpoolError> {
        let me = self.clone();
        let ids = tokio::task::spawn_blocking(move || me.pending())
            .await
            .expect("spool list task")?;
        let mut pass = RelayPass::default();
        let mut next = ids.into_iter();
        let mut running = tokio::task::JoinSet::new();
        let mut failed = false;
        loop {
            while !failed && running.len() < concurrency.max(1) {
                let Some(id) = next.next() else { break };
                let (me, client) = (self.clone(), client.clone());
                running.spawn(async move { (id, me.relay_one(id, &client).await) });
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            let Ok((id, result)) = joined else { continue };
            match result {
                Relayed::Gone => {}
                Relayed::Acked(AnswerAck::Stored) => pass.stored.push(id),
                Relayed::Acked(AnswerAck::Duplicate) => pass.duplicates.push(id),
                Relayed::Rejected => pass.rejected.push(id),
                Relayed::Retry => {
                    failed = true;
                    pass.remaining += 1;
                }
            }
        }
        pass.remaining += next.len();
        Ok(pass)
    }

    /// Uploads one spooled answer and removes it once acknowledged.
    async fn relay_one(self: Arc<Self>, id: i64, client: &WebServerClient) -> Relayed {
        let me = self.clone();
        let loaded = tokio::task::spawn_blocking(move || me.load(id))
            .await
            .expect("spool read task");
        let (meta, bytes) = match loaded {
            Ok(Some(x)) => x,
            Ok(None) => return Relayed::Gone,
            Err(e) => {
                tracing::error!(job = id, error = %chain(&e), "unreadable spooled answer; moved aside");
                self.reject(id);
                return Relayed::Rejected;
            }
        };
        match client
            .post_answer(id, &meta.outcome, &meta.node, bytes)
            .await
        {
            Ok(ack) => {
                self.remove(id);
                Relayed::Acked(ack)
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(job = id, error = %chain(&e), "answer relay failed; will retry");
                Relayed::Retry
            }
            Err(e) => {
                tracing::error!(job = id, error = %chain(&e), "web server refused the answer; moved aside");
                self.reject(id);
                Relayed::Rejected
            }
        }
    }

    /// The relay task: relays what is on disk at once (answers left by a previous run), then
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
                match me.relay_once(&client, opts.concurrency).await {
                    Ok(pass) if pass.remaining > 0 => {
                        tokio::time::sleep(backoff.next_delay()).await;
                        continue;
                    }
                    Ok(_) => backoff.reset(),
                    Err(e) => {
                        tracing::error!(error = %chain(&e), "answer spool");
                        tokio::time::sleep(backoff.next_delay()).await;
                        continue;
                    }
                }
                let _ = tokio::time::timeout(opts.rescan, me.notify.notified()).await;
            }
        })
    }
}
