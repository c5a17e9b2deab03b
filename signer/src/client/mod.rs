//! The author API client: the one way any program speaks to a web server as an author — the
//! `rjs-sign` CLI, `rjs demo`, the grid harness and the tests (feature `client`).
//!
//! Blocking HTTPS ([`reqwest::blocking`]) to one web server whose CA is pinned (no other root
//! is trusted, plain `http://` is refused), every request signed with the author's key
//! ([`crate::request::RequestAuth`], `docs/webserver-api.md`, "Author authentication").
//! Every request has a connect timeout and a total timeout that grows with the bytes moved.
//! Errors are typed ([`ClientError`]) and carry their causes as sources: render them with
//! `rjs_cmd::chain` (`GET https://ws:8443/api/v1/jobs: server refused: … (unknown-author)`).
//!
//! * [`ServerUrl`]: a web server's origin, `https://host[:port]`, checked.
//! * [`AuthorClient`]: `whoami`, `upload`, `jobs`, `answer`, and the signed request they are
//!   all built on ([`AuthorClient::signed`]), which tests also use to craft requests by hand.

mod error;
mod url;

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use reqwest::blocking::{Body, Client, RequestBuilder, Response};
use rjs_wire::api::{self, JobList, UploadResponse, WhoAmI};
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

pub use error::{ClientError, ServerRefused, clean};
pub use url::{ServerUrl, ServerUrlError};

use crate::KeyPair;
use crate::bundle::hex;
use crate::request::RequestAuth;

/// Connecting (TCP + TLS) may take this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A small request (job list, whoami) may take this long in all.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Transfers get [`REQUEST_TIMEOUT`] plus one second per this many bytes (a slow 64 KiB/s
/// link: 64 MiB in about 17 minutes): generous, but finite.
const SLOW_BYTES_PER_SEC: u64 = 64 * 1024;
/// Longest error body read from the server.
const MAX_ERROR_BODY: u64 = 64 * 1024;
/// Largest JSON answer read from the server (a job list of many thousand jobs).
pub const MAX_JSON_BODY: u64 = 64 * 1024 * 1024;
/// Largest answer archive read whole into memory by [`AuthorClient::answer_bytes`].
pub const MAX_ANSWER_BODY: u64 = 256 * 1024 * 1024;

