//! The raw command-line side of the configuration: the flags ([`ConfigArgs`], for clap) and
//! what they override ([`Overrides`]). Nothing is checked here but syntax; ranges are checked
//! when the configuration is resolved (`super::resolve`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use rjs_cmd::units::size_arg;

use super::{UnknownAuthorPolicy, parse_duration};

/// Command-line overrides; every `Some` (or non-empty list) wins over the file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    /// Read this file instead of `<data>/node.toml` (it must exist).
    pub config: Option<PathBuf>,
    pub slots: Option<usize>,
    pub groups: Vec<String>,
    pub listen: Option<SocketAddr>,
    pub unknown_authors: Option<UnknownAuthorPolicy>,
    pub prompt_timeout_secs: Option<u64>,
    pub compile_timeout_secs: Option<u64>,
    pub only_when_idle: Option<bool>,
    pub idle_load_per_core: Option<f64>,
    /// `Some(false)`: `--no-announce`.
    pub announce: Option<bool>,
    pub announce_interval: Option<Duration>,
    pub interfaces: Vec<String>,
    pub advertise: Vec<IpAddr>,
    pub scratch_dir: Option<PathBuf>,
    /// `--max-time`, milliseconds.
    pub max_time_ms: Option<u64>,
    /// `--max-memory`, bytes.
    pub max_memory_bytes: Option<u64>,
    /// `--max-output`, bytes.
    pub max_output_bytes: Option<u64>,
    /// `--max-stdout`, bytes.
    pub max_stdout_bytes: Option<u64>,
    /// `--loadavg-file` (hidden, for tests): read the load average from this file instead
    /// of `/proc/loadavg`.
    pub loadavg_file: Option<PathBuf>,
    pub job_nice: Option<i32>,
}

/// Where the node keeps its files: the flags every command takes (for commands that need
/// nothing else, the whole configuration they read).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DataArgs {
    /// Data directory [default: $RJS_HOME/compute or ~/.local/share/rjs/compute].
    #[arg(long, value_name = "DIR", env = "RJS_COMPUTE_DATA", global = true)]
    pub data: Option<PathBuf>,
    /// Configuration file [default: <data>/node.toml].
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
}

impl DataArgs {
    /// The overrides of these flags alone.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            data_dir: self.data.clone(),
            config: self.config.clone(),
            ..Overrides::default()
        }
    }
}

/// The configuration flags, ready to `#[command(flatten)]` into a clap command.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Jobs run at the same time [default: number of cores].
    #[arg(long)]
    pub slots: Option<usize>,
    /// A group this node serves (repeatable) [default: /compute].
    #[arg(long = "group", value_name = "GROUP")]
    pub groups: Vec<String>,
    /// Address of the job server [default: 0.0.0.0:7443].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Jobs from unknown authors: ask on the terminal, or refuse [default: ask].
    #[arg(long, value_name = "POLICY")]
    pub unknown_authors: Option<UnknownAuthorPolicy>,
    /// Seconds the owner has to answer the trust prompt [default: 60].
    #[arg(long, value_name = "SECS")]
    pub prompt_timeout: Option<u64>,
    /// Seconds compiling a job's module may take, apart from the job's own time limit
    /// [default: 600].
    #[arg(long, value_name = "SECS")]
    pub compile_timeout: Option<u64>,
    /// Take jobs only while the PC is idle.
    #[arg(long)]
    pub only_when_idle: bool,
    /// Load per core under which the PC counts as idle [default: 0.5].
    #[arg(long, value_name = "LOAD")]
    pub idle_load_per_core: Option<f64>,
    /// Make the tasks' scratch directory in DIR (e.g. /dev/shm) [default: <data>/scratch].
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    /// Most CPU time a job may ask for, e.g. 90s, 30m, 2h [default: 1h; at most 24h].
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub max_time: Option<Duration>,
    /// Most memory a job may ask for: bytes, or a number with K, M or G [default: 1G].
    #[arg(long, value_name = "SIZE", value_parser = size_arg)]
    pub max_memory: Option<u64>,
    /// Most bytes a job may write to out/ [default: 256M].
    #[arg(long, value_name = "SIZE", value_parser = size_arg)]
    pub max_output: Option<u64>,
    /// Most bytes of stdout, and of stderr, a job may ask for [default: 16M].
    #[arg(long, value_name = "SIZE", value_parser = size_arg)]
    pub max_stdout: Option<u64>,
    /// CPU priority of jobs, as a nice value 0..=19 (higher: gentler on the PC) [default: 10].
    #[arg(long, value_name = "NICE")]
    pub job_nice: Option<i32>,
    /// Test aid: read the 1-minute load average from this file (in the format of
    /// /proc/loadavg) instead of /proc/loadavg.
    #[arg(long, value_name = "PATH", hide = true)]
    pub loadavg_file: Option<PathBuf>,
}

impl ConfigArgs {
    /// The overrides of every flag given.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            slots: self.slots,
            groups: self.groups.clone(),
            listen: self.listen,
            unknown_authors: self.unknown_authors,
            prompt_timeout_secs: self.prompt_timeout,
            compile_timeout_secs: self.compile_timeout,
            only_when_idle: self.only_when_idle.then_some(true),
            idle_load_per_core: self.idle_load_per_core,
            scratch_dir: self.scratch_dir.clone(),
            // Sub-millisecond parts are dropped; 0 then fails the range check.
            max_time_ms: self
                .max_time
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            max_memory_bytes: self.max_memory,
            max_output_bytes: self.max_output,
            max_stdout_bytes: self.max_stdout,
            loadavg_file: self.loadavg_file.clone(),
            job_nice: self.job_nice,
            ..self.data.overrides()
        }
    }
}
