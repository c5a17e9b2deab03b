//! `rjs demo`: the whole grid on this machine, computing the Mandelbrot sample's 8 tiles and
//! stitching them into one image. See `docs/demo.md`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use indicatif::{ProgressBar, ProgressStyle};
use rjs_signer::answer::{AnswerLimits, Ending, verify_answer};
use rjs_wire::api::{JobState, JobView, UploadResponse};

use crate::grid::{self, GridOptions, LocalGrid, NodesResponse};
use rjs_harness::{netns, paths, signals};

/// Exit status when no private network namespace can be made (and `--lan` was not given).
pub const EXIT_NO_NETNS: u8 = 2;
/// Exit status after Ctrl-C / SIGTERM (128 + SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Lay the grid out in DIR (new or empty; kept afterwards) [default: a new temporary
    /// folder, removed at the end unless --keep].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Where to write the stitched image.
    #[arg(long, short, value_name = "PNG", default_value = "mandelbrot.png")]
    pub out: PathBuf,
    /// Run on this machine's own network instead of a private network namespace (the mDNS
    /// daemons then join multicast groups on every interface of this machine).
    #[arg(long)]
    pub lan: bool,
    /// Keep the grid's folder (logs, data directories, answers) at the end.
    #[arg(long)]
    pub keep: bool,
    /// Compute nodes to start.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub nodes: u16,
    /// Slots (concurrent jobs) per node.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub slots: u32,
    /// Give up if the tasks are not all done after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub timeout: u64,
    /// The job folder to run [default: <target>/rjs-samples/mandelbrot, built with
    /// samples/build.sh if missing]. Its tasks must each write out/tile-<index>.png.
    #[arg(long, value_name = "DIR")]
    pub job: Option<PathBuf>,
    /// Where rjs-webserver, rjs-lookup and rjs-compute are [default: next to rjs].
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
}

/// One verified tile.
#[derive(Debug, Clone)]
struct TileRow {
    task: u32,
    node: String,
    wall_ms: u64,
    path: PathBuf,
}

/// Runs the demo; returns the process exit status.
pub fn run(args: &DemoArgs) -> u8 {
    // Everything that may need the network (building the samples fetches crates) happens
    // before the namespace; nothing before it may start a thread.
    let job = match job_folder(args) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("rjs demo: error: {}", rjs_cmd::chain(e.as_ref()));
            return 1;
        }
    };
    // With --keep the dashboard stays open: a port on this machine's own network (bound
    // before the namespace) leads to the web server inside it.
    let host_port = if args.keep && !args.lan {
        match rjs_harness::forward::HostPort::bind() {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("rjs demo: error: {}", rjs_cmd::chain(e.as_ref()));
                return 1;
            }
        }
    } else {
        None
    };
    if args.lan {
        println!(
            "network: --lan: this machine's own network stack (no private namespace); nodes \
             announce on lo, but the mDNS daemons join multicast groups on every interface"
        );
    } else {
        match netns::enter_private() {
            Ok(kind) => println!(
                "network: {kind} with only lo (multicast routed to it): nothing leaves this \
                 machine"
            ),
            Err(e) => {
                eprintln!(
                    "rjs demo: cannot run the grid in a private network namespace: {}\n\
                     The grid's mDNS must not reach this machine's networks, so the demo \
                     stops here. Run it as root or where unprivileged user namespaces are \
                     allowed, or pass --lan to run on this machine's own network.",
                    rjs_cmd::chain(e.as_ref())
                );
                return EXIT_NO_NETNS;
            }
        }
    }
    if let Err(e) = signals::install() {
        eprintln!("rjs demo: error: installing the Ctrl-C handler: {e}");
        return 1;
    }

    // The grid's folder.
    let (dir, temp) = match &args.dir {
        Some(d) => (d.clone(), None),
        None => match tempfile::Builder::new().prefix("rjs-demo-").tempdir() {
            Ok(t) => (t.path().to_owned(), Some(t)),
            Err(e) => {
                eprintln!("rjs demo: error: creating a temporary folder: {e}");
                return 1;
            }
        },
    };

    let started = Instant::now();
    let mut grid: Option<LocalGrid> = None;
    let mut outcome = demo(args, &job, &dir, &mut grid, started);
    if let (Ok(_), Some(g)) = (&outcome, grid.as_ref())
        && let Err(e) = dashboard(g, args.keep, host_port)
    {
        outcome = Err(e);
    }
    let stopped = Instant::now();
    let stop_result = grid.as_mut().map(LocalGrid::stop);
    drop(grid);
    let stop_ms = stopped.elapsed().as_millis();

    let mut code = match &outcome {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("rjs demo: error: {}", rjs_cmd::chain(e.as_ref()));
            if signals::received().is_some() {
                EXIT_INTERRUPTED
            } else {
                1
            }
        }
    };
    match stop_result {
        None => {}
        Some(Ok(())) => println!("grid stopped in {stop_ms} ms"),
        Some(Err(e)) => {
            eprintln!("rjs demo: {}", rjs_cmd::chain(e.as_ref()));
            if code == 0 {
                code = 1;
            }
        }
    }
    match temp {
        Some(t) if args.keep || code != 0 => {
            let kept = t.keep();
            println!(
                "the grid's folder is kept: {} (logs in logs/)",
                kept.display()
            );
        }
        Some(t) => {
            if let Err(e) = t.close() {
                eprintln!("rjs demo: could not remove {}: {e}", dir.display());
            }
        }
        None => println!("the grid's folder: {} (logs in logs/)", dir.display()),
    }
    code
}

