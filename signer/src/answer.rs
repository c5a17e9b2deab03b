//! Answer archives: what a compute node returns for one task (see `docs/answer-format.md`).
//!
//! A zip in the same canonical layout as bundles (`crate::zipfmt`), holding the task's `out/`
//! files under `out/`, `stdout.txt`, `stderr.txt` (both capped), `result.json`, and a signature
//! entry signed by the node's key under the domain `RJS-ANSWER-SIGNATURE-V1` (so an answer
//! signature can never pass as a bundle signature, nor the reverse).
//!
//! * [`build_answer`] writes one (deterministic given its inputs); [`verify_answer`] checks
//!   one as strictly as [`crate::verify_bytes`] checks a bundle, and is the only way to get a
//!   [`VerifiedAnswer`].
//! * [`ResultDoc`] is `result.json`; [`Ending`] and [`LimitKind`] say how the task ended.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::bundle::{
    self, Admitted, BuildError, Domain, EntryInfo, Signer, VerifyError, VerifyLimits,
    inflate_entry, path_rule,
};
use crate::keys::{Fingerprint, KeyPair, PublicKey};
use crate::manifest::{Limits, MAX_TASKS, ManifestError, format_field, valid_job_name};
use crate::paths::{self, MAX_NAME_BYTES, PathError, SIGNATURE};
use crate::zipread::ZipError;

/// The domain-separation prefix of an answer's signed statement (the bundle's is
/// [`bundle::BUNDLE_DOMAIN`]).
pub const ANSWER_DOMAIN: &str = "RJS-ANSWER-SIGNATURE-V1";
/// The only `result.json` format version this library reads and writes.
pub const RESULT_FORMAT: u32 = 1;
/// The entry holding the [`ResultDoc`].
pub const RESULT: &str = "result.json";
/// The entry holding the task's (kept) stdout.
pub const STDOUT: &str = "stdout.txt";
/// The entry holding the task's (kept) stderr.
pub const STDERR: &str = "stderr.txt";
/// The prefix of the entries holding the files the task wrote under `out/`.
pub const OUT_DIR: &str = "out/";
/// Largest `result.json` accepted.
pub const MAX_RESULT_BYTES: u64 = 64 * 1024;
/// Longest message in an [`Ending`] (see [`clip_message`]).
pub const MAX_MESSAGE: usize = 8 * 1024;
/// Longest node id.
pub const MAX_NODE_ID: usize = 64;
/// Most out files an answer holds: the entry limit less result, stdout, stderr and signature.
pub const MAX_OUT_FILES: usize = paths::MAX_ENTRIES - 4;

/// Answers: signed by a compute node, whose signer name is its node id.
const ANSWER: Domain = Domain {
    prefix: ANSWER_DOMAIN,
    signer_name_ok: valid_node_id,
    signer_name_is: "a valid node id",
};

/// The limits a task can run into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitKind {
    /// The time limit (`limits.time_ms`): the task was stopped.
    Time,
    /// The memory limit (`limits.memory_bytes`): a memory.grow failed and the task trapped.
    Memory,
    /// The output limit (`limits.output_bytes`): writes under `out/` were refused or the task
    /// was stopped; what fitted is kept.
    Output,
    /// stdout reached `limits.stdout_bytes`: the rest was dropped (the task saw a write error).
    Stdout,
    /// stderr reached `limits.stdout_bytes`.
    Stderr,
    /// Compiling the module took longer than the node's compile limit (its own setting, not
    /// the job's `time_ms`, which counts only once the program runs).
    Compile,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Time => "time",
            LimitKind::Memory => "memory",
            LimitKind::Output => "output",
            LimitKind::Stdout => "stdout",
            LimitKind::Stderr => "stderr",
            LimitKind::Compile => "compile",
        }
    }
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Ending {
    /// The program exited (returning from `_start` is exit 0). A non-zero code can be the
    /// program's real answer.
    Exit { code: i32 },
    /// A WebAssembly trap (unreachable, out-of-bounds access, stack overflow, …).
    Trap { message: String },
    /// Stopped by a limit.
    Limit { limit: LimitKind, message: String },
    /// The runtime itself failed (its worker process died); contained by the supervisor.
    Crash { message: String },
}

