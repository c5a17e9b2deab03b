//! End-to-end test helpers: start the real binaries (`target/<profile>/rjs-*`) on loopback,
//! talk to them through real TLS, and stop them when dropped. Paths and processes are the
//! harness's (`rjs-harness`), re-exported here.
//!
//! The binaries must be built first (`cargo build --workspace --bins`; `scripts/test.sh` does).

pub mod browser;
pub mod lab;
pub mod node;
pub mod pki;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
pub use rjs_harness::paths::{bin, sample, samples_dir};
pub use rjs_harness::process::{Managed, run_ok, spawn_listening};
pub use rjs_signer::client::sha256_hex;
use rjs_signer::keys::KeyPair;
/// Seconds since the Unix epoch (what bundles and signed requests carry).
pub use rjs_signer::unix_now as now;

/// The sample `job`, packed and signed by `key`.
pub fn pack(job: &str, key: &KeyPair) -> Vec<u8> {
    rjs_signer::pack_dir(&sample(job), key, "tester", now())
        .unwrap_or_else(|e| panic!("packing {job}: {}", rjs_cmd::chain(&e)))
        .0
}

/// Runs `f` under a deadline: no test waits unboundedly.
pub async fn bounded<T>(what: &str, secs: u64, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {secs} s"))
}

/// Enrolment material of one lookup server (from `rjs-webserver lookup add`).
pub struct LookupCreds {
    pub path: PathBuf,
}

/// A web server under test: a data directory made with `init`, and (once started) the
/// serving process.
pub struct WebServer {
    pub dir: tempfile::TempDir,
    pub proc: Option<Managed>,
    pub addr: String,
    pub extra_args: Vec<String>,
    /// Environment of every command run for it (`RJS_STORE` for a shared store, …).
    pub env: Vec<(String, String)>,
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
        Self::init_with_env(Vec::new())
    }

    /// [`init`](Self::init) with `env` set for every command (e.g. `RJS_STORE`).
    pub fn init_with_env(env: Vec<(String, String)>) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let ws = WebServer {
            dir,
            proc: None,
            addr: String::new(),
            extra_args: Vec::new(),
            env,
        };
        run_ok(ws.command().arg("init").arg("--data").arg(ws.data()))?;
        Ok(ws)
    }

    /// `rjs-webserver` with this server's environment.
    pub fn command(&self) -> Command {
        let mut c = Command::new(bin("rjs-webserver"));
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn admin(&self, args: &[&str]) -> Result<String> {
        run_ok(self.command().args(args).arg("--data").arg(self.data()))
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
            self.command()
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

    /// Another `serve` process on this data directory (one store, CA and certificate: a
    /// second stateless web server), on an ephemeral loopback port, with `env` on top of
    /// this server's; the process and its address.
    pub fn serve_another(&self, env: &[(&str, &str)]) -> Result<(Managed, String)> {
        let mut cmd = self.command();
        cmd.envs(env.iter().copied())
            .arg("serve")
            .arg("--data")
            .arg(self.data())
            .args(["--listen", "127.0.0.1:0"])
            .stderr(Stdio::inherit());
        spawn_listening(&mut cmd, "listening on https://")
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

/// A TLS client configuration pinned to `ca_pem`, optionally with the identity in a PEM file
/// holding a certificate chain (leaf first after any CA certificates) and its key (a lookup's
/// credentials file).
pub fn client_tls_from_files(
    ca_pem: &Path,
    identity_pem: Option<&Path>,
) -> Result<rustls::ClientConfig> {
    let ca = rjs_wire::tls::load_certs(ca_pem)?;
    let identity = match identity_pem {
        Some(p) => {
            let certs = rjs_wire::tls::load_certs(p)?;
            // The leaf is the certificate that is not one of the CA certificates.
            let leaf: Vec<_> = certs.into_iter().filter(|c| !ca.contains(c)).collect();
            Some((leaf, rjs_wire::tls::load_key(p)?))
        }
        None => None,
    };
    Ok(rjs_wire::tls::client_config(&ca, identity)?)
}

/// Builds a blocking reqwest client pinned to `ca_pem`, optionally with an identity
/// ([`client_tls_from_files`]).
pub fn client(ca_pem: &Path, identity_pem: Option<&Path>) -> Result<reqwest::blocking::Client> {
    Ok(reqwest::blocking::Client::builder()
        .use_preconfigured_tls(client_tls_from_files(ca_pem, identity_pem)?)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .build()?)
}

pub use rjs_signer::client::AuthorClient;

impl WebServer {
    /// The author API client (the one every program uses) of `key` for this web server.
    pub fn author(&self, key: KeyPair) -> Result<AuthorClient> {
        let server = rjs_signer::client::ServerUrl::parse(&self.url(""))?;
        Ok(AuthorClient::with_ca_file(server, &self.ca_pem(), key)?)
    }
}

/// `POST /api/v1/bundles` signed now by `author`: the response whatever its status (the
/// client's `upload` turns a refusal into an error; these tests look at the status).
pub fn upload_raw(author: &AuthorClient, bundle: &[u8]) -> Result<reqwest::blocking::Response> {
    let (rb, _) = author.signed_request(
        reqwest::Method::POST,
        "/api/v1/bundles",
        bundle.to_vec(),
        now(),
    );
    Ok(rb.send()?)
}

/// The smallest module the grid accepts: a command whose `_start` does nothing.
pub fn empty_wasm() -> Vec<u8> {
    rjs_signer::wasm::empty_command(&[])
}

/// A signed bundle of `tasks` tasks named `name`, carrying `filler` bytes of incompressible
/// data (a distinct bundle each call).
pub fn big_bundle(key: &KeyPair, name: &str, tasks: u32, filler: usize) -> Vec<u8> {
    let manifest = serde_json::json!({
        "format": 1, "name": name, "entry": "job.wasm", "tasks": tasks,
        "inputs": ["data.bin"],
    });
    let mut data = vec![0u8; filler];
    rand::fill(&mut data[..]);
    let mut b = rjs_signer::BundleBuilder::new();
    b.add("manifest.json", manifest.to_string().into_bytes())
        .expect("manifest entry");
    b.add("job.wasm", empty_wasm()).expect("module entry");
    b.add("data.bin", data).expect("data entry");
    b.sign(key, "author", now()).expect("sign")
}

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
    b.add("job.wasm", empty_wasm()).expect("module entry");
    b.sign(key, "author", now()).expect("sign")
}
