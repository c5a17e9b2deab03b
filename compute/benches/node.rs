//! Job-server benchmark: tiny `hello` tasks end to end through a real node.
//!
//! `samples/build.sh && cargo bench -p rjs-compute --bench node`
//!
//! Starts `rjs-compute serve --no-announce` (release build) on loopback with certificates
//! from a throw-away cluster CA, trusts a throw-away author, packs the `hello` sample with
//! `tasks = 100000`, then pushes `RJS_BENCH_TASKS` (default 4000) offers of that bundle
//! through `RJS_BENCH_CONNS` (default: 2 and 4, one run each) concurrent mutual-TLS
//! connections, as a lookup server would: offer → (send-bundle once) → accepted → answer.
//! A `no-free-slot` refusal is retried after a short pause (and counted).
//!
//! Runs once with the scratch directory in the node's data directory (a temporary directory,
//! under `$TMPDIR`) and once with `--scratch-dir /dev/shm` (`RJS_BENCH_SCRATCH`:
//! comma-separated, `data` for the default).
//!
//! Also prints the memory of the node and its workers, idle 2 s after start and after the
//! runs (RSS of each process summed, and PSS, which counts shared pages once). Exits 1 if,
//! with the default scratch, 2 connections give under 3,000 tasks/s or the idle RSS sum is
//! over 40 MB.
//!
//! Reports tasks/s and the CPU time per task of the node process and of its worker
//! processes (`utime + stime` from `/proc/<pid>/stat`, before and after the measured part),
//! plus the client's own CPU per task.
//!
//! Environment: `RJS_BENCH_TASKS` (offers per run), `RJS_BENCH_CONNS` (comma-separated
//! connection counts), `RJS_BENCH_SLOTS` (default 2), `RJS_BENCH_PERF=FILE` (record the node
//! and its workers with `perf record` during the last run, into FILE; options from
//! `RJS_BENCH_PERF_ARGS`, default `-F 4000 -g`; `--call-graph dwarf` gives usable stacks).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rjs_harness::procstat;
use rjs_signer::KeyPair;
use rjs_wire::node::{
    CONTROL_TIMEOUT, FromNode, ToNode, data_timeout, read_frame, read_msg, write_frame, write_msg,
};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Targets (the node as configured by default: scratch in the data directory, 2 slots, 2
/// connections): tasks/s, and the idle RSS of the node and its workers.
const RATE_TARGET: f64 = 3000.0;
const IDLE_RSS_TARGET: u64 = 40_000_000;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The hello sample as a bundle of `tasks` tasks, signed by `key`.
fn hello_bundle(key: &KeyPair, tasks: u32) -> Vec<u8> {
    let dir = root().join("target/rjs-samples/hello");
    let manifest = std::fs::read(dir.join("manifest.json")).expect("run samples/build.sh first");
    let mut manifest: serde_json::Value = serde_json::from_slice(&manifest).expect("manifest");
    manifest["tasks"] = tasks.into();
    let module = std::fs::read(dir.join("hello.wasm")).expect("hello.wasm");
    let mut b = rjs_signer::BundleBuilder::new();
    b.add("manifest.json", manifest.to_string().into_bytes())
        .expect("manifest entry");
    b.add("hello.wasm", module).expect("module entry");
    b.sign(key, "bench", rjs_signer::unix_now()).expect("sign")
}

/// User + system CPU of a process so far, µs (clock ticks of 10 ms: summed over a long run).
fn cpu_us(pid: u32) -> f64 {
    procstat::cpu_seconds(pid as i32).unwrap_or(0.0) * 1e6
}

/// The node's child processes (its sandbox workers).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Memory of the node and its workers: (node RSS, workers' RSS, workers, PSS of all).
fn memory(pid: u32) -> (u64, u64, usize, u64) {
    let workers = children(pid);
    let rss_of = |p: u32| procstat::rss_bytes(p as i32).unwrap_or(0);
    let rss = rss_of(pid);
    let workers_rss = workers.iter().map(|&w| rss_of(w)).sum();
    let pss = std::iter::once(pid)
        .chain(workers.iter().copied())
        .map(|p| procstat::pss_bytes(p as i32).unwrap_or(0))
        .sum();
    (rss, workers_rss, workers.len(), pss)
}

fn print_memory(what: &str, pid: u32) -> u64 {
    let (rss, workers_rss, n, pss) = memory(pid);
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "{what}: RSS node {:.1} MB + {n} workers {:.1} MB = {:.1} MB (PSS, shared pages counted \
         once: {:.1} MB)",
        mb(rss),
        mb(workers_rss),
        mb(rss + workers_rss),
        mb(pss)
    );
    rss + workers_rss
}

