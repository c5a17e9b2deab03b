//! WAN benchmark: `cargo build --release --workspace --bins && cargo bench -p rjs --bench wan`
//! (see `docs/benchmarks.md`).
//!
//! The grid as deployed: the web server in this process's private namespace, the lookup and
//! two nodes of two slots each on hosts of their own (named namespaces on a bridge), a WAN
//! link between lookup and web server whose delay is made in user space and whose loss and
//! partitions are iptables rules ([`rjs_harness::grid::wan::WanGrid`]). Release binaries.
//!
//! 1. **throughput**: `--tasks` (2,000) `hello` tasks, upload → all done, at 0, 50, 150 and
//!    300 ms round trip, without and with 2% loss each way, and at 150 ms with 5% loss.
//!    Targets: at 150 ms ≥ 80% of the near figure, at 150 ms and 5% loss ≥ 60%.
//! 2. **TLS**: full handshakes over the WAN during the 150 ms run (target: none after the
//!    first connections), and after every connection is cut, resumptions only.
//! 3. **recovery** at 150 ms: the lookup SIGKILLed mid-run and restarted 3 s later
//!    (dispatching again within 5 s); the WAN partitioned 20 s and 150 s (the lookup says so
//!    within 3 s; dispatching again within 5 s of the heal); the web server killed and
//!    started again (the lookup reconnects within 2 s of it listening). Every run checks,
//!    from the web server's job list, that each task has exactly one answer.
//!
//! Prints a table; exits 0 only if every target is met (1 otherwise, 2 when the hosts cannot
//! be built). Options: `--tasks N`, `--only SECTION[,…]` (throughput, tls, recovery),
//! `--short` (partitions of 20 s only).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rjs_harness::grid::wan::{RunReport, WanGrid, WanGridOptions};
use rjs_harness::report::{Row, print_table};
use rjs_harness::{netns, procstat, signals};

struct Args {
    tasks: u32,
    sections: Vec<String>,
    short: bool,
}

const SECTIONS: [&str; 3] = ["throughput", "tls", "recovery"];

