//! The lookup server's side of the web server's lookup API (`docs/webserver-api.md`, "Lookup
//! API"): one mutual-TLS HTTPS client, reused so that TLS sessions and HTTP/2 connections are
//! kept; the `jobs` event stream with reconnection; a content-addressed bundle cache; and the
//! [`Poller`] that wakes the dispatcher on an event or on a jittered timer, backing off while
//! the web server is down.
//!
//! The client may be given several web servers sharing one store ([`crate::failover`]): every
//! request goes to the current one, and a failure that says it is gone or unwell
//! ([`UpstreamError::warrants_failover`]) makes the next one current. A request that is safe to
//! send twice is sent again at once to the next server; one that is not (a lease, a failure
//! report, a release) only when it surely never reached the first
//! ([`UpstreamError::never_sent`]); everything else is retried by its caller's backoff, which
//! then reaches the new current server.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rjs_cmd::chain;
use rjs_signer::bundle::is_sha256_hex as valid_id;
use rjs_wire::api::{
    AnswerResponse, ErrorBody, FailureRequest, FailureResponse, H_NODE, H_OUTCOME, HeldRequest,
    JobsEvent, LOOKUP_PREFIX, LeaseRequest, LeaseResponse, ReleaseRequest, ReleaseResponse,
    RenewRequest, RenewResponse, Waiting, WaitingRequest, WaitingResponse,
};
use rjs_wire::creds::parse_creds;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::failover::{Rotation, WebServerListError, WebServers};

/// Errors talking to the web server. `Display` names the operation and URL; the cause is in
/// `source()` (print with [`rjs_cmd::chain`]).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("loading lookup credentials from {path}")]
    Credentials {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("building the HTTPS client")]
    Client(#[source] reqwest::Error),
    #[error("the web server list")]
    WebServers(#[source] WebServerListError),
    #[error("{what} {url}")]
    Transport {
        what: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// Connected, but no response came within `after` (a hung server).
    #[error("{what} {url}: no response within {after:?}")]
    NoResponse {
        what: &'static str,
        url: String,
        after: Duration,
    },
    #[error("{what} {url}: {status} {code}: {message}")]
    Status {
        what: &'static str,
        url: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{what} {url}: unexpected response")]
    Decode {
        what: &'static str,
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} {url}: response over {limit} bytes")]
    TooLarge {
        what: &'static str,
        url: String,
        limit: u64,
    },
    #[error("bundle {expected} from {url} hashes to {got}")]
    Digest {
        url: String,
        expected: String,
        got: String,
    },
    #[error("{0:?} is not a bundle id (64 lowercase hex digits)")]
    BadBundleId(String),
    #[error("encoding the answer of job {job_id} for upload")]
    Encode {
        job_id: i64,
        #[source]
        source: rjs_wire::api::AnswerFrameError,
    },
    #[error("bundle cache")]
    Cache(#[source] rjs_signer::fsutil::FileError),
}

impl UpstreamError {
    /// `reqwest`'s failure while `what` `url`, as [`UpstreamError::Transport`].
    fn transport(what: &'static str, url: &str) -> impl FnOnce(reqwest::Error) -> Self {
        move |source| UpstreamError::Transport {
            what,
            url: url.to_owned(),
            source,
        }
    }

    /// Worth retrying later: the web server was unreachable, timed out, or failed on its side
    /// (5xx, 408, 429). Other errors will not go away by themselves.
    pub fn is_transient(&self) -> bool {
        match self {
            UpstreamError::Transport { .. } => true,
            UpstreamError::Status { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            _ => false,
        }
    }

    /// No answer came back at all (the link, not the web server): transient, and without a
    /// status. A web server that answers with a failure is reachable.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            UpstreamError::Transport { .. } | UpstreamError::NoResponse { .. }
        )
    }

    /// The web server is gone or unwell, and another may serve: no answer at all (refused,
    /// reset, timed out, a TLS failure), or a gateway's or an overloaded server's 502, 503 or
    /// 504. A 500 is a fault of this request's handling, not of the server as such; 4xx are
    /// this lookup's.
    pub fn warrants_failover(&self) -> bool {
        match self {
            UpstreamError::Transport { .. } | UpstreamError::NoResponse { .. } => true,
            UpstreamError::Status { status, .. } => {
                matches!(status, 502..=504) && !self.store_unavailable()
            }
            _ => false,
        }
    }

    /// The web server answered that it cannot reach its database (`503 store-unavailable`):
    /// alive, and perhaps every server of the grid is in the same state (the database is
    /// down). A request does not fail over on it; the heartbeat moves to another server only
    /// if that one is ready ([`WebServerClient::heartbeat`]).
    pub fn store_unavailable(&self) -> bool {
        matches!(self, UpstreamError::Status { status: 503, code, .. } if code == "store-unavailable")
    }

    /// The request surely never reached the web server: the connection (TCP or TLS) could
    /// not be made. Sending it to another server cannot do anything twice.
    pub fn never_sent(&self) -> bool {
        matches!(self, UpstreamError::Transport { source, .. } if source.is_connect())
    }

    /// The HTTP status, if the web server answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            UpstreamError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The TLS client configuration from the `rjs-webserver lookup add` credentials file
/// ([`rjs_wire::creds`]): the web server's CA the only root, the file's certificate and key
/// the lookup's identity.
fn tls_from_credentials(path: &Path) -> Result<rustls::ClientConfig, UpstreamError> {
    let load = || -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
        let pem = rjs_signer::fsutil::read_bounded(path, 1024 * 1024)?;
        let c = parse_creds(&pem)?;
        Ok(rjs_wire::tls::client_config(
            &[c.ca],
            Some((vec![c.cert], c.key)),
        )?)
    };
    load().map_err(|source| UpstreamError::Credentials {
        path: path.to_owned(),
        source,
    })
}

/// Timeouts of a [`WebServerClient`].
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// Whole request (not the event stream).
    pub request: Duration,
    /// Longest silence on the event stream before it is reconnected (the server sends a
    /// comment every 15 s).
    pub events_idle: Duration,
    /// Interval of HTTP/2 pings on the kept connection, and how long a ping may go
    /// unanswered before the connection is closed.
    pub keepalive: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(60),
            events_idle: Duration::from_secs(45),
            keepalive: Duration::from_secs(2),
        }
    }
}

