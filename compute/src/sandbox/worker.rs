//! The worker process: one wasmtime engine, no fuel, no epochs, running one task at a time for
//! its supervisor. The supervisor enforces the CPU-time limit from outside (it reads this
//! process's CPU clock and kills the whole process), so nothing here needs to be
//! interruptible.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::num::NonZeroUsize;
use std::os::fd::FromRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rjs_signer::answer::{Ending, LimitKind};
use sha2::{Digest, Sha256};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module, OptLevel,
    PoolingAllocationConfig, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap,
    WasmBacktrace, WasmBacktraceDetails,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use super::protocol::{
    self, DoneReply, Frame, FromWorker, KIND_BLOB, MAX_BLOB_TO_WORKER, ModuleSource,
    PROTOCOL_VERSION, RunRequest, ToWorker, WorkerInit,
};
use crate::job::ModuleHash;

/// The wasmtime version the cache directory is named after (the engine's compatibility hash
/// covers it too; the name makes the directory recognisable).
pub(crate) const WASMTIME_VERSION: &str = "48.0.8";
/// Elements a table may hold (pool reservation and per-store limit).
const TABLE_ELEMENTS: usize = 100_000;
/// Native stack of the thread that runs the guest (wasmtime's own wasm stack limit, 512 KiB,
/// must fit with room to spare).
const RUN_THREAD_STACK: usize = 16 << 20;
/// How often the worker checks that its supervisor is still alive.
const PARENT_CHECK: Duration = Duration::from_millis(250);
/// Longest trap message sent back.
const MAX_MESSAGE: usize = 4096;

/// Set by the SIGXFSZ handler: a file write went past RLIMIT_FSIZE (the write itself fails
/// with EFBIG inside the job).
static FSIZE_HIT: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigxfsz(_: libc::c_int) {
    FSIZE_HIT.store(true, Ordering::SeqCst);
}

/// The running task's captured stdout and stderr, for the salvage thread.
static CAPTURE: Mutex<Option<Capture>> = Mutex::new(None);

struct Capture {
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    limit: u64,
}

/// The protocol's output pipe, shared by the run thread and the salvage thread; every frame
/// group is written under the lock.
type ProtoOut = Arc<Mutex<BufWriter<File>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn send(out: &ProtoOut, msg: &FromWorker) -> io::Result<()> {
    let mut w = lock(out);
    protocol::write_json(&mut *w, msg)?;
    w.flush()
}

/// The name of the worker's thread that runs tasks (its `/proc/<pid>/task/<tid>/comm`): the
/// supervisor reads that thread's time spent waiting for a CPU.
pub(super) const RUN_THREAD_NAME: &str = "rjs-worker";

/// Entry point of `rjs-compute worker`: the sandbox's worker process. Speaks the frame
/// protocol on stdin/stdout with the supervisor that started it and exits when stdin closes.
/// Not meant to be started by hand.
pub fn worker_main() -> ExitCode {
    // Before any thread exists, so that every thread inherits the mask and only the salvage
    // thread ever receives SIGUSR1.
    let salvage_set = match block_sigusr1() {
        Ok(set) => set,
        Err(e) => {
            eprintln!("rjs-compute worker: blocking SIGUSR1: {e}");
            return ExitCode::from(70);
        }
    };
    // Take the protocol pipes off fds 0/1 and point those at /dev/null and stderr, so nothing
    // printed by accident (a library's println!) can corrupt the protocol.
    let (proto_in, proto_out) = match take_protocol_fds() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("rjs-compute worker: setting up the protocol pipes: {e}");
            return ExitCode::from(70);
        }
    };
    if let Err(e) = install_sigxfsz_handler() {
        eprintln!("rjs-compute worker: installing the SIGXFSZ handler: {e}");
        return ExitCode::from(70);
    }
    start_parent_watchdog();
    let proto_out: ProtoOut = Arc::new(Mutex::new(BufWriter::new(proto_out)));
    start_salvage_thread(salvage_set, proto_out.clone());
    let run = std::thread::Builder::new()
        .name(RUN_THREAD_NAME.into())
        .stack_size(RUN_THREAD_STACK)
        .spawn(move || serve(proto_in, proto_out));
    match run.map(|h| h.join()) {
        Ok(Ok(Ok(()))) => ExitCode::SUCCESS,
        Ok(Ok(Err(e))) => {
            eprintln!("rjs-compute worker: {e}");
            ExitCode::from(70)
        }
        Ok(Err(_)) => ExitCode::from(101),
        Err(e) => {
            eprintln!("rjs-compute worker: starting the run thread: {e}");
            ExitCode::from(70)
        }
    }
}