/// Timeout for a transfer of `bytes`.
pub fn transfer_timeout(bytes: u64) -> Duration {
    REQUEST_TIMEOUT + Duration::from_secs(bytes / SLOW_BYTES_PER_SEC)
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Whether `s` is a full bundle id: 64 lowercase hex digits.
pub fn is_bundle_id(s: &str) -> bool {
    crate::bundle::is_sha256_hex(s)
}

/// The signed author API of one web server.
pub struct AuthorClient {
    server: ServerUrl,
    http: Client,
    tls: rustls::ClientConfig,
    key: KeyPair,
    /// The server every request is signed for: [`crate::request::audience`] of the CA.
    audience: String,
}

impl AuthorClient {
    /// A client of `server` that trusts only `ca` (exactly one certificate: the web server's
    /// CA) and signs with `key` requests meant only for the server that CA names.
    pub fn new(
        server: ServerUrl,
        ca: &[CertificateDer<'static>],
        key: KeyPair,
    ) -> Result<AuthorClient, ClientError> {
        let [ca_cert] = ca else {
            return Err(ClientError::CaCount { count: ca.len() });
        };
        let audience = crate::request::audience(ca_cert);
        let mut tls = rjs_wire::tls::client_config(ca, None).map_err(ClientError::Tls)?;
        // A preconfigured rustls config is used as is: offer HTTP/2 and HTTP/1.1 ourselves.
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(AuthorClient {
            server,
            http: http_client(tls.clone())?,
            tls,
            key,
            audience,
        })
    }

    /// The audience every request is signed for (the SHA-256 of the pinned CA certificate).
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// [`AuthorClient::new`] with the CA read from a PEM file.
    pub fn with_ca_file(
        server: ServerUrl,
        ca_pem: &Path,
        key: KeyPair,
    ) -> Result<AuthorClient, ClientError> {
        let ca = rjs_wire::tls::load_certs(ca_pem).map_err(|source| ClientError::LoadCa {
            path: ca_pem.to_path_buf(),
            source,
        })?;
        Self::new(server, &ca, key)
    }

    /// Closes the kept-alive connections (a web server stopping waits for open connections
    /// before it exits); the next request connects again.
    pub fn disconnect(&mut self) -> Result<(), ClientError> {
        self.http = http_client(self.tls.clone())?;
        Ok(())
    }

    /// The web server.
    pub fn server(&self) -> &ServerUrl {
        &self.server
    }

    /// The author key every request is signed with.
    pub fn key(&self) -> &KeyPair {
        &self.key
    }

    pub fn public_key(&self) -> crate::PublicKey {
        self.key.public()
    }

    /// A request to `path_and_query` signed at `timestamp` over a body whose SHA-256 is
    /// `content_sha256`, ready to send (the body still to be attached), and its
    /// authentication fields. The building block of every call. The path is checked to be
    /// sent exactly as signed.
    pub fn signed(
        &self,
        method: Method,
        path_and_query: &str,
        content_sha256: &str,
        timestamp: u64,
    ) -> Result<(RequestBuilder, RequestAuth), ClientError> {
        let url = self.server.join(path_and_query);
        let parsed = reqwest::Url::parse(&url).map_err(|source| ClientError::BadUrl {
            url: url.clone(),
            source,
        })?;
        // Sign exactly what goes on the wire.
        let sent = match parsed.query() {
            Some(q) => format!("{}?{q}", parsed.path()),
            None => parsed.path().to_owned(),
        };
        if sent != path_and_query {
            return Err(ClientError::PathNotCanonical {
                path: path_and_query.to_owned(),
                sent,
            });
        }
        Ok(self.sign(method, path_and_query, content_sha256, timestamp))
    }

    /// A request carrying `body`, signed at `timestamp` over `path_and_query` as given (no
    /// check that it is sent so: a malformed path fails when sent). For crafting requests by
    /// hand — a stale timestamp, a replayed nonce, a tampered body — as the web server's
    /// tests do; programs use the calls below.
    pub fn signed_request(
        &self,
        method: Method,
        path_and_query: &str,
        body: Vec<u8>,
        timestamp: u64,
    ) -> (RequestBuilder, RequestAuth) {
        let (req, auth) = self.sign(method, path_and_query, &sha256_hex(&body), timestamp);
        let req = req
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        (req, auth)
    }

    fn sign(
        &self,
        method: Method,
        path_and_query: &str,
        content_sha256: &str,
        timestamp: u64,
    ) -> (RequestBuilder, RequestAuth) {
        let auth = RequestAuth::sign(
            &self.key,
            &self.audience,
            method.as_str(),
            path_and_query,
            content_sha256,
            timestamp,
        );
        let mut req = self
            .http
            .request(method, self.server.join(path_and_query))
            .header(reqwest::header::ACCEPT, "application/json, */*");
        for (name, value) in auth.headers() {
            req = req.header(name, value);
        }
        (req, auth)
    }

    /// Sends one signed request (signed now) and returns the response if its status is a
    /// success; a refusal becomes [`ClientError::Refused`] with the server's reason.
    pub fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(Body, String)>,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let url = self.server.join(path_and_query);
        let (body, sha) = match body {
            Some((b, sha)) => (Some(b), sha),
            None => (None, sha256_hex(b"")),
        };
        let (mut req, _) = self.signed(method.clone(), path_and_query, &sha, crate::unix_now())?;
        req = req.timeout(timeout);
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(b);
        }
        let resp = req
            .send()
            .map_err(|e| ClientError::transport(e, &method, &url))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let mut buf = Vec::new();
        // Best effort: the status alone is reported if the body cannot be read.
        let _ = resp.take(MAX_ERROR_BODY).read_to_end(&mut buf);
        Err(ClientError::Refused {
            method: method.to_string(),
            url,
            source: ServerRefused::from_body(status.as_u16(), &buf),
        })
    }

    /// `GET /api/v1/whoami`.
    pub fn whoami(&self) -> Result<WhoAmI, ClientError> {
        let path = format!("{}/whoami", api::AUTHOR_PREFIX);
        let resp = self.send(Method::GET, &path, None, REQUEST_TIMEOUT)?;
        json(resp, "whoami answer")
    }

    /// `POST /api/v1/bundles[?resubmit=true]` of a bundle held in memory.
    pub fn upload(&self, bundle: Vec<u8>, resubmit: bool) -> Result<UploadResponse, ClientError> {
        let len = bundle.len() as u64;
        let sha = sha256_hex(&bundle);
        self.upload_from(std::io::Cursor::new(bundle), len, sha, resubmit)
    }

    /// `POST /api/v1/bundles[?resubmit=true]` of `len` bytes read from `body` (whose SHA-256
    /// is `sha256`): a caller can wrap the reader to show progress.
    pub fn upload_from(
        &self,
        body: impl Read + Send + 'static,
        len: u64,
        sha256: String,
        resubmit: bool,
    ) -> Result<UploadResponse, ClientError> {
        let mut path = format!("{}/bundles", api::AUTHOR_PREFIX);
        if resubmit {
            path.push_str("?resubmit=true");
        }
        let body = Body::sized(body, len);
        let resp = self.send(
            Method::POST,
            &path,
            Some((body, sha256)),
            transfer_timeout(len),
        )?;
        json(resp, "upload answer")
    }

    /// `GET /api/v1/jobs[?bundle=ID]`: the author's jobs, newest submission first, every page
    /// of them (each request reads one page: [`jobs_page`](Self::jobs_page)).
    pub fn jobs(&self, bundle: Option<&str>) -> Result<JobList, ClientError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.jobs_page(bundle, after.as_deref())?;
            all.extend(page.jobs);
            match page.next {
                // A server that repeats a cursor would loop forever: stop instead.
                Some(n) if after.as_deref() != Some(n.as_str()) => after = Some(n),
                _ => break,
            }
        }
        Ok(JobList {
            jobs: all,
            next: None,
        })
    }

    /// One page of `GET /api/v1/jobs[?bundle=ID][&after=CURSOR]`.
    pub fn jobs_page(
        &self,
        bundle: Option<&str>,
        after: Option<&str>,
    ) -> Result<JobList, ClientError> {
        let mut query = Vec::new();
        if let Some(id) = bundle {
            if !is_bundle_id(id) {
                return Err(ClientError::NotABundleId(id.into()));
            }
            query.push(format!("bundle={id}"));
        }
        if let Some(c) = after {
            // Cursors are `[0-9.]`, but a server's are not trusted.
            query.push(format!("after={}", api::query_value(c)));
        }
        let path = if query.is_empty() {
            format!("{}/jobs", api::AUTHOR_PREFIX)
        } else {
            format!("{}/jobs?{}", api::AUTHOR_PREFIX, query.join("&"))
        };
        let resp = self.send(Method::GET, &path, None, REQUEST_TIMEOUT)?;
        json(resp, "job list")
    }

    /// `GET /api/v1/submissions[?bundle=ID]`: the author's submissions summed up, newest
    /// first (one page: the newest [`api::MAX_SUBMISSIONS_PAGE`]).
    pub fn submissions(&self, bundle: Option<&str>) -> Result<api::SubmissionList, ClientError> {
        let path = match bundle {
            Some(id) if !is_bundle_id(id) => return Err(ClientError::NotABundleId(id.into())),
            Some(id) => format!("{}/submissions?bundle={id}", api::AUTHOR_PREFIX),
            None => format!("{}/submissions", api::AUTHOR_PREFIX),
        };
        let resp = self.send(Method::GET, &path, None, REQUEST_TIMEOUT)?;
        json(resp, "submission list")
    }

    /// `GET /api/v1/submissions/{id}`: one submission summed up.
    pub fn submission(&self, id: i64) -> Result<api::SubmissionSummary, ClientError> {
        let path = format!("{}/submissions/{id}", api::AUTHOR_PREFIX);
        let resp = self.send(Method::GET, &path, None, REQUEST_TIMEOUT)?;
        json(resp, "submission")
    }

    /// `GET /api/v1/changes[?since=SEQ]`: the author's jobs that changed after `since` (each
    /// once, at its newest change; one page), or without `since` the number to start from.
    pub fn changes(&self, since: Option<u64>) -> Result<api::ChangeList, ClientError> {
        let path = match since {
            Some(s) => format!("{}/changes?since={s}", api::AUTHOR_PREFIX),
            None => format!("{}/changes", api::AUTHOR_PREFIX),
        };
        let resp = self.send(Method::GET, &path, None, REQUEST_TIMEOUT)?;
        json(resp, "change list")
    }

    /// `POST /api/v1/dashboard/login`: a one-time dashboard login link for this author.
    pub fn dashboard_login(&self) -> Result<api::DashboardLogin, ClientError> {
        let path = format!("{}/dashboard/login", api::AUTHOR_PREFIX);
        let resp = self.send(Method::POST, &path, None, REQUEST_TIMEOUT)?;
        json(resp, "dashboard login")
    }

    /// The full URL of a path on this server.
    pub fn url_of(&self, path: &str) -> String {
        self.server.join(path)
    }

    /// `GET /api/v1/jobs/<id>/answer`: the response, to stream from. `expected` is the
    /// answer's size if known (for the timeout).
    pub fn answer(&self, job_id: i64, expected: Option<u64>) -> Result<Response, ClientError> {
        let path = format!("{}/jobs/{job_id}/answer", api::AUTHOR_PREFIX);
        let size = expected.unwrap_or(crate::VerifyLimits::default().max_bundle_bytes);
        self.send(Method::GET, &path, None, transfer_timeout(size))
    }

    /// [`AuthorClient::answer`] read whole (at most [`MAX_ANSWER_BODY`] bytes).
    pub fn answer_bytes(&self, job_id: i64) -> Result<Vec<u8>, ClientError> {
        read_bounded(self.answer(job_id, None)?, MAX_ANSWER_BODY)
    }
}

fn http_client(tls: rustls::ClientConfig) -> Result<Client, ClientError> {
    Client::builder()
        .tls_backend_preconfigured(tls)
        .https_only(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        // A redirect would change the signed path; nothing of ours redirects.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("rjs-client/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(ClientError::Build)
}

/// Reads a response's body, refusing more than `limit` bytes.
fn read_bounded(resp: Response, limit: u64) -> Result<Vec<u8>, ClientError> {
    let url = resp.url().to_string();
    let mut buf = Vec::new();
    resp.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|source| ClientError::ReadBody {
            url: url.clone(),
            source,
        })?;
    if buf.len() as u64 > limit {
        return Err(ClientError::TooLarge { url, limit });
    }
    Ok(buf)
}

fn json<T: serde::de::DeserializeOwned>(
    resp: Response,
    what: &'static str,
) -> Result<T, ClientError> {
    let url = resp.url().to_string();
    let buf = read_bounded(resp, MAX_JSON_BODY)?;
    serde_json::from_slice(&buf).map_err(|source| ClientError::Decode { what, url, source })
}

#[cfg(test)]
mod tests;
