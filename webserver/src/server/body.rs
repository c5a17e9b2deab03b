//! Request and response bodies: bounded reads, uploads streamed to the blob store, blobs
//! streamed out. Nothing here holds a whole upload in memory while receiving it.

use std::time::Duration;

use actix_web::body::SizedStream;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt as _;

use super::error::ApiError;
use crate::store::blobs::{BlobError, BlobRead, BlobStore, BlobWriter};

/// Longest pause between two chunks of a request body before the request is refused.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Chunks are collected up to this many bytes before one blocking write to the blob store.
pub const WRITE_BATCH: usize = 256 * 1024;
/// Chunk size when streaming a blob out.
const READ_CHUNK: usize = 64 * 1024;

/// Runs a blocking closure (store or file work) on actix's blocking pool.
pub async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
    T: Send + 'static,
{
    match web::block(f).await {
        Ok(r) => r,
        Err(e) => Err(ApiError::internal_msg(
            "running a blocking task",
            &rjs_cmd::chain(&e),
        )),
    }
}

/// Most bytes of an unread request body discarded before an error response is sent.
const DRAIN_LIMIT: u64 = 1024 * 1024;
/// Longest time spent discarding them.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Runs a handler and, if it refuses the request before reading the whole body, reads and
/// discards what is left of the body (up to [`DRAIN_LIMIT`] bytes, for at most
/// [`DRAIN_TIME`]) before answering. Without this an HTTP/2 client still sending its body
/// can see the stream reset before it reads the error response.
pub async fn drained<F>(mut payload: web::Payload, handler: F) -> Result<HttpResponse, ApiError>
where
    F: AsyncFnOnce(&mut web::Payload) -> Result<HttpResponse, ApiError>,
{
    let result = handler(&mut payload).await;
    if result.is_err() {
        let drain = async {
            let mut seen = 0u64;
            while let Some(Ok(chunk)) = payload.next().await {
                seen += chunk.len() as u64;
                if seen > DRAIN_LIMIT {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
    }
    result
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    rjs_signer::bundle::hex(&Sha256::digest(bytes))
}

/// The request's `Content-Length`, if it has one.
pub fn declared_length(req: &HttpRequest) -> Result<Option<u64>, ApiError> {
    let Some(v) = req.headers().get(actix_web::http::header::CONTENT_LENGTH) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| ApiError::bad_request("malformed Content-Length header"))
}

/// The request's `Content-Length`, if it has one. Refuses one over `limit` at once.
pub fn check_declared_length(
    req: &HttpRequest,
    what: &str,
    limit: u64,
) -> Result<Option<u64>, ApiError> {
    let len = declared_length(req)?;
    if len.is_some_and(|len| len > limit) {
        return Err(ApiError::too_large(what, limit));
    }
    Ok(len)
}

/// The next chunk of the body, or None at its end; refused if it stalls for
/// [`BODY_IDLE_TIMEOUT`].
pub async fn next_chunk(payload: &mut web::Payload) -> Result<Option<Bytes>, ApiError> {
    match tokio::time::timeout(BODY_IDLE_TIMEOUT, payload.next()).await {
        Err(_) => Err(ApiError::bad_request(format!(
            "the request body stalled for more than {} s",
            BODY_IDLE_TIMEOUT.as_secs()
        ))),
        Ok(None) => Ok(None),
        Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
        Ok(Some(Err(e))) => Err(ApiError::bad_request(format!(
            "reading the request body: {}",
            rjs_cmd::report::Chain(&e)
        ))),
    }
}

/// Reads a small body whole, refusing more than `limit` bytes.
pub async fn read_limited(
    payload: &mut web::Payload,
    what: &str,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = next_chunk(payload).await? {
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::too_large(what, limit as u64));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Reads the whole body and drops it, refusing more than `limit` bytes (`413`); returns how
/// many bytes it had. For a body whose content is not wanted (an answer that would be a
/// duplicate) but that is still acknowledged: nothing of it is stored, not even a temporary
/// file.
pub async fn discard_body(
    payload: &mut web::Payload,
    what: &str,
    limit: u64,
) -> Result<u64, ApiError> {
    let mut total: u64 = 0;
    while let Some(chunk) = next_chunk(payload).await? {
        total = total.saturating_add(chunk.len() as u64);
        if total > limit {
            return Err(ApiError::too_large(what, limit));
        }
    }
    Ok(total)
}

fn blob_write_error(what: &str) -> impl FnOnce(BlobError) -> ApiError + '_ {
    move |e| match e {
        BlobError::TooLarge { limit } => ApiError::too_large(what, limit),
        e => ApiError::internal("storing an upload", &e),
    }
}

/// Streams the body into `writer` (whose own limit is `limit`) in batches of at most
/// [`WRITE_BATCH`] bytes, each written on the blocking pool. Over the limit, reading stops and
/// the upload is refused (`413`); the temporary file goes with the writer.
pub async fn stream_to_blob(
    payload: &mut web::Payload,
    writer: BlobWriter,
    what: &'static str,
    limit: u64,
) -> Result<BlobWriter, ApiError> {
    stream_to_blob_after(
        payload,
        writer,
        Vec::with_capacity(WRITE_BATCH),
        what,
        limit,
    )
    .await
}

/// [`stream_to_blob`] for a body whose first bytes, `batch`, were already read (and are not
/// in `writer` yet).
async fn stream_to_blob_after(
    payload: &mut web::Payload,
    mut writer: BlobWriter,
    mut batch: Vec<u8>,
    what: &'static str,
    limit: u64,
) -> Result<BlobWriter, ApiError> {
    let mut total: u64 = batch.len() as u64;
    if total > limit {
        return Err(ApiError::too_large(what, limit));
    }
    loop {
        let chunk = next_chunk(payload).await?;
        let end = chunk.is_none();
        if let Some(chunk) = chunk {
            total = total.saturating_add(chunk.len() as u64);
            if total > limit {
                return Err(ApiError::too_large(what, limit));
            }
            batch.extend_from_slice(&chunk);
        }
        if batch.len() >= WRITE_BATCH || (end && !batch.is_empty()) {
            writer = write_to_blob(writer, &mut batch, what).await?;
        }
        if end {
            return Ok(writer);
        }
    }
}

/// Writes `batch` to `writer` on the blocking pool and empties it (keeping its buffer).
pub async fn write_to_blob(
    mut writer: BlobWriter,
    batch: &mut Vec<u8>,
    what: &'static str,
) -> Result<BlobWriter, ApiError> {
    let b = std::mem::take(batch);
    let (w, mut b) = blocking(move || {
        writer.write(&b).map_err(blob_write_error(what))?;
        Ok((writer, b))
    })
    .await?;
    b.clear();
    *batch = b;
    Ok(w)
}

/// Starts a blob upload of at most `limit` bytes (on the blocking pool: it creates a file).
pub async fn start_blob(blobs: &BlobStore, limit: u64) -> Result<BlobWriter, ApiError> {
    let blobs = blobs.clone();
    blocking(move || {
        blobs
            .writer(limit)
            .map_err(|e| ApiError::internal("starting an upload", &e))
    })
    .await
}

/// An answer body as received: small ones in memory, larger ones in an uncommitted blob.
#[derive(Debug)]
pub enum Received {
    /// At most the `inline_max` given to [`receive_answer`].
    Memory(Vec<u8>),
    Blob(Box<BlobWriter>),
}

/// Reads a body of at most `limit` bytes, keeping it in memory while it is at most
/// `inline_max` bytes (no file is created for it) and moving it into a new blob upload as
/// soon as it grows past that (at once when `declared` says it will).
pub async fn receive_answer(
    payload: &mut web::Payload,
    blobs: &BlobStore,
    declared: Option<u64>,
    what: &'static str,
    limit: u64,
    inline_max: u64,
) -> Result<Received, ApiError> {
    if declared.is_some_and(|d| d > inline_max) {
        let writer = start_blob(blobs, limit).await?;
        return Ok(Received::Blob(Box::new(
            stream_to_blob(payload, writer, what, limit).await?,
        )));
    }
    let cap = declared.map_or(8 * 1024, |d| d.min(inline_max)) as usize;
    let mut buf: Vec<u8> = Vec::with_capacity(cap);
    while let Some(chunk) = next_chunk(payload).await? {
        let total = buf.len() as u64 + chunk.len() as u64;
        if total > limit {
            return Err(ApiError::too_large(what, limit));
        }
        buf.extend_from_slice(&chunk);
        if total > inline_max {
            let writer = start_blob(blobs, limit).await?;
            return Ok(Received::Blob(Box::new(
                stream_to_blob_after(payload, writer, buf, what, limit).await?,
            )));
        }
    }
    Ok(Received::Memory(buf))
}

/// A blob as a response body of known length: a file read in chunks, or a download from the
/// object store passed on chunk by chunk as the client takes them.
pub fn blob_body(
    blob: BlobRead,
) -> SizedStream<impl futures_util::Stream<Item = Result<Bytes, std::io::Error>>> {
    use futures_util::future::Either;
    match blob {
        BlobRead::File(file, size) => SizedStream::new(size, Either::Left(file_chunks(file, size))),
        BlobRead::Stream(stream) => {
            let chunks = futures_util::stream::unfold(stream.rx, |mut rx| async move {
                rx.recv().await.map(|chunk| (chunk, rx))
            });
            SizedStream::new(stream.size, Either::Right(chunks))
        }
    }
}

/// A file as a response body of known length, read in chunks.
pub fn file_body(
    file: std::fs::File,
    size: u64,
) -> SizedStream<impl futures_util::Stream<Item = Result<Bytes, std::io::Error>>> {
    SizedStream::new(size, file_chunks(file, size))
}

/// The first `size` bytes of a file in chunks.
fn file_chunks(
    file: std::fs::File,
    size: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let file = tokio::fs::File::from_std(file);
    futures_util::stream::unfold((file, size), |(mut file, remaining)| async move {
        if remaining == 0 {
            return None;
        }
        let want = usize::try_from(remaining.min(READ_CHUNK as u64)).unwrap_or(READ_CHUNK);
        let mut buf = BytesMut::zeroed(want);
        match file.read(&mut buf).await {
            Ok(0) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "blob shorter than its size",
                )),
                (file, 0),
            )),
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf.freeze()), (file, remaining - n as u64)))
            }
            Err(e) => Some((Err(e), (file, 0))),
        }
    })
}