/// How a bundle was obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedBundle {
    /// `<cache>/<bundle_id>`, its SHA-256 verified.
    pub path: PathBuf,
    /// True if the web server answered 304 (the cached copy was used).
    pub from_cache: bool,
}

/// Whether an answer upload stored the answer or found one already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerAck {
    Stored,
    Duplicate,
}

/// The lookup API client. Cheap to clone (one shared connection pool, one shared
/// [`Rotation`] of web servers).
#[derive(Clone)]
pub struct WebServerClient {
    http: reqwest::Client,
    servers: Arc<Rotation>,
    cache_dir: PathBuf,
    timeouts: Timeouts,
}

/// Whether a request that failed at one web server is sent again at once to the next
/// ([`WebServerClient::call`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Never (its caller retries, or the heartbeat's next ask does).
    Never,
    /// Only if it never reached the first ([`UpstreamError::never_sent`]): sending it twice
    /// could do twice what it does (lease more jobs, count an attempt twice, give back a job
    /// leased again since).
    IfUnsent,
    /// Whenever the first failed (reads, and writes whose repetition changes nothing).
    Always,
}

use rjs_signer::bundle::hex;

/// Largest JSON response body read from the web server.
const MAX_JSON_BODY: u64 = 1024 * 1024;
/// Largest error body read (only its start is shown anyway).
const MAX_ERROR_BODY: u64 = 64 * 1024;

