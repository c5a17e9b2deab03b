//! The author API client: HTTPS to one web server whose CA is pinned, every request signed
//! with the author's key (`docs/webserver-api.md`, "Author authentication").

use std::fmt;
use std::io::Read;
use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::Method;
use reqwest::blocking::{Body, Client, Response};
use rjs_wire::api::{self, ErrorBody, JobList, JobView, UploadResponse, WhoAmI};
use sha2::{Digest, Sha256};

use super::config::{ServerUrl, Settings};
use rjs_signer::KeyPair;
use rjs_signer::bundle::hex;
use rjs_signer::request::RequestAuth;

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
const MAX_JSON_BODY: u64 = 64 * 1024 * 1024;

/// Timeout for a transfer of `bytes`.
pub fn transfer_timeout(bytes: u64) -> Duration {
    REQUEST_TIMEOUT + Duration::from_secs(bytes / SLOW_BYTES_PER_SEC)
}

/// A request the server answered with an error (`{"error", "code"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRefused {
    pub status: u16,
    pub error: String,
    pub code: String,
}

impl fmt::Display for ServerRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "server refused: {} ({})",
            super::output::clean(&self.error),
            super::output::clean(&self.code)
        )?;
        if let Some(hint) = hint(&self.code) {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServerRefused {}

/// What the author can do about a refusal.
fn hint(code: &str) -> Option<&'static str> {
    Some(match code {
        "stale-timestamp" => {
            "check this computer's clock (it must be within 5 minutes of the server's)"
        }
        "unknown-author" => {
            "ask the web server's administrator to enrol your public key (rjs-webserver author add)"
        }
        "signer-mismatch" => "upload bundles signed with the same key as --key / config key",
        _ => return None,
    })
}

/// Parses an error response's body into a [`ServerRefused`].
pub fn refusal(status: u16, body: &[u8]) -> ServerRefused {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => ServerRefused {
            status,
            error: b.error,
            code: b.code,
        },
        Err(_) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
            let text = text.trim();
            ServerRefused {
                status,
                error: if text.is_empty() {
                    format!("HTTP status {status}")
                } else {
                    format!("HTTP status {status}: {text}")
                },
                code: "no-error-body".to_owned(),
            }
        }
    }
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The signed author API of one web server.
pub struct Api {
    server: ServerUrl,
    http: Client,
    key: KeyPair,
}

impl Api {
    /// Loads the key and CA and builds the HTTPS client.
    pub fn connect(settings: &Settings) -> Result<Api> {
        let key = KeyPair::load(&settings.key).with_context(|| {
            format!(
                "loading your private key {} (--key / config key; from {})",
                settings.key.display(),
                settings.sources[2]
            )
        })?;
        let ca = rjs_wire::tls::load_certs(&settings.ca).with_context(|| {
            format!(
                "loading the web server's CA certificate {} (--ca / config ca; from {})",
                settings.ca.display(),
                settings.sources[1]
            )
        })?;
        Self::new(settings.server.clone(), &ca, key)
    }

