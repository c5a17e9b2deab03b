//! The supervisor: worker processes, slots, the CPU-time limit and its wall-clock backstop,
//! output polling, results.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::ops::ControlFlow::{self, Break, Continue};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use rjs_signer::Limits;
use rjs_signer::answer::{Ending, LimitKind};
use sha2::Digest;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::{Mutex, OwnedMutexGuard, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;

use super::TaskPhase;
use super::protocol::{
    self, DoneReply, Frame, FromWorker, KIND_BLOB, MAX_BLOB_FROM_WORKER, ModuleSource,
    PROTOCOL_VERSION, RunRequest, ToWorker, WorkerInit,
};
use super::scratch::{self, Finished, InputDirs, Scratch, Usage};
use super::worker;
use super::{SandboxConfig, SandboxError, WORKER_SUBCOMMAND, WorkerError};
use crate::job::{ModuleHash, TaskResult, TaskSpec};

/// Bytes of a worker's stderr kept for a crash report.
const STDERR_TAIL: usize = 4096;
/// How long the supervisor waits for the rest of a reply, for a killed worker to be reaped,
/// or for a worker to exit on `Shutdown`.
const REPLY_GRACE: Duration = Duration::from_secs(10);
const REAP_GRACE: Duration = Duration::from_secs(5);
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// How long a worker about to be killed gets to send the task's stdout and stderr so far.
const SALVAGE_GRACE: Duration = Duration::from_millis(300);
/// Shortest wait between two reads of a running task's CPU time: when the task is this close
/// to its CPU-time limit it is checked again after this long (so it may overrun its limit by
/// about this much).
const CPU_CHECK_MIN: Duration = Duration::from_millis(5);

/// The sandbox: a supervisor and one worker process per slot. Cheap to clone (all clones
/// share the same workers); the job server can hold one in each connection handler.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

/// A reserved slot, from [`Sandbox::try_acquire`] or [`Sandbox::acquire`]. Dropping it
/// without running a task frees it again; [`Sandbox::run`] consumes it and frees it when the
/// slot's worker is ready for the next task.
pub struct Slot {
    index: usize,
    owner: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    /// Which slot (0-based): the same index always maps to the same worker position.
    pub fn index(&self) -> usize {
        self.index
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("index", &self.index).finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.scratch_outside {
            // Only if empty: what a task still cleaning up left is emptied at the next start.
            for slot in 0..self.slots {
                let _ = std::fs::remove_dir(scratch::slot_dir(&self.scratch_dir, slot));
                let _ = std::fs::remove_dir(scratch::tmp_dir(&self.scratch_dir, slot));
            }
            let _ = std::fs::remove_dir(&self.scratch_dir);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Mark the index free before the permit (a field) is released.
        self.owner.free.lock().unwrap_or_else(|e| e.into_inner())[self.index] = true;
    }
}

/// Counters since the sandbox started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SandboxStats {
    /// Tasks given to [`Sandbox::run`].
    pub tasks: u64,
    /// Modules compiled (cache misses).
    pub modules_compiled: u64,
    /// Modules loaded from the disk cache.
    pub disk_cache_hits: u64,
    /// Modules found already compiled in the worker's memory.
    pub memory_cache_hits: u64,
    /// Worker processes started (including the first ones).
    pub workers_started: u64,
    /// Workers killed by the supervisor (time limit, output limit, protocol breach).
    pub workers_killed: u64,
    /// Tasks that ended in `Ending::Crash`.
    pub crashes: u64,
}

/// Where the time of one task went, as seen by the worker and the supervisor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskTimings {
    /// Where the compiled module came from (`None`: the task never got that far).
    pub module: Option<ModuleSource>,
    /// Compiling or loading the module, µs (0 on a memory hit).
    pub load_us: u64,
    /// Instantiation, µs.
    pub instantiate_us: u64,
    /// `_start` until it returned, exited or trapped, µs (0 if the worker was killed).
    pub run_us: u64,
    /// The whole [`Sandbox::run`] call: scratch directory, inputs, module, run, collecting
    /// and emptying `out/`, µs.
    pub total_us: u64,
}

#[derive(Default)]
struct Counters {
    tasks: AtomicU64,
    compiled: AtomicU64,
    disk: AtomicU64,
    memory: AtomicU64,
    started: AtomicU64,
    killed: AtomicU64,
    crashes: AtomicU64,
}

struct Inner {
    slots: usize,
    exe: PathBuf,
    work_dir: PathBuf,
    scratch_dir: PathBuf,
    /// The tasks' read-only input directories (`<work_dir>/inputs`).
    inputs: InputDirs,
    /// The scratch directory is on a RAM filesystem: a small `out/` is collected and emptied
    /// on the async thread instead of the blocking pool.
    scratch_inline: bool,
    /// Per slot: its `out/` directory (`scratch/slot-<i>`) exists and was found empty after
    /// the last task. Cleared while a task uses it; a task that finds it clear makes a fresh
    /// one first.
    scratch_ready: Vec<AtomicBool>,
    /// The scratch directory was made outside the work directory (`scratch_in`): removed
    /// (if empty) when the sandbox goes away, so that none pile up in, say, `/dev/shm`.
    scratch_outside: bool,
    cache_root: PathBuf,
    max_memory_bytes: u64,
    max_out_files: usize,
    poll_interval: Duration,
    compile_timeout: Duration,
    /// Bytes per second the last compilation ran at (0: none yet).
    compile_rate: AtomicU64,
    start_timeout: Duration,
    module_cache_entries: usize,
    nice: i32,
    permits: Arc<Semaphore>,
    free: StdMutex<Vec<bool>>,
    workers: Vec<Mutex<Option<WorkerProc>>>,
    closing: watch::Sender<bool>,
    cache_dir: StdMutex<Option<PathBuf>>,
    counters: Counters,
    /// Modules some worker has compiled (so they are in the disk cache).
    compiled: StdMutex<HashSet<ModuleHash>>,
    /// One lock per module not yet compiled: the first task of a module holds it until its
    /// worker has the module, so that other slots load it from disk instead of compiling it
    /// again at the same time.
    first_use: StdMutex<HashMap<ModuleHash, Arc<Mutex<()>>>>,
}

struct WorkerProc {
    child: Child,
    pid: u32,
    /// The worker process's CPU clock (`clock_getcpuclockid`): user + system time of all its
    /// threads, read with `clock_gettime` (ns resolution). Valid while the child is not
    /// reaped (its pid cannot be reused until then).
    cpu_clock: Option<libc::clockid_t>,
    /// `/proc/<pid>/task/<tid>/schedstat` of the worker's task thread (named
    /// [`worker::RUN_THREAD_NAME`]), found once after its hello; `None` if it cannot be.
    run_schedstat: Option<PathBuf>,
    stdin: ChildStdin,
    /// The worker's replies (cancel-safe: read in `select!`).
    frames: protocol::FrameReader<ChildStdout>,
    stderr_tail: Arc<StdMutex<VecDeque<u8>>>,
    stderr_task: JoinHandle<()>,
}

/// What a worker about to be killed sent of the task's output.
#[derive(Default)]
struct Salvaged {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    limits_hit: Vec<LimitKind>,
}