/// Reads a response body of at most `limit` bytes (refused by its announced length when it
/// has one, else as soon as it goes over).
async fn read_body(
    mut resp: reqwest::Response,
    limit: u64,
    what: &'static str,
    url: &str,
) -> Result<Vec<u8>, UpstreamError> {
    let too_large = || UpstreamError::TooLarge {
        what,
        url: url.to_owned(),
        limit,
    };
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(UpstreamError::transport(what, url))?
    {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads and decodes a JSON response body (at most [`MAX_JSON_BODY`] bytes).
async fn read_json<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
    what: &'static str,
    url: &str,
) -> Result<T, UpstreamError> {
    let bytes = read_body(resp, MAX_JSON_BODY, what, url).await?;
    serde_json::from_slice(&bytes).map_err(|source| UpstreamError::Decode {
        what,
        url: url.to_owned(),
        source,
    })
}

impl WebServerClient {
    /// One web server: `base` is `https://host:port`; `creds` the `lookup add` file;
    /// `cache_dir` where bundles are kept under their SHA-256 (created if missing).
    pub fn new(
        base: &str,
        creds: &Path,
        cache_dir: &Path,
        timeouts: Timeouts,
    ) -> Result<Self, UpstreamError> {
        let servers = WebServers::parse(&[base]).map_err(UpstreamError::WebServers)?;
        Self::with_webservers(servers, creds, cache_dir, timeouts)
    }

    /// Several web servers on one store, used one at a time, the first first
    /// ([`crate::failover`]). They share one CA and one server certificate, so one TLS
    /// configuration (and one connection pool) serves them all.
    pub fn with_webservers(
        servers: WebServers,
        creds: &Path,
        cache_dir: &Path,
        timeouts: Timeouts,
    ) -> Result<Self, UpstreamError> {
        let mut tls = tls_from_credentials(creds)?;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        // HTTP/2 pings on the kept connection: a connection that stopped carrying anything
        // (a broken path, a partition) is closed within `keepalive` + its timeout, and the
        // next request opens a new one (resuming the TLS session) instead of waiting for TCP
        // to give up.
        //
        // HTTP/2 only (the web server speaks it over TLS with ALPN `h2`): the connection pool
        // then knows before connecting that one connection carries every request, so
        // requests started at once wait for one connection (and one TLS handshake, resumed
        // after a break) instead of each opening its own.
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .http2_prior_knowledge()
            .connect_timeout(timeouts.connect)
            .pool_idle_timeout(Duration::from_secs(90))
            .http2_keep_alive_interval(timeouts.keepalive)
            .http2_keep_alive_timeout(timeouts.keepalive)
            .http2_keep_alive_while_idle(true)
            .tcp_keepalive(Duration::from_secs(10))
            .build()
            .map_err(UpstreamError::Client)?;
        rjs_signer::fsutil::create_private_dir(cache_dir).map_err(UpstreamError::Cache)?;
        Ok(WebServerClient {
            http,
            servers: Arc::new(Rotation::new(servers)),
            cache_dir: cache_dir.to_owned(),
            timeouts,
        })
    }

    /// The current web server's base URL.
    pub fn base(&self) -> String {
        self.servers.current().1
    }

    /// The web servers, which one is current, the failovers so far.
    pub fn servers(&self) -> &Rotation {
        &self.servers
    }

    /// A request to server `index` failed with `e`: fails over if `e` says the server is
    /// gone or unwell (logged once per move, with the cause chain). True when another
    /// server is current now (moved by this failure or an earlier one).
    fn failed(&self, index: usize, e: &UpstreamError) -> bool {
        if e.warrants_failover() {
            self.fail_over(index, &chain(e));
        }
        self.servers.current().0 != index
    }

    /// Server `index` (of [`Rotation::current`]) is gone or unwell for `cause`, as a caller
    /// found out on its own (a deadline of its own passed): the next one becomes current, as
    /// after a request's transport error.
    pub fn fail_over(&self, index: usize, cause: &str) {
        self.fail_over_to(index, (index + 1) % self.servers.len().max(1), cause);
    }

    /// [`fail_over`](Self::fail_over) to server `to` of the list.
    fn fail_over_to(&self, index: usize, to: usize, cause: &str) {
        if let Some(f) = self.servers.fail_over_to(index, to, cause) {
            tracing::warn!(
                from = %f.from,
                to = %f.to,
                failovers = self.servers.view().failovers,
                error = %f.cause,
                "web server failed; failing over to the next one"
            );
        }
    }

    /// Runs `attempt` against the current web server; on a failure that moves to another
    /// server, runs it once more there if `retry` allows.
    async fn call<T, F, Fut>(&self, retry: Retry, mut attempt: F) -> Result<T, UpstreamError>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<T, UpstreamError>>,
    {
        let (index, base) = self.servers.current();
        let first = attempt(base).await;
        let Err(e) = &first else { return first };
        let again = match retry {
            Retry::Never => false,
            Retry::IfUnsent => e.never_sent(),
            Retry::Always => true,
        };
        if !self.failed(index, e) || !again {
            return first;
        }
        let (index, base) = self.servers.current();
        let second = attempt(base).await;
        if let Err(e) = &second {
            self.failed(index, e);
        }
        second
    }

    async fn send(
        &self,
        what: &'static str,
        url: &str,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, UpstreamError> {
        // The request's own timeout if it set one (the heartbeat's is shorter), else the
        // client's.
        let mut req = rb.build().map_err(UpstreamError::transport(what, url))?;
        req.timeout_mut().get_or_insert(self.timeouts.request);
        let resp = self
            .http
            .execute(req)
            .await
            .map_err(UpstreamError::transport(what, url))?;
        let status = resp.status();
        if status.is_success() || status == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(resp);
        }
        let body = read_body(resp, MAX_ERROR_BODY, what, url)
            .await
            .unwrap_or_default();
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => (e.code, e.error),
            Err(_) => (
                "?".to_owned(),
                String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            ),
        };
        Err(UpstreamError::Status {
            what,
            url: url.to_owned(),
            status: status.as_u16(),
            code,
            message,
        })
    }

    async fn post_json<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        retry: Retry,
        what: &'static str,
        path: &str,
        body: &Req,
    ) -> Result<Resp, UpstreamError> {
        self.call(retry, |base| async move {
            let url = format!("{base}{LOOKUP_PREFIX}{path}");
            let resp = self
                .send(what, &url, self.http.post(&url).json(body))
                .await?;
            read_json(resp, what, &url).await
        })
        .await
    }

    /// `GET /healthz`: checks that the web server answers; returns the HTTP version the
    /// (kept) connection speaks.
    pub async fn ping(&self) -> Result<reqwest::Version, UpstreamError> {
        self.ping_within(self.timeouts.request).await
    }

    /// [`WebServerClient::ping`] with its own timeout: a web server that does not answer
    /// within it is failed over like one that refuses the connection.
    pub async fn ping_within(&self, timeout: Duration) -> Result<reqwest::Version, UpstreamError> {
        self.call(Retry::Never, |base| async move {
            let url = format!("{base}/healthz");
            let what = "checking the web server at";
            let resp = self
                .send(what, &url, self.http.get(&url).timeout(timeout))
                .await?;
            Ok(resp.version())
        })
        .await
    }

    /// The heartbeat's ask: [`ping_within`](Self::ping_within) `timeout`. A current server
    /// that answers it cannot reach its database is left for the first other server of the
    /// list (in order) whose `/healthz` answers 200 within `timeout`, if any: when the
    /// database is down for all of them, the lookup stays where it is.
    pub async fn heartbeat(&self, timeout: Duration) -> Result<reqwest::Version, UpstreamError> {
        let (index, _) = self.servers.current();
        let asked = self.ping_within(timeout).await;
        if let Err(e) = &asked
            && e.store_unavailable()
        {
            for (other, base) in self.servers.others(index) {
                if self.ready(&base, timeout).await {
                    self.fail_over_to(index, other, &chain(e));
                    break;
                }
            }
        }
        asked
    }

    /// Whether the web server at `base` answers `GET /healthz` with a success within
    /// `timeout`.
    async fn ready(&self, base: &str, timeout: Duration) -> bool {
        let url = format!("{base}/healthz");
        // The request's timeout covers connecting, TLS and the response head.
        let asked = self.http.get(&url).timeout(timeout).send().await;
        asked.is_ok_and(|r| r.status().is_success())
    }

    /// Leases up to `max` queued jobs for nodes of `groups` (all if empty). Sent to a second
    /// server only if it never reached the first: a lease whose response was lost leased
    /// jobs all the same, which only `held` brings back.
    pub async fn lease(
        &self,
        max: u32,
        groups: &[String],
        lease_secs: u32,
    ) -> Result<LeaseResponse, UpstreamError> {
        let req = LeaseRequest {
            max,
            groups: groups.to_vec(),
            lease_secs,
        };
        self.post_json(Retry::IfUnsent, "leasing jobs from", "/lease", &req)
            .await
    }

    /// The jobs the web server says this lookup holds, with an id above `after` (at most
    /// `max`), their leases extended by `lease_secs`.
    pub async fn held(
        &self,
        after: Option<i64>,
        max: u32,
        lease_secs: u32,
    ) -> Result<LeaseResponse, UpstreamError> {
        let req = HeldRequest {
            after,
            max,
            lease_secs,
        };
        self.post_json(Retry::Always, "reading the jobs held at", "/held", &req)
            .await
    }

    pub async fn renew(&self, ids: &[i64], secs: u32) -> Result<RenewResponse, UpstreamError> {
        let req = RenewRequest {
            job_ids: ids.to_vec(),
            lease_secs: secs,
        };
        self.post_json(Retry::Always, "renewing leases at", "/renew", &req)
            .await
    }

    pub async fn release(&self, ids: &[i64]) -> Result<ReleaseResponse, UpstreamError> {
        self.release_waiting(ids, Vec::new()).await
    }

    /// Gives leases back, saying why some of them could not run here (for their authors).
    pub async fn release_waiting(
        &self,
        ids: &[i64],
        waiting: Vec<Waiting>,
    ) -> Result<ReleaseResponse, UpstreamError> {
        let req = ReleaseRequest {
            job_ids: ids.to_vec(),
            waiting,
        };
        self.post_json(Retry::IfUnsent, "releasing leases at", "/release", &req)
            .await
    }

    /// Tells the web server why held jobs are parked (for their authors).
    pub async fn waiting(&self, jobs: Vec<Waiting>) -> Result<WaitingResponse, UpstreamError> {
        self.post_json(
            Retry::Always,
            "telling why jobs wait to",
            "/waiting",
            &WaitingRequest { jobs },
        )
        .await
    }

    pub async fn fail(&self, job_id: i64, reason: &str) -> Result<FailureResponse, UpstreamError> {
        let req = FailureRequest {
            reason: reason.to_owned(),
        };
        self.post_json(
            Retry::IfUnsent,
            "reporting a failure to",
            &format!("/jobs/{job_id}/failure"),
            &req,
        )
        .await
    }

    /// Uploads an answer; `201 stored` and `200 duplicate` are both success. Not sent again
    /// here: the answer relay retries (sending it twice is safe).
    pub async fn post_answer(
        &self,
        job_id: i64,
        outcome: &str,
        node: &str,
        bytes: Vec<u8>,
    ) -> Result<AnswerAck, UpstreamError> {
        let what = "uploading an answer to";
        let (index, base) = self.servers.current();
        let url = format!("{base}{LOOKUP_PREFIX}/jobs/{job_id}/answer");
        let rb = self
            .http
            .put(&url)
            .header(H_OUTCOME, outcome)
            .header(H_NODE, node)
            .header(reqwest::header::CONTENT_TYPE, "application/zip")
            .body(bytes);
        let result = async {
            let resp = self.send(what, &url, rb).await?;
            let status = resp.status();
            let body: AnswerResponse = read_json(resp, what, &url).await?;
            Ok(match (status.as_u16(), body.status.as_str()) {
                (201, _) | (_, "stored") => AnswerAck::Stored,
                _ => AnswerAck::Duplicate,
            })
        }
        .await;
        if let Err(e) = &result {
            self.failed(index, e);
        }
        result
    }

    /// `POST /lookup/v1/answers`: uploads several answers in one request, recorded by the
    /// web server in one transaction. Returns each job's acknowledgement in request order;
    /// `None` for a job the web server does not know or that another lookup server holds or
    /// held last (refused for good). Not sent again here: the answer relay retries (a batch
    /// sent twice stores nothing twice).
    pub async fn post_answers(
        &self,
        answers: &[(i64, &str, &str, &[u8])],
    ) -> Result<Vec<(i64, Option<AnswerAck>)>, UpstreamError> {
        let what = "uploading answers to";
        let (index, base) = self.servers.current();
        let url = format!("{base}{LOOKUP_PREFIX}/answers");
        let mut body = Vec::with_capacity(answers.iter().map(|a| a.3.len() + 128).sum());
        for (job_id, outcome, node, bytes) in answers {
            let header = rjs_wire::api::AnswerBatchHeader {
                job_id: *job_id,
                outcome: (*outcome).to_owned(),
                node: (*node).to_owned(),
                size: bytes.len() as u64,
            };
            rjs_wire::api::encode_answer_record(&mut body, &header, bytes).map_err(|source| {
                UpstreamError::Encode {
                    job_id: *job_id,
                    source,
                }
            })?;
        }
        let rb = self
            .http
            .post(&url)
            .header(
                reqwest::header::CONTENT_TYPE,
                rjs_wire::api::ANSWERS_CONTENT_TYPE,
            )
            .body(body);
        let result = async {
            let resp = self.send(what, &url, rb).await?;
            read_json::<rjs_wire::api::AnswerBatchResponse>(resp, what, &url).await
        }
        .await;
        let r = match result {
            Ok(r) => r,
            Err(e) => {
                self.failed(index, &e);
                return Err(e);
            }
        };
        use rjs_wire::api::AnswerBatchStatus as S;
        Ok(r.results
            .into_iter()
            .map(|x| {
                let ack = match x.status {
                    S::Stored => Some(AnswerAck::Stored),
                    S::Duplicate => Some(AnswerAck::Duplicate),
                    S::NotFound | S::NotLeased => None,
                };
                (x.job_id, ack)
            })
            .collect())
    }

    /// Path a bundle has (or will have) in the cache.
    pub fn cache_path(&self, bundle_id: &str) -> PathBuf {
        self.cache_dir.join(bundle_id)
    }

    /// The bundle `bundle_id`, from the cache if the web server says it is current (304), else
    /// downloaded, its SHA-256 checked, and stored atomically in the cache.
    pub async fn fetch_bundle(&self, bundle_id: &str) -> Result<CachedBundle, UpstreamError> {
        if !valid_id(bundle_id) {
            return Err(UpstreamError::BadBundleId(bundle_id.to_owned()));
        }
        let what = "fetching a bundle from";
        let path = self.cache_path(bundle_id);
        let cached = {
            let p = path.clone();
            let id = bundle_id.to_owned();
            tokio::task::spawn_blocking(move || match std::fs::read(&p) {
                Ok(b) if hex(&Sha256::digest(&b)) == id => true,
                Ok(_) => {
                    let _ = std::fs::remove_file(&p);
                    false
                }
                Err(_) => false,
            })
            .await
            .unwrap_or(false)
        };
        let (url, bytes) = self
            .call(Retry::Always, |base| async move {
                let url = format!("{base}{LOOKUP_PREFIX}/bundles/{bundle_id}");
                let mut rb = self.http.get(&url);
                if cached {
                    rb = rb.header(reqwest::header::IF_NONE_MATCH, format!("\"{bundle_id}\""));
                }
                let resp = self.send(what, &url, rb).await?;
                if resp.status() == reqwest::StatusCode::NOT_MODIFIED && cached {
                    return Ok((url, None));
                }
                let limit = rjs_signer::VerifyLimits::default().max_bundle_bytes;
                let bytes = read_body(resp, limit, what, &url).await?;
                Ok((url, Some(bytes)))
            })
            .await?;
        let Some(bytes) = bytes else {
            return Ok(CachedBundle {
                path,
                from_cache: true,
            });
        };
        let got = hex(&Sha256::digest(&bytes));
        if got != bundle_id {
            return Err(UpstreamError::Digest {
                url,
                expected: bundle_id.to_owned(),
                got,
            });
        }
        let p = path.clone();
        tokio::task::spawn_blocking(move || rjs_signer::fsutil::write_atomic(&p, &bytes, 0o600))
            .await
            .expect("cache write task")
            .map_err(UpstreamError::Cache)?;
        Ok(CachedBundle {
            path,
            from_cache: false,
        })
    }

    /// Opens the `jobs` event stream of the current web server once and forwards its events
    /// to `tx` until it ends or fails. Returns Ok when the stream ended cleanly, or when `tx`
    /// was closed.
    pub async fn stream_events_once(
        &self,
        tx: &mpsc::Sender<JobsEvent>,
    ) -> Result<(), UpstreamError> {
        let (index, base) = self.servers.current();
        let result = self.stream_events_from(&base, tx).await;
        if let Err(e) = &result {
            self.failed(index, e);
        }
        result
    }

    async fn stream_events_from(
        &self,
        base: &str,
        tx: &mpsc::Sender<JobsEvent>,
    ) -> Result<(), UpstreamError> {
        let what = "reading the job events from";
        let url = format!("{base}{LOOKUP_PREFIX}/events");
        // No total timeout (the stream stays open): the response's head must come within the
        // request timeout, and silence after it is detected below.
        let sent = self
            .http
            .get(&url)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send();
        let mut resp = match tokio::time::timeout(self.timeouts.request, sent).await {
            Ok(r) => r.map_err(UpstreamError::transport(what, &url))?,
            Err(_) => {
                return Err(UpstreamError::NoResponse {
                    what,
                    url,
                    after: self.timeouts.request,
                });
            }
        };
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            return Err(UpstreamError::Status {
                what,
                url,
                status,
                code: "?".into(),
                message: "event stream refused".into(),
            });
        }
        let mut parser = SseParser::default();
        loop {
            let chunk = match tokio::time::timeout(self.timeouts.events_idle, resp.chunk()).await {
                Err(_) => return Ok(()), // silent too long: reconnect
                Ok(Ok(Some(c))) => c,
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(source)) => {
                    return Err(UpstreamError::Transport { what, url, source });
                }
            };
            let events = parser.push(&chunk);
            if parser.overflowed() {
                return Err(UpstreamError::TooLarge {
                    what,
                    url,
                    limit: MAX_SSE_EVENT as u64,
                });
            }
            for (event, data) in events {
                if event != "jobs" {
                    continue;
                }
                match serde_json::from_str::<JobsEvent>(&data) {
                    Ok(ev) => {
                        if tx.send(ev).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, data, "bad jobs event"),
                }
            }
        }
    }

    /// The `jobs` events, forever: a background task reconnects with jittered, capped
    /// exponential backoff (reset after a stream that delivered), and at once to the new
    /// current web server when another failure failed over (its own failures wait for the
    /// backoff, so a list of dead servers is not dialled in a loop). Drop the receiver (or
    /// abort the returned handle) to stop it.
    pub fn events(&self) -> (mpsc::Receiver<JobsEvent>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(16);
        let me = self.clone();
        let mut moved = self.servers.subscribe();
        let task = tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
            while !tx.is_closed() {
                let started = std::time::Instant::now();
                moved.borrow_and_update();
                let outcome = tokio::select! {
                    biased;
                    r = me.stream_events_once(&tx) => Some(r),
                    _ = moved.changed() => None,
                };
                match outcome {
                    // Another request failed over while the stream ran: follow it now.
                    None => {
                        backoff.reset();
                        continue;
                    }
                    Some(Ok(())) => {}
                    Some(Err(e)) => tracing::debug!(error = %chain(&e), "event stream"),
                }
                if started.elapsed() > Duration::from_secs(10) {
                    backoff.reset();
                }
                if tx.is_closed() {
                    break;
                }
                // Its own failover (if any) is seen; a later one cuts the wait short.
                moved.borrow_and_update();
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = moved.changed() => {}
                }
            }
        });
        (rx, task)
    }
}

