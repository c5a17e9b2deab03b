//! Whole-grid benchmark: `cargo build --release --workspace --bins && cargo bench -p rjs --bench
//! grid` (see `docs/benchmarks.md`).
//!
//! Every figure comes from a grid of the real release binaries (`target/release/rjs-webserver`,
//! `rjs-lookup`, `rjs-compute`) started by [`rjs::grid::LocalGrid`] inside a private network
//! namespace entered first thing in `main`:
//!
//! 1. **throughput**: `--tasks` (10,000) `hello` tasks on 2 nodes × (cores) slots, from the start
//!    of the upload until the author API lists every job `done`; CPU seconds of each process;
//! 2. **speed-up**: the 8-tile Mandelbrot on one single-slot node against two (median of 3 warm
//!    runs each);
//! 3. **first work of a new node**: one node busy, jobs queued; a new node is started; time from
//!    its spawn (and from its ready line) to the first job the lookup gives it (median of 5);
//! 4. **re-dispatch**: a long task on node A; SIGKILL (connection closed) and SIGSTOP (silent:
//!    the lease TTL must run out) of A; time until the job runs on node B (median of 3 each).
//!
//! Prints a table; exits 0 only if every target is met (1 otherwise, 2 when no private network
//! namespace can be made). Options: `--tasks N`, `--only SECTION[,…]` (throughput, speedup,
//! first-work, redispatch), `--timeout SECS` (throughput), `--allow-stale` (binaries older than
//! their sources: a warning instead of an error), `--keep` (keep the grids' folders).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rjs::grid::{
    self, GridOptions, JobWhere, LocalGrid, NodeOptions, NodesResponse, StatusResponse, WhyResponse,
};
use rjs_harness::report::{Row, print_table};
use rjs_harness::{netns, paths, signals};
use rjs_wire::api::{JobState, JobView, SubmissionSummary};
use rjs_wire::status::StatusRequest;
use serde::de::DeserializeOwned;

/// Poll interval of the job list in the throughput run.
const THROUGHPUT_POLL: Duration = Duration::from_millis(150);
/// Poll interval of the job list in the speed-up runs (8 rows: cheap).
const SPEEDUP_POLL: Duration = Duration::from_millis(10);
/// Poll interval of the lookup's status socket.
const STATUS_POLL: Duration = Duration::from_millis(5);
/// The grid's announcement interval (the `rjs::grid` default); TTL = 3 ×.
const INTERVAL: Duration = Duration::from_millis(200);
/// Targets.
const TARGET_TASKS_PER_S: f64 = 1000.0;
const TARGET_SPEEDUP: f64 = 1.8;
const TARGET_FIRST_WORK: Duration = Duration::from_secs(1);
/// Speed written into every node's bench.json (the ~1 s benchmark is a one-time cost of a
/// node's first start; presetting it keeps the grids' start short and the order known).
const MFLOPS: f64 = 1000.0;
/// Arguments of the long Mandelbrot task (one image, one band per task): ~3.5 s natively
/// as one task on the development machine.
const LONG_ARGS: [&str; 3] = ["1024", "1024", "8000"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Throughput,
    Speedup,
    FirstWork,
    Redispatch,
}

impl Section {
    const ALL: [Section; 4] = [
        Section::Throughput,
        Section::Speedup,
        Section::FirstWork,
        Section::Redispatch,
    ];

    fn name(self) -> &'static str {
        match self {
            Section::Throughput => "throughput",
            Section::Speedup => "speedup",
            Section::FirstWork => "first-work",
            Section::Redispatch => "redispatch",
        }
    }
}