/// Longest [`Ending::summary_with`] (and [`ResultDoc::summary`]): the web server's bound on an
/// outcome line.
pub const MAX_SUMMARY: usize = 200;
/// Longest message part of a summary (before the limits hit, if any, are added).
const MAX_SUMMARY_MESSAGE: usize = 150;

impl Ending {
    /// One line for people: `exit 0`, `trap: …`, `limit: time`, `crash: …`. It does not name
    /// limits the task hit without being stopped by them: [`ResultDoc::summary`] (or
    /// [`Ending::summary_with`]) does, and is what authors should see.
    pub fn summary(&self) -> String {
        self.summary_with(&[])
    }

    /// One line for people and for the web server's `rjs-outcome` header, naming the limits
    /// the task hit besides how it ended: `exit 0`, `exit 3 (limit hit: output)`,
    /// `trap: … (limits hit: memory, stderr)`, `limit: time (also hit: stdout)`,
    /// `crash: …`. Control characters in a message become spaces, and a message is cut so
    /// that the line is at most [`MAX_SUMMARY`] bytes.
    pub fn summary_with(&self, limits_hit: &[LimitKind]) -> String {
        let own = match self {
            Ending::Limit { limit, .. } => Some(*limit),
            _ => None,
        };
        let mut others: Vec<&str> = Vec::with_capacity(limits_hit.len());
        for l in limits_hit {
            if Some(*l) != own && !others.contains(&l.as_str()) {
                others.push(l.as_str());
            }
        }
        let suffix = match (others.as_slice(), own) {
            ([], _) => String::new(),
            (_, Some(_)) => format!(" (also hit: {})", others.join(", ")),
            ([one], None) => format!(" (limit hit: {one})"),
            (_, None) => format!(" (limits hit: {})", others.join(", ")),
        };
        let with_message = |prefix: &str, message: &str| {
            let s: String = message
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let room = MAX_SUMMARY_MESSAGE
                .min(MAX_SUMMARY.saturating_sub(prefix.len() + suffix.len() + '…'.len_utf8()));
            if s.len() > room {
                format!("{prefix}{}…{suffix}", clip(&s, room))
            } else {
                format!("{prefix}{s}{suffix}")
            }
        };
        match self {
            Ending::Exit { code } => format!("exit {code}{suffix}"),
            Ending::Trap { message } => with_message("trap: ", message),
            Ending::Limit { limit, .. } => format!("limit: {}{suffix}", limit.as_str()),
            Ending::Crash { message } => with_message("crash: ", message),
        }
    }

    /// The message of a trap, limit or crash.
    pub fn message(&self) -> Option<&str> {
        match self {
            Ending::Exit { .. } => None,
            Ending::Trap { message }
            | Ending::Limit { message, .. }
            | Ending::Crash { message } => Some(message),
        }
    }
}

