//! The `rjs-sign` binary, end to end: keygen, pack, verify, inspect, and how each fails.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use rjs_signer::bundle::hex;
use rjs_signer::{KeyPair, PublicKey, VerifyLimits};
use sha2::{Digest, Sha256};

/// Runs `rjs-sign` with `args`, expects exit 1 and a JSON refusal under `rule`, and
/// returns the JSON.
#[track_caller]
fn json_refusal(args: &[&dyn AsRef<std::ffi::OsStr>], rule: &str) -> serde_json::Value {
    let o = rjs_sign(args);
    assert_exit(&o, 1);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["rule"], rule);
    v
}

fn is_fingerprint(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 8
        && groups.iter().all(|g| {
            g.len() == 4
                && g.chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        })
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

struct Keys {
    private: PathBuf,
    public: PathBuf,
    fingerprint: String,
}

/// `rjs-sign keygen --name NAME --dir DIR`, checked.
fn keygen(dir: &Path, name: &str) -> Keys {
    let out = stdout_of(&[&"keygen", &"--name", &name, &"--dir", &dir], 0);
    let fingerprint = out
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint: "))
        .unwrap_or_else(|| panic!("no fingerprint line in {out:?}"))
        .trim()
        .to_owned();
    Keys {
        private: dir.join(format!("{name}.key")),
        public: dir.join(format!("{name}.pub")),
        fingerprint,
    }
}

/// `rjs-sign pack JOB --key KEY -o OUT`, checked.
fn pack(job: &Path, key: &Path, out: &Path) -> Output {
    let o = rjs_sign(&[&"pack", &job, &"--key", &key, &"-o", &out]);
    assert_exit(&o, 0);
    o
}

fn hello_dir() -> PathBuf {
    sample_job_dirs()
        .into_iter()
        .find(|(n, _)| n == "hello")
        .unwrap()
        .1
}

/// A job folder with a small module and the given manifest text.
fn job_folder(root: &Path, manifest: &str) -> PathBuf {
    let job = root.join("job");
    fs::create_dir_all(&job).unwrap();
    fs::write(job.join("manifest.json"), manifest).unwrap();
    fs::write(job.join("job.wasm"), wasm_module()).unwrap();
    job
}

// ---------------------------------------------------------------------------------------
// keygen

#[test]
fn keygen_writes_a_private_key_0600_a_public_key_and_prints_the_fingerprint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    let k = keygen(&dir, "alice");
    assert!(is_fingerprint(&k.fingerprint), "{:?}", k.fingerprint);
    assert_eq!(k.fingerprint.len(), 39);
    assert_eq!(mode(&k.private), 0o600);
    assert_eq!(listing(&dir), ["alice.key", "alice.pub"]);

    // The files hold one key pair, and the printed fingerprint is its fingerprint.
    let pair = KeyPair::load(&k.private).unwrap();
    let (public, name) = PublicKey::parse(&fs::read_to_string(&k.public).unwrap()).unwrap();
    assert_eq!(pair.public(), public);
    assert_eq!(name.as_deref(), Some("alice"));
    assert_eq!(public.fingerprint().to_string(), k.fingerprint);
    let pem = fs::read_to_string(&k.private).unwrap();
    assert_starts(&pem, "-----BEGIN PRIVATE KEY-----");

    // Two keys are different keys.
    let k2 = keygen(&dir, "bob");
    assert_ne!(k.fingerprint, k2.fingerprint);
}

