//! The grid across a WAN and through real faults, on several hosts: the web server on this
//! test's own (private) network namespace, the lookup and each node on a host of its own (a
//! named namespace on a bridge the test builds, multicast only there), a WAN link between the
//! lookup and the web server with its round-trip time made in user space
//! ([`rjs_harness::wan::WanLink`]), loss and partitions by iptables on that link
//! ([`rjs_harness::hosts`]). Everything is removed at the end, also when a test fails (the
//! isolated-test runner sweeps what a dead child left).
//!
//! Each case asserts, from the web server's own job list, that every task got exactly one
//! answer, and prints its tasks/s and recovery times. The counts here are small (CI); the WAN
//! benchmark (`cargo bench -p rjs --bench wan`) runs the full ones against the targets.
//!
//! Needs root (named namespaces, iptables), `ip` and `iptables`, the binaries and the sample
//! jobs (`scripts/test.sh` sees to all of them); prints a SKIP line where it cannot build
//! hosts.

use std::time::Duration;

use rjs_harness::grid::wan::{RunReport, WanGrid, WanGridOptions};
use rjs_harness::netns;

/// Builds the multi-host grid in a fresh folder, or prints why it cannot (SKIP).
fn wan_grid(rtt: Duration, lookup_args: &[&str]) -> Option<(tempfile::TempDir, WanGrid)> {
    if let Err(e) = rjs_harness::hosts::available() {
        println!("SKIP: {}", rjs_cmd::chain(e.as_ref()));
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut opts = WanGridOptions::new(dir.path().join("grid"));
    opts.rtt = rtt;
    opts.lookup_args = lookup_args.iter().map(|s| s.to_string()).collect();
    let grid = WanGrid::start(opts).unwrap();
    Some((dir, grid))
}

fn print_run(what: &str, r: &RunReport, g: &WanGrid) {
    let s = g.wan_stats();
    println!(
        "figure: {what}: {} tasks in {:.2} s = {:.0} tasks/s; WAN: {} connections, {} full TLS \
         handshakes, {} resumed",
        r.tasks,
        r.elapsed.as_secs_f64(),
        r.tasks_per_s(),
        s.connections,
        s.full_handshakes,
        s.resumptions
    );
}

const LATENCY: &str = "latency_is_hidden_across_a_150_ms_wan";

/// The same grid, the same work, near and across 150 ms: the lookup leases ahead by what
/// the work needs, so the WAN costs little throughput, over one TLS connection.
#[test]
fn latency_is_hidden_across_a_150_ms_wan() {
    if !netns::isolated_child(LATENCY, Duration::from_secs(300)) {
        return;
    }
    let Some((_dir, mut g)) = wan_grid(Duration::ZERO, &[]) else {
        return;
    };
    let n = 400;
    // Warm: the nodes compile the module once, the lookup measures its nodes' pace.
    g.run(50, Duration::from_secs(120), |_, _| Ok(())).unwrap();
    let near = g.run(n, Duration::from_secs(120), |_, _| Ok(())).unwrap();
    print_run("web server near", &near, &g);
    g.link().set_one_way(Duration::from_millis(75));
    let before = g.wan_stats();
    let far = g.run(n, Duration::from_secs(120), |_, _| Ok(())).unwrap();
    print_run("web server at 150 ms", &far, &g);
    let after = g.wan_stats();
    let ratio = far.tasks_per_s() / near.tasks_per_s();
    println!(
        "figure: at 150 ms: {:.0}% of the near throughput",
        ratio * 100.0
    );
    assert_eq!(
        after.full_handshakes - before.full_handshakes,
        0,
        "a new TLS connection during the WAN run: {before:?} → {after:?}"
    );
    assert!(
        ratio >= 0.5,
        "the WAN run reached only {:.0}% of the near one ({:.0} vs {:.0} tasks/s)",
        ratio * 100.0,
        far.tasks_per_s(),
        near.tasks_per_s()
    );
}

const PARTITION: &str = "a_partition_is_seen_at_once_and_healed_in_seconds_with_every_answer_kept";

/// The WAN is cut mid-run for 12 s: the lookup says so within 3 s, its nodes go on with the
/// jobs it holds, and after the heal it delivers their answers, takes back the jobs of lease
/// responses lost in the cut, and dispatches again within seconds. Every task gets exactly
/// one answer.
#[test]
fn a_partition_is_seen_at_once_and_healed_in_seconds_with_every_answer_kept() {
    if !netns::isolated_child(PARTITION, Duration::from_secs(300)) {
        return;
    }
    let Some((_dir, mut g)) = wan_grid(Duration::from_millis(150), &[]) else {
        return;
    };
    let rec = g
        .partition_run(600, Duration::from_secs(180), Duration::from_secs(12))
        .unwrap();
    print_run("600 tasks, 150 ms, cut 12 s", &rec.run, &g);
    let noticed = rec
        .noticed
        .expect("rjs-lookup status did not say the web server was unreachable within 10 s");
    let resumed = rec.resumed().expect("no task finished after the heal");
    let stall = rec.stall().unwrap_or_default();
    println!(
        "figure: unreachable said after {:.1} s; after the heal, answers flowed again in {:.1} s, \
         longest stall {:.1} s",
        noticed.as_secs_f64(),
        resumed.as_secs_f64(),
        stall.as_secs_f64()
    );
    assert!(noticed <= Duration::from_secs(3), "{noticed:?}");
    assert!(resumed <= Duration::from_secs(5), "{resumed:?}");
    // Lease responses lost in the partition are taken back, not left to lapse (60 s).
    assert!(stall <= Duration::from_secs(10), "{stall:?}");
    let log = std::fs::read_to_string(g.grid().dir().join("logs").join("lookup.log")).unwrap();
    assert_eq!(
        log.matches("web server unreachable").count(),
        1,
        "the outage is logged once:\n{log}"
    );
    for l in log.lines().filter(|l| l.contains("WARN")) {
        println!("figure: lookup warned: {l}");
    }
}

const RESTART: &str = "a_lookup_killed_mid_run_takes_its_jobs_back_when_restarted";

/// The lookup is killed with SIGKILL mid-run and started 3 s later: it takes back at once
/// the jobs the web server says it holds (their leases are 60 s), so the run does not stall
/// until they lapse.
#[test]
fn a_lookup_killed_mid_run_takes_its_jobs_back_when_restarted() {
    if !netns::isolated_child(RESTART, Duration::from_secs(300)) {
        return;
    }
    let Some((_dir, mut g)) = wan_grid(Duration::from_millis(150), &[]) else {
        return;
    };
    let rec = g
        .lookup_restart(600, Duration::from_secs(180), Duration::from_secs(3))
        .unwrap();
    print_run("600 tasks, 150 ms, lookup killed", &rec.run, &g);
    let resumed = rec.resumed().expect("no task finished after the restart");
    let stall = rec.stall().unwrap_or_default();
    println!(
        "figure: after the restart: first answer in {:.1} s, longest stall {:.1} s",
        resumed.as_secs_f64(),
        stall.as_secs_f64()
    );
    assert!(resumed <= Duration::from_secs(10), "{resumed:?}");
    assert!(stall <= Duration::from_secs(10), "{stall:?}");
}

const WS_RESTART: &str = "the_lookup_reconnects_within_2_s_of_a_restarted_web_server";

/// The web server is stopped mid-run and started again: the lookup reconnects within 2 s of
/// it listening, and every task gets its answer.
#[test]
fn the_lookup_reconnects_within_2_s_of_a_restarted_web_server() {
    if !netns::isolated_child(WS_RESTART, Duration::from_secs(300)) {
        return;
    }
    let Some((_dir, mut g)) = wan_grid(Duration::from_millis(150), &[]) else {
        return;
    };
    let rec = g.webserver_restart(400, Duration::from_secs(180)).unwrap();
    print_run("400 tasks, 150 ms, web server restarted", &rec.run, &g);
    let back = rec
        .reconnected
        .expect("the lookup did not reconnect within 30 s");
    println!(
        "figure: reconnected {:.1} s after the web server listened",
        back.as_secs_f64()
    );
    assert!(back <= Duration::from_secs(2), "{back:?}");
}

const LOSS: &str = "every_task_is_answered_once_across_a_lossy_wan";

/// 150 ms and 5% loss each way: slower, never wrong.
#[test]
fn every_task_is_answered_once_across_a_lossy_wan() {
    if !netns::isolated_child(LOSS, Duration::from_secs(300)) {
        return;
    }
    let Some((_dir, mut g)) = wan_grid(Duration::from_millis(150), &[]) else {
        return;
    };
    g.loss(0.05).unwrap();
    let r = g.run(400, Duration::from_secs(180), |_, _| Ok(())).unwrap();
    print_run("400 tasks, 150 ms, 5% loss", &r, &g);
    g.loss(0.0).unwrap();
}

const LINK: &str = "a_node_that_loses_its_link_costs_no_answer";

/// Node 1's LAN link goes down for 2 s mid-run: its jobs go to node 2, it is not dialled
/// over and over while gone, and it takes work again once back.
#[test]
fn a_node_that_loses_its_link_costs_no_answer() {
    if !netns::isolated_child(LINK, Duration::from_secs(300)) {
        return;
    }
    let Some((_dir, mut g)) = wan_grid(Duration::from_millis(150), &[]) else {
        return;
    };
    let (mut down_at, mut up_at) = (None, None);
    let r = g
        .run(2000, Duration::from_secs(180), |g, at| {
            if down_at.is_none() && at > Duration::from_millis(500) {
                g.lan().lan_link("node-1", false)?;
                down_at = Some(at);
            }
            if let (Some(d), None) = (down_at, up_at)
                && at > d + Duration::from_secs(2)
            {
                g.lan().lan_link("node-1", true)?;
                up_at = Some(at);
            }
            Ok(())
        })
        .unwrap();
    print_run("2000 tasks, 150 ms, node-1 off the LAN for 2 s", &r, &g);
    let log = std::fs::read_to_string(g.grid().dir().join("logs").join("lookup.log")).unwrap();
    let dials = log
        .lines()
        .filter(|l| l.contains("node unreachable") && l.contains("node-1"))
        .count();
    println!("figure: node-1 found unreachable {dials} times while off the LAN");
    assert!(
        up_at.is_some(),
        "the run ended before node-1 came back: make it longer"
    );
    assert!(
        dials <= 8,
        "node-1 was dialled {dials} times while gone:\n{log}"
    );
}

const GIVE_BACK: &str = "a_lookup_gives_back_what_it_cannot_start_when_its_nodes_leave";

/// Both nodes are killed mid-run: the lookup gives back to the web server the jobs it had
/// leased ahead (but a few), rather than holding them with nobody to run them; when the
/// nodes come back, the run completes.
#[test]
fn a_lookup_gives_back_what_it_cannot_start_when_its_nodes_leave() {
    if !netns::isolated_child(GIVE_BACK, Duration::from_secs(300)) {
        return;
    }
    let Some((_dir, mut g)) = wan_grid(Duration::from_millis(150), &[]) else {
        return;
    };
    let (mut killed, mut held_then, mut given_back, mut restarted) = (None, 0, None, false);
    let r = g
        .run(3000, Duration::from_secs(180), |g, at| {
            // Once the lookup leases ahead at full pace.
            if killed.is_none() && g.states().done >= 800 {
                held_then = g.states().leased;
                for i in 0..2 {
                    g.grid_mut().kill_node(i, libc::SIGKILL)?;
                }
                killed = Some(at);
            }
            if let (Some(k), None) = (killed, given_back) {
                let leased = g.states().leased;
                if leased <= 20 {
                    given_back = Some(at - k);
                } else if at > k + Duration::from_secs(30) {
                    anyhow::bail!("{leased} jobs still leased 30 s after the nodes left");
                }
            }
            if given_back.is_some() && !restarted {
                restarted = true;
                for i in 0..2 {
                    g.grid_mut().start_node(i)?;
                }
            }
            Ok(())
        })
        .unwrap();
    print_run(
        "3000 tasks, 150 ms, both nodes killed and started again",
        &r,
        &g,
    );
    let given_back = given_back.expect("the run ended before the nodes were killed");
    println!(
        "figure: {held_then} jobs leased when the nodes left; all but 20 given back after {:.1} s",
        given_back.as_secs_f64()
    );
    assert!(
        held_then > 20,
        "too little leased ahead to tell ({held_then})"
    );
    assert!(given_back <= Duration::from_secs(10), "{given_back:?}");
}
