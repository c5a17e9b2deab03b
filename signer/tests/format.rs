//! Conformance to `docs/bundle-format.md`, checked by an independent reader written from the
//! spec's tables alone (not the library's `zipfmt`/`zipread`): the writer and the verifier
//! share the layout code, so a change to both would go unnoticed by round trips.

mod common;

use std::io::Read as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use rjs_signer::paths::MANIFEST;
use sha2::{Digest, Sha256};

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn u16(&mut self) -> u16 {
        let v = u16::from_le_bytes([self.b[self.at], self.b[self.at + 1]]);
        self.at += 2;
        v
    }
    fn u32(&mut self) -> u32 {
        let v = u32::from_le_bytes(self.b[self.at..self.at + 4].try_into().unwrap());
        self.at += 4;
        v
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let v = &self.b[self.at..self.at + n];
        self.at += n;
        v
    }
}

#[derive(Debug)]
struct Local {
    offset: usize,
    method: u16,
    crc: u32,
    stored_size: u32,
    size: u32,
    name: String,
    data: Vec<u8>,
}

/// Reads a bundle strictly by the spec's "Zip layout" tables; panics on any deviation.
fn read_by_spec(b: &[u8]) -> Vec<Local> {
    let mut r = Reader { b, at: 0 };
    let mut locals = Vec::new();
    while r.b[r.at..r.at + 4] == 0x0403_4b50u32.to_le_bytes() {
        let offset = r.at;
        r.at += 4;
        assert_eq!(r.u16(), 20, "version needed");
        assert_eq!(r.u16(), 0, "flags");
        let method = r.u16();
        assert!(method == 0 || method == 8, "method {method}");
        assert_eq!(r.u16(), 0, "time");
        assert_eq!(r.u16(), 0x0021, "date 1980-01-01");
        let crc = r.u32();
        let stored_size = r.u32();
        let size = r.u32();
        let name_len = r.u16() as usize;
        assert_eq!(r.u16(), 0, "extra length");
        let name = String::from_utf8(r.bytes(name_len).to_vec()).unwrap();
        let data = r.bytes(stored_size as usize).to_vec();
        if method == 0 {
            assert_eq!(stored_size, size, "{name}: stored size = size");
        }
        locals.push(Local {
            offset,
            method,
            crc,
            stored_size,
            size,
            name,
            data,
        });
    }
    let cd_offset = r.at;
    for l in &locals {
        assert_eq!(r.u32(), 0x0201_4b50, "central header signature");
        assert_eq!(r.u16(), 0x0314, "version made by");
        assert_eq!(r.u16(), 20, "version needed");
        assert_eq!(r.u16(), 0, "flags");
        assert_eq!(r.u16(), l.method, "method");
        assert_eq!(r.u16(), 0, "time");
        assert_eq!(r.u16(), 0x0021, "date");
        assert_eq!(r.u32(), l.crc, "crc");
        assert_eq!(r.u32(), l.stored_size, "stored size");
        assert_eq!(r.u32(), l.size, "size");
        assert_eq!(r.u16() as usize, l.name.len(), "name length");
        assert_eq!(r.u16(), 0, "extra length");
        assert_eq!(r.u16(), 0, "comment length");
        assert_eq!(r.u16(), 0, "disk number");
        assert_eq!(r.u16(), 0, "internal attributes");
        assert_eq!(r.u32(), 0x81A4_0000, "external attributes");
        assert_eq!(r.u32() as usize, l.offset, "local header offset");
        assert_eq!(r.bytes(l.name.len()), l.name.as_bytes());
    }
    let cd_size = r.at - cd_offset;
    assert_eq!(r.u32(), 0x0605_4b50, "end record signature");
    assert_eq!(r.u16(), 0, "disk");
    assert_eq!(r.u16(), 0, "central directory disk");
    assert_eq!(r.u16() as usize, locals.len());
    assert_eq!(r.u16() as usize, locals.len());
    assert_eq!(r.u32() as usize, cd_size);
    assert_eq!(r.u32() as usize, cd_offset);
    assert_eq!(r.u16(), 0, "comment length");
    assert_eq!(r.at, b.len(), "the end record ends the file");
    locals
}

