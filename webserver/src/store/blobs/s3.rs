//! The S3 backend of the blob store: objects `<prefix>/blobs/<sha256>` in an S3-compatible
//! bucket, through `object_store` (SigV4 signed with ring, HTTP by reqwest over rustls).
//!
//! `object_store` is async; the blob store's interface is blocking (its callers run on the
//! blocking pool, as they do for the folder). Every request runs on a small runtime of this
//! backend's own, so the HTTP connection pool lives on one runtime whatever thread asks, and
//! blocking callers wait for it on a channel (callers keep to the blocking pool, as for files).
//!
//! Writes are create-only (`If-None-Match: *`, see [`S3Config::conditional_put`]); a blob that
//! already exists holds the same bytes, so "already exists" is success. Its age is then
//! refreshed with a touch marker `<prefix>/touch/<sha256>` (see `gc` for why and how).

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions,
    PutPayload, RetryConfig,
};
use tokio::io::AsyncReadExt;

use super::BlobError;

/// Parts of a multipart upload (S3 wants at least 5 MiB but for the last part).
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploaded at once: memory per upload is at most this many parts plus one being read.
const PARTS_IN_FLIGHT: usize = 2;
/// Connecting to the endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One whole request but a download (a part of 8 MiB needs ≥ 70 kB/s to make it).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Downloads have no total limit (a slow client reads a 64 MiB bundle slowly) but no read
/// may wait longer than this.
const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A download's client must take each chunk within this long: one that stops reading (and
/// keeps its connection open) lets go of the object store's connection then.
const SEND_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Retries of a failed request, and the time they may take in all.
const RETRIES: usize = 3;
const RETRY_TIMEOUT: Duration = Duration::from_secs(30);
/// Chunks of a download buffered between the object and the HTTP response.
const STREAM_BUFFER: usize = 8;

/// The garbage collector sends a blob's DELETE at most this long after it last saw the
/// blob old (and gives the request no longer than what is left of it).
pub const DELETE_WINDOW: Duration = Duration::from_secs(2);
/// A server that finds its blob already stored touches it, waits this long (more than
/// [`DELETE_WINDOW`]), and checks that it is still there: any collector that saw the blob old
/// before the touch has sent its DELETE by then.
pub const TOUCH_SETTLE: Duration = Duration::from_secs(3);

/// A blob found already stored that was created or touched less than this long ago is
/// reused as it is: a collector removes only blobs older than the grace period (at least
/// [`super::gc::MIN_GRACE`]), so it stays for minutes more, and the request records its row
/// within seconds. Hot content (the same answer many times over) costs two HEADs, not a touch
/// and a 3 s wait each time.
pub const REUSE_FRESH: Duration = Duration::from_secs(120);

/// Where and how to reach the bucket.
#[derive(Clone)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix without slashes at either end ("" for the bucket's root).
    pub prefix: String,
    /// `https://host:port` of a non-AWS server; None: AWS for `region`.
    pub endpoint: Option<String>,
    pub region: String,
    /// `https://endpoint/bucket/key` instead of `https://bucket.endpoint/key`.
    pub path_style: bool,
    /// Plain HTTP: only to a loopback endpoint (tests); refused otherwise.
    pub allow_http: bool,
    /// PEM CA certificates trusted for the endpoint instead of the system's.
    pub ca_file: Option<PathBuf>,
    pub credentials: S3Credentials,
    /// The server honours `If-None-Match: *` on PUT (AWS since 2024, MinIO, moto ≥ 5): put
    /// blobs create-only. Off: HEAD, then PUT only if absent (same bytes either way).
    pub conditional_put: bool,
    pub part_size: usize,
    /// A blob found stored that was created or touched less than this long ago is reused
    /// without a touch ([`REUSE_FRESH`]; zero: always touch).
    pub reuse_fresh: Duration,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("S3Config")
            .field("url", &self.url())
            .field(
                "endpoint",
                &self.endpoint.as_deref().map(|e| match check_endpoint(e) {
                    Ok(url) => url.to_string(),
                    Err(_) => "(unusable, not shown)".to_owned(),
                }),
            )
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .finish_non_exhaustive()
    }
}