#[test]
fn keygen_refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let k = keygen(dir, "alice");
    let old_private = fs::read(&k.private).unwrap();
    let old_public = fs::read(&k.public).unwrap();

    let o = rjs_sign(&[&"keygen", &"--name", &"alice", &"--dir", &dir]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert!(stderr(&o).contains("alice.key"), "{}", stderr(&o));
    assert_eq!(
        fs::read(&k.private).unwrap(),
        old_private,
        "old key unchanged"
    );
    assert_eq!(fs::read(&k.public).unwrap(), old_public);
    assert_eq!(
        listing(dir),
        ["alice.key", "alice.pub"],
        "no temporary files left"
    );

    // Only the public file existing is enough to refuse, and nothing is written then.
    fs::remove_file(&k.private).unwrap();
    let o = rjs_sign(&[&"keygen", &"--name", &"alice", &"--dir", &dir]);
    assert_exit(&o, 2);
    assert_eq!(listing(dir), ["alice.pub"]);
    fs::write(&k.private, &old_private).unwrap();
    fs::set_permissions(&k.private, fs::Permissions::from_mode(0o600)).unwrap();

    // With --force: a new key, still 0600.
    let o = rjs_sign(&[&"keygen", &"--name", &"alice", &"--dir", &dir, &"--force"]);
    assert_exit(&o, 0);
    assert_ne!(fs::read(&k.private).unwrap(), old_private);
    assert_ne!(fs::read(&k.public).unwrap(), old_public);
    assert_eq!(mode(&k.private), 0o600);
    let new_fp = KeyPair::load(&k.private)
        .unwrap()
        .public()
        .fingerprint()
        .to_string();
    assert_ne!(new_fp, k.fingerprint);
    assert_stdout_has(&o, &new_fp);
    assert_eq!(listing(dir), ["alice.key", "alice.pub"]);
}

#[test]
fn keygen_refuses_a_bad_name() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["../evil", "a b", "-x", ""] {
        let o = rjs_sign(&[&"keygen", &format!("--name={name}"), &"--dir", &tmp.path()]);
        assert_exit(&o, 2);
        assert!(
            stderr(&o).contains("invalid key name"),
            "{name}: {}",
            stderr(&o)
        );
    }
    assert!(listing(tmp.path()).is_empty());
}

// ---------------------------------------------------------------------------------------
// pack and verify

#[test]
fn pack_then_verify_every_sample_job() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keygen(tmp.path(), "alice");
    let jobs = sample_job_dirs();
    assert!(jobs.len() >= SAMPLE_JOBS.len());
    for (job, dir) in jobs {
        let out = tmp.path().join(format!("{job}.rjs"));
        let o = pack(&dir, &k.private, &out);
        let said = stdout(&o);
        assert_has(&said, &k.fingerprint);
        let bytes = fs::read(&out).unwrap();
        assert!(
            said.contains(&hex(&rjs_signer::bundle_id(&bytes))),
            "pack prints the bundle id: {said}"
        );
        assert_eq!(mode(&out), 0o644);

        let said = stdout_of(&[&"verify", &out], 0);
        assert_eq!(said.lines().count(), 1, "one line: {said:?}");
        let manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        let name = manifest["name"].as_str().unwrap();
        assert_starts(&said, &format!("OK {name}: signed by alice "));
        assert!(said.contains(&format!("({})", k.fingerprint)), "{said}");

        // What was signed is exactly the job folder's files.
        let v = rjs_signer::verify_file(&out, &VerifyLimits::default()).unwrap();
        let entry = manifest["entry"].as_str().unwrap();
        assert_eq!(v.module(), &fs::read(dir.join(entry)).unwrap()[..], "{job}");
        assert_eq!(
            v.manifest_bytes(),
            &fs::read(dir.join("manifest.json")).unwrap()[..]
        );
    }
}

#[test]
fn signer_name_defaults_to_the_key_name_and_can_be_set() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keygen(tmp.path(), "carol.lab");
    let out = tmp.path().join("h.rjs");
    pack(&hello_dir(), &k.private, &out);
    let pack_as = |name: &str| {
        rjs_sign(&[
            &"pack",
            &hello_dir(),
            &"--key",
            &k.private,
            &"-o",
            &out,
            &"--signer-name",
            &name,
        ])
    };
    let o = rjs_sign(&[&"verify", &out]);
    assert_stdout_has(&o, "signed by carol.lab ");

    let o = pack_as("dave");
    assert_exit(&o, 0);
    let o = rjs_sign(&[&"verify", &out]);
    assert_stdout_has(&o, "signed by dave ");

    let o = pack_as("evil\nOK");
    assert_exit(&o, 2);
}

