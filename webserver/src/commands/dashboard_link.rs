//! `rjs-webserver dashboard-link --admin`: a one-time administrator login for the dashboard,
//! made by whoever can write the server's data directory (the token goes straight into its
//! database; the running server reads it from there).

use clap::Args;
use rjs_webserver::admin;

use super::Data;

#[derive(Args)]
pub struct DashboardLinkCommand {
    /// A login as the administrator (who sees the grid, not authors' answers). Authors get
    /// theirs with `rjs-sign dashboard`.
    #[arg(long, required = true)]
    admin: bool,
    /// The server's address as browsers reach it.
    #[arg(long, value_name = "URL", default_value = "https://127.0.0.1:8443")]
    url: String,
    #[command(flatten)]
    data: Data,
}

impl DashboardLinkCommand {
    pub fn run(self) -> anyhow::Result<()> {
        debug_assert!(self.admin);
        let path = admin::admin_login(&self.data.site()?)?;
        println!("{}{path}", self.url.trim_end_matches('/'));
        Ok(())
    }
}