fn parse_args() -> Result<Args> {
    let mut args = Args {
        tasks: 2000,
        sections: SECTIONS.iter().map(|s| s.to_string()).collect(),
        short: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bench" => {}
            "--tasks" => {
                let v = it.next().context("--tasks needs a value")?;
                args.tasks = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=100_000).contains(n))
                    .with_context(|| format!("--tasks {v:?}: expected 1 to 100000"))?;
            }
            "--only" => {
                let v = it.next().context("--only needs a value")?;
                args.sections = v.split(',').map(str::to_owned).collect();
                if let Some(s) = args
                    .sections
                    .iter()
                    .find(|s| !SECTIONS.contains(&s.as_str()))
                {
                    bail!("--only {s:?}: expected {}", SECTIONS.join(", "));
                }
            }
            "--short" => args.short = true,
            "-h" | "--help" => {
                println!(
                    "cargo bench -p rjs --bench wan [-- --tasks N] [--only SECTION,…] [--short]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    // First, before any thread exists: this process is the web server's host, and every
    // host it builds hangs off it, never off this machine's own network.
    if let Err(e) = netns::enter_private() {
        eprintln!(
            "wan bench: cannot create a private network namespace: {}",
            rjs_cmd::chain(e.as_ref())
        );
        return ExitCode::from(2);
    }
    if let Err(e) = rjs_harness::hosts::available() {
        eprintln!("wan bench: {}", rjs_cmd::chain(e.as_ref()));
        return ExitCode::from(2);
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("wan bench: {}", rjs_cmd::chain(e.as_ref()));
            return ExitCode::from(2);
        }
    };
    if let Err(e) = signals::install() {
        eprintln!("wan bench: installing the Ctrl-C handler: {e}");
        return ExitCode::FAILURE;
    }
    let root = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("wan bench: a scratch folder: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut rows = Vec::new();
    for (i, section) in args.sections.iter().enumerate() {
        println!("\n== {section} ==");
        let dir = root.path().join(format!("{i}-{section}"));
        let result = match section.as_str() {
            "throughput" => throughput(&dir, &args),
            "tls" => tls(&dir, &args),
            _ => recovery(&dir, &args),
        };
        match result {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => {
                eprintln!("wan bench: {section}: {}", rjs_cmd::chain(e.as_ref()));
                rows.push(Row::target(
                    section.as_str(),
                    format!(
                        "ERROR: {}",
                        rjs_cmd::chain(e.as_ref()).lines().next().unwrap_or("")
                    ),
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
    if signals::received().is_some() {
        return ExitCode::from(130);
    }
    if Row::all_met(&rows) {
        println!("every target met");
        ExitCode::SUCCESS
    } else {
        println!("target(s) missed");
        ExitCode::FAILURE
    }
}

fn start(dir: &std::path::Path, lookup_args: &[&str]) -> Result<WanGrid> {
    let mut opts = WanGridOptions::new(dir);
    opts.rtt = Duration::ZERO;
    opts.lookup_args = lookup_args.iter().map(|s| s.to_string()).collect();
    let t = Instant::now();
    let g = WanGrid::start(opts)?;
    println!(
        "grid up in {} ms: web server here, lookup and 2 nodes x 2 slots on their own hosts",
        t.elapsed().as_millis()
    );
    Ok(g)
}

fn quiet(_: &mut WanGrid, _: Duration) -> Result<()> {
    Ok(())
}

fn show(what: &str, r: &RunReport) {
    println!(
        "  {what}: {} tasks in {:.2} s = {:.0} tasks/s",
        r.tasks,
        r.elapsed.as_secs_f64(),
        r.tasks_per_s()
    );
}

fn throughput(dir: &std::path::Path, args: &Args) -> Result<Vec<Row>> {
    let mut g = start(dir, &[])?;
    let n = args.tasks;
    let timeout = Duration::from_secs(600);
    // A first run warms the bundle caches and the lookup's measures.
    g.run(n.min(400), timeout, quiet)?;
    let mut rows = Vec::new();
    let mut near = 0.0;
    for rtt_ms in [0u64, 50, 150, 300] {
        for loss in [0.0, 0.02] {
            g.link().set_one_way(Duration::from_millis(rtt_ms / 2));
            g.loss(loss)?;
            let me = std::process::id() as i32;
            let cpu0 = procstat::cpu_seconds(me).unwrap_or(0.0);
            let r = g.run(n, timeout, quiet)?;
            let link_cpu = procstat::cpu_seconds(me).unwrap_or(0.0) - cpu0;
            let what = format!("{n} tasks at {rtt_ms} ms RTT, {:.0}% loss", loss * 100.0);
            show(&what, &r);
            println!(
                "    the WAN link (this process) used {link_cpu:.2} CPU s of the run's {:.2} s",
                r.elapsed.as_secs_f64()
            );
            let rate = r.tasks_per_s();
            if rtt_ms == 0 && loss == 0.0 {
                near = rate;
            }
            let share = rate / near * 100.0;
            let figure = format!("{rate:.0} tasks/s ({share:.0}% of near)");
            rows.push(if rtt_ms == 150 && loss == 0.0 {
                Row::target(what, figure, ">= 80% of near", share >= 80.0)
            } else {
                Row::info(what, figure)
            });
        }
    }
    g.link().set_one_way(Duration::from_millis(75));
    g.loss(0.05)?;
    let r = g.run(n, timeout, quiet)?;
    g.loss(0.0)?;
    let what = format!("{n} tasks at 150 ms RTT, 5% loss");
    show(&what, &r);
    let share = r.tasks_per_s() / near * 100.0;
    rows.push(Row::target(
        what,
        format!("{:.0} tasks/s ({share:.0}% of near)", r.tasks_per_s()),
        ">= 60% of near",
        share >= 60.0,
    ));
    Ok(rows)
}

fn tls(dir: &std::path::Path, args: &Args) -> Result<Vec<Row>> {
    let mut g = start(dir, &[])?;
    g.link().set_one_way(Duration::from_millis(75));
    let first = g.wan_stats();
    println!(
        "  at start: {} connections, {} full handshakes",
        first.connections, first.full_handshakes
    );
    g.run(args.tasks, Duration::from_secs(600), quiet)?;
    let run = g.wan_stats();
    let full_in_run = run.full_handshakes - first.full_handshakes;
    let cut = g.link().cut();
    // Dispatching goes on over new connections, which resume the TLS sessions.
    g.run(args.tasks.min(400), Duration::from_secs(600), quiet)?;
    let after = g.wan_stats();
    let (full, resumed) = (
        after.full_handshakes - run.full_handshakes,
        after.resumptions - run.resumptions,
    );
    println!("  cut {cut} connections; then {full} full handshakes, {resumed} resumptions");
    Ok(vec![
        Row::target(
            format!(
                "new TLS full handshakes during {} tasks at 150 ms",
                args.tasks
            ),
            full_in_run.to_string(),
            "0",
            full_in_run == 0,
        ),
        Row::target(
            "after every WAN connection is cut: full / resumed handshakes",
            format!("{full} / {resumed}"),
            "0 / >= 1",
            full == 0 && resumed >= 1,
        ),
    ])
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("never".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
}

fn within(d: Option<Duration>, limit: Duration) -> bool {
    d.is_some_and(|d| d <= limit)
}

fn recovery(dir: &std::path::Path, args: &Args) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let n = args.tasks;
    let timeout = Duration::from_secs(900);
    let five = Duration::from_secs(5);

    // The lookup killed mid-run, started again 3 s later.
    let mut g = start(&dir.join("restart"), &[])?;
    g.link().set_one_way(Duration::from_millis(75));
    let rec = g.lookup_restart(n, timeout, Duration::from_secs(3))?;
    show("lookup SIGKILLed, restarted 3 s later", &rec.run);
    rows.push(Row::target(
        "lookup restarted: first answer after its restart (longest stall after it)",
        format!("{} ({})", secs(rec.resumed()), secs(rec.stall())),
        "<= 5 s (<= 5 s)",
        within(rec.resumed(), five) && within(rec.stall(), five),
    ));
    drop(g);

    // Partitions, with enough work that the nodes are still busy at the heal.
    let cuts: &[u64] = if args.short { &[20] } else { &[20, 150] };
    for &cut_s in cuts {
        let mut g = start(&dir.join(format!("partition-{cut_s}")), &[])?;
        g.link().set_one_way(Duration::from_millis(75));
        let rec = g.partition_run(n.max(2000), timeout, Duration::from_secs(cut_s))?;
        show(&format!("WAN partitioned {cut_s} s"), &rec.run);
        rows.push(Row::target(
            format!("partition {cut_s} s: rjs-lookup status says unreachable"),
            secs(rec.noticed),
            "<= 3 s",
            within(rec.noticed, Duration::from_secs(3)),
        ));
        rows.push(Row::target(
            format!(
                "partition {cut_s} s: first answer stored after the heal (longest stall after it)"
            ),
            format!("{} ({})", secs(rec.resumed()), secs(rec.stall())),
            "<= 5 s (<= 5 s)",
            within(rec.resumed(), five) && within(rec.stall(), five),
        ));
    }

    // The web server restarted.
    let mut g = start(&dir.join("webserver"), &[])?;
    g.link().set_one_way(Duration::from_millis(75));
    let rec = g.webserver_restart(n, timeout)?;
    show("web server SIGKILLed and started again", &rec.run);
    rows.push(Row::target(
        "web server restarted: lookup reconnected after it listened",
        secs(rec.reconnected),
        "<= 2 s",
        within(rec.reconnected, Duration::from_secs(2)),
    ));
    Ok(rows)
}