fn take_protocol_fds() -> io::Result<(File, File)> {
    // SAFETY: plain fd syscalls on fds this process owns; the new descriptors are owned by
    // the returned Files and by nothing else.
    unsafe {
        let proto_in = libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3);
        if proto_in < 0 {
            return Err(io::Error::last_os_error());
        }
        let proto_out = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
        if proto_out < 0 {
            return Err(io::Error::last_os_error());
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::dup2(null, 0) < 0 || libc::dup2(2, 1) < 0 {
            return Err(io::Error::last_os_error());
        }
        libc::close(null);
        Ok((File::from_raw_fd(proto_in), File::from_raw_fd(proto_out)))
    }
}

fn install_sigxfsz_handler() -> io::Result<()> {
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigxfsz as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = libc::SA_RESTART;
        if libc::sigaction(libc::SIGXFSZ, &sa, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn block_sigusr1() -> io::Result<libc::sigset_t> {
    // SAFETY: signal-set manipulation on a local set; pthread_sigmask on this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(set)
    }
}

/// On SIGUSR1 (the supervisor is about to kill this worker: time or output limit), sends what
/// the running task has written to stdout and stderr so far, so that it is not lost with the
/// process.
fn start_salvage_thread(set: libc::sigset_t, out: ProtoOut) {
    let _ = std::thread::Builder::new()
        .name("rjs-worker-salvage".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: waits for a signal of the (blocked) set.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 || sig != libc::SIGUSR1 {
                    continue;
                }
                let mut limits_hit = Vec::new();
                if FSIZE_HIT.load(Ordering::SeqCst) {
                    limits_hit.push(LimitKind::Output);
                }
                let (stdout, stderr) = match &*lock(&CAPTURE) {
                    Some(c) => (
                        captured(&c.stdout, c.limit, LimitKind::Stdout, &mut limits_hit),
                        captured(&c.stderr, c.limit, LimitKind::Stderr, &mut limits_hit),
                    ),
                    None => (Vec::new(), Vec::new()),
                };
                let mut w = lock(&out);
                let _ = protocol::write_json(
                    &mut *w,
                    &FromWorker::Partial {
                        limits_hit,
                        stdout_len: stdout.len() as u64,
                        stderr_len: stderr.len() as u64,
                    },
                )
                .and_then(|()| protocol::write_frame(&mut *w, KIND_BLOB, &stdout))
                .and_then(|()| protocol::write_frame(&mut *w, KIND_BLOB, &stderr))
                .and_then(|()| w.flush());
            }
        });
}

/// A pipe's contents cut at `limit` (the pipe holds one byte more, so that going past the
/// limit can be told apart from reaching it); records `kind` if it was cut.
fn captured(
    pipe: &MemoryOutputPipe,
    limit: u64,
    kind: LimitKind,
    hit: &mut Vec<LimitKind>,
) -> Vec<u8> {
    let mut bytes = pipe.contents().to_vec();
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if bytes.len() > limit {
        bytes.truncate(limit);
        hit.push(kind);
    }
    bytes
}

/// A worker whose supervisor died (it was re-parented) exits at once, whatever it is running:
/// nobody would enforce its deadline any more.
fn start_parent_watchdog() {
    // SAFETY: getppid cannot fail.
    let parent = unsafe { libc::getppid() };
    let _ = std::thread::Builder::new()
        .name("rjs-worker-watchdog".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            loop {
                std::thread::sleep(PARENT_CHECK);
                // SAFETY: as above; _exit is async-signal-safe and skips destructors.
                if unsafe { libc::getppid() } != parent {
                    unsafe { libc::_exit(71) };
                }
            }
        });
}

/// The guest's store data.
struct State {
    wasi: WasiP1Ctx,
    limiter: Limiter,
}