/// Incremental Server-Sent Events parser: bytes in, complete `(event, data)` pairs out.
/// Comment lines (`:`) are ignored; `data` lines are joined with `\n`; the event type
/// defaults to `message`. A line or an event over [`MAX_SSE_EVENT`] bytes is dropped and
/// [`SseParser::overflowed`] becomes true (the stream should then be abandoned).
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: String,
    data: Option<String>,
    overflowed: bool,
}

/// Largest line, and largest event data, the [`SseParser`] keeps.
pub const MAX_SSE_EVENT: usize = 64 * 1024;

impl SseParser {
    /// True once a line or an event went over [`MAX_SSE_EVENT`] bytes.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    pub fn push(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        if self.overflowed {
            return Vec::new();
        }
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line);
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    let ev = std::mem::take(&mut self.event);
                    out.push((if ev.is_empty() { "message".into() } else { ev }, data));
                } else {
                    self.event.clear();
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (&*line, ""),
            };
            match field {
                "event" => self.event = value.to_owned(),
                "data" => match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => self.data = Some(value.to_owned()),
                },
                _ => {}
            }
            if self.data.as_ref().is_some_and(|d| d.len() > MAX_SSE_EVENT) {
                self.overflow();
                return out;
            }
        }
        if self.buf.len() > MAX_SSE_EVENT {
            self.overflow();
        }
        out
    }

    fn overflow(&mut self) {
        self.overflowed = true;
        self.buf = Vec::new();
        self.data = None;
        self.event.clear();
    }
}