#[test]
fn verify_with_trust() {
    let tmp = tempfile::tempdir().unwrap();
    let alice = keygen(tmp.path(), "alice");
    let bob = keygen(tmp.path(), "bob");
    let out = tmp.path().join("h.rjs");
    pack(&hello_dir(), &alice.private, &out);

    // The right key: as a file, as a line, as bare base64, and among others.
    let line = fs::read_to_string(&alice.public).unwrap();
    let b64 = line.split_whitespace().nth(1).unwrap().to_owned();
    for trust in [
        vec![alice.public.as_os_str().to_owned()],
        vec![line.trim().into()],
        vec![b64.clone().into()],
        vec![
            bob.public.as_os_str().to_owned(),
            alice.public.as_os_str().to_owned(),
        ],
    ] {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"verify", &out];
        for t in &trust {
            args.push(&"--trust");
            args.push(t);
        }
        let o = rjs_sign(&args);
        assert_exit(&o, 0);
        assert_stdout_starts(&o, "OK hello: signed by alice");
    }

    // Another key: refused as untrusted (exit 1), naming the actual signer.
    let said = stdout_of(&[&"verify", &out, &"--trust", &bob.public], 1);
    assert_eq!(said.lines().count(), 1, "{said}");
    assert_starts(&said, "REFUSED untrusted-signer: ");
    assert_has(&said, &alice.fingerprint);

    json_refusal(
        &[&"verify", &out, &"--trust", &bob.public, &"--json"],
        "untrusted-signer",
    );

    // An unreadable trust argument is an error (2), not a verdict.
    let o = rjs_sign(&[&"verify", &out, &"--trust", &"not-a-key"]);
    assert_exit(&o, 2);
}

#[test]
fn verify_json_output() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keygen(tmp.path(), "alice");
    let out = tmp.path().join("h.rjs");
    pack(&hello_dir(), &k.private, &out);
    let o = rjs_sign(&[&"verify", &out, &"--json"]);
    assert_exit(&o, 0);
    assert_eq!(stdout(&o).lines().count(), 1);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["name"], "hello");
    assert_eq!(v["signer"]["name"], "alice");
    assert_eq!(v["signer"]["fingerprint"], k.fingerprint.as_str());
    let pk = fs::read_to_string(&k.public).unwrap();
    assert_eq!(
        v["signer"]["public_key"],
        pk.split_whitespace().nth(1).unwrap()
    );
    assert!(v["signer"]["signed_at"].as_u64().unwrap() > 1_600_000_000);
    let bytes = fs::read(&out).unwrap();
    assert_eq!(v["bundle_id"], hex(&Sha256::digest(&bytes)));
}

/// Junk after a deflated entry's final block, inside its signed stored size: `rjs-sign
/// verify` refuses the bundle as `corrupt-entry`, naming the entry.
#[test]
fn verify_refuses_data_after_a_deflate_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let mut padded = Part::deflated("data/input.txt", &input_data());
    padded.stored.extend_from_slice(b"junk");
    let parts = vec![
        padded,
        Part::stored("job.wasm", &wasm_module()),
        Part::stored(
            rjs_signer::paths::MANIFEST,
            &manifest_json("job.wasm", &["data/input.txt"]),
        ),
    ];
    let out = tmp.path().join("padded.rjs");
    fs::write(&out, sign_parts(&parts, &key(1))).unwrap();
    let v = json_refusal(&[&"verify", &out, &"--json"], "corrupt-entry");
    assert_eq!(v["entry"], "data/input.txt");
    assert!(v.to_string().contains("trailing data"), "{v}");
}

