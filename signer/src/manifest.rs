//! `manifest.json`: what a bundle runs and under which limits. See `docs/bundle-format.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::paths;

/// The only manifest and bundle format version this library reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Largest `manifest.json` accepted.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
pub const MAX_NAME: usize = 64;
pub const MAX_DESCRIPTION: usize = 1024;
pub const MAX_ARGS: usize = 256;
pub const MAX_ARG_BYTES: usize = 4096;
pub const MAX_ENV: usize = 64;
pub const MAX_ENV_KEY: usize = 128;
pub const MAX_ENV_VALUE: usize = 4096;
/// Total bytes of all args and env keys and values together.
pub const MAX_ARGS_ENV_TOTAL: usize = 64 * 1024;
pub const MAX_TASKS: u32 = 100_000;
pub const MAX_GROUP: usize = 128;
pub const MAX_OUTPUTS: usize = 64;
pub const MAX_OUTPUT_PATTERN: usize = 128;
pub const DEFAULT_GROUP: &str = "/compute";

/// A job's limits; every field has a default and bounds (see [`Limits::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Time one task may run, milliseconds (1 ms ..= 24 h; default 60 s).
    #[serde(default = "Limits::default_time_ms")]
    pub time_ms: u64,
    /// Linear memory one task may use, bytes (64 KiB ..= 4 GiB; default 256 MiB).
    #[serde(default = "Limits::default_memory_bytes")]
    pub memory_bytes: u64,
    /// Total bytes a task may write under `out/` (0 ..= 1 GiB; default 64 MiB).
    #[serde(default = "Limits::default_output_bytes")]
    pub output_bytes: u64,
    /// Bytes kept of stdout and, separately, of stderr (0 ..= 64 MiB; default 1 MiB).
    #[serde(default = "Limits::default_stdout_bytes")]
    pub stdout_bytes: u64,
}

impl Limits {
    pub const MAX_TIME_MS: u64 = 24 * 3600 * 1000;
    pub const MIN_MEMORY: u64 = 64 * 1024;
    pub const MAX_MEMORY: u64 = 4 * 1024 * 1024 * 1024;
    pub const MAX_OUTPUT: u64 = 1024 * 1024 * 1024;
    pub const MAX_STDOUT: u64 = 64 * 1024 * 1024;

    fn default_time_ms() -> u64 {
        60_000
    }
    fn default_memory_bytes() -> u64 {
        256 * 1024 * 1024
    }
    fn default_output_bytes() -> u64 {
        64 * 1024 * 1024
    }
    fn default_stdout_bytes() -> u64 {
        1024 * 1024
    }

    pub fn check(&self) -> Result<(), ManifestError> {
        if !(1..=Self::MAX_TIME_MS).contains(&self.time_ms) {
            return bad(
                "limits.time_ms",
                format!("must be 1..={}", Self::MAX_TIME_MS),
            );
        }
        if !(Self::MIN_MEMORY..=Self::MAX_MEMORY).contains(&self.memory_bytes) {
            return bad(
                "limits.memory_bytes",
                format!("must be {}..={}", Self::MIN_MEMORY, Self::MAX_MEMORY),
            );
        }
        if self.output_bytes > Self::MAX_OUTPUT {
            return bad(
                "limits.output_bytes",
                format!("must be at most {}", Self::MAX_OUTPUT),
            );
        }
        if self.stdout_bytes > Self::MAX_STDOUT {
            return bad(
                "limits.stdout_bytes",
                format!("must be at most {}", Self::MAX_STDOUT),
            );
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            time_ms: Self::default_time_ms(),
            memory_bytes: Self::default_memory_bytes(),
            output_bytes: Self::default_output_bytes(),
            stdout_bytes: Self::default_stdout_bytes(),
        }
    }
}

/// The largest limits a compute node accepts unless its owner changes them (`rjs-compute`'s
/// `[limits]`): a job asking for more runs only on nodes whose owners raised them, and
/// `rjs-sign upload` warns about it ([`Limits::above_node_defaults`]).
pub const NODE_DEFAULT_MAX: Limits = Limits {
    time_ms: 3_600_000,
    memory_bytes: 1024 * 1024 * 1024,
    output_bytes: 256 * 1024 * 1024,
    stdout_bytes: 16 * 1024 * 1024,
};

