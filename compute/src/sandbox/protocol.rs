//! The supervisor ⇄ worker protocol: length-prefixed frames over the worker's stdin/stdout.
//!
//! A frame is a 4-byte big-endian payload length, one kind byte (`J`: a JSON message, `B`: raw
//! bytes) and the payload. Every reader bounds the length per kind before allocating, so a
//! misbehaving peer can make a read fail but never make the reader allocate without limit.
//! The messages and their order are described in `docs/sandbox.md` ("Worker protocol").

use std::io::{self, Read, Write};
use std::path::PathBuf;

use rjs_signer::Limits;
use rjs_signer::answer::{Ending, LimitKind};
use serde::{Deserialize, Serialize};
use std::future::Future;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bumped whenever a message changes; the supervisor refuses a worker that speaks another one.
pub(crate) const PROTOCOL_VERSION: u32 = 4;

pub(crate) const KIND_JSON: u8 = b'J';
pub(crate) const KIND_BLOB: u8 = b'B';

/// Largest JSON message either side accepts (a run request carries at most 64 KiB of args and
/// env; results carry a trap message of a few KiB).
pub(crate) const MAX_JSON: usize = 1 << 20;
/// Largest blob the supervisor accepts from a worker: a captured stdout or stderr, which the
/// worker cuts at the task's `stdout_bytes` (at most [`Limits::MAX_STDOUT`]).
pub(crate) const MAX_BLOB_FROM_WORKER: usize = Limits::MAX_STDOUT as usize;
/// Largest blob a worker accepts from the supervisor: a module (bundles are at most 256 MiB
/// uncompressed; this is a sanity bound, the supervisor is trusted).
pub(crate) const MAX_BLOB_TO_WORKER: usize = 1 << 30;

/// Frames up to this size are written with one write.
const SMALL_FRAME: usize = 64 << 10;

/// One frame.
#[derive(Debug)]
pub(crate) enum Frame {
    Json(Vec<u8>),
    Blob(Vec<u8>),
}

/// Supervisor → worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ToWorker {
    /// First message: how to configure the engine.
    Init(WorkerInit),
    /// Run one task. The worker answers `NeedModule` (then reads one blob: the module bytes)
    /// when the module is in neither of its caches, then `Started` just before the program's
    /// first instruction can run, then `Done` followed by two blobs (stdout, stderr). A module
    /// that does not compile is answered with `Done` directly, without `Started`.
    Run(Box<RunRequest>),
    /// Exit cleanly (closing stdin does the same).
    Shutdown,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WorkerInit {
    pub protocol: u32,
    /// The pooling allocator's per-memory cap, bytes.
    pub max_memory_bytes: u64,
    /// `<work_dir>/cache`: the worker adds `<wasmtime version>-<engine config hash>/`.
    pub cache_root: PathBuf,
    /// Compiled modules kept in the worker's memory (least recently used dropped first).
    pub module_cache_entries: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RunRequest {
    /// Lower-case hex SHA-256 of the module bytes.
    pub module_sha256: String,
    pub name: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub task_index: u32,
    pub task_count: u32,
    /// The limits as the worker must apply them (memory already capped at the node's).
    pub limits: Limits,
    /// Host directory shown read-only at guest `.`.
    pub input_dir: PathBuf,
    /// Host directory shown read-write at guest `out`.
    pub out_dir: PathBuf,
    /// Host directory shown read-write at guest `/tmp` (`TMPDIR`).
    pub tmp_dir: PathBuf,
    /// The input file (a path under `input_dir`) that is the program's standard input.
    pub stdin: Option<String>,
}

/// Worker → supervisor.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum FromWorker {
    /// Answer to `Init`.
    Hello {
        protocol: u32,
        pid: u32,
        wasmtime: String,
        cache_dir: PathBuf,
    },
    /// The worker could not start (bad configuration, unusable cache directory).
    Fatal { message: String },
    /// Send the module bytes as the next frame (a blob).
    NeedModule,
    /// The module is ready; instantiation and `_start` follow: the task's CPU time and wall
    /// time count from now.
    Started {
        module_source: ModuleSource,
        /// Compiling or loading the module, µs (0 on a memory hit).
        load_us: u64,
        /// The worker process's CPU time so far (`CLOCK_PROCESS_CPUTIME_ID`: user + system,
        /// all threads), µs: the base from which the task's CPU time is counted, by the
        /// worker (`DoneReply::cpu_us`) and by the supervisor, which reads the same clock
        /// from outside (`clock_getcpuclockid(pid)`) to enforce the CPU-time limit.
        cpu_us: u64,
    },
    /// The task ended inside the worker. Two blobs follow: stdout, then stderr.
    Done(Box<DoneReply>),
    /// Answer to SIGUSR1 (sent by the supervisor just before it kills the worker): what the
    /// running task has captured so far. Two blobs follow: stdout, then stderr.
    Partial {
        limits_hit: Vec<LimitKind>,
        stdout_len: u64,
        stderr_len: u64,
    },
}