/// The task's resource limits: `StoreLimits` plus a record of whether a memory growth was
/// refused (with `trap_on_grow_failure` the resulting error is not a `wasmtime::Trap`, so the
/// flag is the reliable way to tell a memory-limit stop from any other failure). Memory is
/// limited in total: a module with several memories (multi-memory) and a GC heap share one
/// `memory_bytes`.
struct Limiter {
    inner: StoreLimits,
    /// `limits.memory_bytes`.
    memory_limit: usize,
    /// Bytes of every memory so far.
    memory_total: usize,
    memory_refused: Option<usize>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .memory_total
            .saturating_sub(current)
            .saturating_add(desired);
        let r = if total > self.memory_limit {
            // As `StoreLimits` does with `trap_on_grow_failure`: the task ends there.
            Err(wasmtime::format_err!(
                "forcing trap when growing memories to {total} bytes in all"
            ))
        } else {
            self.inner.memory_growing(current, desired, maximum)
        };
        match r {
            Ok(true) => self.memory_total = total,
            _ => {
                self.memory_refused.get_or_insert(total);
            }
        }
        r
    }
    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_refused.get_or_insert(0);
        self.inner.memory_grow_failed(error)
    }
    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }
    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }
    fn instances(&self) -> usize {
        self.inner.instances()
    }
    fn tables(&self) -> usize {
        self.inner.tables()
    }
    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

struct Worker {
    engine: Engine,
    linker: Linker<State>,
    cache_dir: PathBuf,
    modules: HashMap<ModuleHash, (InstancePre<State>, u64)>,
    capacity: usize,
    clock: u64,
}

fn serve(proto_in: File, output: ProtoOut) -> Result<(), String> {
    let mut input = BufReader::new(proto_in);
    let io_err = |what: &str, e: io::Error| format!("{what}: {e}");

    let init: WorkerInit = match protocol::read_frame(&mut input, MAX_BLOB_TO_WORKER)
        .map_err(|e| io_err("reading the init message", e))?
    {
        None => return Ok(()),
        Some(Frame::Json(j)) => match serde_json::from_slice::<ToWorker>(&j) {
            Ok(ToWorker::Init(init)) => init,
            other => return Err(format!("expected an init message, got {other:?}")),
        },
        Some(Frame::Blob(_)) => return Err("expected an init message, got a blob".into()),
    };
    let mut worker = match Worker::new(&init) {
        Ok(w) => w,
        Err(message) => {
            let _ = send(&output, &FromWorker::Fatal { message });
            return Ok(());
        }
    };
    send(
        &output,
        &FromWorker::Hello {
            protocol: PROTOCOL_VERSION,
            pid: std::process::id(),
            wasmtime: WASMTIME_VERSION.into(),
            cache_dir: worker.cache_dir.clone(),
        },
    )
    .map_err(|e| io_err("writing hello", e))?;

    loop {
        let frame = protocol::read_frame(&mut input, MAX_BLOB_TO_WORKER)
            .map_err(|e| io_err("reading a request", e))?;
        let request = match frame {
            None => return Ok(()),
            Some(Frame::Json(j)) => {
                serde_json::from_slice::<ToWorker>(&j).map_err(|e| format!("bad request: {e}"))?
            }
            Some(Frame::Blob(_)) => return Err("unexpected blob".into()),
        };
        match request {
            ToWorker::Run(req) => worker
                .run(&req, &mut input, &output)
                .map_err(|e| io_err("talking to the supervisor", e))?,
            ToWorker::Shutdown => return Ok(()),
            ToWorker::Init(_) => return Err("second init message".into()),
        }
    }
}

/// Feeds the engine's compatibility hash into SHA-256 (std's `Hash` drives it).
struct ShaHasher(Sha256);

impl std::hash::Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        0
    }
}

pub(crate) fn engine_config(max_memory_bytes: u64) -> Config {
    use rjs_signer::wasm::{FEATURES, MAX_MEMORIES, MAX_TABLES};
    let mut pool = PoolingAllocationConfig::new();
    pool.total_core_instances(1)
        .total_memories(MAX_MEMORIES)
        .total_tables(MAX_TABLES)
        .max_memories_per_module(MAX_MEMORIES)
        .max_tables_per_module(MAX_TABLES)
        // The GC heap (GC structs and arrays, exception objects) is a memory of its own,
        // capped like a linear memory.
        .total_gc_heaps(1)
        .table_elements(TABLE_ELEMENTS)
        .max_memory_size(usize::try_from(max_memory_bytes).unwrap_or(usize::MAX));
    let mut config = Config::new();
    config
        // Exactly the features `rjs-sign pack`, `verify` and the web server check modules
        // against (docs/sandbox.md, "WebAssembly features").
        .wasm_features(wasmtime::WasmFeatures::all(), false)
        .wasm_features(FEATURES, true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        // Native speed: no fuel, no epoch checks. Time is enforced by killing the process.
        .consume_fuel(false)
        .epoch_interruption(false)
        .cranelift_opt_level(OptLevel::Speed)
        .wasm_backtrace_details(WasmBacktraceDetails::Disable)
        .wasm_backtrace_max_frames(NonZeroUsize::new(16));
    config
}

/// Checks that a directory the worker loads native code from belongs to this user and is
/// writable by nobody else.
fn check_private_dir(dir: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != euid || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} must be a directory owned by uid {euid} and writable only by it",
            dir.display()
        ));
    }
    Ok(())
}