/// `line` followed by `, missing output: a` (or `, missing outputs: a, b`), cut to
/// [`MAX_SUMMARY`] bytes with `…` when too long.
fn with_missing(line: String, missing: &[String]) -> String {
    let what = if missing.len() == 1 {
        "missing output"
    } else {
        "missing outputs"
    };
    let full = format!("{line}, {what}: {}", missing.join(", "));
    if full.len() <= MAX_SUMMARY {
        full
    } else {
        format!("{}…", clip(&full, MAX_SUMMARY - '…'.len_utf8()))
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn clip(s: &str, max: usize) -> &str {
    let mut cut = max.min(s.len());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// `message` cut to at most [`MAX_MESSAGE`] bytes (ending in `…` when cut): what an
/// [`Ending`]'s message may hold. Wasmtime's trap messages with backtraces can be longer.
pub fn clip_message(message: &str) -> String {
    if message.len() <= MAX_MESSAGE {
        return message.to_owned();
    }
    format!("{}…", clip(message, MAX_MESSAGE - '…'.len_utf8()))
}

/// Whether `id` is a valid node id: `[A-Za-z0-9._-]{1,64}`.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NODE_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks the path of an out file (relative to `out/`): the entry-name rules of
/// `docs/bundle-format.md`, with room for the `out/` prefix (at most 251 bytes). Names must
/// also be unique case-insensitively, and no file may lie inside another (`a` and `a/b`):
/// [`build_answer`] refuses those too.
pub fn check_out_path(path: &str) -> Result<(), PathError> {
    paths::check_entry_name(path)?;
    if OUT_DIR.len() + path.len() > MAX_NAME_BYTES {
        return Err(PathError::TooLong);
    }
    Ok(())
}

/// `result.json`: how the task ended and what it used, as the node measured it. Every field is
/// required; see `docs/answer-format.md` for each one's meaning and bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultDoc {
    /// [`RESULT_FORMAT`].
    pub format: u32,
    /// SHA-256 of the bundle file (the bundle id), 64 lowercase hex digits.
    pub bundle_sha256: String,
    /// The bundle manifest's `name`.
    pub job_name: String,
    /// Which task this is: `0..task_count`.
    pub task_index: u32,
    /// The manifest's `tasks`.
    pub task_count: u32,
    /// The node that ran the task: `[A-Za-z0-9._-]{1,64}`; equals the signature entry's
    /// `signer_name`.
    pub node_id: String,
    /// The node's speed from its start-up benchmark, in whole MFLOPS (0 if not measured).
    pub node_mflops: u64,
    /// How the task ended.
    pub ending: Ending,
    /// Every limit the task reached, each once, including ones that did not end it.
    pub limits_hit: Vec<LimitKind>,
    /// The limits the task ran under (the manifest's, every field written).
    pub limits: Limits,
    /// When the task started and finished, Unix seconds (node clock).
    pub started_at: u64,
    pub finished_at: u64,
    /// Wall-clock time of the task, milliseconds.
    pub wall_ms: u64,
    /// CPU time of the task (user + system), milliseconds.
    pub cpu_ms: u64,
    /// Bytes of stdout kept: the size of `stdout.txt`.
    pub stdout_bytes: u64,
    /// Bytes of stderr kept: the size of `stderr.txt`.
    pub stderr_bytes: u64,
    /// Bytes of all out files together.
    pub output_bytes: u64,
    /// The manifest's `outputs` patterns that no returned file under `out/` matches, in the
    /// manifest's order (absent when every declared output came back).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_outputs: Vec<String>,
}

/// Why a `result.json` is refused.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("{RESULT} is larger than {MAX_RESULT_BYTES} bytes")]
    TooLarge,
    #[error("{RESULT} is not valid")]
    Json(#[source] serde_json::Error),
    #[error("unknown {RESULT} format version {0} (this build reads version {RESULT_FORMAT})")]
    UnknownVersion(u64),
    #[error("{RESULT} field `{field}` {why}")]
    Field { field: &'static str, why: String },
}

impl ResultDoc {
    /// Parses and validates `result.json`. A format other than 1 is `UnknownVersion` even
    /// when the rest does not parse (a newer format gets the clearer error).
    pub fn parse(bytes: &[u8]) -> Result<Self, ResultError> {
        if bytes.len() as u64 > MAX_RESULT_BYTES {
            return Err(ResultError::TooLarge);
        }
        let doc: ResultDoc = serde_json::from_slice(bytes).map_err(|e| {
            match format_field(bytes).and_then(|v| v.as_u64()) {
                Some(v) if v != u64::from(RESULT_FORMAT) => ResultError::UnknownVersion(v),
                _ => ResultError::Json(e),
            }
        })?;
        doc.validate()?;
        Ok(doc)
    }

    /// The outcome line authors see (the web server's `rjs-outcome` header, the OK line of
    /// `rjs-sign verify-answer`): how the task ended and every other limit it hit, e.g.
    /// `exit 3 (limit hit: output)`. See [`Ending::summary_with`].
    pub fn summary(&self) -> String {
        let line = self.ending.summary_with(&self.limits_hit);
        match self.missing_outputs.as_slice() {
            [] => line,
            missing => with_missing(line, missing),
        }
    }

    /// Checks every field's bounds and that the fields agree with each other.
    pub fn validate(&self) -> Result<(), ResultError> {
        let bad = |field: &'static str, why: String| Err(ResultError::Field { field, why });
        if self.format != RESULT_FORMAT {
            return Err(ResultError::UnknownVersion(self.format.into()));
        }
        if !crate::bundle::is_sha256_hex(&self.bundle_sha256) {
            return bad("bundle_sha256", "must be 64 lowercase hex digits".into());
        }
        if !valid_job_name(&self.job_name) {
            return bad(
                "job_name",
                "must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}".into(),
            );
        }
        if !(1..=MAX_TASKS).contains(&self.task_count) {
            return bad("task_count", format!("must be 1..={MAX_TASKS}"));
        }
        if self.task_index >= self.task_count {
            return bad(
                "task_index",
                format!("must be less than task_count ({})", self.task_count),
            );
        }
        if !valid_node_id(&self.node_id) {
            return bad(
                "node_id",
                format!("must match [A-Za-z0-9._-]{{1,{MAX_NODE_ID}}}"),
            );
        }
        if self.ending.message().is_some_and(|m| m.len() > MAX_MESSAGE) {
            return bad(
                "ending.message",
                format!("must be at most {MAX_MESSAGE} bytes"),
            );
        }
        for (i, limit) in self.limits_hit.iter().enumerate() {
            if self.limits_hit[..i].contains(limit) {
                return bad("limits_hit", format!("names {} twice", limit.as_str()));
            }
        }
        if let Ending::Limit { limit, .. } = &self.ending
            && !self.limits_hit.contains(limit)
        {
            return bad(
                "limits_hit",
                format!(
                    "must include {}, the limit that ended the task",
                    limit.as_str()
                ),
            );
        }
        self.limits.check().map_err(|e| match e {
            ManifestError::Field { field, why } => ResultError::Field { field, why },
            e => ResultError::Field {
                field: "limits",
                why: e.to_string(),
            },
        })?;
        if self.started_at > self.finished_at {
            return bad("finished_at", "must not be before started_at".into());
        }
        if self.missing_outputs.len() > crate::manifest::MAX_OUTPUTS
            || self
                .missing_outputs
                .iter()
                .any(|o| !crate::manifest::valid_output_pattern(o))
        {
            return bad(
                "missing_outputs",
                format!(
                    "must be at most {} output patterns of the manifest",
                    crate::manifest::MAX_OUTPUTS
                ),
            );
        }
        for (field, value, limit) in [
            ("stdout_bytes", self.stdout_bytes, self.limits.stdout_bytes),
            ("stderr_bytes", self.stderr_bytes, self.limits.stdout_bytes),
            ("output_bytes", self.output_bytes, self.limits.output_bytes),
        ] {
            if value > limit {
                return bad(field, format!("is {value}, more than its limit of {limit}"));
            }
        }
        Ok(())
    }

    /// The bytes [`build_answer`] writes as `result.json`: pretty JSON and a newline.
    fn to_json(&self) -> Vec<u8> {
        let mut json = serde_json::to_vec_pretty(self).unwrap_or_default();
        json.push(b'\n');
        json
    }
}

/// Limits applied while verifying an answer; reading stops as soon as one is crossed. The
/// defaults hold any answer a node can build for any valid manifest (1 GiB of out files,
/// 64 MiB each of stdout and stderr); callers that know better lower them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerLimits {
    /// Size of the answer file.
    pub max_answer_bytes: u64,
    /// Entries, the signature entry included.
    pub max_entries: usize,
    /// Uncompressed bytes of all entries together.
    pub max_total_bytes: u64,
    /// Uncompressed size / stored size of any deflated entry.
    pub max_ratio: u64,
}

impl Default for AnswerLimits {
    fn default() -> Self {
        // 1 MiB covers result.json (64 KiB) and the signature entry (512 KiB), and then the
        // headers of at most 1000 entries.
        let max_total_bytes = Limits::MAX_OUTPUT + 2 * Limits::MAX_STDOUT + (1 << 20);
        AnswerLimits {
            max_answer_bytes: max_total_bytes + (1 << 20),
            max_entries: paths::MAX_ENTRIES,
            max_total_bytes,
            max_ratio: 100,
        }
    }
}

impl AnswerLimits {
    fn archive(&self) -> VerifyLimits {
        VerifyLimits {
            max_bundle_bytes: self.max_answer_bytes,
            max_entries: self.max_entries,
            max_total_bytes: self.max_total_bytes,
            max_ratio: self.max_ratio,
        }
    }
}

/// Why an answer was refused (by [`verify_answer`]) or could not be built (by
/// [`build_answer`]). [`AnswerError::rule`] gives the stable rule name of
/// `docs/answer-format.md`, [`AnswerError::entry`] the entry it is about.
///
/// `Display` and `Error` are written by hand: [`Archive`](AnswerError::Archive) and
/// [`Build`](AnswerError::Build) word some bundle errors for answers, and pass on the wrapped
/// error's cause, not the wrapped error itself (which would say the same thing again).
#[derive(Debug)]
pub enum AnswerError {
    TooLarge {
        size: u64,
        limit: u64,
    },
    /// A rule shared with bundles: structure, limits, layout, signature entry, coverage,
    /// hashes, signature, a corrupt entry.
    Archive(VerifyError),
    /// An out file or size that cannot go into an answer.
    Build(BuildError),
    Incomplete {
        name: &'static str,
    },
    Undeclared {
        name: String,
    },
    PathConflict {
        name: String,
        file: String,
    },
    Result(ResultError),
    Mismatch {
        field: &'static str,
        claimed: String,
        actual: String,
    },
}

impl fmt::Display for AnswerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use AnswerError::*;
        match self {
            TooLarge { size, limit } => {
                write!(f, "answer is {size} bytes, more than the limit of {limit}")
            }
            Archive(VerifyError::Zip(_)) => f.write_str("not a valid answer archive"),
            Archive(VerifyError::Unsigned) => write!(
                f,
                "the signature entry {SIGNATURE:?} is missing: the answer is unsigned"
            ),
            Archive(e) => fmt::Display::fmt(e, f),
            Build(BuildError::BundleTooLarge(limit)) => {
                write!(f, "the answer would be larger than {limit} bytes")
            }
            Build(e) => fmt::Display::fmt(e, f),
            Incomplete { name } => write!(f, "the answer has no {name} entry"),
            Undeclared { name } => write!(
                f,
                "entry {name:?} does not belong in an answer (only {RESULT}, {STDOUT}, {STDERR} and files under {OUT_DIR})"
            ),
            PathConflict { name, file } => write!(
                f,
                "entry {name:?} lies inside {file:?}, which is a file (names are compared case-insensitively)"
            ),
            Result(e) => fmt::Display::fmt(e, f),
            Mismatch {
                field,
                claimed,
                actual,
            } => write!(
                f,
                "{RESULT} says `{field}` is {claimed}, but the archive has {actual}"
            ),
        }
    }
}