impl Limits {
    /// Each limit above what nodes accept by default ([`NODE_DEFAULT_MAX`]), as
    /// `memory_bytes 2147483648 (nodes accept at most 1073741824 unless their owner allows
    /// more)`.
    pub fn above_node_defaults(&self) -> Vec<String> {
        let max = NODE_DEFAULT_MAX;
        [
            ("time_ms", self.time_ms, max.time_ms),
            ("memory_bytes", self.memory_bytes, max.memory_bytes),
            ("output_bytes", self.output_bytes, max.output_bytes),
            ("stdout_bytes", self.stdout_bytes, max.stdout_bytes),
        ]
        .into_iter()
        .filter(|(_, v, m)| v > m)
        .map(|(name, v, m)| {
            format!("{name} {v} (nodes accept at most {m} unless their owner allows more)")
        })
        .collect()
    }
}

/// The parsed and validated `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Must be [`FORMAT_VERSION`].
    pub format: u32,
    /// Job name: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Bundle path of the WebAssembly module to run.
    pub entry: String,
    /// Bundle paths of input files, visible read-only to the job at the same paths. An item
    /// ending in `/` names a folder: every file under it is in the bundle (packed
    /// recursively, each one signed) and the folder is visible at the same path.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// An input file (named in `inputs`, or a file inside a folder named there) that is the
    /// program's standard input. Without it, standard input is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Arguments after argv\[0\] (which is the job name).
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment; keys `[A-Za-z_][A-Za-z0-9_]*`, not starting with `RJS_` (reserved).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// How many tasks the bundle fans out into; task `i` sees `RJS_TASK_INDEX=i`.
    #[serde(default = "default_tasks")]
    pub tasks: u32,
    /// Which nodes may run it: `/seg/seg`, segments `[a-z0-9_-]+`.
    #[serde(default = "default_group")]
    pub group: String,
    /// Glob patterns (relative to `out/`) of the files the job promises to write.
    #[serde(default)]
    pub outputs: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
}

/// The fields of [`Manifest`], as they are spelled in `manifest.json`.
pub const MANIFEST_FIELDS: [&str; 12] = [
    "format",
    "name",
    "description",
    "entry",
    "inputs",
    "stdin",
    "args",
    "env",
    "tasks",
    "group",
    "outputs",
    "limits",
];
/// The fields of [`Limits`].
pub const LIMITS_FIELDS: [&str; 4] = ["time_ms", "memory_bytes", "output_bytes", "stdout_bytes"];

/// The first field of a manifest document (an object) that the format does not define, at the
/// top level or inside `limits` (as `limits.<name>`). None for anything else, including a
/// document that is not an object.
fn unknown_field(doc: &serde_json::Value) -> Option<String> {
    let top = doc.as_object()?;
    if let Some(k) = top.keys().find(|k| !MANIFEST_FIELDS.contains(&k.as_str())) {
        return Some(k.clone());
    }
    let limits = top.get("limits")?.as_object()?;
    limits
        .keys()
        .find(|k| !LIMITS_FIELDS.contains(&k.as_str()))
        .map(|k| format!("limits.{k}"))
}

/// A field name from an outsider's document, made safe and short for a one-line message.
pub(crate) fn shown_field(field: &str) -> String {
    const MAX: usize = 64;
    let escaped: String = field.escape_debug().collect();
    if escaped.chars().count() > MAX {
        let cut: String = escaped.chars().take(MAX).collect();
        format!("{cut}…")
    } else {
        escaped
    }
}

