//! Enrolment end to end through the real binaries on 127.0.0.1: `rjs-lookup init`, `token`,
//! `serve-enrol`, `nodes`, and `rjs-compute join`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rjs_harness::paths::mode;
use rjs_wire::enrol::Token;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

fn lookup_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rjs-lookup"))
}

/// `rjs-compute` sits next to `rjs-lookup` (built by `cargo test -p rjs-lookup -p rjs-compute`).
fn compute_exe() -> PathBuf {
    let p = lookup_exe().with_file_name("rjs-compute");
    assert!(
        p.exists(),
        "{} missing: run `cargo test -p rjs-lookup -p rjs-compute` (or build rjs-compute first)",
        p.display()
    );
    p
}

/// Runs a command with a deadline.
fn run(cmd: &mut Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            unsafe_kill(pid);
            panic!("command timed out: {cmd:?}");
        }
    }
}

fn unsafe_kill(pid: u32) {
    let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn init(dir: &Path) {
    ok(run(Command::new(lookup_exe())
        .arg("init")
        .arg("--data")
        .arg(dir)));
}

fn token(dir: &Path, addr: &str, ttl: &str) -> String {
    ok(run(Command::new(lookup_exe())
        .args(["token", "--ttl", ttl, "--addr", addr, "--data"])
        .arg(dir)))
    .trim()
    .to_owned()
}

/// A running `serve-enrol`, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path) -> Server {
    let mut child = Command::new(lookup_exe())
        .args(["serve-enrol", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let mut server = Server {
        child,
        addr: String::new(),
    };
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("serve-enrol did not start");
    let addr: String = line
        .trim()
        .rsplit(' ')
        .next()
        .expect("listening line")
        .to_owned();
    assert!(addr.starts_with("127.0.0.1:"), "{line:?}");
    server.addr = addr;
    server
}

fn join(node_dir: &Path, token: &str, extra: &[&str]) -> Output {
    run(Command::new(compute_exe())
        .arg("join")
        .arg(token)
        .arg("--data")
        .arg(node_dir)
        .args(extra))
}

fn pem_certs(path: &Path) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    rjs_wire::tls::load_certs(path).unwrap()
}

/// `rjs-compute join` with `token` into `node_dir` fails, saying `says`.
fn join_refused(node_dir: &Path, token: &str, says: &str) {
    let out = join(node_dir, token, &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(says),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn enrolment_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let lookup = tmp.path().join("lookup");
    init(&lookup);
    assert_eq!(mode(&lookup), 0o700);
    assert_eq!(mode(&lookup.join("cluster-ca-key.pem")), 0o600);
    // A second init refuses to replace the CA.
    assert!(
        !run(Command::new(lookup_exe())
            .arg("init")
            .arg("--data")
            .arg(&lookup))
        .status
        .success()
    );
    let server = serve(&lookup);

    // Join with a good token.
    let good = token(&lookup, &server.addr, "1h");
    let node = tmp.path().join("node");
    let out = ok(join(&node, &good, &["--host", "127.0.0.1"]));
    assert!(out.contains("enrolled as node-1"), "{out}");
    assert_eq!(
        std::fs::read_to_string(node.join("node-id"))
            .unwrap()
            .trim(),
        "node-1"
    );
    assert_eq!(mode(&node.join("node-key.pem")), 0o600);
    let leaf = check_node_certificate(&lookup, &node);

    // The registry knows the node by its ed25519 key.
    let reg = rjs_lookup::enrol::Registry::load(&lookup).unwrap();
    let node_key = rjs_signer::KeyPair::load(&node.join("node.key"))
        .unwrap()
        .public();
    assert!(reg.is_active("node-1", &node_key));
    assert!(!reg.is_active("node-2", &node_key));
    assert_eq!(
        reg.get("node-1").unwrap().cert_sha256,
        rjs_wire::tls::cert_sha256(&leaf)
    );

    refused_tokens(tmp.path(), &lookup, &server.addr, &good);
    pinning(tmp.path(), &lookup, &server.addr);

    // Revocation.
    let out = ok(run(Command::new(lookup_exe())
        .args(["nodes", "remove", "node-1", "--data"])
        .arg(&lookup)));
    assert!(out.contains("revoked node-1"));
    let reg = rjs_lookup::enrol::Registry::load(&lookup).unwrap();
    assert!(!reg.is_active("node-1", &node_key));
    let list = ok(run(Command::new(lookup_exe())
        .args(["nodes", "list", "--json", "--data"])
        .arg(&lookup)));
    let nodes: serde_json::Value = serde_json::from_str(&list).unwrap();
    let n1 = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "node-1")
        .unwrap();
    assert!(n1["revoked_at"].is_u64());
}

/// The certificate `node-1` got (in `node`) chains to the cluster CA of `lookup` and names
/// the node, as a server and as a client, and its key is the certificate's. Returns it.
fn check_node_certificate(lookup: &Path, node: &Path) -> rustls_pki_types::CertificateDer<'static> {
    let ca = pem_certs(&node.join("cluster-ca.pem"));
    assert_eq!(ca, pem_certs(&lookup.join("cluster-ca.pem")));
    let leaf = pem_certs(&node.join("node.pem")).remove(0);
    let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
    assert_eq!(
        cert.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "node-1"
    );
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(
        san.value
            .general_names
            .iter()
            .any(|n| matches!(n, GeneralName::URI(u) if *u == "urn:rjs:node:node-1"))
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca[0].clone()).unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots.clone()),
        rjs_wire::tls::provider(),
    )
    .build()
    .unwrap();
    use rustls::client::danger::ServerCertVerifier;
    verifier
        .verify_server_cert(
            &leaf,
            &[],
            &rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            &[],
            rustls_pki_types::UnixTime::now(),
        )
        .unwrap();
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        rjs_wire::tls::provider(),
    )
    .build()
    .unwrap();
    client_verifier
        .verify_client_cert(&leaf, &[], rustls_pki_types::UnixTime::now())
        .unwrap();
    // The key written is the certificate's: the job server's TLS configuration builds.
    let key = rjs_wire::tls::load_key(&node.join("node-key.pem")).unwrap();
    rjs_wire::tls::server_config(
        vec![leaf.clone()],
        key,
        rjs_wire::tls::ClientAuth::Required(&ca),
    )
    .unwrap();
    leaf
}

