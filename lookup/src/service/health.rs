//! Whether the web server is reachable, known within seconds and said once.
//!
//! A **heartbeat** asks `GET /healthz` every [`HEARTBEAT`] over the kept connection, each
//! ask bounded by [`HEARTBEAT_TIMEOUT`]; every other request's outcome counts too. The first
//! failure marks the web server unreachable (`rjs-lookup status` says so) and logs one
//! warning; the first success after it logs how long the outage lasted and wakes whoever
//! waits for the link: the answer relay first (its backoff is cut short), then the puller,
//! which leases again only once the answers kept during the outage are on their way
//! ([`ANSWERS_FIRST`]).
//!
//! With several web servers ([`crate::failover`]), every ask goes to the current one, and a
//! failure that fails over is followed at once by an ask of the next one (unless the
//! heartbeat's own ask failed: then it waits its interval, so a list of dead servers is
//! asked in turn, one per interval, not in a loop). A failover also starts a reclaim
//! ([`after_failover`]): a lease whose response was lost with the server that failed leased
//! jobs on the shared store, which the next server lists as held here.

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
            webserver = %self.client.base(),
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
            webserver = %self.client.base(),
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
    let mut moved = shared.client.servers().subscribe();
    loop {
        // The request's own timeout fails over a server that does not answer; the outer one
        // only bounds what the request's does not (e.g. a slow name lookup), and fails over
        // the server asked all the same.
        let (asked_index, _) = shared.client.servers().current();
        let asked = tokio::time::timeout(
            HEARTBEAT_TIMEOUT + Duration::from_millis(250),
            shared.client.heartbeat(HEARTBEAT_TIMEOUT),
        )
        .await;
        let ok = match asked {
            Ok(Ok(_)) => true,
            // No answer, a gateway's 502–504, or the server's own word that it cannot reach
            // its database: down (the ask failed it over where another server does better).
            Ok(Err(e)) if e.warrants_failover() || e.store_unavailable() => {
                shared.upstream_failed(&chain(&e));
                false
            }
            // It answered, if only with another error status: reachable.
            Ok(Err(_)) => true,
            Err(_) => {
                let cause = format!("no answer to GET /healthz within {HEARTBEAT_TIMEOUT:?}");
                shared.client.fail_over(asked_index, &cause);
                shared.upstream_failed(&cause);
                false
            }
        };
        if ok {
            shared.upstream_ok();
        }
        // A failover of its own ask (if any) is no reason to ask again at once.
        moved.borrow_and_update();
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT) => {}
            // Another request failed over: ask the new current server now.
            _ = moved.changed(), if ok => {}
        }
    }
}

/// After each failover: reclaim (jobs leased through the server left whose lease response
/// was lost are listed as held by the next; the reclaimer queues them at once instead of
/// leaving them idle until their leases lapse), and let the puller look again.
pub(super) async fn after_failover(shared: Arc<Shared>) {
    let mut moved = shared.client.servers().subscribe();
    while moved.changed().await.is_ok() {
        shared.reclaim.notify_one();
        shared.capacity.notify_one();
    }
}