fn self_cpu_us() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let us = |t: libc::timeval| (t.tv_sec as u64) * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

struct Node {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        // SAFETY: signals our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node(
    ca: &rjs_wire::pki::Ca,
    author: &KeyPair,
    slots: usize,
    scratch: Option<&str>,
) -> Node {
    let exe = env!("CARGO_BIN_EXE_rjs-compute");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    let node_cert = rjs_wire::pki::issue(
        ca,
        "rjs-node",
        rjs_wire::pki::host_sans(&["127.0.0.1".into()]).expect("sans"),
        // No extended key usage extension: good for server and client authentication
        // (and no need to name rcgen's types here).
        Vec::new(),
    )
    .expect("node certificate");
    let (ca_pem, cert_pem, key_pem) = (
        dir.path().join("ca.pem"),
        dir.path().join("node.pem"),
        dir.path().join("node-key.pem"),
    );
    std::fs::write(&ca_pem, &ca.cert_pem).unwrap();
    std::fs::write(&cert_pem, &node_cert.cert_pem).unwrap();
    std::fs::write(&key_pem, &node_cert.key_pem).unwrap();
    // A stored speed result: no second of benchmarking at start.
    std::fs::write(
        data.join("bench.json"),
        serde_json::json!({
            "mflops": 1000.0, "n": 500, "runs": 3, "seconds": 1.0, "residual": 0.5,
            "measured_at": rjs_signer::unix_now(), "program_version": env!("CARGO_PKG_VERSION"),
        })
        .to_string(),
    )
    .unwrap();
    let out = Command::new(exe)
        .args([
            "trust",
            "add",
            &author.public().to_base64(),
            "--name",
            "bench",
        ])
        .arg("--data")
        .arg(&data)
        .stdin(Stdio::null())
        .output()
        .expect("trust add");
    assert!(out.status.success(), "trust add: {out:?}");
    let mut cmd = Command::new(exe);
    cmd.arg("serve");
    if let Some(dir) = scratch {
        cmd.args(["--scratch-dir", dir]);
    }
    let mut child = cmd
        .arg("--data")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0", "--slots", &slots.to_string()])
        // Never an mDNS announcer on the host's network.
        .arg("--no-announce")
        .arg("--cert")
        .arg(&cert_pem)
        .arg("--key")
        .arg(&key_pem)
        .arg("--ca")
        .arg(&ca_pem)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("rjs-compute serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.split(" listening on ").nth(1) {
                let _ = tx.send(rest.trim().to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the node did not start")
        .parse()
        .expect("address");
    Node {
        child,
        addr,
        _dir: dir,
    }
}

#[derive(Default)]
struct Counts {
    done: AtomicU64,
    sent_bundle: AtomicU64,
    busy: AtomicU64,
    answer_bytes: AtomicU64,
}

async fn connection(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    bundle: Arc<Vec<u8>>,
    sha: Arc<String>,
    next: Arc<AtomicU64>,
    total: u64,
    counts: Arc<Counts>,
) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut s = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .expect("TLS");
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= total {
            return;
        }
        let task = (i % 100_000) as u32;
        loop {
            let offer = ToNode::Offer {
                bundle_sha256: (*sha).clone(),
                bundle_size: bundle.len() as u64,
                task,
                job_id: 1,
            };
            write_msg(&mut s, &offer, CONTROL_TIMEOUT).await.unwrap();
            let mut reply: FromNode = read_msg(&mut s, CONTROL_TIMEOUT).await.unwrap();
            if reply == FromNode::SendBundle {
                counts.sent_bundle.fetch_add(1, Ordering::Relaxed);
                write_frame(&mut s, &bundle, data_timeout(bundle.len() as u64))
                    .await
                    .unwrap();
                reply = read_msg(&mut s, CONTROL_TIMEOUT).await.unwrap();
            }
            match reply {
                FromNode::Accepted => {}
                FromNode::Refused {
                    code: rjs_wire::node::RefusalCode::NoFreeSlot,
                    ..
                } => {
                    counts.busy.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    continue;
                }
                other => panic!("task {task}: {other:?}"),
            }
            let size = match read_msg(&mut s, CONTROL_TIMEOUT).await.unwrap() {
                FromNode::Answer { outcome, size } => {
                    assert_eq!(outcome, "exit 0", "task {task}");
                    size
                }
                other => panic!("task {task}: {other:?}"),
            };
            let answer = read_frame(&mut s, size, CONTROL_TIMEOUT).await.unwrap();
            counts
                .answer_bytes
                .fetch_add(answer.len() as u64, Ordering::Relaxed);
            counts.done.fetch_add(1, Ordering::Relaxed);
            break;
        }
    }
}