impl std::error::Error for AnswerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AnswerError::Archive(e) => e.source(),
            AnswerError::Build(e) => e.source(),
            AnswerError::Result(e) => e.source(),
            _ => None,
        }
    }
}

impl AnswerError {
    /// A stable, short name of the rule that was broken (for scripts and `--json`).
    pub fn rule(&self) -> &'static str {
        use AnswerError::*;
        match self {
            TooLarge { .. } | Build(BuildError::BundleTooLarge(_)) => "answer-too-large",
            Archive(VerifyError::Zip(ZipError::TooManyEntries { .. }))
            | Build(BuildError::TooManyEntries(_)) => "too-many-entries",
            Archive(VerifyError::Zip(_)) => "not-an-answer-zip",
            Archive(e) => e.rule(),
            Build(BuildError::BadName { reason, .. }) => path_rule(reason),
            Build(BuildError::Duplicate(_)) => "duplicate-name",
            Build(BuildError::TooManyBytes(_)) => "too-many-bytes",
            Build(BuildError::Reserved(_)) => "bad-name",
            Build(BuildError::SignerName(_)) => "invalid-result",
            Incomplete { .. } => "incomplete-answer",
            Undeclared { .. } => "undeclared-entry",
            PathConflict { .. } => "path-conflict",
            Result(ResultError::UnknownVersion(_)) => "unknown-format-version",
            Result(ResultError::Json(_)) => "invalid-result-json",
            Result(_) => "invalid-result",
            Mismatch { .. } => "result-mismatch",
        }
    }

    /// The entry the error is about, if it is about one.
    pub fn entry(&self) -> Option<&str> {
        use AnswerError::*;
        match self {
            Archive(e) => e.entry(),
            Build(
                BuildError::BadName { name, .. }
                | BuildError::Duplicate(name)
                | BuildError::Reserved(name),
            )
            | Undeclared { name }
            | PathConflict { name, .. } => Some(name),
            Incomplete { name } => Some(name),
            Result(_) | Mismatch { .. } => Some(RESULT),
            _ => None,
        }
    }
}

