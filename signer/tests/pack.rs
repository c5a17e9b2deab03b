//! Packing as a library: deterministic output, and bundles any zip reader can read.

mod common;

use std::io::Read as _;

use common::*;
use rjs_signer::paths::{MANIFEST, SIGNATURE};
use rjs_signer::zipfmt::Method;
use rjs_signer::{BundleBuilder, VerifyLimits, pack_dir};

#[test]
fn pack_is_deterministic_given_key_and_time() {
    for (job, dir) in sample_job_dirs() {
        let (a, ma) = pack_dir(&dir, &key(1), SIGNER, SIGNED_AT).unwrap();
        let (b, mb) = pack_dir(&dir, &key(1), SIGNER, SIGNED_AT).unwrap();
        assert_eq!(ma, mb);
        assert!(a == b, "{job}: two packs with the same key and time differ");
        // The inputs that should matter do matter.
        let (c, _) = pack_dir(&dir, &key(1), SIGNER, SIGNED_AT + 1).unwrap();
        assert_ne!(a, c, "{job}: the signing time is signed");
        let (d, _) = pack_dir(&dir, &key(2), SIGNER, SIGNED_AT).unwrap();
        assert_ne!(a, d, "{job}: the key is recorded");
        assert!(verify(&a).is_ok(), "{job}");
    }
}

#[test]
fn builder_output_does_not_depend_on_insertion_order() {
    let entries = [
        (MANIFEST, manifest_json("job.wasm", &["data/input.txt"])),
        ("job.wasm", wasm_module()),
        ("data/input.txt", input_data()),
    ];
    let mut forward = BundleBuilder::new();
    for (n, d) in &entries {
        forward.add(n, d.clone()).unwrap();
    }
    let mut backward = BundleBuilder::new();
    for (n, d) in entries.iter().rev() {
        backward.add(n, d.clone()).unwrap();
    }
    let a = forward.sign(&key(1), SIGNER, SIGNED_AT).unwrap();
    assert_eq!(a, backward.sign(&key(1), SIGNER, SIGNED_AT).unwrap());
    assert_eq!(a, valid_bundle());
}

#[test]
fn pack_dir_packs_only_what_the_manifest_names() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path();
    std::fs::write(
        job.join(MANIFEST),
        manifest_json("job.wasm", &["data/input.txt"]),
    )
    .unwrap();
    std::fs::write(job.join("job.wasm"), wasm_module()).unwrap();
    std::fs::create_dir(job.join("data")).unwrap();
    std::fs::write(job.join("data/input.txt"), input_data()).unwrap();
    std::fs::write(job.join("secret.txt"), b"not named by the manifest").unwrap();
    let (bytes, m) = pack_dir(job, &key(1), SIGNER, SIGNED_AT).unwrap();
    assert_eq!(m.entry, "job.wasm");
    // Exactly the bundle the builder makes from the same files.
    assert_eq!(bytes, valid_bundle());
}

/// Reads every entry of a bundle with the `zip` crate.
fn read_with_zip_crate(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("zip crate opens it");
    let mut out = Vec::new();
    for i in 0..z.len() {
        let mut f = z.by_index(i).unwrap();
        let name = f.name().expect("a UTF-8 name").into_owned();
        assert!(f.is_file(), "{name}");
        assert!(!f.encrypted());
        let mut data = Vec::new();
        f.read_to_end(&mut data).unwrap();
        assert_eq!(data.len() as u64, f.size());
        assert_eq!(crc32fast::hash(&data), f.crc32());
        out.push((name, data));
    }
    out
}

/// The bundle names of the files under `root/rel`, walking sub-folders.
fn files_under(root: &std::path::Path, rel: &str, out: &mut Vec<String>) {
    for e in std::fs::read_dir(root.join(rel)).unwrap() {
        let e = e.unwrap();
        let name = format!("{rel}/{}", e.file_name().to_string_lossy());
        if e.file_type().unwrap().is_dir() {
            files_under(root, &name, out);
        } else {
            out.push(name);
        }
    }
}