/// Where the worker found the compiled module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleSource {
    /// Already compiled in this worker's memory.
    Memory,
    /// Loaded from the on-disk cache (`Module::deserialize_file`).
    Disk,
    /// Compiled now (and written to the disk cache).
    Compiled,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DoneReply {
    pub ending: Ending,
    /// Limits the worker saw being reached (memory, output file size, stdout, stderr).
    pub limits_hit: Vec<LimitKind>,
    pub module_source: Option<ModuleSource>,
    /// Compiling or loading the module (0 on a memory hit).
    pub load_us: u64,
    /// Instantiation (including the wasm start function, if any).
    pub instantiate_us: u64,
    /// `_start` until it returned, exited or trapped.
    pub run_us: u64,
    /// The task's CPU time: the worker process's CPU clock now less the base sent with
    /// `Started` (WASI set-up, instantiation and `_start`), µs.
    pub cpu_us: u64,
    pub stdout_len: u64,
    pub stderr_len: u64,
}

fn frame_header(kind: u8, len: usize) -> io::Result<[u8; 5]> {
    let len = u32::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut h = [0u8; 5];
    h[..4].copy_from_slice(&len.to_be_bytes());
    h[4] = kind;
    Ok(h)
}

fn check_header(h: [u8; 5], max_blob: usize) -> io::Result<(u8, usize)> {
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let max = match h[4] {
        KIND_JSON => MAX_JSON,
        KIND_BLOB => max_blob,
        k => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown frame kind {k:#04x}"),
            ));
        }
    };
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {max}-byte bound"),
        ));
    }
    Ok((h[4], len))
}

fn make_frame(kind: u8, payload: Vec<u8>) -> Frame {
    if kind == KIND_JSON {
        Frame::Json(payload)
    } else {
        Frame::Blob(payload)
    }
}

/// Blocking read of one frame (worker side). `Ok(None)` at a clean end of input.
pub(crate) fn read_frame(r: &mut impl Read, max_blob: usize) -> io::Result<Option<Frame>> {
    let mut h = [0u8; 5];
    match r.read_exact(&mut h) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let (kind, len) = check_header(h, max_blob)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some(make_frame(kind, payload)))
}

/// Blocking write of one frame (worker side); the caller flushes.
pub(crate) fn write_frame(w: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    w.write_all(&frame_header(kind, payload.len())?)?;
    w.write_all(payload)
}

pub(crate) fn write_json(w: &mut impl Write, msg: &impl Serialize) -> io::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
    write_frame(w, KIND_JSON, &bytes)
}

/// Reads frames from a worker (supervisor side) into its own buffer, so that
/// [`recv`](Self::recv) is cancel-safe (usable in `select!`: a frame is never half-read and
/// lost), without a reader task in between. A reply (`Done` and its two blobs) written in one
/// go is read with one syscall.
pub(crate) struct FrameReader<R> {
    reader: R,
    buf: Vec<u8>,
    max_blob: usize,
    /// End of input or a broken frame: nothing more will be returned.
    done: bool,
}

/// Bytes asked of the pipe at least per read.
const READ_CHUNK: usize = 64 << 10;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(reader: R, max_blob: usize) -> Self {
        FrameReader {
            reader,
            buf: Vec::new(),
            max_blob,
            done: false,
        }
    }

    /// A complete frame at the front of the buffer, taken out; `Ok(None)` if more bytes are
    /// needed (then `need` is the buffer size that holds the frame, if known).
    fn parse(&mut self, need: &mut usize) -> io::Result<Option<Frame>> {
        if self.buf.len() < 5 {
            *need = 5;
            return Ok(None);
        }
        let h = [
            self.buf[0],
            self.buf[1],
            self.buf[2],
            self.buf[3],
            self.buf[4],
        ];
        let (kind, len) = check_header(h, self.max_blob)?;
        if self.buf.len() < 5 + len {
            *need = 5 + len;
            return Ok(None);
        }
        let rest = self.buf.split_off(5 + len);
        let mut payload = std::mem::replace(&mut self.buf, rest);
        payload.drain(..5);
        Ok(Some(make_frame(kind, payload)))
    }

    /// The next frame; `None` once the input ended (or after the error that broke it).
    /// Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Option<Result<Frame, String>> {
        loop {
            if self.done {
                return None;
            }
            let mut need = 0;
            match self.parse(&mut need) {
                Ok(Some(frame)) => return Some(Ok(frame)),
                Ok(None) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(e.to_string()));
                }
            }
            let want = need.saturating_sub(self.buf.len()).max(READ_CHUNK);
            self.buf.reserve(want);
            // Cancel-safe: bytes read are in the buffer before this returns.
            match self.reader.read_buf(&mut self.buf).await {
                Ok(0) => {
                    self.done = true;
                    if self.buf.is_empty() {
                        return None;
                    }
                    return Some(Err("the input ended in the middle of a frame".into()));
                }
                Ok(_) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(e.to_string()));
                }
            }
        }
    }

    /// Whether nothing is pending: no buffered bytes, the input still open and nothing to
    /// read right now (checked without waiting).
    pub(crate) fn is_quiet(&mut self) -> bool {
        if self.done || !self.buf.is_empty() {
            return false;
        }
        self.buf.reserve(READ_CHUNK);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let read = std::pin::pin!(self.reader.read_buf(&mut self.buf));
        match read.poll(&mut cx) {
            std::task::Poll::Pending => true,
            std::task::Poll::Ready(Ok(0)) | std::task::Poll::Ready(Err(_)) => {
                self.done = true;
                false
            }
            std::task::Poll::Ready(Ok(_)) => false,
        }
    }
}