fn content(l: &Local) -> Vec<u8> {
    if l.method == 0 {
        return l.data.clone();
    }
    let mut out = Vec::new();
    let mut z = flate2::read::DeflateDecoder::new(&l.data[..]);
    z.read_to_end(&mut out).unwrap();
    // The stored size is the deflate stream's: nothing follows its final block.
    assert_eq!(
        z.total_in(),
        l.data.len() as u64,
        "{}: trailing data after the deflate stream",
        l.name
    );
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Checks a bundle against the whole spec, independently, and returns its signer's key.
fn check_conformance(b: &[u8]) -> [u8; 32] {
    let locals = read_by_spec(b);

    // Entry order: sorted by name (strictly), the signature entry last.
    let (sig, covered) = locals.split_last().unwrap();
    assert_eq!(sig.name, "rjs-signature.json");
    assert_eq!(sig.method, 0, "the signature entry is stored");
    assert!(
        covered
            .windows(2)
            .all(|w| w[0].name.as_bytes() < w[1].name.as_bytes())
    );
    for l in covered {
        let c = content(l);
        assert_eq!(c.len(), l.size as usize, "{}", l.name);
        assert_eq!(crc32fast::hash(&c), l.crc, "{}", l.name);
    }
    assert_eq!(crc32fast::hash(&sig.data), sig.crc);

    // The signature entry: compact JSON, fields in the specified order.
    let doc: serde_json::Value = serde_json::from_slice(&sig.data).unwrap();
    let s = |v: &serde_json::Value| v.as_str().unwrap().to_owned();
    let entries = doc["entries"].as_array().unwrap();
    assert_eq!(entries.len(), covered.len());
    let mut listing = Vec::new();
    for (e, l) in entries.iter().zip(covered) {
        let method = if l.method == 0 { "stored" } else { "deflate" };
        let sha = hex(&Sha256::digest(&l.data));
        assert_eq!(s(&e["name"]), l.name);
        assert_eq!(s(&e["method"]), method);
        assert_eq!(s(&e["crc32"]), format!("{:08x}", l.crc));
        assert_eq!(e["size"].as_u64().unwrap(), l.size as u64);
        assert_eq!(e["stored_size"].as_u64().unwrap(), l.stored_size as u64);
        assert_eq!(s(&e["sha256"]), sha, "SHA-256 of the stored bytes");
        listing.push((
            l.name.clone(),
            method,
            format!("{:08x}", l.crc),
            l.size,
            l.stored_size,
            sha,
        ));
    }
    let (pk, fp, name, at, sig_b64) = (
        s(&doc["public_key"]),
        s(&doc["fingerprint"]),
        s(&doc["signer_name"]),
        doc["signed_at"].as_u64().unwrap(),
        s(&doc["signature"]),
    );
    let listing_json: Vec<String> = listing
        .iter()
        .map(|(n, m, c, size, stored, sha)| {
            format!(
                r#"{{"name":"{n}","method":"{m}","crc32":"{c}","size":{size},"stored_size":{stored},"sha256":"{sha}"}}"#
            )
        })
        .collect();
    let expected = format!(
        r#"{{"format":1,"algorithm":"ed25519","public_key":"{pk}","fingerprint":"{fp}","signer_name":"{name}","signed_at":{at},"entries":[{}],"signature":"{sig_b64}"}}"#,
        listing_json.join(",")
    );
    assert_eq!(String::from_utf8(sig.data.clone()).unwrap(), expected);

    // Fingerprint: first 16 bytes of SHA-256 of the key, 8 dash-joined groups of 4 hex digits.
    let key: [u8; 32] = B64.decode(&pk).unwrap().try_into().unwrap();
    let d = hex(&Sha256::digest(key)[..16]);
    let groups: Vec<&str> = (0..8).map(|i| &d[4 * i..4 * i + 4]).collect();
    assert_eq!(fp, groups.join("-"));

    // The signed statement, built from the spec's text, verified with ed25519 directly.
    let mut statement = format!(
        "RJS-BUNDLE-SIGNATURE-V1\nformat 1\nalgorithm ed25519\npublic-key {pk}\nsigner-name {name}\nsigned-at {at}\nentries {}\n",
        listing.len()
    );
    for (n, m, c, size, stored, sha) in &listing {
        statement.push_str(&format!("{n} {m} {c} {size} {stored} {sha}\n"));
    }
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&key).unwrap();
    let sig_bytes: [u8; 64] = B64.decode(&sig_b64).unwrap().try_into().unwrap();
    vk.verify_strict(
        statement.as_bytes(),
        &ed25519_dalek::Signature::from_bytes(&sig_bytes),
    )
    .expect("the signature verifies over the statement as the spec writes it");
    key
}

/// Junk after the final deflate block, inside the entry's stored size (and signed): our
/// verifier refuses it (`corrupt-entry`), and so does the reader written from the spec.
#[test]
fn trailing_data_after_a_deflate_stream_is_refused_by_both_readers() {
    let data = input_data();
    let mut padded = Part::deflated("data/input.txt", &data);
    padded
        .stored
        .extend_from_slice(b"\0junk after the final block");
    let parts = vec![
        padded,
        Part::stored("job.wasm", &wasm_module()),
        Part::stored(MANIFEST, &manifest_json("job.wasm", &["data/input.txt"])),
    ];
    let b = sign_parts(&parts, &key(1));
    let e = assert_refused(&b, "corrupt-entry", Some("data/input.txt"));
    assert!(e.to_string().contains("trailing data"), "{e}");
    let spec = std::panic::catch_unwind(|| check_conformance(&b));
    assert!(spec.is_err(), "the spec reader accepted trailing data");
}

