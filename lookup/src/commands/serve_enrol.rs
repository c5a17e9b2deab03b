//! `rjs-lookup serve-enrol`: the enrolment endpoint alone.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use rjs_lookup::enrol;

#[derive(clap::Args)]
pub struct ServeEnrolCommand {
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7450")]
    listen: SocketAddr,
}

impl ServeEnrolCommand {
    pub fn run(self) -> Result<()> {
        super::runtime()?.block_on(async {
            let listener = tokio::net::TcpListener::bind(self.listen)
                .await
                .with_context(|| format!("listening on {}", self.listen))?;
            println!("enrolment endpoint listening on {}", listener.local_addr()?);
            let shutdown = rjs_wire::shutdown::stop_signal();
            enrol::serve_enrolment(self.data, listener, shutdown).await
        })
    }
}
