//! `rjs-sign dashboard`: asks the web server for a one-time dashboard login link (a signed
//! request, as every author request), prints it and opens the browser where one is available.

use anyhow::{Context, Result};

use super::output;
use super::settings::{self, ServerOpts};

#[derive(clap::Args, Debug)]
pub struct DashboardCommand {
    /// Print the link (and what it is for) but do not open a browser.
    #[arg(long)]
    pub no_open: bool,
    /// Print only the link, nothing else (for scripts); opens no browser.
    #[arg(long, conflicts_with = "no_open")]
    pub print_url: bool,
    #[command(flatten)]
    pub server: ServerOpts,
}

impl DashboardCommand {
    /// Runs the command; `Ok` holds the exit status.
    pub fn run(&self) -> Result<u8> {
        let api = settings::open(&self.server)?;
        let login = api.dashboard_login()?;
        let url = api.url_of(&login.path);
        if self.print_url {
            println!("{url}");
            return Ok(0);
        }
        let secs = login.expires_at - rjs_signer::unix_now() as i64;
        println!(
            "Sign in to the dashboard as {} (one use, within {}s):\n\n  {url}\n",
            output::clean(&login.fingerprint),
            secs.max(0)
        );
        if !self.no_open {
            match open_browser(&url) {
                Ok(true) => println!("(opened in your browser)"),
                Ok(false) => println!("(no browser found: open the link yourself)"),
                Err(e) => println!(
                    "(could not open a browser: {}: open the link yourself)",
                    rjs_cmd::chain(e.as_ref())
                ),
            }
        }
        Ok(0)
    }
}

/// Opens `url` with the desktop's opener, if there is a desktop: Ok(false) if there is none.
fn open_browser(url: &str) -> Result<bool> {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else if std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some()
    {
        "xdg-open"
    } else {
        return Ok(false);
    };
    match std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("starting {opener}")),
    }
}
