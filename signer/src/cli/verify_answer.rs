//! `rjs-sign verify-answer ANSWER`: verify an answer archive (`docs/answer-format.md`),
//! optionally only from given node keys, and optionally extract its files.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::local::{self, Bounded};
use super::output::{clean, plural};
use rjs_signer::answer::{
    self, AnswerError, AnswerLimits, OUT_DIR, RESULT, STDERR, STDOUT, VerifiedAnswer,
};
use rjs_signer::bundle::hex;
use rjs_signer::paths;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Exit status: 0 the answer is valid (and signed by a --node key, if \
given; and extracted, with --extract); 1 it is refused (one line names the rule); \
2 another error (unreadable file, bad key, extraction failed)."
)]
pub struct VerifyAnswerCommand {
    /// The answer archive (as `rjs-sign answers` saves it: task-N.zip).
    pub answer: PathBuf,
    /// Accept only answers signed by these node keys (public key file, `rjs-ed25519 …`
    /// line, or base64 key).
    #[arg(long = "node", value_name = "PUBKEY")]
    pub nodes: Vec<String>,
    /// Print a JSON object (the result, the node and the files) instead of a line.
    #[arg(long)]
    pub json: bool,
    /// Write the answer's files to DIR (new or empty): DIR/out/…, DIR/stdout.txt,
    /// DIR/stderr.txt, DIR/result.json; all at once or nothing.
    #[arg(long, value_name = "DIR")]
    pub extract: Option<PathBuf>,
}

/// `rjs-sign verify-answer`.
impl VerifyAnswerCommand {
    /// Runs the command; `Ok` holds the exit status.
    pub fn run(&self) -> Result<u8> {
        let nodes = local::load_keys(&self.nodes, "node key")?;
        let limits = AnswerLimits::default();
        let mut out = io::stdout().lock();
        let refuse = |out: &mut io::StdoutLock<'_>, e: AnswerError| {
            local::refused(out, self.json, e.rule(), e.entry(), &rjs_cmd::chain(&e))
        };
        let bytes = match local::read_bounded(&self.answer, limits.max_answer_bytes, "the answer")?
        {
            Bounded::Bytes(b) => b,
            Bounded::TooLarge { size, limit } => {
                return refuse(&mut out, AnswerError::TooLarge { size, limit });
            }
        };
        let answer = match answer::verify_answer(&bytes, &limits) {
            Ok(a) => a,
            Err(e) => return refuse(&mut out, e),
        };
        let r = answer.result();
        if !nodes.is_empty() && !nodes.contains(answer.public_key()) {
            let msg = format!(
                "signed by node {} ({}), which is not one of the {} given node key(s)",
                r.node_id,
                answer.fingerprint(),
                nodes.len()
            );
            return local::refused(&mut out, self.json, "untrusted-node", None, &msg);
        }
        if let Some(dir) = &self.extract {
            extract(dir, &answer).with_context(|| format!("extracting into {}", dir.display()))?;
        }
        if self.json {
            let files: Vec<_> = answer
                .out_files()
                .iter()
                .map(|(path, data)| {
                    json!({"path": path, "size": data.len(), "sha256": hex(&Sha256::digest(data))})
                })
                .collect();
            let node = answer.node();
            writeln!(
                out,
                "{}",
                json!({
                    "valid": true,
                    "answer_sha256": hex(&Sha256::digest(&bytes)),
                    "result": r,
                    "node": {"id": node.name, "fingerprint": node.fingerprint.to_string(),
                             "public_key": node.public_key.to_base64(), "signed_at": node.signed_at},
                    "files": files,
                    "extracted_to": self.extract,
                })
            )?;
        } else {
            let extracted = match &self.extract {
                Some(dir) => format!("; extracted to {}", dir.display()),
                None => String::new(),
            };
            writeln!(
                out,
                "OK task {} of {} by node {} ({}): {}, {} ms, {}{extracted}",
                r.task_index,
                &r.bundle_sha256[..12],
                r.node_id,
                answer.fingerprint(),
                clean(&r.summary()),
                r.wall_ms,
                plural(answer.out_files().len(), "file"),
            )?;
        }
        Ok(0)
    }
}

/// Writes the answer's files into `dir` all at once: into a new hidden folder beside it,
/// renamed to `dir` when complete (which replaces `dir` if it is an empty folder). On failure
/// nothing is left behind.
fn extract(dir: &Path, answer: &VerifiedAnswer) -> Result<()> {
    let Some(name) = dir.file_name() else {
        bail!("give a folder name (not `.`, `..` or `/`)");
    };
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {
            if fs::read_dir(dir)?.next().is_some() {
                bail!("the folder exists and is not empty");
            }
        }
        Ok(_) => bail!("it exists and is not a folder"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let tmp = parent.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        rand::random::<u32>()
    ));
    fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let done = write_files(&tmp, answer).and_then(|()| {
        fs::rename(&tmp, dir).with_context(|| format!("renaming {} into place", tmp.display()))
    });
    if done.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    done?;
    rjs_signer::fsutil::sync_dir(parent);
    Ok(())
}

/// Writes every file of the answer below `root`, a folder this process just created.
fn write_files(root: &Path, answer: &VerifiedAnswer) -> Result<()> {
    let fixed = [
        (RESULT.to_owned(), answer.result_bytes()),
        (STDOUT.to_owned(), answer.stdout()),
        (STDERR.to_owned(), answer.stderr()),
    ];
    let outs = answer
        .out_files()
        .iter()
        .map(|(path, data)| (format!("{OUT_DIR}{path}"), data.as_slice()));
    for (rel, data) in fixed.into_iter().chain(outs) {
        let path = inside(root, &rel)?;
        if let Some(p) = path.parent() {
            fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        }
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o644);
        }
        opts.open(&path)
            .and_then(|mut f| {
                f.write_all(data)?;
                f.sync_all()
            })
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `root/rel`, refusing a name that could leave `root`. The verifier has refused such names
/// already; this is the last line of defence before writing.
fn inside(root: &Path, rel: &str) -> Result<PathBuf> {
    if let Err(e) = paths::check_entry_name(rel) {
        bail!("refusing to write {rel:?}: {e}");
    }
    let path = Path::new(rel);
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        bail!("refusing to write {rel:?}: it would leave the folder");
    }
    Ok(root.join(path))
}
