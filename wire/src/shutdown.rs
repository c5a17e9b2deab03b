//! How every RJS server learns to stop: SIGTERM or SIGINT.

/// Waits for SIGTERM or SIGINT (only SIGINT if SIGTERM cannot be watched).
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                return;
            }
            Err(e) => {
                eprintln!("cannot watch SIGTERM ({e}); stopping on SIGINT only");
            }
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