/// Starts the grid (into `slot`, so that the caller stops it whatever happens), runs the job,
/// verifies and stitches. `Ok(false)`: it ran, but not every task gave a verified exit-0
/// tile.
fn demo(
    args: &DemoArgs,
    job: &Path,
    dir: &Path,
    slot: &mut Option<LocalGrid>,
    started: Instant,
) -> Result<bool> {
    println!("starting the grid in {}", dir.display());
    let grid = slot.insert(LocalGrid::start(grid_options(args, dir))?);
    let grid_ms = started.elapsed().as_millis();
    println!("grid up in {grid_ms} ms");

    let up = pack_and_upload(grid, job)?;
    let submitted = Instant::now();

    // Wait for every task, showing progress.
    let jobs = wait_all(
        grid,
        &up.bundle_id,
        up.tasks,
        Duration::from_secs(args.timeout),
    )?;
    let compute_ms = submitted.elapsed().as_millis();
    println!("all {} tasks finished in {compute_ms} ms", up.tasks);

    // Fetch and verify the answers, extract the tiles.
    let fetch_start = Instant::now();
    let (mut tiles, all_ok) = fetch_tiles(grid, &up.bundle_id, &jobs, dir)?;
    let fetch_ms = fetch_start.elapsed().as_millis();
    println!(
        "{} of {} answers fetched and verified (node signature, bundle, task, node key) in \
         {fetch_ms} ms",
        tiles.len(),
        up.tasks
    );

    // The panel, the table, the image.
    let panel = grid.nodes_panel()?;
    println!();
    print_panel(&panel);
    println!();
    print_tiles(&tiles);
    println!();
    if !all_ok || tiles.len() != up.tasks as usize {
        println!("not every task gave a verified tile: no image written");
        return Ok(false);
    }
    tiles.sort_by_key(|t| t.task);
    stitch_and_write(&tiles, &args.out)?;
    println!(
        "timings: grid start {grid_ms} ms, compute {compute_ms} ms, fetch + verify {fetch_ms} \
         ms, total {} ms",
        started.elapsed().as_millis()
    );
    Ok(true)
}