#[test]
fn zip_crate_reads_every_packed_sample() {
    for (job, dir) in sample_job_dirs() {
        let (bytes, manifest) = pack_dir(&dir, &key(1), SIGNER, SIGNED_AT).unwrap();
        let files = read_with_zip_crate(&bytes);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        let mut expected = vec![MANIFEST.to_owned(), manifest.entry.clone()];
        for input in &manifest.inputs {
            match input.strip_suffix('/') {
                // A folder input: every file under it.
                Some(folder) => files_under(&dir, folder, &mut expected),
                None => expected.push(input.clone()),
            }
        }
        expected.sort();
        expected.push(SIGNATURE.to_owned());
        assert_eq!(names, expected, "{job}");
        for (name, data) in &files {
            if name == SIGNATURE {
                let doc: rjs_signer::bundle::SignatureDoc = serde_json::from_slice(data).unwrap();
                assert_eq!(doc.entries.len(), files.len() - 1);
            } else {
                let on_disk = std::fs::read(dir.join(name)).unwrap();
                assert!(data == &on_disk, "{job}: {name} differs after unzipping");
            }
        }
        // And the files come out with regular-file permissions.
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(&bytes)).unwrap();
        for i in 0..z.len() {
            assert_eq!(z.by_index(i).unwrap().unix_mode(), Some(0o100_644));
        }
    }
}

#[test]
fn zip_crate_reads_the_small_bundle() {
    let files = read_with_zip_crate(&valid_bundle());
    assert_eq!(
        files,
        [
            ("data/input.txt".to_owned(), input_data()),
            ("job.wasm".to_owned(), wasm_module()),
            (
                MANIFEST.to_owned(),
                manifest_json("job.wasm", &["data/input.txt"])
            ),
            (
                SIGNATURE.to_owned(),
                explode(&valid_bundle()).pop().unwrap().stored
            ),
        ]
    );
}

#[test]
fn builder_stores_what_deflate_would_not_help_or_would_make_a_bomb() {
    let zeros = vec![0u8; 1 << 20]; // deflates about 1000:1, beyond the verifier's 100:1
    let random = noise(64 << 10, 7); // does not deflate at all
    let text = input_data().repeat(4); // deflates well, within the ratio
    let b = build(&[
        (
            MANIFEST,
            manifest_json("job.wasm", &["a.zeros", "b.random", "c.text"]),
        ),
        ("job.wasm", wasm_module()),
        ("a.zeros", zeros.clone()),
        ("b.random", random.clone()),
        ("c.text", text.clone()),
    ]);
    let v = verify(&b).expect("the builder's output verifies under the default limits");
    let method = |name: &str| v.entries().iter().find(|e| e.name == name).unwrap().method;
    assert_eq!(method("a.zeros"), Method::Stored);
    assert_eq!(method("b.random"), Method::Stored);
    assert_eq!(method("c.text"), Method::Deflate);
    assert_eq!(
        v.inputs(),
        &[
            ("a.zeros".to_owned(), zeros),
            ("b.random".to_owned(), random),
            ("c.text".to_owned(), text)
        ][..]
    );
}

#[test]
fn builder_never_signs_a_bundle_the_verifier_refuses_near_the_size_limits() {
    // Content just under the default 256 MiB total: the verifier also counts the signature
    // entry in the total, and limits the whole file (headers included) to 256 MiB. A bundle
    // the builder signs must verify; otherwise the builder must refuse to sign it.
    // (The zeros are stored, not deflated: deflating them would look like a bomb.)
    let limit = VerifyLimits::default().max_total_bytes as usize;
    let manifest = br#"{"format":1,"name":"j","entry":"job.wasm","inputs":["big.bin"]}"#.to_vec();
    let module = wasm_module();
    // 8: content + signature entry over the total limit. 1000: total fine, but headers push
    // the file over the bundle limit (the window is roughly 760..1250 bytes).
    for (below, expected) in [(8usize, "TooManyBytes"), (1000, "BundleTooLarge")] {
        let big = vec![0u8; limit - manifest.len() - module.len() - below];
        let mut b = BundleBuilder::new();
        b.add(MANIFEST, manifest.clone()).unwrap();
        b.add("job.wasm", module.clone()).unwrap();
        b.add("big.bin", big).unwrap();
        match b.sign(&key(1), SIGNER, SIGNED_AT) {
            Ok(bytes) => {
                let e = rjs_signer::verify_signed(&bytes, &VerifyLimits::default())
                    .err()
                    .map(|e| e.rule());
                panic!("{below} bytes under the limit: signed a bundle refused as {e:?}");
            }
            Err(e) => assert_eq!(
                format!("{e:?}").split('(').next().unwrap(),
                expected,
                "{below} bytes under the limit: {e}"
            ),
        }
    }
}