/// A task whose worker has reported `Started`.
#[derive(Clone, Copy)]
struct Running {
    at: Instant,
    /// The worker's CPU clock at `Started`, µs: the task's CPU time counts from here.
    cpu_base_us: u64,
    /// When the wall-clock backstop stops the task ([`super::wall_limit`]), not counting
    /// the time the task waited for a CPU (below).
    wall_deadline: tokio::time::Instant,
    /// The worker's threads' time spent runnable but waiting for a CPU at `Started`, µs
    /// ([`WorkerProc::cpu_wait_us`]); `None` where the kernel does not say.
    wait_base_us: Option<u64>,
}

impl Running {
    /// How long the task has waited for a CPU since it started: a task starved by the
    /// owner's work (jobs run at a low priority) is not charged that time by the backstop.
    fn waited(&self, worker: &WorkerProc) -> Duration {
        match (self.wait_base_us, worker.cpu_wait_us()) {
            (Some(base), Some(now)) => Duration::from_micros(now.saturating_sub(base)),
            _ => Duration::ZERO,
        }
    }
}

/// How the exchange with the worker ended.
enum Outcome {
    /// The worker reported an ending; it is ready for the next task.
    Done {
        reply: Box<DoneReply>,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
        wall: Duration,
    },
    /// The supervisor stopped the task by killing the worker.
    Killed {
        limit: LimitKind,
        message: String,
        wall: Duration,
        cpu_ms: u64,
        salvaged: Salvaged,
    },
    /// The worker died or broke the protocol.
    Lost {
        message: String,
        wall: Duration,
        cpu_ms: u64,
    },
}

/// A task lost to its worker (it died or broke the protocol).
fn lost(message: String, wall: Duration, cpu_ms: u64) -> Outcome {
    Outcome::Lost {
        message,
        wall,
        cpu_ms,
    }
}

/// Where a task is in its exchange with the worker.
struct Progress<'a> {
    task: &'a TaskSpec,
    limits: &'a Limits,
    /// Until `Started`: the compile timeout. Then: the next moment the task could have used
    /// up its CPU time, or its wall-clock backstop, whichever comes first.
    deadline: tokio::time::Instant,
    started: Option<Running>,
    /// The module's first-use lock, released once the worker has the module.
    first_use: Option<OwnedMutexGuard<()>>,
    /// Where the module came from and how long loading it took, µs (from `Started`).
    loaded: Option<(ModuleSource, u64)>,
    /// Where the task is, for whoever watches it.
    phase: &'a watch::Sender<TaskPhase>,
}

impl Progress<'_> {
    /// Wall-clock time since `Started` (zero before).
    fn wall(&self) -> Duration {
        self.started.map_or(Duration::ZERO, |s| s.at.elapsed())
    }

    /// The worker reported `Started`, having read its CPU clock (`cpu_us`) just before.
    fn start(&mut self, worker: &WorkerProc, cpu_us: u64) {
        // The worker's own reading is the more exact base; never later than what the clock
        // says now, so that no reply can stretch the limit.
        let base = match worker.cpu_us() {
            Some(now) => cpu_us.min(now),
            None => cpu_us,
        };
        let now = tokio::time::Instant::now();
        self.started = Some(Running {
            at: Instant::now(),
            cpu_base_us: base,
            wall_deadline: now + super::wall_limit(self.limits.time_ms),
            wait_base_us: worker.cpu_wait_us(),
        });
        // The task cannot have used its CPU time before this.
        self.deadline = now + Duration::from_millis(self.limits.time_ms);
    }
}

fn dir_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SandboxError + use<> {
    let path = path.to_owned();
    move |source| SandboxError::Dir { what, path, source }
}

/// Creates `dir` (0700) if missing and makes sure it is ours and private.
fn private_dir(dir: &Path) -> Result<(), SandboxError> {
    rjs_signer::fsutil::create_private_dir(dir).map_err(|e| match e {
        rjs_signer::fsutil::FileError::Io { source, .. } => {
            dir_error("creating directory", dir)(source)
        }
        other => SandboxError::Insecure {
            path: dir.to_owned(),
            why: other.to_string(),
        },
    })?;
    let meta = std::fs::symlink_metadata(dir).map_err(dir_error("reading", dir))?;
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if !meta.is_dir() {
        return Err(SandboxError::Insecure {
            path: dir.to_owned(),
            why: "not a directory (or a symlink)".into(),
        });
    }
    if meta.uid() != euid {
        return Err(SandboxError::Insecure {
            path: dir.to_owned(),
            why: format!("owned by uid {}, not {euid}", meta.uid()),
        });
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(dir_error("restricting to 0700", dir))?;
    }
    Ok(())
}

