//! Waiting in tests for something to become true, with a deadline.

use std::time::{Duration, Instant};

/// How often [`wait_for`] asks.
const POLL: Duration = Duration::from_millis(10);

/// Calls `f` every 10 ms until it returns `Some`, and returns that; panics with
/// `timed out waiting for {what}` once `timeout` has passed.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}
