//! `rjs-compute bench`: the node's speed, measured once and stored.

use anyhow::{Context, Result};
use clap::Args;
use rjs_compute::bench;
use rjs_compute::config::{DataArgs, NodeConfig};

#[derive(Args)]
pub struct BenchCommand {
    #[command(flatten)]
    data: DataArgs,
    /// Measure again even if a result is stored.
    #[arg(long)]
    rebench: bool,
    /// Print the stored result as JSON.
    #[arg(long)]
    json: bool,
}

impl BenchCommand {
    pub fn run(self) -> Result<()> {
        let config = NodeConfig::load(&self.data.overrides())?;
        if self.rebench || bench::load(&config.bench_file()).is_none() {
            eprintln!("measuring this node's speed (about a second)…");
        }
        let out = bench::load_or_run(&config.data_dir, self.rebench).context("benchmark")?;
        let r = &out.result;
        if self.json {
            println!("{}", serde_json::to_string_pretty(r)?);
            return Ok(());
        }
        let when = if out.fresh {
            format!("measured now, saved to {}", out.path.display())
        } else {
            format!(
                "measured {}, from {}; --rebench to measure again",
                super::date(r.measured_at),
                out.path.display()
            )
        };
        println!(
            "{:.1} MFLOPS (LU n={}, median of {} runs, {:.2} s measured, residual {:.2}; {when})",
            r.mflops, r.n, r.runs, r.seconds, r.residual
        );
        Ok(())
    }
}
