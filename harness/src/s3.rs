//! A throw-away S3-compatible server for tests: moto's server (PyPI `moto[server]`, which
//! scripts/test.sh installs where missing), on a free loopback port, in memory, killed on
//! drop. Any access key works; requests are path-style over plain HTTP (loopback only).
//!
//! ```no_run
//! let s3 = rjs_harness::s3::S3Server::start().unwrap();
//! s3.create_bucket("rjs-test").unwrap();
//! let endpoint = s3.endpoint(); // http://127.0.0.1:PORT
//! ```

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The access key the tests use (moto accepts any).
pub const ACCESS_KEY_ID: &str = "rjs-test-key";
/// The secret key the tests use.
pub const SECRET_ACCESS_KEY: &str = "rjs-test-secret";
/// moto's default region.
pub const REGION: &str = "us-east-1";

/// How long the server may take to answer after starting.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// One request of the harness's own.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A running moto server.
pub struct S3Server {
    child: Child,
    addr: SocketAddr,
    log: tempfile::NamedTempFile,
}

impl S3Server {
    /// Starts `python3 -m moto.server` on a free loopback port and waits until it answers.
    pub fn start() -> Result<S3Server> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .context("finding a free loopback port")?
            .port();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let log = tempfile::Builder::new()
            .prefix("rjs-moto-")
            .suffix(".log")
            .tempfile()
            .context("making the S3 server's log")?;
        let stderr = log.reopen().context("opening the S3 server's log")?;
        let stdout = log.reopen().context("opening the S3 server's log")?;
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .context("starting python3 -m moto.server (pip install 'moto[server]')")?;
        let mut server = S3Server { child, addr, log };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("checking the S3 server")? {
                bail!(
                    "the S3 server (moto) exited with {status}: {}\n(is moto installed? \
                     pip install 'moto[server]'; scripts/test.sh does)",
                    self.log_text()
                );
            }
            if matches!(self.request("GET", "/", &[]), Ok((200, _))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the S3 server did not answer on {} within {START_TIMEOUT:?}: {}",
                    self.addr,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates a bucket.
    pub fn create_bucket(&self, name: &str) -> Result<()> {
        let (status, body) = self.request("PUT", &format!("/{name}"), &[])?;
        if status != 200 {
            bail!(
                "creating bucket {name}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(())
    }

    /// The keys in `bucket` under `prefix` (at most 1000), from a ListObjectsV2 behind the
    /// back of whatever uses the bucket.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Result<Vec<String>> {
        let (status, body) = self.request(
            "GET",
            &format!("/{bucket}?list-type=2&prefix={prefix}"),
            &[],
        )?;
        let body = String::from_utf8_lossy(&body).into_owned();
        if status != 200 {
            bail!("listing {bucket}: HTTP {status}: {body}");
        }
        Ok(body
            .split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_owned)
            .collect())
    }

    /// One unsigned HTTP/1.1 request (moto does not check signatures): status and body.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>)> {
        let mut conn = TcpStream::connect_timeout(&self.addr, REQUEST_TIMEOUT)
            .with_context(|| format!("connecting to {}", self.addr))?;
        conn.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        conn.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            body.len()
        );
        conn.write_all(head.as_bytes())?;
        conn.write_all(body)?;
        let mut response = Vec::new();
        conn.read_to_end(&mut response)
            .with_context(|| format!("reading the answer to {method} {path}"))?;
        let text = String::from_utf8_lossy(&response);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| {
                format!(
                    "no HTTP status in {:?}",
                    text.chars().take(80).collect::<String>()
                )
            })?;
        let body = match response.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(i) => response[i + 4..].to_vec(),
            None => Vec::new(),
        };
        Ok((status, body))
    }

    /// Environment for a process that reaches this server with the test keys.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.to_owned()),
            ("AWS_REGION", REGION.to_owned()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
