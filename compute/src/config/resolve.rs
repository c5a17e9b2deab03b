//! Resolution: the flags ([`Overrides`]) over the file ([`FileConfig`]) over the built-in
//! defaults, each value then checked. Every setting goes through one [`Setting`]: take the
//! flag, else the file, else the default, then check it, an error naming the flag or the
//! file's key.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rjs_signer::Limits;
use rjs_signer::manifest::valid_group;

use super::file::{FileAnnounce, FileConfig, FileLimits};
use super::{
    AnnounceSettings, ByteSize, ConfigError, MAX_ANNOUNCE_ENTRIES, MAX_ANNOUNCE_INTERVAL,
    MAX_GROUPS, MAX_PROMPT_TIMEOUT_SECS, MAX_SLOTS, MIN_ANNOUNCE_INTERVAL, MaxLimits, NodeConfig,
    Overrides, TlsPaths, default_data_dir, fmt_ms, valid_interface_name,
};

/// How messages name the command line.
const COMMAND_LINE: &str = "command line";

/// A setting's names: its flag on the command line and its key in the file.
#[derive(Debug, Clone, Copy)]
struct Names {
    flag: &'static str,
    key: &'static str,
}

const fn names(flag: &'static str, key: &'static str) -> Names {
    Names { flag, key }
}

/// A value taken from the flag, else the file, else the default, remembering which, so that
/// its check names the flag or the file's key.
struct Setting<'a, T> {
    value: T,
    from_cli: bool,
    names: Names,
    /// The file's name, for messages.
    file: &'a str,
}

impl<T> Setting<'_, T> {
    /// The value if `rule` accepts it; else the error, naming where it came from. `rule`
    /// also learns whether the value came from the command line (to word its reason).
    fn check(self, rule: impl FnOnce(&T, bool) -> Result<(), String>) -> Result<T, ConfigError> {
        match rule(&self.value, self.from_cli) {
            Ok(()) => Ok(self.value),
            Err(reason) => Err(if self.from_cli {
                ConfigError::Invalid {
                    origin: COMMAND_LINE.into(),
                    key: self.names.flag,
                    reason,
                }
            } else {
                ConfigError::Invalid {
                    origin: self.file.into(),
                    key: self.names.key,
                    reason,
                }
            }),
        }
    }
}

/// `Err("{v} is not between {lo} and {hi}")` unless `lo <= v <= hi`.
fn between<T: PartialOrd + Display>(v: &T, lo: T, hi: T) -> Result<(), String> {
    if (&lo..=&hi).contains(&v) {
        Ok(())
    } else {
        Err(format!("{v} is not between {lo} and {hi}"))
    }
}

/// The sources of one resolution.
struct Sources<'a> {
    overrides: &'a Overrides,
    /// The file's name, for messages.
    file: String,
}

impl Sources<'_> {
    /// The flag's value, else the file's, else `default()`.
    fn take<T>(
        &self,
        names: Names,
        flag: Option<T>,
        file: Option<T>,
        default: impl FnOnce() -> T,
    ) -> Setting<'_, T> {
        let from_cli = flag.is_some();
        Setting {
            value: flag.or(file).unwrap_or_else(default),
            from_cli,
            names,
            file: &self.file,
        }
    }

    /// A list: the flag's entries if any were given, else the file's, else `default()`.
    fn take_list<T: Clone>(
        &self,
        names: Names,
        flag: &[T],
        file: Option<Vec<T>>,
        default: impl FnOnce() -> Vec<T>,
    ) -> Setting<'_, Vec<T>> {
        let flag = (!flag.is_empty()).then(|| flag.to_vec());
        self.take(names, flag, file, default)
    }
}