#[derive(Debug)]
struct Args {
    tasks: u32,
    sections: Vec<Section>,
    timeout: Duration,
    allow_stale: bool,
    keep: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        tasks: 10_000,
        sections: Section::ALL.to_vec(),
        timeout: Duration::from_secs(600),
        allow_stale: false,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            "--tasks" => {
                let v = value("--tasks")?;
                args.tasks = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=100_000).contains(n))
                    .with_context(|| format!("--tasks {v:?}: expected 1 to 100000"))?;
            }
            "--timeout" => {
                let v = value("--timeout")?;
                let secs: u64 = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("--timeout {v:?}: expected seconds"))?;
                args.timeout = Duration::from_secs(secs);
            }
            "--only" => {
                let v = value("--only")?;
                args.sections = v
                    .split(',')
                    .map(|s| {
                        Section::ALL
                            .into_iter()
                            .find(|x| x.name() == s.trim())
                            .with_context(|| {
                                format!(
                                    "--only {s:?}: expected {}",
                                    Section::ALL.map(Section::name).join(", ")
                                )
                            })
                    })
                    .collect::<Result<_>>()?;
            }
            "--allow-stale" => args.allow_stale = true,
            "--keep" => args.keep = true,
            "-h" | "--help" => {
                println!(
                    "cargo bench -p rjs --bench grid [-- --tasks N] [--only SECTION,…] \
                     [--timeout SECS] [--allow-stale] [--keep]\nsections: {}",
                    Section::ALL.map(Section::name).join(", ")
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    // First, before any thread exists: the lookup and the nodes create mDNS daemons, which must
    // never join multicast groups on this machine's interfaces.
    let isolation = match netns::enter_private() {
        Ok(i) => i,
        Err(e) => {
            eprintln!(
                "grid bench: cannot create a private network namespace: {}\nThe grid's \
                 mDNS must not reach this machine's networks: refusing to run. Run as root or \
                 where unprivileged user namespaces are allowed.",
                rjs_cmd::chain(e.as_ref())
            );
            return ExitCode::from(2);
        }
    };
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("grid bench: {}", rjs_cmd::chain(e.as_ref()));
            return ExitCode::from(2);
        }
    };
    if let Err(e) = signals::install() {
        eprintln!("grid bench: installing the Ctrl-C handler: {e}");
        return ExitCode::FAILURE;
    }
    println!("network: {isolation} with only lo: nothing leaves this machine");
    println!(
        "machine: {} cores; load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let ctx = match Ctx::new(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("grid bench: {}", rjs_cmd::chain(e.as_ref()));
            return ExitCode::FAILURE;
        }
    };

    let mut rows = Vec::new();
    let mut errors = 0;
    for &section in &args.sections {
        println!("\n== {} ==", section.name());
        let load = Load::start();
        let result = match section {
            Section::Throughput => throughput(&ctx, &args),
            Section::Speedup => speedup(&ctx),
            Section::FirstWork => first_work(&ctx),
            Section::Redispatch => redispatch(&ctx),
        };
        let (other, available) = load.other();
        println!(
            "other processes on this machine used {other:.1} of the {available:.1} CPU seconds \
             available during this section"
        );
        let result = result.map(|mut r| {
            r.push(Row::info(
                format!("  ({}: CPU s used by other processes)", section.name()),
                format!("{other:.1} of {available:.1}"),
            ));
            r
        });
        match result {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => {
                errors += 1;
                eprintln!(
                    "grid bench: {}: {}",
                    section.name(),
                    rjs_cmd::chain(e.as_ref())
                );
                rows.push(Row::target(
                    section.name(),
                    format!("ERROR: {}", first_line(&rjs_cmd::chain(e.as_ref()))),
                    "runs",
                    false,
                ));
            }
        }
        if signals::received().is_some() {
            break;
        }
    }

    print_table(&rows);
    let missed = rows.iter().filter(|r| r.met == Some(false)).count();
    let keep = args.keep || errors > 0;
    ctx.finish(keep);
    if signals::received().is_some() {
        eprintln!("grid bench: interrupted");
        return ExitCode::from(130);
    }
    if missed > 0 {
        println!("{missed} target(s) missed");
        ExitCode::FAILURE
    } else {
        println!("every target met");
        ExitCode::SUCCESS
    }
}

fn first_line(s: &str) -> String {
    let l = s.lines().next().unwrap_or_default();
    if l.len() > 200 {
        format!("{}…", &l[..l.floor_char_boundary(200)])
    } else {
        l.to_owned()
    }
}

/// What every section shares: the binaries, the sample job folders, a scratch folder.
struct Ctx {
    bin_dir: PathBuf,
    hello: PathBuf,
    mandelbrot: PathBuf,
    root: tempfile::TempDir,
    next: std::cell::Cell<u32>,
}

impl Ctx {
    fn new(args: &Args) -> Result<Ctx> {
        let bin_dir = paths::target_dir().join("release");
        check_binaries(&bin_dir, args.allow_stale)?;
        let samples = paths::samples_dir();
        let hello = samples.join("hello");
        let mandelbrot = samples.join("mandelbrot");
        for d in [&hello, &mandelbrot] {
            ensure!(
                d.join("manifest.json").is_file(),
                "{} is missing: build the sample jobs first (samples/build.sh)",
                d.display()
            );
        }
        let root = tempfile::Builder::new()
            .prefix("rjs-bench-grid-")
            .tempdir()
            .context("creating a scratch folder")?;
        println!(
            "binaries: {}; scratch: {}",
            bin_dir.display(),
            root.path().display()
        );
        Ok(Ctx {
            bin_dir,
            hello,
            mandelbrot,
            root,
            next: std::cell::Cell::new(0),
        })
    }

    /// A new folder under the scratch folder.
    fn fresh(&self, name: &str) -> PathBuf {
        let n = self.next.get() + 1;
        self.next.set(n);
        self.root.path().join(format!("{n:02}-{name}"))
    }

    fn finish(self, keep: bool) {
        if keep {
            let kept = self.root.keep();
            println!(
                "the grids' folders are kept: {} (logs in */logs/)",
                kept.display()
            );
        } else if let Err(e) = self.root.close() {
            eprintln!("grid bench: removing the scratch folder: {e}");
        }
    }

    /// Grid options: `nodes` nodes of `slots` slots, speeds preset (`mflops[i]`, else
    /// [`MFLOPS`]), every node started unless listed in `later`.
    fn options(
        &self,
        dir: PathBuf,
        nodes: usize,
        slots: u32,
        interval: Duration,
        mflops: &[f64],
        later: &[usize],
    ) -> GridOptions {
        let mut opts = GridOptions::new(dir);
        opts.bin_dir = Some(self.bin_dir.clone());
        opts.nodes = nodes;
        opts.slots_per_node = slots;
        opts.announce_interval = interval;
        opts.node_options = (0..nodes)
            .map(|i| NodeOptions {
                mflops: Some(mflops.get(i).copied().unwrap_or(MFLOPS)),
                start: !later.contains(&i),
                ..NodeOptions::default()
            })
            .collect();
        opts
    }

    /// A copy of the job folder `src` whose manifest is changed by `edit`.
    fn job_folder(
        &self,
        src: &Path,
        name: &str,
        edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
    ) -> Result<PathBuf> {
        let dst = self.fresh(name);
        grid::job_copy(src, &dst, edit)?;
        Ok(dst)
    }

    /// The long Mandelbrot job: `tasks` bands of a 1024² image at 8000 iterations.
    fn long_job(&self, tasks: u32) -> Result<PathBuf> {
        self.job_folder(&self.mandelbrot, "long-mandelbrot", |m| {
            m.insert("tasks".into(), tasks.into());
            m.insert(
                "args".into(),
                LONG_ARGS
                    .iter()
                    .map(|s| serde_json::Value::from(*s))
                    .collect(),
            );
        })
    }

