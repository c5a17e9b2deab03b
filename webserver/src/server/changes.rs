//! Live updates for authors: the change feed of the author API (`GET /api/v1/events`) and the
//! dashboard's page streams, both server-sent events.
//!
//! The store numbers every change of a job (`change_seq`, see `store::views`). One task per
//! server reads the newest number every [`POLL`] (one tiny read, whoever changed the job:
//! this server, a lookup's answer, the admin CLI) and publishes it on a watch channel. A
//! stream wakes when the number moves, at most once per its own interval, runs one bounded
//! query for what its client shows, and sends the result. So the cost of a listener is one
//! query per interval while jobs change, bounded by the page it watches, not by the size of
//! the submission; idle listeners cost nothing but a keep-alive comment every [`KEEPALIVE`],
//! at which the stream also asks whether its client may still listen (an author removed or
//! a session ended closes it).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpResponse;
use actix_web::http::header;
use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use rjs_wire::api::JobChange;
use tokio::sync::watch;

use super::body::blocking;
use super::error::ApiError;
use crate::store::{Author, Store, StoreError};

/// How often the newest change number is read.
pub const POLL: Duration = Duration::from_millis(200);
/// Keep-alive comment (and permission check) interval.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// Changes sent per query of the author feed (more follow at once).
pub const FEED_BATCH: u32 = 500;
/// Least time between two queries of one author-feed stream.
pub const FEED_INTERVAL: Duration = Duration::from_millis(250);
/// Live streams (author feeds and dashboard pages together) one author may hold open at once;
/// one more is refused (`429 too-many-streams`).
pub const MAX_STREAMS_PER_AUTHOR: usize = 256;

/// One open live stream of an author, counted until it is dropped (the stream ends).
pub struct StreamPass {
    open: Arc<std::sync::Mutex<HashMap<i64, usize>>>,
    author_id: i64,
}

impl Drop for StreamPass {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.author_id) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.author_id);
            }
        }
    }
}

/// The newest change number, for every stream of this server.
#[derive(Clone)]
pub struct Changes {
    seq: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    keepalive: Duration,
    /// Open streams by author.
    open: Arc<std::sync::Mutex<HashMap<i64, usize>>>,
}

