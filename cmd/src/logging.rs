//! The one logging set-up of every RJS binary.

/// Sends `tracing` events to stderr, at `default_level` (`"warn"`, `"info"`, or any
/// `EnvFilter` directive) unless `RUST_LOG` says otherwise; coloured only on a terminal (a
/// log file or journal gets plain text). Calling it twice is harmless: the first set-up stays.
pub fn init(default_level: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .try_init();
}