    pub fn new(
        server: ServerUrl,
        ca: &[rustls::pki_types::CertificateDer<'static>],
        key: KeyPair,
    ) -> Result<Api> {
        let mut tls = rjs_wire::tls::client_config(ca, None)
            .context("building the TLS configuration from the CA certificate")?;
        // A preconfigured rustls config is used as is: offer HTTP/2 and HTTP/1.1 ourselves.
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let http = Client::builder()
            .tls_backend_preconfigured(tls)
            .https_only(true)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            // A redirect would change the signed path; nothing of ours redirects.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("rjs-sign/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTPS client")?;
        Ok(Api { server, http, key })
    }

    pub fn server(&self) -> &ServerUrl {
        &self.server
    }

    pub fn public_key(&self) -> rjs_signer::PublicKey {
        self.key.public()
    }

    /// Sends one signed request and returns the response if its status is a success.
    fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(Body, String)>,
        timeout: Duration,
    ) -> Result<Response> {
        let url = self.server.join(path_and_query);
        let parsed = reqwest::Url::parse(&url).with_context(|| format!("bad URL {url}"))?;
        // Sign exactly what goes on the wire.
        let sent = match parsed.query() {
            Some(q) => format!("{}?{q}", parsed.path()),
            None => parsed.path().to_owned(),
        };
        anyhow::ensure!(
            sent == path_and_query,
            "internal error: {path_and_query} would be sent as {sent}"
        );
        let (body, content_sha256) = match body {
            Some((b, sha)) => (Some(b), sha),
            None => (None, sha256_hex(b"")),
        };
        let auth = RequestAuth::sign(
            &self.key,
            method.as_str(),
            &sent,
            &content_sha256,
            rjs_signer::unix_now(),
        );
        let mut req = self
            .http
            .request(method.clone(), parsed)
            .timeout(timeout)
            .header(reqwest::header::ACCEPT, "application/json, */*");
        for (name, value) in auth.headers() {
            req = req.header(name, value);
        }
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(b);
        }
        let resp = req.send().map_err(|e| transport(e, &method, &url))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let mut buf = Vec::new();
        // Best effort: the status alone is reported if the body cannot be read.
        let _ = resp.take(MAX_ERROR_BODY).read_to_end(&mut buf);
        Err(anyhow::Error::new(refusal(status.as_u16(), &buf)).context(format!("{method} {url}")))
    }

    fn json<T: serde::de::DeserializeOwned>(resp: Response, what: &str) -> Result<T> {
        let url = resp.url().to_string();
        let mut buf = Vec::new();
        resp.take(MAX_JSON_BODY + 1)
            .read_to_end(&mut buf)
            .map_err(|e| anyhow::Error::new(e).context(format!("reading the answer of {url}")))?;
        anyhow::ensure!(
            buf.len() as u64 <= MAX_JSON_BODY,
            "the answer of {url} is larger than {MAX_JSON_BODY} bytes"
        );
        serde_json::from_slice(&buf).with_context(|| {
            format!("the server's {what} from {url} is not what this rjs-sign understands")
        })
    }

    /// `GET /api/v1/whoami`.
    pub fn whoami(&self) -> Result<WhoAmI> {
        let path = format!("{}/whoami", api::AUTHOR_PREFIX);
        let resp = self.send(Method::GET, &path, None, REQUEST_TIMEOUT)?;
        Self::json(resp, "whoami answer")
    }

    /// `POST /api/v1/bundles[?resubmit=true]`. `progress` is advanced as the body is read
    /// for sending.
    pub fn upload(
        &self,
        bytes: Vec<u8>,
        resubmit: bool,
        progress: &indicatif::ProgressBar,
    ) -> Result<UploadResponse> {
        let mut path = format!("{}/bundles", api::AUTHOR_PREFIX);
        if resubmit {
            path.push_str("?resubmit=true");
        }
        let len = bytes.len() as u64;
        let sha = sha256_hex(&bytes);
        let body = Body::sized(progress.wrap_read(std::io::Cursor::new(bytes)), len);
        let resp = self.send(
            Method::POST,
            &path,
            Some((body, sha)),
            transfer_timeout(len),
        )?;
        Self::json(resp, "upload answer")
    }

    /// `GET /api/v1/jobs[?bundle=ID]`: the author's jobs, newest submission first.
    pub fn jobs(&self, bundle: Option<&str>) -> Result<Vec<JobView>> {
        let path = match bundle {
            Some(id) => {
                anyhow::ensure!(is_bundle_id(id), "{id:?} is not a bundle id");
                format!("{}/jobs?bundle={id}", api::AUTHOR_PREFIX)
            }
            None => format!("{}/jobs", api::AUTHOR_PREFIX),
        };
        let resp = self.send(Method::GET, &path, None, REQUEST_TIMEOUT)?;
        Ok(Self::json::<JobList>(resp, "job list")?.jobs)
    }

    /// `GET /api/v1/jobs/<id>/answer`: the response, to stream from. `expected` is the
    /// answer's size if known (for the timeout).
    pub fn answer(&self, job_id: i64, expected: Option<u64>) -> Result<Response> {
        let path = format!("{}/jobs/{job_id}/answer", api::AUTHOR_PREFIX);
        self.send(
            Method::GET,
            &path,
            None,
            transfer_timeout(
                expected.unwrap_or(rjs_signer::VerifyLimits::default().max_bundle_bytes),
            ),
        )
    }
}