/// Access keys. Never taken from the command line.
#[derive(Clone, Default)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl S3Config {
    /// A configuration for `s3://bucket/prefix` with defaults: AWS, region from
    /// `AWS_REGION`/`AWS_DEFAULT_REGION` or `us-east-1`, no credentials yet.
    pub fn from_url(url: &str) -> Result<S3Config, BlobError> {
        let bad = |why: &str| BlobError::Config(format!("{url:?}: {why}"));
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("s3://BUCKET[/PREFIX] expected"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(bad(
                "the bucket name must be 3-63 characters a-z, 0-9, '-' or '.'",
            ));
        }
        let prefix = prefix.trim_end_matches('/');
        for segment in prefix.split('/').filter(|_| !prefix.is_empty()) {
            let ok = !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !ok {
                return Err(bad(
                    "prefix segments must be non-empty, of A-Z a-z 0-9 - _ . only",
                ));
            }
        }
        let region = std::env::var("AWS_REGION")
            .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|_| "us-east-1".to_owned());
        Ok(S3Config {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            endpoint: None,
            region,
            path_style: false,
            allow_http: false,
            ca_file: None,
            credentials: S3Credentials::default(),
            conditional_put: true,
            part_size: DEFAULT_PART_SIZE,
            reuse_fresh: REUSE_FRESH,
        })
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

impl S3Credentials {
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and optionally `AWS_SESSION_TOKEN`;
    /// None if the first two are not both set.
    pub fn from_env() -> Option<S3Credentials> {
        let id = std::env::var("AWS_ACCESS_KEY_ID").ok()?;
        let secret = std::env::var("AWS_SECRET_ACCESS_KEY").ok()?;
        Some(S3Credentials {
            access_key_id: id,
            secret_access_key: secret,
            session_token: std::env::var("AWS_SESSION_TOKEN").ok(),
        })
    }

    /// A credentials file: lines `access_key_id = …`, `secret_access_key = …` and optionally
    /// `session_token = …` (`#` comments; the names of `~/.aws/credentials` are accepted
    /// too). On Unix it must be a regular file readable by its owner only (mode 0600 or 0400).
    pub fn from_file(path: &FsPath) -> Result<S3Credentials, BlobError> {
        let bad = |why: String| BlobError::Config(format!("{}: {why}", path.display()));
        let meta = std::fs::metadata(path)
            .map_err(|e| BlobError::File(rjs_signer::fsutil::FileError::io("reading", path, e)))?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(bad(format!(
                    "mode {mode:04o} lets others read the keys (chmod 600 it)"
                )));
            }
        }
        let text = rjs_signer::fsutil::read_bounded(path, 64 * 1024).map_err(BlobError::File)?;
        let text = String::from_utf8(text).map_err(|_| bad("not UTF-8".into()))?;
        let mut creds = S3Credentials::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(bad(format!("line {}: KEY = VALUE expected", n + 1)));
            };
            let value = value.trim().trim_matches('"').to_owned();
            match key.trim() {
                "access_key_id" | "aws_access_key_id" => creds.access_key_id = value,
                "secret_access_key" | "aws_secret_access_key" => creds.secret_access_key = value,
                "session_token" | "aws_session_token" => creds.session_token = Some(value),
                // Never echo the line: it may hold a key.
                _ => return Err(bad(format!("line {}: unknown key", n + 1))),
            }
        }
        if creds.access_key_id.is_empty() || creds.secret_access_key.is_empty() {
            return Err(bad(
                "access_key_id and secret_access_key are both needed".into()
            ));
        }
        Ok(creds)
    }
}

/// An endpoint as given: `http(s)://host[:port][/path]`, with no user name or password (keys
/// never go in a URL), query or fragment. The error does not repeat it (it may hold a key).
fn check_endpoint(endpoint: &str) -> Result<reqwest::Url, BlobError> {
    let bad = |why: &str| BlobError::Config(format!("the S3 endpoint {why}"));
    let url = reqwest::Url::parse(endpoint).map_err(|e| BlobError::Setup {
        what: "the S3 endpoint is not a URL".into(),
        source: Box::new(e),
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "carries credentials: give the keys in a credentials file or AWS_* variables",
        ));
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("must be an https:// URL"));
    }
    if url.host().is_none() {
        return Err(bad("names no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must have no query or fragment"));
    }
    Ok(url)
}