/// `d` scaled by a random factor in `[1 - frac, 1 + frac)`.
pub fn jitter(d: Duration, frac: f64) -> Duration {
    let r: f64 = rand::random::<f64>();
    d.mul_f64((1.0 - frac + 2.0 * frac * r).max(0.0))
}

/// Capped exponential backoff with ±50% jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }
    /// The next delay (and one more step up).
    pub fn next_delay(&mut self) -> Duration {
        let d = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        jitter(d, 0.5)
    }
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// Why the [`Poller`] woke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// A `jobs` event arrived.
    Event(JobsEvent),
    /// The polling (or backoff) timer fired.
    Timer,
}

/// Wakes the dispatcher when a `jobs` event arrives or a jittered timer fires (alerts can be
/// lost; polling cannot). While the web server is down ([`Poller::report_down`]), the timer
/// follows a capped exponential backoff instead; [`Poller::report_ok`] returns to the interval.
pub struct Poller {
    events: Option<mpsc::Receiver<JobsEvent>>,
    interval: Duration,
    backoff: Backoff,
    down: bool,
}

impl Poller {
    /// `events`: e.g. from [`WebServerClient::events`] (None: timer only). `interval`: the
    /// polling interval, jittered ±50% (e.g. 2 s).
    pub fn new(events: Option<mpsc::Receiver<JobsEvent>>, interval: Duration) -> Self {
        Poller {
            events,
            interval,
            backoff: Backoff::new(interval, Duration::from_secs(60)),
            down: false,
        }
    }