#[test]
fn small_bundle_conforms_to_the_spec() {
    let b = valid_bundle();
    let key = check_conformance(&b);
    assert_eq!(&key, key_bytes(1).as_slice());
    assert!(verify(&b).is_ok());
}

fn key_bytes(n: u8) -> [u8; 32] {
    *common::key(n).public().as_bytes()
}

#[test]
fn every_packed_sample_conforms_to_the_spec() {
    for (job, dir) in sample_job_dirs() {
        let (b, _) = rjs_signer::pack_dir(&dir, &key(4), "carol", SIGNED_AT).unwrap();
        let k = check_conformance(&b);
        assert_eq!(k, key_bytes(4), "{job}");
    }
}

#[test]
fn the_spec_reader_is_strict() {
    // The independent reader would notice a layout change: any one fixed field altered.
    let b = valid_bundle();
    let first_cd = {
        let eocd = b.len() - 22;
        u32::from_le_bytes(b[eocd + 16..eocd + 20].try_into().unwrap()) as usize
    };
    // (offset, what): local date, local extra length, central made-by, central attributes,
    // end record comment length.
    for at in [12, 28, first_cd + 4, first_cd + 40, b.len() - 2] {
        let mut m = b.clone();
        m[at] ^= 0x01;
        let r = std::panic::catch_unwind(|| read_by_spec(&m));
        assert!(r.is_err(), "byte {at} changed, still read as canonical");
    }
    let mut m = b.clone();
    m.push(0);
    assert!(std::panic::catch_unwind(|| read_by_spec(&m)).is_err());
}

#[test]
fn zip_crate_defaults_happen_to_write_the_canonical_layout() {
    // Worth knowing for interoperability: a zip written by the `zip` crate with default
    // options (deflate, 1980-01-01, mode 0644) already has the canonical layout, so a bundle
    // can be written by other tools; it is then refused only for lacking a signature.
    use std::io::Write as _;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file("a.txt", zip::write::SimpleFileOptions::default())
        .unwrap();
    w.write_all(b"hello hello hello hello").unwrap();
    let z = w.finish().unwrap().into_inner();
    let locals = read_by_spec(&z);
    assert_eq!(locals.len(), 1);
    assert_eq!(content(&locals[0]), b"hello hello hello hello");
    assert_eq!(refusal(&z).rule(), "unsigned");
}

/// The string literals (rule names) in the body of the function `fn_name` of `source`.
fn rule_literals(source: &str, fn_name: &str) -> Vec<String> {
    let start = source
        .find(&format!("fn {fn_name}("))
        .unwrap_or_else(|| panic!("no fn {fn_name}"));
    // The body ends at the first line that closes a top-level item or method.
    let body = &source[start..];
    let end = body
        .find("\n    }\n")
        .into_iter()
        .chain(body.find("\n}\n"))
        .min()
        .unwrap();
    body[..end]
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
        .map(str::to_owned)
        .collect()
}

/// The rules that `doc` does not mention (as `` `rule` ``).
fn undocumented<'a>(rules: &'a [String], doc: &str) -> Vec<&'a String> {
    rules
        .iter()
        .filter(|r| !doc.contains(&format!("`{r}`")))
        .collect()
}

#[test]
fn every_rule_the_verifier_names_is_documented() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let code = std::fs::read_to_string(root.join("src/bundle.rs")).unwrap();
    let doc = std::fs::read_to_string(root.join("../docs/bundle-format.md")).unwrap();
    let mut rules = rule_literals(&code, "rule");
    rules.extend(rule_literals(&code, "path_rule"));
    assert!(rules.len() > 30, "found {rules:?}");
    for must in ["unknown-manifest-field", "bad-name", "corrupt-entry"] {
        assert!(rules.iter().any(|r| r == must), "{must} in {rules:?}");
    }
    let missing = undocumented(&rules, &doc);
    assert!(
        missing.is_empty(),
        "rules not in docs/bundle-format.md: {missing:?}"
    );
}

#[test]
fn every_answer_rule_is_documented() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let code = std::fs::read_to_string(root.join("src/answer.rs")).unwrap();
    let doc = std::fs::read_to_string(root.join("../docs/answer-format.md")).unwrap();
    let rules = rule_literals(&code, "rule");
    assert!(rules.len() > 10, "found {rules:?}");
    let missing = undocumented(&rules, &doc);
    assert!(
        missing.is_empty(),
        "rules not in docs/answer-format.md: {missing:?}"
    );
}