/// A transport failure, with what was being done: `connecting to URL: …` or `METHOD URL: …`.
fn transport(e: reqwest::Error, method: &Method, url: &str) -> anyhow::Error {
    let what = if e.is_connect() {
        format!("connecting to {url}")
    } else if e.is_timeout() {
        format!("{method} {url} timed out")
    } else {
        format!("{method} {url}")
    };
    // The URL is said once, in the context.
    anyhow::Error::new(e.without_url()).context(what)
}

/// Whether `s` is a full bundle id: 64 lowercase hex digits.
pub fn is_bundle_id(s: &str) -> bool {
    rjs_signer::bundle::is_sha256_hex(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_read_the_error_body_or_fall_back_to_the_status() {
        let r = refusal(
            401,
            br#"{"error":"timestamp 5 is 600 s from the server's clock","code":"stale-timestamp"}"#,
        );
        assert_eq!(r.code, "stale-timestamp");
        let s = r.to_string();
        assert!(
            s.starts_with(
                "server refused: timestamp 5 is 600 s from the server's clock (stale-timestamp)"
            ),
            "{s}"
        );
        assert!(s.contains("clock"), "{s}");
        let r = refusal(502, b"<html>Bad gateway</html>");
        assert_eq!(
            r.to_string(),
            "server refused: HTTP status 502: <html>Bad gateway</html> (no-error-body)"
        );
        assert_eq!(
            refusal(500, b"").to_string(),
            "server refused: HTTP status 500 (no-error-body)"
        );
        // Control characters from the server never reach the terminal as such.
        let r = refusal(
            400,
            b"{\"error\":\"a\\u001b[2Jb\",\"code\":\"bad-request\"}",
        );
        assert!(!r.to_string().contains('\u{1b}'), "{r}");
    }

    #[test]
    fn empty_body_hash_is_the_sha256_of_nothing() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn bundle_ids_are_64_lowercase_hex() {
        assert!(is_bundle_id(&"ab".repeat(32)));
        assert!(!is_bundle_id(&"AB".repeat(32)));
        assert!(!is_bundle_id("abc"));
        assert!(!is_bundle_id(&format!("{}&x=1", "a".repeat(60))));
    }

    #[test]
    fn transfer_timeouts_are_finite_and_grow_with_size() {
        assert_eq!(transfer_timeout(0), REQUEST_TIMEOUT);
        let t = transfer_timeout(64 * 1024 * 1024);
        assert!(
            t > Duration::from_secs(600) && t < Duration::from_secs(1800),
            "{t:?}"
        );
    }

    #[test]
    fn the_client_refuses_plain_http_even_if_asked() {
        // ServerUrl refuses http:// before any client exists; the client refuses it too.
        let ca = rjs_test_ca();
        let api = Api::new(
            ServerUrl::parse("https://127.0.0.1:9").unwrap(),
            &ca,
            KeyPair::from_secret([1; 32]),
        )
        .unwrap();
        let err = api
            .http
            .get("http://127.0.0.1:9/api/v1/whoami")
            .send()
            .unwrap_err();
        assert!(
            err.is_builder() || err.to_string().contains("URL scheme"),
            "{err}"
        );
    }

    /// A self-signed CA certificate (fixed test data) to build a client with.
    fn rjs_test_ca() -> Vec<rustls::pki_types::CertificateDer<'static>> {
        rjs_wire::tls::certs_from_pem(TEST_CA.as_bytes(), "test CA").unwrap()
    }

    const TEST_CA: &str = include_str!("testdata/ca.pem");
}