/// Prints a dashboard login link; with `keep`, keeps the grid up (reachable from this
/// machine through `host_port` when the grid is in a private namespace) until Ctrl-C, printing
/// a new link (they are single-use and last a minute) on every Enter.
fn dashboard(
    grid: &LocalGrid,
    keep: bool,
    host_port: Option<rjs_harness::forward::HostPort>,
) -> Result<()> {
    let url = grid.webserver_url();
    let target: std::net::SocketAddr = url
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("the web server's address {url}"))?;
    let forwarder = match host_port {
        Some(p) => Some(p.forward_to(target)?),
        None => None,
    };
    let base = match &forwarder {
        Some(f) => format!("https://{}", f.addr()),
        None => url.trim_end_matches('/').to_owned(),
    };
    let link = || -> Result<String> {
        let login = grid
            .api()
            .dashboard_login()
            .context("asking for a dashboard login")?;
        Ok(format!("{base}{}", login.path))
    };
    if !keep {
        println!(
            "dashboard (while the grid runs; `rjs demo --keep` keeps it up): {}",
            link()?
        );
        return Ok(());
    }
    println!();
    println!("The dashboard stays up. Sign in (one use, within a minute):");
    println!("  {}", link()?);
    println!(
        "Your browser will warn about the certificate: it is signed by this grid's own CA,          {} (trust it or accept the warning).",
        grid.webserver_ca().display()
    );
    println!("Press Enter for a new link; Ctrl-C stops the grid.");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            line.clear();
            if tx.send(()).is_err() {
                break;
            }
        }
    });
    while signals::received().is_none() {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(()) => match link() {
                Ok(l) => println!("  {l}"),
                Err(e) => eprintln!("rjs demo: {}", rjs_cmd::chain(e.as_ref())),
            },
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            // No more input (stdin closed): wait for Ctrl-C alone.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(200))
            }
        }
    }
    println!("stopping the grid");
    Ok(())
}

/// The grid the arguments ask for, laid out in `dir`, telling each start-up step.
fn grid_options(args: &DemoArgs, dir: &Path) -> GridOptions {
    let mut opts = GridOptions::new(dir);
    opts.nodes = usize::from(args.nodes);
    opts.slots_per_node = args.slots;
    opts.bin_dir = args.bin_dir.clone();
    opts.require_private_netns = !args.lan;
    opts.on_step = Some(Arc::new(|s: &str| println!("  {s}")));
    opts
}