impl Sandbox {
    /// Checks the configuration, prepares `<work_dir>/{cache,scratch}` (removing scratch
    /// directories a previous run left behind) and starts one worker per slot.
    pub async fn start(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        if !(1..=256).contains(&config.slots) {
            return Err(SandboxError::Config("slots must be 1..=256".into()));
        }
        if !(Limits::MIN_MEMORY..=Limits::MAX_MEMORY).contains(&config.max_memory_bytes) {
            return Err(SandboxError::Config(format!(
                "max_memory_bytes must be {}..={}",
                Limits::MIN_MEMORY,
                Limits::MAX_MEMORY
            )));
        }
        if !(0..=19).contains(&config.nice) {
            return Err(SandboxError::Config(format!(
                "nice must be 0..=19, not {}",
                config.nice
            )));
        }
        if config.poll_interval.is_zero() || config.compile_timeout.is_zero() {
            return Err(SandboxError::Config(
                "poll_interval and compile_timeout must not be zero".into(),
            ));
        }
        let exe = match config.worker_exe {
            Some(p) => p,
            // The running executable's own image: still right if the file was replaced
            // or removed since the node started (an upgrade in place).
            None if Path::new("/proc/self/exe").exists() => PathBuf::from("/proc/self/exe"),
            None => std::env::current_exe().map_err(SandboxError::WorkerExe)?,
        };
        let work_dir = config.work_dir;
        let cache_root = work_dir.join("cache");
        let (scratch_dir, inputs) = {
            let (w, c) = (work_dir.clone(), cache_root.clone());
            let i = work_dir.join("inputs");
            let scratch_in = config.scratch_in.clone();
            let slots = config.slots;
            tokio::task::spawn_blocking(move || -> Result<(PathBuf, InputDirs), SandboxError> {
                private_dir(&w)?;
                let s = match scratch_in {
                    None => w.join("scratch"),
                    Some(parent) => {
                        let parent = std::fs::canonicalize(&parent)
                            .map_err(dir_error("resolving the scratch location", &parent))?;
                        if !parent.is_dir() {
                            return Err(SandboxError::Config(format!(
                                "the scratch location {} is not a directory",
                                parent.display()
                            )));
                        }
                        let w = std::fs::canonicalize(&w).map_err(dir_error("resolving", &w))?;
                        let id = rjs_signer::bundle::hex(&sha2::Sha256::digest(
                            w.as_os_str().as_encoded_bytes(),
                        ));
                        parent.join(format!("rjs-scratch-{}", &id[..16]))
                    }
                };
                private_dir(&s)?;
                private_dir(&c)?;
                private_dir(&i)?;
                // Leftovers of a node that died mid-task.
                for entry in std::fs::read_dir(&s).map_err(dir_error("listing", &s))? {
                    let entry = entry.map_err(dir_error("listing", &s))?;
                    scratch::remove(&entry.path());
                }
                for slot in 0..slots {
                    scratch::fresh_slot_dir(&s, slot)
                        .map_err(dir_error("creating", &scratch::slot_dir(&s, slot)))?;
                    scratch::fresh_tmp_dir(&s, slot)
                        .map_err(dir_error("creating", &scratch::tmp_dir(&s, slot)))?;
                }
                let inputs = InputDirs::open(&i).map_err(dir_error("preparing", &i))?;
                Ok((s, inputs))
            })
            .await
            .map_err(|e| SandboxError::Config(format!("preparing the work directory: {e}")))??
        };
        let (closing, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            slots: config.slots,
            exe,
            work_dir,
            scratch_inline: scratch::inline_ok(&scratch_dir),
            scratch_ready: (0..config.slots).map(|_| AtomicBool::new(true)).collect(),
            scratch_outside: config.scratch_in.is_some(),
            scratch_dir,
            inputs,
            cache_root,
            max_memory_bytes: config.max_memory_bytes,
            max_out_files: config.max_out_files.max(1),
            poll_interval: config.poll_interval,
            compile_timeout: config.compile_timeout,
            compile_rate: AtomicU64::new(0),
            start_timeout: config.worker_start_timeout,
            module_cache_entries: config.module_cache_entries.max(1),
            nice: config.nice,
            permits: Arc::new(Semaphore::new(config.slots)),
            free: StdMutex::new(vec![true; config.slots]),
            workers: (0..config.slots).map(|_| Mutex::new(None)).collect(),
            closing,
            cache_dir: StdMutex::new(None),
            counters: Counters::default(),
            compiled: StdMutex::new(HashSet::new()),
            first_use: StdMutex::new(HashMap::new()),
        });
        for slot in 0..inner.slots {
            let worker = inner
                .spawn_worker()
                .await
                .map_err(|source| SandboxError::Worker { slot, source })?;
            *inner.workers[slot].lock().await = Some(worker);
        }
        Ok(Sandbox { inner })
    }

    /// A free slot, or `None` when all are busy (the job server then refuses with "no free
    /// slot") or the sandbox is shutting down.
    pub fn try_acquire(&self) -> Option<Slot> {
        let permit = self.inner.permits.clone().try_acquire_owned().ok()?;
        Some(self.inner.slot_for(permit))
    }

    /// Waits for a free slot; `None` once the sandbox is shutting down.
    pub async fn acquire(&self) -> Option<Slot> {
        let permit = self.inner.permits.clone().acquire_owned().await.ok()?;
        Some(self.inner.slot_for(permit))
    }

    /// Runs one task in the slot's worker. Never fails: whatever happens (exit, trap, a limit,
    /// a dead worker) is the result's `ending`. The slot is free again when this returns
    /// (after a killed worker has been replaced). If the returned future is dropped, the
    /// task still runs to its end (its limits at most) and cleans up behind itself.
    pub async fn run(&self, slot: Slot, task: TaskSpec) -> TaskResult {
        self.run_timed(slot, task).await.0
    }

    /// [`run`](Self::run), also returning where the time went.
    pub async fn run_timed(&self, slot: Slot, task: TaskSpec) -> (TaskResult, TaskTimings) {
        self.run_watched(slot, task, watch::channel(TaskPhase::Preparing).0)
            .await
    }

    /// [`run_timed`](Self::run_timed), telling `phase` where the task is: compiling its
    /// module (or waiting for another slot that is), then running. The job server tells the
    /// lookup, so that a long compilation is never taken for a lost node.
    pub async fn run_watched(
        &self,
        slot: Slot,
        task: TaskSpec,
        phase: watch::Sender<TaskPhase>,
    ) -> (TaskResult, TaskTimings) {
        if !Arc::ptr_eq(&slot.owner, &self.inner) {
            return (
                crash_result("the slot belongs to another sandbox".into()),
                TaskTimings::default(),
            );
        }
        let inner = self.inner.clone();
        match tokio::spawn(inner.run_task(slot, task, phase)).await {
            Ok(r) => r,
            Err(e) => {
                self.inner.counters.crashes.fetch_add(1, Ordering::Relaxed);
                (
                    crash_result(format!("the sandbox's task failed: {e}")),
                    TaskTimings::default(),
                )
            }
        }
    }

    /// Slots in use (acquired and not yet released).
    pub fn busy(&self) -> usize {
        self.inner
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|f| !**f)
            .count()
    }

    /// Number of slots (worker processes).
    pub fn slots(&self) -> usize {
        self.inner.slots
    }

    /// The most linear memory a task can get here: a task whose `limits.memory_bytes` is
    /// larger still runs, held to this.
    pub fn max_memory_bytes(&self) -> u64 {
        self.inner.max_memory_bytes
    }

    /// The node's work directory.
    pub fn work_dir(&self) -> &Path {
        &self.inner.work_dir
    }

    /// The directory holding the slots' `out/` directories, `slot-<i>`, each empty between
    /// tasks (`<work_dir>/scratch`, or
    /// `rjs-scratch-<id>` in [`SandboxConfig::scratch_in`](super::SandboxConfig)).
    pub fn scratch_dir(&self) -> &Path {
        &self.inner.scratch_dir
    }

    /// How long compiling a module may take here ([`SandboxConfig::compile_timeout`](super::SandboxConfig)).
    pub fn compile_timeout(&self) -> Duration {
        self.inner.compile_timeout
    }

    /// How long compiling a module of `module_bytes` should take, at the speed this sandbox
    /// last compiled at; `None` before its first compilation.
    pub fn compile_estimate(&self, module_bytes: u64) -> Option<Duration> {
        let rate = self.inner.compile_rate.load(Ordering::Relaxed);
        (rate > 0).then(|| Duration::from_secs_f64(module_bytes as f64 / rate as f64))
    }

    /// The compiled-module cache directory the workers use
    /// (`<work_dir>/cache/wasmtime-<version>-<engine hash>`).
    pub fn cache_dir(&self) -> Option<PathBuf> {
        self.inner
            .cache_dir
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn stats(&self) -> SandboxStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SandboxStats {
            tasks: get(&c.tasks),
            modules_compiled: get(&c.compiled),
            disk_cache_hits: get(&c.disk),
            memory_cache_hits: get(&c.memory),
            workers_started: get(&c.started),
            workers_killed: get(&c.killed),
            crashes: get(&c.crashes),
        }
    }

    /// Stops accepting tasks, ends running ones (they report `Crash`: "the node is shutting
    /// down"), and stops every worker (asked to exit, killed after 2 s). Other clones of this
    /// sandbox see no free slot afterwards.
    pub async fn shutdown(self) {
        let inner = &self.inner;
        inner.permits.close();
        inner.closing.send_replace(true);
        for slot in &inner.workers {
            let worker = slot.lock().await.take();
            if let Some(mut w) = worker {
                let _ = protocol::write_json_async(&mut w.stdin, &ToWorker::Shutdown).await;
                if tokio::time::timeout(EXIT_GRACE, w.child.wait())
                    .await
                    .is_err()
                {
                    let _ = w.child.start_kill();
                    let _ = tokio::time::timeout(REAP_GRACE, w.child.wait()).await;
                }
            }
        }
    }
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn slot_for(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Slot {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        // A permit guarantees a free index.
        let index = free.iter().position(|f| *f).unwrap_or(0);
        free[index] = false;
        Slot {
            index,
            owner: self.clone(),
            _permit: permit,
        }
    }

    fn closing(&self) -> bool {
        *self.closing.borrow()
    }

    async fn spawn_worker(&self) -> Result<WorkerProc, WorkerError> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg(WORKER_SUBCOMMAND)
            .env_clear()
            .current_dir(&self.work_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Compiling a module uses every core the node lends (one per slot), no more.
            .env("RAYON_NUM_THREADS", self.slots.to_string())
            .kill_on_drop(true)
            // Its own process group: a terminal's Ctrl-C reaches the node, which decides.
            .process_group(0);
        let nice = self.nice;
        // SAFETY: between fork and exec the closure makes one system call (setpriority,
        // async-signal-safe) and allocates nothing. Raising one's own nice value needs no
        // privilege; every thread the worker starts inherits it.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setpriority(libc::PRIO_PROCESS, 0, nice) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let mut child = cmd.spawn().map_err(|source| WorkerError::Spawn {
            path: self.exe.clone(),
            source,
        })?;
        self.counters.started.fetch_add(1, Ordering::Relaxed);
        let pid = child.id().unwrap_or(0);
        let cpu_clock = cpu_clock_of(pid);
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(WorkerError::Protocol("missing stdio pipes".into()));
        };

        let frames = protocol::FrameReader::new(stdout, MAX_BLOB_FROM_WORKER);
        let (stderr_tail, stderr_task) = tail_stderr(stderr, pid);
        let mut worker = WorkerProc {
            child,
            pid,
            cpu_clock,
            run_schedstat: None,
            stdin,
            frames,
            stderr_tail,
            stderr_task,
        };

        let init = ToWorker::Init(WorkerInit {
            protocol: PROTOCOL_VERSION,
            max_memory_bytes: self.max_memory_bytes,
            cache_root: self.cache_root.clone(),
            module_cache_entries: self.module_cache_entries,
        });
        protocol::write_json_async(&mut worker.stdin, &init)
            .await
            .map_err(WorkerError::Io)?;
        let hello = match tokio::time::timeout(self.start_timeout, worker.frames.recv()).await {
            Err(_) => return Err(WorkerError::Timeout(self.start_timeout)),
            Ok(None) => {
                let status = reap(&mut worker.child).await;
                let tail = worker.last_words().await;
                return Err(WorkerError::Exited(format!("{status}{tail}")));
            }
            Ok(Some(Err(e))) => return Err(WorkerError::Protocol(e)),
            Ok(Some(Ok(Frame::Blob(_)))) => return Err(WorkerError::Protocol("blob".into())),
            Ok(Some(Ok(Frame::Json(j)))) => serde_json::from_slice::<FromWorker>(&j)
                .map_err(|e| WorkerError::Protocol(e.to_string()))?,
        };
        match hello {
            FromWorker::Hello {
                protocol,
                cache_dir,
                ..
            } if protocol == PROTOCOL_VERSION => {
                *self.cache_dir.lock().unwrap_or_else(|e| e.into_inner()) = Some(cache_dir);
                // The task thread sent the hello, so it exists (and keeps its name).
                worker.run_schedstat = run_thread_schedstat(pid);
                Ok(worker)
            }
            FromWorker::Hello { protocol, .. } => Err(WorkerError::Protocol(format!(
                "worker speaks protocol {protocol}, supervisor {PROTOCOL_VERSION}"
            ))),
            FromWorker::Fatal { message } => Err(WorkerError::Fatal(message)),
            other => Err(WorkerError::Protocol(format!(
                "expected hello, got {other:?}"
            ))),
        }
    }

    async fn run_task(
        self: Arc<Self>,
        slot: Slot,
        task: TaskSpec,
        phase: watch::Sender<TaskPhase>,
    ) -> (TaskResult, TaskTimings) {
        let t0 = Instant::now();
        self.counters.tasks.fetch_add(1, Ordering::Relaxed);
        let mut limits = task.limits;
        limits.memory_bytes = limits.memory_bytes.min(self.max_memory_bytes);

        let scratch = match self.prepare_scratch(slot.index, &task).await {
            Ok(s) => s,
            Err(message) => return self.crash(message, t0),
        };
        // Removes the slot's out/ (made afresh by the next task) if this task is torn down
        // half-way.
        let mut scratch_guard = ScratchGuard(Some(scratch.out_dir.clone()));

        let mut slot_worker = self.workers[slot.index].lock().await;
        let mut worker = match self.ready_worker(slot_worker.take()).await {
            Ok(w) => w,
            Err(message) => return self.crash(message, t0),
        };

        let mut timings = TaskTimings::default();
        let outcome = self
            .run_module(&mut worker, &task, &limits, &scratch, &mut timings, &phase)
            .await;

        // A worker that is not kept is dead before its out/ is read and emptied, so nothing
        // writes there any more. (One that could not be reaped in time might still hold the
        // directory open: the slot then gets a fresh one.)
        let (kept, reaped) = if matches!(outcome, Outcome::Done { .. }) {
            (Some(worker), true)
        } else {
            let reaped = self.retire(worker).await;
            (None, reaped)
        };
        // Collect out/ and empty it while a killed worker is replaced.
        let (finished, next_worker) = tokio::join!(
            self.collect_out(slot.index, scratch, limits.output_bytes, reaped),
            self.replacement(kept, slot.index)
        );
        *slot_worker = next_worker;
        drop(slot_worker);
        let (usage, collected) = match finished {
            Some(done) => {
                if done.emptied {
                    scratch_guard.0 = None;
                    self.scratch_ready[slot.index].store(true, Ordering::Release);
                }
                (done.usage, done.collected)
            }
            None => Default::default(),
        };
        drop(scratch_guard);

        let mut result = self.result_of(outcome, &mut timings);
        self.check_final_output(&mut result, &usage, collected.over_budget, &limits);
        if !collected.skipped.is_empty() {
            tracing::info!(
                slot = slot.index,
                skipped = ?collected.skipped.iter().take(10).collect::<Vec<_>>(),
                "out/ entries not returned (over budget, not regular files, or names the \
                 answer format cannot carry)"
            );
        }
        result.out_files = collected.files;
        timings.total_us = micros(t0.elapsed());
        drop(slot);
        (result, timings)
    }

    /// The slot's out/ (empty, checked after the last task) and the task's input directory:
    /// in the usual case (inputs already written) no filesystem work at all. `Err`: the
    /// task's crash message.
    async fn prepare_scratch(
        self: &Arc<Self>,
        index: usize,
        task: &TaskSpec,
    ) -> Result<Scratch, String> {
        let ready = self.scratch_ready[index].swap(false, Ordering::AcqRel);
        let input = self.inputs.lookup(&task.inputs);
        let (ready, input) = match (ready, input) {
            (true, Some(input)) => {
                return Ok(Scratch {
                    input,
                    out_dir: scratch::slot_dir(&self.scratch_dir, index),
                    tmp_dir: scratch::tmp_dir(&self.scratch_dir, index),
                });
            }
            other => other,
        };
        let inner = self.clone();
        let inputs = task.inputs.clone();
        let prepare = move || -> io::Result<Scratch> {
            let input = match input {
                Some(l) => l,
                None => inner.inputs.acquire(&inputs)?,
            };
            let out_dir = if ready {
                Ok(scratch::slot_dir(&inner.scratch_dir, index))
            } else {
                scratch::fresh_slot_dir(&inner.scratch_dir, index)
            };
            match out_dir {
                Ok(out_dir) => Ok(Scratch {
                    input,
                    out_dir,
                    tmp_dir: scratch::tmp_dir(&inner.scratch_dir, index),
                }),
                Err(e) => {
                    for dir in inner.inputs.release(input) {
                        scratch::remove(&dir);
                    }
                    Err(e)
                }
            }
        };
        match tokio::task::spawn_blocking(prepare).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(format!("preparing the scratch directory: {e}")),
            Err(e) => Err(format!("preparing the scratch directory: {e}")),
        }
    }

    /// The slot's worker if it is idle, else a new one (the old one retired). `Err`: the
    /// task's crash message.
    async fn ready_worker(&self, current: Option<WorkerProc>) -> Result<WorkerProc, String> {
        if let Some(mut w) = current {
            if w.is_idle() {
                return Ok(w);
            }
            self.retire(w).await;
        }
        if self.closing() {
            return Err("the node is shutting down".into());
        }
        self.spawn_worker()
            .await
            .map_err(|e| format!("cannot start a worker: {}", rjs_cmd::chain(&e)))
    }

    /// Runs the task on `worker` ([`Self::exchange`]). The first task of a module no worker
    /// has compiled yet holds the module's first-use lock until its worker has the module,
    /// so that other slots then load it from the disk cache instead of compiling it again.
    /// Counts where the module came from, and puts it in `timings`.
    async fn run_module(
        &self,
        worker: &mut WorkerProc,
        task: &TaskSpec,
        limits: &Limits,
        scratch: &Scratch,
        timings: &mut TaskTimings,
        phase: &watch::Sender<TaskPhase>,
    ) -> Outcome {
        let sha = task.module_sha256;
        let first_use = if lock(&self.compiled).contains(&sha) {
            None
        } else {
            let m = lock(&self.first_use).entry(sha).or_default().clone();
            let free = m.clone().try_lock_owned();
            match free {
                Ok(guard) => Some(guard),
                Err(_) => {
                    // Another slot is compiling it: to the lookup, this task is compiling.
                    phase.send_replace(TaskPhase::compiling(task));
                    Some(m.lock_owned().await)
                }
            }
        };
        let was_first_use = first_use.is_some();
        let (outcome, loaded) = self
            .exchange(worker, task, limits, scratch, first_use, phase)
            .await;
        if let Some((source, load_us)) = loaded {
            if source == ModuleSource::Compiled && load_us > 0 {
                let rate = (task.module.len() as u128 * 1_000_000 / u128::from(load_us)).max(1);
                self.compile_rate
                    .store(u64::try_from(rate).unwrap_or(u64::MAX), Ordering::Relaxed);
            }
            let counter = match source {
                ModuleSource::Compiled => &self.counters.compiled,
                ModuleSource::Disk => &self.counters.disk,
                ModuleSource::Memory => &self.counters.memory,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            timings.module = Some(source);
            timings.load_us = load_us;
            let mut compiled = lock(&self.compiled);
            if compiled.len() >= 100_000 {
                compiled.clear();
            }
            compiled.insert(sha);
        }
        if was_first_use {
            // Tasks already waiting hold their own handle to the lock.
            lock(&self.first_use).remove(&sha);
        }
        outcome
    }

    /// After the task: collects out/ and empties it, and removes input directories no longer
    /// kept. An out/ that cannot be emptied is replaced by a fresh one: the next task of this
    /// slot never sees this one's files. `None` if the blocking task failed.
    async fn collect_out(
        &self,
        index: usize,
        scratch: Scratch,
        max_bytes: u64,
        reaped: bool,
    ) -> Option<Finished> {
        let Scratch {
            input,
            out_dir,
            tmp_dir,
        } = scratch;
        let gone = self.inputs.release(input);
        let max_files = self.max_out_files;
        // Most tasks leave /tmp empty: one look tells (on a RAM filesystem, inline).
        let tmp_used = !(self.scratch_inline && scratch::is_empty_dir(&tmp_dir));
        let small = if self.scratch_inline && gone.is_empty() && reaped {
            scratch::finish_small(&out_dir, max_bytes, max_files)
        } else {
            None
        };
        if !tmp_used && small.as_ref().is_some_and(|done| done.emptied) {
            return small;
        }
        let base = self.scratch_dir.clone();
        tokio::task::spawn_blocking(move || {
            let mut done = match small {
                Some(done) => done,
                None => scratch::finish(&out_dir, max_bytes, max_files),
            };
            if tmp_used && !scratch::is_empty_dir(&tmp_dir) {
                // What the task left in /tmp counts against its output limit.
                let tmp = scratch::usage(&tmp_dir, max_files.saturating_mul(4));
                done.usage.bytes = done.usage.bytes.saturating_add(tmp.bytes);
                done.usage.truncated |= tmp.truncated;
                if let Err(e) = scratch::fresh_tmp_dir(&base, index) {
                    tracing::error!(
                        path = %tmp_dir.display(),
                        error = %e,
                        "cannot empty a slot's temporary directory"
                    );
                }
            }
            for dir in gone {
                scratch::remove(&dir);
            }
            if !done.emptied || !reaped {
                match scratch::fresh_slot_dir(&base, index) {
                    Ok(_) => done.emptied = true,
                    Err(e) => tracing::error!(
                        path = %out_dir.display(),
                        error = %e,
                        "cannot empty or replace a slot's scratch directory; \
                         the next task will try again"
                    ),
                }
            }
            done
        })
        .await
        .ok()
    }

    /// The worker the slot keeps for its next task: `kept`, else a new one (none while the
    /// node shuts down, or when it cannot start: the next task tries again).
    async fn replacement(&self, kept: Option<WorkerProc>, slot: usize) -> Option<WorkerProc> {
        if kept.is_some() || self.closing() {
            return kept;
        }
        match self.spawn_worker().await {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(
                    slot,
                    error = %rjs_cmd::chain(&e),
                    "cannot replace a worker; will retry at the next task"
                );
                None
            }
        }
    }

    /// The task's result as the exchange ended (out/ not yet added).
    fn result_of(&self, outcome: Outcome, timings: &mut TaskTimings) -> TaskResult {
        let mut result = empty_result(Ending::Exit { code: 0 });
        match outcome {
            Outcome::Done {
                reply,
                stdout,
                stderr,
                wall,
            } => {
                timings.instantiate_us = reply.instantiate_us;
                timings.run_us = reply.run_us;
                result.ending = reply.ending;
                result.limits_hit = reply.limits_hit;
                result.stdout = stdout;
                result.stderr = stderr;
                result.wall_ms = millis(wall);
                result.cpu_ms = reply.cpu_us.div_ceil(1000);
            }
            Outcome::Killed {
                limit,
                message,
                wall,
                cpu_ms,
                salvaged,
            } => {
                result.ending = Ending::Limit { limit, message };
                result.limits_hit.push(limit);
                for hit in salvaged.limits_hit {
                    if !result.limits_hit.contains(&hit) {
                        result.limits_hit.push(hit);
                    }
                }
                result.stdout = salvaged.stdout;
                result.stderr = salvaged.stderr;
                result.wall_ms = millis(wall);
                result.cpu_ms = cpu_ms;
            }
            Outcome::Lost {
                message,
                wall,
                cpu_ms,
            } => {
                self.counters.crashes.fetch_add(1, Ordering::Relaxed);
                result.ending = Ending::Crash { message };
                result.wall_ms = millis(wall);
                result.cpu_ms = cpu_ms;
            }
        }
        result
    }

    /// Whether out/ holds more than the task may leave there.
    fn over_output(&self, usage: &Usage, limits: &Limits) -> bool {
        usage.bytes > limits.output_bytes || usage.files > self.max_out_files || usage.truncated
    }

    /// The output limit, as found at the end: a task that ended on its own with too much in
    /// out/ ends at the output limit (what fits is kept).
    fn check_final_output(
        &self,
        result: &mut TaskResult,
        usage: &Usage,
        over_budget: bool,
        limits: &Limits,
    ) {
        let over = self.over_output(usage, limits);
        if !(over || over_budget) {
            return;
        }
        if !result.limits_hit.contains(&LimitKind::Output) {
            result.limits_hit.push(LimitKind::Output);
        }
        if over && matches!(result.ending, Ending::Exit { .. } | Ending::Trap { .. }) {
            result.ending = Ending::Limit {
                limit: LimitKind::Output,
                message: format!(
                    "out/ holds {} bytes in {} files (limit {} bytes, {} files); \
                     the program had ended with {}; kept what fits",
                    usage.bytes,
                    usage.files,
                    limits.output_bytes,
                    self.max_out_files,
                    result.ending.summary()
                ),
            };
        }
    }

    fn crash(&self, message: String, t0: Instant) -> (TaskResult, TaskTimings) {
        self.counters.crashes.fetch_add(1, Ordering::Relaxed);
        tracing::error!(%message, "sandbox task crashed");
        (
            crash_result(message),
            TaskTimings {
                total_us: micros(t0.elapsed()),
                ..Default::default()
            },
        )
    }

    /// Runs the task on the worker, enforcing the compile timeout, the CPU-time limit, its
    /// wall-clock backstop and the output limit. Also returns where the module came from and
    /// how long loading it took, once the worker said.
    async fn exchange(
        &self,
        worker: &mut WorkerProc,
        task: &TaskSpec,
        limits: &Limits,
        scratch: &Scratch,
        first_use: Option<OwnedMutexGuard<()>>,
        phase: &watch::Sender<TaskPhase>,
    ) -> (Outcome, Option<(ModuleSource, u64)>) {
        let request = ToWorker::Run(Box::new(RunRequest {
            module_sha256: task.module_sha256.to_string(),
            name: task.name.clone(),
            args: task.args.clone(),
            env: task.env.clone(),
            task_index: task.task_index,
            task_count: task.task_count,
            limits: *limits,
            input_dir: scratch.input.dir.clone(),
            out_dir: scratch.out_dir.clone(),
            tmp_dir: scratch.tmp_dir.clone(),
            stdin: task.stdin.clone(),
        }));
        if let Err(e) = protocol::write_json_async(&mut worker.stdin, &request).await {
            let message = format!("sending the task to the worker: {e}");
            return (lost(message, Duration::ZERO, 0), None);
        }

        let mut p = Progress {
            task,
            limits,
            deadline: tokio::time::Instant::now() + self.compile_timeout,
            started: None,
            first_use,
            loaded: None,
            phase,
        };
        let mut closing = self.closing.subscribe();
        let mut poll = tokio::time::interval_at(
            tokio::time::Instant::now() + self.poll_interval,
            self.poll_interval,
        );
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let outcome = loop {
            let step = tokio::select! {
                biased;
                _ = async { drop(closing.wait_for(|c| *c).await) } => {
                    let (wall, cpu_ms) = (p.wall(), worker.task_cpu_ms(&p.started));
                    self.kill(worker).await;
                    Break(lost("the node is shutting down".into(), wall, cpu_ms))
                }
                frame = worker.frames.recv() => self.on_frame(worker, frame, &mut p).await,
                _ = tokio::time::sleep_until(p.deadline) => self.on_deadline(worker, &mut p).await,
                _ = poll.tick(), if p.started.is_some() => {
                    self.on_poll(worker, &p, scratch).await
                }
            };
            if let Break(outcome) = step {
                break outcome;
            }
        };
        (outcome, p.loaded)
    }

    /// A frame from the worker during the task: it asks for the module, says the task
    /// started, or reports its ending; anything else loses the task.
    async fn on_frame(
        &self,
        worker: &mut WorkerProc,
        frame: Option<Result<Frame, String>>,
        p: &mut Progress<'_>,
    ) -> ControlFlow<Outcome> {
        let wall = p.wall();
        // Read from /proc only when the task is lost (a normal ending carries the worker's
        // own measure).
        let message = match frame {
            None => {
                // Before the reap: /proc still has the dead worker's times.
                let cpu_ms = worker.task_cpu_ms(&p.started);
                let status = reap(&mut worker.child).await;
                let tail = worker.last_words().await;
                let message = format!("the worker process died during the task ({status}){tail}");
                return Break(lost(message, wall, cpu_ms));
            }
            Some(Err(e)) => format!("the worker broke the protocol: {e}"),
            Some(Ok(Frame::Blob(_))) => "the worker broke the protocol: unexpected blob".into(),
            Some(Ok(Frame::Json(j))) => return self.on_message(worker, &j, p, wall).await,
        };
        Break(lost(message, wall, worker.task_cpu_ms(&p.started)))
    }

    /// A message from the worker during the task (see [`Self::on_frame`]).
    async fn on_message(
        &self,
        worker: &mut WorkerProc,
        json: &[u8],
        p: &mut Progress<'_>,
        wall: Duration,
    ) -> ControlFlow<Outcome> {
        match serde_json::from_slice::<FromWorker>(json) {
            Ok(FromWorker::NeedModule) if p.started.is_none() => {
                if !matches!(*p.phase.borrow(), TaskPhase::Compiling { .. }) {
                    p.phase.send_replace(TaskPhase::compiling(p.task));
                }
                let sent =
                    protocol::write_frame_async(&mut worker.stdin, KIND_BLOB, &p.task.module).await;
                if let Err(e) = sent {
                    let message = format!("sending the module to the worker: {e}");
                    return Break(lost(message, Duration::ZERO, 0));
                }
                Continue(())
            }
            Ok(FromWorker::Started {
                module_source,
                load_us,
                cpu_us,
            }) if p.started.is_none() => {
                // The module is compiled and cached: other slots may go ahead.
                p.first_use.take();
                p.loaded = Some((module_source, load_us));
                p.start(worker, cpu_us);
                p.phase.send_replace(TaskPhase::Running);
                Continue(())
            }
            Ok(FromWorker::Done(reply)) => Break(self.finish(worker, reply, p.limits, wall).await),
            other => {
                let what = match other {
                    Ok(m) => format!("{m:?}"),
                    Err(e) => e.to_string(),
                };
                let message = format!("the worker broke the protocol: unexpected {what}");
                Break(lost(message, wall, worker.task_cpu_ms(&p.started)))
            }
        }
    }

    /// The deadline passed: before `Started` the compile timeout; after, the task may have
    /// used up its CPU time or reached its wall-clock backstop (stopped), or not yet (the
    /// next deadline is set).
    async fn on_deadline(
        &self,
        worker: &mut WorkerProc,
        p: &mut Progress<'_>,
    ) -> ControlFlow<Outcome> {
        let limits = p.limits;
        let Some(run) = p.started else {
            self.kill(worker).await;
            return Break(Outcome::Killed {
                limit: LimitKind::Compile,
                message: format!(
                    "compiling the module ({:.1} MB) took longer than this node's compile \
                     limit of {} s (rjs-compute serve --compile-timeout); the job's own time \
                     limit had not started",
                    p.task.module.len() as f64 / 1e6,
                    self.compile_timeout.as_secs()
                ),
                wall: Duration::ZERO,
                cpu_ms: 0,
                salvaged: Salvaged::default(),
            });
        };
        let wall = run.at.elapsed();
        // The task's CPU time. If the clock cannot be read (the worker is gone; its pipe will
        // say so next), the wall-clock time stands in.
        let used_us = worker
            .cpu_us()
            .map_or(micros(wall), |c| c.saturating_sub(run.cpu_base_us));
        let limit_us = limits.time_ms.saturating_mul(1000);
        let now = tokio::time::Instant::now();
        let waited = run.waited(worker);
        let backstop = run.wall_deadline + waited;
        let message = if used_us >= limit_us {
            format!(
                "cpu: stopped after {} ms of CPU time (its limit: {} ms), {} ms of \
                 wall-clock time",
                used_us / 1000,
                limits.time_ms,
                millis(wall)
            )
        } else if now >= backstop {
            format!(
                "wall-time: stopped after {} ms of wall-clock time ({} ms of it \
                 waiting for a CPU, not counted), the most a task with a CPU-time \
                 limit of {} ms may take; it had used {} ms of CPU time (sleeping or \
                 blocked)",
                millis(wall),
                millis(waited),
                limits.time_ms,
                used_us / 1000
            )
        } else {
            // Not yet: the task cannot use up what is left sooner than this.
            let left = Duration::from_micros(limit_us - used_us).max(CPU_CHECK_MIN);
            p.deadline = (now + left).min(backstop.max(now + CPU_CHECK_MIN));
            return Continue(());
        };
        let cpu_ms = used_us / 1000;
        let salvaged = self.salvage(worker, limits).await;
        self.kill(worker).await;
        Break(Outcome::Killed {
            limit: LimitKind::Time,
            message,
            wall,
            cpu_ms,
            salvaged,
        })
    }

    /// A look at out/ while the task runs: over the output limit, the task is stopped.
    async fn on_poll(
        &self,
        worker: &mut WorkerProc,
        p: &Progress<'_>,
        scratch: &Scratch,
    ) -> ControlFlow<Outcome> {
        let limits = p.limits;
        let (dir, tmp) = (scratch.out_dir.clone(), scratch.tmp_dir.clone());
        let max_entries = self.max_out_files.saturating_mul(4);
        let usage = tokio::task::spawn_blocking(move || {
            let mut usage = scratch::usage(&dir, max_entries);
            // /tmp counts in bytes (its files are never returned).
            let tmp = scratch::usage(&tmp, max_entries);
            usage.bytes = usage.bytes.saturating_add(tmp.bytes);
            usage.truncated |= tmp.truncated;
            usage
        })
        .await
        .unwrap_or_default();
        if !self.over_output(&usage, limits) {
            return Continue(());
        }
        let (wall, cpu_ms) = (p.wall(), worker.task_cpu_ms(&p.started));
        let salvaged = self.salvage(worker, limits).await;
        self.kill(worker).await;
        Break(Outcome::Killed {
            salvaged,
            limit: LimitKind::Output,
            message: format!(
                "stopped: out/ and /tmp reached {} bytes, out/ {} files{} (limit {} bytes, {} \
                 files)",
                usage.bytes,
                usage.files,
                if usage.truncated { " or more" } else { "" },
                limits.output_bytes,
                self.max_out_files
            ),
            wall,
            cpu_ms,
        })
    }

    /// Reads the two blobs that follow a `Done` reply and checks them against the limits.
    async fn finish(
        &self,
        worker: &mut WorkerProc,
        reply: Box<DoneReply>,
        limits: &Limits,
        wall: Duration,
    ) -> Outcome {
        let mut blobs = Vec::with_capacity(2);
        for _ in 0..2 {
            match tokio::time::timeout(REPLY_GRACE, worker.frames.recv()).await {
                Ok(Some(Ok(Frame::Blob(b)))) if b.len() as u64 <= limits.stdout_bytes => {
                    blobs.push(b)
                }
                _ => {
                    return Outcome::Lost {
                        message: "the worker broke the protocol: bad or missing output blobs"
                            .into(),
                        wall,
                        cpu_ms: reply.cpu_us / 1000,
                    };
                }
            }
        }
        let stderr = blobs.pop().unwrap_or_default();
        let stdout = blobs.pop().unwrap_or_default();
        if stdout.len() as u64 != reply.stdout_len || stderr.len() as u64 != reply.stderr_len {
            return Outcome::Lost {
                message: "the worker broke the protocol: output lengths disagree".into(),
                wall,
                cpu_ms: reply.cpu_us / 1000,
            };
        }
        Outcome::Done {
            reply,
            stdout,
            stderr,
            wall,
        }
    }

    /// Asks a running worker (SIGUSR1) for the task's stdout and stderr so far and waits
    /// briefly for them; the worker is killed right after, whatever it answered.
    async fn salvage(&self, worker: &mut WorkerProc, limits: &Limits) -> Salvaged {
        if worker.pid == 0 {
            return Salvaged::default();
        }
        // SAFETY: signals our own child, which is alive (not reaped) while we hold its Child.
        unsafe { libc::kill(worker.pid as libc::pid_t, libc::SIGUSR1) };
        let until = tokio::time::Instant::now() + SALVAGE_GRACE;
        loop {
            let frame = match tokio::time::timeout_at(until, worker.frames.recv()).await {
                Ok(Some(Ok(Frame::Json(j)))) => j,
                _ => return Salvaged::default(),
            };
            let (limits_hit, lens) = match serde_json::from_slice::<FromWorker>(&frame) {
                Ok(FromWorker::Partial {
                    limits_hit,
                    stdout_len,
                    stderr_len,
                }) => (limits_hit, (stdout_len, stderr_len)),
                // The task ended just as the deadline passed: take its output all the same.
                Ok(FromWorker::Done(reply)) => {
                    (reply.limits_hit, (reply.stdout_len, reply.stderr_len))
                }
                // Frames written before the signal arrived.
                Ok(_) => continue,
                Err(_) => return Salvaged::default(),
            };
            let mut blobs = Vec::with_capacity(2);
            for want in [lens.0, lens.1] {
                match tokio::time::timeout_at(until, worker.frames.recv()).await {
                    Ok(Some(Ok(Frame::Blob(b))))
                        if b.len() as u64 == want && want <= limits.stdout_bytes =>
                    {
                        blobs.push(b)
                    }
                    _ => return Salvaged::default(),
                }
            }
            let stderr = blobs.pop().unwrap_or_default();
            let stdout = blobs.pop().unwrap_or_default();
            return Salvaged {
                stdout,
                stderr,
                limits_hit,
            };
        }
    }

    async fn kill(&self, worker: &mut WorkerProc) {
        let _ = worker.child.start_kill();
        self.counters.killed.fetch_add(1, Ordering::Relaxed);
        let _ = tokio::time::timeout(REAP_GRACE, worker.child.wait()).await;
    }

    /// Gets rid of a worker that will not be used again (killed if still running); whether
    /// it is known to be gone (reaped).
    async fn retire(&self, mut worker: WorkerProc) -> bool {
        if matches!(worker.child.try_wait(), Ok(None)) {
            self.kill(&mut worker).await;
        }
        worker.stderr_task.abort();
        matches!(worker.child.try_wait(), Ok(Some(_)))
    }
}

