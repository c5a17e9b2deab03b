//! `rjs-compute serve` on loopback, with certificates from a test [`Ca`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use rjs_signer::KeyPair;

use crate::pki::{Ca, Leaf};
use crate::{Managed, bin, now, run_ok, spawn_listening};

/// `rjs-compute <args> --data <data>`, no terminal attached.
pub fn compute(data: &Path, args: &[&str]) -> Result<String> {
    run_ok(
        Command::new(bin("rjs-compute"))
            .args(args)
            .arg("--data")
            .arg(data)
            .stdin(Stdio::null()),
    )
}

/// How to start a node.
#[derive(Default)]
pub struct NodeSetup<'a> {
    /// `<data>/node.toml`.
    pub toml: Option<&'a str>,
    /// Authors trusted (`trust add`, named `author<i>`) before the start.
    pub trusted: &'a [&'a KeyPair],
    /// `--slots` (default 1).
    pub slots: Option<usize>,
    /// `--node-id` (default: the node's own).
    pub node_id: Option<&'a str>,
    /// The stored benchmark result (default 1000 MFLOPS).
    pub mflops: Option<u64>,
    /// More `serve` flags.
    pub extra_args: &'a [&'a str],
}

/// Stores a benchmark result of `mflops` in `data` (compute/src/bench.rs), so that the node
/// does not spend a second of CPU measuring (tests run in parallel on few cores).
pub fn store_bench(data: &Path, mflops: f64) -> std::io::Result<()> {
    std::fs::write(
        data.join("bench.json"),
        serde_json::json!({
            "mflops": mflops, "n": 500, "runs": 3, "seconds": 1.0, "residual": 0.5,
            "measured_at": now(), "program_version": env!("CARGO_PKG_VERSION"),
        })
        .to_string(),
    )
}

/// `rjs-compute trust add <author> --name <name>`.
pub fn trust_author(data: &Path, author: &KeyPair, name: &str) -> Result<()> {
    let out = compute(
        data,
        &["trust", "add", &author.public().to_base64(), "--name", name],
    )?;
    assert!(out.starts_with("trusted "), "{out}");
    Ok(())
}

/// `rjs-compute serve` in a fresh temporary directory, with its data directory at `data`;
/// killed when dropped.
pub struct ComputeNode {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub addr: SocketAddr,
    pub proc: Managed,
    /// The `--node-id` it was started with ([`NodeSetup::node_id`]).
    pub node_id: Option<String>,
    /// Its stored benchmark result ([`NodeSetup::mflops`]).
    pub mflops: u64,
}

impl ComputeNode {
    /// Starts a node presenting `cert` (issued by `ca`) on an ephemeral loopback port.
    pub fn start(ca: &Ca, cert: &Leaf, setup: NodeSetup<'_>) -> Result<ComputeNode> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data)?;
        let (ca_pem, cert_pem, key_pem) = (
            dir.path().join("ca.pem"),
            dir.path().join("node.pem"),
            dir.path().join("node-key.pem"),
        );
        std::fs::write(&ca_pem, ca.pem())?;
        std::fs::write(&cert_pem, &cert.cert_pem)?;
        std::fs::write(&key_pem, &cert.key_pem)?;
        if let Some(toml) = setup.toml {
            std::fs::write(data.join("node.toml"), toml)?;
        }
        let mflops = setup.mflops.unwrap_or(1000);
        store_bench(&data, mflops as f64)?;
        for (i, author) in setup.trusted.iter().enumerate() {
            trust_author(&data, author, &format!("author{i}"))?;
        }
        let slots = setup.slots.unwrap_or(1).to_string();
        let mut cmd = Command::new(bin("rjs-compute"));
        cmd.arg("serve").arg("--data").arg(&data).args([
            "--listen",
            "127.0.0.1:0",
            "--slots",
            &slots,
            // Never an mDNS daemon on the host's network (docs/discovery.md): tests that
            // announce run in a private network namespace.
            "--no-announce",
        ]);
        if let Some(id) = setup.node_id {
            cmd.args(["--node-id", id]);
        }
        cmd.arg("--cert")
            .arg(&cert_pem)
            .arg("--key")
            .arg(&key_pem)
            .arg("--ca")
            .arg(&ca_pem)
            .args(setup.extra_args)
            // No terminal: unknown authors are refused, never asked about.
            .stdin(Stdio::null())
            .stderr(Stdio::inherit());
        let (proc, addr) = spawn_listening(&mut cmd, " listening on ")?;
        let addr: SocketAddr = addr.parse().with_context(|| format!("address {addr:?}"))?;
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
        Ok(ComputeNode {
            dir,
            data,
            addr,
            proc,
            node_id: setup.node_id.map(str::to_owned),
            mflops,
        })
    }

    /// The node's answer-signing key (`<data>/node.pub`).
    pub fn public_key(&self) -> rjs_signer::PublicKey {
        let path = self.data.join("node.pub");
        rjs_signer::PublicKey::load_or_parse(path.to_str().expect("utf-8 path"))
            .expect("node.pub")
            .0
    }
}

/// Modules a node's sandbox has compiled (`<data>/cache/wasmtime-*/<module sha>.cwasm`): a
/// job that never reached the sandbox leaves none.
pub fn compiled_modules(data: &Path) -> usize {
    let Ok(dirs) = std::fs::read_dir(data.join("cache")) else {
        return 0;
    };
    dirs.flatten()
        .filter_map(|d| std::fs::read_dir(d.path()).ok())
        .flat_map(|files| files.flatten())
        .filter(|f| f.file_name().to_string_lossy().ends_with(".cwasm"))
        .count()
}

/// What tasks left in a node's scratch directory (`<data>/scratch`): anything but the slots'
/// own directories (`slot-<i>` and `tmp-<i>`, kept between tasks), and anything inside those.
pub fn scratch_left(data: &Path) -> Vec<String> {
    let mut left = Vec::new();
    let Ok(entries) = std::fs::read_dir(data.join("scratch")) else {
        return left;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // The slots' out/ (`slot-<i>`) and /tmp (`tmp-<i>`) directories belong there, empty.
        let slot = (name.starts_with("slot-") || name.starts_with("tmp-"))
            && e.file_type().is_ok_and(|t| t.is_dir());
        match std::fs::read_dir(e.path()) {
            Ok(inner) if slot => left.extend(
                inner
                    .flatten()
                    .map(|i| format!("{name}/{}", i.file_name().to_string_lossy())),
            ),
            _ => left.push(name),
        }
    }
    left
}
