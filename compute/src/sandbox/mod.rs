//! The WebAssembly sandbox (see `docs/sandbox.md`).
//!
//! The parallel-KDC model: a supervisor ([`Sandbox`]) owns one worker process per slot. A
//! worker is this same executable started as `rjs-compute worker` ([`worker_main`]); it runs
//! one task at a time in an uninstrumented wasmtime engine (no fuel, no epochs: native speed)
//! with WASI preview 1. The supervisor enforces the CPU-time limit from outside: it reads the
//! worker's CPU clock when the task could have used up its limit, and kills the worker's whole
//! process once it has (or once the task's wall-clock backstop, [`wall_limit`], has passed),
//! then starts a fresh one. A worker that dies for any other
//! reason is replaced too, so whatever a task does it ends in a [`TaskResult`] whose
//! [`Ending`](rjs_signer::answer::Ending) says how, and the node keeps serving.
//!
//! ```no_run
//! # async fn demo(task: rjs_compute::job::TaskSpec) -> Result<(), rjs_compute::sandbox::SandboxError> {
//! use rjs_compute::sandbox::{Sandbox, SandboxConfig};
//! let sandbox = Sandbox::start(SandboxConfig::new("/var/lib/rjs-compute")).await?;
//! match sandbox.try_acquire() {
//!     Some(slot) => {
//!         let result = sandbox.run(slot, task).await; // never fails: see result.ending
//!         println!("{}", result.ending.summary());
//!     }
//!     None => println!("no free slot"),
//! }
//! sandbox.shutdown().await;
//! # Ok(()) }
//! ```

mod protocol;
mod scratch;
mod supervisor;
mod worker;

use std::path::PathBuf;
use std::time::Duration;

pub use protocol::ModuleSource;
pub use supervisor::{Sandbox, SandboxStats, Slot, TaskTimings};

/// Where a task is ([`Sandbox::run_watched`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskPhase {
    /// Getting its scratch directory and worker ready.
    Preparing,
    /// Its module is being compiled (by its worker, or by another slot's first): neither its
    /// CPU-time limit nor its wall-clock backstop counts yet.
    Compiling {
        since: std::time::Instant,
        module_bytes: u64,
    },
    /// The program runs; its limits count.
    Running,
}

impl TaskPhase {
    fn compiling(task: &crate::job::TaskSpec) -> TaskPhase {
        TaskPhase::Compiling {
            since: std::time::Instant::now(),
            module_bytes: task.module.len() as u64,
        }
    }
}
pub use worker::worker_main;

/// The subcommand (argv\[1\]) that makes the `rjs-compute` binary a sandbox worker.
pub const WORKER_SUBCOMMAND: &str = "worker";

/// Least wall-clock time a task gets beyond its CPU-time limit (see [`wall_limit`]).
pub const WALL_SLACK_MIN: Duration = Duration::from_secs(5);
/// Most wall-clock time a task gets beyond its CPU-time limit (see [`wall_limit`]).
pub const WALL_SLACK_MAX: Duration = Duration::from_secs(20);

/// The wall-clock backstop of a task whose CPU-time limit (`limits.time_ms`) is `time_ms`:
/// `time_ms + clamp(time_ms, 5 s, 20 s)`, i.e. twice the limit for limits of 5 to 20 s, the
/// limit plus 5 s below that and plus 20 s above. A task that sleeps or blocks, and so never
/// uses its CPU time, is stopped there (`Limit { Time }`, message `wall-time: …`). Why these
/// numbers: `docs/sandbox.md`, "Limits".
pub fn wall_limit(time_ms: u64) -> Duration {
    let cpu = Duration::from_millis(time_ms);
    cpu + cpu.clamp(WALL_SLACK_MIN, WALL_SLACK_MAX)
}

