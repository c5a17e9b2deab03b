//! Issue 10, item 4 at full scale: a whole grid (the real binaries, 2 nodes) in a private
//! network namespace, flooded from this process with 10,000 forged `_rjs-compute._tcp`
//! services sent at once (TTL 75 min), then 1,000 new ones a second for 30 s. Prints what the
//! lookup did and exits 1 when a target is missed:
//!
//! * no real node's lease is lost (the panel, read every 250 ms, always lists both);
//! * the lookup's CPU is back under 5% of a core in the 10th second after the flood;
//! * its resident memory grows by less than 64 MiB.
//!
//! `samples/build.sh && cargo build --release --workspace --bins && cargo bench -p rjs --bench
//! discovery_flood` (the grid runs the release binaries next to the bench, `target/release`).

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::Duration;

use rjs_harness::grid::flood::{self, FloodPlan};
use rjs_harness::grid::{GridOptions, LocalGrid, NodeOptions};
use rjs_harness::netns;

const RSS_BOUND: u64 = 64 << 20;

fn main() -> ExitCode {
    // Before any thread exists: every mDNS daemon stays inside the namespace.
    if let Err(e) = netns::enter_private() {
        eprintln!(
            "discovery_flood: cannot create a private network namespace: {}",
            rjs_cmd::chain(e.as_ref())
        );
        return ExitCode::from(2);
    }
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("discovery_flood: {}", rjs_cmd::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let dir = tempfile::tempdir()?;
    let mut opts = GridOptions::new(dir.path().join("grid"));
    opts.nodes = 2;
    opts.node_options = vec![
        NodeOptions {
            mflops: Some(1000.0),
            ..NodeOptions::default()
        };
        2
    ];
    let mut grid = LocalGrid::start(opts)?;
    let plan = FloodPlan {
        burst: 10_000,
        per_second: 1_000,
        duration: Duration::from_secs(30),
        ttl: 4_500,
        watch_after: Duration::from_secs(12),
    };
    println!(
        "== discovery flood: {} services at once, then {}/s for {:?}, TTL {} s ==",
        plan.burst, plan.per_second, plan.duration, plan.ttl
    );
    let r = flood::run(&grid, Ipv4Addr::LOCALHOST, plan)?;
    grid.stop()?;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!("services sent: {}", r.services_sent);
    println!("discovery started afresh: {} times", r.restarts);
    println!(
        "lookup CPU during the flood: {:.1}% of a core",
        r.cpu_during * 100.0
    );
    let after: Vec<String> = r
        .cpu_after
        .iter()
        .map(|c| format!("{:.0}%", c * 100.0))
        .collect();
    println!("lookup CPU per second after it: {}", after.join(" "));
    println!(
        "lookup RSS: {:.1} MiB before, {:.1} MiB at most, {:.1} MiB after",
        mib(r.rss_before),
        mib(r.rss_max),
        mib(r.rss_after)
    );
    println!(
        "real nodes missing from the panel at any time: {:?}",
        r.nodes_missed
    );
    let mut ok = true;
    if !r.nodes_missed.is_empty() {
        println!("missed: real nodes lost their lease");
        ok = false;
    }
    let settled = r.cpu_at(10).unwrap_or(1.0);
    if settled >= 0.05 {
        println!(
            "missed: {:.1}% of a core 10 s after the flood (target < 5%)",
            settled * 100.0
        );
        ok = false;
    }
    if r.rss_max >= r.rss_before + RSS_BOUND {
        println!(
            "missed: RSS grew by {:.1} MiB (bound 64 MiB)",
            mib(r.rss_max - r.rss_before)
        );
        ok = false;
    }
    Ok(ok)
}
