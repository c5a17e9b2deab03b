//! The types that cross the node's modules: what the sandbox runs and what it reports.

use std::sync::Arc;

use rjs_signer::Limits;
use rjs_signer::answer::{Ending, LimitKind};

/// One task of a verified bundle, ready for the sandbox.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// The bundle's manifest name (the program's argv\[0\]).
    pub name: String,
    /// SHA-256 of the bundle file (the bundle id).
    pub bundle_sha256: [u8; 32],
    /// SHA-256 of the module bytes: the compiled-module cache key.
    pub module_sha256: [u8; 32],
    pub module: Arc<Vec<u8>>,
    /// Input files (bundle path, bytes), visible read-only at the same relative paths.
    pub inputs: Arc<Vec<(String, Vec<u8>)>>,
    /// Arguments after argv\[0\].
    pub args: Vec<String>,
    /// The manifest's env; the sandbox adds `RJS_TASK_INDEX` and `RJS_TASK_COUNT`.
    pub env: Vec<(String, String)>,
    pub task_index: u32,
    pub task_count: u32,
    pub limits: Limits,
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
