//! An mDNS flood against a running grid's lookup, measured: a burst of forged services, then
//! new ones at a steady rate, from this process (not the lookup's), on the grid's interface.
//! While it lasts, the node panel is read every 250 ms to catch any real node missing; the
//! lookup's CPU and memory are read from `/proc` before, during and after. Used by the grid
//! test (small counts) and the `discovery_flood` benchmark (the full counts).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::LocalGrid;
use crate::flood::mdns::Flooder;
use crate::procstat;

/// What to send.
#[derive(Debug, Clone, Copy)]
pub struct FloodPlan {
    /// Services sent at once first.
    pub burst: usize,
    /// Then this many new services a second…
    pub per_second: usize,
    /// …for this long.
    pub duration: Duration,
    /// The TTL the forged records ask for, seconds (long: the attacker wants them kept).
    pub ttl: u32,
    /// How long to watch the lookup after the flood ends.
    pub watch_after: Duration,
}

/// What was seen.
#[derive(Debug, Clone)]
pub struct FloodReport {
    pub services_sent: usize,
    /// Real nodes the panel ever missed during the flood or after it (none is the goal).
    pub nodes_missed: Vec<String>,
    /// The lookup's CPU, in cores (1.0 = one core busy), over the flood.
    pub cpu_during: f64,
    /// The lookup's CPU in each whole second after the flood ended: `[0]` is 0–1 s after.
    pub cpu_after: Vec<f64>,
    pub rss_before: u64,
    pub rss_max: u64,
    pub rss_after: u64,
    /// Times discovery started afresh (the panel's `drops.restarts`) during the run.
    pub restarts: u64,
}

impl FloodReport {
    /// The lookup's CPU in the second ending `secs` after the flood (None if not watched).
    pub fn cpu_at(&self, secs: usize) -> Option<f64> {
        self.cpu_after.get(secs.checked_sub(1)?).copied()
    }
}

/// Floods `grid` by `plan` from the interface of `ip` (the grid's, e.g. 127.0.0.1 on `lo`).
pub fn run(grid: &LocalGrid, ip: Ipv4Addr, plan: FloodPlan) -> Result<FloodReport> {
    let pid = grid.lookup_pid().context("the lookup is not running")?;
    let expected: Vec<String> = grid
        .nodes_panel()?
        .nodes
        .iter()
        .map(|n| n.node_id.to_string())
        .collect();
    let restarts0 = grid.nodes_panel()?.drops.restarts;
    let rss_before = procstat::rss_bytes(pid).unwrap_or(0);
    let mut rss_max = rss_before;
    let mut missed: Vec<String> = Vec::new();
    let mut check = |grid: &LocalGrid, rss_max: &mut u64| {
        if let Ok(panel) = grid.nodes_panel() {
            for id in &expected {
                let listed = panel.nodes.iter().any(|n| n.node_id.as_str() == id);
                if !listed && !missed.contains(id) {
                    missed.push(id.clone());
                }
            }
        }
        *rss_max = (*rss_max).max(procstat::rss_bytes(pid).unwrap_or(0));
    };

    let mut flooder = Flooder::new(ip, plan.ttl).context("opening the mDNS flooder")?;
    let cpu0 = procstat::cpu_seconds(pid).unwrap_or(0.0);
    let start = Instant::now();
    flooder.send(plan.burst)?;
    // The steady part: one batch every 100 ms.
    let per_tick = plan.per_second.div_ceil(10);
    let mut next = start;
    let mut last_check = start;
    while start.elapsed() < plan.duration {
        flooder.send(per_tick)?;
        next += Duration::from_millis(100);
        if last_check.elapsed() >= Duration::from_millis(250) {
            check(grid, &mut rss_max);
            last_check = Instant::now();
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let flood_time = start.elapsed().as_secs_f64();
    let cpu_during = (procstat::cpu_seconds(pid).unwrap_or(0.0) - cpu0) / flood_time;

    let mut cpu_after = Vec::new();
    let mut prev = procstat::cpu_seconds(pid).unwrap_or(0.0);
    let end = Instant::now();
    for s in 1..=plan.watch_after.as_secs() {
        let at = end + Duration::from_secs(s);
        while Instant::now() < at {
            check(grid, &mut rss_max);
            std::thread::sleep(
                at.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(250)),
            );
        }
        let now = procstat::cpu_seconds(pid).unwrap_or(prev);
        cpu_after.push(now - prev);
        prev = now;
    }
    Ok(FloodReport {
        services_sent: flooder.sent(),
        nodes_missed: missed,
        cpu_during,
        cpu_after,
        rss_before,
        rss_max,
        rss_after: procstat::rss_bytes(pid).unwrap_or(0),
        restarts: grid.nodes_panel()?.drops.restarts - restarts0,
    })
}
