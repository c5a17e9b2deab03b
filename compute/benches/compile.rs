//! Big modules: validation before upload, compilation on a node, and the caches.
//! `cargo bench -p rjs-compute --bench compile [-- --mb 8,30,69]` (default `8,30`).
//!
//! For each size, a module of that much code (`rjs_harness::modules::slow_to_compile`:
//! register-heavy functions, generated in milliseconds) is
//! 1. validated as `rjs-sign pack`, `verify` and the web server do (`check_module`: the
//!    nodes' feature set, imports, `_start`; no compilation);
//! 2. compiled by a node's sandbox (2 slots: wasmtime's parallel compilation on 2 threads),
//!    timed by the worker (`load_us`) and from outside;
//! 3. run again in the same sandbox (the worker's memory cache) and in a new sandbox on the
//!    same work directory (the disk cache, as after a node restart): compiled once per node.
//!
//! Prints one table; the figures are in `docs/benchmarks.md`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rjs_compute::job::{ModuleHash, TaskSpec};
use rjs_compute::sandbox::{ModuleSource, Sandbox, SandboxConfig};
use rjs_harness::report::{Row, print_table};
use rjs_signer::Limits;
use rjs_signer::answer::Ending;

// Only its sample-task helper is used here.
#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

fn task(module: Vec<u8>) -> TaskSpec {
    let hello = support::unpacked_sample_task(&rjs_harness::paths::sample("hello"), 0);
    TaskSpec {
        name: "slow".into(),
        module_sha256: ModuleHash::of(&module),
        module: Arc::new(module),
        args: Vec::new(),
        env: Vec::new(),
        outputs: Vec::new(),
        limits: Limits {
            time_ms: 1000,
            ..Limits::default()
        },
        ..hello
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn main() {
    let mut sizes = vec![8usize, 30];
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--mb") {
        sizes = args
            .get(i + 1)
            .expect("--mb 8,30,69")
            .split(',')
            .map(|s| s.parse().expect("--mb takes sizes in MB"))
            .collect();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let start_with = |dir: &std::path::Path, slots: usize| {
        let mut cfg = SandboxConfig::new(dir);
        cfg.slots = slots;
        cfg.worker_exe = Some(PathBuf::from(env!("CARGO_BIN_EXE_rjs-compute")));
        rt.block_on(Sandbox::start(cfg)).expect("sandbox")
    };
    let start = |dir: &std::path::Path| start_with(dir, 2);
    let mut first_size = true;
    let mut rows = Vec::new();
    for mb in sizes {
        let t = Instant::now();
        let module = rjs_harness::modules::slow_to_compile(mb << 20);
        let generated = t.elapsed();
        let real_mb = module.len() as f64 / 1e6;
        println!("== {real_mb:.1} MB module (generated in {generated:?}) ==");

        let mut best = Duration::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            rjs_signer::wasm::check_module(&module).expect("valid");
            best = best.min(t.elapsed());
        }
        println!("validation (check_module), best of 3: {}", secs(best));
        rows.push(Row::info(
            format!("validate {real_mb:.0} MB module (pack/verify/upload)"),
            format!("{} ({:.0} MB/s)", secs(best), real_mb / best.as_secs_f64()),
        ));

        let dir = tempfile::tempdir().expect("tempdir");
        let sandbox = start(dir.path());
        let run = |sandbox: &Sandbox, t: TaskSpec| {
            rt.block_on(async {
                let slot = sandbox.acquire().await.expect("slot");
                let t0 = Instant::now();
                let (r, timings) = sandbox.run_timed(slot, t).await;
                (r, timings, t0.elapsed())
            })
        };
        let (r, first, wall) = run(&sandbox, task(module.clone()));
        assert_eq!(r.ending, Ending::Exit { code: 0 }, "{r:?}");
        assert_eq!(first.module, Some(ModuleSource::Compiled));
        let compile = Duration::from_micros(first.load_us);
        println!(
            "compiled in {} (task {}), {:.1} MB/s",
            secs(compile),
            secs(wall),
            real_mb / compile.as_secs_f64()
        );
        rows.push(Row::info(
            format!("compile {real_mb:.0} MB module, 2 slots (first task)"),
            format!(
                "{} ({:.1} MB/s)",
                secs(compile),
                real_mb / compile.as_secs_f64()
            ),
        ));
        if std::mem::take(&mut first_size) {
            // The same compilation on one thread: what parallel compilation gains.
            let one_dir = tempfile::tempdir().expect("tempdir");
            let one = start_with(one_dir.path(), 1);
            let (_, t1, _) = run(&one, task(module.clone()));
            let single = Duration::from_micros(t1.load_us);
            rows.push(Row::info(
                format!("compile {real_mb:.0} MB module, 1 slot (one thread)"),
                format!(
                    "{} (2 slots: {:.2}x faster)",
                    secs(single),
                    single.as_secs_f64() / compile.as_secs_f64()
                ),
            ));
            rt.block_on(one.shutdown());
        }
        let (_, again, wall) = run(&sandbox, task(module.clone()));
        assert_eq!(again.module, Some(ModuleSource::Memory));
        rows.push(Row::info(
            format!("{real_mb:.0} MB module, next task (memory cache)"),
            secs(wall),
        ));
        rt.block_on(sandbox.shutdown());
        let restarted = start(dir.path());
        let (_, disk, wall) = run(&restarted, task(module.clone()));
        assert_eq!(disk.module, Some(ModuleSource::Disk));
        rows.push(Row::info(
            format!("{real_mb:.0} MB module after a node restart (disk cache)"),
            format!(
                "{} (loading the compiled code: {:.1} ms)",
                secs(wall),
                disk.load_us as f64 / 1000.0
            ),
        ));
        rt.block_on(restarted.shutdown());
    }
    print_table(&rows);
}
