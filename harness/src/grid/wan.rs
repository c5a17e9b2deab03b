//! The grid as users deploy it: the web server on one host, the lookup and the nodes on a
//! LAN segment of their own, a WAN between the lookup and the web server. Built from
//! [`crate::hosts::Lan`] (one namespace per host on a bridge, multicast only there), a WAN
//! link from the caller's namespace, where the web server runs, to the lookup's host, and a
//! [`WanLink`] proxy on it that delays each direction. Loss and partitions are iptables rules
//! on that link. The author (this process) reaches the web server directly, on loopback.
//!
//! Used by the multi-host tests (`tests/tests/wan.rs`) and the WAN benchmark
//! (`benches/wan.rs`).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rjs_wire::api::{JobState, StateCounts, SubmissionSummary, UploadResponse};

use super::{GridOptions, LocalGrid, NodeOptions, Placement};
use crate::hosts::Lan;
use crate::wan::{WanLink, WanStats};

/// The lookup's host on the LAN.
pub const LOOKUP_HOST: &str = "lookup";

/// What to build.
#[derive(Debug, Clone)]
pub struct WanGridOptions {
    /// Where the grid is laid out (empty or new).
    pub dir: PathBuf,
    /// Compute nodes, each on a host of its own.
    pub nodes: usize,
    pub slots_per_node: u32,
    /// Round-trip time of the WAN link.
    pub rtt: Duration,
    /// Extra `rjs-lookup serve` arguments.
    pub lookup_args: Vec<String>,
    /// Node announcement interval.
    pub announce_interval: Duration,
}

impl WanGridOptions {
    /// Two nodes of two slots, 150 ms round trip.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        WanGridOptions {
            dir: dir.into(),
            nodes: 2,
            slots_per_node: 2,
            rtt: Duration::from_millis(150),
            lookup_args: Vec::new(),
            announce_interval: Duration::from_millis(500),
        }
    }
}

/// A running multi-host grid. Dropping it stops the processes, then the link, then removes
/// the hosts.
pub struct WanGrid {
    grid: LocalGrid,
    link: WanLink,
    lan: Lan,
    /// The job states of the run in progress, as its last poll saw them.
    states: StateCounts,
}

/// How a batch of tasks went ([`WanGrid::run`]).
#[derive(Debug, Clone)]
pub struct RunReport {
    pub tasks: u32,
    /// Upload to the poll that saw every task done.
    pub elapsed: Duration,
    /// Tasks done over time (since the upload), one sample per poll.
    pub progress: Vec<(Duration, u64)>,
}

impl RunReport {
    pub fn tasks_per_s(&self) -> f64 {
        f64::from(self.tasks) / self.elapsed.as_secs_f64()
    }

    /// The longest time between two polls during which no task finished, from `from` on.
    pub fn longest_stall_after(&self, from: Duration) -> Duration {
        let mut longest = Duration::ZERO;
        let mut since: Option<(Duration, u64)> = None;
        for &(at, done) in &self.progress {
            match since {
                Some((t, d)) if d == done => longest = longest.max(at.saturating_sub(t)),
                _ => since = Some((at, done)),
            }
            if at < from {
                since = Some((at, done));
            }
        }
        longest
    }

    /// When the count of done tasks first moved after `t`.
    pub fn first_progress_after(&self, t: Duration) -> Option<Duration> {
        let base = self
            .progress
            .iter()
            .filter(|(at, _)| *at <= t)
            .map(|(_, d)| *d)
            .next_back()
            .unwrap_or(0);
        self.progress
            .iter()
            .find(|(at, d)| *at > t && *d > base)
            .map(|(at, _)| *at - t)
    }
}