impl Worker {
    fn new(init: &WorkerInit) -> Result<Worker, String> {
        if init.protocol != PROTOCOL_VERSION {
            return Err(format!(
                "supervisor speaks protocol {}, this worker {PROTOCOL_VERSION}",
                init.protocol
            ));
        }
        let engine = Engine::new(&engine_config(init.max_memory_bytes))
            .map_err(failed("creating the engine"))?;
        let mut hasher = ShaHasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        let digest = rjs_signer::bundle::hex(&hasher.0.finalize());
        check_private_dir(&init.cache_root)?;
        let cache_dir = init
            .cache_root
            .join(format!("wasmtime-{WASMTIME_VERSION}-{}", &digest[..16]));
        rjs_signer::fsutil::create_private_dir(&cache_dir).map_err(|e| rjs_cmd::chain(&e))?;
        check_private_dir(&cache_dir)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut State| &mut s.wasi)
            .map_err(failed("linking WASI"))?;
        Ok(Worker {
            engine,
            linker,
            cache_dir,
            modules: HashMap::new(),
            capacity: init.module_cache_entries.max(1),
            clock: 0,
        })
    }

    /// Finds the module in memory, then on disk, then asks the supervisor for the bytes and
    /// compiles them. `Err(message)` when the module is refused (does not compile, wrong hash,
    /// unknown imports).
    fn module(
        &mut self,
        sha: ModuleHash,
        input: &mut impl io::Read,
        output: &ProtoOut,
    ) -> io::Result<Result<(InstancePre<State>, ModuleSource), String>> {
        self.clock += 1;
        if let Some((pre, used)) = self.modules.get_mut(&sha) {
            *used = self.clock;
            return Ok(Ok((pre.clone(), ModuleSource::Memory)));
        }
        let path = self.cache_dir.join(format!("{sha}.cwasm"));
        let mut loaded = None;
        if path.exists() {
            // SAFETY: the file is in the node's own 0700 cache directory (checked at start)
            // and was written there, atomically, by a worker from a module it compiled with
            // an engine of this configuration; wasmtime also checks its header.
            match unsafe { Module::deserialize_file(&self.engine, &path) } {
                Ok(m) => loaded = Some((m, ModuleSource::Disk)),
                Err(e) => {
                    eprintln!(
                        "rjs-compute worker: dropping unusable cache file {}: {}",
                        path.display(),
                        rjs_cmd::chain(e.as_ref())
                    );
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let (module, source) = match loaded {
            Some(l) => l,
            None => {
                send(output, &FromWorker::NeedModule)?;
                let bytes = match protocol::read_frame(input, MAX_BLOB_TO_WORKER)? {
                    Some(Frame::Blob(b)) => b,
                    _ => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "expected the module bytes",
                        ));
                    }
                };
                if ModuleHash::of(&bytes) != sha {
                    return Ok(Err("module bytes do not match the module's SHA-256".into()));
                }
                let module = match Module::new(&self.engine, &bytes) {
                    Ok(m) => m,
                    Err(e) => return Ok(Err(failed("module rejected")(e))),
                };
                match module.serialize() {
                    Ok(compiled) => {
                        if let Err(e) = rjs_signer::fsutil::write_atomic(&path, &compiled, 0o600) {
                            eprintln!(
                                "rjs-compute worker: caching {}: {}",
                                path.display(),
                                rjs_cmd::chain(&e)
                            );
                        }
                    }
                    Err(e) => eprintln!(
                        "rjs-compute worker: serializing a module: {}",
                        rjs_cmd::chain(e.as_ref())
                    ),
                }
                (module, ModuleSource::Compiled)
            }
        };
        let pre = match self.linker.instantiate_pre(&module) {
            Ok(p) => p,
            Err(e) => return Ok(Err(failed("module rejected")(e))),
        };
        if self.modules.len() >= self.capacity
            && let Some(oldest) = self
                .modules
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k)
        {
            self.modules.remove(&oldest);
        }
        self.modules.insert(sha, (pre.clone(), self.clock));
        Ok(Ok((pre, source)))
    }

    fn run(
        &mut self,
        req: &RunRequest,
        input: &mut impl io::Read,
        output: &ProtoOut,
    ) -> io::Result<()> {
        let load_start = Instant::now();
        let Some(sha) = ModuleHash::parse_hex(&req.module_sha256) else {
            return send_done(output, refused("bad module hash in the request"), &[], &[]);
        };
        let (pre, source) = match self.module(sha, input, output)? {
            Ok(x) => x,
            Err(message) => return send_done(output, refused(&message), &[], &[]),
        };
        let load_us = micros(load_start.elapsed());

        // The task's CPU time counts from here, on the clock the supervisor reads from
        // outside to enforce the limit.
        let cpu_base = cpu_time_us();
        send(
            output,
            &FromWorker::Started {
                module_source: source,
                load_us,
                cpu_us: cpu_base,
            },
        )?;

        let limits = &req.limits;
        let cap = |n: u64| usize::try_from(n).unwrap_or(usize::MAX).saturating_add(1);
        // One byte more than the limit: a program that writes more than `stdout_bytes` is
        // told so (and reported) only once it tries to go past the limit.
        let stdout = MemoryOutputPipe::new(cap(limits.stdout_bytes));
        let stderr = MemoryOutputPipe::new(cap(limits.stdout_bytes));
        let mut reply = DoneReply {
            ending: Ending::Exit { code: 0 },
            limits_hit: Vec::new(),
            module_source: Some(source),
            load_us,
            instantiate_us: 0,
            run_us: 0,
            cpu_us: 0,
            stdout_len: 0,
            stderr_len: 0,
        };

        match self.wasi_ctx(req, &stdout, &stderr) {
            Err(message) => reply.ending = Ending::Crash { message },
            Ok(wasi) => {
                let memory = usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX);
                let limiter = Limiter {
                    inner: StoreLimitsBuilder::new()
                        .memory_size(memory)
                        .table_elements(TABLE_ELEMENTS)
                        .instances(1)
                        .memories(rjs_signer::wasm::MAX_MEMORIES as usize)
                        .tables(rjs_signer::wasm::MAX_TABLES as usize)
                        .trap_on_grow_failure(true)
                        .build(),
                    memory_limit: memory,
                    memory_total: 0,
                    memory_refused: None,
                };
                let mut store = Store::new(&self.engine, State { wasi, limiter });
                store.limiter(|s| &mut s.limiter);
                *lock(&CAPTURE) = Some(Capture {
                    stdout: stdout.clone(),
                    stderr: stderr.clone(),
                    limit: limits.stdout_bytes,
                });

                FSIZE_HIT.store(false, Ordering::SeqCst);
                let fsize = FsizeLimit::set(limits.output_bytes);
                let t0 = Instant::now();
                let instance = pre.instantiate(&mut store);
                let t1 = Instant::now();
                let result = instance.and_then(|instance| {
                    let start = instance
                        .get_typed_func::<(), ()>(&mut store, "_start")
                        .map_err(|e| wasmtime::format_err!("no usable `_start` export: {e}"))?;
                    start.call(&mut store, ())
                });
                let t2 = Instant::now();
                drop(fsize);
                *lock(&CAPTURE) = None;
                reply.cpu_us = cpu_time_us().saturating_sub(cpu_base);
                reply.instantiate_us = micros(t1 - t0);
                reply.run_us = micros(t2 - t1);

                let refused = store.data().limiter.memory_refused;
                if refused.is_some() {
                    reply.limits_hit.push(LimitKind::Memory);
                }
                if FSIZE_HIT.load(Ordering::SeqCst) {
                    reply.limits_hit.push(LimitKind::Output);
                }
                reply.ending = match result {
                    Ok(()) => Ending::Exit { code: 0 },
                    Err(e) => classify(&e, refused, limits.memory_bytes),
                };
                drop(store);
            }
        }

        let limit = limits.stdout_bytes;
        let out = captured(&stdout, limit, LimitKind::Stdout, &mut reply.limits_hit);
        let err = captured(&stderr, limit, LimitKind::Stderr, &mut reply.limits_hit);
        send_done(output, reply, &out, &err)
    }

    fn wasi_ctx(
        &self,
        req: &RunRequest,
        stdout: &MemoryOutputPipe,
        stderr: &MemoryOutputPipe,
    ) -> Result<WasiP1Ctx, String> {
        let mut b = WasiCtxBuilder::new();
        // File operations run on this thread instead of bouncing through a tokio pool (must
        // be set before the preopens, which capture it).
        b.allow_blocking_current_thread(true);
        let mut argv = Vec::with_capacity(req.args.len() + 1);
        argv.push(req.name.as_str());
        argv.extend(req.args.iter().map(String::as_str));
        b.args(&argv);
        b.envs(&req.env);
        b.env("RJS_TASK_INDEX", req.task_index.to_string());
        b.env("RJS_TASK_COUNT", req.task_count.to_string());
        if !req.env.iter().any(|(k, _)| k == "TMPDIR") {
            b.env("TMPDIR", "/tmp");
        }
        if let Some(name) = &req.stdin {
            rjs_signer::paths::check_entry_name(name)
                .map_err(|e| format!("standard input {name:?}: {e}"))?;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(req.input_dir.join(name))
                .map_err(|e| format!("opening the standard input {name:?}: {e}"))?;
            b.stdin(wasmtime_wasi::cli::InputFile::new(file));
        }
        b.stdout(stdout.clone());
        b.stderr(stderr.clone());
        // Preview 1 has no way to open a socket; these make the policy explicit anyway.
        b.allow_tcp(false);
        b.allow_udp(false);
        b.allow_ip_name_lookup(false);
        b.preopened_dir(&req.input_dir, ".", FsPerms::ReadOnly)
            .map_err(failed("opening the input directory"))?;
        b.preopened_dir(&req.out_dir, "out", FsPerms::ReadWrite)
            .map_err(failed("opening the output directory"))?;
        b.preopened_dir(&req.tmp_dir, "/tmp", FsPerms::ReadWrite)
            .map_err(failed("opening the temporary directory"))?;
        Ok(b.build_p1())
    }
}

