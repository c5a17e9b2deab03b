//! The node's configuration: a TOML file (`--config FILE`, default `<data>/node.toml`) and
//! command-line overrides. Precedence: flag, then file, then built-in default. See
//! `docs/compute-node.md` ("Configuration").
//!
//! * [`args`]: the flags ([`ConfigArgs`], [`DataArgs`]) and what they override ([`Overrides`]).
//! * `file`: the file's schema (serde).
//! * `resolve`: flag over file over default, every value checked ([`NodeConfig::from_toml`]).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rjs_signer::Limits;
use serde::Deserialize;

use crate::idle::IdlePolicy;

pub mod args;
mod file;
mod resolve;

pub use args::{ConfigArgs, DataArgs, Overrides};

/// Name of the configuration file inside the data directory.
pub const CONFIG_FILE: &str = "node.toml";
/// Largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// Most slots a node may declare.
pub const MAX_SLOTS: usize = 1024;
/// Longest prompt timeout, seconds.
pub const MAX_PROMPT_TIMEOUT_SECS: u64 = 110;
/// Most groups a node may serve.
pub const MAX_GROUPS: usize = 64;
/// Shortest mDNS re-announcement interval.
pub const MIN_ANNOUNCE_INTERVAL: Duration = Duration::from_millis(100);
/// Longest mDNS re-announcement interval.
pub const MAX_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(3600);
/// Most `announce.interfaces` / `announce.advertise` entries.
pub const MAX_ANNOUNCE_ENTRIES: usize = 32;

/// What to do with a job whose author is neither trusted nor blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum UnknownAuthorPolicy {
    /// Ask the owner on the node's terminal, if one is attached (stdin is a terminal and
    /// `/dev/tty` opens); with no terminal the job is refused.
    #[default]
    Ask,
    /// Never ask: refuse every job from an author not in the trust store.
    Refuse,
}

impl UnknownAuthorPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            UnknownAuthorPolicy::Ask => "ask",
            UnknownAuthorPolicy::Refuse => "refuse",
        }
    }
}

/// The most a job may ask for on this node (`[limits]`). A job whose manifest limits exceed
/// any of these is refused (`over-limits`) before its author is even looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxLimits {
    pub max_time_ms: u64,
    pub max_memory_bytes: u64,
    pub max_output_bytes: u64,
    pub max_stdout_bytes: u64,
}

impl Default for MaxLimits {
    fn default() -> Self {
        // The defaults authors are warned against at upload.
        let max = rjs_signer::manifest::NODE_DEFAULT_MAX;
        MaxLimits {
            max_time_ms: max.time_ms,
            max_memory_bytes: max.memory_bytes,
            max_output_bytes: max.output_bytes,
            max_stdout_bytes: max.stdout_bytes,
        }
    }
}

/// Where the node's TLS material lives (written by `rjs-compute join`, used by the job
/// server). Relative paths in the file are relative to the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// The node's certificate (PEM), issued by the cluster CA.
    pub cert: PathBuf,
    /// Its private key (PEM, 0600).
    pub key: PathBuf,
    /// The cluster CA certificate (PEM): the only root the node trusts for lookup servers.
    pub ca: PathBuf,
}

/// How `rjs-compute serve` announces the node on the LAN by mDNS (`[announce]`,
/// `docs/discovery.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceSettings {
    /// Announce at all (default true; `--no-announce` turns it off).
    pub enabled: bool,
    /// Re-announcement interval (default 2 s, 100 ms to 1 h).
    pub interval: Duration,
    /// Network interfaces mDNS may use, by name; empty: all of them.
    pub interfaces: Vec<String>,
    /// Addresses put in the announcement; empty: the job server's address if it listens on
    /// a specific IP, else the addresses of the enabled interfaces.
    pub advertise: Vec<IpAddr>,
}

impl Default for AnnounceSettings {
    fn default() -> Self {
        AnnounceSettings {
            enabled: true,
            interval: crate::announce::DEFAULT_INTERVAL,
            interfaces: Vec::new(),
            advertise: Vec::new(),
        }
    }
}

