//! End-to-end test harness: starts the real binaries (`target/<profile>/rjs-*`) on loopback,
//! talks to them through real TLS, and stops them when dropped.
//!
//! The binaries must be built first (`cargo build --workspace --bins`; `scripts/test.sh` does).

pub mod node;
pub mod pki;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rjs_signer::keys::KeyPair;
use rjs_signer::request::RequestAuth;
use sha2::{Digest, Sha256};

/// Path of a workspace binary built next to the running test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

/// Runs a command to completion, failing with its output if it fails.
pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn sha256_hex(data: &[u8]) -> String {
    rjs_signer::bundle::hex(&Sha256::digest(data))
}

pub fn now() -> u64 {
    rjs_signer::unix_now()
}

/// The built sample jobs, `<target>/rjs-samples` (`samples/build.sh`; honours
/// `CARGO_TARGET_DIR`).
pub fn samples_dir() -> PathBuf {
    // tests/ -> the workspace root.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .unwrap_or_else(|| root.join("target"));
    target.join("rjs-samples")
}

/// The sample job folder `<target>/rjs-samples/<job>`.
pub fn sample(job: &str) -> PathBuf {
    let dir = samples_dir().join(job);
    assert!(
        dir.join("manifest.json").is_file(),
        "{} is missing: build the samples first (samples/build.sh)",
        dir.display()
    );
    dir
}

/// The sample `job`, packed and signed by `key`.
pub fn pack(job: &str, key: &KeyPair) -> Vec<u8> {
    rjs_signer::pack_dir(&sample(job), key, "tester", now())
        .unwrap_or_else(|e| panic!("packing {job}: {}", rjs_signer::error_chain(&e)))
        .0
}

/// Runs `f` under a deadline: no test waits unboundedly.
pub async fn bounded<T>(what: &str, secs: u64, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {secs} s"))
}

/// Spawns `cmd` with its standard output piped and waits up to 30 s for a line holding
/// `marker`; returns the process and the rest of that line after the marker, trimmed.
pub fn spawn_listening(cmd: &mut Command, marker: &'static str) -> Result<(Proc, String)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let proc = Proc { child };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split(marker).nth(1) {
                let _ = tx.send(rest.trim().to_owned());
            }
        }
    });
    let rest = rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| anyhow!("{cmd:?} did not report {marker:?} within 30 s"))?;
    Ok((proc, rest))
}

/// A child process killed (SIGKILL) when dropped unless stopped before.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    /// Sends SIGTERM and waits up to `timeout` for the exit; returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let pid = self.child.id() as i32;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st.code());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        self.child.wait()?;
        bail!("process did not exit within {timeout:?} of SIGTERM")
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Enrolment material of one lookup server (from `rjs-webserver lookup add`).
pub struct LookupCreds {
    pub path: PathBuf,
}

/// A web server under test: a data directory made with `init`, and (once started) the
/// serving process.
pub struct WebServer {
    pub dir: tempfile::TempDir,
    pub proc: Option<Proc>,
    pub addr: String,
    pub extra_args: Vec<String>,
}

impl WebServer {
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    pub fn ca_pem(&self) -> PathBuf {
        self.data().join("ca.pem")
    }

    /// `rjs-webserver init` in a fresh temporary directory.
    pub fn init() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let ws = WebServer {
            dir,
            proc: None,
            addr: String::new(),
            extra_args: Vec::new(),
        };
        run_ok(
            Command::new(bin("rjs-webserver"))
                .arg("init")
                .arg("--data")
                .arg(ws.data()),
        )?;
        Ok(ws)
    }

    pub fn admin(&self, args: &[&str]) -> Result<String> {
        run_ok(
            Command::new(bin("rjs-webserver"))
                .args(args)
                .arg("--data")
                .arg(self.data()),
        )
    }

    /// Enrols an author with a fresh key; returns the key.
    pub fn add_author(&self, name: &str) -> Result<KeyPair> {
        let key = KeyPair::generate();
        self.admin(&["author", "add", name, "--key", &key.public().to_base64()])?;
        Ok(key)
    }

    /// Enrols a lookup server; returns its credentials file.
    pub fn add_lookup(&self, name: &str) -> Result<LookupCreds> {
        let path = self.dir.path().join(format!("{name}.creds"));
        self.admin(&[
            "lookup",
            "add",
            name,
            "-o",
            path.to_str().context("utf-8 path")?,
        ])?;
        Ok(LookupCreds { path })
    }

    /// Starts `serve` on an ephemeral loopback port and waits for its "listening on" line.
    pub fn start(&mut self) -> Result<()> {
        let listen = if self.addr.is_empty() {
            "127.0.0.1:0".to_owned()
        } else {
            self.addr.clone()
        };
        let (proc, addr) = spawn_listening(
            Command::new(bin("rjs-webserver"))
                .arg("serve")
                .arg("--data")
                .arg(self.data())
                .arg("--listen")
                .arg(&listen)
                .args(&self.extra_args)
                .stderr(Stdio::inherit()),
            "listening on https://",
        )?;
        self.addr = addr;
        self.proc = Some(proc);
        Ok(())
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// An HTTPS client trusting only this server's CA (no client certificate).
    pub fn anon_client(&self) -> Result<reqwest::blocking::Client> {
        client(&self.ca_pem(), None)
    }

    /// A client presenting a lookup's certificate.
    pub fn lookup_client(&self, creds: &LookupCreds) -> Result<reqwest::blocking::Client> {
        client(&self.ca_pem(), Some(&creds.path))
    }

    /// SIGKILL the server.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }
}