/// The format allows any u64 `signed_at`; no tool may panic on one past year 9999.
#[test]
fn a_signing_time_after_the_year_9999_is_shown_not_panicked_on() {
    let tmp = tempfile::tempdir().unwrap();
    for at in [253_402_300_800u64, u64::MAX] {
        let (bytes, _) = rjs_signer::pack_dir(&hello_dir(), &key(2), "carol", at).unwrap();
        let out = tmp.path().join(format!("{at}.rjs"));
        fs::write(&out, &bytes).unwrap();
        let said = stdout_of(&[&"verify", &out], 0);
        assert_has(&said, &format!("{at} s after 1970 (after the year 9999)"));
        let text = stdout_of(&[&"inspect", &out], 0);
        assert_has(&text, "verdict   VALID");
        assert_has(&text, "(after the year 9999)");
        let json: serde_json::Value =
            serde_json::from_str(&stdout_of(&[&"verify", &out, &"--json"], 0)).unwrap();
        assert_eq!(json["signer"]["signed_at"], at);
    }
    // The fuzz seeds hold such a bundle, so that fuzzing reaches this path.
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/signed-after-9999.rjs");
    if std::env::var_os("RJS_WRITE_FUZZ_SEED").is_some() {
        let (bytes, _) =
            rjs_signer::pack_dir(&hello_dir(), &key(2), "carol", 253_402_300_800).unwrap();
        fs::write(&seed, bytes).unwrap();
    }
    let v = rjs_signer::verify_bytes(&fs::read(&seed).unwrap(), &VerifyLimits::default()).unwrap();
    assert!(v.signer().signed_at >= 253_402_300_800);
}

#[test]
fn inspect_shows_manifest_entries_signer_and_verdict() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keygen(tmp.path(), "alice");
    let out = tmp.path().join("h.rjs");
    pack(&hello_dir(), &k.private, &out);
    let bytes = fs::read(&out).unwrap();
    let v = rjs_signer::verify_bytes(&bytes, &VerifyLimits::default()).unwrap();
    assert_eq!(v.entries().len(), 2);

    let text = stdout_of(&[&"inspect", &out], 0);
    assert_has(&text, "verdict   VALID");
    assert_has(&text, &format!("signer    alice {}", k.fingerprint));
    assert!(text.contains(&hex(&Sha256::digest(&bytes))), "{text}");
    assert!(
        text.contains("\"name\": \"hello\""),
        "manifest shown: {text}"
    );
    assert!(
        text.contains("\"entry\": \"hello.wasm\""),
        "manifest shown: {text}"
    );
    for e in v.entries() {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{} ", e.name)))
            .unwrap_or_else(|| panic!("no line for {}: {text}", e.name));
        assert_has(line, &format!(" {} B ", e.size));
        assert_has(line, &format!(" {} B stored", e.stored_size));
        assert!(
            line.contains(&format!("sha256:{}", hex(&e.stored_sha256))),
            "{line}"
        );
    }

    let o = rjs_sign(&[&"inspect", &out, &"--json"]);
    assert_exit(&o, 0);
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["valid"], true);
    assert_eq!(j["size"], bytes.len());
    assert_eq!(j["bundle_id"], hex(&Sha256::digest(&bytes)));
    assert_eq!(j["manifest"]["name"], "hello");
    assert_eq!(j["manifest"]["entry"], "hello.wasm");
    assert_eq!(j["signer"]["name"], "alice");
    assert_eq!(j["signer"]["fingerprint"], k.fingerprint.as_str());
    assert_eq!(j["module_sha256"], hex(v.module_sha256()));
    let entries = j["entries"].as_array().unwrap();
    assert_eq!(entries.len(), v.entries().len());
    for (je, e) in entries.iter().zip(v.entries()) {
        assert_eq!(je["name"], e.name.as_str());
        assert_eq!(je["size"], e.size);
        assert_eq!(je["stored_size"], e.stored_size);
        assert_eq!(je["method"], e.method.as_str());
        assert_eq!(je["sha256"], hex(&e.stored_sha256));
    }
}

