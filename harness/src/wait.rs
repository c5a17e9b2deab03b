//! Waiting in tests for something to become true, with a deadline: [`wait_for`] when the
//! timeout message needs nothing but what was waited for, [`poll_until`] when it shows the last
//! state seen.

use std::time::{Duration, Instant};

/// How often [`wait_for`] asks.
const POLL: Duration = Duration::from_millis(10);

/// Calls `f` every 10 ms until it returns `Some`, and returns that; panics with
/// `timed out waiting for {what}` once `timeout` has passed.
pub fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll_until(timeout, POLL, f, Option::is_some, |_| {
        format!("timed out waiting for {what}")
    })
    .expect("poll_until returns only what `done` accepted")
}

/// Calls `probe` every `every` until `done` accepts what it returned, and returns that; panics
/// with `why(last value)` once `timeout` has passed (so the message can show the last state
/// seen).
pub fn poll_until<T>(
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> T,
    mut done: impl FnMut(&T) -> bool,
    why: impl Fn(&T) -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let v = probe();
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{}", why(&v));
        std::thread::sleep(every);
    }
}
