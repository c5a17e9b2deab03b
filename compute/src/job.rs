//! The types that cross the node's modules: what the sandbox runs and what it reports.

use std::fmt;
use std::sync::Arc;

use rjs_signer::answer::{Ending, LimitKind};
use rjs_signer::bundle::hex;
use rjs_signer::{Limits, Manifest};
use sha2::{Digest, Sha256};

/// SHA-256 of a job's WebAssembly module: the key of the compiled-module caches (the
/// supervisor's, each worker's and the one on disk). Shown (and sent to the workers) as
/// lowercase hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModuleHash([u8; 32]);

impl ModuleHash {
    /// The hash of `module`.
    pub fn of(module: &[u8]) -> ModuleHash {
        ModuleHash(Sha256::digest(module).into())
    }

    /// A hash as 64 hex digits; `None` if `s` is not that.
    pub fn parse_hex(s: &str) -> Option<ModuleHash> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(ModuleHash(out))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<[u8; 32]> for ModuleHash {
    fn from(sha256: [u8; 32]) -> Self {
        ModuleHash(sha256)
    }
}

impl fmt::Display for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

/// One task of a verified bundle, ready for the sandbox.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// The bundle's manifest name (the program's argv\[0\]).
    pub name: String,
    /// SHA-256 of the bundle file (the bundle id).
    pub bundle_sha256: [u8; 32],
    /// SHA-256 of the module bytes: the compiled-module cache key.
    pub module_sha256: ModuleHash,
    pub module: Arc<Vec<u8>>,
    /// Input files (bundle path, bytes), visible read-only at the same relative paths.
    pub inputs: Arc<Vec<(String, Vec<u8>)>>,
    /// Arguments after argv\[0\].
    pub args: Vec<String>,
    /// The manifest's env; the sandbox adds `RJS_TASK_INDEX`, `RJS_TASK_COUNT` and
    /// (unless the manifest sets it) `TMPDIR=/tmp`.
    pub env: Vec<(String, String)>,
    /// The input file (bundle path) that is the program's standard input; `None`: empty.
    pub stdin: Option<String>,
    /// The manifest's `outputs`: patterns of the files the program promises to write
    /// under `out/`; the answer records each one no file matches.
    pub outputs: Vec<String>,
    pub task_index: u32,
    pub task_count: u32,
    pub limits: Limits,
}

impl TaskSpec {
    /// Task `task_index` of the bundle `bundle_sha256` whose manifest is `manifest`: its
    /// name, arguments, environment (in key order), task count and limits from the manifest,
    /// with the bundle's module and input files.
    pub fn from_manifest(
        manifest: &Manifest,
        bundle_sha256: [u8; 32],
        module_sha256: ModuleHash,
        module: Arc<Vec<u8>>,
        inputs: Arc<Vec<(String, Vec<u8>)>>,
        task_index: u32,
    ) -> TaskSpec {
        TaskSpec {
            name: manifest.name.clone(),
            bundle_sha256,
            module_sha256,
            module,
            inputs,
            args: manifest.args.clone(),
            // A BTreeMap: already in key order.
            env: manifest
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            stdin: manifest.stdin.clone(),
            outputs: manifest.outputs.clone(),
            task_index,
            task_count: manifest.tasks,
            limits: manifest.limits,
        }
    }
}

/// What the sandbox reports for one task. Every task ends in one of these, whatever it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskResult {
    pub ending: Ending,
    /// Every limit reached, including ones that did not end the task (stdout truncated while
    /// the program went on to exit 0).
    pub limits_hit: Vec<LimitKind>,
    /// Captured stdout and stderr, each at most `limits.stdout_bytes`.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Files the task wrote under `out/` (path relative to `out/`, bytes), at most
    /// `limits.output_bytes` in total.
    pub out_files: Vec<(String, Vec<u8>)>,
    /// Wall-clock time from the worker's `Started` (module ready) to the end, milliseconds.
    pub wall_ms: u64,
    /// CPU time of the task (user + system) over the same span, milliseconds: the worker
    /// process's CPU clock less its reading at `Started`, so neither compiling the module nor
    /// earlier tasks count. What `limits.time_ms` limits (`docs/sandbox.md`).
    pub cpu_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_hash_hex() {
        let sha = ModuleHash::from([0xab; 32]);
        assert_eq!(ModuleHash::parse_hex(&sha.to_string()), Some(sha));
        assert_eq!(ModuleHash::parse_hex("zz"), None);
        assert_eq!(ModuleHash::parse_hex(&"g".repeat(64)), None);
    }
}
