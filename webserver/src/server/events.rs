//! The `jobs` event stream (`GET /lookup/v1/events`, Server-Sent Events).
//!
//! Handlers and the lease-expiry task call [`Events::notify`] with the number of queued jobs
//! whenever jobs became queued; every connected lookup receives `event: jobs` with
//! `data: {"queued": N}`. A new stream starts with one such event (the current count) so a
//! lookup that connects learns at once whether there is work. A `: keepalive` comment is sent
//! every [`KEEPALIVE`]. Slow receivers skip events they missed (only the newest count
//! matters); the stream ends when the server shuts down.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use rjs_wire::api::JobsEvent;
use tokio::sync::{broadcast, watch};

/// Interval of the keep-alive comment.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// Events buffered per receiver before it starts skipping.
const CAPACITY: usize = 64;

#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<u64>,
    /// The count of the last event sent.
    last: std::sync::Arc<std::sync::atomic::AtomicU64>,
    shutdown: watch::Receiver<bool>,
    keepalive: Duration,
}

impl Events {
    /// A broadcaster whose streams end when `shutdown` becomes true (or its sender is gone).
    pub fn new(shutdown: watch::Receiver<bool>) -> Self {
        Self::with_keepalive(shutdown, KEEPALIVE)
    }

    /// Like [`new`](Self::new) with another keep-alive interval (tests).
    pub fn with_keepalive(shutdown: watch::Receiver<bool>, keepalive: Duration) -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        Events {
            tx,
            last: Default::default(),
            shutdown,
            keepalive,
        }
    }

    /// Jobs were queued: `queued` are queued now.
    pub fn notify(&self, queued: u64) {
        self.last
            .store(queued, std::sync::atomic::Ordering::Relaxed);
        // No receiver is not an error.
        let _ = self.tx.send(queued);
    }

    /// The count the last event told (0 before any).
    pub fn last_sent(&self) -> u64 {
        self.last.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many streams are connected.
    pub fn receivers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// An SSE byte stream that starts with the event for `initial` queued jobs. At every
    /// keep-alive tick `still_allowed` is asked whether the client may go on listening (a
    /// revoked lookup's stream ends within one keep-alive interval).
    pub fn stream(
        &self,
        initial: u64,
        still_allowed: impl FnMut() -> LocalBoxFuture<'static, bool> + 'static,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + 'static {
        struct State<F> {
            rx: broadcast::Receiver<u64>,
            shutdown: watch::Receiver<bool>,
            tick: tokio::time::Interval,
            first: Option<u64>,
            still_allowed: F,
        }
        let start = tokio::time::Instant::now() + self.keepalive;
        let state = State {
            rx: self.tx.subscribe(),
            shutdown: self.shutdown.clone(),
            tick: tokio::time::interval_at(start, self.keepalive),
            first: Some(initial),
            still_allowed,
        };
        futures_util::stream::unfold(state, |mut st| async move {
            if *st.shutdown.borrow() {
                return None;
            }
            if let Some(n) = st.first.take() {
                return Some((Ok(event_bytes(n)), st));
            }
            loop {
                tokio::select! {
                    changed = st.shutdown.changed() => {
                        if changed.is_err() || *st.shutdown.borrow() {
                            return None;
                        }
                    }
                    msg = st.rx.recv() => match msg {
                        Ok(n) => return Some((Ok(event_bytes(n)), st)),
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    _ = st.tick.tick() => {
                        if !(st.still_allowed)().await {
                            return None;
                        }
                        return Some((Ok(Bytes::from_static(b": keepalive\n\n")), st));
                    }
                }
            }
        })
    }
}

/// One `jobs` event.
pub fn event_bytes(queued: u64) -> Bytes {
    let data = serde_json::to_string(&JobsEvent { queued }).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("event: jobs\ndata: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt as _;

    #[tokio::test]
    async fn stream_sends_initial_then_notified_then_ends_on_shutdown() {
        let (stop_tx, stop_rx) = watch::channel(false);
        let events = Events::new(stop_rx);
        let mut s = Box::pin(events.stream(3, || Box::pin(async { true })));
        assert_eq!(
            s.next().await.unwrap().unwrap(),
            Bytes::from_static(b"event: jobs\ndata: {\"queued\":3}\n\n")
        );
        events.notify(5);
        assert_eq!(
            s.next().await.unwrap().unwrap(),
            Bytes::from_static(b"event: jobs\ndata: {\"queued\":5}\n\n")
        );
        stop_tx.send(true).unwrap();
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn keepalive_comment_and_end_when_no_longer_allowed() {
        let (_stop_tx, stop_rx) = watch::channel(false);
        let events = Events::with_keepalive(stop_rx, Duration::from_millis(50));
        let mut allowed = 2;
        let mut s = Box::pin(events.stream(0, move || {
            allowed -= 1;
            let ok = allowed > 0;
            Box::pin(async move { ok })
        }));
        s.next().await.unwrap().unwrap();
        let t0 = tokio::time::Instant::now();
        assert_eq!(
            s.next().await.unwrap().unwrap(),
            Bytes::from_static(b": keepalive\n\n")
        );
        assert!(t0.elapsed() >= Duration::from_millis(40));
        // No longer allowed: the stream ends at the next tick.
        assert!(s.next().await.is_none());
    }
}