/// The `format` field of a JSON document, if the document is an object that has one. Read on
/// its own, before (or after a failed) strict parse, so that a document of a newer format
/// version gets that clear error rather than one about a field it does not know.
pub(crate) fn format_field(bytes: &[u8]) -> Option<serde_json::Value> {
    #[derive(Deserialize)]
    struct Version {
        format: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Version>(bytes).ok()?.format
}

/// Refuses a manifest for one field's value.
fn bad(field: &'static str, why: String) -> Result<(), ManifestError> {
    Err(ManifestError::Field { field, why })
}

fn default_tasks() -> u32 {
    1
}
fn default_group() -> String {
    DEFAULT_GROUP.to_owned()
}

/// A manifest that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest.json is larger than {MAX_MANIFEST_BYTES} bytes")]
    TooLarge,
    #[error("manifest.json is not valid")]
    Json(#[source] serde_json::Error),
    /// A field this format version does not define (`limits.x` for one inside `limits`).
    /// Refused rather than ignored: a field a verifier skips could carry a meaning to another
    /// reader that the signer never meant.
    #[error("manifest.json has an unknown field `{}`", shown_field(.field))]
    UnknownField { field: String },
    #[error("unknown manifest format version {0} (this build reads version {FORMAT_VERSION})")]
    UnknownVersion(u32),
    #[error("manifest field `{field}` {why}")]
    Field { field: &'static str, why: String },
}

impl Manifest {
    /// Parses and validates manifest bytes. Unknown fields, a wrong version and any value out
    /// of bounds are errors.
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge);
        }
        // Read the version first so that a future format gets a clear error rather than an
        // "unknown field" one.
        if let Some(serde_json::Value::Number(n)) = format_field(bytes)
            && n.as_u64() != Some(u64::from(FORMAT_VERSION))
        {
            return Err(ManifestError::UnknownVersion(
                n.as_u64()
                    .map_or(u32::MAX, |v| v.min(u64::from(u32::MAX)) as u32),
            ));
        }
        // The typed parse is the strict one (it also refuses duplicate keys, which a
        // `serde_json::Value` would quietly collapse). When it fails, an unknown field gets
        // its own error, found by walking the document rather than by reading serde's message.
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| {
                match serde_json::from_slice::<serde_json::Value>(bytes)
                    .ok()
                    .as_ref()
                    .and_then(unknown_field)
                {
                    Some(field) => ManifestError::UnknownField { field },
                    None => ManifestError::Json(e),
                }
            })?;
        m.validate()?;
        Ok(m)
    }

    /// Checks every field's bounds (not whether the named files exist: the bundle does that).
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.format != FORMAT_VERSION {
            return Err(ManifestError::UnknownVersion(self.format));
        }
        if !valid_job_name(&self.name) {
            return bad(
                "name",
                format!(
                    "{:?} must match [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}",
                    self.name
                ),
            );
        }
        if self.description.len() > MAX_DESCRIPTION
            || self
                .description
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return bad(
                "description",
                format!("must be at most {MAX_DESCRIPTION} bytes of text"),
            );
        }
        self.check_files()?;
        self.check_args_env()?;
        if !(1..=MAX_TASKS).contains(&self.tasks) {
            return bad("tasks", format!("must be 1..={MAX_TASKS}"));
        }
        if !valid_group(&self.group) {
            return bad(
                "group",
                format!(
                    "{:?} must look like /seg or /seg/seg with segments [a-z0-9_-]",
                    self.group
                ),
            );
        }
        self.check_outputs()?;
        self.limits.check()
    }

    /// `entry`, `inputs` and `stdin`: valid entry names (a folder input: one followed by
    /// `/`), not reserved, no name twice, no input inside another input folder, and `stdin`
    /// one of the input files or inside one of the input folders.
    fn check_files(&self) -> Result<(), ManifestError> {
        if let Err(e) = paths::check_entry_name(&self.entry) {
            return bad("entry", e.to_string());
        }
        if self.entry == paths::MANIFEST || self.entry == paths::SIGNATURE {
            return bad("entry", format!("{:?} is a reserved name", self.entry));
        }
        if self.inputs.len() > paths::MAX_ENTRIES {
            return bad(
                "inputs",
                format!("has more than {} items", paths::MAX_ENTRIES),
            );
        }
        // Lower case: bundle names are unique without regard to case.
        let mut files = std::collections::HashSet::new();
        let mut folders: Vec<String> = Vec::new();
        files.insert(self.entry.to_ascii_lowercase());
        for input in &self.inputs {
            let (path, folder) = match input.strip_suffix('/') {
                Some(p) => (p, true),
                None => (input.as_str(), false),
            };
            if let Err(e) = paths::check_entry_name(path) {
                return bad("inputs", format!("{input:?}: {e}"));
            }
            if path == paths::MANIFEST || path == paths::SIGNATURE {
                return bad("inputs", format!("{input:?} is a reserved name"));
            }
            let lower = path.to_ascii_lowercase();
            if files.contains(&lower) || folders.contains(&lower) {
                return bad(
                    "inputs",
                    format!("{input:?} is named twice (or is the entry module)"),
                );
            }
            if folder {
                folders.push(lower);
            } else {
                files.insert(lower);
            }
        }
        // No input (nor the module) inside a folder input, and no folder inside another.
        for f in &folders {
            let prefix = format!("{f}/");
            let inside = files
                .iter()
                .chain(folders.iter())
                .find(|other| other.starts_with(&prefix));
            if let Some(other) = inside {
                return bad(
                    "inputs",
                    format!(
                        "{other:?} is inside the folder input \"{f}/\", which holds it already"
                    ),
                );
            }
        }
        if let Some(stdin) = &self.stdin {
            if let Err(e) = paths::check_entry_name(stdin) {
                return bad("stdin", format!("{stdin:?}: {e}"));
            }
            if !self.is_input_file(stdin) {
                return bad(
                    "stdin",
                    format!(
                        "{stdin:?} must be one of the input files, or a file inside an input folder"
                    ),
                );
            }
        }
        Ok(())
    }

    /// Whether `name` is a file this manifest's `inputs` name: one of the files, or a path
    /// inside one of the folders.
    pub fn is_input_file(&self, name: &str) -> bool {
        self.inputs.iter().any(|i| match i.strip_suffix('/') {
            Some(_) => name.starts_with(i.as_str()),
            None => i == name,
        })
    }

    /// The folder inputs, each with its trailing `/`.
    pub fn input_folders(&self) -> impl Iterator<Item = &str> {
        self.inputs
            .iter()
            .filter(|i| i.ends_with('/'))
            .map(String::as_str)
    }

    /// `args` and `env`: counts, sizes, no NUL, env key syntax, and their total size.
    fn check_args_env(&self) -> Result<(), ManifestError> {
        if self.args.len() > MAX_ARGS {
            return bad("args", format!("has more than {MAX_ARGS} items"));
        }
        let mut total = 0usize;
        for a in &self.args {
            if a.len() > MAX_ARG_BYTES || a.contains('\0') {
                return bad(
                    "args",
                    format!("items must be at most {MAX_ARG_BYTES} bytes without NUL"),
                );
            }
            total += a.len();
        }
        if self.env.len() > MAX_ENV {
            return bad("env", format!("has more than {MAX_ENV} variables"));
        }
        for (k, v) in &self.env {
            let key_ok = k.len() <= MAX_ENV_KEY
                && k.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !key_ok {
                return bad(
                    "env",
                    format!("key {k:?} must match [A-Za-z_][A-Za-z0-9_]*"),
                );
            }
            if k.starts_with("RJS_") {
                return bad(
                    "env",
                    format!("key {k:?}: the RJS_ prefix is reserved for the grid"),
                );
            }
            if v.len() > MAX_ENV_VALUE || v.contains('\0') {
                return bad(
                    "env",
                    format!("value of {k} must be at most {MAX_ENV_VALUE} bytes without NUL"),
                );
            }
            total += k.len() + v.len();
        }
        if total > MAX_ARGS_ENV_TOTAL {
            return bad(
                "args",
                format!("args and env together exceed {MAX_ARGS_ENV_TOTAL} bytes"),
            );
        }
        Ok(())
    }

    /// `outputs`: at most [`MAX_OUTPUTS`] relative path patterns.
    fn check_outputs(&self) -> Result<(), ManifestError> {
        if self.outputs.len() > MAX_OUTPUTS {
            return bad("outputs", format!("has more than {MAX_OUTPUTS} patterns"));
        }
        for o in &self.outputs {
            if !valid_output_pattern(o) {
                return bad(
                    "outputs",
                    format!("{o:?} must be a relative path pattern (letters, digits, . _ - / * ?)"),
                );
            }
        }
        Ok(())
    }

    /// Whether a node serving `node_group` may run this job (see [`node_serves`]).
    pub fn group_matches(&self, node_group: &str) -> bool {
        node_serves(node_group, &self.group)
    }
}

