//! The job protocol between a lookup server and a compute node (`docs/compute-protocol.md`).
//!
//! Over mutual TLS, a connection carries one job at a time, any number in sequence. Every
//! message is a frame: a 4-byte big-endian length, then that many bytes. Control frames hold
//! one JSON object ([`ToNode`] or [`FromNode`]) of at most [`MAX_CONTROL`] bytes; data frames
//! hold a bundle or an answer archive and are bounded by the receiver's own limits. Every
//! read and write is given a deadline by the caller.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest control frame.
/// Connections to a node waiting to authenticate (TCP accepted, TLS handshake not done): at
/// most 8 from one source and 64 in all; more are closed at once. Only the lookup
/// authenticates, with a few connections at a time.
pub const PRE_AUTH_LIMITS: crate::gate::GateLimits = crate::gate::GateLimits {
    per_source: 8,
    total: 64,
};

pub const MAX_CONTROL: u32 = 64 * 1024;
/// Time allowed for one control frame to arrive or be sent.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a lookup waits for the node's decision (`accepted` or `refused`) after the bundle:
/// the node may be asking its owner (prompt timeouts should stay below this).
pub const DECISION_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a node compiling a job's module says so ([`FromNode::Compiling`]).
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);
/// How long a lookup waits for the next [`FromNode::Compiling`] (or `running`, or the answer)
/// after one: several missed intervals mean the node is gone.
pub const PROGRESS_TIMEOUT: Duration = Duration::from_secs(15);
/// Time a connection may stay idle between jobs.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Time allowed to transfer `bytes` of data: 30 s plus 1 s per MiB.
pub fn data_timeout(bytes: u64) -> Duration {
    Duration::from_secs(30 + bytes / (1024 * 1024))
}

/// Lookup → node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ToNode {
    /// Run task `task` of bundle `bundle_sha256` (hex). The node answers `SendBundle` if it
    /// lacks the bundle, else goes on as if it had received it.
    Offer {
        bundle_sha256: String,
        bundle_size: u64,
        task: u32,
        /// The web server's job id (for logs and the answer's metadata).
        job_id: i64,
    },
    /// Liveness check between jobs; the node answers `Pong`.
    Ping,
}

/// Node → lookup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum FromNode {
    /// Send the bundle as the next (data) frame.
    SendBundle,
    /// The job will not run here; `code` is one of the [`RefusalCode`] names.
    Refused {
        code: RefusalCode,
        reason: String,
    },
    /// Verified, trusted, within limits: the job is running.
    Accepted,
    /// Between `accepted` and `answer`: the node is compiling the job's module (or waiting
    /// for another of its slots that is). Sent every [`PROGRESS_INTERVAL`] while that lasts,
    /// so the lookup waits for compilation within the node's `limit_ms`, not the job's time
    /// limit.
    Compiling {
        /// Compiling so far, milliseconds.
        elapsed_ms: u64,
        /// The module's size, bytes.
        module_bytes: u64,
        /// The node's compile limit (`rjs-compute serve --compile-timeout`), milliseconds: past
        /// it the node stops and answers `limit: compile`.
        limit_ms: u64,
        /// How long the whole compilation should take at the speed this node last compiled
        /// at, milliseconds; absent before its first compilation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        estimate_ms: Option<u64>,
    },
    /// After `compiling`: the module is ready and the program starts; the job's time limit
    /// counts from now.
    Running,
    /// The job ended; the answer archive (`size` bytes) follows as a data frame.
    Answer {
        outcome: String,
        size: u64,
    },
    Pong,
}

/// Why a node refuses a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefusalCode {
    /// A malformed or out-of-order message.
    BadRequest,
    /// The bundle failed verification (or did not match its announced hash).
    InvalidBundle,
    /// The author is not trusted by the node's owner (unknown and not accepted).
    Untrusted,
    /// The owner blocked the author.
    Blocked,
    /// The job asks for more time, memory or output than this node allows.
    OverLimits,
    /// The job's group is not one this node serves.
    WrongGroup,
    /// The owner lets the node run only while the PC is idle, and it is not.
    NotIdle,
    /// Every slot is busy.
    NoFreeSlot,
    /// The node is shutting down or failed internally.
    Unavailable,
}

impl RefusalCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::BadRequest => "bad-request",
            RefusalCode::InvalidBundle => "invalid-bundle",
            RefusalCode::Untrusted => "untrusted",
            RefusalCode::Blocked => "blocked",
            RefusalCode::OverLimits => "over-limits",
            RefusalCode::WrongGroup => "wrong-group",
            RefusalCode::NotIdle => "not-idle",
            RefusalCode::NoFreeSlot => "no-free-slot",
            RefusalCode::Unavailable => "unavailable",
        }
    }
}

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("frame of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("I/O error")]
    Io(#[from] std::io::Error),
}

/// Runs `fut`, failing with [`FrameError::Timeout`] if it takes longer than `timeout`.
async fn within<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, FrameError>>,
) -> Result<T, FrameError> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| FrameError::Timeout(timeout))?
}