/// The benchmark's knobs, from the environment (see the module documentation).
struct Settings {
    tasks: u64,
    slots: usize,
    conns: Vec<usize>,
    perf: Option<PathBuf>,
    /// `data` (the default scratch in the data directory) or a `--scratch-dir`.
    scratches: Vec<String>,
}

impl Settings {
    fn from_env() -> Settings {
        let list = |name: &str, default: &str| -> Vec<String> {
            std::env::var(name)
                .unwrap_or_else(|_| default.into())
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        Settings {
            tasks: env_or("RJS_BENCH_TASKS", 4000),
            slots: env_or("RJS_BENCH_SLOTS", 2),
            conns: list("RJS_BENCH_CONNS", "2,4")
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
            perf: std::env::var_os("RJS_BENCH_PERF").map(PathBuf::from),
            scratches: list("RJS_BENCH_SCRATCH", "data,/dev/shm"),
        }
    }
}

/// What the connections push, as a lookup server would: its TLS identity and the bundle.
struct Load {
    tls: Arc<rustls::ClientConfig>,
    bundle: Arc<Vec<u8>>,
    sha: Arc<String>,
}

impl Load {
    /// A lookup certificate from `ca` and the `hello` sample signed by `author`.
    fn new(ca: &rjs_wire::pki::Ca, author: &KeyPair) -> Load {
        let lookup = rjs_wire::pki::issue_lookup_client(ca, "lookup-bench").expect("lookup cert");
        let ca_der = rjs_wire::tls::certs_from_pem(ca.cert_pem.as_bytes(), "CA").unwrap();
        let identity = (
            rjs_wire::tls::certs_from_pem(lookup.cert_pem.as_bytes(), "cert").unwrap(),
            rjs_wire::tls::key_from_pem(lookup.key_pem.as_bytes(), "key").unwrap(),
        );
        let tls = Arc::new(rjs_wire::tls::client_config(&ca_der, Some(identity)).unwrap());
        let bundle = Arc::new(hello_bundle(author, 100_000));
        let sha = Arc::new(rjs_signer::bundle::hex(&rjs_signer::bundle_id(&bundle)));
        Load { tls, bundle, sha }
    }