/// Whether `o` is a valid `outputs` pattern: at most [`MAX_OUTPUT_PATTERN`] bytes, an entry
/// name once `*` and `?` are taken for letters.
pub fn valid_output_pattern(o: &str) -> bool {
    !o.is_empty()
        && o.len() <= MAX_OUTPUT_PATTERN
        && paths::check_entry_name(&o.replace(['*', '?'], "x")).is_ok()
}

/// The `outputs` patterns that none of `files` (paths relative to `out/`) matches, in
/// order: what the answer reports missing.
pub fn missing_outputs(patterns: &[String], files: &[&str]) -> Vec<String> {
    patterns
        .iter()
        .filter(|p| !files.iter().any(|f| output_matches(p, f)))
        .cloned()
        .collect()
}

/// Whether `path` (relative to `out/`) matches the `outputs` pattern: `*` stands for any run
/// of characters but `/`, `?` for one character but `/`, anything else for itself.
pub fn output_matches(pattern: &str, path: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), path.chars().collect());
    // Classic wildcard matching with one backtrack point (the last `*`).
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some('?') if s[si] != '/' => {
                pi += 1;
                si += 1;
            }
            Some(&c) if c != '*' && c != '?' && c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                // The star takes one more character, never a `/`.
                Some((sp, ss)) if s[ss] != '/' => {
                    star = Some((sp, ss + 1));
                    pi = sp + 1;
                    si = ss + 1;
                }
                _ => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Whether a node serving `node_group` may run a job of `job_group`: the job's group is the