    fn start(&self, opts: GridOptions) -> Result<(LocalGrid, Duration)> {
        let t = Instant::now();
        let grid = LocalGrid::start(opts)?;
        Ok((grid, t.elapsed()))
    }
}

/// Stops a grid; a failure to stop cleanly is reported, not fatal to the figures.
fn stop(mut grid: LocalGrid) {
    if let Err(e) = grid.stop() {
        eprintln!("grid bench: note: {}", rjs_cmd::chain(e.as_ref()));
    }
}

/// The binaries must be there, and (unless `allow_stale`) newer than every source file their
/// dep-info (`<bin>.d`) lists.
fn check_binaries(bin_dir: &Path, allow_stale: bool) -> Result<()> {
    const BUILD: &str = "cargo build --release --workspace --bins";
    for name in [grid::WEBSERVER_BIN, grid::LOOKUP_BIN, grid::COMPUTE_BIN] {
        let bin = bin_dir.join(name);
        let built = std::fs::metadata(&bin)
            .and_then(|m| m.modified())
            .with_context(|| {
                format!(
                    "{} is missing: this benchmark runs the release binaries; build them first \
                     ({BUILD})",
                    bin.display()
                )
            })?;
        let dep_info = bin_dir.join(format!("{name}.d"));
        let Ok(text) = std::fs::read_to_string(&dep_info) else {
            println!(
                "note: no {} to check {name} against its sources",
                dep_info.display()
            );
            continue;
        };
        let mut newer = Vec::new();
        for src in dep_files(&text) {
            if let Ok(m) = std::fs::metadata(&src).and_then(|m| m.modified())
                && m > built
            {
                newer.push(src);
            }
        }
        if !newer.is_empty() {
            let msg = format!(
                "{} is older than {} of its sources (e.g. {}): rebuild ({BUILD})",
                bin.display(),
                newer.len(),
                newer[0].display()
            );
            if allow_stale {
                println!("WARNING: {msg}; measuring it anyway (--allow-stale)");
            } else {
                bail!("{msg}, or pass --allow-stale to measure the old binaries");
            }
        }
    }
    Ok(())
}

/// The prerequisites in a Makefile-style dep-info file (`target: a b\ c …`).
fn dep_files(text: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((_, deps)) = line.split_once(": ") else {
            continue;
        };
        let mut cur = String::new();
        let mut chars = deps.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                }
                ' ' => {
                    if !cur.is_empty() {
                        out.push(PathBuf::from(std::mem::take(&mut cur)));
                    }
                }
                c => cur.push(c),
            }
        }
        if !cur.is_empty() {
            out.push(PathBuf::from(cur));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The lookup's status socket, asked directly (no `rjs-lookup` process per poll).

fn ask<T: DeserializeOwned>(grid: &LocalGrid, req: &StatusRequest) -> Result<T> {
    let path = grid
        .status_socket()
        .context("the lookup server is not running")?;
    let mut conn =
        UnixStream::connect(path).with_context(|| format!("connecting to {}", path.display()))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    conn.write_all(&line)?;
    let mut buf = Vec::new();
    conn.take(rjs_wire::status::MAX_RESPONSE as u64)
        .read_to_end(&mut buf)?;
    serde_json::from_slice(&buf).with_context(|| {
        format!(
            "parsing the status socket's answer {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(300)])
        )
    })
}

fn panel(grid: &LocalGrid) -> Result<NodesResponse> {
    ask(grid, &StatusRequest::Nodes)
}

fn why(grid: &LocalGrid, job: i64) -> Result<WhyResponse> {
    ask(grid, &StatusRequest::Why { job })
}

fn lookup_counters(grid: &LocalGrid) -> Result<StatusResponse> {
    ask(grid, &StatusRequest::Status)
}

/// Polls `probe` every `every` until it returns `Some`, for at most `timeout`.
fn poll<T>(
    what: &str,
    every: Duration,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe()? {
            return Ok(v);
        }
        signals::check().with_context(|| format!("waiting for {what}"))?;
        if Instant::now() >= deadline {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(every);
    }
}

/// Polls on a fixed cadence: sleeps until `next` + `every` (and moves `next` there); when a
/// poll took longer than that, goes on at once and counts the cadence from now.
fn pace(next: &mut Instant, every: Duration) {
    *next += every;
    let now = Instant::now();
    if *next > now {
        std::thread::sleep(*next - now);
    } else {
        *next = now;
    }
}

// ---------------------------------------------------------------------------------------------
// CPU time from /proc.

/// One process of `/proc/<pid>/stat`: parent, own CPU ticks (utime + stime), ticks of its
/// children it waited for (cutime + cstime).
#[derive(Debug, Clone, Copy)]
struct Stat {
    /// `R`, `S`, `Z` (exited, not yet reaped), …
    state: char,
    ppid: i32,
    own: u64,
    reaped: u64,
}

fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): field n is f[n - 3].
    let n = |i: usize| f.get(i - 3).and_then(|s| s.parse::<u64>().ok());
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        own: n(14)? + n(15)?,
        reaped: n(16)? + n(17)?,
    })
}

/// CPU ticks of one grid process: its own, and its descendants' (live ones and those it
/// waited for: a node's workers).
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    own: u64,
    children: u64,
}

/// CPU of the grid's processes, of this process and of the whole machine at one moment.
#[derive(Debug, Clone, Default)]
struct CpuSnapshot {
    procs: BTreeMap<String, Cpu>,
    bench: u64,
    machine_busy: u64,
}

fn all_stats() -> Vec<(i32, Stat)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect()
}

