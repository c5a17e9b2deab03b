//! What the sandbox test and the sandbox benchmark share (`#[path]`-included by
//! `benches/sandbox.rs`): the sample jobs as tasks, and the native build of the Mandelbrot
//! sample that they compare the sandbox against.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use rjs_compute::job::{ModuleHash, TaskSpec};
use rjs_harness::paths;
use rjs_signer::Manifest;

/// Task `task_index` of a job unpacked in `dir` as `samples/build.sh` leaves the samples
/// (`manifest.json` and its entry module, no input files), under a made-up bundle id.
/// Panics if the files are missing or invalid.
pub fn unpacked_sample_task(dir: &Path, task_index: u32) -> TaskSpec {
    let manifest_file = dir.join("manifest.json");
    let read = |path: &Path| {
        std::fs::read(path).unwrap_or_else(|e| {
            panic!(
                "reading {} (run samples/build.sh first): {e}",
                path.display()
            )
        })
    };
    let manifest = Manifest::parse(&read(&manifest_file))
        .unwrap_or_else(|e| panic!("{}: {}", manifest_file.display(), rjs_cmd::chain(&e)));
    let module = read(&dir.join(&manifest.entry));
    TaskSpec::from_manifest(
        &manifest,
        [7; 32],
        ModuleHash::of(&module),
        Arc::new(module),
        Arc::new(Vec::new()),
        task_index,
    )
}

/// Builds the native Mandelbrot sample (the release build if `release`, else the debug one)
/// and returns its executable.
pub fn build_native_mandelbrot(release: bool) -> PathBuf {
    let mut args = vec!["build", "--quiet", "-p", "rjs-sample-mandelbrot"];
    if release {
        args.push("--release");
    }
    let status = Command::new(env!("CARGO"))
        .args(&args)
        .current_dir(paths::workspace_root())
        .status()
        .expect("running cargo build");
    assert!(status.success(), "building the native Mandelbrot");
    let profile = if release { "release" } else { "debug" };
    paths::target_dir().join(profile).join("mandelbrot")
}

/// Runs tile `index` of 8 (1024x1024, at most 1000 iterations) with the native build `exe`
/// in `dir`, as the sample's tasks run in the sandbox.
pub fn run_native_tile(exe: &Path, index: u32, dir: &Path) -> Output {
    let out = Command::new(exe)
        .args(["1024", "1024", "1000"])
        .env("RJS_TASK_INDEX", index.to_string())
        .env("RJS_TASK_COUNT", "8")
        .current_dir(dir)
        .output()
        .expect("running the native Mandelbrot");
    assert!(out.status.success(), "native Mandelbrot tile {index}");
    out
}
