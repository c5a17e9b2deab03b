//! The sandbox through the real worker binary (`target/debug/rjs-compute worker`) and the
//! real sample jobs (`target/rjs-samples`, built by `samples/build.sh`): every misbehaving job
//! ends in an answer naming its limit or trap and the node keeps serving; Mandelbrot tiles are
//! byte-identical to the native build's; the module cache; slots and concurrency.
//!
//! Timings are printed (`cargo test -p rjs-compute --test sandbox -- --nocapture`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rjs_compute::job::{ModuleHash, TaskResult, TaskSpec};
use rjs_compute::sandbox::{ModuleSource, Sandbox, SandboxConfig, SandboxError, TaskPhase};
use rjs_harness::paths;
use rjs_signer::Limits;
use rjs_signer::answer::{Ending, LimitKind};

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_rjs-compute");

fn samples_dir() -> PathBuf {
    let dir = paths::samples_dir();
    assert!(
        dir.join("hello/hello.wasm").is_file(),
        "sample jobs missing in {}: run samples/build.sh first",
        dir.display()
    );
    dir
}

/// Task `index` of a sample job, as the job server would build it from the verified bundle.
fn sample_task(job: &str, index: u32) -> TaskSpec {
    support::unpacked_sample_task(&samples_dir().join(job), index)
}

/// A task of `module` as the job `name`, otherwise as hello's task 0 but with no arguments
/// and no environment.
fn module_task(name: &str, module: Vec<u8>) -> TaskSpec {
    TaskSpec {
        name: name.into(),
        module_sha256: ModuleHash::of(&module),
        module: Arc::new(module),
        args: Vec::new(),
        env: Vec::new(),
        ..sample_task("hello", 0)
    }
}

struct Node {
    sandbox: Sandbox,
    dir: tempfile::TempDir,
}

impl Node {
    fn work_dir(&self) -> &Path {
        self.dir.path()
    }
}

fn config(work_dir: &Path, slots: usize) -> SandboxConfig {
    let mut c = SandboxConfig::new(work_dir);
    c.slots = slots;
    c.worker_exe = Some(PathBuf::from(BIN));
    c.max_memory_bytes = 1 << 30;
    c
}

async fn node(slots: usize) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::start(config(dir.path(), slots)).await.unwrap();
    Node { sandbox, dir }
}

async fn run(sandbox: &Sandbox, task: TaskSpec) -> TaskResult {
    let slot = sandbox.acquire().await.expect("a slot");
    sandbox.run(slot, task).await
}

/// [`run`], printing the result as `what` with the time it took.
async fn run_printed(sandbox: &Sandbox, what: &str, task: TaskSpec) -> (TaskResult, Duration) {
    let t0 = Instant::now();
    let r = run(sandbox, task).await;
    let elapsed = t0.elapsed();
    println!("{what}: {r:?} after {elapsed:?}");
    (r, elapsed)
}

/// Hello's task 0 with its limits changed by `set`, run on `node` and printed as
/// `hello with <what>`.
async fn run_hello_with(node: &Node, what: &str, set: impl FnOnce(&mut Limits)) -> TaskResult {
    let mut task = sample_task("hello", 0);
    set(&mut task.limits);
    let r = run(&node.sandbox, task).await;
    println!("hello with {what}: {:?} {:?}", r.ending, r.limits_hit);
    r
}

/// The sample `evil-loop` (it spins forever) with a CPU-time limit of `time_ms`.
fn evil_loop(time_ms: u64) -> TaskSpec {
    let mut task = sample_task("evil-loop", 0);
    task.limits.time_ms = time_ms;
    task
}

/// Nothing of any task is left in a scratch directory: it holds only the slots' `slot-<i>`
/// (`out/`) and `tmp-<i>` (`/tmp`) directories, each empty.
fn assert_scratch_dir_clean(scratch: &Path) {
    for entry in std::fs::read_dir(scratch).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            (name.starts_with("slot-") || name.starts_with("tmp-"))
                && entry.file_type().unwrap().is_dir(),
            "{} left in the scratch directory",
            entry.path().display()
        );
        let left: Vec<_> = std::fs::read_dir(entry.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "left behind in {name}: {left:?}");
    }
}

fn assert_scratch_empty(work_dir: &Path) {
    assert_scratch_dir_clean(&work_dir.join("scratch"));
}

/// The node still serves a normal task after whatever came before.
async fn assert_hello_works(node: &Node) {
    let r = run(&node.sandbox, sample_task("hello", 0)).await;
    assert_eq!(r.ending, Ending::Exit { code: 0 }, "{r:?}");
    assert_eq!(r.stdout, b"hello, world from task 0/1\n");
    assert_eq!(
        r.out_files,
        vec![(
            "hello-0.txt".to_string(),
            b"hello, world from task 0/1\n".to_vec()
        )]
    );
    assert!(r.limits_hit.is_empty());
    assert_scratch_empty(node.work_dir());
}

