//! The configuration file's schema (`node.toml`): every key optional, unknown keys refused.
//! Values are only parsed here; they are checked when the configuration is resolved
//! (`super::resolve`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::{UnknownAuthorPolicy, parse_duration};
use crate::idle::IdlePolicy;

/// The file's shape: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) data_dir: Option<PathBuf>,
    pub(super) slots: Option<usize>,
    pub(super) groups: Option<Vec<String>>,
    pub(super) listen: Option<SocketAddr>,
    pub(super) unknown_authors: Option<UnknownAuthorPolicy>,
    pub(super) prompt_timeout_secs: Option<u64>,
    pub(super) compile_timeout_secs: Option<u64>,
    #[serde(default)]
    pub(super) limits: FileLimits,
    pub(super) idle: Option<IdlePolicy>,
    #[serde(default)]
    pub(super) tls: FileTls,
    #[serde(default)]
    pub(super) announce: FileAnnounce,
    pub(super) scratch_dir: Option<PathBuf>,
    pub(super) job_nice: Option<i32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAnnounce {
    pub(super) enabled: Option<bool>,
    #[serde(default, deserialize_with = "de_duration")]
    pub(super) interval: Option<Duration>,
    pub(super) interfaces: Option<Vec<String>>,
    pub(super) advertise: Option<Vec<IpAddr>>,
}

/// A duration written for people (`"2s"`, `"500ms"`, `"1m 30s"`: humantime).
fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileLimits {
    pub(super) max_time_ms: Option<u64>,
    #[serde(default, deserialize_with = "de_size")]
    pub(super) max_memory_bytes: Option<u64>,
    #[serde(default, deserialize_with = "de_size")]
    pub(super) max_output_bytes: Option<u64>,
    #[serde(default, deserialize_with = "de_size")]
    pub(super) max_stdout_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTls {
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
    pub(super) ca: Option<PathBuf>,
}

/// A size: an integer number of bytes, or a string in the size grammar of every RJS program
/// ([`rjs_cmd::units`]), e.g. `"256M"`.
fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Int(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Int(n) => Ok(Some(n)),
        Size::Text(s) => rjs_cmd::units::parse_size(&s)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}