fn machine_busy_ticks() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let total: u64 = v.iter().take(8).sum();
    total.saturating_sub(v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0))
}

/// The descendants of `pid` among `stats` (children first, then theirs).
fn descendants_in(stats: &[(i32, Stat)], pid: i32) -> Vec<(i32, Stat)> {
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (p, st) in stats {
            if st.ppid == parent {
                out.push((*p, *st));
                frontier.push(*p);
            }
        }
    }
    out
}

/// The live descendants of `pid`.
fn descendants(pid: i32) -> Vec<i32> {
    descendants_in(&all_stats(), pid)
        .into_iter()
        .map(|(p, _)| p)
        .collect()
}

/// CPU ticks (own and reaped) of all of `pid`'s descendants among `stats`.
fn descendants_ticks(stats: &[(i32, Stat)], pid: i32) -> u64 {
    descendants_in(stats, pid)
        .iter()
        .map(|(_, st)| st.own + st.reaped)
        .sum()
}

/// CPU ticks of this process and all its descendants (live, and those waited for).
fn tree_ticks() -> u64 {
    let stats = all_stats();
    let me = std::process::id() as i32;
    stat(me).map_or(0, |s| s.own + s.reaped) + descendants_ticks(&stats, me)
}

/// The machine's load from processes other than this benchmark and its grids.
struct Load {
    at: Instant,
    machine: u64,
    ours: u64,
}

impl Load {
    fn start() -> Load {
        Load {
            at: Instant::now(),
            machine: machine_busy_ticks(),
            ours: tree_ticks(),
        }
    }

    /// CPU seconds used by other processes since [`Load::start`], and CPU seconds available.
    fn other(&self) -> (f64, f64) {
        let machine = machine_busy_ticks().saturating_sub(self.machine);
        let ours = tree_ticks().saturating_sub(self.ours);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (
            machine.saturating_sub(ours) as f64 / rjs_harness::procstat::ticks_per_second(),
            self.at.elapsed().as_secs_f64() * cores as f64,
        )
    }
}