/// An answer that passed every check. It can only be made by [`verify_answer`], so holding
/// one means its result, stdout, stderr and files are exactly what its node signed.
#[derive(Debug, Clone)]
pub struct VerifiedAnswer {
    result: ResultDoc,
    result_bytes: Vec<u8>,
    node: Signer,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    out_files: Vec<(String, Vec<u8>)>,
    entries: Vec<EntryInfo>,
}

impl VerifiedAnswer {
    pub fn result(&self) -> &ResultDoc {
        &self.result
    }
    /// `result.json` exactly as signed.
    pub fn result_bytes(&self) -> &[u8] {
        &self.result_bytes
    }
    /// The node's key, fingerprint, node id (`name`, equal to `result().node_id`) and signing
    /// time (Unix seconds, as claimed by the node).
    pub fn node(&self) -> &Signer {
        &self.node
    }
    pub fn public_key(&self) -> &PublicKey {
        &self.node.public_key
    }
    pub fn fingerprint(&self) -> Fingerprint {
        self.node.fingerprint
    }
    pub fn stdout(&self) -> &[u8] {
        &self.stdout
    }
    pub fn stderr(&self) -> &[u8] {
        &self.stderr
    }
    /// The files the task wrote (path relative to `out/`, bytes), sorted by path.
    pub fn out_files(&self) -> &[(String, Vec<u8>)] {
        &self.out_files
    }
    /// Every entry except the signature entry, in archive order.
    pub fn entries(&self) -> &[EntryInfo] {
        &self.entries
    }
}