/// Builds a blocking reqwest client pinned to `ca_pem`, optionally with the identity in a
/// PEM file holding a certificate chain (leaf first after any CA certificates) and its key.
pub fn client(ca_pem: &Path, identity_pem: Option<&Path>) -> Result<reqwest::blocking::Client> {
    let ca = rjs_wire::tls::load_certs(ca_pem)?;
    let identity = match identity_pem {
        Some(p) => {
            let pem = std::fs::read(p)?;
            let certs = rjs_wire::tls::certs_from_pem(&pem, "credentials")?;
            // The leaf is the certificate that is not one of the CA certificates.
            let leaf: Vec<_> = certs.into_iter().filter(|c| !ca.contains(c)).collect();
            let key = rjs_wire::tls::key_from_pem(&pem, "credentials")?;
            Some((leaf, key))
        }
        None => None,
    };
    let tls = rjs_wire::tls::client_config(&ca, identity)?;
    Ok(reqwest::blocking::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// An author talking to the author API with signed requests.
pub struct Author {
    pub key: KeyPair,
    pub client: reqwest::blocking::Client,
    pub base: String,
}

impl Author {
    pub fn new(ws: &WebServer, key: KeyPair) -> Result<Self> {
        Ok(Author {
            key,
            client: ws.anon_client()?,
            base: format!("https://{}", ws.addr),
        })
    }

    /// Builds a signed request; `tweak` may alter the auth before it is sent.
    pub fn signed(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
        timestamp: u64,
    ) -> (reqwest::blocking::RequestBuilder, RequestAuth) {
        let auth = RequestAuth::sign(
            &self.key,
            method.as_str(),
            path,
            &sha256_hex(&body),
            timestamp,
        );
        let mut rb = self
            .client
            .request(method, format!("{}{path}", self.base))
            .body(body);
        for (k, v) in auth.headers() {
            rb = rb.header(k, v);
        }
        (rb, auth)
    }

    pub fn upload(&self, bundle: &[u8]) -> Result<reqwest::blocking::Response> {
        let (rb, _) = self.signed(
            reqwest::Method::POST,
            "/api/v1/bundles",
            bundle.to_vec(),
            now(),
        );
        Ok(rb.send()?)
    }

    pub fn jobs(&self) -> Result<rjs_wire::api::JobList> {
        let (rb, _) = self.signed(reqwest::Method::GET, "/api/v1/jobs", Vec::new(), now());
        let r = rb.send()?;
        if !r.status().is_success() {
            bail!("jobs: {} {}", r.status(), r.text().unwrap_or_default());
        }
        Ok(r.json()?)
    }
}

/// A minimal valid WebAssembly module (just the header).
pub const EMPTY_WASM: &[u8] = &[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];

/// A signed bundle with `tasks` tasks, named `name`, signed by `key`.
pub fn make_bundle(key: &KeyPair, name: &str, tasks: u32) -> Vec<u8> {
    let manifest = serde_json::json!({
        "format": 1, "name": name, "entry": "job.wasm", "tasks": tasks,
        // Random description so that each call gives a distinct bundle.
        "description": format!("test bundle {}", rjs_signer::bundle::hex(&rand::random::<[u8; 8]>())),
    });
    let mut b = rjs_signer::BundleBuilder::new();
    b.add("manifest.json", manifest.to_string().into_bytes())
        .expect("manifest entry");
    b.add("job.wasm", EMPTY_WASM.to_vec())
        .expect("module entry");
    b.sign(key, "author", now()).expect("sign")
}
