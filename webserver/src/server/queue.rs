//! Hearing of jobs queued through another web server sharing the store: a lookup's event
//! stream on server A must learn of an upload to server B. The store's wake-up hint
//! (PostgreSQL's `LISTEN`, [`crate::store::Store::queue_hint`]) makes it quick; polling the queued count every
//! [`POLL`] keeps it true when a hint is lost (a reconnection) or the backend has none (several
//! servers on one SQLite file).

use std::time::Duration;

use actix_web::web;
use tokio::sync::watch;

use super::AppState;

/// How often the queued count is read without a hint.
pub const POLL: Duration = Duration::from_secs(2);
/// The least time between two counts a hint asked for: hints that come faster (a busy grid
/// queues and requeues all the time) are answered together, not by a count each.
pub const HINT_GAP: Duration = Duration::from_millis(250);

/// Tells this server's event streams about jobs queued elsewhere, until `stop`.
pub async fn watch_queue(state: web::Data<AppState>, mut stop: watch::Receiver<bool>) {
    let hint = state.store.queue_hint();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<u64> = None;
    let mut counted_at: Option<tokio::time::Instant> = None;
    loop {
        let hinted = tokio::select! {
            _ = tick.tick() => false,
            _ = async {
                match &hint {
                    Some(h) => h.notified().await,
                    None => std::future::pending().await,
                }
            } => true,
            r = stop.changed() => if r.is_err() || *stop.borrow() { return } else { continue },
        };
        if state.events.receivers() == 0 {
            last = None;
            continue;
        }
        if hinted && let Some(at) = counted_at {
            tokio::time::sleep_until(at + HINT_GAP).await;
        }
        counted_at = Some(tokio::time::Instant::now());
        let store = state.store.clone();
        match web::block(move || store.queued_count()).await {
            Ok(Ok(queued)) => {
                if should_tell(last, queued, hinted, state.events.last_sent()) {
                    state.events.notify(queued);
                }
                last = Some(queued);
            }
            Ok(Err(e)) => tracing::warn!(error = %rjs_cmd::chain(&e), "counting queued jobs"),
            Err(e) => {
                tracing::warn!(error = %rjs_cmd::report::Chain(&e), "counting queued jobs")
            }
        }
    }
}

/// Whether listeners should hear of `queued` jobs: there are some, the last event did not
/// already say so (this server's own handlers tell of the jobs they queue), and a hint said
/// jobs were queued or the count rose since the last reading (the first reading only sets the
/// mark: a new stream starts with the current count).
fn should_tell(last: Option<u64>, queued: u64, hinted: bool, last_sent: u64) -> bool {
    queued > 0 && queued != last_sent && (hinted || last.is_some_and(|l| queued > l))
}

#[cfg(test)]
mod tests {
    use super::should_tell;

    #[test]
    fn listeners_hear_of_new_jobs_only() {
        assert!(!should_tell(None, 0, true, 0), "nothing queued");
        assert!(!should_tell(None, 3, false, 0), "first reading");
        assert!(!should_tell(Some(3), 3, false, 0), "nothing new");
        assert!(!should_tell(Some(5), 3, false, 0), "jobs were leased");
        assert!(should_tell(Some(3), 4, false, 0), "more queued elsewhere");
        assert!(
            !should_tell(Some(3), 4, false, 4),
            "this server already told"
        );
        assert!(
            should_tell(Some(5), 3, true, 5),
            "queued elsewhere, said the database"
        );
        assert!(
            !should_tell(Some(2), 3, true, 3),
            "our own queueing, told already"
        );
    }
}
