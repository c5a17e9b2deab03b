//! `rjs-sign upload BUNDLE`: verify locally, then send it to the web server.

use std::path::PathBuf;

use anyhow::Result;

use super::local::{self, Verdict, check};
use super::output::{self, clean, plural};
use super::settings::{self, ServerOpts};
use rjs_signer::bundle::hex;

/// Exit status of a bundle refused before upload.
const EXIT_REFUSED: u8 = 1;

#[derive(clap::Args, Debug)]
pub struct UploadCommand {
    /// The bundle file (from `rjs-sign pack`).
    pub bundle: PathBuf,
    /// Queue a new set of jobs even if this bundle was uploaded before.
    #[arg(long)]
    pub resubmit: bool,
    /// Print the server's answer as JSON instead of lines.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerOpts,
}

impl UploadCommand {
    /// Runs the command; `Ok` holds the exit status.
    pub fn run(&self) -> Result<u8> {
        let settings = settings::resolve(&self.server, &settings::Env::from_process())?;
        // Refuse to upload what the server would refuse, with the rule, before any network.
        let (bundle, bytes) = match check(&self.bundle)? {
            Verdict::Valid(b, bytes) => (b, bytes),
            Verdict::Refused(e) => {
                eprintln!(
                    "rjs-sign: not uploading {}: {}",
                    self.bundle.display(),
                    local::refusal_line(e.rule(), e.entry(), &rjs_cmd::chain(&e))
                );
                return Ok(EXIT_REFUSED);
            }
        };
        for above in bundle.manifest().limits.above_node_defaults() {
            eprintln!(
                "rjs-sign: warning: {} asks for {above}: nodes that do not allow it refuse \
                 it, and it waits until one does (rjs-sign status says why)",
                self.bundle.display()
            );
        }
        let api = settings::connect(&settings)?;
        let signer = bundle.signer();
        let mine = api.public_key();
        if signer.public_key != mine {
            eprintln!(
                "rjs-sign: warning: {} is signed by {} ({}), not by your key {} ({}): the server \
                 will refuse it (signer-mismatch)",
                self.bundle.display(),
                signer.name,
                signer.fingerprint,
                settings.key.display(),
                mine.fingerprint()
            );
        }
        let local_id = hex(&rjs_signer::bundle_id(&bytes));
        let bar = output::on_stderr(output::bytes_bar(bytes.len() as u64, "upload"));
        let len = bytes.len() as u64;
        // A bundle's id is the SHA-256 of its bytes: the body hash the request signs.
        let sha = local_id.clone();
        let body = bar.wrap_read(std::io::Cursor::new(bytes));
        let result = api.upload_from(body, len, sha, self.resubmit);
        bar.finish_and_clear();
        let resp = result?;
        if resp.bundle_id != local_id {
            eprintln!(
                "rjs-sign: warning: the server names the bundle {} but its SHA-256 here is {local_id}",
                clean(&resp.bundle_id)
            );
        }
        if self.json {
            println!("{}", serde_json::to_string(&resp)?);
            return Ok(0);
        }
        let name = clean(&resp.name);
        if resp.created {
            println!(
                "uploaded {name} ({}) to {}",
                plural(resp.tasks as usize, "task"),
                api.server()
            );
        } else {
            println!(
                "already uploaded: {name} ({}) is on {}; its existing jobs are below \
                 (--resubmit to run it again)",
                plural(resp.tasks as usize, "task"),
                api.server()
            );
        }
        println!("bundle {}", clean(&resp.bundle_id));
        for line in output::job_lines(&resp.jobs) {
            println!("{line}");
        }
        Ok(0)
    }
}
