//! Group commit of answers. Every answer upload (single or batch) hands its answers, blobs
//! already committed, to one committer thread, which records everything that arrived while
//! its previous transaction was being synced in ONE [`Store::record_answers`] call: under
//! load, many requests share one transaction and one fsync instead of one each. Each request
//! gets its own answers' results back; a failed transaction fails every request in it (and
//! stores nothing of them).

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::error::ApiError;
use crate::store::{AnswerOutcome, NewAnswer, Store, StoreError, now};

/// Most answers recorded in one transaction.
pub const MAX_GROUP: usize = 2048;

/// An answer ready to record: its archive inline, or its blob committed.
#[derive(Debug)]
pub struct Ready {
    pub job_id: i64,
    pub outcome: String,
    pub node: String,
    /// SHA-256 of the archive, hex.
    pub sha256: String,
    pub size: u64,
    /// The archive, when it is kept in the metadata store.
    pub inline: Option<Vec<u8>>,
}

/// One answer's result: its outcome (`NotLeased`: nothing stored), or None when the job does
/// not exist (nothing stored).
pub type Recorded = Option<AnswerOutcome>;

struct Request {
    lookup_id: i64,
    answers: Vec<Ready>,
    reply: oneshot::Sender<Result<Vec<Recorded>, ApiError>>,
}

/// Handle to the committer thread; the thread ends when the handle is dropped.
pub struct AnswerCommitter {
    tx: mpsc::Sender<Request>,
}

impl std::fmt::Debug for AnswerCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerCommitter").finish_non_exhaustive()
    }
}

impl AnswerCommitter {
    /// Starts the committer thread over `store`.
    pub fn start(store: Arc<dyn Store>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("rjs-answers".into())
            .spawn(move || run(store.as_ref(), &rx))?;
        Ok(AnswerCommitter { tx })
    }

    /// Records this lookup's answers (in a transaction shared with other requests'); one result
    /// per answer, in order.
    pub async fn record(
        &self,
        lookup_id: i64,
        answers: Vec<Ready>,
    ) -> Result<Vec<Recorded>, ApiError> {
        if answers.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request {
                lookup_id,
                answers,
                reply,
            })
            .map_err(|_| ApiError::internal_msg("recording answers", "the committer stopped"))?;
        rx.await.unwrap_or_else(|_| {
            Err(ApiError::internal_msg(
                "recording answers",
                "the committer dropped the request",
            ))
        })
    }
}

/// How often the committer logs what it recorded (at `info`; each answer is logged at
/// `debug` only).
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Answers recorded since the last summary line.
#[derive(Default)]
struct Tally {
    transactions: u64,
    stored: u64,
    duplicate: u64,
    not_leased: u64,
    not_found: u64,
}

impl Tally {
    fn add(&mut self, results: &[Result<AnswerOutcome, StoreError>]) {
        self.transactions += 1;
        for r in results {
            match r {
                Ok(AnswerOutcome::Stored) => self.stored += 1,
                Ok(AnswerOutcome::Duplicate) => self.duplicate += 1,
                Ok(AnswerOutcome::NotLeased) => self.not_leased += 1,
                Err(_) => self.not_found += 1,
            }
        }
    }
}

fn run(store: &dyn Store, rx: &mpsc::Receiver<Request>) {
    let mut tally = Tally::default();
    let mut since = Instant::now();
    loop {
        let first = match rx.recv_timeout(SUMMARY_EVERY) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                summary(&mut tally, &mut since);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                summary(&mut tally, &mut since);
                return;
            }
        };
        let mut count = first.answers.len();
        let mut group = vec![first];
        while count < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => {
                    count += r.answers.len();
                    group.push(r);
                }
                Err(_) => break,
            }
        }
        commit(store, group, count, &mut tally);
        if since.elapsed() >= SUMMARY_EVERY {
            summary(&mut tally, &mut since);
        }
    }
}

fn summary(tally: &mut Tally, since: &mut Instant) {
    if tally.transactions > 0 {
        tracing::info!(
            stored = tally.stored,
            duplicate = tally.duplicate,
            not_leased = tally.not_leased,
            not_found = tally.not_found,
            transactions = tally.transactions,
            secs = since.elapsed().as_secs(),
            "answers recorded"
        );
    }
    *tally = Tally::default();
    *since = Instant::now();
}

fn commit(store: &dyn Store, group: Vec<Request>, count: usize, tally: &mut Tally) {
    let now = now();
    let mut answers: Vec<NewAnswer<'_>> = Vec::with_capacity(count);
    for r in &group {
        answers.extend(r.answers.iter().map(|a| NewAnswer {
            lookup_id: r.lookup_id,
            job_id: a.job_id,
            sha256: &a.sha256,
            size: a.size,
            outcome: &a.outcome,
            node: &a.node,
            now,
            inline: a.inline.as_deref(),
        }));
    }
    let result = store.record_answers(&answers);
    drop(answers);
    let mut results = match result {
        Ok(results) if results.len() == count => {
            tally.add(&results);
            results.into_iter()
        }
        Ok(results) => {
            let e = ApiError::internal_msg(
                "recording answers",
                &format!(
                    "the store returned {} results for {count} answers",
                    results.len()
                ),
            );
            return fail(group, &e);
        }
        Err(e) => return fail(group, &ApiError::internal("recording answers", &e)),
    };
    for r in group {
        let mine: Result<Vec<Recorded>, ApiError> = results
            .by_ref()
            .take(r.answers.len())
            .map(|res| match res {
                Ok(o) => Ok(Some(o)),
                Err(StoreError::NotFound(_)) => Ok(None),
                Err(e) => Err(ApiError::internal("recording answers", &e)),
            })
            .collect();
        let _ = r.reply.send(mine); // the request may have gone away
    }
}

fn fail(group: Vec<Request>, e: &ApiError) {
    for r in group {
        let _ = r.reply.send(Err(e.clone()));
    }
}