/// Refuses an entry that lies inside another (`out/a` and `out/a/b`): no file system holds
/// both. Compared ASCII-case-insensitively, like duplicate names.
fn check_nesting<'a>(names: impl Iterator<Item = &'a str> + Clone) -> Result<(), AnswerError> {
    let files: HashMap<String, &str> = names.clone().map(|n| (n.to_ascii_lowercase(), n)).collect();
    for name in names {
        let lower = name.to_ascii_lowercase();
        for (slash, _) in lower.match_indices('/') {
            if let Some(file) = files.get(&lower[..slash]) {
                return Err(AnswerError::PathConflict {
                    name: name.to_owned(),
                    file: (*file).to_owned(),
                });
            }
        }
    }
    Ok(())
}

/// The sizes `result.json` states against what the archive holds, and its node id against the
/// signer name.
fn check_consistency(
    result: &ResultDoc,
    signer_name: &str,
    stdout: u64,
    stderr: u64,
    output: u64,
) -> Result<(), AnswerError> {
    if result.node_id != signer_name {
        return Err(AnswerError::Mismatch {
            field: "node_id",
            claimed: format!("{:?}", result.node_id),
            actual: format!("signer name {signer_name:?}"),
        });
    }
    for (field, claimed, actual, what) in [
        ("stdout_bytes", result.stdout_bytes, stdout, STDOUT),
        ("stderr_bytes", result.stderr_bytes, stderr, STDERR),
        ("output_bytes", result.output_bytes, output, "out files"),
    ] {
        if claimed != actual {
            return Err(AnswerError::Mismatch {
                field,
                claimed: claimed.to_string(),
                actual: format!("{actual} bytes in {what}"),
            });
        }
    }
    Ok(())
}

