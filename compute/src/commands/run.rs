//! `rjs-compute run BUNDLE`: one task of a local bundle, run the way a job from the grid runs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use super::NodeArgs;

/// Exit status of `run` when the node refuses the job (1 is an error, 2 a usage error).
const EXIT_REFUSED: u8 = 3;

#[derive(Args)]
pub struct RunCommand {
    /// The bundle (.rjs).
    bundle: PathBuf,
    /// Task index.
    #[arg(long, default_value_t = 0)]
    task: u32,
    /// Answer archive to write (atomically).
    #[arg(short, long, value_name = "ANSWER.zip")]
    out: PathBuf,
    #[command(flatten)]
    node: NodeArgs,
}

impl RunCommand {
    pub fn run(self) -> Result<ExitCode> {
        let (bundle, task, out) = (&self.bundle, self.task, &self.out);
        let bytes = rjs_signer::fsutil::read_bounded(
            bundle,
            rjs_signer::VerifyLimits::default().max_bundle_bytes,
        )
        .with_context(|| format!("reading the bundle {}", bundle.display()))?;
        let (rt, node) = self.node.start_node(|o| o.slots = Some(1))?;
        let result = rt.block_on(async {
            let admitted = match node.admit(Arc::new(bytes), None, task).await {
                Ok(a) => a,
                Err(refusal) => return Ok(Err(refusal)),
            };
            let answer = node.execute(admitted).await?;
            anyhow::Ok(Ok(answer))
        });
        let outcome = match result? {
            Ok(answer) => {
                rjs_signer::fsutil::write_atomic(out, &answer.bytes, 0o644)
                    .with_context(|| format!("writing the answer {}", out.display()))?;
                println!(
                    "task {task}: {} in {} ms; answer {} ({} bytes, signed by node {})",
                    answer.outcome,
                    answer.result.wall_ms,
                    out.display(),
                    answer.bytes.len(),
                    node.identity.id
                );
                ExitCode::SUCCESS
            }
            Err(refusal) => {
                println!("{refusal}");
                ExitCode::from(EXIT_REFUSED)
            }
        };
        super::shut_down(&rt, node);
        Ok(outcome)
    }
}