    /// `n` offers through `conns` concurrent connections to `addr`.
    fn push(
        &self,
        rt: &tokio::runtime::Runtime,
        addr: SocketAddr,
        n: u64,
        conns: usize,
    ) -> Arc<Counts> {
        let next = Arc::new(AtomicU64::new(0));
        let counts = Arc::new(Counts::default());
        rt.block_on(async {
            let handles: Vec<_> = (0..conns)
                .map(|_| {
                    tokio::spawn(connection(
                        addr,
                        self.tls.clone(),
                        self.bundle.clone(),
                        self.sha.clone(),
                        next.clone(),
                        n,
                        counts.clone(),
                    ))
                })
                .collect();
            for h in handles {
                h.await.expect("connection");
            }
        });
        counts
    }
}

/// `perf record` of the node `pid` and its `workers` into `file` (options from
/// `RJS_BENCH_PERF_ARGS`), given half a second to attach.
fn start_perf(file: &Path, pid: u32, workers: &[u32]) -> Child {
    let pids: Vec<String> = std::iter::once(pid)
        .chain(workers.iter().copied())
        .map(|p| p.to_string())
        .collect();
    let args = std::env::var("RJS_BENCH_PERF_ARGS").unwrap_or_else(|_| "-F 4000 -g".into());
    let child = Command::new("perf")
        .arg("record")
        .args(args.split_whitespace())
        .arg("-o")
        .arg(file)
        .args(["-p", &pids.join(",")])
        .stdout(Stdio::null())
        .spawn()
        .expect("perf record");
    std::thread::sleep(Duration::from_millis(500));
    child
}

/// Stops `perf record` (SIGINT, so that it writes its file) and waits for it.
fn stop_perf(p: Child) {
    // SAFETY: signals our own child.
    unsafe { libc::kill(p.id() as libc::pid_t, libc::SIGINT) };
    let _ = p.wait_with_output();
}

/// One measured run: `tasks` offers through `conns` connections to `node`, its CPU use and
/// that of its workers and of this process read before and after; printed. Returns tasks/s.
fn measured_run(
    rt: &tokio::runtime::Runtime,
    load: &Load,
    node: &Node,
    tasks: u64,
    conns: usize,
    perf: Option<&Path>,
) -> f64 {
    let pid = node.child.id();
    let workers = children(pid);
    let perf_child = perf.map(|file| start_perf(file, pid, &workers));
    let node0 = cpu_us(pid);
    let workers0: f64 = workers.iter().map(|&w| cpu_us(w)).sum();
    let self0 = self_cpu_us();
    let t = Instant::now();
    let counts = load.push(rt, node.addr, tasks, conns);
    let wall = t.elapsed();
    let self1 = self_cpu_us();
    let node1 = cpu_us(pid);
    let workers_now = children(pid);
    assert_eq!(workers_now, workers, "a worker was replaced during the run");
    let workers1: f64 = workers.iter().map(|&w| cpu_us(w)).sum();
    if let Some(p) = perf_child {
        stop_perf(p);
    }
    let done = counts.done.load(Ordering::Relaxed);
    assert_eq!(done, tasks);
    let per = |us: f64| us / done as f64;
    let node_us = per(node1 - node0);
    let workers_us = per(workers1 - workers0);
    println!(
        "{conns} connections: {done} tasks in {:.2} s = {:.0} tasks/s; CPU per task: node \
         {:.0} µs + workers {:.0} µs = {:.0} µs; client {:.0} µs; no-free-slot retries \
         {}; answers {} bytes avg",
        wall.as_secs_f64(),
        done as f64 / wall.as_secs_f64(),
        node_us,
        workers_us,
        node_us + workers_us,
        per((self1 - self0) as f64),
        counts.busy.load(Ordering::Relaxed),
        counts.answer_bytes.load(Ordering::Relaxed) / done.max(1),
    );
    assert_eq!(counts.sent_bundle.load(Ordering::Relaxed), 0);
    done as f64 / wall.as_secs_f64()
}

fn main() {
    let settings = Settings::from_env();
    let Settings {
        tasks,
        slots,
        ref conns,
        ref scratches,
        ..
    } = settings;
    let mut missed: Vec<String> = Vec::new();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ca = rjs_wire::pki::new_ca("rjs-bench-ca").expect("CA");
    let author = KeyPair::generate();
    let load = Load::new(&ca, &author);
    println!(
        "== node job server: hello tasks, bundle {} bytes, {slots} slots, {tasks} tasks per run ==",
        load.bundle.len()
    );

    for (si, scratch) in scratches.iter().enumerate() {
        let scratch = (scratch != "data").then_some(scratch.as_str());
        let node = start_node(&ca, &author, slots, scratch);
        println!(
            "-- scratch in {} --",
            scratch.unwrap_or("the data directory (<data>/scratch)")
        );
        let pid = node.child.id();
        std::thread::sleep(Duration::from_secs(2));
        let idle = print_memory("idle after start", pid);
        if scratch.is_none() && idle > IDLE_RSS_TARGET {
            missed.push(format!("idle RSS {idle} bytes > {IDLE_RSS_TARGET}"));
        }
        // Warm-up: the bundle is sent and verified, the module compiled, connections made.
        load.push(&rt, node.addr, 200, 2);

        for (k, &c) in conns.iter().enumerate() {
            // perf records the last run only.
            let last = si + 1 == scratches.len() && k + 1 == conns.len();
            let perf = settings.perf.as_deref().filter(|_| last);
            let rate = measured_run(&rt, &load, &node, tasks, c, perf);
            if scratch.is_none() && c == 2 && rate < RATE_TARGET {
                missed.push(format!(
                    "{rate:.0} tasks/s with the default scratch < {RATE_TARGET}"
                ));
            }
        }
        std::thread::sleep(Duration::from_secs(2));
        print_memory("idle after the runs", pid);
        drop(node);
    }
    if !missed.is_empty() {
        eprintln!("missed: {}", missed.join("; "));
        std::process::exit(1);
    }
}