/// Whether `name` can be a network interface name (1-15 bytes, no `/`, blank or control
/// character): what Linux accepts.
pub fn valid_interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '/' && c != ':')
}

/// The node's resolved configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// The file that was read, if any (none when the default file does not exist).
    pub config_file: Option<PathBuf>,
    /// Holds `node.toml`, `trust.json`, `bench.json`, keys and certificates.
    pub data_dir: PathBuf,
    /// Jobs run at the same time (default: the number of available cores).
    pub slots: usize,
    /// Groups this node serves (default `["/compute"]`).
    pub groups: Vec<String>,
    pub limits: MaxLimits,
    pub unknown_authors: UnknownAuthorPolicy,
    /// How long the owner has to answer the trust prompt (default 60 s).
    pub prompt_timeout: Duration,
    /// How long compiling a job's module may take (default 600 s); not counted in the job's
    /// own time limit.
    pub compile_timeout: Duration,
    pub idle: IdlePolicy,
    /// Address of the job server (default `0.0.0.0:7443`).
    pub listen: SocketAddr,
    pub tls: TlsPaths,
    /// mDNS announcement (`serve` only).
    pub announce: AnnounceSettings,
    /// Where the sandbox makes its scratch directory (tasks' `out/`): `None` for
    /// `<data>/scratch`, else an existing directory (e.g. the RAM filesystem `/dev/shm`) in
    /// which it makes its own private `rjs-scratch-<id>` (see `docs/sandbox.md`).
    pub scratch_dir: Option<PathBuf>,
    /// The nice value (0..=19) jobs run at (default 10): below the owner's programs and the
    /// node itself.
    pub job_nice: i32,
}

/// Parses a duration written for people (`"2s"`, `"500ms"`, `"1m 30s"`: humantime), for
/// the file and the command line alike.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration {text:?}: {e} (e.g. \"2s\", \"500ms\")"))
}

/// A configuration that cannot be used. Every message names where the value came from (the
/// file, or "command line") and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the configuration file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: rjs_signer::fsutil::FileError,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{origin}: {key}: {reason}")]
    Invalid {
        /// The file's path, or `command line`.
        origin: String,
        key: &'static str,
        reason: String,
    },
    #[error("no data directory: pass --data DIR or set RJS_HOME or HOME")]
    NoDataDir,
}

/// The default data directory: `$RJS_HOME/compute`, else `$XDG_DATA_HOME/rjs/compute`, else
/// `~/.local/share/rjs/compute`.
pub fn default_data_dir() -> Option<PathBuf> {
    default_data_dir_from(|k| std::env::var_os(k).filter(|v| !v.is_empty()))
}

fn default_data_dir_from(get: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    if let Some(home) = get("RJS_HOME") {
        return Some(PathBuf::from(home).join("compute"));
    }
    if let Some(data) = get("XDG_DATA_HOME") {
        return Some(PathBuf::from(data).join("rjs").join("compute"));
    }
    get("HOME").map(|h| PathBuf::from(h).join(".local/share/rjs/compute"))
}