impl WanGrid {
    /// Builds the hosts and the link, then starts the grid on them.
    pub fn start(opts: WanGridOptions) -> Result<WanGrid> {
        crate::hosts::available().context("building test hosts")?;
        let node_names: Vec<String> = (1..=opts.nodes).map(|i| format!("node-{i}")).collect();
        let mut names = vec![LOOKUP_HOST];
        names.extend(node_names.iter().map(String::as_str));
        let mut lan = Lan::new(&names)?;
        let here = lan.wan_link(LOOKUP_HOST)?;
        let ws_port = free_port()?;
        let ws_addr = SocketAddr::from(([127, 0, 0, 1], ws_port));
        let link = WanLink::start(SocketAddr::from((here, 0)), ws_addr, opts.rtt / 2)?;
        let nodes: Vec<&str> = node_names.iter().map(String::as_str).collect();
        let mut placement = Placement::on_lan(&lan, LOOKUP_HOST, &nodes)?;
        placement.webserver_listen = Some(ws_addr.to_string());
        placement.webserver_hosts = vec![here.to_string()];
        placement.lookup_webserver_url = Some(format!("https://{}", link.addr()));
        let mut g = GridOptions::new(&opts.dir);
        g.nodes = opts.nodes;
        g.slots_per_node = opts.slots_per_node;
        g.announce_interval = opts.announce_interval;
        g.lookup_args = opts.lookup_args.clone();
        g.placement = placement;
        g.node_options = (0..opts.nodes)
            .map(|_| NodeOptions {
                mflops: Some(1000.0),
                ..NodeOptions::default()
            })
            .collect();
        let grid = LocalGrid::start(g)?;
        Ok(WanGrid {
            grid,
            link,
            lan,
            states: StateCounts::default(),
        })
    }

    pub fn grid(&self) -> &LocalGrid {
        &self.grid
    }

    pub fn grid_mut(&mut self) -> &mut LocalGrid {
        &mut self.grid
    }

    pub fn link(&self) -> &WanLink {
        &self.link
    }

    pub fn lan(&self) -> &Lan {
        &self.lan
    }

    /// The job states of the run in progress at its last poll (for a `during` callback).
    pub fn states(&self) -> &StateCounts {
        &self.states
    }

    pub fn wan_stats(&self) -> WanStats {
        self.link.stats()
    }

    /// Cuts (`true`) or heals the WAN between the lookup and the web server.
    pub fn partition(&self, cut: bool) -> Result<()> {
        self.lan.partition(LOOKUP_HOST, cut)
    }

    /// Packet loss on the WAN, each way.
    pub fn loss(&self, p: f64) -> Result<()> {
        self.lan.wan_loss(LOOKUP_HOST, p)
    }

    /// A copy of the `hello` sample with `tasks` tasks, in `dir`.
    pub fn hello_job(&self, tasks: u32) -> Result<PathBuf> {
        hello_job(&self.grid.dir().join(format!("hello-{tasks}")), tasks)
    }