/// Builds and signs an answer archive; returns the file's bytes. Deterministic: the same
/// inputs give the same bytes.
///
/// Refuses (nothing is written) a `result` that does not validate, sizes that disagree with it
/// (`stdout_bytes`, `stderr_bytes`, `output_bytes`), an out path that breaks
/// [`check_out_path`], two out paths equal but for case or one inside another, more than
/// [`MAX_OUT_FILES`] files, and an archive beyond [`AnswerLimits::default`]. Signed by
/// `node_key` with signer name `result.node_id`.
pub fn build_answer(
    result: &ResultDoc,
    stdout: &[u8],
    stderr: &[u8],
    out_files: &[(String, Vec<u8>)],
    node_key: &KeyPair,
    signed_at: u64,
) -> Result<Vec<u8>, AnswerError> {
    result.validate().map_err(AnswerError::Result)?;
    let output = out_files.iter().map(|(_, d)| d.len() as u64).sum();
    check_consistency(
        result,
        &result.node_id,
        stdout.len() as u64,
        stderr.len() as u64,
        output,
    )?;
    let result_json = result.to_json();
    if result_json.len() as u64 > MAX_RESULT_BYTES {
        return Err(AnswerError::Result(ResultError::TooLarge));
    }
    let mut admitted = Admitted::new(AnswerLimits::default().archive());
    let mut entries: Vec<(String, &[u8])> = Vec::with_capacity(out_files.len() + 3);
    for (path, data) in out_files {
        let name = format!("{OUT_DIR}{path}");
        check_out_path(path).map_err(|reason| {
            AnswerError::Build(BuildError::BadName {
                name: name.clone(),
                reason,
            })
        })?;
        entries.push((name, data));
    }
    entries.push((RESULT.to_owned(), &result_json));
    entries.push((STDOUT.to_owned(), stdout));
    entries.push((STDERR.to_owned(), stderr));
    for (name, data) in &entries {
        admitted
            .admit(name, data.len() as u64)
            .map_err(AnswerError::Build)?;
    }
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    check_nesting(entries.iter().map(|(n, _)| n.as_str()))?;
    let entries: Vec<(&str, &[u8])> = entries.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    bundle::sign_entries(
        &entries,
        &admitted,
        &ANSWER,
        node_key,
        &result.node_id,
        signed_at,
    )
    .map_err(AnswerError::Build)
}

/// Verifies an answer held in memory completely (`docs/answer-format.md`, "Verification"):
/// size and entry limits before anything is inflated, the canonical layout, coverage, every
/// stored byte's SHA-256, the node's signature under the answer domain, the entries an answer
/// holds, `result.json` and its agreement with the archive; then inflates every entry within
/// its signed size and checks its CRC-32.
///
/// Which node keys to accept is the caller's decision: compare [`VerifiedAnswer::public_key`].
pub fn verify_answer(bytes: &[u8], limits: &AnswerLimits) -> Result<VerifiedAnswer, AnswerError> {
    if bytes.len() as u64 > limits.max_answer_bytes {
        return Err(AnswerError::TooLarge {
            size: bytes.len() as u64,
            limit: limits.max_answer_bytes,
        });
    }
    let archive =
        bundle::verify_archive(bytes, &limits.archive(), &ANSWER).map_err(AnswerError::Archive)?;
    let entries = &archive.entries;
    let inflate = |i: usize| {
        inflate_entry(bytes, &entries[i], &archive.ranges[i]).map_err(AnswerError::Archive)
    };

    // 10. The entries an answer holds.
    if let Some(e) = entries
        .iter()
        .find(|e| ![RESULT, STDOUT, STDERR].contains(&e.name.as_str()) && !is_out(&e.name))
    {
        return Err(AnswerError::Undeclared {
            name: e.name.clone(),
        });
    }
    let find = |name: &'static str| {
        entries
            .iter()
            .position(|e| e.name == name)
            .ok_or(AnswerError::Incomplete { name })
    };
    let (ri, oi, ei) = (find(RESULT)?, find(STDOUT)?, find(STDERR)?);
    check_nesting(entries.iter().map(|e| e.name.as_str()))?;

    // 11. result.json, and 12. its agreement with the archive.
    if entries[ri].size > MAX_RESULT_BYTES {
        return Err(AnswerError::Result(ResultError::TooLarge));
    }
    let result_bytes = inflate(ri)?;
    let result = ResultDoc::parse(&result_bytes).map_err(AnswerError::Result)?;
    let output = entries
        .iter()
        .filter(|e| is_out(&e.name))
        .map(|e| e.size)
        .sum();
    check_consistency(
        &result,
        &archive.signer.name,
        entries[oi].size,
        entries[ei].size,
        output,
    )?;

    // 13. Every entry inflated within its size, CRC-32 checked.
    let stdout = inflate(oi)?;
    let stderr = inflate(ei)?;
    let mut out_files = Vec::with_capacity(entries.len() - 3);
    for (i, e) in entries.iter().enumerate() {
        if let Some(path) = e.name.strip_prefix(OUT_DIR) {
            out_files.push((path.to_owned(), inflate(i)?));
        }
    }
    Ok(VerifiedAnswer {
        result,
        result_bytes,
        node: archive.signer,
        stdout,
        stderr,
        out_files,
        entries: archive.entries,
    })
}

fn is_out(name: &str) -> bool {
    name.starts_with(OUT_DIR)
}