impl NodeConfig {
    /// Resolves the configuration: reads `overrides.config`, else `<data>/node.toml` if it
    /// exists, then applies the overrides and checks every value.
    pub fn load(overrides: &Overrides) -> Result<NodeConfig, ConfigError> {
        let data_flag = overrides.data_dir.clone();
        let (path, must_exist) = match &overrides.config {
            Some(p) => (p.clone(), true),
            None => {
                let data = data_flag
                    .clone()
                    .or_else(default_data_dir)
                    .ok_or(ConfigError::NoDataDir)?;
                (data.join(CONFIG_FILE), false)
            }
        };
        let text = match rjs_signer::fsutil::read_bounded(&path, MAX_CONFIG_BYTES) {
            Ok(bytes) => Some(String::from_utf8(bytes).map_err(|_| ConfigError::Parse {
                path: path.clone(),
                message: "not UTF-8 text".into(),
            })?),
            Err(rjs_signer::fsutil::FileError::Io { source, .. })
                if !must_exist && source.kind() == std::io::ErrorKind::NotFound =>
            {
                None
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        match text {
            Some(text) => Self::from_toml(&text, Some(&path), overrides),
            None => Self::from_toml("", None, overrides),
        }
    }

    /// Resolves a configuration from TOML text (`path`: the file it came from, for messages
    /// and for resolving a relative `data_dir`).
    pub fn from_toml(
        text: &str,
        path: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<NodeConfig, ConfigError> {
        resolve::resolve(text, path, overrides)
    }

    /// Whether a job's limits fit this node's maximums; `Err` lists every one that does not,
    /// e.g. `asks for 2 h of time, this node allows at most 1 h`.
    pub fn accepts(&self, limits: &Limits) -> Result<(), String> {
        let m = &self.limits;
        let mut over = Vec::new();
        if limits.time_ms > m.max_time_ms {
            over.push(format!(
                "asks for {} of time, this node allows at most {}",
                fmt_ms(limits.time_ms),
                fmt_ms(m.max_time_ms)
            ));
        }
        for (what, asked, max) in [
            ("memory", limits.memory_bytes, m.max_memory_bytes),
            ("output", limits.output_bytes, m.max_output_bytes),
            ("stdout/stderr", limits.stdout_bytes, m.max_stdout_bytes),
        ] {
            if asked > max {
                over.push(format!(
                    "asks for {} of {what}, this node allows at most {}",
                    ByteSize(asked),
                    ByteSize(max)
                ));
            }
        }
        if over.is_empty() {
            Ok(())
        } else {
            Err(over.join("; "))
        }
    }

    /// Whether this node runs jobs of `group`: a node in `/compute/light` accepts jobs for
    /// `/compute/light` and for its ancestors (`/compute`), not for `/compute/heavy`.
    pub fn accepts_group(&self, group: &str) -> bool {
        self.groups
            .iter()
            .any(|g| rjs_signer::manifest::node_serves(g, group))
    }

    /// `<data>/trust.json`.
    pub fn trust_file(&self) -> PathBuf {
        self.data_dir.join(crate::trust::TRUST_FILE)
    }

    /// `<data>/bench.json`.
    pub fn bench_file(&self) -> PathBuf {
        self.data_dir.join(crate::bench::BENCH_FILE)
    }
}

/// A byte count for people: `256 MiB`, `1.5 GiB`, `100 bytes`.
#[derive(Debug, Clone, Copy)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if n >= size {
                return if n.is_multiple_of(size) {
                    write!(f, "{} {unit}", n / size)
                } else {
                    write!(f, "{:.1} {unit}", n as f64 / size as f64)
                };
            }
        }
        write!(f, "{n} bytes")
    }
}

/// Milliseconds for people: `500 ms`, `60 s`, `1.5 min`, `2 h`.
pub fn fmt_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms.is_multiple_of(3_600_000) {
        format!("{} h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms >= 120_000 {
        format!("{} min", ms / 60_000)
    } else if ms < 120_000 {
        trim(ms as f64 / 1000.0, "s")
    } else if ms < 7_200_000 {
        trim(ms as f64 / 60_000.0, "min")
    } else {
        trim(ms as f64 / 3_600_000.0, "h")
    }
}

