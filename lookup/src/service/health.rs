//! Whether the web server is reachable, known within seconds and said once.
//!
//! A **heartbeat** asks `GET /healthz` every [`HEARTBEAT`] over the kept connection, each
//! ask bounded by [`HEARTBEAT_TIMEOUT`]; every other request's outcome counts too. The first
//! failure marks the web server unreachable (`rjs-lookup status` says so) and logs one
//! warning; the first success after it logs how long the outage lasted and wakes whoever
//! waits for the link: the answer relay first (its backoff is cut short), then the puller,
//! which leases again only once the answers kept during the outage are on their way
//! ([`ANSWERS_FIRST`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rjs_cmd::chain;

use super::state::Shared;

/// How often the heartbeat asks.
pub(super) const HEARTBEAT: Duration = Duration::from_millis(500);
/// How long one ask may take before the web server counts as unreachable.
pub(super) const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(1500);
/// After an outage, answers waiting for upload above which the puller leases nothing
/// (answers first). In steady state the spool holds about a round trip of answers, however
/// many: the gate applies only while catching up.
pub(super) const ANSWERS_FIRST: usize = 128;

impl Shared {
    /// A request to the web server failed for a reason that may pass (`why`).
    pub(super) fn upstream_failed(&self, why: &str) {
        let mut st = self.lock();
        if st.down_since.is_some() {
            return;
        }
        st.down_since = Some(Instant::now());
        drop(st);
        tracing::warn!(
            webserver = self.client.base(),
            error = why,
            "web server unreachable; nodes go on with the jobs held, answers wait in the spool"
        );
    }

    /// A request to the web server succeeded.
    pub(super) fn upstream_ok(&self) {
        let mut st = self.lock();
        let Some(since) = st.down_since.take() else {
            return;
        };
        st.catching_up = true;
        let down_for = since.elapsed();
        drop(st);
        tracing::info!(
            webserver = self.client.base(),
            down_for = ?down_for,
            "web server reachable again; relaying answers first"
        );
        self.spool.retry_now();
        // Lease responses lost during the outage: those jobs are leased here, unknown here.
        self.reclaim.notify_one();
        self.upstream_back.notify_waiters();
        self.capacity.notify_one();
    }

    pub(super) fn upstream_is_down(&self) -> bool {
        self.lock().down_since.is_some()
    }

    /// Whether the puller may lease now: the web server is reachable and, after an outage or
    /// a start, the answers kept meanwhile are (nearly) all uploaded.
    pub(super) fn may_lease(&self) -> bool {
        let mut st = self.lock();
        if st.down_since.is_some() {
            return false;
        }
        if st.catching_up {
            if self.spool.pending_count() > ANSWERS_FIRST {
                return false;
            }
            st.catching_up = false;
        }
        true
    }
}

/// The heartbeat task.
pub(super) async fn heartbeat(shared: Arc<Shared>) {
    loop {
        match tokio::time::timeout(HEARTBEAT_TIMEOUT, shared.client.ping()).await {
            Ok(Ok(_)) => shared.upstream_ok(),
            Ok(Err(e)) if e.is_unreachable() => shared.upstream_failed(&chain(&e)),
            // It answered, if only with an error status: reachable.
            Ok(Err(_)) => shared.upstream_ok(),
            Err(_) => shared.upstream_failed(&format!(
                "no answer to GET /healthz within {HEARTBEAT_TIMEOUT:?}"
            )),
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}