/// Packs hello and flips one byte inside the module's stored data.
fn tampered_hello(tmp: &Path) -> PathBuf {
    let k = keygen(tmp, "alice");
    let out = tmp.join("h.rjs");
    pack(&hello_dir(), &k.private, &out);
    let mut bytes = fs::read(&out).unwrap();
    let cd = rjs_signer::zipread::read_central_directory(&bytes, 100).unwrap();
    let e = cd.iter().find(|e| e.name == b"hello.wasm").unwrap();
    let at = e.local_offset as usize + 30 + e.name.len() + e.stored_size as usize / 2;
    bytes[at] ^= 0x10;
    let bad = tmp.join("tampered.rjs");
    fs::write(&bad, bytes).unwrap();
    bad
}

#[test]
fn tampered_bundle_is_refused_naming_rule_and_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tampered_hello(tmp.path());

    let said = stdout_of(&[&"verify", &bad], 1);
    assert_eq!(said.lines().count(), 1, "{said}");
    assert_starts(&said, "REFUSED changed-entry (hello.wasm): ");
    assert_has(&said, "\"hello.wasm\"");

    let v = json_refusal(&[&"verify", &bad, &"--json"], "changed-entry");
    assert_eq!(v["entry"], "hello.wasm");

    // inspect reports the verdict and what the archive claims, marked unverified.
    let text = stdout_of(&[&"inspect", &bad], 1);
    assert_has(&text, "verdict   REFUSED changed-entry (hello.wasm): ");
    assert_has(&text, "(unverified)");
    let v = json_refusal(&[&"inspect", &bad, &"--json"], "changed-entry");
    assert_eq!(v["entry"], "hello.wasm");
    assert_eq!(v["unverified_entries"].as_array().unwrap().len(), 3);
}

#[test]
fn verify_text_refusal_names_the_entry_for_every_rule_that_has_one() {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let tmp = tempfile::tempdir().unwrap();
    let other = key(2).public();
    let manifest =
        |text: &str| build(&[("manifest.json", text.into()), ("job.wasm", wasm_module())]);
    let mut bad_name = explode(&valid_bundle());
    let sig = bad_name.pop().unwrap();
    bad_name.insert(0, Part::stored("A (x)", b"x"));
    bad_name.push(sig);
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "bad-signature",
            "rjs-signature.json",
            edit_signature(&valid_bundle(), |d| {
                d.public_key = other.to_base64();
                d.fingerprint = other.fingerprint().to_string();
            }),
        ),
        (
            "signature-length",
            "rjs-signature.json",
            edit_signature(&valid_bundle(), |d| d.signature = b64(&[7; 63])),
        ),
        (
            "bad-key",
            "rjs-signature.json",
            edit_signature(&valid_bundle(), |d| d.public_key = b64(&[1; 31])),
        ),
        (
            "fingerprint-mismatch",
            "rjs-signature.json",
            edit_signature(&valid_bundle(), |d| {
                d.fingerprint = other.fingerprint().to_string()
            }),
        ),
        (
            "signature-algorithm",
            "rjs-signature.json",
            edit_signature(&valid_bundle(), |d| d.algorithm = "rsa".into()),
        ),
        (
            "unknown-format-version",
            "manifest.json",
            manifest(r#"{"format":2,"name":"j","entry":"job.wasm"}"#),
        ),
        (
            "unknown-manifest-field",
            "manifest.json",
            manifest(r#"{"format":1,"name":"j","entry":"job.wasm","colour":"blue"}"#),
        ),
        (
            "invalid-manifest-json",
            "manifest.json",
            manifest(r#"{"format":1,"#),
        ),
        // A refused name is quoted, so that its brackets and spaces cannot blur the line.
        ("bad-name", "\"A (x)\"", relayout(&bad_name)),
    ];
    for (rule, shown, bytes) in cases {
        let p = tmp.path().join(format!("{rule}.rjs"));
        fs::write(&p, &bytes).unwrap();
        let said = stdout_of(&[&"verify", &p], 1);
        assert_eq!(said.lines().count(), 1, "{said}");
        let prefix = format!("REFUSED {rule} ({shown}): ");
        assert!(said.starts_with(&prefix), "{rule}: {said}");
        assert!(said.len() > prefix.len() + 1, "a message follows: {said}");

        let v = json_refusal(&[&"verify", &p, &"--json"], rule);
        assert_eq!(v["entry"], shown.trim_matches('"'), "{rule}");
        let o = rjs_sign(&[&"inspect", &p]);
        assert_stdout_has(&o, &format!("verdict   {prefix}"));
    }
}

#[test]
fn verify_of_a_missing_file_is_an_error_not_a_verdict() {
    let tmp = tempfile::tempdir().unwrap();
    let o = rjs_sign(&[&"verify", &tmp.path().join("nope.rjs")]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("nope.rjs"), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
}

#[test]
fn verify_of_a_non_bundle_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("x.rjs");
    fs::write(&p, b"not a zip").unwrap();
    let o = rjs_sign(&[&"verify", &p]);
    assert_exit(&o, 1);
    assert_stdout_starts(&o, "REFUSED not-a-bundle-zip: ");
}

// ---------------------------------------------------------------------------------------
// pack failures

#[test]
fn pack_refuses_a_key_readable_by_others() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keygen(tmp.path(), "alice");
    fs::set_permissions(&k.private, fs::Permissions::from_mode(0o644)).unwrap();
    let out = tmp.path().join("h.rjs");
    let o = rjs_sign(&[&"pack", &hello_dir(), &"--key", &k.private, &"-o", &out]);
    assert_exit(&o, 2);
    let err = stderr(&o);
    assert_has(&err, "chmod 600");
    assert_has(&err, "alice.key");
    assert!(!out.exists());
    // Group-readable only is refused too; 0400 is fine.
    fs::set_permissions(&k.private, fs::Permissions::from_mode(0o640)).unwrap();
    assert_exit(
        &rjs_sign(&[&"pack", &hello_dir(), &"--key", &k.private, &"-o", &out]),
        2,
    );
    fs::set_permissions(&k.private, fs::Permissions::from_mode(0o400)).unwrap();
    pack(&hello_dir(), &k.private, &out);
}

