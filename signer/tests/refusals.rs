//! Every rule of the verifier, each with its own crafted bundle, asserting the exact rule
//! (and, where the rule is about one entry, that entry).

mod common;

use std::io::Write as _;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use rjs_signer::bundle::{VerifyError, WASM_HEADER};
use rjs_signer::manifest::ManifestError;
use rjs_signer::paths::{MANIFEST, SIGNATURE};
use rjs_signer::zipfmt::{self, LOCAL_HEADER_LEN, Method};
use rjs_signer::zipread::{self, ZipError};
use rjs_signer::{VerifyLimits, verify_bytes};

/// The valid bundle's parts with `extra` inserted among the covered entries, names kept
/// sorted, the signature entry last (and left as it was: it does not list `extra`).
fn with_extra_entry(extra: Part) -> Vec<u8> {
    let mut parts = explode(&valid_bundle());
    let sig = parts.pop().unwrap();
    parts.push(extra);
    parts.sort_by(|a, b| a.name.cmp(&b.name));
    parts.push(sig);
    relayout(&parts)
}

/// Index of a named entry in the valid bundle.
fn index_of(bytes: &[u8], name: &str) -> usize {
    explode(bytes).iter().position(|p| p.name == name).unwrap()
}

/// File offset of the first stored byte of the named entry.
fn data_offset(bytes: &[u8], name: &str) -> usize {
    let cd = zipread::read_central_directory(bytes, 100).unwrap();
    let e = cd.iter().find(|e| e.name == name.as_bytes()).unwrap();
    e.local_offset as usize + LOCAL_HEADER_LEN as usize + e.name.len()
}

// ---------------------------------------------------------------------------------------
// The valid case

#[test]
fn valid_bundle_verifies_and_returns_exact_bytes() {
    let bytes = valid_bundle();
    let b = verify(&bytes).expect("a freshly built bundle verifies");
    assert_eq!(b.module(), &wasm_module()[..]);
    assert_eq!(
        b.inputs(),
        &[("data/input.txt".to_owned(), input_data())][..]
    );
    assert_eq!(
        b.manifest_bytes(),
        &manifest_json("job.wasm", &["data/input.txt"])[..]
    );
    let m = b.manifest();
    assert_eq!(
        (m.name.as_str(), m.entry.as_str(), m.tasks),
        ("test-job", "job.wasm", 3)
    );
    assert_eq!(m.args, ["world"]);
    let s = b.signer();
    assert_eq!(s.public_key, key(1).public());
    assert_eq!(s.fingerprint, key(1).public().fingerprint());
    assert_eq!(s.name, SIGNER);
    assert_eq!(s.signed_at, SIGNED_AT);
    let names: Vec<_> = b.entries().iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["data/input.txt", "job.wasm", MANIFEST]);
    // Both storage methods are exercised: the repetitive input is deflated, the tiny module
    // is stored.
    assert_eq!(b.entries()[0].method, Method::Deflate);
    assert_eq!(b.entries()[1].method, Method::Stored);
    let module_sha: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(wasm_module()).into();
    assert_eq!(b.module_sha256(), &module_sha);
    assert_eq!(rjs_signer::bundle_id(&bytes), {
        let d: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&bytes).into();
        d
    });
}

#[test]
fn test_helpers_round_trip_a_valid_bundle() {
    // The crafting tools below are only meaningful if taking a bundle apart and laying it
    // out again is lossless, and if signing crafted parts yields a valid bundle.
    let bytes = valid_bundle();
    assert_eq!(relayout(&explode(&bytes)), bytes);
    let mut parts = explode(&bytes);
    parts.pop();
    assert_eq!(sign_parts(&parts, &key(1)), bytes);
    assert!(verify(&edit_signature(&bytes, |_| {})).is_ok());
}