fn cpu_snapshot(grid: &LocalGrid) -> CpuSnapshot {
    let stats = all_stats();
    let of = |pid: i32| -> Cpu {
        let Some(s) = stats.iter().find(|(p, _)| *p == pid).map(|(_, s)| *s) else {
            return Cpu::default();
        };
        Cpu {
            own: s.own,
            children: s.reaped + descendants_ticks(&stats, pid),
        }
    };
    let mut procs = BTreeMap::new();
    if let Some(p) = grid.webserver_pid() {
        procs.insert("web server".to_owned(), of(p));
    }
    if let Some(p) = grid.lookup_pid() {
        procs.insert("lookup".to_owned(), of(p));
    }
    for i in 0..grid.node_count() {
        if let (Ok(Some(p)), Ok(id)) = (grid.node_pid(i), grid.node_id(i)) {
            procs.insert(id.to_owned(), of(p));
        }
    }
    let me = std::process::id() as i32;
    CpuSnapshot {
        procs,
        bench: stat(me).map(|s| s.own).unwrap_or(0),
        machine_busy: machine_busy_ticks(),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Throughput.

fn throughput(ctx: &Ctx, args: &Args) -> Result<Vec<Row>> {
    let n = args.tasks;
    let slots = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(2);
    let job = ctx.job_folder(&ctx.hello, &format!("hello-{n}"), |m| {
        m.insert("tasks".into(), n.into());
    })?;
    let (grid, up_in) =
        ctx.start(ctx.options(ctx.fresh("throughput"), 2, slots, INTERVAL, &[], &[]))?;
    println!(
        "grid up in {} ms: 2 nodes x {slots} slots, announcements every {INTERVAL:?}",
        up_in.as_millis()
    );
    let result = throughput_run(&grid, &job, n, args.timeout);
    stop(grid);
    result
}

fn throughput_run(grid: &LocalGrid, job: &Path, n: u32, timeout: Duration) -> Result<Vec<Row>> {
    let bundle = grid.pack(job)?;
    let bytes = std::fs::read(&bundle).with_context(|| format!("reading {}", bundle.display()))?;
    let before = cpu_snapshot(grid);
    let t0 = Instant::now();
    let up = grid.api().upload(bytes, false)?;
    let upload = t0.elapsed();
    ensure!(up.tasks == n, "uploaded {} tasks, not {n}", up.tasks);
    println!(
        "uploaded {n} tasks in {} ms (bundle {})",
        upload.as_millis(),
        &up.bundle_id[..12]
    );
    let run = poll_until_all_final(grid, &up.bundle_id, n, t0, timeout)?;
    let after = cpu_snapshot(grid);
    ensure!(
        run.failed.is_empty(),
        "some tasks failed, e.g. {}",
        run.failed.join("; ")
    );
    let rate = f64::from(n) / run.elapsed.as_secs_f64();
    println!(
        "all {n} done in {:.2} s (±{} ms: the last poll's start-to-previous-poll span): {rate:.0} \
         tasks/s",
        run.elapsed.as_secs_f64(),
        run.resolution.as_millis()
    );
    let cpu = CpuUse::between(&before, &after);
    cpu.print(run.elapsed.as_secs_f64());
    let polls = PollCost::measure(grid, &up.bundle_id, &run.poll_costs)?;
    println!(
        "\nsummary polls ({} tasks): {} during the run, median {} ms, max {} ms; quiet: {} ms \
         each, {:.0} ms of web server CPU and {:.0} ms of bench CPU each",
        n,
        run.poll_costs.len(),
        polls.median.as_millis(),
        polls.max.as_millis(),
        polls.quiet.as_millis(),
        polls.web_server_cpu * 1e3,
        polls.bench_cpu * 1e3
    );
    print_stalls(&run.progress);
    if let Ok(c) = lookup_counters(grid) {
        println!(
            "lookup: leased {}, answers {}, refusals {}, lost {}, released {}",
            c.leased_total, c.answers_total, c.refusals_total, c.lost_total, c.released_total
        );
    }
    Ok(throughput_rows(n, rate, upload, &run, &polls, &cpu))
}

/// What polling the job list of a throughput run saw.
struct PolledRun {
    /// From the upload to the poll that saw every task final.
    elapsed: Duration,
    /// The span between the start of the previous poll and the end of the last one.
    resolution: Duration,
    /// Up to three failed tasks, described.
    failed: Vec<String>,
    /// How long each poll took.
    poll_costs: Vec<Duration>,
    /// Tasks done at the end of each poll, since the upload.
    progress: Vec<(Duration, usize)>,
}

/// Polls the summary of `bundle`'s newest submission (one row, whatever `n`) every
/// [`THROUGHPUT_POLL`] from `t0` (the upload) until all `n` tasks are done or failed,
/// printing progress every 2 s; the failed jobs' reasons are read once at the end.
fn poll_until_all_final(
    grid: &LocalGrid,
    bundle: &str,
    n: u32,
    t0: Instant,
    timeout: Duration,
) -> Result<PolledRun> {
    let mut poll_costs: Vec<Duration> = Vec::new();
    let mut progress: Vec<(Duration, usize)> = Vec::new();
    let mut prev_start = t0;
    let mut last_print = Duration::ZERO;
    let mut next = Instant::now();
    loop {
        let start = Instant::now();
        let summary = newest_submission(grid, bundle)?;
        let end = Instant::now();
        poll_costs.push(end - start);
        let done = summary.states.done as usize;
        let failed_n = summary.states.failed as usize;
        let at = end - t0;
        progress.push((at, done));
        if at - last_print >= Duration::from_secs(2) {
            last_print = at;
            println!(
                "  {:6.1} s: {done:>6} done, {failed_n:>5} failed (poll {} ms)",
                at.as_secs_f64(),
                (end - start).as_millis()
            );
        }
        if summary.tasks >= n && done + failed_n >= n as usize {
            let failed: Vec<String> = if failed_n == 0 {
                Vec::new()
            } else {
                grid.api().jobs(Some(bundle))?.jobs
            }
            .iter()
            .filter(|j| j.state == JobState::Failed)
            .take(3)
            .map(|j| {
                format!(
                    "task {}: {}",
                    j.task,
                    j.reason.as_deref().unwrap_or("no reason")
                )
            })
            .collect();
            return Ok(PolledRun {
                elapsed: at,
                resolution: end - prev_start,
                failed,
                poll_costs,
                progress,
            });
        }
        signals::check().context("waiting for the tasks")?;
        if at > timeout {
            bail!(
                "only {done} of {n} tasks done after {timeout:?}; logs in {}",
                grid.dir().join("logs").display()
            );
        }
        prev_start = start;
        pace(&mut next, THROUGHPUT_POLL);
    }
}

/// The summary of the newest submission of `bundle`.
fn newest_submission(grid: &LocalGrid, bundle: &str) -> Result<SubmissionSummary> {
    grid.api()
        .submissions(Some(bundle))?
        .submissions
        .into_iter()
        .next()
        .with_context(|| format!("no submission of bundle {bundle}"))
}

/// Where the CPU time of a run went: ticks by line (`web server`, `node-1 (supervisor)`,
/// `node-1 workers`, …, `bench (upload + polls)`, `other processes`, `machine total`).
struct CpuUse {
    lines: Vec<(String, u64)>,
    /// Busy ticks of the whole machine.
    machine: u64,
}

impl CpuUse {
    fn between(before: &CpuSnapshot, after: &CpuSnapshot) -> CpuUse {
        let mut ours = 0u64;
        let mut lines = Vec::new();
        for (name, b) in &before.procs {
            let Some(a) = after.procs.get(name) else {
                continue;
            };
            let own = a.own.saturating_sub(b.own);
            let kids = a.children.saturating_sub(b.children);
            ours += own + kids;
            if name.starts_with("node-") {
                lines.push((format!("{name} (supervisor)"), own));
                lines.push((format!("{name} workers"), kids));
            } else {
                lines.push((name.clone(), own + kids));
            }
        }
        let bench = after.bench.saturating_sub(before.bench);
        lines.push(("bench (upload + polls)".to_owned(), bench));
        ours += bench;
        let machine = after.machine_busy.saturating_sub(before.machine_busy);
        lines.push(("other processes".to_owned(), machine.saturating_sub(ours)));
        lines.push(("machine total".to_owned(), machine));
        CpuUse { lines, machine }
    }

    /// CPU seconds of the lines whose name passes `f`.
    fn sum(&self, f: impl Fn(&str) -> bool) -> f64 {
        self.lines
            .iter()
            .filter(|(name, _)| f(name))
            .map(|(_, t)| secs(*t))
            .fold(0.0, |a, b| a + b)
    }

    /// Prints each line's CPU seconds and share of the `wall` seconds.
    fn print(&self, wall: f64) {
        println!(
            "\nCPU seconds from the upload to the last poll ({wall:.2} s wall, {} cores):",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!("  {:<22} {:>8} {:>8}", "process", "CPU s", "% wall");
        for (name, t) in &self.lines {
            println!(
                "  {name:<22} {:>8.2} {:>7.0}%",
                secs(*t),
                100.0 * secs(*t) / wall
            );
        }
    }
}

/// CPU seconds of `ticks` clock ticks.
fn secs(ticks: u64) -> f64 {
    ticks as f64 / rjs_harness::procstat::ticks_per_second()
}

/// What one poll of the job list costs: during the run, and quiet (a few more after it).
struct PollCost {
    median: Duration,
    max: Duration,
    quiet: Duration,
    /// Web server CPU seconds of one quiet poll.
    web_server_cpu: f64,
    /// This process's CPU seconds of one quiet poll.
    bench_cpu: f64,
}

impl PollCost {
    fn measure(grid: &LocalGrid, bundle: &str, during: &[Duration]) -> Result<PollCost> {
        let ws_before = cpu_snapshot(grid);
        let extra = 10;
        let t = Instant::now();
        for _ in 0..extra {
            newest_submission(grid, bundle)?;
        }
        let quiet = t.elapsed() / extra;
        let ws_after = cpu_snapshot(grid);
        let ws_cpu = |s: &CpuSnapshot| s.procs.get("web server").map_or(0, |c| c.own + c.children);
        let mut sorted = during.to_vec();
        sorted.sort();
        Ok(PollCost {
            median: sorted[sorted.len() / 2],
            max: sorted[sorted.len() - 1],
            quiet,
            web_server_cpu: secs(ws_cpu(&ws_after).saturating_sub(ws_cpu(&ws_before)))
                / f64::from(extra),
            bench_cpu: secs(ws_after.bench.saturating_sub(ws_before.bench)) / f64::from(extra),
        })
    }
}

/// Stalls: the longest span without progress between polls, after the first answer.
fn print_stalls(progress: &[(Duration, usize)]) {
    let first = progress.iter().find(|(_, d)| *d > 0).map(|(t, _)| *t);
    let mut stall = (Duration::ZERO, Duration::ZERO);
    let mut run_start: Option<(Duration, usize)> = None;
    for &(t, d) in progress {
        match run_start {
            Some((t0, d0)) if d0 == d => {
                if t - t0 > stall.1 {
                    stall = (t0, t - t0);
                }
            }
            _ => run_start = Some((t, d)),
        }
    }
    if let Some(f) = first {
        let stalls = if stall.1.is_zero() {
            "every poll saw new answers".to_owned()
        } else {
            format!(
                "longest span without a new answer: {} ms (from {:.1} s)",
                stall.1.as_millis(),
                stall.0.as_secs_f64()
            )
        };
        println!("first answer stored by {} ms; {stalls}", f.as_millis());
    }
}

/// The table's rows of a throughput run.
fn throughput_rows(
    n: u32,
    rate: f64,
    upload: Duration,
    run: &PolledRun,
    polls: &PollCost,
    cpu: &CpuUse,
) -> Vec<Row> {
    let wall = run.elapsed.as_secs_f64();
    let mut rows = vec![
        Row::target(
            format!("throughput: {n} hello tasks, 2 nodes x 2 slots, upload → all stored"),
            format!(
                "{rate:.0} tasks/s ({:.2} s ±{} ms)",
                run.elapsed.as_secs_f64(),
                run.resolution.as_millis()
            ),
            format!(">= {TARGET_TASKS_PER_S:.0} tasks/s"),
            rate >= TARGET_TASKS_PER_S,
        ),
        Row::info(
            "  upload of the bundle (jobs created)",
            format!("{} ms", upload.as_millis()),
        ),
        Row::info(
            format!("  job list poll ({n} rows), every {THROUGHPUT_POLL:?}"),
            format!(
                "median {} ms, {:.0} ms web server CPU",
                polls.median.as_millis(),
                polls.web_server_cpu * 1e3
            ),
        ),
    ];
    // Compact for the table: the grid's processes by kind, then the rest of the machine.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    rows.push(Row::info(
        format!(
            "  CPU s ({:.1} used of {:.1} available)",
            secs(cpu.machine),
            wall * cores as f64
        ),
        format!(
            "web server {:.1}, lookup {:.1}, node supervisors {:.1}, workers {:.1}, bench {:.1}; \
             other processes {:.1}",
            cpu.sum(|n| n == "web server"),
            cpu.sum(|n| n == "lookup"),
            cpu.sum(|n| n.ends_with("(supervisor)")),
            cpu.sum(|n| n.ends_with(" workers")),
            cpu.sum(|n| n.starts_with("bench")),
            cpu.sum(|n| n == "other processes"),
        ),
    ));
    let per_task = |v: f64| v * 1e3 / f64::from(n);
    rows.push(Row::info(
        "  CPU ms per task",
        format!(
            "node supervisors {:.2}, workers {:.2}, web server {:.2}, lookup {:.2}",
            per_task(cpu.sum(|n| n.ends_with("(supervisor)"))),
            per_task(cpu.sum(|n| n.ends_with(" workers"))),
            per_task(cpu.sum(|n| n == "web server")),
            per_task(cpu.sum(|n| n == "lookup")),
        ),
    ));
    rows
}

// ---------------------------------------------------------------------------------------------
// 2. Speed-up.

fn speedup(ctx: &Ctx) -> Result<Vec<Row>> {
    let mut medians = Vec::new();
    let mut spreads = Vec::new();
    for nodes in [1usize, 2] {
        let (grid, up_in) = ctx.start(ctx.options(
            ctx.fresh(&format!("speedup-{nodes}")),
            nodes,
            1,
            INTERVAL,
            &[],
            &[],
        ))?;
        println!(
            "grid up in {} ms: {nodes} single-slot node(s)",
            up_in.as_millis()
        );
        let result = speedup_runs(ctx, &grid);
        stop(grid);
        let mut times = result?;
        let shown: Vec<String> = times
            .iter()
            .map(|t| format!("{} ms", t.as_millis()))
            .collect();
        times.sort();
        medians.push(times[times.len() / 2]);
        spreads.push(shown.join(", "));
    }
    let ratio = medians[0].as_secs_f64() / medians[1].as_secs_f64();
    println!(
        "1 node: {} ms, 2 nodes: {} ms (medians): {ratio:.2}x",
        medians[0].as_millis(),
        medians[1].as_millis()
    );
    Ok(vec![
        Row::target(
            "speed-up: 8 Mandelbrot tiles, 1 vs 2 single-slot nodes",
            format!("{ratio:.2}x"),
            format!(">= {TARGET_SPEEDUP}x"),
            ratio >= TARGET_SPEEDUP,
        ),
        Row::info(
            "  1 node, upload → 8 stored (median of 3)",
            format!("{} ms ({})", medians[0].as_millis(), spreads[0]),
        ),
        Row::info(
            "  2 nodes, upload → 8 stored (median of 3)",
            format!("{} ms ({})", medians[1].as_millis(), spreads[1]),
        ),
    ])
}

/// A warm-up run (the nodes fetch the bundle and compile the module), then 3 measured runs of
/// the same bundle submitted again.
fn speedup_runs(ctx: &Ctx, grid: &LocalGrid) -> Result<Vec<Duration>> {
    let bundle = grid.pack(&ctx.mandelbrot)?;
    let bytes = std::fs::read(&bundle).with_context(|| format!("reading {}", bundle.display()))?;
    let mut times = Vec::new();
    for run in 0..4 {
        let t0 = Instant::now();
        let up = grid.api().upload(bytes.clone(), run > 0)?;
        let ids: Vec<i64> = up.jobs.iter().map(|j| j.id).collect();
        let mut next = Instant::now();
        let (elapsed, jobs) = loop {
            let jobs: Vec<JobView> = grid
                .api()
                .jobs(Some(&up.bundle_id))?
                .jobs
                .into_iter()
                .filter(|j| ids.contains(&j.id))
                .collect();
            let at = t0.elapsed();
            if jobs.len() == ids.len() && jobs.iter().all(|j| j.state.is_final()) {
                break (at, jobs);
            }
            signals::check().context("waiting for the tiles")?;
            ensure!(
                at < Duration::from_secs(120),
                "the 8 tiles were not done within 120 s"
            );
            pace(&mut next, SPEEDUP_POLL);
        };
        if let Some(j) = jobs.iter().find(|j| j.state != JobState::Done) {
            bail!(
                "tile {} failed: {}",
                j.task,
                j.reason.as_deref().unwrap_or("no reason")
            );
        }
        let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
        for j in &jobs {
            *per_node
                .entry(j.node.as_deref().unwrap_or("?"))
                .or_default() += 1;
        }
        println!(
            "  {}: {} ms ({})",
            if run == 0 {
                "warm-up".to_owned()
            } else {
                format!("run {run}")
            },
            elapsed.as_millis(),
            per_node
                .iter()
                .map(|(n, c)| format!("{n} {c} tiles"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if run > 0 {
            times.push(elapsed);
        }
    }
    Ok(times)
}

// ---------------------------------------------------------------------------------------------
// 3. Time to first work of a new node.

struct FirstWork {
    /// Spawn to ready line.
    ready: Duration,
    /// Spawn to the lookup's panel listing it.
    listed: Duration,
    /// Spawn to its first job (panel: busy or answered).
    first: Duration,
}

fn first_work(ctx: &Ctx) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (interval, runs) in [(INTERVAL, 5), (Duration::from_secs(2), 3)] {
        let mut samples = Vec::new();
        for run in 1..=runs {
            let s = first_work_run(ctx, interval)?;
            println!(
                "  interval {interval:?}, run {run}: spawn → ready {} ms, → listed by the lookup \
                 {} ms, → first job {} ms",
                s.ready.as_millis(),
                s.listed.as_millis(),
                s.first.as_millis()
            );
            samples.push(s);
        }
        let med = |f: fn(&FirstWork) -> Duration| {
            let mut v: Vec<Duration> = samples.iter().map(f).collect();
            v.sort();
            v[v.len() / 2]
        };
        let (ready, listed, first) = (med(|s| s.ready), med(|s| s.listed), med(|s| s.first));
        let max = samples.iter().map(|s| s.first).max().unwrap_or_default();
        let figure = format!(
            "{} ms (max {} ms; ready {} ms, listed {} ms)",
            first.as_millis(),
            max.as_millis(),
            ready.as_millis(),
            listed.as_millis()
        );
        let what =
            format!("new node: spawn → first job, announce every {interval:?} (median of {runs})");
        if interval == INTERVAL {
            rows.push(Row::target(
                what,
                figure,
                format!("< {} ms", TARGET_FIRST_WORK.as_millis()),
                first < TARGET_FIRST_WORK,
            ));
        } else {
            rows.push(Row::info(format!("  {what}"), figure));
        }
    }
    Ok(rows)
}

/// A grid of node-1 (started, busy on a long task, more queued) and node-2 (enrolled, not
/// started); starts node-2 and times its first job.
fn first_work_run(ctx: &Ctx, interval: Duration) -> Result<FirstWork> {
    let job = ctx.long_job(8)?;
    let (mut grid, _) =
        ctx.start(ctx.options(ctx.fresh("first-work"), 2, 1, interval, &[], &[1]))?;
    let result = (|| {
        let bundle = grid.pack(&job)?;
        grid.upload(&bundle)?;
        // node-1 busy, and a job waiting at the lookup.
        poll(
            "node-1 busy with a job queued behind it",
            STATUS_POLL,
            Duration::from_secs(30),
            || {
                let p = panel(&grid)?;
                let c = lookup_counters(&grid)?;
                Ok(
                    (p.nodes.iter().any(|r| r.node_id == "node-1" && r.busy > 0) && c.queued > 0)
                        .then_some(()),
                )
            },
        )?;
        let t0 = Instant::now();
        grid.start_node(1)?;
        let ready = t0.elapsed();
        let mut listed = None;
        let first = poll(
            "node-2's first job",
            STATUS_POLL,
            Duration::from_secs(30),
            || {
                let p = panel(&grid)?;
                let at = t0.elapsed();
                let Some(r) = p.nodes.iter().find(|r| r.node_id == "node-2") else {
                    return Ok(None);
                };
                listed.get_or_insert(at);
                Ok((r.busy > 0 || r.answers.total() > 0 || r.lost > 0).then_some(at))
            },
        )?;
        Ok(FirstWork {
            ready,
            listed: listed.unwrap_or(first),
            first,
        })
    })();
    stop(grid);
    result
}

// ---------------------------------------------------------------------------------------------
// 4. Re-dispatch after a node death.

fn redispatch(ctx: &Ctx) -> Result<Vec<Row>> {
    let ttl = INTERVAL * 3;
    let target = ttl + Duration::from_secs(1);
    let mut rows = Vec::new();
    for (signal, name) in [(libc::SIGKILL, "SIGKILL"), (libc::SIGSTOP, "SIGSTOP")] {
        let mut times = Vec::new();
        for run in 1..=3 {
            let (t, note) = redispatch_run(ctx, signal)?;
            println!(
                "  {name}, run {run}: running on the other node after {} ms{note}",
                t.as_millis()
            );
            times.push(t);
        }
        times.sort();
        let median = times[times.len() / 2];
        let max = times[times.len() - 1];
        rows.push(Row::target(
            format!(
                "re-dispatch: {name} of the node running a long task → running on the other \
                 (median of 3)"
            ),
            format!("{} ms (max {} ms)", median.as_millis(), max.as_millis()),
            format!(
                "<= TTL + 1 s = {} ms (TTL {} ms)",
                target.as_millis(),
                ttl.as_millis()
            ),
            max <= target,
        ));
    }
    Ok(rows)
}

/// Asks the lookup `why` of job `id` every [`STATUS_POLL`], for up to 30 s, until it is on a
/// node and `placed(state, node)` holds; returns the node and when that was seen.
fn wait_placed(
    grid: &LocalGrid,
    id: i64,
    what: &str,
    placed: impl Fn(JobWhere, &str) -> bool,
) -> Result<(String, Instant)> {
    poll(what, STATUS_POLL, Duration::from_secs(30), || {
        let w = why(grid, id)?;
        Ok(w.node
            .filter(|node| placed(w.state, node))
            .map(|node| (node, Instant::now())))
    })
}

/// Two single-slot nodes (node-1 faster, so it gets the job); one long task; `signal` to the
/// node running it; time until the lookup says it runs on the other node.
fn redispatch_run(ctx: &Ctx, signal: i32) -> Result<(Duration, String)> {
    let job = ctx.long_job(1)?;
    let (mut grid, _) = ctx.start(ctx.options(
        ctx.fresh("redispatch"),
        2,
        1,
        INTERVAL,
        &[2000.0, 1000.0],
        &[],
    ))?;
    let result = (|| {
        let bundle = grid.pack(&job)?;
        let up = grid.upload(&bundle)?;
        let id = up.jobs[0].id;
        let (victim, _) = wait_placed(&grid, id, "the long task running", |state, _| {
            state == JobWhere::Running
        })?;
        let a = grid
            .node_index(&victim)
            .with_context(|| format!("{victim} is not a node of this grid"))?;
        // Let it run a little, as a job does when its node dies.
        std::thread::sleep(Duration::from_millis(300));
        let workers = match grid.node_pid(a)? {
            Some(pid) => descendants(pid),
            None => Vec::new(),
        };
        let t0 = Instant::now();
        grid.kill_node(a, signal)?;
        let (other, seen) = wait_placed(
            &grid,
            id,
            "the task running on the other node",
            |state, node| matches!(state, JobWhere::Running | JobWhere::Answered) && node != victim,
        )?;
        let elapsed = seen - t0;
        let mut note = format!(" ({victim} → {other})");
        if signal == libc::SIGKILL {
            // Do the dead node's workers die with it?
            let check = t0 + Duration::from_secs(1);
            std::thread::sleep(check.saturating_duration_since(Instant::now()));
            let alive: Vec<String> = workers
                .iter()
                .filter(|p| stat(**p).is_some_and(|s| s.state != 'Z'))
                .map(|p| p.to_string())
                .collect();
            if !alive.is_empty() {
                note.push_str(&format!(
                    "; NOTE: its worker process(es) {} still run 1 s after it died (orphaned)",
                    alive.join(", ")
                ));
            }
        }
        if signal == libc::SIGSTOP {
            // Wake the stopped node and see who the web server credits with the answer.
            grid.kill_node(a, libc::SIGCONT)?;
            let done = poll(
                "the long task's answer",
                Duration::from_millis(50),
                Duration::from_secs(60),
                || {
                    let jobs = grid.api().jobs(Some(&up.bundle_id))?.jobs;
                    Ok(jobs.into_iter().find(|j| j.id == id && j.state.is_final()))
                },
            )?;
            note.push_str(&format!(
                "; after SIGCONT the web server has it {} by {}",
                done.state.as_str(),
                done.node.as_deref().unwrap_or("?")
            ));
        }
        Ok((elapsed, note))
    })();
    stop(grid);
    result
}
