//! Sandbox benchmark: `samples/build.sh && cargo bench -p rjs-compute --bench sandbox`.
//!
//! 1. Mandelbrot 1024² (max 1000 iterations), 8 tiles one at a time: the native release build
//!    (process spawn to exit) against the sandbox (`_start` alone, and the whole `run()`:
//!    scratch set-up, instantiation, run, collecting out/). The sandbox adds no instrumentation
//!    to the job's code, so the ratio should stay near 1 (epoch or fuel checks cost ~1.8x on
//!    this loop, measured here).
//! 2. A warm `hello` task end to end (module cached), median of 200.
//!
//! Exits non-zero if the sandbox is more than 1.25x native on the Mandelbrot tiles.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rjs_compute::job::TaskSpec;
use rjs_compute::sandbox::{Sandbox, SandboxConfig};
use rjs_signer::answer::Ending;

#[path = "../tests/support/mod.rs"]
mod support;

fn task(job: &str, index: u32) -> TaskSpec {
    support::unpacked_sample_task(&rjs_harness::paths::sample(job), index)
}

fn main() {
    let native = support::build_native_mandelbrot(true);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = SandboxConfig::new(dir.path());
    cfg.slots = 1;
    cfg.worker_exe = Some(PathBuf::from(env!("CARGO_BIN_EXE_rjs-compute")));
    let sandbox: Sandbox = rt.block_on(Sandbox::start(cfg)).expect("sandbox");
    let run = |t: TaskSpec| {
        rt.block_on(async {
            let slot = sandbox.acquire().await.expect("slot");
            sandbox.run_timed(slot, t).await
        })
    };
    // Compile once outside the measurement.
    assert_eq!(
        run(task("mandelbrot", 0)).0.ending,
        Ending::Exit { code: 0 }
    );

    println!("== Mandelbrot 1024x1024, max 1000 iterations, best of 3 per tile ==");
    let (mut n_sum, mut s_sum, mut t_sum) = (0u128, 0u128, 0u128);
    for i in 0..8u32 {
        let mut best_native = u128::MAX;
        let mut best = (u128::MAX, u128::MAX);
        for _ in 0..3 {
            let d = tempfile::tempdir().expect("tempdir");
            let t = Instant::now();
            support::run_native_tile(&native, i, d.path());
            best_native = best_native.min(t.elapsed().as_micros());
            let (r, timings) = run(task("mandelbrot", i));
            assert_eq!(r.ending, Ending::Exit { code: 0 });
            best = best.min((u128::from(timings.run_us), u128::from(timings.total_us)));
        }
        println!(
            "tile {i}: native {best_native:>7} µs  sandbox _start {:>7} µs  run() {:>7} µs  ratio {:.3}",
            best.0,
            best.1,
            best.0 as f64 / best_native as f64
        );
        n_sum += best_native;
        s_sum += best.0;
        t_sum += best.1;
    }
    let ratio = s_sum as f64 / n_sum as f64;
    println!(
        "all tiles: native {:.1} ms, sandbox _start {:.1} ms, sandbox run() {:.1} ms: ratio {ratio:.3} (target <= 1.25)",
        n_sum as f64 / 1e3,
        s_sum as f64 / 1e3,
        t_sum as f64 / 1e3
    );

    println!("\n== hello, warm (module cached), 200 runs ==");
    let mut totals: Vec<Duration> = (0..200)
        .map(|_| {
            let t = Instant::now();
            let (r, _) = run(task("hello", 0));
            assert_eq!(r.ending, Ending::Exit { code: 0 });
            t.elapsed()
        })
        .collect();
    totals.sort();
    println!(
        "hello run(): median {:.3} ms, p90 {:.3} ms ({:.0} tasks/s on one slot)",
        totals[100].as_secs_f64() * 1e3,
        totals[180].as_secs_f64() * 1e3,
        1.0 / totals[100].as_secs_f64()
    );
    rt.block_on(sandbox.shutdown());
    if ratio > 1.25 {
        eprintln!("the sandbox costs more than 1.25x native");
        std::process::exit(1);
    }
}