/// Whether `url` names a loopback host.
fn loopback_endpoint(url: &reqwest::Url) -> bool {
    match url.domain() {
        Some(name) => name == "localhost",
        None => url
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<std::net::IpAddr>().ok())
            .is_some_and(|ip| ip.is_loopback()),
    }
}

/// The tokio runtime the requests run on; shut down without waiting when dropped (it may be
/// dropped on an async thread).
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The S3 backend.
pub struct S3Blobs {
    rt: Runtime,
    /// Requests with a total timeout.
    store: Arc<AmazonS3>,
    /// Downloads: an idle timeout only.
    reads: Arc<AmazonS3>,
    config: S3Config,
}

impl std::fmt::Debug for S3Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Blobs")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn remote<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
    name: &str,
) -> impl FnOnce(E) -> BlobError {
    let name = name.to_owned();
    move |source| BlobError::Remote {
        what,
        name,
        source: Box::new(source),
    }
}

fn timed_out(what: &'static str, name: &str, after: Duration) -> BlobError {
    BlobError::Remote {
        what,
        name: name.to_owned(),
        source: Box::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {after:?}"),
        )),
    }
}

fn local_io<'a>(
    what: &'static str,
    path: &'a FsPath,
) -> impl FnOnce(std::io::Error) -> BlobError + 'a {
    move |e| BlobError::File(rjs_signer::fsutil::FileError::io(what, path, e))
}

/// How a commit found the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// This upload created the object.
    Created,
    /// The object was there already; its age is refreshed.
    Existed,
}

impl S3Blobs {
    /// Builds the clients (nothing is sent yet: see [`check`](Self::check)).
    pub fn open(config: S3Config) -> Result<S3Blobs, BlobError> {
        if config.part_size < 5 * 1024 * 1024 {
            return Err(BlobError::Config(
                "the part size must be at least 5 MiB".into(),
            ));
        }
        let endpoint = config.endpoint.as_deref().map(check_endpoint).transpose()?;
        let plain_http = endpoint.as_ref().is_some_and(|u| u.scheme() == "http");
        if let Some(url) = endpoint.as_ref().filter(|_| plain_http) {
            if !config.allow_http {
                return Err(BlobError::Config(format!(
                    "endpoint {url} is plain HTTP: only https:// is allowed"
                )));
            }
            if !loopback_endpoint(url) {
                return Err(BlobError::Config(format!(
                    "plain HTTP is allowed only to a loopback endpoint, not {url}"
                )));
            }
        }
        if config.credentials.access_key_id.is_empty() {
            return Err(BlobError::Config(
                "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or name a \
                 credentials file"
                    .into(),
            ));
        }
        // reqwest's rustls has no provider of its own: the process's is ring (as everywhere in
        // the project); install it if nothing has yet, else reqwest panics building a client.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut options = ClientOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_allow_http(plain_http);
        if let Some(ca) = &config.ca_file {
            let pem = rjs_signer::fsutil::read_bounded(ca, 1024 * 1024).map_err(BlobError::File)?;
            let certs =
                object_store::Certificate::from_pem_bundle(&pem).map_err(|e| BlobError::Setup {
                    what: format!("the CA certificates in {}", ca.display()),
                    source: Box::new(e),
                })?;
            options = options.with_no_system_certificates(true);
            for cert in certs {
                options = options.with_root_certificate(cert);
            }
        }
        let retry = RetryConfig {
            max_retries: RETRIES,
            retry_timeout: RETRY_TIMEOUT,
            ..RetryConfig::default()
        };
        let build = |options: ClientOptions| -> Result<AmazonS3, BlobError> {
            let mut b = AmazonS3Builder::new()
                .with_bucket_name(&config.bucket)
                .with_region(&config.region)
                .with_access_key_id(&config.credentials.access_key_id)
                .with_secret_access_key(&config.credentials.secret_access_key)
                .with_virtual_hosted_style_request(!config.path_style)
                .with_allow_http(plain_http)
                .with_conditional_put(if config.conditional_put {
                    S3ConditionalPut::ETagMatch
                } else {
                    S3ConditionalPut::Disabled
                })
                .with_retry(retry.clone())
                .with_client_options(options);
            if let Some(token) = &config.credentials.session_token {
                b = b.with_token(token);
            }
            if let Some(endpoint) = &config.endpoint {
                b = b.with_endpoint(endpoint);
            }
            b.build().map_err(|e| BlobError::Setup {
                what: "building the S3 client".into(),
                source: Box::new(e),
            })
        };
        let store = build(options.clone().with_timeout(REQUEST_TIMEOUT))?;
        let reads = build(
            options
                .with_timeout_disabled()
                .with_read_timeout(READ_IDLE_TIMEOUT),
        )?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("rjs-s3")
            .enable_all()
            .build()
            .map_err(|e| BlobError::Setup {
                what: "starting the S3 runtime".into(),
                source: Box::new(e),
            })?;
        Ok(S3Blobs {
            rt: Runtime(Some(rt)),
            store: Arc::new(store),
            reads: Arc::new(reads),
            config,
        })
    }