impl WorkerProc {
    /// The worker process's CPU time (user + system, all threads), µs: its CPU clock, or
    /// `/proc/<pid>/stat` (10 ms resolution) if that clock is not available. Only while the
    /// worker is not reaped.
    fn cpu_us(&self) -> Option<u64> {
        self.cpu_clock
            .and_then(super::clock_us)
            .or_else(|| proc_cpu_us(self.pid))
    }

    /// How long the worker's task thread (named [`worker::RUN_THREAD_NAME`]) has been
    /// runnable but waiting for a CPU, µs: the second field of its
    /// `/proc/<pid>/task/<tid>/schedstat` ([`Self::run_schedstat`], nanoseconds). Only that
    /// thread: the worker's other threads wake now and then and wait too, which says nothing
    /// about the task. `None` if the kernel does not keep schedstat, or the thread or the
    /// worker is gone.
    fn cpu_wait_us(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(self.run_schedstat.as_ref()?).ok()?;
        let wait_ns: u64 = stat.split_whitespace().nth(1)?.parse().ok()?;
        Some(wait_ns / 1000)
    }

    /// CPU time (ms) of the running task: the worker's CPU time now less the base at
    /// `Started`; 0 before `Started`.
    fn task_cpu_ms(&self, started: &Option<Running>) -> u64 {
        match started {
            Some(run) => {
                self.cpu_us()
                    .unwrap_or(run.cpu_base_us)
                    .saturating_sub(run.cpu_base_us)
                    / 1000
            }
            None => 0,
        }
    }