/// Tokens of the lookup at `lookup` (enrolment on `addr`) that get no certificate: `used`
/// again, a wrong secret, an expired one, and one asking for an id already taken (while a
/// free id asked for is honoured).
fn refused_tokens(tmp: &Path, lookup: &Path, addr: &str, used: &str) {
    join_refused(&tmp.join("node2"), used, "already used");
    assert!(!tmp.join("node2/node.pem").exists());

    // A wrong secret is refused.
    let mut forged = Token::parse(&token(lookup, addr, "1h")).unwrap();
    forged.secret[0] ^= 1;
    join_refused(&tmp.join("node3"), &forged.encode(), "unknown token");

    // An expired token is refused.
    let short = token(lookup, addr, "1s");
    std::thread::sleep(Duration::from_secs(2));
    join_refused(&tmp.join("node4"), &short, "expired");

    // A requested id is honoured; a taken one is refused.
    let t = token(lookup, addr, "1h");
    let out = ok(join(&tmp.join("node5"), &t, &["--id", "pc-7"]));
    assert!(out.contains("enrolled as pc-7"), "{out}");
    let t = token(lookup, addr, "1h");
    let out = join(&tmp.join("node6"), &t, &["--id", "pc-7"]);
    assert!(!out.status.success());
}

/// Pinning: a token of the lookup at `lookup` (enrolment on `addr`) pointed at another
/// lookup, whose CA is not the one the token names, is refused by the node before it sends
/// anything; the secret is not spent.
fn pinning(tmp: &Path, lookup: &Path, addr: &str) {
    let other = tmp.join("other");
    init(&other);
    let other_server = serve(&other);
    let mut wrong = Token::parse(&token(lookup, addr, "1h")).unwrap();
    wrong.addr = other_server.addr.clone();
    let out = join(&tmp.join("node7"), &wrong.encode(), &[]);
    assert!(!out.status.success());
    assert!(!tmp.join("node7/node.pem").exists());
    // …and the secret was not spent: it still works against the right lookup.
    wrong.addr = addr.to_owned();
    ok(join(&tmp.join("node7"), &wrong.encode(), &[]));
}

/// Connections held before authentication (issue 10, item 5): 1,100 idle sockets from one
/// host (once enough to use up the lookup's file descriptors) leave a real node's enrolment
/// working, and the endpoint holds at most its per-source bound of them.
#[test]
fn idle_sockets_from_one_host_leave_enrolment_working() {
    let tmp = tempfile::tempdir().unwrap();
    let lookup = tmp.path().join("lookup");
    init(&lookup);
    let server = serve(&lookup);
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();
    let attacker = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    let flood = rjs_harness::flood::idle_sockets(attacker, addr, 1100).unwrap();
    assert_eq!(flood.connected(), 1100);
    let good = token(&lookup, &server.addr, "1h");
    let node = tmp.path().join("node");
    let out = ok(join(&node, &good, &["--host", "127.0.0.1"]));
    assert!(out.contains("enrolled as node-1"), "{out}");
    let held = flood.still_open();
    let bound = rjs_lookup::enrol::ENROL_LIMITS.per_source;
    assert!(held <= bound, "{held} idle sockets held (bound {bound})");
}