fn trim(v: f64, unit: &str) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.1} {unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_data(dir: &Path) -> Overrides {
        Overrides {
            data_dir: Some(dir.to_path_buf()),
            ..Overrides::default()
        }
    }

    fn parse(text: &str, o: &Overrides) -> Result<NodeConfig, ConfigError> {
        NodeConfig::from_toml(text, Some(Path::new("/etc/rjs/node.toml")), o)
    }

    /// The message of the error [`parse`] must end in.
    fn error(text: &str, o: &Overrides) -> String {
        parse(text, o).unwrap_err().to_string()
    }

    /// What an error message must be.
    enum Message {
        Is(&'static str),
        Starts(&'static str),
        Has(&'static str),
    }

    /// Each file text, parsed with its flags, is refused with its message.
    #[track_caller]
    fn assert_errors(cases: &[(&Overrides, &str, Message)]) {
        for (o, text, want) in cases {
            let e = error(text, o);
            match want {
                Message::Is(m) => assert_eq!(e, *m, "{text:?}"),
                Message::Starts(m) => assert!(e.starts_with(m), "{text:?}: {e}"),
                Message::Has(m) => assert!(e.contains(m), "{text:?}: {e}"),
            }
        }
    }

    #[test]
    fn defaults() {
        let c = parse("", &with_data(Path::new("/d"))).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/d"));
        assert_eq!(c.slots, resolve::default_slots());
        assert_eq!(c.job_nice, crate::sandbox::DEFAULT_NICE);
        assert_eq!(c.groups, vec!["/compute"]);
        assert_eq!(c.limits, MaxLimits::default());
        assert_eq!(c.unknown_authors, UnknownAuthorPolicy::Ask);
        assert_eq!(c.prompt_timeout, Duration::from_secs(60));
        assert_eq!(c.idle, IdlePolicy::default());
        assert_eq!(c.listen, "0.0.0.0:7443".parse().unwrap());
        assert_eq!(c.tls.cert, PathBuf::from("/d/node.pem"));
        assert_eq!(c.tls.ca, PathBuf::from("/d/cluster-ca.pem"));
        assert_eq!(c.announce, AnnounceSettings::default());
        assert_eq!(c.scratch_dir, None);
        assert!(c.announce.enabled);
        assert_eq!(c.announce.interval, Duration::from_secs(2));
    }

    #[test]
    fn announce_settings() {
        let o = with_data(Path::new("/d"));
        let text = r#"
            [announce]
            enabled = false
            interval = "500ms"
            interfaces = ["eth0", "lo", "eth0"]
            advertise = ["192.168.1.20", "fe80::1"]
        "#;
        let c = parse(text, &o).unwrap();
        assert_eq!(
            c.announce,
            AnnounceSettings {
                enabled: false,
                interval: Duration::from_millis(500),
                interfaces: vec!["eth0".into(), "lo".into()],
                advertise: vec!["192.168.1.20".parse().unwrap(), "fe80::1".parse().unwrap()],
            }
        );
        // Flags win.
        let flags = Overrides {
            announce: Some(true),
            announce_interval: Some(Duration::from_millis(200)),
            interfaces: vec!["wlan0".into()],
            advertise: vec!["10.0.0.7".parse().unwrap()],
            ..o.clone()
        };
        let c = parse(text, &flags).unwrap();
        assert!(c.announce.enabled);
        assert_eq!(c.announce.interval, Duration::from_millis(200));
        assert_eq!(c.announce.interfaces, vec!["wlan0"]);
        assert_eq!(
            c.announce.advertise,
            vec!["10.0.0.7".parse::<IpAddr>().unwrap()]
        );
        // --no-announce.
        let off = Overrides {
            announce: Some(false),
            ..o.clone()
        };
        assert!(!parse("", &off).unwrap().announce.enabled);

        use Message::*;
        let announce_interval = Overrides {
            announce_interval: Some(Duration::from_millis(10)),
            ..o.clone()
        };
        let interfaces = Overrides {
            interfaces: vec!["a/b".into()],
            ..o.clone()
        };
        assert_errors(&[
            (
                &o,
                "[announce]\ninterval = \"50ms\"",
                Is("/etc/rjs/node.toml: announce.interval: 50ms is not between 100ms and 1h"),
            ),
            (
                &o,
                "[announce]\ninterval = \"soon\"",
                Has("invalid duration \"soon\""),
            ),
            (
                &announce_interval,
                "",
                Is("command line: --announce-interval: 10ms is not between 100ms and 1h"),
            ),
            (
                &interfaces,
                "",
                Is("command line: --interface: \"a/b\" is not a network interface name"),
            ),
            (
                &o,
                "[announce]\nadvertise = [\"0.0.0.0\"]",
                Has("announce.advertise: 0.0.0.0 is not an address"),
            ),
            (
                &o,
                "[announce]\nadvertise = [\"nope\"]",
                Has("invalid IP address"),
            ),
            (&o, "[announce]\nttl = 3", Has("unknown field `ttl`")),
        ]);
    }

    #[test]
    fn file_values_and_flag_precedence() {
        let text = r#"
            data_dir = "nodedata"
            slots = 3
            groups = ["/compute/light"]
            listen = "127.0.0.1:9000"
            unknown_authors = "refuse"
            prompt_timeout_secs = 30
            scratch_dir = "tmp"
            [limits]
            max_time_ms = 5000
            max_memory_bytes = "512M"
            max_output_bytes = 1048576
            [idle]
            only_when_idle = true
            load_per_core = 0.25
            [tls]
            cert = "/abs/cert.pem"
        "#;
        let c = parse(text, &Overrides::default()).unwrap();
        // A relative data_dir in the file is relative to the file's folder.
        assert_eq!(c.data_dir, PathBuf::from("/etc/rjs/nodedata"));
        assert_eq!(c.slots, 3);
        assert_eq!(c.groups, vec!["/compute/light"]);
        assert_eq!(c.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.unknown_authors, UnknownAuthorPolicy::Refuse);
        assert_eq!(c.prompt_timeout, Duration::from_secs(30));
        assert_eq!(c.limits.max_time_ms, 5000);
        assert_eq!(c.limits.max_memory_bytes, 512 << 20);
        assert_eq!(c.limits.max_output_bytes, 1 << 20);
        assert_eq!(
            c.limits.max_stdout_bytes,
            MaxLimits::default().max_stdout_bytes
        );
        assert!(c.idle.only_when_idle);
        assert_eq!(c.idle.load_per_core, 0.25);
        assert_eq!(c.tls.cert, PathBuf::from("/abs/cert.pem"));
        assert_eq!(c.tls.key, PathBuf::from("/etc/rjs/nodedata/node-key.pem"));
        // Relative to the data directory, as the TLS paths.
        assert_eq!(c.scratch_dir, Some(PathBuf::from("/etc/rjs/nodedata/tmp")));

        let o = Overrides {
            data_dir: Some("/flag".into()),
            slots: Some(7),
            groups: vec!["/compute".into(), "/gpu".into()],
            listen: Some("127.0.0.1:1".parse().unwrap()),
            unknown_authors: Some(UnknownAuthorPolicy::Ask),
            prompt_timeout_secs: Some(5),
            only_when_idle: Some(false),
            idle_load_per_core: Some(1.0),
            config: None,
            scratch_dir: Some("/dev/shm".into()),
            ..Overrides::default()
        };
        let c = parse(text, &o).unwrap();
        assert_eq!(c.scratch_dir, Some(PathBuf::from("/dev/shm")));
        assert_eq!(c.data_dir, PathBuf::from("/flag"));
        assert_eq!(c.slots, 7);
        assert_eq!(c.groups, vec!["/compute", "/gpu"]);
        assert_eq!(c.listen, "127.0.0.1:1".parse().unwrap());
        assert_eq!(c.unknown_authors, UnknownAuthorPolicy::Ask);
        assert_eq!(c.prompt_timeout, Duration::from_secs(5));
        assert!(!c.idle.only_when_idle);
        assert_eq!(c.idle.load_per_core, 1.0);
        assert_eq!(c.tls.cert, PathBuf::from("/abs/cert.pem"));
        assert_eq!(c.tls.ca, PathBuf::from("/flag/cluster-ca.pem"));
    }

    #[test]
    fn errors_name_file_and_key() {
        use Message::*;
        let o = with_data(Path::new("/d"));
        let flag = |set: fn(&mut Overrides)| {
            let mut o = o.clone();
            set(&mut o);
            o
        };
        assert_errors(&[
            (&o, "slotz = 3", Starts("/etc/rjs/node.toml: ")),
            (&o, "slotz = 3", Has("unknown field `slotz`")),
            (&o, "[limits]\nmax_cpu = 1", Has("unknown field `max_cpu`")),
            (
                &o,
                "slots = 0",
                Is("/etc/rjs/node.toml: slots: 0 is not between 1 and 1024"),
            ),
            (
                &o,
                "job_nice = 20",
                Is("/etc/rjs/node.toml: job_nice: 20 is not between 0 and 19"),
            ),
            (
                &o,
                "groups = [\"compute\"]",
                Starts("/etc/rjs/node.toml: groups: invalid group \"compute\""),
            ),
            (&o, "groups = []", Has("groups: give 1 to")),
            (
                &o,
                "[limits]\nmax_memory_bytes = \"lots\"",
                Has("invalid size \"lots\""),
            ),
            (
                &o,
                "[limits]\nmax_memory_bytes = \"8G\"",
                Has("limits.max_memory_bytes: 8589934592 is not between"),
            ),
            (
                &o,
                "unknown_authors = \"run\"",
                Has("unknown variant `run`"),
            ),
            (
                &o,
                "prompt_timeout_secs = 0",
                Has("prompt_timeout_secs: 0 is not between 1 and"),
            ),
            (
                &o,
                "[idle]\nload_per_core = -1.0",
                Has("idle.load_per_core"),
            ),
            (
                &flag(|o| o.slots = Some(0)),
                "",
                Is("command line: --slots: 0 is not between 1 and 1024"),
            ),
            (
                &flag(|o| o.job_nice = Some(-1)),
                "job_nice = 5",
                Is("command line: --job-nice: -1 is not between 0 and 19"),
            ),
            (
                &flag(|o| o.groups = vec!["/Compute".into()]),
                "",
                Starts("command line: --group: invalid group"),
            ),
        ]);
        assert_eq!(parse("job_nice = 19", &o).unwrap().job_nice, 19);
        let e = parse("[limits]\nmax_memory_bytes = 8G", &o).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
    }

    /// The flags of [`ConfigArgs`] as clap parses them.
    fn flags(args: &[&str]) -> Result<Overrides, clap::Error> {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            config: ConfigArgs,
        }
        let argv = std::iter::once("rjs-compute").chain(args.iter().copied());
        <Cli as clap::Parser>::try_parse_from(argv).map(|c| c.config.overrides())
    }

    #[test]
    fn limit_flags_override_the_file() {
        let text = r#"
            [limits]
            max_time_ms = 5000
            max_memory_bytes = "512M"
            max_output_bytes = 1048576
            max_stdout_bytes = "1M"
        "#;
        // The file alone.
        let c = parse(text, &with_data(Path::new("/d"))).unwrap();
        assert_eq!(
            c.limits,
            MaxLimits {
                max_time_ms: 5000,
                max_memory_bytes: 512 << 20,
                max_output_bytes: 1 << 20,
                max_stdout_bytes: 1 << 20,
            }
        );
        // Every flag wins over the file, in the file's own size syntax (K, M, G, bytes) and
        // humantime durations.
        let o = flags(&[
            "--data",
            "/d",
            "--max-time",
            "1m 30s",
            "--max-memory",
            "2G",
            "--max-output",
            "64k",
            "--max-stdout",
            "4096",
        ])
        .unwrap();
        assert_eq!(o.max_time_ms, Some(90_000));
        let c = parse(text, &o).unwrap();
        assert_eq!(
            c.limits,
            MaxLimits {
                max_time_ms: 90_000,
                max_memory_bytes: 2 << 30,
                max_output_bytes: 64 << 10,
                max_stdout_bytes: 4096,
            }
        );
        // One flag: the others come from the file, and without a file from the defaults.
        let o = flags(&["--data", "/d", "--max-memory", "64M"]).unwrap();
        let c = parse(text, &o).unwrap();
        assert_eq!(c.limits.max_memory_bytes, 64 << 20);
        assert_eq!(c.limits.max_time_ms, 5000);
        assert_eq!(c.limits.max_stdout_bytes, 1 << 20);
        let c = parse("", &o).unwrap();
        assert_eq!(c.limits.max_memory_bytes, 64 << 20);
        assert_eq!(c.limits.max_time_ms, MaxLimits::default().max_time_ms);
        // The limits decide what is accepted.
        let asks = Limits {
            time_ms: 60_000,
            memory_bytes: 128 << 20,
            output_bytes: 1 << 20,
            stdout_bytes: 1 << 20,
        };
        assert_eq!(
            c.accepts(&asks).unwrap_err(),
            "asks for 128 MiB of memory, this node allows at most 64 MiB"
        );
        // Without flags nothing is overridden.
        assert_eq!(flags(&[]).unwrap(), Overrides::default());
    }

    #[test]
    fn limit_flag_errors() {
        // Syntax: a usage error from the parser, with the file's message.
        for (flag, value) in [
            ("--max-memory", "lots"),
            ("--max-output", "1.5M"),
            ("--max-stdout", "-1"),
        ] {
            let e = flags(&[&format!("{flag}={value}")]).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{e}");
            let text = e.to_string();
            assert!(text.contains(flag), "{text}");
            assert!(
                text.contains(&format!("invalid size {value:?}: use bytes")),
                "{text}"
            );
        }
        let e = flags(&["--max-time", "3600"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(e.to_string().contains("invalid duration \"3600\""), "{e}");

        // Range: named as flags of the command line, in people's units.
        // Each case: the flag and its value, then the message.
        for (args, message) in [
            (
                "--max-time 25h",
                "--max-time: 25 h is not between 1 ms and 24 h",
            ),
            (
                "--max-time 500us",
                "--max-time: 0 ms is not between 1 ms and 24 h",
            ),
            (
                "--max-memory 8G",
                "--max-memory: 8 GiB is not between 64 KiB and 4 GiB",
            ),
            (
                "--max-memory 1K",
                "--max-memory: 1 KiB is not between 64 KiB and 4 GiB",
            ),
            (
                "--max-output 2G",
                "--max-output: 2 GiB is not between 0 bytes and 1 GiB",
            ),
            (
                "--max-stdout 65M",
                "--max-stdout: 65 MiB is not between 0 bytes and 64 MiB",
            ),
        ] {
            let mut all = vec!["--data", "/d"];
            all.extend(args.split(' '));
            assert_eq!(
                error("", &flags(&all).unwrap()),
                format!("command line: {message}")
            );
        }
        // A good flag repairs a bad file value; a bad file value is still reported when
        // no flag overrides it.
        let text = "[limits]\nmax_memory_bytes = \"8G\"";
        let o = flags(&["--data", "/d", "--max-memory", "1G"]).unwrap();
        assert_eq!(parse(text, &o).unwrap().limits.max_memory_bytes, 1 << 30);
        let e = parse(text, &with_data(Path::new("/d")))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "/etc/rjs/node.toml: limits.max_memory_bytes: 8589934592 is not between 65536 and 4294967296"
        );
    }

    #[test]
    fn loadavg_file_is_a_flag_only() {
        let o = flags(&["--data", "/d", "--loadavg-file", "/tmp/load"]).unwrap();
        let c = parse("[idle]\nonly_when_idle = true", &o).unwrap();
        assert!(c.idle.only_when_idle);
        assert_eq!(c.idle.loadavg_file, Some(PathBuf::from("/tmp/load")));
        assert_eq!(
            parse("", &with_data(Path::new("/d")))
                .unwrap()
                .idle
                .loadavg_file,
            None
        );
        let e = parse(
            "[idle]\nloadavg_file = \"/tmp/load\"",
            &with_data(Path::new("/d")),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `loadavg_file`"), "{e}");
    }

    #[test]
    fn load_reads_default_file_and_requires_explicit_one() {
        let dir = tempfile::tempdir().unwrap();
        // No node.toml: defaults.
        let c = NodeConfig::load(&with_data(dir.path())).unwrap();
        assert_eq!(c.config_file, None);
        assert_eq!(c.data_dir, dir.path());
        std::fs::write(dir.path().join(CONFIG_FILE), "slots = 2\n").unwrap();
        let c = NodeConfig::load(&with_data(dir.path())).unwrap();
        assert_eq!(c.slots, 2);
        assert_eq!(c.config_file, Some(dir.path().join(CONFIG_FILE)));
        // Without data_dir in the file and without --data, an explicit file still needs a
        // data dir; with --data it is used.
        let other = dir.path().join("other.toml");
        std::fs::write(&other, "slots = 4\n").unwrap();
        let c = NodeConfig::load(&Overrides {
            config: Some(other.clone()),
            ..with_data(dir.path())
        })
        .unwrap();
        assert_eq!(c.slots, 4);
        let e = NodeConfig::load(&Overrides {
            config: Some(dir.path().join("missing.toml")),
            ..with_data(dir.path())
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("missing.toml"), "{e}");
    }

    #[test]
    fn default_data_dir_order() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        assert_eq!(
            default_data_dir_from(env(&[("RJS_HOME", "/r"), ("HOME", "/h")])),
            Some(PathBuf::from("/r/compute"))
        );
        assert_eq!(
            default_data_dir_from(env(&[("HOME", "/h")])),
            Some(PathBuf::from("/h/.local/share/rjs/compute"))
        );
        assert_eq!(
            default_data_dir_from(env(&[("XDG_DATA_HOME", "/x"), ("HOME", "/h")])),
            Some(PathBuf::from("/x/rjs/compute"))
        );
        assert_eq!(default_data_dir_from(env(&[])), None);
    }

    #[test]
    fn accepts_limits() {
        let c = parse(
            "[limits]\nmax_time_ms = 60000\nmax_memory_bytes = \"256M\"",
            &with_data(Path::new("/d")),
        )
        .unwrap();
        let mut l = Limits {
            time_ms: 60_000,
            memory_bytes: 256 << 20,
            output_bytes: 1 << 20,
            stdout_bytes: 1 << 20,
        };
        assert_eq!(c.accepts(&l), Ok(()));
        l.time_ms = 7_200_000;
        l.memory_bytes = 512 << 20;
        assert_eq!(
            c.accepts(&l).unwrap_err(),
            "asks for 2 h of time, this node allows at most 60 s; \
             asks for 512 MiB of memory, this node allows at most 256 MiB"
        );
    }

    #[test]
    fn groups_match_ancestors() {
        let c = parse("groups = [\"/compute/light\"]", &with_data(Path::new("/d"))).unwrap();
        assert!(c.accepts_group("/compute/light"));
        assert!(c.accepts_group("/compute"));
        assert!(!c.accepts_group("/compute/heavy"));
        assert!(!c.accepts_group("/compute/lig"));
        assert!(!c.accepts_group("/compute/light/x"));
    }

    #[test]
    fn sizes() {
        // The sizes of the file and the flags: the grammar of every RJS program.
        let size = |text: &str| rjs_cmd::units::parse_size(text).ok();
        assert_eq!(size("123"), Some(123));
        assert_eq!(size("64K"), Some(64 << 10));
        assert_eq!(size("256M"), Some(256 << 20));
        assert_eq!(size("1g"), Some(1 << 30));
        assert_eq!(size("M"), None);
        assert_eq!(size("1.5M"), None);
        assert_eq!(size("-1"), None);
        assert_eq!(size("99999999999999G"), None);
        assert_eq!(ByteSize(256 << 20).to_string(), "256 MiB");
        assert_eq!(ByteSize(1536).to_string(), "1.5 KiB");
        assert_eq!(ByteSize(10).to_string(), "10 bytes");
        assert_eq!(fmt_ms(500), "500 ms");
        assert_eq!(fmt_ms(60_000), "60 s");
        assert_eq!(fmt_ms(90_000), "90 s");
        assert_eq!(fmt_ms(600_000), "10 min");
        assert_eq!(fmt_ms(3_600_000), "1 h");
        assert_eq!(fmt_ms(150_000), "2.5 min");
        assert_eq!(fmt_ms(7_200_000), "2 h");
    }
}