    /// Uploads `tasks` hello tasks and waits until all are done (at most `timeout`), calling
    /// `during(elapsed)` at each poll (every 100 ms) — to cut the link or kill a process
    /// mid-run. With `RJS_WAN_TRACE` set, prints the lookup's counters every 500 ms. Checks through the web server's own job list that every task has exactly one
    /// job, done, with an answer.
    pub fn run(
        &mut self,
        tasks: u32,
        timeout: Duration,
        mut during: impl FnMut(&mut WanGrid, Duration) -> Result<()>,
    ) -> Result<RunReport> {
        let job = self.hello_job(tasks)?;
        let bundle = self.grid.pack(&job)?;
        let bytes =
            std::fs::read(&bundle).with_context(|| format!("reading {}", bundle.display()))?;
        let t0 = Instant::now();
        // Always new jobs: a run of the same size packed within the same second is the same
        // bundle, which a plain upload would answer with its finished jobs.
        let up = self.grid.api().upload(bytes, true)?;
        ensure!(
            up.tasks == tasks,
            "uploaded {} tasks, not {tasks}",
            up.tasks
        );
        let mut progress = Vec::new();
        // RJS_WAN_TRACE=1: the lookup's counters every 500 ms, to see where a run waits.
        let trace = std::env::var_os("RJS_WAN_TRACE").is_some();
        let mut next_trace = Duration::ZERO;
        loop {
            let at = t0.elapsed();
            let s = self.summary(&up.bundle_id)?;
            progress.push((at, s.states.done));
            self.states = s.states;
            if s.states.failed > 0 {
                bail!(
                    "{} of {tasks} tasks failed; logs in {}",
                    s.states.failed,
                    self.grid.dir().join("logs").display()
                );
            }
            if s.states.done >= u64::from(tasks) {
                let report = RunReport {
                    tasks,
                    elapsed: at,
                    progress,
                };
                self.check_one_answer_each(&up, tasks)?;
                return Ok(report);
            }
            if at > timeout {
                bail!(
                    "only {} of {tasks} tasks done after {timeout:?}; logs in {}",
                    s.states.done,
                    self.grid.dir().join("logs").display()
                );
            }
            crate::signals::check().context("waiting for the tasks")?;
            if trace && at >= next_trace {
                next_trace = at + Duration::from_millis(500);
                if let Ok(st) = self.grid.lookup_status() {
                    eprintln!(
                        "  {:5.1} s: done {:>6}; lookup: queued {}, running {}, spooled {}, \
                         leased {}, answers {}{}",
                        at.as_secs_f64(),
                        s.states.done,
                        st.queued,
                        st.running,
                        st.spooled,
                        st.leased_total,
                        st.answers_total,
                        if st.upstream_down {
                            ", web server unreachable"
                        } else {
                            ""
                        }
                    );
                }
            }
            during(self, at)?;
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn summary(&self, bundle: &str) -> Result<SubmissionSummary> {
        let list = self.grid.api().submissions(Some(bundle))?;
        list.submissions
            .into_iter()
            .next()
            .with_context(|| format!("no submission of bundle {bundle}"))
    }

    /// Every task of the upload has one job, done, whose answer the web server serves.
    fn check_one_answer_each(&self, up: &UploadResponse, tasks: u32) -> Result<()> {
        let mine: std::collections::HashSet<i64> = up.jobs.iter().map(|j| j.id).collect();
        ensure!(
            mine.len() == tasks as usize,
            "the upload made {} jobs, not {tasks}",
            mine.len()
        );
        let mut jobs = self.grid.api().jobs(Some(&up.bundle_id))?.jobs;
        // This upload's jobs (the same bundle may have run before).
        jobs.retain(|j| mine.contains(&j.id));
        let mut seen = vec![0u32; tasks as usize];
        for j in &jobs {
            ensure!(
                j.state == JobState::Done,
                "job {} (task {}) is {:?}",
                j.id,
                j.task,
                j.state
            );
            ensure!(
                j.answer_bytes.is_some_and(|s| s > 0),
                "job {} is done without an answer",
                j.id
            );
            *seen
                .get_mut(j.task as usize)
                .with_context(|| format!("job {} has task {} of {tasks}", j.id, j.task))? += 1;
        }
        if let Some(t) = seen.iter().position(|&n| n != 1) {
            bail!("task {t} has {} jobs, not one", seen[t]);
        }
        Ok(())
    }
}

/// A free TCP port on 127.0.0.1 of the caller's namespace (a private one: nothing else
/// takes it before the web server binds it).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// A copy of the `hello` sample in `dir` with `tasks` tasks.
pub fn hello_job(dir: &Path, tasks: u32) -> Result<PathBuf> {
    super::job_copy(&crate::paths::sample("hello"), dir, |m| {
        m.insert("tasks".into(), tasks.into());
    })?;
    Ok(dir.to_owned())
}

/// What a fault did to a run ([`WanGrid::lookup_restart`], [`WanGrid::partition_run`],
/// [`WanGrid::webserver_restart`]).
#[derive(Debug, Clone)]
pub struct Recovery {
    pub run: RunReport,
    /// Since the upload: when the fault was healed (the process started again, the link
    /// healed), if the run lasted that long.
    pub healed_at: Option<Duration>,
    /// How long `rjs-lookup status` took to say the web server was unreachable.
    pub noticed: Option<Duration>,
    /// How long after the heal the lookup said the web server was reachable again.
    pub reconnected: Option<Duration>,
}

impl Recovery {
    /// From the heal to the first task done after it.
    pub fn resumed(&self) -> Option<Duration> {
        self.healed_at
            .and_then(|t| self.run.first_progress_after(t))
    }

    /// The longest time without a task done after the heal.
    pub fn stall(&self) -> Option<Duration> {
        self.healed_at.map(|t| self.run.longest_stall_after(t))
    }
}

/// When a fault starts: this long after the upload.
const FAULT_AT: Duration = Duration::from_secs(1);

impl WanGrid {
    /// How long `rjs-lookup status` took to satisfy `ok` (polled every 50 ms), if it did
    /// within `timeout`.
    pub fn status_within(
        &self,
        timeout: Duration,
        ok: impl Fn(&super::StatusResponse) -> bool,
    ) -> Option<Duration> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if self.grid.lookup_status().is_ok_and(|s| ok(&s)) {
                return Some(t.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// `tasks` tasks; 1 s in, the lookup is killed with SIGKILL and started again `down`
    /// later.
    pub fn lookup_restart(
        &mut self,
        tasks: u32,
        timeout: Duration,
        down: Duration,
    ) -> Result<Recovery> {
        let (mut killed, mut restarted) = (None, None);
        let run = self.run(tasks, timeout, |g, at| {
            if killed.is_none() && at > FAULT_AT {
                g.grid.kill_lookup(libc::SIGKILL)?;
                killed = Some(at);
            }
            if let (Some(k), None) = (killed, restarted)
                && at > k + down
            {
                let t = Instant::now();
                g.grid.start_lookup()?;
                restarted = Some(at + t.elapsed());
            }
            Ok(())
        })?;
        Ok(Recovery {
            run,
            healed_at: restarted,
            noticed: None,
            reconnected: None,
        })
    }

    /// `tasks` tasks; 1 s in, the WAN is cut for `cut_for`.
    pub fn partition_run(
        &mut self,
        tasks: u32,
        timeout: Duration,
        cut_for: Duration,
    ) -> Result<Recovery> {
        let (mut cut_at, mut healed_at, mut noticed) = (None, None, None);
        let run = self.run(tasks, timeout, |g, at| {
            if cut_at.is_none() && at > FAULT_AT {
                g.partition(true)?;
                cut_at = Some(at);
                noticed = g.status_within(Duration::from_secs(10), |s| s.upstream_down);
            }
            if let (Some(c), None) = (cut_at, healed_at)
                && at > c + cut_for
            {
                g.partition(false)?;
                healed_at = Some(at);
            }
            Ok(())
        })?;
        Ok(Recovery {
            run,
            healed_at,
            noticed,
            reconnected: None,
        })
    }

    /// `tasks` tasks; 1 s in, the web server is killed with SIGKILL, and started again 2 s
    /// after the lookup noticed.
    pub fn webserver_restart(&mut self, tasks: u32, timeout: Duration) -> Result<Recovery> {
        let (mut done, mut noticed, mut back, mut listening) = (false, None, None, None);
        let run = self.run(tasks, timeout, |g, at| {
            if !done && at > FAULT_AT {
                done = true;
                let call = Instant::now();
                g.grid.kill_webserver(libc::SIGKILL)?;
                noticed = g.status_within(Duration::from_secs(10), |s| s.upstream_down);
                ensure!(
                    noticed.is_some(),
                    "the lookup did not notice the web server was gone"
                );
                std::thread::sleep(Duration::from_secs(2));
                g.grid.restart_webserver()?;
                listening = Some(at + call.elapsed());
                back = g.status_within(Duration::from_secs(30), |s| !s.upstream_down);
            }
            Ok(())
        })?;
        Ok(Recovery {
            run,
            healed_at: listening,
            noticed,
            reconnected: back,
        })
    }
}
