//! Fuzzes the bundle reader: any input must give a verdict, never a panic, a hang or an
//! allocation beyond the limits; what the tools show of a verified bundle (its signing time)
//! must not panic either. Seed with `fuzz/seeds` (valid bundles) so that mutations
//! reach the signature, manifest and inflate paths.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rjs_signer::{VerifyLimits, manifest::Manifest, verify_bytes, zipread};

fuzz_target!(|data: &[u8]| {
    let limits = VerifyLimits {
        max_bundle_bytes: 1 << 20,
        max_entries: 64,
        max_total_bytes: 4 << 20,
        max_ratio: 100,
    };
    let _ = zipread::read_central_directory(data, limits.max_entries);
    let _ = Manifest::parse(data);
    if let Ok(bundle) = verify_bytes(data, &limits) {
        // Anything that verifies must be internally consistent.
        assert!(bundle.module().starts_with(&rjs_signer::bundle::WASM_HEADER));
        // Every input extracted is one the manifest names (a file, or one inside a folder),
        // and the module passed the sandbox's checks.
        assert!(
            bundle
                .inputs()
                .iter()
                .all(|(name, _)| bundle.manifest().is_input_file(name))
        );
        assert!(rjs_signer::wasm::check_module(bundle.module()).is_ok());
        let _ = rjs_cmd::time::unix_time(bundle.signer().signed_at);
    }
});
