//! Helpers shared by the signer's integration tests: deterministic keys, a small valid
//! bundle, and tools to take a bundle apart and lay it out again (so tests can craft
//! bundles that break exactly one rule).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

use rjs_signer::bundle::{BUNDLE_DOMAIN, SignatureDoc, SignedEntry};
use rjs_signer::paths::SIGNATURE;
use rjs_signer::zipfmt::{self, EntryMeta, LOCAL_HEADER_LEN, Method};
use rjs_signer::zipread;
use rjs_signer::{
    BundleBuilder, KeyPair, VerifiedBundle, VerifyError, VerifyLimits, verify_bytes, verify_signed,
};

pub const SIGNER: &str = "alice";
pub const SIGNED_AT: u64 = 1_700_000_000;

/// A deterministic key; different `n`, different key.
pub fn key(n: u8) -> KeyPair {
    KeyPair::from_secret([n; 32])
}

/// A tiny but well-formed WebAssembly core module: the header plus one custom section.
pub fn wasm_module() -> Vec<u8> {
    rjs_signer::wasm::empty_command(b"RJS test module")
}

pub fn manifest_json(entry: &str, inputs: &[&str]) -> Vec<u8> {
    serde_json::to_vec_pretty(&serde_json::json!({
        "format": 1,
        "name": "test-job",
        "entry": entry,
        "inputs": inputs,
        "args": ["world"],
        "tasks": 3,
    }))
    .unwrap()
}

/// A compressible input (so the small bundle has a deflated entry as well as stored ones).
pub fn input_data() -> Vec<u8> {
    b"line of input data, repeated so that it deflates\n".repeat(8)
}

/// A small signed bundle that verifies: manifest.json, job.wasm (stored) and
/// data/input.txt (deflated).
pub fn valid_bundle() -> Vec<u8> {
    let mut b = BundleBuilder::new();
    b.add(
        "manifest.json",
        manifest_json("job.wasm", &["data/input.txt"]),
    )
    .unwrap();
    b.add("job.wasm", wasm_module()).unwrap();
    b.add("data/input.txt", input_data()).unwrap();
    b.sign(&key(1), SIGNER, SIGNED_AT).unwrap()
}

/// Builds and signs a bundle from (name, bytes) pairs with the library's builder.
pub fn build(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = BundleBuilder::new();
    for (name, data) in entries {
        b.add(name, data.clone()).unwrap();
    }
    b.sign(&key(1), SIGNER, SIGNED_AT).unwrap()
}

pub fn verify(bytes: &[u8]) -> Result<VerifiedBundle, VerifyError> {
    verify_bytes(bytes, &VerifyLimits::default())
}

/// The error a bundle is refused with (panics if it verifies).
pub fn refusal(bytes: &[u8]) -> VerifyError {
    refusal_with(bytes, &VerifyLimits::default())
}

/// The error a bundle is refused with under `limits` (panics if it verifies). Also checks
/// that [`verify_signed`] (steps 1-10) agrees: it refuses with the same rule, or, if it
/// accepts, the refusal came from extraction (a module or input that does not inflate to its
/// signed size and CRC-32, or a module the sandbox could not run).
pub fn refusal_with(bytes: &[u8], limits: &VerifyLimits) -> VerifyError {
    let full = match verify_bytes(bytes, limits) {
        Ok(b) => panic!(
            "bundle was accepted but should have been refused (manifest {:?})",
            b.manifest().name
        ),
        Err(e) => e,
    };
    match verify_signed(bytes, limits) {
        Err(e) => assert_eq!(
            (e.rule(), e.entry()),
            (full.rule(), full.entry()),
            "verify_signed and verify_bytes disagree: {e} / {full}"
        ),
        Ok(signed) => {
            assert!(
                matches!(
                    full,
                    VerifyError::Corrupt { .. } | VerifyError::BadModule { .. }
                ),
                "verify_signed accepted what verify_bytes refused as {}: {full}",
                full.rule()
            );
            let name = full.entry().unwrap();
            assert!(
                name == signed.manifest().entry || signed.manifest().is_input_file(name),
                "only the module and inputs are left to extraction, not {name:?}"
            );
        }
    }
    full
}

/// Asserts the refusal's rule (and entry, if given), returning the error.
#[track_caller]
pub fn assert_refused(bytes: &[u8], rule: &str, entry: Option<&str>) -> VerifyError {
    let e = refusal(bytes);
    assert_eq!(e.rule(), rule, "wrong rule; error was: {e}");
    if let Some(entry) = entry {
        assert_eq!(e.entry(), Some(entry), "wrong entry; error was: {e}");
    }
    e
}

/// One entry of a bundle, as it sits in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    pub method: Method,
    pub crc32: u32,
    pub size: u64,
    /// The bytes as stored (compressed for deflate).
    pub stored: Vec<u8>,
}

