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
use crate::store::blobs::{BlobError, BlobWriter};

/// Longest pause between two chunks of a request body before the request is refused.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Chunks are collected up to this many bytes before one blocking write to the blob store.
const WRITE_BATCH: usize = 256 * 1024;
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
            &e.to_string(),
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

/// The request's `Content-Length`, if it has one. Refuses one over `limit` at once.
pub fn check_declared_length(req: &HttpRequest, what: &str, limit: u64) -> Result<(), ApiError> {
    let Some(v) = req.headers().get(actix_web::http::header::CONTENT_LENGTH) else {
        return Ok(());
    };
    let len = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| ApiError::bad_request("malformed Content-Length header"))?;
    if len > limit {
        return Err(ApiError::too_large(what, limit));
    }
    Ok(())
}

/// The next chunk of the body, or None at its end.
async fn next_chunk(payload: &mut web::Payload) -> Result<Option<Bytes>, ApiError> {
    match tokio::time::timeout(BODY_IDLE_TIMEOUT, payload.next()).await {
        Err(_) => Err(ApiError::bad_request(format!(
            "the request body stalled for more than {} s",
            BODY_IDLE_TIMEOUT.as_secs()
        ))),
        Ok(None) => Ok(None),
        Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
        Ok(Some(Err(e))) => Err(ApiError::bad_request(format!(
            "reading the request body: {e}"
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
    mut writer: BlobWriter,
    what: &'static str,
    limit: u64,
) -> Result<BlobWriter, ApiError> {
    let mut batch: Vec<u8> = Vec::with_capacity(WRITE_BATCH);
    let mut total: u64 = 0;
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
            let (w, mut b) = blocking(move || {
                writer.write(&batch).map_err(blob_write_error(what))?;
                Ok((writer, batch))
            })
            .await?;
            b.clear();
            writer = w;
            batch = b;
        }
        if end {
            return Ok(writer);
        }
    }
}

/// A blob file as a response body of known length, read in chunks.
pub fn file_body(
    file: std::fs::File,
    size: u64,
) -> SizedStream<impl futures_util::Stream<Item = Result<Bytes, std::io::Error>>> {
    let file = tokio::fs::File::from_std(file);
    let stream = futures_util::stream::unfold((file, size), |(mut file, remaining)| async move {
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
    });
    SizedStream::new(size, stream)
}
