//! How every RJS server learns to stop: SIGTERM or SIGINT; and how its accept loop stops
//! when told to.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// The next connection on `listener`, or `None` once `stop` has completed (then the caller
/// returns: `stop` is not to be polled again). A failed accept (out of file descriptors, a
/// connection reset before it was taken) is logged and retried 50 ms later, so that it
/// neither ends the server nor makes it spin.
pub async fn accept_or_stop<F: Future<Output = ()>>(
    listener: &TcpListener,
    mut stop: Pin<&mut F>,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = &mut stop => return None,
            r = listener.accept() => match r {
                Ok(c) => return Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

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