    pub fn config(&self) -> &S3Config {
        &self.config
    }

    /// Runs `fut` on this backend's runtime and waits for it (blocking: keep it off async
    /// workers but for the start-up check).
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, BlobError>> + Send + 'static,
    ) -> Result<T, BlobError> {
        let Some(rt) = self.rt.0.as_ref() else {
            return Err(BlobError::Config("the S3 runtime is shut down".into()));
        };
        // A std channel: waiting on it is plain blocking, allowed on any thread (the start-up
        // check runs on the server's main thread, inside its runtime).
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(BlobError::Config(
                "an S3 request was cancelled (runtime shut down)".into(),
            ))
        })
    }

    fn key(&self, dir: &str, sha256: &str) -> Path {
        if self.config.prefix.is_empty() {
            Path::from(format!("{dir}/{sha256}"))
        } else {
            Path::from(format!("{}/{dir}/{sha256}", self.config.prefix))
        }
    }

    fn blob_key(&self, sha256: &str) -> Path {
        self.key("blobs", sha256)
    }

    fn touch_key(&self, sha256: &str) -> Path {
        self.key("touch", sha256)
    }

    /// Checks that the bucket answers (a listing of at most one key) within the timeouts.
    pub fn check(&self) -> Result<(), BlobError> {
        let store = self.store.clone();
        let prefix = self.key("blobs", "").to_string();
        let prefix = Path::from(prefix.trim_end_matches('/'));
        let url = self.config.url();
        self.run(async move {
            let mut list = store.list(Some(&prefix));
            match tokio::time::timeout(REQUEST_TIMEOUT, list.next()).await {
                Err(_) => Err(timed_out("listing", &url, REQUEST_TIMEOUT)),
                Ok(Some(Err(e))) => Err(remote("listing", &url)(e)),
                Ok(_) => Ok(()),
            }
        })
    }

    /// Size of the blob, or None if absent.
    pub fn head(&self, sha256: &str) -> Result<Option<u64>, BlobError> {
        let (store, key, name) = (self.store.clone(), self.blob_key(sha256), sha256.to_owned());
        self.run(async move {
            match store.head(&key).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(remote("checking", &name)(e)),
            }
        })
    }

    /// Starts a download: the object's size and its bytes in chunks through a bounded channel
    /// (a task of this runtime reads the object as the receiver makes room).
    pub fn open_stream(&self, sha256: &str) -> Result<BlobStream, BlobError> {
        let (store, key, name) = (self.reads.clone(), self.blob_key(sha256), sha256.to_owned());
        self.run(async move {
            let got = match tokio::time::timeout(REQUEST_TIMEOUT, store.get(&key)).await {
                Err(_) => return Err(timed_out("reading", &name, REQUEST_TIMEOUT)),
                Ok(Err(object_store::Error::NotFound { .. })) => {
                    return Err(BlobError::NotFound {
                        sha256: name,
                        location: key.to_string(),
                    });
                }
                Ok(Err(e)) => return Err(remote("reading", &name)(e)),
                Ok(Ok(got)) => got,
            };
            let size = got.meta.size;
            let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
            tokio::spawn(pump(got.into_stream(), size, tx, SEND_IDLE_TIMEOUT));
            Ok(BlobStream { size, rx })
        })
    }

    /// Reads a whole blob of at most `limit` bytes.
    pub fn read(&self, sha256: &str, limit: u64) -> Result<Vec<u8>, BlobError> {
        let stream = self.open_stream(sha256)?;
        if stream.size > limit {
            return Err(BlobError::TooLarge { limit });
        }
        let mut rx = stream.rx;
        let mut out = Vec::with_capacity(usize::try_from(stream.size).unwrap_or(0));
        while let Some(chunk) = rx.blocking_recv() {
            let chunk = chunk.map_err(|e| BlobError::Remote {
                what: "reading",
                name: sha256.to_owned(),
                source: Box::new(e),
            })?;
            if out.len() as u64 + chunk.len() as u64 > limit {
                return Err(BlobError::TooLarge { limit });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Uploads the complete file `path` (`size` bytes, SHA-256 `sha256`) as the blob.
    pub fn commit_file(
        &self,
        path: &FsPath,
        sha256: &str,
        size: u64,
    ) -> Result<Committed, BlobError> {
        let this = Upload {
            store: self.store.clone(),
            key: self.blob_key(sha256),
            touch: self.touch_key(sha256),
            name: sha256.to_owned(),
            path: path.to_owned(),
            size,
            part_size: self.config.part_size,
            conditional: self.config.conditional_put,
            reuse_fresh: self.config.reuse_fresh,
        };
        self.run(async move { this.commit().await })
    }

    /// When the blob was last created or touched (None: no such blob).
    pub fn last_touched(&self, sha256: &str) -> Result<Option<SystemTime>, BlobError> {
        let (store, key, touch) = (
            self.store.clone(),
            self.blob_key(sha256),
            self.touch_key(sha256),
        );
        let name = sha256.to_owned();
        self.run(async move {
            let blob = match store.head(&key).await {
                Ok(meta) => SystemTime::from(meta.last_modified),
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(remote("checking", &name)(e)),
            };
            let touched = match store.head(&touch).await {
                Ok(meta) => Some(SystemTime::from(meta.last_modified)),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => return Err(remote("checking the touch marker of", &name)(e)),
            };
            Ok(Some(touched.map_or(blob, |t| t.max(blob))))
        })
    }

    /// Deletes the blob (then its touch marker) if the DELETE can be sent before `deadline`;
    /// Ok(false) if the deadline passed first (the blob is then kept, as far as this
    /// collector knows).
    pub fn delete_before(&self, sha256: &str, deadline: Instant) -> Result<bool, BlobError> {
        let (store, key, touch) = (
            self.store.clone(),
            self.blob_key(sha256),
            self.touch_key(sha256),
        );
        let name = sha256.to_owned();
        self.run(async move {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Ok(false);
            };
            match tokio::time::timeout(left, store.delete(&key)).await {
                Err(_) => return Err(timed_out("deleting", &name, left)),
                Ok(Err(object_store::Error::NotFound { .. })) => return Ok(false),
                Ok(Err(e)) => return Err(remote("deleting", &name)(e)),
                Ok(Ok(())) => {}
            }
            match tokio::time::timeout(REQUEST_TIMEOUT, store.delete(&touch)).await {
                Ok(Ok(()) | Err(object_store::Error::NotFound { .. })) => {}
                Ok(Err(e)) => {
                    tracing::warn!(blob = %name, error = %rjs_cmd::chain(&e),
                                   "deleting a touch marker; left behind")
                }
                Err(_) => tracing::warn!(blob = %name, "deleting a touch marker timed out"),
            }
            Ok(true)
        })
    }

    /// Up to `max` blobs after `after` in name order: (name, last modified). Keys that are
    /// not blob names are skipped.
    pub fn list_after(
        &self,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<(String, SystemTime)>, BlobError> {
        let store = self.store.clone();
        let dir = self.key("blobs", "").to_string();
        let dir = Path::from(dir.trim_end_matches('/'));
        let offset = after.map(|a| self.blob_key(a));
        let url = self.config.url();
        self.run(async move {
            let mut list = match &offset {
                Some(o) => store.list_with_offset(Some(&dir), o),
                None => store.list(Some(&dir)),
            };
            let mut out = Vec::new();
            while out.len() < max {
                let next = match tokio::time::timeout(REQUEST_TIMEOUT, list.next()).await {
                    Err(_) => return Err(timed_out("listing", &url, REQUEST_TIMEOUT)),
                    Ok(None) => break,
                    Ok(Some(next)) => next.map_err(remote("listing", &url))?,
                };
                let Some(name) = next.location.filename() else {
                    continue;
                };
                if super::valid_blob_name(name) {
                    out.push((name.to_owned(), SystemTime::from(next.last_modified)));
                }
            }
            Ok(out)
        })
    }

    /// Removes the blob now, whatever its age (tests and [`super::BlobStore::remove`]).
    pub fn delete(&self, sha256: &str) -> Result<bool, BlobError> {
        if self.head(sha256)?.is_none() {
            return Ok(false);
        }
        self.delete_before(sha256, Instant::now() + REQUEST_TIMEOUT)
    }
}

/// A download in progress.
#[derive(Debug)]
pub struct BlobStream {
    pub size: u64,
    pub rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
}

/// Moves an object's chunks into `tx` as the receiver takes them; stops when the receiver
/// goes, or takes no chunk for `send_idle` (a client that stopped reading: the object's
/// body is dropped, the response cut short). An error, a read idle for too long, or a length
/// other than `size` ends the stream with an error (the response is then cut short, which
/// the client sees).
async fn pump(
    mut stream: futures_util::stream::BoxStream<'static, object_store::Result<Bytes>>,
    size: u64,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    send_idle: Duration,
) {
    let mut total = 0u64;
    loop {
        let item = match tokio::time::timeout(READ_IDLE_TIMEOUT, stream.next()).await {
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no data from the object store for {READ_IDLE_TIMEOUT:?}"),
            )),
            Ok(None) if total == size => return,
            Ok(None) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("object ended after {total} of {size} bytes"),
            )),
            Ok(Some(Err(e))) => Err(std::io::Error::other(e)),
            Ok(Some(Ok(chunk))) => {
                total = total.saturating_add(chunk.len() as u64);
                if total > size {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("object longer than its {size} bytes"),
                    ))
                } else {
                    Ok(chunk)
                }
            }
        };
        let failed = item.is_err();
        let sent = tokio::time::timeout(send_idle, tx.send(item)).await;
        if !matches!(sent, Ok(Ok(()))) || failed {
            return;
        }
    }
}

