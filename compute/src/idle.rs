//! The idle policy: a node may be told to run jobs only while its PC is otherwise idle.
//!
//! "Idle" is judged from the system's 1-minute load average (`/proc/loadavg`), less the
//! node's own running jobs (each keeps about one core busy, and the load average counts it),
//! compared with `load_per_core × cores`. The load average is a moving average: a job that
//! has just ended still weighs on it for a minute or so, and the owner's new work shows up
//! only gradually. That is good enough for "do not compete with the person at the
//! keyboard"; it is not a scheduler.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the kernel publishes the load averages.
pub const LOADAVG_PATH: &str = "/proc/loadavg";

/// The owner's idle policy (`[idle]` in `node.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdlePolicy {
    /// Take jobs only while the PC is idle.
    #[serde(default)]
    pub only_when_idle: bool,
    /// Load per core (besides the node's own jobs) under which the PC counts as idle.
    #[serde(default = "IdlePolicy::default_load_per_core")]
    pub load_per_core: f64,
    /// Where the load average is read: `None` for [`LOADAVG_PATH`]. Set only by the hidden
    /// `--loadavg-file` flag, so that tests can play a busy or an idle PC; not a key of the
    /// file.
    #[serde(skip)]
    pub loadavg_file: Option<PathBuf>,
}

impl IdlePolicy {
    pub const DEFAULT_LOAD_PER_CORE: f64 = 0.5;

    fn default_load_per_core() -> f64 {
        Self::DEFAULT_LOAD_PER_CORE
    }

    /// Whether a new job may start now, given how many of the node's own jobs are running.
    /// `Err` carries the reason, e.g. `not idle: load 3.20 with 0 own jobs (threshold 1.00 =
    /// 0.5 per core × 2 cores)`. Always `Ok` when `only_when_idle` is off. A load average
    /// that cannot be read counts as "not idle" (the owner asked for caution).
    pub fn check(&self, own_jobs: usize) -> Result<(), String> {
        if !self.only_when_idle {
            return Ok(());
        }
        let source = self
            .loadavg_file
            .as_deref()
            .unwrap_or(Path::new(LOADAVG_PATH));
        let load = read_load1(source)
            .map_err(|e| format!("not idle: cannot read the load average: {e}"))?;
        self.evaluate(load, own_jobs, online_cores())
    }

    /// The decision of [`check`](Self::check) for given numbers (pure, for tests and for
    /// callers that sample the load themselves).
    pub fn evaluate(&self, load1: f64, own_jobs: usize, cores: usize) -> Result<(), String> {
        if !self.only_when_idle {
            return Ok(());
        }
        let cores = cores.max(1);
        let threshold = self.load_per_core * cores as f64;
        let others = (load1 - own_jobs as f64).max(0.0);
        if others < threshold {
            Ok(())
        } else {
            Err(format!(
                "not idle: load {load1:.2} with {own_jobs} own job{} (threshold {threshold:.2} = {} per core × {cores} core{})",
                if own_jobs == 1 { "" } else { "s" },
                self.load_per_core,
                if cores == 1 { "" } else { "s" },
            ))
        }
    }
}

impl Default for IdlePolicy {
    fn default() -> Self {
        IdlePolicy {
            only_when_idle: false,
            load_per_core: Self::DEFAULT_LOAD_PER_CORE,
            loadavg_file: None,
        }
    }
}

/// Reads the 1-minute load average from a `/proc/loadavg`-style file.
pub fn read_load1(path: &Path) -> std::io::Result<f64> {
    let text = std::fs::read_to_string(path)?;
    parse_load1(&text).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unexpected contents of {}: {text:?}", path.display()),
        )
    })
}

/// Parses the first field of `/proc/loadavg` (`"0.52 0.58 0.59 1/389 12345"`).
pub fn parse_load1(text: &str) -> Option<f64> {
    let v: f64 = text.split_whitespace().next()?.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v)
}

/// Number of online CPUs of the whole system (what the load average is relative to; not
/// limited by this process's CPU affinity). At least 1.
pub fn online_cores() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n >= 1 {
        n as usize
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(per_core: f64) -> IdlePolicy {
        IdlePolicy {
            only_when_idle: true,
            load_per_core: per_core,
            loadavg_file: None,
        }
    }

    #[test]
    fn off_always_idle() {
        assert!(IdlePolicy::default().evaluate(100.0, 0, 1).is_ok());
    }

    #[test]
    fn busy_pc_refused_with_reason() {
        let err = on(0.5).evaluate(3.2, 0, 2).unwrap_err();
        assert_eq!(
            err,
            "not idle: load 3.20 with 0 own jobs (threshold 1.00 = 0.5 per core × 2 cores)"
        );
    }

    #[test]
    fn own_jobs_do_not_count() {
        // Load 2.1 of which 2 are our own jobs: the PC is otherwise idle.
        assert!(on(0.5).evaluate(2.1, 2, 2).is_ok());
        assert!(on(0.5).evaluate(2.1, 1, 2).is_err());
        // More own jobs than load (the average lags): clamps at 0.
        assert!(on(0.5).evaluate(0.3, 4, 2).is_ok());
    }

    #[test]
    fn parses_loadavg() {
        assert_eq!(parse_load1("0.52 0.58 0.59 1/389 12345\n"), Some(0.52));
        assert_eq!(parse_load1(""), None);
        assert_eq!(parse_load1("x 1 2"), None);
        assert_eq!(parse_load1("-1 1 2"), None);
    }

    #[test]
    fn reads_the_real_loadavg() {
        if Path::new(LOADAVG_PATH).exists() {
            assert!(read_load1(Path::new(LOADAVG_PATH)).unwrap() >= 0.0);
        }
        assert!(online_cores() >= 1);
    }

    #[test]
    fn unreadable_load_is_not_idle() {
        let err = read_load1(Path::new("/nonexistent/loadavg")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        let policy = IdlePolicy {
            loadavg_file: Some("/nonexistent/loadavg".into()),
            ..on(0.5)
        };
        let why = policy.check(0).unwrap_err();
        assert!(
            why.starts_with("not idle: cannot read the load average: "),
            "{why}"
        );
    }

    #[test]
    fn check_reads_the_given_load_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("loadavg");
        let policy = IdlePolicy {
            loadavg_file: Some(file.clone()),
            ..on(0.5)
        };
        let cores = online_cores();
        std::fs::write(&file, format!("{}.00 0.10 0.10 1/100 42\n", cores * 10)).unwrap();
        let why = policy.check(0).unwrap_err();
        assert!(why.starts_with("not idle: load "), "{why}");
        std::fs::write(&file, "0.00 0.10 0.10 1/100 42\n").unwrap();
        assert_eq!(policy.check(0), Ok(()));
        // Off: the file is not even read.
        std::fs::remove_file(&file).unwrap();
        let off = IdlePolicy {
            only_when_idle: false,
            ..policy
        };
        assert_eq!(off.check(0), Ok(()));
    }
}