impl Changes {
    /// The broadcaster and the task that feeds it (run it on the server's runtime; it ends
    /// when `shutdown` turns true).
    pub fn new(
        store: Arc<dyn Store>,
        shutdown: watch::Receiver<bool>,
    ) -> (Changes, impl Future<Output = ()>) {
        let (tx, rx) = watch::channel(0);
        let mut stop = shutdown.clone();
        let poller = async move {
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    r = stop.changed() => if r.is_err() || *stop.borrow() { return },
                }
                let s = store.clone();
                match actix_web::web::block(move || s.change_seq()).await {
                    Ok(Ok(n)) => {
                        tx.send_if_modified(|old| {
                            let moved = *old != n;
                            *old = n;
                            moved
                        });
                    }
                    Ok(Err(e)) => tracing::warn!(error = %rjs_cmd::chain(&e), "reading changes"),
                    Err(e) => {
                        tracing::warn!(error = %rjs_cmd::report::Chain(&e), "reading changes")
                    }
                }
            }
        };
        (
            Changes {
                seq: rx,
                shutdown,
                keepalive: KEEPALIVE,
                open: Arc::default(),
            },
            poller,
        )
    }

    /// Counts one more live stream of `author_id`, or refuses it past
    /// [`MAX_STREAMS_PER_AUTHOR`].
    pub fn admit(&self, author_id: i64) -> Result<StreamPass, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(author_id).or_insert(0);
        if *n >= MAX_STREAMS_PER_AUTHOR {
            return Err(ApiError::new(
                actix_web::http::StatusCode::TOO_MANY_REQUESTS,
                "too-many-streams",
                format!("at most {MAX_STREAMS_PER_AUTHOR} live streams may be open at once"),
            ));
        }
        *n += 1;
        Ok(StreamPass {
            open: self.open.clone(),
            author_id,
        })
    }

    /// An SSE stream: `first` is sent at once; then, whenever the change number moved (at
    /// most once per `interval`), `poll` runs and its events are sent; every keep-alive tick
    /// `still_allowed` is asked whether the client may go on. `poll` returns the events and
    /// whether it has more to send at once (a full batch).
    pub fn stream<P, A>(
        &self,
        pass: StreamPass,
        first: Bytes,
        interval: Duration,
        poll: P,
        still_allowed: A,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + 'static
    where
        P: FnMut() -> LocalBoxFuture<'static, Option<(Bytes, bool)>> + 'static,
        A: FnMut() -> LocalBoxFuture<'static, bool> + 'static,
    {
        struct St<P, A> {
            _pass: StreamPass,
            seq: watch::Receiver<u64>,
            shutdown: watch::Receiver<bool>,
            keepalive: tokio::time::Interval,
            first: Option<Bytes>,
            more: bool,
            next_poll: tokio::time::Instant,
            interval: Duration,
            poll: P,
            still_allowed: A,
        }
        let mut seq = self.seq.clone();
        seq.mark_unchanged();
        let start = tokio::time::Instant::now();
        let st = St {
            _pass: pass,
            seq,
            shutdown: self.shutdown.clone(),
            keepalive: tokio::time::interval_at(start + self.keepalive, self.keepalive),
            first: Some(first),
            // The first poll at once: what changed since the client's `since` is sent without
            // waiting for the next change.
            more: true,
            next_poll: start,
            interval,
            poll,
            still_allowed,
        };
        futures_util::stream::unfold(st, |mut st| async move {
            if *st.shutdown.borrow() {
                return None;
            }
            if let Some(b) = st.first.take() {
                return Some((Ok(b), st));
            }
            loop {
                if !st.more {
                    tokio::select! {
                        r = st.shutdown.changed() => {
                            if r.is_err() || *st.shutdown.borrow() {
                                return None;
                            }
                            continue;
                        }
                        r = st.seq.changed() => {
                            if r.is_err() {
                                return None;
                            }
                        }
                        _ = st.keepalive.tick() => {
                            if !(st.still_allowed)().await {
                                return None;
                            }
                            return Some((Ok(Bytes::from_static(b": keepalive\n\n")), st));
                        }
                    }
                }
                tokio::time::sleep_until(st.next_poll).await;
                st.next_poll = tokio::time::Instant::now() + st.interval;
                st.seq.mark_unchanged();
                match (st.poll)().await {
                    // A failed query ends the stream; the client reconnects and resumes.
                    None => return None,
                    Some((bytes, more)) => {
                        st.more = more;
                        if !bytes.is_empty() {
                            return Some((Ok(bytes), st));
                        }
                    }
                }
            }
        })
    }

    /// The author feed: `job` events (id = change number) for `author`'s jobs (one
    /// submission's if given) that change after `since`.
    pub fn author_stream(
        &self,
        pass: StreamPass,
        store: Arc<dyn Store>,
        author: Author,
        submission: Option<i64>,
        since: u64,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + 'static {
        let since = Arc::new(std::sync::atomic::AtomicU64::new(since));
        let author_id = author.id;
        let poll_store = store.clone();
        let poll = move || -> LocalBoxFuture<'static, Option<(Bytes, bool)>> {
            let store = poll_store.clone();
            let since = since.clone();
            Box::pin(async move {
                let from = since.load(std::sync::atomic::Ordering::Relaxed);
                let rows =
                    query(move || store.changes(author_id, submission, from, FEED_BATCH)).await?;
                let more = rows.len() == FEED_BATCH as usize;
                let mut out = String::new();
                for (seq, job) in rows {
                    since.store(seq, std::sync::atomic::Ordering::Relaxed);
                    out.push_str(&event("job", Some(seq), &JobChange { seq, job }));
                }
                Some((Bytes::from(out), more))
            })
        };
        let key = author.public_key.clone();
        let still = move || -> LocalBoxFuture<'static, bool> {
            let store = store.clone();
            let key = key.clone();
            Box::pin(async move {
                query(move || store.author_by_key(&key))
                    .await
                    .is_some_and(|a| a.is_some_and(|a| a.id == author_id))
            })
        };
        self.stream(
            pass,
            Bytes::from_static(b"retry: 2000\n\n"),
            FEED_INTERVAL,
            poll,
            still,
        )
    }
}

/// Runs a store query on the blocking pool; None (logged) if it failed.
pub async fn query<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Option<T> {
    match blocking(move || Ok(f())).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            tracing::warn!(error = %rjs_cmd::chain(&e), "live update query");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "live update query");
            None
        }
    }
}

/// One SSE event: `event: <name>`, `id:` if given, `data:` the JSON of `data`.
pub fn event(name: &str, id: Option<u64>, data: &impl serde::Serialize) -> String {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "null".into());
    match id {
        Some(id) => format!("id: {id}\nevent: {name}\ndata: {json}\n\n"),
        None => format!("event: {name}\ndata: {json}\n\n"),
    }
}

/// The response carrying an SSE stream.
pub fn sse_response(
    stream: impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + 'static,
) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_author_holds_a_bounded_number_of_streams_until_they_end() {
        let (_tx, rx) = watch::channel(false);
        let (_, seq) = watch::channel(0);
        let changes = Changes {
            seq,
            shutdown: rx,
            keepalive: KEEPALIVE,
            open: Arc::default(),
        };
        let passes: Vec<StreamPass> = (0..MAX_STREAMS_PER_AUTHOR)
            .map(|_| changes.admit(1).unwrap())
            .collect();
        let refused = changes.admit(1).err().unwrap();
        assert_eq!(
            (refused.status.as_u16(), refused.code),
            (429, "too-many-streams")
        );
        // Another author is not affected; a stream that ends frees its place.
        drop(changes.admit(2).unwrap());
        drop(passes);
        assert!(changes.open.lock().unwrap().is_empty());
        changes.admit(1).unwrap();
    }
}