fn effective_uid() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[test]
fn pack_into_a_read_only_directory_fails_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keygen(tmp.path(), "alice");
    let ro = tmp.path().join("ro");
    fs::create_dir(&ro).unwrap();
    let out = ro.join("out.rjs");

    let o = if effective_uid() == 0 {
        // Root ignores permission bits: make the directory read-only for real with a
        // read-only bind mount in a private mount namespace.
        if std::env::var_os("RJS_TEST_NO_UNSHARE").is_some() {
            eprintln!("skipped: RJS_TEST_NO_UNSHARE is set and we run as root");
            return;
        }
        let script = r#"mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 97
if touch "$1/probe" 2>/dev/null; then exit 98; fi
shift; exec "$@""#;
        let o = Command::new("unshare")
            .args(["--mount", "sh", "-c", script, "sh"])
            .arg(&ro)
            .arg(BIN)
            .arg("pack")
            .arg(hello_dir())
            .arg("--key")
            .arg(&k.private)
            .arg("-o")
            .arg(&out)
            .output()
            .expect("running unshare");
        assert_ne!(
            o.status.code(),
            Some(97),
            "could not make a read-only bind mount as root (unshare --mount needs \
             CAP_SYS_ADMIN; set RJS_TEST_NO_UNSHARE=1 to skip): {}",
            stderr(&o)
        );
        assert_ne!(
            o.status.code(),
            Some(98),
            "the bind mount was not read-only"
        );
        o
    } else {
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
        let o = rjs_sign(&[&"pack", &hello_dir(), &"--key", &k.private, &"-o", &out]);
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
        o
    };
    assert_exit(&o, 2);
    let err = stderr(&o);
    assert_starts(&err, "rjs-sign: error: writing the bundle");
    assert_has(&err, "out.rjs");
    assert!(
        err.contains("Read-only file system") || err.contains("Permission denied"),
        "{err}"
    );
    assert_eq!(listing(&ro), Vec::<String>::new(), "nothing left behind");
}

