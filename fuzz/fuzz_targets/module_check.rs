//! Fuzzes the module check that `rjs-sign pack`, `verify`, the web server and the nodes run
//! on every job's module (`rjs_signer::wasm::check_module`): any input gives a verdict, never a
//! panic or a hang. Seed with real modules (`target/rjs-samples/*/*.wasm`) so that mutations
//! reach the validator's function bodies, imports and exports.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = rjs_signer::wasm::check_module(data) {
        // What passes is a command with a bounded shape.
        assert!(info.memories <= rjs_signer::wasm::MAX_MEMORIES);
        assert!(info.wasi_imports as u64 <= data.len() as u64);
    }
});
