//! The native build of the Mandelbrot sample, that the sandbox test and the sandbox benchmark
//! compare the sandbox against (`#[path]`-included by `benches/sandbox.rs`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rjs_harness::paths;

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