#[test]
fn verify_file_reads_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("b.rjs");
    std::fs::write(&p, valid_bundle()).unwrap();
    let b = rjs_signer::verify_file(&p, &VerifyLimits::default()).unwrap();
    assert_eq!(b.module(), &wasm_module()[..]);
    let limits = VerifyLimits {
        max_bundle_bytes: 100,
        ..VerifyLimits::default()
    };
    match rjs_signer::verify_file(&p, &limits) {
        Err(rjs_signer::VerifyFileError::Verify(e)) => assert_eq!(e.rule(), "bundle-too-large"),
        other => panic!("expected bundle-too-large, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Changed bytes and coverage

#[test]
fn changed_byte_in_each_entry_is_refused_naming_it() {
    let bytes = valid_bundle();
    for name in ["data/input.txt", "job.wasm", MANIFEST] {
        let parts = explode(&bytes);
        let len = parts.iter().find(|p| p.name == name).unwrap().stored.len();
        for at in [0, len / 2, len - 1] {
            let mut b = bytes.clone();
            b[data_offset(&bytes, name) + at] ^= 0x20;
            let e = assert_refused(&b, "changed-entry", Some(name));
            assert!(matches!(e, VerifyError::Changed { .. }));
        }
    }
}

#[test]
fn changed_entry_with_updated_listing_fails_the_signature() {
    // The attacker also updates the SHA-256 in the listing: the signature no longer holds.
    let bytes = valid_bundle();
    let mut parts = explode(&bytes);
    let i = index_of(&bytes, "job.wasm");
    let mut module = wasm_module();
    *module.last_mut().unwrap() ^= 1;
    parts[i] = Part::stored("job.wasm", &module);
    let mut doc = signature_doc(&parts);
    doc.entries[i] = signed_entry(&parts[i]);
    set_signature_doc(&mut parts, &doc);
    let e = assert_refused(&relayout(&parts), "bad-signature", Some(SIGNATURE));
    assert!(
        matches!(e, VerifyError::BadSignature { fingerprint } if fingerprint == key(1).public().fingerprint())
    );
}

#[test]
fn changed_header_crc_is_a_metadata_mismatch() {
    // Both headers consistently claim another CRC: the listing disagrees.
    let bytes = valid_bundle();
    let mut parts = explode(&bytes);
    let i = index_of(&bytes, "job.wasm");
    parts[i].crc32 ^= 0xdead_beef;
    let e = assert_refused(
        &relayout(&parts),
        "entry-metadata-mismatch",
        Some("job.wasm"),
    );
    assert!(
        matches!(
            e,
            VerifyError::Mismatch {
                field: "CRC-32",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn listing_with_another_size_is_a_metadata_mismatch() {
    let b = edit_signature(&valid_bundle(), |d| d.entries[1].size += 1);
    let e = assert_refused(&b, "entry-metadata-mismatch", Some("job.wasm"));
    assert!(
        matches!(e, VerifyError::Mismatch { field: "size", .. }),
        "{e}"
    );
    let b = edit_signature(&valid_bundle(), |d| d.entries[0].method = "stored".into());
    let e = assert_refused(&b, "entry-metadata-mismatch", Some("data/input.txt"));
    assert!(
        matches!(
            e,
            VerifyError::Mismatch {
                field: "compression method",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn entry_not_covered_by_the_signature() {
    let b = with_extra_entry(Part::stored("extra.txt", b"smuggled"));
    let e = assert_refused(&b, "uncovered-entry", Some("extra.txt"));
    assert!(matches!(e, VerifyError::Uncovered { .. }));
}

#[test]
fn covered_entry_missing_from_the_archive() {
    let bytes = valid_bundle();
    let mut parts = explode(&bytes);
    parts.retain(|p| p.name != "data/input.txt");
    let e = assert_refused(&relayout(&parts), "missing-entry", Some("data/input.txt"));
    assert!(matches!(e, VerifyError::Missing { .. }));
}

#[test]
fn entry_listed_twice_in_the_signature() {
    let b = edit_signature(&valid_bundle(), |d| {
        let first = d.entries[0].clone();
        d.entries.push(first);
    });
    assert_refused(&b, "malformed-signature-entry", Some(SIGNATURE));
}

#[test]
fn listing_out_of_bundle_order() {
    let b = edit_signature(&valid_bundle(), |d| d.entries.swap(0, 1));
    let e = assert_refused(&b, "malformed-signature-entry", Some(SIGNATURE));
    assert!(e.to_string().contains("bundle order"), "{e}");
}

#[test]
fn unsigned_bundle() {
    let mut parts = explode(&valid_bundle());
    parts.pop();
    let e = assert_refused(&relayout(&parts), "unsigned", None);
    assert!(matches!(e, VerifyError::Unsigned));
    // An empty archive is unsigned too.
    assert_refused(&relayout(&[]), "unsigned", None);
}

// ---------------------------------------------------------------------------------------
// Names

#[test]
fn duplicate_name_exact() {
    let b = with_extra_entry(Part::stored("job.wasm", &wasm_module()));
    let e = assert_refused(&b, "duplicate-name", Some("job.wasm"));
    assert!(matches!(e, VerifyError::Duplicate { .. }));
}

#[test]
fn duplicate_name_case_insensitive() {
    let mut parts = explode(&valid_bundle());
    let sig = parts.pop().unwrap();
    parts.push(Part::stored("JOB.wasm", &wasm_module()));
    parts.push(sig);
    let e = assert_refused(&relayout(&parts), "duplicate-name", Some("JOB.wasm"));
    assert!(matches!(e, VerifyError::Duplicate { .. }));
    // And a second signature entry is a duplicate, not a second signature.
    let mut parts = explode(&valid_bundle());
    let sig = parts.last().unwrap().clone();
    parts.insert(
        0,
        Part {
            name: "RJS-SIGNATURE.json".into(),
            ..sig
        },
    );
    assert_refused(&relayout(&parts), "duplicate-name", Some(SIGNATURE));
}

/// The valid bundle with an extra entry `name` (unsigned, but names are checked first) is
/// refused by `rule`, naming it.
#[track_caller]
fn assert_name_refused(name: &str, rule: &str) {
    assert_refused(
        &with_extra_entry(Part::stored(name, b"x")),
        rule,
        Some(name),
    );
}

#[test]
fn absolute_path() {
    let e = assert_refused(
        &with_extra_entry(Part::stored("/etc/passwd", b"root::0:0")),
        "absolute-path",
        Some("/etc/passwd"),
    );
    assert!(matches!(e, VerifyError::BadName { .. }));
    // The reason is the refusal's cause, printed once.
    assert_eq!(rjs_cmd::chain(&e), r#"entry "/etc/passwd": absolute path"#);
}

#[test]
fn parent_dir_path() {
    assert_name_refused("../evil", "parent-dir-path");
    assert_name_refused("data/../../evil", "parent-dir-path");
}

#[test]
fn backslash_path() {
    assert_name_refused("..\\evil", "backslash-path");
    assert_name_refused("data\\evil", "backslash-path");
}

#[test]
fn drive_letter_path() {
    assert_name_refused("C:evil", "drive-letter-path");
}

#[test]
fn other_bad_names() {
    for name in ["a b", "./x", "a//b", "dir/.", "\u{e9}"] {
        assert_name_refused(name, "bad-name");
    }
}

#[test]
fn name_not_utf8() {
    let mut b = with_extra_entry(Part::stored("zz.bin", b"x"));
    let i = index_of(&b, "zz.bin");
    // Patch the name in the central directory (read first) to invalid UTF-8.
    let at = central_header_offset(&b, i) + zipfmt::CENTRAL_HEADER_LEN as usize;
    b[at] = 0xff;
    assert_refused(&b, "name-not-utf8", None);
}

// ---------------------------------------------------------------------------------------
// Entry kinds, encryption, methods

const EXTERNAL_ATTRS: usize = 38;
const FLAGS: usize = 8;
const METHOD: usize = 10;
const VERSION_MADE_BY: usize = 4;

/// The valid bundle with job.wasm's central header patched (`made_by` in the version-made-by
/// field if given, `attrs` in the external attributes) is refused as not a regular file, a
/// `kind`.
#[track_caller]
fn assert_job_wasm_not_regular(made_by: Option<u16>, attrs: u32, kind: &str) {
    let mut b = valid_bundle();
    let i = index_of(&b, "job.wasm");
    if let Some(made_by) = made_by {
        patch_central(&mut b, i, VERSION_MADE_BY, &made_by.to_le_bytes());
    }
    patch_central(&mut b, i, EXTERNAL_ATTRS, &attrs.to_le_bytes());
    let e = assert_refused(&b, "not-regular-file", Some("job.wasm"));
    assert!(
        matches!(e, VerifyError::NotRegular { kind: k, .. } if k == kind),
        "{e}"
    );
}

#[test]
fn symlink_entry_patched_attributes() {
    assert_job_wasm_not_regular(None, 0o120_777 << 16, "symbolic link");
}

#[test]
fn directory_entry_patched_attributes() {
    assert_job_wasm_not_regular(None, 0o040_755 << 16, "directory");
    // An MS-DOS-made entry with the directory attribute.
    assert_job_wasm_not_regular(Some(20), 0x10, "directory");
    // A device (neither file, directory nor link).
    assert_job_wasm_not_regular(None, 0o020_644 << 16, "special file");
}

#[test]
fn directory_entry_by_name() {
    // A name ending in `/` is a directory whatever its attributes say.
    let b = with_extra_entry(Part::stored("data/", b""));
    assert_refused(&b, "not-regular-file", Some("data/"));
}

#[test]
fn symlink_and_directory_written_by_the_zip_crate() {
    use zip::write::{SimpleFileOptions, ZipWriter};
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);

    let mut w = ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.add_symlink("job.wasm", "/etc/passwd", opts).unwrap();
    w.start_file(MANIFEST, opts).unwrap();
    w.write_all(&manifest_json("job.wasm", &[])).unwrap();
    let b = w.finish().unwrap().into_inner();
    assert_refused(&b, "not-regular-file", Some("job.wasm"));

    let mut w = ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.add_directory("data/", opts).unwrap();
    w.start_file(MANIFEST, opts).unwrap();
    w.write_all(b"{}").unwrap();
    let b = w.finish().unwrap().into_inner();
    assert_refused(&b, "not-regular-file", Some("data/"));
}

#[test]
fn encrypted_entry() {
    let bytes = valid_bundle();
    let i = index_of(&bytes, "job.wasm");
    // Traditional encryption (bit 0), strong encryption (bit 6), and the AES method (99).
    for (field, value) in [(FLAGS, 0x0001u16), (FLAGS, 0x0040), (METHOD, 99)] {
        let mut b = bytes.clone();
        patch_central(&mut b, i, field, &value.to_le_bytes());
        let e = assert_refused(&b, "encrypted-entry", Some("job.wasm"));
        assert!(matches!(e, VerifyError::Encrypted { .. }));
    }
}

#[test]
fn unsupported_compression_method() {
    let bytes = valid_bundle();
    let i = index_of(&bytes, "data/input.txt");
    for method in [12u16, 14, 93, 1, 9] {
        let mut b = bytes.clone();
        patch_central(&mut b, i, METHOD, &method.to_le_bytes());
        let e = assert_refused(&b, "compression-method", Some("data/input.txt"));
        assert!(matches!(e, VerifyError::Compression { method: m, .. } if m == method));
    }
}

// ---------------------------------------------------------------------------------------
// Limits

/// `bytes` verifies under the limits `with(at)` and is refused (by `rule`) under `with(at - 1)`:
/// the limit is exact. Returns the refusal.
#[track_caller]
fn assert_exact_limit<T: Copy + std::ops::Sub<Output = T> + From<u8>>(
    bytes: &[u8],
    at: T,
    with: impl Fn(T) -> VerifyLimits,
    rule: &str,
) -> VerifyError {
    assert!(verify_bytes(bytes, &with(at)).is_ok());
    let e = refusal_with(bytes, &with(at - T::from(1)));
    assert_eq!(e.rule(), rule);
    e
}

#[test]
fn too_many_entries() {
    let bytes = valid_bundle(); // 4 entries, the signature entry included
    let limits = |max_entries| VerifyLimits {
        max_entries,
        ..VerifyLimits::default()
    };
    let e = assert_exact_limit(&bytes, 4, limits, "too-many-entries");
    assert!(matches!(
        e,
        VerifyError::Zip(ZipError::TooManyEntries { count: 4, limit: 3 })
    ));

    // The default limit, with tiny entries.
    let parts: Vec<Part> = (0..=VerifyLimits::default().max_entries)
        .map(|i| Part::stored(&format!("f{i:05}"), b""))
        .collect();
    let b = relayout(&parts);
    let t = Instant::now();
    assert_refused(&b, "too-many-entries", None);
    assert!(t.elapsed() < Duration::from_millis(200));
}

#[test]
fn too_many_bytes() {
    let bytes = valid_bundle();
    let total: u64 = explode(&bytes).iter().map(|p| p.size).sum();
    let limits = |max_total_bytes| VerifyLimits {
        max_total_bytes,
        ..VerifyLimits::default()
    };
    let e = assert_exact_limit(&bytes, total, limits, "too-many-bytes");
    // It is the signature entry (the last one) that crosses the limit.
    assert_eq!(e.entry(), Some(SIGNATURE));

    // A single entry claiming more than the default limit, stored.
    let big = VerifyLimits::default().max_total_bytes + 1;
    let mut parts = explode(&bytes);
    let i = index_of(&bytes, "job.wasm");
    parts[i].size = big;
    let e = assert_refused(&relayout(&parts), "too-many-bytes", Some("job.wasm"));
    assert!(matches!(e, VerifyError::TooManyBytes { size, .. } if size == big));
}

#[test]
fn bundle_too_large() {
    let bytes = valid_bundle();
    let limits = |max_bundle_bytes| VerifyLimits {
        max_bundle_bytes,
        ..VerifyLimits::default()
    };
    assert_exact_limit(&bytes, bytes.len() as u64, limits, "bundle-too-large");
}

#[test]
fn compression_ratio_bomb_signed() {
    // A genuinely signed bundle whose input inflates 1000:1.
    let zeros = vec![0u8; 4 << 20];
    let parts = vec![
        Part::deflated("bomb.bin", &zeros),
        Part::stored("job.wasm", &wasm_module()),
        Part::stored(MANIFEST, &manifest_json("job.wasm", &["bomb.bin"])),
    ];
    let b = sign_parts(&parts, &key(1));
    let e = assert_refused(&b, "compression-ratio", Some("bomb.bin"));
    match e {
        VerifyError::Ratio { ratio, limit, .. } => {
            assert!(ratio > 100, "{ratio}");
            assert_eq!(limit, 100);
        }
        other => panic!("{other:?}"),
    }
    // The same bundle passes with a ratio limit it respects: the refusal was the ratio.
    let limits = VerifyLimits {
        max_ratio: 100_000,
        ..VerifyLimits::default()
    };
    assert_eq!(
        verify_bytes(&b, &limits).unwrap().inputs()[0].1.len(),
        4 << 20
    );
}

#[test]
fn compression_ratio_limit_is_exact() {
    let bytes = valid_bundle();
    let p = explode(&bytes)
        .into_iter()
        .find(|p| p.method == Method::Deflate)
        .unwrap();
    let ratio = p.size / p.stored.len() as u64;
    assert!(ratio >= 2, "the test input should compress ({ratio}:1)");
    let limits = |max_ratio| VerifyLimits {
        max_ratio,
        ..VerifyLimits::default()
    };
    let e = assert_exact_limit(&bytes, ratio, limits, "compression-ratio");
    assert_eq!(e.entry(), Some(p.name.as_str()));
}

/// An entry declaring 3 GiB uncompressed with a tiny deflated part.
fn three_gib_bomb() -> Vec<u8> {
    let mut parts = explode(&valid_bundle());
    let sig = parts.pop().unwrap();
    let mut bomb = Part::deflated("bomb.bin", &vec![0u8; 64 << 10]);
    bomb.size = 3 << 30;
    parts.insert(0, bomb);
    parts.push(sig);
    relayout(&parts)
}

#[test]
fn three_gib_declared_entry_is_refused_quickly_without_inflating() {
    let b = three_gib_bomb();
    assert!(
        b.len() < 4096,
        "the bomb file itself is tiny ({} bytes)",
        b.len()
    );

    // With limits that allow 3 GiB in total, it is the ratio that refuses it.
    let limits = VerifyLimits {
        max_total_bytes: 8 << 30,
        max_bundle_bytes: 8 << 30,
        ..VerifyLimits::default()
    };
    let t = Instant::now();
    let e = refusal_with(&b, &limits);
    let took = t.elapsed();
    assert_eq!(e.rule(), "compression-ratio", "{e}");
    assert_eq!(e.entry(), Some("bomb.bin"));
    assert!(
        took < Duration::from_millis(250),
        "took {took:?}: was it inflated?"
    );

    // With the default limits the total-size limit already refuses it.
    let t = Instant::now();
    let e = refusal(&b);
    let took = t.elapsed();
    assert_eq!(e.rule(), "too-many-bytes", "{e}");
    assert_eq!(e.entry(), Some("bomb.bin"));
    assert!(
        took < Duration::from_millis(250),
        "took {took:?}: was it inflated?"
    );
}

// ---------------------------------------------------------------------------------------
// Archive structure

#[test]
fn trailing_data() {
    let mut b = valid_bundle();
    b.extend_from_slice(b"trailing");
    let e = assert_refused(&b, "not-a-bundle-zip", None);
    assert!(matches!(e, VerifyError::Zip(ZipError::NoEnd)), "{e}");
    // Even a single zero byte.
    let mut b = valid_bundle();
    b.push(0);
    assert_refused(&b, "not-a-bundle-zip", None);
}

#[test]
fn prepended_data() {
    let mut b = b"#!/bin/sh\nexit 0\n".to_vec();
    b.extend_from_slice(&valid_bundle());
    let e = assert_refused(&b, "not-a-bundle-zip", None);
    assert!(matches!(e, VerifyError::Zip(ZipError::Malformed(_))), "{e}");
}

#[test]
fn prepended_data_with_offsets_fixed_up() {
    // A self-extractor-style file whose central directory offsets account for the prefix:
    // the reader accepts the directory, the canonical layout check refuses it.
    let bytes = valid_bundle();
    let prefix = b"MZ-prefix-bytes!";
    let n = prefix.len() as u32;
    let mut b = prefix.to_vec();
    b.extend_from_slice(&bytes);
    let count = explode(&bytes).len();
    for i in 0..count {
        let at = central_header_offset(&b[prefix.len()..], i) + prefix.len() + 42;
        let off = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) + n;
        b[at..at + 4].copy_from_slice(&off.to_le_bytes());
    }
    let eocd = b.len() - 22;
    let off = u32::from_le_bytes(b[eocd + 16..eocd + 20].try_into().unwrap()) + n;
    b[eocd + 16..eocd + 20].copy_from_slice(&off.to_le_bytes());
    assert!(zipread::read_central_directory(&b, 100).is_ok());
    assert_refused(&b, "non-canonical-layout", None);
}

#[test]
fn archive_comment() {
    let mut b = valid_bundle();
    let eocd = b.len() - 22;
    let comment = b"a comment";
    b[eocd + 20..eocd + 22].copy_from_slice(&(comment.len() as u16).to_le_bytes());
    b.extend_from_slice(comment);
    let e = assert_refused(&b, "not-a-bundle-zip", None);
    assert!(matches!(e, VerifyError::Zip(ZipError::NoEnd)), "{e}");

    // A comment that ends in a copy of the end record (so the last 22 bytes look right).
    let mut b = valid_bundle();
    let end = b[eocd..].to_vec();
    b[eocd + 20..eocd + 22].copy_from_slice(&22u16.to_le_bytes());
    b.extend_from_slice(&end);
    let e = refusal(&b);
    assert_eq!(e.rule(), "not-a-bundle-zip", "{e}");
}

#[test]
fn not_a_zip() {
    assert_refused(b"", "not-a-bundle-zip", None);
    assert_refused(
        b"hello, this is not a zip archive at all",
        "not-a-bundle-zip",
        None,
    );
    assert_refused(&WASM_HEADER, "not-a-bundle-zip", None);
}

#[test]
fn multi_disk_is_refused() {
    let mut b = valid_bundle();
    let eocd = b.len() - 22;
    b[eocd + 4..eocd + 6].copy_from_slice(&1u16.to_le_bytes());
    let e = assert_refused(&b, "not-a-bundle-zip", None);
    assert!(matches!(e, VerifyError::Zip(ZipError::Unsupported)), "{e}");
}

#[test]
fn entries_out_of_order() {
    let mut parts = explode(&valid_bundle());
    parts.swap(0, 1);
    let e = assert_refused(&relayout(&parts), "entry-order", None);
    assert!(matches!(e, VerifyError::Order(_)));
    // The signature entry not last.
    let mut parts = explode(&valid_bundle());
    let sig = parts.pop().unwrap();
    parts.insert(0, sig);
    assert_refused(&relayout(&parts), "entry-order", None);
}

#[test]
fn non_canonical_header_field() {
    // Same DOS date in both headers, but not the canonical one.
    let mut b = valid_bundle();
    let i = index_of(&b, "job.wasm");
    let cd = zipread::read_central_directory(&b, 100).unwrap();
    let local = cd[i].local_offset as usize;
    let date = 0x5821u16.to_le_bytes();
    b[local + 12..local + 14].copy_from_slice(&date);
    patch_central(&mut b, i, 14, &date);
    let e = assert_refused(&b, "non-canonical-layout", None);
    assert!(matches!(e, VerifyError::Layout(_)));
}

#[test]
fn stored_entry_with_differing_sizes_is_corrupt() {
    let bytes = valid_bundle();
    let mut parts = explode(&bytes);
    let i = index_of(&bytes, "job.wasm");
    parts[i].size += 1;
    assert_refused(&relayout(&parts), "corrupt-entry", Some("job.wasm"));
}

#[test]
fn signed_entry_with_wrong_crc_is_corrupt() {
    // Signed, with the listing agreeing with the headers, but the CRC is not the data's.
    let mut module = Part::stored("job.wasm", &wasm_module());
    module.crc32 ^= 1;
    let parts = vec![
        module,
        Part::stored(MANIFEST, &manifest_json("job.wasm", &[])),
    ];
    let e = assert_refused(
        &sign_parts(&parts, &key(1)),
        "corrupt-entry",
        Some("job.wasm"),
    );
    assert!(e.to_string().contains("CRC"), "{e}");
}

#[test]
fn signed_deflate_entry_that_does_not_inflate_to_its_size_is_corrupt() {
    let data = input_data();
    let mut short = Part::deflated("data/input.txt", &data);
    short.size -= 1; // inflates to more than declared
    let mut long = Part::deflated("data/input.txt", &data);
    long.size += 1; // inflates to fewer than declared
    let mut garbage = Part::deflated("data/input.txt", &data);
    garbage.stored = vec![0xff; garbage.stored.len()];
    for p in [short, long, garbage] {
        let parts = vec![
            p,
            Part::stored("job.wasm", &wasm_module()),
            Part::stored(MANIFEST, &manifest_json("job.wasm", &["data/input.txt"])),
        ];
        assert_refused(
            &sign_parts(&parts, &key(1)),
            "corrupt-entry",
            Some("data/input.txt"),
        );
    }
}

#[test]
fn signature_entry_crc_mismatch_is_corrupt() {
    let bytes = valid_bundle();
    let mut parts = explode(&bytes);
    parts.last_mut().unwrap().crc32 ^= 1;
    assert_refused(&relayout(&parts), "corrupt-entry", Some(SIGNATURE));
}

// ---------------------------------------------------------------------------------------
// Manifest and contents (correctly signed bundles)

#[test]
fn manifest_invalid_json() {
    let b = build(&[
        (MANIFEST, b"{\"format\": 1, \"name\": ".to_vec()),
        ("job.wasm", wasm_module()),
    ]);
    let e = assert_refused(&b, "invalid-manifest-json", Some(MANIFEST));
    assert!(matches!(e, VerifyError::Manifest(_)));
}

#[test]
fn manifest_unknown_field() {
    // Its own rule, not the JSON-syntax one: at the top level and inside `limits`, and also
    // when the document has another mistake besides.
    let cases: [(&[u8], &str); 3] = [
        (
            br#"{"format":1,"name":"j","entry":"job.wasm","run_as_root":true}"#,
            "run_as_root",
        ),
        (
            br#"{"format":1,"name":"j","entry":"job.wasm","limits":{"time_ms":5,"cpus":64}}"#,
            "limits.cpus",
        ),
        (
            br#"{"format":1,"name":"j","entry":"job.wasm","tasks":"many","run_as_root":true}"#,
            "run_as_root",
        ),
    ];
    for (m, field) in cases {
        let b = build(&[(MANIFEST, m.to_vec()), ("job.wasm", wasm_module())]);
        let e = assert_refused(&b, "unknown-manifest-field", Some(MANIFEST));
        assert!(
            matches!(&e, VerifyError::Manifest(ManifestError::UnknownField { field: f }) if f == field),
            "{e:?}"
        );
        assert!(
            rjs_cmd::chain(&e).contains(&format!("unknown field `{field}`")),
            "{e}"
        );
    }
    // A newer format version still gets the clearer error, unknown fields and all.
    let m = br#"{"format":2,"name":"j","entry":"job.wasm","run_as_root":true}"#.to_vec();
    let b = build(&[(MANIFEST, m), ("job.wasm", wasm_module())]);
    assert_refused(&b, "unknown-format-version", Some(MANIFEST));
}

#[test]
fn manifest_with_a_duplicate_key_is_invalid_json() {
    // Not silently "the last one wins": two `entry` keys are refused.
    let m = br#"{"format":1,"name":"j","entry":"other.wasm","entry":"job.wasm"}"#.to_vec();
    let b = build(&[(MANIFEST, m), ("job.wasm", wasm_module())]);
    let e = assert_refused(&b, "invalid-manifest-json", Some(MANIFEST));
    assert!(rjs_cmd::chain(&e).contains("duplicate"), "{e}");
}

#[test]
fn manifest_names_a_missing_module() {
    let b = build(&[
        (MANIFEST, manifest_json("missing.wasm", &[])),
        ("job.wasm", wasm_module()),
    ]);
    let e = assert_refused(&b, "missing-module", Some("missing.wasm"));
    assert!(matches!(e, VerifyError::NoModule { .. }));
}

#[test]
fn manifest_names_a_missing_input() {
    let b = build(&[
        (MANIFEST, manifest_json("job.wasm", &["data/gone.txt"])),
        ("job.wasm", wasm_module()),
    ]);
    assert_refused(&b, "missing-input", Some("data/gone.txt"));
}

#[test]
fn manifest_unknown_format_version() {
    for m in [
        br#"{"format":2,"name":"j","entry":"job.wasm"}"#.to_vec(),
        // A future version with fields this one does not know: still the version error.
        br#"{"format":7,"name":"j","entry":"job.wasm","sandbox":"none"}"#.to_vec(),
        br#"{"format":0,"name":"j","entry":"job.wasm"}"#.to_vec(),
    ] {
        let b = build(&[(MANIFEST, m), ("job.wasm", wasm_module())]);
        assert_refused(&b, "unknown-format-version", Some(MANIFEST));
    }
}

#[test]
fn manifest_field_out_of_bounds() {
    let m = br#"{"format":1,"name":"j","entry":"job.wasm","tasks":0}"#.to_vec();
    let b = build(&[(MANIFEST, m), ("job.wasm", wasm_module())]);
    let e = assert_refused(&b, "invalid-manifest", Some(MANIFEST));
    assert!(e.to_string().contains("tasks"), "{e}");
}

#[test]
fn no_manifest() {
    let b = build(&[("job.wasm", wasm_module())]);
    assert_refused(&b, "no-manifest", Some(MANIFEST));
}

#[test]
fn module_is_not_wasm() {
    for module in [
        b"#!/bin/sh\nrm -rf /\n".to_vec(),
        b"\0asm".to_vec(),
        // A component (version 0x0d, layer 1), not a core module.
        vec![0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00],
    ] {
        let b = build(&[
            (MANIFEST, manifest_json("job.wasm", &[])),
            ("job.wasm", module),
        ]);
        let e = assert_refused(&b, "not-wasm", Some("job.wasm"));
        assert!(matches!(e, VerifyError::NotWasm { .. }));
    }
}

#[test]
fn entry_not_named_by_the_manifest() {
    let b = build(&[
        (MANIFEST, manifest_json("job.wasm", &[])),
        ("job.wasm", wasm_module()),
        ("notes.txt", b"not declared".to_vec()),
    ]);
    let e = assert_refused(&b, "undeclared-entry", Some("notes.txt"));
    assert!(matches!(e, VerifyError::Undeclared { .. }));
}

// ---------------------------------------------------------------------------------------
// The signature entry

#[test]
fn signature_of_wrong_length() {
    for len in [0usize, 32, 63, 65, 128] {
        let b = edit_signature(&valid_bundle(), |d| {
            d.signature = B64.encode(vec![7u8; len])
        });
        let e = assert_refused(&b, "signature-length", Some(SIGNATURE));
        assert!(
            matches!(e, VerifyError::SignatureLength(l) if l == len),
            "{e}"
        );
    }
}

#[test]
fn signature_not_base64() {
    let b = edit_signature(&valid_bundle(), |d| d.signature = "not base64!".into());
    assert_refused(&b, "malformed-signature-entry", Some(SIGNATURE));
    // Non-canonical base64 (trailing bits set) of the very same signature bytes.
    let b = edit_signature(&valid_bundle(), |d| {
        let mut s: Vec<u8> = d.signature.clone().into_bytes();
        let i = s.len() - 3; // "xY==": the Y carries 4 unused bits
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let v = alphabet.iter().position(|c| *c == s[i]).unwrap();
        s[i] = alphabet[v | 1];
        if alphabet[v | 1] == alphabet[v] {
            s[i] = alphabet[v ^ 1];
        }
        d.signature = String::from_utf8(s).unwrap();
    });
    assert_refused(&b, "malformed-signature-entry", Some(SIGNATURE));
}

#[test]
fn invalid_public_key() {
    let cases = [
        "not base64!".to_owned(),
        B64.encode([1u8; 31]),
        B64.encode([1u8; 33]),
        // The identity point: a weak key.
        B64.encode({
            let mut k = [0u8; 32];
            k[0] = 1;
            k
        }),
        B64.encode([0u8; 32]),
    ];
    for pk in cases {
        let b = edit_signature(&valid_bundle(), |d| d.public_key = pk.clone());
        let e = assert_refused(&b, "bad-key", Some(SIGNATURE));
        assert!(matches!(e, VerifyError::BadKey(_)), "{pk}: {e}");
    }
}

#[test]
fn signature_by_another_key_than_the_one_named() {
    // The entry names key 2 (with its correct fingerprint), but key 1 signed.
    let other = key(2).public();
    let b = edit_signature(&valid_bundle(), |d| {
        d.public_key = other.to_base64();
        d.fingerprint = other.fingerprint().to_string();
    });
    let e = assert_refused(&b, "bad-signature", Some(SIGNATURE));
    assert!(
        matches!(e, VerifyError::BadSignature { fingerprint } if fingerprint == other.fingerprint())
    );
}

#[test]
fn signature_over_other_statement() {
    // Any signed field changed after signing breaks the signature.
    let edits: [fn(&mut rjs_signer::bundle::SignatureDoc); 3] = [
        |d| d.signed_at += 1,
        |d| d.signer_name = "mallory".into(),
        |d| d.signature = B64.encode(key(1).sign(b"something else")),
    ];
    for edit in edits {
        let b = edit_signature(&valid_bundle(), edit);
        assert_refused(&b, "bad-signature", Some(SIGNATURE));
    }
}

#[test]
fn signature_entry_not_canonical_json() {
    let bytes = valid_bundle();
    let mut parts = explode(&bytes);
    let doc = signature_doc(&parts);
    for json in [
        serde_json::to_vec_pretty(&doc).unwrap(),
        {
            let mut v = serde_json::to_vec(&doc).unwrap();
            v.push(b'\n');
            v
        },
        {
            let mut v = b" ".to_vec();
            v.extend(serde_json::to_vec(&doc).unwrap());
            v
        },
        // Fields reordered (alphabetically: `algorithm` first instead of `format`).
        {
            let m: std::collections::BTreeMap<String, serde_json::Value> =
                serde_json::from_value(serde_json::to_value(&doc).unwrap()).unwrap();
            serde_json::to_vec(&m).unwrap()
        },
        // An entry name with an escaped solidus (`data\/input.txt`): same value.
        {
            let v = serde_json::to_vec(&doc).unwrap();
            let s = String::from_utf8(v).unwrap().replacen(
                "\"data/input.txt\"",
                "\"data\\/input.txt\"",
                1,
            );
            assert!(s.contains("data\\/input.txt"));
            s.into_bytes()
        },
        // A key written with an escape (`\u0066ormat`): same document, other bytes.
        {
            let v = serde_json::to_vec(&doc).unwrap();
            let s = String::from_utf8(v)
                .unwrap()
                .replacen("\"format\"", "\"\\u0066ormat\"", 1);
            s.into_bytes()
        },
    ] {
        set_signature_bytes(&mut parts, json);
        let e = assert_refused(
            &relayout(&parts),
            "malformed-signature-entry",
            Some(SIGNATURE),
        );
        assert!(
            matches!(&e, VerifyError::SignatureEntry(m) if m.contains("canonical")),
            "{e}"
        );
    }
}

#[test]
fn signature_entry_invalid_json_or_unknown_field() {
    let bytes = valid_bundle();
    let mut parts = explode(&bytes);
    let doc = signature_doc(&parts);
    let mut with_extra = serde_json::to_value(&doc).unwrap();
    with_extra["comment"] = "hi".into();
    for json in [
        b"{".to_vec(),
        b"".to_vec(),
        serde_json::to_vec(&with_extra).unwrap(),
    ] {
        set_signature_bytes(&mut parts, json);
        assert_refused(
            &relayout(&parts),
            "malformed-signature-entry",
            Some(SIGNATURE),
        );
    }
}

#[test]
fn signature_entry_deflated() {
    let bytes = valid_bundle();
    let mut parts = explode(&bytes);
    let sig = parts.pop().unwrap();
    let stored = sig.stored.clone();
    parts.push(Part::deflated(SIGNATURE, &stored));
    assert_refused(
        &relayout(&parts),
        "malformed-signature-entry",
        Some(SIGNATURE),
    );
}

#[test]
fn signature_entry_with_invalid_signer_name() {
    // Re-signed properly, but with a signer name that is not a valid key name.
    let bytes = valid_bundle();
    let b = edit_signature(&bytes, |d| {
        d.signer_name = "alice\nOK trusted".into();
        d.signature = B64.encode(key(1).sign(&d.statement()));
    });
    let e = assert_refused(&b, "malformed-signature-entry", Some(SIGNATURE));
    assert!(e.to_string().contains("signer name"), "{e}");
}

#[test]
fn mismatched_fingerprint() {
    let other = key(2).public().fingerprint().to_string();
    let b = edit_signature(&valid_bundle(), |d| d.fingerprint = other.clone());
    let e = assert_refused(&b, "fingerprint-mismatch", Some(SIGNATURE));
    assert!(
        matches!(&e, VerifyError::FingerprintMismatch { claimed, actual } if *claimed == other && *actual == key(1).public().fingerprint())
    );
    // The displayed form exactly: no other spelling of the right fingerprint.
    let upper = key(1).public().fingerprint().to_string().to_uppercase();
    let b = edit_signature(&valid_bundle(), |d| d.fingerprint = upper.clone());
    assert_refused(&b, "fingerprint-mismatch", Some(SIGNATURE));
}

#[test]
fn unsupported_signature_format_or_algorithm() {
    let b = edit_signature(&valid_bundle(), |d| d.algorithm = "rsa".into());
    assert_refused(&b, "signature-algorithm", Some(SIGNATURE));
    let b = edit_signature(&valid_bundle(), |d| d.format = 2);
    assert_refused(&b, "signature-algorithm", Some(SIGNATURE));
}

#[test]
fn re_signed_by_another_key_is_valid_but_names_that_signer() {
    // Not a refusal: anyone may re-sign a bundle; trust decides. The verifier must then
    // report the new signer, never the original one.
    let mut parts = explode(&valid_bundle());
    parts.pop();
    let b = sign_parts(&parts, &key(3));
    let v = verify(&b).unwrap();
    assert_eq!(v.signer().public_key, key(3).public());
    assert_ne!(v.signer().fingerprint, key(1).public().fingerprint());
}

// ---------------------------------------------------------------------------------------
// verify_signed (steps 1-10) and extract (step 11)

#[test]
fn verify_signed_agrees_with_verify_bytes_on_a_valid_bundle() {
    let bytes = valid_bundle();
    let signed = rjs_signer::verify_signed(&bytes, &VerifyLimits::default()).unwrap();
    let full = verify(&bytes).unwrap();
    assert_eq!(signed.manifest(), full.manifest());
    assert_eq!(signed.manifest_bytes(), full.manifest_bytes());
    assert_eq!(signed.signer(), full.signer());
    assert_eq!(signed.entries(), full.entries());
    let extracted = signed.extract().unwrap();
    assert_eq!(extracted.module(), full.module());
    assert_eq!(extracted.inputs(), full.inputs());
    assert_eq!(extracted.module_sha256(), full.module_sha256());
}

/// A signed bundle whose module (deflated) carries a CRC that is not its content's: the
/// stored bytes are exactly what was signed, so only extraction can tell.
fn signed_bundle_with_bad_module_crc() -> Vec<u8> {
    let module = [wasm_module(), noise(4096, 1)].concat();
    let mut m = Part::deflated("job.wasm", &module);
    m.crc32 ^= 0x8000_0000;
    let parts = vec![m, Part::stored(MANIFEST, &manifest_json("job.wasm", &[]))];
    sign_parts(&parts, &key(1))
}

#[test]
fn verify_signed_leaves_the_module_to_extract() {
    let b = signed_bundle_with_bad_module_crc();
    let signed = rjs_signer::verify_signed(&b, &VerifyLimits::default())
        .expect("steps 1-10 do not inflate the module");
    assert_eq!(signed.manifest().entry, "job.wasm");
    let e = signed.extract().unwrap_err();
    assert_eq!(e.rule(), "corrupt-entry");
    assert_eq!(e.entry(), Some("job.wasm"));
    // verify_bytes does both.
    assert_refused(&b, "corrupt-entry", Some("job.wasm"));
}

#[test]
fn extract_checks_every_input() {
    let mut input = Part::deflated("data/input.txt", &input_data());
    input.crc32 ^= 1;
    let parts = vec![
        input,
        Part::stored("job.wasm", &wasm_module()),
        Part::stored(MANIFEST, &manifest_json("job.wasm", &["data/input.txt"])),
    ];
    let b = sign_parts(&parts, &key(1));
    assert!(rjs_signer::verify_signed(&b, &VerifyLimits::default()).is_ok());
    assert_refused(&b, "corrupt-entry", Some("data/input.txt"));
}

#[test]
fn verify_signed_checks_the_manifest_crc() {
    let mut manifest = Part::deflated(MANIFEST, &manifest_json("job.wasm", &[]));
    manifest.crc32 ^= 1;
    let parts = vec![Part::stored("job.wasm", &wasm_module()), manifest];
    let b = sign_parts(&parts, &key(1));
    let e = rjs_signer::verify_signed(&b, &VerifyLimits::default()).unwrap_err();
    assert_eq!((e.rule(), e.entry()), ("corrupt-entry", Some(MANIFEST)));
}

#[test]
fn deflated_module_header_is_checked_without_full_inflation() {
    // Deflated module whose content does not start with the wasm header.
    let not_wasm = [b"MZ\x90\x00".to_vec(), noise(4096, 2)].concat();
    let parts = vec![
        Part::deflated("job.wasm", &not_wasm),
        Part::stored(MANIFEST, &manifest_json("job.wasm", &[])),
    ];
    assert_refused(&sign_parts(&parts, &key(1)), "not-wasm", Some("job.wasm"));
    // Deflated module shorter than the header.
    let parts = vec![
        Part::deflated("job.wasm", b"\0asm"),
        Part::stored(MANIFEST, &manifest_json("job.wasm", &[])),
    ];
    assert_refused(&sign_parts(&parts, &key(1)), "not-wasm", Some("job.wasm"));
    // A valid deflated module is accepted (the header is read through the deflate stream).
    let module = rjs_signer::wasm::empty_command(&input_data().repeat(8));
    let parts = vec![
        Part::deflated("job.wasm", &module),
        Part::stored(MANIFEST, &manifest_json("job.wasm", &[])),
    ];
    assert_eq!(
        verify(&sign_parts(&parts, &key(1))).unwrap().module(),
        &module[..]
    );
    // A module with the header but not valid after it passes the header check and is
    // refused once inflated, for what the nodes would refuse it for.
    let module = [wasm_module(), input_data().repeat(8)].concat();
    let parts = vec![
        Part::deflated("job.wasm", &module),
        Part::stored(MANIFEST, &manifest_json("job.wasm", &[])),
    ];
    let b = sign_parts(&parts, &key(1));
    assert!(rjs_signer::verify_signed(&b, &VerifyLimits::default()).is_ok());
    assert_refused(&b, "bad-module", Some("job.wasm"));
}

#[test]
fn folder_inputs_cover_every_file_under_them_and_nothing_else() {
    let manifest = serde_json::to_vec(&serde_json::json!({"format": 1, "name": "j",
        "entry": "job.wasm", "inputs": ["data/"], "stdin": "data/sub/b.txt"}))
    .unwrap();
    let parts = vec![
        Part::stored("data/a.txt", b"a"),
        Part::stored("data/sub/b.txt", b"b"),
        Part::stored("job.wasm", &wasm_module()),
        Part::stored(MANIFEST, &manifest),
    ];
    let v = verify(&sign_parts(&parts, &key(1))).unwrap();
    let names: Vec<&str> = v.inputs().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["data/a.txt", "data/sub/b.txt"]);
    // A file beside the folder is still undeclared.
    let mut more = parts.clone();
    more.insert(2, Part::stored("datax.txt", b"x"));
    assert_refused(
        &sign_parts(&more, &key(1)),
        "undeclared-entry",
        Some("datax.txt"),
    );
    // A folder with nothing in the bundle.
    let empty = vec![
        Part::stored("job.wasm", &wasm_module()),
        Part::stored(MANIFEST, &manifest_json("job.wasm", &["data/"])),
    ];
    assert_refused(&sign_parts(&empty, &key(1)), "missing-input", Some("data/"));
    // A file and a folder of one name cannot both be written.
    let clash = vec![
        Part::stored("data", b"file"),
        Part::stored("data/a.txt", b"a"),
        Part::stored("job.wasm", &wasm_module()),
        Part::stored(
            MANIFEST,
            &manifest_json("job.wasm", &["data", "data/a.txt"]),
        ),
    ];
    assert_refused(
        &sign_parts(&clash, &key(1)),
        "file-folder-clash",
        Some("data/a.txt"),
    );
}

#[test]
fn manifest_larger_than_its_limit() {
    let mut m = manifest_json("job.wasm", &[]);
    // Valid JSON, padded with whitespace past 64 KiB (deflates well below the ratio limit).
    m.extend(std::iter::repeat_n(b' ', 64 * 1024));
    let b = build(&[(MANIFEST, m), ("job.wasm", wasm_module())]);
    let e = assert_refused(&b, "invalid-manifest", Some(MANIFEST));
    assert!(e.to_string().contains("larger than"), "{e}");
}

#[test]
fn end_record_claiming_a_comment() {
    // The comment length field set, with no comment after it.
    let mut b = valid_bundle();
    let eocd = b.len() - 22;
    b[eocd + 20] = 5;
    let e = assert_refused(&b, "not-a-bundle-zip", None);
    assert!(matches!(e, VerifyError::Zip(ZipError::NoEnd)), "{e}");
}
