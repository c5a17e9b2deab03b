//! A small client of the web server's author API (`docs/webserver-api.md`): HTTPS pinned to
//! the web server's CA, every request signed with the author's key
//! ([`rjs_signer::request::RequestAuth`]).

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reqwest::Method;
use reqwest::blocking::{Client, Response};
use rjs_signer::KeyPair;
use rjs_signer::bundle::hex;
use rjs_signer::request::RequestAuth;
use rjs_wire::api::{AUTHOR_PREFIX, ErrorBody, JobList, UploadResponse, WhoAmI};
use sha2::{Digest, Sha256};

/// Largest JSON or answer body read.
const MAX_BODY: u64 = 256 * 1024 * 1024;

fn client(tls: rustls::ClientConfig) -> Result<Client> {
    Client::builder()
        .tls_backend_preconfigured(tls)
        .https_only(true)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("rjs/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTPS client")
}

/// The signed author API of one web server.
pub struct AuthorApi {
    base: String,
    http: Client,
    tls: rustls::ClientConfig,
    key: KeyPair,
}

impl AuthorApi {
    /// `base` is `https://HOST:PORT`; `ca_pem` the web server's CA certificate (the only root
    /// trusted).
    pub fn new(base: &str, ca_pem: &Path, key: KeyPair) -> Result<Self> {
        let ca = rjs_wire::tls::load_certs(ca_pem)
            .with_context(|| format!("loading the web server CA {}", ca_pem.display()))?;
        let mut tls = rjs_wire::tls::client_config(&ca, None)
            .context("building the TLS configuration from the web server CA")?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(AuthorApi {
            base: base.trim_end_matches('/').to_owned(),
            http: client(tls.clone())?,
            tls,
            key,
        })
    }

    /// Closes the kept-alive connections (a web server stopping waits for open connections
    /// before it exits); the next request connects again.
    pub fn disconnect(&mut self) -> Result<()> {
        self.http = client(self.tls.clone())?;
        Ok(())
    }

    /// The author key every request is signed with.
    pub fn key(&self) -> &KeyPair {
        &self.key
    }

    /// `https://HOST:PORT`.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn send(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Response> {
        let url = format!("{}{path}", self.base);
        let sha = hex(&Sha256::digest(body.as_deref().unwrap_or_default()));
        let auth = RequestAuth::sign(
            &self.key,
            method.as_str(),
            path,
            &sha,
            rjs_signer::unix_now(),
        );
        let mut req = self.http.request(method.clone(), &url);
        for (name, value) in auth.headers() {
            req = req.header(name, value);
        }
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(b);
        }
        let resp = req
            .send()
            .map_err(|e| anyhow::Error::new(e.without_url()))
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let mut buf = Vec::new();
        let _ = resp.take(64 * 1024).read_to_end(&mut buf);
        match serde_json::from_slice::<ErrorBody>(&buf) {
            Ok(e) => bail!(
                "{method} {url}: the web server refused ({status}): {} ({})",
                e.error,
                e.code
            ),
            Err(_) => bail!(
                "{method} {url}: the web server answered {status}: {}",
                String::from_utf8_lossy(&buf[..buf.len().min(300)]).trim()
            ),
        }
    }

    fn body(resp: Response) -> Result<Vec<u8>> {
        let url = resp.url().to_string();
        let mut buf = Vec::new();
        resp.take(MAX_BODY + 1)
            .read_to_end(&mut buf)
            .with_context(|| format!("reading the answer of {url}"))?;
        if buf.len() as u64 > MAX_BODY {
            bail!("the answer of {url} is larger than {MAX_BODY} bytes");
        }
        Ok(buf)
    }

    fn json<T: serde::de::DeserializeOwned>(resp: Response, what: &str) -> Result<T> {
        let url = resp.url().to_string();
        let buf = Self::body(resp)?;
        serde_json::from_slice(&buf).with_context(|| format!("parsing the {what} from {url}"))
    }

    /// `GET /api/v1/whoami`.
    pub fn whoami(&self) -> Result<WhoAmI> {
        let resp = self.send(Method::GET, &format!("{AUTHOR_PREFIX}/whoami"), None)?;
        Self::json(resp, "whoami answer")
    }

    /// `POST /api/v1/bundles[?resubmit=true]`.
    pub fn upload(&self, bundle: Vec<u8>, resubmit: bool) -> Result<UploadResponse> {
        let mut path = format!("{AUTHOR_PREFIX}/bundles");
        if resubmit {
            path.push_str("?resubmit=true");
        }
        let resp = self.send(Method::POST, &path, Some(bundle))?;
        Self::json(resp, "upload answer")
    }

    /// `GET /api/v1/jobs[?bundle=ID]`.
    pub fn jobs(&self, bundle: Option<&str>) -> Result<JobList> {
        let path = match bundle {
            Some(id) => {
                if !rjs_signer::bundle::is_sha256_hex(id) {
                    bail!("{id:?} is not a bundle id");
                }
                format!("{AUTHOR_PREFIX}/jobs?bundle={id}")
            }
            None => format!("{AUTHOR_PREFIX}/jobs"),
        };
        let resp = self.send(Method::GET, &path, None)?;
        Self::json(resp, "job list")
    }

    /// `GET /api/v1/jobs/<id>/answer`: the answer archive's bytes.
    pub fn answer(&self, job_id: i64) -> Result<Vec<u8>> {
        let resp = self.send(
            Method::GET,
            &format!("{AUTHOR_PREFIX}/jobs/{job_id}/answer"),
            None,
        )?;
        Self::body(resp)
    }
}