/// The task ended by reaching `limit`.
#[track_caller]
fn assert_limit(r: &TaskResult, limit: LimitKind) {
    assert!(
        matches!(&r.ending, Ending::Limit { limit: l, .. } if *l == limit),
        "{r:?}"
    );
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_runs_and_reports_timings() {
    let t0 = Instant::now();
    let node = node(1).await;
    println!(
        "Sandbox::start with one slot (spawn + engine + hello): {:?}",
        t0.elapsed()
    );
    assert_eq!(node.sandbox.slots(), 1);
    assert_eq!(node.sandbox.busy(), 0);
    let mut runs = Vec::new();
    for _ in 0..20 {
        let slot = node.sandbox.acquire().await.unwrap();
        let (r, t) = node.sandbox.run_timed(slot, sample_task("hello", 0)).await;
        assert_eq!(r.ending, Ending::Exit { code: 0 }, "{r:?}");
        runs.push(t);
    }
    assert_hello_works(&node).await;
    assert_eq!(runs[0].module, Some(ModuleSource::Compiled));
    assert!(
        runs[1..]
            .iter()
            .all(|t| t.module == Some(ModuleSource::Memory))
    );
    let mut warm: Vec<_> = runs[1..].iter().collect();
    warm.sort_by_key(|t| t.instantiate_us + t.run_us);
    let median = warm[warm.len() / 2];
    let mut totals: Vec<_> = runs[1..].iter().map(|t| t.total_us).collect();
    totals.sort();
    println!(
        "hello: first run compile {} µs, instantiate {} µs, run {} µs, total {} µs; \
         warm median instantiate {} µs + run {} µs, run() total median {} µs",
        runs[0].load_us,
        runs[0].instantiate_us,
        runs[0].run_us,
        runs[0].total_us,
        median.instantiate_us,
        median.run_us,
        totals[totals.len() / 2]
    );
    node.sandbox.shutdown().await;
}

/// `tests/fixtures/probe.rs` compiled for wasm32-wasip1 (needs that rustup target, which
/// `samples/build.sh` installs).
fn probe_module() -> Vec<u8> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/probe.rs");
    compile_wasm(&src, "probe")
}

/// The task ([`module_task`]) of a one-file Rust program (`source`) compiled for
/// wasm32-wasip1 as `<name>.wasm`.
fn task_from_source(name: &str, source: &str) -> TaskSpec {
    let dir = paths::target_dir().join("rjs-sandbox-probe");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join(format!("{name}.rs"));
    std::fs::write(&src, source).unwrap();
    module_task(name, compile_wasm(&src, name))
}

fn compile_wasm(src: &Path, name: &str) -> Vec<u8> {
    let dir = paths::target_dir().join("rjs-sandbox-probe");
    std::fs::create_dir_all(&dir).unwrap();
    // A name of its own per call: tests compiling the same program at once must not share
    // rustc's output and intermediate files.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let wasm = dir.join(format!("{name}-{}-{n}.wasm", std::process::id()));
    let status = Command::new("rustc")
        .args([
            "--edition",
            "2024",
            "--target",
            "wasm32-wasip1",
            "-C",
            "opt-level=1",
        ])
        .arg("-o")
        .arg(&wasm)
        .arg(src)
        .status()
        .expect("running rustc");
    assert!(status.success(), "compiling {}", src.display());
    let bytes = std::fs::read(&wasm).unwrap();
    let _ = std::fs::remove_file(&wasm);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_sees_only_its_inputs_args_env_and_out() {
    let node = node(1).await;
    let task = probe_seeing(Arc::new(vec![(
        "data/in.txt".into(),
        b"input bytes".to_vec(),
    )]));
    let r = run(&node.sandbox, task).await;
    let stdout = text(&r.stdout);
    println!("probe: {:?}\n{stdout}", r.ending);
    assert_eq!(
        r.ending,
        Ending::Exit { code: 0 },
        "{stdout}{}",
        text(&r.stderr)
    );
    assert!(!stdout.contains("FAIL"));
    assert_eq!(r.stderr, b"probe: done\n");
    assert_eq!(
        r.out_files,
        vec![
            ("result.txt".to_string(), b"result".to_vec()),
            ("sub/deeper/x.bin".to_string(), vec![1, 2, 3]),
        ]
    );
    assert!(r.limits_hit.is_empty());
    assert_scratch_empty(node.work_dir());
    assert_hello_works(&node).await;
}

/// `scratch_in` (e.g. `/dev/shm`): the slots' out/ directories go to a private
/// `rjs-scratch-<id>` there, emptied after every task and removed with the sandbox; the
/// inputs of a bundle are written once and shared, read-only, by its tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_elsewhere_and_inputs_written_once() {
    let dir = tempfile::tempdir().unwrap();
    // A RAM filesystem if there is one (the fast path), else any directory.
    let shm = Path::new("/dev/shm");
    let parent_tmp = tempfile::tempdir().unwrap();
    let parent = if shm.is_dir() { shm } else { parent_tmp.path() };
    let mut cfg = config(dir.path(), 1);
    cfg.scratch_in = Some(parent.to_path_buf());
    let sandbox = Sandbox::start(cfg).await.unwrap();
    let scratch = sandbox.scratch_dir().to_path_buf();
    assert_eq!(
        scratch.parent(),
        Some(&*std::fs::canonicalize(parent).unwrap())
    );
    let name = scratch.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("rjs-scratch-") && name.len() == 12 + 16,
        "{name}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&scratch).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);

    let inputs = Arc::new(vec![("data/in.txt".to_string(), b"input bytes".to_vec())]);
    for task in [
        probe_seeing(inputs.clone()),
        probe_seeing(inputs.clone()),
        // Equal inputs, another allocation: the same directory.
        probe_seeing(Arc::new((*inputs).clone())),
    ] {
        let r = run(&sandbox, task).await;
        assert_eq!(r.ending, Ending::Exit { code: 0 }, "{}", text(&r.stdout));
        assert!(!text(&r.stdout).contains("FAIL"), "{}", text(&r.stdout));
        assert_eq!(r.out_files.len(), 2, "{:?}", r.out_files);
        assert_scratch_dir_clean(&scratch);
        // `empty/` and the one directory of these inputs.
        assert_eq!(
            std::fs::read_dir(dir.path().join("inputs"))
                .unwrap()
                .count(),
            2
        );
    }
    // A tiny task (the inline path on a RAM filesystem).
    for i in 0..3 {
        let task = TaskSpec {
            task_count: 3,
            ..sample_task("hello", i)
        };
        let r = run(&sandbox, task).await;
        assert_eq!(r.ending, Ending::Exit { code: 0 });
        let line = format!("hello, world from task {i}/3\n");
        assert_eq!(
            r.out_files,
            vec![(format!("hello-{i}.txt"), line.into_bytes())]
        );
        assert_scratch_dir_clean(&scratch);
    }
    sandbox.shutdown().await;
    assert!(!scratch.exists(), "removed with the sandbox");
}