/// node's group or lies above it. A job asks for *at least* a kind of node: a `/compute` job
/// runs on every compute node, `/compute/light` ones included; a `/compute/light` job runs
/// only on `/compute/light` nodes (and nodes below, like `/compute/light/tiny`), never on a
/// plain `/compute` or a `/compute/heavy` node.
pub fn node_serves(node_group: &str, job_group: &str) -> bool {
    let job = job_group.trim_end_matches('/');
    let node = node_group.trim_end_matches('/');
    job.is_empty()
        || node == job
        || node
            .strip_prefix(job)
            .is_some_and(|rest| rest.starts_with('/'))
}

pub fn valid_job_name(name: &str) -> bool {
    crate::paths::is_label(name, MAX_NAME, &['.', '_', '-'])
}

pub fn valid_group(group: &str) -> bool {
    group.len() <= MAX_GROUP
        && group.starts_with('/')
        && group[1..].split('/').all(|seg| {
            !seg.is_empty()
                && seg
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> serde_json::Value {
        serde_json::json!({"format": 1, "name": "job", "entry": "job.wasm"})
    }

    fn parse(v: &serde_json::Value) -> Result<Manifest, ManifestError> {
        Manifest::parse(v.to_string().as_bytes())
    }

    /// `docs/bundle-format.md`: an integer that does not fit its field's type is a JSON error,
    /// one that fits but is out of bounds is a field error; `format` is read first.
    #[test]
    fn integer_classification_is_the_documented_one() {
        let text = |field: &str, value: &str| {
            let extra = match field.strip_prefix("limits.") {
                Some(f) => format!(r#","limits":{{"{f}":{value}}}"#),
                None => format!(r#","{field}":{value}"#),
            };
            format!(r#"{{"format":1,"name":"j","entry":"j.wasm"{extra}}}"#)
        };
        for (field, value) in [
            ("tasks", "4294967296"),
            ("tasks", "-1"),
            ("tasks", "1.0"),
            ("tasks", "1e3"),
            ("limits.time_ms", "18446744073709551616"),
        ] {
            let e = Manifest::parse(text(field, value).as_bytes()).unwrap_err();
            assert!(matches!(e, ManifestError::Json(_)), "{field}={value}: {e}");
        }
        for (field, value) in [
            ("tasks", "100001"),
            ("tasks", "0"),
            ("limits.time_ms", "18446744073709551615"),
        ] {
            let e = Manifest::parse(text(field, value).as_bytes()).unwrap_err();
            assert!(
                matches!(e, ManifestError::Field { .. }),
                "{field}={value}: {e}"
            );
        }
        for format in ["2", "1.0", "18446744073709551616"] {
            let m = format!(r#"{{"format":{format},"name":"j","entry":"j.wasm"}}"#);
            let e = Manifest::parse(m.as_bytes()).unwrap_err();
            assert!(
                matches!(e, ManifestError::UnknownVersion(_)),
                "{format}: {e}"
            );
        }
        // Inputs may not use the reserved names; names are case-sensitive.
        for reserved in ["manifest.json", "rjs-signature.json"] {
            let m =
                format!(r#"{{"format":1,"name":"j","entry":"j.wasm","inputs":["{reserved}"]}}"#);
            let e = Manifest::parse(m.as_bytes()).unwrap_err();
            assert!(e.to_string().contains("reserved"), "{e}");
        }
    }

    #[test]
    fn defaults_apply() {
        let m = parse(&minimal()).unwrap();
        assert_eq!(m.tasks, 1);
        assert_eq!(m.group, "/compute");
        assert_eq!(m.limits, Limits::default());
    }

    #[test]
    fn refusals() {
        let cases: Vec<(&str, serde_json::Value)> = vec![
            (
                "version",
                serde_json::json!({"format":2,"name":"j","entry":"j.wasm"}),
            ),
            (
                "name",
                serde_json::json!({"format":1,"name":"../j","entry":"j.wasm"}),
            ),
            (
                "entry",
                serde_json::json!({"format":1,"name":"j","entry":"/j.wasm"}),
            ),
            (
                "tasks",
                serde_json::json!({"format":1,"name":"j","entry":"j.wasm","tasks":0}),
            ),
            (
                "group",
                serde_json::json!({"format":1,"name":"j","entry":"j.wasm","group":"compute"}),
            ),
            (
                "env",
                serde_json::json!({"format":1,"name":"j","entry":"j.wasm","env":{"RJS_TASK_INDEX":"3"}}),
            ),
            (
                "limits",
                serde_json::json!({"format":1,"name":"j","entry":"j.wasm","limits":{"time_ms":0}}),
            ),
            (
                "inputs",
                serde_json::json!({"format":1,"name":"j","entry":"j.wasm","inputs":["j.wasm"]}),
            ),
            (
                "outputs",
                serde_json::json!({"format":1,"name":"j","entry":"j.wasm","outputs":["../x"]}),
            ),
        ];
        for (what, v) in cases {
            assert!(parse(&v).is_err(), "{what} should be refused");
        }
        assert!(matches!(
            parse(&serde_json::json!({"format":7,"name":"j","entry":"j.wasm","new":true})),
            Err(ManifestError::UnknownVersion(7))
        ));
    }

    #[test]
    fn output_patterns_match_like_shell_globs_within_one_folder() {
        for (p, f, want) in [
            ("speech.wav", "speech.wav", true),
            ("speech.wav", "speech.wa", false),
            ("*.png", "tile-3.png", true),
            ("*.png", "img/tile.png", false),
            ("img/*.png", "img/tile.png", true),
            ("tile-?.png", "tile-3.png", true),
            ("tile-?.png", "tile-33.png", false),
            ("*", "a", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("*/x", "a/b/x", false),
        ] {
            assert_eq!(output_matches(p, f), want, "{p} ~ {f}");
        }
        let patterns = vec!["*.png".to_string(), "speech.wav".to_string()];
        assert_eq!(missing_outputs(&patterns, &["a.png"]), ["speech.wav"]);
        assert!(missing_outputs(&patterns, &["a.png", "speech.wav"]).is_empty());
    }

    #[test]
    fn folder_inputs_and_stdin() {
        let m = parse(&serde_json::json!({"format":1,"name":"j","entry":"j.wasm",
            "inputs":["data/","problem.smt2"],"stdin":"data/sub/in.txt"}))
        .unwrap();
        assert!(m.is_input_file("problem.smt2"));
        assert!(m.is_input_file("data/sub/in.txt"));
        assert!(!m.is_input_file("data"));
        assert!(!m.is_input_file("datax/in.txt"));
        assert_eq!(m.input_folders().collect::<Vec<_>>(), ["data/"]);
        let refused = [
            (
                serde_json::json!(["data/", "data/a.txt"]),
                None,
                "inside the folder",
            ),
            (
                serde_json::json!(["data/", "data/sub/"]),
                None,
                "inside the folder",
            ),
            (serde_json::json!(["data/", "DATA"]), None, "named twice"),
            (serde_json::json!(["j.wasm/"]), None, "named twice"),
            (serde_json::json!(["a//"]), None, "inputs"),
            (serde_json::json!(["/"]), None, "inputs"),
            (
                serde_json::json!(["a.txt"]),
                Some("b.txt"),
                "must be one of the input",
            ),
            (serde_json::json!(["data/"]), Some("data/"), "stdin"),
            (serde_json::json!(["a.txt"]), Some("../a.txt"), "stdin"),
        ];
        for (inputs, stdin, why) in refused {
            let doc = serde_json::json!({"format":1,"name":"j","entry":"j.wasm",
                "inputs":inputs,"stdin":stdin});
            let e = parse(&doc).expect_err(&doc.to_string()).to_string();
            assert!(e.contains(why), "{doc}: {e}");
        }
    }

    #[test]
    fn unknown_fields_have_their_own_error() {
        let cases = [
            (
                serde_json::json!({"format":1,"name":"j","entry":"j.wasm","extra":1}),
                "extra",
            ),
            (
                serde_json::json!({"format":1,"name":"j","entry":"j.wasm","limits":{"cpu":1}}),
                "limits.cpu",
            ),
            // Another mistake in the same document does not hide the unknown field.
            (
                serde_json::json!({"format":1,"name":"j","entry":"j.wasm","tasks":"x","zz":1}),
                "zz",
            ),
        ];
        for (doc, field) in cases {
            match parse(&doc) {
                Err(ManifestError::UnknownField { field: f }) => assert_eq!(f, field),
                other => panic!("{doc}: expected UnknownField({field}), got {other:?}"),
            }
        }
        // Syntax errors, wrong types and duplicate keys stay JSON errors.
        for bad in [
            &br#"{"format":1,"name":"#[..],
            br#"{"format":1,"name":"j","entry":"j.wasm","tasks":"x"}"#,
            br#"{"format":1,"name":"j","entry":"a.wasm","entry":"b.wasm"}"#,
            br#"[1]"#,
        ] {
            assert!(
                matches!(Manifest::parse(bad), Err(ManifestError::Json(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // A hostile field name is shown escaped and cut short.
        let long = format!("x\n{}", "y".repeat(500));
        let e = Manifest::parse(
            format!(r#"{{"format":1,"name":"j","entry":"j.wasm","{long}":1}}"#).as_bytes(),
        )
        .unwrap_err();
        let shown = e.to_string();
        assert!(!shown.contains('\n'), "{shown}");
        assert!(shown.len() < 150, "{shown}");
    }

    #[test]
    fn field_lists_match_the_structs() {
        // Every field serialised (description and stdin are skipped when empty).
        let m = Manifest {
            description: "d".into(),
            stdin: Some("in.txt".into()),
            ..parse(&minimal()).unwrap()
        };
        let v = serde_json::to_value(&m).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = MANIFEST_FIELDS.to_vec();
        want.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, want);
        let mut lk: Vec<&str> = v["limits"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        lk.sort_unstable();
        let mut lwant = LIMITS_FIELDS.to_vec();
        lwant.sort_unstable();
        assert_eq!(lk, lwant);
    }

    #[test]
    fn groups_nest() {
        // A node in /compute/light accepts /compute/light and /compute jobs.
        assert!(node_serves("/compute/light", "/compute/light"));
        assert!(node_serves("/compute/light", "/compute"));
        assert!(!node_serves("/compute", "/compute/light"));
        assert!(!node_serves("/compute/heavy", "/compute/light"));
        assert!(!node_serves("/computex", "/compute"));
        assert!(node_serves("/compute/light/tiny", "/compute"));
    }
}