impl Part {
    /// A stored entry with correct CRC and sizes.
    pub fn stored(name: &str, data: &[u8]) -> Part {
        Part {
            name: name.to_owned(),
            method: Method::Stored,
            crc32: crc32fast::hash(data),
            size: data.len() as u64,
            stored: data.to_vec(),
        }
    }

    /// A deflated entry with correct CRC and sizes.
    pub fn deflated(name: &str, data: &[u8]) -> Part {
        Part {
            name: name.to_owned(),
            method: Method::Deflate,
            crc32: crc32fast::hash(data),
            size: data.len() as u64,
            stored: zipfmt::deflate(data),
        }
    }

    pub fn meta(&self) -> EntryMeta<'_> {
        EntryMeta {
            name: &self.name,
            method: self.method,
            crc32: self.crc32,
            size: self.size,
            stored_size: self.stored.len() as u64,
        }
    }
}

/// Takes a canonical bundle apart (panics on anything else).
pub fn explode(bytes: &[u8]) -> Vec<Part> {
    let cd = zipread::read_central_directory(bytes, 10_000).expect("a readable zip");
    cd.iter()
        .map(|e| {
            let start = e.local_offset as usize + LOCAL_HEADER_LEN as usize + e.name.len();
            Part {
                name: String::from_utf8(e.name.to_vec()).unwrap(),
                method: Method::from_code(e.method).unwrap(),
                crc32: e.crc32,
                size: e.size,
                stored: bytes[start..start + e.stored_size as usize].to_vec(),
            }
        })
        .collect()
}

/// Lays entries out in the canonical layout, in the given order, without checking anything.
pub fn relayout(parts: &[Part]) -> Vec<u8> {
    let entries: Vec<(EntryMeta<'_>, &[u8])> =
        parts.iter().map(|p| (p.meta(), &p.stored[..])).collect();
    let mut out = Vec::new();
    zipfmt::write_zip(&mut out, &entries).unwrap();
    out
}

/// The parsed signature entry of exploded parts (the last part).
pub fn signature_doc(parts: &[Part]) -> SignatureDoc {
    let last = parts.last().unwrap();
    assert_eq!(last.name, SIGNATURE);
    serde_json::from_slice(&last.stored).unwrap()
}

/// Replaces the signature entry's bytes (fixing its header's CRC and sizes).
pub fn set_signature_bytes(parts: &mut [Part], json: Vec<u8>) {
    let last = parts.last_mut().unwrap();
    assert_eq!(last.name, SIGNATURE);
    *last = Part::stored(SIGNATURE, &json);
}

/// Replaces the signature entry with `doc` in canonical (compact) form.
pub fn set_signature_doc(parts: &mut [Part], doc: &SignatureDoc) {
    set_signature_bytes(parts, serde_json::to_vec(doc).unwrap());
}

/// Applies `edit` to the signature document of `bundle` and lays the bundle out again.
pub fn edit_signature(bundle: &[u8], edit: impl FnOnce(&mut SignatureDoc)) -> Vec<u8> {
    let mut parts = explode(bundle);
    let mut doc = signature_doc(&parts);
    edit(&mut doc);
    set_signature_doc(&mut parts, &doc);
    relayout(&parts)
}

/// The listing entry the library would write for a part.
pub fn signed_entry(p: &Part) -> SignedEntry {
    SignedEntry::new(&p.meta(), &p.stored)
}

/// Signs arbitrary parts exactly as the library does, without any of its checks (so a test
/// can make a correctly signed bundle that is wrong in another way), and lays it out.
pub fn sign_parts(parts: &[Part], key: &KeyPair) -> Vec<u8> {
    sign_parts_as(parts, key, BUNDLE_DOMAIN, SIGNER, SIGNED_AT)
}

/// [`sign_parts`] under any domain, signer name and signing time, with the signature entry
/// last.
pub fn sign_parts_as(
    parts: &[Part],
    key: &KeyPair,
    domain: &str,
    signer: &str,
    signed_at: u64,
) -> Vec<u8> {
    let listing = parts.iter().map(signed_entry).collect();
    let doc = SignatureDoc::sign(key, domain, signer, signed_at, listing);
    let mut all = parts.to_vec();
    all.push(Part::stored(SIGNATURE, &serde_json::to_vec(&doc).unwrap()));
    relayout(&all)
}

/// Offset of the `index`th central directory header.
pub fn central_header_offset(bytes: &[u8], index: usize) -> usize {
    let eocd = bytes.len() - zipfmt::EOCD_LEN as usize;
    let mut at = u32::from_le_bytes(bytes[eocd + 16..eocd + 20].try_into().unwrap()) as usize;
    for _ in 0..index {
        let u16_at = |o: usize| u16::from_le_bytes([bytes[at + o], bytes[at + o + 1]]) as usize;
        at += zipfmt::CENTRAL_HEADER_LEN as usize + u16_at(28) + u16_at(30) + u16_at(32);
    }
    assert_eq!(&bytes[at..at + 4], b"PK\x01\x02");
    at
}

/// Overwrites a little-endian field of the `index`th central directory header.
pub fn patch_central(bytes: &mut [u8], index: usize, field_offset: usize, value: &[u8]) {
    let at = central_header_offset(bytes, index) + field_offset;
    bytes[at..at + value.len()].copy_from_slice(value);
}

/// Where the sample job folders are: `samples/build.sh`'s default output folder,
/// `<repo>/target/rjs-samples` (whatever `CARGO_TARGET_DIR` is), or `$RJS_SAMPLES`.
pub use rjs_harness::paths::samples_dir;

/// Every sample job the repository builds.
pub const SAMPLE_JOBS: [&str; 7] = [
    "mandelbrot",
    "hello",
    "evil-loop",
    "evil-membomb",
    "evil-escape",
    "evil-output",
    "evil-recurse",
];

/// The sample job folders, all of them present (panics with instructions otherwise).
pub fn sample_job_dirs() -> Vec<(String, PathBuf)> {
    let dir = samples_dir();
    let mut jobs = Vec::new();
    for job in SAMPLE_JOBS {
        let d = dir.join(job);
        assert!(
            d.join("manifest.json").is_file(),
            "sample job folder {} is missing: run samples/build.sh first",
            d.display()
        );
        jobs.push((job.to_owned(), d));
    }
    // Any further folder someone adds is packed too.
    let mut extra: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("manifest.json").is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(n, _)| !SAMPLE_JOBS.contains(&n.as_str()))
        .collect();
    extra.sort();
    jobs.extend(extra);
    jobs
}