    /// A worker can take the next task only if it is alive and has nothing unread pending.
    fn is_idle(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None)) && self.frames.is_quiet()
    }

    /// The end of the worker's stderr, for a crash report (waits briefly for it to drain).
    async fn last_words(&mut self) -> String {
        let _ = tokio::time::timeout(Duration::from_millis(500), &mut self.stderr_task).await;
        let tail = self.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
        let bytes: Vec<u8> = tail.iter().copied().collect();
        drop(tail);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let text = text.trim();
        if text.is_empty() {
            String::new()
        } else {
            format!("; its stderr ended with: {text}")
        }
    }
}

/// Keeps the last [`STDERR_TAIL`] bytes of a worker's stderr (for a crash report) and logs
/// each of its lines.
fn tail_stderr(mut stderr: ChildStderr, pid: u32) -> (Arc<StdMutex<VecDeque<u8>>>, JoinHandle<()>) {
    let stderr_tail = Arc::new(StdMutex::new(VecDeque::with_capacity(STDERR_TAIL)));
    let tail = stderr_tail.clone();
    let stderr_task = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        let mut line = Vec::new();
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            {
                let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                t.extend(&buf[..n]);
                let excess = t.len().saturating_sub(STDERR_TAIL);
                t.drain(..excess);
            }
            for &b in &buf[..n] {
                if b == b'\n' {
                    tracing::warn!(worker = pid, "{}", String::from_utf8_lossy(&line));
                    line.clear();
                } else if line.len() < 1024 {
                    line.push(b);
                }
            }
        }
    });
    (stderr_tail, stderr_task)
}