#[test]
fn pack_onto_an_existing_directory_fails_and_leaves_no_temporary_file() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keygen(tmp.path(), "alice");
    let work = tmp.path().join("work");
    let target = work.join("bundle.rjs");
    fs::create_dir_all(&target).unwrap();
    fs::write(target.join("keep.txt"), b"keep").unwrap();
    for dir in [target.clone(), work.join("empty.rjs")] {
        fs::create_dir_all(&dir).unwrap();
        let before = listing(&work);
        let o = rjs_sign(&[&"pack", &hello_dir(), &"--key", &k.private, &"-o", &dir]);
        assert_exit(&o, 2);
        let err = stderr(&o);
        assert_starts(&err, "rjs-sign: error: writing the bundle");
        assert_has(&err, &dir.display().to_string());
        assert_eq!(listing(&work), before, "no temporary file left");
        assert!(dir.is_dir());
    }
    assert_eq!(listing(&target), ["keep.txt"]);
    assert_eq!(fs::read(target.join("keep.txt")).unwrap(), b"keep");
}

#[test]
fn pack_replaces_an_existing_bundle_atomically() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keygen(tmp.path(), "alice");
    let out_dir = tmp.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("h.rjs");
    fs::write(&out, b"old").unwrap();
    pack(&hello_dir(), &k.private, &out);
    assert_exit(&rjs_sign(&[&"verify", &out]), 0);
    assert_eq!(listing(&out_dir), ["h.rjs"]);
}

#[test]
fn pack_fails_naming_a_missing_module() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keygen(tmp.path(), "alice");
    let job = job_folder(
        tmp.path(),
        r#"{"format":1,"name":"j","entry":"missing-module.wasm"}"#,
    );
    let out = tmp.path().join("j.rjs");
    let o = rjs_sign(&[&"pack", &job, &"--key", &k.private, &"-o", &out]);
    assert_exit(&o, 2);
    let err = stderr(&o);
    assert_has(&err, "missing-module.wasm");
    assert_has(&err, "No such file");
    assert!(!out.exists());
}

#[test]
fn pack_fails_naming_an_unknown_manifest_field() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keygen(tmp.path(), "alice");
    let job = job_folder(
        tmp.path(),
        r#"{"format":1,"name":"j","entry":"job.wasm","colour":"blue"}"#,
    );
    let out = tmp.path().join("j.rjs");
    let o = rjs_sign(&[&"pack", &job, &"--key", &k.private, &"-o", &out]);
    assert_exit(&o, 2);
    let err = stderr(&o);
    assert_has(&err, "unknown field `colour`");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(err.matches("colour").count(), 1, "said once: {err}");
    assert!(!out.exists());
}

#[test]
fn pack_refuses_a_module_that_is_not_wasm_or_not_a_regular_file() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keygen(tmp.path(), "alice");
    let job = job_folder(tmp.path(), r#"{"format":1,"name":"j","entry":"job.wasm"}"#);
    let out = tmp.path().join("j.rjs");
    // A valid job first, so the refusals below are about the one change each makes.
    pack(&job, &k.private, &out);
    fs::remove_file(&out).unwrap();

    fs::write(job.join("job.wasm"), b"#!/bin/sh\n").unwrap();
    let o = rjs_sign(&[&"pack", &job, &"--key", &k.private, &"-o", &out]);
    assert_exit(&o, 2);
    assert!(
        stderr(&o).contains("not a WebAssembly core module"),
        "{}",
        stderr(&o)
    );

    fs::write(tmp.path().join("real.wasm"), wasm_module()).unwrap();
    fs::remove_file(job.join("job.wasm")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("real.wasm"), job.join("job.wasm")).unwrap();
    let o = rjs_sign(&[&"pack", &job, &"--key", &k.private, &"-o", &out]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("not a regular file"), "{}", stderr(&o));
    assert!(!out.exists());
}