/// One commit of a temporary file to the bucket.
struct Upload {
    store: Arc<AmazonS3>,
    key: Path,
    touch: Path,
    name: String,
    path: PathBuf,
    size: u64,
    part_size: usize,
    conditional: bool,
    reuse_fresh: Duration,
}

impl Upload {
    async fn commit(self) -> Result<Committed, BlobError> {
        let single = self.size <= self.part_size as u64;
        let created = if single && self.conditional {
            // Create-only: If-None-Match: *.
            let body = self.read_small().await?;
            let opts = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            match self.store.put_opts(&self.key, body, opts).await {
                Ok(_) => true,
                Err(object_store::Error::AlreadyExists { .. }) => false,
                Err(e) => return Err(remote("storing", &self.name)(e)),
            }
        } else if self.exists().await? {
            false
        } else {
            // Absent a moment ago: uploaded whole. Two servers racing here write the same
            // bytes (the name is their SHA-256), so whichever completes last changes nothing.
            self.upload().await?;
            true
        };
        if created {
            return Ok(Committed::Created);
        }
        if !self.reuse_fresh.is_zero() && self.fresh().await? {
            return Ok(Committed::Existed);
        }
        // Already stored: make it young again, let any collector that saw it old finish,
        // and make sure it is still there (else store it again).
        self.store
            .put(&self.touch, PutPayload::from_static(b""))
            .await
            .map_err(remote("touching", &self.name))?;
        tokio::time::sleep(TOUCH_SETTLE).await;
        if !self.exists().await? {
            tracing::info!(blob = %self.name, "blob collected while being reused; storing it again");
            self.upload().await?;
        }
        Ok(Committed::Existed)
    }