/// `n` bytes of deterministic noise: does not deflate to a bomb-like ratio.
pub fn noise(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// The `rjs-sign` binary built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_rjs-sign");

/// Runs `rjs-sign` with `args`, never touching the real user's key folder.
pub fn rjs_sign(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(BIN);
    for a in args {
        cmd.arg(a);
    }
    cmd.env_remove("RJS_HOME")
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", "/nonexistent-home-for-tests");
    cmd.output().expect("running rjs-sign")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// Runs `rjs-sign args`, asserts its exit status, returns its stdout.
#[track_caller]
pub fn stdout_of(args: &[&dyn AsRef<std::ffi::OsStr>], code: i32) -> String {
    let o = rjs_sign(args);
    assert_exit(&o, code);
    stdout(&o)
}

/// Asserts that `text` contains `part`, showing `text` if not.
#[track_caller]
pub fn assert_has(text: &str, part: &str) {
    assert!(text.contains(part), "no {part:?} in:\n{text}");
}

/// Asserts that `text` starts with `prefix`, showing `text` if not.
#[track_caller]
pub fn assert_starts(text: &str, prefix: &str) {
    assert!(
        text.starts_with(prefix),
        "{text:?} does not start with {prefix:?}"
    );
}

/// Asserts that the command's stdout contains `text`, showing it if not.
#[track_caller]
pub fn assert_stdout_has(o: &Output, text: &str) {
    let out = stdout(o);
    assert!(out.contains(text), "no {text:?} in stdout:\n{out}");
}

/// Asserts that the command's stdout starts with `text`, showing it if not.
#[track_caller]
pub fn assert_stdout_starts(o: &Output, text: &str) {
    let out = stdout(o);
    assert!(
        out.starts_with(text),
        "stdout does not start with {text:?}:\n{out}"
    );
}

#[track_caller]
pub fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "expected exit {code}\nstdout: {}\nstderr: {}",
        stdout(o),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `bytes` with the byte at `at` XORed with `xor`: a one-byte change.
pub fn flipped(bytes: &[u8], at: usize, xor: u8) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at] ^= xor;
    b
}

/// One case of a byte-flip property: `bytes` with the byte at `pos` flipped with `xor` must
/// not be `accepted`.
pub fn flip_is_refused(
    bytes: &[u8],
    pos: proptest::sample::Index,
    xor: u8,
    accepted: impl Fn(&[u8]) -> bool,
) -> Result<(), proptest::test_runner::TestCaseError> {
    let at = pos.index(bytes.len());
    proptest::prop_assert!(
        !accepted(&flipped(bytes, at, xor)),
        "flip at {} with {:#04x} accepted",
        at,
        xor
    );
    Ok(())
}

/// A fresh temporary folder holding `bytes` as the file `name`: the folder (the file lives as
/// long as it does) and the file's path.
pub fn temp_file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

/// Files in a directory (names), sorted.
pub fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