fn probe_task(args: &[&str]) -> TaskSpec {
    TaskSpec {
        bundle_sha256: [9; 32],
        args: args.iter().map(|a| a.to_string()).collect(),
        limits: Limits {
            time_ms: 20_000,
            output_bytes: 1 << 20,
            ..Limits::default()
        },
        ..module_task("probe", probe_module())
    }
}

/// The probe checking what a job sees: `inputs`, two arguments, one environment variable,
/// task 2 of 5 (`the_job_sees_only_its_inputs_args_env_and_out`).
fn probe_seeing(inputs: Arc<Vec<(String, Vec<u8>)>>) -> TaskSpec {
    TaskSpec {
        inputs,
        args: vec!["a".into(), "b c".into()],
        env: vec![("FOO".into(), "bar".into())],
        task_index: 2,
        task_count: 5,
        limits: Limits::default(),
        ..probe_task(&[])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_files_are_stopped_by_the_output_poll() {
    let node = node(1).await;
    // Each file within RLIMIT_FSIZE, their total over output_bytes.
    let r = run(&node.sandbox, probe_task(&["flood"])).await;
    let total: usize = r.out_files.iter().map(|(_, b)| b.len()).sum();
    println!(
        "flood: {:?} after {} ms, {} files ({total} bytes) returned",
        r.ending,
        r.wall_ms,
        r.out_files.len()
    );
    assert_limit(&r, LimitKind::Output);
    assert!(total <= 1 << 20);
    assert!(r.wall_ms < 5_000);
    assert_scratch_empty(node.work_dir());
    // More files than the node allows.
    let r = run(&node.sandbox, probe_task(&["files"])).await;
    println!(
        "files: {:?} after {} ms, {} files returned",
        r.ending,
        r.wall_ms,
        r.out_files.len()
    );
    assert_limit(&r, LimitKind::Output);
    assert!(r.out_files.len() <= SandboxConfig::new("/").max_out_files);
    assert_hello_works(&node).await;
}

/// The message of a `Limit` ending.
#[track_caller]
fn limit_message(r: &TaskResult) -> &str {
    match &r.ending {
        Ending::Limit { message, .. } => message,
        other => panic!("not a limit: {other:?}"),
    }
}

/// A task stopped by its CPU-time limit of `limit` ms used at least that much CPU time and
/// not much more (the supervisor reads the worker's CPU clock when the limit could be up,
/// then again at most every few ms as it nears it).
#[track_caller]
fn assert_stopped_by_cpu(r: &TaskResult, limit: u64) {
    assert_limit(r, LimitKind::Time);
    assert!(
        limit_message(r).starts_with("cpu: "),
        "{}",
        limit_message(r)
    );
    assert!(
        (limit..limit + 100).contains(&r.cpu_ms),
        "stopped at {} ms of CPU time, limit {limit} ms",
        r.cpu_ms
    );
    // CPU time cannot run ahead of the wall clock for one thread (1 ms rounding).
    assert!(r.wall_ms + 1 >= r.cpu_ms, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evil_loop_is_stopped_at_its_cpu_time_limit() {
    let node = node(1).await;
    let task = sample_task("evil-loop", 0);
    let limit = task.limits.time_ms;
    let (r, _) = run_printed(&node.sandbox, "evil-loop", task).await;
    assert_stopped_by_cpu(&r, limit);
    assert_eq!(r.limits_hit, [LimitKind::Time]);
    // What it wrote before it was stopped is kept.
    assert_eq!(text(&r.stderr), "evil-loop: spinning forever\n");
    // How much wall-clock time that took depends on what else runs on the machine (the
    // tests in this file run in parallel): time spent waiting for a CPU is not charged.
    let stats = node.sandbox.stats();
    assert_eq!(stats.workers_killed, 1);
    assert_eq!(stats.workers_started, 2, "the killed worker was replaced");
    assert_hello_works(&node).await;
}

/// Jobs run at nice 10. With every core kept busy at nice 0 (as by an owner's own work) the
/// loop gets a twentieth of a core or less: it waits far longer than the wall-clock backstop, and
/// is still stopped by its CPU time, not for being starved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_starved_of_cpu_is_stopped_by_its_cpu_time_not_the_backstop() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let node = node(1).await;
    let task = evil_loop(1000);
    let stop = Arc::new(AtomicBool::new(false));
    // Two busy threads per core: the loop's share stays far below the backstop's even when
    // other tests (running beside this one) take some of the hogs' time.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let hogs: Vec<_> = (0..2 * cores)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 1u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005) + 1);
                }
            })
        })
        .collect();
    let r = run(&node.sandbox, task).await;
    stop.store(true, Ordering::Relaxed);
    for h in hogs {
        h.join().unwrap();
    }
    println!("starved evil-loop: {r:?}");
    assert_stopped_by_cpu(&r, 1000);
    // The premise: it was starved beyond the backstop (6 s for a 1 s limit).
    let backstop = rjs_compute::sandbox::wall_limit(1000);
    assert!(
        r.wall_ms > backstop.as_millis() as u64,
        "not starved: {r:?}"
    );
    assert_hello_works(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evil_membomb_hits_the_memory_limit() {
    let node = node(1).await;
    let r = run(&node.sandbox, sample_task("evil-membomb", 0)).await;
    println!("evil-membomb: {:?} {:?}", r.ending, r.limits_hit);
    match &r.ending {
        Ending::Limit {
            limit: LimitKind::Memory,
            message,
        } => assert!(message.contains("67108864"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(r.limits_hit.contains(&LimitKind::Memory));
    assert!(r.wall_ms < 2000, "stopped by memory, not by time");
    assert_hello_works(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evil_recurse_traps() {
    let node = node(1).await;
    let r = run(&node.sandbox, sample_task("evil-recurse", 0)).await;
    println!("evil-recurse: {:?}", r.ending);
    // Rust's wasm32 code keeps its frames' arrays on a shadow stack in linear memory (1 MiB
    // below the data): the recursion runs off its bottom, an out-of-bounds access, long
    // before wasmtime's own 512 KiB stack limit would trap with "call stack exhausted".
    match &r.ending {
        Ending::Trap { message } => {
            assert!(
                message.starts_with("wasm trap: out of bounds memory access\n"),
                "{message}"
            );
            assert!(message.contains("evil_recurse::recurse"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(text(&r.stderr).contains("recursing forever"));
    assert_hello_works(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evil_output_is_held_to_its_limits() {
    let node = node(1).await;
    let task = sample_task("evil-output", 0);
    let limits = task.limits;
    let r = run(&node.sandbox, task).await;
    println!(
        "evil-output: {:?} {:?}, stdout {} bytes, stderr {:?}, out {:?}",
        r.ending,
        r.limits_hit,
        r.stdout.len(),
        text(&r.stderr),
        r.out_files
            .iter()
            .map(|(n, b)| (n, b.len()))
            .collect::<Vec<_>>()
    );
    assert!(
        r.limits_hit.contains(&LimitKind::Output) || r.limits_hit.contains(&LimitKind::Stdout),
        "{r:?}"
    );
    assert!(
        matches!(
            &r.ending,
            Ending::Exit { code: 3 }
                | Ending::Limit {
                    limit: LimitKind::Output | LimitKind::Stdout,
                    ..
                }
        ),
        "{:?}",
        r.ending
    );
    let out: u64 = r.out_files.iter().map(|(_, b)| b.len() as u64).sum();
    assert!(out <= limits.output_bytes, "{out} bytes returned");
    assert!(r.stdout.len() as u64 <= limits.stdout_bytes);
    assert!(r.stderr.len() as u64 <= limits.stdout_bytes);
    assert_hello_works(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evil_escape_is_blocked() {
    let node = node(1).await;
    let r = run(&node.sandbox, sample_task("evil-escape", 0)).await;
    let stdout = text(&r.stdout);
    println!("evil-escape: {:?}\n{stdout}", r.ending);
    assert_eq!(r.ending, Ending::Exit { code: 0 }, "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    for what in [
        "read /etc/passwd",
        "read ../../etc/passwd",
        "write /var/tmp/rjs-evil-escaped",
        "connect tcp 127.0.0.1:80",
        "bind udp 0.0.0.0:0",
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("BLOCKED: {what}: "))),
            "{what} not blocked:\n{stdout}"
        );
    }
    assert!(!stdout.contains("ESCAPED"));
    assert!(!Path::new("/var/tmp/rjs-evil-escaped").exists());
    assert!(r.out_files.is_empty());
    assert_hello_works(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_is_a_crash_and_is_replaced() {
    let node = node(1).await;
    let sandbox = node.sandbox.clone();
    let task = evil_loop(30_000);
    let running = tokio::spawn(async move { run(&sandbox, task).await });
    // Find this node's worker (its cwd is the work dir) and kill it as the kernel's OOM
    // killer would.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = worker_pids(node.work_dir());
    assert_eq!(pid.len(), 1, "{pid:?}");
    unsafe { libc::kill(pid[0], libc::SIGKILL) };
    let r = running.await.unwrap();
    println!("killed worker: {:?}", r.ending);
    match &r.ending {
        Ending::Crash { message } => assert!(message.contains("SIGKILL"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(node.sandbox.stats().crashes, 1);
    assert_hello_works(&node).await;
}

/// Worker processes whose working directory is `work_dir`.
fn worker_pids(work_dir: &Path) -> Vec<i32> {
    let want = work_dir.canonicalize().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd"))
                .ok()
                .as_deref()
                == Some(&want)
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| c.ends_with(b"\0worker\0"))
                    .unwrap_or(false)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandelbrot_tiles_are_identical_to_native() {
    // The native build of the same program.
    let native = support::build_native_mandelbrot(false);

    let node = node(2).await;
    let tasks: Vec<_> = (0..8).map(|i| sample_task("mandelbrot", i)).collect();
    let t0 = Instant::now();
    let handles: Vec<_> = tasks
        .into_iter()
        .map(|task| {
            let sandbox = node.sandbox.clone();
            tokio::spawn(async move {
                let slot = sandbox.acquire().await.unwrap();
                sandbox.run_timed(slot, task).await
            })
        })
        .collect();
    let mut results = Vec::new();
    for h in handles {
        results.push(h.await.unwrap());
    }
    let sandbox_wall = t0.elapsed();
    assert_scratch_empty(node.work_dir());

    let mut native_total = Duration::ZERO;
    let mut sandbox_run = Duration::ZERO;
    for (i, (r, t)) in results.iter().enumerate() {
        assert_eq!(r.ending, Ending::Exit { code: 0 }, "tile {i}: {r:?}");
        let name = format!("tile-{i}.png");
        assert_eq!(r.out_files.len(), 1);
        assert_eq!(r.out_files[0].0, name);

        let dir = tempfile::tempdir().unwrap();
        let t = (Instant::now(), t);
        let out = support::run_native_tile(&native, i as u32, dir.path());
        native_total += t.0.elapsed();
        sandbox_run += Duration::from_micros(t.1.run_us);
        assert_eq!(out.stdout, r.stdout, "tile {i} stdout");
        let native_png = std::fs::read(dir.path().join("out").join(&name)).unwrap();
        assert!(
            native_png == r.out_files[0].1,
            "tile {i} differs from the native build's"
        );
    }
    println!(
        "mandelbrot 8 tiles: sandbox run time (sum of _start) {:?}, 2 slots wall {:?}; \
         native debug build (sum, sequential) {:?}",
        sandbox_run, sandbox_wall, native_total
    );
    let stats = node.sandbox.stats();
    assert_eq!(stats.tasks, 8);
    // Two workers, one compile: the other slot waited for it and loaded it from disk.
    assert_eq!(stats.modules_compiled, 1, "{stats:?}");
    assert_eq!(stats.disk_cache_hits, 1, "{stats:?}");
    assert_eq!(
        stats.modules_compiled + stats.disk_cache_hits + stats.memory_cache_hits,
        8
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_modules_are_cached_in_memory_and_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::start(config(dir.path(), 1)).await.unwrap();
    let slot = sandbox.acquire().await.unwrap();
    let (r1, t1) = sandbox.run_timed(slot, sample_task("mandelbrot", 0)).await;
    let slot = sandbox.acquire().await.unwrap();
    let (r2, t2) = sandbox.run_timed(slot, sample_task("mandelbrot", 1)).await;
    assert_eq!(r1.ending, Ending::Exit { code: 0 });
    assert_eq!(r2.ending, Ending::Exit { code: 0 });
    assert_eq!(t1.module, Some(ModuleSource::Compiled));
    assert_eq!(t2.module, Some(ModuleSource::Memory));
    let stats = sandbox.stats();
    assert_eq!((stats.modules_compiled, stats.memory_cache_hits), (1, 1));

    // The compiled module is on disk, in the node's private cache directory.
    let cache = sandbox.cache_dir().unwrap();
    assert!(cache.starts_with(dir.path().join("cache")));
    let name = cache.file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.starts_with("wasmtime-48.0.8-"), "{name}");
    let sha: String = sample_task("mandelbrot", 0)
        .module_sha256
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let file = cache.join(format!("{sha}.cwasm"));
    assert!(file.is_file());
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&cache), 0o700);
    assert_eq!(mode(dir.path()), 0o700);
    sandbox.shutdown().await;

    // A new node (fresh workers) on the same work dir loads it instead of compiling.
    let sandbox = Sandbox::start(config(dir.path(), 1)).await.unwrap();
    let slot = sandbox.acquire().await.unwrap();
    let (r3, t3) = sandbox.run_timed(slot, sample_task("mandelbrot", 2)).await;
    assert_eq!(r3.ending, Ending::Exit { code: 0 });
    assert_eq!(t3.module, Some(ModuleSource::Disk));
    assert_eq!(sandbox.stats().modules_compiled, 0);
    println!(
        "mandelbrot module: compile {} µs, disk load {} µs, memory hit {} µs \
         (instantiate {} / {} / {} µs)",
        t1.load_us, t3.load_us, t2.load_us, t1.instantiate_us, t3.instantiate_us, t2.instantiate_us
    );
    // A corrupt cache file is dropped and the module compiled again.
    sandbox.shutdown().await;
    std::fs::write(&file, b"garbage").unwrap();
    let sandbox = Sandbox::start(config(dir.path(), 1)).await.unwrap();
    let slot = sandbox.acquire().await.unwrap();
    let (r4, t4) = sandbox.run_timed(slot, sample_task("hello", 0)).await;
    assert_eq!(r4.ending, Ending::Exit { code: 0 });
    assert_eq!(t4.module, Some(ModuleSource::Compiled));
    let slot = sandbox.acquire().await.unwrap();
    let (r5, t5) = sandbox.run_timed(slot, sample_task("mandelbrot", 3)).await;
    assert_eq!(r5.ending, Ending::Exit { code: 0 });
    assert_eq!(t5.module, Some(ModuleSource::Compiled));
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_slots_run_two_tasks_at_once() {
    let node = node(2).await;
    let a = node.sandbox.try_acquire().unwrap();
    let b = node.sandbox.try_acquire().unwrap();
    assert_ne!(a.index(), b.index());
    assert!(node.sandbox.try_acquire().is_none(), "no free slot");
    assert_eq!(node.sandbox.busy(), 2);
    let task = evil_loop(1500);
    let t0 = Instant::now();
    let (ra, rb) = tokio::join!(node.sandbox.run(a, task.clone()), node.sandbox.run(b, task));
    let elapsed = t0.elapsed();
    println!(
        "two 1.5 s tasks on two slots: {elapsed:?} (wall {} + {} ms)",
        ra.wall_ms, rb.wall_ms
    );
    for r in [&ra, &rb] {
        assert_stopped_by_cpu(r, 1500);
    }
    // At once: the whole took about the longer of the two, not their sum.
    assert!(
        elapsed.as_millis() as u64 + 300 < ra.wall_ms + rb.wall_ms,
        "ran one after the other: {elapsed:?}"
    );
    assert_eq!(node.sandbox.busy(), 0);
    assert!(node.sandbox.try_acquire().is_some());
    assert_hello_works(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_run_still_ends_and_cleans_up() {
    let node = node(1).await;
    let task = evil_loop(800);
    let slot = node.sandbox.try_acquire().unwrap();
    let t0 = Instant::now();
    let gave_up = tokio::time::timeout(Duration::from_millis(200), node.sandbox.run(slot, task))
        .await
        .is_err();
    assert!(gave_up);
    // The slot is still busy until the task hits its deadline and its worker is replaced.
    assert_eq!(node.sandbox.busy(), 1);
    let slot = node.sandbox.acquire().await.unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(800));
    drop(slot);
    assert_hello_works(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_over_its_limit_is_cut_and_reported() {
    let node = node(1).await;
    let r = run_hello_with(&node, "5 bytes of stdout", |l| l.stdout_bytes = 5).await;
    assert_eq!(r.stdout, b"hello");
    assert!(r.limits_hit.contains(&LimitKind::Stdout));
    // Rust's println! panics on the write error: the program aborts (a trap).
    assert!(matches!(r.ending, Ending::Trap { .. }), "{:?}", r.ending);
    assert_hello_works(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_modules_and_small_limits_end_cleanly() {
    let node = node(1).await;
    // Not WebAssembly.
    let mut task = sample_task("hello", 0);
    let junk = b"\0asm\x01\0\0\0garbage".to_vec();
    task.module_sha256 = ModuleHash::of(&junk);
    task.module = Arc::new(junk);
    let r = run(&node.sandbox, task).await;
    match &r.ending {
        Ending::Trap { message } => assert!(message.starts_with("module rejected"), "{message}"),
        other => panic!("{other:?}"),
    }
    // Bytes that do not match the declared hash are refused, never cached under it.
    let mut task = sample_task("hello", 0);
    task.module_sha256 = ModuleHash::from([1; 32]);
    let r = run(&node.sandbox, task).await;
    assert!(
        matches!(&r.ending, Ending::Trap { message } if message.contains("SHA-256")),
        "{r:?}"
    );
    // Less memory than the module's initial memory.
    let r = run_hello_with(&node, "the least memory", |l| {
        l.memory_bytes = Limits::MIN_MEMORY
    })
    .await;
    assert_limit(&r, LimitKind::Memory);
    // No output allowed: the write fails inside the job.
    let r = run_hello_with(&node, "output_bytes 0", |l| l.output_bytes = 0).await;
    assert!(r.limits_hit.contains(&LimitKind::Output), "{r:?}");
    assert!(r.out_files.iter().all(|(_, b)| b.is_empty()));
    assert_hello_works(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_running_tasks_and_refuses_new_ones() {
    let node = node(1).await;
    let task = evil_loop(30_000);
    let sandbox = node.sandbox.clone();
    let running = tokio::spawn(async move { run(&sandbox, task).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let other = node.sandbox.clone();
    let t0 = Instant::now();
    node.sandbox.shutdown().await;
    let r = running.await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(&r.ending, Ending::Crash { message } if message.contains("shutting down")),
        "{r:?}"
    );
    assert!(other.try_acquire().is_none());
    assert!(other.acquire().await.is_none());
    assert!(
        worker_pids(node.dir.path()).is_empty(),
        "workers left running"
    );
    assert_scratch_empty(node.dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_refuses_bad_configurations() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), 0);
    assert!(matches!(
        Sandbox::start(c.clone()).await,
        Err(SandboxError::Config(_))
    ));
    c.slots = 1;
    c.worker_exe = Some(PathBuf::from("/bin/true"));
    assert!(matches!(
        Sandbox::start(c.clone()).await,
        Err(SandboxError::Worker { .. })
    ));
    c.worker_exe = Some(PathBuf::from("/nonexistent/rjs-compute"));
    assert!(matches!(
        Sandbox::start(c).await,
        Err(SandboxError::Worker { .. })
    ));
    // A work directory others may write to is tightened to 0700.
    use std::os::unix::fs::PermissionsExt;
    let loose = dir.path().join("loose");
    std::fs::create_dir(&loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o777)).unwrap();
    let sandbox = Sandbox::start(config(&loose, 1)).await.unwrap();
    let mode = std::fs::metadata(&loose).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    sandbox.shutdown().await;
}

/// More spinning tasks than cores: each gets less than a whole core, so a wall-clock
/// deadline would stop some of them short of their limit (together they cannot use more
/// than `cores × elapsed`). Each is stopped by its CPU time, at its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_loops_than_cores_each_get_their_cpu_time() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = (cores + 1).min(17);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), n);
    cfg.max_memory_bytes = 64 << 20;
    let sandbox = Sandbox::start(cfg).await.unwrap();
    let limit = 1000;
    let task = evil_loop(limit);
    // Warm the module cache (one compile), so that every slot starts at once.
    let r = run(
        &sandbox,
        TaskSpec {
            limits: Limits {
                time_ms: 50,
                ..task.limits
            },
            ..task.clone()
        },
    )
    .await;
    assert_stopped_by_cpu(&r, 50);
    let t0 = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (sandbox, task) = (sandbox.clone(), task.clone());
            tokio::spawn(async move { run(&sandbox, task).await })
        })
        .collect();
    let mut results = Vec::new();
    for h in handles {
        results.push(h.await.unwrap());
    }
    let elapsed = t0.elapsed();
    let walls: Vec<_> = results.iter().map(|r| r.wall_ms).collect();
    let cpus: Vec<_> = results.iter().map(|r| r.cpu_ms).collect();
    println!(
        "{n} loops of {limit} ms CPU on {cores} cores: {elapsed:?}; wall {walls:?}, cpu {cpus:?}"
    );
    for r in &results {
        assert_stopped_by_cpu(r, limit);
    }
    // n CPU seconds on `cores` cores take at least n/cores seconds.
    assert!(
        elapsed.as_millis() as u64 >= limit * n as u64 / cores as u64 - 50,
        "{elapsed:?}"
    );
    assert!(
        walls.iter().any(|w| *w > limit + 100),
        "some loop must have waited for a core: {walls:?}"
    );
    assert_scratch_empty(dir.path());
    sandbox.shutdown().await;
}

/// A job that sleeps uses no CPU time: the wall-clock backstop ends it, reported as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_job_is_stopped_by_the_wall_clock_backstop() {
    let node = node(1).await;
    let sleeper = task_from_source(
        "sleeper",
        r#"fn main() {
    eprintln!("sleeper: sleeping for an hour");
    std::thread::sleep(std::time::Duration::from_secs(3600));
    println!("sleeper: woke up");
}
"#,
    );
    let limit = 300;
    let task = TaskSpec {
        limits: Limits {
            time_ms: limit,
            ..Limits::default()
        },
        ..sleeper
    };
    let backstop = rjs_compute::sandbox::wall_limit(limit);
    assert_eq!(backstop, Duration::from_millis(limit + 5000));
    // Timed from the moment it runs: compiling it (slow while other tests here hog the
    // cores) counts against neither its limit nor its backstop.
    let (phase, mut watched) = tokio::sync::watch::channel(TaskPhase::Preparing);
    let running_at = tokio::spawn(async move {
        watched
            .wait_for(|p| matches!(p, TaskPhase::Running))
            .await
            .map(|_| Instant::now())
    });
    let slot = node.sandbox.acquire().await.expect("a slot");
    let (r, _) = node.sandbox.run_watched(slot, task, phase).await;
    let elapsed = running_at.await.unwrap().expect("it ran").elapsed();
    println!("sleeper: {r:?} after {elapsed:?} running");
    assert_limit(&r, LimitKind::Time);
    let message = limit_message(&r);
    assert!(message.starts_with("wall-time: "), "{message}");
    assert!(message.contains("CPU-time limit of 300 ms"), "{message}");
    assert_eq!(r.limits_hit, [LimitKind::Time]);
    let backstop_ms = backstop.as_millis() as u64;
    assert!(
        (backstop_ms..backstop_ms + 1000).contains(&r.wall_ms),
        "{r:?}"
    );
    assert!(r.cpu_ms < limit, "it slept: {r:?}");
    assert_eq!(text(&r.stderr), "sleeper: sleeping for an hour\n");
    assert!(r.stdout.is_empty());
    assert!(elapsed < backstop + Duration::from_secs(3), "{elapsed:?}");
    assert_hello_works(&node).await;
}

/// The wall-clock backstop: twice the CPU-time limit between 5 and 20 s, else the limit plus
/// 5 s (below) or plus 20 s (above).
#[test]
fn wall_limit_rule() {
    use rjs_compute::sandbox::wall_limit;
    let s = Duration::from_secs;
    assert_eq!(wall_limit(1), Duration::from_millis(5001));
    assert_eq!(wall_limit(2000), s(7));
    assert_eq!(wall_limit(5000), s(10));
    assert_eq!(wall_limit(12_000), s(24));
    assert_eq!(wall_limit(20_000), s(40));
    assert_eq!(wall_limit(60_000), s(80));
    assert_eq!(wall_limit(86_400_000), s(86_420));
}

/// A slot's out/ is one directory reused task after task: whatever a task leaves there
/// (files, directories, after a normal end or a kill), the next task finds it empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_never_sees_an_earlier_tasks_files() {
    let node = node(1).await;
    let lister = task_from_source(
        "lister",
        r#"fn main() {
    let mut names: Vec<String> = std::fs::read_dir("out")
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    println!("{names:?}");
    std::fs::write("out/left-behind.txt", b"x").unwrap();
    std::fs::create_dir_all("out/d/e").unwrap();
    std::fs::write("out/d/e/f.txt", b"y").unwrap();
}
"#,
    );
    let slot_dir = node.work_dir().join("scratch/slot-0");
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let first = ino(&slot_dir);
    for before in ["lister", "hello", "evil-output", "evil-loop"] {
        let task = match before {
            "lister" => lister.clone(),
            "evil-loop" => TaskSpec {
                limits: Limits {
                    time_ms: 200,
                    ..Limits::default()
                },
                ..sample_task("evil-loop", 0)
            },
            job => sample_task(job, 0),
        };
        let r = run(&node.sandbox, task).await;
        if before == "lister" {
            assert_eq!(r.ending, Ending::Exit { code: 0 }, "{r:?}");
            assert_eq!(r.out_files.len(), 2, "{:?}", r.out_files);
        }
        assert_scratch_empty(node.work_dir());
        let r = run(&node.sandbox, lister.clone()).await;
        assert_eq!(r.ending, Ending::Exit { code: 0 }, "{r:?}");
        assert_eq!(text(&r.stdout), "[]\n", "after {before}");
        assert_scratch_empty(node.work_dir());
    }
    // The same directory all along (no directory made or removed per task).
    assert_eq!(ino(&slot_dir), first);
}

/// A module built as a current toolchain builds them (exception handling, a tail call, two
/// memories, SIMD) runs: exit 42 is 22 from the caught exception plus 20 from the second
/// memory, through the tail call and a SIMD lane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_using_wasm3_features_runs() {
    let node = node(1).await;
    let module = rjs_harness::modules::modern_command();
    rjs_signer::wasm::check_module(&module).unwrap();
    let r = run(&node.sandbox, module_task("modern", module)).await;
    assert_eq!(r.ending, Ending::Exit { code: 42 }, "{}", text(&r.stderr));
    assert_eq!(r.stdout, b"caught\n");
}

/// Memories share one limit: two memories that each fit `memory_bytes` but not together stop
/// the task at the memory limit; below it, the same module runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_memories_share_the_memory_limit() {
    let node = node(1).await;
    let limits = Limits {
        memory_bytes: 64 * 65536,
        ..Limits::default()
    };
    let over = TaskSpec {
        limits,
        ..module_task(
            "two-memories",
            rjs_harness::modules::two_memories_growing(40),
        )
    };
    let r = run(&node.sandbox, over).await;
    assert_limit(&r, LimitKind::Memory);
    let under = TaskSpec {
        limits,
        ..module_task(
            "two-memories",
            rjs_harness::modules::two_memories_growing(20),
        )
    };
    assert_eq!(
        run(&node.sandbox, under).await.ending,
        Ending::Exit { code: 0 }
    );
}

/// The GC heap counts against `memory_bytes` too: GC arrays kept alive past it stop the task
/// at the memory limit, not at the node's maximum; below it, the same module runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gc_heap_is_held_to_the_memory_limit() {
    let node = node(1).await;
    let limits = Limits {
        memory_bytes: 64 << 20,
        ..Limits::default()
    };
    // 200 arrays of 1 MiB: 200 MiB.
    let bomb = rjs_harness::modules::gc_arrays(1 << 18, 200);
    rjs_signer::wasm::check_module(&bomb).unwrap();
    let r = run(
        &node.sandbox,
        TaskSpec {
            limits,
            ..module_task("gc-bomb", bomb)
        },
    )
    .await;
    println!("gc bomb: {:?} {:?}", r.ending, r.limits_hit);
    assert!(
        matches!(
            r.ending,
            Ending::Limit {
                limit: LimitKind::Memory,
                ..
            }
        ),
        "{:?}",
        r.ending
    );
    // 16 arrays of 1 MiB fit.
    let fits = rjs_harness::modules::gc_arrays(1 << 18, 16);
    let r = run(
        &node.sandbox,
        TaskSpec {
            limits,
            ..module_task("gc-fits", fits)
        },
    )
    .await;
    assert_eq!(r.ending, Ending::Exit { code: 0 }, "{r:?}");
    assert_hello_works(&node).await;
}

/// The manifest's `stdin` file is the program's standard input; `TMPDIR` is a private,
/// writable `/tmp`, emptied after the task and never returned; a folder input arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_tmpdir_and_folder_inputs_reach_the_program() {
    let node = node(1).await;
    let inputs = Arc::new(vec![
        ("data/a.txt".to_string(), b"a".to_vec()),
        ("data/sub/problem.smt2".to_string(), b"(check-sat)".to_vec()),
    ]);
    let task = TaskSpec {
        inputs: inputs.clone(),
        stdin: Some("data/sub/problem.smt2".into()),
        ..probe_task(&["echo"])
    };
    let r = run(&node.sandbox, task).await;
    let out = text(&r.stdout);
    assert_eq!(
        r.ending,
        Ending::Exit { code: 0 },
        "{out}{}",
        text(&r.stderr)
    );
    assert!(out.contains("stdin: (check-sat)\n"), "{out}");
    assert!(out.contains("tmp /tmp: Ok(Ok(\"kept a while\"))"), "{out}");
    assert!(
        out.contains("inputs: data/a.txt data/sub/problem.smt2\n"),
        "{out}"
    );
    assert!(
        r.out_files.is_empty(),
        "/tmp is not returned: {:?}",
        r.out_files
    );
    let tmp = node.sandbox.scratch_dir().join("tmp-0");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "emptied");
    // Without `stdin`, standard input is empty.
    let r = run(
        &node.sandbox,
        TaskSpec {
            inputs,
            ..probe_task(&["echo"])
        },
    )
    .await;
    assert!(text(&r.stdout).contains("stdin: \n"), "{}", text(&r.stdout));
    // /tmp counts against the output limit (1 MiB here).
    let task = TaskSpec {
        env: vec![("TMP_BYTES".into(), (900u32 << 10).to_string())],
        limits: Limits {
            output_bytes: 600 << 10,
            ..probe_task(&[]).limits
        },
        ..probe_task(&["echo"])
    };
    let r = run(&node.sandbox, task).await;
    assert!(r.limits_hit.contains(&LimitKind::Output), "{r:?}");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "emptied");
    assert_hello_works(&node).await;
}