fn refused(message: &str) -> DoneReply {
    DoneReply {
        ending: Ending::Trap {
            message: truncate(message.to_string()),
        },
        limits_hit: Vec::new(),
        module_source: None,
        load_us: 0,
        instantiate_us: 0,
        run_us: 0,
        cpu_us: 0,
        stdout_len: 0,
        stderr_len: 0,
    }
}

fn send_done(
    output: &ProtoOut,
    mut reply: DoneReply,
    stdout: &[u8],
    stderr: &[u8],
) -> io::Result<()> {
    reply.stdout_len = stdout.len() as u64;
    reply.stderr_len = stderr.len() as u64;
    let mut w = lock(output);
    protocol::write_json(&mut *w, &FromWorker::Done(Box::new(reply)))?;
    protocol::write_frame(&mut *w, KIND_BLOB, stdout)?;
    protocol::write_frame(&mut *w, KIND_BLOB, stderr)?;
    w.flush()
}

/// Turns the error that ended `_start` (or instantiation) into an ending.
fn classify(err: &wasmtime::Error, memory_refused: Option<usize>, memory_limit: u64) -> Ending {
    if let Some(exit) = err.downcast_ref::<I32Exit>() {
        return Ending::Exit { code: exit.0 };
    }
    if let Some(desired) = memory_refused {
        let message = if desired > 0 {
            format!("memory growth to {desired} bytes refused: the limit is {memory_limit} bytes")
        } else {
            format!("the host could not provide more memory (limit {memory_limit} bytes)")
        };
        return Ending::Limit {
            limit: LimitKind::Memory,
            message,
        };
    }
    let mut message = match err.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{err:#}"),
    };
    if let Some(bt) = err.downcast_ref::<WasmBacktrace>()
        && !bt.frames().is_empty()
    {
        message.push_str("\nwasm backtrace:");
        for (i, frame) in bt.frames().iter().take(8).enumerate() {
            match frame.func_name() {
                Some(name) => {
                    message.push_str(&format!("\n  {i}: {:#}", rustc_demangle::demangle(name)))
                }
                None => message.push_str(&format!("\n  {i}: func[{}]", frame.func_index())),
            }
        }
        if bt.frames().len() > 8 {
            message.push_str("\n  …");
        }
    }
    Ending::Trap {
        message: truncate(message),
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// User + system CPU time of this whole process (all threads), microseconds: the process
/// CPU clock, which the supervisor reads for this process with `clock_getcpuclockid`.
fn cpu_time_us() -> u64 {
    // This clock always exists.
    super::clock_us(libc::CLOCK_PROCESS_CPUTIME_ID).unwrap_or(0)
}

/// The soft RLIMIT_FSIZE for the duration of a task: no file the job writes can grow past
/// `output_bytes` (the write fails with EFBIG; SIGXFSZ is caught and only sets a flag).
struct FsizeLimit {
    old: Option<libc::rlimit>,
}

impl FsizeLimit {
    fn set(bytes: u64) -> FsizeLimit {
        // SAFETY: get/setrlimit on this process with valid pointers.
        unsafe {
            let mut old: libc::rlimit = std::mem::zeroed();
            if libc::getrlimit(libc::RLIMIT_FSIZE, &mut old) != 0 {
                eprintln!(
                    "rjs-compute worker: getrlimit: {}",
                    io::Error::last_os_error()
                );
                return FsizeLimit { old: None };
            }
            let new = libc::rlimit {
                rlim_cur: (bytes as libc::rlim_t).min(old.rlim_max),
                rlim_max: old.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &new) != 0 {
                eprintln!(
                    "rjs-compute worker: setrlimit: {}",
                    io::Error::last_os_error()
                );
                return FsizeLimit { old: None };
            }
            FsizeLimit { old: Some(old) }
        }
    }
}

impl Drop for FsizeLimit {
    fn drop(&mut self) {
        if let Some(old) = self.old {
            // SAFETY: restores the limit read in `set`.
            unsafe {
                libc::setrlimit(libc::RLIMIT_FSIZE, &old);
            }
        }
    }
}

/// Turns a wasmtime error into the reason sent to the supervisor: `what: cause: …`.
fn failed(what: &'static str) -> impl FnOnce(wasmtime::Error) -> String {
    move |e| format!("{what}: {}", rjs_cmd::chain(e.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rjs_signer::wasm::{WASI_MODULE, WASI_P1, WasiType};

    /// The table `rjs-sign pack`, `verify` and the web server check imports against is
    /// exactly what the sandbox links: same names, same signatures.
    #[test]
    fn the_signers_wasi_table_is_what_the_sandbox_links() {
        let engine = Engine::new(&engine_config(1 << 26)).unwrap();
        let mut linker: Linker<State> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut State| &mut s.wasi).unwrap();
        let mut store = Store::new(
            &engine,
            State {
                wasi: WasiCtxBuilder::new().build_p1(),
                limiter: Limiter {
                    inner: StoreLimitsBuilder::new().build(),
                    memory_limit: 1 << 26,
                    memory_total: 0,
                    memory_refused: None,
                },
            },
        );
        let kind = |t: &wasmtime::ValType| match t {
            wasmtime::ValType::I32 => WasiType::I32,
            wasmtime::ValType::I64 => WasiType::I64,
            other => panic!("unexpected WASI type {other}"),
        };
        let mut linked: Vec<(String, Vec<WasiType>, Vec<WasiType>)> = Vec::new();
        let items: Vec<(String, String, wasmtime::Extern)> = linker
            .iter(&mut store)
            .map(|(m, n, e)| (m.to_owned(), n.to_owned(), e))
            .collect();
        for (module, name, item) in items {
            assert_eq!(module, WASI_MODULE, "{module}::{name}");
            let ty = item.into_func().unwrap().ty(&store);
            linked.push((
                name,
                ty.params().map(|t| kind(&t)).collect(),
                ty.results().map(|t| kind(&t)).collect(),
            ));
        }
        linked.sort();
        let mut table: Vec<(String, Vec<WasiType>, Vec<WasiType>)> = WASI_P1
            .iter()
            .map(|(n, p, r)| (n.to_string(), p.to_vec(), r.to_vec()))
            .collect();
        table.sort();
        assert_eq!(linked, table);
    }
}
