//! # rjs-cmd
//!
//! The conventions every RJS program shares, written once:
//!
//! * [`report`]: the one way an error is shown to a person — the error and each of its causes
//!   once, outermost first, on one line (`uploading bundle: connecting to https://ws:8443:
//!   connection refused`) — and the one way a binary exits on error.
//! * [`logging`]: the one `tracing` set-up (stderr, `RUST_LOG` overrides the default level).
//! * [`units`]: the one grammar for sizes on command lines and in configuration files.
//! * [`time`]: the one way a Unix time is shown (any value, without panicking).
//!
//! ## The error convention
//!
//! An error type's message says what failed *at its own layer* and nothing more; what caused it
//! is only its [`source`](std::error::Error::source). So a variant is written
//! `#[error("reading {path}")] Read { path, #[source] source: io::Error }`, never
//! `#[error("reading {path}: {source}")]`, and the cause is printed exactly once, by
//! [`report::chain`].

pub mod logging;
pub mod report;
pub mod time;
pub mod units;

pub use report::{chain, exit};