/// Resolves a configuration from the file's text (see [`NodeConfig::from_toml`]).
pub(super) fn resolve(
    text: &str,
    path: Option<&Path>,
    overrides: &Overrides,
) -> Result<NodeConfig, ConfigError> {
    let shown = path.map_or_else(|| PathBuf::from("(defaults)"), Path::to_path_buf);
    let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: shown.clone(),
        message: e.to_string().trim_end().replace('\n', "\n  "),
    })?;
    let src = Sources {
        overrides,
        file: shown.display().to_string(),
    };
    let o = overrides;

    let data_dir = match (&o.data_dir, &file.data_dir) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => {
            let base = path.and_then(Path::parent).unwrap_or(Path::new("."));
            base.join(d)
        }
        (None, None) => default_data_dir().ok_or(ConfigError::NoDataDir)?,
    };
    let slots = src
        .take(
            names("--slots", "slots"),
            o.slots,
            file.slots,
            default_slots,
        )
        .check(|&n, _| between(&n, 1, MAX_SLOTS))?;
    let job_nice = src
        .take(
            names("--job-nice", "job_nice"),
            o.job_nice,
            file.job_nice,
            || crate::sandbox::DEFAULT_NICE,
        )
        .check(|&n, _| between(&n, 0, 19))?;
    let groups = src
        .take_list(names("--group", "groups"), &o.groups, file.groups, || {
            vec!["/compute".to_string()]
        })
        .check(|groups, _| check_groups(groups))?;
    let limits = src.limits(&file.limits)?;
    let unknown_authors = o
        .unknown_authors
        .or(file.unknown_authors)
        .unwrap_or_default();
    let prompt_secs = src
        .take(
            names("--prompt-timeout", "prompt_timeout_secs"),
            o.prompt_timeout_secs,
            file.prompt_timeout_secs,
            || 60,
        )
        .check(|&s, _| between(&s, 1, MAX_PROMPT_TIMEOUT_SECS).map_err(|e| e + " seconds"))?;
    let compile_secs = src
        .take(
            names("--compile-timeout", "compile_timeout_secs"),
            o.compile_timeout_secs,
            file.compile_timeout_secs,
            || crate::sandbox::DEFAULT_COMPILE_TIMEOUT.as_secs(),
        )
        .check(|&s, _| between(&s, 1, 24 * 3600).map_err(|e| e + " seconds"))?;

    let mut idle = file.idle.unwrap_or_default();
    if let Some(on) = o.only_when_idle {
        idle.only_when_idle = on;
    }
    if let Some(f) = &o.loadavg_file {
        idle.loadavg_file = Some(f.clone());
    }
    idle.load_per_core = src
        .take(
            names("--idle-load-per-core", "idle.load_per_core"),
            o.idle_load_per_core,
            Some(idle.load_per_core),
            || unreachable!("the file's idle policy has a default"),
        )
        .check(|&l, _| {
            if l.is_finite() && l > 0.0 && l <= 64.0 {
                Ok(())
            } else {
                Err(format!("{l} is not a load per core in (0, 64]"))
            }
        })?;

    let listen = o
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 7443)));
    let tls = TlsPaths {
        cert: data_dir.join(file.tls.cert.unwrap_or_else(|| "node.pem".into())),
        key: data_dir.join(file.tls.key.unwrap_or_else(|| "node-key.pem".into())),
        ca: data_dir.join(file.tls.ca.unwrap_or_else(|| "cluster-ca.pem".into())),
    };
    // Relative to the working directory on the command line, to the data directory in the
    // file (as the TLS paths).
    let scratch_dir = match (&o.scratch_dir, &file.scratch_dir) {
        (Some(d), _) => Some(d.clone()),
        (None, Some(d)) => Some(data_dir.join(d)),
        (None, None) => None,
    };
    let announce = src.announce(file.announce)?;

    Ok(NodeConfig {
        config_file: path.map(Path::to_path_buf),
        data_dir,
        slots,
        groups: dedup_list(groups),
        limits,
        unknown_authors,
        prompt_timeout: Duration::from_secs(prompt_secs),
        compile_timeout: Duration::from_secs(compile_secs),
        idle,
        listen,
        tls,
        announce,
        scratch_dir,
        job_nice,
    })
}

pub(super) fn default_slots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn check_groups(groups: &[String]) -> Result<(), String> {
    if groups.is_empty() || groups.len() > MAX_GROUPS {
        return Err(format!("give 1 to {MAX_GROUPS} groups"));
    }
    match groups.iter().find(|g| !valid_group(g)) {
        Some(g) => Err(format!(
            "invalid group {g:?}: a path like /compute/light (lowercase letters, digits, _ and -)"
        )),
        None => Ok(()),
    }
}

