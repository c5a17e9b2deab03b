//! A signed bundle has exactly one valid byte form: changing any single byte anywhere in the
//! file (entry data, local or central headers, the signature entry, the end record) must
//! make verification fail.

mod common;

use std::sync::OnceLock;

use common::*;
use proptest::prelude::*;

fn small_bundle() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| {
        let b = valid_bundle();
        verify(&b).expect("the unflipped bundle verifies");
        b
    })
}

/// The `hello` sample packed, if the samples were built (otherwise the in-test bundle).
fn hello_bundle() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| {
        let dir = samples_dir().join("hello");
        assert!(
            dir.join("manifest.json").is_file(),
            "{} is missing: run samples/build.sh first",
            dir.display()
        );
        let (b, _) = rjs_signer::pack_dir(&dir, &key(1), SIGNER, SIGNED_AT).unwrap();
        verify(&b).expect("the packed hello sample verifies");
        b
    })
}

#[track_caller]
fn assert_flip_refused(bundle: &[u8], at: usize, xor: u8) {
    if let Ok(v) = verify(&flipped(bundle, at, xor)) {
        panic!(
            "flipping byte {at} of {} with {xor:#04x} was accepted (signer {}, {} entries)",
            bundle.len(),
            v.signer().fingerprint,
            v.entries().len()
        );
    }
}

#[test]
fn small_bundle_is_small() {
    assert!(
        small_bundle().len() < 2048,
        "{} bytes",
        small_bundle().len()
    );
}

#[test]
fn every_byte_flipped_with_0x01_is_refused() {
    let b = small_bundle();
    for at in 0..b.len() {
        assert_flip_refused(b, at, 0x01);
    }
}

#[test]
fn every_byte_flipped_with_every_value_is_refused() {
    // Exhaustive: all 255 non-zero XOR values at every position. The signature entry is
    // where this matters most: it is JSON, the one place a flip could yield something that
    // still parses (another digit, another base64 character, another letter in a name).
    let b = small_bundle();
    for at in 0..b.len() {
        for xor in 1..=255u8 {
            assert_flip_refused(b, at, xor);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_single_byte_flip_of_a_small_bundle_is_refused(
        pos in any::<prop::sample::Index>(),
        xor in 1..=255u8,
    ) {
        flip_is_refused(small_bundle(), pos, xor, |b| verify(b).is_ok())?;
    }

    #[test]
    fn any_single_byte_flip_of_the_packed_hello_sample_is_refused(
        pos in any::<prop::sample::Index>(),
        xor in 1..=255u8,
    ) {
        flip_is_refused(hello_bundle(), pos, xor, |b| verify(b).is_ok())?;
    }
}
