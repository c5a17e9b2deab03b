//! A real browser for the dashboard tests: Debian's `chromium`, headless, driven over
//! WebDriver by `chromedriver` (the two are version-locked packages; `scripts/test.sh`
//! installs them), through `fantoccini`. Each [`Browser`] has its own chromedriver process,
//! a fresh profile and download folder, and its own runtime (the tests are synchronous:
//! they also use blocking clients), and accepts the test web servers' certificates (they
//! are signed by each test's own CA).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use rjs_harness::process::{Managed, spawn_listening};
use serde_json::{Value, json};

/// The browser and its driver.
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long a wait for the page gives up after.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Browser {
    client: Option<Client>,
    rt: tokio::runtime::Runtime,
    _driver: Managed,
    driver_port: u16,
    session: String,
    profile: tempfile::TempDir,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Browser {
    /// Starts chromedriver and a headless chromium session.
    pub fn start() -> Result<Browser> {
        for p in [CHROMIUM, CHROMEDRIVER] {
            if !Path::new(p).exists() {
                bail!(
                    "{p} is missing: install Debian's chromium and chromium-driver (scripts/test.sh does)"
                );
            }
        }
        let profile = tempfile::tempdir()?;
        let port = free_port()?;
        let (driver, _) = spawn_listening(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stderr(Stdio::null()),
            "started successfully",
        )
        .context("starting chromedriver")?;
        let downloads = profile.path().join("downloads");
        std::fs::create_dir_all(&downloads)?;
        let caps = json!({
            "acceptInsecureCerts": true,
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().join("chrome").display()),
                ],
                "prefs": {
                    "download.default_directory": downloads.to_string_lossy(),
                    "download.prompt_for_download": false,
                },
            },
        });
        let caps = match caps {
            Value::Object(m) => m,
            _ => unreachable!("a JSON object literal"),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = rt
            .block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(60),
                    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                        .capabilities(caps)
                        .connect(&format!("http://127.0.0.1:{port}")),
                )
                .await
            })
            .context("starting a chromium session: timed out")?
            .context("starting a chromium session")?;
        let session = rt
            .block_on(client.session_id())?
            .context("the session has no id")?;
        Ok(Browser {
            client: Some(client),
            rt,
            _driver: driver,
            driver_port: port,
            session,
            profile,
        })
    }

    fn c(&self) -> &Client {
        self.client
            .as_ref()
            .expect("the session is open until drop")
    }

    pub fn goto(&self, url: &str) -> Result<()> {
        self.rt
            .block_on(self.c().goto(url))
            .with_context(|| format!("opening {url}"))
    }

    pub fn url(&self) -> Result<String> {
        Ok(self.rt.block_on(self.c().current_url())?.to_string())
    }

    /// The page's HTML source.
    pub fn source(&self) -> Result<String> {
        Ok(self.rt.block_on(self.c().source())?)
    }

    /// The text of the first element matching `css`.
    pub fn text(&self, css: &str) -> Result<String> {
        self.rt.block_on(async {
            let e = self.c().find(Locator::Css(css)).await?;
            Ok(e.text().await?)
        })
    }

    /// How many elements match `css`.
    pub fn count(&self, css: &str) -> Result<usize> {
        Ok(self
            .rt
            .block_on(self.c().find_all(Locator::Css(css)))?
            .len())
    }

    pub fn click(&self, css: &str) -> Result<()> {
        self.rt.block_on(async {
            let e = self.c().find(Locator::Css(css)).await?;
            e.click().await?;
            Ok(())
        })
    }

    /// The value of the dashboard's session cookie (WebDriver reads HttpOnly cookies; the
    /// page's scripts cannot), and whether it is HttpOnly and Secure.
    pub fn session_cookie(&self) -> Result<String> {
        Ok(self.session_cookie_flags()?.0)
    }

    pub fn session_cookie_flags(&self) -> Result<(String, bool, bool)> {
        let name = rjs_webserver::dashboard::session::COOKIE;
        let c = self.rt.block_on(self.c().get_named_cookie(name))?;
        Ok((
            c.value().to_owned(),
            c.http_only().unwrap_or(false),
            c.secure().unwrap_or(false),
        ))
    }

    /// Runs a script in the page; its return value.
    pub fn js(&self, script: &str) -> Result<Value> {
        Ok(self.rt.block_on(self.c().execute(script, vec![]))?)
    }

    /// Waits until `check` holds (polled every 100 ms), up to [`WAIT`].
    pub fn wait_until(&self, what: &str, mut check: impl FnMut(&Browser) -> bool) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if check(self) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("waited {WAIT:?} for {what}")
    }

    /// On a dashboard login page: presses its sign-in button and waits for the page the
    /// session lands on (`landing`, a path).
    pub fn confirm_sign_in(&self, landing: &str) -> Result<()> {
        self.click("form[action='/dashboard/login'] button")?;
        self.wait_until(&format!("{landing} after sign-in"), |b| {
            b.url().is_ok_and(|u| u.ends_with(landing))
        })
        .with_context(|| {
            format!(
                "at {:?}: {}",
                self.url().unwrap_or_default(),
                self.source().unwrap_or_default()
            )
        })
    }

    /// Opens a one-time login link and signs in with it.
    pub fn sign_in(&self, link: &str, landing: &str) -> Result<()> {
        self.goto(link)?;
        self.confirm_sign_in(landing)
    }

    /// Resizes the window (CSS pixels).
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        Ok(self.rt.block_on(self.c().set_window_size(width, height))?)
    }

    /// Whether the page is wider than the window (something overflows sideways).
    pub fn overflows_sideways(&self) -> Result<bool> {
        Ok(self.js(
            "return document.documentElement.scrollWidth > document.documentElement.clientWidth;",
        )? == json!(true))
    }

    /// Saves a PNG screenshot of the page.
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        let png = self.rt.block_on(self.c().screenshot())?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// The browser's console messages since the last call (chromedriver's log endpoint).
    pub fn console(&self) -> Result<Vec<String>> {
        let body = json!({"type": "browser"}).to_string();
        let path = format!("/session/{}/se/log", self.session);
        let reply = http_post(self.driver_port, &path, &body)?;
        let v: Value = serde_json::from_str(&reply).context("the log reply")?;
        Ok(v["value"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The console messages since the last look that report a Content-Security-Policy
    /// violation.
    pub fn csp_violations(&self) -> Result<Vec<String>> {
        Ok(self
            .console()?
            .into_iter()
            .filter(|m| m.contains("Content Security Policy"))
            .collect())
    }

    /// Files the browser downloaded (finished ones).
    pub fn downloads(&self) -> Result<Vec<PathBuf>> {
        let dir = self.profile.path().join("downloads");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            if p.extension().is_none_or(|x| x != "crdownload") {
                out.push(p);
            }
        }
        Ok(out)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), c.close()).await });
        }
    }
}

/// A POST of JSON to the local chromedriver; the response body.
fn http_post(port: u16, path: &str, body: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    // Read the head, then as many bytes as Content-Length says (the driver may keep the
    // connection open).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("chromedriver closed the connection before its reply's head ended");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .context("chromedriver's reply has no Content-Length")?;
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf[head_end..]).into_owned())
}