impl Sources<'_> {
    /// `[limits]`: each limit the flag, else the file, else the default. A value out of
    /// range is reported as the file's number, or for a flag in the units people write.
    fn limits(&self, f: &FileLimits) -> Result<MaxLimits, ConfigError> {
        let (o, d) = (self.overrides, MaxLimits::default());
        let bytes: fn(u64) -> String = |v| ByteSize(v).to_string();
        let limit = |names, flag, file, default, (lo, hi): (u64, u64), human: fn(u64) -> String| {
            self.take(names, flag, file, || default)
                .check(|&v, from_cli| {
                    if (lo..=hi).contains(&v) {
                        Ok(())
                    } else if from_cli {
                        Err(format!(
                            "{} is not between {} and {}",
                            human(v),
                            human(lo),
                            human(hi)
                        ))
                    } else {
                        Err(format!("{v} is not between {lo} and {hi}"))
                    }
                })
        };
        Ok(MaxLimits {
            max_time_ms: limit(
                names("--max-time", "limits.max_time_ms"),
                o.max_time_ms,
                f.max_time_ms,
                d.max_time_ms,
                (1, Limits::MAX_TIME_MS),
                fmt_ms,
            )?,
            max_memory_bytes: limit(
                names("--max-memory", "limits.max_memory_bytes"),
                o.max_memory_bytes,
                f.max_memory_bytes,
                d.max_memory_bytes,
                (Limits::MIN_MEMORY, Limits::MAX_MEMORY),
                bytes,
            )?,
            max_output_bytes: limit(
                names("--max-output", "limits.max_output_bytes"),
                o.max_output_bytes,
                f.max_output_bytes,
                d.max_output_bytes,
                (0, Limits::MAX_OUTPUT),
                bytes,
            )?,
            max_stdout_bytes: limit(
                names("--max-stdout", "limits.max_stdout_bytes"),
                o.max_stdout_bytes,
                f.max_stdout_bytes,
                d.max_stdout_bytes,
                (0, Limits::MAX_STDOUT),
                bytes,
            )?,
        })
    }

    /// `[announce]`.
    fn announce(&self, fa: FileAnnounce) -> Result<AnnounceSettings, ConfigError> {
        let (o, d) = (self.overrides, AnnounceSettings::default());
        let interval = self
            .take(
                names("--announce-interval", "announce.interval"),
                o.announce_interval,
                fa.interval,
                || d.interval,
            )
            .check(|&i, _| {
                if (MIN_ANNOUNCE_INTERVAL..=MAX_ANNOUNCE_INTERVAL).contains(&i) {
                    return Ok(());
                }
                let h = humantime::format_duration;
                Err(format!(
                    "{} is not between {} and {}",
                    h(i),
                    h(MIN_ANNOUNCE_INTERVAL),
                    h(MAX_ANNOUNCE_INTERVAL)
                ))
            })?;
        let interfaces = self.announce_list(
            names("--interface", "announce.interfaces"),
            &o.interfaces,
            fa.interfaces,
            "interfaces",
            |n| {
                (!valid_interface_name(n)).then(|| format!("{n:?} is not a network interface name"))
            },
        )?;
        let advertise = self.announce_list(
            names("--advertise", "announce.advertise"),
            &o.advertise,
            fa.advertise,
            "addresses",
            |a| {
                (a.is_unspecified() || a.is_multicast())
                    .then(|| format!("{a} is not an address the node can be reached at"))
            },
        )?;
        Ok(AnnounceSettings {
            enabled: o.announce.or(fa.enabled).unwrap_or(d.enabled),
            interval,
            interfaces,
            advertise,
        })
    }

    /// An `[announce]` list (the flags' if any, else the file's, else empty): at most
    /// [`MAX_ANNOUNCE_ENTRIES`] `what`, none of which `bad` objects to, without repeats.
    fn announce_list<T: Clone + PartialEq>(
        &self,
        names: Names,
        flag: &[T],
        file: Option<Vec<T>>,
        what: &str,
        bad: impl Fn(&T) -> Option<String>,
    ) -> Result<Vec<T>, ConfigError> {
        let list = self
            .take_list(names, flag, file, Vec::new)
            .check(|list, _| {
                if list.len() > MAX_ANNOUNCE_ENTRIES {
                    return Err(format!("give at most {MAX_ANNOUNCE_ENTRIES} {what}"));
                }
                match list.iter().find_map(&bad) {
                    Some(reason) => Err(reason),
                    None => Ok(()),
                }
            })?;
        Ok(dedup_list(list))
    }
}

/// The list without repeats, in first-seen order.
fn dedup_list<T: PartialEq>(items: Vec<T>) -> Vec<T> {
    let mut out = Vec::with_capacity(items.len());
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}