/// Waits (briefly) for a dead worker's exit status and describes it.
async fn reap(child: &mut Child) -> String {
    match tokio::time::timeout(EXIT_GRACE, child.wait()).await {
        Ok(Ok(status)) => describe_status(status),
        Ok(Err(e)) => format!("exit status unknown: {e}"),
        Err(_) => {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(REAP_GRACE, child.wait()).await;
            "it closed its pipe and was killed".into()
        }
    }
}

fn describe_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    match status.signal() {
        Some(sig) => {
            let name = match sig {
                libc::SIGKILL => "SIGKILL",
                libc::SIGSEGV => "SIGSEGV",
                libc::SIGBUS => "SIGBUS",
                libc::SIGABRT => "SIGABRT",
                libc::SIGILL => "SIGILL",
                libc::SIGFPE => "SIGFPE",
                libc::SIGTERM => "SIGTERM",
                libc::SIGXCPU => "SIGXCPU",
                libc::SIGXFSZ => "SIGXFSZ",
                _ => "",
            };
            format!("killed by signal {sig} {name}")
                .trim_end()
                .to_string()
        }
        None => format!("{status}"),
    }
}

/// Removes a slot's scratch directory on drop unless disarmed (the normal path empties it
/// instead); the slot's next task then makes a fresh one.
struct ScratchGuard(Option<PathBuf>);

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        if let Some(root) = self.0.take() {
            scratch::remove(&root);
        }
    }
}

