//! The one error convention, seen where a person sees it: the stderr of the real binaries.
//! Each failure is printed as `<program>: error: <what failed>: <why>: <root cause>`, and no
//! cause is said twice (a layer's message names its own failure only; the renderer prints
//! each source once).

use std::path::Path;
use std::process::{Command, Output, Stdio};

use rjs_e2e::WebServer;
use rjs_harness::paths::{bin, sample};
use rjs_signer::KeyPair;

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The line of `out` (stdout then stderr) that starts with `prefix`, without the prefix.
fn line_after<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{out}"))
}

/// Asserts that no cause of a rendered chain (`a: b: c`) is printed twice: each part of the
/// chain that is long enough to mean something occurs once in the line.
fn each_cause_once(chain: &str) {
    let parts: Vec<&str> = chain.split(": ").map(str::trim).collect();
    for part in parts.iter().filter(|p| p.len() >= 12) {
        assert_eq!(
            chain.matches(part).count(),
            1,
            "{part:?} is said more than once in {chain:?}"
        );
    }
}

/// `rjs-sign whoami` against `server`, trusting `ca`, signing with `key`.
fn whoami(server: &str, ca: &Path, key: &Path, home: &Path) -> Output {
    run(Command::new(bin("rjs-sign"))
        .args(["whoami", "--server", server, "--ca"])
        .arg(ca)
        .arg("--key")
        .arg(key)
        .env("RJS_HOME", home))
}

fn author_files(dir: &Path, key: &KeyPair, name: &str) -> std::path::PathBuf {
    let files = rjs_signer::keys::write_key_pair(key, name, dir, false).unwrap();
    files.private
}

#[test]
fn connection_refused_names_the_request_and_the_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let key = author_files(dir.path(), &KeyPair::generate(), "alice");
    let ws = WebServer::init().unwrap();
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!("https://127.0.0.1:{port}");
    let out = whoami(&server, &ws.ca_pem(), &key, dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let chain = line_after(&stderr, "rjs-sign: error: ");
    assert!(
        chain.starts_with(&format!("connecting to {server}/api/v1/whoami: ")),
        "{chain}"
    );
    assert!(
        chain.to_lowercase().contains("connection refused"),
        "{chain}"
    );
    assert_eq!(
        chain.to_lowercase().matches("connection refused").count(),
        1,
        "{chain}"
    );
    each_cause_once(chain);
}

#[test]
fn a_bad_bundle_names_the_rule_and_the_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate();
    let (mut bundle, _) =
        rjs_signer::pack_dir(&sample("hello"), &key, "alice", rjs_signer::unix_now()).unwrap();
    // One byte in the middle changed: whatever rule catches it, its reason is said once.
    let at = bundle.len() / 2;
    bundle[at] ^= 0x01;
    let path = dir.path().join("bad.rjs");
    std::fs::write(&path, &bundle).unwrap();

    let out = run(Command::new(bin("rjs-sign")).arg("verify").arg(&path));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let why = line_after(&stdout, "REFUSED ");
    each_cause_once(why);

    // A job folder whose manifest does not parse: the pack error names the folder, the file
    // and the parser's reason, each once.
    let job = dir.path().join("job");
    std::fs::create_dir(&job).unwrap();
    std::fs::write(job.join("manifest.json"), b"{\"format\": 1, \"name\": ").unwrap();
    let keyfile = author_files(dir.path(), &key, "alice");
    let out = run(Command::new(bin("rjs-sign"))
        .arg("pack")
        .arg(&job)
        .arg("--key")
        .arg(&keyfile)
        .arg("-o")
        .arg(dir.path().join("out.rjs")));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let chain = line_after(&stderr, "rjs-sign: error: ");
    assert!(chain.starts_with("packing "), "{chain}");
    assert!(chain.contains("manifest.json"), "{chain}");
    each_cause_once(chain);
}

#[test]
fn an_untrusted_author_is_told_why_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut ws = WebServer::init().unwrap();
    ws.start().unwrap();
    // A key the web server has never enrolled.
    let stranger = author_files(dir.path(), &KeyPair::generate(), "mallory");
    let out = whoami(&ws.url(""), &ws.ca_pem(), &stranger, dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let chain = line_after(&stderr, "rjs-sign: error: ");
    assert!(chain.starts_with("GET https://"), "{chain}");
    assert!(chain.contains("server refused: "), "{chain}");
    assert!(chain.contains("(unknown-author)"), "{chain}");
    each_cause_once(chain);

    // A bundle signed by an author the verifier does not trust.
    let key = KeyPair::generate();
    let (bundle, _) =
        rjs_signer::pack_dir(&sample("hello"), &key, "alice", rjs_signer::unix_now()).unwrap();
    let path = dir.path().join("hello.rjs");
    std::fs::write(&path, &bundle).unwrap();
    let other = KeyPair::generate().public().to_base64();
    let out = run(Command::new(bin("rjs-sign"))
        .arg("verify")
        .arg(&path)
        .args(["--trust", &other]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let why = line_after(&stdout, "REFUSED untrusted-signer: ");
    assert!(why.contains("not one of the 1 trusted key(s)"), "{why}");
    each_cause_once(why);
}