/// Async write of one frame (supervisor side), flushed.
pub(crate) async fn write_frame_async(
    w: &mut (impl AsyncWrite + Unpin),
    kind: u8,
    payload: &[u8],
) -> io::Result<()> {
    let header = frame_header(kind, payload.len())?;
    if payload.len() <= SMALL_FRAME {
        // One write (one pipe syscall) for the usual small frame.
        let mut frame = Vec::with_capacity(header.len() + payload.len());
        frame.extend_from_slice(&header);
        frame.extend_from_slice(payload);
        w.write_all(&frame).await?;
    } else {
        w.write_all(&header).await?;
        w.write_all(payload).await?;
    }
    w.flush().await
}

pub(crate) async fn write_json_async(
    w: &mut (impl AsyncWrite + Unpin),
    msg: &impl Serialize,
) -> io::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
    write_frame_async(w, KIND_JSON, &bytes).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_are_bounded() {
        let mut buf = Vec::new();
        write_json(&mut buf, &ToWorker::Shutdown).unwrap();
        write_frame(&mut buf, KIND_BLOB, b"abc").unwrap();
        let mut r = &buf[..];
        match read_frame(&mut r, 3).unwrap() {
            Some(Frame::Json(j)) => {
                assert!(matches!(
                    serde_json::from_slice::<ToWorker>(&j).unwrap(),
                    ToWorker::Shutdown
                ))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(read_frame(&mut r, 3).unwrap(), Some(Frame::Blob(b)) if b == b"abc"));
        assert!(read_frame(&mut r, 3).unwrap().is_none());

        let mut big = Vec::new();
        write_frame(&mut big, KIND_BLOB, &[0; 10]).unwrap();
        assert!(read_frame(&mut &big[..], 9).is_err());
        let bad = [0, 0, 0, 1, b'X', 0];
        assert!(read_frame(&mut &bad[..], 9).is_err());
    }

    #[tokio::test]
    async fn frame_reader_reads_split_and_joined_frames() {
        let mut bytes = Vec::new();
        write_json(&mut bytes, &ToWorker::Shutdown).unwrap();
        write_frame(&mut bytes, KIND_BLOB, b"abc").unwrap();
        write_frame(&mut bytes, KIND_BLOB, b"").unwrap();
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut r = FrameReader::new(rx, 3);
        assert!(r.is_quiet());
        // Byte by byte: the reader waits for whole frames.
        let writer = tokio::spawn(async move {
            for b in bytes {
                tx.write_all(&[b]).await.unwrap();
                tokio::task::yield_now().await;
            }
            tx
        });
        assert!(matches!(r.recv().await, Some(Ok(Frame::Json(_)))));
        assert!(matches!(r.recv().await, Some(Ok(Frame::Blob(b))) if b == b"abc"));
        assert!(matches!(r.recv().await, Some(Ok(Frame::Blob(b))) if b.is_empty()));
        let mut tx = writer.await.unwrap();
        // A frame over the bound breaks the reader for good.
        write_frame_async(&mut tx, KIND_BLOB, b"abcd")
            .await
            .unwrap();
        assert!(matches!(r.recv().await, Some(Err(_))));
        assert!(r.recv().await.is_none());
        assert!(!r.is_quiet());

        let (mut tx, rx) = tokio::io::duplex(64);
        let mut r = FrameReader::new(rx, 3);
        tx.write_all(&[0, 0, 0, 1]).await.unwrap();
        assert!(!r.is_quiet(), "bytes pending");
        drop(tx);
        assert!(matches!(r.recv().await, Some(Err(_))), "cut in the middle");
        assert!(r.recv().await.is_none());
    }
}