fn crash_result(message: String) -> TaskResult {
    empty_result(Ending::Crash { message })
}

/// A result with `ending` and nothing else yet.
fn empty_result(ending: Ending) -> TaskResult {
    TaskResult {
        ending,
        limits_hit: Vec::new(),
        stdout: Vec::new(),
        stderr: Vec::new(),
        out_files: Vec::new(),
        wall_ms: 0,
        cpu_ms: 0,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// User + system CPU time of a process (all its threads) from `/proc/<pid>/stat`, µs (clock
/// tick resolution).
fn proc_cpu_us(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: count fields after its closing paren.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf cannot fail for this name.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|t| *t > 0)?;
    Some((utime + stime) * 1_000_000 / ticks)
}

/// `/proc/<pid>/task/<tid>/schedstat` of the worker `pid`'s task thread (the one named
/// [`worker::RUN_THREAD_NAME`]), `None` if there is no such thread or no schedstat.
fn run_thread_schedstat(pid: u32) -> Option<PathBuf> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks.flatten().find_map(|t| {
        let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
        let stat = t.path().join("schedstat");
        (comm.trim_end() == worker::RUN_THREAD_NAME && stat.exists()).then_some(stat)
    })
}

/// The CPU clock of process `pid` (any process may read another's: the kernel checks only
/// that it exists), `None` if it cannot be had.
fn cpu_clock_of(pid: u32) -> Option<libc::clockid_t> {
    let pid = libc::pid_t::try_from(pid).ok().filter(|p| *p > 0)?;
    let mut clock: libc::clockid_t = 0;
    // SAFETY: writes the clock id into `clock`.
    (unsafe { libc::clock_getcpuclockid(pid, &mut clock) } == 0).then_some(clock)
}