/// The time on `clock` (a `clock_gettime` clock id), µs; `None` if it cannot be read.
fn clock_us(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we pass.
    (unsafe { libc::clock_gettime(clock, &mut ts) } == 0)
        .then(|| (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1000)
}

/// How to start a [`Sandbox`].
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Worker processes, i.e. tasks that can run at once (1..=256).
    pub slots: usize,
    /// The node's own directory; the sandbox uses `cache/`, `inputs/` and `scratch/` under it.
    /// Created 0700 if missing; refused if another user owns it, tightened to 0700 if it is
    /// looser.
    pub work_dir: PathBuf,
    /// An existing directory in which to make the scratch directory (the slots' `out/`
    /// directories) instead of `<work_dir>/scratch`: the sandbox makes (or takes over) its
    /// own private `rjs-scratch-<16 hex digits>` in it, named after the work directory. Meant
    /// for a RAM filesystem such as `/dev/shm`, where the files a task writes cost
    /// microseconds whatever the disk's filesystem does. `None`: `<work_dir>/scratch`.
    pub scratch_in: Option<PathBuf>,
    /// The executable started as `<exe> worker`; `None`: this process's own executable
    /// (`std::env::current_exe()`), which must dispatch `worker` to [`worker_main`].
    pub worker_exe: Option<PathBuf>,
    /// Most linear memory any task may have, bytes (at most 4 GiB). The pooling allocator is
    /// sized for it; a task asking for more is held to this (the job server should refuse
    /// such a task beforehand: see [`Sandbox::max_memory_bytes`]).
    pub max_memory_bytes: u64,
    /// Most files a task may leave under `out/`; beyond it the task is stopped
    /// (`Limit{Output}`). The default leaves room in an answer archive's 1000 entries.
    pub max_out_files: usize,
    /// How often a running task's `out/` is measured.
    pub poll_interval: Duration,
    /// How long compiling (or loading) a module may take before the worker is killed and the
    /// task ends with `Limit{Compile}`; counted in neither the task's CPU-time limit nor its
    /// wall-clock backstop.
    pub compile_timeout: Duration,
    /// How long a new worker may take to say hello.
    pub worker_start_timeout: Duration,
    /// Compiled modules each worker keeps in memory (least recently used dropped first); the
    /// disk cache keeps all of them.
    pub module_cache_entries: usize,
    /// The workers' nice value (0..=19): jobs run at a lower CPU priority than the owner's
    /// programs and the node itself, so the PC stays responsive and the node's own work
    /// (answers, the next job) is never queued behind a job. Their CPU-time limit is counted
    /// in CPU time, so a lower priority does not shorten what a job may use.
    pub nice: i32,
}

/// How long compiling a module may take by default ([`SandboxConfig::compile_timeout`]):
/// real programs are big (a 69 MB module took 70–100 s on a 2-core PC), and a slower PC must
/// still run them.
pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(600);

/// The workers' default nice value ([`SandboxConfig::nice`]).
pub const DEFAULT_NICE: i32 = 10;

impl SandboxConfig {
    /// Defaults: one slot per CPU, 1 GiB max memory, 900 out files, 50 ms polling, 10 min to
    /// compile, 30 s to start a worker, 32 modules in each worker's memory.
    pub fn new(work_dir: impl Into<PathBuf>) -> SandboxConfig {
        SandboxConfig {
            slots: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            work_dir: work_dir.into(),
            scratch_in: None,
            worker_exe: None,
            max_memory_bytes: 1 << 30,
            max_out_files: 900,
            poll_interval: Duration::from_millis(50),
            compile_timeout: DEFAULT_COMPILE_TIMEOUT,
            worker_start_timeout: Duration::from_secs(30),
            module_cache_entries: 32,
            nice: DEFAULT_NICE,
        }
    }
}

/// Why the sandbox could not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid sandbox configuration: {0}")]
    Config(String),
    #[error("{what} {}", path.display())]
    Dir {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a private directory: {why}", path.display())]
    Insecure { path: PathBuf, why: String },
    #[error("locating the worker executable")]
    WorkerExe(#[source] std::io::Error),
    #[error("starting the worker for slot {slot}")]
    Worker {
        slot: usize,
        #[source]
        source: WorkerError,
    },
}

/// Why a worker process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("spawning {}", path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the worker")]
    Io(#[source] std::io::Error),
    #[error("the worker did not say hello within {0:?}")]
    Timeout(Duration),
    #[error("the worker refused to start: {0}")]
    Fatal(String),
    #[error("the worker broke the protocol: {0}")]
    Protocol(String),
    #[error("the worker exited before saying hello{0}")]
    Exited(String),
}