    /// Whether the blob is there, created or touched within `reuse_fresh` (a time ahead of
    /// this clock counts as fresh, as the collector counts it young).
    async fn fresh(&self) -> Result<bool, BlobError> {
        let mut latest = None;
        for key in [&self.key, &self.touch] {
            match self.store.head(key).await {
                Ok(meta) => {
                    let t = SystemTime::from(meta.last_modified);
                    latest = Some(latest.map_or(t, |l: SystemTime| l.max(t)));
                }
                Err(object_store::Error::NotFound { .. }) if key == &self.touch => {}
                // The blob itself gone: not fresh (the touch path stores it again).
                Err(object_store::Error::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(remote("checking", &self.name)(e)),
            }
        }
        Ok(latest.is_some_and(|t| {
            SystemTime::now()
                .duration_since(t)
                .map_or(true, |age| age < self.reuse_fresh)
        }))
    }

    async fn exists(&self) -> Result<bool, BlobError> {
        match self.store.head(&self.key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(remote("checking", &self.name)(e)),
        }
    }

    /// The whole file, for a single PUT (at most one part size).
    async fn read_small(&self) -> Result<PutPayload, BlobError> {
        let bytes = tokio::fs::read(&self.path)
            .await
            .map_err(local_io("reading", &self.path))?;
        if bytes.len() as u64 != self.size {
            return Err(local_io("reading", &self.path)(std::io::Error::other(
                format!("{} bytes, {} written", bytes.len(), self.size),
            )));
        }
        Ok(PutPayload::from(bytes))
    }

    /// Uploads the file, overwriting: one PUT up to a part size, multipart above.
    async fn upload(&self) -> Result<(), BlobError> {
        if self.size <= self.part_size as u64 {
            let body = self.read_small().await?;
            self.store
                .put(&self.key, body)
                .await
                .map_err(remote("storing", &self.name))?;
            return Ok(());
        }
        let mut upload = self
            .store
            .put_multipart_opts(&self.key, PutMultipartOptions::default())
            .await
            .map_err(remote("starting a multipart upload of", &self.name))?;
        match self.parts(upload.as_mut()).await {
            Ok(()) => match upload.complete().await {
                Ok(_) => Ok(()),
                Err(e) => {
                    let _ = upload.abort().await;
                    Err(remote("completing the multipart upload of", &self.name)(e))
                }
            },
            Err(e) => {
                if let Err(abort) = upload.abort().await {
                    tracing::warn!(blob = %self.name, error = %rjs_cmd::chain(&abort),
                                   "aborting a failed multipart upload");
                }
                Err(e)
            }
        }
    }

    /// Reads the file a part at a time and uploads the parts, at most [`PARTS_IN_FLIGHT`] at
    /// once: never the whole file in memory.
    async fn parts(&self, upload: &mut dyn object_store::MultipartUpload) -> Result<(), BlobError> {
        let mut file = tokio::fs::File::open(&self.path)
            .await
            .map_err(local_io("opening", &self.path))?;
        let mut in_flight = VecDeque::new();
        let mut sent = 0u64;
        loop {
            let mut buf = vec![0u8; self.part_size];
            let mut filled = 0;
            while filled < buf.len() {
                let n = file
                    .read(&mut buf[filled..])
                    .await
                    .map_err(local_io("reading", &self.path))?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            buf.truncate(filled);
            sent += filled as u64;
            if in_flight.len() >= PARTS_IN_FLIGHT {
                wait_part(in_flight.pop_front(), &self.name).await?;
            }
            in_flight.push_back(tokio::spawn(upload.put_part(PutPayload::from(buf))));
        }
        while let Some(part) = in_flight.pop_front() {
            wait_part(Some(part), &self.name).await?;
        }
        if sent != self.size {
            return Err(local_io("reading", &self.path)(std::io::Error::other(
                format!("{sent} bytes, {} written", self.size),
            )));
        }
        Ok(())
    }
}

async fn wait_part(
    part: Option<tokio::task::JoinHandle<object_store::Result<()>>>,
    name: &str,
) -> Result<(), BlobError> {
    let Some(part) = part else {
        return Ok(());
    };
    match part.await {
        Ok(r) => r.map_err(remote("uploading a part of", name)),
        Err(e) => Err(remote("uploading a part of", name)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(n: usize) -> futures_util::stream::BoxStream<'static, object_store::Result<Bytes>> {
        Box::pin(futures_util::stream::iter(
            (0..n).map(|_| Ok(Bytes::from_static(b"0123456789"))),
        ))
    }

    #[tokio::test]
    async fn a_download_whose_client_stops_reading_lets_go() {
        // A client that takes one chunk, then none: the pump gives up after its idle limit
        // (its sender dropped: the channel ends), though the object had more to give.
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let pumping = tokio::spawn(pump(chunks(100), 1000, tx, Duration::from_millis(200)));
        assert!(rx.recv().await.is_some_and(|c| c.is_ok()));
        tokio::time::timeout(Duration::from_secs(5), pumping)
            .await
            .expect("the pump stops by itself")
            .unwrap();
        let mut left = 0;
        while rx.recv().await.is_some() {
            left += 1;
        }
        assert!(left <= 1, "{left} chunks were buffered");

        // A client that reads gets every byte, and the stream ends.
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(pump(chunks(100), 1000, tx, Duration::from_millis(200)));
        let mut got = 0;
        while let Some(chunk) = rx.recv().await {
            got += chunk.unwrap().len();
        }
        assert_eq!(got, 1000);
    }

    #[test]
    fn urls_and_endpoints() {
        let c = S3Config::from_url("s3://my-bucket/grid/prod/").unwrap();
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str()),
            ("my-bucket", "grid/prod")
        );
        assert_eq!(c.url(), "s3://my-bucket/grid/prod");
        let c = S3Config::from_url("s3://bucket").unwrap();
        assert_eq!(c.prefix, "");
        for bad in [
            "http://b/x",
            "s3://",
            "s3://B/x",
            "s3://b",
            "s3://bkt/../x",
            "s3://bkt/a//b",
        ] {
            assert!(S3Config::from_url(bad).is_err(), "{bad}");
        }
        let loopback = |e: &str| loopback_endpoint(&check_endpoint(e).unwrap());
        assert!(loopback("http://127.0.0.1:9000"));
        assert!(loopback("http://localhost:9000/"));
        assert!(loopback("http://[::1]:9000"));
        assert!(!loopback("http://10.0.0.1:9000"));
        assert!(!loopback("http://s3.example:80"));
        // What is before an @ is a user name, not the host.
        assert!(check_endpoint("http://localhost:9000@evil.example/").is_err());
        let e = check_endpoint("https://AKID:SECRETKEY@s3.example").unwrap_err();
        assert!(!e.to_string().contains("SECRETKEY"), "{e}");
        for bad in [
            "s3.example",
            "ftp://s3.example",
            "https://s3.example/?x=1",
            "https://s3.example/#f",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_http_only_to_loopback() {
        let mut c = S3Config::from_url("s3://bucket/p").unwrap();
        c.credentials = S3Credentials {
            access_key_id: "a".into(),
            secret_access_key: "b".into(),
            session_token: None,
        };
        c.endpoint = Some("http://10.1.2.3:9000".into());
        c.allow_http = true;
        let e = S3Blobs::open(c.clone()).unwrap_err().to_string();
        assert!(e.contains("loopback"), "{e}");
        c.allow_http = false;
        c.endpoint = Some("http://127.0.0.1:9000".into());
        let e = S3Blobs::open(c.clone()).unwrap_err().to_string();
        assert!(e.contains("only https"), "{e}");
        c.allow_http = true;
        S3Blobs::open(c).unwrap();
    }

    #[test]
    fn credentials_file_mode_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds");
        std::fs::write(
            &path,
            "# keys\naccess_key_id = AKID\nsecret_access_key = \"sec ret\"\n",
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = S3Credentials::from_file(&path).err().unwrap().to_string();
            assert!(e.contains("chmod 600"), "{e}");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let c = S3Credentials::from_file(&path).unwrap();
        assert_eq!(c.access_key_id, "AKID");
        assert_eq!(c.secret_access_key, "sec ret");
        std::fs::write(&path, "password = hunter2\n").unwrap();
        let e = S3Credentials::from_file(&path).err().unwrap().to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