    /// Sets the backoff bounds used while the web server is down.
    pub fn with_backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.backoff = Backoff::new(base, cap);
        self
    }

    pub fn report_ok(&mut self) {
        self.down = false;
        self.backoff.reset();
    }

    pub fn report_down(&mut self) {
        self.down = true;
    }

    pub fn is_down(&self) -> bool {
        self.down
    }

    /// Waits for the next reason to lease.
    pub async fn next_wake(&mut self) -> Wake {
        let delay = if self.down {
            self.backoff.next_delay()
        } else {
            jitter(self.interval, 0.5)
        };
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        match &mut self.events {
            Some(rx) => {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Some(ev) => Wake::Event(ev),
                        None => {
                            self.events = None;
                            (&mut sleep).await;
                            Wake::Timer
                        }
                    },
                    _ = &mut sleep => Wake::Timer,
                }
            }
            None => {
                sleep.await;
                Wake::Timer
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parses_split_chunks_and_comments() {
        let mut p = SseParser::default();
        assert!(p.push(b": keepalive\n\nevent: jo").is_empty());
        assert!(p.push(b"bs\r\ndata: {\"queued\": 3}\r\n").is_empty());
        let out = p.push(b"\r\nevent: jobs\ndata: a\ndata: b\n\n");
        assert_eq!(
            out,
            vec![
                ("jobs".to_owned(), "{\"queued\": 3}".to_owned()),
                ("jobs".to_owned(), "a\nb".to_owned())
            ]
        );
    }

    #[test]
    fn sse_overflow_is_reported() {
        let mut p = SseParser::default();
        assert!(p.push(&vec![b'x'; MAX_SSE_EVENT + 1]).is_empty());
        assert!(p.overflowed());
        assert!(p.push(b"event: jobs\ndata: 1\n\n").is_empty());
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..30 {
            let d = b.next_delay();
            assert!(d <= Duration::from_millis(1500), "{d:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(150));
    }

    #[test]
    fn only_a_gone_or_unwell_server_is_failed_over() {
        let status = |status| UpstreamError::Status {
            what: "leasing jobs from",
            url: "https://a:1/lookup/v1/lease".into(),
            status,
            code: "?".into(),
            message: String::new(),
        };
        for s in [502, 503, 504] {
            assert!(status(s).warrants_failover(), "{s}");
            assert!(!status(s).never_sent(), "{s}");
        }
        // A 500 is about the request; 4xx are this lookup's; 429/408 ask to slow down.
        for s in [500, 400, 401, 403, 404, 408, 409, 429] {
            assert!(!status(s).warrants_failover(), "{s}");
        }
        let e = UpstreamError::BadBundleId("x".into());
        assert!(!e.warrants_failover() && !e.never_sent());
        // A web server's own word that its database is out of reach: the heartbeat's to
        // weigh (another server may be no better), not a request's.
        let store = UpstreamError::Status {
            what: "leasing jobs from",
            url: "https://a:1/lookup/v1/lease".into(),
            status: 503,
            code: "store-unavailable".into(),
            message: String::new(),
        };
        assert!(store.store_unavailable() && !store.warrants_failover());
        assert!(!status(503).store_unavailable());
    }

    #[tokio::test]
    async fn poller_wakes_on_event_or_timer() {
        let (tx, rx) = mpsc::channel(4);
        let mut p = Poller::new(Some(rx), Duration::from_millis(50));
        tx.send(JobsEvent { queued: 2 }).await.unwrap();
        assert_eq!(p.next_wake().await, Wake::Event(JobsEvent { queued: 2 }));
        assert_eq!(p.next_wake().await, Wake::Timer);
        drop(tx);
        assert_eq!(p.next_wake().await, Wake::Timer);
        p.report_down();
        assert!(p.is_down());
        assert_eq!(p.next_wake().await, Wake::Timer);
        p.report_ok();
        assert!(!p.is_down());
    }
}