/// An end of stream in the middle of a frame is the peer going away.
fn eof_is_closed(e: std::io::Error) -> FrameError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        FrameError::Closed
    } else {
        FrameError::Io(e)
    }
}

/// Checks a frame's announced `size` against `limit` and reads its body.
async fn read_body<R: AsyncRead + Unpin>(
    r: &mut R,
    size: u32,
    limit: u64,
) -> Result<Vec<u8>, FrameError> {
    let size = u64::from(size);
    if size > limit {
        return Err(FrameError::TooLarge { size, limit });
    }
    let mut buf = vec![0u8; size as usize];
    r.read_exact(&mut buf).await.map_err(eof_is_closed)?;
    Ok(buf)
}

/// Reads one frame of at most `limit` bytes within `timeout`.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: u64,
    timeout: Duration,
) -> Result<Vec<u8>, FrameError> {
    within(timeout, async {
        let mut len = [0u8; 4];
        r.read_exact(&mut len).await.map_err(eof_is_closed)?;
        read_body(r, u32::from_be_bytes(len), limit).await
    })
    .await
}

/// Writes one frame within `timeout`.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    data: &[u8],
    timeout: Duration,
) -> Result<(), FrameError> {
    let len = u32::try_from(data.len()).map_err(|_| FrameError::TooLarge {
        size: data.len() as u64,
        limit: u64::from(u32::MAX),
    })?;
    within(timeout, async {
        w.write_all(&len.to_be_bytes()).await?;
        w.write_all(data).await?;
        w.flush().await?;
        Ok(())
    })
    .await
}

/// Reads one control message that may be a long time coming (the next job on an idle
/// connection): the frame may start within `idle`, and must then be complete within
/// `timeout` ([`CONTROL_TIMEOUT`] unless a server chooses otherwise).
pub async fn read_msg_idle<R: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(
    r: &mut R,
    idle: Duration,
    timeout: Duration,
) -> Result<T, FrameError> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(idle, r.read(&mut first)).await {
        Err(_) => return Err(FrameError::Timeout(idle)),
        Ok(Ok(0)) => return Err(FrameError::Closed),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(FrameError::Io(e)),
    }
    let buf = within(timeout, async {
        let mut rest = [0u8; 3];
        r.read_exact(&mut rest).await.map_err(eof_is_closed)?;
        let size = u32::from_be_bytes([first[0], rest[0], rest[1], rest[2]]);
        read_body(r, size, u64::from(MAX_CONTROL)).await
    })
    .await?;
    parse_msg(&buf)
}

/// Decodes one control message.
fn parse_msg<T: for<'de> Deserialize<'de>>(buf: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(buf).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Reads one control message.
pub async fn read_msg<R: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(
    r: &mut R,
    timeout: Duration,
) -> Result<T, FrameError> {
    let buf = read_frame(r, u64::from(MAX_CONTROL), timeout).await?;
    parse_msg(&buf)
}

/// Writes one control message.
pub async fn write_msg<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
    timeout: Duration,
) -> Result<(), FrameError> {
    let buf = serde_json::to_vec(msg).map_err(|e| FrameError::Malformed(e.to_string()))?;
    write_frame(w, &buf, timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_are_bounded() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let offer = ToNode::Offer {
            bundle_sha256: "ab".repeat(32),
            bundle_size: 10,
            task: 3,
            job_id: 7,
        };
        write_msg(&mut a, &offer, CONTROL_TIMEOUT).await.unwrap();
        let got: ToNode = read_msg(&mut b, CONTROL_TIMEOUT).await.unwrap();
        assert_eq!(got, offer);
        write_frame(&mut a, &[0u8; 100], CONTROL_TIMEOUT)
            .await
            .unwrap();
        assert!(matches!(
            read_frame(&mut b, 99, CONTROL_TIMEOUT).await,
            Err(FrameError::TooLarge { size: 100, .. })
        ));
        let refused = FromNode::Refused {
            code: RefusalCode::NoFreeSlot,
            reason: "all 2 slots busy".into(),
        };
        let json = serde_json::to_string(&refused).unwrap();
        assert!(json.contains("\"no-free-slot\""), "{json}");
        // A fresh pipe: nothing arrives (timeout), then the peer goes away (closed).
        let (a, mut b) = tokio::io::duplex(1024);
        assert!(matches!(
            read_frame(&mut b, 10, Duration::from_millis(50)).await,
            Err(FrameError::Timeout(_))
        ));
        drop(a);
        assert!(matches!(
            read_frame(&mut b, 10, CONTROL_TIMEOUT).await,
            Err(FrameError::Closed)
        ));
    }
}