/// Packs the job folder with the grid's author key and uploads it.
fn pack_and_upload(grid: &LocalGrid, job: &Path) -> Result<UploadResponse> {
    let bundle = grid.pack(job)?;
    let up = grid.upload(&bundle)?;
    println!(
        "uploaded {} ({}): bundle {}, {} tasks, jobs {}",
        bundle
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        up.name,
        &up.bundle_id[..12],
        up.tasks,
        up.jobs
            .iter()
            .map(|j| j.id.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(up)
}

/// Fetches the answers of `jobs` into `dir/answers`, verifies each and extracts its tile into
/// `dir/tiles`. Returns the verified tiles, and whether every job gave one (each one that did
/// not is told on stdout).
fn fetch_tiles(
    grid: &LocalGrid,
    bundle: &str,
    jobs: &[JobView],
    dir: &Path,
) -> Result<(Vec<TileRow>, bool)> {
    let fetched = grid.fetch_answers(&dir.join("answers"))?;
    let tiles_dir = dir.join("tiles");
    std::fs::create_dir_all(&tiles_dir)
        .with_context(|| format!("creating {}", tiles_dir.display()))?;
    let mut tiles = Vec::new();
    let mut all_ok = true;
    for job in jobs {
        if job.state != JobState::Done {
            println!(
                "task {}: {} ({})",
                job.task,
                job.state.as_str(),
                job.reason.as_deref().unwrap_or("no reason given")
            );
            all_ok = false;
            continue;
        }
        let Some(answer) = fetched
            .iter()
            .find(|a| a.job.id == job.id)
            .map(|a| a.path.clone())
        else {
            println!("task {}: the answer was not fetched", job.task);
            all_ok = false;
            continue;
        };
        match check_answer(grid, bundle, job, &answer, &tiles_dir) {
            Ok(row) => tiles.push(row),
            Err(e) => {
                println!("task {}: {}", job.task, rjs_cmd::chain(e.as_ref()));
                all_ok = false;
            }
        }
    }
    Ok((tiles, all_ok))
}

/// Stitches the tiles (in task order) into one image and writes it to `out` as PNG.
fn stitch_and_write(tiles: &[TileRow], out: &Path) -> Result<()> {
    let stitch_start = Instant::now();
    let paths: Vec<PathBuf> = tiles.iter().map(|t| t.path.clone()).collect();
    let image = grid::stitch(&paths)?;
    let png = image.encode_png()?;
    write_out(out, &png)?;
    let shown = std::fs::canonicalize(out).unwrap_or_else(|_| out.to_owned());
    println!(
        "image: {} ({}x{}, {} tiles stitched in {} ms)",
        shown.display(),
        image.width,
        image.height,
        tiles.len(),
        stitch_start.elapsed().as_millis()
    );
    Ok(())
}

/// Polls the job list until every job of `bundle` is done or failed; shows a progress bar
/// and one line per finished task.
fn wait_all(grid: &LocalGrid, bundle: &str, tasks: u32, timeout: Duration) -> Result<Vec<JobView>> {
    let bar = ProgressBar::new(u64::from(tasks));
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] [{bar:32}] {pos}/{len} tasks  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let deadline = Instant::now() + timeout;
    let mut reported = std::collections::HashSet::new();
    // The job list once; then only what changed (the change feed), so that a poll costs the
    // web server the same however many tasks there are.
    let start = (|| -> Result<(u64, Vec<JobView>)> {
        let seq = grid
            .api()
            .changes(None)
            .context("reading the change feed")?
            .next;
        let jobs = grid
            .api()
            .jobs(Some(bundle))
            .context("reading the job list")?
            .jobs;
        Ok((seq, jobs))
    })();
    let (mut seq, mut jobs) = match start {
        Ok(s) => s,
        Err(e) => {
            bar.finish_and_clear();
            return Err(e);
        }
    };
    let result = 'poll: loop {
        let mut counts = [0usize; 4];
        for j in &jobs {
            counts[j.state as usize] += 1;
            if j.state.is_final() && reported.insert(j.id) {
                let outcome = match j.state {
                    JobState::Done => format!(
                        "done on {}: {}",
                        j.node.as_deref().unwrap_or("?"),
                        j.outcome.as_deref().unwrap_or("?")
                    ),
                    _ => format!("FAILED: {}", j.reason.as_deref().unwrap_or("no reason")),
                };
                let line = format!("  task {} {outcome}", j.task);
                // A hidden bar (output not a terminal) prints nothing.
                if bar.is_hidden() {
                    println!("{line}");
                } else {
                    bar.println(line);
                }
                bar.inc(1);
            }
        }
        bar.set_message(format!(
            "{} queued, {} running",
            counts[JobState::Queued as usize],
            counts[JobState::Leased as usize]
        ));
        if jobs.len() >= tasks as usize && jobs.iter().all(|j| j.state.is_final()) {
            let mut jobs = jobs;
            jobs.sort_by_key(|j| j.task);
            break Ok(jobs);
        }
        if let Err(e) = signals::check() {
            break Err(e.context("waiting for the tasks"));
        }
        if Instant::now() >= deadline {
            break Err(anyhow::anyhow!(
                "the tasks were not all done within {timeout:?} ({} done or failed of {tasks}); \
                 see the logs in {}",
                reported.len(),
                grid.dir().join("logs").display()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
        loop {
            let page = match grid.api().changes(Some(seq)) {
                Ok(p) => p,
                Err(e) => {
                    break 'poll Err(anyhow::Error::new(e).context("reading the change feed"));
                }
            };
            for c in page.changes {
                if let Some(j) = jobs.iter_mut().find(|j| j.id == c.job.id) {
                    *j = c.job;
                }
            }
            seq = page.next;
            if !page.more {
                break;
            }
        }
    };
    bar.finish_and_clear();
    result
}

/// Verifies one answer completely and extracts its tile.
fn check_answer(
    grid: &LocalGrid,
    bundle: &str,
    job: &JobView,
    answer: &Path,
    tiles_dir: &Path,
) -> Result<TileRow> {
    let bytes = rjs_signer::fsutil::read_bounded(answer, AnswerLimits::default().max_answer_bytes)
        .with_context(|| format!("reading {}", answer.display()))?;
    let verified = verify_answer(&bytes, &AnswerLimits::default()).map_err(|e| {
        anyhow::anyhow!(
            "{}: REFUSED {}: {}",
            answer.display(),
            e.rule(),
            rjs_cmd::chain(&e)
        )
    })?;
    let r = verified.result();
    ensure!(
        r.bundle_sha256 == bundle && r.task_index == job.task,
        "the answer is for task {} of bundle {}, not task {} of {}",
        r.task_index,
        r.bundle_sha256,
        job.task,
        bundle
    );
    ensure!(
        job.node.as_deref() == Some(r.node_id.as_str()),
        "the answer was signed by node {}, the web server says node {}",
        r.node_id,
        job.node.as_deref().unwrap_or("?")
    );
    let index = grid
        .node_index(&r.node_id)
        .with_context(|| format!("node {} is not a node of this grid", r.node_id))?;
    ensure!(
        *verified.public_key() == grid.node_public_key(index)?,
        "the answer is signed by key {}, which is not {}'s node key",
        verified.fingerprint(),
        r.node_id
    );
    if r.ending != (Ending::Exit { code: 0 }) {
        bail!(
            "the task ended with {} (stderr: {})",
            r.summary(),
            String::from_utf8_lossy(verified.stderr()).trim()
        );
    }
    let name = format!("tile-{}.png", job.task);
    let (_, png) = verified
        .out_files()
        .iter()
        .find(|(p, _)| *p == name)
        .with_context(|| format!("the answer holds no out/{name}"))?;
    let path = tiles_dir.join(&name);
    rjs_signer::fsutil::write_atomic(&path, png, 0o644)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(TileRow {
        task: job.task,
        node: r.node_id.clone(),
        wall_ms: r.wall_ms,
        path,
    })
}

fn write_out(out: &Path, png: &[u8]) -> Result<()> {
    if let Some(parent) = out.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    rjs_signer::fsutil::write_atomic(out, png, 0o644)
        .with_context(|| format!("writing {}", out.display()))
}

/// The lookup's node panel as a table.
pub fn print_panel(panel: &NodesResponse) {
    println!(
        "{:<10} {:<22} {:>7} {:>10} {:>5} {:>5} {:>6} {:>8}  GROUPS",
        "NODE", "ADDRESS", "MFLOPS", "FREE/SLOTS", "BUSY", "ANSWERS", "LOST", "AGE"
    );
    for r in &panel.nodes {
        let addr = match r.addresses.first() {
            Some(a) if a.contains(':') => format!("[{a}]:{}", r.port),
            Some(a) => format!("{a}:{}", r.port),
            None => format!("?:{}", r.port),
        };
        println!(
            "{:<10} {:<22} {:>7} {:>10} {:>5} {:>5} {:>6} {:>6}ms  {}",
            r.node_id,
            addr,
            r.mflops,
            format!("{}/{}", r.free_slots, r.total_slots),
            r.busy,
            r.answers.total(),
            r.lost,
            r.age_ms,
            r.groups.join(",")
        );
    }
}

fn print_tiles(tiles: &[TileRow]) {
    println!("{:<6} {:<10} {:>9}", "TILE", "NODE", "TIME");
    for t in tiles {
        println!("{:<6} {:<10} {:>6} ms", t.task, t.node, t.wall_ms);
    }
}

/// The job folder: `--job`, else the built Mandelbrot sample (building it if missing).
fn job_folder(args: &DemoArgs) -> Result<PathBuf> {
    if let Some(j) = &args.job {
        ensure!(
            j.join("manifest.json").is_file(),
            "{} is not a job folder (no manifest.json)",
            j.display()
        );
        return Ok(j.clone());
    }
    let job = paths::samples_dir().join("mandelbrot");
    if job.join("manifest.json").is_file() && job.join("mandelbrot.wasm").is_file() {
        return Ok(job);
    }
    let script = paths::workspace_root().join("samples").join("build.sh");
    ensure!(
        script.is_file(),
        "{} is missing and so is {} to build it: pass --job DIR",
        job.display(),
        script.display()
    );
    println!("building the sample jobs ({})…", script.display());
    // Inherited output (cargo's progress); no thread is started (the namespace comes later).
    let mut child = Command::new(&script)
        .spawn()
        .with_context(|| format!("running {}", script.display()))?;
    let deadline = Instant::now() + Duration::from_secs(30 * 60);
    let status = loop {
        if let Some(s) = child.try_wait().context("waiting for samples/build.sh")? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} did not finish within 30 minutes", script.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    ensure!(status.success(), "{} failed ({status})", script.display());
    ensure!(
        job.join("manifest.json").is_file(),
        "{} did not produce {}",
        script.display(),
        job.display()
    );
    Ok(job)
}

#[cfg(test)]
mod tests {
    use std::process::Stdio;

    use super::*;

    /// `rjs demo` end to end, as a user runs it: the real `rjs` binary (built next to this
    /// test executable's folder: `cargo build --workspace --bins` first). It enters its own
    /// private network namespace, so nothing here starts on the host's network.
    #[test]
    fn the_demo_computes_verifies_and_stitches_the_mandelbrot_image() {
        let exe = std::env::current_exe().unwrap();
        let bin = exe.parent().and_then(Path::parent).unwrap().join("rjs");
        assert!(
            bin.is_file(),
            "{} is missing: build the binaries first (cargo build --workspace --bins)",
            bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let grid_dir = dir.path().join("grid");
        let out = dir.path().join("img").join("m.png");
        let log = dir.path().join("demo.log");
        let mut child = Command::new(&bin)
            .arg("demo")
            .arg("--dir")
            .arg(&grid_dir)
            .arg("--out")
            .arg(&out)
            .args(["--timeout", "120"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(240);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("rjs demo took more than 240 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
        }
        let stdout = std::fs::read_to_string(&log).unwrap_or_default();
        if status.code() == Some(i32::from(EXIT_NO_NETNS)) {
            eprintln!("NOTE: rjs demo cannot run here (no private network namespace): {stderr}");
            return;
        }
        assert!(
            status.success(),
            "rjs demo failed ({status}):\n{stdout}\n{stderr}"
        );
        assert!(stdout.contains("private network namespace"), "{stdout}");
        assert!(
            stdout.contains("8 of 8 answers fetched and verified"),
            "{stdout}"
        );
        for i in 0..8 {
            assert!(
                stdout.contains(&format!("task {i} done on node-")),
                "{stdout}"
            );
        }
        assert!(
            stdout.contains(
                "dashboard (while the grid runs; `rjs demo --keep` keeps it up): https://"
            ),
            "{stdout}"
        );
        let image = grid::Image::decode_png(&std::fs::read(&out).unwrap(), u64::MAX).unwrap();
        assert_eq!((image.width, image.height), (1024, 1024));
        // The tiles it stitched are the verified answers' files, in task order.
        let tiles: Vec<PathBuf> = (0..8)
            .map(|i| grid_dir.join("tiles").join(format!("tile-{i}.png")))
            .collect();
        assert_eq!(grid::stitch(&tiles).unwrap(), image);
        for name in ["webserver.log", "lookup.log", "node-1.log", "node-2.log"] {
            assert!(grid_dir.join("logs").join(name).is_file(), "{name}");
        }
    }
}
